//! `execution.worktree` through the real `cnp serve` and the fake CLI: two runs of one job at
//! once each run in a worktree of their own, a completed run's worktree is removed and a failed
//! one's kept (`keep: on_failure`), and what became of it is on the execution.

mod support;

use std::path::Path;
use std::process::Command;

use support::*;

fn git(dir: &Path, args: &[&str]) {
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
}

/// A git repository with one commit on `main`, in the test's folder.
fn repo(env: &Env) -> std::path::PathBuf {
    let repo = env.root().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "--quiet", "--initial-branch=main"]);
    std::fs::write(repo.join("README.md"), "hello\n").unwrap();
    git(&repo, &["add", "."]);
    git(
        &repo,
        &[
            "-c",
            "user.email=c@e",
            "-c",
            "user.name=c",
            "commit",
            "--quiet",
            "-m",
            "first",
        ],
    );
    repo
}

#[test]
fn each_run_works_in_its_own_worktree_removed_or_kept_by_outcome() {
    let env = Env::new(ConfigOpts::default());
    let repo = repo(&env);
    env.manifest(
        "wt.yaml",
        &format!(
            "- name: edit\n  prompt: change things\n  execution:\n    max_parallel: 2\n    \
             environment: {{ FAKE_CLAUDE_SLEEP_MS: '1500' }}\n    worktree: {{ repo: {repo} }}\n\
             - name: broken\n  prompt: fail\n  execution:\n    environment: {{ FAKE_CLAUDE_SCENARIO: error }}\n    \
             worktree: {{ repo: {repo}, keep: on_failure, branch: 'try/{{{{run}}}}' }}\n",
            repo = repo.display()
        ),
    );
    let mut cnp = env.start();
    cnp.wait_log("cnp is running");
    for _ in 0..2 {
        let out = env.run_cli(&["job", "execute", "edit"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = env.run_cli(&["job", "execute", "broken", "--wait"]);
    assert!(!out.status.success());
    cnp.wait_for("both edits completed", || {
        let e = env.executions("edit");
        (e.len() == 2 && e.iter().all(|x| x.status == "completed")).then_some(())
    });
    // Two runs at once, each in its own worktree under `worktrees/` beside the database.
    let cwds: Vec<String> = env
        .records()
        .into_iter()
        .filter(|r| !r.raw["scenario"].is_null())
        .map(|r| r.raw["cwd"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(cwds.len(), 3, "{cwds:?}");
    let root = env.root().join("worktrees");
    for c in &cwds {
        assert!(
            Path::new(c).starts_with(&root),
            "{c} under {}",
            root.display()
        );
    }
    assert_ne!(cwds[0], cwds[1]);
    let edits = env.executions("edit");
    let (a, b) = (&edits[0], &edits[1]);
    assert!(
        b.started_at.unwrap() < a.completed_at.unwrap(),
        "they ran at the same time"
    );
    // Completed: removed; failed: kept, on its own branch.
    let db = env.db();
    let report = |id: &str| -> serde_json::Value {
        let s: String = db
            .query_row("SELECT worktree FROM executions WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap();
        serde_json::from_str(&s).unwrap()
    };
    for e in &edits {
        let r = report(&e.id);
        assert_eq!(r["kept"], false, "{r}");
        assert!(!Path::new(r["path"].as_str().unwrap()).exists());
    }
    let broken = env.executions("broken").remove(0);
    let r = report(&broken.id);
    assert_eq!(r["kept"], true, "{r}");
    assert_eq!(r["branch"], format!("try/{}", broken.id));
    assert!(Path::new(r["path"].as_str().unwrap())
        .join("README.md")
        .is_file());
    let log: Vec<String> = env.logs(&broken.id).into_iter().map(|(_, l)| l).collect();
    assert!(
        log.iter()
            .any(|l| l.contains("worktree") && l.contains("kept at")),
        "{log:?}"
    );
}

/// `session: continue_job` with a worktree: the CLI finds a session only from the directory it
/// was made in (the fake keeps sessions per working directory, like the real one), and a
/// completed run's worktree is removed — so each run of the job works at the same path, and the
/// second run resumes the first's session. A failed run's kept worktree moves to its own folder,
/// leaving the path to the next run.
#[test]
fn a_job_continuing_its_session_resumes_it_in_a_fresh_worktree() {
    let env = Env::new(ConfigOpts::default());
    let repo = repo(&env);
    env.manifest(
        "pair.yaml",
        &format!(
            "name: pair\nprompt: keep going\nexecution:\n  session: continue_job\n  \
             worktree: {{ repo: {} }}\n",
            repo.display()
        ),
    );
    let sessions = env.root().join("sessions");
    let mut cnp = env.start_with(&[("FAKE_CLAUDE_SESSIONS_DIR", sessions.to_str().unwrap())]);
    cnp.wait_log("cnp is running");
    let execute = || {
        let out = env.run_cli(&["job", "execute", "pair", "--wait"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    execute();
    execute();
    let runs = env.executions("pair");
    assert_eq!(runs.len(), 2);
    assert!(runs.iter().all(|r| r.status == "completed"), "{runs:?}");
    let first = runs[0].session_id.clone().expect("a session");
    assert_eq!(
        runs[1].session_id.as_deref(),
        Some(first.as_str()),
        "resumed"
    );
    let log: Vec<String> = env.logs(&runs[1].id).into_iter().map(|(_, l)| l).collect();
    assert!(
        log.iter().any(|l| l.contains("resuming session")),
        "{log:?}"
    );
    assert!(
        !log.iter().any(|l| l.contains("does not know session")),
        "{log:?}"
    );
    let cwds: Vec<String> = env
        .records()
        .into_iter()
        .filter(|r| !r.raw["scenario"].is_null())
        .map(|r| r.raw["cwd"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(cwds.len(), 2);
    assert_eq!(cwds[0], cwds[1], "one path for the job's runs");
    assert!(cwds[0].contains("/worktrees/job-"), "{}", cwds[0]);
    assert!(
        !Path::new(&cwds[0]).exists(),
        "removed after each completed run"
    );

    // A failed run's worktree is kept, at its own folder; the next run still resumes.
    env.manifest(
        "pair.yaml",
        &format!(
            "name: pair\nprompt: keep going\nexecution:\n  session: continue_job\n  \
             environment: {{ FAKE_CLAUDE_SCENARIO: error }}\n  worktree: {{ repo: {} }}\n",
            repo.display()
        ),
    );
    cnp.wait_for("the manifest reloaded", || {
        let out = env.run_cli(&["job", "show", "pair", "--format", "json"]);
        String::from_utf8_lossy(&out.stdout)
            .contains("FAKE_CLAUDE_SCENARIO")
            .then_some(())
    });
    execute();
    let failed = env.executions("pair").pop().unwrap();
    assert_eq!(failed.status, "failed");
    let report: String = env
        .db()
        .query_row(
            "SELECT worktree FROM executions WHERE id = ?1",
            [&failed.id],
            |r| r.get(0),
        )
        .unwrap();
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["kept"], true, "{report}");
    let kept = report["path"].as_str().unwrap();
    assert!(kept.ends_with(&failed.id), "{kept}");
    assert!(Path::new(kept).is_dir());
    assert!(
        !Path::new(&cwds[0]).exists(),
        "the job's path is free again"
    );
}
