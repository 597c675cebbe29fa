//! `…/environments[/<name>[/…]]`: a user's environments, for themselves
//! (`/_spawngate/api/me/environments`) and for admins
//! (`/_spawngate/api/users/<name>/environments`). One router, so both see the
//! same operations; only who may pick which profile differs.

use std::sync::Arc;

use hyper::{Method, Request, StatusCode};
use serde_json::json;

use super::errors::HttpError;
use super::{ReqBody, parse_json};
use crate::app::App;
use crate::environments::NewEnvironment;
use crate::error::Error;
use crate::store::User;

/// Who asks: the owner themselves, or an admin (any profile for anyone).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Asker {
    Owner,
    Admin,
}

pub(super) async fn route<B: ReqBody>(
    app: &App,
    actor: &str,
    owner: &Arc<User>,
    asker: Asker,
    method: &Method,
    parts: &[&str],
    req: Request<B>,
) -> Result<(StatusCode, serde_json::Value), HttpError> {
    let environments = &app.environments;
    let ok = |v: serde_json::Value| Ok((StatusCode::OK, v));
    let env = |name: &str| environments.environment(owner, name);
    match (method, parts) {
        (&Method::GET, []) => ok(json!({
            "environments": environments.overviews_of_user(owner).await?,
            "limit": app.config.limits.environments_per_user,
            "profiles": environments.profiles_for(owner),
        })),
        (&Method::POST, []) => {
            let new: NewEnvironment = parse_json(req).await?;
            let created = environments
                .create(actor, owner, &new, asker == Asker::Admin)
                .await?;
            Ok((StatusCode::CREATED, to_json(&created)))
        }
        (&Method::GET, [name]) => ok(to_json(&environments.overview(&env(name)?).await?)),
        (&Method::DELETE, [name]) => {
            environments.delete(actor, owner, name).await?;
            ok(json!({ "deleted": name }))
        }
        (&Method::POST, [name, "start"]) => {
            ok(to_json(&environments.start(actor, &env(name)?).await?))
        }
        (&Method::POST, [name, "stop"]) => {
            ok(to_json(&environments.stop(actor, &env(name)?).await?))
        }
        (&Method::POST, [name, "restart"]) => {
            ok(to_json(&environments.restart(actor, &env(name)?).await?))
        }
        (&Method::GET, [name, "shares"]) => {
            ok(json!({ "shared_with": app.sharing.shares_of(&env(name)?) }))
        }
        (&Method::PUT, [name, "shares", grantee]) => {
            let share: super::admin::ShareRequest = parse_json(req).await?;
            let shares = app
                .sharing
                .share(actor, &env(name)?, grantee, share.read_only)
                .await?;
            ok(json!({ "shared_with": shares }))
        }
        (&Method::DELETE, [name, "shares", grantee]) => {
            let shares = app.sharing.unshare(actor, &env(name)?, grantee).await?;
            ok(json!({ "shared_with": shares }))
        }
        _ => Err(Error::NotFound("route").into()),
    }
}

/// The API's own view structs always serialize.
fn to_json<T: serde::Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}
