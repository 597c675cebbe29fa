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
    /// `swarm`: each environment is a Swarm service (see `[docker.swarm]`).
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
    /// Swarm mode: how Traefik and spawngate reach a service. `overlay`: by the
    /// service's name on the overlay network `docker.network`, which spawngate and
    /// Traefik join (the stack file does). `host`: a port per user published in
    /// host mode on spawngate's node (from `docker.host_port_min..max`), services
    /// pinned to that node: spawngate and Traefik as host processes, one node.
    pub swarm_publish: String,
    /// Swarm overlay: `dnsrr` (the name resolves to the task's own address) or
    /// `vip` (a virtual IP per service, kept while it is scaled to 0; needs the
    /// kernel's IPVS on every node).
    pub swarm_endpoint_mode: String,
    /// Swarm: volume driver for users' volumes; empty: `local`, and each
    /// environment is pinned to the node its volume was made on. A cluster driver
    /// (the same data from every node) lifts the pin.
    pub swarm_volume_driver: String,
    /// Options for `docker.swarm_volume_driver` (`KEY=VALUE`).
    pub swarm_volume_driver_opts: Vec<String>,
    /// Swarm: extra placement constraints for every environment
    /// (`node.labels.x==y`).
    pub swarm_constraints: Vec<String>,
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
            swarm_publish: "overlay".into(),
            swarm_endpoint_mode: "dnsrr".into(),
            swarm_volume_driver: String::new(),
            swarm_volume_driver_opts: Vec::new(),
            swarm_constraints: Vec::new(),
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
    /// Swarm services (see [`SwarmConfig`]).
    Swarm,
}

/// How Swarm services are reached (`docker.swarm.publish`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwarmPublish {
    Overlay,
    Host,
}

#[derive(Clone, Debug)]
pub struct SwarmConfig {
    pub publish: SwarmPublish,
    /// `dnsrr` rather than a virtual IP.
    pub dnsrr: bool,
    /// `None`: the local driver (environments pinned to their volume's node).
    pub volume_driver: Option<String>,
    pub volume_driver_opts: Vec<(String, String)>,
    pub constraints: Vec<String>,
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
    pub swarm: SwarmConfig,
}

impl DockerConfig {
    /// Users get a host port allocated when they are created (host mode, and
    /// Swarm services published in host mode).
    pub fn publishes_host_ports(&self) -> bool {
        match self.mode {
            NetworkMode::Host => true,
            NetworkMode::Network => false,
            NetworkMode::Swarm => self.swarm.publish == SwarmPublish::Host,
        }
    }
}

