//! The upstream half of one request, composed in one place and read top to
//! bottom: circuit breaker (max_requests) -> replay buffer (when retries are
//! possible) -> per attempt: endpoint choice (skipping ejected hosts and,
//! on retries, previous hosts) -> send with the per-try timeout -> the
//! outlier detector observes the result -> the retry state decides.
//! The route timeout wraps all of it (in `proxy.rs`).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::{
    client::{EndpointPool, Release},
    error::ProxyError,
    request_body::{buffer_for_replay, RequestBody},
};
use crate::{
    balance::{ClusterActive, ClusterRuntime, HostActive},
    policy::{
        circuit_breaker::RequestGuard,
        outlier::Outcome,
        retry::{AttemptOutcome, ResetPhase, RetryPolicy},
        retry_state::{RetryDecision, RetryState, DEFAULT_REPLAY_LIMIT},
    },
    telemetry::stats::ClusterStats,
};

/// A response from the upstream, with what must live as long as its body.
pub struct Forwarded {
    pub resp: Response<Incoming>,
    pub release: Release,
    pub endpoint: Arc<EndpointPool>,
    pub held: Held,
    /// Tries it took, for `include_attempt_count_in_response`.
    pub attempts: u32,
}

/// How a request goes upstream: what its route says about retries, its
/// timeout, its hash for ring hash and maglev, and the attempt count header.
#[derive(Debug, Clone, Copy, Default)]
pub struct SendOptions<'a> {
    pub retry: Option<&'a RetryPolicy>,
    pub route_timeout: Option<Duration>,
    /// When the route timeout ends, if the caller already started it (the
    /// caller's timer and the attempts' must agree to the instant, so that
    /// an attempt sees the timeout and reports it); else from now.
    pub deadline: Option<Instant>,
    pub hash: Option<u64>,
    /// `include_request_attempt_count`: `x-envoy-attempt-count` on every
    /// try (1, 2, ...). Envoy's default is not to send it.
    pub attempt_count_header: bool,
}

/// What a request holds until its response body ends: its slot of the
/// cluster's `max_requests`, and its place in the endpoint's active requests
/// (which least-request balancing reads).
pub struct Held {
    pub request_slot: RequestGuard,
    pub host_active: HostActive,
    pub cluster_active: ClusterActive,
}

pub const X_ENVOY_ATTEMPT_COUNT: &str = "x-envoy-attempt-count";

