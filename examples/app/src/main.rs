//! spawngate example app: the tiny per-user web app spawngate starts in a
//! container for each user.
//!
//! * `GET /` (and any other path): an HTML page showing the spawngate
//!   environment, the request and a persistent visit counter.
//! * `/whoami.json`: the same information as JSON.
//! * `GET /healthz`: `ok`.
//! * `GET /slow?ms=N`: answers after N ms; `GET /status/<code>`: answers that
//!   status (both for tests of what users see when things go wrong).
//! * `/ws`: WebSocket echo (`/ws?env=1` first sends the upgrade request's
//!   CGI-style environment, as `/whoami.json` shows it in `cgi_env`).
//!
//! Configuration comes from the environment: `PORT` (default 8080),
//! `DATA_DIR` (default `/data`), `SPAWNGATE_USER`, `SPAWNGATE_SLUG`,
//! `SPAWNGATE_BASE_PATH`. It runs as PID 1 in a `FROM scratch` image, so it
//! handles SIGTERM/SIGINT itself: stop accepting, give in-flight requests and
//! WebSockets up to [`GRACE`] to finish, exit.
//!
//! `EXAMPLE_APP_MODE` makes it stand for apps that misbehave, for tests (unset:
//! the normal app; see [`Mode`]).

mod counter;
mod page;
mod ws;

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};

use crate::counter::Counter;
use crate::page::RequestInfo;

pub type Body = Full<Bytes>;

/// How long in-flight requests and WebSockets get after SIGTERM/SIGINT.
const GRACE: Duration = Duration::from_millis(1500);
const DEFAULT_PORT: u16 = 8080;
const DEFAULT_DATA_DIR: &str = "/data";

/// `EXAMPLE_APP_MODE`: how the app behaves.
#[derive(Debug, PartialEq, Eq)]
enum Mode {
    /// Unset or `serve`: the normal app.
    Serve,
    /// `no-sigterm-handler`: serves, but installs no signal handler, like many
    /// scripts and R sessions. As PID 1 it is then immune to SIGTERM (only
    /// SIGKILL ends it); under an init it dies of SIGTERM at once.
    NoSigtermHandler,
    /// `exit:<code>`: prints a line saying so and exits with that code at once,
    /// like an app whose start-up fails.
    Exit(u8),
    /// `no-listen`: runs but never opens its port (no signal handler either).
    NoListen,
}

impl Mode {
    fn parse(raw: &str) -> Result<Mode, String> {
        match raw.trim() {
            "" | "serve" => Ok(Mode::Serve),
            "no-sigterm-handler" => Ok(Mode::NoSigtermHandler),
            "no-listen" => Ok(Mode::NoListen),
            other => match other.strip_prefix("exit:").map(str::parse::<u8>) {
                Some(Ok(code)) => Ok(Mode::Exit(code)),
                _ => Err(format!(
                    "invalid EXAMPLE_APP_MODE {other:?}: expected serve, no-sigterm-handler, no-listen or exit:<0-255>"
                )),
            },
        }
    }
}

#[derive(Debug)]
struct Config {
    mode: Mode,
    port: u16,
    data_dir: PathBuf,
    user: String,
    slug: String,
    base_path: String,
    /// `SPAWNGATE_SECRET`: when set, requests must carry it in `X-Spawngate-Secret`
    /// (spawngate's forwardAuth adds it), so connections that bypass Traefik are
    /// refused.
    secret: String,
}

struct AppState {
    user: String,
    slug: String,
    base_path: String,
    hostname: String,
    counter: Counter,
    secret: String,
}

