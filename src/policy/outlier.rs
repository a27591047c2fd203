//! Outlier detection for one cluster: Envoy's passive health checking (consecutive 5xx, gateway and
//! local-origin failures, success rate, failure percentage), keyed by endpoint address.
//! Pure bookkeeping: callers report results and drive `tick` on the interval; no sockets, no timers,
//! and panic-mode routing stays with the balancer, which only asks `is_ejected`.
//!
//! Follows envoy/source/common/upstream/outlier_detection_impl.cc (DetectorImpl,
//! DetectorHostMonitorImpl). Runtime-key overrides (`outlier_detection.*`), event logging and
//! `successful_active_health_check_uneject_host` are not modelled here.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use tokio::time::Instant;

pub use super::outlier_config::{EjectionType, Outcome, OutlierConfig, OutlierStats};

/// What one `tick` changed, for logging.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TickSummary {
    pub unejected: Vec<SocketAddr>,
    pub ejected: Vec<(SocketAddr, EjectionType)>,
}

/// One interval's request counts, packed so a report is a single atomic add and `take` reads both
/// halves at once: total in the high 32 bits, successes in the low 32 (Envoy's
/// SuccessRateAccumulatorBucket, swapped on each interval).
#[derive(Debug, Default)]
struct IntervalWindow(AtomicU64);

impl IntervalWindow {
    fn record(&self, success: bool) {
        self.0.fetch_add((1 << 32) | u64::from(success), Ordering::Relaxed);
    }

    /// (success rate in percent, request volume), or None without requests, as
    /// SuccessRateAccumulator::getSuccessRateAndVolume.
    fn take(&self) -> Option<(f64, u64)> {
        let packed = self.0.swap(0, Ordering::Relaxed);
        let total = packed >> 32;
        let success = (packed & 0xffff_ffff).min(total);
        (total > 0).then(|| (success as f64 * 100.0 / total as f64, total))
    }
}

/// Per-host state touched on the request path; everything here is atomic.
#[derive(Debug, Default)]
struct HostMonitor {
    ejected: AtomicBool,
    consecutive_5xx: AtomicU32,
    consecutive_gateway_failure: AtomicU32,
    consecutive_local_origin_failure: AtomicU32,
    external: IntervalWindow,
    local: IntervalWindow,
}

impl HostMonitor {
    fn reset_consecutive(&self) {
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway_failure.store(0, Ordering::Relaxed);
        self.consecutive_local_origin_failure.store(0, Ordering::Relaxed);
    }
}

/// Bumps a consecutive counter and says whether it just reached the threshold. Envoy compares with
/// `==`, so a threshold of 0 never fires and a counter that runs past it (host already ejected)
/// does not fire again until something resets it.
fn bump(counter: &AtomicU32, threshold: u32) -> bool {
    counter.fetch_add(1, Ordering::Relaxed).wrapping_add(1) == threshold
}

/// Per-host state touched only under the detector's lock.
#[derive(Debug, Default)]
struct HostEntry {
    monitor: Arc<HostMonitor>,
    num_ejections: u32,
    /// Envoy's eject_time_backoff: the multiplier on base_ejection_time.
    backoff: u32,
    last_ejection: Option<Instant>,
    last_unejection: Option<Instant>,
    jitter: Duration,
}

#[derive(Debug)]
struct DetectorState {
    hosts: HashMap<SocketAddr, HostEntry>,
    stats: OutlierStats,
    rng: fastrand::Rng,
    next_tick: Instant,
}

/// Outlier detector for one cluster. Shared by every request task of the cluster (`Arc` it).
#[derive(Debug)]
pub struct OutlierDetector {
    config: OutlierConfig,
    /// Read on every request; written only by `update_hosts`. Lock order: `hosts`, then `state`.
    hosts: RwLock<HashMap<SocketAddr, Arc<HostMonitor>>>,
    state: Mutex<DetectorState>,
    /// Bumped whenever a host's ejection state may have changed, so the
    /// balancer knows when to recount healthy hosts.
    epoch: AtomicU64,
}

