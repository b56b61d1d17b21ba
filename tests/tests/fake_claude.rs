//! The fake `claude` behaves like the real CLI: its output parses with
//! `cnp::executor::output::StreamParser` and classifies as the scenario says; argument errors,
//! scenario sequencing, recording, signals and the resource-test knobs work.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{Timelike, Utc};
use cnp::executor::output::{classify, parse_usage_limit, ExitSummary, StreamParser};
use cnp::model::Outcome;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

const PROMPT: &str = "Summarise the repository in one sentence, please, and be brief about it";

fn fake() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fake-claude"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("FAKE_CLAUDE_") {
            c.env_remove(k);
        }
    }
    c.stdin(Stdio::null());
    c
}

fn stream_args() -> [&'static str; 5] {
    ["-p", PROMPT, "--output-format", "stream-json", "--verbose"]
}

struct Run {
    code: Option<i32>,
    signal: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn exit(&self) -> ExitSummary {
        ExitSummary {
            code: self.code,
            signal: self.signal,
            ..Default::default()
        }
    }

    fn parser(&self) -> StreamParser {
        let mut p = StreamParser::default();
        for l in self.stdout.lines() {
            p.feed_line(l);
        }
        p
    }

    fn outcome(&self) -> Outcome {
        classify(&self.exit(), &self.parser(), &self.stderr, Utc::now())
    }

