//! The ADS client: one task that owns the gRPC stream to the control plane,
//! the subscriptions, versions and nonces, and answers every response with an
//! ACK or a NACK. Resources go through the same `translate` as static
//! bootstraps; what translates is applied to the running proxy, and the last
//! good config keeps serving whatever happens to the stream.
//!
//! State of the world here, incremental (Delta) in `delta.rs`, chosen by the
//! bootstrap's `api_type`. CDS and LDS are wildcard subscriptions; RDS and EDS
//! subscriptions follow the names the listeners and clusters refer to (see
//! `state.rs`, which both variants share).
//!
//! Per Envoy, within one response each resource stands alone: the valid
//! ones are applied, an invalid one keeps its previous version (if any), and
//! the response is NACKed naming every resource and field that failed.

mod delta;
mod state;

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use envoy_types::pb::{
    envoy::{
        config::core::v3::Node,
        service::discovery::v3::{
            aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DiscoveryRequest, DiscoveryResponse,
        },
    },
    google::rpc::Status,
};
use state::{known_type, State};
pub use state::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE};
use tokio_util::sync::CancellationToken;

use super::decode::release_memory;
use crate::{config, proxy::Proxy};

/// Reconnect backoff: jittered exponential, bounded (Envoy's defaults: 500 ms base, 30 s max).
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What the client needs from the bootstrap.
pub struct AdsConfig {
    pub server: SocketAddr,
    pub connect_timeout: Duration,
    pub node: config::Node,
    pub dynamic: config::DynamicResources,
    pub static_clusters: Vec<Arc<config::Cluster>>,
    pub static_listeners: Vec<Arc<config::Listener>>,
}

impl AdsConfig {
    /// Finds the ADS cluster's endpoint among the static clusters.
    pub fn from_bootstrap(b: &config::Bootstrap) -> Result<Option<AdsConfig>, String> {
        let Some(dynamic) = b.dynamic.clone() else {
            return Ok(None);
        };
        let cluster = b
            .clusters
            .iter()
            .find(|c| c.name == dynamic.ads_cluster)
            .ok_or_else(|| format!("ADS cluster '{}' is not a static cluster", dynamic.ads_cluster))?;
        let server = cluster
            .endpoints
            .first()
            .map(|e| e.address)
            .ok_or_else(|| format!("ADS cluster '{}' has no endpoint", cluster.name))?;
        Ok(Some(AdsConfig {
            server,
            connect_timeout: cluster.connect_timeout,
            node: b.node.clone(),
            dynamic,
            static_clusters: b.clusters.clone(),
            static_listeners: b.listeners.clone(),
        }))
    }
}

/// Runs the client until `shutdown`: connects, subscribes, applies, and
/// reconnects with backoff when the stream breaks. Marks the proxy ready once
/// the first CDS and LDS responses are applied, or `initial_fetch_timeout`
/// passed, as Envoy does.
pub async fn run(proxy: Arc<Proxy>, cfg: AdsConfig, shutdown: CancellationToken) {
    let fetch_timeout = cfg.dynamic.initial_fetch_timeout;
    if let Ok(mut status) = proxy.state.xds.lock() {
        status.server = Some(cfg.server.to_string());
    }
    let server = cfg.server;
    let state = Arc::new(std::sync::Mutex::new(State::new(cfg)));
    let ready_timer = {
        let proxy = proxy.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if !fetch_timeout.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(fetch_timeout) => {
                        tracing::warn!(timeout = ?fetch_timeout, "initial xDS fetch timed out: serving what is there");
                        proxy.mark_ready();
                    }
                    _ = shutdown.cancelled() => {}
                }
            }
        })
    };
    let mut backoff = BACKOFF_BASE;
    loop {
        let started = Instant::now();
        let result = tokio::select! {
            r = stream_once(&proxy, &state) => r,
            _ = shutdown.cancelled() => break,
        };
        set_connected(&proxy, false);
        match result {
            Ok(()) => tracing::warn!(server = %server, "xDS stream closed by the server; reconnecting"),
            Err(e) => tracing::warn!(server = %server, error = %e, "xDS stream failed; reconnecting"),
        }
        // A stream that lived a while resets the backoff.
        if started.elapsed() > BACKOFF_MAX {
            backoff = BACKOFF_BASE;
        }
        // Full jitter, bounded: wait a random time up to the current step.
        let wait = Duration::from_millis(fastrand::u64(
            backoff.as_millis() as u64 / 2..=backoff.as_millis() as u64,
        ));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => break,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    ready_timer.abort();
}

