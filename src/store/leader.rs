//! Which replica does the work that must happen once (the idle culler, the warm
//! pool, reconciliation, the purge of expired records).
//!
//! On the embedded store there is one process: it always leads. On PostgreSQL
//! the leader is whoever holds a session-level advisory lock on a connection of
//! its own. PostgreSQL releases the lock the moment that session ends (a killed
//! process's socket closes), and a follower retrying every second takes over.
//! No two leaders at once, as far as one process can know: a session the server
//! ends (a restart, `pg_terminate_backend`) is noticed the moment its connection
//! closes, and the leader stops leading then; a session that goes silent (a
//! network cut) is checked every second and given up once a check fails or
//! takes too long ([`CHECK_TIMEOUT`]), while PostgreSQL, told by TCP keepalives,
//! only lets go of the lock later ([`SERVER_KEEPALIVE`]): an unreachable leader
//! has stopped before anyone else can start. Work the old leader set going just
//! before (one cull already under way) still finishes.

use std::sync::Weak;
use std::time::Duration;

use tokio::sync::watch;

use super::postgres::{LEADER_LOCK, connect_watched};

const RETRY: Duration = Duration::from_secs(1);
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// PostgreSQL's keepalive on the leader's session: idle, interval, count
/// (silence for 5 + 2 × 3 = 11 s ends it, well after the leader's own 3 s).
const SERVER_KEEPALIVE: (u32, u32, u32) = (5, 2, 3);
/// And for a reply the leader never acknowledges (a cut while the check's
/// answer is in flight, when keepalives do not run): the same 11 s.
const SERVER_USER_TIMEOUT_MS: u32 = 11_000;

/// Campaigns for leadership until the store is dropped, publishing whether
/// this replica leads.
pub(super) async fn campaign(config: tokio_postgres::Config, leading: Weak<watch::Sender<bool>>) {
    let publish = |now: bool| {
        let Some(tx) = leading.upgrade() else {
            return false;
        };
        tx.send_if_modified(|was| {
            if *was == now {
                return false;
            }
            *was = now;
            tracing::info!(
                leader = now,
                "{}",
                if now {
                    "this replica now leads"
                } else {
                    "this replica no longer leads"
                }
            );
            true
        });
        true
    };
    loop {
        let session = async {
            let (client, ended) = connect_watched(&config, None).await?;
            let (idle, interval, count) = SERVER_KEEPALIVE;
            client
                .batch_execute(&format!(
                    "SET tcp_keepalives_idle = {idle}; SET tcp_keepalives_interval = {interval}; \
                     SET tcp_keepalives_count = {count}; SET tcp_user_timeout = {}",
                    SERVER_USER_TIMEOUT_MS
                ))
                .await
                .map_err(|e| super::StoreError::Unavailable(e.to_string()))?;
            Ok::<_, super::StoreError>((client, ended))
        };
        if let Ok((client, mut ended)) = session.await {
            let mut held = false;
            loop {
                let check = async {
                    if held {
                        // The session holds the lock for as long as it lives:
                        // that it still answers is the check.
                        client.simple_query("SELECT 1").await?;
                        return Ok(true);
                    }
                    let won: bool = client
                        .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])
                        .await?
                        .get(0);
                    Ok::<_, tokio_postgres::Error>(won)
                };
                match tokio::time::timeout(CHECK_TIMEOUT, check).await {
                    Ok(Ok(won)) => {
                        held = won;
                        if !publish(won) {
                            return;
                        }
                    }
                    _ => break,
                }
                // A session the server ended (a restart, pg_terminate_backend)
                // frees the lock at once: stop leading at once too.
                tokio::select! {
                    () = tokio::time::sleep(RETRY) => {}
                    _ = &mut ended => break,
                }
            }
        }
        // The session is gone or silent: whatever it held, this replica stops.
        if !publish(false) {
            return;
        }
        tokio::time::sleep(RETRY).await;
    }
}
