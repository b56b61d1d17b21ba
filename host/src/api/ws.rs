//! `GET /api/ws`: live job status updates and log lines over a WebSocket.
//!
//! The stream subscribes to the event bus *before* it reads anything stored, so nothing falls
//! between the stored backlog and the live events; lines are numbered (`seq`), so those seen
//! twice are dropped and a gap (a line published before the subscription but not yet written)
//! is filled from the database.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::Receiver;

use super::error::ApiError;
use super::ApiState;
use crate::events::Event;
use crate::model::{ExecutionStatus, JobExecution, LogLine, LogStream, RunStatus};
use crate::store::ExecutionFilter;

/// Query of `GET /api/ws`.
#[derive(Debug, Default, Deserialize)]
pub struct WsParams {
    /// Only this job's events (id or name).
    pub job_id: Option<String>,
    /// One execution: its stored log first, then live lines and status; closed when it ends.
    pub execution_id: Option<String>,
    /// The API token, for clients that cannot set headers (checked by the auth middleware).
    #[allow(dead_code)]
    pub token: Option<String>,
}

/// A message the server sends (JSON text frames).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum WsMessage {
    /// A job changed (`executionId` null; status `active`/`paused`/`disabled`/`deleted`) or one
    /// of its executions moved (status of the execution).
    JobStatus {
        job_id: String,
        execution_id: Option<String>,
        status: String,
        progress: Option<f64>,
        message: Option<String>,
        timestamp: DateTime<Utc>,
        /// `retry_pending` when this attempt failed and its retry is recorded (the run is not
        /// over: follow `nextAttemptId`); absent otherwise.
        #[serde(skip_serializing_if = "Option::is_none")]
        run_status: Option<RunStatus>,
        #[serde(skip_serializing_if = "Option::is_none")]
        next_attempt_id: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        next_attempt_at: Option<DateTime<Utc>>,
    },
    /// A line of a run's output.
    Log {
        execution_id: String,
        seq: u64,
        stream: LogStream,
        log_level: &'static str,
        message: String,
        timestamp: DateTime<Utc>,
    },
    /// The stream fell behind and `missed` events were dropped (stored logs are re-read for an
    /// execution stream, so its lines stay complete).
    Lagged { missed: u64 },
    /// A Claude usage-limit cooldown began (`active`) or ended (sent on every stream that is
    /// not for one execution: it holds back every job's runs).
    Cooldown {
        active: bool,
        until: Option<DateTime<Utc>>,
        reason: String,
        timestamp: DateTime<Utc>,
    },
}

/// `stdout` → info, `stderr` → warn, cnp's own lines → info, or error when they say so.
pub fn log_level(l: &LogLine) -> &'static str {
    match l.stream {
        LogStream::Stdout => "info",
        LogStream::Stderr => "warn",
        LogStream::System => {
            let t = l.line.to_ascii_lowercase();
            if t.contains("error") || t.contains("fail") || t.contains("killed") {
                "error"
            } else {
                "info"
            }
        }
    }
}

fn log_message(l: LogLine) -> WsMessage {
    WsMessage::Log {
        log_level: log_level(&l),
        execution_id: l.execution_id,
        seq: l.seq,
        stream: l.stream,
        message: l.line,
        timestamp: l.timestamp,
    }
}

fn exec_status(e: &JobExecution, message: Option<String>) -> WsMessage {
    WsMessage::JobStatus {
        job_id: e.job_id.clone(),
        execution_id: Some(e.id.clone()),
        status: e.status.as_str().to_owned(),
        progress: None,
        message,
        timestamp: e.completed_at.or(e.started_at).unwrap_or(e.queued_at),
        run_status: None,
        next_attempt_id: None,
        next_attempt_at: None,
    }
}

/// Events as status messages (logs are handled by the callers).
fn status_message(ev: &Event) -> Option<WsMessage> {
    match ev {
        Event::JobChanged {
            job_id,
            status,
            message,
            timestamp,
        } => Some(WsMessage::JobStatus {
            job_id: job_id.clone(),
            execution_id: None,
            status: status.map_or("deleted", |s| s.as_str()).to_owned(),
            run_status: None,
            next_attempt_id: None,
            next_attempt_at: None,
            progress: None,
            message: Some(message.clone()),
            timestamp: *timestamp,
        }),
        Event::Execution {
            execution_id,
            job_id,
            status,
            message,
            timestamp,
            next_attempt,
        } => Some(WsMessage::JobStatus {
            job_id: job_id.clone(),
            execution_id: Some(execution_id.clone()),
            status: status.as_str().to_owned(),
            progress: None,
            message: message.clone(),
            timestamp: *timestamp,
            run_status: next_attempt.as_ref().map(|_| RunStatus::RetryPending),
            next_attempt_id: next_attempt.as_ref().map(|a| a.id.clone()),
            next_attempt_at: next_attempt.as_ref().and_then(|a| a.scheduled_for),
        }),
        Event::Log(_) | Event::Cooldown { .. } => None,
    }
}

