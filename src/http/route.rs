//! Route matching as Envoy does it: pick the virtual host by Host (exact beats
//! `*.suffix` beats `prefix*` beats `*`; longer patterns first), then the first
//! route whose path, header and gRPC conditions all hold. Pure functions over
//! the config model: no I/O, tested table-driven.

use std::{collections::HashMap, sync::Arc};

use http::HeaderMap;

use crate::config::{HeaderMatcher, HeaderRule, PathMatch, Route, RouteConfig, StripPort, VirtualHost};

/// A matched route and where it is in the config: `index` is (virtual host, route), the key of
/// per-route state such as the filters' (see `http::filters`).
#[derive(Debug, Clone, Copy)]
pub struct RouteHit<'a> {
    pub vh: &'a VirtualHost,
    pub route: &'a Route,
    pub index: (usize, usize),
}

/// A route configuration with its virtual-host index built once.
#[derive(Debug)]
pub struct RouteTable {
    pub config: Arc<RouteConfig>,
    exact: HashMap<String, usize>,
    /// (suffix without the '*', vhost), longest suffix first.
    suffixes: Vec<(String, usize)>,
    /// (prefix without the '*', vhost), longest prefix first.
    prefixes: Vec<(String, usize)>,
    wildcard: Option<usize>,
    strip_port: StripPort,
}

impl RouteTable {
    pub fn new(config: Arc<RouteConfig>, strip_port: StripPort) -> RouteTable {
        let mut exact = HashMap::new();
        let mut suffixes = Vec::new();
        let mut prefixes = Vec::new();
        let mut wildcard = None;
        for (i, vh) in config.virtual_hosts.iter().enumerate() {
            for d in &vh.domains {
                if d == "*" {
                    wildcard.get_or_insert(i);
                } else if let Some(s) = d.strip_prefix('*') {
                    suffixes.push((s.to_string(), i));
                } else if let Some(p) = d.strip_suffix('*') {
                    prefixes.push((p.to_string(), i));
                } else {
                    exact.entry(d.clone()).or_insert(i);
                }
            }
        }
        // Stable sorts keep config order among equal lengths.
        suffixes.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        let strip_port = if config.ignore_port_in_host_matching {
            StripPort::Any
        } else {
            strip_port
        };
        RouteTable {
            config,
            exact,
            suffixes,
            prefixes,
            wildcard,
            strip_port,
        }
    }

    /// The virtual host for a Host/:authority value.
    pub fn virtual_host(&self, host: &str, listener_port: u16) -> Option<&VirtualHost> {
        self.config
            .virtual_hosts
            .get(self.virtual_host_index(host, listener_port)?)
    }

    fn virtual_host_index(&self, host: &str, listener_port: u16) -> Option<usize> {
        let host = self.host_for_matching(host, listener_port);
        let lowered;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            lowered.as_str()
        } else {
            host
        };
        self.exact
            .get(host)
            .copied()
            // A wildcard must match at least one character: "*.foo.com" does not match ".foo.com".
            .or_else(|| {
                self.suffixes
                    .iter()
                    .find(|(s, _)| host.len() > s.len() && host.ends_with(s.as_str()))
                    .map(|x| x.1)
            })
            .or_else(|| {
                self.prefixes
                    .iter()
                    .find(|(p, _)| host.len() > p.len() && host.starts_with(p.as_str()))
                    .map(|x| x.1)
            })
            .or(self.wildcard)
    }

    fn host_for_matching<'h>(&self, host: &'h str, listener_port: u16) -> &'h str {
        if self.strip_port == StripPort::None {
            return host;
        }
        let Some((name, port)) = split_port(host) else {
            return host;
        };
        match self.strip_port {
            StripPort::Any => name,
            StripPort::Matching if port == listener_port => name,
            _ => host,
        }
    }

    /// The first matching route: (virtual host, route).
    pub fn find(
        &self,
        host: &str,
        listener_port: u16,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<(&VirtualHost, &Route)> {
        self.find_hit(host, listener_port, path, headers)
            .map(|hit| (hit.vh, hit.route))
    }

    /// The first matching route with its position in the config.
    pub fn find_hit(&self, host: &str, listener_port: u16, path: &str, headers: &HeaderMap) -> Option<RouteHit<'_>> {
        let vh_index = self.virtual_host_index(host, listener_port)?;
        let vh = self.config.virtual_hosts.get(vh_index)?;
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let (route_index, route) = vh
            .routes
            .iter()
            .enumerate()
            .find(|(_, r)| matches_without_query(r, path, headers))?;
        Some(RouteHit {
            vh,
            route,
            index: (vh_index, route_index),
        })
    }
}

/// Splits "host:port" (and "[v6]:port"); None when there is no port.
fn split_port(host: &str) -> Option<(&str, u16)> {
    let colon = host.rfind(':')?;
    if host.starts_with('[') && !host[..colon].ends_with(']') {
        return None; // a bare IPv6 literal
    }
    let port = host[colon + 1..].parse().ok()?;
    Some((&host[..colon], port))
}

pub fn route_matches(route: &Route, path_and_query: &str, headers: &HeaderMap) -> bool {
    // Path conditions look at the path without the query string.
    let path = path_and_query.split_once('?').map_or(path_and_query, |(p, _)| p);
    matches_without_query(route, path, headers)
}

/// `route_matches` for a path whose query string is already cut off (once per
/// request rather than once per route tried).
fn matches_without_query(route: &Route, path: &str, headers: &HeaderMap) -> bool {
    let m = &route.matcher;
    let ok = match &m.path {
        PathMatch::Prefix(p) => starts_with(path, p, m.case_sensitive),
        PathMatch::SeparatedPrefix(p) => {
            starts_with(path, p, m.case_sensitive) && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
        }
        PathMatch::Exact(p) => {
            if m.case_sensitive {
                path == p
            } else {
                path.eq_ignore_ascii_case(p)
            }
        }
        PathMatch::Regex(r) => r.is_match(path),
    };
    if !ok {
        return false;
    }
    if m.grpc && !is_grpc(headers) {
        return false;
    }
    m.headers.iter().all(|h| header_matches(h, headers))
}

fn starts_with(path: &str, prefix: &str, case_sensitive: bool) -> bool {
    if case_sensitive {
        path.starts_with(prefix)
    } else {
        path.len() >= prefix.len() && path.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    }
}

pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

fn header_matches(h: &HeaderMatcher, headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(&h.name).iter().peekable();
    let present = values.peek().is_some();
    let result = match &h.rule {
        HeaderRule::Present(want) => present == *want,
        HeaderRule::String(sm) => {
            if present {
                // As Envoy: several values of one header are matched joined by ','.
                // The common single value is matched in place, without allocating.
                let first = values.next().and_then(|v| v.to_str().ok()).unwrap_or("");
                if values.peek().is_none() {
                    sm.matches(first)
                } else {
                    let all: Vec<&str> = headers
                        .get_all(&h.name)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .collect();
                    sm.matches(&all.join(","))
                }
            } else if h.missing_as_empty {
                sm.matches("")
            } else {
                // A missing header fails the match, inverted or not (Envoy).
                return false;
            }
        }
    };
    result != h.invert
}

#[cfg(test)]
mod tests;
