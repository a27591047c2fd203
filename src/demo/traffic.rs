//! The demo's client side: which requests to send (one kind per route of the
//! fixture), and sending them through remora over keep-alive connections
//! that are kept from one burst to the next. It records answers; judging them
//! is for `report.rs` and the scenes.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{header, Request};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1 as client;
use hyper_util::rt::TokioIo;
use tokio::{
    net::TcpStream,
    sync::watch,
    task::{JoinHandle, JoinSet},
    time::timeout,
};

/// Client connections each burst is spread over (each keep-alive, reused).
pub(super) const CONNECTIONS: usize = 4;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const BURST_TIMEOUT: Duration = Duration::from_secs(60);
/// A cap on the requests `Client::send_until` sends, should its stop be slow.
const MAX_UNTIL: usize = 20_000;

/// The kinds of request the demo sends, one per route of the fixture (plus one with no route).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Split,
    Canary,
    Pinned,
    Health,
    NoRoute,
    Ratings,
    Details,
}

/// The kinds mixed in the weighted split's traffic; the other routes have scenes of their own.
pub(super) const KINDS: [Kind; 5] = [Kind::Split, Kind::Canary, Kind::Pinned, Kind::Health, Kind::NoRoute];

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Kind::Split | Kind::Canary => "/reviews",
            Kind::Pinned => "/v1/anything",
            Kind::Health => "/healthz",
            Kind::NoRoute => "/nope",
            Kind::Ratings => "/ratings",
            Kind::Details => "/details",
        }
    }

    fn extra_header(self) -> Option<(&'static str, &'static str)> {
        (self == Kind::Canary).then_some(("x-canary", "true"))
    }

    pub(super) fn request(self) -> String {
        match self.extra_header() {
            Some((k, v)) => format!("GET {} ({k}: {v})", self.path()),
            None => format!("GET {}", self.path()),
        }
    }

    /// What the config says about this request.
    pub(super) fn config(self, split: &str) -> String {
        match self {
            Kind::Split => format!("route split: weighted, {split}"),
            Kind::Canary => "route canary-header: header match -> reviews-v2".into(),
            Kind::Pinned => "route v1-pinned: prefix_rewrite /v1/ -> /, reviews-v1".into(),
            Kind::Health => "route health: direct_response 200 \"ok\"".into(),
            Kind::NoRoute => "no route matches: remora answers 404".into(),
            Kind::Ratings => "route ratings: retry_policy -> ratings".into(),
            Kind::Details => "route details -> details".into(),
        }
    }
}

/// One answered request, as the client saw it.
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) version: Option<String>,
    /// The sample instance that answered (`x-instance`); None: remora itself.
    pub(super) instance: Option<String>,
    pub(super) seen_path: Option<String>,
    /// `x-envoy-overloaded: true`: a circuit breaker answered.
    pub(super) overloaded: bool,
    pub(super) body: Bytes,
}

pub(super) struct Sample {
    pub(super) kind: Kind,
    pub(super) outcome: Result<Answer, String>,
    pub(super) latency: Duration,
}

/// The requests to send, shuffled: a couple with no route, about a tenth to
/// each of canary, pinned and health, and the rest to the weighted split.
pub(super) fn plan(requests: u32) -> Vec<Kind> {
    let n = requests as usize;
    let tenth = n.div_ceil(10);
    let mut plan = Vec::with_capacity(n);
    plan.extend(std::iter::repeat_n(Kind::NoRoute, if n >= 20 { 2 } else { 1 }));
    for kind in [Kind::Canary, Kind::Pinned, Kind::Health] {
        plan.extend(std::iter::repeat_n(kind, tenth.min(n.saturating_sub(plan.len() + 1))));
    }
    plan.extend(std::iter::repeat_n(Kind::Split, n.saturating_sub(plan.len())));
    fastrand::shuffle(&mut plan);
    plan
}

/// What a worker asks for its next request; None ends it.
type Source = Arc<dyn Fn() -> Option<Kind> + Send + Sync>;

/// Keep-alive connections to one address, kept across bursts (a connection
/// is only replaced when it broke), each sending one request at a time.
pub(super) struct Client {
    target: SocketAddr,
    conns: Vec<Option<Conn>>,
    opened: Arc<AtomicUsize>,
    /// Requests finished (answered or failed) so far, for those who wait on them.
    finished: Arc<watch::Sender<usize>>,
}

impl Client {
    /// A client with `CONNECTIONS` connections.
    pub(super) fn new(target: SocketAddr) -> Client {
        Client::with_connections(target, CONNECTIONS)
    }

    pub(super) fn with_connections(target: SocketAddr, connections: usize) -> Client {
        Client {
            target,
            conns: (0..connections.max(1)).map(|_| None).collect(),
            opened: Arc::new(AtomicUsize::new(0)),
            finished: Arc::new(watch::Sender::new(0)),
        }
    }

    /// Requests finished so far, updated as each one does.
    pub(super) fn finished(&self) -> watch::Receiver<usize> {
        self.finished.subscribe()
    }

    /// Connections opened so far.
    pub(super) fn opened(&self) -> usize {
        self.opened.load(Relaxed)
    }

    /// Sends the plan, each connection taking the next request when its previous one is answered.
    pub(super) async fn send(&mut self, plan: Vec<Kind>) -> Result<Vec<Sample>, String> {
        let next = AtomicUsize::new(0);
        let workers = self.spawn(Arc::new(move || plan.get(next.fetch_add(1, Relaxed)).copied()));
        self.join(workers).await
    }