impl OutlierDetector {
    /// Starts with every host clean; the first interval ends at `now + interval`, as Envoy arms its
    /// timer when the detector is created.
    pub fn new(config: OutlierConfig, hosts: &[SocketAddr], now: Instant) -> Self {
        let next_tick = now.checked_add(config.interval).unwrap_or(now);
        let state = DetectorState {
            hosts: HashMap::new(),
            stats: OutlierStats::default(),
            rng: fastrand::Rng::new(),
            next_tick,
        };
        let detector = OutlierDetector {
            config,
            hosts: RwLock::default(),
            state: Mutex::new(state),
            epoch: AtomicU64::new(0),
        };
        detector.update_hosts(hosts);
        detector
    }

    pub fn config(&self) -> &OutlierConfig {
        &self.config
    }

    /// Changes whenever ejections (or the host set) may have changed.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn bump_epoch(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// When the interval timer should next call `tick`.
    pub fn next_tick(&self) -> Instant {
        self.lock_state().next_tick
    }

    /// EDS membership change. As Envoy's member-update callback: remaining hosts keep their state,
    /// removed hosts are forgotten (and leave ejections_active if ejected), new hosts start clean.
    pub fn update_hosts(&self, hosts: &[SocketAddr]) {
        let wanted: HashSet<SocketAddr> = hosts.iter().copied().collect();
        let mut index = self.hosts.write().unwrap_or_else(PoisonError::into_inner);
        let mut state = self.lock_state();
        state.hosts.retain(|addr, _| wanted.contains(addr));
        index.retain(|addr, _| wanted.contains(addr));
        for addr in wanted {
            if let Entry::Vacant(slot) = state.hosts.entry(addr) {
                let entry = slot.insert(HostEntry::default());
                index.insert(addr, entry.monitor.clone());
            }
        }
        state.refresh_active();
        self.bump_epoch();
    }

    /// Whether the balancer must treat `host` as unhealthy. An ejection ends at the first `tick`
    /// after its time has passed, never between ticks: Envoy only unejects in its interval timer
    /// (checkHostForUneject). Unknown hosts are not ejected.
    pub fn is_ejected(&self, host: SocketAddr) -> bool {
        let index = self.hosts.read().unwrap_or_else(PoisonError::into_inner);
        index
            .get(&host)
            .is_some_and(|monitor| monitor.ejected.load(Ordering::Relaxed))
    }

    /// Records one attempt's result. Returns the ejection it caused, if any.
    pub fn report(&self, host: SocketAddr, outcome: Outcome, now: Instant) -> Option<EjectionType> {
        let monitor = {
            let index = self.hosts.read().unwrap_or_else(PoisonError::into_inner);
            index.get(&host)?.clone()
        };
        let mut fired = [None, None];
        if self.config.split_external_local_origin_errors {
            // putResultWithLocalExternalSplit: local-origin events have their own counter and
            // success-rate window; HTTP codes still go to the external counters.
            match outcome {
                Outcome::Http(code) => fired = self.put_http(&monitor, code),
                Outcome::LocalOriginSuccess | Outcome::LocalOriginSuccessFinal => {
                    monitor.local.record(true);
                    monitor.consecutive_local_origin_failure.store(0, Ordering::Relaxed);
                }
                Outcome::ConnectFailure | Outcome::Timeout | Outcome::Reset => {
                    monitor.local.record(false);
                    let threshold = self.config.consecutive_local_origin_failure;
                    if bump(&monitor.consecutive_local_origin_failure, threshold) {
                        fired[0] = Some(EjectionType::ConsecutiveLocalOriginFailure);
                    }
                }
            }
        } else {
            // putResultNoLocalExternalSplit + resultToHttpCode: the router reports resets and
            // connect failures as LocalOriginConnectFailed (503) and timeouts with the timeout
            // response code (504); a connect success before an HTTP response maps to nothing.
            let code = match outcome {
                Outcome::Http(code) => code,
                Outcome::LocalOriginSuccess => return None,
                Outcome::LocalOriginSuccessFinal => 200,
                Outcome::ConnectFailure | Outcome::Reset => 503,
                Outcome::Timeout => 504,
            };
            fired = self.put_http(&monitor, code);
        }
        if fired == [None, None] {
            return None;
        }
        let mut state = self.lock_state();
        let mut ejected = None;
        for kind in fired.into_iter().flatten() {
            if state.on_consecutive_error(&self.config, host, &monitor, kind, now) {
                ejected = Some(kind);
            }
        }
        if ejected.is_some() {
            self.bump_epoch();
        }
        ejected
    }

