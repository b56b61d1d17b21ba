//! Executor: runs a job's prompt as one call to Anthropic's Messages API
//! (`POST {base_url}/v1/messages`) instead of the Claude CLI, and classifies the answer the way
//! cnp classifies CLI runs: 200 → success (text, usage, cost), 429 → usage limit (reset from
//! `retry-after` or the `anthropic-ratelimit-*-reset` headers), 401/403 → auth error,
//! 5xx/529/network → failure (retried), other 4xx → fatal.
//!
//! The sidecar must grant the API's host (`[grants] allowed_hosts = ["api.anthropic.com"]`).

use cnp_plugin_sdk::http::{HttpError, Request, Response};
use cnp_plugin_sdk::serde_json::{json, Value};
use cnp_plugin_sdk::{
    clock, output, Executor, PluginError, RunRequest, RunResult, Timestamp, TokenPrices, TokenUsage,
};
use serde::Deserialize;

/// The model when neither the configuration nor the job's `execution.model` names one.
const DEFAULT_MODEL: &str = "claude-sonnet-4-5";
/// The most bytes of a response read (cnp's `max_response_bytes` may cut sooner).
const MAX_RESPONSE_BYTES: usize = 8 << 20;
/// The reset headers of a 429, any of which may say when the limit ends.
const RESET_HEADERS: [&str; 4] = [
    "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-tokens-reset",
    "anthropic-ratelimit-input-tokens-reset",
    "anthropic-ratelimit-output-tokens-reset",
];

/// The plugin's configuration; `api_key` is required.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    /// The API's origin.
    base_url: String,
    /// The API key (a job writes `"${ANTHROPIC_API_KEY}"`; cnp fills it in).
    api_key: String,
    /// The model; else the job's `execution.model`, else [`DEFAULT_MODEL`].
    model: Option<String>,
    /// The answer's token limit.
    max_tokens: u32,
    /// The `anthropic-version` header.
    anthropic_version: String,
    /// The system prompt; else the job's `execution.append_system_prompt`.
    system: Option<String>,
    /// USD per million tokens; else the defaults for the model's family (see [`default_prices`]).
    prices: Option<TokenPrices>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            base_url: "https://api.anthropic.com".into(),
            api_key: String::new(),
            model: None,
            max_tokens: 4096,
            anthropic_version: "2023-06-01".into(),
            system: None,
            prices: None,
        }
    }
}

struct AnthropicMessages;

impl Executor for AnthropicMessages {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), PluginError> {
        let key = config.api_key.trim();
        if key.is_empty() || key.contains("${") {
            return Err(PluginError::invalid_config(
                "`api_key` is empty or an unset variable: set it to \"${ANTHROPIC_API_KEY}\" and give cnp that variable",
            ));
        }
        if config.max_tokens == 0 {
            return Err(PluginError::invalid_config(
                "`max_tokens` must be at least 1",
            ));
        }
        cnp_plugin_sdk::http::Url::parse(&config.base_url)
            .map_err(|e| PluginError::invalid_config(format!("`base_url`: {e}")))?;
        Ok(())
    }

    fn run(config: Config, request: RunRequest) -> Result<RunResult, PluginError> {
        let model = config
            .model
            .as_deref()
            .or(request.option_str("model"))
            .unwrap_or(DEFAULT_MODEL);
        let mut body = json!({
            "model": model,
            "max_tokens": config.max_tokens,
            "messages": [{"role": "user", "content": request.prompt}],
        });
        if let Some(system) = config
            .system
            .as_deref()
            .or(request.option_str("append_system_prompt"))
        {
            body["system"] = json!(system);
        }
        if request.resume_session.is_some() {
            output::stderr(
                "anthropic-messages: the Messages API has no sessions; starting a new conversation",
            );
        }
        let url = format!("{}/v1/messages", config.base_url.trim_end_matches('/'));
        let sent = Request::post(url)
            .header("x-api-key", config.api_key.trim())
            .header("anthropic-version", config.anthropic_version.as_str())
            .json(&body)
            .timeout(request.remaining())
            .max_response_bytes(MAX_RESPONSE_BYTES)
            .send();
        let response = match sent {
            Ok(response) => response,
            Err(HttpError::TimedOut { .. }) => return Ok(RunResult::timeout()),
            Err(e @ HttpError::Denied { .. }) => {
                return Ok(RunResult::fatal(format!("{e}: grant it in the sidecar")))
            }
            Err(e @ HttpError::Failed { .. }) => return Ok(RunResult::failure(e.to_string())),
            Err(e) => return Err(e.into()), // a bad URL or header: configuration
        };
        let prices = config.prices.or_else(|| default_prices(model));
        let (result, notes) = classify(&response, prices, clock::now());
        for note in notes {
            output::stderr(note);
        }
        if let (true, Some(text)) = (result.is_success(), &result.result_text) {
            output::stdout(text);
        }
        Ok(result)
    }
}

