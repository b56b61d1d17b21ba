//! Short human text shared by the CLI and the dashboard: durations, dollars, first lines, and
//! the Claude CLI's `stream-json` lines as readable log lines.

/// Dollars as people read them: `$0`, `$0.0042`, `$12.40`.
pub fn usd(x: f64) -> String {
    if x == 0.0 {
        "$0".into()
    } else if x.abs() < 0.01 {
        format!("${x:.4}")
    } else {
        format!("${x:.2}")
    }
}

/// Dollars and cents, or four decimals when cents would hide the amount: `$1.00`, `$0.0143`,
/// `$1.2345` (budget caps and spending, where the exact amount matters).
pub fn usd_exact(x: f64) -> String {
    if ((x * 100.0) - (x * 100.0).round()).abs() < 1e-9 {
        format!("${x:.2}")
    } else {
        format!("${x:.4}")
    }
}

/// `850ms`, `12.3s`, `4m 05s`, `2h 03m`, `3d 04h`.
pub fn duration_ms(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    if s < 60 {
        return format!("{:.1}s", ms as f64 / 1000.0);
    }
    if s < 3600 {
        return format!("{}m {:02}s", s / 60, s % 60);
    }
    if s < 86_400 {
        return format!("{}h {:02}m", s / 3600, (s % 3600) / 60);
    }
    format!("{}d {:02}h", s / 86_400, (s % 86_400) / 3600)
}

/// The first line of `s`, cut to `max` characters.
pub fn first_line(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or_default();
    let cut: String = line.chars().take(max).collect();
    if cut.len() < line.len() || s.lines().nth(1).is_some() {
        format!("{cut}…")
    } else {
        cut
    }
}

/// A log line for people: the CLI's `stream-json` events become short text (assistant text,
/// tool calls, the session start); other lines are shown as they are. `None`: nothing worth
/// showing (tool results, the final `result` event, which the caller prints itself).
pub fn pretty_log_line(stream: &str, line: &str) -> Option<String> {
    let t = line.trim();
    if stream != "stdout" || !t.starts_with('{') {
        return Some(match stream {
            "stderr" => format!("[stderr] {line}"),
            "system" => format!("[cnp] {line}"),
            _ => line.to_owned(),
        });
    }
    let Ok(v) = serde_json::from_str::<serde_json::Value>(t) else {
        return Some(line.to_owned());
    };
    let kind = v.get("type").and_then(|x| x.as_str()).unwrap_or_default();
    match kind {
        "system" => {
            let sub = v.get("subtype").and_then(|x| x.as_str()).unwrap_or("");
            if sub == "init" {
                let model = v.get("model").and_then(|x| x.as_str()).unwrap_or("?");
                Some(format!("[claude] session started (model {model})"))
            } else {
                None
            }
        }
        "assistant" => {
            let content = v
                .pointer("/message/content")
                .and_then(|c| c.as_array())
                .cloned()
                .unwrap_or_default();
            let parts: Vec<String> = content
                .iter()
                .filter_map(|c| match c.get("type").and_then(|x| x.as_str()) {
                    Some("text") => c
                        .get("text")
                        .and_then(|x| x.as_str())
                        .map(|s| s.trim().to_owned()),
                    Some("tool_use") => Some(format!(
                        "[tool] {}",
                        c.get("name").and_then(|x| x.as_str()).unwrap_or("?")
                    )),
                    _ => None,
                })
                .filter(|s| !s.is_empty())
                .collect();
            (!parts.is_empty()).then(|| parts.join("\n"))
        }
        "result" | "user" | "rate_limit_event" => None,
        _ => Some(line.to_owned()),
    }
}

/// `s` cut to at most `max` bytes, on a character boundary (no marker).
pub fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `s` cut to at most `max_bytes` bytes (on a character boundary), with `…` when cut.
pub fn truncate_bytes(s: &str, max_bytes: usize) -> String {
    if s.len() <= max_bytes {
        return s.to_owned();
    }
    format!("{}…", clip(s, max_bytes.saturating_sub('…'.len_utf8())))
}

/// Replaces `${VAR}` (and `${VAR:-default}`) in `s`; `$$` is a literal `$`.
pub fn expand_env(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('{') {
            let end = r
                .find('}')
                .ok_or_else(|| format!("unterminated `${{` in `{s}`"))?;
            let inner = &r[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                return Err(format!(
                    "`${{{inner}}}` is not an environment variable reference"
                ));
            }
            match (lookup(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!("environment variable `{name}` is not set"));
                }
            }
            rest = &r[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// [`expand_env`] on every string in `v`; an error names its key (`key.sub[2]`) and says why.
pub fn expand_env_in(
    v: &mut serde_json::Value,
    key: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), (String, String)> {
    use serde_json::Value;
    match v {
        Value::String(s) if s.contains('$') => {
            *s = expand_env(s, lookup).map_err(|message| (key.to_owned(), message))?;
        }
        Value::Array(a) => {
            for (i, x) in a.iter_mut().enumerate() {
                expand_env_in(x, &format!("{key}[{i}]"), lookup)?;
            }
        }
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                expand_env_in(x, &format!("{key}.{k}"), lookup)?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_human() {
        assert_eq!(duration_ms(850), "850ms");
        assert_eq!(duration_ms(12_340), "12.3s");
        assert_eq!(duration_ms(245_000), "4m 05s");
        assert_eq!(duration_ms(7_380_000), "2h 03m");
        assert_eq!(duration_ms(3 * 86_400_000 + 4 * 3_600_000), "3d 04h");
    }

    #[test]
    fn first_lines_are_cut() {
        assert_eq!(first_line("abc", 10), "abc");
        assert_eq!(first_line("abcdef", 3), "abc…");
        assert_eq!(first_line("a\nb", 10), "a…");
    }

    #[test]
    fn stream_json_lines_read_as_text() {
        let l = r#"{"type":"assistant","message":{"content":[{"type":"text","text":"Hello"},{"type":"tool_use","name":"Bash"}]}}"#;
        assert_eq!(
            pretty_log_line("stdout", l).as_deref(),
            Some("Hello\n[tool] Bash")
        );
        assert_eq!(
            pretty_log_line("stdout", r#"{"type":"result","result":"x"}"#),
            None
        );
        assert_eq!(
            pretty_log_line(
                "stdout",
                r#"{"type":"system","subtype":"init","model":"opus"}"#
            )
            .as_deref(),
            Some("[claude] session started (model opus)")
        );
        assert_eq!(
            pretty_log_line("stderr", "boom").as_deref(),
            Some("[stderr] boom")
        );
        assert_eq!(pretty_log_line("stdout", "plain").as_deref(), Some("plain"));
    }

    #[test]
    fn truncate_bytes_cuts_on_a_character_boundary() {
        assert_eq!(truncate_bytes("short", 10), "short");
        let cut = truncate_bytes("ééééé", 6);
        assert!(cut.len() <= 6 && cut.ends_with('…'), "{cut}");
        assert_eq!(cut, "é…");
    }
}
