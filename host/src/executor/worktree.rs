//! A git worktree per run (`execution.worktree`), through the `git` CLI: made before the run on
//! a new branch from the base, the CLI runs in it; afterwards its diff stat and commits are read
//! and it is removed or kept. Concurrent runs of one repository each get their own. Worktrees a
//! stopped cnp left behind are pruned at the next start.
//!
//! Worktrees live in `<root>/<execution id>` (`root` is `worktrees/` beside the database), so
//! the folder name says which run a worktree belongs to. A job that resumes its own Claude
//! session (`session: continue_job`) runs in `<root>/job-<job id>` instead, every run at the
//! same path: the CLI finds a session by the directory it was made in, and that worktree is gone
//! once its run ended. Such runs never overlap (one at a time); a kept one is moved to
//! `<root>/<execution id>` when its run ends, so the path is free for the next.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

use crate::model::{KeepWorktree, WorktreeReport, WorktreeSpec};

/// The branch name when the job names none.
pub const DEFAULT_BRANCH: &str = "cnp/{{job}}/{{run}}";
/// A git command taking longer than this is a failure (a hung credential prompt, a lock).
const GIT_TIMEOUT: Duration = Duration::from_secs(120);

/// A worktree made for a run.
#[derive(Debug, Clone)]
pub struct Worktree {
    pub repo: PathBuf,
    pub path: PathBuf,
    pub branch: String,
    pub base_commit: String,
    pub keep: KeepWorktree,
    /// Where it goes if it is kept, when that is not `path` (a job's fixed path).
    pub kept_path: PathBuf,
}

/// Checks a branch template: `{{job}}` and `{{run}}` only, and a valid ref once filled in.
pub fn check_branch_template(t: &str) -> Result<(), String> {
    let filled = fill(t, "job", "0197a0b1-0000-7000-8000-000000000000");
    let rest = filled.replace("{{", "").replace("}}", "");
    if filled.contains("{{") || filled.contains("}}") {
        return Err(format!(
            "`{t}`: only `{{{{job}}}}` and `{{{{run}}}}` can be used, got `{rest}`"
        ));
    }
    check_ref(&filled).map_err(|e| format!("`{t}`: {e}"))
}

fn fill(t: &str, job: &str, run: &str) -> String {
    t.replace("{{job}}", job)
        .replace("{{ job }}", job)
        .replace("{{run}}", run)
        .replace("{{ run }}", run)
}

/// The rules of `git check-ref-format` that a generated name can break.
fn check_ref(name: &str) -> Result<(), String> {
    let bad = name.is_empty()
        || name.starts_with('-')
        || name.starts_with('/')
        || name.ends_with('/')
        || name.ends_with(".lock")
        || name.ends_with('.')
        || name.contains("..")
        || name.contains("//")
        || name.contains("@{")
        || name
            .chars()
            .any(|c| c.is_control() || " ~^:?*[\\".contains(c));
    if bad {
        Err(format!("`{name}` is not a valid branch name"))
    } else {
        Ok(())
    }
}

/// A job name as a branch path segment: letters, digits, `-`, `_`, `.`; the rest `-`.
fn branch_safe(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let s = s.trim_matches(|c| c == '-' || c == '.').to_owned();
    if s.is_empty() {
        "job".into()
    } else {
        s
    }
}

async fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    git_with(dir, args, None).await
}

/// [`git`] with another index file (`GIT_INDEX_FILE`).
async fn git_with(dir: &Path, args: &[&str], index: Option<&Path>) -> Result<String, String> {
    let mut cmd = Command::new("git");
    cmd.arg("-C").arg(dir).args(args);
    if let Some(i) = index {
        cmd.env("GIT_INDEX_FILE", i);
    }
    cmd.env("GIT_TERMINAL_PROMPT", "0").kill_on_drop(true);
    let out = match tokio::time::timeout(GIT_TIMEOUT, cmd.output()).await {
        Err(_) => {
            return Err(format!(
                "`git {}` took more than {GIT_TIMEOUT:?}",
                args.join(" ")
            ))
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err("`git` is not installed (execution.worktree needs the git CLI)".into())
        }
        Ok(Err(e)) => return Err(format!("cannot run git: {e}")),
        Ok(Ok(o)) => o,
    };
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(format!(
            "`git {}` failed: {}",
            args.join(" "),
            err.trim().lines().last().unwrap_or("no message")
        ))
    }
}

