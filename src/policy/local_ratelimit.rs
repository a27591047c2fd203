//! Envoy's local rate limit HTTP filter (extensions.filters.http.local_ratelimit.v3.LocalRateLimit):
//! the token bucket shared by all requests under one filter config, the filter_enabled /
//! filter_enforced fractions, the filter's stats and its x-ratelimit-* headers.
//! Deciding only: the tower layer sends the local reply. Descriptors, per-connection buckets and
//! local_cluster_rate_limit are not modelled here (translate must reject them).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};
use tokio::time::Instant;

/// Body of the local reply, as Envoy's filter sends it.
pub const LOCAL_RATE_LIMITED_BODY: &str = "local_rate_limited";
/// LocalRateLimiterImpl refuses shorter fill intervals ("fill timer must be >= 50ms").
pub const MIN_FILL_INTERVAL: Duration = Duration::from_millis(50);

pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// The filter config with Envoy's defaults. The percentages are the `default_value` of the
/// RuntimeFractionalPercent fields; an absent field means 0%, i.e. the filter does nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalRateLimitConfig {
    pub stat_prefix: String,
    pub max_tokens: u32,
    /// Defaults to 1.
    pub tokens_per_fill: u32,
    pub fill_interval: Duration,
    pub filter_enabled_percent: f64,
    pub filter_enforced_percent: f64,
    /// Added to the local reply when a request is rejected.
    pub response_headers_to_add: Vec<(HeaderName, HeaderValue)>,
    /// Added to the request when it is over the limit but not enforced.
    pub request_headers_to_add_when_not_enforced: Vec<(HeaderName, HeaderValue)>,
    /// `enable_x_ratelimit_headers: DRAFT_VERSION_03`.
    pub enable_x_ratelimit_headers: bool,
    /// `status.code`; defaults to 429, and anything below 400 also means 429 (toErrorCode).
    pub status: u16,
    /// Reply to gRPC with RESOURCE_EXHAUSTED instead of the UNAVAILABLE that 429 maps to.
    pub rate_limited_as_resource_exhausted: bool,
}

impl Default for LocalRateLimitConfig {
    fn default() -> Self {
        LocalRateLimitConfig {
            stat_prefix: String::new(),
            max_tokens: 0,
            tokens_per_fill: 1,
            fill_interval: Duration::ZERO,
            filter_enabled_percent: 0.0,
            filter_enforced_percent: 0.0,
            response_headers_to_add: Vec::new(),
            request_headers_to_add_when_not_enforced: Vec::new(),
            enable_x_ratelimit_headers: false,
            status: 429,
            rate_limited_as_resource_exhausted: false,
        }
    }
}

impl LocalRateLimitConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.stat_prefix.is_empty() {
            return Err("local_rate_limit.stat_prefix must not be empty".into());
        }
        if self.max_tokens == 0 {
            return Err("local_rate_limit.token_bucket.max_tokens must be greater than 0".into());
        }
        if self.tokens_per_fill == 0 {
            return Err("local_rate_limit.token_bucket.tokens_per_fill must be greater than 0".into());
        }
        if self.fill_interval < MIN_FILL_INTERVAL {
            return Err("local_rate_limit.token_bucket.fill_interval must be at least 50ms".into());
        }
        for (name, percent) in [
            ("filter_enabled", self.filter_enabled_percent),
            ("filter_enforced", self.filter_enforced_percent),
        ] {
            if !(0.0..=100.0).contains(&percent) {
                return Err(format!("local_rate_limit.{name} must be between 0 and 100 percent"));
            }
        }
        if !(100..600).contains(&self.status) {
            return Err("local_rate_limit.status.code must be in [100, 600)".into());
        }
        Ok(())
    }

    /// The local reply's status: the configured code if >= 400, else 429 (FilterConfig::toErrorCode).
    pub fn response_status(&self) -> StatusCode {
        match StatusCode::from_u16(self.status) {
            Ok(code) if code.as_u16() >= 400 => code,
            _ => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// gRPC status to force on the local reply; `None` lets the HTTP status map (429 -> 14 UNAVAILABLE).
    pub fn grpc_status(&self) -> Option<u32> {
        self.rate_limited_as_resource_exhausted.then_some(8)
    }
}

/// Result of taking one token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Whole tokens left after this request.
    pub remaining: u32,
    /// Envoy's nextTokenAvailable: zero while a whole token is left, else the time one fill
    /// step takes (fill_interval / tokens_per_fill, rounded up to a millisecond).
    pub reset_after: Duration,
}

