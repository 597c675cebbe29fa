//! `/_spawngate/`: the signed-in user's dashboard. Their environment (state and
//! since when, CPU and memory, last activity, what the idle culler does next,
//! start / stop / restart, its last output), their personal API tokens, their
//! sessions, and what they share. Server-rendered; every change is a form posting
//! to `/_spawngate/me/…` with the session's CSRF token, answered with `303` back.
//! `dashboard.js` refreshes the environment panel from
//! `/_spawngate/api/me/dashboard` every few seconds.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hyper::header::{HeaderMap, HeaderValue, SET_COOKIE};
use hyper::{Request, StatusCode};
use serde_json::json;

use super::errors::HttpError;
use super::forms::{self, SignedInForm, button, csrf_field};
use super::layout::{Nav, human_bytes, human_duration, shell, time_ago};
use super::pages::escape;
use super::{ReqBody, Resp, html, redirect};
use crate::app::App;
use crate::auth::cookies;
use crate::environments::Overview;
use crate::error::Error;
use crate::runtime::ContainerState;
use crate::store::{Env, User};

/// Output lines the dashboard shows.
const LOG_LINES: usize = 30;

/// How long a start from a page waits for the environment before answering
/// "starting" (the start goes on; the panel shows when it is done).
const START_WAIT: Duration = Duration::from_secs(5);

/// `GET /_spawngate/`.
pub async fn page(app: &App, headers: &HeaderMap, query: &HashMap<String, String>) -> Resp {
    let identity = match app.identities.identify(headers).await {
        Ok(Some(identity)) => identity,
        Ok(None) => return redirect(StatusCode::FOUND, "/_spawngate/login"),
        Err(e) => return super::errors::store_unavailable(true, &e),
    };
    match render(app, &identity, query).await {
        Ok(body) => html(StatusCode::OK, body),
        Err(e) => super::errors::html_answer(&e),
    }
}

