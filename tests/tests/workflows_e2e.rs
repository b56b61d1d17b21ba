//! Workflows end to end: the real `cnp` binary with the fake CLI — the example workflow from
//! `examples/` (review → fix → test → summary), a diamond surviving `kill -9` between an
//! upstream's end and its downstream's start, and a manifest cycle refused while the loaded
//! jobs keep running.

mod support;

use std::time::Duration;

use support::*;

fn one(env: &Env, name: &str) -> ExecRow {
    let runs = env.executions(name);
    assert_eq!(runs.len(), 1, "{name}: exactly one run, got {runs:#?}");
    runs.into_iter().next().unwrap()
}

fn workflow_run_id(env: &Env, execution_id: &str) -> Option<String> {
    env.db()
        .query_row(
            "SELECT workflow_run_id FROM executions WHERE id = ?1",
            [execution_id],
            |r| r.get(0),
        )
        .unwrap()
}

#[test]
fn the_example_workflow_runs_review_fix_tests_and_summary_once_each() {
    let env = Env::new(ConfigOpts::default());
    let repo = env.root().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/jobs/review-workflow.yaml"),
    )
    .unwrap()
    .replace("/srv/repo", repo.to_str().unwrap());
    let file = env.manifest("review-workflow.yaml", &example);

    // `cnp check` prints the graph.
    let out = env.run_cli(&["check", file.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(
            "nightly-review → nightly-fix  [success when upstream.json.issues | length > 0]"
        ),
        "{text}"
    );
    assert!(
        text.contains("nightly-tests → morning-summary  [always]"),
        "{text}"
    );

    // The review finds an issue (the fake CLI answers this JSON to every prompt).
    let answer =
        r#"{"issues": [{"file": "src/lib.rs", "line": 3, "problem": "unwrap on user input"}]}"#;
    let mut cnp = env.start_with(&[("FAKE_CLAUDE_RESULT", answer)]);
    cnp.wait_log("cnp is running");
    let out = env.run_cli(&["job", "execute", "nightly-review", "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = cnp.wait_for("the morning summary", || {
        env.executions("morning-summary")
            .into_iter()
            .find(|e| e.status == "completed")
    });
    let review = one(&env, "nightly-review");
    for name in ["nightly-fix", "nightly-tests", "morning-summary"] {
        let r = one(&env, name);
        assert_eq!(r.status, "completed", "{name}: {r:?}");
        assert_eq!(r.trigger, "dependency", "{name}");
    }
    // Results passed on: the fix's prompt holds the review's answer; the summary's too.
    let fix = one(&env, "nightly-fix");
    assert!(
        fix.prompt
            .as_deref()
            .unwrap()
            .contains("unwrap on user input"),
        "{fix:?}"
    );
    let prompt = summary.prompt.as_deref().unwrap();
    assert!(
        prompt.contains("Review (completed): {\"issues\""),
        "{prompt}"
    );
    assert!(prompt.contains("Tests: completed"), "{prompt}");
    // The fake CLI saw exactly those prompts (once each).
    let invocations: Vec<_> = env
        .records()
        .into_iter()
        .filter(|r| !r.raw["scenario"].is_null())
        .collect();
    assert_eq!(invocations.len(), 4, "{invocations:#?}");

    // One pass ties them together; the CLI shows it as a tree.
    let pass = workflow_run_id(&env, &review.id).expect("the review's pass");
    assert_eq!(pass, review.id);
    let out = env.run_cli(&["workflow", "show", &pass]);
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{tree}");
    for line in [
        "nightly-review: ✔ completed",
        "[success when upstream.json.issues | length > 0] nightly-fix: ✔ completed",
        "[success] nightly-tests: ✔ completed",
        "[always] morning-summary: ✔ completed",
    ] {
        assert!(tree.contains(line), "`{line}` in\n{tree}");
    }
    let out = env.run_cli(&["workflow", "list"]);
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        list.contains(&pass) && list.contains("4 completed"),
        "{list}"
    );
}

