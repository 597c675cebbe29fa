//! Subdomain mode: `/_spawngate/handoff` on the login host issues a one-time code
//! for an app host the signed-in user may open; the same path on that app host
//! redeems it for a host-only session cookie scoped to that slug. Nothing is ever
//! shared between the login host and app hosts, or between two app hosts.

use std::collections::HashMap;

use hyper::StatusCode;
use hyper::header::{HeaderMap, HeaderValue};

use super::forward_auth::login_location;
use super::pages::page;
use super::{Resp, html, redirect, wants_html};
use crate::app::App;
use crate::auth::safe_next;
use crate::ids::Slug;
use crate::sharing::Access;
use crate::store::SessionScope;
use crate::time::unix_now;

pub const PATH: &str = "/_spawngate/handoff";

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Where to send a browser that needs a session on `slug`'s app host: the login
/// host's hand-off, which signs it in first if needed.
pub fn start_url(app: &App, slug: &Slug, next: &str) -> String {
    format!(
        "{}{PATH}?slug={slug}&next={}",
        app.config.public_url.origin,
        enc(next)
    )
}

/// `GET /_spawngate/handoff?slug=…&next=…` on the login host.
pub async fn start(app: &App, headers: &HeaderMap, query: &HashMap<String, String>) -> Resp {
    let Some(apps) = &app.config.apps else {
        return super::errors::not_found();
    };
    let slug = query.get("slug").and_then(|s| Slug::parse(s));
    let next = query
        .get("next")
        .and_then(|n| safe_next(n))
        .unwrap_or_else(|| "/".to_owned());
    let identity = match app.identities.identify(headers).await {
        Ok(identity) => identity,
        Err(e) => return super::errors::store_unavailable(true, &e),
    };
    let Some(identity) = identity else {
        let slug = slug.map(|s| s.to_string()).unwrap_or_default();
        let back = format!("{PATH}?slug={slug}&next={}", enc(&next));
        return redirect(StatusCode::FOUND, &login_location(Some(&back)));
    };
    let directory = app.store.snapshot();
    let target = slug
        .as_ref()
        .and_then(|s| directory.environment(s))
        .filter(|t| Access::of(&identity.user, t).is_some());
    // Unknown slugs and other users' slugs get the same answer.
    let Some(target) = target else {
        return super::errors::forbidden(true);
    };
    let code = match app
        .handoffs
        .issue(
            identity.user.id.clone(),
            target.slug().clone(),
            identity.session,
            next,
        )
        .await
    {
        Ok(code) => code,
        Err(e) => return super::errors::store_unavailable(true, &e),
    };
    let mut resp = redirect(
        StatusCode::FOUND,
        &format!("{}{PATH}?code={code}", apps.origin(target.slug())),
    );
    resp.headers_mut()
        .insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    resp
}

/// A request spawngate receives for an app host: the hand-off redemption, or a
/// host no user router serves (an unknown slug).
pub async fn on_app_host(
    app: &App,
    headers: &HeaderMap,
    host_slug: &Slug,
    path: &str,
    query: &HashMap<String, String>,
) -> Resp {
    if path != PATH {
        // Same as a known slug without a session: sign in, then 403 at the
        // hand-off if it is not yours.
        return if wants_html(headers) {
            redirect(StatusCode::FOUND, &start_url(app, host_slug, path))
        } else {
            super::api_error(crate::error::Error::Unauthorized)
        };
    }
    let code = query.get("code").map(String::as_str).unwrap_or_default();
    let handoff = match app.handoffs.redeem(code, host_slug).await {
        Ok(Some(handoff)) => handoff,
        Ok(None) => return expired(app),
        Err(e) => return super::errors::store_unavailable(true, &e),
    };
    let directory = app.store.snapshot();
    let user = directory.by_id(&handoff.user_id).filter(|u| !u.disabled);
    let target = directory.environment(host_slug);
    let parent = app.store.session(&handoff.parent).ok().flatten();
    let (Some(user), Some(target), Some(parent)) = (user, target, parent) else {
        return expired(app);
    };
    if Access::of(user, &target).is_none() {
        return super::errors::forbidden(true);
    }
    // Ends when the sign-in session does (and with it, on every request).
    let ttl = parent.expires - unix_now();
    let scope = SessionScope {
        slug: host_slug.clone(),
        parent: handoff.parent,
    };
    let jwt = match app.identities.sign_in(user, ttl, Some(scope), None).await {
        Ok(jwt) => jwt,
        Err(e) => {
            tracing::error!(error = %e, "cannot create an app session");
            return html(
                StatusCode::SERVICE_UNAVAILABLE,
                page("Try again", "", "<p>Please try again in a moment.</p>"),
            );
        }
    };
    let mut resp = redirect(StatusCode::SEE_OTHER, &handoff.next);
    // The URL carried the code.
    resp.headers_mut()
        .insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    // Host-only (no Domain): sent to this app host alone.
    super::login::set_session_cookie(
        app,
        &mut resp,
        &app.config.session.app_cookie_name,
        &jwt,
        ttl,
    );
    resp
}

fn expired(app: &App) -> Resp {
    html(
        StatusCode::BAD_REQUEST,
        page(
            "This sign-in expired",
            "",
            &format!(
                r#"<p>The sign-in hand-off was already used or has expired.</p><p><a href="{}/_spawngate/">Start again</a></p>"#,
                app.config.public_url.origin
            ),
        ),
    )
}