async fn render(
    app: &App,
    identity: &crate::auth::Identity,
    query: &HashMap<String, String>,
) -> Result<String, HttpError> {
    let user = &identity.user;
    let csrf = app.sessions.csrf_token(&identity.session);
    let default = Env::default_of(user.clone());
    let overview = app.environments.overview(&default).await?;
    let logs = output(app, &default, &overview).await;
    let others = app
        .environments
        .overviews_of(Env::all_of(user).skip(1).collect())
        .await?;
    let notice = query
        .get("done")
        .and_then(|k| notice(k))
        .map(|n| format!(r#"<p class="notice" role="status">{n}</p>"#))
        .unwrap_or_default();
    let body = format!(
        "{notice}{environment}{output}{others}{tokens}{ssh_keys}{sessions}{sharing}",
        environment = environment_panel(&overview, &csrf),
        others = environments_panel(app, user, &others, &csrf),
        output = output_panel(&logs),
        tokens = tokens_panel(app, user, &csrf)?,
        ssh_keys = ssh_keys_panel(app, user, &csrf)?,
        sessions = sessions_panel(app, identity, &csrf)?,
        sharing = sharing_panel(app, user, &csrf),
    );
    let nav = Nav {
        user: &user.name,
        admin: user.admin,
        csrf: &csrf,
        current: "dashboard",
    };
    Ok(shell("Your dashboard", &nav, &body, &["dashboard.js"]))
}

/// The sentence for a `?done=` key; unknown keys show nothing.
fn notice(key: &str) -> Option<&'static str> {
    Some(match key {
        "started" => "Your environment is running.",
        "starting" => "Your environment is starting; this page shows when it is ready.",
        "stopped" => "Your environment is stopped. It starts again when you open it.",
        "restarted" => "Your environment was restarted.",
        "token-revoked" => "The token was revoked: it no longer works.",
        "ssh-key-added" => "The SSH key was added.",
        "ssh-key-removed" => "The SSH key was removed: it no longer signs you in.",
        "session-revoked" => "That session was signed out.",
        "shared" => "Shared.",
        "environment-created" => "The environment was created.",
        "environment-deleted" => "The environment and its data were deleted.",
        "unshared" => "No longer shared.",
        _ => return None,
    })
}

/// The environment's facts as text, the same for the page and its refreshes.
struct Facts {
    state: &'static str,
    label: &'static str,
    since: String,
    cpu: String,
    memory: String,
    activity: String,
    cull: String,
    failure: String,
}

pub(super) fn state_key(state: ContainerState) -> (&'static str, &'static str) {
    match state {
        ContainerState::NotExists => ("not_exists", "not created"),
        ContainerState::Starting => ("starting", "starting"),
        ContainerState::Running => ("running", "running"),
        ContainerState::Paused => ("paused", "paused"),
        ContainerState::Stopped => ("stopped", "stopped"),
    }
}

/// "3 min ago" / "in 12 min" for an RFC 3339 time; `None` if unreadable.
pub(super) fn relative(at: &str) -> Option<String> {
    let delta = crate::time::unix_now() - crate::time::parse_rfc3339(at)?;
    Some(if delta >= 0 {
        format!("{} ago", human_duration(delta))
    } else {
        format!("in {}", human_duration(-delta))
    })
}

pub(super) fn cpu_text(o: &Overview) -> String {
    match o.usage.and_then(|u| u.cpu_percent) {
        Some(p) => format!("{p:.1} %"),
        None => "—".into(),
    }
}

pub(super) fn memory_text(o: &Overview) -> String {
    match o.usage.and_then(|u| u.memory_bytes) {
        Some(used) => match o.usage.and_then(|u| u.memory_limit_bytes) {
            Some(limit) if limit > 0 => format!("{} of {}", human_bytes(used), human_bytes(limit)),
            _ => human_bytes(used),
        },
        None => "—".into(),
    }
}

fn facts(o: &Overview) -> Facts {
    let (state, label) = state_key(o.state);
    let since = o
        .since
        .as_deref()
        .and_then(relative)
        .map(|r| format!("since {r}"))
        .unwrap_or_default();
    let cull = match &o.cull {
        None => "—".to_owned(),
        Some(plan) => {
            let when = crate::time::parse_rfc3339(&plan.at)
                .map(|at| at - crate::time::unix_now())
                .map(|left| {
                    if left > 0 {
                        format!("in {}", human_duration(left))
                    } else {
                        "shortly".to_owned()
                    }
                })
                .unwrap_or_default();
            match (plan.action, plan.reason) {
                ("pause", _) => format!("pauses {when} unless used (resumes in a moment)"),
                ("remove", _) => format!("is removed {when} unless used (your files are kept)"),
                (_, "idle") => format!("stops {when} unless used"),
                _ => format!("stops {when} (maximum lifetime)"),
            }
        }
    };
    Facts {
        state,
        label,
        since,
        cpu: cpu_text(o),
        memory: memory_text(o),
        activity: o
            .last_activity
            .as_deref()
            .and_then(relative)
            .unwrap_or_else(|| "—".into()),
        cull,
        failure: o.failure.clone().unwrap_or_default(),
    }
}

/// Which buttons make sense in which state (the script follows the same table
/// through `data-states`).
const BUTTONS: &[(&str, &str, &str, &[&str])] = &[
    ("start", "Start", "", &["not_exists", "stopped", "paused"]),
    (
        "stop",
        "Stop",
        "secondary",
        &["running", "paused", "starting"],
    ),
    ("restart", "Restart", "secondary", &["running", "paused"]),
];

fn environment_panel(o: &Overview, csrf: &str) -> String {
    let f = facts(o);
    let buttons: String = BUTTONS
        .iter()
        .map(|(action, label, class, states)| {
            let disabled = if states.contains(&f.state) {
                ""
            } else {
                " disabled"
            };
            format!(
                r#"<form class="inline" method="post" action="/_spawngate/me/environment/{action}">{}<button type="submit" class="{class}" data-states="{}"{disabled}>{label}</button></form>"#,
                csrf_field(csrf),
                states.join(" ")
            )
        })
        .collect();
    let failure_hidden = if f.failure.is_empty() { " hidden" } else { "" };
    format!(
        r#"<section class="panel" id="environment" aria-labelledby="env-title" data-refresh="/_spawngate/api/me/dashboard">
<h2 id="env-title">Your environment</h2>
<dl class="facts">
<div><dt>State</dt><dd><span class="state state-{state}" data-field="label">{label}</span> <span class="muted" data-field="since">{since}</span></dd></div>
<div><dt>Address</dt><dd><a href="{link}">{url}</a></dd></div>
<div><dt>CPU</dt><dd data-field="cpu">{cpu}</dd></div>
<div><dt>Memory</dt><dd data-field="memory">{memory}</dd></div>
<div><dt>Last activity</dt><dd data-field="activity">{activity}</dd></div>
<div><dt>Idle</dt><dd data-field="cull">{cull}</dd></div>
</dl>
<p class="error" role="alert" data-field="failure"{failure_hidden}>{failure}</p>
<div class="actions">{buttons}<a class="button" href="{link}">Open</a></div>
</section>"#,
        state = f.state,
        label = f.label,
        since = escape(&f.since),
        link = escape(&o.link),
        url = escape(&o.url),
        cpu = escape(&f.cpu),
        memory = escape(&f.memory),
        activity = escape(&f.activity),
        cull = escape(&f.cull),
        failure = escape(&f.failure),
    )
}

/// The last output lines, when there is a container to ask.
async fn output(app: &App, env: &Env, o: &Overview) -> Vec<String> {
    if o.state == ContainerState::NotExists {
        return Vec::new();
    }
    app.environments
        .logs(env, LOG_LINES)
        .await
        .unwrap_or_else(|e| {
            tracing::debug!(user = %env.owner().name, error = %e, "cannot read container logs");
            Vec::new()
        })
}

/// The user's other environments (`limits.environments_per_user` > 1): each
/// with its profile, state and buttons, and a form to create one.
fn environments_panel(app: &App, user: &User, others: &[Overview], csrf: &str) -> String {
    let limit = app.config.limits.environments_per_user;
    if limit <= 1 {
        return String::new();
    }
    let rows: String = others
        .iter()
        .map(|o| {
            let (key, label) = state_key(o.state);
            let env = [("environment", o.environment.as_str())];
            format!(
                r#"<tr data-environment="{name}"><td><a href="{link}">{name}</a></td><td>{profile}</td><td><span class="state state-{key}">{label}</span></td><td class="actions"><div>{open}{stop}{delete}</div></td></tr>"#,
                name = escape(&o.environment),
                link = escape(&o.link),
                profile = escape(&o.profile_display_name),
                open = button("/_spawngate/me/environment/start", csrf, "Start", "small", &env),
                stop = button("/_spawngate/me/environment/stop", csrf, "Stop", "secondary small", &env),
                delete = button(
                    "/_spawngate/me/environments/delete",
                    csrf,
                    "Delete",
                    "danger small",
                    &env
                ),
            )
        })
        .collect();
    let table = if others.is_empty() {
        r#"<p class="muted">You have only your default environment.</p>"#.to_owned()
    } else {
        format!(
            r#"<table id="environments"><thead><tr><th scope="col">Name</th><th scope="col">Profile</th><th scope="col">State</th><th scope="col"><span class="sr-only">Actions</span></th></tr></thead><tbody>{rows}</tbody></table>"#
        )
    };
    let options: String = app
        .environments
        .profiles_for(user)
        .iter()
        .map(|p| {
            format!(
                r#"<option value="{}">{}</option>"#,
                escape(&p.name),
                escape(&p.display_name)
            )
        })
        .collect();
    let create = if others.len() + 1 < limit {
        format!(
            r#"<form class="row" method="post" action="/_spawngate/me/environments">{csrf}<label for="env-name">Name</label> <input id="env-name" name="name" required maxlength="32" pattern="[a-z][a-z0-9_-]*"> <label for="env-profile">Profile</label> <select id="env-profile" name="profile">{options}</select> <button type="submit">Create</button></form>"#,
            csrf = csrf_field(csrf)
        )
    } else {
        format!(r#"<p class="muted">You have {limit} environments, the most allowed.</p>"#)
    };
    format!(
        r#"<section class="panel" aria-labelledby="environments-title"><h2 id="environments-title">Your other environments</h2>
{table}{create}
</section>"#
    )
}

fn output_panel(logs: &[String]) -> String {
    format!(
        r#"<section class="panel" aria-labelledby="logs-title"><h2 id="logs-title">Recent output</h2>
<pre class="logs" data-field="logs" tabindex="0" aria-label="Your environment's last output lines">{}</pre></section>"#,
        escape(&logs_text(logs))
    )
}

fn logs_text(logs: &[String]) -> String {
    if logs.is_empty() {
        "No output yet.".to_owned()
    } else {
        logs.join("\n")
    }
}

fn tokens_panel(app: &App, user: &User, csrf: &str) -> Result<String, HttpError> {
    let tokens = app.accounts.api_tokens(user)?;
    let rows: String = tokens
        .iter()
        .map(|t| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&t.name),
                time_ago(Some(&t.created)),
                button(
                    "/_spawngate/me/tokens/revoke",
                    csrf,
                    "Revoke",
                    "secondary small",
                    &[("id", &t.id)]
                )
            )
        })
        .collect();
    let table = if tokens.is_empty() {
        r#"<p class="muted">You have no API tokens.</p>"#.to_owned()
    } else {
        format!(
            r#"<table id="tokens"><thead><tr><th scope="col">Name</th><th scope="col">Created</th><th scope="col"><span class="sr-only">Actions</span></th></tr></thead><tbody>{rows}</tbody></table>"#
        )
    };
    Ok(format!(
        r#"<section class="panel" aria-labelledby="tokens-title"><h2 id="tokens-title">API tokens</h2>
<p class="muted">For your own scripts: <code>Authorization: Bearer &lt;token&gt;</code> on your environment's address. A token cannot change your account.</p>
{table}
<form class="row" method="post" action="/_spawngate/me/tokens">{}<label for="token-name">New token's name</label> <input id="token-name" name="name" required maxlength="64" placeholder="e.g. laptop"> <button type="submit">Create token</button></form>
</section>"#,
        csrf_field(csrf)
    ))
}

