//! `[spawn]`: how long forwardAuth holds a request for a starting container.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// Longest forwardAuth hold: Traefik gives up on an auth server after a fixed 30 s
/// and answers 500, so the hold must stay clearly below that.
const MAX_HOLD: Duration = Duration::from_secs(25);

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSpawn {
    /// How long forwardAuth holds a request while the container starts.
    pub hold_secs: f64,
    /// How long a container may take to answer its first HTTP request.
    pub ready_timeout_secs: u64,
    /// How long a browser's request is held before it gets the live progress
    /// page instead (at most `hold_secs`): a fast start is simply held, a slow
    /// one is shown as it goes.
    pub page_after_secs: f64,
}

impl Default for RawSpawn {
    fn default() -> Self {
        RawSpawn {
            hold_secs: 10.0,
            ready_timeout_secs: 120,
            page_after_secs: 1.5,
        }
    }
}

#[derive(Clone, Debug)]
pub struct SpawnConfig {
    pub hold: Duration,
    pub ready_timeout: Duration,
    /// A browser's hold (never longer than `hold`).
    pub page_after: Duration,
}

impl RawSpawn {
    pub(super) fn validate(self) -> Result<SpawnConfig, ConfigError> {
        if !(self.hold_secs >= 0.0 && self.hold_secs <= MAX_HOLD.as_secs_f64()) {
            return Err(invalid(
                "spawn.hold_secs",
                format!(
                    "{} is out of range: must be between 0 and 25 (Traefik abandons forwardAuth calls after 30 s)",
                    self.hold_secs
                ),
            ));
        }
        if self.ready_timeout_secs == 0 {
            return Err(invalid("spawn.ready_timeout_secs", "must be at least 1"));
        }
        if !(self.page_after_secs >= 0.0 && self.page_after_secs <= MAX_HOLD.as_secs_f64()) {
            return Err(invalid(
                "spawn.page_after_secs",
                format!(
                    "{} is out of range: must be between 0 and 25",
                    self.page_after_secs
                ),
            ));
        }
        let hold = Duration::from_secs_f64(self.hold_secs);
        Ok(SpawnConfig {
            page_after: Duration::from_secs_f64(self.page_after_secs).min(hold),
            hold: Duration::from_secs_f64(self.hold_secs),
            ready_timeout: Duration::from_secs(self.ready_timeout_secs),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hold_stays_below_traefiks_timeout() {
        let hold = |secs: f64| {
            RawSpawn {
                hold_secs: secs,
                ..RawSpawn::default()
            }
            .validate()
            .map_err(|e| e.to_string())
        };
        assert_eq!(hold(25.0).unwrap().hold, MAX_HOLD);
        assert_eq!(
            hold(25.5).unwrap_err(),
            "invalid config: spawn.hold_secs: 25.5 is out of range: must be between 0 and 25 (Traefik abandons forwardAuth calls after 30 s)"
        );
        assert!(hold(-1.0).is_err());
        assert!(hold(f64::NAN).is_err());
        let never = RawSpawn {
            ready_timeout_secs: 0,
            ..RawSpawn::default()
        };
        assert!(never.validate().is_err());
    }
}
