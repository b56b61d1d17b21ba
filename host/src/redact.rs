//! Keeping secrets out of responses and logs: webhook URLs carry their key in the path, channel
//! and plugin configurations carry passwords and tokens, and a job's environment may carry API
//! keys. What the API returns has them replaced by [`MARK`]; a definition sent back with the
//! mark in place keeps the stored value (so read-modify-write clients never erase a secret).

use serde_json::Value;

use crate::manifest::JobSpec;
use crate::model::Job;

/// What a secret is replaced by.
pub const MARK: &str = "<redacted>";

/// Whether a key names a secret (`password`, `smtp_password`, `token`, `api_key`, `secret`,
/// `authorization`, …).
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase().replace('-', "_");
    [
        "password",
        "passwd",
        "secret",
        "token",
        "api_key",
        "apikey",
        "authorization",
        "credential",
        "private_key",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// Secret values to keep out of what a run leaves behind (its log lines, output, error and the
/// notifications about it): the values of a job's environment variables whose names say they
/// are secrets (`API_TOKEN`, `DB_PASSWORD`, …; see [`is_secret_key`]).
#[derive(Debug, Clone, Default)]
pub struct Scrub {
    secrets: Vec<String>,
}

impl Scrub {
    /// The secrets among an environment's values (values shorter than 4 characters are not
    /// treated as secrets: replacing them would mangle ordinary text).
    pub fn of_environment<'a>(env: impl IntoIterator<Item = (&'a String, &'a String)>) -> Scrub {
        Scrub::of_values(
            env.into_iter()
                .filter(|(k, _)| is_secret_key(k))
                .map(|(_, v)| v.clone()),
        )
    }

    /// These values (those shorter than 4 characters are left out, as above).
    pub fn of_values(values: impl IntoIterator<Item = String>) -> Scrub {
        let mut secrets: Vec<String> = values
            .into_iter()
            .filter(|v| v.chars().count() >= 4)
            .collect();
        // Longest first: a secret that contains another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Scrub { secrets }
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// `text` with every secret replaced by [`MARK`].
    pub fn text<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        if !self.secrets.iter().any(|s| text.contains(s.as_str())) {
            return std::borrow::Cow::Borrowed(text);
        }
        let mut out = text.to_owned();
        for s in &self.secrets {
            out = out.replace(s.as_str(), MARK);
        }
        std::borrow::Cow::Owned(out)
    }
}

/// Whether a key holds a URL (`url`, `webhook_url`, `endpoint`).
fn is_url_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k == "url" || k.ends_with("_url") || k == "endpoint" || k == "webhook"
}

/// A URL with what may identify a secret cut: user info, path and query. `https://hooks.slack.com/services/T0/B0/XXX`
/// → `https://hooks.slack.com/<redacted>`. A URL with nothing after the host is kept.
pub fn redact_url(url: &str) -> String {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return MARK.to_owned();
    };
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return MARK.to_owned();
    };
    let host = authority.as_str().rsplit('@').next().unwrap_or_default();
    let bare = uri.path() == "/" || uri.path().is_empty();
    if bare && uri.query().is_none() && !authority.as_str().contains('@') {
        return url.to_owned();
    }
    format!("{scheme}://{host}/{MARK}")
}

/// Redacts secrets in a configuration value (any depth).
pub fn redact_value(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                match val {
                    Value::String(s) if is_secret_key(k) => *s = MARK.to_owned(),
                    Value::String(s) if is_url_key(k) => *s = redact_url(s),
                    Value::Number(_) | Value::Bool(_) if is_secret_key(k) => {
                        *val = Value::String(MARK.to_owned())
                    }
                    _ => redact_value(val),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_value),
        _ => {}
    }
}

/// Puts stored secrets back where `new` still holds [`MARK`] (or a redacted URL) at the same
/// place in `old`.
pub fn restore_value(new: &mut Value, old: &Value) {
    match (new, old) {
        (Value::Object(n), Value::Object(o)) => {
            for (k, val) in n.iter_mut() {
                if let Some(prev) = o.get(k) {
                    restore_value(val, prev);
                }
            }
        }
        (Value::Array(n), Value::Array(o)) => {
            for (val, prev) in n.iter_mut().zip(o) {
                restore_value(val, prev);
            }
        }
        (n @ Value::String(_), prev) if n.as_str().is_some_and(|s| s.contains(MARK)) => {
            *n = prev.clone();
        }
        _ => {}
    }
}

impl crate::model::TemplateUse {
    /// Secret-named variables and secrets in the overrides replaced by [`MARK`].
    pub fn redact(&mut self) {
        for (k, v) in self.vars.iter_mut() {
            if is_secret_key(k) {
                *v = MARK.to_owned();
            }
        }
        let mut overrides =
            Value::Object(std::mem::take(&mut self.overrides).into_iter().collect());
        redact_value(&mut overrides);
        if let Value::Object(m) = overrides {
            self.overrides = m.into_iter().collect();
        }
    }
}