#[test]
fn kill_9_between_an_upstream_end_and_its_downstream_start_runs_each_exactly_once() {
    // One run at a time: when A ends, B and C are recorded but wait behind X (priority 10),
    // which holds the only slot until cnp is killed.
    let env = Env::new(ConfigOpts {
        max_concurrent_jobs: 1,
        ..ConfigOpts::default()
    });
    env.manifest(
        "a.yaml",
        "name: A\nprompt: review the diff\nexecution: { environment: { FAKE_CLAUDE_RESULT: 'found 2 issues', FAKE_CLAUDE_SLEEP_MS: '3000' } }\n",
    );
    // B, C and D in another file (applied after A's: upstreams first).
    env.manifest(
        "b.yaml",
        r#"
- { name: B, priority: 1, prompt: "fix: {{ upstream.A.result }}", depends_on: [A] }
- { name: C, priority: 1, prompt: "test after {{ upstream.A.status }}", depends_on: [{ job: A, on: completed }] }
- { name: D, priority: 1, prompt: "summary: [{{ upstream.B.result }}] [{{ upstream.C.result }}]", depends_on: [B, C] }
- { name: X, priority: 10, prompt: "hold", execution: { environment: { FAKE_CLAUDE_SLEEP_MS: "600000" } } }
"#,
    );
    let mut cnp = env.start();
    cnp.wait_log("cnp is running");
    let out = env.run_cli(&["job", "execute", "A"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // X is queued while A runs (A sleeps 3 s), so it takes the slot when A ends.
    cnp.wait_for("A running", || {
        env.executions("A")
            .into_iter()
            .find(|e| e.status == "running")
    });
    let out = env.run_cli(&["job", "execute", "X"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cnp.wait_for("X running, B and C queued", || {
        let x = env.executions("X").into_iter().next()?;
        let b = env.executions("B").into_iter().next()?;
        let c = env.executions("C").into_iter().next()?;
        (x.status == "running" && b.status == "queued" && c.status == "queued").then_some(())
    });
    assert!(env.executions("D").is_empty());
    cnp.kill9();

    let mut cnp = env.start();
    let d = cnp.wait_for("D completed", || {
        env.executions("D")
            .into_iter()
            .find(|e| e.status == "completed")
    });
    for name in ["A", "B", "C", "D"] {
        assert_eq!(one(&env, name).status, "completed", "{name}");
    }
    assert_eq!(one(&env, "X").status, "interrupted");
    // Each ran once: the fake CLI was started once per job.
    let b = one(&env, "B");
    let c = one(&env, "C");
    for e in [&b, &c, &d] {
        let n = env
            .records()
            .iter()
            .filter(|r| r.execution_id() == Some(&e.id))
            .count();
        assert_eq!(n, 1, "{e:?}");
    }
    assert_eq!(b.prompt.as_deref(), Some("fix: found 2 issues"));
    assert_eq!(c.prompt.as_deref(), Some("test after completed"));
    let prompt = d.prompt.unwrap();
    assert!(
        prompt.starts_with("summary: [Hello from fake claude: fix: found 2 issues]"),
        "{prompt}"
    );
    cnp.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(cnp.wait_exit(Duration::from_secs(15)).success());
}

#[test]
fn a_cycle_in_the_manifests_is_refused_by_name_and_the_loaded_jobs_keep_running() {
    let env = Env::new(ConfigOpts::default());
    let file = env.manifest(
        "flow.yaml",
        "- { name: p, prompt: first }\n- { name: q, prompt: second, depends_on: [p] }\n",
    );
    let mut cnp = env.start();
    cnp.wait_log("cnp is running");
    // An edit that closes a cycle: refused, naming it; p and q stay as they were.
    std::fs::write(
        &file,
        "- { name: p, prompt: first, depends_on: [q] }\n- { name: q, prompt: second, depends_on: [p] }\n",
    )
    .unwrap();
    cnp.wait_log("would make a cycle: p → q → p");
    let p = env.job("p").unwrap();
    let depends: Option<String> = env
        .db()
        .query_row("SELECT depends_on FROM jobs WHERE name = 'p'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(depends, None, "p unchanged");
    let out = env.run_cli(&["status"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("cycle"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The running set still works: p's run starts q once.
    let out = env.run_cli(&["job", "execute", &p.id, "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cnp.wait_for("q ran", || {
        env.executions("q")
            .into_iter()
            .find(|e| e.status == "completed")
    });
    assert_eq!(env.executions("q").len(), 1);
    // `cnp check` refuses the cycle too.
    let out = env.run_cli(&["check", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("would make a cycle"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
