//! `cnp job create --interactive`: asks for each field, checks each answer with the same rules
//! the service applies (re-asking until it is valid), shows the next fire times of the schedule,
//! then asks for confirmation.

use anyhow::bail;
use chrono::{DateTime, Utc};
use dialoguer::theme::ColorfulTheme;
use dialoguer::{Confirm, Input, Select};

use super::client::Client;
use super::job::{blank_spec, check_spec, parse_duration, parse_instant, JobFlags};
use super::output;
use crate::manifest::{JobSpec, ScheduleSpec};
use crate::model::{Prompt, Schedule, PRIORITY_MAX, PRIORITY_MIN};
use crate::schedule::{CompiledSchedule, CronCache, ParsedCron};

/// Checks a cron expression; `Ok` carries its description.
pub fn check_cron(expr: &str) -> Result<String, String> {
    ParsedCron::parse(expr.trim())
        .map(|c| c.describe())
        .map_err(|e| e.to_string())
}

pub fn check_timezone(tz: &str) -> Result<chrono_tz::Tz, String> {
    crate::schedule::parse_timezone(tz).map_err(|e| e.to_string())
}

/// Checks an interval (`10m`, `1h 30m`, seconds).
pub fn check_interval(s: &str) -> Result<u64, String> {
    let d = parse_duration(s)?;
    if d.subsec_nanos() != 0 {
        return Err("must be whole seconds".into());
    }
    let secs = d.as_secs();
    crate::schedule::validate(
        &Schedule::Interval {
            every_seconds: secs,
            start_at: None,
            misfire: None,
        },
        chrono_tz::UTC,
    )
    .map_err(|e| e.to_string())?;
    Ok(secs)
}

/// Checks a one-shot instant: a time, and in the future.
pub fn check_once(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let at = parse_instant(s)?;
    if at <= now {
        return Err(format!("{} is in the past", output::local_time(Some(at))));
    }
    Ok(at)
}

