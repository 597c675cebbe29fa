//! `[pool]`: warm spare containers handed to users on their first request.

use serde::{Deserialize, Serialize};

use super::{ConfigError, NetworkMode, invalid};

/// More spares than this would mostly hold memory nobody asked for.
const MAX_POOL: usize = 64;

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPool {
    /// Running spare containers of `docker.image` (stateless images only) handed to
    /// users on their first request; 0 = no pool. Network mode only.
    pub size: usize,
}

impl RawPool {
    /// The pool size (0 = none); `mode` is the validated `docker.mode`.
    pub(super) fn validate(self, mode: NetworkMode) -> Result<usize, ConfigError> {
        if self.size > 0 && mode != NetworkMode::Network {
            return Err(invalid(
                "pool.size",
                "a warm pool needs docker.mode = \"network\" (a pooled container becomes a user's by being renamed; in host mode its published port cannot change)",
            ));
        }
        if self.size > MAX_POOL {
            return Err(invalid("pool.size", "at most 64"));
        }
        Ok(self.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_needs_network_mode_and_stays_small() {
        let pool = |size| RawPool { size };
        assert_eq!(pool(0).validate(NetworkMode::Host).unwrap(), 0);
        assert_eq!(pool(64).validate(NetworkMode::Network).unwrap(), 64);
        assert!(
            pool(1)
                .validate(NetworkMode::Host)
                .unwrap_err()
                .to_string()
                .starts_with(
                    "invalid config: pool.size: a warm pool needs docker.mode = \"network\""
                )
        );
        assert_eq!(
            pool(65)
                .validate(NetworkMode::Network)
                .unwrap_err()
                .to_string(),
            "invalid config: pool.size: at most 64"
        );
    }
}
