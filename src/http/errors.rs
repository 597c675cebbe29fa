//! The one mapping from errors to answers: status codes, the JSON body
//! `{"error":{"code","message"}}` and, for browsers, an HTML page.

use hyper::StatusCode;
use hyper::header::{HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};

use super::{Resp, api_error, html, json, pages};
use crate::error::Error;

/// What a handler can fail with: a domain error, or a request the HTTP layer
/// refuses before any service sees it.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(transparent)]
    Domain(#[from] Error),
    #[error("request body too large (limit {0} bytes)")]
    TooLarge(usize),
    #[error("request URI too long (limit {0} bytes)")]
    UriTooLong(usize),
}

impl From<crate::store::StoreError> for HttpError {
    fn from(e: crate::store::StoreError) -> Self {
        HttpError::Domain(e.into())
    }
}

/// Who reads the answer: operators see the detail of a store failure, users get
/// a message that does not leak the server's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audience {
    Operator,
    User,
}

const STORE_UNAVAILABLE: &str = "spawngate cannot use its storage right now, so signing in and starting environments are unavailable; the administrator can see why in spawngate's log and /readyz";

impl HttpError {
    pub fn status(&self) -> StatusCode {
        match self {
            HttpError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            HttpError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            HttpError::Domain(e) => match e {
                Error::Unauthorized => StatusCode::UNAUTHORIZED,
                Error::Forbidden(_) => StatusCode::FORBIDDEN,
                Error::NotFound(_) => StatusCode::NOT_FOUND,
                Error::Invalid(_) => StatusCode::BAD_REQUEST,
                Error::Conflict(_) => StatusCode::CONFLICT,
                Error::Storage(_) | Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }

    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            HttpError::TooLarge(_) => "payload_too_large",
            HttpError::UriTooLong(_) => "uri_too_long",
            HttpError::Domain(e) => match e {
                Error::Unauthorized => "unauthorized",
                Error::Forbidden(_) => "forbidden",
                Error::NotFound(_) => "not_found",
                Error::Invalid(_) => "bad_request",
                Error::Conflict(_) => "conflict",
                Error::Storage(_) => "store_unavailable",
                Error::Unavailable(_) => "unavailable",
                Error::Internal(_) => "internal",
            },
        }
    }

    fn message(&self, audience: Audience) -> String {
        match (self, audience) {
            (HttpError::Domain(Error::Storage(_)), Audience::User) => STORE_UNAVAILABLE.to_owned(),
            _ => self.to_string(),
        }
    }

    pub fn body(&self, audience: Audience) -> serde_json::Value {
        serde_json::json!({ "error": { "code": self.code(), "message": self.message(audience) } })
    }

    /// A page title for browsers.
    fn title(&self) -> &'static str {
        match self {
            HttpError::Domain(Error::Unauthorized) => "Please sign in",
            HttpError::Domain(Error::Forbidden(_)) => "Not allowed",
            HttpError::Domain(Error::NotFound(_)) => "Not found",
            HttpError::Domain(Error::Storage(_) | Error::Unavailable(_)) => {
                "Temporarily unavailable"
            }
            HttpError::Domain(Error::Internal(_)) => "Something went wrong",
            _ => "Request refused",
        }
    }
}

/// The JSON answer for `e`.
pub fn json_answer(e: &HttpError, audience: Audience) -> Resp {
    log_storage(e);
    let mut resp = json(e.status(), &e.body(audience));
    decorate(&mut resp, e);
    resp
}

/// The HTML page for `e` (always for users: operators use the API).
pub fn html_answer(e: &HttpError) -> Resp {
    log_storage(e);
    let message = e.message(Audience::User);
    let back = r#"<p><a href="/_spawngate/">Back to your dashboard</a></p>"#;
    let extra = match e {
        HttpError::Domain(Error::Storage(_)) => {
            "<p class=\"muted\">Your sign-in is not the problem. Try again in a few minutes.</p>"
        }
        HttpError::Domain(Error::Unavailable(_)) => {
            r#"<p class="muted">Nothing is wrong with your account. Try again in a few minutes.</p><p><a href="/_spawngate/">Back to your dashboard</a></p>"#
        }
        HttpError::Domain(Error::Forbidden(_) | Error::NotFound(_)) => {
            r#"<p><a href="/_spawngate/">Go to your dashboard</a></p>"#
        }
        HttpError::Domain(Error::Unauthorized) => {
            r#"<p><a href="/_spawngate/login">Sign in</a></p>"#
        }
        _ => back,
    };
    let mut sentence = message.trim_end_matches('.').to_owned();
    if let Some(first) = sentence.get(..1) {
        sentence.replace_range(..1, &first.to_ascii_uppercase());
    }
    let body = format!(
        r#"<p class="status">Error {}</p><p>{}.</p>{extra}"#,
        e.status().as_u16(),
        pages::escape(&sentence)
    );
    let mut resp = html(e.status(), pages::page(e.title(), "", &body));
    decorate(&mut resp, e);
    resp
}

