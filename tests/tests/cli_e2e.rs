//! End-to-end tests of the `cnp` client commands: the real `cnp serve` (fake Claude CLI, API on
//! 127.0.0.1:0) and the built `cnp` binary run with `-c <config>` only, so it finds the API's
//! address and token by itself, as a user's would.

mod support;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cnp::model::{ExecutionStatus, Job, JobExecution, JobStatus, Prompt, Schedule};
use serde_json::Value;

use support::*;

// ---------------------------------------------------------------------------------------------
// Helpers

/// Runs `cnp -c <config> <args>` (no API overrides from the test's environment), up to a minute.
fn cli(env: &Env, args: &[&str]) -> Output {
    let mut c = Command::new(cnp_bin());
    c.arg("-c").arg(&env.config).args(args);
    run(c, env)
}

/// Runs `cnp <args>` without `-c`.
fn cli_raw(env: &Env, args: &[&str]) -> Output {
    let mut c = Command::new(cnp_bin());
    c.args(args);
    run(c, env)
}

fn run(mut c: Command, env: &Env) -> Output {
    for k in [
        "CNP_CONFIG",
        "CNP_API_URL",
        "CNP_API_TOKEN",
        "CNP_API_BIND",
        "RUST_LOG",
    ] {
        c.env_remove(k);
    }
    c.current_dir(env.root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn cnp");
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t1 = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = so.read_to_end(&mut b);
        b
    });
    let t2 = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = se.read_to_end(&mut b);
        b
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "cnp {:?} did not finish within 60 s",
                c.get_args().collect::<Vec<_>>()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: t1.join().unwrap(),
        stderr: t2.join().unwrap(),
    }
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exit code")
}

/// Asserts success; returns stdout.
#[track_caller]
fn ok(o: Output) -> String {
    assert_eq!(
        code(&o),
        0,
        "expected success\nstdout:\n{}\nstderr:\n{}",
        out(&o),
        err(&o)
    );
    out(&o)
}

/// Asserts exit code `want`; returns stderr.
#[track_caller]
fn fails(o: Output, want: i32) -> String {
    assert_eq!(
        code(&o),
        want,
        "expected exit {want}\nstdout:\n{}\nstderr:\n{}",
        out(&o),
        err(&o)
    );
    err(&o)
}

fn json<T: serde::de::DeserializeOwned>(text: &str) -> T {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not the expected JSON ({e}):\n{text}"))
}

fn yaml<T: serde::de::DeserializeOwned>(text: &str) -> T {
    serde_yaml_ng::from_str(text).unwrap_or_else(|e| panic!("not the expected YAML ({e}):\n{text}"))
}

/// A service with the API on a free port; waits until it listens.
fn start(env: &Env) -> Cnp {
    env.enable_api();
    let mut cnp = env.start();
    cnp.wait_api(env);
    cnp
}

fn history(env: &Env, job: &str, last: usize) -> Vec<JobExecution> {
    json(&ok(cli(
        env,
        &[
            "job",
            "history",
            job,
            "--last",
            &last.to_string(),
            "--format",
            "json",
        ],
    )))
}

/// The execution id in `execution <id> of …`.
fn execution_id(stdout: &str) -> String {
    stdout
        .split_whitespace()
        .skip_while(|w| *w != "execution")
        .nth(1)
        .unwrap_or_else(|| panic!("no execution id in {stdout:?}"))
        .to_owned()
}

fn execution(env: &Env, id: &str) -> JobExecution {
    json(&ok(cli(env, &["job", "execution", id, "--format", "json"])))
}

