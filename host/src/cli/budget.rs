//! `cnp budget`: spending caps, what was spent in their windows, and the runs they hold.

use std::process::ExitCode;

use serde_json::Value;

use super::client::Client;
use super::output::{self, Format};

#[derive(Debug, clap::Subcommand)]
pub enum BudgetCommand {
    /// The caps, what was spent in the last 24 hours and 30 days, and the runs held (the
    /// default).
    Show,
    /// Replace the config's `[budget]` caps on the running service (kept across restarts until
    /// `cnp budget reset`); raising a cap releases the runs it held.
    Set {
        /// Cap on what all runs that ended in the last 24 hours may cost, USD.
        #[arg(long, value_name = "USD")]
        daily_usd: Option<f64>,
        /// Cap on what all runs that ended in the last 30 days may cost, USD.
        #[arg(long, value_name = "USD")]
        monthly_usd: Option<f64>,
        /// Stop the runs going too when a cap is reached.
        #[arg(long)]
        hard_stop: bool,
    },
    /// Back to the config's `[budget]`.
    Reset,
}

pub async fn run(
    client: &Client,
    cmd: Option<BudgetCommand>,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let v: Value = match cmd.unwrap_or(BudgetCommand::Show) {
        BudgetCommand::Show => client.get("/api/budget", &[]).await?,
        BudgetCommand::Set {
            daily_usd,
            monthly_usd,
            hard_stop,
        } => {
            client
                .put(
                    "/api/budget",
                    &crate::model::Budget {
                        daily_usd,
                        monthly_usd,
                        hard_stop,
                    },
                )
                .await?
        }
        BudgetCommand::Reset => client.delete("/api/budget").await?,
    };
    if output::print_structured(format, &v)? {
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", render(&v));
    Ok(ExitCode::SUCCESS)
}

fn usd(v: Option<&Value>) -> String {
    v.and_then(Value::as_f64)
        .map_or_else(|| "-".into(), crate::text::usd_exact)
}

/// The status as a table, one row per scope and window, then what holds runs.
fn render(v: &Value) -> String {
    let mut scopes: Vec<&Value> = vec![&v["global"]];
    scopes.extend(v["jobs"].as_array().into_iter().flatten());
    let mut t = output::table([
        "SCOPE", "WINDOW", "CAP", "SPENT", "GOING", "NO COST", "STATE",
    ]);
    let mut notes = Vec::new();
    for sc in scopes {
        let name = match sc["scope"].as_str() {
            Some("global") => format!("global ({})", sc["source"].as_str().unwrap_or("config")),
            _ => format!("job {}", sc["job_name"].as_str().unwrap_or("?")),
        };
        let state = if sc["exceeded"].as_bool() == Some(true) {
            "HELD"
        } else {
            "ok"
        };
        for w in sc["windows"].as_array().into_iter().flatten() {
            let capped = w.get("cap_usd").is_some_and(|c| !c.is_null());
            t.add_row(vec![
                name.clone(),
                w["window"].as_str().unwrap_or("").to_owned(),
                usd(w.get("cap_usd")),
                usd(w.get("spent_usd")),
                usd(w.get("going_usd")),
                w["uncosted_runs"].as_u64().unwrap_or(0).to_string(),
                if capped { state } else { "" }.to_owned(),
            ]);
        }
        if let Some(r) = sc["reason"].as_str() {
            notes.push(format!("{name}: {r}"));
        }
    }
    let mut out = format!("{t}\n");
    for n in notes {
        out.push_str(&format!("{n}\n"));
    }
    let held = v["held_runs"].as_u64().unwrap_or(0);
    if held > 0 {
        out.push_str(&format!(
            "{held} run(s) held (deferred, `budget_held`): they start when the window rolls or a cap is raised\n"
        ));
    }
    out
}
