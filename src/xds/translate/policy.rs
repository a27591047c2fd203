//! Traffic-policy fields -> `policy` configs: cluster `circuit_breakers` and
//! `outlier_detection`, route `retry_policy`, `max_stream_duration` and
//! `request_mirror_policies`. Defaults are Envoy's; what a state machine's
//! `validate` refuses is reported at the field.

use http::{HeaderName, HeaderValue};

use super::{filters::fractional_percent, Msg};
use crate::{
    config::{MirrorHost, MirrorPolicy, MirrorTarget},
    policy::{
        circuit_breaker::{CircuitBreakers, RetryBudget, Thresholds},
        fault::FractionalPercent,
        grpc_timeout::MaxStreamDuration,
        outlier::OutlierConfig,
        retry::{Backoff, HeaderMatcher, RetryPolicy},
        retry_on,
    },
};

const PREVIOUS_HOSTS: &str = "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate";

/// `Cluster.circuit_breakers`: thresholds per routing priority.
pub fn circuit_breakers(mut m: Msg<'_, '_>) -> CircuitBreakers {
    let mut out = CircuitBreakers::default();
    for mut t in m.list("thresholds") {
        let priority = t.enum_name("priority");
        let mut th = Thresholds::default();
        if let Some(v) = t.wrapped_u32("max_connections") {
            th.max_connections = v;
        }
        if let Some(v) = t.wrapped_u32("max_pending_requests") {
            th.max_pending_requests = v;
        }
        if let Some(v) = t.wrapped_u32("max_requests") {
            th.max_requests = v;
        }
        if let Some(v) = t.wrapped_u32("max_retries") {
            th.max_retries = v;
        }
        if let Some(mut b) = t.msg("retry_budget") {
            let budget_percent = b.msg("budget_percent").map(|mut p| p.f64("value").unwrap_or(0.0));
            let min_retry_concurrency = b.wrapped_u32("min_retry_concurrency");
            th.retry_budget = Some(RetryBudget {
                budget_percent,
                min_retry_concurrency,
            });
        }
        th.track_remaining = t.bool("track_remaining");
        if t.wrapped_u32("max_connection_pools").is_some() {
            t.field_error("max_connection_pools", "is not supported yet");
        }
        if let Err(e) = th.validate() {
            t.error(e);
        }
        match priority.as_str() {
            "HIGH" => out.high = th,
            _ => out.default = th,
        }
    }
    if !m.list("per_host_thresholds").is_empty() {
        m.field_error("per_host_thresholds", "per-host circuit breakers are not supported yet");
    }
    out
}

/// `Cluster.outlier_detection`, with Envoy's defaults for absent fields.
pub fn outlier_detection(mut m: Msg<'_, '_>) -> OutlierConfig {
    let mut c = OutlierConfig::default();
    macro_rules! u32_field {
        ($($f:ident),*) => {$(
            if let Some(v) = m.wrapped_u32(stringify!($f)) {
                c.$f = v;
            }
        )*};
    }
    u32_field!(
        consecutive_5xx,
        consecutive_gateway_failure,
        consecutive_local_origin_failure,
        max_ejection_percent,
        enforcing_consecutive_5xx,
        enforcing_success_rate,
        enforcing_consecutive_gateway_failure,
        enforcing_consecutive_local_origin_failure,
        enforcing_local_origin_success_rate,
        enforcing_failure_percentage,
        enforcing_failure_percentage_local_origin,
        success_rate_minimum_hosts,
        success_rate_request_volume,
        success_rate_stdev_factor,
        failure_percentage_threshold,
        failure_percentage_minimum_hosts,
        failure_percentage_request_volume
    );
    if let Some(d) = m.duration("interval") {
        c.interval = d;
    }
    if let Some(d) = m.duration("base_ejection_time") {
        c.base_ejection_time = d;
    }
    if let Some(d) = m.duration("max_ejection_time") {
        c.max_ejection_time = Some(d);
    }
    if let Some(d) = m.duration("max_ejection_time_jitter") {
        c.max_ejection_time_jitter = d;
    }
    c.split_external_local_origin_errors = m.bool("split_external_local_origin_errors");
    if let Some(v) = m.wrapped("always_eject_one_host").and_then(|v| v.as_bool()) {
        c.always_eject_one_host = v;
    }
    if c.interval.is_zero() {
        m.field_error("interval", "must be greater than zero");
    }
    if m.wrapped_bool("successful_active_health_check_uneject_host")
        .unwrap_or(false)
    {
        m.field_error(
            "successful_active_health_check_uneject_host",
            "active health checking is not supported yet",
        );
    }
    if m.has("monitors") {
        m.field_error("monitors", "outlier detection monitors are not supported yet");
    }
    m.ignore("detect_degraded_hosts");
    if let Err(e) = c.validate() {
        m.error(e);
    }
    c
}

