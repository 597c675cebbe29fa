//! spawngate's data directory fills up while it serves: sign-ins and new users get
//! a clear 503 (never "please sign in"), `/readyz` says why, signed-in users keep
//! reaching their containers, and once space is back and spawngate restarted,
//! nothing written before the disk filled is lost or corrupted.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::poll;
use crate::proc::ProcHarness;

/// A size-limited tmpfs, unmounted when dropped (needs root, as CI runs).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(megabytes: u32) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m,mode=0700")])
            .arg("tmpfs")
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "cannot mount a tmpfs at {} (this test needs root)",
            dir.path().display()
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file until the file system is full; returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 1 << 20];
        // Bounded: the file system is a few dozen MiB.
        for _ in 0..1024 {
            if file
                .write_all(&chunk)
                .and_then(|()| file.sync_all())
                .is_err()
            {
                return path;
            }
        }
        panic!("the tmpfs never filled up");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_gives_clear_answers_and_loses_nothing() {
    let fs = Tmpfs::mount(32);
    let data = fs.path().join("data");
    let mut h = ProcHarness::start(&[("SPAWNGATE_SERVER_DATA_DIR", data.to_str().unwrap())]).await;
    let slug = h.user("alice").await;
    let cookie = h.login("alice").await;
    let app_url = format!("{}/u-{slug}/whoami.json", h.public);
    let client = h.client.clone();
    let get_app = || {
        let req = client.get(&app_url).header("cookie", &cookie);
        async move { req.send().await.unwrap() }
    };
    assert_eq!(get_app().await.status(), 200);
    // A link for a sign-in attempted while the disk is full.
    let link = String::from_utf8_lossy(&h.cli(&["user", "login-link", "alice"]).stdout)
        .trim()
        .to_owned();
    let (status, _) = h.readyz().await;
    assert_eq!(status, 200);

    let filler = fs.fill();
    // sled's first writes may still land in space it reserved earlier: readyz
    // writes a probe each time, so it soon reaches the full disk.
    let report = poll(30, "readyz to notice the full disk", || async {
        let (status, body) = h.readyz().await;
        (status == 503).then_some(body)
    })
    .await;
    let store = report["store"].as_str().unwrap();
    assert!(
        store.contains("No space left on device") && store.contains("restart spawngate"),
        "{report}"
    );

    // Signed in before: still served (the store answers reads), never sent to sign in.
    let resp = get_app().await;
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap();
    assert!(
        status == 200 || (status == 503 && body.contains("store_unavailable")),
        "{status}: {body}"
    );
    // Signing in needs a write: a page that says what is wrong, not the form again.
    let token = link.split("token=").nth(1).unwrap();
    let resp = h
        .client
        .post(format!("{}/_spawngate/login", h.public))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let page = resp.text().await.unwrap();
    assert!(
        page.contains("cannot use its storage") && !page.contains("<form"),
        "{page}"
    );
    // The CLI says why too.
    let add = h.cli_with(&[], &["user", "add", "bob"]);
    assert!(!add.status.success());
    let err = String::from_utf8_lossy(&add.stderr);
    assert!(err.contains("No space left on device"), "{err}");

    // Space back, spawngate restarted: everything from before the disk filled.
    std::fs::remove_file(filler).unwrap();
    h.signal("TERM").await;
    h.spawn_server().await;
    let (status, body) = h.readyz().await;
    assert_eq!(status, 200, "{body}");
    let list = String::from_utf8_lossy(&h.cli(&["user", "list"]).stdout).into_owned();
    assert!(list.contains("alice") && list.contains(&slug), "{list}");
    assert_eq!(get_app().await.status(), 200, "the session from before");
    let again = h.login("alice").await;
    assert!(!again.is_empty());
    h.user("bob").await;
}
