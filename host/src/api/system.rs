//! Statistics, liveness, metrics (JSON and Prometheus text), plugins and service status.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::ApiError;
use super::ApiState;
use crate::engine::EngineStatus;
use crate::model::{ExecutionStatus, JobStatus};
use crate::plugins::{PluginInfo, PluginLoadError};
use crate::service::ManifestStatus;

const ALL_STATUSES: [ExecutionStatus; 9] = [
    ExecutionStatus::Queued,
    ExecutionStatus::Deferred,
    ExecutionStatus::Running,
    ExecutionStatus::Completed,
    ExecutionStatus::Failed,
    ExecutionStatus::TimedOut,
    ExecutionStatus::Cancelled,
    ExecutionStatus::Interrupted,
    ExecutionStatus::Skipped,
];

/// Upper bounds of the run-duration histogram, in seconds.
const DURATION_BUCKETS_S: [f64; 12] = [
    0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

#[derive(Debug, Serialize, ToSchema)]
pub struct Stats {
    pub jobs: JobCounts,
    /// Stored executions per status (every status present, 0 when none).
    #[schema(value_type = Object)]
    pub executions: BTreeMap<&'static str, u64>,
    pub queue: QueueStats,
    /// completed / (completed + failed + timed_out + interrupted); 0.0 before any finished.
    pub success_rate: f64,
    pub avg_execution_time_ms: f64,
    /// The Claude usage-limit cooldown in force (`null` when none).
    #[schema(value_type = Option<Object>)]
    pub cooldown: Option<crate::engine::Cooldown>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobCounts {
    pub total: u64,
    pub active: u64,
    pub paused: u64,
    pub disabled: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QueueStats {
    pub queued: usize,
    pub running: usize,
    pub max_concurrent_jobs: usize,
}

impl From<EngineStatus> for QueueStats {
    fn from(s: EngineStatus) -> Self {
        QueueStats {
            queued: s.queued,
            running: s.running,
            max_concurrent_jobs: s.max_concurrent_jobs,
        }
    }
}

#[utoipa::path(get, path = "/api/jobs/stats", operation_id = "getStats", tag = "monitoring",
    responses((status = 200, description = "Job and execution statistics", body = Stats)))]
pub async fn stats(State(st): State<ApiState>) -> Result<Json<Stats>, ApiError> {
    let store = st.engine().store();
    let (jobs, execs, avg) = tokio::try_join!(
        store.job_status_counts(),
        store.execution_counts(),
        store.avg_execution_time_ms()
    )?;
    let job = |s: JobStatus| jobs.iter().find(|(k, _)| *k == s).map_or(0, |(_, n)| *n);
    let exec = |s: ExecutionStatus| execs.iter().find(|(k, _)| *k == s).map_or(0, |(_, n)| *n);
    let ok = exec(ExecutionStatus::Completed);
    let bad = exec(ExecutionStatus::Failed)
        + exec(ExecutionStatus::TimedOut)
        + exec(ExecutionStatus::Interrupted);
    Ok(Json(Stats {
        jobs: JobCounts {
            total: jobs.iter().map(|(_, n)| n).sum(),
            active: job(JobStatus::Active),
            paused: job(JobStatus::Paused),
            disabled: job(JobStatus::Disabled),
        },
        executions: ALL_STATUSES
            .iter()
            .map(|s| (s.as_str(), exec(*s)))
            .collect(),
        queue: st.engine().status().into(),
        success_rate: if ok + bad > 0 {
            ok as f64 / (ok + bad) as f64
        } else {
            0.0
        },
        avg_execution_time_ms: avg,
        cooldown: st.engine().cooldown(),
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or `error` when the database does not answer.
    pub status: &'static str,
    pub version: &'static str,
    pub uptime_seconds: u64,
    /// `ok`, `degraded: writes fail since …: …` (a full or failing disk: runs wait until writes
    /// succeed again) or `error: …`.
    pub database: String,
    /// On PostgreSQL: the cluster of instances on the database (absent on SQLite).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
}

/// The instances sharing a PostgreSQL database (docs/cluster.md).
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterStatus {
    /// This instance's member id.
    pub member: String,
    /// The member holding the timer (`null` while none does).
    pub leader: Option<String>,
    /// The leader first, then by start.
    pub members: Vec<ClusterMember>,
}

/// One instance of the cluster, as its last heartbeat recorded it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterMember {
    pub id: String,
    pub host: String,
    pub pid: u32,
    /// Where its API listens.
    pub api: Option<String>,
    pub leader: bool,
    pub running: u32,
    pub queued: u32,
    /// Its `max_concurrent_jobs`.
    pub capacity: u32,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub heartbeat_at: chrono::DateTime<chrono::Utc>,
}

/// The cluster as the database has it (`None` on SQLite or when it cannot be read).
pub(super) async fn cluster_status(st: &ApiState) -> Option<ClusterStatus> {
    let engine = st.engine();
    let member = engine.member_id()?.to_owned();
    let members = match engine.members().await {
        Ok(Some(m)) => m,
        _ => return None,
    };
    Some(ClusterStatus {
        member,
        leader: members.iter().find(|m| m.leader).map(|m| m.id.clone()),
        members: members
            .into_iter()
            .map(|m| ClusterMember {
                id: m.id,
                host: m.host,
                pid: m.pid,
                api: m.api,
                leader: m.leader,
                running: m.running,
                queued: m.queued,
                capacity: m.capacity,
                started_at: m.started_at,
                heartbeat_at: m.heartbeat_at,
            })
            .collect(),
    })
}

#[utoipa::path(get, path = "/api/jobs/health", operation_id = "getHealth", tag = "monitoring", security(()),
    responses(
        (status = 200, description = "Alive, database answering (no token needed)", body = Health),
        (status = 503, description = "The database does not answer, or cannot be written (`status: degraded`)", body = Health),
    ))]
pub async fn health(State(st): State<ApiState>) -> (StatusCode, Json<Health>) {
    let db = st.engine().store().ping().await;
    let writes = st.engine().store().write_status();
    let (code, status, database) = match db {
        Ok(()) if writes.failing => (
            StatusCode::SERVICE_UNAVAILABLE,
            "degraded",
            format!(
                "degraded: writes fail since {}: {}",
                writes
                    .since
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_default(),
                writes.last_error.unwrap_or_default()
            ),
        ),
        Ok(()) => (StatusCode::OK, "ok", "ok".to_owned()),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "error",
            format!("error: {e}"),
        ),
    };
    (
        code,
        Json(Health {
            status,
            version: env!("CARGO_PKG_VERSION"),
            uptime_seconds: st.uptime().as_secs(),
            database,
            cluster: cluster_status(&st).await,
        }),
    )
}

