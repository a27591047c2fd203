//! Failures answer as Envoy does: the status, the local-reply body and the
//! response flag (checked in a real access log file); a misbehaving peer never
//! stops the proxy from serving everyone else.

mod common;

use std::time::Duration;

use common::*;

struct Setup {
    proxy: remora::proxy::Proxy,
    log: std::path::PathBuf,
    _good: Upstream,
}

async fn setup() -> Setup {
    let good = upstream("good").await;
    let closed = closed_port().await;
    let log = std::env::temp_dir().join(format!("remora-errors-{}-{}.log", std::process::id(), fastrand_id()));
    let hcm = format!(
        r#"access_log:
- name: envoy.access_loggers.file
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
    path: {log}
    log_format:
      text_format_source:
        inline_string: "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_CLUSTER%\n"
route_config:
  virtual_hosts:
  - name: all
    domains: ["*"]
    routes:
    - match: {{ prefix: /none }}
      route: {{ cluster: empty }}
    - match: {{ prefix: /closed }}
      route: {{ cluster: closed }}
    - match: {{ prefix: /slow }}
      route: {{ cluster: good, timeout: 0.2s }}
    - match: {{ prefix: /nolimit }}
      route: {{ cluster: good, timeout: 0s }}
    - match: {{ prefix: / }}
      route: {{ cluster: good }}
  - name: only
    domains: ["only.example.com"]
    routes:
    - match: {{ path: /here }}
      route: {{ cluster: good }}"#,
        log = log.display()
    );
    let clusters = cluster("good", &[good.addr], false, "")
        + &cluster("closed", &[closed], false, "")
        + &cluster("empty", &[], false, "");
    let proxy = proxy(&http_bootstrap(&hcm, &clusters)).await;
    Setup {
        proxy,
        log,
        _good: good,
    }
}

fn fastrand_id() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

async fn logged(s: &Setup, path: &str) -> String {
    eventually(&format!("access log line for {path}"), || async {
        let text = std::fs::read_to_string(&s.log).unwrap_or_default();
        text.lines()
            .find(|l| l.starts_with(&format!("{path} ")))
            .map(str::to_string)
    })
    .await
}

#[tokio::test]
async fn no_route_is_404_nr() {
    let s = setup().await;
    let mut c = H1::connect(s.proxy.listener("http").unwrap()).await;
    let r = c.get("only.example.com", "/elsewhere").await;
    assert_eq!(r.status, 404);
    assert!(r.body.is_empty());
    assert_eq!(logged(&s, "/elsewhere").await, "/elsewhere 404 NR -");
}

#[tokio::test]
async fn cluster_without_endpoints_is_503_uh() {
    let s = setup().await;
    let mut c = H1::connect(s.proxy.listener("http").unwrap()).await;
    let r = c.get("x", "/none").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.text(), "no healthy upstream");
    assert_eq!(logged(&s, "/none").await, "/none 503 UH empty");
}

#[tokio::test]
async fn connect_failure_is_503_uf() {
    let s = setup().await;
    let mut c = H1::connect(s.proxy.listener("http").unwrap()).await;
    let r = c.get("x", "/closed").await;
    assert_eq!(r.status, 503);
    assert!(
        r.text()
            .starts_with("upstream connect error or disconnect/reset before headers."),
        "{}",
        r.text()
    );
    assert_eq!(logged(&s, "/closed").await, "/closed 503 UF closed");
    // The downstream connection is still good.
    assert_eq!(c.get("x", "/ok").await.status, 200);
}

#[tokio::test]
async fn route_timeout_is_504_ut() {
    let s = setup().await;
    let mut c = H1::connect(s.proxy.listener("http").unwrap()).await;
    let started = std::time::Instant::now();
    let r = c.get("x", "/slow/2000").await;
    assert_eq!(r.status, 504);
    assert_eq!(r.text(), "upstream request timeout");
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert_eq!(logged(&s, "/slow/2000").await, "/slow/2000 504 UT good");
    // timeout: 0s disables the route timeout.
    let r = c.get("x", "/nolimit/300").await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn upstream_reset_and_garbage_are_503_and_others_keep_working() {
    let s = setup().await;
    let addr = s.proxy.listener("http").unwrap();
    let mut c = H1::connect(addr).await;
    let r = c.get("x", "/reset").await;
    assert_eq!(r.status, 503);
    assert_eq!(logged(&s, "/reset").await, "/reset 503 UC good");
    let r = c.get("x", "/garbage").await;
    assert_eq!(r.status, 503);
    assert!(r.text().contains("protocol error"), "{}", r.text());
    assert_eq!(logged(&s, "/garbage").await, "/garbage 503 UPE good");
    let mut other = H1::connect(addr).await;
    assert_eq!(other.get("x", "/fine").await.status, 200);
}

#[tokio::test]
async fn malformed_client_http_gets_400_and_the_connection_closes() {
    let s = setup().await;
    let addr = s.proxy.listener("http").unwrap();
    let reply = raw_exchange(addr, b"GET /\x01bad HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply:?}");
    let reply = raw_exchange(addr, b"NOT-HTTP\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply:?}");
    // Everyone else is served.
    let mut c = H1::connect(addr).await;
    assert_eq!(c.get("x", "/after").await.status, 200);
}

#[tokio::test]
async fn grpc_clients_get_grpc_status_for_local_replies() {
    let s = setup().await;
    let mut c = H1::connect(s.proxy.listener("http").unwrap()).await;
    let req = http::Request::post("/none")
        .header("host", "x")
        .header("content-type", "application/grpc")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let r = c.send(req).await;
    // As Envoy: a trailers-only gRPC reply, HTTP 200, grpc-status UNAVAILABLE (14).
    assert_eq!(r.status, 200);
    assert_eq!(r.header("grpc-status"), Some("14"));
    assert_eq!(r.header("grpc-message"), Some("no healthy upstream"));
}

#[tokio::test]
async fn stats_count_by_response_class() {
    let s = setup().await;
    let mut c = H1::connect(s.proxy.listener("http").unwrap()).await;
    assert_eq!(c.get("x", "/a").await.status, 200);
    assert_eq!(c.get("x", "/closed").await.status, 503);
    let admin = s.proxy.admin.unwrap();
    let mut a = H1::connect(admin).await;
    let text = a.get("admin", "/stats/prometheus").await.text();
    // /clusters: Envoy's cluster::host::stat::value lines, per endpoint.
    let clusters = a.get("admin", "/clusters").await.text();
    let good = s._good.addr;
    assert!(clusters.contains(&format!("good::{good}::rq_total::1")), "{clusters}");
    assert!(clusters.contains(&format!("good::{good}::rq_success::1")), "{clusters}");
    assert!(clusters.contains("closed::"), "{clusters}");
    let json = a.get("admin", "/clusters?format=json").await.json();
    assert!(
        json["cluster_statuses"].as_array().is_some_and(|c| c.len() == 3),
        "{json}"
    );
    for line in [
        "envoy_cluster_upstream_rq_xx{envoy_response_code_class=\"2\",envoy_cluster_name=\"good\"} 1",
        "envoy_cluster_upstream_cx_connect_fail{envoy_cluster_name=\"closed\"} 1",
        "envoy_http_downstream_rq_xx{envoy_response_code_class=\"5\",envoy_http_conn_manager_prefix=\"ingress_http\"} 1",
        "envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix=\"ingress_http\"} 2",
    ] {
        assert!(text.contains(line), "missing {line}\n{text}");
    }
}
