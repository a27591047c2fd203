//! `envoy.config.cluster.v3.Cluster` (STATIC with `load_assignment`, or EDS)
//! -> `config::Cluster`, and `ClusterLoadAssignment` -> endpoints.

use std::{num::NonZeroU32, time::Duration};

use super::{listener::socket_address, Msg};
use crate::config::{self, HealthStatus, Http2Settings, UpstreamProtocol, DEFAULT_OVERPROVISIONING_FACTOR};

const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

pub fn cluster(mut m: Msg<'_, '_>) -> Option<config::Cluster> {
    let name = m.string("name");
    if name.is_empty() {
        m.field_error("name", "a cluster needs a name");
    }
    // A cluster with no `type` is STATIC, as in Envoy.
    let kind = if m.has("cluster_type") {
        m.field_error("cluster_type", "custom cluster types are not supported yet");
        return None;
    } else {
        m.enum_name("type")
    };
    if kind != "STATIC" && kind != "EDS" {
        m.field_error(
            "type",
            format!("cluster type {kind} is not supported yet (only STATIC and EDS; DNS comes later)"),
        );
    }
    // Envoy's default connect_timeout is 5 s.
    let connect_timeout = m.duration("connect_timeout").unwrap_or(Duration::from_secs(5));
    if connect_timeout.is_zero() {
        m.field_error("connect_timeout", "must be greater than zero");
    }
    let (lb, panic_threshold) = super::lb::cluster_lb(&mut m);

    let mut protocol = UpstreamProtocol::Http1;
    let mut http2 = Http2Settings::default();
    // The deprecated cluster-level fields still appear in real configs.
    let mut common = CommonOptions {
        max_requests_per_connection: m.wrapped_u32("max_requests_per_connection"),
        ..CommonOptions::default()
    };
    if let Some(h2) = m.msg("http2_protocol_options") {
        protocol = UpstreamProtocol::Http2;
        http2 = super::listener::http2_settings(h2);
    }
    if let Some(h1) = m.msg("http_protocol_options") {
        super::listener::http1_options(h1);
    }
    if let Some(mut options) = m.msg("common_http_protocol_options") {
        common.read(&mut options);
    }
    for (key, entry) in m.map_entries("typed_extension_protocol_options") {
        let entry_path = entry.path.clone();
        match entry.unpack() {
            Some((t, mut o)) if t == HTTP_PROTOCOL_OPTIONS => {
                if let Some(mut options) = o.msg("common_http_protocol_options") {
                    common.read(&mut options);
                }
                if let Some(mut explicit) = o.msg("explicit_http_config") {
                    if let Some(h2) = explicit.msg("http2_protocol_options") {
                        protocol = UpstreamProtocol::Http2;
                        http2 = super::listener::http2_settings(h2);
                    } else if let Some(h1) = explicit.msg("http_protocol_options") {
                        protocol = UpstreamProtocol::Http1;
                        super::listener::http1_options(h1);
                    }
                }
            }
            Some((t, o)) => {
                o.abandon();
                m.ctx().error(
                    &entry_path,
                    format!("protocol options '{key}' of type {t} are not supported"),
                );
            }
            None => {}
        }
    }

    let mut assignment = config::Assignment {
        endpoints: Vec::new(),
        overprovisioning_factor: DEFAULT_OVERPROVISIONING_FACTOR,
    };
    if let Some(la) = m.msg("load_assignment") {
        assignment = load_assignment(la);
    }
    let mut eds = None;
    if let Some(mut ec) = m.msg("eds_cluster_config") {
        if let Some(cs) = ec.msg("eds_config") {
            super::ads_source(cs);
        }
        let service = ec.string("service_name");
        eds = Some(if service.is_empty() { name.clone() } else { service });
    }
    if kind == "EDS" && eds.is_none() {
        eds = Some(name.clone());
    }

    m.ignore("alt_stat_name");
    m.ignore("metadata");
    m.ignore("per_connection_buffer_limit_bytes");
    m.ignore("dns_lookup_family");
    m.ignore("respect_dns_ttl");
    m.ignore("dns_refresh_rate");
    m.ignore("upstream_connection_options");
    m.ignore("track_cluster_stats");
    for mut f in m.list("filters") {
        let fname = f.string("name");
        match f.any("typed_config") {
            Some((t, inner)) => {
                let ext = super::extension_name(&t, &inner);
                inner.abandon();
                if super::is_telemetry_only(&ext) {
                    f.ctx().warn(
                        &f.path,
                        format!(
                            "upstream filter '{fname}' ({ext}) only feeds telemetry remora does not produce; skipped"
                        ),
                    );
                } else {
                    f.field_error(
                        "typed_config",
                        format!("upstream filter '{fname}' ({ext}) is not supported yet"),
                    );
                }
            }
            None => f.error(format!("upstream filter '{fname}' needs a typed_config")),
        }
    }
    let circuit_breakers = m
        .msg("circuit_breakers")
        .map(super::policy::circuit_breakers)
        .unwrap_or_default();
    let outlier = m.msg("outlier_detection").map(super::policy::outlier_detection);
    m.ignore("cleanup_interval");
    m.ignore("close_connections_on_host_health_failure");
    m.ignore("ignore_health_on_host_removal");
    drop(m);
    Some(config::Cluster {
        name,
        connect_timeout,
        protocol,
        http2,
        idle_timeout: common.idle_timeout,
        // As Envoy: 0 is no limit.
        max_requests_per_connection: common.max_requests_per_connection.and_then(NonZeroU32::new),
        endpoints: assignment.endpoints,
        eds,
        circuit_breakers,
        outlier,
        lb,
        panic_threshold,
        overprovisioning_factor: assignment.overprovisioning_factor,
        added_via_api: false,
    })
}

