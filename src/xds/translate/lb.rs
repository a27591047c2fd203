//! Load balancing: a cluster's `lb_policy` with its `*_lb_config` (or the
//! newer `load_balancing_policy` extension list) and `common_lb_config`, and
//! a route's `hash_policy`.

use http::HeaderName;

use super::Msg;
use crate::balance::{
    hash::{HashKind, HashPolicy},
    lb::LbPolicy,
    priority::DEFAULT_PANIC_THRESHOLD,
};

const EXT: &str = "envoy.extensions.load_balancing_policies.";

/// The cluster's balancer and `healthy_panic_threshold`, from the fields of
/// a `config.cluster.v3.Cluster`.
pub fn cluster_lb(m: &mut Msg<'_, '_>) -> (LbPolicy, f64) {
    let name = m.enum_name("lb_policy");
    let mut policy = match name.as_str() {
        "ROUND_ROBIN" => LbPolicy::RoundRobin,
        "LEAST_REQUEST" => LbPolicy::least_request(),
        "RANDOM" => LbPolicy::Random,
        "RING_HASH" => LbPolicy::ring_hash(),
        "MAGLEV" => LbPolicy::maglev(),
        "LOAD_BALANCING_POLICY_CONFIG" => LbPolicy::RoundRobin,
        other => {
            m.field_error(
                "lb_policy",
                format!("{other} is not supported (ROUND_ROBIN, LEAST_REQUEST, RANDOM, RING_HASH, MAGLEV)"),
            );
            LbPolicy::RoundRobin
        }
    };
    // The per-policy config oneof: as Envoy, a config for another policy than
    // the one chosen has no effect.
    for (field, applies) in [
        (
            "least_request_lb_config",
            matches!(policy, LbPolicy::LeastRequest { .. }),
        ),
        ("ring_hash_lb_config", matches!(policy, LbPolicy::RingHash { .. })),
        ("maglev_lb_config", matches!(policy, LbPolicy::Maglev { .. })),
        ("round_robin_lb_config", policy == LbPolicy::RoundRobin),
    ] {
        match m.msg(field) {
            Some(mut c) if applies => policy_fields(&mut c, &mut policy),
            Some(c) => {
                let path = c.path.clone();
                c.abandon();
                m.ctx().warn(&path, format!("has no effect with lb_policy {name}"));
            }
            None => {}
        }
    }
    if m.has("original_dst_lb_config") {
        m.field_error("original_dst_lb_config", "ORIGINAL_DST clusters are not supported yet");
    }
    if m.has("lb_subset_config") {
        m.field_error("lb_subset_config", "subset load balancing is not supported yet");
    }
    // As Envoy: when set, `load_balancing_policy` takes precedence over `lb_policy`.
    if let Some(p) = m.msg("load_balancing_policy").and_then(extension_policy) {
        policy = p;
    }
    let panic_threshold = m
        .msg("common_lb_config")
        .map_or(DEFAULT_PANIC_THRESHOLD, common_lb_config);
    if let Err(e) = policy.validate() {
        m.error(e);
    }
    (policy, panic_threshold)
}

