//! Routing through the proxy over real sockets: virtual hosts, matchers,
//! rewrites, weighted clusters, direct responses, header mutations at three
//! levels, and the headers Envoy adds. Each assertion states Envoy's behaviour.

mod common;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;

async fn setup() -> (remora::proxy::Proxy, Upstream, Upstream) {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let hcm = r#"route_config:
  name: local
  request_headers_to_add:
  - header: { key: x-level, value: config }
  - header: { key: x-config-only, value: "1" }
  response_headers_to_add:
  - header: { key: x-resp-level, value: config }
    append_action: OVERWRITE_IF_EXISTS_OR_ADD
  virtual_hosts:
  - name: exact
    domains: ["api.example.com"]
    routes:
    - match: { prefix: / }
      route: { cluster: b }
  - name: suffix
    domains: ["*.example.com"]
    routes:
    - match: { prefix: / }
      direct_response: { status: 200, body: { inline_string: suffix } }
  - name: prefix
    domains: ["www.*"]
    routes:
    - match: { prefix: / }
      direct_response: { status: 200, body: { inline_string: prefix } }
  - name: port
    domains: ["ported.local:8080"]
    routes:
    - match: { prefix: / }
      direct_response: { status: 200, body: { inline_string: ported } }
  - name: catchall
    domains: ["*"]
    request_headers_to_add:
    - header: { key: x-level, value: vhost }
    request_headers_to_remove: ["x-secret"]
    response_headers_to_add:
    - header: { key: x-resp-level, value: vhost }
    routes:
    - name: exact-path
      match: { path: /exact }
      route: { cluster: b }
    - match: { path: /Case, case_sensitive: false }
      direct_response: { status: 200, body: { inline_string: nocase } }
    - match: { safe_regex: { regex: "/items/[0-9]+" } }
      direct_response: { status: 200, body: { inline_string: regex } }
    - match:
        prefix: /hdr
        headers:
        - { name: x-canary, string_match: { exact: "true" } }
      route: { cluster: b }
    - match:
        prefix: /hdr
        headers:
        - { name: x-beta, present_match: true }
      direct_response: { status: 200, body: { inline_string: present } }
    - match:
        prefix: /hdr
        headers:
        - { name: x-env, string_match: { prefix: prod }, invert_match: true }
      direct_response: { status: 200, body: { inline_string: not-prod } }
    - match: { prefix: /hdr }
      direct_response: { status: 200, body: { inline_string: hdr-default } }
    - match: { prefix: /api/v1/ }
      route: { cluster: a, prefix_rewrite: /v2/ }
    - match: { prefix: /host }
      route: { cluster: a, host_rewrite_literal: rewritten.internal }
    - match: { prefix: /split }
      route:
        weighted_clusters:
          clusters:
          - name: a
            weight: 75
            request_headers_to_add:
            - header: { key: x-split, value: a }
          - name: b
            weight: 25
            request_headers_to_add:
            - header: { key: x-split, value: b }
    - match: { prefix: /teapot }
      direct_response: { status: 418, body: { inline_string: "short and stout" } }
      response_headers_to_add:
      - header: { key: x-resp-level, value: route }
    - name: default
      match: { prefix: / }
      route: { cluster: a }
      request_headers_to_add:
      - header: { key: x-level, value: route }
      response_headers_to_add:
      - header: { key: x-route, value: "yes" }
      response_headers_to_remove: ["x-upstream-secret"]"#;
    let clusters = cluster("a", &[a.addr], false, "") + &cluster("b", &[b.addr], false, "");
    let p = proxy(&http_bootstrap(hcm, &clusters)).await;
    (p, a, b)
}

#[tokio::test]
async fn virtual_hosts_match_exact_then_suffix_then_prefix_then_wildcard() {
    let (p, _a, _b) = setup().await;
    let mut c = H1::connect(p.listener("http").unwrap()).await;
    // Exact beats *.suffix for the same name.
    assert_eq!(c.get("api.example.com", "/").await.json()["upstream"], "b");
    // Domains match case-insensitively.
    assert_eq!(c.get("API.Example.COM", "/").await.json()["upstream"], "b");
    assert_eq!(c.get("shop.example.com", "/").await.text(), "suffix");
    assert_eq!(c.get("www.other.org", "/").await.text(), "prefix");
    assert_eq!(c.get("unknown.net", "/").await.json()["upstream"], "a");
    // Envoy matches Host with its port unless told to strip it: "api.example.com:80"
    // is not the exact domain, but "*.example.com" does not match either, so it
    // falls to the catch-all.
    assert_eq!(c.get("api.example.com:80", "/").await.json()["upstream"], "a");
    assert_eq!(c.get("ported.local:8080", "/").await.text(), "ported");
}

