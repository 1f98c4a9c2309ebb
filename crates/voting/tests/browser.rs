//! The pages in a real browser: Debian's `chromium`, driven through `chromedriver` with
//! fantoccini, against `voting up` (the real binary) and against the services on real Redis
//! and PostgreSQL. One browser session votes, another watches the result page update without
//! a reload; a third, with JavaScript off, votes through the plain form.
//!
//! Screenshots land in `target/screenshots/`; with `UPDATE_SCREENSHOTS=1` they are also copied
//! to `docs/screenshots/`, which the README shows. `--nocapture` prints the measured
//! vote-to-screen delay and the page weights.

#[allow(dead_code)]
#[path = "system/helpers.rs"]
mod helpers;

use std::path::{Path, PathBuf};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;
use voting_testkit::{Process, free_port};

use crate::helpers::{SETTLE, TestSystem, UpProcess, eventually};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// The issue's bound on the time from a vote being acknowledged to it showing on the page.
const VOTE_TO_SCREEN: Duration = Duration::from_secs(1);
/// The issue's bound on a page with its assets, compressed.
const PAGE_BUDGET_BYTES: usize = 50 * 1024;
const DESKTOP: (u32, u32) = (1280, 800);
const PHONE: (u32, u32) = (390, 844);

/// Two chromiums at a time already fill this 2-core machine; the browser tests take turns,
/// so the measured delays are the system's and not the scheduler's.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------------
// The tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_work_in_a_browser_with_voting_up() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let data = tempfile::tempdir().unwrap();
    let (vote_port, result_port) = (free_port(), free_port());
    let up = UpProcess::start(data.path(), vote_port, result_port).await;
    let driver = Chromedriver::start().await;

    let results = driver.session(Js::On).await;
    journey(&driver, &results, &up.vote_url, &up.result_url, "up").await;

    // The result service goes away and comes back: the page says so, reconnects by itself and
    // shows the right totals at once.
    drop(up);
    results.wait_for_text("#live", "reconnecting…").await;
    let up = UpProcess::start(data.path(), vote_port, result_port).await;
    let http = reqwest::Client::new();
    let response =
        http.post(format!("{}/api/vote", up.vote_url)).json(&json!({"vote": "a"})).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    results.wait_for_text("#total", "3").await;
    results.wait_for_text("#live", "live").await;
    results.client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_work_in_a_browser_with_redis_and_postgresql() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut system = TestSystem::start().await;
    let driver = Chromedriver::start().await;
    let results = driver.session(Js::On).await;
    journey(&driver, &results, &system.vote_url, &system.result_url, "services").await;
    assert_eq!(system.counts().await, [("a".into(), 0), ("b".into(), 1), ("c".into(), 1)]);

    // Redis down: the vote page says the vote was not counted and offers to try again, which
    // works once Redis is back.
    let voter = driver.session(Js::On).await;
    voter.goto(&system.vote_url).await;
    system.redis.kill();
    voter.click("button.choice[value=a]").await;
    voter
        .wait_for_text(
            "#status",
            "Votes cannot be recorded right now, so yours was not counted. Please try again.",
        )
        .await;
    assert_eq!(voter.attr("button.choice[value=a]", "aria-pressed").await, "false");
    system.redis.restart().unwrap();
    let recorded = eventually(SETTLE, async || {
        let retry = voter.client.find(Locator::Id("retry")).await.unwrap();
        if retry.is_displayed().await.unwrap() {
            retry.click().await.unwrap();
        }
        voter.text("#status").await == "Your vote for Cats is recorded."
    })
    .await;
    assert!(recorded, "after Redis came back the page shows {:?}", voter.text("#status").await);
    results.wait_for_text("#total", "3").await;
    voter.client.close().await.unwrap();
    results.client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_page_with_its_assets_is_under_50_kb_compressed_and_hardened() {
    let _turn = ONE_AT_A_TIME.lock().await; // it binds ports too: see `free_port`
    let data = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let config = voting::up::UpConfig::on_any_loopback_port(data.path(), "a=Cats,b=Dogs,c=Birds").unwrap();
    let up = voting::up::Up::build(config).await.unwrap();
    let vote_url = format!("http://{}", up.vote_addr());
    let result_url = format!("http://{}", up.result_addr());
    let running = tokio::spawn(up.run(shutdown.clone()));
    let http = reqwest::Client::new();

    for (page, url) in [("vote", &vote_url), ("result", &result_url)] {
        let (compressed, plain) = weigh(&http, url).await;
        println!(
            "page weight: {page} page with its assets {compressed} bytes compressed ({plain} bytes plain)"
        );
        assert!(compressed <= PAGE_BUDGET_BYTES, "the {page} page weighs {compressed} bytes compressed");
    }
    shutdown.cancel();
    running.await.unwrap().unwrap();
}

