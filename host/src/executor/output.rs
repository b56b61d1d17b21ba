//! Understands the Claude Code CLI's output and decides how a run ended.
//!
//! The executor runs the CLI with `-p --output-format stream-json --verbose`: stdout is one JSON
//! object per line (`system`/`init`, `assistant`, `user`, `rate_limit_event`, …, and a final
//! `result`). [`StreamParser`] takes every stdout line in order, tolerates anything that is not
//! JSON (it keeps a short tail of such text for the fallbacks), and remembers what matters for
//! classification. [`classify`] then combines it with how the process ended ([`ExitSummary`]) and
//! the tail of stderr into an [`Outcome`].
//!
//! See `claude-cli.md` ("Detecting a usage limit") for the CLI behaviour this follows. In short:
//!
//! - Exit codes are only 0 and 1; `is_error` on the result is what says whether a run failed.
//! - A usage limit is recognised from, strongest first: a `rate_limit_event` with
//!   `status:"rejected"` *and* a `resetsAt`; `api_error_params.rate_limit_info.resetsAt` on the
//!   synthetic assistant error message; `api_error:"usage_limit_reached"` on the result; the text
//!   of the message ([`parse_usage_limit`]).
//! - Transient throttles are never usage limits: `Server is temporarily limiting requests (not your
//!   usage limit)`, 529 Overloaded, an API-key 429 (`Request rejected (429)`), or a
//!   `rate_limit_event` rejected without `resetsAt`. They end as [`Outcome::Error`] with subtype
//!   `rate_limit` (429 / throttle) or `overloaded` (529).
//!
//! Reset texts (`resets 7am (UTC)`, `resets Nov 26, 1:03pm (UTC)`, `resets Jan 23, 2027, 5:46am
//! (UTC)`, `resets Apr 23 at 4pm`, …) are resolved in the zone they name (chrono-tz). No zone, or
//! a zone name chrono-tz does not know, is taken as UTC (cnp runs the CLI with `TZ=UTC`). A time
//! without a date is the next occurrence of that wall time; a wall time at most
//! [`RECENT_PAST_GRACE_SECS`] in the past counts as today's (the limit has just reset). A date
//! without a year is this year's, or next year's if it is more than a day in the past. Since the
//! CLI cuts the seconds, 60 s are added to every resolved text time (not to exact timestamps).

use std::str::FromStr;

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde_json::{Map, Value};

use crate::model::Outcome;

/// Longest assistant/result text kept by the parser (bytes).
const MAX_TEXT_BYTES: usize = 64 * 1024;
/// How much non-JSON stdout the parser keeps (the last bytes).
const PLAIN_TAIL_BYTES: usize = 4 * 1024;
/// Longest message put into an [`Outcome`] (bytes).
const MAX_MESSAGE_BYTES: usize = 2 * 1024;
/// Seconds added to a reset time read from text: the CLI drops the seconds.
const TEXT_RESET_SLACK_SECS: i64 = 60;
/// A time-only reset text naming a wall time at most this far in the past is taken as today's
/// (the text was written moments before; the limit has just reset) rather than tomorrow's.
pub const RECENT_PAST_GRACE_SECS: i64 = 5 * 60;

/// The final `{"type":"result"}` event of a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CliResult {
    pub is_error: bool,
    /// `success`, `error_max_turns`, `error_during_execution`, `error_max_budget_usd`, … (note:
    /// API errors come with `is_error: true` *and* `subtype: "success"`).
    pub subtype: Option<String>,
    /// The `result` text, or the `errors` array joined with `"; "`.
    pub text: Option<String>,
    pub session_id: Option<String>,
    /// `total_cost_usd` (or the older `cost_usd`).
    pub cost_usd: Option<f64>,
    pub usage: Option<Value>,
    pub num_turns: Option<u32>,
    pub api_error_status: Option<u16>,
    /// e.g. `rate_limit_error`, `authentication_error`.
    pub api_error_type: Option<String>,
    /// From 2.1.330: e.g. `usage_limit_reached`, `connection_failed`.
    pub api_error: Option<String>,
    /// e.g. `completed`, `api_error`, `max_turns`.
    pub terminal_reason: Option<String>,
}

/// The CLI's synthetic assistant message that reports an API error
/// (`"model":"<synthetic>"`, `is_api_error_message: true`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApiErrorMessage {
    /// The message text (what the CLI also puts into the result).
    pub text: Option<String>,
    /// The top-level `error` field: `rate_limit`, `authentication_failed`, …
    pub error: Option<String>,
    pub api_error_status: Option<u16>,
    pub api_error_type: Option<String>,
    pub api_error: Option<String>,
    /// `api_error_params.rate_limit_info.resetsAt`.
    pub resets_at: Option<DateTime<Utc>>,
}

/// Reads the CLI's `stream-json` stdout line by line. Also understands a single `json` result
/// object, and the JSON array `--output-format json --verbose` prints.
#[derive(Debug, Clone, Default)]
pub struct StreamParser {
    session_id: Option<String>,
    model: Option<String>,
    cli_version: Option<String>,
    result: Option<CliResult>,
    /// `rate_limit_event` with `status: rejected` and a `resetsAt`.
    event_resets_at: Option<DateTime<Utc>>,
    /// A `rate_limit_event` said `rejected` without `resetsAt`: a plain server throttle.
    throttled: bool,
    api_error_message: Option<ApiErrorMessage>,
    last_assistant_text: Option<String>,
    api_retries: u32,
    last_retry_status: Option<u16>,
    json_events: u64,
    plain_lines: u64,
    plain_tail: String,
}

