//! Every open HTTP connection, what it is doing, and for how long: the registry behind the
//! connection cap and the three timeouts.
//!
//! A connection is in one of three phases, moved by the server (`server.rs`):
//! - **head**: connected (or, after a keep-alive pause, sent a first byte) and still sending
//!   its request header (with TLS, the handshake counts too) — bounded by
//!   `read_header_timeout`; this is what a slowloris sender and an idle socket that never
//!   speaks look like;
//! - **busy**: a request is being answered — bounded by `write_timeout`, and so is any single
//!   write blocked on a client that does not read;
//! - **idle**: between requests on a keep-alive connection — bounded by `idle_timeout`.
//!
//! One reaper task scans the registry a few times per shortest timeout; no per-connection
//! timers. At the cap, a new connection is admitted by closing the connection that has been
//! in head or idle phase the longest, preferring ones that never got a successful response
//! (or, failing all that, one whose writes are blocked): old idle sockets make way for a
//! scraper that just connected, which an attacker can only displace by opening the cap's worth
//! of connections within the scraper's round trip, and a scraper's keep-alive connection
//! outlives a flood's. Only when every connection is busy answering is a new one refused.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use super::limits::Limits;

const HEAD: u8 = 0;
const IDLE: u8 = 1;
const BUSY: u8 = 2;

/// Why the server closed a connection; the `reason` label of
/// `stallwatch_http_connections_closed_total` (refused ones were never admitted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    HeaderTimeout = 0,
    IdleTimeout,
    WriteTimeout,
    Evicted,
    Refused,
    Shutdown,
}

impl Closed {
    /// Label values, indexed by the discriminant (`Shutdown` is not exported: nobody scrapes
    /// a server that is going away).
    pub const LABELS: [(Closed, &'static str); 5] = [
        (Closed::HeaderTimeout, "header_timeout"),
        (Closed::IdleTimeout, "idle_timeout"),
        (Closed::WriteTimeout, "write_timeout"),
        (Closed::Evicted, "evicted"),
        (Closed::Refused, "refused"),
    ];
}

/// One connection's shared state: written by its task, its I/O wrapper and the reaper.
#[derive(Debug)]
pub struct Conn {
    epoch: Instant,
    phase: AtomicU8,
    /// Milliseconds after `epoch` when the phase began.
    since: AtomicU64,
    /// 1 + milliseconds after `epoch` when a write first found the socket full; 0 when not.
    write_blocked: AtomicU64,
    /// 0 while open, else 1 + the [`Closed`] reason.
    closing: AtomicU8,
    /// Whether a response on it succeeded (2xx): a scraper's keep-alive connection, kept over
    /// ones that only ever got 401/429/404 when room must be made.
    served_ok: AtomicBool,
    close: Notify,
}

impl Conn {
    fn new(epoch: Instant) -> Conn {
        let c = Conn {
            epoch,
            phase: AtomicU8::new(HEAD),
            since: AtomicU64::new(0),
            write_blocked: AtomicU64::new(0),
            closing: AtomicU8::new(0),
            served_ok: AtomicBool::new(false),
            close: Notify::new(),
        };
        c.since.store(c.now(), Ordering::Relaxed);
        c
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn enter(&self, phase: u8) {
        self.since.store(self.now(), Ordering::Relaxed);
        self.phase.store(phase, Ordering::Relaxed);
    }

    /// A request header was read completely: the request is being answered.
    pub fn request_started(&self) {
        self.enter(BUSY);
    }

    /// A successful (2xx) response is being sent on this connection.
    pub fn served_ok(&self) {
        self.served_ok.store(true, Ordering::Relaxed);
    }

    /// Eviction order: connections that never got a successful response go first, then the
    /// longest waiting.
    fn eviction_key(&self) -> (bool, u64) {
        (
            self.served_ok.load(Ordering::Relaxed),
            self.since.load(Ordering::Relaxed),
        )
    }

    /// The response body was handed over (or dropped): waiting for the next request.
    pub fn response_done(&self) {
        self.enter(IDLE);
    }

    fn bytes_arrived(&self) {
        if self.phase.load(Ordering::Relaxed) == IDLE {
            self.enter(HEAD);
        }
    }

    fn write_pending(&self) {
        if self.write_blocked.load(Ordering::Relaxed) == 0 {
            self.write_blocked.store(self.now() + 1, Ordering::Relaxed);
        }
    }

    fn write_progress(&self) {
        self.write_blocked.store(0, Ordering::Relaxed);
    }

    pub fn is_busy(&self) -> bool {
        self.phase.load(Ordering::Relaxed) == BUSY
    }

    fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed) != 0
    }

