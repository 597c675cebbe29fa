//! What people see while an environment starts, and what operators see happen:
//!
//! - `GET /_spawngate/api/me/progress`: a start as it goes, as server-sent
//!   events in JupyterHub's shape (`{"progress", "message"}`, then
//!   `{"ready": true, "url"}` or `{"failed": true, "message"}`); one ready event
//!   if it is ready already. `?slug=` follows an environment shared with the
//!   caller; on an app host (subdomain mode) it is always that host's.
//! - `GET /_spawngate/api/me/environment`: the same as one JSON status.
//! - The start-up page forwardAuth answers a browser with while it starts (it
//!   follows the stream with `assets/progress.js` and continues to the address
//!   asked for), which is also the page of a failed start.
//! - `GET /_spawngate/api/events` (admin): the operator event stream.
//!
//! Every stream ends: at its outcome, after the start timeout (plus a margin),
//! and when shutdown begins, so a graceful shutdown never waits for a browser.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header::{self, HeaderMap, HeaderValue, RETRY_AFTER};
use hyper::{Response, StatusCode};
use serde_json::{Value, json};

use super::errors::HttpError;
use super::pages::{escape, page};
use super::{Resp, api_error, html, json};
use crate::app::App;
use crate::auth::safe_next;
use crate::error::Error;
use crate::ids::Slug;
use crate::lifecycle::{Following, Phase, Progress, SpawnError, Step};
use crate::sharing::Access;
use crate::store::Env;
use crate::tasks::Tasks;

pub const PROGRESS_PATH: &str = "/_spawngate/api/me/progress";
pub const ENVIRONMENT_PATH: &str = "/_spawngate/api/me/environment";

/// A quiet stream says so this often, so proxies and browsers keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// A progress stream outlives the start timeout by this much (a start may first
/// wait for a free start permit).
const STREAM_MARGIN: Duration = Duration::from_secs(30);

/// Seconds the page (without scripts) and API clients wait before asking again.
pub const RETRY_SECS: u32 = 2;

/// The environment a progress or status request is about, and the caller's
/// access to it. `host_slug`: the app host's slug in subdomain mode.
async fn target(
    app: &App,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    host_slug: Option<&Slug>,
) -> Result<(Env, Access), HttpError> {
    let directory = app.store.snapshot();
    if let Some(slug) = host_slug {
        let identity = app
            .identities
            .identify_app(headers, slug)
            .await?
            .ok_or(Error::Unauthorized)?;
        let target = directory
            .environment(slug)
            .ok_or(Error::Forbidden("you do not have access to this address"))?;
        let access = Access::of(&identity.user, &target)
            .ok_or(Error::Forbidden("you do not have access to this address"))?;
        return Ok((target, access));
    }
    let (caller, by_token) = match app.identities.identify(headers).await? {
        Some(identity) => (identity.user, false),
        None => (
            app.identities
                .identify_token(headers)
                .await?
                .ok_or(Error::Unauthorized)?,
            true,
        ),
    };
    let Some(slug) = query.get("slug") else {
        return Ok((Env::default_of(caller), Access::Owner));
    };
    // As forwardAuth: a personal token is for the owner's own environment.
    let target = Slug::parse(slug)
        .and_then(|s| directory.environment(&s))
        .and_then(|t| Access::of(&caller, &t).map(|a| (t, a)))
        .filter(|(_, a)| *a == Access::Owner || !by_token);
    target.ok_or_else(|| Error::Forbidden("you do not have access to this address").into())
}

/// `GET /_spawngate/api/me/progress`.
pub async fn progress(
    app: &App,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    host_slug: Option<&Slug>,
) -> Resp {
    let (target, access) = match target(app, headers, query, host_slug).await {
        Ok(t) => t,
        Err(e) => return api_error(e),
    };
    let state = ProgressStream {
        following: app.lifecycle.follow(&target),
        tasks: app.tasks.clone(),
        deadline: tokio::time::Instant::now() + app.config.spawn.ready_timeout + STREAM_MARGIN,
        url: app.environments.url(&target),
        owner: access == Access::Owner,
        retry_in: {
            let lifecycle = app.lifecycle.clone();
            let slug = target.slug().clone();
            Box::new(move || lifecycle.retry_in(&slug))
        },
        last: None,
        followed: false,
        first: true,
        done: false,
    };
    let stream = futures_util::stream::unfold(state, ProgressStream::next);
    sse(stream)
}

