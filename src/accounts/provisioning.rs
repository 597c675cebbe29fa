//! Identities vouched for by someone else (bearer JWTs from an identity service,
//! OIDC ID tokens, confirmed email addresses for self sign-up) end in the same
//! question: which spawngate user is this, and may one be created?

use std::sync::Arc;

use hyper::header::HeaderMap;
use serde_json::{Map, Value};

use super::Accounts;
use crate::auth::external::ExternalJwt;
use crate::config::{ClaimMapping, MatchBy};
use crate::error::Error;
use crate::store::User;

/// Why a verified identity does not become a session.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("the token has no string claim {0:?}")]
    MissingClaim(String),
    #[error("the identity provider does not vouch for the email address (email_verified)")]
    EmailUnverified,
    #[error("no such user (and auto-creation is off)")]
    NoSuchUser,
    #[error("the user is disabled")]
    Disabled,
    #[error("cannot create the user: {0}")]
    Create(Error),
}

impl Accounts {
    /// The user behind an external JWT, if `[jwt]` is on and the token verifies.
    pub async fn identify_jwt(&self, jwt: &ExternalJwt, headers: &HeaderMap) -> Option<Arc<User>> {
        let claims = jwt.verified_claims(headers).await?;
        match self.user_for_claims(&claims, &jwt.mapping, "jwt").await {
            Ok(user) => Some(user),
            Err(e) => {
                tracing::info!(target: "spawngate::auth", error = %e, "external JWT maps to no user");
                None
            }
        }
    }

    /// Maps verified claims to a user, creating one when the mapping allows.
    pub async fn user_for_claims(
        &self,
        claims: &Map<String, Value>,
        mapping: &ClaimMapping,
        source: &str,
    ) -> Result<Arc<User>, MappingError> {
        let value = claims
            .get(&mapping.claim)
            .and_then(Value::as_str)
            .map(|v| v.trim().to_ascii_lowercase())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| MappingError::MissingClaim(mapping.claim.clone()))?;
        if mapping.match_by == MatchBy::Email
            && !email_vouched_for(claims, mapping.require_verified_email)
        {
            return Err(MappingError::EmailUnverified);
        }
        let existing = {
            let directory = self.store.snapshot();
            match mapping.match_by {
                MatchBy::Email => directory.by_email(&value).cloned(),
                MatchBy::Name => directory.by_name(&value).cloned(),
            }
        };
        if let Some(user) = existing {
            return if user.disabled {
                Err(MappingError::Disabled)
            } else {
                Ok(user)
            };
        }
        if !mapping.auto_create {
            return Err(MappingError::NoSuchUser);
        }
        let actor = format!("{source}:auto-create");
        match mapping.match_by {
            MatchBy::Email => self.create_user_for_email(&actor, &value).await,
            MatchBy::Name => {
                self.add_user(&actor, &value, None)
                    .await
                    .map_err(MappingError::Create)?;
                self.store
                    .snapshot()
                    .by_name(&value)
                    .cloned()
                    .ok_or(MappingError::NoSuchUser)
            }
        }
    }

    /// Creates a user for a confirmed email address, named after its local part
    /// (`ada.lovelace@x.org` → `ada.lovelace`, then `ada.lovelace-2`, … if taken).
    /// If the address got an account meanwhile, that account is the answer.
    pub async fn create_user_for_email(
        &self,
        actor: &str,
        email: &str,
    ) -> Result<Arc<User>, MappingError> {
        let base = name_from_email(email);
        let mut last_error = None;
        for attempt in 1..=20u32 {
            let name = if attempt == 1 {
                base.clone()
            } else {
                format!("{base}-{attempt}")
            };
            match self.add_user(actor, &name, Some(email)).await {
                Ok(_) => break,
                Err(e @ Error::Conflict(_)) => {
                    if self.store.snapshot().by_email(email).is_some() {
                        break;
                    }
                    last_error = Some(e);
                }
                Err(e) => return Err(MappingError::Create(e)),
            }
        }
        match self.store.snapshot().by_email(email) {
            Some(user) if user.disabled => Err(MappingError::Disabled),
            Some(user) => Ok(user.clone()),
            None => {
                Err(MappingError::Create(last_error.unwrap_or_else(|| {
                    Error::Conflict("no free user name".into())
                })))
            }
        }
    }
}

/// A valid user name from an email's local part.
pub fn name_from_email(email: &str) -> String {
    let local = email.split('@').next().unwrap_or_default();
    let mut name: String = local
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(48)
        .collect();
    name = name
        .trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned();
    if name.is_empty() {
        name = "user".into();
    }
    name
}

/// Whether `email_verified` lets the address identify someone: it must be `true`
/// when required, else only an explicit `false` refuses. Some IdPs send a string.
fn email_vouched_for(claims: &Map<String, Value>, required: bool) -> bool {
    let verified = match claims.get("email_verified") {
        Some(Value::Bool(b)) => Some(*b),
        Some(Value::String(s)) => s.parse::<bool>().ok(),
        _ => None,
    };
    if required {
        verified == Some(true)
    } else {
        verified != Some(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_verified_must_be_true_when_required_and_not_false_otherwise() {
        let claims = |v: Value| match v {
            Value::Null => Map::new(),
            v => serde_json::json!({ "email_verified": v })
                .as_object()
                .cloned()
                .unwrap_or_default(),
        };
        for (value, required, ok) in [
            (Value::Bool(true), true, true),
            (Value::String("true".into()), true, true),
            (Value::Null, true, false),
            (Value::Bool(false), true, false),
            (Value::String("yes".into()), true, false),
            (Value::Null, false, true),
            (Value::Bool(true), false, true),
            (Value::Bool(false), false, false),
            (Value::String("false".into()), false, false),
        ] {
            assert_eq!(
                email_vouched_for(&claims(value.clone()), required),
                ok,
                "{value} required={required}"
            );
        }
    }

    #[test]
    fn names_from_emails_are_valid_user_names() {
        for (email, want) in [
            ("Ada.Lovelace@x.org", "ada.lovelace"),
            ("+tag@x.org", "tag"),
            ("élise@x.org", "lise"),
            ("@x.org", "user"),
            ("a b@x.org", "a-b"),
        ] {
            let name = name_from_email(email);
            assert_eq!(name, want);
            super::super::validate::name(&name).unwrap();
        }
    }
}
