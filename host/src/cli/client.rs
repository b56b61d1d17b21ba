//! The daemon's HTTP + WebSocket API as the CLI uses it: finding the address and token,
//! requests with bearer auth, error bodies turned into readable errors, pagination.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::model::{ExecutionDetail, Job, JobExecution, Prompt};

/// Where the API listens when nothing says otherwise.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:8377";
/// The token file's name in the data folder (`[api] token_file` overrides the whole path).
pub const TOKEN_FILE_NAME: &str = "api-token";
/// Written by the daemon next to its token file: the address it actually bound.
pub const ADDRESS_FILE_NAME: &str = "api-address";

/// Page size for listing everything.
const PAGE: usize = 500;

/// Why a request failed; [`ClientError::exit_code`] is the process exit code it stands for.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens at the address (connection refused, unreachable).
    #[error("cnp is not running at {url} (start it with `cnp serve`)")]
    NotRunning { url: String },
    /// The API answered with an error body.
    #[error("{message}{}", field.as_ref().map(|f| format!(" (field: {f})")).unwrap_or_default())]
    Api {
        status: u16,
        code: String,
        message: String,
        field: Option<String>,
    },
    /// Anything else on the way (timeouts, bad responses).
    #[error("{0}")]
    Transport(String),
}

impl ClientError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::NotRunning { .. } => super::EXIT_NOT_RUNNING,
            _ => super::EXIT_FAILURE,
        }
    }

    /// Whether this is the API saying "no such thing".
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::Api { status: 404, .. })
    }
}

/// The API's error body: `{"error": {"code", "message", "field"}}`.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    code: String,
    message: String,
    #[serde(default)]
    field: Option<String>,
}

/// One page of a listing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    #[serde(default)]
    pub total: u64,
    #[serde(default)]
    pub limit: u64,
    #[serde(default)]
    pub offset: u64,
}

/// Where the API is and how to authenticate, before connecting.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// `http://host:port`, without a trailing slash.
    pub url: String,
    pub token: Option<String>,
    /// Where the token came from, for error messages.
    pub token_source: String,
    /// The config's `scheduler.timezone` (cron jobs without a zone use it), for descriptions.
    pub timezone: chrono_tz::Tz,
}

/// The parts of the config file the client needs, read leniently so a client never refuses to
/// talk to a daemon because of a config key it does not know.
#[derive(Debug, Default, Deserialize)]
struct LooseConfig {
    #[serde(default)]
    api: LooseApi,
    #[serde(default)]
    scheduler: LooseScheduler,
}

#[derive(Debug, Default, Deserialize)]
struct LooseApi {
    token_file: Option<PathBuf>,
    bind: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct LooseScheduler {
    timezone: Option<String>,
}

/// Overrides from flags or the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub api_url: Option<String>,
    pub token: Option<String>,
}

/// The default token file: `<data dir>/cnp/api-token`.
pub fn default_token_file() -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("cnp")
        .join(TOKEN_FILE_NAME)
}

/// Finds the API: `--api-url`/`CNP_API_URL`, else the address the daemon wrote next to its
/// token file, else the config's `[api] bind`, else [`DEFAULT_ADDRESS`]; the token from
/// `--token`/`CNP_API_TOKEN`, else the token file (`[api] token_file` or the default).
pub fn discover(config_path: Option<&Path>, o: &Overrides) -> anyhow::Result<Endpoint> {
    use anyhow::Context;
    let path = config_path
        .map(Path::to_path_buf)
        .or_else(crate::config::Config::discover);
    let loose: LooseConfig = match &path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read config file {}", p.display()))?;
            toml::from_str(&text)
                .with_context(|| format!("config file {} is not valid TOML", p.display()))?
        }
        None => LooseConfig::default(),
    };
    let token_file = loose.api.token_file.unwrap_or_else(default_token_file);
    let timezone = loose
        .scheduler
        .timezone
        .as_deref()
        .and_then(|t| crate::schedule::parse_timezone(t).ok())
        .unwrap_or(chrono_tz::UTC);
    let url = match o.api_url.as_deref().filter(|u| !u.trim().is_empty()) {
        Some(u) => normalize_url(u),
        None => {
            let written = token_file
                .parent()
                .map(|d| d.join(ADDRESS_FILE_NAME))
                .and_then(|f| std::fs::read_to_string(f).ok())
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty());
            let configured = loose.api.bind.filter(|b| !b.ends_with(":0")).map(|b| {
                b.replace("0.0.0.0:", "127.0.0.1:")
                    .replace("[::]:", "[::1]:")
            });
            normalize_url(
                &written
                    .or(configured)
                    .unwrap_or_else(|| DEFAULT_ADDRESS.into()),
            )
        }
    };
    let (token, token_source) = match o.token.as_deref().filter(|t| !t.trim().is_empty()) {
        Some(t) => (
            Some(t.trim().to_owned()),
            "--token/CNP_API_TOKEN".to_owned(),
        ),
        None => (
            std::fs::read_to_string(&token_file)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty()),
            token_file.display().to_string(),
        ),
    };
    Ok(Endpoint {
        url,
        token,
        token_source,
        timezone,
    })
}