/// One progress stream's state (see [`progress`]).
struct ProgressStream {
    following: Following,
    tasks: Tasks,
    deadline: tokio::time::Instant,
    url: String,
    /// The app's output is for the owner only.
    owner: bool,
    retry_in: Box<dyn Fn() -> Duration + Send>,
    /// The last progress sent, so a wake-up that changed nothing sends nothing.
    last: Option<(Step, u8, String)>,
    /// Whether the stream saw the start under way (then ready says how long).
    followed: bool,
    first: bool,
    done: bool,
}

enum Wake {
    Changed,
    KeepAlive,
    End,
}

impl ProgressStream {
    async fn next(mut self) -> Option<(Bytes, ProgressStream)> {
        if self.done {
            return None;
        }
        loop {
            if let Some(event) = self.current() {
                let chunk = match std::mem::take(&mut self.first) {
                    // Browsers reconnect this soon after a stream ends early.
                    true => format!("retry: 2000\ndata: {event}\n\n"),
                    false => format!("data: {event}\n\n"),
                };
                return Some((Bytes::from(chunk), self));
            }
            let wake = {
                let Following {
                    phase, progress, ..
                } = &mut self.following;
                tokio::select! {
                    r = phase.changed() => if r.is_ok() { Wake::Changed } else { Wake::End },
                    r = progress.changed() => if r.is_ok() { Wake::Changed } else { Wake::End },
                    _ = tokio::time::sleep_until(self.deadline) => Wake::End,
                    _ = self.tasks.cancelled() => Wake::End,
                    _ = tokio::time::sleep(KEEP_ALIVE) => Wake::KeepAlive,
                }
            };
            match wake {
                Wake::Changed => {}
                Wake::KeepAlive => return Some((Bytes::from_static(b": keep-alive\n\n"), self)),
                Wake::End => return None,
            }
        }
    }

    /// The event for the current state, if there is one to send.
    fn current(&mut self) -> Option<Value> {
        let phase = self.following.phase.borrow_and_update().clone();
        let progress = self.following.progress.borrow_and_update().clone();
        match phase {
            Phase::Starting => {
                let key = (progress.step, progress.percent, progress.message.clone());
                if self.last.as_ref() == Some(&key) {
                    return None;
                }
                self.last = Some(key);
                self.followed = true;
                Some(progress_event(&progress))
            }
            Phase::Ready => {
                self.done = true;
                let mut event = json!({
                    "progress": 100,
                    "ready": true,
                    "message": "Ready",
                    "url": self.url,
                });
                if self.followed {
                    event["elapsed_ms"] = json!(progress.elapsed().as_millis() as u64);
                }
                Some(event)
            }
            Phase::Failed { error, .. } => {
                self.done = true;
                Some(failed_event(&error, (self.retry_in)(), self.owner))
            }
            _ => {
                self.done = true;
                Some(json!({
                    "progress": 0,
                    "stopped": true,
                    "message": "The environment is not starting",
                }))
            }
        }
    }
}

fn progress_event(p: &Progress) -> Value {
    json!({
        "progress": p.percent,
        "message": p.message,
        "step": p.step,
        "elapsed_ms": p.elapsed().as_millis() as u64,
        "step_at_ms": p.step_at.as_millis() as u64,
    })
}

/// A machine-readable name for why a start failed.
fn failure_code(error: &SpawnError) -> &'static str {
    match error {
        SpawnError::DockerDown(_) => "docker_unreachable",
        SpawnError::ImageMissing(_) => "image_missing",
        SpawnError::Failed(_) => "failed",
        SpawnError::Store(_) => "store_unavailable",
        SpawnError::Capacity(_) => "capacity",
        SpawnError::App(_) => "app_failed",
    }
}