/// A user-facing answer: a page for browsers, JSON for scripts.
pub fn answer(e: &HttpError, browser: bool) -> Resp {
    if browser {
        html_answer(e)
    } else {
        json_answer(e, Audience::User)
    }
}

/// The answer for another user's slug and for an unknown slug alike, so a caller
/// cannot tell whether a slug exists.
pub fn forbidden(browser: bool) -> Resp {
    answer(
        &Error::Forbidden("you do not have access to this address").into(),
        browser,
    )
}

/// A request spawngate refuses as malformed or hostile, with the reason.
pub fn bad_request(browser: bool, message: &str) -> Resp {
    answer(&Error::Invalid(message.to_owned()).into(), browser)
}

/// spawngate's store cannot be read or written (disk full, I/O errors). Never
/// "please sign in": the caller's credentials may be fine.
pub fn store_unavailable(browser: bool, e: &dyn std::fmt::Display) -> Resp {
    answer(&Error::Storage(e.to_string()).into(), browser)
}

pub fn not_found() -> Resp {
    api_error(Error::NotFound("route"))
}

/// Users are told the administrator can see why in the log: make it true.
fn log_storage(e: &HttpError) {
    if let HttpError::Domain(Error::Storage(detail)) = e {
        tracing::error!(error = %detail, "store unavailable");
    }
}

fn decorate(resp: &mut Resp, e: &HttpError) {
    match e {
        HttpError::Domain(Error::Unauthorized) => {
            resp.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"spawngate\""),
            );
        }
        HttpError::Domain(Error::Storage(_)) => {
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(30u32));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::SpawnError;
    use crate::store::StoreError;

    #[test]
    fn maps_to_statuses_and_json() {
        let disk_full = || {
            StoreError::Io(sled::Error::Io(std::io::Error::other(
                "No space left on device",
            )))
        };
        let cases: Vec<(HttpError, u16, &str)> = vec![
            (Error::Unauthorized.into(), 401, "unauthorized"),
            (Error::Forbidden("no").into(), 403, "forbidden"),
            (Error::NotFound("user").into(), 404, "not_found"),
            (Error::Invalid("x".into()).into(), 400, "bad_request"),
            (
                StoreError::Conflict {
                    what: "user name",
                    value: "alice".into(),
                }
                .into(),
                409,
                "conflict",
            ),
            (HttpError::TooLarge(10), 413, "payload_too_large"),
            (HttpError::UriTooLong(10), 414, "uri_too_long"),
            (
                Error::from(SpawnError::DockerDown("refused".into())).into(),
                503,
                "unavailable",
            ),
            (disk_full().into(), 503, "store_unavailable"),
        ];
        for (err, status, code) in cases {
            assert_eq!(err.status().as_u16(), status, "{err:?}");
            for audience in [Audience::Operator, Audience::User] {
                let body = err.body(audience);
                assert_eq!(body["error"]["code"], code);
                assert!(!body["error"]["message"].as_str().unwrap().is_empty());
            }
            // Browsers get a page with the same status, which it names.
            let page = answer(&err, true);
            assert_eq!(page.status().as_u16(), status);
            let html = futures_util::FutureExt::now_or_never(http_body_util::BodyExt::collect(
                answer(&err, true).into_body(),
            ))
            .unwrap()
            .unwrap()
            .to_bytes();
            let html = String::from_utf8_lossy(&html);
            assert!(html.contains(&format!("Error {status}")), "{html}");
            assert!(html.contains("/_spawngate/assets/style.css"), "{html}");
            assert!(
                page.headers()["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("text/html")
            );
        }
        let e: HttpError = StoreError::Conflict {
            what: "user name",
            value: "alice".into(),
        }
        .into();
        assert_eq!(
            e.body(Audience::User)["error"]["message"],
            "user name 'alice' is already taken"
        );
        // The disk's state is for operators only.
        let full: HttpError = disk_full().into();
        let operator = full.body(Audience::Operator).to_string();
        let user = full.body(Audience::User).to_string();
        assert!(operator.contains("No space left on device"), "{operator}");
        assert!(!user.contains("No space"), "{user}");
        assert!(answer(&full, false).headers().contains_key(RETRY_AFTER));
    }
}
