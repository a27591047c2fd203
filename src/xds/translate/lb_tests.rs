//! Load-balancing translation: `lb_policy` and its configs, EDS weights,
//! health and priorities, and route `hash_policy`, with Envoy's defaults and
//! its validation.

use super::tests::bootstrap_with_filters;
use crate::{
    balance::lb::LbPolicy,
    config::{Bootstrap, HashKind, HealthStatus, NetworkFilter, RouteAction},
};

const CLUSTER0: &str = "static_resources.clusters[0]";
const ROUTE0: &str =
    "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].routes[0]";
/// After the cluster's one endpoint line: fields of that `lb_endpoints` entry.
const LB_ENDPOINT: &str = "\n          ";

fn parse(route: &str, cluster_extra: &str) -> Result<Bootstrap, Vec<String>> {
    crate::xds::parse_bootstrap("t.yaml", &bootstrap_with_filters(route, cluster_extra, "", ""))
        .map_err(|e| e.0.iter().map(|e| e.to_string()).collect())
}

fn lb_of(cluster_extra: &str) -> LbPolicy {
    match parse("route: { cluster: c }", cluster_extra) {
        Ok(b) => b.clusters[0].lb.clone(),
        Err(e) => panic!("{cluster_extra}: {e:#?}"),
    }
}

// Envoy's defaults: ROUND_ROBIN, P2C for least request (choice_count 2, bias
// 1.0), ring sizes 1024..8M, maglev table 65537, panic threshold 50%,
// overprovisioning 1.4, endpoint weight 1, health UNKNOWN, priority 0.
#[test]
fn defaults_follow_envoy() {
    let b = parse("route: { cluster: c }", "").expect("valid");
    let c = &b.clusters[0];
    assert_eq!(c.lb, LbPolicy::RoundRobin);
    assert_eq!(c.panic_threshold, 50.0);
    assert_eq!(c.overprovisioning_factor, 140);
    let e = &c.endpoints[0];
    assert_eq!((e.weight, e.health, e.priority), (1, HealthStatus::Unknown, 0));
    assert_eq!(lb_of("\n    lb_policy: LEAST_REQUEST"), LbPolicy::least_request());
    assert_eq!(lb_of("\n    lb_policy: RING_HASH"), LbPolicy::ring_hash());
    assert_eq!(lb_of("\n    lb_policy: MAGLEV"), LbPolicy::maglev());
    assert_eq!(lb_of("\n    lb_policy: RANDOM"), LbPolicy::Random);
}

#[test]
fn policy_configs_are_read() {
    assert_eq!(
        lb_of("\n    lb_policy: LEAST_REQUEST\n    least_request_lb_config: { choice_count: 3, active_request_bias: { default_value: 0.5, runtime_key: k } }"),
        LbPolicy::LeastRequest {
            choice_count: 3,
            active_request_bias: 0.5
        }
    );
    assert_eq!(
        lb_of(
            "\n    lb_policy: RING_HASH\n    ring_hash_lb_config: { minimum_ring_size: 64, maximum_ring_size: 4096 }"
        ),
        LbPolicy::RingHash {
            min_ring_size: 64,
            max_ring_size: 4096
        }
    );
    assert_eq!(
        lb_of("\n    lb_policy: MAGLEV\n    maglev_lb_config: { table_size: 251 }"),
        LbPolicy::Maglev { table_size: 251 }
    );
    // The extension form: the first policy remora knows wins (Envoy's rule).
    assert_eq!(
        lb_of(
            "\n    load_balancing_policy: { policies: [\
             { typed_extension_config: { name: x, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.load_balancing_policies.client_side_weighted_round_robin.v3.ClientSideWeightedRoundRobin } } },\
             { typed_extension_config: { name: y, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest, choice_count: 4 } } } ] }"
        ),
        LbPolicy::LeastRequest {
            choice_count: 4,
            active_request_bias: 1.0
        }
    );
}

#[test]
fn endpoint_weight_health_priority_and_panic_threshold_are_read() {
    let extra = format!(
        "{LB_ENDPOINT}load_balancing_weight: 7{LB_ENDPOINT}health_status: DRAINING\
         \n        priority: 2\
         \n      policy: {{ overprovisioning_factor: 100 }}\
         \n    common_lb_config: {{ healthy_panic_threshold: {{ value: 25 }} }}"
    );
    let b = parse("route: { cluster: c }", &extra).expect("valid");
    let c = &b.clusters[0];
    let e = &c.endpoints[0];
    assert_eq!((e.weight, e.health, e.priority), (7, HealthStatus::Draining, 2));
    assert_eq!(c.overprovisioning_factor, 100);
    assert_eq!(c.panic_threshold, 25.0);
}

