//! Channel definitions: named channels from `[notifications.channels.<name>]`, inline channels
//! from job files, `${VAR}` references to the environment, and how a job's channel list is
//! resolved into channels ready to deliver.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::config::NotificationsConfig;

/// One channel's definition (`type` picks the variant; unknown keys are errors).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChannelSpec {
    Log(LogChannel),
    Webhook(WebhookChannel),
    Email(EmailChannel),
    System(SystemChannel),
    Plugin(PluginChannel),
}

impl ChannelSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            ChannelSpec::Log(_) => "log",
            ChannelSpec::Webhook(_) => "webhook",
            ChannelSpec::Email(_) => "email",
            ChannelSpec::System(_) => "system",
            ChannelSpec::Plugin(_) => "plugin",
        }
    }

    /// This channel's own limit (else the global one applies to it too).
    pub fn rate_limit(&self) -> Option<u32> {
        match self {
            ChannelSpec::Log(c) => c.rate_limit_per_hour,
            ChannelSpec::Webhook(c) => c.rate_limit_per_hour,
            ChannelSpec::Email(c) => c.rate_limit_per_hour,
            ChannelSpec::System(c) => c.rate_limit_per_hour,
            ChannelSpec::Plugin(c) => c.rate_limit_per_hour,
        }
    }
}

/// `type: log`: a line in cnp's own log (tracing target `cnp::notify`).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogChannel {
    #[serde(default)]
    pub rate_limit_per_hour: Option<u32>,
}

/// The body a webhook receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// The event as JSON (or `webhook.json.j2`).
    #[default]
    Json,
    /// `{"text": …}` (Slack incoming webhooks, Mattermost, Rocket.Chat …).
    Slack,
    /// `{"content": …}` (Discord webhooks).
    Discord,
}

/// `type: webhook`: an HTTP POST.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookChannel {
    pub url: String,
    #[serde(default)]
    pub format: WebhookFormat,
    /// Per attempt.
    #[serde(default = "webhook_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Further attempts after a 5xx/429, a timeout or a connection failure (with backoff).
    #[serde(default = "webhook_retries")]
    pub retries: u32,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub rate_limit_per_hour: Option<u32>,
}

fn webhook_timeout() -> Duration {
    Duration::from_secs(10)
}

fn webhook_retries() -> u32 {
    2
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS (required), port 587 by default.
    #[default]
    Starttls,
    /// Implicit TLS ("SMTPS"), port 465 by default.
    Tls,
    /// No TLS at all, port 25 by default: only for a relay on this machine or a test server.
    Plain,
}

/// `type: email`: a plain-text mail over SMTP.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailChannel {
    #[serde(default)]
    pub smtp_host: Option<String>,
    #[serde(default)]
    pub smtp_port: Option<u16>,
    #[serde(default)]
    pub security: Option<SmtpSecurity>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// Sender; default `cnp@<hostname>`.
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default, alias = "recipients")]
    pub to: Vec<String>,
    /// A job's inline email channel without `smtp_host` sends through this named email channel
    /// (default: the only one configured).
    #[serde(default)]
    pub via: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Accept a self-signed or otherwise invalid server certificate (test servers only).
    #[serde(default)]
    pub accept_invalid_certs: bool,
    #[serde(default)]
    pub rate_limit_per_hour: Option<u32>,
}

/// `type: system`: a desktop notification (`notify-send`) where a session bus exists.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemChannel {
    #[serde(default)]
    pub rate_limit_per_hour: Option<u32>,
}

/// `type: plugin`: a notifier plugin.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginChannel {
    pub plugin: String,
    #[serde(default)]
    pub config: Option<Value>,
    #[serde(default)]
    pub rate_limit_per_hour: Option<u32>,
}

/// A channel ready to deliver: its label (the configured name, or a description of an inline
/// channel without its secrets) and definition.
#[derive(Debug, Clone, PartialEq)]
pub struct Channel {
    pub label: String,
    pub spec: ChannelSpec,
}

/// What the notification service takes from the config, with `${VAR}` references resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct NotifySettings {
    /// 0 = no limit.
    pub rate_limit_per_hour: u32,
    pub template_directory: Option<PathBuf>,
    pub default_channels: Vec<String>,
    pub on_success: bool,
    pub on_failure: bool,
    pub on_start: bool,
    pub on_completion: bool,
    pub on_cooldown: bool,
    pub on_plugin_failure: bool,
    pub on_budget: bool,
    pub on_storage_failure: bool,
    /// Base of API links in messages (`http://127.0.0.1:8377`), if any.
    pub api_url: Option<String>,
    pub queue_capacity: usize,
    /// Named channels, resolved.
    pub channels: BTreeMap<String, Value>,
}