fn failed_event(error: &SpawnError, retry_in: Duration, owner: bool) -> Value {
    let (exit_code, logs) = match error {
        SpawnError::App(a) => (a.exit_code, if owner { a.logs.clone() } else { Vec::new() }),
        _ => (None, Vec::new()),
    };
    json!({
        "progress": 100,
        "failed": true,
        "message": sentence(&error.to_string()),
        "reason": failure_code(error),
        "exit_code": exit_code,
        "logs": logs,
        "retry_in_secs": retry_in.as_secs_f64().ceil() as u64,
    })
}

/// "the app exited" → "The app exited."
fn sentence(s: &str) -> String {
    let mut out = s.trim_end_matches('.').to_owned();
    if let Some(first) = out.get(..1) {
        out.replace_range(..1, &first.to_ascii_uppercase());
    }
    out.push('.');
    out
}

/// `GET /_spawngate/api/me/environment`.
pub async fn environment(
    app: &App,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    host_slug: Option<&Slug>,
) -> Resp {
    let (target, access) = match target(app, headers, query, host_slug).await {
        Ok(t) => t,
        Err(e) => return api_error(e),
    };
    let view = app.lifecycle.view(&target);
    let mut body = json!({
        "slug": target.slug().as_str(),
        "environment": target.name(),
        "state": view.state,
        "since": view.since,
        "url": app.environments.url(&target),
    });
    if let Some(p) = &view.progress {
        body["progress"] = json!(p.percent);
        body["step"] = json!(p.step);
        body["message"] = json!(p.message);
        body["elapsed_ms"] = json!(p.elapsed().as_millis() as u64);
    }
    if let Some(error) = &view.failure {
        let retry = view.retry_in.unwrap_or_default();
        body["failure"] = failed_event(error, retry, access == Access::Owner);
    }
    json(StatusCode::OK, &body)
}

/// `GET /_spawngate/api/events` (the caller is an admin): operator events,
/// from `?since=<seq>` (or the `Last-Event-ID` a reconnecting browser sends)
/// while they are still in memory, then live.
pub fn events(app: &App, headers: &HeaderMap, query: &HashMap<String, String>) -> Resp {
    let since = query
        .get("since")
        .map(String::as_str)
        .or_else(|| headers.get("last-event-id").and_then(|v| v.to_str().ok()))
        .map(|s| s.parse::<u64>());
    let since = match since.transpose() {
        Ok(s) => s,
        Err(_) => {
            return super::errors::json_answer(
                &Error::Invalid("since must be an event's sequence number".into()).into(),
                super::errors::Audience::Operator,
            );
        }
    };
    let subscription = app.lifecycle.events().subscribe(since);
    // The caller was an admin when the stream opened; it ends once they are not
    // (a revoked token, a demoted, disabled or signed-out admin).
    let (identities, store, credentials) =
        (app.identities.clone(), app.store.clone(), headers.clone());
    let still_admin = move || -> futures_util::future::BoxFuture<'static, bool> {
        let (store, identities, credentials) =
            (store.clone(), identities.clone(), credentials.clone());
        Box::pin(async move {
            super::admin::admin_caller(&store, &identities, &credentials)
                .await
                .is_ok()
        })
    };
    let state = EventStream {
        missed: subscription.missed.then_some(since.unwrap_or(0)),
        replay: subscription.replay.into_iter(),
        live: subscription.live,
        tasks: app.tasks.clone(),
        still_admin: Box::new(still_admin),
        ends: tokio::time::Instant::now() + EVENTS_LIFETIME,
    };
    sse(futures_util::stream::unfold(state, EventStream::next))
}

