//! Plugin-call benchmark: the engine's full cost of one plugin call on a fresh instance, per
//! plugin kind, against raw wasmtime (same engine settings, same component) measured in the same
//! run; a call on a live instance; and first load (compile) against a cached load.
//!
//! ```text
//! scripts/build-plugins.sh
//! cargo run --release -p cnp-bench --bin cnp-plugin-bench -- --calls 20000
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use cnp::clock::Clock;
use cnp::config::PluginsConfig;
use cnp::plugins::bindings::{self, clock, log, types};
use cnp::plugins::{
    ConditionTrigger, EventKind, ExecutionInfo, JobInfo, NotifyEvent, OutcomeKind, PluginHost,
    PluginKind, RunContext,
};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::Store;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

#[derive(Parser)]
struct Cli {
    /// Calls measured per case (after a warm-up of a tenth as many).
    #[arg(long, default_value_t = 20_000)]
    calls: u64,
    /// Loads measured per plugin for compile vs cached load.
    #[arg(long, default_value_t = 5)]
    loads: usize,
    /// Where the compiled plugins are.
    #[arg(long)]
    artifacts: Option<PathBuf>,
    /// Print the results as JSON too.
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct Row {
    case: String,
    p50_us: f64,
    p99_us: f64,
    mean_us: f64,
    n: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let artifacts = cli.artifacts.clone().unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/target/wasm32-wasip2/release")
    });
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("plugins");
    std::fs::create_dir_all(&dir)?;
    for (file, name) in [
        ("decorrelated_jitter.wasm", "decorrelated-jitter"),
        ("business_hours.wasm", "business-hours"),
        ("webhook_notifier.wasm", "webhook-notifier"),
    ] {
        let src = artifacts.join(file);
        anyhow::ensure!(
            src.is_file(),
            "{} is missing: run scripts/build-plugins.sh first",
            src.display()
        );
        std::fs::copy(&src, dir.join(format!("{name}.wasm")))?;
    }
    let port = start_receiver().await?;
    std::fs::write(
        dir.join("webhook-notifier.toml"),
        format!("[grants]\nallowed_hosts = [\"127.0.0.1:{port}\"]\n"),
    )?;

    let mut rows = Vec::new();
    let settings = PluginsConfig {
        max_concurrent_calls: 8,
        ..PluginsConfig::default()
    };

    // Load: compile from scratch vs from the on-disk cache.
    println!("== load: first compile vs cached ==");
    for name in ["decorrelated-jitter", "business-hours", "webhook-notifier"] {
        let mut compile = Vec::new();
        let mut cached = Vec::new();
        for i in 0..cli.loads {
            let cache = tmp.path().join(format!("cache-{name}-{i}"));
            let h1 = PluginHost::new(
                &settings,
                Some(dir.clone()),
                Some(cache.clone()),
                Clock::System,
            )?;
            assert!(h1.reload(&dir.join(format!("{name}.wasm"))).await);
            let p = h1.get(name).expect("loaded");
            assert!(!p.from_cache);
            compile.push(p.load_time);
            let h2 = PluginHost::new(&settings, Some(dir.clone()), Some(cache), Clock::System)?;
            assert!(h2.reload(&dir.join(format!("{name}.wasm"))).await);
            let p = h2.get(name).expect("loaded");
            assert!(p.from_cache);
            cached.push(p.load_time);
        }
        let (c, w) = (median(&mut compile), median(&mut cached));
        println!(
            "{name:22} compile {:8.2} ms   cached {:7.2} ms   ratio {:5.1}x   ({} KiB)",
            ms(c),
            ms(w),
            c.as_secs_f64() / w.as_secs_f64(),
            std::fs::metadata(dir.join(format!("{name}.wasm")))?.len() / 1024
        );
        rows.push(Row {
            case: format!("load compile {name} (ms)"),
            p50_us: ms(c),
            p99_us: ms(c),
            mean_us: ms(c),
            n: cli.loads as u64,
        });
        rows.push(Row {
            case: format!("load cached {name} (ms)"),
            p50_us: ms(w),
            p99_us: ms(w),
            mean_us: ms(w),
            n: cli.loads as u64,
        });
    }

    let host = PluginHost::new(
        &settings,
        Some(dir.clone()),
        Some(tmp.path().join("cache")),
        Clock::System,
    )?;
    host.load_all().await;
    let job = JobInfo {
        id: "0190c3f2-7b4e-7cc1-9c55-6f2b2b9d2a11".into(),
        name: "nightly-review".into(),
        tags: vec!["review".into()],
        priority: 5,
        timezone: "Europe/Berlin".into(),
    };
    let failed = ExecutionInfo {
        execution_id: "0190c3f2-7b4e-7cc1-9c55-6f2b2b9d2a12".into(),
        attempt: 2,
        max_attempts: 5,
        outcome: OutcomeKind::Failure,
        exit_code: Some(1),
        duration_ms: 1234,
        output_tail: "API Error: 500".into(),
        error: Some("API Error: 500".into()),
        usage_limit_reset: None,
        scheduled_at: Some(1_790_000_000_000),
        finished_at: 1_790_000_001_234,
    };
    let context = RunContext {
        job: job.clone(),
        trigger: ConditionTrigger::Schedule,
        scheduled_at: Some(1_790_000_000_000),
        previous: Some(failed.clone()),
    };
    let event = NotifyEvent {
        kind: EventKind::RunFailed,
        job: Some(job.clone()),
        execution: Some(failed.clone()),
        summary: "nightly-review: failed (attempt 2)".into(),
        at: 1_790_000_001_234,
    };
    let hook_cfg = serde_json::json!({"days": ["mon","tue","wed","thu","fri","sat","sun"], "start": "00:00", "end": "24:00"});
    let hook_cfg = Some(&hook_cfg);
    let url_cfg =
        serde_json::json!({"url": format!("http://127.0.0.1:{port}/hook"), "format": "slack"});
    let url_cfg = Some(&url_cfg);

    println!("\n== one call on a fresh instance: cnp's full cost vs raw wasmtime ==");
    let raw = Raw::new(&artifacts.join("decorrelated_jitter.wasm"))?;
    let raw_fresh = measure(cli.calls, || async { raw.fresh_call(&job, &failed).await }).await;
    report(
        &mut rows,
        "raw wasmtime: fresh instance, retry next-retry",
        &raw_fresh,
    );
    let raw_inst = measure(cli.calls, || async { raw.instantiate_only().await }).await;
    report(
        &mut rows,
        "raw wasmtime: instantiate + drop only (no call)",
        &raw_inst,
    );
    let mut kept = Vec::with_capacity(cli.calls as usize + cli.calls as usize / 10 + 10);
    let raw_nodrop = {
        let mut h = Histogram::<u64>::new(3).unwrap();
        for i in 0..cli.calls + cli.calls / 10 {
            let t = Instant::now();
            kept.push(raw.fresh_call_keep(&job, &failed).await?);
            if i >= cli.calls / 10 {
                h.record(t.elapsed().as_nanos() as u64).unwrap();
            }
            if kept.len() >= 64 {
                kept.clear(); // drops happen outside the timed section
            }
        }
        h
    };
    drop(kept);
    report(
        &mut rows,
        "raw wasmtime: fresh instance, store dropped outside the timing",
        &raw_nodrop,
    );
    let raw_live = raw.live_calls(cli.calls, &job, &failed).await?;
    report(
        &mut rows,
        "raw wasmtime: live instance, retry next-retry",
        &raw_live,
    );
    let cnp_retry = measure(cli.calls, || async {
        host.next_retry("decorrelated-jitter", None, &job, &failed)
            .await
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("{e}"))
    })
    .await;
    report(
        &mut rows,
        "cnp: retry-strategy next-retry (fresh instance)",
        &cnp_retry,
    );
    let cnp_cond = measure(cli.calls, || async {
        host.evaluate("business-hours", hook_cfg, &context)
            .await
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("{e}"))
    })
    .await;
    report(
        &mut rows,
        "cnp: condition-hook evaluate (fresh instance)",
        &cnp_cond,
    );
    let cnp_validate = measure(cli.calls, || async {
        host.validate_use("webhook-notifier", PluginKind::Notifier, url_cfg)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    })
    .await;
    report(
        &mut rows,
        "cnp: notifier validate-config (fresh instance)",
        &cnp_validate,
    );
    let deliveries = (cli.calls / 10).max(100);
    let cnp_deliver = measure(deliveries, || async {
        host.deliver("webhook-notifier", url_cfg, &event)
            .await
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("{e}"))
    })
    .await;
    report(
        &mut rows,
        "cnp: notifier deliver, HTTP POST to loopback (fresh instance)",
        &cnp_deliver,
    );
    println!(
        "\nratio cnp/raw (fresh, p50): retry {:.2}x",
        cnp_retry.value_at_quantile(0.5) as f64 / raw_fresh.value_at_quantile(0.5) as f64
    );
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Runs `f` `n` times (after a warm-up) and records each call in nanoseconds.
async fn measure<F, Fut>(n: u64, f: F) -> Histogram<u64>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    for _ in 0..(n / 10).max(10) {
        f().await.expect("warm-up call");
    }
    let mut h = Histogram::<u64>::new(3).unwrap();
    for _ in 0..n {
        let t = Instant::now();
        f().await.expect("measured call");
        h.record(t.elapsed().as_nanos() as u64).unwrap();
    }
    h
}

