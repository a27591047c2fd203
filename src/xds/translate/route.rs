//! `envoy.config.route.v3.RouteConfiguration` -> `config::RouteConfig`.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use regex::Regex;

use super::{filters::per_filter_configs, Msg};
use crate::config::{
    self, AppendAction, ClusterTarget, DirectResponse, ForwardAction, HeaderAdd, HeaderMatcher, HeaderOps, HeaderRule,
    MirrorPolicy, PathMatch, RetryPolicy, RouteAction, StringMatch, StringMatchKind,
};

pub fn route_config(mut m: Msg<'_, '_>) -> Option<config::RouteConfig> {
    let name = m.string("name");
    let headers = header_ops(&mut m);
    let ignore_port_in_host_matching = m.bool("ignore_port_in_host_matching");
    let inherited = Inherited {
        retry: None,
        mirrors: mirror_policies(&mut m),
        attempt_count: config::AttemptCount::default(),
    };
    m.ignore("validate_clusters");
    m.ignore("max_direct_response_body_size_bytes");
    if m.has("vhds") {
        m.field_error("vhds", "VHDS is not supported yet");
    }
    let mut virtual_hosts = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for vh in m.list("virtual_hosts") {
        let path = vh.path.clone();
        if let Some(vh) = virtual_host(vh, &inherited) {
            // Envoy rejects a domain that appears in two virtual hosts.
            for d in &vh.domains {
                if let Some(other) = seen.insert(d.clone(), vh.name.clone()) {
                    m.ctx().error(
                        &format!("{path}.domains"),
                        format!("domain '{d}' is already used by virtual host '{other}'"),
                    );
                }
            }
            virtual_hosts.push(vh);
        }
    }
    Some(config::RouteConfig {
        name,
        virtual_hosts,
        headers,
        ignore_port_in_host_matching,
    })
}

/// What a virtual host (and, for mirrors, its route configuration) gives the
/// routes that set none of their own: Envoy takes the most specific one whole,
/// never merging fields.
#[derive(Default)]
struct Inherited {
    retry: Option<Arc<RetryPolicy>>,
    mirrors: Vec<MirrorPolicy>,
    attempt_count: config::AttemptCount,
}

/// `request_mirror_policies` of a route configuration, virtual host or route.
fn mirror_policies(m: &mut Msg<'_, '_>) -> Vec<MirrorPolicy> {
    m.list("request_mirror_policies")
        .into_iter()
        .filter_map(super::policy::mirror_policy)
        .collect()
}

fn virtual_host(mut m: Msg<'_, '_>, from_config: &Inherited) -> Option<config::VirtualHost> {
    let name = m.string("name");
    let domains: Vec<String> = m
        .strings("domains")
        .into_iter()
        .map(|d| d.to_ascii_lowercase())
        .collect();
    if domains.is_empty() {
        m.field_error("domains", "a virtual host needs at least one domain");
    }
    for (i, d) in domains.iter().enumerate() {
        if d.is_empty()
            || (d.len() > 1 && d.matches('*').count() > 1)
            || (d.len() > 1 && d.contains('*') && !d.starts_with('*') && !d.ends_with('*'))
        {
            m.ctx().error(
                &format!("{}[{i}]", m.field_path("domains")),
                format!("invalid domain pattern '{d}'"),
            );
        }
    }
    let headers = header_ops(&mut m);
    let mirrors = mirror_policies(&mut m);
    let inherited = Inherited {
        retry: m
            .msg("retry_policy")
            .and_then(super::policy::retry_policy)
            .map(Arc::new),
        mirrors: if mirrors.is_empty() {
            from_config.mirrors.clone()
        } else {
            mirrors
        },
        attempt_count: config::AttemptCount {
            request: m.bool("include_request_attempt_count"),
            response: m.bool("include_attempt_count_in_response"),
        },
    };
    let routes = m
        .list("routes")
        .into_iter()
        .filter_map(|r| route(r, &inherited))
        .collect();
    let filter_overrides = per_filter_configs(&mut m);
    m.ignore("metadata");
    m.advisory(
        "virtual_clusters",
        "accepted without effect: virtual cluster stats are not kept",
    );
    if m.enum_name("require_tls") != "NONE" {
        m.field_error("require_tls", "TLS redirects are not supported yet");
    }
    Some(config::VirtualHost {
        name,
        domains,
        routes,
        headers,
        filter_overrides,
    })
}

