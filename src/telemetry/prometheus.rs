//! The Prometheus text exposition of the stats registry, with Envoy's metric
//! names and labels, metric families grouped as the format requires.

use std::fmt::Write as _;

use super::stats::{snapshot, Registry};

impl Registry {
    /// Prometheus text exposition, metric families grouped as the format requires.
    pub fn prometheus(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let http = snapshot(&self.http);
        let listeners = snapshot(&self.listeners);
        let clusters = snapshot(&self.clusters);
        let tcp = snapshot(&self.tcp);
        let fault = snapshot(&self.fault);
        let local_ratelimit = snapshot(&self.local_ratelimit);

        macro_rules! family {
            ($items:expr, $metric:literal, $kind:literal, $label:literal, $key:ident, |$s:ident| $value:expr) => {
                if !$items.is_empty() {
                    let _ = writeln!(out, "# TYPE {} {}", $metric, $kind);
                    for $s in $items.iter() {
                        let _ = writeln!(
                            out,
                            "{}{{{}=\"{}\"}} {}",
                            $metric,
                            $label,
                            escape(&$s.$key),
                            $value
                        );
                    }
                }
            };
        }
        macro_rules! classes {
            ($items:expr, $metric:literal, $label:literal, $key:ident, $field:ident) => {
                if !$items.is_empty() {
                    let _ = writeln!(out, "# TYPE {} counter", $metric);
                    for s in $items.iter() {
                        for (i, c) in s.$field.iter().enumerate() {
                            let _ = writeln!(
                                out,
                                "{}{{envoy_response_code_class=\"{}\",{}=\"{}\"}} {}",
                                $metric,
                                i + 1,
                                $label,
                                escape(&s.$key),
                                c.get()
                            );
                        }
                    }
                }
            };
        }
        family!(
            http,
            "envoy_http_downstream_cx_total",
            "counter",
            "envoy_http_conn_manager_prefix",
            prefix,
            |s| s.downstream_cx_total.get()
        );
        family!(
            http,
            "envoy_http_downstream_cx_active",
            "gauge",
            "envoy_http_conn_manager_prefix",
            prefix,
            |s| s.downstream_cx_active.get()
        );
        family!(
            http,
            "envoy_http_downstream_cx_http1_total",
            "counter",
            "envoy_http_conn_manager_prefix",
            prefix,
            |s| s.downstream_cx_http1_total.get()
        );
        family!(
            http,
            "envoy_http_downstream_cx_http2_total",
            "counter",
            "envoy_http_conn_manager_prefix",
            prefix,
            |s| s.downstream_cx_http2_total.get()
        );
        family!(
            http,
            "envoy_http_downstream_cx_protocol_error",
            "counter",
            "envoy_http_conn_manager_prefix",
            prefix,
            |s| s.downstream_cx_protocol_error.get()
        );
        family!(
            http,
            "envoy_http_downstream_cx_upgrades_total",
            "counter",
            "envoy_http_conn_manager_prefix",
            prefix,
            |s| s.downstream_cx_upgrades_total.get()
        );
        family!(
            http,
            "envoy_http_downstream_rq_total",
            "counter",
            "envoy_http_conn_manager_prefix",
            prefix,
            |s| s.downstream_rq_total.get()
        );
        family!(
            http,
            "envoy_http_downstream_rq_active",
            "gauge",
            "envoy_http_conn_manager_prefix",
            prefix,
            |s| s.downstream_rq_active.get()
        );
        family!(
            http,
            "envoy_http_downstream_rq_http1_total",
            "counter",
            "envoy_http_conn_manager_prefix",
            prefix,
            |s| s.downstream_rq_http1_total.get()
        );
        family!(
            http,
            "envoy_http_downstream_rq_http2_total",
            "counter",
            "envoy_http_conn_manager_prefix",
            prefix,
            |s| s.downstream_rq_http2_total.get()
        );
        classes!(
            http,
            "envoy_http_downstream_rq_xx",
            "envoy_http_conn_manager_prefix",
            prefix,
            downstream_rq_xx
        );
        family!(
            http,
            "envoy_http_no_route",
            "counter",
            "envoy_http_conn_manager_prefix",
            prefix,
            |s| s.no_route.get()
        );
        family!(
            http,
            "envoy_http_no_cluster",
            "counter",
            "envoy_http_conn_manager_prefix",
            prefix,
            |s| s.no_cluster.get()
        );
        family!(
            http,
            "envoy_http_rq_direct_response",
            "counter",
            "envoy_http_conn_manager_prefix",
            prefix,
            |s| s.rq_direct_response.get()
        );
        family!(
            http,
            "envoy_http_downstream_rq_timeout",
            "counter",
            "envoy_http_conn_manager_prefix",
            prefix,
            |s| s.downstream_rq_timeout.get()
        );
        family!(
            http,
            "envoy_http_downstream_rq_idle_timeout",
            "counter",
            "envoy_http_conn_manager_prefix",
            prefix,
            |s| s.downstream_rq_idle_timeout.get()
        );
        family!(
            http,
            "envoy_http_downstream_rq_max_duration_reached",
            "counter",
            "envoy_http_conn_manager_prefix",
            prefix,
            |s| s.downstream_rq_max_duration_reached.get()
        );

        family!(
            listeners,
            "envoy_listener_downstream_cx_total",
            "counter",
            "envoy_listener_address",
            address,
            |s| s.downstream_cx_total.get()
        );
        family!(
            listeners,
            "envoy_listener_downstream_cx_active",
            "gauge",
            "envoy_listener_address",
            address,
            |s| s.downstream_cx_active.get()
        );

        family!(
            clusters,
            "envoy_cluster_upstream_cx_total",
            "counter",
            "envoy_cluster_name",
            name,
            |s| s.upstream_cx_total.get()
        );
        family!(
            clusters,
            "envoy_cluster_upstream_cx_active",
            "gauge",
            "envoy_cluster_name",
            name,
            |s| s.upstream_cx_active.get()
        );
        family!(
            clusters,
            "envoy_cluster_upstream_cx_http1_total",
            "counter",
            "envoy_cluster_name",
            name,
            |s| s.upstream_cx_http1_total.get()
        );
        family!(
            clusters,
            "envoy_cluster_upstream_cx_http2_total",
            "counter",
            "envoy_cluster_name",
            name,
            |s| s.upstream_cx_http2_total.get()
        );
        family!(
            clusters,
            "envoy_cluster_upstream_cx_connect_fail",
            "counter",
            "envoy_cluster_name",
            name,
            |s| s.upstream_cx_connect_fail.get()
        );
        family!(
            clusters,
            "envoy_cluster_upstream_cx_connect_timeout",
            "counter",
            "envoy_cluster_name",
            name,
            |s| s.upstream_cx_connect_timeout.get()
        );
        family!(
            clusters,
            "envoy_cluster_upstream_cx_none_healthy",
            "counter",
            "envoy_cluster_name",
            name,
            |s| s.upstream_cx_none_healthy.get()
        );
        family!(
            clusters,
            "envoy_cluster_upstream_cx_protocol_error",
            "counter",
            "envoy_cluster_name",
            name,
            |s| s.upstream_cx_protocol_error.get()
        );
        family!(
            clusters,
            "envoy_cluster_upstream_cx_rx_bytes_total",
            "counter",
            "envoy_cluster_name",
            name,
            |s| s.upstream_cx_rx_bytes_total.get()
        );
        family!(
            clusters,
            "envoy_cluster_upstream_cx_tx_bytes_total",
            "counter",
            "envoy_cluster_name",
            name,
            |s| s.upstream_cx_tx_bytes_total.get()
        );
        family!(
            clusters,
            "envoy_cluster_upstream_rq_total",
            "counter",
            "envoy_cluster_name",
            name,
            |s| s.upstream_rq_total.get()
        );
        family!(
            clusters,
            "envoy_cluster_upstream_rq_active",
            "gauge",
            "envoy_cluster_name",
            name,
            |s| s.upstream_rq_active.get()
        );
        classes!(
            clusters,
            "envoy_cluster_upstream_rq_xx",
            "envoy_cluster_name",
            name,
            upstream_rq_xx
        );
        family!(
            clusters,
            "envoy_cluster_upstream_cx_overflow",
            "counter",
            "envoy_cluster_name",
            name,
            |s| s.upstream_cx_overflow.get()
        );
        family!(
            clusters,
            "envoy_cluster_upstream_cx_max_requests",
            "counter",
            "envoy_cluster_name",
            name,
            |s| s.upstream_cx_max_requests.get()
        );
        family!(
            clusters,
            "envoy_cluster_upstream_rq_pending_overflow",
            "counter",
            "envoy_cluster_name",
            name,
            |s| s.upstream_rq_pending_overflow.get()
        );
        family!(
            clusters,
            "envoy_cluster_upstream_rq_active_overflow",
            "counter",
            "envoy_cluster_name",
            name,
            |s| s.upstream_rq_active_overflow.get()
        );
        family!(
            clusters,
            "envoy_cluster_upstream_rq_pending_total",
            "counter",
            "envoy_cluster_name",
            name,
            |s| s.upstream_rq_pending_total.get()
        );
        family!(
            clusters,
            "envoy_cluster_upstream_rq_pending_active",
            "gauge",
            "envoy_cluster_name",
            name,
            |s| s.upstream_rq_pending_active.get()
        );
        family!(
            clusters,
            "envoy_cluster_upstream_rq_pending_failure_eject",
            "counter",
            "envoy_cluster_name",
            name,
            |s| s.upstream_rq_pending_failure_eject.get()
        );
        family!(
            clusters,
            "envoy_cluster_upstream_rq_cancelled",
            "counter",
            "envoy_cluster_name",
            name,
            |s| s.upstream_rq_cancelled.get()
        );
        family!(
            clusters,
            "envoy_cluster_upstream_rq_per_try_timeout",
            "counter",
            "envoy_cluster_name",
            name,
            |s| s.upstream_rq_per_try_timeout.get()
        );
        family!(
            clusters,
            "envoy_cluster_upstream_rq_retry",
            "counter",
            "envoy_cluster_name",
            name,
            |s| s.upstream_rq_retry.get()
        );
        family!(
            clusters,
            "envoy_cluster_upstream_rq_retry_success",
            "counter",
            "envoy_cluster_name",
            name,
            |s| s.upstream_rq_retry_success.get()
        );
        family!(
            clusters,
            "envoy_cluster_upstream_rq_retry_overflow",
            "counter",
            "envoy_cluster_name",
            name,
            |s| s.upstream_rq_retry_overflow.get()
        );
        family!(
            clusters,
            "envoy_cluster_upstream_rq_retry_limit_exceeded",
            "counter",
            "envoy_cluster_name",
            name,
            |s| s.upstream_rq_retry_limit_exceeded.get()
        );
        family!(
            clusters,
            "envoy_cluster_upstream_rq_retry_backoff_exponential",
            "counter",
            "envoy_cluster_name",
            name,
            |s| s.upstream_rq_retry_backoff_exponential.get()
        );
        family!(
            clusters,
            "envoy_cluster_retry_or_shadow_abandoned",
            "counter",
            "envoy_cluster_name",
            name,
            |s| s.retry_or_shadow_abandoned.get()
        );
        family!(
            clusters,
            "envoy_cluster_upstream_rq_timeout",
            "counter",
            "envoy_cluster_name",
            name,
            |s| s.upstream_rq_timeout.get()
        );
        family!(
            clusters,
            "envoy_cluster_upstream_rq_rx_reset",
            "counter",
            "envoy_cluster_name",
            name,
            |s| s.upstream_rq_rx_reset.get()
        );
        family!(
            clusters,
            "envoy_cluster_lb_healthy_panic",
            "counter",
            "envoy_cluster_name",
            name,
            |s| s.lb_healthy_panic.get()
        );
        family!(
            clusters,
            "envoy_cluster_membership_total",
            "gauge",
            "envoy_cluster_name",
            name,
            |s| s.membership_total.get()
        );
        family!(
            clusters,
            "envoy_cluster_membership_healthy",
            "gauge",
            "envoy_cluster_name",
            name,
            |s| s.membership_healthy.get()
        );

        family!(
            tcp,
            "envoy_tcp_downstream_cx_total",
            "counter",
            "envoy_tcp_prefix",
            prefix,
            |s| s.downstream_cx_total.get()
        );
        family!(
            tcp,
            "envoy_tcp_downstream_cx_no_route",
            "counter",
            "envoy_tcp_prefix",
            prefix,
            |s| s.downstream_cx_no_route.get()
        );
        family!(
            tcp,
            "envoy_tcp_downstream_cx_rx_bytes_total",
            "counter",
            "envoy_tcp_prefix",
            prefix,
            |s| s.downstream_cx_rx_bytes_total.get()
        );
        family!(
            tcp,
            "envoy_tcp_downstream_cx_tx_bytes_total",
            "counter",
            "envoy_tcp_prefix",
            prefix,
            |s| s.downstream_cx_tx_bytes_total.get()
        );
        family!(
            tcp,
            "envoy_tcp_idle_timeout",
            "counter",
            "envoy_tcp_prefix",
            prefix,
            |s| s.idle_timeout.get()
        );
        family!(
            tcp,
            "envoy_tcp_upstream_flush_active",
            "gauge",
            "envoy_tcp_prefix",
            prefix,
            |s| s.upstream_flush_active.get()
        );

        // Envoy's tag extractors turn `http.<prefix>.fault.<stat>` into
        // `envoy_http_fault_<stat>{envoy_http_conn_manager_prefix="<prefix>"}` and
        // `<prefix>.http_local_rate_limit.<stat>` into
        // `envoy_http_local_rate_limit_<stat>{envoy_local_http_ratelimit_prefix="<prefix>"}`.
        let fault_rows: Vec<_> = fault
            .iter()
            .map(|s| (s.prefix.as_str(), s.counters.named("", &s.active)))
            .collect();
        filter_families(
            &mut out,
            &fault_rows,
            "envoy_http_",
            "envoy_http_conn_manager_prefix",
            |stat| {
                if stat == "fault.active_faults" {
                    "gauge"
                } else {
                    "counter"
                }
            },
        );
        let rl_rows: Vec<_> = local_ratelimit
            .iter()
            .map(|s| (s.prefix.as_str(), s.counters.named("")))
            .collect();
        filter_families(
            &mut out,
            &rl_rows,
            "envoy_",
            "envoy_local_http_ratelimit_prefix",
            |_| "counter",
        );
        out
    }
}

