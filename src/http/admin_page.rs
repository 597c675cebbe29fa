//! `/_spawngate/admin`: the admin page, for admin users signed in with their own
//! session. Every user with their environment's state, last activity, CPU and
//! memory (a plain table; `admin.js` adds search, filters and sorting); creating,
//! disabling, enabling and deleting users; starting, stopping and restarting any
//! environment; login links; shares; the audit log with filters. Changes are
//! forms posting to `/_spawngate/admin/…` with the session's CSRF token, done
//! through the same services as the admin API and audited under the admin's name.

use crate::store::Env;
use std::collections::HashMap;

use hyper::header::HeaderMap;
use hyper::{Request, StatusCode};

use super::dashboard::{cpu_text, memory_text, relative, start_briefly, state_key};
use super::errors::HttpError;
use super::forms::{self, SignedInForm, button, csrf_field};
use super::layout::{Nav, shell, time_ago};
use super::pages::escape;
use super::{ReqBody, Resp, html, redirect};
use crate::app::App;
use crate::auth::Identity;
use crate::error::Error;

pub const PATH: &str = "/_spawngate/admin";

/// Audit entries read for the page, and shown at most.
const AUDIT_SCAN: usize = 2000;
const AUDIT_SHOWN: usize = 200;

/// The signed-in admin, or the answer for everyone else: the sign-in page (then
/// back here) without a session, 403 for users who are not admins.
async fn admin_of(app: &App, headers: &HeaderMap) -> Result<Identity, Box<Resp>> {
    match app.identities.identify(headers).await {
        Ok(Some(identity)) if identity.user.admin => Ok(identity),
        Ok(Some(_)) => Err(Box::new(super::errors::html_answer(
            &Error::Forbidden("this page is for administrators").into(),
        ))),
        Ok(None) => Err(Box::new(redirect(
            StatusCode::FOUND,
            "/_spawngate/login?next=%2F_spawngate%2Fadmin",
        ))),
        Err(e) => Err(Box::new(super::errors::store_unavailable(true, &e))),
    }
}

/// `GET /_spawngate/admin`.
pub async fn page(app: &App, headers: &HeaderMap, query: &HashMap<String, String>) -> Resp {
    let identity = match admin_of(app, headers).await {
        Ok(identity) => identity,
        Err(resp) => return *resp,
    };
    match render(app, &identity, query).await {
        Ok(body) => html(StatusCode::OK, body),
        Err(e) => super::errors::html_answer(&e),
    }
}

fn notice(key: &str) -> Option<&'static str> {
    Some(match key {
        "created" => "User created.",
        "deleted" => "User deleted.",
        "disabled" => "User disabled: their sessions, links and tokens no longer work.",
        "enabled" => "User enabled. They need a new sign-in link.",
        "admin-granted" => "The user is now an admin.",
        "admin-revoked" => "The user is no longer an admin.",
        "sessions-revoked" => "The user's sessions ended.",
        "started" => "The environment is running.",
        "starting" => "The environment is starting.",
        "restarted" => "The environment was restarted.",
        "stopped" => "The environment is stopped.",
        "link-sent" => "A sign-in link is on its way to the user's address.",
        "shared" => "Shared.",
        "unshared" => "No longer shared.",
        "environment-deleted" => "The environment and its data were deleted.",
        _ => return None,
    })
}

