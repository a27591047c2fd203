//! Load balancing through the proxy with real upstreams: least request
//! steering away from a slow host, ring hash and maglev keeping a key on one
//! host, weighted endpoints, EDS health status, panic mode, and priority
//! failover with the overprovisioning factor. Each test names the Envoy
//! behaviour it checks.

mod common;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use common::*;
use http_body_util::Full;

async fn healthy(name: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
    answering(name, 200, Duration::ZERO).await
}

/// One `lb_endpoints` entry with extra endpoint fields (`load_balancing_weight`,
/// `health_status`).
fn ep(addr: SocketAddr, extra: &str) -> String {
    format!(
        "\n        - endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}{}",
        addr.ip(),
        addr.port(),
        if extra.is_empty() {
            String::new()
        } else {
            format!("\n          {extra}")
        }
    )
}

/// A STATIC cluster whose `endpoints` list is given as localities
/// `(priority, lb_endpoints)`.
fn cluster_with(name: &str, extra: &str, localities: &[(u32, String)]) -> String {
    let locs: String = localities
        .iter()
        .map(|(p, eps)| format!("\n      - priority: {p}\n        lb_endpoints:{eps}"))
        .collect();
    format!(
        "  - name: {name}\n    type: STATIC\n    connect_timeout: 0.5s{extra}\n    load_assignment:\n      cluster_name: {name}\n      endpoints:{locs}\n"
    )
}

fn one_route(cluster: &str) -> String {
    format!(
        r#"route_config:
  virtual_hosts:
  - name: all
    domains: ["*"]
    routes:
    - match: {{ prefix: / }}
      route: {{ cluster: {cluster} }}"#
    )
}

/// Builds a request carrying a hash key.
type MakeRequest = fn(&str) -> http::Request<Full<Bytes>>;

/// Sends `n` requests over one connection and counts answers by body.
async fn tally(c: &mut H1, n: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let r = c.get("svc", "/").await;
        *seen.entry(r.text()).or_insert(0) += 1;
    }
    seen
}

/// Envoy LEAST_REQUEST with equal weights is power of two choices: of two
/// random hosts, the one with fewer active requests wins. A host that holds
/// each request 40 ms keeps active requests while the fast host drains its
/// own at once, so the slow host gets far fewer than round robin's half.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_steers_away_from_a_slow_host() {
    let (slow, slow_hits) = answering("slow", 200, Duration::from_millis(40)).await;
    let (fast, fast_hits) = healthy("fast").await;
    let clusters = cluster_with(
        "svc",
        "\n    lb_policy: LEAST_REQUEST",
        &[(0, ep(slow, "") + &ep(fast, ""))],
    );
    let p = proxy(&http_bootstrap(&one_route("svc"), &clusters)).await;
    let addr = p.listener("http").expect("listener");
    let loops: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(async move {
                let mut c = H1::connect(addr).await;
                for _ in 0..50 {
                    assert_eq!(c.get("svc", "/").await.status, 200);
                }
            })
        })
        .collect();
    for l in loops {
        within("client loop", l).await.expect("client loop");
    }
    let (slow_n, fast_n) = (slow_hits.load(Ordering::SeqCst), fast_hits.load(Ordering::SeqCst));
    assert_eq!(slow_n + fast_n, 200);
    assert!(
        slow_n < 80,
        "the slow host got {slow_n} of 200 (round robin would give 100; P2C about 50)"
    );
}

