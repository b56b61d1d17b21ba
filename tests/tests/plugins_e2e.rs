//! End-to-end tests of the plugin platform in `cnp serve`: the real binary with the fake Claude
//! CLI, real plugin components (built by `scripts/build-plugins.sh`) in the watched plugins
//! folder, and a loopback HTTP receiver for the notifier. Observed through the SQLite file,
//! the executions' `system` log lines and cnp's stderr.

mod support;

use std::time::Duration;

use chrono::{Timelike, Utc};
use serde_json::Value;

use support::*;

/// Every plugin these tests install.
const PACKAGES: [&str; 4] = [
    "business-hours",
    "decorrelated-jitter",
    "webhook-notifier",
    "upstream-gate",
];

/// A one-minute business-hours window about twelve hours away, every day, in UTC: whatever
/// the time the test runs at, it is outside.
fn never_open_window() -> (String, String) {
    let now = Utc::now();
    let minute = (now.hour() * 60 + now.minute() + 720) % 1440;
    let start = minute.min(1438);
    let end = start + 1;
    let hhmm = |m: u32| format!("{:02}:{:02}", m / 60, m % 60);
    (hhmm(start), hhmm(end))
}

/// A `conditions:` block with business-hours configured to skip outside a never-open window.
fn skip_condition() -> String {
    let (start, end) = never_open_window();
    format!(
        "conditions:\n  - plugin: business-hours\n    config: {{ days: [mon, tue, wed, thu, fri, sat, sun], \
         start: \"{start}\", end: \"{end}\", outside: skip, timezone: UTC }}\n"
    )
}

/// The `system` lines of an execution's log.
fn system_lines(env: &Env, execution_id: &str) -> Vec<String> {
    env.logs(execution_id)
        .into_iter()
        .filter(|(stream, _)| stream == "system")
        .map(|(_, line)| line)
        .collect()
}

fn invocations_of(env: &Env, job_id: &str) -> usize {
    env.records()
        .iter()
        .filter(|r| r.job_id() == Some(job_id))
        .count()
}

// ---------------------------------------------------------------------------------------------
// 9. Condition hooks: skip, and the fallback when the hook is missing

#[test]
fn a_condition_hook_skips_runs_and_a_missing_hook_falls_back_to_running() {
    let env = Env::new(ConfigOpts::default());
    seed_plugin_cache(&env, &PACKAGES);
    install_plugin(&env, "business-hours", "business-hours", None);
    env.manifest(
        "outside.yaml",
        &format!(
            "name: outside\nprompt: \"never runs\"\nschedule: {{ type: interval, every_seconds: 1 }}\n{}",
            skip_condition()
        ),
    );
    let (_, at) = whole_second_in(2);
    env.manifest(
        "fallback.yaml",
        &format!(
            "name: fallback\nprompt: \"runs anyway\"\nschedule: {{ type: once, at: \"{at}\" }}\n\
             conditions:\n  - plugin: not-installed\n    config: {{ anything: 1 }}\n"
        ),
    );
    let mut cnp = env.start();
    cnp.wait_log("cnp is running");
    assert!(
        cnp.log().contains("not-installed"),
        "defining a job that uses a missing plugin warns: {}",
        cnp.log()
    );

    // Skipped, with the hook's reason, and never handed to the CLI.
    let skipped = cnp.wait_for("two skipped runs", || {
        let rows: Vec<ExecRow> = env
            .executions("outside")
            .into_iter()
            .filter(|e| e.status == "skipped")
            .collect();
        (rows.len() >= 2).then_some(rows)
    });
    for e in &skipped {
        let reason = e.error.as_deref().unwrap_or_default();
        assert!(
            reason.contains("condition `business-hours`")
                && reason.contains("outside business hours"),
            "the skip reason names the hook and why: {e:?}"
        );
        assert!(e.completed_at.is_some(), "{e:?}");
    }

    // The missing hook: the run happens, with a note why the condition was not applied.
    let done = cnp.wait_for("the fallback run to complete", || {
        env.executions("fallback")
            .into_iter()
            .find(|e| e.status == "completed")
    });
    let notes = cnp.wait_for("the fallback note", || {
        let l = system_lines(&env, &done.id);
        l.iter().any(|l| l.contains("not-installed")).then_some(l)
    });
    let note = notes.iter().find(|l| l.contains("not-installed")).unwrap();
    assert!(
        note.contains("not loaded") && note.contains("built-in behaviour: run"),
        "{note}"
    );

    let outside = env.job("outside").unwrap();
    let rows = env.executions("outside");
    // Slots are recorded up to 2 s ahead, so the next ones may be waiting as `queued`.
    assert!(
        rows.iter()
            .all(|e| e.status == "skipped" || e.status == "queued"),
        "every run of `outside` is skipped (or still waiting for its slot):\n{}",
        env.dump()
    );
    assert_eq!(
        invocations_of(&env, &outside.id),
        0,
        "the CLI never ran for `outside`"
    );
    let fallback = env.job("fallback").unwrap();
    assert_eq!(invocations_of(&env, &fallback.id), 1);
}

