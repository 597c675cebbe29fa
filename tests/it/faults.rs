//! Faults against the real thing: Docker going away in the middle of a spawn and
//! coming back (through a socket proxy the test stops and restarts), and spawngate
//! SIGKILLed while users are created, deleted and shared.

use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, COOKIE, RETRY_AFTER};
use serde_json::Value;

use crate::docker_proxy::DockerProxy;
use crate::harness::{Harness, Options, random_hex};
use crate::proc::inspect;

const HTML: &str = "text/html,application/xhtml+xml";

/// Polls `check` every 200 ms until it returns `Some` or `secs` pass.
async fn poll<T, F: std::future::Future<Output = Option<T>>>(
    secs: u64,
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn get(h: &Harness, url: &str, cookie: &str, accept: Option<&str>) -> reqwest::Response {
    let mut req = h.client.get(url).header(COOKIE, cookie);
    if let Some(accept) = accept {
        req = req.header(ACCEPT, accept);
    }
    req.send().await.unwrap()
}

async fn readyz(h: &Harness) -> (StatusCode, Value) {
    let resp = h
        .client
        .get(format!("{}/readyz", h.direct))
        .send()
        .await
        .unwrap();
    (resp.status(), resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_lost_mid_spawn_gives_a_clear_503_and_everything_recovers_by_itself() {
    let socket = std::env::temp_dir().join(format!("sgfaults-{}.sock", random_hex(5)));
    // Declared first, so the harness (and its clean-up) goes before the proxy.
    let mut proxy = DockerProxy::start(&socket);
    let h = Harness::start(Options {
        extra_toml: format!("[docker]\nhost = {:?}\n", proxy.docker_host()),
        ..Default::default()
    })
    .await;
    let alice = h.user("alice").await;
    let cookie = h.login("alice").await;
    let url = h.url(&format!("/u-{}/whoami.json", alice.slug));
    let name = format!("spawngate-u-{}", alice.slug);

    // Docker creates the container, and the answer never arrives: the proxy dies
    // with every connection (the event stream too) while the request is held.
    proxy.trip_on("/containers/create");
    let held = get(&h, &url, &cookie, None).await;
    tokio::time::timeout(Duration::from_secs(20), proxy.tripped())
        .await
        .expect("the spawn reached Docker's create call");
    assert_eq!(held.status(), StatusCode::SERVICE_UNAVAILABLE);
    let retry: u64 = held.headers()[RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body: Value = held.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("Docker"), "{body}");
    assert!(
        !body["error"]["code"].as_str().unwrap().is_empty(),
        "{body}"
    );
    let created = h.containers_of(&alice.slug);
    assert_eq!(created.len(), 1, "Docker did create it");

    // Browsers get a page saying so; readiness names Docker.
    let page = get(&h, &url, &cookie, Some(HTML)).await;
    assert_eq!(page.status(), StatusCode::SERVICE_UNAVAILABLE);
    let page = page.text().await.unwrap();
    assert!(page.contains("Docker"), "{page}");
    let (status, ready) = readyz(&h).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready["store"], "ok");
    assert!(
        ready["docker"]
            .as_str()
            .unwrap()
            .contains("Docker is unreachable"),
        "{ready}"
    );
    // A client that waits as told and asks again (each time a fresh attempt) gets
    // the same while Docker stays away.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(retry)).await;
        let again = get(&h, &url, &cookie, None).await;
        assert_eq!(again.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body: Value = again.json().await.unwrap();
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Docker")
        );
    }

    // Docker is back: no restart of spawngate, the next requests serve alice from
    // the container Docker made while nobody heard the answer.
    proxy.restart();
    let (h, url, cookie) = (&h, url.as_str(), cookie.as_str());
    poll(20, "readyz to recover", move || async move {
        (readyz(h).await.0 == StatusCode::OK).then_some(())
    })
    .await;
    let who: Value = poll(30, "alice to be served again", move || async move {
        let resp = get(h, url, cookie, None).await;
        match resp.status() {
            StatusCode::OK => Some(resp.json().await.unwrap()),
            StatusCode::SERVICE_UNAVAILABLE => None,
            other => panic!("unexpected {other} while recovering"),
        }
    })
    .await;
    assert_eq!(who["user"], "alice");
    assert_eq!(
        h.containers_of(&alice.slug),
        created,
        "the same container, no duplicate"
    );
    let first_host = who["hostname"].as_str().unwrap().to_owned();
    assert!(created[0].starts_with(&first_host), "{first_host}");
    let first_host = first_host.as_str();

    // The event stream came back by itself: a container removed by hand now is
    // noticed, and the next requests get a new one.
    let rm = Command::new("docker")
        .args(["rm", "-f", &name])
        .output()
        .unwrap();
    assert!(rm.status.success());
    let who: Value = poll(
        30,
        "a new container after docker rm -f",
        move || async move {
            let resp = get(h, url, cookie, None).await;
            match resp.status() {
                StatusCode::OK => {
                    let who: Value = resp.json().await.unwrap();
                    (who["hostname"] != first_host).then_some(who)
                }
                // Traefik's answer in the moment before spawngate hears of it.
                StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE => None,
                other => panic!("unexpected {other} after the removal"),
            }
        },
    )
    .await;
    assert_eq!(who["user"], "alice");
    let now = h.containers_of(&alice.slug);
    assert_eq!(now.len(), 1, "exactly one container: {now:?}");
    assert_eq!(inspect(&name, "{{.State.Status}}"), "running");
}
