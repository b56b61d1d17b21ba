//! End-to-end tests of `cnp serve`: the real binary as a child process, the fake Claude CLI as
//! its executor, results observed through the SQLite file, the fake's record file and cnp's
//! stderr. Each test has its own temp dir; conditions are polled with a generous deadline.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use support::*;

fn one_second_interval(name: &str, extra: &str) -> String {
    format!("name: {name}\nprompt: \"run {name}\"\nschedule: {{ type: interval, every_seconds: 1 }}\n{extra}")
}

fn stdout_of(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr_of(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

// ---------------------------------------------------------------------------------------------
// 1. Acceptance: "create a daily cron job"

#[test]
fn daily_cron_job_is_stored_with_the_next_nine_oclock_in_its_zone() {
    let env = Env::new(ConfigOpts::default());
    let manifest = env.manifest(
        "daily.yaml",
        "name: Daily report\nprompt: \"Write the daily report\"\n\
         schedule: { type: cron, expression: \"0 9 * * *\", timezone: Asia/Taipei }\n",
    );
    let mut cnp = env.start();
    let job = cnp.wait_for("the job row", || env.job("Daily report"));
    let checked_at = now_ms();

    assert_eq!(job.status, "active");
    let schedule: Value = serde_json::from_str(&job.schedule).unwrap();
    assert_eq!(schedule["type"], "cron", "{schedule}");
    assert_eq!(schedule["expression"], "0 9 * * *", "{schedule}");
    assert_eq!(schedule["timezone"], "Asia/Taipei", "{schedule}");

    // The next 09:00 in Taipei after the job was created.
    let tz: Tz = "Asia/Taipei".parse().unwrap();
    let created = DateTime::<Utc>::from_timestamp_millis(job.created_at).unwrap();
    let local = created.with_timezone(&tz);
    let mut expected = tz
        .from_local_datetime(&local.date_naive().and_hms_opt(9, 0, 0).unwrap())
        .single()
        .unwrap();
    if expected <= local {
        expected = tz
            .from_local_datetime(
                &(local.date_naive() + chrono::Days::new(1))
                    .and_hms_opt(9, 0, 0)
                    .unwrap(),
            )
            .single()
            .unwrap();
    }
    let expected = expected.with_timezone(&Utc);
    assert_eq!(
        job.next_run_time,
        Some(expected.timestamp_millis()),
        "next_run_time {:?} should be {} (the next 09:00 Asia/Taipei after {created})",
        job.next_run_time.map(ms_to_rfc3339),
        expected.to_rfc3339()
    );
    // ... which is also the next 09:00 from now, a day at most ahead.
    assert!(expected.timestamp_millis() > checked_at);
    assert!(expected.timestamp_millis() - checked_at <= 24 * 3600 * 1000);
    assert!(
        env.executions("Daily report").is_empty(),
        "nothing runs before 09:00"
    );

    // A restart keeps the job as it is (same id, same next run, reported unchanged).
    cnp.signal(Signal::SIGTERM);
    assert!(cnp.wait_exit(Duration::from_secs(15)).success());
    let mut cnp = env.start();
    cnp.wait_log("cnp is running");
    assert!(cnp.log().contains("unchanged=1"), "{}", cnp.log());
    let again = env.job("Daily report").unwrap();
    assert_eq!(again.id, job.id);
    assert_eq!(again.next_run_time, job.next_run_time);
    assert_eq!(env.job_names(), vec!["Daily report".to_string()]);

    // `cnp check` describes the same next run.
    let out = env.run_cli(&["check", manifest.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}{}",
        stdout_of(&out),
        stderr_of(&out)
    );
    let stdout = stdout_of(&out);
    assert!(stdout.contains("daily.yaml: ok (1 job(s))"), "{stdout}");
    let next = stdout
        .split("next ")
        .nth(1)
        .map(|s| s.trim())
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .unwrap_or_else(|| panic!("no next run in {stdout}"));
    assert_eq!(next.with_timezone(&Utc), expected, "{stdout}");
}

// ---------------------------------------------------------------------------------------------
// 2. Acceptance: "successful run"

#[test]
fn scheduled_run_invokes_the_cli_and_records_a_completed_execution() {
    let env = Env::new(ConfigOpts::default());
    let prompt = "Say hello to the end-to-end test";
    env.manifest(
        "ticker.yaml",
        &format!(
            "name: ticker\nprompt: \"{prompt}\"\n\
             schedule: {{ type: cron, expression: \"*/2 * * * * *\", timezone: UTC }}\n\
             execution:\n  environment: {{ FAKE_CLAUDE_RESULT: \"e2e says hello\", FAKE_CLAUDE_SLEEP_MS: \"100\" }}\n"
        ),
    );
    let mut cnp = env.start();
    let exec = cnp.wait_for("a completed run", || {
        env.executions("ticker")
            .into_iter()
            .find(|e| e.status == "completed")
    });
    let job = env.job("ticker").unwrap();

    // The execution.
    assert_eq!(exec.job_id, job.id);
    assert_eq!(exec.trigger, "schedule");
    let slot = exec.slot.expect("a scheduled run has its slot");
    assert_eq!(
        slot % 2000,
        0,
        "*/2 seconds fires on even seconds: {}",
        ms_to_rfc3339(slot)
    );
    assert_eq!(exec.output.as_deref(), Some("e2e says hello"));
    assert_eq!(exec.error, None);
    assert_eq!(exec.exit_code, Some(0));
    assert_eq!(exec.prompt.as_deref(), Some(prompt));
    let session = exec.session_id.clone().expect("session id recorded");
    assert!(!session.is_empty());
    let (started, completed) = (exec.started_at.unwrap(), exec.completed_at.unwrap());
    assert!(started >= slot && completed >= started, "{exec:?}");

    // The CLI invocation.
    let records = env.records();
    let rec = records
        .iter()
        .find(|r| r.execution_id() == Some(exec.id.as_str()))
        .unwrap_or_else(|| {
            panic!(
                "no invocation with CNP_EXECUTION_ID={} in {records:?}",
                exec.id
            )
        });
    assert_eq!(rec.argv[0], fake_claude_bin().display().to_string());
    let args = &rec.argv[1..];
    assert!(args.iter().any(|a| a == "-p" || a == "--print"), "{args:?}");
    assert!(
        args.windows(2)
            .any(|w| w[0] == "--output-format" && w[1] == "stream-json"),
        "{args:?}"
    );
    assert!(args.iter().any(|a| a == "--verbose"), "{args:?}");
    assert!(
        !args.iter().any(|a| a.contains(prompt)),
        "the prompt goes to stdin, not argv: {args:?}"
    );
    assert_eq!(rec.stdin.as_deref(), Some(prompt));
    assert_eq!(rec.job_id(), Some(job.id.as_str()));
    assert_eq!(exec.pid, Some(rec.pid as i64));

    // One clock: the test, cnp and the CLI agree on the time. Under scripts/test.sh's
    // shifted-clock passes `CNP_TEST_CLOCK_NEAR` says where the test's clock must be, which
    // proves the shift reached all three processes (this test would pass vacuously otherwise).
    let cli_started_ms = (rec.started_unix_ns / 1_000_000) as i64;
    assert!(
        (cli_started_ms - started).abs() < 5_000 && (now_ms() - started).abs() < 60_000,
        "cnp started the run at {}, the CLI at {}, the test is at {}",
        ms_to_rfc3339(started),
        ms_to_rfc3339(cli_started_ms),
        ms_to_rfc3339(now_ms())
    );
    if let Some(near) = std::env::var("CNP_TEST_CLOCK_NEAR")
        .ok()
        .and_then(|v| v.parse::<i64>().ok())
    {
        assert!(
            (now_ms() / 1000 - near).abs() < 3_600,
            "the shifted clock should be near {}, it is {}",
            ms_to_rfc3339(near * 1000),
            ms_to_rfc3339(now_ms())
        );
    }

    // The streamed lines.
    let logs = cnp.wait_for("the run's log lines", || {
        let l = env.logs(&exec.id);
        l.iter()
            .any(|(_, line)| line.contains("\"type\":\"result\""))
            .then_some(l)
    });
    let events: Vec<Value> = logs
        .iter()
        .filter(|(stream, _)| stream == "stdout")
        .filter_map(|(_, line)| serde_json::from_str(line).ok())
        .collect();
    let init = events
        .iter()
        .find(|e| e["type"] == "system" && e["subtype"] == "init")
        .unwrap_or_else(|| panic!("no init event in {logs:?}"));
    assert_eq!(init["session_id"], session.as_str());
    assert!(events.iter().any(|e| e["type"] == "assistant"), "{logs:?}");
    let result = events.iter().find(|e| e["type"] == "result").unwrap();
    assert_eq!(result["result"], "e2e says hello");

    // The job's statistics.
    assert!(job.execution_count >= 1, "{job:?}");
    assert!(job.success_count >= 1, "{job:?}");
    assert_eq!(job.failure_count, 0, "success rate 1: {job:?}");
    assert!(job.last_run_time.is_some(), "{job:?}");
    let next = cnp.wait_for("next_run_time after the slot", || {
        env.job("ticker")
            .unwrap()
            .next_run_time
            .filter(|n| *n > slot)
    });
    assert_eq!(next % 2000, 0, "{}", ms_to_rfc3339(next));
    cnp.assert_running();
}

// ---------------------------------------------------------------------------------------------
// 3. Restart after kill -9 with runs in flight

#[test]
fn restart_after_kill_9_interrupts_kills_leftovers_and_accounts_for_every_slot() {
    let env = Env::new(ConfigOpts {
        max_concurrent_jobs: 50,
        misfire_grace: "1s",
        shutdown_grace: "1s",
        kill_grace: "1s",
        ..ConfigOpts::default()
    });
    // `slow` runs outlive the outage (so a leftover that cnp failed to kill would still be
    // there); `fast` shows that runs go on completing.
    env.manifest(
        "slow.yaml",
        &one_second_interval(
            "slow",
            "execution:\n  max_parallel: 20\n  environment: { FAKE_CLAUDE_SLEEP_MS: \"30000\" }\n",
        ),
    );
    env.manifest(
        "fast.yaml",
        &one_second_interval(
            "fast",
            "execution:\n  max_parallel: 5\n  environment: { FAKE_CLAUDE_SLEEP_MS: \"300\" }\n",
        ),
    );
    let mut cnp = env.start();
    cnp.wait_for("3 slow runs in flight and 2 fast runs done", || {
        let slow = env.executions("slow");
        let fast = env.executions("fast");
        let running = slow
            .iter()
            .filter(|e| e.status == "running" && e.pid.is_some())
            .count();
        let done = fast.iter().filter(|e| e.status == "completed").count();
        (running >= 3 && done >= 2).then_some(())
    });
    // Kill between two slots, once every running run's pid is stored (nobody could clean up
    // after a run spawned in the very instant of the crash).
    let mut attempts = 0;
    loop {
        sleep_to_second_fraction(500);
        let all = [env.executions("slow"), env.executions("fast")].concat();
        if all
            .iter()
            .filter(|e| e.status == "running")
            .all(|e| e.pid.is_some())
        {
            break;
        }
        attempts += 1;
        assert!(attempts < 10, "running runs without a pid:\n{}", env.dump());
    }
    // The orphan guardian would kill the slow runs' groups the moment cnp dies; stopped, it
    // cannot, so what follows tests the second line of defence: the restart-time cleanup.
    let guardian = guardian_of(cnp.pid()).expect("cnp's orphan guardian");
    kill(Pid::from_raw(guardian as i32), Signal::SIGSTOP).unwrap();
    cnp.kill9();
    let killed_at = now_ms();

    let before: Vec<ExecRow> = [env.executions("slow"), env.executions("fast")].concat();
    let running_before: Vec<&ExecRow> = before.iter().filter(|e| e.status == "running").collect();
    let slow_id = env.job("slow").unwrap().id;
    let fast_id = env.job("fast").unwrap().id;
    // Slots are recorded up to 1.5 s ahead (`RECORD_AHEAD`); a row recorded ahead whose slot had
    // not come at the crash was never released: the restart withdraws it, and its slot is missed
    // like the others.
    let ahead_before: Vec<&ExecRow> = before
        .iter()
        .filter(|e| e.status == "queued" && e.slot.is_some_and(|s| s > killed_at))
        .collect();
    let last_slot_before: HashMap<String, i64> = [&slow_id, &fast_id]
        .iter()
        .map(|id| {
            let max = before
                .iter()
                .filter(|e| &e.job_id == *id)
                .filter(|e| !ahead_before.iter().any(|a| a.id == e.id))
                .filter_map(|e| e.slot)
                .max()
                .unwrap();
            ((*id).clone(), max)
        })
        .collect();
    let records = env.records();
    let pid_of: HashMap<String, u32> = records
        .iter()
        .filter_map(|r| Some((r.execution_id()?.to_owned(), r.pid)))
        .collect();
    let leftover_pids: Vec<u32> = running_before
        .iter()
        .filter(|e| e.job_id == slow_id)
        .map(|e| {
            let pid = *pid_of
                .get(&e.id)
                .unwrap_or_else(|| panic!("no invocation recorded for {e:?}"));
            assert_eq!(e.pid, Some(pid as i64), "stored pid is the CLI's");
            pid
        })
        .collect();
    assert!(leftover_pids.len() >= 3, "{}", env.dump());
    for pid in &leftover_pids {
        assert!(
            !process_gone(*pid),
            "the slow CLI {pid} should outlive cnp's SIGKILL"
        );
    }

    // ~4 s outage: 4 or 5 one-second slots of each job come due while cnp is down.
    let outage_end = killed_at + 4000;
    std::thread::sleep(Duration::from_millis((outage_end - now_ms()).max(0) as u64));
    let restart_at = now_ms();
    let mut cnp = env.start();
    cnp.wait_log("cnp is running");

    // Runs that were going are interrupted, with a reason ...
    for e in &running_before {
        let now = env.executions(if e.job_id == slow_id { "slow" } else { "fast" });
        let row = now.iter().find(|r| r.id == e.id).unwrap();
        assert_eq!(row.status, "interrupted", "{row:?}");
        let err = row.error.as_deref().unwrap_or_default();
        assert!(
            err.contains("cnp stopped while this run was going"),
            "{row:?}"
        );
        assert!(row.completed_at.unwrap() >= restart_at, "{row:?}");
    }
    // ... and their CLI processes (which would sleep for 30 s more) are killed.
    wait_until("the interrupted runs' CLI processes to be gone", || {
        leftover_pids.iter().all(|p| process_gone(*p)).then_some(())
    });
    assert!(
        cnp.log()
            .contains("killed the process group a crashed run left behind"),
        "{}",
        cnp.log()
    );
    kill(Pid::from_raw(guardian as i32), Signal::SIGKILL).unwrap();

    // New runs go on completing; runs recorded before the crash but not started are run.
    cnp.wait_for("2 fast runs of slots after the restart completed", || {
        let fast = env.executions("fast");
        let done = fast
            .iter()
            .filter(|e| e.status == "completed" && e.slot.is_some_and(|s| s > restart_at))
            .count();
        let pending_old = fast
            .iter()
            .filter(|e| e.queued_at < restart_at && (e.status == "queued" || e.status == "running"))
            .count();
        (done >= 2 && pending_old == 0).then_some(())
    });
    cnp.wait_for("a slow run started after the restart", || {
        env.executions("slow")
            .into_iter()
            .find(|e| e.status == "running" && e.started_at.is_some_and(|s| s >= restart_at))
    });

    // The rows recorded ahead are gone (withdrawn), not run late.
    let ids: Vec<String> = [env.executions("slow"), env.executions("fast")]
        .concat()
        .into_iter()
        .map(|e| e.id)
        .collect();
    for a in &ahead_before {
        assert!(
            !ids.contains(&a.id),
            "{a:?} was not withdrawn:\n{}",
            env.dump()
        );
    }

    // Nothing recorded twice.
    assert!(
        duplicate_slots(&env).is_empty(),
        "{:?}\n{}",
        duplicate_slots(&env),
        env.dump()
    );

    for name in ["slow", "fast"] {
        let rows = env.executions(name);
        let job_id = &rows[0].job_id;
        let last_before = last_slot_before[job_id];
        check_every_slot_accounted_for(&env, name, &rows);

        // The catch-up burst: everything the first release after the restart recorded.
        let burst_at = rows
            .iter()
            .filter(|e| e.slot.is_some_and(|s| s > last_before))
            .map(|e| e.queued_at)
            .min()
            .unwrap_or_else(|| panic!("{name}: nothing after the restart\n{}", env.dump()));
        assert!(burst_at >= restart_at);
        let burst: Vec<&ExecRow> = rows
            .iter()
            // (slots already due then; the same decision also records the next slot ahead)
            .filter(|e| {
                e.slot.is_some_and(|s| s > last_before && s <= burst_at) && e.queued_at == burst_at
            })
            .collect();
        let runs: Vec<&&ExecRow> = burst.iter().filter(|e| e.status != "skipped").collect();
        let skipped: Vec<(u64, i64, i64, String)> = burst
            .iter()
            .filter(|e| e.status == "skipped")
            .map(|e| parse_skipped(e.error.as_deref().unwrap_or_default()).unwrap())
            .collect();
        let missed = runs.len() as u64 + skipped.iter().map(|s| s.0).sum::<u64>();
        let context = format!(
            "{name}: last slot before the crash {}\n{}",
            ms_to_rfc3339(last_before),
            env.dump()
        );
        assert!(
            missed >= 4,
            "a 4 s outage misses at least 4 one-second slots: {context}"
        );
        assert_eq!(
            runs.len(),
            3,
            "max_missed_runs = 3: the 3 latest missed slots run: {context}"
        );
        assert_eq!(skipped.len(), 1, "{context}");
        let (n, from, to, policy) = &skipped[0];
        assert_eq!(*n, missed - 3, "{context}");
        assert_eq!(*from, last_before + 1000, "{context}");
        assert_eq!(policy, "run_up_to 3", "{context}");
        let mut run_slots: Vec<i64> = runs.iter().map(|e| e.slot.unwrap()).collect();
        run_slots.sort();
        assert_eq!(
            run_slots,
            vec![to + 1000, to + 2000, to + 3000],
            "{context}"
        );
        assert!(runs.iter().any(|e| e.trigger == "catchup"), "{context}");
    }
}

/// Every 1-second slot from the job's first to its last recorded one has a row, or is covered
/// by a `skipped` row that says how many slots it stands for.
fn check_every_slot_accounted_for(env: &Env, name: &str, rows: &[ExecRow]) {
    let slots: BTreeSet<i64> = rows.iter().filter_map(|e| e.slot).collect();
    let (first, last) = (*slots.first().unwrap(), *slots.last().unwrap());
    let ranges: Vec<(i64, i64)> = rows
        .iter()
        .filter(|e| e.status == "skipped")
        .map(|e| {
            let (n, from, to, _) = parse_skipped(e.error.as_deref().unwrap_or_default())
                .unwrap_or_else(|| panic!("skipped row without a slot count: {e:?}"));
            assert_eq!(
                e.slot,
                Some(to),
                "a skipped row sits on the last slot it covers: {e:?}"
            );
            assert_eq!(n as i64, (to - from) / 1000 + 1, "{e:?}");
            (from, to)
        })
        .collect();
    let mut s = first;
    while s <= last {
        let covered = slots.contains(&s) || ranges.iter().any(|(a, b)| *a <= s && s <= *b);
        assert!(
            covered,
            "{name}: slot {} is not accounted for\n{}",
            ms_to_rfc3339(s),
            env.dump()
        );
        s += 1000;
    }
    for s in &slots {
        assert_eq!(
            (s - first) % 1000,
            0,
            "{name}: slot off the 1 s grid: {}",
            ms_to_rfc3339(*s)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Graceful shutdown

/// The job's running execution once the fake CLI has recorded its start, with that pid.
fn running_with_record(env: &Env, job: &str) -> Option<(ExecRow, u32)> {
    let e = env
        .executions(job)
        .into_iter()
        .find(|e| e.status == "running")?;
    let pid = env
        .records()
        .iter()
        .find(|r| r.execution_id() == Some(e.id.as_str()))?
        .pid;
    Some((e, pid))
}

#[test]
fn sigterm_waits_for_a_running_job_within_the_grace() {
    let env = Env::new(ConfigOpts {
        shutdown_grace: "10s",
        ..ConfigOpts::default()
    });
    let (_, at) = whole_second_in(1);
    env.manifest(
        "once.yaml",
        &format!(
            "name: once\nprompt: \"one second of work\"\nschedule: {{ type: once, at: \"{at}\" }}\n\
             execution:\n  environment: {{ FAKE_CLAUDE_SLEEP_MS: \"1000\", FAKE_CLAUDE_RESULT: \"finished in time\" }}\n"
        ),
    );
    let mut cnp = env.start();
    let (exec, _) = cnp.wait_for("the run to be going", || running_with_record(&env, "once"));
    let t0 = Instant::now();
    cnp.signal(Signal::SIGTERM);
    let status = cnp.wait_exit(Duration::from_secs(20));
    let took = t0.elapsed();
    assert!(
        status.success(),
        "cnp exit status {status}; log:\n{}",
        cnp.log()
    );
    assert!(
        took < Duration::from_secs(8),
        "waited {took:?}: longer than the run needed"
    );

    let row = env
        .executions("once")
        .into_iter()
        .find(|e| e.id == exec.id)
        .unwrap();
    assert_eq!(row.status, "completed", "{row:?}");
    assert_eq!(row.output.as_deref(), Some("finished in time"));
    assert!(
        row.completed_at.unwrap() - row.started_at.unwrap() >= 900,
        "{row:?}"
    );
    let log = cnp.log();
    assert!(log.contains("waiting for running jobs to finish"), "{log}");
    assert!(!log.contains("shutdown grace over"), "{log}");
}

#[test]
fn sigterm_kills_a_run_that_outlasts_the_grace_and_records_it_interrupted() {
    let env = Env::new(ConfigOpts {
        shutdown_grace: "1s",
        kill_grace: "1s",
        ..ConfigOpts::default()
    });
    let (_, at) = whole_second_in(1);
    env.manifest(
        "long.yaml",
        &format!(
            "name: long\nprompt: \"a minute of work\"\nschedule: {{ type: once, at: \"{at}\" }}\n\
             execution:\n  environment: {{ FAKE_CLAUDE_SLEEP_MS: \"60000\" }}\n"
        ),
    );
    let mut cnp = env.start();
    let (exec, pid) = cnp.wait_for("the run to be going", || running_with_record(&env, "long"));
    let t0 = Instant::now();
    cnp.signal(Signal::SIGTERM);
    let status = cnp.wait_exit(Duration::from_secs(20));
    let took = t0.elapsed();
    assert!(
        status.success(),
        "cnp exit status {status}; log:\n{}",
        cnp.log()
    );
    assert!(
        took < Duration::from_secs(8),
        "shutdown took {took:?} with a 1 s grace"
    );

    let row = env
        .executions("long")
        .into_iter()
        .find(|e| e.id == exec.id)
        .unwrap();
    assert_eq!(row.status, "interrupted", "{row:?}");
    assert!(
        row.error
            .as_deref()
            .unwrap_or_default()
            .contains("shut down"),
        "{row:?}"
    );
    assert!(row.completed_at.is_some(), "{row:?}");
    wait_until("the CLI to be gone", || process_gone(pid).then_some(()));
    assert!(cnp.log().contains("shutdown grace over"), "{}", cnp.log());
}

// ---------------------------------------------------------------------------------------------
// 5. Bad input never crashes

#[test]
fn bad_config_files_are_refused_naming_the_key_and_line() {
    let env = Env::new(ConfigOpts::default());
    let bad = env.root().join("typo.toml");
    std::fs::write(
        &bad,
        "[scheduler]\ntimezone = \"UTC\"\nmax_mised_runs = 3\n",
    )
    .unwrap();
    for cmd in ["serve", "check"] {
        let out = env.run_cli_raw(&["-c".as_ref(), bad.as_os_str(), cmd.as_ref()]);
        let err = stderr_of(&out);
        assert!(!out.status.success(), "{cmd}: {err}");
        assert!(err.contains("max_mised_runs"), "{cmd}: {err}");
        assert!(err.contains("line 3"), "{cmd}: {err}");
        assert!(err.contains("typo.toml"), "{cmd}: {err}");
    }

    let zone = env.root().join("zone.toml");
    std::fs::write(&zone, "[scheduler]\ntimezone = \"Mars/Olympus\"\n").unwrap();
    let out = env.run_cli_raw(&["-c".as_ref(), zone.as_os_str(), "serve".as_ref()]);
    let err = stderr_of(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("scheduler.timezone"), "{err}");
    assert!(err.contains("Mars/Olympus"), "{err}");

    let section = env.root().join("section.toml");
    std::fs::write(
        &section,
        "[job_engine]\nmax_concurrent_jobs = 2\n\n[schedular]\ntick_interval = \"1s\"\n",
    )
    .unwrap();
    let out = env.run_cli_raw(&["-c".as_ref(), section.as_os_str(), "serve".as_ref()]);
    let err = stderr_of(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("schedular") && err.contains("line 4"), "{err}");
    assert!(
        !env.db.exists(),
        "a refused config must not start the service"
    );
}

const BROKEN_YAML: &str =
    "name: broken\nprompt: [unclosed\nschedule: { type: interval, every_seconds: 1 }\n";
const BAD_CRON: &str =
    "name: badcron\nprompt: hi\nschedule:\n  type: cron\n  expression: \"61 * * * *\"\n";

#[test]
fn bad_manifests_are_reported_and_the_good_ones_run() {
    let env = Env::new(ConfigOpts::default());
    env.manifest("broken.yaml", BROKEN_YAML);
    env.manifest("badcron.yaml", BAD_CRON);
    env.manifest("orphan.yaml", "name: orphan\nprompt_id: no-such-prompt\n");
    env.manifest("good.yaml", &one_second_interval("good", ""));
    let mut cnp = env.start();
    cnp.wait_for("the good job to complete twice", || {
        (env.executions("good")
            .iter()
            .filter(|e| e.status == "completed")
            .count()
            >= 2)
            .then_some(())
    });
    cnp.assert_running();
    assert_eq!(env.job_names(), vec!["good".to_string()]);

    let log = cnp.log();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("manifest error"))
        .collect();
    let broken = errors
        .iter()
        .find(|l| l.contains("broken.yaml:"))
        .unwrap_or_else(|| panic!("broken.yaml not reported:\n{log}"));
    let after = broken.split("broken.yaml:").nth(1).unwrap();
    assert!(
        after.starts_with(|c: char| c.is_ascii_digit()),
        "no line number: {broken}"
    );
    let cron = errors
        .iter()
        .find(|l| l.contains("badcron.yaml"))
        .unwrap_or_else(|| panic!("badcron.yaml not reported:\n{log}"));
    assert!(cron.contains("badcron.yaml:5"), "{cron}");
    assert!(cron.contains("schedule.expression"), "{cron}");
    let orphan = errors
        .iter()
        .find(|l| l.contains("orphan.yaml"))
        .unwrap_or_else(|| panic!("orphan.yaml not reported:\n{log}"));
    assert!(
        orphan.contains("prompt_id") && orphan.contains("no-such-prompt"),
        "{orphan}"
    );
    assert!(log.contains("errors=3"), "{log}");
}

#[test]
fn check_names_file_line_and_field_of_bad_manifests() {
    let env = Env::new(ConfigOpts::default());
    let broken = env.manifest("broken.yaml", BROKEN_YAML);
    let bad_cron = env.manifest("badcron.yaml", BAD_CRON);
    let good = env.manifest("good.yaml", &one_second_interval("good", ""));

    let out = env.run_cli(&["check", broken.to_str().unwrap()]);
    let text = format!("{}{}", stdout_of(&out), stderr_of(&out));
    assert!(!out.status.success(), "{text}");
    let after = text
        .split("broken.yaml:")
        .nth(1)
        .unwrap_or_else(|| panic!("file not named: {text}"));
    assert!(
        after.starts_with(|c: char| c.is_ascii_digit()),
        "no line number: {text}"
    );

    let out = env.run_cli(&["check", bad_cron.to_str().unwrap()]);
    let text = format!("{}{}", stdout_of(&out), stderr_of(&out));
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("badcron.yaml:5"), "{text}");
    assert!(text.contains("schedule.expression"), "{text}");
    assert!(text.contains("badcron"), "{text}");

    let out = env.run_cli(&["check", good.to_str().unwrap()]);
    let text = format!("{}{}", stdout_of(&out), stderr_of(&out));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("good.yaml: ok (1 job(s))"), "{text}");

    // The whole folder: fails, but still reports the good file.
    let out = env.run_cli(&["check"]);
    let text = format!("{}{}", stdout_of(&out), stderr_of(&out));
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("good.yaml: ok"), "{text}");
    assert!(text.contains("badcron.yaml:5"), "{text}");
}

#[test]
fn missing_claude_cli_fails_runs_but_not_the_service() {
    let missing = "/nonexistent/cnp-e2e/claude";
    let env = Env::new(ConfigOpts {
        claude_cli_path: Some(missing.into()),
        ..ConfigOpts::default()
    });
    env.manifest("job.yaml", &one_second_interval("nocli", ""));
    let mut cnp = env.start();
    let failed = cnp.wait_for("two failed runs", || {
        let f: Vec<ExecRow> = env
            .executions("nocli")
            .into_iter()
            .filter(|e| e.status == "failed")
            .collect();
        (f.len() >= 2).then_some(f)
    });
    cnp.assert_running();
    for e in &failed {
        let err = e.error.as_deref().unwrap_or_default();
        assert!(err.contains(missing), "{e:?}");
        assert!(err.contains("not found"), "{e:?}");
    }
    let job = env.job("nocli").unwrap();
    assert!(job.failure_count >= 2 && job.success_count == 0, "{job:?}");
    assert!(
        cnp.log().contains("does not exist"),
        "startup warns about the CLI:\n{}",
        cnp.log()
    );
    assert!(env.records().is_empty());
}

// ---------------------------------------------------------------------------------------------
// 6. Priority and concurrency

#[test]
fn one_at_a_time_in_priority_order() {
    let env = Env::new(ConfigOpts {
        max_concurrent_jobs: 1,
        ..ConfigOpts::default()
    });
    let (at_ms, at) = whole_second_in(3);
    // File order is not priority order (the least urgent comes first).
    let priorities = [3u8, 10, 1, 7];
    let mut yaml = String::new();
    for p in priorities {
        yaml.push_str(&format!(
            "- name: p{p}\n  prompt: \"priority {p}\"\n  priority: {p}\n  schedule: {{ type: once, at: \"{at}\" }}\n  \
             execution:\n    environment: {{ FAKE_CLAUDE_SLEEP_MS: \"300\" }}\n"
        ));
    }
    env.manifest("batch.yaml", &yaml);
    let mut cnp = env.start();
    let runs = cnp.wait_for("all four runs done", || {
        let runs: Vec<(u8, ExecRow)> = priorities
            .iter()
            .filter_map(|p| {
                let e = env
                    .executions(&format!("p{p}"))
                    .into_iter()
                    .find(|e| e.status == "completed")?;
                Some((*p, e))
            })
            .collect();
        (runs.len() == priorities.len()).then_some(runs)
    });
    let mut by_start = runs.clone();
    by_start.sort_by_key(|(_, e)| e.started_at.unwrap());
    let order: Vec<u8> = by_start.iter().map(|(p, _)| *p).collect();
    assert_eq!(order, vec![10, 7, 3, 1], "{}", env.dump());
    for w in by_start.windows(2) {
        assert!(
            w[1].1.started_at.unwrap() >= w[0].1.completed_at.unwrap(),
            "runs overlapped with max_concurrent_jobs = 1:\n{}",
            env.dump()
        );
    }
    for (_, e) in &runs {
        assert_eq!(e.slot, Some(at_ms), "{e:?}");
    }
    // The CLI saw them in the same order.
    let seen: Vec<String> = env
        .records()
        .iter()
        .filter_map(|r| r.stdin.clone())
        .collect();
    assert_eq!(
        seen,
        vec!["priority 10", "priority 7", "priority 3", "priority 1"]
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Misfire policy on restart

struct MisfireOutcome {
    env: Env,
    last_before: i64,
    restart_at: i64,
    burst: Vec<ExecRow>,
    _cnp: Cnp,
}

/// Runs a 1-second interval job with `misfire`, stops cnp gracefully, waits 4 s, restarts it,
/// and returns what the first release after the restart recorded.
fn restart_after_outage(misfire: &str) -> MisfireOutcome {
    let env = Env::new(ConfigOpts {
        misfire_grace: "1s",
        shutdown_grace: "5s",
        ..ConfigOpts::default()
    });
    env.manifest(
        "tick.yaml",
        &format!(
            "name: tick\nprompt: tock\nschedule: {{ type: interval, every_seconds: 1, misfire: {misfire} }}\n\
             execution:\n  environment: {{ FAKE_CLAUDE_SLEEP_MS: \"100\" }}\n"
        ),
    );
    let mut cnp = env.start();
    cnp.wait_for("2 runs done", || {
        (env.executions("tick")
            .iter()
            .filter(|e| e.status == "completed")
            .count()
            >= 2)
            .then_some(())
    });
    sleep_to_second_fraction(500);
    cnp.signal(Signal::SIGTERM);
    assert!(
        cnp.wait_exit(Duration::from_secs(15)).success(),
        "{}",
        cnp.log()
    );
    let stopped_at = now_ms();
    let before = env.executions("tick");
    assert!(
        before.iter().all(|e| e.status == "completed"),
        "graceful stop finishes runs:\n{}",
        env.dump()
    );
    let last_before = before.iter().filter_map(|e| e.slot).max().unwrap();
    assert_eq!(env.job("tick").unwrap().last_slot, Some(last_before));

    std::thread::sleep(Duration::from_millis(
        (stopped_at + 4000 - now_ms()).max(0) as u64
    ));
    let restart_at = now_ms();
    let mut cnp = env.start();
    cnp.wait_for("2 runs of regular slots after the restart done", || {
        let rows = env.executions("tick");
        let burst_at = rows
            .iter()
            .filter(|e| e.slot.is_some_and(|s| s > last_before))
            .map(|e| e.queued_at)
            .min()?;
        // (slots already due then; the same decision also records the next slot ahead)
        let burst_end = rows
            .iter()
            .filter(|e| e.queued_at == burst_at)
            .filter_map(|e| e.slot)
            .filter(|s| *s <= burst_at)
            .max()?;
        let later_done = rows
            .iter()
            .filter(|e| e.slot.is_some_and(|s| s > burst_end) && e.status == "completed")
            .count();
        let burst_pending = rows
            .iter()
            .filter(|e| e.queued_at == burst_at && e.slot.is_some_and(|s| s <= burst_at))
            .filter(|e| e.status == "queued" || e.status == "running")
            .count();
        (later_done >= 2 && burst_pending == 0).then_some(())
    });
    let rows = env.executions("tick");
    assert!(duplicate_slots(&env).is_empty(), "{}", env.dump());
    check_every_slot_accounted_for(&env, "tick", &rows);
    let burst_at = rows
        .iter()
        .filter(|e| e.slot.is_some_and(|s| s > last_before))
        .map(|e| e.queued_at)
        .min()
        .unwrap();
    assert!(burst_at >= restart_at);
    let burst: Vec<ExecRow> = rows
        .into_iter()
        .filter(|e| e.queued_at == burst_at && e.slot.is_some_and(|s| s <= burst_at))
        .collect();
    MisfireOutcome {
        env,
        last_before,
        restart_at,
        burst,
        _cnp: cnp,
    }
}

#[test]
fn misfire_skip_records_the_missed_slots_and_runs_none() {
    let o = restart_after_outage("skip");
    let ctx = o.env.dump();
    assert_eq!(
        o.burst.len(),
        1,
        "one skipped row, no catch-up runs:\n{ctx}"
    );
    let row = &o.burst[0];
    assert_eq!(row.status, "skipped", "{ctx}");
    assert_eq!(row.trigger, "catchup", "{ctx}");
    let (n, from, to, policy) = parse_skipped(row.error.as_deref().unwrap()).unwrap();
    assert_eq!(policy, "skip");
    assert_eq!(from, o.last_before + 1000, "{ctx}");
    assert!(n >= 4, "a 4 s outage misses at least 4 slots: {row:?}");
    assert!(to >= o.restart_at - 1000, "{row:?}");
    // Nothing ran for a missed slot; later slots run as scheduled.
    let rows = o.env.executions("tick");
    for e in &rows {
        let slot = e.slot.unwrap();
        if slot > o.last_before && slot <= to {
            assert_eq!(e.id, row.id, "a missed slot ran: {e:?}\n{ctx}");
        }
        if slot > to {
            assert_eq!(e.trigger, "schedule", "{e:?}");
        }
    }
    assert!(
        !rows
            .iter()
            .any(|e| e.trigger == "catchup" && e.status != "skipped"),
        "{ctx}"
    );
}

#[test]
fn misfire_run_up_to_two_runs_exactly_the_two_latest_missed_slots() {
    let o = restart_after_outage("{ run_up_to: 2 }");
    let ctx = o.env.dump();
    let skipped: Vec<&ExecRow> = o.burst.iter().filter(|e| e.status == "skipped").collect();
    let runs: Vec<&ExecRow> = o.burst.iter().filter(|e| e.status != "skipped").collect();
    assert_eq!(skipped.len(), 1, "{ctx}");
    assert_eq!(runs.len(), 2, "exactly 2 catch-up runs:\n{ctx}");
    let (n, from, to, policy) = parse_skipped(skipped[0].error.as_deref().unwrap()).unwrap();
    assert_eq!(policy, "run_up_to 2");
    assert_eq!(from, o.last_before + 1000, "{ctx}");
    assert!(n + 2 >= 4, "a 4 s outage misses at least 4 slots:\n{ctx}");
    let mut slots: Vec<i64> = runs.iter().map(|e| e.slot.unwrap()).collect();
    slots.sort();
    assert_eq!(
        slots,
        vec![to + 1000, to + 2000],
        "the 2 latest missed slots:\n{ctx}"
    );
    for e in &runs {
        assert_eq!(e.status, "completed", "{e:?}");
        assert!(e.trigger == "catchup" || e.trigger == "schedule", "{e:?}");
    }
    assert!(runs.iter().any(|e| e.trigger == "catchup"), "{ctx}");
    // No other runs for the missed slots.
    for e in o.env.executions("tick") {
        let slot = e.slot.unwrap();
        if slot > o.last_before && slot <= to {
            assert_eq!(e.status, "skipped", "a skipped slot ran: {e:?}\n{ctx}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 8. Prompts from the jobs folder

#[test]
fn prompt_id_runs_the_prompt_file_from_the_jobs_folder() {
    let env = Env::new(ConfigOpts::default());
    let content = "# Weekly review\n\nList the open pull requests.\nBe brief: \"one line\" each.\n";
    env.prompt("weekly-review", content);
    env.manifest(
        "review.yaml",
        "name: review\nprompt_id: weekly-review\nschedule: { type: interval, every_seconds: 1 }\n",
    );
    let mut cnp = env.start();
    let exec = cnp.wait_for("a completed run", || {
        env.executions("review")
            .into_iter()
            .find(|e| e.status == "completed")
    });
    let job = env.job("review").unwrap();
    assert_eq!(job.prompt_id.as_deref(), Some("weekly-review"));
    assert_eq!(exec.prompt.as_deref(), Some(content));
    let rec = env
        .records()
        .into_iter()
        .find(|r| r.execution_id() == Some(exec.id.as_str()))
        .expect("invocation recorded");
    assert_eq!(rec.stdin.as_deref(), Some(content));
    assert!(
        exec.output
            .as_deref()
            .unwrap_or_default()
            .starts_with("Hello from fake claude: # Weekly review"),
        "{exec:?}"
    );
    let stored: (String, String) = env
        .db()
        .query_row(
            "SELECT title, content FROM prompts WHERE id = 'weekly-review'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(stored, ("Weekly review".to_string(), content.to_string()));
}