struct EventStream {
    /// `Some(since)`: say first that events after it were dropped from memory.
    missed: Option<u64>,
    replay: std::vec::IntoIter<Arc<crate::events::OpEvent>>,
    live: tokio::sync::broadcast::Receiver<Arc<crate::events::OpEvent>>,
    tasks: Tasks,
    /// Asked before every chunk: the stream ends when the caller is no admin.
    still_admin: Box<dyn Fn() -> futures_util::future::BoxFuture<'static, bool> + Send>,
    /// Streams are bounded; a client reconnects with `Last-Event-ID`.
    ends: tokio::time::Instant,
}

/// How long one operator event stream lasts at most.
const EVENTS_LIFETIME: Duration = Duration::from_secs(3600);

impl EventStream {
    async fn next(mut self) -> Option<(Bytes, EventStream)> {
        if !(self.still_admin)().await {
            return None;
        }
        if let Some(since) = self.missed.take() {
            let chunk = format!("event: missed\ndata: {}\n\n", json!({ "since": since }));
            return Some((Bytes::from(chunk), self));
        }
        if let Some(event) = self.replay.next() {
            return Some((event_chunk(&event), self));
        }
        use tokio::sync::broadcast::error::RecvError;
        let received = tokio::select! {
            r = self.live.recv() => Some(r),
            _ = self.tasks.cancelled() => return None,
            _ = tokio::time::sleep_until(self.ends) => return None,
            _ = tokio::time::sleep(KEEP_ALIVE) => None,
        };
        // Asked again: the caller may have lost the right while this waited.
        if !(self.still_admin)().await {
            return None;
        }
        let chunk = match received {
            None => Bytes::from_static(b": keep-alive\n\n"),
            Some(Ok(event)) => event_chunk(&event),
            Some(Err(RecvError::Lagged(n))) => Bytes::from(format!(
                "event: lagged\ndata: {}\n\n",
                json!({ "missed": n })
            )),
            Some(Err(RecvError::Closed)) => return None,
        };
        Some((chunk, self))
    }
}

fn event_chunk(event: &crate::events::OpEvent) -> Bytes {
    let data = serde_json::to_string(event).unwrap_or_default();
    Bytes::from(format!("id: {}\ndata: {data}\n\n", event.seq))
}

