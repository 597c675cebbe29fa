//! Subdomain mode through real Traefik: each environment on its own host
//! (`<slug>.apps.test`), sessions handed from the login host to one app host at a
//! time, and nothing an app host holds working anywhere else.

use serde_json::Value;

use crate::harness::{Harness, Options, client_resolving, session_cookie};

fn location(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("location")
        .expect("a Location header")
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_environment_gets_its_own_origin_and_a_session_handed_off_per_host() {
    let h = Harness::start(Options {
        public_host: Some("login.test".into()),
        extra_toml: "[server]\napps_domain = \"apps.test\"\n".into(),
        ..Default::default()
    })
    .await;
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let alice_host = format!("{}.apps.test", alice.slug);
    let bob_host = format!("{}.apps.test", bob.slug);
    let port = h.web_port;
    let client = client_resolving(
        &[
            "login.test".into(),
            alice_host.clone(),
            bob_host.clone(),
            "0123456789ab.apps.test".into(),
        ],
        port,
    );
    assert_eq!(alice.url, format!("http://{alice_host}:{port}/"));
    let app_url = |host: &str, path: &str| format!("http://{host}:{port}{path}");

    // Not signed in: the app host sends the browser to the login host's hand-off.
    let resp = client
        .get(app_url(&alice_host, "/whoami.json?x=1"))
        .header("Accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    let handoff = location(&resp);
    assert_eq!(
        handoff,
        format!(
            "http://login.test:{port}/_spawngate/handoff?slug={}&next=%2Fwhoami.json%3Fx%3D1",
            alice.slug
        )
    );
    // API clients get 401.
    let resp = client
        .get(app_url(&alice_host, "/whoami.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // The hand-off needs a sign-in first...
    let resp = client.get(&handoff).send().await.unwrap();
    assert_eq!(resp.status(), 302);
    assert!(location(&resp).starts_with("/_spawngate/login?next=%2F%5Fspawngate%2Fhandoff"));
    // ...then issues a code for Alice's host.
    let main_cookie = h.login("alice").await;
    let resp = client
        .get(&handoff)
        .header("Cookie", &main_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    assert_eq!(resp.headers()["referrer-policy"], "no-referrer");
    let redeem = location(&resp);
    assert!(
        redeem.starts_with(&app_url(&alice_host, "/_spawngate/handoff?code=")),
        "{redeem}"
    );

    // The code on another user's host is refused (and burnt).
    let code = redeem.split("code=").nth(1).unwrap();
    let wrong_host = client
        .get(app_url(
            &bob_host,
            &format!("/_spawngate/handoff?code={code}"),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_host.status(), 400);
    assert_eq!(
        client.get(&redeem).send().await.unwrap().status(),
        400,
        "burnt"
    );

    // A fresh code on the right host: a host-only cookie and back to the page.
    let resp = client
        .get(&handoff)
        .header("Cookie", &main_cookie)
        .send()
        .await
        .unwrap();
    let redeem = location(&resp);
    let resp = client.get(&redeem).send().await.unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(location(&resp), "/whoami.json?x=1");
    let set_cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        set_cookie.starts_with("spawngate_app=")
            && !set_cookie.to_ascii_lowercase().contains("domain="),
        "host-only app cookie: {set_cookie}"
    );
    assert!(set_cookie.contains("HttpOnly"));
    let app_cookie = session_cookie(resp.headers(), "spawngate_app").unwrap();
    assert_eq!(
        client.get(&redeem).send().await.unwrap().status(),
        400,
        "a code works once"
    );

    // A hand-off asked to land somewhere off-site lands on the app's root.
    let resp = client
        .get(format!(
            "http://login.test:{port}/_spawngate/handoff?slug={}&next=%2F%2Fevil.example%2F",
            alice.slug
        ))
        .header("Cookie", &main_cookie)
        .send()
        .await
        .unwrap();
    let resp = client.get(location(&resp)).send().await.unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(location(&resp), "/");
    // Another user's (or an unknown) slug: the same 403 at the login host.
    for slug in [bob.slug.clone(), "0123456789ab".into()] {
        let resp = client
            .get(format!(
                "http://login.test:{port}/_spawngate/handoff?slug={slug}&next=%2F"
            ))
            .header("Cookie", &main_cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403);
    }

    let who = client
        .get(app_url(&alice_host, "/whoami.json"))
        .header("Cookie", format!("{app_cookie}; theme=dark"))
        .send()
        .await
        .unwrap();
    assert_eq!(who.status(), 200);
    let who: Value = who.json().await.unwrap();
    assert_eq!(who["user"], "alice");
    assert_eq!(
        who["path"], "/whoami.json",
        "nothing stripped: the app owns its host"
    );
    assert_eq!(who["base_path"], "");
    assert_eq!(
        who["headers"]["cookie"], "theme=dark",
        "spawngate's cookie stays out"
    );

    // Alice's app cookie is worthless on Bob's host and on the login host.
    let on_bob = client
        .get(app_url(&bob_host, "/whoami.json"))
        .header("Cookie", &app_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(on_bob.status(), 401);
    let me = client
        .get(format!("http://login.test:{port}/_spawngate/api/me"))
        .header(
            "Cookie",
            app_cookie.replace("spawngate_app=", "spawngate_session="),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 401, "an app session is not a sign-in session");
    // spawngate's own pages are not served on app hosts (they would share the
    // app's origin): the request goes to the app.
    let api = client
        .get(app_url(&alice_host, "/_spawngate/api/me"))
        .header("Cookie", &app_cookie)
        .send()
        .await
        .unwrap();
    let body = api.text().await.unwrap();
    assert!(!body.contains("csrf"), "{body}");
    // Nor is the forwardAuth endpoint: through an app host no router serves, a
    // client cannot ask it for the identity headers (and the container secret).
    let probe = client
        .get(app_url(
            "0123456789ab.apps.test",
            &format!("/auth/u-{}", alice.slug),
        ))
        .header("Cookie", &app_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(probe.status(), 401);
    assert!(probe.headers().get("x-spawngate-user").is_none());
    assert!(probe.headers().get("x-spawngate-secret").is_none());

    // Signing out on the login host ends the app session too.
    let csrf: Value = client
        .get(format!("http://login.test:{port}/_spawngate/api/me"))
        .header("Cookie", &main_cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let out = client
        .post(format!("http://login.test:{port}/_spawngate/logout"))
        .header("Cookie", &main_cookie)
        .form(&[("csrf", csrf["csrf"].as_str().unwrap())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    let after = client
        .get(app_url(&alice_host, "/whoami.json"))
        .header("Cookie", &app_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 401);

    // Disabling ends an app-host session and voids a hand-off code in flight, and
    // enabling again brings neither back.
    let main_cookie = h.login("alice").await;
    let code_for = || {
        let req = client.get(&handoff).header("Cookie", &main_cookie);
        async move { location(&req.send().await.unwrap()) }
    };
    let app_cookie = {
        let resp = client.get(code_for().await).send().await.unwrap();
        session_cookie(resp.headers(), "spawngate_app").unwrap()
    };
    let in_flight = code_for().await;
    let app_status = || {
        let req = client
            .get(app_url(&alice_host, "/whoami.json"))
            .header("Cookie", &app_cookie);
        async move { req.send().await.unwrap().status() }
    };
    assert_eq!(app_status().await, 200);
    let admin = h.admin().await;
    admin.post_ok("users/alice/disable").await;
    admin.post_ok("users/alice/enable").await;
    assert_eq!(app_status().await, 401, "app-host session revoked");
    assert_eq!(
        client.get(&in_flight).send().await.unwrap().status(),
        400,
        "hand-off code void"
    );
}
