//! Requests waiting in a connection pool (Envoy's pending requests): at
//! `max_connections`, a request that finds no free connection or stream is
//! held, within `max_pending_requests`, until one frees, and the overflow
//! answers 503 UO. Upstreams here hold every response until the test opens
//! a gate, and report each request as it arrives, so each step waits on a
//! signal, never on a sleep.
//!
//! What Envoy 1.40 did with the same configs (concurrency 1, a Python
//! HTTP/1.1 upstream answering after 1 s, requests 50 ms apart; an Envoy h2c
//! upstream with a 1 s fault delay for HTTP/2):
//! - max_connections 1, max_pending_requests 1, 4 requests: #1 and #2 answer
//!   200, #2 on #1's connection once #1 is done; #3 and #4 get 503 with
//!   `x-envoy-overloaded: true` at once ("... reset reason: overflow").
//!   upstream_cx_total 1, upstream_cx_overflow 1, upstream_rq_pending_total 2
//!   (#1 is pending while its connection opens), upstream_rq_pending_overflow
//!   2, upstream_rq_pending_active 0 afterwards.
//! - The same over HTTP/2 with `max_concurrent_streams: 1`: the same answers
//!   and counters. With the default stream limit all 4 share one connection.
//! - A queued request whose route timeout (0.5 s) passes: 504 "upstream
//!   request timeout", upstream_rq_timeout 1, upstream_rq_cancelled 1; it
//!   never reaches the upstream.
//! - A queued request whose client goes away: upstream_rq_cancelled 1, and
//!   its pending slot is free at once (the next request queues, no overflow).
//! - Two hosts, max_connections 1: each host gets a connection (Envoy opens
//!   one for a host whose pool has none, counting upstream_cx_overflow); a
//!   third request queues behind the first host's.
//! - A connect failure fails the pending requests:
//!   upstream_rq_pending_failure_eject.

mod common;

use std::{
    convert::Infallible,
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
use hyper::{body::Incoming, service::service_fn, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    net::TcpListener,
    sync::{watch, Semaphore},
    task::JoinHandle,
};

/// An upstream that records each request's path as it arrives and holds its
/// response until the gate lets one through (in arrival order).
struct Gated {
    addr: SocketAddr,
    arrived: watch::Receiver<Vec<String>>,
    gate: Arc<Semaphore>,
    accepts: Arc<AtomicUsize>,
}

impl Gated {
    async fn start(h2: bool, close: bool) -> Gated {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, arrived) = watch::channel(Vec::new());
        let tx = Arc::new(tx);
        let gate = Arc::new(Semaphore::new(0));
        let accepts = Arc::new(AtomicUsize::new(0));
        let (g, a) = (gate.clone(), accepts.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let (tx, g) = (tx.clone(), g.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (tx, g) = (tx.clone(), g.clone());
                        async move {
                            let path = req.uri().path().to_string();
                            tx.send_modify(|v| v.push(path.clone()));
                            if let Ok(permit) = g.acquire().await {
                                permit.forget();
                            }
                            let mut resp = Response::new(Full::new(Bytes::from(path)));
                            if close {
                                resp.headers_mut()
                                    .insert("connection", http::HeaderValue::from_static("close"));
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let io = TokioIo::new(stream);
                    if h2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .await;
                    }
                });
            }
        });
        Gated {
            addr,
            arrived,
            gate,
            accepts,
        }
    }

    /// Waits until `n` requests have arrived; returns their paths in order.
    async fn arrived(&self, n: usize) -> Vec<String> {
        let mut rx = self.arrived.clone();
        let seen = within("requests to reach the upstream", rx.wait_for(|v| v.len() >= n))
            .await
            .expect("upstream running")
            .clone();
        seen
    }

    fn release(&self, n: usize) {
        self.gate.add_permits(n);
    }
}

fn get_in_background(front: SocketAddr, path: &str) -> JoinHandle<Reply> {
    let path = path.to_string();
    tokio::spawn(async move { H1::connect(front).await.get("svc", &path).await })
}

async fn reply(h: JoinHandle<Reply>) -> Reply {
    within("a reply", h).await.expect("client task")
}

