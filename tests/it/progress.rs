//! Live start-up progress through real Traefik and Docker: the progress stream
//! (server-sent events, JupyterHub's shape) of a slow start and of a failed one,
//! the start-up page that follows it (also in a real browser, screenshots in
//! `target/screenshots/progress-*.png`), the environment's JSON status, the
//! operator event stream, and streams that end when spawngate shuts down.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE, COOKIE, RETRY_AFTER};
use serde_json::{Value, json};

use crate::browser::Browser;
use crate::harness::{Api, Harness, Options, client_resolving, session_cookie};

const HTML: &str = "text/html,application/xhtml+xml";

/// Line the example app prints in mode `exit:3` before exiting.
const EXIT_LINE: &str = "EXAMPLE_APP_MODE=exit:3, exiting with code 3";

/// One server-sent event.
#[derive(Debug)]
struct Sse {
    name: Option<String>,
    id: Option<u64>,
    data: Value,
}

/// Reads a `text/event-stream` answer event by event.
struct Stream {
    resp: reqwest::Response,
    buf: String,
}

impl Stream {
    fn new(resp: reqwest::Response) -> Stream {
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[CONTENT_TYPE], "text/event-stream");
        Stream {
            resp,
            buf: String::new(),
        }
    }

    /// The next event with data, or `None` once the stream has ended. Panics
    /// if nothing arrives within `secs`.
    async fn next(&mut self, secs: u64) -> Option<Sse> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut event = Sse {
                    name: None,
                    id: None,
                    data: Value::Null,
                };
                let mut has_data = false;
                for line in block.lines() {
                    if let Some(d) = line.strip_prefix("data: ") {
                        event.data = serde_json::from_str(d).unwrap();
                        has_data = true;
                    } else if let Some(n) = line.strip_prefix("event: ") {
                        event.name = Some(n.to_owned());
                    } else if let Some(i) = line.strip_prefix("id: ") {
                        event.id = i.parse().ok();
                    }
                }
                if has_data {
                    return Some(event);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.resp.chunk())
                .await
                .unwrap_or_else(|_| panic!("no event within {secs} s; so far {:?}", self.buf));
            match chunk {
                Ok(Some(bytes)) => self.buf.push_str(std::str::from_utf8(&bytes).unwrap()),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Every event until the stream ends (bounded by `secs`).
    async fn rest(&mut self, secs: u64) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(event) = self.next(secs).await {
            out.push(event.data);
        }
        out
    }
}

async fn open(h: &Harness, url: &str, cookie: &str) -> Stream {
    let resp = h
        .client
        .get(url)
        .header(COOKIE, cookie)
        .header(ACCEPT, "text/event-stream")
        .send()
        .await
        .unwrap();
    Stream::new(resp)
}

/// Creates `name` with container env `env` (through the admin API's overrides).
async fn user_with_env(h: &Harness, admin: &Api, name: &str, env: Value) -> String {
    let user = h.user(name).await;
    let (status, body) = admin
        .put(&format!("users/{name}/overrides"), json!({ "env": env }))
        .await;
    assert_eq!(status, 200, "{body}");
    user.slug.to_string()
}

