//! Translation, table-driven: each bad input names its field path; accepted
//! inputs get Envoy's defaults.

use std::time::Duration;

use crate::config::{ClusterTarget, NetworkFilter, RouteAction, UpstreamProtocol};

fn bootstrap(route: &str, cluster_extra: &str, hcm_extra: &str) -> String {
    bootstrap_with_filters(route, cluster_extra, hcm_extra, "")
}

/// The test bootstrap with `filters` (YAML list items) before the router.
pub(super) fn bootstrap_with_filters(route: &str, cluster_extra: &str, hcm_extra: &str, filters: &str) -> String {
    format!(
        r#"static_resources:
  listeners:
  - name: l
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: t{hcm_extra}
          route_config:
            virtual_hosts:
            - name: v
              domains: ["*"]
              routes:
              - match: {{ prefix: / }}
                {route}
          http_filters:{filters}
          - name: router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
  - name: c
    load_assignment:
      cluster_name: c
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 10.0.0.1, port_value: 80 }} }} }}{cluster_extra}
"#
    )
}

/// The bootstrap with its inline route_config replaced by RDS.
fn rds_only() -> String {
    let full = bootstrap("route: { cluster: c }", "", "");
    let start = full.find("          route_config:").unwrap();
    let end = full.find("          http_filters:").unwrap();
    format!(
        "{}          rds: {{ route_config_name: r }}\n{}",
        &full[..start],
        &full[end..]
    )
}

const ROUTE0: &str =
    "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].routes[0]";
const CLUSTER0: &str = "static_resources.clusters[0]";

