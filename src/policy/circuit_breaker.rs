//! Cluster circuit breakers: the per-priority `Thresholds` of
//! `config.cluster.v3.CircuitBreakers` and the shared runtime counters that
//! enforce them, as Envoy's `ResourceManagerImpl`
//! (source/common/upstream/resource_manager_impl.h) does. Only counting lives
//! here: callers bump the overflow counters and answer the request.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

/// Envoy's `config.core.v3.RoutingPriority`. remora routes everything at
/// `Default`; `High` exists so both thresholds translate and validate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Priority {
    #[default]
    Default,
    High,
}

/// `CircuitBreakers.Thresholds.RetryBudget`. Each field keeps its proto
/// presence: Envoy turns the budget on only when `budget_percent` or
/// `min_retry_concurrency` is set, so an empty `retry_budget: {}` leaves
/// `max_retries` in force (cluster_info_impl.cc: "only set the values if so";
/// the API docs say any `retry_budget` overrides `max_retries`, the code wins).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RetryBudget {
    /// Percent of active plus pending requests that may be retries (default 20).
    pub budget_percent: Option<f64>,
    /// The budget never allows fewer concurrent retries than this (default 3).
    pub min_retry_concurrency: Option<u32>,
}

impl RetryBudget {
    pub const DEFAULT_BUDGET_PERCENT: f64 = 20.0;
    pub const DEFAULT_MIN_RETRY_CONCURRENCY: u32 = 3;

    /// Whether the budget replaces `max_retries`.
    pub fn is_active(&self) -> bool {
        self.budget_percent.is_some() || self.min_retry_concurrency.is_some()
    }

    /// Concurrent retries allowed with `active` requests plus pending requests:
    /// `max(budget_percent / 100 * active, min_retry_concurrency)`, the product
    /// truncated to an integer as Envoy's `std::max<uint64_t>` does.
    pub fn limit(&self, active: u64) -> u64 {
        let percent = self.budget_percent.unwrap_or(Self::DEFAULT_BUDGET_PERCENT);
        let floor = self
            .min_retry_concurrency
            .unwrap_or(Self::DEFAULT_MIN_RETRY_CONCURRENCY);
        // `as` truncates toward zero and saturates, like the C++ conversion for
        // the in-range values validate() admits.
        let by_percent = (percent / 100.0 * active as f64) as u64;
        by_percent.max(u64::from(floor))
    }
}

/// `config.cluster.v3.CircuitBreakers.Thresholds` for one priority.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
    pub retry_budget: Option<RetryBudget>,
    /// Envoy publishes the `remaining_*` gauges only when this is set; the
    /// getters below answer either way.
    pub track_remaining: bool,
}

impl Default for Thresholds {
    /// Envoy's defaults when a priority has no Thresholds: 1024/1024/1024/3.
    fn default() -> Self {
        Thresholds {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
            retry_budget: None,
            track_remaining: false,
        }
    }
}

impl Thresholds {
    /// The checks Envoy's proto validation makes (`type.v3.Percent` is 0..=100).
    pub fn validate(&self) -> Result<(), String> {
        if let Some(percent) = self.retry_budget.and_then(|b| b.budget_percent) {
            if !(0.0..=100.0).contains(&percent) {
                return Err("retry_budget.budget_percent must be between 0 and 100".into());
            }
        }
        Ok(())
    }

    fn active_budget(&self) -> Option<RetryBudget> {
        self.retry_budget.filter(RetryBudget::is_active)
    }
}

/// `config.cluster.v3.CircuitBreakers`: one Thresholds per priority. As Envoy
/// reads `thresholds`, the first entry for a priority wins and a priority with
/// none gets the defaults (the translator picks; this holds the result).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CircuitBreakers {
    pub default: Thresholds,
    pub high: Thresholds,
}

impl CircuitBreakers {
    pub fn validate(&self) -> Result<(), String> {
        self.default.validate()?;
        self.high.validate()
    }

    pub fn thresholds(&self, priority: Priority) -> &Thresholds {
        match priority {
            Priority::Default => &self.default,
            Priority::High => &self.high,
        }
    }
}

