//! Newtypes for identifiers and secrets, so that a slug is never confused with a
//! user name and a secret never ends up in a log line.

use std::fmt;

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// Fills `buf` from the operating system's CSPRNG.
///
/// Failing to read randomness means the OS is unusable; there is no safe fallback.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    if let Err(e) = getrandom::fill(&mut buf) {
        // No secret may ever be derived from a predictable buffer.
        tracing::error!(error = %e, "operating system randomness unavailable");
        std::process::abort();
    }
    buf
}

/// A URL-safe random token of `N` bytes (base64url, no padding).
pub fn random_token<const N: usize>() -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<N>())
}

/// A secret derived from `key` for one purpose and subject: HMAC-SHA256, the first
/// 128 bits in hex. Nothing to store, stable as long as the key is, and useless for
/// any other purpose or subject.
pub fn derive_token(key: &[u8], purpose: &[u8], subject: &str) -> String {
    use hmac::{KeyInit, Mac};
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(purpose);
    mac.update(subject.as_bytes());
    hex::encode(&mac.finalize().into_bytes()[..16])
}

/// Stable internal identifier of a user (random, never reused).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    pub fn generate() -> Self {
        UserId(hex::encode(random_bytes::<8>()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn from_stored(s: String) -> Self {
        UserId(s)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The random part of a user's URL: the user's prefix is `/u-<slug>`.
///
/// Slugs are 12 lowercase hex digits from the CSPRNG, never derived from the user's
/// name, so a URL reveals nothing about who owns it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Slug(String);

impl Slug {
    pub const LEN: usize = 12;

    pub fn generate() -> Self {
        Slug(hex::encode(random_bytes::<{ Slug::LEN / 2 }>()))
    }

    /// Parses the slug part of a `u-<slug>` path segment; anything but exactly
    /// [`Slug::LEN`] lowercase hex digits is rejected.
    pub fn parse(s: &str) -> Option<Self> {
        let ok = s.len() == Self::LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| Slug(s.to_owned()))
    }

    /// Parses a path segment of the form `u-<slug>`.
    pub fn parse_segment(segment: &str) -> Option<Self> {
        segment.strip_prefix("u-").and_then(Self::parse)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `u-<slug>`: the path segment, router name and container name suffix.
    pub fn segment(&self) -> String {
        format!("u-{}", self.0)
    }

    /// `/u-<slug>`: the path prefix Traefik strips before the user's container.
    pub fn base_path(&self) -> String {
        format!("/u-{}", self.0)
    }
}

impl fmt::Display for Slug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Identifier of a login session (random, 128 bits).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(String);

impl SessionId {
    pub fn generate() -> Self {
        SessionId(hex::encode(random_bytes::<16>()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn from_claim(s: String) -> Self {
        SessionId(s)
    }
    /// A public name for the session in lists (to revoke it by) that is not the
    /// id itself: pages and scripts never see a session id.
    pub fn handle(&self) -> String {
        use sha2::Digest;
        hex::encode(&sha2::Sha256::digest(self.0.as_bytes())[..8])
    }
}

/// A secret value (token, key). Its `Debug` never prints the contents and comparisons
/// are constant-time.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Constant-time equality with a presented value.
    pub fn matches(&self, presented: &str) -> bool {
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_random_hex_of_fixed_length() {
        let a = Slug::generate();
        let b = Slug::generate();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), Slug::LEN);
        assert_eq!(Slug::parse(a.as_str()), Some(a.clone()));
        assert_eq!(Slug::parse_segment(&a.segment()), Some(a));
    }

    #[test]
    fn slug_parse_rejects_anything_else() {
        for bad in [
            "",
            "u-",
            "ABCDEF012345",
            "abcdef01234",
            "abcdef0123456",
            "abcdef01234g",
            "../../etc",
        ] {
            assert_eq!(Slug::parse(bad), None, "{bad:?}");
        }
        assert_eq!(Slug::parse_segment("x-abcdef012345"), None);
    }

    #[test]
    fn secret_debug_is_redacted_and_comparison_works() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        assert!(s.matches("hunter2"));
        assert!(!s.matches("hunter3"));
        assert!(!s.matches("hunter"));
    }
}
