//! Judging and printing what the demo's requests got back: per-kind tallies
//! (statuses, which version answered, latency percentiles) checked against
//! the config, remora's own counters read from its admin API, and each
//! scene's verdict line. Sends nothing but the admin API reads.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use super::{
    services::{Services, TOPOLOGY},
    traffic::{admin_get, Kind, Sample},
};

/// What one kind of request got back.
pub(super) struct Tally {
    kind: Kind,
    sent: usize,
    statuses: BTreeMap<u16, usize>,
    /// Answers by `x-version` header (None: answered by remora itself).
    versions: BTreeMap<Option<String>, usize>,
    /// Answers by `x-instance` header, for the scenes about single instances.
    instances: BTreeMap<String, usize>,
    show_instances: bool,
    /// Answers with `x-envoy-overloaded: true`.
    overloaded: usize,
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
            instances: BTreeMap::new(),
            show_instances: false,
            overloaded: 0,
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
                    if let Some(i) = &a.instance {
                        *t.instances.entry(i.clone()).or_default() += 1;
                    }
                    t.overloaded += usize::from(a.overloaded);
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

    /// The summary names the instances that answered rather than the versions.
    pub(super) fn by_instance(mut self) -> Tally {
        self.show_instances = true;
        self
    }

    pub(super) fn answered(&self) -> usize {
        self.sent - self.errors.len()
    }

    /// Answers with this status.
    pub(super) fn status(&self, status: u16) -> usize {
        self.statuses.get(&status).copied().unwrap_or(0)
    }

    /// Answers that were not 200, and requests that got no answer.
    pub(super) fn errors(&self) -> usize {
        self.sent - self.status(200)
    }

    pub(super) fn overloaded(&self) -> usize {
        self.overloaded
    }

    fn count(&self, version: &str) -> usize {
        self.versions.get(&Some(version.to_string())).copied().unwrap_or(0)
    }

