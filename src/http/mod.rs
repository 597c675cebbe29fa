//! Request routing and the small response helpers every handler uses.

mod admin;
mod admin_page;
mod app_gone;
mod assets;
mod dashboard;
mod environments;
pub mod errors;
mod forms;
mod forward_auth;
mod handoff;
mod layout;
mod login;
mod me;
mod metrics;
mod oidc;
pub mod pages;
mod progress;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::app::App;
use crate::error::Error;
pub use errors::HttpError;

/// Every answer's body: boxed, so one type covers whole bodies and streams (the
/// progress and event streams). One allocation per answer with a body; none for
/// an empty one (a zero-sized body is boxed for free), such as forwardAuth's 200.
pub type RespBody = UnsyncBoxBody<Bytes, Infallible>;

pub type Resp = Response<RespBody>;

/// A whole body.
pub fn full(bytes: impl Into<Bytes>) -> RespBody {
    Full::new(bytes.into()).boxed_unsync()
}

/// No body.
pub fn empty() -> RespBody {
    http_body_util::Empty::new().boxed_unsync()
}

/// Where a request came from: the TCP listener (anyone who can reach it) or the
/// local control socket (the operator, by file permission).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    Network(std::net::SocketAddr),
    Control,
}

/// The client's address: the TCP peer, or, when the peer is a trusted proxy
/// (Traefik), the address that proxy appended to `X-Forwarded-For`. A header sent
/// by anyone else is ignored, so it cannot be used to dodge rate limits.
pub fn client_ip(app: &App, peer: Peer, headers: &HeaderMap) -> Option<std::net::IpAddr> {
    let Peer::Network(addr) = peer else {
        return None;
    };
    // `::ffff:127.0.0.1` (a dual-stack listener) is the IPv4 peer it names.
    let ip = addr.ip().to_canonical();
    if !app
        .config
        .trusted_proxies
        .iter()
        .any(|net| net.contains(&ip))
    {
        return Some(ip);
    }
    // The last entry is the one our proxy added (the client it saw).
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .rfind(|s| !s.is_empty())
        .and_then(|s| s.parse().ok());
    Some(forwarded.unwrap_or(ip))
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Request bodies the handlers accept: hyper's `Incoming` on the network, `Full`
/// when the CLI calls the handler in-process.
pub trait ReqBody: Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static {}
impl<T: Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static> ReqBody for T {}

/// Largest request body accepted (forms and JSON are tiny).
pub const MAX_BODY: usize = 64 * 1024;

/// Longest request URI (path and query) spawngate's own pages and APIs accept:
/// theirs are short; forwardAuth calls carry the client's URI in a header instead.
pub const MAX_URI: usize = 8 * 1024;

/// Header Traefik's HTTP provider sends when `server.provider_token` is set.
pub const PROVIDER_TOKEN_HEADER: &str = "x-spawngate-provider-token";

/// Routes one request. Never fails: every error becomes an HTTP answer.
pub async fn handle<B>(app: Arc<App>, req: Request<B>, peer: Peer) -> Result<Resp, Infallible>
where
    B: ReqBody,
{
    if peer == Peer::Control {
        let path = req.uri().path().to_owned();
        // The control socket serves the admin API only.
        return Ok(match path.strip_prefix("/_spawngate/api/") {
            Some(rest) => admin::handle(&app, req, rest, peer).await,
            None => api_error(Error::NotFound("route")),
        });
    }
    // Subdomain mode: an app host's requests that reach spawngate (the hand-off,
    // or a host no user router serves). Traefik's forwardAuth calls carry
    // spawngate's own host, never an app host: an app host's `/auth/…` is a
    // client probing for identity headers and gets the app-host answer.
    if let Some(apps) = &app.config.apps
        && let Some(slug) = host_of(&req).and_then(|h| apps.slug_of(h))
    {
        let path = req.uri().path().to_owned();
        let query = query_map(req.uri());
        if path == app_gone::PATH {
            return Ok(app_gone::handle(&app, req.headers(), Some(&slug)).await);
        }
        if let Some(name) = path.strip_prefix(assets::PREFIX) {
            return Ok(assets::serve(name).unwrap_or_else(errors::not_found));
        }
        // The start-up page on this host follows its environment's start here.
        let get = req.method() == Method::GET;
        if get && path == progress::PROGRESS_PATH {
            return Ok(progress::progress(&app, req.headers(), &query, Some(&slug)).await);
        }
        if get && path == progress::ENVIRONMENT_PATH {
            return Ok(progress::environment(&app, req.headers(), &query, Some(&slug)).await);
        }
        return Ok(handoff::on_app_host(&app, req.headers(), &slug, &path, &query).await);
    }
    let uri_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_len > MAX_URI {
        return Ok(api_error(HttpError::UriTooLong(MAX_URI)));
    }
    // forwardAuth first: it is nearly every request, and needs nothing copied.
    if let Some(segment) = req.uri().path().strip_prefix("/auth/") {
        return Ok(forward_auth::handle(&app, req.headers(), segment).await);
    }
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let resp = match (&method, path.as_str()) {
        (&Method::GET, handoff::PATH) => {
            handoff::start(&app, req.headers(), &query_map(req.uri())).await
        }
        (&Method::GET, app_gone::PATH) => app_gone::handle(&app, req.headers(), None).await,
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok"),
        (&Method::GET, "/metrics") => metrics::handle(&app, req.headers()),
        (&Method::GET, p) if p.starts_with(assets::PREFIX) => {
            assets::serve(&p[assets::PREFIX.len()..]).unwrap_or_else(errors::not_found)
        }
        (&Method::GET, "/readyz") => readyz(&app).await,
        (&Method::GET, "/traefik/config") => provider_config(&app, req.headers()),
        (&Method::GET, progress::PROGRESS_PATH) => {
            progress::progress(&app, req.headers(), &query_map(req.uri()), None).await
        }
        (&Method::GET, progress::ENVIRONMENT_PATH) => {
            progress::environment(&app, req.headers(), &query_map(req.uri()), None).await
        }
        (_, "/_spawngate/api/me") => me::handle(&app, req, "").await,
        (_, p) if p.starts_with("/_spawngate/api/me/") => {
            let rest = p["/_spawngate/api/me/".len()..].to_owned();
            me::handle(&app, req, &rest).await
        }
        (_, p) if p.starts_with("/_spawngate/api/") => {
            let rest = p["/_spawngate/api/".len()..].to_owned();
            admin::handle(&app, req, &rest, peer).await
        }
        (_, "/_spawngate/login") => login::login(&app, req, peer).await,
        (&Method::POST, "/_spawngate/logout") => login::logout(&app, req).await,
        (_, p) if p.starts_with("/_spawngate/oidc/") => {
            let rest = p["/_spawngate/oidc/".len()..].to_owned();
            oidc::handle(&app, req, &rest).await
        }
        (&Method::GET, "/_spawngate/" | "/_spawngate") => {
            dashboard::page(&app, req.headers(), &query_map(req.uri())).await
        }
        (&Method::POST, p) if p.starts_with("/_spawngate/me/") => {
            let action = p["/_spawngate/me/".len()..].to_owned();
            dashboard::post(&app, req, &action).await
        }
        (&Method::GET, admin_page::PATH) => {
            admin_page::page(&app, req.headers(), &query_map(req.uri())).await
        }
        (&Method::POST, p) if p.starts_with("/_spawngate/admin/") => {
            let action = p["/_spawngate/admin/".len()..].to_owned();
            admin_page::post(&app, req, &action).await
        }
        // Traefik's catch-all for `/u-…` paths no user router matched.
        (_, p) if p.starts_with("/u-") => {
            forward_auth::unknown_user_path(&app, req.headers(), p).await
        }
        // A browser gets the page, in the pages' look.
        _ if wants_html(req.headers()) => errors::html_answer(&Error::NotFound("page").into()),
        _ => errors::not_found(),
    };
    Ok(resp)
}

async fn readyz(app: &App) -> Resp {
    // sled refuses every write after its first I/O error, until restarted.
    let store_failed = |e: crate::store::StoreError| match e {
        crate::store::StoreError::Io(_) => format!(
            "cannot write: {e}; sign-ins and container starts fail until this is fixed (after freeing space, restart spawngate: the embedded store takes writes again only after a restart)"
        ),
        e => e.to_string(),
    };
    let store = match app.store.check() {
        Err(e) => Err(store_failed(e)),
        Ok(()) => match tokio::time::timeout(
            std::time::Duration::from_secs(2),
            app.store.check_writable(),
        )
        .await
        {
            Ok(r) => r.map_err(store_failed),
            Err(_) => Err("cannot write: a store write did not finish within 2 s".to_owned()),
        },
    };
    let docker = match tokio::time::timeout(
        std::time::Duration::from_secs(2),
        app.lifecycle.runtime().ping(),
    )
    .await
    {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("Docker did not answer within 2 s".to_owned()),
    };
    let status = if store.is_ok() && docker.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let show = |r: &Result<(), String>| match r {
        Ok(()) => "ok".to_owned(),
        Err(e) => e.clone(),
    };
    let mut body = serde_json::json!({ "store": show(&store), "docker": show(&docker) });
    if app.store.is_shared() {
        // Which replica does the once-only work (culling, pool, reconcile).
        body["role"] = if app.store.is_leader() {
            "leader"
        } else {
            "follower"
        }
        .into();
    }
    json(status, &body)
}

fn provider_config(app: &App, headers: &HeaderMap) -> Resp {
    if let Some(expected) = &app.config.provider_token {
        let presented = headers
            .get(PROVIDER_TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !expected.matches(presented) {
            return api_error(Error::Unauthorized);
        }
    }
    app.metrics.provider_polled();
    let mut resp = Response::new(full(app.provider.current()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The request's host (HTTP/1 `Host` header or HTTP/2 authority).
fn host_of<B>(req: &Request<B>) -> Option<&str> {
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().host())
}

pub fn query_map(uri: &hyper::Uri) -> std::collections::HashMap<String, String> {
    uri.query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

/// Reads a body up to [`MAX_BODY`].
pub async fn read_body<B>(body: B) -> Result<Bytes, HttpError>
where
    B: ReqBody,
{
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(HttpError::TooLarge(MAX_BODY)),
        Err(e) => Err(Error::Invalid(format!("cannot read request body: {e}")).into()),
    }
}

/// A JSON request body (an empty one reads as `{}`).
pub async fn parse_json<B, T>(req: Request<B>) -> Result<T, HttpError>
where
    B: ReqBody,
    T: serde::de::DeserializeOwned,
{
    let body = read_body(req.into_body()).await?;
    let body = if body.is_empty() {
        Bytes::from_static(b"{}")
    } else {
        body
    };
    serde_json::from_slice(&body)
        .map_err(|e| Error::Invalid(format!("invalid JSON body: {e}")).into())
}

pub fn text(status: StatusCode, body: &str) -> Resp {
    with_type(
        status,
        Bytes::from(body.to_owned()),
        "text/plain; charset=utf-8",
    )
}

pub fn html(status: StatusCode, body: String) -> Resp {
    let mut resp = with_type(status, Bytes::from(body), "text/html; charset=utf-8");
    let h = resp.headers_mut();
    // Pages carry tokens in forms and URLs: no referrer, no framing, no caching.
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "content-security-policy",
        // Scripts and styles only from spawngate's own assets; the page may
        // talk back to spawngate only (the progress stream, the JSON API).
        HeaderValue::from_static("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

pub fn json(status: StatusCode, value: &serde_json::Value) -> Resp {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = with_type(status, Bytes::from(body), "application/json");
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The JSON answer for an error, as users and their scripts see it.
pub fn api_error(e: impl Into<HttpError>) -> Resp {
    errors::json_answer(&e.into(), errors::Audience::User)
}

fn with_type(status: StatusCode, body: Bytes, content_type: &'static str) -> Resp {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// A redirect with a relative `Location` (`303 See Other` after POSTs, `302` else).
pub fn redirect(status: StatusCode, location: &str) -> Resp {
    let mut resp = Response::new(empty());
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Whether the client wants HTML (a browser) rather than an API answer.
pub fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

pub use crate::auth::bearer;

/// Header a signed-in page's scripts send with every change, carrying the
/// session's CSRF token (the cookie alone is ambient: any site can make the
/// browser send it).
pub const CSRF_HEADER: &str = "x-spawngate-csrf";

/// Whether `headers` carry `session`'s CSRF token in [`CSRF_HEADER`].
pub fn csrf_header_ok(app: &App, session: &crate::ids::SessionId, headers: &HeaderMap) -> bool {
    let presented = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    app.sessions.csrf_ok(session, presented)
}
