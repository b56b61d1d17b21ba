//! What a plugin instance can reach: the per-call store state, deny-by-default WASI, the
//! `log` and `clock` imports, bounded stdout/stderr, and the outbound-HTTP gate.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use chrono::{DateTime, Datelike, Offset, TimeZone, Timelike, Utc};
use http_body_util::BodyExt;
use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use super::bindings::{clock, log, output, types};
use crate::clock::Clock;
use crate::text::clip;

/// Log records one call may write through the `log` import; the rest are counted and dropped.
const MAX_LOG_RECORDS: u32 = 200;
/// Longest message (or field value) kept from one log record.
const MAX_LOG_TEXT: usize = 2048;

/// The state behind one store (one plugin call).
pub(crate) struct PluginState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    pub(crate) limits: StoreLimits,
    gate: HttpGate,
    plugin: Arc<str>,
    clock: Clock,
    logs_written: u32,
    pub(crate) logs_dropped: u32,
    /// Where an executor's `emit-line` goes (`None` for the other kinds, whose worlds lack it).
    lines: Option<LineSink>,
}

/// Takes an executor's log lines (`true`: its stderr channel).
pub type LineSink = Arc<dyn Fn(bool, &str) + Send + Sync>;

/// Everything a call's sandbox is built from.
pub(crate) struct SandboxSpec {
    pub plugin: Arc<str>,
    pub clock: Clock,
    pub memory_bytes: usize,
    pub allowed_hosts: Arc<[HostRule]>,
    /// Larger HTTP response bodies fail the read with `HTTP-response-body-size`.
    pub max_response_bytes: usize,
    pub output: CapturedOutput,
    pub lines: Option<LineSink>,
}

impl PluginState {
    pub(crate) fn new(spec: SandboxSpec) -> PluginState {
        // Deny by default: no arguments, environment, preopened directories or sockets;
        // stdin is empty and stdout/stderr go to a bounded capture.
        let wasi = WasiCtxBuilder::new()
            .stdout(spec.output.stdout.clone())
            .stderr(spec.output.stderr.clone())
            .wall_clock(EngineWallClock(spec.clock.clone()))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        PluginState {
            wasi,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(spec.memory_bytes)
                .instances(64)
                .tables(64)
                .memories(16)
                .trap_on_grow_failure(true)
                .build(),
            gate: HttpGate {
                plugin: spec.plugin.clone(),
                allowed: spec.allowed_hosts,
                denied: Arc::new(Mutex::new(Vec::new())),
                max_response_bytes: spec.max_response_bytes,
            },
            plugin: spec.plugin,
            clock: spec.clock,
            logs_written: 0,
            logs_dropped: 0,
            lines: spec.lines,
        }
    }

    /// Requests the HTTP gate refused during this call (`METHOD url`).
    pub(crate) fn denied_requests(&self) -> Vec<String> {
        self.gate.denied.lock().unwrap().clone()
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for PluginState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.gate,
        }
    }
}

impl types::Host for PluginState {}

impl log::Host for PluginState {
    fn log(&mut self, level: log::Level, message: String, fields: Vec<(String, String)>) {
        if self.logs_written >= MAX_LOG_RECORDS {
            self.logs_dropped += 1;
            return;
        }
        self.logs_written += 1;
        let message = clip(&message, MAX_LOG_TEXT);
        let fields = fields
            .iter()
            .take(16)
            .map(|(k, v)| format!("{}={}", clip(k, 64), clip(v, MAX_LOG_TEXT)))
            .collect::<Vec<_>>()
            .join(" ");
        let plugin = &*self.plugin;
        match level {
            log::Level::Trace => {
                tracing::trace!(target: "cnp::plugin", plugin, fields, "{message}")
            }
            log::Level::Debug => {
                tracing::debug!(target: "cnp::plugin", plugin, fields, "{message}")
            }
            log::Level::Info => tracing::info!(target: "cnp::plugin", plugin, fields, "{message}"),
            log::Level::Warn => tracing::warn!(target: "cnp::plugin", plugin, fields, "{message}"),
            log::Level::Error => {
                tracing::error!(target: "cnp::plugin", plugin, fields, "{message}")
            }
        }
    }
}

