//! `[login]`: login links, rate limits, password sign-in and self sign-up.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

#[derive(Debug, Deserialize, Serialize)]
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

impl RawLogin {
    /// `email_enabled`: whether login links can be sent at all (sign-up needs them).
    pub(super) fn validate(self, email_enabled: bool) -> Result<LoginConfig, ConfigError> {
        let l = self;
        if l.token_ttl_secs == 0 || l.token_ttl_secs > 24 * 3600 {
            return Err(invalid(
                "login.token_ttl_secs",
                "must be between 1 and 86400",
            ));
        }
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
        if !signup_domains.is_empty() && !email_enabled {
            return Err(invalid(
                "login.signup_domains",
                "self sign-up works through email links: set email.enabled = true",
            ));
        }
        Ok(LoginConfig {
            token_ttl: Duration::from_secs(l.token_ttl_secs),
            per_email_per_hour: l.per_email_per_hour,
            per_ip_per_hour: l.per_ip_per_hour,
            password_failures_per_hour: l.password_failures_per_hour,
            passwords: l.passwords,
            signup_domains,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(toml: &str, email_enabled: bool) -> Result<LoginConfig, String> {
        let raw: RawLogin = toml::from_str(toml).unwrap();
        raw.validate(email_enabled).map_err(|e| e.to_string())
    }

    #[test]
    fn links_limits_and_sign_up_domains_are_checked() {
        assert_eq!(
            login("token_ttl_secs = 86401", false).unwrap_err(),
            "invalid config: login.token_ttl_secs: must be between 1 and 86400"
        );
        assert_eq!(
            login("per_ip_per_hour = 0", false).unwrap_err(),
            "invalid config: login.per_ip_per_hour: rate limits must be at least 1"
        );
        let l = login("signup_domains = [\" @Example.ORG\"]", true).unwrap();
        assert_eq!(l.signup_domains, ["example.org"]);
        assert!(
            login("signup_domains = [\"example.org\"]", false)
                .unwrap_err()
                .contains("set email.enabled = true")
        );
        assert!(
            login("signup_domains = [\"localhost\"]", true)
                .unwrap_err()
                .contains("login.signup_domains")
        );
    }
}
