//! End-to-end notifications through `cnp serve`: a real SMTP server (aiosmtpd, from PyPI —
//! `scripts/test.sh` installs it) and a real HTTP receiver on loopback, both named channels in
//! `claude-pilot.toml` with the webhook URL given as `${VAR}`. Checks the received mail and
//! webhook, and the delivery records through the API and `cnp job notifications`.

mod support;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use support::*;

/// aiosmtpd on 127.0.0.1, storing each received message in a maildir.
struct SmtpServer {
    child: Child,
    port: u16,
    maildir: PathBuf,
}

impl SmtpServer {
    fn start(root: &Path) -> SmtpServer {
        let check = Command::new("python3")
            .args(["-c", "import aiosmtpd"])
            .status();
        assert!(
            check.is_ok_and(|s| s.success()),
            "these tests need aiosmtpd (a real SMTP server): run scripts/test.sh, which installs \
             it, or `python3 -m pip install aiosmtpd`"
        );
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let maildir = root.join("maildir");
        let child = Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start aiosmtpd");
        let server = SmtpServer {
            child,
            port,
            maildir,
        };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "aiosmtpd did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// Raw messages received so far.
    fn messages(&self) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(self.maildir.join("new")) else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A mail's header value (first occurrence, unfolded).
fn header(mail: &str, name: &str) -> Option<String> {
    let head = mail
        .split("\n\n")
        .next()
        .unwrap_or_default()
        .replace("\r\n", "\n");
    let unfolded = head.replace("\n ", " ").replace("\n\t", " ");
    unfolded.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
    })
}

/// A single-part mail's body, decoded (7bit, quoted-printable or base64).
fn body(mail: &str) -> String {
    let mail = mail.replace("\r\n", "\n");
    let (_, raw) = mail.split_once("\n\n").unwrap_or(("", &mail));
    let enc = header(&mail, "Content-Transfer-Encoding")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let bytes: Vec<u8> = match enc.as_str() {
        "quoted-printable" => {
            let s = raw.replace("=\n", "");
            let b = s.as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'=' && i + 2 < b.len() {
                    if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                }
                out.push(b[i]);
                i += 1;
            }
            out
        }
        "base64" => {
            let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            let mut out = Vec::new();
            let (mut acc, mut bits) = (0u32, 0);
            for c in raw.bytes() {
                let Some(v) = alphabet.iter().position(|a| *a == c) else {
                    continue;
                };
                acc = (acc << 6) | v as u32;
                bits += 6;
                if bits >= 8 {
                    bits -= 8;
                    out.push((acc >> bits) as u8);
                }
            }
            out
        }
        _ => raw.as_bytes().to_vec(),
    };
    String::from_utf8_lossy(&bytes).into_owned()
}

fn append_config(env: &Env, text: &str) {
    let mut c = std::fs::read_to_string(&env.config).unwrap();
    c.push_str(text);
    std::fs::write(&env.config, c).unwrap();
}