#[derive(Debug)]
struct Counters {
    limits: Thresholds,
    connections: AtomicU64,
    pending: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// One priority's live counters for one cluster, shared by every request and
/// connection to it (clone the handle). Each `try_*` admits when the count is
/// below its maximum (Envoy's `canCreate`: `current < max`, so `max_requests: 1`
/// admits exactly one) and returns a guard that gives the slot back on drop.
/// `None` is an overflow; the caller counts it (see each method) and answers.
/// Unlike Envoy, whose check and increment are separate, admission is one
/// atomic step, so the count never goes above the maximum.
#[derive(Debug, Clone)]
pub struct Breaker {
    inner: Arc<Counters>,
}

macro_rules! guard {
    ($(#[$doc:meta])* $name:ident, $field:ident) => {
        $(#[$doc])*
        #[derive(Debug)]
        #[must_use = "the slot is released as soon as the guard drops"]
        pub struct $name(Arc<Counters>);

        impl Drop for $name {
            fn drop(&mut self) {
                self.0.$field.fetch_sub(1, Ordering::AcqRel);
            }
        }
    };
}

guard!(
    /// An open upstream connection (`max_connections`).
    ConnGuard,
    connections
);
guard!(
    /// A request waiting for a connection or stream (`max_pending_requests`).
    PendingGuard,
    pending
);
guard!(
    /// A request in flight on an upstream stream (`max_requests`).
    RequestGuard,
    requests
);
guard!(
    /// A retry from when it is scheduled until its attempt's outcome is judged
    /// (`max_retries` or the retry budget); `retry::RetryState` holds it.
    RetryGuard,
    retries
);

fn admit(counter: &AtomicU64, max: u64) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
            (current < max).then_some(current + 1)
        })
        .is_ok()
}

/// Envoy's `remaining_*` gauge: `max - current`, never below zero.
fn remaining(counter: &AtomicU64, max: u64) -> u64 {
    max.saturating_sub(counter.load(Ordering::Acquire))
}

impl Breaker {
    pub fn new(thresholds: Thresholds) -> Breaker {
        Breaker {
            inner: Arc::new(Counters {
                limits: thresholds,
                connections: AtomicU64::new(0),
                pending: AtomicU64::new(0),
                requests: AtomicU64::new(0),
                retries: AtomicU64::new(0),
            }),
        }
    }

    pub fn thresholds(&self) -> &Thresholds {
        &self.inner.limits
    }

    /// A new upstream connection. Overflow: count `upstream_cx_overflow`; Envoy
    /// keeps the request pending for an existing connection rather than failing it.
    pub fn try_connection(&self) -> Option<ConnGuard> {
        let max = u64::from(self.inner.limits.max_connections);
        admit(&self.inner.connections, max).then(|| ConnGuard(self.inner.clone()))
    }

    /// A connection past `max_connections`, for a host's pool that has none:
    /// as Envoy's `tryCreateNewConnection` ("this upstream has no connections,
    /// always create one"), so requests queued on a host are never stranded by
    /// other hosts' connections. Counted like any other (`remaining_cx` stays 0).
    pub fn force_connection(&self) -> ConnGuard {
        self.inner.connections.fetch_add(1, Ordering::AcqRel);
        ConnGuard(self.inner.clone())
    }

    /// A request that must wait for a connection or stream. Overflow: count
    /// `upstream_rq_pending_overflow` and fail the attempt as Envoy's pool does
    /// (`AttemptOutcome::Overflow`: 503, flag UO, `x-envoy-overloaded: true`).
    pub fn try_pending(&self) -> Option<PendingGuard> {
        let max = u64::from(self.inner.limits.max_pending_requests);
        admit(&self.inner.pending, max).then(|| PendingGuard(self.inner.clone()))
    }

    /// A request starting on an upstream stream. Overflow: as `try_pending`,
    /// counted as `upstream_rq_active_overflow` (Envoy 1.38+; earlier
    /// versions counted it as `upstream_rq_pending_overflow`).
    pub fn try_request(&self) -> Option<RequestGuard> {
        let max = u64::from(self.inner.limits.max_requests);
        admit(&self.inner.requests, max).then(|| RequestGuard(self.inner.clone()))
    }

