//! Stream timers and virtual-host retries through the proxy, with real
//! upstreams that stall on command: `max_stream_duration` (route, gRPC
//! `grpc-timeout`, connection manager), the stream idle timeout (route
//! `idle_timeout`, HCM `stream_idle_timeout`), and a virtual host's
//! `retry_policy`. Each test names the Envoy behaviour it checks.

mod common;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::{body::Frame, service::service_fn, Response};
use hyper_util::rt::TokioIo;

/// A bootstrap with one virtual host `vh_extra` and the routes given, to
/// cluster `svc` at `up`; `hcm_extra` adds connection manager fields.
fn config(routes: &str, vh_extra: &str, hcm_extra: &str, up: &[SocketAddr]) -> String {
    let hcm = format!(
        "{hcm_extra}route_config:\n  virtual_hosts:\n  - name: all\n    domains: [\"*\"]\n{vh_extra}    routes:\n{}",
        indent(routes, 4)
    );
    http_bootstrap(&hcm, &cluster("svc", up, false, ""))
}

async fn http_metric(admin: SocketAddr, name: &str) -> f64 {
    let text = H1::connect(admin).await.get("admin", "/stats/prometheus").await.text();
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains("envoy_http_conn_manager_prefix=\"ingress_http\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn grpc_request(path: &str, timeout: Option<&str>) -> Request<Full<Bytes>> {
    let mut b = Request::post(format!("http://svc{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(t) = timeout {
        b = b.header("grpc-timeout", t);
    }
    b.body(Full::new(Bytes::new())).expect("request")
}

/// Istio's route: `timeout: 0s`, `max_stream_duration: {max_stream_duration:
/// 0s, grpc_timeout_header_max: 0s}`.
const ISTIO_ROUTE: &str = "- match: { prefix: / }\n  route: { cluster: svc, timeout: 0s, max_stream_duration: { max_stream_duration: 0s, grpc_timeout_header_max: 0s } }";

/// Envoy (checked against 1.40): on a route with Istio's max_stream_duration,
/// a request's grpc-timeout is the stream's limit, uncapped. When it passes
/// before the slow upstream answers, an HTTP client gets 504 "downstream
/// duration timeout" and a gRPC client 200 with grpc-status 4
/// (DEADLINE_EXCEEDED); downstream_rq_max_duration_reached counts both. A
/// gRPC request that finishes in time goes upstream with grpc-timeout
/// rewritten in milliseconds; without the header there is no limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_ends_a_slow_request_under_max_stream_duration() {
    let up = upstream("svc").await;
    let p = proxy(&config(ISTIO_ROUTE, "", "", &[up.addr])).await;
    let front = p.listener("http").expect("listener");
    let admin = p.admin.expect("admin");

    let mut c = H1::connect(front).await;
    let started = Instant::now();
    let mut req = get("svc", "/slow/3000");
    req.headers_mut().insert("grpc-timeout", "200m".parse().unwrap());
    let r = c.send(req).await;
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.text(), "downstream duration timeout");
    assert!(
        took >= Duration::from_millis(150) && took < Duration::from_millis(2500),
        "{took:?}"
    );

    let mut h2 = h2_client(front).await;
    let resp = within("grpc reply", h2.send_request(grpc_request("/slow/3000", Some("200m"))))
        .await
        .expect("response");
    let r = Reply::read(resp).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("grpc-status"), Some("4"));
    assert_eq!(r.header("grpc-message"), Some("downstream duration timeout"));
    assert_eq!(
        http_metric(admin, "envoy_http_downstream_rq_max_duration_reached").await,
        2.0
    );

    // In time: the upstream sees the limit as grpc-timeout in milliseconds.
    let resp = within("grpc echo", h2.send_request(grpc_request("/echo", Some("5S"))))
        .await
        .expect("response");
    let r = Reply::read(resp).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("grpc-timeout").as_deref(), Some("5000m"));
    // No header, no limit: a 1 s upstream answers.
    let resp = within("grpc slow", h2.send_request(grpc_request("/slow/1000", None)))
        .await
        .expect("response");
    let r = Reply::read(resp).await;
    assert_eq!((r.status.as_u16(), r.header("grpc-status")), (200, None));
    assert!(r.upstream_header("grpc-timeout").is_none());
}

/// Envoy: the max stream duration counts from the start of the stream; a
/// request still arriving when it passes gets 408 (not 504) with
/// `connection: close`. The connection manager's
/// common_http_protocol_options.max_stream_duration applies to routes without
/// one, and a route's max_stream_duration (here 0: none) replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_stream_duration_from_the_route_and_the_connection_manager() {
    let up = upstream("svc").await;
    let routes = "- match: { prefix: /unlimited }\n  route: { cluster: svc, max_stream_duration: { max_stream_duration: 0s } }\n- match: { prefix: / }\n  route: { cluster: svc }";
    let hcm = "common_http_protocol_options: { max_stream_duration: 0.3s }\n";
    let p = proxy(&config(routes, "", hcm, &[up.addr])).await;
    let front = p.listener("http").expect("listener");

    let r = H1::connect(front).await.get("svc", "/slow/3000").await;
    assert_eq!(
        (r.status.as_u16(), r.text().as_str()),
        (504, "downstream duration timeout")
    );
    let r = H1::connect(front).await.get("svc", "/unlimited/slow/600").await;
    assert_eq!(r.status, 200, "the route's 0 turns the limit off");

    // Headers and 2 of 10 body bytes, then nothing: 408 and the connection closes.
    let started = Instant::now();
    let out = raw_exchange(
        front,
        b"POST /echo HTTP/1.1\r\nhost: svc\r\ncontent-length: 10\r\n\r\nab",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(out.to_ascii_lowercase().contains("connection: close"), "{out}");
    assert!(out.ends_with("downstream duration timeout"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

/// An upstream that sends its response head and one chunk at once, then
/// another chunk after `gap`.
async fn gappy(gap: Duration) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(move |_req| async move {
                    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
                    tokio::spawn(async move {
                        let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"first;")))).await;
                        tokio::time::sleep(gap).await;
                        let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"second;")))).await;
                    });
                    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
                    Ok::<_, Infallible>(Response::new(body))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// Envoy (checked against 1.40): a route's idle_timeout replaces the