    /// Every stdout line is a JSON object.
    fn events(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

fn run(mut cmd: Command) -> Run {
    let out = cmd.output().expect("run fake-claude");
    Run {
        code: out.status.code(),
        signal: out.status.signal(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn run_scenario(scenario: &str, envs: &[(&str, &str)], extra_args: &[&str]) -> Run {
    let mut c = fake();
    c.args(stream_args())
        .args(extra_args)
        .env("FAKE_CLAUDE_SCENARIO", scenario);
    for (k, v) in envs {
        c.env(k, v);
    }
    run(c)
}

fn is_error(o: &Outcome, want_subtype: &str, want_status: Option<u16>) -> bool {
    matches!(o, Outcome::Error { subtype, api_status, .. }
        if subtype.as_deref() == Some(want_subtype) && *api_status == want_status)
}

fn samples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/claude-cli-samples")
}

#[test]
fn ok_stream_is_shaped_like_the_real_one() {
    let r = run_scenario("ok", &[], &[]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.stderr, "");
    let events = r.events();
    assert_eq!(events.len(), 3);
    assert_eq!(events[0]["type"], "system");
    assert_eq!(events[0]["subtype"], "init");
    assert_eq!(events[0]["claude_code_version"], "2.1.330");
    assert_eq!(events[1]["type"], "assistant");
    assert_eq!(events[2]["type"], "result");
    assert_eq!(events[2]["subtype"], "success");
    assert_eq!(events[2]["is_error"], false);
    let sid = events[0]["session_id"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(sid).is_ok());
    assert!(events.iter().all(|e| e["session_id"] == sid));

    let p = r.parser();
    assert_eq!(r.outcome(), Outcome::Success);
    assert_eq!(p.session_id(), Some(sid));
    let res = p.result().unwrap();
    let head: String = PROMPT.chars().take(50).collect();
    assert_eq!(
        res.text.as_deref(),
        Some(format!("Hello from fake claude: {head}").as_str())
    );
    assert_eq!(res.num_turns, Some(1));
    assert!(res.cost_usd.unwrap() > 0.0);
    assert!(res.usage.is_some());
    assert_eq!(p.last_assistant_text(), res.text.as_deref());
}

#[test]
fn scenarios_classify_as_intended() {
    type Check = fn(&Outcome) -> bool;
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<&'a str>, i32, Check);
    let cases: Vec<Case> = vec![
        ("error", vec![], vec![], 1, |o| {
            is_error(o, "api_error", Some(500))
        }),
        ("rate-limit-429", vec![], vec![], 1, |o| {
            is_error(o, "rate_limit", Some(429))
        }),
        ("overloaded-529", vec![], vec![], 1, |o| {
            is_error(o, "overloaded", Some(529))
        }),
        ("not-logged-in", vec![], vec![], 1, |o| {
            *o == Outcome::AuthError {
                message: "Not logged in · Please run /login".into(),
            }
        }),
        ("invalid-key", vec![], vec![], 1, |o| {
            *o == Outcome::AuthError {
                message: "Invalid API key · Fix external API key".into(),
            }
        }),
        ("max-turns", vec![], vec!["--max-turns", "3"], 1, |o| {
            *o == Outcome::Error {
                subtype: Some("error_max_turns".into()),
                api_status: None,
                message: "Reached maximum number of turns (3)".into(),
            }
        }),
        ("crash", vec![], vec![], 1, |o| {
            is_error(o, "no_result", None)
        }),
        (
            "no-conversation",
            vec![],
            vec!["--resume", "0b5b8d7e-1111-4222-8333-944445555666"],
            1,
            |o| {
                *o == Outcome::InvalidArguments {
                message: "No conversation found with session ID: 0b5b8d7e-1111-4222-8333-944445555666".into(),
            }
            },
        ),
        ("usage-limit-text", vec![], vec![], 1, |o| {
            matches!(o, Outcome::UsageLimit { resets_at: Some(t), message }
                if t.hour() == 7 && t.minute() == 1 && message == "You've hit your session limit · resets 7am (UTC)")
        }),
        (
            "usage-limit-text",
            vec![("FAKE_CLAUDE_LIMIT_TEXT", "You're out of extra usage")],
            vec![],
            1,
            |o| {
                *o == Outcome::UsageLimit {
                    resets_at: None,
                    message: "You're out of extra usage".into(),
                }
            },
        ),
    ];
    for (scenario, envs, args, code, check) in cases {
        let r = run_scenario(scenario, &envs, &args);
        assert_eq!(
            r.code,
            Some(code),
            "{scenario}: exit code; stderr {}",
            r.stderr
        );
        let o = r.outcome();
        assert!(check(&o), "{scenario} {envs:?}: got {o:?}");
        if scenario != "no-conversation" && scenario != "crash" {
            // Everything on stdout is JSON; API errors print nothing on stderr.
            r.events();
            assert_eq!(r.stderr, "", "{scenario}");
            assert!(r.parser().result().is_some(), "{scenario} has a result");
        }
    }
    // Resets relative to this test's clock (never a fixed instant: the calendar moves on).
    let now = Utc::now().timestamp();
    let reset = (now + 3 * 3600) / 3600 * 3600; // on the hour, about 3 h away
    let r = run_scenario(
        "usage-limit",
        &[("FAKE_CLAUDE_RESET_EPOCH", &reset.to_string())],
        &[],
    );
    assert_eq!(r.code, Some(1), "usage-limit: {}", r.stderr);
    let o = r.outcome();
    assert!(
        matches!(&o, Outcome::UsageLimit { resets_at: Some(t), message }
            if t.timestamp() == reset && message.starts_with("You've hit your 5-hour limit · resets ")),
        "{o:?}"
    );
    let epoch = now + 2 * 86_400 + 475;
    let text = format!("Claude AI usage limit reached|{epoch}");
    let r = run_scenario(
        "usage-limit-text",
        &[("FAKE_CLAUDE_LIMIT_TEXT", &text)],
        &[],
    );
    assert_eq!(r.code, Some(1), "usage-limit-text: {}", r.stderr);
    let o = r.outcome();
    assert!(
        matches!(&o, Outcome::UsageLimit { resets_at: Some(t), .. } if t.timestamp() == epoch),
        "{o:?}"
    );
}

#[test]
fn usage_limit_structured_and_text_agree() {
    // The reset text the fake writes resolves (within the cut seconds) to the structured instant,
    // in UTC and in another zone.
    // Built from this test's clock: one reset more than a day away (written with a date), one
    // within the day (a time only); both with seconds the text form cuts.
    let now = Utc::now().timestamp();
    for (reset, tz) in [
        (now + 2 * 86_400 + 475, "UTC"),
        (now + 2 * 86_400 + 475, "America/New_York"),
        (now + 5 * 3600 + 475, "UTC"),
        (now + 5 * 3600 + 475, "America/New_York"),
    ] {
        let r = run_scenario(
            "usage-limit",
            &[("FAKE_CLAUDE_RESET_EPOCH", &reset.to_string()), ("TZ", tz)],
            &[],
        );
        let p = r.parser();
        assert_eq!(p.rate_limit_resets_at().map(|t| t.timestamp()), Some(reset));
        let res = p.result().unwrap();
        assert_eq!(res.api_error.as_deref(), Some("usage_limit_reached"));
        let text = res.text.clone().unwrap();
        assert!(text.ends_with(&format!("({tz})")), "{text}");
        let parsed = parse_usage_limit(&text, Utc::now()).unwrap();
        let t = parsed.resets_at.unwrap().timestamp();
        assert!((reset..=reset + 60).contains(&t), "{text}: {t} vs {reset}");
    }
    // Default reset: now + 1 h, rounded to the hour.
    let before = Utc::now();
    let r = run_scenario("usage-limit", &[], &[]);
    let Outcome::UsageLimit {
        resets_at: Some(t), ..
    } = r.outcome()
    else {
        panic!("{}", r.stdout)
    };
    assert_eq!((t.minute(), t.second()), (0, 0));
    assert!(
        t > before + chrono::Duration::minutes(29) && t < before + chrono::Duration::minutes(91)
    );
}

#[test]
fn samples_replay_verbatim_and_classify() {
    let dir = samples_dir();
    let index = std::fs::read_to_string(dir.join("INDEX")).expect("samples beside the repo");
    let mut n = 0;
    for line in index.lines() {
        let mut parts = line.split_whitespace();
        let (Some(name), Some(exit)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Some(code) = exit
            .strip_prefix("exit=")
            .and_then(|c| c.parse::<i32>().ok())
        else {
            continue;
        };
        let r = run_scenario(&format!("sample:{name}"), &[], &[]);
        assert_eq!(r.code, Some(code), "{name}");
        assert_eq!(
            r.stdout,
            std::fs::read_to_string(dir.join(name)).unwrap(),
            "{name}"
        );
        let o = r.outcome();
        let want_kind = match name {
            "ok.stream-json" => "success",
            "session-limit-2.1.197.stream-json" | "five-hour-limit.json" => "usage_limit",
            "api-key-429.stream-json" | "max-turns.stream-json" => "error",
            "invalid-key-401.stream-json" | "not-logged-in.stream-json" => "auth_error",
            other => panic!("no expectation for sample {other}"),
        };
        let kind = serde_json::to_value(&o).unwrap()["kind"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(kind, want_kind, "{name}: {o:?}");
        n += 1;
    }
    assert!(n >= 7);
    // An absolute path, and FAKE_CLAUDE_EXIT.
    let abs = dir.join("ok.stream-json");
    let r = run_scenario(
        &format!("sample:{}", abs.display()),
        &[("FAKE_CLAUDE_EXIT", "1")],
        &[],
    );
    assert_eq!(r.code, Some(1));
    assert!(
        matches!(r.outcome(), Outcome::Error { .. }),
        "{:?}",
        r.outcome()
    );
    // A missing sample.
    let r = run_scenario("sample:does-not-exist.json", &[], &[]);
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains("cannot read sample"));
}

#[test]
fn output_formats() {
    // json: one result object.
    let mut c = fake();
    c.args(["-p", "hi", "--output-format", "json"]);
    let r = run(c);
    assert_eq!(r.code, Some(0));
    let v: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["type"], "result");
    assert_eq!(v["result"], "Hello from fake claude: hi");
    assert_eq!(r.stdout.lines().count(), 1);
    assert_eq!(r.outcome(), Outcome::Success);
    // json --verbose: an array of every message.
    let mut c = fake();
    c.args(["-p", "hi", "--output-format", "json", "--verbose"]);
    let r = run(c);
    let v: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 3);
    assert_eq!(arr[0]["subtype"], "init");
    assert_eq!(arr[2]["type"], "result");
    assert_eq!(r.outcome(), Outcome::Success);
    // text: the result only.
    let mut c = fake();
    c.args(["-p", "hi"]);
    let r = run(c);
    assert_eq!(r.stdout, "Hello from fake claude: hi\n");
    // text, error: the API error text goes to stdout, exit 1, and still classifies.
    let mut c = fake();
    c.args(["-p", "hi"])
        .env("FAKE_CLAUDE_SCENARIO", "usage-limit-text");
    let r = run(c);
    assert_eq!(r.code, Some(1));
    assert_eq!(
        r.stdout,
        "You've hit your session limit · resets 7am (UTC)\n"
    );
    assert!(matches!(
        r.outcome(),
        Outcome::UsageLimit {
            resets_at: Some(_),
            ..
        }
    ));
    // text, max-turns: the errors.
    let mut c = fake();
    c.args(["-p", "hi", "--max-turns", "2"])
        .env("FAKE_CLAUDE_SCENARIO", "max-turns");
    let r = run(c);
    assert_eq!(r.stdout, "Reached maximum number of turns (2)\n");
    // FAKE_CLAUDE_RESULT, FAKE_CLAUDE_STDERR, FAKE_CLAUDE_EXIT.
    let mut c = fake();
    c.args(stream_args())
        .env("FAKE_CLAUDE_RESULT", "custom answer")
        .env("FAKE_CLAUDE_STDERR", "a warning")
        .env("FAKE_CLAUDE_EXIT", "3");
    let r = run(c);
    assert_eq!(r.code, Some(3));
    assert_eq!(r.stderr, "a warning\n");
    assert_eq!(
        r.parser().result().unwrap().text.as_deref(),
        Some("custom answer")
    );
    assert!(matches!(r.outcome(), Outcome::Error { .. }));
}

#[test]
fn flags_and_prompt_sources() {
    // Every flag the executor passes is accepted; variadic options after the prompt.
    let mut c = fake();
    c.args([
        "-p",
        "the prompt",
        "--output-format",
        "stream-json",
        "--verbose",
        "--model",
        "claude-test-1",
        "--fallback-model",
        "claude-test-0",
        "--max-turns",
        "5",
        "--max-budget-usd",
        "1.5",
        "--append-system-prompt",
        "-be brief",
        "--permission-mode",
        "acceptEdits",
        "--mcp-config",
        "/tmp/mcp.json",
        "--dangerously-skip-permissions",
        "--session-id",
        "0b5b8d7e-1111-4222-8333-944445555666",
        "--add-dir",
        "/a",
        "/b",
        "--allowedTools",
        "Read",
        "Edit",
        "Bash(git:*)",
        "--disallowedTools",
        "WebFetch",
    ]);
    let r = run(c);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let events = r.events();
    assert_eq!(events[0]["model"], "claude-test-1");
    assert_eq!(events[0]["permissionMode"], "acceptEdits");
    assert_eq!(
        r.parser().session_id(),
        Some("0b5b8d7e-1111-4222-8333-944445555666")
    );
    assert_eq!(
        r.parser().result().unwrap().text.as_deref(),
        Some("Hello from fake claude: the prompt")
    );
    // --resume / --continue / --opt=value / --.
    let mut c = fake();
    c.args([
        "-p",
        "--output-format=stream-json",
        "--verbose",
        "--continue",
    ])
    .args(["--resume", "abc-session", "--", "-dash prompt"]);
    let r = run(c);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.parser().session_id(), Some("abc-session"));
    assert_eq!(
        r.parser().result().unwrap().text.as_deref(),
        Some("Hello from fake claude: -dash prompt")
    );
    // Prompt on stdin.
    let mut c = fake();
    c.args(["-p", "--output-format", "json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from stdin\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["result"], "Hello from fake claude: from stdin");
    // --version.
    let mut c = fake();
    c.arg("--version");
    let r = run(c);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (Some(0), "2.1.330 (Claude Code)\n")
    );
}

#[test]
fn argument_errors_like_the_real_cli() {
    let cases: &[(&[&str], &str)] = &[
        (&["-p", "hi", "--foo"], "error: unknown option '--foo'"),
        (&["-p", "hi", "-x"], "error: unknown option '-x'"),
        (
            &["-p", "hi", "--output-format", "stream-json"],
            "Error: When using --print, --output-format=stream-json requires --verbose",
        ),
        (
            &["-p", "--output-format", "stream-json", "--verbose"],
            "Error: Input must be provided either through stdin or as a prompt argument when using --print",
        ),
        // Variadic options swallow a prompt that follows them.
        (
            &["-p", "--allowedTools", "Read", "the prompt"],
            "Error: Input must be provided either through stdin or as a prompt argument when using --print",
        ),
        (&["-p", "hi", "--model"], "error: option '--model <model>' argument missing"),
        (
            &["-p", "hi", "--output-format", "xml"],
            "error: option '--output-format <format>' argument 'xml' is invalid. Allowed choices are text, json, stream-json.",
        ),
        (
            &["-p", "hi", "--permission-mode", "yolo"],
            "error: option '--permission-mode <mode>' argument 'yolo' is invalid. Allowed choices are acceptEdits, auto, bypassPermissions, default, dontAsk, manual, plan.",
        ),
        (&["-p", "hi", "--session-id", "nope"], "Error: Invalid session ID. Must be a valid UUID."),
    ];
    for (args, message) in cases {
        let mut c = fake();
        c.args(*args);
        let r = run(c);
        assert_eq!(r.code, Some(1), "{args:?}");
        assert_eq!(r.stdout, "", "{args:?}");
        assert_eq!(r.stderr, format!("{message}\n"), "{args:?}");
        assert_eq!(
            r.outcome(),
            Outcome::InvalidArguments {
                message: (*message).to_owned()
            },
            "{args:?}"
        );
    }
}

#[test]
fn scenarios_sequence_across_invocations() {
    let state = tempfile::tempdir().unwrap();
    let seq = |i: usize| {
        let mut c = fake();
        c.args(stream_args())
            .env("FAKE_CLAUDE_SCENARIOS", "error, rate-limit-429 ,ok")
            .env("FAKE_CLAUDE_STATE_DIR", state.path());
        let r = run(c);
        (i, r.code, r.outcome())
    };
    let got: Vec<_> = (0..5).map(seq).collect();
    assert!(is_error(&got[0].2, "api_error", Some(500)), "{got:?}");
    assert!(is_error(&got[1].2, "rate_limit", Some(429)), "{got:?}");
    for g in &got[2..] {
        assert_eq!(g.2, Outcome::Success, "{got:?}");
    }
    // Argument errors and --version take no entry.
    let state = tempfile::tempdir().unwrap();
    for args in [
        &["--version"][..],
        &["-p", "x", "--bogus"][..],
        &["-p", "x"][..],
    ] {
        let mut c = fake();
        c.args(args)
            .env("FAKE_CLAUDE_SCENARIOS", "error,ok")
            .env("FAKE_CLAUDE_STATE_DIR", state.path());
        run(c);
    }
    let counter = std::fs::read_to_string(state.path().join("counter")).unwrap();
    assert_eq!(counter.trim(), "1");

    // Concurrent invocations each take a distinct entry.
    let state = tempfile::tempdir().unwrap();
    let list = [vec!["error"; 10], vec!["ok"]].concat().join(",");
    let children: Vec<Child> = (0..24)
        .map(|_| {
            let mut c = fake();
            c.args(["-p", "x"])
                .env("FAKE_CLAUDE_SCENARIOS", &list)
                .env("FAKE_CLAUDE_STATE_DIR", state.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            c.spawn().unwrap()
        })
        .collect();
    let codes: Vec<i32> = children
        .into_iter()
        .map(|mut c| c.wait().unwrap().code().unwrap())
        .collect();
    assert_eq!(codes.iter().filter(|&&c| c == 1).count(), 10, "{codes:?}");
    assert_eq!(codes.iter().filter(|&&c| c == 0).count(), 14, "{codes:?}");
    let counter = std::fs::read_to_string(state.path().join("counter")).unwrap();
    assert_eq!(counter.trim(), "24");
}

#[test]
fn record_appends_one_line_per_invocation() {
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("rec.jsonl");
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut children = Vec::new();
    for i in 0..20 {
        let mut c = fake();
        c.args(["-p", "--output-format", "json"])
            .current_dir(dir.path())
            .env("FAKE_CLAUDE_RECORD", &rec)
            .env("TZ", "UTC")
            .env("CNP_EXECUTION_ID", format!("exec-{i}"))
            .env("JOB_NAME", "nightly")
            .env("UNRELATED_VAR", "x")
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        let mut child = c.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("prompt {i}").as_bytes())
            .unwrap();
        children.push((i, child));
    }
    let mut pids = std::collections::HashMap::new();
    for (i, mut child) in children {
        pids.insert(child.id(), i);
        assert!(child.wait().unwrap().success());
    }
    // Argument errors are recorded too.
    let mut c = fake();
    c.args(["--nope"]).env("FAKE_CLAUDE_RECORD", &rec);
    run(c);
    let after = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;

    let text = std::fs::read_to_string(&rec).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 21);
    let canon_dir = dir.path().canonicalize().unwrap();
    for v in &lines[..20] {
        let pid = v["pid"].as_u64().unwrap() as u32;
        let i = pids[&pid];
        assert_eq!(v["stdin"], format!("prompt {i}"));
        assert_eq!(v["env"]["CNP_EXECUTION_ID"], format!("exec-{i}"));
        assert_eq!(v["env"]["JOB_NAME"], "nightly");
        assert_eq!(v["env"]["TZ"], "UTC");
        assert!(v["env"].get("UNRELATED_VAR").is_none());
        assert!(v["env"].get("FAKE_CLAUDE_RECORD").is_none());
        assert!(v["env"].get("PATH").is_none());
        assert_eq!(
            v["argv"].as_array().unwrap()[1..],
            [Value::from("-p"), "--output-format".into(), "json".into()]
        );
        assert_eq!(
            Path::new(v["cwd"].as_str().unwrap())
                .canonicalize()
                .unwrap(),
            canon_dir
        );
        assert_eq!(v["scenario"], "ok");
        let t = v["started_unix_ns"].as_u64().unwrap();
        assert!(before <= t && t <= after, "{before} <= {t} <= {after}");
    }
    assert_eq!(lines[20]["scenario"], Value::Null);
    assert_eq!(lines[20]["stdin"], Value::Null);
    assert_eq!(lines[20]["argv"][1], "--nope");
}

/// Spawns the fake in its own process group with piped stdout, and waits for the init line.
fn spawn_streaming(envs: &[(&str, &str)]) -> (Child, BufReader<std::process::ChildStdout>, String) {
    let mut c = fake();
    c.args(stream_args())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for (k, v) in envs {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut init = String::new();
    out.read_line(&mut init).unwrap();
    assert!(init.contains("\"init\""), "{init}");
    (child, out, init)
}

fn rest(mut out: BufReader<std::process::ChildStdout>) -> String {
    let mut s = String::new();
    out.read_to_string(&mut s).unwrap();
    s
}

#[test]
fn sigterm_exits_143_without_a_result() {
    let (mut child, out, init) = spawn_streaming(&[("FAKE_CLAUDE_SLEEP_MS", "20000")]);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert_eq!((status.code(), status.signal()), (Some(143), None));
    let stdout = init + &rest(out);
    let mut p = StreamParser::default();
    stdout.lines().for_each(|l| p.feed_line(l));
    assert!(p.result().is_none());
    let exit = ExitSummary {
        code: Some(143),
        ..Default::default()
    };
    assert!(is_error(
        &classify(&exit, &p, "", Utc::now()),
        "killed",
        None
    ));
    let cancelled = ExitSummary {
        cancelled: true,
        ..exit
    };
    assert_eq!(classify(&cancelled, &p, "", Utc::now()), Outcome::Cancelled);
}

#[test]
fn sigint_prints_error_during_execution_and_exits_0() {
    let (mut child, out, init) = spawn_streaming(&[("FAKE_CLAUDE_SLEEP_MS", "20000")]);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let stdout = init + &rest(out);
    let mut p = StreamParser::default();
    stdout.lines().for_each(|l| p.feed_line(l));
    let r = p.result().expect("a result after SIGINT");
    assert_eq!(r.subtype.as_deref(), Some("error_during_execution"));
    assert!(r.is_error);
    let o = classify(&ExitSummary::exited(0), &p, "", Utc::now());
    assert!(is_error(&o, "error_during_execution", None), "{o:?}");
}

#[test]
fn ignore_sigterm_needs_sigkill() {
    let (mut child, _out, _) = spawn_streaming(&[
        ("FAKE_CLAUDE_SLEEP_MS", "20000"),
        ("FAKE_CLAUDE_IGNORE_SIGTERM", "1"),
    ]);
    let pid = Pid::from_raw(child.id() as i32);
    kill(pid, Signal::SIGTERM).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "still running after SIGTERM"
    );
    kill(pid, Signal::SIGKILL).unwrap();
    assert_eq!(child.wait().unwrap().signal(), Some(9));
}

fn alive(pid: i32) -> bool {
    // Gone, or a zombie nobody reaped yet (reparented), counts as dead.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .chars()
                .next();
            state != Some('Z') && state != Some('X')
        }
        Err(_) => false,
    }
}