    /// A retry. With an active retry budget the limit is the budget over the
    /// current active plus pending requests and `max_retries` is ignored
    /// (`RetryBudgetImpl::canCreate`). Overflow: `upstream_rq_retry_overflow`,
    /// which `RetryState::next` reports for its caller.
    pub fn try_retry(&self) -> Option<RetryGuard> {
        admit(&self.inner.retries, self.max_retries_now()).then(|| RetryGuard(self.inner.clone()))
    }

    /// The retry limit in force right now.
    pub fn max_retries_now(&self) -> u64 {
        match self.inner.limits.active_budget() {
            Some(budget) => budget.limit(self.requests() + self.pending_requests()),
            None => u64::from(self.inner.limits.max_retries),
        }
    }

    pub fn connections(&self) -> u64 {
        self.inner.connections.load(Ordering::Acquire)
    }
    pub fn pending_requests(&self) -> u64 {
        self.inner.pending.load(Ordering::Acquire)
    }
    pub fn requests(&self) -> u64 {
        self.inner.requests.load(Ordering::Acquire)
    }
    pub fn retries(&self) -> u64 {
        self.inner.retries.load(Ordering::Acquire)
    }

    /// `circuit_breakers.<priority>.remaining_cx`.
    pub fn remaining_cx(&self) -> u64 {
        remaining(&self.inner.connections, u64::from(self.inner.limits.max_connections))
    }
    /// `circuit_breakers.<priority>.remaining_pending`.
    pub fn remaining_pending(&self) -> u64 {
        remaining(&self.inner.pending, u64::from(self.inner.limits.max_pending_requests))
    }
    /// `circuit_breakers.<priority>.remaining_rq`.
    pub fn remaining_rq(&self) -> u64 {
        remaining(&self.inner.requests, u64::from(self.inner.limits.max_requests))
    }
    /// `circuit_breakers.<priority>.remaining_retries`. Envoy pins it to 0
    /// while a retry budget is active, since the limit moves with other
    /// resources (`clearRemainingGauge`).
    pub fn remaining_retries(&self) -> u64 {
        if self.inner.limits.active_budget().is_some() {
            return 0;
        }
        remaining(&self.inner.retries, u64::from(self.inner.limits.max_retries))
    }

    /// `circuit_breakers.<priority>.cx_open`: 1 when the next try would overflow.
    pub fn cx_open(&self) -> bool {
        self.remaining_cx() == 0
    }
    /// `circuit_breakers.<priority>.rq_pending_open`.
    pub fn rq_pending_open(&self) -> bool {
        self.remaining_pending() == 0
    }
    /// `circuit_breakers.<priority>.rq_open`.
    pub fn rq_open(&self) -> bool {
        self.remaining_rq() == 0
    }
    /// `circuit_breakers.<priority>.rq_retry_open`. As in Envoy this gauge
    /// compares with `max_retries` even while a budget is active (the nested
    /// `max_retry_resource_` sets it).
    pub fn rq_retry_open(&self) -> bool {
        self.retries() >= u64::from(self.inner.limits.max_retries)
    }
}

/// Both priorities' breakers for one cluster: Envoy keeps a separate resource
/// manager, and so separate counts, per priority.
#[derive(Debug, Clone)]
pub struct ClusterBreakers {
    pub default: Breaker,
    pub high: Breaker,
}

impl ClusterBreakers {
    pub fn new(config: &CircuitBreakers) -> ClusterBreakers {
        ClusterBreakers {
            default: Breaker::new(config.default.clone()),
            high: Breaker::new(config.high.clone()),
        }
    }

