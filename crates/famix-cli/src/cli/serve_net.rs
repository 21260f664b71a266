//! `famix serve`'s connections, driven by hyper's HTTP/1 server directly (axum's
//! `serve` has no timeouts), so a slow or hostile client cannot hold the service:
//!
//! * **Header timeout**: a connection that has not sent complete request headers within
//!   `--header-timeout` of connecting, or of its previous response, is closed (hyper's
//!   `header_read_timeout`).
//! * **Idle timeout**: a kept-alive connection with no request being answered and no
//!   byte moving for `--idle-timeout` is closed.
//! * **Connection cap**: beyond `--max-connections` open connections a new one is
//!   answered `503` (with `Retry-After`) and closed at once.
//! * **Graceful stop**: on the shutdown signal the listener closes, idle connections
//!   are closed and requests in flight are finished.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

/// The connection limits.
#[derive(Debug, Clone, Copy)]
pub struct NetLimits {
    /// Time to send complete request headers.
    pub header_timeout: Duration,
    /// Time a kept-alive connection may sit idle.
    pub idle_timeout: Duration,
    /// Most open connections.
    pub max_connections: usize,
}

/// Milliseconds since the process's first call (a monotonic clock in an atomic).
fn now_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// A socket that records when bytes last moved.
struct ActivityIo {
    inner: TcpStream,
    last: Arc<AtomicU64>,
}

impl AsyncRead for ActivityIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.last.store(now_ms(), Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for ActivityIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.last.store(now_ms(), Ordering::Relaxed);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Resolves once the connection has had no request in flight and no traffic for `idle`.
async fn idle_watch(last: Arc<AtomicU64>, in_flight: Arc<AtomicUsize>, idle: Duration) {
    let tick = idle.min(Duration::from_secs(1)).max(Duration::from_millis(50));
    loop {
        tokio::time::sleep(tick).await;
        let quiet = Duration::from_millis(now_ms().saturating_sub(last.load(Ordering::Relaxed)));
        if in_flight.load(Ordering::Relaxed) == 0 && quiet >= idle {
            return;
        }
    }
}

/// Answers 503 to a connection over the cap and closes it (bounded in time).
async fn refuse(mut stream: TcpStream) {
    let body = r#"{"error":"too many connections; retry shortly","kind":"too_many_connections"}"#;
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

/// Serves one connection until it closes, times out or goes idle.
fn spawn_connection(
    stream: TcpStream,
    router: Router,
    limits: NetLimits,
    graceful: &hyper_util::server::graceful::GracefulShutdown,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let last = Arc::new(AtomicU64::new(now_ms()));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let counter = in_flight.clone();
    let service = tower::service_fn(move |req: axum::extract::Request<hyper::body::Incoming>| {
        counter.fetch_add(1, Ordering::Relaxed);
        let (router, counter) = (router.clone(), counter.clone());
        async move {
            let r = router.oneshot(req).await;
            counter.fetch_sub(1, Ordering::Relaxed);
            r
        }
    });
    let io = TokioIo::new(ActivityIo { inner: stream, last: last.clone() });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(io, hyper_util::service::TowerToHyperService::new(service));
    let conn = graceful.watch(conn);
    tokio::spawn(async move {
        tokio::select! {
            _ = conn => {}
            _ = idle_watch(last, in_flight, limits.idle_timeout) => {}
        }
        drop(permit);
    });
}

/// Accepts connections until `shutdown` resolves, then finishes the requests in flight.
pub async fn serve(listener: TcpListener, router: Router, limits: NetLimits, shutdown: impl Future<Output = ()>) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match permits.clone().try_acquire_owned() {
                    Ok(permit) => spawn_connection(stream, router.clone(), limits, &graceful, permit),
                    Err(_) => drop(tokio::spawn(refuse(stream))),
                },
                // Out of descriptors or a connection reset before accept: wait a moment.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            },
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
}
