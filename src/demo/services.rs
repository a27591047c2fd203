//! The demo's sample upstreams: the instances behind each cluster of the
//! fixture ("reviews" v1 and v2, "ratings", "details") on loopback. Each says
//! which instance answered and which path it saw, counts what it received,
//! and misbehaves on command: 503 to everything, flaky (503s and dropped
//! connections), or holding requests until released. Nothing else.

use std::{
    convert::Infallible,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicU64, AtomicU8, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1 as server, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{
    net::TcpListener,
    sync::watch,
    task::{JoinHandle, JoinSet},
};
use tokio_util::sync::CancellationToken;

/// The sample instances, by the cluster whose endpoints they are, in the
/// order of that cluster's endpoints in the fixture.
pub(super) const TOPOLOGY: [(&str, &[&str]); 4] = [
    ("reviews-v1", &["v1"]),
    ("reviews-v2", &["v2-a", "v2-b"]),
    ("ratings", &["ratings-a", "ratings-b"]),
    ("details", &["details"]),
];

/// What an instance does with the requests it gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Behaviour {
    /// 200, naming itself.
    Healthy,
    /// 503 to every request.
    Failing,
    /// Of every 10 requests, 503 to the 3rd and the 9th and the 6th's
    /// connection closed without an answer (30% failures, never two in a row).
    Flaky,
    /// Holds every request until `release`, then 200.
    Holding,
}

impl Behaviour {
    const ALL: [Behaviour; 4] = [
        Behaviour::Healthy,
        Behaviour::Failing,
        Behaviour::Flaky,
        Behaviour::Holding,
    ];
}

/// What an instance received, and how it failed them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Counts {
    pub(super) received: u64,
    pub(super) answered_503: u64,
    pub(super) reset: u64,
}

impl Counts {
    pub(super) fn failed(&self) -> u64 {
        self.answered_503 + self.reset
    }

    /// Counts since `earlier`.
    pub(super) fn since(&self, earlier: Counts) -> Counts {
        Counts {
            received: self.received - earlier.received,
            answered_503: self.answered_503 - earlier.answered_503,
            reset: self.reset - earlier.reset,
        }
    }
}

/// The command side of an instance, shared with its connections.
struct Control {
    behaviour: AtomicU8,
    /// Requests seen since the behaviour was last set (the flaky pattern's position).
    sequence: AtomicU64,
    received: AtomicU64,
    answered_503: AtomicU64,
    reset: AtomicU64,
    /// Requests held right now.
    held: watch::Sender<usize>,
    /// Lets held requests go once true.
    released: watch::Sender<bool>,
}

impl Control {
    fn behaviour(&self) -> Behaviour {
        let n = usize::from(self.behaviour.load(Relaxed));
        Behaviour::ALL.get(n).copied().unwrap_or(Behaviour::Healthy)
    }
}

/// One sample instance: answers 200 `<service> <version>` (or its name) with
/// `x-instance`, `x-version` for reviews, and the path it saw in
/// `x-seen-path`. Stops when dropped.
pub(super) struct Instance {
    pub(super) name: &'static str,
    pub(super) cluster: &'static str,
    pub(super) addr: SocketAddr,
    control: Arc<Control>,
    task: JoinHandle<()>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection.
        self.task.abort();
    }
}

impl Instance {
    async fn start(cluster: &'static str, name: &'static str) -> Result<Instance, String> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(|e| format!("sample instance {name} cannot bind 127.0.0.1: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("sample instance {name}: {e}"))?;
        let control = Arc::new(Control {
            behaviour: AtomicU8::new(Behaviour::Healthy as u8),
            sequence: AtomicU64::new(0),
            received: AtomicU64::new(0),
            answered_503: AtomicU64::new(0),
            reset: AtomicU64::new(0),
            held: watch::Sender::new(0),
            released: watch::Sender::new(true),
        });
        let identity = Identity {
            name,
            version: cluster.strip_prefix("reviews-"),
            body: match cluster.strip_prefix("reviews-") {
                Some(v) => Bytes::from(format!("reviews {v}\n")),
                None => Bytes::from(format!("{name}\n")),
            },
        };
        let task = tokio::spawn(accept_loop(listener, identity, control.clone()));
        Ok(Instance {
            name,
            cluster,
            addr,
            control,
            task,
        })
    }

    pub(super) fn set(&self, behaviour: Behaviour) {
        if behaviour == Behaviour::Holding {
            self.control.released.send_replace(false);
        }
        self.control.sequence.store(0, Relaxed);
        self.control.behaviour.store(behaviour as u8, Relaxed);
    }

    /// Lets every held request go, and answers normally from now on.
    pub(super) fn release(&self) {
        self.set(Behaviour::Healthy);
        self.control.released.send_replace(true);
    }

    pub(super) fn counts(&self) -> Counts {
        Counts {
            received: self.control.received.load(Relaxed),
            answered_503: self.control.answered_503.load(Relaxed),
            reset: self.control.reset.load(Relaxed),
        }
    }

    /// How many requests it holds, updated as they arrive and leave.
    pub(super) fn held(&self) -> watch::Receiver<usize> {
        self.control.held.subscribe()
    }
}

/// Every sample instance of `TOPOLOGY`.
pub(super) struct Services {
    instances: Vec<Instance>,
}

impl Services {
    pub(super) async fn start() -> Result<Services, String> {
        let mut instances = Vec::new();
        for (cluster, names) in TOPOLOGY {
            for &name in names {
                instances.push(Instance::start(cluster, name).await?);
            }
        }
        Ok(Services { instances })
    }

