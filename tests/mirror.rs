//! Request mirroring through the proxy (`request_mirror_policies`), with real
//! primary and mirror upstreams: the mirror receives a copy (head as it goes
//! upstream, `-shadow` host, body) while the primary answers; a slow, down or
//! lagging mirror never changes the primary's response or holds it up. Each
//! test names the Envoy behaviour it checks.

mod common;

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use bytes::Bytes;
use common::*;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::{
    body::{Frame, Incoming},
    service::service_fn,
    Response,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// A request a mirror upstream received.
#[derive(Debug)]
struct Seen {
    method: String,
    path: String,
    headers: HeaderMap,
    /// The body, or why it could not be read to its end.
    body: Result<Bytes, String>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Clone, Copy)]
enum Behaviour {
    /// Read the request, then answer 200 at once.
    Answer,
    /// Read the request, then never answer.
    Hang,
    /// HTTP/2 with a 64 KiB stream window; report the head, never read the body.
    H2NoRead,
}

/// A mirror upstream reporting every request it gets.
async fn recorder(behaviour: Behaviour) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let path = parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default();
                        let mut headers = parts.headers.clone();
                        if let Some(a) = parts.uri.authority() {
                            headers.insert("x-seen-authority", a.as_str().parse().unwrap());
                        }
                        let body = if matches!(behaviour, Behaviour::H2NoRead) {
                            let _keep = body;
                            let _ = tx.send(Seen {
                                method: parts.method.to_string(),
                                path,
                                headers,
                                body: Err("not read".into()),
                            });
                            std::future::pending::<()>().await;
                            unreachable!()
                        } else {
                            body.collect().await.map(|b| b.to_bytes()).map_err(|e| e.to_string())
                        };
                        let _ = tx.send(Seen {
                            method: parts.method.to_string(),
                            path,
                            headers,
                            body,
                        });
                        if matches!(behaviour, Behaviour::Hang) {
                            std::future::pending::<()>().await;
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"mirror says hi"))))
                    }
                });
                let io = TokioIo::new(stream);
                if matches!(behaviour, Behaviour::H2NoRead) {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .initial_stream_window_size(65_535)
                        .initial_connection_window_size(65_535)
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
    (addr, rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    within("a mirrored request", rx.recv())
        .await
        .expect("mirror upstream running")
}

async fn cluster_metric(admin: SocketAddr, name: &str, cluster: &str) -> f64 {
    let text = H1::connect(admin).await.get("admin", "/stats/prometheus").await.text();
    text.lines()
        .find(|l| l.starts_with(name) && l.contains(&format!("envoy_cluster_name=\"{cluster}\"")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Routes to cluster `svc` with the given mirror policies; `extra_clusters`
/// are the mirror clusters.
fn config(route_extra: &str, clusters: &str) -> String {
    let hcm = format!(
        "route_config:\n  virtual_hosts:\n  - name: all\n    domains: [\"*\"]\n    routes:\n    - match: {{ prefix: / }}\n      route:\n        cluster: svc\n{}",
        indent(route_extra, 8)
    );
    http_bootstrap(&hcm, clusters)
}

/// Envoy (checked against 1.40): each mirror policy sends a copy of the
/// request, body included, to its cluster while the primary answers; the
/// copy's Host gets "-shadow" before the port (unless
/// disable_shadow_host_suffix_append), and carries `x-envoy-internal: true`
/// and the proxy's address in `x-forwarded-for`, with the primary's path
/// rewrite and route headers. The mirror's response is discarded and counted
/// in the mirror cluster's stats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_get_a_copy_while_the_primary_answers() {
    let primary = upstream("primary").await;
    let (mirror, mut seen) = recorder(Behaviour::Answer).await;
    let policies = "prefix_rewrite: /rewritten/\nrequest_mirror_policies:\n- cluster: shadow\n- { cluster: shadow, disable_shadow_host_suffix_append: true }";
    let clusters = cluster("svc", &[primary.addr], false, "") + &cluster("shadow", &[mirror], false, "");
    let p = proxy(&config(policies, &clusters)).await;
    let front = p.listener("http").expect("listener");
    let admin = p.admin.expect("admin");

    let req = Request::post("/orders?id=7")
        .header("host", "svc.local:8080")
        .header("x-custom", "yes")
        .body(Full::new(Bytes::from_static(b"hello mirror")))
        .expect("request");
    let r = H1::connect(front).await.send(req).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["upstream"], "primary");
    assert_eq!(r.json()["body"], "hello mirror");
    assert!(r.header("x-upstream").is_some(), "the primary's response, untouched");

    let mut copies = vec![next(&mut seen).await, next(&mut seen).await];
    copies.sort_by_key(|s| s.header("host").map(str::to_string));
    let hosts: Vec<_> = copies.iter().map(|s| s.header("host").unwrap_or("")).collect();
    assert_eq!(hosts, ["svc.local-shadow:8080", "svc.local:8080"]);
    for s in &copies {
        assert_eq!((s.method.as_str(), s.path.as_str()), ("POST", "/rewritten/orders?id=7"));
        assert_eq!(s.body.as_deref(), Ok(&b"hello mirror"[..]));
        assert_eq!(s.header("x-custom"), Some("yes"));
        assert_eq!(s.header("x-envoy-internal"), Some("true"));
        assert_eq!(s.header("x-forwarded-for"), Some("127.0.0.1"));
        assert_eq!(s.header("x-envoy-original-path"), Some("/orders?id=7"));
        assert_eq!(s.header("x-envoy-expected-rq-timeout-ms"), Some("15000"));
    }
    eventually("the mirror cluster to count both", || async move {
        let done = cluster_metric(
            admin,
            "envoy_cluster_upstream_rq_xx{envoy_response_code_class=\"2\"",
            "shadow",
        )
        .await;
        (done == 2.0).then_some(())
    })
    .await;
    assert_eq!(
        cluster_metric(admin, "envoy_cluster_upstream_rq_total", "shadow").await,
        2.0
    );
    assert_eq!(
        cluster_metric(admin, "envoy_cluster_upstream_rq_total", "svc").await,
        1.0
    );
}

/// Envoy: a mirror that never answers or cannot be reached changes nothing
/// for the primary: same response, no added latency. The hanging mirror ends
/// at the route timeout (counted in its cluster's upstream_rq_timeout), the
/// unreachable one as a connect failure in its cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_down_mirror_does_not_affect_the_primary() {
    let primary = upstream("primary").await;
    let (slow, mut seen) = recorder(Behaviour::Hang).await;
    let down = closed_port().await;
    let policies = "timeout: 1s\nrequest_mirror_policies:\n- cluster: slow\n- cluster: down";
    let clusters = cluster("svc", &[primary.addr], false, "")
        + &cluster("slow", &[slow], false, "")
        + &cluster("down", &[down], false, "");
    let p = proxy(&config(policies, &clusters)).await;
    let front = p.listener("http").expect("listener");
    let admin = p.admin.expect("admin");

    let mut c = H1::connect(front).await;
    for i in 0..3 {
        let started = std::time::Instant::now();
        let r = c.get("svc", "/fast").await;
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.json()["upstream"], "primary");
        assert!(
            started.elapsed() < Duration::from_millis(800),
            "the primary waited for a mirror: {:?}",
            started.elapsed()
        );
        assert_eq!(next(&mut seen).await.path, "/fast");
    }
    eventually("the hanging mirrors to time out", || async move {
        let timeouts = cluster_metric(admin, "envoy_cluster_upstream_rq_timeout", "slow").await;
        (timeouts == 3.0).then_some(())
    })
    .await;
    assert_eq!(
        cluster_metric(admin, "envoy_cluster_upstream_cx_connect_fail", "down").await,
        3.0
    );
    assert_eq!(
        cluster_metric(admin, "envoy_cluster_upstream_rq_timeout", "svc").await,
        0.0
    );
}