/// `GET /api/jobs/metrics`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Metrics {
    /// Stored executions per status.
    #[schema(value_type = Object)]
    pub runs: BTreeMap<&'static str, u64>,
    pub durations: DurationMetrics,
    pub queue: QueueStats,
    pub cooldown_active: bool,
    /// When the cooldown ends (unix seconds); `null` when none, or its reset is unknown.
    pub cooldown_until_seconds: Option<i64>,
    pub plugins: Vec<PluginCalls>,
    pub process: ProcessMetrics,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DurationMetrics {
    /// Finished runs with a duration.
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: u64,
    pub p90_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
    /// Cumulative: runs that took at most `le_seconds`.
    pub buckets: Vec<Bucket>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Bucket {
    pub le_seconds: f64,
    pub count: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PluginCalls {
    pub plugin: String,
    pub ok: u64,
    pub failed: u64,
    pub timeouts: u64,
    pub total_micros: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProcessMetrics {
    /// Resident set size of the cnp process (not its runs), bytes; 0 where unknown.
    pub rss_bytes: u64,
    pub uptime_seconds: u64,
}

async fn collect(st: &ApiState) -> Result<Metrics, ApiError> {
    if !st.metrics_enabled() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "metrics_disabled",
            "metrics are turned off ([job_engine] metrics_enabled = false)",
        ));
    }
    let store = st.engine().store();
    let bounds: Vec<u64> = DURATION_BUCKETS_S
        .iter()
        .map(|s| (s * 1000.0) as u64)
        .collect();
    let (execs, d) = tokio::try_join!(store.execution_counts(), store.duration_stats(bounds))?;
    let exec = |s: ExecutionStatus| execs.iter().find(|(k, _)| *k == s).map_or(0, |(_, n)| *n);
    let cooldown = st.engine().cooldown();
    let plugins = st
        .plugins()
        .map(|p| p.list())
        .unwrap_or_default()
        .into_iter()
        .map(|p| PluginCalls {
            plugin: p.name,
            ok: p.calls.ok,
            failed: p.calls.failed,
            timeouts: p.calls.timeouts,
            total_micros: p.calls.total_micros,
        })
        .collect();
    Ok(Metrics {
        runs: ALL_STATUSES
            .iter()
            .map(|s| (s.as_str(), exec(*s)))
            .collect(),
        durations: DurationMetrics {
            count: d.count,
            mean_ms: d.mean_ms,
            p50_ms: d.p50_ms,
            p90_ms: d.p90_ms,
            p99_ms: d.p99_ms,
            max_ms: d.max_ms,
            buckets: DURATION_BUCKETS_S
                .iter()
                .zip(&d.buckets)
                .map(|(le, n)| Bucket {
                    le_seconds: *le,
                    count: *n,
                })
                .collect(),
        },
        queue: st.engine().status().into(),
        cooldown_active: cooldown.is_some(),
        cooldown_until_seconds: cooldown.and_then(|c| c.until).map(|t| t.timestamp()),
        plugins,
        process: ProcessMetrics {
            rss_bytes: rss_bytes(),
            uptime_seconds: st.uptime().as_secs(),
        },
    })
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

#[utoipa::path(get, path = "/api/jobs/metrics", operation_id = "getMetrics", tag = "monitoring",
    responses(
        (status = 200, description = "Performance metrics", body = Metrics),
        (status = 404, description = "Metrics are turned off (`[job_engine] metrics_enabled = false`)"),
    ))]