/// Envoy RING_HASH and MAGLEV with a route `hash_policy`: a request's header,
/// cookie or query parameter picks the same host every time, and different
/// keys spread over the hosts. A source_ip policy keeps one client on one host
/// across connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_balancers_keep_a_key_on_one_host() {
    let (a, _) = healthy("a").await;
    let (b, _) = healthy("b").await;
    let (c3, _) = healthy("c").await;
    let eps = ep(a, "") + &ep(b, "") + &ep(c3, "");
    let clusters = cluster_with("ring", "\n    lb_policy: RING_HASH", &[(0, eps.clone())])
        + &cluster_with("mag", "\n    lb_policy: MAGLEV", &[(0, eps)]);
    let hcm = r#"route_config:
  virtual_hosts:
  - name: all
    domains: ["*"]
    routes:
    - match: { prefix: /header }
      route:
        cluster: ring
        hash_policy: [{ header: { header_name: x-user } }]
    - match: { prefix: /cookie }
      route:
        cluster: mag
        hash_policy: [{ cookie: { name: session } }]
    - match: { prefix: /query }
      route:
        cluster: ring
        hash_policy: [{ query_parameter: { name: user } }]
    - match: { prefix: /source }
      route:
        cluster: mag
        hash_policy: [{ connection_properties: { source_ip: true } }]"#;
    let p = proxy(&http_bootstrap(hcm, &clusters)).await;
    let addr = p.listener("http").expect("listener");
    let mut c = H1::connect(addr).await;

    let kinds: [(&str, MakeRequest); 3] = [
        ("header", |k| {
            let mut r = get("svc", "/header");
            r.headers_mut().insert("x-user", k.parse().expect("value"));
            r
        }),
        ("cookie", |k| {
            let mut r = get("svc", "/cookie");
            let v = format!("theme=dark; session={k}");
            r.headers_mut().insert("cookie", v.parse().expect("value"));
            r
        }),
        ("query", |k| get("svc", &format!("/query?x=1&user={k}"))),
    ];
    for (kind, make) in kinds {
        let mut hosts_used = std::collections::HashSet::new();
        for key in 0..24 {
            let key = format!("user-{key}");
            let first = c.send(make(&key)).await.text();
            for _ in 0..4 {
                let again = c.send(make(&key)).await.text();
                assert_eq!(again, first, "{kind} hash: {key} moved from {first} to {again}");
            }
            hosts_used.insert(first);
        }
        assert!(
            hosts_used.len() >= 2,
            "{kind} hash: 24 keys all landed on {hosts_used:?}"
        );
    }

    let first = c.get("svc", "/source").await.text();
    for _ in 0..5 {
        let mut other = H1::connect(addr).await;
        assert_eq!(other.get("svc", "/source").await.text(), first, "source_ip hash moved");
    }
}

/// Envoy: `load_balancing_weight` 3:1 under ROUND_ROBIN gives 3:1 of the
/// requests; EDS `health_status` DRAINING and UNHEALTHY hosts get none while
/// healthy hosts remain, and UNKNOWN counts as healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_and_health_status_shape_the_split() {
    let (heavy, _) = healthy("heavy").await;
    let (light, _) = healthy("light").await;
    let (draining, draining_hits) = healthy("draining").await;
    let (sick, sick_hits) = healthy("sick").await;
    let eps = ep(heavy, "load_balancing_weight: 3\n          health_status: HEALTHY")
        + &ep(light, "health_status: UNKNOWN")
        + &ep(draining, "health_status: DRAINING")
        + &ep(sick, "health_status: UNHEALTHY");
    let p = proxy(&http_bootstrap(
        &one_route("svc"),
        &cluster_with("svc", "", &[(0, eps)]),
    ))
    .await;
    let mut c = H1::connect(p.listener("http").expect("listener")).await;
    let seen = tally(&mut c, 200).await;
    let heavy_n = seen.get("heavy").copied().unwrap_or(0);
    let light_n = seen.get("light").copied().unwrap_or(0);
    assert_eq!(heavy_n + light_n, 200, "only healthy hosts answer: {seen:?}");
    assert!((135..=165).contains(&heavy_n), "3:1 weights gave {seen:?}");
    let admin = p.admin.expect("admin");
    let clusters = H1::connect(admin).await.get("admin", "/clusters").await.text();
    assert!(clusters.contains(&format!("svc::{heavy}::weight::3")), "{clusters}");
    assert_eq!(draining_hits.load(Ordering::SeqCst), 0);
    assert_eq!(sick_hits.load(Ordering::SeqCst), 0);
}

/// Envoy: with fewer healthy hosts than `healthy_panic_threshold` (here all
/// unhealthy) the priority is in panic and balances across all its hosts,
/// DRAINING ones included (checked against Envoy 1.40: a cluster of one
/// DRAINING and one UNHEALTHY host splits requests 5/5 and counts
/// `lb_healthy_panic`). Outside panic a DRAINING host gets nothing (above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_mode_balances_across_every_host() {
    let (u1, _) = healthy("u1").await;
    let (u2, _) = healthy("u2").await;
    let (draining, draining_hits) = healthy("draining").await;
    let eps = ep(u1, "health_status: UNHEALTHY")
        + &ep(u2, "health_status: TIMEOUT")
        + &ep(draining, "health_status: DRAINING");
    let p = proxy(&http_bootstrap(
        &one_route("svc"),
        &cluster_with("svc", "", &[(0, eps)]),
    ))
    .await;
    let mut c = H1::connect(p.listener("http").expect("listener")).await;
    let seen = tally(&mut c, 39).await;
    for host in ["u1", "u2", "draining"] {
        assert_eq!(seen.get(host).copied().unwrap_or(0), 13, "{seen:?}");
    }
    assert_eq!(draining_hits.load(Ordering::SeqCst), 13);
    let admin = p.admin.expect("admin");
    // /clusters shows each host's flags as Envoy 1.40 does for these statuses.
    let clusters = H1::connect(admin).await.get("admin", "/clusters").await.text();
    for line in [
        format!("svc::{u1}::health_flags::/failed_eds_health"),
        format!("svc::{u2}::health_flags::/failed_eds_health"),
        format!("svc::{draining}::health_flags::/eds_status_draining"),
    ] {
        assert!(clusters.contains(&line), "missing {line}:\n{clusters}");
    }
    let stats = H1::connect(admin).await.get("admin", "/stats/prometheus").await.text();
    assert!(
        stats.contains("envoy_cluster_lb_healthy_panic{envoy_cluster_name=\"svc\"} 39"),
        "panic picks are counted:\n{stats}"
    );
}

