//! `POST /api/hooks/{job}`: a signed request from a CI system or a Git host runs the job
//! (docs/operations.md#webhooks). No bearer token: the request is authenticated by its
//! HMAC-SHA256 signature with the job's own secret, compared in constant time; a delivery is
//! accepted once. The JSON payload is the prompt's `{{ payload }}`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use utoipa::ToSchema;

use super::{ApiError, ApiState};
use crate::model::{WebhookConfig, WebhookSignature};

/// How far a generic request's `X-Timestamp` may be from cnp's clock.
pub const REPLAY_WINDOW: Duration = Duration::from_secs(300);
/// Default `max_payload_bytes`.
pub const DEFAULT_MAX_PAYLOAD: u64 = 1 << 20;
/// The route's own body limit (a hook's `max_payload_bytes` is at most this).
pub const ROUTE_BODY_LIMIT: usize = 16 << 20;
/// How long a delivery id is remembered (longer than the replay window).
const DELIVERIES_KEPT: Duration = Duration::from_secs(3600);

/// Deliveries seen, and refusals counted (`/metrics`: `cnp_webhook_requests_total`).
#[derive(Default)]
pub struct Webhooks {
    seen: Mutex<HashMap<String, Instant>>,
    pub accepted: AtomicU64,
    pub refused: AtomicU64,
}

impl Webhooks {
    /// Whether `delivery` is new (and remembers it).
    fn first_time(&self, delivery: String) -> bool {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap();
        if seen.len() > 10_000 {
            seen.retain(|_, at| now.duration_since(*at) < DELIVERIES_KEPT);
        }
        match seen.get(&delivery) {
            Some(at) if now.duration_since(*at) < DELIVERIES_KEPT => false,
            _ => {
                seen.insert(delivery, now);
                true
            }
        }
    }
}

/// The answer to an accepted delivery.
#[derive(Debug, Serialize, ToSchema)]
pub struct HookAccepted {
    pub execution_id: String,
    /// Where to follow it: `GET` this path (with a token).
    pub execution_url: String,
}

#[utoipa::path(post, path = "/api/hooks/{job}", operation_id = "receiveWebhook", tag = "jobs", security(()),
    params(("job" = String, Path, description = "Job name or id; the job must have a `webhook`")),
    request_body(content = Object, description = "The JSON payload, signed (see docs/operations.md#webhooks)"),
    responses(
        (status = 202, description = "Run recorded", body = HookAccepted),
        (status = 400, description = "The body is not JSON, or the prompt cannot be rendered with it", body = super::ErrorBody),
        (status = 401, description = "Missing or wrong signature, or a timestamp outside 5 minutes", body = super::ErrorBody),
        (status = 404, description = "No such job, or it has no webhook", body = super::ErrorBody),
        (status = 409, description = "This delivery was accepted before", body = super::ErrorBody),
        (status = 413, description = "Larger than the hook's max_payload_bytes", body = super::ErrorBody),
    ))]
pub async fn receive(
    State(st): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<HookAccepted>), ApiError> {
    let hooks = st.webhooks();
    let refuse = |status: StatusCode, code: &'static str, message: String| {
        hooks.refused.fetch_add(1, Ordering::Relaxed);
        ApiError {
            status,
            code,
            message,
            field: None,
        }
    };
    let not_found = || {
        refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no job `{name}` with a webhook"),
        )
    };
    let job = st.engine().job(&name).await.map_err(|_| not_found())?;
    let Some(hook) = job.execution_options.webhook.clone() else {
        return Err(not_found());
    };
    let limit = hook.max_payload_bytes.unwrap_or(DEFAULT_MAX_PAYLOAD);
    if body.len() as u64 > limit {
        return Err(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the payload is {} bytes; this hook takes at most {limit}",
                body.len()
            ),
        ));
    }
    let secret = secret_of(&hook).map_err(|m| {
        tracing::error!(job = %job.name, "webhook refused: {m}");
        refuse(StatusCode::SERVICE_UNAVAILABLE, "webhook_unconfigured", m)
    })?;
    let delivery = verify(
        &hook,
        &secret,
        &headers,
        &body,
        chrono::Utc::now().timestamp(),
    )
    .map_err(|m| {
        tracing::warn!(job = %job.name, "webhook request refused: {m}");
        refuse(StatusCode::UNAUTHORIZED, "bad_signature", m)
    })?;
    let payload: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            "invalid_payload",
            format!("the payload is not JSON: {e}"),
        )
    })?;
    let template = match (&job.prompt, &job.prompt_id) {
        (Some(p), _) => p.clone(),
        (None, Some(id)) => st
            .engine()
            .store()
            .get_prompt(id.clone())
            .await
            .ok()
            .flatten()
            .map(|p| p.content)
            .ok_or_else(not_found)?,
        (None, None) => return Err(not_found()),
    };
    let prompt = crate::workflow::render_payload_prompt(&template, &payload)
        .map_err(|m| refuse(StatusCode::BAD_REQUEST, "prompt_render", m))?;
    // Once per delivery: checked after the signature, so only a signed delivery is remembered.
    if !hooks.first_time(format!("{}:{delivery}", job.id)) {
        return Err(refuse(
            StatusCode::CONFLICT,
            "replayed",
            format!("delivery `{delivery}` was accepted before"),
        ));
    }
    let execution_id = st.engine().run_webhook(&job.id, prompt).await?;
    hooks.accepted.fetch_add(1, Ordering::Relaxed);
    tracing::info!(job = %job.name, execution = %execution_id, delivery = %delivery, "webhook: run recorded");
    Ok((
        StatusCode::ACCEPTED,
        Json(HookAccepted {
            execution_url: format!("/api/executions/{execution_id}"),
            execution_id,
        }),
    ))
}

