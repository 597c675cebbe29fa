//! Client side of the control socket: how the CLI reaches a running `spawngate
//! serve`, whose store it cannot open (sled allows one process at a time).

use std::path::Path;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket '{path}': {message}")]
    Io { path: String, message: String },
}

/// Sends one request over the control socket. `Ok(None)` means no server is
/// listening there (so the caller may open the store itself).
pub async fn request(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<Option<(StatusCode, Bytes)>, ControlError> {
    let err = |e: &dyn std::fmt::Display| ControlError::Io {
        path: socket.display().to_string(),
        message: e.to_string(),
    };
    let stream = match UnixStream::connect(socket).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(err(&e)),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| err(&e))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let bytes = body
        .map(|b| Bytes::from(serde_json::to_vec(b).unwrap_or_default()))
        .unwrap_or_default();
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "spawngate")
        .header("content-type", "application/json")
        .body(Full::new(bytes))
        .map_err(|e| err(&e))?;
    let resp = sender.send_request(req).await.map_err(|e| err(&e))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| err(&e))?
        .to_bytes();
    Ok(Some((status, body)))
}
