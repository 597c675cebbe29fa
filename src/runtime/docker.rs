//! [`Runtime`] over the Docker Engine API (bollard).

use std::collections::HashMap;

use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, Mount, MountType, NetworkCreateRequest,
    PortBinding, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, EventsOptions, ListContainersOptions, LogsOptions,
    RemoveContainerOptions, RemoveVolumeOptions, StatsOptions, StopContainerOptions,
};
use futures_util::StreamExt;

use super::{ContainerGone, ContainerInfo, ContainerSpec, ContainerSummary, Runtime, RuntimeError};
use crate::config::NetworkMode;

/// The oldest Engine API we support (Debian's Docker 20.10). Pinning it instead of
/// negotiating lets spawngate start while the daemon is down and work once it is up.
const API_VERSION: bollard::ClientVersion = bollard::ClientVersion {
    major_version: 1,
    minor_version: 41,
};

/// Seconds Docker waits after SIGTERM before SIGKILL on stop.
const STOP_TIMEOUT_SECS: i32 = 10;

pub struct DockerRuntime {
    host: String,
    /// Created on first use and kept; bollard refuses to build a client for a
    /// socket that does not exist yet, and spawngate must start (and recover)
    /// while Docker is down.
    client: std::sync::Mutex<Option<Docker>>,
    mode: NetworkMode,
}

impl DockerRuntime {
    /// Validates the address; the connection itself is made on first use.
    pub fn connect(host: Option<&str>, mode: NetworkMode) -> Result<Self, RuntimeError> {
        let host = host
            .map(str::to_owned)
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
            mode,
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

    async fn ensure_network(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        match self.docker()?.inspect_network(&spec.network, None).await {
            Ok(_) => return Ok(()),
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
        let labels = spec
            .labels
            .iter()
            .filter(|(k, _)| {
                k.as_str() == "spawngate.managed" || k.as_str() == "spawngate.instance"
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let req = NetworkCreateRequest {
            name: spec.network.clone(),
            driver: Some("bridge".into()),
            options: Some(options),
            labels: Some(labels),
            ..Default::default()
        };
        match self.docker()?.create_network(req).await {
            Ok(_) => Ok(()),
            // Created concurrently by another spawn: fine.
            Err(e) if status(&e) == Some(409) => Ok(()),
            Err(e) => Err(map_err(e, spec)),
        }
    }

    async fn ensure_volume(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        let labels = spec.labels.clone();
        let req = VolumeCreateRequest {
            name: Some(spec.volume.clone()),
            labels: Some(labels),
            ..Default::default()
        };
        // Creating an existing named volume returns it unchanged.
        self.docker()?
            .create_volume(req)
            .await
            .map(|_| ())
            .map_err(|e| map_err(e, spec))
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
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
            tmpfs: spec.read_only_rootfs.then(|| {
                HashMap::from([("/tmp".to_owned(), "rw,noexec,nosuid,size=64m".to_owned())])
            }),
            mounts: Some(vec![Mount {
                typ: Some(MountType::VOLUME),
                source: Some(spec.volume.clone()),
                target: Some(spec.data_mount.clone()),
                ..Default::default()
            }]),
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
            Ok(_) => Ok(()),
            // Another spawn created it first; the caller starts whatever exists.
            Err(e) if status(&e) == Some(409) => Ok(()),
            Err(e) => Err(map_err(e, spec)),
        }
    }

    /// The existing container, unless it is stopped and was made from an older spec:
    /// then it is removed (never its volume) so it is recreated with the new one.
    /// A running container is left alone; the change applies at its next start.
    async fn current(&self, spec: &ContainerSpec) -> Result<Option<ContainerInfo>, RuntimeError> {
        let Some(info) = self.inspect(&spec.name).await? else {
            return Ok(None);
        };
        let stale = info.labels.get(super::SPEC_LABEL) != spec.labels.get(super::SPEC_LABEL);
        if stale && !info.running && !info.paused {
            tracing::info!(container = %spec.name, "container spec changed: recreating it on the same volume");
            self.remove(&spec.name, None).await?;
            return Ok(None);
        }
        Ok(Some(info))
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

fn status(e: &BollardError) -> Option<u16> {
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
fn classify(e: BollardError) -> RuntimeError {
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

#[async_trait]
impl Runtime for DockerRuntime {
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

    async fn ensure_running(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        if let Some(info) = self.current(spec).await? {
            if info.paused {
                self.docker()?
                    .unpause_container(&spec.name)
                    .await
                    .map_err(|e| map_err(e, spec))?;
            } else if !info.running {
                self.start(spec).await?;
            }
            return Ok(info.id);
        }
        self.ensure_created(spec).await?;
        self.start(spec).await?;
        match self.inspect(&spec.name).await? {
            Some(info) => Ok(info.id),
            None => Err(RuntimeError::Failed(format!(
                "container '{}' disappeared right after it was started",
                spec.name
            ))),
        }
    }

    async fn ensure_created(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        if let Some(info) = self.current(spec).await? {
            return Ok(info.id);
        }
        self.ensure_network(spec).await?;
        self.ensure_volume(spec).await?;
        self.create(spec).await?;
        match self.inspect(&spec.name).await? {
            Some(info) => Ok(info.id),
            None => Err(RuntimeError::Failed(format!(
                "container '{}' disappeared right after it was created",
                spec.name
            ))),
        }
    }

    async fn inspect(&self, name: &str) -> Result<Option<ContainerInfo>, RuntimeError> {
        match self.docker()?.inspect_container(name, None).await {
            Ok(c) => {
                let state = c.state.unwrap_or_default();
                Ok(Some(ContainerInfo {
                    id: c.id.unwrap_or_default(),
                    running: state.running.unwrap_or(false) && !state.paused.unwrap_or(false),
                    paused: state.paused.unwrap_or(false),
                    started_at: state.started_at.filter(|s| !s.starts_with("0001")),
                    finished_at: state.finished_at.filter(|s| !s.starts_with("0001")),
                    exit_code: state.exit_code,
                    labels: c.config.and_then(|c| c.labels).unwrap_or_default(),
                }))
            }
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(classify(e)),
        }
    }

    async fn stop(&self, name: &str) -> Result<(), RuntimeError> {
        let options = StopContainerOptions {
            t: Some(STOP_TIMEOUT_SECS),
            ..Default::default()
        };
        match self.docker()?.stop_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if matches!(status(&e), Some(304) | Some(404)) => Ok(()),
            Err(e) => Err(classify(e)),
        }
    }

    async fn pause(&self, name: &str) -> Result<(), RuntimeError> {
        self.docker()?.pause_container(name).await.map_err(classify)
    }

    async fn list(&self, instance: &str) -> Result<Vec<ContainerSummary>, RuntimeError> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_owned(),
                vec![format!("spawngate.instance={instance}")],
            )])),
            ..Default::default()
        };
        let list = self
            .docker()?
            .list_containers(Some(options))
            .await
            .map_err(classify)?;
        Ok(list
            .into_iter()
            .map(|c| ContainerSummary {
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_owned(),
                id: c.id.unwrap_or_default(),
                state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                labels: c.labels.unwrap_or_default(),
            })
            .collect())
    }