/// The hook's secret from the environment (`${VAR}`).
fn secret_of(hook: &WebhookConfig) -> Result<String, String> {
    let s = hook.secret.trim();
    let var = s
        .strip_prefix("${")
        .and_then(|v| v.strip_suffix('}'))
        .ok_or("the webhook's secret is not a `${VAR}` reference")?;
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Ok(v),
        _ => Err(format!(
            "the webhook's secret variable `{var}` is not set in cnp's environment"
        )),
    }
}

/// Checks the request's signature (and for `generic`, its timestamp). Returns the delivery's id:
/// the sender's (`X-GitHub-Delivery`, `X-Delivery-Id`), else the signature itself.
pub fn verify(
    hook: &WebhookConfig,
    secret: &str,
    headers: &HeaderMap,
    body: &[u8],
    now_unix: i64,
) -> Result<String, String> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let (signature_header, signed, delivery) = match hook.signature {
        WebhookSignature::Github => (
            "X-Hub-Signature-256",
            body.to_vec(),
            header("X-GitHub-Delivery"),
        ),
        WebhookSignature::Generic => {
            let ts = header("X-Timestamp").ok_or("no X-Timestamp header")?;
            let t: i64 = ts.parse().map_err(|_| "X-Timestamp is not unix seconds")?;
            if (now_unix - t).unsigned_abs() > REPLAY_WINDOW.as_secs() {
                return Err(format!(
                    "X-Timestamp is {} s away from cnp's clock (at most {} s)",
                    now_unix - t,
                    REPLAY_WINDOW.as_secs()
                ));
            }
            let mut signed = format!("{ts}.").into_bytes();
            signed.extend_from_slice(body);
            ("X-Signature", signed, header("X-Delivery-Id"))
        }
    };
    let given = header(signature_header).ok_or(format!("no {signature_header} header"))?;
    let hex_sig = given
        .strip_prefix("sha256=")
        .ok_or(format!("{signature_header} is not `sha256=<hex>`"))?;
    let given_bytes = hex::decode(hex_sig).map_err(|_| format!("{signature_header} is not hex"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(&signed);
    // Constant time.
    mac.verify_slice(&given_bytes)
        .map_err(|_| format!("{signature_header} does not match the payload"))?;
    Ok(delivery
        .filter(|d| !d.is_empty())
        .map(str::to_owned)
        .unwrap_or_else(|| hex_sig.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, data: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(data);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    fn hook(signature: WebhookSignature) -> WebhookConfig {
        WebhookConfig {
            secret: "${S}".into(),
            signature,
            max_payload_bytes: None,
        }
    }

    #[test]
    fn github_signatures_are_checked_over_the_body() {
        let body = br#"{"a":1}"#;
        let mut h = HeaderMap::new();
        h.insert("X-Hub-Signature-256", sign("k", body).parse().unwrap());
        h.insert("X-GitHub-Delivery", "d-1".parse().unwrap());
        let g = hook(WebhookSignature::Github);
        assert_eq!(verify(&g, "k", &h, body, 0).unwrap(), "d-1");
        assert!(verify(&g, "other", &h, body, 0)
            .unwrap_err()
            .contains("does not match"));
        assert!(verify(&g, "k", &h, b"{\"a\":2}", 0).is_err());
        h.remove("X-Hub-Signature-256");
        assert!(verify(&g, "k", &h, body, 0)
            .unwrap_err()
            .contains("no X-Hub-Signature-256"));
    }

    #[test]
    fn generic_signatures_cover_the_timestamp_within_five_minutes() {
        let body = br#"{"b":2}"#;
        let now = 1_800_000_000;
        let mut h = HeaderMap::new();
        h.insert("X-Timestamp", now.to_string().parse().unwrap());
        let signed = format!("{now}.{}", std::str::from_utf8(body).unwrap());
        h.insert("X-Signature", sign("k", signed.as_bytes()).parse().unwrap());
        let g = hook(WebhookSignature::Generic);
        // No delivery id: the signature stands for the delivery.
        assert!(verify(&g, "k", &h, body, now + 299).unwrap().len() == 64);
        assert!(verify(&g, "k", &h, body, now + 301)
            .unwrap_err()
            .contains("away"));
        assert!(verify(&g, "k", &h, body, now - 301).is_err());
        // The body signed without its timestamp does not pass.
        h.insert("X-Signature", sign("k", body).parse().unwrap());
        assert!(verify(&g, "k", &h, body, now).is_err());
    }

    #[test]
    fn a_delivery_is_accepted_once() {
        let w = Webhooks::default();
        assert!(w.first_time("j:d".into()));
        assert!(!w.first_time("j:d".into()));
        assert!(w.first_time("j:e".into()));
    }
}
