//! `[profiles.<name>]`: the kinds of environment users may start (an image with
//! its port, limits and how it is served). `docker.image` and the `docker.*`
//! settings are the implicit profile `default`, so configs without profiles work
//! as before.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::docker::{MAX_STOP_TIMEOUT_SECS, container_env};
use super::{ConfigError, DockerConfig, invalid, parse_bytes};

/// The name of the profile made of the `docker.*` settings.
pub const DEFAULT_PROFILE: &str = "default";

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawProfile {
    pub display_name: String,
    pub description: String,
    pub image: String,
    pub port: Option<u16>,
    /// Traefik strips `/u-<slug>` before the app (default); `false` passes the
    /// path unchanged, for apps that are told their base path.
    pub strip_prefix: Option<bool>,
    /// Path (as the user sees it under their prefix) the readiness probe asks.
    pub ready_path: Option<String>,
    /// The status that means ready; unset: any HTTP answer.
    pub ready_status: Option<u16>,
    pub start_timeout_secs: Option<u64>,
    pub memory: Option<String>,
    pub cpus: Option<f64>,
    pub pids_limit: Option<i64>,
    pub env: Vec<String>,
    pub init: Option<bool>,
    pub stop_timeout_secs: Option<i64>,
    pub read_only_rootfs: Option<bool>,
    pub volume_path: Option<String>,
    /// `none`, `token` or `bearer`: how the container secret is also sent in
    /// `Authorization` (for apps such as Jupyter that take a token that way).
    pub app_auth: Option<String>,
    /// Who may use it; both empty: everyone.
    pub users: Vec<String>,
    pub groups: Vec<String>,
}

/// How forwardAuth also hands the container secret to the app.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppAuth {
    /// Only `X-Spawngate-Secret` (the app enforces read-only shares itself).
    None,
    /// `Authorization: token <secret>` (Jupyter).
    Token,
    /// `Authorization: Bearer <secret>`.
    Bearer,
}

impl AppAuth {
    /// The `Authorization` value for `secret`, when this profile sends one.
    pub fn header(self, secret: &str) -> Option<String> {
        match self {
            AppAuth::None => None,
            AppAuth::Token => Some(format!("token {secret}")),
            AppAuth::Bearer => Some(format!("Bearer {secret}")),
        }
    }
}

/// A validated profile; every setting resolved against the `docker.*` defaults.
#[derive(Clone, Debug)]
pub struct Profile {
    pub name: String,
    pub display_name: String,
    pub description: String,
    pub image: String,
    pub port: u16,
    pub strip_prefix: bool,
    /// Starts with `/`; relative to the environment's prefix.
    pub ready_path: String,
    pub ready_status: Option<u16>,
    pub start_timeout: Duration,
    pub memory_bytes: i64,
    pub nano_cpus: i64,
    pub pids_limit: i64,
    /// `KEY=VALUE` pairs; values may hold `{base_path}`, `{slug}`, `{user}`.
    pub env: Vec<(String, String)>,
    pub init: bool,
    pub stop_timeout: Duration,
    pub read_only_rootfs: bool,
    pub volume_path: String,
    pub app_auth: AppAuth,
    pub users: Vec<String>,
    pub groups: Vec<String>,
}

impl Profile {
    /// Whether `user` (with `groups`) may start environments of this profile.
    pub fn allows(&self, user: &str, groups: &[String]) -> bool {
        (self.users.is_empty() && self.groups.is_empty())
            || self.users.iter().any(|u| u == user)
            || self.groups.iter().any(|g| groups.contains(g))
    }

    /// The profile's extra environment with the placeholders filled in.
    pub fn env_for(&self, base_path: &str, slug: &str, user: &str) -> Vec<(String, String)> {
        self.env
            .iter()
            .map(|(k, v)| {
                let v = v
                    .replace("{base_path}", base_path)
                    .replace("{slug}", slug)
                    .replace("{user}", user);
                (k.clone(), v)
            })
            .collect()
    }
}

/// Every profile by name, `default` included.
#[derive(Clone, Debug)]
pub struct Profiles {
    default: Arc<Profile>,
    by_name: BTreeMap<String, Arc<Profile>>,
}

impl Profiles {
    pub fn get(&self, name: &str) -> Option<&Arc<Profile>> {
        self.by_name.get(name)
    }

