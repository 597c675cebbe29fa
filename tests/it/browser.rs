//! A real browser (Chromium, headless, driven over the DevTools protocol) opens a
//! login link, presses "Sign in" and lands on the user's own container: cookies,
//! redirects, the confirm form and the pages' Content-Security-Policy as a browser
//! enforces them.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{Harness, Options, free_port, poll};

pub(crate) struct Chromium {
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
    pub(crate) fn start() -> Chromium {
        let port = free_port();
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new(chromium_bin())
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
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
    pub(crate) async fn page_socket(&self) -> String {
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

pub(crate) type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Sends one DevTools command and returns its result (events in between are skipped).
pub(crate) async fn call(ws: &mut Socket, id: u64, method: &str, params: Value) -> Value {
    let msg = json!({ "id": id, "method": method, "params": params }).to_string();
    ws.send(Message::text(msg)).await.unwrap();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Ok(text) = frame.into_text()
            && let Ok(v) = serde_json::from_str::<Value>(&text)
            && v["id"] == id
        {
            return v["result"].clone();
        }
    }
}

pub(crate) async fn eval(ws: &mut Socket, id: u64, expr: &str) -> Value {
    call(
        ws,
        id,
        "Runtime.evaluate",
        json!({ "expression": expr, "returnByValue": true }),
    )
    .await["result"]["value"]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_opens_the_link_signs_in_and_lands_on_its_container() {
    let h = Harness::start(Options::default()).await;
    let alice = h.user("alice").await;
    let link = h.app.accounts.login_link("alice").await.unwrap().url;

    let chromium = Chromium::start();
    let (mut ws, _) = tokio_tungstenite::connect_async(chromium.page_socket().await)
        .await
        .unwrap();
    call(&mut ws, 1, "Page.navigate", json!({ "url": link })).await;

    // The confirm page, then a click on its button.
    let mut id = 10;
    let deadline = Instant::now() + Duration::from_secs(30);
    while eval(
        &mut ws,
        id,
        "document.querySelector('form button') !== null",
    )
    .await
        != json!(true)
    {
        assert!(Instant::now() < deadline, "no confirm page");
        tokio::time::sleep(Duration::from_millis(200)).await;
        id += 1;
    }
    eval(
        &mut ws,
        id + 1,
        "document.querySelector('form button').click(); true",
    )
    .await;

    // Redirected to /u-<slug>/, where alice's container answers (started on the way).
    let want = format!("/u-{}/", alice.slug);
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        id += 2;
        let state = eval(
            &mut ws,
            id,
            "location.pathname + '|' + document.body.innerText",
        )
        .await;
        let state = state.as_str().unwrap_or_default().to_owned();
        if state.starts_with(&format!("{want}|")) && state.contains("Hello, alice") {
            break;
        }
        assert!(Instant::now() < deadline, "browser ended on {state:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The session cookie is HttpOnly: the browser holds it, flagged so...
    let jar = call(&mut ws, id + 1, "Network.getCookies", json!({})).await;
    let session = jar["cookies"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["name"] == h.cookie_name()))
        .unwrap_or_else(|| panic!("the browser holds no session cookie: {jar}"));
    assert_eq!(session["httpOnly"], true, "{session}");
    // ...and the page's scripts cannot read it (an evaluation that failed, with
    // no string to look at, fails here too).
    let visible = eval(&mut ws, id + 2, "document.cookie").await;
    let visible = visible
        .as_str()
        .unwrap_or_else(|| panic!("document.cookie did not evaluate: {visible}"));
    assert!(!visible.contains(h.cookie_name()), "{visible}");
}
