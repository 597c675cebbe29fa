//! Containers as Docker users expect them, and images that fail, through real
//! Traefik and Docker: Docker's init as PID 1 and the stop grace
//! (`docker.init`, `docker.stop_timeout_secs`); an app that exits at once or never
//! listens is reported with its reason (the 503 JSON, the waiting page, the admin
//! API) and is not started again while spawngate backs off.
//!
//! The misbehaving apps are the example image in its opt-in `EXAMPLE_APP_MODE`s,
//! set per user through the admin API's overrides.

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, COOKIE, RETRY_AFTER};
use serde_json::{Value, json};

use crate::harness::{Api, Harness, Options, poll};
use crate::proc::inspect;

/// Line the example app prints in mode `exit:3` before exiting.
const EXIT_LINE: &str = "EXAMPLE_APP_MODE=exit:3, exiting with code 3";

/// Creates `name` (and waits for their route) running the example app in `mode`;
/// returns the slug.
async fn user_in_mode(h: &Harness, admin: &Api, name: &str, mode: &str) -> String {
    let user = h.user(name).await;
    let (status, body) = admin
        .put(
            &format!("users/{name}/overrides"),
            json!({ "env": { "EXAMPLE_APP_MODE": mode } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    user.slug.to_string()
}

fn container_name(slug: &str) -> String {
    format!("spawngate-u-{slug}")
}

/// An API client's request to the user's app: (status, Retry-After, JSON body).
async fn get_json(h: &Harness, url: &str, cookie: &str) -> (StatusCode, Option<u64>, Value) {
    let resp = h.get_with_cookie(url, cookie).await;
    let status = resp.status();
    let retry = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    (status, retry, resp.json().await.unwrap_or(Value::Null))
}

/// Starts `name`'s container through Traefik, stops it through the admin API and
/// returns its exit code as Docker reports it.
async fn start_then_stop(h: &Harness, admin: &Api, name: &str, slug: &str) -> String {
    let cookie = h.login(name).await;
    let (status, _, body) = get_json(h, &h.url(&format!("/u-{slug}/whoami.json")), &cookie).await;
    assert_eq!(status, 200, "{body}");
    admin.post_ok(&format!("users/{name}/container/stop")).await;
    let container = container_name(slug);
    assert_eq!(inspect(&container, "{{.State.Status}}"), "exited");
    inspect(&container, "{{.State.ExitCode}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_init_an_app_without_a_sigterm_handler_stops_on_sigterm() {
    // A long grace: if SIGTERM did not end the app, the stop would end in SIGKILL
    // (137) a minute later instead.
    let h = Harness::start(Options::toml("[docker]\nstop_timeout_secs = 60")).await;
    let admin = h.admin().await;
    let slug = user_in_mode(&h, &admin, "alice", "no-sigterm-handler").await;
    let code = start_then_stop(&h, &admin, "alice", &slug).await;
    assert_eq!(
        inspect(&container_name(&slug), "{{.HostConfig.Init}}"),
        "true"
    );
    // 128 + SIGTERM, passed on by docker-init from the app it forwarded SIGTERM to.
    assert_eq!(code, "143", "the app ended by SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_init_such_an_app_is_killed_after_the_stop_timeout() {
    let h = Harness::start(Options::toml(
        "[docker]\ninit = false\nstop_timeout_secs = 1",
    ))
    .await;
    let admin = h.admin().await;
    let slug = user_in_mode(&h, &admin, "alice", "no-sigterm-handler").await;
    let code = start_then_stop(&h, &admin, "alice", &slug).await;
    assert_eq!(
        inspect(&container_name(&slug), "{{.HostConfig.Init}}"),
        "false"
    );
    // As PID 1 it ignored SIGTERM: 128 + SIGKILL once the grace ran out.
    assert_eq!(
        code, "137",
        "the app survived SIGTERM as PID 1 and was killed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_exits_at_once_is_reported_and_not_restarted_in_a_loop() {
    let h = Harness::start(Options::default()).await;
    let admin = h.admin().await;
    let slug = user_in_mode(&h, &admin, "alice", "exit:3").await;
    h.user("bob").await;
    let (status, body) = admin
        .put("users/alice/shares/bob", json!({ "read_only": false }))
        .await;
    assert_eq!(status, 200, "{body}");
    let cookie = h.login("alice").await;
    // Signed in up front: what follows the first failure fits in its back-off.
    let bob = h.login("bob").await;
    let url = h.url(&format!("/u-{slug}/whoami.json"));

    // The first request starts it and, within the hold, gets the reason.
    let (status, retry, body) = get_json(&h, &url, &cookie).await;
    assert_eq!(status, 503, "{body}");
    let error = &body["error"];
    assert_eq!(error["code"], "app_failed", "{body}");
    assert_eq!(error["exit_code"], 3, "{body}");
    assert!(
        error["message"].as_str().unwrap().contains("code 3"),
        "{body}"
    );
    let logs = error["logs"].as_array().unwrap();
    assert!(
        logs.iter().any(|l| l.as_str().unwrap().contains(EXIT_LINE)),
        "{body}"
    );
    let retry = retry.expect("Retry-After");
    assert!((1..=5).contains(&retry), "first back-off is 5 s: {retry}");

    // The admin API shows the same, plus the back-off.
    let status = admin.get_ok("users/alice/container").await;
    let failure = &status["failure"];
    assert_eq!(failure["exit_code"], 3, "{status}");
    assert_eq!(failure["consecutive_failures"], 1, "{status}");
    assert!(failure["logs"].to_string().contains(EXIT_LINE), "{status}");
    assert!(
        status["last_error"].as_str().unwrap().contains("code 3"),
        "{status}"
    );

    // During the back-off, requests get the recorded failure; Docker is not asked
    // to start the container again (its start time stays put).
    let container = container_name(&slug);
    let started_at = inspect(&container, "{{.State.StartedAt}}");
    for _ in 0..5 {
        let (status, retry, body) = get_json(&h, &url, &cookie).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("app_failed")),
            "{body}"
        );
        assert!(retry.is_some_and(|r| r <= 5), "{retry:?}");
    }
    let page = h
        .client
        .get(&url)
        .header(COOKIE, &cookie)
        .header(ACCEPT, "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 503);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("code 3") && html.contains(EXIT_LINE),
        "{html}"
    );
    // A user it is shared with learns why, but not what the owner's app printed.
    let (status, _, body) = get_json(&h, &url, &bob).await;
    assert_eq!(
        (status, body["error"]["exit_code"].as_i64()),
        (StatusCode::SERVICE_UNAVAILABLE, Some(3)),
        "{body}"
    );
    assert_eq!(body["error"]["logs"], json!([]), "{body}");
    assert_eq!(inspect(&container, "{{.State.StartedAt}}"), started_at);
    assert_eq!(
        admin.get_ok("users/alice/container").await["failure"]["consecutive_failures"],
        1
    );
    assert_eq!(h.containers_of(&slug).len(), 1);

    // Once the back-off is over, the next request tries again; after a second
    // failure the back-off has doubled.
    let body = poll(30, "a second attempt, with a longer back-off", || async {
        let (_, retry, body) = get_json(&h, &url, &cookie).await;
        retry.is_some_and(|r| r > 5).then_some(body)
    })
    .await;
    assert_eq!(body["error"]["exit_code"], 3, "{body}");
    assert_eq!(
        admin.get_ok("users/alice/container").await["failure"]["consecutive_failures"],
        2
    );
    assert_ne!(
        inspect(&container, "{{.State.StartedAt}}"),
        started_at,
        "started again"
    );

    // An admin start tries at once and counts failures anew.
    let (status, body) = admin.post("users/alice/container/start", None).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("code 3"),
        "{body}"
    );
    assert_eq!(
        admin.get_ok("users/alice/container").await["failure"]["consecutive_failures"],
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_never_listens_is_reported_with_its_port_and_the_start_timeout() {
    let h = Harness::start(Options::toml("[spawn]\nready_timeout_secs = 3")).await;
    let admin = h.admin().await;
    let slug = user_in_mode(&h, &admin, "alice", "no-listen").await;
    let cookie = h.login("alice").await;
    let url = h.url(&format!("/u-{slug}/"));

    let (status, retry, body) = get_json(&h, &url, &cookie).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "app_failed", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("port 8080") && message.contains("3 s"),
        "{message}"
    );
    assert!(
        body["error"]["logs"]
            .to_string()
            .contains("never opening port 8080"),
        "{body}"
    );
    assert!(retry.is_some());

    let status = admin.get_ok("users/alice/container").await;
    assert_eq!(status["failure"]["reason"], message, "{status}");
    assert_eq!(status["failure"]["exit_code"], Value::Null, "{status}");
    // Nobody can reach it: spawngate stopped it rather than leave it running.
    assert_eq!(status["state"], "stopped", "{status}");
}
