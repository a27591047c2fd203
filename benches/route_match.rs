//! Route matching on the request path: `http::route::RouteTable::find_hit`,
//! the call `HttpProxy` makes per request, over tables translated from a
//! generated Envoy bootstrap by `xds::parse_bootstrap` (the code `remora run`
//! uses), so the matchers are exactly what the proxy holds.
//!
//! Two listeners, two route tables:
//! - `routes`: the virtual host `catalog` holds 1,000 routes, a mix of
//!   prefixes (some case-insensitive), exact paths, separated prefixes,
//!   prefixes with a header condition (`x-tenant`, about every tenth route)
//!   and anchored `safe_regex` paths (every 200th); 99 more virtual hosts
//!   with one route each. Cases: the first route matches, the 500th (a
//!   header route), the last (a regex), the last with a query string, none.
//! - `vhosts`: 100 virtual hosts of 10 routes each (1,000 routes): 90 with
//!   Istio-style domain lists (name, name.ns, FQDN, each also with `:80`),
//!   5 `*.suffix`, 4 `prefix*` and a `*`. Each case's path matches the
//!   chosen host's first route, so the difference between cases is the
//!   virtual-host choice.
//!
//! Plus building each `RouteTable` (its domain index), as a config update does.
//! Run with `cargo bench --bench route_match`; under a minute.

use std::{fmt::Write, hint::black_box, sync::Arc, time::Duration};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderValue};
use remora::{
    config::{HttpConnectionManager, NetworkFilter},
    http::route::RouteTable,
};

const ROUTES: usize = 1_000;
const VHOSTS: usize = 100;
const LISTENER_PORT: u16 = 80;

/// Route `i` of the `catalog` virtual host, as an Envoy route in YAML flow style.
fn catalog_route(i: usize) -> String {
    let action = "route: { cluster: upstream }";
    if i % 200 == 199 {
        format!("- match: {{ safe_regex: {{ regex: \"/r{i}/[a-z]+/[0-9]+\" }} }}\n  {action}\n")
    } else if i % 10 == 9 {
        format!(
            "- match: {{ prefix: \"/h{i}/\", headers: [ {{ name: x-tenant, string_match: {{ exact: \"t{i}\" }} }} ] }}\n  {action}\n"
        )
    } else if i % 10 == 8 {
        format!("- match: {{ path_separated_prefix: \"/sp{i}\" }}\n  {action}\n")
    } else if i % 10 >= 6 {
        format!("- match: {{ path: \"/p{i}/items\" }}\n  {action}\n")
    } else if i % 10 == 5 {
        format!("- match: {{ prefix: \"/ci{i}/\", case_sensitive: false }}\n  {action}\n")
    } else {
        format!("- match: {{ prefix: \"/s{i}/\" }}\n  {action}\n")
    }
}

/// The domains of virtual host `j` of the `vhosts` table.
fn domains(j: usize) -> Vec<String> {
    match j {
        0..90 => {
            let (svc, ns) = (format!("svc{j}"), format!("ns{}", j % 5));
            let names = [
                svc.clone(),
                format!("{svc}.{ns}"),
                format!("{svc}.{ns}.svc"),
                format!("{svc}.{ns}.svc.cluster.local"),
            ];
            names.iter().flat_map(|n| [n.clone(), format!("{n}:80")]).collect()
        }
        90..95 => vec![format!("*.ext{j}.example.com")],
        95..99 => vec![format!("api{j}.*")],
        _ => vec!["*".to_string()],
    }
}

/// Ten routes of one small virtual host: nine specific ones, then `/`.
fn small_routes(out: &mut String, j: usize) {
    for k in 0..9 {
        let r = match k % 3 {
            0 => format!("prefix: \"/v{j}/a{k}/\""),
            1 => format!("path: \"/v{j}/b{k}\""),
            _ => format!("prefix: \"/v{j}/c{k}/\", headers: [ {{ name: x-tenant, present_match: true }} ]"),
        };
        writeln!(
            out,
            "          - match: {{ {r} }}\n            route: {{ cluster: upstream }}"
        )
        .unwrap();
    }
    writeln!(
        out,
        "          - match: {{ prefix: \"/\" }}\n            route: {{ cluster: upstream }}"
    )
    .unwrap();
}

fn listener(out: &mut String, name: &str, port: u16, virtual_hosts: &str) {
    write!(
        out,
        r#"  - name: {name}
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          route_config:
            name: {name}
            virtual_hosts:
{virtual_hosts}          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#
    )
    .unwrap();
}

fn bootstrap() -> String {
    let mut routes = String::new();
    routes.push_str("            - name: catalog\n              domains: [\"catalog.default.svc.cluster.local\"]\n");
    routes.push_str("              routes:\n");
    for i in 0..ROUTES {
        for line in catalog_route(i).lines() {
            writeln!(routes, "              {line}").unwrap();
        }
    }
    for j in 1..VHOSTS {
        writeln!(
            routes,
            "            - name: other{j}\n              domains: [\"other{j}.default.svc.cluster.local\"]"
        )
        .unwrap();
        routes.push_str("              routes: [ { match: { prefix: \"/\" }, route: { cluster: upstream } } ]\n");
    }

    let mut vhosts = String::new();
    for j in 0..VHOSTS {
        let list = domains(j)
            .iter()
            .map(|d| format!("\"{d}\""))
            .collect::<Vec<_>>()
            .join(", ");
        writeln!(
            vhosts,
            "            - name: vh{j}\n              domains: [{list}]\n              routes:"
        )
        .unwrap();
        let mut r = String::new();
        small_routes(&mut r, j);
        // small_routes indents for a route list at 10 spaces; nest it 4 deeper.
        for line in r.lines() {
            writeln!(vhosts, "    {line}").unwrap();
        }
    }

    let mut out = String::from("static_resources:\n  listeners:\n");
    listener(&mut out, "routes", 10_001, &routes);
    listener(&mut out, "vhosts", 10_002, &vhosts);
    out.push_str(
        r#"  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 8080 } } }
"#,
    );
    out
}

