//! `cnp cost`: what runs cost over a window (`GET /api/costs`): the top spenders, each day, the
//! totals, and the runs whose CLI reported no cost.

use std::process::ExitCode;

use serde_json::Value;

use super::client::Client;
use super::output::{self, Format};
use crate::store::CostReport;
use crate::text::usd;

#[derive(Debug, clap::Args)]
pub struct CostArgs {
    /// The window's length in days (default 30): back from --until (default now), or on from
    /// --since. Not with both --since and --until.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=366))]
    pub days: Option<u32>,
    /// Start of the window: RFC 3339 (`2026-03-01T09:00:00+01:00`) or a date (`2026-03-01`:
    /// the start of that day in --tz).
    #[arg(long)]
    pub since: Option<String>,
    /// End of the window, exclusive (default now): RFC 3339, or a date (that whole day
    /// included).
    #[arg(long)]
    pub until: Option<String>,
    /// Only this job (name or id).
    #[arg(long)]
    pub job: Option<String>,
    /// Time zone of the days and of dates given (IANA name, e.g. `Europe/Paris`; default the
    /// service's default_timezone).
    #[arg(long)]
    pub tz: Option<String>,
    /// Jobs listed, top spenders first (the totals cover every job).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub top: u32,
    /// Print the API's JSON (the same as --format json).
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

impl CostArgs {
    fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = vec![("limit", self.top.to_string())];
        for (k, v) in [
            ("days", self.days.map(|d| d.to_string())),
            ("since", self.since.clone()),
            ("until", self.until.clone()),
            ("job", self.job.clone()),
            ("tz", self.tz.clone()),
        ] {
            if let Some(v) = v {
                q.push((k, v));
            }
        }
        q
    }
}

