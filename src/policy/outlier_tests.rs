//! Outlier detector tests under a paused clock; each states the Envoy behaviour it pins.

use super::*;
use tokio::time::advance;

fn host(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i], 8080))
}

fn hosts(n: u8) -> Vec<SocketAddr> {
    (1..=n).map(host).collect()
}

/// Envoy's defaults, but with a cap that lets a small test cluster eject.
fn permissive() -> OutlierConfig {
    OutlierConfig {
        max_ejection_percent: 100,
        ..OutlierConfig::default()
    }
}

fn report_n(d: &OutlierDetector, h: SocketAddr, outcome: Outcome, n: usize) -> Option<EjectionType> {
    let mut last = None;
    for _ in 0..n {
        last = d.report(h, outcome, Instant::now()).or(last);
    }
    last
}

/// Advances the paused clock to the next interval boundary and runs the timer, as the lead's loop will.
async fn tick(d: &OutlierDetector) -> TickSummary {
    let at = d.next_tick();
    advance(at.saturating_duration_since(Instant::now())).await;
    d.tick(Instant::now())
}

#[test]
fn defaults_and_validation_follow_the_proto() {
    // outlier_detection.proto defaults; absent max_ejection_time is max(300s, base_ejection_time).
    let c = OutlierConfig::default();
    assert_eq!(
        (
            c.consecutive_5xx,
            c.consecutive_gateway_failure,
            c.consecutive_local_origin_failure
        ),
        (5, 5, 5)
    );
    assert_eq!(
        (c.interval, c.base_ejection_time),
        (Duration::from_secs(10), Duration::from_secs(30))
    );
    assert_eq!(c.effective_max_ejection_time(), Duration::from_secs(300));
    assert_eq!(
        (
            c.max_ejection_percent,
            c.enforcing_consecutive_gateway_failure,
            c.enforcing_failure_percentage
        ),
        (10, 0, 0)
    );
    assert_eq!(
        (
            c.success_rate_minimum_hosts,
            c.success_rate_request_volume,
            c.success_rate_stdev_factor
        ),
        (5, 100, 1900)
    );
    assert_eq!(
        (c.failure_percentage_threshold, c.failure_percentage_request_volume),
        (85, 50)
    );
    assert!(c.validate().is_ok());
    let long_base = OutlierConfig {
        base_ejection_time: Duration::from_secs(400),
        ..c.clone()
    };
    assert_eq!(long_base.effective_max_ejection_time(), Duration::from_secs(400));

    let bad = OutlierConfig {
        max_ejection_percent: 101,
        ..c.clone()
    };
    assert_eq!(
        bad.validate().unwrap_err(),
        "outlier_detection.max_ejection_percent must be at most 100"
    );
    let bad = OutlierConfig {
        enforcing_failure_percentage_local_origin: 200,
        ..c.clone()
    };
    assert_eq!(
        bad.validate().unwrap_err(),
        "outlier_detection.enforcing_failure_percentage_local_origin must be at most 100"
    );
    let bad = OutlierConfig {
        interval: Duration::ZERO,
        ..c.clone()
    };
    assert_eq!(
        bad.validate().unwrap_err(),
        "outlier_detection.interval must be greater than 0"
    );
    // DetectorImpl::create rejects an explicit max below base.
    let bad = OutlierConfig {
        max_ejection_time: Some(Duration::from_secs(10)),
        ..c
    };
    assert_eq!(
        bad.validate().unwrap_err(),
        "outlier_detection.max_ejection_time cannot be smaller than base_ejection_time"
    );
}