/// What both deployments must do in the browser. `results` is a session on nothing yet; it
/// ends on the result page, still open.
async fn journey(driver: &Chromedriver, results: &Browser, vote_url: &str, result_url: &str, mode: &str) {
    results.goto(result_url).await;
    results.wait_for_text("#live", "live").await;
    assert_eq!(results.text("#total").await, "0");
    assert_eq!(results.client.find_all(Locator::Css("#results li")).await.unwrap().len(), 3);

    // Vote with JavaScript: no reload, and the result page follows within a second.
    let voter = driver.session(Js::On).await;
    voter.goto(vote_url).await;
    assert_eq!(voter.client.find_all(Locator::Css("button.choice")).await.unwrap().len(), 3);
    let marker = voter.client.execute("return window.__marker = Math.random()", vec![]).await.unwrap();
    results.watch_total("1").await;
    voter.click("button.choice[value=a]").await;
    voter.wait_for_text("#status", "Your vote for Cats is recorded.").await;
    let delay = vote_to_screen(&voter, results).await;
    println!("vote-to-screen delay ({mode}): {} ms", delay.as_millis());
    assert!(delay <= VOTE_TO_SCREEN, "the result page showed the vote after {delay:?}");
    let same_page = voter.client.execute("return window.__marker", vec![]).await.unwrap();
    assert_eq!(same_page, marker, "voting reloaded the page");
    assert_eq!(voter.attr("button.choice[value=a]", "aria-pressed").await, "true");
    assert_eq!(results.text("li[data-option=a] .votes").await, "1");
    assert_eq!(results.text("li[data-option=a] .pct").await, "100%");

    // Change the vote: the count moves, the total stays.
    voter.click("button.choice[value=b]").await;
    voter.wait_for_text("#status", "Your vote for Dogs is recorded.").await;
    results.wait_for_text("li[data-option=b] .votes", "1").await;
    results.wait_for_text("li[data-option=a] .votes", "0").await;
    assert_eq!(results.text("#total").await, "1");
    assert_eq!(voter.attr("button.choice[value=a]", "aria-pressed").await, "false");

    // Coming back, the voter sees their choice marked.
    voter.goto(vote_url).await;
    assert_eq!(voter.attr("button.choice[value=b]", "aria-pressed").await, "true");
    assert!(voter.attr("button.choice[value=b]", "class").await.contains("chosen"));

    for browser in [&voter, results] {
        browser.assert_clean().await;
    }
    voter.screenshots(&format!("{mode}-vote"), mode == "up").await;
    voter.client.clone().close().await.unwrap();

    // Without JavaScript the plain form records the vote and answers with the page.
    let no_js = driver.session(Js::Off).await;
    no_js.goto(vote_url).await;
    no_js.click("button.choice[value=c]").await;
    no_js.wait_for_text("#status", "Your vote for Birds is recorded.").await;
    assert_eq!(no_js.attr("button.choice[value=c]", "aria-pressed").await, "true");
    results.wait_for_text("li[data-option=c] .votes", "1").await;
    results.wait_for_text("#total", "2").await;
    no_js.assert_clean().await;
    no_js.client.clone().close().await.unwrap();

    results.assert_clean().await;
    results.screenshots(&format!("{mode}-result"), mode == "up").await;
}

