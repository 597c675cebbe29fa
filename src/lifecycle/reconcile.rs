//! Start-up reconciliation: spawngate's view is rebuilt from Docker (by label) and
//! the store, so a restart neither restarts running containers nor forgets any,
//! and what a deleted user left behind (a removal cut short by a crash or by an
//! unreachable Docker) is removed.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Event, Lifecycle, Observed, Phase, env_of, parse_rfc3339};
use crate::runtime::{EnvId, ResourceKind, RunState, RuntimeError};
use crate::store::Env;
use crate::time::unix_now;

/// What reconciliation did, for the log and tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    pub adopted_running: usize,
    pub adopted_paused: usize,
    pub adopted_stopped: usize,
    pub orphans_removed: usize,
    pub records_corrected: usize,
    /// Volumes of deleted users (unless `lifecycle.keep_volume_on_delete`).
    pub volumes_removed: usize,
    /// Per-user networks no user has any more.
    pub networks_removed: usize,
}

impl Lifecycle {
    /// Adopts this instance's containers: running ones that answer are ready at once
    /// (same container, no restart), paused and stopped ones are remembered, those
    /// of users that do not exist are removed, and container records that point at
    /// nothing are corrected. Then the volumes and networks of deleted users go
    /// (see [`Self::remove_leftovers`]).
    pub async fn reconcile(self: &Arc<Self>) -> Result<Reconciled, RuntimeError> {
        self.reconcile_with(true).await
    }

    /// The same while serving, after Docker was unreachable: events may have been
    /// missed, and removals of users deleted meanwhile are to be finished. Pool
    /// spares and container records are left alone: the pool and spawns are at
    /// work on them now, unlike at start-up.
    pub async fn resync(self: &Arc<Self>) -> Result<Reconciled, RuntimeError> {
        self.reconcile_with(false).await
    }

    async fn reconcile_with(self: &Arc<Self>, startup: bool) -> Result<Reconciled, RuntimeError> {
        let mut done = Reconciled::default();
        // One removal failing (Docker still busy removing it) must not stop the
        // rest: it is retried with the next pass.
        let mut failed: Option<RuntimeError> = None;
        let containers = self.runtime.list().await?;
        let directory = self.store.snapshot();
        let mut seen = HashSet::new();
        for c in containers {
            let pooled = c.pooled;
            if pooled && !startup {
                continue;
            }
            let slug = match &c.env_id {
                EnvId::User(slug) => Some(slug),
                _ => None,
            };
            let env = if pooled {
                // A claimed pool container carries its user only in its name (labels
                // cannot change) and in the user's record.
                slug.and_then(|slug| directory.environment(slug))
                    .filter(|e| {
                        self.store
                            .container_record(&e.record_key())
                            .ok()
                            .flatten()
                            .is_some_and(|r| {
                                r.pooled_from.is_some()
                                    && r.container_id.as_deref() == Some(c.id.as_str())
                            })
                    })
            } else {
                slug.and_then(|slug| directory.environment(slug))
                    .filter(|e| c.owner_id.as_deref() == Some(e.owner().id.as_str()))
            };
            let name = self.runtime.name(&c.env_id);
            if pooled && env.is_none() {
                // Unclaimed spares from a previous run: the pool makes fresh ones.
                if let Err(e) = self.runtime.remove(&c.env_id, false).await {
                    note_failure(&mut failed, &name, e);
                }
                continue;
            }
            let Some(env) = env else {
                tracing::info!(container = %name, "removing the container of a user (or environment) that does not exist");
                if let Err(e) = self.runtime.remove(&c.env_id, false).await {
                    note_failure(&mut failed, &name, e);
                    continue;
                }
                self.store.audit(
                    "system",
                    "container.remove",
                    &name,
                    Some("its user or environment no longer exists".into()),
                );
                done.orphans_removed += 1;
                continue;
            };
            seen.insert(env.slug().clone());
            let slot = self.slot(env.slug());
            slot.present.store(true, Ordering::Relaxed);
            if startup {
                let record = self
                    .store
                    .container_record(&env.record_key())
                    .ok()
                    .flatten();
                if let Some(r) = &record {
                    self.restore_pooled_secret(&slot, r);
                }
                let last = record
                    .as_ref()
                    .and_then(|r| r.last_activity)
                    .unwrap_or_else(unix_now);
                // Never back: a replica that becomes leader has served
                // requests itself, later than what is on record.
                slot.last_activity.fetch_max(last, Ordering::Relaxed);
                slot.persisted_activity.fetch_max(last, Ordering::Relaxed);
            } else if !matches!(*slot.phase.borrow(), Phase::Unknown) {
                // Known (starting, stopped by us, paused by us): nothing to re-read.
                // What was ready became unknown when the stream broke.
                continue;
            }
            let seen = match c.state {
                RunState::Running => {
                    if let Some(info) = self.runtime.inspect(&env_of(&env)).await? {
                        let started = info
                            .started_at
                            .as_deref()
                            .and_then(parse_rfc3339)
                            .unwrap_or(0);
                        slot.started.store(started, Ordering::Relaxed);
                    }
                    // Ready only if it answers now; otherwise the next request
                    // goes through the normal (probing) path.
                    if self.answers(&env, Duration::from_secs(1)).await {
                        done.adopted_running += 1;
                        Observed::Ready
                    } else {
                        Observed::Unsure
                    }
                }
                RunState::Paused => {
                    done.adopted_paused += 1;
                    Observed::Paused
                }
                RunState::Stopped => {
                    done.adopted_stopped += 1;
                    Observed::Stopped
                }
            };
            // Only over Unknown: a request may already be starting it.
            slot.phase.apply(Event::Observed(seen));
        }
        for env in directory.users().iter().flat_map(Env::all_of) {
            if seen.contains(env.slug()) {
                continue;
            }
            if !startup {
                // Believed ready or paused, yet Docker has no container: the next
                // request checks again (a spawn that finished after the listing
                // costs one needless look).
                self.slot(env.slug()).phase.apply(Event::SeenGone);
                continue;
            }
            if let Ok(Some(mut record)) = self.store.container_record(&env.record_key())
                && record.container_id.is_some()
            {
                record.container_id = None;
                record.stopped_at.get_or_insert_with(unix_now);
                if self.store.put_container_record(&record).await.is_ok() {
                    done.records_corrected += 1;
                }
            }
            self.slot(env.slug())
                .phase
                .apply(Event::Observed(Observed::Stopped));
        }
        self.remove_leftovers(&mut done, &mut failed).await?;
        tracing::info!(?done, "reconciled containers with Docker");
        match failed {
            Some(e) => Err(e),
            None => {
                if startup {
                    self.reconciled.store(true, Ordering::Relaxed);
                }
                Ok(done)
            }
        }
    }