/// `127.0.0.1:8377` → `http://127.0.0.1:8377`; trailing slashes dropped.
pub fn normalize_url(u: &str) -> String {
    let u = u.trim().trim_end_matches('/');
    if u.contains("://") {
        u.to_owned()
    } else {
        format!("http://{u}")
    }
}

/// A connection to the daemon's API.
pub struct Client {
    http: reqwest::Client,
    pub endpoint: Endpoint,
}

impl Client {
    pub fn new(endpoint: Endpoint) -> anyhow::Result<Client> {
        Client::with_timeout(endpoint, Duration::from_secs(60))
    }

    /// A client whose requests may take up to `timeout` (a backup of a large database).
    pub fn with_timeout(endpoint: Endpoint, timeout: Duration) -> anyhow::Result<Client> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(timeout)
            .user_agent(concat!("cnp-cli/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Client { http, endpoint })
    }

    pub fn timezone(&self) -> chrono_tz::Tz {
        self.endpoint.timezone
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.endpoint.url)
    }

    /// Sends a request and decodes a JSON answer (or the error body).
    pub async fn send<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&serde_json::Value>,
    ) -> Result<T, ClientError> {
        let mut req = self.http.request(method, self.url(path));
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(t) = &self.endpoint.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.transport(e))?;
        if !status.is_success() {
            return Err(self.api_error(status.as_u16(), &bytes));
        }
        let bytes = if bytes.is_empty() {
            bytes::Bytes::from_static(b"null")
        } else {
            bytes
        };
        serde_json::from_slice(&bytes).map_err(|e| {
            ClientError::Transport(format!(
                "unexpected answer from {} {path}: {e}",
                self.endpoint.url
            ))
        })
    }

    fn transport(&self, e: reqwest::Error) -> ClientError {
        if e.is_connect() {
            ClientError::NotRunning {
                url: self.endpoint.url.clone(),
            }
        } else if e.is_timeout() {
            ClientError::Transport(format!(
                "cnp at {} did not answer in time",
                self.endpoint.url
            ))
        } else {
            // reqwest's chain ("error sending request for url (…)": "…") in one line.
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            ClientError::Transport(msg)
        }
    }

    fn api_error(&self, status: u16, body: &[u8]) -> ClientError {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(b) => {
                let mut message = b.error.message;
                if status == 401 {
                    message = match &self.endpoint.token {
                        Some(_) => format!(
                            "{message} — the API token from {} was rejected (pass --token or set CNP_API_TOKEN)",
                            self.endpoint.token_source
                        ),
                        None => format!(
                            "{message} — no API token: {} is missing or unreadable (pass --token or set CNP_API_TOKEN)",
                            self.endpoint.token_source
                        ),
                    };
                }
                ClientError::Api {
                    status,
                    code: b.error.code,
                    message,
                    field: b.error.field,
                }
            }
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                ClientError::Api {
                    status,
                    code: String::new(),
                    message: if text.is_empty() {
                        format!("the API answered HTTP {status}")
                    } else {
                        format!("the API answered HTTP {status}: {text}")
                    },
                    field: None,
                }
            }
        }
    }

    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, ClientError> {
        self.send(reqwest::Method::GET, path, query, None).await
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, ClientError> {
        let v = serde_json::to_value(body).map_err(|e| ClientError::Transport(e.to_string()))?;
        self.send(reqwest::Method::POST, path, &[], Some(&v)).await
    }

    pub async fn put<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, ClientError> {
        let v = serde_json::to_value(body).map_err(|e| ClientError::Transport(e.to_string()))?;
        self.send(reqwest::Method::PUT, path, &[], Some(&v)).await
    }

    pub async fn delete(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        self.send(reqwest::Method::DELETE, path, &[], None).await
    }

    /// Every item of a listing, page by page (`limit: None`), or the first `limit`.
    pub async fn list<T: DeserializeOwned>(
        &self,
        path: &str,
        filters: &[(&str, String)],
        limit: Option<usize>,
    ) -> Result<Vec<T>, ClientError> {
        let mut out: Vec<T> = Vec::new();
        if limit == Some(0) {
            return Ok(out);
        }
        loop {
            let want = limit.map_or(PAGE, |l| (l - out.len()).min(PAGE));
            let mut q = filters.to_vec();
            q.push(("limit", want.to_string()));
            q.push(("offset", out.len().to_string()));
            let page: Page<T> = self.get(path, &q).await?;
            let got = page.items.len();
            out.extend(page.items);
            let done = got < want
                || got == 0
                || limit.is_some_and(|l| out.len() >= l)
                || (page.total > 0 && out.len() as u64 >= page.total);
            if done {
                return Ok(out);
            }
        }
    }

    // -- typed shortcuts ------------------------------------------------------------------

    pub async fn job(&self, id: &str) -> Result<Job, ClientError> {
        self.get(&format!("/api/jobs/{}", seg(id)), &[]).await
    }

    pub async fn execution(&self, id: &str) -> Result<JobExecution, ClientError> {
        self.get(&format!("/api/executions/{}", seg(id)), &[]).await
    }

    /// The execution with its run's attempts (`next_attempt`, `run_status`).
    pub async fn execution_detail(&self, id: &str) -> Result<ExecutionDetail, ClientError> {
        self.get(&format!("/api/executions/{}", seg(id)), &[]).await
    }

    pub async fn prompt(&self, id: &str) -> Result<Prompt, ClientError> {
        self.get(&format!("/api/prompts/{}", seg(id)), &[]).await
    }

    /// Stored log lines of an execution after `after_seq` (all of them, page by page).
    pub async fn logs_after(
        &self,
        execution_id: &str,
        after_seq: Option<u64>,
    ) -> Result<Vec<LogEntry>, ClientError> {
        let mut out: Vec<LogEntry> = Vec::new();
        let mut after = after_seq;
        loop {
            let mut q = vec![("limit", "1000".to_owned())];
            if let Some(a) = after {
                q.push(("after_seq", a.to_string()));
            }
            let v: serde_json::Value = self
                .get(&format!("/api/executions/{}/logs", seg(execution_id)), &q)
                .await?;
            let items = match &v {
                serde_json::Value::Array(a) => a.clone(),
                other => other
                    .get("items")
                    .and_then(|i| i.as_array())
                    .cloned()
                    .unwrap_or_default(),
            };
            let page: Vec<LogEntry> = items.iter().filter_map(LogEntry::from_json).collect();
            let n = page.len();
            if let Some(last) = page.last() {
                after = Some(last.seq);
            }
            out.extend(page);
            if n < 1000 {
                return Ok(out);
            }
        }
    }

    /// Opens the WebSocket (`/api/ws?…`) with the bearer token.
    pub async fn websocket(&self, query: &[(&str, &str)]) -> anyhow::Result<super::watch::Ws> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let base = if let Some(rest) = self.endpoint.url.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = self.endpoint.url.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            self.endpoint.url.clone()
        };
        let qs: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{k}={}", urlencode(v)))
            .collect();
        let url = format!("{base}/api/ws?{}", qs.join("&"));
        let mut req = url.into_client_request()?;
        if let Some(t) = &self.endpoint.token {
            req.headers_mut()
                .insert("Authorization", format!("Bearer {t}").parse()?);
        }
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(req),
        )
        .await
        .map_err(|_| anyhow::anyhow!("the WebSocket did not open in time"))??;
        Ok(ws)
    }
}

