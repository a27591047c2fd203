//! The `grpc-timeout` request header and the deadlines a request runs under,
//! as Envoy derives them from it and the route (router.cc
//! `FilterUtility::finalTimeout`/`setTimeoutHeaders`, conn_manager_impl.cc
//! `refreshDurationTimeout`, grpc/common.cc `getGrpcTimeout`/`toGrpcTimeout`).
//! Pure arithmetic; the caller arms the timers and rewrites the header.

use std::time::Duration;

/// The largest TimeoutValue: at most 8 digits (gRPC over HTTP/2 spec).
pub const MAX_GRPC_TIMEOUT_VALUE: u64 = 99_999_999;

/// Envoy's `RouteAction.timeout` when unset.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

/// Parses `grpc-timeout` as Envoy does: a TimeoutValue (absl `SimpleAtoi`:
/// surrounding ASCII whitespace and a sign allowed, the value 0..=99,999,999,
/// so leading zeros beyond 8 digits pass) and a unit `H`, `M`, `S`, `m`, `u`,
/// `n`. Envoy keeps milliseconds, rounding `u` and `n` values up, and so does
/// this. `None` for anything else: the header is then ignored.
pub fn parse(value: &[u8]) -> Option<Duration> {
    let (&unit, number) = value.split_last()?;
    let number = std::str::from_utf8(number)
        .ok()?
        .trim_matches(|c: char| c.is_ascii_whitespace());
    let digits = number.strip_prefix(['+', '-']).unwrap_or(number);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: i64 = number.parse().ok()?;
    let n = u64::try_from(n).ok().filter(|&n| n <= MAX_GRPC_TIMEOUT_VALUE)?;
    let ceil_ms = |n: u64, per_ms: u64| Duration::from_millis(n.div_ceil(per_ms));
    match unit {
        b'H' => Some(Duration::from_secs(n * 3600)),
        b'M' => Some(Duration::from_secs(n * 60)),
        b'S' => Some(Duration::from_secs(n)),
        b'm' => Some(Duration::from_millis(n)),
        b'u' => Some(ceil_ms(n, 1_000)),
        b'n' => Some(ceil_ms(n, 1_000_000)),
        _ => None,
    }
}

/// Formats a timeout as Envoy writes `grpc-timeout` (`toGrpcTimeout`): whole
/// milliseconds with unit `m`, switching to `S`, then `M`, then `H` (truncating)
/// while the value has more than 8 digits, and clipping at 99999999H.
pub fn encode(timeout: Duration) -> String {
    let mut value = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    let mut unit = 'm';
    if value > MAX_GRPC_TIMEOUT_VALUE {
        value /= 1000;
        unit = 'S';
    }
    while value > MAX_GRPC_TIMEOUT_VALUE {
        match unit {
            'S' => unit = 'M',
            'M' => unit = 'H',
            _ => {
                value = MAX_GRPC_TIMEOUT_VALUE;
                break;
            }
        }
        value /= 60;
    }
    format!("{value}{unit}")
}

/// `RouteAction.MaxStreamDuration`. Setting it at all switches the route to
/// Envoy's "new timeouts": the route's `timeout` (and `max_grpc_timeout`) no
/// longer apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MaxStreamDuration {
    /// `max_stream_duration`: `None` falls back to the connection manager's;
    /// `Some(0)` means no limit.
    pub max: Option<Duration>,
    /// When set, a request's `grpc-timeout` is the limit, capped at this
    /// (0 = no cap).
    pub grpc_timeout_header_max: Option<Duration>,
    /// Taken off the `grpc-timeout` value; an offset at or past it leaves 0.
    pub grpc_timeout_header_offset: Option<Duration>,
}

/// A route's timeout fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RouteTimeouts {
    /// The route timeout in force: the translator fills in Envoy's 15 s
    /// default for an unset field; `None` is an explicit 0 (no timeout).
    pub timeout: Option<Duration>,
    pub max_stream_duration: Option<MaxStreamDuration>,
    /// Deprecated `RouteAction.max_grpc_timeout` (0 = no cap): for gRPC
    /// requests the route timeout becomes `grpc-timeout`, capped by it.
    pub max_grpc_timeout: Option<Duration>,
    /// Deprecated `RouteAction.grpc_timeout_offset`.
    pub grpc_timeout_offset: Option<Duration>,
}

