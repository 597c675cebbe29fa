//! The SSH front door: `ssh <user>@<host>` authenticates by the user's registered
//! keys, starts their environment as forwardAuth does, and runs the shell, the
//! command or `sftp-server` inside it through the runtime's exec. Local port
//! forwarding reaches only the user's own container. The protocol is russh's;
//! nothing of SSH itself is written here.
//!
//! - `mod.rs`: the listener, the host key, the shared counters.
//! - `handler.rs`: one connection: authentication and which channels it may open.
//! - `session.rs`: a session channel: pty, shell / exec / subsystem in the container.
//! - `forward.rs`: `direct-tcpip` into the user's container.
//! - `quickack.rs`: the TCP stream, acknowledging at once (Nagle on the client).

mod forward;
mod handler;
mod quickack;
mod session;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::keys::{HashAlg, PrivateKey};
use tokio::net::TcpListener;

use crate::auth::ratelimit::RateLimiter;
use crate::config::SshConfig;
use crate::ids::UserId;
use crate::lifecycle::Lifecycle;
use crate::store::Store;
use crate::tasks::Tasks;

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("ssh.host_key_file '{path}': {message}")]
    HostKey { path: String, message: String },
}

/// What every connection shares.
pub(crate) struct Shared {
    config: SshConfig,
    store: Store,
    lifecycle: Arc<Lifecycle>,
    /// Failed authentications per client address: the login limiter's, so SSH
    /// and the login form draw on one budget.
    failures: Arc<RateLimiter>,
    /// How long one wait for a start lasts before the terminal hears "still
    /// starting" (`spawn.hold`, as forwardAuth holds a request).
    hold: Duration,
    tasks: Tasks,
    connections: Counter,
    channels: Counter,
    /// Places for connections not yet signed in (see [`MAX_UNSIGNED`]).
    unsigned: Arc<tokio::sync::Semaphore>,
}

/// Open things per user, capped; a [`Counted`] gives its place back when dropped.
#[derive(Clone, Default)]
pub(crate) struct Counter(Arc<Mutex<HashMap<UserId, usize>>>);

pub(crate) struct Counted {
    counter: Counter,
    id: UserId,
}

impl Counter {
    fn take(&self, id: &UserId, max: usize) -> Option<Counted> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(id.clone()).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Counted {
            counter: self.clone(),
            id: id.clone(),
        })
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut map = self.counter.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.id);
            }
        }
    }
}

/// How long a client may take to send its version line.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);
/// How long a connection may take to sign in (OpenSSH's `LoginGraceTime`).
const SIGN_IN_LIMIT: Duration = Duration::from_secs(30);
/// Connections not yet signed in, at most (OpenSSH's `MaxStartups`): past it new
/// ones are closed at once, so idle unauthenticated connections cannot use up
/// the file descriptors the HTTP listener needs too.
const MAX_UNSIGNED: usize = 64;
/// How often a signed-in connection checks that its user and key still hold.
const RECHECK: Duration = Duration::from_secs(2);

pub struct SshServer {
    shared: Arc<Shared>,
    russh: Arc<russh::server::Config>,
}

impl SshServer {
    /// Loads the host key (generating it on first start).
    pub fn new(
        config: SshConfig,
        store: Store,
        lifecycle: Arc<Lifecycle>,
        failures: Arc<RateLimiter>,
        hold: Duration,
        tasks: Tasks,
    ) -> Result<SshServer, SshError> {
        let key = load_or_generate(&config.host_key_file)?;
        let russh = russh::server::Config {
            server_id: russh::SshId::Standard("SSH-2.0-spawngate".into()),
            methods: russh::MethodSet::from(&[russh::MethodKind::PublicKey][..]),
            // A wrong key is answered after a second (russh's constant time), the
            // client's first "none" probe at once.
            auth_rejection_time: Duration::from_secs(1),
            auth_rejection_time_initial: Some(Duration::ZERO),
            max_auth_attempts: 6,
            keys: vec![key],
            inactivity_timeout: Some(Duration::from_secs(3600)),
            keepalive_interval: Some(Duration::from_secs(30)),
            nodelay: true,
            ..Default::default()
        };
        Ok(SshServer {
            shared: Arc::new(Shared {
                config,
                store,
                lifecycle,
                failures,
                hold,
                tasks,
                connections: Counter::default(),
                channels: Counter::default(),
                unsigned: Arc::new(tokio::sync::Semaphore::new(MAX_UNSIGNED)),
            }),
            russh: Arc::new(russh),
        })
    }

