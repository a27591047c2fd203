//! Route configuration: virtual hosts, routes, matchers and actions, as Envoy's
//! `RouteConfiguration` means them. Matching itself lives in `http::route`.

use std::time::Duration;

use http::{HeaderName, StatusCode};
use regex::Regex;
use serde::Serialize;

use super::{ser_name, ser_regex, ClusterTarget, DirectResponse, HeaderOps, HttpFilter};
use crate::policy::grpc_timeout::{MaxStreamDuration, RouteTimeouts};

#[derive(Debug, Clone, Serialize)]
pub struct RouteConfig {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
    pub headers: HeaderOps,
    /// `ignore_port_in_host_matching`.
    pub ignore_port_in_host_matching: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct VirtualHost {
    pub name: String,
    /// Lower-cased domain patterns: exact, `*.suffix`/`*suffix`, `prefix*` or `*`.
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
    pub headers: HeaderOps,
    /// `typed_per_filter_config`: replaces the listener-level config of the filter of that name
    /// for the routes that set none of their own.
    pub filter_overrides: Vec<HttpFilter>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Route {
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: RouteMatch,
    pub action: RouteAction,
    pub headers: HeaderOps,
    /// `typed_per_filter_config`: replaces the config of the filter of that name (or the virtual
    /// host's replacement) for this route, as Envoy's most specific per-filter config does.
    pub filter_overrides: Vec<HttpFilter>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteMatch {
    pub path: PathMatch,
    /// Envoy's `case_sensitive`, default true; applies to prefix and path.
    pub case_sensitive: bool,
    pub headers: Vec<HeaderMatcher>,
    /// Envoy's `grpc: {}`: only requests with a gRPC content-type match.
    pub grpc: bool,
}

#[derive(Debug, Clone, Serialize)]
pub enum PathMatch {
    Prefix(String),
    /// `path_separated_prefix`: the prefix must end at a `/` or at the end.
    SeparatedPrefix(String),
    Exact(String),
    Regex(#[serde(serialize_with = "ser_regex")] Regex),
}

#[derive(Debug, Clone, Serialize)]
pub struct HeaderMatcher {
    #[serde(serialize_with = "ser_name")]
    pub name: HeaderName,
    pub rule: HeaderRule,
    pub invert: bool,
    /// `treat_missing_header_as_empty`.
    pub missing_as_empty: bool,
}

#[derive(Debug, Clone, Serialize)]
pub enum HeaderRule {
    /// `present_match`: matches when presence equals the flag.
    Present(bool),
    String(StringMatch),
}

#[derive(Debug, Clone, Serialize)]
pub struct StringMatch {
    pub kind: StringMatchKind,
    pub ignore_case: bool,
}

#[derive(Debug, Clone, Serialize)]
pub enum StringMatchKind {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(#[serde(serialize_with = "ser_regex")] Regex),
}

impl StringMatch {
    pub fn matches(&self, value: &str) -> bool {
        let ic = self.ignore_case;
        match &self.kind {
            StringMatchKind::Exact(s) => {
                if ic {
                    value.eq_ignore_ascii_case(s)
                } else {
                    value == s
                }
            }
            StringMatchKind::Prefix(s) => {
                value.len() >= s.len()
                    && (if ic {
                        value.as_bytes()[..s.len()].eq_ignore_ascii_case(s.as_bytes())
                    } else {
                        value.as_bytes().starts_with(s.as_bytes())
                    })
            }
            StringMatchKind::Suffix(s) => {
                value.len() >= s.len()
                    && (if ic {
                        value.as_bytes()[value.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
                    } else {
                        value.as_bytes().ends_with(s.as_bytes())
                    })
            }
            StringMatchKind::Contains(s) => {
                if ic {
                    value.to_ascii_lowercase().contains(&s.to_ascii_lowercase())
                } else {
                    value.contains(s.as_str())
                }
            }
            // Envoy's safe_regex matches the whole value; the regex is compiled
            // anchored by translate, and ignore_case does not apply to it.
            StringMatchKind::Regex(r) => r.is_match(value),
        }
    }
}

// Routes are built once per config and only borrowed per request; a box
// would save memory on direct-response routes at the cost of a pointer chase
// on every forwarded request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize)]
pub enum RouteAction {
    Forward(ForwardAction),
    Direct(DirectResponse),
}

#[derive(Debug, Clone, Serialize)]
pub struct ForwardAction {
    pub target: ClusterTarget,
    pub prefix_rewrite: Option<String>,
    pub host_rewrite: Option<String>,
    /// None when the route disables the timeout (`timeout: 0s`); default 15 s.
    pub timeout: Option<Duration>,
    #[serde(serialize_with = "ser_status_code")]
    pub cluster_not_found_status: StatusCode,
    /// `retry_policy` of the route, else of its virtual host.
    #[serde(serialize_with = "super::ser_debug")]
    pub retry: Option<std::sync::Arc<super::RetryPolicy>>,
    /// `max_stream_duration`: setting it switches the route to Envoy's "new
    /// timeouts" (`timeout` and `max_grpc_timeout` no longer apply).
    #[serde(serialize_with = "super::ser_debug")]
    pub max_stream_duration: Option<MaxStreamDuration>,
    /// The deprecated `max_grpc_timeout` and `grpc_timeout_offset`.
    pub max_grpc_timeout: Option<Duration>,
    pub grpc_timeout_offset: Option<Duration>,
    /// `idle_timeout`: replaces the connection manager's `stream_idle_timeout`
    /// for this route; `Some(0)` disables it.
    pub idle_timeout: Option<Duration>,
    /// `request_mirror_policies` of the route, else of its virtual host, else of
    /// the route configuration (the most specific non-empty list, as Envoy).
    pub mirrors: Vec<super::MirrorPolicy>,
    /// `hash_policy`: what ring hash and maglev clusters hash a request by.
    #[serde(serialize_with = "super::ser_debug")]
    pub hash_policy: Vec<super::HashPolicy>,
    /// The virtual host's `include_request_attempt_count` and
    /// `include_attempt_count_in_response`.
    pub attempt_count: AttemptCount,
}

/// Where `x-envoy-attempt-count` goes; Envoy's default is nowhere.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AttemptCount {
    /// On every upstream request: 1 for the first try, +1 per retry.
    pub request: bool,
    /// On the downstream response: how many tries it took.
    pub response: bool,
}

impl ForwardAction {
    /// The timeout fields `policy::grpc_timeout` derives a request's deadlines from.
    pub fn timeouts(&self) -> RouteTimeouts {
        RouteTimeouts {
            timeout: self.timeout,
            max_stream_duration: self.max_stream_duration,
            max_grpc_timeout: self.max_grpc_timeout,
            grpc_timeout_offset: self.grpc_timeout_offset,
        }
    }
}

fn ser_status_code<S: serde::Serializer>(v: &StatusCode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u16(v.as_u16())
}
