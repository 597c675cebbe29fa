//! Passwords: argon2id (the crate's defaults: 19 MiB, 2 passes), PHC strings at rest.

use std::sync::OnceLock;

use argon2::{Argon2, PasswordHasher, PasswordVerifier};

/// Shortest password accepted when one is set.
pub const MIN_LEN: usize = 12;

pub fn hash(password: &str) -> Option<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .ok()
        .map(|h| h.to_string())
}

/// Verifies `password` against a stored PHC string. With no stored hash (unknown
/// user, or a user without a password) a dummy hash is checked instead, so the
/// answer takes as long either way and reveals nothing.
pub fn verify(password: &str, stored: Option<&str>) -> bool {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash("spawngate dummy password").unwrap_or_default());
    let ok = Argon2::default()
        .verify_password(password.as_bytes(), stored.unwrap_or(dummy))
        .is_ok();
    ok && stored.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_differ_by_salt() {
        let a = hash("correct horse battery").unwrap();
        let b = hash("correct horse battery").unwrap();
        assert!(a.starts_with("$argon2id$"));
        assert_ne!(a, b, "salted");
        assert!(verify("correct horse battery", Some(&a)));
        assert!(!verify("wrong horse battery", Some(&a)));
        assert!(
            !verify("spawngate dummy password", None),
            "the dummy never logs anyone in"
        );
        assert!(!verify("x", Some("not a phc string")));
    }
}
