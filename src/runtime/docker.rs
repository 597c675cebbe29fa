//! [`Runtime`] over the Docker Engine API (bollard).

mod exec;

use std::collections::HashMap;

use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType, MountVolumeOptions,
    NetworkCreateRequest, PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptions, EventsOptions, ListContainersOptions, LogsOptions,
    RemoveContainerOptions, RemoveVolumeOptions, StatsOptions, StopContainerOptions,
};
use futures_util::StreamExt;

use super::{
    ContainerGone, ContainerInfo, ContainerSummary, EnvId, EnvironmentSpec, Isolation, Resource,
    ResourceKind, RunState, Running, Runtime, RuntimeError, Usage,
};
use crate::config::NetworkMode;
use crate::ids::Slug;

/// A container as Docker is asked to make it: an [`EnvironmentSpec`] with the
/// names, network, labels and port publishing filled in.
#[derive(Clone, Debug)]
struct ContainerSpec {
    name: String,
    image: String,
    env: Vec<(String, String)>,
    labels: HashMap<String, String>,
    port: u16,
    /// Host mode: publish `port` on 127.0.0.1:`host_port`.
    host_port: Option<u16>,
    network: String,
    /// Named volume mounted at `data_mount`; `None` for stateless pool containers.
    volume: Option<String>,
    data_mount: String,
    memory_bytes: i64,
    nano_cpus: i64,
    pids_limit: i64,
    read_only_rootfs: bool,
    init: bool,
}

/// Label holding [`ContainerSpec::fingerprint`]: a stopped container whose
/// fingerprint differs from the current spec (new image, limits or env) is
/// recreated on its next start, on the same volume.
const SPEC_LABEL: &str = "spawngate.spec";

