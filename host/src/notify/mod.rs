//! Notifications: who hears about runs, and how.
//!
//! ```text
//!  engine (run started / succeeded / failed / retry scheduled), cooldown, plugin failures
//!    └─ NotificationService::notify — never waits: picks the channels (the job's, else the
//!       default ones), puts one delivery per channel in a bounded queue (full → recorded `dropped`)
//!         └─ dispatcher task: rate limits (global + per channel, sliding hour; held-back ones
//!            recorded `rate_limited` and summed up in one message when there is room again),
//!            renders the templates (an error fails the delivery, nothing is sent broken)
//!              └─ one task per delivery (at most MAX_SENDING at once): log, webhook, email,
//!                 system, plugin ─▶ `notification_deliveries` row + a `system` line on the run's log
//! ```
//!
//! A slow or dead SMTP server or webhook only ever holds its own delivery task; the engine hands
//! events over with a `try_send` and goes on.

pub mod channels;
pub mod config;
pub mod ratelimit;
pub mod template;

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{Channel, ChannelSpec, NotifySettings, SettingsError};

use crate::clock::Clock;
use crate::model::NotificationConfig;
use crate::plugins::{ExecutionInfo, JobInfo, NotifyEvent, OutcomeKind, PluginHost};
use crate::store::Store;
use channels::Outcome;
use ratelimit::{RateLimiter, Suppressed};
use template::Templates;

/// Deliveries in flight at once (each waits on its own server).
const MAX_SENDING: usize = 16;
/// How much of a run's output a message quotes.
const OUTPUT_EXCERPT: usize = 1000;

/// What a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A run started.
    RunStarted,
    /// A run succeeded.
    RunSucceeded,
    /// A run failed after its last attempt.
    RunFailed,
    /// A run ended, whatever its outcome.
    RunCompleted,
    /// A failed run will be retried.
    RetryScheduled,
    /// Claude's usage limit was reached; runs are held until it resets.
    CooldownEntered,
    /// The usage limit is over; held runs resume.
    CooldownEnded,
    /// A plugin trapped, timed out or failed.
    PluginFailure,
    /// A job's or the global spending cap was reached: runs are held until the window rolls
    /// or the cap is raised.
    BudgetExceeded,
    /// Database writes fail for want of storage (a full or failing disk): runs wait.
    StorageFailing,
}

impl EventKind {
    /// The event as `cnp:plugin@0.1.0` notifiers know it (`None`: 0.1 has no such event).
    pub fn to_plugin(self) -> Option<crate::plugins::EventKind> {
        use crate::plugins::EventKind as P;
        Some(match self {
            EventKind::RunStarted => P::RunStarted,
            EventKind::RunSucceeded => P::RunSucceeded,
            EventKind::RunFailed => P::RunFailed,
            EventKind::RunCompleted => P::RunCompleted,
            EventKind::RetryScheduled => P::RetryScheduled,
            EventKind::CooldownEntered => P::CooldownEntered,
            EventKind::CooldownEnded => P::CooldownEnded,
            EventKind::PluginFailure => P::PluginFailure,
            EventKind::BudgetExceeded | EventKind::StorageFailing => return None,
        })
    }
}

/// A callback that writes a `system` line on the execution's log.
pub type Noter = Arc<dyn Fn(String) + Send + Sync>;

/// Something to tell people about.
#[derive(Clone)]
pub struct Notification {
    pub kind: EventKind,
    pub job: Option<JobInfo>,
    /// The job's `notifications` block (`None`: the config's defaults).
    pub job_config: Option<NotificationConfig>,
    pub execution_id: Option<String>,
    /// The finished run, for events after a run.
    pub execution: Option<ExecutionInfo>,
    /// One line the host wrote (`nightly: failed (attempt 3)`).
    pub summary: String,
    pub at: DateTime<Utc>,
    /// Event-specific values for templates (`cooldown_until`, `reason`, `plugin`, …).
    pub details: serde_json::Map<String, Value>,
    pub note: Option<Noter>,
}

