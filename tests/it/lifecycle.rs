//! Container lifecycle against real Docker and Traefik: idle culling in tiers,
//! resume with data intact, activity from open WebSockets, crash and restart
//! recovery, capacity, and isolation between users.

use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, COOKIE};
use serde_json::Value;

use crate::harness::{Backend, Harness, IMAGE, Options, poll, wait_until};
use crate::proc::{ProcHarness, inspect};

fn state_of(container: &str) -> String {
    inspect(container, "{{.State.Status}}")
}

async fn get(client: &reqwest::Client, url: &str, cookie: &str) -> (StatusCode, Value) {
    let resp = client.get(url).header(COOKIE, cookie).send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The example app's visit counter (kept on the user's volume) from a `whoami.json`
/// answer that must be the app's: a 200 with the counter in it.
async fn visits(client: &reqwest::Client, url: &str, cookie: &str) -> u64 {
    let (status, body) = get(client, url, cookie).await;
    assert_eq!(status, 200, "{body}");
    body["visits"]
        .as_u64()
        .unwrap_or_else(|| panic!("not the app's JSON: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_container_is_stopped_and_resumes_with_its_data() {
    idle_container_is_stopped_and_resumes_with_its_data_on(Backend::Docker).await;
}

pub(crate) async fn idle_container_is_stopped_and_resumes_with_its_data_on(backend: Backend) {
    let h = Harness::start(
        Options::toml("[lifecycle]\nidle_timeout_secs = 3\nstart_on_login = false").on(backend),
    )
    .await;
    let alice = h.user("alice").await;
    let cookie = h.login("alice").await;
    let url = h.url(&format!("/u-{}/whoami.json", alice.slug));
    let first = visits(&h.client, &url, &cookie).await;
    let id = backend.environment_id(&h.instance, &alice.slug);

    wait_until(30, "the idle container to stop", || {
        backend
            .running_container(&h.instance, &alice.slug)
            .is_none()
    })
    .await;
    // Recorded once the stop returned, which may be a moment after it exited.
    let admin = h.admin().await;
    poll(10, "the idle stop in the audit log", || async {
        let audit = admin.get_ok("audit?limit=10").await;
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| {
                e["action"] == "container.stop" && e["target"] == "alice" && e["detail"] == "idle"
            })
            .then_some(())
    })
    .await;

    let again = visits(&h.client, &url, &cookie).await;
    assert!(
        again > first,
        "volume kept the counter: {first} then {again}"
    );
    assert_eq!(
        backend.environment_id(&h.instance, &alice.slug),
        id,
        "the same container (service) was started again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_container_is_unpaused_by_the_next_request() {
    let h = Harness::start(Options::toml(
        "[lifecycle]\npause_after_secs = 2\nidle_timeout_secs = 120\nstart_on_login = false",
    ))
    .await;
    let alice = h.user("alice").await;
    let cookie = h.login("alice").await;
    let url = h.url(&format!("/u-{}/whoami.json", alice.slug));
    assert_eq!(get(&h.client, &url, &cookie).await.0, 200);
    let name = format!("spawngate-u-{}", alice.slug);

    wait_until(30, "the idle container to be paused", || {
        state_of(&name) == "paused"
    })
    .await;
    let status = h.admin().await.get_ok("users/alice/container").await;
    assert_eq!(status["state"], "paused", "{status}");

    let (code, body) = get(&h.client, &url, &cookie).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(state_of(&name), "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_websocket_keeps_its_container_alive_past_the_idle_timeout() {
    let h = Harness::start(Options::toml(
        "[lifecycle]\nidle_timeout_secs = 4\nstart_on_login = false",
    ))
    .await;
    let alice = h.user("alice").await;
    let cookie = h.login("alice").await;
    let name = format!("spawngate-u-{}", alice.slug);

    // Open the WebSocket through Traefik (forwardAuth checks the upgrade once).
    let ws_url = format!(
        "{}/u-{}/ws",
        h.public.replace("http://", "ws://"),
        alice.slug
    );
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(ws_url)
            .unwrap();
    request
        .headers_mut()
        .insert("cookie", cookie.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();

    // Data flows for three idle timeouts; no HTTP request reaches forwardAuth.
    let payload = "x".repeat(2048);
    let until = Instant::now() + Duration::from_secs(12);
    while Instant::now() < until {
        ws.send(tokio_tungstenite::tungstenite::Message::text(
            payload.clone(),
        ))
        .await
        .unwrap();
        let echo = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echo.into_text().unwrap().len(), payload.len());
        assert_eq!(state_of(&name), "running", "culled while data was flowing");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let _ = ws.close(None).await;
    drop(ws);

    // Once quiet, the same settings do cull it.
    wait_until(40, "the quiet container to stop", || {
        state_of(&name) == "exited"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_removed_by_hand_is_recreated_by_the_next_request() {
    a_container_removed_by_hand_is_recreated_by_the_next_request_on(Backend::Docker).await;
}

pub(crate) async fn a_container_removed_by_hand_is_recreated_by_the_next_request_on(
    backend: Backend,
) {
    let h = Harness::start(Options::toml("[lifecycle]\nstart_on_login = false").on(backend)).await;
    let alice = h.user("alice").await;
    let cookie = h.login("alice").await;
    let url = h.url(&format!("/u-{}/whoami.json", alice.slug));
    let first = visits(&h.client, &url, &cookie).await;
    let id = backend.environment_id(&h.instance, &alice.slug);

    backend.remove_by_hand(&alice.slug);
    // A request that races spawngate's Docker event gets the documented
    // "starting" 503 (see appgone.rs); a user refreshing lands on the app.
    let resp = h.get_when_started(&url, &cookie, 30).await;
    assert_eq!(resp.status(), 200);
    let again = visits(&h.client, &url, &cookie).await;
    assert_ne!(
        backend.environment_id(&h.instance, &alice.slug),
        id,
        "a new container (service)"
    );
    assert!(again > first, "on the same volume: {first} then {again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_spawngate_adopts_running_containers_without_restarting_them() {
    a_restarted_spawngate_adopts_running_containers_without_restarting_them_on(Backend::Docker)
        .await;
}

pub(crate) async fn a_restarted_spawngate_adopts_running_containers_without_restarting_them_on(
    backend: Backend,
) {
    let mut h =
        ProcHarness::start_on(backend, &[("SPAWNGATE_LIFECYCLE_START_ON_LOGIN", "false")]).await;
    let slug = h.user("alice").await;
    let cookie = h.login("alice").await;
    let url = format!("{}/u-{slug}/whoami.json", h.public);
    assert_eq!(get(&h.client, &url, &cookie).await.0, 200);
    let name = backend
        .running_container(&h.instance, &slug)
        .expect("a running container");
    let (id, started) = (
        inspect(&name, "{{.Id}}"),
        inspect(&name, "{{.State.StartedAt}}"),
    );

    h.signal("TERM").await;
    assert_eq!(
        state_of(&name),
        "running",
        "graceful shutdown leaves user containers running"
    );
    h.spawn_server().await;

    // Sessions survive (the key is in the store) and the container serves at once.
    let (status, who) = get(&h.client, &url, &cookie).await;
    assert_eq!(status, 200, "{who}");
    assert_eq!(inspect(&name, "{{.Id}}"), id);
    assert_eq!(
        inspect(&name, "{{.State.StartedAt}}"),
        started,
        "not restarted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_in_the_middle_of_a_spawn_leaves_exactly_one_working_container() {
    // The app takes 4 s to listen, so the kill lands while spawngate is waiting
    // for it (container created and started, not yet answering).
    let mut h = ProcHarness::start(&[
        ("SPAWNGATE_LIFECYCLE_START_ON_LOGIN", "false"),
        ("SPAWNGATE_DOCKER_ENV", "STARTUP_DELAY_MS=4000"),
    ])
    .await;
    let slug = h.user("alice").await;
    let cookie = h.login("alice").await;
    let url = format!("{}/u-{slug}/whoami.json", h.public);

    let pending = {
        let (client, url, cookie) = (h.client.clone(), url.clone(), cookie.clone());
        tokio::spawn(async move {
            client
                .get(url)
                .header(COOKIE, cookie)
                .send()
                .await
                .map(|r| r.status())
        })
    };
    let name = format!("spawngate-u-{slug}");
    wait_until(20, "the container to be created", || {
        !inspect(&name, "{{.Id}}").is_empty()
    })
    .await;
    h.signal("KILL").await;
    let _ = pending.await;

    h.spawn_server().await;
    let (status, who) = get(&h.client, &url, &cookie).await;
    assert_eq!(status, 200, "{who}");
    assert_eq!(who["user"], "alice");
    assert_eq!(h.containers_of(&slug).len(), 1, "exactly one container");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_running_the_next_user_gets_a_clear_503_and_nothing_starts() {
    let h = Harness::start(Options::toml(
        "[limits]\nmax_running = 2\n[lifecycle]\nstart_on_login = false",
    ))
    .await;
    let mut cookies = Vec::new();
    let mut slugs = Vec::new();
    for name in ["alice", "bob", "carol"] {
        slugs.push(h.user(name).await.slug);
        cookies.push(h.login(name).await);
    }
    for i in 0..2 {
        let url = h.url(&format!("/u-{}/whoami.json", slugs[i]));
        assert_eq!(get(&h.client, &url, &cookies[i]).await.0, 200);
    }
    let carol = h.url(&format!("/u-{}/whoami.json", slugs[2]));
    let (status, body) = get(&h.client, &carol, &cookies[2]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "spawn_failed");
    assert_eq!(
        body["error"]["message"],
        "the server is at capacity; please try again in a few minutes"
    );
    let page = h
        .client
        .get(&carol)
        .header(COOKIE, &cookies[2])
        .header(ACCEPT, "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(page.text().await.unwrap().contains("at capacity"));
    assert!(
        h.running_containers_of(&slugs[2]).is_empty(),
        "no half-started container"
    );

    // A place frees up when an admin stops one: Carol is served once her start's
    // back-off has passed (503 until then, whatever its length).
    h.admin().await.post_ok("users/alice/container/stop").await;
    let resp = h.get_when_started(&carol, &cookies[2], 20).await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_capacity_the_least_recently_used_idle_container_makes_room() {
    let h = Harness::start(Options::toml(
        "[limits]\nmax_running = 1\ncull_lru_when_full = true\nlru_min_idle_secs = 1\n[lifecycle]\nstart_on_login = false",
    ))
    .await;
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let (ca, cb) = (h.login("alice").await, h.login("bob").await);
    assert_eq!(
        get(&h.client, &h.url(&format!("/u-{}/", alice.slug)), &ca)
            .await
            .0,
        200
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        get(&h.client, &h.url(&format!("/u-{}/", bob.slug)), &cb)
            .await
            .0,
        200
    );
    let alice_container = format!("spawngate-u-{}", alice.slug);
    wait_until(20, "alice's container to be stopped", || {
        state_of(&alice_container) == "exited"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_warms_the_container_and_user_creation_precreates_it() {
    let h = Harness::start(Options::toml(
        "[lifecycle]\nprecreate = true\nstart_on_login = true",
    ))
    .await;
    let alice = h.user("alice").await;
    let name = format!("spawngate-u-{}", alice.slug);
    wait_until(20, "the pre-created container", || {
        state_of(&name) == "created"
    })
    .await;
    let _cookie = h.login("alice").await;
    wait_until(20, "the container started by the login", || {
        state_of(&name) == "running"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_lifetime_stops_a_busy_container() {
    let h = Harness::start(Options::toml(
        "[lifecycle]\nmax_lifetime_secs = 3\nstart_on_login = false",
    ))
    .await;
    let alice = h.user("alice").await;
    let cookie = h.login("alice").await;
    let url = h.url(&format!("/u-{}/whoami.json", alice.slug));
    let admin = h.admin().await;
    // Keep it busy; it is stopped anyway (and the next request starts it again).
    poll(30, "the maximum lifetime to be enforced", || async {
        let _ = get(&h.client, &url, &cookie).await;
        let audit = admin.get_ok("audit?limit=20").await;
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "container.stop" && e["detail"] == "maximum lifetime reached")
            .then_some(())
    })
    .await;
    assert_eq!(get(&h.client, &url, &cookie).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_lists_containers_restarts_shows_logs_and_audit() {
    let h = Harness::start(Options::toml("[lifecycle]\nstart_on_login = false")).await;
    let admin = h.admin().await;
    let alice = h.user("alice").await;
    let _bob = h.user("bob").await;
    let cookie = h.login("alice").await;
    assert_eq!(
        get(
            &h.client,
            &h.url(&format!("/u-{}/whoami.json", alice.slug)),
            &cookie
        )
        .await
        .0,
        200
    );
    let list = admin.get_ok("containers").await;
    let states: Vec<(String, String)> = list["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["user"].as_str().unwrap().to_owned(),
                c["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        states.contains(&("alice".into(), "running".into())),
        "{states:?}"
    );
    assert!(
        states.iter().any(|(u, s)| u == "bob" && s != "running"),
        "{states:?}"
    );

    let name = format!("spawngate-u-{}", alice.slug);
    let before = inspect(&name, "{{.State.StartedAt}}");
    let restarted = admin.post_ok("users/alice/container/restart").await;
    assert_eq!(restarted["state"], "running");
    assert_ne!(inspect(&name, "{{.State.StartedAt}}"), before);

    let logs = admin.get_ok("users/alice/container/logs?tail=5").await;
    let lines = logs["lines"].as_array().unwrap();
    assert!(!lines.is_empty() && lines.len() <= 5, "{logs}");
    let (status, _) = admin.get("users/alice/container/logs?tail=0").await;
    assert_eq!(status, 400);

    assert_eq!(admin.delete("users/bob").await.0, 200);
    let audit = admin.get_ok("audit?limit=50").await;
    let actions: Vec<(String, String, String)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap().to_owned(),
                e["action"].as_str().unwrap().to_owned(),
                e["target"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        actions.contains(&(
            "admin:ops".into(),
            "container.restart".into(),
            "alice".into()
        )),
        "{actions:?}"
    );
    assert!(
        actions.contains(&("admin:ops".into(), "user.delete".into(), "bob".into())),
        "{actions:?}"
    );
    assert!(
        actions.contains(&("test".into(), "user.create".into(), "alice".into())),
        "{actions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_container_cannot_reach_another_users_container_or_spawngate() {
    a_users_container_cannot_reach_another_users_container_or_spawngate_on(Backend::Docker).await;
}

pub(crate) async fn a_users_container_cannot_reach_another_users_container_or_spawngate_on(
    backend: Backend,
) {
    let h = Harness::start(Options::toml("[lifecycle]\nstart_on_login = false").on(backend)).await;
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    for (user, slug) in [("alice", &alice.slug), ("bob", &bob.slug)] {
        let cookie = h.login(user).await;
        assert_eq!(
            get(&h.client, &h.url(&format!("/u-{slug}/")), &cookie)
                .await
                .0,
            200
        );
    }
    let container = |slug: &str| {
        backend
            .running_container(&h.instance, slug)
            .expect("a running container")
    };
    let (alice_c, bob_c) = (container(&alice.slug), container(&bob.slug));
    // Bob's addresses by network. Where alice shares a network with him (the
    // host-mode bridge, with inter-container traffic off), she must not reach
    // him there. Elsewhere (a swarm task's own overlay) the address is not
    // local to her at all: it routes off the node (and this sandbox's egress
    // accepts any connection), so what is checked is that she is not on it.
    let networks_of = |c: &str| -> Vec<(String, String)> {
        inspect(
            c,
            "{{range $n, $e := .NetworkSettings.Networks}}{{$n}}={{$e.IPAddress}} {{end}}",
        )
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(n, ip)| (n.to_owned(), ip.to_owned()))
        .collect()
    };
    let alice_nets: Vec<String> = networks_of(&alice_c).into_iter().map(|(n, _)| n).collect();
    let bob_nets = networks_of(&bob_c);
    assert!(!bob_nets.is_empty());
    let mut bob_ips = Vec::new();
    for (network, ip) in &bob_nets {
        if alice_nets.contains(network) {
            bob_ips.push(ip.clone());
        } else {
            assert_eq!(
                backend,
                Backend::Swarm,
                "not on a shared network: {network}"
            );
        }
    }
    let gateway = inspect(
        &alice_c,
        "{{range .NetworkSettings.Networks}}{{.Gateway}} {{end}}",
    )
    .split_whitespace()
    .next()
    .map(str::to_owned)
    // A swarm task's overlay has no gateway: it leaves the node through the
    // gateway bridge, which Docker does not list among its networks.
    .unwrap_or_else(|| inspect("docker_gwbridge", "{{(index .IPAM.Config 0).Gateway}}"));
    assert!(!gateway.is_empty());
    if backend == Backend::Swarm {
        // Swarm tasks leave the node through its gateway bridge: no traffic
        // between containers there.
        assert_eq!(
            inspect(
                "docker_gwbridge",
                "{{index .Options \"com.docker.network.bridge.enable_icc\"}}"
            ),
            "false"
        );
    }
    let spawngate_port = h.direct.rsplit(':').next().unwrap().to_owned();

    // "Alice's code": a process in alice's container network namespace.
    let from_alice = |target: &str| {
        Command::new("docker")
            .args([
                "run",
                "--rm",
                "--network",
                &format!("container:{alice_c}"),
                "--entrypoint",
                "/spawngate-example-app",
                IMAGE,
                "--connect",
                target,
            ])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(
        from_alice("127.0.0.1:8080"),
        "control: alice reaches her own app"
    );
    for bob_ip in &bob_ips {
        assert!(
            !from_alice(&format!("{bob_ip}:8080")),
            "alice reached bob's container at {bob_ip}"
        );
    }
    assert!(
        !from_alice(&format!("{gateway}:{spawngate_port}")),
        "alice reached spawngate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_overrides_apply_at_the_next_start_within_admin_bounds() {
    let alt = format!(
        "spawngate-example-app:alt-{}",
        crate::harness::random_hex(4)
    );
    assert!(
        Command::new("docker")
            .args(["tag", IMAGE, &alt])
            .status()
            .unwrap()
            .success()
    );
    struct Untag(String);
    impl Drop for Untag {
        fn drop(&mut self) {
            let _ = Command::new("docker").args(["rmi", &self.0]).output();
        }
    }
    let _untag = Untag(alt.clone());

    let h = Harness::start(Options::toml(&format!(
        "[limits]\nallowed_images = [\"{alt}\"]\nmax_memory = \"1g\"\n[lifecycle]\nstart_on_login = false"
    )))
    .await;
    let admin = h.admin().await;
    let alice = h.user("alice").await;
    let cookie = h.login("alice").await;
    let url = h.url(&format!("/u-{}/whoami.json", alice.slug));
    let first = visits(&h.client, &url, &cookie).await;
    let name = format!("spawngate-u-{}", alice.slug);
    assert_eq!(
        inspect(&name, "{{.HostConfig.Memory}}"),
        (512u64 << 20).to_string()
    );

    let put = |body: Value| admin.put("users/alice/overrides", body);
    // Out of bounds or secret-looking: refused with a reason.
    for (body, why) in [
        (serde_json::json!({ "memory": "2g" }), "max_memory"),
        (serde_json::json!({ "image": "nope:latest" }), "not allowed"),
        (
            serde_json::json!({ "env": { "DB_PASSWORD": "x" } }),
            "credential",
        ),
    ] {
        let (status, body) = put(body).await;
        assert_eq!(status, 400, "{body}");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(msg.contains(why), "{msg}");
    }
    let (status, body) = put(serde_json::json!({ "image": alt, "memory": "256m", "cpus": 0.5, "env": { "GREETING": "hello" } }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["overrides"]["memory_bytes"], 256u64 << 20);

    // Running containers are not disrupted; after a stop the next start applies it.
    assert_eq!(
        inspect(&name, "{{.HostConfig.Memory}}"),
        (512u64 << 20).to_string()
    );
    admin.post_ok("users/alice/container/stop").await;
    let again = visits(&h.client, &url, &cookie).await;
    assert_eq!(
        inspect(&name, "{{.HostConfig.Memory}}"),
        (256u64 << 20).to_string()
    );
    assert_eq!(inspect(&name, "{{.HostConfig.NanoCpus}}"), "500000000");
    assert_eq!(inspect(&name, "{{.Config.Image}}"), alt);
    assert!(inspect(&name, "{{.Config.Env}}").contains("GREETING=hello"));
    assert!(
        again > first,
        "same volume after the recreate: {first} then {again}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_environment_counts_is_adopted_after_a_restart_and_is_culled_on_its_own() {
    let mut h = ProcHarness::start(&[
        ("SPAWNGATE_LIFECYCLE_START_ON_LOGIN", "false"),
        ("SPAWNGATE_LIMITS_ENVIRONMENTS_PER_USER", "2"),
        ("SPAWNGATE_LIMITS_MAX_RUNNING", "2"),
    ])
    .await;
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let added =
        String::from_utf8_lossy(&h.cli(&["env", "add", "alice", "lab"]).stdout).into_owned();
    let lab = crate::harness::slug_in(&added);
    if let Some(t) = &h.traefik {
        t.wait_router(&format!("u-{lab}")).await;
    }
    let cookie = h.login("alice").await;
    let bob_cookie = h.login("bob").await;
    let public = h.public.clone();
    let url = |slug: &str| format!("{public}/u-{slug}/whoami.json");
    assert_eq!(get(&h.client, &url(&alice), &cookie).await.0, 200);
    assert_eq!(get(&h.client, &url(&lab), &cookie).await.0, 200);

    // Two environments of one user fill limits.max_running = 2.
    let (status, body) = get(&h.client, &url(&bob), &bob_cookie).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        h.containers_of(&bob)
            .iter()
            .all(|c| state_of(c) != "running")
    );

    // A restart adopts the extra environment's container as it is.
    let lab_name = format!("spawngate-u-{lab}");
    let (id, started) = (
        inspect(&lab_name, "{{.Id}}"),
        inspect(&lab_name, "{{.State.StartedAt}}"),
    );
    h.signal("TERM").await;
    h.set_env("SPAWNGATE_LIFECYCLE_IDLE_TIMEOUT_SECS", "3");
    h.spawn_server().await;
    assert_eq!(get(&h.client, &url(&lab), &cookie).await.0, 200);
    assert_eq!(inspect(&lab_name, "{{.Id}}"), id);
    assert_eq!(
        inspect(&lab_name, "{{.State.StartedAt}}"),
        started,
        "not restarted"
    );

    // Idle clocks are per environment: the lab stops while the default one,
    // kept busy, runs on.
    let default_name = format!("spawngate-u-{alice}");
    let deadline = Instant::now() + Duration::from_secs(40);
    while state_of(&lab_name) != "exited" {
        assert!(Instant::now() < deadline, "the idle lab was not stopped");
        assert_eq!(get(&h.client, &url(&alice), &cookie).await.0, 200);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(state_of(&default_name), "running");
}