fn route(mut m: Msg<'_, '_>, inherited: &Inherited) -> Option<config::Route> {
    let name = m.string("name");
    let matcher = match m.msg("match") {
        Some(mm) => route_match(mm),
        None => {
            m.field_error("match", "a route needs a match");
            None
        }
    };
    let action = if let Some(ra) = m.msg("route") {
        route_action(ra, inherited).map(RouteAction::Forward)
    } else if let Some(dr) = m.msg("direct_response") {
        direct_response(dr).map(RouteAction::Direct)
    } else if m.has("redirect") {
        m.field_error("redirect", "redirect routes are not supported yet");
        None
    } else {
        m.error("a route needs an action: route or direct_response");
        None
    };
    let headers = header_ops(&mut m);
    m.ignore("metadata");
    m.ignore("stat_prefix");
    m.ignore("per_request_buffer_limit_bytes");
    m.advisory("decorator", "accepted without effect: remora does not trace yet");
    m.advisory("tracing", "accepted without effect: remora does not trace yet");
    let filter_overrides = per_filter_configs(&mut m);
    Some(config::Route {
        name,
        matcher: matcher?,
        action: action?,
        headers,
        filter_overrides,
    })
}

fn route_match(mut m: Msg<'_, '_>) -> Option<config::RouteMatch> {
    let case_sensitive = m.wrapped_bool("case_sensitive").unwrap_or(true);
    let path = if m.has("prefix") {
        let p = m.string("prefix");
        PathMatch::Prefix(if case_sensitive { p } else { p.to_ascii_lowercase() })
    } else if m.has("path") {
        let p = m.string("path");
        PathMatch::Exact(if case_sensitive { p } else { p.to_ascii_lowercase() })
    } else if let Some(rx) = m.msg("safe_regex") {
        PathMatch::Regex(regex_matcher(rx)?)
    } else if m.has("path_separated_prefix") {
        let p = m.string("path_separated_prefix");
        if !p.starts_with('/') || (p.len() > 1 && p.ends_with('/')) || p.contains(['?', '#']) {
            m.field_error("path_separated_prefix", "must start with '/' and not end with '/'");
        }
        PathMatch::SeparatedPrefix(if case_sensitive { p } else { p.to_ascii_lowercase() })
    } else if m.has("connect_matcher") {
        m.field_error("connect_matcher", "CONNECT routes are not supported yet");
        return None;
    } else if m.has("path_match_policy") {
        m.field_error("path_match_policy", "path match policies are not supported yet");
        return None;
    } else {
        // An empty prefix is set explicitly as "" in some configs; proto3 drops it.
        PathMatch::Prefix(String::new())
    };
    let headers = m.list("headers").into_iter().filter_map(header_matcher).collect();
    let grpc = m.msg("grpc").is_some();
    Some(config::RouteMatch {
        path,
        case_sensitive,
        headers,
        grpc,
    })
}

/// A `type.matcher.v3.RegexMatcher`: compiled anchored, as Envoy matches
/// safe_regex against the whole value.
fn regex_matcher(mut m: Msg<'_, '_>) -> Option<Regex> {
    let source = m.string("regex");
    if let Some(mut re2) = m.msg("google_re2") {
        re2.ignore("max_program_size");
    }
    match Regex::new(&format!("^(?:{source})$")) {
        Ok(r) => Some(r),
        Err(e) => {
            let detail = e.to_string().lines().last().unwrap_or("").trim().to_string();
            m.field_error("regex", format!("invalid regex '{source}': {detail}"));
            None
        }
    }
}

