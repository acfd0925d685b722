//! The accept loop: HTTP/1.1 only (plain or TLS), every connection registered in [`Conns`]
//! (cap, eviction, per-phase timeouts), and a shutdown that ends within a fixed grace.
//!
//! Our own loop over hyper's HTTP/1 connection, rather than a server crate: the cap must make
//! room by closing an idle connection (not stop accepting, which leaves a scraper waiting in
//! the backlog behind idle sockets), the header and keep-alive clocks must be separate (hyper
//! runs one clock for both), and plain HTTP must not sniff for HTTP/2 prior knowledge.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::conns::{Conn, Conns, Registration, Tracked};

/// How long in-flight responses get to finish after a stop is asked for. Connections that are
/// not answering a request close at once; after this, the rest are dropped. With the cloud
/// tasks (0.5 s, told at the same time), the runtime (0.2 s) and the samplers (1 s, in
/// parallel; `main.rs`) an orderly shutdown takes at most ~3.7 s; `shutdown.rs` ends the
/// process at 4.5 s whatever is still running, inside the README's 5 s.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Largest request head (and read buffer) per connection: Prometheus sends ~300 bytes, basic
/// auth adds a line. hyper's default (~400 KiB) times the cap would be ~100 MiB.
const MAX_HEAD_BYTES: usize = 32 * 1024;
/// Sent to a connection refused because every slot is busy answering (plain HTTP only).
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\
Connection: close\r\nContent-Length: 0\r\n\r\n";
/// Pause after an accept error such as EMFILE, which leaves the connection in the backlog:
/// retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Binds first, so a busy port fails start-up with a clear error.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Serves `app` until `stop` turns true, then drains (see [`SHUTDOWN_GRACE`]) and returns.
pub async fn serve(
    listener: std::net::TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    conns: Arc<Conns>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    let tls = tls.map(TlsAcceptor::from);
    let reaper = tokio::spawn(Arc::clone(&conns).reap());
    let mut last_warning: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(error) => {
                conns.stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    last_warning = Some(Instant::now());
                    tracing::warn!(%error, "Cannot accept a connection (logged at most once a minute).");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Some(reg) = conns.admit() else {
            if tls.is_none() {
                let _ = stream.try_write(REFUSED);
            }
            continue;
        };
        tokio::spawn(connection(
            stream,
            peer,
            reg,
            app.clone(),
            tls.clone(),
            stop.clone(),
        ));
    }
    drop(listener);
    drain(&conns).await;
    reaper.abort();
    Ok(())
}

/// Completes when `stop` is true. A dropped sender is not a stop: it never completes.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Closes what has nothing to finish, gives busy connections [`SHUTDOWN_GRACE`], then drops
/// the rest (their tasks end at their next poll; the runtime's shutdown ends the others).
async fn drain(conns: &Conns) {
    conns.close_for_shutdown(false);
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    while conns.registered() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    conns.close_for_shutdown(true);
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    reg: Registration,
    app: Router,
    tls: Option<TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let conn = Arc::clone(&reg.conn);
    let io = Tracked::new(stream, Arc::clone(&conn));
    match tls {
        None => http1(io, peer, &conn, app, stop).await,
        Some(acceptor) => {
            // The handshake runs in the head phase, so the header timeout bounds it.
            let accepted = tokio::select! {
                biased;
                _ = conn.closed() => return,
                _ = stopped(&mut stop) => return,
                r = acceptor.accept(io) => r,
            };
            match accepted {
                Ok(io) => http1(io, peer, &conn, app, stop).await,
                Err(error) => tracing::debug!(%peer, %error, "TLS handshake failed."),
            }
        }
    }
    drop(reg);
}

/// Serves HTTP/1.1 on one connection until it ends, is closed by the registry, or a stop asks
/// it to finish its current response.
async fn http1<I>(
    io: I,
    peer: SocketAddr,
    conn: &Arc<Conn>,
    app: Router,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let tracked = Arc::clone(conn);
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        tracked.request_started();
        req.extensions_mut().insert(ConnectInfo(peer));
        let done = ResponseDone(Arc::clone(&tracked));
        let response = app.clone().oneshot(req);
        async move {
            let response = response.await?;
            if response.status().is_success() {
                done.0.served_ok();
            }
            Ok::<_, Infallible>(response.map(|inner| TrackedBody { inner, _done: done }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // The registry runs the header clock (hyper's would also cut idle keep-alives).
        .header_read_timeout(None)
        .max_buf_size(MAX_HEAD_BYTES);
    let serving = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(serving);
    tokio::select! {
        biased;
        _ = conn.closed() => return,
        r = serving.as_mut() => {
            if let Err(error) = r {
                tracing::debug!(%peer, %error, "HTTP connection ended with an error.");
            }
            return;
        }
        _ = stopped(&mut stop) => {}
    }
    // Finish the response in flight (the drain closes idle ones at once), then close.
    serving.as_mut().graceful_shutdown();
    tokio::select! {
        _ = conn.closed() => {}
        _ = serving.as_mut() => {}
    }
}

/// Marks the connection idle when the response body is finished with (sent or dropped).
struct ResponseDone(Arc<Conn>);

impl Drop for ResponseDone {
    fn drop(&mut self) {
        self.0.response_done();
    }
}

struct TrackedBody {
    inner: Body,
    _done: ResponseDone,
}

impl hyper::body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
