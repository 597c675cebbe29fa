//! Configuration: an optional TOML file, then `SPAWNGATE_<SECTION>_<KEY>` environment
//! overrides, then defaults. [`RawConfig`] is what serde reads; [`Config`] is the
//! validated form the rest of the program uses. Every check happens here, at start-up,
//! and every error names the key it is about.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::ids::Secret;

mod identity;
pub use identity::{ClaimMapping, JwtConfig, JwtKeys, MatchBy, OidcConfig};

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

#[derive(Debug, Default, Deserialize)]
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawEmail {
    /// Let users ask for a login link by email on the login page.
    pub enabled: bool,
    pub smtp_host: String,
    pub smtp_port: u16,
    /// `none` (plain, for a local relay), `starttls` or `tls` (implicit TLS).
    pub smtp_tls: String,
    pub smtp_username: String,
    /// Prefer the environment (`SPAWNGATE_EMAIL_SMTP_PASSWORD`) over the file.
    pub smtp_password: String,
    pub from: String,
    /// Extra CA certificates (PEM) trusted for the SMTP server's TLS certificate.
    pub ca_file: String,
}

impl Default for RawEmail {
    fn default() -> Self {
        RawEmail {
            enabled: false,
            smtp_host: "localhost".into(),
            smtp_port: 25,
            smtp_tls: "none".into(),
            smtp_username: String::new(),
            smtp_password: String::new(),
            from: "spawngate <spawngate@localhost>".into(),
            ca_file: String::new(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPool {
    /// Running spare containers of `docker.image` (stateless images only) handed to
    /// users on their first request; 0 = no pool. Network mode only.
    pub size: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    /// Where spawngate listens (forwardAuth, provider, login, API).
    pub listen: String,
    /// How users reach Traefik: used in login links and to decide on `Secure` cookies.
    pub public_url: String,
    /// How Traefik reaches spawngate (forwardAuth addresses, the spawngate service).
    /// Empty: `http://<listen>`.
    pub internal_url: String,
    pub data_dir: String,
    /// When set, `/traefik/config` requires header `X-Spawngate-Provider-Token`.
    pub provider_token: String,
    /// In a container: listen only on this Docker network's address (with the port
    /// of `listen`), so containers on user networks cannot reach spawngate.
    pub listen_network: String,
    /// Peers whose `X-Forwarded-For` is believed (Traefik's address); the client
    /// address of anyone else is the TCP peer address.
    pub trusted_proxies: Vec<String>,
    /// Subdomain mode: each user's environment at `<slug>.<apps_domain>` (its own
    /// origin) instead of `/u-<slug>/` on the public host. Empty: path mode.
    pub apps_domain: String,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: "127.0.0.1:9090".into(),
            public_url: "http://localhost:8000".into(),
            internal_url: String::new(),
            data_dir: "spawngate-data".into(),
            provider_token: String::new(),
            listen_network: String::new(),
            trusted_proxies: vec!["127.0.0.1/32".into(), "::1/128".into()],
            apps_domain: String::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTraefik {
    pub entry_points: Vec<String>,
    /// TLS certificate resolver for user routers; empty: no TLS section.
    pub cert_resolver: String,
    /// Traefik's API (e.g. `http://127.0.0.1:8081`), read by `spawngate check`;
    /// empty: not checked.
    pub api_url: String,
}

impl Default for RawTraefik {
    fn default() -> Self {
        RawTraefik {
            entry_points: vec!["web".into()],
            cert_resolver: String::new(),
            api_url: String::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSpawn {
    /// How long forwardAuth holds a request while the container starts.
    pub hold_secs: f64,
    /// How long a container may take to answer its first HTTP request.
    pub ready_timeout_secs: u64,
}

impl Default for RawSpawn {
    fn default() -> Self {
        RawSpawn {
            hold_secs: 10.0,
            ready_timeout_secs: 120,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLifecycle {
    /// Pause (freeze) a container after this many idle seconds; 0 = never.
    pub pause_after_secs: u64,
    /// Stop a container after this many idle seconds; 0 = never.
    pub idle_timeout_secs: u64,
    /// Remove a container (never its volume) after this many idle seconds; 0 = never.
    pub remove_after_secs: u64,
    /// Stop a container this long after it started, however busy; 0 = no limit.
    pub max_lifetime_secs: u64,
    /// Start (or unpause) the user's container in the background at login.
    pub start_on_login: bool,
    /// Create (not start) the container when the user is created.
    pub precreate: bool,
    /// Keep the user's volume when the user is deleted.
    pub keep_volume_on_delete: bool,
}

impl Default for RawLifecycle {
    fn default() -> Self {
        RawLifecycle {
            pause_after_secs: 0,
            idle_timeout_secs: 1800,
            remove_after_secs: 0,
            max_lifetime_secs: 0,
            start_on_login: true,
            precreate: true,
            keep_volume_on_delete: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    /// Most containers running (or paused) at once; 0 = no limit.
    pub max_running: usize,
    pub max_concurrent_spawns: usize,
    /// At capacity, stop the least recently used idle container to make room.
    pub cull_lru_when_full: bool,
    /// A container counts as idle for that after this many seconds without activity.
    pub lru_min_idle_secs: u64,
    /// Images an admin may assign to a user besides `docker.image`.
    pub allowed_images: Vec<String>,
    /// Upper bounds for per-user overrides.
    pub max_memory: String,
    pub max_cpus: f64,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_running: 0,
            max_concurrent_spawns: 8,
            cull_lru_when_full: false,
            lru_min_idle_secs: 60,
            allowed_images: Vec::new(),
            max_memory: "4g".into(),
            max_cpus: 4.0,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSession {
    pub ttl_hours: u64,
    pub cookie_name: String,
}

impl Default for RawSession {
    fn default() -> Self {
        RawSession {
            ttl_hours: 24 * 7,
            cookie_name: "spawngate_session".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLogin {
    /// Lifetime of a login link, in seconds.
    pub token_ttl_secs: u64,
    /// Login-link requests per email address per hour.
    pub per_email_per_hour: u32,
    /// Login attempts (link requests and confirmations) per client address per hour.
    pub per_ip_per_hour: u32,
    /// Wrong passwords per account per hour before password sign-in pauses.
    pub password_failures_per_hour: u32,
    /// Offer name + password sign-in (for users who have a password).
    pub passwords: bool,
    /// Self sign-up by email link for addresses in these domains.
    pub signup_domains: Vec<String>,
}

impl Default for RawLogin {
    fn default() -> Self {
        RawLogin {
            token_ttl_secs: 15 * 60,
            per_email_per_hour: 3,
            per_ip_per_hour: 30,
            password_failures_per_hour: 10,
            passwords: false,
            signup_domains: Vec::new(),
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
}

#[derive(Clone, Debug)]
pub struct PublicUrl {
    /// `scheme://host[:port]`, no trailing slash.
    pub origin: String,
    pub https: bool,
    /// The host alone (no port).
    pub host: String,
    /// `:port` when the URL names one, else empty.
    pub port_suffix: String,
}

/// Subdomain mode: users' environments at `<slug>.<domain>`, same scheme and port
/// as the public URL.
#[derive(Clone, Debug)]
pub struct AppsDomain {
    pub domain: String,
    https: bool,
    port_suffix: String,
}

impl AppsDomain {
    /// `<slug>.<domain>` (what Traefik's Host rule matches).
    pub fn host(&self, slug: &crate::ids::Slug) -> String {
        format!("{slug}.{}", self.domain)
    }

    /// `scheme://<slug>.<domain>[:port]`.
    pub fn origin(&self, slug: &crate::ids::Slug) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}{}", self.host(slug), self.port_suffix)
    }

    /// The slug of an app host (`Host` header value, with or without port).
    pub fn slug_of(&self, host: &str) -> Option<crate::ids::Slug> {
        let host = host.rsplit_once(':').map_or(host, |(h, p)| {
            if p.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        });
        let label = host
            .to_ascii_lowercase()
            .strip_suffix(&format!(".{}", self.domain))?
            .to_owned();
        crate::ids::Slug::parse(&label)
    }
}

#[derive(Clone, Debug)]
pub struct TraefikConfig {
    pub entry_points: Vec<String>,
    pub cert_resolver: Option<String>,
    /// Where `spawngate check` reads Traefik's API (no trailing slash).
    pub api_url: Option<String>,
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

#[derive(Clone, Debug)]
pub struct SpawnConfig {
    pub hold: Duration,
    pub ready_timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct LifecycleConfig {
    pub pause_after: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub remove_after: Option<Duration>,
    pub max_lifetime: Option<Duration>,
    pub start_on_login: bool,
    pub precreate: bool,
    pub keep_volume_on_delete: bool,
}

impl LifecycleConfig {
    /// The shortest idle tier: how soon anything can happen to an idle container.
    pub fn first_tier(&self) -> Option<Duration> {
        [
            self.pause_after,
            self.idle_timeout,
            self.remove_after,
            self.max_lifetime,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

#[derive(Clone, Debug)]
pub struct LimitsConfig {
    pub max_running: Option<usize>,
    pub max_concurrent_spawns: usize,
    pub cull_lru_when_full: bool,
    pub lru_min_idle: Duration,
    pub allowed_images: Vec<String>,
    pub max_memory_bytes: i64,
    pub max_nano_cpus: i64,
}

#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub ttl: Duration,
    /// The cookie name as sent: `__Host-` prefixed when served over HTTPS.
    pub cookie_name: String,
    /// Subdomain mode: the host-only cookie on an app host, scoped to that slug.
    pub app_cookie_name: String,
    /// The login forms' guard cookie (see `http::login`).
    pub form_cookie_name: String,
    pub secure: bool,
}

#[derive(Clone, Debug)]
pub struct LoginConfig {
    pub token_ttl: Duration,
    pub per_email_per_hour: u32,
    pub per_ip_per_hour: u32,
    pub password_failures_per_hour: u32,
    pub passwords: bool,
    /// Self sign-up: unknown addresses in these domains get a link that creates
    /// their account when confirmed. Empty: no sign-up.
    pub signup_domains: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpTls {
    None,
    StartTls,
    Implicit,
}

#[derive(Clone, Debug)]
pub struct EmailConfig {
    pub smtp_host: String,
    pub smtp_port: u16,
    pub tls: SmtpTls,
    pub credentials: Option<(String, Secret)>,
    pub from: String,
    /// PEM certificates to trust besides the Mozilla roots.
    pub ca_pem: Option<Vec<u8>>,
}

/// Whether an environment override is a string, number, boolean or list.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    Float,
    Bool,
    List,
}

/// Every key that can be set, with its type. The environment variable of key
/// `section.name` is `SPAWNGATE_SECTION_NAME`.
const KEYS: &[(&str, Kind)] = &[
    ("server.listen", Kind::Str),
    ("server.public_url", Kind::Str),
    ("server.internal_url", Kind::Str),
    ("server.data_dir", Kind::Str),
    ("server.provider_token", Kind::Str),
    ("traefik.entry_points", Kind::List),
    ("traefik.cert_resolver", Kind::Str),
    ("traefik.api_url", Kind::Str),
    ("docker.host", Kind::Str),
    ("docker.mode", Kind::Str),
    ("docker.network", Kind::Str),
    ("docker.image", Kind::Str),
    ("docker.port", Kind::Int),
    ("docker.memory", Kind::Str),
    ("docker.cpus", Kind::Float),
    ("docker.pids_limit", Kind::Int),
    ("docker.host_port_min", Kind::Int),
    ("docker.host_port_max", Kind::Int),
    ("docker.instance", Kind::Str),
    ("docker.data_mount", Kind::Str),
    ("docker.read_only_rootfs", Kind::Bool),
    ("docker.env", Kind::List),
    ("docker.inject_secret", Kind::Bool),
    ("docker.network_per_user", Kind::Bool),
    ("docker.attach_peers", Kind::Bool),
    ("docker.init", Kind::Bool),
    ("docker.stop_timeout_secs", Kind::Int),
    ("server.listen_network", Kind::Str),
    ("spawn.hold_secs", Kind::Float),
    ("spawn.ready_timeout_secs", Kind::Int),
    ("session.ttl_hours", Kind::Int),
    ("session.cookie_name", Kind::Str),
    ("login.token_ttl_secs", Kind::Int),
    ("lifecycle.pause_after_secs", Kind::Int),
    ("lifecycle.idle_timeout_secs", Kind::Int),
    ("lifecycle.remove_after_secs", Kind::Int),
    ("lifecycle.max_lifetime_secs", Kind::Int),
    ("lifecycle.start_on_login", Kind::Bool),
    ("lifecycle.precreate", Kind::Bool),
    ("lifecycle.keep_volume_on_delete", Kind::Bool),
    ("limits.max_running", Kind::Int),
    ("limits.max_concurrent_spawns", Kind::Int),
    ("limits.cull_lru_when_full", Kind::Bool),
    ("limits.lru_min_idle_secs", Kind::Int),
    ("limits.allowed_images", Kind::List),
    ("limits.max_memory", Kind::Str),
    ("limits.max_cpus", Kind::Float),
    ("pool.size", Kind::Int),
    ("server.trusted_proxies", Kind::List),
    ("server.apps_domain", Kind::Str),
    ("login.per_email_per_hour", Kind::Int),
    ("login.per_ip_per_hour", Kind::Int),
    ("login.password_failures_per_hour", Kind::Int),
    ("login.passwords", Kind::Bool),
    ("email.enabled", Kind::Bool),
    ("email.smtp_host", Kind::Str),
    ("email.smtp_port", Kind::Int),
    ("email.smtp_tls", Kind::Str),
    ("email.smtp_username", Kind::Str),
    ("email.smtp_password", Kind::Str),
    ("email.from", Kind::Str),
    ("email.ca_file", Kind::Str),
    ("login.signup_domains", Kind::List),
    ("jwt.enabled", Kind::Bool),
    ("jwt.algorithms", Kind::List),
    ("jwt.secret", Kind::Str),
    ("jwt.public_key_file", Kind::Str),
    ("jwt.jwks_url", Kind::Str),
    ("jwt.issuer", Kind::Str),
    ("jwt.audience", Kind::Str),
    ("jwt.cookie", Kind::Str),
    ("jwt.user_claim", Kind::Str),
    ("jwt.match_by", Kind::Str),
    ("jwt.auto_create", Kind::Bool),
    ("jwt.require_verified_email", Kind::Bool),
    ("jwt.leeway_secs", Kind::Int),
    ("jwt.jwks_cooldown_secs", Kind::Int),
    ("jwt.ca_file", Kind::Str),
    ("oidc.enabled", Kind::Bool),
    ("oidc.issuer", Kind::Str),
    ("oidc.client_id", Kind::Str),
    ("oidc.client_secret", Kind::Str),
    ("oidc.scopes", Kind::List),
    ("oidc.algorithms", Kind::List),
    ("oidc.label", Kind::Str),
    ("oidc.user_claim", Kind::Str),
    ("oidc.match_by", Kind::Str),
    ("oidc.auto_create", Kind::Bool),
    ("oidc.require_verified_email", Kind::Bool),
    ("oidc.leeway_secs", Kind::Int),
    ("oidc.jwks_cooldown_secs", Kind::Int),
    ("oidc.ca_file", Kind::Str),
];

/// Keys that were renamed, with their new names (a clear error beats "unknown key").
const RENAMED: &[(&str, &str)] = &[("login.token_ttl_minutes", "login.token_ttl_secs")];

/// Variables that start with `SPAWNGATE_` but are not config keys.
const NON_KEY_ENV: &[&str] = &["SPAWNGATE_CONFIG", "SPAWNGATE_LOG", "SPAWNGATE_LOG_FORMAT"];

/// `::ffff:a.b.c.d/n` is the IPv4 net it names (peers are compared canonically).
fn canonical_net(net: ipnet::IpNet) -> ipnet::IpNet {
    match net {
        ipnet::IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(ipnet::IpNet::V4)
                .unwrap_or(net),
            None => net,
        },
        other => other,
    }
}

pub fn env_name(key: &str) -> String {
    format!("SPAWNGATE_{}", key.replace('.', "_").to_uppercase())
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
        for (old, new) in RENAMED {
            let (section, field) = old.split_once('.').unwrap_or((old, ""));
            if table
                .get(section)
                .and_then(toml::Value::as_table)
                .is_some_and(|t| t.contains_key(field))
            {
                return Err(invalid(old, format!("renamed: use {new}")));
            }
        }
        for (name, value) in env {
            if !name.starts_with("SPAWNGATE_") || NON_KEY_ENV.contains(&name.as_str()) {
                continue;
            }
            if let Some((old, new)) = RENAMED.iter().find(|(old, _)| env_name(old) == name) {
                return Err(invalid(old, format!("renamed: use {}", env_name(new))));
            }
            let Some((key, kind)) = KEYS.iter().find(|(k, _)| env_name(k) == name) else {
                return Err(ConfigError::UnknownEnv { name });
            };
            let parsed = parse_env_value(key, *kind, &value)?;
            let (section, field) = key.split_once('.').unwrap_or((key, ""));
            let section_table = table
                .entry(section)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match section_table {
                toml::Value::Table(t) => {
                    t.insert(field.to_owned(), parsed);
                }
                _ => return Err(invalid(section, "must be a table")),
            }
        }
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

fn parse_env_value(key: &str, kind: Kind, value: &str) -> Result<toml::Value, ConfigError> {
    let env = env_name(key);
    let bad = |what: &str| invalid(key, format!("{env}={value:?} is not {what}"));
    Ok(match kind {
        Kind::Str => toml::Value::String(value.to_owned()),
        Kind::Int => toml::Value::Integer(value.trim().parse().map_err(|_| bad("an integer"))?),
        Kind::Float => toml::Value::Float(value.trim().parse().map_err(|_| bad("a number"))?),
        Kind::Bool => match value.trim() {
            "true" | "1" | "yes" => toml::Value::Boolean(true),
            "false" | "0" | "no" => toml::Value::Boolean(false),
            _ => return Err(bad("a boolean (true/false)")),
        },
        Kind::List => toml::Value::Array(
            value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        ),
    })
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

/// Longest forwardAuth hold: Traefik gives up on an auth server after a fixed 30 s
/// and answers 500, so the hold must stay clearly below that.
const MAX_HOLD: Duration = Duration::from_secs(25);

/// Longest stop grace: Docker's stop call must finish within the API client's
/// 120 s timeout (and a stop holds the user's operation lock meanwhile).
const MAX_STOP_TIMEOUT_SECS: i64 = 100;

/// An `http://` or `https://` URL for `key`, without its trailing slash.
fn http_url(key: &'static str, raw: &str) -> Result<String, ConfigError> {
    let u = url::Url::parse(raw).map_err(|e| invalid(key, format!("{raw:?}: {e}")))?;
    if u.scheme() != "http" && u.scheme() != "https" {
        return Err(invalid(key, "must be an http:// or https:// URL"));
    }
    Ok(raw.trim_end_matches('/').to_owned())
}

impl RawConfig {
    pub fn validate(self) -> Result<Config, ConfigError> {
        let s = self.server;
        let listen: SocketAddr = s.listen.parse().map_err(|_| {
            invalid(
                "server.listen",
                format!("{:?} is not an address like 127.0.0.1:9090", s.listen),
            )
        })?;

        let public_url = parse_public_url(&s.public_url)?;
        let internal_url = if s.internal_url.is_empty() {
            format!("http://{listen}")
        } else {
            http_url("server.internal_url", &s.internal_url)?
        };
        if s.data_dir.trim().is_empty() {
            return Err(invalid("server.data_dir", "must not be empty"));
        }
        let trusted_proxies = s
            .trusted_proxies
            .iter()
            .map(|p| {
                p.parse::<ipnet::IpNet>()
                    .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map(canonical_net)
                    .map_err(|_| {
                        invalid(
                            "server.trusted_proxies",
                            format!("{p:?} is not an address or CIDR"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let provider_token = (!s.provider_token.is_empty()).then(|| Secret::new(s.provider_token));
        if provider_token
            .as_ref()
            .is_some_and(|t| t.expose().len() < 16)
        {
            return Err(invalid(
                "server.provider_token",
                "must be at least 16 characters",
            ));
        }

        let t = self.traefik;
        if t.entry_points.is_empty() || t.entry_points.iter().any(|e| !is_name(e)) {
            return Err(invalid(
                "traefik.entry_points",
                "must be a non-empty list of entry point names",
            ));
        }
        let api_url = match t.api_url.trim() {
            "" => None,
            raw => Some(http_url("traefik.api_url", raw)?),
        };

        let d = self.docker;
        let mode = match d.mode.as_str() {
            "host" => NetworkMode::Host,
            "network" => NetworkMode::Network,
            other => {
                return Err(invalid(
                    "docker.mode",
                    format!("{other:?}: expected \"host\" or \"network\""),
                ));
            }
        };
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
        let env = d
            .env
            .iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) if is_env_name(k) && !k.starts_with("SPAWNGATE_") => Ok((k.to_owned(), v.to_owned())),
                _ => Err(invalid(
                    "docker.env",
                    format!("{kv:?}: expected KEY=VALUE with KEY of [A-Za-z0-9_], not starting with SPAWNGATE_"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;

        let sp = self.spawn;
        if !(sp.hold_secs >= 0.0 && sp.hold_secs <= MAX_HOLD.as_secs_f64()) {
            return Err(invalid(
                "spawn.hold_secs",
                format!(
                    "{} is out of range: must be between 0 and 25 (Traefik abandons forwardAuth calls after 30 s)",
                    sp.hold_secs
                ),
            ));
        }
        if sp.ready_timeout_secs == 0 {
            return Err(invalid("spawn.ready_timeout_secs", "must be at least 1"));
        }

        let se = self.session;
        if se.ttl_hours == 0 {
            return Err(invalid("session.ttl_hours", "must be at least 1"));
        }
        if !is_cookie_name(&se.cookie_name) {
            return Err(invalid(
                "session.cookie_name",
                "must be letters, digits, '_' or '-'",
            ));
        }
        // `__Host-` makes the browser refuse the cookie unless it is Secure, host-only
        // and Path=/: no sibling subdomain can plant or overwrite it.
        let host_prefixed = |name: &str| {
            if public_url.https {
                format!("__Host-{name}")
            } else {
                name.to_owned()
            }
        };
        let cookie_name = host_prefixed(&se.cookie_name);
        let app_cookie_name = host_prefixed("spawngate_app");
        let form_cookie_name = host_prefixed("spawngate_form");
        let apps = parse_apps_domain(&s.apps_domain, &public_url)?;

        let l = self.login;
        if l.token_ttl_secs == 0 || l.token_ttl_secs > 24 * 3600 {
            return Err(invalid(
                "login.token_ttl_secs",
                "must be between 1 and 86400",
            ));
        }

        let e = self.email;
        let email = if e.enabled {
            let tls = match e.smtp_tls.as_str() {
                "none" => SmtpTls::None,
                "starttls" => SmtpTls::StartTls,
                "tls" => SmtpTls::Implicit,
                other => {
                    return Err(invalid(
                        "email.smtp_tls",
                        format!("{other:?}: expected none, starttls or tls"),
                    ));
                }
            };
            if e.smtp_host.trim().is_empty() {
                return Err(invalid("email.smtp_host", "must not be empty"));
            }
            if e.from.parse::<lettre::message::Mailbox>().is_err() {
                return Err(invalid(
                    "email.from",
                    format!("{:?} is not a mailbox like 'Name <a@b.org>'", e.from),
                ));
            }
            let ca_pem = if e.ca_file.is_empty() {
                None
            } else {
                if tls == SmtpTls::None {
                    return Err(invalid(
                        "email.ca_file",
                        "only used with email.smtp_tls = \"starttls\" or \"tls\"",
                    ));
                }
                crate::outbound::read_ca_file(Path::new(&e.ca_file))
                    .map_err(|err| invalid("email.ca_file", err.to_string()))?;
                Some(
                    std::fs::read(&e.ca_file)
                        .map_err(|err| invalid("email.ca_file", format!("{}: {err}", e.ca_file)))?,
                )
            };
            if e.smtp_password.is_empty() != e.smtp_username.is_empty() {
                return Err(invalid(
                    "email.smtp_username",
                    "set both email.smtp_username and email.smtp_password, or neither",
                ));
            }
            if !e.smtp_username.is_empty() && tls == SmtpTls::None {
                return Err(invalid(
                    "email.smtp_tls",
                    "SMTP credentials need \"starttls\" or \"tls\" (they would cross the network in clear text)",
                ));
            }
            Some(EmailConfig {
                ca_pem,
                smtp_host: e.smtp_host,
                smtp_port: e.smtp_port,
                tls,
                credentials: (!e.smtp_username.is_empty())
                    .then(|| (e.smtp_username, Secret::new(e.smtp_password))),
                from: e.from,
            })
        } else {
            None
        };
        for (key, value) in [
            ("login.per_email_per_hour", l.per_email_per_hour),
            ("login.per_ip_per_hour", l.per_ip_per_hour),
            (
                "login.password_failures_per_hour",
                l.password_failures_per_hour,
            ),
        ] {
            if value == 0 {
                return Err(invalid(key, "rate limits must be at least 1"));
            }
        }

        let lc = self.lifecycle;
        let secs = |v: u64| (v > 0).then(|| Duration::from_secs(v));
        let lifecycle = LifecycleConfig {
            pause_after: secs(lc.pause_after_secs),
            idle_timeout: secs(lc.idle_timeout_secs),
            remove_after: secs(lc.remove_after_secs),
            max_lifetime: secs(lc.max_lifetime_secs),
            start_on_login: lc.start_on_login,
            precreate: lc.precreate,
            keep_volume_on_delete: lc.keep_volume_on_delete,
        };
        if let (Some(p), Some(i)) = (lifecycle.pause_after, lifecycle.idle_timeout)
            && p >= i
        {
            return Err(invalid(
                "lifecycle.pause_after_secs",
                "must be below lifecycle.idle_timeout_secs",
            ));
        }
        if let (Some(i), Some(r)) = (lifecycle.idle_timeout, lifecycle.remove_after)
            && r <= i
        {
            return Err(invalid(
                "lifecycle.remove_after_secs",
                "must be above lifecycle.idle_timeout_secs",
            ));
        }

        let li = self.limits;
        if li.max_concurrent_spawns == 0 {
            return Err(invalid(
                "limits.max_concurrent_spawns",
                "must be at least 1",
            ));
        }
        let limits = LimitsConfig {
            max_running: (li.max_running > 0).then_some(li.max_running),
            max_concurrent_spawns: li.max_concurrent_spawns,
            cull_lru_when_full: li.cull_lru_when_full,
            lru_min_idle: Duration::from_secs(li.lru_min_idle_secs),
            max_memory_bytes: parse_bytes(&li.max_memory)
                .filter(|b| *b >= 6 << 20)
                .ok_or_else(|| {
                    invalid(
                        "limits.max_memory",
                        format!("{:?}: expected a size like 4g", li.max_memory),
                    )
                })?,
            max_nano_cpus: if li.max_cpus > 0.0 && li.max_cpus <= 1024.0 {
                (li.max_cpus * 1e9) as i64
            } else {
                return Err(invalid(
                    "limits.max_cpus",
                    "must be a number of CPUs above 0",
                ));
            },
            allowed_images: li.allowed_images,
        };

        if self.pool.size > 0 && mode != NetworkMode::Network {
            return Err(invalid(
                "pool.size",
                "a warm pool needs docker.mode = \"network\" (a pooled container becomes a user's by being renamed; in host mode its published port cannot change)",
            ));
        }
        if self.pool.size > 64 {
            return Err(invalid("pool.size", "at most 64"));
        }

        let jwt = identity::validate_jwt(self.jwt)?;
        let oidc = identity::validate_oidc(self.oidc)?;
        let signup_domains = l
            .signup_domains
            .iter()
            .map(|d| d.trim().trim_start_matches('@').to_ascii_lowercase())
            .collect::<Vec<_>>();
        if signup_domains.iter().any(|d| {
            d.is_empty() || !d.contains('.') || d.contains('@') || d.contains(char::is_whitespace)
        }) {
            return Err(invalid(
                "login.signup_domains",
                "expected domain names like \"example.org\"",
            ));
        }
        if !signup_domains.is_empty() && email.is_none() {
            return Err(invalid(
                "login.signup_domains",
                "self sign-up works through email links: set email.enabled = true",
            ));
        }

        Ok(Config {
            jwt,
            oidc,
            pool_size: self.pool.size,
            lifecycle,
            limits,
            listen,
            internal_url,
            data_dir: PathBuf::from(s.data_dir),
            provider_token,
            listen_network: (!s.listen_network.is_empty()).then_some(s.listen_network),
            trusted_proxies,
            apps,
            traefik: TraefikConfig {
                entry_points: t.entry_points,
                cert_resolver: (!t.cert_resolver.is_empty()).then_some(t.cert_resolver),
                api_url,
            },
            docker: DockerConfig {
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
            },
            spawn: SpawnConfig {
                hold: Duration::from_secs_f64(sp.hold_secs),
                ready_timeout: Duration::from_secs(sp.ready_timeout_secs),
            },
            session: SessionConfig {
                ttl: Duration::from_secs(se.ttl_hours * 3600),
                cookie_name,
                app_cookie_name,
                form_cookie_name,
                secure: public_url.https,
            },
            login: LoginConfig {
                token_ttl: Duration::from_secs(l.token_ttl_secs),
                per_email_per_hour: l.per_email_per_hour,
                per_ip_per_hour: l.per_ip_per_hour,
                password_failures_per_hour: l.password_failures_per_hour,
                passwords: l.passwords,
                signup_domains,
            },
            email,
            public_url,
        })
    }
}

fn parse_public_url(raw: &str) -> Result<PublicUrl, ConfigError> {
    let u =
        url::Url::parse(raw).map_err(|e| invalid("server.public_url", format!("{raw:?}: {e}")))?;
    let https = match u.scheme() {
        "https" => true,
        "http" => false,
        other => {
            return Err(invalid(
                "server.public_url",
                format!("scheme {other:?}: expected http or https"),
            ));
        }
    };
    if u.host_str().is_none() || u.path() != "/" || u.query().is_some() {
        return Err(invalid(
            "server.public_url",
            format!(
                "{raw:?}: expected scheme://host[:port] with no path (spawngate serves from the site root)"
            ),
        ));
    }
    Ok(PublicUrl {
        origin: u.origin().ascii_serialization(),
        https,
        host: u.host_str().unwrap_or_default().to_ascii_lowercase(),
        port_suffix: u.port().map(|p| format!(":{p}")).unwrap_or_default(),
    })
}

fn parse_apps_domain(raw: &str, public: &PublicUrl) -> Result<Option<AppsDomain>, ConfigError> {
    let domain = raw.trim().trim_start_matches('.').to_ascii_lowercase();
    if domain.is_empty() {
        return Ok(None);
    }
    let valid = domain.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    if !valid || !domain.contains('.') {
        return Err(invalid(
            "server.apps_domain",
            format!("{raw:?} is not a domain name like apps.example.com"),
        ));
    }
    // The sign-in host must not itself be one of the app hosts (or the apps
    // domain): its cookies and pages must never share an origin with user code.
    if public.host == domain || public.host.ends_with(&format!(".{domain}")) {
        return Err(invalid(
            "server.apps_domain",
            "server.public_url's host must be outside the apps domain (e.g. login.example.com and apps.example.com)",
        ));
    }
    Ok(Some(AppsDomain {
        domain,
        https: public.https,
        port_suffix: public.port_suffix.clone(),
    }))
}

fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit()
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
    fn ipv4_mapped_proxy_nets_are_ipv4_nets() {
        let net = |s: &str| canonical_net(s.parse().unwrap()).to_string();
        assert_eq!(net("::ffff:10.0.0.0/104"), "10.0.0.0/8");
        assert_eq!(net("::ffff:127.0.0.1/128"), "127.0.0.1/32");
        assert_eq!(net("::1/128"), "::1/128");
        assert_eq!(net("10.0.0.0/8"), "10.0.0.0/8");
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
        assert!(err("[docker]\nmode = \"swarm\"", &[]).contains("docker.mode"));
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
    fn every_key_has_a_working_env_override() {
        for (key, kind) in KEYS {
            let value = match kind {
                Kind::Str => "x",
                Kind::Int => "1",
                Kind::Float => "1.5",
                Kind::Bool => "true",
                Kind::List => "a,b",
            };
            // A value may fail validation, but never with "unknown" or a type error
            // about the structure: the key must exist in RawConfig.
            if let Err(e) = Config::from_sources("", env(&[(&env_name(key), value)])) {
                let msg = e.to_string();
                assert!(!msg.contains("unknown"), "{key}: {msg}");
                assert!(msg.contains(key), "{key}: {msg}");
            }
        }
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
