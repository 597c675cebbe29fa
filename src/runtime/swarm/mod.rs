//! [`Runtime`] over Docker Swarm: each user environment is a replicated service
//! with 0 or 1 replicas (stopped or running), named and labelled like the Docker
//! backend's containers. The service is the record and the lock: its name is
//! unique in the cluster, so a create racing another gets a conflict and adopts
//! the service that won, and its spec (labels, placement pin) survives crashes of
//! spawngate. Everything here talks to a manager's API; only the per-task extras
//! (traffic counters) read the local engine.

use std::collections::HashMap;

use async_trait::async_trait;
use bollard::Docker;
use bollard::models::{
    EndpointPortConfig, EndpointPortConfigPublishModeEnum, EndpointSpec, EndpointSpecModeEnum,
    Limit, Mount, MountTmpfsOptions, MountType, MountVolumeOptions, MountVolumeOptionsDriverConfig,
    NetworkAttachmentConfig, NetworkCreateRequest, ServiceSpec, ServiceSpecMode,
    ServiceSpecModeReplicated, ServiceSpecUpdateConfig, ServiceSpecUpdateConfigFailureActionEnum,
    Task, TaskSpec, TaskSpecContainerSpec, TaskSpecContainerSpecPrivileges, TaskSpecLogDriver,
    TaskSpecPlacement, TaskSpecResources, TaskSpecRestartPolicy,
    TaskSpecRestartPolicyConditionEnum, TaskState,
};
use bollard::query_parameters::{
    EventsOptions, InspectServiceOptions, ListContainersOptions, ListServicesOptions,
    ListTasksOptions, LogsOptions, RemoveVolumeOptions, StatsOptions, UpdateServiceOptions,
};
use futures_util::StreamExt;

use super::docker::{API_VERSION, classify, container_name, parse_name, status, volume_name};
use super::{
    Capabilities, ContainerGone, ContainerInfo, ContainerSummary, EnvId, EnvironmentSpec,
    Isolation, Resource, ResourceKind, Running, Runtime, RuntimeError,
};
use crate::config::{DockerConfig, SwarmConfig, SwarmPublish};

/// Label holding the spec fingerprint: a stopped service whose fingerprint
/// differs from the current spec is given the new spec on its next start.
const SPEC_LABEL: &str = "spawngate.spec";
/// Label on per-user overlay networks.
const USER_NETWORK_LABEL: &str = "spawngate.user_network";
/// Swarm's own label on task containers: the service they belong to.
const SERVICE_NAME_LABEL: &str = "com.docker.swarm.service.name";

/// How long a stop or removal waits for the task to be gone beyond the stop grace.
const SETTLE_MARGIN: std::time::Duration = std::time::Duration::from_secs(15);
/// Between looks at a task that is stopping.
const SETTLE_POLL: std::time::Duration = std::time::Duration::from_millis(50);

pub struct SwarmRuntime {
    host: String,
    /// Created on first use (see [`super::DockerRuntime`]: spawngate starts while
    /// the daemon is down).
    client: std::sync::Mutex<Option<Docker>>,
    instance: String,
    /// The overlay every environment joins unless it has its own (`docker.network`).
    shared_network: String,
    network_per_user: bool,
    stop_grace: std::time::Duration,
    swarm: SwarmConfig,
    /// The node this manager runs on (host publishing pins services to it).
    own_node: tokio::sync::OnceCell<String>,
    /// Serializes network creation (Docker happily makes two networks of one name).
    network_lock: tokio::sync::Mutex<()>,
    known_networks: std::sync::Mutex<std::collections::HashSet<String>>,
}

mod state;

use state::{Observed, parse_time, starting};

impl SwarmRuntime {
    pub fn connect(config: &DockerConfig) -> Result<Self, RuntimeError> {
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
        Ok(SwarmRuntime {
            host,
            client: std::sync::Mutex::new(None),
            instance: config.instance.clone(),
            shared_network: config.network.clone(),
            network_per_user: config.network_per_user,
            stop_grace: config.stop_timeout,
            swarm: config.swarm.clone(),
            own_node: tokio::sync::OnceCell::new(),
            network_lock: tokio::sync::Mutex::new(()),
            known_networks: std::sync::Mutex::new(std::collections::HashSet::new()),
        })
    }

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

    fn name_of(&self, env: &EnvId) -> String {
        container_name(&self.instance, env)
    }