fn wait_status(env: &Env, id: &str, want: ExecutionStatus) -> JobExecution {
    wait_until(&format!("execution {id} {}", want.as_str()), || {
        let e = execution(env, id);
        (e.status == want).then_some(e)
    })
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn job_and_prompt_crud_with_every_format() {
    let env = Env::new(ConfigOpts::default());
    let _cnp = start(&env);

    // Prompts: from a file (id = its stem, title = its heading), list, show, update.
    let file = write(
        &env.root(),
        "daily.md",
        "# Daily report\n\nSummarise yesterday's commits.\n",
    );
    let created = ok(cli(
        &env,
        &["prompt", "create", "--file", &file, "--tag", "reports"],
    ));
    assert!(created.contains("created prompt `daily`"), "{created}");
    let prompts: Vec<Prompt> = json(&ok(cli(&env, &["prompt", "list", "--format", "json"])));
    assert_eq!(prompts.len(), 1);
    assert_eq!(prompts[0].title, "Daily report");
    assert_eq!(prompts[0].tags, ["reports"]);
    let p: Prompt = yaml(&ok(cli(
        &env,
        &["prompt", "show", "daily", "--format", "yaml"],
    )));
    assert_eq!(
        p.content,
        "# Daily report\n\nSummarise yesterday's commits.\n"
    );
    ok(cli(
        &env,
        &["prompt", "update", "daily", "--title", "Daily"],
    ));
    let shown = ok(cli(&env, &["prompt", "show", "daily"]));
    assert!(
        shown.contains("Daily") && shown.contains("Summarise yesterday's commits."),
        "{shown}"
    );
    let listed = ok(cli(&env, &["prompt", "list"]));
    assert!(
        listed.contains("daily") && listed.contains("TITLE"),
        "{listed}"
    );

    // The spec's example, plus a zone, priority and tags.
    let job: Job = json(&ok(cli(
        &env,
        &[
            "job",
            "create",
            "Daily Report",
            "--prompt-id",
            "daily",
            "--cron",
            "0 9 * * *",
            "--timezone",
            "Asia/Taipei",
            "--priority",
            "7",
            "--tag",
            "reports",
            "--tag",
            "daily",
            "--timeout",
            "30m",
            "--format",
            "json",
        ],
    )));
    assert_eq!(job.name, "Daily Report");
    assert_eq!(job.prompt_id.as_deref(), Some("daily"));
    assert_eq!(job.priority, 7);
    assert_eq!(job.tags, ["reports", "daily"]);
    assert_eq!(job.execution_options.timeout_seconds, Some(1800));
    assert_eq!(
        job.schedule,
        Schedule::Cron {
            expression: "0 9 * * *".into(),
            timezone: Some("Asia/Taipei".into()),
            misfire: None
        }
    );
    assert!(job.next_run_time.is_some());
    let human = ok(cli(
        &env,
        &[
            "job",
            "create",
            "Hourly",
            "--prompt",
            "check the build",
            "--every",
            "1h",
        ],
    ));
    assert!(
        human.contains("created job `Hourly`") && human.contains("next run"),
        "{human}"
    );

    // Listing and showing, in every format.
    let jobs: Vec<Job> = json(&ok(cli(&env, &["job", "list", "--format", "json"])));
    assert_eq!(jobs.len(), 2);
    let jobs: Vec<Job> = yaml(&ok(cli(&env, &["job", "list", "--format", "yaml"])));
    assert_eq!(jobs.len(), 2);
    let table = ok(cli(&env, &["job", "list"]));
    assert!(
        table.contains("Daily Report") && table.contains("Hourly") && table.contains("NEXT RUN"),
        "{table}"
    );
    let tagged: Vec<Job> = json(&ok(cli(
        &env,
        &["job", "list", "--tag", "reports", "--format", "json"],
    )));
    assert_eq!(tagged.len(), 1);
    let paused: Vec<Job> = json(&ok(cli(
        &env,
        &["job", "list", "--status", "paused", "--format", "json"],
    )));
    assert!(paused.is_empty());
    let by_id: Job = json(&ok(cli(
        &env,
        &["job", "show", &job.id, "--format", "json"],
    )));
    assert_eq!(by_id.id, job.id);
    let by_name: Job = yaml(&ok(cli(
        &env,
        &["job", "show", "Daily Report", "--format", "yaml"],
    )));
    assert_eq!(by_name.id, job.id);
    let detail = ok(cli(&env, &["job", "show", "Daily Report"]));
    assert!(
        detail.contains("Asia/Taipei") && detail.contains("stored prompt `daily`"),
        "{detail}"
    );

    // Update: given fields change, the rest stays.
    let updated: Job = json(&ok(cli(
        &env,
        &[
            "job",
            "update",
            "Daily Report",
            "--cron",
            "30 8 * * 1-5",
            "--format",
            "json",
        ],
    )));
    assert_eq!(updated.id, job.id);
    assert_eq!(
        updated.schedule,
        Schedule::Cron {
            expression: "30 8 * * 1-5".into(),
            timezone: Some("Asia/Taipei".into()),
            misfire: None
        }
    );
    assert_eq!(updated.priority, 7);
    assert_eq!(updated.tags, ["reports", "daily"]);
    assert_eq!(updated.prompt_id.as_deref(), Some("daily"));
    assert_eq!(updated.execution_options.timeout_seconds, Some(1800));
    let renamed: Job = json(&ok(cli(
        &env,
        &[
            "job",
            "update",
            &job.id,
            "--name",
            "Morning Report",
            "--priority",
            "3",
            "--format",
            "json",
        ],
    )));
    assert_eq!(
        (renamed.name.as_str(), renamed.priority),
        ("Morning Report", 3)
    );

    // Pause and resume.
    assert!(ok(cli(&env, &["job", "pause", "Morning Report"])).contains("paused"));
    let j: Job = json(&ok(cli(
        &env,
        &["job", "show", &job.id, "--format", "json"],
    )));
    assert_eq!(j.status, JobStatus::Paused);
    assert!(ok(cli(&env, &["job", "resume", "Morning Report"])).contains("active"));
    let j: Job = json(&ok(cli(
        &env,
        &["job", "show", &job.id, "--format", "json"],
    )));
    assert_eq!(j.status, JobStatus::Active);

    // Errors: exit 1 with the API's message (and field).
    let e = fails(
        cli(
            &env,
            &[
                "job",
                "create",
                "bad",
                "--prompt",
                "x",
                "--cron",
                "61 * * * *",
            ],
        ),
        1,
    );
    assert!(
        e.contains("error:") && e.contains("schedule.expression"),
        "{e}"
    );
    let e = fails(cli(&env, &["job", "create", "Hourly", "--prompt", "x"]), 1);
    assert!(e.contains("already exists"), "{e}");
    let e = fails(cli(&env, &["job", "show", "no-such-job"]), 1);
    assert!(e.contains("not found"), "{e}");
    // Usage errors are clap's: exit 2.
    fails(
        cli(
            &env,
            &["job", "create", "x", "--cron", "* * * * *", "--every", "1m"],
        ),
        2,
    );
    fails(cli(&env, &["job", "create", "x", "--priority", "11"]), 2);
    // A wrong token.
    let e = fails(cli(&env, &["--token", "not-the-token", "job", "list"]), 1);
    assert!(e.contains("rejected"), "{e}");

    // Delete: refuses without a terminal to confirm on, unless --yes.
    let e = fails(cli(&env, &["job", "delete", "Hourly"]), 1);
    assert!(e.contains("--yes"), "{e}");
    ok(cli(&env, &["job", "show", "Hourly"]));
    assert!(ok(cli(&env, &["job", "delete", "Hourly", "--yes"])).contains("deleted job `Hourly`"));
    fails(cli(&env, &["job", "show", "Hourly"]), 1);
    ok(cli(&env, &["job", "delete", &job.id, "-y"]));
    ok(cli(&env, &["prompt", "delete", "daily", "--yes"]));
    let prompts: Vec<Prompt> = json(&ok(cli(&env, &["prompt", "list", "--format", "json"])));
    assert!(prompts.is_empty());
    let inline = ok(cli(
        &env,
        &["prompt", "create", "--id", "p2", "--content", "Say hi"],
    ));
    assert!(inline.contains("p2"), "{inline}");

    // A job from a YAML file (the manifest format).
    let f = write(
        &env.root(),
        "one.yaml",
        "name: From file\nprompt: hi\nschedule: { type: interval, every: 15m }\ntags: [f]\n",
    );
    let j: Job = json(&ok(cli(
        &env,
        &[
            "job",
            "create",
            "--file",
            &f,
            "--priority",
            "9",
            "--format",
            "json",
        ],
    )));
    assert_eq!((j.name.as_str(), j.priority), ("From file", 9));
    assert_eq!(
        j.schedule,
        Schedule::Interval {
            every_seconds: 900,
            start_at: None,
            misfire: None
        }
    );

    // Status and plugins.
    let status = ok(cli(&env, &["status"]));
    for want in ["Jobs", "Runs", "Cooldown", "none", "Manifests", "Plugins"] {
        assert!(status.contains(want), "{want}: {status}");
    }
    let status: Value = json(&ok(cli(&env, &["status", "--format", "json"])));
    assert_eq!(status["engine"]["jobs"], 1, "{status}");
    let _: Value = yaml(&ok(cli(&env, &["status", "--format", "yaml"])));
    let plugins = ok(cli(&env, &["plugin", "list"]));
    assert!(plugins.contains("no plugins"), "{plugins}");
    let plugins: Value = json(&ok(cli(&env, &["plugin", "list", "--format", "json"])));
    assert!(plugins["items"].is_array(), "{plugins}");
}

#[test]
fn execute_wait_reports_the_outcome_and_history_and_logs_follow() {
    let env = Env::new(ConfigOpts::default());
    let _cnp = start(&env);
    ok(cli(
        &env,
        &["job", "create", "greet", "--prompt", "hello there"],
    ));
    ok(cli(
        &env,
        &[
            "job",
            "create",
            "broken",
            "--prompt",
            "x",
            "--env",
            "FAKE_CLAUDE_SCENARIO=error",
        ],
    ));

    // --wait: exit 0 on success, with the result on stdout and the progress on stderr.
    let o = cli(&env, &["job", "execute", "greet", "--wait"]);
    let stdout = ok(Output {
        status: o.status,
        stdout: o.stdout.clone(),
        stderr: o.stderr.clone(),
    });
    assert!(
        stdout.contains("Hello from fake claude: hello there"),
        "{stdout}"
    );
    let stderr = err(&o);
    assert!(stderr.contains("completed"), "{stderr}");
    // ... and non-zero when the run fails.
    let e = fails(cli(&env, &["job", "execute", "broken", "--wait"]), 1);
    assert!(e.contains("failed"), "{e}");
    assert!(e.contains("500"), "{e}");

    // History, newest first, --last N.
    for _ in 0..2 {
        ok(cli(&env, &["job", "execute", "greet", "--wait", "--quiet"]));
    }
    let all = history(&env, "greet", 10);
    assert_eq!(all.len(), 3);
    assert!(all.iter().all(|e| e.status == ExecutionStatus::Completed));
    assert!(all[0].queued_at >= all[2].queued_at, "newest first");
    let last2 = history(&env, "greet", 2);
    assert_eq!(last2.len(), 2);
    assert_eq!(last2[0].id, all[0].id);
    let h: Vec<JobExecution> = yaml(&ok(cli(
        &env,
        &[
            "job", "history", "broken", "--last", "5", "--format", "yaml",
        ],
    )));
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].status, ExecutionStatus::Failed);
    let table = ok(cli(&env, &["job", "history", "broken", "--last", "5"]));
    assert!(
        table.contains("failed") && table.contains("EXECUTION"),
        "{table}"
    );
    let monitor = ok(cli(&env, &["job", "monitor", "greet"]));
    assert!(
        monitor.contains("Recent runs") && monitor.contains(&all[0].id),
        "{monitor}"
    );

    // Logs of a finished run: readable, or raw.
    let logs = ok(cli(&env, &["job", "logs", &all[0].id]));
    assert!(logs.contains("Hello from fake claude"), "{logs}");
    let raw = ok(cli(&env, &["job", "logs", &all[0].id, "--raw"]));
    assert!(raw.contains("\"type\":\"result\""), "{raw}");

    // A delayed run.
    let o = ok(cli(&env, &["job", "execute", "greet", "--delay", "1h"]));
    let delayed = execution_id(&o);
    assert!(o.contains("starts in"), "{o}");
    let e = execution(&env, &delayed);
    assert_eq!(e.status, ExecutionStatus::Queued);
    // Cancel it.
    assert!(ok(cli(&env, &["job", "cancel", &delayed])).contains("cancelled"));
    wait_status(&env, &delayed, ExecutionStatus::Cancelled);
    let e = fails(cli(&env, &["job", "cancel", &delayed]), 1);
    assert!(e.contains("already cancelled"), "{e}");

    // A slow run: `logs --follow` streams until it ends; `execute --wait` ends non-zero when
    // the run is cancelled.
    ok(cli(
        &env,
        &[
            "job",
            "create",
            "slow",
            "--prompt",
            "take your time",
            "--env",
            "FAKE_CLAUDE_SLEEP_MS=1500",
        ],
    ));
    let id = execution_id(&ok(cli(&env, &["job", "execute", "slow"])));
    let followed = ok(cli(&env, &["job", "logs", &id, "--follow"]));
    assert!(followed.contains("session started"), "{followed}");
    assert!(
        followed.contains("Hello from fake claude: take your time"),
        "{followed}"
    );
    assert_eq!(execution(&env, &id).status, ExecutionStatus::Completed);

    ok(cli(
        &env,
        &[
            "job",
            "update",
            "slow",
            "--env",
            "FAKE_CLAUDE_SLEEP_MS=30000",
        ],
    ));
    let waiter = {
        let mut c = Command::new(cnp_bin());
        c.arg("-c")
            .arg(&env.config)
            .args(["job", "execute", "slow", "--wait"])
            .env_remove("CNP_API_URL")
            .env_remove("CNP_API_TOKEN")
            .current_dir(env.root())
            .stdin(Stdio::null());
        std::thread::spawn(move || c.output().expect("run cnp"))
    };
    let running = wait_until("a running execution of `slow`", || {
        history(&env, "slow", 1)
            .into_iter()
            .find(|e| e.status == ExecutionStatus::Running)
    });
    ok(cli(&env, &["job", "cancel", &running.id]));
    let o = waiter.join().unwrap();
    assert_eq!(code(&o), 1, "stderr:\n{}", err(&o));
    assert!(err(&o).contains("cancelled"), "{}", err(&o));
}