impl ContainerSpec {
    /// A short hash of everything that shapes the container. (Its text must not
    /// change: a new one recreates every stopped container.)
    fn fingerprint(&self) -> String {
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

/// Container names: `spawngate-u-<slug>` for users, `spawngate-pool-<instance>-<token>`
/// for pool spares. A user's volume is `spawngate-u-<slug>-data`, and a per-user
/// network is named like the container.
pub(super) fn container_name(instance: &str, env: &EnvId) -> String {
    match env {
        EnvId::User(slug) => format!("spawngate-{}", slug.segment()),
        EnvId::Pool(token) => format!("spawngate-pool-{instance}-{token}"),
        EnvId::Unrecognised(name) => name.clone(),
    }
}

pub(super) fn volume_name(slug: &Slug) -> String {
    format!("spawngate-{}-data", slug.segment())
}

/// The environment a container (or per-user network) name stands for.
pub(super) fn parse_name(instance: &str, name: &str) -> EnvId {
    let name = name.trim_start_matches('/');
    if let Some(token) = name
        .strip_prefix("spawngate-pool-")
        .and_then(|rest| rest.strip_prefix(instance))
        .and_then(|rest| rest.strip_prefix('-'))
    {
        return EnvId::Pool(token.to_owned());
    }
    match name
        .strip_prefix("spawngate-")
        .and_then(Slug::parse_segment)
    {
        Some(slug) => EnvId::User(slug),
        None => EnvId::Unrecognised(name.to_owned()),
    }
}

/// The oldest Engine API we support (Debian's Docker 20.10). Pinning it instead of
/// negotiating lets spawngate start while the daemon is down and work once it is up.
pub(super) const API_VERSION: bollard::ClientVersion = bollard::ClientVersion {
    major_version: 1,
    minor_version: 41,
};

/// How long a spawn waits for a container someone else is removing to be gone.
const REMOVAL_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

pub struct DockerRuntime {
    host: String,
    /// Created on first use and kept; bollard refuses to build a client for a
    /// socket that does not exist yet, and spawngate must start (and recover)
    /// while Docker is down.
    client: std::sync::Mutex<Option<Docker>>,
    mode: NetworkMode,
    /// Seconds Docker waits after SIGTERM before SIGKILL (`docker.stop_timeout_secs`).
    stop_timeout_secs: i32,
    instance: String,
    network_per_user: bool,
    attach_peers: bool,
    /// The shared network (`docker.network`): pool containers wait there.
    shared_network: String,
    /// spawngate's own container id when it runs in one (found once, lazily).
    own_id: tokio::sync::OnceCell<Option<String>>,
    /// Serializes network creation: Docker 20.10 happily creates several networks
    /// with one name when asked concurrently, and then refuses to use any of them.
    network_lock: tokio::sync::Mutex<()>,
    /// Networks known to exist, so a spawn does not inspect the network each time.
    /// Forgotten when Docker says a network is missing.
    known_networks: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Unix seconds from which the next event stream must replay Docker's events:
    /// set when a stream breaks, cleared once a new one is live. Events of the gap
    /// (a container removed while the stream was down) are not lost.
    events_gap: std::sync::Mutex<Option<i64>>,
    /// The last CPU reading per container (name → counters), so a look at the
    /// dashboard costs one one-shot stats call, the percent coming from the
    /// difference to the reading before.
    cpu_readings: std::sync::Mutex<HashMap<String, CpuReading>>,
}

/// A container's CPU counters at one moment (nanoseconds).
#[derive(Clone, Copy, Debug)]
struct CpuReading {
    total: u64,
    system: u64,
    online_cpus: u32,
    at: std::time::Instant,
}

/// A previous reading older than this is not a fair baseline (the percent would
/// average over minutes): take a fresh pair instead.
const CPU_READING_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(60);
/// Between the two readings of a fresh pair.
const CPU_SAMPLE_GAP: std::time::Duration = std::time::Duration::from_millis(300);

impl DockerRuntime {
    /// One one-shot stats reading: memory use and the CPU counters, or `None`
    /// when the container does not exist or is not running.
    async fn stats_once(
        &self,
        name: &str,
    ) -> Result<Option<(Usage, Option<CpuReading>)>, RuntimeError> {
        let options = StatsOptions {
            stream: false,
            one_shot: true,
        };
        let mut stream = self.docker()?.stats(name, Some(options));
        let stats = match stream.next().await {
            Some(Ok(stats)) => stats,
            Some(Err(e)) if status(&e) == Some(404) => return Ok(None),
            Some(Err(e)) => return Err(classify(e)),
            None => return Ok(None),
        };
        let memory = stats.memory_stats.unwrap_or_default();
        // A stopped container answers with empty stats.
        let Some(used) = memory.usage else {
            if let Ok(mut readings) = self.cpu_readings.lock() {
                readings.remove(name);
            }
            return Ok(None);
        };
        // What `docker stats` shows: the page cache the kernel can drop is not
        // the app's (cgroup v2 `inactive_file`, v1 `total_inactive_file`).
        let counters = memory.stats.unwrap_or_default();
        let cache = counters
            .get("inactive_file")
            .or_else(|| counters.get("total_inactive_file"))
            .copied()
            .unwrap_or(0);
        let cpu = stats.cpu_stats.unwrap_or_default();
        let reading = match (
            cpu.cpu_usage.and_then(|u| u.total_usage),
            cpu.system_cpu_usage,
        ) {
            (Some(total), Some(system)) => Some(CpuReading {
                total,
                system,
                online_cpus: cpu.online_cpus.unwrap_or(1).max(1),
                at: std::time::Instant::now(),
            }),
            _ => None,
        };
        let usage = Usage {
            cpu_percent: None,
            memory_bytes: Some(used.saturating_sub(cache)),
            memory_limit_bytes: memory.limit,
        };
        Ok(Some((usage, reading)))
    }
}

/// `docker stats`' CPU percent between two readings: the container's share of
/// the host's CPU time, times the CPUs (100 = one CPU busy).
fn cpu_percent(before: &CpuReading, now: &CpuReading) -> Option<f64> {
    let used = now.total.checked_sub(before.total)?;
    let system = now.system.checked_sub(before.system)?;
    if system == 0 {
        return None;
    }
    Some(used as f64 / system as f64 * f64::from(now.online_cpus) * 100.0)
}

/// Label on each per-user network, so peers (Traefik) can be attached to all of them.
const USER_NETWORK_LABEL: &str = "spawngate.user_network";

impl DockerRuntime {
    /// Validates the address; the connection itself is made on first use.
    pub fn connect(config: &crate::config::DockerConfig) -> Result<Self, RuntimeError> {
        let host = config
            .host
            .clone()
            .or_else(|| std::env::var("DOCKER_HOST").ok())
            .unwrap_or_else(|| "unix:///var/run/docker.sock".to_owned());
        if !(host.starts_with("unix://")
            || host.starts_with("tcp://")
            || host.starts_with("http://"))
        {
            return Err(RuntimeError::Failed(format!(
                "unsupported Docker host '{host}': use unix:///path or tcp://host:port"
            )));
        }
        Ok(DockerRuntime {
            host,
            client: std::sync::Mutex::new(None),
            mode: config.mode,
            stop_timeout_secs: i32::try_from(config.stop_timeout.as_secs()).unwrap_or(i32::MAX),
            instance: config.instance.clone(),
            network_per_user: config.network_per_user,
            attach_peers: config.attach_peers,
            shared_network: config.network.clone(),
            own_id: tokio::sync::OnceCell::new(),
            network_lock: tokio::sync::Mutex::new(()),
            known_networks: std::sync::Mutex::new(std::collections::HashSet::new()),
            events_gap: std::sync::Mutex::new(None),
            cpu_readings: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The Docker client (cheap to clone: it shares one connection pool).
    fn docker(&self) -> Result<Docker, RuntimeError> {
        let mut guard = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = guard.as_ref() {
            return Ok(d.clone());
        }
        let docker = match self.host.strip_prefix("unix://") {
            Some(path) => Docker::connect_with_unix(path, 120, &API_VERSION),
            None => Docker::connect_with_http(&self.host, 120, &API_VERSION),
        }
        .map_err(|e| RuntimeError::Unavailable(format!("{} ({})", e, self.host)))?;
        *guard = Some(docker.clone());
        Ok(docker)
    }

    /// spawngate's own container id, if it runs in a container on this daemon.
    async fn own_id(&self) -> Option<String> {
        self.own_id
            .get_or_init(|| async {
                let hostname = std::fs::read_to_string("/etc/hostname").ok()?;
                let docker = self.docker().ok()?;
                docker
                    .inspect_container(hostname.trim(), None)
                    .await
                    .ok()?
                    .id
            })
            .await
            .clone()
    }

    /// The address of spawngate's own container on `network` (for
    /// `server.listen_network`).
    pub async fn own_address(&self, network: &str) -> Result<std::net::IpAddr, RuntimeError> {
        let id = self.own_id().await.ok_or_else(|| {
            RuntimeError::Failed("server.listen_network is set, but spawngate does not run in a container of this Docker daemon".into())
        })?;
        let info = self
            .docker()?
            .inspect_container(&id, None)
            .await
            .map_err(classify)?;
        let ip = info
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|mut n| n.remove(network))
            .and_then(|e| e.ip_address)
            .filter(|ip| !ip.is_empty())
            .ok_or_else(|| {
                RuntimeError::Failed(format!(
                    "spawngate's container is not on network '{network}'"
                ))
            })?;
        ip.parse()
            .map_err(|_| RuntimeError::Failed(format!("bad address {ip:?} on network '{network}'")))
    }

    /// Connects `container` to `network`; already connected is fine.
    async fn connect_to(&self, network: &str, container: &str) -> Result<(), RuntimeError> {
        let req = bollard::models::NetworkConnectRequest {
            container: container.to_owned(),
            ..Default::default()
        };
        match self.docker()?.connect_network(network, req).await {
            Ok(()) => Ok(()),
            Err(BollardError::DockerResponseServerError { message, .. })
                if message.contains("already exists") =>
            {
                Ok(())
            }
            Err(e) => Err(classify(e)),
        }
    }

    /// Per-user networks: connect the peers (Traefik, by label) and spawngate itself
    /// (for readiness probes; it listens on another network only).
    async fn attach_peers_to(&self, network: &str) -> Result<(), RuntimeError> {
        if self.attach_peers {
            for peer in self.peers().await? {
                self.connect_to(network, &peer).await?;
            }
        }
        if let Some(own) = self.own_id().await {
            self.connect_to(network, &own).await?;
        }
        Ok(())
    }

    async fn peers(&self) -> Result<Vec<String>, RuntimeError> {
        let label = format!("spawngate.attach={}", self.instance);
        let list = self.labelled(&label, false).await?;
        Ok(list.into_iter().filter_map(|c| c.id).collect())
    }

    /// Containers carrying `label` (`key=value`); stopped ones too with `all`.
    async fn labelled(
        &self,
        label: &str,
        all: bool,
    ) -> Result<Vec<bollard::models::ContainerSummary>, RuntimeError> {
        let options = ListContainersOptions {
            all,
            filters: Some(HashMap::from([(
                "label".to_owned(),
                vec![label.to_owned()],
            )])),
            ..Default::default()
        };
        self.docker()?
            .list_containers(Some(options))
            .await
            .map_err(classify)
    }

    /// Removes a per-user network (named like its container), detaching peers first.
    async fn remove_user_network(&self, network: &str) -> Result<(), RuntimeError> {
        self.set_network_known(network, false);
        let info = match self.docker()?.inspect_network(network, None).await {
            Ok(info) => info,
            Err(e) if status(&e) == Some(404) => return Ok(()),
            Err(e) => return Err(classify(e)),
        };
        for endpoint in info.containers.unwrap_or_default().into_keys() {
            let req = bollard::models::NetworkDisconnectRequest {
                container: endpoint,
                force: Some(true),
            };
            let _ = self.docker()?.disconnect_network(network, req).await;
        }
        match self.docker()?.remove_network(network).await {
            Ok(()) => Ok(()),
            Err(e) if status(&e) == Some(404) => Ok(()),
            Err(e) => Err(classify(e)),
        }
    }

    /// The per-user networks labelled with `instance`.
    async fn user_networks(
        &self,
        instance: &str,
    ) -> Result<Vec<bollard::models::Network>, RuntimeError> {
        let options = bollard::query_parameters::ListNetworksOptions {
            filters: Some(HashMap::from([(
                "label".to_owned(),
                vec![
                    format!("spawngate.instance={instance}"),
                    format!("{USER_NETWORK_LABEL}=true"),
                ],
            )])),
        };
        self.docker()?
            .list_networks(Some(options))
            .await
            .map_err(classify)
    }

    /// Connects a (re)started peer to every user network of this instance.
    async fn attach_to_all_user_networks(&self, peer: &str) -> Result<(), RuntimeError> {
        let networks = self.user_networks(&self.instance).await?;
        for net in networks.into_iter().filter_map(|n| n.name) {
            self.connect_to(&net, peer).await?;
        }
        Ok(())
    }

    fn network_known(&self, name: &str) -> bool {
        self.known_networks
            .lock()
            .map(|k| k.contains(name))
            .unwrap_or(false)
    }

    fn set_network_known(&self, name: &str, known: bool) {
        if let Ok(mut k) = self.known_networks.lock() {
            if known {
                k.insert(name.to_owned());
            } else {
                k.remove(name);
            }
        }
    }

    async fn ensure_network(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        if self.network_known(&spec.network) {
            return Ok(());
        }
        let _creating = self.network_lock.lock().await;
        match self.docker()?.inspect_network(&spec.network, None).await {
            Ok(existing) => {
                let icc_off = existing
                    .options
                    .as_ref()
                    .and_then(|o| o.get("com.docker.network.bridge.enable_icc"))
                    .is_some_and(|v| v == "false");
                if !icc_off && self.mode == NetworkMode::Host {
                    return Err(RuntimeError::Failed(format!(
                        "network '{}' allows traffic between containers, so users could reach each other: host mode needs its own network (set docker.network to another name)",
                        spec.network
                    )));
                }
                if icc_off && self.mode == NetworkMode::Network {
                    return Err(RuntimeError::Failed(format!(
                        "network '{}' has inter-container traffic disabled (made for host mode?), so nothing could reach the container: set docker.network to another name",
                        spec.network
                    )));
                }
                if self.network_per_user {
                    // A peer recreated while spawngate was down may be missing.
                    self.attach_peers_to(&spec.network).await?;
                }
                self.set_network_known(&spec.network, true);
                return Ok(());
            }
            Err(e) if status(&e) == Some(404) => {}
            Err(e) => return Err(map_err(e, spec)),
        }
        let mut options = HashMap::new();
        if self.mode == NetworkMode::Host {
            // Users' containers must not talk to each other on the shared bridge; they
            // are reached from the host through their 127.0.0.1 port only.
            options.insert(
                "com.docker.network.bridge.enable_icc".to_owned(),
                "false".to_owned(),
            );
        }
        let mut labels: HashMap<String, String> = spec
            .labels
            .iter()
            .filter(|(k, _)| {
                k.as_str() == "spawngate.managed" || k.as_str() == "spawngate.instance"
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if self.network_per_user {
            labels.insert(USER_NETWORK_LABEL.into(), "true".into());
        }
        let req = NetworkCreateRequest {
            name: spec.network.clone(),
            driver: Some("bridge".into()),
            options: Some(options),
            labels: Some(labels),
            ..Default::default()
        };
        let ours = match self.docker()?.create_network(req).await {
            Ok(created) => Some(created.id),
            // Created concurrently by another spawn: fine.
            Err(e) if status(&e) == Some(409) => None,
            Err(e) => return Err(map_err(e, spec)),
        };
        self.converge_network(&spec.network, ours.as_deref())
            .await?;
        if self.network_per_user {
            self.attach_peers_to(&spec.network).await?;
        }
        self.set_network_known(&spec.network, true);
        Ok(())
    }

    /// Docker does not keep network names unique: two spawngate replicas whose
    /// first spawns race may each create `name`, after which every container
    /// naming it is refused as ambiguous. All agree on one (the oldest, then the
    /// lowest id): each removes its own duplicate, and one left by a replica that
    /// died meanwhile (no containers, older than a few seconds) goes too.
    async fn converge_network(&self, name: &str, ours: Option<&str>) -> Result<(), RuntimeError> {
        const ROUNDS: usize = 100;
        for round in 0..ROUNDS {
            let options = bollard::query_parameters::ListNetworksOptions {
                filters: Some(HashMap::from([("name".to_owned(), vec![name.to_owned()])])),
            };
            let mut same: Vec<bollard::models::Network> = self
                .docker()?
                .list_networks(Some(options))
                .await
                .map_err(classify)?
                .into_iter()
                // The filter matches substrings.
                .filter(|n| n.name.as_deref() == Some(name))
                .collect();
            if same.len() <= 1 {
                return Ok(());
            }
            same.sort_by(|a, b| (&a.created, &a.id).cmp(&(&b.created, &b.id)));
            for dup in &same[1..] {
                let Some(id) = dup.id.as_deref() else {
                    continue;
                };
                let abandoned = round > 30 && {
                    let inspected = self
                        .docker()?
                        .inspect_network(
                            id,
                            None::<bollard::query_parameters::InspectNetworkOptions>,
                        )
                        .await;
                    inspected.is_ok_and(|n| n.containers.is_none_or(|c| c.is_empty()))
                };
                if Some(id) == ours || abandoned {
                    match self.docker()?.remove_network(id).await {
                        Ok(()) => {}
                        Err(e) if status(&e) == Some(404) => {}
                        Err(e) => {
                            tracing::warn!(network = name, error = %e, "cannot remove a duplicate network")
                        }
                    }
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Err(RuntimeError::Failed(format!(
            "network '{name}' exists more than once and the duplicates would not go: remove all but one (docker network ls --filter name={name})"
        )))
    }

    /// Network and container (and with it the volume); returns the container's id.
    async fn create_fresh(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        match self.try_create(spec).await? {
            Some(id) => Ok(id),
            // Another spawn created it first; use whatever exists.
            None => match self.inspect_name(&spec.name).await? {
                Some((info, _)) => Ok(info.id),
                None => Err(RuntimeError::Failed(format!(
                    "container '{}' vanished while being created",
                    spec.name
                ))),
            },
        }
    }

    /// Network and container; `None` if a container of that name exists already.
    async fn try_create(&self, spec: &ContainerSpec) -> Result<Option<String>, RuntimeError> {
        self.ensure_network(spec).await?;
        match self.create(spec).await {
            Err(RuntimeError::Failed(msg))
                if msg.contains("network") && msg.contains("not found") =>
            {
                // Removed behind our back: forget it, make it again, retry once.
                self.set_network_known(&spec.network, false);
                self.ensure_network(spec).await?;
                self.create(spec).await
            }
            Err(RuntimeError::Failed(msg)) if msg.contains("is ambiguous") => {
                // Another replica made the same network a moment after this one
                // looked: wait until the duplicates have converged, retry once.
                self.converge_network(&spec.network, None).await?;
                self.create(spec).await
            }
            other => other,
        }
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<Option<String>, RuntimeError> {
        let port_key = format!("{}/tcp", spec.port);
        let port_bindings = spec.host_port.map(|hp| {
            HashMap::from([(
                port_key.clone(),
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(hp.to_string()),
                }]),
            )])
        });
        let host_config = HostConfig {
            memory: Some(spec.memory_bytes),
            // Same as memory: no swap on top of the limit.
            memory_swap: Some(spec.memory_bytes),
            nano_cpus: Some(spec.nano_cpus),
            pids_limit: Some(spec.pids_limit),
            security_opt: Some(vec!["no-new-privileges:true".into()]),
            cap_drop: Some(vec!["ALL".into()]),
            readonly_rootfs: Some(spec.read_only_rootfs),
            init: Some(spec.init),
            tmpfs: spec.read_only_rootfs.then(|| {
                HashMap::from([("/tmp".to_owned(), "rw,noexec,nosuid,size=64m".to_owned())])
            }),
            mounts: Some(
                spec.volume
                    .iter()
                    .map(|volume| Mount {
                        typ: Some(MountType::VOLUME),
                        source: Some(volume.clone()),
                        target: Some(spec.data_mount.clone()),
                        // Docker creates a missing volume with these labels (one call
                        // fewer on a cold start); an existing one is used unchanged.
                        volume_options: Some(MountVolumeOptions {
                            labels: Some(spec.labels.clone()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .collect(),
            ),
            network_mode: Some(spec.network.clone()),
            port_bindings,
            // Bounded logs: a chatty app must not fill the host's disk.
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".into()),
                config: Some(HashMap::from([
                    ("max-size".to_owned(), "10m".to_owned()),
                    ("max-file".to_owned(), "2".to_owned()),
                ])),
            }),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(spec.labels.clone()),
            exposed_ports: Some(vec![port_key]),
            host_config: Some(host_config),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(spec.name.clone()),
            ..Default::default()
        };
        match self.docker()?.create_container(Some(options), body).await {
            Ok(created) => Ok(Some(created.id)),
            Err(e) if status(&e) == Some(409) => Ok(None),
            Err(e) => Err(map_err(e, spec)),
        }
    }

    /// The existing container, unless it is stopped and was made from an older spec:
    /// then it is removed (never its volume) so it is recreated with the new one.
    /// A running container is left alone; the change applies at its next start.
    async fn current(&self, spec: &ContainerSpec) -> Result<Option<ContainerInfo>, RuntimeError> {
        let Some((info, labels)) = self.inspect_name(&spec.name).await? else {
            return Ok(None);
        };
        let stale = labels.get(SPEC_LABEL) != spec.labels.get(SPEC_LABEL);
        if stale && info.state == RunState::Stopped {
            tracing::info!(container = %spec.name, "container spec changed: recreating it on the same volume");
            self.remove_name(&spec.name, None).await?;
            return Ok(None);
        }
        Ok(Some(info))
    }

    /// Starts (or unpauses) the container, creating it first if there is none.
    /// `fresh`: none is expected, so creating comes first (one call fewer on a cold
    /// start); one that exists after all is looked at as usual.
    async fn ensure_running_once(
        &self,
        spec: &ContainerSpec,
        fresh: bool,
    ) -> Result<Running, RuntimeError> {
        if fresh && let Some(id) = self.try_create(spec).await? {
            self.start(spec).await?;
            return Ok(Running {
                id,
                running_since: None,
            });
        }
        if let Some(info) = self.current(spec).await? {
            if self.network_per_user {
                self.ensure_network(spec).await?;
            }
            if info.state == RunState::Running {
                return Ok(Running {
                    id: info.id,
                    running_since: info.started_at,
                });
            }
            if info.state == RunState::Paused {
                self.docker()?
                    .unpause_container(&spec.name)
                    .await
                    .map_err(|e| map_err(e, spec))?;
            } else {
                self.start(spec).await?;
            }
            return Ok(Running {
                id: info.id,
                running_since: None,
            });
        }
        let id = self.create_fresh(spec).await?;
        self.start(spec).await?;
        Ok(Running {
            id,
            running_since: None,
        })
    }

    /// Waits (bounded) until the container `name` no longer exists.
    async fn wait_gone(&self, name: &str) -> Result<(), RuntimeError> {
        let deadline = tokio::time::Instant::now() + REMOVAL_WAIT;
        while self.inspect_name(name).await?.is_some() {
            if tokio::time::Instant::now() >= deadline {
                return Err(RuntimeError::Failed(format!(
                    "container {name} is still being removed after {} s",
                    REMOVAL_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Ok(())
    }

    async fn start(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        match self.docker()?.start_container(&spec.name, None).await {
            // 304: already running.
            Ok(()) => Ok(()),
            Err(e) if status(&e) == Some(304) => Ok(()),
            Err(e) => Err(map_err(e, spec)),
        }
    }
}

/// Docker's refusal to start (or unpause) a container that is being removed.
fn being_removed(msg: &str) -> bool {
    msg.contains("marked for removal") || msg.contains("removal of container")
}

pub(super) fn status(e: &BollardError) -> Option<u16> {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn map_err(e: BollardError, spec: &ContainerSpec) -> RuntimeError {
    match e {
        BollardError::DockerResponseServerError {
            status_code: 404,
            message,
        } if message.contains("image") => RuntimeError::ImageMissing(spec.image.clone()),
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => RuntimeError::Failed(format!("Docker refused ({status_code}): {message}")),
        other => classify(other),
    }
}

/// Errors without a Docker answer mean the daemon could not be reached.
pub(super) fn classify(e: BollardError) -> RuntimeError {
    match e {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => RuntimeError::Failed(format!("Docker refused ({status_code}): {message}")),
        BollardError::JsonDataError { .. } | BollardError::JsonSerdeError { .. } => {
            RuntimeError::Failed(format!("unexpected answer from Docker: {e}"))
        }
        other => RuntimeError::Unavailable(other.to_string()),
    }
}

impl DockerRuntime {
    /// The container as Docker is to make it.
    fn plan(&self, spec: &EnvironmentSpec) -> ContainerSpec {
        let name = container_name(&self.instance, &spec.env_id);
        let mut labels = HashMap::from([
            ("spawngate.managed".to_owned(), "true".to_owned()),
            ("spawngate.instance".to_owned(), self.instance.clone()),
        ]);
        let mut volume = None;
        match &spec.env_id {
            EnvId::User(slug) => {
                labels.insert("spawngate.slug".into(), slug.to_string());
                volume = spec.data_mount.as_ref().map(|_| volume_name(slug));
            }
            EnvId::Pool(_) => {
                labels.insert("spawngate.pool".into(), "true".into());
            }
            EnvId::Unrecognised(_) => {}
        }
        if let Some(owner) = &spec.owner {
            labels.insert("spawngate.user".into(), owner.name.clone());
            labels.insert("spawngate.user_id".into(), owner.id.to_string());
        }
        let network = match spec.isolation {
            // Per-user networks are named like the container.
            Isolation::OwnNetwork => name.clone(),
            Isolation::Shared => self.shared_network.clone(),
        };
        let mut plan = ContainerSpec {
            name,
            image: spec.image.clone(),
            env: spec.env.clone(),
            labels,
            port: spec.port,
            host_port: match self.mode {
                NetworkMode::Host => spec.host_port,
                NetworkMode::Network | NetworkMode::Swarm => None,
            },
            network,
            volume,
            data_mount: spec.data_mount.clone().unwrap_or_default(),
            memory_bytes: spec.memory_bytes,
            nano_cpus: (spec.cpus * 1e9).round() as i64,
            pids_limit: spec.pids_limit,
            read_only_rootfs: spec.read_only_rootfs,
            init: spec.init,
        };
        // Pool spares are never stopped and restarted, so never recreated.
        if matches!(spec.env_id, EnvId::User(_)) {
            let fingerprint = plan.fingerprint();
            plan.labels.insert(SPEC_LABEL.into(), fingerprint);
        }
        plan
    }

    fn name_of(&self, env: &EnvId) -> String {
        container_name(&self.instance, env)
    }

    /// The container `name` and its labels, if it exists.
    async fn inspect_name(
        &self,
        name: &str,
    ) -> Result<Option<(ContainerInfo, HashMap<String, String>)>, RuntimeError> {
        match self.docker()?.inspect_container(name, None).await {
            Ok(c) => {
                let state = c.state.unwrap_or_default();
                let paused = state.paused.unwrap_or(false);
                let run_state = match (state.running.unwrap_or(false), paused) {
                    (_, true) => RunState::Paused,
                    (true, false) => RunState::Running,
                    (false, false) => RunState::Stopped,
                };
                Ok(Some((
                    ContainerInfo {
                        id: c.id.unwrap_or_default(),
                        state: run_state,
                        started_at: state.started_at.filter(|s| !s.starts_with("0001")),
                        finished_at: state.finished_at.filter(|s| !s.starts_with("0001")),
                        exit_code: state.exit_code,
                        failure: None,
                    },
                    c.config.and_then(|c| c.labels).unwrap_or_default(),
                )))
            }
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(classify(e)),
        }
    }

    async fn stop_name(&self, name: &str, grace_secs: i32) -> Result<(), RuntimeError> {
        let options = StopContainerOptions {
            t: Some(grace_secs),
            ..Default::default()
        };
        match self.docker()?.stop_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if matches!(status(&e), Some(304) | Some(404)) => Ok(()),
            Err(e) => Err(classify(e)),
        }
    }

    async fn remove_name(&self, name: &str, volume: Option<&str>) -> Result<(), RuntimeError> {
        // Stop first, with the configured grace: the app gets its SIGTERM and may
        // save its state (a forced removal would SIGKILL it). Already stopped or
        // missing is a no-op.
        self.stop_name(name, self.stop_timeout_secs).await?;
        let options = RemoveContainerOptions {
            force: true,
            // Anonymous volumes only (an image's `VOLUME` that nothing named was
            // mounted over, as in pool containers); named user volumes stay.
            v: true,
            ..Default::default()
        };
        match self.docker()?.remove_container(name, Some(options)).await {
            Ok(()) => {}
            Err(e) if status(&e) == Some(404) => {}
            Err(e) => return Err(classify(e)),
        }
        if self.network_per_user {
            self.remove_user_network(name).await?;
        }
        if let Some(volume) = volume {
            self.remove_volume(volume).await?;
        }
        Ok(())
    }

    async fn remove_volume(&self, volume: &str) -> Result<(), RuntimeError> {
        match self
            .docker()?
            .remove_volume(volume, None::<RemoveVolumeOptions>)
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if status(&e) == Some(404) => Ok(()),
            Err(e) => Err(classify(e)),
        }
    }
}

#[async_trait]
impl Runtime for DockerRuntime {
    fn name(&self, env: &EnvId) -> String {
        self.name_of(env)
    }

    fn address(&self, env: &EnvId, host_port: Option<u16>, port: u16) -> String {
        match (self.mode, host_port, env) {
            (NetworkMode::Host, Some(host), EnvId::User(_)) => format!("http://127.0.0.1:{host}"),
            _ => format!("http://{}:{port}", self.name_of(env)),
        }
    }

    async fn ping(&self) -> Result<(), RuntimeError> {
        self.docker()?.ping().await.map(|_| ()).map_err(classify)
    }

    async fn image_present(&self, image: &str) -> Result<bool, RuntimeError> {
        match self.docker()?.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) if status(&e) == Some(404) => Ok(false),
            Err(e) => Err(classify(e)),
        }
    }

    async fn adopt_pooled(
        &self,
        pooled: &EnvId,
        spec: &EnvironmentSpec,
    ) -> Result<(), RuntimeError> {
        let spec = self.plan(spec);
        let options = bollard::query_parameters::RenameContainerOptions {
            name: spec.name.clone(),
        };
        self.docker()?
            .rename_container(&self.name_of(pooled), options)
            .await
            .map_err(|e| map_err(e, &spec))?;
        if self.network_per_user && spec.network != self.shared_network {
            self.ensure_network(&spec).await?;
            self.connect_to(&spec.network, &spec.name).await?;
            let req = bollard::models::NetworkDisconnectRequest {
                container: spec.name.clone(),
                force: Some(true),
            };
            self.docker()?
                .disconnect_network(&self.shared_network, req)
                .await
                .map_err(classify)?;
        }
        Ok(())
    }

    async fn ensure_running(&self, env: &EnvironmentSpec) -> Result<Running, RuntimeError> {
        let spec = self.plan(env);
        match self.ensure_running_once(&spec, env.fresh).await {
            // `docker rm -f` under way: its `die` event arrives (and a request kicks a
            // spawn) before the container is gone, and Docker refuses to start it.
            // Wait for it to go, then make a new one on the same volume.
            Err(RuntimeError::Failed(msg)) if being_removed(&msg) => {
                self.wait_gone(&spec.name).await?;
                self.ensure_running_once(&spec, true).await
            }
            other => other,
        }
    }

    async fn ensure_created(&self, spec: &EnvironmentSpec) -> Result<String, RuntimeError> {
        let spec = self.plan(spec);
        match self.current(&spec).await? {
            Some(info) => Ok(info.id),
            None => self.create_fresh(&spec).await,
        }
    }

    async fn inspect(&self, env: &EnvId) -> Result<Option<ContainerInfo>, RuntimeError> {
        Ok(self
            .inspect_name(&self.name_of(env))
            .await?
            .map(|(info, _)| info))
    }

    async fn stop(&self, env: &EnvId, grace: std::time::Duration) -> Result<(), RuntimeError> {
        let grace = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
        self.stop_name(&self.name_of(env), grace).await
    }

    async fn pause(&self, env: &EnvId) -> Result<(), RuntimeError> {
        self.docker()?
            .pause_container(&self.name_of(env))
            .await
            .map_err(classify)
    }

    async fn list(&self) -> Result<Vec<ContainerSummary>, RuntimeError> {
        let list = self
            .labelled(&format!("spawngate.instance={}", self.instance), true)
            .await?;
        Ok(list
            .into_iter()
            .map(|c| {
                let name = c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .unwrap_or_default();
                let labels = c.labels.unwrap_or_default();
                // Docker's states: created, running, paused, restarting, removing,
                // exited, dead.
                let state = match c.state.map(|s| s.to_string()).as_deref() {
                    Some("running") => RunState::Running,
                    Some("paused") => RunState::Paused,
                    _ => RunState::Stopped,
                };
                ContainerSummary {
                    env_id: parse_name(&self.instance, &name),
                    id: c.id.unwrap_or_default(),
                    state,
                    pooled: labels.get("spawngate.pool").map(String::as_str) == Some("true"),
                    owner_id: labels.get("spawngate.user_id").cloned(),
                }
            })
            .collect())
    }

    async fn exec(
        &self,
        env: &EnvId,
        req: &super::ExecRequest,
    ) -> Result<super::Exec, RuntimeError> {
        self.exec_in(env, req).await
    }

    async fn exec_resize(&self, exec_id: &str, size: super::TtySize) -> Result<(), RuntimeError> {
        self.resize(exec_id, size).await
    }

    async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>, RuntimeError> {
        self.exit_code(exec_id).await
    }

    async fn port_address(
        &self,
        env: &EnvId,
        port: u16,
    ) -> Result<Option<std::net::SocketAddr>, RuntimeError> {
        self.own_port(env, port).await
    }

    async fn network_bytes(&self, env: &EnvId) -> Result<Option<u64>, RuntimeError> {
        let options = StatsOptions {
            stream: false,
            one_shot: true,
        };
        let mut stream = self.docker()?.stats(&self.name_of(env), Some(options));
        match stream.next().await {
            Some(Ok(stats)) => Ok(stats.networks.map(|nets| {
                nets.values()
                    .map(|n| n.rx_bytes.unwrap_or(0) + n.tx_bytes.unwrap_or(0))
                    .sum()
            })),
            Some(Err(e)) if status(&e) == Some(404) => Ok(None),
            Some(Err(e)) => Err(classify(e)),
            None => Ok(None),
        }
    }

    async fn stats(&self, env: &EnvId) -> Result<Option<Usage>, RuntimeError> {
        let name = self.name_of(env);
        let Some(first) = self.stats_once(&name).await? else {
            return Ok(None);
        };
        let before = self
            .cpu_readings
            .lock()
            .ok()
            .and_then(|r| r.get(&name).copied())
            .filter(|r| r.at.elapsed() < CPU_READING_MAX_AGE);
        let (mut usage, reading) = first;
        let reading = match (before, reading) {
            (Some(before), Some(now)) => {
                usage.cpu_percent = cpu_percent(&before, &now);
                Some(now)
            }
            // No baseline: a second reading a moment later.
            (None, Some(now)) => {
                tokio::time::sleep(CPU_SAMPLE_GAP).await;
                match self.stats_once(&name).await? {
                    Some((second, Some(later))) => {
                        usage = second;
                        usage.cpu_percent = cpu_percent(&now, &later);
                        Some(later)
                    }
                    _ => Some(now),
                }
            }
            (_, None) => None,
        };
        if let (Some(reading), Ok(mut readings)) = (reading, self.cpu_readings.lock()) {
            // Bounded by the containers that exist; stopped ones are dropped below.
            readings.insert(name, reading);
        }
        Ok(Some(usage))
    }

    async fn logs(&self, env: &EnvId, tail: usize) -> Result<Vec<String>, RuntimeError> {
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            tail: tail.to_string(),
            ..Default::default()
        };
        let mut stream = self.docker()?.logs(&self.name_of(env), Some(options));
        let mut out = String::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(output) => out.push_str(&String::from_utf8_lossy(&output.into_bytes())),
                Err(e) if status(&e) == Some(404) => return Ok(Vec::new()),
                Err(e) => return Err(classify(e)),
            }
        }
        Ok(out.lines().map(str::to_owned).collect())
    }

    async fn remove(&self, env: &EnvId, with_volume: bool) -> Result<(), RuntimeError> {
        let volume = match env {
            EnvId::User(slug) if with_volume => Some(volume_name(slug)),
            _ => None,
        };
        self.remove_name(&self.name_of(env), volume.as_deref())
            .await
    }

    async fn resources(&self) -> Result<Vec<Resource>, RuntimeError> {
        let mut out = Vec::new();
        let options = bollard::query_parameters::ListVolumesOptions {
            filters: Some(HashMap::from([(
                "label".to_owned(),
                vec![format!("spawngate.instance={}", self.instance)],
            )])),
        };
        let volumes = self
            .docker()?
            .list_volumes(Some(options))
            .await
            .map_err(classify)?;
        for v in volumes.volumes.unwrap_or_default() {
            // `spawngate-u-<slug>-data`: which environment it holds the data of.
            let env_id = v
                .name
                .strip_prefix("spawngate-")
                .and_then(|rest| rest.strip_suffix("-data"))
                .and_then(Slug::parse_segment)
                .map(EnvId::User);
            out.push(Resource {
                kind: ResourceKind::Volume,
                owner_id: v.labels.get("spawngate.user_id").cloned(),
                env_id,
                name: v.name,
            });
        }
        for n in self.user_networks(&self.instance).await? {
            if let Some(name) = n.name {
                out.push(Resource {
                    kind: ResourceKind::UserNetwork,
                    owner_id: None,
                    env_id: Some(parse_name(&self.instance, &name)),
                    name,
                });
            }
        }
        Ok(out)
    }

    async fn remove_resource(&self, resource: &Resource) -> Result<(), RuntimeError> {
        match resource.kind {
            ResourceKind::UserNetwork => self.remove_user_network(&resource.name).await,
            ResourceKind::Volume => self.remove_volume(&resource.name).await,
        }
    }

    async fn watch_events(
        &self,
        on_gone: &(dyn Fn(ContainerGone) + Send + Sync),
    ) -> Result<(), RuntimeError> {
        let filters = HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            (
                "event".to_owned(),
                vec![
                    "die".to_owned(),
                    "destroy".to_owned(),
                    "pause".to_owned(),
                    "start".to_owned(),
                ],
            ),
        ]);
        let gap = *self.events_gap.lock().unwrap_or_else(|p| p.into_inner());
        let options = EventsOptions {
            since: gap.map(|t| t.to_string()),
            filters: Some(filters),
            ..Default::default()
        };
        let result = self.follow_events(options, on_gone, gap).await;
        // Broken (or never connected): the next stream replays from here, unless an
        // earlier gap is still open.
        let mut open = self.events_gap.lock().unwrap_or_else(|p| p.into_inner());
        open.get_or_insert(crate::time::unix_now() - EVENTS_REPLAY_MARGIN_SECS);
        result
    }
}

/// Events this close before a break may not have reached us: replay them too
/// (seeing an event twice is harmless, missing one is not).
const EVENTS_REPLAY_MARGIN_SECS: i64 = 2;

/// A stream open this long (or that delivered an event) is live: the gap it
/// replayed is closed.
const EVENTS_LIVE_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

impl DockerRuntime {
    async fn follow_events(
        &self,
        options: EventsOptions,
        on_gone: &(dyn Fn(ContainerGone) + Send + Sync),
        gap: Option<i64>,
    ) -> Result<(), RuntimeError> {
        let mut stream = self.docker()?.events(Some(options));
        let live_after = tokio::time::sleep(EVENTS_LIVE_AFTER);
        tokio::pin!(live_after);
        let mut live = false;
        loop {
            let event = tokio::select! {
                event = stream.next() => event,
                _ = &mut live_after, if !live => {
                    live = true;
                    self.close_events_gap(gap);
                    continue;
                }
            };
            let Some(event) = event else { break };
            let event = event.map_err(classify)?;
            if !live {
                live = true;
                self.close_events_gap(gap);
            }
            let action = event.action.unwrap_or_default();
            let Some(actor) = event.actor else { continue };
            let mut attrs = actor.attributes.unwrap_or_default();
            // Filtered here, not by the daemon: Docker ANDs several label filters,
            // and we want ours OR our peers'.
            let instance = Some(self.instance.as_str());
            let is_peer = attrs.get("spawngate.attach").map(String::as_str) == instance;
            let is_ours = attrs.get("spawngate.instance").map(String::as_str) == instance;
            if !is_peer && !is_ours {
                continue;
            }
            if action == "start" {
                // A recreated Traefik container must rejoin every user network.
                if is_peer
                    && self.network_per_user
                    && let Some(id) = actor.id
                    && let Err(e) = self.attach_to_all_user_networks(&id).await
                {
                    tracing::warn!(error = %e, "cannot attach a restarted peer to user networks");
                }
                continue;
            }
            if !is_peer
                && let Some(name) = attrs.remove("name")
                && let EnvId::User(slug) = parse_name(&self.instance, &name)
            {
                on_gone(ContainerGone {
                    slug,
                    paused: action == "pause",
                });
            }
        }
        Ok(())
    }

    fn close_events_gap(&self, gap: Option<i64>) {
        if let Some(since) = gap {
            tracing::info!(
                since,
                "Docker event stream resumed; events since the break replayed"
            );
        }
        *self.events_gap.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Owner;

    #[test]
    fn cpu_percent_is_docker_stats_formula() {
        let at = std::time::Instant::now();
        let reading = |total, system| CpuReading {
            total,
            system,
            online_cpus: 4,
            at,
        };
        // A quarter of the host's CPU time on four CPUs: one CPU busy.
        let p = cpu_percent(&reading(1_000, 10_000), &reading(2_000, 14_000)).unwrap();
        assert!((p - 100.0).abs() < 1e-9, "{p}");
        assert_eq!(
            cpu_percent(&reading(1_000, 10_000), &reading(1_000, 10_000)),
            None
        );
        // Counters that went back (a restart in between) measure nothing.
        assert_eq!(
            cpu_percent(&reading(5_000, 10_000), &reading(1_000, 20_000)),
            None
        );
    }

    fn runtime(toml: &str) -> DockerRuntime {
        let config = crate::config::Config::from_sources(toml, Vec::new()).unwrap();
        DockerRuntime::connect(&config.docker).unwrap()
    }

    fn user_spec(slug: &Slug) -> EnvironmentSpec {
        EnvironmentSpec {
            env_id: EnvId::User(slug.clone()),
            owner: Some(Owner {
                id: crate::ids::UserId::generate(),
                name: "alice".into(),
            }),
            image: "app:1".into(),
            env: vec![("B".into(), "2".into()), ("A".into(), "1".into())],
            port: 8080,
            host_port: Some(40001),
            data_mount: Some("/data".into()),
            memory_bytes: 512 << 20,
            cpus: 0.5,
            pids_limit: 256,
            read_only_rootfs: false,
            init: true,
            isolation: Isolation::Shared,
            fresh: false,
        }
    }

    #[test]
    fn names_parse_back_to_their_environment() {
        let rt = runtime("[docker]\ninstance = \"prod\"");
        let slug = Slug::parse("0123456789ab").unwrap();
        for env in [
            EnvId::User(slug.clone()),
            EnvId::Pool("1a2b3c4d".into()),
            EnvId::Unrecognised("hand-made".into()),
        ] {
            assert_eq!(parse_name("prod", &rt.name_of(&env)), env);
        }
        assert_eq!(
            rt.name_of(&EnvId::User(slug.clone())),
            "spawngate-u-0123456789ab"
        );
        assert_eq!(
            parse_name("prod", "/spawngate-u-0123456789ab"),
            EnvId::User(slug),
            "Docker's leading slash"
        );
        // Another instance's spare is not ours to name.
        assert!(matches!(
            parse_name("prod", "spawngate-pool-test-1a2b"),
            EnvId::Unrecognised(_)
        ));
    }

    #[test]
    fn host_mode_publishes_the_users_port_and_network_mode_uses_dns() {
        let slug = Slug::parse("0123456789ab").unwrap();
        let user = EnvId::User(slug.clone());
        let host = runtime("");
        assert_eq!(
            host.address(&user, Some(40001), 8080),
            "http://127.0.0.1:40001"
        );
        assert_eq!(host.plan(&user_spec(&slug)).host_port, Some(40001));
        let net = runtime("[docker]\nmode = \"network\"");
        assert_eq!(
            net.address(&user, Some(40001), 8080),
            "http://spawngate-u-0123456789ab:8080"
        );
        assert_eq!(net.plan(&user_spec(&slug)).host_port, None);
    }

    #[test]
    fn a_user_plan_keeps_the_names_labels_and_fingerprint_of_before() {
        let rt = runtime("");
        let slug = Slug::parse("0123456789ab").unwrap();
        let plan = rt.plan(&user_spec(&slug));
        assert_eq!(plan.name, "spawngate-u-0123456789ab");
        assert_eq!(plan.network, rt.shared_network);
        assert_eq!(
            plan.volume.as_deref(),
            Some("spawngate-u-0123456789ab-data")
        );
        assert_eq!(plan.nano_cpus, 500_000_000);
        for key in [
            "spawngate.managed",
            "spawngate.instance",
            "spawngate.user",
            "spawngate.user_id",
            "spawngate.slug",
            SPEC_LABEL,
        ] {
            assert!(plan.labels.contains_key(key), "{key}");
        }
        // The fingerprint's text is what earlier versions hashed: changing it would
        // recreate every stopped container on upgrade.
        use sha2::{Digest, Sha256};
        let text = format!(
            "app:1|[(\"A\", \"1\"), (\"B\", \"2\")]|8080|Some(40001)|{}|Some(\"spawngate-u-0123456789ab-data\")|/data|536870912|500000000|256|false|true",
            rt.shared_network
        );
        assert_eq!(
            plan.labels[SPEC_LABEL],
            hex::encode(&Sha256::digest(text.as_bytes())[..8])
        );

        let own = rt.plan(&EnvironmentSpec {
            isolation: Isolation::OwnNetwork,
            ..user_spec(&slug)
        });
        assert_eq!(own.network, own.name, "a per-user network is named like it");
    }

    #[test]
    fn pool_spares_have_no_volume_owner_or_fingerprint() {
        let rt = runtime("");
        let plan = rt.plan(&EnvironmentSpec {
            env_id: EnvId::Pool("1a2b".into()),
            owner: None,
            data_mount: None,
            host_port: None,
            ..user_spec(&Slug::parse("0123456789ab").unwrap())
        });
        assert_eq!(plan.name, "spawngate-pool-default-1a2b");
        assert_eq!(plan.volume, None);
        assert_eq!(
            plan.labels.get("spawngate.pool").map(String::as_str),
            Some("true")
        );
        assert!(!plan.labels.contains_key("spawngate.user_id"));
        assert!(!plan.labels.contains_key(SPEC_LABEL));
    }
}