    /// The node id of the engine we talk to; an error when it is no swarm manager.
    async fn own_node(&self) -> Result<String, RuntimeError> {
        self.own_node
            .get_or_try_init(|| async {
                let info = self.docker()?.info().await.map_err(classify)?;
                let swarm = info.swarm.unwrap_or_default();
                match (swarm.node_id, swarm.control_available) {
                    (Some(id), Some(true)) if !id.is_empty() => Ok(id),
                    _ => Err(RuntimeError::Failed(
                        "docker.mode = \"swarm\" needs a swarm manager: this Docker engine is not one (docker swarm init, or point docker.host at a manager)".into(),
                    )),
                }
            })
            .await
            .cloned()
    }

    /// The service as Swarm is to make it (replicas 1).
    async fn plan(&self, spec: &EnvironmentSpec) -> Result<ServiceSpec, RuntimeError> {
        let name = self.name_of(&spec.env_id);
        let mut labels = HashMap::from([
            ("spawngate.managed".to_owned(), "true".to_owned()),
            ("spawngate.instance".to_owned(), self.instance.clone()),
        ]);
        let mut volume = None;
        match &spec.env_id {
            EnvId::User(slug) => {
                labels.insert("spawngate.slug".into(), slug.to_string());
                volume = spec.data_mount.as_ref().map(|m| (volume_name(slug), m));
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
            Isolation::OwnNetwork => name.clone(),
            Isolation::Shared => self.shared_network.clone(),
        };
        let mut mounts: Vec<Mount> = volume
            .iter()
            .map(|(volume, target)| Mount {
                typ: Some(MountType::VOLUME),
                source: Some(volume.clone()),
                target: Some((*target).clone()),
                volume_options: Some(MountVolumeOptions {
                    labels: Some(labels.clone()),
                    driver_config: self.swarm.volume_driver.as_ref().map(|driver| {
                        MountVolumeOptionsDriverConfig {
                            name: Some(driver.clone()),
                            options: Some(self.swarm.volume_driver_opts.iter().cloned().collect()),
                        }
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        if spec.read_only_rootfs {
            mounts.push(Mount {
                typ: Some(MountType::TMPFS),
                target: Some("/tmp".into()),
                tmpfs_options: Some(MountTmpfsOptions {
                    size_bytes: Some(64 << 20),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        let mut constraints = self.swarm.constraints.clone();
        if self.swarm.publish == SwarmPublish::Host {
            // The published port is on the node spawngate runs on: the address
            // (127.0.0.1:port) only holds there.
            constraints.push(format!("node.id=={}", self.own_node().await?));
        }
        let ports = match (self.swarm.publish, spec.host_port, &spec.env_id) {
            (SwarmPublish::Host, Some(port), EnvId::User(_)) => vec![EndpointPortConfig {
                target_port: Some(i64::from(spec.port)),
                published_port: Some(i64::from(port)),
                publish_mode: Some(EndpointPortConfigPublishModeEnum::HOST),
                protocol: Some(bollard::models::EndpointPortConfigProtocolEnum::TCP),
                ..Default::default()
            }],
            _ => Vec::new(),
        };
        let endpoint_mode = if self.swarm.dnsrr && ports.is_empty() {
            EndpointSpecModeEnum::DNSRR
        } else {
            EndpointSpecModeEnum::VIP
        };
        let container = TaskSpecContainerSpec {
            image: Some(spec.image.clone()),
            labels: Some(labels.clone()),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            // API 1.41 takes capability lists; `NoNewPrivileges` arrived in 1.46
            // (older engines ignore it: see the README on hardening).
            capability_drop: Some(vec!["ALL".into()]),
            privileges: Some(TaskSpecContainerSpecPrivileges {
                no_new_privileges: Some(true),
                ..Default::default()
            }),
            read_only: Some(spec.read_only_rootfs),
            init: Some(spec.init),
            mounts: Some(mounts),
            stop_grace_period: Some(i64::try_from(self.stop_grace.as_nanos()).unwrap_or(i64::MAX)),
            ..Default::default()
        };
        let mut service = ServiceSpec {
            name: Some(name),
            labels: Some(labels),
            task_template: Some(TaskSpec {
                container_spec: Some(container),
                resources: Some(TaskSpecResources {
                    limits: Some(Limit {
                        nano_cpus: Some((spec.cpus * 1e9).round() as i64),
                        memory_bytes: Some(spec.memory_bytes),
                        pids: Some(spec.pids_limit),
                    }),
                    ..Default::default()
                }),
                // spawngate decides when an environment runs: a task that exits
                // stays down (its failure is reported) until the next request.
                restart_policy: Some(TaskSpecRestartPolicy {
                    condition: Some(TaskSpecRestartPolicyConditionEnum::NONE),
                    ..Default::default()
                }),
                placement: Some(TaskSpecPlacement {
                    constraints: Some(constraints),
                    ..Default::default()
                }),
                networks: Some(vec![NetworkAttachmentConfig {
                    target: Some(network),
                    ..Default::default()
                }]),
                log_driver: Some(TaskSpecLogDriver {
                    name: Some("json-file".into()),
                    options: Some(HashMap::from([
                        ("max-size".to_owned(), "10m".to_owned()),
                        ("max-file".to_owned(), "2".to_owned()),
                    ])),
                }),
                ..Default::default()
            }),
            mode: Some(ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated { replicas: Some(1) }),
                ..Default::default()
            }),
            // One task at most: stop the old one before starting the new (the
            // volume is not shared), and never pause on a failed update.
            update_config: Some(ServiceSpecUpdateConfig {
                parallelism: Some(1),
                failure_action: Some(ServiceSpecUpdateConfigFailureActionEnum::CONTINUE),
                monitor: Some(0),
                ..Default::default()
            }),
            endpoint_spec: Some(EndpointSpec {
                mode: Some(endpoint_mode),
                ports: Some(ports),
            }),
            ..Default::default()
        };
        if matches!(spec.env_id, EnvId::User(_)) {
            let fingerprint = fingerprint(&service);
            if let Some(labels) = service.labels.as_mut() {
                labels.insert(SPEC_LABEL.into(), fingerprint);
            }
        }
        Ok(service)
    }

    /// The service `name` with its newest task, if it exists.
    async fn observe(&self, name: &str) -> Result<Option<Observed>, RuntimeError> {
        let docker = self.docker()?;
        let service = match docker
            .inspect_service(name, None::<InspectServiceOptions>)
            .await
        {
            Ok(s) => s,
            Err(e) if status(&e) == Some(404) => return Ok(None),
            Err(e) => return Err(classify(e)),
        };
        let spec = service.spec.unwrap_or_default();
        let replicas = spec
            .mode
            .as_ref()
            .and_then(|m| m.replicated.as_ref())
            .and_then(|r| r.replicas)
            .unwrap_or(0);
        let id = service.id.unwrap_or_default();
        let task = self
            .tasks_of(name, &id)
            .await?
            .into_iter()
            .max_by_key(|t| t.created_at.as_deref().and_then(parse_time));
        Ok(Some(Observed {
            id,
            version: service.version.and_then(|v| v.index).unwrap_or(0),
            spec,
            replicas,
            updated_at: service.updated_at,
            task,
        }))
    }

    async fn tasks(
        &self,
        filters: HashMap<String, Vec<String>>,
    ) -> Result<Vec<Task>, RuntimeError> {
        self.docker()?
            .list_tasks(Some(ListTasksOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(classify)
    }

    /// The tasks of service `name` (id `id`).
    async fn tasks_of(&self, name: &str, id: &str) -> Result<Vec<Task>, RuntimeError> {
        let tasks = self
            .tasks(HashMap::from([(
                "service".to_owned(),
                vec![name.to_owned()],
            )]))
            .await?;
        Ok(tasks
            .into_iter()
            .filter(|t| t.service_id.as_deref() == Some(id))
            .collect())
    }

    /// Sends `spec` as the service's new spec (replacing its version `version`).
    /// `Ok(false)`: someone else changed it first (read it again).
    async fn update(
        &self,
        name: &str,
        version: u64,
        spec: ServiceSpec,
    ) -> Result<bool, RuntimeError> {
        let options = UpdateServiceOptions {
            version: i32::try_from(version).unwrap_or(i32::MAX),
            ..Default::default()
        };
        match self
            .docker()?
            .update_service(name, spec, options, None)
            .await
        {
            Ok(_) => Ok(true),
            Err(bollard::errors::Error::DockerResponseServerError { message, .. })
                if message.contains("out of sequence") =>
            {
                Ok(false)
            }
            Err(e) => Err(map_err(e)),
        }
    }

    async fn ensure_network(&self, spec: &ServiceSpec) -> Result<(), RuntimeError> {
        let Some(network) = spec
            .task_template
            .as_ref()
            .and_then(|t| t.networks.as_ref())
            .and_then(|n| n.first())
            .and_then(|n| n.target.clone())
        else {
            return Ok(());
        };
        if self
            .known_networks
            .lock()
            .is_ok_and(|k| k.contains(&network))
        {
            return Ok(());
        }
        let _creating = self.network_lock.lock().await;
        match self.docker()?.inspect_network(&network, None).await {
            Ok(existing) => {
                if existing.driver.as_deref() != Some("overlay") {
                    return Err(RuntimeError::Failed(format!(
                        "network '{network}' is not an overlay network: swarm mode needs one (set docker.network to another name, spawngate creates it)"
                    )));
                }
            }
            Err(e) if status(&e) == Some(404) => {
                let mut labels = HashMap::from([
                    ("spawngate.managed".to_owned(), "true".to_owned()),
                    ("spawngate.instance".to_owned(), self.instance.clone()),
                ]);
                if network != self.shared_network {
                    labels.insert(USER_NETWORK_LABEL.into(), "true".into());
                }
                let req = NetworkCreateRequest {
                    name: network.clone(),
                    driver: Some("overlay".into()),
                    // Attachable: Traefik or spawngate may run as plain containers.
                    attachable: Some(true),
                    labels: Some(labels),
                    ..Default::default()
                };
                match self.docker()?.create_network(req).await {
                    Ok(_) => {}
                    Err(e) if status(&e) == Some(409) => {}
                    Err(e) => return Err(classify(e)),
                }
            }
            Err(e) => return Err(classify(e)),
        }
        if let Ok(mut k) = self.known_networks.lock() {
            k.insert(network);
        }
        Ok(())
    }

    async fn create(&self, spec: ServiceSpec) -> Result<Option<String>, RuntimeError> {
        self.ensure_network(&spec).await?;
        match self.docker()?.create_service(spec, None).await {
            Ok(created) => Ok(Some(created.id.unwrap_or_default())),
            // The name is the lock: another spawn (or spawngate) made it first.
            Err(e) if status(&e) == Some(409) => Ok(None),
            Err(e) => Err(map_err(e)),
        }
    }

    /// `planned` applied to the existing service: the new spec when the
    /// fingerprint changed (keeping the node pin), else the existing spec; with
    /// `replicas`, and a new task forced with `force`.
    fn respec(
        &self,
        existing: &Observed,
        planned: &ServiceSpec,
        replicas: i64,
        force: bool,
    ) -> ServiceSpec {
        let stale = existing.labels().get(SPEC_LABEL)
            != planned.labels.as_ref().and_then(|l| l.get(SPEC_LABEL));
        let mut spec = if stale {
            let mut spec = planned.clone();
            if let Some(pin) = pin_of(&existing.spec) {
                add_constraint(&mut spec, pin);
            }
            spec
        } else {
            existing.spec.clone()
        };
        spec.mode = Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated {
                replicas: Some(replicas),
            }),
            ..Default::default()
        });
        if force && let Some(t) = spec.task_template.as_mut() {
            t.force_update = Some(t.force_update.unwrap_or(0) + 1);
        }
        spec
    }

    async fn ensure_running_spec(&self, env: &EnvironmentSpec) -> Result<Running, RuntimeError> {
        let planned = self.plan(env).await?;
        let name = planned.name.clone().unwrap_or_default();
        let mut fresh = env.fresh;
        for _ in 0..5 {
            if fresh {
                fresh = false;
                if let Some(id) = self.create(planned.clone()).await? {
                    return Ok(Running {
                        id,
                        running_since: None,
                    });
                }
            }
            let Some(existing) = self.observe(&name).await? else {
                fresh = true;
                continue;
            };
            if existing.replicas >= 1 {
                let info = existing.info();
                if info.running() {
                    return Ok(Running {
                        id: existing.id,
                        running_since: info.started_at,
                    });
                }
            }
            // Stopped (scaled to 0) or its task ended: a new task, with the new
            // spec if it changed. Always forced: with restart condition `none`,
            // Swarm (20.10) makes no task for a slot whose last task shut down a
            // moment ago, and a forced update makes one at no extra cost.
            let spec = self.respec(&existing, &planned, 1, true);
            if self.update(&name, existing.version, spec).await? {
                return Ok(Running {
                    id: existing.id,
                    running_since: None,
                });
            }
        }
        Err(RuntimeError::Failed(format!(
            "service '{name}' keeps changing under spawngate"
        )))
    }

    /// Waits (bounded) until no task of `name` runs or is about to.
    async fn settle(&self, name: &str, id: &str) -> Result<(), RuntimeError> {
        let deadline = tokio::time::Instant::now() + self.stop_grace + SETTLE_MARGIN;
        loop {
            let tasks = self.tasks_of(name, id).await?;
            let busy = tasks.iter().any(|t| {
                t.status
                    .as_ref()
                    .and_then(|s| s.state)
                    .is_some_and(|s| s == TaskState::RUNNING || starting(s))
            });
            if !busy {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RuntimeError::Failed(format!(
                    "the task of service '{name}' is still stopping after {} s",
                    (self.stop_grace + SETTLE_MARGIN).as_secs()
                )));
            }
            tokio::time::sleep(SETTLE_POLL).await;
        }
    }

    async fn stop_name(&self, name: &str) -> Result<(), RuntimeError> {
        for _ in 0..5 {
            let Some(existing) = self.observe(name).await? else {
                return Ok(());
            };
            if existing.replicas == 0 {
                return self.settle(name, &existing.id).await;
            }
            let mut spec = existing.spec.clone();
            spec.mode = Some(ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated { replicas: Some(0) }),
                ..Default::default()
            });
            // A local volume now holds data on the task's node: pin the service
            // there (recorded in its spec), so it resumes next to its data.
            if self.swarm.volume_driver.is_none()
                && pin_of(&spec).is_none()
                && has_volume(&spec)
                && let Some(node) = existing.task.as_ref().and_then(|t| t.node_id.clone())
                && !node.is_empty()
            {
                add_constraint(&mut spec, format!("node.id=={node}"));
            }
            if self.update(name, existing.version, spec).await? {
                return self.settle(name, &existing.id).await;
            }
        }
        Err(RuntimeError::Failed(format!(
            "service '{name}' keeps changing under spawngate"
        )))
    }

    /// Task containers of service `name` on the local engine.
    async fn local_containers(
        &self,
        name: &str,
        all: bool,
    ) -> Result<Vec<bollard::models::ContainerSummary>, RuntimeError> {
        let options = ListContainersOptions {
            all,
            filters: Some(HashMap::from([(
                "label".to_owned(),
                vec![
                    format!("{SERVICE_NAME_LABEL}={name}"),
                    format!("spawngate.instance={}", self.instance),
                ],
            )])),
            ..Default::default()
        };
        self.docker()?
            .list_containers(Some(options))
            .await
            .map_err(classify)
    }

    async fn remove_volume(&self, volume: &str) -> Result<(), RuntimeError> {
        // Local volumes live on a node: this removes the one on the manager
        // spawngate talks to (a cluster driver's volume is the same everywhere).
        let deadline = tokio::time::Instant::now() + SETTLE_MARGIN;
        loop {
            match self
                .docker()?
                .remove_volume(volume, None::<RemoveVolumeOptions>)
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) if status(&e) == Some(404) => return Ok(()),
                // Still mounted by the task container being removed.
                Err(e) if status(&e) == Some(409) && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(SETTLE_POLL).await;
                }
                Err(e) => return Err(classify(e)),
            }
        }
    }

    async fn remove_network(&self, network: &str) -> Result<(), RuntimeError> {
        if let Ok(mut k) = self.known_networks.lock() {
            k.remove(network);
        }
        let deadline = tokio::time::Instant::now() + SETTLE_MARGIN;
        loop {
            match self.docker()?.remove_network(network).await {
                Ok(()) => return Ok(()),
                Err(e) if status(&e) == Some(404) => return Ok(()),
                // Tasks detach a moment after the service goes.
                Err(e) if tokio::time::Instant::now() < deadline && status(&e).is_some() => {
                    tokio::time::sleep(SETTLE_POLL * 2).await;
                }
                Err(e) => return Err(classify(e)),
            }
        }
    }
}

fn has_volume(spec: &ServiceSpec) -> bool {
    spec.task_template
        .as_ref()
        .and_then(|t| t.container_spec.as_ref())
        .and_then(|c| c.mounts.as_ref())
        .is_some_and(|m| m.iter().any(|m| m.typ == Some(MountType::VOLUME)))
}

/// The node pin spawngate recorded (`node.id==…` beyond the configured ones).
fn pin_of(spec: &ServiceSpec) -> Option<String> {
    spec.task_template
        .as_ref()
        .and_then(|t| t.placement.as_ref())
        .and_then(|p| p.constraints.as_ref())
        .and_then(|c| c.iter().find(|c| c.starts_with("node.id==")).cloned())
}

fn add_constraint(spec: &mut ServiceSpec, constraint: String) {
    let Some(template) = spec.task_template.as_mut() else {
        return;
    };
    let placement = template.placement.get_or_insert_with(Default::default);
    let constraints = placement.constraints.get_or_insert_with(Vec::new);
    if !constraints.contains(&constraint) {
        constraints.push(constraint);
    }
}

/// A short hash of the spec spawngate asked for (before any node pin).
fn fingerprint(spec: &ServiceSpec) -> String {
    use sha2::{Digest, Sha256};
    let mut spec = spec.clone();
    spec.labels = None;
    // Through a `Value`: its maps are sorted, the spec's `HashMap`s are not.
    let text = serde_json::to_value(&spec)
        .map(|v| v.to_string())
        .unwrap_or_default();
    hex::encode(&Sha256::digest(text.as_bytes())[..8])
}

fn map_err(e: bollard::errors::Error) -> RuntimeError {
    classify(e)
}

#[async_trait]
impl Runtime for SwarmRuntime {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            // A service cannot be paused; the culler skips that tier.
            pause: false,
            warm_pool: false,
            // Read from the task's container when it runs on spawngate's node.
            network_counters: true,
            // Overlay addresses (a VIP in front of a task on another node) may
            // answer a connect more slowly than a local bridge.
            probe_connect_timeout: match self.swarm.publish {
                SwarmPublish::Host => Capabilities::ALL.probe_connect_timeout,
                SwarmPublish::Overlay => std::time::Duration::from_millis(500),
            },
        }
    }

    fn name(&self, env: &EnvId) -> String {
        self.name_of(env)
    }

    fn address(&self, env: &EnvId, host_port: Option<u16>, port: u16) -> String {
        match (self.swarm.publish, host_port, env) {
            (SwarmPublish::Host, Some(host), EnvId::User(_)) => format!("http://127.0.0.1:{host}"),
            // The service's name on the overlay: its VIP (or, dnsrr, its task).
            _ => format!("http://{}:{port}", self.name_of(env)),
        }
    }

    async fn ping(&self) -> Result<(), RuntimeError> {
        self.docker()?.ping().await.map_err(classify)?;
        self.own_node().await.map(|_| ())
    }

    async fn image_present(&self, image: &str) -> Result<bool, RuntimeError> {
        // Checked on the manager's engine; other nodes are the operator's to
        // provision (a task that finds no image is rejected with the reason).
        match self.docker()?.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) if status(&e) == Some(404) => Ok(false),
            Err(e) => Err(classify(e)),
        }
    }

    async fn ensure_running(&self, spec: &EnvironmentSpec) -> Result<Running, RuntimeError> {
        self.ensure_running_spec(spec).await
    }

    async fn ensure_created(&self, spec: &EnvironmentSpec) -> Result<String, RuntimeError> {
        let mut planned = self.plan(spec).await?;
        let name = planned.name.clone().unwrap_or_default();
        if let Some(existing) = self.observe(&name).await? {
            return Ok(existing.id);
        }
        // Created scaled to 0: the first start is a scale to 1.
        planned.mode = Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated { replicas: Some(0) }),
            ..Default::default()
        });
        match self.create(planned).await? {
            Some(id) => Ok(id),
            None => Ok(self.observe(&name).await?.map(|o| o.id).unwrap_or_default()),
        }
    }

    async fn inspect(&self, env: &EnvId) -> Result<Option<ContainerInfo>, RuntimeError> {
        Ok(self.observe(&self.name_of(env)).await?.map(|o| o.info()))
    }

    /// The grace is the service's own (`docker.stop_timeout_secs`, in its spec):
    /// Swarm applies the stop grace of the spec the task was started with.
    async fn stop(&self, env: &EnvId, _grace: std::time::Duration) -> Result<(), RuntimeError> {
        self.stop_name(&self.name_of(env)).await
    }

    async fn list(&self) -> Result<Vec<ContainerSummary>, RuntimeError> {
        let label = format!("spawngate.instance={}", self.instance);
        let services = self
            .docker()?
            .list_services(Some(ListServicesOptions {
                filters: Some(HashMap::from([("label".to_owned(), vec![label.clone()])])),
                status: None,
            }))
            .await
            .map_err(classify)?;
        let tasks = self
            .tasks(HashMap::from([("label".to_owned(), vec![label])]))
            .await?;
        let mut newest: HashMap<String, Task> = HashMap::new();
        for task in tasks {
            let Some(service) = task.service_id.clone() else {
                continue;
            };
            let newer = newest.get(&service).is_none_or(|t| {
                t.created_at.as_deref().and_then(parse_time)
                    < task.created_at.as_deref().and_then(parse_time)
            });
            if newer {
                newest.insert(service, task);
            }
        }
        Ok(services
            .into_iter()
            .map(|s| {
                let spec = s.spec.unwrap_or_default();
                let labels = spec.labels.clone().unwrap_or_default();
                let name = spec.name.clone().unwrap_or_default();
                let id = s.id.unwrap_or_default();
                let observed = Observed {
                    id: id.clone(),
                    version: 0,
                    replicas: spec
                        .mode
                        .as_ref()
                        .and_then(|m| m.replicated.as_ref())
                        .and_then(|r| r.replicas)
                        .unwrap_or(0),
                    spec,
                    updated_at: s.updated_at,
                    task: newest.remove(&id),
                };
                ContainerSummary {
                    env_id: parse_name(&self.instance, &name),
                    id,
                    state: observed.info().state,
                    pooled: labels.get("spawngate.pool").map(String::as_str) == Some("true"),
                    owner_id: labels.get("spawngate.user_id").cloned(),
                }
            })
            .collect())
    }

    async fn network_bytes(&self, env: &EnvId) -> Result<Option<u64>, RuntimeError> {
        let containers = self.local_containers(&self.name_of(env), false).await?;
        let Some(id) = containers.into_iter().find_map(|c| c.id) else {
            // Not running here (another node): no counters; the culler goes by
            // requests alone.
            return Ok(None);
        };
        let options = StatsOptions {
            stream: false,
            one_shot: true,
        };
        let mut stream = self.docker()?.stats(&id, Some(options));
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

    async fn logs(&self, env: &EnvId, tail: usize) -> Result<Vec<String>, RuntimeError> {
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            tail: tail.to_string(),
            ..Default::default()
        };
        let mut stream = self
            .docker()?
            .service_logs(&self.name_of(env), Some(options));
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
        let name = self.name_of(env);
        // Scale to 0 first, with the stop grace (removing a service stops its
        // task too, but returns before it is gone).
        self.stop_name(&name).await?;
        match self.docker()?.delete_service(&name).await {
            Ok(()) => {}
            Err(e) if status(&e) == Some(404) => {}
            Err(e) => return Err(classify(e)),
        }
        if self.network_per_user && matches!(env, EnvId::User(_)) {
            self.remove_network(&name).await?;
        }
        if with_volume && let EnvId::User(slug) = env {
            self.remove_volume(&volume_name(slug)).await?;
        }
        Ok(())
    }

    async fn resources(&self) -> Result<Vec<Resource>, RuntimeError> {
        let mut out = Vec::new();
        let label = format!("spawngate.instance={}", self.instance);
        let volumes = self
            .docker()?
            .list_volumes(Some(bollard::query_parameters::ListVolumesOptions {
                filters: Some(HashMap::from([("label".to_owned(), vec![label.clone()])])),
            }))
            .await
            .map_err(classify)?;
        for v in volumes.volumes.unwrap_or_default() {
            out.push(Resource {
                kind: ResourceKind::Volume,
                owner_id: v.labels.get("spawngate.user_id").cloned(),
                env_id: None,
                name: v.name,
            });
        }
        let networks = self
            .docker()?
            .list_networks(Some(bollard::query_parameters::ListNetworksOptions {
                filters: Some(HashMap::from([(
                    "label".to_owned(),
                    vec![label, format!("{USER_NETWORK_LABEL}=true")],
                )])),
            }))
            .await
            .map_err(classify)?;
        for n in networks {
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
            ResourceKind::UserNetwork => self.remove_network(&resource.name).await,
            ResourceKind::Volume => self.remove_volume(&resource.name).await,
        }
    }

    /// Service removals and scale-downs (from the manager's event stream) and
    /// task containers that die on this node.
    async fn watch_events(
        &self,
        on_gone: &(dyn Fn(ContainerGone) + Send + Sync),
    ) -> Result<(), RuntimeError> {
        let options = EventsOptions {
            filters: Some(HashMap::from([
                (
                    "type".to_owned(),
                    vec!["service".to_owned(), "container".to_owned()],
                ),
                (
                    "event".to_owned(),
                    vec!["remove".to_owned(), "update".to_owned(), "die".to_owned()],
                ),
            ])),
            ..Default::default()
        };
        let mut stream = self.docker()?.events(Some(options));
        while let Some(event) = stream.next().await {
            let event = event.map_err(classify)?;
            let action = event.action.unwrap_or_default();
            let Some(actor) = event.actor else { continue };
            let attrs = actor.attributes.unwrap_or_default();
            let is_service = event.typ.map(|t| t.to_string()).as_deref() == Some("service");
            let name = if is_service {
                attrs.get("name").cloned()
            } else {
                if attrs.get("spawngate.instance") != Some(&self.instance) {
                    continue;
                }
                attrs.get(SERVICE_NAME_LABEL).cloned()
            };
            let Some(name) = name else { continue };
            let EnvId::User(slug) = parse_name(&self.instance, &name) else {
                continue;
            };
            // Service events carry no labels: an update is ours to look at only
            // if it left the service scaled to 0 (or its task ended).
            if is_service && action == "update" {
                match self.observe(&name).await? {
                    Some(o) if o.replicas >= 1 && o.info().running() => continue,
                    Some(o) if o.labels().get("spawngate.instance") != Some(&self.instance) => {
                        continue;
                    }
                    _ => {}
                }
            }
            on_gone(ContainerGone {
                slug,
                paused: false,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Slug;
    use crate::runtime::Owner;

    fn runtime(toml: &str) -> SwarmRuntime {
        let config = crate::config::Config::from_sources(toml, Vec::new()).unwrap();
        SwarmRuntime::connect(&config.docker).unwrap()
    }

    fn user_spec(slug: &Slug) -> EnvironmentSpec {
        EnvironmentSpec {
            env_id: EnvId::User(slug.clone()),
            owner: Some(Owner {
                id: crate::ids::UserId::generate(),
                name: "alice".into(),
            }),
            image: "app:1".into(),
            env: vec![("A".into(), "1".into())],
            port: 8080,
            host_port: Some(40001),
            data_mount: Some("/data".into()),
            memory_bytes: 512 << 20,
            cpus: 0.5,
            pids_limit: 256,
            read_only_rootfs: true,
            init: true,
            isolation: Isolation::OwnNetwork,
            fresh: false,
        }
    }

    #[tokio::test]
    async fn a_service_is_hardened_limited_labelled_and_never_restarted_by_swarm() {
        let rt = runtime("[docker]\nmode = \"swarm\"");
        let slug = Slug::parse("0123456789ab").unwrap();
        let plan = rt.plan(&user_spec(&slug)).await.unwrap();
        assert_eq!(plan.name.as_deref(), Some("spawngate-u-0123456789ab"));
        let labels = plan.labels.clone().unwrap();
        for key in [
            "spawngate.managed",
            "spawngate.instance",
            "spawngate.user",
            "spawngate.user_id",
            "spawngate.slug",
            SPEC_LABEL,
        ] {
            assert!(labels.contains_key(key), "{key}");
        }
        let task = plan.task_template.clone().unwrap();
        let c = task.container_spec.clone().unwrap();
        assert_eq!(c.capability_drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(c.read_only, Some(true));
        assert_eq!(c.init, Some(true));
        assert_eq!(c.privileges.unwrap().no_new_privileges, Some(true));
        let mounts = c.mounts.unwrap();
        assert_eq!(
            mounts[0].source.as_deref(),
            Some("spawngate-u-0123456789ab-data")
        );
        assert_eq!(
            mounts[1].typ,
            Some(MountType::TMPFS),
            "/tmp on a read-only root"
        );
        assert!(
            c.labels.unwrap().contains_key("spawngate.slug"),
            "task containers carry the labels"
        );
        let limits = task.resources.unwrap().limits.unwrap();
        assert_eq!(limits.nano_cpus, Some(500_000_000));
        assert_eq!(limits.memory_bytes, Some(512 << 20));
        assert_eq!(limits.pids, Some(256));
        assert_eq!(
            task.restart_policy.unwrap().condition,
            Some(TaskSpecRestartPolicyConditionEnum::NONE)
        );
        assert_eq!(
            task.networks.unwrap()[0].target.as_deref(),
            Some("spawngate-u-0123456789ab"),
            "a network of its own"
        );
        // Overlay: no published port, reached by name.
        assert!(plan.endpoint_spec.unwrap().ports.unwrap().is_empty());
        assert_eq!(
            rt.address(&EnvId::User(slug), Some(40001), 8080),
            "http://spawngate-u-0123456789ab:8080"
        );
        assert!(!rt.capabilities().pause && !rt.capabilities().warm_pool);
    }

    #[test]
    fn a_pin_survives_a_new_spec_and_fingerprints_ignore_labels() {
        let rt = runtime("[docker]\nmode = \"swarm\"");
        let mut spec = ServiceSpec {
            task_template: Some(TaskSpec::default()),
            ..Default::default()
        };
        let before = fingerprint(&spec);
        spec.labels = Some(HashMap::from([("x".into(), "y".into())]));
        assert_eq!(fingerprint(&spec), before);
        add_constraint(&mut spec, "node.id==abc".into());
        add_constraint(&mut spec, "node.id==abc".into());
        assert_eq!(pin_of(&spec).as_deref(), Some("node.id==abc"));
        let existing = Observed {
            id: "s".into(),
            version: 1,
            spec: spec.clone(),
            replicas: 0,
            updated_at: None,
            task: None,
        };
        let planned = ServiceSpec {
            labels: Some(HashMap::from([(SPEC_LABEL.into(), "new".into())])),
            task_template: Some(TaskSpec::default()),
            ..Default::default()
        };
        let next = rt.respec(&existing, &planned, 1, true);
        assert_eq!(pin_of(&next).as_deref(), Some("node.id==abc"));
        assert_eq!(next.task_template.unwrap().force_update, Some(1));
    }
}