    /// putHttpResponseCode: 5xx bumps consecutive_5xx, 502/503/504 also bump the gateway counter
    /// (other 5xx reset it), anything else resets both. Gateway fires before 5xx, as in Envoy.
    fn put_http(&self, monitor: &HostMonitor, code: u16) -> [Option<EjectionType>; 2] {
        let mut fired = [None, None];
        if (500..600).contains(&code) {
            monitor.external.record(false);
            if (502..=504).contains(&code) {
                if bump(
                    &monitor.consecutive_gateway_failure,
                    self.config.consecutive_gateway_failure,
                ) {
                    fired[0] = Some(EjectionType::ConsecutiveGatewayFailure);
                }
            } else {
                monitor.consecutive_gateway_failure.store(0, Ordering::Relaxed);
            }
            if bump(&monitor.consecutive_5xx, self.config.consecutive_5xx) {
                fired[1] = Some(EjectionType::Consecutive5xx);
            }
        } else {
            monitor.external.record(true);
            monitor.consecutive_5xx.store(0, Ordering::Relaxed);
            monitor.consecutive_gateway_failure.store(0, Ordering::Relaxed);
        }
        fired
    }

    /// `tick` for an interval timer, unless another timer of the same
    /// detector already ran this interval (a detector kept across a config
    /// update may briefly have two: the old runtime's and the new one's).
    pub fn tick_if_due(&self, now: Instant) -> Option<TickSummary> {
        self.run_tick(now, true)
    }

    /// The interval timer (onIntervalTimer): uneject hosts whose time is up, close the interval's
    /// request windows, run success-rate and failure-percentage detection for external then local
    /// origin, and step down the backoff of hosts healthy for a whole interval.
    pub fn tick(&self, now: Instant) -> TickSummary {
        self.run_tick(now, false).unwrap_or_default()
    }

    /// `tick`; with `due_only`, nothing unless the interval is up, checked
    /// under the same lock as the tick itself.
    fn run_tick(&self, now: Instant, due_only: bool) -> Option<TickSummary> {
        let config = &self.config;
        let mut state = self.lock_state();
        if due_only && now < state.next_tick {
            return None;
        }
        let mut summary = TickSummary::default();
        let mut addrs: Vec<SocketAddr> = state.hosts.keys().copied().collect();
        addrs.sort_unstable();

        let max_time = config.effective_max_ejection_time();
        let mut external = Vec::with_capacity(addrs.len());
        let mut local = Vec::with_capacity(addrs.len());
        for addr in &addrs {
            let Some(entry) = state.hosts.get_mut(addr) else {
                continue;
            };
            if entry.monitor.ejected.load(Ordering::Relaxed) {
                // checkHostForUneject: min(base * backoff, max) + jitter <= now - last ejection.
                let ejected_for = config.base_ejection_time.saturating_mul(entry.backoff).min(max_time);
                let since = entry
                    .last_ejection
                    .map_or(Duration::MAX, |at| now.saturating_duration_since(at));
                if ejected_for.saturating_add(entry.jitter) <= since {
                    entry.monitor.ejected.store(false, Ordering::Relaxed);
                    // unejectHost resets the consecutive counters so a few new errors do not re-eject.
                    entry.monitor.reset_consecutive();
                    entry.last_unejection = Some(now);
                    summary.unejected.push(*addr);
                }
            }
            external.push((*addr, entry.monitor.external.take()));
            local.push((*addr, entry.monitor.local.take()));
        }
        state.refresh_active();

        let kinds = (EjectionType::SuccessRate, EjectionType::FailurePercentage);
        state.success_rate_ejections(config, &external, kinds, now, &mut summary);
        let kinds = (
            EjectionType::SuccessRateLocalOrigin,
            EjectionType::FailurePercentageLocalOrigin,
        );
        state.success_rate_ejections(config, &local, kinds, now, &mut summary);

        // Hosts not ejected and unejected at least an interval ago lose one step of backoff.
        for entry in state.hosts.values_mut() {
            let healthy_since = entry.last_unejection.map(|at| now.saturating_duration_since(at));
            if !entry.monitor.ejected.load(Ordering::Relaxed)
                && healthy_since.is_some_and(|d| d >= config.interval)
                && entry.backoff > 0
            {
                entry.backoff -= 1;
            }
        }
        state.next_tick = now.checked_add(config.interval).unwrap_or(now);
        if !summary.ejected.is_empty() || !summary.unejected.is_empty() {
            self.bump_epoch();
        }
        Some(summary)
    }

