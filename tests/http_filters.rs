//! The fault injection and local rate limit HTTP filters over real sockets: local replies (status,
//! body, headers), delays, per-route and per-virtual-host configs, response flags in the access
//! log and the Prometheus stats. Each assertion states Envoy's behaviour (checked against Envoy
//! 1.40 where noted; tests/parity_envoy.rs compares some of these replies with Envoy itself).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use tokio::time::Instant;

const FAULT: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
const RL: &str = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";

/// A bootstrap with `filters` (a YAML list, unindented) before the router, the HCM body
/// `hcm` (route_config and more) and one cluster `up` for `upstream`.
fn bootstrap(filters: &str, hcm: &str, upstream: &Upstream) -> String {
    http_bootstrap(hcm, &cluster("up", &[upstream.addr], false, "")).replace(
        "          http_filters:\n",
        &format!("          http_filters:\n{}\n", indent(filters, 10)),
    )
}

/// One virtual host "*" with `routes` (a YAML list, unindented).
fn routes(routes: &str) -> String {
    format!(
        "route_config:\n  virtual_hosts:\n  - name: all\n    domains: [\"*\"]\n    routes:\n{}",
        indent(routes, 4)
    )
}

const TO_UPSTREAM: &str = "- match: { prefix: / }\n  route: { cluster: up }";

fn fault(body: &str) -> String {
    format!(
        "- name: envoy.filters.http.fault\n  typed_config:\n    \"@type\": {FAULT}\n{}",
        indent(body, 4)
    )
}

fn rate_limit(body: &str) -> String {
    format!(
        "- name: envoy.filters.http.local_ratelimit\n  typed_config:\n    \"@type\": {RL}\n{}",
        indent(body, 4)
    )
}

async fn prometheus(p: &remora::proxy::Proxy) -> String {
    let admin = p.admin.expect("admin address");
    H1::connect(admin).await.get("admin", "/stats/prometheus").await.text()
}