impl Job {
    /// The job as the API shows it: secrets in notification channels, plugin configurations and
    /// the environment replaced by [`MARK`].
    pub fn redacted(mut self) -> Job {
        if let Some(n) = &mut self.notification_config {
            n.channels.iter_mut().for_each(redact_value);
        }
        if let Some(c) = self
            .retry_config
            .as_mut()
            .and_then(|r| r.plugin_config.as_mut())
        {
            redact_value(c);
        }
        for c in self
            .execution_options
            .conditions
            .iter_mut()
            .chain(&mut self.execution_options.executor)
        {
            if let Some(cfg) = &mut c.config {
                redact_value(cfg);
            }
        }
        for (k, v) in self.execution_options.environment.iter_mut() {
            if is_secret_key(k) {
                *v = MARK.to_owned();
            }
        }
        if let Some(t) = &mut self.template {
            t.redact();
        }
        self
    }
}

impl JobSpec {
    /// Keeps `stored`'s secrets where this definition still carries [`MARK`] from a redacted
    /// read.
    pub fn restore_secrets(&mut self, stored: &Job) {
        if let (Some(n), Some(o)) = (&mut self.notifications, &stored.notification_config) {
            for (c, prev) in n.channels.iter_mut().zip(&o.channels) {
                restore_value(c, prev);
            }
        }
        if let (Some(new), Some(old)) = (
            self.retry.as_mut().and_then(|r| r.plugin_config.as_mut()),
            stored
                .retry_config
                .as_ref()
                .and_then(|r| r.plugin_config.as_ref()),
        ) {
            restore_value(new, old);
        }
        let old_conditions = &stored.execution_options.conditions;
        let conditions = if self.conditions.is_empty() {
            &mut self.execution.conditions
        } else {
            &mut self.conditions
        };
        for c in conditions.iter_mut() {
            let prev = old_conditions.iter().find(|o| o.plugin == c.plugin);
            if let (Some(cfg), Some(Some(old))) = (&mut c.config, prev.map(|p| &p.config)) {
                restore_value(cfg, old);
            }
        }
        let old_executor = stored.execution_options.executor.as_ref();
        let executor = match &mut self.executor {
            Some(e) => Some(e),
            None => self.execution.executor.as_mut(),
        };
        if let (Some(new), Some(old)) = (executor, old_executor) {
            if let (Some(cfg), Some(prev), true) =
                (&mut new.config, &old.config, new.plugin == old.plugin)
            {
                restore_value(cfg, prev);
            }
        }
        for (k, v) in self.execution.environment.iter_mut() {
            if v == MARK {
                if let Some(old) = stored.execution_options.environment.get(k) {
                    *v = old.clone();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn urls_keep_only_scheme_and_host() {
        assert_eq!(
            redact_url("https://hooks.slack.com/services/T0/B0/XXXX"),
            "https://hooks.slack.com/<redacted>"
        );
        assert_eq!(redact_url("https://ntfy.sh"), "https://ntfy.sh");
        assert_eq!(
            redact_url("https://ntfy.sh/?auth=abc"),
            "https://ntfy.sh/<redacted>"
        );
        assert_eq!(
            redact_url("https://u:p@host.example/x"),
            "https://host.example/<redacted>"
        );
        assert_eq!(redact_url("not a url"), MARK);
    }

    #[test]
    fn secrets_at_any_depth_and_back() {
        let stored = json!({"type": "email", "smtp": {"password": "hunter2", "port": 587},
            "url": "https://hooks.slack.com/services/T/B/K", "recipients": ["a@b.c"],
            "headers": {"Authorization": "Bearer s3cret"}, "api_key": 1234});
        let mut shown = stored.clone();
        redact_value(&mut shown);
        assert_eq!(shown["smtp"]["password"], MARK);
        assert_eq!(shown["smtp"]["port"], 587);
        assert_eq!(shown["url"], "https://hooks.slack.com/<redacted>");
        assert_eq!(shown["headers"]["Authorization"], MARK);
        assert_eq!(shown["api_key"], MARK);
        assert_eq!(shown["recipients"][0], "a@b.c");
        let text = shown.to_string();
        assert!(!text.contains("hunter2") && !text.contains("s3cret") && !text.contains("/K"));
        // A client sends the redacted value back with one real change: secrets are kept.
        let mut sent = shown.clone();
        sent["recipients"] = json!(["x@y.z"]);
        restore_value(&mut sent, &stored);
        assert_eq!(sent["smtp"]["password"], "hunter2");
        assert_eq!(sent["url"], "https://hooks.slack.com/services/T/B/K");
        assert_eq!(sent["api_key"], 1234);
        assert_eq!(sent["recipients"][0], "x@y.z");
    }
}
