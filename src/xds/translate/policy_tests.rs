//! Translation of the route-level traffic-policy fields, table-driven:
//! `max_stream_duration`, the deprecated gRPC timeouts, `idle_timeout`, the
//! connection manager's stream timers, virtual-host `retry_policy` and
//! `request_mirror_policies` at every level. Accepted configs get Envoy's
//! meaning and defaults; bad ones are reported at their field path.

use std::time::Duration;

use crate::config::{
    AttemptCount, Bootstrap, ForwardAction, HttpConnectionManager, MirrorHost, MirrorTarget, NetworkFilter, RouteAction,
};
use crate::policy::{
    fault::FractionalPercent,
    grpc_timeout::{deadlines, GrpcRequest, MaxStreamDuration},
    retry_on,
};

const HCM: &str = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config";
const ROUTE0: &str =
    "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].routes[0]";
const VH0: &str =
    "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0]";

/// The shared test bootstrap (clusters `c` and `m`) with one route.
fn bootstrap(route: &str, hcm_extra: &str) -> String {
    super::super::tests::bootstrap_with_filters(route, "", hcm_extra, "").replace(
        "  clusters:\n",
        "  clusters:\n  - { name: m, load_assignment: { cluster_name: m } }\n",
    )
}

/// The bootstrap with virtual-host (`vh`) and route-configuration (`rc`) fields.
fn with_levels(route: &str, vh: &str, rc: &str) -> String {
    bootstrap(route, "").replace(
        "          route_config:\n            virtual_hosts:\n            - name: v\n",
        &format!("          route_config:\n{rc}            virtual_hosts:\n            - name: v\n{vh}"),
    )
}

fn parse(yaml: &str) -> Bootstrap {
    crate::xds::parse_bootstrap("t.yaml", yaml).unwrap_or_else(|e| panic!("{e}\n---\n{yaml}"))
}

fn hcm(b: &Bootstrap) -> &HttpConnectionManager {
    match &b.listeners[0].filter {
        NetworkFilter::Http(h) => h,
        NetworkFilter::Tcp(_) => panic!("not an HCM"),
    }
}

fn action(b: &Bootstrap) -> &ForwardAction {
    match &hcm(b).route_config.virtual_hosts[0].routes[0].action {
        RouteAction::Forward(f) => f,
        RouteAction::Direct(_) => panic!("not a forwarding route"),
    }
}