/// The request facts the deadlines depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GrpcRequest {
    /// `content-type: application/grpc*`.
    pub is_grpc: bool,
    /// The parsed `grpc-timeout` header, if valid.
    pub grpc_timeout: Option<Duration>,
}

/// The two timers Envoy runs for a request, and the header it sends upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Deadlines {
    /// The router's global timeout, counted from when the downstream request
    /// is complete. On expiry: 504 "upstream request timeout", flag UT.
    pub route: Option<Duration>,
    /// The connection manager's max-stream-duration timer, counted from the
    /// start of the stream. On expiry: 504 if the request was complete else
    /// 408, body "downstream duration timeout", flag DT. `Some(0)` fires at once.
    pub stream: Option<Duration>,
    /// Rewrite the upstream request's `grpc-timeout` to this (`encode` it);
    /// `None` leaves the header as it came.
    pub grpc_timeout_header: Option<Duration>,
    /// Remove the request's `grpc-timeout`: Envoy does when the route's
    /// `max_stream_duration: 0` disables the connection manager's timer for a
    /// gRPC request (`refreshDurationTimeout`).
    pub strip_grpc_timeout_header: bool,
}

/// The deadlines Envoy sets for a request on `route`. `hcm_max_stream_duration`
/// is the connection manager's `common_http_protocol_options.max_stream_duration`.
/// The legacy `grpc-timeout` rewrite of the expected (per-try) timeout is left
/// to the caller: see `expected_timeout`.
pub fn deadlines(route: &RouteTimeouts, hcm_max_stream_duration: Option<Duration>, request: GrpcRequest) -> Deadlines {
    let nonzero = |d: Option<Duration>| d.filter(|d| !d.is_zero());
    let Some(msd) = route.max_stream_duration else {
        // Old timeouts: the route timeout, or for gRPC with max_grpc_timeout,
        // the header's value capped by it; the stream timer is the HCM's.
        let route_timeout = match route.max_grpc_timeout {
            Some(max) if request.is_grpc => legacy_grpc_timeout(max, route.grpc_timeout_offset, request.grpc_timeout),
            _ => nonzero(route.timeout),
        };
        return Deadlines {
            route: route_timeout,
            stream: nonzero(hcm_max_stream_duration),
            grpc_timeout_header: None,
            strip_grpc_timeout_header: false,
        };
    };
    // New timeouts: the router has no global timeout of its own.
    let stream = match (request.grpc_timeout, msd.grpc_timeout_header_max) {
        (Some(mut timeout), Some(cap)) => {
            if !cap.is_zero() && timeout > cap {
                timeout = cap;
            }
            if let (false, Some(offset)) = (timeout.is_zero(), msd.grpc_timeout_header_offset) {
                timeout = timeout.saturating_sub(offset);
            }
            Some(timeout)
        }
        _ => match msd.max {
            Some(max) => nonzero(Some(max)),
            None => nonzero(hcm_max_stream_duration),
        },
    };
    Deadlines {
        route: None,
        stream,
        grpc_timeout_header: stream.filter(|_| request.is_grpc),
        strip_grpc_timeout_header: request.is_grpc && stream.is_none() && nonzero(hcm_max_stream_duration).is_some(),
    }
}

/// The route timeout for a gRPC request under the deprecated
/// `max_grpc_timeout`: the header's value (absent = infinite), less the offset
/// when that leaves more than 0, capped at `max_grpc_timeout` unless it is 0.
pub fn legacy_grpc_timeout(
    max_grpc_timeout: Duration,
    grpc_timeout_offset: Option<Duration>,
    grpc_timeout: Option<Duration>,
) -> Option<Duration> {
    let mut timeout = grpc_timeout.unwrap_or(Duration::ZERO);
    if let Some(offset) = grpc_timeout_offset {
        if offset < timeout {
            timeout -= offset;
        }
    }
    if !max_grpc_timeout.is_zero() && (timeout.is_zero() || timeout > max_grpc_timeout) {
        timeout = max_grpc_timeout;
    }
    Some(timeout).filter(|t| !t.is_zero())
}