async fn metric(admin: SocketAddr, name: &str) -> f64 {
    let text = H1::connect(admin).await.get("admin", "/stats/prometheus").await.text();
    let prefix = format!("{name}{{");
    text.lines()
        .find(|l| l.starts_with(&prefix) && l.contains("envoy_cluster_name=\"svc\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn metric_reaches(admin: SocketAddr, name: &str, value: f64) {
    eventually(&format!("{name} to be {value}"), || async move {
        (metric(admin, name).await == value).then_some(())
    })
    .await
}

/// One route to `svc` for `/`; `/timeout` has a 0.5 s route timeout, `/` none.
const ROUTES: &str = r#"route_config:
  virtual_hosts:
  - name: all
    domains: ["*"]
    routes:
    - match: { prefix: /timeout }
      route: { cluster: svc, timeout: 0.5s }
    - match: { prefix: / }
      route: { cluster: svc, timeout: 0s }"#;

/// Cluster `svc` with the given breaker thresholds (and HTTP/2 settings).
fn svc(endpoints: &[SocketAddr], thresholds: &str, h2: Option<&str>) -> String {
    let eps = lb_endpoints(endpoints);
    let proto = match h2 {
        Some(opts) => format!(
            "\n    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config:\n          http2_protocol_options: {{ {opts} }}"
        ),
        None => String::new(),
    };
    format!(
        "  - name: svc\n    type: STATIC\n    connect_timeout: 0.5s\n    circuit_breakers:\n      thresholds:\n      - {{ {thresholds}, track_remaining: true }}{proto}\n    load_assignment:\n      cluster_name: svc\n      endpoints:\n      - lb_endpoints:{eps}\n"
    )
}

/// Envoy: at max_connections 1 a request finding the connection busy waits
/// as a pending request and is served on that connection when it frees, in
/// arrival order; past max_pending_requests the next answers 503 UO with
/// `x-envoy-overloaded: true` at once (upstream_rq_pending_overflow). Each
/// waiting request tries for a connection and counts upstream_cx_overflow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_requests_succeed_in_order_and_the_overflow_answers_503_uo() {
    let up = Gated::start(false, false).await;
    let p = proxy(&http_bootstrap(
        ROUTES,
        &svc(&[up.addr], "max_connections: 1, max_pending_requests: 2", None),
    ))
    .await;
    let front = p.listener("http").expect("listener");
    let admin = p.admin.expect("admin");

    let first = get_in_background(front, "/1");
    up.arrived(1).await;
    let second = get_in_background(front, "/2");
    metric_reaches(admin, "envoy_cluster_upstream_rq_pending_active", 1.0).await;
    let third = get_in_background(front, "/3");
    metric_reaches(admin, "envoy_cluster_upstream_rq_pending_active", 2.0).await;
    assert_eq!(
        metric(admin, "envoy_cluster_circuit_breakers_default_rq_pending_open").await,
        1.0
    );

    let over = H1::connect(front).await.get("svc", "/4").await;
    assert_eq!(over.status, 503);
    assert_eq!(over.header("x-envoy-overloaded"), Some("true"));
    assert_eq!(
        over.text(),
        "upstream connect error or disconnect/reset before headers. reset reason: overflow"
    );

    up.release(3);
    for (h, path) in [(first, "/1"), (second, "/2"), (third, "/3")] {
        let r = reply(h).await;
        assert_eq!((r.status.as_u16(), r.text()), (200, path.to_string()));
    }
    assert_eq!(up.arrived(3).await, ["/1", "/2", "/3"], "served oldest first");
    assert_eq!(up.accepts.load(Ordering::SeqCst), 1, "all on the one connection");
    for (name, value) in [
        ("envoy_cluster_upstream_cx_total", 1.0),
        ("envoy_cluster_upstream_cx_overflow", 2.0),
        ("envoy_cluster_upstream_rq_pending_total", 3.0),
        ("envoy_cluster_upstream_rq_pending_overflow", 1.0),
        ("envoy_cluster_upstream_rq_pending_active", 0.0),
        ("envoy_cluster_upstream_rq_cancelled", 0.0),
        ("envoy_cluster_circuit_breakers_default_remaining_pending", 2.0),
    ] {
        assert_eq!(metric(admin, name).await, value, "{name}");
    }
}

/// Envoy: a pending request whose client goes away leaves the queue at once
/// (upstream_rq_cancelled) and frees its max_pending_requests slot, so the
/// next request queues instead of overflowing; the cancelled one never
/// reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_waiter_frees_its_slot() {
    let up = Gated::start(false, false).await;
    let p = proxy(&http_bootstrap(
        ROUTES,
        &svc(&[up.addr], "max_connections: 1, max_pending_requests: 1", None),
    ))
    .await;
    let front = p.listener("http").expect("listener");
    let admin = p.admin.expect("admin");

    let first = get_in_background(front, "/1");
    up.arrived(1).await;
    let gone = get_in_background(front, "/gone");
    metric_reaches(admin, "envoy_cluster_upstream_rq_pending_active", 1.0).await;
    gone.abort();
    metric_reaches(admin, "envoy_cluster_upstream_rq_cancelled", 1.0).await;
    assert_eq!(metric(admin, "envoy_cluster_upstream_rq_pending_active").await, 0.0);
    assert_eq!(
        metric(admin, "envoy_cluster_circuit_breakers_default_remaining_pending").await,
        1.0
    );

    let third = get_in_background(front, "/3");
    metric_reaches(admin, "envoy_cluster_upstream_rq_pending_active", 1.0).await;
    up.release(2);
    assert_eq!(reply(first).await.text(), "/1");
    let r = reply(third).await;
    assert_eq!((r.status.as_u16(), r.text()), (200, "/3".to_string()));
    assert_eq!(up.arrived(2).await, ["/1", "/3"]);
    assert_eq!(metric(admin, "envoy_cluster_upstream_rq_pending_overflow").await, 0.0);
}

