//! `famix serve`'s connections, driven by hyper's HTTP/1 server directly (axum's
//! `serve` has no timeouts), so slow, idle or hostile clients cannot hold the service:
//!
//! * **Header timeout**: a connection that has not sent complete request headers within
//!   `--header-timeout` of connecting, or of its previous response, is closed (hyper's
//!   `header_read_timeout`).
//! * **Idle timeout**: a kept-alive connection with no request being answered and no
//!   byte moving for `--idle-timeout` is closed.
//! * **Connection budget**: at most `--max-connections` connections are served, and at
//!   most `--max-connections-per-client` from one client address, so one address cannot
//!   take them all. The budget is in the thousands because an idle connection costs a
//!   socket and a few kilobytes; at start-up the process raises its file-descriptor
//!   limit to the hard limit and the budget is cut to what that limit allows.
//! * **Overflow**: a connection beyond either cap is not served by the router. It gets
//!   one short read of its request line (at most [`OVERFLOW_READ`]): a health or
//!   readiness probe (`GET /healthz`, `/readyz`, `/v1/health`) is answered from cheap
//!   state, so a load balancer keeps seeing the instance alive during a flood;
//!   anything else is answered `503` with `Retry-After` and closed. At most
//!   [`OVERFLOW_SLOTS`] connections are in that state; beyond them a connection is
//!   closed at once.
//! * **Graceful stop**: on the shutdown signal the listener closes, idle connections
//!   are closed and requests in flight are finished.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

/// The connection limits.
#[derive(Debug, Clone, Copy)]
pub struct NetLimits {
    /// Time to send complete request headers.
    pub header_timeout: Duration,
    /// Time a kept-alive connection may sit idle.
    pub idle_timeout: Duration,
    /// Most connections served at once.
    pub max_connections: usize,
    /// Most connections served at once from one client address.
    pub max_per_client: usize,
}

/// How long an overflow connection has to send its request line.
pub const OVERFLOW_READ: Duration = Duration::from_secs(1);
/// Most overflow connections waiting for their request line at once.
pub const OVERFLOW_SLOTS: usize = 1024;
/// Descriptors kept for everything but connections (model files, libraries, threads).
const RESERVED_FDS: u64 = 256;

/// Raises the soft limit on open files to the hard limit; returns the limit in force.
pub fn raise_fd_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024)
}

/// The most connections that `fds` descriptors can serve next to the overflow slots
/// and the process's own files: `wanted`, or less.
pub fn connection_budget(wanted: usize, fds: u64) -> usize {
    let spare = fds.saturating_sub(RESERVED_FDS + OVERFLOW_SLOTS as u64);
    wanted.min(spare as usize).max(1)
}

/// A cheap answer (status, JSON body) to a probe path such as `/healthz`, or `None`
/// for paths that are not probes. The router and the overflow path share it.
pub type Probe = Arc<dyn Fn(&str) -> Option<(u16, String)> + Send + Sync>;

/// Connection counts, for the service's metrics.
#[derive(Debug, Default)]
pub struct NetStats {
    /// Connections being served now.
    pub open: AtomicUsize,
    /// Connections that went to the overflow path since start.
    pub overflowed: AtomicU64,
    /// Connections closed at once because the overflow slots were full.
    pub dropped: AtomicU64,
}

