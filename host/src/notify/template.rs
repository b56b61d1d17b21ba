//! Message templates (minijinja): files from `notifications.template_directory`, built-in
//! defaults for the rest. A template that does not parse or render is an error for the delivery
//! that needs it — the message is never sent broken.
//!
//! Lookup, for an event with names `[e1, e2…]` (e.g. `failed`, `failure`):
//! - message text: `<e>.txt.j2` for each name, then `message.txt.j2`, then built-in;
//! - email subject: `email_subject.j2`, then built-in; email body: `email_body.txt.j2`, then the
//!   message text;
//! - webhook body (`format = "json"`): `webhook.json.j2`, then the built-in JSON document.
//!
//! In `*.json.j2` templates every `{{ value }}` is written as JSON (strings quoted and escaped),
//! so the output stays valid JSON; it is checked before sending.

use std::collections::HashMap;
use std::path::Path;

use minijinja::{AutoEscape, Environment};
use serde_json::Value;

const BUILTIN_TEXT: &str = "{{ summary }}
{%- if error %}
Error: {{ error }}{% endif %}
{%- if duration %}
Duration: {{ duration }}{% endif %}
{%- if output %}
Output (last lines):
{{ output }}{% endif %}
{%- if links.cli %}
Details: {{ links.cli }}{% if links.api %}  ({{ links.api }}){% endif %}{% endif %}";

const BUILTIN_SUBJECT: &str = "[cnp] {{ summary }}";

/// Parsed templates (user files and built-ins).
pub struct Templates {
    env: Environment<'static>,
    /// User files that did not parse: name → error.
    broken: HashMap<String, String>,
}

impl Templates {
    /// Loads every `*.j2` file of `dir` (a missing folder means built-ins only). Files that do
    /// not parse are logged now and reported by each delivery that needs them.
    pub fn load(dir: Option<&Path>) -> Templates {
        let mut t = Templates::builtin();
        let Some(dir) = dir else { return t };
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::debug!(dir = %dir.display(), "no notification template folder: built-in templates");
                return t;
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot read the notification template folder: built-in templates");
                return t;
            }
        };
        let mut loaded = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                continue;
            };
            if !name.ends_with(".j2") {
                continue;
            }
            match std::fs::read_to_string(&path) {
                Ok(source) => {
                    t.add(&name, source);
                    loaded += 1;
                }
                Err(e) => {
                    t.broken.insert(name, format!("cannot read: {e}"));
                }
            }
        }
        for (name, e) in &t.broken {
            tracing::error!(template = %dir.join(name).display(), "notification template error: {e}");
        }
        tracing::info!(dir = %dir.display(), loaded, "notification templates loaded");
        t
    }

    fn builtin() -> Templates {
        let mut env = Environment::new();
        env.set_auto_escape_callback(|name| {
            if name.trim_end_matches(".j2").ends_with(".json") {
                AutoEscape::Json
            } else {
                AutoEscape::None
            }
        });
        env.set_keep_trailing_newline(false);
        env.add_template("builtin:text", BUILTIN_TEXT)
            .expect("built-in template");
        env.add_template("builtin:subject", BUILTIN_SUBJECT)
            .expect("built-in template");
        Templates {
            env,
            broken: HashMap::new(),
        }
    }

    /// Adds (or replaces) a template from source.
    pub fn add(&mut self, name: &str, source: String) {
        self.broken.remove(name);
        if let Err(e) = self.env.add_template_owned(name.to_owned(), source) {
            self.broken.insert(name.to_owned(), describe(&e));
        }
    }

    fn has(&self, name: &str) -> bool {
        self.broken.contains_key(name) || self.env.get_template(name).is_ok()
    }

    /// Renders the first of `names` that exists, else `builtin` (`None`: no built-in, returns
    /// `Ok(None)`).
    fn render_first(
        &self,
        names: &[String],
        builtin: Option<&str>,
        ctx: &Value,
    ) -> Result<Option<String>, String> {
        let name = match names.iter().find(|n| self.has(n)) {
            Some(n) => n.as_str(),
            None => match builtin {
                Some(b) => b,
                None => return Ok(None),
            },
        };
        if let Some(e) = self.broken.get(name) {
            return Err(format!("template `{name}`: {e}"));
        }
        let t = self
            .env
            .get_template(name)
            .map_err(|e| format!("template `{name}`: {}", describe(&e)))?;
        let out = t
            .render(ctx)
            .map_err(|e| format!("template `{name}`: {}", describe(&e)))?;
        if out.trim().is_empty() {
            return Err(format!("template `{name}` rendered an empty message"));
        }
        Ok(Some(out))
    }

    /// The message text for `events` (the event's names, most specific first).
    pub fn text(&self, events: &[&str], ctx: &Value) -> Result<String, String> {
        let mut names: Vec<String> = events.iter().map(|e| format!("{e}.txt.j2")).collect();
        names.push("message.txt.j2".into());
        Ok(self
            .render_first(&names, Some("builtin:text"), ctx)?
            .unwrap_or_default())
    }

    /// Email subject (one line) and body.
    pub fn email(&self, events: &[&str], ctx: &Value) -> Result<(String, String), String> {
        let subject = self
            .render_first(&["email_subject.j2".into()], Some("builtin:subject"), ctx)?
            .unwrap_or_default();
        let subject = subject.lines().map(str::trim).collect::<Vec<_>>().join(" ");
        let body = match self.render_first(&["email_body.txt.j2".into()], None, ctx)? {
            Some(b) => b,
            None => self.text(events, ctx)?,
        };
        Ok((subject, body))
    }

    /// A `webhook.json.j2` body, when there is one (checked to be JSON).
    pub fn webhook_json(&self, ctx: &Value) -> Result<Option<Vec<u8>>, String> {
        match self.render_first(&["webhook.json.j2".into()], None, ctx)? {
            None => Ok(None),
            Some(s) => {
                serde_json::from_str::<Value>(&s).map_err(|e| {
                    format!("template `webhook.json.j2` did not produce JSON ({e}): {s}")
                })?;
                Ok(Some(s.into_bytes()))
            }
        }
    }
}

