//! `[metrics]`: the Prometheus endpoint `GET /metrics` on spawngate's own listener.
//!
//! Traefik never routes it (spawngate's routers cover `/_spawngate/` and `/u-`
//! only): Prometheus scrapes `server.listen` directly. The optional token is
//! for when that address is reachable by more than the scraper.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{ConfigError, invalid};

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMetrics {
    /// Serve `GET /metrics` (Prometheus text format).
    pub enabled: bool,
    /// When set, `/metrics` requires `Authorization: Bearer <token>`.
    pub token: String,
}

impl Default for RawMetrics {
    fn default() -> Self {
        RawMetrics {
            enabled: true,
            token: String::new(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct MetricsConfig {
    pub enabled: bool,
    pub token: Option<MetricsToken>,
}

/// The scrape token, kept only as its SHA-256: the plaintext lives where the
/// operator put it (config file or environment, and Prometheus' own config, which
/// must send it). A fast hash suffices for a long random token, and comparing
/// digests takes the same time whatever was presented, its length included.
#[derive(Clone)]
pub struct MetricsToken([u8; 32]);

impl MetricsToken {
    fn new(token: &str) -> MetricsToken {
        MetricsToken(Sha256::digest(token.as_bytes()).into())
    }

    /// Constant-time comparison with a presented token.
    pub fn matches(&self, presented: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.0.ct_eq(&presented).into()
    }
}

impl std::fmt::Debug for MetricsToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsToken(<redacted>)")
    }
}

impl RawMetrics {
    pub(super) fn validate(self) -> Result<MetricsConfig, ConfigError> {
        let token = self.token.trim();
        if !token.is_empty() && token.len() < 16 {
            return Err(invalid(
                "metrics.token",
                "must be at least 16 characters (e.g. `openssl rand -hex 32`)",
            ));
        }
        Ok(MetricsConfig {
            enabled: self.enabled,
            token: (!token.is_empty()).then(|| MetricsToken::new(token)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(toml: &str) -> Result<MetricsConfig, String> {
        let raw: RawMetrics = toml::from_str(toml).unwrap();
        raw.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn enabled_without_a_token_by_default_and_tokens_are_long() {
        let m = metrics("").unwrap();
        assert!(m.enabled && m.token.is_none());
        assert!(!metrics("enabled = false").unwrap().enabled);
        let t = metrics("token = \"0123456789abcdef\"")
            .unwrap()
            .token
            .unwrap();
        assert!(t.matches("0123456789abcdef"));
        assert!(!t.matches("0123456789abcde"));
        assert!(!t.matches(""));
        assert_eq!(format!("{t:?}"), "MetricsToken(<redacted>)");
        assert_eq!(
            metrics("token = \"short\"").unwrap_err(),
            "invalid config: metrics.token: must be at least 16 characters (e.g. `openssl rand -hex 32`)"
        );
    }
}
