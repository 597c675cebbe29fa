//! `ssh alice@host` with the real OpenSSH client against real Docker: keys
//! registered through the API, commands and a pty shell in the user's own
//! container (started by the connection), local forwarding into it and nowhere
//! else, refusals (another user's key, a removed key, a disabled user), sftp's
//! clear refusal on an image without sftp-server, and activity for the culler.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::COOKIE;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::harness::{Harness, Options, free_port, personal_token, poll, repo_root, wait_until};

const SHELL_IMAGE: &str = "spawngate-example-shell:latest";

/// What every OpenSSH client here (`ssh`, `sftp`, `scp`) is run with: a throw-away
/// host key, only the key given, and never a prompt.
const CLIENT_OPTIONS: [&str; 8] = [
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "IdentitiesOnly=yes",
    "-o",
    "BatchMode=yes",
];

/// Builds the example app image with a busybox shell once, if missing.
fn shell_image() -> String {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let present = std::process::Command::new("docker")
            .args(["image", "inspect", SHELL_IMAGE])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !present {
            let built = std::process::Command::new(repo_root().join("examples/shell/build"))
                .status()
                .unwrap();
            assert!(built.success(), "examples/shell/build failed");
        }
    });
    SHELL_IMAGE.to_owned()
}

struct Ssh {
    h: Harness,
    port: u16,
    keys: tempfile::TempDir,
}

impl Ssh {
    async fn start(extra_toml: &str) -> Ssh {
        let port = free_port();
        let h = Harness::start(Options {
            image: shell_image(),
            ..Options::toml(&format!(
                "[ssh]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n{extra_toml}"
            ))
        })
        .await;
        Ssh {
            h,
            port,
            keys: tempfile::tempdir().unwrap(),
        }
    }

    /// A new ed25519 key pair; the private key's path.
    fn keygen(&self, name: &str) -> PathBuf {
        let path = self.keys.path().join(name);
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        path
    }

