//! Answering before a request has been read whole, without losing the answer.
//!
//! spawngate answers some requests before it has read their body (`413` after
//! 64 KiB, `401` before an unauthenticated body is read) and must then close the
//! connection. Two things went wrong there, and through Traefik each showed as a
//! `502` about one time in three:
//! - the answer did not say `Connection: close`, so the proxy pooled the connection
//!   and sent its next request into one spawngate was closing ([`close_if_unread`]);
//! - the client's unread bytes arrived at a closed socket, and the kernel's reset
//!   destroyed the answer before the peer had read it. So a connection, once hyper
//!   lets go of it, first sends FIN and keeps reading and discarding what the
//!   client still sends, bounded in time and bytes ([`LingeringStream`]), as Apache
//!   and nginx do.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{CONNECTION, HeaderValue};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// How long a closing connection keeps draining the client's bytes.
const LINGER: Duration = Duration::from_secs(2);
/// How much it drains at most; a client sending more than this is cut off.
const LINGER_MAX_BYTES: usize = 16 << 20;
/// Connections lingering at once; past it a closing connection just closes (a
/// flood of connections must not pile up sockets and buffers).
const MAX_LINGERING: usize = 1024;

static LINGERING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_LINGERING);

/// A TCP stream that lingers when dropped (see the module docs).
pub struct LingeringStream {
    inner: Option<TcpStream>,
}

impl LingeringStream {
    pub fn new(stream: TcpStream) -> Self {
        LingeringStream {
            inner: Some(stream),
        }
    }

    fn stream(&mut self) -> io::Result<&mut TcpStream> {
        self.inner
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl AsyncRead for LingeringStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => Pin::new(s).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for LingeringStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(s) => Pin::new(s).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => Pin::new(s).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => Pin::new(s).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl Drop for LingeringStream {
    fn drop(&mut self) {
        let Some(stream) = self.inner.take() else {
            return;
        };
        // Outside a runtime (never in practice) the socket simply closes.
        if let (Ok(handle), Ok(permit)) = (
            tokio::runtime::Handle::try_current(),
            LINGERING.try_acquire(),
        ) {
            handle.spawn(async move {
                linger(stream).await;
                drop(permit);
            });
        }
    }
}

/// A request body that remembers whether it was read to its end.
pub struct TrackedBody<B> {
    inner: B,
    /// `None`: there was no body to read (most requests: nothing to track, so
    /// nothing is allocated for them).
    finished: Option<Arc<AtomicBool>>,
}

/// Whether a tracked request's body has been read whole (see [`track`]).
pub struct ReadWhole(Option<Arc<AtomicBool>>);

impl ReadWhole {
    fn is_read(&self) -> bool {
        self.0.as_ref().is_none_or(|f| f.load(Ordering::Relaxed))
    }
}

/// Wraps `req`'s body; the flag is set once the body has been read whole (at once
/// for a request without one).
pub fn track<B: Body>(req: hyper::Request<B>) -> (hyper::Request<TrackedBody<B>>, ReadWhole) {
    let mut flag = None;
    let req = req.map(|inner| {
        let finished = (!inner.is_end_stream()).then(|| Arc::new(AtomicBool::new(false)));
        flag = finished.clone();
        TrackedBody { inner, finished }
    });
    (req, ReadWhole(flag))
}

/// Marks `resp` `Connection: close` when the request's body was left unread: the
/// connection cannot carry another request, and the peer must not reuse it.
pub fn close_if_unread<T>(resp: &mut hyper::Response<T>, read: &ReadWhole) {
    if !read.is_read() {
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Some(finished) = &this.finished
            && (matches!(polled, Poll::Ready(None)) || this.inner.is_end_stream())
        {
            finished.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

async fn linger(mut stream: TcpStream) {
    // FIN first: the client learns the answer is complete.
    let _ = stream.shutdown().await;
    let mut buf = [0u8; 4096];
    let drain = async {
        let mut drained = 0;
        while drained <= LINGER_MAX_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => drained += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server answers without reading the request and drops the connection;
    /// the client, still sending, must read the answer rather than a reset.
    #[tokio::test]
    async fn an_early_answer_survives_a_client_still_sending() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut s = LingeringStream::new(stream);
            let mut head = [0u8; 1024];
            let _ = s.read(&mut head).await.unwrap();
            s.write_all(
                b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            )
            .await
            .unwrap();
            s.flush().await.unwrap();
            drop(s);
        });
        let mut client = TcpStream::connect(addr).await.unwrap();
        let body = vec![b'x'; 4 << 20];
        client
            .write_all(b"POST / HTTP/1.1\r\ncontent-length: 4194304\r\n\r\n")
            .await
            .unwrap();
        // Sending all of it must not fail with a reset, and the answer is there.
        client.write_all(&body).await.unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 413"));
        server.await.unwrap();
    }
}
