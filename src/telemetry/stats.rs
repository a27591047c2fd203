//! Counters and gauges with Envoy's names, rendered for Prometheus (in
//! `prometheus.rs`) the way Envoy's `/stats/prometheus` does
//! (`envoy_cluster_upstream_rq_total{envoy_cluster_name="x"}`), so existing
//! dashboards keep working. Hot-path updates are relaxed atomics.

use std::sync::{
    atomic::{AtomicI64, AtomicU64, Ordering::Relaxed},
    Arc, Mutex,
};

use crate::policy::{
    fault::{ActiveFaults, FaultStats},
    local_ratelimit::LocalRateLimitStats,
};

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    #[inline]
    pub fn dec(&self) {
        self.0.fetch_sub(1, Relaxed);
    }
    pub fn set(&self, v: i64) {
        self.0.store(v, Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }
}

/// Decrements a gauge when dropped: "active" gauges stay right on every exit path.
pub struct ActiveGuard<'a>(&'a Gauge);

impl<'a> ActiveGuard<'a> {
    pub fn new(g: &'a Gauge) -> Self {
        g.inc();
        ActiveGuard(g)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Per HTTP connection manager (`http.<stat_prefix>.*`).
#[derive(Debug, Default)]
pub struct HttpStats {
    pub prefix: String,
    pub downstream_cx_total: Counter,
    pub downstream_cx_active: Gauge,
    pub downstream_cx_http1_total: Counter,
    pub downstream_cx_http2_total: Counter,
    pub downstream_cx_protocol_error: Counter,
    pub downstream_cx_upgrades_total: Counter,
    pub downstream_rq_total: Counter,
    pub downstream_rq_active: Gauge,
    pub downstream_rq_http1_total: Counter,
    pub downstream_rq_http2_total: Counter,
    pub downstream_rq_xx: [Counter; 5],
    pub no_route: Counter,
    pub no_cluster: Counter,
    pub rq_direct_response: Counter,
    pub downstream_rq_timeout: Counter,
    /// Streams ended by the stream idle timeout.
    pub downstream_rq_idle_timeout: Counter,
    /// Streams ended by their max duration.
    pub downstream_rq_max_duration_reached: Counter,
}

impl HttpStats {
    pub fn response(&self, status: u16) {
        if let Some(c) = class(status).and_then(|i| self.downstream_rq_xx.get(i)) {
            c.inc();
        }
    }
}

/// Per listener (`listener.<address>.*`).
#[derive(Debug, Default)]
pub struct ListenerStats {
    pub address: String,
    pub downstream_cx_total: Counter,
    pub downstream_cx_active: Gauge,
}

/// Per cluster (`cluster.<name>.*`).
#[derive(Debug, Default)]
pub struct ClusterStats {
    pub name: String,
    pub upstream_cx_total: Counter,
    pub upstream_cx_active: Gauge,
    pub upstream_cx_http1_total: Counter,
    pub upstream_cx_http2_total: Counter,
    pub upstream_cx_connect_fail: Counter,
    pub upstream_cx_connect_timeout: Counter,
    pub upstream_cx_none_healthy: Counter,
    pub upstream_cx_protocol_error: Counter,
    pub upstream_cx_rx_bytes_total: Counter,
    pub upstream_cx_tx_bytes_total: Counter,
    pub upstream_rq_total: Counter,
    pub upstream_rq_active: Gauge,
    pub upstream_rq_xx: [Counter; 5],
    pub upstream_rq_timeout: Counter,
    pub upstream_rq_rx_reset: Counter,
    pub upstream_cx_overflow: Counter,
    /// Connections closed for reaching `max_requests_per_connection`.
    pub upstream_cx_max_requests: Counter,
    pub upstream_rq_pending_overflow: Counter,
    /// Requests refused by `max_requests` (Envoy 1.38+; before, they counted as pending overflow).
    pub upstream_rq_active_overflow: Counter,
    /// Requests that waited in a pool for a connection or stream.
    pub upstream_rq_pending_total: Counter,
    pub upstream_rq_pending_active: Gauge,
    /// Pending requests failed because a connection to their host failed.
    pub upstream_rq_pending_failure_eject: Counter,
    /// Requests gone (timeout, client reset) before obtaining a connection.
    pub upstream_rq_cancelled: Counter,
    pub upstream_rq_per_try_timeout: Counter,
    pub upstream_rq_retry: Counter,
    pub upstream_rq_retry_success: Counter,
    pub upstream_rq_retry_overflow: Counter,
    pub upstream_rq_retry_limit_exceeded: Counter,
    pub upstream_rq_retry_backoff_exponential: Counter,
    pub retry_or_shadow_abandoned: Counter,
    /// Picks made in panic mode (a priority below `healthy_panic_threshold`).
    pub lb_healthy_panic: Counter,
    pub membership_total: Gauge,
    pub membership_healthy: Gauge,
}

impl ClusterStats {
    pub fn response(&self, status: u16) {
        if let Some(c) = class(status).and_then(|i| self.upstream_rq_xx.get(i)) {
            c.inc();
        }
    }
}

/// Per TCP proxy (`tcp.<stat_prefix>.*`).
#[derive(Debug, Default)]
pub struct TcpStats {
    pub prefix: String,
    pub downstream_cx_total: Counter,
    pub downstream_cx_no_route: Counter,
    pub downstream_cx_rx_bytes_total: Counter,
    pub downstream_cx_tx_bytes_total: Counter,
    pub idle_timeout: Counter,
    pub upstream_flush_active: Gauge,
}

/// The fault filter of one connection manager (`http.<stat_prefix>.fault.*`). As in Envoy, where
/// they belong to the filter's config, per-route fault configs count here too and share the
/// `active_faults` gauge that `max_active_faults` is checked against.
#[derive(Debug, Default)]
pub struct FaultFilterStats {
    /// The connection manager's stat_prefix.
    pub prefix: String,
    pub counters: FaultStats,
    pub active: ActiveFaults,
}

/// One local rate limit `stat_prefix` (`<stat_prefix>.http_local_rate_limit.*`); configs with the
/// same prefix share the counters, as Envoy's stats are shared by name.
#[derive(Debug, Default)]
pub struct LocalRateLimitFilterStats {
    pub prefix: String,
    pub counters: LocalRateLimitStats,
}

pub(super) fn class(status: u16) -> Option<usize> {
    match status {
        100..=599 => Some((status / 100 - 1) as usize),
        _ => None,
    }
}

/// Every stats object the process has, for the admin endpoints.
#[derive(Debug, Default)]
pub struct Registry {
    pub(super) http: Mutex<Vec<Arc<HttpStats>>>,
    pub(super) listeners: Mutex<Vec<Arc<ListenerStats>>>,
    pub(super) clusters: Mutex<Vec<Arc<ClusterStats>>>,
    pub(super) tcp: Mutex<Vec<Arc<TcpStats>>>,
    pub(super) fault: Mutex<Vec<Arc<FaultFilterStats>>>,
    pub(super) local_ratelimit: Mutex<Vec<Arc<LocalRateLimitFilterStats>>>,
}

/// The stats object named `key`, created on first use: objects recreated by a
/// config update (or two HCMs with one stat_prefix) share counters, as in Envoy.
fn get_or_add<T>(list: &Mutex<Vec<Arc<T>>>, key: &str, key_of: fn(&T) -> &str, make: impl FnOnce() -> T) -> Arc<T> {
    let Ok(mut l) = list.lock() else {
        return Arc::new(make());
    };
    if let Some(found) = l.iter().find(|s| key_of(s) == key) {
        return found.clone();
    }
    let item = Arc::new(make());
    l.push(item.clone());
    item
}

pub(super) fn snapshot<T>(list: &Mutex<Vec<Arc<T>>>) -> Vec<Arc<T>> {
    list.lock().map(|l| l.clone()).unwrap_or_default()
}

impl Registry {
    pub fn http(&self, prefix: &str) -> Arc<HttpStats> {
        get_or_add(
            &self.http,
            prefix,
            |s| &s.prefix,
            || HttpStats {
                prefix: prefix.to_string(),
                ..Default::default()
            },
        )
    }
    pub fn listener(&self, address: &str) -> Arc<ListenerStats> {
        get_or_add(
            &self.listeners,
            address,
            |s| &s.address,
            || ListenerStats {
                address: address.to_string(),
                ..Default::default()
            },
        )
    }
    pub fn cluster(&self, name: &str) -> Arc<ClusterStats> {
        get_or_add(
            &self.clusters,
            name,
            |s| &s.name,
            || ClusterStats {
                name: name.to_string(),
                ..Default::default()
            },
        )
    }
    pub fn tcp(&self, prefix: &str) -> Arc<TcpStats> {
        get_or_add(
            &self.tcp,
            prefix,
            |s| &s.prefix,
            || TcpStats {
                prefix: prefix.to_string(),
                ..Default::default()
            },
        )
    }
    /// `hcm_prefix` is the connection manager's stat_prefix.
    pub fn fault(&self, hcm_prefix: &str) -> Arc<FaultFilterStats> {
        get_or_add(
            &self.fault,
            hcm_prefix,
            |s| &s.prefix,
            || FaultFilterStats {
                prefix: hcm_prefix.to_string(),
                ..Default::default()
            },
        )
    }
    pub fn local_ratelimit(&self, stat_prefix: &str) -> Arc<LocalRateLimitFilterStats> {
        get_or_add(
            &self.local_ratelimit,
            stat_prefix,
            |s| &s.prefix,
            || LocalRateLimitFilterStats {
                prefix: stat_prefix.to_string(),
                ..Default::default()
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_names_follow_envoy() {
        let r = Registry::default();
        let c = r.cluster("backend");
        c.upstream_rq_total.inc();
        c.response(503);
        let text = r.prometheus();
        assert!(
            text.contains("envoy_cluster_upstream_rq_total{envoy_cluster_name=\"backend\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "envoy_cluster_upstream_rq_xx{envoy_response_code_class=\"5\",envoy_cluster_name=\"backend\"} 1"
            ),
            "{text}"
        );
        assert_eq!(
            text.matches("# TYPE envoy_cluster_upstream_rq_total counter").count(),
            1
        );
    }
}