fn describe(e: &minijinja::Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> Value {
        json!({
            "event": "failed", "summary": "nightly: failed (attempt 2 of 2)",
            "job": { "name": "nightly", "id": "j1" }, "error": "boom", "duration": "3s",
            "output": "last line", "attempt": 2, "max_attempts": 2,
            "links": { "cli": "cnp job execution e1", "api": "http://127.0.0.1:8377/api/executions/e1" }
        })
    }

    #[test]
    fn built_in_text_and_email() {
        let t = Templates::load(None);
        let text = t.text(&["failed", "failure"], &ctx()).unwrap();
        assert!(
            text.starts_with("nightly: failed (attempt 2 of 2)"),
            "{text}"
        );
        assert!(text.contains("Error: boom"), "{text}");
        assert!(text.contains("cnp job execution e1"), "{text}");
        let (subject, body) = t.email(&["failed"], &ctx()).unwrap();
        assert_eq!(subject, "[cnp] nightly: failed (attempt 2 of 2)");
        assert_eq!(body, text);
        assert_eq!(t.webhook_json(&ctx()).unwrap(), None);
        // Absent values leave their lines out.
        let quiet = t
            .text(
                &["started"],
                &json!({ "summary": "x started", "links": {} }),
            )
            .unwrap();
        assert_eq!(quiet, "x started");
    }

    #[test]
    fn user_templates_by_event_with_fallbacks() {
        let mut t = Templates::load(None);
        t.add(
            "failure.txt.j2",
            "{{ job.name }} broke: {{ error }} ({{ attempt }}/{{ max_attempts }})".into(),
        );
        t.add("message.txt.j2", "generic {{ event }}".into());
        t.add("email_subject.j2", "ALERT {{ job.name }}\n".into());
        t.add(
            "webhook.json.j2",
            "{\"msg\": {{ summary }}, \"job\": {{ job.name }}, \"n\": {{ attempt }}}".into(),
        );
        assert_eq!(
            t.text(&["failed", "failure"], &ctx()).unwrap(),
            "nightly broke: boom (2/2)"
        );
        assert_eq!(
            t.text(&["succeeded", "success"], &ctx()).unwrap(),
            "generic failed"
        );
        let (subject, body) = t.email(&["failed", "failure"], &ctx()).unwrap();
        assert_eq!(
            (subject.as_str(), body.as_str()),
            ("ALERT nightly", "nightly broke: boom (2/2)")
        );
        let body: Value =
            serde_json::from_slice(&t.webhook_json(&ctx()).unwrap().unwrap()).unwrap();
        assert_eq!(
            body,
            json!({ "msg": "nightly: failed (attempt 2 of 2)", "job": "nightly", "n": 2 })
        );
        // JSON escaping keeps quotes in values from breaking the document.
        let mut c = ctx();
        c["summary"] = json!("say \"hi\"\nnewline");
        let body: Value = serde_json::from_slice(&t.webhook_json(&c).unwrap().unwrap()).unwrap();
        assert_eq!(body["msg"], "say \"hi\"\nnewline");
    }

    #[test]
    fn template_errors_are_reported_not_rendered() {
        let mut t = Templates::load(None);
        t.add("failed.txt.j2", "{{ job.name ".into());
        let e = t.text(&["failed"], &ctx()).unwrap_err();
        assert!(e.contains("failed.txt.j2"), "{e}");
        t.add("failed.txt.j2", "{{ job.name | no_such_filter }}".into());
        let e = t.text(&["failed"], &ctx()).unwrap_err();
        assert!(
            e.contains("failed.txt.j2") && e.contains("no_such_filter"),
            "{e}"
        );
        t.add("failed.txt.j2", "{% if false %}x{% endif %}".into());
        assert!(t.text(&["failed"], &ctx()).unwrap_err().contains("empty"));
        t.add("webhook.json.j2", "not json {{ job.name }}".into());
        assert!(t.webhook_json(&ctx()).unwrap_err().contains("JSON"));
    }

    #[test]
    fn loads_a_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("failed.txt.j2"), "F {{ job.name }}").unwrap();
        std::fs::write(dir.path().join("broken.txt.j2"), "{% if %}").unwrap();
        std::fs::write(dir.path().join("README.md"), "ignored").unwrap();
        let t = Templates::load(Some(dir.path()));
        assert_eq!(t.text(&["failed"], &ctx()).unwrap(), "F nightly");
        assert!(t
            .text(&["broken"], &ctx())
            .unwrap_err()
            .contains("broken.txt.j2"));
        let none = Templates::load(Some(&dir.path().join("missing")));
        assert!(none
            .text(&["failed"], &ctx())
            .unwrap()
            .contains("Error: boom"));
    }
}