/// The value of one Prometheus series, e.g. `envoy_http_fault_aborts_injected{envoy_http_conn_manager_prefix="ingress_http"}`.
fn series(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

fn fault_stat(text: &str, stat: &str) -> Option<u64> {
    series(
        text,
        &format!("envoy_http_fault_{stat}{{envoy_http_conn_manager_prefix=\"ingress_http\"}}"),
    )
}

fn rl_stat(text: &str, prefix: &str, stat: &str) -> Option<u64> {
    series(
        text,
        &format!("envoy_http_local_rate_limit_{stat}{{envoy_local_http_ratelimit_prefix=\"{prefix}\"}}"),
    )
}

fn upstream_requests(text: &str) -> Option<u64> {
    series(text, "envoy_cluster_upstream_rq_total{envoy_cluster_name=\"up\"}")
}

#[tokio::test]
async fn fault_abort_answers_locally_and_never_reaches_the_upstream() {
    let up = upstream("up").await;
    let p = proxy(&bootstrap(
        &fault("abort: { http_status: 503, percentage: { numerator: 100 } }"),
        &routes(TO_UPSTREAM),
        &up,
    ))
    .await;
    let mut c = H1::connect(p.listener("http").unwrap()).await;
    for _ in 0..2 {
        let r = c.get("svc", "/anything").await;
        // Envoy 1.40: 503, "fault filter abort", text/plain, and the connection stays open.
        assert_eq!(r.status, 503);
        assert_eq!(r.text(), "fault filter abort");
        assert_eq!(r.header("content-type"), Some("text/plain"));
        assert_eq!(r.header("connection"), None);
    }
    assert_eq!(up.accepts.load(std::sync::atomic::Ordering::SeqCst), 0);
    let stats = prometheus(&p).await;
    assert_eq!(fault_stat(&stats, "aborts_injected"), Some(2), "{stats}");
    assert_eq!(fault_stat(&stats, "delays_injected"), Some(0), "{stats}");
    assert_eq!(fault_stat(&stats, "active_faults"), Some(0), "{stats}");
    assert!(stats.contains("# TYPE envoy_http_fault_active_faults gauge"), "{stats}");
}

#[tokio::test]
async fn fault_at_zero_percent_never_fires() {
    let up = upstream("up").await;
    let p = proxy(&bootstrap(
        &fault("abort: { http_status: 503, percentage: { numerator: 0 } }\ndelay: { fixed_delay: 10s }"),
        &routes(TO_UPSTREAM),
        &up,
    ))
    .await;
    let mut c = H1::connect(p.listener("http").unwrap()).await;
    // No percentage on the delay is 0% too (FractionalPercent's default), so no 10 s wait.
    let r = c.get("svc", "/pass").await;
    assert_eq!((r.status.as_u16(), r.json()["upstream"].as_str()), (200, Some("up")));
    let stats = prometheus(&p).await;
    assert_eq!(fault_stat(&stats, "aborts_injected"), Some(0), "{stats}");
}

#[tokio::test]
async fn header_controlled_abort_and_delay() {
    let up = upstream("up").await;
    let p = proxy(&bootstrap(
        &fault(
            "abort: { header_abort: {}, percentage: { numerator: 100 } }\ndelay: { header_delay: {}, percentage: { numerator: 100 } }",
        ),
        &routes(TO_UPSTREAM),
        &up,
    ))
    .await;
    let mut c = H1::connect(p.listener("http").unwrap()).await;
    let req = |name: &str, value: &str| {
        Request::get("/h")
            .header("host", "svc")
            .header(name, value)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let r = c.send(req("x-envoy-fault-abort-request", "418")).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (418, "fault filter abort"));
    // Not a status in [200, 600): no abort.
    let r = c.send(req("x-envoy-fault-abort-request", "99")).await;
    assert_eq!(r.status, 200);
    // The request waits before it goes upstream, then is served.
    let started = Instant::now();
    let r = c.send(req("x-envoy-fault-delay-request", "200")).await;
    let took = started.elapsed();
    assert_eq!(r.status, 200);
    assert!(took >= Duration::from_millis(200), "delayed only {took:?}");
    // Without the headers nothing happens.
    assert_eq!(c.get("svc", "/h").await.status, 200);
    let stats = prometheus(&p).await;
    assert_eq!(fault_stat(&stats, "aborts_injected"), Some(1), "{stats}");
    assert_eq!(fault_stat(&stats, "delays_injected"), Some(1), "{stats}");
}

#[tokio::test]
async fn grpc_abort_is_http_200_with_grpc_status() {
    let up = upstream("up").await;
    let p = proxy(&bootstrap(
        &fault("abort: { grpc_status: 5, percentage: { numerator: 100 } }"),
        &routes(TO_UPSTREAM),
        &up,
    ))
    .await;
    let addr = p.listener("http").unwrap();
    let mut h2 = h2_client(addr).await;
    let req = Request::post("http://svc/pkg.Svc/Method")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = within("grpc", h2.send_request(req)).await.expect("response");
    let r = Reply::read(resp).await;
    // Envoy: sendLocalReply(200, ..., grpc_status) -> a trailers-only gRPC reply.
    assert_eq!(r.status, 200);
    assert_eq!(r.header("grpc-status"), Some("5"));
    assert_eq!(r.header("grpc-message"), Some("fault filter abort"));
    // A plain HTTP client gets the same HTTP 200 with the text body (Envoy 1.40).
    let r = H1::connect(addr).await.get("svc", "/").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "fault filter abort"));
}

#[tokio::test]
async fn max_active_faults_overflow_skips_the_fault() {
    let up = upstream("up").await;
    let p = proxy(&bootstrap(
        &fault("delay: { fixed_delay: 1s, percentage: { numerator: 100 } }\nmax_active_faults: 1"),
        &routes(TO_UPSTREAM),
        &up,
    ))
    .await;
    let addr = p.listener("http").unwrap();
    let first = tokio::spawn(async move {
        let started = Instant::now();
        let r = H1::connect(addr).await.get("svc", "/first").await;
        (r.status, started.elapsed())
    });
    // Once the first request holds the one active fault, the next is not faulted.
    eventually("the first request is delayed", || async {
        (fault_stat(&prometheus(&p).await, "active_faults") == Some(1)).then_some(())
    })
    .await;
    let started = Instant::now();
    let r = H1::connect(addr).await.get("svc", "/second").await;
    assert_eq!(r.status, 200);
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    let (status, took) = within("first request", first).await.unwrap();
    assert_eq!(status, 200);
    assert!(took >= Duration::from_secs(1), "{took:?}");
    let stats = prometheus(&p).await;
    assert_eq!(fault_stat(&stats, "faults_overflow"), Some(1), "{stats}");
    assert_eq!(fault_stat(&stats, "delays_injected"), Some(1), "{stats}");
    assert_eq!(fault_stat(&stats, "active_faults"), Some(0), "{stats}");
}