pub async fn run(client: &Client, args: CostArgs) -> anyhow::Result<ExitCode> {
    let v: Value = client.get("/api/costs", &args.query()).await?;
    let format = if args.json { Format::Json } else { args.format };
    if output::print_structured(format, &v)? {
        return Ok(ExitCode::SUCCESS);
    }
    let report: CostReport = serde_json::from_value(v)
        .map_err(|e| anyhow::anyhow!("unexpected answer from GET /api/costs: {e}"))?;
    for line in render(&report) {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

fn runs(n: u64) -> String {
    if n == 1 {
        "1 run".into()
    } else {
        format!("{n} runs")
    }
}

/// The report as text: the window and totals, the uncosted runs, the top spenders, the days
/// with runs.
fn render(r: &CostReport) -> Vec<String> {
    let tz: chrono_tz::Tz = r.window.time_zone.parse().unwrap_or(chrono_tz::UTC);
    let local = |t: chrono::DateTime<chrono::Utc>| {
        t.with_timezone(&tz).format("%Y-%m-%d %H:%M").to_string()
    };
    let mut out = vec![format!(
        "Costs from {} to {} ({}){}",
        local(r.window.since),
        local(r.window.until),
        r.window.time_zone,
        r.job
            .as_ref()
            .map(|j| format!(", job {}", j.name))
            .unwrap_or_default()
    )];
    out.push(format!("Total: {} over {}", usd(r.cost_usd), runs(r.runs)));
    if r.uncosted_runs > 0 {
        out.push(format!(
            "{} reported no cost (counted as $0)",
            runs(r.uncosted_runs)
        ));
    }
    if r.runs == 0 {
        out.push("No runs in this window.".into());
        return out;
    }
    if r.job.is_none() {
        out.push(String::new());
        out.push("Top spenders:".into());
        let mut t = output::table(["JOB", "RUNS", "COST", "NO COST"]);
        for j in &r.jobs {
            t.add_row(vec![
                j.name.clone(),
                j.runs.to_string(),
                usd(j.cost_usd),
                j.uncosted_runs.to_string(),
            ]);
        }
        out.extend(t.lines().map(|l| l.trim_end().to_owned()));
        let more = r.jobs_total.saturating_sub(r.jobs.len() as u64);
        if more > 0 {
            let listed: f64 = r.jobs.iter().map(|j| j.cost_usd).sum();
            out.push(format!(
                "… and {more} more job{} ({} in all; --top to list more)",
                if more == 1 { "" } else { "s" },
                usd((r.cost_usd - listed).max(0.0))
            ));
        }
    }
    out.push(String::new());
    out.push(format!("Per day ({}):", r.window.time_zone));
    let mut t = output::table(["DAY", "RUNS", "COST", "NO COST"]);
    for d in r.daily.iter().filter(|d| d.runs > 0) {
        t.add_row(vec![
            d.date.to_string(),
            d.runs.to_string(),
            usd(d.cost_usd),
            d.uncosted_runs.to_string(),
        ]);
    }
    out.extend(t.lines().map(|l| l.trim_end().to_owned()));
    let quiet = r.daily.iter().filter(|d| d.runs == 0).count();
    if quiet > 0 {
        out.push(format!(
            "({quiet} day{} without runs not shown)",
            if quiet == 1 { "" } else { "s" }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use chrono::{NaiveDate, TimeZone, Utc};

    use super::*;
    use crate::store::{CostByDay, CostByJob, CostJobRef, CostWindow};

    fn report() -> CostReport {
        CostReport {
            window: CostWindow {
                since: Utc.with_ymd_and_hms(2026, 3, 1, 5, 0, 0).unwrap(),
                until: Utc.with_ymd_and_hms(2026, 3, 4, 5, 0, 0).unwrap(),
                time_zone: "America/New_York".into(),
            },
            job: None,
            cost_usd: 1.254,
            runs: 6,
            uncosted_runs: 3,
            jobs: vec![CostByJob {
                job_id: "j1".into(),
                name: "nightly".into(),
                runs: 3,
                cost_usd: 1.25,
                uncosted_runs: 1,
            }],
            jobs_total: 3,
            daily: vec![
                CostByDay {
                    date: NaiveDate::from_ymd_opt(2026, 3, 1).unwrap(),
                    runs: 6,
                    cost_usd: 1.254,
                    uncosted_runs: 3,
                },
                CostByDay {
                    date: NaiveDate::from_ymd_opt(2026, 3, 2).unwrap(),
                    runs: 0,
                    cost_usd: 0.0,
                    uncosted_runs: 0,
                },
            ],
        }
    }

    #[test]
    fn costs_text_has_the_window_totals_spenders_days_and_uncosted_runs() {
        let text = render(&report()).join("\n");
        for want in [
            "Costs from 2026-03-01 00:00 to 2026-03-04 00:00 (America/New_York)",
            "Total: $1.25 over 6 runs",
            "3 runs reported no cost (counted as $0)",
            "nightly",
            "… and 2 more jobs ($0.0040 in all; --top to list more)",
            "Per day (America/New_York):",
            "2026-03-01",
            "(1 day without runs not shown)",
        ] {
            assert!(text.contains(want), "`{want}` missing from:\n{text}");
        }
        assert!(!text.contains("2026-03-02"), "{text}");

        let one = CostReport {
            job: Some(CostJobRef {
                id: "j1".into(),
                name: "nightly".into(),
            }),
            uncosted_runs: 1,
            jobs_total: 1,
            ..report()
        };
        let text = render(&one).join("\n");
        assert!(text.contains(", job nightly"), "{text}");
        assert!(
            text.contains("\n1 run reported no cost (counted as $0)"),
            "{text}"
        );
        assert!(!text.contains("Top spenders"), "{text}");

        let empty = CostReport {
            cost_usd: 0.0,
            runs: 0,
            uncosted_runs: 0,
            jobs: vec![],
            jobs_total: 0,
            ..report()
        };
        let text = render(&empty).join("\n");
        assert!(text.contains("Total: $0 over 0 runs"), "{text}");
        assert!(text.contains("No runs in this window."), "{text}");
        assert!(!text.contains("no cost"), "{text}");
    }

    #[test]
    fn costs_flags_become_the_api_query() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct T {
            #[command(flatten)]
            a: CostArgs,
        }
        let t = T::parse_from([
            "cost", "--days", "7", "--job", "nightly", "--tz", "UTC", "--top", "3",
        ]);
        assert_eq!(
            t.a.query(),
            [
                ("limit", "3".to_owned()),
                ("days", "7".to_owned()),
                ("job", "nightly".to_owned()),
                ("tz", "UTC".to_owned())
            ]
        );
        assert!(T::try_parse_from(["cost", "--json", "--format", "yaml"]).is_err());
        assert!(T::try_parse_from(["cost", "--days", "0"]).is_err());
        let t = T::parse_from(["cost", "--json"]);
        assert!(t.a.json);
        assert_eq!(t.a.query(), [("limit", "10".to_owned())]);
    }
}
