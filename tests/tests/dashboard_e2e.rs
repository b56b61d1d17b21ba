//! The web dashboard in a real browser: headless Chromium driven over WebDriver (Debian's
//! `chromium` and `chromium-driver`, which scripts/test.sh installs) against the real
//! `cnp serve` with the fake CLI. On a failure, a screenshot of the page is written to
//! `$TMPDIR/cnp-dashboard-failures/` (outside the test's own temp dir, which is removed) and
//! named in the failure message.

mod support;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::FutureExt;
use serde_json::{json, Value};
use support::{ConfigOpts, Env};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const WAIT: Duration = Duration::from_secs(20);

/// chromedriver on a free port, and one browser session on it.
struct Browser {
    driver: Child,
    client: Client,
    shots: PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Browser {
    async fn start(dir: &Path) -> Browser {
        assert!(
            Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists(),
            "the browser tests need Debian's chromium and chromium-driver \
             (scripts/test.sh installs them: apt-get install chromium chromium-driver)"
        );
        let port = free_port();
        // The browser keeps the real clock (Chromium does not start under libfaketime, which
        // the shifted-clock passes put on the tests): the pages count down on the service's
        // clock, which they carry.
        let mut driver = Command::new(CHROMEDRIVER);
        for (k, _) in std::env::vars_os() {
            if k == "LD_PRELOAD" || k.to_string_lossy().starts_with("FAKETIME") {
                driver.env_remove(k);
            }
        }
        let driver = driver
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile = dir.join("chromium-profile");
        std::fs::create_dir_all(&profile).unwrap();
        let caps: serde_json::Map<String, Value> = serde_json::from_value(json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                    "--window-size=1280,800",
                    format!("--user-data-dir={}", profile.display()),
                ]
            }
        }))
        .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        let client = loop {
            let mut b =
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
            match b.capabilities(caps.clone()).connect(&url).await {
                Ok(c) => break c,
                Err(e) if start.elapsed() < WAIT => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot start a browser session through chromedriver: {e}"),
            }
        };
        let shots = std::env::temp_dir().join("cnp-dashboard-failures");
        std::fs::create_dir_all(&shots).unwrap();
        Browser {
            driver,
            client,
            shots,
        }
    }

    /// Runs a test body; on a failure, saves a screenshot and names it in the panic.
    async fn run<F, Fut>(self, name: &str, body: F)
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = ()>,
    {
        let c = self.client.clone();
        let result = std::panic::AssertUnwindSafe(body(c.clone()))
            .catch_unwind()
            .await;
        if let Err(panic) = result {
            let shot = self
                .shots
                .join(format!("{name}-{}.png", std::process::id()));
            let url = c
                .current_url()
                .await
                .map(|u| u.to_string())
                .unwrap_or_default();
            if let Ok(png) = c.screenshot().await {
                let _ = std::fs::write(&shot, png);
            }
            let _ = c.close().await;
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{msg}\n(page {url}; screenshot {})", shot.display());
        }
        let _ = c.close().await;
    }
}

/// A running service with the dashboard, and a browser.
async fn setup(env: &Env) -> (support::Cnp, String, String, Browser) {
    let mut cnp = env.start();
    let (base, token) = cnp.wait_api(env);
    let browser = Browser::start(&env.root()).await;
    (cnp, base, token, browser)
}

/// Polls `f` until it gives `Some`, or fails naming `what`.
async fn eventually<T, Fut: Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> Fut,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn text_of(c: &Client, css: &str) -> Option<String> {
    c.find(Locator::Css(css)).await.ok()?.text().await.ok()
}

async fn login(c: &Client, base: &str, token: &str) {
    c.goto(&format!("{base}/ui/login")).await.unwrap();
    let field = c.find(Locator::Id("secret")).await.unwrap();
    field.send_keys(token).await.unwrap();
    c.find(Locator::Css("form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually("the jobs page after login", || async {
        text_of(c, "main h1")
            .await
            .filter(|t| t.starts_with("Jobs"))
    })
    .await;
}

