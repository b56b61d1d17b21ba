//! A small blocking HTTP client for notifiers and executors, over the
//! `wasi:http/outgoing-handler` import.
//!
//! Only the hosts granted in the plugin's sidecar file (`[grants] allowed_hosts`) are reachable;
//! the host checks every request and answers the others with [`HttpError::Denied`]. Headers the
//! host controls (`Host`, `Connection`, `Transfer-Encoding`, ...) cannot be set by a plugin:
//! trying gives [`HttpError::InvalidHeader`].
//!
//! ```ignore
//! use cnp_plugin_sdk::{http, serde_json::json};
//!
//! let response = http::post_json("https://hooks.slack.com/services/T0/B0/X", &json!({"text": "hi"}))?;
//! if !response.is_success() { /* ... */ }
//! ```
//!
//! [`Request`] adds a timeout and a larger response body limit; [`Response::header`] reads the
//! response's headers.

use crate::bindings::wasi::clocks::monotonic_clock;
use crate::bindings::wasi::http::outgoing_handler;
use crate::bindings::wasi::http::types::{
    ErrorCode, Fields, HeaderError, IncomingBody, Method as WitMethod, OutgoingBody,
    OutgoingRequest, RequestOptions, Scheme,
};
use crate::bindings::wasi::io::poll::{self, Pollable};
use crate::bindings::wasi::io::streams::StreamError;
use crate::PluginError;
use serde::de::DeserializeOwned;
use std::fmt;
use std::time::Duration;

/// The most bytes of a response body that are read unless [`Request::max_response_bytes`]
/// says otherwise; the rest is dropped.
pub const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// The largest piece of request body written at once (what `blocking-write-and-flush` accepts).
const WRITE_CHUNK: usize = 4096;

/// An HTTP request method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`.
    Get,
    /// `POST`.
    Post,
    /// `PUT`.
    Put,
    /// `PATCH`.
    Patch,
    /// `DELETE`.
    Delete,
}

impl Method {
    fn to_wit(self) -> WitMethod {
        match self {
            Method::Get => WitMethod::Get,
            Method::Post => WitMethod::Post,
            Method::Put => WitMethod::Put,
            Method::Patch => WitMethod::Patch,
            Method::Delete => WitMethod::Delete,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        })
    }
}

/// A response: its status, headers and (up to the request's limit, [`MAX_RESPONSE_BODY`] by
/// default) its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    /// The headers, names in lower case as the host gives them, in order (invalid UTF-8 in a
    /// value replaced).
    pub headers: Vec<(String, String)>,
    /// The body, cut at the request's limit.
    pub body: Vec<u8>,
    /// Whether the body was longer than the limit (and cut).
    pub truncated: bool,
}

impl Response {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON into `T` (`serde_json::Value` for anything).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The URL is not an absolute `http://` or `https://` URL this client understands.
    InvalidUrl(String),
    /// A header was rejected: its name or value is invalid, or the host controls it (`Host`).
    InvalidHeader {
        /// The header's name.
        name: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The host refused the request: the plugin was not granted this host.
    Denied {
        /// The `host[:port]` the request was for.
        authority: String,
    },
    /// No complete response within the request's [timeout](Request::timeout).
    TimedOut {
        /// The `host[:port]` the request was for.
        authority: String,
        /// The timeout.
        after: Duration,
    },
    /// The request was sent (or tried) but failed: DNS, connection, TLS, timeout, protocol.
    Failed {
        /// The `host[:port]` the request was for.
        authority: String,
        /// The host's description of the failure.
        reason: String,
    },
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::InvalidUrl(m) => write!(f, "invalid URL: {m}"),
            HttpError::InvalidHeader { name, reason } => write!(f, "header `{name}`: {reason}"),
            HttpError::Denied { authority } => {
                write!(
                    f,
                    "request to {authority} denied by the host (not a granted host)"
                )
            }
            HttpError::TimedOut { authority, after } => {
                write!(
                    f,
                    "request to {authority} timed out after {:.1} s",
                    after.as_secs_f64()
                )
            }
            HttpError::Failed { authority, reason } => {
                write!(f, "request to {authority} failed: {reason}")
            }
        }
    }
}