#[test]
fn spawn_child_puts_a_grandchild_in_the_group() {
    let (mut child, out, _) = spawn_streaming(&[("FAKE_CLAUDE_SPAWN_CHILD", "1")]);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(child.wait().unwrap().success());
    let _ = rest(out);
    let gpid: i32 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("grandchild pid "))
        .expect(&stderr)
        .trim()
        .parse()
        .unwrap();
    let pgid = child.id() as i32;
    // Whatever happens below, do not leave the grandchild behind.
    struct KillGroup(i32);
    impl Drop for KillGroup {
        fn drop(&mut self) {
            let _ = kill(Pid::from_raw(-self.0), Signal::SIGKILL);
        }
    }
    let _guard = KillGroup(pgid);
    // The grandchild outlives the fake, in the fake's process group.
    assert!(alive(gpid));
    let stat = std::fs::read_to_string(format!("/proc/{gpid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        fields[2].parse::<i32>().unwrap(),
        pgid,
        "grandchild's process group"
    );
    // Killing the group kills it.
    kill(Pid::from_raw(-pgid), Signal::SIGKILL).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(gpid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(gpid));
}

#[test]
fn sleep_streams_init_first() {
    let t0 = Instant::now();
    let (mut child, out, _) = spawn_streaming(&[("FAKE_CLAUDE_SLEEP_MS", "400")]);
    let init_at = t0.elapsed();
    let rest = rest(out);
    let done_at = t0.elapsed();
    assert!(child.wait().unwrap().success());
    // The result comes a full sleep after the init line.
    assert!(
        done_at - init_at >= Duration::from_millis(300),
        "init after {init_at:?}, result after {done_at:?}"
    );
    assert!(
        done_at >= Duration::from_millis(400),
        "result after {done_at:?}"
    );
    assert!(rest.contains("\"result\""));
}

