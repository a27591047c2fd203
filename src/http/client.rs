//! Upstream connections for one endpoint: HTTP/1.1 keep-alive connections
//! reused one request at a time, or HTTP/2 connections multiplexed up to the
//! cluster's `max_concurrent_streams` (another is opened past that).
//!
//! A checked-out connection goes back to the pool when its response body
//! has been read to the end; a response dropped half-read takes its
//! connection with it, since the stream's state is unknown.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering::Relaxed},
        Arc, Mutex,
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

use super::{
    error::{classify_upstream, ProxyError},
    request_body::RequestBody,
};
use crate::{
    config::{Cluster, UpstreamProtocol},
    policy::circuit_breaker::{Breaker, ConnGuard, PendingGuard},
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

pub struct EndpointPool {
    pub address: SocketAddr,
    protocol: UpstreamProtocol,
    connect_timeout: Duration,
    idle_timeout: Option<Duration>,
    h2_max_streams: usize,
    h2_stream_window: u32,
    h2_conn_window: u32,
    pub cluster_stats: Arc<ClusterStats>,
    pub stats: Arc<EndpointStats>,
    /// The cluster's circuit breaker: every connection holds a slot of
    /// `max_connections` for as long as it is open.
    breaker: Breaker,
    idle_h1: Mutex<Vec<(http1::SendRequest<RequestBody>, Instant)>>,
    h2: Mutex<Vec<H2Conn>>,
    /// One HTTP/2 handshake at a time, so a burst shares the new connection.
    h2_connecting: tokio::sync::Mutex<()>,
}

#[derive(Clone)]
struct H2Conn {
    sender: http2::SendRequest<RequestBody>,
    streams: Arc<AtomicUsize>,
}

/// One HTTP/2 stream slot of a connection, freed when dropped, so a request
/// cancelled at any point (timeout, client gone) never leaks its slot.
pub struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// What the response body must do when it ends: give an HTTP/1.1 connection
/// back, or free an HTTP/2 stream slot.
pub enum Release {
    Http1 {
        sender: http1::SendRequest<RequestBody>,
        pool: Arc<EndpointPool>,
    },
    Http2(StreamSlot),
    None,
}

impl Release {
    /// The response was read to its end: the connection can serve again.
    pub fn complete(self) {
        match self {
            Release::Http1 { sender, pool } => pool.give_back(sender),
            Release::Http2(slot) => drop(slot),
            Release::None => {}
        }
    }
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
            cluster_stats,
            stats: Arc::default(),
            breaker,
            idle_h1: Mutex::new(Vec::new()),
            h2: Mutex::new(Vec::new()),
            h2_connecting: tokio::sync::Mutex::new(()),
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
        match self.protocol {
            UpstreamProtocol::Http1 => {
                let mut sender = self.checkout_h1().await?;
                let resp = sender.send_request(req).await.map_err(|e| classify_upstream(&e))?;
                Ok((
                    resp,
                    Release::Http1 {
                        sender,
                        pool: self.clone(),
                    },
                ))
            }
            UpstreamProtocol::Http2 => {
                let (mut sender, slot) = self.checkout_h2().await?;
                let resp = sender.send_request(req).await.map_err(|e| classify_upstream(&e))?;
                Ok((resp, Release::Http2(slot)))
            }
        }
    }

    /// An HTTP/1.1 connection for an upgrade (the connection is not returned).
    pub async fn send_upgrade(&self, req: Request<RequestBody>) -> Result<Response<Incoming>, ProxyError> {
        let mut sender = self.checkout_h1().await?;
        sender.send_request(req).await.map_err(|e| classify_upstream(&e))
    }

    async fn checkout_h1(&self) -> Result<http1::SendRequest<RequestBody>, ProxyError> {
        let now = Instant::now();
        if let Ok(mut idle) = self.idle_h1.lock() {
            while let Some((sender, since)) = idle.pop() {
                let expired = self.idle_timeout.is_some_and(|t| now.duration_since(since) > t);
                if !expired && sender.is_ready() {
                    return Ok(sender);
                }
                // Closed by the peer, or idle too long: dropping it closes it.
            }
        }
        let _pending = self.pending()?;
        let (stream, slot) = self.connect().await?;
        let (sender, conn) = match http1::Builder::new().handshake(TokioIo::new(stream)).await {
            Ok(pair) => pair,
            Err(e) => {
                self.cluster_stats.upstream_cx_active.dec();
                self.cluster_stats.upstream_cx_protocol_error.inc();
                return Err(classify_upstream(&e));
            }
        };
        self.cluster_stats.upstream_cx_http1_total.inc();
        let pool_stats = self.cluster_stats.clone();
        self.stats.cx_active.inc();
        let me = self.stats.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream HTTP/1.1 connection ended with an error");
            }
            pool_stats.upstream_cx_active.dec();
            me.cx_active.dec();
            drop(slot);
        });
        Ok(sender)
    }

    async fn checkout_h2(&self) -> Result<(http2::SendRequest<RequestBody>, StreamSlot), ProxyError> {
        if let Some(found) = self.find_h2() {
            return Ok(found);
        }
        let _one_at_a_time = self.h2_connecting.lock().await;
        // Someone else's handshake may have finished while we waited.
        if let Some(found) = self.find_h2() {
            return Ok(found);
        }
        let _pending = self.pending()?;
        let (stream, slot) = self.connect().await?;
        let handshake = http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(self.h2_stream_window)
            .initial_connection_window_size(self.h2_conn_window)
            .handshake(TokioIo::new(stream))
            .await;
        let (sender, conn) = match handshake {
            Ok(pair) => pair,
            Err(e) => {
                self.cluster_stats.upstream_cx_active.dec();
                self.cluster_stats.upstream_cx_protocol_error.inc();
                return Err(classify_upstream(&e));
            }
        };
        self.cluster_stats.upstream_cx_http2_total.inc();
        self.stats.cx_active.inc();
        let pool_stats = self.cluster_stats.clone();
        let me = self.stats.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
            }
            pool_stats.upstream_cx_active.dec();
            me.cx_active.dec();
            drop(slot);
        });
        let streams = Arc::new(AtomicUsize::new(1));
        if let Ok(mut conns) = self.h2.lock() {
            conns.retain(|c| !c.sender.is_closed());
            conns.push(H2Conn {
                sender: sender.clone(),
                streams: streams.clone(),
            });
        }
        Ok((sender, StreamSlot(streams)))
    }

    fn find_h2(&self) -> Option<(http2::SendRequest<RequestBody>, StreamSlot)> {
        let mut conns = self.h2.lock().ok()?;
        conns.retain(|c| !c.sender.is_closed());
        for c in conns.iter() {
            let n = c.streams.load(Relaxed);
            if n < self.h2_max_streams && c.sender.is_ready() {
                c.streams.fetch_add(1, Relaxed);
                return Some((c.sender.clone(), StreamSlot(c.streams.clone())));
            }
        }
        None
    }

    /// A request waiting for a new connection is pending (Envoy's
    /// `max_pending_requests`) until the connection is ready.
    fn pending(&self) -> Result<PendingGuard, ProxyError> {
        self.breaker.try_pending().ok_or_else(|| {
            self.cluster_stats.upstream_rq_pending_overflow.inc();
            ProxyError::Overflow("max_pending_requests")
        })
    }

    /// A new connection, within the cluster's `max_connections`. remora does
    /// not queue a request for a connection slot: at the limit it fails at
    /// once with overflow (503 UO), where Envoy would hold it pending (up to
    /// `max_pending_requests`) until a connection frees.
    async fn connect(&self) -> Result<(TcpStream, ConnGuard), ProxyError> {
        let stats = &self.cluster_stats;
        let Some(slot) = self.breaker.try_connection() else {
            stats.upstream_cx_overflow.inc();
            return Err(ProxyError::Overflow("max_connections"));
        };
        stats.upstream_cx_total.inc();
        let result = tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.address)).await;
        match result {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                stats.upstream_cx_active.inc();
                Ok((stream, slot))
            }
            Ok(Err(e)) => {
                stats.upstream_cx_connect_fail.inc();
                self.stats.cx_connect_fail.inc();
                Err(ProxyError::ConnectFailure(e))
            }
            Err(_) => {
                stats.upstream_cx_connect_fail.inc();
                stats.upstream_cx_connect_timeout.inc();
                self.stats.cx_connect_fail.inc();
                Err(ProxyError::ConnectTimeout)
            }
        }
    }

    /// A raw TCP connection to this endpoint (for `tcp_proxy`), counted in
    /// the cluster's connection stats; the caller decrements `upstream_cx_active`.
    pub async fn connect_tcp(&self) -> Result<(TcpStream, ConnGuard), ProxyError> {
        self.connect().await
    }

    fn give_back(&self, sender: http1::SendRequest<RequestBody>) {
        if sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle_h1.lock() {
            idle.push((sender, Instant::now()));
        }
    }
}