fn report(rows: &mut Vec<Row>, case: &str, h: &Histogram<u64>) {
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
    println!(
        "{case:62} p50 {:8.2} µs   p99 {:8.2} µs   (n={})",
        us(0.5),
        us(0.99),
        h.len()
    );
    rows.push(Row {
        case: case.into(),
        p50_us: us(0.5),
        p99_us: us(0.99),
        mean_us: h.mean() / 1e3,
        n: h.len(),
    });
}

/// A loopback HTTP receiver answering 200 to everything.
async fn start_receiver() -> anyhow::Result<u16> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = l.local_addr()?.port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut have = 0;
                loop {
                    let Ok(n) = s.read(&mut buf[have..]).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    have += n;
                    let text = String::from_utf8_lossy(&buf[..have]);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if have >= end + 4 + len {
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                                .await;
                            return;
                        }
                    }
                }
            });
        }
    });
    Ok(port)
}

/// Raw wasmtime with the same engine settings as cnp (component model, pooling allocator,
/// async): the baseline for the fresh-instance call.
struct Raw {
    pre: wasmtime::component::InstancePre<RawState>,
    indices: bindings::retry::GuestIndices,
    engine: wasmtime::Engine,
}

struct RawState {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for RawState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
impl types::Host for RawState {}
impl log::Host for RawState {
    fn log(&mut self, _: log::Level, _: String, _: Vec<(String, String)>) {}
}
impl clock::Host for RawState {
    fn now(&mut self) -> i64 {
        chrono::Utc::now().timestamp_millis()
    }
    fn to_local(&mut self, _: i64, _: String) -> Result<clock::LocalTime, String> {
        Err("not in the raw baseline".into())
    }
}

impl Raw {
    fn new(wasm: &Path) -> anyhow::Result<Raw> {
        let w = |e: wasmtime::Error| anyhow::anyhow!("{e:#}");
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        if let Ok(k) = std::env::var("RAW_KEEP_RESIDENT") {
            let k: usize = k.parse()?;
            pool.linear_memory_keep_resident(k)
                .table_keep_resident(k.min(64 << 10));
        }
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        let engine = wasmtime::Engine::new(&config).map_err(w)?;
        let component = Component::from_file(&engine, wasm).map_err(w)?;
        let mut linker: Linker<RawState> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(w)?;
        type D = wasmtime::component::HasSelf<RawState>;
        log::add_to_linker::<_, D>(&mut linker, |s| s).map_err(w)?;
        clock::add_to_linker::<_, D>(&mut linker, |s| s).map_err(w)?;
        types::add_to_linker::<_, D>(&mut linker, |s| s).map_err(w)?;
        let pre = linker.instantiate_pre(&component).map_err(w)?;
        let indices = bindings::retry::GuestIndices::new(&pre).map_err(w)?;
        Ok(Raw {
            pre,
            indices,
            engine,
        })
    }

