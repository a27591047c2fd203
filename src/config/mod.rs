//! The typed, validated internal model of a proxy configuration: listeners,
//! routes, clusters and endpoints as plain Rust values. Everything here has
//! already been checked by `xds::translate`; nothing here knows protobuf.

use std::{net::SocketAddr, num::NonZeroU32, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use regex::Regex;
use serde::Serialize;

pub mod filters;
pub mod mirror;
pub mod route;

pub use filters::HttpFilter;
pub use mirror::{MirrorHost, MirrorPolicy, MirrorTarget};
pub use route::*;

pub use crate::{
    balance::{
        hash::{HashKind, HashPolicy},
        lb::LbPolicy,
        priority::{HealthStatus, DEFAULT_OVERPROVISIONING_FACTOR, DEFAULT_PANIC_THRESHOLD},
    },
    policy::{circuit_breaker::CircuitBreakers, outlier::OutlierConfig, retry::RetryPolicy},
};

/// A whole proxy configuration, as a static bootstrap (or, later, xDS) gives it.
#[derive(Debug, Clone, Serialize)]
pub struct Bootstrap {
    pub node: Node,
    pub admin: Option<Admin>,
    pub listeners: Vec<Arc<Listener>>,
    pub clusters: Vec<Arc<Cluster>>,
    /// Where the rest of the config comes from (xDS), if anywhere.
    pub dynamic: Option<DynamicResources>,
    /// Parts of the input that remora accepted but does not act on (telemetry
    /// sinks, runtime layers, ...), with their field paths. `/config_dump` shows them.
    pub ignored: Vec<String>,
}

/// Bootstrap `dynamic_resources`: an ADS stream to a static cluster.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DynamicResources {
    /// The static cluster the ADS gRPC stream goes to (`envoy_grpc.cluster_name`).
    pub ads_cluster: String,
    /// `api_type: DELTA_GRPC` (incremental) rather than GRPC (state of the world).
    pub delta: bool,
    /// `lds_config: {ads: {}}` and `cds_config: {ads: {}}`.
    pub lds: bool,
    pub cds: bool,
    /// `initial_fetch_timeout` of the cds/lds config sources (Envoy's default 15 s).
    pub initial_fetch_timeout: Duration,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Node {
    pub id: String,
    pub cluster: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Admin {
    pub address: SocketAddr,
}

#[derive(Debug, Clone, Serialize)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    pub filter: NetworkFilter,
}

/// The terminal network filter of a listener's (single) filter chain.
#[derive(Debug, Clone, Serialize)]
pub enum NetworkFilter {
    Http(Arc<HttpConnectionManager>),
    Tcp(Arc<TcpProxy>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Codec {
    Auto,
    Http1,
    Http2,
}

/// How the Host header's port takes part in virtual-host matching.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum StripPort {
    /// The Host header is matched as sent, port included (Envoy's default).
    None,
    /// `strip_matching_host_port`: drop the port only when it equals the listener's.
    Matching,
    /// `strip_any_host_port` (or `ignore_port_in_host_matching`): always drop it.
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ServerHeader {
    Overwrite,
    AppendIfAbsent,
    PassThrough,
}

#[derive(Debug, Clone, Serialize)]
pub struct HttpConnectionManager {
    pub stat_prefix: String,
    pub codec: Codec,
    /// The routes: inline, or (with `rds`) the last RouteConfiguration
    /// delivered under that name, filled in by the xDS client.
    pub route_config: Arc<RouteConfig>,
    /// `rds.route_config_name`, when the routes come from RDS.
    pub rds: Option<String>,
    pub strip_port: StripPort,
    /// Upgrade types (lower-case, e.g. "websocket") that may be proxied.
    pub upgrades: Vec<String>,
    pub use_remote_address: bool,
    pub skip_xff_append: bool,
    pub generate_request_id: bool,
    pub preserve_external_request_id: bool,
    pub always_set_request_id_in_response: bool,
    pub server_name: String,
    pub server_header: ServerHeader,
    /// Router `suppress_envoy_headers`: no `x-envoy-*` headers added.
    pub suppress_envoy_headers: bool,
    pub http2: Http2Settings,
    /// `max_request_headers_kb` (default 60): larger request heads get 431.
    pub max_request_headers_kb: u32,
    /// `stream_idle_timeout`: Envoy's default 5 min; `None` when set to 0 (disabled).
    /// A route's `idle_timeout` replaces it.
    pub stream_idle_timeout: Option<Duration>,
    /// `common_http_protocol_options.max_stream_duration` (`None`: unset or 0).
    pub max_stream_duration: Option<Duration>,
    pub access_logs: Vec<AccessLog>,
    /// The HTTP filters before the router, in the configured order.
    pub filters: Vec<HttpFilter>,
}

/// HTTP/2 settings, with Envoy's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Http2Settings {
    pub max_concurrent_streams: u32,
    pub initial_stream_window_size: u32,
    pub initial_connection_window_size: u32,
}

impl Default for Http2Settings {
    fn default() -> Self {
        // Envoy's defaults (http2_protocol_options): 2^31-1 streams, 256 MiB windows.
        Http2Settings {
            max_concurrent_streams: 2_147_483_647,
            initial_stream_window_size: 268_435_456,
            initial_connection_window_size: 268_435_456,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct AccessLog {
    /// File path; `/dev/stdout` and `/dev/stderr` write to the process streams.
    pub path: String,
    #[serde(skip)]
    pub format: Arc<crate::telemetry::access_log::Format>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TcpProxy {
    pub stat_prefix: String,
    pub target: ClusterTarget,
    /// None disables the idle timeout (Envoy: `idle_timeout: 0s`); default 1 h.
    pub idle_timeout: Option<Duration>,
    pub access_logs: Vec<AccessLog>,
}

/// Where traffic goes: one cluster or a weighted pick among several.
#[derive(Debug, Clone, Serialize)]
pub enum ClusterTarget {
    Single(String),
    Weighted(WeightedClusters),
}

#[derive(Debug, Clone, Serialize)]
pub struct WeightedClusters {
    pub clusters: Vec<WeightedCluster>,
    /// Sum of the weights (always > 0 after validation).
    pub total: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct WeightedCluster {
    pub name: String,
    pub weight: u64,
    pub headers: HeaderOps,
}

impl WeightedClusters {
    /// Picks a cluster for a random value in `0..total`, as Envoy walks the
    /// list accumulating weights.
    pub fn pick(&self, value: u64) -> &WeightedCluster {
        let mut acc = 0;
        let v = value % self.total.max(1);
        for c in &self.clusters {
            acc += c.weight;
            if v < acc {
                return c;
            }
        }
        // Unreachable after validation (total is the sum of weights); the last
        // entry is the safe answer regardless.
        &self.clusters[self.clusters.len() - 1]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum UpstreamProtocol {
    Http1,
    Http2,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cluster {
    pub name: String,
    pub connect_timeout: Duration,
    pub protocol: UpstreamProtocol,
    pub http2: Http2Settings,
    /// Upstream connections idle longer than this are closed (Envoy's
    /// `common_http_protocol_options.idle_timeout`, default 1 h).
    pub idle_timeout: Option<Duration>,
    /// `common_http_protocol_options.max_requests_per_connection` (or the
    /// deprecated cluster field): an upstream connection closes after this
    /// many requests. None (unset or 0) is no limit, as in Envoy.
    pub max_requests_per_connection: Option<NonZeroU32>,
    pub endpoints: Vec<Endpoint>,
    /// For `type: EDS`: the assignment name (`service_name`, else the cluster
    /// name) whose endpoints xDS delivers; `endpoints` are filled from it.
    pub eds: Option<String>,
    /// `circuit_breakers` (Envoy's defaults 1024/1024/1024/3 when absent).
    #[serde(serialize_with = "ser_debug")]
    pub circuit_breakers: CircuitBreakers,
    /// `outlier_detection`, when set.
    #[serde(serialize_with = "ser_debug")]
    pub outlier: Option<OutlierConfig>,
    /// `lb_policy` with its `*_lb_config`.
    #[serde(serialize_with = "ser_debug")]
    pub lb: LbPolicy,
    /// `common_lb_config.healthy_panic_threshold`, percent (default 50; 0 disables panic).
    pub panic_threshold: f64,
    /// The load assignment's `policy.overprovisioning_factor`, percent (default 140).
    pub overprovisioning_factor: u32,
    /// Delivered by CDS rather than the bootstrap (`/clusters`' `added_via_api`).
    pub added_via_api: bool,
}

impl Cluster {
    /// A cluster with Envoy's defaults for everything but its name and endpoints.
    pub fn new(name: impl Into<String>, endpoints: Vec<Endpoint>) -> Cluster {
        Cluster {
            name: name.into(),
            connect_timeout: Duration::from_secs(5),
            protocol: UpstreamProtocol::Http1,
            http2: Http2Settings::default(),
            idle_timeout: Some(Duration::from_secs(3600)),
            max_requests_per_connection: None,
            endpoints,
            eds: None,
            circuit_breakers: CircuitBreakers::default(),
            outlier: None,
            lb: LbPolicy::RoundRobin,
            panic_threshold: DEFAULT_PANIC_THRESHOLD,
            overprovisioning_factor: DEFAULT_OVERPROVISIONING_FACTOR,
            added_via_api: false,
        }
    }
}

/// One upstream host (an `LbEndpoint`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Endpoint {
    pub address: SocketAddr,
    /// `load_balancing_weight` (default 1).
    pub weight: u32,
    /// `health_status` from EDS (default UNKNOWN, which is routable).
    #[serde(serialize_with = "ser_debug")]
    pub health: HealthStatus,
    /// The locality's `priority` (0 is the highest).
    pub priority: u32,
}

impl Endpoint {
    /// A routable endpoint of weight 1 at priority 0.
    pub fn new(address: SocketAddr) -> Endpoint {
        Endpoint {
            address,
            weight: 1,
            health: HealthStatus::Unknown,
            priority: 0,
        }
    }
}

/// A `ClusterLoadAssignment` as translated: its endpoints and the
/// overprovisioning factor of its policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    pub endpoints: Vec<Endpoint>,
    pub overprovisioning_factor: u32,
}

/// Header mutations at one level (route config, virtual host, route, weighted cluster).
#[derive(Debug, Clone, Default, Serialize)]
pub struct HeaderOps {
    pub request_add: Vec<HeaderAdd>,
    #[serde(serialize_with = "ser_names")]
    pub request_remove: Vec<HeaderName>,
    pub response_add: Vec<HeaderAdd>,
    #[serde(serialize_with = "ser_names")]
    pub response_remove: Vec<HeaderName>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.request_add.is_empty()
            && self.request_remove.is_empty()
            && self.response_add.is_empty()
            && self.response_remove.is_empty()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct HeaderAdd {
    #[serde(serialize_with = "ser_name")]
    pub name: HeaderName,
    #[serde(serialize_with = "ser_value")]
    pub value: HeaderValue,
    pub action: AppendAction,
    /// Envoy drops an added header whose value is empty unless `keep_empty_value`.
    pub keep_empty: bool,
}

/// Envoy's `HeaderValueOption.append_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum AppendAction {
    AppendIfExistsOrAdd,
    AddIfAbsent,
    OverwriteIfExistsOrAdd,
    OverwriteIfExists,
}

#[derive(Debug, Clone, Serialize)]
pub struct DirectResponse {
    #[serde(serialize_with = "ser_status")]
    pub status: StatusCode,
    #[serde(serialize_with = "ser_bytes")]
    pub body: Option<Bytes>,
}

/// Policy configs are shown in `/config_dump` in their Rust form.
pub(crate) fn ser_debug<T: std::fmt::Debug, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:?}"))
}

pub(crate) fn ser_regex<S: serde::Serializer>(r: &Regex, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(r.as_str())
}
fn ser_names<S: serde::Serializer>(v: &[HeaderName], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|n| n.as_str()))
}
pub(crate) fn ser_name<S: serde::Serializer>(n: &HeaderName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(n.as_str())
}
fn ser_value<S: serde::Serializer>(v: &HeaderValue, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(v.as_bytes()))
}
fn ser_status<S: serde::Serializer>(v: &StatusCode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u16(v.as_u16())
}
fn ser_bytes<S: serde::Serializer>(v: &Option<Bytes>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(b) => s.serialize_str(&String::from_utf8_lossy(b)),
        None => s.serialize_none(),
    }
}
