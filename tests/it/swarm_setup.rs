//! The single-node swarm the Swarm backend's tests run on. The engine is left as
//! it was found: a swarm these tests made is left once its last user is done;
//! one that existed before (someone else's) is never touched.

use std::process::Command;
use std::sync::{Arc, Mutex, Weak};

/// Held by every test on the Swarm backend.
pub struct SwarmGuard {
    /// These tests ran `docker swarm init`: they leave it too.
    created: std::sync::atomic::AtomicBool,
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
        let guard = Arc::new(SwarmGuard {
            created: std::sync::atomic::AtomicBool::new(created),
        });
        *current = Arc::downgrade(&guard);
        guard
    }
}

impl Drop for SwarmGuard {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        if !self.created.load(Ordering::SeqCst) {
            return;
        }
        // Taken so that no test acquires the swarm while it is being left.
        let current = CURRENT.lock().unwrap_or_else(|p| p.into_inner());
        // A test acquired it between the last guard going and this lock: it
        // found the swarm active (ours), so leaving it is now its job.
        if let Some(newer) = current.upgrade() {
            newer.created.store(true, Ordering::SeqCst);
            return;
        }
        let _ = Command::new("docker")
            .args(["swarm", "leave", "--force"])
            .output();
    }
}
