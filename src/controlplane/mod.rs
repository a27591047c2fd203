//! The small xDS server used by tests and the demo (`remora control-plane`):
//! serves the resources of a directory (Envoy canonical JSON/YAML) to every
//! node over ADS, state of the world and Delta, pushes a new version when
//! the files change, and logs and records every ACK and NACK per node.
//! Tools and tests can also replace what is served over its own gRPC API
//! (`push.rs`, on the same port); a later change of the directory's files
//! replaces a pushed snapshot again.
//!
//! It is a development tool, not a production control plane: every node
//! gets the same resources, and nothing here feeds the proxy's own config.

mod delta;
pub mod push;
pub mod snapshot;
mod sotw;

use std::{
    collections::VecDeque,
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use envoy_types::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_server::{AggregatedDiscoveryService, AggregatedDiscoveryServiceServer},
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures_util::Stream;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

pub use snapshot::{Resource, Snapshot};

/// How often the directory is checked for changes (names, sizes, mtimes).
pub const POLL_INTERVAL: Duration = Duration::from_millis(300);
/// ACK/NACK records kept for `acks()`; older ones are dropped.
const MAX_RECORDS: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Sotw,
    Delta,
}

/// A client's answer to one response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckRecord {
    /// The node id the stream announced (empty if it never did).
    pub node: String,
    pub protocol: Protocol,
    pub type_url: String,
    /// The snapshot version of the response answered.
    pub version: String,
    pub nonce: String,
    /// The NACK's `error_detail` message; None for an ACK.
    pub error: Option<String>,
}

impl AckRecord {
    pub fn is_nack(&self) -> bool {
        self.error.is_some()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("cannot read the resource directory {path}: {source}")]
    ReadDir { path: PathBuf, source: std::io::Error },
    #[error("xDS server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// The control plane: a current snapshot, the directory it comes from (if
/// any), and the record of ACKs and NACKs. Cheap to clone; clones share all.
#[derive(Clone)]
pub struct ControlPlane {
    shared: Arc<Shared>,
}

struct Shared {
    dir: Option<PathBuf>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    /// The last version number handed out; held while publishing.
    versions: Mutex<u64>,
    records: Mutex<VecDeque<AckRecord>>,
    /// The directory as it was when last read.
    loaded: Mutex<Option<snapshot::DirStamp>>,
}

impl Default for ControlPlane {
    fn default() -> Self {
        ControlPlane::new()
    }
}

impl ControlPlane {
    /// A control plane with nothing to serve yet (version "0"); see `set_snapshot`.
    pub fn new() -> ControlPlane {
        ControlPlane::with_dir(None)
    }

    fn with_dir(dir: Option<PathBuf>) -> ControlPlane {
        let empty = Snapshot::new("0", Vec::new(), Vec::new());
        ControlPlane {
            shared: Arc::new(Shared {
                dir,
                snapshot: watch::Sender::new(Arc::new(empty)),
                versions: Mutex::new(0),
                records: Mutex::new(VecDeque::new()),
                loaded: Mutex::new(None),
            }),
        }
    }

    /// Serves the resource files of `dir` (`*.yaml`, `*.yml`, `*.json`), and
    /// follows their changes while `serve` runs. A file that does not decode
    /// is logged and left out; the others serve.
    pub fn from_dir(dir: impl Into<PathBuf>) -> Result<ControlPlane, ControlPlaneError> {
        let cp = ControlPlane::with_dir(Some(dir.into()));
        cp.reload()?;
        Ok(cp)
    }

    pub fn dir(&self) -> Option<&Path> {
        self.shared.dir.as_deref()
    }

    /// Replaces everything served (tests push resources without files).
    /// Returns the snapshot's version: a new one if the resources differ
    /// from those served, the current one otherwise.
    pub fn set_snapshot(&self, resources: Vec<Resource>) -> String {
        self.publish(resources, Vec::new())
    }

    /// Reads the directory again now and publishes what it holds. Returns
    /// the version served afterwards.
    pub fn reload(&self) -> Result<String, ControlPlaneError> {
        let Some(dir) = self.dir() else {
            return Ok(self.snapshot().version.clone());
        };
        let read_error = |source| ControlPlaneError::ReadDir {
            path: dir.to_path_buf(),
            source,
        };
        // Stamped before reading: a change made while reading is read again.
        let stamp = snapshot::dir_stamp(dir).map_err(read_error)?;
        let (resources, errors) = snapshot::load_dir(dir).map_err(read_error)?;
        *self.shared.loaded.lock().unwrap_or_else(PoisonError::into_inner) = Some(stamp);
        for e in &errors {
            tracing::warn!(error = %e, "resource file left out");
        }
        Ok(self.publish(resources, errors))
    }

