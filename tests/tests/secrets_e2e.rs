//! Secrets never leak: the real `cnp serve` with planted secrets — the API token, a webhook URL
//! with a secret path and query and an SMTP password (both `${VAR}`s from cnp's environment), and
//! a job environment value under a secret name that the CLI prints back — runs jobs, notifies,
//! fails a delivery; then everything cnp wrote is searched for the planted values: its log
//! output (debug level), every table of the database but the job definitions (which must keep
//! the environment to run the job), and the API's answers. The token file is 0600.

mod support;

use std::os::unix::fs::PermissionsExt;

use serde_json::{json, Value};
use support::api::Api;
use support::*;

const ENV_SECRET: &str = "planted-env-secret-8c1f27";
const HOOK_PATH_SECRET: &str = "s3cr3t-path-token-77aa";
const HOOK_QUERY_SECRET: &str = "s3cr3t-query-91bd";
const SMTP_PASSWORD: &str = "smtp-pa55-word-c0ffee";

#[test]
fn planted_secrets_appear_nowhere_cnp_writes() {
    let hook = HttpReceiver::start(200);
    let env = Env::new(ConfigOpts {
        log_level: "debug",
        ..ConfigOpts::default()
    });
    let dead_smtp = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut config = std::fs::read_to_string(&env.config).unwrap();
    config.push_str(&format!(
        r#"
[notifications]
default_channels = ["hook", "mail"]
on_success = true
on_failure = true

[notifications.channels.hook]
type = "webhook"
url = "${{CNP_TEST_HOOK_URL}}"

[notifications.channels.mail]
type = "email"
smtp_host = "127.0.0.1"
smtp_port = {dead_smtp}
security = "plain"
username = "cnp"
password = "${{CNP_TEST_SMTP_PASSWORD}}"
from = "cnp <cnp@example.com>"
to = ["ops@example.com"]
"#
    ));
    std::fs::write(&env.config, config).unwrap();
    let hook_url = hook.url(&format!(
        "/hooks/{HOOK_PATH_SECRET}?key={HOOK_QUERY_SECRET}"
    ));
    let mut cnp = env.start_with(&[
        ("CNP_TEST_HOOK_URL", &hook_url),
        ("CNP_TEST_SMTP_PASSWORD", SMTP_PASSWORD),
    ]);
    let (base, token) = cnp.wait_api(&env);
    let mode = std::fs::metadata(env.api_token_file())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the token file is private");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let api = Api::new(base, token.clone());
    let mut answers = String::new();
    rt.block_on(async {
        // A job whose CLI prints the secret it was given, and one that fails printing it.
        for (name, scenario) in [("leaky", "ok"), ("leaky-fail", "error")] {
            let (s, job) = api
                .post(
                    "/api/jobs",
                    json!({
                        "name": name,
                        "prompt": "use the service key carefully",
                        "execution": {"environment": {
                            "SERVICE_API_TOKEN": ENV_SECRET,
                            "FAKE_CLAUDE_RESULT_ENV": "SERVICE_API_TOKEN",
                            "FAKE_CLAUDE_SCENARIO": scenario,
                        }},
                    }),
                )
                .await;
            assert!(s.is_success(), "{job}");
            answers.push_str(&job.to_string());
            let (s, v) = api
                .post(&format!("/api/jobs/{name}/execute"), json!({}))
                .await;
            assert!(s.is_success(), "{v}");
        }
    });
    cnp.wait_for("both runs ended and their notifications tried", || {
        let done = ["leaky", "leaky-fail"].iter().all(|n| {
            env.executions(n)
                .iter()
                .any(|e| e.status == "completed" || e.status == "failed")
        });
        let deliveries: i64 = env
            .db()
            .query_row(
                "SELECT COUNT(*) FROM notification_deliveries WHERE status != 'rate_limited'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        (done && deliveries >= 4).then_some(())
    });
    // The webhook got its messages (at the secret URL: the secret was used, not only hidden).
    assert!(hook
        .requests()
        .iter()
        .any(|r| r.path.contains(HOOK_PATH_SECRET)));
    let ok_run = env.executions("leaky").pop().unwrap();
    assert!(
        ok_run
            .output
            .as_deref()
            .unwrap_or_default()
            .contains("<redacted>"),
        "the CLI's output had the secret, stored redacted: {ok_run:?}"
    );
    rt.block_on(async {
        for path in [
            "/api/jobs".to_owned(),
            "/api/jobs/leaky".to_owned(),
            "/api/jobs/leaky-fail".to_owned(),
            "/api/executions?limit=100".to_owned(),
            format!("/api/executions/{}", ok_run.id),
            format!("/api/executions/{}/logs", ok_run.id),
            format!("/api/executions/{}/notifications", ok_run.id),
            "/api/notifications".to_owned(),
            "/api/status".to_owned(),
            "/api/budget".to_owned(),
            "/metrics".to_owned(),
        ] {
            let (_, v): (_, Value) = api.get(&path).await;
            answers.push_str(&v.to_string());
        }
    });

    // Everything cnp wrote: the database (all but the job definitions), its log, the answers.
    let db = env.db();
    let mut dump = String::new();
    let tables: Vec<String> = db
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for t in &tables {
        let cols: Vec<String> = db
            .prepare(&format!("SELECT name FROM pragma_table_info('{t}')"))
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .filter(|c: &String| !(t == "jobs" && c == "execution_options"))
            .collect();
        let sql = format!(
            "SELECT {} FROM \"{t}\"",
            cols.iter()
                .map(|c| format!("quote(\"{c}\")"))
                .collect::<Vec<_>>()
                .join(" || '|' || ")
        );
        let mut stmt = db.prepare(&sql).unwrap();
        let rows = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
        for r in rows {
            dump.push_str(&r.unwrap());
            dump.push('\n');
        }
    }
    let log = cnp.log();
    for (what, text) in [
        ("database", &dump),
        ("log", &log),
        ("API answers", &answers),
    ] {
        for secret in [
            token.as_str(),
            ENV_SECRET,
            HOOK_PATH_SECRET,
            HOOK_QUERY_SECRET,
            SMTP_PASSWORD,
        ] {
            assert!(
                !text.contains(secret),
                "{secret} found in the {what}: …{}…",
                text.find(secret)
                    .map(|i| &text[i.saturating_sub(120)..(i + 60).min(text.len())])
                    .unwrap_or_default()
            );
        }
    }
    assert!(dump.contains("leaky"), "the dump has the runs");
    assert!(log.contains("run finished"), "the log is the debug log");
    cnp.assert_running();
}