impl std::error::Error for HttpError {}

/// A bad URL or header is a configuration problem, a denied host a failure (grant it), and
/// anything else the far end being unavailable.
impl From<HttpError> for PluginError {
    fn from(e: HttpError) -> Self {
        match e {
            HttpError::InvalidUrl(_) | HttpError::InvalidHeader { .. } => {
                PluginError::InvalidConfig(e.to_string())
            }
            HttpError::Denied { .. } => PluginError::Failed(e.to_string()),
            HttpError::TimedOut { .. } | HttpError::Failed { .. } => {
                PluginError::Unavailable(e.to_string())
            }
        }
    }
}

/// An absolute `http`/`https` URL, split the way an outgoing request needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    https: bool,
    authority: String,
    path_and_query: String,
}

impl Url {
    /// Parses `scheme://authority[/path][?query][#fragment]`; the scheme must be `http` or
    /// `https`, the authority non-empty and without user info. The fragment is dropped.
    pub fn parse(url: &str) -> Result<Url, HttpError> {
        let invalid = |why: &str| HttpError::InvalidUrl(format!("{url:?}: {why}"));
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| invalid("not an absolute URL"))?;
        let https = match scheme.to_ascii_lowercase().as_str() {
            "https" => true,
            "http" => false,
            _ => return Err(invalid("only http and https are supported")),
        };
        let rest = rest.split('#').next().unwrap_or_default();
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path_and_query) = rest.split_at(end);
        if authority.is_empty() {
            return Err(invalid("no host"));
        }
        if authority.contains('@') {
            return Err(invalid("user info in URLs is not supported"));
        }
        if authority
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
            || path_and_query.contains(char::is_whitespace)
        {
            return Err(invalid("contains whitespace"));
        }
        let path_and_query = match path_and_query {
            "" => "/".to_owned(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_owned(),
        };
        Ok(Url {
            https,
            authority: authority.to_owned(),
            path_and_query,
        })
    }

    /// `"https"` or `"http"`.
    pub fn scheme(&self) -> &str {
        if self.https {
            "https"
        } else {
            "http"
        }
    }

    /// `host[:port]`.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The host name or address, without the port (IPv6 addresses keep their brackets).
    pub fn host(&self) -> &str {
        let a = self.authority.as_str();
        if a.starts_with('[') {
            return a.find(']').map_or(a, |end| &a[..=end]);
        }
        a.rsplit_once(':').map_or(a, |(host, _port)| host)
    }

    /// The path and query, always starting with `/`.
    pub fn path_and_query(&self) -> &str {
        &self.path_and_query
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.scheme(),
            self.authority,
            self.path_and_query
        )
    }
}

/// `POST`s `body` to `url` with `headers`; see [`request`].
pub fn post(url: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Response, HttpError> {
    request(Method::Post, url, headers, body)
}

/// `POST`s `value` as JSON (`Content-Type: application/json`) to `url`; see [`request`].
pub fn post_json(url: &str, value: &serde_json::Value) -> Result<Response, HttpError> {
    Request::post(url).json(value).send()
}

/// `GET`s `url` with `headers`; see [`request`].
pub fn get(url: &str, headers: &[(&str, &str)]) -> Result<Response, HttpError> {
    request(Method::Get, url, headers, &[])
}

/// Sends one request and waits for the response, reading at most [`MAX_RESPONSE_BODY`] bytes
/// of its body. Any status is a response (check [`Response::is_success`]); an `Err` means no
/// response arrived. A `Content-Length` header is added unless given. For a timeout or a
/// larger body limit, use [`Request`].
pub fn request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, HttpError> {
    let mut request = Request::new(method, url).body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send()
}

/// A request to build up and [`send`](Request::send), when [`post`]/[`get`] are not enough:
/// a timeout, a larger response body, headers built at run time.
///
/// ```ignore
/// let response = http::Request::post("https://api.example.com/v1/run")
///     .header("authorization", &format!("Bearer {token}"))
///     .json(&json!({"input": prompt}))
///     .timeout(request.remaining())
///     .max_response_bytes(4 << 20)
///     .send()?;
/// let retry_after = response.header("retry-after");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    method: Method,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    timeout: Option<Duration>,
    max_response_bytes: usize,
}