pub async fn metrics_json(State(st): State<ApiState>) -> Result<Json<Metrics>, ApiError> {
    collect(&st).await.map(Json)
}

#[utoipa::path(get, path = "/metrics", operation_id = "getPrometheusMetrics", tag = "monitoring",
    responses(
        (status = 200, description = "The same facts in the Prometheus text exposition format 0.0.4", content_type = "text/plain"),
        (status = 404, description = "Metrics are turned off (`[job_engine] metrics_enabled = false`)"),
    ))]
pub async fn metrics_prometheus(State(st): State<ApiState>) -> Result<Response, ApiError> {
    let m = collect(&st).await?;
    let mut text = prometheus_text(&m);
    let costs = st.engine().store().cost_counters().await?;
    super::costs::prometheus_cost_counters(&mut text, &costs);
    text.push_str(&budget_text(&st.engine().budget_status().await));
    let w = st.engine().store().write_status();
    let _ = writeln!(
        text,
        "# HELP cnp_database_write_failures_total Database writes that failed for want of storage (full disk, I/O error, read-only).\n# TYPE cnp_database_write_failures_total counter\ncnp_database_write_failures_total {}\n# HELP cnp_database_writes_failing 1 while the latest database write failed for want of storage.\n# TYPE cnp_database_writes_failing gauge\ncnp_database_writes_failing {}",
        w.failures,
        u8::from(w.failing)
    );
    text.push_str(&backup_text(&st.engine().backup_status()));
    let hooks = st.webhooks();
    let _ = writeln!(
        text,
        "# HELP cnp_webhook_requests_total Webhook deliveries (POST /api/hooks/…) since the start: accepted (a run recorded) or refused (bad signature, stale, replayed, too large, unknown hook).\n# TYPE cnp_webhook_requests_total counter\ncnp_webhook_requests_total{{result=\"accepted\"}} {}\ncnp_webhook_requests_total{{result=\"refused\"}} {}",
        hooks.accepted.load(std::sync::atomic::Ordering::Relaxed),
        hooks.refused.load(std::sync::atomic::Ordering::Relaxed)
    );
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// The spending caps as Prometheus gauges: per scope (`global`, or `job` with its name) and
/// window (`daily`, `monthly`), the cap and what was spent; whether the scope holds runs.
fn budget_text(b: &crate::engine::BudgetStatus) -> String {
    let esc = |s: &str| {
        s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP cnp_budget_spent_usd What the scope's runs that ended in the window cost (runs with no cost reported count 0).\n# TYPE cnp_budget_spent_usd gauge"
    );
    let scopes: Vec<_> = std::iter::once(&b.global).chain(&b.jobs).collect();
    let labels = |sc: &crate::engine::ScopeStatus| match &sc.job_name {
        Some(n) => format!("scope=\"job\",job=\"{}\"", esc(n)),
        None => "scope=\"global\"".to_owned(),
    };
    for sc in &scopes {
        for w in &sc.windows {
            let _ = writeln!(
                out,
                "cnp_budget_spent_usd{{{},window=\"{}\"}} {}",
                labels(sc),
                w.window,
                w.spent_usd
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP cnp_budget_cap_usd The scope's cap in the window (only caps that are set).\n# TYPE cnp_budget_cap_usd gauge"
    );
    for sc in &scopes {
        for w in &sc.windows {
            if let Some(cap) = w.cap_usd {
                let _ = writeln!(
                    out,
                    "cnp_budget_cap_usd{{{},window=\"{}\"}} {cap}",
                    labels(sc),
                    w.window
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP cnp_budget_exceeded 1 while the scope holds runs because of what it spent.\n# TYPE cnp_budget_exceeded gauge"
    );
    for sc in &scopes {
        let _ = writeln!(
            out,
            "cnp_budget_exceeded{{{}}} {}",
            labels(sc),
            u8::from(sc.exceeded)
        );
    }
    let _ = writeln!(
        out,
        "# HELP cnp_budget_held_runs Runs held (deferred) by a spending cap.\n# TYPE cnp_budget_held_runs gauge\ncnp_budget_held_runs {}",
        b.held_runs
    );
    out
}

/// Backups as Prometheus gauges: when the last successful one was taken (0: none known), its
/// size, whether the latest periodic attempt failed, and the failed attempts since the start.
fn backup_text(b: &crate::engine::BackupStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP cnp_last_backup_timestamp_seconds When the last successful database backup was taken (unix time; periodic, on demand, or the newest periodic one found at start); 0 when none.\n# TYPE cnp_last_backup_timestamp_seconds gauge\ncnp_last_backup_timestamp_seconds {}",
        b.last.as_ref().map_or(0, |l| l.at.timestamp())
    );
    let _ = writeln!(
        out,
        "# HELP cnp_last_backup_size_bytes The size of that backup.\n# TYPE cnp_last_backup_size_bytes gauge\ncnp_last_backup_size_bytes {}",
        b.last.as_ref().map_or(0, |l| l.bytes)
    );
    let _ = writeln!(
        out,
        "# HELP cnp_backup_failing 1 while the latest periodic backup attempt failed.\n# TYPE cnp_backup_failing gauge\ncnp_backup_failing {}",
        u8::from(b.last_error.is_some())
    );
    let _ = writeln!(
        out,
        "# HELP cnp_backup_failures_total Periodic backup attempts that failed since the service started.\n# TYPE cnp_backup_failures_total counter\ncnp_backup_failures_total {}",
        b.failures
    );
    out
}

/// Renders metrics as Prometheus text. Run counts and durations come from the stored
/// executions (retention prunes them), so they are exposed as gauges / a histogram that may
/// shrink after a cleanup.
fn prometheus_text(m: &Metrics) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP cnp_runs_total Executions in the database, by status.\n# TYPE cnp_runs_total gauge"
    );
    for (status, n) in &m.runs {
        let _ = writeln!(out, "cnp_runs_total{{status=\"{status}\"}} {n}");
    }
    let d = &m.durations;
    let _ = writeln!(
        out,
        "# HELP cnp_run_duration_seconds Wall time of finished runs.\n# TYPE cnp_run_duration_seconds histogram"
    );
    for b in &d.buckets {
        let _ = writeln!(
            out,
            "cnp_run_duration_seconds_bucket{{le=\"{}\"}} {}",
            b.le_seconds, b.count
        );
    }
    let _ = writeln!(
        out,
        "cnp_run_duration_seconds_bucket{{le=\"+Inf\"}} {}\ncnp_run_duration_seconds_sum {}\ncnp_run_duration_seconds_count {}",
        d.count,
        d.mean_ms * d.count as f64 / 1000.0,
        d.count
    );
    let _ = writeln!(
        out,
        "# HELP cnp_queue_depth Runs waiting in the dispatch queue.\n# TYPE cnp_queue_depth gauge\ncnp_queue_depth {}",
        m.queue.queued
    );
    let _ = writeln!(
        out,
        "# HELP cnp_running Runs in progress.\n# TYPE cnp_running gauge\ncnp_running {}",
        m.queue.running
    );
    let _ = writeln!(
        out,
        "# HELP cnp_max_concurrent_jobs The concurrency limit.\n# TYPE cnp_max_concurrent_jobs gauge\ncnp_max_concurrent_jobs {}",
        m.queue.max_concurrent_jobs
    );
    let _ = writeln!(
        out,
        "# HELP cnp_cooldown_active 1 while a Claude usage-limit cooldown holds runs back.\n# TYPE cnp_cooldown_active gauge\ncnp_cooldown_active {}",
        u8::from(m.cooldown_active)
    );
    let _ = writeln!(
        out,
        "# HELP cnp_cooldown_until_seconds When the cooldown ends (unix time); 0 when none or its reset is unknown.\n# TYPE cnp_cooldown_until_seconds gauge\ncnp_cooldown_until_seconds {}",
        m.cooldown_until_seconds.unwrap_or(0)
    );
    let _ = writeln!(
        out,
        "# HELP cnp_plugin_calls_total Plugin calls since the plugin was loaded, by result.\n# TYPE cnp_plugin_calls_total counter"
    );
    for p in &m.plugins {
        let name = p.plugin.replace('\\', "\\\\").replace('"', "\\\"");
        for (result, n) in [("ok", p.ok), ("failed", p.failed), ("timeout", p.timeouts)] {
            let _ = writeln!(
                out,
                "cnp_plugin_calls_total{{plugin=\"{name}\",result=\"{result}\"}} {n}"
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP cnp_process_resident_memory_bytes Resident memory of the cnp process.\n# TYPE cnp_process_resident_memory_bytes gauge\ncnp_process_resident_memory_bytes {}",
        m.process.rss_bytes
    );
    out
}

/// `GET /api/plugins`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PluginList {
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<PluginInfo>,
    #[schema(value_type = Vec<Object>)]
    pub errors: Vec<PluginLoadError>,
}

#[utoipa::path(get, path = "/api/plugins", operation_id = "listPlugins", tag = "plugins",
    responses((status = 200, description = "Loaded plugins and files that failed to load (empty when plugins are disabled)", body = PluginList)))]
pub async fn plugins(State(st): State<ApiState>) -> Json<PluginList> {
    let (items, errors) = st
        .plugins()
        .map(|p| (p.list(), p.load_errors()))
        .unwrap_or_default();
    Json(PluginList { items, errors })
}

/// `GET /api/status` (what `cnp status` shows).
#[derive(Debug, Serialize, ToSchema)]
pub struct ServiceStatus {
    #[schema(value_type = Object)]
    pub engine: EngineStatus,
    #[schema(value_type = Object)]
    pub manifests: ManifestStatus,
    pub plugins: PluginSummary,
    /// The Claude usage-limit cooldown in force (`null` when none); see `GET /api/cooldown`.
    #[schema(value_type = Option<Object>)]
    pub cooldown: Option<crate::engine::Cooldown>,
    /// Database backups: `periodic` (`[database] backup`, `null` when off), `last`, `next_at`,
    /// `last_error` (the latest periodic attempt, when it failed), `failures`.
    #[schema(value_type = Object)]
    pub backup: crate::engine::BackupStatus,
    /// On PostgreSQL: the cluster's members, its leader and each one's counts (absent on
    /// SQLite).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PluginSummary {
    pub loaded: usize,
    pub errors: usize,
}

#[utoipa::path(get, path = "/api/status", operation_id = "getStatus", tag = "monitoring",
    responses((status = 200, description = "Engine, manifest folder, plugins, cooldown", body = ServiceStatus)))]