    async fn network_bytes(&self, name: &str) -> Result<Option<u64>, RuntimeError> {
        let options = StatsOptions {
            stream: false,
            one_shot: true,
        };
        let mut stream = self.docker()?.stats(name, Some(options));
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

    async fn logs(&self, name: &str, tail: usize) -> Result<Vec<String>, RuntimeError> {
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            tail: tail.to_string(),
            ..Default::default()
        };
        let mut stream = self.docker()?.logs(name, Some(options));
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

    async fn remove(&self, name: &str, volume: Option<&str>) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        match self.docker()?.remove_container(name, Some(options)).await {
            Ok(()) => {}
            Err(e) if status(&e) == Some(404) => {}
            Err(e) => return Err(classify(e)),
        }
        if let Some(volume) = volume {
            match self
                .docker()?
                .remove_volume(volume, None::<RemoveVolumeOptions>)
                .await
            {
                Ok(()) => {}
                Err(e) if status(&e) == Some(404) => {}
                Err(e) => return Err(classify(e)),
            }
        }
        Ok(())
    }

    async fn watch_events(
        &self,
        instance: &str,
        on_gone: &(dyn Fn(ContainerGone) + Send + Sync),
    ) -> Result<(), RuntimeError> {
        let filters = HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            (
                "label".to_owned(),
                vec![format!("spawngate.instance={instance}")],
            ),
            (
                "event".to_owned(),
                vec!["die".to_owned(), "destroy".to_owned(), "pause".to_owned()],
            ),
        ]);
        let options = EventsOptions {
            filters: Some(filters),
            ..Default::default()
        };
        let mut stream = self.docker()?.events(Some(options));
        while let Some(event) = stream.next().await {
            let event = event.map_err(classify)?;
            let name = event
                .actor
                .and_then(|a| a.attributes)
                .and_then(|mut attrs| attrs.remove("name"));
            if let Some(name) = name {
                on_gone(ContainerGone { name });
            }
        }
        Ok(())
    }
}
