//! Configuration: an optional TOML file, then `SPAWNGATE_<SECTION>_<KEY>` environment
//! overrides, then defaults. [`RawConfig`] is what serde reads; [`Config`] is the
//! validated form the rest of the program uses. Every check happens here, at start-up,
//! and every error names the key it is about.
//!
//! One file per TOML section holds its raw struct (with defaults), its validated
//! struct and the checks between them; `env` maps variables onto keys.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ids::Secret;

mod docker;
mod email;
mod env;
mod identity;
mod lifecycle;
mod limits;
mod login;
mod metrics;
mod pool;
mod profiles;
mod server;
mod session;
mod spawn;
mod ssh;
mod store;
mod traefik;

pub use docker::{DockerConfig, NetworkMode, RawDocker, SwarmConfig, SwarmPublish};
pub use email::{EmailConfig, RawEmail, SmtpTls};
pub use env::env_name;
pub use identity::{ClaimMapping, JwtConfig, JwtKeys, MatchBy, OidcConfig, public_key_from_pem};
pub use lifecycle::{LifecycleConfig, RawLifecycle};
pub use limits::{LimitsConfig, RawLimits};
pub use login::{LoginConfig, RawLogin};
pub use metrics::{MetricsConfig, MetricsToken, RawMetrics};
pub use pool::RawPool;
pub use profiles::{AppAuth, DEFAULT_PROFILE, Profile, Profiles, RawProfile, is_profile_name};
pub use server::{AppsDomain, PublicUrl, RawServer};
pub use session::{RawSession, SessionConfig};
pub use spawn::{RawSpawn, SpawnConfig};
pub use ssh::{RawSsh, SshConfig};
pub use store::{RawStore, StoreConfig, redacted as redacted_store_url};
pub use traefik::{RawTraefik, TraefikConfig};

/// A configuration problem, always naming the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file '{path}': {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config: {key}: {message}")]
    Invalid { key: String, message: String },
    #[error(
        "invalid config: unknown environment variable {name} (known keys: see README, section Configuration)"
    )]
    UnknownEnv { name: String },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub server: RawServer,
    pub traefik: RawTraefik,
    pub docker: RawDocker,
    pub spawn: RawSpawn,
    pub session: RawSession,
    pub login: RawLogin,
    pub lifecycle: RawLifecycle,
    pub limits: RawLimits,
    pub pool: RawPool,
    pub email: RawEmail,
    pub jwt: identity::RawJwt,
    pub oidc: identity::RawOidc,
    pub metrics: RawMetrics,
    pub ssh: RawSsh,
    pub profiles: std::collections::BTreeMap<String, RawProfile>,
    pub store: RawStore,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub public_url: PublicUrl,
    pub internal_url: String,
    pub data_dir: PathBuf,
    pub provider_token: Option<Secret>,
    pub listen_network: Option<String>,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Subdomain mode when set.
    pub apps: Option<AppsDomain>,
    pub traefik: TraefikConfig,
    pub docker: DockerConfig,
    pub spawn: SpawnConfig,
    pub session: SessionConfig,
    pub login: LoginConfig,
    pub lifecycle: LifecycleConfig,
    pub limits: LimitsConfig,
    /// Email login links; `None` when `email.enabled` is false.
    pub email: Option<EmailConfig>,
    /// Warm pool size (0 = none).
    pub pool_size: usize,
    /// External JWTs (`[jwt]`); `None` when disabled.
    pub jwt: Option<JwtConfig>,
    /// OIDC login (`[oidc]`); `None` when disabled.
    pub oidc: Option<OidcConfig>,
    pub metrics: MetricsConfig,
    /// The SSH server (`[ssh]`); `None` when disabled.
    pub ssh: Option<SshConfig>,
    /// `[profiles.*]` and the implicit `default` (the `docker.*` settings).
    pub profiles: Profiles,
    /// `[store]`: embedded (sled) or shared (PostgreSQL).
    pub store: StoreConfig,
}

impl Config {
    /// Loads the file (if any), applies the environment, validates.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let text = match file {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?,
            None => String::new(),
        };
        // Non-UTF-8 variables cannot be ours; skip them instead of panicking.
        let env = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
        Self::from_sources(&text, env)
    }

    /// Builds a config from TOML text and environment variables (testable without
    /// touching the process environment).
    pub fn from_sources(
        toml_text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table =
            toml::from_str(toml_text).map_err(|e| ConfigError::Invalid {
                key: "(file)".into(),
                message: e.to_string(),
            })?;
        env::refuse_renamed(&table)?;
        env::apply(&mut table, env)?;
        let raw: RawConfig =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                ConfigError::Invalid {
                    key: e.path().to_string(),
                    message: e.inner().to_string(),
                }
            })?;
        raw.validate()
    }
}

