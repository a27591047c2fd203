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
    sync::{Arc, Weak},
};

use arc_swap::ArcSwap;

use self::{
    lb::{Balancer, HostInfo},
    priority::{HealthStatus, HostSubset, LevelHealth, Plan},
};
use crate::{
    config::Cluster,
    http::client::{EndpointPool, EndpointStats},
    policy::{circuit_breaker::Breaker, outlier::OutlierDetector},
    telemetry::stats::{ClusterStats, Registry},
};

pub struct ClusterRuntime {
    pub config: Arc<Cluster>,
    pub stats: Arc<ClusterStats>,
    /// Every endpoint, in the order of `config.endpoints`.
    pub endpoints: Vec<Arc<EndpointPool>>,
    /// The DEFAULT priority's circuit breaker (remora routes everything at
    /// DEFAULT priority, as Envoy does for routes without `priority: HIGH`).
    pub breaker: Breaker,
    pub outlier: Option<Arc<OutlierDetector>>,
    /// The priority levels present, highest first, each with its balancer.
    levels: Vec<Level>,
    /// Each level's share of traffic, recomputed when ejections change.
    plan: ArcSwap<PlanState>,
}

/// One priority level: its endpoints (indexes into `endpoints`) and a
/// balancer over them. Health and ejection filter per pick, so the balancer
/// is built once per host set.
struct Level {
    hosts: Vec<usize>,
    balancer: Balancer,
}

struct PlanState {
    /// The outlier detector's epoch the plan was computed at.
    epoch: u64,
    plan: Plan,
    healthy: usize,
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
        let mut priorities: Vec<u32> = config.endpoints.iter().map(|e| e.priority).collect();
        priorities.sort_unstable();
        priorities.dedup();
        // Gaps between priorities change nothing in Envoy's arithmetic (an
        // empty level has no availability), so only levels with hosts are kept.
        let levels = priorities
            .iter()
            .map(|&p| {
                let hosts: Vec<usize> = (0..config.endpoints.len())
                    .filter(|&i| config.endpoints[i].priority == p)
                    .collect();
                let infos: Vec<HostInfo> = hosts
                    .iter()
                    .map(|&i| HostInfo {
                        key: config.endpoints[i].address.to_string(),
                        weight: config.endpoints[i].weight,
                    })
                    .collect();
                Level {
                    balancer: Balancer::new(&config.lb, &infos),
                    hosts,
                }
            })
            .collect();
        stats.membership_total.set(endpoints.len() as i64);
        let rt = ClusterRuntime {
            config,
            stats,
            endpoints,
            breaker,
            outlier,
            levels,
            plan: ArcSwap::from_pointee(PlanState {
                epoch: u64::MAX,
                plan: Plan::default(),
                healthy: 0,
            }),
        };
        rt.refresh_plan();
        rt
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// An endpoint for a request without a hash or retry constraints.
    pub fn pick(&self) -> Option<&Arc<EndpointPool>> {
        self.pick_where(None, |_| true)
    }

    /// Chooses an endpoint as Envoy does: a priority level by the plan
    /// (healthy hosts first, then degraded ones, all hosts in panic), then a
    /// host of that level by the cluster's balancer, skipping hosts whose
    /// health, ejection or `ok` (a retry's previous hosts) rules them out.
    /// When `ok` rules out every candidate it is given up. Unlike Envoy, which
    /// re-picks at most `host_selection_retry_max_attempts` times and then
    /// keeps its last pick, this finds a host `ok` accepts whenever one is
    /// eligible. `hash` is the
    /// request's hash for ring hash and maglev. Draining hosts get requests
    /// only in panic, as in Envoy 1.40 (checked: a cluster of one DRAINING and
    /// one UNHEALTHY host splits its requests between them). None when the
    /// cluster has no host to use.
    pub fn pick_where(&self, hash: Option<u64>, ok: impl Fn(SocketAddr) -> bool) -> Option<&Arc<EndpointPool>> {
        if self.endpoints.is_empty() {
            return None;
        }
        let plan = self.current_plan();
        let choice = plan.plan.choose(hash.unwrap_or_else(|| fastrand::u64(..)))?;
        let level = self.levels.get(choice.level)?;
        if choice.hosts == HostSubset::All {
            self.stats.lb_healthy_panic.inc();
        }
        let ejected = |e: &EndpointPool| self.outlier.as_ref().is_some_and(|o| o.is_ejected(e.address));
        let fits = |i: usize| -> bool {
            let (Some(cfg), Some(ep)) = (
                self.config.endpoints.get(level.hosts[i]),
                self.endpoints.get(level.hosts[i]),
            ) else {
                return false;
            };
            match choice.hosts {
                HostSubset::Healthy => cfg.health.routable() && !ejected(ep),
                HostSubset::Degraded => cfg.health.degraded() && !ejected(ep),
                HostSubset::All => true,
            }
        };
        let active = |i: usize| {
            self.endpoints
                .get(level.hosts[i])
                .map_or(0, |e| e.stats.rq_active.get().max(0) as u64)
        };
        let addr = |i: usize| self.endpoints[level.hosts[i]].address;
        let picked = level
            .balancer
            .pick(hash, &active, &|i| fits(i) && ok(addr(i)))
            .or_else(|| level.balancer.pick(hash, &active, &fits))?;
        self.endpoints.get(level.hosts[picked])
    }

