//! Job templates on the real `cnp serve` binary: template files hot-reloaded with the jobs made
//! from them re-rendered (history kept), load-time errors, and the `/api/templates` routes with
//! `cnp template …`.

mod support;

use std::path::PathBuf;

use reqwest::StatusCode;
use serde_json::{json, Value};
use support::api::Api;
use support::{ConfigOpts, Env, DEADLINE};

fn assert_error(v: &Value, code: &str, field: Option<&str>) {
    assert_eq!(v["error"]["code"], code, "{v}");
    match field {
        Some(f) => assert_eq!(v["error"]["field"], f, "{v}"),
        None => assert!(v["error"]["field"].is_null(), "{v}"),
    }
}

fn write_template(env: &Env, name: &str, yaml: &str) -> PathBuf {
    std::fs::create_dir_all(env.jobs.join("templates")).unwrap();
    env.manifest(&format!("templates/{name}.yaml"), yaml)
}

fn review_template(verb: &str) -> String {
    format!(
        "description: Review a checkout\n\
         vars:\n  repo: {{ description: the checkout }}\n  branch: {{ default: main }}\n\
         job:\n  prompt: \"{verb} {{{{ branch }}}} of {{{{ repo }}}}\"\n  \
         schedule: {{ type: manual }}\n  priority: 4\n  tags: [review, \"{{{{ branch }}}}\"]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_change_re_renders_its_jobs_and_keeps_their_history() {
    let env = Env::new(ConfigOpts::default());
    env.enable_api();
    let tpl = write_template(&env, "review", &review_template("Review"));
    let jobs_file = env.manifest(
        "reviews.yaml",
        "- name: review-x\n  template: review\n  vars: { repo: /src/x }\n  priority: 8\n\
         - name: plain\n  prompt: hi\n",
    );
    let mut cnp = env.start();
    let (base, token) = cnp.wait_api(&env);
    cnp.wait_log("watching the manifest folder");
    let api = Api::new(base, token);

    // Made from the template: rendered, the override applied, the template remembered.
    let (s, job) = api.get("/api/jobs/review-x").await;
    assert_eq!(s, StatusCode::OK, "{job}");
    assert_eq!(job["prompt"], "Review main of /src/x");
    assert_eq!(job["priority"], 8, "the override replaces the template's");
    assert_eq!(job["tags"], json!(["review", "main"]));
    assert_eq!(job["template"]["name"], "review");
    assert_eq!(job["template"]["vars"]["repo"], "/src/x");
    let id = job["id"].as_str().unwrap().to_owned();
    // A job made through the API from the file's template follows it too.
    let (s, made) = api
        .post(
            "/api/templates/review/instantiate",
            json!({"name": "review-api", "vars": {"repo": "/src/api", "branch": "dev"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{made}");
    assert_eq!(made["prompt"], "Review dev of /src/api");
    api.run_to_completion("review-x").await;
    api.run_to_completion("review-api").await;

    // Edit the template: both jobs are re-rendered in place, their history kept.
    std::fs::write(&tpl, review_template("Audit")).unwrap();
    let job = api
        .wait("/api/jobs/review-x", "review-x re-rendered", |j| {
            j["prompt"] == "Audit main of /src/x"
        })
        .await;
    assert_eq!(job["id"], id.as_str(), "same job");
    assert_eq!(job["priority"], 8);
    assert_eq!(api.execution_count("review-x").await, 1, "history kept");
    let made2 = api
        .wait("/api/jobs/review-api", "review-api re-rendered", |j| {
            j["prompt"] == "Audit dev of /src/api"
        })
        .await;
    assert_eq!(made2["id"], made["id"]);
    assert_eq!(api.execution_count("review-api").await, 1, "history kept");
    // The next run uses the new prompt.
    api.run_to_completion("review-x").await;
    let (_, page) = api.get("/api/jobs/review-x/executions").await;
    assert_eq!(page["items"][0]["prompt"], "Audit main of /src/x", "{page}");

    // A broken template file: the error names the file and line; the last good version stays.
    std::fs::write(
        &tpl,
        "vars: { repo: {} }\njob:\n  prompt: \"{{ repo }} {{ nobody }}\"\n",
    )
    .unwrap();
    let line = cnp.wait_log_line("manifest error", "templates/review.yaml:3");
    assert!(
        line.contains("job.prompt") && line.contains("nobody"),
        "{line}"
    );
    let (_, job) = api.get("/api/jobs/review-x").await;
    assert_eq!(job["prompt"], "Audit main of /src/x");
    cnp.assert_running();

    // A template needing a variable the job file does not give: the job file's error names the
    // file, the job and the variable; the job keeps its last good definition.
    std::fs::write(
        &tpl,
        "vars: { repo: {}, owner: {} }\njob:\n  prompt: \"{{ owner }} checks {{ repo }}\"\n",
    )
    .unwrap();
    let line = cnp.wait_log_line("manifest error", "vars.owner");
    assert!(line.contains(&jobs_file.display().to_string()), "{line}");
    assert!(line.contains("job `review-x`"), "{line}");
    // The API-made job gives `branch`, which this version no longer has.
    let line = cnp.wait_log_line("manifest error", "job `review-api` (template `review`)");
    assert!(line.contains("vars.branch"), "{line}");
    let (_, job) = api.get("/api/jobs/review-x").await;
    assert_eq!(job["prompt"], "Audit main of /src/x");
    assert!(
        env.job("plain").is_some(),
        "the file's other job is untouched"
    );

    // The job file gives the variable: applied.
    env.manifest(
        "reviews.yaml",
        "- name: review-x\n  template: review\n  vars: { repo: /src/x, owner: ann }\n",
    );
    let job = api
        .wait("/api/jobs/review-x", "review-x with owner", |j| {
            j["prompt"] == "ann checks /src/x"
        })
        .await;
    assert_eq!(job["id"], id.as_str());
    assert_eq!(job["priority"], 5, "the override was removed");
    assert_eq!(api.execution_count("review-x").await, 2);

    // Removing the template file while jobs use it keeps the template and the jobs.
    std::fs::remove_file(&tpl).unwrap();
    let line = cnp.wait_log_line("manifest error", "no longer defined by this file");
    assert!(line.contains("review-x"), "{line}");
    let (s, _) = api.get("/api/templates/review").await;
    assert_eq!(s, StatusCode::OK, "kept while jobs use it");
    assert!(env.job("review-x").is_some());
    cnp.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_through_the_api_and_the_cli() {
    let env = Env::new(ConfigOpts::default());
    env.enable_api();
    let mut cnp = env.start();
    let (base, token) = cnp.wait_api(&env);
    let api = Api::new(base, token);
    let template = |prompt: &str| {
        json!({
            "name": "nightly",
            "description": "Nightly check",
            "vars": {"repo": {"description": "checkout"}, "depth": {"default": "3"}},
            "job": {
                "prompt": prompt,
                "schedule": {"type": "manual"},
                "execution": {"working_directory": "/tmp", "environment": {"DEPTH": "{{ depth }}"}},
            },
        })
    };

    let (s, t) = api
        .post("/api/templates", template("Check {{ repo }}"))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    assert_eq!(t["name"], "nightly");
    assert!(t["source"].is_null());
    assert_eq!(t["jobs"], json!([]));
    let (s, e) = api
        .post("/api/templates", template("Check {{ repo }}"))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_error(&e, "conflict", None);
    let mut bad = template("Check {{ rpo }}");
    bad["name"] = json!("bad");
    let (s, e) = api.post("/api/templates", bad).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_error(&e, "invalid", Some("job.prompt"));

    // Instantiate: missing and unknown variables are named; overrides replace fields.
    let (s, e) = api
        .post(
            "/api/templates/nightly/instantiate",
            json!({"name": "n1", "vars": {}}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_error(&e, "invalid", Some("vars.repo"));
    let (s, e) = api
        .post(
            "/api/templates/nightly/instantiate",
            json!({"name": "n1", "vars": {"repo": "/a", "colour": "red"}}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_error(&e, "invalid", Some("vars.colour"));
    let (s, e) = api
        .post(
            "/api/templates/nope/instantiate",
            json!({"name": "n1", "vars": {}}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_error(&e, "not_found", None);
    let (s, job) = api
        .post(
            "/api/templates/nightly/instantiate",
            json!({"name": "n1", "vars": {"repo": "/a"}, "overrides": {"priority": 9}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{job}");
    assert_eq!(job["prompt"], "Check /a");
    assert_eq!(job["priority"], 9);
    assert_eq!(job["execution_options"]["environment"]["DEPTH"], "3");
    assert_eq!(job["template"]["overrides"]["priority"], 9);
    api.run_to_completion("n1").await;

    // PUT: the jobs made from it are re-rendered, history kept.
    let (s, t) = api
        .put("/api/templates/nightly", template("Inspect {{ repo }}"))
        .await;
    assert_eq!(s, StatusCode::OK, "{t}");
    assert_eq!(t["rerendered"], json!(["n1"]));
    assert_eq!(t["jobs"], json!(["n1"]));
    let (_, j) = api.get("/api/jobs/n1").await;
    assert_eq!(j["prompt"], "Inspect /a");
    assert_eq!(j["priority"], 9, "overrides stay");
    assert_eq!(j["id"], job["id"]);
    assert_eq!(api.execution_count("n1").await, 1);

    // A PUT that a job would not survive changes nothing.
    let mut breaking = template("{{ owner }} inspects {{ repo }}");
    breaking["vars"]["owner"] = json!({});
    let (s, e) = api.put("/api/templates/nightly", breaking).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_error(&e, "invalid", Some("vars.owner"));
    assert!(
        e["error"]["message"].as_str().unwrap().contains("`n1`"),
        "{e}"
    );
    let (_, t) = api.get("/api/templates/nightly").await;
    assert_eq!(t["job"]["prompt"], "Inspect {{ repo }}");

    // The CLI.
    let out = env.run_cli(&["template", "list"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("nightly") && stdout.contains("repo*"),
        "{stdout}"
    );
    let out = env.run_cli(&[
        "template",
        "instantiate",
        "nightly",
        "--name",
        "n2",
        "--var",
        "repo=/b",
        "--set",
        "priority=2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, j) = api.get("/api/jobs/n2").await;
    assert_eq!(
        (j["prompt"].as_str(), j["priority"].as_u64()),
        (Some("Inspect /b"), Some(2))
    );
    let out = env.run_cli(&["template", "instantiate", "nightly", "--name", "n3"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("vars.repo"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = env.run_cli(&["template", "show", "nightly"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        stdout.contains("Inspect {{ repo }}") && stdout.contains("n1, n2"),
        "{stdout}"
    );

    // A job edited in full through the API is detached from its template.
    let (s, j) = api
        .put(
            "/api/jobs/n2",
            json!({"name": "n2", "prompt": "by hand", "schedule": {"type": "manual"}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{j}");
    assert!(j["template"].is_null(), "{j}");

    // Delete: refused while a job is made from it.
    let (s, e) = api.delete("/api/templates/nightly").await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(
        e["error"]["message"].as_str().unwrap().contains("1 job"),
        "{e}"
    );
    let (s, _) = api.delete("/api/jobs/n1").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = api.delete("/api/templates/nightly").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, page) = api.get("/api/templates").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(page["total"], 0, "{page}");
    cnp.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_leaves_jobs_made_from_templates_alone() {
    let env = Env::new(ConfigOpts::default());
    env.enable_api();
    write_template(&env, "review", &review_template("Review"));
    env.manifest(
        "reviews.yaml",
        "name: review-x\ntemplate: review\nvars: { repo: /src/x }\n",
    );
    let mut cnp = env.start();
    let (base, token) = cnp.wait_api(&env);
    let api = Api::new(base, token);
    let (s, made) = api
        .post(
            "/api/templates/review/instantiate",
            json!({"name": "review-api", "vars": {"repo": "/src/api"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{made}");
    let (_, file_job) = api.get("/api/jobs/review-x").await;
    // (read back: the store keeps milliseconds)
    let (_, made) = api.get("/api/jobs/review-api").await;

    cnp.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(cnp.wait_exit(DEADLINE).success());
    let mut cnp = env.start();
    let (base, token) = cnp.wait_api(&env);
    let api = Api::new(base, token);
    let log = cnp.log();
    assert!(
        log.contains("unchanged=1") && log.contains("errors=0"),
        "{log}"
    );
    assert!(!log.contains("re-rendered"), "{log}");
    let (_, again) = api.get("/api/jobs/review-x").await;
    assert_eq!(again["updated_at"], file_job["updated_at"]);
    assert_eq!(again["template"], file_job["template"]);
    let (_, again) = api.get("/api/jobs/review-api").await;
    assert_eq!(again["updated_at"], made["updated_at"]);
    assert_eq!(again["prompt"], "Review main of /src/api");
}
