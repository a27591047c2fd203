//! Translation of the fault and local rate limit filters, table-driven: accepted configs get
//! Envoy's defaults, bad ones are reported at their field path.

use std::time::Duration;

use crate::config::{AppendAction, HttpFilter, NetworkFilter};
use crate::policy::fault::{AbortKind, DelayKind, FractionalPercent};

const HCM: &str = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config";

/// A bootstrap whose HCM has `filters` (YAML list items, indented for `http_filters`) before the
/// router, and whose only route carries `route_extra` (e.g. typed_per_filter_config).
fn bootstrap(filters: &str, route_extra: &str) -> String {
    let route = format!("route: {{ cluster: c }}{route_extra}");
    crate::xds::translate::tests::bootstrap_with_filters(&route, "", "", filters)
}

fn fault(body: &str) -> String {
    format!(
        "\n          - name: fault\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault\n{}",
        indent(body, 14)
    )
}

fn rate_limit(body: &str) -> String {
    format!(
        "\n          - name: rl\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit\n{}",
        indent(body, 14)
    )
}

/// A route-level typed_per_filter_config with one entry.
fn per_route(key: &str, type_name: &str, body: &str) -> String {
    format!(
        "\n                typed_per_filter_config:\n                  {key}:\n                    \"@type\": type.googleapis.com/{type_name}\n{}",
        indent(body, 20)
    )
}

fn indent(s: &str, n: usize) -> String {
    s.lines()
        .map(|l| format!("{}{l}\n", " ".repeat(n)))
        .collect::<String>()
        .trim_end()
        .to_string()
}

const RL: &str = "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";
const FAULT: &str = "envoy.extensions.filters.http.fault.v3.HTTPFault";

fn filters_of(yaml: &str) -> (Vec<HttpFilter>, Vec<HttpFilter>) {
    let b = crate::xds::parse_bootstrap("t.yaml", yaml).unwrap_or_else(|e| panic!("{e}\n---\n{yaml}"));
    let NetworkFilter::Http(h) = &b.listeners[0].filter else {
        panic!("not an HCM")
    };
    let route = &h.route_config.virtual_hosts[0].routes[0];
    (h.filters.clone(), route.filter_overrides.clone())
}