/// The user's SSH public keys (only with `[ssh]` on): list, remove, add, and the
/// command that connects.
fn ssh_keys_panel(app: &App, user: &User, csrf: &str) -> Result<String, HttpError> {
    let Some(ssh) = &app.config.ssh else {
        return Ok(String::new());
    };
    let keys = app.accounts.ssh_keys(user)?;
    let rows: String = keys
        .iter()
        .map(|k| {
            format!(
                "<tr><td>{}</td><td><code>{}</code> {}</td><td>{}</td><td>{}</td></tr>",
                escape(&k.name),
                escape(&k.fingerprint),
                escape(&k.algorithm),
                time_ago(Some(&k.added)),
                button(
                    "/_spawngate/me/ssh-keys/remove",
                    csrf,
                    "Remove",
                    "secondary small",
                    &[("id", &k.id)]
                )
            )
        })
        .collect();
    let table = if keys.is_empty() {
        r#"<p class="muted">You have no SSH keys.</p>"#.to_owned()
    } else {
        format!(
            r#"<table id="ssh-keys"><thead><tr><th scope="col">Name</th><th scope="col">Fingerprint</th><th scope="col">Added</th><th scope="col"><span class="sr-only">Actions</span></th></tr></thead><tbody>{rows}</tbody></table>"#
        )
    };
    let host = &app.config.public_url.host;
    let command = format!("ssh -p {} {}@{}", ssh.listen.port(), user.name, host);
    Ok(format!(
        r#"<section class="panel" aria-labelledby="ssh-title"><h2 id="ssh-title">SSH keys</h2>
<p class="muted">With a key here, <code>{command}</code> opens a shell in your environment (started if needed); <code>scp</code>, <code>sftp</code> and <code>-L</code> forwarding to its ports work too.</p>
{table}
<form method="post" action="/_spawngate/me/ssh-keys">{csrf_field}<p><label for="ssh-key">Public key (ed25519, ECDSA, or RSA of 3072 bits or more)</label><br><textarea id="ssh-key" name="key" required rows="3" cols="60" placeholder="ssh-ed25519 AAAA… you@laptop"></textarea></p>
<p class="row"><label for="ssh-key-name">Name (optional)</label> <input id="ssh-key-name" name="name" maxlength="64" placeholder="e.g. laptop"> <button type="submit">Add key</button></p></form>
</section>"#,
        command = escape(&command),
        csrf_field = csrf_field(csrf),
    ))
}

