//! `cnp job batch-create|batch-execute|batch-pause|batch-resume`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;
use serde_json::json;

use super::client::Client;
use super::job::job_path;
use crate::model::{Job, JobExecution};

/// Which jobs a batch command acts on (all given selectors must match).
#[derive(Debug, Clone, Default, Args)]
pub struct Selector {
    /// Jobs with this tag.
    #[arg(long)]
    pub tag: Option<String>,
    /// Jobs in this state: active, paused, disabled, or `running` / `queued` (jobs with a run
    /// in progress / waiting).
    #[arg(long)]
    pub status: Option<String>,
    /// Print what would be done, do nothing.
    #[arg(long)]
    pub dry_run: bool,
}

impl Selector {
    /// The matching jobs.
    pub async fn jobs(&self, client: &Client) -> anyhow::Result<Vec<Job>> {
        if self.tag.is_none() && self.status.is_none() {
            bail!("select jobs with --tag and/or --status");
        }
        let mut q = Vec::new();
        if let Some(t) = &self.tag {
            q.push(("tag", t.clone()));
        }
        let run_state = match self.status.as_deref() {
            Some(s @ ("running" | "queued" | "deferred")) => Some(s.to_owned()),
            Some(s @ ("active" | "paused" | "disabled")) => {
                q.push(("status", s.to_owned()));
                None
            }
            Some(other) => bail!(
                "--status `{other}`: use active, paused, disabled, running, queued or deferred"
            ),
            None => None,
        };
        let mut jobs: Vec<Job> = client.list("/api/jobs", &q, None).await?;
        if let Some(state) = run_state {
            let execs: Vec<JobExecution> = client
                .list("/api/executions", &[("status", state)], None)
                .await?;
            let ids: BTreeSet<&str> = execs.iter().map(|e| e.job_id.as_str()).collect();
            jobs.retain(|j| ids.contains(j.id.as_str()));
        }
        Ok(jobs)
    }
}

fn summary(verb: &str, ok: usize, failed: usize) -> ExitCode {
    if failed == 0 {
        println!("{verb} {ok} job(s)");
        ExitCode::SUCCESS
    } else {
        println!("{verb} {ok} job(s), {failed} failed");
        ExitCode::from(super::EXIT_FAILURE)
    }
}

/// Creates every job of a manifest-format YAML file; the file is checked as a whole first
/// (errors name file:line), then each job is created.
pub async fn create(client: &Client, file: &Path) -> anyhow::Result<ExitCode> {
    let jobs = crate::manifest::load_manifest(file, client.timezone())?;
    if jobs.is_empty() {
        println!("{}: defines no jobs", file.display());
        return Ok(ExitCode::SUCCESS);
    }
    let (mut ok, mut failed) = (0, 0);
    for (spec, _) in jobs {
        match client.post::<Job>("/api/jobs", &spec).await {
            Ok(j) => {
                ok += 1;
                println!("created `{}` ({})", j.name, j.id);
            }
            Err(e @ super::client::ClientError::NotRunning { .. }) => return Err(e.into()),
            Err(e) => {
                failed += 1;
                eprintln!("error: `{}`: {e}", spec.name);
            }
        }
    }
    Ok(summary("created", ok, failed))
}

pub async fn execute(client: &Client, select: &Selector) -> anyhow::Result<ExitCode> {
    let jobs = select.jobs(client).await?;
    if jobs.is_empty() {
        println!("no jobs match");
        return Ok(ExitCode::SUCCESS);
    }
    let (mut ok, mut failed) = (0, 0);
    for j in &jobs {
        if select.dry_run {
            println!("would execute `{}` ({})", j.name, j.id);
            continue;
        }
        match client
            .post::<serde_json::Value>(&format!("{}/execute", job_path(&j.id)), &json!({}))
            .await
        {
            Ok(r) => {
                ok += 1;
                println!(
                    "executing `{}`: execution {}",
                    j.name,
                    r.get("execution_id")
                        .and_then(|v| v.as_str())
                        .unwrap_or("?")
                );
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: `{}`: {e}", j.name);
            }
        }
    }
    if select.dry_run {
        return Ok(ExitCode::SUCCESS);
    }
    Ok(summary("executed", ok, failed))
}

pub async fn set_paused(
    client: &Client,
    select: &Selector,
    pause: bool,
) -> anyhow::Result<ExitCode> {
    let jobs = select.jobs(client).await?;
    let verb = if pause { "pause" } else { "resume" };
    if jobs.is_empty() {
        println!("no jobs match");
        return Ok(ExitCode::SUCCESS);
    }
    let (mut ok, mut failed) = (0, 0);
    for j in &jobs {
        if select.dry_run {
            println!("would {verb} `{}` ({})", j.name, j.id);
            continue;
        }
        match client
            .post::<Job>(&format!("{}/{verb}", job_path(&j.id)), &json!({}))
            .await
        {
            Ok(after) => {
                ok += 1;
                println!("`{}`: {}", after.name, after.status.as_str());
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: `{}`: {e}", j.name);
            }
        }
    }
    if select.dry_run {
        return Ok(ExitCode::SUCCESS);
    }
    Ok(summary(
        if pause { "paused" } else { "resumed" },
        ok,
        failed,
    ))
}