// ---------------------------------------------------------------------------------------------
// 10. A retry-strategy plugin decides the retries

#[test]
fn a_retry_plugin_schedules_retries_until_the_attempts_run_out() {
    let env = Env::new(ConfigOpts::default());
    seed_plugin_cache(&env, &PACKAGES);
    install_plugin(&env, "decorrelated-jitter", "decorrelated-jitter", None);
    let (slot_ms, at) = whole_second_in(2);
    env.manifest(
        "flaky.yaml",
        &format!(
            "name: flaky\nprompt: \"always fails\"\nschedule: {{ type: once, at: \"{at}\" }}\n\
             execution:\n  environment: {{ FAKE_CLAUDE_SCENARIO: error }}\n\
             retry: {{ max_attempts: 3, strategy: custom, plugin: decorrelated-jitter, \
             plugin_config: {{ base_ms: 100, cap_ms: 300 }} }}\n"
        ),
    );
    let mut cnp = env.start();
    let rows = cnp.wait_for("three finished attempts", || {
        let rows = env.executions("flaky");
        (rows.len() >= 3 && rows.iter().all(|e| e.completed_at.is_some())).then_some(rows)
    });
    // Nothing more comes: the third attempt was the last.
    std::thread::sleep(Duration::from_millis(1500));
    let rows_later = env.executions("flaky");
    assert_eq!(rows_later.len(), 3, "no fourth attempt:\n{}", env.dump());

    let retry_counts: Vec<i64> = rows.iter().map(|e| e.retry_count).collect();
    assert_eq!(retry_counts, vec![0, 1, 2], "{}", env.dump());
    let triggers: Vec<&str> = rows.iter().map(|e| e.trigger.as_str()).collect();
    assert_eq!(triggers[1..], ["retry", "retry"], "{}", env.dump());
    assert_ne!(triggers[0], "retry");
    for e in &rows {
        assert_eq!(e.status, "failed", "{e:?}");
        assert_eq!(
            e.slot,
            Some(slot_ms),
            "every attempt belongs to the first one's slot: {e:?}"
        );
    }
    // Each retry came after the plugin's delay (100–300 ms after the failure, with slack for
    // a loaded machine).
    for pair in rows.windows(2) {
        let failed_at = pair[0].completed_at.unwrap();
        let due = pair[1].scheduled_for.expect("a retry has its due time");
        let delay = due - failed_at;
        assert!(
            (90..=1500).contains(&delay),
            "retry due {delay} ms after the failure (plugin: 100–300 ms):\n{}",
            env.dump()
        );
    }
    // The notes say who decided.
    for e in &rows[..2] {
        let lines = cnp.wait_for("the retry note", || {
            let l = system_lines(&env, &e.id);
            l.iter().any(|l| l.contains("retry at")).then_some(l)
        });
        assert!(
            lines
                .iter()
                .any(|l| l.contains("plugin `decorrelated-jitter`")),
            "{lines:?}"
        );
    }
    let last = cnp.wait_for("the last attempt's note", || {
        let l = system_lines(&env, &rows[2].id);
        l.iter()
            .any(|l| l.contains("no attempts left"))
            .then_some(l)
    });
    assert!(
        last.iter().any(|l| l.contains("attempt 3 of 3")),
        "{last:?}"
    );
    let job = env.job("flaky").unwrap();
    assert_eq!(invocations_of(&env, &job.id), 3);
}

