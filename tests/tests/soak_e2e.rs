//! Crash soak: a real `cnp serve` with 1,000 interval jobs and the fake CLI is killed with
//! SIGKILL at random moments, restarted each time, and finally stopped. Then the database is
//! checked against the schedule: every slot from each job's first to its last is accounted for
//! exactly once (a run, or a `skipped` record of the misfire policy that says which slots it
//! stands for), no (job, slot, attempt) is recorded twice, no execution ran the CLI twice (the
//! fake CLI records every invocation with its execution id), every run a crash cut short is
//! `interrupted` with exactly one linked retry when its job has a retry policy, and no CLI
//! process is left behind.
//!
//! `CNP_SOAK_KILLS` (default 5) and `CNP_SOAK_JOBS` (default 1,000) set the size; the long form
//! is `CNP_SOAK_KILLS=20 cargo test -p cnp-tests --test soak_e2e -- --nocapture`.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use support::*;

const EVERY_S: i64 = 20;

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `(id, job, status, slot, first_attempt_id, retry_count, error)` of every execution.
type Row = (
    String,
    String,
    String,
    Option<i64>,
    Option<String>,
    i64,
    Option<String>,
);

fn rows(env: &Env) -> Vec<Row> {
    let c = env.db();
    let mut s = c
        .prepare(
            "SELECT e.id, j.name, e.status, e.slot, e.first_attempt_id, e.retry_count, e.error
             FROM executions e JOIN jobs j ON j.id = e.job_id",
        )
        .unwrap();
    let out = s
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    out
}

#[test]
fn repeated_kill_9_under_load_loses_and_doubles_nothing() {
    let kills = env_num("CNP_SOAK_KILLS", 5);
    let jobs = env_num("CNP_SOAK_JOBS", 1000);
    let env = Env::new(ConfigOpts {
        max_concurrent_jobs: 64,
        misfire_grace: "2s",
        shutdown_grace: "2s",
        kill_grace: "1s",
        ..ConfigOpts::default()
    });
    // Staggered over the interval (a burst of 1,000 at one instant is another test's job); half
    // the jobs retry interrupted runs, half do not; runs take 0.2–2 s, so kills find runs going.
    let base = (now_ms() / 1000 + 5) * 1000;
    let mut yaml = String::new();
    for i in 0..jobs {
        let start = ms_to_rfc3339(base + (i as i64 % EVERY_S) * 1000);
        let retry = if i % 2 == 0 {
            "  retry: { max_attempts: 2, strategy: fixed, delay: 1s }\n"
        } else {
            ""
        };
        yaml.push_str(&format!(
            "- name: soak-{i}\n  prompt: \"soak {i}\"\n  \
             schedule: {{ type: interval, every_seconds: {EVERY_S}, start_at: \"{start}\" }}\n\
             {retry}  execution:\n    environment: {{ FAKE_CLAUDE_SLEEP_MS: \"{}\" }}\n",
            200 + (i % 10) * 200
        ));
    }
    env.manifest("soak.yaml", &yaml);

    let mut cnp = env.start();
    cnp.wait_log("cnp is running");
    // A fixed sequence of "random" run times between kills (reproducible).
    let mut seed: u64 = 0x5eed_cafe;
    let mut next = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % 3000
    };
    for k in 0..kills {
        std::thread::sleep(Duration::from_millis(2000 + next()));
        cnp.kill9();
        eprintln!("kill -9 #{} at {}", k + 1, ms_to_rfc3339(now_ms()));
        // Outages of 0.5–3.5 s, some longer than misfire_grace (their slots go to the policy).
        std::thread::sleep(Duration::from_millis(500 + next()));
        cnp = env.start();
        cnp.wait_log("cnp is running");
    }
    std::thread::sleep(Duration::from_secs(4));
    cnp.signal(nix::sys::signal::Signal::SIGTERM);
    let status = cnp.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status:?}\n{}", cnp.log());

    let all = rows(&env);
    // No (job, slot, attempt) twice.
    assert!(
        duplicate_slots(&env).is_empty(),
        "{:?}",
        duplicate_slots(&env)
    );

    // Every slot of every job accounted for.
    let mut by_job: HashMap<&str, Vec<&Row>> = HashMap::new();
    for r in &all {
        by_job.entry(r.1.as_str()).or_default().push(r);
    }
    let mut slots_checked = 0u64;
    let step = EVERY_S * 1000;
    for (job, rs) in &by_job {
        let slots: BTreeSet<i64> = rs.iter().filter(|r| r.5 == 0).filter_map(|r| r.3).collect();
        let Some((&first, &last)) = slots.first().zip(slots.last()) else {
            continue;
        };
        let ranges: Vec<(i64, i64)> = rs
            .iter()
            .filter(|r| r.2 == "skipped")
            .filter_map(|r| parse_skipped(r.6.as_deref().unwrap_or_default()))
            .map(|(n, from, to, _)| {
                assert_eq!(n as i64, (to - from) / step + 1, "{job}: {from}..{to}");
                (from, to)
            })
            .collect();
        let mut s = first;
        while s <= last {
            assert!(
                slots.contains(&s) || ranges.iter().any(|(a, b)| *a <= s && s <= *b),
                "{job}: slot {} is not accounted for",
                ms_to_rfc3339(s)
            );
            slots_checked += 1;
            s += step;
        }
        for s in &slots {
            assert_eq!((s - first) % step, 0, "{job}: slot off the grid");
        }
    }

    // No execution ran the CLI twice; every completed one ran it once.
    let mut invocations: HashMap<String, usize> = HashMap::new();
    let records = env.records();
    for rec in &records {
        if let Some(id) = rec.execution_id() {
            *invocations.entry(id.to_owned()).or_insert(0) += 1;
        }
    }
    let doubled: Vec<_> = invocations.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "executions that ran twice: {doubled:?}");
    for r in all.iter().filter(|r| r.2 == "completed") {
        assert_eq!(invocations.get(&r.0), Some(&1), "{r:?}");
    }

    // Interrupted runs: exactly one linked retry when the job retries, none otherwise.
    let mut retries: HashMap<&str, usize> = HashMap::new();
    for r in &all {
        if let Some(f) = r.4.as_deref().filter(|f| *f != r.0) {
            *retries.entry(f).or_default() += 1;
        }
    }
    let interrupted: Vec<&Row> = all
        .iter()
        .filter(|r| r.2 == "interrupted" && r.5 == 0)
        .collect();
    for r in &interrupted {
        let n: usize = r.1.trim_start_matches("soak-").parse().unwrap();
        let got = retries.get(r.0.as_str()).copied().unwrap_or(0);
        assert_eq!(got, usize::from(n.is_multiple_of(2)), "{r:?}");
    }

    // No CLI process left behind.
    wait_until("every fake CLI process gone", || {
        records.iter().all(|r| process_gone(r.pid)).then_some(())
    });

    let count = |s: &str| all.iter().filter(|r| r.2 == s).count();
    eprintln!(
        "soak: {jobs} jobs, {kills} kill -9s, {} executions ({} completed, {} interrupted, {} \
         retries, {} skipped records), {slots_checked} slots checked, {} CLI invocations; lost 0, \
         doubled 0",
        all.len(),
        count("completed"),
        interrupted.len(),
        all.iter().filter(|r| r.5 > 0).count(),
        count("skipped"),
        records.len(),
    );
    assert!(count("completed") > 0 && slots_checked as usize >= jobs);
}