#[utoipa::path(get, path = "/api/ws", operation_id = "openWebSocket", tag = "monitoring",
    params(
        ("job_id" = Option<String>, Query, description = "Only this job's events (id or name)"),
        ("execution_id" = Option<String>, Query, description = "One execution: backlog, then live lines; closed after its final status"),
        ("token" = Option<String>, Query, description = "The API token, when the Authorization header cannot be set"),
    ),
    responses(
        (status = 101, description = "WebSocket: JSON text messages `jobStatus`, `log`, `lagged` (see docs/api.md)"),
        (status = 404, description = "No such job or execution", body = super::ErrorBody),
    ))]
pub async fn upgrade(
    State(st): State<ApiState>,
    Query(q): Query<WsParams>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    // Subscribed first: anything that happens from here on reaches the stream.
    let rx = st.engine().events().subscribe();
    let store = st.engine().store();
    if let Some(id) = q.execution_id.filter(|i| !i.is_empty()) {
        let Some(exec) = store.get_execution(id.clone()).await? else {
            return Err(ApiError::not_found("execution", &id));
        };
        return Ok(ws.on_upgrade(move |socket| async move {
            Stream { socket, st, rx }.execution(exec).await
        }));
    }
    let job = match q.job_id.filter(|j| !j.is_empty()) {
        Some(j) => Some(st.engine().job(&j).await?),
        None => None,
    };
    // Runs of the job already under way: their lines belong to the stream too.
    let mut runs = HashSet::new();
    if let Some(job) = &job {
        for status in [ExecutionStatus::Running, ExecutionStatus::Queued] {
            let f = ExecutionFilter {
                job_id: Some(job.id.clone()),
                status: Some(status),
                limit: Some(1000),
                offset: 0,
            };
            runs.extend(store.list_executions(f).await?.into_iter().map(|e| e.id));
        }
    }
    let job_id = job.map(|j| j.id);
    Ok(ws.on_upgrade(
        move |socket| async move { Stream { socket, st, rx }.events(job_id, runs).await },
    ))
}

/// How long a gap in an execution's line numbers may wait for the database before the stream
/// moves on without the missing lines.
const GAP_WAIT: Duration = Duration::from_secs(3);
const BACKLOG_PAGE: u32 = 1000;
/// How often a gap is looked up in the database.
const GAP_POLL: Duration = Duration::from_millis(100);

struct Stream {
    socket: WebSocket,
    st: ApiState,
    rx: Receiver<Event>,
}

/// What the client did meanwhile.
enum Incoming {
    Gone,
    Other,
}

/// Why a stream's loop woke up.
enum Wake {
    Event(Result<Event, RecvError>),
    Client(Incoming),
    GapCheck,
    Stop,
}

impl Stream {
    /// Sends a message; `false` when the client is gone.
    async fn send(&mut self, m: &WsMessage) -> bool {
        let text = serde_json::to_string(m).expect("messages serialize");
        self.socket.send(Message::Text(text.into())).await.is_ok()
    }

