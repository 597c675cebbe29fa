//! Host mode holds one port per environment: a full range is a clear error, through the
//! admin API and the CLI, and `spawngate check` says how many users fit.

use reqwest::StatusCode;
use serde_json::json;

use crate::cli::{spawngate, stderr, stdout};
use crate::harness::{Harness, Options, free_port};

/// What every "range full" message must say: which settings, how big, what to do.
fn explains_the_full_range(message: &str, port: u16) {
    for part in [
        "docker.host_port_min..docker.host_port_max",
        &format!("({port}-{port}, 1 ports)"),
        "1 held by environments",
        "widen the range",
        "docker.mode = \"network\"",
    ] {
        assert!(message.contains(part), "{part:?} missing in: {message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_host_port_range_is_a_clear_error_in_the_admin_api() {
    // A one-port range: the first user takes it, the second finds none.
    let port = free_port();
    let h = Harness::start(Options::toml(&format!(
        "[docker]\nmode = \"host\"\nhost_port_min = {port}\nhost_port_max = {port}"
    )))
    .await;
    let admin = h.admin().await;
    let (status, body) = admin.post("users", Some(json!({ "name": "first" }))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = admin.post("users", Some(json!({ "name": "second" }))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    explains_the_full_range(body["error"]["message"].as_str().unwrap_or_default(), port);
    // Nothing half-made: the second user does not exist, the first is intact.
    let names: Vec<_> = admin
        .users()
        .await
        .iter()
        .map(|u| u["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(names, ["first"]);
    // Deleting the first frees its port for the next user.
    let (status, body) = admin.delete("users/first").await;
    assert!(status.is_success(), "{body}");
    let (status, body) = admin.post("users", Some(json!({ "name": "third" }))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // ... with the port that was freed, routed through Traefik.
    h.wait_router(&format!("u-{}", body["slug"].as_str().unwrap_or_default()))
        .await;
}

#[test]
fn a_full_host_port_range_is_a_clear_error_in_the_cli_and_check_counts_room() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().to_string();
    let env = [
        ("SPAWNGATE_DOCKER_MODE", "host"),
        ("SPAWNGATE_DOCKER_HOST_PORT_MIN", port.as_str()),
        ("SPAWNGATE_DOCKER_HOST_PORT_MAX", port.as_str()),
    ];
    let check = spawngate(dir.path(), &["check"], &env);
    assert!(
        stdout(&check).contains(&format!(
            "capacity: host mode holds at most 1 users (one port each, for life, in \
             docker.host_port_min..docker.host_port_max = {port}-{port}"
        )),
        "{}",
        stdout(&check)
    );
    let first = spawngate(dir.path(), &["user", "add", "first"], &env);
    assert!(first.status.success(), "{}", stderr(&first));
    let second = spawngate(dir.path(), &["user", "add", "second"], &env);
    assert!(!second.status.success());
    explains_the_full_range(&stderr(&second), port.parse().unwrap());
    let check = spawngate(dir.path(), &["check"], &env);
    assert!(
        stdout(&check).contains("capacity: 1 of 1 host ports held, room for 0 more users"),
        "{}",
        stdout(&check)
    );
    // Network mode has no such cap.
    let network = spawngate(
        dir.path(),
        &["check"],
        &[("SPAWNGATE_DOCKER_MODE", "network")],
    );
    assert!(
        stdout(&network).contains("capacity: network mode: no per-user port, no cap on users"),
        "{}",
        stdout(&network)
    );
}
