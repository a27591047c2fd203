//! Request mirroring (`request_mirror_policies`), as Envoy's router shadows a
//! request (router.cc, shadow_writer_impl.cc, async_client_impl.cc): for each
//! policy the request is chosen for, a copy goes to the mirror cluster in a
//! task of its own, fire and forget. The copy has the primary's headers as
//! they go upstream, `-shadow` appended to the host name, `x-envoy-internal:
//! true` and the proxy's address appended to `x-forwarded-for`; it has no
//! retries and the route timeout; its response is read and discarded, and it
//! counts in the mirror cluster's stats like any request.
//!
//! The body is streamed to the mirror as the primary reads it (Envoy 1.40's
//! streaming shadows), through a [`Tee`] inside the downstream body, so the
//! primary never waits for a mirror. A mirror that falls more than the replay
//! limit behind is cut off (its request reset) and counted in the primary
//! cluster's `retry_or_shadow_abandoned`, where Envoy would instead slow the
//! downstream down. A primary that stops reading the body cuts the mirrors off too.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering::Relaxed},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{
    header::{self, HeaderName, HeaderValue},
    uri::{Authority, Scheme},
    HeaderMap, Request, Uri, Version,
};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::{sync::mpsc, time::Instant};

use super::{
    body::ProxyBody,
    error::ProxyError,
    request::{append_xff, request_host},
    request_body::RequestBody,
    upstream::{self, Forwarded},
};
use crate::{
    balance::{ClusterMap, ClusterRuntime},
    config::{MirrorHost, MirrorPolicy, MirrorTarget, UpstreamProtocol},
    telemetry::stats::ClusterStats,
};

static X_ENVOY_INTERNAL: HeaderName = HeaderName::from_static("x-envoy-internal");

/// One piece of the body on its way to a mirror.
enum Piece {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
}

/// Copies the downstream body to the request's mirrors as it is read.
/// Dropped before the end, it cuts the mirrors off.
pub struct Tee {
    copies: Vec<Feed>,
    limit: usize,
    /// The primary cluster's stats, where an abandoned mirror is counted.
    primary: Arc<ClusterStats>,
}

struct Feed {
    tx: mpsc::UnboundedSender<Piece>,
    /// Bytes sent to the mirror and not yet taken by its upstream request.
    queued: Arc<AtomicUsize>,
}

impl Tee {
    pub fn frame(&mut self, frame: &Frame<Bytes>) {
        if let Some(data) = frame.data_ref() {
            let (limit, primary) = (self.limit, &self.primary);
            self.copies.retain(|c| {
                if c.queued.load(Relaxed) + data.len() > limit {
                    primary.retry_or_shadow_abandoned.inc();
                    return false;
                }
                c.queued.fetch_add(data.len(), Relaxed);
                c.tx.send(Piece::Data(data.clone())).is_ok()
            });
        } else if let Some(trailers) = frame.trailers_ref() {
            self.copies
                .retain(|c| c.tx.send(Piece::Trailers(trailers.clone())).is_ok());
        }
    }

    /// The body ended: every mirror still following gets the end.
    pub fn end(self) {
        for c in &self.copies {
            let _ = c.tx.send(Piece::End);
        }
    }
}

/// A mirror's copy of the body, fed by the [`Tee`].
pub struct MirrorBody {
    rx: mpsc::UnboundedReceiver<Piece>,
    queued: Arc<AtomicUsize>,
    done: bool,
}

/// The primary's body stopped before its end, or the mirror fell too far behind.
#[derive(Debug, thiserror::Error)]
#[error("mirror cut off before the end of the request body")]
pub struct MirrorCut;

impl Body for MirrorBody {
    type Data = Bytes;
    type Error = MirrorCut;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, MirrorCut>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let piece = std::task::ready!(self.rx.poll_recv(cx));
        Poll::Ready(match piece {
            Some(Piece::Data(b)) => {
                self.queued.fetch_sub(b.len(), Relaxed);
                Some(Ok(Frame::data(b)))
            }
            Some(Piece::Trailers(t)) => {
                self.done = true;
                Some(Ok(Frame::trailers(t)))
            }
            Some(Piece::End) => {
                self.done = true;
                None
            }
            None => {
                self.done = true;
                Some(Err(MirrorCut))
            }
        })
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// What mirroring a request needs besides the request.
pub struct Mirroring<'a> {
    pub clusters: &'a ClusterMap,
    /// The route timeout, the mirror's whole-request timeout.
    pub timeout: Option<Duration>,
    /// The downstream connection's local address, for `x-forwarded-for`.
    pub local: SocketAddr,
    pub primary: &'a Arc<ClusterStats>,
    /// How far a mirror may fall behind the primary in reading the body.
    pub limit: usize,
}