fn errors_of(yaml: &str) -> Vec<String> {
    match crate::xds::parse_bootstrap("t.yaml", yaml) {
        Ok(_) => Vec::new(),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// Istio's routes carry `max_stream_duration: {max_stream_duration: 0s,
// grpc_timeout_header_max: 0s}` with `timeout: 0s`. Envoy reads it as: new
// timeouts (no route timeout), no limit of its own, and a gRPC request's
// grpc-timeout is the stream limit without a cap.
#[test]
fn istio_max_stream_duration_honours_grpc_timeout_uncapped() {
    let b = parse(&bootstrap(
        "route: { cluster: c, timeout: 0s, max_stream_duration: { max_stream_duration: 0s, grpc_timeout_header_max: 0s } }",
        "",
    ));
    let f = action(&b);
    assert_eq!(
        f.max_stream_duration,
        Some(MaxStreamDuration {
            max: Some(Duration::ZERO),
            grpc_timeout_header_max: Some(Duration::ZERO),
            grpc_timeout_header_offset: None,
        })
    );
    let grpc = |t| GrpcRequest {
        is_grpc: true,
        grpc_timeout: t,
    };
    let d = deadlines(&f.timeouts(), None, grpc(Some(Duration::from_secs(3600))));
    assert_eq!((d.route, d.stream), (None, Some(Duration::from_secs(3600))));
    assert_eq!(d.grpc_timeout_header, Some(Duration::from_secs(3600)));
    // Without the header there is no limit at all.
    let d = deadlines(&f.timeouts(), None, grpc(None));
    assert_eq!((d.route, d.stream), (None, None));
}

// Envoy keeps these durations in whole milliseconds; a route idle_timeout of 0
// disables the stream idle timer, unset leaves the connection manager's.
#[test]
fn route_timeout_fields_translate() {
    let b = parse(&bootstrap(
        "route: { cluster: c, idle_timeout: 2.5s, max_grpc_timeout: 10s, grpc_timeout_offset: 0.0500009s, max_stream_duration: { max_stream_duration: 30s, grpc_timeout_header_max: 0.0009s, grpc_timeout_header_offset: 0.1s } }",
        "",
    ));
    let f = action(&b);
    assert_eq!(f.idle_timeout, Some(ms(2500)));
    assert_eq!(f.max_grpc_timeout, Some(Duration::from_secs(10)));
    assert_eq!(f.grpc_timeout_offset, Some(ms(50)));
    assert_eq!(
        f.max_stream_duration,
        Some(MaxStreamDuration {
            max: Some(Duration::from_secs(30)),
            grpc_timeout_header_max: Some(Duration::ZERO),
            grpc_timeout_header_offset: Some(ms(100)),
        })
    );
    let b = parse(&bootstrap("route: { cluster: c, idle_timeout: 0s }", ""));
    assert_eq!(action(&b).idle_timeout, Some(Duration::ZERO));
    let b = parse(&bootstrap("route: { cluster: c }", ""));
    let f = action(&b);
    assert_eq!((f.idle_timeout, f.max_stream_duration), (None, None));
    assert!(f.mirrors.is_empty());
}

// Envoy's stream_idle_timeout defaults to 5 minutes and 0 disables it;
// common_http_protocol_options.max_stream_duration of 0 is no limit.
#[test]
fn connection_manager_stream_timers() {
    let h = |extra: &str| {
        let b = parse(&bootstrap("route: { cluster: c }", extra));
        let h = hcm(&b);
        (h.stream_idle_timeout, h.max_stream_duration)
    };
    assert_eq!(h(""), (Some(Duration::from_secs(300)), None));
    assert_eq!(h("\n          stream_idle_timeout: 0s"), (None, None));
    assert_eq!(
        h("\n          stream_idle_timeout: 10s\n          common_http_protocol_options: { max_stream_duration: 1.5s }"),
        (Some(Duration::from_secs(10)), Some(ms(1500)))
    );
    assert_eq!(
        h("\n          common_http_protocol_options: { max_stream_duration: 0s, idle_timeout: 0s }"),
        (Some(Duration::from_secs(300)), None)
    );
}

// Envoy: a virtual host's retry_policy is used by routes that have none; a
// route's own replaces it whole (no field is inherited).
#[test]
fn virtual_host_retry_policy_is_inherited_whole() {
    let vh = "              retry_policy: { retry_on: \"5xx,reset\", num_retries: 4 }\n";
    let b = parse(&with_levels("route: { cluster: c }", vh, ""));
    let p = action(&b).retry.clone().expect("inherited retry policy");
    assert_eq!(p.num_retries, 4);
    assert_eq!(p.retry_on, retry_on::parse("5xx,reset").unwrap());
    let b = parse(&with_levels(
        "route: { cluster: c, retry_policy: { retry_on: connect-failure } }",
        vh,
        "",
    ));
    let p = action(&b).retry.clone().expect("the route's own policy");
    assert_eq!(p.num_retries, 1, "the default, not the virtual host's 4");
    assert_eq!(p.retry_on, retry_on::parse("connect-failure").unwrap());
}

// Envoy: x-envoy-attempt-count is sent upstream only with the virtual host's
// include_request_attempt_count, and returned downstream only with
// include_attempt_count_in_response; both default to false.
#[test]
fn attempt_count_flags_come_from_the_virtual_host() {
    let b = parse(&with_levels("route: { cluster: c }", "", ""));
    assert_eq!(action(&b).attempt_count, AttemptCount::default());
    let vh =
        "              include_request_attempt_count: true\n              include_attempt_count_in_response: true\n";
    let b = parse(&with_levels("route: { cluster: c }", vh, ""));
    assert_eq!(
        action(&b).attempt_count,
        AttemptCount {
            request: true,
            response: true
        }
    );
}

// Envoy: the most specific non-empty mirror list wins whole (route, then
// virtual host, then route configuration); runtime_fraction's default value is
// the fraction; the host gets "-shadow" unless disabled or rewritten.
#[test]
fn mirror_policies_translate_at_every_level() {
    let rc = "            request_mirror_policies: [ { cluster: m, disable_shadow_host_suffix_append: true } ]\n";
    let vh = "              request_mirror_policies: [ { cluster: m, runtime_fraction: { default_value: { numerator: 25, denominator: TEN_THOUSAND }, runtime_key: k } }, { cluster_header: X-Mirror-To, host_rewrite_literal: shadow.example } ]\n";
    let route = "route: { cluster: c, request_mirror_policies: [ { cluster: m } ] }";

    let b = parse(&with_levels("route: { cluster: c }", "", rc));
    let m = &action(&b).mirrors;
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].host, MirrorHost::Unchanged);
    assert_eq!(
        m[0].fraction,
        FractionalPercent::hundred(100),
        "every request when unset"
    );

    let b = parse(&with_levels("route: { cluster: c }", vh, rc));
    let m = &action(&b).mirrors;
    assert_eq!(m.len(), 2, "the virtual host's list replaces the route config's");
    assert!(matches!(&m[0].target, MirrorTarget::Cluster(c) if c == "m"));
    assert_eq!(m[0].fraction, FractionalPercent::ten_thousand(25));
    assert_eq!(m[0].host, MirrorHost::ShadowSuffix);
    assert!(matches!(&m[1].target, MirrorTarget::Header(h) if h == "x-mirror-to"));
    assert_eq!(m[1].host, MirrorHost::Rewrite("shadow.example".into()));

    let b = parse(&with_levels(route, vh, rc));
    let m = &action(&b).mirrors;
    assert_eq!(m.len(), 1, "the route's own list wins");
    assert_eq!(m[0].host, MirrorHost::ShadowSuffix);

    // runtime_fraction without a default value: Envoy's 0%.
    let b = parse(&bootstrap(
        "route: { cluster: c, request_mirror_policies: [ { cluster: m, runtime_fraction: { runtime_key: k } } ] }",
        "",
    ));
    assert!(!action(&b).mirrors[0].chosen(0));
}

