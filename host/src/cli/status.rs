//! `cnp status` and `cnp plugin list`: the daemon's own view of itself.

use std::process::ExitCode;

use serde_json::Value;

use super::client::Client;
use super::output::{self, Format};

fn s(v: &Value, ptr: &str) -> String {
    match v.pointer(ptr) {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(x)) => x.clone(),
        Some(x) => x.to_string(),
    }
}

/// An RFC 3339 value shown in local time.
fn time(v: &Value, ptr: &str) -> String {
    v.pointer(ptr)
        .and_then(|t| t.as_str())
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| output::local_time(Some(t.with_timezone(&chrono::Utc))))
        .unwrap_or_else(|| s(v, ptr))
}

/// One line per error entry (strings or objects with path/line/message).
fn error_lines(v: Option<&Value>) -> Vec<String> {
    let Some(Value::Array(items)) = v else {
        return Vec::new();
    };
    items
        .iter()
        .map(|e| match e {
            Value::String(s) => s.clone(),
            Value::Object(o) => {
                let path = o
                    .get("path")
                    .or_else(|| o.get("file"))
                    .and_then(|p| p.as_str())
                    .unwrap_or_default();
                let line = o
                    .get("line")
                    .and_then(|l| l.as_u64())
                    .map(|l| format!(":{l}"))
                    .unwrap_or_default();
                let msg = o
                    .get("message")
                    .and_then(|m| m.as_str())
                    .map(str::to_owned)
                    .unwrap_or_else(|| e.to_string());
                if path.is_empty() || msg.starts_with(path) {
                    msg
                } else {
                    format!("{path}{line}: {msg}")
                }
            }
            other => other.to_string(),
        })
        .collect()
}

/// The cooldown in words (`null` → none).
fn cooldown_text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "none".into(),
        Some(Value::Object(o)) => {
            let until = ["until", "ends_at", "resets_at"]
                .iter()
                .find_map(|k| o.get(*k).and_then(|t| t.as_str()))
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| {
                    let t = t.with_timezone(&chrono::Utc);
                    format!(
                        "until {} ({})",
                        output::local_time(Some(t)),
                        output::relative(t)
                    )
                });
            let probe = o
                .get("next_probe")
                .and_then(|t| t.as_str())
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| {
                    let t = t.with_timezone(&chrono::Utc);
                    format!(
                        "reset unknown, next probe {} ({})",
                        output::local_time(Some(t)),
                        output::relative(t)
                    )
                });
            let until = until.or(probe);
            let reason = o
                .get("reason")
                .or_else(|| o.get("message"))
                .and_then(|r| r.as_str());
            let held = o
                .get("deferred")
                .and_then(|d| d.as_u64())
                .filter(|d| *d > 0)
                .map(|d| format!(" — {d} run(s) deferred"))
                .unwrap_or_default();
            let reason = reason.map(|r| format!("{r}{held}"));
            match (until, reason) {
                (Some(u), Some(r)) => format!("active {u}: {r}"),
                (Some(u), None) => format!("active {u}"),
                (None, Some(r)) => format!("active: {r}"),
                (None, None) => format!("active: {}", Value::Object(o.clone())),
            }
        }
        Some(other) => other.to_string(),
    }
}

/// Backups in words: the periodic schedule, the last one, the next one.
fn backup_text(v: Option<&Value>) -> String {
    let Some(b) = v.filter(|b| b.is_object()) else {
        return "-".into();
    };
    let mut parts = Vec::new();
    match b.get("periodic").filter(|p| !p.is_null()) {
        Some(p) => parts.push(format!(
            "every {}, {} kept, in {}",
            humantime::format_duration(std::time::Duration::from_secs(
                p["every_seconds"].as_u64().unwrap_or(0)
            )),
            s(p, "/keep"),
            s(p, "/directory")
        )),
        None => parts.push("periodic off".into()),
    }
    match b.get("last").filter(|l| !l.is_null()) {
        Some(l) => {
            let at = l
                .get("at")
                .and_then(|t| t.as_str())
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&chrono::Utc));
            parts.push(format!(
                "last {} ({}, {})",
                output::local_time(at),
                at.map(output::relative).unwrap_or_default(),
                s(l, "/path")
            ))
        }
        None => parts.push("none taken yet".into()),
    }
    if let Some(next) = b
        .get("next_at")
        .and_then(|t| t.as_str())
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    {
        let next = next.with_timezone(&chrono::Utc);
        parts.push(format!(
            "next {} ({})",
            output::local_time(Some(next)),
            output::relative(next)
        ));
    }
    if b.get("last_error").is_some_and(|e| !e.is_null()) {
        parts.push("LAST ATTEMPT FAILED".into());
    }
    parts.join(" — ")
}

