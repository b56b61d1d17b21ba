//! `session: continue_job` end to end: the real `cnp` and the fake CLI keeping sessions like the
//! real one (`FAKE_CLAUDE_SESSIONS_DIR`): the second run resumes the first's session, and a
//! session the CLI no longer knows falls back to a new one within the same run.

mod support;

use support::*;

#[test]
fn a_job_continues_its_own_session_and_falls_back_when_the_cli_forgot_it() {
    let env = Env::new(ConfigOpts::default());
    env.manifest(
        "pair.yaml",
        "name: pair\nprompt: keep going\nexecution: { session: continue_job }\n",
    );
    let sessions = env.root().join("sessions");
    let sessions_env = sessions.to_str().unwrap().to_owned();
    let mut cnp = env.start_with(&[("FAKE_CLAUDE_SESSIONS_DIR", &sessions_env)]);
    cnp.wait_log("cnp is running");
    let execute = || {
        let out = env.run_cli(&["job", "execute", "pair", "--wait"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let resumed = |r: &Record| {
        r.argv
            .iter()
            .position(|a| a == "--resume" || a == "-r")
            .and_then(|i| r.argv.get(i + 1).cloned())
    };
    execute();
    execute();
    let runs = env.executions("pair");
    assert_eq!(runs.len(), 2);
    let first_session = runs[0].session_id.clone().expect("a session");
    let calls: Vec<Record> = env
        .records()
        .into_iter()
        .filter(|r| !r.raw["scenario"].is_null())
        .collect();
    assert_eq!(calls.len(), 2);
    assert_eq!(
        resumed(&calls[0]),
        None,
        "the first run starts a conversation"
    );
    assert_eq!(resumed(&calls[1]).as_deref(), Some(first_session.as_str()));
    assert_eq!(runs[1].session_id.as_deref(), Some(first_session.as_str()));
    let log: Vec<String> = env.logs(&runs[1].id).into_iter().map(|(_, l)| l).collect();
    assert!(
        log.iter().any(|l| l.contains("resuming session")),
        "{log:?}"
    );

    // The CLI forgets every session: the next run tries, fails to resume, and runs fresh.
    std::fs::remove_dir_all(&sessions).unwrap();
    execute();
    let runs = env.executions("pair");
    assert_eq!(runs.len(), 3, "still one execution per run");
    let third = &runs[2];
    assert_eq!(third.status, "completed");
    assert_ne!(third.session_id.as_deref(), Some(first_session.as_str()));
    let calls: Vec<Record> = env
        .records()
        .into_iter()
        .filter(|r| r.execution_id() == Some(third.id.as_str()) && !r.raw["scenario"].is_null())
        .collect();
    assert_eq!(calls.len(), 2, "one refused resume, one fresh run");
    assert_eq!(calls[0].raw["scenario"], "no-conversation");
    assert_eq!(resumed(&calls[1]), None);
    let log: Vec<String> = env.logs(&third.id).into_iter().map(|(_, l)| l).collect();
    assert!(
        log.iter().any(|l| l.contains("does not know session")),
        "{log:?}"
    );
}
