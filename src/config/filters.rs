//! The HTTP filters that run before the router (Envoy's `http_filters`), and their per-route
//! replacements (`typed_per_filter_config`). Their configs are the plain structs of
//! `policy::{fault, local_ratelimit}`; this file adds only what `/config_dump` shows of them.

use std::sync::Arc;

use serde::{Serialize, Serializer};
use serde_json::json;

use super::HeaderOps;
use crate::policy::{
    fault::{AbortKind, DelayKind, FaultConfig, FractionalPercent},
    local_ratelimit::LocalRateLimitConfig,
};

/// One HTTP filter, in the connection manager's order (the router, always last, is implied), or
/// one per-route config keyed by the name of the filter it replaces.
#[derive(Debug, Clone, Serialize)]
pub enum HttpFilter {
    /// `envoy.extensions.filters.http.fault.v3.HTTPFault`.
    Fault {
        name: String,
        #[serde(serialize_with = "ser_fault")]
        config: Arc<FaultConfig>,
    },
    /// `envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit`.
    LocalRateLimit {
        name: String,
        #[serde(serialize_with = "ser_local_rate_limit")]
        config: Arc<LocalRateLimitConfig>,
        /// `response_headers_to_add` (as `response_add`, for the rejection's local reply) and
        /// `request_headers_to_add_when_not_enforced` (as `request_add`), with their append
        /// actions; the config's own lists hold the same headers without them.
        headers: Arc<HeaderOps>,
    },
}

impl HttpFilter {
    /// The filter's name: the key a per-route config is looked up by.
    pub fn name(&self) -> &str {
        match self {
            HttpFilter::Fault { name, .. } | HttpFilter::LocalRateLimit { name, .. } => name,
        }
    }
}

fn percent(p: &FractionalPercent) -> String {
    format!("{}/{}", p.numerator, p.denominator)
}

fn ser_fault<S: Serializer>(c: &Arc<FaultConfig>, s: S) -> Result<S::Ok, S::Error> {
    let delay = c.delay.as_ref().map(|d| match &d.kind {
        DelayKind::Fixed(t) => json!({ "fixed_delay_ms": t.as_millis() as u64, "percentage": percent(&d.percent) }),
        DelayKind::HeaderControlled => json!({ "header_delay": true, "percentage": percent(&d.percent) }),
    });
    let abort = c.abort.as_ref().map(|a| {
        let kind = match a.kind {
            AbortKind::Http(status) => json!({ "http_status": status }),
            AbortKind::Grpc(status) => json!({ "grpc_status": status }),
            AbortKind::HeaderControlled => json!({ "header_abort": true }),
        };
        json!({ "error": kind, "percentage": percent(&a.percent) })
    });
    let headers: Vec<_> = c
        .headers
        .iter()
        .map(|(n, v)| json!({ "name": n.as_str(), "exact": String::from_utf8_lossy(v.as_bytes()) }))
        .collect();
    json!({
        "delay": delay,
        "abort": abort,
        "max_active_faults": c.max_active_faults,
        "headers": headers,
        "upstream_cluster": c.upstream_cluster,
        "downstream_nodes": c.downstream_nodes,
    })
    .serialize(s)
}

fn ser_local_rate_limit<S: Serializer>(c: &Arc<LocalRateLimitConfig>, s: S) -> Result<S::Ok, S::Error> {
    json!({
        "stat_prefix": c.stat_prefix,
        "token_bucket": {
            "max_tokens": c.max_tokens,
            "tokens_per_fill": c.tokens_per_fill,
            "fill_interval_ms": c.fill_interval.as_millis() as u64,
        },
        "filter_enabled_percent": c.filter_enabled_percent,
        "filter_enforced_percent": c.filter_enforced_percent,
        "enable_x_ratelimit_headers": c.enable_x_ratelimit_headers,
        "status": c.response_status().as_u16(),
        "rate_limited_as_resource_exhausted": c.rate_limited_as_resource_exhausted,
    })
    .serialize(s)
}