#[test]
fn bad_input_names_the_field_path() {
    let msd = |body: &str| {
        bootstrap(
            &format!("route: {{ cluster: c, max_stream_duration: {{ {body} }} }}"),
            "",
        )
    };
    let mirror = |body: &str| {
        bootstrap(
            &format!("route: {{ cluster: c, request_mirror_policies: [ {{ {body} }} ] }}"),
            "",
        )
    };
    let cases: Vec<(&str, String, String)> = vec![
        (
            "negative max_stream_duration",
            msd("max_stream_duration: -1s"),
            format!("{ROUTE0}.route.max_stream_duration.max_stream_duration: duration must not be negative"),
        ),
        (
            "negative grpc_timeout_header_offset",
            msd("grpc_timeout_header_max: 1s, grpc_timeout_header_offset: -0.5s"),
            format!("{ROUTE0}.route.max_stream_duration.grpc_timeout_header_offset: duration must not be negative"),
        ),
        (
            "invalid duration",
            msd("grpc_timeout_header_max: 5x"),
            "grpc_timeout_header_max".to_string(),
        ),
        (
            "HIGH routing priority",
            bootstrap("route: { cluster: c, priority: HIGH }", ""),
            format!("{ROUTE0}.route.priority: HIGH routing priority (its own circuit breaker thresholds) is not supported yet"),
        ),
        (
            "negative idle_timeout",
            bootstrap("route: { cluster: c, idle_timeout: -2s }", ""),
            format!("{ROUTE0}.route.idle_timeout: duration must not be negative"),
        ),
        (
            "negative stream_idle_timeout",
            bootstrap("route: { cluster: c }", "\n          stream_idle_timeout: -1s"),
            format!("{HCM}.stream_idle_timeout: duration must not be negative"),
        ),
        (
            "negative connection manager max_stream_duration",
            bootstrap(
                "route: { cluster: c }",
                "\n          common_http_protocol_options: { max_stream_duration: -3s }",
            ),
            format!("{HCM}.common_http_protocol_options.max_stream_duration: duration must not be negative"),
        ),
        (
            "unknown mirror cluster",
            mirror("cluster: nowhere"),
            format!("{ROUTE0}.route.request_mirror_policies[0].cluster: unknown cluster 'nowhere'"),
        ),
        (
            "mirror cluster and cluster_header",
            mirror("cluster: m, cluster_header: x-to"),
            format!("{ROUTE0}.route.request_mirror_policies[0]: only one of cluster and cluster_header can be set"),
        ),
        (
            "mirror without a cluster",
            mirror("disable_shadow_host_suffix_append: true"),
            format!("{ROUTE0}.route.request_mirror_policies[0]: a mirror policy needs cluster or cluster_header"),
        ),
        (
            "invalid mirror cluster_header",
            mirror("cluster_header: \"bad header\""),
            format!(
                "{ROUTE0}.route.request_mirror_policies[0].cluster_header: 'bad header' is not a valid header name"
            ),
        ),
        (
            "mirror header mutations",
            mirror("cluster: m, request_headers_mutations: [ { remove: x-a } ]"),
            format!("{ROUTE0}.route.request_mirror_policies[0].request_headers_mutations: is not supported yet"),
        ),
        (
            "unknown virtual-host mirror cluster",
            with_levels(
                "route: { cluster: c }",
                "              request_mirror_policies: [ { cluster: gone } ]\n",
                "",
            ),
            format!("{VH0}.request_mirror_policies[0].cluster: unknown cluster 'gone'"),
        ),
        (
            "bad virtual-host retry_on",
            with_levels(
                "route: { cluster: c }",
                "              retry_policy: { retry_on: \"5xx,sometimes\" }\n",
                "",
            ),
            format!("{VH0}.retry_policy.retry_on: unknown retry_on value \"sometimes\""),
        ),
        (
            "virtual-host hedge policy",
            with_levels(
                "route: { cluster: c }",
                "              hedge_policy: { hedge_on_per_try_timeout: true }\n",
                "",
            ),
            format!("{VH0}.hedge_policy: not supported by remora yet"),
        ),
    ];
    for (name, yaml, expected) in cases {
        let errors = errors_of(&yaml);
        assert!(
            errors.iter().any(|e| e.contains(&expected)),
            "{name}: expected an error containing\n  {expected}\ngot\n  {errors:#?}"
        );
    }
}