    fn publish(&self, resources: Vec<Resource>, errors: Vec<String>) -> String {
        let mut last = self.shared.versions.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.snapshot();
        let mut next = Snapshot::new(current.version.clone(), resources, errors);
        if next.same_resources(&current) {
            if next.errors != current.errors {
                self.shared.snapshot.send_replace(Arc::new(next));
            }
            return current.version.clone();
        }
        *last += 1;
        next.version = last.to_string();
        let counts: Vec<String> = next
            .type_urls()
            .map(|t| format!("{} {}", next.resources(t).count(), snapshot::short_type(t)))
            .collect();
        tracing::info!(version = %next.version, resources = %counts.join(", "), "new snapshot");
        let version = next.version.clone();
        self.shared.snapshot.send_replace(Arc::new(next));
        version
    }

    /// What is served now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot.borrow().clone()
    }

    /// Wakes on every new snapshot.
    pub fn watch(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.shared.snapshot.subscribe()
    }

    /// Every ACK and NACK received so far (the last 10 000), oldest first.
    pub fn acks(&self) -> Vec<AckRecord> {
        let records = self.shared.records.lock().unwrap_or_else(PoisonError::into_inner);
        records.iter().cloned().collect()
    }

    fn record(&self, r: AckRecord) {
        let proto = match r.protocol {
            Protocol::Sotw => "SotW",
            Protocol::Delta => "Delta",
        };
        match &r.error {
            None => tracing::info!(node = %r.node, protocol = proto, type_url = %r.type_url, version = %r.version,
                nonce = %r.nonce, "ACK"),
            Some(e) => tracing::warn!(node = %r.node, protocol = proto, type_url = %r.type_url,
                version = %r.version, nonce = %r.nonce, error_detail = %e, "NACK"),
        }
        let mut records = self.shared.records.lock().unwrap_or_else(PoisonError::into_inner);
        if records.len() == MAX_RECORDS {
            records.pop_front();
        }
        records.push_back(r);
    }

    /// The gRPC service, to mount in a server of one's own. Its streams end
    /// when `stop` is cancelled (a graceful shutdown waits for them).
    pub fn service(
        &self,
        stop: CancellationToken,
    ) -> AggregatedDiscoveryServiceServer<impl AggregatedDiscoveryService> {
        AggregatedDiscoveryServiceServer::new(Ads { cp: self.clone(), stop })
    }

    /// Serves ADS on `listener` until `shutdown` completes, following the
    /// directory's changes (if any) meanwhile.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ControlPlaneError> {
        let stop = CancellationToken::new();
        let poller = self.dir().map(|_| tokio::spawn(poll_dir(self.clone(), stop.clone())));
        let signal = {
            let stop = stop.clone();
            async move {
                shutdown.await;
                stop.cancel();
            }
        };
        let result = tonic::transport::Server::builder()
            .add_service(self.service(stop.clone()))
            .add_service(push::Push::server(self.clone()))
            .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), signal)
            .await;
        stop.cancel();
        if let Some(p) = poller {
            let _ = p.await;
        }
        Ok(result?)
    }
}

/// Reloads the directory whenever its files' names, sizes or mtimes change.
async fn poll_dir(cp: ControlPlane, stop: CancellationToken) {
    let Some(dir) = cp.dir().map(Path::to_path_buf) else {
        return;
    };
    let stamp_of = |dir: PathBuf| async move {
        tokio::task::spawn_blocking(move || snapshot::dir_stamp(&dir))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    };
    // What the last reload read (files changed since then are read again).
    let mut last = cp.shared.loaded.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let mut readable = true;
    let mut interval = tokio::time::interval(POLL_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        let stamp = match stamp_of(dir.clone()).await {
            Ok(s) => s,
            Err(e) => {
                if readable {
                    tracing::warn!(dir = %dir.display(), error = %e,
                        "cannot read the resource directory; serving the last snapshot");
                }
                readable = false;
                continue;
            }
        };
        readable = true;
        if last.as_ref() == Some(&stamp) {
            continue;
        }
        last = Some(stamp);
        tracing::info!(dir = %dir.display(), "resource files changed; reloading");
        let reloader = cp.clone();
        match tokio::task::spawn_blocking(move || reloader.reload()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "reload failed; serving the last snapshot"),
            Err(e) => tracing::warn!(error = %e, "reload task failed; serving the last snapshot"),
        }
    }
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn response_stream<T: Send + 'static>(rx: mpsc::Receiver<Result<T, Status>>) -> ResponseStream<T> {
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|m| (m, rx))
    }))
}