pub async fn status(State(st): State<ApiState>) -> Json<ServiceStatus> {
    let plugins = st.plugins().map_or(
        PluginSummary {
            loaded: 0,
            errors: 0,
        },
        |p| PluginSummary {
            loaded: p.list().len(),
            errors: p.load_errors().len(),
        },
    );
    Json(ServiceStatus {
        engine: st.engine().status(),
        manifests: st.inner.manifests.get(),
        plugins,
        cooldown: st.engine().cooldown(),
        backup: st.engine().backup_status(),
        cluster: cluster_status(&st).await,
    })
}

/// Query of `GET /api/jobs/stats/daily`.
#[derive(Debug, Default, Deserialize)]
pub struct DailyQuery {
    pub days: Option<String>,
}

/// `GET /api/jobs/stats/daily`: runs per UTC day and the jobs that cost the most.
#[derive(Debug, Serialize, ToSchema)]
pub struct DailyStats {
    pub days: u32,
    /// Oldest day first, every day of the window present (`day`, `start` unix seconds,
    /// `completed`, `failed`, `timed_out`, `cancelled`, `interrupted`, `skipped`, `p50_ms`,
    /// `p95_ms`, `cost_usd`).
    #[schema(value_type = Vec<Object>)]
    pub daily: Vec<crate::store::DayStats>,
    /// The 20 jobs that cost the most over the window (`job_id`, `name`, `runs`, `cost_usd`).
    #[schema(value_type = Vec<Object>)]
    pub jobs: Vec<crate::store::JobCost>,
}

#[utoipa::path(get, path = "/api/jobs/stats/daily", operation_id = "getDailyStats", tag = "monitoring",
    params(("days" = Option<u32>, Query, description = "1–366, default 30")),
    responses(
        (status = 200, description = "Runs per UTC day by outcome, duration p50/p95 and cost; cost per job", body = DailyStats),
        (status = 422, description = "`days` out of range", body = super::ErrorBody),
    ))]
pub async fn daily(
    State(st): State<ApiState>,
    axum::extract::Query(q): axum::extract::Query<DailyQuery>,
) -> Result<Json<DailyStats>, ApiError> {
    let days = match q.days.as_deref() {
        None | Some("") => 30,
        Some(s) => s
            .parse::<u32>()
            .ok()
            .filter(|d| (1..=366).contains(d))
            .ok_or_else(|| {
                ApiError::invalid("days", format!("must be a whole number 1–366, got `{s}`"))
            })?,
    };
    let (daily, jobs) = st
        .engine()
        .store()
        .daily_stats(st.engine().clock().now(), days)
        .await?;
    Ok(Json(DailyStats { days, daily, jobs }))
}
