//! Listeners: the TCP server (Traefik, browsers, API clients) and the control socket
//! (the local CLI), both drained gracefully on shutdown, plus the background tasks.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, UnixListener};

use crate::app::App;
use crate::http::{self, Peer};

/// How long in-flight requests (including forwardAuth holds) may take to finish
/// after shutdown begins.
const DRAIN_GRACE: Duration = Duration::from_secs(30);

/// The control socket's file in the data directory.
pub fn control_socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("control.sock")
}

/// Serves `app` on `listener` (and the control socket) until `shutdown` completes,
/// then drains. Background tasks run for as long as this does.
pub async fn run(
    app: Arc<App>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let control = bind_control(&control_socket_path(&app.config.data_dir))?;
    if let (Some(ssh), Some(config)) = (&app.ssh, &app.config.ssh) {
        let listener = TcpListener::bind(config.listen).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen on ssh.listen {}: {e}", config.listen),
            )
        })?;
        tracing::info!(listen = %listener.local_addr()?, "ssh serving");
        app.tasks.spawn(ssh.clone().serve(listener));
    }
    spawn_background(&app);

    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    tracing::info!(listen = %listener.local_addr()?, public_url = %app.config.public_url.origin, "spawngate serving");
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let service = service_fn(move |req| {
                    let app = app.clone();
                    async move {
                        let (req, read_whole) = crate::linger::track(req);
                        let mut resp = http::handle(app, req, Peer::Network(peer)).await?;
                        crate::linger::close_if_unread(&mut resp, &read_whole);
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let stream = crate::linger::LingeringStream::new(stream);
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                let conn = graceful.watch(conn.into_owned());
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with error");
                    }
                });
            }
            accepted = control.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let app = app.clone();
                let service = service_fn(move |req| http::handle(app.clone(), req, Peer::Control));
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn.into_owned());
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            () = &mut shutdown => break,
        }
    }
    tracing::info!("shutting down: draining connections");
    drop(listener);
    let _ = std::fs::remove_file(control_socket_path(&app.config.data_dir));
    // The loops stop now; connections drain first (a request held for a start
    // waits for the start), and only then is the background work closed and
    // waited for, so what the last requests set going (a start, a stop, a mail)
    // is finished rather than aborted half-way.
    app.tasks.cancel();
    let began = std::time::Instant::now();
    if tokio::time::timeout(DRAIN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections were still open after the grace period");
    }
    let left = app
        .tasks
        .shutdown(DRAIN_GRACE.saturating_sub(began.elapsed()))
        .await;
    if left > 0 {
        tracing::warn!(left, "background work still running after the grace period");
    }
    if let Err(e) = app.store.flush().await {
        tracing::error!(error = %e, "final store flush failed");
    }
    Ok(())
}

/// The control socket is created owner-only (0600): whoever can open it is the
/// operator. A stale socket from a crashed run is replaced.
fn bind_control(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!(
                "another spawngate is serving on control socket {}",
                path.display()
            ),
        ));
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// The loops that run for as long as the server does; each returns once shutdown
/// begins ([`crate::tasks::Tasks::cancelled`]).
fn spawn_background(app: &Arc<App>) {
    app.lifecycle.start_background();
    let (store, tasks) = (app.store.clone(), app.tasks.clone());
    app.tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = tasks.cancelled() => return,
            }
            // Once per store, not once per replica.
            if !store.is_leader() {
                continue;
            }
            match store.purge_expired().await {
                Ok(n) if n > 0 => {
                    tracing::info!(removed = n, "expired sessions and login tokens purged")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "purge of expired sessions failed"),
            }
            match store.sweep_tombstones().await {
                Ok(n) if n > 0 => tracing::info!(
                    removed = n,
                    "old change records of the shared store dropped"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "sweep of the shared store's change records failed")
                }
            }
        }
    });
}