impl Notification {
    /// An event about no job in particular.
    pub fn global(kind: EventKind, summary: String, at: DateTime<Utc>) -> Notification {
        Notification {
            kind,
            job: None,
            job_config: None,
            execution_id: None,
            execution: None,
            summary,
            at,
            details: Default::default(),
            note: None,
        }
    }
}

/// The names of an event: the first is recorded, all are template names (most specific first).
pub fn event_names(kind: EventKind) -> &'static [&'static str] {
    match kind {
        EventKind::RunStarted => &["started", "start"],
        EventKind::RunSucceeded => &["succeeded", "success"],
        EventKind::RunFailed => &["failed", "failure"],
        EventKind::RunCompleted => &["completed", "completion"],
        EventKind::RetryScheduled => &["retry_scheduled", "retry"],
        EventKind::CooldownEntered => &["cooldown_entered", "cooldown"],
        EventKind::CooldownEnded => &["cooldown_ended"],
        EventKind::PluginFailure => &["plugin_failure"],
        EventKind::BudgetExceeded => &["budget_exceeded", "budget"],
        EventKind::StorageFailing => &["storage_failing", "storage"],
    }
}

/// The rate-limit summary's event names.
const SUMMARY_EVENT: &[&str] = &["rate_limit_summary", "summary"];

fn outcome_name(o: OutcomeKind) -> &'static str {
    match o {
        OutcomeKind::Success => "success",
        OutcomeKind::Failure => "failure",
        OutcomeKind::Timeout => "timeout",
        OutcomeKind::SpawnFailure => "spawn_failure",
        OutcomeKind::CliNotFound => "cli_not_found",
        OutcomeKind::AuthError => "auth_error",
        OutcomeKind::UsageLimit => "usage_limit",
        OutcomeKind::Cancelled => "cancelled",
        OutcomeKind::Interrupted => "interrupted",
    }
}

/// Whether the event is bad news (logged as a warning, urgent on the desktop).
fn is_failure(n: &Notification) -> bool {
    match n.kind {
        EventKind::RunFailed
        | EventKind::RetryScheduled
        | EventKind::PluginFailure
        | EventKind::CooldownEntered
        | EventKind::BudgetExceeded
        | EventKind::StorageFailing => true,
        EventKind::RunCompleted => n
            .execution
            .as_ref()
            .is_some_and(|e| !matches!(e.outcome, OutcomeKind::Success)),
        _ => false,
    }
}

/// What became of one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Sent,
    Failed,
    /// Held back by a rate limit (counted in the channel's next summary).
    RateLimited,
    /// Not queued: the delivery queue was full.
    Dropped,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Sent => "sent",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::RateLimited => "rate_limited",
            DeliveryStatus::Dropped => "dropped",
        }
    }
}

/// A stored delivery outcome (`notification_deliveries`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Delivery {
    pub id: i64,
    pub execution_id: Option<String>,
    pub job_id: Option<String>,
    /// `started`, `succeeded`, `failed`, `completed`, `retry_scheduled`, `cooldown_entered`,
    /// `cooldown_ended`, `plugin_failure`, `budget_exceeded`, `rate_limit_summary`.
    pub event: String,
    /// The channel's configured name, or a description of an inline channel.
    pub channel: String,
    /// `sent`, `failed`, `rate_limited`, `dropped`.
    pub status: String,
    pub attempts: u32,
    /// The receipt (`HTTP 200`, `SMTP 250 …`) or why it failed.
    pub detail: Option<String>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// A delivery outcome to store.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub execution_id: Option<String>,
    pub job_id: Option<String>,
    pub event: String,
    pub channel: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub detail: Option<String>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// One delivery waiting in the queue.
struct Envelope {
    n: Arc<Notification>,
    channel: Channel,
    /// The span (a run's) current when the notification was asked for: its delivery's
    /// `notification` span is a child of it (`[telemetry]`; empty when traces are off).
    parent: crate::telemetry::Parent,
}

/// The notification service; cheap to clone.
#[derive(Clone)]
pub struct NotificationService {
    inner: Arc<Inner>,
}