    /// Accepts connections until shutdown begins; each connection is a tracked
    /// task that ends (disconnecting its client) at shutdown too.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let tasks = self.shared.tasks.clone();
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = tasks.cancelled() => return,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "ssh accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(unsigned) = self.shared.unsigned.clone().try_acquire_owned() else {
                tracing::info!(%peer, "ssh: refused, too many connections not yet signed in");
                continue;
            };
            let _ = stream.set_nodelay(true);
            let signed = Arc::new(std::sync::OnceLock::new());
            let handler =
                handler::Connection::new(self.shared.clone(), peer, signed.clone(), unsigned);
            let shared = self.shared.clone();
            let config = self.russh.clone();
            let tasks2 = tasks.clone();
            tasks.spawn(async move {
                // A client that never sends its version must not hold shutdown up.
                let started = tokio::select! {
                    r = tokio::time::timeout(
                        HANDSHAKE_LIMIT,
                        russh::server::run_stream(config, quickack::QuickAck(stream), handler),
                    ) => r,
                    () = tasks2.cancelled() => return,
                };
                let session = match started {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "ssh handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "ssh client sent no version in time");
                        return;
                    }
                };
                let handle = session.handle();
                tokio::pin!(session);
                let connected = tokio::time::Instant::now();
                let mut recheck = tokio::time::interval(RECHECK);
                let why = loop {
                    tokio::select! {
                        r = &mut session => {
                            if let Err(e) = r {
                                tracing::debug!(%peer, error = %e, "ssh connection ended with error");
                            }
                            return;
                        }
                        _ = recheck.tick() => match signed.get() {
                            None if connected.elapsed() >= SIGN_IN_LIMIT => {
                                break "not signed in in time";
                            }
                            Some(s) if s.still_allowed(&shared).is_none() => {
                                break "your access was revoked";
                            }
                            _ => {}
                        },
                        () = tasks2.cancelled() => break "spawngate is shutting down",
                    }
                };
                let _ = handle
                    .disconnect(russh::Disconnect::ByApplication, why.into(), String::new())
                    .await;
                let _ = tokio::time::timeout(Duration::from_secs(2), session).await;
            });
        }
    }
}

/// The host key's fingerprint as clients show it (`SHA256:…`), generating the
/// key if it does not exist yet (what `spawngate check` prints).
pub fn host_key_fingerprint(path: &Path) -> Result<String, SshError> {
    let key = load_or_generate(path)?;
    Ok(key.public_key().fingerprint(HashAlg::Sha256).to_string())
}

/// Reads the OpenSSH private key at `path`, or makes an ed25519 one there (0600).
fn load_or_generate(path: &Path) -> Result<PrivateKey, SshError> {
    let err = |message: String| SshError::HostKey {
        path: path.display().to_string(),
        message,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            // As sshd does: a host key others can read is refused, not used.
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(|e| err(e.to_string()))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(err(format!(
                    "permissions {:04o} are too open: the private key must be readable by its owner only (chmod 600)",
                    mode & 0o7777
                )));
            }
            return PrivateKey::from_openssh(text.as_bytes())
                .map_err(|e| err(format!("not an OpenSSH private key: {e}")));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e.to_string())),
    }
    let seed = crate::ids::random_bytes::<32>();
    let key = PrivateKey::from(russh::keys::ssh_key::private::Ed25519Keypair::from_seed(
        &seed,
    ));
    let text = key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .map_err(|e| err(format!("cannot encode the new key: {e}")))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| err(e.to_string()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| err(e.to_string()))?;
    tracing::info!(path = %path.display(), fingerprint = %key.public_key().fingerprint(HashAlg::Sha256), "generated the SSH host key");
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_key_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        load_or_generate(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_generate(&path).unwrap_err().to_string();
        assert!(e.contains("0644 are too open"), "{e}");
    }

    #[test]
    fn the_host_key_is_generated_once_private_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/host");
        let first = host_key_fingerprint(&path).unwrap();
        assert!(first.starts_with("SHA256:"));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(host_key_fingerprint(&path).unwrap(), first, "kept");
        std::fs::write(&path, "garbage").unwrap();
        assert!(host_key_fingerprint(&path).is_err());
    }

    #[test]
    fn counters_cap_and_give_back() {
        let c = Counter::default();
        let id = UserId::generate();
        let a = c.take(&id, 2).unwrap();
        let _b = c.take(&id, 2).unwrap();
        assert!(c.take(&id, 2).is_none());
        drop(a);
        assert!(c.take(&id, 2).is_some());
    }
}
