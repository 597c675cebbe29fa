//! The container runtime: the backend boundary between the lifecycle and whatever
//! runs environments (Docker today). The lifecycle says *which* environment and
//! *what* it needs ([`EnvironmentSpec`]); the runtime owns everything about how:
//! container, volume and network names, labels, addresses, host-port publishing,
//! and the parsing of its own states. It also says what it can do
//! ([`Capabilities`]), so the lifecycle never assumes Docker.

pub mod docker;
mod metered;

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::Config;
use crate::ids::{Slug, UserId};

pub use docker::DockerRuntime;
pub use metered::metered;

/// The runtime spawngate is configured for (only Docker so far). Validates the
/// address; the connection itself is made on first use, so spawngate starts while
/// the daemon is down.
pub fn connect(config: &Config) -> Result<Arc<dyn Runtime>, RuntimeError> {
    Ok(Arc::new(DockerRuntime::connect(&config.docker)?))
}

/// Which environment: a user's (by slug), or a spare of the warm pool (by the
/// token it was made with).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EnvId {
    User(Slug),
    Pool(String),
    /// Listed as this instance's, but named like none of ours (made by hand, or
    /// by another version): only ever removed, by the runtime's own name for it.
    Unrecognised(String),
}

/// Whom a user's environment belongs to (recorded with it, so a restart can tell
/// a deleted user's leftovers from a live user's environment).
#[derive(Clone, Debug)]
pub struct Owner {
    pub id: UserId,
    pub name: String,
}

/// How far an environment is kept apart from the others, beyond the hardening
/// every environment gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isolation {
    /// On the instance's shared network.
    Shared,
    /// On a network of its own, which only it and spawngate's peers (Traefik) join.
    OwnNetwork,
}

/// Everything needed to create an environment, in terms of what it needs rather
/// than how a backend provides it.
#[derive(Clone, Debug)]
pub struct EnvironmentSpec {
    pub env_id: EnvId,
    /// `None` for pool spares, which learn whom they serve from request headers.
    pub owner: Option<Owner>,
    pub image: String,
    pub env: Vec<(String, String)>,
    /// Port the app listens on.
    pub port: u16,
    /// Host mode: the loopback port allocated to the user (stored with the user).
    pub host_port: Option<u16>,
    /// Where the persistent volume is mounted; `None` for stateless pool spares.
    pub data_mount: Option<String>,
    pub memory_bytes: i64,
    pub cpus: f64,
    pub pids_limit: i64,
    pub read_only_rootfs: bool,
    /// An init as PID 1 (`docker.init`): signals reach the app even when it
    /// installs no handler, since only PID 1 is immune to unhandled ones.
    pub init: bool,
    pub isolation: Isolation,
    /// A hint: no such environment is known to exist, so a backend may try
    /// creating it first. Being wrong costs time, never correctness.
    pub fresh: bool,
}

/// What a runtime can do beyond starting and stopping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Freeze an environment (memory kept, CPU freed) and thaw it quickly.
    pub pause: bool,
    /// Hand a running spare to a user by renaming it (`pool.size`).
    pub warm_pool: bool,
    /// Report an environment's network byte counters (the culler's traffic check).
    pub network_counters: bool,
}

impl Capabilities {
    pub const ALL: Capabilities = Capabilities {
        pause: true,
        warm_pool: true,
        network_counters: true,
    };
}

/// Coarse container state as the admin API reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerState {
    NotExists,
    Starting,
    Running,
    Paused,
    Stopped,
}

/// What the runtime observes of an existing environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    Running,
    Paused,
    /// Created, exited, dead, restarting, being removed: not serving.
    Stopped,
}

#[derive(Clone, Debug)]
pub struct ContainerInfo {
    pub id: String,
    pub state: RunState,
    /// RFC 3339, when known.
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub exit_code: Option<i64>,
}

impl ContainerInfo {
    /// Running and not paused.
    pub fn running(&self) -> bool {
        self.state == RunState::Running
    }
}