impl StreamParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one stdout line (without or with its line ending). Lines that are not JSON objects
    /// are kept only as a short tail ([`StreamParser::plain_tail`]).
    pub fn feed_line(&mut self, line: &str) {
        let t = line.trim();
        if t.is_empty() {
            return;
        }
        match t.as_bytes()[0] {
            b'{' => {
                if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(t) {
                    self.feed_event(&map);
                    return;
                }
            }
            b'[' => {
                if let Ok(Value::Array(items)) = serde_json::from_str::<Value>(t) {
                    if items.iter().all(Value::is_object) {
                        for item in &items {
                            if let Value::Object(map) = item {
                                self.feed_event(map);
                            }
                        }
                        return;
                    }
                }
            }
            _ => {}
        }
        self.push_plain(t);
    }

    /// Feeds one already-parsed event object.
    pub fn feed_event(&mut self, ev: &Map<String, Value>) {
        self.json_events += 1;
        if self.session_id.is_none() {
            if let Some(s) = str_field(ev, "session_id") {
                self.session_id = Some(s.to_owned());
            }
        }
        match str_field(ev, "type").unwrap_or("") {
            "system" => match str_field(ev, "subtype").unwrap_or("") {
                "init" => {
                    if let Some(s) = str_field(ev, "session_id") {
                        self.session_id = Some(s.to_owned());
                    }
                    self.model = str_field(ev, "model").map(str::to_owned);
                    self.cli_version = str_field(ev, "claude_code_version").map(str::to_owned);
                }
                "api_retry" => {
                    self.api_retries += 1;
                    self.last_retry_status = ev.get("error_status").and_then(as_u16);
                }
                _ => {}
            },
            "rate_limit_event" => {
                if let Some(Value::Object(info)) = ev.get("rate_limit_info") {
                    if str_field(info, "status") == Some("rejected") {
                        match info.get("resetsAt").and_then(as_epoch) {
                            Some(t) => self.event_resets_at = Some(t),
                            None => self.throttled = true,
                        }
                    }
                }
            }
            "assistant" => self.feed_assistant(ev),
            "result" => self.feed_result(ev),
            _ => {}
        }
    }

    fn feed_assistant(&mut self, ev: &Map<String, Value>) {
        let message = ev.get("message").and_then(Value::as_object);
        let text = message
            .and_then(|m| m.get("content"))
            .and_then(content_text);
        let synthetic = message.and_then(|m| str_field(m, "model")) == Some("<synthetic>");
        let flagged = ev.get("is_api_error_message").and_then(Value::as_bool) == Some(true);
        let error = str_field(ev, "error").map(str::to_owned);
        if synthetic || flagged || error.is_some() {
            let resets_at = ev
                .get("api_error_params")
                .and_then(|p| p.get("rate_limit_info"))
                .and_then(|i| i.get("resetsAt"))
                .and_then(as_epoch);
            self.api_error_message = Some(ApiErrorMessage {
                text: text.clone(),
                error,
                api_error_status: ev.get("api_error_status").and_then(as_u16),
                api_error_type: str_field(ev, "api_error_type").map(str::to_owned),
                api_error: str_field(ev, "api_error").map(str::to_owned),
                resets_at,
            });
        }
        if let Some(t) = text {
            self.last_assistant_text = Some(t);
        }
    }

    fn feed_result(&mut self, ev: &Map<String, Value>) {
        let text = match str_field(ev, "result") {
            Some(s) => Some(bounded(s, MAX_TEXT_BYTES)),
            None => match ev.get("errors") {
                Some(Value::Array(errs)) => {
                    let parts: Vec<String> = errs
                        .iter()
                        .map(|e| match e {
                            Value::String(s) => s.clone(),
                            Value::Object(o) => str_field(o, "message")
                                .map(str::to_owned)
                                .unwrap_or_else(|| e.to_string()),
                            other => other.to_string(),
                        })
                        .filter(|s| !s.is_empty())
                        .collect();
                    (!parts.is_empty()).then(|| bounded(&parts.join("; "), MAX_TEXT_BYTES))
                }
                Some(Value::String(s)) => Some(bounded(s, MAX_TEXT_BYTES)),
                _ => None,
            },
        };
        let session_id = str_field(ev, "session_id").map(str::to_owned);
        if let Some(s) = &session_id {
            self.session_id = Some(s.clone());
        }
        self.result = Some(CliResult {
            is_error: ev.get("is_error").and_then(Value::as_bool).unwrap_or(false),
            subtype: str_field(ev, "subtype").map(str::to_owned),
            text,
            session_id,
            cost_usd: ev
                .get("total_cost_usd")
                .or_else(|| ev.get("cost_usd"))
                .and_then(Value::as_f64),
            usage: usage_of(ev),
            num_turns: ev
                .get("num_turns")
                .and_then(Value::as_u64)
                .map(|n| n.min(u32::MAX as u64) as u32),
            api_error_status: ev.get("api_error_status").and_then(as_u16),
            api_error_type: str_field(ev, "api_error_type").map(str::to_owned),
            api_error: str_field(ev, "api_error").map(str::to_owned),
            terminal_reason: str_field(ev, "terminal_reason").map(str::to_owned),
        });
    }

    fn push_plain(&mut self, line: &str) {
        self.plain_lines += 1;
        if !self.plain_tail.is_empty() {
            self.plain_tail.push('\n');
        }
        if line.len() >= PLAIN_TAIL_BYTES {
            self.plain_tail = tail_str(line, PLAIN_TAIL_BYTES).to_owned();
        } else {
            self.plain_tail.push_str(line);
            if self.plain_tail.len() > 2 * PLAIN_TAIL_BYTES {
                self.plain_tail = tail_str(&self.plain_tail, PLAIN_TAIL_BYTES).to_owned();
            }
        }
    }

    /// The session id, from the result, else the init event (else any event that named one).
    pub fn session_id(&self) -> Option<&str> {
        self.session_id.as_deref()
    }

    /// The final `{"type":"result"}` event, once seen.
    pub fn result(&self) -> Option<&CliResult> {
        self.result.as_ref()
    }

    /// When a usage limit resets, from structured fields only: a `rate_limit_event` with
    /// `status:"rejected"` and `resetsAt`, else `api_error_params.rate_limit_info.resetsAt` on the
    /// synthetic assistant error message.
    pub fn rate_limit_resets_at(&self) -> Option<DateTime<Utc>> {
        self.event_resets_at
            .or_else(|| self.api_error_message.as_ref().and_then(|m| m.resets_at))
    }

    /// A `rate_limit_event` said `rejected` without `resetsAt` (a transient server throttle).
    pub fn throttled(&self) -> bool {
        self.throttled
    }

    /// The text of the last assistant message that had text (bounded).
    pub fn last_assistant_text(&self) -> Option<&str> {
        self.last_assistant_text.as_deref()
    }

    /// The last synthetic assistant message reporting an API error.
    pub fn api_error_message(&self) -> Option<&ApiErrorMessage> {
        self.api_error_message.as_ref()
    }

    /// The result text, else the last assistant text: what to keep as the run's output.
    pub fn result_text(&self) -> Option<&str> {
        self.result
            .as_ref()
            .and_then(|r| r.text.as_deref())
            .or(self.last_assistant_text.as_deref())
    }

    /// `model` from the init event.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// `claude_code_version` from the init event.
    pub fn cli_version(&self) -> Option<&str> {
        self.cli_version.as_deref()
    }

    /// How many `api_retry` events the CLI reported, and the HTTP status of the last one.
    pub fn api_retries(&self) -> (u32, Option<u16>) {
        (self.api_retries, self.last_retry_status)
    }

    /// How many JSON events were read.
    pub fn json_events(&self) -> u64 {
        self.json_events
    }

    /// How many non-empty lines were not JSON.
    pub fn plain_lines(&self) -> u64 {
        self.plain_lines
    }

    /// The last few KiB of stdout lines that were not JSON (text output, crash messages).
    pub fn plain_tail(&self) -> &str {
        &self.plain_tail
    }
}

/// How the process ended, as the process layer saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExitSummary {
    /// The exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// cnp killed it after the job's timeout.
    pub timed_out: bool,
    /// cnp stopped it on request (cancel or shutdown).
    pub cancelled: bool,
    /// cnp (or the kernel, via a cgroup) killed it for a resource limit, e.g.
    /// `"memory limit 512 MiB exceeded"`.
    pub limit_kill: Option<String>,
}

impl ExitSummary {
    /// A process that exited with `code`.
    pub fn exited(code: i32) -> Self {
        ExitSummary {
            code: Some(code),
            ..Default::default()
        }
    }

    /// A process killed by `signal`.
    pub fn signalled(signal: i32) -> Self {
        ExitSummary {
            signal: Some(signal),
            ..Default::default()
        }
    }

    /// "exited with code 1", "killed by signal 9 (SIGKILL)", …
    pub fn describe(&self) -> String {
        match (self.code, self.signal) {
            (_, Some(s)) => match signal_name(s) {
                Some(n) => format!("killed by signal {s} ({n})"),
                None => format!("killed by signal {s}"),
            },
            (Some(c), None) if c > 128 && c < 160 => match signal_name(c - 128) {
                Some(n) => format!("exited with code {c} ({n})"),
                None => format!("exited with code {c}"),
            },
            (Some(c), None) => format!("exited with code {c}"),
            (None, None) => "ended without an exit status".to_owned(),
        }
    }
}

fn signal_name(s: i32) -> Option<&'static str> {
    Some(match s {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        6 => "SIGABRT",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        _ => return None,
    })
}

/// The result's `usage`, with its `modelUsage` as `by_model`: the result's `usage` leaves out
/// side requests the CLI makes (a new session's title), which `total_cost_usd` and `modelUsage`
/// count, so the per-model figures are the ones that add up to the cost.
fn usage_of(ev: &serde_json::Map<String, Value>) -> Option<Value> {
    let mut usage = ev.get("usage").filter(|u| !u.is_null()).cloned();
    if let Some(by_model) = ev
        .get("modelUsage")
        .filter(|m| m.as_object().is_some_and(|o| !o.is_empty()))
    {
        let u = usage.get_or_insert_with(|| Value::Object(Default::default()));
        if let Some(o) = u.as_object_mut() {
            o.insert("by_model".into(), by_model.clone());
        }
    }
    usage
}

/// A usage-limit message recognised in text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageLimitText {
    /// When the limit resets; `None` for limits that do not reset by themselves (out of credits,
    /// disabled allocation, …) or a reset text that could not be read.
    pub resets_at: Option<DateTime<Utc>>,
    /// The line that said so (trimmed, bounded).
    pub message: String,
}

/// Decides how a run ended.
///
/// Precedence: cancelled → [`Outcome::Cancelled`]; timed out → [`Outcome::Timeout`]; killed for a
/// resource limit → [`Outcome::ResourceLimit`]; a clean finish (exit 0 and a result without
/// `is_error`) → [`Outcome::Success`]; a usage limit (strongest signal first, see the module docs)
/// → [`Outcome::UsageLimit`]; missing or rejected credentials → [`Outcome::AuthError`]; arguments
/// the CLI refused → [`Outcome::InvalidArguments`]; anything else → [`Outcome::Error`].
///
/// A clean finish is checked before the usage-limit signals on purpose: a run that completed is a
/// success even if a `rate_limit_event` said `rejected` on the way (e.g. the account moved on to
/// extra usage), and assistant text that merely talks about limits must not fail a good run.
///
/// `stderr_tail`: the last few KiB of stderr. `now`: resolves reset texts such as `resets 7am`.
pub fn classify(
    exit: &ExitSummary,
    parser: &StreamParser,
    stderr_tail: &str,
    now: DateTime<Utc>,
) -> Outcome {
    if exit.cancelled {
        return Outcome::Cancelled;
    }
    if exit.timed_out {
        return Outcome::Timeout;
    }
    if let Some(why) = &exit.limit_kill {
        return Outcome::ResourceLimit {
            message: why.clone(),
        };
    }
    let result = parser.result();
    let api_msg = parser.api_error_message();
    if exit.code == Some(0) && exit.signal.is_none() && result.is_some_and(|r| !r.is_error) {
        return Outcome::Success;
    }

    // Texts that may explain the failure, most authoritative first.
    let mut texts: Vec<&str> = Vec::with_capacity(5);
    if let Some(t) = result.and_then(|r| r.text.as_deref()) {
        texts.push(t);
    }
    if let Some(t) = api_msg.and_then(|m| m.text.as_deref()) {
        texts.push(t);
    }
    if result.is_none() {
        if let Some(t) = parser.last_assistant_text() {
            texts.push(t);
        }
    }
    if !parser.plain_tail().is_empty() {
        texts.push(parser.plain_tail());
    }
    if !stderr_tail.trim().is_empty() {
        texts.push(stderr_tail);
    }

    if let Some(outcome) = detect_usage_limit(parser, &texts, now) {
        return outcome;
    }
    if let Some(message) = detect_auth_error(parser, &texts) {
        return Outcome::AuthError { message };
    }
    if result.is_none() && exit.signal.is_none() && exit.code.is_some_and(|c| c != 0) {
        for t in [stderr_tail, parser.plain_tail()] {
            if let Some(line) = find_line(t, is_invalid_arguments_line) {
                return Outcome::InvalidArguments { message: line };
            }
        }
    }
    if let Some(line) = result
        .filter(|r| r.is_error)
        .and_then(|r| r.text.as_deref())
        .and_then(|t| find_line(t, |l| l.contains("no conversation found with session id")))
    {
        return Outcome::InvalidArguments { message: line };
    }

    let all_text = texts.join("\n").to_ascii_lowercase();
    let api_status = result
        .and_then(|r| r.api_error_status)
        .or_else(|| api_msg.and_then(|m| m.api_error_status))
        .or_else(|| texts.iter().take(2).find_map(|t| status_from_text(t)));
    Outcome::Error {
        subtype: error_subtype(exit, parser, api_status, &all_text),
        api_status,
        message: error_message(exit, parser, stderr_tail),
    }
}

