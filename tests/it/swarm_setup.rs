//! The single-node swarm the Swarm backend's tests run on. The engine is left as
//! it was found: a swarm these tests made is left once its last user is done;
//! one that existed before (someone else's) is never touched.

use std::process::Command;
use std::sync::{Arc, Mutex, Weak};

/// Held by every test on the Swarm backend.
pub struct SwarmGuard {
    /// These tests ran `docker swarm init`: they leave it too.
    created: bool,
}

static CURRENT: Mutex<Weak<SwarmGuard>> = Mutex::new(Weak::new());

fn node_state() -> String {
    let out = Command::new("docker")
        .args(["info", "--format", "{{.Swarm.LocalNodeState}}"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl SwarmGuard {
    /// The swarm, initialised first when the engine is in none.
    pub fn acquire() -> Arc<SwarmGuard> {
        let mut current = CURRENT.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(guard) = current.upgrade() {
            return guard;
        }
        let created = match node_state().as_str() {
            "active" => false,
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
                true
            }
            other => panic!(
                "the Docker engine's swarm is {other:?}: neither in one nor free to make one"
            ),
        };
        let guard = Arc::new(SwarmGuard { created });
        *current = Arc::downgrade(&guard);
        guard
    }
}

impl Drop for SwarmGuard {
    fn drop(&mut self) {
        if !self.created {
            return;
        }
        // Taken so that no test acquires the swarm while it is being left.
        let _current = CURRENT.lock().unwrap_or_else(|p| p.into_inner());
        let _ = Command::new("docker")
            .args(["swarm", "leave", "--force"])
            .output();
    }
}
