//! Faults against the real thing: Docker going away in the middle of a spawn and
//! coming back (through a socket proxy the test stops and restarts), and the real
//! spawngate binary SIGKILLed while users are created, deleted and shared.

use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, COOKIE, RETRY_AFTER};
use serde_json::Value;

use spawngate::lifecycle::Phase;

use crate::docker_proxy::DockerProxy;
use crate::harness::{Harness, Options, containers_of, docker_lines, get_json, poll, random_hex};
use crate::proc::{ProcHarness, inspect};

const HTML: &str = "text/html,application/xhtml+xml";

async fn get(h: &Harness, url: &str, cookie: &str, accept: Option<&str>) -> reqwest::Response {
    let mut req = h.client.get(url).header(COOKIE, cookie);
    if let Some(accept) = accept {
        req = req.header(ACCEPT, accept);
    }
    req.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_lost_mid_spawn_gives_a_clear_503_and_everything_recovers_by_itself() {
    let socket = std::env::temp_dir().join(format!("sgfaults-{}.sock", random_hex(5)));
    // Declared first, so the harness (and its clean-up) goes before the proxy.
    let mut proxy = DockerProxy::start(&socket);
    let h = Harness::start(Options::toml(&format!(
        "[docker]\nhost = {:?}\n",
        proxy.docker_host()
    )))
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
    let (status, ready) = h.readyz().await;
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
        (h.readyz().await.0 == StatusCode::OK).then_some(())
    })
    .await;
    let resp = h.get_when_started(url, cookie, 30).await;
    assert_eq!(resp.status(), StatusCode::OK, "alice is served again");
    let who: Value = resp.json().await.unwrap();
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
    // noticed without any request, and the next requests get a new one.
    let rm = Command::new("docker")
        .args(["rm", "-f", &name])
        .output()
        .unwrap();
    assert!(rm.status.success());
    let alice_slug = h.app.accounts.find_user("alice").unwrap().slug.clone();
    let alice_slug = &alice_slug;
    poll(10, "spawngate to notice the removal", move || async move {
        (!matches!(h.app.lifecycle.phase(alice_slug), Phase::Ready)).then_some(())
    })
    .await;
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