/// Connections being served per client address.
#[derive(Default)]
struct PerClient {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One served connection's place in its address's count (given back on drop).
struct ClientSlot {
    table: Arc<PerClient>,
    ip: IpAddr,
}

impl PerClient {
    /// A slot for `ip` if it holds fewer than `max` connections.
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<ClientSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientSlot { table: self.clone(), ip })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut counts = self.table.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// What a served connection holds until it closes.
struct Admission {
    _client: ClientSlot,
    _permit: tokio::sync::OwnedSemaphorePermit,
    stats: Arc<NetStats>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
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

/// The path of a `GET`/`HEAD` request line (`GET /readyz?x HTTP/1.1` → `/readyz`).
fn probe_path(head: &[u8]) -> Option<&str> {
    let line = head.split(|&b| b == b'\r' || b == b'\n').next()?;
    let mut parts = std::str::from_utf8(line).ok()?.split(' ');
    let (method, target) = (parts.next()?, parts.next()?);
    (matches!(method, "GET" | "HEAD") && parts.next().is_some_and(|v| v.starts_with("HTTP/")))
        .then(|| target.split('?').next().unwrap_or(target))
}

/// A connection beyond the caps: a probe gets its answer, anything else 503; then the
/// connection is closed. Bounded in time ([`OVERFLOW_READ`] to read, 1 s to write).
async fn overflow(mut stream: TcpStream, probe: Probe, _slot: tokio::sync::OwnedSemaphorePermit) {
    let mut buf = [0u8; 1024];
    let mut n = 0;
    let read = async {
        while n < buf.len() && !buf[..n].contains(&b'\n') {
            match stream.read(&mut buf[n..]).await {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
    };
    let _ = tokio::time::timeout(OVERFLOW_READ, read).await;
    let busy = || (503, r#"{"error":"too many connections; retry shortly","kind":"too_many_connections"}"#.to_string());
    let (status, body) = probe_path(&buf[..n]).and_then(|p| probe(p)).unwrap_or_else(busy);
    let reason = if status == 200 { "OK" } else { "Service Unavailable" };
    let retry = if status == 503 { "Retry-After: 1\r\n" } else { "" };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\n{retry}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
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
    admission: Admission,
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
        drop(admission);
    });
}

/// Accepts connections until `shutdown` resolves, then finishes the requests in flight.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: NetLimits,
    probe: Probe,
    stats: Arc<NetStats>,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let overflow_slots = Arc::new(tokio::sync::Semaphore::new(OVERFLOW_SLOTS));
    let clients = Arc::new(PerClient::default());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let admitted = clients
                        .take(peer.ip().to_canonical(), limits.max_per_client.max(1))
                        .and_then(|c| permits.clone().try_acquire_owned().ok().map(|p| (c, p)));
                    match admitted {
                        Some((client, permit)) => {
                            stats.open.fetch_add(1, Ordering::Relaxed);
                            let admission = Admission { _client: client, _permit: permit, stats: stats.clone() };
                            spawn_connection(stream, router.clone(), limits, &graceful, admission);
                        }
                        None => match overflow_slots.clone().try_acquire_owned() {
                            Ok(slot) => {
                                stats.overflowed.fetch_add(1, Ordering::Relaxed);
                                drop(tokio::spawn(overflow(stream, probe.clone(), slot)));
                            }
                            Err(_) => {
                                stats.dropped.fetch_add(1, Ordering::Relaxed);
                                drop(stream);
                            }
                        },
                    }
                }
                // Out of descriptors or a connection reset before accept: wait a moment.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            },
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_paths_are_read_from_get_and_head_request_lines_only() {
        assert_eq!(probe_path(b"GET /healthz HTTP/1.1\r\nHost: x\r\n"), Some("/healthz"));
        assert_eq!(probe_path(b"HEAD /readyz?verbose=1 HTTP/1.0\r\n"), Some("/readyz"));
        assert_eq!(probe_path(b"POST /healthz HTTP/1.1\r\n"), None);
        assert_eq!(probe_path(b"GET /heal"), None, "an unfinished request line is no probe");
        assert_eq!(probe_path(b""), None);
        assert_eq!(probe_path(&[0xff, 0xfe, b' ', b'/']), None);
    }

    #[test]
    fn the_budget_leaves_room_for_the_overflow_slots_and_the_process() {
        assert_eq!(connection_budget(8192, 1 << 20), 8192);
        assert_eq!(connection_budget(8192, 4096), 4096 - 256 - OVERFLOW_SLOTS);
        assert_eq!(connection_budget(8192, 100), 1, "never zero");
    }

    #[test]
    fn a_client_address_holds_at_most_its_share_and_gets_it_back() {
        let table = Arc::new(PerClient::default());
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| table.take(a, 3).expect("within the cap")).collect();
        assert!(table.take(a, 3).is_none(), "a fourth from the same address");
        let other = table.take(b, 3);
        assert!(other.is_some(), "another address is not affected");
        drop(held);
        assert!(table.take(a, 3).is_some(), "slots come back when connections close");
        drop(other);
        assert_eq!(table.counts.lock().unwrap().get(&b), None, "empty entries are removed");
    }
}