    /// Sends `kind` back to back on every connection until `stop` completes
    /// (and at most `MAX_UNTIL` requests); returns what `stop` returned too.
    pub(super) async fn send_until<T>(
        &mut self,
        kind: Kind,
        stop: impl Future<Output = T>,
    ) -> (T, Result<Vec<Sample>, String>) {
        let stopped = Arc::new(AtomicBool::new(false));
        let sent = AtomicUsize::new(0);
        let source = {
            let stopped = stopped.clone();
            Arc::new(move || (!stopped.load(Relaxed) && sent.fetch_add(1, Relaxed) < MAX_UNTIL).then_some(kind))
        };
        let workers = self.spawn(source);
        let out = stop.await;
        stopped.store(true, Relaxed);
        (out, self.join(workers).await)
    }

    fn spawn(&mut self, source: Source) -> JoinSet<(usize, Option<Conn>, Vec<Sample>)> {
        let mut workers = JoinSet::new();
        for (slot, conn) in self.conns.iter_mut().enumerate() {
            workers.spawn(worker(
                slot,
                self.target,
                conn.take(),
                source.clone(),
                (self.opened.clone(), self.finished.clone()),
            ));
        }
        workers
    }

    /// Waits for the workers (bounded) and takes their connections back.
    async fn join(&mut self, mut workers: JoinSet<(usize, Option<Conn>, Vec<Sample>)>) -> Result<Vec<Sample>, String> {
        let conns = &mut self.conns;
        let all = async {
            let mut samples = Vec::new();
            while let Some(joined) = workers.join_next().await {
                let (slot, conn, mut s) = joined.map_err(|e| format!("a client task failed: {e}"))?;
                conns[slot] = conn;
                samples.append(&mut s);
            }
            Ok(samples)
        };
        timeout(BURST_TIMEOUT, all)
            .await
            .map_err(|_| format!("the requests did not finish within {BURST_TIMEOUT:?}"))?
    }
}

async fn worker(
    slot: usize,
    target: SocketAddr,
    mut conn: Option<Conn>,
    source: Source,
    (opened, finished): (Arc<AtomicUsize>, Arc<watch::Sender<usize>>),
) -> (usize, Option<Conn>, Vec<Sample>) {
    let host = target.to_string();
    let mut samples = Vec::new();
    while let Some(kind) = source() {
        if conn.as_ref().is_none_or(|c| c.sender.is_closed()) {
            match Conn::open(target).await {
                Ok(c) => {
                    opened.fetch_add(1, Relaxed);
                    conn = Some(c);
                }
                Err(e) => {
                    samples.push(Sample {
                        kind,
                        outcome: Err(e),
                        latency: Duration::ZERO,
                    });
                    finished.send_modify(|n| *n += 1);
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let started = Instant::now();
        let outcome = c.get(&host, kind.path(), kind.extra_header()).await;
        let latency = started.elapsed();
        if outcome.is_err() {
            conn = None; // its state is unknown: the next request opens another
        }
        samples.push(Sample { kind, outcome, latency });
        finished.send_modify(|n| *n += 1);
    }
    (slot, conn, samples)
}

/// One client HTTP/1.1 connection, reused for every request it sends.
struct Conn {
    sender: client::SendRequest<Empty<Bytes>>,
    driver: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Conn, String> {
        let stream = timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connecting to {addr} timed out"))?
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = timeout(CONNECT_TIMEOUT, client::handshake(TokioIo::new(stream)))
            .await
            .map_err(|_| format!("HTTP handshake with {addr} timed out"))?
            .map_err(|e| format!("HTTP handshake with {addr}: {e}"))?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Conn { sender, driver })
    }

    async fn get(&mut self, host: &str, path: &str, extra: Option<(&str, &str)>) -> Result<Answer, String> {
        let exchange = async {
            self.sender.ready().await.map_err(|e| format!("connection lost: {e}"))?;
            let mut req = Request::get(path).header(header::HOST, host);
            if let Some((name, value)) = extra {
                req = req.header(name, value);
            }
            let req = req.body(Empty::new()).map_err(|e| format!("bad request: {e}"))?;
            let resp = self
                .sender
                .send_request(req)
                .await
                .map_err(|e| format!("no response: {e}"))?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("response body: {e}"))?
                .to_bytes();
            let text = |name: &str| {
                parts
                    .headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            Ok(Answer {
                status: parts.status.as_u16(),
                version: text("x-version"),
                instance: text("x-instance"),
                seen_path: text("x-seen-path"),
                overloaded: text("x-envoy-overloaded").as_deref() == Some("true"),
                body,
            })
        };
        timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))?
    }
}

/// GETs a path from the admin server and returns the body as text (an error unless 200).
pub(super) async fn admin_get(admin: SocketAddr, path: &str) -> Result<String, String> {
    let mut conn = Conn::open(admin).await?;
    let answer = conn.get(&admin.to_string(), path, None).await?;
    if answer.status != 200 {
        return Err(format!("status {}", answer.status));
    }
    Ok(String::from_utf8_lossy(&answer.body).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_covers_every_route() {
        for n in [5, 6, 19, 20, 100, 200, 1000] {
            let p = plan(n);
            assert_eq!(p.len(), n as usize);
            for kind in KINDS {
                assert!(p.contains(&kind), "{n}: no {kind:?}");
            }
        }
        let p = plan(200);
        let count = |k| p.iter().filter(|&&x| x == k).count();
        assert_eq!(
            (count(Kind::NoRoute), count(Kind::Canary), count(Kind::Split)),
            (2, 20, 138)
        );
    }
}