impl Request {
    /// A `method` request to `url`, without headers or body, no timeout and a response body
    /// limit of [`MAX_RESPONSE_BODY`].
    pub fn new(method: Method, url: impl Into<String>) -> Self {
        Request {
            method,
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout: None,
            max_response_bytes: MAX_RESPONSE_BODY,
        }
    }

    /// A `GET` request to `url`.
    pub fn get(url: impl Into<String>) -> Self {
        Request::new(Method::Get, url)
    }

    /// A `POST` request to `url`.
    pub fn post(url: impl Into<String>) -> Self {
        Request::new(Method::Post, url)
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets the body to `value` as JSON, and `Content-Type: application/json` unless a
    /// content type was already given.
    pub fn json(mut self, value: &serde_json::Value) -> Self {
        self.body = serde_json::to_vec(value).expect("a serde_json::Value always serializes");
        if !self
            .headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        {
            self.headers
                .push(("content-type".to_owned(), "application/json".to_owned()));
        }
        self
    }

    /// Gives up after `timeout` in all (connecting, waiting for the answer and reading its
    /// body) with [`HttpError::TimedOut`]. For an executor, pass
    /// [`RunRequest::remaining`](crate::RunRequest::remaining) (or less).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Reads at most `bytes` of the response body (default [`MAX_RESPONSE_BODY`]); the rest
    /// is dropped and [`Response::truncated`] set. The host may cap bodies lower (an
    /// executor's sidecar `[limits] max_response_bytes`).
    pub fn max_response_bytes(mut self, bytes: usize) -> Self {
        self.max_response_bytes = bytes;
        self
    }

    /// Sends the request and waits for the response. Any status is a response (check
    /// [`Response::is_success`]); an `Err` means no response arrived. A `Content-Length`
    /// header is added unless given.
    pub fn send(self) -> Result<Response, HttpError> {
        send(self)
    }
}

/// A deadline on the monotonic clock, if the request has a timeout.
struct Deadline(Option<(monotonic_clock::Instant, Duration)>);

impl Deadline {
    fn start(timeout: Option<Duration>) -> Self {
        Deadline(timeout.map(|t| {
            let nanos = u64::try_from(t.as_nanos()).unwrap_or(u64::MAX);
            (monotonic_clock::now().saturating_add(nanos), t)
        }))
    }

    /// Waits until `pollable` is ready (true) or the deadline passes (false).
    fn wait(&self, pollable: &Pollable) -> bool {
        match self.0 {
            None => {
                pollable.block();
                true
            }
            Some((at, _)) => {
                let timer = monotonic_clock::subscribe_instant(at);
                let ready = poll::poll(&[pollable, &timer]);
                ready.contains(&0)
            }
        }
    }

