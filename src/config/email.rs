//! `[email]`: the SMTP relay that sends login links.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};
use crate::ids::Secret;

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawEmail {
    /// Let users ask for a login link by email on the login page.
    pub enabled: bool,
    pub smtp_host: String,
    pub smtp_port: u16,
    /// `none` (plain, for a local relay), `starttls` or `tls` (implicit TLS).
    pub smtp_tls: String,
    pub smtp_username: String,
    /// Prefer the environment (`SPAWNGATE_EMAIL_SMTP_PASSWORD`) over the file.
    pub smtp_password: String,
    pub from: String,
    /// Extra CA certificates (PEM) trusted for the SMTP server's TLS certificate.
    pub ca_file: String,
}

impl Default for RawEmail {
    fn default() -> Self {
        RawEmail {
            enabled: false,
            smtp_host: "localhost".into(),
            smtp_port: 25,
            smtp_tls: "none".into(),
            smtp_username: String::new(),
            smtp_password: String::new(),
            from: "spawngate <spawngate@localhost>".into(),
            ca_file: String::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpTls {
    None,
    StartTls,
    Implicit,
}

#[derive(Clone, Debug)]
pub struct EmailConfig {
    pub smtp_host: String,
    pub smtp_port: u16,
    pub tls: SmtpTls,
    pub credentials: Option<(String, Secret)>,
    pub from: String,
    /// PEM certificates to trust besides the Mozilla roots.
    pub ca_pem: Option<Vec<u8>>,
}

impl RawEmail {
    /// `None` when email is off; then none of its other keys is checked.
    pub(super) fn validate(self) -> Result<Option<EmailConfig>, ConfigError> {
        let e = self;
        if !e.enabled {
            return Ok(None);
        }
        let tls = match e.smtp_tls.as_str() {
            "none" => SmtpTls::None,
            "starttls" => SmtpTls::StartTls,
            "tls" => SmtpTls::Implicit,
            other => {
                return Err(invalid(
                    "email.smtp_tls",
                    format!("{other:?}: expected none, starttls or tls"),
                ));
            }
        };
        if e.smtp_host.trim().is_empty() {
            return Err(invalid("email.smtp_host", "must not be empty"));
        }
        if e.from.parse::<lettre::message::Mailbox>().is_err() {
            return Err(invalid(
                "email.from",
                format!("{:?} is not a mailbox like 'Name <a@b.org>'", e.from),
            ));
        }
        let ca_pem = if e.ca_file.is_empty() {
            None
        } else {
            if tls == SmtpTls::None {
                return Err(invalid(
                    "email.ca_file",
                    "only used with email.smtp_tls = \"starttls\" or \"tls\"",
                ));
            }
            crate::outbound::read_ca_file(Path::new(&e.ca_file))
                .map_err(|err| invalid("email.ca_file", err.to_string()))?;
            Some(
                std::fs::read(&e.ca_file)
                    .map_err(|err| invalid("email.ca_file", format!("{}: {err}", e.ca_file)))?,
            )
        };
        if e.smtp_password.is_empty() != e.smtp_username.is_empty() {
            return Err(invalid(
                "email.smtp_username",
                "set both email.smtp_username and email.smtp_password, or neither",
            ));
        }
        if !e.smtp_username.is_empty() && tls == SmtpTls::None {
            return Err(invalid(
                "email.smtp_tls",
                "SMTP credentials need \"starttls\" or \"tls\" (they would cross the network in clear text)",
            ));
        }
        Ok(Some(EmailConfig {
            ca_pem,
            smtp_host: e.smtp_host,
            smtp_port: e.smtp_port,
            tls,
            credentials: (!e.smtp_username.is_empty())
                .then(|| (e.smtp_username, Secret::new(e.smtp_password))),
            from: e.from,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email(toml: &str) -> Result<Option<EmailConfig>, String> {
        let raw: RawEmail = toml::from_str(toml).unwrap();
        raw.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn off_means_unchecked() {
        assert!(email("smtp_tls = \"bogus\"").unwrap().is_none());
    }

    #[test]
    fn tls_mailbox_and_credentials_are_checked() {
        let on = "enabled = true\n";
        let e = email(&format!(
            "{on}smtp_tls = \"tls\"\nsmtp_username = \"u\"\nsmtp_password = \"p\""
        ))
        .unwrap()
        .unwrap();
        assert_eq!(e.tls, SmtpTls::Implicit);
        assert_eq!(e.credentials.map(|(u, _)| u).as_deref(), Some("u"));
        assert_eq!(
            email(&format!("{on}smtp_tls = \"ssl\"")).unwrap_err(),
            "invalid config: email.smtp_tls: \"ssl\": expected none, starttls or tls"
        );
        assert!(
            email(&format!("{on}from = \"nobody\""))
                .unwrap_err()
                .contains("email.from")
        );
        assert!(
            email(&format!("{on}smtp_username = \"u\""))
                .unwrap_err()
                .contains("email.smtp_username")
        );
        assert!(
            email(&format!("{on}smtp_username = \"u\"\nsmtp_password = \"p\""))
                .unwrap_err()
                .contains("clear text")
        );
        assert!(
            email(&format!("{on}ca_file = \"/nonexistent.pem\""))
                .unwrap_err()
                .contains("email.ca_file")
        );
    }
}