    /// Registers a new key for `user` through the admin API; its private key's path.
    async fn key_of(&self, user: &str) -> PathBuf {
        let key = self.keygen(user);
        let (status, body) = self
            .h
            .admin()
            .await
            .post(
                &format!("users/{user}/ssh-keys"),
                Some(json!({ "key": pub_key(&key) })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        key
    }

    fn ssh(&self, key: &Path, user: &str) -> Command {
        self.ssh_logging(key, user, "ERROR")
    }

    /// `ssh` with its own messages at `level` (INFO shows why a channel failed).
    fn ssh_logging(&self, key: &Path, user: &str, level: &str) -> Command {
        let mut c = Command::new("ssh");
        c.args(["-p", &self.port.to_string(), "-i"])
            .arg(key)
            .args(CLIENT_OPTIONS)
            .args([
                "-o",
                &format!("LogLevel={level}"),
                "-o",
                "ConnectTimeout=20",
            ])
            .arg(format!("{user}@127.0.0.1"))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    /// Runs `ssh … user@host -- command` to its end (bounded).
    async fn run(&self, key: &Path, user: &str, args: &[&str]) -> Output {
        let mut c = self.ssh(key, user);
        c.args(args);
        tokio::time::timeout(Duration::from_secs(90), c.output())
            .await
            .expect("ssh did not finish")
            .unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn pub_key(key: &Path) -> String {
    std::fs::read_to_string(key.with_extension("pub")).unwrap()
}

/// `ssh-keygen -lf`'s fingerprint of the key (of its private key file).
fn fingerprint(key: &Path) -> String {
    let out = std::process::Command::new("ssh-keygen")
        .arg("-lf")
        .arg(key)
        .output()
        .unwrap();
    text(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_runs_commands_and_a_pty_shell_in_the_users_own_container() {
    let s = Ssh::start("").await;
    let h = &s.h;
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let alice_key = s.keygen("alice");
    let bob_key = s.keygen("bob");

    // Alice registers her key herself (session + CSRF); the fingerprint is OpenSSH's.
    let cookie = h.login("alice").await;
    let (status, added) = h
        .me_call(
            &cookie,
            reqwest::Method::POST,
            "ssh-keys",
            Some(json!({ "key": pub_key(&alice_key) })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{added}");
    assert_eq!(added["fingerprint"], fingerprint(&alice_key));
    assert_eq!(added["name"], "alice");
    // Without the CSRF header the same call is refused.
    let resp = h
        .client
        .post(h.url("/_spawngate/api/me/ssh-keys"))
        .header(COOKIE, &cookie)
        .json(&json!({ "key": pub_key(&bob_key) }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    // A personal token lists keys but cannot add one.
    let token = personal_token(&h.client, &h.public, &cookie, "ci").await;
    let mine = h.api(&token);
    let (status, listed) = mine.get("me/ssh-keys").await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(
        listed["ssh_keys"][0]["fingerprint"],
        fingerprint(&alice_key)
    );
    let (status, _) = mine
        .post("me/ssh-keys", Some(json!({ "key": pub_key(&bob_key) })))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Bob's key through the admin API; nobody can register it a second time.
    let admin = h.admin().await;
    let (status, body) = admin
        .post(
            "users/bob/ssh-keys",
            Some(json!({ "key": pub_key(&bob_key), "name": "bob's laptop" })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _) = h
        .me_call(
            &cookie,
            reqwest::Method::POST,
            "ssh-keys",
            Some(json!({ "key": pub_key(&bob_key) })),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    // The connection starts the container; command output and exit status come back.
    assert!(h.running_containers_of(&alice.slug).is_empty());
    let out = s
        .run(
            &alice_key,
            "alice",
            &["--", "echo hi; echo oops >&2; exit 3"],
        )
        .await;
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(text(&out.stdout), "hi\n");
    assert!(text(&out.stderr).contains("oops"), "{out:?}");
    assert_eq!(h.running_containers_of(&alice.slug).len(), 1);
    // It ran in alice's container, as the image's user, with her data volume.
    let out = s.run(&alice_key, "alice", &["--", "id -u; pwd"]).await;
    assert_eq!(text(&out.stdout), "65534\n/data\n", "{out:?}");

    // A pty shell echoes what is typed and ends with the shell's status.
    let mut child = s
        .ssh(&alice_key, "alice")
        .arg("-tt")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"echo pty-$((40+2)) $(tty)\nexit 5\n")
        .await
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let shown = text(&out.stdout);
    assert!(
        shown.contains("echo pty-$((40+2))"),
        "input echoed: {shown}"
    );
    assert!(shown.contains("pty-42 /dev/pts/"), "{shown}");
    assert_eq!(out.status.code(), Some(5), "{out:?}");

    // Another user's key is not alice's; a disabled user is refused.
    let out = s.run(&bob_key, "alice", &["--", "true"]).await;
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    assert!(text(&out.stderr).contains("Permission denied"), "{out:?}");
    assert_eq!(
        s.run(&bob_key, "bob", &["--", "true"]).await.status.code(),
        Some(0)
    );
    admin.post_ok("users/bob/disable").await;
    let out = s.run(&bob_key, "bob", &["--", "true"]).await;
    assert_eq!(out.status.code(), Some(255), "{out:?}");

    // A removed key is refused at the next connection.
    let (status, listed) = h
        .me_call(&cookie, reqwest::Method::GET, "ssh-keys", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["ssh_keys"].as_array().unwrap().len(), 1);
    let encoded: String = fingerprint(&alice_key).replace('/', "%2F");
    let (status, body) = h
        .me_call(
            &cookie,
            reqwest::Method::DELETE,
            &format!("ssh-keys/{encoded}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let out = s.run(&alice_key, "alice", &["--", "true"]).await;
    assert_eq!(out.status.code(), Some(255), "{out:?}");

    let audit = admin.get_ok("audit?limit=200").await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for action in [
        "ssh_key.add",
        "ssh_key.remove",
        "ssh.connect",
        "ssh.disconnect",
    ] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
    let _ = bob;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_reaches_only_the_users_own_container() {
    let s = Ssh::start("").await;
    let h = &s.h;
    let alice = h.user("alice").await;
    let bob = h.user("bob").await;
    let key = s.key_of("alice").await;
    let admin = h.admin().await;

    // -L localhost:8080 is the app inside alice's container.
    let local = free_port();
    let mut tunnel = s
        .ssh(&key, "alice")
        .args([
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-L",
            &format!("127.0.0.1:{local}:localhost:8080"),
        ])
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let body = poll(60, "the app through the tunnel", || {
        let client = client.clone();
        async move {
            let resp = client
                .get(format!("http://127.0.0.1:{local}/healthz"))
                .send()
                .await
                .ok()?;
            (resp.status() == StatusCode::OK).then_some(())?;
            resp.text().await.ok()
        }
    })
    .await;
    assert_eq!(body, "ok");
    assert_eq!(h.running_containers_of(&alice.slug).len(), 1);
    tunnel.kill().await.unwrap();

    // Bob's container's own address, and spawngate's port on the host: refused.
    admin.post_ok("users/bob/container/start").await;
    let bob_name = format!("spawngate-u-{}", bob.slug);
    let bob_ip = crate::proc::inspect(
        &bob_name,
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
    );
    assert!(!bob_ip.is_empty());
    let spawngate_port = h.app.config.listen.port();
    for target in [
        format!("{bob_ip}:8080"),
        format!("{bob_name}:8080"),
        "host.docker.internal:8080".to_owned(),
        format!("127.0.0.2:{spawngate_port}"),
    ] {
        let mut c = s.ssh_logging(&key, "alice", "INFO");
        c.args(["-W", &target]);
        let out = c.output().await.unwrap();
        assert_eq!(out.status.code(), Some(255), "{target}: {out:?}");
        assert!(
            text(&out.stderr).contains("administratively prohibited"),
            "{target}: {out:?}"
        );
    }
    // localhost:<spawngate's port> means that port of alice's container, where
    // nothing listens: it never reaches spawngate.
    let mut c = s.ssh_logging(&key, "alice", "INFO");
    c.args(["-W", &format!("localhost:{spawngate_port}")])
        .stdin(Stdio::piped());
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").await;
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(!text(&out.stdout).contains("200"), "{out:?}");
    assert!(
        text(&out.stderr).contains("open failed: connect failed"),
        "{out:?}"
    );

    // Remote and agent forwarding are off.
    let out = s
        .run(
            &key,
            "alice",
            &[
                "-o",
                "ExitOnForwardFailure=yes",
                "-R",
                "0:localhost:1",
                "--",
                "true",
            ],
        )
        .await;
    assert_ne!(out.status.code(), Some(0), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_session_keeps_the_container_and_a_stop_ends_it() {
    let s = Ssh::start("[lifecycle]\nidle_timeout_secs = 3").await;
    let h = &s.h;
    let alice = h.user("alice").await;
    let key = s.key_of("alice").await;
    let admin = h.admin().await;
    let name = format!("spawngate-u-{}", alice.slug);

    // A session longer than the idle timeout: the container stays up throughout.
    let mut c = s.ssh(&key, "alice");
    c.args(["--", "sleep 8; echo done"]);
    let session = tokio::spawn(async move { c.output().await.unwrap() });
    wait_until(60, "the container to run", || {
        crate::proc::inspect(&name, "{{.State.Status}}") == "running"
    })
    .await;
    while !session.is_finished() {
        assert_eq!(crate::proc::inspect(&name, "{{.State.Status}}"), "running");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let out = session.await.unwrap();
    assert_eq!(text(&out.stdout), "done\n", "{out:?}");
    // Then the culler stops it at the configured time.
    wait_until(30, "the idle container to stop", || {
        crate::proc::inspect(&name, "{{.State.Status}}") == "exited"
    })
    .await;

    // A session whose environment is stopped ends with a clear message.
    let mut c = s.ssh(&key, "alice");
    c.args(["--", "echo started; sleep 60"])
        .stdout(Stdio::piped());
    let child = c.stderr(Stdio::piped()).spawn().unwrap();
    let session = tokio::spawn(child.wait_with_output());
    wait_until(60, "the container to run again", || {
        crate::proc::inspect(&name, "{{.State.Status}}") == "running"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    admin.post_ok("users/alice/container/stop").await;
    let out = tokio::time::timeout(Duration::from_secs(30), session)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_ne!(out.status.code(), Some(0), "{out:?}");
    assert!(text(&out.stderr).contains("stopped"), "{out:?}");
}

/// `sftp` / `scp` on a command line of the same options as `ssh`.
fn sftp_like(program: &str, s: &Ssh, key: &Path) -> Command {
    let mut c = Command::new(program);
    c.args(["-P", &s.port.to_string(), "-i"])
        .arg(key)
        .args(CLIENT_OPTIONS)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

async fn finish(mut c: Command) -> Output {
    tokio::time::timeout(Duration::from_secs(90), c.output())
        .await
        .expect("did not finish")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scp_and_sftp_work_where_the_image_has_sftp_server_and_are_refused_clearly_elsewhere() {
    let s = Ssh::start("[limits]\nallowed_images = [\"spawngate-example-app:latest\"]").await;
    let h = &s.h;
    h.user("alice").await;
    h.user("bob").await;
    let admin = h.admin().await;
    let alice_key = s.key_of("alice").await;
    let bob_key = s.key_of("bob").await;

    // scp up and down (OpenSSH's scp speaks sftp), into alice's volume.
    let local = s.keys.path().join("notes.txt");
    std::fs::write(&local, "hello over sftp\n").unwrap();
    let mut up = sftp_like("scp", &s, &alice_key);
    up.arg(&local).arg("alice@127.0.0.1:/data/notes.txt");
    let out = finish(up).await;
    assert!(out.status.success(), "{out:?}");
    let out = s
        .run(&alice_key, "alice", &["--", "cat /data/notes.txt"])
        .await;
    assert_eq!(text(&out.stdout), "hello over sftp\n", "{out:?}");
    let back = s.keys.path().join("back.txt");
    let mut down = sftp_like("scp", &s, &alice_key);
    down.arg("alice@127.0.0.1:/data/notes.txt").arg(&back);
    assert!(finish(down).await.status.success());
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "hello over sftp\n");

    // Bob's image is the bare example app (no shell, no sftp-server).
    let (status, body) = admin
        .put(
            "users/bob/overrides",
            json!({ "image": "spawngate-example-app:latest" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut sftp = sftp_like("sftp", &s, &bob_key);
    sftp.args(["-b", "-", "bob@127.0.0.1"]);
    let out = finish(sftp).await;
    assert!(!out.status.success(), "{out:?}");
    assert!(text(&out.stderr).contains("sftp-server"), "{out:?}");
    // A command there fails with Docker's word for it.
    let out = s.run(&bob_key, "bob", &["--", "true"]).await;
    assert!(matches!(out.status.code(), Some(126 | 127)), "{out:?}");
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(said.contains("/bin/sh"), "{out:?}");
}

#[test]
fn cli_manages_keys_and_check_prints_the_host_key() {
    use crate::cli::{spawngate, stderr, stdout};
    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("id");
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ecdsa", "-N", "", "-C", "work", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(made.status.success());
    let pub_file = key.with_extension("pub");
    let pub_file = pub_file.to_str().unwrap();
    assert!(
        spawngate(dir.path(), &["user", "add", "alice"], &[])
            .status
            .success()
    );
    let add = spawngate(
        dir.path(),
        &["user", "ssh-key", "add", "alice", pub_file],
        &[],
    );
    assert!(add.status.success(), "{}", stderr(&add));
    let fp = fingerprint(&key);
    assert!(stdout(&add).contains(&fp), "{}", stdout(&add));
    let again = spawngate(
        dir.path(),
        &["user", "ssh-key", "add", "alice", pub_file],
        &[],
    );
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("registered already"),
        "{}",
        stderr(&again)
    );
    let weak = spawngate(
        dir.path(),
        &[
            "user",
            "ssh-key",
            "add",
            "alice",
            "ssh-dss AAAAB3NzaC1kc3MAAACBAP1/U4Ed x",
        ],
        &[],
    );
    assert!(!weak.status.success());
    let list = spawngate(
        dir.path(),
        &["user", "ssh-key", "list", "alice", "--json"],
        &[],
    );
    let listed: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(listed[0]["fingerprint"], fp);
    assert_eq!(listed[0]["name"], "work");
    assert_eq!(listed[0]["algorithm"], "ecdsa-sha2-nistp256");
    let rm = spawngate(dir.path(), &["user", "ssh-key", "rm", "alice", &fp], &[]);
    assert!(rm.status.success(), "{}", stderr(&rm));
    let list = spawngate(
        dir.path(),
        &["user", "ssh-key", "list", "alice", "--json"],
        &[],
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&list.stdout).unwrap(),
        json!([])
    );

    // `check` generates the host key once and prints its fingerprint.
    let on = [("SPAWNGATE_SSH_ENABLED", "true")];
    let check = spawngate(dir.path(), &["check"], &on);
    let host_key = dir.path().join("ssh_host_ed25519_key");
    let expected = fingerprint(&host_key);
    assert!(
        stdout(&check).contains(&format!("host key {expected}")),
        "{}",
        stdout(&check)
    );
    let again = spawngate(dir.path(), &["check"], &on);
    assert!(stdout(&again).contains(&expected), "the key is kept");
}

/// The dashboard's SSH panel: a key added there signs in, removed there it is
/// refused at the next connection; its forms need the session's CSRF token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_added_and_removed_from_the_dashboard() {
    let s = Ssh::start("").await;
    let h = &s.h;
    h.user("carol").await;
    let key = s.keygen("carol");
    let cookie = h.login("carol").await;
    let csrf = h.me(&cookie).await["csrf"].as_str().unwrap().to_owned();
    let dashboard = || async {
        let resp = h
            .client
            .get(h.url("/_spawngate/"))
            .header(COOKIE, &cookie)
            .header("Accept", "text/html")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.text().await.unwrap()
    };
    let page = dashboard().await;
    assert!(page.contains("SSH keys"), "{page}");
    assert!(
        page.contains(&format!("ssh -p {} carol@127.0.0.1", s.port)),
        "{page}"
    );
    assert!(page.contains("You have no SSH keys."));

    let post = |action: &'static str, form: Vec<(&'static str, String)>| {
        h.client
            .post(h.url(&format!("/_spawngate/me/{action}")))
            .header(COOKIE, &cookie)
            .form(&form)
            .send()
    };
    let forged = post("ssh-keys", vec![("key", pub_key(&key))])
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let added = post(
        "ssh-keys",
        vec![
            ("csrf", csrf.clone()),
            ("key", pub_key(&key)),
            ("name", "laptop".into()),
        ],
    )
    .await
    .unwrap();
    assert_eq!(added.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        added.headers()["location"],
        "/_spawngate/?done=ssh-key-added"
    );
    let page = dashboard().await;
    assert!(page.contains(&fingerprint(&key)), "{page}");
    assert!(page.contains("laptop"));

    let out = s.run(&key, "carol", &["--", "echo in-the-container"]).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout).trim(), "in-the-container");

    let (status, listed) = h
        .me_call(&cookie, reqwest::Method::GET, "ssh-keys", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let id = listed["ssh_keys"][0]["id"].as_str().unwrap().to_owned();
    let removed = post("ssh-keys/remove", vec![("csrf", csrf.clone()), ("id", id)])
        .await
        .unwrap();
    assert_eq!(removed.status(), StatusCode::SEE_OTHER);
    assert!(dashboard().await.contains("You have no SSH keys."));
    let out = s.run(&key, "carol", &["--", "true"]).await;
    assert_eq!(
        out.status.code(),
        Some(255),
        "a removed key is refused: {out:?}"
    );
}

/// A connection held open (a tunnel, a ControlMaster) does not outlive the
/// user's access: removing the key, or disabling the user, ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_key_or_a_disable_ends_open_connections() {
    let s = Ssh::start("").await;
    let h = &s.h;
    h.user("dora").await;
    let key = s.keygen("dora");
    let admin = h.admin().await;
    let (status, added) = admin
        .post("users/dora/ssh-keys", Some(json!({ "key": pub_key(&key) })))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{added}");

    let tunnel = |local: u16| {
        s.ssh(&key, "dora")
            .args([
                "-N",
                "-o",
                "ExitOnForwardFailure=yes",
                "-L",
                &format!("127.0.0.1:{local}:localhost:8080"),
            ])
            .spawn()
            .unwrap()
    };
    let through = |local: u16| async move {
        poll(60, "the app through the tunnel", || async move {
            let resp = reqwest::get(format!("http://127.0.0.1:{local}/healthz"))
                .await
                .ok()?;
            (resp.status() == StatusCode::OK).then_some(())
        })
        .await
    };
    let ends = |mut child: tokio::process::Child, what: &'static str| async move {
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .unwrap_or_else(|_| panic!("the connection was still open after {what}"))
            .unwrap();
        assert!(!status.success(), "ssh ends with an error after {what}");
    };

    let local = free_port();
    let open = tunnel(local);
    through(local).await;
    let id = added["id"].as_str().unwrap();
    let (status, body) = admin.delete(&format!("users/dora/ssh-keys/{id}")).await;
    assert!(status.is_success(), "{body}");
    ends(open, "the key was removed").await;

    let (status, body) = admin
        .post("users/dora/ssh-keys", Some(json!({ "key": pub_key(&key) })))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let local = free_port();
    let open = tunnel(local);
    through(local).await;
    let (status, body) = admin
        .call(
            reqwest::Method::PATCH,
            "users/dora",
            Some(json!({ "disabled": true })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    ends(open, "the user was disabled").await;
}

/// In a pty shell, Ctrl-C interrupts the command running in the container (the
/// pty's line discipline sends SIGINT) and the shell goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_in_a_pty_interrupts_the_running_command() {
    use tokio::io::AsyncReadExt;
    let s = Ssh::start("").await;
    let h = &s.h;
    h.user("eve").await;
    let key = s.key_of("eve").await;
    let mut child = s
        .ssh(&key, "eve")
        .arg("-tt")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                seen.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    let shown = |needle: &'static str| {
        let seen = seen.clone();
        move || seen.lock().unwrap().contains(needle)
    };
    // `$((…))` so the echoed input itself never matches what is waited for; a
    // child shell, as a real program would be (the shell's own builtins and
    // in-process applets keep it from being a fair test).
    stdin
        .write_all(b"sh -c 'echo sleeping-$((1+1)); sleep 120; echo slept-$((2+2))'\n")
        .await
        .unwrap();
    crate::harness::wait_until(60, "the command to start", shown("sleeping-2")).await;
    // Ctrl-C until the prompt is back (the first may land before `sleep` runs).
    let prompt_back = || {
        let seen = seen.lock().unwrap();
        seen.split("sleeping-2")
            .nth(1)
            .is_some_and(|after| after.contains("$ "))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !prompt_back() {
        assert!(
            std::time::Instant::now() < deadline,
            "Ctrl-C did not interrupt the command: {}",
            seen.lock().unwrap()
        );
        stdin.write_all(b"\x03").await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stdin
        .write_all(b"echo after-$((3+3)); exit 7\n")
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the shell exits")
        .unwrap();
    let _ = reader.await;
    let seen = seen.lock().unwrap().clone();
    assert!(seen.contains("after-6"), "{seen}");
    assert!(
        !seen.contains("slept-4"),
        "the command was interrupted: {seen}"
    );
    assert_eq!(status.code(), Some(7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_plus_environment_signs_in_to_that_environment_until_it_is_deleted() {
    let s = Ssh::start("[limits]\nenvironments_per_user = 2").await;
    let alice = s.h.user("alice").await;
    let key = s.key_of("alice").await;
    let admin = s.h.admin().await;
    let (status, lab) = admin
        .post("users/alice/environments", Some(json!({ "name": "lab" })))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{lab}");

    let out = s
        .run(
            &key,
            "alice+lab",
            &["echo", "$SPAWNGATE_ENVIRONMENT", "$SPAWNGATE_SLUG"],
        )
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        format!("lab {}", lab["slug"].as_str().unwrap())
    );
    // Plain `alice@` is her default environment, at her own slug.
    let plain = s.run(&key, "alice", &["echo", "$SPAWNGATE_SLUG"]).await;
    assert_eq!(text(&plain.stdout).trim(), alice.slug);

    // An environment that does not exist is refused like a wrong key; a deleted
    // one no longer signs in.
    let none = s.run(&key, "alice+nope", &["true"]).await;
    assert!(!none.status.success());
    let (status, _) = admin.delete("users/alice/environments/lab").await;
    assert_eq!(status, StatusCode::OK);
    let gone = s.run(&key, "alice+lab", &["true"]).await;
    assert!(!gone.status.success(), "{}", text(&gone.stdout));
}