/// `RouteAction.retry_policy` (or a virtual host's).
pub fn retry_policy(mut m: Msg<'_, '_>) -> Option<RetryPolicy> {
    let mut p = RetryPolicy::default();
    let words = m.string("retry_on");
    match retry_on::parse(&words) {
        Ok(r) => p.retry_on = r,
        Err(e) => m.field_error("retry_on", e),
    }
    if let Some(n) = m.wrapped_u32("num_retries") {
        p.num_retries = n;
    }
    p.per_try_timeout = m.duration("per_try_timeout").filter(|d| !d.is_zero());
    p.per_try_idle_timeout = m.duration("per_try_idle_timeout").filter(|d| !d.is_zero());
    if let Some(mut b) = m.msg("retry_back_off") {
        let base = b.duration("base_interval");
        let max = b.duration("max_interval");
        match base {
            None => b.field_error("base_interval", "is required"),
            Some(base) => match Backoff::new(base, max) {
                Ok(backoff) => p.backoff = backoff,
                Err(e) => b.error(e),
            },
        }
    }
    p.retriable_status_codes = m
        .u32s("retriable_status_codes")
        .into_iter()
        .map(|c| c.min(u32::from(u16::MAX)) as u16)
        .collect();
    p.retriable_headers = header_matchers(&mut m, "retriable_headers");
    p.retriable_request_headers = header_matchers(&mut m, "retriable_request_headers");
    for mut pred in m.list("retry_host_predicate") {
        let name = pred.string("name");
        match pred.any("typed_config") {
            Some((t, inner)) if t == PREVIOUS_HOSTS => {
                drop(inner);
                p.previous_hosts = true;
            }
            Some((t, inner)) => {
                inner.abandon();
                pred.field_error(
                    "typed_config",
                    format!("retry host predicate '{name}' ({t}) is not supported yet"),
                );
            }
            None => pred.error(format!("retry host predicate '{name}' needs a typed_config")),
        }
    }
    let attempts = m.u64("host_selection_retry_max_attempts");
    if attempts > 0 {
        p.host_selection_retry_max_attempts = attempts.min(u64::from(u32::MAX)) as u32;
    }
    if m.has("retry_priority") {
        m.field_error("retry_priority", "retry priority plugins are not supported yet");
    }
    if m.has("rate_limited_retry_back_off") {
        m.field_error("rate_limited_retry_back_off", "is not supported yet");
    }
    if !m.list("retry_options_predicates").is_empty() {
        m.field_error("retry_options_predicates", "is not supported yet");
    }
    Some(p)
}

/// Retry header matchers: presence, or an exact value. Anything else is refused.
fn header_matchers(m: &mut Msg<'_, '_>, field: &str) -> Vec<HeaderMatcher> {
    let mut out = Vec::new();
    for mut h in m.list(field) {
        let name = h.string("name").to_ascii_lowercase();
        let invert = h.bool("invert_match");
        if invert {
            h.field_error("invert_match", "inverted retry header matchers are not supported yet");
        }
        if h.has("exact_match") {
            let v = h.string("exact_match");
            out.push(HeaderMatcher::new(&name, Some(&v)));
        } else if let Some(mut sm) = h.msg("string_match") {
            if sm.has("exact") && !sm.bool("ignore_case") {
                let v = sm.string("exact");
                out.push(HeaderMatcher::new(&name, Some(&v)));
            } else {
                sm.error("only exact, case-sensitive values are supported in retry header matchers");
                sm.abandon();
            }
        } else if h.bool("present_match") {
            out.push(HeaderMatcher::new(&name, None));
        } else if h.knows("range_match") && h.has("range_match") {
            h.field_error("range_match", "range matchers are not supported in retry policies yet");
        } else {
            out.push(HeaderMatcher::new(&name, None));
        }
    }
    out
}

/// `RouteAction.max_stream_duration`. Envoy keeps the three durations in whole
/// milliseconds; a set `grpc_timeout_header_max` of 0 means "honour
/// `grpc-timeout` without a cap", unset means "ignore the header".
pub fn max_stream_duration(mut m: Msg<'_, '_>) -> MaxStreamDuration {
    MaxStreamDuration {
        max: m.duration_ms("max_stream_duration"),
        grpc_timeout_header_max: m.duration_ms("grpc_timeout_header_max"),
        grpc_timeout_header_offset: m.duration_ms("grpc_timeout_header_offset"),
    }
}

/// One `RouteAction.RequestMirrorPolicy`.
pub fn mirror_policy(mut m: Msg<'_, '_>) -> Option<MirrorPolicy> {
    let cluster = m.string("cluster");
    let header = m.string("cluster_header");
    let target = match (cluster.is_empty(), header.is_empty()) {
        (false, true) => {
            m.ctx().check_cluster_ref(&m.field_path("cluster"), &cluster);
            MirrorTarget::Cluster(cluster)
        }
        (true, false) => match HeaderName::from_bytes(header.to_ascii_lowercase().as_bytes()) {
            Ok(name) => MirrorTarget::Header(name),
            Err(_) => {
                m.field_error("cluster_header", format!("'{header}' is not a valid header name"));
                return None;
            }
        },
        (false, false) => {
            m.error("only one of cluster and cluster_header can be set");
            return None;
        }
        (true, true) => {
            m.error("a mirror policy needs cluster or cluster_header");
            return None;
        }
    };
    // No runtime to look the key up in: the default value is the fraction (100% when unset).
    let fraction = match m.msg("runtime_fraction") {
        Some(mut rf) => {
            rf.ignore("runtime_key");
            rf.msg("default_value").map(fractional_percent).unwrap_or_default()
        }
        None => FractionalPercent::hundred(100),
    };
    m.advisory("trace_sampled", "accepted without effect: remora does not trace yet");
    let no_suffix = m.bool("disable_shadow_host_suffix_append");
    let rewrite = m.string("host_rewrite_literal");
    let host = if !rewrite.is_empty() {
        if HeaderValue::from_str(&rewrite).is_err() {
            m.field_error("host_rewrite_literal", format!("'{rewrite}' is not a valid host"));
            return None;
        }
        MirrorHost::Rewrite(rewrite)
    } else if no_suffix {
        MirrorHost::Unchanged
    } else {
        MirrorHost::ShadowSuffix
    };
    if !m.list("request_headers_mutations").is_empty() {
        m.field_error("request_headers_mutations", "is not supported yet");
        return None;
    }
    Some(MirrorPolicy { target, fraction, host })
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
