//! `[docker]`: the daemon, how user containers are reached, and what each one gets
//! (image, resources, volume mount, environment, stop grace).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid, is_name, parse_bytes};

/// Longest stop grace: Docker's stop call must finish within the API client's
/// 120 s timeout (and a stop holds the user's operation lock meanwhile).
pub(super) const MAX_STOP_TIMEOUT_SECS: i64 = 100;

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDocker {
    /// Docker daemon address; empty: `DOCKER_HOST` or the local socket.
    pub host: String,
    /// `host`: containers publish their port on 127.0.0.1 and Traefik runs on the host.
    /// `network`: Traefik and spawngate share the user network (docker-compose).
    pub mode: String,
    pub network: String,
    pub image: String,
    /// Port the user's app listens on inside the container.
    pub port: u16,
    pub memory: String,
    pub cpus: f64,
    pub pids_limit: i64,
    /// Host ports (host mode) are allocated from this range when a user is created.
    pub host_port_min: u16,
    pub host_port_max: u16,
    /// Labels containers with `spawngate.instance`, so several spawngates can share a
    /// Docker daemon without touching each other's containers.
    pub instance: String,
    /// Where the per-user volume is mounted.
    pub data_mount: String,
    pub read_only_rootfs: bool,
    /// Extra `KEY=VALUE` environment for every user container (no secrets: it is
    /// visible to anyone who can inspect the container).
    pub env: Vec<String>,
    /// Give each container a secret (env `SPAWNGATE_SECRET`) that forwardAuth adds
    /// to every request it lets through (header `X-Spawngate-Secret`).
    pub inject_secret: bool,
    /// Network mode: one network per user (`spawngate-u-<slug>`) instead of the
    /// shared `docker.network`, so users' containers cannot reach each other.
    pub network_per_user: bool,
    /// Network mode: containers labelled `spawngate.attach=<docker.instance>` (Traefik)
    /// are connected to every user network.
    pub attach_peers: bool,
    /// Docker's init (`docker-init`) as PID 1: it forwards signals and reaps
    /// zombies, so an app that installs no SIGTERM handler still stops at once.
    pub init: bool,
    /// Seconds between SIGTERM and SIGKILL when spawngate stops a container.
    pub stop_timeout_secs: i64,
}

impl Default for RawDocker {
    fn default() -> Self {
        RawDocker {
            host: String::new(),
            mode: "host".into(),
            network: "spawngate-users".into(),
            image: "spawngate-example-app:latest".into(),
            port: 8080,
            memory: "512m".into(),
            cpus: 1.0,
            pids_limit: 256,
            host_port_min: 20000,
            host_port_max: 29999,
            instance: "default".into(),
            data_mount: "/data".into(),
            read_only_rootfs: false,
            env: Vec::new(),
            inject_secret: true,
            network_per_user: false,
            attach_peers: false,
            init: true,
            stop_timeout_secs: 10,
        }
    }
}

/// How user containers are reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetworkMode {
    /// Ports published on 127.0.0.1; Traefik and spawngate on the host.
    Host,
    /// Containers reached by name on the shared user network.
    Network,
}

#[derive(Clone, Debug)]
pub struct DockerConfig {
    pub host: Option<String>,
    pub mode: NetworkMode,
    pub network: String,
    pub image: String,
    pub port: u16,
    pub memory_bytes: i64,
    pub nano_cpus: i64,
    pub pids_limit: i64,
    pub host_ports: (u16, u16),
    pub instance: String,
    pub data_mount: String,
    pub read_only_rootfs: bool,
    pub env: Vec<(String, String)>,
    pub inject_secret: bool,
    pub network_per_user: bool,
    pub attach_peers: bool,
    pub init: bool,
    /// Grace between SIGTERM and SIGKILL on stop, cull, restart and removal.
    pub stop_timeout: Duration,
}

