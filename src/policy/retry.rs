//! The retry policy as Envoy's router reads it (source/common/router/
//! retry_state_impl.cc, retry_policy_impl.cc): which attempt outcomes each
//! `retry_on` condition retries, header matchers, and the jittered back-off.
//! Pure functions of the policy; the words are in `retry_on`, per-request
//! bookkeeping in `retry_state`.

use std::time::Duration;

use http::HeaderMap;

pub use super::retry_on::{parse, RetryOn};

pub use super::retry_state::{
    exceeds_replay_limit, BodyOverflow, NoRetryReason, RetryDecision, RetryState, ABANDONED_STAT,
    CONSUMED_REQUEST_HEADERS, DEFAULT_REPLAY_LIMIT,
};

/// `RetryPolicy.retry_back_off`, in whole milliseconds as Envoy keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    /// Envoy: base 25 ms (runtime `upstream.base_retry_backoff_ms`), max 10x base.
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(25),
            max: Duration::from_millis(250),
        }
    }
}

impl Backoff {
    /// As `RetryPolicyImpl` builds it: durations truncated to milliseconds,
    /// anything under 1 ms raised to 1 ms, `max` defaulting to 10x `base`.
    /// Zero is refused, as the proto's `gt: 0s` rule does.
    pub fn new(base: Duration, max: Option<Duration>) -> Result<Backoff, String> {
        if base.is_zero() {
            return Err("retry_back_off.base_interval must be greater than 0".into());
        }
        if max.is_some_and(|m| m.is_zero()) {
            return Err("retry_back_off.max_interval must be greater than 0".into());
        }
        let ms = |d: Duration| Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1));
        let base = ms(base);
        let max = match max {
            Some(max) => ms(max),
            None => base.saturating_mul(10),
        };
        if max < base {
            // Envoy's own wording.
            return Err("retry_policy.max_interval must greater than or equal to the base_interval".into());
        }
        Ok(Backoff { base, max })
    }
}

/// A header condition (`retriable_headers` on responses,
/// `retriable_request_headers` on requests). Only the two simplest
/// `HeaderMatcher` forms: present, or exact value. Pseudo-headers match too
/// (`:method`, `:path`, `:authority`, `:scheme`; `:status` on responses), as
/// Envoy's header maps carry them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatcher {
    /// Lower case.
    pub name: String,
    /// `None`: the header is present (Envoy's name-only matcher).
    pub exact: Option<String>,
}

impl HeaderMatcher {
    pub fn new(name: &str, exact: Option<&str>) -> HeaderMatcher {
        HeaderMatcher {
            name: name.to_ascii_lowercase(),
            exact: exact.map(str::to_owned),
        }
    }

    /// Against a response: `:status` is the status code.
    pub fn matches_response(&self, status: u16, headers: &HeaderMap) -> bool {
        match self.name.as_str() {
            ":status" => self.matches_value(Some(status.to_string().as_bytes())),
            _ => self.matches_headers(headers),
        }
    }

    /// Against a request; `:authority` falls back to `Host` for HTTP/1.
    pub fn matches_request<B>(&self, request: &http::Request<B>) -> bool {
        let uri = request.uri();
        let host = || request.headers().get(http::header::HOST).map(|v| v.as_bytes());
        match self.name.as_str() {
            ":method" => self.matches_value(Some(request.method().as_str().as_bytes())),
            ":path" => self.matches_value(uri.path_and_query().map(|p| p.as_str().as_bytes())),
            ":authority" => self.matches_value(uri.authority().map(|a| a.as_str().as_bytes()).or_else(host)),
            ":scheme" => self.matches_value(uri.scheme_str().map(str::as_bytes)),
            _ => self.matches_headers(request.headers()),
        }
    }

    fn matches_value(&self, value: Option<&[u8]>) -> bool {
        match (value, &self.exact) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(v), Some(exact)) => v == exact.as_bytes(),
        }
    }

    /// Envoy compares an exact value with all of the header's values joined by
    /// "," (`HeaderUtility::getAllOfHeaderAsString`).
    fn matches_headers(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(self.name.as_str()).iter().peekable();
        if values.peek().is_none() {
            return false;
        }
        let Some(exact) = &self.exact else { return true };
        let mut joined = Vec::with_capacity(exact.len());
        for (i, v) in values.enumerate() {
            if i > 0 {
                joined.push(b',');
            }
            joined.extend_from_slice(v.as_bytes());
        }
        joined == exact.as_bytes()
    }
}

