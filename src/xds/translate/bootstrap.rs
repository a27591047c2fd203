//! `envoy.config.bootstrap.v3.Bootstrap` -> `config::Bootstrap`.

use std::{collections::HashSet, sync::Arc};

use super::{cluster, listener, Ctx, Msg};
use crate::config;

const NO_TELEMETRY: &str = "accepted without effect: remora does not implement this telemetry yet";

/// Translates a decoded Bootstrap. Returns the model, or every error found;
/// warnings name what was accepted without effect.
pub fn bootstrap(mut m: Msg<'_, '_>) -> Option<config::Bootstrap> {
    let ctx = m.ctx();
    let node = m.msg("node").map(node).unwrap_or_default();
    let admin = m.msg("admin").and_then(admin);

    let mut listeners = Vec::new();
    let mut clusters = Vec::new();
    if let Some(mut sr) = m.msg("static_resources") {
        let cluster_msgs = sr.list("clusters");
        // Routes are checked against the static clusters' names (Envoy's
        // validate_clusters is on for static route configs).
        ctx.set_known_clusters(cluster_msgs.iter().filter_map(|c| c.peek_string("name")).collect());
        for c in cluster_msgs {
            if let Some(c) = cluster::cluster(c) {
                clusters.push(Arc::new(c));
            }
        }
        ctx.set_balancers(clusters.iter().map(|c| (c.name.clone(), c.lb.name())).collect());
        for l in sr.list("listeners") {
            if let Some(l) = listener::listener(l) {
                listeners.push(Arc::new(l));
            }
        }
    }

    let dynamic = m.msg("dynamic_resources").and_then(dynamic_resources);

    // Telemetry and operational knobs that do not change how traffic flows.
    for f in [
        "stats_config",
        "stats_flush_interval",
        "stats_flush_on_admin",
        "stats_sinks",
        "stats_eviction_interval",
        "deferred_stat_options",
        "stats_server_version_override",
        "hds_config",
        "tracing",
    ] {
        m.advisory(f, NO_TELEMETRY);
    }
    m.advisory(
        "layered_runtime",
        "accepted without effect: remora has no runtime layers; built-in defaults apply",
    );
    m.advisory(
        "overload_manager",
        "accepted without effect: remora has no overload manager yet (no load shedding)",
    );
    m.advisory("watchdog", "accepted without effect: remora has no watchdog");
    m.advisory("watchdogs", "accepted without effect: remora has no watchdog");
    m.advisory("application_log_config", "accepted without effect: use --log-level");
    m.advisory("enable_dispatcher_stats", NO_TELEMETRY);
    m.advisory(
        "use_tcp_for_dns_lookups",
        "accepted without effect: remora resolves no DNS yet",
    );
    m.advisory(
        "dns_resolution_config",
        "accepted without effect: remora resolves no DNS yet",
    );
    m.advisory(
        "typed_dns_resolver_config",
        "accepted without effect: remora resolves no DNS yet",
    );
    m.advisory(
        "default_regex_engine",
        "accepted: remora always uses a linear-time regex engine (like RE2)",
    );
    if let Some(mut cm) = m.msg("cluster_manager") {
        cm.advisory("load_stats_config", NO_TELEMETRY);
        cm.advisory("outlier_detection", NO_TELEMETRY);
        cm.ignore("local_cluster_name");
    }

    check_unique(ctx, &listeners, &clusters);
    if dynamic.is_none() {
        // RDS and EDS names only mean something with an ADS stream.
        for (i, l) in listeners.iter().enumerate() {
            if let config::NetworkFilter::Http(h) = &l.filter {
                if h.rds.is_some() {
                    ctx.error(
                        &format!("static_resources.listeners[{i}]"),
                        "its HTTP connection manager uses rds, which needs dynamic_resources.ads_config",
                    );
                }
            }
        }
        for (i, c) in clusters.iter().enumerate() {
            if c.eds.is_some() {
                ctx.error(
                    &format!("static_resources.clusters[{i}].type"),
                    "EDS needs dynamic_resources.ads_config",
                );
            }
        }
    }
    drop(m);
    if ctx.has_errors() {
        return None;
    }
    // `ignored` is filled by the caller from the context's warnings.
    Some(config::Bootstrap {
        node,
        admin,
        listeners,
        clusters,
        dynamic,
        ignored: Vec::new(),
    })
}

