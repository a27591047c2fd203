//! Envoy's HTTP fault injection filter (extensions.filters.http.fault.v3.HTTPFault): which delay
//! and abort a request gets, header-controlled faults included, the max_active_faults gauge and the
//! filter's stats. Deciding only: the tower layer sleeps and sends the local reply.
//! Not modelled (translate must reject or ignore as noted): response_rate_limit, the `fault.http.*`
//! runtime overrides, per-downstream-cluster stats, and header matchers other than exact value.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

pub const X_ENVOY_FAULT_ABORT_REQUEST: HeaderName = HeaderName::from_static("x-envoy-fault-abort-request");
pub const X_ENVOY_FAULT_ABORT_REQUEST_PERCENTAGE: HeaderName =
    HeaderName::from_static("x-envoy-fault-abort-request-percentage");
pub const X_ENVOY_FAULT_ABORT_GRPC_REQUEST: HeaderName = HeaderName::from_static("x-envoy-fault-abort-grpc-request");
pub const X_ENVOY_FAULT_DELAY_REQUEST: HeaderName = HeaderName::from_static("x-envoy-fault-delay-request");
pub const X_ENVOY_FAULT_DELAY_REQUEST_PERCENTAGE: HeaderName =
    HeaderName::from_static("x-envoy-fault-delay-request-percentage");
pub const X_ENVOY_DOWNSTREAM_SERVICE_NODE: HeaderName = HeaderName::from_static("x-envoy-downstream-service-node");

/// Body of the abort's local reply, as Envoy sends it.
pub const FAULT_ABORT_BODY: &str = "fault filter abort";

/// Envoy's `type.v3.FractionalPercent`. The proto default (field absent) is 0/100: never.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FractionalPercent {
    pub numerator: u32,
    /// 100 (HUNDRED), 10000 (TEN_THOUSAND) or 1000000 (MILLION).
    pub denominator: u32,
}

impl Default for FractionalPercent {
    fn default() -> Self {
        FractionalPercent::hundred(0)
    }
}

impl FractionalPercent {
    pub const fn hundred(numerator: u32) -> Self {
        FractionalPercent {
            numerator,
            denominator: 100,
        }
    }

    pub const fn ten_thousand(numerator: u32) -> Self {
        FractionalPercent {
            numerator,
            denominator: 10_000,
        }
    }

    pub const fn million(numerator: u32) -> Self {
        FractionalPercent {
            numerator,
            denominator: 1_000_000,
        }
    }

    /// evaluateFractionalPercent: `random % denominator < numerator` (a numerator above the
    /// denominator is always true).
    pub fn hits(&self, random: u64) -> bool {
        self.denominator != 0 && random % u64::from(self.denominator) < u64::from(self.numerator)
    }

