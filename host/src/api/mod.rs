//! The admin HTTP API: REST + WebSocket on axum, bearer-token auth, an OpenAPI document
//! generated from the handlers. docs/api.md is the reference.
//!
//! ```text
//!  request ─▶ trace span (method, path — never the query, which may hold a token)
//!          ─▶ require_token (all but GET /api/jobs/health) ─▶ body limit ─▶ handler
//!  handler ─▶ Engine (writes: create/update/delete/pause/resume/run/cancel) or Store (reads)
//!  /api/ws ─▶ event bus subscription (+ stored log backlog for one execution)
//! ```

mod auth;
mod backup;
mod budget;
mod cooldown;
mod costs;
mod dashboard;
mod error;
mod executions;
mod hooks;
mod jobs;
mod notifications;
mod openapi;
mod prompts;
mod session;
mod system;
mod templates;
mod workflows;
mod ws;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, State};
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

pub use auth::ApiToken;
pub use error::{ApiError, ErrorBody};
pub use openapi::openapi;

use crate::config::Config;
use crate::engine::Engine;
use crate::plugins::PluginHost;
use crate::service::SharedManifestStatus;

/// Liveness: the one route without auth.
pub const HEALTH_PATH: &str = "/api/jobs/health";
/// Webhook deliveries (`hooks.rs`, `/api/hooks/{job}`): no token, a signature.
pub const HOOKS_PREFIX: &str = "/api/hooks/";
/// The WebSocket route (also takes `?token=`).
pub const WS_PATH: &str = "/api/ws";
/// Environment variable that overrides `[api] bind`.
pub const BIND_ENV: &str = "CNP_API_BIND";

/// What the handlers share; cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    manifests: SharedManifestStatus,
    plugins: Option<PluginHost>,
    token: ApiToken,
    started: Instant,
    max_body_bytes: usize,
    /// `[job_engine] metrics_enabled`: off → `/metrics` and `/api/jobs/metrics` answer 404.
    metrics_enabled: bool,
    /// `[dashboard]`, the password resolved.
    dashboard: DashboardSettings,
    /// Cancelled when the service stops: WebSocket streams close.
    stop: CancellationToken,
    /// Webhook deliveries seen and counted (`hooks.rs`).
    webhooks: hooks::Webhooks,
}

impl ApiState {
    pub fn new(
        engine: Engine,
        manifests: SharedManifestStatus,
        plugins: Option<PluginHost>,
        token: ApiToken,
        max_body_bytes: usize,
    ) -> Self {
        ApiState {
            inner: Arc::new(Inner {
                engine,
                manifests,
                plugins,
                token,
                started: Instant::now(),
                max_body_bytes,
                metrics_enabled: true,
                dashboard: DashboardSettings::default(),
                stop: CancellationToken::new(),
                webhooks: Default::default(),
            }),
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub(crate) fn webhooks(&self) -> &hooks::Webhooks {
        &self.inner.webhooks
    }

    fn token(&self) -> &ApiToken {
        &self.inner.token
    }

    /// Turns the metrics endpoints off (`[job_engine] metrics_enabled = false`).
    pub fn without_metrics(mut self) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("set before the state is shared")
            .metrics_enabled = false;
        self
    }

    /// Sets how the web dashboard is served (`[dashboard]`).
    pub fn with_dashboard(mut self, settings: DashboardSettings) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("set before the state is shared")
            .dashboard = settings;
        self
    }

    fn dashboard(&self) -> &DashboardSettings {
        &self.inner.dashboard
    }

    pub(crate) fn metrics_enabled(&self) -> bool {
        self.inner.metrics_enabled
    }

    fn max_body_bytes(&self) -> usize {
        self.inner.max_body_bytes
    }

    fn plugins(&self) -> Option<&PluginHost> {
        self.inner.plugins.as_ref().or(self.inner.engine.plugins())
    }

    fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    fn stopping(&self) -> &CancellationToken {
        &self.inner.stop
    }
}

/// `[dashboard]` as the server uses it.
#[derive(Clone)]
pub struct DashboardSettings {
    pub enabled: bool,
    /// Logs in besides the API token.
    pub password: Option<ApiToken>,
    pub session_ttl: Duration,
    pub trust_loopback: bool,
    /// Where the API token is (the login page says so).
    pub token_file: Option<PathBuf>,
}

impl Default for DashboardSettings {
    fn default() -> Self {
        let c = crate::config::DashboardConfig::default();
        DashboardSettings {
            enabled: c.enabled,
            password: None,
            session_ttl: c.session_ttl,
            trust_loopback: c.trust_loopback,
            token_file: None,
        }
    }
}

