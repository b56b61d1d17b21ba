//! Budgets end to end: the real `cnp`, the fake CLI reporting $0.40 a run, and a real webhook
//! receiver. A job with `budget: { daily_usd: 1.0 }`: the third run is held (deferred,
//! `budget_held`), `budget_exceeded` reaches the webhook once, `cnp budget` and the metrics show
//! the hold, and raising the cap in the manifest (hot reload) lets the held runs go. (The
//! window rolling on its own is proven on an injected clock: host/tests/budget.rs.)

mod support;

use support::*;

fn manifest(hook: &HttpReceiver, daily: f64) -> String {
    format!(
        "name: spender\nprompt: spend a little\n\
         execution:\n  environment: {{ FAKE_CLAUDE_COST_USD: \"0.4\" }}\n\
         budget: {{ daily_usd: {daily} }}\n\
         notifications:\n  channels:\n    - type: webhook\n      url: \"{}\"\n",
        hook.url("/hook")
    )
}

fn budget_posts(hook: &HttpReceiver) -> Vec<String> {
    hook.requests()
        .into_iter()
        .map(|r| r.body_text())
        .filter(|b| b.contains("budget_exceeded"))
        .collect()
}

#[test]
fn a_daily_cap_holds_the_third_run_notifies_once_and_a_raised_cap_releases_it() {
    let hook = HttpReceiver::start(200);
    let env = Env::new(ConfigOpts::default());
    env.manifest("spender.yaml", &manifest(&hook, 1.0));
    let mut cnp = env.start();
    cnp.wait_log("cnp is running");
    for _ in 0..2 {
        let out = env.run_cli(&["job", "execute", "spender", "--wait"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let runs = env.executions("spender");
    assert!(runs.iter().all(|r| r.status == "completed"), "{runs:?}");
    let costs: Vec<f64> = env
        .db()
        .prepare("SELECT cost_usd FROM executions ORDER BY queued_at")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(costs, [0.4, 0.4], "the CLI's total_cost_usd, recorded");

    // $0.80 + ~$0.40 > $1.00: held, not run, not lost.
    for _ in 0..2 {
        let out = env.run_cli(&["job", "execute", "spender"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let held = cnp.wait_for("two runs held", || {
        let held: Vec<ExecRow> = env
            .executions("spender")
            .into_iter()
            .filter(|r| r.status == "deferred")
            .collect();
        (held.len() == 2).then_some(held)
    });
    let reason = held[0].error.clone().unwrap_or_default();
    assert!(
        reason.starts_with("budget_held: job spender's daily budget of $1.00 — $0.80 spent"),
        "{reason}"
    );
    assert!(held.iter().all(|r| r.started_at.is_none()));
    let post = cnp.wait_for("budget_exceeded at the webhook", || {
        budget_posts(&hook).into_iter().next()
    });
    assert!(post.contains("spender"), "{post}");

    // The CLI and the metrics show the hold.
    let out = env.run_cli(&["budget", "--format", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let job = &v["jobs"][0];
    assert_eq!(job["job_name"], "spender");
    assert_eq!(job["exceeded"], true);
    assert_eq!(job["held_runs"], 2);
    assert_eq!(job["windows"][0]["spent_usd"], 0.8);
    assert_eq!(v["held_runs"], 2);
    let out = env.run_cli(&["budget"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("job spender") && text.contains("HELD"),
        "{text}"
    );
    assert!(text.contains("2 run(s) held"), "{text}");
    let (base, token) = cnp.wait_api(&env);
    let metrics = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            reqwest::Client::new()
                .get(format!("{base}/metrics"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        });
    assert!(
        metrics.contains("cnp_budget_exceeded{scope=\"job\",job=\"spender\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("cnp_budget_held_runs 2"), "{metrics}");
    assert!(
        metrics.contains("cnp_budget_cap_usd{scope=\"job\",job=\"spender\",window=\"daily\"} 1")
    );

    // The operator raises the cap in the manifest: hot reload, and the held runs run.
    env.manifest("spender.yaml", &manifest(&hook, 5.0));
    cnp.wait_for("the held runs ran", || {
        let runs = env.executions("spender");
        (runs.len() == 4 && runs.iter().all(|r| r.status == "completed")).then_some(())
    });
    assert_eq!(
        budget_posts(&hook).len(),
        1,
        "budget_exceeded was sent once"
    );
    let delivered: i64 = env
        .db()
        .query_row(
            "SELECT COUNT(*) FROM notification_deliveries WHERE event = 'budget_exceeded' AND status = 'sent'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(delivered, 1);
}

#[test]
fn the_global_cap_is_set_and_reset_from_the_cli_and_bad_caps_are_refused() {
    let env = Env::new(ConfigOpts::default());
    let mut cnp = env.start();
    cnp.wait_log("cnp is running");
    let out = env.run_cli(&["budget", "set", "--daily-usd", "2.5", "--format", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["global"]["source"], "override");
    assert_eq!(v["global"]["budget"]["daily_usd"], 2.5);
    let out = env.run_cli(&["budget", "set", "--daily-usd=-1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("daily_usd"), "{err}");
    // Kept across a restart until reset.
    cnp.signal(nix::sys::signal::Signal::SIGTERM);
    cnp.wait_exit(std::time::Duration::from_secs(20));
    let mut cnp = env.start();
    cnp.wait_log("cnp is running");
    let out = env.run_cli(&["budget", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["global"]["budget"]["daily_usd"], 2.5);
    let out = env.run_cli(&["budget", "reset", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["global"]["source"], "config");
    assert!(v["global"]["budget"]["daily_usd"].is_null());

    // A manifest with a bad budget names the field, and the service keeps running.
    env.manifest(
        "bad.yaml",
        "name: bad\nprompt: x\nbudget: { daily_usd: -3 }\n",
    );
    let out = env.run_cli(&["check"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("budget.daily_usd"), "{text}");
    // Two files defining one name: named by `cnp check`, as the service would refuse it.
    env.manifest("bad.yaml", "name: twice\nprompt: x\n");
    env.manifest("again.yaml", "name: twice\nprompt: y\n");
    let out = env.run_cli(&["check"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("job `twice` is already defined in"), "{err}");
    cnp.assert_running();
}
