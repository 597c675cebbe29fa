//! The `spawngate` command as an operator uses it: offline against the store, and
//! against a running server through its control socket.

use std::path::Path;
use std::process::{Command, Output};

use crate::harness::{Api, Harness, Options};

pub fn spawngate(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spawngate"));
    cmd.args(args).env("SPAWNGATE_SERVER_DATA_DIR", data_dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn offline_user_commands_and_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let add = spawngate(
        dir.path(),
        &["user", "add", "alice", "--email", "alice@example.org"],
        &[],
    );
    assert!(add.status.success(), "{}", stderr(&add));
    assert!(
        stdout(&add).starts_with("created user alice: http://localhost:8000/u-"),
        "{}",
        stdout(&add)
    );

    let again = spawngate(dir.path(), &["user", "add", "alice"], &[]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("user name 'alice' is already taken"),
        "{}",
        stderr(&again)
    );

    let bad = spawngate(dir.path(), &["user", "add", "Not Valid"], &[]);
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("invalid user name"),
        "{}",
        stderr(&bad)
    );

    let link = spawngate(dir.path(), &["user", "login-link", "alice"], &[]);
    assert!(link.status.success(), "{}", stderr(&link));
    assert!(
        stdout(&link)
            .trim()
            .starts_with("http://localhost:8000/_spawngate/login?token=")
    );

    let list = spawngate(dir.path(), &["user", "list", "--json"], &[]);
    let users: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(users[0]["name"], "alice");
    assert_eq!(users[0]["email"], "alice@example.org");

    // Sharing from the command line.
    assert!(
        spawngate(dir.path(), &["user", "add", "bob"], &[])
            .status
            .success()
    );
    let share = spawngate(
        dir.path(),
        &["user", "share", "alice", "bob", "--read-only"],
        &[],
    );
    assert!(share.status.success(), "{}", stderr(&share));
    assert_eq!(
        stdout(&share).trim(),
        "bob can now open alice's environment (read-only)"
    );
    assert!(
        stderr(&share).contains("share only trusted apps, or use subdomain mode"),
        "path mode warns that shared apps run on one origin: {}",
        stderr(&share)
    );
    let list = spawngate(dir.path(), &["user", "list", "--json"], &[]);
    let users: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let alice = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "alice")
        .unwrap();
    assert_eq!(alice["shared_with"][0]["user"], "bob");
    assert_eq!(alice["shared_with"][0]["read_only"], true);
    let unshare = spawngate(dir.path(), &["user", "unshare", "alice", "bob"], &[]);
    assert!(unshare.status.success(), "{}", stderr(&unshare));
    let again = spawngate(dir.path(), &["user", "unshare", "alice", "bob"], &[]);
    assert!(
        stderr(&again).contains("share not found"),
        "{}",
        stderr(&again)
    );
    let nobody = spawngate(dir.path(), &["user", "share", "alice", "nobody"], &[]);
    assert!(
        stderr(&nobody).contains("user not found"),
        "{}",
        stderr(&nobody)
    );

    // Offline commands leave nothing half made in Docker: bob's container is
    // created on his first visit, not by a background task the exiting CLI cuts off.
    let bob_slug = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "bob")
        .and_then(|u| u["slug"].as_str())
        .unwrap()
        .to_owned();
    let filter = format!("name=spawngate-u-{bob_slug}");
    for args in [
        ["volume", "ls", "-q", "--filter", filter.as_str()],
        ["container", "ls", "-aq", "--filter", filter.as_str()],
    ] {
        let found = crate::harness::docker_lines(&args);
        assert!(found.is_empty(), "a stray {}: {found:?}", args[0]);
    }

    let rm = spawngate(dir.path(), &["user", "rm", "alice"], &[]);
    assert!(rm.status.success(), "{}", stderr(&rm));
    let missing = spawngate(dir.path(), &["user", "login-link", "alice"], &[]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("user not found"),
        "{}",
        stderr(&missing)
    );

    // A bad setting is one clear error naming the key.
    let cfg = spawngate(
        dir.path(),
        &["check"],
        &[("SPAWNGATE_SPAWN_HOLD_SECS", "40")],
    );
    assert!(!cfg.status.success());
    assert!(stderr(&cfg).contains("spawn.hold_secs"), "{}", stderr(&cfg));
    let typo = spawngate(dir.path(), &["check"], &[("SPAWNGATE_SPAWN_HOLD", "4")]);
    assert!(
        stderr(&typo).contains("unknown environment variable SPAWNGATE_SPAWN_HOLD"),
        "{}",
        stderr(&typo)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_reach_a_running_server_through_its_control_socket() {
    let h = Harness::start(Options {
        with_traefik: false,
        ..Default::default()
    })
    .await;
    let dir = h.data_dir.path().to_owned();
    let run = move |args: Vec<&'static str>| {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || spawngate(&dir, &args, &[]))
    };

    let add = run(vec!["user", "add", "bob"]).await.unwrap();
    assert!(add.status.success(), "{}", stderr(&add));

    let link = run(vec!["user", "login-link", "bob"]).await.unwrap();
    let url = stdout(&link);
    let token = url.trim().split("token=").nth(1).unwrap();
    // The running server knows bob and the link at once: same process state, no
    // restart (its confirm page asks to sign in as him).
    let confirm = h
        .client
        .get(format!("{}/_spawngate/login?token={token}", h.direct))
        .send()
        .await
        .unwrap();
    assert_eq!(confirm.status(), 200);
    let page = confirm.text().await.unwrap();
    assert!(page.contains("Sign in as <strong>bob</strong>"), "{page}");

    let token = run(vec!["token", "--name", "ci"]).await.unwrap();
    let token = stdout(&token).trim().to_owned();
    assert!(token.starts_with("sgadm_"), "{token}");
    let admin = Api::new(&h.client, &h.direct, token);
    assert_eq!(admin.users().await[0]["name"], "bob");

    let check = run(vec!["check"]).await.unwrap();
    assert!(
        check.status.success(),
        "{}{}",
        stdout(&check),
        stderr(&check)
    );
    assert!(stdout(&check).contains("in use by a running spawngate"));
}
