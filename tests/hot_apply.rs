//! Applying a new config to a running proxy, as xDS will: in-flight and
//! concurrent requests never fail, clusters whose endpoints remain keep their
//! pooled connections, removed listeners stop accepting.

mod common;

use std::sync::{
    atomic::{AtomicBool, AtomicUsize, Ordering},
    Arc,
};

use common::*;

fn parse(yaml: &str) -> remora::config::Bootstrap {
    remora::xds::parse_bootstrap("t.yaml", yaml).unwrap_or_else(|e| panic!("{e}"))
}

fn routed_to(cluster_name: &str) -> String {
    format!(
        "route_config:\n  virtual_hosts:\n  - name: all\n    domains: [\"*\"]\n    routes:\n    - match: {{ prefix: / }}\n      route: {{ cluster: {cluster_name} }}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_update_shifts_traffic_with_zero_failed_requests() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let clusters = cluster("a", &[a.addr], false, "") + &cluster("b", &[b.addr], false, "");
    let p = Arc::new(proxy(&http_bootstrap(&routed_to("a"), &clusters)).await);
    let addr = p.listener("http").unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let seen_b = Arc::new(AtomicUsize::new(0));
    let mut loops = Vec::new();
    for _ in 0..4 {
        let (stop, failures, seen_b) = (stop.clone(), failures.clone(), seen_b.clone());
        loops.push(tokio::spawn(async move {
            let mut c = H1::connect(addr).await;
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) && n < 5000 {
                n += 1;
                let r = c.get("x", "/").await;
                if r.status != 200 {
                    failures.fetch_add(1, Ordering::SeqCst);
                } else if r.json()["upstream"] == "b" {
                    seen_b.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    // Let traffic flow, then swap the route to b while the loops run.
    eventually("traffic flowing", || async {
        (a.accepts.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    let next = parse(&http_bootstrap(&routed_to("b"), &clusters));
    p.apply_clusters(&next.clusters);
    p.apply_listeners(&next.listeners).expect("apply");
    // Open keep-alive connections pick up the new route on their next request.
    eventually("traffic reached b", || async {
        (seen_b.load(Ordering::SeqCst) > 50).then_some(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for l in loops {
        within("load loop", l).await.unwrap();
    }
    assert_eq!(failures.load(Ordering::SeqCst), 0);
    // The listener kept its socket: the same address still serves.
    assert_eq!(p.listener("http"), Some(addr));
}

#[tokio::test]
async fn endpoint_changes_keep_pooled_connections_of_remaining_endpoints() {
    let a1 = upstream("a1").await;
    let a2 = upstream("a2").await;
    let yaml = |eps: &[std::net::SocketAddr]| http_bootstrap(&routed_to("a"), &cluster("a", eps, false, ""));
    let p = proxy(&yaml(&[a1.addr])).await;
    let mut c = H1::connect(p.listener("http").unwrap()).await;
    for _ in 0..5 {
        assert_eq!(c.get("x", "/").await.status, 200);
    }
    assert_eq!(a1.accepts.load(Ordering::SeqCst), 1);
    // A second endpoint arrives: a1's pooled connection survives the update.
    let next = parse(&yaml(&[a1.addr, a2.addr]));
    p.apply_clusters(&next.clusters);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10 {
        let r = c.get("x", "/").await;
        seen.insert(r.json()["upstream"].as_str().unwrap().to_string());
    }
    assert_eq!(seen.len(), 2, "both endpoints serve: {seen:?}");
    assert_eq!(a1.accepts.load(Ordering::SeqCst), 1, "a1's connection was reused");
    // Stats are kept per cluster name, not duplicated by the update.
    let mut admin = H1::connect(p.admin.unwrap()).await;
    let text = admin.get("a", "/stats/prometheus").await.text();
    assert_eq!(
        text.matches("envoy_cluster_upstream_rq_total{envoy_cluster_name=\"a\"}")
            .count(),
        1,
        "{text}"
    );
    assert!(
        text.contains("envoy_cluster_upstream_rq_total{envoy_cluster_name=\"a\"} 15"),
        "{text}"
    );
}

#[tokio::test]
async fn removed_listener_stops_accepting() {
    let a = upstream("a").await;
    let p = proxy(&http_bootstrap(&routed_to("a"), &cluster("a", &[a.addr], false, ""))).await;
    let addr = p.listener("http").unwrap();
    assert_eq!(H1::connect(addr).await.get("x", "/").await.status, 200);
    p.apply_listeners(&[]).expect("apply");
    assert_eq!(p.listener("http"), None);
    eventually("listener closed", || async {
        tokio::net::TcpStream::connect(addr).await.is_err().then_some(())
    })
    .await;
}
