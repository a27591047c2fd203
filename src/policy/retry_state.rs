//! One request's retry bookkeeping, as Envoy's `RetryStateImpl` and router
//! keep it (source/common/router/retry_state_impl.cc, router.cc): retries
//! left, the retry circuit-breaker slot, back-off steps, hosts tried for
//! `previous_hosts`, `x-envoy-attempt-count`, the replay-buffer cut-off, and
//! the stats each decision counts. Decides only: the caller sleeps and re-sends.

use std::{net::SocketAddr, time::Duration};

use http::{HeaderName, Request};
use tokio::time::Instant;

use super::{
    circuit_breaker::{Breaker, RetryGuard},
    retry::{backoff, would_retry, AttemptOutcome, HeaderMatcher, ResetPhase, RetryPolicy},
    retry_on::{tokens, RetryOn},
};

/// How much request body is kept for replay. Past it, retries are abandoned.
/// NOTE: Envoy's own default is the listener's `per_connection_buffer_limit_bytes`
/// (1 MiB unless set), overridable per route; this constant is remora's choice.
pub const DEFAULT_REPLAY_LIMIT: usize = 65536;

/// Request headers Envoy's router reads here and then strips before the
/// request goes upstream (`RetryStateImpl::create`).
pub const CONSUMED_REQUEST_HEADERS: [&str; 7] = [
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-max-retries",
    "x-envoy-hedge-on-per-try-timeout",
    "x-envoy-retriable-header-names",
    "x-envoy-retriable-status-codes",
    "x-envoy-upstream-rq-per-try-timeout-ms",
];

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Wait `after`, call `RetryState::start_retry`, and send again.
    Retry { after: Duration },
    /// Answer with this attempt's outcome (see the reason for exceptions).
    NoRetry(NoRetryReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRetryReason {
    /// The outcome meets no retry condition (or a success).
    NotRetriable,
    /// As NotRetriable, but the attempt was a retry: Envoy counts that as a
    /// retry success, whatever the status.
    RetrySucceeded,
    /// `num_retries` (or `x-envoy-max-retries`) used up. Flag URX.
    RetriesExhausted,
    /// The retry circuit breaker or budget is full. Flag UO.
    Overflow,
    /// The request body outgrew the replay buffer; retries are off for good.
    BodyTooLarge,
    /// The route deadline has already passed: answer as the route timeout
    /// does (504, flag UT). A back-off that merely ends after the deadline is
    /// still a Retry, as in Envoy, where the route timer then fires first.
    DeadlinePassed,
}

impl NoRetryReason {
    /// The cluster counter Envoy bumps for this reason, if any.
    pub fn stat_name(&self) -> Option<&'static str> {
        match self {
            NoRetryReason::RetrySucceeded => Some("upstream_rq_retry_success"),
            NoRetryReason::RetriesExhausted => Some("upstream_rq_retry_limit_exceeded"),
            NoRetryReason::Overflow => Some("upstream_rq_retry_overflow"),
            NoRetryReason::NotRetriable | NoRetryReason::BodyTooLarge | NoRetryReason::DeadlinePassed => None,
        }
    }

    /// The `%RESPONSE_FLAGS%` Envoy sets when this reason ends retrying.
    pub fn response_flag(&self) -> Option<&'static str> {
        match self {
            NoRetryReason::RetriesExhausted => Some("URX"),
            NoRetryReason::Overflow => Some("UO"),
            _ => None,
        }
    }
}

impl RetryDecision {
    /// Every cluster counter Envoy bumps for this decision.
    pub fn stat_names(&self) -> &'static [&'static str] {
        match self {
            RetryDecision::Retry { .. } => &["upstream_rq_retry", "upstream_rq_retry_backoff_exponential"],
            RetryDecision::NoRetry(NoRetryReason::RetrySucceeded) => &["upstream_rq_retry_success"],
            RetryDecision::NoRetry(NoRetryReason::RetriesExhausted) => &["upstream_rq_retry_limit_exceeded"],
            RetryDecision::NoRetry(NoRetryReason::Overflow) => &["upstream_rq_retry_overflow"],
            RetryDecision::NoRetry(_) => &[],
        }
    }
}

