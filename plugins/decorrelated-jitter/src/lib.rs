//! Retry strategy: AWS-style "decorrelated jitter" backoff
//! (`sleep = min(cap, random_between(base, previous_sleep * 3))`), which spreads retries of
//! many jobs apart while still growing roughly exponentially.
//!
//! A plugin keeps no state between calls, so the chain of sleeps is recomputed on every call
//! from a generator seeded with the job id and the slot's `scheduled_at`: the same job, slot
//! and attempt always get the same delay.
//!
//! Outcomes that retrying cannot fix give up at once (authentication errors, a missing CLI); a
//! usage limit waits until it resets (plus a margin), or for `cap_ms` when the reset time is
//! unknown.

use cnp_plugin_sdk::{
    clock, log, ExecutionInfo, JobInfo, OutcomeKind, PluginError, RetryDecision, RetryStrategy,
};
use serde::Deserialize;

/// The plugin's configuration; every field is optional.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    /// The smallest delay, and the first step's lower bound.
    base_ms: u64,
    /// The largest delay.
    cap_ms: u64,
    /// Added to a usage limit's reset time before retrying.
    usage_limit_margin_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            base_ms: 1_000,
            cap_ms: 600_000,
            usage_limit_margin_ms: 30_000,
        }
    }
}

struct DecorrelatedJitter;

impl RetryStrategy for DecorrelatedJitter {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), PluginError> {
        if config.base_ms == 0 {
            return Err(PluginError::invalid_config("base_ms must be at least 1"));
        }
        if config.cap_ms < config.base_ms {
            return Err(PluginError::invalid_config(format!(
                "cap_ms ({}) must not be below base_ms ({})",
                config.cap_ms, config.base_ms
            )));
        }
        Ok(())
    }

    fn next_retry(
        config: Config,
        job: JobInfo,
        failed: ExecutionInfo,
    ) -> Result<RetryDecision, PluginError> {
        Self::validate(&config)?;
        let decision = decide(&config, &job, &failed, clock::now());
        log::debug(
            "retry decided",
            &[
                ("job", &job.name),
                ("attempt", &failed.attempt),
                ("outcome", &failed.outcome),
                ("decision", &format!("{decision:?}")),
            ],
        );
        Ok(decision)
    }
}

cnp_plugin_sdk::register_plugin!(DecorrelatedJitter);

/// The decision for a failed attempt, given the current time.
fn decide(config: &Config, job: &JobInfo, failed: &ExecutionInfo, now: i64) -> RetryDecision {
    match failed.outcome {
        OutcomeKind::AuthError => {
            return RetryDecision::give_up(
                "authentication failed: log in to Claude again (`claude /login`); retrying will not help",
            )
        }
        OutcomeKind::CliNotFound => {
            return RetryDecision::give_up(
                "the `claude` CLI was not found: install it or fix cnp's CLI path; retrying will not help",
            )
        }
        _ => {}
    }
    if failed.attempt >= failed.max_attempts {
        return RetryDecision::give_up(format!(
            "attempt {} of {} failed ({})",
            failed.attempt, failed.max_attempts, failed.outcome
        ));
    }
    if failed.outcome == OutcomeKind::UsageLimit {
        let margin = i64::try_from(config.usage_limit_margin_ms).unwrap_or(i64::MAX);
        return match failed.usage_limit_reset {
            Some(reset) => RetryDecision::at(reset.max(now).saturating_add(margin)),
            None => RetryDecision::after_ms(config.cap_ms),
        };
    }
    let seed = seed(&job.id, failed.scheduled_at);
    RetryDecision::after_ms(delay_ms(
        seed,
        failed.attempt,
        config.base_ms,
        config.cap_ms,
    ))
}

/// The delay after failed attempt `attempt` (1-based): the decorrelated-jitter chain run
/// `attempt` steps from `base` with a generator seeded by `seed`.
fn delay_ms(seed: u64, attempt: u32, base: u64, cap: u64) -> u64 {
    let mut rng = SplitMix64(seed);
    let mut sleep = base;
    for _ in 0..attempt.max(1) {
        let high = sleep.saturating_mul(3).min(cap);
        sleep = if high <= base {
            base.min(cap)
        } else {
            base + rng.next() % (high - base + 1)
        };
    }
    sleep
}

