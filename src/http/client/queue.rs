//! Requests waiting in an endpoint's pool for a connection or a stream (Envoy's
//! pending requests): a FIFO handing each freed connection or stream to the
//! oldest request still waiting, the decision to open a connection for them,
//! and the guard that keeps `max_pending_requests` and the pending stats right
//! however the wait ends. Only bookkeeping: the pool owns the connections.

use std::{collections::VecDeque, io};

use tokio::sync::oneshot;

use crate::{
    http::error::ProxyError,
    policy::circuit_breaker::{Breaker, ConnGuard, PendingGuard},
    telemetry::stats::ClusterStats,
};

/// Why a connection being opened for waiting requests failed. Envoy fails every
/// pending request of the host's pool with it (`purgePendingStreams`), so it is
/// kept in a form each of them can turn into its own error.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnectError {
    Timeout,
    Io(io::ErrorKind, String),
    /// The HTTP handshake failed: (is it a parse error, the message).
    Handshake(bool, String),
}

impl ConnectError {
    pub fn to_proxy_error(&self) -> ProxyError {
        match self {
            ConnectError::Timeout => ProxyError::ConnectTimeout,
            ConnectError::Io(kind, msg) => ProxyError::ConnectFailure(io::Error::new(*kind, msg.clone())),
            ConnectError::Handshake(true, msg) => ProxyError::UpstreamProtocol(msg.clone()),
            ConnectError::Handshake(false, msg) => ProxyError::UpstreamReset(msg.clone()),
        }
    }
}

/// What a waiting request is handed.
pub type Handoff<T> = Result<T, ConnectError>;

/// The waiting requests of one pool, oldest first. Each holds the receiving
/// end of a oneshot; a request that gives up (timeout, client gone) drops it,
/// and its entry is skipped and pruned, never served.
pub struct Waiters<T> {
    queue: VecDeque<oneshot::Sender<Handoff<T>>>,
}

impl<T> Default for Waiters<T> {
    fn default() -> Self {
        Waiters { queue: VecDeque::new() }
    }
}

impl<T> Waiters<T> {
    /// Joins the back of the queue.
    pub fn join(&mut self) -> oneshot::Receiver<Handoff<T>> {
        self.prune();
        let (tx, rx) = oneshot::channel();
        self.queue.push_back(tx);
        rx
    }

    /// Joins the front again: a request handed a connection that closed before
    /// it could be used keeps its place (it was the oldest).
    pub fn rejoin_front(&mut self) -> oneshot::Receiver<Handoff<T>> {
        let (tx, rx) = oneshot::channel();
        self.queue.push_front(tx);
        rx
    }

    /// Hands `item` to the oldest request still waiting; gives it back when
    /// none is.
    pub fn serve(&mut self, mut item: T) -> Result<(), T> {
        while let Some(tx) = self.queue.pop_front() {
            match tx.send(Ok(item)) {
                Ok(()) => return Ok(()),
                Err(Ok(back)) => item = back,
                // Unreachable: we sent Ok. Nothing to give back then.
                Err(Err(_)) => return Ok(()),
            }
        }
        Err(item)
    }

    /// Fails every waiting request; returns how many there were.
    pub fn fail_all(&mut self, why: &ConnectError) -> usize {
        let mut failed = 0;
        for tx in self.queue.drain(..) {
            if tx.send(Err(why.clone())).is_ok() {
                failed += 1;
            }
        }
        failed
    }

    /// Requests still waiting (entries of those that gave up are dropped).
    pub fn live(&mut self) -> usize {
        self.prune();
        self.queue.len()
    }

    /// Entries, including any not pruned yet (an upper bound of `live`).
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    fn prune(&mut self) {
        self.queue.retain(|tx| !tx.is_closed());
    }
}

/// Envoy's `shouldCreateNewConnection` (preconnect ratio 1): open another
/// connection while more requests wait than the connections being opened
/// can take (`pending > connecting_stream_capacity`).
pub fn should_connect(waiting: usize, connecting: usize, streams_per_connection: usize) -> bool {
    waiting > connecting.saturating_mul(streams_per_connection)
}