/// Makes the run's worktree: checks the repository and base, then `git worktree add -b`.
pub async fn create(
    spec: &WorktreeSpec,
    job_name: &str,
    execution_id: &str,
    root: &Path,
    fixed: Option<&str>,
) -> Result<Worktree, String> {
    let repo = PathBuf::from(spec.repo.trim());
    if !repo.is_dir() {
        return Err(format!(
            "worktree: the repository `{}` does not exist",
            repo.display()
        ));
    }
    let top = git(&repo, &["rev-parse", "--show-toplevel"])
        .await
        .map_err(|e| {
            format!(
                "worktree: `{}` is not a git repository ({e})",
                repo.display()
            )
        })?;
    let repo = PathBuf::from(top);
    let base = spec.base.as_deref().unwrap_or("HEAD").trim();
    // A base of HEAD means "what is checked out": uncommitted changes there would not be in the
    // worktree, so they are an error rather than silently left out.
    if spec.base.is_none() {
        let dirty = git(&repo, &["status", "--porcelain", "--untracked-files=no"])
            .await
            .map_err(|e| format!("worktree: {e}"))?;
        if !dirty.is_empty() {
            return Err(format!(
                "worktree: `{}` has uncommitted changes, which a worktree from HEAD would leave out: \
                 commit or stash them, or set execution.worktree.base",
                repo.display()
            ));
        }
    }
    let base_commit = git(
        &repo,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{base}^{{commit}}"),
        ],
    )
    .await
    .map_err(|_| {
        format!(
            "worktree: `{base}` is not a branch, tag or commit of `{}`",
            repo.display()
        )
    })?;
    let branch = fill(
        spec.branch.as_deref().unwrap_or(DEFAULT_BRANCH),
        &branch_safe(job_name),
        execution_id,
    );
    check_ref(&branch).map_err(|e| format!("worktree: {e}"))?;
    std::fs::create_dir_all(root)
        .map_err(|e| format!("worktree: cannot create {}: {e}", root.display()))?;
    let kept_path = root.join(execution_id);
    let path = match fixed {
        Some(name) => {
            let path = root.join(name);
            if path.exists() {
                // Left by a run a crash cut short (a kept one was moved away): replaced.
                let p = path.to_string_lossy().into_owned();
                if git(&repo, &["worktree", "remove", "--force", &p])
                    .await
                    .is_err()
                {
                    std::fs::remove_dir_all(&path)
                        .map_err(|e| format!("worktree: cannot remove the leftover {p}: {e}"))?;
                    let _ = git(&repo, &["worktree", "prune"]).await;
                }
            }
            path
        }
        None => kept_path.clone(),
    };
    let path_s = path.to_string_lossy().into_owned();
    git(
        &repo,
        &[
            "worktree",
            "add",
            "--quiet",
            "-b",
            &branch,
            &path_s,
            &base_commit,
        ],
    )
    .await
    .map_err(|e| format!("worktree: {e}"))?;
    Ok(Worktree {
        repo,
        path,
        branch,
        base_commit,
        keep: spec.keep,
        kept_path,
    })
}

/// After the run: what it changed and committed; then removes the worktree unless it is kept
/// (`keep`, and whether the run completed). A branch with no new commits is deleted with it.
pub async fn finish(w: &Worktree, completed: bool) -> WorktreeReport {
    let mut report = WorktreeReport {
        repo: w.repo.display().to_string(),
        path: w.path.display().to_string(),
        branch: w.branch.clone(),
        base_commit: w.base_commit.clone(),
        ..Default::default()
    };
    // Everything against the base: commits and what is left uncommitted (new files too, seen
    // through a copy of the index, so the worktree's own index is left as the run left it).
    report.diff_stat = diff_stat(w)
        .await
        .unwrap_or_else(|e| format!("(no diff stat: {e})"));
    report.commits = git(
        &w.path,
        &[
            "log",
            "--reverse",
            "--format=%H %s",
            &format!("{}..HEAD", w.base_commit),
        ],
    )
    .await
    .map(|s| {
        s.lines()
            .map(str::to_owned)
            .filter(|l| !l.is_empty())
            .collect()
    })
    .unwrap_or_default();
    let keep = match w.keep {
        KeepWorktree::Always => true,
        KeepWorktree::Never => false,
        KeepWorktree::OnFailure => !completed,
    };
    if keep {
        report.kept = true;
        report.note = Some(match w.keep {
            KeepWorktree::Always => "kept (keep: always)".into(),
            _ => "kept: the run did not complete (keep: on_failure)".into(),
        });
        if w.kept_path != w.path {
            // The job's fixed path is for its next run: this one moves to its own.
            let (from, to) = (
                w.path.to_string_lossy().into_owned(),
                w.kept_path.to_string_lossy().into_owned(),
            );
            match git(&w.repo, &["worktree", "move", &from, &to]).await {
                Ok(_) => report.path = to,
                Err(e) => {
                    report.note = Some(format!(
                        "kept at {from}, which the job's next run replaces: cannot move it ({e})"
                    ))
                }
            }
        }
        return report;
    }
    if let Err(e) = remove(w, report.commits.is_empty()).await {
        report.kept = w.path.exists();
        report.note = Some(e);
    }
    report
}

