//! The bearer token: made on first start (32 random bytes, base64url) into a mode-0600 file the
//! CLI reads, checked in constant time on every request except liveness.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;
use axum::extract::{Query, Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use rand::RngCore;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::{session, ApiState, HEALTH_PATH, WS_PATH};

/// The API token. Its `Debug` never shows it.
#[derive(Clone)]
pub struct ApiToken(String);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

impl ApiToken {
    pub fn new(token: impl Into<String>) -> Self {
        ApiToken(token.into())
    }

    /// A fresh random token.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        ApiToken(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Whether `presented` is the token, in time that does not depend on where they differ.
    pub fn matches(&self, presented: &str) -> bool {
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }

    /// The token itself (for writing the file, and for in-process clients).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Reads the token file, or creates it (mode 0600, parent folders as needed) with a new
    /// token. A file readable by others is tightened to 0600.
    pub fn load_or_create(path: &Path) -> anyhow::Result<ApiToken> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let token = text.trim();
                anyhow::ensure!(
                    token.len() >= 16,
                    "the API token file {} holds no usable token (delete it to make a new one)",
                    path.display()
                );
                let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    tracing::warn!(file = %path.display(), mode = format!("{mode:o}"), "the API token file was readable by others: set to 0600");
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
                }
                Ok(ApiToken(token.to_owned()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                }
                let token = ApiToken::generate();
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .with_context(|| format!("creating {}", path.display()))?;
                writeln!(f, "{}", token.0)?;
                f.sync_all()?;
                tracing::info!(file = %path.display(), "created a new API token");
                Ok(token)
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
}

/// Middleware: every route but liveness needs `Authorization: Bearer <token>`; the WebSocket
/// route also takes `?token=` (browsers cannot set headers on a WebSocket). A dashboard session
/// cookie works too (with its CSRF token on anything but a read); dashboard pages check their
/// own login.
pub async fn require_token(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path == HEALTH_PATH
        || path.starts_with(super::HOOKS_PREFIX)
        || super::dashboard::is_dashboard_path(path)
    {
        return next.run(req).await;
    }
    let header_token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_owned());
    let token = header_token.or_else(|| {
        (path == WS_PATH)
            .then(|| {
                Query::<std::collections::HashMap<String, String>>::try_from_uri(req.uri())
                    .ok()
                    .and_then(|q| q.0.get("token").cloned())
            })
            .flatten()
    });
    match token {
        Some(t) if state.token().matches(&t) => next.run(req).await,
        Some(_) => ApiError::unauthorized().into_response(),
        None => {
            let Some(s) = session::from_headers(&state, req.headers()).await else {
                return ApiError::unauthorized().into_response();
            };
            let read = matches!(*req.method(), Method::GET | Method::HEAD);
            let csrf_ok = req
                .headers()
                .get(session::CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| s.csrf_matches(t));
            if !session::same_origin(req.headers()) || !(read || csrf_ok) {
                return ApiError::forbidden(
                    "a dashboard session needs a same-origin request with its X-CSRF-Token",
                )
                .into_response();
            }
            next.run(req).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/api-token");
        let t1 = ApiToken::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(t1.expose().len(), 43, "32 bytes base64url without padding");
        let t2 = ApiToken::load_or_create(&path).unwrap();
        assert!(t2.matches(t1.expose()));
        assert!(!t2.matches("nope"));
        assert!(!format!("{t2:?}").contains(t1.expose()));
    }
}