fn set_connected(proxy: &Proxy, connected: bool) {
    if let Ok(mut status) = proxy.state.xds.lock() {
        status.connected = connected;
    }
}

#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("stream: {0}")]
    Status(#[from] tonic::Status),
    #[error("the request queue closed")]
    Closed,
}

type Client = AggregatedDiscoveryServiceClient<tonic::transport::Channel>;

/// The ADS client's state, shared between its stream task and the blocking
/// pool where responses are processed; only that one task ever locks it.
type Shared = Arc<std::sync::Mutex<State>>;

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, State> {
    // A panic while holding it cannot leave half-applied state visible to
    // traffic (the proxy swaps whole snapshots), so carry on.
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs response processing (decoding with the 15 MB reflection pool,
/// translating, applying) on the blocking pool, so a large update never
/// stalls the worker threads that carry traffic.
async fn off_thread<R: Send + 'static>(
    proxy: &Arc<Proxy>,
    state: &Shared,
    f: impl FnOnce(&Proxy, &mut State) -> R + Send + 'static,
) -> Result<R, StreamError> {
    let (proxy, state) = (proxy.clone(), state.clone());
    tokio::task::spawn_blocking(move || f(&proxy, &mut lock(&state)))
        .await
        .map_err(|_| StreamError::Closed)
}

async fn connect(server: SocketAddr, timeout: Duration) -> Result<Client, StreamError> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{server}"))
        .map_err(StreamError::Connect)?
        .connect_timeout(timeout);
    let channel = endpoint.connect().await?;
    // A large EDS or CDS response can be tens of MB.
    Ok(AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024))
}

fn node_of(state: &State) -> Node {
    Node {
        id: state.cfg.node.id.clone(),
        cluster: state.cfg.node.cluster.clone(),
        ..Default::default()
    }
}

async fn stream_once(proxy: &Arc<Proxy>, state: &Shared) -> Result<(), StreamError> {
    let (server, timeout, delta, node) = {
        let st = lock(state);
        (
            st.cfg.server,
            st.cfg.connect_timeout,
            st.cfg.dynamic.delta,
            node_of(&st),
        )
    };
    if delta {
        return delta::stream_once(proxy, state, connect(server, timeout).await?, node).await;
    }
    let mut client = connect(server, timeout).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<DiscoveryRequest>(16);
    // Subscribe (again, after a reconnect) with the versions we hold, CDS
    // first: listeners refer to clusters. RDS and EDS names held from before a
    // reconnect are subscribed again; a new stream has no nonces.
    let initial = {
        let mut st = lock(state);
        let mut reqs = Vec::new();
        for (enabled, type_url) in [(st.cfg.dynamic.cds, CLUSTER_TYPE), (st.cfg.dynamic.lds, LISTENER_TYPE)] {
            if enabled {
                reqs.push(DiscoveryRequest {
                    node: Some(node.clone()),
                    type_url: type_url.to_string(),
                    version_info: st.versions.get(type_url).cloned().unwrap_or_default(),
                    ..Default::default()
                });
            }
        }
        st.nonces.clear();
        st.subscribed.clear();
        reqs.extend(subscription_changes(&mut st, &node));
        reqs
    };
    for req in initial {
        tx.send(req).await.map_err(|_| StreamError::Closed)?;
    }
    let responses = client
        .stream_aggregated_resources(tokio_stream_from(rx))
        .await?
        .into_inner();
    tracing::info!(server = %server, "xDS stream open");
    answer_responses(
        proxy,
        state,
        &tx,
        responses,
        node,
        handle_response,
        subscription_changes,
    )
    .await
}