async fn api(
    base: &str,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Value {
    let mut req = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    assert!(res.status().is_success(), "{path}: {}", res.status());
    res.json().await.unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_is_required_and_a_wrong_token_is_refused() {
    let env = Env::new(ConfigOpts::default());
    let (_cnp, base, token, browser) = setup(&env).await;
    browser
        .run("login", |c| async move {
            // A fresh browser gets the login page, wherever it goes.
            c.goto(&format!("{base}/ui/jobs/new")).await.unwrap();
            let url = c.current_url().await.unwrap();
            assert_eq!(url.path(), "/ui/login", "{url}");
            assert_eq!(c.title().await.unwrap(), "Log in · cnp");
            // A wrong token: refused, still on the login page, with a message.
            c.find(Locator::Id("secret"))
                .await
                .unwrap()
                .send_keys("not-the-token")
                .await
                .unwrap();
            c.find(Locator::Css("form button"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            let err = eventually("the login error", || async {
                text_of(&c, "#secret-error").await
            })
            .await;
            assert!(err.contains("not the API token"), "{err}");
            assert_eq!(c.current_url().await.unwrap().path(), "/ui/login");
            // The right one: back where the user was going.
            c.find(Locator::Id("secret"))
                .await
                .unwrap()
                .send_keys(&token)
                .await
                .unwrap();
            c.find(Locator::Css("form button"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            eventually("the form the user asked for", || async {
                text_of(&c, "main h1").await.filter(|t| t == "New job")
            })
            .await;
            // The session cookie is HttpOnly: the page's scripts cannot read it.
            let cookies = c.execute("return document.cookie", vec![]).await.unwrap();
            assert_eq!(
                cookies,
                json!(""),
                "the session cookie must not be readable by scripts"
            );
            // Logging out ends the session.
            c.find(Locator::Css("form.logout button"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            eventually("the login page after logout", || async {
                c.find(Locator::Id("secret")).await.ok()
            })
            .await;
            c.goto(&format!("{base}/ui/")).await.unwrap();
            assert_eq!(c.current_url().await.unwrap().path(), "/ui/login");
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_job_made_in_the_form_is_listed_with_its_next_fire_time() {
    let env = Env::new(ConfigOpts::default());
    let (_cnp, base, token, browser) = setup(&env).await;
    browser
        .run("create-job", |c| async move {
            login(&c, &base, &token).await;
            c.goto(&format!("{base}/ui/jobs/new")).await.unwrap();
            c.find(Locator::Id("f-name"))
                .await
                .unwrap()
                .send_keys("Nightly review")
                .await
                .unwrap();
            c.find(Locator::Id("f-prompt"))
                .await
                .unwrap()
                .send_keys("Review the diff")
                .await
                .unwrap();
            c.find(Locator::Css("#f-stype option[value=cron]"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            let expr = c.find(Locator::Id("f-expr")).await.unwrap();
            expr.send_keys("61 * * * *").await.unwrap();
            // The live preview names the problem before the form is sent.
            let preview = eventually("the preview's error about the minute", || async {
                text_of(&c, "#schedule-preview .field-error")
                    .await
                    .filter(|t| t.contains("minute"))
            })
            .await;
            assert!(preview.contains("61"), "{preview}");
            c.find(Locator::Css("#job-form button[type=submit]"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            // The validator's error sits next to the field; nothing typed is lost.
            let err = eventually("the field error", || async {
                text_of(&c, "#err-schedule-expression").await
            })
            .await;
            assert!(err.contains("minute"), "{err}");
            let name = c
                .find(Locator::Id("f-name"))
                .await
                .unwrap()
                .prop("value")
                .await
                .unwrap();
            assert_eq!(name.as_deref(), Some("Nightly review"));
            let prompt = c
                .find(Locator::Id("f-prompt"))
                .await
                .unwrap()
                .prop("value")
                .await
                .unwrap();
            assert_eq!(prompt.as_deref(), Some("Review the diff"));
            // Fixed, with a zone: five next runs in the preview, then created.
            let expr = c.find(Locator::Id("f-expr")).await.unwrap();
            expr.clear().await.unwrap();
            expr.send_keys("0 9 * * *").await.unwrap();
            c.find(Locator::Id("f-tz"))
                .await
                .unwrap()
                .send_keys("Europe/Berlin")
                .await
                .unwrap();
            eventually("five preview fire times", || async {
                let n = c
                    .find_all(Locator::Css("#schedule-preview li"))
                    .await
                    .ok()?
                    .len();
                (n == 5).then_some(())
            })
            .await;
            c.find(Locator::Css("#job-form button[type=submit]"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            eventually("the new job's page", || async {
                text_of(&c, "main h1")
                    .await
                    .filter(|t| t.starts_with("Nightly review"))
            })
            .await;
            let fires = c.find_all(Locator::Css("ol.fires li")).await.unwrap();
            assert_eq!(fires.len(), 5);
            let first = fires[0].text().await.unwrap();
            assert!(first.contains("09:00 CE"), "Berlin wall time: {first}");
            // Listed, with its next fire time in its zone.
            c.goto(&format!("{base}/ui/")).await.unwrap();
            let row = c
                .find(Locator::XPath("//tr[td/a[text()='Nightly review']]"))
                .await
                .unwrap();
            let text = row.text().await.unwrap();
            assert!(
                text.contains("09:00 CE") && text.contains("Europe/Berlin"),
                "{text}"
            );
            let job = &api(
                &base,
                &token,
                reqwest::Method::GET,
                "/api/jobs/Nightly%20review",
                None,
            )
            .await;
            assert_eq!(job["schedule"]["expression"], "0 9 * * *");
            assert_eq!(job["schedule"]["timezone"], "Europe/Berlin");
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_now_shows_log_lines_while_the_run_goes() {
    let env = Env::new(ConfigOpts::default());
    let (_cnp, base, token, browser) = setup(&env).await;
    api(
        &base,
        &token,
        reqwest::Method::POST,
        "/api/jobs",
        Some(json!({
            "name": "slow", "prompt": "take your time",
            "execution": { "environment": { "FAKE_CLAUDE_SLEEP_MS": "4000" } }
        })),
    )
    .await;
    browser
        .run("live-log", |c| async move {
            login(&c, &base, &token).await;
            c.find(Locator::LinkText("slow"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            c.find(Locator::XPath("//button[text()='Run now']"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            // The init line arrives over the WebSocket while the run is still going.
            eventually("a live log line while running", || async {
                let log = text_of(&c, "#log").await?;
                let status = c
                    .find(Locator::Id("run-status"))
                    .await
                    .ok()?
                    .attr("data-status")
                    .await
                    .ok()??;
                (log.contains("session started") && (status == "running" || status == "queued"))
                    .then_some(())
            })
            .await;
            let state = text_of(&c, "#log-state").await.unwrap_or_default();
            assert_eq!(state, "live");
            // And the page shows the end by itself.
            eventually("the finished run", || async {
                let status = text_of(&c, "#run-status").await?;
                status.contains("completed").then_some(())
            })
            .await;
            let answer =
                eventually("the answer", || async { text_of(&c, ".markdown").await }).await;
            assert!(answer.contains("Hello from fake claude"), "{answer}");
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_usage_limit_shows_the_banner_with_countdown_and_deferred_runs() {
    let env = Env::new(ConfigOpts::default());
    let (_cnp, base, token, browser) = setup(&env).await;
    let reset = chrono::Utc::now().timestamp() + 2 * 3600;
    let reset = reset.to_string();
    api(
        &base,
        &token,
        reqwest::Method::POST,
        "/api/jobs",
        Some(json!({
            "name": "limited", "prompt": "hit the limit",
            // The limit once; the run released when the cooldown is cleared succeeds.
            "execution": { "environment": {
                "FAKE_CLAUDE_SCENARIOS": "usage-limit,ok", "FAKE_CLAUDE_RESET_EPOCH": reset,
                "FAKE_CLAUDE_STATE_DIR": env.root().join("fake-state").display().to_string(),
            } }
        })),
    )
    .await;
    api(
        &base,
        &token,
        reqwest::Method::POST,
        "/api/jobs",
        Some(json!({ "name": "waiting", "prompt": "later" })),
    )
    .await;
    api(
        &base,
        &token,
        reqwest::Method::POST,
        "/api/jobs/limited/execute",
        None,
    )
    .await;
    support::wait_until("the cooldown", || {
        let rt = tokio::runtime::Handle::current();
        let v = tokio::task::block_in_place(|| {
            rt.block_on(api(
                &base,
                &token,
                reqwest::Method::GET,
                "/api/cooldown",
                None,
            ))
        });
        (v["active"] == json!(true)).then_some(())
    });
    // A run that comes due during the cooldown is deferred.
    api(
        &base,
        &token,
        reqwest::Method::POST,
        "/api/jobs/waiting/execute",
        None,
    )
    .await;
    browser
        .run("cooldown", |c| async move {
            login(&c, &base, &token).await;
            // Both are held: the run that hit the limit (to run again after it) and the other.
            let banner = eventually("the banner with two deferred runs", || async {
                let t = text_of(&c, "#cooldown-banner").await?;
                t.contains("2 run(s) deferred").then_some(t)
            })
            .await;
            assert!(banner.contains("Usage-limit cooldown"), "{banner}");
            // The countdown ticks.
            let a = text_of(&c, "time.countdown").await.unwrap();
            assert!(a.contains("(in 1h") || a.contains("(in 2h"), "{a}");
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let b = text_of(&c, "time.countdown").await.unwrap();
            assert_ne!(a, b, "the countdown moves");
            // On every page, and it can be cleared from there.
            c.goto(&format!("{base}/ui/stats")).await.unwrap();
            assert!(text_of(&c, "#cooldown-banner")
                .await
                .unwrap()
                .contains("deferred"));
            c.find(Locator::XPath("//button[text()='Clear cooldown']"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            let notice = eventually("the cleared notice", || async {
                text_of(&c, ".notice").await
            })
            .await;
            assert!(notice.contains("Cooldown cleared"), "{notice}");
            assert!(text_of(&c, "#cooldown-banner .banner").await.is_none());
        })
        .await;
}

/// A job over its budget: the stats page's Budgets table shows it held with what it spent, and
/// the job's page says why its runs are held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_over_its_budget_is_shown_held_with_the_reason() {
    let env = Env::new(ConfigOpts::default());
    let (_cnp, base, token, browser) = setup(&env).await;
    let job = api(
        &base,
        &token,
        reqwest::Method::POST,
        "/api/jobs",
        Some(json!({
            "name": "spender", "prompt": "spend",
            "execution": { "environment": { "FAKE_CLAUDE_COST_USD": "0.6" } },
            "budget": { "daily_usd": 1.0 }
        })),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_owned();
    // $0.60 spent, then a run expected to cost ~$0.60 more is held by the $1.00 cap.
    for wanted in ["spent", "held"] {
        api(
            &base,
            &token,
            reqwest::Method::POST,
            "/api/jobs/spender/execute",
            None,
        )
        .await;
        support::wait_until(wanted, || {
            let rt = tokio::runtime::Handle::current();
            let v = tokio::task::block_in_place(|| {
                rt.block_on(api(
                    &base,
                    &token,
                    reqwest::Method::GET,
                    "/api/budget",
                    None,
                ))
            });
            let s = &v["jobs"][0];
            let done = match wanted {
                "spent" => s["windows"][0]["spent_usd"].as_f64() == Some(0.6),
                _ => s["held_runs"] == json!(1),
            };
            done.then_some(())
        });
    }
    browser
        .run("budget", |c| async move {
            login(&c, &base, &token).await;
            c.goto(&format!("{base}/ui/stats")).await.unwrap();
            let table = eventually("the budgets table", || async {
                text_of(&c, "#budgets table").await
            })
            .await;
            assert!(table.contains("spender"), "{table}");
            assert!(table.contains("last 24 h"), "{table}");
            assert!(
                table.contains("$0.60") && table.contains("$1.00"),
                "{table}"
            );
            assert!(
                table.contains("held") && table.contains("1 run(s)"),
                "{table}"
            );
            assert!(table.contains("daily budget of $1.00"), "{table}");
            c.goto(&format!("{base}/ui/jobs/{id}")).await.unwrap();
            let banner = text_of(&c, "#budget-held").await.expect("the held banner");
            assert!(banner.contains("1 run(s) held"), "{banner}");
            assert!(banner.contains("$0.60 spent in the last 24 h"), "{banner}");
            // Raising the cap in the job's form lets the held run go.
            c.goto(&format!("{base}/ui/jobs/{id}/edit")).await.unwrap();
            let daily = c.find(Locator::Id("f-daily")).await.unwrap();
            assert_eq!(daily.prop("value").await.unwrap().as_deref(), Some("1.0"));
            daily.clear().await.unwrap();
            daily.send_keys("5").await.unwrap();
            c.find(Locator::Css("#job-form button[type=submit]"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            eventually("the held run released and done", || async {
                let v = api(&base, &token, reqwest::Method::GET, "/api/budget", None).await;
                let s = &v["jobs"][0];
                (s["budget"]["daily_usd"] == json!(5.0)
                    && s["held_runs"] == json!(0)
                    && s["windows"][0]["spent_usd"].as_f64() == Some(1.2))
                .then_some(())
            })
            .await;
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_and_output_render_as_text() {
    let env = Env::new(ConfigOpts::default());
    let (_cnp, base, token, browser) = setup(&env).await;
    let name = "<img src=x onerror=alert(1)>";
    let output = "**bold** <img src=x onerror=alert(3)>\n\n<script>alert(2)</script>";
    let job = api(
        &base,
        &token,
        reqwest::Method::POST,
        "/api/jobs",
        Some(json!({
            "name": name, "prompt": "<b>prompt</b>",
            "execution": { "environment": { "FAKE_CLAUDE_RESULT": output } }
        })),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_owned();
    let exec = api(
        &base,
        &token,
        reqwest::Method::POST,
        &format!("/api/jobs/{id}/execute"),
        None,
    )
    .await;
    let exec_id = exec["execution_id"].as_str().unwrap().to_owned();
    support::wait_until("the run's end", || {
        let rt = tokio::runtime::Handle::current();
        let v = tokio::task::block_in_place(|| {
            rt.block_on(api(
                &base,
                &token,
                reqwest::Method::GET,
                &format!("/api/executions/{exec_id}"),
                None,
            ))
        });
        (v["status"] == json!("completed")).then_some(())
    });
    // The stats the charts are drawn from: today has the one completed run and its cost.
    let daily = api(
        &base,
        &token,
        reqwest::Method::GET,
        "/api/jobs/stats/daily?days=7",
        None,
    )
    .await;
    let days = daily["daily"].as_array().unwrap();
    assert_eq!(days.len(), 7);
    assert_eq!(days[6]["completed"], 1, "{daily}");
    assert!(days[6]["cost_usd"].as_f64().unwrap() > 0.0);
    assert_eq!(daily["jobs"][0]["name"], name);
    let bad = reqwest::Client::new()
        .get(format!("{base}/api/jobs/stats/daily?days=0"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
    browser
        .run("xss", |c| async move {
            login(&c, &base, &token).await;
            let link = c.find(Locator::Css("td.name a")).await.unwrap();
            assert_eq!(
                link.text().await.unwrap(),
                name,
                "the name is shown as text"
            );
            assert!(c
                .find_all(Locator::Css("td.name img"))
                .await
                .unwrap()
                .is_empty());
            c.goto(&format!("{base}/ui/jobs/{id}")).await.unwrap();
            assert!(text_of(&c, "main h1").await.unwrap().contains(name));
            assert_eq!(text_of(&c, "pre.prompt").await.unwrap(), "<b>prompt</b>");
            c.goto(&format!("{base}/ui/runs/{exec_id}")).await.unwrap();
            let answer = c.find(Locator::Css(".markdown")).await.unwrap();
            let html = answer.html(true).await.unwrap();
            assert!(
                !html.contains("<script") && !html.contains("<img"),
                "{html}"
            );
            let text = answer.text().await.unwrap();
            assert!(text.contains("<script>alert(2)</script>"), "{text}");
            assert!(
                html.contains("<strong>bold</strong>"),
                "Markdown still renders: {html}"
            );
            // No script ran: an alert would be open now.
            assert!(c.get_alert_text().await.is_err(), "an injected script ran");
            let marker = c
                .execute("return typeof window.__cnp_xss", vec![])
                .await
                .unwrap();
            assert_eq!(marker, json!("undefined"));
        })
        .await;
}

// ---------------------------------------------------------------------------------------------
// The same server over plain HTTP: headers, cookies, CSRF, origins, paging, bulk actions.

/// A browser-like client without a browser: keeps the session cookie, reads the CSRF token.
struct Http {
    base: String,
    http: reqwest::Client,
    cookie: Option<String>,
}

impl Http {
    fn new(base: &str) -> Http {
        Http {
            base: base.to_owned(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookie: None,
        }
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        let mut r = self.http.get(format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            r = r.header("cookie", c);
        }
        r.send().await.unwrap()
    }

    async fn post(
        &self,
        path: &str,
        form: &[(&str, &str)],
        origin: Option<&str>,
    ) -> reqwest::Response {
        let body: String = form_urlencoded(form);
        let mut r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(c) = &self.cookie {
            r = r.header("cookie", c);
        }
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send().await.unwrap()
    }

    async fn login(&mut self, token: &str) -> String {
        let res = self
            .post("/ui/login", &[("secret", token), ("next", "/ui/")], None)
            .await;
        assert_eq!(res.status(), 303);
        let set = res
            .headers()
            .get("set-cookie")
            .expect("a session cookie")
            .to_str()
            .unwrap()
            .to_owned();
        self.cookie = Some(set.split(';').next().unwrap().to_owned());
        set
    }

    /// The CSRF token of the session (from any page's forms).
    async fn csrf(&self) -> String {
        let html = self.get("/ui/").await.text().await.unwrap();
        let at = html.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
        html[at..at + html[at..].find('"').unwrap()].to_owned()
    }
}

fn form_urlencoded(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_send_strict_headers_and_refuse_forged_or_foreign_forms() {
    let env = Env::new(ConfigOpts::default());
    let mut cnp = env.start();
    let (base, token) = cnp.wait_api(&env);
    let mut h = Http::new(&base);
    // Without a session: pages redirect to the login, forms are refused.
    let res = h.get("/ui/jobs/new").await;
    assert_eq!(res.status(), 303);
    assert_eq!(
        res.headers()["location"],
        "/ui/login?next=%2Fui%2Fjobs%2Fnew"
    );
    assert_eq!(
        h.post("/ui/jobs/bulk", &[("action", "pause")], None)
            .await
            .status(),
        401
    );
    // The login sets an HttpOnly, SameSite=Strict cookie; a wrong secret gets none.
    let wrong = h.post("/ui/login", &[("secret", "nope")], None).await;
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    let set = h.login(&token).await;
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/"),
        "{set}"
    );
    let page = h.get("/ui/").await;
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"));
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    let html = page.text().await.unwrap();
    assert!(
        !html.contains("<script>") && !html.contains(" onclick="),
        "no inline script"
    );
    // An unknown page is a page too (not the API's JSON), with the same headers.
    let missing = h.get("/ui/no-such-page").await;
    assert_eq!(missing.status(), 404);
    assert!(missing.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(missing.headers().contains_key("content-security-policy"));
    let missing = h.get("/ui/jobs/no-such-job").await;
    assert_eq!(missing.status(), 404);
    assert!(missing.text().await.unwrap().contains("job `no-such-job`"));
    api(
        &base,
        &token,
        reqwest::Method::POST,
        "/api/jobs",
        Some(json!({ "name": "a", "prompt": "x" })),
    )
    .await;
    let csrf = h.csrf().await;
    // A form without the token, with a stale one, or from another site: refused, nothing done.
    for (form, origin) in [
        (vec![("action", "pause"), ("job", "a")], None),
        (
            vec![("action", "pause"), ("job", "a"), ("csrf", "stale")],
            None,
        ),
        (
            vec![("action", "pause"), ("job", "a"), ("csrf", csrf.as_str())],
            Some("http://evil.example"),
        ),
    ] {
        let res = h.post("/ui/jobs/bulk", &form, origin).await;
        assert_eq!(res.status(), 403, "{form:?} {origin:?}");
    }
    let job = api(&base, &token, reqwest::Method::GET, "/api/jobs/a", None).await;
    assert_eq!(job["status"], "active");
    // With it: done.
    let res = h
        .post(
            "/ui/jobs/bulk",
            &[("action", "pause"), ("job", "a"), ("csrf", &csrf)],
            Some(&base),
        )
        .await;
    assert_eq!(res.status(), 303);
    let job = api(&base, &token, reqwest::Method::GET, "/api/jobs/a", None).await;
    assert_eq!(job["status"], "paused");
    // The API takes the session too, for reads; a write needs the CSRF header.
    assert_eq!(h.get("/api/jobs/a").await.status(), 200);
    let post = |csrf: Option<&str>| {
        let mut r = h
            .http
            .post(format!("{base}/api/jobs/a/resume"))
            .header("cookie", h.cookie.clone().unwrap());
        if let Some(c) = csrf {
            r = r.header("x-csrf-token", c);
        }
        r.send()
    };
    assert_eq!(post(None).await.unwrap().status(), 403);
    assert_eq!(post(Some(&csrf)).await.unwrap().status(), 200);
    // Logout ends the session on the server: the old cookie no longer works.
    let res = h.post("/ui/logout", &[("csrf", &csrf)], None).await;
    assert_eq!(res.status(), 303);
    assert!(res.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    assert_eq!(h.get("/ui/").await.status(), 303);
    assert_eq!(h.get("/api/jobs/a").await.status(), 401);
    // A login page that would send the user elsewhere afterwards sends them home instead.
    let res = h
        .post(
            "/ui/login",
            &[("secret", &token), ("next", "//evil.example/")],
            None,
        )
        .await;
    assert_eq!(res.headers()["location"], "/ui/");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jobs_table_pages_searches_and_pauses_in_bulk() {
    let env = Env::new(ConfigOpts::default());
    let mut cnp = env.start();
    let (base, token) = cnp.wait_api(&env);
    for i in 0..120 {
        let tag = if i % 2 == 0 { "even" } else { "odd" };
        api(
            &base,
            &token,
            reqwest::Method::POST,
            "/api/jobs",
            Some(json!({
                "name": format!("job-{i:03}"), "prompt": "x", "tags": [tag],
                "schedule": { "type": "interval", "every": "1h" },
            })),
        )
        .await;
    }
    let mut h = Http::new(&base);
    h.login(&token).await;
    let page = h.get("/ui/").await.text().await.unwrap();
    assert!(page.contains("page 1 of 3"), "50 a page");
    assert!(
        page.contains(">job-000<") && page.contains(">job-049<") && !page.contains(">job-050<")
    );
    let page3 = h.get("/ui/?page=3").await.text().await.unwrap();
    assert!(page3.contains(">job-119<") && !page3.contains(">job-099<"));
    let desc = h.get("/ui/?sort=name&dir=desc").await.text().await.unwrap();
    assert!(desc.find(">job-119<").unwrap() < desc.find(">job-118<").unwrap());
    let found = h.get("/ui/?q=job-01").await.text().await.unwrap();
    assert!(
        found.contains("Jobs <span class=\"count\">10</span>"),
        "job-010 … job-019"
    );
    let odd = h.get("/ui/?tag=odd&q=job-00").await.text().await.unwrap();
    assert!(odd.contains(">job-001<") && !odd.contains(">job-002<"));
    // Search text is data, never SQL or markup.
    let weird = h.get("/ui/?q=%25%27%22%3Cb%3E").await;
    assert_eq!(weird.status(), 200);
    let weird = weird.text().await.unwrap();
    assert!(weird.contains("No job matches.") && !weird.contains("<b>"));
    // Bulk pause of the selected ones, then the status filter shows them.
    let csrf = h.csrf().await;
    let ids: Vec<String> = {
        let list = api(
            &base,
            &token,
            reqwest::Method::GET,
            "/api/jobs?tag=even&limit=1000",
            None,
        )
        .await;
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let mut form: Vec<(&str, &str)> = vec![("csrf", &csrf), ("action", "pause")];
    form.extend(ids.iter().map(|i| ("job", i.as_str())));
    assert_eq!(h.post("/ui/jobs/bulk", &form, None).await.status(), 303);
    let paused = h.get("/ui/?status=paused").await.text().await.unwrap();
    assert!(
        paused.contains("Jobs <span class=\"count\">60</span>"),
        "the 60 even ones"
    );
    let active = api(
        &base,
        &token,
        reqwest::Method::GET,
        "/api/jobs?status=active&limit=1000",
        None,
    )
    .await;
    assert_eq!(active["total"], 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_jobs_are_read_only_and_trust_loopback_is_opt_in() {
    let env = Env::new(ConfigOpts::default());
    env.manifest(
        "report.yaml",
        "name: from-file\nprompt: hi\nschedule: { type: manual }\n",
    );
    let config = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        format!("{config}\n[dashboard]\ntrust_loopback = true\n"),
    )
    .unwrap();
    let mut cnp = env.start();
    let (base, token) = cnp.wait_api(&env);
    // trust_loopback: a browser on this machine is logged in without the token …
    let h = Http::new(&base);
    let res = h.get("/ui/").await;
    assert_eq!(res.status(), 200);
    let cookie = res.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    // … but not through a name that is not loopback (DNS rebinding).
    let res = h
        .http
        .get(format!("{base}/ui/"))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    let h = Http {
        cookie: Some(cookie),
        ..Http::new(&base)
    };
    let job = api(
        &base,
        &token,
        reqwest::Method::GET,
        "/api/jobs/from-file",
        None,
    )
    .await;
    let id = job["id"].as_str().unwrap();
    let page = h.get(&format!("/ui/jobs/{id}")).await.text().await.unwrap();
    assert!(
        page.contains("report.yaml") && !page.contains("/edit\">Edit"),
        "read-only: names its file"
    );
    let csrf = h.csrf().await;
    let res = h
        .post(
            &format!("/ui/jobs/{id}/edit"),
            &[("csrf", &csrf), ("name", "x")],
            None,
        )
        .await;
    assert_eq!(res.status(), 400);
    assert!(res.text().await.unwrap().contains("report.yaml"));
    let res = h
        .post(&format!("/ui/jobs/{id}/delete"), &[("csrf", &csrf)], None)
        .await;
    assert_eq!(res.status(), 400);
    assert_eq!(
        api(
            &base,
            &token,
            reqwest::Method::GET,
            "/api/jobs/from-file",
            None
        )
        .await["name"],
        "from-file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_dashboard_serves_nothing() {
    let env = Env::new(ConfigOpts::default());
    let config = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        format!("{config}\n[dashboard]\nenabled = false\n"),
    )
    .unwrap();
    let mut cnp = env.start();
    let (base, token) = cnp.wait_api(&env);
    let h = Http::new(&base);
    assert_eq!(h.get("/ui/login").await.status(), 404);
    assert_eq!(h.get("/").await.status(), 404);
    let res = reqwest::Client::new()
        .get(format!("{base}/ui/"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

/// Not part of the suite: makes `docs/img/dashboard-*.png` for the README from a service with
/// a few jobs and runs. `cargo test -p cnp-tests --test dashboard_e2e -- --ignored screenshots`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn screenshots() {
    let env = Env::new(ConfigOpts::default());
    let (_cnp, base, token, browser) = setup(&env).await;
    let jobs = [
        (
            "Nightly review",
            json!({"type": "cron", "expression": "0 2 * * *", "timezone": "Europe/Berlin"}),
            "ok",
        ),
        (
            "Triage failing tests",
            json!({"type": "cron", "expression": "30 7 * * 1-5", "timezone": "America/New_York"}),
            "ok",
        ),
        (
            "Dependency audit",
            json!({"type": "interval", "every": "6h"}),
            "error",
        ),
        ("Release notes", json!({"type": "manual"}), "ok"),
    ];
    let mut last = String::new();
    for (name, schedule, scenario) in jobs {
        let job = api(&base, &token, reqwest::Method::POST, "/api/jobs", Some(json!({
            "name": name, "prompt": format!("{name}: do the work and report."), "schedule": schedule,
            "tags": ["demo"], "execution": { "environment": { "FAKE_CLAUDE_SCENARIO": scenario } },
        }))).await;
        let id = job["id"].as_str().unwrap().to_owned();
        for _ in 0..4 {
            let e = api(
                &base,
                &token,
                reqwest::Method::POST,
                &format!("/api/jobs/{id}/execute"),
                None,
            )
            .await;
            last = e["execution_id"].as_str().unwrap().to_owned();
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/img");
    std::fs::create_dir_all(&out).unwrap();
    browser
        .run("screenshots", |c| async move {
            login(&c, &base, &token).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            std::fs::write(
                out.join("dashboard-jobs.png"),
                c.screenshot().await.unwrap(),
            )
            .unwrap();
            c.goto(&format!("{base}/ui/runs/{last}")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
            std::fs::write(out.join("dashboard-run.png"), c.screenshot().await.unwrap()).unwrap();
            // A phone's width, for a look (not committed).
            c.set_window_size(390, 844).await.unwrap();
            c.goto(&format!("{base}/ui/")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            let phone = std::env::temp_dir().join("cnp-dashboard-phone.png");
            std::fs::write(&phone, c.screenshot().await.unwrap()).unwrap();
            eprintln!("phone-width screenshot: {}", phone.display());
        })
        .await;
}

// ---------------------------------------------------------------------------------------------
// Workflow passes: the list, a pass drawn as a graph, the links between runs, passes and jobs.

/// Polls the API until `path` answers 200 with a document `ok` accepts.
async fn api_until(
    base: &str,
    token: &str,
    path: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    eventually(what, || async {
        let res = reqwest::Client::new()
            .get(format!("{base}{path}"))
            .bearer_auth(token)
            .send()
            .await
            .ok()?;
        if !res.status().is_success() {
            return None;
        }
        let v: Value = res.json().await.ok()?;
        ok(&v).then_some(v)
    })
    .await
}

fn node<'a>(pass: &'a Value, job_id: &str) -> &'a Value {
    pass["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["job_id"] == json!(job_id))
        .unwrap_or_else(|| panic!("no node {job_id} in {pass}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_is_drawn_as_a_graph_with_statuses_edges_and_links() {
    let env = Env::new(ConfigOpts::default());
    let (_cnp, base, token, browser) = setup(&env).await;
    let hostile = "<img src=x onerror=alert(1)>";
    let post = |body: Value| {
        let (base, token) = (base.clone(), token.clone());
        async move {
            let j = api(
                &base,
                &token,
                reqwest::Method::POST,
                "/api/jobs",
                Some(body),
            )
            .await;
            j["id"].as_str().unwrap().to_owned()
        }
    };
    // A diamond: A; B (hostile name) and C after A (C only on A's failure: skipped); D after
    // B and C (C on `always`), slow enough to watch the pass run.
    let a = post(json!({"name": "A", "prompt": "first"})).await;
    let b = post(json!({"name": hostile, "prompt": "second", "depends_on": ["A"]})).await;
    let c = post(
        json!({"name": "C", "prompt": "on failure", "depends_on": [{"job": "A", "on": "failure"}]}),
    )
    .await;
    let d = post(json!({
        "name": "D", "prompt": "last",
        "depends_on": [{"job": b, "on": "success", "when": "status == 'completed'"}, {"job": "C", "on": "always"}],
        "execution": {"environment": {"FAKE_CLAUDE_SLEEP_MS": "4000"}},
    }))
    .await;
    let exec = api(
        &base,
        &token,
        reqwest::Method::POST,
        &format!("/api/jobs/{a}/execute"),
        None,
    )
    .await;
    let pass_id = exec["execution_id"].as_str().unwrap().to_owned();
    // The pass exists from A's end; wait until D runs.
    let pass = api_until(
        &base,
        &token,
        &format!("/api/workflows/{pass_id}"),
        "D running",
        |p| {
            p["nodes"].as_array().is_some_and(|ns| {
                ns.iter()
                    .any(|n| n["job_id"] == json!(d) && n["status"] == json!("running"))
            })
        },
    )
    .await;
    let b_exec = node(&pass, &b)["execution_id"].as_str().unwrap().to_owned();
    let a_exec = node(&pass, &a)["execution_id"].as_str().unwrap().to_owned();
    let shot = std::env::temp_dir()
        .join("cnp-dashboard-failures")
        .join(format!("workflow-pass-{}.png", std::process::id()));
    let (base2, token2, b2, c2, d2) =
        (base.clone(), token.clone(), b.clone(), c.clone(), d.clone());
    browser
        .run("workflow-pass", |cl| async move {
            let (base, token, b, c, d) = (base2, token2, b2, c2, d2);
            login(&cl, &base, &token).await;
            // The list, from the nav.
            cl.find(Locator::Css("header nav a[href='/ui/workflows']"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            eventually("the workflows page", || async {
                text_of(&cl, "main h1")
                    .await
                    .filter(|t| t.starts_with("Workflow passes"))
            })
            .await;
            let first = text_of(&cl, "table.workflows tbody tr td.name")
                .await
                .unwrap();
            assert_eq!(first, "A");
            cl.find(Locator::Css(&format!(
                "table.workflows a[href='/ui/workflows/{pass_id}']"
            )))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
            eventually("the pass page", || async {
                text_of(&cl, "main h1")
                    .await
                    .filter(|t| t.starts_with("Pass"))
            })
            .await;
            // While D runs: the cancel button is there, and the page follows the pass by
            // itself (reloads when its runs move) until it is finished.
            let status = cl
                .find(Locator::Id("pass-status"))
                .await
                .unwrap()
                .attr("data-status")
                .await
                .unwrap();
            if status.as_deref() == Some("running") {
                assert!(text_of(&cl, "main form button.danger")
                    .await
                    .unwrap()
                    .contains("Cancel pass"));
            }
            eventually("the pass page to show the pass finished (live)", || async {
                let el = cl.find(Locator::Id("pass-status")).await.ok()?;
                (el.attr("data-status").await.ok()?? == "finished").then_some(())
            })
            .await;
            assert!(cl
                .find_all(Locator::Css("main form button.danger"))
                .await
                .unwrap()
                .is_empty());
            // The drawing: 4 nodes, 4 edges, statuses as words.
            let nodes = cl
                .find_all(Locator::Css("svg#wf-graph g.node"))
                .await
                .unwrap();
            assert_eq!(nodes.len(), 4);
            let edges = cl
                .find_all(Locator::Css("svg#wf-graph g.edge path"))
                .await
                .unwrap();
            assert_eq!(edges.len(), 4);
            let status_of = |job: String| {
                let cl = cl.clone();
                async move {
                    cl.find(Locator::Css(&format!(
                        "svg#wf-graph g.node[data-job='{job}'] .node-status"
                    )))
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap()
                }
            };
            assert!(status_of(d.clone()).await.contains("completed"));
            assert!(status_of(c.clone()).await.contains("skipped"));
            assert!(status_of(b.clone()).await.contains("✔ completed"));
            // The unsatisfied edge (A → C, on failure) is marked, with its reason in the title.
            let bad = cl
                .find_all(Locator::Css("svg#wf-graph g.edge[data-verdict='bad']"))
                .await
                .unwrap();
            assert_eq!(bad.len(), 1);
            assert_eq!(
                bad[0].attr("data-to").await.unwrap().as_deref(),
                Some(c.as_str())
            );
            let label = bad[0]
                .find(Locator::Css("text"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert!(label.contains("✗") && label.contains("failure"), "{label}");
            let title = bad[0]
                .find(Locator::Css("title"))
                .await
                .unwrap()
                .html(true)
                .await
                .unwrap();
            assert!(title.contains("not satisfied"), "{title}");
            // The `when` is on its edge's label.
            let when = cl
                .find(Locator::Css(&format!(
                    "svg#wf-graph g.edge[data-to='{d}'][data-from='{b}'] text"
                )))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert!(
                when.contains("success") && when.contains("when status =="),
                "{when}"
            );
            // The hostile name is text (in the drawing and in the table), and nothing ran.
            let name = cl
                .find(Locator::Css(&format!(
                    "svg#wf-graph g.node[data-job='{b}'] a.node-name text"
                )))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert_eq!(name, shorten_like_the_page(hostile));
            assert!(cl
                .find_all(Locator::Css("main img"))
                .await
                .unwrap()
                .is_empty());
            let cell = cl
                .find(Locator::Css(&format!(
                    "table.wf-nodes a[href='/ui/jobs/{b}']"
                )))
                .await
                .unwrap();
            assert_eq!(cell.text().await.unwrap(), hostile);
            assert!(cl.get_alert_text().await.is_err(), "an injected script ran");
            std::fs::write(&shot, cl.screenshot().await.unwrap()).unwrap();
            eprintln!("workflow pass screenshot: {}", shot.display());
            // A node links to its run; the run page links back to the pass and its upstream.
            let run_link = cl
                .find(Locator::Css(&format!(
                    "svg#wf-graph g.node[data-job='{b}'] a.node-run"
                )))
                .await
                .unwrap();
            assert_eq!(
                run_link.attr("href").await.unwrap(),
                Some(format!("/ui/runs/{b_exec}"))
            );
            cl.goto(&format!("{base}/ui/runs/{b_exec}")).await.unwrap();
            let p = text_of(&cl, "p.workflow-link").await.unwrap();
            assert!(
                p.contains("Part of workflow pass") && p.contains("started by A"),
                "{p}"
            );
            cl.find(Locator::Css(&format!(
                "p.workflow-link a[href='/ui/runs/{a_exec}']"
            )))
            .await
            .unwrap();
            cl.find(Locator::Css(&format!(
                "p.workflow-link a[href='/ui/workflows/{pass_id}']"
            )))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
            eventually("back on the pass page", || async {
                text_of(&cl, "main h1")
                    .await
                    .filter(|t| t.starts_with("Pass"))
            })
            .await;
            // D's page: what it depends on (with on/when) and its passes; A's: its downstream.
            cl.goto(&format!("{base}/ui/jobs/{d}")).await.unwrap();
            let wf = text_of(&cl, "#workflow").await.unwrap();
            assert!(
                wf.contains(hostile) && wf.contains("on always") && wf.contains("when status =="),
                "{wf}"
            );
            cl.find(Locator::Css(&format!(
                "#workflow a[href='/ui/workflows/{pass_id}']"
            )))
            .await
            .unwrap();
            cl.goto(&format!("{base}/ui/jobs/{a}", a = pass_id_job(&pass)))
                .await
                .unwrap();
            let wf = text_of(&cl, "#workflow").await.unwrap();
            assert!(
                wf.contains("C — on failure") && wf.contains(hostile),
                "{wf}"
            );
            // The list filtered by job.
            cl.goto(&format!("{base}/ui/workflows?job=D"))
                .await
                .unwrap();
            assert_eq!(
                cl.find_all(Locator::Css("table.workflows tbody tr td.name a"))
                    .await
                    .unwrap()
                    .len(),
                1
            );
            cl.goto(&format!("{base}/ui/workflows?job=nobody"))
                .await
                .unwrap();
            assert!(text_of(&cl, "p.banner.bad")
                .await
                .unwrap()
                .contains("nobody"));
        })
        .await;
}

fn shorten_like_the_page(s: &str) -> String {
    if s.chars().count() <= 24 {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(23).collect();
        t.push('…');
        t
    }
}

fn pass_id_job(pass: &Value) -> String {
    pass["root_job_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_pages_send_strict_headers_and_cancel_only_with_the_token() {
    let env = Env::new(ConfigOpts::default());
    let mut cnp = env.start();
    let (base, token) = cnp.wait_api(&env);
    let a = api(
        &base,
        &token,
        reqwest::Method::POST,
        "/api/jobs",
        Some(json!({"name": "up", "prompt": "x"})),
    )
    .await;
    api(
        &base,
        &token,
        reqwest::Method::POST,
        "/api/jobs",
        Some(json!({
            "name": "down", "prompt": "y", "depends_on": ["up"],
            "execution": {"environment": {"FAKE_CLAUDE_SLEEP_MS": "60000"}},
        })),
    )
    .await;
    let a = a["id"].as_str().unwrap().to_owned();
    let exec = api(
        &base,
        &token,
        reqwest::Method::POST,
        &format!("/api/jobs/{a}/execute"),
        None,
    )
    .await;
    let pass_id = exec["execution_id"].as_str().unwrap().to_owned();
    api_until(
        &base,
        &token,
        &format!("/api/workflows/{pass_id}"),
        "down running",
        |p| {
            p["nodes"].as_array().is_some_and(|ns| {
                ns.iter()
                    .any(|n| n["name"] == json!("down") && n["status"] == json!("running"))
            })
        },
    )
    .await;
    let mut h = Http::new(&base);
    // No session: to the login page; the cancel form is refused.
    assert_eq!(
        h.get(&format!("/ui/workflows/{pass_id}")).await.status(),
        303
    );
    assert_eq!(
        h.post(&format!("/ui/workflows/{pass_id}/cancel"), &[], None)
            .await
            .status(),
        401
    );
    h.login(&token).await;
    for path in [
        "/ui/workflows".to_owned(),
        format!("/ui/workflows/{pass_id}"),
    ] {
        let page = h.get(&path).await;
        assert_eq!(page.status(), 200, "{path}");
        let csp = page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            csp.contains("style-src 'self'") && !csp.contains("unsafe-inline"),
            "{csp}"
        );
        assert_eq!(page.headers()["x-frame-options"], "DENY");
        let html = page.text().await.unwrap();
        assert!(
            !html.contains("<script>") && !html.contains(" style=") && !html.contains(" onclick="),
            "{path}"
        );
    }
    let page = h
        .get(&format!("/ui/workflows/{pass_id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains("<svg class=\"wf-graph\"") && page.contains("Cancel pass"));
    assert_eq!(h.get("/ui/workflows/no-such-pass").await.status(), 404);
    let csrf = h.csrf().await;
    let origin = Some(base.as_str());
    let cancel = format!("/ui/workflows/{pass_id}/cancel");
    assert_eq!(
        h.post(&cancel, &[("csrf", "forged")], origin)
            .await
            .status(),
        403
    );
    assert_eq!(
        h.post(&cancel, &[("csrf", &csrf)], Some("http://evil.example"))
            .await
            .status(),
        403
    );
    let res = h.post(&cancel, &[("csrf", &csrf)], origin).await;
    assert_eq!(res.status(), 303);
    assert_eq!(
        res.headers()["location"],
        format!("/ui/workflows/{pass_id}?done=cancelled").as_str()
    );
    let p = api_until(
        &base,
        &token,
        &format!("/api/workflows/{pass_id}"),
        "the pass cancelled",
        |p| {
            p["status"] == json!("cancelled")
                && p["nodes"]
                    .as_array()
                    .is_some_and(|ns| ns.iter().all(|n| n["status"] != json!("running")))
        },
    )
    .await;
    assert!(p["cancelled_at"].is_string());
    let page = h
        .get(&format!("/ui/workflows/{pass_id}?done=cancelled"))
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains("Pass cancelled") && !page.contains("Cancel pass</button>"));
    // The job form's depends_on box: checked by the same validator, errors at the box.
    let form = |deps: &'static str| {
        vec![
            ("csrf", csrf.clone()),
            ("name", "third".to_owned()),
            ("prompt_source", "text".to_owned()),
            ("prompt", "z".to_owned()),
            ("schedule.type", "manual".to_owned()),
            ("depends_on", deps.to_owned()),
        ]
    };
    let send = |f: Vec<(&'static str, String)>| {
        let (h, base) = (&h, &base);
        async move {
            let pairs: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
            h.post("/ui/jobs/new", &pairs, Some(base.as_str())).await
        }
    };
    let res = send(form("[nope]")).await;
    assert_eq!(res.status(), 422);
    let html = res.text().await.unwrap();
    assert!(
        html.contains("depends_on[0].job") && html.contains("aria-invalid=\"true\""),
        "{html}"
    );
    let res = send(form("[unclosed")).await;
    assert_eq!(res.status(), 422);
    let res = send(form("- job: down\n  on: always\n")).await;
    assert_eq!(res.status(), 303);
    let j = api(&base, &token, reqwest::Method::GET, "/api/jobs/third", None).await;
    assert_eq!(j["depends_on"][0]["job"], json!("down"), "{j}");
    assert_eq!(j["depends_on"][0]["on"], json!("always"), "{j}");
    let id = j["id"].as_str().unwrap();
    let edit = h
        .get(&format!("/ui/jobs/{id}/edit"))
        .await
        .text()
        .await
        .unwrap();
    assert!(edit.contains("job: down"), "the form shows the edges again");
}

// ---------------------------------------------------------------------------------------------
// The API reference page.

/// `/ui/api` in the browser: reached from the navigation, it lists every operation of the
/// document `/api/openapi.json` serves (its anchors are the operation ids), a schema a body
/// links to is on the page, and the document downloads with the login session alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_reference_lists_every_operation_of_the_document() {
    let env = Env::new(ConfigOpts::default());
    let (_cnp, base, token, browser) = setup(&env).await;
    let doc = api(
        &base,
        &token,
        reqwest::Method::GET,
        "/api/openapi.json",
        None,
    )
    .await;
    let mut ids = Vec::new();
    for item in doc["paths"].as_object().unwrap().values() {
        for op in item.as_object().unwrap().values() {
            if let Some(id) = op["operationId"].as_str() {
                ids.push(id.to_owned());
            }
        }
    }
    assert!(ids.len() > 40, "{ids:?}");
    browser
        .run("api-reference", |c| async move {
            login(&c, &base, &token).await;
            c.find(Locator::LinkText("API"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            eventually("the reference page", || async {
                text_of(&c, "main h1")
                    .await
                    .filter(|t| t.starts_with("cnp admin API"))
            })
            .await;
            let shown: Value = c
                .execute(
                    "return Array.from(document.querySelectorAll('article.api-op'))
                        .map(a => [a.id, a.querySelector('h3').textContent]);",
                    vec![],
                )
                .await
                .unwrap();
            let shown: Vec<(String, String)> = serde_json::from_value(shown).unwrap();
            for id in &ids {
                let (_, heading) = shown
                    .iter()
                    .find(|(a, _)| *a == format!("op-{id}"))
                    .unwrap_or_else(|| panic!("operation {id} is not on the page"));
                assert!(heading.contains(id.as_str()), "{heading}");
            }
            assert_eq!(shown.len(), ids.len(), "{shown:?}");
            // The create-job body links to the JobSpec schema, which lists its fields.
            c.find(Locator::Css("#op-createJob a[href='#schema-JobSpec']"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            let fields = text_of(&c, "#schema-JobSpec table").await.unwrap();
            for f in ["name", "schedule", "priority", "depends_on", "webhook"] {
                assert!(fields.contains(f), "JobSpec lacks {f}: {fields}");
            }
            // The document downloads with the session cookie (no token in the page).
            let status: Value = c
                .execute_async(
                    "const done = arguments[0];
                     fetch('/api/openapi.json').then(r => r.json().then(j => done([r.status, j.openapi])));",
                    vec![],
                )
                .await
                .unwrap();
            assert_eq!(status, json!([200, "3.1.0"]));
        })
        .await;
}
