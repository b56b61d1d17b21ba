//! `type: system`: a desktop notification through `notify-send` (libnotify), where a desktop
//! session bus exists. Without one the delivery fails with the reason, and the service log says
//! so once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::Outcome;

static WARNED: AtomicBool = AtomicBool::new(false);

fn warn_once(reason: &str) {
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(target: "cnp::notify", "system notifications are not available: {reason} (this is said once; each such delivery is recorded as failed)");
    }
}

/// Why desktop notifications cannot be shown here, if they cannot.
pub fn unavailable() -> Option<String> {
    if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none_or(|v| v.is_empty()) {
        return Some(
            "no desktop session bus (DBUS_SESSION_BUS_ADDRESS is not set: cnp runs outside a \
             desktop session)"
                .into(),
        );
    }
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("notify-send").is_file()))
        .unwrap_or(false);
    if !found {
        return Some("`notify-send` is not installed (package libnotify-bin)".into());
    }
    None
}

pub async fn deliver(title: &str, body: &str, failure: bool) -> Outcome {
    if let Some(reason) = unavailable() {
        warn_once(&reason);
        return Outcome::failed(reason, 0);
    }
    let mut cmd = tokio::process::Command::new("notify-send");
    cmd.arg("--app-name=cnp")
        .arg(if failure {
            "--urgency=critical"
        } else {
            "--urgency=normal"
        })
        .arg(title)
        .arg(body)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(Duration::from_secs(10), cmd.output()).await {
        Err(_) => return Outcome::failed("notify-send did not finish within 10 s", 1),
        Ok(Err(e)) => return Outcome::failed(format!("cannot run notify-send: {e}"), 1),
        Ok(Ok(o)) => o,
    };
    if out.status.success() {
        Outcome::ok("shown", 1)
    } else {
        Outcome::failed(
            format!(
                "notify-send failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            1,
        )
    }
}