impl RawConfig {
    /// Each section checks its own keys; a section that depends on another gets
    /// that one's validated value (sessions need the public URL's scheme, the pool
    /// the network mode, sign-up the email settings).
    pub fn validate(self) -> Result<Config, ConfigError> {
        let server = self.server.validate()?;
        let traefik = self.traefik.validate()?;
        let docker = self.docker.validate()?;
        let spawn = self.spawn.validate()?;
        let session = self.session.validate(&server.public_url)?;
        let email = self.email.validate()?;
        let login = self.login.validate(email.is_some())?;
        let lifecycle = self.lifecycle.validate()?;
        let limits = self.limits.validate()?;
        let pool_size = self.pool.validate(docker.mode)?;
        let jwt = self.jwt.validate()?;
        let oidc = self.oidc.validate()?;
        let metrics = self.metrics.validate()?;
        let ssh = self.ssh.validate(&server.data_dir)?;
        if ssh.is_some() && docker.mode == NetworkMode::Swarm {
            // Sessions run through `docker exec` on the engine of the node that
            // holds the task; the Swarm backend has no way to that yet.
            return Err(invalid(
                "ssh.enabled",
                "not available with docker.mode = \"swarm\" (yet)",
            ));
        }
        let profiles = profiles::validate(self.profiles, &docker, spawn.ready_timeout)?;
        let store = self.store.validate()?;
        Ok(Config {
            store,
            listen: server.listen,
            public_url: server.public_url,
            internal_url: server.internal_url,
            data_dir: server.data_dir,
            provider_token: server.provider_token,
            listen_network: server.listen_network,
            trusted_proxies: server.trusted_proxies,
            apps: server.apps,
            traefik,
            docker,
            spawn,
            session,
            login,
            lifecycle,
            limits,
            email,
            pool_size,
            jwt,
            oidc,
            metrics,
            ssh,
            profiles,
        })
    }
}

/// Parses sizes such as `512m`, `2g`, `1048576`.
pub fn parse_bytes(s: &str) -> Option<i64> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let (digits, mult) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1i64 << 10),
        'm' => (&s[..s.len() - 1], 1 << 20),
        'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    digits.trim().parse::<i64>().ok()?.checked_mul(mult)
}

/// An `http://` or `https://` URL for `key`, without its trailing slash.
fn http_url(key: &'static str, raw: &str) -> Result<String, ConfigError> {
    let u = url::Url::parse(raw).map_err(|e| invalid(key, format!("{raw:?}: {e}")))?;
    if u.scheme() != "http" && u.scheme() != "https" {
        return Err(invalid(key, "must be an http:// or https:// URL"));
    }
    Ok(raw.trim_end_matches('/').to_owned())
}