// ---------------------------------------------------------------------------------------------
// 11. A notifier plugin delivers the failure

#[test]
fn a_notifier_plugin_delivers_the_failure_to_a_granted_webhook() {
    let receiver = HttpReceiver::start(200);
    let env = Env::new(ConfigOpts::default());
    seed_plugin_cache(&env, &PACKAGES);
    install_plugin(
        &env,
        "webhook-notifier",
        "webhook-notifier",
        Some(&format!(
            "kind = \"notifier\"\n[grants]\nallowed_hosts = [\"{}\"]\n",
            receiver.authority()
        )),
    );
    let (_, at) = whole_second_in(2);
    env.manifest(
        "notify.yaml",
        &format!(
            "name: notify-me\nprompt: \"fails once\"\nschedule: {{ type: once, at: \"{at}\" }}\n\
             execution:\n  environment: {{ FAKE_CLAUDE_SCENARIO: error }}\n\
             notifications:\n  on_failure: true\n  channels:\n    - type: plugin\n      plugin: webhook-notifier\n      \
             config: {{ url: \"{}\", format: slack }}\n",
            receiver.url("/hooks/cnp")
        ),
    );
    let mut cnp = env.start();
    let failed = cnp.wait_for("the failed run", || {
        env.executions("notify-me")
            .into_iter()
            .find(|e| e.status == "failed")
    });
    let request = cnp.wait_for("the webhook request", || {
        receiver.requests().into_iter().next()
    });
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/hooks/cnp");
    assert_eq!(request.header("host"), Some(receiver.authority().as_str()));
    let body: Value = serde_json::from_slice(&request.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", request.body_text()));
    let text = body["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text in {body}"));
    assert!(
        text.contains("notify-me") && text.contains("failed"),
        "the failure summary: {text}"
    );
    let note = cnp.wait_for("the delivery note", || {
        system_lines(&env, &failed.id)
            .into_iter()
            .find(|l| l.contains("notified via plugin"))
    });
    assert!(
        note.contains("webhook-notifier") && note.contains("HTTP 200"),
        "{note}"
    );
    // Delivered through the notification service: recorded like every channel.
    let (channel, status, detail): (String, String, String) =
        cnp.wait_for("the delivery record", || {
            env.db()
                .query_row(
                    "SELECT channel, status, detail FROM notification_deliveries
                     WHERE execution_id = ?1",
                    [&failed.id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .ok()
        });
    assert_eq!(
        (channel.as_str(), status.as_str()),
        ("plugin webhook-notifier", "sent")
    );
    assert!(detail.contains("HTTP 200"), "{detail}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        receiver.requests().len(),
        1,
        "one failure, one notification: {:?}",
        receiver.requests()
    );
}

// ---------------------------------------------------------------------------------------------
// 12. Drop-in while running

#[test]
fn a_plugin_dropped_into_the_running_service_is_loaded_and_used() {
    let env = Env::new(ConfigOpts::default());
    seed_plugin_cache(&env, &PACKAGES);
    std::fs::create_dir_all(env.plugins_dir()).unwrap();
    env.manifest(
        "late.yaml",
        &format!(
            "name: late\nprompt: \"until the hook arrives\"\nschedule: {{ type: interval, every_seconds: 1 }}\n{}",
            skip_condition()
        ),
    );
    let mut cnp = env.start();
    // Without the plugin, runs go ahead (built-in behaviour).
    cnp.wait_for("a run without the hook", || {
        env.executions("late")
            .into_iter()
            .find(|e| e.status == "completed")
    });
    assert!(!cnp.log().contains("plugin loaded"), "{}", cnp.log());

    install_plugin(&env, "business-hours", "business-hours", None);
    let line = cnp.wait_log_line("plugin loaded", "business-hours");
    assert!(line.contains("condition-hook"), "{line}");
    // ... and the engine uses it from then on.
    let skipped = cnp.wait_for("a run skipped by the dropped-in hook", || {
        env.executions("late")
            .into_iter()
            .find(|e| e.status == "skipped")
    });
    assert!(
        skipped
            .error
            .as_deref()
            .is_some_and(|r| r.contains("outside business hours")),
        "{skipped:?}"
    );

    // A broken drop-in is reported and does not disturb the service.
    std::fs::write(env.plugins_dir().join("broken.wasm"), b"not a component").unwrap();
    cnp.wait_log_line("plugin not loaded", "broken.wasm");
    cnp.assert_running();
}

// ---------------------------------------------------------------------------------------------
// 13. WIT 0.2 condition hooks in a workflow

#[test]
fn a_0_2_condition_hook_skips_a_workflow_node_on_what_its_upstream_answered() {
    let env = Env::new(ConfigOpts::default());
    seed_plugin_cache(&env, &PACKAGES);
    install_plugin(&env, "upstream-gate", "upstream-gate", None);
    install_plugin(&env, "business-hours", "business-hours", None);
    env.manifest(
        "review.yaml",
        "name: review\nprompt: review the diff\n\
         execution: { environment: { FAKE_CLAUDE_RESULT: 'Nothing to fix. Verdict: NO-CHANGES' } }\n",
    );
    // `fix` (0.2 hook) is skipped on the review's answer; `tests` after it is skipped in turn;
    // `notes` has a 0.1 hook (business-hours, manual bypass on) and runs: a dependency run is
    // `manual` to it.
    let (start, end) = never_open_window();
    env.manifest(
        "nodes.yaml",
        &format!(
            "- name: fix\n  prompt: \"fix: {{{{ upstream.review.result }}}}\"\n  depends_on: [review]\n  \
             conditions:\n    - plugin: upstream-gate\n      config: {{ skip_if_contains: [no-changes] }}\n\
             - name: tests\n  prompt: run the tests\n  depends_on: [fix]\n\
             - name: notes\n  prompt: write notes\n  depends_on: [review]\n  \
             conditions:\n    - plugin: business-hours\n      config: {{ days: [mon, tue, wed, thu, fri, sat, sun], \
             start: \"{start}\", end: \"{end}\", outside: skip, timezone: UTC }}\n"
        ),
    );
    let mut cnp = env.start();
    cnp.wait_log("cnp is running");
    let out = env.run_cli(&["job", "execute", "review", "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tests = cnp.wait_for("the node after the skipped one settled", || {
        env.executions("tests")
            .into_iter()
            .find(|e| e.status == "skipped")
    });
    assert_eq!(tests.trigger, "dependency", "{tests:?}");
    let fix = env.executions("fix");
    assert_eq!(fix.len(), 1, "{fix:#?}");
    assert_eq!(fix[0].status, "skipped", "{:?}", fix[0]);
    assert_eq!(fix[0].trigger, "dependency");
    assert_eq!(
        fix[0].error.as_deref(),
        Some("condition `upstream-gate`: upstream `review` said `no-changes`"),
        "{:?}",
        fix[0]
    );
    let notes = cnp.wait_for("the node with a 0.1 hook ran", || {
        env.executions("notes")
            .into_iter()
            .find(|e| e.status == "completed")
    });
    assert_eq!(notes.trigger, "dependency", "{notes:?}");
    // Only review and notes reached the CLI.
    let invocations = env
        .records()
        .into_iter()
        .filter(|r| !r.raw["scenario"].is_null())
        .count();
    assert_eq!(invocations, 2);
    let out = env.run_cli(&["plugin", "list"]);
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(list.contains("condition-hook (WIT 0.2.0)"), "{list}");
}
