//! Judging and printing what the demo's requests got back: per-kind tallies
//! (statuses, which version answered, latency percentiles) checked against
//! the config, and remora's own counters from its admin API checked against
//! what the client saw. Sends nothing but the admin API reads.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use super::traffic::{admin_get, Kind, Sample};

/// What one kind of request got back.
pub(super) struct Tally {
    kind: Kind,
    sent: usize,
    statuses: BTreeMap<u16, usize>,
    /// Answers by `x-version` header (None: answered by remora itself).
    versions: BTreeMap<Option<String>, usize>,
    seen_paths: BTreeMap<String, usize>,
    unexpected_bodies: usize,
    errors: Vec<String>,
    latencies: Vec<Duration>,
}

impl Tally {
    pub(super) fn new(kind: Kind, samples: &[Sample]) -> Tally {
        let mut t = Tally {
            kind,
            sent: 0,
            statuses: BTreeMap::new(),
            versions: BTreeMap::new(),
            seen_paths: BTreeMap::new(),
            unexpected_bodies: 0,
            errors: Vec::new(),
            latencies: Vec::new(),
        };
        for s in samples.iter().filter(|s| s.kind == kind) {
            t.sent += 1;
            match &s.outcome {
                Ok(a) => {
                    *t.statuses.entry(a.status).or_default() += 1;
                    *t.versions.entry(a.version.clone()).or_default() += 1;
                    if let Some(p) = &a.seen_path {
                        *t.seen_paths.entry(p.clone()).or_default() += 1;
                    }
                    if kind == Kind::Health && a.body.as_ref() != b"ok\n" {
                        t.unexpected_bodies += 1;
                    }
                    t.latencies.push(s.latency);
                }
                Err(e) => t.errors.push(e.clone()),
            }
        }
        t.latencies.sort();
        t
    }

    fn answered(&self) -> usize {
        self.sent - self.errors.len()
    }

    fn count(&self, version: &str) -> usize {
        self.versions.get(&Some(version.to_string())).copied().unwrap_or(0)
    }

    /// "138 sent | 200 x138 | v1 79.7% (110), v2 20.3% (28) | p50 0.31ms p99 1.20ms"
    pub(super) fn summary(&self) -> String {
        let mut parts = vec![format!("{} sent", self.sent)];
        let mut statuses: Vec<String> = self.statuses.iter().map(|(s, n)| format!("{s} x{n}")).collect();
        if !self.errors.is_empty() {
            statuses.push(format!("failed x{}", self.errors.len()));
        }
        parts.push(statuses.join(", "));
        let answered = self.answered().max(1) as f64;
        let mut by: Vec<String> = self
            .versions
            .iter()
            .filter_map(|(v, n)| Some(format!("{} {:.1}% ({n})", v.as_ref()?, *n as f64 * 100.0 / answered)))
            .collect();
        if self.kind == Kind::Pinned {
            by.extend(self.seen_paths.keys().map(|p| format!("upstream saw {p}")));
        }
        if by.is_empty() && self.answered() > 0 {
            by.push("answered by remora itself".into());
        }
        if !by.is_empty() {
            parts.push(by.join(", "));
        }
        if !self.latencies.is_empty() {
            let (p50, p99) = (percentile(&self.latencies, 0.50), percentile(&self.latencies, 0.99));
            parts.push(format!("p50 {} p99 {}", ms(p50), ms(p99)));
        }
        parts.join(" | ")
    }

    /// Appends what was not as configured to `failures`, each prefixed with
    /// `when`. `v1_share` is the split's configured share for reviews-v1; None
    /// while it was changing (then any mix of v1 and v2 is right).
    pub(super) fn check(&self, when: &str, v1_share: Option<f64>, failures: &mut Vec<String>) {
        let what = format!("{when}{}", self.kind.request());
        if let Some(first) = self.errors.first() {
            failures.push(format!(
                "{what}: {} of {} failed (first: {first})",
                self.errors.len(),
                self.sent
            ));
        }
        let answered = self.answered();
        if answered == 0 {
            return;
        }
        let want = if self.kind == Kind::NoRoute { 404 } else { 200 };
        let right = self.statuses.get(&want).copied().unwrap_or(0);
        if right != answered {
            failures.push(format!(
                "{what}: {} of {answered} answers were not {want}",
                answered - right
            ));
        }
        let (v1, v2) = (self.count("v1"), self.count("v2"));
        match self.kind {
            Kind::Split => {
                let others = answered - v1 - v2;
                if others > 0 {
                    failures.push(format!("{what}: {others} answers came from neither v1 nor v2"));
                }
                let Some(share) = v1_share else { return };
                // Loose: four standard deviations of a binomial, and never under 10 points.
                let n = answered as f64;
                let tolerance = (4.0 * (share * (1.0 - share) / n).sqrt()).max(0.10);
                let got = v1 as f64 / n;
                if (got - share).abs() > tolerance {
                    failures.push(format!(
                        "{what}: v1 answered {:.1}%, expected {:.0}% +/- {:.1}",
                        got * 100.0,
                        share * 100.0,
                        tolerance * 100.0
                    ));
                }
            }
            Kind::Canary if v2 != answered => failures.push(format!(
                "{what}: {} of {answered} answers were not from v2",
                answered - v2
            )),
            Kind::Pinned => {
                if v1 != answered {
                    failures.push(format!(
                        "{what}: {} of {answered} answers were not from v1",
                        answered - v1
                    ));
                }
                let rewritten = self.seen_paths.get("/anything").copied().unwrap_or(0);
                if rewritten != v1 {
                    failures.push(format!(
                        "{what}: v1 saw {} paths other than /anything",
                        v1 - rewritten.min(v1)
                    ));
                }
            }
            Kind::Health | Kind::NoRoute if v1 + v2 > 0 => failures.push(format!(
                "{what}: {} answers came from a sample service, not remora",
                v1 + v2
            )),
            _ => {}
        }
        if self.unexpected_bodies > 0 {
            failures.push(format!(
                "{what}: {} answers did not have the body \"ok\"",
                self.unexpected_bodies
            ));
        }
    }
}