/// Envoy priority levels: P1 idles while P0 is healthy. When outlier
/// detection ejects one of P0's two hosts, P0 is 50% healthy and keeps
/// 50% x 1.4 (the overprovisioning factor) = 70% of the traffic, P1 the rest;
/// when P0 has no healthy host left, P1 takes everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_failover_follows_the_overprovisioning_factor() {
    let (bad, bad_hits) = answering("bad", 503, Duration::ZERO).await;
    let (p0_good, _) = healthy("p0").await;
    let (p1, _) = healthy("p1").await;
    let outlier = "\n    outlier_detection: { consecutive_5xx: 3, max_ejection_percent: 100 }";
    let clusters = cluster_with("svc", outlier, &[(0, ep(bad, "") + &ep(p0_good, "")), (1, ep(p1, ""))]);
    let p = proxy(&http_bootstrap(&one_route("svc"), &clusters)).await;
    let mut c = H1::connect(p.listener("http").expect("listener")).await;

    // P0 fully healthy: round robin over its two hosts, P1 idle, until the
    // bad host's third consecutive 503 ejects it.
    let mut sent = 0;
    while bad_hits.load(Ordering::SeqCst) < 3 {
        assert!(
            sent < 10,
            "round robin over P0 should reach the bad host 3 times in 6 requests"
        );
        let r = c.get("svc", "/").await;
        assert_ne!(r.text(), "p1", "P1 idles while P0 is healthy");
        sent += 1;
    }

    // One of two P0 hosts ejected: P0 carries 70%, P1 30%.
    let seen = tally(&mut c, 400).await;
    assert_eq!(bad_hits.load(Ordering::SeqCst), 3, "the ejected host gets nothing");
    let admin = p.admin.expect("admin");
    let clusters = H1::connect(admin).await.get("admin", "/clusters").await.text();
    for line in [
        format!("svc::{bad}::health_flags::/failed_outlier_check"),
        format!("svc::{p0_good}::health_flags::healthy"),
        format!("svc::{p1}::priority::1"),
    ] {
        assert!(clusters.contains(&line), "missing {line}:\n{clusters}");
    }
    let json = H1::connect(admin)
        .await
        .get("admin", "/clusters?format=json")
        .await
        .json();
    let bad_status = json["cluster_statuses"][0]["host_statuses"]
        .as_array()
        .and_then(|hosts| {
            hosts
                .iter()
                .find(|h| h["address"]["socket_address"]["port_value"] == bad.port())
        })
        .map(|h| h["health_status"].clone());
    assert_eq!(
        bad_status,
        Some(serde_json::json!({ "eds_health_status": "HEALTHY", "failed_outlier_check": true }))
    );
    let p1_n = seen.get("p1").copied().unwrap_or(0);
    assert_eq!(seen.get("p0").copied().unwrap_or(0) + p1_n, 400, "{seen:?}");
    assert!(
        (80..=160).contains(&p1_n),
        "P1 should carry about 30% (120 of 400): {seen:?}"
    );
}

/// Envoy: a priority with no healthy host hands all its load to the next
/// priority (100% x 1.4, capped at 100%), so a failing P0 costs only the
/// requests that taught outlier detection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_priority_fails_over_entirely() {
    let (bad, bad_hits) = answering("bad", 503, Duration::ZERO).await;
    let (p1, _) = healthy("p1").await;
    let outlier = "\n    outlier_detection: { consecutive_5xx: 3, max_ejection_percent: 100 }";
    let clusters = cluster_with("svc", outlier, &[(0, ep(bad, "")), (1, ep(p1, ""))]);
    let p = proxy(&http_bootstrap(&one_route("svc"), &clusters)).await;
    let mut c = H1::connect(p.listener("http").expect("listener")).await;
    for i in 0..3 {
        assert_eq!(c.get("svc", "/").await.status, 503, "request {i} teaches the detector");
    }
    for i in 0..20 {
        let r = c.get("svc", "/").await;
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "p1"), "request {i}");
    }
    assert_eq!(bad_hits.load(Ordering::SeqCst), 3);
}