#[test]
fn batch_commands_use_the_manifest_parser_and_selectors() {
    let env = Env::new(ConfigOpts::default());
    let _cnp = start(&env);
    let good = write(
        &env.root(),
        "jobs.yaml",
        r#"
- name: report-a
  prompt: "report a"
  tags: [daily-tasks]
- name: report-b
  prompt: "report b"
  schedule: { type: cron, expression: "0 6 * * *" }
  tags: [daily-tasks, b]
- name: other
  prompt: "other"
"#,
    );
    let o = ok(cli(&env, &["job", "batch-create", "--file", &good]));
    assert!(o.contains("created 3 job(s)"), "{o}");

    // A broken file: nothing is created, the error names file:line.
    let broken = write(
        &env.root(),
        "broken.yaml",
        "- name: fine\n  prompt: ok\n- name: wrong\n  prompt: x\n  priority: 42\n",
    );
    let e = fails(cli(&env, &["job", "batch-create", "--file", &broken]), 1);
    assert!(e.contains("broken.yaml:5"), "{e}");
    assert!(e.contains("priority"), "{e}");
    let typo = write(
        &env.root(),
        "typo.yaml",
        "name: t\nprompt: x\nexecution:\n  timeout_secs: 5\n",
    );
    let e = fails(cli(&env, &["job", "batch-create", "--file", &typo]), 1);
    assert!(
        e.contains("typo.yaml:4") && e.contains("timeout_secs"),
        "{e}"
    );
    let jobs: Vec<Job> = json(&ok(cli(&env, &["job", "list", "--format", "json"])));
    assert_eq!(jobs.len(), 3, "nothing of the broken files was created");
    // Creating the same jobs again: each fails with the API's reason, exit 1.
    let e = fails(cli(&env, &["job", "batch-create", "--file", &good]), 1);
    assert!(e.contains("already exists"), "{e}");

    // batch-execute by tag runs exactly the tagged jobs.
    let o = ok(cli(&env, &["job", "batch-execute", "--tag", "daily-tasks"]));
    assert!(o.contains("executed 2 job(s)"), "{o}");
    for name in ["report-a", "report-b"] {
        wait_until(&format!("a completed run of {name}"), || {
            history(&env, name, 5)
                .iter()
                .any(|e| e.status == ExecutionStatus::Completed)
                .then_some(())
        });
    }
    assert!(history(&env, "other", 5).is_empty());
    let e = fails(cli(&env, &["job", "batch-execute"]), 1);
    assert!(e.contains("--tag"), "{e}");

    // batch-pause / batch-resume by tag and status.
    let o = ok(cli(&env, &["job", "batch-pause", "--tag", "daily-tasks"]));
    assert!(o.contains("paused 2 job(s)"), "{o}");
    let paused: Vec<Job> = json(&ok(cli(
        &env,
        &["job", "list", "--status", "paused", "--format", "json"],
    )));
    let mut names: Vec<_> = paused.iter().map(|j| j.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["report-a", "report-b"]);
    let o = ok(cli(&env, &["job", "batch-resume", "--status", "paused"]));
    assert!(o.contains("resumed 2 job(s)"), "{o}");

    // `--status running`: only jobs with a run in progress.
    ok(cli(
        &env,
        &[
            "job",
            "update",
            "other",
            "--env",
            "FAKE_CLAUDE_SLEEP_MS=30000",
        ],
    ));
    let id = execution_id(&ok(cli(&env, &["job", "execute", "other"])));
    wait_status(&env, &id, ExecutionStatus::Running);
    let o = ok(cli(
        &env,
        &["job", "batch-pause", "--status", "running", "--dry-run"],
    ));
    assert!(o.contains("would pause `other`"), "{o}");
    let o = ok(cli(&env, &["job", "batch-pause", "--status", "running"]));
    assert!(o.contains("paused 1 job(s)"), "{o}");
    let active: Vec<Job> = json(&ok(cli(
        &env,
        &["job", "list", "--status", "active", "--format", "json"],
    )));
    let mut names: Vec<_> = active.iter().map(|j| j.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["report-a", "report-b"]);
    ok(cli(&env, &["job", "cancel", &id]));
}