    /// Asks the connection's task to drop it. `false` if it was already asked.
    fn close(&self, why: Closed) -> bool {
        let asked = self
            .closing
            .compare_exchange(0, why as u8 + 1, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
        if asked {
            // `notify_one` keeps a permit, so a close before the task waits is not lost.
            self.close.notify_one();
        }
        asked
    }

    /// Completes when the connection must be dropped at once.
    pub async fn closed(&self) {
        self.close.notified().await;
    }

    /// What the reaper would close this connection for at `now` (ms after epoch).
    fn expired(&self, now: u64, l: &Limits) -> Option<Closed> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let age = now.saturating_sub(self.since.load(Ordering::Relaxed));
        let blocked = match self.write_blocked.load(Ordering::Relaxed) {
            0 => 0,
            t => now.saturating_sub(t - 1),
        };
        match self.phase.load(Ordering::Relaxed) {
            _ if blocked > ms(l.write_timeout) => Some(Closed::WriteTimeout),
            HEAD if age > ms(l.read_header_timeout) => Some(Closed::HeaderTimeout),
            IDLE if age > ms(l.idle_timeout) => Some(Closed::IdleTimeout),
            BUSY if age > ms(l.write_timeout) => Some(Closed::WriteTimeout),
            _ => None,
        }
    }
}

/// Counters for `stallwatch_http_*` (see `docs/metrics.md`).
#[derive(Debug, Default)]
pub struct ConnStats {
    pub accepted: AtomicU64,
    pub accept_errors: AtomicU64,
    /// Indexed by [`Closed`].
    pub closed: [AtomicU64; 6],
}

/// The registry. Cheap to share (`Arc`); one per server.
#[derive(Debug)]
pub struct Conns {
    limits: Limits,
    epoch: Instant,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Conn>>>,
    pub stats: ConnStats,
}

/// A registered connection; dropping it removes the entry.
pub struct Registration {
    conns: Arc<Conns>,
    id: u64,
    pub conn: Arc<Conn>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.conns.lock().remove(&self.id);
    }
}

