//! `GET /api/costs`: what runs cost over a window (see `store/costs.rs`), and the cost
//! counters of the Prometheus exposition (`GET /metrics`).

use std::fmt::Write as _;

use axum::extract::{Query, State};
use axum::Json;
use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use serde::Deserialize;

use super::error::ApiError;
use super::ApiState;
use crate::store::{local_day_start, CostError, CostQuery, CostReport, JobCostCounter, MAX_DAYS};

/// Jobs listed when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 20;
/// The most jobs one report lists.
pub const MAX_LIMIT: usize = 1000;

/// Query of `GET /api/costs` (all optional, read as text so a bad value gets a clear error).
#[derive(Debug, Default, Deserialize)]
pub struct CostParams {
    pub days: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub job: Option<String>,
    pub tz: Option<String>,
    pub limit: Option<String>,
}

/// A 422 that names the bad query parameter.
fn bad_param(field: &str, message: impl Into<String>) -> ApiError {
    // 422 naming the parameter, as the other routes answer a bad query parameter.
    ApiError::invalid(field, message)
}

/// The value of a parameter, `None` when absent or empty.
fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

impl CostParams {
    /// The store query these parameters ask for, `now` being the engine's clock and
    /// `default_tz` the service's `default_timezone`.
    pub fn to_query(&self, now: DateTime<Utc>, default_tz: Tz) -> Result<CostQuery, ApiError> {
        let tz = match given(&self.tz) {
            None => default_tz,
            Some(s) => s.parse::<Tz>().map_err(|_| {
                bad_param(
                    "tz",
                    format!("`{s}` is not a time zone: give an IANA name such as `Europe/Paris` or `UTC`"),
                )
            })?,
        };
        let days = match given(&self.days) {
            None => None,
            Some(s) => Some(
                s.parse::<u32>()
                    .ok()
                    .filter(|d| (1..=MAX_DAYS).contains(d))
                    .ok_or_else(|| {
                        bad_param(
                            "days",
                            format!("must be a whole number 1–{MAX_DAYS}, got `{s}`"),
                        )
                    })?,
            ),
        };
        let limit = match given(&self.limit) {
            None => DEFAULT_LIMIT,
            Some(s) => s
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    bad_param(
                        "limit",
                        format!("must be a whole number 1–{MAX_LIMIT}, got `{s}`"),
                    )
                })?,
        };
        Ok(CostQuery {
            since: given(&self.since)
                .map(|s| instant("since", s, tz, false))
                .transpose()?,
            until: given(&self.until)
                .map(|s| instant("until", s, tz, true))
                .transpose()?,
            days,
            job: given(&self.job).map(str::to_owned),
            limit: Some(limit),
            ..CostQuery::new(now, tz)
        })
    }
}

/// An RFC 3339 instant, or a `YYYY-MM-DD` date in `tz`: the start of that day, or for an
/// `until` (`end_of_day`) the start of the next, so the day itself is in the window.
fn instant(field: &str, s: &str, tz: Tz, end_of_day: bool) -> Result<DateTime<Utc>, ApiError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        let d = if end_of_day { d.succ_opt() } else { Some(d) };
        if let Some(d) = d {
            return Ok(local_day_start(tz, d));
        }
    }
    Err(bad_param(
        field,
        format!(
            "`{s}` is not an instant: give RFC 3339 (`2026-03-01T00:00:00Z`, \
             `2026-03-01T09:00:00+01:00`) or a date (`2026-03-01`, a whole day in `tz`)"
        ),
    ))
}