/// The next `n` fire times of a schedule, counted from now.
pub fn next_times(schedule: &Schedule, tz: chrono_tz::Tz, n: usize) -> Vec<DateTime<Utc>> {
    let now = Utc::now();
    let Ok(c) = CompiledSchedule::compile(schedule, tz, now, &CronCache::new()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut after = now;
    while out.len() < n {
        match c.next_after(after) {
            Some(t) => {
                out.push(t);
                after = t;
            }
            None => break,
        }
    }
    out
}

fn show_next(schedule: &Schedule, tz: chrono_tz::Tz) {
    let times = next_times(schedule, tz, 3);
    if times.is_empty() {
        eprintln!("  no scheduled runs");
    }
    for t in times {
        eprintln!(
            "  next (local time): {} ({})",
            output::local_time(Some(t)),
            output::relative(t)
        );
    }
}

/// The definition as YAML shows it, without the fields left at their defaults.
fn summary(spec: &JobSpec) -> anyhow::Result<serde_yaml_ng::Value> {
    use serde_yaml_ng::Value;
    fn prune(v: &mut Value) {
        if let Value::Mapping(m) = v {
            for (_, x) in m.iter_mut() {
                prune(x);
            }
            m.retain(|k, v| {
                let k = k.as_str().unwrap_or_default();
                match v {
                    Value::Null | Value::Bool(false) => false,
                    Value::Sequence(a) => !a.is_empty(),
                    Value::Mapping(o) => !o.is_empty(),
                    Value::Bool(true) => k != "enabled",
                    Value::String(s) => !(k == "overlap" && s == "queue"),
                    _ => true,
                }
            });
        }
    }
    let mut v = serde_yaml_ng::to_value(spec)?;
    prune(&mut v);
    Ok(v)
}

/// Asks for the job; `None` when the user declines at the end.
pub async fn create(
    client: &Client,
    name: Option<String>,
    flags: &JobFlags,
) -> anyhow::Result<Option<JobSpec>> {
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        bail!("--interactive needs a terminal (use flags or --file instead)");
    }
    let theme = ColorfulTheme::default();
    let default_tz = client.timezone();
    let mut spec = blank_spec(name.as_deref().unwrap_or_default());
    // Flags given along with --interactive are defaults (a lone --timezone waits for the cron).
    let mut pre = flags.clone();
    let pre_tz = pre.timezone.take();
    pre.apply(&mut spec)?;

    spec.name = Input::<String>::with_theme(&theme)
        .with_prompt("Job name")
        .with_initial_text(spec.name.clone())
        .validate_with(|s: &String| -> Result<(), String> {
            let t = s.trim();
            if t.is_empty() {
                Err("must not be empty".into())
            } else if t.chars().count() > 200 {
                Err("must be at most 200 characters".into())
            } else {
                Ok(())
            }
        })
        .interact_text()?
        .trim()
        .to_owned();

    if spec.prompt.is_none() && spec.prompt_id.is_none() {
        let prompts: Vec<Prompt> = client
            .list("/api/prompts", &[], Some(200))
            .await
            .unwrap_or_default();
        let choice = Select::with_theme(&theme)
            .with_prompt("Prompt")
            .items(["a stored prompt (by id)", "type the prompt text here"])
            .default(if prompts.is_empty() { 1 } else { 0 })
            .interact()?;
        if choice == 0 {
            let mut items: Vec<String> = prompts
                .iter()
                .map(|p| format!("{} — {}", p.id, p.title))
                .collect();
            items.push("another id…".into());
            let pick = if prompts.is_empty() {
                items.len() - 1
            } else {
                Select::with_theme(&theme)
                    .with_prompt("Stored prompt")
                    .items(&items)
                    .default(0)
                    .interact()?
            };
            spec.prompt_id = Some(match prompts.get(pick) {
                Some(p) => p.id.clone(),
                None => Input::<String>::with_theme(&theme)
                    .with_prompt("Prompt id")
                    .validate_with(|s: &String| -> Result<(), String> {
                        if s.trim().is_empty() {
                            Err("must not be empty".into())
                        } else {
                            Ok(())
                        }
                    })
                    .interact_text()?
                    .trim()
                    .to_owned(),
            });
        } else {
            spec.prompt = Some(
                Input::<String>::with_theme(&theme)
                    .with_prompt("Prompt text")
                    .validate_with(|s: &String| -> Result<(), String> {
                        if s.trim().is_empty() {
                            Err("must not be empty".into())
                        } else {
                            Ok(())
                        }
                    })
                    .interact_text()?,
            );
        }
    }

    let kinds = ["cron", "interval", "once", "manual (run only when asked)"];
    let default_kind = match &spec.schedule {
        ScheduleSpec::Cron { .. } => 0,
        ScheduleSpec::Interval { .. } => 1,
        ScheduleSpec::Once { .. } => 2,
        ScheduleSpec::Manual => 0,
    };
    let kind = Select::with_theme(&theme)
        .with_prompt("Schedule")
        .items(kinds)
        .default(default_kind)
        .interact()?;
    spec.schedule = match kind {
        0 => {
            let initial = match &spec.schedule {
                ScheduleSpec::Cron { expression, .. } => expression.clone(),
                _ => String::new(),
            };
            let expression: String = Input::with_theme(&theme)
                .with_prompt("Cron expression (e.g. `0 9 * * 1-5`, `@daily`)")
                .with_initial_text(initial)
                .validate_with(|s: &String| check_cron(s).map(|_| ()))
                .interact_text()?;
            if let Ok(d) = check_cron(&expression) {
                eprintln!("  {d}");
            }
            let tz_text: String = Input::with_theme(&theme)
                .with_prompt("Time zone (IANA)")
                .default(pre_tz.unwrap_or_else(|| default_tz.name().to_owned()))
                .validate_with(|s: &String| check_timezone(s).map(|_| ()))
                .interact_text()?;
            let timezone = (tz_text.trim() != default_tz.name()).then(|| tz_text.trim().to_owned());
            ScheduleSpec::Cron {
                expression: expression.trim().to_owned(),
                timezone,
                misfire: None,
            }
        }
        1 => {
            let every: String = Input::with_theme(&theme)
                .with_prompt("Every (e.g. `10m`, `1h 30m`)")
                .validate_with(|s: &String| check_interval(s).map(|_| ()))
                .interact_text()?;
            ScheduleSpec::Interval {
                every: None,
                every_seconds: Some(check_interval(&every).map_err(anyhow::Error::msg)?),
                start_at: None,
                misfire: None,
            }
        }
        2 => {
            let at: String = Input::with_theme(&theme)
                .with_prompt("At (RFC 3339, or `YYYY-MM-DD HH:MM` local time)")
                .validate_with(|s: &String| check_once(s, Utc::now()).map(|_| ()))
                .interact_text()?;
            ScheduleSpec::Once {
                at: parse_instant(&at).map_err(anyhow::Error::msg)?,
            }
        }
        _ => ScheduleSpec::Manual,
    };
    if let Ok(s) = spec.schedule.to_schedule() {
        eprintln!("  {}", crate::schedule::describe(&s, default_tz));
        show_next(&s, default_tz);
    }

    spec.priority = Input::<u8>::with_theme(&theme)
        .with_prompt(format!(
            "Priority ({PRIORITY_MIN} least – {PRIORITY_MAX} most urgent)"
        ))
        .default(spec.priority)
        .validate_with(|p: &u8| -> Result<(), String> {
            if (PRIORITY_MIN..=PRIORITY_MAX).contains(p) {
                Ok(())
            } else {
                Err(format!("must be {PRIORITY_MIN}–{PRIORITY_MAX}"))
            }
        })
        .interact_text()?;

    let tags: String = Input::with_theme(&theme)
        .with_prompt("Tags (comma-separated, optional)")
        .with_initial_text(spec.tags.join(", "))
        .allow_empty(true)
        .interact_text()?;
    spec.tags = tags
        .split(',')
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect();

    check_spec(&spec, default_tz)?;
    eprintln!();
    eprint!("{}", serde_yaml_ng::to_string(&summary(&spec)?)?);
    let ok = Confirm::with_theme(&theme)
        .with_prompt("Create this job?")
        .default(true)
        .interact()?;
    Ok(ok.then_some(spec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_checked_like_the_service_checks_them() {
        assert!(check_cron("0 9 * * *").is_ok());
        let e = check_cron("61 * * * *").unwrap_err();
        assert!(e.contains("schedule.expression"), "{e}");
        assert!(check_timezone("Asia/Taipei").is_ok());
        assert!(check_timezone("Mars/Base").is_err());
        assert_eq!(check_interval("10m"), Ok(600));
        assert!(check_interval("0s").is_err());
        assert!(check_interval("often").is_err());
        let now = Utc::now();
        assert!(check_once("2000-01-01T00:00:00Z", now).is_err());
        assert!(check_once("2999-01-01T00:00:00Z", now).is_ok());
    }

    #[test]
    fn the_summary_leaves_defaults_out() {
        let mut spec = blank_spec("n");
        spec.prompt = Some("p".into());
        spec.tags = vec!["t".into()];
        let text = serde_yaml_ng::to_string(&summary(&spec).unwrap()).unwrap();
        assert_eq!(
            text,
            "name: n\nprompt: p\nschedule:\n  type: manual\npriority: 5\ntags:\n- t\n"
        );
    }

    #[test]
    fn next_fire_times_are_shown() {
        let s = Schedule::Cron {
            expression: "0 9 * * *".into(),
            timezone: None,
            misfire: None,
        };
        let t = next_times(&s, chrono_tz::UTC, 3);
        assert_eq!(t.len(), 3);
        assert!(t[0] < t[1] && t[1] < t[2]);
        assert_eq!((t[1] - t[0]).num_hours(), 24);
        assert!(next_times(&Schedule::Manual, chrono_tz::UTC, 3).is_empty());
    }
}
