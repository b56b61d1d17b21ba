//! The web dashboard: server-rendered pages under `/ui/`, on the API's server and port.
//!
//! ```text
//!  request ─▶ security headers (CSP without inline script, X-Frame-Options DENY, no-store)
//!          ─▶ require_login (session cookie; CSRF field + same Origin on every POST)
//!          ─▶ page handler ─▶ Engine / Store (the same calls as the API) ─▶ minijinja template
//!  live parts: static/app.js ─▶ /api/ws (session cookie) for logs and statuses
//! ```
//!
//! Pages work without JavaScript (plain forms, GET filters, POST-redirect-GET); the one
//! script adds live logs, local times, countdowns and the schedule preview. Every template is
//! auto-escaped, so user text (names, prompts, output) is always text. docs/dashboard.md is
//! the user's reference.

mod assets;
mod form;
mod jobs;
mod login;
mod misc;
mod prompts;
mod reference;
mod runs;
mod view;
mod workflows;

use std::net::SocketAddr;
use std::sync::LazyLock;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use minijinja::{context, Environment, Value};

use super::session::{self, Session};
use super::ApiState;

/// Whether a path belongs to the dashboard (which checks its own login).
pub(super) fn is_dashboard_path(path: &str) -> bool {
    path == "/" || path == "/ui" || path.starts_with("/ui/")
}

/// The dashboard's routes (none when `[dashboard] enabled = false`).
pub(super) fn routes(state: &ApiState) -> Router<ApiState> {
    if !state.dashboard().enabled {
        return Router::new();
    }
    let pages = Router::new()
        .route("/ui/", get(jobs::list))
        .route("/ui/jobs/bulk", post(jobs::bulk))
        .route("/ui/jobs/new", get(form::new_job).post(form::create_job))
        .route("/ui/jobs/{id}", get(jobs::detail))
        .route(
            "/ui/jobs/{id}/edit",
            get(form::edit_job).post(form::update_job),
        )
        .route("/ui/jobs/{id}/duplicate", get(form::duplicate_job))
        .route("/ui/jobs/{id}/run", post(jobs::run_now))
        .route("/ui/jobs/{id}/pause", post(jobs::pause))
        .route("/ui/jobs/{id}/resume", post(jobs::resume))
        .route(
            "/ui/jobs/{id}/delete",
            get(jobs::confirm_delete).post(jobs::delete),
        )
        .route("/ui/runs/{id}", get(runs::detail))
        .route("/ui/runs/{id}/cancel", post(runs::cancel))
        .route("/ui/workflows", get(workflows::list))
        .route("/ui/workflows/{id}", get(workflows::detail))
        .route("/ui/workflows/{id}/cancel", post(workflows::cancel))
        .route("/ui/cooldown/clear", post(misc::clear_cooldown))
        .route("/ui/plugins", get(misc::plugins))
        .route("/ui/stats", get(misc::stats))
        .route("/ui/api", get(reference::page))
        .route("/ui/prompts", get(prompts::list))
        .route("/ui/prompts/new", get(prompts::new).post(prompts::create))
        .route("/ui/prompts/{id}", get(prompts::edit).post(prompts::update))
        .route("/ui/prompts/{id}/delete", post(prompts::delete))
        .route("/ui/preview", post(form::preview))
        .route("/ui/logout", post(login::logout))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_login,
        ));
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/login", get(login::page).post(login::submit))
        .route("/ui/assets/{file}", get(assets::serve))
        .merge(pages)
        .layer(axum::middleware::from_fn(security_headers))
        .layer(tower_http::compression::CompressionLayer::new())
}

/// The answer to an unknown path under `/ui/` (the server's one fallback hands it here): a
/// page, with the dashboard's headers.
pub(super) fn not_found_page(path: &str) -> Response {
    let mut resp = PageError::NotFound(format!("the page `{path}`")).into_response();
    add_security_headers(&mut resp);
    resp
}

/// No inline script or style anywhere; the WebSocket and fetches go to this server only.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    add_security_headers(&mut resp);
    resp
}

fn add_security_headers(resp: &mut Response) {
    let h = resp.headers_mut();
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
}

/// Whether a request comes from this machine to a loopback name (not a DNS-rebound name).
fn is_local(req: &Request) -> bool {
    let peer_local = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .is_some_and(|c| c.0.ip().is_loopback());
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
    peer_local && matches!(name, "127.0.0.1" | "localhost" | "[::1]")
}