#[test]
fn not_running_is_exit_3_and_completions_print() {
    let env = Env::new(ConfigOpts::default());
    env.enable_api();
    // The address a stopped service left behind: nothing listens there now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(env.api_address_file(), format!("127.0.0.1:{port}\n")).unwrap();
    for args in [
        &["status"][..],
        &["job", "list"],
        &["job", "execute", "x", "--wait"],
        &["prompt", "list"],
    ] {
        let e = fails(cli(&env, args), 3);
        assert_eq!(
            e.trim(),
            format!(
                "error: cnp is not running at http://127.0.0.1:{port} (start it with `cnp serve`)"
            ),
            "{args:?}"
        );
    }
    // --api-url wins over what the files say.
    let e = fails(
        cli(&env, &["--api-url", &format!("127.0.0.1:{port}"), "status"]),
        3,
    );
    assert!(e.contains(&format!("http://127.0.0.1:{port}")), "{e}");

    for shell in ["bash", "zsh", "fish"] {
        let script = ok(cli_raw(&env, &["completions", shell]));
        assert!(
            script.contains("batch-create") && script.contains("cnp"),
            "{shell}: {script}"
        );
    }
    fails(cli_raw(&env, &["completions", "tcsh"]), 2);
    // The service's own commands still work.
    assert!(ok(cli_raw(&env, &["default-config"])).contains("[job_engine]"));
}