/// Envoy streams the body to a mirror as the primary reads it, so a body
/// larger than any buffer is mirrored whole (here 1 MiB, uploaded in 32 KiB
/// pieces as a network would pace it). remora cuts off a mirror that falls
/// more than 64 KiB behind (here: an HTTP/2 mirror that never reads) and
/// counts it in the primary cluster's retry_or_shadow_abandoned, where Envoy
/// would slow the downstream; the primary still gets every byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_are_mirrored_unless_the_mirror_falls_behind() {
    let primary = upstream("primary").await;
    let (fast, mut fast_seen) = recorder(Behaviour::Answer).await;
    let (stuck, mut stuck_seen) = recorder(Behaviour::H2NoRead).await;
    let clusters = cluster("svc", &[primary.addr], false, "")
        + &cluster("fast", &[fast], false, "")
        + &cluster("stuck", &[stuck], true, "");
    let p = proxy(&config(
        "request_mirror_policies: [ { cluster: fast }, { cluster: stuck } ]",
        &clusters,
    ))
    .await;
    let front = p.listener("http").expect("listener");
    let admin = p.admin.expect("admin");

    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    tokio::spawn(async move {
        for _ in 0..32 {
            if tx
                .send(Ok(Frame::data(Bytes::from(vec![b'x'; 32 << 10]))))
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let req = Request::post("http://svc/big")
        .header("host", "svc")
        .header("content-length", (1 << 20).to_string())
        .body(StreamBody::new(ReceiverStream::new(rx)))
        .expect("request");
    let stream = within("connect", tokio::net::TcpStream::connect(front))
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let resp = within("primary response", sender.send_request(req))
        .await
        .expect("response");
    let r = Reply::read(resp).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body"].as_str().map(str::len), Some(1 << 20));

    let copy = next(&mut fast_seen).await;
    assert_eq!(copy.body.as_ref().map(Bytes::len), Ok(1 << 20), "mirrored whole");
    let stuck_copy = next(&mut stuck_seen).await;
    assert_eq!(stuck_copy.header("x-seen-authority"), Some("svc-shadow"));
    eventually("the stuck mirror to be abandoned", || async move {
        let n = cluster_metric(admin, "envoy_cluster_retry_or_shadow_abandoned", "svc").await;
        (n == 1.0).then_some(())
    })
    .await;
}

/// Envoy: `runtime_fraction` with a default value of 0 mirrors nothing (the
/// runtime key is not looked up); `cluster_header` names the mirror cluster
/// per request, and a request without the header is not mirrored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fraction_and_cluster_header_choose_the_mirror() {
    let primary = upstream("primary").await;
    let (mirror, mut seen) = recorder(Behaviour::Answer).await;
    let policies = "request_mirror_policies:\n- { cluster: shadow, runtime_fraction: { default_value: { numerator: 0 }, runtime_key: mirror.off } }\n- { cluster_header: x-mirror-to }";
    let clusters = cluster("svc", &[primary.addr], false, "") + &cluster("shadow", &[mirror], false, "");
    let p = proxy(&config(policies, &clusters)).await;
    let mut c = H1::connect(p.listener("http").expect("listener")).await;
    assert_eq!(c.get("svc", "/plain").await.status, 200);
    let mut req = get("svc", "/chosen");
    req.headers_mut().insert("x-mirror-to", "shadow".parse().unwrap());
    assert_eq!(c.send(req).await.status, 200);
    let copy = next(&mut seen).await;
    assert_eq!(copy.path, "/chosen", "only the request naming a cluster was mirrored");
    // Nothing else arrives.
    assert!(tokio::time::timeout(Duration::from_millis(300), seen.recv())
        .await
        .is_err());
}
