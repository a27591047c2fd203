//! Scene 2: a reviews v2 instance answers 503 to everything; outlier
//! detection (`consecutive_5xx`) must eject it at its threshold-th failure,
//! and it must get no traffic afterwards.

use crate::demo::{
    mesh::Mesh,
    report::{print_wrapped, Stats, Tally},
    resources::{flow, Policies, OUTLIER_CLUSTER},
    services::{Behaviour, Counts, Services},
    traffic::{Client, Kind, Sample},
};

/// The scene's name, as its verdict line gives it.
pub(in crate::demo) const EJECTION: &str = "outlier detection";
/// Requests of the scene, sent one at a time so that their order is exact.
const EJECTION_REQUESTS: usize = 200;
/// The instance that fails.
const FAILING: &str = "v2-b";

/// Scene 2: v2-b answers 503 to everything; outlier detection must eject it
/// after `consecutive_5xx` of them, and it must get nothing afterwards.
pub(in crate::demo) async fn ejection(mesh: &Mesh, services: &Services, policies: &Policies) -> Vec<String> {
    println!("2. Outlier detection: reviews-v2 instance {FAILING} starts answering 503 to everything");
    print_wrapped(
        "  configured: ",
        &format!(
            "cluster {OUTLIER_CLUSTER} outlier_detection {}; route canary-header has no retry_policy",
            flow(&policies.outlier)
        ),
    );
    match ejection_scene(mesh, services, policies.consecutive_5xx()).await {
        Ok(failures) => failures,
        Err(e) => vec![e],
    }
}

async fn ejection_scene(mesh: &Mesh, services: &Services, threshold: u64) -> Result<Vec<String>, String> {
    let bad = services.get(FAILING)?;
    let before = bad.counts();
    bad.set(Behaviour::Failing);
    let mut client = Client::with_connections(mesh.ingress, 1);
    let samples = client.send(vec![Kind::Canary; EJECTION_REQUESTS]).await;
    bad.set(Behaviour::Healthy);
    let samples = samples?;
    let counts = bad.counts().since(before);
    let stats = Stats::fetch(mesh.admin).await?;

    let tally = Tally::new(Kind::Canary, &samples).by_instance();
    println!(
        "  {} x {} one at a time: {}",
        samples.len(),
        Kind::Canary.request(),
        tally.summary()
    );
    let seen = Ejection::measure(&samples, FAILING, threshold);
    match seen.tripped_at {
        Some(at) => println!(
            "  {FAILING} answered 503 to the {} requests it got (the last was request {at}), then got {} of the {} since",
            counts.received,
            seen.bad_after,
            samples.len() - at
        ),
        None => println!("  {FAILING} never answered {threshold} 503s in a row"),
    }
    let shown = [
        "outlier_detection_ejections_active",
        "outlier_detection_ejections_enforced_consecutive_5xx",
    ];
    print_wrapped("  remora's stats ", &stats.show(OUTLIER_CLUSTER, &shown));

    let mut failures = seen.judge(threshold, counts);
    stats.expect(OUTLIER_CLUSTER, shown[0], 1, &mut failures);
    stats.expect(OUTLIER_CLUSTER, shown[1], 1, &mut failures);
    Ok(failures)
}

/// What the clients saw of an instance failing until its ejection.
#[derive(Debug, PartialEq, Eq)]
struct Ejection {
    /// The request (1-based) whose answer was the bad instance's
    /// `threshold`-th failure in a row.
    tripped_at: Option<usize>,
    /// Requests not answered 200 up to and including `tripped_at`.
    errors_until: usize,
    /// Answers from the bad instance after `tripped_at`.
    bad_after: usize,
    /// Requests not answered 200 after `tripped_at`.
    errors_after: usize,
}