#[test]
fn monitor_follow_streams_status_changes_and_output_live() {
    use std::io::BufRead;
    use std::sync::{Arc, Mutex};

    let env = Env::new(ConfigOpts::default());
    let _cnp = start(&env);
    ok(cli(
        &env,
        &[
            "job",
            "create",
            "watched",
            "--prompt",
            "live please",
            "--env",
            "FAKE_CLAUDE_SLEEP_MS=500",
        ],
    ));
    let mut child = Command::new(cnp_bin())
        .arg("-c")
        .arg(&env.config)
        .args(["job", "monitor", "watched", "--follow"])
        .env_remove("CNP_API_URL")
        .env_remove("CNP_API_TOKEN")
        .current_dir(env.root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cnp job monitor");
    let seen = Arc::new(Mutex::new(String::new()));
    let reader = {
        let seen = seen.clone();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let mut s = seen.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        })
    };
    let text = || seen.lock().unwrap().clone();
    wait_until("the monitor to be watching", || {
        text().contains("watching job `watched`").then_some(())
    });
    let id = execution_id(&ok(cli(&env, &["job", "execute", "watched"])));
    wait_until("the run's end in the monitor", || {
        text()
            .contains(&format!("execution {id} completed"))
            .then_some(())
    });
    let t = text();
    assert!(t.contains(&format!("execution {id} running")), "{t}");
    assert!(t.contains("Hello from fake claude: live please"), "{t}");
    // Ctrl-C ends it cleanly.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    reader.join().unwrap();
    assert_eq!(status.code(), Some(0), "{}", text());
}