fn header_matcher(mut m: Msg<'_, '_>) -> Option<HeaderMatcher> {
    let raw_name = m.string("name");
    let invert = m.bool("invert_match");
    let missing_as_empty = m.bool("treat_missing_header_as_empty");
    let Ok(name) = HeaderName::from_bytes(raw_name.to_ascii_lowercase().as_bytes()) else {
        m.field_error("name", format!("'{raw_name}' is not a valid header name"));
        return None;
    };
    let exact = |s: String| StringMatch {
        kind: StringMatchKind::Exact(s),
        ignore_case: false,
    };
    let rule = if m.has("exact_match") {
        HeaderRule::String(exact(m.string("exact_match")))
    } else if m.has("prefix_match") {
        HeaderRule::String(StringMatch {
            kind: StringMatchKind::Prefix(m.string("prefix_match")),
            ignore_case: false,
        })
    } else if m.has("suffix_match") {
        HeaderRule::String(StringMatch {
            kind: StringMatchKind::Suffix(m.string("suffix_match")),
            ignore_case: false,
        })
    } else if m.has("contains_match") {
        HeaderRule::String(StringMatch {
            kind: StringMatchKind::Contains(m.string("contains_match")),
            ignore_case: false,
        })
    } else if let Some(rx) = m.msg("safe_regex_match") {
        HeaderRule::String(StringMatch {
            kind: StringMatchKind::Regex(regex_matcher(rx)?),
            ignore_case: false,
        })
    } else if m.has("present_match") {
        HeaderRule::Present(m.bool("present_match"))
    } else if let Some(sm) = m.msg("string_match") {
        HeaderRule::String(string_matcher(sm)?)
    } else if m.has("range_match") {
        m.field_error("range_match", "range matches are not supported yet");
        return None;
    } else {
        // No specifier: Envoy matches when the header is present.
        HeaderRule::Present(true)
    };
    Some(HeaderMatcher {
        name,
        rule,
        invert,
        missing_as_empty,
    })
}

fn string_matcher(mut m: Msg<'_, '_>) -> Option<StringMatch> {
    let ignore_case = m.bool("ignore_case");
    let kind = if m.has("exact") {
        StringMatchKind::Exact(m.string("exact"))
    } else if m.has("prefix") {
        StringMatchKind::Prefix(m.string("prefix"))
    } else if m.has("suffix") {
        StringMatchKind::Suffix(m.string("suffix"))
    } else if m.has("contains") {
        StringMatchKind::Contains(m.string("contains"))
    } else if let Some(rx) = m.msg("safe_regex") {
        StringMatchKind::Regex(regex_matcher(rx)?)
    } else if m.has("custom") {
        m.field_error("custom", "custom string matchers are not supported");
        return None;
    } else {
        // An empty exact match: Envoy requires one of the specifiers.
        m.error("a string matcher needs one of exact, prefix, suffix, contains, safe_regex");
        return None;
    };
    Some(StringMatch { kind, ignore_case })
}

