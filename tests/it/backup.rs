//! `spawngate backup` and `spawngate restore` as an operator moves a site to a new
//! data directory: backed up while serving, restored offline, served again by a
//! new spawngate (same Docker instance) through a fresh Traefik.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use reqwest::StatusCode;
use reqwest::header::COOKIE;
use serde_json::Value;

use crate::cli::{spawngate, stderr, stdout};
use crate::harness::{Api, Traefik, free_port, poll};
use crate::proc::{ProcHarness, inspect};

/// GETs `url` (with `cookie` or a bearer `token`) until the container answers (a
/// first visit starts it), bounded.
async fn get_ready(h: &ProcHarness, url: &str, auth: Auth<'_>) -> (StatusCode, Value) {
    poll(60, format!("{url} to finish starting"), || async {
        let req = h.client.get(url);
        let req = match auth {
            Auth::Cookie(c) => req.header(COOKIE, c),
            Auth::Bearer(t) => req.bearer_auth(t),
        };
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let body = resp.json().await.unwrap_or(Value::Null);
        // 503 is the documented "still starting" answer; anything else is final.
        (status != StatusCode::SERVICE_UNAVAILABLE).then_some((status, body))
    })
    .await
}

#[derive(Clone, Copy)]
enum Auth<'a> {
    Cookie(&'a str),
    Bearer(&'a str),
}

fn ok(out: &std::process::Output) -> String {
    assert!(out.status.success(), "{}{}", stdout(out), stderr(out));
    stdout(out)
}

async fn provider_config(h: &ProcHarness) -> Value {
    h.client
        .get(format!("{}/traefik/config", h.direct))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_serving_restores_users_sessions_tokens_shares_and_the_container() {
    let mut h = ProcHarness::start(&[("SPAWNGATE_LIFECYCLE_START_ON_LOGIN", "false")]).await;
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    ok(&h.cli(&["user", "share", "alice", "bob"]));
    let alice_cookie = h.login("alice").await;
    let bob_cookie = h.login("bob").await;
    let admin = ok(&h.cli(&["token", "--name", "ops"])).trim().to_owned();

    // alice's personal API token, made as she would (cookie + CSRF header).
    let api_token = crate::harness::personal_token(&h.client, &h.public, &alice_cookie, "ci").await;

    // alice's container runs.
    let alice_url = format!("{}/u-{alice}/whoami.json", h.public);
    let (status, who) = get_ready(&h, &alice_url, Auth::Cookie(&alice_cookie)).await;
    assert_eq!(status, 200, "{who}");
    let name = format!("spawngate-u-{alice}");
    let (id, started) = (
        inspect(&name, "{{.Id}}"),
        inspect(&name, "{{.State.StartedAt}}"),
    );
    let routes = provider_config(&h).await;
    let service = |routes: &Value, slug: &str| {
        routes["http"]["services"][format!("u-{slug}")]["loadBalancer"]["servers"][0]["url"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(service(&routes, &alice).starts_with("http://127.0.0.1:"));

    // Backed up while serving, through the control socket.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("site.backup");
    let file_arg = file.to_str().unwrap();
    let out = ok(&h.cli(&["backup", file_arg]));
    assert!(out.starts_with("backed up 2 users"), "{out}");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the backup holds the session key");
    let header: Value = serde_json::from_str(
        std::fs::read_to_string(&file)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["format"], "spawngate-backup");
    assert_eq!(header["version"], 1);
    let again = h.cli_with(&[], &["backup", file_arg]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("exists already"),
        "{}",
        stderr(&again)
    );
    ok(&h.cli(&["backup", "--force", file_arg]));

    // Never over the network, admin token or not.
    for base in [&h.direct, &h.public] {
        let resp = h
            .client
            .get(format!("{base}/_spawngate/api/backup"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{base}");
        assert!(!resp.text().await.unwrap().contains("spawngate-backup"));
    }

    // Restore refuses the data directory of a running server.
    let serving = h.cli_with(&[], &["restore", "--force", file_arg]);
    assert!(!serving.status.success());
    assert!(
        stderr(&serving).contains("is serving on") && stderr(&serving).contains("stop it"),
        "{}",
        stderr(&serving)
    );

    // Move: stop the server (containers keep running), restore into a new data
    // directory, start spawngate there and a fresh Traefik reading it.
    h.signal("TERM").await;
    let new_dir = tempfile::tempdir().unwrap();
    let new_data = new_dir.path().join("data");
    let new_data = new_data.to_str().unwrap();
    let out = ok(&h.cli_with(
        &[("SPAWNGATE_SERVER_DATA_DIR", new_data)],
        &["restore", file_arg],
    ));
    assert!(out.starts_with("restored 2 users"), "{out}");
    h.set_env("SPAWNGATE_SERVER_DATA_DIR", new_data);
    h.spawn_server().await;
    let web_port: u16 = h.public.rsplit(':').next().unwrap().parse().unwrap();
    h.traefik = None;
    let traefik = Traefik::start(web_port, free_port(), &h.direct, None, &[]).await;
    traefik.wait_router(&format!("u-{alice}")).await;
    traefik.wait_router(&format!("u-{bob}")).await;
    h.traefik = Some(traefik);

    // Same slugs at the same host ports.
    let restored = provider_config(&h).await;
    for slug in [&alice, &bob] {
        assert_eq!(service(&restored, slug), service(&routes, slug), "{slug}");
    }
    // The old session cookie works, and the running container was adopted: same
    // container, not restarted (its secret, derived from the restored key, matches).
    let (status, who) = get_ready(&h, &alice_url, Auth::Cookie(&alice_cookie)).await;
    assert_eq!(status, 200, "{who}");
    assert_eq!(who["headers"]["x-spawngate-user"], "alice");
    assert_eq!(inspect(&name, "{{.Id}}"), id, "same container");
    assert_eq!(
        inspect(&name, "{{.State.StartedAt}}"),
        started,
        "not restarted"
    );
    assert_eq!(h.containers_of(&alice).len(), 1);
    // The personal API token and the share still work; so does the admin token.
    let (status, who) = get_ready(&h, &alice_url, Auth::Bearer(&api_token)).await;
    assert_eq!(status, 200, "{who}");
    let (status, who) = get_ready(&h, &alice_url, Auth::Cookie(&bob_cookie)).await;
    assert_eq!(status, 200, "{who}");
    assert_eq!(who["headers"]["x-spawngate-user"], "bob");
    assert_eq!(who["headers"]["x-spawngate-access"], "shared");
    let users = Api::new(&h.client, &h.direct, admin.clone()).users().await;
    let names: Vec<&str> = users.iter().map(|u| u["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["alice", "bob"]);
    // And bob's own environment at his old slug.
    let bob_url = format!("{}/u-{bob}/whoami.json", h.public);
    let (status, who) = get_ready(&h, &bob_url, Auth::Cookie(&bob_cookie)).await;
    assert_eq!(status, 200, "{who}");
    assert_eq!(who["slug"], bob.as_str());
}

/// Every file under `dir` with its contents: a restore that refuses must leave
/// exactly this.
fn tree_of(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn restore_refuses_newer_versions_non_empty_stores_and_corrupt_files() {
    let site = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    for name in ["alice", "bob"] {
        ok(&spawngate(site.path(), &["user", "add", name], &[]));
    }
    let file = work.path().join("site.backup");
    let file_arg = file.to_str().unwrap();
    ok(&spawngate(site.path(), &["backup", file_arg], &[]));
    let text = std::fs::read_to_string(&file).unwrap();
    let users_before = ok(&spawngate(site.path(), &["user", "list", "--json"], &[]));

    // A newer format: refused, nothing created.
    let newer = work.path().join("newer.backup");
    std::fs::write(&newer, text.replacen("\"version\":1", "\"version\":2", 1)).unwrap();
    let fresh = work.path().join("fresh");
    let out = spawngate(&fresh, &["restore", newer.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("line 1: backup format version 2 is newer"),
        "{}",
        stderr(&out)
    );
    assert!(!fresh.exists(), "nothing is created for a refused backup");

    // A non-empty store without --force.
    let out = spawngate(site.path(), &["restore", file_arg], &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is not empty (2 users") && stderr(&out).contains("--force"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        ok(&spawngate(site.path(), &["user", "list", "--json"], &[])),
        users_before
    );

    // Truncated mid-line, cut at a line end, or edited: refused naming the line,
    // even with --force, and the data directory is byte for byte as it was.
    let lines: Vec<&str> = text.lines().collect();
    let cut_mid = &text[..text.find(lines[3]).unwrap() + lines[3].len() / 2];
    let cut_line: String = lines[..4].iter().map(|l| format!("{l}\n")).collect();
    let edited = text.replacen("\"alice\"", "\"mallory\"", 1);
    let before = tree_of(site.path());
    for (what, content, expected) in [
        ("cut mid-line", cut_mid.to_owned(), "line 4: not valid JSON"),
        (
            "cut at a line end",
            cut_line,
            "line 4: the file ends here without its end line",
        ),
        ("edited", edited, "the checksum does not match"),
    ] {
        let bad = work.path().join("bad.backup");
        std::fs::write(&bad, content).unwrap();
        let out = spawngate(
            site.path(),
            &["restore", "--force", bad.to_str().unwrap()],
            &[],
        );
        assert!(!out.status.success(), "{what}");
        assert!(stderr(&out).contains(expected), "{what}: {}", stderr(&out));
        assert_eq!(tree_of(site.path()), before, "{what}: data dir changed");
    }

    // With --force a good backup replaces the store; the old one is kept.
    let out = ok(&spawngate(
        site.path(),
        &["restore", "--force", file_arg],
        &[],
    ));
    let kept = out
        .lines()
        .find_map(|l| l.strip_prefix("the previous store is kept in "))
        .unwrap();
    assert!(Path::new(kept).is_dir(), "{out}");
    assert!(kept.starts_with(site.path().join("db.old-").to_str().unwrap()));
    assert_eq!(
        ok(&spawngate(site.path(), &["user", "list", "--json"], &[])),
        users_before
    );
}