struct Inner {
    settings: NotifySettings,
    store: Store,
    clock: Clock,
    tx: mpsc::Sender<Envelope>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl NotificationService {
    /// Starts the dispatcher. `plugins`: for `type: plugin` channels; plugin failures are also
    /// reported through the service.
    pub fn start(
        settings: NotifySettings,
        store: Store,
        clock: Clock,
        plugins: Option<PluginHost>,
    ) -> NotificationService {
        let (tx, rx) = mpsc::channel(settings.queue_capacity);
        let templates = Templates::load(settings.template_directory.as_deref());
        let svc = NotificationService {
            inner: Arc::new(Inner {
                settings,
                store,
                clock,
                tx,
                stop: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        };
        if let Some(host) = &plugins {
            let weak: Weak<Inner> = Arc::downgrade(&svc.inner);
            host.set_failure_listener(Arc::new(move |plugin, kind, failure| {
                // A failing notifier is already a failed delivery: no notification about it.
                if kind == crate::plugins::PluginKind::Notifier {
                    return;
                }
                if let Some(inner) = weak.upgrade() {
                    NotificationService { inner }.plugin_failure(plugin, &failure.to_string());
                }
            }));
        }
        let dispatcher = Dispatcher {
            svc: svc.clone(),
            limiter: RateLimiter::new(svc.inner.settings.rate_limit_per_hour),
            templates: Arc::new(templates),
            http: reqwest::Client::builder()
                .user_agent(concat!("cnp/", env!("CARGO_PKG_VERSION")))
                .build()
                .unwrap_or_default(),
            plugins,
            sending: Arc::new(Semaphore::new(MAX_SENDING)),
            seen: HashMap::new(),
        };
        svc.inner.tasks.spawn(dispatcher.run(rx));
        svc
    }

    pub fn settings(&self) -> &NotifySettings {
        &self.inner.settings
    }

    /// Hands `n` to its channels; never waits. A run's success or final failure is also a
    /// `completed` event.
    pub fn notify(&self, n: Notification) {
        let completed =
            matches!(n.kind, EventKind::RunSucceeded | EventKind::RunFailed).then(|| {
                Notification {
                    kind: EventKind::RunCompleted,
                    ..n.clone()
                }
            });
        self.enqueue(n);
        if let Some(c) = completed {
            self.enqueue(c);
        }
    }

    /// Claude's usage limit was reached: runs wait until `until` (if known).
    pub fn cooldown_entered(&self, until: Option<DateTime<Utc>>, reason: &str) {
        let at = self.inner.clock.now();
        let when = until
            .map(|u| {
                format!(
                    " until {}",
                    u.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )
            })
            .unwrap_or_default();
        let mut n = Notification::global(
            EventKind::CooldownEntered,
            format!("usage limit reached: runs are held{when} ({reason})"),
            at,
        );
        n.details.insert("reason".into(), json!(reason));
        n.details.insert(
            "cooldown_until".into(),
            json!(until.map(|u| u.to_rfc3339())),
        );
        self.notify(n);
    }

    /// The usage-limit cooldown is over: held runs go ahead.
    pub fn cooldown_ended(&self) {
        let n = Notification::global(
            EventKind::CooldownEnded,
            "usage limit cooldown over: held runs resume".into(),
            self.inner.clock.now(),
        );
        self.notify(n);
    }

    /// Database writes fail for want of storage (`since`, the latest `error`).
    pub fn storage_failing(&self, since: DateTime<Utc>, error: &str) {
        let mut n = Notification::global(
            EventKind::StorageFailing,
            format!(
                "database writes are failing since {} (disk full?): runs wait until they succeed ({error})",
                since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            self.inner.clock.now(),
        );
        n.details.insert("error".into(), json!(error));
        n.details.insert("since".into(), json!(since.to_rfc3339()));
        self.notify(n);
    }

    /// Plugin `plugin` failed (trapped, timed out, errored).
    pub fn plugin_failure(&self, plugin: &str, message: &str) {
        let mut n = Notification::global(
            EventKind::PluginFailure,
            format!("plugin failure: {message}"),
            self.inner.clock.now(),
        );
        n.details.insert("plugin".into(), json!(plugin));
        n.details.insert("error".into(), json!(message));
        self.notify(n);
    }

    /// Follows the event bus for what the engine only publishes there: the end of a
    /// usage-limit cooldown (its start comes through [`NotificationService::notify`], with the
    /// job whose run hit the limit).
    pub fn follow_events(&self, bus: &crate::events::EventBus) {
        // This instance's events only: in a cluster, the instance that ended a cooldown tells.
        let mut rx = bus.subscribe_local();
        let svc = self.clone();
        let stop = self.inner.stop.clone();
        self.inner.tasks.spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                let ev = tokio::select! {
                    _ = stop.cancelled() => break,
                    ev = rx.recv() => ev,
                };
                match ev {
                    Ok(crate::events::Event::Cooldown { active: false, .. }) => {
                        svc.cooldown_ended()
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => break,
                }
            }
        });
    }

    /// Stops taking notifications and waits up to `grace` for queued ones to be delivered.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.stop.cancel();
        self.inner.tasks.close();
        if tokio::time::timeout(grace, self.inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(target: "cnp::notify", "notifications still being delivered after {}: not waiting for them", humantime::format_duration(grace));
        }
    }

    /// Whether the event is wanted and by which channels (entries of the job's list, or the
    /// default channels' names as references).
    fn channel_entries(&self, n: &Notification) -> Option<Vec<Value>> {
        let s = &self.inner.settings;
        let defaults = || -> Vec<Value> {
            s.default_channels
                .iter()
                .map(|c| json!({ "channel": c }))
                .collect()
        };
        let flags = |c: Option<&NotificationConfig>| match c {
            Some(c) => (c.on_start, c.on_success, c.on_failure, c.on_completion),
            None => (s.on_start, s.on_success, s.on_failure, s.on_completion),
        };
        let (on_start, on_success, on_failure, on_completion) = flags(n.job_config.as_ref());
        let wanted = match n.kind {
            EventKind::RunStarted => on_start,
            EventKind::RunSucceeded => on_success,
            EventKind::RunFailed | EventKind::RetryScheduled => on_failure,
            EventKind::RunCompleted => on_completion,
            EventKind::CooldownEntered | EventKind::CooldownEnded => s.on_cooldown,
            EventKind::PluginFailure => s.on_plugin_failure,
            EventKind::BudgetExceeded => s.on_budget,
            EventKind::StorageFailing => s.on_storage_failure,
        };
        if !wanted {
            return None;
        }
        let entries = match &n.job_config {
            Some(c) if !c.channels.is_empty() => c.channels.clone(),
            _ => defaults(),
        };
        (!entries.is_empty()).then_some(entries)
    }

    fn enqueue(&self, n: Notification) {
        let Some(entries) = self.channel_entries(&n) else {
            return;
        };
        let s = &self.inner.settings;
        let event = event_names(n.kind)[0];
        let n = Arc::new(n);
        let parent = crate::telemetry::Parent::current();
        for (i, entry) in entries.iter().enumerate() {
            let channel = match s.resolve(entry, i) {
                Ok(c) => c,
                Err(e) => {
                    // Named in the job but not usable: recorded, not silently skipped.
                    let label = entry
                        .get("channel")
                        .and_then(|c| c.as_str())
                        .map(str::to_owned)
                        .unwrap_or_else(|| format!("channels[{i}]"));
                    let msg = format!("not delivered: {e}");
                    self.record_now(
                        &n,
                        event,
                        &label,
                        DeliveryStatus::Failed,
                        0,
                        Some(msg.clone()),
                    );
                    note(&n, format!("notification via `{label}` {msg}"));
                    continue;
                }
            };
            let label = channel.label.clone();
            if self.inner.stop.is_cancelled() {
                self.record_now(
                    &n,
                    event,
                    &label,
                    DeliveryStatus::Dropped,
                    0,
                    Some("cnp is shutting down".into()),
                );
                continue;
            }
            match self.inner.tx.try_send(Envelope {
                n: n.clone(),
                channel,
                parent: parent.clone(),
            }) {
                Ok(()) => {}
                Err(_) => {
                    let msg = format!(
                        "the delivery queue is full ({} waiting): not sent",
                        s.queue_capacity
                    );
                    tracing::warn!(target: "cnp::notify", channel = %label, event, "{msg}");
                    self.record_now(
                        &n,
                        event,
                        &label,
                        DeliveryStatus::Dropped,
                        0,
                        Some(msg.clone()),
                    );
                    note(&n, format!("notification via `{label}` dropped: {msg}"));
                }
            }
        }
    }

    /// Records an outcome without waiting.
    fn record_now(
        &self,
        n: &Notification,
        event: &str,
        channel: &str,
        status: DeliveryStatus,
        attempts: u32,
        detail: Option<String>,
    ) {
        self.inner.store.record_delivery_detached(NewDelivery {
            execution_id: n.execution_id.clone(),
            job_id: n.job.as_ref().map(|j| j.id.clone()),
            event: event.to_owned(),
            channel: channel.to_owned(),
            status,
            attempts,
            detail,
            created_at: n.at,
            delivered_at: None,
        });
    }
}

fn note(n: &Notification, message: String) {
    if let Some(f) = &n.note {
        f(message);
    }
}

/// Owns the rate limiter and templates; hands each delivery to its own task.
struct Dispatcher {
    svc: NotificationService,
    limiter: RateLimiter,
    templates: Arc<Templates>,
    http: reqwest::Client,
    plugins: Option<PluginHost>,
    sending: Arc<Semaphore>,
    /// The latest definition of each channel label (for summaries).
    seen: HashMap<String, Channel>,
}

impl Dispatcher {
    async fn run(mut self, mut rx: mpsc::Receiver<Envelope>) {
        let stop = self.svc.inner.stop.clone();
        loop {
            let next = self.limiter.next_check();
            let env = tokio::select! {
                biased;
                e = rx.recv() => match e { Some(e) => e, None => break },
                _ = stop.cancelled() => {
                    // Deliver what is queued, then stop.
                    rx.close();
                    while let Some(e) = rx.recv().await {
                        self.dispatch(e);
                    }
                    break;
                }
                _ = sleep_until(next), if next.is_some() => {
                    self.summaries();
                    continue;
                }
            };
            self.dispatch(env);
        }
    }