/// What the caller does when the body outgrows the replay buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyOverflow {
    /// An attempt is in flight: keep streaming to it, without retries.
    KeepAttempt,
    /// The request is waiting out a back-off: answer 507 "exceeded request
    /// buffer limit while retrying upstream" (details
    /// `request_payload_exceeded_retry_buffer_limit`).
    InsufficientStorage,
}

/// Envoy's `retry_or_shadow_abandoned` cluster counter, bumped by the caller
/// whenever `body_overflowed` is called.
pub const ABANDONED_STAT: &str = "retry_or_shadow_abandoned";

/// One request's retry bookkeeping, from its first attempt to its answer.
/// Dropping it releases any retry slot it holds, as Envoy's destructor does.
#[derive(Debug)]
pub struct RetryState<'a> {
    policy: &'a RetryPolicy,
    retry_on: RetryOn,
    extra_codes: Vec<u16>,
    extra_headers: Vec<HeaderMatcher>,
    retries_remaining: u32,
    retries_granted: u32,
    attempt_count: u32,
    attempted_hosts: Vec<SocketAddr>,
    retry_slot: Option<RetryGuard>,
    in_backoff: bool,
    abandoned: bool,
    deadline: Option<Instant>,
}

impl<'a> RetryState<'a> {
    /// Starts a request's state. The request's headers are read as Envoy's
    /// `RetryStateImpl` reads them (strip `CONSUMED_REQUEST_HEADERS` from
    /// requests that may not set them, and from every upstream request):
    /// `x-envoy-retry-on`/`-grpc-on` add conditions, `retriable_request_headers`
    /// can then switch retries off, `x-envoy-max-retries` replaces
    /// `num_retries` if any condition is left, and the status-code and
    /// header-name lists add to the policy's. `deadline` is the route timeout's.
    pub fn new<B>(policy: &'a RetryPolicy, request: &Request<B>, deadline: Option<Instant>) -> Self {
        // Static names: a &str lookup would parse and hash the name on every request.
        static RETRY_ON: HeaderName = HeaderName::from_static("x-envoy-retry-on");
        static RETRY_GRPC_ON: HeaderName = HeaderName::from_static("x-envoy-retry-grpc-on");
        static MAX_RETRIES: HeaderName = HeaderName::from_static("x-envoy-max-retries");
        static RETRIABLE_CODES: HeaderName = HeaderName::from_static("x-envoy-retriable-status-codes");
        static RETRIABLE_NAMES: HeaderName = HeaderName::from_static("x-envoy-retriable-header-names");
        let header = |name: &HeaderName| request.headers().get(name).and_then(|v| v.to_str().ok());
        let mut retry_on = policy.retry_on;
        if let Some(v) = header(&RETRY_ON) {
            retry_on = retry_on | RetryOn::from_request_header(v, false);
        }
        if let Some(v) = header(&RETRY_GRPC_ON) {
            retry_on = retry_on | RetryOn::from_request_header(v, true);
        }
        if !policy.retriable_request_headers.is_empty()
            && !policy
                .retriable_request_headers
                .iter()
                .any(|m| m.matches_request(request))
        {
            retry_on = RetryOn::NONE;
        }
        let mut retries_remaining = policy.num_retries;
        if let Some(n) = header(&MAX_RETRIES).filter(|_| !retry_on.is_empty()) {
            if let Ok(n) = n.trim().parse::<u64>() {
                retries_remaining = u32::try_from(n).unwrap_or(u32::MAX);
            }
        }
        let extra_codes = header(&RETRIABLE_CODES)
            .map(|v| tokens(v).filter_map(|c| c.parse().ok()).collect())
            .unwrap_or_default();
        let extra_headers = header(&RETRIABLE_NAMES)
            .map(|v| tokens(v).map(|name| HeaderMatcher::new(name, None)).collect())
            .unwrap_or_default();
        RetryState {
            policy,
            retry_on,
            extra_codes,
            extra_headers,
            retries_remaining,
            retries_granted: 0,
            attempt_count: 1,
            attempted_hosts: Vec::new(),
            retry_slot: None,
            in_backoff: false,
            abandoned: false,
            deadline,
        }
    }