/// Each stream is one task owning its state; responses go out through a
/// small channel (a slow client slows only its own task).
struct Ads {
    cp: ControlPlane,
    stop: CancellationToken,
}

fn peer<T>(req: &Request<T>) -> String {
    req.remote_addr()
        .map_or_else(|| "?".to_string(), |a: SocketAddr| a.to_string())
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let peer = peer(&req);
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(run_stream::<sotw::SotwStream>(
            req.into_inner(),
            tx,
            self.cp.clone(),
            self.stop.clone(),
            peer,
        ));
        Ok(Response::new(response_stream(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let peer = peer(&req);
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(run_stream::<delta::DeltaStream>(
            req.into_inner(),
            tx,
            self.cp.clone(),
            self.stop.clone(),
            peer,
        ));
        Ok(Response::new(response_stream(rx)))
    }
}

/// What one ADS stream's protocol variant (SotW or Delta) decides: pure state
/// over requests and snapshots, driven by the one loop in [`run_stream`].
pub(crate) trait StreamState: Default + Send + 'static {
    type Request: prost::Message + Default + Send + 'static;
    type Response: Send + 'static;
    const PROTOCOL: &'static str;
    fn node(&self) -> &str;
    /// The ACK or NACK a request carries (if any) and the response to send (if any).
    fn on_request(&mut self, req: Self::Request, snapshot: &Snapshot) -> (Option<AckRecord>, Option<Self::Response>);
    /// The responses a new snapshot calls for.
    fn on_snapshot(&mut self, snapshot: &Snapshot) -> Vec<Self::Response>;
    /// One log line's worth of a response.
    fn describe(resp: &Self::Response) -> String;
}

/// Serves one stream until the client goes away or the server stops.
async fn run_stream<S: StreamState>(
    mut requests: Streaming<S::Request>,
    tx: mpsc::Sender<Result<S::Response, Status>>,
    cp: ControlPlane,
    stop: CancellationToken,
    peer: String,
) {
    let mut snapshots = cp.watch();
    let mut snapshot: Arc<Snapshot> = snapshots.borrow_and_update().clone();
    let mut stream = S::default();
    let proto = S::PROTOCOL;
    tracing::info!(%peer, "{proto} ADS stream opened");
    let end = loop {
        let responses = tokio::select! {
            _ = stop.cancelled() => break "the control plane is stopping".to_string(),
            req = requests.message() => match req {
                Ok(Some(req)) => {
                    let (record, response) = stream.on_request(req, &snapshot);
                    if let Some(r) = record {
                        cp.record(r);
                    }
                    response.into_iter().collect::<Vec<_>>()
                }
                Ok(None) => break "closed by the client".to_string(),
                Err(status) => break format!("stream error: {status}"),
            },
            changed = snapshots.changed() => {
                if changed.is_err() {
                    break "the control plane is gone".to_string();
                }
                snapshot = snapshots.borrow_and_update().clone();
                stream.on_snapshot(&snapshot)
            }
        };
        for resp in responses {
            tracing::info!(node = %stream.node(), "{proto} push: {}", S::describe(&resp));
            if tx.send(Ok(resp)).await.is_err() {
                tracing::info!(node = %stream.node(), %peer, "{proto} ADS stream closed by the client");
                return;
            }
        }
    };
    tracing::info!(node = %stream.node(), %peer, "{proto} ADS stream ended: {end}");
}

/// `remora control-plane --fixtures DIR --listen ADDR`: serves until SIGTERM
/// or SIGINT. Returns the process exit code.
pub async fn run(fixtures: PathBuf, listen: SocketAddr) -> i32 {
    let cp = match ControlPlane::from_dir(&fixtures) {
        Ok(cp) => cp,
        Err(e) => {
            eprintln!("error: {e}");
            return crate::cli::EXIT_CONFIG;
        }
    };
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {listen}: {e}");
            return crate::cli::EXIT_RUNTIME;
        }
    };
    let snap = cp.snapshot();
    let address = listener
        .local_addr()
        .map_or_else(|_| listen.to_string(), |a| a.to_string());
    tracing::info!(%address, dir = %fixtures.display(), version = %snap.version, resources = snap.len(),
        left_out = snap.errors.len(), "control plane serving ADS (SotW and Delta) and its push API");
    match cp.serve(listener, stop_signal()).await {
        Ok(()) => {
            tracing::info!("control plane stopped");
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            crate::cli::EXIT_RUNTIME
        }
    }
}

async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        },
        _ => {
            tracing::warn!("cannot install signal handlers; running until killed");
            std::future::pending::<()>().await;
        }
    }
}
