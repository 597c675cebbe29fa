//! End to end through real Traefik and real Docker: what a browser, an API client
//! and an admin see.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, COOKIE, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{Api, Backend, Harness, Options, get_json, random_hex};

const HTML: &str = "text/html,application/xhtml+xml";

async fn whoami(h: &Harness, slug: &str, cookie: &str) -> Value {
    let resp = h
        .get_with_cookie(h.url(&format!("/u-{slug}/whoami.json?probe=1")), cookie)
        .await;
    assert_eq!(resp.status(), 200, "whoami through Traefik");
    resp.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_browsers_are_sent_to_login_and_api_clients_get_401() {
    let h = Harness::start(Options::default()).await;
    let alice = h.user("alice").await;

    let browser = h
        .client
        .get(h.url(&format!("/u-{}/notebooks?x=1", alice.slug)))
        .header(ACCEPT, HTML)
        .send()
        .await
        .unwrap();
    assert_eq!(browser.status(), StatusCode::FOUND);
    // preserveLocationHeader keeps the relative login path (not spawngate's address).
    let location = browser.headers()[LOCATION].to_str().unwrap();
    assert_eq!(
        location,
        format!(
            "/_spawngate/login?next=%2Fu%2D{}%2Fnotebooks%3Fx%3D1",
            alice.slug
        )
    );

    let api = h
        .client
        .get(h.url(&format!("/u-{}/", alice.slug)))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), StatusCode::UNAUTHORIZED);
    assert!(api.headers().contains_key(WWW_AUTHENTICATE));
    let body: Value = api.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");

    // An unknown slug (caught by the low-priority router) answers the same way.
    let unknown = h
        .client
        .get(h.url(&format!("/u-{}/", random_hex(6))))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);

    // A WebSocket upgrade passes the same check.
    let resp = raw_upgrade(&h, &alice.slug, None).await;
    assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");

    // Nothing was started for anonymous requests.
    assert!(h.running_containers_of(&alice.slug).is_empty());
}