/// Waits (bounded) for a child process; `None` if it is still running then.
async fn wait_child(child: &mut std::process::Child, secs: u64) -> Option<bool> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status.success());
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn volume_exists(name: &str) -> bool {
    Command::new("docker")
        .args(["volume", "inspect", name])
        .output()
        .unwrap()
        .status
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_user_create_delete_and_share_leaves_the_store_consistent() {
    let mut h = ProcHarness::start(&[
        ("SPAWNGATE_LIFECYCLE_START_ON_LOGIN", "false"),
        ("SPAWNGATE_LIFECYCLE_PRECREATE", "true"),
    ])
    .await;
    for name in ["keep0", "keep1", "keep2"] {
        h.user(name).await;
    }
    // Users about to be deleted, each with a running container, and grants from
    // and to them.
    let mut doomed = Vec::new();
    for i in 0..4 {
        let name = format!("del{i}");
        let slug = h.user(&name).await;
        let cookie = h.login(&name).await;
        let url = format!("{}/u-{slug}/whoami.json", h.public);
        let resp = h
            .client
            .get(&url)
            .header(COOKIE, &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        doomed.push((name, slug));
    }
    h.cli(&["user", "share", "keep0", "del0"]);
    h.cli(&["user", "share", "del1", "keep1", "--read-only"]);

    // Many changes at once through the control socket; SIGKILL while they run.
    let mut ops: Vec<(Vec<String>, std::process::Child)> = Vec::new();
    let mut start = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = h.cli_command(&refs).spawn().unwrap();
        ops.push((args, child));
    };
    for (name, _) in &doomed {
        start(vec!["user".into(), "rm".into(), name.clone()]);
    }
    for i in 0..8 {
        start(vec!["user".into(), "add".into(), format!("new{i}")]);
    }
    for (owner, grantee) in [
        ("keep2", "del2"),
        ("keep1", "del3"),
        ("keep0", "keep2"),
        ("del0", "keep0"),
    ] {
        start(vec![
            "user".into(),
            "share".into(),
            owner.into(),
            grantee.into(),
        ]);
    }
    // Killed as soon as the first deletion reached Docker: the others are in flight.
    // (One Docker call per look, looked at as often as Docker answers.)
    let instance = h.instance.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let present = docker_lines(&[
            "ps",
            "-a",
            "--filter",
            &format!("label=spawngate.instance={instance}"),
            "--format",
            "{{.Label \"spawngate.slug\"}}",
        ]);
        if doomed.iter().any(|(_, slug)| !present.contains(slug)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no deletion reached Docker in 30 s"
        );
    }
    h.signal("KILL").await;
    let mut acknowledged = Vec::new();
    for (args, child) in &mut ops {
        match wait_child(child, 30).await {
            Some(true) => acknowledged.push(args.clone()),
            Some(false) => {}
            None => panic!("spawngate {args:?} hangs after the server died"),
        }
    }

    // The same data directory, started again: the store opens, and reconcile
    // finishes what the kill cut short.
    h.spawn_server().await;
    let list: Value = serde_json::from_slice(&h.cli(&["user", "list", "--json"]).stdout).unwrap();
    let users: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["name"].as_str().unwrap().to_owned(),
                u["slug"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let names: std::collections::HashSet<&str> = users.iter().map(|(n, _)| n.as_str()).collect();
    let slugs: std::collections::HashSet<&str> = users.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(slugs.len(), users.len(), "unique slugs: {users:?}");
    for name in ["keep0", "keep1", "keep2"] {
        assert!(names.contains(name), "{name} untouched: {users:?}");
    }
    // What the server acknowledged before it died is durable.
    for args in &acknowledged {
        match args[1].as_str() {
            "add" => assert!(names.contains(args[2].as_str()), "{args:?} acknowledged"),
            "rm" => assert!(!names.contains(args[2].as_str()), "{args:?} acknowledged"),
            // A grant stays unless one of the two was deleted since.
            "share" if names.contains(args[2].as_str()) && names.contains(args[3].as_str()) => {
                let owner = list
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|u| u["name"] == args[2].as_str())
                    .unwrap();
                assert!(
                    owner["shared_with"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|g| g["user"] == args[3].as_str()),
                    "{args:?} acknowledged: {owner}"
                );
            }
            _ => {}
        }
    }

    // Every user is whole: routed by Traefik to a host port of its own...
    let (status, config) = get_json(&h.client, &format!("{}/traefik/config", h.direct)).await;
    assert_eq!(status, 200, "{config}");
    let mut ports = std::collections::HashSet::new();
    for (name, slug) in &users {
        let segment = format!("u-{slug}");
        assert!(
            config["http"]["routers"][&segment].is_object(),
            "{name} routed"
        );
        let url = config["http"]["services"][&segment]["loadBalancer"]["servers"][0]["url"]
            .as_str()
            .unwrap();
        let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
        assert!(ports.insert(port), "{name}'s port {port} is its own");
    }
    // ...and served: a login link works and their own container answers.
    for (name, slug) in &users {
        h.traefik
            .as_ref()
            .unwrap()
            .wait_router(&format!("u-{slug}"))
            .await;
        let cookie = h.login(name).await;
        let url = format!("{}/u-{slug}/whoami.json", h.public);
        let resp = h
            .client
            .get(&url)
            .header(COOKIE, &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{name} is served");
        let who: Value = resp.json().await.unwrap();
        assert_eq!(who["user"], name.as_str());
    }

    // Deleted users left nothing behind once reconcile ran: no container, no volume.
    let deleted: Vec<&(String, String)> = doomed
        .iter()
        .filter(|(name, _)| !names.contains(name.as_str()))
        .collect();
    assert!(!deleted.is_empty(), "the first deletion went through");
    let (instance, deleted) = (instance.as_str(), &deleted[..]);
    poll(
        30,
        "reconcile to remove what deleted users left",
        move || async move {
            deleted
                .iter()
                .all(|(_, slug)| {
                    containers_of(instance, slug).is_empty()
                        && !volume_exists(&format!("spawngate-u-{slug}-data"))
                })
                .then_some(())
        },
    )
    .await;
    for (name, slug) in doomed.iter().filter(|(n, _)| names.contains(n.as_str())) {
        assert_eq!(h.containers_of(slug).len(), 1, "{name} kept its container");
    }

    // Every grant points at a user that exists (read from the store itself, with
    // the server stopped: the API would hide a dangling one).
    h.signal("TERM").await;
    let store = spawngate::store::Store::open(h.data_dir()).unwrap();
    let directory = store.snapshot();
    for user in directory.users() {
        for share in &user.shared_with {
            assert!(
                directory.by_id(&share.user_id).is_some(),
                "{} shares with a deleted user",
                user.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_deleted_while_docker_is_away_loses_container_and_volume_once_it_is_back() {
    let socket = std::env::temp_dir().join(format!("sgfaults-{}.sock", random_hex(5)));
    let mut proxy = DockerProxy::start(&socket);
    let h = Harness::start(Options::toml(&format!(
        "[docker]\nhost = {:?}\n",
        proxy.docker_host()
    )))
    .await;
    let bob = h.user("bob").await;
    let cookie = h.login("bob").await;
    let url = h.url(&format!("/u-{}/whoami.json", bob.slug));
    assert_eq!(get(&h, &url, &cookie, None).await.status(), 200);
    let volume = format!("spawngate-u-{}-data", bob.slug);
    assert!(volume_exists(&volume));

    // Docker goes away; the deletion still happens, at once and whole.
    proxy.stop();
    let admin = h.admin().await;
    let (status, body) = admin.delete("users/bob").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(admin.get("users/bob").await.0, 404);
    // The session went with the user.
    assert_eq!(get(&h, &url, &cookie, None).await.status(), 401);
    assert_eq!(h.containers_of(&bob.slug).len(), 1, "Docker was away");

    // Back: spawngate finishes the removal by itself, no restart.
    proxy.restart();
    let (instance, slug, volume) = (h.instance.as_str(), bob.slug.as_str(), volume.as_str());
    poll(
        60,
        "the deleted user's container and volume to go",
        move || async move {
            (containers_of(instance, slug).is_empty() && !volume_exists(volume)).then_some(())
        },
    )
    .await;
}
