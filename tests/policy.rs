//! Traffic policy through the proxy, with real upstreams that fail on
//! command: retries turning a failing host's 503s into 200s, outlier
//! detection ejecting a failing host and letting it back, and the circuit
//! breaker answering overflow under concurrency. Each test names the Envoy
//! behaviour it checks.

mod common;

use std::{net::SocketAddr, sync::atomic::Ordering};

use common::*;

fn route_with(extra: &str) -> String {
    format!(
        r#"route_config:
  virtual_hosts:
  - name: all
    domains: ["*"]
    routes:
    - match: {{ prefix: / }}
      route:
        cluster: svc
{}"#,
        indent(extra, 8)
    )
}

async fn metric(admin: SocketAddr, name: &str) -> f64 {
    let text = H1::connect(admin).await.get("admin", "/stats/prometheus").await.text();
    text.lines()
        .find(|l| l.starts_with(name) && l.contains("envoy_cluster_name=\"svc\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Envoy: `retry_on: 5xx` with `num_retries: 3` and the previous_hosts
/// predicate retries a 503 on another host, so every request succeeds while
/// one of two hosts fails; `upstream_rq_retry` and `_retry_success` count it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_turn_a_failing_hosts_503s_into_200s() {
    let good = upstream("good").await;
    let (bad, bad_hits) = failing(503).await;
    let retry = r#"retry_policy:
  retry_on: 5xx
  num_retries: 3
  retry_host_predicate:
  - name: envoy.retry_host_predicates.previous_hosts
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"#;
    let p = proxy(&http_bootstrap(
        &route_with(retry),
        &cluster("svc", &[bad, good.addr], false, ""),
    ))
    .await;
    let mut c = H1::connect(p.listener("http").expect("listener")).await;
    for i in 0..20 {
        let r = c.get("svc", "/").await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.json()["upstream"], "good");
        assert_eq!(
            r.upstream_header("x-envoy-attempt-count"),
            None,
            "Envoy sends the attempt count only with include_request_attempt_count"
        );
        assert_eq!(r.header("x-envoy-attempt-count"), None);
    }
    assert!(
        bad_hits.load(Ordering::SeqCst) >= 5,
        "round robin sent first attempts to the bad host"
    );
    let admin = p.admin.expect("admin");
    assert!(metric(admin, "envoy_cluster_upstream_rq_retry{").await >= 5.0);
    assert!(metric(admin, "envoy_cluster_upstream_rq_retry_success").await >= 5.0);
}

/// Envoy: without `retriable-4xx` or a status list, a 404 is not retried;
/// with `num_retries: 1` (the default) a host failing twice answers 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_that_must_not_happen() {
    let (bad, hits) = failing(503).await;
    let (missing, missing_hits) = failing(404).await;
    let retry = "retry_policy: { retry_on: \"5xx\" }";
    let clusters = cluster("svc", &[bad], false, "") + &cluster("nf", &[missing], false, "");
    let hcm = format!(
        r#"route_config:
  virtual_hosts:
  - name: all
    domains: ["*"]
    routes:
    - match: {{ prefix: /nf }}
      route: {{ cluster: nf, {retry} }}
    - match: {{ prefix: / }}
      route: {{ cluster: svc, {retry} }}"#
    );
    let p = proxy(&http_bootstrap(&hcm, &clusters)).await;
    let mut c = H1::connect(p.listener("http").expect("listener")).await;
    assert_eq!(c.get("svc", "/nf").await.status, 404);
    assert_eq!(missing_hits.load(Ordering::SeqCst), 1, "a 404 is not retried under 5xx");
    assert_eq!(c.get("svc", "/").await.status, 503);
    assert_eq!(hits.load(Ordering::SeqCst), 2, "one try and the default single retry");
    let admin = p.admin.expect("admin");
    assert_eq!(
        metric(admin, "envoy_cluster_upstream_rq_retry_limit_exceeded").await,
        1.0
    );
}

