//! Fault injection tests with deterministic randomness and a paused clock; each states the Envoy
//! behaviour it pins.

use super::*;
use tokio::time::Instant;

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(HeaderName::from_static(name), HeaderValue::from_static(value));
    }
    map
}

fn fixed_delay(ms: u64, percent: FractionalPercent) -> FaultConfig {
    FaultConfig {
        delay: Some(FaultDelay {
            kind: DelayKind::Fixed(Duration::from_millis(ms)),
            percent,
        }),
        ..FaultConfig::default()
    }
}

fn abort(kind: AbortKind, percent: FractionalPercent) -> FaultConfig {
    FaultConfig {
        abort: Some(FaultAbort { kind, percent }),
        ..FaultConfig::default()
    }
}

/// A random source that yields `values` in turn.
fn seq(values: &[u64]) -> impl FnMut() -> u64 + '_ {
    let mut i = 0;
    move || {
        let v = values.get(i).copied().unwrap_or(0);
        i += 1;
        v
    }
}

fn run(config: &FaultConfig, h: &HeaderMap, random: u64) -> FaultDecision {
    decide(config, h, None, || random, 0)
}

#[test]
fn percentages_are_random_modulo_denominator() {
    // evaluateFractionalPercent: random % denominator < numerator.
    let c = fixed_delay(100, FractionalPercent::hundred(10));
    assert_eq!(run(&c, &HeaderMap::new(), 9).delay, Some(Duration::from_millis(100)));
    assert_eq!(run(&c, &HeaderMap::new(), 10).delay, None);
    assert_eq!(run(&c, &HeaderMap::new(), 109).delay, Some(Duration::from_millis(100)));
    let c = fixed_delay(100, FractionalPercent::ten_thousand(1));
    assert!(run(&c, &HeaderMap::new(), 10_000).delay.is_some());
    assert!(run(&c, &HeaderMap::new(), 10_001).delay.is_none());
    let c = abort(AbortKind::Http(503), FractionalPercent::million(250_000));
    assert_eq!(
        run(&c, &HeaderMap::new(), 249_999).abort,
        Some(Abort::Http(StatusCode::SERVICE_UNAVAILABLE))
    );
    assert_eq!(run(&c, &HeaderMap::new(), 250_000).abort, None);
}

#[test]
fn an_absent_percentage_never_fires() {
    // FaultDelay.percentage / FaultAbort.percentage default to 0/HUNDRED.
    let c = fixed_delay(100, FractionalPercent::default());
    assert_eq!(run(&c, &HeaderMap::new(), 0), FaultDecision::default());
}

#[test]
fn delay_then_abort_each_draw_a_random_number() {
    // Delay is decided first, then the abort; each percentage check draws its own number.
    let c = FaultConfig {
        delay: Some(FaultDelay {
            kind: DelayKind::Fixed(Duration::from_secs(1)),
            percent: FractionalPercent::hundred(50),
        }),
        abort: Some(FaultAbort {
            kind: AbortKind::Http(500),
            percent: FractionalPercent::hundred(50),
        }),
        ..FaultConfig::default()
    };
    let d = decide(&c, &HeaderMap::new(), None, seq(&[10, 90]), 0);
    assert_eq!((d.delay, d.abort), (Some(Duration::from_secs(1)), None));
    let d = decide(&c, &HeaderMap::new(), None, seq(&[90, 10]), 0);
    assert_eq!(
        (d.delay, d.abort),
        (None, Some(Abort::Http(StatusCode::INTERNAL_SERVER_ERROR)))
    );
}

#[test]
fn sub_millisecond_fixed_delay_is_no_delay() {
    // Envoy reads fixed_delay in whole milliseconds and only delays when it is > 0ms.
    let c = FaultConfig {
        delay: Some(FaultDelay {
            kind: DelayKind::Fixed(Duration::from_micros(900)),
            percent: FractionalPercent::hundred(100),
        }),
        ..FaultConfig::default()
    };
    assert_eq!(run(&c, &HeaderMap::new(), 0).delay, None);
}

#[test]
fn header_controlled_delay_reads_milliseconds() {
    // header_delay: x-envoy-fault-delay-request in ms; missing, invalid or 0 means no delay.
    let c = FaultConfig {
        delay: Some(FaultDelay {
            kind: DelayKind::HeaderControlled,
            percent: FractionalPercent::hundred(100),
        }),
        ..FaultConfig::default()
    };
    let d = run(&c, &headers(&[("x-envoy-fault-delay-request", "200")]), 0);
    assert_eq!(d.delay, Some(Duration::from_millis(200)));
    assert_eq!(
        run(&c, &headers(&[("x-envoy-fault-delay-request", " +75 ")]), 0).delay,
        Some(Duration::from_millis(75))
    );
    for value in ["abc", "-5", "0", "1.5"] {
        let h = headers(&[("x-envoy-fault-delay-request", value)]);
        assert_eq!(run(&c, &h, 0).delay, None, "{value}");
    }
    assert_eq!(run(&c, &HeaderMap::new(), 0).delay, None);
    // Only the first value of an untrusted header is used.
    let h = headers(&[
        ("x-envoy-fault-delay-request", "10"),
        ("x-envoy-fault-delay-request", "5000"),
    ]);
    assert_eq!(run(&c, &h, 0).delay, Some(Duration::from_millis(10)));
}