impl output::Host for PluginState {
    fn emit_line(&mut self, channel: output::Channel, line: String) {
        if let Some(sink) = &self.lines {
            sink(channel == output::Channel::Stderr, &line);
        }
    }
}

impl clock::Host for PluginState {
    fn now(&mut self) -> i64 {
        self.clock.now().timestamp_millis()
    }

    fn to_local(&mut self, at: i64, zone: String) -> Result<clock::LocalTime, String> {
        to_local(at, &zone)
    }
}

/// The civil time of `at` (Unix ms) in `zone`.
pub(crate) fn to_local(at: i64, zone: &str) -> Result<clock::LocalTime, String> {
    let tz: chrono_tz::Tz = zone
        .parse()
        .map_err(|_| format!("unknown time zone `{zone}`"))?;
    let utc = DateTime::<Utc>::from_timestamp_millis(at)
        .ok_or_else(|| format!("instant {at} ms is out of range"))?;
    let local = tz.from_utc_datetime(&utc.naive_utc());
    Ok(clock::LocalTime {
        year: local.year(),
        month: local.month() as u8,
        day: local.day() as u8,
        hour: local.hour() as u8,
        minute: local.minute() as u8,
        second: local.second() as u8,
        weekday: local.weekday().number_from_monday() as u8,
        utc_offset_seconds: local.offset().fix().local_minus_utc(),
    })
}

/// WASI's wall clock reads the engine's clock, so `std::time::SystemTime::now()` in a plugin
/// agrees with the `clock` import (and with tests that control time).
struct EngineWallClock(Clock);

impl HostWallClock for EngineWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }

    fn now(&self) -> Duration {
        let now = self.0.now();
        Duration::new(now.timestamp().max(0) as u64, now.timestamp_subsec_nanos())
    }
}

/// A guest's stdout and stderr for one call, each kept up to a bound.
#[derive(Clone)]
pub(crate) struct CapturedOutput {
    pub stdout: BoundedPipe,
    pub stderr: BoundedPipe,
}

impl CapturedOutput {
    pub(crate) fn new(max_bytes: usize) -> CapturedOutput {
        CapturedOutput {
            stdout: BoundedPipe::new(max_bytes),
            stderr: BoundedPipe::new(max_bytes),
        }
    }
}

/// An output stream that keeps the first `capacity` bytes and counts (drops) the rest, so a
/// chatty plugin never fills memory and never fails because of its own output.
#[derive(Clone)]
pub(crate) struct BoundedPipe {
    inner: Arc<Mutex<PipeBuf>>,
}

#[derive(Default)]
struct PipeBuf {
    kept: Vec<u8>,
    capacity: usize,
    dropped: u64,
}

impl BoundedPipe {
    fn new(capacity: usize) -> BoundedPipe {
        BoundedPipe {
            inner: Arc::new(Mutex::new(PipeBuf {
                capacity,
                ..PipeBuf::default()
            })),
        }
    }

    fn push(&self, bytes: &[u8]) {
        let mut b = self.inner.lock().unwrap();
        let room = b.capacity.saturating_sub(b.kept.len());
        let take = room.min(bytes.len());
        b.kept.extend_from_slice(&bytes[..take]);
        b.dropped += (bytes.len() - take) as u64;
    }

    /// The most telling line kept so far, without consuming anything: a Rust panic's message
    /// (the line after `panicked at …`), else the last line that is not a `note:`.
    pub(crate) fn peek_reason(&self) -> Option<String> {
        let b = self.inner.lock().unwrap();
        let text = String::from_utf8_lossy(&b.kept);
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let panic = lines
            .iter()
            .rposition(|l| l.contains("panicked at"))
            .and_then(|i| lines.get(i + 1))
            .filter(|l| !l.starts_with("note:"));
        panic
            .or_else(|| lines.iter().rev().find(|l| !l.starts_with("note:")))
            .map(|l| clip(l, 512).to_owned())
    }

    /// What was kept (lossy UTF-8) and how many bytes were dropped.
    pub(crate) fn take(&self) -> (String, u64) {
        let mut b = self.inner.lock().unwrap();
        let text = String::from_utf8_lossy(&b.kept).into_owned();
        b.kept.clear();
        (text, std::mem::take(&mut b.dropped))
    }
}

