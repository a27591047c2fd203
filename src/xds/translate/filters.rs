//! The HTTP filters remora implements besides the router, at the connection manager
//! (`http_filters[]`) and per route or virtual host (`typed_per_filter_config`):
//! `envoy.extensions.filters.http.fault.v3.HTTPFault` -> `policy::fault::FaultConfig` and
//! `envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit` ->
//! `policy::local_ratelimit::LocalRateLimitConfig`. Each config's own `validate()` has the last
//! word; its message is reported at the field it names.

use std::{sync::Arc, time::Duration};

use http::{HeaderName, HeaderValue};

use super::{route::header_add, Msg};
use crate::{
    config::{HeaderAdd, HeaderOps, HttpFilter},
    policy::{
        fault::{AbortKind, DelayKind, FaultAbort, FaultConfig, FaultDelay, FractionalPercent},
        local_ratelimit::{LocalRateLimitConfig, MIN_FILL_INTERVAL},
    },
};

const FAULT: &str = "envoy.extensions.filters.http.fault.v3.HTTPFault";
const LOCAL_RATE_LIMIT: &str = "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";

/// Runtime keys of HTTPFault. remora has no runtime layer, so every lookup falls back to the
/// configured value, as Envoy's does when the runtime does not set the key.
const FAULT_RUNTIME_KEYS: &[&str] = &[
    "delay_percent_runtime",
    "abort_percent_runtime",
    "delay_duration_runtime",
    "abort_http_status_runtime",
    "abort_grpc_status_runtime",
    "max_active_faults_runtime",
    "response_rate_limit_percent_runtime",
];

/// Whether remora implements the HTTP filter of this config type.
pub fn is_implemented(type_name: &str) -> bool {
    type_name == FAULT || type_name == LOCAL_RATE_LIMIT
}

/// A filter of a type [`is_implemented`] accepts: at the connection manager, or (`per_route`) as
/// the config that replaces it for a route or virtual host.
pub fn http_filter(name: String, type_name: &str, m: Msg<'_, '_>, per_route: bool) -> Option<HttpFilter> {
    if type_name == FAULT {
        let config = fault(m)?;
        Some(HttpFilter::Fault {
            name,
            config: Arc::new(config),
        })
    } else {
        let (config, headers) = local_rate_limit(m, per_route)?;
        Some(HttpFilter::LocalRateLimit {
            name,
            config: Arc::new(config),
            headers: Arc::new(headers),
        })
    }
}

/// `typed_per_filter_config` of a route or virtual host: a map from filter name to the config
/// that replaces that filter's there. Only configs of the filters remora implements are accepted.
pub fn per_filter_configs(m: &mut Msg<'_, '_>) -> Vec<HttpFilter> {
    let mut out = Vec::new();
    for (key, any) in m.map_entries("typed_per_filter_config") {
        let path = any.path.clone();
        let ctx = any.ctx();
        let Some((type_name, inner)) = any.unpack() else {
            continue;
        };
        if is_implemented(&type_name) {
            out.extend(http_filter(key, &type_name, inner, true));
        } else {
            let ext = super::extension_name(&type_name, &inner);
            inner.abandon();
            ctx.error(
                &path,
                format!("per-route config for filter '{key}' ({ext}) is not supported yet"),
            );
        }
    }
    out
}

fn fault(mut m: Msg<'_, '_>) -> Option<FaultConfig> {
    let delay = m.msg("delay").map(fault_delay);
    let abort = m.msg("abort").map(fault_abort);
    let max_active_faults = m.wrapped_u32("max_active_faults");
    let headers: Vec<_> = m.list("headers").into_iter().map(exact_header).collect();
    let upstream_cluster = Some(m.string("upstream_cluster")).filter(|c| !c.is_empty());
    let downstream_nodes = m.strings("downstream_nodes");
    for key in FAULT_RUNTIME_KEYS {
        m.ignore(key);
    }
    // remora keeps no per-downstream-cluster fault stats, so there is nothing to disable.
    m.ignore("disable_downstream_cluster_stats");
    let config = FaultConfig {
        delay: delay.flatten(),
        abort: abort.flatten(),
        max_active_faults,
        headers: headers.into_iter().collect::<Option<_>>()?,
        upstream_cluster,
        downstream_nodes,
    };
    if let Err(e) = config.validate() {
        validation_error(&mut m, &e, "");
        return None;
    }
    Some(config)
}

fn fault_delay(mut m: Msg<'_, '_>) -> Option<FaultDelay> {
    let percent = m.msg("percentage").map(fractional_percent).unwrap_or_default();
    let kind = if m.has("fixed_delay") {
        DelayKind::Fixed(m.duration("fixed_delay")?)
    } else if m.msg("header_delay").is_some() {
        DelayKind::HeaderControlled
    } else {
        m.error("a delay needs fixed_delay or header_delay");
        return None;
    };
    Some(FaultDelay { kind, percent })
}

fn fault_abort(mut m: Msg<'_, '_>) -> Option<FaultAbort> {
    let percent = m.msg("percentage").map(fractional_percent).unwrap_or_default();
    let kind = if m.has("http_status") {
        // Out-of-range values are left for validate() to report.
        AbortKind::Http(u16::try_from(m.u32("http_status")).unwrap_or(u16::MAX))
    } else if m.has("grpc_status") {
        AbortKind::Grpc(m.u32("grpc_status"))
    } else if m.msg("header_abort").is_some() {
        AbortKind::HeaderControlled
    } else {
        m.error("an abort needs http_status, grpc_status or header_abort");
        return None;
    };
    Some(FaultAbort { kind, percent })
}