/// FNV-1a over the job id and the slot, so each job and slot has its own chain.
fn seed(job_id: &str, scheduled_at: Option<i64>) -> u64 {
    let slot = scheduled_at.map_or([0xff; 8], i64::to_le_bytes);
    job_id
        .bytes()
        .chain(slot)
        .fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

/// SplitMix64: a tiny, well-mixed generator; plenty for jitter.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> JobInfo {
        JobInfo {
            id: "job-1".into(),
            name: "nightly".into(),
            tags: vec![],
            priority: 5,
            timezone: "UTC".into(),
        }
    }

    fn failed(outcome: OutcomeKind, attempt: u32) -> ExecutionInfo {
        ExecutionInfo {
            execution_id: "e1".into(),
            attempt,
            max_attempts: 5,
            outcome,
            exit_code: Some(1),
            duration_ms: 10,
            output_tail: String::new(),
            error: None,
            usage_limit_reset: None,
            scheduled_at: Some(1_700_000_000_000),
            finished_at: 1_700_000_001_000,
        }
    }

    #[test]
    fn delays_stay_between_base_and_cap_and_repeat_for_the_same_inputs() {
        for s in 0..200u64 {
            for attempt in 1..12 {
                let d = delay_ms(s, attempt, 1_000, 60_000);
                assert!(
                    (1_000..=60_000).contains(&d),
                    "seed {s} attempt {attempt}: {d}"
                );
                assert_eq!(d, delay_ms(s, attempt, 1_000, 60_000));
            }
        }
    }

    #[test]
    fn delays_grow_and_differ_between_slots() {
        let first: Vec<u64> = (0..100).map(|s| delay_ms(s, 1, 1_000, 600_000)).collect();
        let fifth: Vec<u64> = (0..100).map(|s| delay_ms(s, 5, 1_000, 600_000)).collect();
        let mean = |v: &[u64]| v.iter().sum::<u64>() / v.len() as u64;
        assert!(first.iter().all(|d| *d <= 3_000));
        assert!(
            mean(&fifth) > mean(&first) * 3,
            "{} vs {}",
            mean(&fifth),
            mean(&first)
        );
        assert_ne!(seed("job-1", Some(1)), seed("job-1", Some(2)));
        assert_ne!(seed("job-1", Some(1)), seed("job-2", Some(1)));
    }

    #[test]
    fn hopeless_outcomes_and_the_last_attempt_give_up() {
        let c = Config::default();
        for outcome in [OutcomeKind::AuthError, OutcomeKind::CliNotFound] {
            assert!(matches!(
                decide(&c, &job(), &failed(outcome, 1), 0),
                RetryDecision::GiveUp(_)
            ));
        }
        assert!(matches!(
            decide(&c, &job(), &failed(OutcomeKind::Failure, 5), 0),
            RetryDecision::GiveUp(_)
        ));
        assert!(matches!(
            decide(&c, &job(), &failed(OutcomeKind::Failure, 4), 0),
            RetryDecision::RetryAfter(_)
        ));
    }

    #[test]
    fn usage_limits_wait_for_the_reset_plus_margin_or_the_cap() {
        let c = Config::default();
        let mut f = failed(OutcomeKind::UsageLimit, 1);
        f.usage_limit_reset = Some(5_000_000);
        assert_eq!(decide(&c, &job(), &f, 1_000), RetryDecision::at(5_030_000));
        assert_eq!(
            decide(&c, &job(), &f, 9_000_000),
            RetryDecision::at(9_030_000),
            "a past reset counts from now"
        );
        f.usage_limit_reset = None;
        assert_eq!(
            decide(&c, &job(), &f, 1_000),
            RetryDecision::after_ms(600_000)
        );
    }
}