fn detect_usage_limit(
    parser: &StreamParser,
    texts: &[&str],
    now: DateTime<Utc>,
) -> Option<Outcome> {
    let result = parser.result();
    let api_msg = parser.api_error_message();
    let text_hit = texts.iter().find_map(|t| parse_usage_limit(t, now));
    let message = |resets_at: Option<DateTime<Utc>>| -> String {
        if let Some(hit) = &text_hit {
            return hit.message.clone();
        }
        if let Some(t) = result
            .and_then(|r| r.text.as_deref())
            .or_else(|| api_msg.and_then(|m| m.text.as_deref()))
            .filter(|t| !t.trim().is_empty())
        {
            return bounded(t.trim(), MAX_MESSAGE_BYTES);
        }
        match resets_at {
            Some(t) => format!("usage limit reached; resets at {}", t.to_rfc3339()),
            None => "usage limit reached".to_owned(),
        }
    };
    // 1. + 2. Structured reset instants.
    if let Some(t) = parser.rate_limit_resets_at() {
        return Some(Outcome::UsageLimit {
            resets_at: Some(t),
            message: message(Some(t)),
        });
    }
    // 3. The result (or the synthetic message) names the usage limit.
    let flagged = result.and_then(|r| r.api_error.as_deref()) == Some("usage_limit_reached")
        || api_msg.and_then(|m| m.api_error.as_deref()) == Some("usage_limit_reached");
    if flagged {
        let resets_at = text_hit.as_ref().and_then(|h| h.resets_at);
        return Some(Outcome::UsageLimit {
            resets_at,
            message: message(resets_at),
        });
    }
    // 4. Text only.
    text_hit.map(|hit| Outcome::UsageLimit {
        resets_at: hit.resets_at,
        message: hit.message,
    })
}

fn detect_auth_error(parser: &StreamParser, texts: &[&str]) -> Option<String> {
    for t in texts {
        if let Some(line) = find_line(t, is_auth_line) {
            return Some(line);
        }
    }
    let result = parser.result();
    let api_msg = parser.api_error_message();
    let status = result
        .and_then(|r| r.api_error_status)
        .or_else(|| api_msg.and_then(|m| m.api_error_status));
    let etype = result
        .and_then(|r| r.api_error_type.as_deref())
        .or_else(|| api_msg.and_then(|m| m.api_error_type.as_deref()));
    let structured = matches!(status, Some(401) | Some(403))
        || matches!(
            etype,
            Some("authentication_error") | Some("permission_error")
        )
        || api_msg.and_then(|m| m.error.as_deref()) == Some("authentication_failed")
        || result.and_then(|r| r.api_error.as_deref()) == Some("authentication_failed");
    if !structured {
        return None;
    }
    let text = texts.first().map(|t| bounded(t.trim(), MAX_MESSAGE_BYTES));
    Some(match text.filter(|t| !t.is_empty()) {
        Some(t) => t,
        None => match status {
            Some(s) => format!("the API rejected the credentials (HTTP {s})"),
            None => "the API rejected the credentials".to_owned(),
        },
    })
}

fn is_auth_line(lower: &str) -> bool {
    const AUTH: &[&str] = &[
        "not logged in",
        "please run /login",
        "invalid api key",
        "invalid bearer token",
        "oauth token has expired",
        "oauth token revoked",
        "oauth authentication is currently not supported",
        "authentication_error",
    ];
    AUTH.iter().any(|p| lower.contains(p))
}

fn is_invalid_arguments_line(lower: &str) -> bool {
    const ARGS: &[&str] = &[
        "error: unknown option",
        "error: unknown command",
        "error: too many arguments",
        "error: missing required argument",
        "argument missing",
        "allowed choices are",
        "requires --verbose",
        "input must be provided",
        "no conversation found with session id",
        "invalid session id",
        "cannot be used with root",
    ];
    ARGS.iter().any(|p| lower.contains(p))
        || lower.starts_with("error: option '")
        || (lower.contains("session") && lower.contains("already in use"))
}

/// The first line of `text` for which `pred` (given the lowercased line) holds, trimmed.
fn find_line(text: &str, pred: impl Fn(&str) -> bool) -> Option<String> {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && pred(&l.to_ascii_lowercase()))
        .map(|l| bounded(l, MAX_MESSAGE_BYTES))
}

fn error_subtype(
    exit: &ExitSummary,
    parser: &StreamParser,
    api_status: Option<u16>,
    all_text_lower: &str,
) -> Option<String> {
    let result = parser.result();
    let api_msg = parser.api_error_message();
    if let Some(st) = result.and_then(|r| r.subtype.as_deref()) {
        if st != "success" && !st.is_empty() {
            return Some(st.to_owned());
        }
    }
    if let Some(e) = result
        .and_then(|r| r.api_error.as_deref())
        .or_else(|| api_msg.and_then(|m| m.api_error.as_deref()))
    {
        return Some(e.to_owned());
    }
    let etype = result
        .and_then(|r| r.api_error_type.as_deref())
        .or_else(|| api_msg.and_then(|m| m.api_error_type.as_deref()));
    let err = api_msg.and_then(|m| m.error.as_deref());
    if api_status == Some(429)
        || etype == Some("rate_limit_error")
        || err == Some("rate_limit")
        || parser.throttled()
        || all_text_lower.contains("temporarily limiting requests")
    {
        return Some("rate_limit".to_owned());
    }
    if api_status == Some(529)
        || etype == Some("overloaded_error")
        || all_text_lower.contains("overloaded")
    {
        return Some("overloaded".to_owned());
    }
    if all_text_lower.contains("can't reach the api server")
        || all_text_lower.contains("connection refused")
        || all_text_lower.contains("econnrefused")
        || all_text_lower.contains("enotfound")
    {
        return Some("connection_failed".to_owned());
    }
    if let Some(t) = etype {
        return Some(t.to_owned());
    }
    if api_status.is_some() {
        return Some("api_error".to_owned());
    }
    if let Some(e) = err {
        return Some(e.to_owned());
    }
    if result.is_none() {
        let killed = exit.signal.is_some() || exit.code.is_some_and(|c| c > 128);
        return Some(if killed { "killed" } else { "no_result" }.to_owned());
    }
    None
}

fn error_message(exit: &ExitSummary, parser: &StreamParser, stderr_tail: &str) -> String {
    let how = exit.describe();
    if let Some(r) = parser.result() {
        let text = r.text.as_deref().map(str::trim).filter(|t| !t.is_empty());
        return match (r.is_error, text) {
            (true, Some(t)) => bounded(t, MAX_MESSAGE_BYTES),
            (true, None) => match &r.subtype {
                Some(st) => format!("the CLI reported an error ({st}), {how}"),
                None => format!("the CLI reported an error, {how}"),
            },
            (false, _) => format!("{how} although its result reported success"),
        };
    }
    if let Some(t) = parser
        .api_error_message()
        .and_then(|m| m.text.as_deref())
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        return bounded(t, MAX_MESSAGE_BYTES);
    }
    let detail = [stderr_tail.trim(), parser.plain_tail().trim()]
        .into_iter()
        .find(|t| !t.is_empty())
        .map(|t| tail_str(t, MAX_MESSAGE_BYTES).trim().to_owned());
    match detail {
        Some(d) => format!("{how} without a result: {d}"),
        None => format!("{how} without a result"),
    }
}

