//! Local rate limit tests under a paused clock; each states the Envoy behaviour it pins.

use super::*;
use std::sync::Arc;
use tokio::time::advance;

fn config(max_tokens: u32, tokens_per_fill: u32, fill_interval: Duration) -> LocalRateLimitConfig {
    LocalRateLimitConfig {
        stat_prefix: "test".into(),
        max_tokens,
        tokens_per_fill,
        fill_interval,
        filter_enabled_percent: 100.0,
        filter_enforced_percent: 100.0,
        enable_x_ratelimit_headers: true,
        ..LocalRateLimitConfig::default()
    }
}

fn always() -> impl FnMut() -> u64 {
    || 0
}

fn header(headers: &[(HeaderName, HeaderValue)], name: &HeaderName) -> String {
    let value = headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.to_str().unwrap_or("?"));
    value.unwrap_or("<absent>").to_string()
}

#[test]
fn defaults_and_validation() {
    // tokens_per_fill defaults to 1, status to 429; absent filter_enabled/filter_enforced are 0%.
    let d = LocalRateLimitConfig::default();
    assert_eq!(
        (
            d.tokens_per_fill,
            d.status,
            d.filter_enabled_percent,
            d.filter_enforced_percent
        ),
        (1, 429, 0.0, 0.0)
    );
    assert!(config(1, 1, Duration::from_millis(50)).validate().is_ok());
    let cases = [
        (
            config(0, 1, Duration::from_secs(1)),
            "local_rate_limit.token_bucket.max_tokens must be greater than 0",
        ),
        (
            config(1, 0, Duration::from_secs(1)),
            "local_rate_limit.token_bucket.tokens_per_fill must be greater than 0",
        ),
        (
            config(1, 1, Duration::from_millis(49)),
            "local_rate_limit.token_bucket.fill_interval must be at least 50ms",
        ),
        (
            LocalRateLimitConfig {
                filter_enforced_percent: 100.5,
                ..config(1, 1, Duration::from_secs(1))
            },
            "local_rate_limit.filter_enforced must be between 0 and 100 percent",
        ),
        (
            LocalRateLimitConfig {
                status: 42,
                ..config(1, 1, Duration::from_secs(1))
            },
            "local_rate_limit.status.code must be in [100, 600)",
        ),
    ];
    for (config, message) in cases {
        assert_eq!(config.validate().unwrap_err(), message);
    }
}