    fn validate(&self, field: &str) -> Result<(), String> {
        match self.denominator {
            100 | 10_000 | 1_000_000 => Ok(()),
            _ => Err(format!("{field}.denominator must be 100, 10000 or 1000000")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DelayKind {
    /// `fixed_delay`.
    Fixed(Duration),
    /// `header_delay`: milliseconds from x-envoy-fault-delay-request.
    HeaderControlled,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultDelay {
    pub kind: DelayKind,
    pub percent: FractionalPercent,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AbortKind {
    /// `http_status`, in [200, 600).
    Http(u16),
    /// `grpc_status`: the reply is HTTP 200 with this grpc-status.
    Grpc(u32),
    /// `header_abort`: x-envoy-fault-abort-request, else x-envoy-fault-abort-grpc-request.
    HeaderControlled,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultAbort {
    pub kind: AbortKind,
    pub percent: FractionalPercent,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultConfig {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
    /// None: unlimited.
    pub max_active_faults: Option<u32>,
    /// `headers`, restricted to exact-value matchers: all must match for the filter to act.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Only requests routed to this cluster are faulted.
    pub upstream_cluster: Option<String>,
    /// Only requests whose x-envoy-downstream-service-node is one of these are faulted.
    pub downstream_nodes: Vec<String>,
}

impl FaultConfig {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(delay) = &self.delay {
            delay.percent.validate("delay.percentage")?;
            if delay.kind == DelayKind::Fixed(Duration::ZERO) {
                return Err("delay.fixed_delay must be greater than 0".into());
            }
        }
        if let Some(abort) = &self.abort {
            abort.percent.validate("abort.percentage")?;
            if let AbortKind::Http(status) = abort.kind {
                if !(200..600).contains(&status) {
                    return Err("abort.http_status must be in [200, 600)".into());
                }
            }
        }
        Ok(())
    }
}

/// The abort to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abort {
    Http(StatusCode),
    /// sendLocalReply(200, ..., grpc_status): HTTP 200 carrying this grpc-status.
    Grpc(u32),
}

impl Abort {
    pub fn http_status(&self) -> StatusCode {
        match self {
            Abort::Http(status) => *status,
            Abort::Grpc(_) => StatusCode::OK,
        }
    }

    pub fn grpc_status(&self) -> Option<u32> {
        match self {
            Abort::Http(_) => None,
            Abort::Grpc(status) => Some(*status),
        }
    }
}

/// The faults to inject: first the delay, then the abort.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultDecision {
    pub delay: Option<Duration>,
    pub abort: Option<Abort>,
    /// Faults refused by max_active_faults; each refusal counts one faults_overflow.
    pub overflowed: u32,
}

impl FaultDecision {
    /// Whether the request becomes an active fault (take an [`ActiveFaults`] guard).
    pub fn is_fault(&self) -> bool {
        self.delay.is_some() || self.abort.is_some()
    }
}

/// FaultFilter::decodeHeaders. Draws one random number per percentage check, delay first.
/// `active_faults` is the gauge's current value: as tryIncActiveFaults, a request is charged one
/// active fault however many faults it gets, and only its first fault is checked against
/// max_active_faults (fuzzily, without compare-and-swap, as Envoy). Envoy decides the abort only
/// after the delay has elapsed; deciding it now draws from the same distribution.
pub fn decide(
    config: &FaultConfig,
    headers: &HeaderMap,
    route_cluster: Option<&str>,
    mut rand: impl FnMut() -> u64,
    active_faults: u64,
) -> FaultDecision {
    if !applies(config, headers, route_cluster) {
        return FaultDecision::default();
    }
    let mut charge = Charge {
        active: active_faults,
        max: config.max_active_faults.map_or(u64::MAX, u64::from),
        charged: false,
        overflowed: 0,
    };
    let delay = delay_duration(config, headers, &mut rand).filter(|_| charge.try_charge());
    let abort = abort_status(config, headers, &mut rand).filter(|_| charge.try_charge());
    FaultDecision {
        delay,
        abort,
        overflowed: charge.overflowed,
    }
}

/// upstream_cluster, downstream_nodes and headers must all match before anything is rolled.
fn applies(config: &FaultConfig, headers: &HeaderMap, route_cluster: Option<&str>) -> bool {
    if let Some(cluster) = &config.upstream_cluster {
        if route_cluster != Some(cluster.as_str()) {
            return false;
        }
    }
    if !config.downstream_nodes.is_empty() {
        let node = headers
            .get(&X_ENVOY_DOWNSTREAM_SERVICE_NODE)
            .and_then(|v| v.to_str().ok());
        if !node.is_some_and(|node| config.downstream_nodes.iter().any(|n| n == node)) {
            return false;
        }
    }
    // HeaderUtility::matchHeaders: a repeated header is matched as its values joined with ",".
    config.headers.iter().all(|(name, want)| {
        let values: Vec<&[u8]> = headers.get_all(name).iter().map(HeaderValue::as_bytes).collect();
        !values.is_empty() && values.join(&b","[..]) == want.as_bytes()
    })
}

struct Charge {
    active: u64,
    max: u64,
    charged: bool,
    overflowed: u32,
}

impl Charge {
    fn try_charge(&mut self) -> bool {
        if self.charged {
            return true;
        }
        if self.active >= self.max {
            self.overflowed += 1;
            return false;
        }
        self.charged = true;
        true
    }
}

/// isDelayEnabled + delayDuration: the percentage roll, then the duration, which must be at least
/// 1ms (Envoy works in whole milliseconds and skips a 0ms delay).
fn delay_duration(config: &FaultConfig, headers: &HeaderMap, rand: &mut impl FnMut() -> u64) -> Option<Duration> {
    let delay = config.delay.as_ref()?;
    let percent = match delay.kind {
        DelayKind::Fixed(_) => delay.percent,
        DelayKind::HeaderControlled => header_percent(headers, &X_ENVOY_FAULT_DELAY_REQUEST_PERCENTAGE, delay.percent),
    };
    if !percent.hits(rand()) {
        return None;
    }
    let ms = match delay.kind {
        DelayKind::Fixed(duration) => u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
        DelayKind::HeaderControlled => parse_header::<u64>(headers, &X_ENVOY_FAULT_DELAY_REQUEST)?,
    };
    (ms > 0).then(|| Duration::from_millis(ms))
}

/// isAbortEnabled + abortStatus: the percentage roll, then the status. A header-controlled abort
/// takes x-envoy-fault-abort-request when it is a number in [200, 600), otherwise
/// x-envoy-fault-abort-grpc-request; with neither there is no abort.
fn abort_status(config: &FaultConfig, headers: &HeaderMap, rand: &mut impl FnMut() -> u64) -> Option<Abort> {
    let abort = config.abort.as_ref()?;
    let percent = match abort.kind {
        AbortKind::HeaderControlled => header_percent(headers, &X_ENVOY_FAULT_ABORT_REQUEST_PERCENTAGE, abort.percent),
        _ => abort.percent,
    };
    if !percent.hits(rand()) {
        return None;
    }
    match abort.kind {
        AbortKind::Http(status) => StatusCode::from_u16(status).ok().map(Abort::Http),
        AbortKind::Grpc(status) => Some(Abort::Grpc(status)),
        AbortKind::HeaderControlled => {
            let http =
                parse_header::<u16>(headers, &X_ENVOY_FAULT_ABORT_REQUEST).filter(|code| (200..600).contains(code));
            match http.and_then(|code| StatusCode::from_u16(code).ok()) {
                Some(status) => Some(Abort::Http(status)),
                None => parse_header::<u32>(headers, &X_ENVOY_FAULT_ABORT_GRPC_REQUEST).map(Abort::Grpc),
            }
        }
    }
}

/// HeaderPercentageProvider: the header's numerator (same denominator) can only lower the
/// configured percentage; a missing or non-numeric header keeps it.
fn header_percent(headers: &HeaderMap, name: &HeaderName, configured: FractionalPercent) -> FractionalPercent {
    match parse_header::<u32>(headers, name) {
        Some(numerator) => FractionalPercent {
            numerator: numerator.min(configured.numerator),
            ..configured
        },
        None => configured,
    }
}

/// absl::SimpleAtoi on the first value of an untrusted header: surrounding whitespace and a
/// leading '+' are accepted, anything else that is not a number is ignored.
fn parse_header<T: std::str::FromStr>(headers: &HeaderMap, name: &HeaderName) -> Option<T> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// The `active_faults` gauge shared by every request under one filter config.
#[derive(Debug, Clone, Default)]
pub struct ActiveFaults(Arc<AtomicU64>);

impl ActiveFaults {
    pub fn current(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Charges one active fault until the guard drops. Hold it for the delay and the abort; Envoy
    /// releases it when the delay ends without an abort, or when the stream is destroyed.
    pub fn enter(&self) -> ActiveFaultGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        ActiveFaultGuard(self.0.clone())
    }
}

#[derive(Debug)]
pub struct ActiveFaultGuard(Arc<AtomicU64>);

impl Drop for ActiveFaultGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `<prefix>fault.*` counters (the prefix is the connection manager's, e.g. `http.ingress.`).
#[derive(Debug, Default)]
pub struct FaultStats {
    delays_injected: AtomicU64,
    aborts_injected: AtomicU64,
    faults_overflow: AtomicU64,
}

impl FaultStats {
    pub fn record(&self, decision: &FaultDecision) {
        if decision.delay.is_some() {
            self.delays_injected.fetch_add(1, Ordering::Relaxed);
        }
        if decision.abort.is_some() {
            self.aborts_injected.fetch_add(1, Ordering::Relaxed);
        }
        self.faults_overflow
            .fetch_add(u64::from(decision.overflowed), Ordering::Relaxed);
    }

    /// (full stat name, value), with the gauge `active_faults` read from `active`.
    pub fn named(&self, prefix: &str, active: &ActiveFaults) -> [(String, u64); 4] {
        let name = |stat: &str| format!("{prefix}fault.{stat}");
        [
            (name("delays_injected"), self.delays_injected.load(Ordering::Relaxed)),
            (name("aborts_injected"), self.aborts_injected.load(Ordering::Relaxed)),
            (name("faults_overflow"), self.faults_overflow.load(Ordering::Relaxed)),
            (name("active_faults"), active.current()),
        ]
    }
}

#[cfg(test)]
#[path = "fault_tests.rs"]
mod tests;
