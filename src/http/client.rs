//! Upstream connections for one endpoint, pooled as Envoy's connection pools
//! are: HTTP/1.1 keep-alive connections reused one request at a time, or
//! HTTP/2 connections multiplexed up to the cluster's `max_concurrent_streams`.
//!
//! A request that finds no free connection (HTTP/1.1) or stream (HTTP/2)
//! waits in the pool as a pending request, within `max_pending_requests`
//! (`queue.rs`). The pool opens connections for waiting requests in its own
//! tasks, within `max_connections` (one past it for an endpoint that has
//! none, as Envoy), and hands each freed connection or stream to the oldest
//! waiting request. A failed connect fails every waiting request, as Envoy's
//! `purgePendingStreams`. The route timeout and the request's cancellation
//! bound the wait (the caller drops the future).
//!
//! A checked-out connection goes back to the pool when its response body
//! has been read to the end; a response dropped half-read takes its
//! connection with it, since the stream's state is unknown. A connection that
//! has taken `max_requests_per_connection` requests takes no more and closes
//! once they end (Envoy's draining state).

mod queue;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering::SeqCst},
        Arc, Mutex, MutexGuard, PoisonError, Weak,
    },
    time::{Duration, Instant},
};

use hyper::{
    body::Incoming,
    client::conn::{http1, http2},
    Request, Response,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use self::queue::{connection_slot, should_connect, ConnectError, Pending, Waiters};
use super::{
    error::{classify_upstream, ProxyError},
    request_body::RequestBody,
};
use crate::{
    config::{Cluster, UpstreamProtocol},
    policy::circuit_breaker::{Breaker, ConnGuard},
    telemetry::stats::{ClusterStats, Counter, Gauge},
};

/// Per-endpoint counters shown by `/clusters`.
#[derive(Debug, Default)]
pub struct EndpointStats {
    pub cx_active: Gauge,
    pub cx_connect_fail: Counter,
    pub rq_total: Counter,
    pub rq_active: Gauge,
    pub rq_success: Counter,
    pub rq_error: Counter,
    pub rq_timeout: Counter,
}

/// Envoy caps the connections one pool event opens at three
/// (`tryCreateNewConnections`).
const MAX_CONNECTS_PER_EVENT: usize = 3;

pub struct EndpointPool {
    pub address: SocketAddr,
    protocol: UpstreamProtocol,
    connect_timeout: Duration,
    idle_timeout: Option<Duration>,
    h2_max_streams: usize,
    h2_stream_window: u32,
    h2_conn_window: u32,
    /// Requests a connection serves before it closes
    /// (`max_requests_per_connection`; `u64::MAX` when unlimited).
    max_requests: u64,
    pub cluster_stats: Arc<ClusterStats>,
    pub stats: Arc<EndpointStats>,
    /// The cluster's circuit breaker: every connection holds a slot of
    /// `max_connections` for as long as it is open, every waiting request
    /// one of `max_pending_requests`.
    breaker: Breaker,
    h1: Mutex<H1Pool>,
    h2: Mutex<H2Pool>,
    /// How many requests wait in `h2`, read without the lock when a stream
    /// ends (the common case is none, and then nothing more is done).
    h2_waiting: Arc<AtomicUsize>,
}

/// An HTTP/1.1 connection while a request holds it.
pub struct H1Conn {
    sender: http1::SendRequest<RequestBody>,
    /// Requests it may still serve (`max_requests_per_connection`).
    remaining: u64,
}

#[derive(Default)]
struct H1Pool {
    idle: Vec<(H1Conn, Instant)>,
    waiters: Waiters<H1Conn>,
    /// Connections open or being opened to this endpoint.
    open: usize,
    connecting: usize,
}

impl H1Pool {
    fn take_idle(&mut self, idle_timeout: Option<Duration>) -> Option<H1Conn> {
        let now = Instant::now();
        while let Some((conn, since)) = self.idle.pop() {
            let expired = idle_timeout.is_some_and(|t| now.duration_since(since) > t);
            if !expired && !conn.sender.is_closed() {
                return Some(conn);
            }
            // Closed by the peer, or idle too long: dropping it closes it.
        }
        None
    }
}

type H2Stream = (http2::SendRequest<RequestBody>, StreamSlot);

#[derive(Default)]
struct H2Pool {
    conns: Vec<H2Conn>,
    waiters: Waiters<H2Stream>,
    open: usize,
    connecting: usize,
}

struct H2Conn {
    sender: http2::SendRequest<RequestBody>,
    streams: Arc<H2Streams>,
    /// Streams it may still open (`max_requests_per_connection`).
    remaining: u64,
}

/// The streams in use on one HTTP/2 connection, and the way back to its
/// pool's waiting requests when one ends.
struct H2Streams {
    active: AtomicUsize,
    waiting: Arc<AtomicUsize>,
    pool: Weak<EndpointPool>,
}

impl H2Pool {
    /// A stream on a connection below its limit. Every increment happens
    /// under the pool's lock, so the count never passes `max`.
    fn take_stream(&mut self, max: usize, stats: &ClusterStats) -> Option<H2Stream> {
        self.conns.retain(|c| !c.sender.is_closed());
        let i = self.conns.iter().position(|c| c.streams.active.load(SeqCst) < max)?;
        let c = self.conns.get_mut(i)?;
        c.streams.active.fetch_add(1, SeqCst);
        c.remaining -= 1;
        let found = (c.sender.clone(), StreamSlot(Some(c.streams.clone())));
        if c.remaining == 0 {
            // As Envoy: the connection drains, taking no new streams, and
            // closes when its last stream ends (its senders are all gone).
            stats.upstream_cx_max_requests.inc();
            self.conns.remove(i);
        }
        Some(found)
    }
}

/// One HTTP/2 stream slot of a connection, freed when dropped, so a request
/// cancelled at any point (timeout, client gone) never leaks its slot; a
/// request waiting for a stream gets it.
pub struct StreamSlot(Option<Arc<H2Streams>>);

impl StreamSlot {
    /// Frees a slot no request used, under the pool's lock (so without
    /// serving waiting requests, which the lock holder does).
    fn release_unused(mut self) {
        if let Some(s) = self.0.take() {
            s.active.fetch_sub(1, SeqCst);
        }
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let Some(s) = self.0.take() else { return };
        s.active.fetch_sub(1, SeqCst);
        // Read after the release, both SeqCst: a request that starts waiting
        // concurrently either sees the free stream itself or is seen here.
        if s.waiting.load(SeqCst) > 0 {
            if let Some(pool) = s.pool.upgrade() {
                pool.serve_h2(&mut lock(&pool.h2));
            }
        }
    }
}

/// A connection (HTTP/1.1) or stream (HTTP/2) given to one request.
pub enum Lease {
    Http1(H1Conn, Arc<EndpointPool>),
    Http2(http2::SendRequest<RequestBody>, StreamSlot),
}

impl Lease {
    /// Sends the request. Returns the response and what its body must
    /// release when it ends.
    pub async fn send(self, req: Request<RequestBody>) -> Result<(Response<Incoming>, Release), ProxyError> {
        match self {
            Lease::Http1(mut conn, pool) => {
                let resp = conn.sender.send_request(req).await.map_err(|e| classify_upstream(&e))?;
                Ok((resp, Release::Http1 { conn, pool }))
            }
            Lease::Http2(mut sender, slot) => {
                let resp = sender.send_request(req).await.map_err(|e| classify_upstream(&e))?;
                Ok((resp, Release::Http2(slot)))
            }
        }
    }
}

/// What the response body must do when it ends: give an HTTP/1.1 connection
/// back, or free an HTTP/2 stream slot.
pub enum Release {
    Http1 { conn: H1Conn, pool: Arc<EndpointPool> },
    Http2(StreamSlot),
    None,
}

impl Release {
    /// The response was read to its end: the connection can serve again.
    pub fn complete(self) {
        match self {
            Release::Http1 { conn, pool } => pool.give_back(conn),
            Release::Http2(slot) => drop(slot),
            Release::None => {}
        }
    }
}

/// A poisoned lock only means another request panicked mid-update; the pool's
/// counts are still the best there is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl EndpointPool {
    pub fn new(address: SocketAddr, cluster: &Cluster, cluster_stats: Arc<ClusterStats>, breaker: Breaker) -> Self {
        EndpointPool {
            address,
            protocol: cluster.protocol,
            connect_timeout: cluster.connect_timeout,
            idle_timeout: cluster.idle_timeout,
            h2_max_streams: cluster.http2.max_concurrent_streams.max(1) as usize,
            h2_stream_window: cluster.http2.initial_stream_window_size,
            h2_conn_window: cluster.http2.initial_connection_window_size,
            max_requests: cluster
                .max_requests_per_connection
                .map_or(u64::MAX, |n| u64::from(n.get())),
            cluster_stats,
            stats: Arc::default(),
            breaker,
            h1: Mutex::default(),
            h2: Mutex::default(),
            h2_waiting: Arc::default(),
        }
    }

    pub fn protocol(&self) -> UpstreamProtocol {
        self.protocol
    }

    /// Sends a request on a pooled (or new) connection. Returns the response
    /// and what its body must release when it ends.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Release), ProxyError> {
        self.checkout().await?.send(req).await
    }

    /// A connection or stream for one request, waiting as a pending request
    /// when none is free. Envoy starts a try's per-try timeout only once the
    /// pool has given it one (`UpstreamRequest::onPoolReady`); the route
    /// timeout covers the wait too.
    pub async fn checkout(self: &Arc<Self>) -> Result<Lease, ProxyError> {
        match self.protocol {
            UpstreamProtocol::Http1 => Ok(Lease::Http1(self.checkout_h1().await?, self.clone())),
            UpstreamProtocol::Http2 => {
                let (sender, slot) = self.checkout_h2().await?;
                Ok(Lease::Http2(sender, slot))
            }
        }
    }

    /// An HTTP/1.1 connection for an upgrade (the connection is not returned).
    pub async fn send_upgrade(self: &Arc<Self>, req: Request<RequestBody>) -> Result<Response<Incoming>, ProxyError> {
        let mut conn = self.checkout_h1().await?;
        conn.sender.send_request(req).await.map_err(|e| classify_upstream(&e))
    }

    /// An idle connection at once, else a wait for one: given back by another
    /// request, or opened by the pool.
    async fn checkout_h1(self: &Arc<Self>) -> Result<H1Conn, ProxyError> {
        let mut pending = None;
        loop {
            let wait = {
                let mut pool = lock(&self.h1);
                match pool.take_idle(self.idle_timeout) {
                    Some(conn) => Err(conn),
                    None => {
                        let rx = match pending {
                            // Handed a connection that closed before use: it
                            // was the oldest, and stays so.
                            Some(_) => pool.waiters.rejoin_front(),
                            None => {
                                pending = Some(Pending::start(&self.breaker, &self.cluster_stats)?);
                                pool.waiters.join()
                            }
                        };
                        self.connect_for_waiters_h1(&mut pool);
                        Ok(rx)
                    }
                }
            };
            let mut conn = match wait {
                Err(idle) => idle,
                Ok(rx) => match rx.await {
                    Ok(Ok(conn)) => conn,
                    Ok(Err(why)) => {
                        if let Some(p) = pending.take() {
                            p.failed();
                        }
                        return Err(why.to_proxy_error());
                    }
                    Err(_) => return Err(ProxyError::UpstreamReset("connection pool closed".into())),
                },
            };
            // A connection just given back may still be finishing the last
            // response; it is ready as soon as hyper has read it to the end.
            if conn.sender.ready().await.is_ok() {
                if let Some(p) = pending.take() {
                    p.served();
                }
                conn.remaining -= 1;
                if conn.remaining == 0 {
                    // As Envoy: its last request; it closes when that ends.
                    self.cluster_stats.upstream_cx_max_requests.inc();
                }
                return Ok(conn);
            }
        }
    }

    /// Opens connections for waiting requests: one per request beyond those
    /// already being opened (Envoy's `tryCreateNewConnections`).
    fn connect_for_waiters_h1(self: &Arc<Self>, pool: &mut H1Pool) {
        for _ in 0..MAX_CONNECTS_PER_EVENT {
            if !should_connect(pool.waiters.live(), pool.connecting, 1) {
                return;
            }
            let Some(slot) = connection_slot(&self.breaker, &self.cluster_stats, pool.open == 0) else {
                return;
            };
            pool.open += 1;
            pool.connecting += 1;
            tokio::spawn(self.clone().run_h1(slot));
        }
    }

    /// One pooled HTTP/1.1 connection, from connect to close.
    async fn run_h1(self: Arc<Self>, slot: ConnGuard) {
        let opened = match self.dial().await {
            Ok(stream) => http1::Builder::new()
                .handshake(TokioIo::new(stream))
                .await
                .map_err(|e| self.handshake_failed(&e)),
            Err(e) => Err(e),
        };
        let (sender, conn) = match opened {
            Ok(pair) => pair,
            Err(why) => {
                drop(slot);
                let mut pool = lock(&self.h1);
                pool.open -= 1;
                pool.connecting -= 1;
                pool.waiters.fail_all(&why);
                return;
            }
        };
        self.cluster_stats.upstream_cx_http1_total.inc();
        self.stats.cx_active.inc();
        {
            let mut pool = lock(&self.h1);
            pool.connecting -= 1;
            let conn = H1Conn {
                sender,
                remaining: self.max_requests,
            };
            if let Err(conn) = pool.waiters.serve(conn) {
                pool.idle.push((conn, Instant::now()));
            }
        }
        // The connection outlives neither its requests nor the need for
        // it, but may outlive the pool (a config update replaced it).
        let pool = Arc::downgrade(&self);
        let stats = (self.cluster_stats.clone(), self.stats.clone());
        drop(self);
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream HTTP/1.1 connection ended with an error");
        }
        stats.0.upstream_cx_active.dec();
        stats.1.cx_active.dec();
        drop(slot);
        if let Some(me) = pool.upgrade() {
            let mut pool = lock(&me.h1);
            pool.open -= 1;
            me.connect_for_waiters_h1(&mut pool);
        }
    }

    fn give_back(&self, conn: H1Conn) {
        if conn.sender.is_closed() || conn.remaining == 0 {
            // Dropping the last sender closes the connection.
            return;
        }
        let mut pool = lock(&self.h1);
        if let Err(conn) = pool.waiters.serve(conn) {
            pool.idle.push((conn, Instant::now()));
        }
    }

    /// A stream on an open connection at once, else a wait for one: freed by
    /// another request, or on a connection the pool opens.
    async fn checkout_h2(self: &Arc<Self>) -> Result<H2Stream, ProxyError> {
        let (pending, rx) = {
            let mut pool = lock(&self.h2);
            if let Some(found) = pool.take_stream(self.h2_max_streams, &self.cluster_stats) {
                return Ok(found);
            }
            let pending = Pending::start(&self.breaker, &self.cluster_stats)?;
            let rx = pool.waiters.join();
            // A stream may have ended since the look above without seeing
            // this request; serving now catches it.
            self.serve_h2(&mut pool);
            self.connect_for_waiters_h2(&mut pool);
            (pending, rx)
        };
        match rx.await {
            Ok(Ok(found)) => {
                pending.served();
                Ok(found)
            }
            Ok(Err(why)) => {
                pending.failed();
                Err(why.to_proxy_error())
            }
            Err(_) => Err(ProxyError::UpstreamReset("connection pool closed".into())),
        }
    }

    /// Hands free streams to waiting requests, oldest first.
    fn serve_h2(&self, pool: &mut H2Pool) {
        // Published before looking for free streams (see StreamSlot::drop).
        self.h2_waiting.store(pool.waiters.len(), SeqCst);
        // Waiters that gave up are pruned first: a stream taken for nobody
        // would still spend one of its connection's max_requests_per_connection.
        while pool.waiters.live() > 0 {
            let Some(found) = pool.take_stream(self.h2_max_streams, &self.cluster_stats) else {
                break;
            };
            if let Err((_, slot)) = pool.waiters.serve(found) {
                slot.release_unused();
            }
        }
        self.h2_waiting.store(pool.waiters.len(), SeqCst);
    }

    /// Opens connections while more requests wait than the connections being
    /// opened will take (each up to `max_concurrent_streams`).
    fn connect_for_waiters_h2(self: &Arc<Self>, pool: &mut H2Pool) {
        for _ in 0..MAX_CONNECTS_PER_EVENT {
            if !should_connect(pool.waiters.live(), pool.connecting, self.h2_max_streams) {
                break;
            }
            let Some(slot) = connection_slot(&self.breaker, &self.cluster_stats, pool.open == 0) else {
                break;
            };
            pool.open += 1;
            pool.connecting += 1;
            tokio::spawn(self.clone().run_h2(slot));
        }
        self.h2_waiting.store(pool.waiters.len(), SeqCst);
    }

    /// One pooled HTTP/2 connection, from connect to close.
    async fn run_h2(self: Arc<Self>, slot: ConnGuard) {
        let opened = match self.dial().await {
            Ok(stream) => http2::Builder::new(TokioExecutor::new())
                .initial_stream_window_size(self.h2_stream_window)
                .initial_connection_window_size(self.h2_conn_window)
                .handshake(TokioIo::new(stream))
                .await
                .map_err(|e| self.handshake_failed(&e)),
            Err(e) => Err(e),
        };
        let (sender, conn) = match opened {
            Ok(pair) => pair,
            Err(why) => {
                drop(slot);
                let mut pool = lock(&self.h2);
                pool.open -= 1;
                pool.connecting -= 1;
                pool.waiters.fail_all(&why);
                self.h2_waiting.store(pool.waiters.len(), SeqCst);
                return;
            }
        };
        self.cluster_stats.upstream_cx_http2_total.inc();
        self.stats.cx_active.inc();
        let streams = Arc::new(H2Streams {
            active: AtomicUsize::new(0),
            waiting: self.h2_waiting.clone(),
            pool: Arc::downgrade(&self),
        });
        {
            let mut pool = lock(&self.h2);
            pool.connecting -= 1;
            pool.conns.push(H2Conn {
                sender,
                streams: streams.clone(),
                remaining: self.max_requests,
            });
            self.serve_h2(&mut pool);
        }
        let pool = Arc::downgrade(&self);
        let stats = (self.cluster_stats.clone(), self.stats.clone());
        drop(self);
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
        }
        stats.0.upstream_cx_active.dec();
        stats.1.cx_active.dec();
        drop(slot);
        if let Some(me) = pool.upgrade() {
            let mut pool = lock(&me.h2);
            pool.open -= 1;
            pool.conns.retain(|c| !Arc::ptr_eq(&c.streams, &streams));
            me.connect_for_waiters_h2(&mut pool);
        }
    }

    fn handshake_failed(&self, e: &hyper::Error) -> ConnectError {
        self.cluster_stats.upstream_cx_active.dec();
        self.cluster_stats.upstream_cx_protocol_error.inc();
        ConnectError::Handshake(e.is_parse(), e.to_string())
    }

    /// A TCP connection to this endpoint within the connect timeout, counted
    /// in the cluster's connection stats.
    async fn dial(&self) -> Result<TcpStream, ConnectError> {
        let stats = &self.cluster_stats;
        stats.upstream_cx_total.inc();
        let result = tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.address)).await;
        let why = match result {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                stats.upstream_cx_active.inc();
                return Ok(stream);
            }
            Ok(Err(e)) => ConnectError::Io(e.kind(), e.to_string()),
            Err(_) => {
                stats.upstream_cx_connect_timeout.inc();
                ConnectError::Timeout
            }
        };
        stats.upstream_cx_connect_fail.inc();
        self.stats.cx_connect_fail.inc();
        Err(why)
    }

    /// A raw TCP connection to this endpoint (for `tcp_proxy`), counted in
    /// the cluster's connection stats; the caller decrements `upstream_cx_active`.
    /// At `max_connections` it fails at once with overflow: remora's TCP
    /// proxy does not queue connections.
    pub async fn connect_tcp(&self) -> Result<(TcpStream, ConnGuard), ProxyError> {
        let Some(slot) = self.breaker.try_connection() else {
            self.cluster_stats.upstream_cx_overflow.inc();
            return Err(ProxyError::Overflow("max_connections"));
        };
        let stream = self.dial().await.map_err(|e| e.to_proxy_error())?;
        Ok((stream, slot))
    }
}
