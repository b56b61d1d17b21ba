//! The smaller pages: plugins and notifications, statistics, clearing the cooldown.

use axum::extract::{Query, State};
use axum::response::Response;
use axum::Extension;
use minijinja::{context, Value};

use super::{frame, render, see_other, view, PageError};
use crate::api::session::Session;
use crate::api::ApiState;

pub async fn clear_cooldown(State(st): State<ApiState>) -> Result<Response, PageError> {
    let ended = st.engine().clear_cooldown().await?;
    Ok(see_other(if ended.is_some() {
        "/ui/?done=cooldown-cleared"
    } else {
        "/ui/?done=no-cooldown"
    }))
}

pub async fn plugins(
    State(st): State<ApiState>,
    Extension(s): Extension<Session>,
) -> Result<Response, PageError> {
    let (list, errors) = st
        .plugins()
        .map(|p| (p.list(), p.load_errors()))
        .unwrap_or_default();
    let tz = st.engine().settings().default_timezone;
    let plugins: Vec<Value> = list
        .iter()
        .map(|p| {
            context! {
                name => p.name,
                kind => format!("{:?}", p.kind).to_lowercase().replace("retrystrategy", "retry strategy"),
                wit => {
                    let (a, b, c) = crate::plugins::bindings::WIT_VERSION;
                    format!("{}@{a}.{b}.{c}", crate::plugins::bindings::WIT_PACKAGE)
                },
                digest => p.digest.chars().take(12).collect::<String>(),
                size => format!("{:.1} KiB", p.size_bytes as f64 / 1024.0),
                loaded => view::time(p.loaded_at, tz),
                hosts => p.allowed_hosts,
                timeout_ms => p.timeout_ms,
                memory_mb => p.memory_limit_mb,
                calls => serde_json::to_value(&p.calls).ok(),
                path => p.path.display().to_string(),
            }
        })
        .collect();
    let errors: Vec<Value> = errors
        .iter()
        .map(|e| context! { path => e.path.display().to_string(), message => e.message, at => view::time(e.at, tz) })
        .collect();
    let settings = st.engine().notifications().settings();
    let channels: Vec<Value> = settings
        .channels
        .iter()
        .map(|(name, v)| {
            context! {
                name,
                what => crate::notify::config::describe_channel(v),
                default => settings.default_channels.contains(name),
            }
        })
        .collect();
    let deliveries = st.engine().store().recent_deliveries(50).await?;
    let deliveries: Vec<Value> = deliveries
        .iter()
        .map(|d| {
            context! {
                at => view::time(d.created_at, tz), event => d.event, channel => d.channel,
                status => d.status, attempts => d.attempts, detail => d.detail,
                execution => d.execution_id,
            }
        })
        .collect();
    render(
        "plugins.html",
        frame(&st, &s, "plugins"),
        context! { plugins, errors, channels, deliveries,
            events => context! {
                on_success => settings.on_success, on_failure => settings.on_failure,
                on_start => settings.on_start, on_cooldown => settings.on_cooldown,
                rate_limit => settings.rate_limit_per_hour,
            },
        },
    )
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct StatsQuery {
    days: Option<u32>,
}

fn window(days: Option<u32>) -> u32 {
    days.filter(|d| matches!(d, 7 | 30 | 90)).unwrap_or(30)
}

/// The statistics page; its charts are drawn from `GET /api/jobs/stats/daily`.
pub async fn stats(
    State(st): State<ApiState>,
    Extension(s): Extension<Session>,
    Query(q): Query<StatsQuery>,
) -> Result<Response, PageError> {
    let days = window(q.days);
    let (daily, costs) = st
        .engine()
        .store()
        .daily_stats(st.engine().clock().now(), days)
        .await?;
    let runs: u64 = daily
        .iter()
        .map(|d| d.completed + d.failed + d.timed_out + d.cancelled + d.interrupted)
        .sum();
    let ok: u64 = daily.iter().map(|d| d.completed).sum();
    let cost: f64 = daily.iter().map(|d| d.cost_usd).sum();
    let budgets = st.engine().budget_status().await;
    let scopes: Vec<_> = std::iter::once(&budgets.global)
        .chain(&budgets.jobs)
        .filter(|sc| sc.budget.is_capped())
        .map(view::budget_scope)
        .collect();
    render(
        "stats.html",
        frame(&st, &s, "stats"),
        context! {
            days, runs, ok,
            budgets => scopes, held_runs => budgets.held_runs,
            success => (runs > 0).then(|| format!("{:.1}%", ok as f64 * 100.0 / runs as f64)),
            cost => view::usd(cost),
            daily => daily.iter().map(|d| context! {
                day => d.day, completed => d.completed,
                failed => d.failed + d.timed_out + d.interrupted,
                other => d.cancelled + d.skipped,
                p50 => d.p50_ms.map(view::duration_ms), p95 => d.p95_ms.map(view::duration_ms),
                cost => view::usd(d.cost_usd),
            }).collect::<Vec<_>>(),
            jobs => costs.iter().map(|c| context! {
                id => c.job_id, name => c.name, runs => c.runs, cost => view::usd(c.cost_usd),
            }).collect::<Vec<_>>(),
        },
    )
}