    fn timed_out(&self, authority: &str) -> HttpError {
        let after = self.0.map_or(Duration::ZERO, |(_, t)| t);
        HttpError::TimedOut {
            authority: authority.to_owned(),
            after,
        }
    }
}

fn send(req: Request) -> Result<Response, HttpError> {
    let deadline = Deadline::start(req.timeout);
    let url = Url::parse(&req.url)?;
    let authority = url.authority().to_owned();
    let failed = |reason: String| HttpError::Failed {
        authority: authority.clone(),
        reason,
    };

    let headers: Vec<(&str, &str)> = req
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let fields = request_headers(req.method, &headers, req.body.len())?;
    let request = OutgoingRequest::new(fields);
    let scheme = if url.https {
        Scheme::Https
    } else {
        Scheme::Http
    };
    let invalid_url =
        |part: &str| HttpError::InvalidUrl(format!("{url}: the host rejected the {part}"));
    request
        .set_method(&req.method.to_wit())
        .map_err(|()| invalid_url("method"))?;
    request
        .set_scheme(Some(&scheme))
        .map_err(|()| invalid_url("scheme"))?;
    request
        .set_authority(Some(url.authority()))
        .map_err(|()| invalid_url("authority"))?;
    request
        .set_path_with_query(Some(url.path_and_query()))
        .map_err(|()| invalid_url("path"))?;
    let outgoing_body = request
        .body()
        .map_err(|()| failed("request body already taken".into()))?;

    // The host's own timeouts too (a host that does not support one refuses it: ignored).
    let options = req.timeout.map(|t| {
        let nanos = u64::try_from(t.as_nanos()).unwrap_or(u64::MAX);
        let options = RequestOptions::new();
        let _ = options.set_connect_timeout(Some(nanos));
        let _ = options.set_first_byte_timeout(Some(nanos));
        let _ = options.set_between_bytes_timeout(Some(nanos));
        options
    });

    // Send first, then stream the body: the host buffers little of an unsent body, so writing
    // a large one before `handle` could wait forever.
    let future =
        outgoing_handler::handle(request, options).map_err(|code| error_from_code(&url, code))?;

    let written = write_body(&outgoing_body, &req.body).map_err(failed);
    let finished = match written {
        Ok(()) => {
            OutgoingBody::finish(outgoing_body, None).map_err(|code| error_from_code(&url, code))
        }
        Err(e) => {
            drop(outgoing_body); // unfinished: the host abandons the request
            Err(e)
        }
    };

    let pollable = future.subscribe();
    let arrived = deadline.wait(&pollable);
    drop(pollable);
    if !arrived {
        drop(future); // abandons the request
        return Err(deadline.timed_out(&authority));
    }
    let response = match future.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => return Err(error_from_code(&url, code)),
        // A body error says more than "no response" when the request ended early.
        Some(Err(())) | None => {
            finished?;
            return Err(failed("no response".into()));
        }
    };
    drop(future);
    finished?;

    let status = response.status();
    let response_headers = {
        let fields = response.headers();
        let entries = fields.entries();
        drop(fields);
        entries
            .into_iter()
            .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
            .collect()
    };
    let incoming = response
        .consume()
        .map_err(|()| failed("response body already taken".into()))?;
    let read = read_body(&incoming, req.max_response_bytes, &deadline);
    drop(IncomingBody::finish(incoming));
    drop(response);
    let (body, truncated) = match read {
        Ok(read) => read,
        Err(ReadError::TimedOut) => return Err(deadline.timed_out(&authority)),
        Err(ReadError::Failed(reason)) => return Err(failed(reason)),
    };
    Ok(Response {
        status,
        headers: response_headers,
        body,
        truncated,
    })
}

fn request_headers(
    method: Method,
    headers: &[(&str, &str)],
    body_len: usize,
) -> Result<Fields, HttpError> {
    let mut entries: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(name, value)| ((*name).to_owned(), value.as_bytes().to_vec()))
        .collect();
    let has_length = headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("content-length"));
    if !has_length && (body_len > 0 || !matches!(method, Method::Get | Method::Delete)) {
        entries.push((
            "content-length".to_owned(),
            body_len.to_string().into_bytes(),
        ));
    }
    Fields::from_list(&entries).map_err(|e| {
        // Name the offending header: try them one at a time.
        let culprit = entries
            .iter()
            .find(|entry| Fields::from_list(std::slice::from_ref(entry)).is_err())
            .map_or_else(|| "(unknown)".to_owned(), |(name, _)| name.clone());
        let reason = match e {
            HeaderError::Forbidden => "the host controls this header".to_owned(),
            HeaderError::InvalidSyntax => "invalid name or value".to_owned(),
            HeaderError::Immutable => "headers are immutable".to_owned(),
        };
        HttpError::InvalidHeader {
            name: culprit,
            reason,
        }
    })
}