    fn dispatch(&mut self, env: Envelope) {
        self.summaries();
        let Envelope { n, channel, parent } = env;
        let event = event_names(n.kind)[0];
        let label = channel.label.clone();
        let span = delivery_span(&parent, &n, &channel, event);
        self.seen.insert(label.clone(), channel.clone());
        let now = tokio::time::Instant::now();
        if !self
            .limiter
            .try_acquire(&label, channel.spec.rate_limit(), now)
        {
            self.limiter
                .suppress(&label, event, n.job.as_ref().map(|j| j.name.as_str()));
            let limit = channel
                .spec
                .rate_limit()
                .unwrap_or(self.svc.inner.settings.rate_limit_per_hour);
            let msg = format!(
                "held back by the rate limit ({limit} per hour): counted in the summary sent when there is room again"
            );
            span.record("cnp.delivery_status", DeliveryStatus::RateLimited.as_str());
            tracing::info!(target: "cnp::notify", channel = %label, event, "notification {msg}");
            self.svc.record_now(
                &n,
                event,
                &label,
                DeliveryStatus::RateLimited,
                0,
                Some(msg.clone()),
            );
            note(
                &n,
                format!("notification via {} `{label}` {msg}", channel.spec.kind()),
            );
            return;
        }
        let names = event_names(n.kind);
        self.send(n, channel, names, event, span);
    }

