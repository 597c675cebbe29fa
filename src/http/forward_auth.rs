//! `GET /auth/u-<slug>`: Traefik's forwardAuth call, in the order of DESIGN.md:
//! identify → no session (302 or 401) → not the owner or unknown slug (403, the
//! same answer for both) → ready (200 + identity headers) → start and hold →
//! waiting page or 503.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

use super::errors;
use super::progress::{self, PageContext};
use super::{Resp, redirect, wants_html};
use crate::app::App;
use crate::auth::{IdentityHeaders, cookies, safe_next};
use crate::error::Error;
use crate::ids::Slug;
use crate::lifecycle::{Readiness, SpawnError};
use crate::sharing::Access;
use crate::store::{Env, User};

pub async fn handle(app: &App, headers: &HeaderMap, segment: &str) -> Resp {
    let started = Instant::now();
    let slug = Slug::parse_segment(segment);
    let decision = decide(app, headers, slug.as_ref()).await;
    let took = started.elapsed();
    app.metrics.auth(decision.outcome, took);
    count_credential(app, headers, &decision);
    // Every denial is logged. Of the allows, the first one of each verified cookie
    // (and every one by token or JWT) is logged at `info`; the cookie's later ones
    // at `debug`, so the hot path writes no line per request by default.
    let at_info = match &decision.caller {
        Some(Caller {
            via: Via::Session(headers),
            ..
        }) if decision.outcome == "allow" => {
            // Read first: a swap on every request would write a line all worker
            // threads share.
            !(headers.allow_logged.load(Ordering::Relaxed)
                || headers.allow_logged.swap(true, Ordering::Relaxed))
        }
        _ => true,
    };
    let resp = decision.resp;
    let who = decision
        .caller
        .as_ref()
        .map_or("-", |c| c.user.name.as_str());
    macro_rules! auth_line {
        ($level:ident) => {
            tracing::$level!(
                target: "spawngate::auth",
                user = %who,
                // The same form as the lifecycle's lines (no `u-`) when it is a slug.
                slug = %slug.as_ref().map_or(segment, |s| s.as_str()),
                outcome = decision.outcome,
                status = resp.status().as_u16(),
                us = took.as_micros() as u64,
                "auth"
            )
        };
    }
    if at_info {
        auth_line!(info);
    } else {
        auth_line!(debug);
    }
    resp
}

/// A personal token or external JWT is a sign-in of its own on every request:
/// counted for the metrics, as is one that did not verify. Sessions were counted
/// when they signed in.
fn count_credential(app: &App, headers: &HeaderMap, decision: &Decision) {
    use crate::metrics::LoginMethod;
    let method = match &decision.caller {
        Some(c) => match c.via {
            Via::Session(_) => return,
            Via::ApiToken => Some((LoginMethod::Token, true)),
            Via::ExternalJwt => Some((LoginMethod::Jwt, true)),
        },
        None if decision.outcome == "no_session" => {
            headers.get(hyper::header::AUTHORIZATION).and_then(|auth| {
                if is_spawngate_token(auth) {
                    Some((LoginMethod::Token, false))
                } else if app.external_jwt.is_some() && is_bearer_jwt(auth) {
                    Some((LoginMethod::Jwt, false))
                } else {
                    None
                }
            })
        }
        None => None,
    };
    if let Some((method, ok)) = method {
        app.metrics.login(method, ok);
    }
}

/// What forwardAuth decided, and for whom (`None`: no valid credential).
struct Decision {
    outcome: &'static str,
    resp: Resp,
    caller: Option<Caller>,
}

fn decided(outcome: &'static str, resp: Resp, caller: Option<Caller>) -> Decision {
    Decision {
        outcome,
        resp,
        caller,
    }
}