#[tokio::test(start_paused = true)]
async fn consecutive_5xx_ejects_on_the_fifth_not_the_fourth() {
    // consecutive_5xx = 5: the fifth consecutive 5xx ejects (counter compared with ==).
    let d = OutlierDetector::new(permissive(), &hosts(2), Instant::now());
    assert_eq!(report_n(&d, host(1), Outcome::Http(500), 4), None);
    assert!(!d.is_ejected(host(1)));
    assert_eq!(
        d.report(host(1), Outcome::Http(500), Instant::now()),
        Some(EjectionType::Consecutive5xx)
    );
    assert!(d.is_ejected(host(1)));
    assert!(!d.is_ejected(host(2)));
    let s = d.stats();
    assert_eq!(
        (s.ejections_active, s.ejections_enforced_total, s.ejections_total),
        (1, 1, 1)
    );
    assert_eq!(
        (
            s.ejections_detected_consecutive_5xx,
            s.ejections_enforced_consecutive_5xx
        ),
        (1, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn a_success_in_between_resets_the_count() {
    // putHttpResponseCode: any non-5xx response resets consecutive_5xx.
    let d = OutlierDetector::new(permissive(), &hosts(2), Instant::now());
    report_n(&d, host(1), Outcome::Http(503), 4);
    d.report(host(1), Outcome::Http(404), Instant::now());
    assert_eq!(report_n(&d, host(1), Outcome::Http(503), 4), None);
    assert!(!d.is_ejected(host(1)));
    assert!(report_n(&d, host(1), Outcome::Http(503), 1).is_some());
}

#[tokio::test(start_paused = true)]
async fn ejection_lasts_base_time_and_ends_on_a_tick() {
    // checkHostForUneject runs only in the interval timer: a host ejected 5s into the interval
    // with base 30s is still ejected at t=30 (25s) and returns at the t=40 tick.
    let d = OutlierDetector::new(permissive(), &hosts(2), Instant::now());
    advance(Duration::from_secs(5)).await;
    report_n(&d, host(1), Outcome::Http(500), 5);
    for _ in 0..3 {
        assert!(tick(&d).await.unejected.is_empty());
        assert!(d.is_ejected(host(1)));
    }
    advance(Duration::from_secs(6)).await; // t=36: time is up, but no tick yet
    assert!(d.is_ejected(host(1)));
    assert_eq!(tick(&d).await.unejected, vec![host(1)]); // t=40
    assert!(!d.is_ejected(host(1)));
    assert_eq!(d.stats().ejections_active, 0);
}

#[tokio::test(start_paused = true)]
async fn second_ejection_lasts_twice_as_long() {
    // Ejection time = base_ejection_time * number of times ejected (eject_time_backoff).
    let config = OutlierConfig {
        interval: Duration::from_secs(1),
        ..permissive()
    };
    let d = OutlierDetector::new(config, &hosts(2), Instant::now());
    report_n(&d, host(1), Outcome::Http(500), 5);
    let start = Instant::now();
    while d.is_ejected(host(1)) {
        tick(&d).await;
    }
    assert_eq!(Instant::now() - start, Duration::from_secs(30));
    report_n(&d, host(1), Outcome::Http(500), 5);
    let start = Instant::now();
    while d.is_ejected(host(1)) {
        tick(&d).await;
    }
    assert_eq!(Instant::now() - start, Duration::from_secs(60));
    assert_eq!(d.num_ejections(host(1)), Some(2));
}

#[tokio::test(start_paused = true)]
async fn ejection_time_is_capped_by_max_ejection_time() {
    // min(base * backoff, max_ejection_time): base 10s, max 25s gives 10, 20, 25, 25.
    let config = OutlierConfig {
        interval: Duration::from_secs(1),
        base_ejection_time: Duration::from_secs(10),
        max_ejection_time: Some(Duration::from_secs(25)),
        ..permissive()
    };
    let d = OutlierDetector::new(config, &hosts(2), Instant::now());
    let mut lengths = Vec::new();
    for _ in 0..4 {
        report_n(&d, host(1), Outcome::Http(500), 5);
        let start = Instant::now();
        while d.is_ejected(host(1)) {
            tick(&d).await;
        }
        lengths.push((Instant::now() - start).as_secs());
    }
    assert_eq!(lengths, vec![10, 20, 25, 25]);
}

#[tokio::test(start_paused = true)]
async fn backoff_steps_down_for_each_healthy_interval() {
    // onIntervalTimer decrements eject_time_backoff for hosts not ejected and unejected at least an
    // interval ago, so after two healthy intervals a twice-ejected host is back to base time.
    let config = OutlierConfig {
        interval: Duration::from_secs(10),
        ..permissive()
    };
    let d = OutlierDetector::new(config, &hosts(2), Instant::now());
    report_n(&d, host(1), Outcome::Http(500), 5); // backoff 1, 30s
    while d.is_ejected(host(1)) {
        tick(&d).await;
    }
    report_n(&d, host(1), Outcome::Http(500), 5); // backoff 2, 60s
    while d.is_ejected(host(1)) {
        tick(&d).await;
    }
    tick(&d).await; // 10s healthy: backoff 1
    tick(&d).await; // 20s healthy: backoff 0
    tick(&d).await; // stays at 0
    report_n(&d, host(1), Outcome::Http(500), 5); // backoff 1 again
    let start = Instant::now();
    while d.is_ejected(host(1)) {
        tick(&d).await;
    }
    assert_eq!(Instant::now() - start, Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn default_ten_percent_ejects_nothing_in_a_three_host_cluster() {
    // ejectHost: 100 * (active + 1) / hosts <= max_ejection_percent. Since Envoy 1.27 the first
    // ejection is not exempt, so 33% > 10% overflows.
    let d = OutlierDetector::new(OutlierConfig::default(), &hosts(3), Instant::now());
    report_n(&d, host(1), Outcome::Http(500), 5);
    assert!(!d.is_ejected(host(1)));
    let s = d.stats();
    assert_eq!(
        (
            s.ejections_detected_consecutive_5xx,
            s.ejections_overflow,
            s.ejections_active
        ),
        (1, 1, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn always_eject_one_host_allows_one_but_not_two() {
    // always_eject_one_host: the cap is ignored only while nothing is ejected.
    let config = OutlierConfig {
        always_eject_one_host: true,
        ..OutlierConfig::default()
    };
    let d = OutlierDetector::new(config, &hosts(3), Instant::now());
    report_n(&d, host(1), Outcome::Http(500), 5);
    report_n(&d, host(2), Outcome::Http(500), 5);
    assert!(d.is_ejected(host(1)));
    assert!(!d.is_ejected(host(2)));
    assert_eq!(d.stats().ejections_overflow, 1);
}

#[tokio::test(start_paused = true)]
async fn fifty_percent_of_three_hosts_is_one_host() {
    // 100 * 1 / 3 = 33% <= 50 ejects; 100 * 2 / 3 = 67% > 50 overflows.
    let config = OutlierConfig {
        max_ejection_percent: 50,
        ..OutlierConfig::default()
    };
    let d = OutlierDetector::new(config, &hosts(3), Instant::now());
    for i in 1..=3 {
        report_n(&d, host(i), Outcome::Http(502), 5);
    }
    assert_eq!(d.ejected_hosts(), vec![host(1)]);
    // Hosts 2 and 3 each raise a gateway and a 5xx event; the cap is checked for every event,
    // before the enforcing roll, so that is four overflows.
    assert_eq!(d.stats().ejections_overflow, 4);
}

#[tokio::test(start_paused = true)]
async fn every_host_failing_ejects_all_at_one_hundred_percent() {
    // The cap is per cluster, not per priority; 100% lets every host go (panic routing is the LB's).
    let d = OutlierDetector::new(permissive(), &hosts(4), Instant::now());
    for i in 1..=4 {
        report_n(&d, host(i), Outcome::Http(500), 5);
    }
    assert_eq!(d.ejected_hosts(), hosts(4));
    assert_eq!(d.stats().ejections_active, 4);
}

#[tokio::test(start_paused = true)]
async fn enforcing_zero_detects_but_never_ejects() {
    // enforcing_consecutive_5xx = 0: the detection is counted, the counter reset, no ejection.
    let config = OutlierConfig {
        enforcing_consecutive_5xx: 0,
        ..permissive()
    };
    let d = OutlierDetector::new(config, &hosts(2), Instant::now());
    assert_eq!(report_n(&d, host(1), Outcome::Http(500), 10), None);
    assert!(!d.is_ejected(host(1)));
    let s = d.stats();
    assert_eq!(
        (
            s.ejections_detected_consecutive_5xx,
            s.ejections_enforced_consecutive_5xx
        ),
        (2, 0)
    );
    // ejections_total (deprecated) counts outliers that passed the cap, enforced or not.
    assert_eq!((s.ejections_total, s.ejections_enforced_total), (2, 0));
}

#[tokio::test(start_paused = true)]
async fn gateway_failures_are_detected_but_not_enforced_by_default() {
    // 502/503/504 bump both counters; gateway fires first but enforcing_consecutive_gateway_failure
    // defaults to 0, so the consecutive-5xx event is the one that ejects.
    let d = OutlierDetector::new(permissive(), &hosts(2), Instant::now());
    assert_eq!(
        report_n(&d, host(1), Outcome::Http(503), 5),
        Some(EjectionType::Consecutive5xx)
    );
    let s = d.stats();
    assert_eq!(s.ejections_detected_consecutive_gateway_failure, 1);
    assert_eq!(s.ejections_enforced_consecutive_gateway_failure, 0);
    assert_eq!(s.ejections_enforced_consecutive_5xx, 1);
}

#[tokio::test(start_paused = true)]
async fn non_gateway_5xx_resets_only_the_gateway_count() {
    // A 500 is a 5xx but not a gateway error: it resets consecutive_gateway_failure only.
    let config = OutlierConfig {
        consecutive_5xx: 100,
        enforcing_consecutive_gateway_failure: 100,
        ..permissive()
    };
    let d = OutlierDetector::new(config, &hosts(2), Instant::now());
    report_n(&d, host(1), Outcome::Http(504), 4);
    d.report(host(1), Outcome::Http(500), Instant::now());
    assert_eq!(report_n(&d, host(1), Outcome::Http(502), 4), None);
    assert_eq!(
        d.report(host(1), Outcome::Http(502), Instant::now()),
        Some(EjectionType::ConsecutiveGatewayFailure)
    );
}

#[tokio::test(start_paused = true)]
async fn local_origin_errors_count_as_5xx_without_split() {
    // Without split, LocalOriginConnectFailed is 503 and timeouts are 504; a connect success that
    // precedes an HTTP response maps to nothing, so it does not reset the 5xx count.
    let d = OutlierDetector::new(permissive(), &hosts(3), Instant::now());
    for outcome in [
        Outcome::ConnectFailure,
        Outcome::Timeout,
        Outcome::Reset,
        Outcome::LocalOriginSuccess,
    ] {
        d.report(host(1), outcome, Instant::now());
    }
    d.report(host(1), Outcome::ConnectFailure, Instant::now());
    assert_eq!(
        d.report(host(1), Outcome::Timeout, Instant::now()),
        Some(EjectionType::Consecutive5xx)
    );
    // LocalOriginConnectSuccessFinal (TCP proxy) maps to 200 and does reset.
    report_n(&d, host(2), Outcome::ConnectFailure, 4);
    d.report(host(2), Outcome::LocalOriginSuccessFinal, Instant::now());
    assert_eq!(report_n(&d, host(2), Outcome::ConnectFailure, 4), None);
}

#[tokio::test(start_paused = true)]
async fn split_local_origin_errors_have_their_own_counter() {
    // split_external_local_origin_errors: connect failures feed consecutive_local_origin_failure;
    // HTTP 5xx neither bump nor reset it, a local-origin success resets it.
    let config = OutlierConfig {
        split_external_local_origin_errors: true,
        ..permissive()
    };
    let d = OutlierDetector::new(config, &hosts(3), Instant::now());
    report_n(&d, host(1), Outcome::ConnectFailure, 4);
    d.report(host(1), Outcome::Http(200), Instant::now());
    d.report(host(1), Outcome::Http(500), Instant::now());
    assert_eq!(
        d.report(host(1), Outcome::Timeout, Instant::now()),
        Some(EjectionType::ConsecutiveLocalOriginFailure)
    );
    let s = d.stats();
    assert_eq!(s.ejections_enforced_consecutive_local_origin_failure, 1);
    assert_eq!(s.ejections_detected_consecutive_5xx, 0);

    report_n(&d, host(2), Outcome::Reset, 4);
    d.report(host(2), Outcome::LocalOriginSuccess, Instant::now());
    assert_eq!(report_n(&d, host(2), Outcome::Reset, 4), None);
    // ...and local-origin failures never reach the 5xx counter.
    report_n(&d, host(3), Outcome::Http(500), 4);
    report_n(&d, host(3), Outcome::ConnectFailure, 3);
    assert_eq!(
        d.report(host(3), Outcome::Http(500), Instant::now()),
        Some(EjectionType::Consecutive5xx)
    );
}

#[tokio::test(start_paused = true)]
async fn ejected_host_counts_reset_only_on_uneject() {
    // An ejected host's counter runs past the threshold without firing again; unejectHost resets
    // all consecutive counters, so it takes five fresh errors to eject it again.
    let config = OutlierConfig {
        interval: Duration::from_secs(30),
        ..permissive()
    };
    let d = OutlierDetector::new(config, &hosts(2), Instant::now());
    report_n(&d, host(1), Outcome::Http(500), 5);
    assert_eq!(report_n(&d, host(1), Outcome::Http(500), 7), None);
    assert_eq!(d.stats().ejections_detected_consecutive_5xx, 1);
    tick(&d).await;
    assert!(!d.is_ejected(host(1)));
    assert_eq!(report_n(&d, host(1), Outcome::Http(500), 4), None);
    assert!(report_n(&d, host(1), Outcome::Http(500), 1).is_some());
}

/// Reports `total` requests to `h`, the first `failures` of them 500s.
fn traffic(d: &OutlierDetector, h: SocketAddr, total: u32, failures: u32) {
    for i in 0..total {
        let code = if i < failures { 500 } else { 200 };
        d.report(h, Outcome::Http(code), Instant::now());
    }
}

/// Statistical detection only: consecutive thresholds of 0 never fire (Envoy compares with ==).
fn no_consecutive() -> OutlierConfig {
    OutlierConfig {
        consecutive_5xx: 0,
        consecutive_gateway_failure: 0,
        ..permissive()
    }
}

#[tokio::test(start_paused = true)]
async fn success_rate_ejects_the_outlier_among_five_hosts() {
    // Envoy's worked example: rates {50,100,100,100,100} -> mean 90, stdev 20, threshold 52.
    let d = OutlierDetector::new(no_consecutive(), &hosts(5), Instant::now());
    traffic(&d, host(1), 100, 50);
    for i in 2..=5 {
        traffic(&d, host(i), 100, 0);
    }
    let summary = tick(&d).await;
    assert_eq!(summary.ejected, vec![(host(1), EjectionType::SuccessRate)]);
    let s = d.stats();
    assert_eq!(
        (s.ejections_detected_success_rate, s.ejections_enforced_success_rate),
        (1, 1)
    );
    assert_eq!(s.ejections_success_rate, 1);
    // The next interval has no data: nothing more happens.
    assert!(tick(&d).await.ejected.is_empty());
}

#[tokio::test(start_paused = true)]
async fn success_rate_needs_minimum_hosts_and_volume() {
    // success_rate_minimum_hosts = 5 hosts with >= success_rate_request_volume (100) requests.
    let d = OutlierDetector::new(no_consecutive(), &hosts(4), Instant::now());
    traffic(&d, host(1), 100, 50);
    for i in 2..=4 {
        traffic(&d, host(i), 100, 0);
    }
    assert!(tick(&d).await.ejected.is_empty());

    let d = OutlierDetector::new(no_consecutive(), &hosts(5), Instant::now());
    traffic(&d, host(1), 100, 50);
    for i in 2..=4 {
        traffic(&d, host(i), 100, 0);
    }
    traffic(&d, host(5), 99, 0); // below volume: only four valid hosts
    assert!(tick(&d).await.ejected.is_empty());
    assert_eq!(d.stats().ejections_detected_success_rate, 0);
}

#[tokio::test(start_paused = true)]
async fn failure_percentage_ejects_at_or_above_threshold() {
    // Failure percentage: hosts with >= 50 requests, >= 5 such hosts, eject if failure% >= 85.
    let config = OutlierConfig {
        enforcing_failure_percentage: 100,
        enforcing_success_rate: 0,
        ..no_consecutive()
    };
    let d = OutlierDetector::new(config, &hosts(6), Instant::now());
    traffic(&d, host(1), 100, 85); // exactly 85%
    traffic(&d, host(2), 100, 84);
    for i in 3..=6 {
        traffic(&d, host(i), 50, 0);
    }
    let summary = tick(&d).await;
    assert_eq!(summary.ejected, vec![(host(1), EjectionType::FailurePercentage)]);
    let s = d.stats();
    assert_eq!(
        (
            s.ejections_detected_failure_percentage,
            s.ejections_enforced_failure_percentage
        ),
        (1, 1)
    );
    // Only two hosts reached success_rate_request_volume, so success rate did not run.
    assert_eq!(s.ejections_detected_success_rate, 0);
}

#[tokio::test(start_paused = true)]
async fn failure_percentage_is_off_by_default() {
    // enforcing_failure_percentage defaults to 0: detected, not ejected.
    let config = OutlierConfig {
        enforcing_success_rate: 0,
        ..no_consecutive()
    };
    let d = OutlierDetector::new(config, &hosts(5), Instant::now());
    traffic(&d, host(1), 60, 60);
    for i in 2..=5 {
        traffic(&d, host(i), 60, 0);
    }
    assert!(tick(&d).await.ejected.is_empty());
    assert_eq!(d.stats().ejections_detected_failure_percentage, 1);
}

#[tokio::test(start_paused = true)]
async fn local_origin_success_rate_with_split() {
    // With split, the local-origin window runs its own success-rate pass (SUCCESS_RATE_LOCAL_ORIGIN).
    let config = OutlierConfig {
        split_external_local_origin_errors: true,
        consecutive_local_origin_failure: 0,
        ..permissive()
    };
    let d = OutlierDetector::new(config, &hosts(5), Instant::now());
    for i in 1..=5 {
        for n in 0..100 {
            let outcome = if i == 1 && n % 2 == 0 {
                Outcome::ConnectFailure
            } else {
                Outcome::LocalOriginSuccess
            };
            d.report(host(i), outcome, Instant::now());
        }
    }
    assert_eq!(
        tick(&d).await.ejected,
        vec![(host(1), EjectionType::SuccessRateLocalOrigin)]
    );
    assert_eq!(d.stats().ejections_enforced_local_origin_success_rate, 1);
}

#[tokio::test(start_paused = true)]
async fn state_survives_update_hosts() {
    // Envoy's member-update callback only adds and removes monitors; remaining hosts keep counts.
    let d = OutlierDetector::new(permissive(), &hosts(3), Instant::now());
    report_n(&d, host(1), Outcome::Http(500), 4);
    report_n(&d, host(2), Outcome::Http(500), 5);
    assert_eq!(d.stats().ejections_active, 1);
    d.update_hosts(&[host(1), host(3), host(4)]);
    // host 2 was ejected and removed: it leaves ejections_active.
    assert_eq!(d.stats().ejections_active, 0);
    assert!(!d.is_ejected(host(2)));
    assert!(d.report(host(2), Outcome::Http(500), Instant::now()).is_none());
    // host 1 remembers its four failures.
    assert_eq!(
        d.report(host(1), Outcome::Http(500), Instant::now()),
        Some(EjectionType::Consecutive5xx)
    );
    // host 4 is new and clean; a re-added host 2 starts clean too.
    assert_eq!(report_n(&d, host(4), Outcome::Http(500), 4), None);
    d.update_hosts(&[host(1), host(2), host(3), host(4)]);
    assert!(!d.is_ejected(host(2)));
    assert_eq!(d.num_ejections(host(2)), Some(0));
    assert!(d.is_ejected(host(1)));
    assert_eq!(d.stats().ejections_active, 1);
}

#[tokio::test(start_paused = true)]
async fn jitter_extends_the_ejection_by_at_most_max_jitter() {
    // ejectHost draws jitter = random % (max_ejection_time_jitter_ms + 1) per ejection.
    let config = OutlierConfig {
        interval: Duration::from_millis(100),
        max_ejection_time_jitter: Duration::from_secs(3),
        ..permissive()
    };
    let d = OutlierDetector::new(config, &hosts(2), Instant::now());
    let base = Duration::from_secs(30);
    let mut longest = Duration::ZERO;
    for _ in 0..5 {
        report_n(&d, host(1), Outcome::Http(500), 5);
        let start = Instant::now();
        while d.is_ejected(host(1)) {
            tick(&d).await;
        }
        let took = Instant::now() - start;
        assert!(took >= base && took <= base + Duration::from_millis(3100), "{took:?}");
        longest = longest.max(took);
        // Healthy long enough for the backoff to decay back to zero.
        for _ in 0..20 {
            tick(&d).await;
        }
    }
    // Five draws all under 100ms would be a (1/30)^5 event.
    assert!(longest > base + Duration::from_millis(100), "{longest:?}");
}

#[tokio::test(start_paused = true)]
async fn unknown_hosts_are_ignored() {
    let d = OutlierDetector::new(permissive(), &hosts(1), Instant::now());
    assert_eq!(report_n(&d, host(9), Outcome::Http(500), 10), None);
    assert!(!d.is_ejected(host(9)));
    assert_eq!(d.stats(), OutlierStats::default());
}

#[test]
fn stat_names_are_envoys_and_unique() {
    let names: HashSet<&str> = OutlierStats::default().named().iter().map(|(n, _)| *n).collect();
    assert_eq!(names.len(), 20);
    assert!(names.contains("outlier_detection.ejections_enforced_consecutive_gateway_failure"));
    assert!(names.iter().all(|n| n.starts_with("outlier_detection.ejections_")));
}

#[test]
fn reports_from_many_threads_are_counted() {
    // Many request tasks report at once; the detector is Send + Sync and counts each failure once.
    fn assert_sync<T: Send + Sync>() {}
    assert_sync::<OutlierDetector>();
    let config = OutlierConfig {
        consecutive_5xx: 400,
        ..permissive()
    };
    let d = Arc::new(OutlierDetector::new(config, &hosts(1), Instant::now()));
    let now = Instant::now();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let d = d.clone();
            std::thread::spawn(move || {
                for _ in 0..100 {
                    d.report(host(1), Outcome::Http(500), now);
                }
            })
        })
        .collect();
    for t in threads {
        assert!(t.join().is_ok());
    }
    assert!(d.is_ejected(host(1)));
    assert_eq!(d.stats().ejections_detected_consecutive_5xx, 1);
}
