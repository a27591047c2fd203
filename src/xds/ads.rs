//! The ADS client: one task that owns the gRPC stream to the control plane,
//! the subscriptions, versions and nonces, and answers every response with an
//! ACK or a NACK. Resources go through the same `translate` as static
//! bootstraps; what translates is applied to the running proxy, and the last
//! good config keeps serving whatever happens to the stream.
//!
//! State of the world only for now (Delta is rejected in the bootstrap).
//! CDS and LDS are subscribed as wildcards; listeners must carry their routes
//! inline and clusters must be STATIC until RDS and EDS land.
//!
//! Per Envoy, within one response each resource stands alone: the valid
//! ones are applied, an invalid one keeps its previous version (if any), and
//! the response is NACKed naming every resource and field that failed.

use std::{
    collections::BTreeMap,
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
    google::{protobuf::Any, rpc::Status},
};
use prost_reflect::DynamicMessage;
use tokio_util::sync::CancellationToken;

use super::{
    decode::{release_memory, ApiPool},
    translate::{self, Ctx, Msg},
};
use crate::{config, proxy::Proxy};

pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";

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

/// The client's view: the last good dynamic resources and what was ACKed.
struct State {
    cfg: AdsConfig,
    clusters: BTreeMap<String, Arc<config::Cluster>>,
    listeners: BTreeMap<String, Arc<config::Listener>>,
    /// Last ACKed version per type (sent again on reconnect).
    versions: BTreeMap<&'static str, String>,
    cds_done: bool,
    lds_done: bool,
}

/// Runs the client until `shutdown`: connects, subscribes, applies, and
/// reconnects with backoff when the stream breaks. Marks the proxy ready once
/// the first CDS and LDS responses are applied, or `initial_fetch_timeout`
/// passed, as Envoy does.
pub async fn run(proxy: Arc<Proxy>, cfg: AdsConfig, shutdown: CancellationToken) {
    let fetch_timeout = cfg.dynamic.initial_fetch_timeout;
    let mut state = State {
        cds_done: !cfg.dynamic.cds,
        lds_done: !cfg.dynamic.lds,
        cfg,
        clusters: BTreeMap::new(),
        listeners: BTreeMap::new(),
        versions: BTreeMap::new(),
    };
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
            r = stream_once(&proxy, &mut state) => r,
            _ = shutdown.cancelled() => break,
        };
        match result {
            Ok(()) => tracing::warn!(server = %state.cfg.server, "xDS stream closed by the server; reconnecting"),
            Err(e) => tracing::warn!(server = %state.cfg.server, error = %e, "xDS stream failed; reconnecting"),
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

#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("stream: {0}")]
    Status(#[from] tonic::Status),
    #[error("the request queue closed")]
    Closed,
}

async fn stream_once(proxy: &Proxy, state: &mut State) -> Result<(), StreamError> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", state.cfg.server))
        .map_err(StreamError::Connect)?
        .connect_timeout(state.cfg.connect_timeout);
    let channel = endpoint.connect().await?;
    let mut client = AggregatedDiscoveryServiceClient::new(channel)
        // A large EDS or CDS response can be tens of MB.
        .max_decoding_message_size(64 * 1024 * 1024);
    let (tx, rx) = tokio::sync::mpsc::channel::<DiscoveryRequest>(16);
    let node = Node {
        id: state.cfg.node.id.clone(),
        cluster: state.cfg.node.cluster.clone(),
        ..Default::default()
    };
    // Subscribe (again, after a reconnect) with the versions we hold, CDS
    // first: listeners refer to clusters.
    for (enabled, type_url) in [
        (state.cfg.dynamic.cds, CLUSTER_TYPE),
        (state.cfg.dynamic.lds, LISTENER_TYPE),
    ] {
        if enabled {
            let req = DiscoveryRequest {
                node: Some(node.clone()),
                type_url: type_url.to_string(),
                version_info: state.versions.get(type_url).cloned().unwrap_or_default(),
                ..Default::default()
            };
            tx.send(req).await.map_err(|_| StreamError::Closed)?;
        }
    }
    let mut responses = client
        .stream_aggregated_resources(tokio_stream_from(rx))
        .await?
        .into_inner();
    tracing::info!(server = %state.cfg.server, "xDS stream open");
    while let Some(resp) = responses.message().await? {
        let reply = handle_response(proxy, state, resp, &node);
        tx.send(reply).await.map_err(|_| StreamError::Closed)?;
        if state.cds_done && state.lds_done {
            proxy.mark_ready();
        }
    }
    Ok(())
}

fn tokio_stream_from(
    rx: tokio::sync::mpsc::Receiver<DiscoveryRequest>,
) -> impl futures_util::Stream<Item = DiscoveryRequest> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) })
}

