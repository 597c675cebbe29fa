//! Start-up reconciliation: spawngate's view is rebuilt from Docker (by label) and
//! the store, so a restart neither restarts running containers nor forgets any.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Lifecycle, Phase, parse_rfc3339};
use crate::runtime::RuntimeError;
use crate::time::unix_now;

/// What reconciliation did, for the log and tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    pub adopted_running: usize,
    pub adopted_paused: usize,
    pub adopted_stopped: usize,
    pub orphans_removed: usize,
    pub records_corrected: usize,
}

impl Lifecycle {
    /// Adopts this instance's containers: running ones that answer are ready at once
    /// (same container, no restart), paused and stopped ones are remembered, those
    /// of deleted users are removed (their volumes are kept), and container records
    /// that point at nothing are corrected.
    pub async fn reconcile(self: &Arc<Self>) -> Result<Reconciled, RuntimeError> {
        let mut done = Reconciled::default();
        let containers = self.runtime.list(&self.config.docker.instance).await?;
        let directory = self.store.snapshot();
        let mut seen = HashSet::new();
        for c in containers {
            let pooled = c.labels.get("spawngate.pool").map(String::as_str) == Some("true");
            let user = if pooled {
                // A claimed pool container carries its user only in its name (labels
                // cannot change) and in the user's record.
                c.name
                    .strip_prefix("spawngate-")
                    .and_then(crate::ids::Slug::parse_segment)
                    .and_then(|slug| directory.by_slug(&slug).cloned())
                    .filter(|u| {
                        self.store
                            .container_record(&u.id)
                            .ok()
                            .flatten()
                            .is_some_and(|r| {
                                r.pooled_from.is_some()
                                    && r.container_id.as_deref() == Some(c.id.as_str())
                            })
                    })
            } else {
                c.labels
                    .get("spawngate.slug")
                    .and_then(|s| crate::ids::Slug::parse(s))
                    .and_then(|slug| directory.by_slug(&slug).cloned())
                    .filter(|u| {
                        c.labels.get("spawngate.user_id").map(String::as_str) == Some(u.id.as_str())
                    })
            };
            if pooled && user.is_none() {
                // Unclaimed spares from a previous run: the pool makes fresh ones.
                self.runtime.remove(&c.name, None).await?;
                continue;
            }
            let Some(user) = user else {
                tracing::info!(container = %c.name, "removing container of a deleted user (volume kept)");
                self.runtime.remove(&c.name, None).await?;
                self.store.audit(
                    "system",
                    "container.remove",
                    &c.name,
                    Some("user no longer exists".into()),
                );
                done.orphans_removed += 1;
                continue;
            };
            seen.insert(user.id.clone());
            let slot = self.slot(&user.id);
            slot.present.store(true, Ordering::Relaxed);
            let record = self.store.container_record(&user.id).ok().flatten();
            if let Some(r) = &record {
                self.restore_pooled_secret(&slot, r);
            }
            let last = record
                .as_ref()
                .and_then(|r| r.last_activity)
                .unwrap_or_else(unix_now);
            slot.last_activity.store(last, Ordering::Relaxed);
            slot.persisted_activity.store(last, Ordering::Relaxed);
            let phase = match c.state.as_str() {
                "running" => {
                    if let Some(info) = self.runtime.inspect(&c.name).await? {
                        let started = info
                            .started_at
                            .as_deref()
                            .and_then(parse_rfc3339)
                            .unwrap_or(0);
                        slot.started.store(started, Ordering::Relaxed);
                    }
                    // Ready only if it answers now; otherwise the next request
                    // goes through the normal (probing) path.
                    if self.answers(&user, Duration::from_secs(1)).await {
                        done.adopted_running += 1;
                        Phase::Ready
                    } else {
                        Phase::Unknown
                    }
                }
                "paused" => {
                    done.adopted_paused += 1;
                    Phase::Paused
                }
                _ => {
                    done.adopted_stopped += 1;
                    Phase::Stopped
                }
            };
            slot.phase.send_if_modified(|p| {
                // A request may already be starting it; leave that alone.
                if matches!(p, Phase::Unknown) {
                    *p = phase;
                    true
                } else {
                    false
                }
            });
        }
        for user in directory.users() {
            if seen.contains(&user.id) {
                continue;
            }
            if let Ok(Some(mut record)) = self.store.container_record(&user.id)
                && record.container_id.is_some()
            {
                record.container_id = None;
                record.stopped_at.get_or_insert_with(unix_now);
                if self.store.put_container_record(&record).await.is_ok() {
                    done.records_corrected += 1;
                }
            }
            self.slot(&user.id).phase.send_if_modified(|p| {
                if matches!(p, Phase::Unknown) {
                    *p = Phase::Stopped;
                    true
                } else {
                    false
                }
            });
        }
        tracing::info!(?done, "reconciled containers with Docker");
        Ok(done)
    }

    /// Reconciles at start-up, retrying while Docker is unreachable.
    pub async fn reconcile_until_done(
        self: Arc<Self>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut backoff = Duration::from_millis(500);
        loop {
            match self.reconcile().await {
                Ok(_) => return,
                Err(e) => tracing::warn!(error = %e, "reconciliation failed; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }
}
