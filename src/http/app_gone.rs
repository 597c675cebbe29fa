//! `/_spawngate/app-gone`: what a user sees instead of Traefik's bare `502 Bad
//! Gateway` when their container went away while answering (killed from outside,
//! crashed, OOM-killed). forwardAuth had let the request through a moment before
//! Docker's event told spawngate; Traefik's `errors` middleware on every user
//! router asks this page instead and answers `503` (see the provider).
//!
//! If the container is gone, the answer is the usual waiting page (`503`,
//! `starting`, `Retry-After`) and a start is begun, so the retry finds it coming
//! back. If it is still running, the `502` was the app's own, and the page says so
//! rather than pretending to start anything.

use std::time::Duration;

use hyper::StatusCode;
use hyper::header::HeaderMap;

use super::{Resp, json, pages, wants_html};
use crate::app::App;
use crate::ids::{Secret, Slug};

pub const PATH: &str = "/_spawngate/app-gone";

/// How long to wait for Docker's event about a container that died a moment ago.
const EVENT_WAIT: Duration = Duration::from_secs(1);

/// Traefik sends this request with the failed request's headers as forwardAuth
/// left them: `X-Spawngate-Slug` and the container secret, which only forwardAuth
/// hands out, prove it came through the user's own router. Anyone else (a client
/// calling this path itself) gets the plain waiting answer and starts nothing.
/// `host_slug`: the app host's slug in subdomain mode.
pub async fn handle(app: &App, headers: &HeaderMap, host_slug: Option<&Slug>) -> Resp {
    let browser = wants_html(headers);
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let directory = app.store.snapshot();
    let target = header("x-spawngate-slug")
        .and_then(Slug::parse)
        .filter(|s| host_slug.is_none_or(|h| h == s))
        .and_then(|s| directory.environment(&s))
        // A disabled user's container stays stopped, whatever its code sends.
        .filter(|t| !t.owner().disabled)
        .filter(|t| {
            app.config.docker.inject_secret
                && header("x-spawngate-secret").is_some_and(|presented| {
                    Secret::new(app.lifecycle.forward_secret(t)).matches(presented)
                })
        });
    let Some(target) = target else {
        return super::forward_auth::waiting(browser);
    };
    if app.lifecycle.confirmed_ready(&target, EVENT_WAIT).await {
        let message = "the app in this environment answered 502 Bad Gateway";
        return if browser {
            super::html(
                StatusCode::SERVICE_UNAVAILABLE,
                pages::page(
                    "The app reported an error",
                    "",
                    &format!("<p>{}.</p>", pages::escape(message)),
                ),
            )
        } else {
            json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({ "error": { "code": "app_error", "message": message } }),
            )
        };
    }
    tracing::info!(user = %target.owner().name, slug = %target.slug(), "container went away while answering; starting it again");
    app.lifecycle.prewarm(&target);
    // The page follows the start; the owner-only output needs an identity this
    // request does not prove, so it is left out.
    let ctx = super::progress::PageContext::new(app, headers, &target, false);
    super::progress::waiting(browser, Some(&ctx))
}