/// `config.route.v3.RetryPolicy` with Envoy's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub retry_on: RetryOn,
    /// Default 1, also for a route without a retry policy (Envoy's
    /// `DefaultRetryPolicy`), where headers may still turn retries on.
    pub num_retries: u32,
    /// `None`: no per-try timeout (Envoy's 0).
    pub per_try_timeout: Option<Duration>,
    pub per_try_idle_timeout: Option<Duration>,
    pub backoff: Backoff,
    pub retriable_status_codes: Vec<u16>,
    pub retriable_headers: Vec<HeaderMatcher>,
    /// When non-empty, a request matching none of these is never retried.
    pub retriable_request_headers: Vec<HeaderMatcher>,
    /// `retry_host_predicate: envoy.retry_host_predicates.previous_hosts`.
    pub previous_hosts: bool,
    /// Envoy: 0 or unset means 1.
    pub host_selection_retry_max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retry_on: RetryOn::NONE,
            num_retries: 1,
            per_try_timeout: None,
            per_try_idle_timeout: None,
            backoff: Backoff::default(),
            retriable_status_codes: Vec::new(),
            retriable_headers: Vec::new(),
            retriable_request_headers: Vec::new(),
            previous_hosts: false,
            host_selection_retry_max_attempts: 1,
        }
    }
}

impl RetryPolicy {
    /// The per-try timeout in force under a route timeout: Envoy ignores a
    /// per-try timeout that is not shorter than a non-zero global timeout
    /// (`FilterUtility::finalTimeout`).
    pub fn per_try_timeout_within(&self, route_timeout: Option<Duration>) -> Option<Duration> {
        let per_try = self.per_try_timeout.filter(|d| !d.is_zero())?;
        match route_timeout {
            Some(global) if !global.is_zero() && per_try >= global => None,
            _ => Some(per_try),
        }
    }
}

/// How an upstream attempt ended, as far as retrying is concerned.
#[derive(Debug, Clone, Copy)]
pub enum AttemptOutcome<'a> {
    /// Response headers arrived (for a trailers-only gRPC reply they carry
    /// `grpc-status`; Envoy never looks at trailers for retries).
    Response { status: u16, headers: &'a HeaderMap },
    /// The connection failed or timed out before it was up.
    ConnectFailure,
    /// The cluster's circuit breaker refused the attempt (pending or request
    /// overflow). Envoy never retries an overflow.
    Overflow,
    /// The stream was reset or its connection dropped.
    Reset { phase: ResetPhase },
    /// The upstream refused the stream (HTTP/2 REFUSED_STREAM); request bytes
    /// had gone out.
    RefusedStream,
    /// The per-try (or per-try idle) timeout fired; Envoy resets the stream
    /// and judges it as a local reset.
    Timeout { request_started: bool },
}

/// Where in the exchange a reset came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetPhase {
    /// No request byte had been sent upstream.
    BeforeRequest,
    /// The request had (partly) gone out; no response headers yet.
    BeforeResponse,
    /// Response headers were already forwarded downstream: never retried.
    AfterResponse,
}

/// Envoy's mapping from an outcome to "would retry" under `policy`
/// (`wouldRetryFromHeaders` and `wouldRetryFromReset`).
pub fn should_retry(policy: &RetryPolicy, outcome: &AttemptOutcome) -> bool {
    would_retry(policy.retry_on, policy, &[], &[], outcome)
}

