//! `[lifecycle]`: the idle tiers (pause, stop, remove), the lifetime cap, and what
//! happens at login, user creation and deletion.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

#[derive(Debug, Deserialize, Serialize)]
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

impl RawLifecycle {
    pub(super) fn validate(self) -> Result<LifecycleConfig, ConfigError> {
        let lc = self;
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
        Ok(lifecycle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lifecycle(toml: &str) -> Result<LifecycleConfig, ConfigError> {
        let raw: RawLifecycle = toml::from_str(toml).unwrap();
        raw.validate()
    }

    #[test]
    fn zero_means_never_and_the_first_tier_is_the_shortest() {
        let l =
            lifecycle("pause_after_secs = 60\nremove_after_secs = 7200\nmax_lifetime_secs = 30")
                .unwrap();
        assert_eq!(l.pause_after, Some(Duration::from_secs(60)));
        assert_eq!(l.idle_timeout, Some(Duration::from_secs(1800)));
        assert_eq!(l.first_tier(), Some(Duration::from_secs(30)));
        let never = lifecycle("idle_timeout_secs = 0").unwrap();
        assert_eq!(never.first_tier(), None);
        // Without an idle stop, pause and removal are not ordered against it.
        assert!(
            lifecycle("idle_timeout_secs = 0\npause_after_secs = 90\nremove_after_secs = 60")
                .is_ok()
        );
    }
}