/// From the vote API's answer in the voter's browser to the result page showing the new
/// total, both read from the pages' own clocks (the same machine's wall clock).
async fn vote_to_screen(voter: &Browser, results: &Browser) -> Duration {
    // The entry appears once the response body is read, just after the status line changes.
    let mut answered = None;
    let called = eventually(SETTLE, async || {
        let script = "const e = performance.getEntriesByType('resource').filter(e => e.name.endsWith('/api/vote')).pop();
                      return e ? performance.timeOrigin + e.responseEnd : null;";
        answered = voter.client.execute(script, vec![]).await.unwrap().as_f64();
        answered.is_some()
    })
    .await;
    assert!(called, "the vote page did not call /api/vote");
    let answered = answered.unwrap();
    let mut shown = None;
    let seen = eventually(SETTLE, async || {
        shown = results.client.execute("return window.__shownAt", vec![]).await.unwrap().as_f64();
        shown.is_some()
    })
    .await;
    assert!(seen, "the result page never showed the vote; it shows {}", results.text("#total").await);
    Duration::from_secs_f64((shown.unwrap() - answered).max(0.0) / 1000.0)
}

/// Fetches a page and every `/static/` asset it references, as a browser that takes gzip and
/// brotli; returns the bytes transferred (bodies) and the uncompressed size.
async fn weigh(http: &reqwest::Client, url: &str) -> (usize, usize) {
    let plain_page = http.get(url).send().await.unwrap().text().await.unwrap();
    let mut paths = vec!["/".to_owned()];
    for attr in ["href=\"", "src=\""] {
        for (at, _) in plain_page.match_indices(attr) {
            let rest = &plain_page[at + attr.len()..];
            let path = &rest[..rest.find('"').unwrap()];
            if path.starts_with("/static/") {
                paths.push(path.to_owned());
            }
        }
    }
    assert!(paths.len() >= 4, "the page, its stylesheet, script and icon: {paths:?}");
    let (mut compressed, mut plain) = (0, 0);
    for path in &paths {
        let response =
            http.get(format!("{url}{path}")).header("accept-encoding", "gzip, br").send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers().clone();
        if !path.ends_with(".svg") || headers.contains_key("content-encoding") {
            let encoding = headers.get("content-encoding").map(|v| v.to_str().unwrap().to_owned());
            assert!(matches!(encoding.as_deref(), Some("br" | "gzip")), "{path} is sent uncompressed");
        }
        if path.starts_with("/static/") {
            assert!(headers.contains_key("etag"), "{path} has no ETag");
        } else {
            let csp = headers["content-security-policy"].to_str().unwrap();
            assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
            assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
            assert_eq!(headers["x-content-type-options"], "nosniff");
            assert!(headers.contains_key("referrer-policy"));
        }
        compressed += response.bytes().await.unwrap().len();
        plain += http.get(format!("{url}{path}")).send().await.unwrap().bytes().await.unwrap().len();
    }
    (compressed, plain)
}

// ---------------------------------------------------------------------------------------------
// The browser.

/// A `chromedriver` on a free port; each session gets its own chromium and profile.
struct Chromedriver {
    _process: Process,
    url: String,
    profiles: TempDir,
}

#[derive(Clone, Copy, PartialEq)]
enum Js {
    On,
    Off,
}

impl Chromedriver {
    async fn start() -> Self {
        assert!(
            Path::new(CHROMEDRIVER).exists() && Path::new(CHROMIUM).exists(),
            "the browser tests need Debian's chromium and chromium-driver: run scripts/install-test-deps"
        );
        let port = free_port();
        let process = Process::spawn(CHROMEDRIVER, &[&format!("--port={port}")], &[]).unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let ready = eventually(SETTLE, async || {
            let Ok(response) = http.get(format!("{url}/status")).send().await else { return false };
            response.json::<Value>().await.is_ok_and(|status| status["value"]["ready"] == true)
        })
        .await;
        assert!(ready, "chromedriver does not answer: {}", process.log());
        Self { _process: process, url, profiles: tempfile::tempdir().unwrap() }
    }

    async fn session(&self, js: Js) -> Browser {
        let profile = tempfile::tempdir_in(self.profiles.path()).unwrap().keep();
        let mut args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(), // tests run as root in CI
            "--disable-dev-shm-usage".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--no-first-run".to_owned(),
            "--hide-scrollbars".to_owned(),
            "--force-device-scale-factor=1".to_owned(),
            format!("--user-data-dir={}", profile.display()),
        ];
        if js == Js::Off {
            args.push("--blink-settings=scriptEnabled=false".to_owned());
        }
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let Value::Object(capabilities) = capabilities else { unreachable!() };
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("chromedriver starts a chromium session");
        let session = client.session_id().await.unwrap().expect("a session id");
        let browser = Browser { client, log_url: format!("{}/session/{session}/se/log", self.url) };
        browser.resize_viewport(DESKTOP).await;
        browser
    }
}