#[test]
fn hash_policies_are_read_in_order() {
    let route = "route: { cluster: c, hash_policy: [ { header: { header_name: X-User } }, \
                 { cookie: { name: session }, terminal: true }, \
                 { connection_properties: { source_ip: true } }, { query_parameter: { name: u } } ] }";
    let b = parse(route, "\n    lb_policy: RING_HASH").expect("valid");
    let NetworkFilter::Http(h) = &b.listeners[0].filter else {
        panic!("an HTTP listener")
    };
    let RouteAction::Forward(f) = &h.route_config.virtual_hosts[0].routes[0].action else {
        panic!("a forwarding route")
    };
    let kinds: Vec<(String, bool)> = f
        .hash_policy
        .iter()
        .map(|p| {
            let k = match &p.kind {
                HashKind::Header(n) => format!("header {n}"),
                HashKind::Cookie(c) => format!("cookie {c}"),
                HashKind::SourceIp => "source ip".into(),
                HashKind::QueryParameter(q) => format!("query {q}"),
            };
            (k, p.terminal)
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("header x-user".to_string(), false),
            ("cookie session".into(), true),
            ("source ip".into(), false),
            ("query u".into(), false)
        ]
    );
}

#[test]
fn bad_input_names_the_field_path() {
    let cases: Vec<(&str, &str, &str, String)> = vec![
        (
            "choice_count below 2",
            "route: { cluster: c }",
            "\n    lb_policy: LEAST_REQUEST\n    least_request_lb_config: { choice_count: 1 }",
            format!("{CLUSTER0}: least_request_lb_config.choice_count must be at least 2, got 1"),
        ),
        (
            "maglev table not prime",
            "route: { cluster: c }",
            "\n    lb_policy: MAGLEV\n    maglev_lb_config: { table_size: 100 }",
            "maglev_lb_config.table_size must be a prime number, got 100".into(),
        ),
        (
            "ring sizes reversed",
            "route: { cluster: c }",
            "\n    lb_policy: RING_HASH\n    ring_hash_lb_config: { minimum_ring_size: 4096, maximum_ring_size: 64 }",
            "minimum_ring_size (4096) must not exceed maximum_ring_size (64)".into(),
        ),
        (
            "murmur hash",
            "route: { cluster: c }",
            "\n    lb_policy: RING_HASH\n    ring_hash_lb_config: { hash_function: MURMUR_HASH_2 }",
            format!("{CLUSTER0}.ring_hash_lb_config.hash_function: MURMUR_HASH_2 is not supported yet"),
        ),
        (
            "cluster-provided balancer",
            "route: { cluster: c }",
            "\n    lb_policy: CLUSTER_PROVIDED",
            format!("{CLUSTER0}.lb_policy: CLUSTER_PROVIDED is not supported"),
        ),
        (
            "panic threshold over 100",
            "route: { cluster: c }",
            "\n    common_lb_config: { healthy_panic_threshold: { value: 150 } }",
            format!("{CLUSTER0}.common_lb_config.healthy_panic_threshold.value: must be between 0 and 100, got 150"),
        ),
        (
            "zero endpoint weight",
            "route: { cluster: c }",
            "\n          load_balancing_weight: 0",
            format!("{CLUSTER0}.load_assignment.endpoints[0].lb_endpoints[0].load_balancing_weight: must be at least 1"),
        ),
        (
            "hash policy on a round-robin cluster",
            "route: { cluster: c, hash_policy: [ { header: { header_name: x-user } } ] }",
            "",
            format!("{ROUTE0}.route.hash_policy: has no effect: only RING_HASH and MAGLEV clusters hash requests, and cluster 'c' uses ROUND_ROBIN"),
        ),
        (
            "hash cookie generation",
            "route: { cluster: c, hash_policy: [ { cookie: { name: s, ttl: 10s } } ] }",
            "\n    lb_policy: MAGLEV",
            format!("{ROUTE0}.route.hash_policy[0].cookie.ttl: generating the hash cookie is not supported yet"),
        ),
        (
            "fail traffic on panic",
            "route: { cluster: c }",
            "\n    common_lb_config: { zone_aware_lb_config: { min_cluster_size: 3, fail_traffic_on_panic: true } }",
            format!("{CLUSTER0}.common_lb_config.zone_aware_lb_config.fail_traffic_on_panic: failing traffic in panic mode is not supported yet"),
        ),
        (
            "weighted priority health",
            "route: { cluster: c }",
            "\n    load_assignment: { cluster_name: c, policy: { weighted_priority_health: true } }",
            format!("{CLUSTER0}.load_assignment.policy.weighted_priority_health: priority health weighted by endpoint weights is not supported yet"),
        ),
        (
            "slow start",
            "route: { cluster: c }",
            "\n    round_robin_lb_config: { slow_start_config: { slow_start_window: 10s } }",
            format!("{CLUSTER0}.round_robin_lb_config.slow_start_config: slow start is not supported yet"),
        ),
    ];
    for (name, route, extra, expected) in cases {
        let errors = parse(route, extra).err().unwrap_or_default();
        assert!(
            errors.iter().any(|e| e.contains(&expected)),
            "{name}: expected an error containing\n  {expected}\ngot\n  {errors:#?}"
        );
    }
}