    /// Summaries for channels whose limit held notifications back and has room again.
    fn summaries(&mut self) {
        let due = self.limiter.due_summaries(tokio::time::Instant::now());
        for (label, s) in due {
            let Some(channel) = self.seen.get(&label).cloned() else {
                continue;
            };
            let n = Arc::new(summary_notification(
                &s,
                self.svc.inner.clock.now(),
                channel
                    .spec
                    .rate_limit()
                    .unwrap_or(self.svc.inner.settings.rate_limit_per_hour),
            ));
            self.send(
                n,
                channel,
                SUMMARY_EVENT,
                SUMMARY_EVENT[0],
                tracing::Span::none(),
            );
        }
    }

    /// Renders the message for `channel` and delivers it in its own task.
    fn send(
        &self,
        n: Arc<Notification>,
        channel: Channel,
        names: &'static [&'static str],
        event: &'static str,
        span: tracing::Span,
    ) {
        use tracing::Instrument;
        let ctx = context(&n, event, self.svc.inner.settings.api_url.as_deref());
        let prepared = prepare(&self.templates, &channel, &n, names, &ctx);
        let svc = self.svc.clone();
        let http = self.http.clone();
        let plugins = self.plugins.clone();
        let sending = self.sending.clone();
        let task_span = span.clone();
        self.svc.inner.tasks.spawn(async move {
            let label = channel.label.clone();
            let kind = channel.spec.kind();
            let outcome = match prepared {
                Err(e) => {
                    tracing::error!(target: "cnp::notify", channel = %label, event, "notification not sent: {e}");
                    Outcome::failed(format!("not sent: {e}"), 0)
                }
                Ok(msg) => {
                    let _permit = sending.acquire_owned().await;
                    deliver(&http, plugins.as_ref(), &channel, &n, msg, event).await
                }
            };
            let now = svc.inner.clock.now();
            let (status, detail, delivered_at) = match &outcome.result {
                Ok(r) => (DeliveryStatus::Sent, r.clone(), Some(now)),
                Err(e) => (DeliveryStatus::Failed, e.clone(), None),
            };
            let span = task_span;
            span.record("cnp.delivery_status", status.as_str());
            span.record("cnp.attempts", i64::from(outcome.attempts));
            if let Err(e) = &outcome.result {
                crate::telemetry::set_error(&span, e.clone());
            }
            match &outcome.result {
                Ok(r) if kind == "plugin" => note(&n, format!("notified via plugin `{}`: {r}", plugin_name(&channel))),
                Ok(r) => note(&n, format!("notified via {kind} `{label}`: {r}")),
                Err(e) if kind == "plugin" => note(&n, format!("notification not delivered: {e}")),
                Err(e) => {
                    tracing::warn!(target: "cnp::notify", channel = %label, event, "notification not delivered: {e}");
                    note(&n, format!("notification via {kind} `{label}` not delivered: {e}"))
                }
            }
            let r = svc
                .inner
                .store
                .record_delivery(NewDelivery {
                    execution_id: n.execution_id.clone(),
                    job_id: n.job.as_ref().map(|j| j.id.clone()),
                    event: event.to_owned(),
                    channel: label,
                    status,
                    attempts: outcome.attempts,
                    detail: Some(detail),
                    created_at: n.at,
                    delivered_at,
                })
                .await;
            if let Err(e) = r {
                tracing::warn!(target: "cnp::notify", error = %e, "cannot record a notification delivery");
            }
        }.instrument(span));
    }
}