impl DashboardSettings {
    /// From the config, with `${VAR}` in the password read from the environment.
    pub fn from_config(
        c: &crate::config::DashboardConfig,
        token_file: PathBuf,
    ) -> anyhow::Result<Self> {
        let password = match &c.password {
            None => None,
            Some(p) => {
                let p = crate::notify::config::expand_env(p, &|v| std::env::var(v).ok())
                    .map_err(|e| anyhow::anyhow!("dashboard.password: {e}"))?;
                anyhow::ensure!(
                    p.len() >= 8,
                    "dashboard.password: must be at least 8 characters"
                );
                Some(ApiToken::new(p))
            }
        };
        Ok(DashboardSettings {
            enabled: c.enabled,
            password,
            session_ttl: c.session_ttl,
            trust_loopback: c.trust_loopback,
            token_file: Some(token_file),
        })
    }
}

/// Every route, with auth, body limit and request tracing.
pub fn router(state: ApiState) -> Router {
    let api = Router::new()
        .route("/api/jobs", post(jobs::create).get(jobs::list))
        .route("/api/jobs/stats", get(system::stats))
        // Signed by the job's own secret instead of the token; its own body limit.
        .route(
            "/api/hooks/{job}",
            post(hooks::receive).layer(DefaultBodyLimit::max(hooks::ROUTE_BODY_LIMIT)),
        )
        .route("/api/jobs/stats/daily", get(system::daily))
        .route("/api/costs", get(costs::report))
        .route(HEALTH_PATH, get(system::health))
        .route("/api/jobs/metrics", get(system::metrics_json))
        .route(
            "/api/jobs/{id}",
            get(jobs::show).put(jobs::update).delete(jobs::delete),
        )
        .route("/api/jobs/{id}/execute", post(jobs::execute))
        .route("/api/jobs/{id}/pause", post(jobs::pause))
        .route("/api/jobs/{id}/resume", post(jobs::resume))
        .route("/api/jobs/{id}/executions", get(jobs::executions))
        .route("/api/executions", get(executions::list))
        .route("/api/executions/{id}", get(executions::show))
        .route("/api/executions/{id}/cancel", post(executions::cancel))
        .route("/api/executions/{id}/logs", get(executions::logs))
        .route(
            "/api/executions/{id}/notifications",
            get(notifications::of_execution),
        )
        .route("/api/notifications", get(notifications::recent))
        .route("/api/prompts", get(prompts::list).post(prompts::create))
        .route(
            "/api/prompts/{id}",
            get(prompts::show)
                .put(prompts::update)
                .delete(prompts::delete),
        )
        .route("/api/workflows", get(workflows::list))
        .route("/api/workflows/{id}", get(workflows::show))
        .route("/api/workflows/{id}/cancel", post(workflows::cancel))
        .route(
            "/api/templates",
            get(templates::list).post(templates::create),
        )
        .route(
            "/api/templates/{name}",
            get(templates::show)
                .put(templates::update)
                .delete(templates::delete),
        )
        .route(
            "/api/templates/{name}/instantiate",
            post(templates::instantiate),
        )
        .route("/api/plugins", get(system::plugins))
        .route("/api/status", get(system::status))
        .route(
            "/api/budget",
            get(budget::show).put(budget::set).delete(budget::reset),
        )
        .route("/api/backup", post(backup::create))
        .route("/api/cooldown", get(cooldown::show))
        .route("/api/cooldown/clear", post(cooldown::clear))
        .route("/api/openapi.json", get(openapi::serve))
        .route(WS_PATH, get(ws::upgrade))
        .route("/metrics", get(system::metrics_prometheus))
        .merge(dashboard::routes(&state))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(error::json_rejections))
        .layer(DefaultBodyLimit::max(state.max_body_bytes()))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(|req: &axum::http::Request<_>| {
                    // The path only: a WebSocket query may carry the token.
                    tracing::debug_span!("api", method = %req.method(), path = %req.uri().path())
                })
                .on_failure(tower_http::trace::DefaultOnFailure::new().level(tracing::Level::WARN)),
        );
    api.with_state(state)
}

async fn not_found(State(st): State<ApiState>, uri: axum::http::Uri) -> axum::response::Response {
    use axum::response::IntoResponse;
    if st.dashboard().enabled && dashboard::is_dashboard_path(uri.path()) {
        return dashboard::not_found_page(uri.path());
    }
    ApiError::not_found("route", uri.path()).into_response()
}

/// The running API server.
pub struct ApiServer {
    addr: SocketAddr,
    state: ApiState,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    address_file: PathBuf,
}

impl ApiServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, closes WebSocket streams and waits (briefly) for requests in flight.
    pub async fn stop(self) {
        self.state.stopping().cancel();
        self.stop.cancel();
        if tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .is_err()
        {
            tracing::warn!("admin API: requests still in flight after 5 s; stopping anyway");
        }
        // Only ours: a newer instance may have written its own address since.
        if std::fs::read_to_string(&self.address_file)
            .is_ok_and(|a| a.trim() == self.addr.to_string())
        {
            let _ = std::fs::remove_file(&self.address_file);
        }
        tracing::info!("admin API stopped");
    }
}

