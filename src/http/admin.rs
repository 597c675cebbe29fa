//! The admin JSON API under `/_spawngate/api/`. Over TCP it needs an admin bearer
//! token or the session of an admin user (whose changes carry the session's CSRF
//! token in `X-Spawngate-CSRF`, the cookie being ambient); over the control socket
//! the operator is trusted by file permission.

use hyper::{Method, Request, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::errors::HttpError;
use super::{Peer, ReqBody, Resp, bearer, json, parse_json};
use crate::app::App;
use crate::error::Error;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    name: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    admin: bool,
}

/// `PATCH …/users/<name>`: the flags to change; absent ones stay.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserPatch {
    #[serde(default)]
    admin: Option<bool>,
    #[serde(default)]
    disabled: Option<bool>,
    #[serde(default)]
    groups: Option<Vec<String>>,
    /// The default environment's profile (`"default"` for the `docker.*` one).
    #[serde(default)]
    profile: Option<String>,
}

/// `PUT …/shares/<user>`: grant access (`{"read_only": true}` for read-only).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ShareRequest {
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    #[serde(default)]
    name: Option<String>,
}

pub async fn handle<B>(app: &App, req: Request<B>, rest: &str, peer: Peer) -> Resp
where
    B: ReqBody,
{
    // Who is acting, for the audit log.
    let actor = match peer {
        Peer::Control => "operator".to_owned(),
        Peer::Network(_) => match network_actor(app, req.headers(), req.method()).await {
            Ok(actor) => actor,
            Err((e, audience)) => return super::errors::json_answer(&e, audience),
        },
    };
    let method = req.method().clone();
    // A backup holds the session and container keys: with it anyone can forge
    // sessions. Only the operator (the control socket) may take one; over the
    // network, admin token or not, the route does not exist.
    if peer == Peer::Control && method == Method::GET && rest.trim_end_matches('/') == "backup" {
        return backup(app).await;
    }
    let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    let query = query_map(req.uri());
    if method == Method::GET && parts == ["events"] {
        return super::progress::events(app, req.headers(), &query);
    }
    let call = Call {
        app,
        actor: &actor,
        peer,
        query: &query,
    };
    let result = route(&call, &method, &parts, req).await;
    match result {
        Ok((status, value)) => json(status, &value),
        Err(e) => operator_error(e),
    }
}

/// Who calls over the network: an admin token's holder (`admin:<token name>`) or
/// an admin user (by name). A personal API token never counts, whoever owns it.
async fn network_actor(
    app: &App,
    headers: &hyper::HeaderMap,
    method: &Method,
) -> Result<String, (HttpError, super::errors::Audience)> {
    match admin_caller(&app.store, &app.identities, headers).await? {
        AdminCaller::Token(name) => Ok(name),
        AdminCaller::User(identity) => {
            if method != Method::GET && !super::csrf_header_ok(app, &identity.session, headers) {
                return Err((
                    Error::Forbidden("missing or wrong X-Spawngate-CSRF header").into(),
                    super::errors::Audience::User,
                ));
            }
            Ok(identity.user.name.clone())
        }
    }
}

/// Who acts as an admin over the network.
pub(super) enum AdminCaller {
    /// An admin token, by its audit name (`admin:<name>`).
    Token(String),
    /// An admin user's session (changes also need its CSRF token).
    User(crate::auth::Identity),
}

/// The one rule of who is an admin by a request's headers: a bearer header is an
/// admin token or nothing; else the session of a user with the admin flag. Also
/// asked again by long-lived admin answers (the event stream).
pub(super) async fn admin_caller(
    store: &crate::store::Store,
    identities: &crate::auth::Identities,
    headers: &hyper::HeaderMap,
) -> Result<AdminCaller, (HttpError, super::errors::Audience)> {
    use super::errors::Audience;
    if let Some(token) = bearer(headers) {
        return match store.admin_token(token.expose()) {
            Ok(Some(token)) => Ok(AdminCaller::Token(format!("admin:{}", token.name))),
            Ok(None) => Err((Error::Unauthorized.into(), Audience::User)),
            Err(e) => Err((e.into(), Audience::Operator)),
        };
    }
    let identity = match identities.identify(headers).await {
        Ok(Some(identity)) => identity,
        Ok(None) => return Err((Error::Unauthorized.into(), Audience::User)),
        Err(e) => return Err((e.into(), Audience::User)),
    };
    if !identity.user.admin {
        return Err((
            Error::Forbidden("the admin API is for admins").into(),
            Audience::User,
        ));
    }
    Ok(AdminCaller::User(identity))
}