/// connection manager's stream_idle_timeout. With no frame for that long
/// before the response starts: 504 "stream timeout" (flag SI), gRPC clients
/// get grpc-status 14; a response streaming with shorter gaps is not cut;
/// once the response has started, a longer gap resets the stream.
/// downstream_rq_idle_timeout counts each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_idle_timeout_ends_idle_streams() {
    let up = upstream("svc").await;
    let gaps = gappy(Duration::from_millis(1500)).await;
    let routes = "- match: { prefix: /gappy }\n  route: { cluster: gaps, idle_timeout: 0.3s }\n- match: { prefix: / }\n  route: { cluster: svc, idle_timeout: 0.3s }";
    let hcm = format!(
        "route_config:\n  virtual_hosts:\n  - name: all\n    domains: [\"*\"]\n    routes:\n{}",
        indent(routes, 4)
    );
    let clusters = cluster("svc", &[up.addr], false, "") + &cluster("gaps", &[gaps], false, "");
    // A connection manager limit longer than the test: the route's replaces it.
    let hcm = format!("stream_idle_timeout: 60s\n{hcm}");
    let p = proxy(&http_bootstrap(&hcm, &clusters)).await;
    let front = p.listener("http").expect("listener");
    let admin = p.admin.expect("admin");

    let started = Instant::now();
    let r = H1::connect(front).await.get("svc", "/slow/3000").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (504, "stream timeout"));
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );

    let mut h2 = h2_client(front).await;
    let resp = within("grpc reply", h2.send_request(grpc_request("/slow/3000", None)))
        .await
        .expect("response");
    let r = Reply::read(resp).await;
    assert_eq!((r.status.as_u16(), r.header("grpc-status")), (200, Some("14")));

    // Five chunks 20 ms apart: every frame restarts the timer.
    let r = H1::connect(front).await.get("svc", "/stream/5").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "chunk0;chunk1;chunk2;chunk3;chunk4;");

    // The head and a chunk arrive, then 1.5 s of nothing: the stream is reset.
    let stream = within("connect", tokio::net::TcpStream::connect(front))
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let resp = within("gappy head", sender.send_request(get("svc", "/gappy")))
        .await
        .expect("head");
    assert_eq!(resp.status(), 200);
    let body = within("gappy body", resp.into_body().collect()).await;
    assert!(body.is_err(), "the body must end in a reset");
    assert_eq!(http_metric(admin, "envoy_http_downstream_rq_idle_timeout").await, 3.0);
}

/// Envoy: the connection manager's stream_idle_timeout applies to routes
/// without an idle_timeout; a route's idle_timeout of 0 disables it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_manager_stream_idle_timeout() {
    let up = upstream("svc").await;
    let routes = "- match: { prefix: /patient }\n  route: { cluster: svc, idle_timeout: 0s }\n- match: { prefix: / }\n  route: { cluster: svc }";
    let p = proxy(&config(routes, "", "stream_idle_timeout: 0.3s\n", &[up.addr])).await;
    let front = p.listener("http").expect("listener");
    let r = H1::connect(front).await.get("svc", "/slow/3000").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (504, "stream timeout"));
    let r = H1::connect(front).await.get("svc", "/patient/slow/700").await;
    assert_eq!(r.status, 200);
}

/// Envoy: a virtual host's retry_policy is used by its routes that have none
/// (503s from one of two hosts become 200s), and a route's own retry_policy
/// replaces it whole (retry_on connect-failure: a 503 is not retried).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_host_retry_policy_applies_to_routes_without_one() {
    let good = upstream("good").await;
    let (bad, bad_hits) = failing(503).await;
    let vh = "    retry_policy:\n      retry_on: 5xx\n      num_retries: 3\n      retry_host_predicate:\n      - name: envoy.retry_host_predicates.previous_hosts\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate\n";
    let routes = "- match: { prefix: /own }\n  route: { cluster: svc, retry_policy: { retry_on: connect-failure } }\n- match: { prefix: / }\n  route: { cluster: svc }";
    let p = proxy(&config(routes, vh, "", &[bad, good.addr])).await;
    let mut c = H1::connect(p.listener("http").expect("listener")).await;
    for i in 0..10 {
        let r = c.get("svc", "/").await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    assert!(
        bad_hits.load(Ordering::SeqCst) >= 3,
        "round robin tried the bad host first"
    );
    let before = bad_hits.load(Ordering::SeqCst);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(c.get("svc", "/own").await.status.as_u16());
    }
    assert!(statuses.contains(&503), "{statuses:?}");
    assert_eq!(
        bad_hits.load(Ordering::SeqCst) - before,
        statuses.iter().filter(|s| **s == 503).count(),
        "each 503 was a single try"
    );
}
