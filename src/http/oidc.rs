//! `/_spawngate/oidc/start` and `/_spawngate/oidc/callback`: the two legs of an
//! OIDC login. The state is bound to the browser by a short-lived `HttpOnly`
//! cookie, so a login started in one browser cannot be finished in another (login
//! CSRF).

use std::collections::HashMap;

use hyper::header::{HeaderMap, HeaderValue, SET_COOKIE};
use hyper::{Method, Request, StatusCode};

use super::pages::page;
use super::{Resp, html, redirect};
use crate::accounts::MappingError;
use crate::app::App;
use crate::auth::oidc::{OidcError, STATE_TTL};
use crate::auth::{cookies, safe_next};
use crate::metrics::LoginMethod;

/// Over HTTPS the state cookie is `__Host-` prefixed (so `Path=/`): a same-site
/// host (an app in subdomain mode) cannot plant its own state in the browser.
fn state_cookie(app: &App) -> &'static str {
    if app.config.session.secure {
        "__Host-spawngate_oidc_state"
    } else {
        "spawngate_oidc_state"
    }
}

pub async fn handle<B>(app: &App, req: Request<B>, rest: &str) -> Resp {
    let Some(client) = app.oidc.as_ref() else {
        return super::errors::not_found();
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return super::errors::not_found();
    }
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    match rest {
        "start" => {
            let next = query.get("next").and_then(|n| safe_next(n));
            match client.begin(next).await {
                Ok((url, sealed)) => {
                    let mut resp = redirect(StatusCode::FOUND, &url);
                    set_state_cookie(app, &mut resp, &sealed, STATE_TTL.as_secs() as i64);
                    resp
                }
                Err(e) => failed(StatusCode::SERVICE_UNAVAILABLE, &e),
            }
        }
        "callback" => callback(app, req.headers(), &query).await,
        _ => super::errors::not_found(),
    }
}

async fn callback(app: &App, headers: &HeaderMap, query: &HashMap<String, String>) -> Resp {
    let Some(client) = app.oidc.as_ref() else {
        return super::errors::not_found();
    };
    let state = query.get("state").map(String::as_str).unwrap_or_default();
    let sealed = cookies::values(headers, state_cookie(app)).next();
    let mut resp = if let Some(error) = query.get("error") {
        app.metrics.login(LoginMethod::Oidc, false);
        // The user said no at the IdP, or the IdP refused the request.
        failed(StatusCode::UNAUTHORIZED, &OidcError::Refused(error.clone()))
    } else {
        let code = query.get("code").map(String::as_str).unwrap_or_default();
        match client.finish(state, sealed, code).await {
            Ok(done) => match app
                .accounts
                .user_for_claims(&done.claims, &client.mapping(), "oidc")
                .await
            {
                Ok(user) => {
                    app.metrics.login(LoginMethod::Oidc, true);
                    super::login::start_session(app, headers, &user, done.next.as_ref()).await
                }
                Err(e) => {
                    app.metrics.login(LoginMethod::Oidc, false);
                    tracing::info!(target: "spawngate::login", error = %e, "OIDC identity maps to no user");
                    let why = match e {
                        MappingError::EmailUnverified => {
                            "<p>Your identity provider did not confirm that your email address is verified, so it cannot identify your account here. Verify it there, or ask your administrator.</p>"
                        }
                        _ => {
                            "<p>You signed in, but there is no account for you here. Ask your administrator.</p>"
                        }
                    };
                    html(StatusCode::FORBIDDEN, page("No account", "", why))
                }
            },
            Err(e) => {
                app.metrics.login(LoginMethod::Oidc, false);
                failed(StatusCode::UNAUTHORIZED, &e)
            }
        }
    };
    // The state is single use: clear the cookie whatever happened.
    set_state_cookie(app, &mut resp, "", 0);
    // The URL carried the code and state.
    resp.headers_mut()
        .insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    resp
}

fn set_state_cookie(app: &App, resp: &mut Resp, state: &str, max_age: i64) {
    // Lax: the IdP's redirect back is a cross-site top-level GET, which Lax allows.
    let cookie = cookies::session(state_cookie(app), state, app.config.session.secure, max_age);
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().append(SET_COOKIE, v);
    }
}

fn failed(status: StatusCode, e: &OidcError) -> Resp {
    tracing::warn!(target: "spawngate::login", error = %e, "OIDC login failed");
    let what = match e {
        OidcError::Provider(_) => {
            "The identity provider cannot be reached right now. Please try again later."
        }
        OidcError::State => "This sign-in took too long or was already used. Please start again.",
        OidcError::Refused(_) | OidcError::Token(_) => {
            "The identity provider did not confirm who you are."
        }
    };
    html(
        status,
        page(
            "Sign-in failed",
            "",
            &format!("<p>{what}</p><p><a href=\"/_spawngate/login\">Back to sign-in</a></p>"),
        ),
    )
}