/// An HTTP status named in an API error text: `API Error: 500 …`, `Request rejected (429)`,
/// `Repeated 529 Overloaded errors`.
fn status_from_text(text: &str) -> Option<u16> {
    let b = text.as_bytes();
    for i in 0..b.len().saturating_sub(2) {
        let three = &b[i..i + 3];
        if !three.iter().all(u8::is_ascii_digit) {
            continue;
        }
        let before_ok = i == 0 || !b[i - 1].is_ascii_alphanumeric();
        let after_ok = b.get(i + 3).is_none_or(|c| !c.is_ascii_alphanumeric());
        if !(before_ok && after_ok) {
            continue;
        }
        let n: u16 = std::str::from_utf8(three).ok()?.parse().ok()?;
        if !(400..600).contains(&n) {
            continue;
        }
        let before = &text[..i];
        let after = &text[i + 3..];
        if before.ends_with("API Error: ")
            || (before.ends_with('(') && after.starts_with(')'))
            || (before.ends_with("Repeated ") && after.starts_with(' '))
        {
            return Some(n);
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Usage-limit texts

/// Recognises a usage-limit message in any wording the CLI has used (see `claude-cli.md`) and
/// resolves its reset instant. Looks at every line; the last line that says so wins.
///
/// Never matches transient throttles (`… (not your usage limit)`, 429 rate limits, 529).
pub fn parse_usage_limit(text: &str, now: DateTime<Utc>) -> Option<UsageLimitText> {
    text.lines().rev().find_map(|l| parse_limit_line(l, now))
}

fn parse_limit_line(line: &str, now: DateTime<Utc>) -> Option<UsageLimitText> {
    let norm = line
        .trim()
        .replace(['\u{2019}', '\u{2018}', '\u{02bc}'], "'");
    let lower = norm.to_ascii_lowercase();
    if !is_limit_phrase(&lower) {
        return None;
    }
    let message = bounded(&norm, MAX_MESSAGE_BYTES);
    // 1.0.x: `Claude AI usage limit reached|1795698475` (epoch seconds, exact).
    if let Some(i) = lower.find("limit reached|") {
        let digits: String = lower[i + "limit reached|".len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if let Some(t) = digits.parse::<i64>().ok().and_then(epoch_to_utc) {
            return Some(UsageLimitText {
                resets_at: Some(t),
                message,
            });
        }
    }
    let resets_at = find_word(&lower, "resets")
        .or_else(|| find_word(&lower, "reset"))
        .and_then(|(_, end)| parse_reset_spec(&norm[end..], now));
    Some(UsageLimitText { resets_at, message })
}

fn is_limit_phrase(lower: &str) -> bool {
    if lower.contains("not your usage limit") {
        return false;
    }
    const PHRASES: &[&str] = &[
        "usage limit reached",
        "session limit reached",
        "out of usage",
        "out of extra usage",
        "seat type doesn't include",
        "seat type does not include",
        "usage allocation has been disabled",
        "usage limit is set to $0",
        "credit balance is too low",
    ];
    if PHRASES.iter().any(|p| lower.contains(p)) {
        return true;
    }
    let hit_your = [
        "you've hit your",
        "you have hit your",
        "you've reached your",
        "you have reached your",
    ]
    .iter()
    .any(|p| lower.contains(p));
    if hit_your && lower.contains("limit") {
        return true;
    }
    // `5-hour limit reached ∙ resets 3pm` and similar; not the old model fallback notice
    // (`Opus limit reached, now using Sonnet`), which does not stop the run.
    lower.contains("limit reached") && lower.contains("resets") && !lower.contains("now using")
}

/// Byte range of `word` in `lower` as a whole word.
fn find_word(lower: &str, word: &str) -> Option<(usize, usize)> {
    let b = lower.as_bytes();
    let mut from = 0;
    while let Some(pos) = lower[from..].find(word) {
        let start = from + pos;
        let end = start + word.len();
        let before_ok = start == 0 || !b[start - 1].is_ascii_alphanumeric();
        let after_ok = b.get(end).is_none_or(|c| !c.is_ascii_alphanumeric());
        if before_ok && after_ok {
            return Some((start, end));
        }
        from = end;
    }
    None
}

/// A tiny cursor over the text after `resets`.
struct Cursor<'a> {
    s: &'a str,
    i: usize,
}

impl<'a> Cursor<'a> {
    fn rest(&self) -> &'a str {
        &self.s[self.i..]
    }

    fn ws(&mut self) {
        let r = self.rest();
        self.i += r.len() - r.trim_start().len();
    }

    fn eat(&mut self, c: char) -> bool {
        if self.rest().starts_with(c) {
            self.i += c.len_utf8();
            true
        } else {
            false
        }
    }

    /// A case-insensitive keyword not followed by a letter.
    fn eat_kw(&mut self, kw: &str) -> bool {
        let r = self.rest();
        if r.len() >= kw.len()
            && r.is_char_boundary(kw.len())
            && r[..kw.len()].eq_ignore_ascii_case(kw)
            && !r[kw.len()..].starts_with(|c: char| c.is_ascii_alphabetic())
        {
            self.i += kw.len();
            true
        } else {
            false
        }
    }

    fn word(&mut self) -> Option<&'a str> {
        let r = self.rest();
        let n = r
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(r.len());
        (n > 0).then(|| {
            self.i += n;
            &r[..n]
        })
    }

    /// Up to `max` ASCII digits (at least one).
    fn number(&mut self, max: usize) -> Option<(u32, usize)> {
        let r = self.rest();
        let n = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
        if n == 0 || n > max {
            return None;
        }
        let v = r[..n].parse().ok()?;
        self.i += n;
        Some((v, n))
    }
}

fn month_from_word(w: &str) -> Option<u32> {
    const MONTHS: [&str; 12] = [
        "january",
        "february",
        "march",
        "april",
        "may",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
    ];
    let w = w.to_ascii_lowercase();
    if w.len() < 3 {
        return None;
    }
    if w == "sept" {
        return Some(9);
    }
    MONTHS
        .iter()
        .position(|m| m.starts_with(&w))
        .map(|i| i as u32 + 1)
}

/// Parses `[at] [Mon D[, YYYY][,] [at]] H[:MM](am|pm) [(Zone)]` and resolves it.
fn parse_reset_spec(rest: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let mut c = Cursor { s: rest, i: 0 };
    c.ws();
    let _ = c.eat_kw("at") || c.eat_kw("on");
    c.ws();

    // Date.
    let mut date: Option<(u32, u32, Option<i32>)> = None;
    let save = c.i;
    if let Some(month) = c.word().and_then(month_from_word) {
        c.eat('.');
        c.ws();
        if let Some((day, _)) = c.number(2) {
            for suffix in ["st", "nd", "rd", "th"] {
                if c.eat_kw(suffix) {
                    break;
                }
            }
            c.eat(',');
            c.ws();
            let before_year = c.i;
            let mut year = None;
            match c.number(4) {
                Some((y, 4)) if !c.rest().starts_with(':') => {
                    year = Some(y as i32);
                    c.eat(',');
                    c.ws();
                }
                _ => c.i = before_year,
            }
            let _ = c.eat_kw("at");
            c.ws();
            date = Some((month, day, year));
        } else {
            c.i = save;
        }
    } else {
        c.i = save;
    }

    // Time.
    let save = c.i;
    let mut time: Option<(u32, u32)> = None;
    if let Some((h, _)) = c.number(2) {
        let minutes = if c.eat(':') {
            match c.number(2) {
                Some((m, 2)) => Some(m),
                _ => None,
            }
        } else {
            None
        };
        let after_digits = c.i;
        c.ws();
        let ampm = if c.eat_kw("am") || c.eat_kw("a.m.") {
            Some(false)
        } else if c.eat_kw("pm") || c.eat_kw("p.m.") {
            Some(true)
        } else {
            c.i = after_digits;
            None
        };
        time = match (ampm, minutes) {
            (Some(pm), m) if (1..=12).contains(&h) || h == 0 => {
                let h24 = match (pm, h) {
                    (false, 12) => 0,
                    (true, 12) => 12,
                    (true, h) => h + 12,
                    (false, h) => h,
                };
                Some((h24, m.unwrap_or(0)))
            }
            (None, Some(m)) if h < 24 => Some((h, m)),
            _ => None,
        };
        if time.is_none() {
            c.i = save;
        }
        if let Some((_, m)) = time {
            if m > 59 {
                return None;
            }
        }
    }
    if date.is_none() && time.is_none() {
        return None;
    }

    // Zone: `(America/New_York)`, or a bare zone name. Unknown or absent → UTC.
    c.ws();
    let tz = if c.eat('(') {
        let r = c.rest();
        let name = r.split(')').next().unwrap_or("").trim();
        Tz::from_str(name).unwrap_or(Tz::UTC)
    } else {
        let r = c.rest();
        let token = r
            .split(|ch: char| ch.is_whitespace() || ch == ',' || ch == '.')
            .next();
        token.and_then(|t| Tz::from_str(t).ok()).unwrap_or(Tz::UTC)
    };

    let (h, m) = time.unwrap_or((0, 0));
    let t = NaiveTime::from_hms_opt(h, m, 0)?;
    resolve_reset(date, t, tz, now)
}

/// Resolves a wall time (and maybe a date) in `tz` to the reset instant (+60 s).
fn resolve_reset(
    date: Option<(u32, u32, Option<i32>)>,
    time: NaiveTime,
    tz: Tz,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let slack = Duration::seconds(TEXT_RESET_SLACK_SECS);
    let local_now = now.with_timezone(&tz);
    let at = match date {
        None => {
            let mut day = local_now.date_naive().pred_opt()?;
            // The first occurrence (yesterday, today, tomorrow) not clearly in the past.
            let grace = Duration::seconds(RECENT_PAST_GRACE_SECS);
            loop {
                let t = localize(tz, day.and_time(time))?;
                if t + slack + grace > now {
                    break t;
                }
                day = day.succ_opt()?;
                if day > local_now.date_naive() + Duration::days(2) {
                    return None;
                }
            }
        }
        Some((month, dayn, Some(year))) => localize(
            tz,
            NaiveDate::from_ymd_opt(year, month, dayn)?.and_time(time),
        )?,
        Some((month, dayn, None)) => {
            let mut year = local_now.year();
            let mut tries = 0;
            loop {
                tries += 1;
                if tries > 9 {
                    return None;
                }
                let Some(d) = NaiveDate::from_ymd_opt(year, month, dayn) else {
                    // Feb 29 in a non-leap year, or Apr 31: try the following years.
                    if month == 2 && dayn == 29 {
                        year += 1;
                        continue;
                    }
                    return None;
                };
                let t = localize(tz, d.and_time(time))?;
                if t + slack < now - Duration::days(1) {
                    year += 1;
                    continue;
                }
                break t;
            }
        }
    };
    Some(at + slack)
}

/// A local wall time in `tz` as UTC: the earlier of two in a DST overlap, an hour later in a gap.
fn localize(tz: Tz, naive: NaiveDateTime) -> Option<DateTime<Utc>> {
    tz.from_local_datetime(&naive)
        .earliest()
        .or_else(|| {
            tz.from_local_datetime(&(naive + Duration::hours(1)))
                .earliest()
        })
        .map(|t| t.with_timezone(&Utc))
}

// ---------------------------------------------------------------------------------------------
// Small helpers

fn str_field<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    m.get(key).and_then(Value::as_str)
}