    /// The conditions in force for this request.
    pub fn retry_on(&self) -> RetryOn {
        self.retry_on
    }

    /// `x-envoy-attempt-count`: 1 for the first attempt, +1 per retry started.
    pub fn attempt_count(&self) -> u32 {
        self.attempt_count
    }

    /// Whether the caller must keep a replay copy of the request body
    /// (Envoy buffers only while a retry is possible).
    pub fn buffers_body(&self) -> bool {
        !self.retry_on.is_empty() && !self.abandoned
    }

    /// Records the host an attempt went to (Envoy's `onHostAttempted`).
    pub fn attempted_host(&mut self, addr: SocketAddr) {
        if !self.attempted_hosts.contains(&addr) {
            self.attempted_hosts.push(addr);
        }
    }

    /// Whether the load balancer may use `addr` for this attempt: with
    /// `previous_hosts`, a retry avoids hosts already tried. Envoy consults the
    /// predicate only on retries.
    pub fn host_ok(&self, addr: SocketAddr) -> bool {
        !(self.policy.previous_hosts && self.attempt_count > 1 && self.attempted_hosts.contains(&addr))
    }

    /// Picks a host as Envoy's `LoadBalancerBase::chooseHost` does: on a retry,
    /// up to `host_selection_retry_max_attempts + 1` picks, the first one
    /// `host_ok` accepts, else the last one picked; `None` as soon as a pick
    /// finds nothing.
    pub fn select_host(&self, mut pick: impl FnMut() -> Option<SocketAddr>) -> Option<SocketAddr> {
        let picks = if self.attempt_count > 1 {
            self.policy.host_selection_retry_max_attempts.max(1).saturating_add(1)
        } else {
            1
        };
        let mut last = None;
        for _ in 0..picks {
            let host = pick()?;
            if self.host_ok(host) {
                return Some(host);
            }
            last = Some(host);
        }
        last
    }

    /// Judges an attempt's outcome (Envoy's `shouldRetry`). A Retry holds a
    /// slot of `breaker`'s retry limit until the next call or the drop.
    pub fn next(&mut self, outcome: &AttemptOutcome, breaker: &Breaker, now: Instant) -> RetryDecision {
        if self.abandoned {
            return RetryDecision::NoRetry(NoRetryReason::BodyTooLarge);
        }
        // Envoy's maybeRetryReset gives up before shouldRetry once the
        // response has started: no retry, no stat.
        if let AttemptOutcome::Reset {
            phase: ResetPhase::AfterResponse,
        } = outcome
        {
            self.retry_slot = None;
            return RetryDecision::NoRetry(NoRetryReason::NotRetriable);
        }
        let would = would_retry(
            self.retry_on,
            self.policy,
            &self.extra_codes,
            &self.extra_headers,
            outcome,
        );
        // A slot still held means this attempt was a retry; it is released now.
        let was_retry = self.retry_slot.take().is_some();
        if !would {
            let reason = if was_retry {
                NoRetryReason::RetrySucceeded
            } else {
                NoRetryReason::NotRetriable
            };
            return RetryDecision::NoRetry(reason);
        }
        if self.deadline.is_some_and(|d| now >= d) {
            return RetryDecision::NoRetry(NoRetryReason::DeadlinePassed);
        }
        if self.retries_remaining == 0 {
            return RetryDecision::NoRetry(NoRetryReason::RetriesExhausted);
        }
        // Envoy spends the retry before asking the breaker, so an overflow
        // uses one up too.
        self.retries_remaining -= 1;
        let Some(slot) = breaker.try_retry() else {
            return RetryDecision::NoRetry(NoRetryReason::Overflow);
        };
        self.retry_slot = Some(slot);
        self.retries_granted += 1;
        self.in_backoff = true;
        RetryDecision::Retry {
            after: backoff(self.policy, self.retries_granted),
        }
    }

