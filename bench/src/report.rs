//! The markdown report: one table per scenario, both systems side by side, ratios baseline / cnp.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::common::*;

/// What machine the figures come from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_mib: u64,
    pub kernel: String,
    /// The soft open-file limit the workers run with (raised to the hard limit).
    #[serde(default)]
    pub nofile: Option<u64>,
}

impl Machine {
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_mib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
            / 1024;
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned();
        Machine {
            cpu,
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            memory_mib,
            kernel,
            nofile: None,
        }
    }
}

fn ms(us: u64) -> String {
    let v = us as f64 / 1000.0;
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

fn lat_cell(l: Option<&Latency>) -> String {
    match l {
        Some(l) => format!("{} / {} / {} ms", ms(l.p50_us), ms(l.p99_us), ms(l.max_us)),
        None => "–".into(),
    }
}

fn ratio(base: f64, cnp: f64) -> String {
    if cnp <= 0.0 || base <= 0.0 {
        return "–".into();
    }
    let r = base / cnp;
    if r >= 10.0 {
        format!("{r:.0}×")
    } else {
        format!("{r:.1}×")
    }
}

fn lat_ratio(base: Option<&Latency>, cnp: Option<&Latency>) -> String {
    match (base, cnp) {
        (Some(b), Some(c)) => format!(
            "p50 {} · p99 {}",
            ratio(b.p50_us as f64, c.p50_us as f64),
            ratio(b.p99_us as f64, c.p99_us as f64)
        ),
        _ => "–".into(),
    }
}

fn mib(kib: Option<u64>) -> String {
    kib.map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
        .unwrap_or_else(|| "–".into())
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "–".into())
}

struct Table {
    out: String,
    floor: bool,
}

impl Table {
    fn new(title: &str, note: &str, floor: bool) -> Table {
        let mut out = format!("\n### {title}\n\n");
        if !note.is_empty() {
            let _ = writeln!(out, "{note}\n");
        }
        if floor {
            out.push_str("| metric | cnp | tokio-cron-scheduler | baseline / cnp | bare spawn loop (floor) | target |\n");
            out.push_str("|---|---|---|---|---|---|\n");
        } else {
            out.push_str("| metric | cnp | tokio-cron-scheduler | baseline / cnp | target |\n");
            out.push_str("|---|---|---|---|---|\n");
        }
        Table { out, floor }
    }

    fn row(&mut self, metric: &str, cnp: String, tcs: String, ratio: String, target: &str) {
        self.row4(metric, cnp, tcs, ratio, "–".into(), target);
    }

    fn row4(
        &mut self,
        metric: &str,
        cnp: String,
        tcs: String,
        ratio: String,
        floor: String,
        target: &str,
    ) {
        if self.floor {
            let _ = writeln!(
                self.out,
                "| {metric} | {cnp} | {tcs} | {ratio} | {floor} | {target} |"
            );
        } else {
            let _ = writeln!(
                self.out,
                "| {metric} | {cnp} | {tcs} | {ratio} | {target} |"
            );
        }
    }
}

type R<'a> = Option<&'a WorkerResult>;

fn lost(r: Option<&WorkerResult>) -> String {
    match r {
        Some(r) => match (r.lost_runs, r.expected_runs) {
            (Some(l), Some(e)) => {
                let pct = if e > 0 {
                    l as f64 * 100.0 / e as f64
                } else {
                    0.0
                };
                format!("{l} of {e} ({pct:.1} %)")
            }
            _ => "–".into(),
        },
        None => "–".into(),
    }
}