/// `dynamic_resources`: LDS and CDS over one ADS stream to a static cluster.
fn dynamic_resources(mut m: Msg<'_, '_>) -> Option<config::DynamicResources> {
    let ctx = m.ctx();
    let Some(mut ads) = m.msg("ads_config") else {
        m.error("dynamic_resources needs ads_config: remora takes xDS over one ADS stream");
        return None;
    };
    let api_type = ads.enum_name("api_type");
    let delta = match api_type.as_str() {
        "GRPC" => false,
        "DELTA_GRPC" => true,
        other => {
            ads.field_error("api_type", format!("{other} is not supported (GRPC or DELTA_GRPC)"));
            false
        }
    };
    let version = ads.enum_name("transport_api_version");
    if version != "V3" && version != "AUTO" {
        ads.field_error("transport_api_version", format!("{version}: only the v3 API exists"));
    }
    ads.ignore("set_node_on_first_message_only");
    ads.advisory(
        "rate_limit_settings",
        "accepted without effect: requests are not rate limited",
    );
    let mut services = ads.list("grpc_services");
    let mut ads_cluster = String::new();
    if services.len() != 1 {
        ads.field_error("grpc_services", "exactly one gRPC service is supported");
    }
    if let Some(mut svc) = services.pop() {
        svc.ignore("timeout");
        if svc.has("google_grpc") {
            svc.field_error("google_grpc", "google_grpc is not supported: use envoy_grpc");
        }
        if !svc.list("initial_metadata").is_empty() {
            svc.field_error("initial_metadata", "initial metadata is not supported yet");
        }
        if let Some(mut eg) = svc.msg("envoy_grpc") {
            ads_cluster = eg.string("cluster_name");
            eg.ignore("authority");
            eg.ignore("max_receive_message_length");
            eg.advisory(
                "retry_policy",
                "accepted: remora reconnects with its own bounded backoff",
            );
            ctx.check_cluster_ref(&eg.field_path("cluster_name"), &ads_cluster);
        }
    }
    drop(ads);
    let mut timeout = std::time::Duration::from_secs(15);
    let mut source = |name: &str, m: &mut Msg<'_, '_>| -> bool {
        let Some(mut cs) = m.msg(name) else { return false };
        if cs.msg("ads").is_none() {
            cs.error("only `ads: {}` config sources are supported (everything over the one ADS stream)");
            return false;
        }
        let v = cs.enum_name("resource_api_version");
        if v != "V3" && v != "AUTO" {
            cs.field_error("resource_api_version", format!("{v}: only the v3 API exists"));
        }
        if let Some(t) = cs.duration("initial_fetch_timeout") {
            timeout = t;
        }
        true
    };
    let lds = source("lds_config", &mut m);
    let cds = source("cds_config", &mut m);
    if !lds && !cds {
        m.error("dynamic_resources needs lds_config or cds_config");
    }
    if ads_cluster.is_empty() {
        return None;
    }
    Some(config::DynamicResources {
        ads_cluster,
        delta,
        lds,
        cds,
        initial_fetch_timeout: timeout,
    })
}

fn node(mut m: Msg<'_, '_>) -> config::Node {
    let n = config::Node {
        id: m.string("id"),
        cluster: m.string("cluster"),
    };
    for f in [
        "metadata",
        "locality",
        "user_agent_name",
        "user_agent_version",
        "user_agent_build_version",
        "extensions",
        "client_features",
        "listening_addresses",
        "dynamic_parameters",
    ] {
        m.ignore(f);
    }
    n
}

fn admin(mut m: Msg<'_, '_>) -> Option<config::Admin> {
    let address = m.msg("address").and_then(listener::socket_address);
    m.advisory(
        "access_log_path",
        "accepted without effect: remora does not log admin requests",
    );
    m.advisory(
        "access_log",
        "accepted without effect: remora does not log admin requests",
    );
    m.advisory(
        "profile_path",
        "accepted without effect: remora has no CPU profiler endpoint",
    );
    m.ignore("socket_options");
    m.ignore("ignore_global_conn_limit");
    let address = address.or_else(|| {
        m.error("admin.address is required when admin is given");
        None
    })?;
    Some(config::Admin { address })
}

/// Cluster and listener names must be unique.
fn check_unique(ctx: &Ctx<'_>, listeners: &[Arc<config::Listener>], clusters: &[Arc<config::Cluster>]) {
    let mut names = HashSet::new();
    for (i, c) in clusters.iter().enumerate() {
        if !names.insert(c.name.as_str()) {
            ctx.error(
                &format!("static_resources.clusters[{i}].name"),
                format!("duplicate cluster name '{}'", c.name),
            );
        }
    }
    let mut names = HashSet::new();
    for (i, l) in listeners.iter().enumerate() {
        if !names.insert(l.name.as_str()) {
            ctx.error(
                &format!("static_resources.listeners[{i}].name"),
                format!("duplicate listener name '{}'", l.name),
            );
        }
    }
}
