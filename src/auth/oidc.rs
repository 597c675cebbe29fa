//! OIDC login (authorization code flow with PKCE, state and nonce) against an
//! issuer found by discovery. A login in flight lives in the browser, not here:
//! its state, nonce, PKCE verifier and destination travel in a signed, expiring
//! `HttpOnly` cookie, so nothing is held in memory (a flood of started logins
//! costs nothing, and a restart does not break logins in flight). The `state`
//! returned by the IdP must equal the cookie's, which binds the login to the
//! browser that started it; the code itself is single use at the IdP. The ID
//! token is verified like any external JWT (pinned algorithms, the issuer's JWKS
//! with a refetch cooldown) plus its nonce.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::Digest;

use super::jwt::{Expectations, JwksCache, JwtVerifier, KeySource};
use crate::config::OidcConfig;
use crate::ids::{Secret, derive_token, random_token};
use crate::outbound::{HttpsClient, OutboundError, require_https};
use crate::time::unix_now;

/// How long a user may take at the IdP.
pub const STATE_TTL: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("the identity provider is unreachable or misconfigured: {0}")]
    Provider(String),
    #[error("missing, forged, foreign or expired login state")]
    State,
    #[error("the identity provider refused: {0}")]
    Refused(String),
    #[error("the ID token is invalid: {0}")]
    Token(String),
}

impl From<OutboundError> for OidcError {
    fn from(e: OutboundError) -> Self {
        OidcError::Provider(e.to_string())
    }
}

#[derive(Deserialize)]
struct DiscoveryDocument {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Vec<String>,
}

struct Provider {
    authorization_endpoint: String,
    token_endpoint: String,
    /// Send client credentials in the body (`client_secret_post`) instead of HTTP
    /// Basic, when the IdP supports only that.
    secret_in_body: bool,
    id_tokens: JwtVerifier,
}

/// A login in flight, as carried by the browser's state cookie.
#[derive(serde::Serialize, Deserialize)]
struct Pending {
    #[serde(rename = "s")]
    state: String,
    #[serde(rename = "n")]
    nonce: String,
    #[serde(rename = "v")]
    code_verifier: String,
    #[serde(rename = "x")]
    next: Option<String>,
    #[serde(rename = "t")]
    created: i64,
}

const STATE_MAC_PURPOSE: &[u8] = b"spawngate oidc state\0";

impl Pending {
    /// `<base64url(JSON)>.<MAC>`.
    fn seal(&self, key: &[u8]) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
        let mac = derive_token(key, STATE_MAC_PURPOSE, &payload);
        format!("{payload}.{mac}")
    }

    /// The login a cookie carries, if its MAC is ours and it has not expired.
    fn open(key: &[u8], cookie: &str) -> Option<Pending> {
        // A state cookie is a few hundred bytes (up to ~3 KB with a long `next`).
        if cookie.len() > 4096 {
            return None;
        }
        let (payload, mac) = cookie.rsplit_once('.')?;
        if !Secret::new(derive_token(key, STATE_MAC_PURPOSE, payload)).matches(mac) {
            return None;
        }
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .ok()?;
        let pending: Pending = serde_json::from_slice(&json).ok()?;
        let age = unix_now() - pending.created;
        (0..STATE_TTL.as_secs() as i64)
            .contains(&age)
            .then_some(pending)
    }
}

/// A finished login: the ID token's claims and where the user was going.
pub struct Completed {
    pub claims: Map<String, Value>,
    pub next: Option<String>,
}

pub struct OidcClient {
    config: OidcConfig,
    client: HttpsClient,
    redirect_uri: String,
    provider: tokio::sync::Mutex<Option<Arc<Provider>>>,
    /// Signs the state cookies (derived from the store's session key).
    state_key: Vec<u8>,
}

impl OidcClient {
    pub fn new(
        config: OidcConfig,
        public_origin: &str,
        state_key: Vec<u8>,
    ) -> Result<OidcClient, OutboundError> {
        Ok(OidcClient {
            client: HttpsClient::new(config.ca_file.as_deref())?,
            redirect_uri: format!("{public_origin}/_spawngate/oidc/callback"),
            config,
            provider: tokio::sync::Mutex::new(None),
            state_key,
        })
    }

    pub fn mapping(&self) -> crate::config::ClaimMapping {
        self.config.mapping.clone()
    }

    pub fn label(&self) -> &str {
        &self.config.label
    }

    /// Discovery, done once when it first succeeds (a failure is retried on the
    /// next login instead of disabling OIDC until a restart).
    async fn provider(&self) -> Result<Arc<Provider>, OidcError> {
        let mut slot = self.provider.lock().await;
        if let Some(p) = slot.as_ref() {
            return Ok(p.clone());
        }
        let issuer = self.config.issuer.trim_end_matches('/');
        let url = format!("{issuer}/.well-known/openid-configuration");
        let doc: DiscoveryDocument = self.client.get_json(&url).await?;
        // OIDC Discovery §4.3: the document must name exactly the issuer asked for.
        if doc.issuer != self.config.issuer {
            return Err(OidcError::Provider(format!(
                "discovery names issuer {:?}, expected {:?}",
                doc.issuer, self.config.issuer
            )));
        }
        for endpoint in [
            &doc.authorization_endpoint,
            &doc.token_endpoint,
            &doc.jwks_uri,
        ] {
            require_https(endpoint)?;
        }
        let secret_in_body = !doc.token_endpoint_auth_methods_supported.is_empty()
            && !doc
                .token_endpoint_auth_methods_supported
                .iter()
                .any(|m| m == "client_secret_basic")
            && doc
                .token_endpoint_auth_methods_supported
                .iter()
                .any(|m| m == "client_secret_post");
        let provider = Arc::new(Provider {
            authorization_endpoint: doc.authorization_endpoint,
            token_endpoint: doc.token_endpoint,
            secret_in_body,
            id_tokens: JwtVerifier {
                expect: Expectations {
                    algorithms: self.config.algorithms.clone(),
                    issuer: Some(doc.issuer),
                    audience: Some(self.config.client_id.clone()),
                    leeway: self.config.leeway,
                },
                keys: KeySource::Jwks(Box::new(JwksCache::new(
                    doc.jwks_uri,
                    self.client.clone(),
                    self.config.jwks_cooldown,
                ))),
            },
        });
        tracing::info!(issuer = %self.config.issuer, "OIDC discovery done");
        *slot = Some(provider.clone());
        Ok(provider)
    }