#[test]
fn status_below_400_means_429() {
    // FilterConfig::toErrorCode keeps codes >= 400 and turns anything else into 429.
    let mut c = config(1, 1, Duration::from_secs(1));
    assert_eq!(c.response_status(), StatusCode::TOO_MANY_REQUESTS);
    c.status = 503;
    assert_eq!(c.response_status(), StatusCode::SERVICE_UNAVAILABLE);
    c.status = 200;
    assert_eq!(c.response_status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(c.grpc_status(), None);
    c.rate_limited_as_resource_exhausted = true;
    assert_eq!(c.grpc_status(), Some(8));
}

#[tokio::test(start_paused = true)]
async fn bucket_starts_full_and_allows_a_burst_of_max_tokens() {
    // The bucket initially holds max_tokens; each request takes one.
    let bucket = TokenBucket::new(3, 1, Duration::from_secs(1), Instant::now());
    let now = Instant::now();
    let taken: Vec<(bool, u32)> = (0..4)
        .map(|_| bucket.try_acquire(now))
        .map(|d| (d.allowed, d.remaining))
        .collect();
    assert_eq!(taken, vec![(true, 2), (true, 1), (true, 0), (false, 0)]);
}

#[tokio::test(start_paused = true)]
async fn bucket_refills_continuously_up_to_max_tokens() {
    // AtomicTokenBucketImpl: tokens = min(max, elapsed * tokens_per_fill / fill_interval).
    let bucket = TokenBucket::new(10, 5, Duration::from_secs(1), Instant::now());
    for _ in 0..10 {
        assert!(bucket.try_acquire(Instant::now()).allowed);
    }
    assert!(!bucket.try_acquire(Instant::now()).allowed);
    advance(Duration::from_millis(199)).await;
    assert!(!bucket.try_acquire(Instant::now()).allowed); // 0.995 tokens
    advance(Duration::from_millis(1)).await;
    assert!(bucket.try_acquire(Instant::now()).allowed); // exactly 1.0
    advance(Duration::from_secs(1)).await;
    assert_eq!(bucket.remaining(Instant::now()), 5);
    advance(Duration::from_secs(60)).await;
    assert_eq!(bucket.remaining(Instant::now()), 10);
}

#[tokio::test(start_paused = true)]
async fn x_ratelimit_headers_match_envoys_filter_test() {
    // Envoy's RequestRateLimitedXRateLimitHeaders: max_tokens 1, 1 per 1000s. After the one
    // token is taken: limit 1, remaining 0, reset 1000 (seconds until a token).
    let c = config(1, 1, Duration::from_secs(1000));
    let bucket = TokenBucket::from_config(&c, Instant::now());
    let first = decide(&c, &bucket, Instant::now(), always());
    assert_eq!(first, LimitOutcome::Pass);
    let h = x_ratelimit_headers(&c, &bucket, first, Instant::now());
    assert_eq!(header(&h, &X_RATELIMIT_LIMIT), "1");
    assert_eq!(header(&h, &X_RATELIMIT_REMAINING), "0");
    assert_eq!(header(&h, &X_RATELIMIT_RESET), "1000");
    let second = decide(&c, &bucket, Instant::now(), always());
    assert_eq!(second, LimitOutcome::Limited { enforced: true });
    assert_eq!(x_ratelimit_headers(&c, &bucket, second, Instant::now()).len(), 3);
}

#[tokio::test(start_paused = true)]
async fn reset_is_zero_while_tokens_remain_and_truncates_to_seconds() {
    // nextTokenAvailable is 0 with a whole token left, else ceil(fill_interval / tokens_per_fill)
    // in ms; the header is that divided by 1000 in integers, so sub-second steps read 0.
    let c = config(2, 1, Duration::from_millis(2500));
    let bucket = TokenBucket::from_config(&c, Instant::now());
    assert_eq!(bucket.try_acquire(Instant::now()).reset_after, Duration::ZERO);
    let empty = bucket.try_acquire(Instant::now());
    assert_eq!((empty.remaining, empty.reset_after), (0, Duration::from_millis(2500)));
    let h = x_ratelimit_headers(&c, &bucket, LimitOutcome::Pass, Instant::now());
    assert_eq!(header(&h, &X_RATELIMIT_RESET), "2");
    let fast = TokenBucket::new(1, 10, Duration::from_secs(1), Instant::now());
    assert_eq!(fast.try_acquire(Instant::now()).reset_after, Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn not_enabled_takes_no_token_and_counts_nothing() {
    // filter_enabled absent (0%): decodeHeaders returns before stats and the bucket.
    let c = LocalRateLimitConfig {
        filter_enabled_percent: 0.0,
        ..config(1, 1, Duration::from_secs(1))
    };
    let bucket = TokenBucket::from_config(&c, Instant::now());
    let stats = LocalRateLimitStats::default();
    for _ in 0..5 {
        let outcome = decide(&c, &bucket, Instant::now(), always());
        assert_eq!(outcome, LimitOutcome::NotEnabled);
        stats.record(outcome);
        assert!(x_ratelimit_headers(&c, &bucket, outcome, Instant::now()).is_empty());
    }
    assert_eq!(bucket.remaining(Instant::now()), 1);
    assert!(stats.named("test").iter().all(|(_, v)| *v == 0));
}

#[tokio::test(start_paused = true)]
async fn enabled_but_not_enforced_counts_and_passes() {
    // Over the limit and filter_enforced missed: rate_limited counts, enforced does not, request continues.
    let c = LocalRateLimitConfig {
        filter_enforced_percent: 0.0,
        ..config(1, 1, Duration::from_secs(1))
    };
    let bucket = TokenBucket::from_config(&c, Instant::now());
    let stats = LocalRateLimitStats::default();
    for _ in 0..3 {
        stats.record(decide(&c, &bucket, Instant::now(), always()));
    }
    let outcome = decide(&c, &bucket, Instant::now(), always());
    assert_eq!(outcome, LimitOutcome::Limited { enforced: false });
    assert!(!outcome.rejects());
    let named = stats.named("test");
    assert_eq!(named[0], ("test.http_local_rate_limit.enabled".to_string(), 3));
    assert_eq!(named[1], ("test.http_local_rate_limit.enforced".to_string(), 0));
    assert_eq!(named[2], ("test.http_local_rate_limit.rate_limited".to_string(), 2));
    assert_eq!(named[3], ("test.http_local_rate_limit.ok".to_string(), 1));
}

#[tokio::test(start_paused = true)]
async fn enforced_rejections_are_counted() {
    // Envoy's RequestOk test: two requests, one token: enabled 2, ok 1, rate_limited 1, enforced 1.
    let c = config(1, 1, Duration::from_secs(1000));
    let bucket = TokenBucket::from_config(&c, Instant::now());
    let stats = LocalRateLimitStats::default();
    for _ in 0..2 {
        stats.record(decide(&c, &bucket, Instant::now(), always()));
    }
    let values: Vec<u64> = stats.named("test").iter().map(|(_, v)| *v).collect();
    assert_eq!(values, vec![2, 1, 1, 1]);
}

#[tokio::test(start_paused = true)]
async fn fractions_use_random_modulo_denominator() {
    // featureEnabled: random % denominator < numerator; 50% hits below 500000 per million.
    let c = LocalRateLimitConfig {
        filter_enabled_percent: 50.0,
        ..config(100, 1, Duration::from_secs(1))
    };
    let bucket = TokenBucket::from_config(&c, Instant::now());
    assert_eq!(decide(&c, &bucket, Instant::now(), || 499_999), LimitOutcome::Pass);
    assert_eq!(
        decide(&c, &bucket, Instant::now(), || 500_000),
        LimitOutcome::NotEnabled
    );
    assert_eq!(
        decide(&c, &bucket, Instant::now(), || 1_000_000 + 3),
        LimitOutcome::Pass
    );
    assert!(fraction_hits(0.0001, 0) && !fraction_hits(0.0001, 1));
    assert!(!fraction_hits(0.0, 0));
}

#[tokio::test(start_paused = true)]
async fn headers_only_when_configured() {
    let c = LocalRateLimitConfig {
        enable_x_ratelimit_headers: false,
        ..config(1, 1, Duration::from_secs(1))
    };
    let bucket = TokenBucket::from_config(&c, Instant::now());
    assert!(x_ratelimit_headers(&c, &bucket, LimitOutcome::Pass, Instant::now()).is_empty());
}

#[test]
fn concurrent_requests_never_exceed_the_bucket() {
    // One bucket is shared by every worker: 8 threads x 100 requests get exactly max_tokens.
    let now = Instant::now();
    let bucket = Arc::new(TokenBucket::new(250, 1, Duration::from_secs(3600), now));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let bucket = bucket.clone();
            std::thread::spawn(move || (0..100).filter(|_| bucket.try_acquire(now).allowed).count())
        })
        .collect();
    let allowed: usize = threads.into_iter().map(|t| t.join().unwrap_or(0)).sum();
    assert_eq!(allowed, 250);
}
