//! cnp as a systemd service, on the real binary: `cnp service install --user` writes a unit that
//! `systemd-analyze verify` accepts (when systemd's tools are on the machine) and `uninstall`
//! removes; `cnp serve` speaks the sd_notify protocol (ready once its API listens, watchdog
//! pings, stopping) to a socket the test binds; under journald its log lines carry a syslog
//! priority and no timestamp of their own.

mod support;

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::{cnp_bin, ConfigOpts, Env};

#[test]
fn service_install_writes_a_unit_systemd_accepts_and_uninstall_removes_it() {
    let env = Env::new(ConfigOpts::default());
    let xdg = env.root().join("xdg");
    let cnp = |args: &[&str]| {
        let out = env
            .command()
            .env("XDG_CONFIG_HOME", &xdg)
            .arg("-c")
            .arg(&env.config)
            .args(args)
            .output()
            .expect("run cnp");
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (status, out) = cnp(&["service", "install", "--user"]);
    assert!(status.success(), "{out}");
    let unit = xdg.join("systemd/user/cnp.service");
    assert!(out.contains(&format!("wrote {}", unit.display())), "{out}");
    let text = std::fs::read_to_string(&unit).unwrap();
    let exe = std::fs::canonicalize(cnp_bin()).unwrap();
    assert!(
        text.contains(&format!(
            "ExecStart={} -c {} serve\n",
            exe.display(),
            env.config.display()
        )),
        "{text}"
    );
    assert!(text.contains("Type=notify\n"), "{text}");

    match std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
    {
        Ok(v) => {
            let said = String::from_utf8_lossy(&v.stderr);
            assert!(
                v.status.success() && said.trim().is_empty(),
                "systemd-analyze verify: {said}"
            );
        }
        Err(e) => eprintln!(
            "systemd-analyze not available ({e}): the unit's syntax is not checked by systemd here"
        ),
    }

    let (_, out) = cnp(&["service", "status", "--user"]);
    assert!(out.contains(&format!("unit: {}", unit.display())), "{out}");
    let (status, out) = cnp(&["service", "uninstall", "--user"]);
    assert!(status.success(), "{out}");
    assert!(!unit.exists());
    let (status, out) = cnp(&["service", "status", "--user"]);
    assert_eq!(status.code(), Some(3), "{out}");
    assert!(out.contains("not installed"), "{out}");
}

#[test]
fn serve_tells_systemd_it_is_ready_pings_the_watchdog_and_says_when_it_stops() {
    let env = Env::new(ConfigOpts::default());
    let path = env.root().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let path_s = path.display().to_string();
    let mut cnp = env.start_with(&[("NOTIFY_SOCKET", &path_s), ("WATCHDOG_USEC", "200000")]);
    let recv = || {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    // Ready only once the API listens: its address is published and it accepts a connection
    // the moment READY arrives (cnp's log, read by a thread here, may lag behind).
    let first = recv();
    assert!(first.contains("READY=1"), "{first}");
    let addr = std::fs::read_to_string(env.api_address_file()).unwrap_or_else(|e| {
        panic!(
            "READY before the API's address was written ({e})\n{}",
            cnp.log()
        )
    });
    std::net::TcpStream::connect(addr.trim()).unwrap_or_else(|e| {
        panic!(
            "READY before the API listened at {addr} ({e})\n{}",
            cnp.log()
        )
    });
    // Watchdog pings at half of WATCHDOG_USEC.
    let started = Instant::now();
    let mut pings = 0;
    while pings < 3 {
        if recv().contains("WATCHDOG=1") {
            pings += 1;
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    cnp.signal(Signal::SIGTERM);
    loop {
        let m = recv();
        if m.contains("STOPPING=1") {
            break;
        }
        assert!(m.contains("WATCHDOG=1"), "{m}");
    }
    assert!(cnp.wait_exit(Duration::from_secs(20)).success());
}

#[test]
fn under_journald_log_lines_carry_their_priority_and_no_timestamp() {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let env = Env::new(ConfigOpts::default());
    let (reader, writer) = std::io::pipe().unwrap();
    let st = std::fs::metadata(format!("/proc/self/fd/{}", reader.as_raw_fd())).unwrap();
    let mut c = env.command();
    c.arg("-c")
        .arg(&env.config)
        .arg("serve")
        .env("JOURNAL_STREAM", format!("{}:{}", st.dev(), st.ino()))
        .stdout(Stdio::null())
        .stderr(writer);
    let mut child = c.spawn().unwrap();
    drop(c);
    let mut lines = BufReader::new(reader).lines();
    let line = loop {
        let l = lines.next().expect("a log line").unwrap();
        if l.contains("admin API listening") {
            break l;
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.starts_with("<6>"), "{line}");
    assert!(
        !line[3..].trim_start().starts_with("20"),
        "a timestamp of cnp's own: {line}"
    );
}

#[test]
fn cnp_man_prints_the_manual_page() {
    let env = Env::new(ConfigOpts::default());
    let out = env.run_cli(&["man"]);
    assert!(out.status.success());
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.starts_with(".ie \\n(.g .ds Aq") || page.contains(".TH cnp 1"),
        "{page}"
    );
    for command in ["serve", "service", "status", "completions"] {
        assert!(page.contains(command), "{command} missing from the page");
    }
}

/// Every metric the Grafana dashboard in examples/ queries is one a running cnp exports.
#[tokio::test]
async fn the_grafana_dashboard_queries_only_metrics_cnp_exports() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/grafana/cnp-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut queried = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(i) = rest.find("cnp_") {
                let name: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[i + name.len()..];
                queried.insert(name);
            }
        }
    }
    assert!(queried.len() >= 15, "{queried:?}");

    let env = Env::new(ConfigOpts::default());
    let mut cnp = env.start();
    let (base, token) = cnp.wait_api(&env);
    let http = reqwest::Client::new();
    // A run, so the per-job series exist too.
    let r = http
        .post(format!("{base}/api/jobs"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"name": "metered", "prompt": "hello", "schedule": {"type": "manual"}}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let r = http
        .post(format!("{base}/api/jobs/metered/execute"))
        .bearer_auth(&token)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let text = loop {
        let text = http
            .get(format!("{base}/metrics"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains("cnp_cost_usd_total{") {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut exported = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let name = parts.next().unwrap().to_owned();
            if parts.next() == Some("histogram") {
                for suffix in ["_bucket", "_sum", "_count"] {
                    exported.insert(format!("{name}{suffix}"));
                }
            }
            exported.insert(name);
        }
    }
    let missing: Vec<&String> = queried.iter().filter(|m| !exported.contains(*m)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, not exported:\n{text}"
    );
    drop(cnp);
}

/// The CI example in examples/ci parses and runs `cnp job execute --wait` with the API's URL and
/// token from the environment, which the CLI reads.
#[test]
fn the_ci_example_runs_a_job_with_wait_against_the_api_from_its_secrets() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/ci/github-actions-review.yml");
    let doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let steps = doc["jobs"]["review"]["steps"].as_sequence().unwrap();
    let run = steps
        .iter()
        .find(|s| {
            s["run"]
                .as_str()
                .is_some_and(|r| r.contains("cnp job execute"))
        })
        .expect("a step that runs cnp job execute");
    assert!(run["run"].as_str().unwrap().contains("--wait"));
    for var in ["CNP_API_URL", "CNP_API_TOKEN"] {
        assert!(run["env"][var].as_str().is_some(), "{var} missing");
    }
    // The CLI takes both from the environment.
    let env = Env::new(ConfigOpts::default());
    let out = env
        .command()
        .env("CNP_API_URL", "http://127.0.0.1:9")
        .env("CNP_API_TOKEN", "t")
        .args(["job", "execute", "PR review", "--wait"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "nothing listens at port 9: {out:?}"
    );
}
