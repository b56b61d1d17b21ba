//! kill -9 of a real `cnp serve` with hundreds of fake-CLI runs in flight: no CLI process group
//! outlives cnp (the orphan guardian), and at the restart every interrupted run whose job has a
//! retry policy gets exactly one linked retry attempt, which completes; jobs without a policy, or
//! with `on_interrupt: fail`, keep their runs `interrupted`.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use support::*;

/// Process groups of live (not zombie) processes, with how many processes each holds.
fn live_groups() -> HashMap<i32, usize> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) S ppid pgrp ..." — comm may hold spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() < 3 || matches!(fields[0], "Z" | "X") {
            continue;
        }
        if let Ok(pgrp) = fields[2].parse::<i32>() {
            *out.entry(pgrp).or_insert(0) += 1;
        }
    }
    out
}

/// `(id, status, first_attempt_id, retry_count)` of every execution.
fn attempts(env: &Env) -> Vec<(String, String, String, Option<String>, i64)> {
    let c = env.db();
    let mut s = c
        .prepare(
            "SELECT e.id, j.name, e.status, e.first_attempt_id, e.retry_count
             FROM executions e JOIN jobs j ON j.id = e.job_id ORDER BY e.queued_at, e.rowid",
        )
        .unwrap();
    let rows = s
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    rows
}

const POLICY: usize = 140;
const PLAIN: usize = 40;
const FAIL: usize = 20;

