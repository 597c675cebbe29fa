//! `[store]`: where spawngate keeps its state. Empty `url`: the embedded sled
//! store in `server.data_dir` (one process). `postgres://…`: a PostgreSQL
//! database that several replicas share (see `store::postgres`).

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStore {
    /// `postgres://user:password@host:port/database`; empty: embedded.
    pub url: String,
}

/// The validated store location. The URL may hold a password: `Debug` hides it.
#[derive(Clone, Default)]
pub struct StoreConfig {
    pub url: Option<String>,
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = match &self.url {
            None => "embedded".to_owned(),
            Some(url) => redacted(url),
        };
        write!(f, "StoreConfig({shown})")
    }
}

/// The URL without its password, for logs and `spawngate check`.
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "(unparsable)".to_owned(),
    }
}

impl RawStore {
    pub fn validate(self) -> Result<StoreConfig, ConfigError> {
        let url = self.url.trim();
        if url.is_empty() {
            return Ok(StoreConfig { url: None });
        }
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(invalid(
                "store.url",
                "must be empty (the embedded store) or a postgres:// URL",
            ));
        }
        let parsed: tokio_postgres::Config = url
            .parse()
            .map_err(|e| invalid("store.url", format!("not a PostgreSQL URL: {e}")))?;
        if parsed.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            // Refused rather than silently sent in the clear.
            return Err(invalid(
                "store.url",
                "sslmode=require is not supported: reach PostgreSQL over a private network \
                 or a local socket, and leave sslmode out (or sslmode=disable)",
            ));
        }
        if parsed.get_dbname().is_none() {
            return Err(invalid(
                "store.url",
                "names no database (postgres://…/<database>)",
            ));
        }
        Ok(StoreConfig {
            url: Some(url.to_owned()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(url: &str) -> Result<StoreConfig, String> {
        RawStore { url: url.into() }
            .validate()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn urls_are_checked_and_passwords_never_shown() {
        assert!(check("").unwrap().url.is_none());
        let c = check("postgres://sg:hunter2@db:5432/spawngate").unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(format!("{c:?}").contains("db:5432/spawngate"));
        assert!(check("mysql://x@y/z").unwrap_err().contains("store.url"));
        assert!(
            check("postgres://x@y/z?sslmode=require")
                .unwrap_err()
                .contains("sslmode=require is not supported")
        );
        assert!(
            check("postgres://x@y")
                .unwrap_err()
                .contains("names no database")
        );
        assert!(
            check("postgres://x@y/z?nonsense=1")
                .unwrap_err()
                .contains("not a PostgreSQL URL")
        );
    }
}
