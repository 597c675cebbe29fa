//! `[session]`: how long a sign-in lasts and what its cookies are called.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, PublicUrl, invalid, is_cookie_name};

#[derive(Debug, Deserialize, Serialize)]
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

impl RawSession {
    /// Cookies are `Secure` (and `__Host-` prefixed) when users reach the site over
    /// HTTPS, which `public_url` says.
    pub(super) fn validate(self, public_url: &PublicUrl) -> Result<SessionConfig, ConfigError> {
        if self.ttl_hours == 0 {
            return Err(invalid("session.ttl_hours", "must be at least 1"));
        }
        if !is_cookie_name(&self.cookie_name) {
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
        Ok(SessionConfig {
            ttl: Duration::from_secs(self.ttl_hours * 3600),
            cookie_name: host_prefixed(&self.cookie_name),
            app_cookie_name: host_prefixed("spawngate_app"),
            form_cookie_name: host_prefixed("spawngate_form"),
            secure: public_url.https,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(https: bool) -> PublicUrl {
        PublicUrl {
            origin: String::new(),
            https,
            host: "h".into(),
            port_suffix: String::new(),
        }
    }

    #[test]
    fn cookies_are_host_prefixed_over_https_only() {
        let plain = RawSession::default().validate(&public(false)).unwrap();
        assert_eq!(plain.form_cookie_name, "spawngate_form");
        assert!(!plain.secure);
        let tls = RawSession::default().validate(&public(true)).unwrap();
        assert_eq!(tls.app_cookie_name, "__Host-spawngate_app");
        assert_eq!(tls.ttl, Duration::from_secs(7 * 24 * 3600));
        let bad = RawSession {
            cookie_name: "a;b".into(),
            ..RawSession::default()
        };
        assert_eq!(
            bad.validate(&public(false)).unwrap_err().to_string(),
            "invalid config: session.cookie_name: must be letters, digits, '_' or '-'"
        );
        let never = RawSession {
            ttl_hours: 0,
            ..RawSession::default()
        };
        assert!(never.validate(&public(false)).is_err());
    }
}