/// Envoy: consecutive_5xx ejects a host on its 5th consecutive 5xx; ejected
/// hosts get no traffic until base_ejection_time has passed (checked on the
/// interval timer), then they return. `max_ejection_percent: 50` lets one
/// of two hosts go (the default 10% would eject none of two, as Envoy 1.27+).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_host_is_ejected_and_returns() {
    let good = upstream("good").await;
    let (bad, bad_hits) = failing(503).await;
    let outlier = "\n    outlier_detection:\n      consecutive_5xx: 5\n      interval: 0.2s\n      base_ejection_time: 1s\n      max_ejection_percent: 50";
    let p = proxy(&http_bootstrap(
        &route_with(""),
        &cluster("svc", &[bad, good.addr], false, outlier),
    ))
    .await;
    let admin = p.admin.expect("admin");
    let mut c = H1::connect(p.listener("http").expect("listener")).await;
    let mut failures = 0;
    for _ in 0..20 {
        if c.get("svc", "/").await.status == 503 {
            failures += 1;
        }
    }
    assert_eq!(failures, 5, "the 5th consecutive 5xx ejects the host");
    assert_eq!(
        metric(admin, "envoy_cluster_outlier_detection_ejections_active").await,
        1.0
    );
    let hits_when_ejected = bad_hits.load(Ordering::SeqCst);
    for _ in 0..20 {
        assert_eq!(c.get("svc", "/").await.status, 200, "no traffic to an ejected host");
    }
    assert_eq!(bad_hits.load(Ordering::SeqCst), hits_when_ejected);
    // After base_ejection_time the host is back and gets traffic again.
    eventually("the ejected host to return", || {
        let addr = p.listener("http");
        async move {
            let r = H1::connect(addr?).await.get("svc", "/").await;
            (r.status == 503).then_some(())
        }
    })
    .await;
    assert!(
        metric(
            admin,
            "envoy_cluster_outlier_detection_ejections_enforced_consecutive_5xx"
        )
        .await
            >= 1.0
    );
}

/// Envoy: with `max_requests: 1`, a second concurrent request overflows:
/// 503 with `x-envoy-overloaded: true`, counted in upstream_rq_active_overflow
/// (Envoy 1.40 counts it there and not in upstream_rq_pending_overflow).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_overflows_the_circuit_breaker() {
    let up = upstream("slow").await;
    let breaker = "\n    circuit_breakers:\n      thresholds:\n      - max_requests: 1\n        track_remaining: true";
    let p = proxy(&http_bootstrap(
        &route_with(""),
        &cluster("svc", &[up.addr], false, breaker),
    ))
    .await;
    let front = p.listener("http").expect("listener");
    let admin = p.admin.expect("admin");
    let slow = tokio::spawn(async move { H1::connect(front).await.get("svc", "/slow/800").await.status });
    eventually("the slow request to hold the only slot", || async move {
        (metric(admin, "envoy_cluster_circuit_breakers_default_rq_open").await == 1.0).then_some(())
    })
    .await;
    assert_eq!(
        metric(admin, "envoy_cluster_circuit_breakers_default_remaining_rq").await,
        0.0
    );
    let r = H1::connect(front).await.get("svc", "/").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-envoy-overloaded"), Some("true"));
    assert!(r.text().contains("overflow"), "{}", r.text());
    assert_eq!(slow.await.expect("slow request"), 200);
    assert_eq!(metric(admin, "envoy_cluster_upstream_rq_active_overflow").await, 1.0);
    assert_eq!(metric(admin, "envoy_cluster_upstream_rq_pending_overflow").await, 0.0);
    assert_eq!(
        H1::connect(front).await.get("svc", "/").await.status,
        200,
        "the slot is free again"
    );
}

/// Envoy: a virtual host's `include_request_attempt_count` puts
/// `x-envoy-attempt-count` on every upstream try (1 on the first, 2 on the
/// retry) and `include_attempt_count_in_response` returns the tries it took
/// to the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempt_count_headers_when_the_virtual_host_asks() {
    let good = upstream("good").await;
    let (bad, bad_hits) = failing(503).await;
    let hcm = r#"route_config:
  virtual_hosts:
  - name: all
    domains: ["*"]
    include_request_attempt_count: true
    include_attempt_count_in_response: true
    routes:
    - match: { prefix: / }
      route:
        cluster: svc
        retry_policy: { retry_on: 5xx, num_retries: 2 }"#;
    let p = proxy(&http_bootstrap(hcm, &cluster("svc", &[bad, good.addr], false, ""))).await;
    let mut c = H1::connect(p.listener("http").expect("listener")).await;
    for i in 0..6 {
        let before = bad_hits.load(Ordering::SeqCst);
        let r = c.get("svc", "/").await;
        assert_eq!(r.status, 200, "request {i}");
        // Tries: the bad host's (0 or 1, then the retry went to the good one) plus the good one's.
        let tries = (bad_hits.load(Ordering::SeqCst) - before + 1).to_string();
        assert_eq!(
            r.upstream_header("x-envoy-attempt-count"),
            Some(tries.clone()),
            "request {i}"
        );
        assert_eq!(r.header("x-envoy-attempt-count"), Some(tries.as_str()), "request {i}");
    }
    assert!(bad_hits.load(Ordering::SeqCst) >= 1, "round robin reached the bad host");
}

