//! `[traefik]`: what the provider emits about entry points and TLS, and where
//! `spawngate check` reads Traefik's API.

use serde::{Deserialize, Serialize};

use super::{ConfigError, http_url, invalid, is_name};

#[derive(Debug, Deserialize, Serialize)]
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

#[derive(Clone, Debug)]
pub struct TraefikConfig {
    pub entry_points: Vec<String>,
    pub cert_resolver: Option<String>,
    /// Where `spawngate check` reads Traefik's API (no trailing slash).
    pub api_url: Option<String>,
}

impl RawTraefik {
    pub(super) fn validate(self) -> Result<TraefikConfig, ConfigError> {
        if self.entry_points.is_empty() || self.entry_points.iter().any(|e| !is_name(e)) {
            return Err(invalid(
                "traefik.entry_points",
                "must be a non-empty list of entry point names",
            ));
        }
        let api_url = match self.api_url.trim() {
            "" => None,
            raw => Some(http_url("traefik.api_url", raw)?),
        };
        Ok(TraefikConfig {
            entry_points: self.entry_points,
            cert_resolver: (!self.cert_resolver.is_empty()).then_some(self.cert_resolver),
            api_url,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traefik(toml: &str) -> Result<TraefikConfig, String> {
        let raw: RawTraefik = toml::from_str(toml).unwrap();
        raw.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn entry_points_and_api_url_are_checked() {
        let t = traefik("api_url = \"http://127.0.0.1:8081/\"\ncert_resolver = \"le\"").unwrap();
        assert_eq!(t.api_url.as_deref(), Some("http://127.0.0.1:8081"));
        assert_eq!(t.cert_resolver.as_deref(), Some("le"));
        assert!(traefik("").unwrap().api_url.is_none());
        assert_eq!(
            traefik("entry_points = []").unwrap_err(),
            "invalid config: traefik.entry_points: must be a non-empty list of entry point names"
        );
        assert!(traefik("entry_points = [\"web secure\"]").is_err());
        assert_eq!(
            traefik("api_url = \"ftp://x\"").unwrap_err(),
            "invalid config: traefik.api_url: must be an http:// or https:// URL"
        );
    }
}