/// The connection managers of the generated bootstrap, by listener name.
fn managers() -> Vec<(String, Arc<HttpConnectionManager>)> {
    let text = bootstrap();
    let boot = match remora::xds::parse_bootstrap("route_match.yaml", &text) {
        Ok(b) => b,
        Err(e) => panic!("the generated bootstrap does not translate: {e:?}"),
    };
    boot.listeners
        .iter()
        .map(|l| match &l.filter {
            NetworkFilter::Http(hcm) => (l.name.clone(), hcm.clone()),
            NetworkFilter::Tcp(_) => panic!("listener {} is not HTTP", l.name),
        })
        .collect()
}

fn table(managers: &[(String, Arc<HttpConnectionManager>)], name: &str) -> RouteTable {
    let hcm = &managers.iter().find(|(n, _)| n == name).expect("listener").1;
    RouteTable::new(hcm.route_config.clone(), hcm.strip_port)
}

/// Headers a typical mesh request carries when it reaches the router.
fn headers(tenant: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("user-agent", "grpc-go/1.64.0"),
        ("accept", "application/json"),
        ("x-request-id", "6f1c9a2e-3b7d-4e58-9a0c-1d2e3f4a5b6c"),
        ("x-forwarded-proto", "http"),
        ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    h.insert("x-tenant", HeaderValue::from_str(tenant).unwrap());
    h
}

fn routes(c: &mut Criterion) {
    let managers = managers();
    let table = table(&managers, "routes");
    let host = "catalog.default.svc.cluster.local";
    let vh = &table.config.virtual_hosts[0];
    assert_eq!(vh.routes.len(), ROUTES);
    let cases: [(&str, &str, &str, Option<usize>); 5] = [
        ("first", "/s0/orders", "t-other", Some(0)),
        ("500th_header", "/h499/cart", "t499", Some(499)),
        ("last_regex", "/r999/orders/12345", "t-other", Some(999)),
        (
            "last_regex_query",
            "/r999/orders/12345?page=2&size=50",
            "t-other",
            Some(999),
        ),
        ("none", "/nothing/here", "t-other", None),
    ];
    let mut group = c.benchmark_group("route_match_1000_routes");
    for (name, path, tenant, want) in cases {
        let headers = headers(tenant);
        let hit = table.find_hit(host, LISTENER_PORT, path, &headers);
        assert_eq!(hit.map(|h| h.index.1), want, "{name}: {path} matched the wrong route");
        group.bench_function(name, |b| {
            b.iter(|| black_box(table.find_hit(black_box(host), LISTENER_PORT, black_box(path), &headers)))
        });
    }
    group.finish();
}

fn vhosts(c: &mut Criterion) {
    let managers = managers();
    let table = table(&managers, "vhosts");
    assert_eq!(table.config.virtual_hosts.len(), VHOSTS);
    let total: usize = table.config.virtual_hosts.iter().map(|v| v.routes.len()).sum();
    assert_eq!(total, ROUTES);
    let headers = headers("t-other");
    let cases: [(&str, &str, &str, usize); 6] = [
        ("exact", "svc42.ns2.svc.cluster.local", "/v42/a0/x", 42),
        ("exact_with_port", "svc42.ns2:80", "/v42/a0/x", 42),
        ("exact_upper_case", "Svc42.ns2.svc.cluster.local", "/v42/a0/x", 42),
        ("suffix_wildcard", "www.ext93.example.com", "/v93/a0/x", 93),
        ("prefix_wildcard", "api97.internal", "/v97/a0/x", 97),
        ("catch_all", "unknown.example.org", "/v99/a0/x", 99),
    ];
    let mut group = c.benchmark_group("vhost_select_100_vhosts");
    for (name, host, path, want) in cases {
        let hit = table.find_hit(host, LISTENER_PORT, path, &headers);
        assert_eq!(hit.map(|h| h.index), Some((want, 0)), "{name}: {host}{path}");
        group.bench_function(name, |b| {
            b.iter(|| black_box(table.find_hit(black_box(host), LISTENER_PORT, black_box(path), &headers)))
        });
    }
    group.finish();
}

fn build(c: &mut Criterion) {
    let managers = managers();
    let mut group = c.benchmark_group("route_table_build");
    for name in ["routes", "vhosts"] {
        let hcm = &managers.iter().find(|(n, _)| n == name).expect("listener").1;
        group.bench_with_input(BenchmarkId::from_parameter(name), hcm, |b, hcm| {
            b.iter(|| black_box(RouteTable::new(hcm.route_config.clone(), hcm.strip_port)))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = routes, vhosts, build
}
criterion_main!(benches);
