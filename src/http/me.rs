//! `/_spawngate/api/me…`: what a signed-in user may do for themselves. Callers are
//! identified by session cookie (state changes then need the session's CSRF token in
//! `X-Spawngate-CSRF`) or by one of their personal tokens (not ambient, so no CSRF).
//! A personal token reads and can revoke tokens, nothing more: a leaked one must not
//! mint successors, set a password, add an SSH key (a credential of its own) or
//! hand the environment to someone else.

use std::sync::Arc;

use hyper::{Method, Request, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::errors::HttpError;
use super::{ReqBody, Resp, api_error, json, parse_json};
use crate::app::App;
use crate::error::Error;
use crate::ids::SessionId;
use crate::store::{Env, User};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
}

/// `POST …/ssh-keys`: one OpenSSH public key line, optionally labelled.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewSshKey {
    pub key: String,
    #[serde(default)]
    pub name: Option<String>,
}

pub async fn handle<B: ReqBody>(app: &App, req: Request<B>, rest: &str) -> Resp {
    match route(app, req, rest).await {
        Ok((status, value)) => json(status, &value),
        Err(e) => api_error(e),
    }
}

async fn route<B: ReqBody>(
    app: &App,
    req: Request<B>,
    rest: &str,
) -> Result<(StatusCode, serde_json::Value), HttpError> {
    let method = req.method().clone();
    let (user, session): (Arc<User>, Option<SessionId>) =
        match app.identities.identify(req.headers()).await? {
            Some(identity) => {
                if method != Method::GET
                    && !super::csrf_header_ok(app, &identity.session, req.headers())
                {
                    return Err(Error::Forbidden("missing or wrong X-Spawngate-CSRF header").into());
                }
                (identity.user, Some(identity.session))
            }
            None => (
                app.identities
                    .identify_token(req.headers())
                    .await?
                    .ok_or(Error::Unauthorized)?,
                None,
            ),
        };
    let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    let csrf = session.as_ref().map(|sid| app.sessions.csrf_token(sid));
    if session.is_none() && method != Method::GET && !matches!(parts.as_slice(), ["tokens", _]) {
        return Err(
            Error::Forbidden("a personal API token cannot change the account: sign in").into(),
        );
    }
    let accounts = &app.accounts;
    match (&method, parts.as_slice()) {
        (&Method::GET, [""]) => {
            let view = accounts.user_view(&user);
            Ok((
                StatusCode::OK,
                json!({ "name": view.name, "slug": view.slug, "url": view.url, "csrf": csrf }),
            ))
        }
        (&Method::GET, ["dashboard"]) => Ok((
            StatusCode::OK,
            super::dashboard::json_view(app, &user).await?,
        )),
        (&Method::GET, ["sessions"]) => Ok((
            StatusCode::OK,
            json!({ "sessions": accounts.sessions(&user, session.as_ref())? }),
        )),
        (&Method::GET, ["tokens"]) => Ok((
            StatusCode::OK,
            json!({ "tokens": accounts.api_tokens(&user)? }),
        )),
        (&Method::POST, ["tokens"]) => {
            let new: NewToken = parse_json(req).await?;
            let created = accounts.create_api_token(&user, &new.name).await?;
            Ok((StatusCode::CREATED, json!(created)))
        }
        (&Method::PUT, ["password"]) => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct ChangePassword {
                #[serde(default)]
                current: Option<String>,
                new: String,
            }
            let change: ChangePassword = parse_json(req).await?;
            let signed_out = accounts
                .change_password(&user, session.as_ref(), change.current, &change.new)
                .await?;
            Ok((
                StatusCode::OK,
                json!({ "password": true, "other_sessions_ended": signed_out }),
            ))
        }
        (&Method::GET, ["shares"]) => Ok((
            StatusCode::OK,
            json!({
                "shared_with": app.sharing.shares_of(&Env::default_of(user.clone())),
                "shared_with_me": app.sharing.shared_with(&user),
            }),
        )),
        (&Method::PUT, ["shares", grantee]) => {
            let share: super::admin::ShareRequest = parse_json(req).await?;
            let shares = app
                .sharing
                .share(
                    &user.name,
                    &Env::default_of(user.clone()),
                    grantee,
                    share.read_only,
                )
                .await?;
            Ok((StatusCode::OK, json!({ "shared_with": shares })))
        }
        (&Method::DELETE, ["shares", grantee]) => {
            let shares = app
                .sharing
                .unshare(&user.name, &Env::default_of(user.clone()), grantee)
                .await?;
            Ok((StatusCode::OK, json!({ "shared_with": shares })))
        }
        (&Method::GET, ["profiles"]) => Ok((
            StatusCode::OK,
            json!({ "profiles": app.environments.profiles_for(&user) }),
        )),
        (_, ["environments", rest @ ..]) => {
            super::environments::route(
                app,
                &user.name,
                &user,
                super::environments::Asker::Owner,
                &method,
                rest,
                req,
            )
            .await
        }
        (&Method::GET, ["ssh-keys"]) => Ok((
            StatusCode::OK,
            json!({ "ssh_keys": accounts.ssh_keys(&user)? }),
        )),
        (&Method::POST, ["ssh-keys"]) => {
            let new: NewSshKey = parse_json(req).await?;
            let added = accounts
                .add_ssh_key(&user.name, &user, &new.key, new.name.as_deref())
                .await?;
            Ok((StatusCode::CREATED, json!(added)))
        }
        (&Method::DELETE, ["ssh-keys", key]) => {
            let key = percent_encoding::percent_decode_str(key).decode_utf8_lossy();
            accounts.remove_ssh_key(&user.name, &user, &key).await?;
            Ok((StatusCode::OK, json!({ "removed": key })))
        }
        (&Method::DELETE, ["tokens", id]) => {
            accounts.revoke_api_token(&user, id).await?;
            Ok((StatusCode::OK, json!({ "revoked": id })))
        }
        _ => Err(Error::NotFound("route").into()),
    }
}