fn errors_of(yaml: &str) -> Vec<String> {
    match crate::xds::parse_bootstrap("t.yaml", yaml) {
        Ok(_) => Vec::new(),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn defaults_follow_envoy() {
    let b = crate::xds::parse_bootstrap("t.yaml", &bootstrap("route: { cluster: c }", "", "")).unwrap();
    let c = &b.clusters[0];
    // A cluster with no type is STATIC; connect_timeout defaults to 5 s; HTTP/1.1 upstream.
    assert_eq!(c.connect_timeout, Duration::from_secs(5));
    assert_eq!(c.protocol, UpstreamProtocol::Http1);
    let NetworkFilter::Http(h) = &b.listeners[0].filter else {
        panic!()
    };
    let RouteAction::Forward(f) = &h.route_config.virtual_hosts[0].routes[0].action else {
        panic!()
    };
    // The route timeout defaults to 15 s.
    assert_eq!(f.timeout, Some(Duration::from_secs(15)));
    assert!(matches!(&f.target, ClusterTarget::Single(n) if n == "c"));
    assert!(h.generate_request_id);
    assert_eq!(h.server_name, "envoy");
}

#[test]
fn lower_case_enums_are_accepted_as_envoy_does() {
    let b = crate::xds::parse_bootstrap(
        "t.yaml",
        &bootstrap(
            "route: { cluster: c }",
            "\n    type: static\n    lb_policy: round_robin",
            "",
        ),
    );
    assert!(b.is_ok(), "{:?}", b.err().map(|e| e.to_string()));
}

#[test]
fn bad_input_names_the_field_path() {
    let cases: Vec<(&str, String, String)> = vec![
        ("dangling cluster", bootstrap("route: { cluster: x }", "", ""), format!("{ROUTE0}.route.cluster: unknown cluster 'x'")),
        (
            "invalid regex",
            bootstrap("route: { cluster: c }", "", "").replace("prefix: / }", "safe_regex: { regex: \"(\" } }"),
            format!("{ROUTE0}.match.safe_regex.regex: invalid regex '('"),
        ),
        (
            "unknown retry_on word",
            bootstrap("route: { cluster: c, retry_policy: { retry_on: \"5xx,5xxx\" } }", "", ""),
            format!("{ROUTE0}.route.retry_policy.retry_on: unknown retry_on value \"5xxx\""),
        ),
        (
            "retry back-off max below base",
            bootstrap(
                "route: { cluster: c, retry_policy: { retry_on: 5xx, retry_back_off: { base_interval: 1s, max_interval: 0.5s } } }",
                "",
                "",
            ),
            format!("{ROUTE0}.route.retry_policy.retry_back_off: "),
        ),
        (
            "outlier percentage over 100",
            bootstrap("route: { cluster: c }", "\n    outlier_detection: { max_ejection_percent: 150 }", ""),
            format!("{CLUSTER0}.outlier_detection: outlier_detection.max_ejection_percent must be at most 100"),
        ),
        (
            "retry budget over 100%",
            bootstrap(
                "route: { cluster: c }",
                "\n    circuit_breakers: { thresholds: [ { retry_budget: { budget_percent: { value: 120 } } } ] }",
                "",
            ),
            format!("{CLUSTER0}.circuit_breakers.thresholds[0]: retry_budget.budget_percent must be between 0 and 100"),
        ),
        (
            "dns cluster",
            bootstrap("route: { cluster: c }", "\n    type: STRICT_DNS", ""),
            format!("{CLUSTER0}.type: cluster type STRICT_DNS is not supported yet"),
        ),
        (
            "hostname endpoint",
            bootstrap("route: { cluster: c }", "", "").replace("10.0.0.1", "backend.local"),
            "is not an IP address".to_string(),
        ),
        (
            "weights sum mismatch",
            bootstrap("route: { weighted_clusters: { clusters: [ { name: c, weight: 1 } ], total_weight: 5 } }", "", ""),
            format!("{ROUTE0}.route.weighted_clusters.total_weight: is 5 but the weights add up to 1"),
        ),
        (
            "header formatter",
            bootstrap("route: { cluster: c }\n                request_headers_to_add: [ { header: { key: x-ip, value: \"%DOWNSTREAM_REMOTE_ADDRESS%\" } } ]", "", ""),
            format!("{ROUTE0}.request_headers_to_add[0].header.value"),
        ),
        (
            "remove host",
            bootstrap("route: { cluster: c }\n                request_headers_to_remove: [ host ]", "", ""),
            format!("{ROUTE0}.request_headers_to_remove[0]: 'host' cannot be removed"),
        ),
        (
            "direct response status",
            bootstrap("direct_response: { status: 99 }", "", ""),
            format!("{ROUTE0}.direct_response.status: 99 is not an HTTP status"),
        ),
        (
            "rds and route_config both",
            bootstrap("route: { cluster: c }", "", "\n          rds: { route_config_name: r }"),
            "typed_config: multiple fields provided for oneof 'route_specifier'".to_string(),
        ),
        (
            "rds without ads",
            rds_only(),
            "static_resources.listeners[0]: its HTTP connection manager uses rds, which needs dynamic_resources.ads_config".to_string(),
        ),
        (
            "access log operator",
            bootstrap(
                "route: { cluster: c }",
                "",
                "\n          access_log: [ { name: f, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog, path: /dev/null, log_format: { text_format: \"%UPSTREAM_PEER_URI_SAN%\" } } } ]",
            ),
            "access_log[0].typed_config.log_format: access log operator %UPSTREAM_PEER_URI_SAN% is not supported yet".to_string(),
        ),
        (
            "listener filter",
            bootstrap("route: { cluster: c }", "", "").replacen(
                "    filter_chains:",
                "    listener_filters: [ { name: od, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst } } ]\n    filter_chains:",
                1,
            ),
            "static_resources.listeners[0].listener_filters[0].typed_config: listener filter envoy.extensions.filters.listener.original_dst.v3.OriginalDst is not supported yet".to_string(),
        ),
        (
            "second filter chain",
            bootstrap("route: { cluster: c }", "", "").replacen(
                "    - filters:",
                "    - filters: [ { name: t, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: t, cluster: c } } ]\n      filter_chain_match: { destination_port: 1 }\n    - filters:",
                1,
            ),
            "static_resources.listeners[0].filter_chains[1]: more than one filter chain".to_string(),
        ),
        (
            "duplicate domain",
            bootstrap("route: { cluster: c }", "", "").replace(
                "            - name: v\n",
                "            - { name: w, domains: [\"*\"], routes: [] }\n            - name: v\n",
            ),
            "domain '*' is already used by virtual host 'w'".to_string(),
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

#[test]
fn telemetry_only_fields_are_accepted_with_a_warning() {
    let yaml = bootstrap("route: { cluster: c }", "", "\n          tracing: {}").replace(
        "static_resources:",
        "stats_flush_interval: 5s\nlayered_runtime: { layers: [ { name: l, static_layer: {} } ] }\nstatic_resources:",
    );
    let b = crate::xds::parse_bootstrap("t.yaml", &yaml).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        b.ignored.iter().any(|w| w.starts_with("stats_flush_interval:")),
        "{:?}",
        b.ignored
    );
    assert!(
        b.ignored.iter().any(|w| w.contains("typed_config.tracing:")),
        "{:?}",
        b.ignored
    );
}

#[test]
fn optional_unsupported_http_filter_is_skipped_as_envoy_does() {
    let yaml = bootstrap("route: { cluster: c }", "", "").replace(
        "          http_filters:\n",
        "          http_filters:\n          - { name: cors, is_optional: true, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors } }\n",
    );
    let b = crate::xds::parse_bootstrap("t.yaml", &yaml).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        b.ignored.iter().any(|w| w.contains("optional HTTP filter 'cors'")),
        "{:?}",
        b.ignored
    );
}

#[test]
fn istio_telemetry_filters_are_skipped_with_a_warning_and_traffic_filters_rejected() {
    let with_filter = |typed_config: &str| {
        bootstrap("route: { cluster: c }", "", "").replace(
            "          http_filters:\n",
            &format!("          http_filters:\n          - {{ name: istio.stats, typed_config: {typed_config} }}\n"),
        )
    };
    // Bare (JSON/YAML: not in Envoy's API) and wrapped in a TypedStruct (as istiod sends it).
    for tc in [
        r#"{ "@type": type.googleapis.com/stats.PluginConfig, disable_host_header_fallback: true }"#,
        r#"{ "@type": type.googleapis.com/udpa.type.v1.TypedStruct, type_url: type.googleapis.com/stats.PluginConfig, value: {} }"#,
    ] {
        let b = crate::xds::parse_bootstrap("t.yaml", &with_filter(tc)).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            b.ignored
                .iter()
                .any(|w| w.contains("HTTP filter 'istio.stats' (stats.PluginConfig) only feeds telemetry")),
            "{:?}",
            b.ignored
        );
    }
    // Istio's ALPN override changes traffic: rejected, naming the wrapped type.
    let alpn = r#"{ "@type": type.googleapis.com/udpa.type.v1.TypedStruct, type_url: type.googleapis.com/istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig, value: {} }"#;
    let errors = errors_of(&with_filter(alpn));
    assert!(
        errors
            .iter()
            .any(|e| e.contains("(istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig) is not supported yet")),
        "{errors:?}"
    );
}

// Envoy: HttpProtocolOptions.common_http_protocol_options.max_requests_per_connection
// (Istio's maxRequestsPerConnection) limits requests per upstream connection;
// the deprecated cluster field applies when the common options leave it
// unset; 0 is no limit.
#[test]
fn max_requests_per_connection_from_common_options_or_the_deprecated_field() {
    let typed = |common: &str| {
        format!(
            "\n    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        common_http_protocol_options: {{ {common} }}\n        explicit_http_config: {{ http_protocol_options: {{}} }}"
        )
    };
    let limit = |extra: &str| {
        let b = crate::xds::parse_bootstrap("t.yaml", &bootstrap("route: { cluster: c }", extra, ""))
            .unwrap_or_else(|e| panic!("{e}"));
        b.clusters[0].max_requests_per_connection.map(|n| n.get())
    };
    assert_eq!(limit(""), None);
    assert_eq!(limit(&typed("max_requests_per_connection: 1")), Some(1));
    assert_eq!(limit(&typed("max_requests_per_connection: 0")), None);
    assert_eq!(limit("\n    max_requests_per_connection: 7"), Some(7));
    assert_eq!(
        limit(&format!(
            "\n    max_requests_per_connection: 7{}",
            typed("max_requests_per_connection: 2")
        )),
        Some(2)
    );
    assert_eq!(
        limit(&format!(
            "\n    max_requests_per_connection: 7{}",
            typed("idle_timeout: 5s")
        )),
        Some(7)
    );
}