fn route_action(mut m: Msg<'_, '_>, inherited: &Inherited) -> Option<ForwardAction> {
    let ctx = m.ctx();
    let target = if m.has("cluster") {
        let name = m.string("cluster");
        ctx.check_cluster_ref(&m.field_path("cluster"), &name);
        ClusterTarget::Single(name)
    } else if let Some(mut wc) = m.msg("weighted_clusters") {
        let mut clusters = Vec::new();
        for mut c in wc.list("clusters") {
            let name = c.string("name");
            if name.is_empty() {
                c.field_error("name", "must not be empty");
            }
            ctx.check_cluster_ref(&c.field_path("name"), &name);
            let weight = c.wrapped_u32("weight").unwrap_or(0) as u64;
            let headers = header_ops(&mut c);
            c.ignore("metadata_match");
            clusters.push(config::WeightedCluster { name, weight, headers });
        }
        let sum: u64 = clusters.iter().map(|c| c.weight).sum();
        if let Some(total) = wc.wrapped_u32("total_weight") {
            if total as u64 != sum {
                wc.field_error("total_weight", format!("is {total} but the weights add up to {sum}"));
            }
        }
        wc.ignore("runtime_key_prefix");
        if clusters.is_empty() {
            wc.field_error("clusters", "at least one cluster is required");
            return None;
        }
        if sum == 0 {
            wc.field_error("clusters", "weights add up to zero");
            return None;
        }
        ClusterTarget::Weighted(config::WeightedClusters { clusters, total: sum })
    } else if m.has("cluster_header") {
        m.field_error("cluster_header", "cluster_header is not supported yet");
        return None;
    } else {
        m.error("a route action needs cluster or weighted_clusters");
        return None;
    };
    let prefix_rewrite = m.has("prefix_rewrite").then(|| m.string("prefix_rewrite"));
    let host_rewrite = m.has("host_rewrite_literal").then(|| m.string("host_rewrite_literal"));
    // Envoy's default route timeout is 15 s; 0 disables it.
    let timeout = match m.duration("timeout") {
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
        None => Some(Duration::from_secs(15)),
    };
    let cluster_not_found_status = match m.enum_name("cluster_not_found_response_code").as_str() {
        "NOT_FOUND" => StatusCode::NOT_FOUND,
        "INTERNAL_SERVER_ERROR" => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    // Every request uses the DEFAULT priority's breaker thresholds; a HIGH
    // route would silently share them, so it is refused until it has its own.
    if m.enum_name("priority") == "HIGH" {
        m.field_error(
            "priority",
            "HIGH routing priority (its own circuit breaker thresholds) is not supported yet",
        );
    }
    m.ignore("include_vh_rate_limits");
    // A route's own retry policy replaces the virtual host's whole.
    let retry = match m.msg("retry_policy") {
        Some(r) => super::policy::retry_policy(r).map(Arc::new),
        None => inherited.retry.clone(),
    };
    let max_stream_duration = m.msg("max_stream_duration").map(super::policy::max_stream_duration);
    let max_grpc_timeout = m.duration_ms("max_grpc_timeout");
    let grpc_timeout_offset = m.duration_ms("grpc_timeout_offset");
    let idle_timeout = m.duration_ms("idle_timeout");
    let mirrors = mirror_policies(&mut m);
    let hash_policy = super::lb::hash_policies(&mut m);
    if !hash_policy.is_empty() {
        let names: Vec<&str> = match &target {
            ClusterTarget::Single(n) => vec![n.as_str()],
            ClusterTarget::Weighted(w) => w.clusters.iter().map(|c| c.name.as_str()).collect(),
        };
        ctx.check_hash_targets(&m.field_path("hash_policy"), names);
    }
    Some(ForwardAction {
        target,
        prefix_rewrite,
        host_rewrite,
        timeout,
        cluster_not_found_status,
        retry,
        max_stream_duration,
        max_grpc_timeout,
        grpc_timeout_offset,
        idle_timeout,
        mirrors: if mirrors.is_empty() {
            inherited.mirrors.clone()
        } else {
            mirrors
        },
        hash_policy,
        attempt_count: inherited.attempt_count,
    })
}

fn direct_response(mut m: Msg<'_, '_>) -> Option<DirectResponse> {
    let code = m.u32("status");
    let status = match StatusCode::from_u16(code as u16) {
        Ok(s) if (200..600).contains(&code) => s,
        _ => {
            m.field_error("status", format!("{code} is not an HTTP status between 200 and 599"));
            return None;
        }
    };
    let body = m.msg("body").and_then(data_source);
    Some(DirectResponse { status, body })
}

/// A `core.v3.DataSource`: inline bytes or string, or a file read now.
fn data_source(mut m: Msg<'_, '_>) -> Option<Bytes> {
    if m.has("inline_string") {
        return Some(Bytes::from(m.string("inline_string")));
    }
    if let Some(b) = m.bytes("inline_bytes") {
        return Some(b);
    }
    if m.has("filename") {
        let file = m.string("filename");
        return match std::fs::read(&file) {
            Ok(b) => Some(Bytes::from(b)),
            Err(e) => {
                m.field_error("filename", format!("cannot read '{file}': {e}"));
                None
            }
        };
    }
    if m.has("environment_variable") {
        let var = m.string("environment_variable");
        return match std::env::var(&var) {
            Ok(v) => Some(Bytes::from(v)),
            Err(_) => {
                m.field_error("environment_variable", format!("'{var}' is not set"));
                None
            }
        };
    }
    None
}

/// The four header-mutation lists shared by route configs, virtual hosts,
/// routes and weighted clusters.
fn header_ops(m: &mut Msg<'_, '_>) -> HeaderOps {
    let mut ops = HeaderOps::default();
    for h in m.list("request_headers_to_add") {
        ops.request_add.extend(header_add(h));
    }
    for h in m.list("response_headers_to_add") {
        ops.response_add.extend(header_add(h));
    }
    for (field, out) in [
        ("request_headers_to_remove", &mut ops.request_remove),
        ("response_headers_to_remove", &mut ops.response_remove),
    ] {
        for (i, name) in m.strings(field).into_iter().enumerate() {
            let lower = name.to_ascii_lowercase();
            // As Envoy: pseudo-headers and Host cannot be removed.
            if lower.starts_with(':') || lower == "host" {
                m.ctx().error(
                    &format!("{}[{i}]", m.field_path(field)),
                    format!("'{name}' cannot be removed"),
                );
                continue;
            }
            match HeaderName::from_bytes(lower.as_bytes()) {
                Ok(n) => out.push(n),
                Err(_) => m.ctx().error(
                    &format!("{}[{i}]", m.field_path(field)),
                    format!("'{name}' is not a header name"),
                ),
            }
        }
    }
    ops
}

pub(super) fn header_add(mut m: Msg<'_, '_>) -> Option<HeaderAdd> {
    let Some(mut h) = m.msg("header") else {
        m.field_error("header", "a header to add needs a header");
        return None;
    };
    let key = h.string("key");
    let mut value = h.string("value");
    if let Some(raw) = h.bytes("raw_value") {
        value = String::from_utf8_lossy(&raw).into_owned();
    }
    let name = match HeaderName::from_bytes(key.to_ascii_lowercase().as_bytes()) {
        Ok(n) if !key.starts_with(':') && !key.eq_ignore_ascii_case("host") => n,
        _ => {
            h.field_error("key", format!("'{key}' cannot be added"));
            return None;
        }
    };
    if value.contains('%') {
        h.field_error(
            "value",
            format!("'{value}': header value formatters (%...%) are not supported yet"),
        );
        return None;
    }
    let Ok(value) = HeaderValue::from_str(&value) else {
        h.field_error("value", "not a valid header value");
        return None;
    };
    drop(h);
    let append = m.wrapped_bool("append");
    let action = match m.enum_name("append_action").as_str() {
        "ADD_IF_ABSENT" => AppendAction::AddIfAbsent,
        "OVERWRITE_IF_EXISTS_OR_ADD" => AppendAction::OverwriteIfExistsOrAdd,
        "OVERWRITE_IF_EXISTS" => AppendAction::OverwriteIfExists,
        // The deprecated `append: false` means overwrite.
        _ if append == Some(false) => AppendAction::OverwriteIfExistsOrAdd,
        _ => AppendAction::AppendIfExistsOrAdd,
    };
    let keep_empty = m.bool("keep_empty_value");
    Some(HeaderAdd {
        name,
        value,
        action,
        keep_empty,
    })
}
