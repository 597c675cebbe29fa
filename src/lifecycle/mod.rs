//! Lazy spawn: the state of each user's container as spawngate sees it, with a
//! single flight per user, a global cap on concurrent spawns, and readiness probes.
//!
//! The forwardAuth hot path only reads a [`Phase`] from memory. Docker is called by
//! spawn tasks, admin actions, the culler and the event watcher, never per request.
//!
//! Every Docker operation on one user's container (start, pause, stop, remove) runs
//! under that user's `ops` lock, so a request that arrives while the culler pauses
//! or stops the container simply waits and then resumes it.

mod culler;
pub use culler::CullPlan;
mod phase;
mod pool;
mod progress;
mod reconcile;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{Mutex as AsyncMutex, Semaphore};

use crate::config::Config;
use crate::config::{DEFAULT_PROFILE, Profile};
use crate::events::{Events, Subject};
use crate::ids::Slug;
use crate::metrics::{Census, EnvState, Metrics, SpawnFailure, SpawnKind};
use crate::runtime::{
    ContainerGone, ContainerInfo, ContainerState, EnvId, EnvironmentSpec, Isolation, Owner,
    RunState, Runtime, RuntimeError,
};
use crate::store::{ContainerRecord, Desired, Env, Overrides, Store, StoreError};
use crate::tasks::Tasks;
use crate::time::{rfc3339, unix_now};

pub use phase::{Event, Observed, Phase, PhaseCell};
use progress::ProgressCell;
pub use progress::{Progress, Step};

/// After a failed spawn, requests within this window get the failure instead of
/// hammering Docker with retries.
const RETRY_BACKOFF: Duration = Duration::from_secs(2);

/// After the app itself failed (exited, or never answered), the container is not
/// started again for this long, doubling with each consecutive failure up to
/// [`APP_BACKOFF_MAX`]: a broken image must not be restarted in a tight loop by
/// every request (or every reload of the waiting page).
const APP_BACKOFF_FIRST: Duration = Duration::from_secs(5);
const APP_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Output lines kept with an app failure, and the longest line kept.
const FAILURE_LOG_LINES: usize = 20;
const FAILURE_LOG_LINE_CHARS: usize = 400;

/// Why a container could not be made ready. Messages are safe to show users.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("Docker, which runs the environments, is unreachable right now; try again in a moment")]
    DockerDown(String),
    #[error("the environment's image is missing on the server")]
    ImageMissing(String),
    #[error("the environment failed to start")]
    Failed(String),
    #[error("spawngate's state store is unavailable")]
    Store(String),
    #[error("the server is at capacity; please try again in a few minutes")]
    Capacity(String),
    /// The container started but its app failed: the reason is the app's, so it is
    /// shown as is (with the exit code and last output lines).
    #[error("{}", .0.reason)]
    App(AppFailure),
}

/// Why a container's app never became ready.
#[derive(Clone, Debug)]
pub struct AppFailure {
    /// E.g. "the app exited with code 3 before answering on port 8080".
    pub reason: String,
    pub exit_code: Option<i64>,
    /// The container's last output lines (stdout and stderr), oldest first.
    pub logs: Vec<String>,
}

/// How long after a failure the next start may be tried: growing for app failures
/// (`consecutive` counts them, 1 for the first), short for the others, which are
/// about Docker or capacity and clear by themselves.
fn backoff(error: &SpawnError, consecutive: u32) -> Duration {
    match error {
        SpawnError::App(_) => {
            let doublings = consecutive.saturating_sub(1).min(16);
            (APP_BACKOFF_FIRST * 2u32.pow(doublings)).min(APP_BACKOFF_MAX)
        }
        _ => RETRY_BACKOFF,
    }
}

impl SpawnError {
    /// The operator-facing detail for logs and the admin API.
    pub fn detail(&self) -> &str {
        match self {
            SpawnError::DockerDown(d)
            | SpawnError::ImageMissing(d)
            | SpawnError::Failed(d)
            | SpawnError::Store(d)
            | SpawnError::Capacity(d) => d,
            SpawnError::App(a) => &a.reason,
        }
    }

    /// The reason the metrics count it under.
    pub fn reason(&self) -> SpawnFailure {
        match self {
            SpawnError::DockerDown(_) => SpawnFailure::DockerUnreachable,
            SpawnError::ImageMissing(_) => SpawnFailure::ImageMissing,
            SpawnError::Capacity(_) => SpawnFailure::Capacity,
            SpawnError::App(a) if a.exit_code.is_some() => SpawnFailure::AppExited,
            SpawnError::App(_) => SpawnFailure::AppNotListening,
            SpawnError::Failed(_) | SpawnError::Store(_) => SpawnFailure::Other,
        }
    }
}

impl From<RuntimeError> for SpawnError {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::Unavailable(_) => SpawnError::DockerDown(e.to_string()),
            RuntimeError::ImageMissing(_) => SpawnError::ImageMissing(e.to_string()),
            RuntimeError::Failed(_) => SpawnError::Failed(e.to_string()),
        }
    }
}

impl From<StoreError> for SpawnError {
    fn from(e: StoreError) -> Self {
        SpawnError::Store(e.to_string())
    }
}

/// Where a spawn's time went: the runtime's create/start, then the probes until
/// the app answered; and what it started.
#[derive(Clone, Debug, Default)]
struct SpawnTimes {
    runtime_ms: u64,
    probe_ms: u64,
    /// A warm pool spare was handed over.
    pooled: bool,
    container_id: Option<String>,
}

/// The answer to "may this request pass now?".
#[derive(Debug)]
pub enum Readiness {
    Ready,
    /// Still starting after the hold.
    Pending,
    Failed(SpawnError),
}

struct Slot {
    phase: PhaseCell,
    /// How far the current (or last) start got; written only while starting.
    progress: ProgressCell,
    /// Serializes Docker operations on this user's container.
    ops: AsyncMutex<()>,
    /// Unix seconds of the last activity (forwardAuth pass or network traffic).
    /// Written in memory on the hot path; the culler persists it in batches.
    last_activity: AtomicI64,
    persisted_activity: AtomicI64,
    /// Network byte counter at the culler's last look; `u64::MAX` = not yet read.
    net_bytes: AtomicU64,
    /// Unix seconds the running container started (for `max_lifetime`); 0 = unknown.
    started: AtomicI64,
    /// Whether a container (in any state) exists for this user.
    present: AtomicBool,
    /// The secret forwardAuth sends with this user's requests, kept so the hot
    /// path derives nothing: a container taken from the warm pool carries the
    /// pool's secret, any other the user's own. `None` = the user's, not yet
    /// derived.
    forward_secret: std::sync::RwLock<Option<String>>,
    /// Consecutive starts whose app failed; sets the back-off. Reset by a
    /// success and by an admin's start or restart.
    app_failures: AtomicU32,
}

impl Slot {
    fn new(phase: PhaseCell) -> Slot {
        Slot {
            phase,
            progress: ProgressCell::default(),
            ops: AsyncMutex::new(()),
            last_activity: AtomicI64::new(0),
            persisted_activity: AtomicI64::new(0),
            net_bytes: AtomicU64::new(u64::MAX),
            started: AtomicI64::new(0),
            present: AtomicBool::new(false),
            forward_secret: std::sync::RwLock::new(None),
            app_failures: AtomicU32::new(0),
        }
    }

    /// Time left before a failed start may be tried again; `None` unless failed.
    fn retry_in(&self) -> Option<Duration> {
        match &*self.phase.borrow() {
            Phase::Failed { error, at } => Some(
                backoff(error, self.app_failures.load(Ordering::Relaxed))
                    .saturating_sub(at.elapsed()),
            ),
            _ => None,
        }
    }

    /// `Some`: the container came from the pool with this secret; `None`: it is
    /// the user's own (the user's secret is derived again on the next request).
    fn set_pooled_secret(&self, secret: Option<String>) {
        if let Ok(mut s) = self.forward_secret.write() {
            *s = secret;
        }
    }

    fn touch(&self) {
        // Written once a second at most: every worker thread reads this line,
        // and a store on every request would make them fight over it.
        let now = unix_now();
        if self.last_activity.load(Ordering::Relaxed) != now {
            self.last_activity.store(now, Ordering::Relaxed);
        }
    }

    /// Whether this slot counts against `limits.max_running`.
    fn occupies_capacity(&self) -> bool {
        match *self.phase.borrow() {
            Phase::Starting | Phase::Ready | Phase::Paused => true,
            // A container that exists but whose state is unsure (not answering at
            // start-up, events missed) may be running: count it.
            Phase::Unknown => self.present.load(Ordering::Relaxed),
            _ => false,
        }
    }
}

/// Container status for the admin API.
#[derive(Debug, serde::Serialize)]
pub struct ContainerStatus {
    pub user: String,
    pub environment: String,
    pub state: ContainerState,
    pub name: String,
    pub container_id: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub last_activity: Option<String>,
    pub last_error: Option<String>,
    /// The failure requests are answered with, while spawngate backs off.
    pub failure: Option<FailureView>,
}

/// A failed start as the admin API shows it.
#[derive(Debug, serde::Serialize)]
pub struct FailureView {
    pub reason: String,
    pub exit_code: Option<i64>,
    /// The container's last output lines.
    pub logs: Vec<String>,
    pub failed_at: String,
    /// Consecutive failed starts of the app (the back-off grows with them).
    pub consecutive_failures: u32,
    /// Seconds until a request may start it again; an admin start does at once.
    pub retry_in_secs: u64,
}

pub struct Lifecycle {
    runtime: Arc<dyn Runtime>,
    store: Store,
    config: Arc<Config>,
    slots: RwLock<HashMap<Slug, Arc<Slot>>>,
    spawn_permits: Semaphore,
    /// Held while checking capacity and claiming a place, so two users cannot both
    /// take the last one.
    capacity: std::sync::Mutex<()>,
    probe: Client<HttpConnector, Empty<Bytes>>,
    /// Key for per-container secrets ([`Lifecycle::container_secret`]).
    container_key: Vec<u8>,
    pool: pool::Pool,
    /// Every background task (spawns, stops, the culler, the event watcher):
    /// shutdown drains them.
    tasks: Tasks,
    /// The start-up reconciliation has finished: every existing container is known.
    reconciled: AtomicBool,
    /// The operator event stream; every change of phase is published into it.
    events: Events,
    metrics: Arc<Metrics>,
}