/// `type.v3.FractionalPercent`.
pub(super) fn fractional_percent(mut m: Msg<'_, '_>) -> FractionalPercent {
    let numerator = m.u32("numerator");
    match m.enum_name("denominator").as_str() {
        "TEN_THOUSAND" => FractionalPercent::ten_thousand(numerator),
        "MILLION" => FractionalPercent::million(numerator),
        _ => FractionalPercent::hundred(numerator),
    }
}

/// A fault filter's header matcher: only exact values are modelled (see `policy::fault`).
fn exact_header(mut m: Msg<'_, '_>) -> Option<(HeaderName, HeaderValue)> {
    let raw = m.string("name");
    let value = if m.has("exact_match") {
        m.string("exact_match")
    } else if let Some(mut sm) = m.msg("string_match") {
        if !sm.has("exact") || sm.has("ignore_case") {
            sm.error("only case-sensitive `exact` matches are supported in fault filter headers yet");
            return None;
        }
        sm.string("exact")
    } else {
        m.error("only exact-value header matchers (exact_match, string_match.exact) are supported in fault filter headers yet");
        return None;
    };
    let Ok(name) = HeaderName::from_bytes(raw.to_ascii_lowercase().as_bytes()) else {
        m.field_error("name", format!("'{raw}' is not a valid header name"));
        return None;
    };
    let Ok(value) = HeaderValue::from_str(&value) else {
        m.error("not a valid header value");
        return None;
    };
    Some((name, value))
}

fn local_rate_limit(mut m: Msg<'_, '_>, per_route: bool) -> Option<(LocalRateLimitConfig, HeaderOps)> {
    let stat_prefix = m.string("stat_prefix");
    let status = match m.msg("status") {
        Some(mut s) => u16::try_from(s.enum_number("code")).unwrap_or(0),
        None => 429,
    };
    let bucket = m.msg("token_bucket").map(token_bucket);
    if per_route && bucket.is_none() {
        // As Envoy: "local rate limit token bucket must be set for per filter configs".
        m.field_error("token_bucket", "must be set in a per-route config");
        return None;
    }
    let filter_enabled_percent = m.msg("filter_enabled").map(runtime_percent).unwrap_or(0.0);
    let filter_enforced_percent = m.msg("filter_enforced").map(runtime_percent).unwrap_or(0.0);
    let mut headers = HeaderOps::default();
    for h in m.list("response_headers_to_add") {
        headers.response_add.extend(header_add(h));
    }
    for h in m.list("request_headers_to_add_when_not_enforced") {
        headers.request_add.extend(header_add(h));
    }
    let enable_x_ratelimit_headers = m.enum_name("enable_x_ratelimit_headers") == "DRAFT_VERSION_03";
    let rate_limited_as_resource_exhausted = m.bool("rate_limited_as_resource_exhausted");
    // These only act on descriptors, which are rejected (left in the message) when set.
    m.ignore("stage");
    m.ignore("vh_rate_limits");
    m.ignore("always_consume_default_token_bucket");
    m.ignore("max_dynamic_descriptors");

    let pairs = |adds: &[HeaderAdd]| adds.iter().map(|h| (h.name.clone(), h.value.clone())).collect();
    let (max_tokens, tokens_per_fill, fill_interval) = bucket.unwrap_or((0, 1, Duration::ZERO));
    let config = LocalRateLimitConfig {
        stat_prefix,
        max_tokens,
        tokens_per_fill,
        fill_interval,
        filter_enabled_percent,
        filter_enforced_percent,
        response_headers_to_add: pairs(&headers.response_add),
        request_headers_to_add_when_not_enforced: pairs(&headers.request_add),
        enable_x_ratelimit_headers,
        status,
        rate_limited_as_resource_exhausted,
    };
    // Without a token bucket (the connection manager's config only, as in Envoy) the bucket is
    // empty and never refills: every request the filter is enabled for is limited. The bucket
    // checks of validate() do not apply to it.
    let checked = match bucket {
        Some(_) => config.validate(),
        None => LocalRateLimitConfig {
            max_tokens: 1,
            fill_interval: MIN_FILL_INTERVAL,
            ..config.clone()
        }
        .validate(),
    };
    if let Err(e) = checked {
        validation_error(&mut m, &e, "local_rate_limit.");
        return None;
    }
    Some((config, headers))
}

/// `type.v3.TokenBucket`: (max_tokens, tokens_per_fill (default 1), fill_interval).
fn token_bucket(mut m: Msg<'_, '_>) -> (u32, u32, Duration) {
    let max_tokens = m.u32("max_tokens");
    let tokens_per_fill = m.wrapped_u32("tokens_per_fill").unwrap_or(1);
    let fill_interval = m.duration("fill_interval").unwrap_or_default();
    (max_tokens, tokens_per_fill, fill_interval)
}

/// `config.core.v3.RuntimeFractionalPercent` as a percentage: its `default_value`, since remora
/// has no runtime to look `runtime_key` up in. A numerator above the denominator always hits, as
/// Envoy's `random % denominator < numerator` does.
fn runtime_percent(mut m: Msg<'_, '_>) -> f64 {
    m.ignore("runtime_key");
    let Some(p) = m.msg("default_value").map(fractional_percent) else {
        return 0.0;
    };
    (f64::from(p.numerator) * 100.0 / f64::from(p.denominator)).min(100.0)
}

/// Reports a policy `validate()` message, "<field path> <what is wrong>", at that field.
fn validation_error(m: &mut Msg<'_, '_>, message: &str, strip: &str) {
    let message = message.strip_prefix(strip).unwrap_or(message);
    match message.split_once(' ') {
        Some((field, what)) => {
            let path = m.field_path(field);
            m.ctx().error(&path, what);
        }
        None => m.error(message),
    }
}

#[cfg(test)]
#[path = "filters_tests.rs"]
mod tests;