/// `git diff --stat` of the worktree against its base, new files included: `git add
/// --intent-to-add` into a copy of the worktree's index.
async fn diff_stat(w: &Worktree) -> Result<String, String> {
    let index = git(&w.path, &["rev-parse", "--git-path", "index"]).await?;
    let index = w.path.join(index);
    let tmp = std::env::temp_dir().join(format!("cnp-index-{}", uuid::Uuid::new_v4()));
    if index.exists() {
        std::fs::copy(&index, &tmp).map_err(|e| format!("a temporary index: {e}"))?;
    }
    let stat = async {
        git_with(&w.path, &["add", "--intent-to-add", "--all"], Some(&tmp)).await?;
        git_with(&w.path, &["diff", "--stat", &w.base_commit], Some(&tmp)).await
    }
    .await;
    let _ = std::fs::remove_file(&tmp);
    stat
}

/// Removes a worktree and its branch whatever `keep` says (a run that will start over).
pub async fn discard(w: &Worktree) {
    if let Err(e) = remove(w, true).await {
        tracing::warn!(worktree = %w.path.display(), error = %e, "cannot remove a worktree");
    }
}

async fn remove(w: &Worktree, delete_branch: bool) -> Result<(), String> {
    let path = w.path.to_string_lossy().into_owned();
    git(&w.repo, &["worktree", "remove", "--force", &path]).await?;
    if delete_branch {
        // Nothing committed: the branch has nothing to keep.
        git(&w.repo, &["branch", "-D", &w.branch]).await?;
    }
    Ok(())
}

/// Whether `root` holds any worktree (entry) at all.
pub fn any(root: &Path) -> bool {
    std::fs::read_dir(root).is_ok_and(|mut d| d.next().is_some())
}

/// At start-up: removes the worktrees under `root` whose run is over and that are not to be
/// kept (`keep(execution id)` says whether to keep one; a run interrupted by a crash never
/// reached its own clean-up). Returns how many were removed.
pub async fn prune(root: &Path, keep: impl Fn(&str) -> bool) -> usize {
    let Ok(entries) = std::fs::read_dir(root) else {
        return 0;
    };
    let mut removed = 0;
    let mut repos = std::collections::HashSet::new();
    for e in entries.flatten() {
        let path = e.path();
        let Some(id) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        if !path.is_dir() || keep(&id) {
            continue;
        }
        // The repository it belongs to, from the worktree's own `.git` file.
        let common = git(&path, &["rev-parse", "--git-common-dir"]).await;
        let p = path.to_string_lossy().into_owned();
        match common {
            Ok(dir) => {
                let repo = Path::new(&dir).parent().map(Path::to_path_buf);
                if let Some(repo) = repo {
                    if git(&repo, &["worktree", "remove", "--force", &p])
                        .await
                        .is_ok()
                    {
                        removed += 1;
                        repos.insert(repo);
                        continue;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(worktree = %p, error = %e, "stale worktree is not a git worktree any more")
            }
        }
        if std::fs::remove_dir_all(&path).is_ok() {
            removed += 1;
        }
    }
    for repo in repos {
        let _ = git(&repo, &["worktree", "prune"]).await;
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_templates_and_names() {
        assert!(check_branch_template(DEFAULT_BRANCH).is_ok());
        assert!(check_branch_template("review/{{ run }}").is_ok());
        assert!(check_branch_template("x/{{other}}").is_err());
        assert!(check_branch_template("bad name/{{run}}").is_err());
        assert!(check_branch_template("a..b").is_err());
        assert_eq!(branch_safe("Nightly review: app"), "Nightly-review--app");
        assert_eq!(branch_safe("¿?"), "job");
    }
}
