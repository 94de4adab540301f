//! What `vmfork serve` knows of each client connection, to bound it: when
//! it last moved a byte, whether a request head is half-read, whether a
//! request is being handled, and the table that holds `--max-connections`
//! of them.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Not set (`Activity::head_started_ms`).
const UNSET: u64 = u64::MAX;

/// Why the server closed a connection itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// A request head took longer than `--header-timeout`.
    HeaderTimeout,
    /// No request and no byte either way for `--idle-timeout`.
    IdleTimeout,
    /// The least recently active idle connection, closed to make room for
    /// a new one at `--max-connections`.
    Evicted,
    /// A new connection at `--max-connections` with every open one busy.
    OverCap,
}

impl Closed {
    pub const ALL: [Closed; 4] = [
        Closed::HeaderTimeout,
        Closed::IdleTimeout,
        Closed::Evicted,
        Closed::OverCap,
    ];

    /// The `reason` label of `vmfork_connections_closed_total`.
    pub fn label(self) -> &'static str {
        match self {
            Closed::HeaderTimeout => "header_timeout",
            Closed::IdleTimeout => "idle_timeout",
            Closed::Evicted => "evicted",
            Closed::OverCap => "over_cap",
        }
    }
}

/// One connection's clock. Times are milliseconds since `epoch`.
pub struct Activity {
    epoch: Instant,
    /// The last byte read or written.
    last_io_ms: AtomicU64,
    /// The first byte of a request head not yet handed to a handler.
    head_started_ms: AtomicU64,
    /// Requests being handled (0 or 1 with HTTP/1.1).
    busy: AtomicUsize,
    /// Set when the table picks this connection to make room.
    pub evict: Notify,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            epoch: Instant::now(),
            last_io_ms: AtomicU64::new(0),
            head_started_ms: AtomicU64::new(UNSET),
            busy: AtomicUsize::new(0),
            evict: Notify::new(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    fn moved(&self, read: bool) {
        let now = self.now_ms();
        self.last_io_ms.store(now, Ordering::Relaxed);
        if read && self.busy.load(Ordering::Relaxed) == 0 {
            let _ = self.head_started_ms.compare_exchange(
                UNSET,
                now,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Relaxed) > 0
    }

    /// Marks a request as handed to its handler until the guard drops
    /// (its future completes or is dropped).
    pub fn handling(self: &Arc<Self>) -> Handling {
        self.busy.fetch_add(1, Ordering::Relaxed);
        self.head_started_ms.store(UNSET, Ordering::Relaxed);
        Handling(self.clone())
    }

    /// When to look again, and what is over then if nothing moves: a
    /// request head still incomplete `header` after its first byte, or a
    /// connection without a request that moved no byte for `idle`. A
    /// request being handled has its own limits (body, queue, --timeout).
    pub fn deadline(&self, header: Duration, idle: Duration) -> (Instant, Option<Closed>) {
        if self.is_busy() {
            return (Instant::now() + idle, None);
        }
        match self.head_started_ms.load(Ordering::Relaxed) {
            UNSET => (
                self.at(self.last_io_ms.load(Ordering::Relaxed)) + idle,
                Some(Closed::IdleTimeout),
            ),
            started => (self.at(started) + header, Some(Closed::HeaderTimeout)),
        }
    }
}

/// A request being handled on a connection (`Activity::handling`).
pub struct Handling(Arc<Activity>);

impl Drop for Handling {
    fn drop(&mut self) {
        // The idle clock starts when the answer is ready.
        self.0.moved(false);
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A socket that tells its [`Activity`] about every byte it moves.
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        Tracked { inner, activity }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.moved(true);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.moved(false);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.moved(false);
        }
        polled
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

/// The open connections, at most `cap`.
pub struct Connections {
    cap: usize,
    open: Mutex<VecDeque<Arc<Activity>>>,
}

impl Connections {
    pub fn new(cap: usize) -> Connections {
        Connections {
            cap,
            open: Mutex::new(VecDeque::with_capacity(cap.min(1024))),
        }
    }

    /// Room for a new connection. At the cap, the least recently active
    /// connection with no request being handled is told to close (an idle
    /// or half-sent connection must not lock real requests out); with
    /// every connection busy, the new one is refused (`Err(OverCap)`).
    pub fn open(&self) -> Result<(Arc<Activity>, Option<Closed>), Closed> {
        let Ok(mut open) = self.open.lock() else {
            return Err(Closed::OverCap);
        };
        let mut evicted = None;
        if open.len() >= self.cap {
            let victim = open
                .iter()
                .enumerate()
                .filter(|(_, a)| !a.is_busy())
                .min_by_key(|(_, a)| {
                    // Compared on one clock: each has its own epoch.
                    a.at(a.last_io_ms.load(Ordering::Relaxed))
                })
                .map(|(i, _)| i);
            let Some(victim) = victim.and_then(|i| open.remove(i)) else {
                return Err(Closed::OverCap);
            };
            victim.evict.notify_one();
            evicted = Some(Closed::Evicted);
        }
        let activity = Activity::new();
        open.push_back(activity.clone());
        Ok((activity, evicted))
    }

    /// The connection has ended (a no-op for one already evicted).
    pub fn close(&self, activity: &Arc<Activity>) {
        if let Ok(mut open) = self.open.lock() {
            if let Some(i) = open.iter().position(|a| Arc::ptr_eq(a, activity)) {
                open.remove(i);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.open.lock().map_or(0, |o| o.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn at_the_cap_the_least_active_idle_connection_makes_room() {
        let table = Connections::new(2);
        let (first, _) = table.open().expect("first");
        let (second, _) = table.open().expect("second");
        second.moved(true);
        // The first is the least recently active and idle: it goes.
        let (third, evicted) = table.open().expect("room made");
        assert_eq!(evicted, Some(Closed::Evicted));
        assert_eq!(table.len(), 2);
        first.evict.notified().await;
        // With both open connections busy, a new one is refused.
        let _a = second.handling();
        let _b = third.handling();
        assert_eq!(table.open().err(), Some(Closed::OverCap));
        table.close(&second);
        table.close(&first);
        assert_eq!(table.len(), 1);
    }

    #[tokio::test]
    async fn a_half_read_head_is_on_the_header_clock() {
        let a = Activity::new();
        let (header, idle) = (Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(a.deadline(header, idle).1, Some(Closed::IdleTimeout));
        a.moved(true);
        assert_eq!(a.deadline(header, idle).1, Some(Closed::HeaderTimeout));
        let handling = a.handling();
        assert_eq!(a.deadline(header, idle).1, None);
        drop(handling);
        assert_eq!(a.deadline(header, idle).1, Some(Closed::IdleTimeout));
    }
}