/// The fields of `least_request_lb_config`, `ring_hash_lb_config`,
/// `maglev_lb_config` (and of the same-named extension configs), into `policy`.
/// The cluster's and the extension's messages differ slightly, so fields one
/// of them lacks are looked for only where they exist.
fn policy_fields(c: &mut Msg<'_, '_>, policy: &mut LbPolicy) {
    let present = |c: &Msg<'_, '_>, f: &str| c.knows(f) && c.has(f);
    if present(c, "slow_start_config") {
        c.field_error("slow_start_config", "slow start is not supported yet");
    }
    for f in ["locality_lb_config", "locality_weighted_lb_config"] {
        if present(c, f) {
            c.field_error(f, "locality-weighted and zone-aware balancing are not supported yet");
        }
    }
    match policy {
        LbPolicy::LeastRequest {
            choice_count,
            active_request_bias,
        } => {
            if let Some(n) = c.wrapped_u32("choice_count") {
                *choice_count = n;
            }
            if let Some(mut bias) = c.msg("active_request_bias") {
                // A RuntimeDouble: remora has no runtime, so its default applies.
                bias.ignore("runtime_key");
                if let Some(v) = bias.f64("default_value") {
                    *active_request_bias = v;
                }
            }
            if c.knows("enable_full_scan") && c.bool("enable_full_scan") {
                c.ctx()
                    .error(&c.field_path("enable_full_scan"), "full scan is not supported yet");
            }
            if c.knows("selection_method") {
                let method = c.enum_name("selection_method");
                if method != "N_CHOICES" {
                    c.ctx().error(
                        &c.field_path("selection_method"),
                        format!("{method} is not supported yet (only N_CHOICES)"),
                    );
                }
            }
        }
        LbPolicy::RingHash {
            min_ring_size,
            max_ring_size,
        } => {
            if let Some(v) = c.wrapped("minimum_ring_size").and_then(|v| v.as_u64()) {
                *min_ring_size = v;
            }
            if let Some(v) = c.wrapped("maximum_ring_size").and_then(|v| v.as_u64()) {
                *max_ring_size = v;
            }
            let hash = c.enum_name("hash_function");
            if hash != "XX_HASH" && hash != "DEFAULT_HASH" {
                c.ctx().error(
                    &c.field_path("hash_function"),
                    format!("{hash} is not supported yet (only XX_HASH)"),
                );
            }
            consistent_hashing_fields(c);
        }
        LbPolicy::Maglev { table_size } => {
            if let Some(v) = c.wrapped("table_size").and_then(|v| v.as_u64()) {
                *table_size = v;
            }
            consistent_hashing_fields(c);
        }
        LbPolicy::RoundRobin | LbPolicy::Random => {}
    }
}

/// Hashing options that remora does not implement, wherever they appear.
fn consistent_hashing_fields(c: &mut Msg<'_, '_>) {
    if c.knows("use_hostname_for_hashing") && c.bool("use_hostname_for_hashing") {
        c.ctx().error(
            &c.field_path("use_hostname_for_hashing"),
            "hashing by hostname is not supported yet",
        );
    }
    if c.knows("hash_balance_factor") && c.has("hash_balance_factor") {
        c.field_error("hash_balance_factor", "bounded-load hashing is not supported yet");
    }
    if c.knows("consistent_hashing_lb_config") {
        if let Some(mut inner) = c.msg("consistent_hashing_lb_config") {
            consistent_hashing_fields(&mut inner);
        }
    }
}

/// `load_balancing_policy.policies`: as Envoy, the first policy remora
/// knows is used; None (with an error) when there is none.
fn extension_policy(mut m: Msg<'_, '_>) -> Option<LbPolicy> {
    let mut names = Vec::new();
    let mut chosen = None;
    for mut p in m.list("policies") {
        let Some(mut ext) = p.msg("typed_extension_config") else {
            p.error("a policy needs a typed_extension_config");
            continue;
        };
        ext.ignore("name");
        let Some((t, mut cfg)) = ext.any("typed_config") else {
            continue;
        };
        let known = match t.strip_prefix(EXT).and_then(|s| s.rsplit('.').next()) {
            Some("RoundRobin") => Some(LbPolicy::RoundRobin),
            Some("LeastRequest") => Some(LbPolicy::least_request()),
            Some("Random") => Some(LbPolicy::Random),
            Some("RingHash") => Some(LbPolicy::ring_hash()),
            Some("Maglev") => Some(LbPolicy::maglev()),
            _ => None,
        };
        match known {
            Some(mut policy) if chosen.is_none() => {
                policy_fields(&mut cfg, &mut policy);
                chosen = Some(policy);
            }
            _ => {
                names.push(t);
                cfg.abandon();
            }
        }
    }
    if chosen.is_none() {
        m.field_error(
            "policies",
            format!("none of the policies is supported (got {})", names.join(", ")),
        );
    }
    chosen
}

