//! `/ws`: a WebSocket echo endpoint. The HTTP upgrade is done with hyper's
//! upgrade mechanism; tokio-tungstenite only does the framing afterwards.

use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::upgrade::Upgraded;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, error::Error as WsError};

use crate::{Body, page, shutdown_requested, text_response};

/// Largest message (and frame) the echo server accepts.
const MAX_MESSAGE: usize = 1 << 20;

/// True if the comma-separated header `name` contains `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Answers a request to `/ws`: either switches protocols and spawns the echo
/// task, or explains why it can't.
pub fn handle(mut req: Request<Incoming>, shutdown: watch::Receiver<bool>) -> Response<Body> {
    if req.method() != Method::GET {
        let mut resp = text_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET to open a WebSocket\n",
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return resp;
    }
    let headers = req.headers();
    if !has_token(headers, header::CONNECTION, "upgrade")
        || !has_token(headers, header::UPGRADE, "websocket")
    {
        let mut resp = text_response(
            StatusCode::UPGRADE_REQUIRED,
            "this is a WebSocket echo endpoint; connect with a WebSocket client\n",
        );
        resp.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        return resp;
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        let mut resp = text_response(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported WebSocket version (need 13)\n",
        );
        resp.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return resp;
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return text_response(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n");
    };
    let accept = match HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        Ok(v) => v,
        Err(_) => {
            return text_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "could not compute Sec-WebSocket-Accept\n",
            );
        }
    };

    // `/ws?env=1`: the first message is the upgrade request's CGI-style environment.
    let env_message = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "env=1"))
        .then(|| serde_json::to_string(&page::cgi_env(&page::header_map(req.headers()))))
        .and_then(Result::ok);
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let config = WebSocketConfig::default()
                    .max_message_size(Some(MAX_MESSAGE))
                    .max_frame_size(Some(MAX_MESSAGE));
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                let mut ws = ws;
                if let Some(env) = env_message
                    && let Err(err) = ws.send(Message::Text(env.into())).await
                {
                    log_ws_error(&err);
                    return;
                }
                echo(ws, shutdown).await;
            }
            Err(err) => eprintln!("websocket upgrade failed: {err}"),
        }
    });

    let mut resp = Response::new(Body::default());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    resp
}

/// Echoes text and binary messages until the peer closes or the server shuts
/// down (then the peer gets a 1001 "going away" close frame).
async fn echo(mut ws: WebSocketStream<TokioIo<Upgraded>>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(msg @ (Message::Text(_) | Message::Binary(_)))) => {
                    if let Err(err) = ws.send(msg).await {
                        log_ws_error(&err);
                        return;
                    }
                }
                // Pings are answered and close frames acknowledged by
                // tungstenite itself; the stream then ends with `None`.
                Some(Ok(_)) => {}
                Some(Err(err)) => {
                    log_ws_error(&err);
                    return;
                }
                None => return,
            },
            () = shutdown_requested(&mut shutdown) => {
                let frame = CloseFrame {
                    code: CloseCode::Away,
                    reason: "server shutting down".into(),
                };
                if ws.close(Some(frame)).await.is_ok() {
                    // Give the peer a moment to acknowledge; the process-wide
                    // grace period bounds this anyway.
                    while let Some(Ok(_)) = ws.next().await {}
                }
                return;
            }
        }
    }
}

fn log_ws_error(err: &WsError) {
    match err {
        WsError::ConnectionClosed | WsError::AlreadyClosed => {}
        WsError::Protocol(_) | WsError::Io(_) => eprintln!("websocket closed: {err}"),
        other => eprintln!("websocket error: {other}"),
    }
}