fn latency_rows(t: &mut Table, c: R, b: R, f: R, target: &str) {
    let get = |r: R, k: &str| r.and_then(|r| r.latency.get(k)).cloned();
    let stage = |t: &mut Table, name: &str, key: &str, tgt: &str| {
        let (lc, lb, lf) = (get(c, key), get(b, key), get(f, key));
        t.row4(
            name,
            lat_cell(lc.as_ref()),
            lat_cell(lb.as_ref()),
            lat_ratio(lb.as_ref(), lc.as_ref()),
            lat_cell(lf.as_ref()),
            tgt,
        );
    };
    stage(
        t,
        "**due → child process started** (p50 / p99 / max)",
        "child_started",
        target,
    );
    stage(t, "due → `spawn()` returned", "spawned", "");
    stage(
        t,
        "due → run released (cnp: dispatched, start committed — `running` event; baseline: job \
         closure called; floor: spawn loop reached it)",
        "released",
        "",
    );
    let only = |t: &mut Table, name: &str, key: &str, tgt: &str| {
        t.row4(
            name,
            lat_cell(get(c, key).as_ref()),
            "n/a".into(),
            "–".into(),
            "n/a".into(),
            tgt,
        );
    };
    // `queued_at` has millisecond resolution: 0 means "within the due millisecond".
    let coarse = |l: Option<Latency>| match l {
        Some(l) => {
            let v = |us: u64| {
                if us < 1000 {
                    "< 1".to_owned()
                } else {
                    format!("{}", us / 1000)
                }
            };
            format!("{} / {} / {} ms", v(l.p50_us), v(l.p99_us), v(l.max_us))
        }
        None => "–".into(),
    };
    t.row4(
        "due → cnp run recorded (store `queued_at`, whole ms; recorded ahead of the slot = < 1)",
        coarse(get(c, "timer_fired")),
        "n/a".into(),
        "–".into(),
        "n/a".into(),
        "",
    );
    only(
        t,
        "due → cnp run recorded and queued for dispatch (`queued` event) — the scheduler's own latency",
        "queued",
        if target.is_empty() { "" } else { target },
    );
}

fn cpu_rows(t: &mut Table, c: R, b: R, f: R) {
    let secs = |r: R, g: fn(&WorkerResult) -> Option<f64>| {
        r.and_then(g)
            .map(|v| format!("{v:.2} s"))
            .unwrap_or_else(|| "–".into())
    };
    let row = |t: &mut Table, name: &str, g: fn(&WorkerResult) -> Option<f64>| {
        t.row4(
            name,
            secs(c, g),
            secs(b, g),
            ratio(b.and_then(g).unwrap_or(0.0), c.and_then(g).unwrap_or(0.0)),
            secs(f, g),
            "",
        );
    };
    row(t, "due → last run ended", |r| {
        r.last_run_ended_ms.map(|v| v / 1000.0)
    });
    row(
        t,
        "CPU of the host process, burst start → all done",
        |r| r.host_cpu_secs,
    );
    row(t, "CPU of the CLI runs (children), same window", |r| {
        r.children_cpu_secs
    });
}

