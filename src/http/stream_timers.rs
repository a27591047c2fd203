//! The connection manager's timers for one stream, as Envoy runs them around
//! the router (conn_manager_impl.cc `refreshDurationTimeout`,
//! `refreshIdleTimeout`, `onStreamMaxDurationReached`, `onIdleTimeout`):
//!
//! - the max stream duration, counted from the start of the stream: the
//!   route's `max_stream_duration` or `grpc-timeout` (see
//!   `policy::grpc_timeout::deadlines`), else the connection manager's;
//! - the stream idle timeout: the route's `idle_timeout`, else the connection
//!   manager's `stream_idle_timeout`, restarted by every request or response
//!   frame.
//!
//! Both are armed when the route is resolved. One value is shared by the
//! request path (until the response head: expiry becomes a local reply), the
//! downstream body (activity, completion) and the response body (afterwards:
//! expiry resets the stream). This module only keeps time and decides which
//! timer fired; the replies are `ProxyError::{MaxStreamDuration,
//! StreamIdleTimeout}`.

use std::{
    future::{poll_fn, Future},
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    task::{ready, Context, Poll},
    time::Duration,
};

use tokio::time::{Instant, Sleep};

use super::error::ProxyError;
use crate::telemetry::stats::HttpStats;

/// The timers of one stream; cheap to clone.
#[derive(Clone)]
pub struct StreamTimers(Arc<Shared>);

struct Shared {
    start: Instant,
    /// When the stream's max duration ends.
    max_duration: Option<Instant>,
    idle: Option<Duration>,
    /// The last request or response frame, in nanoseconds after `start`.
    last_activity: AtomicU64,
    request_complete: AtomicBool,
    stats: Arc<HttpStats>,
}

/// Which timer ended the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    MaxDuration,
    Idle,
}

impl Expired {
    /// The local reply for it (before the response head).
    pub fn error(self, request_complete: bool) -> ProxyError {
        match self {
            Expired::MaxDuration => ProxyError::MaxStreamDuration { request_complete },
            Expired::Idle => ProxyError::StreamIdleTimeout { request_complete },
        }
    }
}

/// A stream timer ended the stream after its response had started: the
/// response body fails, and hyper resets the stream, as Envoy does.
#[derive(Debug, thiserror::Error)]
#[error("stream reset: {0:?} timer expired while the response streamed")]
pub struct StreamReset(pub Expired);

impl StreamTimers {
    /// The timers of a stream that started at `start`, armed now (at route
    /// resolution). `max_duration` is counted from `start` (`Some(0)` ends the
    /// stream at once); the idle timer from now. None when neither runs.
    pub fn new(
        start: Instant,
        max_duration: Option<Duration>,
        idle: Option<Duration>,
        stats: Arc<HttpStats>,
    ) -> Option<StreamTimers> {
        let idle = idle.filter(|d| !d.is_zero());
        // A deadline past what the clock can hold never comes.
        let max_duration = max_duration.and_then(|d| start.checked_add(d));
        if max_duration.is_none() && idle.is_none() {
            return None;
        }
        let timers = StreamTimers(Arc::new(Shared {
            start,
            max_duration,
            idle,
            last_activity: AtomicU64::new(0),
            request_complete: AtomicBool::new(false),
            stats,
        }));
        timers.touch();
        Some(timers)
    }

    /// A request or response frame passed: the idle timer starts again.
    pub fn touch(&self) {
        let since = Instant::now().saturating_duration_since(self.0.start);
        let nanos = u64::try_from(since.as_nanos()).unwrap_or(u64::MAX);
        self.0.last_activity.fetch_max(nanos, Relaxed);
    }

    /// The downstream request has been received whole.
    pub fn complete_request(&self) {
        self.0.request_complete.store(true, Relaxed);
    }

    pub fn request_complete(&self) -> bool {
        self.0.request_complete.load(Relaxed)
    }

    fn idle_deadline(&self) -> Option<Instant> {
        let idle = self.0.idle?;
        let last = Duration::from_nanos(self.0.last_activity.load(Relaxed));
        self.0.start.checked_add(last)?.checked_add(idle)
    }

