//! Magic-link login: the link opens a confirm page and only its POST uses the token
//! up, so link scanners and previews that GET the URL do not log anyone in.

use std::collections::HashMap;

use hyper::header::{HeaderMap, HeaderValue, ORIGIN, SET_COOKIE};
use hyper::{Method, Request, StatusCode};

use super::pages::{escape, page};
use super::{Peer, ReqBody, Resp, client_ip, html, read_body, redirect};
use crate::app::App;
use crate::auth::{cookies, safe_next};
use crate::metrics::{LoginMethod, RateLimit};
use crate::store::Env;

fn query(req_uri: &hyper::Uri) -> HashMap<String, String> {
    req_uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

pub async fn login<B>(app: &App, req: Request<B>, peer: Peer) -> Resp
where
    B: ReqBody,
{
    match *req.method() {
        Method::GET | Method::HEAD => login_page(app, &req).await,
        Method::POST => post(app, req, peer).await,
        _ => super::api_error(crate::error::Error::Invalid("use GET or POST".into())),
    }
}

async fn login_page<B>(app: &App, req: &Request<B>) -> Resp {
    let q = query(req.uri());
    let next = q.get("next").and_then(|n| safe_next(n));
    if let Some(token) = q.get("token") {
        return match app.store.peek_login_token(token) {
            Ok(Ok(record)) => {
                let question = match (&record.user_id, &record.signup_email) {
                    (Some(id), _) => format!(
                        "Sign in as <strong>{}</strong>?",
                        escape(
                            app.store
                                .snapshot()
                                .by_id(id)
                                .map(|u| u.name.as_str())
                                .unwrap_or_default()
                        )
                    ),
                    (None, Some(email)) => format!(
                        "Create an account for <strong>{}</strong> and sign in?",
                        escape(email)
                    ),
                    (None, None) => return invalid_link(),
                };
                confirm_page(app, &question, token, next.as_deref())
            }
            Ok(Err(_)) => invalid_link(),
            Err(e) => store_unavailable(&e),
        };
    }
    match app.identities.identify(req.headers()).await {
        Ok(Some(identity)) => {
            let target = next.unwrap_or_else(|| {
                app.environments
                    .link(&Env::default_of(identity.user.clone()))
            });
            return redirect(StatusCode::FOUND, &target);
        }
        Ok(None) => {}
        Err(e) => return store_unavailable(&e),
    }
    sign_in_page(app, next.as_deref(), StatusCode::OK, "")
}

/// The sign-in page: an email form when email login is on, else instructions.
fn sign_in_page(app: &App, next: Option<&str>, status: StatusCode, notice: &str) -> Resp {
    let notice = if notice.is_empty() {
        String::new()
    } else {
        format!("<p><strong>{}</strong></p>", escape(notice))
    };
    let guard = FormGuard::new();
    let next_field = guard.hidden_fields(next);
    let password_form = if app.config.login.passwords {
        format!(
            r#"<form method="post" action="/_spawngate/login">
<p><label>Name or email <input name="username" required autocomplete="username"></label></p>
<p><label>Password <input type="password" name="password" required autocomplete="current-password"></label></p>{next_field}
<button type="submit">Sign in</button>
</form>"#
        )
    } else {
        String::new()
    };
    let sso = match &app.oidc {
        Some(oidc) => {
            let href = match next {
                Some(n) => format!(
                    "/_spawngate/oidc/start?next={}",
                    form_urlencoded::byte_serialize(n.as_bytes()).collect::<String>()
                ),
                None => "/_spawngate/oidc/start".to_owned(),
            };
            format!(
                r#"<p><a href="{}"><strong>{}</strong></a></p>"#,
                escape(&href),
                escape(oidc.label())
            )
        }
        None => String::new(),
    };
    let password_form = format!("{sso}{password_form}");
    let body = if app.mailer.is_some() {
        format!(
            r#"{notice}<form method="post" action="/_spawngate/login">
<p><label>Email <input type="email" name="email" required autocomplete="email"></label></p>{next_field}
<button type="submit">Email me a sign-in link</button>
</form>{password_form}"#
        )
    } else if !password_form.is_empty() {
        format!("{notice}{password_form}")
    } else {
        format!(
            "{notice}<p>Open the login link you were given to sign in.</p>\
             <p class=\"muted\">No link, or it expired? Ask your administrator for a new one.</p>"
        )
    };
    guard.set_on(app, html(status, page("Sign in", "", &body)))
}

/// POST /_spawngate/login: either a link's confirmation (`token`) or a request for
/// a link by email (`email`).
async fn post<B>(app: &App, req: Request<B>, peer: Peer) -> Resp
where
    B: ReqBody,
{
    let origin = form_origin(app, req.headers());
    if origin == FormOrigin::Foreign {
        return super::errors::forbidden(true);
    }
    let ip = client_ip(app, peer, req.headers()).map(crate::auth::ratelimit::client_key);
    let headers = req.headers().clone();
    let body = match read_body(req.into_body()).await {
        Ok(b) => b,
        Err(e) => return super::api_error(e),
    };
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    if origin == FormOrigin::Unknown && !FormGuard::matches(app, &headers, &form) {
        return super::errors::forbidden(true);
    }
    // Every login attempt counts against the client address (confirmations too,
    // so tokens cannot be guessed at speed).
    if let Some(ip) = &ip
        && !app.limit_per_ip.allow_everywhere(ip).await
    {
        app.metrics.rate_limited(RateLimit::Address);
        tracing::warn!(target: "spawngate::login", client = %ip, "login rate limit (address) hit");
        return too_many();
    }
    if form.contains_key("token") {
        return confirm(app, &headers, form).await;
    }
    if form.contains_key("password") && app.config.login.passwords {
        return password_login(app, &headers, &form).await;
    }
    match form.get("email") {
        Some(email) if app.mailer.is_some() => request_link(app, email, form.get("next")).await,
        _ => invalid_link(),
    }
}

/// Whether an address without an account may sign up (`login.signup_domains`).
fn signup_allowed(app: &App, email: &str) -> bool {
    let domain = email.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
    app.config
        .login
        .signup_domains
        .iter()
        .any(|d| d.eq_ignore_ascii_case(domain))
}

fn too_many() -> Resp {
    let mut resp = html(
        StatusCode::TOO_MANY_REQUESTS,
        page(
            "Too many attempts",
            "",
            "<p>Too many sign-in attempts. Please wait a while and try again.</p>",
        ),
    );
    resp.headers_mut()
        .insert(hyper::header::RETRY_AFTER, HeaderValue::from(600u32));
    resp
}

/// Sends a login link if the address belongs to an enabled user. The answer is the
/// same either way and is given before any mail is sent, so neither its content
/// nor its timing tells whether the address has an account.
async fn request_link(app: &App, email: &str, next: Option<&String>) -> Resp {
    let email = email.trim().to_ascii_lowercase();
    if email.len() > 254 || !email.contains('@') {
        app.metrics.login(LoginMethod::Email, false);
        return sign_in_page(
            app,
            None,
            StatusCode::BAD_REQUEST,
            "That does not look like an email address.",
        );
    }
    if !app.limit_per_email.allow_everywhere(&email).await {
        app.metrics.rate_limited(RateLimit::Email);
        tracing::warn!(target: "spawngate::login", "login rate limit (email) hit");
        return too_many();
    }
    // Counted the same whether the address has an account: the answer is too.
    app.metrics.login(LoginMethod::Email, true);
    let known = app.store.snapshot().by_email(&email).cloned();
    let recipient = match known {
        Some(user) if !user.disabled => Some(Some(user)),
        Some(_) => None,
        // No account: a sign-up link, if the domain may sign up.
        None if signup_allowed(app, &email) => Some(None),
        None => None,
    };
    // Everything that depends on the account (issuing the token: a disk write;
    // sending the mail) happens after the answer, so its timing is the same.
    if let (Some(user), Some(mailer)) = (recipient, app.mailer.clone()) {
        let accounts = app.accounts.clone();
        let ttl = app.config.login.token_ttl;
        let next = next.and_then(|n| safe_next(n));
        let email = email.clone();
        app.tasks.spawn(async move {
            let link = match accounts
                .sign_in_link(user.as_deref(), &email, next.as_deref())
                .await
            {
                Ok(link) => link,
                Err(e) => {
                    tracing::error!(error = %e, "cannot issue a login token");
                    return;
                }
            };
            if let Err(e) = mailer
                .send_login_link(&email, &link, ttl.as_secs().div_ceil(60))
                .await
            {
                let who = user.as_ref().map_or("(sign-up)", |u| u.name.as_str());
                tracing::error!(target: "spawngate::login", user = %who, error = %e, "cannot send the login link");
            }
        });
    }
    html(
        StatusCode::OK,
        page(
            "Check your email",
            "",
            "<p>If that address can sign in here, a sign-in link is on its way. It works once, for a few minutes.</p>",
        ),
    )
}

/// `question` is trusted markup (its values are escaped by the caller).
fn confirm_page(app: &App, question: &str, token: &str, next: Option<&str>) -> Resp {
    let guard = FormGuard::new();
    let next_field = guard.hidden_fields(next);
    let resp = html(
        StatusCode::OK,
        page(
            "Sign in",
            "",
            &format!(
                r#"<p>{question}</p>
<form method="post" action="/_spawngate/login">
<input type="hidden" name="token" value="{}">{next_field}
<button type="submit">Sign in</button>
</form>"#,
                escape(token)
            ),
        ),
    );
    guard.set_on(app, resp)
}

/// One page for unknown, used and expired links alike.
fn invalid_link() -> Resp {
    html(
        StatusCode::BAD_REQUEST,
        page(
            "This login link cannot be used",
            "",
            "<p>The link is invalid, was already used, or has expired.</p><p>Ask your administrator for a new one.</p>",
        ),
    )
}

fn store_unavailable(e: &dyn std::fmt::Display) -> Resp {
    super::errors::store_unavailable(true, e)
}

/// Where a form post comes from, as far as the browser says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FormOrigin {
    /// Our own page, or not a browser (no `Origin`, no Fetch Metadata).
    Same,
    /// Another site: refused.
    Foreign,
    /// `Origin: null` without Fetch Metadata: what an older browser sends from our
    /// `Referrer-Policy: no-referrer` pages, but also from sandboxed frames and
    /// `data:` pages anywhere. Only the form guard can tell them apart.
    Unknown,
}