    /// Starts a login: the IdP URL to send the browser to, and the sealed login to
    /// keep in the browser's state cookie.
    pub async fn begin(&self, next: Option<String>) -> Result<(String, String), OidcError> {
        let provider = self.provider().await?;
        let state = random_token::<32>();
        let nonce = random_token::<32>();
        let code_verifier = random_token::<32>();
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(code_verifier.as_bytes()));
        let scope = self.config.scopes.join(" ");
        let mut url = url::Url::parse(&provider.authorization_endpoint)
            .map_err(|e| OidcError::Provider(e.to_string()))?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.config.client_id)
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("scope", &scope)
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        let pending = Pending {
            state,
            nonce,
            code_verifier,
            next,
            created: unix_now(),
        };
        Ok((url.to_string(), pending.seal(&self.state_key)))
    }

    /// Finishes a login: the browser's state cookie must be one this server sealed,
    /// unexpired, for exactly the `state` the IdP sent back; the code is exchanged
    /// with its PKCE verifier; the ID token must verify and carry its nonce.
    pub async fn finish(
        &self,
        state: &str,
        state_cookie: Option<&str>,
        code: &str,
    ) -> Result<Completed, OidcError> {
        let pending = state_cookie
            .and_then(|c| Pending::open(&self.state_key, c))
            .filter(|p| Secret::new(p.state.clone()).matches(state))
            .ok_or(OidcError::State)?;
        let provider = self.provider().await?;
        let secret = self.config.client_secret.expose();
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", self.redirect_uri.as_str()),
            ("code_verifier", pending.code_verifier.as_str()),
            ("client_id", self.config.client_id.as_str()),
        ];
        let basic = if secret.is_empty() {
            None
        } else if provider.secret_in_body {
            form.push(("client_secret", secret));
            None
        } else {
            Some((self.config.client_id.as_str(), secret))
        };
        #[derive(Deserialize)]
        struct TokenResponse {
            id_token: Option<String>,
        }
        let tokens: TokenResponse = self
            .client
            .post_form(&provider.token_endpoint, &form, basic)
            .await
            .map_err(|e| match e {
                OutboundError::Status { status, .. } => {
                    OidcError::Refused(format!("token endpoint answered {status}"))
                }
                other => other.into(),
            })?;
        let id_token = tokens
            .id_token
            .ok_or_else(|| OidcError::Token("no id_token in the token response".into()))?;
        let claims = provider
            .id_tokens
            .verify(&id_token)
            .await
            .map_err(|e| OidcError::Token(e.to_string()))?;
        let nonce_ok = claims
            .get("nonce")
            .and_then(Value::as_str)
            .is_some_and(|n| Secret::new(pending.nonce.clone()).matches(n));
        if !nonce_ok {
            return Err(OidcError::Token("nonce missing or wrong".into()));
        }
        // With several audiences, OIDC Core §3.1.3.7 wants `azp` to be us.
        if let Some(azp) = claims.get("azp").and_then(Value::as_str)
            && azp != self.config.client_id
        {
            return Err(OidcError::Token("azp is another client".into()));
        }
        Ok(Completed {
            claims,
            next: pending.next,
        })
    }

    /// The ID token verifier, once discovery has run (tests check key rotation).
    pub async fn jwks_fetches(&self) -> Option<u64> {
        let provider = self.provider.lock().await.clone()?;
        match &provider.id_tokens.keys {
            KeySource::Jwks(cache) => Some(cache.fetch_count()),
            KeySource::Static(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(created: i64) -> Pending {
        Pending {
            state: "s".repeat(43),
            nonce: "n".repeat(43),
            code_verifier: "v".repeat(43),
            next: Some("/u-abc/lab".into()),
            created,
        }
    }

    #[test]
    fn sealed_state_opens_only_untampered_with_our_key_and_in_time() {
        let key = b"0123456789abcdef0123456789abcdef";
        let sealed = pending(unix_now()).seal(key);
        let opened = Pending::open(key, &sealed).expect("opens");
        assert_eq!(opened.next.as_deref(), Some("/u-abc/lab"));
        assert!(Pending::open(b"another key, another spawngate!", &sealed).is_none());
        let (payload, mac) = sealed.rsplit_once('.').unwrap();
        let mut bytes = payload.as_bytes().to_vec();
        bytes[5] ^= 1;
        let tampered = format!("{}.{mac}", String::from_utf8(bytes).unwrap());
        assert!(Pending::open(key, &tampered).is_none());
        let old = pending(unix_now() - STATE_TTL.as_secs() as i64 - 1).seal(key);
        assert!(Pending::open(key, &old).is_none(), "expired");
        assert!(Pending::open(key, "no-dot-at-all").is_none());
        assert!(Pending::open(key, &"a".repeat(5000)).is_none());
    }
}