    pub fn stats(&self) -> OutlierStats {
        self.lock_state().stats.clone()
    }

    /// Hosts ejected right now, sorted.
    pub fn ejected_hosts(&self) -> Vec<SocketAddr> {
        let state = self.lock_state();
        let mut hosts: Vec<SocketAddr> = state
            .hosts
            .iter()
            .filter(|(_, entry)| entry.monitor.ejected.load(Ordering::Relaxed))
            .map(|(addr, _)| *addr)
            .collect();
        hosts.sort_unstable();
        hosts
    }

    /// How many times `host` has been ejected since it joined the cluster.
    pub fn num_ejections(&self, host: SocketAddr) -> Option<u32> {
        self.lock_state().hosts.get(&host).map(|entry| entry.num_ejections)
    }

    fn lock_state(&self) -> MutexGuard<'_, DetectorState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl DetectorState {
    fn refresh_active(&mut self) {
        let active = self
            .hosts
            .values()
            .filter(|e| e.monitor.ejected.load(Ordering::Relaxed))
            .count();
        self.stats.ejections_active = active as u64;
    }

    /// onConsecutiveErrorWorker. Returns whether the host was ejected.
    fn on_consecutive_error(
        &mut self,
        config: &OutlierConfig,
        host: SocketAddr,
        monitor: &Arc<HostMonitor>,
        kind: EjectionType,
        now: Instant,
    ) -> bool {
        // The host may have left the cluster (or been replaced) since the report started, and an
        // ejected host is not ejected again; Envoy then leaves the counter alone, too.
        match self.hosts.get(&host) {
            Some(entry) if Arc::ptr_eq(&entry.monitor, monitor) => {}
            _ => return false,
        }
        if monitor.ejected.load(Ordering::Relaxed) {
            return false;
        }
        self.stats.detected(kind);
        let ejected = self.eject_host(config, host, kind, now);
        let counter = match kind {
            EjectionType::Consecutive5xx => {
                self.stats.ejections_consecutive_5xx += 1;
                &monitor.consecutive_5xx
            }
            EjectionType::ConsecutiveGatewayFailure => &monitor.consecutive_gateway_failure,
            _ => &monitor.consecutive_local_origin_failure,
        };
        counter.store(0, Ordering::Relaxed);
        ejected
    }

    /// ejectHost: the max_ejection_percent cap, then the enforcing_* roll, then the ejection with
    /// its backoff and jitter. Returns whether the host was ejected.
    fn eject_host(&mut self, config: &OutlierConfig, host: SocketAddr, kind: EjectionType, now: Instant) -> bool {
        let total = self.hosts.len() as f64;
        let active = self.stats.ejections_active;
        // Since Envoy 1.27 (PR 27909) the cap counts the host about to be ejected, so with the
        // default 10% a cluster of fewer than 10 hosts ejects nothing; always_eject_one_host
        // (Envoy 1.31, PR 34796) restores "the first ejection is always allowed".
        let ejected_percent = 100.0 * (active + 1) as f64 / total;
        let mut should_eject = ejected_percent <= f64::from(config.max_ejection_percent.min(100));
        if config.always_eject_one_host {
            should_eject = active == 0 || should_eject;
        }
        if !should_eject {
            self.stats.ejections_overflow += 1;
            return false;
        }
        if matches!(kind, EjectionType::Consecutive5xx | EjectionType::SuccessRate) {
            self.stats.ejections_total += 1;
        }
        // featureEnabled(key, percent): random % 100 < percent; 0 detects but never ejects.
        if self.rng.u32(0..100) >= config.enforcing(kind).min(100) {
            return false;
        }
        let jitter_ms = u64::try_from(config.max_ejection_time_jitter.as_millis()).unwrap_or(u64::MAX);
        let jitter = Duration::from_millis(self.rng.u64(0..=jitter_ms));
        let Some(entry) = self.hosts.get_mut(&host) else {
            return false;
        };
        if entry.monitor.ejected.swap(true, Ordering::Relaxed) {
            // Envoy asserts a host is never ejected twice; with both success-rate and failure-
            // percentage enforcing, one tick could otherwise eject the same host twice.
            return false;
        }
        entry.num_ejections += 1;
        entry.last_ejection = Some(now);
        entry.jitter = jitter;
        // The multiplier grows while base * backoff < max + base, i.e. until it passes the cap.
        let base = config.base_ejection_time;
        if base.saturating_mul(entry.backoff) < config.effective_max_ejection_time().saturating_add(base) {
            entry.backoff += 1;
        }
        self.stats.ejections_active += 1;
        self.stats.enforced(kind);
        true
    }

