//! Verifying JWTs issued by someone else: an external identity service's bearer
//! tokens, and OIDC ID tokens. The algorithm is pinned by configuration (the token's
//! `alg` header only selects among the pinned ones, so `none` and HS256-signed-with-
//! the-RSA-public-key are refused), and keys come from configuration or a JWKS URL
//! that is refetched at most once per cooldown, however many unknown `kid`s arrive.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::outbound::{HttpsClient, OutboundError};

/// Longest token looked at; anything longer is refused before any parsing.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// How stale a fetched key set may get before it is refetched on the next use
/// (keys the IdP has withdrawn stop working within this time).
const JWKS_MAX_AGE: Duration = Duration::from_secs(3600);

/// Why a token was refused (logged at debug level; callers answer 401 regardless).
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("token too long")]
    TooLong,
    #[error("not a JWT")]
    Malformed,
    #[error("algorithm {0} is not allowed")]
    Algorithm(String),
    #[error("no key for this token")]
    UnknownKey,
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// One verification key and the algorithm it is restricted to, if the JWK said so.
pub struct Key {
    kid: Option<String>,
    alg: Option<Algorithm>,
    key: DecodingKey,
}

type KeyList = Arc<Vec<Key>>;

pub enum KeySource {
    /// Keys from configuration: a shared secret or a PEM public key.
    Static(KeyList),
    Jwks(Box<JwksCache>),
}

impl KeySource {
    pub fn secret(secret: &[u8]) -> KeySource {
        KeySource::Static(Arc::new(vec![Key {
            kid: None,
            alg: None,
            key: DecodingKey::from_secret(secret),
        }]))
    }

    /// A PEM public key, read according to the pinned algorithms' family.
    pub fn public_pem(pem: &[u8], algorithm: Algorithm) -> Result<KeySource, String> {
        let key = crate::config::public_key_from_pem(pem, algorithm)?;
        Ok(KeySource::Static(Arc::new(vec![Key {
            kid: None,
            alg: None,
            key,
        }])))
    }
}

/// A JWKS URL's keys, fetched on first use, on an unknown `kid` (at most once per
/// cooldown) and when older than an hour.
pub struct JwksCache {
    url: String,
    client: HttpsClient,
    cooldown: Duration,
    keys: RwLock<KeyList>,
    /// When the last fetch was attempted; the lock makes refreshes single-flight.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    fetches: std::sync::atomic::AtomicU64,
}

impl JwksCache {
    pub fn new(url: String, client: HttpsClient, cooldown: Duration) -> JwksCache {
        JwksCache {
            url,
            client,
            cooldown,
            keys: RwLock::new(Arc::new(Vec::new())),
            last_fetch: tokio::sync::Mutex::new(None),
            fetches: Default::default(),
        }
    }