    /// "138 sent | 200 x138 | v1 79.7% (110), v2 20.3% (28) | p50 0.31ms p99 1.20ms"
    pub(super) fn summary(&self) -> String {
        let mut parts = vec![format!("{} sent", self.sent)];
        let mut statuses: Vec<String> = self.statuses.iter().map(|(s, n)| format!("{s} x{n}")).collect();
        if self.overloaded > 0 {
            statuses.push(format!("x-envoy-overloaded x{}", self.overloaded));
        }
        if !self.errors.is_empty() {
            statuses.push(format!("failed x{}", self.errors.len()));
        }
        parts.push(statuses.join(", "));
        let answered = self.answered().max(1) as f64;
        let mut by: Vec<String> = if self.show_instances {
            self.instances.iter().map(|(i, n)| format!("{i} {n}")).collect()
        } else {
            self.versions
                .iter()
                .filter_map(|(v, n)| Some(format!("{} {:.1}% ({n})", v.as_ref()?, *n as f64 * 100.0 / answered)))
                .collect()
        };
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
                let tolerance = split_tolerance(share, answered);
                let got = v1 as f64 / answered as f64;
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

/// How far the measured share of a weighted split may be from the configured
/// `share` over `n` answers: five standard deviations of a binomial, never
/// under 10 points. A correct split misses it about once in a million runs,
/// and at the demo's default 68 answers per version it still tells 80/20
/// from 50/50 or the reversed 20/80.
pub(super) fn split_tolerance(share: f64, n: usize) -> f64 {
    (5.0 * (share * (1.0 - share) / n.max(1) as f64).sqrt()).max(0.10)
}

/// remora's `/stats/prometheus` as read at one moment, the way an operator
/// would: by metric name and `envoy_cluster_name` label.
pub(super) struct Stats {
    text: String,
}

impl Stats {
    pub(super) async fn fetch(admin: SocketAddr) -> Result<Stats, String> {
        let text = admin_get(admin, "/stats/prometheus")
            .await
            .map_err(|e| format!("admin /stats/prometheus: {e}"))?;
        Ok(Stats { text })
    }

    /// A cluster's stat, named as in Envoy's `cluster.<name>.<stat>` with the
    /// dots as underscores ("upstream_rq_retry", "outlier_detection_ejections_active").
    pub(super) fn cluster(&self, cluster: &str, stat: &str) -> Option<u64> {
        counter(&self.text, &format!("envoy_cluster_{stat}"), cluster)
    }

    /// "upstream_rq_retry 60, upstream_rq_retry_success 60" (a stat missing shows as "-").
    pub(super) fn show(&self, cluster: &str, stats: &[&str]) -> String {
        let shown: Vec<String> = stats
            .iter()
            .map(|s| match self.cluster(cluster, s) {
                Some(v) => format!("{s} {v}"),
                None => format!("{s} -"),
            })
            .collect();
        format!("{cluster}: {}", shown.join(", "))
    }

    /// Checks `cluster`'s `stat` is `expected`, naming both otherwise.
    pub(super) fn expect(&self, cluster: &str, stat: &str, expected: u64, failures: &mut Vec<String>) {
        match self.cluster(cluster, stat) {
            Some(v) if v == expected => {}
            Some(v) => failures.push(format!("{stat} of {cluster} is {v}, expected {expected}")),
            None => failures.push(format!("/stats/prometheus has no {stat} for {cluster}")),
        }
    }
}

/// Prints `first` then `text`, wrapped at `WIDTH` columns on ", " with
/// continuation lines indented as far as `text` starts.
pub(super) fn print_wrapped(first: &str, text: &str) {
    for line in wrapped(first, text) {
        println!("{line}");
    }
}

const WIDTH: usize = 110;

fn wrapped(first: &str, text: &str) -> Vec<String> {
    let indent = " ".repeat(first.chars().count());
    let mut lines = Vec::new();
    let mut line = first.to_string();
    let mut empty = true;
    let pieces: Vec<&str> = text.split(", ").collect();
    for (i, piece) in pieces.iter().enumerate() {
        let piece = if i + 1 < pieces.len() {
            format!("{piece},")
        } else {
            piece.to_string()
        };
        if !empty && line.chars().count() + 1 + piece.chars().count() > WIDTH {
            lines.push(line);
            line = indent.clone();
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(&piece);
        empty = false;
    }
    lines.push(line);
    lines
}

/// Prints a scene's verdict line (and what was wrong); returns whether it passed.
pub(super) fn verdict(scene: &str, failures: &[String]) -> bool {
    if failures.is_empty() {
        println!("  verdict ({scene}): OK");
        return true;
    }
    println!("  verdict ({scene}): FAILED");
    for f in failures {
        println!("    - {f}");
    }
    false
}

/// Prints a few of remora's own counters and checks each cluster's
/// `upstream_rq_total` against the requests its sample instances counted
/// (every attempt, retries included, and nothing a breaker refused).
pub(super) async fn admin_stats(admin: SocketAddr, services: &Services) -> Vec<String> {
    let mut failures = Vec::new();
    let stats = match Stats::fetch(admin).await {
        Ok(s) => s,
        Err(e) => return vec![e],
    };
    println!("remora's own counters, from http://{admin}/stats/prometheus (also /clusters, /config_dump):");
    let per_cluster = |stat: &str| -> String {
        TOPOLOGY
            .iter()
            .map(|(c, _)| match stats.cluster(c, stat) {
                Some(v) => format!("{c} {v}"),
                None => format!("{c} -"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("  upstream_rq_total: {}", per_cluster("upstream_rq_total"));
    println!("  upstream_cx_total: {}", per_cluster("upstream_cx_total"));
    let shown = |metrics: &[&str]| -> String {
        let lines = metrics.iter().flat_map(|m| lines_of(&stats.text, m));
        lines.map(short).collect::<Vec<_>>().join(", ")
    };
    println!("  {}", shown(&["envoy_http_no_route", "envoy_http_rq_direct_response"]));
    println!(
        "  {}",
        shown(&["envoy_control_plane_connected_state", "envoy_xds_update_success"])
    );
    for line in lines_of(&stats.text, "envoy_xds_update_rejected") {
        if !line.ends_with(" 0") {
            failures.push(format!("remora rejected an xDS update: {line}"));
        }
    }
    for (cluster, _) in TOPOLOGY {
        stats.expect(cluster, "upstream_rq_total", services.received(cluster), &mut failures);
    }
    if failures.is_empty() {
        println!("  each cluster's upstream_rq_total is what its instances counted (retries included)");
    }
    failures
}

/// `envoy_xds_update_success{envoy_xds_type="Cluster"} 1` -> `xds_update_success{Cluster} 1`
fn short(line: &str) -> String {
    let line = line.strip_prefix("envoy_").unwrap_or(line);
    let Some((name, rest)) = line.split_once('{') else {
        return line.to_string();
    };
    let Some((labels, value)) = rest.rsplit_once('}') else {
        return line.to_string();
    };
    let values: Vec<&str> = labels
        .split(',')
        .filter_map(|l| l.split_once('=').map(|(_, v)| v.trim_matches('"')))
        .collect();
    format!("{name}{{{}}}{value}", values.join(","))
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

pub(super) fn percentile(sorted: &[Duration], p: f64) -> Duration {
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
        let stats = Stats { text: text.into() };
        assert_eq!(stats.cluster("reviews-v1", "upstream_rq_total"), Some(12));
        assert_eq!(
            stats.show("reviews-v1", &["upstream_rq_total", "upstream_rq_retry"]),
            "reviews-v1: upstream_rq_total 12, upstream_rq_retry -"
        );
    }

    #[test]
    fn split_tolerance_is_five_standard_deviations() {
        // 80/20 over 68 answers: sd 4.85 points.
        assert!((split_tolerance(0.8, 68) - 0.2425).abs() < 1e-3);
        // A share the other split would give is always outside it.
        assert!(split_tolerance(0.8, 68) < 0.3);
        assert_eq!(split_tolerance(0.8, 100_000), 0.10);
        assert_eq!(split_tolerance(1.0, 10), 0.10);
    }

    #[test]
    fn long_lines_wrap_after_a_comma() {
        let text = (0..30)
            .map(|i| format!("field_{i}: {i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let lines = wrapped("  configured: ", &text);
        assert!(lines.len() > 1, "{lines:?}");
        assert!(lines.iter().all(|l| l.chars().count() <= WIDTH), "{lines:?}");
        assert!(lines[1].starts_with("              field_"), "{lines:?}");
        assert_eq!(
            lines.join(" ").split_whitespace().collect::<Vec<_>>().join(" "),
            format!("configured: {text}")
        );
        assert_eq!(wrapped("a: ", "b"), ["a: b"]);
    }

    #[test]
    fn prometheus_lines_shortened() {
        assert_eq!(
            short("envoy_xds_update_success{envoy_xds_type=\"Cluster\"} 1"),
            "xds_update_success{Cluster} 1"
        );
        assert_eq!(
            short("envoy_control_plane_connected_state 1"),
            "control_plane_connected_state 1"
        );
    }
}