fn sessions_panel(
    app: &App,
    identity: &crate::auth::Identity,
    csrf: &str,
) -> Result<String, HttpError> {
    let sessions = app
        .accounts
        .sessions(&identity.user, Some(&identity.session))?;
    let rows: String = sessions
        .iter()
        .map(|s| {
            let this = if s.current {
                r#" <span class="tag">this browser</span>"#
            } else {
                ""
            };
            format!(
                "<tr><td>{}{this}</td><td>{}</td><td>{}</td></tr>",
                time_ago(Some(&s.created)),
                time_ago(Some(&s.expires)),
                button(
                    "/_spawngate/me/sessions/revoke",
                    csrf,
                    "Sign out",
                    "secondary small",
                    &[("id", &s.id)]
                )
            )
        })
        .collect();
    Ok(format!(
        r#"<section class="panel" aria-labelledby="sessions-title"><h2 id="sessions-title">Your sessions</h2>
<table id="sessions"><thead><tr><th scope="col">Signed in</th><th scope="col">Expires</th><th scope="col"><span class="sr-only">Actions</span></th></tr></thead><tbody>{rows}</tbody></table>
</section>"#
    ))
}

fn sharing_panel(app: &App, user: &Arc<User>, csrf: &str) -> String {
    let mine = app.sharing.shares_of(&Env::default_of(user.clone()));
    let rows: String = mine
        .iter()
        .map(|s| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&s.user),
                if s.read_only { "read-only" } else { "full" },
                time_ago(Some(&s.granted)),
                button(
                    "/_spawngate/me/shares/revoke",
                    csrf,
                    "Stop sharing",
                    "secondary small",
                    &[("user", &s.user)]
                )
            )
        })
        .collect();
    let mine = if mine.is_empty() {
        r#"<p class="muted">You share your environment with nobody.</p>"#.to_owned()
    } else {
        format!(
            r#"<table id="shares"><thead><tr><th scope="col">User</th><th scope="col">Access</th><th scope="col">Since</th><th scope="col"><span class="sr-only">Actions</span></th></tr></thead><tbody>{rows}</tbody></table>"#
        )
    };
    let caution = if app.config.apps.is_none() {
        r#"<p class="muted">Every environment here shares one web origin: share only with people you trust, and only apps you trust.</p>"#
    } else {
        ""
    };
    let theirs: String = app
        .sharing
        .shared_with(user)
        .iter()
        .map(|s| {
            format!(
                r#"<li><a href="{}">{}'s environment</a>{}</li>"#,
                escape(&s.url),
                escape(&s.owner),
                if s.read_only { " (read-only)" } else { "" }
            )
        })
        .collect();
    let theirs = if theirs.is_empty() {
        r#"<p class="muted">Nobody shares an environment with you.</p>"#.to_owned()
    } else {
        format!("<ul>{theirs}</ul>")
    };
    format!(
        r#"<section class="panel" aria-labelledby="sharing-title"><h2 id="sharing-title">Sharing</h2>
<h3>You share with</h3>{mine}
<form class="row" method="post" action="/_spawngate/me/shares">{csrf}<label for="share-user">User name</label> <input id="share-user" name="user" required maxlength="64"> <label class="check"><input type="checkbox" name="read_only" value="1"> read-only</label> <button type="submit">Share</button></form>{caution}
<h3>Shared with you</h3>{theirs}
</section>"#,
        csrf = csrf_field(csrf)
    )
}