impl RawDocker {
    pub(super) fn validate(self) -> Result<DockerConfig, ConfigError> {
        let d = self;
        let mode = network_mode(&d.mode)?;
        if !is_name(&d.network) {
            return Err(invalid(
                "docker.network",
                "must be a Docker network name ([a-zA-Z0-9_.-])",
            ));
        }
        if d.image.trim().is_empty() {
            return Err(invalid("docker.image", "must not be empty"));
        }
        if d.port == 0 {
            return Err(invalid("docker.port", "must be a port number (1-65535)"));
        }
        let memory_bytes = parse_bytes(&d.memory)
            .filter(|b| *b >= 6 << 20)
            .ok_or_else(|| {
                invalid(
                    "docker.memory",
                    format!(
                        "{:?}: expected a size of at least 6m, like 512m or 2g",
                        d.memory
                    ),
                )
            })?;
        if !(d.cpus > 0.0 && d.cpus <= 1024.0) {
            return Err(invalid("docker.cpus", "must be a number of CPUs above 0"));
        }
        if d.pids_limit < 1 {
            return Err(invalid("docker.pids_limit", "must be at least 1"));
        }
        if !(0..=MAX_STOP_TIMEOUT_SECS).contains(&d.stop_timeout_secs) {
            return Err(invalid(
                "docker.stop_timeout_secs",
                format!(
                    "{} is out of range: must be between 0 and {MAX_STOP_TIMEOUT_SECS} seconds",
                    d.stop_timeout_secs
                ),
            ));
        }
        if d.host_port_min < 1024 {
            return Err(invalid("docker.host_port_min", "must be at least 1024"));
        }
        if d.host_port_max < d.host_port_min {
            return Err(invalid(
                "docker.host_port_max",
                "must not be below docker.host_port_min",
            ));
        }
        if !is_name(&d.instance) {
            return Err(invalid(
                "docker.instance",
                "must be a short name ([a-zA-Z0-9_.-])",
            ));
        }
        if !d.data_mount.starts_with('/') {
            return Err(invalid(
                "docker.data_mount",
                "must be an absolute path in the container",
            ));
        }

        if d.network_per_user && mode != NetworkMode::Network {
            return Err(invalid(
                "docker.network_per_user",
                "requires docker.mode = \"network\"",
            ));
        }
        let env = container_env("docker.env", &d.env)?;
        Ok(DockerConfig {
            host: (!d.host.is_empty()).then_some(d.host),
            mode,
            network: d.network,
            image: d.image,
            port: d.port,
            memory_bytes,
            nano_cpus: (d.cpus * 1e9) as i64,
            pids_limit: d.pids_limit,
            host_ports: (d.host_port_min, d.host_port_max),
            instance: d.instance,
            data_mount: d.data_mount,
            read_only_rootfs: d.read_only_rootfs,
            env,
            inject_secret: d.inject_secret,
            network_per_user: d.network_per_user,
            attach_peers: d.attach_peers,
            init: d.init,
            stop_timeout: Duration::from_secs(d.stop_timeout_secs.unsigned_abs()),
        })
    }
}

fn network_mode(raw: &str) -> Result<NetworkMode, ConfigError> {
    match raw {
        "host" => Ok(NetworkMode::Host),
        "network" => Ok(NetworkMode::Network),
        other => Err(invalid(
            "docker.mode",
            format!("{other:?}: expected \"host\" or \"network\""),
        )),
    }
}

/// `KEY=VALUE` lines (`docker.env`, a profile's `env`) as pairs; `SPAWNGATE_*`
/// names are spawngate's own (base path, secret).
pub(super) fn container_env(
    key: &str,
    list: &[String],
) -> Result<Vec<(String, String)>, ConfigError> {
    list.iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if is_env_name(k) && !k.starts_with("SPAWNGATE_") => {
                Ok((k.to_owned(), v.to_owned()))
            }
            _ => Err(invalid(
                key,
                format!(
                    "{kv:?}: expected KEY=VALUE with KEY of [A-Za-z0-9_], not starting with SPAWNGATE_"
                ),
            )),
        })
        .collect()
}

fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docker(toml: &str) -> Result<DockerConfig, String> {
        let raw: RawDocker = toml::from_str(toml).unwrap();
        raw.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn resources_and_ports_are_checked() {
        let d = docker("memory = \"1g\"\ncpus = 0.25\nhost_port_min = 2000\nhost_port_max = 2000")
            .unwrap();
        assert_eq!(d.memory_bytes, 1 << 30);
        assert_eq!(d.nano_cpus, 250_000_000);
        assert_eq!(d.host_ports, (2000, 2000));
        assert_eq!(
            docker("memory = \"5m\"").unwrap_err(),
            "invalid config: docker.memory: \"5m\": expected a size of at least 6m, like 512m or 2g"
        );
        assert!(docker("cpus = 0.0").unwrap_err().contains("docker.cpus"));
        assert!(
            docker("pids_limit = 0")
                .unwrap_err()
                .contains("docker.pids_limit")
        );
        assert!(
            docker("host_port_min = 80")
                .unwrap_err()
                .contains("docker.host_port_min")
        );
        assert!(
            docker("host_port_min = 3000\nhost_port_max = 2999")
                .unwrap_err()
                .contains("docker.host_port_max")
        );
        assert!(docker("port = 0").unwrap_err().contains("docker.port"));
        assert!(
            docker("image = \" \"")
                .unwrap_err()
                .contains("docker.image")
        );
    }

    #[test]
    fn names_paths_and_env_are_checked() {
        assert!(
            docker("network = \"a b\"")
                .unwrap_err()
                .contains("docker.network")
        );
        assert!(
            docker("instance = \"\"")
                .unwrap_err()
                .contains("docker.instance")
        );
        assert!(
            docker("data_mount = \"data\"")
                .unwrap_err()
                .contains("docker.data_mount")
        );
        assert_eq!(
            docker("network_per_user = true").unwrap_err(),
            "invalid config: docker.network_per_user: requires docker.mode = \"network\""
        );
        assert!(docker("mode = \"network\"\nnetwork_per_user = true").is_ok());
        let d = docker("env = [\"A_1=x=y\", \"B=\"]").unwrap();
        assert_eq!(
            d.env,
            [("A_1".into(), "x=y".into()), ("B".into(), String::new())]
        );
        assert!(
            docker("env = [\"1A=x\"]")
                .unwrap_err()
                .contains("docker.env")
        );
    }
}