/// `common_lb_config`: the panic threshold; the rest is accepted only where
/// it changes nothing remora does.
fn common_lb_config(mut m: Msg<'_, '_>) -> f64 {
    let threshold = match m.msg("healthy_panic_threshold") {
        Some(mut p) => {
            let v = p.f64("value").unwrap_or(0.0);
            if !(0.0..=100.0).contains(&v) {
                p.field_error("value", format!("must be between 0 and 100, got {v}"));
            }
            v
        }
        None => DEFAULT_PANIC_THRESHOLD,
    };
    if let Some(mut z) = m.msg("zone_aware_lb_config") {
        // Not about zones: a level in panic answers 503 instead of using every host.
        if z.bool("fail_traffic_on_panic") {
            z.field_error(
                "fail_traffic_on_panic",
                "failing traffic in panic mode is not supported yet",
            );
        }
        for zone_only in ["routing_enabled", "min_cluster_size"] {
            z.advisory(
                zone_only,
                "accepted without effect: zone-aware routing is not implemented",
            );
        }
    }
    if m.has("locality_weighted_lb_config") {
        m.field_error(
            "locality_weighted_lb_config",
            "locality-weighted balancing is not supported yet",
        );
    }
    // Batching host-set updates and health-check gating change nothing here:
    // updates apply at once, and there is no active health checking.
    m.ignore("update_merge_window");
    m.ignore("ignore_new_hosts_until_first_hc");
    if m.bool("close_connections_on_host_set_change") {
        m.ctx().error(
            &m.field_path("close_connections_on_host_set_change"),
            "closing connections on host set changes is not supported yet",
        );
    }
    if let Some(mut c) = m.msg("consistent_hashing_lb_config") {
        consistent_hashing_fields(&mut c);
    }
    m.advisory(
        "override_host_status",
        "accepted without effect: hosts are never overridden",
    );
    threshold
}

/// A route's `hash_policy` list.
pub fn hash_policies(m: &mut Msg<'_, '_>) -> Vec<HashPolicy> {
    let mut out = Vec::new();
    for mut p in m.list("hash_policy") {
        let terminal = p.bool("terminal");
        let kind = if let Some(mut h) = p.msg("header") {
            let name = h.string("header_name");
            if h.has("regex_rewrite") {
                h.field_error("regex_rewrite", "rewriting the hashed header is not supported yet");
            }
            match HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) {
                Ok(n) => Some(HashKind::Header(n)),
                Err(_) => {
                    h.field_error("header_name", format!("'{name}' is not a header name"));
                    None
                }
            }
        } else if let Some(mut c) = p.msg("cookie") {
            let name = c.string("name");
            if name.is_empty() {
                c.field_error("name", "must not be empty");
            }
            if c.has("ttl") {
                c.field_error("ttl", "generating the hash cookie is not supported yet");
            }
            // Used only when the cookie is generated.
            c.ignore("path");
            c.ignore("attributes");
            Some(HashKind::Cookie(name))
        } else if let Some(mut cp) = p.msg("connection_properties") {
            cp.bool("source_ip").then_some(HashKind::SourceIp)
        } else if let Some(mut q) = p.msg("query_parameter") {
            let name = q.string("name");
            if name.is_empty() {
                q.field_error("name", "must not be empty");
            }
            Some(HashKind::QueryParameter(name))
        } else if p.has("filter_state") {
            p.field_error("filter_state", "hashing on filter state is not supported yet");
            None
        } else {
            p.error("a hash policy needs one of header, cookie, connection_properties, query_parameter");
            None
        };
        if let Some(kind) = kind {
            out.push(HashPolicy { kind, terminal });
        }
    }
    out
}
