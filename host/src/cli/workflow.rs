//! `cnp workflow …`: passes of jobs started by their upstreams (`depends_on`).

use std::process::ExitCode;

use clap::Subcommand;

use super::client::{seg, Client};
use super::output::{self, Format};
use crate::model::{PassNode, WorkflowPass};

#[derive(Debug, Subcommand)]
pub enum WorkflowCommand {
    /// Recent passes, newest first.
    #[command(alias = "ls")]
    List {
        /// Only passes this job began or ran in.
        #[arg(long)]
        job: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// A pass as a tree: each job with its run's status, each edge with its verdict.
    Show {
        /// The pass id (its first run's execution id; `cnp workflow list` shows them).
        id: String,
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Cancel a pass: its queued and running runs stop, nothing more of it starts.
    Cancel { id: String },
}

pub async fn run(client: &Client, cmd: WorkflowCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        WorkflowCommand::List { job, limit, format } => {
            let mut query = vec![("limit", limit.to_string())];
            if let Some(j) = job {
                query.push(("job_id", j));
            }
            let page: serde_json::Value = client.get("/api/workflows", &query).await?;
            if !output::print_structured(format, &page["items"])? {
                let mut t = output::table(["PASS", "FIRST JOB", "STARTED", "RUNS"]);
                for w in page["items"].as_array().into_iter().flatten() {
                    let runs = w["runs"]
                        .as_object()
                        .map(|m| {
                            m.iter()
                                .map(|(k, v)| format!("{v} {k}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .unwrap_or_default();
                    let started = w["created_at"]
                        .as_str()
                        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                        .map(|t| output::local_time(Some(t.with_timezone(&chrono::Utc))))
                        .unwrap_or_default();
                    let cancelled = if w["cancelled_at"].is_null() {
                        ""
                    } else {
                        " (cancelled)"
                    };
                    t.add_row(vec![
                        w["id"].as_str().unwrap_or_default().to_owned(),
                        w["root_job_name"].as_str().unwrap_or("-").to_owned(),
                        started,
                        format!("{runs}{cancelled}"),
                    ]);
                }
                output::print_table(&t);
            }
            Ok(ExitCode::SUCCESS)
        }
        WorkflowCommand::Show { id, format } => {
            let pass: WorkflowPass = client
                .get(&format!("/api/workflows/{}", seg(&id)), &[])
                .await?;
            if !output::print_structured(format, &pass)? {
                print!("{}", tree(&pass));
            }
            Ok(ExitCode::SUCCESS)
        }
        WorkflowCommand::Cancel { id } => {
            let r: serde_json::Value = client
                .post(
                    &format!("/api/workflows/{}/cancel", seg(&id)),
                    &serde_json::json!({}),
                )
                .await?;
            println!(
                "pass {id} cancelled: {} run(s) stopped; nothing more of it starts",
                r["cancelled_runs"]
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn status_of(n: &PassNode) -> String {
    match n.status {
        None => "… waiting".into(),
        Some(s) => {
            let mark = match s.as_str() {
                "completed" => "✔",
                "failed" | "timed_out" | "interrupted" => "✘",
                "skipped" => "–",
                "cancelled" => "⊘",
                _ => "…",
            };
            let attempts = if n.attempts > 1 {
                format!(" (attempt {})", n.attempts)
            } else {
                String::new()
            };
            format!("{mark} {}{attempts}", s.as_str())
        }
    }
}

/// The pass as a tree from its first job: a job reached by several edges is printed in full
/// under the first and referred to (`↑ see above`) under the others.
pub fn tree(p: &WorkflowPass) -> String {
    let mut out = format!(
        "pass {} — {} — started {}\n",
        p.id,
        p.status,
        output::local_time(Some(p.created_at))
    );
    let Some(root) = p.root_job_id.as_deref() else {
        return out;
    };
    let mut shown = std::collections::HashSet::new();
    // The tree's recursion: the pass, where in it, and the two accumulators.
    #[allow(clippy::too_many_arguments)]
    fn walk(
        p: &WorkflowPass,
        job: &str,
        prefix: &str,
        edge: Option<String>,
        last: bool,
        top: bool,
        shown: &mut std::collections::HashSet<String>,
        out: &mut String,
    ) {
        let Some(n) = p.nodes.iter().find(|n| n.job_id == job) else {
            return;
        };
        let branch = if top {
            ""
        } else if last {
            "└─ "
        } else {
            "├─ "
        };
        let edge = edge.map(|e| format!("[{e}] ")).unwrap_or_default();
        let again = !shown.insert(job.to_owned());
        let reason = n
            .reason
            .as_deref()
            .filter(|_| !again)
            .map(|r| format!(" — {}", crate::text::first_line(r, 100)))
            .unwrap_or_default();
        let id = n
            .execution_id
            .as_deref()
            .filter(|_| !again)
            .map(|i| format!("  {i}"))
            .unwrap_or_default();
        let more = if again { "  ↑ see above" } else { "" };
        out.push_str(&format!(
            "{prefix}{branch}{edge}{}: {}{reason}{id}{more}\n",
            n.name,
            status_of(n)
        ));
        if again {
            return;
        }
        let kids: Vec<_> = p.edges.iter().filter(|e| e.from == job).collect();
        let child_prefix = if top {
            String::new()
        } else {
            format!("{prefix}{}", if last { "   " } else { "│  " })
        };
        for (i, e) in kids.iter().enumerate() {
            let mut label = e.on.as_str().to_owned();
            if let Some(w) = &e.when {
                label.push_str(&format!(" when {w}"));
            }
            if e.satisfied == Some(false) {
                label.push_str(" ✗");
            }
            walk(
                p,
                &e.to,
                &child_prefix,
                Some(label),
                i + 1 == kids.len(),
                false,
                shown,
                out,
            );
        }
    }
    walk(p, root, "", None, true, true, &mut shown, &mut out);
    out
}
