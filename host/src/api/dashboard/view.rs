//! Formatting for pages: times in a zone, durations, status words and marks, sparklines,
//! and Markdown that can hold no markup of its own.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use minijinja::{context, Value};

use crate::model::{ExecutionStatus, JobStatus};

pub fn url_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// `2026-12-07 09:00:00 UTC`.
pub fn utc(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// `2026-12-07 10:00 CET` in `tz`.
pub fn in_zone(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z").to_string()
}

/// A time as a page shows it: the text in `tz`, and the instant for the script (which adds
/// the viewer's own zone and a relative "in 5 min").
pub fn time(t: DateTime<Utc>, tz: Tz) -> Value {
    context! {
        iso => t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        text => in_zone(t, tz),
        zone => tz.name(),
    }
}

/// `850ms`, `12.3s`, `4m 05s`, `2h 10m`.
pub fn duration_ms(ms: u64) -> String {
    crate::text::duration_ms(ms)
}

/// A budget scope for the pages: its windows (cap, spent), whether it holds runs, and why.
pub fn budget_scope(sc: &crate::engine::ScopeStatus) -> minijinja::Value {
    minijinja::context! {
        name => match &sc.job_name {
            Some(n) => n.clone(),
            None => format!("All runs ({})", if sc.source == "override" { "set at run time" } else { "[budget]" }),
        },
        job_id => sc.job_id,
        held => sc.exceeded,
        held_runs => sc.held_runs,
        until => sc.held_until.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        reason => sc.reason.as_deref().map(|r| r.trim_start_matches("budget_held: ").to_owned()),
        hard_stop => sc.budget.hard_stop,
        windows => sc.windows.iter().filter(|w| w.cap_usd.is_some()).map(|w| minijinja::context! {
            window => if w.window == "daily" { "last 24 h" } else { "last 30 days" },
            cap => w.cap_usd.map(usd),
            spent => usd(w.spent_usd),
            percent => w.cap_usd.filter(|c| *c > 0.0).map(|c| ((w.spent_usd / c) * 100.0).min(100.0).round() as u32).unwrap_or(100),
            uncosted => w.uncosted_runs,
        }).collect::<Vec<_>>(),
    }
}

pub use crate::text::usd;

/// A status as a page shows it: a word, a mark that does not rely on colour, a CSS class.
pub fn exec_status(s: ExecutionStatus) -> Value {
    let (mark, class) = match s {
        ExecutionStatus::Completed => ("✔", "ok"),
        ExecutionStatus::Failed | ExecutionStatus::TimedOut => ("✘", "bad"),
        ExecutionStatus::Interrupted => ("⚡", "bad"),
        ExecutionStatus::Cancelled => ("⊘", "muted"),
        ExecutionStatus::Skipped => ("↷", "muted"),
        ExecutionStatus::Running => ("▶", "run"),
        ExecutionStatus::Queued => ("…", "wait"),
        ExecutionStatus::Deferred => ("◷", "wait"),
    };
    context! { word => s.as_str().replace('_', " "), mark, class, value => s.as_str() }
}

pub fn job_status(s: JobStatus, held: bool) -> Value {
    let (mark, class, word) = match (s, held) {
        (JobStatus::Active, true) => ("◷", "wait", "held (cooldown)"),
        (JobStatus::Active, false) => ("●", "ok", "active"),
        (JobStatus::Paused, _) => ("Ⅱ", "muted", "paused"),
        (JobStatus::Disabled, _) => ("⊘", "muted", "disabled"),
    };
    context! { word, mark, class, value => s.as_str() }
}

/// A small SVG polyline of durations (oldest left), with a title listing them; `None` for
/// fewer than two.
pub fn sparkline(durations_ms: &[u64]) -> Option<String> {
    if durations_ms.len() < 2 {
        return None;
    }
    let (w, h) = (80.0_f64, 20.0_f64);
    let max = durations_ms.iter().copied().max().unwrap_or(1).max(1) as f64;
    let step = w / (durations_ms.len() - 1) as f64;
    let points: Vec<String> = durations_ms
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let x = i as f64 * step;
            let y = h - 1.0 - (*d as f64 / max) * (h - 2.0);
            format!("{x:.1},{y:.1}")
        })
        .collect();
    Some(points.join(" "))
}

/// A JSON document without its `null` members (a definition reads better without them).
pub fn without_nulls(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => serde_json::Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, without_nulls(v)))
                .collect(),
        ),
        serde_json::Value::Array(a) => {
            serde_json::Value::Array(a.into_iter().map(without_nulls).collect())
        }
        v => v,
    }
}

/// Markdown to HTML with every piece of HTML in the source shown as text, and links only to
/// http(s) and mailto (images become links: nothing loads from elsewhere).
pub fn markdown(src: &str) -> String {
    use pulldown_cmark::{CowStr, Event, Options, Parser, Tag};
    let safe = |url: &str| {
        let u = url.trim().to_ascii_lowercase();
        u.starts_with("http://") || u.starts_with("https://") || u.starts_with("mailto:")
    };
    let events = Parser::new_ext(src, Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH).map(
        |e| match e {
            Event::Html(h) | Event::InlineHtml(h) => Event::Text(h),
            Event::Start(Tag::Link {
                link_type,
                dest_url,
                title,
                id,
            }) => Event::Start(Tag::Link {
                link_type,
                dest_url: if safe(&dest_url) {
                    dest_url
                } else {
                    CowStr::from("#")
                },
                title,
                id,
            }),
            Event::Start(Tag::Image {
                link_type,
                dest_url,
                title,
                id,
            }) => Event::Start(Tag::Link {
                link_type,
                dest_url: if safe(&dest_url) {
                    dest_url
                } else {
                    CowStr::from("#")
                },
                title,
                id,
            }),
            Event::End(pulldown_cmark::TagEnd::Image) => Event::End(pulldown_cmark::TagEnd::Link),
            e => e,
        },
    );
    let mut out = String::with_capacity(src.len() * 5 / 4);
    pulldown_cmark::html::push_html(&mut out, events);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_keeps_no_markup_of_its_own() {
        let html =
            markdown("# Hi\n\n<script>alert(1)</script>\n\n<img src=x onerror=alert(1)> **b**");
        assert!(html.contains("<h1>Hi</h1>"));
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(html.contains("<strong>b</strong>"));
    }

    #[test]
    fn markdown_links_only_to_the_web() {
        let html =
            markdown("[a](javascript:alert(1)) [b](https://example.com) ![c](http://x/y.png)");
        assert!(!html.contains("javascript:"), "{html}");
        assert!(html.contains(r#"href="https://example.com""#));
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains(r#"href="http://x/y.png""#), "{html}");
    }

    #[test]
    fn sparkline_scales_to_the_box() {
        assert_eq!(sparkline(&[5]), None);
        let p = sparkline(&[0, 100]).unwrap();
        assert_eq!(p, "0.0,19.0 80.0,1.0");
    }
}