struct Browser {
    client: Client,
    /// chromedriver's (non-standard) endpoint for the browser console log.
    log_url: String,
}

impl Browser {
    async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap_or_else(|e| panic!("loading {url}: {e}"));
    }

    async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .unwrap();
    }

    async fn text(&self, css: &str) -> String {
        match self.client.find(Locator::Css(css)).await {
            Ok(element) => element.text().await.unwrap_or_default(),
            Err(_) => String::new(), // e.g. while the page is being replaced
        }
    }

    async fn attr(&self, css: &str, name: &str) -> String {
        let element = self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}"));
        element.attr(name).await.unwrap().unwrap_or_default()
    }

    /// Polls until the element's text is `expected`, or panics with what it shows.
    async fn wait_for_text(&self, css: &str, expected: &str) {
        let shown = eventually(SETTLE, async || self.text(css).await == expected).await;
        assert!(shown, "`{css}` shows {:?}, not {expected:?}", self.text(css).await);
    }

    /// Records in the page (`window.__shownAt`, wall-clock ms) when `#total` first shows
    /// `expected`, however briefly.
    async fn watch_total(&self, expected: &str) {
        self.client
            .execute(
                "const [want] = arguments; const el = document.getElementById('total');
                 window.__shownAt = null;
                 new MutationObserver(() => {
                   if (window.__shownAt === null && el.textContent === want)
                     window.__shownAt = performance.timeOrigin + performance.now();
                 }).observe(el, { childList: true, characterData: true, subtree: true });",
                vec![json!(expected)],
            )
            .await
            .unwrap();
    }

    /// No console errors (CSP violations, failed loads, script errors), and no request to any
    /// host but the page's own.
    async fn assert_clean(&self) {
        let log: Value = reqwest::Client::new()
            .post(&self.log_url)
            .json(&json!({"type": "browser"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let errors: Vec<&Value> =
            log["value"].as_array().unwrap().iter().filter(|entry| entry["level"] == "SEVERE").collect();
        assert!(errors.is_empty(), "console errors: {errors:#?}");
        let foreign = self
            .client
            .execute(
                "return performance.getEntriesByType('resource').map(e => e.name)
                   .filter(name => new URL(name).origin !== location.origin);",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(foreign, json!([]), "requests to other hosts");
    }

    /// Sets the size of the page's viewport (not the window, which has browser UI around it).
    async fn resize_viewport(&self, (width, height): (u32, u32)) {
        self.client.set_window_size(width, height).await.unwrap();
        let inner = self.client.execute("return [innerWidth, innerHeight]", vec![]).await.unwrap();
        let (w, h) = (inner[0].as_u64().unwrap() as u32, inner[1].as_u64().unwrap() as u32);
        if (w, h) != (width, height) {
            let window = (width + width.saturating_sub(w), height + height.saturating_sub(h));
            self.client.set_window_size(window.0, window.1).await.unwrap();
        }
    }

    /// Saves the page at a desktop and a phone size as `<name>-desktop.png`, `<name>-phone.png`;
    /// with `UPDATE_SCREENSHOTS` set, those to `publish` also to the README's.
    async fn screenshots(&self, name: &str, publish: bool) {
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        for (size, viewport) in [("desktop", DESKTOP), ("phone", PHONE)] {
            self.resize_viewport(viewport).await;
            let png = self.client.screenshot().await.unwrap();
            let file = format!("{name}-{size}.png");
            std::fs::write(dir.join(&file), &png).unwrap();
            if publish && std::env::var_os("UPDATE_SCREENSHOTS").is_some() {
                let docs = workspace_dir().join("docs/screenshots");
                std::fs::create_dir_all(&docs).unwrap();
                std::fs::write(docs.join(&file), &png).unwrap();
            }
        }
        self.resize_viewport(DESKTOP).await;
    }
}

fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn screenshot_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target"))
        .join("screenshots")
}