    /// The profile an environment runs (`None`: the default one). A profile
    /// removed from the config falls back to the default, so the environment
    /// still starts (with what the admin configures now).
    pub fn resolve(&self, name: Option<&str>) -> &Arc<Profile> {
        name.and_then(|n| self.by_name.get(n))
            .unwrap_or(&self.default)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Profile>> {
        self.by_name.values()
    }
}

fn default_profile(d: &DockerConfig, start_timeout: Duration) -> Profile {
    Profile {
        name: DEFAULT_PROFILE.into(),
        display_name: "Default".into(),
        description: String::new(),
        image: d.image.clone(),
        port: d.port,
        strip_prefix: true,
        ready_path: "/".into(),
        ready_status: None,
        start_timeout,
        memory_bytes: d.memory_bytes,
        nano_cpus: d.nano_cpus,
        pids_limit: d.pids_limit,
        env: Vec::new(),
        init: d.init,
        stop_timeout: d.stop_timeout,
        read_only_rootfs: d.read_only_rootfs,
        volume_path: d.data_mount.clone(),
        app_auth: AppAuth::None,
        users: Vec::new(),
        groups: Vec::new(),
    }
}

/// Validates `[profiles.*]` against the `docker.*` defaults.
pub(super) fn validate(
    raw: BTreeMap<String, RawProfile>,
    docker: &DockerConfig,
    start_timeout: Duration,
) -> Result<Profiles, ConfigError> {
    let mut by_name = BTreeMap::new();
    let base = default_profile(docker, start_timeout);
    if raw.contains_key(DEFAULT_PROFILE) {
        // One place for it: the warm pool and existing containers are made from
        // the docker.* settings.
        return Err(invalid(
            "profiles.default",
            "the default profile is the docker.* settings: set those, and name other profiles differently",
        ));
    }
    by_name.insert(DEFAULT_PROFILE.to_owned(), Arc::new(base.clone()));
    for (name, p) in raw {
        let key = |k: &str| format!("profiles.{name}.{k}");
        if !is_profile_name(&name) {
            return Err(invalid(
                &format!("profiles.{name}"),
                "a profile name is 1-32 of [a-z0-9_-], starting with a letter",
            ));
        }
        let image = match p.image.trim() {
            "" => return Err(invalid(&key("image"), "must be set")),
            image => image.to_owned(),
        };
        let port = p.port.unwrap_or(base.port);
        if port == 0 {
            return Err(invalid(&key("port"), "must be a port number (1-65535)"));
        }
        let ready_path = p.ready_path.unwrap_or_else(|| "/".into());
        if !ready_path.starts_with('/') || ready_path.contains(['?', '#', ' ']) {
            return Err(invalid(
                &key("ready_path"),
                format!("{ready_path:?}: must be a path starting with /, without query"),
            ));
        }
        if let Some(s) = p.ready_status
            && !(100..=599).contains(&s)
        {
            return Err(invalid(
                &key("ready_status"),
                "must be an HTTP status (100-599)",
            ));
        }
        let start_timeout = match p.start_timeout_secs {
            Some(0) => return Err(invalid(&key("start_timeout_secs"), "must be at least 1")),
            Some(s) => Duration::from_secs(s),
            None => start_timeout,
        };
        let memory_bytes = match &p.memory {
            None => base.memory_bytes,
            Some(m) => parse_bytes(m).filter(|b| *b >= 6 << 20).ok_or_else(|| {
                invalid(
                    &key("memory"),
                    format!("{m:?}: expected a size of at least 6m, like 512m or 2g"),
                )
            })?,
        };
        let nano_cpus = match p.cpus {
            None => base.nano_cpus,
            Some(c) if c > 0.0 && c <= 1024.0 => (c * 1e9) as i64,
            Some(_) => return Err(invalid(&key("cpus"), "must be a number of CPUs above 0")),
        };
        let pids_limit = match p.pids_limit {
            None => base.pids_limit,
            Some(n) if n >= 1 => n,
            Some(_) => return Err(invalid(&key("pids_limit"), "must be at least 1")),
        };
        let stop_timeout = match p.stop_timeout_secs {
            None => base.stop_timeout,
            Some(s) if (0..=MAX_STOP_TIMEOUT_SECS).contains(&s) => {
                Duration::from_secs(s.unsigned_abs())
            }
            Some(s) => {
                return Err(invalid(
                    &key("stop_timeout_secs"),
                    format!(
                        "{s} is out of range: must be between 0 and {MAX_STOP_TIMEOUT_SECS} seconds"
                    ),
                ));
            }
        };
        let volume_path = p.volume_path.unwrap_or_else(|| base.volume_path.clone());
        if !volume_path.starts_with('/') {
            return Err(invalid(
                &key("volume_path"),
                "must be an absolute path in the container",
            ));
        }
        let app_auth = match p.app_auth.as_deref() {
            None | Some("none") => AppAuth::None,
            Some("token") => AppAuth::Token,
            Some("bearer") => AppAuth::Bearer,
            Some(other) => {
                return Err(invalid(
                    &key("app_auth"),
                    format!("{other:?}: expected \"none\", \"token\" or \"bearer\""),
                ));
            }
        };
        if app_auth != AppAuth::None && !docker.inject_secret {
            return Err(invalid(
                &key("app_auth"),
                "needs docker.inject_secret = true (the token sent is the container secret)",
            ));
        }
        let env = container_env(&key("env"), &p.env)?;
        let profile = Profile {
            display_name: match p.display_name.trim() {
                "" => name.clone(),
                d => d.to_owned(),
            },
            description: p.description.trim().to_owned(),
            image,
            port,
            strip_prefix: p.strip_prefix.unwrap_or(true),
            ready_path,
            ready_status: p.ready_status,
            start_timeout,
            memory_bytes,
            nano_cpus,
            pids_limit,
            env,
            init: p.init.unwrap_or(base.init),
            stop_timeout,
            read_only_rootfs: p.read_only_rootfs.unwrap_or(base.read_only_rootfs),
            volume_path,
            app_auth,
            users: p.users,
            groups: p.groups,
            name: name.clone(),
        };
        by_name.insert(name, Arc::new(profile));
    }
    Ok(Profiles {
        default: Arc::new(base),
        by_name,
    })
}

/// Profile and environment names: short, lowercase, safe in URLs and labels.
pub fn is_profile_name(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.as_bytes()[0].is_ascii_lowercase()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profiles(toml_text: &str) -> Result<Profiles, String> {
        let raw: BTreeMap<String, RawProfile> =
            toml::from_str(toml_text).map_err(|e| e.to_string())?;
        let docker = super::super::RawDocker::default().validate().unwrap();
        validate(raw, &docker, Duration::from_secs(120)).map_err(|e| e.to_string())
    }

    #[test]
    fn the_default_profile_is_the_docker_settings() {
        let p = profiles("").unwrap();
        let d = p.resolve(None);
        assert_eq!(d.name, "default");
        assert_eq!(d.image, "spawngate-example-app:latest");
        assert!(d.strip_prefix);
        assert_eq!(d.volume_path, "/data");
        assert_eq!(
            p.resolve(Some("gone")).name,
            "default",
            "a removed profile falls back"
        );
    }

    #[test]
    fn a_profile_inherits_what_it_does_not_set_and_fills_its_env() {
        let p = profiles(
            "[jupyter]\nimage = \"j:1\"\nport = 8888\nstrip_prefix = false\nready_path = \"/api\"\n\
             env = [\"BASE={base_path}/x\", \"WHO={user}@{slug}\"]\napp_auth = \"token\"\ngroups = [\"sci\"]",
        )
        .unwrap();
        let j = p.get("jupyter").unwrap();
        assert_eq!(
            (j.port, j.strip_prefix, j.app_auth),
            (8888, false, AppAuth::Token)
        );
        assert_eq!(j.memory_bytes, 512 << 20);
        assert_eq!(j.display_name, "jupyter");
        assert_eq!(
            j.env_for("/u-abc", "abc", "ann"),
            [
                ("BASE".into(), "/u-abc/x".into()),
                ("WHO".into(), "ann@abc".into())
            ]
        );
        assert!(j.allows("bob", &["sci".into()]));
        assert!(!j.allows("bob", &[]));
        assert!(p.get("default").unwrap().allows("anyone", &[]));
        assert_eq!(AppAuth::Token.header("s").as_deref(), Some("token s"));
    }

    #[test]
    fn errors_name_the_key() {
        let err = |t: &str| profiles(t).unwrap_err();
        assert!(err("[lab]\nport = 1").contains("profiles.lab.image"));
        assert!(err("[Lab]\nimage = \"x\"").contains("profiles.Lab"));
        assert!(err("[lab]\nimage = \"x\"\nmemory = \"1k\"").contains("profiles.lab.memory"));
        assert!(
            err("[lab]\nimage = \"x\"\nready_path = \"api\"").contains("profiles.lab.ready_path")
        );
        assert!(
            err("[lab]\nimage = \"x\"\napp_auth = \"basic\"").contains("profiles.lab.app_auth")
        );
        assert!(
            err("[lab]\nimage = \"x\"\nenv = [\"SPAWNGATE_X=1\"]").contains("profiles.lab.env")
        );
        assert!(
            err("[lab]\nimage = \"x\"\nstop_timeout_secs = 1000")
                .contains("profiles.lab.stop_timeout_secs")
        );
        assert!(
            err("[lab]\nimage = \"x\"\nvolume_path = \"rel\"").contains("profiles.lab.volume_path")
        );
        assert!(err("[default]\nmemory = \"1g\"").contains("profiles.default"));
    }
}