impl Conns {
    pub fn new(limits: Limits) -> Arc<Conns> {
        Arc::new(Conns {
            limits,
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
            stats: ConnStats::default(),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn close(&self, c: &Conn, why: Closed) {
        if c.close(why) {
            self.stats.closed[why as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Connections open and not being closed.
    pub fn open(&self) -> usize {
        self.lock().values().filter(|c| !c.is_closing()).count()
    }

    /// All registered connections, including those being closed.
    pub fn registered(&self) -> usize {
        self.lock().len()
    }

    /// Registers a just-accepted connection. At the cap, closes the longest-waiting connection
    /// that is not answering a request to make room; `None` (refuse) only when all are busy.
    pub fn admit(self: &Arc<Self>) -> Option<Registration> {
        let mut open = self.lock();
        let live = open.values().filter(|c| !c.is_closing()).count();
        if live >= self.limits.max_connections {
            let candidates = || open.values().filter(|c| !c.is_closing());
            let victim = candidates()
                .filter(|c| !c.is_busy())
                .min_by_key(|c| c.eviction_key())
                .or_else(|| {
                    candidates()
                        .filter(|c| c.write_blocked.load(Ordering::Relaxed) != 0)
                        .min_by_key(|c| c.write_blocked.load(Ordering::Relaxed))
                });
            match victim {
                Some(v) => self.close(v, Closed::Evicted),
                None => {
                    self.stats.closed[Closed::Refused as usize].fetch_add(1, Ordering::Relaxed);
                    return None;
                }
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn::new(self.epoch));
        open.insert(id, Arc::clone(&conn));
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        Some(Registration {
            conns: Arc::clone(self),
            id,
            conn,
        })
    }

    /// Closes every connection past its phase's timeout. Returns how many.
    pub fn reap_once(&self) -> usize {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let open = self.lock();
        let mut n = 0;
        for c in open.values().filter(|c| !c.is_closing()) {
            if let Some(why) = c.expired(now, &self.limits) {
                self.close(c, why);
                n += 1;
            }
        }
        n
    }

    /// Runs [`Conns::reap_once`] a few times per shortest timeout, forever.
    pub async fn reap(self: Arc<Self>) {
        let l = self.limits;
        let shortest = l
            .read_header_timeout
            .min(l.idle_timeout)
            .min(l.write_timeout);
        let tick = (shortest / 4).clamp(Duration::from_millis(25), Duration::from_secs(1));
        let mut every = tokio::time::interval(tick);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            every.tick().await;
            self.reap_once();
        }
    }

    /// Closes connections that are not answering a request, or whose client has not taken
    /// any of the response for half a second (for shutdown); with `all`, every connection.
    pub fn close_for_shutdown(&self, all: bool) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        for c in self.lock().values() {
            let blocked = match c.write_blocked.load(Ordering::Relaxed) {
                0 => false,
                t => now.saturating_sub(t - 1) >= 500,
            };
            if all || !c.is_busy() || blocked {
                self.close(c, Closed::Shutdown);
            }
        }
    }
}

/// A socket that reports its reads and writes to its [`Conn`]: the first byte after an idle
/// period starts the header clock; a write that finds the socket full starts the blocked
/// clock, any progress stops it.
pub struct Tracked<S> {
    inner: S,
    conn: Arc<Conn>,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, conn: Arc<Conn>) -> Tracked<S> {
        Tracked { inner, conn }
    }

    fn wrote<T>(&self, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match &r {
            Poll::Pending => self.conn.write_pending(),
            Poll::Ready(_) => self.conn.write_progress(),
        }
        r
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.bytes_arrived();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize) -> Limits {
        Limits {
            max_connections: max,
            read_header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(100),
            write_timeout: Duration::from_secs(30),
        }
    }

    fn closed_as(c: &Conn) -> Option<u8> {
        match c.closing.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n - 1),
        }
    }

    #[test]
    fn full_registry_evicts_the_longest_waiting_idle_connection() {
        let conns = Conns::new(limits(3));
        let a = conns.admit().unwrap();
        let b = conns.admit().unwrap();
        let c = conns.admit().unwrap();
        // a answers a request; b waited longer than c.
        a.conn.request_started();
        b.conn.since.store(0, Ordering::Relaxed);
        c.conn.since.store(5, Ordering::Relaxed);
        let d = conns.admit().unwrap();
        assert_eq!(closed_as(&b.conn), Some(Closed::Evicted as u8));
        assert_eq!(closed_as(&a.conn), None, "busy connections are kept");
        assert_eq!(conns.open(), 3);
        assert_eq!(conns.registered(), 4, "b is still closing");
        drop(b);
        assert_eq!(conns.registered(), 3);
        // A keep-alive connection that was served a 2xx outlives ones that were not, even
        // when it waited longer.
        c.conn.served_ok();
        c.conn.since.store(0, Ordering::Relaxed);
        d.conn.since.store(50, Ordering::Relaxed);
        let d2 = conns.admit().unwrap();
        assert_eq!(closed_as(&d.conn), Some(Closed::Evicted as u8));
        assert_eq!(closed_as(&c.conn), None);
        drop(d);
        let d = d2;
        // All busy but one whose writes are blocked: that one goes.
        c.conn.request_started();
        d.conn.request_started();
        c.conn.write_pending();
        let e = conns.admit().unwrap();
        assert_eq!(closed_as(&c.conn), Some(Closed::Evicted as u8));
        e.conn.request_started();
        // All busy and progressing: refused.
        let stats = &conns.stats.closed;
        assert!(conns.admit().is_none());
        assert_eq!(stats[Closed::Refused as usize].load(Ordering::Relaxed), 1);
        assert_eq!(stats[Closed::Evicted as usize].load(Ordering::Relaxed), 3);
        drop((a, d, e));
    }

    #[test]
    fn each_phase_has_its_own_timeout() {
        let l = limits(10);
        let epoch = Instant::now();
        let c = Conn::new(epoch);
        c.since.store(0, Ordering::Relaxed);
        assert_eq!(c.expired(10_000, &l), None);
        assert_eq!(c.expired(10_001, &l), Some(Closed::HeaderTimeout));
        c.phase.store(IDLE, Ordering::Relaxed);
        assert_eq!(c.expired(99_000, &l), None, "idle keep-alive waits longer");
        assert_eq!(c.expired(100_001, &l), Some(Closed::IdleTimeout));
        c.phase.store(BUSY, Ordering::Relaxed);
        assert_eq!(c.expired(30_001, &l), Some(Closed::WriteTimeout));
        // A blocked write counts from when it blocked, whatever the phase.
        c.phase.store(IDLE, Ordering::Relaxed);
        c.write_blocked.store(50_000 + 1, Ordering::Relaxed);
        assert_eq!(c.expired(79_000, &l), None);
        assert_eq!(c.expired(80_001, &l), Some(Closed::WriteTimeout));
        c.write_progress();
        assert_eq!(c.expired(80_001, &l), None);
    }

    #[test]
    fn a_byte_after_idle_starts_the_header_clock() {
        let c = Conn::new(Instant::now());
        c.response_done();
        c.since.store(0, Ordering::Relaxed);
        c.bytes_arrived();
        assert_eq!(c.phase.load(Ordering::Relaxed), HEAD);
        c.request_started();
        c.bytes_arrived();
        assert_eq!(
            c.phase.load(Ordering::Relaxed),
            BUSY,
            "body bytes keep it busy"
        );
    }

    #[test]
    fn shutdown_keeps_only_responses_in_progress() {
        let conns = Conns::new(limits(10));
        let idle = conns.admit().unwrap();
        let answering = conns.admit().unwrap();
        let stuck = conns.admit().unwrap();
        answering.conn.request_started();
        stuck.conn.request_started();
        stuck.conn.write_blocked.store(1, Ordering::Relaxed); // blocked since the epoch
        std::thread::sleep(Duration::from_millis(600));
        conns.close_for_shutdown(false);
        assert!(idle.conn.is_closing() && stuck.conn.is_closing());
        assert!(!answering.conn.is_closing());
        conns.close_for_shutdown(true);
        assert!(answering.conn.is_closing());
    }

    #[tokio::test]
    async fn close_before_waiting_is_not_lost() {
        let conns = Conns::new(limits(1));
        let r = conns.admit().unwrap();
        conns.close_for_shutdown(false);
        tokio::time::timeout(Duration::from_secs(5), r.conn.closed())
            .await
            .unwrap();
    }
}