async fn render(
    app: &App,
    identity: &Identity,
    query: &HashMap<String, String>,
) -> Result<String, HttpError> {
    let csrf = app.sessions.csrf_token(&identity.session);
    let notice = query
        .get("done")
        .and_then(|k| notice(k))
        .map(|n| format!(r#"<p class="notice" role="status">{n}</p>"#))
        .unwrap_or_default();
    let body = format!(
        "{notice}{users}{environments}{create}{shares}{audit}",
        users = users_panel(app, identity, &csrf).await?,
        environments = environments_panel(app, &csrf).await?,
        create = create_panel(&csrf),
        shares = shares_panel(app, &csrf),
        audit = audit_panel(app, query)?,
    );
    let nav = Nav {
        user: &identity.user.name,
        admin: true,
        csrf: &csrf,
        current: "admin",
    };
    Ok(shell("Admin", &nav, &body, &["admin.js"]))
}

async fn users_panel(app: &App, me: &Identity, csrf: &str) -> Result<String, HttpError> {
    let overviews = app.environments.overviews().await?;
    let directory = app.store.snapshot();
    let mailer = app.mailer.is_some();
    let mut rows = String::new();
    for o in &overviews {
        let Some(user) = directory.by_name(&o.user) else {
            continue;
        };
        let (state, label) = state_key(o.state);
        let hidden = [("user", user.name.as_str())];
        let act = |op: &str, label: &str, class: &str| {
            button(&format!("{PATH}/users/{op}"), csrf, label, class, &hidden)
        };
        let mut tags = String::new();
        if user.admin {
            tags.push_str(r#" <span class="tag">admin</span>"#);
        }
        if user.disabled {
            tags.push_str(r#" <span class="tag tag-bad">disabled</span>"#);
        }
        let email = user
            .email
            .as_deref()
            .map(|e| format!(r#"<br><span class="muted">{}</span>"#, escape(e)))
            .unwrap_or_default();
        let environment = [
            act("start", "Start", "small"),
            act("stop", "Stop", "secondary small"),
            act("restart", "Restart", "secondary small"),
        ]
        .concat();
        let myself = user.id == me.user.id;
        let mut account = Vec::new();
        if !myself {
            account.push(if user.disabled {
                act("enable", "Enable", "secondary small")
            } else {
                act("disable", "Disable", "danger small")
            });
            account.push(if user.admin {
                act("revoke-admin", "Remove admin", "secondary small")
            } else {
                act("grant-admin", "Make admin", "secondary small")
            });
        }
        account.push(act("revoke-sessions", "End sessions", "secondary small"));
        if !user.disabled {
            account.push(act("login-link", "Show login link", "secondary small"));
            if mailer && user.email.is_some() {
                account.push(act("send-link", "Email login link", "secondary small"));
            }
        }
        let delete = if myself {
            String::new()
        } else {
            format!(
                r#"<details class="danger-zone"><summary>Delete…</summary>{}</details>"#,
                act(
                    "delete",
                    &format!("Delete {} and their files", user.name),
                    "danger small"
                )
            )
        };
        let activity = crate::time::parse_rfc3339(o.last_activity.as_deref().unwrap_or(""));
        let detail = o
            .detail
            .as_deref()
            .map(|d| format!(r#"<br><span class="error">{}</span>"#, escape(d)))
            .unwrap_or_default();
        rows.push_str(&format!(
            r#"<tr data-user="{name}" data-state="{state}" data-admin="{admin}" data-disabled="{disabled}">
<th scope="row" data-value="{name}"><a href="{link}">{name}</a>{tags}{email}</th>
<td data-field="state" data-value="{state}"><span class="state state-{state}">{label}</span>{detail}</td>
<td data-field="activity" data-value="{activity}">{activity_text}</td>
<td data-field="cpu" data-value="{cpu_value}">{cpu}</td>
<td data-field="memory" data-value="{memory_value}">{memory}</td>
<td class="actions"><div>{environment}</div><details><summary>Account</summary><div>{account}</div>{delete}</details></td>
</tr>"#,
            name = escape(&user.name),
            link = escape(&o.link),
            admin = user.admin,
            disabled = user.disabled,
            activity = activity.unwrap_or(0),
            activity_text = time_ago(o.last_activity.as_deref()),
            cpu_value = o.usage.and_then(|u| u.cpu_percent).unwrap_or(-1.0),
            cpu = escape(&cpu_text(o)),
            memory_value = o.usage.and_then(|u| u.memory_bytes).unwrap_or(0),
            memory = escape(&memory_text(o)),
            account = account.concat(),
        ));
    }
    let running = overviews
        .iter()
        .filter(|o| o.state == crate::runtime::ContainerState::Running)
        .count();
    Ok(format!(
        r#"<section class="panel" aria-labelledby="users-title"><h2 id="users-title">Users</h2>
<p class="muted">{total} users, {running} running.</p>
<div class="toolbar" id="user-tools" hidden>
<label for="user-search">Search</label> <input id="user-search" type="search" placeholder="name or email">
<label for="user-state">State</label> <select id="user-state"><option value="">any</option><option value="running">running</option><option value="starting">starting</option><option value="paused">paused</option><option value="stopped">stopped</option><option value="not_exists">not created</option></select>
<label class="check"><input id="user-admins" type="checkbox"> admins only</label>
<label class="check"><input id="user-disabled" type="checkbox"> disabled only</label>
<span class="muted" id="user-count" aria-live="polite"></span>
</div>
<div class="scroll"><table id="users" class="sortable">
<thead><tr><th scope="col" data-sort="text">User</th><th scope="col" data-sort="text">Environment</th><th scope="col" data-sort="number">Last activity</th><th scope="col" data-sort="number">CPU</th><th scope="col" data-sort="number">Memory</th><th scope="col">Actions</th></tr></thead>
<tbody>{rows}</tbody></table></div>
</section>"#,
        total = overviews.len(),
    ))
}

fn create_panel(csrf: &str) -> String {
    format!(
        r#"<section class="panel" aria-labelledby="create-title"><h2 id="create-title">Create a user</h2>
<form class="row" method="post" action="{PATH}/users/create">{}
<label for="new-name">Name</label> <input id="new-name" name="name" required maxlength="64" pattern="[a-z0-9][a-z0-9._\-]*" autocomplete="off">
<label for="new-email">Email (optional)</label> <input id="new-email" name="email" type="email" autocomplete="off">
<label class="check"><input type="checkbox" name="admin" value="1"> admin</label>
<button type="submit">Create user</button></form>
<p class="muted">Names: lowercase letters, digits, '.', '_' or '-'. Send the new user a login link from the table.</p>
</section>"#,
        csrf_field(csrf)
    )
}

/// Users' environments beyond their default one (`limits.environments_per_user`).
async fn environments_panel(app: &App, csrf: &str) -> Result<String, HttpError> {
    if app.config.limits.environments_per_user <= 1 {
        return Ok(String::new());
    }
    let users = app.store.snapshot().users();
    let extras: Vec<Env> = users
        .iter()
        .flat_map(Env::all_of)
        .filter(|e| !e.is_default())
        .collect();
    let overviews = app.environments.overviews_of(extras).await?;
    let rows: String = overviews
        .iter()
        .map(|o| {
            let (state, label) = state_key(o.state);
            let hidden = [("user", o.user.as_str()), ("environment", o.environment.as_str())];
            format!(
                r#"<tr data-user="{user}" data-environment="{env}"><td>{user}</td><td><a href="{link}">{env}</a></td><td>{profile}</td><td><span class="state state-{state}">{label}</span></td><td class="actions"><div>{stop}{delete}</div></td></tr>"#,
                user = escape(&o.user),
                env = escape(&o.environment),
                link = escape(&o.link),
                profile = escape(&o.profile_display_name),
                stop = button(&format!("{PATH}/environments/stop"), csrf, "Stop", "secondary small", &hidden),
                delete = button(&format!("{PATH}/environments/delete"), csrf, "Delete", "danger small", &hidden),
            )
        })
        .collect();
    let table = if overviews.is_empty() {
        r#"<p class="muted">No user has more than their default environment.</p>"#.to_owned()
    } else {
        format!(
            r#"<table id="environments"><thead><tr><th scope="col">User</th><th scope="col">Environment</th><th scope="col">Profile</th><th scope="col">State</th><th scope="col"><span class="sr-only">Actions</span></th></tr></thead><tbody>{rows}</tbody></table>"#
        )
    };
    Ok(format!(
        r#"<section class="panel" aria-labelledby="environments-title"><h2 id="environments-title">Other environments</h2>{table}</section>"#
    ))
}

fn shares_panel(app: &App, csrf: &str) -> String {
    let mut rows = String::new();
    for owner in app.store.snapshot().users() {
        for share in app.sharing.shares_of(&Env::default_of(owner.clone())) {
            rows.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&owner.name),
                escape(&share.user),
                if share.read_only { "read-only" } else { "full" },
                time_ago(Some(&share.granted)),
                button(
                    &format!("{PATH}/shares/revoke"),
                    csrf,
                    "Revoke",
                    "secondary small",
                    &[("owner", &owner.name), ("user", &share.user)],
                )
            ));
        }
    }
    let table = if rows.is_empty() {
        r#"<p class="muted">Nobody shares an environment.</p>"#.to_owned()
    } else {
        format!(
            r#"<table id="all-shares"><thead><tr><th scope="col">Owner</th><th scope="col">Shared with</th><th scope="col">Access</th><th scope="col">Since</th><th scope="col"><span class="sr-only">Actions</span></th></tr></thead><tbody>{rows}</tbody></table>"#
        )
    };
    format!(
        r#"<section class="panel" aria-labelledby="shares-title"><h2 id="shares-title">Shares</h2>{table}
<form class="row" method="post" action="{PATH}/shares">{}
<label for="share-owner">Owner</label> <input id="share-owner" name="owner" required maxlength="64">
<label for="share-grantee">Shared with</label> <input id="share-grantee" name="user" required maxlength="64">
<label class="check"><input type="checkbox" name="read_only" value="1"> read-only</label>
<button type="submit">Share</button></form></section>"#,
        csrf_field(csrf)
    )
}

/// The audit log, filtered by the query's `actor`, `action` (prefixes) and `text`
/// (anywhere in target or detail); a plain GET form, so filters are links.
fn audit_panel(app: &App, query: &HashMap<String, String>) -> Result<String, HttpError> {
    let get = |k: &str| query.get(k).map(|v| v.trim()).unwrap_or("");
    let (actor, action, text) = (get("actor"), get("action"), get("text").to_lowercase());
    let entries: Vec<_> = app
        .store
        .audit_entries(AUDIT_SCAN)?
        .into_iter()
        .filter(|e| actor.is_empty() || e.actor.starts_with(actor))
        .filter(|e| action.is_empty() || e.action.starts_with(action))
        .filter(|e| {
            text.is_empty()
                || e.target.to_lowercase().contains(&text)
                || e.detail
                    .as_deref()
                    .is_some_and(|d| d.to_lowercase().contains(&text))
        })
        .take(AUDIT_SHOWN)
        .collect();
    let rows: String = entries
        .iter()
        .map(|e| {
            let at = crate::time::rfc3339(e.at);
            format!(
                "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                time_ago(Some(&at)),
                escape(&e.actor),
                escape(&e.action),
                escape(&e.target),
                escape(e.detail.as_deref().unwrap_or(""))
            )
        })
        .collect();
    let table = if entries.is_empty() {
        r#"<p class="muted">No entries match.</p>"#.to_owned()
    } else {
        format!(
            r#"<div class="scroll"><table id="audit"><thead><tr><th scope="col">When</th><th scope="col">Actor</th><th scope="col">Action</th><th scope="col">Target</th><th scope="col">Detail</th></tr></thead><tbody>{rows}</tbody></table></div>"#
        )
    };
    Ok(format!(
        r##"<section class="panel" id="audit-log" aria-labelledby="audit-title"><h2 id="audit-title">Audit log</h2>
<form class="row" method="get" action="{PATH}#audit-log">
<label for="audit-actor">Actor</label> <input id="audit-actor" name="actor" value="{actor}" placeholder="e.g. admin:ops">
<label for="audit-action">Action</label> <input id="audit-action" name="action" value="{action}" placeholder="e.g. user.">
<label for="audit-text">Text</label> <input id="audit-text" name="text" value="{text}" placeholder="target or detail">
<button type="submit" class="secondary">Filter</button> <a href="{PATH}#audit-log">Clear</a></form>
<p class="muted">The newest {shown} of the last {AUDIT_SCAN} entries that match.</p>
{table}</section>"##,
        actor = escape(actor),
        action = escape(action),
        text = escape(get("text")),
        shown = entries.len(),
    ))
}

/// `GET /_spawngate/api/overview` (admin API): every user's environment, raw and
/// in the admin table's words, for `admin.js` to refresh the table with.
pub(super) async fn overview_json(app: &App) -> Result<serde_json::Value, HttpError> {
    let overviews = app.environments.overviews().await?;
    let users: Vec<serde_json::Value> = overviews
        .iter()
        .map(|o| {
            let (state, label) = state_key(o.state);
            let activity = o.last_activity.as_deref();
            serde_json::json!({
                "user": o.user,
                "environment": o,
                "text": {
                    "state": state,
                    "label": label,
                    "activity": activity.and_then(relative).unwrap_or_else(|| "—".into()),
                    "cpu": cpu_text(o),
                    "memory": memory_text(o),
                },
                "sort": {
                    "activity": activity.and_then(crate::time::parse_rfc3339).unwrap_or(0),
                    "cpu": o.usage.and_then(|u| u.cpu_percent).unwrap_or(-1.0),
                    "memory": o.usage.and_then(|u| u.memory_bytes).unwrap_or(0),
                },
            })
        })
        .collect();
    Ok(serde_json::json!({ "users": users }))
}

/// `POST /_spawngate/admin/<action>`.
pub async fn post<B: ReqBody>(app: &App, req: Request<B>, action: &str) -> Resp {
    let form = match forms::signed_in(app, req).await {
        Ok(form) => form,
        Err(resp) => return resp,
    };
    // The flag as it is now: the form's session may predate a revocation.
    if !form.identity.user.admin {
        return super::errors::html_answer(
            &Error::Forbidden("this page is for administrators").into(),
        );
    }
    match act(app, &form, action).await {
        Ok(resp) => resp,
        Err(e) => super::errors::html_answer(&e),
    }
}

async fn act(app: &App, form: &SignedInForm, action: &str) -> Result<Resp, HttpError> {
    let me = &form.identity.user;
    let actor = me.name.as_str();
    let accounts = &app.accounts;
    let back = |key| forms::done(PATH, key);
    let name = form.field("user");
    // By id: the form's user may name them by slug too.
    let not_yourself = |what: &'static str| -> Result<(), HttpError> {
        if name == me.name || accounts.find_user(name).is_ok_and(|u| u.id == me.id) {
            return Err(Error::Invalid(format!("you cannot {what} your own account here")).into());
        }
        Ok(())
    };
    match action {
        "environments/stop" | "environments/delete" => {
            let user = accounts.find_user(name)?;
            let env = form.field("environment");
            if action == "environments/stop" {
                let env = app.environments.environment(&user, env)?;
                app.environments.stop(actor, &env).await?;
                return Ok(back("stopped"));
            }
            app.environments.delete(actor, &user, env).await?;
            Ok(back("environment-deleted"))
        }
        "users/create" => {
            let email = Some(form.field("email")).filter(|e| !e.is_empty());
            accounts
                .add_user_with(actor, form.field("name"), email, form.checked("admin"))
                .await?;
            Ok(back("created"))
        }
        "users/delete" => {
            not_yourself("delete")?;
            accounts.remove_user(actor, name).await?;
            Ok(back("deleted"))
        }
        "users/disable" => {
            not_yourself("disable")?;
            accounts.set_disabled(actor, name, true).await?;
            Ok(back("disabled"))
        }
        "users/enable" => {
            accounts.set_disabled(actor, name, false).await?;
            Ok(back("enabled"))
        }
        "users/grant-admin" => {
            accounts.set_admin(actor, name, true).await?;
            Ok(back("admin-granted"))
        }
        "users/revoke-admin" => {
            not_yourself("remove admin from")?;
            accounts.set_admin(actor, name, false).await?;
            Ok(back("admin-revoked"))
        }
        "users/revoke-sessions" => {
            accounts.revoke_sessions(actor, name).await?;
            Ok(back("sessions-revoked"))
        }
        "users/start" | "users/restart" => {
            let user = accounts.find_user(name)?;
            let restart = action == "users/restart";
            Ok(
                match start_briefly(app, actor, &Env::default_of(user), restart).await? {
                    true if restart => back("restarted"),
                    true => back("started"),
                    false => back("starting"),
                },
            )
        }
        "users/stop" => {
            let user = accounts.find_user(name)?;
            app.environments.stop(actor, &Env::default_of(user)).await?;
            Ok(back("stopped"))
        }
        "users/login-link" => {
            let link = accounts.login_link(name).await?;
            app.store
                .audit(actor, "user.login-link", &link.user, Some("shown".into()));
            Ok(link_page(app, form, &link))
        }
        "users/send-link" => {
            let user = accounts.find_user(name)?;
            let (Some(mailer), Some(email)) = (&app.mailer, &user.email) else {
                return Err(Error::Invalid(format!(
                    "'{}' has no email address, or email is not configured",
                    user.name
                ))
                .into());
            };
            let link = accounts.login_link(name).await?;
            let minutes = app.config.login.token_ttl.as_secs().div_ceil(60);
            mailer
                .send_login_link(email, &link.url, minutes)
                .await
                .map_err(|e| Error::Unavailable(format!("cannot send the login link: {e}")))?;
            app.store.audit(
                actor,
                "user.login-link",
                &user.name,
                Some("sent by email".into()),
            );
            Ok(back("link-sent"))
        }
        "shares" => {
            let owner = Env::default_of(accounts.find_user(form.field("owner"))?);
            app.sharing
                .share(actor, &owner, name, form.checked("read_only"))
                .await?;
            Ok(back("shared"))
        }
        "shares/revoke" => {
            let owner = Env::default_of(accounts.find_user(form.field("owner"))?);
            app.sharing.unshare(actor, &owner, name).await?;
            Ok(back("unshared"))
        }
        _ => Err(Error::NotFound("page").into()),
    }
}

/// A login link, shown to the admin to pass on.
fn link_page(app: &App, form: &SignedInForm, link: &crate::accounts::LoginLink) -> Resp {
    let csrf = app.sessions.csrf_token(&form.identity.session);
    let body = format!(
        r#"<section class="panel"><p>A one-time sign-in link for <strong>{user}</strong>, valid until {expires}. Pass it on privately: whoever opens it signs in as {user}.</p>
<pre id="login-link" class="secret" tabindex="0">{url}</pre>
<p><a class="button" href="{PATH}">Back to the admin page</a></p></section>"#,
        user = escape(&link.user),
        expires = time_ago(Some(&link.expires)),
        url = escape(&link.url),
    );
    let nav = Nav {
        user: &form.identity.user.name,
        admin: true,
        csrf: &csrf,
        current: "admin",
    };
    html(StatusCode::OK, shell("Login link", &nav, &body, &[]))
}