#[utoipa::path(get, path = "/api/costs", operation_id = "getCostReport", tag = "costs",
    params(
        ("days" = Option<u32>, Query, description = "Window length in days, 1–366 (default 30): back from `until` (default now), or on from `since`. Not with both `since` and `until`."),
        ("since" = Option<String>, Query, description = "Window start (inclusive): RFC 3339, or a date `YYYY-MM-DD` (its start in `tz`)"),
        ("until" = Option<String>, Query, description = "Window end (exclusive; default now): RFC 3339, or a date `YYYY-MM-DD` (that whole day included)"),
        ("job" = Option<String>, Query, description = "Only this job (id or name)"),
        ("tz" = Option<String>, Query, description = "IANA time zone of the daily buckets and of dates (default: the service's `default_timezone`)"),
        ("limit" = Option<u32>, Query, description = "Jobs listed, top spenders first: 1–1000, default 20 (the totals cover every job)"),
    ),
    responses(
        (status = 200, description = "Spending over the window: totals, per job, per calendar day", body = CostReport),
        (status = 422, description = "A bad query parameter; `field` names it", body = super::ErrorBody),
        (status = 404, description = "No such job", body = super::ErrorBody),
    ))]
pub async fn report(
    State(st): State<ApiState>,
    Query(q): Query<CostParams>,
) -> Result<Json<CostReport>, ApiError> {
    let engine = st.engine();
    let query = q.to_query(engine.clock().now(), engine.settings().default_timezone)?;
    match engine.store().cost_report(query).await {
        Ok(r) => Ok(Json(r)),
        Err(CostError::Invalid { field, message }) => Err(bad_param(field, message)),
        Err(CostError::Store(e)) => Err(e.into()),
    }
}

