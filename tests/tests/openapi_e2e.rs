//! The admin API's OpenAPI document checked from outside, against the real `cnp serve` with the
//! fake CLI:
//!
//! - `openapi-spec-validator` (PyPI) accepts the document served at `/api/openapi.json`;
//! - `schemathesis` (PyPI) sends every operation generated valid and invalid requests (its
//!   examples, coverage and fuzzing phases) and checks each answer with
//!   `not_a_server_error`, `status_code_conformance`, `content_type_conformance` and
//!   `response_schema_conformance`: 0 failures. Path parameters name data the test made first
//!   (a job with runs and a workflow pass, prompts, templates, a webhook), so the operations
//!   answer with real bodies rather than 404s.
//!
//! `POST /api/backup` writes a file wherever its body says on the service's machine, so random
//! absolute paths are not sent to it: it gets its one example, pointed into the test's folder.
//!
//! scripts/test.sh installs both tools. `CNP_SCHEMATHESIS_EXAMPLES` (default 40) caps the
//! examples per operation; `CNP_SCHEMATHESIS_SEED` replays a run (the seed is printed).

mod support;

use std::path::Path;
use std::process::{Command, Output};

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::api::Api;
use support::{ConfigOpts, Env};

const CHECKS: &str =
    "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance";

/// `python3 -c <code> <args>`, failing the test with a way out when the module is missing.
fn python(module: &str, code: &str, args: &[&str], dir: &Path) -> Output {
    let probe = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .expect("python3");
    assert!(
        probe.status.success(),
        "this test needs {module} from PyPI: run scripts/test.sh, which installs it, or \
         `python3 -m pip install schemathesis openapi-spec-validator`"
    );
    Command::new("python3")
        .arg("-c")
        .arg(code)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("python3")
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn schemathesis(args: &[&str], dir: &Path) -> Output {
    python(
        "schemathesis",
        "import sys; from schemathesis.cli import schemathesis; sys.argv[0] = 'schemathesis'; \
         sys.exit(schemathesis())",
        args,
        dir,
    )
}

/// Makes what the path parameters will name: a job with a finished run that started a
/// workflow pass, jobs, prompts and templates to change or delete, a job with a webhook.
/// Returns the run's execution id (also the pass's id).
async fn seed(api: &Api) -> String {
    for (id, content) in [("seed-prompt", "Say hi"), ("seed-prompt-delete", "Bye")] {
        let (s, b) = api
            .post(
                "/api/prompts",
                json!({"id": id, "title": "Seed", "content": content, "tags": ["seed"]}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }
    for job in [
        json!({"name": "seed-job", "prompt_id": "seed-prompt", "tags": ["seed"],
               "retry": {"max_attempts": 2, "strategy": "fixed", "initial_interval": 1}}),
        json!({"name": "seed-down", "prompt": "Summarize: {{ upstream.result }}",
               "depends_on": ["seed-job"]}),
        json!({"name": "seed-job-delete", "prompt": "x"}),
        json!({"name": "seed-hook", "prompt": "x {{ payload.a }}",
               "webhook": {"secret": "${CNP_TEST_HOOK_SECRET}"}}),
    ] {
        let (s, b) = api.post("/api/jobs", job).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }
    for t in [
        json!({"name": "seed-template", "vars": {"repo": {"default": "main"}},
               "job": {"prompt": "review {{ repo }}"}}),
        json!({"name": "seed-template-delete", "job": {"prompt": "x"}}),
    ] {
        let (s, b) = api.post("/api/templates", t).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }
    let (s, b) = api.post_empty("/api/jobs/seed-job/execute").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    let id = b["execution_id"].as_str().unwrap().to_owned();
    api.wait_execution(&id, "the seed run to end", |e| {
        e["run_status"] == "finished"
    })
    .await;
    api.wait(
        &format!("/api/workflows/{id}"),
        "the pass it started to end",
        |p| p["status"] == "finished",
    )
    .await;
    id
}

/// schemathesis.toml: the token, and per operation the value of its path parameter.
fn config(token: &str, execution: &str) -> String {
    let bindings: [(&[&str], &str, &str); 8] = [
        (
            &[
                "GET /api/jobs/{id}",
                "PUT /api/jobs/{id}",
                "POST /api/jobs/{id}/execute",
                "POST /api/jobs/{id}/pause",
                "POST /api/jobs/{id}/resume",
                "GET /api/jobs/{id}/executions",
            ],
            "path.id",
            "seed-job",
        ),
        (&["DELETE /api/jobs/{id}"], "path.id", "seed-job-delete"),
        (
            &[
                "GET /api/executions/{id}",
                "POST /api/executions/{id}/cancel",
                "GET /api/executions/{id}/logs",
                "GET /api/executions/{id}/notifications",
                "GET /api/workflows/{id}",
                "POST /api/workflows/{id}/cancel",
            ],
            "path.id",
            execution,
        ),
        (
            &["GET /api/prompts/{id}", "PUT /api/prompts/{id}"],
            "path.id",
            "seed-prompt",
        ),
        (
            &["DELETE /api/prompts/{id}"],
            "path.id",
            "seed-prompt-delete",
        ),
        (
            &[
                "GET /api/templates/{name}",
                "PUT /api/templates/{name}",
                "POST /api/templates/{name}/instantiate",
            ],
            "path.name",
            "seed-template",
        ),
        (
            &["DELETE /api/templates/{name}"],
            "path.name",
            "seed-template-delete",
        ),
        (&["POST /api/hooks/{job}"], "path.job", "seed-hook"),
    ];
    let mut out = format!("headers = {{ Authorization = \"Bearer {token}\" }}\n");
    for (names, key, value) in bindings {
        // Several filters in one [[operations]] select operations matching any of them.
        out += &format!(
            "[[operations]]\ninclude-name = {}\nparameters = {{ \"{key}\" = \"{value}\" }}\n",
            serde_json::to_string(names).unwrap()
        );
    }
    out
}

/// The summary's line counting the test cases (`N generated, N passed`).
fn cases(out: &str) -> (u64, u64) {
    let line = out
        .lines()
        .rev()
        .find(|l| l.contains(" generated, "))
        .unwrap_or_else(|| panic!("no summary in schemathesis' output:\n{out}"));
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    (nums[0], nums.get(1).copied().unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_valid_and_every_operation_conforms_to_it() {
    let env = Env::new(ConfigOpts::default());
    let mut cnp = env.start_with(&[("CNP_TEST_HOOK_SECRET", "seed-secret")]);
    let (base, token) = cnp.wait_api(&env);
    let api = Api::new(base.clone(), token.clone());
    let started = std::time::Instant::now();
    let execution = seed(&api).await;
    println!("seeded in {:?}", started.elapsed());
    let dir = env.root();

    // The document, as served.
    let (s, doc) = api.get("/api/openapi.json").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    let doc_file = dir.join("openapi.json");
    std::fs::write(&doc_file, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let v = python(
        "openapi_spec_validator",
        "import sys; from openapi_spec_validator.__main__ import main; sys.exit(main())",
        &[doc_file.to_str().unwrap()],
        &dir,
    );
    assert!(v.status.success(), "openapi-spec-validator: {}", text(&v));
    assert!(text(&v).contains("OK"), "{}", text(&v));

    // Every response and request body is typed: no bare `object` where a schema belongs.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for (status, r) in op["responses"].as_object().unwrap() {
                let schema = &r["content"]["application/json"]["schema"];
                if path != "/api/openapi.json" && !schema.is_null() {
                    assert_ne!(
                        schema,
                        &json!({"type": "object"}),
                        "{method} {path} {status}: an untyped response"
                    );
                }
            }
        }
    }

    std::fs::write(dir.join("schemathesis.toml"), config(&token, &execution)).unwrap();
    let examples = std::env::var("CNP_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "40".into());
    let seed = std::env::var("CNP_SCHEMATHESIS_SEED").ok();
    let url = format!("{base}/api/openapi.json");
    let mut args = vec![
        "run",
        &url,
        "--checks",
        CHECKS,
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        &examples,
        "--exclude-path",
        "/api/backup",
        "--no-color",
        "--generation-database",
        "none",
        "--request-timeout",
        "30",
    ];
    if let Some(seed) = &seed {
        args.extend(["--seed", seed]);
    }
    let run = schemathesis(&args, &dir);
    let out = text(&run);
    println!("{out}\nschemathesis done at {:?}", started.elapsed());
    let (generated, passed) = cases(&out);
    assert!(
        run.status.success() && generated == passed,
        "schemathesis found failures:\n{out}"
    );
    // Every documented operation was tested, with real volume: all but the backup (below) and
    // the document's own route, which schemathesis leaves out of what it loaded.
    let operations = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|i| i.as_object().unwrap().keys())
        .filter(|m| ["get", "put", "post", "delete", "patch"].contains(&m.as_str()))
        .count();
    let tested = operations - 2;
    assert!(
        out.contains(&format!("Selected: {tested}/{}", tested + 1))
            && out.contains(&format!("Tested: {tested}")),
        "not every operation was tested ({operations} documented):\n{out}"
    );
    assert!(generated > 1_000, "{generated} cases:\n{out}");

    // The backup: its example only, aimed into the test's folder.
    let mut doc = doc;
    let target = dir.join("backup-by-schemathesis.db");
    doc["components"]["schemas"]["BackupRequest"]["example"] =
        json!({"path": target.to_str().unwrap(), "replace": true});
    let backup_doc = dir.join("openapi-backup.json");
    std::fs::write(&backup_doc, serde_json::to_vec(&doc).unwrap()).unwrap();
    let run = schemathesis(
        &[
            "run",
            backup_doc.to_str().unwrap(),
            "--url",
            &base,
            "--checks",
            CHECKS,
            "--phases",
            "examples",
            "--include-path",
            "/api/backup",
            "--no-color",
        ],
        &dir,
    );
    let out = text(&run);
    let (generated, passed) = cases(&out);
    assert!(
        run.status.success() && generated >= 1 && generated == passed,
        "schemathesis on POST /api/backup:\n{out}"
    );
    assert!(
        target.is_file(),
        "the example's backup was not written:\n{out}"
    );

    // The service is still up and answers.
    cnp.assert_running();
    let (s, v) = api.get("/api/jobs/health").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let _: Value = v;
}