    pub fn get(&self, priority: Priority) -> &Breaker {
        match priority {
            Priority::Default => &self.default,
            Priority::High => &self.high,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(f: impl FnOnce(&mut Thresholds)) -> Breaker {
        let mut t = Thresholds::default();
        f(&mut t);
        Breaker::new(t)
    }

    // Envoy: unset thresholds are 1024 connections, 1024 pending, 1024
    // requests, 3 retries; no budget; remaining gauges off.
    #[test]
    fn defaults_are_envoys() {
        let t = Thresholds::default();
        assert_eq!(
            (t.max_connections, t.max_pending_requests, t.max_requests, t.max_retries),
            (1024, 1024, 1024, 3)
        );
        assert_eq!(t.retry_budget, None);
        assert!(!t.track_remaining);
        assert_eq!(CircuitBreakers::default().thresholds(Priority::High), &t);
        assert_eq!(Priority::default(), Priority::Default);
    }

    // Envoy: a Breaker is shared by every worker thread.
    #[test]
    fn breaker_and_guards_are_send_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Breaker>();
        assert_send_sync::<ConnGuard>();
        assert_send_sync::<PendingGuard>();
        assert_send_sync::<RequestGuard>();
        assert_send_sync::<RetryGuard>();
    }

    // Envoy's canCreate is `current < max`: max_requests = 1 admits exactly
    // one request at a time, and the slot comes back when it ends.
    #[test]
    fn max_requests_one_allows_exactly_one() {
        let b = breaker(|t| t.max_requests = 1);
        let first = b.try_request();
        assert!(first.is_some());
        assert!(b.try_request().is_none());
        assert!(b.rq_open());
        drop(first);
        assert!(!b.rq_open());
        assert!(b.try_request().is_some());
    }

    // Envoy: max 0 admits nothing (every request overflows).
    #[test]
    fn zero_max_admits_nothing() {
        let b = breaker(|t| {
            t.max_connections = 0;
            t.max_pending_requests = 0;
            t.max_retries = 0;
        });
        assert!(b.try_connection().is_none());
        assert!(b.try_pending().is_none());
        assert!(b.try_retry().is_none());
    }

    // Envoy creates one connection for a host's pool that has none even at
    // max_connections; the count goes past the maximum, remaining_cx stays 0,
    // and the extra slot is given back like any other.
    #[test]
    fn forced_connection_goes_past_the_limit() {
        let b = breaker(|t| t.max_connections = 1);
        let first = b.try_connection();
        assert!(first.is_some());
        let forced = b.force_connection();
        assert_eq!((b.connections(), b.remaining_cx()), (2, 0));
        assert!(b.cx_open() && b.try_connection().is_none());
        drop(first);
        assert!(
            b.try_connection().is_none(),
            "still at the limit with the forced one open"
        );
        drop(forced);
        assert!(b.try_connection().is_some());
    }

    // Envoy decrements each resource when its holder ends, on every path.
    #[test]
    fn guards_release_on_drop() {
        let b = breaker(|_| {});
        {
            let _c = b.try_connection();
            let _p = b.try_pending();
            let _r = b.try_request();
            let _t = b.try_retry();
            assert_eq!(
                (b.connections(), b.pending_requests(), b.requests(), b.retries()),
                (1, 1, 1, 1)
            );
        }
        assert_eq!(
            (b.connections(), b.pending_requests(), b.requests(), b.retries()),
            (0, 0, 0, 0)
        );
    }

    // Envoy: remaining_* = max - current, floored at 0.
    #[test]
    fn remaining_gauges() {
        let b = breaker(|t| {
            t.max_connections = 2;
            t.max_pending_requests = 3;
            t.max_requests = 4;
            t.max_retries = 1;
        });
        assert_eq!(
            (
                b.remaining_cx(),
                b.remaining_pending(),
                b.remaining_rq(),
                b.remaining_retries()
            ),
            (2, 3, 4, 1)
        );
        let held = (b.try_connection(), b.try_pending(), b.try_request(), b.try_retry());
        assert_eq!(
            (
                b.remaining_cx(),
                b.remaining_pending(),
                b.remaining_rq(),
                b.remaining_retries()
            ),
            (1, 2, 3, 0)
        );
        assert!(b.rq_retry_open() && !b.cx_open() && !b.rq_pending_open());
        drop(held);
        assert_eq!(b.remaining_rq(), 4);
    }

    // Envoy's default max_retries of 3: the 4th concurrent retry overflows.
    #[test]
    fn default_max_retries_overflow_at_fourth() {
        let b = Breaker::new(Thresholds::default());
        let held: Vec<_> = (0..3).map(|_| b.try_retry()).collect();
        assert!(held.iter().all(Option::is_some));
        assert!(b.try_retry().is_none());
        drop(held);
        assert!(b.try_retry().is_some());
    }

    // Envoy: max retries = max(budget_percent% of (active + pending),
    // min_retry_concurrency), and max_retries is ignored.
    #[test]
    fn retry_budget_replaces_max_retries() {
        let b = breaker(|t| {
            t.max_retries = 100;
            t.retry_budget = Some(RetryBudget {
                budget_percent: Some(25.0),
                min_retry_concurrency: Some(2),
            });
        });
        // Nothing active: the floor of 2 applies, not max_retries = 100.
        assert_eq!(b.max_retries_now(), 2);
        let _r1 = b.try_retry();
        let _r2 = b.try_retry();
        assert!(b.try_retry().is_none());
        // 16 requests active and 4 pending: 25% of 20 = 5.
        let _active: Vec<_> = (0..16).map(|_| b.try_request()).collect();
        let _pending: Vec<_> = (0..4).map(|_| b.try_pending()).collect();
        assert_eq!(b.max_retries_now(), 5);
        let more: Vec<_> = (0..3).map(|_| b.try_retry()).collect();
        assert!(more.iter().all(Option::is_some));
        assert!(b.try_retry().is_none());
        // The remaining gauge is pinned to 0 under a budget.
        assert_eq!(b.remaining_retries(), 0);
    }

    // Envoy truncates the budget product: 20% of 9 is 1.8 -> 1, then the
    // default floor of 3 wins; 20% of 30 is 6.
    #[test]
    fn budget_defaults_and_truncation() {
        let only_percent = RetryBudget {
            budget_percent: Some(20.0),
            min_retry_concurrency: None,
        };
        assert_eq!(only_percent.limit(9), 3);
        assert_eq!(only_percent.limit(30), 6);
        let only_floor = RetryBudget {
            budget_percent: None,
            min_retry_concurrency: Some(0),
        };
        assert_eq!(only_floor.limit(9), 1);
        assert_eq!(only_floor.limit(4), 0);
    }

    // Envoy enables the budget only when a field inside it is set: an empty
    // retry_budget message keeps max_retries (and its remaining gauge).
    #[test]
    fn empty_budget_keeps_max_retries() {
        let b = breaker(|t| {
            t.max_retries = 1;
            t.retry_budget = Some(RetryBudget::default());
        });
        assert_eq!(b.max_retries_now(), 1);
        assert_eq!(b.remaining_retries(), 1);
        let _r = b.try_retry();
        assert!(b.try_retry().is_none());
    }

    // Envoy validates budget_percent as a type.v3.Percent: 0..=100.
    #[test]
    fn validate_budget_percent() {
        let with = |p: f64| CircuitBreakers {
            default: Thresholds {
                retry_budget: Some(RetryBudget {
                    budget_percent: Some(p),
                    min_retry_concurrency: None,
                }),
                ..Thresholds::default()
            },
            high: Thresholds::default(),
        };
        assert_eq!(with(0.0).validate(), Ok(()));
        assert_eq!(with(100.0).validate(), Ok(()));
        for bad in [-0.5, 100.5, f64::NAN] {
            assert_eq!(
                with(bad).validate(),
                Err("retry_budget.budget_percent must be between 0 and 100".to_string())
            );
        }
    }

    // Envoy keeps separate counters per priority.
    #[test]
    fn priorities_count_separately() {
        let config = CircuitBreakers {
            default: Thresholds {
                max_requests: 1,
                ..Thresholds::default()
            },
            high: Thresholds {
                max_requests: 1,
                ..Thresholds::default()
            },
        };
        let cluster = ClusterBreakers::new(&config);
        let _d = cluster.get(Priority::Default).try_request();
        assert!(cluster.get(Priority::Default).try_request().is_none());
        assert!(cluster.get(Priority::High).try_request().is_some());
    }

    // Envoy's limits hold across worker threads: 8 threads racing for
    // max_requests = 5 never get more than 5 at once.
    #[test]
    fn concurrent_admission_never_exceeds_max() {
        let b = breaker(|t| t.max_requests = 5);
        let admitted = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8).map(|_| s.spawn(|| b.try_request())).collect();
            handles.into_iter().map(|h| h.join().ok().flatten()).collect::<Vec<_>>()
        });
        assert_eq!(admitted.iter().filter(|g| g.is_some()).count(), 5);
        assert_eq!(b.requests(), 5);
    }
}
