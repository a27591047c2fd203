//! L4 forwarding (`tcp_proxy`): pick a cluster and endpoint, connect, and
//! copy bytes both ways until one side closes or the idle timeout passes.

use std::{
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_util::sync::CancellationToken;

use crate::{
    balance::ClusterMap,
    config::{ClusterTarget, TcpProxy},
    http::proxy::ConnInfo,
    telemetry::stats::{ActiveGuard, TcpStats},
};

pub struct TcpProxyRuntime {
    pub config: Arc<TcpProxy>,
    pub clusters: Arc<arc_swap::ArcSwap<ClusterMap>>,
    pub stats: Arc<TcpStats>,
}

impl TcpProxyRuntime {
    pub async fn handle(&self, downstream: TcpStream, conn: ConnInfo, _drain: CancellationToken) {
        let stats = &self.stats;
        stats.downstream_cx_total.inc();
        let name = match &self.config.target {
            ClusterTarget::Single(n) => n.as_str(),
            ClusterTarget::Weighted(w) => w.pick(fastrand::u64(..w.total)).name.as_str(),
        };
        let Some(cluster) = self.clusters.load().get(name).cloned() else {
            stats.downstream_cx_no_route.inc();
            return;
        };
        let Some(endpoint) = cluster.pick() else {
            cluster.stats.upstream_cx_none_healthy.inc();
            tracing::debug!(cluster = name, "tcp: no healthy upstream (UH)");
            return;
        };
        let (upstream, _cx_slot) = match endpoint.connect_tcp().await {
            Ok(s) => s,
            Err(e) => {
                // As Envoy: the downstream connection is closed (flag UF).
                tracing::debug!(cluster = name, peer = %conn.remote, error = %e, "tcp: upstream connect failed (UF)");
                return;
            }
        };
        let _cx = ActiveGuard::new(&endpoint.stats.cx_active);
        let epoch = Instant::now();
        let last = Arc::new(AtomicU64::new(0));
        let mut down = Activity {
            inner: downstream,
            last: last.clone(),
            epoch,
        };
        let mut up = Activity {
            inner: upstream,
            last: last.clone(),
            epoch,
        };
        let copy = tokio::io::copy_bidirectional(&mut down, &mut up);
        let result = match self.config.idle_timeout {
            None => copy.await,
            Some(idle) => {
                tokio::pin!(copy);
                loop {
                    let since = Duration::from_millis(last.load(Relaxed));
                    let wake = epoch + since + idle;
                    tokio::select! {
                        r = copy.as_mut() => break r,
                        _ = tokio::time::sleep_until(wake.into()) => {
                            if epoch.elapsed() >= Duration::from_millis(last.load(Relaxed)) + idle {
                                stats.idle_timeout.inc();
                                break Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"));
                            }
                        }
                    }
                }
            }
        };
        match result {
            Ok((from_down, from_up)) => {
                stats.downstream_cx_rx_bytes_total.add(from_down);
                stats.downstream_cx_tx_bytes_total.add(from_up);
                cluster.stats.upstream_cx_tx_bytes_total.add(from_down);
                cluster.stats.upstream_cx_rx_bytes_total.add(from_up);
            }
            Err(e) => tracing::debug!(cluster = name, error = %e, "tcp: connection ended"),
        }
        cluster.stats.upstream_cx_active.dec();
    }
}

/// A stream that notes when bytes last moved, for the idle timeout.
struct Activity<S> {
    inner: S,
    last: Arc<AtomicU64>,
    epoch: Instant,
}

impl<S> Activity<S> {
    fn touch(&self) {
        self.last.store(self.epoch.elapsed().as_millis() as u64, Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Activity<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Activity<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