/// The response loop both variants share: each response is processed off
/// the traffic threads, answered (ACK/NACK), followed by any subscription
/// changes it caused, and the proxy is marked ready once the config is warm.
async fn answer_responses<Req, Resp>(
    proxy: &Arc<Proxy>,
    state: &Shared,
    tx: &tokio::sync::mpsc::Sender<Req>,
    mut responses: tonic::Streaming<Resp>,
    node: Node,
    handle: fn(&Proxy, &mut State, Resp, &Node) -> Req,
    subscriptions: fn(&mut State, &Node) -> Vec<Req>,
) -> Result<(), StreamError>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    set_connected(proxy, true);
    while let Some(resp) = responses.message().await? {
        let node = node.clone();
        let (reply, changes, warm) = off_thread(proxy, state, move |proxy, st| {
            let reply = handle(proxy, st, resp, &node);
            (reply, subscriptions(st, &node), st.warm())
        })
        .await?;
        tx.send(reply).await.map_err(|_| StreamError::Closed)?;
        for req in changes {
            tx.send(req).await.map_err(|_| StreamError::Closed)?;
        }
        if warm {
            proxy.mark_ready();
        }
    }
    Ok(())
}

fn tokio_stream_from<T: Send + 'static>(rx: tokio::sync::mpsc::Receiver<T>) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) })
}

/// RDS and EDS requests for names that changed since the last subscription.
fn subscription_changes(state: &mut State, node: &Node) -> Vec<DiscoveryRequest> {
    let mut out = Vec::new();
    for type_url in [ENDPOINT_TYPE, ROUTE_TYPE] {
        let wanted = state.wanted(type_url);
        let current = state.subscribed.get(type_url);
        // Nothing to say until something is wanted (an empty first request
        // would be a wildcard subscription).
        if current == Some(&wanted) || (current.is_none() && wanted.is_empty()) {
            continue;
        }
        out.push(DiscoveryRequest {
            node: Some(node.clone()),
            type_url: type_url.to_string(),
            resource_names: wanted.iter().cloned().collect(),
            version_info: state.versions.get(type_url).cloned().unwrap_or_default(),
            response_nonce: state.nonces.get(type_url).cloned().unwrap_or_default(),
            ..Default::default()
        });
        state.subscribed.insert(type_url, wanted);
    }
    out
}

/// Applies one response and returns its ACK or NACK.
fn handle_response(proxy: &Proxy, state: &mut State, resp: DiscoveryResponse, node: &Node) -> DiscoveryRequest {
    let Some(type_url) = known_type(&resp.type_url) else {
        tracing::warn!(type_url = %resp.type_url, "xDS response of an unexpected type");
        let detail = format!("unexpected type_url {}", resp.type_url);
        return nack(resp.type_url.clone(), String::new(), resp.nonce, node, detail);
    };
    state.nonces.insert(type_url, resp.nonce.clone());
    let report = state.apply(proxy, type_url, &resp.resources);
    release_memory();
    if let Ok(mut status) = proxy.state.xds.lock() {
        status.record(type_url, &resp.version_info, &report.accepted, &report.rejected);
        let names = state.names(type_url);
        status.retain(type_url, |n| names.contains(n));
    }
    let errors = report.errors;
    if errors.is_empty() {
        tracing::info!(type_url, version = %resp.version_info, resources = resp.resources.len(), "xDS update applied (ACK)");
        state.versions.insert(type_url, resp.version_info.clone());
        DiscoveryRequest {
            version_info: resp.version_info,
            response_nonce: resp.nonce,
            type_url: type_url.to_string(),
            resource_names: state
                .subscribed
                .get(type_url)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default(),
            node: Some(node.clone()),
            ..Default::default()
        }
    } else {
        let detail = errors.join("; ");
        tracing::warn!(type_url, version = %resp.version_info, error = %detail, "xDS update rejected (NACK)");
        let last = state.versions.get(type_url).cloned().unwrap_or_default();
        let mut req = nack(type_url.to_string(), last, resp.nonce, node, detail);
        req.resource_names = state
            .subscribed
            .get(type_url)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        req
    }
}

fn nack(type_url: String, version_info: String, nonce: String, node: &Node, message: String) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info,
        response_nonce: nonce,
        type_url,
        node: Some(node.clone()),
        // INVALID_ARGUMENT, as Envoy reports rejected config.
        error_detail: Some(Status {
            code: 3,
            message,
            details: Vec::new(),
        }),
        ..Default::default()
    }
}