/// What [`Runtime::ensure_running`] found or did.
#[derive(Clone, Debug)]
pub struct Running {
    pub id: String,
    /// The start time (RFC 3339) when it was already running; `None` when it was
    /// started (or unpaused) just now.
    pub running_since: Option<String>,
}

/// One of this instance's environments, as the runtime lists them.
#[derive(Clone, Debug)]
pub struct ContainerSummary {
    /// The environment it serves now. A claimed pool spare serves its user's.
    pub env_id: EnvId,
    pub id: String,
    pub state: RunState,
    /// Made as a pool spare: its owner is known only from the user's record.
    pub pooled: bool,
    /// The user it was made for (never set for pool spares).
    pub owner_id: Option<String>,
}

/// A user's environment that stopped, paused, died or went away.
#[derive(Clone, Debug)]
pub struct ContainerGone {
    pub slug: Slug,
    /// Paused rather than stopped or removed.
    pub paused: bool,
}

/// A named volume or a per-user network of this instance.
#[derive(Clone, Debug)]
pub struct Resource {
    pub kind: ResourceKind,
    pub name: String,
    /// The user it belongs to, when the runtime recorded one.
    pub owner_id: Option<String>,
    /// The user environment it serves (per-user networks) or holds the data of
    /// (volumes).
    pub env_id: Option<EnvId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResourceKind {
    Volume,
    /// A network of one user ([`Isolation::OwnNetwork`]).
    UserNetwork,
}

/// An environment's resource use, as the dashboard and admin page show it.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Usage {
    /// CPU time used over the last measured interval, in percent of one CPU
    /// (`200.0`: two CPUs busy); `None` when it could not be measured.
    pub cpu_percent: Option<f64>,
    /// Memory in use (page cache that can be dropped left out, as `docker stats` does).
    pub memory_bytes: Option<u64>,
    /// The environment's memory limit.
    pub memory_limit_bytes: Option<u64>,
}

/// A terminal's size in characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TtySize {
    pub cols: u16,
    pub rows: u16,
}

/// A command to run inside a running environment, as the image's user, within
/// its limits (an SSH session's shell or command).
#[derive(Clone, Debug)]
pub struct ExecRequest {
    pub command: Vec<String>,
    /// A terminal (stdout and stderr then arrive merged, as stdout).
    pub tty: Option<TtySize>,
    pub env: Vec<(String, String)>,
}

/// Output of a running command.
#[derive(Debug)]
pub enum ExecOutput {
    Stdout(bytes::Bytes),
    Stderr(bytes::Bytes),
}

/// A command started by [`Runtime::exec`]: its output ends when it exits.
pub struct Exec {
    /// The runtime's handle for resizing it and reading its exit code.
    pub id: String,
    pub output: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<ExecOutput, RuntimeError>> + Send>,
    >,
    pub input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("Docker is unreachable: {0}")]
    Unavailable(String),
    #[error("image '{0}' not found on the Docker host (build or pull it first)")]
    ImageMissing(String),
    #[error("{0}")]
    Failed(String),
}