cnp_plugin_sdk::register_plugin!(AnthropicMessages);

/// The run's result for `response` (and diagnostics for the log), `now` being the host's clock.
fn classify(
    response: &Response,
    prices: Option<TokenPrices>,
    now: Timestamp,
) -> (RunResult, Vec<String>) {
    let status = response.status;
    let body: Value = response.json().unwrap_or(Value::Null);
    let result = match status {
        200..=299 if body.is_object() => {
            let text: String = body["content"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|block| block["type"] == "text")
                .filter_map(|block| block["text"].as_str())
                .collect();
            let mut notes = Vec::new();
            if body["stop_reason"] == "max_tokens" {
                notes.push(
                    "anthropic-messages: the answer stopped at max_tokens (it may be cut short)"
                        .to_owned(),
                );
            }
            let usage = TokenUsage::deserialize(&body["usage"]).ok();
            let mut result = RunResult::success(text).with_status(status);
            if let Some(usage) = usage {
                result = result
                    .with_usage(usage)
                    .with_cost_opt(prices.map(|p| p.cost(&usage)));
            }
            return (result, notes);
        }
        200..=299 => {
            let why = if response.truncated {
                "cut at the response size limit"
            } else {
                "not JSON"
            };
            RunResult::failure(format!("HTTP {status}: the answer was {why}"))
        }
        429 => RunResult::usage_limit(
            error_message(status, &body, response),
            resets_at(response, now),
        ),
        401 | 403 => RunResult::auth_error(error_message(status, &body, response)),
        408 | 500..=599 => RunResult::failure(error_message(status, &body, response)),
        400..=499 => RunResult::fatal(error_message(status, &body, response)),
        _ => RunResult::failure(error_message(status, &body, response)),
    };
    (result.with_status(status), Vec::new())
}

/// `HTTP 400 invalid_request_error: <message>` from the API's error body (or the body's start).
fn error_message(status: u16, body: &Value, response: &Response) -> String {
    match (
        body["error"]["type"].as_str(),
        body["error"]["message"].as_str(),
    ) {
        (Some(kind), Some(message)) => format!("HTTP {status} {kind}: {message}"),
        (None, Some(message)) => format!("HTTP {status}: {message}"),
        _ => format!(
            "HTTP {status}: {}",
            response.text().chars().take(200).collect::<String>().trim()
        ),
    }
}

/// When a rate limit resets: `retry-after` (seconds from now), else the latest reset header.
fn resets_at(response: &Response, now: Timestamp) -> Option<Timestamp> {
    let retry_after = response
        .header("retry-after")
        .and_then(|v| v.trim().parse::<f64>().ok());
    if let Some(seconds) = retry_after.filter(|s| s.is_finite() && *s >= 0.0) {
        return Some(now + (seconds * 1000.0).ceil() as i64);
    }
    RESET_HEADERS
        .iter()
        .filter_map(|h| response.header(h))
        .filter_map(clock::parse_rfc3339)
        .max()
}