#[test]
fn kill_9_with_200_runs_in_flight_leaves_no_orphans_and_retries_per_policy() {
    let env = Env::new(ConfigOpts {
        max_concurrent_jobs: 250,
        ..ConfigOpts::default()
    });
    let quick = env.root().join("quick");
    // Every run sleeps 10 minutes (and leaves a grandchild `sleep 600` in its group) until the
    // `quick` file exists: the runs before the crash are still going when it comes, the retries
    // after the restart complete at once.
    let environment = format!(
        "  environment: {{ FAKE_CLAUDE_SLEEP_MS: \"600000\", FAKE_CLAUDE_SLEEP_UNLESS: \"{}\", \
         FAKE_CLAUDE_SPAWN_CHILD: \"1\" }}\n",
        quick.display()
    );
    env.manifest(
        "policy.yaml",
        &format!(
            "name: policy\nprompt: \"with a policy\"\nschedule: {{ type: manual }}\n\
             retry: {{ max_attempts: 3, strategy: fixed, delay: 1s }}\n\
             execution:\n  max_parallel: 200\n{environment}"
        ),
    );
    env.manifest(
        "plain.yaml",
        &format!(
            "name: plain\nprompt: \"no policy\"\nschedule: {{ type: manual }}\n\
             execution:\n  max_parallel: 200\n{environment}"
        ),
    );
    env.manifest(
        "failjob.yaml",
        &format!(
            "name: failjob\nprompt: \"interrupt fails\"\nschedule: {{ type: manual }}\n\
             retry: {{ max_attempts: 3, strategy: fixed, delay: 1s, on_interrupt: fail }}\n\
             execution:\n  max_parallel: 200\n{environment}"
        ),
    );
    let mut cnp = env.start();
    let (base, token) = cnp.wait_api(&env);
    for name in ["policy", "plain", "failjob"] {
        cnp.wait_for(&format!("job {name}"), || env.job(name));
    }
    // The guardian runs before any run, as cnp's executable started anew (not a fork of cnp,
    // which would share cnp's memory copy-on-write for as long as both live).
    let cnp_pid = cnp.pid();
    let guardian = cnp.wait_for("cnp's orphan guardian", || guardian_of(cnp_pid));
    let is_guardian = |pid: u32| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"--cnp-orphan-guardian"))
    };
    assert!(
        is_guardian(guardian),
        "the guardian was not started as a program of its own"
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::new();
        let mut calls = Vec::new();
        for (name, n) in [("policy", POLICY), ("plain", PLAIN), ("failjob", FAIL)] {
            for _ in 0..n {
                let req = http
                    .post(format!("{base}/api/jobs/{name}/execute"))
                    .bearer_auth(&token)
                    .send();
                calls.push(async move {
                    let res = req.await.expect("POST execute");
                    assert_eq!(res.status(), reqwest::StatusCode::ACCEPTED);
                });
            }
        }
        futures_util::future::join_all(calls).await;
    });

    let total = POLICY + PLAIN + FAIL;
    // Every run going, its pid stored, its grandchild started (two processes in its group).
    let groups: HashSet<i32> = cnp.wait_for("every run going with its grandchild", || {
        let rows: Vec<ExecRow> = ["policy", "plain", "failjob"]
            .iter()
            .flat_map(|n| env.executions(n))
            .collect();
        if rows.len() != total
            || rows
                .iter()
                .any(|e| e.status != "running" || e.pid.is_none())
        {
            return None;
        }
        let live = live_groups();
        let groups: HashSet<i32> = rows.iter().map(|e| e.pid.unwrap() as i32).collect();
        groups
            .iter()
            .all(|g| live.get(g).copied().unwrap_or(0) >= 2)
            .then_some(groups)
    });
    assert_eq!(groups.len(), total);
    let before = attempts(&env);

    cnp.kill9();
    let killed = Instant::now();
    let mut left: Vec<i32>;
    loop {
        let live = live_groups();
        left = groups
            .iter()
            .copied()
            .filter(|g| live.contains_key(g))
            .collect();
        if left.is_empty() || killed.elapsed() > Duration::from_secs(2) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let gone_after = killed.elapsed();
    assert!(
        left.is_empty(),
        "{} of {total} CLI process groups still alive {gone_after:?} after cnp's SIGKILL: {left:?}",
        left.len()
    );
    eprintln!("all {total} CLI process groups gone {gone_after:?} after kill -9");
    // Its work done, the guardian has exited too.
    while is_guardian(guardian) && killed.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!is_guardian(guardian), "the guardian outlived cnp");
    // While cnp is down, nothing changed in the database.
    assert_eq!(attempts(&env), before);

    std::fs::write(&quick, "").unwrap();
    let mut cnp = env.start();
    cnp.wait_log("cnp is running");

    let originals: HashSet<String> = before.iter().map(|r| r.0.clone()).collect();
    let rows = cnp.wait_for("every retry attempt completed", || {
        let rows = attempts(&env);
        let retries: Vec<_> = rows.iter().filter(|r| !originals.contains(&r.0)).collect();
        (retries.len() >= POLICY && retries.iter().all(|r| r.2 == "completed")).then_some(rows)
    });
    // Let anything that would wrongly come later show up.
    std::thread::sleep(Duration::from_secs(2));
    let rows_later = attempts(&env);
    assert_eq!(
        rows.len(),
        rows_later.len(),
        "attempts recorded after the retries settled"
    );

    let by_id: HashMap<&str, _> = rows_later.iter().map(|r| (r.0.as_str(), r)).collect();
    let mut retry_of: HashMap<&str, Vec<&str>> = HashMap::new();
    for r in &rows_later {
        // (a first attempt may name itself)
        if let Some(first) = r.3.as_deref().filter(|f| *f != r.0) {
            retry_of.entry(first).or_default().push(r.0.as_str());
        }
    }
    for (id, job, _, _, _) in &before {
        let row = by_id[id.as_str()];
        assert_eq!(row.2, "interrupted", "{row:?}");
        let retries = retry_of.get(id.as_str()).cloned().unwrap_or_default();
        match job.as_str() {
            "policy" => {
                assert_eq!(retries.len(), 1, "{id}: one linked retry, got {retries:?}");
                let r = by_id[retries[0]];
                assert_eq!(r.1, "policy");
                assert_eq!(r.2, "completed", "{r:?}");
                assert_eq!(r.4, 1, "the retry is attempt 2: {r:?}");
            }
            _ => assert!(
                retries.is_empty(),
                "{job} run {id} was retried: {retries:?}"
            ),
        }
    }
    assert_eq!(rows_later.len(), total + POLICY, "no other attempts");

    // None ran twice: each execution invoked the CLI exactly once.
    let mut invocations: HashMap<String, usize> = HashMap::new();
    for rec in env.records() {
        if let Some(id) = rec.execution_id() {
            *invocations.entry(id.to_owned()).or_insert(0) += 1;
        }
    }
    for r in &rows_later {
        assert_eq!(
            invocations.get(&r.0).copied(),
            Some(1),
            "invocations of {r:?}"
        );
    }
    cnp.assert_running();
}