async fn decide(app: &App, headers: &HeaderMap, slug: Option<&Slug>) -> Decision {
    let browser = wants_html(headers);
    // Before anything else: such a request is an attempt to pose as someone.
    if let Some((sent, real)) = crate::headers::find_lookalike(headers) {
        let message =
            format!("request header '{sent}' imitates spawngate's {real} and is not allowed");
        return decided(
            "lookalike_header",
            errors::bad_request(browser, &message),
            None,
        );
    }
    // A store that cannot be read answers 503: telling a signed-in user to sign in
    // again would send everyone to a login that cannot work either.
    let caller = match identify_caller(app, headers, slug).await {
        Ok(caller) => caller,
        Err(e) => {
            return decided(
                "store_unavailable",
                errors::store_unavailable(browser, &e),
                None,
            );
        }
    };
    let Some(caller) = caller else {
        return decided(
            "no_session",
            unauthenticated(app, headers, browser, slug),
            None,
        );
    };
    let target = slug.and_then(|s| app.store.with_directory(|d| d.environment(s)));
    let target = target.as_ref();
    // Personal API tokens are for the owner's own scripts: never for shared slugs.
    let access = target
        .and_then(|t| Access::of(&caller.user, t))
        .filter(|a| *a == Access::Owner || caller.via != Via::ApiToken);
    let (Some(target), Some(access)) = (target, access) else {
        let outcome = if target.is_some() {
            "forbidden"
        } else {
            "unknown_slug"
        };
        return decided(outcome, errors::forbidden(browser), Some(caller));
    };
    // In path mode every app shares spawngate's origin: an app shared with an
    // admin would run its scripts with the admin's session, admin page and API
    // included. Admins open only their own environment there; subdomain mode
    // gives every app an origin of its own.
    if access != Access::Owner && caller.user.admin && app.config.apps.is_none() {
        let refused = Error::Forbidden(
            "admins open environments shared with them only in subdomain mode: in path mode its scripts would run with your admin session",
        );
        return decided(
            "forbidden",
            errors::answer(&refused.into(), browser),
            Some(caller),
        );
    }
    // An app that takes spawngate's token as its own login cannot tell read-only
    // from full access: it would get the owner's token either way.
    if access == Access::ReadOnly
        && app.lifecycle.profile(target).app_auth != crate::config::AppAuth::None
    {
        let refused = Error::Forbidden(
            "this app cannot be shared read-only (it signs everyone in with the owner's token): ask for full access",
        );
        return decided(
            "forbidden",
            errors::answer(&refused.into(), browser),
            Some(caller),
        );
    }
    // A browser is held briefly, then shown the start as it goes; a script is
    // held for the whole hold.
    let hold = match browser {
        true => app.config.spawn.page_after,
        false => app.config.spawn.hold,
    };
    match app.lifecycle.ensure_ready(target, hold).await {
        Readiness::Ready => {
            let resp = allow(app, headers, &caller, target, access);
            decided("allow", resp, Some(caller))
        }
        Readiness::Pending => {
            let ctx = PageContext::new(app, headers, target, access == Access::Owner);
            decided(
                "starting",
                progress::waiting(browser, Some(&ctx)),
                Some(caller),
            )
        }
        // The failure's reason, until spawngate's back-off ends. An app's output
        // is the owner's (a grantee may not see what the owner's app logs).
        Readiness::Failed(error) => {
            let retry = app.lifecycle.retry_in(target.slug()).as_secs_f64().ceil() as u64;
            let ctx = PageContext::new(app, headers, target, access == Access::Owner);
            let outcome = match error {
                SpawnError::App(_) => "app_failed",
                _ => "spawn_failed",
            };
            let resp = progress::failed(browser, &ctx, &error, retry);
            decided(outcome, resp, Some(caller))
        }
    }
}

