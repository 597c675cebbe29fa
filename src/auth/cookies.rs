//! Reading and writing the session cookie, and passing every other cookie through
//! to the user's container untouched.

use cookie::{Cookie, SameSite};
use hyper::header::{COOKIE, HeaderMap};

/// All `name=value` pairs of all `Cookie` headers (HTTP/2 may send several).
fn pairs(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|p| !p.is_empty())
}

/// Values of cookies called `name`. Several may arrive (a sibling site can plant a
/// same-named cookie on plain HTTP); the caller tries each.
pub fn values<'a, 'n>(
    headers: &'a HeaderMap,
    name: &'n str,
) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
    pairs(headers).filter_map(move |p| match p.split_once('=') {
        Some((n, v)) if n.trim() == name => Some(v.trim().trim_matches('"')),
        _ => None,
    })
}

/// The request's cookies without spawngate's own (`names`: the session cookie and
/// any login cookie), as one `Cookie` header value, exactly as the client sent
/// them. `None` when nothing is left.
pub fn without(headers: &HeaderMap, names: &[&str]) -> Option<String> {
    let rest: Vec<&str> = pairs(headers)
        .filter(|p| !names.contains(&p.split_once('=').map(|(n, _)| n.trim()).unwrap_or(p)))
        .collect();
    (!rest.is_empty()).then(|| rest.join("; "))
}

/// One of spawngate's own cookies: `HttpOnly`, `Path=/`, `Secure` over HTTPS.
fn own_cookie(
    name: &str,
    value: &str,
    secure: bool,
    same_site: SameSite,
    max_age_secs: Option<i64>,
) -> String {
    let mut cookie = Cookie::build((name.to_owned(), value.to_owned()))
        .path("/")
        .http_only(true)
        .secure(secure)
        .same_site(same_site);
    if let Some(secs) = max_age_secs {
        cookie = cookie.max_age(cookie::time::Duration::seconds(secs));
    }
    cookie.build().to_string()
}

/// `Set-Cookie` for a new session (and other short-lived `Lax` cookies: `Lax`
/// lets a cross-site top-level GET, like an IdP's redirect back, carry it).
pub fn session(name: &str, value: &str, secure: bool, max_age_secs: i64) -> String {
    own_cookie(name, value, secure, SameSite::Lax, Some(max_age_secs))
}

/// `Set-Cookie` for the login forms' guard: `Strict`, so no other site's request
/// ever carries it, and gone when the browser closes.
pub fn form_guard(name: &str, value: &str, secure: bool) -> String {
    own_cookie(name, value, secure, SameSite::Strict, None)
}

/// `Set-Cookie` that deletes the session cookie.
pub fn cleared(name: &str, secure: bool) -> String {
    session(name, "", secure, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(cookies: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for c in cookies {
            h.append(COOKIE, HeaderValue::from_str(c).unwrap());
        }
        h
    }

    #[test]
    fn strips_only_the_session_cookie() {
        let h = headers(&["a=1; spawngate_session=jwt; b=\"x y\"", "c=3"]);
        assert_eq!(
            values(&h, "spawngate_session").collect::<Vec<_>>(),
            vec!["jwt"]
        );
        assert_eq!(
            without(&h, &["spawngate_session"]).as_deref(),
            Some("a=1; b=\"x y\"; c=3")
        );
        let only = headers(&["spawngate_session=jwt"]);
        assert_eq!(without(&only, &["spawngate_session"]), None);
        // A cookie whose name merely contains the session name is kept.
        let similar = headers(&["my_spawngate_session=1; spawngate_session=2"]);
        assert_eq!(
            without(&similar, &["spawngate_session"]).as_deref(),
            Some("my_spawngate_session=1")
        );
    }

    #[test]
    fn set_cookie_attributes() {
        let c = session("__Host-s", "v", true, 60);
        for part in [
            "__Host-s=v",
            "HttpOnly",
            "SameSite=Lax",
            "Secure",
            "Path=/",
            "Max-Age=60",
        ] {
            assert!(c.contains(part), "{c} lacks {part}");
        }
        assert!(!session("s", "v", false, 60).contains("Secure"));
        assert!(cleared("s", false).contains("Max-Age=0"));
    }
}
