//! The headers spawngate asserts to user containers, and request headers that
//! imitate them.
//!
//! Traefik replaces only the exact names in `authResponseHeaders`, but CGI/WSGI-style
//! app servers (PHP, R's httpuv, many Python servers) build their request environment
//! by upper-casing a header's name and turning every character that is neither a
//! letter nor a digit into `_`. For them `X_Spawngate_User`, `x.spawngate.user` and
//! `X-Spawngate-User` are one variable, so a client could pose as another user next
//! to the real header. Two layers keep such names from containers, each enough on
//! its own: the provider's forwardAuth middlewares tell Traefik to delete every
//! look-alike ([`AUTH_RESPONSE_HEADERS_REGEX`]), and forwardAuth refuses a request
//! that carries one (a proxy configured by hand, or another proxy, still fails closed).

use hyper::header::HeaderMap;

/// The headers spawngate asserts to user containers.
pub const IDENTITY_HEADERS: &[&str] = &[
    "X-Spawngate-User",
    "X-Spawngate-Slug",
    "X-Spawngate-Secret",
    "X-Spawngate-Access",
];

/// Go regexp for forwardAuth's `authResponseHeadersRegex`: Traefik deletes every
/// request header it matches, then copies the matching headers of spawngate's answer.
/// Any one non-alphanumeric character stands for a dash (the CGI fold), case is
/// ignored; `X-Forwarded-Prefix` is covered too, as apps build links from it.
pub const AUTH_RESPONSE_HEADERS_REGEX: &str =
    "(?i)^x[^a-z0-9]spawngate[^a-z0-9]|^x[^a-z0-9]forwarded[^a-z0-9]prefix$";

/// The CGI-style name an app server would derive (`HTTP_` prefix left out).
pub fn cgi_fold(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                b.to_ascii_uppercase() as char
            } else {
                '_'
            }
        })
        .collect()
}

/// The first request header that folds to an identity header without being it:
/// `(sent name, imitated header)`.
pub fn find_lookalike(headers: &HeaderMap) -> Option<(String, &'static str)> {
    // On every forwardAuth call: byte comparisons, no allocation.
    headers.keys().find_map(|name| {
        let sent = name.as_str();
        IDENTITY_HEADERS
            .iter()
            .find(|real| !real.eq_ignore_ascii_case(sent) && folds_alike(sent, real))
            .map(|real| (sent.to_owned(), *real))
    })
}

/// Whether `a` and `b` give the same [`cgi_fold`].
fn folds_alike(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes().zip(b.bytes()).all(|(x, y)| {
            if x.is_ascii_alphanumeric() || y.is_ascii_alphanumeric() {
                x.eq_ignore_ascii_case(&y)
            } else {
                true
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::{HeaderName, HeaderValue};

    fn with(name: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_static("mallory"),
        );
        h
    }

    #[test]
    fn every_separator_and_case_variant_is_caught() {
        for sent in [
            "X_Spawngate_User",
            "x-spawngate_access",
            "X.SPAWNGATE.SLUG",
            "x~spawngate~secret",
            "X!Spawngate+User",
            "x_spawngate-user",
        ] {
            assert!(find_lookalike(&with(sent)).is_some(), "{sent}");
        }
        assert_eq!(
            find_lookalike(&with("X_Spawngate_Access")).map(|(_, real)| real),
            Some("X-Spawngate-Access")
        );
    }

    #[test]
    fn real_names_and_other_headers_pass() {
        for sent in [
            "X-Spawngate-User",
            "x-spawngate-access",
            "X_Spawngate__User",
            "X_Spawngate_Userx",
            "X_Custom_Header",
            "Cookie",
        ] {
            assert_eq!(find_lookalike(&with(sent)), None, "{sent}");
        }
    }

    /// The regex Traefik runs (Go's RE2; Rust's `regex` has the same syntax for
    /// this one) deletes every look-alike and nothing of other headers.
    #[test]
    fn the_traefik_regex_matches_every_lookalike_and_nothing_else() {
        let re = regex::Regex::new(AUTH_RESPONSE_HEADERS_REGEX).unwrap();
        // Every character HTTP allows in a name besides letters and digits.
        let separators = [
            "-", "_", ".", "~", "!", "#", "$", "%", "&", "'", "*", "+", "^", "`", "|",
        ];
        for real in IDENTITY_HEADERS.iter().chain(&["X-Forwarded-Prefix"]) {
            for sep in separators {
                for name in [
                    real.replace('-', sep),
                    real.replace('-', sep).to_ascii_uppercase(),
                    real.replace('-', sep).to_ascii_lowercase(),
                    real.replacen('-', sep, 1),
                ] {
                    assert!(re.is_match(&name), "{name} must be deleted");
                }
            }
        }
        for other in [
            "X-Forwarded-For",
            "X-Forwarded-Prefixes",
            "X-Spawngatex-User",
            "X-Spawngate",
            "Cookie",
            "Authorization",
            "Xx-Spawngate-User",
        ] {
            assert!(!re.is_match(other), "{other} must pass");
        }
    }

    #[test]
    fn fold_is_the_cgi_one() {
        assert_eq!(cgi_fold("x-spawngate.user"), "X_SPAWNGATE_USER");
        assert_eq!(cgi_fold("Accept-Language"), "ACCEPT_LANGUAGE");
        for (a, b) in [
            ("x_spawngate_user", "X-Spawngate-User"),
            ("x.spawngate.user", "X-Spawngate-User"),
            ("x_spawngate_usex", "X-Spawngate-User"),
            ("x_spawngate_use", "X-Spawngate-User"),
            ("x-spawngate-u_er", "X-Spawngate-User"),
        ] {
            assert_eq!(folds_alike(a, b), cgi_fold(a) == cgi_fold(b), "{a} {b}");
        }
    }
}