/// Answers per sample service ("reviews-v1" -> n), as the client saw them.
pub(super) fn served(samples: &[Sample]) -> BTreeMap<String, u64> {
    let mut served = BTreeMap::new();
    for a in samples.iter().filter_map(|s| s.outcome.as_ref().ok()) {
        if let Some(v) = &a.version {
            *served.entry(format!("reviews-{v}")).or_default() += 1;
        }
    }
    served
}

/// Prints a few of the proxy's own counters and checks them against what
/// the client saw (`served`: answers per cluster) and the xDS updates it took.
pub(super) async fn admin_stats(admin: SocketAddr, served: &BTreeMap<String, u64>, failures: &mut Vec<String>) {
    let compare = failures.is_empty();
    let text = match admin_get(admin, "/stats/prometheus").await {
        Ok(text) => text,
        Err(e) => return failures.push(format!("admin /stats/prometheus: {e}")),
    };
    println!("From its /stats/prometheus:");
    for metric in [
        "envoy_cluster_upstream_rq_total",
        "envoy_cluster_upstream_cx_total",
        "envoy_http_no_route",
        "envoy_http_rq_direct_response",
        "envoy_control_plane_connected_state",
        "envoy_xds_update_success",
    ] {
        // remora's own `xds` cluster carries no requests of the demo's.
        for line in lines_of(&text, metric).filter(|l| !l.contains("envoy_cluster_name=\"xds\"")) {
            println!("  {line}");
        }
    }
    let (mut requests, mut connections) = (0, 0);
    for cluster in ["reviews-v1", "reviews-v2"] {
        requests += counter(&text, "envoy_cluster_upstream_rq_total", cluster).unwrap_or(0);
        connections += counter(&text, "envoy_cluster_upstream_cx_total", cluster).unwrap_or(0);
        // The proxy's own counters must agree with what the client saw (when
        // every request was answered as configured; a 503 counts upstream too).
        if !compare {
            continue;
        }
        let seen = served.get(cluster).copied().unwrap_or(0);
        match counter(&text, "envoy_cluster_upstream_rq_total", cluster) {
            Some(n) if n == seen => {}
            Some(n) => failures.push(format!(
                "envoy_cluster_upstream_rq_total for {cluster} is {n}, the client got {seen} answers from it"
            )),
            None => failures.push(format!(
                "/stats/prometheus has no envoy_cluster_upstream_rq_total for {cluster}"
            )),
        }
    }
    for line in lines_of(&text, "envoy_xds_update_rejected") {
        if !line.ends_with(" 0") {
            failures.push(format!("remora rejected an xDS update: {line}"));
        }
    }
    println!("  ({requests} requests to the services, {connections} upstream connections opened)");
}

/// The sample lines of one Prometheus metric family.
fn lines_of<'a>(text: &'a str, metric: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    text.lines().filter(move |l| {
        l.strip_prefix(metric)
            .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
    })
}

/// A cluster's counter from Prometheus text.
fn counter(text: &str, metric: &str, cluster: &str) -> Option<u64> {
    let label = format!("envoy_cluster_name=\"{cluster}\"");
    lines_of(text, metric)
        .find(|l| l.contains(&label))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let n = sorted.len();
    if n == 0 {
        return Duration::ZERO;
    }
    let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
    sorted[rank - 1]
}

pub(super) fn ms(d: Duration) -> String {
    format!("{:.2}ms", d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let d: Vec<_> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&d, 0.5), Duration::from_millis(50));
        assert_eq!(percentile(&d, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&d[..1], 0.99), Duration::from_millis(1));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn counters_by_cluster_from_prometheus_text() {
        let text = "# TYPE envoy_cluster_upstream_rq_total counter\n\
                    envoy_cluster_upstream_rq_total{envoy_cluster_name=\"reviews-v1\"} 12\n\
                    envoy_cluster_upstream_rq_total_x{envoy_cluster_name=\"reviews-v2\"} 3\n";
        assert_eq!(counter(text, "envoy_cluster_upstream_rq_total", "reviews-v1"), Some(12));
        assert_eq!(counter(text, "envoy_cluster_upstream_rq_total", "reviews-v2"), None);
    }
}
