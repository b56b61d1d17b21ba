//! Git worktrees per run, with the real `git` CLI on a throw-away repository: made on a new
//! branch from the base, the diff stat and commits read afterwards, removed or kept per `keep`,
//! clear errors for a missing repository, a dirty base or a bad base, and stale ones pruned.

mod common;

use std::path::Path;
use std::process::Command;

use cnp::executor::worktree;
use cnp::model::{KeepWorktree, WorktreeSpec};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn repo(dir: &Path) -> std::path::PathBuf {
    let r = dir.join("repo");
    std::fs::create_dir_all(&r).unwrap();
    git(&r, &["init", "--quiet", "--initial-branch=main"]);
    git(&r, &["config", "user.email", "cnp@example.com"]);
    git(&r, &["config", "user.name", "cnp test"]);
    std::fs::write(r.join("README.md"), "hello\n").unwrap();
    git(&r, &["add", "."]);
    git(&r, &["commit", "--quiet", "-m", "first"]);
    r
}

fn spec(repo: &Path, keep: KeepWorktree) -> WorktreeSpec {
    WorktreeSpec {
        repo: repo.display().to_string(),
        base: None,
        branch: None,
        keep,
    }
}

#[tokio::test]
async fn a_run_gets_its_own_worktree_and_its_commits_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(dir.path());
    let root = dir.path().join("worktrees");
    let a = worktree::create(
        &spec(&repo, KeepWorktree::OnFailure),
        "Nightly fix",
        "run-a",
        &root,
        None,
    )
    .await
    .unwrap();
    let b = worktree::create(
        &spec(&repo, KeepWorktree::OnFailure),
        "Nightly fix",
        "run-b",
        &root,
        None,
    )
    .await
    .unwrap();
    assert_ne!(
        a.path, b.path,
        "concurrent runs of one repository each get their own"
    );
    assert_eq!(a.branch, "cnp/Nightly-fix/run-a");
    assert!(a.path.join("README.md").is_file());
    // The run edits and commits in its worktree, and leaves one change uncommitted.
    std::fs::write(a.path.join("fix.rs"), "fn main() {}\n").unwrap();
    git(&a.path, &["add", "fix.rs"]);
    git(
        &a.path,
        &[
            "-c",
            "user.email=c@e",
            "-c",
            "user.name=c",
            "commit",
            "--quiet",
            "-m",
            "fix the bug",
        ],
    );
    std::fs::write(a.path.join("README.md"), "hello\nworld\n").unwrap();
    let r = worktree::finish(&a, true).await;
    assert_eq!(r.commits.len(), 1, "{r:?}");
    assert!(r.commits[0].ends_with(" fix the bug"), "{r:?}");
    assert!(
        r.diff_stat.contains("fix.rs") && r.diff_stat.contains("README.md"),
        "{}",
        r.diff_stat
    );
    assert!(
        !r.kept && !a.path.exists(),
        "a completed run's worktree is removed"
    );
    // Its branch keeps the commit; b's branch (no commits) goes with its worktree.
    assert!(git(&repo, &["branch", "--list", &a.branch]).contains(&a.branch));
    let r = worktree::finish(&b, true).await;
    assert!(!r.kept && r.commits.is_empty());
    assert!(git(&repo, &["branch", "--list", &b.branch]).is_empty());
}

#[tokio::test]
async fn keep_on_failure_keeps_a_failed_runs_worktree_and_prune_removes_stale_ones() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(dir.path());
    let root = dir.path().join("worktrees");
    let failed = worktree::create(
        &spec(&repo, KeepWorktree::OnFailure),
        "j",
        "failed-run",
        &root,
        None,
    )
    .await
    .unwrap();
    let r = worktree::finish(&failed, false).await;
    assert!(r.kept && failed.path.is_dir(), "{r:?}");
    let always = worktree::create(
        &spec(&repo, KeepWorktree::Always),
        "j",
        "kept-run",
        &root,
        None,
    )
    .await
    .unwrap();
    assert!(worktree::finish(&always, true).await.kept);
    let never = worktree::create(
        &spec(&repo, KeepWorktree::Never),
        "j",
        "never-run",
        &root,
        None,
    )
    .await
    .unwrap();
    assert!(!worktree::finish(&never, false).await.kept && !never.path.exists());
    // A crash left one behind (no finish): pruned at start-up; those kept on purpose stay.
    let stale = worktree::create(
        &spec(&repo, KeepWorktree::OnFailure),
        "j",
        "crashed-run",
        &root,
        None,
    )
    .await
    .unwrap();
    let n = worktree::prune(&root, |id| id == "failed-run" || id == "kept-run").await;
    assert_eq!(n, 1);
    assert!(!stale.path.exists() && failed.path.is_dir() && always.path.is_dir());
    assert!(!git(&repo, &["worktree", "list"]).contains("crashed-run"));
}

#[tokio::test]
async fn bad_repositories_and_bases_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(dir.path());
    let root = dir.path().join("worktrees");
    let missing = WorktreeSpec {
        repo: "/nonexistent/repo".into(),
        ..spec(&repo, KeepWorktree::Never)
    };
    let e = worktree::create(&missing, "j", "r1", &root, None)
        .await
        .unwrap_err();
    assert!(e.contains("does not exist"), "{e}");
    let plain = dir.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let not_git = WorktreeSpec {
        repo: plain.display().to_string(),
        ..spec(&repo, KeepWorktree::Never)
    };
    let e = worktree::create(&not_git, "j", "r2", &root, None)
        .await
        .unwrap_err();
    assert!(e.contains("not a git repository"), "{e}");
    let bad_base = WorktreeSpec {
        base: Some("no-such-branch".into()),
        ..spec(&repo, KeepWorktree::Never)
    };
    let e = worktree::create(&bad_base, "j", "r3", &root, None)
        .await
        .unwrap_err();
    assert!(
        e.contains("`no-such-branch` is not a branch, tag or commit"),
        "{e}"
    );
    // Uncommitted changes in the checkout: a worktree from HEAD would leave them out.
    std::fs::write(repo.join("README.md"), "changed\n").unwrap();
    let e = worktree::create(&spec(&repo, KeepWorktree::Never), "j", "r4", &root, None)
        .await
        .unwrap_err();
    assert!(e.contains("uncommitted changes"), "{e}");
    // Naming the base says "from that commit", dirty checkout or not.
    let named = WorktreeSpec {
        base: Some("main".into()),
        ..spec(&repo, KeepWorktree::Never)
    };
    let w = worktree::create(&named, "j", "r5", &root, None)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(w.path.join("README.md")).unwrap(),
        "hello\n"
    );
}