    /// The instance named `name`: one of `TOPOLOGY`'s names.
    pub(super) fn get(&self, name: &str) -> Result<&Instance, String> {
        self.instances
            .iter()
            .find(|i| i.name == name)
            .ok_or_else(|| format!("the demo has no sample instance {name}"))
    }

    /// The addresses of `cluster`'s instances, in `TOPOLOGY`'s order.
    pub(super) fn addrs(&self, cluster: &str) -> Vec<SocketAddr> {
        self.of(cluster).map(|i| i.addr).collect()
    }

    pub(super) fn of<'a>(&'a self, cluster: &'a str) -> impl Iterator<Item = &'a Instance> + 'a {
        self.instances.iter().filter(move |i| i.cluster == cluster)
    }

    /// Requests received by all of `cluster`'s instances.
    pub(super) fn received(&self, cluster: &str) -> u64 {
        self.of(cluster).map(|i| i.counts().received).sum()
    }

    /// "reviews-v1 (v1), reviews-v2 (v2-a, v2-b), ..."
    pub(super) fn describe(&self) -> String {
        TOPOLOGY
            .iter()
            .map(|(cluster, names)| format!("{cluster} ({})", names.join(", ")))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// How an instance names itself in its answers.
#[derive(Clone)]
struct Identity {
    name: &'static str,
    /// `x-version` for the reviews instances.
    version: Option<&'static str>,
    body: Bytes,
}

async fn accept_loop(listener: TcpListener, identity: Identity, control: Arc<Control>) {
    let mut connections = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of file descriptors, most likely: give the others a moment.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let _ = stream.set_nodelay(true);
        let (identity, control) = (identity.clone(), control.clone());
        connections.spawn(async move {
            // Cancelled by a request whose connection must close without an answer.
            let drop_connection = CancellationToken::new();
            let svc = {
                let drop_connection = drop_connection.clone();
                service_fn(move |req: Request<Incoming>| {
                    let (identity, control, drop_connection) =
                        (identity.clone(), control.clone(), drop_connection.clone());
                    async move { Ok::<_, Infallible>(answer(&identity, &control, &req, &drop_connection).await) }
                })
            };
            tokio::select! {
                _ = server::Builder::new().serve_connection(TokioIo::new(stream), svc) => {}
                // Dropping the connection closes the socket with the request unanswered.
                _ = drop_connection.cancelled() => {}
            }
        });
    }
}

async fn answer(
    identity: &Identity,
    control: &Control,
    req: &Request<Incoming>,
    drop_connection: &CancellationToken,
) -> Response<Full<Bytes>> {
    control.received.fetch_add(1, Relaxed);
    let status = match control.behaviour() {
        Behaviour::Healthy => StatusCode::OK,
        Behaviour::Failing => StatusCode::SERVICE_UNAVAILABLE,
        Behaviour::Flaky => match control.sequence.fetch_add(1, Relaxed) % 10 {
            2 | 8 => StatusCode::SERVICE_UNAVAILABLE,
            5 => {
                control.reset.fetch_add(1, Relaxed);
                drop_connection.cancel();
                // The connection, and this future with it, is dropped now.
                return std::future::pending().await;
            }
            _ => StatusCode::OK,
        },
        Behaviour::Holding => {
            let mut released = control.released.subscribe();
            let _held = Held::new(&control.held);
            // Err only when the instance is gone, which lets the request go too.
            let _ = released.wait_for(|r| *r).await;
            StatusCode::OK
        }
    };
    let mut resp = Response::new(Full::new(identity.body.clone()));
    if status != StatusCode::OK {
        control.answered_503.fetch_add(1, Relaxed);
        *resp.status_mut() = status;
        *resp.body_mut() = Full::new(Bytes::from(format!("{} is failing on purpose\n", identity.name)));
    }
    let headers = resp.headers_mut();
    headers.insert("x-instance", HeaderValue::from_static(identity.name));
    if let Some(version) = identity.version {
        headers.insert("x-version", HeaderValue::from_static(version));
    }
    if let Ok(path) = HeaderValue::from_str(req.uri().path()) {
        headers.insert("x-seen-path", path);
    }
    resp
}

/// One held request, counted in `held` until it is answered or dropped.
struct Held<'a>(&'a watch::Sender<usize>);

impl<'a> Held<'a> {
    fn new(held: &'a watch::Sender<usize>) -> Self {
        held.send_modify(|n| *n += 1);
        Held(held)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaviours_round_trip_through_their_number() {
        for b in Behaviour::ALL {
            assert_eq!(Behaviour::ALL.get(b as usize), Some(&b));
        }
    }

    #[test]
    fn counts_since_an_earlier_reading() {
        let before = Counts {
            received: 10,
            answered_503: 2,
            reset: 1,
        };
        let now = Counts {
            received: 30,
            answered_503: 6,
            reset: 3,
        };
        assert_eq!(
            now.since(before),
            Counts {
                received: 20,
                answered_503: 4,
                reset: 2
            }
        );
        assert_eq!(now.failed(), 9);
    }
}