#[tokio::test]
async fn local_rate_limit_rejects_the_third_request_with_429() {
    let up = upstream("up").await;
    let p = proxy(&bootstrap(
        &rate_limit(
            "stat_prefix: http_rl
token_bucket: { max_tokens: 2, tokens_per_fill: 1, fill_interval: 3600s }
filter_enabled: { runtime_key: e, default_value: { numerator: 100 } }
filter_enforced: { runtime_key: f, default_value: { numerator: 100 } }
enable_x_ratelimit_headers: DRAFT_VERSION_03
response_headers_to_add: [ { header: { key: x-limited, value: \"yes\" } } ]",
        ),
        &routes("- match: { prefix: /api }\n  route: { cluster: up }"),
        &up,
    ))
    .await;
    let mut c = H1::connect(p.listener("http").unwrap()).await;
    // Envoy 1.40: limit, whole tokens left, and seconds to the next token (0 while one is left).
    let r = c.get("svc", "/api/1").await;
    assert_eq!(r.status, 200);
    let x = |r: &Reply| {
        ["x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"]
            .map(|h| r.header(h).unwrap_or("-").to_string())
    };
    assert_eq!(x(&r), ["2", "1", "0"]);
    assert_eq!(r.header("x-limited"), None);
    let r = c.get("svc", "/api/2").await;
    assert_eq!((r.status.as_u16(), x(&r)), (200, ["2", "0", "3600"].map(String::from)));
    let r = c.get("svc", "/api/3").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.text(), "local_rate_limited");
    assert_eq!(r.header("x-limited"), Some("yes"));
    assert_eq!(x(&r), ["2", "0", "3600"]);
    // The filter runs before the router: no route is still rate limited, not 404.
    assert_eq!(c.get("svc", "/nowhere").await.status, 429);
    let stats = prometheus(&p).await;
    assert_eq!(rl_stat(&stats, "http_rl", "enabled"), Some(4), "{stats}");
    assert_eq!(rl_stat(&stats, "http_rl", "ok"), Some(2), "{stats}");
    assert_eq!(rl_stat(&stats, "http_rl", "rate_limited"), Some(2), "{stats}");
    assert_eq!(rl_stat(&stats, "http_rl", "enforced"), Some(2), "{stats}");
    assert_eq!(upstream_requests(&stats), Some(2), "{stats}");
}

#[tokio::test]
async fn rate_limit_enabled_but_not_enforced_passes_with_the_shadow_headers() {
    let up = upstream("up").await;
    let p = proxy(&bootstrap(
        &rate_limit(
            "stat_prefix: shadow
token_bucket: { max_tokens: 1, fill_interval: 3600s }
filter_enabled: { default_value: { numerator: 100 } }
request_headers_to_add_when_not_enforced: [ { header: { key: x-rl-shadow, value: limited } } ]",
        ),
        &routes(TO_UPSTREAM),
        &up,
    ))
    .await;
    let mut c = H1::connect(p.listener("http").unwrap()).await;
    let r = c.get("svc", "/1").await;
    assert_eq!((r.status.as_u16(), r.upstream_header("x-rl-shadow")), (200, None));
    // Over the limit, but filter_enforced is absent (0%): the request passes, marked.
    let r = c.get("svc", "/2").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-rl-shadow").as_deref(), Some("limited"));
    // enable_x_ratelimit_headers is OFF by default.
    assert_eq!(r.header("x-ratelimit-limit"), None);
    let stats = prometheus(&p).await;
    assert_eq!(rl_stat(&stats, "shadow", "rate_limited"), Some(1), "{stats}");
    assert_eq!(rl_stat(&stats, "shadow", "enforced"), Some(0), "{stats}");
}

#[tokio::test]
async fn per_route_and_per_virtual_host_configs_replace_the_listener_config() {
    let up = upstream("up").await;
    let route_rl = |prefix: &str| {
        format!(
            "envoy.filters.http.local_ratelimit:\n  \"@type\": {RL}\n  stat_prefix: {prefix}\n  token_bucket: {{ max_tokens: 1, fill_interval: 3600s }}\n  filter_enabled: {{ default_value: {{ numerator: 100 }} }}\n  filter_enforced: {{ default_value: {{ numerator: 100 }} }}"
        )
    };
    let hcm = format!(
        r#"route_config:
  virtual_hosts:
  - name: shared
    domains: ["shared.local"]
    typed_per_filter_config:
{vh_rl}
    routes:
    - match: {{ prefix: /a }}
      direct_response: {{ status: 200, body: {{ inline_string: a }} }}
    - match: {{ prefix: /b }}
      direct_response: {{ status: 200, body: {{ inline_string: b }} }}
  - name: all
    domains: ["*"]
    routes:
    - match: {{ prefix: /limited }}
      route: {{ cluster: up }}
      typed_per_filter_config:
{route_rl}
    - match: {{ prefix: /teapot }}
      route: {{ cluster: up }}
      typed_per_filter_config:
        envoy.filters.http.fault:
          "@type": {FAULT}
          abort: {{ http_status: 418, percentage: {{ numerator: 100 }} }}
    - match: {{ prefix: / }}
      route: {{ cluster: up }}"#,
        vh_rl = indent(&route_rl("vh_rl"), 6),
        route_rl = indent(&route_rl("route_rl"), 8),
    );
    // The listener-level rate limit has no token bucket and is not enabled (Envoy's documented
    // pattern: the routes bring the limits); its fault filter acts on headers only.
    let filters = fault("abort: { header_abort: {}, percentage: { numerator: 100 } }")
        + "\n"
        + &rate_limit("stat_prefix: listener_rl");
    let p = proxy(&bootstrap(&filters, &hcm, &up)).await;
    let mut c = H1::connect(p.listener("http").unwrap()).await;
    assert_eq!(c.get("svc", "/limited").await.status, 200);
    assert_eq!(c.get("svc", "/limited").await.status, 429);
    for _ in 0..3 {
        assert_eq!(c.get("svc", "/free").await.status, 200);
    }
    // The virtual host's config is one bucket for all its routes, direct responses included.
    assert_eq!(c.get("shared.local", "/a").await.text(), "a");
    let r = c.get("shared.local", "/b").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (429, "local_rate_limited"));
    // The route's fault config replaces the listener's (header-controlled) one.
    assert_eq!(c.get("svc", "/teapot").await.status, 418);
    let r = c
        .send(
            Request::get("/free")
                .header("host", "svc")
                .header("x-envoy-fault-abort-request", "503")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 503);
    let stats = prometheus(&p).await;
    assert_eq!(rl_stat(&stats, "route_rl", "enforced"), Some(1), "{stats}");
    assert_eq!(rl_stat(&stats, "vh_rl", "ok"), Some(1), "{stats}");
    // Registered with the config, as Envoy's counters are, and never counted (not enabled).
    assert_eq!(rl_stat(&stats, "listener_rl", "enabled"), Some(0), "{stats}");
    // Per-route fault configs count in the connection manager's fault stats.
    assert_eq!(fault_stat(&stats, "aborts_injected"), Some(2), "{stats}");
}

#[tokio::test]
async fn response_flags_name_what_the_filters_did() {
    let up = upstream("up").await;
    let log = std::env::temp_dir().join(format!("remora-filters-{}-{}.log", std::process::id(), up.addr.port()));
    let hcm = format!(
        "access_log:\n- name: envoy.access_loggers.file\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n    path: {}\n    log_format:\n      text_format_source:\n        inline_string: \"%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\\n\"\n{}",
        log.display(),
        routes(TO_UPSTREAM)
    );
    let filters = fault(
        "abort: { header_abort: {}, percentage: { numerator: 100 } }\ndelay: { header_delay: {}, percentage: { numerator: 100 } }",
    ) + "\n"
        + &rate_limit(
            "stat_prefix: flags\ntoken_bucket: { max_tokens: 4, fill_interval: 3600s }\nfilter_enabled: { default_value: { numerator: 100 } }\nfilter_enforced: { default_value: { numerator: 100 } }",
        );
    let p = proxy(&bootstrap(&filters, &hcm, &up)).await;
    let mut c = H1::connect(p.listener("http").unwrap()).await;
    let send = |path: &str, headers: &[(&str, &str)]| {
        let mut b = Request::get(path).header("host", "svc");
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(Full::new(Bytes::new())).unwrap()
    };
    c.send(send("/abort", &[("x-envoy-fault-abort-request", "503")])).await;
    c.send(send("/delay", &[("x-envoy-fault-delay-request", "10")])).await;
    c.send(send(
        "/both",
        &[
            ("x-envoy-fault-delay-request", "10"),
            ("x-envoy-fault-abort-request", "500"),
        ],
    ))
    .await;
    // The aborted requests never reached the rate limit; /delay and these take its 4 tokens.
    for path in ["/1", "/2", "/3", "/limited"] {
        c.send(send(path, &[])).await;
    }
    let lines = eventually("all access log lines", || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        (text.lines().count() >= 7).then_some(text)
    })
    .await;
    let _ = std::fs::remove_file(&log);
    for want in [
        "/abort 503 FI fault_filter_abort",
        "/delay 200 DI via_upstream",
        "/both 500 DI,FI fault_filter_abort",
        "/3 200 - via_upstream",
        "/limited 429 RL local_rate_limited",
    ] {
        assert!(lines.lines().any(|l| l == want), "no line {want:?} in\n{lines}");
    }
}
