//! The body of every response remora sends: an upstream's body streamed
//! through, or a local reply. One enum, not a box per request.
//!
//! An upstream body gives its connection back to the pool when it reaches
//! its end, and keeps enforcing the route timeout while it streams (Envoy's
//! route timeout covers the whole response, not just its headers), and the
//! stream's max duration and idle timeout (each frame is activity).

use std::{
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::{
    client::Release,
    stream_timers::{StreamReset, StreamTimers},
    upstream::Held,
};
use crate::telemetry::stats::ClusterStats;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub enum ProxyBody {
    Local(Option<Bytes>),
    Upstream(UpstreamBody),
}

pub struct UpstreamBody {
    inner: Incoming,
    release: Option<Release>,
    deadline: Option<Instant>,
    sleep: Option<Pin<Box<Sleep>>>,
    stats: Arc<ClusterStats>,
    timers: Option<StreamTimers>,
    timers_sleep: Option<Pin<Box<Sleep>>>,
    /// The request's slot of the cluster's `max_requests` and its place in
    /// the endpoint's active requests, held until the response has been
    /// streamed (Envoy counts a request active until then).
    _held: Held,
}

impl ProxyBody {
    pub fn empty() -> ProxyBody {
        ProxyBody::Local(None)
    }

    pub fn full(b: impl Into<Bytes>) -> ProxyBody {
        let b = b.into();
        ProxyBody::Local(if b.is_empty() { None } else { Some(b) })
    }

    pub fn upstream(
        inner: Incoming,
        release: Release,
        deadline: Option<Instant>,
        stats: Arc<ClusterStats>,
        held: Held,
        timers: Option<StreamTimers>,
    ) -> ProxyBody {
        let mut body = UpstreamBody {
            inner,
            release: Some(release),
            deadline,
            sleep: None,
            stats,
            timers,
            timers_sleep: None,
            _held: held,
        };
        if body.inner.is_end_stream() {
            body.finish();
        }
        ProxyBody::Upstream(body)
    }
}

impl UpstreamBody {
    fn finish(&mut self) {
        if let Some(r) = self.release.take() {
            r.complete();
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("upstream response timeout (route timeout reached while the body streamed)")]
pub struct BodyTimeout;

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Local(data) => Poll::Ready(data.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Upstream(body) => body.poll(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Local(data) => data.is_none(),
            ProxyBody::Upstream(body) => body.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Local(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Local(None) => SizeHint::with_exact(0),
            ProxyBody::Upstream(body) => body.inner.size_hint(),
        }
    }
}

impl UpstreamBody {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    self.stats.upstream_cx_rx_bytes_total.add(d.len() as u64);
                }
                if let Some(t) = &self.timers {
                    t.touch();
                }
                if self.inner.is_end_stream() {
                    self.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                self.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                // The connection is broken: dropping the release closes it.
                self.release = None;
                self.stats.upstream_rq_rx_reset.inc();
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Pending => {
                if let Some(t) = &self.timers {
                    if let Poll::Ready(expired) = t.poll_expired(&mut self.timers_sleep, cx) {
                        // The response has started: Envoy resets the stream.
                        self.release = None;
                        return Poll::Ready(Some(Err(Box::new(StreamReset(expired)))));
                    }
                }
                let Some(deadline) = self.deadline else {
                    return Poll::Pending;
                };
                // The timer is made only when a body actually has to wait.
                let sleep = self
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                ready!(sleep.as_mut().poll(cx));
                self.release = None;
                self.stats.upstream_rq_timeout.inc();
                Poll::Ready(Some(Err(Box::new(BodyTimeout))))
            }
        }
    }
}

use std::future::Future as _;