mod through_the_engine {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use chrono::Utc;
    use cnp::clock::Clock;
    use cnp::engine::{Engine, EngineSettings};
    use cnp::events::EventBus;
    use cnp::executor::{BoxFuture, RunObserver, RunReport, RunRequest, Runner};
    use cnp::model::{ExecutionStatus, Outcome};

    /// Hits the usage limit on its first call, succeeds after; checks it runs in a worktree.
    struct LimitedOnce {
        calls: AtomicU32,
    }

    impl Runner for LimitedOnce {
        fn run(&self, request: RunRequest, _o: Arc<dyn RunObserver>) -> BoxFuture<RunReport> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                let cwd = request
                    .options
                    .working_directory
                    .clone()
                    .unwrap_or_default();
                assert!(
                    std::path::Path::new(&cwd).join("README.md").is_file(),
                    "runs in its worktree: {cwd}"
                );
                let outcome = if n == 0 {
                    Outcome::UsageLimit {
                        resets_at: None,
                        message: "limit".into(),
                    }
                } else {
                    Outcome::Success
                };
                RunReport {
                    exit_code: Some(0),
                    outcome,
                    started_at: Some(Utc::now()),
                    finished_at: Utc::now(),
                    pid: None,
                    result_text: Some("ok".into()),
                    session_id: None,
                    cost_usd: None,
                    usage: None,
                    resource_usage: None,
                }
            })
        }
    }

    #[tokio::test]
    async fn a_usage_limited_run_starts_over_in_a_fresh_worktree() {
        let dir = tempfile::tempdir().unwrap();
        let repo = super::repo(dir.path());
        let store = crate::common::open_store(&dir.path().join("cnp.db"));
        let settings = EngineSettings {
            default_retry: None,
            worktree_dir: dir.path().join("worktrees"),
            ..EngineSettings::default()
        };
        let runner = Arc::new(LimitedOnce {
            calls: AtomicU32::new(0),
        });
        let engine = Engine::start(
            store.clone(),
            runner.clone(),
            settings,
            Clock::System,
            EventBus::default(),
        )
        .await
        .unwrap();
        let job = engine
            .create_job(
                serde_json::from_value(serde_json::json!({
                    "name": "wt", "prompt": "x",
                    "execution": {"worktree": {"repo": repo.display().to_string(), "keep": "always"}}
                }))
                .unwrap(),
                None,
            )
            .await
            .unwrap();
        let id = engine.run_now(&job.id).await.unwrap();
        for _ in 0..200 {
            if engine.cooldown().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            engine.cooldown().is_some(),
            "the usage limit began a cooldown"
        );
        engine.clear_cooldown().await.unwrap();
        let mut done = None;
        for _ in 0..300 {
            let e = store.get_execution(id.clone()).await.unwrap().unwrap();
            if e.status.is_terminal() {
                done = Some(e);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let e = done.expect("the run ended");
        assert_eq!(e.status, ExecutionStatus::Completed, "{e:?}");
        assert_eq!(runner.calls.load(Ordering::SeqCst), 2);
        let w = e.worktree.expect("a worktree report");
        assert!(w.kept, "keep: always");
        engine.shutdown(Duration::from_secs(1)).await;
    }
}

/// A job resuming its own session works at one fixed path: a kept worktree moves to its run's
/// own folder (the path is free for the next run), a crash's leftover at the path is replaced,
/// and new files count in the diff stat without touching the worktree's index.
#[tokio::test]
async fn a_fixed_path_is_freed_for_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(dir.path());
    let root = dir.path().join("worktrees");
    let s = spec(&repo, KeepWorktree::OnFailure);
    let first = worktree::create(&s, "j", "run-1", &root, Some("job-j"))
        .await
        .unwrap();
    assert_eq!(first.path, root.join("job-j"));
    std::fs::write(first.path.join("notes.md"), "new\n").unwrap();
    let r = worktree::finish(&first, false).await;
    assert!(r.kept, "{r:?}");
    assert!(r.diff_stat.contains("notes.md"), "{}", r.diff_stat);
    assert_eq!(r.path, root.join("run-1").display().to_string());
    assert!(!root.join("job-j").exists(), "moved away");
    let status = git(&root.join("run-1"), &["status", "--porcelain"]);
    assert_eq!(
        status.trim(),
        "?? notes.md",
        "the index is as the run left it"
    );

    let second = worktree::create(&s, "j", "run-2", &root, Some("job-j"))
        .await
        .unwrap();
    assert_eq!(second.path, root.join("job-j"));
    // A crash: no finish. The next run replaces the leftover.
    let third = worktree::create(&s, "j", "run-3", &root, Some("job-j"))
        .await
        .unwrap();
    assert_eq!(third.branch, "cnp/j/run-3");
    let r = worktree::finish(&third, true).await;
    assert!(!r.kept && !root.join("job-j").exists(), "{r:?}");
}