/// Sends `req` to `cluster` under its circuit breaker, outlier detection
/// and the route's retry policy. `upstream` is set to each endpoint tried
/// (the last one is what the access log shows).
pub async fn forward(
    cluster: &ClusterRuntime,
    mut req: Request<RequestBody>,
    opts: SendOptions<'_>,
    upstream: &mut Option<SocketAddr>,
) -> Result<Forwarded, ProxyError> {
    let SendOptions {
        retry,
        route_timeout,
        deadline,
        hash,
        attempt_count_header,
    } = opts;
    let cstats = &cluster.stats;
    // Envoy 1.38+ counts a max_requests refusal as an active overflow only
    // (checked against Envoy 1.40: upstream_rq_active_overflow 1, pending 0).
    let Some(request_slot) = cluster.breaker.try_request() else {
        cstats.upstream_rq_active_overflow.inc();
        return Err(ProxyError::Overflow("max_requests"));
    };
    let cluster_active = ClusterActive::new(cstats);
    let started = Instant::now();
    let deadline = deadline.or_else(|| route_timeout.map(|t| started + t));

    let Some(policy) = retry else {
        // No retry policy: one attempt, the body streamed through.
        if attempt_count_header {
            req.headers_mut().insert(X_ENVOY_ATTEMPT_COUNT, HeaderValue::from(1u32));
        }
        let (endpoint, result) = attempt(cluster, req, (None, deadline), hash, |_| true, upstream).await;
        let (endpoint, host_active) = endpoint?;
        let (resp, release) = result?;
        return Ok(Forwarded {
            resp,
            release,
            endpoint,
            held: Held {
                request_slot,
                host_active,
                cluster_active,
            },
            attempts: 1,
        });
    };

    let mut state = RetryState::new(policy, &req, deadline);
    let (parts, body) = req.into_parts();
    let body = match body {
        RequestBody::Stream(body) if state.buffers_body() => buffer_for_replay(body, DEFAULT_REPLAY_LIMIT)
            .await
            .map_err(|e| ProxyError::DownstreamProtocol(if e.is_timeout() { "timeout" } else { "request body" }))?,
        body => body,
    };
    let replayable = matches!(body, RequestBody::Replay(..));
    if !replayable && state.buffers_body() {
        // Envoy: a body past the buffer limit is sent once, never retried.
        cstats.retry_or_shadow_abandoned.inc();
        state.body_overflowed();
    }
    let per_try = policy.per_try_timeout_within(route_timeout);
    let mut next_body = Some(body);
    loop {
        let body = match next_body.take() {
            Some(b) => {
                next_body = b.replay();
                b
            }
            None => return Err(ProxyError::UpstreamReset("request body cannot be replayed".into())),
        };
        let mut req = Request::from_parts(clone_parts(&parts), body);
        if attempt_count_header {
            req.headers_mut()
                .insert(X_ENVOY_ATTEMPT_COUNT, HeaderValue::from(state.attempt_count()));
        }
        if state.attempt_count() > 1 {
            super::timeouts::refresh_expected_timeout(req.headers_mut(), route_timeout, per_try, started.elapsed());
        }
        let (endpoint, result) = attempt(cluster, req, (per_try, deadline), hash, |a| state.host_ok(a), upstream).await;
        if let Ok((ep, _)) = &endpoint {
            state.attempted_host(ep.address);
        }
        // Envoy never retries these: no host to send to (sendNoHealthyUpstreamResponse),
        // or the route timeout itself passed (onResponseTimeout ends the request).
        let route_expired = deadline.is_some_and(|d| Instant::now() >= d);
        match &result {
            Err(ProxyError::NoHealthyUpstream) => return Err(ProxyError::NoHealthyUpstream),
            Err(ProxyError::UpstreamTimeout) if route_expired => return Err(ProxyError::UpstreamTimeout),
            _ => {}
        }
        let decision = {
            let outcome = match (&endpoint, &result) {
                (Err(e), _) | (_, Err(e)) => attempt_outcome(e),
                (_, Ok((resp, _))) => AttemptOutcome::Response {
                    status: resp.status().as_u16(),
                    headers: resp.headers(),
                },
            };
            state.next(&outcome, &cluster.breaker, Instant::now())
        };
        match decision {
            RetryDecision::Retry { after } => {
                cstats.upstream_rq_retry.inc();
                cstats.upstream_rq_retry_backoff_exponential.inc();
                // The failed host is not busy with this request while it backs off.
                drop(result);
                drop(endpoint);
                tokio::time::sleep(after).await;
                state.start_retry();
            }
            RetryDecision::NoRetry(reason) => {
                if let Some(name) = reason.stat_name() {
                    count(cstats, name);
                }
                let (endpoint, host_active) = endpoint?;
                let (resp, release) = result?;
                return Ok(Forwarded {
                    resp,
                    release,
                    endpoint,
                    held: Held {
                        request_slot,
                        host_active,
                        cluster_active,
                    },
                    attempts: state.attempt_count(),
                });
            }
        }
    }
}

type AttemptResult = Result<(Response<Incoming>, Release), ProxyError>;

