//! A real browser (Chromium, headless, driven over the DevTools protocol): the
//! driver every browser test shares ([`Browser`]), and a test that opens a login
//! link, presses "Sign in" and lands on the user's own container: cookies,
//! redirects, the confirm form and the pages' Content-Security-Policy as a browser
//! enforces them.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{Harness, Options, free_port, poll};

struct Chromium {
    child: Child,
    _profile: tempfile::TempDir,
    port: u16,
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromium_bin() -> String {
    std::env::var("CHROMIUM_BIN").unwrap_or_else(|_| "chromium".into())
}

impl Chromium {
    fn start() -> Chromium {
        let port = free_port();
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new(chromium_bin())
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--hide-scrollbars",
                &format!("--remote-debugging-port={port}"),
                &format!("--user-data-dir={}", profile.path().display()),
                "about:blank",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium (installed by scripts/setup)");
        Chromium {
            child,
            _profile: profile,
            port,
        }
    }

    /// The DevTools WebSocket of the first page, once Chromium is up (bounded).
    async fn page_socket(&self) -> String {
        let client = &crate::harness::http_client();
        let list = &format!("http://127.0.0.1:{}/json/list", self.port);
        poll(30, "Chromium to start", || async move {
            let targets: Vec<Value> = client.get(list).send().await.ok()?.json().await.ok()?;
            targets
                .iter()
                .find(|t| t["type"] == "page")
                .and_then(|t| t["webSocketDebuggerUrl"].as_str())
                .map(str::to_owned)
        })
        .await
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One headless Chromium with one page, driven over DevTools.
pub struct Browser {
    ws: Socket,
    next_id: u64,
    _chromium: Chromium,
    /// Set by [`Browser::record_problems`].
    problems: Option<Problems>,
}

/// What a person would see as broken, from DevTools events: requests that failed or
/// answered >= 400, console errors, uncaught exceptions.
#[derive(Default)]
struct Problems {
    urls: std::collections::HashMap<String, String>,
    seen: Vec<String>,
}

impl Problems {
    fn note(&mut self, event: &Value) {
        let p = &event["params"];
        let url_of = |urls: &std::collections::HashMap<String, String>| {
            p["requestId"]
                .as_str()
                .and_then(|id| urls.get(id))
                .cloned()
                .unwrap_or_default()
        };
        match event["method"].as_str().unwrap_or_default() {
            "Network.requestWillBeSent" => {
                if let (Some(id), Some(url)) =
                    (p["requestId"].as_str(), p["request"]["url"].as_str())
                {
                    self.urls.insert(id.to_owned(), url.to_owned());
                }
            }
            "Network.responseReceived" => {
                let status = p["response"]["status"].as_u64().unwrap_or(0);
                if status >= 400 {
                    self.seen.push(format!("{status} {}", p["response"]["url"]));
                }
            }
            "Network.loadingFailed" => {
                let url = url_of(&self.urls);
                self.seen.push(format!("failed {url}: {}", p["errorText"]));
            }
            "Network.webSocketFrameError" => {
                let url = url_of(&self.urls);
                self.seen
                    .push(format!("WebSocket error {url}: {}", p["errorMessage"]));
            }
            "Runtime.exceptionThrown" => {
                let d = &p["exceptionDetails"];
                self.seen.push(format!(
                    "exception: {} {}",
                    d["text"], d["exception"]["description"]
                ));
            }
            "Runtime.consoleAPICalled" if p["type"] == "error" => {
                self.seen.push(format!("console.error: {}", p["args"]));
            }
            "Log.entryAdded" if p["entry"]["level"] == "error" => {
                self.seen
                    .push(format!("log: {} {}", p["entry"]["text"], p["entry"]["url"]));
            }
            _ => {}
        }
    }
}

impl Browser {
    pub async fn start() -> Browser {
        let chromium = Chromium::start();
        let (ws, _) = tokio_tungstenite::connect_async(chromium.page_socket().await)
            .await
            .unwrap();
        let mut browser = Browser {
            ws,
            next_id: 1,
            _chromium: chromium,
            problems: None,
        };
        browser
            .call(
                "Emulation.setDeviceMetricsOverride",
                json!({ "width": 1280, "height": 1000, "deviceScaleFactor": 1, "mobile": false }),
            )
            .await;
        browser
    }

    /// Sends one DevTools command and returns its result (events in between are
    /// skipped).
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({ "id": id, "method": method, "params": params }).to_string();
        self.ws.send(Message::text(msg)).await.unwrap();
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(30), self.ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if let Ok(text) = frame.into_text()
                && let Ok(v) = serde_json::from_str::<Value>(&text)
            {
                if v["id"] == id {
                    return v["result"].clone();
                }
                if let Some(problems) = &mut self.problems {
                    problems.note(&v);
                }
            }
        }
    }

    /// From now on, records failed requests (or >= 400), console errors and
    /// uncaught exceptions of the page; see [`Browser::problems`].
    pub async fn record_problems(&mut self) {
        self.problems = Some(Problems::default());
        for domain in ["Network", "Runtime", "Log"] {
            self.call(&format!("{domain}.enable"), json!({})).await;
        }
    }