/// The `notification` span of one delivery, a child of the run that asked for it; none when
/// traces are off or no run span was current (events about no run, rate-limit summaries).
fn delivery_span(
    parent: &crate::telemetry::Parent,
    n: &Notification,
    channel: &Channel,
    event: &str,
) -> tracing::Span {
    if !parent.is_some() {
        return tracing::Span::none();
    }
    let span = crate::telemetry::span!(
        parent: None,
        "notification",
        cnp.event = event,
        cnp.channel = %channel.label,
        cnp.channel_type = channel.spec.kind(),
        cnp.execution_id = n.execution_id.as_deref(),
        cnp.delivery_status = tracing::field::Empty,
        cnp.attempts = tracing::field::Empty,
    );
    parent.adopt(&span);
    span
}

fn plugin_name(c: &Channel) -> &str {
    match &c.spec {
        ChannelSpec::Plugin(p) => &p.plugin,
        _ => "",
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// The message, rendered for a channel.
enum Prepared {
    Text { text: String, failure: bool },
    Webhook(Vec<u8>),
    Email { subject: String, body: String },
    Plugin(Box<NotifyEvent>),
}

fn prepare(
    t: &Templates,
    channel: &Channel,
    n: &Notification,
    names: &[&str],
    ctx: &Value,
) -> Result<Prepared, String> {
    let failure = is_failure(n);
    Ok(match &channel.spec {
        ChannelSpec::Log(_) | ChannelSpec::System(_) => Prepared::Text {
            text: t.text(names, ctx)?,
            failure,
        },
        ChannelSpec::Webhook(w) => {
            use config::WebhookFormat as F;
            let body = match w.format {
                F::Json => match t.webhook_json(ctx)? {
                    Some(b) => b,
                    None => {
                        let mut doc = ctx.clone();
                        doc["text"] = json!(t.text(names, ctx)?);
                        serde_json::to_vec(&doc).map_err(|e| e.to_string())?
                    }
                },
                F::Slack => serde_json::to_vec(&json!({ "text": t.text(names, ctx)? }))
                    .map_err(|e| e.to_string())?,
                F::Discord => {
                    let text: String = t.text(names, ctx)?.chars().take(1900).collect();
                    serde_json::to_vec(&json!({ "content": text })).map_err(|e| e.to_string())?
                }
            };
            Prepared::Webhook(body)
        }
        ChannelSpec::Email(_) => {
            let (subject, body) = t.email(names, ctx)?;
            Prepared::Email { subject, body }
        }
        ChannelSpec::Plugin(_) => Prepared::Plugin(Box::new(NotifyEvent {
            kind: n.kind.to_plugin().ok_or_else(|| {
                format!(
                    "notifier plugins (cnp:plugin@0.1.0) have no `{}` event",
                    event_names(n.kind)[0]
                )
            })?,
            job: n.job.clone(),
            execution: n.execution.clone(),
            summary: n.summary.clone(),
            at: n.at.timestamp_millis(),
        })),
    })
}

async fn deliver(
    http: &reqwest::Client,
    plugins: Option<&PluginHost>,
    channel: &Channel,
    n: &Notification,
    msg: Prepared,
    event: &str,
) -> Outcome {
    match (&channel.spec, msg) {
        (ChannelSpec::Log(_), Prepared::Text { text, failure }) => channels::log::deliver(
            event,
            n.job.as_ref().map(|j| j.name.as_str()),
            &text,
            failure,
        ),
        (ChannelSpec::System(_), Prepared::Text { text, failure }) => {
            let (title, body) = text.split_once('\n').unwrap_or((text.as_str(), ""));
            channels::system::deliver(title, body.trim(), failure).await
        }
        (ChannelSpec::Webhook(w), Prepared::Webhook(body)) => {
            channels::webhook::deliver(http, w, body).await
        }
        (ChannelSpec::Email(e), Prepared::Email { subject, body }) => {
            channels::email::deliver(e, &subject, body).await
        }
        (ChannelSpec::Plugin(p), Prepared::Plugin(ev)) => {
            channels::plugin::deliver(plugins, &p.plugin, p.config.as_ref(), &ev).await
        }
        _ => Outcome::failed("internal error: message prepared for another channel", 0),
    }
}

/// The one message that stands for what a rate limit held back.
fn summary_notification(s: &Suppressed, at: DateTime<Utc>, limit: u32) -> Notification {
    let events = s
        .by_event
        .iter()
        .map(|(e, c)| format!("{c} {e}"))
        .collect::<Vec<_>>()
        .join(", ");
    let jobs = if s.jobs.is_empty() {
        String::new()
    } else {
        format!(
            "; jobs: {}",
            s.jobs.iter().cloned().collect::<Vec<_>>().join(", ")
        )
    };
    let plural = if s.count == 1 { "" } else { "s" };
    let mut n = Notification::global(
        if s.by_event.keys().any(|e| e == "failed" || e == "retry_scheduled") {
            EventKind::RunFailed
        } else {
            EventKind::RunCompleted
        },
        format!(
            "{} notification{plural} suppressed in the last hour by the rate limit ({limit}/hour): {events}{jobs}",
            s.count
        ),
        at,
    );
    n.details.insert("suppressed".into(), json!(s.count));
    n.details
        .insert("suppressed_by_event".into(), json!(s.by_event));
    n.details.insert("suppressed_jobs".into(), json!(s.jobs));
    n
}

/// The variables templates see.
fn context(n: &Notification, event: &str, api_url: Option<&str>) -> Value {
    let e = n.execution.as_ref();
    let ms = |t: Option<i64>| {
        t.and_then(DateTime::<Utc>::from_timestamp_millis)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    };
    let status = match (n.kind, e.map(|e| e.outcome)) {
        (EventKind::RunStarted, _) => "running",
        (EventKind::RunSucceeded, _) => "succeeded",
        (EventKind::RunFailed | EventKind::RetryScheduled, _) => "failed",
        (EventKind::RunCompleted, Some(OutcomeKind::Success)) => "succeeded",
        (EventKind::RunCompleted, _) => "failed",
        (EventKind::CooldownEntered, _) => "cooldown",
        (EventKind::CooldownEnded, _) => "resumed",
        (EventKind::PluginFailure, _) => "plugin_failure",
        (EventKind::BudgetExceeded, _) => "budget_held",
        (EventKind::StorageFailing, _) => "storage_failing",
    };
    let exec_id = n.execution_id.clone().or(e.map(|e| e.execution_id.clone()));
    let links = match &exec_id {
        Some(id) => json!({
            "cli": format!("cnp job execution {id}"),
            "notifications_cli": format!("cnp job notifications {id}"),
            "api": api_url.map(|u| format!("{u}/api/executions/{id}")),
            "logs": api_url.map(|u| format!("{u}/api/executions/{id}/logs")),
        }),
        None => json!({ "cli": null, "api": null }),
    };
    let output = e.map(|e| excerpt(&e.output_tail));
    let mut ctx = json!({
        "event": event,
        "summary": n.summary,
        "status": status,
        "job": n.job.as_ref().map(|j| json!({
            "id": j.id, "name": j.name, "tags": j.tags, "priority": j.priority,
        })),
        "job_name": n.job.as_ref().map(|j| j.name.clone()),
        "execution_id": exec_id,
        "attempt": e.map(|e| e.attempt),
        "max_attempts": e.map(|e| e.max_attempts),
        "outcome": e.map(|e| outcome_name(e.outcome)),
        "exit_code": e.and_then(|e| e.exit_code),
        "duration_ms": e.map(|e| e.duration_ms),
        "duration": e.map(|e| human_ms(e.duration_ms)),
        "error": e.and_then(|e| e.error.clone()).or_else(|| n.details.get("error").and_then(|v| v.as_str()).map(str::to_owned)),
        "output": output.filter(|o| !o.is_empty()),
        "scheduled_at": ms(e.and_then(|e| e.scheduled_at)),
        "finished_at": ms(e.map(|e| e.finished_at)),
        "at": n.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "links": links,
        "details": n.details,
    });
    if let Some(m) = ctx.as_object_mut() {
        for (k, v) in &n.details {
            m.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    ctx
}

fn human_ms(ms: u64) -> String {
    if ms < 1000 {
        "under 1s".into()
    } else {
        humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
    }
}

/// The end of a run's output, at most [`OUTPUT_EXCERPT`] bytes, from a line start when possible.
fn excerpt(s: &str) -> String {
    let s = s.trim_end();
    if s.len() <= OUTPUT_EXCERPT {
        return s.to_owned();
    }
    let mut start = s.len() - OUTPUT_EXCERPT;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    let tail = &s[start..];
    match tail.find('\n') {
        Some(i) if i + 1 < tail.len() => format!("…{}", &tail[i + 1..]),
        _ => format!("…{tail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_keep_the_end() {
        assert_eq!(excerpt("short\n"), "short");
        let long = format!("{}\nlast line", "x".repeat(3000));
        assert_eq!(excerpt(&long), "…last line");
    }
}