#[test]
fn runaway_output_is_streamed() {
    // stream-json: assistant events carrying exactly N bytes of text, then a normal result.
    let n: usize = 20 * 1024 * 1024 + 123;
    let mut c = fake();
    c.args(stream_args())
        .env("FAKE_CLAUDE_OUTPUT_BYTES", n.to_string())
        .stdout(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let mut p = StreamParser::default();
    let mut text_bytes = 0;
    let mut lines = 0;
    for line in out.lines() {
        let line = line.unwrap();
        lines += 1;
        let v: Value = serde_json::from_str(&line).unwrap();
        if v["type"] == "assistant" {
            text_bytes += v["message"]["content"][0]["text"]
                .as_str()
                .map_or(0, str::len);
        }
        p.feed_line(&line);
    }
    let status = child.wait().unwrap();
    let ok_text = p.result().unwrap().text.clone().unwrap();
    assert_eq!(text_bytes, n + ok_text.len());
    assert!(lines > n / 8192);
    assert_eq!(
        classify(
            &ExitSummary::exited(status.code().unwrap()),
            &p,
            "",
            Utc::now()
        ),
        Outcome::Success
    );
    // text: exactly N bytes of plain lines before the result.
    let mut c = fake();
    c.args(["-p", "x"])
        .env("FAKE_CLAUDE_OUTPUT_BYTES", "100000");
    let r = run(c);
    assert_eq!(
        r.stdout.len(),
        100_000 + "Hello from fake claude: x\n".len()
    );
}

#[test]
fn alloc_mb_touches_memory() {
    let (mut child, out, _) = spawn_streaming(&[
        ("FAKE_CLAUDE_ALLOC_MB", "64"),
        ("FAKE_CLAUDE_SLEEP_MS", "3000"),
    ]);
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut rss_kb = 0;
    while Instant::now() < deadline {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        rss_kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0);
        if rss_kb >= 64 * 1024 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(rss_kb >= 64 * 1024, "rss {rss_kb} kB");
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    drop(out);
}