/// A `text/event-stream` answer from a stream of ready-made chunks.
fn sse(stream: impl futures_util::Stream<Item = Bytes> + Send + 'static) -> Resp {
    use futures_util::StreamExt;
    let body = StreamBody::new(stream.map(|chunk| Ok::<_, Infallible>(Frame::data(chunk))));
    let mut resp = Response::new(body.boxed_unsync());
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Proxies that buffer answers (nginx) pass this one through as it comes.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// What the start-up page needs to know: which stream to follow, where to go
/// once ready, and whether the caller owns the environment (sees its output).
pub struct PageContext {
    stream: String,
    next: String,
    owner: bool,
}

impl PageContext {
    /// For a forwardAuth answer: the address asked for comes from Traefik's
    /// `X-Forwarded-Uri` (a validated same-site path), else the environment's own.
    pub fn new(app: &App, headers: &HeaderMap, target: &Env, owner: bool) -> PageContext {
        let stream = match app.config.apps {
            // The page is on the app host, which routes this path to spawngate.
            Some(_) => PROGRESS_PATH.to_owned(),
            None => format!("{PROGRESS_PATH}?slug={}", target.slug()),
        };
        let next = headers
            .get("x-forwarded-uri")
            .and_then(|v| v.to_str().ok())
            .and_then(safe_next)
            .unwrap_or_else(|| match app.config.apps {
                Some(_) => "/".to_owned(),
                None => format!("{}/", target.slug().base_path()),
            });
        PageContext {
            stream,
            next,
            owner,
        }
    }
}

const STEPS: &[(&str, &str)] = &[
    ("queued", "Requested"),
    ("creating", "Starting the container"),
    ("waiting", "Waiting for the app to answer"),
    ("ready", "Ready"),
];

/// The start-up page: `failure` is `None` while starting (the page follows the
/// stream), or the failed start with the seconds left of its back-off.
fn start_page(ctx: &PageContext, failure: Option<(&SpawnError, u64)>) -> String {
    let steps: String = STEPS
        .iter()
        .map(|(step, label)| {
            format!(
                r#"<li data-step="{step}"><span class="progress-label">{label}</span> <span class="progress-time muted"></span></li>"#
            )
        })
        .collect();
    let (state, title, retry_in, reason, logs) = match failure {
        None => (
            "starting",
            "Starting your environment…",
            0,
            String::new(),
            "",
        ),
        Some((error, retry)) => (
            "failed",
            "Your environment could not be started",
            retry,
            escape(&sentence(&error.to_string())),
            match error {
                SpawnError::App(a) if ctx.owner && !a.logs.is_empty() => "logs",
                _ => "",
            },
        ),
    };
    let logs = match (logs, failure) {
        ("logs", Some((SpawnError::App(a), _))) => escape(&a.logs.join("\n")),
        _ => String::new(),
    };
    let hidden = |show: bool| if show { "" } else { " hidden" };
    let starting = failure.is_none();
    let retry_note = match failure {
        Some((_, r)) if r > 0 => format!("spawngate tries again after a pause of {r} s."),
        _ => String::new(),
    };
    let body = format!(
        r#"<div id="progress" class="progress" data-state="{state}" data-stream="{stream}" data-next="{next}" data-retry-in="{retry_in}">
<div id="progress-live"{live_hidden}>
<progress id="progress-bar" max="100" value="5">starting</progress>
<ol class="progress-steps">{steps}</ol>
<p id="progress-message" role="status" aria-live="polite">Your environment is starting. This page takes you there as soon as it is ready.</p>
<p class="muted" id="progress-elapsed"></p>
</div>
<div id="progress-failure" role="alert"{failure_hidden}>
<p id="progress-reason">{reason}</p>
<div id="progress-output"{logs_hidden}><p>Its last output:</p><pre id="progress-logs">{logs}</pre></div>
<p><a id="progress-retry" class="button" href="{next}">Try again</a> <span id="progress-retry-note" class="muted">{retry_note}</span></p>
<p class="muted">The problem has been logged for the administrator, who can start it again at once.</p>
</div>
</div>"#,
        stream = escape(&ctx.stream),
        next = escape(&ctx.next),
        live_hidden = hidden(starting),
        failure_hidden = hidden(!starting),
        logs_hidden = hidden(!logs.is_empty()),
    );
    // Without scripts a starting page reloads itself (the reload asks
    // forwardAuth again); a failed one waits for the retry button.
    let noscript = match starting {
        true => {
            format!(r#"<noscript><meta http-equiv="refresh" content="{RETRY_SECS}"></noscript>"#)
        }
        false => String::new(),
    };
    let head = format!(r#"{noscript}<script src="/_spawngate/assets/progress.js" defer></script>"#);
    page(title, &head, &body)
}

/// Shown (503) while the environment is still starting after the hold.
pub fn waiting(browser: bool, ctx: Option<&PageContext>) -> Resp {
    let mut resp = match (browser, ctx) {
        (true, Some(ctx)) => html(StatusCode::SERVICE_UNAVAILABLE, start_page(ctx, None)),
        (true, None) => html(
            StatusCode::SERVICE_UNAVAILABLE,
            page(
                "Starting your environment…",
                &format!(r#"<meta http-equiv="refresh" content="{RETRY_SECS}">"#),
                "<p>Your environment is starting. This page reloads by itself and takes you there as soon as it is ready.</p>",
            ),
        ),
        (false, _) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "error": { "code": "starting", "message": "the environment is starting; retry shortly" } }),
        ),
    };
    resp.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(RETRY_SECS));
    resp
}

