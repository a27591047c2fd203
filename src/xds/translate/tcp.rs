//! `envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy` -> `config::TcpProxy`.

use std::time::Duration;

use super::{access_log::access_logs, Msg};
use crate::config::{self, ClusterTarget};

pub fn tcp_proxy(mut m: Msg<'_, '_>) -> Option<config::TcpProxy> {
    let stat_prefix = m.string("stat_prefix");
    if stat_prefix.is_empty() {
        m.field_error("stat_prefix", "must not be empty");
    }
    let target = if let Some(mut wc) = m.msg("weighted_clusters") {
        let mut clusters = Vec::new();
        for mut c in wc.list("clusters") {
            let name = c.string("name");
            m.ctx().check_cluster_ref(&c.field_path("name"), &name);
            let weight = c.u32("weight") as u64;
            c.ignore("metadata_match");
            clusters.push(config::WeightedCluster {
                name,
                weight,
                headers: Default::default(),
            });
        }
        let total: u64 = clusters.iter().map(|c| c.weight).sum();
        if total == 0 {
            wc.error("weights must not all be zero");
            return None;
        }
        ClusterTarget::Weighted(config::WeightedClusters { clusters, total })
    } else {
        let name = m.string("cluster");
        if name.is_empty() {
            m.field_error("cluster", "a TCP proxy needs a cluster or weighted_clusters");
            return None;
        }
        m.ctx().check_cluster_ref(&m.field_path("cluster"), &name);
        ClusterTarget::Single(name)
    };
    // Envoy's default idle timeout is 1 hour; 0s disables it.
    let idle_timeout = match m.duration("idle_timeout") {
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
        None => Some(Duration::from_secs(3600)),
    };
    let access_logs = access_logs(&mut m);
    m.ignore("max_connect_attempts");
    m.ignore("access_log_options");
    Some(config::TcpProxy {
        stat_prefix,
        target,
        idle_timeout,
        access_logs,
    })
}