/// `GET /_spawngate/api/me/dashboard`: the environment panel's facts, raw and as
/// the page words them, with the last output lines.
pub async fn json_view(app: &App, user: &Arc<User>) -> Result<serde_json::Value, HttpError> {
    let default = Env::default_of(user.clone());
    let overview = app.environments.overview(&default).await?;
    let logs = output(app, &default, &overview).await;
    let f = facts(&overview);
    Ok(json!({
        "environment": overview,
        "text": {
            "state": f.state,
            "label": f.label,
            "since": f.since,
            "cpu": f.cpu,
            "memory": f.memory,
            "activity": f.activity,
            "cull": f.cull,
            "failure": f.failure,
            "logs": logs_text(&logs),
        },
        "logs": logs,
    }))
}

/// Starts (or restarts) `user`'s environment for a page: `Ok(true)` ready,
/// `Ok(false)` still starting after a moment.
pub(super) async fn start_briefly(
    app: &App,
    actor: &str,
    env: &Env,
    restart: bool,
) -> Result<bool, HttpError> {
    Ok(app
        .environments
        .start_within(actor, env, restart, START_WAIT)
        .await?)
}

/// `POST /_spawngate/me/<action>`.
pub async fn post<B: ReqBody>(app: &App, req: Request<B>, action: &str) -> Resp {
    let form = match forms::signed_in(app, req).await {
        Ok(form) => form,
        Err(resp) => return resp,
    };
    match act(app, &form, action).await {
        Ok(resp) => resp,
        Err(e) => super::errors::html_answer(&e),
    }
}

