//! Clusters at run time: their endpoints (each with its connection pool),
//! the choice of endpoint per request, and the per-cluster state that
//! policy needs (circuit breaker counters, outlier ejections), kept across
//! config updates that leave it unchanged.

pub mod hash;
pub mod lb;
pub mod priority;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering::Relaxed},
        Arc, Weak,
    },
};

use crate::{
    config::Cluster,
    http::client::EndpointPool,
    policy::{circuit_breaker::Breaker, outlier::OutlierDetector},
    telemetry::stats::{ClusterStats, Registry},
};

pub struct ClusterRuntime {
    pub config: Arc<Cluster>,
    pub stats: Arc<ClusterStats>,
    pub endpoints: Vec<Arc<EndpointPool>>,
    /// The DEFAULT priority's circuit breaker (remora routes everything at
    /// DEFAULT priority, as Envoy does for routes without `priority: HIGH`).
    pub breaker: Breaker,
    pub outlier: Option<Arc<OutlierDetector>>,
    next: AtomicUsize,
}

impl ClusterRuntime {
    pub fn new(config: Arc<Cluster>, registry: &Registry) -> ClusterRuntime {
        let stats = registry.cluster(&config.name);
        let breaker = Breaker::new(config.circuit_breakers.default.clone());
        let endpoints: Vec<_> = config
            .endpoints
            .iter()
            .map(|e| Arc::new(EndpointPool::new(e.address, &config, stats.clone(), breaker.clone())))
            .collect();
        let outlier = config.outlier.clone().map(|o| {
            let hosts: Vec<SocketAddr> = endpoints.iter().map(|e| e.address).collect();
            Arc::new(OutlierDetector::new(o, &hosts, tokio::time::Instant::now()))
        });
        stats.membership_total.set(endpoints.len() as i64);
        stats.membership_healthy.set(endpoints.len() as i64);
        ClusterRuntime {
            config,
            stats,
            endpoints,
            breaker,
            outlier,
            next: AtomicUsize::new(0),
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Round robin over the cluster's endpoints; None when it has none.
    pub fn pick(&self) -> Option<&Arc<EndpointPool>> {
        self.pick_where(|_| true)
    }

    /// Round robin over the endpoints that are not ejected and that `ok`
    /// accepts (a retry's previous hosts). When outlier detection leaves no
    /// host, every host is used again: Envoy's panic mode, which balances
    /// across all hosts once too few are healthy.
    pub fn pick_where(&self, ok: impl Fn(SocketAddr) -> bool) -> Option<&Arc<EndpointPool>> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Relaxed);
        let ejected = |a: SocketAddr| self.outlier.as_ref().is_some_and(|o| o.is_ejected(a));
        let healthy = |i: usize| self.endpoints.get((start + i) % n);
        if let Some(ep) = (0..n)
            .filter_map(healthy)
            .find(|e| !ejected(e.address) && ok(e.address))
        {
            return Some(ep);
        }
        if let Some(ep) = (0..n).filter_map(healthy).find(|e| ok(e.address)) {
            return Some(ep);
        }
        self.endpoints.get(start % n)
    }

    /// Starts the outlier detector's interval timer; it stops when the
    /// runtime is gone.
    fn start_outlier_timer(self: &Arc<Self>) {
        let Some(detector) = self.outlier.clone() else { return };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let me: Weak<ClusterRuntime> = Arc::downgrade(self);
        handle.spawn(async move {
            loop {
                tokio::time::sleep_until(detector.next_tick()).await;
                let Some(rt) = me.upgrade() else { return };
                let summary = detector.tick(tokio::time::Instant::now());
                for (host, why) in &summary.ejected {
                    tracing::info!(cluster = %rt.name(), %host, reason = why.as_str(), "outlier ejected");
                }
                for host in &summary.unejected {
                    tracing::info!(cluster = %rt.name(), %host, "outlier ejection ended");
                }
                rt.update_healthy();
            }
        });
    }

    /// `membership_healthy`: hosts not ejected.
    pub fn update_healthy(&self) {
        let ejected = self
            .outlier
            .as_ref()
            .map_or(0, |o| self.endpoints.iter().filter(|e| o.is_ejected(e.address)).count());
        self.stats
            .membership_healthy
            .set(self.endpoints.len().saturating_sub(ejected) as i64);
    }
}

/// All clusters by name.
#[derive(Default)]
pub struct ClusterMap {
    clusters: HashMap<String, Arc<ClusterRuntime>>,
}

impl ClusterMap {
    pub fn new(clusters: &[Arc<Cluster>], registry: &Registry) -> ClusterMap {
        ClusterMap::rebuild(&ClusterMap::default(), clusters, registry)
    }

    /// The map for a new cluster set, reusing what survives: an unchanged
    /// cluster keeps its runtime whole; a changed one keeps the pools (and
    /// pooled connections) of endpoints whose address remains, its circuit
    /// breaker counters when the thresholds are unchanged, and the outlier
    /// state of remaining hosts when outlier detection is unchanged.
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
                    let same_breaker = prev.config.circuit_breakers == c.circuit_breakers;
                    if same_breaker {
                        rt.breaker = prev.breaker.clone();
                    }
                    let same_transport = same_breaker
                        && prev.config.protocol == c.protocol
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
                    if let (Some(p), Some(_)) = (&prev.outlier, &rt.outlier) {
                        if prev.config.outlier == c.outlier {
                            let hosts: Vec<SocketAddr> = rt.endpoints.iter().map(|e| e.address).collect();
                            p.update_hosts(&hosts);
                            rt.outlier = Some(p.clone());
                        }
                    }
                }
                // Start at a random offset so proxies started together do not march in step.
                rt.next.store(fastrand::usize(..), Relaxed);
                let rt = Arc::new(rt);
                rt.start_outlier_timer();
                rt.update_healthy();
                (c.name.clone(), rt)
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
            circuit_breakers: Default::default(),
            outlier: None,
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
