//! The in-process event bus: job status changes, execution updates and live log lines.
//!
//! A `tokio::sync::broadcast` channel: publishers never wait, and a subscriber that falls behind
//! loses the oldest events (it is told how many through `RecvError::Lagged`) rather than slowing
//! the engine down. Stored history (executions, logs) is the source of truth; the bus is the live
//! view that the API's WebSocket streams.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::broadcast;

use crate::model::{AttemptRef, ExecutionStatus, JobStatus, LogLine};

/// Something that happened in the engine.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A job was created, changed, paused, resumed or deleted.
    JobChanged {
        job_id: String,
        status: Option<JobStatus>,
        message: String,
        timestamp: DateTime<Utc>,
    },
    /// An execution moved to another status.
    Execution {
        execution_id: String,
        job_id: String,
        status: ExecutionStatus,
        message: Option<String>,
        timestamp: DateTime<Utc>,
        /// The retry recorded as this attempt ended (the run is not over).
        next_attempt: Option<AttemptRef>,
    },
    /// A line of a run's output.
    Log(LogLine),
    /// A Claude usage-limit cooldown began (`active`) or ended. `until`: when runs start again,
    /// if the CLI named a reset.
    Cooldown {
        active: bool,
        until: Option<DateTime<Utc>>,
        reason: String,
        timestamp: DateTime<Utc>,
    },
}

/// Cloneable handle to the bus.
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Event>,
}

impl EventBus {
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity);
        EventBus { tx }
    }

    /// Publishes an event; nobody listening is fine.
    pub fn publish(&self, event: Event) {
        let _ = self.tx.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new(8192)
    }
}
