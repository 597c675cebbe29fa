//! Validation of post-login redirect targets. Only same-site relative paths pass, so
//! the login page can never be used as an open redirect.

use percent_encoding::percent_decode_str;

/// Returns `raw` if it is a safe same-site path (`/…`), else `None`.
///
/// Rejected: absolute URLs, scheme-relative `//host`, backslash tricks (`/\host`,
/// which browsers treat as `//host`), control characters and whitespace, and the
/// same tricks hidden behind percent-encoding.
pub fn safe_next(raw: &str) -> Option<String> {
    if raw.len() > 2048 || !is_safe_path(raw) {
        return None;
    }
    // Decode repeatedly: a target decoded once by us and once more by a browser or
    // app must still be safe.
    let mut current = raw.to_owned();
    for _ in 0..3 {
        let decoded = percent_decode_str(&current)
            .decode_utf8_lossy()
            .into_owned();
        if !is_safe_path(&decoded) {
            return None;
        }
        if decoded == current {
            return Some(raw.to_owned());
        }
        current = decoded;
    }
    // Still changing after three rounds: nobody links like that; refuse rather
    // than guess what a fourth decoding would reveal.
    None
}

fn is_safe_path(s: &str) -> bool {
    let bytes = s.as_bytes();
    bytes.first() == Some(&b'/')
        && bytes.get(1) != Some(&b'/')
        && !s.contains('\\')
        && !s.chars().any(|c| c.is_control() || c.is_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_same_site_paths() {
        for ok in [
            "/",
            "/u-abcdef012345/",
            "/u-abcdef012345/lab?x=1&y=%2Fz",
            "/a/b#frag",
        ] {
            assert_eq!(safe_next(ok).as_deref(), Some(ok), "{ok}");
        }
    }

    #[test]
    fn rejects_open_redirects() {
        for bad in [
            "",
            "https://evil.example",
            "http:evil.example",
            "javascript:alert(1)",
            "//evil.example",
            "///evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "/%2Fevil.example",
            "/%2fevil.example",
            "%2F%2Fevil.example",
            "/%5Cevil.example",
            "/%252Fevil.example",
            "/%2525252Fevil.example",
            "/\t/evil.example",
            "/%09/evil.example",
            "/%0d%0aLocation:%20x",
            "u-abc/",
            " /u-abc/",
        ] {
            assert_eq!(safe_next(bad), None, "{bad:?} must be rejected");
        }
    }
}
