//! The warm pool: `pool.size` running spare containers of `docker.image`, each
//! handed whole to a user on their first request (renamed to the user's container
//! name, moved onto the user's network) and replaced in the background.
//!
//! For stateless images only: a pooled container has no user volume and learns who
//! it serves from the request headers, not its environment. Network mode only
//! (checked by the config): the user's service address is the container name, so a
//! rename is all it takes for Traefik to reach it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::Notify;

use super::{Lifecycle, Slot, SpawnError, env_of};
use crate::ids::random_bytes;
use crate::runtime::{EnvId, EnvironmentSpec, Isolation};
use crate::store::{ContainerRecord, Env};
use crate::time::unix_now;

const POOL_SECRET: &[u8] = b"spawngate pool container secret\0";

/// A ready, unclaimed pool container.
#[derive(Clone, Debug)]
struct Member {
    env: EnvId,
    /// The runtime's name for it: its secret is derived from it, and a claimed
    /// container's record keeps it (`pooled_from`).
    name: String,
    id: String,
}

#[derive(Default)]
pub(super) struct Pool {
    ready: std::sync::Mutex<VecDeque<Member>>,
    refill: Notify,
}

impl Pool {
    fn take(&self) -> Option<Member> {
        self.ready.lock().ok()?.pop_front()
    }

    fn len(&self) -> usize {
        self.ready.lock().map(|r| r.len()).unwrap_or(0)
    }
}

impl Lifecycle {
    fn pool_spec(&self, member: &EnvId) -> EnvironmentSpec {
        let d = &self.config.docker;
        let mut env: Vec<(String, String)> = d.env.clone();
        env.push(("SPAWNGATE_POOLED".into(), "true".into()));
        if d.inject_secret {
            env.push((
                "SPAWNGATE_SECRET".into(),
                self.derive_secret(POOL_SECRET, &self.runtime.name(member)),
            ));
        }
        EnvironmentSpec {
            env_id: member.clone(),
            owner: None,
            image: d.image.clone(),
            env,
            port: d.port,
            host_port: None,
            data_mount: None,
            memory_bytes: d.memory_bytes,
            cpus: d.nano_cpus as f64 / 1e9,
            pids_limit: d.pids_limit,
            read_only_rootfs: d.read_only_rootfs,
            init: d.init,
            // Spares wait on the shared network; a claim moves them.
            isolation: Isolation::Shared,
            // Named with a new random token.
            fresh: true,
        }
    }

    /// Hands a warm container to `user`. `None`: the pool is empty (or the claim
    /// failed), go on with a normal spawn. Called with the user's ops lock held.
    pub(super) async fn claim_from_pool(
        &self,
        env: &Env,
        slot: &Slot,
        spec: &EnvironmentSpec,
        record: &mut ContainerRecord,
    ) -> Option<Result<(), SpawnError>> {
        // Only when the user has no container at all (a stopped one is resumed).
        if !matches!(self.runtime.inspect(&env_of(env)).await, Ok(None)) {
            tracing::debug!(user = %env.owner().name, "not using the pool: the user has a container");
            return None;
        }
        let Some(member) = self.pool.take() else {
            tracing::info!(user = %env.owner().name, "warm pool empty: spawning normally");
            return None;
        };
        self.pool.refill.notify_one();
        slot.progress.step(
            super::Step::Starting,
            30,
            "Taking a prepared container from the warm pool",
        );
        if let Err(e) = self.runtime.adopt_pooled(&member.env, spec).await {
            tracing::warn!(pooled = %member.name, error = %e, "claiming a pool container failed; spawning normally");
            // Under either name: the rename may have happened before the failure.
            // (The user had no container, so the user's name can only be the spare.)
            let _ = self.runtime.remove(&member.env, false).await;
            let _ = self.runtime.remove(&env_of(env), false).await;
            return None;
        }
        slot.set_pooled_secret(
            self.config
                .docker
                .inject_secret
                .then(|| self.derive_secret(POOL_SECRET, &member.name)),
        );
        slot.present.store(true, Ordering::Relaxed);
        slot.started.store(unix_now(), Ordering::Relaxed);
        slot.net_bytes.store(u64::MAX, Ordering::Relaxed);
        record.container_id = Some(member.id);
        record.pooled_from = Some(member.name.clone());
        record.created_at = Some(unix_now());
        record.started_at = Some(unix_now());
        record.last_error = None;
        if let Err(e) = self.store.put_container_record(record).await {
            return Some(Err(e.into()));
        }
        tracing::info!(user = %env.owner().name, slug = %env.slug(), container = %self.container_name(env), container_id = record.container_id.as_deref().unwrap_or("-"), pooled = %member.name, "container taken from the warm pool");
        // The rename is visible to Docker's DNS at once; make sure it answers as the user's.
        Some(self.wait_until_answering(env, Some(&slot.progress)).await)
    }

    /// The pool secret of a claimed container, from its record (after a restart).
    pub(super) fn restore_pooled_secret(&self, slot: &Slot, record: &ContainerRecord) {
        if let Some(name) = &record.pooled_from {
            slot.set_pooled_secret(
                self.config
                    .docker
                    .inject_secret
                    .then(|| self.derive_secret(POOL_SECRET, name)),
            );
        }
    }

    /// Keeps `pool.size` ready containers until shutdown begins.
    pub(super) async fn run_pool(self: Arc<Self>) {
        let size = self.config.pool_size;
        if size == 0 {
            return;
        }
        if !self.runtime.capabilities().warm_pool {
            tracing::warn!(
                "pool.size is set, but this runtime has no warm pool: spawning normally"
            );
            return;
        }
        let mut backoff = Duration::from_secs(1);
        loop {
            while self.pool.len() < size {
                // No new spares once shutdown has begun.
                if self.tasks.is_cancelled() {
                    return;
                }
                let member = EnvId::Pool(hex::encode(random_bytes::<4>()));
                match self.start_member(&member).await {
                    Ok(member) => {
                        backoff = Duration::from_secs(1);
                        if let Ok(mut ready) = self.pool.ready.lock() {
                            ready.push_back(member);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e.detail(), "cannot fill the warm pool; retrying");
                        let _ = self.runtime.remove(&member, false).await;
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = self.tasks.cancelled() => return,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(60));
                    }
                }
            }
            tokio::select! {
                _ = self.pool.refill.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                _ = self.tasks.cancelled() => return,
            }
        }
    }

    async fn start_member(&self, member: &EnvId) -> Result<Member, SpawnError> {
        let _permit = self
            .spawn_permits
            .acquire()
            .await
            .map_err(|_| SpawnError::Failed("shutting down".into()))?;
        let spec = self.pool_spec(member);
        let running = self.runtime.ensure_running(&spec).await?;
        // Spares are made for the default profile, and probed as it says.
        let profile = self.config.profiles.resolve(None);
        let probe = super::Probe::of(profile, &self.runtime.address(member, None, profile.port));
        self.wait_until_answering_at(&probe, member, None).await?;
        Ok(Member {
            env: member.clone(),
            name: self.runtime.name(member),
            id: running.id,
        })
    }
}