#[tokio::test]
async fn strip_any_host_port_ignores_the_port() {
    let a = upstream("a").await;
    let hcm = r#"strip_any_host_port: true
route_config:
  virtual_hosts:
  - name: exact
    domains: ["api.example.com"]
    routes:
    - match: { prefix: / }
      direct_response: { status: 200, body: { inline_string: exact } }
  - name: all
    domains: ["*"]
    routes:
    - match: { prefix: / }
      route: { cluster: a }"#;
    let p = proxy(&http_bootstrap(hcm, &cluster("a", &[a.addr], false, ""))).await;
    let mut c = H1::connect(p.listener("http").unwrap()).await;
    assert_eq!(c.get("api.example.com:9999", "/").await.text(), "exact");
}

#[tokio::test]
async fn routes_match_path_regex_and_headers_first_match_wins() {
    let (p, _a, _b) = setup().await;
    let mut c = H1::connect(p.listener("http").unwrap()).await;
    assert_eq!(c.get("x", "/exact").await.json()["upstream"], "b");
    // `path` is exact: a longer path falls through to the default route.
    assert_eq!(c.get("x", "/exact/more").await.json()["upstream"], "a");
    // Query strings do not take part in path matching.
    assert_eq!(c.get("x", "/exact?x=1").await.json()["upstream"], "b");
    assert_eq!(c.get("x", "/case").await.text(), "nocase");
    assert_eq!(c.get("x", "/items/42").await.text(), "regex");
    // safe_regex must match the whole path.
    assert_eq!(c.get("x", "/items/42/x").await.json()["upstream"], "a");

    let with = |k: &str, v: &str| {
        Request::get("/hdr")
            .header("host", "x")
            .header(k, v)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    assert_eq!(c.send(with("x-canary", "true")).await.json()["upstream"], "b");
    // No x-env header: the inverted matcher does not match a missing header.
    assert_eq!(c.send(with("x-canary", "false")).await.text(), "hdr-default");
    assert_eq!(c.send(with("x-beta", "")).await.text(), "present");
    assert_eq!(c.send(with("x-env", "staging")).await.text(), "not-prod");
    // An inverted matcher on a missing header does not match (Envoy).
    assert_eq!(c.get("x", "/hdr").await.text(), "hdr-default");
    assert_eq!(c.send(with("x-env", "production")).await.text(), "hdr-default");
}

#[tokio::test]
async fn rewrites_prefix_and_host() {
    let (p, _a, _b) = setup().await;
    let mut c = H1::connect(p.listener("http").unwrap()).await;
    let r = c.get("svc.local", "/api/v1/users?id=7").await;
    assert_eq!(r.json()["uri"], "/v2/users?id=7");
    // Envoy keeps the original path for the upstream.
    assert_eq!(
        r.upstream_header("x-envoy-original-path").as_deref(),
        Some("/api/v1/users?id=7")
    );
    let r = c.get("svc.local", "/host").await;
    assert_eq!(r.upstream_header("host").as_deref(), Some("rewritten.internal"));
}

#[tokio::test]
async fn weighted_clusters_split_traffic() {
    let (p, _a, _b) = setup().await;
    let mut c = H1::connect(p.listener("http").unwrap()).await;
    let mut to_a = 0;
    let n = 400;
    for _ in 0..n {
        let r = c.get("x", "/split").await;
        let up = r.json()["upstream"].as_str().unwrap().to_string();
        // Per-cluster headers go with the pick.
        assert_eq!(r.upstream_header("x-split").as_deref(), Some(up.as_str()));
        if up == "a" {
            to_a += 1;
        }
    }
    // 75% of 400 = 300; a binomial 5-sigma band is about +/- 43.
    assert!((257..=343).contains(&to_a), "a got {to_a} of {n}");
}

#[tokio::test]
async fn direct_response_and_header_mutation_levels() {
    let (p, _a, _b) = setup().await;
    let mut c = H1::connect(p.listener("http").unwrap()).await;
    let r = c.get("x", "/teapot").await;
    assert_eq!(r.status, 418);
    assert_eq!(r.text(), "short and stout");
    // The route config level is applied last and, overwriting, wins (Envoy's
    // default: most_specific_header_mutations_wins is false).
    assert_eq!(r.header("x-resp-level"), Some("config"));

    let req = Request::get("/anything")
        .header("host", "x")
        .header("x-secret", "s3cr3t")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = c.send(req).await;
    assert_eq!(r.status, 200);
    // Appended at each level: route, then virtual host, then route config.
    assert_eq!(r.upstream_header("x-level").as_deref(), Some("route,vhost,config"));
    assert_eq!(r.upstream_header("x-config-only").as_deref(), Some("1"));
    assert_eq!(r.upstream_header("x-secret"), None);
    assert_eq!(r.header("x-route"), Some("yes"));
    assert_eq!(r.header("x-resp-level"), Some("config"));
}

#[tokio::test]
async fn envoy_request_and_response_headers() {
    let (p, _a, _b) = setup().await;
    let mut c = H1::connect(p.listener("http").unwrap()).await;
    let r = c.get("x", "/anything").await;
    // A request id is generated when absent: a v4 UUID.
    let id = r.upstream_header("x-request-id").expect("x-request-id");
    assert_eq!(id.len(), 36);
    assert_eq!(&id[14..15], "4");
    assert_eq!(r.upstream_header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(
        r.upstream_header("x-envoy-expected-rq-timeout-ms").as_deref(),
        Some("15000")
    );
    assert!(r.header("x-envoy-upstream-service-time").is_some());
    assert_eq!(r.header("server"), Some("envoy"));
    // The upstream's hop-by-hop headers do not reach the client.
    assert_eq!(r.header("connection"), None);

    // An existing request id is kept (use_remote_address is off).
    let req = Request::get("/anything")
        .header("host", "x")
        .header("x-request-id", "abc")
        .header("connection", "keep-alive, x-drop-me")
        .header("x-drop-me", "1")
        .header("keep-alive", "timeout=5")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = c.send(req).await;
    assert_eq!(r.upstream_header("x-request-id").as_deref(), Some("abc"));
    assert_eq!(r.upstream_header("x-drop-me"), None);
    assert_eq!(r.upstream_header("keep-alive"), None);
}

#[tokio::test]
async fn use_remote_address_appends_xff_and_echoes_request_id() {
    let a = upstream("a").await;
    let hcm = r#"use_remote_address: true
always_set_request_id_in_response: true
route_config:
  virtual_hosts:
  - name: all
    domains: ["*"]
    routes:
    - match: { prefix: / }
      route: { cluster: a }"#;
    let p = proxy(&http_bootstrap(hcm, &cluster("a", &[a.addr], false, ""))).await;
    let mut c = H1::connect(p.listener("http").unwrap()).await;
    let req = Request::get("/")
        .header("host", "x")
        .header("x-forwarded-for", "203.0.113.9")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = c.send(req).await;
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("203.0.113.9,127.0.0.1")
    );
    assert_eq!(
        r.header("x-request-id").map(str::to_string),
        r.upstream_header("x-request-id")
    );
}

#[tokio::test]
async fn http1_keep_alive_reuses_upstream_connections() {
    let (p, a, _b) = setup().await;
    let mut c = H1::connect(p.listener("http").unwrap()).await;
    for _ in 0..20 {
        assert_eq!(c.get("x", "/anything").await.status, 200);
    }
    // Sequential requests share one pooled upstream connection.
    assert_eq!(a.accepts.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn request_bodies_and_streamed_responses_pass_through() {
    let (p, _a, _b) = setup().await;
    let mut c = H1::connect(p.listener("http").unwrap()).await;
    let body = "x".repeat(200_000);
    let req = Request::post("/upload")
        .header("host", "x")
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let r = c.send(req).await;
    assert_eq!(r.json()["body"].as_str().map(str::len), Some(body.len()));
    let r = c.get("x", "/stream/5").await;
    assert_eq!(r.text(), "chunk0;chunk1;chunk2;chunk3;chunk4;");
}
