//! `[jwt]`: bearer JWTs (or a cookie) from an identity service, verified here;
//! which user they name is `accounts::provisioning`'s question.

use hyper::header::HeaderMap;
use serde_json::{Map, Value};

use super::jwt::{Expectations, JwksCache, JwtVerifier, KeySource};
use crate::config::{ClaimMapping, JwtConfig, JwtKeys};
use crate::outbound::{HttpsClient, OutboundError};

/// `[jwt]`: bearer tokens (or a cookie) signed by an external identity service.
pub struct ExternalJwt {
    pub verifier: JwtVerifier,
    pub cookie: Option<String>,
    pub mapping: ClaimMapping,
}

impl ExternalJwt {
    pub fn new(config: &JwtConfig) -> Result<ExternalJwt, OutboundError> {
        let keys = match &config.keys {
            JwtKeys::Secret(secret) => KeySource::secret(secret.expose().as_bytes()),
            JwtKeys::PublicKeyFile(path) => {
                // Checked at config validation; read again here in case it changed.
                let pem = std::fs::read(path).map_err(|e| OutboundError::CaFile {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
                KeySource::public_pem(&pem, config.algorithms[0]).map_err(|message| {
                    OutboundError::CaFile {
                        path: path.display().to_string(),
                        message,
                    }
                })?
            }
            JwtKeys::JwksUrl(url) => KeySource::Jwks(Box::new(JwksCache::new(
                url.clone(),
                HttpsClient::new(config.ca_file.as_deref())?,
                config.jwks_cooldown,
            ))),
        };
        Ok(ExternalJwt {
            verifier: JwtVerifier {
                expect: Expectations {
                    algorithms: config.algorithms.clone(),
                    issuer: Some(config.issuer.clone()),
                    audience: Some(config.audience.clone()),
                    leeway: config.leeway,
                },
                keys,
            },
            cookie: config.cookie.clone(),
            mapping: config.mapping.clone(),
        })
    }

    /// The JWT a request carries: `Authorization: Bearer <jwt>` (not a spawngate
    /// token), else the configured cookie. Never from the query string.
    fn token<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        let bearer = headers
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .filter(|t| !t.starts_with("spawngate_"));
        bearer.or_else(|| {
            let name = self.cookie.as_deref()?;
            super::cookies::values(headers, name).next()
        })
    }

    /// The verified claims of the JWT a request carries, if any.
    pub async fn verified_claims(&self, headers: &HeaderMap) -> Option<Map<String, Value>> {
        let token = self.token(headers)?;
        match self.verifier.verify(token).await {
            Ok(claims) => Some(claims),
            Err(rejection) => {
                tracing::debug!(target: "spawngate::auth", %rejection, "external JWT refused");
                None
            }
        }
    }
}