/// One stored or streamed log line, from the logs route or the WebSocket.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogEntry {
    pub seq: u64,
    pub stream: String,
    pub timestamp: Option<chrono::DateTime<chrono::Utc>>,
    pub line: String,
}

impl LogEntry {
    /// From a stored [`crate::model::LogLine`] (`line`) or a WebSocket log message (`message`).
    pub fn from_json(v: &serde_json::Value) -> Option<LogEntry> {
        Some(LogEntry {
            seq: v.get("seq")?.as_u64()?,
            stream: v
                .get("stream")
                .and_then(|s| s.as_str())
                .unwrap_or("stdout")
                .to_owned(),
            timestamp: v
                .get("timestamp")
                .and_then(|t| serde_json::from_value(t.clone()).ok()),
            line: v
                .get("line")
                .or_else(|| v.get("message"))
                .and_then(|l| l.as_str())
                .unwrap_or_default()
                .to_owned(),
        })
    }
}

/// A path segment: ids and job names may hold spaces and slashes.
pub fn seg(s: &str) -> String {
    urlencode(s)
}

fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_segments() {
        assert_eq!(normalize_url("127.0.0.1:8377/"), "http://127.0.0.1:8377");
        assert_eq!(normalize_url("https://x.example/"), "https://x.example");
        assert_eq!(seg("Daily Report/2"), "Daily%20Report%2F2");
    }

    #[test]
    fn discovery_reads_the_config_token_file_and_address() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("tok");
        std::fs::write(&token, "secret\n").unwrap();
        std::fs::write(dir.path().join(ADDRESS_FILE_NAME), "127.0.0.1:41234\n").unwrap();
        let cfg = dir.path().join("c.toml");
        std::fs::write(
            &cfg,
            format!(
                "[api]\nbind = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n[scheduler]\ntimezone = \"Asia/Taipei\"\n[other]\nx = 1\n",
                token.display()
            ),
        )
        .unwrap();
        let e = discover(Some(&cfg), &Overrides::default()).unwrap();
        assert_eq!(e.url, "http://127.0.0.1:41234");
        assert_eq!(e.token.as_deref(), Some("secret"));
        assert_eq!(e.timezone, chrono_tz::Asia::Taipei);

        let e = discover(
            Some(&cfg),
            &Overrides {
                api_url: Some("localhost:9".into()),
                token: Some("t2".into()),
            },
        )
        .unwrap();
        assert_eq!(e.url, "http://localhost:9");
        assert_eq!(e.token.as_deref(), Some("t2"));

        // No address file: the configured bind (unless port 0), else the default.
        std::fs::remove_file(dir.path().join(ADDRESS_FILE_NAME)).unwrap();
        let e = discover(Some(&cfg), &Overrides::default()).unwrap();
        assert_eq!(e.url, format!("http://{DEFAULT_ADDRESS}"));
        std::fs::write(
            &cfg,
            format!(
                "[api]\nbind = \"0.0.0.0:9000\"\ntoken_file = \"{}\"\n",
                token.display()
            ),
        )
        .unwrap();
        let e = discover(Some(&cfg), &Overrides::default()).unwrap();
        assert_eq!(e.url, "http://127.0.0.1:9000");
    }

    #[test]
    fn error_bodies_become_messages_with_fields() {
        let c = Client::new(Endpoint {
            url: "http://127.0.0.1:1".into(),
            token: Some("x".into()),
            token_source: "file".into(),
            timezone: chrono_tz::UTC,
        })
        .unwrap();
        let e = c.api_error(
            422,
            br#"{"error":{"code":"invalid","message":"bad cron","field":"schedule.expression"}}"#,
        );
        assert_eq!(e.to_string(), "bad cron (field: schedule.expression)");
        assert_eq!(e.exit_code(), 1);
        let e = c.api_error(500, b"oops");
        assert!(e.to_string().contains("HTTP 500: oops"), "{e}");
        let e = c.api_error(401, br#"{"error":{"code":"unauthorized","message":"missing or invalid token","field":null}}"#);
        assert!(e.to_string().contains("rejected"), "{e}");
    }

    #[tokio::test]
    async fn connection_refused_is_not_running() {
        // A port nothing listens on: bind, then drop.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = Client::new(Endpoint {
            url: format!("http://127.0.0.1:{port}"),
            token: None,
            token_source: "file".into(),
            timezone: chrono_tz::UTC,
        })
        .unwrap();
        let e = c
            .get::<serde_json::Value>("/api/status", &[])
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::NotRunning { .. }), "{e:?}");
        assert_eq!(e.exit_code(), 3);
        assert_eq!(
            e.to_string(),
            format!("cnp is not running at http://127.0.0.1:{port} (start it with `cnp serve`)")
        );
    }
}
