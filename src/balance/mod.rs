//! Clusters at run time: their endpoints (each with its connection pool)
//! and the choice of endpoint per request. Round robin for now; the
//! balancing issue brings least-request, ring hash and health.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering::Relaxed},
        Arc,
    },
};

use crate::{
    config::Cluster,
    http::client::EndpointPool,
    telemetry::stats::{ClusterStats, Registry},
};

pub struct ClusterRuntime {
    pub config: Arc<Cluster>,
    pub stats: Arc<ClusterStats>,
    pub endpoints: Vec<Arc<EndpointPool>>,
    next: AtomicUsize,
}

impl ClusterRuntime {
    pub fn new(config: Arc<Cluster>, registry: &Registry) -> ClusterRuntime {
        let stats = registry.cluster(&config.name);
        let endpoints: Vec<_> = config
            .endpoints
            .iter()
            .map(|e| Arc::new(EndpointPool::new(e.address, &config, stats.clone())))
            .collect();
        stats.membership_total.set(endpoints.len() as i64);
        stats.membership_healthy.set(endpoints.len() as i64);
        ClusterRuntime {
            config,
            stats,
            endpoints,
            next: AtomicUsize::new(0),
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Round robin over the cluster's endpoints; None when it has none.
    pub fn pick(&self) -> Option<&Arc<EndpointPool>> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        let i = self.next.fetch_add(1, Relaxed);
        self.endpoints.get(i % n)
    }
}

/// All clusters by name.
#[derive(Default)]
pub struct ClusterMap {
    clusters: HashMap<String, Arc<ClusterRuntime>>,
}

impl ClusterMap {
    pub fn new(clusters: &[Arc<Cluster>], registry: &Registry) -> ClusterMap {
        let clusters = clusters
            .iter()
            .map(|c| {
                let rt = ClusterRuntime::new(c.clone(), registry);
                // Start at a random offset so proxies started together do not march in step.
                rt.next.store(fastrand::usize(..), Relaxed);
                (c.name.clone(), Arc::new(rt))
            })
            .collect();
        ClusterMap { clusters }
    }

    /// The map for a new cluster set, reusing what survives: an unchanged
    /// cluster keeps its runtime whole; a changed one keeps the pools (and
    /// pooled connections) of endpoints whose address remains.
    pub fn rebuild(old: &ClusterMap, clusters: &[Arc<Cluster>], registry: &Registry) -> ClusterMap {
        let clusters = clusters
            .iter()
            .map(|c| {
                if let Some(prev) = old.clusters.get(&c.name) {
                    if *prev.config == **c {
                        return (c.name.clone(), prev.clone());
                    }
                }
                let mut rt = ClusterRuntime::new(c.clone(), registry);
                if let Some(prev) = old.clusters.get(&c.name) {
                    let same_transport = prev.config.protocol == c.protocol
                        && prev.config.http2 == c.http2
                        && prev.config.connect_timeout == c.connect_timeout
                        && prev.config.idle_timeout == c.idle_timeout;
                    if same_transport {
                        // By address: an EDS update may carry 10,000s of endpoints.
                        let kept: HashMap<_, _> = prev.endpoints.iter().map(|p| (p.address, p)).collect();
                        for ep in &mut rt.endpoints {
                            if let Some(k) = kept.get(&ep.address) {
                                *ep = Arc::clone(k);
                            }
                        }
                    }
                }
                rt.next.store(fastrand::usize(..), Relaxed);
                (c.name.clone(), Arc::new(rt))
            })
            .collect();
        ClusterMap { clusters }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<ClusterRuntime>> {
        self.clusters.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<ClusterRuntime>> {
        let mut v: Vec<_> = self.clusters.values().collect();
        v.sort_by(|a, b| a.name().cmp(b.name()));
        v.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Endpoint, Http2Settings, UpstreamProtocol};

    fn cluster(n: u16) -> Arc<Cluster> {
        Arc::new(Cluster {
            name: "c".into(),
            connect_timeout: std::time::Duration::from_secs(1),
            protocol: UpstreamProtocol::Http1,
            http2: Http2Settings::default(),
            idle_timeout: None,
            endpoints: (0..n)
                .map(|i| Endpoint {
                    address: ([127, 0, 0, 1], 1000 + i).into(),
                })
                .collect(),
            eds: None,
        })
    }

    #[test]
    fn round_robin_visits_every_endpoint_evenly() {
        let rt = ClusterRuntime::new(cluster(3), &Registry::default());
        let mut counts = HashMap::new();
        for _ in 0..300 {
            *counts.entry(rt.pick().unwrap().address.port()).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3);
        assert!(counts.values().all(|&c| c == 100), "{counts:?}");
    }

    #[test]
    fn no_endpoints_no_pick() {
        let rt = ClusterRuntime::new(cluster(0), &Registry::default());
        assert!(rt.pick().is_none());
    }
}