/// Envoy: the route timeout runs while a request is pending; when it passes
/// the request leaves the queue and answers 504 "upstream request timeout"
/// (flag UT), counted in upstream_rq_timeout and upstream_rq_cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_timeout_bounds_the_wait() {
    let up = Gated::start(false, false).await;
    let p = proxy(&http_bootstrap(
        ROUTES,
        &svc(&[up.addr], "max_connections: 1, max_pending_requests: 1", None),
    ))
    .await;
    let front = p.listener("http").expect("listener");
    let admin = p.admin.expect("admin");

    let first = get_in_background(front, "/1");
    up.arrived(1).await;
    let started = tokio::time::Instant::now();
    let late = H1::connect(front).await.get("svc", "/timeout").await;
    assert_eq!(late.status, 504);
    assert_eq!(late.text(), "upstream request timeout");
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "{:?}",
        started.elapsed()
    );
    for (name, value) in [
        ("envoy_cluster_upstream_rq_timeout", 1.0),
        ("envoy_cluster_upstream_rq_cancelled", 1.0),
        ("envoy_cluster_upstream_rq_pending_active", 0.0),
        ("envoy_cluster_circuit_breakers_default_remaining_pending", 1.0),
    ] {
        assert_eq!(metric(admin, name).await, value, "{name}");
    }
    up.release(1);
    assert_eq!(reply(first).await.status, 200);
    assert_eq!(up.arrived(1).await, ["/1"], "the timed-out request never went upstream");
}

/// Envoy: over HTTP/2 with `max_concurrent_streams: 1` and max_connections 1
/// a request waits for the stream slot as a pending request, exactly as
/// HTTP/1.1 waits for the connection; the overflow answers 503 UO.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_wait_for_a_stream() {
    let up = Gated::start(true, false).await;
    let p = proxy(&http_bootstrap(
        ROUTES,
        &svc(
            &[up.addr],
            "max_connections: 1, max_pending_requests: 1",
            Some("max_concurrent_streams: 1"),
        ),
    ))
    .await;
    let front = p.listener("http").expect("listener");
    let admin = p.admin.expect("admin");

    let first = get_in_background(front, "/1");
    up.arrived(1).await;
    let second = get_in_background(front, "/2");
    metric_reaches(admin, "envoy_cluster_upstream_rq_pending_active", 1.0).await;
    let over = H1::connect(front).await.get("svc", "/3").await;
    assert_eq!(over.status, 503);
    assert_eq!(over.header("x-envoy-overloaded"), Some("true"));

    up.release(2);
    assert_eq!(reply(first).await.text(), "/1");
    assert_eq!(reply(second).await.text(), "/2");
    assert_eq!(up.arrived(2).await, ["/1", "/2"]);
    assert_eq!(up.accepts.load(Ordering::SeqCst), 1);
    for (name, value) in [
        ("envoy_cluster_upstream_cx_total", 1.0),
        ("envoy_cluster_upstream_cx_overflow", 1.0),
        ("envoy_cluster_upstream_rq_pending_total", 2.0),
        ("envoy_cluster_upstream_rq_pending_overflow", 1.0),
        ("envoy_cluster_upstream_rq_pending_active", 0.0),
    ] {
        assert_eq!(metric(admin, name).await, value, "{name}");
    }
}