impl IsTerminal for BoundedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for BoundedPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for BoundedPipe {
    async fn ready(&mut self) {}
}

impl OutputStream for BoundedPipe {
    fn write(&mut self, bytes: bytes::Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for BoundedPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// One entry of a plugin's `allowed_hosts` grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRule {
    /// Lower-case host name or IP literal; a leading `*.` matches any subdomain.
    host: String,
    port: PortRule,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PortRule {
    /// No port given: the scheme's default port only (80 for http, 443 for https).
    Default,
    Any,
    Exact(u16),
}

impl HostRule {
    /// Parses `host`, `host:port`, `host:*`, `*.domain[:port]` or `[v6]:port`.
    pub fn parse(rule: &str) -> Result<HostRule, String> {
        let rule = rule.trim().to_ascii_lowercase();
        if rule.is_empty() {
            return Err("empty host".into());
        }
        if rule.contains("://") || rule.contains('/') {
            return Err(format!(
                "`{rule}`: give a host (and optional port), not a URL"
            ));
        }
        let (host, port) = if let Some(rest) = rule.strip_prefix('[') {
            let (h, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("`{rule}`: unclosed `[`"))?;
            (format!("[{h}]"), after.strip_prefix(':'))
        } else {
            match rule.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (rule.clone(), None),
            }
        };
        let port = match port {
            None => PortRule::Default,
            Some("*") => PortRule::Any,
            Some(p) => PortRule::Exact(
                p.parse()
                    .map_err(|_| format!("`{rule}`: `{p}` is not a port"))?,
            ),
        };
        let bare = host.strip_prefix("*.").unwrap_or(&host);
        if bare.is_empty() || bare.contains('*') {
            return Err(format!("`{rule}`: only a leading `*.` wildcard is allowed"));
        }
        Ok(HostRule { host, port })
    }

    fn matches(&self, host: &str, port: u16, default_port: u16) -> bool {
        let host_ok = match self.host.strip_prefix("*.") {
            Some(domain) => host
                .strip_suffix(domain)
                .is_some_and(|sub| sub.ends_with('.') && sub.len() > 1),
            None => host == self.host,
        };
        let port_ok = match self.port {
            PortRule::Default => port == default_port,
            PortRule::Any => true,
            PortRule::Exact(p) => port == p,
        };
        host_ok && port_ok
    }
}

/// Decides every outgoing request by its URI's authority (never by a guest-set `Host` header,
/// which wasi-http forbids guests to set: the host writes it from the authority, so a request
/// cannot name one host and reach another, CVE-2024-32980's pattern).
struct HttpGate {
    plugin: Arc<str>,
    allowed: Arc<[HostRule]>,
    denied: Arc<Mutex<Vec<String>>>,
    max_response_bytes: usize,
}

impl HttpGate {
    fn allows(&self, uri: &http::Uri) -> bool {
        let Some(authority) = uri.authority() else {
            return false;
        };
        // userinfo (`user@host`) is not part of `host()`; reject it outright.
        if authority.as_str().contains('@') {
            return false;
        }
        let default_port = if uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
            443
        } else {
            80
        };
        let host = authority.host().to_ascii_lowercase();
        let host = host.trim_end_matches('.');
        let port = authority.port_u16().unwrap_or(default_port);
        self.allowed
            .iter()
            .any(|r| r.matches(host, port, default_port))
    }
}