/// Metric families from per-filter stats given as `(label value, [(stat name, value); N])`, the
/// stat names (`fault.delays_injected`, `.http_local_rate_limit.ok`) the same in every row;
/// `metric_prefix` is what the extracted tag leaves before them.
fn filter_families<const N: usize>(
    out: &mut String,
    rows: &[(&str, [(String, u64); N])],
    metric_prefix: &str,
    label: &str,
    kind: impl Fn(&str) -> &'static str,
) {
    let Some((_, first)) = rows.first() else {
        return;
    };
    for (i, (stat, _)) in first.iter().enumerate() {
        let stat = stat.trim_start_matches('.');
        let metric = format!("{metric_prefix}{}", stat.replace('.', "_"));
        let _ = writeln!(out, "# TYPE {metric} {}", kind(stat));
        for (prefix, values) in rows {
            let _ = writeln!(out, "{metric}{{{label}=\"{}\"}} {}", escape(prefix), values[i].1);
        }
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Per-cluster policy state that lives in the cluster runtimes rather than
/// the registry: circuit breaker gauges (Envoy's
/// `cluster.<name>.circuit_breakers.default.*`) and outlier detection
/// counters (`cluster.<name>.outlier_detection.*`).
pub fn cluster_policy(map: &crate::balance::ClusterMap) -> String {
    let mut out = String::new();
    let clusters: Vec<_> = map.iter().collect();
    type Gauge = fn(&crate::policy::circuit_breaker::Breaker) -> u64;
    let breaker_gauges: [(&str, Gauge); 8] = [
        ("cx_open", |b| u64::from(b.cx_open())),
        ("rq_pending_open", |b| u64::from(b.rq_pending_open())),
        ("rq_open", |b| u64::from(b.rq_open())),
        ("rq_retry_open", |b| u64::from(b.rq_retry_open())),
        ("remaining_cx", |b| b.remaining_cx()),
        ("remaining_pending", |b| b.remaining_pending()),
        ("remaining_rq", |b| b.remaining_rq()),
        ("remaining_retries", |b| b.remaining_retries()),
    ];
    for (stat, value) in breaker_gauges {
        // Envoy publishes remaining_* only with `track_remaining`.
        let shown: Vec<_> = clusters
            .iter()
            .filter(|c| !stat.starts_with("remaining") || c.breaker.thresholds().track_remaining)
            .collect();
        if shown.is_empty() {
            continue;
        }
        let _ = writeln!(out, "# TYPE envoy_cluster_circuit_breakers_default_{stat} gauge");
        for c in shown {
            let _ = writeln!(
                out,
                "envoy_cluster_circuit_breakers_default_{stat}{{envoy_cluster_name=\"{}\"}} {}",
                escape(c.name()),
                value(&c.breaker)
            );
        }
    }
    let with_outlier: Vec<_> = clusters
        .iter()
        .filter_map(|c| c.outlier.as_ref().map(|o| (c.name(), o.stats().named())))
        .collect();
    if let Some((_, first)) = with_outlier.first() {
        for (i, (stat, _)) in first.iter().enumerate() {
            let metric = format!("envoy_cluster_{}", stat.replace('.', "_"));
            let kind = if stat.ends_with("ejections_active") {
                "gauge"
            } else {
                "counter"
            };
            let _ = writeln!(out, "# TYPE {metric} {kind}");
            for (name, stats) in &with_outlier {
                if let Some((_, v)) = stats.get(i) {
                    let _ = writeln!(out, "{metric}{{envoy_cluster_name=\"{}\"}} {v}", escape(name));
                }
            }
        }
    }
    out
}