/// Starts the mirrors `policies` choose for `req` (its head as it goes
/// upstream): each gets its head now, in a task of its own. Returns the tee
/// that gives them the body, when there is a body and a mirror.
pub fn start<B: Body>(policies: &[MirrorPolicy], req: &Request<B>, m: &Mirroring<'_>) -> Option<Tee> {
    // Envoy draws one number per stream for every policy.
    let random = fastrand::u64(..);
    let bodiless = req.body().is_end_stream();
    let mut copies = Vec::new();
    for policy in policies.iter().filter(|p| p.chosen(random)) {
        let name = match &policy.target {
            MirrorTarget::Cluster(c) => c.as_str(),
            // Only the first value counts; no mirror without one.
            MirrorTarget::Header(h) => match req.headers().get(h).and_then(|v| v.to_str().ok()) {
                Some(v) if !v.is_empty() => v,
                _ => continue,
            },
        };
        let Some(cluster) = m.clusters.get(name).cloned() else {
            tracing::debug!(cluster = name, "mirror cluster does not exist");
            continue;
        };
        let h2 = cluster.config.protocol == UpstreamProtocol::Http2;
        let Some(head) = mirror_head(req, &policy.host, h2, m.local) else {
            continue;
        };
        let body = if bodiless {
            RequestBody::Replay(None, None)
        } else {
            let (tx, rx) = mpsc::unbounded_channel();
            let queued = Arc::new(AtomicUsize::new(0));
            copies.push(Feed {
                tx,
                queued: queued.clone(),
            });
            RequestBody::Mirror(MirrorBody {
                rx,
                queued,
                done: false,
            })
        };
        tokio::spawn(send(cluster, head.map(|()| body), m.timeout));
    }
    (!copies.is_empty()).then(|| Tee {
        copies,
        limit: m.limit,
        primary: m.primary.clone(),
    })
}

/// The mirror's request head: the primary's, with the mirror's host, the
/// headers Envoy's async client adds, in the mirror cluster's HTTP version.
fn mirror_head<B>(req: &Request<B>, host: &MirrorHost, h2: bool, local: SocketAddr) -> Option<Request<()>> {
    let original = request_host(req);
    let authority = match host {
        MirrorHost::ShadowSuffix => shadow_host(original),
        MirrorHost::Unchanged => original.to_string(),
        MirrorHost::Rewrite(h) => h.clone(),
    };
    let mut headers = req.headers().clone();
    headers.insert(&X_ENVOY_INTERNAL, HeaderValue::from_static("true"));
    append_xff(&mut headers, local);
    let path = req.uri().path_and_query().cloned();
    let mut out = Request::new(());
    *out.method_mut() = req.method().clone();
    if h2 {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(Authority::try_from(authority.as_str()).ok()?);
        parts.path_and_query = path;
        *out.uri_mut() = Uri::from_parts(parts).ok()?;
        headers.remove(header::HOST);
        *out.version_mut() = Version::HTTP_2;
    } else {
        headers.insert(header::HOST, HeaderValue::from_str(&authority).ok()?);
        *out.uri_mut() = path.map(Uri::from).unwrap_or_else(|| Uri::from_static("/"));
        *out.version_mut() = Version::HTTP_11;
    }
    *out.headers_mut() = headers;
    Some(out)
}

/// Envoy's shadow host: `-shadow` after the host name, before the port
/// (`host:port` splits in two); any other form gets it at the end.
pub fn shadow_host(host: &str) -> String {
    let parts: Vec<&str> = host.split(':').filter(|p| !p.is_empty()).collect();
    match parts.as_slice() {
        [name, port] => format!("{name}-shadow:{port}"),
        _ => format!("{host}-shadow"),
    }
}