fn is_cookie_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn err(toml: &str, vars: &[(&str, &str)]) -> String {
        match Config::from_sources(toml, env(vars)) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn renamed_keys_name_their_successor() {
        let err = Config::from_sources("[login]\ntoken_ttl_minutes = 15\n", [])
            .unwrap_err()
            .to_string();
        assert!(err.contains("login.token_ttl_secs"), "{err}");
        let err = Config::from_sources(
            "",
            [(
                "SPAWNGATE_LOGIN_TOKEN_TTL_MINUTES".to_owned(),
                "15".to_owned(),
            )],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("SPAWNGATE_LOGIN_TOKEN_TTL_SECS"), "{err}");
    }

    #[test]
    fn defaults_need_no_file() {
        let c = Config::from_sources("", env(&[])).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9090");
        assert_eq!(c.internal_url, "http://127.0.0.1:9090");
        assert_eq!(c.public_url.origin, "http://localhost:8000");
        assert_eq!(c.docker.mode, NetworkMode::Host);
        assert_eq!(c.docker.memory_bytes, 512 << 20);
        assert_eq!(c.spawn.hold, Duration::from_secs(10));
        assert_eq!(c.session.cookie_name, "spawngate_session");
        assert!(!c.session.secure);
        assert!(c.provider_token.is_none());
    }

    #[test]
    fn file_then_env_override() {
        let c = Config::from_sources(
            "[docker]\nimage = \"a:1\"\ncpus = 0.5\n[spawn]\nhold_secs = 3",
            env(&[
                ("SPAWNGATE_DOCKER_IMAGE", "b:2"),
                ("SPAWNGATE_TRAEFIK_ENTRY_POINTS", "web, websecure"),
                ("SPAWNGATE_DOCKER_READ_ONLY_ROOTFS", "true"),
                ("SPAWNGATE_CONFIG", "ignored.toml"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(c.docker.image, "b:2");
        assert_eq!(c.docker.nano_cpus, 500_000_000);
        assert_eq!(c.spawn.hold, Duration::from_secs(3));
        assert_eq!(c.traefik.entry_points, vec!["web", "websecure"]);
        assert!(c.docker.read_only_rootfs);
    }

    #[test]
    fn docker_init_and_stop_timeout() {
        let c = Config::from_sources("", env(&[])).unwrap();
        assert!(c.docker.init);
        assert_eq!(c.docker.stop_timeout, Duration::from_secs(10));
        let c = Config::from_sources(
            "[docker]\ninit = true\nstop_timeout_secs = 30",
            env(&[
                ("SPAWNGATE_DOCKER_INIT", "false"),
                ("SPAWNGATE_DOCKER_STOP_TIMEOUT_SECS", "2"),
            ]),
        )
        .unwrap();
        assert!(!c.docker.init);
        assert_eq!(c.docker.stop_timeout, Duration::from_secs(2));
        assert!(err("[docker]\nstop_timeout_secs = -1", &[]).contains("docker.stop_timeout_secs"));
        assert!(err("[docker]\nstop_timeout_secs = 101", &[]).contains("docker.stop_timeout_secs"));
        assert!(
            err("", &[("SPAWNGATE_DOCKER_INIT", "yes please")]).contains("SPAWNGATE_DOCKER_INIT")
        );
    }

    #[test]
    fn https_public_url_makes_host_prefixed_secure_cookie() {
        let c = Config::from_sources(
            "[server]\npublic_url = \"https://apps.example.com\"",
            env(&[]),
        )
        .unwrap();
        assert!(c.session.secure);
        assert_eq!(c.session.cookie_name, "__Host-spawngate_session");
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err("[spawn]\nhold_secs = 40", &[]).contains("spawn.hold_secs"));
        assert!(err("[docker]\nport = \"x\"", &[]).contains("docker.port"));
        assert!(err("[docker]\nmemory = \"lots\"", &[]).contains("docker.memory"));
        assert!(err("[docker]\nmode = \"kubernetes\"", &[]).contains("docker.mode"));
        assert!(err("[server]\npublic_url = \"localhost\"", &[]).contains("server.public_url"));
        assert!(err("[server]\npublic_url = \"http://h/app\"", &[]).contains("server.public_url"));
        assert!(err("[server]\nlisten = \"nope\"", &[]).contains("server.listen"));
        assert!(err("[server]\nprovider_token = \"short\"", &[]).contains("server.provider_token"));
        assert!(err("", &[("SPAWNGATE_DOCKER_PORT", "eighty")]).contains("SPAWNGATE_DOCKER_PORT"));
        assert!(err("", &[("SPAWNGATE_DOCKER_PORTS", "1")]).contains("SPAWNGATE_DOCKER_PORTS"));
        let unknown = err("[docker]\nimgae = \"x\"", &[]);
        assert!(unknown.contains("imgae"), "{unknown}");
        assert!(err("[spawn]\nhold_secs = 3\nfoo = 1", &[]).contains("foo"));
        assert!(
            err(
                "[lifecycle]\npause_after_secs = 60\nidle_timeout_secs = 30",
                &[]
            )
            .contains("lifecycle.pause_after_secs")
        );
        assert!(
            err(
                "[lifecycle]\nremove_after_secs = 60\nidle_timeout_secs = 60",
                &[]
            )
            .contains("lifecycle.remove_after_secs")
        );
        assert!(err("[docker]\nenv = [\"NOEQUALS\"]", &[]).contains("docker.env"));
        assert!(err("[docker]\nenv = [\"SPAWNGATE_USER=x\"]", &[]).contains("docker.env"));
        assert!(
            err("[limits]\nmax_concurrent_spawns = 0", &[])
                .contains("limits.max_concurrent_spawns")
        );
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes("512m"), Some(512 << 20));
        assert_eq!(parse_bytes("2G"), Some(2 << 30));
        assert_eq!(parse_bytes("64kb"), Some(64 << 10));
        assert_eq!(parse_bytes("1000"), Some(1000));
        assert_eq!(parse_bytes("m"), None);
        assert_eq!(parse_bytes(""), None);
    }
}