pub async fn status(client: &Client, format: Format) -> anyhow::Result<ExitCode> {
    let v: Value = client.get("/api/status", &[]).await?;
    if output::print_structured(format, &v)? {
        return Ok(ExitCode::SUCCESS);
    }
    println!("cnp at {}", client.endpoint.url);
    let mut rows = vec![
        (
            "Jobs",
            format!(
                "{} ({} active)",
                s(&v, "/engine/jobs"),
                s(&v, "/engine/active_jobs")
            ),
        ),
        (
            "Runs",
            format!(
                "{} running, {} queued (at most {} at once)",
                s(&v, "/engine/running"),
                s(&v, "/engine/queued"),
                s(&v, "/engine/max_concurrent_jobs")
            ),
        ),
        ("Cooldown", cooldown_text(v.get("cooldown"))),
    ];
    let manifest_errors = error_lines(v.pointer("/manifests/errors"));
    rows.push((
        "Manifests",
        match v.pointer("/manifests/directory") {
            None | Some(Value::Null) => "no folder configured".into(),
            Some(_) => format!(
                "{} — {} job(s), {} prompt(s), {} template(s), last sync {}",
                s(&v, "/manifests/directory"),
                s(&v, "/manifests/jobs"),
                s(&v, "/manifests/prompts"),
                s(&v, "/manifests/templates"),
                time(&v, "/manifests/last_sync")
            ),
        },
    ));
    let plugin_errors = error_lines(v.pointer("/plugins/errors"));
    let plugins = match (v.pointer("/plugins/loaded"), v.pointer("/plugins/errors")) {
        (Some(Value::Number(n)), Some(Value::Number(e))) if e.as_u64() != Some(0) => {
            format!("{n} loaded, {e} failed to load (see `cnp plugin list`)")
        }
        (Some(Value::Number(n)), _) => format!("{n} loaded"),
        (Some(Value::Array(a)), _) => format!("{} loaded", a.len()),
        _ => "-".into(),
    };
    rows.push(("Plugins", plugins));
    rows.push(("Backups", backup_text(v.get("backup"))));
    if let Some(c) = v.get("cluster").filter(|c| !c.is_null()) {
        rows.push(("Cluster", cluster_text(c)));
    }
    output::print_table(&output::detail_table(rows));
    if let Some(members) = v.pointer("/cluster/members").and_then(|m| m.as_array()) {
        println!();
        let me = v.pointer("/cluster/member").and_then(|m| m.as_str());
        let mut t = output::table([
            "MEMBER",
            "ROLE",
            "PROCESS",
            "RUNNING",
            "QUEUED",
            "HEARTBEAT",
            "API",
        ]);
        for row in members.iter().map(|m| {
            let id = s(m, "/id");
            vec![
                format!(
                    "{}{}",
                    id.get(..13).unwrap_or(&id),
                    if Some(id.as_str()) == me {
                        " (this)"
                    } else {
                        ""
                    }
                ),
                if m.get("leader").and_then(|l| l.as_bool()) == Some(true) {
                    "leader".into()
                } else {
                    "member".into()
                },
                format!("{} pid {}", s(m, "/host"), s(m, "/pid")),
                format!("{}/{}", s(m, "/running"), s(m, "/capacity")),
                s(m, "/queued"),
                output::relative(
                    m.get("heartbeat_at")
                        .and_then(|t| t.as_str())
                        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                        .map(|t| t.with_timezone(&chrono::Utc))
                        .unwrap_or_default(),
                ),
                s(m, "/api"),
            ]
        }) {
            t.add_row(row);
        }
        output::print_table(&t);
    }
    if let Some(e) = v.pointer("/backup/last_error").filter(|e| !e.is_null()) {
        println!();
        println!(
            "the latest periodic backup failed at {}: {}",
            time(e, "/at"),
            s(e, "/message")
        );
    }
    for (what, errs) in [("manifest", &manifest_errors), ("plugin", &plugin_errors)] {
        if !errs.is_empty() {
            println!();
            println!("{} {what} error(s):", errs.len());
            for e in errs.iter() {
                println!("  {e}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The cluster row of `cnp status`: members and which leads.
fn cluster_text(c: &Value) -> String {
    let n = c
        .get("members")
        .and_then(|m| m.as_array())
        .map_or(0, |m| m.len());
    let leader = match c.get("leader").and_then(|l| l.as_str()) {
        Some(l) if Some(l) == c.get("member").and_then(|m| m.as_str()) => "this instance".into(),
        Some(l) => format!("member {}", l.get(..13).unwrap_or(l)),
        None => "none (taking over)".into(),
    };
    format!("{n} member(s) on PostgreSQL, timer held by {leader}")
}

/// `cnp cooldown [show]` and `cnp cooldown clear`.
pub async fn cooldown(client: &Client, clear: bool, format: Format) -> anyhow::Result<ExitCode> {
    let v: Value = if clear {
        client
            .post("/api/cooldown/clear", &serde_json::json!({}))
            .await?
    } else {
        client.get("/api/cooldown", &[]).await?
    };
    if output::print_structured(format, &v)? {
        return Ok(ExitCode::SUCCESS);
    }
    if !clear {
        println!("Cooldown: {}", cooldown_text(v.get("cooldown")));
    } else if v.get("cleared").and_then(|c| c.as_bool()) == Some(true) {
        println!(
            "cooldown cleared: {} deferred run(s) released in priority order",
            s(&v, "/cooldown/deferred")
        );
    } else {
        println!("no cooldown in force");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn plugins(client: &Client, format: Format) -> anyhow::Result<ExitCode> {
    let v: Value = client.get("/api/plugins", &[]).await?;
    if output::print_structured(format, &v)? {
        return Ok(ExitCode::SUCCESS);
    }
    let items = v
        .get("items")
        .and_then(|i| i.as_array())
        .cloned()
        .unwrap_or_default();
    if items.is_empty() {
        println!("no plugins loaded");
    } else {
        let mut t = output::table([
            "NAME",
            "KIND",
            "SIZE",
            "CALLS",
            "LIMITS",
            "OUTBOUND HTTP",
            "LOADED",
        ]);
        for p in &items {
            let n = |ptr: &str| p.pointer(ptr).and_then(|x| x.as_u64()).unwrap_or(0);
            let hosts: Vec<&str> = p
                .get("allowed_hosts")
                .and_then(|h| h.as_array())
                .map(|a| a.iter().filter_map(|h| h.as_str()).collect())
                .unwrap_or_default();
            // The WIT version, when not the base one (a 0.2 condition hook).
            let kind = match p.get("wit_version").and_then(|v| v.as_str()) {
                Some(v) if v != "0.1.0" => format!("{} (WIT {v})", s(p, "/kind")),
                _ => s(p, "/kind"),
            };
            t.add_row(vec![
                s(p, "/name"),
                kind,
                format!("{} KiB", n("/size_bytes") / 1024),
                format!(
                    "{} ok, {} failed, {} timed out",
                    n("/calls/ok"),
                    n("/calls/failed"),
                    n("/calls/timeouts")
                ),
                format!("{} ms, {} MiB", n("/timeout_ms"), n("/memory_limit_mb")),
                if hosts.is_empty() {
                    "none".into()
                } else {
                    hosts.join(", ")
                },
                format!(
                    "{}{}",
                    time(p, "/loaded_at"),
                    if p.get("from_cache").and_then(|c| c.as_bool()) == Some(true) {
                        " (cached)"
                    } else {
                        ""
                    }
                ),
            ]);
        }
        output::print_table(&t);
    }
    let errs = error_lines(v.get("errors"));
    if !errs.is_empty() {
        println!();
        println!("{} plugin(s) failed to load:", errs.len());
        for e in &errs {
            println!("  {e}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn errors_and_cooldown_read_well() {
        let e = error_lines(Some(&json!([
            {"path": "jobs/a.yaml", "line": 4, "message": "job `a`: priority: must be 1–10"},
            "plain"
        ])));
        assert_eq!(
            e,
            ["jobs/a.yaml:4: job `a`: priority: must be 1–10", "plain"]
        );
        assert_eq!(cooldown_text(Some(&Value::Null)), "none");
        assert!(cooldown_text(Some(
            &json!({"until": "2099-01-01T00:00:00Z", "reason": "usage limit"})
        ))
        .starts_with("active until"));
    }
}