#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// What this runtime supports; the lifecycle skips what it does not.
    fn capabilities(&self) -> Capabilities {
        Capabilities::ALL
    }
    /// The runtime's name for an environment (its container name): for logs,
    /// records and secrets derived from it. Stable for as long as it exists.
    fn name(&self, env: &EnvId) -> String;
    /// Where Traefik (and the readiness probe) reach the environment's app.
    /// Deterministic, so Traefik's configuration never changes when it starts.
    /// `port` is the app's port in the environment (its profile's).
    fn address(&self, env: &EnvId, host_port: Option<u16>, port: u16) -> String;
    /// Checks that the daemon answers.
    async fn ping(&self) -> Result<(), RuntimeError>;
    /// Whether the image exists (nothing is ever pulled).
    async fn image_present(&self, image: &str) -> Result<bool, RuntimeError>;
    /// Makes sure the environment exists and runs: reuses an existing one
    /// (starting it if stopped), creates it otherwise.
    async fn ensure_running(&self, spec: &EnvironmentSpec) -> Result<Running, RuntimeError>;
    /// Creates the environment without starting it; an existing one is left as is.
    async fn ensure_created(&self, spec: &EnvironmentSpec) -> Result<String, RuntimeError>;
    async fn inspect(&self, env: &EnvId) -> Result<Option<ContainerInfo>, RuntimeError>;
    /// Stops it (no error if it does not exist or is already stopped): SIGTERM,
    /// then SIGKILL after `grace` (its profile's stop timeout).
    async fn stop(&self, env: &EnvId, grace: std::time::Duration) -> Result<(), RuntimeError>;
    /// Freezes its processes; only called when [`Capabilities::pause`].
    async fn pause(&self, env: &EnvId) -> Result<(), RuntimeError> {
        let _ = env;
        Err(RuntimeError::Failed("this runtime cannot pause".into()))
    }
    /// All of this instance's environments, in any state.
    async fn list(&self) -> Result<Vec<ContainerSummary>, RuntimeError>;
    /// Total network bytes (received + sent) of a running environment, if known.
    async fn network_bytes(&self, env: &EnvId) -> Result<Option<u64>, RuntimeError> {
        let _ = env;
        Ok(None)
    }
    /// CPU and memory use of a running environment; `None` when it is not
    /// running or the runtime cannot tell.
    async fn stats(&self, env: &EnvId) -> Result<Option<Usage>, RuntimeError> {
        let _ = env;
        Ok(None)
    }
    /// The last `tail` lines of its output (stdout and stderr).
    async fn logs(&self, env: &EnvId, tail: usize) -> Result<Vec<String>, RuntimeError>;
    /// Stops it as [`Runtime::stop`] does (with `docker.stop_timeout_secs`), then
    /// removes it and, with `with_volume`, its persistent volume. Missing ones
    /// are fine.
    async fn remove(&self, env: &EnvId, with_volume: bool) -> Result<(), RuntimeError>;
    /// Makes the running pool spare `pooled` the user's environment described by
    /// `spec`; only called when [`Capabilities::warm_pool`].
    async fn adopt_pooled(
        &self,
        pooled: &EnvId,
        spec: &EnvironmentSpec,
    ) -> Result<(), RuntimeError> {
        let _ = (pooled, spec);
        Err(RuntimeError::Failed("this runtime has no warm pool".into()))
    }
    /// This instance's volumes and per-user networks (for reconcile to remove
    /// those of deleted users). A runtime without such things has none.
    async fn resources(&self) -> Result<Vec<Resource>, RuntimeError> {
        Ok(Vec::new())
    }
    /// Removes one of [`Runtime::resources`]; a missing one is fine.
    async fn remove_resource(&self, resource: &Resource) -> Result<(), RuntimeError> {
        let _ = resource;
        Ok(())
    }
    /// Starts `req` inside the running environment.
    async fn exec(&self, env: &EnvId, req: &ExecRequest) -> Result<Exec, RuntimeError> {
        let _ = (env, req);
        Err(RuntimeError::Failed(
            "this runtime cannot run commands".into(),
        ))
    }
    /// Resizes the terminal of a command started with one.
    async fn exec_resize(&self, exec_id: &str, size: TtySize) -> Result<(), RuntimeError> {
        let _ = (exec_id, size);
        Ok(())
    }
    /// The exit code of a command whose output ended (`None`: still running or
    /// unknown).
    async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>, RuntimeError> {
        let _ = exec_id;
        Ok(None)
    }
    /// Where spawngate reaches `port` of the running environment itself (its own
    /// address, never a shared or host one); `None` when it is not running.
    async fn port_address(
        &self,
        env: &EnvId,
        port: u16,
    ) -> Result<Option<std::net::SocketAddr>, RuntimeError> {
        let _ = (env, port);
        Ok(None)
    }
    /// Calls `on_gone` whenever one of this instance's user environments stops,
    /// pauses or is removed. Runs until the stream ends or fails; the caller
    /// reconnects.
    async fn watch_events(
        &self,
        on_gone: &(dyn Fn(ContainerGone) + Send + Sync),
    ) -> Result<(), RuntimeError>;
}
