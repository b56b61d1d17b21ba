//! `type: webhook`: an HTTP POST of a JSON body, with a timeout per attempt and a few retries
//! (with backoff) on 5xx/429 answers, timeouts and connection failures. Errors never show the
//! URL (its path often is the secret).

use std::time::Duration;

use super::{error_chain, Outcome};
use crate::notify::config::WebhookChannel;

/// First backoff; doubles per attempt.
const BACKOFF: Duration = Duration::from_millis(500);

pub async fn deliver(client: &reqwest::Client, ch: &WebhookChannel, body: Vec<u8>) -> Outcome {
    let attempts = ch.retries.saturating_add(1);
    let mut last = String::new();
    for attempt in 1..=attempts {
        if attempt > 1 {
            tokio::time::sleep(BACKOFF * 2u32.saturating_pow(attempt - 2)).await;
        }
        let mut req = client
            .post(&ch.url)
            .timeout(ch.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone());
        for (k, v) in &ch.headers {
            req = req.header(k, v);
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status();
                if status.is_success() {
                    return Outcome::ok(format!("HTTP {}", status.as_u16()), attempt);
                }
                let text = resp.text().await.unwrap_or_default();
                let text: String = text.trim().chars().take(200).collect();
                last = if text.is_empty() {
                    format!("HTTP {status}")
                } else {
                    format!("HTTP {status}: {text}")
                };
                let retryable =
                    status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
                if !retryable {
                    return Outcome::failed(last, attempt);
                }
            }
            Err(e) if e.is_timeout() => {
                last = format!(
                    "no answer within {}",
                    humantime::format_duration(ch.timeout)
                );
            }
            Err(e) => {
                last = error_chain(&e.without_url());
            }
        }
        tracing::debug!(target: "cnp::notify", attempt, attempts, error = %last, "webhook attempt failed");
    }
    Outcome::failed(
        if attempts > 1 {
            format!("{last} (after {attempts} attempts)")
        } else {
            last
        },
        attempts,
    )
}