/// One attempt: pick an endpoint, send, report to the outlier detector.
/// `limits` are the per-try timeout and the route deadline: either ending the
/// wait for the response head is a timeout the outlier detector sees, as
/// Envoy's `onPerTryTimeout` and `onResponseTimeout` report it.
async fn attempt(
    cluster: &ClusterRuntime,
    req: Request<RequestBody>,
    limits: (Option<Duration>, Option<Instant>),

    hash: Option<u64>,
    host_ok: impl Fn(SocketAddr) -> bool,
    upstream: &mut Option<SocketAddr>,
) -> (Result<(Arc<EndpointPool>, HostActive), ProxyError>, AttemptResult) {
    let Some(endpoint) = cluster.pick_where(hash, host_ok).cloned() else {
        cluster.stats.upstream_cx_none_healthy.inc();
        return (Err(ProxyError::NoHealthyUpstream), Err(ProxyError::NoHealthyUpstream));
    };
    let host_active = HostActive::new(&endpoint.stats);
    *upstream = Some(endpoint.address);
    let cstats = &cluster.stats;
    // As Envoy's onPoolReady: a request counts in upstream_rq_total, and its
    // per-try timeout starts, once the pool has given it a connection or
    // stream; the wait for one is bounded by the route timeout alone.
    let result = match endpoint.checkout().await {
        Err(e) => Err(e),
        Ok(lease) => {
            cstats.upstream_rq_total.inc();
            endpoint.stats.rq_total.inc();
            let sent = lease.send(req);
            let (per_try, route_deadline) = limits;
            let per_try_deadline = per_try.map(|t| Instant::now() + t);
            let limit = match (per_try_deadline, route_deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            match limit {
                Some(limit) => match tokio::time::timeout_at(limit, sent).await {
                    Ok(r) => r,
                    Err(_) => {
                        if per_try_deadline == Some(limit) {
                            cstats.upstream_rq_per_try_timeout.inc();
                        }
                        endpoint.stats.rq_timeout.inc();
                        Err(ProxyError::UpstreamTimeout)
                    }
                },
                None => sent.await,
            }
        }
    };
    if let Some(o) = &cluster.outlier {
        let observed = match &result {
            Ok((resp, _)) => Some(Outcome::Http(resp.status().as_u16())),
            Err(ProxyError::ConnectFailure(_) | ProxyError::ConnectTimeout) => Some(Outcome::ConnectFailure),
            Err(ProxyError::UpstreamTimeout) => Some(Outcome::Timeout),
            Err(ProxyError::UpstreamReset(_) | ProxyError::UpstreamProtocol(_)) => Some(Outcome::Reset),
            // Breaker overflow says nothing about the host (Envoy issue 25487).
            Err(_) => None,
        };
        if let Some(outcome) = observed {
            if o.report(endpoint.address, outcome, Instant::now()).is_some() {
                tracing::info!(cluster = %cluster.name(), host = %endpoint.address, "outlier ejected");
                cluster.update_healthy();
            }
        }
    }
    match &result {
        Ok((resp, _)) if resp.status().is_server_error() => endpoint.stats.rq_error.inc(),
        Ok(_) => endpoint.stats.rq_success.inc(),
        Err(e) => {
            endpoint.stats.rq_error.inc();
            if matches!(e, ProxyError::UpstreamReset(_) | ProxyError::UpstreamProtocol(_)) {
                cstats.upstream_rq_rx_reset.inc();
            }
        }
    }
    (Ok((endpoint, host_active)), result)
}

fn attempt_outcome(e: &ProxyError) -> AttemptOutcome<'static> {
    match e {
        ProxyError::ConnectFailure(_) | ProxyError::ConnectTimeout | ProxyError::NoHealthyUpstream => {
            AttemptOutcome::ConnectFailure
        }
        ProxyError::Overflow(_) => AttemptOutcome::Overflow,
        ProxyError::UpstreamTimeout => AttemptOutcome::Timeout { request_started: true },
        _ => AttemptOutcome::Reset {
            phase: ResetPhase::BeforeResponse,
        },
    }
}

fn count(stats: &ClusterStats, name: &str) {
    match name {
        "upstream_rq_retry_success" => stats.upstream_rq_retry_success.inc(),
        "upstream_rq_retry_overflow" => stats.upstream_rq_retry_overflow.inc(),
        "upstream_rq_retry_limit_exceeded" => stats.upstream_rq_retry_limit_exceeded.inc(),
        "retry_or_shadow_abandoned" => stats.retry_or_shadow_abandoned.inc(),
        _ => {}
    }
}

/// The head of a request, for another attempt (extensions are not carried).
fn clone_parts(p: &http::request::Parts) -> http::request::Parts {
    let mut req = Request::new(());
    *req.method_mut() = p.method.clone();
    *req.uri_mut() = p.uri.clone();
    *req.version_mut() = p.version;
    *req.headers_mut() = p.headers.clone();
    req.into_parts().0
}

/// Runs `f` under the route's deadline: 504 UT when it passes first.
pub async fn with_deadline<T>(
    deadline: Option<Instant>,
    f: impl std::future::Future<Output = Result<T, ProxyError>>,
) -> Result<T, ProxyError> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, f)
            .await
            .unwrap_or(Err(ProxyError::UpstreamTimeout)),
        None => f.await,
    }
}
