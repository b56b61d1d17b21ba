//! Live views over the WebSocket: `job execute --wait`, `job monitor --follow`,
//! `job logs --follow`. Each also polls the execution now and then, so a missed or lagged
//! message (or no WebSocket at all) only delays the end, never hides it; log lines are
//! de-duplicated by sequence number and gaps are filled from the logs route.

use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message;

use super::client::{Client, LogEntry};
use super::output::{self, Format};
use crate::model::{ExecutionStatus, Job, JobExecution};

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How often the live views re-read the execution, whatever the WebSocket says.
const POLL: Duration = Duration::from_secs(1);

/// A WebSocket message (`type` tags, camelCase fields).
#[derive(Debug, Clone, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum WsMessage {
    JobStatus {
        #[serde(default)]
        job_id: Option<String>,
        #[serde(default)]
        execution_id: Option<String>,
        status: String,
        #[serde(default)]
        progress: Option<f64>,
        #[serde(default)]
        message: Option<String>,
        #[serde(default)]
        timestamp: Option<DateTime<Utc>>,
        /// Set when the attempt failed and its retry is recorded.
        #[serde(default)]
        next_attempt_id: Option<String>,
        #[serde(default)]
        next_attempt_at: Option<DateTime<Utc>>,
    },
    Log {
        execution_id: String,
        seq: u64,
        #[serde(default)]
        stream: Option<String>,
        message: String,
        #[serde(default)]
        timestamp: Option<DateTime<Utc>>,
    },
    Lagged {
        #[serde(default)]
        missed: u64,
    },
    #[serde(other)]
    Other,
}