fn write_body(outgoing: &OutgoingBody, body: &[u8]) -> Result<(), String> {
    if body.is_empty() {
        return Ok(());
    }
    let stream = outgoing
        .write()
        .map_err(|()| "request body stream already taken".to_owned())?;
    for chunk in body.chunks(WRITE_CHUNK) {
        stream
            .blocking_write_and_flush(chunk)
            .map_err(|e| match e {
                StreamError::Closed => "the request body stream was closed".to_owned(),
                StreamError::LastOperationFailed(err) => {
                    format!("writing the request: {}", err.to_debug_string())
                }
            })?;
    }
    // `stream` drops here, before its parent body is finished (the host traps otherwise).
    Ok(())
}

enum ReadError {
    TimedOut,
    Failed(String),
}

/// Reads up to `limit` bytes of the body; the flag says whether more was left unread.
fn read_body(
    incoming: &IncomingBody,
    limit: usize,
    deadline: &Deadline,
) -> Result<(Vec<u8>, bool), ReadError> {
    let stream = incoming
        .stream()
        .map_err(|()| ReadError::Failed("response body stream taken".to_owned()))?;
    let mut body = Vec::new();
    loop {
        // One byte past the limit tells whether the body was cut.
        let want = (limit.saturating_add(1) - body.len()).min(64 * 1024) as u64;
        match stream.read(want) {
            Ok(bytes) if bytes.is_empty() => {
                let pollable = stream.subscribe();
                let ready = deadline.wait(&pollable);
                drop(pollable);
                if !ready {
                    return Err(ReadError::TimedOut);
                }
            }
            Ok(bytes) => body.extend_from_slice(&bytes),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(err)) => {
                return Err(ReadError::Failed(format!(
                    "reading the response: {}",
                    err.to_debug_string()
                )))
            }
        }
        if body.len() > limit {
            body.truncate(limit);
            return Ok((body, true));
        }
    }
    Ok((body, false))
}

fn error_from_code(url: &Url, code: ErrorCode) -> HttpError {
    let authority = url.authority().to_owned();
    match code {
        ErrorCode::HttpRequestDenied => HttpError::Denied { authority },
        other => HttpError::Failed {
            authority,
            reason: format!("{other:?}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_scheme_authority_and_path() {
        let u = Url::parse("https://hooks.slack.com/services/T/B/X?a=1#frag").unwrap();
        assert_eq!(
            (u.scheme(), u.authority(), u.host()),
            ("https", "hooks.slack.com", "hooks.slack.com")
        );
        assert_eq!(u.path_and_query(), "/services/T/B/X?a=1");

        let u = Url::parse("HTTP://127.0.0.1:8080").unwrap();
        assert_eq!(
            (u.scheme(), u.authority(), u.host(), u.path_and_query()),
            ("http", "127.0.0.1:8080", "127.0.0.1", "/")
        );

        let u = Url::parse("http://[::1]:9000?x").unwrap();
        assert_eq!((u.host(), u.path_and_query()), ("[::1]", "/?x"));
        assert_eq!(u.to_string(), "http://[::1]:9000/?x");
    }

    #[test]
    fn bad_urls_are_rejected() {
        for bad in [
            "hooks.slack.com/x",
            "ftp://x/",
            "https:///path",
            "https://user@host/",
            "https://a b/",
        ] {
            assert!(
                matches!(Url::parse(bad), Err(HttpError::InvalidUrl(_))),
                "{bad}"
            );
        }
    }
}
