//! `[limits]`: how many containers run and start at once, what to do at capacity,
//! and the bounds of per-user overrides.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid, parse_bytes};

/// Most environments per user: each is a route in Traefik and a record inside its
/// user's, so the number stays small.
const MAX_ENVIRONMENTS_PER_USER: usize = 16;

#[derive(Debug, Deserialize, Serialize)]
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
    /// Environments one user may have, the default one included.
    pub environments_per_user: usize,
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
            environments_per_user: 1,
        }
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
    pub environments_per_user: usize,
}

impl RawLimits {
    pub(super) fn validate(self) -> Result<LimitsConfig, ConfigError> {
        let li = self;
        if li.max_concurrent_spawns == 0 {
            return Err(invalid(
                "limits.max_concurrent_spawns",
                "must be at least 1",
            ));
        }
        if !(1..=MAX_ENVIRONMENTS_PER_USER).contains(&li.environments_per_user) {
            return Err(invalid(
                "limits.environments_per_user",
                format!("must be between 1 and {MAX_ENVIRONMENTS_PER_USER}"),
            ));
        }
        Ok(LimitsConfig {
            environments_per_user: li.environments_per_user,
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
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(toml: &str) -> Result<LimitsConfig, String> {
        let raw: RawLimits = toml::from_str(toml).unwrap();
        raw.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn zero_running_means_no_limit_and_bounds_are_checked() {
        let l = limits("max_memory = \"8g\"\nmax_cpus = 2.5").unwrap();
        assert_eq!(l.max_running, None);
        assert_eq!(l.max_memory_bytes, 8 << 30);
        assert_eq!(l.max_nano_cpus, 2_500_000_000);
        assert_eq!(limits("max_running = 5").unwrap().max_running, Some(5));
        assert_eq!(
            limits("max_memory = \"1k\"").unwrap_err(),
            "invalid config: limits.max_memory: \"1k\": expected a size like 4g"
        );
        assert_eq!(limits("").unwrap().environments_per_user, 1);
        assert!(
            limits("environments_per_user = 0")
                .unwrap_err()
                .contains("limits.environments_per_user")
        );
        assert!(
            limits("max_cpus = -1.0")
                .unwrap_err()
                .contains("limits.max_cpus")
        );
    }
}