type SendFuture = Box<
    dyn std::future::Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<wasmtime_wasi_http::WasiBody>,
                Box<dyn std::future::Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for HttpGate {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn std::future::Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> SendFuture {
        let _ = fut;
        if !self.allows(request.uri()) {
            // The URL may carry a key in its path: keep it out of logs and execution records.
            let what = format!(
                "{} {}",
                request.method(),
                crate::redact::redact_url(&request.uri().to_string())
            );
            tracing::warn!(plugin = %self.plugin, request = %what, "plugin HTTP request refused: host not granted");
            self.denied.lock().unwrap().push(what);
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        let max = self.max_response_bytes;
        Box::new(async move {
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            // A body past the plugin's limit fails the read (the guest sees
            // `HTTP-response-body-size`); what the connection reported stays as it was.
            let capped = move |body| {
                http_body_util::Limited::new(body, max)
                    .map_err(move |e: Box<dyn std::error::Error + Send + Sync>| {
                        match e.downcast::<wasmtime_wasi_http::Error>() {
                            Ok(inner) => *inner,
                            Err(_) => {
                                wasmtime_wasi_http::Error::HttpResponseBodySize(Some(max as u64))
                            }
                        }
                    })
                    .boxed_unsync()
            };
            Ok((
                res.map(capped),
                Box::new(io) as Box<dyn std::future::Future<Output = _> + Send>,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(rules: &[&str]) -> HttpGate {
        HttpGate {
            plugin: "t".into(),
            allowed: rules.iter().map(|r| HostRule::parse(r).unwrap()).collect(),
            max_response_bytes: 1 << 20,
            denied: Arc::default(),
        }
    }

    fn allows(g: &HttpGate, uri: &str) -> bool {
        g.allows(&uri.parse().unwrap())
    }

    #[test]
    fn host_rules_match_host_and_port() {
        let g = gate(&["hooks.slack.com", "127.0.0.1:8080", "*.example.org:*"]);
        assert!(allows(&g, "https://hooks.slack.com/services/x"));
        assert!(allows(&g, "https://HOOKS.slack.com./x"));
        assert!(
            !allows(&g, "https://hooks.slack.com:8443/x"),
            "port not granted"
        );
        assert!(!allows(&g, "https://evil-hooks.slack.com/x"));
        assert!(!allows(&g, "https://hooks.slack.com.evil.net/x"));
        assert!(allows(&g, "http://127.0.0.1:8080/hook"));
        assert!(!allows(&g, "http://127.0.0.1:8081/hook"));
        assert!(!allows(&g, "http://127.0.0.1/hook"));
        assert!(allows(&g, "http://a.example.org:9/"));
        assert!(allows(&g, "http://a.b.example.org/"));
        assert!(
            !allows(&g, "http://example.org/"),
            "wildcard needs a subdomain"
        );
        assert!(
            !allows(&g, "http://user@127.0.0.1:8080/"),
            "userinfo refused"
        );
        assert!(!allows(&g, "/relative"));
        assert!(
            !allows(&gate(&[]), "https://hooks.slack.com/"),
            "nothing granted by default"
        );
    }

    #[test]
    fn bad_host_rules_are_errors() {
        assert!(HostRule::parse("https://x.com").is_err());
        assert!(HostRule::parse("x.com/path").is_err());
        assert!(HostRule::parse("x.com:port").is_err());
        assert!(HostRule::parse("a.*.com").is_err());
        assert!(HostRule::parse("").is_err());
        assert!(HostRule::parse("[::1]:80").is_ok());
    }

    #[test]
    fn local_time_in_zones() {
        // 2026-03-29 01:30 UTC: Berlin has just sprung forward to CEST (+2).
        let at = DateTime::parse_from_rfc3339("2026-03-29T01:30:00Z")
            .unwrap()
            .timestamp_millis();
        let t = to_local(at, "Europe/Berlin").unwrap();
        assert_eq!(
            (t.hour, t.minute, t.utc_offset_seconds, t.weekday),
            (3, 30, 7200, 7)
        );
        assert!(to_local(at, "Mars/Olympus").is_err());
    }

    #[test]
    fn the_reason_of_a_rust_panic_is_its_message() {
        let p = BoundedPipe::new(4096);
        p.push(b"starting\nthread '<unnamed>' panicked at src/lib.rs:9:5:\nboom: bad config\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n");
        assert_eq!(p.peek_reason().as_deref(), Some("boom: bad config"));
        let q = BoundedPipe::new(4096);
        q.push(b"some output\nnote: trailing\n");
        assert_eq!(q.peek_reason().as_deref(), Some("some output"));
        assert_eq!(BoundedPipe::new(8).peek_reason(), None);
    }

    #[test]
    fn bounded_pipe_keeps_a_prefix_and_counts_the_rest() {
        let p = BoundedPipe::new(5);
        p.push(b"hello world");
        assert_eq!(p.take(), ("hello".to_owned(), 6));
    }
}