/// Envoy: a retry carries `x-envoy-expected-rq-timeout-ms` again, as what is
/// left of the route timeout (`doRetry` calls `setTimeoutHeaders` with the
/// elapsed time), so the upstream of a retry sees less than the first try's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_expects_what_is_left_of_the_route_timeout() {
    let good = upstream("good").await;
    let (bad, bad_hits) = failing(503).await;
    let retry = "timeout: 2s\nretry_policy: { retry_on: 5xx, num_retries: 3 }";
    let p = proxy(&http_bootstrap(
        &route_with(retry),
        &cluster("svc", &[bad, good.addr], false, ""),
    ))
    .await;
    let mut c = H1::connect(p.listener("http").expect("listener")).await;
    let mut retried = 0;
    for i in 0..6 {
        let before = bad_hits.load(Ordering::SeqCst);
        let r = c.get("svc", "/").await;
        assert_eq!(r.status, 200, "request {i}");
        let expected: u64 = r
            .upstream_header("x-envoy-expected-rq-timeout-ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("request {i}: no expected timeout header"));
        if bad_hits.load(Ordering::SeqCst) == before {
            assert_eq!(
                expected, 2000,
                "request {i}: a first try expects the whole route timeout"
            );
        } else {
            retried += 1;
            assert!(
                (1000..2000).contains(&expected),
                "request {i}: a retry expects what is left, got {expected}"
            );
        }
    }
    assert!(retried >= 1, "round robin reached the failing host");
}

/// Envoy: a host that never answers within the route timeout is reported to
/// outlier detection (`onResponseTimeout` records a local-origin timeout,
/// counted as a 504 when local-origin errors are not split), so a hanging
/// host is ejected even without a per-try timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeouts_teach_outlier_detection() {
    let up = upstream("hanging").await;
    let outlier = "\n    outlier_detection: { consecutive_5xx: 2, max_ejection_percent: 100 }";
    let p = proxy(&http_bootstrap(
        &route_with("timeout: 0.2s"),
        &cluster("svc", &[up.addr], false, outlier),
    ))
    .await;
    let mut c = H1::connect(p.listener("http").expect("listener")).await;
    for i in 0..2 {
        let r = c.get("svc", "/slow/3000").await;
        assert_eq!(r.status, 504, "request {i}");
    }
    let admin = p.admin.expect("admin");
    let clusters = H1::connect(admin).await.get("admin", "/clusters").await.text();
    assert_eq!(
        metric(admin, "envoy_cluster_outlier_detection_ejections_active").await,
        1.0,
        "{clusters}"
    );
    assert!(
        clusters.contains(&format!("svc::{}::rq_timeout::2", up.addr)),
        "{clusters}"
    );
}

/// Envoy: with no host to send to (here every host unhealthy and panic
/// disabled) the router answers 503 "no healthy upstream" at once; it never
/// retries that, whatever `retry_on` says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_healthy_upstream_is_not_retried() {
    let up = upstream("sick").await;
    let clusters = format!(
        "  - name: svc\n    type: STATIC\n    common_lb_config: {{ healthy_panic_threshold: {{ value: 0 }} }}\n    load_assignment:\n      cluster_name: svc\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}\n          health_status: UNHEALTHY\n",
        up.addr.ip(),
        up.addr.port()
    );
    let retry = "retry_policy: { retry_on: \"5xx,connect-failure,reset\", num_retries: 3 }";
    let p = proxy(&http_bootstrap(&route_with(retry), &clusters)).await;
    let mut c = H1::connect(p.listener("http").expect("listener")).await;
    let r = c.get("svc", "/").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.text(), "no healthy upstream");
    let admin = p.admin.expect("admin");
    assert_eq!(metric(admin, "envoy_cluster_upstream_rq_retry{").await, 0.0);
    assert_eq!(metric(admin, "envoy_cluster_upstream_cx_none_healthy").await, 1.0);
    assert_eq!(up.accepts.load(Ordering::SeqCst), 0);
}
