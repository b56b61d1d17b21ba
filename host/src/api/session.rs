//! Dashboard login sessions: the second credential the server accepts besides the bearer token.
//!
//! Logging in (with the API token or the configured dashboard password) creates a session: 32
//! random bytes in an `HttpOnly; SameSite=Strict` cookie; the database keeps only their SHA-256
//! (a copy of the database logs no one in) with a per-session CSRF token and an expiry. Sessions
//! survive a restart of cnp and end at logout, at expiry, or when the table is emptied.
//!
//! A cookie-authenticated request that changes state must also prove it comes from a dashboard
//! page: a form field `csrf` (pages) or an `X-CSRF-Token` header (the pages' scripts calling
//! `/api/…`), equal to the session's token; and its `Origin`, when the browser sends one, must
//! be this server.

use axum::http::{header, HeaderMap, HeaderValue};
use base64::Engine as _;
use chrono::Utc;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::ApiState;
use crate::store::DashboardSession;

/// The session cookie's name.
pub const COOKIE: &str = "cnp_session";
/// The header a page's script sends the CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// A logged-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    id_hash: String,
    pub csrf: String,
}

impl Session {
    /// Whether `presented` is this session's CSRF token (constant time).
    pub fn csrf_matches(&self, presented: &str) -> bool {
        self.csrf.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn hash(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

/// The session cookie's value in a request, if any.
fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim().to_owned())
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

/// The live session a request's cookie names.
pub async fn from_headers(state: &ApiState, headers: &HeaderMap) -> Option<Session> {
    let id = cookie_value(headers)?;
    let id_hash = hash(&id);
    let stored = state
        .engine()
        .store()
        .dashboard_session(id_hash.clone(), Utc::now())
        .await
        .ok()??;
    Some(Session {
        id_hash,
        csrf: stored.csrf,
    })
}

/// Starts a session; returns it with the `Set-Cookie` value that hands it to the browser.
pub async fn create(state: &ApiState, secure: bool) -> anyhow::Result<(Session, HeaderValue)> {
    let id = random_token();
    let now = Utc::now();
    let ttl = state.dashboard().session_ttl;
    let session = DashboardSession {
        csrf: random_token(),
        created_at: now,
        expires_at: now + chrono::Duration::from_std(ttl)?,
    };
    let id_hash = hash(&id);
    let store = state.engine().store();
    store
        .create_dashboard_session(id_hash.clone(), session.clone())
        .await?;
    // Expired sessions go whenever a new one comes (a handful of rows at most).
    let _ = store.prune_dashboard_sessions(now).await;
    let cookie = format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        ttl.as_secs(),
        if secure { "; Secure" } else { "" }
    );
    Ok((
        Session {
            id_hash,
            csrf: session.csrf,
        },
        HeaderValue::from_str(&cookie)?,
    ))
}

/// Ends a session; returns the `Set-Cookie` value that removes the cookie.
pub async fn end(state: &ApiState, session: &Session) -> HeaderValue {
    let _ = state
        .engine()
        .store()
        .delete_dashboard_session(session.id_hash.clone())
        .await;
    clear_cookie()
}

pub fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("cnp_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Whether a request's `Origin` (when present) is this server: the browser says where the
/// page that sent it came from; a page of another site is refused.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    origin_host == Some(host)
}

/// Whether the request reached cnp over HTTPS (through a proxy that says so): the cookie is
/// then marked `Secure`.
pub fn is_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; cnp_session=abc; b=2")]);
        assert_eq!(cookie_value(&h).as_deref(), Some("abc"));
        assert_eq!(
            cookie_value(&headers(&[("cookie", "cnp_sessionx=1")])),
            None
        );
        assert_eq!(cookie_value(&headers(&[("cookie", "cnp_session=")])), None);
    }

    #[test]
    fn origin_must_be_this_host() {
        assert!(same_origin(&headers(&[("host", "127.0.0.1:8377")])));
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:8377"),
            ("origin", "http://127.0.0.1:8377")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8377"),
            ("origin", "http://evil.example")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:8377"),
            ("origin", "null")
        ])));
    }
}