fn as_u16(v: &Value) -> Option<u16> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Unix seconds (or milliseconds, if it is that large) as a UTC instant.
fn as_epoch(v: &Value) -> Option<DateTime<Utc>> {
    let n = match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64))?,
        Value::String(s) => s.trim().parse::<f64>().ok()? as i64,
        _ => return None,
    };
    epoch_to_utc(n)
}

fn epoch_to_utc(n: i64) -> Option<DateTime<Utc>> {
    if n <= 0 {
        return None;
    }
    if n > 100_000_000_000 {
        Utc.timestamp_millis_opt(n).single()
    } else {
        Utc.timestamp_opt(n, 0).single()
    }
}

/// The text blocks of a message's `content` (a string, or an array of blocks), joined.
fn content_text(content: &Value) -> Option<String> {
    match content {
        Value::String(s) if !s.is_empty() => Some(bounded(s, MAX_TEXT_BYTES)),
        Value::Array(blocks) => {
            let mut out = String::new();
            for b in blocks {
                if b.get("type").and_then(Value::as_str) != Some("text") {
                    continue;
                }
                if let Some(t) = b.get("text").and_then(Value::as_str) {
                    if !out.is_empty() {
                        out.push('\n');
                    }
                    out.push_str(t);
                    if out.len() > MAX_TEXT_BYTES {
                        break;
                    }
                }
            }
            (!out.is_empty()).then(|| bounded(&out, MAX_TEXT_BYTES))
        }
        _ => None,
    }
}

/// At most `max` bytes of `s` (cut at a char boundary), with `…` when cut.
fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    format!("{}…", crate::text::clip(s, max))
}