async fn act(app: &App, form: &SignedInForm, action: &str) -> Result<Resp, HttpError> {
    let user = &form.identity.user;
    let back = |key| forms::done("/_spawngate/", key);
    // Which environment a button is for (the default one when not said).
    let env = || {
        let name = Some(form.field("environment"))
            .filter(|n| !n.is_empty())
            .unwrap_or(crate::store::DEFAULT_ENVIRONMENT);
        app.environments.environment(user, name)
    };
    match action {
        "environment/start" => Ok(
            match start_briefly(app, &user.name, &env()?, false).await? {
                true => back("started"),
                false => back("starting"),
            },
        ),
        "environment/restart" => Ok(match start_briefly(app, &user.name, &env()?, true).await? {
            true => back("restarted"),
            false => back("starting"),
        }),
        "environment/stop" => {
            app.environments.stop(&user.name, &env()?).await?;
            Ok(back("stopped"))
        }
        "environments" => {
            let profile = Some(form.field("profile").to_owned()).filter(|p| !p.is_empty());
            let new = crate::environments::NewEnvironment {
                name: form.field("name").to_owned(),
                profile,
            };
            app.environments
                .create(&user.name, user, &new, false)
                .await?;
            Ok(back("environment-created"))
        }
        "environments/delete" => {
            app.environments
                .delete(&user.name, user, form.field("environment"))
                .await?;
            Ok(back("environment-deleted"))
        }
        "tokens" => {
            let created = app
                .accounts
                .create_api_token(user, form.field("name"))
                .await?;
            Ok(new_token_page(app, form, &created))
        }
        "tokens/revoke" => {
            app.accounts
                .revoke_api_token(user, form.field("id"))
                .await?;
            Ok(back("token-revoked"))
        }
        "ssh-keys" => {
            let name = Some(form.field("name")).filter(|n| !n.trim().is_empty());
            app.accounts
                .add_ssh_key(&user.name, user, form.field("key"), name)
                .await?;
            Ok(back("ssh-key-added"))
        }
        "ssh-keys/remove" => {
            app.accounts
                .remove_ssh_key(&user.name, user, form.field("id"))
                .await?;
            Ok(back("ssh-key-removed"))
        }
        "sessions/revoke" => {
            let current = &form.identity.session;
            let was_current = app
                .accounts
                .revoke_session(user, form.field("id"), Some(current))
                .await?;
            if !was_current {
                return Ok(back("session-revoked"));
            }
            let mut resp = redirect(StatusCode::SEE_OTHER, "/_spawngate/login");
            let cookie =
                cookies::cleared(&app.config.session.cookie_name, app.config.session.secure);
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                resp.headers_mut().insert(SET_COOKIE, v);
            }
            Ok(resp)
        }
        "shares" => {
            app.sharing
                .share(
                    &user.name,
                    &Env::default_of(user.clone()),
                    form.field("user"),
                    form.checked("read_only"),
                )
                .await?;
            Ok(back("shared"))
        }
        "shares/revoke" => {
            app.sharing
                .unshare(
                    &user.name,
                    &Env::default_of(user.clone()),
                    form.field("user"),
                )
                .await?;
            Ok(back("unshared"))
        }
        _ => Err(Error::NotFound("page").into()),
    }
}

/// The one time a new token's secret is shown.
fn new_token_page(app: &App, form: &SignedInForm, created: &crate::accounts::NewToken) -> Resp {
    let user = &form.identity.user;
    let csrf = app.sessions.csrf_token(&form.identity.session);
    let url = app.environments.url(&Env::default_of(user.clone()));
    let body = format!(
        r#"<section class="panel"><p>Your new token <strong>{name}</strong>. Copy it now: it is shown only this once.</p>
<p><label for="new-token">Token</label></p>
<pre id="new-token" class="secret" tabindex="0">{token}</pre>
<p class="muted">Use it as <code>curl -H "Authorization: Bearer $TOKEN" {url}</code></p>
<p><a class="button" href="/_spawngate/">Back to your dashboard</a></p></section>"#,
        name = escape(&created.name),
        token = escape(&created.token),
        url = escape(&url),
    );
    let nav = Nav {
        user: &user.name,
        admin: user.admin,
        csrf: &csrf,
        current: "dashboard",
    };
    html(StatusCode::OK, shell("New API token", &nav, &body, &[]))
}