    /// The earliest moment a timer could fire.
    fn next_deadline(&self) -> Option<Instant> {
        match (self.0.max_duration, self.idle_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Which timer has run out at `now`, counted in the connection manager's
    /// stats (the max duration first when both have).
    fn check(&self, now: Instant) -> Option<Expired> {
        let stats = &self.0.stats;
        if self.0.max_duration.is_some_and(|d| now >= d) {
            stats.downstream_rq_max_duration_reached.inc();
            return Some(Expired::MaxDuration);
        }
        if self.idle_deadline().is_some_and(|d| now >= d) {
            stats.downstream_rq_idle_timeout.inc();
            return Some(Expired::Idle);
        }
        None
    }

    /// Polls the timers with `sleep` (made on first need). Ready once one has
    /// run out; an idle deadline that moved with activity is re-armed.
    pub fn poll_expired(&self, sleep: &mut Option<Pin<Box<Sleep>>>, cx: &mut Context<'_>) -> Poll<Expired> {
        let Some(at) = self.next_deadline() else {
            return Poll::Pending;
        };
        let sleep = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        self.poll_sleep(sleep.as_mut(), cx)
    }

    fn poll_sleep(&self, mut sleep: Pin<&mut Sleep>, cx: &mut Context<'_>) -> Poll<Expired> {
        loop {
            let Some(at) = self.next_deadline() else {
                return Poll::Pending;
            };
            if sleep.deadline() != at {
                sleep.as_mut().reset(at);
            }
            ready!(sleep.as_mut().poll(cx));
            if let Some(expired) = self.check(Instant::now()) {
                return Poll::Ready(expired);
            }
        }
    }

    /// Runs `work` until it finishes or a timer runs out, whichever is first.
    pub async fn guard<F: Future>(&self, work: F) -> Result<F::Output, Expired> {
        let Some(first) = self.next_deadline() else {
            return Ok(work.await);
        };
        // The timer lives in this future, not in a box of its own.
        let sleep = tokio::time::sleep_until(first);
        tokio::pin!(sleep);
        let expired = poll_fn(|cx| self.poll_sleep(sleep.as_mut(), cx));
        tokio::select! {
            biased;
            out = work => Ok(out),
            e = expired => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> Arc<HttpStats> {
        Arc::new(HttpStats::default())
    }

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    // Envoy: with neither a duration limit nor an idle timeout there are no timers.
    #[tokio::test(start_paused = true)]
    async fn no_timers_without_limits() {
        assert!(StreamTimers::new(Instant::now(), None, None, stats()).is_none());
        assert!(StreamTimers::new(Instant::now(), None, Some(Duration::ZERO), stats()).is_none());
        assert!(StreamTimers::new(Instant::now(), Some(Duration::MAX), None, stats()).is_none());
    }

    // Envoy's max stream duration counts from the start of the stream, not from
    // route resolution, and ends work still in progress.
    #[tokio::test(start_paused = true)]
    async fn max_duration_counts_from_the_stream_start() {
        let s = stats();
        let start = Instant::now();
        tokio::time::advance(ms(40)).await;
        let timers = StreamTimers::new(start, Some(ms(100)), None, s.clone()).unwrap();
        let r = timers.guard(tokio::time::sleep(ms(500))).await;
        assert_eq!(r, Err(Expired::MaxDuration));
        assert_eq!(start.elapsed(), ms(100));
        assert_eq!(s.downstream_rq_max_duration_reached.get(), 1);
        // Work that ends first wins.
        let timers = StreamTimers::new(Instant::now(), Some(ms(100)), None, s.clone()).unwrap();
        assert_eq!(timers.guard(async { 7 }).await, Ok(7));
    }

    // A zero limit (e.g. grpc-timeout: 0m) fires at once.
    #[tokio::test(start_paused = true)]
    async fn zero_duration_fires_at_once() {
        let timers = StreamTimers::new(Instant::now(), Some(Duration::ZERO), None, stats()).unwrap();
        let start = Instant::now();
        let r = timers.guard(std::future::pending::<()>()).await;
        assert_eq!(r, Err(Expired::MaxDuration));
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    // Envoy's stream idle timer restarts with every frame: activity more often
    // than the timeout keeps the stream alive, a longer gap ends it.
    #[tokio::test(start_paused = true)]
    async fn idle_timer_restarts_with_activity() {
        let s = stats();
        let timers = StreamTimers::new(Instant::now(), None, Some(ms(100)), s.clone()).unwrap();
        let start = Instant::now();
        let t = timers.clone();
        let busy = async move {
            for _ in 0..5 {
                tokio::time::sleep(ms(80)).await;
                t.touch();
            }
            "done"
        };
        assert_eq!(timers.guard(busy).await, Ok("done"));
        assert_eq!(start.elapsed(), ms(400));
        let r = timers.guard(std::future::pending::<()>()).await;
        assert_eq!(r, Err(Expired::Idle));
        assert_eq!(start.elapsed(), ms(500), "100 ms after the last frame");
        assert_eq!(s.downstream_rq_idle_timeout.get(), 1);
    }

    // Both timers: whichever comes first; the request's completion decides
    // between 504 and 408, as Envoy's maybeRequestTimeoutCode.
    #[tokio::test(start_paused = true)]
    async fn earliest_timer_wins_and_completion_picks_the_status() {
        let timers = StreamTimers::new(Instant::now(), Some(ms(300)), Some(ms(100)), stats()).unwrap();
        let r = timers.guard(std::future::pending::<()>()).await;
        assert_eq!(r, Err(Expired::Idle));
        assert!(!timers.request_complete());
        assert_eq!(Expired::Idle.error(false).status(), 408);
        timers.complete_request();
        assert!(timers.request_complete());
        assert_eq!(Expired::MaxDuration.error(true).status(), 504);
        let timers = StreamTimers::new(Instant::now(), Some(ms(50)), Some(ms(100)), stats()).unwrap();
        assert_eq!(
            timers.guard(std::future::pending::<()>()).await,
            Err(Expired::MaxDuration)
        );
    }
}
