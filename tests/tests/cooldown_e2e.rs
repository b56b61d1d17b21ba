//! The usage-limit cooldown through the real `cnp serve` and the fake CLI: the CLI reports the
//! 2.1.330 subscription limit with a reset instant; cnp defers the run, shows the cooldown
//! (`cnp status`, `cnp cooldown`, the API's metrics), and runs it again after the reset — or
//! when the cooldown is cleared by hand.

mod support;

use std::time::Duration;

use support::{now_ms, whole_second_in, ConfigOpts, Env};

fn env_with_cooldown() -> Env {
    // Built first: the job's slot is a few seconds from now.
    support::cnp_bin();
    let env = Env::new(ConfigOpts::default());
    let mut text = std::fs::read_to_string(&env.config).unwrap();
    text.push_str("\n[cooldown]\nmargin = \"1s\"\n");
    std::fs::write(&env.config, text).unwrap();
    env
}

/// A job due in 2 s whose CLI says "usage limit, resets at `reset_epoch`" once, then succeeds.
fn limited_job(env: &Env, reset_epoch: i64) {
    let (_, at) = whole_second_in(2);
    let state = env.root().join("fake-state");
    env.manifest(
        "limited.yaml",
        &format!(
            "name: limited\nprompt: \"hello\"\nschedule: {{ type: once, at: \"{at}\" }}\n\
             execution:\n  environment:\n    FAKE_CLAUDE_SCENARIOS: \"usage-limit,ok\"\n    \
             FAKE_CLAUDE_STATE_DIR: \"{}\"\n    FAKE_CLAUDE_RESET_EPOCH: \"{reset_epoch}\"\n\
             retry: {{ max_attempts: 3, strategy: fixed, initial_interval: 1 }}\n",
            state.display()
        ),
    );
}

fn stdout(o: std::process::Output) -> String {
    assert!(
        o.status.success(),
        "cnp failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_usage_limit_defers_the_run_until_the_reset_then_it_runs_once() {
    let env = env_with_cooldown();
    let reset = now_ms() / 1000 + 8;
    limited_job(&env, reset);
    let mut cnp = env.start();
    cnp.wait_api(&env);
    std::thread::sleep(Duration::from_secs(5));
    eprintln!(
        "DUMP {}\nMANIFEST {}\nRECORDS {:?}",
        env.dump(),
        std::fs::read_to_string(env.jobs.join("limited.yaml")).unwrap(),
        env.records()
            .iter()
            .map(|r| r.raw.to_string())
            .collect::<Vec<_>>()
    );
    cnp.wait_for("the run deferred by the usage limit", || {
        let e = env.executions("limited");
        (e.len() == 1 && e[0].status == "deferred").then_some(())
    });
    // Shown by `cnp status` and `cnp cooldown`, with the reset (+ margin) as its end.
    let status = stdout(env.run_cli(&["status"]));
    assert!(
        status.contains("Cooldown") && status.contains("active until"),
        "{status}"
    );
    let json = stdout(env.run_cli(&["cooldown", "--format", "json"]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["active"], true, "{v}");
    let until = chrono::DateTime::parse_from_rfc3339(v["cooldown"]["until"].as_str().unwrap())
        .unwrap()
        .timestamp();
    // The CLI prints the reset without seconds; cnp adds a minute for them (+1 s margin).
    assert!(
        (reset..=reset + 62).contains(&until),
        "until {until}, reset {reset}"
    );
    let e = env.executions("limited");
    assert!(
        e[0].error.as_deref().unwrap_or("").contains("usage limit"),
        "{e:?}"
    );

    let e = cnp.wait_for("the deferred run completed", || {
        let e = env.executions("limited");
        (e.len() == 1 && e[0].status == "completed").then_some(e)
    });
    assert_eq!(e[0].retry_count, 0, "a usage limit is not an attempt");
    assert!(e[0].started_at.unwrap() >= reset * 1000, "{e:?}");
    let records = env.records();
    assert_eq!(
        records.len(),
        2,
        "the limited try and the run after the reset"
    );
    let v: serde_json::Value =
        serde_json::from_str(&stdout(env.run_cli(&["cooldown", "--format", "json"]))).unwrap();
    assert_eq!(v["active"], false, "{v}");
    let j = env.job("limited").unwrap();
    assert_eq!((j.execution_count, j.failure_count), (1, 0));
}

#[test]
fn a_cooldown_survives_a_restart_and_cnp_cooldown_clear_ends_it() {
    let env = env_with_cooldown();
    limited_job(&env, now_ms() / 1000 + 7200);
    let mut cnp = env.start();
    cnp.wait_api(&env);
    cnp.wait_for("the run deferred by the usage limit", || {
        let e = env.executions("limited");
        (e.len() == 1 && e[0].status == "deferred").then_some(())
    });
    cnp.kill9();
    let mut cnp = env.start();
    cnp.wait_api(&env);
    let out = stdout(env.run_cli(&["cooldown"]));
    assert!(out.contains("active until"), "{out}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(env.records().len(), 1, "nothing ran during the cooldown");
    let out = stdout(env.run_cli(&["cooldown", "clear"]));
    assert!(out.contains("cooldown cleared: 1 deferred run(s)"), "{out}");
    cnp.wait_for("the run completed", || {
        let e = env.executions("limited");
        (e.len() == 1 && e[0].status == "completed").then_some(())
    });
    assert_eq!(env.records().len(), 2);
    let out = stdout(env.run_cli(&["cooldown", "clear"]));
    assert!(out.contains("no cooldown in force"), "{out}");
}
