//! The errors the HTTP API reports, and their one mapping to status codes and the
//! JSON body `{"error":{"code","message"}}`.

use hyper::StatusCode;

use crate::lifecycle::SpawnError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid credentials")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("request body too large (limit {0} bytes)")]
    TooLarge(usize),
    #[error("request URI too long (limit {0} bytes)")]
    UriTooLong(usize),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Conflict(_) => "conflict",
            ApiError::TooLarge(_) => "payload_too_large",
            ApiError::UriTooLong(_) => "uri_too_long",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "error": { "code": self.code(), "message": self.to_string() } })
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict { .. } => ApiError::Conflict(e.to_string()),
            StoreError::NoFreePort => ApiError::Unavailable(e.to_string()),
            // Disk full, I/O errors: the operation did not happen; retry later.
            StoreError::Io(_) | StoreError::Locked { .. } => ApiError::Unavailable(e.to_string()),
            StoreError::Corrupt { .. } => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<SpawnError> for ApiError {
    fn from(e: SpawnError) -> Self {
        // Admins get the operator detail (once, when it is the message itself).
        let message = e.to_string();
        if message == e.detail() {
            ApiError::Unavailable(message)
        } else {
            ApiError::Unavailable(format!("{message}: {}", e.detail()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_to_statuses_and_json() {
        let cases: Vec<(ApiError, u16, &str)> = vec![
            (ApiError::Unauthorized, 401, "unauthorized"),
            (ApiError::Forbidden("no"), 403, "forbidden"),
            (ApiError::NotFound("user"), 404, "not_found"),
            (ApiError::BadRequest("x".into()), 400, "bad_request"),
            (
                StoreError::Conflict {
                    what: "user name",
                    value: "alice".into(),
                }
                .into(),
                409,
                "conflict",
            ),
            (ApiError::TooLarge(10), 413, "payload_too_large"),
            (ApiError::UriTooLong(10), 414, "uri_too_long"),
            (
                SpawnError::DockerDown("refused".into()).into(),
                503,
                "unavailable",
            ),
            (
                StoreError::Io(sled::Error::Io(std::io::Error::other(
                    "No space left on device",
                )))
                .into(),
                503,
                "unavailable",
            ),
        ];
        for (err, status, code) in cases {
            assert_eq!(err.status().as_u16(), status, "{err:?}");
            let body = err.body();
            assert_eq!(body["error"]["code"], code);
            assert!(!body["error"]["message"].as_str().unwrap().is_empty());
        }
        let e: ApiError = StoreError::Conflict {
            what: "user name",
            value: "alice".into(),
        }
        .into();
        assert_eq!(
            e.body()["error"]["message"],
            "user name 'alice' is already taken"
        );
    }
}