/// Envoy: HTTP/2 requests share a connection up to its stream limit; more
/// than the limit at once wait for streams, not for new connections, when
/// max_connections allows only one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_waiters_fill_freed_streams_in_order() {
    let up = Gated::start(true, false).await;
    let p = proxy(&http_bootstrap(
        ROUTES,
        &svc(
            &[up.addr],
            "max_connections: 1, max_pending_requests: 10",
            Some("max_concurrent_streams: 2"),
        ),
    ))
    .await;
    let front = p.listener("http").expect("listener");
    let admin = p.admin.expect("admin");

    let mut held = vec![get_in_background(front, "/1")];
    up.arrived(1).await;
    held.push(get_in_background(front, "/2"));
    up.arrived(2).await;
    for i in 3..=5 {
        held.push(get_in_background(front, &format!("/{i}")));
        metric_reaches(admin, "envoy_cluster_upstream_rq_pending_active", f64::from(i - 2)).await;
    }
    // Each freed stream goes to the oldest waiting request.
    up.release(1);
    assert_eq!(up.arrived(3).await[2], "/3");
    up.release(1);
    assert_eq!(up.arrived(4).await[3], "/4");
    up.release(3);
    for (i, h) in held.into_iter().enumerate() {
        assert_eq!(reply(h).await.text(), format!("/{}", i + 1));
    }
    assert_eq!(up.arrived(5).await, ["/1", "/2", "/3", "/4", "/5"]);
    assert_eq!(up.accepts.load(Ordering::SeqCst), 1);
    assert_eq!(metric(admin, "envoy_cluster_upstream_rq_pending_active").await, 0.0);
}

/// Envoy: when the busy connection closes (the upstream said
/// `connection: close`) its max_connections slot frees and the pool opens a
/// new connection for the waiting request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_connection_makes_room_for_the_next() {
    let up = Gated::start(false, true).await;
    let p = proxy(&http_bootstrap(
        ROUTES,
        &svc(&[up.addr], "max_connections: 1, max_pending_requests: 1", None),
    ))
    .await;
    let front = p.listener("http").expect("listener");
    let admin = p.admin.expect("admin");

    let first = get_in_background(front, "/1");
    up.arrived(1).await;
    let second = get_in_background(front, "/2");
    metric_reaches(admin, "envoy_cluster_upstream_rq_pending_active", 1.0).await;
    up.release(2);
    assert_eq!(reply(first).await.text(), "/1");
    let r = reply(second).await;
    assert_eq!((r.status.as_u16(), r.text()), (200, "/2".to_string()));
    assert_eq!(up.accepts.load(Ordering::SeqCst), 2, "a new connection for the waiter");
    assert_eq!(metric(admin, "envoy_cluster_upstream_cx_total").await, 2.0);
    metric_reaches(admin, "envoy_cluster_upstream_cx_active", 0.0).await;
}