    /// How many times the key set was fetched (for tests and metrics).
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn current(&self) -> KeyList {
        match self.keys.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The keys to try for a token with `kid`, refreshed first when `kid` is
    /// unknown or the set is stale. `tried`: keys that already failed to verify the
    /// token (a token without `kid` after a rotation), so a newer set is wanted.
    async fn keys_for(&self, kid: Option<&str>, tried: Option<&KeyList>) -> KeyList {
        let usable = |keys: &KeyList| {
            !keys.is_empty()
                && kid.is_none_or(|kid| keys.iter().any(|k| k.kid.as_deref() == Some(kid)))
                && tried.is_none_or(|t| !Arc::ptr_eq(t, keys))
        };
        let current = self.current();
        if usable(&current) {
            let fresh = self
                .last_fetch
                .try_lock()
                .map(|last| last.is_some_and(|t| t.elapsed() < JWKS_MAX_AGE))
                // Someone is refreshing right now: use what we have.
                .unwrap_or(true);
            if fresh {
                return current;
            }
        }
        let mut last = self.last_fetch.lock().await;
        // Another request may have refreshed while this one waited.
        let current = self.current();
        let stale = last.is_none_or(|t| t.elapsed() >= JWKS_MAX_AGE);
        if usable(&current) && !stale {
            return current;
        }
        if last.is_some_and(|t| t.elapsed() < self.cooldown) {
            return current;
        }
        *last = Some(Instant::now());
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match self.fetch().await {
            Ok(keys) => {
                tracing::info!(url = %self.url, keys = keys.len(), "fetched JWKS");
                let keys = Arc::new(keys);
                match self.keys.write() {
                    Ok(mut k) => *k = keys.clone(),
                    Err(poisoned) => *poisoned.into_inner() = keys.clone(),
                }
                keys
            }
            Err(e) => {
                // Keep the old keys: an IdP hiccup must not log everyone out.
                tracing::warn!(url = %self.url, error = %e, "cannot fetch JWKS");
                current
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<Key>, OutboundError> {
        let set: JwkSet = self.client.get_json(&self.url).await?;
        Ok(set
            .keys
            .iter()
            .filter(|jwk| !matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)))
            .filter_map(|jwk| {
                // A symmetric key in a public key set would let anyone who can read
                // the set forge tokens: never accept one.
                if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
                    return None;
                }
                let key = DecodingKey::from_jwk(jwk).ok()?;
                let alg = match jwk.common.key_algorithm {
                    // Same names; key-management algorithms (RSA1_5, …) do not parse.
                    Some(a) => Some(format!("{a:?}").parse::<Algorithm>().ok()?),
                    None => None,
                };
                Some(Key {
                    kid: jwk.common.key_id.clone(),
                    alg,
                    key,
                })
            })
            .collect())
    }
}

/// What a token must satisfy besides its signature.
#[derive(Clone, Debug)]
pub struct Expectations {
    pub algorithms: Vec<Algorithm>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway: Duration,
}

pub struct JwtVerifier {
    pub expect: Expectations,
    pub keys: KeySource,
}

impl JwtVerifier {
    /// The token's claims if it is well-formed, signed by a known key with a pinned
    /// algorithm, and its `exp`/`nbf`/`iss`/`aud` hold (with the configured leeway).
    pub async fn verify(&self, token: &str) -> Result<Map<String, Value>, Rejection> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(Rejection::TooLong);
        }
        // Cheap shape check before any decoding: three base64url parts.
        if token.split('.').count() != 3
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(Rejection::Malformed);
        }
        // `alg: none` and unknown algorithms fail here (no such `Algorithm`).
        let header = jsonwebtoken::decode_header(token).map_err(|_| Rejection::Malformed)?;
        if !self.expect.algorithms.contains(&header.alg) {
            return Err(Rejection::Algorithm(format!("{:?}", header.alg)));
        }
        let keys = match &self.keys {
            KeySource::Static(keys) => keys.clone(),
            KeySource::Jwks(cache) => cache.keys_for(header.kid.as_deref(), None).await,
        };
        let result = self.verify_with(token, &header, &keys);
        // A token without `kid` that no cached key verifies may be signed with a
        // key published since: one refetch (within the cooldown) and one retry.
        if result.is_err()
            && header.kid.is_none()
            && let KeySource::Jwks(cache) = &self.keys
        {
            let newer = cache.keys_for(None, Some(&keys)).await;
            if !Arc::ptr_eq(&newer, &keys) {
                return self.verify_with(token, &header, &newer);
            }
        }
        result
    }

    fn verify_with(
        &self,
        token: &str,
        header: &jsonwebtoken::Header,
        keys: &KeyList,
    ) -> Result<Map<String, Value>, Rejection> {
        let validation = self.validation(header.alg);
        let mut last = Rejection::UnknownKey;
        let candidates = keys.iter().filter(|k| {
            k.alg.is_none_or(|a| a == header.alg)
                && match (&header.kid, &k.kid) {
                    (Some(want), Some(have)) => want == have,
                    (Some(_), None) => matches!(self.keys, KeySource::Static(_)),
                    (None, _) => true,
                }
        });
        for key in candidates {
            // jsonwebtoken also refuses a key of the wrong family for `alg`.
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => last = Rejection::Invalid(e.to_string()),
            }
        }
        Err(last)
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.algorithms = vec![alg];
        v.leeway = self.expect.leeway.as_secs();
        v.validate_nbf = true;
        let mut required: HashSet<String> = ["exp".to_owned()].into();
        match &self.expect.issuer {
            Some(iss) => {
                v.set_issuer(&[iss]);
                required.insert("iss".into());
            }
            None => v.iss = None,
        }
        match &self.expect.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                required.insert("aud".into());
            }
            None => v.validate_aud = false,
        }
        v.required_spec_claims = required;
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn verifier(issuer: Option<&str>, audience: Option<&str>) -> JwtVerifier {
        JwtVerifier {
            expect: Expectations {
                algorithms: vec![Algorithm::HS256],
                issuer: issuer.map(Into::into),
                audience: audience.map(Into::into),
                leeway: Duration::from_secs(5),
            },
            keys: KeySource::secret(SECRET),
        }
    }

    fn sign(alg: Algorithm, claims: Value, secret: &[u8]) -> String {
        encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn now() -> i64 {
        crate::time::unix_now()
    }

    #[tokio::test]
    async fn accepts_a_valid_token_and_returns_its_claims() {
        let v = verifier(Some("https://idp"), Some("spawngate"));
        let t = sign(
            Algorithm::HS256,
            json!({"sub": "a", "email": "a@x.org", "iss": "https://idp", "aud": "spawngate", "exp": now() + 60}),
            SECRET,
        );
        let claims = v.verify(&t).await.unwrap();
        assert_eq!(claims["email"], "a@x.org");
    }

    #[tokio::test]
    async fn refuses_bad_tokens() {
        let v = verifier(Some("https://idp"), Some("spawngate"));
        let good = json!({"iss": "https://idp", "aud": "spawngate", "exp": now() + 60});
        let with = |k: &str, val: Value| {
            let mut c = good.clone();
            c[k] = val;
            c
        };
        let cases = [
            (
                "expired",
                sign(Algorithm::HS256, with("exp", json!(now() - 60)), SECRET),
            ),
            (
                "wrong issuer",
                sign(Algorithm::HS256, with("iss", json!("https://evil")), SECRET),
            ),
            (
                "wrong audience",
                sign(Algorithm::HS256, with("aud", json!("other")), SECRET),
            ),
            (
                "not yet valid",
                sign(Algorithm::HS256, with("nbf", json!(now() + 600)), SECRET),
            ),
            (
                "no exp",
                sign(
                    Algorithm::HS256,
                    json!({"iss": "https://idp", "aud": "spawngate"}),
                    SECRET,
                ),
            ),
            (
                "wrong key",
                sign(
                    Algorithm::HS256,
                    good.clone(),
                    b"another-secret-another-secret-xx",
                ),
            ),
            ("unpinned alg", sign(Algorithm::HS512, good.clone(), SECRET)),
            ("garbage", "a.b.c".to_owned()),
            ("too long", "a".repeat(MAX_TOKEN_LEN + 1)),
            ("two parts", "abc.def".to_owned()),
        ];
        for (what, token) in cases {
            assert!(v.verify(&token).await.is_err(), "{what} was accepted");
        }
        // `alg: none` with no signature.
        use base64::Engine;
        let b64 =
            |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let none = format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "JWT"})),
            b64(&good)
        );
        assert!(matches!(v.verify(&none).await, Err(Rejection::Malformed)));
    }

    #[tokio::test]
    async fn leeway_tolerates_small_clock_skew() {
        let v = verifier(None, None);
        let t = sign(Algorithm::HS256, json!({"exp": now() - 2}), SECRET);
        assert!(v.verify(&t).await.is_ok());
    }

    /// Test-only key pairs (generated with openssl for these tests).
    const ES256_PRIVATE: &str = include_str!("testdata/es256-private.pem");
    const ES256_PUBLIC: &str = include_str!("testdata/es256-public.pem");
    const ED25519_PRIVATE: &str = include_str!("testdata/ed25519-private.pem");
    const ED25519_PUBLIC: &str = include_str!("testdata/ed25519-public.pem");

    #[tokio::test]
    async fn public_key_algorithms_verify_and_refuse_confusion() {
        let claims = json!({"sub": "a", "exp": now() + 60});
        for (alg, private, public) in [
            (
                Algorithm::ES256,
                EncodingKey::from_ec_pem(ES256_PRIVATE.as_bytes()).unwrap(),
                ES256_PUBLIC,
            ),
            (
                Algorithm::EdDSA,
                EncodingKey::from_ed_pem(ED25519_PRIVATE.as_bytes()).unwrap(),
                ED25519_PUBLIC,
            ),
        ] {
            let v = JwtVerifier {
                expect: Expectations {
                    algorithms: vec![alg],
                    issuer: None,
                    audience: None,
                    leeway: Duration::from_secs(5),
                },
                keys: KeySource::public_pem(public.as_bytes(), alg).unwrap(),
            };
            let token = encode(&Header::new(alg), &claims, &private).unwrap();
            assert!(v.verify(&token).await.is_ok(), "{alg:?}");
            // The public key used as an HMAC secret: refused (algorithm not pinned).
            let confused = sign(Algorithm::HS256, claims.clone(), public.as_bytes());
            assert!(matches!(
                v.verify(&confused).await,
                Err(Rejection::Algorithm(_))
            ));
        }
    }
}