fn env_string(name: &str) -> String {
    std::env::var_os(name)
        .map(|v| v.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `/u-alice/` → `/u-alice`, `u-alice` → `/u-alice`, `/` or unset → ``.
fn normalize_base_path(raw: &str) -> String {
    let trimmed = raw.trim().trim_end_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else if trimmed.starts_with('/') {
        trimmed.to_owned()
    } else {
        format!("/{trimmed}")
    }
}

impl Config {
    fn from_env() -> Result<Self, String> {
        let port = match std::env::var("PORT") {
            Ok(p) if p.trim().is_empty() => DEFAULT_PORT,
            Ok(p) => p
                .trim()
                .parse::<u16>()
                .map_err(|e| format!("invalid PORT {p:?}: {e}"))?,
            Err(std::env::VarError::NotPresent) => DEFAULT_PORT,
            Err(e) => return Err(format!("invalid PORT: {e}")),
        };
        let data_dir = match std::env::var_os("DATA_DIR") {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => PathBuf::from(DEFAULT_DATA_DIR),
        };
        Ok(Config {
            mode: Mode::parse(&env_string("EXAMPLE_APP_MODE"))?,
            port,
            data_dir,
            user: env_string("SPAWNGATE_USER"),
            slug: env_string("SPAWNGATE_SLUG"),
            base_path: normalize_base_path(&env_string("SPAWNGATE_BASE_PATH")),
            secret: env_string("SPAWNGATE_SECRET"),
        })
    }
}

fn hostname() -> String {
    for path in ["/proc/sys/kernel/hostname", "/etc/hostname"] {
        if let Ok(name) = std::fs::read_to_string(path) {
            let name = name.trim();
            if !name.is_empty() {
                return name.to_owned();
            }
        }
    }
    let env = env_string("HOSTNAME");
    if env.is_empty() {
        "unknown".to_owned()
    } else {
        env
    }
}

pub fn text_response(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut resp = Response::new(Body::new(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn typed_response(content_type: &'static str, body: Vec<u8>) -> Response<Body> {
    let mut resp = Response::new(Body::new(Bytes::from(body)));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut resp = text_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

/// Resolves once shutdown has been requested (or the server is going away).
pub async fn shutdown_requested(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<AppState>,
    shutdown: watch::Receiver<bool>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let resp = if path != "/healthz" && !carries_secret(&req, &state.secret) {
        text_response(
            StatusCode::FORBIDDEN,
            "direct connections are refused: come through spawngate\n",
        )
    } else {
        route(req, &state, shutdown).await
    };
    // Access log on stderr; successful health checks are too frequent to log.
    if !(path == "/healthz" && resp.status() == StatusCode::OK) {
        eprintln!("{method} {path} {}", resp.status().as_u16());
    }
    Ok(resp)
}

async fn route(
    req: Request<Incoming>,
    state: &AppState,
    shutdown: watch::Receiver<bool>,
) -> Response<Body> {
    let is_get = req.method() == Method::GET;
    let is_get_or_head = is_get || req.method() == Method::HEAD;
    match req.uri().path() {
        "/healthz" if is_get_or_head => text_response(StatusCode::OK, "ok"),
        "/healthz" => method_not_allowed("GET, HEAD"),
        "/ws" => ws::handle(req, shutdown),
        // For tests of requests in flight: answers after `ms` milliseconds (≤ 60 s).
        "/slow" if is_get => {
            let ms: u64 = req
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("ms=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000)
                .min(60_000);
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            text_response(StatusCode::OK, "done\n")
        }
        // For tests of an app's own error answers: `/status/502` answers 502.
        p if is_get && p.starts_with("/status/") => {
            match p["/status/".len()..]
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
            {
                Some(code) if code.as_u16() >= 400 => {
                    text_response(code, "the app answered this status\n")
                }
                _ => text_response(StatusCode::BAD_REQUEST, "use /status/<400-599>\n"),
            }
        }
        "/whoami.json" => {
            let visits = state.counter.visit(true).await;
            let info = request_info(&req, state, visits);
            match serde_json::to_vec_pretty(&page::whoami_json(&info)) {
                Ok(mut body) => {
                    body.push(b'\n');
                    typed_response("application/json", body)
                }
                Err(_) => {
                    text_response(StatusCode::INTERNAL_SERVER_ERROR, "could not encode JSON\n")
                }
            }
        }
        _ if is_get_or_head => {
            // Only real page views of `/` count; HEAD probes and other paths
            // (favicon.ico, ...) just show the current value.
            let count_it = is_get && req.uri().path() == "/";
            let visits = state.counter.visit(count_it).await;
            let info = request_info(&req, state, visits);
            typed_response(
                "text/html; charset=utf-8",
                page::html_page(&info).into_bytes(),
            )
        }
        _ => method_not_allowed("GET, HEAD"),
    }
}

/// Whether the request carries the expected secret (always true when none is set).
/// Compared in constant time.
fn carries_secret(req: &Request<Incoming>, secret: &str) -> bool {
    if secret.is_empty() {
        return true;
    }
    let presented = req
        .headers()
        .get("x-spawngate-secret")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    presented.len() == secret.len()
        && presented
            .iter()
            .zip(secret.as_bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn request_info<'a>(
    req: &'a Request<Incoming>,
    state: &'a AppState,
    visits: counter::Visits,
) -> RequestInfo<'a> {
    RequestInfo {
        user: &state.user,
        slug: &state.slug,
        base_path: &state.base_path,
        method: req.method().as_str(),
        path: req.uri().path(),
        query: req.uri().query().unwrap_or(""),
        headers: page::header_map(req.headers()),
        hostname: &state.hostname,
        visits,
    }
}

/// Serves one TCP connection until it ends or shutdown is requested, in which
/// case the connection is closed once its in-flight request is answered.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    state: Arc<AppState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let svc_shutdown = shutdown.clone();
    let service = service_fn(move |req| handle(req, state.clone(), svc_shutdown.clone()));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        res = conn.as_mut() => res,
        () = shutdown_requested(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            conn.as_mut().await
        }
    };
    if let Err(err) = result
        && !err.is_incomplete_message()
        && !err.is_timeout()
    {
        eprintln!("connection error: {err}");
    }
}

/// Accepts connections until a stop request arrives on `stop` (or all its
/// senders are gone), then shuts down gracefully: open connections finish their
/// in-flight request, WebSockets get a close frame, and whatever is still open
/// after [`GRACE`] (or when a second stop request arrives) is dropped.
/// Returns false if connections were still open at that point.
async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    mut stop: mpsc::UnboundedReceiver<&'static str>,
) -> bool {
    // The watch channel both broadcasts "shut down" and tracks liveness: every
    // connection and WebSocket task holds a receiver, and `closed()` resolves
    // once all of them are gone.
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    loop {
        tokio::select! {
            reason = stop.recv() => {
                eprintln!("{}, shutting down", reason.unwrap_or("stop requested"));
                break;
            }
            res = listener.accept() => match res {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(serve_connection(stream, state.clone(), shutdown_rx.clone()));
                }
                Err(err) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    eprintln!("accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    drop(shutdown_rx);
    let _ = shutdown_tx.send(true);
    let deadline = tokio::time::Instant::now() + GRACE;
    let clean = tokio::select! {
        done = tokio::time::timeout_at(deadline, shutdown_tx.closed()) => done.is_ok(),
        reason = stop.recv() => match reason {
            Some(reason) => {
                eprintln!("{reason} again, exiting now");
                false
            }
            None => tokio::time::timeout_at(deadline, shutdown_tx.closed()).await.is_ok(),
        },
    };
    if !clean {
        eprintln!(
            "dropping {} connection(s) still open",
            shutdown_tx.receiver_count()
        );
    }
    clean
}

/// Forwards SIGTERM and SIGINT, as they arrive, to `serve`. The handlers are
/// installed before this returns, so no early signal is lost; as PID 1 without
/// handlers the process would ignore both.
fn forward_signals() -> Result<mpsc::UnboundedReceiver<&'static str>, String> {
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT handler: {e}"))?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                Some(()) = term.recv() => "SIGTERM received",
                Some(()) = int.recv() => "SIGINT received",
                else => return,
            };
            if tx.send(name).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

async fn run(config: Config) -> Result<(), String> {
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, config.port));
    // Without handlers, `stop` never fires: the sender lives as long as `run`.
    let (_no_signals, unhandled) = mpsc::unbounded_channel();
    let stop = match config.mode {
        Mode::Serve => forward_signals()?,
        // `Exit` never gets here: `main` exits before starting the runtime.
        Mode::NoSigtermHandler | Mode::NoListen | Mode::Exit(_) => unhandled,
    };
    if config.mode == Mode::NoListen {
        eprintln!(
            "spawngate-example-app: EXAMPLE_APP_MODE=no-listen, never opening port {}",
            config.port
        );
        std::future::pending::<()>().await;
    }
    // Tests use this to stand for a slow-booting app (Jupyter, RStudio…).
    if let Some(ms) = std::env::var("STARTUP_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        eprintln!("spawngate-example-app: delaying start-up by {ms} ms");
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let state = Arc::new(AppState {
        counter: Counter::new(&config.data_dir),
        hostname: hostname(),
        user: config.user,
        slug: config.slug,
        base_path: config.base_path,
        secret: config.secret,
    });
    eprintln!(
        "spawngate-example-app listening on {addr} (user {:?}, base path {:?}, counter {})",
        state.user,
        state.base_path,
        state.counter.path().display()
    );
    serve(listener, state, stop).await;
    Ok(())
}

/// `--connect HOST:PORT`: exits 0 if a TCP connection opens within 2 s, else 1.
/// The image has no shell or curl; isolation tests use this as "the user's code
/// trying to reach something".
fn connect_probe(target: &str) -> ExitCode {
    use std::net::ToSocketAddrs;
    let addrs: Vec<SocketAddr> = match target.to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => {
            eprintln!("connect {target}: {e}");
            return ExitCode::FAILURE;
        }
    };
    for addr in addrs {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(_) => {
                println!("connected to {addr}");
                return ExitCode::SUCCESS;
            }
            Err(e) => eprintln!("connect {addr}: {e}"),
        }
    }
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, target] = args.as_slice()
        && flag == "--connect"
    {
        return connect_probe(target);
    }
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("spawngate-example-app: {e}");
            return ExitCode::from(2);
        }
    };
    if let Mode::Exit(code) = config.mode {
        eprintln!("spawngate-example-app: EXAMPLE_APP_MODE=exit:{code}, exiting with code {code}");
        return ExitCode::from(code);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("spawngate-example-app: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(config));
    // Don't wait on stragglers (e.g. a counter write stuck on a slow disk).
    runtime.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spawngate-example-app: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn parses_modes() {
        assert_eq!(Mode::parse(""), Ok(Mode::Serve));
        assert_eq!(Mode::parse("serve"), Ok(Mode::Serve));
        assert_eq!(
            Mode::parse("no-sigterm-handler"),
            Ok(Mode::NoSigtermHandler)
        );
        assert_eq!(Mode::parse("no-listen"), Ok(Mode::NoListen));
        assert_eq!(Mode::parse("exit:3"), Ok(Mode::Exit(3)));
        assert!(Mode::parse("exit:256").is_err());
        assert!(Mode::parse("crash").is_err());
    }

    #[test]
    fn base_path_is_normalized() {
        assert_eq!(normalize_base_path(""), "");
        assert_eq!(normalize_base_path("/"), "");
        assert_eq!(normalize_base_path("/u-alice/"), "/u-alice");
        assert_eq!(normalize_base_path("u-alice"), "/u-alice");
        assert_eq!(normalize_base_path("/u-alice"), "/u-alice");
    }

    struct TestServer {
        addr: SocketAddr,
        stop: Option<mpsc::UnboundedSender<&'static str>>,
        done: tokio::task::JoinHandle<bool>,
        dir: PathBuf,
    }

    async fn start(name: &str) -> Option<TestServer> {
        let dir = std::env::temp_dir().join(format!(
            "spawngate-example-app-srv-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).ok()?;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.ok()?;
        let addr = listener.local_addr().ok()?;
        let state = Arc::new(AppState {
            user: "alice".to_owned(),
            slug: "alice".to_owned(),
            base_path: "/u-alice".to_owned(),
            hostname: "test-host".to_owned(),
            counter: Counter::new(&dir),
            secret: String::new(),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let done = tokio::spawn(serve(listener, state, rx));
        Some(TestServer {
            addr,
            stop: Some(tx),
            done,
            dir,
        })
    }

    /// Minimal HTTP/1.1 client for tests: one request, `Connection: close`.
    async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: example\r\nX-Multi: one\r\nX-Multi: two\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split(' ').nth(1)?.parse().ok()?;
        Some((status, body.to_owned()))
    }

    #[tokio::test]
    async fn serves_pages_json_health_and_websocket() {
        let Some(mut server) = start("all").await else {
            unreachable!("test server did not start");
        };
        let addr = server.addr;

        assert_eq!(get(addr, "/healthz").await, Some((200, "ok".to_owned())));

        let page = get(addr, "/").await;
        assert!(page.as_ref().is_some_and(|(s, body)| *s == 200
            && body.contains("alice")
            && body.contains("href=\"/u-alice/whoami.json\"")));

        let whoami = |n: u64| async move {
            let (status, body) = get(addr, "/whoami.json?x=1").await?;
            let doc: serde_json::Value = serde_json::from_str(&body).ok()?;
            Some(
                status == 200
                    && doc["visits"] == serde_json::json!(n)
                    && doc["query"] == "x=1"
                    && doc["path"] == "/whoami.json"
                    && doc["headers"]["x-multi"] == "one, two"
                    && doc["user"] == "alice",
            )
        };
        assert_eq!(whoami(2).await, Some(true));
        assert_eq!(whoami(3).await, Some(true));
        // Healthz and other paths don't count.
        assert_eq!(get(addr, "/other").await.map(|(s, _)| s), Some(200));
        assert_eq!(whoami(4).await, Some(true));

        let url = format!("ws://{addr}/ws");
        let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
            unreachable!("connect failed");
        };
        let Ok((mut ws, _)) = tokio_tungstenite::client_async(url.as_str(), stream).await else {
            unreachable!("websocket handshake failed");
        };
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        assert!(ws.send(Message::text("hello")).await.is_ok());
        assert!(matches!(ws.next().await, Some(Ok(Message::Text(t))) if t.as_str() == "hello"));
        assert!(ws.send(Message::binary(vec![1u8, 2, 3])).await.is_ok());
        assert!(matches!(ws.next().await, Some(Ok(Message::Binary(b))) if b.as_ref() == [1, 2, 3]));

        // Shutting down closes the open WebSocket with 1001 and finishes fast.
        if let Some(stop) = server.stop.take() {
            let _ = stop.send("test stop");
        }
        let closed = tokio::time::timeout(Duration::from_secs(1), ws.next()).await;
        assert!(
            matches!(closed, Ok(Some(Ok(Message::Close(Some(f))))) if f.code == tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Away)
        );
        drop(ws);
        let finished = tokio::time::timeout(Duration::from_secs(3), &mut server.done).await;
        assert!(matches!(finished, Ok(Ok(true))));
        let _ = std::fs::remove_dir_all(&server.dir);
    }

    #[tokio::test]
    async fn second_stop_request_skips_the_grace_period() {
        let Some(mut server) = start("force").await else {
            unreachable!("test server did not start");
        };
        let addr = server.addr;
        let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
            unreachable!("connect failed");
        };
        // A WebSocket client that never reads, so it never acknowledges the
        // server's close frame and keeps the connection open.
        let Ok((_ws, _)) =
            tokio_tungstenite::client_async(format!("ws://{addr}/ws").as_str(), stream).await
        else {
            unreachable!("websocket handshake failed");
        };
        let Some(stop) = server.stop.take() else {
            unreachable!("no stop sender");
        };
        let _ = stop.send("first");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!server.done.is_finished(), "grace period should still run");
        let _ = stop.send("second");
        let finished = tokio::time::timeout(Duration::from_millis(500), &mut server.done).await;
        assert!(matches!(finished, Ok(Ok(false))));
        let _ = std::fs::remove_dir_all(&server.dir);
    }
}
