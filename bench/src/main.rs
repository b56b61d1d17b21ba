//! `cnp-bench`: cnp's engine side by side with tokio-cron-scheduler 0.15, both driving the same
//! fake `claude` CLI (`target/release/fake-claude`).
//!
//! Every (scenario, system) pair runs in a fresh child process of this binary (`--worker`, hidden)
//! with its own tokio runtime, one after the other, so memory figures belong to one system only and
//! the two never compete for the CPU. See docs/benchmarks.md.
//!
//! ```text
//! cargo build --release -p cnp-bench -p cnp-tests
//! target/release/cnp-bench                      # everything, full sizes (~5 min)
//! target/release/cnp-bench --scenario all --quick
//! target/release/cnp-bench --scenario burst --jobs 2000 --json
//! ```

mod cnp_side;
mod common;
mod report;
mod tcs_side;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use clap::Parser;

use common::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Which {
    OnePerSecond,
    Burst,
    InFlight,
    Idle,
    All,
}

#[derive(Debug, Parser)]
#[command(
    name = "cnp-bench",
    about = "cnp's scheduler vs tokio-cron-scheduler 0.15, driving the fake claude CLI"
)]
struct Cli {
    /// Which scenario to run.
    #[arg(long, value_enum, default_value = "all")]
    scenario: Which,
    /// Small sizes for a smoke run (5 s, 1,000 burst, 200 in flight, 10,000 idle jobs, 3 s idle).
    #[arg(long)]
    quick: bool,
    /// Job count for burst / in-flight / idle (applies to each selected one; defaults 10,000 /
    /// 1,000 / 100,000).
    #[arg(long)]
    jobs: Option<usize>,
    /// one-per-second: slots measured (default 30).
    #[arg(long)]
    seconds: Option<u64>,
    /// in-flight: how long each fake CLI run sleeps, ms (default 3,000).
    #[arg(long)]
    sleep_ms: Option<u64>,
    /// idle: the measured idle window, s (default 10).
    #[arg(long)]
    idle_secs: Option<u64>,
    /// burst / in-flight: seconds from the start of job creation to the due instant (default:
    /// 3 s + 0.6 ms per job).
    #[arg(long)]
    lead_secs: Option<u64>,
    /// burst / in-flight: cnp's max_concurrent_jobs and the bare spawn loop's concurrency cap
    /// (default: the job count, capped to what the open-file limit allows at ~4 descriptors per
    /// running CLI: (RLIMIT_NOFILE − 1,024) / 4).
    #[arg(long)]
    max_concurrent: Option<usize>,
    /// Run only one system (default: cnp, tokio-cron-scheduler, and for burst / in-flight the
    /// bare spawn loop).
    #[arg(long, value_enum)]
    system: Option<System>,
    /// Print the results as JSON instead of the markdown table.
    #[arg(long)]
    json: bool,
    /// The fake CLI (default: `fake-claude` beside this binary).
    #[arg(long)]
    fake: Option<PathBuf>,
    /// Print the markdown report of a saved `--json` output instead of running anything.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Keep each worker's temporary folder (SQLite file, invocation records) and print its path.
    #[arg(long)]
    keep: bool,
    /// Internal: run one (scenario, system) pair and print its result as JSON.
    #[arg(long, hide = true)]
    worker: Option<String>,
}