/// The environment of `user`.
fn env_of(env: &Env) -> EnvId {
    EnvId::User(env.slug().clone())
}

impl Lifecycle {
    pub fn new(
        runtime: Arc<dyn Runtime>,
        store: Store,
        config: Arc<Config>,
        container_key: Vec<u8>,
        tasks: Tasks,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        // A local bridge or loopback answers a connect at once (or refuses it):
        // a lost SYN to an interface still coming up is retried by the next probe
        // instead of stalling it.
        connector.set_connect_timeout(Some(runtime.capabilities().probe_connect_timeout));
        connector.set_nodelay(true);
        let lifecycle = Arc::new(Lifecycle {
            metrics,
            tasks,
            events: Events::new(),
            reconciled: AtomicBool::new(false),
            runtime,
            store,
            spawn_permits: Semaphore::new(config.limits.max_concurrent_spawns),
            config,
            slots: RwLock::new(HashMap::new()),
            capacity: std::sync::Mutex::new(()),
            container_key,
            pool: pool::Pool::default(),
            probe: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build(connector),
        });
        // Weak: the metrics must not keep the lifecycle alive.
        let weak = Arc::downgrade(&lifecycle);
        lifecycle
            .metrics
            .observe_environments(move || weak.upgrade().map(|lc| lc.census()));
        lifecycle
    }

    /// The environments' states, counted for the metrics at scrape time.
    pub fn census(&self) -> Census {
        let now = unix_now();
        let window = crate::metrics::ACTIVE_WINDOW.as_secs() as i64;
        let mut census = Census::default();
        for (_, slot) in self.all_slots() {
            let state = match *slot.phase.borrow() {
                Phase::Unknown => EnvState::Unknown,
                Phase::Starting => EnvState::Starting,
                Phase::Ready => EnvState::Ready,
                Phase::Paused => EnvState::Paused,
                Phase::Stopped => EnvState::Stopped,
                Phase::Failed { .. } => EnvState::Failed,
            };
            census.states[state as usize] += 1;
            census.running += u64::from(slot.occupies_capacity());
            let last = slot.last_activity.load(Ordering::Relaxed);
            census.active += u64::from(last > 0 && now - last < window);
        }
        census.users = self.store.snapshot().len() as u64;
        census.capacity = self.config.limits.max_running.map(|m| m as u64);
        census
    }