fn errors_of(yaml: &str) -> Vec<String> {
    match crate::xds::parse_bootstrap("t.yaml", yaml) {
        Ok(_) => Vec::new(),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn fault_filter_fields_translate() {
    let yaml = bootstrap(
        &fault(
            "delay: { fixed_delay: 0.2s, percentage: { numerator: 50 } }
abort: { http_status: 503, percentage: { numerator: 25, denominator: TEN_THOUSAND } }
max_active_faults: 7
headers: [ { name: X-Test, exact_match: \"yes\" }, { name: x-b, string_match: { exact: b } } ]
upstream_cluster: c
downstream_nodes: [ a, b ]
abort_percent_runtime: fault.http.abort.abort_percent",
        ),
        "",
    );
    let (filters, _) = filters_of(&yaml);
    let [HttpFilter::Fault { name, config }] = filters.as_slice() else {
        panic!("{filters:?}")
    };
    assert_eq!(name, "fault");
    let delay = config.delay.as_ref().unwrap();
    assert_eq!(delay.kind, DelayKind::Fixed(Duration::from_millis(200)));
    assert_eq!(delay.percent, FractionalPercent::hundred(50));
    let abort = config.abort.as_ref().unwrap();
    assert_eq!(abort.kind, AbortKind::Http(503));
    assert_eq!(abort.percent, FractionalPercent::ten_thousand(25));
    assert_eq!(config.max_active_faults, Some(7));
    let headers: Vec<_> = config
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
        .collect();
    assert_eq!(headers, [("x-test", "yes"), ("x-b", "b")]);
    assert_eq!(config.upstream_cluster.as_deref(), Some("c"));
    assert_eq!(config.downstream_nodes, ["a", "b"]);
}

#[test]
fn fault_percentage_defaults_to_zero_as_envoy() {
    // FractionalPercent absent: 0/100, the fault never fires.
    let (filters, _) = filters_of(&bootstrap(
        &fault("abort: { header_abort: {} }\ndelay: { header_delay: {} }"),
        "",
    ));
    let [HttpFilter::Fault { config, .. }] = filters.as_slice() else {
        panic!()
    };
    let abort = config.abort.as_ref().unwrap();
    assert_eq!(
        (abort.kind.clone(), abort.percent),
        (AbortKind::HeaderControlled, FractionalPercent::hundred(0))
    );
    assert_eq!(config.delay.as_ref().unwrap().kind, DelayKind::HeaderControlled);
}

#[test]
fn local_rate_limit_fields_translate() {
    let yaml = bootstrap(
        &rate_limit(
            "stat_prefix: http_rl
status: { code: ServiceUnavailable }
token_bucket: { max_tokens: 10, tokens_per_fill: 5, fill_interval: 2s }
filter_enabled: { runtime_key: rl_enabled, default_value: { numerator: 50, denominator: TEN_THOUSAND } }
filter_enforced: { default_value: { numerator: 200 } }
response_headers_to_add: [ { append: false, header: { key: x-rl, value: \"1\" } } ]
request_headers_to_add_when_not_enforced: [ { header: { key: x-shadow, value: limited } } ]
enable_x_ratelimit_headers: DRAFT_VERSION_03
rate_limited_as_resource_exhausted: true
always_consume_default_token_bucket: false",
        ),
        "",
    );
    let (filters, _) = filters_of(&yaml);
    let [HttpFilter::LocalRateLimit { name, config, headers }] = filters.as_slice() else {
        panic!("{filters:?}")
    };
    assert_eq!(name, "rl");
    assert_eq!(config.stat_prefix, "http_rl");
    assert_eq!(
        (config.max_tokens, config.tokens_per_fill, config.fill_interval),
        (10, 5, Duration::from_secs(2))
    );
    assert_eq!(config.filter_enabled_percent, 0.5);
    // A numerator above the denominator always hits.
    assert_eq!(config.filter_enforced_percent, 100.0);
    assert_eq!(config.status, 503);
    assert!(config.enable_x_ratelimit_headers && config.rate_limited_as_resource_exhausted);
    assert_eq!(config.grpc_status(), Some(8));
    assert_eq!(headers.response_add[0].name.as_str(), "x-rl");
    assert_eq!(headers.response_add[0].action, AppendAction::OverwriteIfExistsOrAdd);
    assert_eq!(headers.request_add[0].name.as_str(), "x-shadow");
    assert_eq!(config.response_headers_to_add.len(), 1);
    assert_eq!(config.request_headers_to_add_when_not_enforced.len(), 1);
}

#[test]
fn local_rate_limit_defaults_follow_envoy() {
    // No token bucket is fine at the connection manager (Envoy: the routes bring theirs); status
    // defaults to 429, tokens_per_fill to 1, absent filter_enabled/filter_enforced to 0%.
    let yaml = bootstrap(
        &rate_limit("stat_prefix: http_rl"),
        &per_route(
            "rl",
            RL,
            "stat_prefix: route_rl\ntoken_bucket: { max_tokens: 1, fill_interval: 1s }",
        ),
    );
    let (filters, overrides) = filters_of(&yaml);
    let [HttpFilter::LocalRateLimit { config, .. }] = filters.as_slice() else {
        panic!()
    };
    assert_eq!(
        (config.max_tokens, config.status, config.filter_enabled_percent),
        (0, 429, 0.0)
    );
    let [HttpFilter::LocalRateLimit { name, config, .. }] = overrides.as_slice() else {
        panic!("{overrides:?}")
    };
    assert_eq!((name.as_str(), config.tokens_per_fill), ("rl", 1));
    assert!(!config.enable_x_ratelimit_headers);
}

#[test]
fn virtual_host_per_filter_config_is_accepted() {
    let yaml = bootstrap(&fault("abort: { header_abort: {} }"), "").replace(
        "              domains: [\"*\"]\n",
        &format!(
            "              domains: [\"*\"]\n              typed_per_filter_config:\n                fault:\n                  \"@type\": type.googleapis.com/{FAULT}\n                  abort: {{ http_status: 418, percentage: {{ numerator: 100 }} }}\n"
        ),
    );
    let b = crate::xds::parse_bootstrap("t.yaml", &yaml).unwrap_or_else(|e| panic!("{e}"));
    let NetworkFilter::Http(h) = &b.listeners[0].filter else {
        panic!()
    };
    let vh = &h.route_config.virtual_hosts[0];
    assert!(matches!(&vh.filter_overrides[..], [HttpFilter::Fault { name, .. }] if name == "fault"));
    // config_dump shows the filters and their configs.
    let dump = serde_json::to_string(&b).unwrap();
    assert!(dump.contains("\"http_status\":418"), "{dump}");
}

#[test]
fn bad_filter_configs_name_the_field_path() {
    let route = format!("{HCM}.route_config.virtual_hosts[0].routes[0]");
    let f0 = format!("{HCM}.http_filters[0].typed_config");
    let cases: Vec<(&str, String, String)> = vec![
        (
            "abort status out of range",
            bootstrap(&fault("abort: { http_status: 700, percentage: { numerator: 100 } }"), ""),
            format!("{f0}.abort.http_status: must be in [200, 600)"),
        ),
        (
            "zero fixed delay",
            bootstrap(&fault("delay: { fixed_delay: 0s, percentage: { numerator: 100 } }"), ""),
            format!("{f0}.delay.fixed_delay: must be greater than 0"),
        ),
        (
            "abort without a kind",
            bootstrap(&fault("abort: { percentage: { numerator: 100 } }"), ""),
            format!("{f0}.abort: an abort needs http_status, grpc_status or header_abort"),
        ),
        (
            "fault header prefix matcher",
            bootstrap(&fault("headers: [ { name: x, prefix_match: a } ]"), ""),
            format!("{f0}.headers[0]: only exact-value header matchers"),
        ),
        (
            "fault response rate limit",
            bootstrap(&fault("response_rate_limit: { fixed_limit: { limit_kbps: 1 }, percentage: { numerator: 100 } }"), ""),
            format!("{f0}.response_rate_limit: not supported by remora yet (HTTPFault.response_rate_limit)"),
        ),
        (
            "fault abort body",
            bootstrap(&fault("abort: { http_status: 503, response_body: no }"), ""),
            format!("{f0}.abort.response_body: not supported by remora yet (FaultAbort.response_body)"),
        ),
        (
            "fill interval below 50ms",
            bootstrap(&rate_limit("stat_prefix: s\ntoken_bucket: { max_tokens: 1, fill_interval: 0.01s }"), ""),
            format!("{f0}.token_bucket.fill_interval: must be at least 50ms"),
        ),
        (
            "zero max tokens",
            bootstrap(&rate_limit("stat_prefix: s\ntoken_bucket: { fill_interval: 1s }"), ""),
            format!("{f0}.token_bucket.max_tokens: must be greater than 0"),
        ),
        (
            "empty stat prefix",
            bootstrap(&rate_limit("token_bucket: { max_tokens: 1, fill_interval: 1s }"), ""),
            format!("{f0}.stat_prefix: must not be empty"),
        ),
        (
            "descriptors",
            bootstrap(
                &rate_limit("stat_prefix: s\ndescriptors: [ { entries: [ { key: k, value: v } ], token_bucket: { max_tokens: 1, fill_interval: 1s } } ]"),
                "",
            ),
            format!("{f0}.descriptors: not supported by remora yet (LocalRateLimit.descriptors)"),
        ),
        (
            "per-connection buckets",
            bootstrap(&rate_limit("stat_prefix: s\nlocal_rate_limit_per_downstream_connection: true"), ""),
            format!("{f0}.local_rate_limit_per_downstream_connection: not supported by remora yet"),
        ),
        (
            "per-route rate limit without a bucket",
            bootstrap(&rate_limit("stat_prefix: s"), &per_route("rl", RL, "stat_prefix: r")),
            format!("{route}.typed_per_filter_config[rl].token_bucket: must be set in a per-route config"),
        ),
        (
            "per-route config of an unsupported filter",
            bootstrap("", &per_route("envoy.filters.http.cors", "envoy.extensions.filters.http.cors.v3.CorsPolicy", "allow_credentials: true")),
            format!("{route}.typed_per_filter_config[envoy.filters.http.cors]: per-route config for filter 'envoy.filters.http.cors' (envoy.extensions.filters.http.cors.v3.CorsPolicy) is not supported yet"),
        ),
        (
            "per-route fault with a bad status",
            bootstrap("", &per_route("fault", FAULT, "abort: { http_status: 100 }")),
            format!("{route}.typed_per_filter_config[fault].abort.http_status: must be in [200, 600)"),
        ),
    ];
    for (name, yaml, expected) in cases {
        let errors = errors_of(&yaml);
        assert!(
            errors.iter().any(|e| e.contains(&expected)),
            "{name}: expected an error containing\n  {expected}\ngot\n  {errors:#?}\n---\n{yaml}"
        );
    }
}
