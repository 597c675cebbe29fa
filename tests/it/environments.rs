//! Several environments per user, of different profiles, through real Traefik
//! and Docker: created and deleted by the user (CSRF-protected API) and by an
//! admin, each with its own route, container and sharing; profile restrictions;
//! and a store written by the previous release opening in place.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::cli::{spawngate, stderr, stdout};
use crate::harness::{Harness, Options, poll};

const PROFILES: &str = r#"
[limits]
environments_per_user = 3

[profiles.raw]
display_name = "Unstripped example app"
image = "spawngate-example-app:latest"
strip_prefix = false
env = ["GREETING=hello from {base_path}"]

[profiles.restricted]
image = "spawngate-example-app:latest"
users = ["bob"]

[profiles.tokened]
image = "spawngate-example-app:latest"
app_auth = "token"

[profiles.science]
image = "spawngate-example-app:latest"
groups = ["sci"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_runs_two_environments_of_different_profiles_and_deletes_one() {
    let h = Harness::start(Options::toml(PROFILES)).await;
    let alice = h.user("alice").await;
    h.user("bob").await;
    let cookie = h.login("alice").await;
    let bob_cookie = h.login("bob").await;
    let post = reqwest::Method::POST;

    // The profiles alice may choose: not the one kept for bob.
    let (status, list) = h
        .me_call(&cookie, reqwest::Method::GET, "environments", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let names: Vec<&str> = list["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "raw", "tokened"], "{list}");
    assert_eq!(list["environments"].as_array().unwrap().len(), 1);
    assert_eq!(list["environments"][0]["environment"], "default");

    // Refusals say why and create nothing.
    let (status, body) = h
        .me_call(
            &cookie,
            post.clone(),
            "environments",
            Some(json!({ "name": "mine", "profile": "restricted" })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = h
        .me_call(
            &cookie,
            post.clone(),
            "environments",
            Some(json!({ "name": "Not OK", "profile": "raw" })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let no_csrf = h
        .client
        .post(h.url("/_spawngate/api/me/environments"))
        .header("Cookie", &cookie)
        .json(&json!({ "name": "lab", "profile": "raw" }))
        .send()
        .await
        .unwrap();
    assert_eq!(no_csrf.status(), StatusCode::FORBIDDEN);

    let (status, lab) = h
        .me_call(
            &cookie,
            post.clone(),
            "environments",
            Some(json!({ "name": "lab", "profile": "raw" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{lab}");
    assert_eq!(lab["profile"], "raw");
    let lab_slug = lab["slug"].as_str().unwrap().to_owned();
    assert_ne!(lab_slug, alice.slug, "its own slug");
    let (status, dup) = h
        .me_call(
            &cookie,
            post.clone(),
            "environments",
            Some(json!({ "name": "lab" })),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{dup}");
    h.wait_router(&format!("u-{lab_slug}")).await;

    // Both at once: the default one strips the prefix, the raw one does not and
    // gets its profile's environment with the base path filled in.
    let default_url = h.url(&format!("/u-{}/whoami.json", alice.slug));
    let lab_url = h.url(&format!("/u-{lab_slug}/whoami.json"));
    let (first, second) = tokio::join!(
        h.get_when_started(&default_url, &cookie, 30),
        h.get_when_started(&lab_url, &cookie, 30),
    );
    assert_eq!(first.status(), StatusCode::OK);
    let who: Value = first.json().await.unwrap();
    assert_eq!(who["path"], "/whoami.json", "stripped: {who}");
    assert_eq!(second.status(), StatusCode::OK);
    let page = second.text().await.unwrap();
    assert!(
        page.contains(&format!("/u-{lab_slug}/whoami.json")),
        "the app got the path unchanged: {page}"
    );
    assert!(
        page.contains(&format!("/u-{lab_slug}")),
        "base path: {page}"
    );
    assert_eq!(h.running_containers_of(&alice.slug).len(), 1);
    assert_eq!(h.running_containers_of(&lab_slug).len(), 1);
    let lab_container = &h.running_containers_of(&lab_slug)[0];
    let env = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{json .Config.Env}}", lab_container])
        .output()
        .unwrap();
    let env = String::from_utf8_lossy(&env.stdout);
    assert!(
        env.contains(&format!("GREETING=hello from /u-{lab_slug}"))
            && env.contains("SPAWNGATE_ENVIRONMENT=lab")
            && env.contains("SPAWNGATE_PROFILE=raw"),
        "{env}"
    );

    // Sharing is per environment: bob gets the lab, not the default one.
    let bob_lab = h.get_with_cookie(&lab_url, &bob_cookie).await;
    assert_eq!(bob_lab.status(), StatusCode::FORBIDDEN);
    let (status, shared) = h
        .me_call(
            &cookie,
            reqwest::Method::PUT,
            "environments/lab/shares/bob",
            Some(json!({ "read_only": false })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{shared}");
    assert_eq!(
        h.get_with_cookie(&lab_url, &bob_cookie).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        h.get_with_cookie(&default_url, &bob_cookie).await.status(),
        StatusCode::FORBIDDEN
    );

    // The limit counts the default environment.
    let (status, _) = h
        .me_call(
            &cookie,
            post.clone(),
            "environments",
            Some(json!({ "name": "two" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, full) = h
        .me_call(
            &cookie,
            post.clone(),
            "environments",
            Some(json!({ "name": "three" })),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{full}");
    assert!(
        full["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("environments_per_user")
    );

    // The dashboard lists them with their profile, and stops making room at the limit.
    let page = h
        .get_with_cookie(h.url("/_spawngate/"), &cookie)
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains("Your other environments"), "{page}");
    assert!(page.contains(r#"data-environment="lab""#), "{page}");
    assert!(page.contains("Unstripped example app"), "{page}");
    assert!(page.contains("the most allowed"), "{page}");

    // Deleting the lab takes its container and route; the default one goes on.
    let (status, _) = h
        .me_call(&cookie, reqwest::Method::DELETE, "environments/lab", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(h.containers_of(&lab_slug).is_empty(), "container removed");
    poll(20, "the deleted environment's route to go", || async {
        let s = h.get_with_cookie(&lab_url, &cookie).await.status();
        (s != StatusCode::OK).then_some(())
    })
    .await;
    assert_eq!(
        h.get_with_cookie(&default_url, &cookie).await.status(),
        StatusCode::OK
    );

    // An admin may give anyone any profile, and lists their environments.
    let admin = h.admin().await;
    let (status, ops) = admin
        .post(
            "users/alice/environments",
            Some(json!({ "name": "ops", "profile": "restricted" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{ops}");
    let (_, listed) = admin.get("users/alice/environments").await;
    let names: Vec<&str> = listed["environments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["environment"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "two", "ops"], "{listed}");

    // An app signed in with the owner's token cannot be shared read-only.
    let (status, _) = admin
        .post(
            "users/bob/environments",
            Some(json!({ "name": "tok", "profile": "tokened" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, refused) = admin
        .put(
            "users/bob/environments/tok/shares/alice",
            json!({ "read_only": true }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("read-only")
    );

    // A profile chosen through a group stops starting once the group is gone.
    let (status, _) = admin
        .call(
            reqwest::Method::PATCH,
            "users/bob",
            Some(json!({ "groups": ["sci"] })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, sci) = h
        .me_call(
            &bob_cookie,
            post.clone(),
            "environments",
            Some(json!({ "name": "sci", "profile": "science" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sci}");
    let (status, _) = admin
        .call(
            reqwest::Method::PATCH,
            "users/bob",
            Some(json!({ "groups": [] })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, started) = h
        .me_call(&bob_cookie, post.clone(), "environments/sci/start", None)
        .await;
    assert_ne!(status, StatusCode::OK, "{started}");
    assert!(
        started["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no longer use the profile"),
        "{started}"
    );
    assert!(
        h.running_containers_of(sci["slug"].as_str().unwrap())
            .is_empty()
    );
}

#[test]
fn a_store_written_by_the_previous_release_opens_in_place() {
    // Written by the release before environments existed: ann (with an email,
    // a host port, shared read-only with bob) and bob (an admin).
    let dir = tempfile::tempdir().unwrap();
    let fixture = crate::harness::repo_root().join("tests/fixtures/store-previous-release.tar.gz");
    let untar = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(&fixture)
        .arg("-C")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(untar.success());
    let data = dir.path().join("data");
    let more = [("SPAWNGATE_LIMITS_ENVIRONMENTS_PER_USER", "2")];

    let list = spawngate(&data, &["user", "list", "--json"], &more);
    assert!(list.status.success(), "{}", stderr(&list));
    let users: Value = serde_json::from_str(&stdout(&list)).unwrap();
    let ann = &users[0];
    assert_eq!(ann["name"], "ann");
    assert_eq!(ann["email"], "ann@example.org");
    assert_eq!(
        ann["slug"], "0d680cd03424",
        "the old slug stays the default environment's"
    );
    assert_eq!(ann["environments"][0]["name"], "default");
    assert_eq!(ann["environments"][0]["slug"], "0d680cd03424");
    assert_eq!(ann["shared_with"][0]["user"], "bob");
    assert_eq!(ann["shared_with"][0]["read_only"], true);
    assert_eq!(users[1]["admin"], true);

    // The upgraded store takes new environments and still backs up.
    let add = spawngate(&data, &["env", "add", "ann", "lab"], &more);
    assert!(add.status.success(), "{}", stderr(&add));
    assert!(
        stdout(&add).contains("created environment lab"),
        "{}",
        stdout(&add)
    );
    let envs = spawngate(&data, &["env", "list", "ann"], &more);
    assert!(stdout(&envs).contains("lab"), "{}", stdout(&envs));
    let full = spawngate(&data, &["env", "add", "ann", "more"], &more);
    assert!(!full.status.success());
    assert!(
        stderr(&full).contains("environments_per_user"),
        "{}",
        stderr(&full)
    );
    let backup = dir.path().join("backup.json");
    let done = spawngate(&data, &["backup", backup.to_str().unwrap()], &more);
    assert!(done.status.success(), "{}", stderr(&done));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_creates_opens_and_deletes_an_environment_from_the_dashboard() {
    let h = Harness::start(Options::toml(PROFILES)).await;
    h.user("alice").await;
    let mut b = crate::browser::Browser::start().await;
    let link = h.app.accounts.login_link("alice").await.unwrap().url;
    b.navigate(&format!("{link}&next=%2F_spawngate%2F")).await;
    b.click("form button[type=submit]").await;
    b.wait_for(
        30,
        "the dashboard",
        "location.pathname === '/_spawngate/' && document.querySelector('#env-name') !== null",
    )
    .await;
    // Only the profiles alice may use are offered.
    let offered = b
        .text("[...document.querySelectorAll('#env-profile option')].map(o => o.value).join(',')")
        .await;
    assert_eq!(offered, "default,raw,tokened");

    b.eval("document.querySelector('#env-name').value = 'lab'; document.querySelector('#env-profile').value = 'raw'; true")
        .await;
    b.click("form[action='/_spawngate/me/environments'] button")
        .await;
    b.wait_for(
        30,
        "the new environment's row",
        "document.querySelector('tr[data-environment=lab]') !== null",
    )
    .await;
    assert!(
        b.text("document.querySelector('.notice').textContent")
            .await
            .contains("created")
    );
    b.screenshot("environments.png").await;

    // Its link opens it through Traefik (the start page, then the app itself).
    let href = b
        .text("document.querySelector('tr[data-environment=lab] a').getAttribute('href')")
        .await;
    let slug = href.trim_matches('/').trim_start_matches("u-").to_owned();
    h.wait_router(&format!("u-{slug}")).await;
    b.click("tr[data-environment=lab] a").await;
    b.wait_for(
        60,
        "the app under its unstripped path",
        &format!("document.body && document.body.innerText.includes('/u-{slug}/')"),
    )
    .await;

    b.open(&h.url("/_spawngate/"), "/_spawngate/").await;
    b.click("tr[data-environment=lab] form[action='/_spawngate/me/environments/delete'] button")
        .await;
    b.wait_for(
        30,
        "the row to go",
        "document.querySelector('tr[data-environment=lab]') === null && document.querySelector('.notice') !== null",
    )
    .await;
    assert!(h.containers_of(&slug).is_empty());
}