/// The breaker slot for a new connection, as Envoy's `tryCreateNewConnection`:
/// within `max_connections`, or past it when the host's pool has no
/// connection at all. Counts `upstream_cx_overflow` whenever the limit is hit.
pub fn connection_slot(breaker: &Breaker, stats: &ClusterStats, pool_is_empty: bool) -> Option<ConnGuard> {
    if let Some(slot) = breaker.try_connection() {
        return Some(slot);
    }
    stats.upstream_cx_overflow.inc();
    pool_is_empty.then(|| breaker.force_connection())
}

/// A request waiting in a pool. It holds a slot of `max_pending_requests`
/// and the `upstream_rq_pending_active` gauge until it is dropped; dropped
/// before it was served or failed, it counts `upstream_rq_cancelled`, as Envoy
/// counts a pending request whose downstream went away or timed out.
pub struct Pending<'a> {
    _slot: PendingGuard,
    stats: &'a ClusterStats,
    settled: bool,
}

impl<'a> Pending<'a> {
    /// Admits a request to wait, or fails it with overflow (503 UO,
    /// `upstream_rq_pending_overflow`) when `max_pending_requests` is reached.
    pub fn start(breaker: &Breaker, stats: &'a ClusterStats) -> Result<Pending<'a>, ProxyError> {
        let Some(slot) = breaker.try_pending() else {
            stats.upstream_rq_pending_overflow.inc();
            return Err(ProxyError::Overflow("max_pending_requests"));
        };
        stats.upstream_rq_pending_total.inc();
        stats.upstream_rq_pending_active.inc();
        Ok(Pending {
            _slot: slot,
            stats,
            settled: false,
        })
    }

    /// The request got its connection or stream.
    pub fn served(mut self) {
        self.settled = true;
    }

    /// The connection it waited for failed (Envoy's
    /// `upstream_rq_pending_failure_eject`).
    pub fn failed(mut self) {
        self.stats.upstream_rq_pending_failure_eject.inc();
        self.settled = true;
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.stats.upstream_rq_pending_active.dec();
        if !self.settled {
            self.stats.upstream_rq_cancelled.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::circuit_breaker::Thresholds;

    fn breaker(max_connections: u32, max_pending_requests: u32) -> Breaker {
        Breaker::new(Thresholds {
            max_connections,
            max_pending_requests,
            ..Thresholds::default()
        })
    }

    // Envoy serves pending requests oldest first (`onUpstreamReady` pulls
    // from the back of the list new requests are pushed onto the front of).
    #[test]
    fn serves_oldest_first() {
        let mut w = Waiters::default();
        let mut first = w.join();
        let mut second = w.join();
        assert_eq!(w.serve("a"), Ok(()));
        assert_eq!(first.try_recv().ok(), Some(Ok("a")));
        assert!(second.try_recv().is_err(), "the second still waits");
        assert_eq!(w.serve("b"), Ok(()));
        assert_eq!(second.try_recv().ok(), Some(Ok("b")));
        assert_eq!(w.serve("c"), Err("c"), "nobody waits: the item comes back");
    }

    // A request that gave up is skipped, never served; its entry goes at the
    // next join, so the queue does not grow with abandoned requests.
    #[test]
    fn skips_and_prunes_requests_that_gave_up() {
        let mut w = Waiters::default();
        let gone = w.join();
        let mut alive = w.join();
        drop(gone);
        assert_eq!(w.len(), 2);
        assert_eq!(w.live(), 1);
        assert_eq!(w.serve(7), Ok(()));
        assert_eq!(alive.try_recv().ok(), Some(Ok(7)));
        let gone = w.join();
        drop(gone);
        assert_eq!(w.len(), 1);
        let _kept = w.join();
        assert_eq!(w.len(), 1, "pruned when the next request joins");
    }

    // A request handed a connection that closed before use keeps its place.
    #[test]
    fn rejoining_goes_to_the_front() {
        let mut w = Waiters::default();
        let mut later = w.join();
        let mut again = w.rejoin_front();
        assert_eq!(w.serve(1), Ok(()));
        assert_eq!(again.try_recv().ok(), Some(Ok(1)));
        assert!(later.try_recv().is_err());
    }

    // Envoy's purgePendingStreams: a connect failure fails every pending request.
    #[test]
    fn fail_all_fails_every_waiting_request() {
        let mut w: Waiters<u8> = Waiters::default();
        let mut a = w.join();
        let gone = w.join();
        let mut b = w.join();
        drop(gone);
        assert_eq!(w.fail_all(&ConnectError::Timeout), 2);
        assert_eq!(w.len(), 0);
        assert_eq!(a.try_recv().ok(), Some(Err(ConnectError::Timeout)));
        assert_eq!(b.try_recv().ok(), Some(Err(ConnectError::Timeout)));
        let refused = ConnectError::Io(io::ErrorKind::ConnectionRefused, "refused".into());
        assert!(
            matches!(refused.to_proxy_error(), ProxyError::ConnectFailure(e) if e.kind() == io::ErrorKind::ConnectionRefused)
        );
        assert!(matches!(
            ConnectError::Timeout.to_proxy_error(),
            ProxyError::ConnectTimeout
        ));
    }

    // Envoy: pending > connecting capacity opens a connection. HTTP/1.1 takes
    // one request per connection; an HTTP/2 connection being opened takes up
    // to its stream limit, so a burst shares it.
    #[test]
    fn connects_while_more_wait_than_connecting_capacity() {
        assert!(should_connect(1, 0, 1));
        assert!(!should_connect(1, 1, 1));
        assert!(should_connect(2, 1, 1));
        assert!(!should_connect(100, 1, 100));
        assert!(should_connect(101, 1, 100));
        assert!(!should_connect(0, 0, 1));
        assert!(!should_connect(5, 2, usize::MAX), "no overflow");
    }

    // Envoy: at max_connections the pool counts upstream_cx_overflow and opens
    // no connection, unless the host has none at all.
    #[test]
    fn connection_slot_past_the_limit_only_for_an_empty_pool() {
        let b = breaker(1, 10);
        let stats = ClusterStats::default();
        let first = connection_slot(&b, &stats, true);
        assert!(first.is_some());
        assert_eq!(stats.upstream_cx_overflow.get(), 0);
        assert!(connection_slot(&b, &stats, false).is_none());
        assert_eq!(stats.upstream_cx_overflow.get(), 1);
        let forced = connection_slot(&b, &stats, true);
        assert!(forced.is_some());
        assert_eq!((stats.upstream_cx_overflow.get(), b.connections()), (2, 2));
    }

    // Envoy: a pending request holds a max_pending_requests slot; the next
    // past the limit overflows (upstream_rq_pending_overflow). A request that
    // leaves before it is served counts upstream_rq_cancelled; one whose
    // connection failed counts upstream_rq_pending_failure_eject instead.
    #[test]
    fn pending_counts_and_frees_its_slot_on_every_exit() {
        let b = breaker(1, 1);
        let stats = ClusterStats::default();
        let waiting = Pending::start(&b, &stats).ok();
        assert!(waiting.is_some());
        assert!(matches!(
            Pending::start(&b, &stats),
            Err(ProxyError::Overflow("max_pending_requests"))
        ));
        assert_eq!(stats.upstream_rq_pending_overflow.get(), 1);
        assert_eq!(stats.upstream_rq_pending_active.get(), 1);
        drop(waiting);
        assert_eq!(b.pending_requests(), 0);
        assert_eq!(stats.upstream_rq_pending_active.get(), 0);
        assert_eq!(stats.upstream_rq_cancelled.get(), 1);

        if let Ok(p) = Pending::start(&b, &stats) {
            p.served();
        }
        if let Ok(p) = Pending::start(&b, &stats) {
            p.failed();
        }
        assert_eq!(stats.upstream_rq_pending_total.get(), 3);
        assert_eq!(stats.upstream_rq_cancelled.get(), 1);
        assert_eq!(stats.upstream_rq_pending_failure_eject.get(), 1);
        assert_eq!((b.pending_requests(), stats.upstream_rq_pending_active.get()), (0, 0));
    }
}