/// Shown (503) when the start failed: the app's own failure (with its exit
/// code and, for the owner, its last output) or spawngate's (Docker, image,
/// capacity). `retry_secs`: what is left of the back-off.
pub fn failed(browser: bool, ctx: &PageContext, error: &SpawnError, retry_secs: u64) -> Resp {
    let mut resp = if browser {
        html(
            StatusCode::SERVICE_UNAVAILABLE,
            start_page(ctx, Some((error, retry_secs))),
        )
    } else {
        match error {
            SpawnError::App(failure) => {
                let logs: &[String] = if ctx.owner { &failure.logs } else { &[] };
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({ "error": {
                        "code": "app_failed",
                        "message": failure.reason,
                        "exit_code": failure.exit_code,
                        "logs": logs,
                        "retry_after_secs": retry_secs,
                    } }),
                )
            }
            e => json(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({ "error": { "code": "spawn_failed", "message": e.to_string() } }),
            ),
        }
    };
    resp.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(retry_secs.max(1)));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::AppFailure;

    fn body(resp: Resp) -> String {
        let bytes = futures_util::FutureExt::now_or_never(http_body_util::BodyExt::collect(
            resp.into_body(),
        ))
        .unwrap()
        .unwrap()
        .to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    fn ctx(owner: bool) -> PageContext {
        PageContext {
            stream: format!("{PROGRESS_PATH}?slug=abc"),
            next: "/u-abc/x?a=1&b=<2>".into(),
            owner,
        }
    }

    #[test]
    fn the_waiting_page_names_its_stream_and_target_and_has_no_inline_script() {
        let page = body(waiting(true, Some(&ctx(true))));
        assert!(
            page.contains(r#"data-stream="/_spawngate/api/me/progress?slug=abc""#),
            "{page}"
        );
        assert!(
            page.contains(r#"data-next="/u-abc/x?a=1&amp;b=&lt;2&gt;""#),
            "{page}"
        );
        assert!(page.contains(r#"<noscript><meta http-equiv="refresh" content="2"></noscript>"#));
        assert!(page.contains(r#"src="/_spawngate/assets/progress.js""#));
        assert!(!page.contains("<script>") && !page.contains("style="));
    }

    #[test]
    fn the_failed_page_escapes_output_and_logs_are_for_the_owner_only() {
        let error = SpawnError::App(AppFailure {
            reason: "the app exited with code 3 before answering on port 8080".into(),
            exit_code: Some(3),
            logs: vec!["<script>alert(1)</script>".into()],
        });
        let page = body(failed(true, &ctx(true), &error, 5));
        assert!(page.contains("The app exited with code 3"), "{page}");
        assert!(page.contains("&lt;script&gt;alert") && !page.contains("<script>alert"));
        assert!(page.contains(r#"data-state="failed""#) && page.contains(r#"data-retry-in="5""#));
        assert!(!page.contains("http-equiv"), "no refresh loop");
        assert!(!body(failed(true, &ctx(false), &error, 5)).contains("alert(1)"));
        let json: Value =
            serde_json::from_str(&body(failed(false, &ctx(false), &error, 5))).unwrap();
        assert_eq!(json["error"]["exit_code"], 3);
        assert_eq!(json["error"]["retry_after_secs"], 5);
        assert_eq!(json["error"]["logs"], json!([]));
        let capacity = SpawnError::Capacity("3 of 3".into());
        let json: Value =
            serde_json::from_str(&body(failed(false, &ctx(true), &capacity, 2))).unwrap();
        assert_eq!(json["error"]["code"], "spawn_failed");
    }

    #[test]
    fn failed_events_carry_the_reason_and_the_owners_logs() {
        let error = SpawnError::App(AppFailure {
            reason: "the app exited with code 3".into(),
            exit_code: Some(3),
            logs: vec!["boom".into()],
        });
        let event = failed_event(&error, Duration::from_millis(4200), true);
        assert_eq!(event["failed"], true);
        assert_eq!(event["message"], "The app exited with code 3.");
        assert_eq!(
            (event["reason"].as_str(), event["retry_in_secs"].as_u64()),
            (Some("app_failed"), Some(5))
        );
        assert_eq!(event["logs"], json!(["boom"]));
        assert_eq!(
            failed_event(&error, Duration::ZERO, false)["logs"],
            json!([])
        );
    }
}