async fn page(h: &Harness, url: &str, cookie: &str) -> (StatusCode, String) {
    let resp = h
        .client
        .get(url)
        .header(COOKIE, cookie)
        .header(ACCEPT, HTML)
        .send()
        .await
        .unwrap();
    (resp.status(), resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_start_shows_its_progress_and_ends_ready() {
    let h = Harness::start(Options::default()).await;
    let admin = h.admin().await;
    let slug = user_with_env(&h, &admin, "alice", json!({ "STARTUP_DELAY_MS": "4000" })).await;
    let cookie = h.login("alice").await;
    let app = h.url(&format!("/u-{slug}/whoami.json?x=1"));

    // The browser is held a moment, then gets the start-up page, which knows the
    // stream to follow and where to continue.
    let began = Instant::now();
    let resp = h
        .client
        .get(&app)
        .header(COOKIE, &cookie)
        .header(ACCEPT, HTML)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        began.elapsed() < Duration::from_secs(4),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(resp.headers()[RETRY_AFTER], "2");
    let body = resp.text().await.unwrap();
    assert!(
        body.contains(&format!(
            r#"data-stream="/_spawngate/api/me/progress?slug={slug}""#
        )),
        "{body}"
    );
    assert!(
        body.contains(&format!(r#"data-next="/u-{slug}/whoami.json?x=1""#)),
        "{body}"
    );
    assert!(body.contains(r#"src="/_spawngate/assets/progress.js""#));
    // The script it loads is served, through Traefik.
    let js = h
        .client
        .get(h.url("/_spawngate/assets/progress.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), 200);
    assert!(js.text().await.unwrap().contains("EventSource"));

    // The status while it starts.
    let status_url = h.url("/_spawngate/api/me/environment");
    let status: Value = h
        .get_with_cookie(&status_url, &cookie)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status["state"], "starting", "{status}");
    assert!(status["progress"].as_u64().is_some() && status["message"].is_string());

    // The stream: progress (never going back), the wait for the app on its
    // port, then ready with the environment's address, and the end.
    let mut stream = open(&h, &h.url("/_spawngate/api/me/progress"), &cookie).await;
    let events = stream.rest(60).await;
    let (last, steps) = events.split_last().unwrap();
    assert_eq!(last["ready"], true, "{events:?}");
    assert_eq!(last["progress"], 100);
    assert_eq!(last["url"], h.url(&format!("/u-{slug}/")));
    assert!(last["elapsed_ms"].as_u64().unwrap() >= 3000, "{last}");
    assert!(!steps.is_empty(), "{events:?}");
    let percents: Vec<u64> = steps
        .iter()
        .map(|e| e["progress"].as_u64().unwrap())
        .collect();
    assert!(percents.windows(2).all(|w| w[0] <= w[1]), "{percents:?}");
    let waiting = steps.iter().find(|e| e["step"] == "waiting").unwrap();
    assert_eq!(
        waiting["message"],
        "Waiting for the app to answer on port 8080"
    );

    // Ready: a request passes at once, with no start-up page, and the stream
    // says ready once and ends.
    let (status, body) = page(&h, &app, &cookie).await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("progress.js"));
    let events = open(&h, &h.url("/_spawngate/api/me/progress"), &cookie)
        .await
        .rest(10)
        .await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["ready"], true);
    let status: Value = h
        .get_with_cookie(&status_url, &cookie)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status["state"], "running", "{status}");
    assert!(status["since"].as_i64().unwrap() > 0);
    assert_eq!(status["url"], h.url(&format!("/u-{slug}/")));

    // Without a credential: 401, no stream.
    let anonymous = h
        .client
        .get(h.url("/_spawngate/api/me/progress"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_streams_its_reason_and_the_page_shows_it() {
    let h = Harness::start(Options::default()).await;
    let admin = h.admin().await;
    let slug = user_with_env(&h, &admin, "alice", json!({ "EXAMPLE_APP_MODE": "exit:3" })).await;
    let cookie = h.login("alice").await;
    let app = h.url(&format!("/u-{slug}/"));

    let (status, _) = page(&h, &app, &cookie).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let mut stream = open(&h, &h.url("/_spawngate/api/me/progress"), &cookie).await;
    let events = stream.rest(60).await;
    let last = events.last().unwrap();
    assert_eq!(last["failed"], true, "{events:?}");
    assert_eq!(last["reason"], "app_failed");
    assert_eq!(last["exit_code"], 3);
    assert!(
        last["message"].as_str().unwrap().contains("code 3"),
        "{last}"
    );
    assert!(
        last["logs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().contains(EXIT_LINE)),
        "{last}"
    );
    assert!(last["retry_in_secs"].as_u64().unwrap() >= 1);

    // During the back-off the page is the failed state: the reason, the output,
    // a retry, and no refresh loop.
    let (status, body) = page(&h, &app, &cookie).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains(r#"data-state="failed""#), "{body}");
    assert!(
        body.contains("code 3") && body.contains(EXIT_LINE),
        "{body}"
    );
    assert!(body.contains(r#"id="progress-retry""#));
    assert!(!body.contains("http-equiv"), "{body}");

    let status: Value = h
        .get_with_cookie(h.url("/_spawngate/api/me/environment"), &cookie)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status["state"], "failed", "{status}");
    assert_eq!(status["failure"]["exit_code"], 3, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_event_stream_follows_a_users_environment() {
    let h = Harness::start(Options::default()).await;
    let admin = h.admin().await;
    let events_url = h.url("/_spawngate/api/events");
    let resp = h
        .client
        .get(&events_url)
        .bearer_auth(admin.token())
        .send()
        .await
        .unwrap();
    let mut stream = Stream::new(resp);

    let bob = h.user("bob").await;
    let cookie = h.login("bob").await;
    let whoami = h.url(&format!("/u-{}/whoami.json", bob.slug));
    assert_eq!(h.get_with_cookie(&whoami, &cookie).await.status(), 200);
    admin.post_ok("users/bob/container/stop").await;

    let mut seen = Vec::new();
    let mut first_seq = None;
    while seen.last().map(String::as_str) != Some("container.stopped") {
        let event = stream.next(30).await.expect("the stream goes on");
        assert_eq!(event.data["user"], "bob", "{:?}", event.data);
        assert_eq!(event.id, event.data["seq"].as_u64());
        assert!(event.data["at_ms"].as_i64().unwrap() > 0);
        first_seq.get_or_insert(event.data["seq"].as_u64().unwrap());
        seen.push(event.data["kind"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        seen,
        [
            "user.created",
            "container.starting",
            "container.created",
            "container.ready",
            "container.stopped"
        ]
    );

    // Replayed from memory after a given event.
    let resp = h
        .client
        .get(format!("{events_url}?since={}", first_seq.unwrap()))
        .bearer_auth(admin.token())
        .send()
        .await
        .unwrap();
    let mut replay = Stream::new(resp);
    let again = replay.next(10).await.unwrap();
    assert_eq!(again.data["kind"], "container.starting");

    // Users who are not admins cannot read it (signed in: 403; no credential: 401).
    let resp = h
        .client
        .get(&events_url)
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = h.client.get(&events_url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_end_when_spawngate_shuts_down() {
    let mut h = Harness::start(Options::default()).await;
    let admin = h.admin().await;
    user_with_env(&h, &admin, "carol", json!({ "STARTUP_DELAY_MS": "60000" })).await;
    let cookie = h.login("carol").await;
    let slug = h.app.accounts.user_named("carol").unwrap().slug.to_string();
    let (status, _) = page(&h, &h.url(&format!("/u-{slug}/")), &cookie).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let mut progress = open(&h, &h.url("/_spawngate/api/me/progress"), &cookie).await;
    assert!(progress.next(10).await.unwrap().data["progress"].is_number());
    let resp = h
        .client
        .get(h.url("/_spawngate/api/events"))
        .bearer_auth(admin.token())
        .send()
        .await
        .unwrap();
    let mut events = Stream::new(resp);

    let began = Instant::now();
    assert!(
        h.shut_down(Duration::from_secs(20)).await,
        "spawngate did not drain with streams open"
    );
    assert!(
        progress.next(10).await.is_none(),
        "the progress stream ended"
    );
    assert!(events.next(10).await.is_none(), "the event stream ended");
    assert!(began.elapsed() < Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_an_app_host_the_page_follows_its_start_there() {
    let h = Harness::start(Options {
        public_host: Some("login.test".into()),
        extra_toml: "[server]\napps_domain = \"apps.test\"\n".into(),
        ..Default::default()
    })
    .await;
    let admin = h.admin().await;
    let slug = user_with_env(&h, &admin, "alice", json!({ "STARTUP_DELAY_MS": "3000" })).await;
    let host = format!("{slug}.apps.test");
    let port = h.web_port;
    let client = client_resolving(&["login.test".into(), host.clone()], port);
    let main_cookie = h.login("alice").await;
    // The hand-off gives this host its own cookie.
    let handoff = client
        .get(format!(
            "http://login.test:{port}/_spawngate/handoff?slug={slug}&next=%2F"
        ))
        .header(COOKIE, &main_cookie)
        .send()
        .await
        .unwrap();
    let redeem = handoff.headers()["location"].to_str().unwrap().to_owned();
    let resp = client.get(&redeem).send().await.unwrap();
    let app_cookie = session_cookie(resp.headers(), "spawngate_app").unwrap();
    let on_host = |path: &str| format!("http://{host}:{port}{path}");

    let resp = client
        .get(on_host("/"))
        .header(COOKIE, &app_cookie)
        .header(ACCEPT, HTML)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = resp.text().await.unwrap();
    assert!(
        body.contains(r#"data-stream="/_spawngate/api/me/progress""#),
        "{body}"
    );
    // The stream on the app host is spawngate's (not the app's), with its cookie.
    let resp = client
        .get(on_host("/_spawngate/api/me/progress"))
        .header(COOKIE, &app_cookie)
        .send()
        .await
        .unwrap();
    let events = Stream::new(resp).rest(60).await;
    let last = events.last().unwrap();
    assert_eq!(last["ready"], true, "{events:?}");
    assert_eq!(last["url"], on_host("/"));
    let status: Value = client
        .get(on_host("/_spawngate/api/me/environment"))
        .header(COOKIE, &app_cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["state"], "running", "{status}");
    // Without the app host's cookie (the login host's does not count there): 401.
    let resp = client
        .get(on_host("/_spawngate/api/me/progress"))
        .header(COOKIE, &main_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_follows_a_slow_start_to_the_app_and_sees_why_a_start_failed() {
    let h = Harness::start(Options::default()).await;
    let admin = h.admin().await;
    let slug = user_with_env(&h, &admin, "alice", json!({ "STARTUP_DELAY_MS": "5000" })).await;
    let cookie = h.login("alice").await;
    let (name, value) = cookie.split_once('=').unwrap();

    let mut browser = Browser::start().await;
    browser
        .call(
            "Network.setCookie",
            json!({ "name": name, "value": value, "url": h.public, "httpOnly": true }),
        )
        .await;
    let target = h.url(&format!("/u-{slug}/"));
    browser.navigate(&target).await;

    // The page moves through its steps while the app boots…
    browser
        .wait_for(
            30,
            "the wait for the app",
            "document.querySelector('li[data-step=waiting].current') !== null",
        )
        .await;
    browser
        .wait_for(
            10,
            "done steps and the elapsed time",
            "document.querySelector('li[data-step=queued].done') !== null \
             && /Elapsed: [2-9]/.test(document.getElementById('progress-elapsed').textContent)",
        )
        .await;
    browser.screenshot("progress-starting.png").await;
    // …and lands on the app the moment it answers, at the address asked for.
    browser
        .wait_for(
            40,
            "the app",
            &format!(
                "location.href === {target:?} && document.body.innerText.includes('Hello, alice')"
            ),
        )
        .await;
    browser.screenshot("progress-ready.png").await;

    // A broken app: the page shows why, with its output and a retry.
    let (status, body) = admin
        .put(
            "users/alice/overrides",
            json!({ "env": { "EXAMPLE_APP_MODE": "exit:3" } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    admin.post_ok("users/alice/container/stop").await;
    browser.navigate(&target).await;
    browser
        .wait_for(
            40,
            "the failure",
            "!document.getElementById('progress-failure').hidden \
             && document.getElementById('progress-reason').textContent.includes('code 3') \
             && document.getElementById('progress-logs').textContent.includes('exiting with code 3') \
             && document.getElementById('progress-retry') !== null",
        )
        .await;
    browser.screenshot("progress-failed.png").await;
}

/// The operator stream answers to an admin for as long as they are one: taken
/// over an admin's session, it ends at the first event after the flag is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_ends_when_its_admin_is_no_longer_one() {
    let h = Harness::start(Options::default()).await;
    let admin = h.admin().await;
    h.user("ops").await;
    let (status, body) = admin
        .call(
            reqwest::Method::PATCH,
            "users/ops",
            Some(json!({ "admin": true })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let cookie = h.login("ops").await;
    let resp = h
        .client
        .get(h.url("/_spawngate/api/events"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    let mut stream = Stream::new(resp);
    h.user("first").await;
    let seen = loop {
        let event = stream.next(20).await.expect("the stream is open");
        if event.data["kind"] == "user.created" {
            break event;
        }
    };
    assert_eq!(seen.data["user"], "first");

    let (status, body) = admin
        .call(
            reqwest::Method::PATCH,
            "users/ops",
            Some(json!({ "admin": false })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    h.user("second").await;
    while let Some(event) = stream.next(30).await {
        assert_ne!(
            event.data["user"], "second",
            "an event reached someone who is no longer an admin"
        );
    }
}