/// A token bucket holding up to `max_tokens`, starting full and refilled continuously at
/// `tokens_per_fill` per `fill_interval`. Since mid-2024 (PR 35207, runtime guard
/// `no_timer_based_rate_limit_token_bucket`, later the only implementation) Envoy's local rate
/// limiter uses AtomicTokenBucketImpl: it refills lazily on access from elapsed time instead of in
/// steps on a timer, so a token can come back a fraction of the interval after the bucket ran dry.
#[derive(Debug)]
pub struct TokenBucket {
    max_tokens: u32,
    tokens_per_fill: u32,
    fill_interval: Duration,
    level: Mutex<Level>,
}

/// Fill level in exact integer units: one token is `fill_interval` nanoseconds' worth of units,
/// and each elapsed nanosecond adds `tokens_per_fill` units.
#[derive(Debug)]
struct Level {
    units: u128,
    at: Instant,
}

impl TokenBucket {
    pub fn new(max_tokens: u32, tokens_per_fill: u32, fill_interval: Duration, now: Instant) -> Self {
        let bucket = TokenBucket {
            max_tokens,
            tokens_per_fill,
            fill_interval,
            level: Mutex::new(Level { units: 0, at: now }),
        };
        bucket.lock().units = bucket.capacity();
        bucket
    }

    pub fn from_config(config: &LocalRateLimitConfig, now: Instant) -> Self {
        TokenBucket::new(config.max_tokens, config.tokens_per_fill, config.fill_interval, now)
    }

    pub fn max_tokens(&self) -> u32 {
        self.max_tokens
    }

    /// Takes one token if a whole one is there.
    pub fn try_acquire(&self, now: Instant) -> Decision {
        let mut level = self.lock();
        self.refill(&mut level, now);
        let allowed = level.units >= self.unit();
        if allowed {
            level.units -= self.unit();
        }
        Decision {
            allowed,
            remaining: self.whole_tokens(&level),
            reset_after: self.reset_for(&level),
        }
    }

    /// Whole tokens available now (RateLimitTokenBucket::remainingTokens, truncated).
    pub fn remaining(&self, now: Instant) -> u32 {
        let mut level = self.lock();
        self.refill(&mut level, now);
        self.whole_tokens(&level)
    }

    /// See [`Decision::reset_after`].
    pub fn reset_after(&self, now: Instant) -> Duration {
        let mut level = self.lock();
        self.refill(&mut level, now);
        self.reset_for(&level)
    }

    fn unit(&self) -> u128 {
        self.fill_interval.as_nanos().max(1)
    }

    fn capacity(&self) -> u128 {
        u128::from(self.max_tokens).saturating_mul(self.unit())
    }

    fn refill(&self, level: &mut Level, now: Instant) {
        if now > level.at {
            let added = (now - level.at)
                .as_nanos()
                .saturating_mul(u128::from(self.tokens_per_fill));
            level.units = level.units.saturating_add(added).min(self.capacity());
            level.at = now;
        }
    }

    fn whole_tokens(&self, level: &Level) -> u32 {
        u32::try_from(level.units / self.unit()).unwrap_or(u32::MAX)
    }