impl Ejection {
    /// `samples` in the order they were sent (one at a time).
    fn measure(samples: &[Sample], bad: &str, threshold: u64) -> Ejection {
        let from_bad = |s: &Sample| s.outcome.as_ref().is_ok_and(|a| a.instance.as_deref() == Some(bad));
        let not_ok = |s: &Sample| !s.outcome.as_ref().is_ok_and(|a| a.status == 200);
        let mut in_a_row = 0;
        let mut tripped_at = None;
        for (i, s) in samples.iter().enumerate() {
            if from_bad(s) {
                in_a_row = if not_ok(s) { in_a_row + 1 } else { 0 };
                if in_a_row == threshold {
                    tripped_at = Some(i + 1);
                    break;
                }
            }
        }
        let split = tripped_at.unwrap_or(samples.len());
        let (until, after) = samples.split_at(split);
        Ejection {
            tripped_at,
            errors_until: until.iter().filter(|s| not_ok(s)).count(),
            bad_after: after.iter().filter(|s| from_bad(s)).count(),
            errors_after: after.iter().filter(|s| not_ok(s)).count(),
        }
    }

    /// `counts`: what the bad instance itself counted during the scene.
    fn judge(&self, threshold: u64, counts: Counts) -> Vec<String> {
        let mut failures = Vec::new();
        if self.tripped_at.is_none() {
            failures.push(format!(
                "{FAILING} never answered {threshold} 503s in a row: it got {} requests",
                counts.received
            ));
            return failures;
        }
        if self.errors_until as u64 != threshold {
            failures.push(format!(
                "clients saw {} errors until the ejection, expected exactly consecutive_5xx = {threshold}",
                self.errors_until
            ));
        }
        if self.bad_after > 0 || counts.received != threshold {
            failures.push(format!(
                "{FAILING} got {} requests after its ejection ({} in all, expected {threshold})",
                self.bad_after, counts.received
            ));
        }
        if self.errors_after > 0 {
            failures.push(format!("clients saw {} errors after the ejection", self.errors_after));
        }
        failures
    }
}

#[cfg(test)]
mod tests {
    use super::{super::test_samples::answer, *};

    /// `fails`-th failure, and (when `leaks`) still sent request 15.
    fn alternating(fails: usize, leaks: bool) -> Vec<Sample> {
        let mut out = Vec::new();
        let mut bad = 0;
        for i in 0..40 {
            if i % 2 == 1 && (bad < fails || (leaks && i == 15)) {
                bad += 1;
                out.push(answer(503, "v2-b"));
            } else {
                out.push(answer(200, "v2-a"));
            }
        }
        out
    }

    fn failed(n: u64) -> Counts {
        Counts {
            received: n,
            answered_503: n,
            reset: 0,
        }
    }

    #[test]
    fn an_instance_ejected_at_its_fifth_failure_passes() {
        let seen = Ejection::measure(&alternating(5, false), "v2-b", 5);
        assert_eq!(
            seen,
            Ejection {
                tripped_at: Some(10),
                errors_until: 5,
                bad_after: 0,
                errors_after: 0
            }
        );
        assert_eq!(seen.judge(5, failed(5)), Vec::<String>::new());
    }

    #[test]
    fn traffic_after_the_ejection_fails_the_scene() {
        let seen = Ejection::measure(&alternating(5, true), "v2-b", 5);
        assert_eq!((seen.tripped_at, seen.bad_after, seen.errors_after), (Some(10), 1, 1));
        let failures = seen.judge(5, failed(6));
        assert_eq!(failures.len(), 2, "{failures:?}");
        assert!(
            failures[0].contains("v2-b got 1 requests after its ejection"),
            "{failures:?}"
        );
    }

    #[test]
    fn no_ejection_fails_the_scene() {
        // Never ejected: v2-b fails every other request of the 40.
        let mut samples = alternating(20, false);
        samples.truncate(8);
        let seen = Ejection::measure(&samples, "v2-b", 5);
        assert_eq!(seen.tripped_at, None);
        assert!(seen.judge(5, failed(4))[0].contains("never answered 5 503s in a row"));
        // A success in between starts the count again.
        let mut samples = alternating(20, false);
        samples[5] = answer(200, "v2-b");
        assert_eq!(Ejection::measure(&samples, "v2-b", 5).tripped_at, Some(16));
    }
}