/// Envoy: max_connections is cluster-wide, but a host whose pool has no
/// connection always gets one (counting upstream_cx_overflow), so requests
/// sent to it are never stranded by other hosts' connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_host_gets_a_connection_past_max_connections() {
    let a = Gated::start(false, false).await;
    let b = Gated::start(false, false).await;
    let p = proxy(&http_bootstrap(
        ROUTES,
        &svc(&[a.addr, b.addr], "max_connections: 1, max_pending_requests: 1", None),
    ))
    .await;
    let front = p.listener("http").expect("listener");
    let admin = p.admin.expect("admin");

    // Round robin: /1 to one host, /2 to the other, /3 to the first again.
    let first = get_in_background(front, "/1");
    let a_first = eventually("/1 to reach a host", || {
        let (na, nb) = (a.arrived.borrow().len(), b.arrived.borrow().len());
        async move {
            match (na, nb) {
                (1, 0) => Some(true),
                (0, 1) => Some(false),
                _ => None,
            }
        }
    })
    .await;
    let (one, two) = if a_first { (&a, &b) } else { (&b, &a) };
    let second = get_in_background(front, "/2");
    two.arrived(1).await;
    assert_eq!(metric(admin, "envoy_cluster_upstream_cx_active").await, 2.0);
    assert_eq!(metric(admin, "envoy_cluster_upstream_cx_overflow").await, 1.0);
    let third = get_in_background(front, "/3");
    metric_reaches(admin, "envoy_cluster_upstream_rq_pending_active", 1.0).await;
    one.release(2);
    two.release(1);
    assert_eq!(reply(first).await.text(), "/1");
    assert_eq!(reply(second).await.text(), "/2");
    assert_eq!(reply(third).await.text(), "/3");
    assert_eq!(one.arrived(2).await, ["/1", "/3"]);
    assert_eq!(one.accepts.load(Ordering::SeqCst), 1);
}

/// Envoy: a request waits as pending while its connection opens, and a
/// failed connect fails the pending requests (503 UF,
/// upstream_rq_pending_failure_eject) rather than leaving them queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_failure_fails_the_pending_requests() {
    let dead = closed_port().await;
    let p = proxy(&http_bootstrap(
        ROUTES,
        &svc(&[dead], "max_connections: 1, max_pending_requests: 1", None),
    ))
    .await;
    let front = p.listener("http").expect("listener");
    let admin = p.admin.expect("admin");
    let r = H1::connect(front).await.get("svc", "/").await;
    assert_eq!(r.status, 503);
    assert_eq!(
        r.text(),
        "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"
    );
    for (name, value) in [
        ("envoy_cluster_upstream_rq_pending_total", 1.0),
        ("envoy_cluster_upstream_rq_pending_failure_eject", 1.0),
        ("envoy_cluster_upstream_rq_pending_active", 0.0),
        ("envoy_cluster_upstream_rq_cancelled", 0.0),
        ("envoy_cluster_upstream_cx_connect_fail", 1.0),
        ("envoy_cluster_circuit_breakers_default_remaining_cx", 1.0),
    ] {
        assert_eq!(metric(admin, name).await, value, "{name}");
    }
}

/// Envoy: with room to queue every request, a burst far above
/// max_connections is served in full over at most that many connections,
/// and no pending slot is left behind (HTTP/1.1, and HTTP/2 with a small
/// stream limit so streams and connections both run out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_served_in_full_within_max_connections() {
    for h2 in [false, true] {
        let up = if h2 {
            upstream_h2("burst").await
        } else {
            upstream("burst").await
        };
        let streams = h2.then_some("max_concurrent_streams: 3");
        let p = proxy(&http_bootstrap(
            ROUTES,
            &svc(&[up.addr], "max_connections: 2, max_pending_requests: 1000", streams),
        ))
        .await;
        let front = p.listener("http").expect("listener");
        let admin = p.admin.expect("admin");
        let burst: Vec<_> = (0..200)
            .map(|i| get_in_background(front, &format!("/slow/{}", i % 7)))
            .collect();
        for h in burst {
            assert_eq!(reply(h).await.status, 200, "h2: {h2}");
        }
        assert!(up.accepts.load(Ordering::SeqCst) <= 2, "h2: {h2}");
        let queued = metric(admin, "envoy_cluster_upstream_rq_pending_total").await;
        // Besides the first requests waiting for their connections, some
        // waited for busy ones (all 200 do on an idle machine).
        assert!(queued > 2.0, "h2: {h2}: {queued} queued");
        assert_eq!(metric(admin, "envoy_cluster_upstream_rq_pending_active").await, 0.0);
        assert_eq!(metric(admin, "envoy_cluster_upstream_rq_pending_overflow").await, 0.0);
        assert_eq!(
            metric(admin, "envoy_cluster_circuit_breakers_default_remaining_pending").await,
            1000.0
        );
    }
}