/// Applies one response and returns its ACK or NACK.
fn handle_response(proxy: &Proxy, state: &mut State, resp: DiscoveryResponse, node: &Node) -> DiscoveryRequest {
    let type_url: &'static str = match resp.type_url.as_str() {
        CLUSTER_TYPE => CLUSTER_TYPE,
        LISTENER_TYPE => LISTENER_TYPE,
        other => {
            tracing::warn!(type_url = other, "xDS response of an unexpected type");
            return nack(
                resp.type_url.clone(),
                String::new(),
                resp.nonce,
                node,
                format!("unexpected type_url {other}"),
            );
        }
    };
    let errors = match type_url {
        CLUSTER_TYPE => apply_clusters(proxy, state, &resp.resources),
        _ => apply_listeners(proxy, state, &resp.resources),
    };
    release_memory();
    if type_url == CLUSTER_TYPE {
        state.cds_done = true;
    } else {
        state.lds_done = true;
    }
    if errors.is_empty() {
        tracing::info!(type_url, version = %resp.version_info, resources = resp.resources.len(), "xDS update applied (ACK)");
        state.versions.insert(type_url, resp.version_info.clone());
        DiscoveryRequest {
            version_info: resp.version_info,
            response_nonce: resp.nonce,
            type_url: type_url.to_string(),
            node: Some(node.clone()),
            ..Default::default()
        }
    } else {
        let detail = errors.join("; ");
        tracing::warn!(type_url, version = %resp.version_info, error = %detail, "xDS update rejected (NACK)");
        let last = state.versions.get(type_url).cloned().unwrap_or_default();
        nack(type_url.to_string(), last, resp.nonce, node, detail)
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

/// Decodes and translates each resource on its own; returns (name, result).
fn translate_each<T>(
    resources: &[Any],
    message: &str,
    known_clusters: Option<std::collections::HashSet<String>>,
    translate: impl Fn(Msg<'_, '_>) -> Option<T>,
    errors: &mut Vec<String>,
) -> Vec<(String, Option<T>)> {
    let pool = match ApiPool::load() {
        Ok(p) => p,
        Err(e) => {
            errors.push(e.to_string());
            return Vec::new();
        }
    };
    let desc = match pool.message(message) {
        Ok(d) => d,
        Err(e) => {
            errors.push(e.to_string());
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (i, any) in resources.iter().enumerate() {
        let expected = format!("type.googleapis.com/{message}");
        if any.type_url != expected {
            errors.push(format!("resources[{i}]: type {} in a {message} response", any.type_url));
            continue;
        }
        let msg = match DynamicMessage::decode(desc.clone(), any.value.as_slice()) {
            Ok(m) => m,
            Err(e) => {
                errors.push(format!("resources[{i}]: malformed {message}: {e}"));
                continue;
            }
        };
        let name = msg
            .get_field_by_name("name")
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let ctx = Ctx::new(&pool);
        if let Some(k) = &known_clusters {
            ctx.set_known_clusters(k.clone());
        }
        let result = translate(Msg::new(msg, String::new(), &ctx));
        let (errs, _warnings) = ctx.into_result();
        let kind = message.rsplit('.').next().unwrap_or(message).to_ascii_lowercase();
        if errs.is_empty() && result.is_some() {
            out.push((name, result));
        } else {
            for e in errs {
                errors.push(format!("{kind} '{name}': {e}"));
            }
            out.push((name, None));
        }
    }
    out
}

fn apply_clusters(proxy: &Proxy, state: &mut State, resources: &[Any]) -> Vec<String> {
    let mut errors = Vec::new();
    let results = translate_each(
        resources,
        "envoy.config.cluster.v3.Cluster",
        None,
        translate::cluster,
        &mut errors,
    );
    let mut next = BTreeMap::new();
    for (name, result) in results {
        if state.cfg.static_clusters.iter().any(|c| c.name == name) {
            errors.push(format!("cluster '{name}': a static cluster has that name"));
            continue;
        }
        match result {
            Some(c) => {
                next.insert(name, Arc::new(c));
            }
            // An invalid update keeps the cluster's last good version (Envoy).
            None => {
                if let Some(old) = state.clusters.get(&name) {
                    next.insert(name, old.clone());
                }
            }
        }
    }
    // State of the world: clusters absent from the response are removed.
    state.clusters = next;
    let all: Vec<_> = state
        .cfg
        .static_clusters
        .iter()
        .cloned()
        .chain(state.clusters.values().cloned())
        .collect();
    proxy.apply_clusters(&all);
    errors
}

fn apply_listeners(proxy: &Proxy, state: &mut State, resources: &[Any]) -> Vec<String> {
    let mut errors = Vec::new();
    // Inline routes are checked against the clusters in force (Envoy's
    // validate_clusters is on for route configs given inline).
    let known = state
        .cfg
        .static_clusters
        .iter()
        .map(|c| c.name.clone())
        .chain(state.clusters.keys().cloned())
        .collect();
    let results = translate_each(
        resources,
        "envoy.config.listener.v3.Listener",
        Some(known),
        translate::listener,
        &mut errors,
    );
    let mut next = BTreeMap::new();
    for (name, result) in results {
        match result {
            Some(l) => {
                next.insert(name, Arc::new(l));
            }
            None => {
                if let Some(old) = state.listeners.get(&name) {
                    next.insert(name, old.clone());
                }
            }
        }
    }
    let all: Vec<_> = state
        .cfg
        .static_listeners
        .iter()
        .cloned()
        .chain(next.values().cloned())
        .collect();
    if let Err(e) = proxy.apply_listeners(&all) {
        errors.push(e.to_string());
    }
    state.listeners = next;
    errors
}