impl RawDocker {
    /// The `swarm_*` keys (only ever set in swarm mode).
    fn swarm(&self, mode: NetworkMode) -> Result<SwarmConfig, ConfigError> {
        if mode != NetworkMode::Swarm {
            let defaults = RawDocker::default();
            let set = [
                (
                    "swarm_publish",
                    self.swarm_publish != defaults.swarm_publish,
                ),
                (
                    "swarm_endpoint_mode",
                    self.swarm_endpoint_mode != defaults.swarm_endpoint_mode,
                ),
                ("swarm_volume_driver", !self.swarm_volume_driver.is_empty()),
                (
                    "swarm_volume_driver_opts",
                    !self.swarm_volume_driver_opts.is_empty(),
                ),
                ("swarm_constraints", !self.swarm_constraints.is_empty()),
            ];
            if let Some((key, _)) = set.iter().find(|(_, set)| *set) {
                return Err(invalid(
                    &format!("docker.{key}"),
                    "requires docker.mode = \"swarm\"",
                ));
            }
        }
        let publish = match self.swarm_publish.as_str() {
            "overlay" => SwarmPublish::Overlay,
            "host" => SwarmPublish::Host,
            other => {
                return Err(invalid(
                    "docker.swarm_publish",
                    format!("{other:?}: expected \"overlay\" or \"host\""),
                ));
            }
        };
        let dnsrr = match self.swarm_endpoint_mode.as_str() {
            "vip" => false,
            "dnsrr" => true,
            other => {
                return Err(invalid(
                    "docker.swarm_endpoint_mode",
                    format!("{other:?}: expected \"vip\" or \"dnsrr\""),
                ));
            }
        };
        let volume_driver = match self.swarm_volume_driver.as_str() {
            "" | "local" => None,
            d if is_name(d) || d.contains(['/', ':']) && !d.contains(char::is_whitespace) => {
                Some(d.to_owned())
            }
            other => {
                return Err(invalid(
                    "docker.swarm_volume_driver",
                    format!("{other:?}: expected a volume driver name"),
                ));
            }
        };
        let volume_driver_opts = self
            .swarm_volume_driver_opts
            .iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
                _ => Err(invalid(
                    "docker.swarm_volume_driver_opts",
                    format!("{kv:?}: expected KEY=VALUE"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !volume_driver_opts.is_empty() && volume_driver.is_none() {
            return Err(invalid(
                "docker.swarm_volume_driver_opts",
                "needs docker.swarm_volume_driver",
            ));
        }
        for c in &self.swarm_constraints {
            if !(c.contains("==") || c.contains("!=")) {
                return Err(invalid(
                    "docker.swarm_constraints",
                    format!("{c:?}: expected a constraint like node.labels.disk==ssd"),
                ));
            }
        }
        Ok(SwarmConfig {
            publish,
            dnsrr,
            volume_driver,
            volume_driver_opts,
            constraints: self.swarm_constraints.clone(),
        })
    }
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

        if d.network_per_user && mode == NetworkMode::Host {
            return Err(invalid(
                "docker.network_per_user",
                "requires docker.mode = \"network\" or \"swarm\"",
            ));
        }
        if d.attach_peers && mode == NetworkMode::Swarm {
            return Err(invalid(
                "docker.attach_peers",
                "is for docker.mode = \"network\": in swarm mode Traefik reaches services on docker.network (overlay) or by host port",
            ));
        }
        let swarm = d.swarm(mode)?;
        if d.network_per_user
            && mode == NetworkMode::Swarm
            && swarm.publish == SwarmPublish::Overlay
        {
            // Traefik would have to join every user's overlay, which for a Swarm
            // service means updating (restarting) it: not done.
            return Err(invalid(
                "docker.network_per_user",
                "with docker.mode = \"swarm\" needs docker.swarm_publish = \"host\" (on the overlay, Traefik reaches services on docker.network)",
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
            swarm,
        })
    }
}

fn network_mode(raw: &str) -> Result<NetworkMode, ConfigError> {
    match raw {
        "host" => Ok(NetworkMode::Host),
        "network" => Ok(NetworkMode::Network),
        "swarm" => Ok(NetworkMode::Swarm),
        other => Err(invalid(
            "docker.mode",
            format!("{other:?}: expected \"host\", \"network\" or \"swarm\""),
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
            "invalid config: docker.network_per_user: requires docker.mode = \"network\" or \"swarm\""
        );
        assert!(docker("mode = \"network\"\nnetwork_per_user = true").is_ok());
        assert!(
            docker("mode = \"swarm\"\nswarm_publish = \"host\"\nnetwork_per_user = true").is_ok()
        );
        assert!(
            docker("mode = \"swarm\"\nnetwork_per_user = true")
                .unwrap_err()
                .contains("docker.network_per_user:")
        );
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

    #[test]
    fn swarm_keys_are_checked_and_name_the_key() {
        let d = docker("mode = \"swarm\"\nswarm_publish = \"host\"").unwrap();
        assert_eq!(d.mode, NetworkMode::Swarm);
        assert_eq!(d.swarm.publish, SwarmPublish::Host);
        assert!(d.publishes_host_ports());
        let d = docker("mode = \"swarm\"").unwrap();
        assert_eq!(d.swarm.publish, SwarmPublish::Overlay);
        assert!(!d.publishes_host_ports());
        assert!(d.swarm.dnsrr && d.swarm.volume_driver.is_none());
        for (toml, key) in [
            (
                "mode = \"swarm\"\nswarm_publish = \"mesh\"",
                "docker.swarm_publish",
            ),
            (
                "mode = \"swarm\"\nswarm_endpoint_mode = \"x\"",
                "docker.swarm_endpoint_mode",
            ),
            (
                "mode = \"swarm\"\nswarm_volume_driver = \"a b\"",
                "docker.swarm_volume_driver",
            ),
            (
                "mode = \"swarm\"\nswarm_volume_driver_opts = [\"x=1\"]",
                "docker.swarm_volume_driver_opts",
            ),
            (
                "mode = \"swarm\"\nswarm_constraints = [\"node.role\"]",
                "docker.swarm_constraints",
            ),
            (
                "mode = \"network\"\nswarm_publish = \"host\"",
                "docker.swarm_publish",
            ),
            (
                "mode = \"swarm\"\nattach_peers = true",
                "docker.attach_peers",
            ),
        ] {
            let err = docker(toml).unwrap_err();
            assert!(err.contains(&format!("{key}:")), "{toml}: {err}");
        }
        let d = docker("mode = \"swarm\"\nswarm_volume_driver = \"rexray/ebs\"\nswarm_volume_driver_opts = [\"size=10\"]\nswarm_constraints = [\"node.labels.disk==ssd\"]").unwrap();
        assert_eq!(d.swarm.volume_driver.as_deref(), Some("rexray/ebs"));
        assert_eq!(d.swarm.volume_driver_opts, [("size".into(), "10".into())]);
    }
}
