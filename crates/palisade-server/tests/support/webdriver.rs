//! A minimal W3C WebDriver client (JSON over HTTP with reqwest) driving the
//! system's headless Chromium through chromedriver. It stands outside the
//! product, like the other test fakes, and covers only what the console
//! tests use: navigate, find, click, type, read text, run a script, and
//! take a screenshot. Written here rather than pulling a WebDriver crate so
//! the workspace gains no dependency for tests.
//!
//! `Browser::launch` returns `Ok(None)` (skip, with a notice) when chromium
//! or chromedriver is missing, unless `PALISADE_REQUIRE_BROWSER=1`, where
//! it fails with a clear message.

#![allow(dead_code)]

use base64::Engine;
use serde_json::{json, Value};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// Longest wait for a page condition (an upper bound, never asserted on).
pub const WAIT: Duration = Duration::from_secs(15);

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

pub struct Browser {
    driver: Child,
    base: String,
    http: reqwest::Client,
}

#[derive(Clone, Debug)]
pub struct Element(String);

fn find_binary(env: &str, default: &str) -> Option<PathBuf> {
    let p = std::env::var(env)
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(default));
    p.exists().then_some(p)
}

impl Browser {
    /// Start chromedriver on a free port and a headless Chromium session.
    pub async fn launch() -> Option<Browser> {
        let (chromium, driver) = (
            find_binary("PALISADE_CHROMIUM", CHROMIUM),
            find_binary("PALISADE_CHROMEDRIVER", CHROMEDRIVER),
        );
        let (Some(chromium), Some(driver)) = (chromium, driver) else {
            let msg = format!(
                "console browser tests need {CHROMIUM} and {CHROMEDRIVER} \
                 (apt-get install -y chromium chromium-driver)"
            );
            if std::env::var("PALISADE_REQUIRE_BROWSER").as_deref() == Ok("1") {
                panic!("PALISADE_REQUIRE_BROWSER=1 but {msg}");
            }
            eprintln!("SKIPPED: {msg}");
            return None;
        };
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        // Its own process group, so that dropping the Browser (also when a
        // test panics) ends chromedriver AND the Chromium it started.
        let child = Command::new(&driver)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", driver.display()));
        let mut b = Browser {
            driver: child,
            base: String::new(),
            http: reqwest::Client::new(),
        };
        let root = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(r) = b.http.get(format!("{root}/status")).send().await {
                if let Ok(v) = r.json::<Value>().await {
                    if v["value"]["ready"] == true {
                        break;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.to_string_lossy(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1440,1000",
                         "--no-first-run", "--disable-extensions"],
            },
        }}});
        let v = b.raw("POST", &format!("{root}/session"), Some(caps)).await;
        let id = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
            .to_string();
        b.base = format!("{root}/session/{id}");
        b.cmd(
            "POST",
            "/timeouts",
            json!({"implicit": 0, "pageLoad": 30000, "script": 15000}),
        )
        .await;
        Some(b)
    }

    async fn raw(&self, method: &str, url: &str, body: Option<Value>) -> Value {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(m, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("WebDriver request");
        let v: Value = r.json().await.expect("WebDriver JSON");
        v["value"].clone()
    }

    async fn try_cmd(&self, method: &str, path: &str, body: Value) -> Result<Value, Value> {
        let body = if method == "GET" || method == "DELETE" {
            None
        } else {
            Some(body)
        };
        let v = self
            .raw(method, &format!("{}{path}", self.base), body)
            .await;
        if v.get("error").is_some() {
            Err(v)
        } else {
            Ok(v)
        }
    }

    async fn cmd(&self, method: &str, path: &str, body: Value) -> Value {
        match self.try_cmd(method, path, body).await {
            Ok(v) => v,
            Err(e) => panic!("WebDriver {method} {path}: {e}"),
        }
    }

    pub async fn goto(&self, url: &str) {
        self.cmd("POST", "/url", json!({ "url": url })).await;
    }

    pub async fn url(&self) -> String {
        self.cmd("GET", "/url", json!({}))
            .await
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Elements matching a CSS selector now.
    pub async fn all(&self, css: &str) -> Vec<Element> {
        let v = self
            .cmd(
                "POST",
                "/elements",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| Element(e[ELEMENT_KEY].as_str().unwrap().to_string()))
            .collect()
    }

    /// The first element matching `css`, waiting for it to appear.
    pub async fn find(&self, css: &str) -> Element {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(e) = self.all(css).await.into_iter().next() {
                return e;
            }
            if Instant::now() > deadline {
                let shot = self.screenshot_bytes().await;
                let p = screenshot_dir().join("failure.png");
                std::fs::write(&p, shot).ok();
                panic!(
                    "no element {css:?} at {} (screenshot {})",
                    self.url().await,
                    p.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until the page's text under `css` contains `needle`; returns the text.
    pub async fn wait_text(&self, css: &str, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut last = String::new();
            for e in self.all(css).await {
                if let Ok(t) = self.try_text(&e).await {
                    if t.contains(needle) {
                        return t;
                    }
                    last = t;
                }
            }
            if Instant::now() > deadline {
                std::fs::write(
                    screenshot_dir().join("failure.png"),
                    self.screenshot_bytes().await,
                )
                .ok();
                panic!("{css:?} never contained {needle:?}; last text: {last:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until exactly `n` elements match `css`; returns them.
    pub async fn wait_count(&self, css: &str, n: usize) -> Vec<Element> {
        let deadline = Instant::now() + WAIT;
        loop {
            let found = self.all(css).await;
            if found.len() == n {
                return found;
            }
            if Instant::now() > deadline {
                std::fs::write(
                    screenshot_dir().join("failure.png"),
                    self.screenshot_bytes().await,
                )
                .ok();
                panic!("{css:?} matched {} elements, never {n}", found.len());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until no element matches `css`.
    pub async fn wait_gone(&self, css: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.all(css).await.is_empty() {
            assert!(Instant::now() < deadline, "{css:?} never went away");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn click(&self, e: &Element) {
        self.cmd("POST", &format!("/element/{}/click", e.0), json!({}))
            .await;
    }

    pub async fn type_into(&self, e: &Element, text: &str) {
        self.cmd("POST", &format!("/element/{}/clear", e.0), json!({}))
            .await;
        self.cmd(
            "POST",
            &format!("/element/{}/value", e.0),
            json!({ "text": text }),
        )
        .await;
    }

    async fn try_text(&self, e: &Element) -> Result<String, Value> {
        self.try_cmd("GET", &format!("/element/{}/text", e.0), json!({}))
            .await
            .map(|v| v.as_str().unwrap_or_default().to_string())
    }

    pub async fn text(&self, e: &Element) -> String {
        self.try_text(e)
            .await
            .unwrap_or_else(|e| panic!("text: {e}"))
    }

    pub async fn value(&self, e: &Element) -> String {
        self.cmd(
            "GET",
            &format!("/element/{}/property/value", e.0),
            json!({}),
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// Run a script (its `return` value comes back). Async work: return a promise.
    pub async fn exec(&self, script: &str, args: Vec<Value>) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            json!({ "script": script, "args": args }),
        )
        .await
    }

    async fn screenshot_bytes(&self) -> Vec<u8> {
        let v = self.cmd("GET", "/screenshot", json!({})).await;
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap()
    }

    /// Save a PNG under `target/console-screenshots/<name>.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let p = screenshot_dir().join(format!("{name}.png"));
        std::fs::write(&p, self.screenshot_bytes().await).unwrap();
        p
    }

    pub async fn quit(self) {
        let _ = self.try_cmd("DELETE", "", json!({})).await;
        // Drop ends the process group.
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The group this Browser started (chromedriver's pid is its id).
        // `-s KILL -- -<pgid>`, never `kill -KILL -<pgid>`: procps-ng 4.0.2
        // reads the latter as `kill(-<first digit>)`, so a pid starting with
        // 1 became kill(-1, SIGKILL) and ended every process on the machine.
        let pgid = self.driver.id();
        if pgid > 1 {
            let _ = Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{pgid}")])
                .status();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// `<target dir>/console-screenshots`, created.
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let dir = target.join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