#[test]
fn execute_wait_follows_the_run_through_its_retry_attempts() {
    let env = Env::new(ConfigOpts::default());
    let _cnp = start(&env);
    let state = env.root().join("fake-state");
    // Fails twice, then succeeds; retried 1 s apart (the manifest's duration form of the delay).
    env.manifest(
        "flaky.yaml",
        &format!(
            "name: flaky\nprompt: \"try hard\"\nschedule: {{ type: manual }}\n\
             retry: {{ max_attempts: 3, strategy: fixed, delay: 1s }}\n\
             execution:\n  environment: {{ FAKE_CLAUDE_SCENARIOS: \"error,error,ok\", \
             FAKE_CLAUDE_STATE_DIR: \"{}\" }}\n",
            state.display()
        ),
    );
    wait_until("the flaky job", || env.job("flaky"));

    let o = cli(&env, &["job", "execute", "flaky", "--wait"]);
    let stderr = err(&o);
    assert_eq!(code(&o), 0, "the final attempt succeeded:\n{stderr}");
    assert!(
        out(&o).contains("Hello from fake claude: try hard"),
        "{}",
        out(&o)
    );
    for n in 1..=3 {
        assert!(
            stderr.contains(&format!("attempt {n}/3")),
            "attempt {n}/3 in:\n{stderr}"
        );
    }
    assert!(
        stderr.contains("attempt 2/3 in "),
        "the wait for attempt 2 is announced:\n{stderr}"
    );
    let attempts = history(&env, "flaky", 10);
    assert_eq!(attempts.len(), 3, "three attempts: {attempts:?}");
    let statuses: Vec<ExecutionStatus> = attempts.iter().rev().map(|e| e.status).collect();
    assert_eq!(
        statuses,
        [
            ExecutionStatus::Failed,
            ExecutionStatus::Failed,
            ExecutionStatus::Completed
        ]
    );

    // The same policy from flags; a run whose attempts all fail ends with the last one's code.
    ok(cli(
        &env,
        &[
            "job",
            "create",
            "hopeless",
            "--prompt",
            "x",
            "--env",
            "FAKE_CLAUDE_SCENARIO=error",
            "--max-attempts",
            "2",
            "--retry-strategy",
            "fixed",
            "--retry-delay",
            "1s",
            "--on-interrupt",
            "fail",
        ],
    ));
    let job: serde_json::Value = json(&ok(cli(
        &env,
        &["job", "show", "hopeless", "--format", "json"],
    )));
    assert_eq!(job["retry_config"]["max_attempts"], 2, "{job}");
    assert_eq!(job["retry_config"]["strategy"], "fixed", "{job}");
    assert_eq!(job["retry_config"]["initial_interval"], 1, "{job}");
    assert_eq!(job["retry_config"]["on_interrupt"], "fail", "{job}");
    let e = fails(cli(&env, &["job", "execute", "hopeless", "--wait"]), 1);
    assert!(
        e.contains("attempt 1/2") && e.contains("attempt 2/2"),
        "{e}"
    );
    assert_eq!(history(&env, "hopeless", 10).len(), 2);
}
