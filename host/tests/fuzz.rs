//! Property-based fuzzing of everything cnp parses from users, files and the CLI: cron
//! expressions and their next fire, manifests and the config (random, huge, deeply nested,
//! non-UTF-8 and duplicate-key text), the CLI's stream-json output (random splits, truncated
//! lines, garbage, a 10 MB line) and user templates (loops bounded in time and size). Each
//! property runs a fixed number of cases (`CASES_*`, reported in docs/reliability.md) with
//! proptest's deterministic seed per test, so the suite stays reproducible and in its time
//! budget. The API's request bodies and query strings are fuzzed against the real service in
//! tests/tests/api_fuzz_e2e.rs.

use std::io::Write;

use chrono::{DateTime, Datelike, Offset, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use cnp::executor::output::StreamParser;
use cnp::model::Schedule;
use cnp::schedule::{CompiledSchedule, CronCache};
use proptest::prelude::*;
use proptest::test_runner::{Config as PConfig, FileFailurePersistence};

const CASES_CRON: u32 = 5_000;
const CASES_CRON_TEXT: u32 = 5_000;
const CASES_MANIFEST: u32 = 2_000;
const CASES_CONFIG: u32 = 2_000;
const CASES_STREAM: u32 = 1_000;
const CASES_TEMPLATE: u32 = 300;

fn config(cases: u32) -> PConfig {
    PConfig {
        cases,
        // Deterministic: no regression files written into the tree, a fixed seed per test.
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        rng_algorithm: proptest::test_runner::RngAlgorithm::ChaCha,
        ..PConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Cron

/// One cron field: `*`, `N`, `a-b`, `*/s`, `a-b/s`, or a list of those, with the values it
/// stands for. `*` covers `lo..=full` (the field's whole range: day-of-month `*` is 1–31);
/// explicit numbers stay in `lo..=hi` (days up to 28, so that every month has them).
fn field(lo: u32, hi: u32, full: u32) -> impl Strategy<Value = (String, Vec<u32>)> {
    let item = prop_oneof![
        (lo..=hi).prop_map(move |n| (n.to_string(), vec![n])),
        (lo..=hi, lo..=hi).prop_map(move |(a, b)| {
            let (a, b) = (a.min(b), a.max(b));
            (format!("{a}-{b}"), (a..=b).collect())
        }),
        (1..=(full - lo + 1).min(30))
            .prop_map(move |s| { (format!("*/{s}"), (lo..=full).step_by(s as usize).collect()) }),
        (lo..=hi, lo..=hi, 1u32..5).prop_map(move |(a, b, s)| {
            let (a, b) = (a.min(b), a.max(b));
            (
                format!("{a}-{b}/{s}"),
                (a..=b).step_by(s as usize).collect(),
            )
        }),
    ];
    prop_oneof![
        2 => Just(("*".to_owned(), (lo..=full).collect())),
        3 => item.clone(),
        1 => prop::collection::vec(item, 2..4).prop_map(|v| {
            let text = v.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>().join(",");
            let mut set: Vec<u32> = v.into_iter().flat_map(|(_, s)| s).collect();
            set.sort_unstable();
            set.dedup();
            (text, set)
        }),
    ]
}

const ZONES: &[&str] = &[
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "Pacific/Chatham",
    "America/Sao_Paulo",
    "Asia/Tokyo",
];

/// Whether the zone's offset is the same a day before and after `t` (no DST change around it,
/// where cnp moves or folds fire times on purpose: see docs/manifests.md).
fn no_transition_near(tz: Tz, t: DateTime<Utc>) -> bool {
    let off = |t: DateTime<Utc>| tz.offset_from_utc_datetime(&t.naive_utc()).fix();
    off(t - chrono::Duration::days(1)) == off(t + chrono::Duration::days(1))
}

struct Fields {
    minute: Vec<u32>,
    hour: Vec<u32>,
    dom: (bool, Vec<u32>),
    month: Vec<u32>,
    dow: (bool, Vec<u32>),
}

impl Fields {
    /// Vixie cron: when both day fields are restricted, either matching is enough.
    fn matches(&self, t: DateTime<Tz>) -> bool {
        let dom = self.dom.1.contains(&t.day());
        let dow = self.dow.1.contains(&t.weekday().num_days_from_sunday());
        let day = match (self.dom.0, self.dow.0) {
            (true, true) => dom || dow,
            _ => dom && dow,
        };
        t.second() == 0
            && self.minute.contains(&t.minute())
            && self.hour.contains(&t.hour())
            && self.month.contains(&t.month())
            && day
    }
}

proptest! {
    #![proptest_config(config(CASES_CRON))]

    /// A valid expression's next fire is strictly after `now`, matches the expression in its
    /// zone, and no minute between `now` and it matches (checked over up to two days).
    #[test]
    fn cron_next_fire_is_after_now_and_the_first_match(
        (m, h, dom, mon, dow) in (field(0, 59, 59), field(0, 23, 23), field(1, 28, 31), field(1, 12, 12), field(0, 6, 6)),
        zone in prop::sample::select(ZONES),
        now_s in 1_700_000_000i64..2_100_000_000,
    ) {
        let expr = format!("{} {} {} {} {}", m.0, h.0, dom.0, mon.0, dow.0);
        let restricted = |t: &str| !t.starts_with('*');
        let fields = Fields {
            minute: m.1, hour: h.1,
            dom: (restricted(&dom.0), dom.1),
            month: mon.1,
            dow: (restricted(&dow.0), dow.1),
        };
        let tz: Tz = zone.parse().unwrap();
        let now = Utc.timestamp_opt(now_s, 0).unwrap();
        let schedule = Schedule::Cron { expression: expr.clone(), timezone: Some(zone.to_string()), misfire: None };
        let compiled = CompiledSchedule::compile(&schedule, tz, now, &CronCache::new());
        let compiled = match compiled {
            Ok(c) => c,
            // Only expressions that can never match are refused (e.g. no such day in any month).
            Err(e) => { prop_assert!(e.to_string().contains("never"), "{expr}: {e}"); return Ok(()); }
        };
        let next = compiled.next_after(now);
        let Some(next) = next else { return Ok(()) };
        prop_assert!(next > now, "{expr} in {zone}: next {next} not after {now}");
        if no_transition_near(tz, next) && no_transition_near(tz, now) {
            prop_assert!(fields.matches(next.with_timezone(&tz)), "{expr} in {zone}: {next} does not match");
            if next - now <= chrono::Duration::days(2) {
                let mut t = now.with_second(0).unwrap() + chrono::Duration::minutes(1);
                while t < next {
                    prop_assert!(!fields.matches(t.with_timezone(&tz)) || !no_transition_near(tz, t),
                        "{expr} in {zone}: {t} matches before the next fire {next}");
                    t += chrono::Duration::minutes(1);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(config(CASES_CRON_TEXT))]

    /// Any text: parsed or refused with a message, never a panic, and a parsed one's next
    /// fire (if any) is after now.
    #[test]
    fn cron_text_never_panics(
        expr in prop_oneof![
            "\\PC{0,40}",
            "[0-9*/,LW#?A-Z -]{0,40}",
            "(@[a-z]{0,10})",
        ],
        zone in prop::sample::select(ZONES),
    ) {
        let tz: Tz = zone.parse().unwrap();
        let now = Utc.timestamp_opt(1_800_000_000, 0).unwrap();
        let schedule = Schedule::Cron { expression: expr.clone(), timezone: None, misfire: None };
        match CompiledSchedule::compile(&schedule, tz, now, &CronCache::new()) {
            Ok(c) => {
                if let Some(n) = c.next_after(now) { prop_assert!(n > now); }
                let _ = c.describe();
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Manifests and the config

/// Random YAML-ish values: scalars, lists and maps with job-like and random keys.
fn value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        "\\PC{0,20}".prop_map(serde_json::Value::from),
    ];
    let key = prop_oneof![
        prop::sample::select(vec![
            "name",
            "prompt",
            "prompt_id",
            "schedule",
            "type",
            "expression",
            "every",
            "at",
            "execution",
            "retry",
            "budget",
            "depends_on",
            "timezone",
            "priority",
            "tags",
            "notifications",
            "channels",
            "worktree",
            "session",
            "daily_usd",
            "max_attempts",
        ])
        .prop_map(str::to_owned),
        "[a-z_]{1,8}",
    ];
    leaf.prop_recursive(4, 40, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::from),
            prop::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn write_tmp(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.path().join(name);
    std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
    p
}

proptest! {
    #![proptest_config(config(CASES_MANIFEST))]

    /// Any manifest text (random bytes, random YAML trees): loaded or refused with an error that
    /// names the file — never a panic.
    #[test]
    fn manifests_never_panic(
        text in prop_oneof![
            "\\PC{0,300}",
            value().prop_map(|v| serde_yaml_ng::to_string(&v).unwrap_or_default()),
            value().prop_map(|v| serde_yaml_ng::to_string(&serde_json::json!([v])).unwrap_or_default()),
        ],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let p = write_tmp(&dir, "job.yaml", text.as_bytes());
        if let Err(e) = cnp::manifest::load_manifest_entries(&p, Tz::UTC) {
            prop_assert!(e.to_string().contains("job.yaml"), "{e}");
        }
    }
}

proptest! {
    #![proptest_config(config(CASES_CONFIG))]

    /// Any config text: loaded or refused with an error naming the file — never a panic.
    #[test]
    fn configs_never_panic(
        text in prop_oneof![
            "\\PC{0,300}",
            value().prop_map(|v| {
                let v = if v.is_object() { v } else { serde_json::json!({ "executor": v }) };
                toml::to_string(&v).unwrap_or_default()
            }),
            "\\[(job_engine|scheduler|executor|budget|database|api|notifications)\\]\n[a-z_]{1,20} = (\"[a-z0-9]{0,8}\"|[0-9-]{1,12}|true|\\[\\])\n",
        ],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let p = write_tmp(&dir, "claude-pilot.toml", text.as_bytes());
        if let Err(e) = cnp::config::Config::load(&p) {
            prop_assert!(e.to_string().contains("claude-pilot.toml"), "{e}");
        }
    }
}

/// The shapes random text rarely reaches: huge, deeply nested, not UTF-8, duplicate keys.
#[test]
fn hostile_manifests_and_configs_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let refused = |name: &str, bytes: &[u8]| -> String {
        let p = write_tmp(&dir, name, bytes);
        let e = if name.ends_with(".toml") {
            cnp::config::Config::load(&p).err().map(|e| e.to_string())
        } else {
            cnp::manifest::load_manifest_entries(&p, Tz::UTC)
                .err()
                .map(|e| e.to_string())
        };
        let e = e.unwrap_or_else(|| panic!("{name} was accepted"));
        assert!(e.contains(name), "{name}: {e}");
        e
    };
    // Deeply nested (a stack overflow would abort the test process).
    refused(
        "deep.yaml",
        format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000)).as_bytes(),
    );
    refused(
        "deep-map.yaml",
        "a:\n"
            .as_bytes()
            .iter()
            .chain(
                (0..20_000)
                    .map(|i| format!("{}b:\n", " ".repeat(i % 200)))
                    .collect::<String>()
                    .as_bytes(),
            )
            .copied()
            .collect::<Vec<u8>>()
            .as_slice(),
    );
    refused(
        "deep.toml",
        format!("x = {}1{}", "[".repeat(100_000), "]".repeat(100_000)).as_bytes(),
    );
    refused(
        "deep-inline.toml",
        format!("x = {}{}", "{a = ".repeat(50_000), "}".repeat(50_000)).as_bytes(),
    );
    // Not UTF-8.
    let e = refused("latin1.yaml", b"name: caf\xe9\nprompt: x\n");
    assert!(
        e.contains("UTF-8") || e.contains("utf-8") || e.contains("stream did not contain valid"),
        "{e}"
    );
    refused(
        "latin1.toml",
        b"[executor]\nclaude_cli_path = \"caf\xe9\"\n",
    );
    // Duplicate keys.
    let e = refused("dup.yaml", b"name: a\nname: b\nprompt: x\n");
    assert!(e.contains("duplicate"), "{e}");
    let e = refused(
        "dup.toml",
        b"[executor]\ndefault_timeout = \"1m\"\ndefault_timeout = \"2m\"\n",
    );
    assert!(e.contains("duplicate"), "{e}");
    // Huge: a 20 MB prompt is refused or taken, quickly and without a panic.
    let huge = format!("name: big\nprompt: \"{}\"\n", "x".repeat(20 << 20));
    let p = write_tmp(&dir, "huge.yaml", huge.as_bytes());
    let _ = cnp::manifest::load_manifest_entries(&p, Tz::UTC);
    // A billion-laughs alias bomb.
    let mut bomb = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (i, prev) in ["b", "c", "d", "e", "f", "g", "h", "i"]
        .iter()
        .zip(["a", "b", "c", "d", "e", "f", "g", "h"])
    {
        bomb.push_str(&format!(
            "{i}: &{i} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
        ));
    }
    bomb.push_str("name: bomb\nprompt: x\n");
    refused("bomb.yaml", bomb.as_bytes());
}

// ---------------------------------------------------------------------------------------------
// The CLI's output

fn samples() -> Vec<String> {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/claude-cli-samples");
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            if let Ok(t) = std::fs::read_to_string(e.path()) {
                out.extend(t.lines().map(str::to_owned));
            }
        }
    }
    // The shapes without the shared samples (a fresh clone has them beside the repository).
    out.push(r#"{"type":"system","subtype":"init","session_id":"s","model":"m"}"#.into());
    out.push(r#"{"type":"assistant","message":{"content":[{"type":"text","text":"hi"}]},"session_id":"s"}"#.into());
    out.push(r#"{"type":"rate_limit_event","rate_limit_info":{"status":"rejected","resetsAt":1800000000}}"#.into());
    out.push(r#"{"type":"result","subtype":"success","is_error":false,"result":"ok","total_cost_usd":0.01,"usage":{"input_tokens":1},"modelUsage":{"m":{"costUSD":0.01}},"session_id":"s"}"#.into());
    out.push(r#"{"type":"result","subtype":"error_during_execution","is_error":true,"api_error_status":429,"result":"You've hit your limit · resets 7am (UTC)"}"#.into());
    out
}

proptest! {
    #![proptest_config(config(CASES_STREAM))]

    /// Real output lines, split at random points, truncated, mixed with garbage, with wrong
    /// types in known fields: the parser and the classifier never panic.
    #[test]
    fn stream_json_never_panics(
        picks in prop::collection::vec((any::<prop::sample::Index>(), 0usize..400, any::<bool>()), 1..30),
        garbage in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 0..5),
        typo in prop::sample::select(vec!["\"total_cost_usd\":\"x\"", "\"is_error\":7", "\"resetsAt\":-1e300", "\"result\":{}", "\"usage\":[]", "\"session_id\":null"]),
    ) {
        let lines = samples();
        let mut parser = StreamParser::new();
        for (i, cut, keep_head) in picks {
            let line = &lines[i.index(lines.len())];
            let cut = line.char_indices().map(|(b, _)| b).nth(cut).unwrap_or(line.len());
            let piece = if keep_head { &line[..cut] } else { &line[cut..] };
            parser.feed_line(piece);
            parser.feed_line(&format!("{{\"type\":\"result\",{typo}}}"));
        }
        for g in garbage {
            parser.feed_line(&String::from_utf8_lossy(&g));
        }
        let exit = cnp::executor::output::ExitSummary::default();
        let _ = cnp::executor::output::classify(&exit, &parser, "stderr \u{0} tail", Utc::now());
    }
}

/// One 10 MB line (a huge assistant message), and one of 10 MB of garbage.
#[test]
fn stream_json_takes_ten_megabyte_lines() {
    let mut parser = StreamParser::new();
    let text = "y".repeat(10 << 20);
    parser.feed_line(&format!(
        r#"{{"type":"assistant","message":{{"content":[{{"type":"text","text":"{text}"}}]}}}}"#
    ));
    parser.feed_line(&"{[\"".repeat(10 << 20 >> 3));
    parser.feed_line(r#"{"type":"result","subtype":"success","is_error":false,"result":"done"}"#);
    assert_eq!(parser.result().unwrap().text.as_deref(), Some("done"));
}

// ---------------------------------------------------------------------------------------------
// User templates

proptest! {
    #![proptest_config(config(CASES_TEMPLATE))]

    /// Prompt templates and `when:` expressions with random loops, filters and garbage: rendered
    /// or refused, in bounded time and size — never a panic, never a hang.
    #[test]
    fn templates_are_bounded(
        body in prop_oneof![
            "\\PC{0,80}",
            (1u32..9, 1u32..9).prop_map(|(a, b)| format!(
                "{{% for i in range({a}0000000) %}}{{% for j in range({b}000000) %}}x{{% endfor %}}{{% endfor %}}")),
            (1u32..30).prop_map(|n| format!("{{{{ '{}' * 100000000 }}}}", "ab".repeat(n as usize))),
            Just("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}".to_owned()),
            Just("{{ upstream.x.result | tojson }}{% for u in upstreams %}{{ u }}{% endfor %}".to_owned()),
        ],
    ) {
        let start = std::time::Instant::now();
        let run = cnp::workflow::UpstreamRun { job_name: "x".into(), ..Default::default() };
        let r = cnp::workflow::render_prompt(&body, "pass", std::slice::from_ref(&run), &[]);
        if let Ok(s) = &r {
            prop_assert!(s.len() <= 1 << 20, "{} bytes", s.len());
        }
        let _ = cnp::workflow::eval_when(&body, &run);
        prop_assert!(start.elapsed() < std::time::Duration::from_secs(5), "{body}: {:?}", start.elapsed());
    }
}

/// Notification templates a user drops in the template folder: a loop bomb or a recursion is a
/// failed render (the built-in text is not silently sent instead of theirs), bounded in time.
#[test]
fn notification_templates_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("failed.txt.j2"),
        "{% for i in range(100000000) %}{% for j in range(100000000) %}x{% endfor %}{% endfor %}",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("succeeded.txt.j2"),
        "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    )
    .unwrap();
    let t = cnp::notify::template::Templates::load(Some(dir.path()));
    for event in ["failed", "succeeded"] {
        let start = std::time::Instant::now();
        let r = t.text(&[event], &serde_json::json!({}));
        assert!(r.is_err(), "{event}: {r:?}");
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "{event}: {:?}",
            start.elapsed()
        );
    }
}

#[allow(dead_code)]
fn _offset_check(t: DateTime<Utc>) -> i32 {
    t.offset().fix().local_minus_utc()
}