/// `should_retry` with the request's own conditions, status codes and header
/// names (from `x-envoy-*` request headers) added to the policy's.
pub(super) fn would_retry(
    on: RetryOn,
    policy: &RetryPolicy,
    extra_codes: &[u16],
    extra_headers: &[HeaderMatcher],
    outcome: &AttemptOutcome,
) -> bool {
    match *outcome {
        AttemptOutcome::Response { status, headers } => {
            // A rate-limited answer from an upstream Envoy is retried only under
            // envoy-ratelimited, whatever else is set. (Older Envoy releases
            // also never retried x-envoy-overloaded; current ones do not look.)
            if headers.contains_key("x-envoy-ratelimited") {
                return on.contains(RetryOn::ENVOY_RATELIMITED);
            }
            (on.contains(RetryOn::FIVE_XX) && (500..600).contains(&status))
                || (on.contains(RetryOn::GATEWAY_ERROR) && matches!(status, 502..=504))
                || (on.contains(RetryOn::RETRIABLE_4XX) && status == 409)
                || (on.contains(RetryOn::RETRIABLE_STATUS_CODES)
                    && policy
                        .retriable_status_codes
                        .iter()
                        .chain(extra_codes)
                        .any(|&c| c == status))
                || (on.contains(RetryOn::RETRIABLE_HEADERS)
                    && policy
                        .retriable_headers
                        .iter()
                        .chain(extra_headers)
                        .any(|m| m.matches_response(status, headers)))
                || (on.intersects(RetryOn::ANY_GRPC) && grpc_condition(headers).is_some_and(|c| on.contains(c)))
        }
        AttemptOutcome::Overflow
        | AttemptOutcome::Reset {
            phase: ResetPhase::AfterResponse,
        } => false,
        // A pool failure is retried by connect-failure, else falls through to
        // the reset rules with nothing sent.
        AttemptOutcome::ConnectFailure => on.contains(RetryOn::CONNECT_FAILURE) || reset_rule(on, false, false),
        AttemptOutcome::Reset {
            phase: ResetPhase::BeforeRequest,
        } => reset_rule(on, false, false),
        AttemptOutcome::Reset {
            phase: ResetPhase::BeforeResponse,
        } => reset_rule(on, true, false),
        AttemptOutcome::RefusedStream => reset_rule(on, true, true),
        AttemptOutcome::Timeout { request_started } => reset_rule(on, request_started, false),
    }
}

/// Envoy: reset-before-request if nothing went out; reset, 5xx and
/// gateway-error take any reset ("we count an upstream reset as a 5xx");
/// refused-stream only REFUSED_STREAM.
fn reset_rule(on: RetryOn, request_started: bool, refused: bool) -> bool {
    (on.contains(RetryOn::RESET_BEFORE_REQUEST) && !request_started)
        || on.intersects(RetryOn::RESET | RetryOn::FIVE_XX | RetryOn::GATEWAY_ERROR)
        || (refused && on.contains(RetryOn::REFUSED_STREAM))
}

/// The retry condition a response's `grpc-status` header meets, if any.
fn grpc_condition(headers: &HeaderMap) -> Option<RetryOn> {
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match code? {
        1 => Some(RetryOn::GRPC_CANCELLED),
        4 => Some(RetryOn::GRPC_DEADLINE_EXCEEDED),
        8 => Some(RetryOn::GRPC_RESOURCE_EXHAUSTED),
        13 => Some(RetryOn::GRPC_INTERNAL),
        14 => Some(RetryOn::GRPC_UNAVAILABLE),
        _ => None,
    }
}