/// Cluster `svc` at one connection and one pending request, with
/// `max_requests_per_connection` (Istio's maxRequestsPerConnection).
fn svc_max_requests(endpoint: SocketAddr, h2: bool, max_requests: u32) -> String {
    let explicit = if h2 {
        "http2_protocol_options"
    } else {
        "http_protocol_options"
    };
    format!(
        "  - name: svc\n    type: STATIC\n    connect_timeout: 0.5s\n    circuit_breakers:\n      thresholds:\n      - {{ max_connections: 1, max_pending_requests: 1 }}\n    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        common_http_protocol_options: {{ max_requests_per_connection: {max_requests} }}\n        explicit_http_config: {{ {explicit}: {{}} }}\n    load_assignment:\n      cluster_name: svc\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}\n",
        endpoint.ip(),
        endpoint.port()
    )
}

/// Istio's circuit-breaking task (maxConnections 1, http1MaxPendingRequests
/// 1, maxRequestsPerConnection 1). Envoy 1.40, HTTP/1.1 and HTTP/2 alike:
/// #1 answers 200 and its connection closes after it (upstream_cx_max_requests
/// counts each connection at its last request); #2 waits for that connection
/// slot, then gets a new connection and answers 200; #3 overflows with 503 UO.
/// upstream_cx_total 2, upstream_cx_max_requests 2, upstream_cx_overflow 1,
/// upstream_rq_pending_total 2, no connection left open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_per_connection_one_queues_for_a_new_connection() {
    for h2 in [false, true] {
        let up = Gated::start(h2, false).await;
        let p = proxy(&http_bootstrap(ROUTES, &svc_max_requests(up.addr, h2, 1))).await;
        let front = p.listener("http").expect("listener");
        let admin = p.admin.expect("admin");

        let first = get_in_background(front, "/1");
        up.arrived(1).await;
        let second = get_in_background(front, "/2");
        metric_reaches(admin, "envoy_cluster_upstream_rq_pending_active", 1.0).await;
        let over = H1::connect(front).await.get("svc", "/3").await;
        assert_eq!(over.status, 503, "h2: {h2}");
        assert_eq!(over.header("x-envoy-overloaded"), Some("true"));

        up.release(2);
        assert_eq!(reply(first).await.text(), "/1");
        let r = reply(second).await;
        assert_eq!((r.status.as_u16(), r.text()), (200, "/2".to_string()), "h2: {h2}");
        assert_eq!(
            up.accepts.load(Ordering::SeqCst),
            2,
            "h2: {h2}: one connection per request"
        );
        metric_reaches(admin, "envoy_cluster_upstream_cx_active", 0.0).await;
        for (name, value) in [
            ("envoy_cluster_upstream_cx_total", 2.0),
            ("envoy_cluster_upstream_cx_max_requests", 2.0),
            ("envoy_cluster_upstream_cx_overflow", 1.0),
            ("envoy_cluster_upstream_rq_pending_total", 2.0),
            ("envoy_cluster_upstream_rq_pending_overflow", 1.0),
        ] {
            assert_eq!(metric(admin, name).await, value, "h2: {h2}: {name}");
        }
    }
}

/// Envoy: a connection at max_requests_per_connection drains: its last
/// response streams to the end before it closes, and the next request gets
/// a new connection (HTTP/1.1 and HTTP/2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_response_of_a_connection_streams_in_full() {
    for h2 in [false, true] {
        let up = if h2 {
            upstream_h2("mrpc").await
        } else {
            upstream("mrpc").await
        };
        let p = proxy(&http_bootstrap(ROUTES, &svc_max_requests(up.addr, h2, 2))).await;
        let front = p.listener("http").expect("listener");
        let mut c = H1::connect(front).await;
        for _ in 0..4 {
            let r = c.get("svc", "/stream/5").await;
            assert_eq!(r.text(), "chunk0;chunk1;chunk2;chunk3;chunk4;", "h2: {h2}");
        }
        assert_eq!(
            up.accepts.load(Ordering::SeqCst),
            2,
            "h2: {h2}: two requests per connection"
        );
    }
}