    /// processSuccessRateEjections for one origin over the interval that just closed.
    fn success_rate_ejections(
        &mut self,
        config: &OutlierConfig,
        windows: &[(SocketAddr, Option<(f64, u64)>)],
        (sr_kind, fp_kind): (EjectionType, EjectionType),
        now: Instant,
        summary: &mut TickSummary,
    ) {
        let host_count = self.hosts.len() as u64;
        if host_count < u64::from(config.success_rate_minimum_hosts)
            && host_count < u64::from(config.failure_percentage_minimum_hosts)
        {
            return;
        }
        let mut success_rate_hosts = Vec::new();
        let mut failure_percentage_hosts = Vec::new();
        for (addr, window) in windows {
            let Some((rate, volume)) = window else { continue };
            // Hosts ejected when the pass starts are skipped.
            if self
                .hosts
                .get(addr)
                .is_none_or(|e| e.monitor.ejected.load(Ordering::Relaxed))
            {
                continue;
            }
            if *volume >= u64::from(config.success_rate_request_volume) {
                success_rate_hosts.push((*addr, *rate));
            }
            if *volume >= u64::from(config.failure_percentage_request_volume) {
                failure_percentage_hosts.push((*addr, *rate));
            }
        }

        if !success_rate_hosts.is_empty()
            && success_rate_hosts.len() as u64 >= u64::from(config.success_rate_minimum_hosts)
        {
            let factor = f64::from(config.success_rate_stdev_factor) / 1000.0;
            let threshold = success_rate_threshold(&success_rate_hosts, factor);
            for (addr, rate) in &success_rate_hosts {
                if *rate < threshold {
                    self.stats.ejections_success_rate += 1;
                    self.stats.detected(sr_kind);
                    if self.eject_host(config, *addr, sr_kind, now) {
                        summary.ejected.push((*addr, sr_kind));
                    }
                }
            }
        }
        if !failure_percentage_hosts.is_empty()
            && failure_percentage_hosts.len() as u64 >= u64::from(config.failure_percentage_minimum_hosts)
        {
            let threshold = f64::from(config.failure_percentage_threshold);
            for (addr, rate) in &failure_percentage_hosts {
                if 100.0 - rate >= threshold {
                    self.stats.detected(fp_kind);
                    if self.eject_host(config, *addr, fp_kind, now) {
                        summary.ejected.push((*addr, fp_kind));
                    }
                }
            }
        }
    }
}

/// successRateEjectionThreshold: mean - factor * population stdev of the hosts' success rates.
/// Envoy's example: {50, 100, 100, 100, 100} gives mean 90, stdev 20, threshold 52 at factor 1.9.
fn success_rate_threshold(hosts: &[(SocketAddr, f64)], factor: f64) -> f64 {
    let n = hosts.len() as f64;
    let mean = hosts.iter().map(|(_, rate)| rate).sum::<f64>() / n;
    let variance = hosts.iter().map(|(_, rate)| (rate - mean).powi(2)).sum::<f64>() / n;
    mean - factor * variance.sqrt()
}

#[cfg(test)]
#[path = "outlier_tests.rs"]
mod tests;