pub fn markdown(m: &Machine, results: &[WorkerResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## cnp vs tokio-cron-scheduler 0.15\n\nMachine: {} ({} cores), {} MiB RAM, Linux {}. \
         Latencies are from the due instant; p50 / p99 / max in ms. Ratios are baseline / cnp \
         (above 1 = cnp better).{}",
        m.cpu,
        m.cores,
        m.memory_mib,
        m.kernel,
        m.nofile
            .map(|n| format!(" Open-file limit (RLIMIT_NOFILE): {n}."))
            .unwrap_or_default()
    );
    let find = |s: Scenario, sys: System| {
        results
            .iter()
            .find(|r| r.scenario == Some(s) && r.system == Some(sys))
    };
    for s in Scenario::ALL {
        let (c, b, f) = (
            find(s, System::Cnp),
            find(s, System::Tcs),
            find(s, System::Floor),
        );
        if c.is_none() && b.is_none() && f.is_none() {
            continue;
        }
        match s {
            Scenario::OnePerSecond => {
                let n = c.or(b).and_then(|r| r.expected_runs).unwrap_or(0);
                let mut t = Table::new(
                    &format!("1 job every second (`* * * * * *`), {n} slots"),
                    "The floor column is no scheduler: a loop that sleeps until each second and \
                     spawns the run.",
                    true,
                );
                t.row4("runs lost", lost(c), lost(b), "–".into(), lost(f), "0");
                t.row4(
                    "slots run more than once",
                    opt(c.and_then(|r| r.doubled_runs)),
                    opt(b.and_then(|r| r.doubled_runs)),
                    "–".into(),
                    opt(f.and_then(|r| r.doubled_runs)),
                    "0",
                );
                latency_rows(&mut t, c, b, f, "p99 ≤ 2 ms");
                out.push_str(&t.out);
            }
            Scenario::Burst | Scenario::InFlight => {
                let jobs = c.or(b).or(f).map(|r| r.jobs).unwrap_or(0);
                let mut t = if s == Scenario::Burst {
                    Table::new(
                        &format!("{jobs} jobs due in the same second"),
                        "All jobs on one 6-field cron matching a single second. The floor column is no scheduler at all: \
                         one loop spawning every run at the due instant.",
                        true,
                    )
                } else {
                    Table::new(
                        &format!("{jobs} runs in flight at once"),
                        "All jobs due at the same second; each fake CLI run sleeps before \
                         answering.",
                        true,
                    )
                };
                let count = |r: R, g: fn(&WorkerResult) -> Option<u64>| opt(r.and_then(g));
                t.row4(
                    "concurrency cap",
                    c.and_then(|r| r.max_concurrent)
                        .map(|n| format!("max_concurrent_jobs {n}"))
                        .unwrap_or_else(|| "–".into()),
                    "none (no such setting)".into(),
                    "–".into(),
                    opt(f.and_then(|r| r.max_concurrent)),
                    "",
                );
                t.row4("runs lost", lost(c), lost(b), "–".into(), lost(f), "0");
                let doubled = |r: R| match r.and_then(|r| Some((r.doubled_runs?, r.extra_runs?))) {
                    Some((0, _)) => "0".to_owned(),
                    Some((d, e)) => format!("{d} ({e} extra runs)"),
                    None => "–".into(),
                };
                t.row4(
                    "slots run more than once",
                    doubled(c),
                    doubled(b),
                    "–".into(),
                    doubled(f),
                    "0",
                );
                t.row4(
                    "runs completed (exit 0)",
                    count(c, |r| r.completed_runs),
                    count(b, |r| r.completed_runs),
                    "–".into(),
                    count(f, |r| r.completed_runs),
                    if s == Scenario::InFlight { "all" } else { "" },
                );
                t.row4(
                    "most runs in flight at once",
                    count(c, |r| r.peak_in_flight),
                    count(b, |r| r.peak_in_flight),
                    "–".into(),
                    count(f, |r| r.peak_in_flight),
                    "",
                );
                let last = |r: R| {
                    r.and_then(|r| r.last_child_started_ms)
                        .map(|v| format!("{v:.0} ms"))
                        .unwrap_or_else(|| "–".into())
                };
                t.row4(
                    "due → last child started",
                    last(c),
                    last(b),
                    ratio(
                        b.and_then(|r| r.last_child_started_ms).unwrap_or(0.0),
                        c.and_then(|r| r.last_child_started_ms).unwrap_or(0.0),
                    ),
                    last(f),
                    "",
                );
                latency_rows(
                    &mut t,
                    c,
                    b,
                    f,
                    if s == Scenario::Burst {
                        "p99 ≤ 10 ms"
                    } else {
                        ""
                    },
                );
                cpu_rows(&mut t, c, b, f);
                let rss_row = |t: &mut Table,
                               name: &str,
                               g: fn(&WorkerResult) -> Option<u64>,
                               target: &str| {
                    let (vc, vb, vf) = (c.and_then(g), b.and_then(g), f.and_then(g));
                    t.row4(
                        name,
                        mib(vc),
                        mib(vb),
                        ratio(vb.unwrap_or(0) as f64, vc.unwrap_or(0) as f64),
                        mib(vf),
                        target,
                    );
                };
                rss_row(
                    &mut t,
                    "host RSS before the jobs",
                    |r| r.rss_baseline_kib,
                    "",
                );
                rss_row(
                    &mut t,
                    "host RSS with the jobs, before the runs",
                    |r| r.rss_jobs_kib,
                    "",
                );
                rss_row(
                    &mut t,
                    "host RSS peak while running (sampled every 20 ms)",
                    |r| r.rss_peak_sampled_kib,
                    if s == Scenario::InFlight {
                        "< 200 MB"
                    } else {
                        ""
                    },
                );
                rss_row(
                    &mut t,
                    "host VmHWM (process lifetime peak)",
                    |r| r.rss_hwm_kib,
                    "",
                );
                t.row("job creation", create(c), create(b), "–".into(), "");
                out.push_str(&t.out);
            }
            Scenario::Idle => {
                let jobs = c.or(b).map(|r| r.jobs).unwrap_or(0);
                let distinct = c.or(b).and_then(|r| r.distinct_expressions).unwrap_or(0);
                let window = c.or(b).and_then(|r| r.idle_window_secs).unwrap_or(0.0);
                let mut t = Table::new(
                    &format!("{jobs} scheduled jobs, idle"),
                    &format!(
                        "Yearly 6-field crons `0 M H 15 <month in 6 months> *`: {distinct} distinct \
                         expressions (every minute × hour), so nothing fires. CPU over a {window:.0} s \
                         idle window (getrusage, all threads)."
                    ),
                    false,
                );
                t.row("job creation", create(c), create(b), "–".into(), "");
                let kib =
                    |r: Option<&WorkerResult>, f: fn(&WorkerResult) -> Option<u64>| r.and_then(f);
                let rss_row = |t: &mut Table,
                               name: &str,
                               f: fn(&WorkerResult) -> Option<u64>,
                               target: &str| {
                    let (vc, vb) = (kib(c, f), kib(b, f));
                    t.row(
                        name,
                        mib(vc),
                        mib(vb),
                        ratio(vb.unwrap_or(0) as f64, vc.unwrap_or(0) as f64),
                        target,
                    );
                };
                rss_row(
                    &mut t,
                    "RSS before creating the jobs",
                    |r| r.rss_baseline_kib,
                    "",
                );
                rss_row(&mut t, "RSS with the jobs", |r| r.rss_jobs_kib, "");
                rss_row(
                    &mut t,
                    "**RSS growth for the jobs**",
                    |r| Some(r.rss_jobs_kib?.saturating_sub(r.rss_baseline_kib?)),
                    "≤ 50 MiB",
                );
                rss_row(
                    &mut t,
                    "RSS growth after `malloc_trim(0)` (live memory)",
                    |r| Some(r.rss_trimmed_kib?.saturating_sub(r.rss_baseline_kib?)),
                    "",
                );
                let cpu = |r: Option<&WorkerResult>| r.and_then(|r| r.idle_cpu_percent);
                t.row(
                    "idle CPU (% of one core)",
                    cpu(c)
                        .map(|v| format!("{v:.3} %"))
                        .unwrap_or_else(|| "–".into()),
                    cpu(b)
                        .map(|v| format!("{v:.3} %"))
                        .unwrap_or_else(|| "–".into()),
                    ratio(cpu(b).unwrap_or(0.0), cpu(c).unwrap_or(0.0)),
                    "",
                );
                out.push_str(&t.out);
            }
        }
        if let Some(b) = b.filter(|b| b.lost_runs.unwrap_or(0) > 0 && s != Scenario::Idle) {
            let _ = writeln!(
                out,
                "- tokio-cron-scheduler's latencies cover only the {} runs it started (it dropped {}), \
                 so they are not comparable to cnp's.",
                b.started_runs.unwrap_or(0),
                b.lost_runs.unwrap_or(0)
            );
        }
        for r in [c, b, f].into_iter().flatten() {
            for n in r.notes.iter().filter(|n| !n.starts_with("RLIMIT_NOFILE")) {
                let _ = writeln!(out, "- {}: {n}", r.system.map(|s| s.label()).unwrap_or("?"));
            }
        }
    }
    out
}

fn create(r: Option<&WorkerResult>) -> String {
    match r.and_then(|r| Some((r.setup_secs?, r.create_rate?))) {
        Some((s, rate)) if s < 1.0 => format!("{:.0} ms ({rate:.0} jobs/s)", s * 1000.0),
        Some((s, rate)) => format!("{s:.1} s ({rate:.0} jobs/s)"),
        None => "–".into(),
    }
}
