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
        if context.upstreams.is_empty() {
            return Ok(Verdict::Run);
        }
        let looked_at: Vec<&UpstreamRun> = context
            .upstreams
            .iter()
            .filter(|u| u.direct || !config.only_direct)
            .collect();
        let dependency = context.trigger == Trigger::Dependency;
        log::info(
            "deciding on upstream results",
            &[
                ("job", &context.job.name),
                ("dependency", &dependency),
                ("upstreams", &looked_at.len()),
            ],
        );
        for u in &looked_at {
            if config.require_completed && u.status != RunStatus::Completed {
                return Ok(Verdict::skip(format!(
                    "upstream `{}` ended {:?}, not completed",
                    u.job_name, u.status
                )));
            }
            let text = u.result.as_deref().unwrap_or_default().to_lowercase();
            if let Some(word) = config
                .skip_if_contains
                .iter()
                .find(|w| text.contains(&w.to_lowercase()))
            {
                return Ok(Verdict::skip(format!(
                    "upstream `{}` said `{word}`",
                    u.job_name
                )));
            }
        }
        Ok(Verdict::Run)
    }
}

cnp_plugin_sdk::register_plugin!(UpstreamGate);