    /// The back-off is over and the retry begins; returns the new attempt count.
    pub fn start_retry(&mut self) -> u32 {
        self.in_backoff = false;
        self.attempt_count += 1;
        self.attempt_count
    }

    /// The request body outgrew the replay buffer (Envoy: buffered + incoming >
    /// limit). Retries end for good and the retry slot is released.
    pub fn body_overflowed(&mut self) -> BodyOverflow {
        self.abandoned = true;
        self.retry_slot = None;
        if std::mem::take(&mut self.in_backoff) {
            BodyOverflow::InsufficientStorage
        } else {
            BodyOverflow::KeepAttempt
        }
    }
}

/// Whether adding `incoming` bytes to `buffered` ones outgrows `limit`
/// (Envoy's check in `Filter::decodeData`).
pub fn exceeds_replay_limit(buffered: usize, incoming: usize, limit: usize) -> bool {
    buffered.saturating_add(incoming) > limit
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{
        circuit_breaker::{RetryBudget, Thresholds},
        retry::parse,
    };
    use http::{HeaderMap, HeaderValue};

    fn policy(retry_on: &str, num_retries: u32) -> RetryPolicy {
        RetryPolicy {
            retry_on: parse(retry_on).unwrap(),
            num_retries,
            ..RetryPolicy::default()
        }
    }

    fn req() -> Request<()> {
        Request::new(())
    }

    fn breaker() -> Breaker {
        Breaker::new(Thresholds::default())
    }

    fn next(state: &mut RetryState, outcome: &AttemptOutcome, breaker: &Breaker) -> RetryDecision {
        state.next(outcome, breaker, Instant::now())
    }

    const RESET: AttemptOutcome<'static> = AttemptOutcome::Reset {
        phase: ResetPhase::BeforeResponse,
    };
    const EXHAUSTED: RetryDecision = RetryDecision::NoRetry(NoRetryReason::RetriesExhausted);
    const OVERFLOW: RetryDecision = RetryDecision::NoRetry(NoRetryReason::Overflow);

    fn resp(status: u16, headers: &HeaderMap) -> AttemptOutcome<'_> {
        AttemptOutcome::Response { status, headers }
    }

    fn is_retry(d: RetryDecision) -> bool {
        matches!(d, RetryDecision::Retry { .. })
    }

    // Envoy: num_retries defaults to 1, so the second failure ends with
    // upstream_rq_retry_limit_exceeded and flag URX; the attempt count goes
    // 1 -> 2 only when the retry starts.
    #[tokio::test(start_paused = true)]
    async fn default_allows_one_retry() {
        let (p, b) = (
            RetryPolicy {
                retry_on: RetryOn::FIVE_XX,
                ..RetryPolicy::default()
            },
            breaker(),
        );
        let mut state = RetryState::new(&p, &req(), None);
        assert_eq!(state.attempt_count(), 1);
        let first = next(&mut state, &RESET, &b);
        let RetryDecision::Retry { after } = first else {
            panic!("{first:?}")
        };
        assert!(after < Duration::from_millis(25));
        assert_eq!(
            first.stat_names(),
            ["upstream_rq_retry", "upstream_rq_retry_backoff_exponential"]
        );
        assert_eq!(state.attempt_count(), 1);
        tokio::time::sleep(after).await;
        assert_eq!(state.start_retry(), 2);
        let second = next(&mut state, &RESET, &b);
        assert_eq!(second, EXHAUSTED);
        assert_eq!(second.stat_names(), ["upstream_rq_retry_limit_exceeded"]);
        assert_eq!(NoRetryReason::RetriesExhausted.response_flag(), Some("URX"));
        assert_eq!(state.attempt_count(), 2);
    }

    // Envoy counts upstream_rq_retry_success when an attempt that was a retry
    // comes back not retriable (any status); a first attempt counts nothing.
    #[tokio::test(start_paused = true)]
    async fn retry_success_is_counted_only_after_a_retry() {
        let (p, b, h) = (policy("5xx", 3), breaker(), HeaderMap::new());
        let mut first_try = RetryState::new(&p, &req(), None);
        let d = next(&mut first_try, &resp(200, &h), &b);
        assert_eq!(d, RetryDecision::NoRetry(NoRetryReason::NotRetriable));
        assert!(d.stat_names().is_empty());

        let mut retried = RetryState::new(&p, &req(), None);
        assert!(is_retry(next(&mut retried, &RESET, &b)));
        assert_eq!(b.retries(), 1);
        retried.start_retry();
        let d = next(&mut retried, &resp(404, &h), &b);
        assert_eq!(d, RetryDecision::NoRetry(NoRetryReason::RetrySucceeded));
        assert_eq!(d.stat_names(), ["upstream_rq_retry_success"]);
        assert_eq!(b.retries(), 0, "the retry slot is released once judged");
    }

    // Envoy holds a retry resource from scheduling until the retried attempt
    // is judged, and releases it when the request goes away (the state moves
    // with the request's future, so it must be Send).
    #[tokio::test(start_paused = true)]
    async fn retry_slot_released_on_drop() {
        fn assert_send<T: Send>() {}
        assert_send::<RetryState<'static>>();
        let (p, b) = (policy("reset", 5), breaker());
        let mut state = RetryState::new(&p, &req(), None);
        assert!(is_retry(next(&mut state, &RESET, &b)));
        assert_eq!(b.retries(), 1);
        state.start_retry();
        assert!(is_retry(next(&mut state, &RESET, &b)));
        assert_eq!(b.retries(), 1, "one slot per request at a time");
        drop(state);
        assert_eq!(b.retries(), 0);
    }

    // Envoy's default max_retries of 3: with three requests retrying, a
    // fourth request's retry overflows (upstream_rq_retry_overflow, flag UO),
    // and the overflow used up one of its retries.
    #[tokio::test(start_paused = true)]
    async fn fourth_concurrent_retry_overflows() {
        let (p, b, r) = (policy("5xx", 2), breaker(), req());
        let mut states: Vec<_> = (0..4).map(|_| RetryState::new(&p, &r, None)).collect();
        let decisions: Vec<_> = states.iter_mut().map(|s| next(s, &RESET, &b)).collect();
        assert!(decisions[..3].iter().all(|d| is_retry(*d)));
        assert_eq!(decisions[3], OVERFLOW);
        assert_eq!(decisions[3].stat_names(), ["upstream_rq_retry_overflow"]);
        assert_eq!(NoRetryReason::Overflow.response_flag(), Some("UO"));
        let mut fourth = states.pop().unwrap();
        states.pop();
        assert!(is_retry(next(&mut fourth, &RESET, &b)), "a slot is free again");
        fourth.start_retry();
        assert_eq!(next(&mut fourth, &RESET, &b), EXHAUSTED);
    }

    // Envoy: with a retry budget the limit is max(percent of active + pending,
    // min_retry_concurrency); a full budget is an overflow.
    #[tokio::test(start_paused = true)]
    async fn budget_exhausted_is_overflow() {
        let p = policy("5xx", 1);
        let budget = RetryBudget {
            budget_percent: Some(50.0),
            min_retry_concurrency: Some(1),
        };
        let b = Breaker::new(Thresholds {
            retry_budget: Some(budget),
            ..Thresholds::default()
        });
        let r = req();
        let (mut a, mut c) = (RetryState::new(&p, &r, None), RetryState::new(&p, &r, None));
        assert!(is_retry(next(&mut a, &RESET, &b)));
        assert_eq!(next(&mut c, &RESET, &b), OVERFLOW);
        // Four requests in flight raise the budget to 2.
        let _active: Vec<_> = (0..4).map(|_| b.try_request()).collect();
        let mut d = RetryState::new(&p, &r, None);
        assert!(is_retry(next(&mut d, &RESET, &b)));
    }

    // Envoy abandons retries once the body outgrows the buffer (counter
    // retry_or_shadow_abandoned): during a back-off it answers 507, with an
    // attempt in flight it lets that attempt finish without retries.
    #[tokio::test(start_paused = true)]
    async fn body_too_large_ends_retries() {
        let (p, b) = (policy("5xx", 3), breaker());
        let mut in_flight = RetryState::new(&p, &req(), None);
        assert!(in_flight.buffers_body());
        assert_eq!(in_flight.body_overflowed(), BodyOverflow::KeepAttempt);
        assert!(!in_flight.buffers_body());
        assert_eq!(
            next(&mut in_flight, &RESET, &b),
            RetryDecision::NoRetry(NoRetryReason::BodyTooLarge)
        );

        let mut backing_off = RetryState::new(&p, &req(), None);
        assert!(is_retry(next(&mut backing_off, &RESET, &b)));
        assert_eq!(backing_off.body_overflowed(), BodyOverflow::InsufficientStorage);
        assert_eq!(b.retries(), 0);
        assert_eq!(ABANDONED_STAT, "retry_or_shadow_abandoned");
        // Envoy's check is buffered + incoming > limit.
        assert!(!exceeds_replay_limit(
            DEFAULT_REPLAY_LIMIT - 10,
            10,
            DEFAULT_REPLAY_LIMIT
        ));
        assert!(exceeds_replay_limit(
            DEFAULT_REPLAY_LIMIT - 10,
            11,
            DEFAULT_REPLAY_LIMIT
        ));
        // Without any retry condition nothing is buffered.
        assert!(!RetryState::new(&RetryPolicy::default(), &req(), None).buffers_body());
    }

    // Envoy's route timeout covers all retries: once it has passed, a
    // retriable outcome is answered as the timeout, with no retry spent.
    #[tokio::test(start_paused = true)]
    async fn deadline_passed() {
        let (p, b) = (policy("5xx", 3), breaker());
        let mut state = RetryState::new(&p, &req(), Some(Instant::now() + Duration::from_secs(1)));
        assert!(is_retry(next(&mut state, &RESET, &b)));
        state.start_retry();
        tokio::time::advance(Duration::from_secs(1)).await;
        let d = next(&mut state, &RESET, &b);
        assert_eq!(d, RetryDecision::NoRetry(NoRetryReason::DeadlinePassed));
        assert!(d.stat_names().is_empty());
        assert_eq!((state.retries_remaining, b.retries()), (2, 0));
    }

    // Envoy's back-off advances one step per retry granted: below 25 ms,
    // then 50 ms, then 100 ms.
    #[tokio::test(start_paused = true)]
    async fn backoff_grows_per_retry() {
        fastrand::seed(11);
        let (p, b) = (policy("5xx", 3), breaker());
        let mut state = RetryState::new(&p, &req(), None);
        for cap in [25, 50, 100] {
            let RetryDecision::Retry { after } = next(&mut state, &RESET, &b) else {
                panic!()
            };
            assert!(after < Duration::from_millis(cap));
            let start = Instant::now();
            tokio::time::sleep(after).await;
            assert_eq!(start.elapsed(), after);
            state.start_retry();
        }
    }

    // Envoy's maybeRetryReset: a reset after the response started is never
    // retried and counts nothing.
    #[test]
    fn reset_after_response_is_final() {
        let (p, b) = (policy("reset", 3), breaker());
        let mut state = RetryState::new(&p, &req(), None);
        let after = AttemptOutcome::Reset {
            phase: ResetPhase::AfterResponse,
        };
        assert_eq!(
            next(&mut state, &after, &b),
            RetryDecision::NoRetry(NoRetryReason::NotRetriable)
        );
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    // Envoy's previous_hosts predicate: on a retry, hosts already tried are
    // rejected; the first attempt takes any host; without it, any host goes.
    #[test]
    fn previous_hosts() {
        let p = RetryPolicy {
            previous_hosts: true,
            ..policy("5xx", 1)
        };
        let mut state = RetryState::new(&p, &req(), None);
        state.attempted_host(addr(1));
        assert!(state.host_ok(addr(1)), "first attempt: predicate not consulted");
        state.start_retry();
        assert!(!state.host_ok(addr(1)));
        assert!(state.host_ok(addr(2)));
        let without = policy("5xx", 1);
        let mut plain = RetryState::new(&without, &req(), None);
        plain.attempted_host(addr(1));
        plain.start_retry();
        assert!(plain.host_ok(addr(1)));
    }

    // Envoy's chooseHost: a retry makes up to host_selection_retry_max_attempts
    // + 1 picks and takes the first acceptable one, else the last picked.
    #[test]
    fn select_host_reattempts() {
        let p = RetryPolicy {
            previous_hosts: true,
            host_selection_retry_max_attempts: 2,
            ..policy("5xx", 1)
        };
        let mut state = RetryState::new(&p, &req(), None);
        let mut seq = [1, 1, 2].into_iter();
        assert_eq!(
            state.select_host(|| seq.next().map(addr)),
            Some(addr(1)),
            "first attempt: first pick"
        );
        state.attempted_host(addr(1));
        state.start_retry();
        let mut seq = [1, 1, 2, 3].into_iter();
        assert_eq!(state.select_host(|| seq.next().map(addr)), Some(addr(2)));
        let mut picks = 0;
        let all_rejected = state.select_host(|| {
            picks += 1;
            Some(addr(1))
        });
        assert_eq!((all_rejected, picks), (Some(addr(1)), 3), "all rejected: the last pick");
        assert_eq!(state.select_host(|| None), None);
    }

    fn request(pairs: &[(&'static str, &'static str)]) -> Request<()> {
        let mut r = req();
        for (k, v) in pairs {
            r.headers_mut().insert(*k, HeaderValue::from_static(v));
        }
        r
    }

    // Envoy's RetryStateImpl: x-envoy-retry-on and -grpc-on add conditions,
    // x-envoy-max-retries replaces num_retries (only if anything is
    // retriable), x-envoy-retriable-status-codes and -header-names add to the
    // policy's lists.
    #[test]
    fn request_headers_extend_the_policy() {
        let (p, b) = (RetryPolicy::default(), breaker());
        let r = request(&[
            ("x-envoy-retry-on", "retriable-status-codes,retriable-headers"),
            ("x-envoy-retry-grpc-on", "unavailable"),
            ("x-envoy-max-retries", "2"),
            ("x-envoy-retriable-status-codes", "418, bogus"),
            ("x-envoy-retriable-header-names", "x-try-again"),
        ]);
        let mut state = RetryState::new(&p, &r, None);
        let want = RetryOn::RETRIABLE_STATUS_CODES | RetryOn::RETRIABLE_HEADERS | RetryOn::GRPC_UNAVAILABLE;
        assert_eq!(state.retry_on(), want);
        let (plain, mut again) = (HeaderMap::new(), HeaderMap::new());
        again.insert("x-try-again", HeaderValue::from_static("1"));
        let teapot = resp(418, &plain);
        assert!(is_retry(next(&mut state, &teapot, &b)));
        state.start_retry();
        assert!(is_retry(next(&mut state, &resp(200, &again), &b)));
        state.start_retry();
        assert_eq!(next(&mut state, &teapot, &b), EXHAUSTED);
        let only_max = request(&[("x-envoy-max-retries", "5")]);
        assert_eq!(RetryState::new(&p, &only_max, None).retries_remaining, 1);
    }

    // Envoy: with retriable_request_headers, a request matching none is never
    // retried, even for conditions its own headers asked for.
    #[test]
    fn retriable_request_headers_gate() {
        let p = RetryPolicy {
            retriable_request_headers: vec![HeaderMatcher::new(":method", Some("GET"))],
            ..policy("5xx", 1)
        };
        let mut miss = request(&[("x-envoy-retry-on", "reset")]);
        *miss.method_mut() = http::Method::POST;
        assert_eq!(RetryState::new(&p, &miss, None).retry_on(), RetryOn::NONE);
        let hit = request(&[("x-envoy-retry-on", "reset")]);
        assert_eq!(
            RetryState::new(&p, &hit, None).retry_on(),
            RetryOn::FIVE_XX | RetryOn::RESET
        );
    }
}
