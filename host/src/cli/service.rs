//! `cnp service install|uninstall|status`: cnp as a systemd service (docs/operations.md).
//!
//! The unit is `Type=notify`: `cnp serve` tells systemd it is ready once its API listens, pings
//! the watchdog while its runtime is alive, and says when it stops (`service.rs`, sd_notify).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::Context;

use crate::config::Config;

/// The unit's name.
pub const UNIT: &str = "cnp.service";

#[derive(Debug, clap::Subcommand)]
pub enum ServiceCommand {
    /// Write the systemd unit for `cnp serve` with this config, and reload systemd.
    Install {
        #[command(flatten)]
        scope: Scope,
        /// Also enable and start it now.
        #[arg(long)]
        now: bool,
    },
    /// Stop and disable the unit, and remove it.
    Uninstall {
        #[command(flatten)]
        scope: Scope,
    },
    /// Where the unit is, and what systemd says of it.
    Status {
        #[command(flatten)]
        scope: Scope,
    },
}

/// `--user` (the default: a unit of the calling user's systemd) or `--system`.
#[derive(Debug, Clone, Copy, clap::Args)]
#[group(multiple = false)]
pub struct Scope {
    /// The user's systemd (`~/.config/systemd/user/cnp.service`; the default).
    #[arg(long)]
    user: bool,
    /// The system's (`/etc/systemd/system/cnp.service`; as root).
    #[arg(long)]
    system: bool,
}

impl Scope {
    fn is_system(self) -> bool {
        self.system
    }

    /// Where the unit goes.
    fn unit_path(self) -> anyhow::Result<PathBuf> {
        if self.is_system() {
            return Ok(PathBuf::from("/etc/systemd/system").join(UNIT));
        }
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| dirs::home_dir().map(|h| h.join(".config")))
            .context("no home folder for the user's systemd units")?;
        Ok(base.join("systemd/user").join(UNIT))
    }

    fn systemctl(self) -> Command {
        let mut c = Command::new("systemctl");
        if !self.is_system() {
            c.arg("--user");
        }
        c
    }
}

/// The unit for `cnp serve` with `exe` and `config` (absolute paths). It lets the CLI do its
/// work — write in working folders and the home folder, spawn processes, reach the network — and
/// takes away what cnp never needs.
pub fn unit_text(exe: &Path, config: Option<&Path>, system: bool, grace: Duration) -> String {
    let quote = |p: &Path| {
        let s = p.display().to_string();
        if s.contains([' ', '"', '\\']) {
            format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
        } else {
            s
        }
    };
    let config = config
        .map(|c| format!(" -c {}", quote(c)))
        .unwrap_or_default();
    // Runs get the shutdown grace to end, then the executor's kill grace; some slack on top.
    let stop = grace.as_secs() + 30;
    let target = if system {
        "multi-user.target"
    } else {
        "default.target"
    };
    format!(
        "# Written by `cnp service install`; `cnp service uninstall` removes it.
[Unit]
Description=cnp: Claude Code jobs on a schedule
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={exe}{config} serve
Restart=on-failure
RestartSec=5s
WatchdogSec=60s
TimeoutStopSec={stop}s
# cnp stops its runs itself (SIGTERM, its grace, then SIGKILL to each run's process group).
KillMode=mixed
# Resource limits of runs use cgroup v2 below the service's own cgroup.
Delegate=yes
# Hardening that still lets the Claude CLI work in the home and project folders.
NoNewPrivileges=yes
PrivateTmp=yes
ProtectSystem=full
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectClock=yes
ProtectHostname=yes
RestrictSUIDSGID=yes
RestrictRealtime=yes
LockPersonality=yes
SystemCallArchitectures=native

[Install]
WantedBy={target}
",
        exe = quote(exe),
    )
}

pub fn run(config_path: Option<&Path>, cmd: ServiceCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ServiceCommand::Install { scope, now } => install(config_path, scope, now),
        ServiceCommand::Uninstall { scope } => uninstall(scope),
        ServiceCommand::Status { scope } => status(scope),
    }
}

