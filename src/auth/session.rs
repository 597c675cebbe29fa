//! Session cookies: an HS256 JWT naming a server-side session, so a session can be
//! revoked (delete the record) and a tampered or expired cookie is simply no session.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::ids::{SessionId, UserId};

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// Session id (server-side record).
    sid: String,
    /// User id.
    sub: String,
    iat: i64,
    exp: i64,
}

/// What a valid cookie says; the caller still checks the session record.
#[derive(Debug, PartialEq)]
pub struct CookieClaims {
    pub session: SessionId,
    pub user: UserId,
    /// Unix seconds after which the cookie is void (leeway included).
    pub expires: i64,
}

/// Signs and verifies session cookies with the store's key.
pub struct SessionCodec {
    /// Kept for deriving CSRF tokens.
    key: Vec<u8>,
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

/// Cookies longer than this are rejected before any parsing.
const MAX_COOKIE_LEN: usize = 1024;

impl SessionCodec {
    pub fn new(key: &[u8]) -> Self {
        // Pin the algorithm: a token claiming any other `alg` is rejected.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        SessionCodec {
            key: key.to_vec(),
            encoding: EncodingKey::from_secret(key),
            decoding: DecodingKey::from_secret(key),
            validation,
        }
    }

    pub fn sign(&self, session: &SessionId, user: &UserId, issued: i64, expires: i64) -> String {
        let claims = Claims {
            sid: session.as_str().to_owned(),
            sub: user.as_str().to_owned(),
            iat: issued,
            exp: expires,
        };
        // HS256 over a small struct cannot fail with a valid key.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .unwrap_or_default()
    }

    /// The CSRF token of a session: forms that change state carry it, and a forged
    /// cross-site form cannot know it. Derived, so nothing is stored.
    pub fn csrf_token(&self, session: &SessionId) -> String {
        crate::ids::derive_token(&self.key, b"spawngate csrf\0", session.as_str())
    }

    /// Constant-time check of a presented CSRF token.
    pub fn csrf_ok(&self, session: &SessionId, presented: &str) -> bool {
        crate::ids::Secret::new(self.csrf_token(session)).matches(presented)
    }

    /// `None` for anything forged, tampered, expired or malformed.
    pub fn verify(&self, cookie: &str) -> Option<CookieClaims> {
        if cookie.is_empty() || cookie.len() > MAX_COOKIE_LEN {
            return None;
        }
        let data = jsonwebtoken::decode::<Claims>(cookie, &self.decoding, &self.validation).ok()?;
        Some(CookieClaims {
            session: SessionId::from_claim(data.claims.sid),
            user: UserId::from_stored(data.claims.sub),
            expires: data
                .claims
                .exp
                .saturating_add(i64::try_from(self.validation.leeway).unwrap_or(0)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::unix_now;
    use base64::Engine;

    fn codec() -> SessionCodec {
        SessionCodec::new(&[7u8; 32])
    }

    #[test]
    fn signs_and_verifies() {
        let c = codec();
        let sid = SessionId::generate();
        let uid = UserId::generate();
        let now = unix_now();
        let jwt = c.sign(&sid, &uid, now, now + 60);
        assert_eq!(
            c.verify(&jwt),
            Some(CookieClaims {
                session: sid,
                user: uid,
                expires: now + 60 + 5,
            })
        );
    }

    #[test]
    fn rejects_expired_tampered_foreign_and_none_alg() {
        let c = codec();
        let sid = SessionId::generate();
        let uid = UserId::generate();
        let now = unix_now();
        assert_eq!(
            c.verify(&c.sign(&sid, &uid, now - 120, now - 60)),
            None,
            "expired"
        );

        let good = c.sign(&sid, &uid, now, now + 60);
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = String::from_utf8(b64.decode(&parts[1]).unwrap()).unwrap();
        parts[1] = b64.encode(payload.replace(uid.as_str(), "someone-else"));
        assert_eq!(c.verify(&parts.join(".")), None, "tampered payload");

        let other = SessionCodec::new(&[8u8; 32]).sign(&sid, &uid, now, now + 60);
        assert_eq!(c.verify(&other), None, "other key");

        let header = b64.encode(r#"{"alg":"none","typ":"JWT"}"#);
        assert_eq!(
            c.verify(&format!("{header}.{}.", parts[1])),
            None,
            "alg none"
        );
        assert_eq!(c.verify("garbage"), None);
        assert_eq!(c.verify(&"a".repeat(5000)), None);
    }
}