impl Default for NotifySettings {
    fn default() -> Self {
        NotifySettings::from_config(&NotificationsConfig::default(), None)
            .expect("the default notification settings are valid")
    }
}

/// A config key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct SettingsError {
    pub key: String,
    pub message: String,
}

impl NotifySettings {
    /// Resolves `${VAR}` references (from the process environment) and checks every named
    /// channel. `api_url`: the API's base URL for links when the config does not name one.
    pub fn from_config(
        c: &NotificationsConfig,
        api_url: Option<String>,
    ) -> Result<NotifySettings, SettingsError> {
        Self::from_config_with(c, api_url, &|k| std::env::var(k).ok())
    }

    pub fn from_config_with(
        c: &NotificationsConfig,
        api_url: Option<String>,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<NotifySettings, SettingsError> {
        let mut channels = BTreeMap::new();
        for (name, raw) in &c.channels {
            let key = format!("notifications.channels.{name}");
            let mut v = raw.clone();
            expand_value(&mut v, &key, lookup)?;
            parse_spec(&v).map_err(|message| SettingsError {
                key: key.clone(),
                message,
            })?;
            channels.insert(name.clone(), v);
        }
        for (i, name) in c.default_channels.iter().enumerate() {
            if !channels.contains_key(name) {
                return Err(SettingsError {
                    key: format!("notifications.default_channels[{i}]"),
                    message: format!(
                        "no channel `{name}` (define it as [notifications.channels.{name}])"
                    ),
                });
            }
        }
        if c.queue_capacity == 0 {
            return Err(SettingsError {
                key: "notifications.queue_capacity".into(),
                message: "must be at least 1".into(),
            });
        }
        let s = NotifySettings {
            rate_limit_per_hour: c.rate_limit_per_hour,
            template_directory: Some(c.template_directory.clone())
                .filter(|d| !d.as_os_str().is_empty()),
            default_channels: c.default_channels.clone(),
            on_success: c.on_success,
            on_failure: c.on_failure,
            on_start: c.on_start,
            on_completion: c.on_completion,
            on_cooldown: c.on_cooldown,
            on_plugin_failure: c.on_plugin_failure,
            on_budget: c.on_budget,
            on_storage_failure: c.on_storage_failure,
            api_url: c
                .api_url
                .clone()
                .or(api_url)
                .map(|u| u.trim_end_matches('/').to_owned()),
            queue_capacity: c.queue_capacity,
            channels,
        };
        // Inline email channels borrow a named one's server: check the named ones can serve.
        Ok(s)
    }

    /// Resolves one entry of a job's `channels` list: `{channel: name, …overrides}` or an
    /// inline definition (whose `${VAR}` references are resolved now). `index` names it in
    /// errors.
    pub fn resolve(&self, entry: &Value, index: usize) -> Result<Channel, String> {
        let lookup = |k: &str| std::env::var(k).ok();
        let (label, mut v) = match entry.get("channel").and_then(|c| c.as_str()) {
            Some(name) => {
                let Some(base) = self.channels.get(name) else {
                    return Err(format!(
                        "channels[{index}]: no channel `{name}` in the config \
                         ([notifications.channels.{name}])"
                    ));
                };
                let mut merged = base.clone();
                if let (Some(m), Some(o)) = (merged.as_object_mut(), entry.as_object()) {
                    for (k, val) in o {
                        if k != "channel" {
                            m.insert(k.clone(), val.clone());
                        }
                    }
                }
                (name.to_owned(), merged)
            }
            None => (String::new(), entry.clone()),
        };
        expand_value(&mut v, &format!("channels[{index}]"), &lookup).map_err(|e| e.to_string())?;
        let mut spec = parse_spec(&v).map_err(|m| format!("channels[{index}]: {m}"))?;
        if let ChannelSpec::Email(e) = &mut spec {
            self.fill_email_server(e)
                .map_err(|m| format!("channels[{index}]: {m}"))?;
        }
        let label = if label.is_empty() {
            inline_label(&spec)
        } else {
            label
        };
        Ok(Channel { label, spec })
    }

    /// A named channel.
    pub fn named(&self, name: &str) -> Result<Channel, String> {
        self.resolve(&serde_json::json!({ "channel": name }), 0)
    }

    /// An email channel without its own server takes one from a named email channel.
    fn fill_email_server(&self, e: &mut EmailChannel) -> Result<(), String> {
        if e.smtp_host.is_some() {
            return Ok(());
        }
        let server = match &e.via {
            Some(name) => self
                .channels
                .get(name)
                .ok_or_else(|| format!("`via: {name}` names no channel in the config"))?,
            None => {
                let mut emails = self
                    .channels
                    .values()
                    .filter(|v| v.get("type").and_then(|t| t.as_str()) == Some("email"));
                match (emails.next(), emails.next()) {
                    (Some(one), None) => one,
                    (None, _) => {
                        return Err("an email channel needs `smtp_host` (or a named email \
                                    channel in the config to send through)"
                            .into())
                    }
                    (Some(_), Some(_)) => {
                        return Err("several email channels are configured: say which one \
                                    to send through with `via: <name>`"
                            .into())
                    }
                }
            }
        };
        let ChannelSpec::Email(s) = parse_spec(server)? else {
            return Err("`via` must name an email channel".into());
        };
        e.smtp_host = s.smtp_host;
        e.smtp_port = e.smtp_port.or(s.smtp_port);
        e.security = e.security.or(s.security);
        e.username = e.username.take().or(s.username);
        e.password = e.password.take().or(s.password);
        e.from = e.from.take().or(s.from);
        e.timeout = e.timeout.or(s.timeout);
        e.accept_invalid_certs |= s.accept_invalid_certs;
        if e.to.is_empty() {
            e.to = s.to;
        }
        if e.smtp_host.is_none() {
            return Err("the email channel it sends through has no `smtp_host`".into());
        }
        Ok(())
    }
}

fn parse_spec(v: &Value) -> Result<ChannelSpec, String> {
    let spec: ChannelSpec = serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })?;
    match &spec {
        ChannelSpec::Webhook(w) => {
            let uri: http::Uri = w.url.parse().map_err(|_| "url: not a URL".to_string())?;
            if !matches!(uri.scheme_str(), Some("http") | Some("https")) || uri.host().is_none() {
                return Err("url: must be an http:// or https:// URL".into());
            }
        }
        ChannelSpec::Email(e) => {
            for a in e.to.iter().chain(e.from.iter()) {
                a.parse::<lettre::message::Mailbox>()
                    .map_err(|err| format!("`{a}` is not an email address ({err})"))?;
            }
        }
        _ => {}
    }
    Ok(spec)
}