/// Pages need a session. A `GET` without one goes to the login page; any other method must be
/// same-origin and carry the session's CSRF token as the form field `csrf`.
async fn require_login(State(st): State<ApiState>, req: Request, next: Next) -> Response {
    let mut new_cookie = None;
    let session = match session::from_headers(&st, req.headers()).await {
        Some(s) => s,
        None if st.dashboard().trust_loopback && is_local(&req) => {
            match session::create(&st, session::is_https(req.headers())).await {
                Ok((s, cookie)) => {
                    new_cookie = Some(cookie);
                    s
                }
                Err(e) => return PageError::Internal(e.to_string()).into_response(),
            }
        }
        None => {
            if req.method() == Method::GET {
                let next = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_default();
                let to = format!("/ui/login?next={}", view::url_encode(&next));
                return Redirect::to(&to).into_response();
            }
            return PageError::Unauthorized.into_response();
        }
    };
    let req = if req.method() == Method::GET || req.method() == Method::HEAD {
        req
    } else {
        if !session::same_origin(req.headers()) {
            return PageError::Forbidden("the form was sent from another site".into())
                .into_response();
        }
        // Read the form to check its token, then hand the same bytes on.
        let (parts, body) = req.into_parts();
        let limit = st.max_body_bytes();
        let bytes = match axum::body::to_bytes(body, limit).await {
            Ok(b) => b,
            Err(_) => {
                return PageError::BadRequest(format!("the form is larger than {limit} bytes"))
                    .into_response()
            }
        };
        let token = form_urlencoded::parse(&bytes)
            .find(|(k, _)| k == "csrf")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        if !session.csrf_matches(&token) {
            return PageError::Forbidden(
                "the form's security token is missing or stale: reload the page and try again"
                    .into(),
            )
            .into_response();
        }
        Request::from_parts(parts, Body::from(bytes))
    };
    let mut req = req;
    req.extensions_mut().insert(session);
    let mut resp = next.run(req).await;
    if let Some(c) = new_cookie {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

/// A form body: every field in order (a key may repeat, like checked boxes).
pub(super) struct FormData(Vec<(String, String)>);

impl FormData {
    pub fn parse(bytes: &Bytes) -> FormData {
        FormData(
            form_urlencoded::parse(bytes)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The first value of `key`, trimmed; `None` when absent or blank.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// The first value of `key` as sent (not trimmed), or "".
    pub fn raw(&self, key: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map_or("", |(_, v)| v.as_str())
    }

    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn checked(&self, key: &str) -> bool {
        self.get(key).is_some_and(|v| v != "0" && v != "false")
    }
}

impl<S: Send + Sync> axum::extract::FromRequest<S> for FormData {
    type Rejection = PageError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| PageError::BadRequest(e.to_string()))?;
        Ok(FormData::parse(&bytes))
    }
}

/// What a page handler can fail with; shown as a page, never as JSON.
#[derive(Debug)]
pub(super) enum PageError {
    NotFound(String),
    BadRequest(String),
    Unauthorized,
    Forbidden(String),
    Internal(String),
}

impl From<crate::engine::EngineError> for PageError {
    fn from(e: crate::engine::EngineError) -> Self {
        use crate::engine::EngineError as E;
        match e {
            E::NotFound { what, id } => PageError::NotFound(format!("{what} `{id}`")),
            E::Invalid(e) => PageError::BadRequest(e.to_string()),
            E::Conflict(m) => PageError::BadRequest(m),
            e => PageError::Internal(e.to_string()),
        }
    }
}

impl From<crate::store::StoreError> for PageError {
    fn from(e: crate::store::StoreError) -> Self {
        crate::engine::EngineError::from(e).into()
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, title, detail) = match self {
            PageError::NotFound(what) => (
                StatusCode::NOT_FOUND,
                "Not found",
                format!("{what} does not exist (or no longer does)."),
            ),
            PageError::BadRequest(m) => (StatusCode::BAD_REQUEST, "Not done", m),
            PageError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "Log in first",
                "This needs a dashboard login.".into(),
            ),
            PageError::Forbidden(m) => (StatusCode::FORBIDDEN, "Refused", m),
            PageError::Internal(m) => {
                tracing::error!(error = %m, "dashboard: page failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something failed",
                    "cnp could not build this page; its log says why.".to_owned(),
                )
            }
        };
        let html = TEMPLATES
            .get_template("error.html")
            .and_then(|t| {
                t.render(context! { title, detail, status => status.as_u16(),
                page => context! { assets => assets::urls() } })
            })
            .unwrap_or_else(|_| format!("{title}: {detail}"));
        (status, Html(html)).into_response()
    }
}

/// The templates, compiled once (auto-escaping for every `.html` name).
static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    macro_rules! add {
        ($($name:literal),*) => {$(
            env.add_template($name, include_str!(concat!("templates/", $name)))
                .expect(concat!("template ", $name));
        )*};
    }
    add!(
        "base.html",
        "error.html",
        "login.html",
        "jobs.html",
        "job.html",
        "job_form.html",
        "confirm.html",
        "run.html",
        "plugins.html",
        "stats.html",
        "prompts.html",
        "prompt_form.html",
        "workflows.html",
        "workflow.html",
        "api.html"
    );
    env
});

/// What every page's frame shows: who is logged in (the CSRF token for its forms), the
/// cooldown banner, the navigation.
pub(super) fn frame(st: &ApiState, session: &Session, nav: &str) -> Value {
    let cooldown = st.engine().cooldown().map(|c| {
        context! {
            reason => c.reason,
            until => c.until.map(|t| t.to_rfc3339()),
            until_text => c.until.map(view::utc),
            next_probe => c.next_probe.map(|t| t.to_rfc3339()),
            deferred => c.deferred,
            source_job => c.source_job,
            source_execution => c.source_execution,
        }
    });
    context! {
        csrf => session.csrf.clone(),
        nav => nav,
        cooldown => cooldown,
        assets => assets::urls(),
        version => env!("CARGO_PKG_VERSION"),
        now => chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    }
}

/// Renders a page template with `page` (the frame) and the page's own values.
pub(super) fn render(name: &str, page: Value, ctx: Value) -> Result<Response, PageError> {
    let t = TEMPLATES
        .get_template(name)
        .map_err(|e| PageError::Internal(e.to_string()))?;
    let html = t
        .render(context! { page => page, ..ctx })
        .map_err(|e| PageError::Internal(format!("{name}: {e:#}")))?;
    Ok(Html(html).into_response())
}

/// After a form: back to a page (POST-redirect-GET), with a one-line notice in its query.
pub(super) fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}
