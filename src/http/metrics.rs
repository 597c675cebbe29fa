//! `GET /metrics`: Prometheus' scrape, on spawngate's own listener only (Traefik
//! routes none of it). With `metrics.token` set, a bearer token is required.

use bytes::Bytes;
use hyper::StatusCode;
use hyper::header::{self, HeaderMap, HeaderValue};

use super::Resp;
use crate::app::App;

pub fn handle(app: &App, headers: &HeaderMap) -> Resp {
    let config = &app.config.metrics;
    if !config.enabled {
        return super::errors::not_found();
    }
    if let Some(token) = &config.token {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim());
        if !presented.is_some_and(|t| token.matches(t)) {
            let mut resp = super::text(StatusCode::UNAUTHORIZED, "a metrics token is required\n");
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"spawngate metrics\""),
            );
            return resp;
        }
    }
    let body = Bytes::from(app.metrics.encode());
    let mut resp = super::with_type(StatusCode::OK, body, crate::metrics::CONTENT_TYPE);
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
