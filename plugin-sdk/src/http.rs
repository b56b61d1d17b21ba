//! A small blocking HTTP client for notifiers, over the `wasi:http/outgoing-handler` import.
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

use crate::bindings::wasi::http::outgoing_handler;
use crate::bindings::wasi::http::types::{
    ErrorCode, Fields, HeaderError, IncomingBody, Method as WitMethod, OutgoingBody,
    OutgoingRequest, Scheme,
};
use crate::bindings::wasi::io::streams::StreamError;
use crate::PluginError;
use std::fmt;

/// The most bytes of a response body that are read; the rest is dropped.
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

/// A response: its status and (up to [`MAX_RESPONSE_BODY`] bytes of) its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    /// The body, cut at [`MAX_RESPONSE_BODY`] bytes.
    pub body: Vec<u8>,
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
                write!(f, "request to {authority} denied by the host (not a granted host)")
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
            HttpError::Failed { .. } => PluginError::Unavailable(e.to_string()),
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
        let (scheme, rest) = url.split_once("://").ok_or_else(|| invalid("not an absolute URL"))?;
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
        if authority.chars().any(|c| c.is_whitespace() || c.is_control()) || path_and_query.contains(char::is_whitespace) {
            return Err(invalid("contains whitespace"));
        }
        let path_and_query = match path_and_query {
            "" => "/".to_owned(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_owned(),
        };
        Ok(Url { https, authority: authority.to_owned(), path_and_query })
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
        write!(f, "{}://{}{}", self.scheme(), self.authority, self.path_and_query)
    }
}

/// `POST`s `body` to `url` with `headers`; see [`request`].
pub fn post(url: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Response, HttpError> {
    request(Method::Post, url, headers, body)
}

/// `POST`s `value` as JSON (`Content-Type: application/json`) to `url`; see [`request`].
pub fn post_json(url: &str, value: &serde_json::Value) -> Result<Response, HttpError> {
    let body = serde_json::to_vec(value).expect("a serde_json::Value always serializes");
    request(Method::Post, url, &[("content-type", "application/json")], &body)
}

/// `GET`s `url` with `headers`; see [`request`].
pub fn get(url: &str, headers: &[(&str, &str)]) -> Result<Response, HttpError> {
    request(Method::Get, url, headers, &[])
}

/// Sends one request and waits for the response, reading at most [`MAX_RESPONSE_BODY`] bytes
/// of its body. Any status is a response (check [`Response::is_success`]); an `Err` means no
/// response arrived. A `Content-Length` header is added unless given.
pub fn request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, HttpError> {
    let url = Url::parse(url)?;
    let authority = url.authority().to_owned();
    let failed = |reason: String| HttpError::Failed { authority: authority.clone(), reason };

    let fields = request_headers(method, headers, body.len())?;
    let request = OutgoingRequest::new(fields);
    let scheme = if url.https { Scheme::Https } else { Scheme::Http };
    let invalid_url = |part: &str| HttpError::InvalidUrl(format!("{url}: the host rejected the {part}"));
    request.set_method(&method.to_wit()).map_err(|()| invalid_url("method"))?;
    request.set_scheme(Some(&scheme)).map_err(|()| invalid_url("scheme"))?;
    request.set_authority(Some(url.authority())).map_err(|()| invalid_url("authority"))?;
    request.set_path_with_query(Some(url.path_and_query())).map_err(|()| invalid_url("path"))?;
    let outgoing_body = request.body().map_err(|()| failed("request body already taken".into()))?;

    // Send first, then stream the body: the host buffers little of an unsent body, so writing
    // a large one before `handle` could wait forever.
    let future = outgoing_handler::handle(request, None).map_err(|code| error_from_code(&url, code))?;

    let written = write_body(&outgoing_body, body).map_err(failed);
    let finished = match written {
        Ok(()) => OutgoingBody::finish(outgoing_body, None).map_err(|code| error_from_code(&url, code)),
        Err(e) => {
            drop(outgoing_body); // unfinished: the host abandons the request
            Err(e)
        }
    };

    let pollable = future.subscribe();
    pollable.block();
    drop(pollable);
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
    let incoming = response.consume().map_err(|()| failed("response body already taken".into()))?;
    let read = read_body(&incoming);
    drop(IncomingBody::finish(incoming));
    drop(response);
    Ok(Response { status, body: read.map_err(failed)? })
}

fn request_headers(method: Method, headers: &[(&str, &str)], body_len: usize) -> Result<Fields, HttpError> {
    let mut entries: Vec<(String, Vec<u8>)> =
        headers.iter().map(|(name, value)| ((*name).to_owned(), value.as_bytes().to_vec())).collect();
    let has_length = headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-length"));
    if !has_length && (body_len > 0 || !matches!(method, Method::Get | Method::Delete)) {
        entries.push(("content-length".to_owned(), body_len.to_string().into_bytes()));
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
        HttpError::InvalidHeader { name: culprit, reason }
    })
}

fn write_body(outgoing: &OutgoingBody, body: &[u8]) -> Result<(), String> {
    if body.is_empty() {
        return Ok(());
    }
    let stream = outgoing.write().map_err(|()| "request body stream already taken".to_owned())?;
    for chunk in body.chunks(WRITE_CHUNK) {
        stream.blocking_write_and_flush(chunk).map_err(|e| match e {
            StreamError::Closed => "the request body stream was closed".to_owned(),
            StreamError::LastOperationFailed(err) => format!("writing the request: {}", err.to_debug_string()),
        })?;
    }
    // `stream` drops here, before its parent body is finished (the host traps otherwise).
    Ok(())
}

fn read_body(incoming: &IncomingBody) -> Result<Vec<u8>, String> {
    let stream = incoming.stream().map_err(|()| "response body stream taken".to_owned())?;
    let mut body = Vec::new();
    while body.len() < MAX_RESPONSE_BODY {
        let want = (MAX_RESPONSE_BODY - body.len()).min(16 * 1024) as u64;
        match stream.blocking_read(want) {
            Ok(bytes) => body.extend_from_slice(&bytes),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(err)) => {
                return Err(format!("reading the response: {}", err.to_debug_string()))
            }
        }
    }
    Ok(body)
}

fn error_from_code(url: &Url, code: ErrorCode) -> HttpError {
    let authority = url.authority().to_owned();
    match code {
        ErrorCode::HttpRequestDenied => HttpError::Denied { authority },
        other => HttpError::Failed { authority, reason: format!("{other:?}") },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_scheme_authority_and_path() {
        let u = Url::parse("https://hooks.slack.com/services/T/B/X?a=1#frag").unwrap();
        assert_eq!((u.scheme(), u.authority(), u.host()), ("https", "hooks.slack.com", "hooks.slack.com"));
        assert_eq!(u.path_and_query(), "/services/T/B/X?a=1");

        let u = Url::parse("HTTP://127.0.0.1:8080").unwrap();
        assert_eq!((u.scheme(), u.authority(), u.host(), u.path_and_query()), ("http", "127.0.0.1:8080", "127.0.0.1", "/"));

        let u = Url::parse("http://[::1]:9000?x").unwrap();
        assert_eq!((u.host(), u.path_and_query()), ("[::1]", "/?x"));
        assert_eq!(u.to_string(), "http://[::1]:9000/?x");
    }

    #[test]
    fn bad_urls_are_rejected() {
        for bad in ["hooks.slack.com/x", "ftp://x/", "https:///path", "https://user@host/", "https://a b/"] {
            assert!(matches!(Url::parse(bad), Err(HttpError::InvalidUrl(_))), "{bad}");
        }
    }
}