    /// What went wrong since [`Browser::record_problems`] or the last call (a round
    /// trip first, so that every event Chromium sent before it is counted).
    pub async fn problems(&mut self) -> Vec<String> {
        self.eval("0").await;
        self.problems
            .as_mut()
            .map(|p| std::mem::take(&mut p.seen))
            .unwrap_or_default()
    }

    /// The value of a JavaScript expression in the page.
    pub async fn eval(&mut self, expr: &str) -> Value {
        self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true }),
        )
        .await["result"]["value"]
            .clone()
    }

    /// A string-valued expression (`""` when it is not a string).
    pub async fn text(&mut self, expr: &str) -> String {
        self.eval(expr)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub async fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url })).await;
    }

    /// Waits (bounded) until `expr` is `true` in the page; `what` names it on a
    /// timeout, with the page's address and text.
    pub async fn wait_for(&mut self, secs: u64, what: &str, expr: &str) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if self.eval(expr).await == json!(true) {
                return;
            }
            if Instant::now() >= deadline {
                let page = self
                    .text("location.href + '\\n' + (document.body ? document.body.innerText : '')")
                    .await;
                panic!("timed out after {secs} s waiting for {what}; the page:\n{page}");
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    /// Whether `expr` becomes `true` in the page within `secs` (no panic).
    pub async fn becomes(&mut self, secs: u64, expr: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if self.eval(expr).await == json!(true) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        false
    }

    /// Waits for the element `selector` and clicks it.
    pub async fn click(&mut self, selector: &str) {
        let sel = serde_json::to_string(selector).unwrap();
        self.wait_for(
            20,
            &format!("{selector} to be there"),
            &format!("document.querySelector({sel}) !== null"),
        )
        .await;
        self.eval(&format!("document.querySelector({sel}).click(); true"))
            .await;
    }

    /// Navigates to `url` and waits until the page at `path` has loaded.
    pub async fn open(&mut self, url: &str, path: &str) {
        self.navigate(url).await;
        let want = serde_json::to_string(path).unwrap();
        self.wait_for(
            30,
            &format!("{path} to load"),
            &format!("location.pathname === {want} && document.readyState === 'complete'"),
        )
        .await;
    }

    /// The page's cookies (DevTools sees `HttpOnly` ones too).
    pub async fn cookies(&mut self) -> Vec<Value> {
        match self.call("Network.getCookies", json!({})).await["cookies"].take() {
            Value::Array(all) => all,
            other => panic!("no cookie list: {other}"),
        }
    }

    /// Light or dark, as the system would ask for.
    pub async fn color_scheme(&mut self, scheme: &str) {
        self.call(
            "Emulation.setEmulatedMedia",
            json!({ "features": [{ "name": "prefers-color-scheme", "value": scheme }] }),
        )
        .await;
    }

    /// Saves a PNG of the whole page as `target/screenshots/<name>` (from the
    /// repository root); returns its path.
    pub async fn screenshot(&mut self, name: &str) -> std::path::PathBuf {
        use base64::Engine;
        self.wait_for(20, "the page to load", "document.readyState === 'complete'")
            .await;
        // A busy machine can refuse a capture for a moment (a frame not ready).
        let mut data = None;
        for _ in 0..20 {
            let shot = self
                .call(
                    "Page.captureScreenshot",
                    json!({ "format": "png", "captureBeyondViewport": true }),
                )
                .await;
            if let Some(d) = shot["data"].as_str() {
                data = Some(d.to_owned());
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.unwrap_or_else(|| panic!("no screenshot of {name} after 20 tries")))
            .unwrap();
        let dir = crate::harness::repo_root().join("target/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, png).unwrap();
        path
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_opens_the_link_signs_in_and_lands_on_its_container() {
    let h = Harness::start(Options::default()).await;
    let alice = h.user("alice").await;
    let link = h.app.accounts.login_link("alice").await.unwrap().url;

    let mut browser = Browser::start().await;
    browser.navigate(&link).await;
    // The confirm page, then a click on its button.
    browser.click("form button").await;

    // Redirected to /u-<slug>/, where alice's container answers (started on the way).
    let want = format!("/u-{}/", alice.slug);
    browser
        .wait_for(
            40,
            "alice's container",
            &format!(
                "location.pathname === {} && document.body.innerText.includes('Hello, alice')",
                serde_json::to_string(&want).unwrap()
            ),
        )
        .await;
    // The session cookie is HttpOnly: the browser holds it, flagged so...
    let jar = browser.cookies().await;
    let session = jar
        .iter()
        .find(|c| c["name"] == h.cookie_name())
        .unwrap_or_else(|| panic!("the browser holds no session cookie: {jar:?}"));
    assert_eq!(session["httpOnly"], true, "{session}");
    // ...and the page's scripts cannot read it (an evaluation that failed, with
    // no string to look at, fails here too).
    let visible = browser.eval("document.cookie").await;
    let visible = visible
        .as_str()
        .unwrap_or_else(|| panic!("document.cookie did not evaluate: {visible}"));
    assert!(!visible.contains(h.cookie_name()), "{visible}");
}