/// Sends a WebSocket upgrade to `/u-<slug>/ws` through Traefik; returns the raw head.
async fn raw_upgrade(h: &Harness, slug: &str, cookie: Option<&str>) -> String {
    let addr = h.public.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let cookie_line = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "GET /u-{slug}/ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{cookie_line}\r\n"
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_link_lands_on_own_container_with_prefix_stripped_and_no_credentials() {
    login_link_lands_on_own_container_with_prefix_stripped_and_no_credentials_on(Backend::Docker)
        .await;
}

pub(crate) async fn login_link_lands_on_own_container_with_prefix_stripped_and_no_credentials_on(
    backend: Backend,
) {
    let h = Harness::start(Options::default().on(backend)).await;
    let alice = h.user("alice").await;

    // The link page itself does not use the token up (link scanners GET it).
    let link = h.app.accounts.login_link("alice").await.unwrap();
    let token = link.url.split("token=").nth(1).unwrap().to_owned();
    for _ in 0..2 {
        let page = h
            .client
            .get(h.url(&format!("/_spawngate/login?token={token}")))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200);
        assert_eq!(page.headers()["referrer-policy"], "no-referrer");
        assert!(
            page.text()
                .await
                .unwrap()
                .contains("Sign in as <strong>alice</strong>")
        );
    }
    // The POST does, and redirects to the user's own prefix.
    let post = h
        .client
        .post(h.url("/_spawngate/login"))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), StatusCode::SEE_OTHER);
    assert_eq!(post.headers()[LOCATION], format!("/u-{}/", alice.slug));
    let set_cookie = post.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Lax"),
        "{set_cookie}"
    );
    let cookie = crate::harness::session_cookie(post.headers(), h.cookie_name()).unwrap();

    // Reusing the link fails.
    let reuse = h
        .client
        .post(h.url("/_spawngate/login"))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(reuse.status(), StatusCode::BAD_REQUEST);
    assert!(crate::harness::session_cookie(reuse.headers(), h.cookie_name()).is_none());

    // The first request starts the container and is held until it answers.
    let resp = h
        .client
        .get(h.url(&format!("/u-{}/whoami.json?a=b", alice.slug)))
        .header(COOKIE, format!("theme=dark; {cookie}; lang=en"))
        .header("X-Spawngate-User", "mallory")
        .header("X-Spawngate-Slug", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let who: Value = resp.json().await.unwrap();
    assert_eq!(who["user"], "alice");
    assert_eq!(who["slug"], alice.slug);
    assert_eq!(who["base_path"], format!("/u-{}", alice.slug));
    assert_eq!(who["path"], "/whoami.json", "prefix stripped");
    assert_eq!(who["query"], "a=b");
    let headers = &who["headers"];
    assert_eq!(
        headers["x-spawngate-user"], "alice",
        "client cannot forge identity"
    );
    assert_eq!(headers["x-spawngate-slug"], alice.slug.as_str());
    assert_eq!(
        headers["x-spawngate-secret"], "(redacted)",
        "the secret arrives (and the page hides it)"
    );
    assert_eq!(headers["x-forwarded-prefix"], format!("/u-{}", alice.slug));
    assert_eq!(
        headers["cookie"], "theme=dark; lang=en",
        "other cookies pass, the session cookie does not"
    );
    let all_headers = headers.to_string();
    assert!(
        !all_headers.contains(h.cookie_name()),
        "session cookie leaked: {all_headers}"
    );

    // A WebSocket through the same check reaches the app.
    let upgrade = raw_upgrade(&h, &alice.slug, Some(&cookie)).await;
    assert!(upgrade.starts_with("HTTP/1.1 101"), "{upgrade}");

    // The browser landing page works too.
    let page = h
        .client
        .get(h.url(&format!("/u-{}/", alice.slug)))
        .header(COOKIE, &cookie)
        .header(ACCEPT, HTML)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("alice"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_cookie_is_forbidden_exactly_like_an_unknown_slug() {
    another_users_cookie_is_forbidden_exactly_like_an_unknown_slug_on(Backend::Docker).await;
}

pub(crate) async fn another_users_cookie_is_forbidden_exactly_like_an_unknown_slug_on(
    backend: Backend,
) {
    let h = Harness::start(Options::default().on(backend)).await;
    let _alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let alice_cookie = h.login("alice").await;

    let on_bob = h
        .get_with_cookie(
            h.url(&format!("/u-{}/whoami.json", bob.slug)),
            &alice_cookie,
        )
        .await;
    assert_eq!(on_bob.status(), StatusCode::FORBIDDEN);
    let on_bob_body = on_bob.text().await.unwrap();

    let unknown = h
        .get_with_cookie(
            h.url(&format!("/u-{}/whoami.json", random_hex(6))),
            &alice_cookie,
        )
        .await;
    assert_eq!(unknown.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        unknown.text().await.unwrap(),
        on_bob_body,
        "indistinguishable"
    );

    // A path that only shares a prefix with bob's slug is not bob's.
    let prefix = h
        .get_with_cookie(h.url(&format!("/u-{}0/", bob.slug)), &alice_cookie)
        .await;
    assert_eq!(prefix.status(), StatusCode::FORBIDDEN);
    assert!(
        h.running_containers_of(&bob.slug).is_empty(),
        "nothing started for bob"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_expired_and_logged_out_cookies_count_as_none() {
    let h = Harness::start(Options::default()).await;
    let alice = h.user("alice").await;
    let cookie = h.login("alice").await;
    let (name, jwt) = cookie.split_once('=').unwrap();
    let url = h.url(&format!("/u-{}/", alice.slug));

    let mut tampered = jwt.to_owned();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });

    // A correctly signed but expired token for a real session.
    let user = h.app.store.snapshot().by_name("alice").unwrap().clone();
    let (sid, _) = h.app.store.create_session(&user.id, 3600).await.unwrap();
    let now = spawngate::time::unix_now();
    let expired = h.app.sessions.sign(&sid, &user.id, now - 7200, now - 3600);

    // Control: the untouched cookie passes, so the refusals below are about the
    // cookies, not a forwardAuth that refuses everyone.
    assert_eq!(h.get_with_cookie(&url, &cookie).await.status(), 200);
    for bad in [tampered.as_str(), expired.as_str(), "not-a-jwt", ""] {
        let resp = h.get_with_cookie(&url, &format!("{name}={bad}")).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "cookie {bad:?}");
    }
    assert_eq!(
        h.get_with_cookie(&url, &cookie).await.status(),
        200,
        "still signed in"
    );

    // Logged out (the form is tested in auth.rs): the same cookie, still validly
    // signed and unexpired, counts as none on the very next request.
    h.logout(&cookie).await;
    let resp = h.get_with_cookie(&url, &cookie).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "after logout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_first_requests_create_exactly_one_container() {
    twenty_concurrent_first_requests_create_exactly_one_container_on(Backend::Docker).await;
}

pub(crate) async fn twenty_concurrent_first_requests_create_exactly_one_container_on(
    backend: Backend,
) {
    // No pre-creation and no warm-up at login: the 20 requests really are first.
    let h = Harness::start(
        Options::toml("[lifecycle]\nprecreate = false\nstart_on_login = false").on(backend),
    )
    .await;
    let alice = h.user("alice").await;
    let cookie = h.login("alice").await;
    assert!(h.containers_of(&alice.slug).is_empty());

    let mut tasks = Vec::new();
    for _ in 0..20 {
        let client = h.client.clone();
        let url = h.url(&format!("/u-{}/whoami.json", alice.slug));
        let cookie = cookie.clone();
        tasks.push(tokio::spawn(async move {
            let resp = client.get(url).header(COOKIE, cookie).send().await.unwrap();
            let status = resp.status();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            (status, body)
        }));
    }
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["user"], "alice");
    }
    assert_eq!(h.containers_of(&alice.slug).len(), 1);
    assert_eq!(backend.environments_of(&h.instance, &alice.slug), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_manages_users_and_a_stopped_container_starts_again() {
    let h = Harness::start(Options::default()).await;
    let admin = h.admin().await;

    // No token, or a wrong one: 401 JSON.
    let anon = h.client.get(h.url("/_spawngate/api/users")).send().await;
    assert_eq!(anon.unwrap().status(), 401);
    let wrong = Api::new(&h.client, &h.public, "sgadm_wrong".into());
    let (status, body) = wrong.get("users").await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");

    let (status, carol) = admin
        .post(
            "users",
            Some(json!({ "name": "carol", "email": "carol@example.org" })),
        )
        .await;
    assert_eq!(status, 201, "{carol}");
    let slug = carol["slug"].as_str().unwrap().to_owned();
    assert_eq!(carol["url"], format!("{}/u-{slug}/", h.public));

    let (status, _) = admin.post("users", Some(json!({ "name": "carol" }))).await;
    assert_eq!(status, 409);
    let (status, _) = admin
        .post("users", Some(json!({ "name": "Not Valid" })))
        .await;
    assert_eq!(status, 400);
    assert_eq!(admin.get("users/nobody").await.0, 404);

    let status = || admin.get_ok("users/carol/container");
    assert_eq!(status().await["state"], "not_exists");

    h.wait_router(&format!("u-{slug}")).await;
    let cookie = h.login("carol").await;
    let first = whoami(&h, &slug, &cookie).await;
    let running = status().await;
    assert_eq!(running["state"], "running");
    let id = running["container_id"].as_str().unwrap().to_owned();

    let stopped = admin.post_ok("users/carol/container/stop").await;
    assert_eq!(stopped["state"], "stopped");

    // The next request starts the same container again; the volume kept the count
    // (the readiness probe's GET / counts as a visit too, so it may grow by two).
    let again = whoami(&h, &slug, &cookie).await;
    let (before, after_restart) = (
        first["visits"].as_u64().unwrap(),
        again["visits"].as_u64().unwrap(),
    );
    assert!(
        after_restart > before,
        "visits went from {before} to {after_restart}: volume lost?"
    );
    let after = status().await;
    assert_eq!(after["state"], "running");
    assert_eq!(
        after["container_id"],
        id.as_str(),
        "the stopped container was reused"
    );

    // Deleting the user removes container and volume; the old cookie is dead.
    assert_eq!(admin.delete("users/carol").await.0, 200);
    assert!(h.containers_of(&slug).is_empty());
    let gone = h
        .get_with_cookie(h.url(&format!("/u-{slug}/")), &cookie)
        .await;
    assert_eq!(gone.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traefik_accepts_every_router_and_middleware() {
    let h = Harness::start(Options::toml(
        "[server]\nprovider_token = \"0123456789abcdef-test\"",
    ))
    .await;
    let a = h.user("alice").await;
    let b = h.user("bob").await;

    // Without the token the provider answers 401.
    let anon = h
        .client
        .get(format!("{}/traefik/config", h.direct))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), 401);

    let (status, routers) =
        get_json(&h.client, &format!("{}/api/http/routers", h.traefik_api)).await;
    assert_eq!(status, 200, "{routers}");
    let routers = routers.as_array().unwrap();
    let ours: Vec<&Value> = routers.iter().filter(|r| r["provider"] == "http").collect();
    let names: Vec<&str> = ours.iter().map(|r| r["name"].as_str().unwrap()).collect();
    for expected in [
        "spawngate@http".to_owned(),
        "spawngate-unknown-users@http".to_owned(),
        format!("u-{}@http", a.slug),
        format!("u-{}@http", b.slug),
    ] {
        assert!(
            names.contains(&expected.as_str()),
            "{expected} missing from {names:?}"
        );
    }
    for r in &ours {
        assert_eq!(r["status"], "enabled", "{r}");
        assert!(r.get("error").is_none(), "{r}");
    }
    let middlewares: Vec<Value> = h
        .client
        .get(format!("{}/api/http/middlewares", h.traefik_api))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ours: Vec<&Value> = middlewares
        .iter()
        .filter(|m| m["provider"] == "http")
        .collect();
    assert_eq!(
        ours.len(),
        5,
        "auth per user, one shared strip, one shared app-gone errors page, one shared app-headers"
    );
    for m in ours {
        assert_eq!(m["status"], "enabled", "{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_see_a_waiting_page_when_the_start_outlasts_the_hold() {
    let h = Harness::start(Options {
        // The app takes 3 s to listen: both first requests find it starting.
        extra_toml: "[spawn]\nhold_secs = 0\n[docker]\nenv = [\"STARTUP_DELAY_MS=3000\"]".into(),
        ..Default::default()
    })
    .await;
    let alice = h.user("alice").await;
    let cookie = h.login("alice").await;
    let url = h.url(&format!("/u-{}/", alice.slug));

    let first = h
        .client
        .get(&url)
        .header(COOKIE, &cookie)
        .header(ACCEPT, HTML)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(first.headers()[RETRY_AFTER], "2");
    let body = first.text().await.unwrap();
    assert!(body.contains("http-equiv=\"refresh\""), "{body}");

    let api = h.get_with_cookie(&url, &cookie).await;
    assert_eq!(api.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = api.json().await.unwrap();
    assert_eq!(body["error"]["code"], "starting", "{body}");

    // Refreshing (bounded) lands on the app; until then, only "starting".
    let resp = h.get_when_started(&url, &cookie, 20).await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_image_gives_a_clear_503_and_no_container() {
    let h = Harness::start(Options {
        image: "spawngate-no-such-image:missing".into(),
        ..Default::default()
    })
    .await;
    let alice = h.user("alice").await;
    let cookie = h.login("alice").await;
    let resp = h
        .get_with_cookie(h.url(&format!("/u-{}/", alice.slug)), &cookie)
        .await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "spawn_failed");
    assert_eq!(
        body["error"]["message"],
        "the environment's image is missing on the server"
    );
    assert!(h.containers_of(&alice.slug).is_empty());

    // The admin sees the operator detail.
    let status = h.admin().await.get_ok("users/alice/container").await;
    assert_eq!(status["state"], "not_exists", "{status}");
    let detail = status["last_error"].as_str().unwrap_or_default();
    assert!(
        detail.contains("spawngate-no-such-image:missing"),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_down_gives_a_clear_503_and_readyz_fails_but_healthz_stays_up() {
    let h = Harness::start(Options::toml(
        "[docker]\nhost = \"unix:///nonexistent/docker.sock\"",
    ))
    .await;
    let alice = h.user("alice").await;
    let cookie = h.login("alice").await;

    let resp = h
        .get_with_cookie(h.url(&format!("/u-{}/", alice.slug)), &cookie)
        .await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.headers().contains_key(RETRY_AFTER));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "spawn_failed");
    assert_eq!(
        body["error"]["message"],
        "Docker, which runs the environments, is unreachable right now; try again in a moment"
    );

    let page = h
        .client
        .get(h.url(&format!("/u-{}/", alice.slug)))
        .header(COOKIE, &cookie)
        .header(ACCEPT, HTML)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(page.text().await.unwrap().contains("could not be started"));

    let (status, ready) = h.readyz().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready["store"], "ok");
    assert_ne!(ready["docker"], "ok");
    let health = h
        .client
        .get(format!("{}/healthz", h.direct))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    // The failure is recorded for the admin, and nothing is half-written.
    let (status, body) = h.admin().await.get("users/alice/container").await;
    assert!(
        status.is_server_error() && body["error"]["message"].is_string(),
        "status needs Docker and says so: {status} {body}"
    );
}
