//! Notifier: POSTs each event to a webhook, shaped for Slack (`{"text": ...}`), Discord
//! (`{"content": ...}`), ntfy (plain-text body with a `Title` header) or as the full event in
//! JSON. The receipt is the HTTP status (`"HTTP 200"`); a non-2xx answer or a connection error
//! is reported as unavailable, so cnp records the failed delivery.
//!
//! The webhook's host must be granted in the plugin's sidecar file
//! (`[grants] allowed_hosts = ["hooks.slack.com"]`).

use cnp_plugin_sdk::http::{self, Url};
use cnp_plugin_sdk::serde_json::{self, json};
use cnp_plugin_sdk::{Event, EventKind, Notifier, PluginError};
use serde::Deserialize;
use std::collections::BTreeMap;

/// How many characters of an error response's body go into the error message.
const ERROR_BODY_CHARS: usize = 200;

/// The plugin's configuration; `url` is required.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    /// Where to POST (`http://` or `https://`).
    url: String,
    /// The body's shape.
    format: Format,
    /// Extra request headers (an `Authorization` token, say).
    headers: BTreeMap<String, String>,
}

/// The body's shape.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Format {
    /// `{"text": "<summary>"}`.
    Slack,
    /// `{"content": "<summary>"}`.
    Discord,
    /// The summary as plain text, with `Title` (and, for failures, `Priority`/`Tags`) headers.
    Ntfy,
    /// The whole event: `{"kind", "summary", "at", "job", "execution"}`.
    #[default]
    Json,
}

struct WebhookNotifier;

impl Notifier for WebhookNotifier {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), PluginError> {
        if config.url.trim().is_empty() {
            return Err(PluginError::invalid_config("`url` is required"));
        }
        Url::parse(&config.url).map_err(|e| PluginError::invalid_config(format!("`url`: {e}")))?;
        for name in config.headers.keys() {
            if name.eq_ignore_ascii_case("host") || name.eq_ignore_ascii_case("content-length") {
                return Err(PluginError::invalid_config(format!(
                    "header `{name}` is set by cnp, not the plugin"
                )));
            }
        }
        Ok(())
    }

    fn deliver(config: Config, event: Event) -> Result<String, PluginError> {
        Self::validate(&config)?;
        let (content_type, body, format_headers) = render(config.format, &event);
        let configured = |name: &str| config.headers.keys().any(|k| k.eq_ignore_ascii_case(name));
        let mut headers: Vec<(&str, &str)> = vec![];
        if !configured("content-type") {
            headers.push(("content-type", content_type));
        }
        headers.extend(
            format_headers
                .iter()
                .filter(|(k, _)| !configured(k))
                .map(|(k, v)| (*k, v.as_str())),
        );
        headers.extend(config.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));

        let response = http::post(&config.url, &headers, &body)?;
        let receipt = format!("HTTP {}", response.status);
        if response.is_success() {
            return Ok(receipt);
        }
        let host = Url::parse(&config.url)
            .map(|u| u.authority().to_owned())
            .unwrap_or_default();
        let detail: String = response.text().chars().take(ERROR_BODY_CHARS).collect();
        Err(PluginError::unavailable(format!(
            "{receipt} from {host}: {}",
            detail.trim()
        )))
    }
}

cnp_plugin_sdk::register_plugin!(WebhookNotifier);

/// The content type, body and format-specific headers for `event`.
fn render(format: Format, event: &Event) -> (&'static str, Vec<u8>, Vec<(&'static str, String)>) {
    let text = text(event);
    match format {
        Format::Slack => ("application/json", to_vec(&json!({ "text": text })), vec![]),
        Format::Discord => (
            "application/json",
            to_vec(&json!({ "content": text })),
            vec![],
        ),
        Format::Json => (
            "application/json",
            serde_json::to_vec(event).expect("events serialize"),
            vec![],
        ),
        Format::Ntfy => {
            let title = match &event.job {
                Some(job) => format!(
                    "cnp: {} {}",
                    job.name,
                    event.kind.as_str().replace('_', " ")
                ),
                None => format!("cnp: {}", event.kind.as_str().replace('_', " ")),
            };
            let mut headers = vec![("title", title)];
            if is_bad_news(event.kind) {
                headers.push(("priority", "high".to_owned()));
                headers.push(("tags", "warning".to_owned()));
            }
            ("text/plain; charset=utf-8", text.into_bytes(), headers)
        }
    }
}

/// The message text: the host's summary, or the kind and job when it wrote none.
fn text(event: &Event) -> String {
    if !event.summary.trim().is_empty() {
        return event.summary.clone();
    }
    match &event.job {
        Some(job) => format!("{}: {}", job.name, event.kind),
        None => event.kind.to_string(),
    }
}

fn is_bad_news(kind: EventKind) -> bool {
    matches!(
        kind,
        EventKind::RunFailed | EventKind::PluginFailure | EventKind::CooldownEntered
    )
}

fn to_vec(value: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("a JSON value always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnp_plugin_sdk::JobInfo;

    fn event() -> Event {
        Event {
            kind: EventKind::RunFailed,
            summary: "nightly failed after 3 attempts".into(),
            at: 1_700_000_000_000,
            job: Some(JobInfo {
                id: "j1".into(),
                name: "nightly".into(),
                tags: vec![],
                priority: 5,
                timezone: "UTC".into(),
            }),
            execution: None,
        }
    }

    fn json_body(format: Format) -> serde_json::Value {
        serde_json::from_slice(&render(format, &event()).1).unwrap()
    }

    #[test]
    fn each_format_shapes_the_body() {
        assert_eq!(
            json_body(Format::Slack),
            json!({"text": "nightly failed after 3 attempts"})
        );
        assert_eq!(
            json_body(Format::Discord),
            json!({"content": "nightly failed after 3 attempts"})
        );
        let full = json_body(Format::Json);
        assert_eq!(full["kind"], "run_failed");
        assert_eq!(full["job"]["name"], "nightly");
        assert_eq!(full["at"], 1_700_000_000_000i64);

        let (content_type, body, headers) = render(Format::Ntfy, &event());
        assert!(content_type.starts_with("text/plain"));
        assert_eq!(body, b"nightly failed after 3 attempts");
        assert!(headers.contains(&("title", "cnp: nightly run failed".to_owned())));
    }

    #[test]
    fn validation_wants_an_http_url_and_no_reserved_headers() {
        let ok = Config {
            url: "https://hooks.slack.com/services/x".into(),
            ..Config::default()
        };
        assert!(WebhookNotifier::validate(&ok).is_ok());
        assert!(WebhookNotifier::validate(&Config::default()).is_err());
        let ftp = Config {
            url: "ftp://example.com/".into(),
            ..Config::default()
        };
        assert!(WebhookNotifier::validate(&ftp).is_err());
        let mut host = Config {
            url: "https://a.example/".into(),
            ..Config::default()
        };
        host.headers.insert("Host".into(), "b.example".into());
        assert!(WebhookNotifier::validate(&host).is_err());
    }
}