/// The timeout an attempt may expect (Envoy's `setTimeoutHeaders`): the
/// per-try timeout, else the route timeout, never past what is left of the
/// route timeout after `elapsed` (at least 1 ms). Envoy sends it as
/// `x-envoy-expected-rq-timeout-ms` and, on routes with `max_grpc_timeout`,
/// as `grpc-timeout`. `None`: no timeout to send.
pub fn expected_timeout(route: Option<Duration>, per_try: Option<Duration>, elapsed: Duration) -> Option<Duration> {
    let route = route.filter(|d| !d.is_zero());
    let expected = per_try.filter(|d| !d.is_zero()).or(route)?;
    match route {
        Some(global) if elapsed >= global => Some(Duration::from_millis(1)),
        Some(global) => Some(expected.min(global - elapsed)),
        None => Some(expected),
    }
}

/// The earliest deadline for a request (route timer or stream timer), with no
/// connection-manager stream limit, for a caller that needs a single number.
pub fn effective_timeout(
    route_timeout: Option<Duration>,
    max_stream_duration: Option<MaxStreamDuration>,
    grpc_timeout: Option<Duration>,
) -> Option<Duration> {
    let route = RouteTimeouts {
        timeout: route_timeout,
        max_stream_duration,
        ..RouteTimeouts::default()
    };
    let d = deadlines(
        &route,
        None,
        GrpcRequest {
            is_grpc: true,
            grpc_timeout,
        },
    );
    match (d.route, d.stream) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }
    const fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    // Envoy's getGrpcTimeout: value 0..=99999999 with unit H/M/S/m/u/n, u and
    // n rounded up to whole milliseconds; anything else ignores the header.
    #[test]
    fn parse_table() {
        let valid: [(&str, Duration); 16] = [
            ("1H", s(3600)),
            ("2M", s(120)),
            ("3S", s(3)),
            ("250m", ms(250)),
            ("1000u", ms(1)),
            ("1001u", ms(2)),
            ("1u", ms(1)),
            ("1n", ms(1)),
            ("2000000n", ms(2)),
            ("0S", Duration::ZERO),
            ("99999999S", s(99_999_999)),
            ("99999999H", s(99_999_999 * 3600)),
            // absl::SimpleAtoi: leading zeros, whitespace and a sign pass.
            ("000000001S", s(1)),
            (" 5 S", s(5)),
            ("+7m", ms(7)),
            ("-0m", Duration::ZERO),
        ];
        for (text, want) in valid {
            assert_eq!(parse(text.as_bytes()), Some(want), "{text:?}");
        }
        let invalid = [
            "",
            "S",
            "m",
            "123456789S",
            "100000000m",
            "10",
            "10s",
            "10x",
            "1.5S",
            "-1S",
            "+S",
            "1 2S",
            "abcS",
            "9223372036854775808S",
            "5\u{e9}",
        ];
        for text in invalid {
            assert_eq!(parse(text.as_bytes()), None, "{text:?}");
        }
        assert_eq!(parse(b"\xff5S"), None);
    }

    // Envoy's toGrpcTimeout: milliseconds until more than 8 digits, then
    // seconds, minutes, hours (truncating), clipped at 99999999H.
    #[test]
    fn encode_table() {
        let table = [
            (Duration::ZERO, "0m"),
            (ms(1), "1m"),
            (Duration::from_micros(1500), "1m"),
            (ms(99_999_999), "99999999m"),
            (ms(100_000_000), "100000S"),
            (s(99_999_999), "99999999S"),
            (s(100_000_000), "1666666M"),
            (s(5_999_999_940), "99999999M"),
            (s(6_000_000_060), "1666666H"),
            (Duration::MAX, "99999999H"),
        ];
        for (d, want) in table {
            assert_eq!(encode(d), want, "{d:?}");
        }
        for text in ["250m", "3S", "120000S"] {
            assert_eq!(
                parse(encode(parse(text.as_bytes()).unwrap()).as_bytes()),
                parse(text.as_bytes())
            );
        }
    }

    fn grpc(timeout: Option<Duration>) -> GrpcRequest {
        GrpcRequest {
            is_grpc: true,
            grpc_timeout: timeout,
        }
    }

    // Envoy without max_stream_duration on the route: the route timeout runs
    // (0 = none) and the stream timer is the connection manager's.
    #[test]
    fn old_timeouts() {
        let route = RouteTimeouts {
            timeout: Some(DEFAULT_ROUTE_TIMEOUT),
            ..RouteTimeouts::default()
        };
        let d = deadlines(&route, Some(s(60)), grpc(Some(s(1))));
        assert_eq!(
            d,
            Deadlines {
                route: Some(s(15)),
                stream: Some(s(60)),
                grpc_timeout_header: None,
                strip_grpc_timeout_header: false,
            }
        );
        let disabled = RouteTimeouts {
            timeout: Some(Duration::ZERO),
            ..route
        };
        assert_eq!(
            deadlines(&disabled, Some(Duration::ZERO), grpc(None)),
            Deadlines::default()
        );
    }

    // Envoy's deprecated max_grpc_timeout: grpc-timeout (absent = infinite)
    // less the offset if that leaves more than 0, capped unless the cap is 0;
    // only for gRPC requests.
    #[test]
    fn legacy_max_grpc_timeout() {
        assert_eq!(legacy_grpc_timeout(s(10), None, Some(s(3))), Some(s(3)));
        assert_eq!(legacy_grpc_timeout(s(10), None, Some(s(30))), Some(s(10)));
        assert_eq!(legacy_grpc_timeout(s(10), None, None), Some(s(10)));
        assert_eq!(legacy_grpc_timeout(Duration::ZERO, None, None), None);
        assert_eq!(legacy_grpc_timeout(Duration::ZERO, None, Some(s(30))), Some(s(30)));
        assert_eq!(legacy_grpc_timeout(s(10), Some(ms(500)), Some(s(3))), Some(ms(2500)));
        assert_eq!(legacy_grpc_timeout(Duration::ZERO, Some(s(5)), Some(s(3))), Some(s(3)));
        let route = RouteTimeouts {
            timeout: Some(s(15)),
            max_grpc_timeout: Some(s(10)),
            ..RouteTimeouts::default()
        };
        assert_eq!(deadlines(&route, None, grpc(Some(s(3)))).route, Some(s(3)));
        let http = GrpcRequest {
            is_grpc: false,
            grpc_timeout: Some(s(3)),
        };
        assert_eq!(deadlines(&route, None, http).route, Some(s(15)));
    }

    // Envoy's refreshDurationTimeout: with grpc_timeout_header_max the
    // grpc-timeout header is the stream limit, capped (0 = no cap), less the
    // offset (floored at 0), and the header is rewritten to it; the route
    // timeout no longer applies.
    #[test]
    fn new_timeouts_with_grpc_header() {
        let msd = MaxStreamDuration {
            max: Some(s(30)),
            grpc_timeout_header_max: Some(s(10)),
            grpc_timeout_header_offset: None,
        };
        let route = RouteTimeouts {
            timeout: Some(s(15)),
            max_stream_duration: Some(msd),
            ..RouteTimeouts::default()
        };
        let d = deadlines(&route, None, grpc(Some(s(3))));
        assert_eq!(
            d,
            Deadlines {
                route: None,
                stream: Some(s(3)),
                grpc_timeout_header: Some(s(3)),
                strip_grpc_timeout_header: false,
            }
        );
        assert_eq!(deadlines(&route, None, grpc(Some(s(60)))).stream, Some(s(10)));
        let uncapped = RouteTimeouts {
            max_stream_duration: Some(MaxStreamDuration {
                grpc_timeout_header_max: Some(Duration::ZERO),
                ..msd
            }),
            ..route
        };
        assert_eq!(deadlines(&uncapped, None, grpc(Some(s(60)))).stream, Some(s(60)));
        let offset = RouteTimeouts {
            max_stream_duration: Some(MaxStreamDuration {
                grpc_timeout_header_offset: Some(ms(500)),
                ..msd
            }),
            ..route
        };
        assert_eq!(deadlines(&offset, None, grpc(Some(s(3)))).stream, Some(ms(2500)));
        assert_eq!(
            deadlines(&offset, None, grpc(Some(ms(400)))).stream,
            Some(Duration::ZERO)
        );
        // A zero header is a zero limit, not "none".
        assert_eq!(
            deadlines(&route, None, grpc(Some(Duration::ZERO))).stream,
            Some(Duration::ZERO)
        );
        // Not gRPC: the timer still follows the header, the header is left alone.
        let http = GrpcRequest {
            is_grpc: false,
            grpc_timeout: Some(s(3)),
        };
        assert_eq!(
            deadlines(&route, None, http),
            Deadlines {
                route: None,
                stream: Some(s(3)),
                grpc_timeout_header: None,
                strip_grpc_timeout_header: false,
            }
        );
    }

    // Envoy: without grpc-timeout (or without grpc_timeout_header_max) the
    // stream limit is max_stream_duration (0 = none), else the connection
    // manager's; never the route timeout.
    #[test]
    fn new_timeouts_without_grpc_header() {
        let msd = MaxStreamDuration {
            max: Some(s(30)),
            grpc_timeout_header_max: Some(s(10)),
            grpc_timeout_header_offset: None,
        };
        let route = RouteTimeouts {
            timeout: Some(s(15)),
            max_stream_duration: Some(msd),
            ..RouteTimeouts::default()
        };
        let d = deadlines(&route, Some(s(99)), grpc(None));
        assert_eq!(
            d,
            Deadlines {
                route: None,
                stream: Some(s(30)),
                grpc_timeout_header: Some(s(30)),
                strip_grpc_timeout_header: false,
            }
        );
        let no_header_max = RouteTimeouts {
            max_stream_duration: Some(MaxStreamDuration {
                grpc_timeout_header_max: None,
                ..msd
            }),
            ..route
        };
        assert_eq!(deadlines(&no_header_max, None, grpc(Some(s(3)))).stream, Some(s(30)));
        let zero = RouteTimeouts {
            max_stream_duration: Some(MaxStreamDuration {
                max: Some(Duration::ZERO),
                ..msd
            }),
            ..route
        };
        assert_eq!(
            deadlines(&zero, Some(s(99)), grpc(None)),
            Deadlines {
                strip_grpc_timeout_header: true,
                ..Deadlines::default()
            },
            "max_stream_duration 0 turns the connection manager's timer off, and grpc-timeout goes"
        );
        assert_eq!(deadlines(&zero, None, grpc(None)), Deadlines::default());
        let unset = RouteTimeouts {
            max_stream_duration: Some(MaxStreamDuration::default()),
            ..route
        };
        assert_eq!(deadlines(&unset, Some(s(99)), grpc(None)).stream, Some(s(99)));
        assert_eq!(deadlines(&unset, None, grpc(None)), Deadlines::default());
    }

    // Envoy's setTimeoutHeaders: the per-try timeout else the route timeout,
    // capped by what is left of the route timeout, 1 ms once it is spent.
    #[test]
    fn expected_timeouts() {
        assert_eq!(expected_timeout(Some(s(15)), None, Duration::ZERO), Some(s(15)));
        assert_eq!(expected_timeout(Some(s(15)), Some(s(2)), Duration::ZERO), Some(s(2)));
        assert_eq!(expected_timeout(Some(s(15)), Some(s(2)), s(14)), Some(s(1)));
        assert_eq!(expected_timeout(Some(s(15)), None, s(20)), Some(ms(1)));
        assert_eq!(expected_timeout(None, Some(s(2)), s(20)), Some(s(2)));
        assert_eq!(expected_timeout(None, None, Duration::ZERO), None);
    }

    // The single earliest deadline: route timeout under old timeouts, the
    // stream limit under new ones.
    #[test]
    fn effective_timeout_picks_the_timer_in_force() {
        assert_eq!(effective_timeout(Some(s(15)), None, Some(s(3))), Some(s(15)));
        assert_eq!(effective_timeout(None, None, Some(s(3))), None);
        let msd = MaxStreamDuration {
            max: None,
            grpc_timeout_header_max: Some(Duration::ZERO),
            grpc_timeout_header_offset: None,
        };
        assert_eq!(effective_timeout(Some(s(15)), Some(msd), Some(s(3))), Some(s(3)));
        assert_eq!(effective_timeout(Some(s(15)), Some(msd), None), None);
    }

    // A stream limit of 0 fires at once: under a paused clock a timer armed
    // with the computed limit expires before any time passes.
    #[tokio::test(start_paused = true)]
    async fn zero_stream_limit_expires_immediately() {
        let msd = MaxStreamDuration {
            grpc_timeout_header_max: Some(s(10)),
            grpc_timeout_header_offset: Some(s(1)),
            ..MaxStreamDuration::default()
        };
        let route = RouteTimeouts {
            max_stream_duration: Some(msd),
            ..RouteTimeouts::default()
        };
        let limit = deadlines(&route, None, grpc(parse(b"500m"))).stream.unwrap();
        let start = tokio::time::Instant::now();
        let r = tokio::time::timeout(limit, std::future::pending::<()>()).await;
        assert!(r.is_err());
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