/// `GET /_spawngate/api/backup` (control socket only): the whole store as a backup
/// file.
async fn backup(app: &App) -> Resp {
    match crate::store::backup::export(&app.store).await {
        Ok(bytes) => {
            app.store.audit("operator", "store.backup", "store", None);
            let mut resp = hyper::Response::new(super::full(bytes));
            let h = resp.headers_mut();
            h.insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/x-ndjson"),
            );
            h.insert(
                hyper::header::CACHE_CONTROL,
                hyper::header::HeaderValue::from_static("no-store"),
            );
            resp
        }
        Err(crate::store::backup::BackupError::Store(e)) => operator_error(e),
        Err(e) => operator_error(Error::Internal(e.to_string())),
    }
}

/// Admins and the operator see the detail of what failed.
fn operator_error(e: impl Into<HttpError>) -> Resp {
    super::errors::json_answer(&e.into(), super::errors::Audience::Operator)
}

/// One API call's context.
struct Call<'a> {
    app: &'a App,
    actor: &'a str,
    peer: Peer,
    query: &'a std::collections::HashMap<String, String>,
}

impl Call<'_> {
    /// A numeric query parameter within `1..=max`, or `default`.
    fn limit(&self, key: &str, default: usize, max: usize) -> Result<usize, Error> {
        match self.query.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| Error::Invalid(format!("{key} must be a number from 1 to {max}"))),
        }
    }
}

