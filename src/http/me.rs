//! `/_spawngate/api/me…`: what a signed-in user may do for themselves. Callers are
//! identified by session cookie (state changes then need the session's CSRF token in
//! `X-Spawngate-CSRF`) or by one of their personal tokens (not ambient, so no CSRF).
//! A personal token reads and can revoke tokens, nothing more: a leaked one must not
//! mint successors, set a password or hand the environment to someone else.

use std::sync::Arc;

use hyper::{Method, Request, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::{ReqBody, Resp, api_error, json, read_body};
use crate::app::App;
use crate::error::ApiError;
use crate::ids::SessionId;
use crate::store::User;
use crate::time::rfc3339;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
}

pub async fn handle<B: ReqBody>(app: &App, req: Request<B>, rest: &str) -> Resp {
    match route(app, req, rest).await {
        Ok((status, value)) => json(status, &value),
        Err(e) => api_error(&e),
    }
}

async fn route<B: ReqBody>(
    app: &App,
    req: Request<B>,
    rest: &str,
) -> Result<(StatusCode, serde_json::Value), ApiError> {
    let method = req.method().clone();
    let (user, session): (Arc<User>, Option<SessionId>) =
        match app.identities.identify(req.headers())? {
            Some(identity) => {
                if method != Method::GET {
                    let presented = req
                        .headers()
                        .get("x-spawngate-csrf")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    if !app.sessions.csrf_ok(&identity.session, presented) {
                        return Err(ApiError::Forbidden(
                            "missing or wrong X-Spawngate-CSRF header",
                        ));
                    }
                }
                (identity.user, Some(identity.session))
            }
            None => (
                app.identities
                    .identify_token(req.headers())?
                    .ok_or(ApiError::Unauthorized)?,
                None,
            ),
        };
    let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    let csrf = session.as_ref().map(|sid| app.sessions.csrf_token(sid));
    if session.is_none() && method != Method::GET && !matches!(parts.as_slice(), ["tokens", _]) {
        return Err(ApiError::Forbidden(
            "a personal API token cannot change the account: sign in",
        ));
    }
    match (&method, parts.as_slice()) {
        (&Method::GET, [""]) => {
            let view = app.user_view(&user);
            Ok((
                StatusCode::OK,
                json!({ "name": view.name, "slug": view.slug, "url": view.url, "csrf": csrf }),
            ))
        }
        (&Method::GET, ["tokens"]) => {
            let tokens: Vec<_> = app
                .store
                .api_tokens_of(&user.id)?
                .into_iter()
                .map(|t| json!({ "id": t.id, "name": t.name, "created": rfc3339(t.created) }))
                .collect();
            Ok((StatusCode::OK, json!({ "tokens": tokens })))
        }
        (&Method::POST, ["tokens"]) => {
            let body = read_body(req.into_body()).await?;
            let new: NewToken = serde_json::from_slice(&body)
                .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
            let name = new.name.trim();
            if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
                return Err(ApiError::BadRequest(
                    "token name: 1-64 printable characters".into(),
                ));
            }
            let (token, record) = app.store.create_api_token(&user.id, name).await?;
            app.store.audit(
                &user.name,
                "token.personal.create",
                &user.name,
                Some(record.id.clone()),
            );
            Ok((
                StatusCode::CREATED,
                // The only time the token is shown.
                json!({ "id": record.id, "name": record.name, "token": token }),
            ))
        }
        (&Method::PUT, ["password"]) => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct ChangePassword {
                #[serde(default)]
                current: Option<String>,
                new: String,
            }
            let body = read_body(req.into_body()).await?;
            let change: ChangePassword = serde_json::from_slice(&body)
                .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
            // Whoever holds the session must also know the current password.
            if let Some(stored) = user.password_hash.clone() {
                let current = change.current.unwrap_or_default();
                let ok = tokio::task::spawn_blocking(move || {
                    crate::auth::password::verify(&current, Some(&stored))
                })
                .await
                .unwrap_or(false);
                if !ok {
                    return Err(ApiError::Forbidden("the current password is wrong"));
                }
            }
            app.set_password(&user.name, &user.name, Some(&change.new), false)
                .await?;
            // Whoever else is signed in as this user is signed out; this session
            // (and its app sessions) stays.
            let mut signed_out = 0;
            if let Some(sid) = &session {
                signed_out = app.store.delete_other_sessions(&user.id, sid).await?;
            }
            Ok((
                StatusCode::OK,
                json!({ "password": true, "other_sessions_ended": signed_out }),
            ))
        }
        (&Method::GET, ["shares"]) => Ok((
            StatusCode::OK,
            json!({
                "shared_with": app.shares_of(&user),
                "shared_with_me": app.shared_with(&user),
            }),
        )),
        (&Method::PUT, ["shares", grantee]) => {
            let body = read_body(req.into_body()).await?;
            let body = if body.is_empty() {
                bytes::Bytes::from_static(b"{}")
            } else {
                body
            };
            let share: super::admin::ShareRequest = serde_json::from_slice(&body)
                .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
            let shares = app
                .share(&user.name, &user.name, grantee, share.read_only)
                .await?;
            Ok((StatusCode::OK, json!({ "shared_with": shares })))
        }
        (&Method::DELETE, ["shares", grantee]) => {
            let shares = app.unshare(&user.name, &user.name, grantee).await?;
            Ok((StatusCode::OK, json!({ "shared_with": shares })))
        }
        (&Method::DELETE, ["tokens", id]) => {
            if !app.store.delete_api_token(&user.id, id).await? {
                return Err(ApiError::NotFound("token"));
            }
            app.store.audit(
                &user.name,
                "token.personal.revoke",
                &user.name,
                Some((*id).to_owned()),
            );
            Ok((StatusCode::OK, json!({ "revoked": id })))
        }
        _ => Err(ApiError::NotFound("route")),
    }
}
