//! OIDC login (authorization code flow with PKCE, state and nonce) against an
//! issuer found by discovery. The state is single use, bound to the browser by a
//! cookie, and expires; the ID token is verified like any external JWT (pinned
//! algorithms, the issuer's JWKS with a refetch cooldown) plus its nonce.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::Digest;

use super::jwt::{Expectations, JwksCache, JwtVerifier, KeySource};
use crate::config::OidcConfig;
use crate::ids::random_token;
use crate::outbound::{HttpsClient, OutboundError, require_https};

/// How long a user may take at the IdP.
pub const STATE_TTL: Duration = Duration::from_secs(600);
/// Most logins in flight at once; beyond it the oldest are dropped (a flood of
/// started-but-never-finished logins cannot grow memory without bound).
const MAX_PENDING: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("the identity provider is unreachable or misconfigured: {0}")]
    Provider(String),
    #[error("unknown, used or expired login state")]
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

struct Pending {
    code_verifier: String,
    nonce: String,
    next: Option<String>,
    created: Instant,
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
    pending: Mutex<HashMap<String, Pending>>,
}

impl OidcClient {
    pub fn new(config: OidcConfig, public_origin: &str) -> Result<OidcClient, OutboundError> {
        Ok(OidcClient {
            client: HttpsClient::new(config.ca_file.as_deref())?,
            redirect_uri: format!("{public_origin}/_spawngate/oidc/callback"),
            config,
            provider: tokio::sync::Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
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

    /// Starts a login: the IdP URL to send the browser to, and the state value to
    /// bind to the browser (in a cookie).
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
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.retain(|_, p| p.created.elapsed() < STATE_TTL);
        if pending.len() >= MAX_PENDING
            && let Some(oldest) = pending
                .iter()
                .min_by_key(|(_, p)| p.created)
                .map(|(k, _)| k.clone())
        {
            pending.remove(&oldest);
        }
        pending.insert(
            state.clone(),
            Pending {
                code_verifier,
                nonce,
                next,
                created: Instant::now(),
            },
        );
        Ok((url.to_string(), state))
    }

    /// Drops a login the IdP ended with an error, so its state cannot be used later.
    /// Only the browser that started it (the one holding the state cookie) can.
    pub fn abandon(&self, state: &str, browser_state: Option<&str>) {
        if browser_state.is_some_and(|b| crate::ids::Secret::new(b.to_owned()).matches(state)) {
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(state);
        }
    }

    /// Finishes a login: `state` must be one this server issued, unused, unexpired
    /// and equal to the browser's cookie (`browser_state`); the code is exchanged
    /// with the PKCE verifier; the ID token must verify and carry our nonce.
    pub async fn finish(
        &self,
        state: &str,
        browser_state: Option<&str>,
        code: &str,
    ) -> Result<Completed, OidcError> {
        let bound =
            browser_state.is_some_and(|b| crate::ids::Secret::new(b.to_owned()).matches(state));
        // Taken out whatever happens next: a state works once.
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(state);
        let Some(pending) = pending.filter(|p| bound && p.created.elapsed() < STATE_TTL) else {
            return Err(OidcError::State);
        };
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
            .is_some_and(|n| crate::ids::Secret::new(pending.nonce.clone()).matches(n));
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
