//! Cost reporting on the real `cnp serve` with the fake Claude CLI, whose reported cost is set
//! with `FAKE_CLAUDE_COST_USD` (for the service, and per job through its environment): runs
//! jobs, then reads `GET /api/costs`, `cnp cost` and the Prometheus counters on `/metrics`.
//! Windows are built from the test's clock, never from a fixed date.

mod support;

use std::collections::HashMap;

use chrono::{DateTime, Duration, NaiveDate, SecondsFormat, SubsecRound, Utc};
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::api::Api;
use support::{ConfigOpts, Env};

/// The service's `default_timezone` (`[scheduler] timezone`), not the machine's.
const ZONE: &str = "Asia/Tokyo";

fn manual_job(name: &str, env: Value) -> Value {
    json!({
        "name": name,
        "prompt": "say hello",
        "schedule": {"type": "manual"},
        "execution": {"environment": env},
    })
}

async fn create(api: &Api, name: &str, env: Value) -> String {
    let (s, j) = api.post("/api/jobs", manual_job(name, env)).await;
    assert_eq!(s, StatusCode::CREATED, "{j}");
    j["id"].as_str().unwrap().to_owned()
}

/// Runs the job (by id) now and waits until its run ended with `status`.
async fn run(api: &Api, job_id: &str, status: &str) {
    let (s, r) = api
        .post(&format!("/api/jobs/{job_id}/execute"), json!({}))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{r}");
    let id = r["execution_id"].as_str().unwrap().to_owned();
    let e = api
        .wait_execution(&id, "the run's end", |e| {
            e["completed_at"].is_string() && e["status"] != "running"
        })
        .await;
    assert_eq!(e["status"], status, "{e}");
}

fn instant(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .unwrap_or_else(|| panic!("not an instant: {v}"))
        .with_timezone(&Utc)
}

fn close(v: &Value, want: f64) -> bool {
    v.as_f64().is_some_and(|x| (x - want).abs() < 1e-9)
}

fn job_names(r: &Value) -> Vec<&str> {
    r["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["name"].as_str().unwrap())
        .collect()
}

fn assert_bad_param(s: StatusCode, v: &Value, field: &str) {
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"]["code"], "invalid", "{v}");
    assert_eq!(v["error"]["field"], field, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
}

/// The samples of a Prometheus text exposition (`series` → value), checking that every sample
/// of `families` follows its family's HELP and TYPE lines.
fn samples(text: &str, families: &[(&str, &str)]) -> HashMap<String, f64> {
    let mut typed: HashMap<&str, &str> = HashMap::new();
    let mut helped = Vec::new();
    let mut out = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            typed.insert(name, kind);
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            helped.push(rest.split_once(' ').expect("HELP name text").0);
        } else if !line.is_empty() {
            let (series, value) = line.rsplit_once(' ').expect("series value");
            let name = series.split('{').next().unwrap();
            if let Some((_, kind)) = families.iter().find(|(f, _)| *f == name) {
                assert_eq!(typed.get(name), Some(kind), "TYPE of {name} before {line}");
                assert!(helped.contains(&name), "HELP of {name} before {line}");
            }
            let v: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("not a number: {line}"));
            out.insert(series.to_owned(), v);
        }
    }
    out
}

