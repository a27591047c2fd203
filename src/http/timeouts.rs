//! A request's timeouts, decided when its route is resolved: the deadlines
//! `policy::grpc_timeout` derives from the route and the request's
//! `grpc-timeout` (route timeout, stream max duration), the stream idle
//! timeout in force, and the timeout headers Envoy's router sends upstream.
//! Pure functions over the config and the request headers.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::route::is_grpc;
use crate::{
    config::{ForwardAction, HttpConnectionManager, Route, RouteAction},
    policy::grpc_timeout::{self, Deadlines, GrpcRequest},
};

static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
pub(crate) static X_ENVOY_EXPECTED_TIMEOUT: HeaderName = HeaderName::from_static("x-envoy-expected-rq-timeout-ms");

/// The request's deadlines on `route`, and the stream idle timeout in force.
pub fn route_limits(hcm: &HttpConnectionManager, route: &Route, headers: &HeaderMap) -> (Deadlines, Option<Duration>) {
    match &route.action {
        RouteAction::Forward(f) => {
            let request = GrpcRequest {
                is_grpc: is_grpc(headers),
                grpc_timeout: headers
                    .get(&GRPC_TIMEOUT)
                    .and_then(|v| grpc_timeout::parse(v.as_bytes())),
            };
            let d = grpc_timeout::deadlines(&f.timeouts(), hcm.max_stream_duration, request);
            // A route's idle_timeout replaces the connection manager's (0 disables it).
            (d, f.idle_timeout.or(hcm.stream_idle_timeout))
        }
        // A direct response has no route entry: the connection manager's limits apply.
        RouteAction::Direct(_) => (
            Deadlines {
                stream: hcm.max_stream_duration,
                ..Deadlines::default()
            },
            hcm.stream_idle_timeout,
        ),
    }
}

/// A retry's `x-envoy-expected-rq-timeout-ms`, where the first try carried
/// one: what is left of the route timeout `elapsed` into it, capped by the
/// per-try timeout (Envoy's `doRetry` calls `setTimeoutHeaders` again).
pub fn refresh_expected_timeout(
    headers: &mut HeaderMap,
    route: Option<Duration>,
    per_try: Option<Duration>,
    elapsed: Duration,
) {
    if !headers.contains_key(&X_ENVOY_EXPECTED_TIMEOUT) {
        return;
    }
    if let Some(t) = grpc_timeout::expected_timeout(route, per_try, elapsed) {
        let ms = u64::try_from(t.as_millis()).unwrap_or(u64::MAX);
        headers.insert(&X_ENVOY_EXPECTED_TIMEOUT, HeaderValue::from(ms));
    }
}

/// The timeout headers Envoy's router sends upstream (`setTimeoutHeaders`,
/// `refreshDurationTimeout`): the expected timeout (the per-try timeout, else
/// the route timeout) as `x-envoy-expected-rq-timeout-ms` unless
/// `suppress_envoy_headers`, and for gRPC requests `grpc-timeout`: the stream
/// limit on routes with `max_stream_duration`, the expected timeout on routes
/// with the deprecated `max_grpc_timeout`.
pub fn set_headers(headers: &mut HeaderMap, action: &ForwardAction, d: &Deadlines, suppress_envoy_headers: bool) {
    let per_try = action.retry.as_deref().and_then(|p| p.per_try_timeout_within(d.route));
    let expected = grpc_timeout::expected_timeout(d.route, per_try, Duration::ZERO);
    if let (Some(t), false) = (expected, suppress_envoy_headers) {
        let ms = u64::try_from(t.as_millis()).unwrap_or(u64::MAX);
        headers.insert(&X_ENVOY_EXPECTED_TIMEOUT, HeaderValue::from(ms));
    }
    let legacy = action.max_stream_duration.is_none() && action.max_grpc_timeout.is_some();
    let grpc_header = if legacy {
        expected.filter(|_| is_grpc(headers))
    } else {
        d.grpc_timeout_header
    };
    if let Some(v) = grpc_header.and_then(|t| HeaderValue::from_str(&grpc_timeout::encode(t)).ok()) {
        headers.insert(&GRPC_TIMEOUT, v);
    }
    if d.strip_grpc_timeout_header {
        headers.remove(&GRPC_TIMEOUT);
    }
}
