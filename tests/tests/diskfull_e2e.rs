//! A full disk under the database: the real `cnp serve` with its database on a small tmpfs that
//! is then filled up. Writes fail: the health endpoint says `degraded` (503) and why, the metric
//! `cnp_database_writes_failing` is 1, an API write answers 503 `storage_unavailable` having
//! changed nothing, a `storage_failing` notification reaches a webhook once, no run is recorded
//! started that was not, and no run is left `running`.
//! When space returns, cnp recovers by itself: health is `ok` again, the runs that waited start
//! and end, and new runs work. (Needs root for `mount -t tmpfs`, as the suite runs in CI.)

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::*;

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs for the database (needs root, as scripts/test.sh \
             runs in CI): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn fill(dir: &Path) -> PathBuf {
    let p = dir.join("filler");
    let mut f = std::fs::File::create(&p).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let small = vec![0u8; 512];
    while f.write_all(&small).is_ok() {}
    let _ = f.sync_all();
    p
}

fn get(base: &str, token: &str, path: &str) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let res = reqwest::Client::new()
            .get(format!("{base}{path}"))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET");
        let code = res.status().as_u16();
        (code, res.text().await.unwrap_or_default())
    })
}

#[test]
fn a_full_disk_degrades_health_loses_nothing_and_recovers_by_itself() {
    let env = Env::new(ConfigOpts::default());
    let hook = HttpReceiver::start(200);
    let fs = Tmpfs::mount(&env.root().join("dbfs"), "6m");
    let db = fs.0.join("cnp.db");
    let config = std::fs::read_to_string(&env.config).unwrap().replace(
        &format!("path = \"{}\"", env.db.display()),
        &format!("path = \"{}\"", db.display()),
    );
    assert!(config.contains(&db.display().to_string()));
    let config = format!(
        "{config}\n[notifications]\ndefault_channels = [\"hook\"]\non_failure = false\n\n\
         [notifications.channels.hook]\ntype = \"webhook\"\nurl = \"{}\"\n",
        hook.url("/hook")
    );
    std::fs::write(&env.config, config).unwrap();
    env.manifest(
        "chatty.yaml",
        "name: chatty\nprompt: talk\nexecution:\n  max_parallel: 4\n  \
         environment: { FAKE_CLAUDE_OUTPUT_BYTES: \"300000\", FAKE_CLAUDE_SLEEP_MS: \"300\" }\n",
    );
    let mut cnp = env.start();
    let (base, token) = cnp.wait_api(&env);
    let out = env.run_cli(&["job", "execute", "chatty", "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(get(&base, &token, "/api/jobs/health").0, 200);

    // The disk fills up.
    let filler = fill(&fs.0);
    let mut refused = 0;
    let health = cnp.wait_for("health degraded", || {
        let out = env.run_cli(&["job", "execute", "chatty"]);
        if !out.status.success() {
            refused += 1;
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("cannot be written"), "{err}");
        }
        let (code, body) = get(&base, &token, "/api/jobs/health");
        (code == 503).then_some(body)
    });
    let h: Value = serde_json::from_str(&health).unwrap();
    assert_eq!(h["status"], "degraded", "{h}");
    assert!(
        h["database"].as_str().unwrap().contains("writes fail"),
        "{h}"
    );
    let (_, metrics) = get(&base, &token, "/metrics");
    assert!(
        metrics.contains("cnp_database_writes_failing 1"),
        "{metrics}"
    );
    assert!(
        cnp.log().contains("database writes are failing"),
        "{}",
        cnp.log()
    );
    // And the people who run it are told, once (the delivery itself cannot be recorded).
    cnp.wait_for("storage_failing at the webhook", || {
        hook.requests()
            .iter()
            .any(|r| r.body_text().contains("storage_failing"))
            .then_some(())
    });
    cnp.assert_running();

    // Space returns: cnp recovers by itself.
    std::fs::remove_file(&filler).unwrap();
    cnp.wait_for("health ok again", || {
        (get(&base, &token, "/api/jobs/health").0 == 200).then_some(())
    });
    let out = env.run_cli(&["job", "execute", "chatty", "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every run recorded ends: none is left `running` or waiting.
    let runs = cnp.wait_for("every recorded run ended", || {
        let (_, body) = get(&base, &token, "/api/executions?limit=500");
        let v: Value = serde_json::from_str(&body).ok()?;
        let items = v["items"].as_array()?.clone();
        items
            .iter()
            .all(|e| {
                !matches!(
                    e["status"].as_str(),
                    Some("running" | "queued" | "deferred")
                )
            })
            .then_some(items)
    });
    for e in &runs {
        assert_eq!(e["status"], "completed", "{e}");
    }
    let told = hook
        .requests()
        .iter()
        .filter(|r| r.body_text().contains("storage_failing"))
        .count();
    assert_eq!(told, 1, "told once per episode");
    eprintln!(
        "disk full: {} API writes refused with 503, {} runs recorded, all completed after space returned",
        refused,
        runs.len()
    );
    cnp.assert_running();
}