/// What a channel definition is, without its secrets (`webhook https://hooks.slack.com/<redacted>`).
pub fn describe_channel(v: &Value) -> String {
    match parse_spec(v) {
        Ok(spec) => inline_label(&spec),
        Err(e) => format!("invalid: {e}"),
    }
}

/// A name for an inline channel that does not show its secrets.
fn inline_label(spec: &ChannelSpec) -> String {
    match spec {
        ChannelSpec::Log(_) => "log".into(),
        ChannelSpec::System(_) => "system".into(),
        ChannelSpec::Webhook(w) => format!("webhook {}", crate::redact::redact_url(&w.url)),
        ChannelSpec::Email(e) => format!("email {}", e.to.join(", ")),
        ChannelSpec::Plugin(p) => format!("plugin {}", p.plugin),
    }
}

pub use crate::text::expand_env;

/// [`expand_env`] on every string in `v`; errors name the key (`key.sub[2]`).
pub fn expand_value(
    v: &mut Value,
    key: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), SettingsError> {
    crate::text::expand_env_in(v, key, lookup)
        .map_err(|(key, message)| SettingsError { key, message })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(k: &str) -> Option<String> {
        match k {
            "SLACK_URL" => Some("https://hooks.slack.com/services/T/B/X".into()),
            "PW" => Some("s3cret".into()),
            _ => None,
        }
    }

    #[test]
    fn env_references_resolve() {
        assert_eq!(expand_env("a ${PW} b", &env).unwrap(), "a s3cret b");
        assert_eq!(expand_env("${NOPE:-fallback}", &env).unwrap(), "fallback");
        assert_eq!(
            expand_env("cost $$5 and $x", &env).unwrap(),
            "cost $5 and $x"
        );
        assert_eq!(expand_env("no refs", &env).unwrap(), "no refs");
        let e = expand_env("${MISSING_VAR}", &env).unwrap_err();
        assert!(e.contains("MISSING_VAR") && e.contains("not set"), "{e}");
        assert!(expand_env("${UNCLOSED", &env)
            .unwrap_err()
            .contains("unterminated"));
        assert!(expand_env("${a-b}", &env).is_err());
    }

    fn config(channels: Value, defaults: &[&str]) -> NotificationsConfig {
        NotificationsConfig {
            channels: serde_json::from_value(channels).unwrap(),
            default_channels: defaults.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn named_channels_resolve_env_and_name_the_key_when_missing() {
        let c = config(
            json!({
                "ops-slack": { "type": "webhook", "url": "${SLACK_URL}", "format": "slack" },
                "oncall": { "type": "email", "smtp_host": "127.0.0.1", "smtp_port": 2525,
                            "security": "plain", "password": "${PW}", "from": "cnp@example.com",
                            "to": ["ops@example.com"] }
            }),
            &["ops-slack"],
        );
        let s = NotifySettings::from_config_with(&c, None, &env).unwrap();
        let slack = s.named("ops-slack").unwrap();
        let ChannelSpec::Webhook(w) = &slack.spec else {
            panic!("{slack:?}")
        };
        assert_eq!(w.url, "https://hooks.slack.com/services/T/B/X");
        assert_eq!(w.format, WebhookFormat::Slack);
        let ChannelSpec::Email(e) = s.named("oncall").unwrap().spec else {
            panic!()
        };
        assert_eq!(e.password.as_deref(), Some("s3cret"));

        let bad = config(
            json!({ "x": { "type": "webhook", "url": "${NOT_SET_ANYWHERE}" } }),
            &[],
        );
        let err = NotifySettings::from_config_with(&bad, None, &env).unwrap_err();
        assert_eq!(err.key, "notifications.channels.x.url");
        assert!(err.message.contains("NOT_SET_ANYWHERE"), "{err}");

        let typo = config(json!({ "x": { "type": "webhook", "ur": "http://a" } }), &[]);
        let err = NotifySettings::from_config_with(&typo, None, &env).unwrap_err();
        assert!(err.to_string().contains("ur"), "{err}");

        let missing = config(json!({}), &["nope"]);
        let err = NotifySettings::from_config_with(&missing, None, &env).unwrap_err();
        assert!(err.to_string().contains("default_channels"), "{err}");
    }

    #[test]
    fn job_entries_reference_or_inline() {
        let c = config(
            json!({
                "oncall": { "type": "email", "smtp_host": "mail.example.com",
                            "security": "starttls", "username": "u", "password": "p",
                            "from": "cnp@example.com", "to": ["ops@example.com"] }
            }),
            &[],
        );
        let s = NotifySettings::from_config_with(&c, None, &env).unwrap();
        // A reference with an override.
        let ch = s
            .resolve(&json!({ "channel": "oncall", "to": ["me@example.com"] }), 0)
            .unwrap();
        assert_eq!(ch.label, "oncall");
        let ChannelSpec::Email(e) = ch.spec else {
            panic!()
        };
        assert_eq!(e.to, vec!["me@example.com"]);
        assert_eq!(e.password.as_deref(), Some("p"));
        // SPEC's inline shape: recipients only; the server comes from the named channel.
        let ch = s
            .resolve(
                &json!({ "type": "email", "recipients": ["a@example.com"] }),
                1,
            )
            .unwrap();
        let ChannelSpec::Email(e) = ch.spec else {
            panic!()
        };
        assert_eq!(e.smtp_host.as_deref(), Some("mail.example.com"));
        assert_eq!(e.to, vec!["a@example.com"]);
        assert_eq!(ch.label, "email a@example.com");
        // Inline webhook: the label hides the secret path.
        let ch = s
            .resolve(
                &json!({ "type": "webhook", "url": "https://hooks.example.com/T/B/secret" }),
                2,
            )
            .unwrap();
        assert!(!ch.label.contains("secret"), "{}", ch.label);
        // Unknown reference.
        let e = s.resolve(&json!({ "channel": "nope" }), 3).unwrap_err();
        assert!(e.contains("channels[3]") && e.contains("nope"), "{e}");
    }
}