fn main() -> anyhow::Result<()> {
    // cnp runs in this process: its orphan guardian is this executable run again, as in `cnp`.
    cnp::executor::process::guardian::enter();
    let cli = Cli::parse();
    if let Some(params) = &cli.worker {
        let params: Params = serde_json::from_str(params).context("worker parameters")?;
        return worker(params);
    }
    if let Some(path) = &cli.report {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let saved: Saved =
            serde_json::from_str(&text).context("not a `cnp-bench --json` output")?;
        print!("{}", report::markdown(&saved.machine, &saved.results));
        return Ok(());
    }
    let fake = locate_fake(cli.fake.clone())?;
    let scenarios: Vec<Scenario> = match cli.scenario {
        Which::OnePerSecond => vec![Scenario::OnePerSecond],
        Which::Burst => vec![Scenario::Burst],
        Which::InFlight => vec![Scenario::InFlight],
        Which::Idle => vec![Scenario::Idle],
        Which::All => Scenario::ALL.to_vec(),
    };
    let systems = match cli.system {
        Some(s) => vec![s],
        None => vec![System::Cnp, System::Tcs, System::Floor],
    };
    let mut machine = report::Machine::read();
    // Workers raise the soft open-file limit to the hard one; budget ~4 descriptors per running
    // CLI (stdin, stdout, stderr pipes and a pidfd) and keep 1,024 for everything else.
    let (_, nofile) = cnp::executor::process::raise_nofile_limit()?;
    let fd_budget = (nofile.saturating_sub(1024) / 4).max(1) as usize;
    machine.nofile = Some(nofile);
    let mut results = Vec::new();
    for scenario in scenarios {
        let q = cli.quick;
        let jobs = cli.jobs.unwrap_or(match scenario {
            Scenario::OnePerSecond => 1,
            Scenario::Burst => {
                if q {
                    1_000
                } else {
                    10_000
                }
            }
            Scenario::InFlight => {
                if q {
                    200
                } else {
                    1_000
                }
            }
            Scenario::Idle => {
                if q {
                    10_000
                } else {
                    100_000
                }
            }
        });
        for &system in &systems {
            if system == System::Floor && scenario == Scenario::Idle {
                continue;
            }
            let params = Params {
                scenario,
                system,
                fake: fake.clone(),
                seconds: cli.seconds.unwrap_or(if q { 5 } else { 30 }).max(1),
                jobs: jobs.max(1),
                sleep_ms: cli.sleep_ms.unwrap_or(3_000),
                idle_secs: cli.idle_secs.unwrap_or(if q { 3 } else { 10 }).max(1),
                lead_secs: cli.lead_secs,
                keep: cli.keep,
                max_concurrent: cli.max_concurrent.unwrap_or(jobs.min(fd_budget)).max(1),
            };
            progress(format!("== {} / {} ==", scenario.name(), system.label()));
            results.push(run_worker(&params)?);
        }
    }
    if cli.json {
        let out = serde_json::json!({ "machine": machine, "results": results });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", report::markdown(&machine, &results));
    }
    Ok(())
}

#[derive(serde::Deserialize)]
struct Saved {
    machine: report::Machine,
    results: Vec<WorkerResult>,
}

/// Runs one pair in a child process of this binary; its stdout's last line is the result.
fn run_worker(params: &Params) -> anyhow::Result<WorkerResult> {
    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .arg("--worker")
        .arg(serde_json::to_string(params)?)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("starting a worker")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "the {} / {} worker failed ({}): {stdout}",
            params.scenario.name(),
            params.system.label(),
            out.status
        );
    }
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("worker output {line:?}"))
}

fn worker(params: Params) -> anyhow::Result<()> {
    let (before, after) = cnp::executor::process::raise_nofile_limit()?;
    let dir = tempfile::Builder::new().prefix("cnp-bench-").tempdir()?;
    let record = dir.path().join("invocations.jsonl");
    // Before any thread exists: every CLI run (both systems) inherits these.
    std::env::set_var("FAKE_CLAUDE_RECORD", &record);
    std::env::remove_var("FAKE_CLAUDE_SCENARIOS");
    std::env::remove_var("FAKE_CLAUDE_SCENARIO");
    if params.scenario == Scenario::InFlight {
        std::env::set_var("FAKE_CLAUDE_SLEEP_MS", params.sleep_ms.to_string());
    } else {
        std::env::remove_var("FAKE_CLAUDE_SLEEP_MS");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut result = rt.block_on(async {
        match params.system {
            System::Cnp => cnp_side::run(&params, dir.path(), &record).await,
            System::Tcs => tcs_side::run(&params, dir.path(), &record).await,
            System::Floor => tcs_side::run_floor(&params, dir.path(), &record).await,
        }
    })?;
    result
        .notes
        .push(format!("RLIMIT_NOFILE soft limit {before} -> {after}"));
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    if params.keep {
        let kept = dir.keep();
        progress(format!("kept {}", kept.display()));
        result
            .notes
            .push(format!("files kept in {}", kept.display()));
    }
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}