/// Who is calling, and how they proved it: a session (in subdomain mode only one
/// handed off to this very app host), a personal token, or an external JWT.
async fn identify_caller(
    app: &App,
    headers: &HeaderMap,
    slug: Option<&Slug>,
) -> Result<Option<Caller>, crate::store::StoreError> {
    let session = match (&app.config.apps, slug) {
        (Some(_), Some(slug)) => app.identities.identify_app(headers, slug).await?,
        (Some(_), None) => None,
        (None, _) => app.identities.identify(headers).await?,
    };
    if let Some(identity) = session {
        return Ok(Some(Caller {
            user: identity.user,
            via: Via::Session(identity.headers),
        }));
    }
    if let Some(user) = app.identities.identify_token(headers).await? {
        return Ok(Some(Caller {
            user,
            via: Via::ApiToken,
        }));
    }
    let Some(jwt) = &app.external_jwt else {
        return Ok(None);
    };
    Ok(app
        .accounts
        .identify_jwt(jwt, headers)
        .await
        .map(|user| Caller {
            user,
            via: Via::ExternalJwt,
        }))
}

struct Caller {
    user: Arc<User>,
    via: Via,
}

/// How the caller proved who they are; a session brings its rendered headers.
#[derive(Debug)]
enum Via {
    Session(Arc<IdentityHeaders>),
    ApiToken,
    ExternalJwt,
}

