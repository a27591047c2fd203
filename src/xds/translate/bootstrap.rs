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
        for l in sr.list("listeners") {
            if let Some(l) = listener::listener(l) {
                listeners.push(Arc::new(l));
            }
        }
    }

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
        ignored: Vec::new(),
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