    fn reset_for(&self, level: &Level) -> Duration {
        if level.units >= self.unit() {
            return Duration::ZERO;
        }
        // ceil((1 / fill_rate) * 1000) ms with fill_rate = tokens_per_fill / fill_interval.
        let per_fill = u128::from(self.tokens_per_fill.max(1));
        let ms = self.fill_interval.as_nanos().div_ceil(per_fill).div_ceil(1_000_000);
        Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Level> {
        self.level.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What the filter does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitOutcome {
    /// filter_enabled missed: no token taken, no stats, no x-ratelimit headers.
    NotEnabled,
    /// A token was taken.
    Pass,
    /// Over the limit. Not enforced: counted, request headers added, request passes.
    /// Enforced: answer with the local reply.
    Limited { enforced: bool },
}

impl LimitOutcome {
    pub fn rejects(self) -> bool {
        self == LimitOutcome::Limited { enforced: true }
    }
}

/// Filter::decodeHeaders: enabled fraction, then a token, then the enforced fraction. Each fraction
/// draws its own random number, as each featureEnabled call does.
pub fn decide(
    config: &LocalRateLimitConfig,
    bucket: &TokenBucket,
    now: Instant,
    mut random: impl FnMut() -> u64,
) -> LimitOutcome {
    if !fraction_hits(config.filter_enabled_percent, random()) {
        return LimitOutcome::NotEnabled;
    }
    if bucket.try_acquire(now).allowed {
        return LimitOutcome::Pass;
    }
    LimitOutcome::Limited {
        enforced: fraction_hits(config.filter_enforced_percent, random()),
    }
}

/// featureEnabled(key, FractionalPercent): random % denominator < numerator. Any percentage the
/// proto can express is exact over a denominator of one million.
fn fraction_hits(percent: f64, random: u64) -> bool {
    let per_million = (percent.clamp(0.0, 100.0) * 10_000.0).round() as u64;
    random % 1_000_000 < per_million
}

/// The draft-03 headers Envoy adds to every response of a request the filter was enabled for
/// (encodeHeaders): limit is max_tokens, remaining the whole tokens left at response time, reset
/// the seconds until the next token (whole seconds, truncated: `nextTokenAvailable() / 1000`).
pub fn x_ratelimit_headers(
    config: &LocalRateLimitConfig,
    bucket: &TokenBucket,
    outcome: LimitOutcome,
    now: Instant,
) -> Vec<(HeaderName, HeaderValue)> {
    if !config.enable_x_ratelimit_headers || outcome == LimitOutcome::NotEnabled {
        return Vec::new();
    }
    vec![
        (X_RATELIMIT_LIMIT, HeaderValue::from(bucket.max_tokens())),
        (X_RATELIMIT_REMAINING, HeaderValue::from(bucket.remaining(now))),
        (X_RATELIMIT_RESET, HeaderValue::from(bucket.reset_after(now).as_secs())),
    ]
}

/// `<stat_prefix>.http_local_rate_limit.*` counters.
#[derive(Debug, Default)]
pub struct LocalRateLimitStats {
    enabled: AtomicU64,
    enforced: AtomicU64,
    rate_limited: AtomicU64,
    ok: AtomicU64,
}

impl LocalRateLimitStats {
    /// enabled counts every request the filter ran for, ok the ones under the limit, rate_limited
    /// the ones over it, enforced those of them that were rejected.
    pub fn record(&self, outcome: LimitOutcome) {
        let counters: &[&AtomicU64] = match outcome {
            LimitOutcome::NotEnabled => &[],
            LimitOutcome::Pass => &[&self.enabled, &self.ok],
            LimitOutcome::Limited { enforced: false } => &[&self.enabled, &self.rate_limited],
            LimitOutcome::Limited { enforced: true } => &[&self.enabled, &self.rate_limited, &self.enforced],
        };
        for counter in counters {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (full stat name, value) for each counter.
    pub fn named(&self, stat_prefix: &str) -> [(String, u64); 4] {
        let name = |stat: &str| format!("{stat_prefix}.http_local_rate_limit.{stat}");
        [
            (name("enabled"), self.enabled.load(Ordering::Relaxed)),
            (name("enforced"), self.enforced.load(Ordering::Relaxed)),
            (name("rate_limited"), self.rate_limited.load(Ordering::Relaxed)),
            (name("ok"), self.ok.load(Ordering::Relaxed)),
        ]
    }
}

#[cfg(test)]
#[path = "local_ratelimit_tests.rs"]
mod tests;
