//! forwardAuth remembers verified cookies; whatever ends access must still take
//! effect on the very next request through Traefik, with the entry warm.

use reqwest::StatusCode;
use reqwest::header::COOKIE;
use serde_json::{Value, json};

use crate::harness::{Harness, Options};

/// Requests that make sure the cookie's verification is cached.
const WARM: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_cookie_is_refused_right_after_logout_revocation_unshare_disable_or_delete() {
    let h = Harness::start(Options::default()).await;
    let token = h.app.store.create_admin_token("ops").await.unwrap();
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let alice_url = h.url(&format!("/u-{}/whoami.json", alice.slug));
    let bob_url = h.url(&format!("/u-{}/whoami.json", bob.slug));
    let status = |url: &str, cookie: &str| {
        let req = h
            .client
            .get(url)
            .header(COOKIE, cookie.to_owned())
            .header("Accept", "application/json");
        async move { req.send().await.unwrap().status() }
    };
    let warm = |url: String, cookie: String, what: &'static str| {
        let status = &status;
        async move {
            for _ in 0..WARM {
                assert_eq!(status(&url, &cookie).await, StatusCode::OK, "{what}");
            }
        }
    };
    let admin = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut req = h
            .client
            .request(method, h.url(&format!("/_spawngate/api/{path}")))
            .bearer_auth(&token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        async move { req.send().await.unwrap().status() }
    };

    // Logout.
    let cookie = h.login("alice").await;
    warm(alice_url.clone(), cookie.clone(), "before logout").await;
    let me: Value = h
        .get_with_cookie(h.url("/_spawngate/api/me"), &cookie)
        .await
        .json()
        .await
        .unwrap();
    let csrf = me["csrf"].as_str().unwrap().to_owned();
    let out = h
        .client
        .post(h.url("/_spawngate/logout"))
        .header(COOKIE, &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        status(&alice_url, &cookie).await,
        StatusCode::UNAUTHORIZED,
        "logged out"
    );

    // An admin revoking the sessions.
    let cookie = h.login("alice").await;
    warm(alice_url.clone(), cookie.clone(), "before revoking").await;
    let revoke = admin(reqwest::Method::POST, "users/alice/sessions/revoke", None).await;
    assert_eq!(revoke, StatusCode::OK);
    assert_eq!(
        status(&alice_url, &cookie).await,
        StatusCode::UNAUTHORIZED,
        "revoked"
    );

    // A share removed.
    let bob_cookie = h.login("bob").await;
    let share = admin(
        reqwest::Method::PUT,
        "users/alice/shares/bob",
        Some(json!({ "read_only": false })),
    )
    .await;
    assert_eq!(share, StatusCode::OK);
    warm(alice_url.clone(), bob_cookie.clone(), "shared").await;
    let unshare = admin(reqwest::Method::DELETE, "users/alice/shares/bob", None).await;
    assert_eq!(unshare, StatusCode::OK);
    assert_eq!(
        status(&alice_url, &bob_cookie).await,
        StatusCode::FORBIDDEN,
        "no longer shared"
    );
    assert_eq!(
        status(&bob_url, &bob_cookie).await,
        StatusCode::OK,
        "bob's own environment still open"
    );

    // The user disabled.
    let cookie = h.login("alice").await;
    warm(alice_url.clone(), cookie.clone(), "before disabling").await;
    let disable = admin(reqwest::Method::POST, "users/alice/disable", None).await;
    assert_eq!(disable, StatusCode::OK);
    assert_eq!(
        status(&alice_url, &cookie).await,
        StatusCode::UNAUTHORIZED,
        "disabled"
    );

    // The user deleted.
    warm(bob_url.clone(), bob_cookie.clone(), "before deleting").await;
    let delete = admin(reqwest::Method::DELETE, "users/bob", None).await;
    assert_eq!(delete, StatusCode::OK);
    assert_ne!(
        status(&bob_url, &bob_cookie).await,
        StatusCode::OK,
        "deleted"
    );
}