/// Browsers that send Fetch Metadata say where the request comes from
/// (`Sec-Fetch-Site`); others send `Origin`, which must be the public origin.
/// (Logout and the self-service API also need a CSRF token; a login confirmation
/// needs its one-time token.)
pub(super) fn form_origin(app: &App, headers: &HeaderMap) -> FormOrigin {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = header("sec-fetch-site") {
        return if site == "same-origin" || site == "none" {
            FormOrigin::Same
        } else {
            FormOrigin::Foreign
        };
    }
    match header(ORIGIN.as_str()) {
        None => FormOrigin::Same,
        Some("null") => FormOrigin::Unknown,
        Some(origin) if origin == app.config.public_url.origin => FormOrigin::Same,
        Some(_) => FormOrigin::Foreign,
    }
}

/// A random value in each login form and in a `SameSite=Strict` cookie set with
/// the page: a post whose origin the browser does not reveal must echo the
/// cookie, which no other site can read or make the browser send.
struct FormGuard(String);

const FORM_GUARD_FIELD: &str = "form_guard";

impl FormGuard {
    fn new() -> FormGuard {
        FormGuard(crate::ids::random_token::<16>())
    }

    /// The guard, and `next` when there is one, as hidden form fields.
    fn hidden_fields(&self, next: Option<&str>) -> String {
        let next = next
            .map(|n| format!(r#"<input type="hidden" name="next" value="{}">"#, escape(n)))
            .unwrap_or_default();
        format!(
            r#"{next}<input type="hidden" name="{FORM_GUARD_FIELD}" value="{}">"#,
            self.0
        )
    }

    fn set_on(&self, app: &App, mut resp: Resp) -> Resp {
        let cookie = cookies::form_guard(
            &app.config.session.form_cookie_name,
            &self.0,
            app.config.session.secure,
        );
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            resp.headers_mut().append(SET_COOKIE, v);
        }
        resp
    }

    fn matches(app: &App, headers: &HeaderMap, form: &HashMap<String, String>) -> bool {
        let Some(sent) = form.get(FORM_GUARD_FIELD).filter(|v| !v.is_empty()) else {
            return false;
        };
        let sent = crate::ids::Secret::new(sent.clone());
        cookies::values(headers, &app.config.session.form_cookie_name).any(|c| sent.matches(c))
    }
}

async fn confirm(app: &App, headers: &HeaderMap, form: HashMap<String, String>) -> Resp {
    let Some(token) = form.get("token") else {
        return invalid_link();
    };
    let record = match app.store.consume_login_token(token).await {
        Ok(Ok(record)) => record,
        Ok(Err(rejection)) => {
            app.metrics.login(LoginMethod::Link, false);
            tracing::info!(target: "spawngate::login", ?rejection, "login link rejected");
            return invalid_link();
        }
        Err(e) => {
            app.metrics.login(LoginMethod::Link, false);
            return store_unavailable(&e);
        }
    };
    let user = match (&record.user_id, &record.signup_email) {
        (Some(id), _) => app.store.snapshot().by_id(id).cloned(),
        // Sign-up: the domain is checked again (the list may have changed since
        // the mail went out); an account created meanwhile is simply used.
        (None, Some(email)) if signup_allowed(app, email) => {
            match app.accounts.create_user_for_email("signup", email).await {
                Ok(user) => {
                    tracing::info!(target: "spawngate::login", user = %user.name, "self sign-up");
                    Some(user)
                }
                Err(e) => {
                    tracing::warn!(target: "spawngate::login", error = %e, "self sign-up failed");
                    None
                }
            }
        }
        _ => None,
    };
    let Some(user) = user.filter(|u| u.honours(record.generation)) else {
        app.metrics.login(LoginMethod::Link, false);
        return invalid_link();
    };
    app.metrics.login(LoginMethod::Link, true);
    start_session(app, headers, &user, form.get("next")).await
}

/// Password sign-in. Unknown names, users without a password and wrong passwords
/// get one answer, after the same argon2 work.
async fn password_login(app: &App, headers: &HeaderMap, form: &HashMap<String, String>) -> Resp {
    let name = form
        .get("username")
        .map(|n| n.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let password = form.get("password").cloned().unwrap_or_default();
    if name.len() > 254 {
        // No name or address is that long; keeps limiter keys small.
        return sign_in_page(
            app,
            None,
            StatusCode::UNAUTHORIZED,
            "Wrong name or password.",
        );
    }
    // Counted per identifier as typed (so the limit says nothing about which
    // name and address belong together) before the check, so parallel guesses
    // cannot overtake it; a success takes its attempt back.
    let attempt = format!("password:{name}");
    if !app.limit_password_failures.allow_everywhere(&attempt).await {
        app.metrics.rate_limited(RateLimit::Password);
        return too_many();
    }
    let directory = app.store.snapshot();
    let user = directory
        .by_name(&name)
        .or_else(|| directory.by_email(&name))
        .filter(|u| !u.disabled)
        .cloned();
    let stored = user.as_ref().and_then(|u| u.password_hash.clone());
    let ok = tokio::task::spawn_blocking(move || {
        crate::auth::password::verify(&password, stored.as_deref())
    })
    .await
    .unwrap_or(false);
    match user {
        Some(user) if ok => {
            app.limit_password_failures
                .forgive_everywhere(&attempt)
                .await;
            app.metrics.login(LoginMethod::Password, true);
            start_session(app, headers, &user, form.get("next")).await
        }
        _ => {
            app.metrics.login(LoginMethod::Password, false);
            tracing::info!(target: "spawngate::login", "password sign-in refused");
            sign_in_page(
                app,
                None,
                StatusCode::UNAUTHORIZED,
                "Wrong name or password.",
            )
        }
    }
}

/// Creates a session for `user` and redirects to `next` (if same-site) or the
/// user's own prefix.
pub(super) async fn start_session(
    app: &App,
    headers: &HeaderMap,
    user: &std::sync::Arc<crate::store::User>,
    next: Option<&String>,
) -> Resp {
    let old_session = match app.identities.identify(headers).await {
        Ok(identity) => identity.map(|i| i.session),
        Err(e) => return store_unavailable(&e),
    };
    let ttl = app.config.session.ttl.as_secs() as i64;
    let jwt = match app
        .identities
        .sign_in(user, ttl, None, old_session.as_ref())
        .await
    {
        Ok(jwt) => jwt,
        Err(e) => return store_unavailable(&e),
    };
    let target = next
        .and_then(|n| safe_next(n))
        .unwrap_or_else(|| app.environments.link(&Env::default_of(user.clone())));
    tracing::info!(target: "spawngate::login", user = %user.name, "login");
    if app.config.lifecycle.start_on_login {
        // Warm the container while the browser follows the redirect.
        app.lifecycle.prewarm(&Env::default_of(user.clone()));
    }
    let mut resp = redirect(StatusCode::SEE_OTHER, &target);
    set_session_cookie(app, &mut resp, &app.config.session.cookie_name, &jwt, ttl);
    resp
}

/// Adds the `Set-Cookie` of a session cookie (host-only, `HttpOnly`, `Lax`).
pub(super) fn set_session_cookie(app: &App, resp: &mut Resp, name: &str, jwt: &str, ttl: i64) {
    let cookie = cookies::session(name, jwt, app.config.session.secure, ttl);
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(SET_COOKIE, v);
    }
}

/// POST /_spawngate/logout: needs the session's CSRF token (the sign-out form has
/// it), so a cross-site form cannot sign anyone out; revokes the session
/// server-side, so a copied cookie stops working too.
pub async fn logout<B>(app: &App, req: Request<B>) -> Resp
where
    B: ReqBody,
{
    // An unverifiable origin is fine here: the session's CSRF token decides.
    if form_origin(app, req.headers()) == FormOrigin::Foreign {
        return super::errors::forbidden(true);
    }
    let identity = match app.identities.identify(req.headers()).await {
        Ok(identity) => identity,
        Err(e) => return store_unavailable(&e),
    };
    if let Some(identity) = identity {
        let body = match read_body(req.into_body()).await {
            Ok(b) => b,
            Err(e) => return super::api_error(e),
        };
        let csrf = form_urlencoded::parse(&body)
            .find(|(k, _)| k == "csrf")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        if !app.sessions.csrf_ok(&identity.session, &csrf) {
            return html(
                StatusCode::FORBIDDEN,
                page(
                    "Not signed out",
                    "",
                    "<p>The sign-out form was stale or forged. <a href=\"/_spawngate/\">Try again</a>.</p>",
                ),
            );
        }
        if let Err(e) = app.identities.sign_out(&identity.session).await {
            return store_unavailable(&e);
        }
    }
    let mut resp = redirect(StatusCode::SEE_OTHER, "/_spawngate/login");
    let cookie = cookies::cleared(&app.config.session.cookie_name, app.config.session.secure);
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(SET_COOKIE, v);
    }
    resp
}
