//! The single-node swarm the Swarm backend's tests run on. The engine is left as
//! it was found: a swarm these tests made is left once its last user is done;
//! one that existed before (someone else's) is never touched.
//!
//! Test processes of other checkouts may use the engine's swarm at the same time,
//! so "its last user" spans processes: each process using the swarm holds a shared
//! lock on a file in the temp directory, the one that made the swarm writes its
//! cluster id to a marker file, and the swarm is left by whichever process is last
//! out, provided the marker names the swarm that is there now.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex, Weak};

/// Held by every test on the Swarm backend.
pub struct SwarmGuard {
    /// Shared lock on the users file while this process uses the swarm.
    users: Option<File>,
}

static CURRENT: Mutex<Weak<SwarmGuard>> = Mutex::new(Weak::new());

fn path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("spawngate-test-swarm.{name}"))
}

fn lock_file(name: &str) -> File {
    let path = path(name);
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
}

fn docker_info(format: &str) -> String {
    let out = Command::new("docker")
        .args(["info", "--format", format])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Held while a process decides to make or to leave the swarm.
fn decide() -> File {
    let file = lock_file("decide");
    file.lock().unwrap();
    file
}

impl SwarmGuard {
    /// The swarm, initialised first when the engine is in none.
    pub fn acquire() -> Arc<SwarmGuard> {
        let mut current = CURRENT.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(guard) = current.upgrade() {
            return guard;
        }
        let _deciding = decide();
        let users = lock_file("users");
        users.lock_shared().unwrap();
        match docker_info("{{.Swarm.LocalNodeState}}").as_str() {
            "active" => {}
            "inactive" => {
                let out = Command::new("docker")
                    .args(["swarm", "init", "--advertise-addr", "127.0.0.1"])
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "docker swarm init: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                std::fs::write(path("made"), docker_info("{{.Swarm.Cluster.ID}}")).unwrap();
            }
            other => panic!(
                "the Docker engine's swarm is {other:?}: neither in one nor free to make one"
            ),
        }
        let guard = Arc::new(SwarmGuard { users: Some(users) });
        *current = Arc::downgrade(&guard);
        guard
    }
}

impl Drop for SwarmGuard {
    fn drop(&mut self) {
        // Taken so that no test of this process acquires the swarm while it is
        // being left; then no other process's either.
        let _current = CURRENT.lock().unwrap_or_else(|p| p.into_inner());
        let _deciding = decide();
        drop(self.users.take());
        // Another guard (a test acquired one meanwhile, or another process)
        // holds it shared: leaving is its job.
        let users = lock_file("users");
        if users.try_lock().is_err() {
            return;
        }
        let made = std::fs::read_to_string(path("made")).unwrap_or_default();
        if made.is_empty() || made.trim() != docker_info("{{.Swarm.Cluster.ID}}") {
            return;
        }
        let _ = Command::new("docker")
            .args(["swarm", "leave", "--force"])
            .output();
        let _ = std::fs::remove_file(path("made"));
    }
}