fn install(config_path: Option<&Path>, scope: Scope, now: bool) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("locating the cnp binary")?;
    let exe = std::fs::canonicalize(&exe).unwrap_or(exe);
    // The service runs where this command found its config (or on the embedded defaults).
    let found = config_path.map(Path::to_path_buf).or_else(Config::discover);
    let config = match &found {
        Some(p) => {
            let c = Config::load(p)?;
            let p =
                std::fs::canonicalize(p).with_context(|| format!("resolving {}", p.display()))?;
            Some((c, p))
        }
        None => None,
    };
    let grace = config
        .as_ref()
        .map(|(c, _)| c.job_engine.shutdown_grace)
        .unwrap_or_else(|| Config::default().job_engine.shutdown_grace);
    let path = scope.unit_path()?;
    let text = unit_text(
        &exe,
        config.as_ref().map(|(_, p)| p.as_path()),
        scope.is_system(),
        grace,
    );
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    match &config {
        Some((_, p)) => println!("  runs: {} -c {} serve", exe.display(), p.display()),
        None => println!("  runs: {} serve (embedded defaults)", exe.display()),
    }
    let ctl = if scope.is_system() {
        "systemctl"
    } else {
        "systemctl --user"
    };
    if !systemctl(scope, &["daemon-reload"]) {
        println!("systemd did not reload (is it running for this scope?); when it does: {ctl} daemon-reload");
    }
    if now {
        if !systemctl(scope, &["enable", "--now", UNIT]) {
            anyhow::bail!("`{ctl} enable --now {UNIT}` failed (see above)");
        }
        println!(
            "enabled and started: {ctl} status {UNIT}; logs: journalctl {}-u {UNIT}",
            if scope.is_system() { "" } else { "--user " }
        );
    } else {
        println!("start it with: {ctl} enable --now {UNIT}");
    }
    if !scope.is_system() {
        println!("(to keep it running while you are logged out: loginctl enable-linger $USER)");
    }
    Ok(ExitCode::SUCCESS)
}

fn uninstall(scope: Scope) -> anyhow::Result<ExitCode> {
    let path = scope.unit_path()?;
    if !path.exists() {
        println!("no unit at {}", path.display());
        return Ok(ExitCode::SUCCESS);
    }
    // Stopped first; a systemd that is not running has nothing to stop.
    systemctl(scope, &["disable", "--now", UNIT]);
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    systemctl(scope, &["daemon-reload"]);
    println!("removed {}", path.display());
    Ok(ExitCode::SUCCESS)
}

fn status(scope: Scope) -> anyhow::Result<ExitCode> {
    let path = scope.unit_path()?;
    if !path.exists() {
        println!("not installed (no {})", path.display());
        return Ok(ExitCode::from(super::EXIT_NOT_RUNNING));
    }
    println!("unit: {}", path.display());
    let ask = |what: &str| {
        scope
            .systemctl()
            .args([what, UNIT])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown (systemd not reachable)".into())
    };
    println!("enabled: {}", ask("is-enabled"));
    let active = ask("is-active");
    println!("active: {active}");
    Ok(if active == "active" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(super::EXIT_NOT_RUNNING)
    })
}

/// Runs `systemctl [--user] args`, its output passed through; whether it succeeded.
fn systemctl(scope: Scope, args: &[&str]) -> bool {
    scope
        .systemctl()
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_runs_serve_with_the_config_as_a_notify_service() {
        let u = unit_text(
            Path::new("/usr/local/bin/cnp"),
            Some(Path::new("/etc/cnp/my config.toml")),
            true,
            Duration::from_secs(30),
        );
        assert!(
            u.contains("ExecStart=/usr/local/bin/cnp -c \"/etc/cnp/my config.toml\" serve\n"),
            "{u}"
        );
        assert!(
            u.contains("Type=notify\n") && u.contains("WatchdogSec="),
            "{u}"
        );
        assert!(u.contains("TimeoutStopSec=60s\n"), "{u}");
        assert!(u.contains("WantedBy=multi-user.target\n"), "{u}");
        let u = unit_text(Path::new("/opt/cnp"), None, false, Duration::from_secs(5));
        assert!(u.contains("ExecStart=/opt/cnp serve\n"), "{u}");
        assert!(u.contains("WantedBy=default.target\n"), "{u}");
    }
}
