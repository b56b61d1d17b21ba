//! Condition hook built against `cnp:plugin@0.2.0`: decides on the results of a workflow
//! node's upstream runs. The node is skipped when an upstream's result text contains one of the
//! configured words (case-insensitive), or when an upstream did not complete and
//! `require_completed` is set. Runs outside a workflow always run.
//!
//! ```toml
//! config = { skip_if_contains = ["NO-CHANGES", "LGTM"], only_direct = true }
//! ```

use cnp_plugin_sdk::{
    log, ConditionHook, PluginError, RunContext, RunStatus, Trigger, UpstreamRun, Verdict,
};
use serde::Deserialize;

/// The plugin's configuration; every field is optional.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    /// Skip when an upstream's result contains any of these words (case-insensitive).
    skip_if_contains: Vec<String>,
    /// Look only at the direct upstreams (the runs whose end started this one), not at every
    /// earlier run of the pass.
    only_direct: bool,
    /// Skip when a looked-at upstream did not complete successfully.
    require_completed: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            skip_if_contains: Vec::new(),
            only_direct: true,
            require_completed: false,
        }
    }
}

struct UpstreamGate;

impl ConditionHook for UpstreamGate {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), PluginError> {
        if config.skip_if_contains.iter().any(|w| w.trim().is_empty()) {
            return Err(PluginError::invalid_config(
                "skip_if_contains: the words must not be empty",
            ));
        }
        Ok(())
    }

    fn evaluate(config: Config, context: RunContext) -> Result<Verdict, PluginError> {
        if !context.upstreams.is_empty() {
            let dependency = context.trigger == Trigger::Dependency;
            log::debug(
                "deciding on upstream results",
                &[
                    ("job", &context.job.name),
                    ("dependency", &dependency),
                    ("upstreams", &context.upstreams.len()),
                ],
            );
        }
        Ok(decide(&config, &context))
    }
}

/// The decision itself (no host calls, so it is tested natively).
fn decide(config: &Config, context: &RunContext) -> Verdict {
    let looked_at = context
        .upstreams
        .iter()
        .filter(|u| u.direct || !config.only_direct);
    for u in looked_at {
        if config.require_completed && u.status != RunStatus::Completed {
            return Verdict::skip(format!(
                "upstream `{}` ended {:?}, not completed",
                u.job_name, u.status
            ));
        }
        if let Some(word) = found_word(config, u) {
            return Verdict::skip(format!("upstream `{}` said `{word}`", u.job_name));
        }
    }
    Verdict::Run
}

fn found_word<'a>(config: &'a Config, u: &UpstreamRun) -> Option<&'a str> {
    let text = u.result.as_deref().unwrap_or_default().to_lowercase();
    config
        .skip_if_contains
        .iter()
        .find(|w| text.contains(&w.to_lowercase()))
        .map(String::as_str)
}

cnp_plugin_sdk::register_plugin!(UpstreamGate);

#[cfg(test)]
mod tests {
    use super::*;
    use cnp_plugin_sdk::JobInfo;

    fn run(job: &str, direct: bool, status: RunStatus, result: &str) -> UpstreamRun {
        UpstreamRun {
            job_name: job.into(),
            execution_id: format!("e-{job}"),
            direct,
            status,
            exit_code: Some(0),
            result: Some(result.into()),
            error: None,
            cost_usd: None,
            duration_ms: Some(10),
            session_id: None,
        }
    }

    fn context(upstreams: Vec<UpstreamRun>) -> RunContext {
        RunContext {
            job: JobInfo {
                id: "j".into(),
                name: "fix".into(),
                tags: vec![],
                priority: 5,
                timezone: "UTC".into(),
            },
            trigger: Trigger::Dependency,
            scheduled_at: None,
            previous: None,
            workflow_pass: Some("p".into()),
            upstreams,
        }
    }

    fn config(json: &str) -> Config {
        cnp_plugin_sdk::config::parse(json).unwrap()
    }

    #[test]
    fn skips_on_a_word_in_a_direct_upstream_only_by_default() {
        let c = config(r#"{"skip_if_contains": ["NO-CHANGES"]}"#);
        let ctx = context(vec![
            run("lint", false, RunStatus::Completed, "no-changes"),
            run("review", true, RunStatus::Completed, "all good"),
        ]);
        assert_eq!(decide(&c, &ctx), Verdict::Run);
        let c = config(r#"{"skip_if_contains": ["NO-CHANGES"], "only_direct": false}"#);
        assert_eq!(
            decide(&c, &ctx),
            Verdict::skip("upstream `lint` said `NO-CHANGES`")
        );
    }

    #[test]
    fn require_completed_and_no_upstreams() {
        let c = config(r#"{"require_completed": true}"#);
        let ctx = context(vec![run("review", true, RunStatus::Failed, "")]);
        assert_eq!(
            decide(&c, &ctx),
            Verdict::skip("upstream `review` ended Failed, not completed")
        );
        assert_eq!(decide(&c, &context(vec![])), Verdict::Run);
    }
}