#[test]
fn percentage_header_can_only_lower_the_configured_percentage() {
    // HeaderPercentageProvider: min(header numerator, configured numerator), same denominator.
    let c = FaultConfig {
        delay: Some(FaultDelay {
            kind: DelayKind::HeaderControlled,
            percent: FractionalPercent::hundred(50),
        }),
        ..FaultConfig::default()
    };
    let raise = headers(&[
        ("x-envoy-fault-delay-request", "100"),
        ("x-envoy-fault-delay-request-percentage", "100"),
    ]);
    assert!(run(&c, &raise, 49).delay.is_some());
    assert!(run(&c, &raise, 50).delay.is_none());
    let lower = headers(&[
        ("x-envoy-fault-delay-request", "100"),
        ("x-envoy-fault-delay-request-percentage", "10"),
    ]);
    assert!(run(&c, &lower, 9).delay.is_some());
    assert!(run(&c, &lower, 10).delay.is_none());
    let junk = headers(&[
        ("x-envoy-fault-delay-request", "100"),
        ("x-envoy-fault-delay-request-percentage", "x"),
    ]);
    assert!(run(&c, &junk, 49).delay.is_some());
}

#[test]
fn percentage_headers_do_not_touch_fixed_faults() {
    // FixedDelayProvider / FixedAbortProvider ignore the request's headers entirely.
    let c = abort(AbortKind::Http(503), FractionalPercent::hundred(100));
    let h = headers(&[
        ("x-envoy-fault-abort-request-percentage", "0"),
        ("x-envoy-fault-abort-request", "418"),
    ]);
    assert_eq!(run(&c, &h, 0).abort, Some(Abort::Http(StatusCode::SERVICE_UNAVAILABLE)));
}

#[test]
fn header_controlled_abort_http_then_grpc() {
    // header_abort: an HTTP status in [200, 600) wins; otherwise x-envoy-fault-abort-grpc-request
    // gives a gRPC abort answered as HTTP 200 + grpc-status.
    let c = abort(AbortKind::HeaderControlled, FractionalPercent::hundred(100));
    let d = run(&c, &headers(&[("x-envoy-fault-abort-request", "429")]), 0);
    assert_eq!(d.abort, Some(Abort::Http(StatusCode::TOO_MANY_REQUESTS)));
    for value in ["199", "600", "oops"] {
        assert_eq!(
            run(&c, &headers(&[("x-envoy-fault-abort-request", value)]), 0).abort,
            None,
            "{value}"
        );
    }
    let both = headers(&[
        ("x-envoy-fault-abort-request", "503"),
        ("x-envoy-fault-abort-grpc-request", "14"),
    ]);
    assert_eq!(
        run(&c, &both, 0).abort,
        Some(Abort::Http(StatusCode::SERVICE_UNAVAILABLE))
    );
    let grpc = headers(&[
        ("x-envoy-fault-abort-request", "700"),
        ("x-envoy-fault-abort-grpc-request", "14"),
    ]);
    let a = run(&c, &grpc, 0).abort;
    assert_eq!(a, Some(Abort::Grpc(14)));
    assert_eq!(
        a.map(|a| (a.http_status(), a.grpc_status())),
        Some((StatusCode::OK, Some(14)))
    );
    // The abort percentage header lowers header aborts, gRPC ones included.
    let lowered = headers(&[
        ("x-envoy-fault-abort-grpc-request", "14"),
        ("x-envoy-fault-abort-request-percentage", "0"),
    ]);
    assert_eq!(run(&c, &lowered, 0).abort, None);
}

#[test]
fn fixed_grpc_abort() {
    // grpc_status: HTTP 200 with grpc-status, no HTTP status configured.
    let c = abort(AbortKind::Grpc(8), FractionalPercent::hundred(100));
    assert_eq!(run(&c, &HeaderMap::new(), 0).abort, Some(Abort::Grpc(8)));
}