impl PartialEq for Via {
    fn eq(&self, other: &Via) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

/// 200 with the identity headers and the request's cookies minus spawngate's own.
/// Traefik replaces the client's versions of these headers with ours.
fn allow(app: &App, headers: &HeaderMap, caller: &Caller, target: &Env, access: Access) -> Resp {
    // No body and no content type: Traefik reads only the headers of a 2xx.
    let mut resp = Response::new(super::empty());
    let h = resp.headers_mut();
    h.reserve(6);
    // A session's headers were rendered when its cookie was verified; names and
    // slugs are validated ASCII, so the conversions cannot fail.
    let own = match &caller.via {
        Via::Session(rendered) => Some(rendered),
        _ => None,
    };
    let user = match own {
        Some(r) => r.user.clone(),
        None => HeaderValue::from_str(&caller.user.name).ok(),
    };
    if let Some(v) = user {
        h.insert(HeaderName::from_static("x-spawngate-user"), v);
    }
    let slug = match own {
        Some(r) if caller.user.id == target.owner().id && target.is_default() => r.slug.clone(),
        _ => HeaderValue::from_str(target.slug().as_str()).ok(),
    };
    if let Some(v) = slug {
        h.insert(HeaderName::from_static("x-spawngate-slug"), v);
    }
    // Always sent, so a client cannot supply its own (Traefik copies ours over).
    h.insert(
        HeaderName::from_static("x-spawngate-access"),
        HeaderValue::from_static(access.header_value()),
    );
    // The app's own `Authorization` for profiles whose app takes the secret
    // as a token (Jupyter): whatever the client sent is replaced.
    let mut app_auth = None;
    if app.config.docker.inject_secret {
        let secret = app.lifecycle.forward_secret(target);
        app_auth = app
            .lifecycle
            .profile(target)
            .app_auth
            .header(&secret)
            .and_then(|v| HeaderValue::try_from(v).ok());
        if let Ok(v) = HeaderValue::try_from(secret) {
            h.insert(HeaderName::from_static("x-spawngate-secret"), v);
        }
    }
    if let Some(v) = app_auth {
        h.insert(hyper::header::AUTHORIZATION, v);
    }
    // `Authorization` is in authResponseHeaders too: spawngate's credentials (its
    // tokens, and with `[jwt]` on any bearer JWT, whichever credential won) stop
    // here, so an owner never receives a grantee's token to replay; anything else
    // (the app's own auth) is handed back to reach the container.
    if let Some(auth) = headers.get(hyper::header::AUTHORIZATION)
        && !h.contains_key(hyper::header::AUTHORIZATION)
        && !is_spawngate_token(auth)
        && caller.via != Via::ExternalJwt
        && !(app.external_jwt.is_some() && is_bearer_jwt(auth))
    {
        h.insert(hyper::header::AUTHORIZATION, auth.clone());
    }
    if headers.contains_key(hyper::header::COOKIE) {
        let session = &app.config.session;
        let jwt_cookie = app.external_jwt.as_ref().and_then(|j| j.cookie.as_deref());
        let own_cookies = [
            session.cookie_name.as_str(),
            session.app_cookie_name.as_str(),
            session.form_cookie_name.as_str(),
            jwt_cookie.unwrap_or(session.cookie_name.as_str()),
        ];
        if let Some(rest) = cookies::without(headers, &own_cookies)
            && let Ok(v) = HeaderValue::from_str(&rest)
        {
            h.insert(hyper::header::COOKIE, v);
        }
    }
    resp
}

fn bearer(value: &HeaderValue) -> Option<&str> {
    let (scheme, token) = value.to_str().ok()?.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

fn is_spawngate_token(value: &HeaderValue) -> bool {
    bearer(value).is_some_and(|t| t.starts_with("spawngate_"))
}

/// Shaped like a JWT (three dot-separated parts); validity does not matter here.
fn is_bearer_jwt(value: &HeaderValue) -> bool {
    bearer(value).is_some_and(|t| t.split('.').count() == 3)
}

fn unauthenticated(app: &App, headers: &HeaderMap, browser: bool, slug: Option<&Slug>) -> Resp {
    if !browser {
        return super::api_error(crate::error::Error::Unauthorized);
    }
    let original = headers
        .get("x-forwarded-uri")
        .and_then(|v| v.to_str().ok())
        .and_then(safe_next);
    match (&app.config.apps, slug) {
        // Subdomain mode: via the login host, which hands a session to this host.
        (Some(_), Some(slug)) => redirect(
            StatusCode::FOUND,
            &super::handoff::start_url(app, slug, original.as_deref().unwrap_or("/")),
        ),
        _ => redirect(StatusCode::FOUND, &login_location(original.as_deref())),
    }
}

/// `/_spawngate/login`, with `next` when there is somewhere to return to.
pub fn login_location(next: Option<&str>) -> String {
    match next {
        Some(next) => format!(
            "/_spawngate/login?next={}",
            utf8_percent_encode(next, NON_ALPHANUMERIC)
        ),
        None => "/_spawngate/login".to_owned(),
    }
}

/// The waiting answer without a start to follow (the page reloads itself).
pub(super) fn waiting(browser: bool) -> Resp {
    progress::waiting(browser, None)
}

/// A `/u-…` path that no user router matched: an unknown slug, or a user created a
/// moment ago whose router Traefik has not loaded yet. Never lets anything through.
pub async fn unknown_user_path(app: &App, headers: &HeaderMap, path: &str) -> Resp {
    let browser = wants_html(headers);
    let identity = match app.identities.identify(headers).await {
        Ok(identity) => identity,
        Err(e) => return errors::store_unavailable(browser, &e),
    };
    let Some(identity) = identity else {
        let next = safe_next(path);
        return if browser {
            redirect(StatusCode::FOUND, &login_location(next.as_deref()))
        } else {
            super::api_error(crate::error::Error::Unauthorized)
        };
    };
    let segment = path.trim_start_matches('/').split('/').next().unwrap_or("");
    let own =
        Slug::parse_segment(segment).is_some_and(|s| identity.user.environment_at(&s).is_some());
    if own {
        // Traefik polls the provider every few seconds; ask the browser to retry.
        waiting(browser)
    } else {
        errors::forbidden(browser)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_spawngate_tokens_and_bearer_jwts() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert!(is_spawngate_token(&v("Bearer spawngate_abc")));
        assert!(is_spawngate_token(&v("bearer  spawngate_abc")));
        assert!(!is_spawngate_token(&v("Basic spawngate_abc")));
        assert!(is_bearer_jwt(&v("Bearer aaa.bbb.ccc")));
        assert!(!is_bearer_jwt(&v("Bearer opaque-token")));
        assert!(!is_bearer_jwt(&v("Basic aaa.bbb.ccc")));
    }

    #[test]
    fn login_location_encodes_next() {
        assert_eq!(login_location(None), "/_spawngate/login");
        assert_eq!(
            login_location(Some("/u-abc/x?y=1&z=2")),
            "/_spawngate/login?next=%2Fu%2Dabc%2Fx%3Fy%3D1%26z%3D2"
        );
    }
}