/// `GET /metrics`, with the cost counters' HELP and TYPE checked.
async fn metrics(api: &Api) -> HashMap<String, f64> {
    let (s, v) = api.get("/metrics").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    samples(
        v.as_str().expect("text"),
        &[
            ("cnp_cost_usd_total", "counter"),
            ("cnp_runs_without_cost_total", "counter"),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn costs_by_api_cli_and_prometheus() {
    let env = Env::new(ConfigOpts {
        timezone: ZONE,
        ..ConfigOpts::default()
    });
    env.enable_api();
    // Every run reports $0.40 unless its job's environment says otherwise.
    let mut cnp = env.start_with(&[("FAKE_CLAUDE_COST_USD", "0.4")]);
    let (base, token) = cnp.wait_api(&env);
    let api = Api::new(base, token);
    let odd_name = "odd \"name\"\\x";

    let spender = create(&api, "spender", json!({})).await;
    let cheap = create(&api, "cheap", json!({"FAKE_CLAUDE_COST_USD": "0.05"})).await;
    let silent = create(&api, "silent", json!({"FAKE_CLAUDE_COST_USD": "none"})).await;
    let crasher = create(&api, "crasher", json!({"FAKE_CLAUDE_SCENARIO": "crash"})).await;
    let odd = create(&api, odd_name, json!({"FAKE_CLAUDE_COST_USD": "0.25"})).await;
    create(&api, "idle", json!({})).await;

    let began = Utc::now();
    run(&api, &spender, "completed").await;
    run(&api, &spender, "completed").await;
    run(&api, &cheap, "completed").await;
    run(&api, &silent, "completed").await;
    run(&api, &crasher, "failed").await;
    run(&api, &odd, "completed").await;
    let ended = Utc::now();

    // ---- GET /api/costs: the default window, the last 30 days, days in the service's zone.
    let (s, r) = api.get("/api/costs").await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let asked = Utc::now();
    assert_eq!(r["window"]["time_zone"], ZONE, "{r}");
    let (since, until) = (time(&r["window"]["since"]), time(&r["window"]["until"]));
    assert!(until >= ended.trunc_subsecs(3) && until <= asked, "{r}");
    assert_eq!(until - since, Duration::days(30), "{r}");
    assert!(r["job"].is_null(), "{r}");
    assert!(close(&r["cost_usd"], 1.1), "{r}");
    assert_eq!(
        (r["runs"].as_u64(), r["uncosted_runs"].as_u64()),
        (Some(6), Some(2))
    );
    // Top spenders first; $0 jobs by name; a job without runs is not listed.
    assert_eq!(
        job_names(&r),
        ["spender", odd_name, "cheap", "crasher", "silent"]
    );
    assert_eq!(r["jobs_total"], 5);
    let spent = &r["jobs"][0];
    assert_eq!(spent["job_id"], spender.as_str());
    assert!(close(&spent["cost_usd"], 0.8), "{spent}");
    assert_eq!(
        (spent["runs"].as_u64(), spent["uncosted_runs"].as_u64()),
        (Some(2), Some(0))
    );
    for (i, name) in [(3, "crasher"), (4, "silent")] {
        let j = &r["jobs"][i];
        assert_eq!(j["name"], name);
        assert_eq!(
            (j["runs"].as_u64(), j["uncosted_runs"].as_u64()),
            (Some(1), Some(1)),
            "{j}"
        );
        assert!(close(&j["cost_usd"], 0.0), "{j}");
    }
    // Every calendar day of the window in Tokyo, oldest first; the runs on the day(s) they ran.
    let tokyo: chrono_tz::Tz = ZONE.parse().unwrap();
    let day_of = |t: DateTime<Utc>| t.with_timezone(&tokyo).date_naive();
    let daily = r["daily"].as_array().unwrap();
    assert!((30..=31).contains(&daily.len()), "{} days", daily.len());
    let dates: Vec<NaiveDate> = daily
        .iter()
        .map(|d| d["date"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(dates[0], day_of(since));
    assert_eq!(
        *dates.last().unwrap(),
        day_of(until - Duration::milliseconds(1))
    );
    assert!(
        dates.windows(2).all(|w| w[0].succ_opt() == Some(w[1])),
        "{dates:?}"
    );
    let busy: Vec<(NaiveDate, u64)> = daily
        .iter()
        .zip(&dates)
        .filter(|(d, _)| d["runs"] != 0)
        .map(|(d, date)| (*date, d["runs"].as_u64().unwrap()))
        .collect();
    assert_eq!(busy.iter().map(|(_, n)| n).sum::<u64>(), 6, "{busy:?}");
    assert!(
        busy.iter()
            .all(|(d, _)| *d >= day_of(began) && *d <= day_of(ended)),
        "{busy:?} outside {began} – {ended}"
    );
    if day_of(began) == day_of(ended) {
        let today = daily.last().unwrap();
        assert!(close(&today["cost_usd"], 1.1), "{today}");
        assert_eq!(today["uncosted_runs"], 2, "{today}");
    }

    // Another zone for the days.
    let (s, utc) = api.get("/api/costs?tz=UTC").await;
    assert_eq!(s, StatusCode::OK, "{utc}");
    assert_eq!(utc["window"]["time_zone"], "UTC");
    assert_eq!(utc["runs"], 6);

    // One job, by name or id; the top N.
    for key in ["spender", spender.as_str()] {
        let (s, one) = api.get(&format!("/api/costs?job={key}")).await;
        assert_eq!(s, StatusCode::OK, "{one}");
        assert_eq!(one["job"], json!({"id": spender, "name": "spender"}));
        assert_eq!(
            (one["runs"].as_u64(), one["jobs_total"].as_u64()),
            (Some(2), Some(1))
        );
        assert!(close(&one["cost_usd"], 0.8), "{one}");
    }
    let (s, top) = api.get("/api/costs?limit=2").await;
    assert_eq!(s, StatusCode::OK, "{top}");
    assert_eq!(job_names(&top), ["spender", odd_name]);
    assert_eq!(
        (top["jobs_total"].as_u64(), top["runs"].as_u64()),
        (Some(5), Some(6))
    );

    // Windows from the test's clock: one around the runs, one before them.
    let (s, around) = api
        .get(&format!(
            "/api/costs?since={}&until={}",
            instant(began - Duration::minutes(1)),
            instant(ended + Duration::minutes(1))
        ))
        .await;
    assert_eq!(s, StatusCode::OK, "{around}");
    assert_eq!(
        (around["runs"].as_u64(), around["uncosted_runs"].as_u64()),
        (Some(6), Some(2))
    );
    assert_eq!(
        instant(time(&around["window"]["since"])),
        instant(began - Duration::minutes(1))
    );
    let (s, before) = api
        .get(&format!(
            "/api/costs?since={}&until={}",
            instant(began - Duration::hours(2)),
            instant(began - Duration::hours(1))
        ))
        .await;
    assert_eq!(s, StatusCode::OK, "{before}");
    assert_eq!(
        (before["runs"].as_u64(), before["jobs_total"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(close(&before["cost_usd"], 0.0));

    // Bad parameters name themselves; an unknown job is a 404.
    for (query, field) in [
        ("days=0".to_owned(), "days"),
        ("days=many".to_owned(), "days"),
        ("tz=Mars/Olympus".to_owned(), "tz"),
        ("since=yesterday".to_owned(), "since"),
        ("limit=0".to_owned(), "limit"),
        (
            format!(
                "since={}&until={}&days=3",
                instant(began - Duration::days(2)),
                instant(began)
            ),
            "days",
        ),
        (
            format!("since={}&until={}", instant(ended), instant(began)),
            "since",
        ),
    ] {
        let (s, v) = api.get(&format!("/api/costs?{query}")).await;
        assert_bad_param(s, &v, field);
    }
    let (s, v) = api.get("/api/costs?job=nope").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(v["error"]["code"], "not_found", "{v}");

    // The route needs the token, and the OpenAPI document describes it.
    let res = api
        .http
        .get(format!("{}/api/costs", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let (s, doc) = api.get("/api/openapi.json").await;
    assert_eq!(s, StatusCode::OK);
    let op = &doc["paths"]["/api/costs"]["get"];
    assert_eq!(op["tags"], json!(["costs"]), "{op}");
    let params: Vec<&str> = op["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(params, ["days", "since", "until", "job", "tz", "limit"]);
    for code in ["200", "422", "404"] {
        assert!(op["responses"][code].is_object(), "{code}: {op}");
    }
    let report = &doc["components"]["schemas"]["CostReport"]["properties"];
    for field in [
        "window",
        "job",
        "cost_usd",
        "runs",
        "uncosted_runs",
        "jobs",
        "jobs_total",
        "daily",
    ] {
        assert!(report[field].is_object(), "CostReport.{field}: {report}");
    }

    // ---- cnp cost
    let out = env.run_cli(&["cost", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let cli: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(cli["window"]["time_zone"], ZONE);
    assert_eq!(
        (cli["runs"].as_u64(), cli["uncosted_runs"].as_u64()),
        (Some(6), Some(2))
    );
    assert!(close(&cli["cost_usd"], 1.1), "{cli}");
    assert_eq!(job_names(&cli), job_names(&r));
    let out = env.run_cli(&["cost", "--job", "spender", "--tz", "UTC", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let one: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (one["runs"].as_u64(), one["window"]["time_zone"].as_str()),
        (Some(2), Some("UTC"))
    );
    let out = env.run_cli(&["cost", "--top", "1"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    for want in [
        "Total: $1.10 over 6 runs",
        "2 runs reported no cost (counted as $0)",
        "spender",
        "… and 4 more jobs ($0.30 in all; --top to list more)",
        &format!("Per day ({ZONE}):"),
        &busy.last().unwrap().0.to_string(),
    ] {
        assert!(text.contains(want), "`{want}` missing from:\n{text}");
    }
    let out = env.run_cli(&["cost", "--job", "nope"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("`nope` not found"),
        "{out:?}"
    );
    let out = env.run_cli(&["cost", "--tz", "Mars/Olympus"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("(field: tz)"),
        "{out:?}"
    );

    // ---- Prometheus counters: per job, every job, names escaped.
    let m = metrics(&api).await;
    let cost =
        |m: &HashMap<String, f64>, job: &str| m[&format!("cnp_cost_usd_total{{job=\"{job}\"}}")];
    let uncosted = |m: &HashMap<String, f64>, job: &str| {
        m[&format!("cnp_runs_without_cost_total{{job=\"{job}\"}}")]
    };
    let odd_label = "odd \\\"name\\\"\\\\x";
    for (job, c, u) in [
        ("spender", 0.8, 0.0),
        ("cheap", 0.05, 0.0),
        ("silent", 0.0, 1.0),
        ("crasher", 0.0, 1.0),
        (odd_label, 0.25, 0.0),
        ("idle", 0.0, 0.0),
    ] {
        assert!((cost(&m, job) - c).abs() < 1e-9, "{job}: {m:?}");
        assert_eq!(uncosted(&m, job), u, "{job}: {m:?}");
    }
    // The counters go on with the next run.
    run(&api, &spender, "completed").await;
    run(&api, &silent, "completed").await;
    let m = metrics(&api).await;
    assert!((cost(&m, "spender") - 1.2).abs() < 1e-9, "{m:?}");
    assert_eq!(uncosted(&m, "silent"), 2.0, "{m:?}");

    cnp.assert_running();
}