/// The last (at most) `max` bytes of `s`, starting at a char boundary.
fn tail_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn parse(lines: &str) -> StreamParser {
        let mut p = StreamParser::default();
        for l in lines.lines() {
            p.feed_line(l);
        }
        p
    }

    fn err(subtype: Option<&str>, api_status: Option<u16>, message: &str) -> Outcome {
        Outcome::Error {
            subtype: subtype.map(str::to_owned),
            api_status,
            message: message.into(),
        }
    }

    fn limit(resets_at: Option<&str>, message: &str) -> Outcome {
        Outcome::UsageLimit {
            resets_at: resets_at.map(utc),
            message: message.into(),
        }
    }

    fn samples_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/claude-cli-samples")
    }

    /// Every captured sample, with the exit code from INDEX, classifies as expected. A sample
    /// without an expectation here fails the test (so new captures get covered).
    #[test]
    fn classifies_every_captured_sample() {
        let dir = samples_dir();
        let index = std::fs::read_to_string(dir.join("INDEX"))
            .unwrap_or_else(|e| panic!("{} must exist beside the repository: {e}", dir.display()));
        let now = utc("2026-11-24T05:24:00Z");
        let expected: Vec<(&str, Outcome, Option<&str>)> = vec![
            ("ok.stream-json", Outcome::Success, Some("e03331c1-72be-4028-9cb8-3e8a184fb7e0")),
            (
                "session-limit-2.1.197.stream-json",
                limit(Some("2026-11-24T07:00:26Z"), "You've hit your session limit · resets 7am (UTC)"),
                Some("a67a7db2-da8f-4601-b1cd-446eebba5961"),
            ),
            (
                "five-hour-limit.json",
                limit(Some("2026-11-24T07:01:00Z"), "You've hit your 5-hour limit · resets 7am (UTC)"),
                Some("2ec3e907-50dc-4e22-adc8-bdb7cb4bfa66"),
            ),
            (
                "api-key-429.stream-json",
                err(
                    Some("rate_limit"),
                    Some(429),
                    "API Error: Request rejected (429) · This request would exceed your account's rate limit. Please try again later.",
                ),
                Some("1d0f5075-2a07-42ef-b6f5-48f7d3e5f7ea"),
            ),
            (
                "invalid-key-401.stream-json",
                Outcome::AuthError { message: "Invalid API key · Fix external API key".into() },
                Some("908f64eb-5259-482c-898e-efc65cba3fa0"),
            ),
            (
                "max-turns.stream-json",
                err(Some("error_max_turns"), None, "Reached maximum number of turns (2)"),
                Some("4cb3d28a-c501-48fa-a4ed-c838767b9166"),
            ),
            (
                "not-logged-in.stream-json",
                Outcome::AuthError { message: "Not logged in · Please run /login".into() },
                Some("abab9801-4e01-4ade-babe-893088d53f11"),
            ),
        ];
        let mut seen = 0;
        for line in index.lines() {
            let mut parts = line.split_whitespace();
            let (Some(name), Some(exit)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Some(code) = exit.strip_prefix("exit=") else {
                continue;
            };
            let code: i32 = code.parse().unwrap();
            let text = std::fs::read_to_string(dir.join(name)).unwrap();
            let p = parse(&text);
            let got = classify(&ExitSummary::exited(code), &p, "", now);
            let (_, want, sid) = expected
                .iter()
                .find(|(n, _, _)| *n == name)
                .unwrap_or_else(|| panic!("no expectation for sample {name}: {got:?}"));
            assert_eq!(&got, want, "sample {name}");
            assert_eq!(p.session_id(), *sid, "session id of {name}");
            assert!(p.result().is_some(), "{name} has a result");
            seen += 1;
        }
        // Every file in the folder is listed in INDEX and was checked.
        let files = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name() != "INDEX")
            .count();
        assert_eq!(seen, files, "every sample file is in INDEX");
        assert_eq!(seen, expected.len());
    }

    #[test]
    fn ok_sample_details() {
        let p = parse(&std::fs::read_to_string(samples_dir().join("ok.stream-json")).unwrap());
        let r = p.result().unwrap();
        assert!(!r.is_error);
        assert_eq!(r.subtype.as_deref(), Some("success"));
        assert_eq!(r.text.as_deref(), Some("Hello from mock"));
        assert!((r.cost_usd.unwrap() - 0.00014).abs() < 1e-12);
        assert_eq!(r.num_turns, Some(1));
        assert_eq!(r.terminal_reason.as_deref(), Some("completed"));
        assert_eq!(r.usage.as_ref().unwrap()["input_tokens"], 10);
        assert_eq!(p.last_assistant_text(), Some("Hello from mock"));
        assert_eq!(p.model(), Some("claude-opus-5-5"));
        assert_eq!(p.cli_version(), Some("2.1.330"));
        assert_eq!(p.rate_limit_resets_at(), None);
        assert_eq!(p.result_text(), Some("Hello from mock"));
    }

    #[test]
    fn invalid_key_sample_details() {
        let p = parse(
            &std::fs::read_to_string(samples_dir().join("invalid-key-401.stream-json")).unwrap(),
        );
        assert_eq!(p.api_retries(), (10, Some(401)));
        let m = p.api_error_message().unwrap();
        assert_eq!(m.error.as_deref(), Some("authentication_failed"));
        assert_eq!(m.api_error_status, Some(401));
        let r = p.result().unwrap();
        assert_eq!(r.api_error_type.as_deref(), Some("authentication_error"));
        assert_eq!(r.terminal_reason.as_deref(), Some("api_error"));
    }

    #[test]
    fn usage_limit_texts() {
        let now = utc("2026-11-24T05:24:00Z");
        let cases: &[(&str, Option<Option<&str>>)] = &[
            // (text, None = not a usage limit / Some(resets_at))
            ("You've hit your 5-hour limit · resets 7am (UTC)", Some(Some("2026-11-24T07:01:00Z"))),
            ("You've hit your 5-hour limit · resets 7:04am (UTC)", Some(Some("2026-11-24T07:05:00Z"))),
            ("You've hit your weekly limit · resets Nov 26, 1:03pm (UTC)", Some(Some("2026-11-26T13:04:00Z"))),
            ("You've hit your 5-hour limit · resets Jan 23, 2027, 5:46am (UTC)", Some(Some("2027-01-23T05:47:00Z"))),
            // 00:24 EST now; 2am EST = 07:00Z.
            ("You've hit your 5-hour limit · resets 2am (America/New_York)", Some(Some("2026-11-24T07:01:00Z"))),
            ("You've hit your session limit · resets 7:04am (UTC)", Some(Some("2026-11-24T07:05:00Z"))),
            ("You've hit your session limit · resets 7am (UTC)", Some(Some("2026-11-24T07:01:00Z"))),
            ("Session limit reached ∙ resets 7:04am", Some(Some("2026-11-24T07:05:00Z"))),
            ("Claude AI usage limit reached|1795698475", Some(Some("2026-11-26T13:07:55Z"))),
            ("Claude AI usage limit reached|1795698475000", Some(Some("2026-11-26T13:07:55Z"))),
            // An epoch already past is kept as it is (the engine treats a past reset as unknown
            // and probes); a garbage epoch leaves the reset unknown.
            ("Claude AI usage limit reached|1700000000", Some(Some("2023-11-14T22:13:20Z"))),
            ("Claude AI usage limit reached|soon", Some(None)),
            // macOS wording; Apr 23 2026 is long past → next year.
            ("You've hit your limit · resets Apr 23 at 4pm", Some(Some("2027-04-23T16:01:00Z"))),
            ("You've hit your limit · resets Apr 23 at 4pm (UTC)", Some(Some("2027-04-23T16:01:00Z"))),
            ("You\u{2019}ve hit your 5-hour limit \u{00b7} resets 7am (UTC)", Some(Some("2026-11-24T07:01:00Z"))),
            ("You've hit your weekly limit · resets 7pm (UTC) · /upgrade to increase your limits", Some(Some("2026-11-24T19:01:00Z"))),
            ("You've hit your Opus limit · resets 12pm (UTC)", Some(Some("2026-11-24T12:01:00Z"))),
            ("You've hit your 5-hour limit · resets 12am (UTC)", Some(Some("2026-11-25T00:01:00Z"))),
            ("You've hit your 5-hour limit · resets 10:30 (UTC)", Some(Some("2026-11-24T10:31:00Z"))),
            ("5-hour limit reached ∙ resets 3pm", Some(Some("2026-11-24T15:01:00Z"))),
            ("Claude usage limit reached. Your limit will reset at 9pm (UTC).", Some(Some("2026-11-24T21:01:00Z"))),
            // No reset: waits for a person.
            ("You're out of usage credits", Some(None)),
            ("You're out of extra usage · Add funds to continue", Some(None)),
            ("Your org is out of usage", Some(None)),
            ("Your seat type doesn't include Claude Code", Some(None)),
            ("Your usage allocation has been disabled by your admin", Some(None)),
            ("Your group's usage limit is set to $0", Some(None)),
            ("Claude AI usage limit reached", Some(None)),
            // A limit whose reset text cannot be read.
            ("You've hit your 5-hour limit · resets 25pm (UTC)", Some(None)),
            ("You've hit your 5-hour limit · resets soon", Some(None)),
            ("You've hit your 5-hour limit · resets Foo 12, 3pm", Some(None)),
            // Unknown zone → UTC.
            ("You've hit your 5-hour limit · resets 7am (Mars/Olympus_Mons)", Some(Some("2026-11-24T07:01:00Z"))),
            // Transient throttles and other errors are not usage limits.
            ("API Error: Server is temporarily limiting requests (not your usage limit) · Rate limited", None),
            ("API Error: Request rejected (429) · This request would exceed your account's rate limit. Please try again later.", None),
            ("API Error: Repeated 529 Overloaded errors. The API is at capacity — try again in a moment.", None),
            ("API Error: 500 Internal server error.", None),
            ("Claude Opus 4 limit reached, now using Sonnet 4", None),
            ("Not logged in · Please run /login", None),
            ("", None),
            ("garbage ::: {} resets 7am", None),
            ("Hello from mock", None),
        ];
        for (text, want) in cases {
            let got = parse_usage_limit(text, now);
            match want {
                None => assert_eq!(got, None, "{text:?}"),
                Some(reset) => {
                    let got = got.unwrap_or_else(|| panic!("not recognised: {text:?}"));
                    assert_eq!(got.resets_at, reset.map(utc), "{text:?}");
                    assert!(!got.message.is_empty());
                }
            }
        }
    }

    #[test]
    fn reset_time_resolution_edges() {
        let t = "You've hit your 5-hour limit · resets 1am (UTC)";
        // Midnight roll-over.
        let got = parse_usage_limit(t, utc("2026-11-24T23:30:00Z")).unwrap();
        assert_eq!(got.resets_at, Some(utc("2026-11-25T01:01:00Z")));
        // Already past (well before now) → the next day's.
        let t7 = "You've hit your session limit · resets 7am (UTC)";
        let got = parse_usage_limit(t7, utc("2026-11-24T07:30:00Z")).unwrap();
        assert_eq!(got.resets_at, Some(utc("2026-11-25T07:01:00Z")));
        // Within the minute the seconds were cut from → today's.
        let got = parse_usage_limit(t7, utc("2026-11-24T07:00:40Z")).unwrap();
        assert_eq!(got.resets_at, Some(utc("2026-11-24T07:01:00Z")));
        // Just past (within the grace) → today's, i.e. already reset.
        let got = parse_usage_limit(t7, utc("2026-11-24T07:04:00Z")).unwrap();
        assert_eq!(got.resets_at, Some(utc("2026-11-24T07:01:00Z")));
        // Just before midnight, a time just after midnight yesterday... and the grace across it.
        let t2359 = "You've hit your 5-hour limit · resets 11:59pm (UTC)";
        let got = parse_usage_limit(t2359, utc("2026-11-25T00:01:00Z")).unwrap();
        assert_eq!(got.resets_at, Some(utc("2026-11-25T00:00:00Z")));
        // Zone with its own date: 10pm in Tokyo is 13:00Z.
        let tokyo = "You've hit your 5-hour limit · resets 10pm (Asia/Tokyo)";
        let got = parse_usage_limit(tokyo, utc("2026-11-24T14:00:00Z")).unwrap();
        assert_eq!(got.resets_at, Some(utc("2026-11-25T13:01:00Z")));
        // Summer time.
        let london = "You've hit your 5-hour limit · resets 7am (Europe/London)";
        let got = parse_usage_limit(london, utc("2026-07-01T05:00:00Z")).unwrap();
        assert_eq!(got.resets_at, Some(utc("2026-07-01T06:01:00Z")));
        // A wall time that does not exist (spring-forward gap) moves an hour on.
        let ny = "You've hit your 5-hour limit · resets 2:30am (America/New_York)";
        let got = parse_usage_limit(ny, utc("2026-03-08T05:00:00Z")).unwrap();
        assert_eq!(got.resets_at, Some(utc("2026-03-08T07:31:00Z")));
        // A date without a year, less than a day past: kept (it has just reset).
        let d = "You've hit your weekly limit · resets Nov 23, 11pm (UTC)";
        let got = parse_usage_limit(d, utc("2026-11-24T05:24:00Z")).unwrap();
        assert_eq!(got.resets_at, Some(utc("2026-11-23T23:01:00Z")));
        // More than a day past: next year.
        let d = "You've hit your weekly limit · resets Nov 20, 1pm (UTC)";
        let got = parse_usage_limit(d, utc("2026-11-24T05:24:00Z")).unwrap();
        assert_eq!(got.resets_at, Some(utc("2027-11-20T13:01:00Z")));
        // Year boundary: in late December, "Jan 2" is next year's.
        let d = "You've hit your weekly limit · resets Jan 2, 9am (UTC)";
        let got = parse_usage_limit(d, utc("2026-12-30T10:00:00Z")).unwrap();
        assert_eq!(got.resets_at, Some(utc("2027-01-02T09:01:00Z")));
        // Feb 29 without a year → the next leap year.
        let d = "You've hit your weekly limit · resets Feb 29, 9am (UTC)";
        let got = parse_usage_limit(d, utc("2026-11-24T05:24:00Z")).unwrap();
        assert_eq!(got.resets_at, Some(utc("2028-02-29T09:01:00Z")));
        // Full month names and ordinals.
        let d = "You've hit your weekly limit · resets December 3rd, 9:15pm (UTC)";
        let got = parse_usage_limit(d, utc("2026-11-24T05:24:00Z")).unwrap();
        assert_eq!(got.resets_at, Some(utc("2026-12-03T21:16:00Z")));
        // Multi-line text: the limit line is found among noise.
        let noisy = "some log line\nYou've hit your 5-hour limit · resets 7am (UTC)\nbye";
        let got = parse_usage_limit(noisy, utc("2026-11-24T05:24:00Z")).unwrap();
        assert_eq!(
            got.message,
            "You've hit your 5-hour limit · resets 7am (UTC)"
        );
    }

    const INIT: &str = r#"{"type":"system","subtype":"init","session_id":"s-1","model":"m","claude_code_version":"2.1.330"}"#;

    fn run(lines: &[&str], exit: ExitSummary, stderr: &str) -> Outcome {
        let mut p = StreamParser::default();
        for l in lines {
            p.feed_line(l);
        }
        classify(&exit, &p, stderr, utc("2026-11-24T05:24:00Z"))
    }

    fn result_line(extra: &str) -> String {
        format!(
            r#"{{"type":"result","session_id":"s-1","num_turns":1,"total_cost_usd":0,{extra}}}"#
        )
    }

    #[test]
    fn usage_limit_2_1_330_stream() {
        // What 2.1.330 prints for a subscriber: event, synthetic message, flagged result.
        let ev = r#"{"type":"rate_limit_event","rate_limit_info":{"status":"rejected","resetsAt":1795503600,"rateLimitType":"five_hour"},"session_id":"s-1"}"#;
        let msg = r#"{"type":"assistant","message":{"model":"<synthetic>","content":[{"type":"text","text":"You've hit your 5-hour limit · resets 7am (UTC)"}]},"error":"rate_limit","is_api_error_message":true,"api_error":"usage_limit_reached","api_error_params":{"rate_limit_info":{"status":"rejected","resetsAt":1795503700}},"session_id":"s-1"}"#;
        let res = result_line(
            r#""subtype":"success","is_error":true,"api_error_status":429,"api_error_type":"rate_limit_error","api_error":"usage_limit_reached","result":"You've hit your 5-hour limit · resets 7am (UTC)""#,
        );
        let want_msg = "You've hit your 5-hour limit · resets 7am (UTC)";
        // 1. The event wins.
        let got = run(&[INIT, ev, msg, &res], ExitSummary::exited(1), "");
        assert_eq!(got, limit(Some("2026-11-24T07:00:00Z"), want_msg));
        // 2. Without the event: api_error_params.
        let got = run(&[INIT, msg, &res], ExitSummary::exited(1), "");
        assert_eq!(got, limit(Some("2026-11-24T07:01:40Z"), want_msg));
        // 3. Only the result flag and its text.
        let got = run(&[INIT, &res], ExitSummary::exited(1), "");
        assert_eq!(got, limit(Some("2026-11-24T07:01:00Z"), want_msg));
        // 3b. The flag with an unreadable text → no reset instant, still a usage limit.
        let res2 = result_line(
            r#""subtype":"success","is_error":true,"api_error":"usage_limit_reached","result":"Limit!""#,
        );
        let got = run(&[INIT, &res2], ExitSummary::exited(1), "");
        assert_eq!(got, limit(None, "Limit!"));
        // 4. Text only (text output format: plain stdout).
        let got = run(
            &["You've hit your 5-hour limit · resets 7am (UTC)"],
            ExitSummary::exited(1),
            "",
        );
        assert_eq!(got, limit(Some("2026-11-24T07:01:00Z"), want_msg));
        // 4b. Text on stderr only.
        let got = run(
            &[],
            ExitSummary::exited(1),
            "Claude AI usage limit reached|1795698475\n",
        );
        assert_eq!(
            got,
            limit(
                Some("2026-11-26T13:07:55Z"),
                "Claude AI usage limit reached|1795698475"
            )
        );
        // 4c. A synthetic message but no result (killed right after).
        let got = run(&[INIT, msg], ExitSummary::exited(1), "");
        assert_eq!(got, limit(Some("2026-11-24T07:01:40Z"), want_msg));
    }

    #[test]
    fn transient_throttles_are_errors() {
        // A server throttle: rejected without resetsAt, then a 429 result.
        let ev = r#"{"type":"rate_limit_event","rate_limit_info":{"status":"rejected","rateLimitType":"five_hour"},"session_id":"s-1"}"#;
        let text = "API Error: Server is temporarily limiting requests (not your usage limit) · Rate limited";
        let res = result_line(&format!(
            r#""subtype":"success","is_error":true,"api_error_status":429,"api_error_type":"rate_limit_error","result":"{text}""#
        ));
        let got = run(&[INIT, ev, &res], ExitSummary::exited(1), "");
        assert_eq!(got, err(Some("rate_limit"), Some(429), text));
        let p = parse(&format!("{INIT}\n{ev}"));
        assert!(p.throttled());
        assert_eq!(p.rate_limit_resets_at(), None);
        // The throttle event alone (killed before a result) is not a usage limit either.
        let got = run(&[INIT, ev], ExitSummary::exited(1), "");
        assert!(
            matches!(got, Outcome::Error { ref subtype, .. } if subtype.as_deref() == Some("rate_limit")),
            "{got:?}"
        );
        // 529: status read from the text when no field carries it.
        let t529 =
            "API Error: Repeated 529 Overloaded errors. The API is at capacity — try again later.";
        let res = result_line(&format!(
            r#""subtype":"success","is_error":true,"result":"{t529}""#
        ));
        assert_eq!(
            run(&[INIT, &res], ExitSummary::exited(1), ""),
            err(Some("overloaded"), Some(529), t529)
        );
        // 500.
        let t500 = "API Error: 500 Internal server error.";
        let res = result_line(&format!(
            r#""subtype":"success","is_error":true,"api_error_status":500,"api_error_type":"api_error","result":"{t500}""#
        ));
        assert_eq!(
            run(&[INIT, &res], ExitSummary::exited(1), ""),
            err(Some("api_error"), Some(500), t500)
        );
        // No network.
        let tnet =
            "API Error: Connection refused — a firewall or proxy may be blocking it (ECONNREFUSED)";
        let res = result_line(&format!(
            r#""subtype":"success","is_error":true,"api_error":"connection_failed","result":"{tnet}""#
        ));
        assert_eq!(
            run(&[INIT, &res], ExitSummary::exited(1), ""),
            err(Some("connection_failed"), None, tnet)
        );
        let res = result_line(&format!(
            r#""subtype":"success","is_error":true,"result":"{tnet}""#
        ));
        assert_eq!(
            run(&[INIT, &res], ExitSummary::exited(1), ""),
            err(Some("connection_failed"), None, tnet)
        );
    }

    #[test]
    fn precedence_of_process_end() {
        let limit_line = "You've hit your 5-hour limit · resets 7am (UTC)";
        let mut exit = ExitSummary::exited(1);
        exit.cancelled = true;
        exit.timed_out = true;
        exit.limit_kill = Some("memory limit 512 MiB exceeded".into());
        assert_eq!(run(&[limit_line], exit.clone(), ""), Outcome::Cancelled);
        exit.cancelled = false;
        assert_eq!(run(&[limit_line], exit.clone(), ""), Outcome::Timeout);
        exit.timed_out = false;
        assert_eq!(
            run(&[limit_line], exit.clone(), ""),
            Outcome::ResourceLimit {
                message: "memory limit 512 MiB exceeded".into()
            }
        );
    }

    #[test]
    fn success_and_non_success_endings() {
        let ok = result_line(r#""subtype":"success","is_error":false,"result":"done""#);
        assert_eq!(
            run(&[INIT, &ok], ExitSummary::exited(0), ""),
            Outcome::Success
        );
        // A clean finish is a success even after a rejected event (overage) or limit-ish text.
        let ev = r#"{"type":"rate_limit_event","rate_limit_info":{"status":"rejected","resetsAt":1795503600}}"#;
        let chat = r#"{"type":"assistant","message":{"content":[{"type":"text","text":"You've hit your 5-hour limit · resets 7am (UTC)"}]}}"#;
        assert_eq!(
            run(&[INIT, ev, chat, &ok], ExitSummary::exited(0), "warning"),
            Outcome::Success
        );
        // Exit 1 despite a good result.
        let got = run(&[INIT, &ok], ExitSummary::exited(1), "");
        assert_eq!(
            got,
            err(
                None,
                None,
                "exited with code 1 although its result reported success"
            )
        );
        // Exit 0 without any result.
        let got = run(&[INIT], ExitSummary::exited(0), "");
        assert_eq!(
            got,
            err(
                Some("no_result"),
                None,
                "exited with code 0 without a result"
            )
        );
        // SIGTERM: the CLI exits 143 with no result line.
        let got = run(&[INIT], ExitSummary::exited(143), "");
        assert_eq!(
            got,
            err(
                Some("killed"),
                None,
                "exited with code 143 (SIGTERM) without a result"
            )
        );
        // Killed by a signal, with stderr.
        let got = run(&[INIT], ExitSummary::signalled(9), "boom\n");
        assert_eq!(
            got,
            err(
                Some("killed"),
                None,
                "killed by signal 9 (SIGKILL) without a result: boom"
            )
        );
        // SIGINT: exit 0 with an error_during_execution result.
        let res = result_line(
            r#""subtype":"error_during_execution","is_error":true,"errors":["Request was aborted."]"#,
        );
        let got = run(&[INIT, &res], ExitSummary::exited(0), "");
        assert_eq!(
            got,
            err(Some("error_during_execution"), None, "Request was aborted.")
        );
        // An error subtype without text.
        let res = result_line(r#""subtype":"error_max_budget_usd","is_error":true"#);
        let got = run(&[INIT, &res], ExitSummary::exited(1), "");
        assert_eq!(
            got,
            err(
                Some("error_max_budget_usd"),
                None,
                "the CLI reported an error (error_max_budget_usd), exited with code 1"
            )
        );
        // Crash: partial output, stack trace on stderr.
        let partial = r#"{"type":"assistant","message":{"content":[{"type":"text","text":"Working on it"}]}}"#;
        let got = run(
            &[INIT, partial, "not json at all"],
            ExitSummary::exited(1),
            "TypeError: x is undefined\n    at foo\n",
        );
        assert_eq!(
            got,
            err(
                Some("no_result"),
                None,
                "exited with code 1 without a result: TypeError: x is undefined\n    at foo"
            )
        );
    }

    #[test]
    fn auth_errors() {
        let nl = result_line(
            r#""subtype":"success","is_error":true,"result":"Not logged in · Please run /login""#,
        );
        assert_eq!(
            run(&[INIT, &nl], ExitSummary::exited(1), ""),
            Outcome::AuthError {
                message: "Not logged in · Please run /login".into()
            }
        );
        // Structured only: a 403 with some text.
        let res = result_line(
            r#""subtype":"success","is_error":true,"api_error_status":403,"result":"API Error: 403 forbidden""#,
        );
        assert_eq!(
            run(&[INIT, &res], ExitSummary::exited(1), ""),
            Outcome::AuthError {
                message: "API Error: 403 forbidden".into()
            }
        );
        let res = result_line(
            r#""subtype":"success","is_error":true,"api_error_type":"authentication_error""#,
        );
        assert_eq!(
            run(&[INIT, &res], ExitSummary::exited(1), ""),
            Outcome::AuthError {
                message: "the API rejected the credentials".into()
            }
        );
        // On stderr (text output, no result).
        assert_eq!(
            run(
                &[],
                ExitSummary::exited(1),
                "Invalid API key · Fix external API key\n"
            ),
            Outcome::AuthError {
                message: "Invalid API key · Fix external API key".into()
            }
        );
    }

    #[test]
    fn invalid_arguments() {
        let cases = [
            ("error: unknown option '--foo'", "error: unknown option '--foo'"),
            (
                "Error: When using --print, --output-format=stream-json requires --verbose\n",
                "Error: When using --print, --output-format=stream-json requires --verbose",
            ),
            (
                "Error: Input must be provided either through stdin or as a prompt argument when using --print",
                "Error: Input must be provided either through stdin or as a prompt argument when using --print",
            ),
            (
                "No conversation found with session ID: 0b5b8d7e-1111-4222-8333-944445555666",
                "No conversation found with session ID: 0b5b8d7e-1111-4222-8333-944445555666",
            ),
            (
                "error: option '--output-format <format>' argument 'xml' is invalid. Allowed choices are text, json, stream-json.",
                "error: option '--output-format <format>' argument 'xml' is invalid. Allowed choices are text, json, stream-json.",
            ),
            ("error: option '--model <model>' argument missing", "error: option '--model <model>' argument missing"),
            (
                "--dangerously-skip-permissions cannot be used with root/sudo privileges for security reasons",
                "--dangerously-skip-permissions cannot be used with root/sudo privileges for security reasons",
            ),
        ];
        for (stderr, msg) in cases {
            assert_eq!(
                run(&[], ExitSummary::exited(1), stderr),
                Outcome::InvalidArguments {
                    message: msg.into()
                },
                "{stderr}"
            );
        }
        let in_use = "Error: Session ID 0b5b8d7e-1111-4222-8333-944445555666 is already in use";
        assert_eq!(
            run(&[], ExitSummary::exited(1), in_use),
            Outcome::InvalidArguments {
                message: in_use.into()
            }
        );
        let crash = "Error: listen EADDRINUSE: address already in use 127.0.0.1:3000";
        assert!(matches!(
            run(&[], ExitSummary::exited(1), crash),
            Outcome::Error { .. }
        ));
        // An MCP server's auth trouble on stderr is not the CLI's.
        let mcp = "MCP server github: authentication failed";
        assert!(matches!(
            run(&[], ExitSummary::exited(1), mcp),
            Outcome::Error { .. }
        ));
        // Not when the process was killed, or when there is a result.
        let got = run(
            &[],
            ExitSummary::signalled(15),
            "error: unknown option '--foo'",
        );
        assert!(matches!(got, Outcome::Error { .. }), "{got:?}");
        // Unknown stderr → a plain error.
        let got = run(&[], ExitSummary::exited(1), "something else");
        assert_eq!(
            got,
            err(
                Some("no_result"),
                None,
                "exited with code 1 without a result: something else"
            )
        );
        // A --resume error reported as a result.
        let res = result_line(
            r#""subtype":"success","is_error":true,"result":"No conversation found with session ID: abc""#,
        );
        assert_eq!(
            run(&[&res], ExitSummary::exited(1), ""),
            Outcome::InvalidArguments {
                message: "No conversation found with session ID: abc".into()
            }
        );
    }

    #[test]
    fn parser_tolerates_noise_and_other_formats() {
        let mut p = StreamParser::default();
        for l in [
            "",
            "   ",
            "not json",
            "{broken json",
            "[1,2",
            "{\"type\":\"weird\"}",
            "null",
            "42",
        ] {
            p.feed_line(l);
        }
        assert_eq!(p.result(), None);
        assert_eq!(p.json_events(), 1);
        assert_eq!(p.plain_lines(), 5);
        assert!(p.plain_tail().contains("{broken json"));
        // --output-format json --verbose: one array of all messages.
        let arr = format!(
            "[{INIT},{}]\r\n",
            result_line(r#""subtype":"success","is_error":false,"result":"hi""#)
        );
        let mut p = StreamParser::default();
        p.feed_line(&arr);
        assert_eq!(p.result().unwrap().text.as_deref(), Some("hi"));
        assert_eq!(p.session_id(), Some("s-1"));
        // Long plain output is kept only as a bounded tail.
        let mut p = StreamParser::default();
        let long = "x".repeat(10_000);
        for _ in 0..100 {
            p.feed_line(&long);
        }
        p.feed_line("the end");
        assert!(p.plain_tail().len() <= 2 * PLAIN_TAIL_BYTES + 10);
        assert!(p.plain_tail().ends_with("the end"));
        // Huge assistant text is bounded.
        let big = format!(
            r#"{{"type":"assistant","message":{{"content":[{{"type":"text","text":"{}"}},{{"type":"tool_use","name":"x"}}]}}}}"#,
            "é".repeat(100_000)
        );
        let mut p = StreamParser::default();
        p.feed_line(&big);
        let t = p.last_assistant_text().unwrap();
        assert!(t.len() <= MAX_TEXT_BYTES + 4 && t.ends_with('…'));
        // Tool-use-only messages do not replace the last text.
        p.feed_line(
            r#"{"type":"assistant","message":{"content":[{"type":"tool_use","name":"Bash"}]}}"#,
        );
        assert!(p.last_assistant_text().unwrap().starts_with('é'));
        // Session id: the result's wins over the init's.
        let p = parse(&format!(
            "{INIT}\n{}",
            r#"{"type":"result","session_id":"s-2","is_error":false}"#
        ));
        assert_eq!(p.session_id(), Some("s-2"));
        assert_eq!(p.result().unwrap().session_id.as_deref(), Some("s-2"));
        // Errors array joined.
        let p = parse(
            r#"{"type":"result","is_error":true,"subtype":"error_during_execution","errors":["a",{"message":"b"},""]}"#,
        );
        assert_eq!(p.result().unwrap().text.as_deref(), Some("a; b"));
    }

    #[test]
    fn exit_descriptions_and_status_from_text() {
        assert_eq!(ExitSummary::exited(0).describe(), "exited with code 0");
        assert_eq!(
            ExitSummary::exited(137).describe(),
            "exited with code 137 (SIGKILL)"
        );
        assert_eq!(
            ExitSummary::signalled(15).describe(),
            "killed by signal 15 (SIGTERM)"
        );
        assert_eq!(ExitSummary::signalled(64).describe(), "killed by signal 64");
        assert_eq!(
            ExitSummary::default().describe(),
            "ended without an exit status"
        );
        assert_eq!(
            status_from_text("API Error: 500 Internal server error."),
            Some(500)
        );
        assert_eq!(status_from_text("Request rejected (429) · x"), Some(429));
        assert_eq!(
            status_from_text("Repeated 529 Overloaded errors"),
            Some(529)
        );
        assert_eq!(status_from_text("took 500 ms"), None);
        assert_eq!(status_from_text("(200)"), None);
        assert_eq!(status_from_text(""), None);
    }
}