/// `core.v3.HttpProtocolOptions` for upstream connections.
struct CommonOptions {
    /// Default 1 h; 0 disables.
    idle_timeout: Option<Duration>,
    max_requests_per_connection: Option<u32>,
}

impl Default for CommonOptions {
    fn default() -> Self {
        CommonOptions {
            idle_timeout: Some(Duration::from_secs(3600)),
            max_requests_per_connection: None,
        }
    }
}

impl CommonOptions {
    fn read(&mut self, m: &mut Msg<'_, '_>) {
        let idle = m.duration("idle_timeout").unwrap_or(Duration::from_secs(3600));
        self.idle_timeout = (!idle.is_zero()).then_some(idle);
        // Envoy: the common options' value wins over the deprecated cluster field.
        if let Some(n) = m.wrapped_u32("max_requests_per_connection") {
            self.max_requests_per_connection = Some(n);
        }
        m.advisory(
            "max_headers_count",
            "accepted without effect: header count limits are fixed",
        );
    }
}

/// A `ClusterLoadAssignment` (inline `load_assignment` or an EDS resource):
/// every endpoint with its weight, health and priority, and the
/// overprovisioning factor. Unhealthy endpoints are kept (they count in the
/// cluster's membership and in panic mode) but get no traffic otherwise.
pub fn load_assignment(mut la: Msg<'_, '_>) -> config::Assignment {
    let mut endpoints = Vec::new();
    let mut overprovisioning_factor = DEFAULT_OVERPROVISIONING_FACTOR;
    la.ignore("cluster_name");
    la.ignore("named_endpoints");
    if let Some(mut policy) = la.msg("policy") {
        if let Some(f) = policy.wrapped_u32("overprovisioning_factor") {
            if f == 0 {
                policy.field_error("overprovisioning_factor", "must be greater than 0");
            } else {
                overprovisioning_factor = f;
            }
        }
        if policy.bool("weighted_priority_health") {
            policy.field_error(
                "weighted_priority_health",
                "priority health weighted by endpoint weights is not supported yet",
            );
        }
        policy.advisory(
            "endpoint_stale_after",
            "accepted without effect: assignments do not go stale yet",
        );
        if !policy.list("drop_overloads").is_empty() {
            policy.field_error("drop_overloads", "drop overloads are not supported yet");
        }
    }
    for mut locality in la.list("endpoints") {
        locality.ignore("locality");
        locality.ignore("metadata");
        locality.ignore("proximity");
        let priority = locality.u32("priority");
        // Locality weights only matter with locality-weighted balancing,
        // which a cluster cannot enable in remora yet (as Envoy, they are
        // ignored without it).
        locality.ignore("load_balancing_weight");
        for mut lb_ep in locality.list("lb_endpoints") {
            let health = match lb_ep.enum_name("health_status").as_str() {
                "HEALTHY" => HealthStatus::Healthy,
                "UNHEALTHY" => HealthStatus::Unhealthy,
                "DRAINING" => HealthStatus::Draining,
                "TIMEOUT" => HealthStatus::Timeout,
                "DEGRADED" => HealthStatus::Degraded,
                _ => HealthStatus::Unknown,
            };
            lb_ep.ignore("metadata");
            let weight = match lb_ep.wrapped_u32("load_balancing_weight") {
                Some(0) => {
                    lb_ep.field_error("load_balancing_weight", "must be at least 1");
                    1
                }
                Some(w) => w,
                None => 1,
            };
            if let Some(mut ep) = lb_ep.msg("endpoint") {
                ep.ignore("hostname");
                ep.advisory(
                    "health_check_config",
                    "accepted without effect: no active health checks yet",
                );
                if let Some(address) = ep.msg("address").and_then(socket_address) {
                    endpoints.push(config::Endpoint {
                        address,
                        weight,
                        health,
                        priority,
                    });
                }
            } else {
                lb_ep.error("lb_endpoints entry needs an endpoint");
            }
        }
    }
    config::Assignment {
        endpoints,
        overprovisioning_factor,
    }
}