/// Reads the next message; `None` when the socket is closed or broken.
async fn next_message(ws: &mut Ws) -> Option<WsMessage> {
    loop {
        match ws.next().await? {
            Ok(Message::Text(t)) => {
                if let Ok(m) = serde_json::from_str::<WsMessage>(&t) {
                    return Some(m);
                }
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Waits on an optional socket (pending forever when there is none).
async fn maybe_next(ws: &mut Option<Ws>) -> Option<WsMessage> {
    match ws {
        Some(w) => next_message(w).await,
        None => std::future::pending().await,
    }
}

/// How log lines are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogMode {
    None,
    Pretty,
    Raw,
}

/// Prints log lines in order, once each.
struct LogPrinter {
    mode: LogMode,
    last_seq: Option<u64>,
    to_stderr: bool,
    prefix: String,
}

impl LogPrinter {
    fn new(mode: LogMode, to_stderr: bool) -> Self {
        LogPrinter {
            mode,
            last_seq: None,
            to_stderr,
            prefix: String::new(),
        }
    }

    fn show(&mut self, pb: Option<&ProgressBar>, e: &LogEntry) {
        if self.last_seq.is_some_and(|s| e.seq <= s) {
            return;
        }
        self.last_seq = Some(e.seq);
        let text = match self.mode {
            LogMode::None => return,
            LogMode::Raw => Some(format!("{:<6} {}", e.stream, e.line)),
            LogMode::Pretty => output::pretty_log_line(&e.stream, &e.line),
        };
        let Some(text) = text else { return };
        let text = if self.prefix.is_empty() {
            text
        } else {
            text.lines()
                .map(|l| format!("{}{l}", self.prefix))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let print = || {
            if self.to_stderr {
                eprintln!("{text}");
            } else {
                println!("{text}");
            }
        };
        match pb {
            Some(pb) => pb.suspend(print),
            None => print(),
        }
    }

    /// Fills the gap since the last line shown from the logs route.
    async fn catch_up(&mut self, client: &Client, pb: Option<&ProgressBar>, id: &str) {
        if let Ok(lines) = client.logs_after(id, self.last_seq).await {
            for l in &lines {
                self.show(pb, l);
            }
        }
    }
}

fn spinner() -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

fn status_message(e: &JobExecution) -> String {
    match e.status {
        ExecutionStatus::Queued | ExecutionStatus::Deferred => match e.scheduled_for {
            Some(t) if t > Utc::now() => {
                format!("{} — starts {}", e.status.as_str(), output::relative(t))
            }
            _ => e.status.as_str().to_owned(),
        },
        ExecutionStatus::Running => match e.pid {
            Some(pid) => format!("running (pid {pid})"),
            None => "running".into(),
        },
        s => s.as_str().to_owned(),
    }
}

/// The exit code an execution's final status stands for.
pub fn exit_code_for(status: ExecutionStatus) -> u8 {
    match status {
        ExecutionStatus::Completed => 0,
        ExecutionStatus::Skipped => super::EXIT_SKIPPED,
        _ => super::EXIT_FAILURE,
    }
}

/// `cnp job execute --wait`: progress and output until the run ends — across its retry
/// attempts: a failed attempt whose retry is recorded is followed by the next one. The final
/// output goes to stdout, everything else to stderr; the exit code is the last attempt's.
pub async fn wait(client: &Client, id: &str, mode: LogMode) -> anyhow::Result<ExitCode> {
    let mut id = id.to_owned();
    let mut prefix = String::new();
    loop {
        let finished = match wait_attempt(client, &id, mode, &prefix).await? {
            Ok(e) => e,
            Err(code) => return Ok(code),
        };
        let detail = client.execution_detail(&id).await?;
        let next = detail
            .next_attempt
            .filter(|_| finished.status != ExecutionStatus::Completed);
        let of = |n: u32| format!("attempt {n}/{}", detail.max_attempts.max(n));
        let label = if detail.max_attempts > 1 || detail.attempt > 1 {
            format!("{} ", of(detail.attempt))
        } else {
            String::new()
        };
        let took = finished
            .execution_time_ms
            .map(|ms| format!(" in {}", output::duration_ms(ms)))
            .unwrap_or_default();
        let cost = finished
            .cost_usd
            .map(|c| format!(", ${c:.4}"))
            .unwrap_or_default();
        let mark = if finished.status == ExecutionStatus::Completed {
            "✔"
        } else {
            "✘"
        };
        eprintln!(
            "{mark} {label}execution {id} {}{took}{cost}",
            output::execution_result(&finished, 300)
        );
        match next {
            Some(n) => {
                let when = n
                    .scheduled_for
                    .filter(|t| *t > Utc::now())
                    .map(output::relative)
                    .unwrap_or_else(|| "now".into());
                eprintln!("{} {when} (execution {}) …", of(n.attempt), n.id);
                prefix = format!("{}: ", of(n.attempt));
                id = n.id;
            }
            None => {
                if let Some(o) = &finished.output {
                    if !o.is_empty() {
                        println!("{o}");
                    }
                }
                return Ok(ExitCode::from(exit_code_for(finished.status)));
            }
        }
    }
}

/// Follows one attempt until it ends: `Err(code)` when the user stopped waiting.
async fn wait_attempt(
    client: &Client,
    id: &str,
    mode: LogMode,
    prefix: &str,
) -> anyhow::Result<Result<JobExecution, ExitCode>> {
    let mut ws = match client.websocket(&[("execution_id", id)]).await {
        Ok(w) => Some(w),
        Err(e) => {
            eprintln!("(no live stream: {e:#}; polling instead)");
            None
        }
    };
    let pb = spinner();
    let mut logs = LogPrinter::new(mode, true);
    let mut poll = tokio::time::interval(POLL);
    let mut polled_logs = ws.is_none();
    let finished = loop {
        tokio::select! {
            m = maybe_next(&mut ws) => match m {
                Some(WsMessage::Log { execution_id, seq, stream, message, timestamp, .. })
                    if execution_id == id =>
                {
                    logs.show(Some(&pb), &LogEntry {
                        seq,
                        stream: stream.unwrap_or_else(|| "stdout".into()),
                        timestamp,
                        line: message,
                    });
                }
                Some(WsMessage::JobStatus { execution_id: Some(e), status, message, .. })
                    if e == id =>
                {
                    pb.set_message(match message {
                        Some(m) if !m.is_empty() => format!("{prefix}{status} — {m}"),
                        _ => format!("{prefix}{status}"),
                    });
                    if ExecutionStatus::parse(&status).is_some_and(|s| s.is_terminal()) {
                        let ex = client.execution(id).await?;
                        if ex.status.is_terminal() {
                            break ex;
                        }
                    }
                }
                Some(WsMessage::Lagged { .. }) => logs.catch_up(client, Some(&pb), id).await,
                Some(_) => {}
                None => {
                    ws = None;
                    polled_logs = true;
                }
            },
            _ = poll.tick() => {
                let ex = client.execution(id).await?;
                pb.set_message(format!("{prefix}{}", status_message(&ex)));
                if polled_logs {
                    logs.catch_up(client, Some(&pb), id).await;
                }
                if ex.status.is_terminal() {
                    break ex;
                }
            }
            _ = tokio::signal::ctrl_c() => {
                pb.finish_and_clear();
                eprintln!("stopped waiting; execution {id} goes on (cancel it with `cnp job cancel {id}`)");
                return Ok(Err(ExitCode::from(130)));
            }
        }
    };
    logs.catch_up(client, Some(&pb), id).await;
    pb.finish_and_clear();
    Ok(Ok(finished))
}

/// `cnp job logs`: stored lines, then (with `--follow`) live ones until the run ends — its
/// retry attempts included: a failed attempt whose retry is recorded is followed by the next.
pub async fn logs(client: &Client, id: &str, follow: bool, raw: bool) -> anyhow::Result<ExitCode> {
    let mut id = id.to_owned();
    loop {
        let code = logs_of_attempt(client, &id, follow, raw).await?;
        if !follow || code != ExitCode::SUCCESS {
            return Ok(code);
        }
        let d = client.execution_detail(&id).await?;
        match d.next_attempt {
            Some(n) if d.execution.status != ExecutionStatus::Completed => {
                let when = n
                    .scheduled_for
                    .filter(|t| *t > Utc::now())
                    .map(output::relative)
                    .unwrap_or_else(|| "now".into());
                eprintln!(
                    "— attempt {}/{} {when} (execution {}) —",
                    n.attempt,
                    d.max_attempts.max(n.attempt),
                    n.id
                );
                id = n.id;
            }
            _ => return Ok(code),
        }
    }
}

async fn logs_of_attempt(
    client: &Client,
    id: &str,
    follow: bool,
    raw: bool,
) -> anyhow::Result<ExitCode> {
    let mode = if raw { LogMode::Raw } else { LogMode::Pretty };
    let ex = client.execution(id).await?;
    let mut printer = LogPrinter::new(mode, false);
    if !follow || ex.status.is_terminal() {
        printer.catch_up_strict(client, id).await?;
        return Ok(ExitCode::SUCCESS);
    }
    // The socket sends the stored backlog first, then live lines.
    let mut ws = client.websocket(&[("execution_id", id)]).await.ok();
    let mut polled = ws.is_none();
    let mut poll = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            m = maybe_next(&mut ws) => match m {
                Some(WsMessage::Log { execution_id, seq, stream, message, timestamp, .. })
                    if execution_id == id =>
                {
                    printer.show(None, &LogEntry {
                        seq,
                        stream: stream.unwrap_or_else(|| "stdout".into()),
                        timestamp,
                        line: message,
                    });
                }
                Some(WsMessage::Lagged { .. }) => printer.catch_up(client, None, id).await,
                Some(_) => {}
                None => { ws = None; polled = true; }
            },
            _ = poll.tick() => {
                let ex = client.execution(id).await?;
                if polled {
                    printer.catch_up(client, None, id).await;
                }
                if ex.status.is_terminal() {
                    break;
                }
            }
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
    printer.catch_up(client, None, id).await;
    Ok(ExitCode::SUCCESS)
}

impl LogPrinter {
    /// Like `catch_up`, but a failing logs route is an error.
    async fn catch_up_strict(&mut self, client: &Client, id: &str) -> anyhow::Result<()> {
        for l in client.logs_after(id, self.last_seq).await? {
            self.show(None, &l);
        }
        Ok(())
    }
}

/// `cnp job monitor`: the job's state and recent runs; with `--follow`, its status changes and
/// output lines as they happen, until Ctrl-C.
pub async fn monitor(
    client: &Client,
    job: &str,
    follow: bool,
    raw: bool,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let j = client.job(job).await?;
    let recent: Vec<JobExecution> = client
        .list(
            &format!("{}/executions", super::job::job_path(&j.id)),
            &[],
            Some(5),
        )
        .await?;
    if !follow {
        #[derive(serde::Serialize)]
        struct View<'a> {
            job: &'a Job,
            recent_executions: &'a [JobExecution],
        }
        let view = View {
            job: &j,
            recent_executions: &recent,
        };
        if !output::print_structured(format, &view)? {
            output::print_table(&output::job_detail(&j, client.timezone()));
            println!();
            if recent.is_empty() {
                println!("no runs yet");
            } else {
                println!("Recent runs:");
                output::print_table(&output::execution_table(&recent));
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut ws = client
        .websocket(&[("job_id", &j.id)])
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the live stream: {e:#}"))?;
    println!(
        "watching job `{}` ({}) — {}; Ctrl-C to stop",
        j.name,
        j.id,
        j.status.as_str()
    );
    for e in recent.iter().filter(|e| !e.status.is_terminal()).rev() {
        println!(
            "{} execution {} {}",
            output::local_time(Some(e.queued_at)),
            e.id,
            status_message(e)
        );
    }
    let mode = if raw { LogMode::Raw } else { LogMode::Pretty };
    let mut printers: std::collections::HashMap<String, LogPrinter> = Default::default();
    loop {
        tokio::select! {
            m = next_message(&mut ws) => match m {
                Some(WsMessage::JobStatus { job_id, .. }) if job_id.as_deref().is_some_and(|x| x != j.id) => {}
                Some(WsMessage::JobStatus { execution_id, status, message, timestamp, progress, next_attempt_id, next_attempt_at, .. }) => {
                    let when = output::local_time(Some(timestamp.unwrap_or_else(Utc::now)));
                    let what = match &execution_id {
                        Some(e) => format!("execution {e} {status}"),
                        None => format!("job {status}"),
                    };
                    let progress = progress
                        .map(|p| format!(" {:.0}%", if p <= 1.0 { p * 100.0 } else { p }))
                        .unwrap_or_default();
                    let msg = message
                        .filter(|m| !m.is_empty() && *m != status)
                        .map(|m| format!(" — {m}"))
                        .unwrap_or_default();
                    let retry = match (next_attempt_id, next_attempt_at) {
                        (Some(n), at) => format!(
                            " — retry pending: execution {n}{}",
                            at.map(|t| format!(" {}", output::relative(t))).unwrap_or_default()
                        ),
                        _ => String::new(),
                    };
                    println!("{when} {what}{progress}{msg}{retry}");
                }
                Some(WsMessage::Log { execution_id, seq, stream, message, timestamp, .. }) => {
                    let short: String = execution_id.chars().rev().take(6).collect::<Vec<_>>().into_iter().rev().collect();
                    let p = printers.entry(execution_id.clone()).or_insert_with(|| {
                        let mut p = LogPrinter::new(mode, false);
                        p.prefix = format!("  [{short}] ");
                        p
                    });
                    p.show(None, &LogEntry {
                        seq,
                        stream: stream.unwrap_or_else(|| "stdout".into()),
                        timestamp,
                        line: message,
                    });
                }
                Some(WsMessage::Lagged { missed }) => {
                    eprintln!("(fell behind: {missed} message(s) missed)");
                }
                Some(WsMessage::Other) => {}
                None => {
                    eprintln!("the live stream closed (did cnp stop?)");
                    return Ok(ExitCode::from(super::EXIT_FAILURE));
                }
            },
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse() {
        let m: WsMessage = serde_json::from_str(
            r#"{"type":"jobStatus","jobId":"j","executionId":"e","status":"running","progress":null,"message":null,"timestamp":"2025-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert!(
            matches!(m, WsMessage::JobStatus { ref execution_id, ref status, .. } if execution_id.as_deref() == Some("e") && status == "running")
        );
        let m: WsMessage = serde_json::from_str(
            r#"{"type":"log","executionId":"e","seq":3,"stream":"stdout","logLevel":"info","message":"hi","timestamp":"2025-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert!(matches!(m, WsMessage::Log { seq: 3, .. }));
        let m: WsMessage = serde_json::from_str(r#"{"type":"lagged","missed":4}"#).unwrap();
        assert!(matches!(m, WsMessage::Lagged { missed: 4 }));
        let m: WsMessage = serde_json::from_str(r#"{"type":"hello"}"#).unwrap();
        assert!(matches!(m, WsMessage::Other));
    }

    #[test]
    fn exit_codes_follow_the_outcome() {
        assert_eq!(exit_code_for(ExecutionStatus::Completed), 0);
        assert_eq!(exit_code_for(ExecutionStatus::Failed), 1);
        assert_eq!(exit_code_for(ExecutionStatus::TimedOut), 1);
        assert_eq!(exit_code_for(ExecutionStatus::Cancelled), 1);
        assert_eq!(exit_code_for(ExecutionStatus::Interrupted), 1);
        assert_eq!(exit_code_for(ExecutionStatus::Skipped), 4);
    }

    #[test]
    fn log_lines_print_once_in_order() {
        let mut p = LogPrinter::new(LogMode::None, true);
        let e = |seq| LogEntry {
            seq,
            stream: "stdout".into(),
            timestamp: None,
            line: String::new(),
        };
        p.show(None, &e(0));
        p.show(None, &e(1));
        p.show(None, &e(1));
        p.show(None, &e(0));
        assert_eq!(p.last_seq, Some(1));
    }
}
