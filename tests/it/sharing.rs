//! Sharing an environment with other users, through Traefik: grants by the owner
//! (self-service, CSRF-protected) and by an admin, the access header the container
//! sees, and revocation taking effect on the next request.

use serde_json::{Value, json};

use crate::harness::{Harness, Options, personal_token};

async fn me_csrf(h: &Harness, cookie: &str) -> String {
    h.me(cookie).await["csrf"].as_str().unwrap().to_owned()
}

async fn whoami(h: &Harness, url: &str, cookie: &str) -> (u16, Value) {
    let resp = h
        .client
        .get(url)
        .header("Cookie", cookie)
        .header("Accept", "application/json")
        // A client cannot claim more access than it has.
        .header("X-Spawngate-Access", "owner")
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_and_admins_share_environments_read_only_or_full_and_revoke_at_once() {
    let h = Harness::start(Options::default()).await;
    let admin = h.admin().await;
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    h.user("carol").await;
    let (alice_cookie, bob_cookie, carol_cookie) = (
        h.login("alice").await,
        h.login("bob").await,
        h.login("carol").await,
    );
    let url = h.url(&format!("/u-{}/whoami.json", alice.slug));

    let (status, _) = whoami(&h, &url, &bob_cookie).await;
    assert_eq!(status, 403, "not shared yet");

    // Alice shares read-only with Bob; the self-service API needs her CSRF token.
    let share_url = h.url("/_spawngate/api/me/shares/bob");
    let no_csrf = h
        .client
        .put(&share_url)
        .header("Cookie", &alice_cookie)
        .json(&json!({ "read_only": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(no_csrf.status(), 403);
    let csrf = me_csrf(&h, &alice_cookie).await;
    let resp = h
        .client
        .put(&share_url)
        .header("Cookie", &alice_cookie)
        .header("X-Spawngate-CSRF", &csrf)
        .json(&json!({ "read_only": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["shared_with"][0]["user"], "bob");
    assert_eq!(body["shared_with"][0]["read_only"], true);

    let (status, who) = whoami(&h, &url, &bob_cookie).await;
    assert_eq!(status, 200);
    assert_eq!(who["user"], "alice", "Bob sees Alice's container");
    assert_eq!(who["headers"]["x-spawngate-user"], "bob");
    assert_eq!(who["headers"]["x-spawngate-access"], "read-only");
    let (_, who) = whoami(&h, &url, &alice_cookie).await;
    assert_eq!(who["headers"]["x-spawngate-access"], "owner");

    // Bob's home page links to it.
    let home = h
        .get_with_cookie(h.url("/_spawngate/"), &bob_cookie)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        home.contains(&format!("/u-{}/", alice.slug)) && home.contains("(read-only)"),
        "{home}"
    );

    // Bob's personal API token stays limited to his own slug.
    let token = personal_token(&h.client, &h.public, &bob_cookie, "script").await;
    let by_token = h.client.get(&url).bearer_auth(token).send().await.unwrap();
    assert_eq!(by_token.status(), 403);

    // An admin shares with Carol, with full access.
    let (status, body) = admin
        .put("users/alice/shares/carol", json!({ "read_only": false }))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, who) = whoami(&h, &url, &carol_cookie).await;
    assert_eq!(status, 200);
    assert_eq!(who["headers"]["x-spawngate-access"], "shared");

    // Sharing is one-way: Alice gets nothing of Bob's.
    let (status, _) = whoami(
        &h,
        &h.url(&format!("/u-{}/whoami.json", bob.slug)),
        &alice_cookie,
    )
    .await;
    assert_eq!(status, 403);

    // Revoked: Bob's very next request is refused.
    let resp = h
        .client
        .delete(&share_url)
        .header("Cookie", &alice_cookie)
        .header("X-Spawngate-CSRF", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (status, _) = whoami(&h, &url, &bob_cookie).await;
    assert_eq!(status, 403);
    let (status, _) = whoami(&h, &url, &carol_cookie).await;
    assert_eq!(status, 200, "Carol's grant is untouched");

    // Disabling Alice closes her environment to her grantees too.
    admin.post_ok("users/alice/disable").await;
    let (status, _) = whoami(&h, &url, &carol_cookie).await;
    assert_eq!(status, 403, "a disabled user's environment is closed");
    admin.post_ok("users/alice/enable").await;
    let (status, _) = whoami(&h, &url, &carol_cookie).await;
    assert_eq!(status, 200);

    // Deleting Carol removes her grant too.
    assert_eq!(admin.delete("users/carol").await.0, 200);
    let alice = admin.get_ok("users/alice").await;
    assert_eq!(alice["shared_with"], json!([]), "{alice}");
}

/// In path mode every app shares spawngate's origin, so an app shared with an
/// admin would run its scripts with the admin's session: an admin opens only their
/// own environment there. Taking the flag away gives the share back at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_path_mode_an_admin_is_refused_environments_shared_with_them() {
    let h = Harness::start(Options::default()).await;
    let admin = h.admin().await;
    let alice = h.user("alice").await;
    let boss = h.user("boss").await;
    let (status, body) = admin
        .call(
            reqwest::Method::PATCH,
            "users/boss",
            Some(json!({ "admin": true })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = admin
        .put("users/alice/shares/boss", json!({ "read_only": false }))
        .await;
    assert_eq!(status, 200, "{body}");
    let boss_cookie = h.login("boss").await;

    let shared = h.url(&format!("/u-{}/whoami.json", alice.slug));
    let resp = h
        .client
        .get(&shared)
        .header("Cookie", &boss_cookie)
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("subdomain mode"), "{body}");
    // Their own environment opens as for anyone.
    let own = h.url(&format!("/u-{}/whoami.json", boss.slug));
    let resp = h.get_when_started(&own, &boss_cookie, 30).await;
    assert_eq!(resp.status(), 200);

    let (status, body) = admin
        .call(
            reqwest::Method::PATCH,
            "users/boss",
            Some(json!({ "admin": false })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let resp = h.get_when_started(&shared, &boss_cookie, 30).await;
    assert_eq!(resp.status(), 200, "no longer an admin: the share works");
    let who: Value = resp.json().await.unwrap();
    assert_eq!(who["user"], "alice");
    assert_eq!(who["headers"]["x-spawngate-user"], "boss");
}
