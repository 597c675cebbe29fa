//! Oversized and malformed requests get their 4xx through real Traefik every time
//! (never a 502 from a reset connection), and the server stays healthy.

use std::collections::BTreeMap;

use reqwest::header::{CONTENT_TYPE, COOKIE};

use crate::harness::{Harness, Options};

/// Rounds of every case: a reset that wipes the answer showed up about one time in
/// three, so a few dozen rounds catch it.
const ROUNDS: usize = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_their_4xx_through_traefik_every_time() {
    let h = Harness::start(Options {
        // Every POST to the login page counts against the per-address limit.
        extra_toml: "[lifecycle]\nstart_on_login = false\n[login]\nper_ip_per_hour = 100000".into(),
        ..Default::default()
    })
    .await;
    let alice = h.user("alice").await;
    let cookie = h.login("alice").await;
    let admin = h.admin().await.token().to_owned();
    let app_path = format!("/u-{}/whoami.json", alice.slug);
    let big = |n: usize| "a=".to_owned() + &"x".repeat(n);

    // (what, request, the status a user must see)
    type Build = Box<dyn Fn() -> reqwest::RequestBuilder>;
    let post =
        |url: String, bearer: Option<&str>, content_type: &'static str, body: String| -> Build {
            let (c, bearer) = (h.client.clone(), bearer.map(str::to_owned));
            Box::new(move || {
                let req = c
                    .post(&url)
                    .header(CONTENT_TYPE, content_type)
                    .body(body.clone());
                match &bearer {
                    Some(t) => req.bearer_auth(t),
                    None => req,
                }
            })
        };
    const FORM: &str = "application/x-www-form-urlencoded";
    const JSON: &str = "application/json";
    let cases: Vec<(&str, Build, u16)> = vec![
        (
            "1 MiB login form",
            post(h.url("/_spawngate/login"), None, FORM, big(1 << 20)),
            413,
        ),
        (
            "4 MiB admin JSON",
            post(
                h.url("/_spawngate/api/users"),
                Some(&admin),
                JSON,
                format!("{{\"name\":\"{}\"}}", "x".repeat(4 << 20)),
            ),
            413,
        ),
        (
            "1 MiB body without credentials (answered before it is read)",
            post(h.url("/_spawngate/api/users"), None, JSON, big(1 << 20)),
            401,
        ),
        (
            "malformed JSON",
            post(
                h.url("/_spawngate/api/users"),
                Some(&admin),
                JSON,
                "{\"name\": \"bob\",,}".into(),
            ),
            400,
        ),
        (
            "JSON of the wrong shape",
            post(
                h.url("/_spawngate/api/users"),
                Some(&admin),
                JSON,
                "[1,2,3]".into(),
            ),
            400,
        ),
        (
            "malformed form encoding",
            Box::new({
                let (c, u) = (h.client.clone(), h.url("/_spawngate/login"));
                move || {
                    c.post(&u)
                        .header(CONTENT_TYPE, FORM)
                        .header("sec-fetch-site", "same-origin")
                        .body("email=%zz%&&==&\u{0}")
                }
            }),
            400,
        ),
        (
            "600 KiB cookie to an app (forwardAuth)",
            Box::new({
                let (c, u) = (h.client.clone(), h.url(&app_path));
                let cookie = format!("{cookie}; junk={}", "y".repeat(600 << 10));
                move || c.get(&u).header(COOKIE, cookie.clone())
            }),
            431,
        ),
        (
            "600 KiB cookie to the login page",
            Box::new({
                let (c, u) = (h.client.clone(), h.url("/_spawngate/login"));
                let cookie = format!("junk={}", "y".repeat(600 << 10));
                move || c.get(&u).header(COOKIE, cookie.clone())
            }),
            431,
        ),
        (
            "300 headers",
            Box::new({
                let (c, u) = (h.client.clone(), h.url(&app_path));
                let cookie = cookie.clone();
                move || {
                    let mut req = c.get(&u).header(COOKIE, cookie.clone());
                    for i in 0..300 {
                        req = req.header(format!("x-filler-{i}"), "1");
                    }
                    req
                }
            }),
            431,
        ),
        (
            "16 KiB query",
            Box::new({
                let (c, u) = (
                    h.client.clone(),
                    h.url(&format!("/_spawngate/login?next=/{}", "z".repeat(16 << 10))),
                );
                move || c.get(&u)
            }),
            414,
        ),
    ];

    let mut wrong = Vec::new();
    for (what, build, want) in &cases {
        let mut seen = BTreeMap::new();
        for _ in 0..ROUNDS {
            let status = match build().send().await {
                Ok(resp) => resp.status().as_u16().to_string(),
                Err(e) => format!("transport error: {e}"),
            };
            *seen.entry(status).or_insert(0) += 1;
        }
        if seen != BTreeMap::from([(want.to_string(), ROUNDS)]) {
            wrong.push(format!("{what}: want {want} every time, got {seen:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");

    // Still healthy: a normal request works on the same server.
    let ok = h.get_with_cookie(h.url(&app_path), &cookie).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(h.readyz().await.0, 200);
}