fn query_map(uri: &hyper::Uri) -> std::collections::HashMap<String, String> {
    uri.query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

async fn route<B>(
    call: &Call<'_>,
    method: &Method,
    parts: &[&str],
    req: Request<B>,
) -> Result<(StatusCode, serde_json::Value), HttpError>
where
    B: ReqBody,
{
    let (app, actor, peer) = (call.app, call.actor, call.peer);
    let ok = |v: serde_json::Value| Ok((StatusCode::OK, v));
    let accounts = &app.accounts;
    let environments = &app.environments;
    let user = |key: &str| accounts.find_user(key);
    let default_env = |key: &str| user(key).map(crate::store::Env::default_of);
    match (method, parts) {
        (&Method::GET, ["users"]) => ok(json!({ "users": accounts.list_users() })),
        (&Method::POST, ["users"]) => {
            let body: NewUser = parse_json(req).await?;
            let user = accounts
                .add_user_with(actor, &body.name, body.email.as_deref(), body.admin)
                .await?;
            Ok((StatusCode::CREATED, to_json(&user)))
        }
        (&Method::GET, ["users", name]) => ok(to_json(&accounts.user_view(&*user(name)?))),
        (&Method::PATCH | &Method::PUT, ["users", name]) => {
            let patch: UserPatch = parse_json(req).await?;
            let mut view = accounts.user_view(&*user(name)?);
            if let Some(admin) = patch.admin {
                view = accounts.set_admin(actor, name, admin).await?;
            }
            if let Some(disabled) = patch.disabled {
                view = accounts.set_disabled(actor, name, disabled).await?;
            }
            if patch.groups.is_some() || patch.profile.is_some() {
                view = accounts
                    .set_groups_and_profile(actor, name, patch.groups, patch.profile)
                    .await?;
            }
            ok(to_json(&view))
        }
        (&Method::DELETE, ["users", name]) => {
            accounts.remove_user(actor, name).await?;
            ok(json!({ "deleted": name }))
        }
        (&Method::GET, ["users", name, "container"]) => {
            ok(to_json(&environments.status(&default_env(name)?).await?))
        }
        (&Method::POST, ["users", name, "container", "start"]) => ok(to_json(
            &environments.start(actor, &default_env(name)?).await?,
        )),
        (&Method::POST, ["users", name, "container", "stop"]) => ok(to_json(
            &environments.stop(actor, &default_env(name)?).await?,
        )),
        (&Method::POST, ["users", name, "container", "restart"]) => ok(to_json(
            &environments.restart(actor, &default_env(name)?).await?,
        )),
        (&Method::GET, ["users", name, "container", "logs"]) => {
            let tail = call.limit("tail", 100, crate::environments::MAX_LOG_LINES)?;
            ok(json!({ "lines": environments.logs(&default_env(name)?, tail).await? }))
        }
        (&Method::GET, ["users", name, "environments", env, "logs"]) => {
            let tail = call.limit("tail", 100, crate::environments::MAX_LOG_LINES)?;
            let env = environments.environment(&user(name)?, env)?;
            ok(json!({ "lines": environments.logs(&env, tail).await? }))
        }
        (_, ["users", name, "environments", rest @ ..]) => {
            return super::environments::route(
                app,
                actor,
                &user(name)?,
                super::environments::Asker::Admin,
                method,
                rest,
                req,
            )
            .await;
        }
        (&Method::PUT, ["users", name, "overrides"]) => {
            let body: crate::accounts::OverridesRequest = parse_json(req).await?;
            ok(to_json(&accounts.set_overrides(actor, name, body).await?))
        }
        (&Method::PUT, ["users", name, "password"]) => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct SetPassword {
                password: Option<String>,
            }
            let body: SetPassword = parse_json(req).await?;
            accounts
                .set_password(actor, name, body.password.as_deref(), true)
                .await?;
            ok(json!({ "user": name, "password": body.password.is_some() }))
        }
        (&Method::POST, ["users", name, "disable"]) => {
            ok(to_json(&accounts.set_disabled(actor, name, true).await?))
        }
        (&Method::POST, ["users", name, "enable"]) => {
            ok(to_json(&accounts.set_disabled(actor, name, false).await?))
        }
        (&Method::PUT, ["users", owner, "shares", grantee]) => {
            let body: ShareRequest = parse_json(req).await?;
            let shares = app
                .sharing
                .share(actor, &default_env(owner)?, grantee, body.read_only)
                .await?;
            ok(json!({ "shared_with": shares }))
        }
        (&Method::DELETE, ["users", owner, "shares", grantee]) => {
            let shares = app
                .sharing
                .unshare(actor, &default_env(owner)?, grantee)
                .await?;
            ok(json!({ "shared_with": shares }))
        }
        (&Method::GET, ["users", name, "ssh-keys"]) => {
            ok(json!({ "ssh_keys": accounts.ssh_keys(&*user(name)?)? }))
        }
        (&Method::POST, ["users", name, "ssh-keys"]) => {
            let new: super::me::NewSshKey = parse_json(req).await?;
            let added = accounts
                .add_ssh_key(actor, &*user(name)?, &new.key, new.name.as_deref())
                .await?;
            Ok((StatusCode::CREATED, to_json(&added)))
        }
        (&Method::DELETE, ["users", name, "ssh-keys", key]) => {
            let key = percent_encoding::percent_decode_str(key).decode_utf8_lossy();
            accounts.remove_ssh_key(actor, &*user(name)?, &key).await?;
            ok(json!({ "removed": key }))
        }
        (&Method::POST, ["users", name, "sessions", "revoke"]) => {
            let revoked = accounts.revoke_sessions(actor, name).await?;
            ok(json!({ "revoked": revoked }))
        }
        (&Method::GET, ["overview"]) => ok(super::admin_page::overview_json(app).await?),
        (&Method::GET, ["containers"]) => ok(json!({ "containers": environments.list().await? })),
        (&Method::GET, ["audit"]) => {
            let limit = call.limit("limit", 100, 10_000)?;
            ok(json!({ "entries": app.store.audit_entries(limit)? }))
        }
        (&Method::POST, ["users", name, "login-link"]) => {
            let link = accounts.login_link(name).await?;
            app.store.audit(actor, "user.login-link", &link.user, None);
            Ok((StatusCode::CREATED, to_json(&link)))
        }
        // Minting admin tokens is for the local operator only.
        (&Method::POST, ["tokens"]) if peer == Peer::Control => {
            let body: NewToken = parse_json(req).await?;
            let name = body.name.unwrap_or_else(|| "admin".to_owned());
            let token = accounts.create_admin_token(actor, &name).await?;
            Ok((StatusCode::CREATED, json!({ "name": name, "token": token })))
        }
        (_, ["users"] | ["users", _] | ["users", _, "container"]) => {
            Err(Error::Invalid(format!("method {method} not allowed here")).into())
        }
        _ => Err(Error::NotFound("route").into()),
    }
}

/// The API's own view structs always serialize.
fn to_json<T: serde::Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}