    /// Removes the volumes of users the store says were deleted (their tombstone),
    /// and per-user networks that no user owns. A volume whose user the store has
    /// never heard of is kept and reported: it may hold the data of a store that
    /// was lost or restored from an older backup, and only an operator may judge.
    async fn remove_leftovers(
        &self,
        done: &mut Reconciled,
        failed: &mut Option<RuntimeError>,
    ) -> Result<(), RuntimeError> {
        // Docker's list first, then the users: a user created in between has its
        // network in the users' list, never only in Docker's.
        let resources = self.runtime.resources().await?;
        let directory = self.store.snapshot();
        let users = directory.users();
        let live_ids: HashSet<&str> = users.iter().map(|u| u.id.as_str()).collect();
        for r in resources {
            match r.kind {
                ResourceKind::UserNetwork => {
                    if let Some(EnvId::User(slug)) = &r.env_id
                        && directory.by_slug(slug).is_some()
                    {
                        continue;
                    }
                    tracing::info!(network = %r.name, "removing the network of a user that does not exist");
                    match self.runtime.remove_resource(&r).await {
                        Ok(()) => done.networks_removed += 1,
                        Err(e) => note_failure(failed, &r.name, e),
                    }
                }
                ResourceKind::Volume => {
                    let Some(owner) = &r.owner_id else {
                        continue;
                    };
                    let why = if live_ids.contains(owner.as_str()) {
                        // A live user's volume goes only with an environment of
                        // theirs that was deleted (and whose removal was cut short).
                        let deleted_env = match &r.env_id {
                            Some(EnvId::User(slug)) if directory.by_slug(slug).is_none() => {
                                self.store.environment_was_deleted(slug).unwrap_or(false)
                            }
                            _ => false,
                        };
                        if !deleted_env {
                            continue;
                        }
                        "its environment was deleted"
                    } else {
                        // An unreadable tombstone tree must not delete data: keep.
                        match self.store.was_deleted(owner) {
                            Ok(Some(false)) => {}
                            // Kept on purpose when the user was deleted.
                            Ok(Some(true)) => continue,
                            Ok(None) | Err(_) => {
                                tracing::warn!(volume = %r.name, "volume of a user this store does not know (kept; remove it by hand if it is not needed)");
                                continue;
                            }
                        }
                        "its user was deleted"
                    };
                    tracing::info!(volume = %r.name, reason = why, "removing a leftover volume");
                    if let Err(e) = self.runtime.remove_resource(&r).await {
                        note_failure(failed, &r.name, e);
                        continue;
                    }
                    self.store
                        .audit("system", "volume.remove", &r.name, Some(why.into()));
                    done.volumes_removed += 1;
                }
            }
        }
        Ok(())
    }

    /// Reconciles at start-up, retrying while Docker is unreachable (or a removal
    /// failed).
    pub(super) async fn reconcile_until_done(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(500);
        loop {
            match self.reconcile().await {
                Ok(_) => return,
                Err(e) => tracing::warn!(error = %e, "reconciliation failed; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.tasks.cancelled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }
}

fn note_failure(failed: &mut Option<RuntimeError>, what: &str, e: RuntimeError) {
    tracing::warn!(resource = %what, error = %e, "cannot remove a leftover; retrying later");
    failed.get_or_insert(e);
}