#[test]
fn a_failed_run_is_mailed_and_posted_and_the_deliveries_are_visible() {
    let env = Env::new(ConfigOpts::default());
    let smtp = SmtpServer::start(&env.root());
    let hook = HttpReceiver::start(200);
    append_config(
        &env,
        &format!(
            r#"
[notifications]
default_channels = ["oncall", "ops-chat"]
template_directory = "{}"

[notifications.channels.oncall]
type = "email"
smtp_host = "127.0.0.1"
smtp_port = {}
security = "plain"
from = "cnp <cnp@example.com>"
to = ["oncall@example.com", "lead@example.com"]

[notifications.channels.ops-chat]
type = "webhook"
url = "${{CNP_TEST_HOOK_URL}}"
format = "slack"
"#,
            env.root().join("templates").display(),
            smtp.port
        ),
    );
    // Without the variable the config is refused, naming the key and the variable.
    let out = env.run_cli(&["check"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("notifications.channels.ops-chat.url") && err.contains("CNP_TEST_HOOK_URL"),
        "{err}"
    );

    let (_, at) = whole_second_in(2);
    env.manifest(
        "nightly.yaml",
        &format!(
            "name: nightly-report\nprompt: \"fails\"\nschedule: {{ type: once, at: \"{at}\" }}\n\
             execution:\n  environment: {{ FAKE_CLAUDE_SCENARIO: error }}\n"
        ),
    );
    let mut cnp = env.start_with(&[("CNP_TEST_HOOK_URL", &hook.url("/hooks/T0/B0/secret"))]);
    let failed = cnp.wait_for("the failed run", || {
        env.executions("nightly-report")
            .into_iter()
            .find(|e| e.status == "failed")
    });
    let error = failed.error.clone().expect("the run's error");

    // The mail: sender, both recipients, subject and body naming the job and the error.
    let mail = cnp.wait_for("the mail", || smtp.messages().into_iter().next());
    assert_eq!(
        header(&mail, "From").as_deref(),
        Some("cnp <cnp@example.com>"),
        "{mail}"
    );
    let to = header(&mail, "To").unwrap_or_default();
    assert!(
        to.contains("oncall@example.com") && to.contains("lead@example.com"),
        "{mail}"
    );
    let subject = header(&mail, "Subject").unwrap_or_default();
    assert!(
        subject.contains("nightly-report") && subject.contains("failed"),
        "{subject}"
    );
    let text = body(&mail);
    assert!(text.contains("nightly-report"), "{text}");
    let first_words: String = error.chars().take(30).collect();
    assert!(
        text.contains(&first_words),
        "the error `{error}` in:\n{text}"
    );
    assert!(
        text.contains(&format!("cnp job execution {}", failed.id)),
        "{text}"
    );

    // The webhook: Slack-style JSON.
    let req = cnp.wait_for("the webhook", || hook.requests().into_iter().next());
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/hooks/T0/B0/secret");
    let posted: Value = serde_json::from_slice(&req.body).unwrap();
    let posted = posted["text"].as_str().unwrap().to_owned();
    assert!(
        posted.contains("nightly-report") && posted.contains(&first_words),
        "{posted}"
    );

    // The records, through the API …
    let (base, token) = cnp.wait_api(&env);
    let page: Value = cnp.wait_for("two sent deliveries", || {
        let v: Value = reqwest::blocking_get(
            &format!("{base}/api/executions/{}/notifications", failed.id),
            &token,
        )?;
        let items = v["items"].as_array()?;
        (items.len() == 2 && items.iter().all(|d| d["status"] == "sent")).then_some(v)
    });
    let items = page["items"].as_array().unwrap();
    let channels: Vec<&str> = items
        .iter()
        .map(|d| d["channel"].as_str().unwrap())
        .collect();
    assert!(
        channels.contains(&"oncall") && channels.contains(&"ops-chat"),
        "{page}"
    );
    assert!(items.iter().all(|d| d["event"] == "failed"), "{page}");
    let mail_rec = items.iter().find(|d| d["channel"] == "oncall").unwrap();
    assert!(
        mail_rec["detail"].as_str().unwrap().starts_with("SMTP 250"),
        "{page}"
    );
    let recent: Value =
        reqwest::blocking_get(&format!("{base}/api/notifications?limit=10"), &token)
            .expect("recent deliveries");
    assert_eq!(recent["items"].as_array().unwrap().len(), 2, "{recent}");
    // … and the CLI.
    let out = env.run_cli(&["job", "notifications", &failed.id]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("oncall") && stdout.contains("ops-chat") && stdout.contains("sent"),
        "{stdout}"
    );
    let out = env.run_cli(&["job", "execution", &failed.id]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Notifications") && stdout.contains("oncall"),
        "{stdout}"
    );
    // The secret part of the webhook URL never shows.
    assert!(!cnp.log().contains("B0/secret"), "{}", cnp.log());
    assert!(!stdout.contains("B0/secret"), "{stdout}");
}

#[test]
fn a_dead_smtp_server_is_a_recorded_failure_and_runs_go_on() {
    let env = Env::new(ConfigOpts::default());
    let dead_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    append_config(
        &env,
        &format!(
            r#"
[notifications]
default_channels = ["oncall"]
on_start = true

[notifications.channels.oncall]
type = "email"
smtp_host = "127.0.0.1"
smtp_port = {dead_port}
security = "plain"
to = ["oncall@example.com"]
"#
        ),
    );
    env.manifest(
        "tick.yaml",
        "name: tick\nprompt: \"works\"\nschedule: { type: interval, every_seconds: 1 }\n",
    );
    let mut cnp = env.start();
    let runs = cnp.wait_for("three completed runs", || {
        let r: Vec<ExecRow> = env
            .executions("tick")
            .into_iter()
            .filter(|e| e.status == "completed")
            .collect();
        (r.len() >= 3).then_some(r)
    });
    for e in &runs {
        let late = e.started_at.unwrap() - e.scheduled_for.unwrap();
        assert!(late < 500, "run started {late} ms late: {e:?}");
    }
    let detail: String = cnp.wait_for("a failed delivery", || {
        env.db()
            .query_row(
                "SELECT detail FROM notification_deliveries WHERE status = 'failed' LIMIT 1",
                [],
                |r| r.get(0),
            )
            .ok()
    });
    assert!(detail.contains("SMTP"), "{detail}");
    cnp.assert_running();
}

/// Blocking GET with the bearer token; `None` on any failure.
mod reqwest {
    pub fn blocking_get(url: &str, token: &str) -> Option<serde_json::Value> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async {
            let r = ::reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .ok()?;
            r.json().await.ok()
        })
    }
}