    /// The runtime's name for the user's container (for log lines).
    fn container_name(&self, env: &Env) -> String {
        self.runtime.name(&env_of(env))
    }

    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.runtime
    }

    /// The operator event stream (environments' and, published by the accounts
    /// service, users' events).
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// The background tasks this lifecycle runs its work on.
    pub fn tasks(&self) -> &Tasks {
        &self.tasks
    }

    /// Starts the long-running work on [`Self::tasks`]. Each returns once
    /// shutdown begins.
    /// - Every replica follows the runtime's events (its own readiness flags
    ///   depend on them) and, on a shared store, records its users' activity
    ///   for the leader's culler.
    /// - The leader alone (see [`Store::leadership`]) reconciles, then fills the
    ///   warm pool and culls, for as long as it leads.
    pub fn start_background(self: &Arc<Self>) {
        self.tasks.spawn(self.clone().watch_events());
        if self.store.is_shared() {
            self.tasks.spawn(self.clone().record_activity());
        }
        self.tasks.spawn(self.clone().lead());
    }

    /// The once-only work, whenever this replica leads.
    async fn lead(self: Arc<Self>) {
        let mut leadership = self.store.leadership();
        loop {
            tokio::select! {
                r = leadership.wait_for(|leads| *leads) => if r.is_err() { return },
                () = self.tasks.cancelled() => return,
            }
            let duties = async {
                // The pool fills only after reconciliation, which removes leftover spares.
                self.clone().reconcile_until_done().await;
                tokio::join!(self.clone().run_pool(), self.clone().run_culler());
            };
            tokio::select! {
                () = duties => return,
                r = leadership.wait_for(|leads| !*leads) => if r.is_err() { return },
            }
            tracing::warn!("leadership lost: culling, pool and reconciliation stop here");
        }
    }

    /// Where the user's app is reached (Traefik's service, the readiness probe).
    pub fn address(&self, env: &Env) -> String {
        self.runtime
            .address(&env_of(env), env.host_port(), self.profile(env).port)
    }

    fn slot(&self, slug: &Slug) -> Arc<Slot> {
        if let Ok(slots) = self.slots.read()
            && let Some(slot) = slots.get(slug)
        {
            return slot.clone();
        }
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        slots
            .entry(slug.clone())
            .or_insert_with(|| Arc::new(Slot::new(self.observed_cell(slug))))
            .clone()
    }

    /// The profile `env` runs.
    pub fn profile(&self, env: &Env) -> &Arc<Profile> {
        self.config.profiles.resolve(env.profile())
    }

    /// A phase cell whose changes are published to the operator event stream.
    fn observed_cell(&self, slug: &Slug) -> PhaseCell {
        let (events, store, slug) = (self.events.clone(), self.store.clone(), slug.clone());
        PhaseCell::observed(
            Phase::Unknown,
            Box::new(move |phase, event| {
                let Some((kind, reason)) = op_event(phase, event) else {
                    return;
                };
                let directory = store.snapshot();
                let Some(user) = directory.by_slug(&slug) else {
                    return;
                };
                events.publish(
                    kind,
                    Subject {
                        user: &user.name,
                        slug: Some(slug.as_str()),
                    },
                    None,
                    reason,
                );
            }),
        )
    }

    fn all_slots(&self) -> Vec<(Slug, Arc<Slot>)> {
        self.slots
            .read()
            .map(|s| s.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    pub fn phase(&self, slug: &Slug) -> Phase {
        self.slot(slug).phase.get()
    }

    /// The forwardAuth question: make the user's container ready, waiting at most
    /// `hold`. Concurrent callers for one user share a single spawn.
    pub async fn ensure_ready(self: &Arc<Self>, env: &Env, hold: Duration) -> Readiness {
        let slot = self.slot(env.slug());
        if matches!(*slot.phase.borrow(), Phase::Ready) {
            slot.touch();
            return Readiness::Ready;
        }
        let mut rx = slot.phase.subscribe();
        self.kick(env, &slot);
        let settled =
            tokio::time::timeout(hold, rx.wait_for(|p| !matches!(p, Phase::Starting))).await;
        match settled {
            Ok(Ok(phase)) => match &*phase {
                Phase::Ready => {
                    slot.touch();
                    Readiness::Ready
                }
                Phase::Failed { error, .. } => Readiness::Failed(error.clone()),
                // Stopped by an admin while we waited.
                _ => Readiness::Pending,
            },
            _ => Readiness::Pending,
        }
    }

    /// Counts as activity for idle culling, as a forwardAuth pass does (an open SSH
    /// session calls it while it lasts).
    pub fn touch(&self, slug: &Slug) {
        self.slot(slug).touch();
    }

    /// Completes once the user's environment stopped, paused, failed or went
    /// away (culled, stopped by an admin, removed): what runs in it has ended.
    /// A moment of doubt (the event stream reconnecting) does not count.
    pub async fn until_stopped(&self, slug: &Slug) {
        let mut rx = self.slot(slug).phase.subscribe();
        let _ = rx
            .wait_for(|p| matches!(p, Phase::Stopped | Phase::Paused | Phase::Failed { .. }))
            .await;
    }

    /// Whether the environment is still ready after `wait`: Docker usually reports
    /// a container killed a moment ago within milliseconds (see
    /// [`Self::confirmed_ready`] for when it does not).
    async fn stays_ready(&self, slug: &Slug, wait: Duration) -> bool {
        let mut rx = self.slot(slug).phase.subscribe();
        if !matches!(*rx.borrow_and_update(), Phase::Ready) {
            return false;
        }
        tokio::time::timeout(wait, rx.wait_for(|p| !matches!(p, Phase::Ready)))
            .await
            .is_err()
    }

    /// [`Self::stays_ready`], then asks the runtime too: its event about a
    /// container killed a moment ago can be late on a busy host, and an answer
    /// taken for the app's own error would hide that the environment is gone.
    /// A container found not running is marked gone, so the next request starts it.
    pub async fn confirmed_ready(&self, env: &Env, wait: Duration) -> bool {
        if !self.stays_ready(env.slug(), wait).await {
            return false;
        }
        match self.runtime.inspect(&env_of(env)).await {
            Ok(Some(info)) if info.running() => true,
            Ok(_) => {
                self.slot(env.slug()).phase.apply(Event::SeenGone);
                false
            }
            // Docker unreachable: nothing better to go by than the phase.
            Err(_) => true,
        }
    }

    /// Starts (or unpauses) the user's container in the background without waiting:
    /// used at login so the first page is usually warm.
    pub fn prewarm(self: &Arc<Self>, env: &Env) {
        let slot = self.slot(env.slug());
        self.kick(env, &slot);
    }

    /// Starts a spawn task unless one is running (or one failed a moment ago), after
    /// claiming a place within `limits.max_running`.
    fn kick(self: &Arc<Self>, env: &Env, slot: &Arc<Slot>) {
        let kind = match *slot.phase.borrow() {
            Phase::Paused => SpawnKind::Unpause,
            _ if slot.present.load(Ordering::Relaxed) => SpawnKind::Resume,
            _ => SpawnKind::Create,
        };
        let started = {
            let _capacity = self.capacity.lock().unwrap_or_else(|p| p.into_inner());
            let kick = Event::Kick {
                app_failures: slot.app_failures.load(Ordering::Relaxed),
            };
            // Nothing to do (already starting or ready, or failed a moment ago):
            // decide that before possibly stopping someone else to make room.
            let would_start = phase::next(&slot.phase.borrow(), &kick).is_some();
            if !would_start {
                return;
            }
            let needs_place = !slot.occupies_capacity();
            if needs_place && let Some(refusal) = self.claim_place(env.slug()) {
                slot.phase.apply(Event::Refused(refusal));
                self.metrics.capacity_refused();
                tracing::warn!(user = %env.owner().name, slug = %env.slug(), container = %self.container_name(env), "spawn refused: at capacity");
                return;
            }
            slot.progress.begin();
            slot.phase.apply(kick)
        };
        if started {
            let this = self.clone();
            let env = env.clone();
            let slot = slot.clone();
            self.tasks.spawn(async move {
                let began = Instant::now();
                let result = this.spawn(&env, &slot).await;
                match result {
                    Ok(times) => {
                        slot.touch();
                        slot.app_failures.store(0, Ordering::Relaxed);
                        // Ready only if nobody (an admin stop, a delete) changed the
                        // plan while we were starting.
                        if slot.phase.apply(Event::Answered) {
                            let kind = if times.pooled { SpawnKind::Pool } else { kind };
                            this.metrics.spawned(kind, began.elapsed());
                            tracing::info!(user = %env.owner().name, slug = %env.slug(), container = %this.container_name(&env), container_id = times.container_id.as_deref().unwrap_or("-"), kind = kind.as_str(), ms = began.elapsed().as_millis() as u64, runtime_ms = times.runtime_ms, probe_ms = times.probe_ms, "container ready");
                        }
                    }
                    Err(error) => {
                        if this.tasks.is_cancelled() {
                            // Cut short by shutdown: not the environment's fault.
                            tracing::info!(user = %env.owner().name, slug = %env.slug(), container = %this.container_name(&env), ms = began.elapsed().as_millis() as u64, error = %error.detail(), "spawn cut short by shutdown");
                            slot.phase.apply(Event::Lost);
                            return;
                        }
                        this.metrics.spawn_failed(error.reason());
                        tracing::error!(user = %env.owner().name, slug = %env.slug(), container = %this.container_name(&env), kind = kind.as_str(), reason = error.reason().as_str(), ms = began.elapsed().as_millis() as u64, error = %error.detail(), "spawn failed");
                        this.note_error(&env.record_key(), error.detail()).await;
                        if matches!(error, SpawnError::App(_)) {
                            slot.app_failures.fetch_add(1, Ordering::Relaxed);
                        }
                        slot.phase.apply(Event::SpawnFailed(error));
                    }
                }
            });
        }
    }

    /// With the capacity lock held: `None` if a place is free (or was freed by
    /// stopping the least recently used idle container), else the refusal.
    fn claim_place(self: &Arc<Self>, for_env: &Slug) -> Option<SpawnError> {
        let max = self.config.limits.max_running?;
        let slots = self.all_slots();
        let occupied = slots.iter().filter(|(_, s)| s.occupies_capacity()).count();
        if occupied < max {
            return None;
        }
        if self.config.limits.cull_lru_when_full {
            let min_idle = self.config.limits.lru_min_idle.as_secs() as i64;
            let now = unix_now();
            let victim = slots
                .iter()
                .filter(|(id, s)| {
                    id != for_env
                        && matches!(*s.phase.borrow(), Phase::Ready | Phase::Paused)
                        && now - s.last_activity.load(Ordering::Relaxed) >= min_idle
                })
                .min_by_key(|(_, s)| s.last_activity.load(Ordering::Relaxed));
            if let Some((victim_id, victim)) = victim
                && let Some(env) = self.store.snapshot().environment(victim_id)
            {
                // Frees the place now; the stop itself runs in the background.
                victim.phase.apply(Event::Stop);
                let this = self.clone();
                let victim = victim.clone();
                self.tasks.spawn(async move {
                    this.store.audit(
                        "system",
                        "container.stop",
                        &env.audit_name(),
                        Some("least recently used, to make room".into()),
                    );
                    let began = Instant::now();
                    let container = this.container_name(&env);
                    let ms = || began.elapsed().as_millis() as u64;
                    match this.docker_stop(&env, &victim).await {
                        Ok(()) => {
                            this.metrics.culled(crate::metrics::CullTier::Stop, crate::metrics::CullReason::Capacity);
                            tracing::info!(user = %env.owner().name, slug = %env.slug(), container = %container, ms = ms(), "least recently used container stopped to make room");
                        }
                        Err(e) => tracing::warn!(user = %env.owner().name, slug = %env.slug(), container = %container, ms = ms(), error = %e.detail(), "LRU stop failed"),
                    }
                });
                return None;
            }
        }
        Some(SpawnError::Capacity(format!(
            "{occupied} of {max} containers running (limits.max_running)"
        )))
    }

    /// The secret forwardAuth hands to this user's container on every request
    /// (header `X-Spawngate-Secret`) and the container gets as `SPAWNGATE_SECRET`:
    /// an app that checks it refuses connections that bypass Traefik. Derived, so
    /// nothing is stored; stable across restarts.
    pub fn container_secret(&self, env: &Env) -> String {
        // Keyed like the container record: the default environment's secret is
        // the one it had before users had several.
        self.derive_secret(b"spawngate container secret\0", &env.record_key())
    }

    /// The secret to send with this user's requests: the pool container's when the
    /// user's container came from the pool, else the user's own.
    pub fn forward_secret(&self, env: &Env) -> String {
        let Ok(slots) = self.slots.read() else {
            return self.container_secret(env);
        };
        let Some(slot) = slots.get(env.slug()) else {
            return self.container_secret(env);
        };
        if let Ok(kept) = slot.forward_secret.read()
            && let Some(secret) = kept.as_ref()
        {
            return secret.clone();
        }
        let own = self.container_secret(env);
        // Only into an empty cell: a pool's secret set meanwhile wins.
        if let Ok(mut kept) = slot.forward_secret.write()
            && kept.is_none()
        {
            *kept = Some(own.clone());
        }
        own
    }

    fn derive_secret(&self, purpose: &[u8], subject: &str) -> String {
        crate::ids::derive_token(&self.container_key, purpose, subject)
    }

    fn spec(&self, env: &Env) -> EnvironmentSpec {
        let d = &self.config.docker;
        let profile = self.profile(env);
        let user = env.owner();
        // Admin overrides are exceptions to the default profile; another profile
        // is the admin's choice as it stands.
        let none = Overrides::default();
        let o = match profile.name == DEFAULT_PROFILE {
            true => &user.overrides,
            false => &none,
        };
        // Subdomain mode serves the app at its host's root.
        let base_path = match self.config.apps {
            Some(_) => String::new(),
            None => env.slug().base_path(),
        };
        let profile_env = profile.env_for(&base_path, env.slug().as_str(), &user.name);
        EnvironmentSpec {
            env_id: env_of(env),
            owner: Some(Owner {
                id: user.id.clone(),
                name: user.name.clone(),
            }),
            image: o.image.clone().unwrap_or_else(|| profile.image.clone()),
            env: d
                .env
                .iter()
                .cloned()
                .chain(profile_env)
                .chain(o.env.iter().map(|(k, v)| (k.clone(), v.clone())))
                .chain([
                    ("SPAWNGATE_USER".into(), user.name.clone()),
                    ("SPAWNGATE_SLUG".into(), env.slug().to_string()),
                    ("SPAWNGATE_BASE_PATH".into(), base_path),
                ])
                // Not for a default environment of the default profile: its spec
                // (and so its container) stays the one the previous release made.
                .chain(
                    (!env.is_default() || profile.name != DEFAULT_PROFILE)
                        .then(|| {
                            [
                                ("SPAWNGATE_ENVIRONMENT".to_owned(), env.name().to_owned()),
                                ("SPAWNGATE_PROFILE".to_owned(), profile.name.clone()),
                            ]
                        })
                        .into_iter()
                        .flatten(),
                )
                .chain(
                    d.inject_secret
                        .then(|| ("SPAWNGATE_SECRET".to_owned(), self.container_secret(env))),
                )
                .collect(),
            port: profile.port,
            host_port: env.host_port(),
            data_mount: Some(profile.volume_path.clone()),
            memory_bytes: o.memory_bytes.unwrap_or(profile.memory_bytes),
            cpus: o.nano_cpus.unwrap_or(profile.nano_cpus) as f64 / 1e9,
            pids_limit: profile.pids_limit,
            read_only_rootfs: profile.read_only_rootfs,
            init: profile.init,
            isolation: if d.network_per_user {
                Isolation::OwnNetwork
            } else {
                Isolation::Shared
            },
            fresh: false,
        }
    }

    /// Whether `env`'s profile may start: one removed from the config does not
    /// silently become another, and one the user chose must still be theirs to
    /// use (an admin's assignment stands).
    fn may_start(&self, env: &Env) -> Result<(), SpawnError> {
        let Some(name) = env.profile() else {
            return Ok(());
        };
        let Some(profile) = self.config.profiles.get(name) else {
            return Err(SpawnError::Failed(format!(
                "the profile '{name}' of this environment is no longer configured"
            )));
        };
        let owner = env.owner();
        if !env.assigned_by_admin() && !profile.allows(&owner.name, &owner.groups) {
            return Err(SpawnError::Failed(format!(
                "you may no longer use the profile '{name}' (ask an administrator)"
            )));
        }
        Ok(())
    }

    /// Makes the user's container run and answer; returns how long the runtime's
    /// start and the readiness probes took (for the log).
    async fn spawn(&self, env: &Env, slot: &Slot) -> Result<SpawnTimes, SpawnError> {
        let _permit = self
            .spawn_permits
            .acquire()
            .await
            .map_err(|_| SpawnError::Failed("spawngate is shutting down".into()))?;
        let _ops = slot.ops.lock().await;
        // Stopped or removed by an admin while we waited for the lock: do not start.
        if !matches!(*slot.phase.borrow(), Phase::Starting) {
            return Ok(SpawnTimes::default());
        }
        // The stored user decides, not the caller's copy: nothing starts for a user
        // deleted or disabled meanwhile (an SSH connection or a request holding an
        // older copy), and the latest overrides apply.
        let current = self.store.snapshot().environment(env.slug());
        let Some(current) =
            current.filter(|e| e.owner().id == env.owner().id && !e.owner().disabled)
        else {
            return Err(SpawnError::Failed(
                "the user (or this environment) was deleted or disabled".into(),
            ));
        };
        let env: &Env = &current;
        self.may_start(env)?;
        // Across replicas: one start at a time; whoever waited finds the
        // container the other started and only probes it.
        let _turn = self
            .store
            .start_turn(env.slug(), self.profile(env).start_timeout)
            .await;
        let was_present = slot.present.load(Ordering::Relaxed);
        match was_present {
            true => slot
                .progress
                .step(Step::Starting, 20, "Starting the container"),
            false => slot
                .progress
                .step(Step::Creating, 15, "Creating the container"),
        }
        let mut spec = self.spec(env);
        // Once reconciliation has listed every container, one the slot has never
        // seen does not exist (unless made by hand: then creating it fails over).
        // (Not on a shared store: another replica may have made it since.)
        spec.fresh = !slot.present.load(Ordering::Relaxed)
            && self.reconciled.load(Ordering::Relaxed)
            && !self.store.is_shared();
        let id = env_of(env);
        // Intent first: a crash between here and Docker leaves a record saying what
        // we were doing.
        let mut record = self
            .store
            .container_record(&env.record_key())?
            .unwrap_or_else(|| ContainerRecord {
                user_id: env.owner().id.clone(),
                environment: (!env.is_default()).then(|| env.slug().to_string()),
                name: self.runtime.name(&id),
                desired: Desired::Running,
                container_id: None,
                created_at: None,
                started_at: None,
                stopped_at: None,
                last_error: None,
                last_activity: None,
                pooled_from: None,
            });
        record.desired = Desired::Running;
        self.store.write_container_record(&record)?;
        // Spares run the default profile.
        if self.config.pool_size > 0
            && self.profile(env).name == DEFAULT_PROFILE
            && self.runtime.capabilities().warm_pool
            && !slot.present.load(Ordering::Relaxed)
            && let Some(done) = self.claim_from_pool(env, slot, &spec, &mut record).await
        {
            return done.map(|()| SpawnTimes {
                pooled: true,
                container_id: record.container_id.clone(),
                ..SpawnTimes::default()
            });
        }
        // The intent is written before Docker is called; making it durable overlaps
        // with the call instead of delaying it. (The container name is the real
        // lock: a crash at any point still leaves at most one container.)
        let began = Instant::now();
        let (flushed, running) =
            tokio::join!(self.store.flush(), self.runtime.ensure_running(&spec));
        let running = running?;
        let runtime_done = Instant::now();
        slot.present.store(true, Ordering::Relaxed);
        if !was_present {
            self.publish(env, "container.created", None);
        }
        let answering = match flushed {
            Ok(()) => self.wait_until_answering(env, Some(&slot.progress)).await,
            Err(e) => Err(e.into()),
        };
        let times = SpawnTimes {
            runtime_ms: (runtime_done - began).as_millis() as u64,
            probe_ms: runtime_done.elapsed().as_millis() as u64,
            pooled: false,
            container_id: Some(running.id.clone()),
        };
        if let Err(e) = answering {
            // Cut short by shutdown: left running with its intent on record, so
            // the next start's reconcile adopts it (a rolling restart must not
            // stop the environments that are starting).
            if self.tasks.is_cancelled() {
                return Err(e);
            }
            // Never leave a started container running that nobody can reach or
            // count: stop it (best effort); the next request tries again.
            if let Err(stop) = self.runtime.stop(&id, self.profile(env).stop_timeout).await {
                tracing::warn!(user = %env.owner().name, slug = %env.slug(), container = %self.container_name(env), error = %stop, "cannot stop a container that failed to become ready");
            }
            return Err(e);
        }
        let started = running
            .running_since
            .as_deref()
            .and_then(parse_rfc3339)
            .unwrap_or_else(unix_now);
        slot.started.store(started, Ordering::Relaxed);
        slot.net_bytes.store(u64::MAX, Ordering::Relaxed);

        // Re-read: an admin may have changed the intent meanwhile.
        let mut record = self
            .store
            .container_record(&env.record_key())?
            .unwrap_or(record);
        if record.container_id.as_deref() != Some(&running.id) {
            record.created_at = Some(unix_now());
            // A pooled container was replaced by one of the user's own.
            record.pooled_from = None;
            slot.set_pooled_secret(None);
        }
        record.container_id = Some(running.id);
        record.started_at = Some(started);
        record.last_error = None;
        // Not flushed: losing this bookkeeping in a crash is corrected by reconcile.
        self.store.write_container_record(&record)?;
        Ok(times)
    }

    /// Probes the app's HTTP port until any HTTP answer arrives, the container
    /// exits, or `ready_timeout` passes (or shutdown begins).
    async fn wait_until_answering(
        &self,
        env: &Env,
        progress: Option<&ProgressCell>,
    ) -> Result<(), SpawnError> {
        self.wait_until_answering_at(&self.probe_of(env), &env_of(env), progress)
            .await
    }

    /// How `env`'s readiness is probed: its profile's path (under the base path
    /// when the prefix is not stripped), expected status and start timeout.
    fn probe_of(&self, env: &Env) -> Probe {
        let profile = self.profile(env);
        let prefix = match (profile.strip_prefix, &self.config.apps) {
            (false, None) => env.slug().base_path(),
            _ => String::new(),
        };
        Probe::of(profile, &format!("{}{prefix}", self.address(env)))
    }

    /// [`Self::wait_until_answering`] for the app `probe` asks in environment `env`.
    /// Every [`PROBE_FAST`] during [`PROBE_FAST_FOR`] (a refused probe costs a
    /// local connect, and the app's first answer is seen within a few ms), then
    /// backing off to [`PROBE_SLOW`] for slow starters.
    /// `progress`, when given, follows the wait (once a second).
    async fn wait_until_answering_at(
        &self,
        probe: &Probe,
        env: &EnvId,
        progress: Option<&ProgressCell>,
    ) -> Result<(), SpawnError> {
        let timeout = probe.timeout;
        let port = probe.port;
        let began = Instant::now();
        let waiting = format!("Waiting for the app to answer on port {port}");
        if let Some(p) = progress {
            p.step(
                Step::Waiting,
                progress::waiting_percent(Duration::ZERO),
                waiting.as_str(),
            );
        }
        let deadline = began + timeout;
        let mut delay = PROBE_FAST;
        // Soon at first: an app that exits at once is told apart from a slow one
        // without waiting; then once a second.
        let mut next_inspect = began + Duration::from_millis(250);
        loop {
            if self.tasks.is_cancelled() {
                return Err(SpawnError::Failed("spawngate is shutting down".into()));
            }
            if self.answers_at(probe, Duration::from_secs(2)).await {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                let reason = format!(
                    "the app did not answer on port {port} within the start timeout of {} s",
                    timeout.as_secs()
                );
                return Err(self.app_failure(env, reason, None).await);
            }
            if now >= next_inspect {
                next_inspect = now + Duration::from_secs(1);
                if let Some(p) = progress {
                    p.step(
                        Step::Waiting,
                        progress::waiting_percent(now - began),
                        waiting.as_str(),
                    );
                }
                match self.runtime.inspect(env).await? {
                    Some(info) if info.running() => {}
                    Some(ContainerInfo {
                        failure: Some(reason),
                        ..
                    }) => {
                        return Err(self.app_failure(env, reason, None).await);
                    }
                    Some(info) => {
                        let code = info.exit_code.unwrap_or(-1);
                        let reason = format!(
                            "the app exited with code {code} before answering on port {port}"
                        );
                        return Err(self.app_failure(env, reason, Some(code)).await);
                    }
                    None => {
                        return Err(SpawnError::Failed(format!(
                            "container '{}' was removed while starting",
                            self.runtime.name(env)
                        )));
                    }
                }
            }
            if now - began >= PROBE_FAST_FOR {
                delay = (delay * 3 / 2).min(PROBE_SLOW);
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.tasks.cancelled() => {}
            }
        }
    }

    /// An [`AppFailure`] with the container's last output. Read once here, so
    /// requests answered with the failure later never call Docker.
    async fn app_failure(&self, env: &EnvId, reason: String, exit_code: Option<i64>) -> SpawnError {
        let mut logs = self.failure_logs(env).await;
        if logs.is_empty() && exit_code.is_some() {
            // The log driver may still be copying the output of a process that
            // exited a moment ago.
            tokio::time::sleep(Duration::from_millis(200)).await;
            logs = self.failure_logs(env).await;
        }
        SpawnError::App(AppFailure {
            reason,
            exit_code,
            logs,
        })
    }

    async fn failure_logs(&self, env: &EnvId) -> Vec<String> {
        match self.runtime.logs(env, FAILURE_LOG_LINES).await {
            Ok(lines) => lines
                .into_iter()
                .map(
                    |line| match line.char_indices().nth(FAILURE_LOG_LINE_CHARS) {
                        Some((cut, _)) => format!("{}…", &line[..cut]),
                        None => line,
                    },
                )
                .collect(),
            Err(e) => {
                tracing::warn!(container = %self.runtime.name(env), error = %e, "cannot read the output of a container that failed to start");
                Vec::new()
            }
        }
    }

    /// Seconds a client should wait before asking again after the user's start
    /// failed: what is left of the back-off (at least 1).
    pub fn retry_in(&self, slug: &Slug) -> Duration {
        self.slot(slug)
            .retry_in()
            .unwrap_or_default()
            .max(Duration::from_secs(1))
    }

    /// One readiness probe: does the app answer as its profile expects within `timeout`?
    async fn answers(&self, env: &Env, timeout: Duration) -> bool {
        self.answers_at(&self.probe_of(env), timeout).await
    }

    /// One probe: the profile's expected status, or by default any HTTP answer
    /// (the app is up; what it answers at that path is its business).
    async fn answers_at(&self, probe: &Probe, timeout: Duration) -> bool {
        let Ok(url) = probe.url.parse::<hyper::Uri>() else {
            return false;
        };
        match tokio::time::timeout(timeout, self.probe.get(url)).await {
            Ok(Ok(answer)) => match probe.status {
                Some(want) => answer.status().as_u16() == want,
                None => true,
            },
            _ => false,
        }
    }

    async fn note_error(&self, key: &str, detail: &str) {
        if let Ok(Some(mut record)) = self.store.container_record(key) {
            record.last_error = Some(detail.to_owned());
            if let Err(e) = self.store.put_container_record(&record).await {
                tracing::warn!(error = %e, "cannot record spawn error");
            }
        }
    }

    /// Creates the user's container without starting it, in the background.
    pub fn precreate(self: &Arc<Self>, env: &Env) {
        let this = self.clone();
        let env = env.clone();
        self.tasks.spawn(async move {
            let slot = this.slot(env.slug());
            let _ops = slot.ops.lock().await;
            // Deleted meanwhile: creating it now would leave an orphan behind.
            if this.store.snapshot().environment(env.slug()).is_none() {
                return;
            }
            match this.runtime.ensure_created(&this.spec(&env)).await {
                Ok(_) => {
                    slot.present.store(true, Ordering::Relaxed);
                    // Its idle clock starts now, not in 1970.
                    slot.touch();
                    slot.phase.apply(Event::Created);
                }
                Err(e) => {
                    tracing::warn!(user = %env.owner().name, slug = %env.slug(), container = %this.container_name(&env), error = %e, "pre-creating the container failed")
                }
            }
        });
    }

    /// Starts the container and waits (up to the ready timeout) until it answers.
    /// An admin's start: it does not wait for the back-off of earlier failures,
    /// and starts counting them anew.
    pub async fn start(self: &Arc<Self>, env: &Env) -> Readiness {
        let slot = self.slot(env.slug());
        slot.app_failures.store(0, Ordering::Relaxed);
        slot.phase.apply(Event::ClearFailure);
        self.ensure_ready(env, self.profile(env).start_timeout)
            .await
    }

    /// Stops the user's container; the next request starts it again.
    pub async fn stop(&self, env: &Env) -> Result<(), SpawnError> {
        let slot = self.slot(env.slug());
        slot.phase.apply(Event::Stop);
        if let Some(mut r) = self.store.container_record(&env.record_key())? {
            r.desired = Desired::Stopped;
            self.store.put_container_record(&r).await?;
        }
        self.docker_stop(env, &slot).await
    }

    /// The Docker side of a stop, under the user's ops lock.
    async fn docker_stop(&self, env: &Env, slot: &Slot) -> Result<(), SpawnError> {
        let _ops = slot.ops.lock().await;
        // A request may have restarted it while we waited for the lock.
        if !matches!(*slot.phase.borrow(), Phase::Stopped) {
            return Ok(());
        }
        self.runtime
            .stop(&env_of(env), self.profile(env).stop_timeout)
            .await?;
        if let Some(mut r) = self.store.container_record(&env.record_key())? {
            r.stopped_at = Some(unix_now());
            self.store.put_container_record(&r).await?;
        }
        Ok(())
    }

    /// Stops (if needed) and starts the user's container again.
    pub async fn restart(self: &Arc<Self>, env: &Env) -> Readiness {
        if let Err(e) = self.stop(env).await {
            return Readiness::Failed(e);
        }
        self.start(env).await
    }

    /// Removes the user's container, and its volume unless `keep_volume`.
    pub async fn remove(&self, env: &Env, keep_volume: bool) -> Result<(), SpawnError> {
        let slot = self.slot(env.slug());
        slot.phase.apply(Event::Stop);
        {
            let _ops = slot.ops.lock().await;
            self.runtime.remove(&env_of(env), !keep_volume).await?;
            slot.present.store(false, Ordering::Relaxed);
            // A spawn that finished meanwhile may have written the record again.
            if !env.is_default() {
                self.store.remove_container_record(&env.record_key())?;
            }
        }
        self.publish(env, "container.removed", None);
        if let Ok(mut slots) = self.slots.write() {
            slots.remove(env.slug());
        }
        Ok(())
    }

    pub async fn status(&self, env: &Env) -> Result<ContainerStatus, SpawnError> {
        let id = env_of(env);
        let name = self.runtime.name(&id);
        let info = self.runtime.inspect(&id).await?;
        let slot = self.slot(env.slug());
        let phase = slot.phase.get();
        let record = self.store.container_record(&env.record_key())?;
        let state = match (&info, &phase) {
            (_, Phase::Starting) => ContainerState::Starting,
            (Some(i), _) => match i.state {
                RunState::Paused => ContainerState::Paused,
                RunState::Running => ContainerState::Running,
                RunState::Stopped => ContainerState::Stopped,
            },
            (None, _) => ContainerState::NotExists,
        };
        let last = slot.last_activity.load(Ordering::Relaxed);
        let failure = match &phase {
            Phase::Failed { error, at } => Some(FailureView {
                reason: error.detail().to_owned(),
                exit_code: match error {
                    SpawnError::App(a) => a.exit_code,
                    _ => None,
                },
                logs: match error {
                    SpawnError::App(a) => a.logs.clone(),
                    _ => Vec::new(),
                },
                failed_at: rfc3339(unix_now() - at.elapsed().as_secs() as i64),
                consecutive_failures: slot.app_failures.load(Ordering::Relaxed),
                retry_in_secs: slot.retry_in().unwrap_or_default().as_secs_f64().ceil() as u64,
            }),
            _ => None,
        };
        Ok(ContainerStatus {
            user: env.owner().name.clone(),
            environment: env.name().to_owned(),
            state,
            name,
            container_id: info.as_ref().map(|i| i.id.clone()),
            started_at: info.as_ref().and_then(|i| i.started_at.clone()),
            finished_at: info.as_ref().and_then(|i| i.finished_at.clone()),
            last_activity: (last > 0).then(|| rfc3339(last)),
            last_error: match phase {
                Phase::Failed { error, .. } => Some(error.detail().to_owned()),
                _ => record.and_then(|r| r.last_error),
            },
            failure,
        })
    }

    /// CPU and memory use of the user's container, when it runs.
    pub async fn stats(&self, env: &Env) -> Result<Option<crate::runtime::Usage>, SpawnError> {
        Ok(self.runtime.stats(&env_of(env)).await?)
    }

    /// The last `tail` lines of the user's container output.
    pub async fn logs(&self, env: &Env, tail: usize) -> Result<Vec<String>, SpawnError> {
        Ok(self.runtime.logs(&env_of(env), tail).await?)
    }

    /// A container of ours went away: the next request must check and restart it.
    pub fn container_gone(&self, gone: &ContainerGone) {
        let directory = self.store.snapshot();
        let Some(env) = directory.environment(&gone.slug) else {
            return;
        };
        let env = &env;
        let slot = self.slot(env.slug());
        // Paused (by us, or by hand): the next request unpauses it.
        let event = match gone.paused {
            true => Event::SeenPaused,
            false => Event::SeenGone,
        };
        if slot.phase.apply(event) {
            tracing::info!(user = %env.owner().name, slug = %gone.slug, container = %self.container_name(env), paused = gone.paused, "container stopped outside spawngate");
        }
    }

    /// After the event stream broke, events may have been missed: re-check every
    /// container on its next request.
    fn forget_ready(&self) {
        for (_, slot) in self.all_slots() {
            slot.phase.apply(Event::Doubt);
        }
    }

    /// Follows the runtime's event stream until shutdown begins,
    /// reconnecting with backoff when the stream breaks. Once a new stream has held
    /// for a few seconds after a break (Docker is back), the state is read again
    /// from Docker (a reconcile), which also finishes the removal of users deleted
    /// while Docker was away.
    async fn watch_events(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(500);
        let mut resync = false;
        loop {
            let this = self.clone();
            let on_gone = move |gone: ContainerGone| this.container_gone(&gone);
            let connected_at = Instant::now();
            let stream = self.runtime.watch_events(&on_gone);
            tokio::pin!(stream);
            let settled = tokio::time::sleep(STREAM_SETTLED);
            tokio::pin!(settled);
            loop {
                tokio::select! {
                    result = &mut stream => {
                        if let Err(e) = result {
                            tracing::warn!(error = %e, "Docker event stream lost; reconnecting");
                        }
                        break;
                    }
                    _ = &mut settled, if resync => {
                        resync = false;
                        match self.resync().await {
                            Ok(_) => tracing::info!("Docker is back: state re-read"),
                            Err(e) => {
                                tracing::warn!(error = %e, "re-reading state from Docker failed; retrying");
                                resync = true;
                                settled.as_mut().reset(tokio::time::Instant::now() + STREAM_SETTLED);
                            }
                        }
                    }
                    _ = self.tasks.cancelled() => return,
                }
            }
            resync = true;
            self.forget_ready();
            if connected_at.elapsed() > Duration::from_secs(30) {
                backoff = Duration::from_millis(500);
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.tasks.cancelled() => return,
            }
            // Short enough that events flow again soon after Docker is back; a
            // failed connection attempt costs next to nothing.
            backoff = (backoff * 2).min(EVENTS_BACKOFF_MAX);
        }
    }
}

impl Lifecycle {
    /// Publishes an event about `user`'s environment.
    fn publish(&self, env: &Env, kind: &'static str, reason: Option<String>) {
        self.events.publish(
            kind,
            Subject {
                user: &env.owner().name,
                slug: Some(env.slug().as_str()),
            },
            None,
            reason,
        );
    }

    /// Follows a start of `user`'s environment: its phase (the outcome) and its
    /// progress (how far it got). Reads memory only.
    pub fn follow(&self, env: &Env) -> Following {
        let slot = self.slot(env.slug());
        Following {
            phase: slot.phase.subscribe(),
            progress: slot.progress.subscribe(),
            app_failures: slot.app_failures.load(Ordering::Relaxed),
        }
    }

    /// The environment as its user's own pages and scripts see it, from memory.
    pub fn view(&self, env: &Env) -> EnvironmentView {
        let slot = self.slot(env.slug());
        let phase = slot.phase.get();
        let present = slot.present.load(Ordering::Relaxed);
        let state = match &phase {
            Phase::Starting => "starting",
            Phase::Ready => "running",
            Phase::Paused => "paused",
            Phase::Failed { .. } => "failed",
            Phase::Stopped | Phase::Unknown if present => "stopped",
            Phase::Stopped | Phase::Unknown => "not_created",
        };
        let progress = matches!(phase, Phase::Starting).then(|| slot.progress.get());
        EnvironmentView {
            state,
            since: slot.phase.since(),
            progress,
            failure: match phase {
                Phase::Failed { error, .. } => Some(error),
                _ => None,
            },
            retry_in: slot.retry_in(),
        }
    }
}

/// A start as it goes (see [`Lifecycle::follow`]).
pub struct Following {
    pub phase: tokio::sync::watch::Receiver<Phase>,
    pub progress: tokio::sync::watch::Receiver<Progress>,
    /// Consecutive app failures when following began (sets the back-off).
    pub app_failures: u32,
}

/// See [`Lifecycle::view`].
#[derive(Debug)]
pub struct EnvironmentView {
    /// `not_created`, `starting`, `running`, `paused`, `stopped` or `failed`.
    pub state: &'static str,
    /// Unix seconds the state began, when it changed since spawngate started.
    pub since: Option<i64>,
    /// While starting.
    pub progress: Option<Progress>,
    /// When failed.
    pub failure: Option<SpawnError>,
    /// When failed: the back-off left before a request may start it again.
    pub retry_in: Option<Duration>,
}

/// The operator event for a change of phase (`None`: not worth one). The
/// culler publishes its own, with its reason; a reconciliation's or a broken
/// event stream's doubts are bookkeeping.
fn op_event(to: &Phase, event: &Event) -> Option<(&'static str, Option<String>)> {
    let kind = match (to, event) {
        (_, Event::CullPause | Event::CullStop | Event::CullRemove) => return None,
        (_, Event::Doubt | Event::Lost | Event::ClearFailure) => return None,
        (Phase::Starting, _) => "container.starting",
        (Phase::Ready, _) => "container.ready",
        (Phase::Failed { error, .. }, _) => {
            return Some(("container.failed", Some(error.detail().to_owned())));
        }
        (Phase::Paused, _) => "container.paused",
        (Phase::Stopped, Event::Created) => "container.created",
        (Phase::Stopped, _) => "container.stopped",
        (Phase::Unknown, Event::SeenGone) => {
            return Some((
                "container.stopped",
                Some("stopped or removed outside spawngate".into()),
            ));
        }
        (Phase::Unknown, _) => return None,
    };
    let reason = match event {
        Event::SeenPaused => Some("paused outside spawngate".to_owned()),
        _ => None,
    };
    Some((kind, reason))
}

/// A readiness probe's target and what counts as ready.
struct Probe {
    /// Full URL, path included.
    url: String,
    status: Option<u16>,
    timeout: Duration,
    /// For messages: the app's port.
    port: u16,
}

impl Probe {
    /// `profile`'s probe of the app whose root is at `base` (address and, when
    /// the prefix is not stripped, the base path).
    fn of(profile: &Profile, base: &str) -> Probe {
        Probe {
            url: format!("{base}{}", profile.ready_path),
            status: profile.ready_status,
            timeout: profile.start_timeout,
            port: profile.port,
        }
    }
}

/// Readiness probes: this often at first, for this long, then backing off to
/// [`PROBE_SLOW`].
const PROBE_FAST: Duration = Duration::from_millis(5);
const PROBE_FAST_FOR: Duration = Duration::from_secs(2);
const PROBE_SLOW: Duration = Duration::from_millis(50);

/// A re-opened event stream that held this long means Docker is back.
const STREAM_SETTLED: Duration = Duration::from_secs(5);

/// Longest wait between attempts to re-open Docker's event stream.
const EVENTS_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Parses Docker's RFC 3339 timestamps (nanosecond precision) to Unix seconds.
fn parse_rfc3339(s: &str) -> Option<i64> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{Capabilities, ContainerSummary};
    use async_trait::async_trait;
    use std::collections::HashSet;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    /// A fake runtime whose "container" is a real HTTP listener on a loopback port,
    /// so the readiness probe is exercised for real.
    struct FakeRuntime {
        capabilities: Capabilities,
        /// `ensure_running` calls that got past `fail_with`.
        creates: AtomicUsize,
        pauses: AtomicUsize,
        unpauses: AtomicUsize,
        fail_with: Mutex<Option<RuntimeError>>,
        servers: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
        paused: Mutex<HashSet<String>>,
        /// When set, started "containers" exit at once with this code.
        exits_with: Mutex<Option<i64>>,
        exited: Mutex<HashMap<String, i64>>,
    }

    impl FakeRuntime {
        fn new(capabilities: Capabilities) -> FakeRuntime {
            FakeRuntime {
                capabilities,
                creates: AtomicUsize::new(0),
                pauses: AtomicUsize::new(0),
                unpauses: AtomicUsize::new(0),
                fail_with: Mutex::new(None),
                servers: Mutex::new(HashMap::new()),
                paused: Mutex::new(HashSet::new()),
                exits_with: Mutex::new(None),
                exited: Mutex::new(HashMap::new()),
            }
        }

        fn nothing_runs(&self) -> bool {
            self.servers.lock().unwrap().is_empty()
        }

        fn running(&self, name: &str) -> bool {
            self.servers.lock().unwrap().contains_key(name)
        }
    }

    fn info(name: &str, state: RunState, exit_code: Option<i64>) -> ContainerInfo {
        ContainerInfo {
            id: format!("id-{name}"),
            state,
            started_at: None,
            finished_at: None,
            exit_code,
            failure: None,
        }
    }

    #[async_trait]
    impl Runtime for FakeRuntime {
        fn capabilities(&self) -> Capabilities {
            self.capabilities
        }
        fn name(&self, env: &EnvId) -> String {
            format!("fake-{env:?}")
        }
        fn address(&self, _env: &EnvId, host_port: Option<u16>, _port: u16) -> String {
            format!("http://127.0.0.1:{}", host_port.unwrap_or(1))
        }
        async fn ping(&self) -> Result<(), RuntimeError> {
            Ok(())
        }
        async fn image_present(&self, _image: &str) -> Result<bool, RuntimeError> {
            Ok(true)
        }
        async fn ensure_running(
            &self,
            spec: &EnvironmentSpec,
        ) -> Result<crate::runtime::Running, RuntimeError> {
            if let Some(e) = self.fail_with.lock().unwrap().take() {
                return Err(e);
            }
            self.creates.fetch_add(1, Ordering::SeqCst);
            let name = self.name(&spec.env_id);
            let running = crate::runtime::Running {
                id: format!("id-{name}"),
                running_since: None,
            };
            if self.paused.lock().unwrap().remove(&name) {
                self.unpauses.fetch_add(1, Ordering::SeqCst);
                return Ok(running);
            }
            if let Some(code) = *self.exits_with.lock().unwrap() {
                self.exited.lock().unwrap().insert(name, code);
                return Ok(running);
            }
            self.exited.lock().unwrap().remove(&name);
            // Answer after a short "boot" delay.
            let port = spec.host_port.unwrap();
            let handle = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                    .await
                    .unwrap();
                loop {
                    let Ok((mut s, _)) = listener.accept().await else {
                        return;
                    };
                    tokio::spawn(async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = [0u8; 1024];
                        let _ = s.read(&mut buf).await;
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                            .await;
                    });
                }
            });
            self.servers.lock().unwrap().insert(name, handle);
            Ok(running)
        }
        async fn ensure_created(&self, spec: &EnvironmentSpec) -> Result<String, RuntimeError> {
            Ok(format!("id-{}", self.name(&spec.env_id)))
        }
        async fn pause(&self, env: &EnvId) -> Result<(), RuntimeError> {
            assert!(
                self.capabilities.pause,
                "pause called on a runtime without it"
            );
            self.pauses.fetch_add(1, Ordering::SeqCst);
            self.paused.lock().unwrap().insert(self.name(env));
            Ok(())
        }
        async fn list(&self) -> Result<Vec<ContainerSummary>, RuntimeError> {
            Ok(Vec::new())
        }
        async fn network_bytes(&self, _env: &EnvId) -> Result<Option<u64>, RuntimeError> {
            assert!(self.capabilities.network_counters);
            Ok(Some(0))
        }
        async fn stats(&self, env: &EnvId) -> Result<Option<crate::runtime::Usage>, RuntimeError> {
            Ok(self
                .running(&self.name(env))
                .then_some(crate::runtime::Usage {
                    cpu_percent: Some(1.5),
                    memory_bytes: Some(10 << 20),
                    memory_limit_bytes: Some(512 << 20),
                }))
        }
        async fn logs(&self, env: &EnvId, _tail: usize) -> Result<Vec<String>, RuntimeError> {
            Ok(match self.exited.lock().unwrap().get(&self.name(env)) {
                Some(code) => vec!["starting".into(), format!("fatal: giving up ({code})")],
                None => Vec::new(),
            })
        }
        async fn inspect(&self, env: &EnvId) -> Result<Option<ContainerInfo>, RuntimeError> {
            let name = self.name(env);
            if let Some(code) = self.exited.lock().unwrap().get(&name) {
                return Ok(Some(info(&name, RunState::Stopped, Some(*code))));
            }
            if self.paused.lock().unwrap().contains(&name) {
                return Ok(Some(info(&name, RunState::Paused, None)));
            }
            Ok(self
                .running(&name)
                .then(|| info(&name, RunState::Running, None)))
        }
        async fn stop(&self, env: &EnvId, _grace: Duration) -> Result<(), RuntimeError> {
            let name = self.name(env);
            self.paused.lock().unwrap().remove(&name);
            if let Some(h) = self.servers.lock().unwrap().remove(&name) {
                h.abort();
            }
            Ok(())
        }
        async fn remove(&self, env: &EnvId, _with_volume: bool) -> Result<(), RuntimeError> {
            self.stop(env, Duration::ZERO).await
        }
        async fn watch_events(
            &self,
            _on_gone: &(dyn Fn(ContainerGone) + Send + Sync),
        ) -> Result<(), RuntimeError> {
            std::future::pending().await
        }
    }

    struct Setup {
        _dir: tempfile::TempDir,
        runtime: Arc<FakeRuntime>,
        lc: Arc<Lifecycle>,
        user: Env,
        metrics: Arc<Metrics>,
    }

    async fn setup() -> Setup {
        setup_with("", Capabilities::ALL).await
    }

    async fn setup_with(extra: &str, capabilities: Capabilities) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let config = Arc::new(
            Config::from_sources(
                &format!(
                    "[server]\ndata_dir = {:?}\n[spawn]\nready_timeout_secs = 5\n{extra}",
                    dir.path()
                ),
                Vec::new(),
            )
            .unwrap(),
        );
        let store = Store::open(dir.path()).unwrap();
        let user = Env::default_of(Arc::new(
            store
                .create_user("alice", None, Some((40000, 49999)))
                .await
                .unwrap(),
        ));
        let runtime = Arc::new(FakeRuntime::new(capabilities));
        let metrics = Arc::new(Metrics::new());
        let lc = Lifecycle::new(
            runtime.clone(),
            store,
            config,
            vec![1; 32],
            Tasks::new(),
            metrics.clone(),
        );
        Setup {
            _dir: dir,
            runtime,
            lc,
            user,
            metrics,
        }
    }

    /// Waits until the phase matches (bounded, so a bug fails instead of hanging).
    async fn phase_becomes(lc: &Lifecycle, user: &Env, want: fn(&Phase) -> bool) {
        let mut rx = lc.slot(user.slug()).phase.subscribe();
        let reached = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(want));
        assert!(
            reached.await.is_ok(),
            "phase stuck at {:?}",
            lc.phase(user.slug())
        );
    }

    /// Kicks a spawn and returns at once (the fake app needs ~100 ms to listen).
    async fn spawn_under_way(lc: &Arc<Lifecycle>, user: &Env) {
        assert!(matches!(
            lc.ensure_ready(user, Duration::ZERO).await,
            Readiness::Pending
        ));
    }

    /// Ends the lifecycle's background tasks and waits for them: what they did
    /// is done once this returns.
    async fn drain(lc: &Lifecycle) {
        assert_eq!(lc.tasks().shutdown(Duration::from_secs(10)).await, 0);
    }

    #[tokio::test]
    async fn concurrent_first_requests_share_one_spawn() {
        let Setup {
            runtime, lc, user, ..
        } = setup().await;
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let lc = lc.clone();
            let user = user.clone();
            tasks.push(tokio::spawn(async move {
                lc.ensure_ready(&user, Duration::from_secs(5)).await
            }));
        }
        for t in tasks {
            assert!(matches!(t.await.unwrap(), Readiness::Ready));
        }
        assert_eq!(runtime.creates.load(Ordering::SeqCst), 1);
        // Once ready, no further runtime calls.
        assert!(matches!(
            lc.ensure_ready(&user, Duration::ZERO).await,
            Readiness::Ready
        ));
        assert_eq!(runtime.creates.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_start_reports_its_steps_and_publishes_its_events() {
        let Setup { lc, user, .. } = setup().await;
        let mut sub = lc.events().subscribe(None);
        spawn_under_way(&lc, &user).await;
        let following = lc.follow(&user);
        let mut progress = following.progress;
        // Through the runtime's start to the wait for the app (the fake's app
        // needs ~100 ms), then ready.
        let waiting = tokio::time::timeout(
            Duration::from_secs(5),
            progress.wait_for(|p| p.step == Step::Waiting),
        );
        assert!(
            waiting.await.is_ok(),
            "{:?}",
            lc.follow(&user).progress.borrow().step
        );
        assert_eq!(lc.view(&user).state, "starting");
        phase_becomes(&lc, &user, |p| matches!(p, Phase::Ready)).await;
        let view = lc.view(&user);
        assert_eq!(view.state, "running");
        assert!(view.progress.is_none() && view.since.is_some());
        let mut kinds = Vec::new();
        while let Ok(event) = sub.live.try_recv() {
            assert_eq!(event.user, "alice");
            kinds.push(event.kind);
        }
        assert_eq!(
            kinds,
            ["container.starting", "container.created", "container.ready"]
        );
        lc.stop(&user).await.unwrap();
        assert_eq!(sub.live.try_recv().unwrap().kind, "container.stopped");
        assert_eq!(lc.view(&user).state, "stopped");
    }

    #[tokio::test]
    async fn a_failed_start_is_published_with_its_reason() {
        let Setup {
            runtime, lc, user, ..
        } = setup().await;
        let mut sub = lc.events().subscribe(None);
        *runtime.exits_with.lock().unwrap() = Some(3);
        assert!(matches!(
            lc.ensure_ready(&user, Duration::from_secs(5)).await,
            Readiness::Failed(_)
        ));
        let mut last = None;
        while let Ok(event) = sub.live.try_recv() {
            last = Some(event);
        }
        let last = last.unwrap();
        assert_eq!(last.kind, "container.failed");
        assert!(
            last.reason.as_deref().unwrap().contains("code 3"),
            "{last:?}"
        );
        let view = lc.view(&user);
        assert_eq!(view.state, "failed");
        assert!(view.failure.is_some() && view.retry_in.is_some());
    }

    #[tokio::test]
    async fn short_hold_returns_pending_then_ready() {
        let Setup { lc, user, .. } = setup().await;
        assert!(matches!(
            lc.ensure_ready(&user, Duration::ZERO).await,
            Readiness::Pending
        ));
        assert!(matches!(
            lc.ensure_ready(&user, Duration::from_secs(5)).await,
            Readiness::Ready
        ));
    }

    #[tokio::test]
    async fn docker_failure_is_reported_and_retried_after_the_back_off() {
        let Setup {
            runtime, lc, user, ..
        } = setup().await;
        *runtime.fail_with.lock().unwrap() =
            Some(RuntimeError::Unavailable("connection refused".into()));
        match lc.ensure_ready(&user, Duration::from_secs(5)).await {
            Readiness::Failed(SpawnError::DockerDown(detail)) => {
                assert!(detail.contains("connection refused"))
            }
            other => panic!("unexpected {other:?}"),
        }
        // Within the backoff window the failure is returned without a new attempt.
        assert!(matches!(
            lc.ensure_ready(&user, Duration::from_secs(1)).await,
            Readiness::Failed(_)
        ));
        assert_eq!(runtime.creates.load(Ordering::SeqCst), 0);
        // The back-off runs out (without waiting for it): the next request retries.
        lc.slot(user.slug()).phase.age_failure(RETRY_BACKOFF);
        assert!(matches!(
            lc.ensure_ready(&user, Duration::from_secs(5)).await,
            Readiness::Ready
        ));
        assert_eq!(runtime.creates.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn app_failures_back_off_growing_to_five_minutes() {
        let app = SpawnError::App(AppFailure {
            reason: "exited".into(),
            exit_code: Some(1),
            logs: Vec::new(),
        });
        let secs = |n| backoff(&app, n).as_secs();
        assert_eq!(
            (0..=8).map(secs).collect::<Vec<_>>(),
            [5, 5, 10, 20, 40, 80, 160, 300, 300]
        );
        assert_eq!(secs(u32::MAX), 300);
        assert_eq!(
            backoff(&SpawnError::DockerDown("refused".into()), 7),
            RETRY_BACKOFF
        );
    }

    #[tokio::test]
    async fn an_app_that_exits_is_reported_and_not_restarted_during_the_back_off() {
        let Setup {
            runtime, lc, user, ..
        } = setup().await;
        *runtime.exits_with.lock().unwrap() = Some(3);
        let failure = match lc.ensure_ready(&user, Duration::from_secs(5)).await {
            Readiness::Failed(SpawnError::App(f)) => f,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(failure.exit_code, Some(3));
        assert!(failure.reason.contains("code 3"), "{}", failure.reason);
        assert_eq!(failure.logs.last().unwrap(), "fatal: giving up (3)");
        let wait = lc.retry_in(user.slug());
        assert!(
            wait > Duration::from_secs(3) && wait <= APP_BACKOFF_FIRST,
            "{wait:?}"
        );

        // Requests (and logins) during the back-off get the failure; nothing starts.
        for _ in 0..5 {
            assert!(matches!(
                lc.ensure_ready(&user, Duration::from_secs(1)).await,
                Readiness::Failed(SpawnError::App(_))
            ));
            lc.prewarm(&user);
        }
        assert_eq!(runtime.creates.load(Ordering::SeqCst), 1);
        let status = lc.status(&user).await.unwrap();
        let view = status.failure.unwrap();
        assert_eq!((view.exit_code, view.consecutive_failures), (Some(3), 1));
        assert!(view.retry_in_secs >= 1 && view.retry_in_secs <= 5);

        // An admin start tries at once, and counts anew.
        assert!(matches!(lc.start(&user).await, Readiness::Failed(_)));
        assert_eq!(runtime.creates.load(Ordering::SeqCst), 2);
        assert_eq!(lc.slot(user.slug()).app_failures.load(Ordering::SeqCst), 1);

        // Fixed image: the admin's start succeeds and clears the failure count.
        *runtime.exits_with.lock().unwrap() = None;
        assert!(matches!(lc.start(&user).await, Readiness::Ready));
        assert_eq!(lc.slot(user.slug()).app_failures.load(Ordering::SeqCst), 0);
        assert!(lc.status(&user).await.unwrap().failure.is_none());
    }

    #[tokio::test]
    async fn consecutive_app_failures_grow_the_back_off() {
        let Setup {
            runtime, lc, user, ..
        } = setup().await;
        *runtime.exits_with.lock().unwrap() = Some(1);
        assert!(matches!(
            lc.ensure_ready(&user, Duration::from_secs(5)).await,
            Readiness::Failed(_)
        ));
        // Let the first back-off run out without waiting 5 s for it.
        let slot = lc.slot(user.slug());
        slot.phase.age_failure(APP_BACKOFF_FIRST);
        assert!(matches!(
            lc.ensure_ready(&user, Duration::from_secs(5)).await,
            Readiness::Failed(_)
        ));
        assert_eq!(runtime.creates.load(Ordering::SeqCst), 2);
        assert_eq!(slot.app_failures.load(Ordering::SeqCst), 2);
        assert!(lc.retry_in(user.slug()) > APP_BACKOFF_FIRST);
    }

    #[tokio::test]
    async fn stop_then_request_starts_again_and_gone_events_reset_ready() {
        let Setup {
            runtime, lc, user, ..
        } = setup().await;
        assert!(matches!(lc.start(&user).await, Readiness::Ready));
        lc.stop(&user).await.unwrap();
        assert!(matches!(lc.phase(user.slug()), Phase::Stopped));
        assert!(matches!(
            lc.ensure_ready(&user, Duration::from_secs(5)).await,
            Readiness::Ready
        ));
        assert_eq!(runtime.creates.load(Ordering::SeqCst), 2);

        lc.container_gone(&ContainerGone {
            slug: user.slug().clone(),
            paused: false,
        });
        assert!(matches!(lc.phase(user.slug()), Phase::Unknown));
    }

    #[tokio::test]
    async fn a_pause_event_keeps_the_container_counted_as_paused() {
        let Setup { lc, user, .. } = setup().await;
        assert!(matches!(lc.start(&user).await, Readiness::Ready));
        lc.container_gone(&ContainerGone {
            slug: user.slug().clone(),
            paused: true,
        });
        assert!(matches!(lc.phase(user.slug()), Phase::Paused));
        assert!(lc.slot(user.slug()).occupies_capacity());
    }

    #[tokio::test]
    async fn an_admin_stop_during_a_spawn_wins() {
        let Setup {
            runtime, lc, user, ..
        } = setup().await;
        spawn_under_way(&lc, &user).await;
        lc.stop(&user).await.unwrap();
        // `stop` returns once the runtime stopped it (after the spawn let go of the lock).
        assert!(
            matches!(lc.phase(user.slug()), Phase::Stopped),
            "{:?}",
            lc.phase(user.slug())
        );
        assert!(runtime.nothing_runs(), "stopped, not left running");
        // And once the spawn task has ended, nothing flipped it back to Ready.
        drain(&lc).await;
        assert!(matches!(lc.phase(user.slug()), Phase::Stopped));
    }

    #[tokio::test]
    async fn background_loops_end_at_shutdown() {
        let Setup { lc, .. } = setup().await;
        lc.start_background();
        // The event watcher, reconcile-then-pool and the culler all return.
        drain(&lc).await;
    }

    #[tokio::test]
    async fn a_spawn_under_way_at_shutdown_is_left_for_reconcile() {
        let Setup {
            runtime, lc, user, ..
        } = setup().await;
        spawn_under_way(&lc, &user).await;
        drain(&lc).await;
        assert!(
            !runtime.nothing_runs(),
            "a rolling restart does not stop what is starting"
        );
        let record = lc
            .store
            .container_record(&user.record_key())
            .unwrap()
            .unwrap();
        assert_eq!(record.desired, Desired::Running, "the intent is on record");
    }

    /// Makes the user look idle for `secs` to the culler.
    fn idle_for(lc: &Lifecycle, user: &Env, secs: i64) {
        lc.slot(user.slug())
            .last_activity
            .store(unix_now() - secs, Ordering::Relaxed);
    }

    const PAUSE_TIERS: &str = "[lifecycle]\npause_after_secs = 10\nidle_timeout_secs = 1000";

    #[tokio::test]
    async fn the_culler_pauses_an_idle_container_and_a_request_resumes_it() {
        let Setup {
            runtime, lc, user, ..
        } = setup_with(PAUSE_TIERS, Capabilities::ALL).await;
        assert!(matches!(lc.start(&user).await, Readiness::Ready));
        idle_for(&lc, &user, 60);
        lc.cull_once().await;
        phase_becomes(&lc, &user, |p| matches!(p, Phase::Paused)).await;
        // The phase is claimed before the runtime call: wait for the call itself.
        let slot = lc.slot(user.slug());
        drop(slot.ops.lock().await);
        assert_eq!(runtime.pauses.load(Ordering::SeqCst), 1);

        assert!(matches!(
            lc.ensure_ready(&user, Duration::from_secs(5)).await,
            Readiness::Ready
        ));
        assert_eq!(runtime.unpauses.load(Ordering::SeqCst), 1);
        assert_eq!(
            runtime.creates.load(Ordering::SeqCst),
            2,
            "start, then resume"
        );
    }

    #[tokio::test]
    async fn without_pause_the_culler_skips_the_pause_tier() {
        let no_pause = Capabilities {
            pause: false,
            network_counters: false,
            ..Capabilities::ALL
        };
        let Setup {
            runtime, lc, user, ..
        } = setup_with(PAUSE_TIERS, no_pause).await;
        assert!(matches!(lc.start(&user).await, Readiness::Ready));
        idle_for(&lc, &user, 60);
        lc.cull_once().await;
        assert!(matches!(lc.phase(user.slug()), Phase::Ready));
        // The next tier still applies.
        idle_for(&lc, &user, 2000);
        lc.cull_once().await;
        phase_becomes(&lc, &user, |p| matches!(p, Phase::Stopped)).await;
        // Everything either look set going has finished: no pause among it.
        drain(&lc).await;
        assert_eq!(runtime.pauses.load(Ordering::SeqCst), 0);
    }

    /// The value of `series` (name and labels) in the metrics text.
    fn sample(metrics: &Metrics, series: &str) -> f64 {
        let text = metrics.encode();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }

    #[tokio::test]
    async fn starts_are_timed_by_kind_and_culls_and_failures_counted() {
        let Setup {
            runtime,
            lc,
            user,
            metrics,
            ..
        } = setup_with(PAUSE_TIERS, Capabilities::ALL).await;
        let kind = |k: &str| format!("spawngate_spawn_duration_seconds_count{{kind=\"{k}\"}}");
        assert!(matches!(lc.start(&user).await, Readiness::Ready));
        assert_eq!(sample(&metrics, &kind("create")), 1.0);
        assert_eq!(
            sample(&metrics, "spawngate_environments{state=\"ready\"}"),
            1.0
        );
        assert_eq!(sample(&metrics, "spawngate_running_environments"), 1.0);
        assert_eq!(sample(&metrics, "spawngate_active_users"), 1.0);
        assert_eq!(sample(&metrics, "spawngate_users"), 1.0);

        // Paused by the culler, thawed by the next request.
        idle_for(&lc, &user, 60);
        lc.cull_once().await;
        phase_becomes(&lc, &user, |p| matches!(p, Phase::Paused)).await;
        drain_ops(&lc, &user).await;
        assert_eq!(
            sample(&metrics, "spawngate_environments{state=\"paused\"}"),
            1.0
        );
        let culls = metrics.encode();
        assert!(
            culls
                .lines()
                .any(|l| l.starts_with("spawngate_culls_total{")
                    && l.contains("tier=\"pause\"")
                    && l.contains("reason=\"idle\"")
                    && l.ends_with(" 1")),
            "{culls}"
        );
        assert!(matches!(
            lc.ensure_ready(&user, Duration::from_secs(5)).await,
            Readiness::Ready
        ));
        assert_eq!(sample(&metrics, &kind("unpause")), 1.0);

        // Stopped, then started again: a resume.
        lc.stop(&user).await.unwrap();
        assert!(matches!(
            lc.ensure_ready(&user, Duration::from_secs(5)).await,
            Readiness::Ready
        ));
        assert_eq!(sample(&metrics, &kind("resume")), 1.0);

        // An app that exits is a failure of its own reason.
        lc.stop(&user).await.unwrap();
        *runtime.exits_with.lock().unwrap() = Some(2);
        assert!(matches!(
            lc.ensure_ready(&user, Duration::from_secs(5)).await,
            Readiness::Failed(SpawnError::App(_))
        ));
        assert_eq!(
            sample(
                &metrics,
                "spawngate_spawn_failures_total{reason=\"app_exited\"}"
            ),
            1.0
        );
        assert_eq!(
            sample(&metrics, "spawngate_environments{state=\"failed\"}"),
            1.0
        );
    }

    #[tokio::test]
    async fn a_default_environment_keeps_the_spec_and_secret_of_the_previous_release() {
        let Setup { lc, user, .. } = setup().await;
        let spec = lc.spec(&user);
        let names: Vec<&str> = spec.env.iter().map(|(k, _)| k.as_str()).collect();
        // What the release before environments set: a new name would change the
        // container's fingerprint and recreate every stopped container.
        assert_eq!(
            names,
            [
                "SPAWNGATE_USER",
                "SPAWNGATE_SLUG",
                "SPAWNGATE_BASE_PATH",
                "SPAWNGATE_SECRET"
            ]
        );
        assert_eq!(
            lc.container_secret(&user),
            crate::ids::derive_token(
                &[1; 32],
                b"spawngate container secret\0",
                user.owner().id.as_str()
            )
        );
        let (owner, lab) = lc
            .store
            .add_environment(&user.owner().id, "lab", None, false, None, |_| {
                Ok::<_, ()>(())
            })
            .await
            .unwrap()
            .unwrap();
        let lab = Env::at_slug(Arc::new(owner), &lab.slug).unwrap();
        let spec = lc.spec(&lab);
        assert!(
            spec.env
                .contains(&("SPAWNGATE_ENVIRONMENT".into(), "lab".into()))
        );
        assert_ne!(lc.container_secret(&lab), lc.container_secret(&user));
    }

    #[tokio::test]
    async fn a_start_refused_at_capacity_is_counted() {
        let Setup {
            lc, user, metrics, ..
        } = setup_with("[limits]\nmax_running = 1", Capabilities::ALL).await;
        assert!(matches!(lc.start(&user).await, Readiness::Ready));
        let other = Env::default_of(Arc::new(
            lc.store
                .create_user("bob", None, Some((40000, 49999)))
                .await
                .unwrap(),
        ));
        assert!(matches!(
            lc.ensure_ready(&other, Duration::from_secs(1)).await,
            Readiness::Failed(SpawnError::Capacity(_))
        ));
        assert_eq!(sample(&metrics, "spawngate_capacity_refusals_total"), 1.0);
        assert_eq!(
            sample(
                &metrics,
                "spawngate_spawn_failures_total{reason=\"capacity\"}"
            ),
            1.0
        );
        assert_eq!(sample(&metrics, "spawngate_max_running_environments"), 1.0);
    }

    /// Waits until no runtime call holds the user's ops lock.
    async fn drain_ops(lc: &Lifecycle, user: &Env) {
        drop(lc.slot(user.slug()).ops.lock().await);
    }

    /// Log lines written while the guard lives, as JSON objects.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn start(&self) -> tracing::subscriber::DefaultGuard {
            // With a single dispatcher registered, tracing caches whether a log
            // line is wanted from the first thread that reaches it (another test,
            // without a subscriber: "never", for all threads). A second one, kept
            // for the process, makes it combine the registered dispatchers.
            static SECOND: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
            SECOND.get_or_init(|| {
                tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default())
            });
            let out = self.clone();
            tracing::subscriber::set_default(
                tracing_subscriber::fmt()
                    .json()
                    .with_writer(move || out.clone())
                    .finish(),
            )
        }

        fn line(&self, message: &str) -> serde_json::Value {
            let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
            text.lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .find(|l| l["fields"]["message"] == message)
                .unwrap_or_else(|| panic!("no {message:?} line in\n{text}"))["fields"]
                .clone()
        }
    }

    #[tokio::test]
    async fn lifecycle_log_lines_name_user_slug_container_and_latency() {
        let Setup {
            runtime, lc, user, ..
        } = setup().await;
        let logs = Captured::default();
        let _guard = logs.start();
        assert!(matches!(lc.start(&user).await, Readiness::Ready));
        lc.stop(&user).await.unwrap();
        *runtime.exits_with.lock().unwrap() = Some(4);
        assert!(matches!(lc.start(&user).await, Readiness::Failed(_)));
        for message in ["container ready", "spawn failed"] {
            let line = logs.line(message);
            assert_eq!(line["user"], "alice", "{line}");
            assert_eq!(line["slug"], user.slug().as_str(), "{line}");
            assert_eq!(line["container"], lc.container_name(&user), "{line}");
            assert!(line["ms"].is_u64(), "{line}");
        }
        let ready = logs.line("container ready");
        assert_eq!(
            ready["container_id"],
            format!("id-{}", lc.container_name(&user))
        );
        assert_eq!(ready["kind"], "create");
        assert_eq!(logs.line("spawn failed")["reason"], "app_exited");
    }
}