/// List prices (USD per million tokens: input, output, cache write, cache read) by model
/// family; the first name part found in the model wins. Unknown models have no cost.
fn default_prices(model: &str) -> Option<TokenPrices> {
    const TABLE: [(&str, [f64; 4]); 6] = [
        ("opus-4-5", [5.0, 25.0, 6.25, 0.50]),
        ("opus", [15.0, 75.0, 18.75, 1.50]),
        ("sonnet", [3.0, 15.0, 3.75, 0.30]),
        ("haiku-4-5", [1.0, 5.0, 1.25, 0.10]),
        ("3-haiku", [0.25, 1.25, 0.30, 0.03]),
        ("haiku", [0.80, 4.0, 1.0, 0.08]),
    ];
    let model = model.to_ascii_lowercase();
    let (_, [input, output, cache_write, cache_read]) =
        TABLE.iter().find(|(part, _)| model.contains(part))?;
    Some(TokenPrices {
        input: *input,
        output: *output,
        cache_write: *cache_write,
        cache_read: *cache_read,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnp_plugin_sdk::Outcome;

    fn response(status: u16, headers: &[(&str, &str)], body: &str) -> Response {
        Response {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: body.as_bytes().to_vec(),
            truncated: false,
        }
    }

    const NOW: Timestamp = 1_700_000_000_000;

    #[test]
    fn a_200_is_success_with_text_usage_and_cost() {
        let body = r#"{"id":"msg_1","type":"message","content":[{"type":"text","text":"Hello\n"},{"type":"text","text":"world"}],
            "stop_reason":"end_turn","usage":{"input_tokens":1000,"output_tokens":100,"cache_creation_input_tokens":0,"cache_read_input_tokens":2000}}"#;
        let (r, notes) = classify(
            &response(200, &[], body),
            default_prices("claude-sonnet-4-5"),
            NOW,
        );
        assert_eq!(r.outcome, Outcome::Success);
        assert_eq!(r.result_text.as_deref(), Some("Hello\nworld"));
        assert_eq!(r.status_code, Some(200));
        assert_eq!(r.usage.unwrap().cache_read_input_tokens, 2000);
        assert!((r.cost_usd.unwrap() - (0.003 + 0.0015 + 0.0006)).abs() < 1e-12);
        assert!(notes.is_empty());

        let body = r#"{"content":[{"type":"text","text":"cut"}],"stop_reason":"max_tokens","usage":{"input_tokens":1,"output_tokens":1}}"#;
        let (r, notes) = classify(&response(200, &[], body), None, NOW);
        assert_eq!(
            (r.outcome, r.cost_usd, notes.len()),
            (Outcome::Success, None, 1)
        );
    }

    #[test]
    fn a_429_is_a_usage_limit_with_its_reset() {
        let err = r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of requests has exceeded your rate limit"}}"#;
        let (r, _) = classify(&response(429, &[("retry-after", "30")], err), None, NOW);
        let Outcome::UsageLimit { message, resets_at } = r.outcome else {
            panic!("{r:?}")
        };
        assert_eq!(
            message,
            "HTTP 429 rate_limit_error: Number of requests has exceeded your rate limit"
        );
        assert_eq!(resets_at, Some(NOW + 30_000));
        assert_eq!(r.status_code, Some(429));

        let headers = [
            ("anthropic-ratelimit-requests-reset", "2023-11-14T22:14:00Z"),
            ("anthropic-ratelimit-tokens-reset", "2023-11-14T22:15:00Z"),
        ];
        let (r, _) = classify(&response(429, &headers, err), None, NOW);
        assert!(
            matches!(
                r.outcome,
                Outcome::UsageLimit {
                    resets_at: Some(1_700_000_100_000),
                    ..
                }
            ),
            "{r:?}"
        );

        let (r, _) = classify(&response(429, &[], "too many"), None, NOW);
        assert_eq!(
            r.outcome,
            Outcome::UsageLimit {
                message: "HTTP 429: too many".into(),
                resets_at: None
            }
        );
    }

    #[test]
    fn other_statuses_are_classified() {
        let err =
            |kind: &str| format!(r#"{{"type":"error","error":{{"type":"{kind}","message":"m"}}}}"#);
        let outcome = |status, kind: &str| {
            classify(&response(status, &[], &err(kind)), None, NOW)
                .0
                .outcome
        };
        assert_eq!(
            outcome(401, "authentication_error"),
            Outcome::AuthError("HTTP 401 authentication_error: m".into())
        );
        assert!(matches!(
            outcome(403, "permission_error"),
            Outcome::AuthError(_)
        ));
        assert_eq!(
            outcome(400, "invalid_request_error"),
            Outcome::Fatal("HTTP 400 invalid_request_error: m".into())
        );
        assert!(matches!(outcome(404, "not_found_error"), Outcome::Fatal(_)));
        assert!(matches!(
            outcome(413, "request_too_large"),
            Outcome::Fatal(_)
        ));
        assert!(matches!(
            outcome(529, "overloaded_error"),
            Outcome::Failure(_)
        ));
        assert!(matches!(outcome(500, "api_error"), Outcome::Failure(_)));
        assert!(matches!(
            classify(&response(200, &[], "<html>"), None, NOW).0.outcome,
            Outcome::Failure(_)
        ));
    }

    #[test]
    fn prices_follow_the_model_family() {
        assert_eq!(default_prices("claude-opus-4-1").unwrap().output, 75.0);
        assert_eq!(
            default_prices("claude-opus-4-5-20251101").unwrap().output,
            25.0
        );
        assert_eq!(
            default_prices("claude-3-5-haiku-latest").unwrap().input,
            0.80
        );
        assert_eq!(default_prices("claude-haiku-4-5").unwrap().input, 1.0);
        assert_eq!(
            default_prices("Claude-Sonnet-4-5").unwrap().cache_read,
            0.30
        );
        assert_eq!(default_prices("gpt-4"), None);
    }

    #[test]
    fn the_key_must_be_filled_in() {
        let config = |key: &str| Config {
            api_key: key.into(),
            ..Config::default()
        };
        assert!(AnthropicMessages::validate(&config("sk-ant-123")).is_ok());
        for bad in ["", "  ", "${ANTHROPIC_API_KEY}"] {
            let e = AnthropicMessages::validate(&config(bad)).unwrap_err();
            assert!(
                matches!(&e, PluginError::InvalidConfig(m) if m.contains("api_key")),
                "{e}"
            );
        }
        let e =
            cnp_plugin_sdk::config::parse::<Config>(r#"{"api_key":"k","modle":"x"}"#).unwrap_err();
        assert!(e.message().contains("modle"), "{e}");
    }
}
