//! The container runtime: what the lifecycle needs from Docker, as a trait so the
//! lifecycle logic can be unit-tested with a fake and another backend can follow.

pub mod docker;

use std::collections::HashMap;

use async_trait::async_trait;

pub use docker::DockerRuntime;

/// Everything needed to create a user's container.
#[derive(Clone, Debug)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub env: Vec<(String, String)>,
    pub labels: HashMap<String, String>,
    /// Port the app listens on inside the container.
    pub port: u16,
    /// Host mode: publish `port` on 127.0.0.1:`host_port`.
    pub host_port: Option<u16>,
    pub network: String,
    /// Named volume mounted at `data_mount`; `None` for stateless pool containers.
    pub volume: Option<String>,
    pub data_mount: String,
    pub memory_bytes: i64,
    pub nano_cpus: i64,
    pub pids_limit: i64,
    pub read_only_rootfs: bool,
    /// Docker's init as PID 1 (`docker.init`): signals reach the app even when it
    /// installs no handler, since only PID 1 is immune to unhandled ones.
    pub init: bool,
}

/// Label holding [`ContainerSpec::fingerprint`]: a stopped container whose
/// fingerprint differs from the current spec (new image, limits or env) is
/// recreated on its next start, on the same volume.
pub const SPEC_LABEL: &str = "spawngate.spec";

impl ContainerSpec {
    /// A short hash of everything that shapes the container.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut env = self.env.clone();
        env.sort();
        let text = format!(
            "{}|{:?}|{}|{:?}|{}|{:?}|{}|{}|{}|{}|{}|{}",
            self.image,
            env,
            self.port,
            self.host_port,
            self.network,
            self.volume,
            self.data_mount,
            self.memory_bytes,
            self.nano_cpus,
            self.pids_limit,
            self.read_only_rootfs,
            self.init
        );
        hex::encode(&Sha256::digest(text.as_bytes())[..8])
    }
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

#[derive(Clone, Debug)]
pub struct ContainerInfo {
    pub id: String,
    /// Running and not paused.
    pub running: bool,
    pub paused: bool,
    /// RFC 3339 from Docker, when known.
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub exit_code: Option<i64>,
    pub labels: HashMap<String, String>,
}

/// What [`Runtime::ensure_running`] found or did.
#[derive(Clone, Debug)]
pub struct Running {
    pub id: String,
    /// Docker's start time (RFC 3339) when the container was already running;
    /// `None` when it was started (or unpaused) just now.
    pub running_since: Option<String>,
}

/// One of this instance's containers, as listed by labels.
#[derive(Clone, Debug)]
pub struct ContainerSummary {
    pub name: String,
    pub id: String,
    /// Docker's state: `created`, `running`, `paused`, `exited`, `dead`…
    pub state: String,
    pub labels: HashMap<String, String>,
}

/// A container of ours that stopped, died or went away.
#[derive(Clone, Debug)]
pub struct ContainerGone {
    pub name: String,
    /// Paused rather than stopped or removed.
    pub paused: bool,
}

/// A named volume or a per-user network of this instance, as listed by labels.
#[derive(Clone, Debug)]
pub struct Resource {
    pub kind: ResourceKind,
    pub name: String,
    pub labels: HashMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResourceKind {
    Volume,
    /// A network of one user (`docker.network_per_user`), named like the container.
    UserNetwork,
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
    /// Checks that the daemon answers.
    async fn ping(&self) -> Result<(), RuntimeError>;
    /// Whether the image exists on the Docker host (nothing is ever pulled).
    async fn image_present(&self, image: &str) -> Result<bool, RuntimeError>;
    /// Makes sure the container exists and runs: reuses an existing container
    /// (starting it if stopped), creates it otherwise. Returns the container id.
    async fn ensure_running(&self, spec: &ContainerSpec) -> Result<Running, RuntimeError>;
    /// Creates the container (network and volume too) without starting it; an
    /// existing container is left as it is.
    async fn ensure_created(&self, spec: &ContainerSpec) -> Result<String, RuntimeError>;
    async fn inspect(&self, name: &str) -> Result<Option<ContainerInfo>, RuntimeError>;
    /// Stops the container (no error if it does not exist or is already stopped):
    /// SIGTERM, then SIGKILL after `docker.stop_timeout_secs`.
    async fn stop(&self, name: &str) -> Result<(), RuntimeError>;
    /// Freezes the container's processes (memory kept, CPU freed).
    async fn pause(&self, name: &str) -> Result<(), RuntimeError>;
    /// All containers labelled with `spawngate.instance=<instance>`, in any state.
    async fn list(&self, instance: &str) -> Result<Vec<ContainerSummary>, RuntimeError>;
    /// Total network bytes (received + sent) of a running container, if known.
    async fn network_bytes(&self, name: &str) -> Result<Option<u64>, RuntimeError>;
    /// The last `tail` lines of the container's output (stdout and stderr).
    async fn logs(&self, name: &str, tail: usize) -> Result<Vec<String>, RuntimeError>;
    /// Stops the container as [`Runtime::stop`] does, then removes it and, if
    /// given, its volume. Missing ones are fine.
    async fn remove(&self, name: &str, volume: Option<&str>) -> Result<(), RuntimeError>;
    /// Makes a running pool container `pooled` the user's container described by
    /// `spec`: renamed to `spec.name` and, with per-user networks, moved onto the
    /// user's network.
    async fn adopt_pooled(&self, pooled: &str, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        let _ = (pooled, spec);
        Err(RuntimeError::Failed("this runtime has no warm pool".into()))
    }
    /// This instance's named volumes and per-user networks (for reconcile to remove
    /// those of deleted users). A runtime without such things has none.
    async fn resources(&self, instance: &str) -> Result<Vec<Resource>, RuntimeError> {
        let _ = instance;
        Ok(Vec::new())
    }
    /// Removes one of [`Runtime::resources`]; a missing one is fine.
    async fn remove_resource(&self, resource: &Resource) -> Result<(), RuntimeError> {
        let _ = resource;
        Ok(())
    }
    /// Calls `on_gone` whenever one of this instance's containers stops or is removed.
    /// Runs until the stream ends or fails; the caller reconnects.
    async fn watch_events(
        &self,
        instance: &str,
        on_gone: &(dyn Fn(ContainerGone) + Send + Sync),
    ) -> Result<(), RuntimeError>;
}