/// A Prometheus label value: backslash, double quote and line feed escaped.
fn label_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The cost counters in the Prometheus text format, one series per job.
pub(super) fn prometheus_cost_counters(out: &mut String, counters: &[JobCostCounter]) {
    let _ = writeln!(
        out,
        "# HELP cnp_cost_usd_total Cost the Claude CLI reported for the job's runs, USD (kept when old runs are pruned).\n# TYPE cnp_cost_usd_total counter"
    );
    for c in counters {
        let _ = writeln!(
            out,
            "cnp_cost_usd_total{{job=\"{}\"}} {}",
            label_value(&c.name),
            c.cost_usd
        );
    }
    let _ = writeln!(
        out,
        "# HELP cnp_runs_without_cost_total Runs of the job that ran the CLI but reported no cost (counted as $0).\n# TYPE cnp_runs_without_cost_total counter"
    );
    for c in counters {
        let _ = writeln!(
            out,
            "cnp_runs_without_cost_total{{job=\"{}\"}} {}",
            label_value(&c.name),
            c.uncosted_runs
        );
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use chrono::TimeZone;

    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 20, 12, 0, 0).unwrap()
    }

    fn params(pairs: &[(&str, &str)]) -> CostParams {
        let mut p = CostParams::default();
        for (k, v) in pairs {
            let v = Some((*v).to_owned());
            match *k {
                "days" => p.days = v,
                "since" => p.since = v,
                "until" => p.until = v,
                "job" => p.job = v,
                "tz" => p.tz = v,
                "limit" => p.limit = v,
                _ => panic!("no parameter {k}"),
            }
        }
        p
    }

    fn rejected(pairs: &[(&str, &str)]) -> ApiError {
        params(pairs)
            .to_query(now(), Tz::UTC)
            .expect_err("a bad parameter")
    }

    #[test]
    fn costs_parameters_become_the_store_query() {
        let q = params(&[]).to_query(now(), Tz::Europe__Paris).unwrap();
        assert_eq!(
            (q.now, q.since, q.until, q.days, q.job, q.tz, q.limit),
            (now(), None, None, None, None, Tz::Europe__Paris, Some(20))
        );
        let q = params(&[
            ("days", "7"),
            ("job", "nightly"),
            ("tz", "America/New_York"),
            ("limit", "3"),
        ])
        .to_query(now(), Tz::UTC)
        .unwrap();
        assert_eq!(q.days, Some(7));
        assert_eq!(q.job.as_deref(), Some("nightly"));
        assert_eq!(q.tz, Tz::America__New_York);
        assert_eq!(q.limit, Some(3));

        // Instants in RFC 3339; dates are whole days in `tz` (until: that day included).
        let q = params(&[
            ("since", "2026-03-01T09:00:00+01:00"),
            ("until", "2026-03-10T00:00:00Z"),
        ])
        .to_query(now(), Tz::UTC)
        .unwrap();
        assert_eq!(
            (q.since, q.until),
            (
                Some(Utc.with_ymd_and_hms(2026, 3, 1, 8, 0, 0).unwrap()),
                Some(Utc.with_ymd_and_hms(2026, 3, 10, 0, 0, 0).unwrap())
            )
        );
        let q = params(&[
            ("since", "2026-03-01"),
            ("until", "2026-03-31"),
            ("tz", "America/New_York"),
        ])
        .to_query(now(), Tz::UTC)
        .unwrap();
        assert_eq!(
            (q.since, q.until),
            (
                Some(Utc.with_ymd_and_hms(2026, 3, 1, 5, 0, 0).unwrap()),
                Some(Utc.with_ymd_and_hms(2026, 4, 1, 4, 0, 0).unwrap())
            )
        );
        // Empty values are absent ones.
        let q = params(&[("days", ""), ("job", ""), ("tz", "")])
            .to_query(now(), Tz::Asia__Tokyo)
            .unwrap();
        assert_eq!((q.days, q.job, q.tz), (None, None, Tz::Asia__Tokyo));
    }

    #[test]
    fn costs_bad_parameters_are_422_naming_the_parameter() {
        for (pairs, field) in [
            (&[("days", "0")][..], "days"),
            (&[("days", "367")][..], "days"),
            (&[("days", "week")][..], "days"),
            (&[("limit", "0")][..], "limit"),
            (&[("limit", "1001")][..], "limit"),
            (&[("tz", "Mars/Olympus")][..], "tz"),
            (&[("since", "yesterday")][..], "since"),
            (&[("until", "2026-02-30")][..], "until"),
        ] {
            let e = rejected(pairs);
            assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY, "{pairs:?}");
            assert_eq!(e.field.as_deref(), Some(field), "{pairs:?}");
            assert!(!e.message.is_empty());
        }
        let e = rejected(&[("tz", "Mars/Olympus")]);
        assert!(e.message.contains("Mars/Olympus"), "{}", e.message);
    }

    #[test]
    fn costs_counters_are_valid_prometheus_text() {
        let mut out = String::new();
        prometheus_cost_counters(
            &mut out,
            &[
                JobCostCounter {
                    name: "nightly".into(),
                    cost_usd: 1.25,
                    uncosted_runs: 0,
                },
                JobCostCounter {
                    name: "say \"hi\"\\\nthen".into(),
                    cost_usd: 0.0,
                    uncosted_runs: 3,
                },
            ],
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            [
                "# HELP cnp_cost_usd_total Cost the Claude CLI reported for the job's runs, USD (kept when old runs are pruned).",
                "# TYPE cnp_cost_usd_total counter",
                "cnp_cost_usd_total{job=\"nightly\"} 1.25",
                "cnp_cost_usd_total{job=\"say \\\"hi\\\"\\\\\\nthen\"} 0",
                "# HELP cnp_runs_without_cost_total Runs of the job that ran the CLI but reported no cost (counted as $0).",
                "# TYPE cnp_runs_without_cost_total counter",
                "cnp_runs_without_cost_total{job=\"nightly\"} 0",
                "cnp_runs_without_cost_total{job=\"say \\\"hi\\\"\\\\\\nthen\"} 3",
            ]
        );
        // Small costs are written out, never in exponent form.
        let mut out = String::new();
        prometheus_cost_counters(
            &mut out,
            &[JobCostCounter {
                name: "a".into(),
                cost_usd: 0.00014,
                uncosted_runs: 0,
            }],
        );
        assert!(
            out.contains("cnp_cost_usd_total{job=\"a\"} 0.00014\n"),
            "{out}"
        );
    }
}