#[test]
fn max_active_faults_overflow() {
    // tryIncActiveFaults: at the limit, each attempted fault counts faults_overflow and is skipped;
    // below it, the request is charged once and may get both delay and abort.
    let c = FaultConfig {
        delay: Some(FaultDelay {
            kind: DelayKind::Fixed(Duration::from_millis(5)),
            percent: FractionalPercent::hundred(100),
        }),
        abort: Some(FaultAbort {
            kind: AbortKind::Http(503),
            percent: FractionalPercent::hundred(100),
        }),
        max_active_faults: Some(2),
        ..FaultConfig::default()
    };
    let full = decide(&c, &HeaderMap::new(), None, || 0, 2);
    assert_eq!(
        full,
        FaultDecision {
            delay: None,
            abort: None,
            overflowed: 2
        }
    );
    assert!(!full.is_fault());
    let room = decide(&c, &HeaderMap::new(), None, || 0, 1);
    assert_eq!(
        (room.delay.is_some(), room.abort.is_some(), room.overflowed),
        (true, true, 0)
    );
    // Unlimited when absent.
    let c = FaultConfig {
        max_active_faults: None,
        ..c
    };
    assert!(decide(&c, &HeaderMap::new(), None, || 0, u64::MAX - 1).is_fault());
}

#[tokio::test(start_paused = true)]
async fn active_fault_gauge_follows_the_guard_through_a_delay() {
    // active_faults rises when a fault starts and falls when the delay ends without an abort.
    let c = fixed_delay(1500, FractionalPercent::hundred(100));
    let active = ActiveFaults::default();
    let stats = FaultStats::default();
    let decision = decide(&c, &HeaderMap::new(), None, || 0, active.current());
    stats.record(&decision);
    let guard = decision.is_fault().then(|| active.enter());
    assert_eq!(active.current(), 1);
    let start = Instant::now();
    if let Some(delay) = decision.delay {
        tokio::time::sleep(delay).await;
    }
    drop(guard);
    assert_eq!(Instant::now() - start, Duration::from_millis(1500));
    assert_eq!(active.current(), 0);
    let named = stats.named("http.ingress.", &active);
    assert_eq!(named[0], ("http.ingress.fault.delays_injected".to_string(), 1));
    assert_eq!(named[1], ("http.ingress.fault.aborts_injected".to_string(), 0));
    assert_eq!(named[2], ("http.ingress.fault.faults_overflow".to_string(), 0));
    assert_eq!(named[3], ("http.ingress.fault.active_faults".to_string(), 0));
}

#[test]
fn headers_cluster_and_node_must_match() {
    // matchesTargetUpstreamCluster, matchesDownstreamNodes and the header matchers gate everything.
    let base = abort(AbortKind::Http(503), FractionalPercent::hundred(100));
    let c = FaultConfig {
        headers: vec![(HeaderName::from_static("x-canary"), HeaderValue::from_static("1"))],
        ..base.clone()
    };
    assert!(!run(&c, &HeaderMap::new(), 0).is_fault());
    assert!(!run(&c, &headers(&[("x-canary", "2")]), 0).is_fault());
    assert!(run(&c, &headers(&[("x-canary", "1")]), 0).is_fault());
    // Repeated headers are matched as their comma-joined values.
    assert!(!run(&c, &headers(&[("x-canary", "1"), ("x-canary", "1")]), 0).is_fault());

    let c = FaultConfig {
        upstream_cluster: Some("reviews".into()),
        ..base.clone()
    };
    assert!(decide(&c, &HeaderMap::new(), Some("reviews"), || 0, 0).is_fault());
    assert!(!decide(&c, &HeaderMap::new(), Some("ratings"), || 0, 0).is_fault());
    assert!(!decide(&c, &HeaderMap::new(), None, || 0, 0).is_fault());

    let c = FaultConfig {
        downstream_nodes: vec!["node-a".into()],
        ..base
    };
    assert!(!run(&c, &HeaderMap::new(), 0).is_fault());
    assert!(run(&c, &headers(&[("x-envoy-downstream-service-node", "node-a")]), 0).is_fault());
    assert!(!run(&c, &headers(&[("x-envoy-downstream-service-node", "node-b")]), 0).is_fault());
}

#[test]
fn validation_names_the_field() {
    assert!(FaultConfig::default().validate().is_ok());
    let bad = abort(AbortKind::Http(600), FractionalPercent::hundred(1));
    assert_eq!(bad.validate().unwrap_err(), "abort.http_status must be in [200, 600)");
    let bad = abort(AbortKind::Http(199), FractionalPercent::hundred(1));
    assert_eq!(bad.validate().unwrap_err(), "abort.http_status must be in [200, 600)");
    let bad = abort(
        AbortKind::Grpc(2),
        FractionalPercent {
            numerator: 1,
            denominator: 1000,
        },
    );
    assert_eq!(
        bad.validate().unwrap_err(),
        "abort.percentage.denominator must be 100, 10000 or 1000000"
    );
    let bad = fixed_delay(0, FractionalPercent::hundred(1));
    assert_eq!(bad.validate().unwrap_err(), "delay.fixed_delay must be greater than 0");
    assert!(abort(AbortKind::Http(200), FractionalPercent::hundred(1))
        .validate()
        .is_ok());
}