    async fn close(mut self, code: u16, reason: &'static str) {
        let _ = self
            .socket
            .send(Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })))
            .await;
    }

    fn incoming(m: Option<Result<Message, axum::Error>>) -> Incoming {
        match m {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => Incoming::Gone,
            Some(Ok(_)) => Incoming::Other,
        }
    }

    /// All events, or one job's: status changes and the log lines of its runs.
    async fn events(mut self, job_id: Option<String>, mut runs: HashSet<String>) {
        let stop = self.st.stopping().clone();
        loop {
            let woke = tokio::select! {
                ev = self.rx.recv() => Wake::Event(ev),
                m = self.socket.recv() => Wake::Client(Self::incoming(m)),
                _ = stop.cancelled() => Wake::Stop,
            };
            let ev = match woke {
                Wake::Event(ev) => ev,
                Wake::Client(Incoming::Gone) => return,
                Wake::Client(Incoming::Other) | Wake::GapCheck => continue,
                Wake::Stop => return self.close(1001, "cnp is shutting down").await,
            };
            let msg = match ev {
                Ok(Event::Log(l)) => {
                    if job_id.is_some() && !runs.contains(&l.execution_id) {
                        continue;
                    }
                    log_message(l)
                }
                Ok(Event::Cooldown {
                    active,
                    until,
                    reason,
                    timestamp,
                }) => WsMessage::Cooldown {
                    active,
                    until,
                    reason,
                    timestamp,
                },
                Ok(ev) => {
                    let (of_job, exec) = match &ev {
                        Event::JobChanged { job_id, .. } => (job_id, None),
                        Event::Execution {
                            job_id,
                            execution_id,
                            status,
                            ..
                        } => (job_id, Some((execution_id, *status))),
                        Event::Log(_) | Event::Cooldown { .. } => unreachable!("handled above"),
                    };
                    if job_id.as_ref().is_some_and(|j| j != of_job) {
                        continue;
                    }
                    if let (Some(_), Some((e, status))) = (&job_id, exec) {
                        if status.is_terminal() {
                            runs.remove(e);
                        } else {
                            runs.insert(e.clone());
                        }
                    }
                    match status_message(&ev) {
                        Some(m) => m,
                        None => continue,
                    }
                }
                Err(RecvError::Lagged(n)) => WsMessage::Lagged { missed: n },
                Err(RecvError::Closed) => return self.close(1001, "cnp is shutting down").await,
            };
            if !self.send(&msg).await {
                return;
            }
        }
    }

    /// One execution: status, stored backlog, live lines (deduplicated, gaps filled from the
    /// database), and finally its end status, then the stream closes.
    async fn execution(mut self, exec: JobExecution) {
        let stop = self.st.stopping().clone();
        let id = exec.id.clone();
        let mut lines = Lines::default();
        if !exec.status.is_terminal() && !self.send(&exec_status(&exec, None)).await {
            return;
        }
        if !self.backlog(&id, &mut lines).await {
            return;
        }
        // Lines published before this stream subscribed may reach the database only with the
        // run's next log flush: read it once more after that.
        let mut catch_up = (!exec.status.is_terminal()).then(|| {
            Instant::now() + crate::engine::LOG_FLUSH_INTERVAL + Duration::from_millis(150)
        });
        if exec.status.is_terminal() {
            let mut msg = exec_status(&exec, exec.error.clone());
            // Ended before the client came: say whether the run goes on with another attempt.
            if let Ok(d) = self.st.engine().execution_detail(&id).await {
                if let (
                    WsMessage::JobStatus {
                        run_status,
                        next_attempt_id,
                        next_attempt_at,
                        ..
                    },
                    Some(next),
                ) = (&mut msg, d.next_attempt)
                {
                    *run_status = Some(match d.run_status {
                        RunStatus::Finished => RunStatus::Finished,
                        RunStatus::Running => RunStatus::Running,
                        _ => RunStatus::RetryPending,
                    });
                    *next_attempt_id = Some(next.id);
                    *next_attempt_at = next.scheduled_for;
                }
            }
            let _ = self.send(&msg).await;
            return self.close(1000, "execution finished").await;
        }
        let mut next_check: Option<Instant> = None;
        loop {
            next_check = match (lines.gap_since, next_check) {
                (None, _) => None,
                (Some(_), None) => Some(Instant::now() + GAP_POLL),
                (Some(_), at) => at,
            };
            let check_at = match (next_check, catch_up) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let gap_timer = async move {
                match check_at {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let woke = tokio::select! {
                ev = self.rx.recv() => Wake::Event(ev),
                m = self.socket.recv() => Wake::Client(Self::incoming(m)),
                _ = gap_timer => Wake::GapCheck,
                _ = stop.cancelled() => Wake::Stop,
            };
            let ev = match woke {
                Wake::Event(ev) => Some(ev),
                Wake::GapCheck => {
                    if catch_up.is_some_and(|t| t <= Instant::now()) {
                        catch_up = None;
                    }
                    next_check = None;
                    None
                }
                Wake::Client(Incoming::Gone) => return,
                Wake::Client(Incoming::Other) => continue,
                Wake::Stop => return self.close(1001, "cnp is shutting down").await,
            };
            match ev {
                None => {
                    // A gap is waiting for the database.
                    if !self.backlog(&id, &mut lines).await {
                        return;
                    }
                    if lines.gap_since.is_some_and(|t| t.elapsed() > GAP_WAIT) {
                        lines.skip_gap();
                        if !self.drain(&mut lines).await {
                            return;
                        }
                    }
                }
                Some(Ok(Event::Log(l))) if l.execution_id == id => {
                    lines.offer(l);
                    if !self.drain(&mut lines).await {
                        return;
                    }
                }
                Some(Ok(ev @ Event::Execution { .. })) => {
                    let Event::Execution {
                        execution_id,
                        status,
                        ..
                    } = &ev
                    else {
                        unreachable!()
                    };
                    if *execution_id != id {
                        continue;
                    }
                    let terminal = status.is_terminal();
                    if terminal {
                        // Its lines were written before its end was: the database has them all.
                        if !self.backlog(&id, &mut lines).await {
                            return;
                        }
                        lines.skip_gap();
                        if !self.drain(&mut lines).await {
                            return;
                        }
                    }
                    let msg = status_message(&ev).expect("execution events are statuses");
                    if !self.send(&msg).await {
                        return;
                    }
                    if terminal {
                        return self.close(1000, "execution finished").await;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(RecvError::Lagged(n))) => {
                    if !self.send(&WsMessage::Lagged { missed: n }).await {
                        return;
                    }
                    // Lines dropped by the lag are in the database (or soon will be).
                    lines.gap_since.get_or_insert_with(Instant::now);
                }
                Some(Err(RecvError::Closed)) => {
                    return self.close(1001, "cnp is shutting down").await
                }
            }
        }
    }

    /// Sends stored lines after the last one sent; `false` when the client is gone.
    async fn backlog(&mut self, id: &str, lines: &mut Lines) -> bool {
        loop {
            let after = lines.next.checked_sub(1);
            let page = match self
                .st
                .engine()
                .store()
                .get_logs(id.to_owned(), after, BACKLOG_PAGE)
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(execution = %id, error = %e, "WebSocket: cannot read the log backlog");
                    return true;
                }
            };
            let full = page.len() as u32 == BACKLOG_PAGE;
            for l in page {
                lines.offer(l);
            }
            if !self.drain(lines).await {
                return false;
            }
            if !full {
                return true;
            }
        }
    }

    /// Sends the lines that are next in order.
    async fn drain(&mut self, lines: &mut Lines) -> bool {
        while let Some(l) = lines.take_next() {
            if !self.send(&log_message(l)).await {
                return false;
            }
        }
        true
    }
}