/// Sends one mirror request and discards its response.
async fn send(cluster: Arc<ClusterRuntime>, req: Request<RequestBody>, timeout: Option<Duration>) {
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let mut host = None;
    // No retries, and no hash policy: Envoy's shadow goes through a route of its own.
    let sent = upstream::forward(
        &cluster,
        req,
        upstream::SendOptions {
            route_timeout: timeout,
            ..Default::default()
        },
        &mut host,
    );
    let stats = &cluster.stats;
    match upstream::with_deadline(deadline, sent).await {
        Ok(Forwarded {
            resp, release, held, ..
        }) => {
            stats.response(resp.status().as_u16());
            let body = resp.into_body();
            let mut body = ProxyBody::upstream(body, release, deadline, stats.clone(), held, None);
            while let Some(frame) = body.frame().await {
                if frame.is_err() {
                    break;
                }
            }
        }
        Err(e) => {
            if matches!(e, ProxyError::UpstreamTimeout) {
                stats.upstream_rq_timeout.inc();
            }
            tracing::debug!(cluster = %cluster.name(), host = ?host, error = %e, "mirror request failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed() -> (Feed, MirrorBody) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let body = MirrorBody {
            rx,
            queued: queued.clone(),
            done: false,
        };
        (Feed { tx, queued }, body)
    }

    fn tee(feeds: Vec<Feed>, limit: usize) -> (Tee, Arc<ClusterStats>) {
        let primary = Arc::new(ClusterStats::default());
        let tee = Tee {
            copies: feeds,
            limit,
            primary: primary.clone(),
        };
        (tee, primary)
    }

    // Streaming shadows: each frame reaches the mirror as the primary reads
    // it, trailers included, and the body ends with the primary's.
    #[tokio::test]
    async fn the_tee_copies_frames_and_the_end() {
        let (f, mut body) = feed();
        let (mut t, stats) = tee(vec![f], 8);
        t.frame(&Frame::data(Bytes::from_static(b"abcd")));
        assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "abcd");
        t.frame(&Frame::data(Bytes::from_static(b"efgh")));
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        t.frame(&Frame::trailers(trailers.clone()));
        t.end();
        assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "efgh");
        assert_eq!(body.frame().await.unwrap().unwrap().into_trailers().unwrap(), trailers);
        assert!(body.frame().await.is_none());
        assert!(body.is_end_stream());
        assert_eq!(stats.retry_or_shadow_abandoned.get(), 0);
    }

    // A mirror more than the limit behind is cut off and counted; the others
    // go on. A primary body that stops early cuts every mirror off.
    #[tokio::test]
    async fn lagging_or_orphaned_mirrors_are_cut_off() {
        let (slow, mut slow_body) = feed();
        let (quick, mut quick_body) = feed();
        let (mut t, stats) = tee(vec![slow, quick], 8);
        t.frame(&Frame::data(Bytes::from_static(b"12345")));
        assert_eq!(quick_body.frame().await.unwrap().unwrap().into_data().unwrap(), "12345");
        t.frame(&Frame::data(Bytes::from_static(b"6789")));
        assert_eq!(stats.retry_or_shadow_abandoned.get(), 1);
        assert_eq!(slow_body.frame().await.unwrap().unwrap().into_data().unwrap(), "12345");
        assert!(slow_body.frame().await.unwrap().is_err(), "cut off");
        assert_eq!(quick_body.frame().await.unwrap().unwrap().into_data().unwrap(), "6789");
        drop(t);
        assert!(
            quick_body.frame().await.unwrap().is_err(),
            "the primary stopped reading"
        );
    }

    // Envoy's async client: the mirror has the primary's head with the
    // mirror's host, x-envoy-internal and the proxy in x-forwarded-for, in
    // the form the mirror cluster speaks.
    #[test]
    fn mirror_heads() {
        let local: SocketAddr = "10.1.2.3:15001".parse().unwrap();
        let h1 = Request::post("/p?q=1")
            .header("host", "svc:8080")
            .header("x-forwarded-for", "192.0.2.9")
            .body(())
            .unwrap();
        let m = mirror_head(&h1, &MirrorHost::ShadowSuffix, true, local).unwrap();
        assert_eq!(m.uri(), "http://svc-shadow:8080/p?q=1");
        assert_eq!(m.version(), Version::HTTP_2);
        assert!(m.headers().get(header::HOST).is_none());
        assert_eq!(m.headers()["x-forwarded-for"], "192.0.2.9,10.1.2.3");
        assert_eq!(m.headers()["x-envoy-internal"], "true");
        let h2 = Request::get("http://svc/x").body(()).unwrap();
        let m = mirror_head(&h2, &MirrorHost::Rewrite("other".into()), false, local).unwrap();
        assert_eq!((m.uri().to_string().as_str(), m.version()), ("/x", Version::HTTP_11));
        assert_eq!(m.headers()[header::HOST], "other");
        let m = mirror_head(&h2, &MirrorHost::Unchanged, false, local).unwrap();
        assert_eq!(m.headers()[header::HOST], "svc");
    }

    // Envoy's shadow_writer: "-shadow" goes before the port of host:port, at
    // the end otherwise.
    #[test]
    fn shadow_hosts() {
        for (host, want) in [
            ("svc.example", "svc.example-shadow"),
            ("svc.example:8080", "svc.example-shadow:8080"),
            ("10.0.0.1:80", "10.0.0.1-shadow:80"),
            ("[::1]:80", "[::1]:80-shadow"),
            ("", "-shadow"),
        ] {
            assert_eq!(shadow_host(host), want, "{host}");
        }
    }
}