    fn store(&self) -> Store<RawState> {
        Store::new(
            &self.engine,
            RawState {
                wasi: WasiCtx::builder().build(),
                table: ResourceTable::new(),
            },
        )
    }

    async fn fresh_call(&self, job: &JobInfo, failed: &ExecutionInfo) -> anyhow::Result<()> {
        let w = |e: wasmtime::Error| anyhow::anyhow!("{e:#}");
        let mut store = self.store();
        let instance = self.pre.instantiate_async(&mut store).await.map_err(w)?;
        let g = self.indices.load(&mut store, &instance).map_err(w)?;
        g.call_next_retry(&mut store, "{}", job, failed)
            .await
            .map_err(w)?
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Ok(())
    }

    async fn instantiate_only(&self) -> anyhow::Result<()> {
        let mut store = self.store();
        self.pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        Ok(())
    }

    async fn fresh_call_keep(
        &self,
        job: &JobInfo,
        failed: &ExecutionInfo,
    ) -> anyhow::Result<Store<RawState>> {
        let w = |e: wasmtime::Error| anyhow::anyhow!("{e:#}");
        let mut store = self.store();
        let instance = self.pre.instantiate_async(&mut store).await.map_err(w)?;
        let g = self.indices.load(&mut store, &instance).map_err(w)?;
        g.call_next_retry(&mut store, "{}", job, failed)
            .await
            .map_err(w)?
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Ok(store)
    }

    async fn live_calls(
        &self,
        n: u64,
        job: &JobInfo,
        failed: &ExecutionInfo,
    ) -> anyhow::Result<Histogram<u64>> {
        let w = |e: wasmtime::Error| anyhow::anyhow!("{e:#}");
        let mut store = self.store();
        let instance = self.pre.instantiate_async(&mut store).await.map_err(w)?;
        let g = self.indices.load(&mut store, &instance).map_err(w)?;
        let mut h = Histogram::<u64>::new(3).unwrap();
        for i in 0..n + n / 10 {
            let t = Instant::now();
            g.call_next_retry(&mut store, "{}", job, failed)
                .await
                .map_err(w)?
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            if i >= n / 10 {
                h.record(t.elapsed().as_nanos() as u64).unwrap();
            }
        }
        Ok(h)
    }
}