/// Exclusive upper bound of the back-off before retry number `attempt`
/// (1-based). Envoy's `JitteredExponentialBackOffStrategy`: the interval starts
/// at base and doubles while below max/2, else becomes max; so with the
/// defaults 25, 50, 100, 200, then 250 ms. (The router docs' "(2^N-1)B" is the
/// older strategy's formula.)
pub fn backoff_ceiling(policy: &RetryPolicy, attempt: u32) -> Duration {
    let base = u64::try_from(policy.backoff.base.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let max = u64::try_from(policy.backoff.max.as_millis())
        .unwrap_or(u64::MAX)
        .max(base);
    let mut interval = base;
    for _ in 1..attempt {
        if interval >= max / 2 {
            interval = max;
            break;
        }
        interval *= 2;
    }
    Duration::from_millis(interval)
}

/// The back-off before retry number `attempt` (1-based): full jitter, a
/// uniform whole number of milliseconds in `[0, backoff_ceiling)`, as Envoy's
/// `random() % interval`.
pub fn backoff(policy: &RetryPolicy, attempt: u32) -> Duration {
    let ceiling = u64::try_from(backoff_ceiling(policy, attempt).as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(fastrand::u64(0..ceiling))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn policy(retry_on: &str) -> RetryPolicy {
        RetryPolicy {
            retry_on: parse(retry_on).unwrap(),
            ..RetryPolicy::default()
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn resp(status: u16, headers: &HeaderMap) -> AttemptOutcome<'_> {
        AttemptOutcome::Response { status, headers }
    }

    fn retried(retry_on: &str, outcome: AttemptOutcome) -> bool {
        should_retry(&policy(retry_on), &outcome)
    }

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    // Envoy's RetryPolicy defaults: num_retries 1, back-off 25 ms to 250 ms,
    // host_selection_retry_max_attempts 1, nothing to retry on.
    #[test]
    fn policy_defaults() {
        let p = RetryPolicy::default();
        assert_eq!(
            (p.num_retries, p.retry_on, p.host_selection_retry_max_attempts),
            (1, RetryOn::NONE, 1)
        );
        assert_eq!((p.backoff.base, p.backoff.max), (ms(25), ms(250)));
        assert_eq!(
            (p.per_try_timeout, p.per_try_idle_timeout, p.previous_hosts),
            (None, None, false)
        );
    }

    // Envoy: 5xx is any 500-599; gateway-error only 502/503/504;
    // retriable-4xx only 409; the reset words never match a response.
    #[test]
    fn status_tables() {
        let h = HeaderMap::new();
        for s in [200, 404, 408, 409, 429, 500, 501, 502, 503, 504, 505, 599] {
            assert_eq!(retried("5xx", resp(s, &h)), (500..=599).contains(&s), "5xx {s}");
            assert_eq!(
                retried("gateway-error", resp(s, &h)),
                matches!(s, 502..=504),
                "gateway-error {s}"
            );
            assert_eq!(retried("retriable-4xx", resp(s, &h)), s == 409, "retriable-4xx {s}");
            assert!(!retried(
                "reset,connect-failure,refused-stream,reset-before-request",
                resp(s, &h)
            ));
        }
    }

    // Envoy: retriable-status-codes retries exactly the listed codes, and
    // only when the word is set.
    #[test]
    fn retriable_status_codes() {
        let p = RetryPolicy {
            retriable_status_codes: vec![418, 503],
            ..policy("retriable-status-codes")
        };
        let h = HeaderMap::new();
        assert!(should_retry(&p, &resp(418, &h)) && should_retry(&p, &resp(503, &h)));
        assert!(!should_retry(&p, &resp(500, &h)));
        let without_word = RetryPolicy {
            retry_on: RetryOn::FIVE_XX,
            ..p.clone()
        };
        assert!(!should_retry(&without_word, &resp(418, &h)));
    }

    // Envoy: retriable-headers retries a response matching any matcher; an
    // exact value is compared with all values joined by ","; :status matches.
    #[test]
    fn retriable_headers() {
        let matchers = vec![
            HeaderMatcher::new("X-Retry-Me", None),
            HeaderMatcher::new("x-state", Some("a,b")),
            HeaderMatcher::new(":status", Some("202")),
        ];
        let p = RetryPolicy {
            retriable_headers: matchers,
            ..policy("retriable-headers")
        };
        let retried = |status, h: &HeaderMap| should_retry(&p, &resp(status, h));
        assert!(retried(200, &headers(&[("x-retry-me", "")])));
        assert!(retried(200, &headers(&[("x-state", "a"), ("x-state", "b")])));
        assert!(!retried(200, &headers(&[("x-state", "a")])));
        assert!(!retried(200, &HeaderMap::new()));
        assert!(retried(202, &HeaderMap::new()));
    }

    // Envoy's request header maps carry pseudo-headers: :method, :path,
    // :authority (Host in HTTP/1), :scheme.
    #[test]
    fn request_matchers_see_pseudo_headers() {
        let req = http::Request::builder()
            .method("PUT")
            .uri("/a?b=1")
            .header("host", "svc:80")
            .header("x-idempotent", "yes")
            .body(())
            .unwrap();
        let m = |name: &str, exact: Option<&str>| HeaderMatcher::new(name, exact).matches_request(&req);
        assert!(m(":method", Some("PUT")) && !m(":method", Some("GET")));
        assert!(m(":path", Some("/a?b=1")));
        assert!(m(":authority", Some("svc:80")));
        assert!(!m(":scheme", None));
        assert!(m("x-idempotent", None) && !m("x-other", None));
    }

    // Envoy reads grpc-status from response headers (trailers-only replies):
    // cancelled=1, deadline-exceeded=4, resource-exhausted=8, internal=13,
    // unavailable=14; each word retries only its own code.
    #[test]
    fn grpc_statuses() {
        let table = [
            ("cancelled", "1"),
            ("deadline-exceeded", "4"),
            ("resource-exhausted", "8"),
            ("internal", "13"),
            ("unavailable", "14"),
        ];
        for (word, code) in table {
            for (_, other) in table {
                let h = headers(&[("grpc-status", other)]);
                assert_eq!(
                    retried(word, resp(200, &h)),
                    code == other,
                    "{word} vs grpc-status {other}"
                );
            }
            for other in ["0", "2", "x", ""] {
                assert!(!retried(word, resp(200, &headers(&[("grpc-status", other)]))));
            }
            assert!(!retried(word, resp(200, &HeaderMap::new())));
        }
    }

    // Envoy: x-envoy-ratelimited is retried only under envoy-ratelimited,
    // even when 5xx would match; x-envoy-overloaded is not special any more.
    #[test]
    fn envoy_ratelimited_and_overloaded() {
        let limited = headers(&[("x-envoy-ratelimited", "true")]);
        assert!(!retried("5xx,gateway-error", resp(503, &limited)));
        assert!(retried("envoy-ratelimited", resp(503, &limited)));
        assert!(retried("envoy-ratelimited", resp(200, &limited)));
        assert!(retried("5xx", resp(503, &headers(&[("x-envoy-overloaded", "true")]))));
    }

    // Envoy's wouldRetryFromReset: a connect failure is retried by
    // connect-failure, and like any reset before the request went out by
    // reset-before-request, reset, 5xx and gateway-error.
    #[test]
    fn connect_failure_table() {
        for word in [
            "connect-failure",
            "reset-before-request",
            "reset",
            "5xx",
            "gateway-error",
        ] {
            assert!(retried(word, AttemptOutcome::ConnectFailure), "{word}");
        }
        for word in [
            "refused-stream",
            "retriable-4xx",
            "retriable-status-codes",
            "unavailable",
            "",
        ] {
            assert!(!retried(word, AttemptOutcome::ConnectFailure), "{word}");
        }
    }

    // Envoy: resets before the response are retried by reset, 5xx and
    // gateway-error; reset-before-request only if no byte went upstream;
    // refused-stream only REFUSED_STREAM; after the response, never.
    #[test]
    fn reset_table() {
        let reset = |phase| AttemptOutcome::Reset { phase };
        let (before_req, before_resp) = (reset(ResetPhase::BeforeRequest), reset(ResetPhase::BeforeResponse));
        let refused = AttemptOutcome::RefusedStream;
        for word in ["reset", "5xx", "gateway-error"] {
            for o in [before_req, before_resp, refused] {
                assert!(retried(word, o), "{word} {o:?}");
            }
            assert!(!retried(word, reset(ResetPhase::AfterResponse)), "{word}");
        }
        assert!(retried("reset-before-request", before_req));
        assert!(!retried("reset-before-request", before_resp) && !retried("reset-before-request", refused));
        assert!(retried("refused-stream", refused) && !retried("refused-stream", before_resp));
        assert!(!retried("connect-failure", before_req));
    }

    // Envoy turns a per-try timeout into a local reset: retried by 5xx,
    // gateway-error and reset, by reset-before-request only if nothing was
    // sent, never by connect-failure.
    #[test]
    fn per_try_timeout_table() {
        let sent = AttemptOutcome::Timeout { request_started: true };
        for word in ["5xx", "gateway-error", "reset"] {
            assert!(retried(word, sent), "{word}");
        }
        assert!(!retried("reset-before-request", sent));
        assert!(retried(
            "reset-before-request",
            AttemptOutcome::Timeout { request_started: false }
        ));
        assert!(!retried("connect-failure,retriable-4xx,refused-stream", sent));
    }

    // Envoy never retries a circuit-breaker overflow.
    #[test]
    fn overflow_is_never_retried() {
        let all = "5xx,gateway-error,reset,reset-before-request,connect-failure,refused-stream";
        assert!(!retried(all, AttemptOutcome::Overflow));
    }

    // Envoy's JitteredExponentialBackOffStrategy: 25, 50, 100, 200, then the
    // 250 ms cap; 100/1000 goes 100, 200, 400, 800, 1000.
    #[test]
    fn backoff_ceilings() {
        let p = RetryPolicy::default();
        let got: Vec<u128> = (1..=7).map(|n| backoff_ceiling(&p, n).as_millis()).collect();
        assert_eq!(got, [25, 50, 100, 200, 250, 250, 250]);
        let p = RetryPolicy {
            backoff: Backoff::new(ms(100), Some(ms(1000))).unwrap(),
            ..p
        };
        let got: Vec<u128> = (1..=6).map(|n| backoff_ceiling(&p, n).as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(
            (backoff_ceiling(&p, 0), backoff_ceiling(&p, u32::MAX)),
            (ms(100), ms(1000))
        );
    }

    // Envoy: full jitter, random() % interval: never above the cap, and the
    // draws span [0, cap).
    #[test]
    fn backoff_full_jitter_bounds() {
        fastrand::seed(7);
        let p = RetryPolicy::default();
        for attempt in 1..=8 {
            let cap = backoff_ceiling(&p, attempt);
            let draws: Vec<Duration> = (0..4000).map(|_| backoff(&p, attempt)).collect();
            assert!(draws.iter().all(|d| *d < cap && *d <= p.backoff.max));
            let (min, max) = (draws.iter().min().unwrap(), draws.iter().max().unwrap());
            assert_eq!((*min, *max + ms(1)), (Duration::ZERO, cap), "attempt {attempt}");
        }
        // base == max: the interval never grows.
        let flat = RetryPolicy {
            backoff: Backoff::new(ms(5), Some(ms(5))).unwrap(),
            ..p
        };
        assert!((1..50).all(|n| backoff(&flat, n) < ms(5)));
    }

    // Envoy's RetryPolicyImpl: milliseconds, raised to at least 1 ms, max
    // defaulting to 10x base and never below base; 0 fails proto validation.
    #[test]
    fn backoff_config() {
        let us = Duration::from_micros;
        assert_eq!(
            Backoff::new(us(300), None),
            Ok(Backoff {
                base: ms(1),
                max: ms(10)
            })
        );
        assert_eq!(
            Backoff::new(us(2500), Some(us(2900))),
            Ok(Backoff {
                base: ms(2),
                max: ms(2)
            })
        );
        assert_eq!(
            Backoff::new(ms(100), Some(ms(50))),
            Err("retry_policy.max_interval must greater than or equal to the base_interval".to_string())
        );
        assert!(Backoff::new(Duration::ZERO, None)
            .unwrap_err()
            .contains("base_interval must be greater than 0"));
        assert!(Backoff::new(ms(1), Some(Duration::ZERO)).is_err());
    }

    // Envoy: a per-try timeout not shorter than a non-zero route timeout is
    // dropped.
    #[test]
    fn per_try_timeout_within_route_timeout() {
        let p = RetryPolicy {
            per_try_timeout: Some(ms(2000)),
            ..RetryPolicy::default()
        };
        assert_eq!(p.per_try_timeout_within(Some(ms(15000))), Some(ms(2000)));
        assert_eq!(p.per_try_timeout_within(Some(ms(2000))), None);
        assert_eq!(p.per_try_timeout_within(None), Some(ms(2000)));
        assert_eq!(p.per_try_timeout_within(Some(Duration::ZERO)), Some(ms(2000)));
        assert_eq!(RetryPolicy::default().per_try_timeout_within(None), None);
    }
}