/// Starts the API as the config says. `None` when it is disabled or cannot start (the reason is
/// logged; the scheduler runs on without it).
pub async fn start(
    config: &Config,
    engine: Engine,
    manifests: SharedManifestStatus,
    plugins: Option<PluginHost>,
) -> Option<ApiServer> {
    if !config.api.enabled {
        tracing::info!("admin API disabled ([api] enabled = false)");
        return None;
    }
    match try_start(config, engine, manifests, plugins).await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!("admin API not started: {e:#}");
            None
        }
    }
}

async fn try_start(
    config: &Config,
    engine: Engine,
    manifests: SharedManifestStatus,
    plugins: Option<PluginHost>,
) -> anyhow::Result<ApiServer> {
    use anyhow::Context;
    // `cnp serve --api-bind` / CNP_API_BIND have already been applied to the config.
    let bind = config.api.bind.clone();
    let bind: SocketAddr = bind.trim().parse().with_context(|| {
        format!("api.bind / {BIND_ENV}: `{bind}` is not an address like 127.0.0.1:8377")
    })?;
    let token_file = config.api_token_path();
    let token = ApiToken::load_or_create(&token_file)?;
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot listen on {bind}"))?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the admin API listens beyond this machine: the bearer token travels in plain HTTP");
    }
    let address_file = config.api_address_path();
    if let Err(e) = std::fs::write(&address_file, format!("{addr}\n")) {
        tracing::warn!(file = %address_file.display(), error = %e, "cannot write the API address file");
    }
    let mut state = ApiState::new(engine, manifests, plugins, token, config.api.max_body_bytes);
    if !config.job_engine.metrics_enabled {
        state = state.without_metrics();
    }
    state = state.with_dashboard(DashboardSettings::from_config(
        &config.dashboard,
        token_file.clone(),
    )?);
    let app = router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let stop = CancellationToken::new();
    let shutdown = stop.clone();
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "admin API server failed");
        }
    });
    tracing::info!(
        address = %addr,
        token_file = %token_file.display(),
        "admin API listening on http://{addr}"
    );
    if config.dashboard.enabled {
        tracing::info!("dashboard: open http://{addr}/ (log in with the API token)");
    }
    Ok(ApiServer {
        addr,
        state,
        stop,
        task,
        address_file,
    })
}

/// A page of a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Matching items in all pages.
    pub total: u64,
    pub limit: u32,
    pub offset: u32,
}

impl<T> Page<T> {
    /// The page `limit`/`offset` of a whole list held in memory, each item made by `f`.
    pub fn of<U>(all: Vec<U>, limit: u32, offset: u32, f: impl FnMut(U) -> T) -> Page<T> {
        Page {
            total: all.len() as u64,
            items: all
                .into_iter()
                .skip(offset as usize)
                .take(limit as usize)
                .map(f)
                .collect(),
            limit,
            offset,
        }
    }
}

/// Default page size.
pub const DEFAULT_LIMIT: u32 = 50;
/// Largest page size.
pub const MAX_LIMIT: u32 = 1000;

/// Query parameters of list routes (all optional; each route uses the ones it documents).
#[derive(Debug, Default, Deserialize)]
pub struct ListParams {
    pub limit: Option<String>,
    pub offset: Option<String>,
    pub status: Option<String>,
    pub tag: Option<String>,
    pub job_id: Option<String>,
}

impl ListParams {
    /// `(limit, offset)`, validated: limit 1–1000 (default 50), offset ≥ 0.
    pub fn page(&self) -> Result<(u32, u32), ApiError> {
        let limit = match self.limit.as_deref() {
            None | Some("") => DEFAULT_LIMIT,
            Some(s) => match s.parse::<u32>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(ApiError::invalid(
                        "limit",
                        format!("must be a whole number 1–{MAX_LIMIT}, got `{s}`"),
                    ))
                }
            },
        };
        let offset = match self.offset.as_deref() {
            None | Some("") => 0,
            Some(s) => s.parse::<u32>().map_err(|_| {
                ApiError::invalid("offset", format!("must be a whole number ≥ 0, got `{s}`"))
            })?,
        };
        Ok((limit, offset))
    }

    pub fn execution_status(&self) -> Result<Option<crate::model::ExecutionStatus>, ApiError> {
        match self.status.as_deref() {
            None | Some("") => Ok(None),
            Some(s) => crate::model::ExecutionStatus::parse(s)
                .map(Some)
                .ok_or_else(|| {
                    ApiError::invalid(
                        "status",
                        format!(
                        "`{s}` is not an execution status (queued, deferred, running, completed, \
                         failed, timed_out, cancelled, interrupted, skipped)"
                    ),
                    )
                }),
        }
    }

    pub fn job_status(&self) -> Result<Option<crate::model::JobStatus>, ApiError> {
        match self.status.as_deref() {
            None | Some("") => Ok(None),
            Some(s) => crate::model::JobStatus::parse(s).map(Some).ok_or_else(|| {
                ApiError::invalid(
                    "status",
                    format!("`{s}` is not a job status (active, paused, disabled)"),
                )
            }),
        }
    }
}