    /// The plan for the current ejections, recomputed when they changed.
    fn current_plan(&self) -> arc_swap::Guard<Arc<PlanState>> {
        let plan = self.plan.load();
        let epoch = self.outlier.as_ref().map_or(0, |o| o.epoch());
        if plan.epoch == epoch {
            return plan;
        }
        drop(plan);
        self.refresh_plan();
        self.plan.load()
    }

    /// Counts each level's healthy, degraded and draining hosts (ejected
    /// hosts count as unhealthy, as Envoy's FAILED_OUTLIER_CHECK) and
    /// recomputes the per-level loads and panic flags.
    fn refresh_plan(&self) {
        // Read the epoch first: an ejection during the count leaves the plan stale, not wrong forever.
        let epoch = self.outlier.as_ref().map_or(0, |o| o.epoch());
        let ejected = |i: usize| {
            self.outlier
                .as_ref()
                .is_some_and(|o| self.endpoints.get(i).is_some_and(|e| o.is_ejected(e.address)))
        };
        let mut healthy_total = 0;
        let levels: Vec<LevelHealth> = self
            .levels
            .iter()
            .map(|level| {
                let mut h = LevelHealth {
                    total: level.hosts.len() as u32,
                    ..LevelHealth::default()
                };
                for &i in &level.hosts {
                    let health = self
                        .config
                        .endpoints
                        .get(i)
                        .map_or(HealthStatus::Unhealthy, |e| e.health);
                    if health.excluded() {
                        h.excluded += 1;
                    } else if !ejected(i) {
                        h.healthy += u32::from(health.routable());
                        h.degraded += u32::from(health.degraded());
                    }
                }
                healthy_total += h.healthy as usize;
                h
            })
            .collect();
        let plan = priority::plan_with_overprovisioning(
            &levels,
            self.config.panic_threshold,
            self.config.overprovisioning_factor,
        );
        self.plan.store(Arc::new(PlanState {
            epoch,
            plan,
            healthy: healthy_total,
        }));
        self.stats.membership_healthy.set(healthy_total as i64);
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
                let Some(summary) = detector.tick_if_due(tokio::time::Instant::now()) else {
                    continue;
                };
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

    /// Brings the plan and `membership_healthy` (hosts routable and not
    /// ejected) up to date with the ejections.
    pub fn update_healthy(&self) {
        let _ = self.current_plan();
    }

    /// Hosts that are routable and not ejected, as of the last plan.
    pub fn healthy_hosts(&self) -> usize {
        self.current_plan().healthy
    }
}

/// One request in flight to an endpoint, counted in its `rq_active` (which
/// least-request balancing reads) until dropped with the response body.
pub struct HostActive(Arc<EndpointStats>);

impl HostActive {
    pub fn new(stats: &Arc<EndpointStats>) -> HostActive {
        stats.rq_active.inc();
        HostActive(stats.clone())
    }
}

impl Drop for HostActive {
    fn drop(&mut self) {
        self.0.rq_active.dec();
    }
}

/// A request counted in its cluster's `upstream_rq_active` until dropped
/// (with the response body, as Envoy counts a request until its stream ends).
pub struct ClusterActive(Arc<ClusterStats>);

impl ClusterActive {
    pub fn new(stats: &Arc<ClusterStats>) -> ClusterActive {
        stats.upstream_rq_active.inc();
        ClusterActive(stats.clone())
    }
}

impl Drop for ClusterActive {
    fn drop(&mut self) {
        self.0.upstream_rq_active.dec();
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
                rt.refresh_plan();
                let rt = Arc::new(rt);
                rt.start_outlier_timer();
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
mod tests;