/// An execution's lines on their way out: in `seq` order, each once.
#[derive(Default)]
struct Lines {
    /// The next `seq` to send.
    next: u64,
    /// Lines that arrived ahead of `next`.
    pending: BTreeMap<u64, LogLine>,
    /// Since when lines ahead of `next` have been waiting.
    gap_since: Option<Instant>,
}

impl Lines {
    fn offer(&mut self, l: LogLine) {
        if l.seq >= self.next {
            self.pending.entry(l.seq).or_insert(l);
        }
    }

    fn take_next(&mut self) -> Option<LogLine> {
        let l = self.pending.remove(&self.next);
        match &l {
            Some(l) => {
                self.next = l.seq + 1;
                self.gap_since = None;
            }
            None if !self.pending.is_empty() => {
                self.gap_since.get_or_insert_with(Instant::now);
            }
            None => {}
        }
        l
    }

    /// Gives up on missing lines: continues from the first line waiting.
    fn skip_gap(&mut self) {
        if let Some((&first, _)) = self.pending.iter().next() {
            self.next = first;
        }
        self.gap_since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(seq: u64) -> LogLine {
        LogLine {
            execution_id: "e".into(),
            seq,
            stream: LogStream::Stdout,
            timestamp: Utc::now(),
            line: format!("line {seq}"),
        }
    }

    #[test]
    fn lines_come_out_once_and_in_order() {
        let mut l = Lines::default();
        for s in [0, 1, 1, 3, 0, 2] {
            l.offer(line(s));
        }
        let out: Vec<u64> = std::iter::from_fn(|| l.take_next())
            .map(|l| l.seq)
            .collect();
        assert_eq!(out, vec![0, 1, 2, 3]);
        l.offer(line(2));
        assert!(l.take_next().is_none(), "already sent");
        l.offer(line(6));
        assert!(l.take_next().is_none());
        assert!(l.gap_since.is_some());
        l.skip_gap();
        assert_eq!(l.take_next().map(|l| l.seq), Some(6));
    }

    #[test]
    fn messages_have_the_spec_shapes() {
        let m = log_message(line(4));
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["type"], "log");
        assert_eq!(v["executionId"], "e");
        assert_eq!(v["logLevel"], "info");
        assert_eq!(v["message"], "line 4");
        let ev = Event::JobChanged {
            job_id: "j".into(),
            status: None,
            message: "deleted".into(),
            timestamp: Utc::now(),
        };
        let v = serde_json::to_value(status_message(&ev).unwrap()).unwrap();
        assert_eq!(v["type"], "jobStatus");
        assert_eq!(v["jobId"], "j");
        assert_eq!(v["status"], "deleted");
        assert!(v["executionId"].is_null() && v["progress"].is_null());
        let v = serde_json::to_value(WsMessage::Lagged { missed: 3 }).unwrap();
        assert_eq!(v, serde_json::json!({"type": "lagged", "missed": 3}));
    }
}
