//! Table-driven route matching, without sockets.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue};

use super::RouteTable;
use crate::config::{NetworkFilter, StripPort};

/// Builds a route table from a route_config YAML, through the real translate path.
fn table(route_config: &str, strip: &str) -> RouteTable {
    let hcm = route_config
        .lines()
        .map(|l| format!("          {l}"))
        .collect::<Vec<_>>()
        .join("\n");
    let yaml = format!(
        r#"static_resources:
  listeners:
  - name: l
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: t
          {strip}
{hcm}
"#
    );
    let b = crate::xds::parse_bootstrap("t.yaml", &yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let NetworkFilter::Http(h) = &b.listeners[0].filter else {
        panic!("not HTTP")
    };
    RouteTable::new(Arc::clone(&h.route_config), h.strip_port)
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

const VHOSTS: &str = r#"route_config:
  virtual_hosts:
  - { name: exact, domains: ["foo.com", "bar.com:8080"], routes: [ { match: { prefix: / }, direct_response: { status: 200 } } ] }
  - { name: long-suffix, domains: ["*.b.foo.com"], routes: [ { match: { prefix: / }, direct_response: { status: 200 } } ] }
  - { name: suffix, domains: ["*.foo.com"], routes: [ { match: { prefix: / }, direct_response: { status: 200 } } ] }
  - { name: bare-suffix, domains: ["*-svc"], routes: [ { match: { prefix: / }, direct_response: { status: 200 } } ] }
  - { name: prefix, domains: ["foo.*"], routes: [ { match: { prefix: / }, direct_response: { status: 200 } } ] }
  - { name: any, domains: ["*"], routes: [ { match: { prefix: / }, direct_response: { status: 200 } } ] }"#;

#[test]
fn virtual_host_selection_follows_envoy_precedence() {
    let t = table(VHOSTS, "");
    let cases = [
        ("foo.com", "exact"),
        ("FOO.com", "exact"),
        ("a.b.foo.com", "long-suffix"),
        ("x.foo.com", "suffix"),
        ("api-svc", "bare-suffix"),
        // "*-svc" needs at least one character before the suffix.
        ("-svc", "any"),
        ("foo.org", "prefix"),
        ("other", "any"),
        ("bar.com:8080", "exact"),
        // The port is part of the Host unless stripped.
        ("foo.com:80", "prefix"),
        ("", "any"),
    ];
    for (host, want) in cases {
        let vh = t.virtual_host(host, 80).map(|v| v.name.as_str());
        assert_eq!(vh, Some(want), "host {host:?}");
    }
}

#[test]
fn port_stripping_modes() {
    let any = table(VHOSTS, "strip_any_host_port: true");
    assert_eq!(any.virtual_host("foo.com:80", 10000).unwrap().name, "exact");
    assert_eq!(any.virtual_host("[::1]:80", 10000).unwrap().name, "any");
    let matching = table(VHOSTS, "strip_matching_host_port: true");
    assert_eq!(matching.virtual_host("foo.com:10000", 10000).unwrap().name, "exact");
    assert_eq!(matching.virtual_host("foo.com:80", 10000).unwrap().name, "prefix");
    assert_eq!(StripPort::Matching, matching_strip(&matching));
}

fn matching_strip(t: &RouteTable) -> StripPort {
    t.strip_port
}

#[test]
fn route_matchers_first_match_wins() {
    let t = table(
        r#"route_config:
  virtual_hosts:
  - name: v
    domains: ["*"]
    routes:
    - { name: exact, match: { path: /a } , direct_response: { status: 200 } }
    - { name: nocase, match: { path: /B, case_sensitive: false }, direct_response: { status: 200 } }
    - { name: regex, match: { safe_regex: { regex: "/r/[a-z]+" } }, direct_response: { status: 200 } }
    - { name: sep, match: { path_separated_prefix: /api }, direct_response: { status: 200 } }
    - { name: grpc, match: { prefix: /svc., grpc: {} }, direct_response: { status: 200 } }
    - name: hdr-exact
      match: { prefix: /h, headers: [ { name: x-a, string_match: { exact: "1" } } ] }
      direct_response: { status: 200 }
    - name: hdr-regex
      match: { prefix: /h, headers: [ { name: x-b, safe_regex_match: { regex: "v[0-9]" } } ] }
      direct_response: { status: 200 }
    - name: hdr-absent
      match: { prefix: /h, headers: [ { name: x-c, present_match: false } ] }
      direct_response: { status: 200 }
    - name: hdr-empty
      match: { prefix: /h, headers: [ { name: x-c, string_match: { exact: "" }, treat_missing_header_as_empty: true } ] }
      direct_response: { status: 200 }
    - name: hdr-suffix-ic
      match: { prefix: /h, headers: [ { name: x-c, string_match: { suffix: END, ignore_case: true } } ] }
      direct_response: { status: 200 }
    - { name: fallback, match: { prefix: / }, direct_response: { status: 200 } }"#,
        "",
    );
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("/a", &[], "exact"),
        ("/a?x=1", &[], "exact"),
        ("/a/", &[], "fallback"),
        ("/b", &[], "nocase"),
        ("/r/abc", &[], "regex"),
        ("/r/abc1", &[], "fallback"),
        ("/api", &[], "sep"),
        ("/api/x", &[], "sep"),
        ("/apix", &[], "fallback"),
        ("/svc.Greeter/Hi", &[("content-type", "application/grpc")], "grpc"),
        ("/svc.Greeter/Hi", &[("content-type", "application/json")], "fallback"),
        ("/h", &[("x-a", "1"), ("x-c", "z")], "hdr-exact"),
        ("/h", &[("x-a", "2"), ("x-b", "v7"), ("x-c", "z")], "hdr-regex"),
        ("/h", &[("x-b", "v77"), ("x-c", "z")], "fallback"),
        ("/h", &[], "hdr-absent"),
        ("/h", &[("x-c", "the-end")], "hdr-suffix-ic"),
        ("/h", &[("x-c", "")], "hdr-empty"),
    ];
    for (path, hs, want) in cases {
        let got = t.find("h", 80, path, &headers(hs)).map(|(_, r)| r.name.as_str());
        assert_eq!(got, Some(*want), "{path} {hs:?}");
    }
}

#[test]
fn multiple_header_values_are_matched_joined() {
    let t = table(
        r#"route_config:
  virtual_hosts:
  - name: v
    domains: ["*"]
    routes:
    - { name: joined, match: { prefix: /, headers: [ { name: x-m, string_match: { exact: "a,b" } } ] }, direct_response: { status: 200 } }"#,
        "",
    );
    assert!(t.find("h", 80, "/", &headers(&[("x-m", "a"), ("x-m", "b")])).is_some());
    assert!(t.find("h", 80, "/", &headers(&[("x-m", "a")])).is_none());
}
