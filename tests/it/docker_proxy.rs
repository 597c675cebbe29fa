//! A socket proxy in front of the real Docker socket, for tests that make Docker
//! unreachable and bring it back. It forwards real Docker traffic byte for byte
//! (nothing is mocked); the test stops it, with every open connection (the event
//! stream too), and starts it again on the same path.
//!
//! A trip wire cuts it at a chosen moment: once a request containing a given text
//! (e.g. `/containers/create`) has been answered by Docker, the proxy dies before
//! relaying the answer. Docker did the work; spawngate never hears about it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};

/// The real Docker socket: `DOCKER_HOST` when it names one, else the default.
fn docker_socket() -> PathBuf {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"))
}

pub struct DockerProxy {
    path: PathBuf,
    /// The accept loop; it owns every connection task, so aborting it closes them.
    task: Option<JoinHandle<()>>,
    /// Text that arms the trip wire (checked in client-to-Docker bytes).
    trip: Arc<Mutex<Option<String>>>,
    /// Notified by the connection that tripped; the accept loop then dies.
    kill: Arc<Notify>,
    tripped: Arc<Notify>,
}

impl DockerProxy {
    /// Starts forwarding `path` to the Docker socket.
    pub fn start(path: &Path) -> DockerProxy {
        let mut proxy = DockerProxy {
            path: path.to_owned(),
            task: None,
            trip: Arc::new(Mutex::new(None)),
            kill: Arc::new(Notify::new()),
            tripped: Arc::new(Notify::new()),
        };
        proxy.restart();
        proxy
    }

    /// `docker.host` for spawngate's configuration.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Kills the proxy the moment Docker answers a request containing `text`.
    pub fn trip_on(&self, text: &str) {
        *self.trip.lock().unwrap() = Some(text.to_owned());
    }

    /// Waits until the trip wire fired (the proxy is down then).
    pub async fn tripped(&self) {
        self.tripped.notified().await;
    }

    /// Stops accepting and closes every open connection at once, as a daemon that
    /// goes away would.
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Listens again on the same path (after a stop or a trip).
    pub fn restart(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.path);
        let listener = UnixListener::bind(&self.path).unwrap();
        let (trip, kill, tripped) = (self.trip.clone(), self.kill.clone(), self.tripped.clone());
        self.task = Some(tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((client, _)) = accepted else { return };
                        let (trip, kill) = (trip.clone(), kill.clone());
                        connections.spawn(forward(client, trip, kill));
                    }
                    _ = kill.notified() => {
                        // Dropping the set aborts every connection task.
                        tripped.notify_one();
                        return;
                    }
                    // Reap finished connections so the set does not grow.
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        }));
    }
}

impl Drop for DockerProxy {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Relays one client connection to Docker in both directions.
async fn forward(client: UnixStream, trip: Arc<Mutex<Option<String>>>, kill: Arc<Notify>) {
    let Ok(upstream) = UnixStream::connect(docker_socket()).await else {
        return;
    };
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut docker_rx, mut docker_tx) = upstream.into_split();
    let armed = AtomicBool::new(false);
    let to_docker = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match client_rx.read(&mut buf).await {
                Ok(0) => {
                    // Half-closed: let Docker's answer still come back.
                    let _ = docker_tx.shutdown().await;
                    std::future::pending::<()>().await;
                    return;
                }
                Err(_) => return,
                Ok(n) => n,
            };
            let wire = trip.lock().unwrap().clone();
            if let Some(text) = wire
                && String::from_utf8_lossy(&buf[..n]).contains(&text)
            {
                // Fires once: the restarted proxy forwards normally.
                *trip.lock().unwrap() = None;
                armed.store(true, Ordering::SeqCst);
            }
            if docker_tx.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let to_client = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match docker_rx.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if armed.load(Ordering::SeqCst) {
                // Docker answered the watched request: die without relaying it.
                kill.notify_one();
                std::future::pending::<()>().await;
            }
            if client_tx.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    // Docker closing (or a broken client) ends the connection: both halves drop.
    tokio::select! {
        _ = to_docker => {}
        _ = to_client => {}
    }
}
