//! The in-process event bus: job status changes, execution updates and live log lines.
//!
//! A `tokio::sync::broadcast` channel: publishers never wait, and a subscriber that falls behind
//! loses the oldest events (it is told how many through `RecvError::Lagged`) rather than slowing
//! the engine down. Stored history (executions, logs) is the source of truth; the bus is the live
//! view that the API's WebSocket streams.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::model::{AttemptRef, ExecutionStatus, JobStatus, LogLine};

/// Something that happened in the engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Every event: this instance's and, in a cluster, the other instances'.
    tx: broadcast::Sender<Event>,
    /// This instance's own events only.
    local: broadcast::Sender<Event>,
    /// In a cluster, where this instance's events also go (to reach the other instances).
    forward: std::sync::Arc<std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<Event>>>,
}

impl EventBus {
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity);
        let (local, _) = broadcast::channel(capacity);
        EventBus {
            tx,
            local,
            forward: Default::default(),
        }
    }

    /// Publishes an event of this instance; nobody listening is fine.
    pub fn publish(&self, event: Event) {
        if let Some(f) = self.forward.get() {
            let _ = f.send(event.clone());
        }
        if self.local.receiver_count() > 0 {
            let _ = self.local.send(event.clone());
        }
        let _ = self.tx.send(event);
    }

    /// Publishes an event another instance of the cluster sent: to [`EventBus::subscribe`]rs
    /// (WebSocket clients), not forwarded again, not to [`EventBus::subscribe_local`].
    pub fn publish_received(&self, event: Event) {
        let _ = self.tx.send(event);
    }

    /// Every event, wherever in the cluster it happened.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// This instance's own events (what it must act on once, such as notifications).
    pub fn subscribe_local(&self) -> broadcast::Receiver<Event> {
        self.local.subscribe()
    }

    /// Also sends this instance's events to `to` from now on (set once).
    pub fn forward_to(&self, to: tokio::sync::mpsc::UnboundedSender<Event>) {
        let _ = self.forward.set(to);
    }
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new(8192)
    }
}
