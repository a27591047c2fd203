//! Scene 3: a ratings instance turns flaky (30% 503s and dropped
//! connections); the route's `retry_policy` must hide every failure from the
//! clients, one retry on the other instance for each.

use crate::demo::{
    mesh::Mesh,
    report::{print_wrapped, Stats, Tally},
    resources::{flow, Policies, RETRY_CLUSTER, RETRY_ROUTE},
    services::{Behaviour, Counts, Services},
    traffic::{Client, Kind, CONNECTIONS},
};

/// The scene's name, as its verdict line gives it.
pub(in crate::demo) const RETRIES: &str = "retries";
const RETRY_REQUESTS: usize = 400;
/// The instance that turns flaky.
const FLAKY: &str = "ratings-b";

/// Scene 3: ratings-b fails 30% of its requests (503s and dropped
/// connections); the route's retries must hide every one from the clients.
pub(in crate::demo) async fn retries(mesh: &Mesh, services: &Services, policies: &Policies) -> Vec<String> {
    println!("3. Retries: ratings instance {FLAKY} turns flaky");
    print_wrapped(
        "  configured: ",
        &format!("route {RETRY_ROUTE} retry_policy {}", flow(&policies.retry)),
    );
    print_wrapped(
        "              ",
        &format!(
            "cluster {RETRY_CLUSTER} circuit_breakers.thresholds {}",
            flow(&policies.retry_breaker)
        ),
    );
    match retry_scene(mesh, services).await {
        Ok(failures) => failures,
        Err(e) => vec![e],
    }
}

async fn retry_scene(mesh: &Mesh, services: &Services) -> Result<Vec<String>, String> {
    let flaky = services.get(FLAKY)?;
    let start = Stats::fetch(mesh.admin).await?;
    let before = flaky.counts();
    flaky.set(Behaviour::Flaky);
    println!("  {FLAKY} now answers 503 to 2 and drops the connection on 1 of every 10 requests");
    let mut client = Client::new(mesh.ingress);
    let samples = client.send(vec![Kind::Ratings; RETRY_REQUESTS]).await;
    flaky.set(Behaviour::Healthy);
    let samples = samples?;
    let counts = flaky.counts().since(before);
    let stats = Stats::fetch(mesh.admin).await?;

    let tally = Tally::new(Kind::Ratings, &samples).by_instance();
    println!(
        "  {} x {} over {CONNECTIONS} connections: {}",
        samples.len(),
        Kind::Ratings.request(),
        tally.summary()
    );
    println!(
        "  {FLAKY} got {} requests and failed {} ({:.0}%: {} x 503, {} dropped connections); clients saw {} errors",
        counts.received,
        counts.failed(),
        counts.failed() as f64 * 100.0 / counts.received.max(1) as f64,
        counts.answered_503,
        counts.reset,
        tally.errors()
    );
    let shown = [
        "upstream_rq_retry",
        "upstream_rq_retry_success",
        "upstream_rq_retry_overflow",
    ];
    print_wrapped("  remora's stats ", &stats.show(RETRY_CLUSTER, &shown));
    let delta = |stat: &str| {
        stats
            .cluster(RETRY_CLUSTER, stat)
            .map(|v| v.saturating_sub(start.cluster(RETRY_CLUSTER, stat).unwrap_or(0)))
    };
    let retried = Retried {
        requests: samples.len(),
        errors: tally.errors(),
        flaky: counts,
        retry: delta(shown[0]),
        retry_success: delta(shown[1]),
    };
    Ok(retried.judge())
}

/// What the retry scene measured.
#[derive(Debug)]
struct Retried {
    requests: usize,
    /// Requests the clients did not get a 200 for.
    errors: usize,
    /// What the flaky instance counted.
    flaky: Counts,
    /// remora's `upstream_rq_retry` and `_retry_success` during the scene.
    retry: Option<u64>,
    retry_success: Option<u64>,
}

impl Retried {
    fn judge(&self) -> Vec<String> {
        let mut failures = Vec::new();
        if self.errors > 0 {
            failures.push(format!(
                "clients saw {} errors of {} requests",
                self.errors, self.requests
            ));
        }
        // Round robin gives the flaky instance about half of the first tries,
        // and it fails 30% of them: expect about 15% of the requests, and ask
        // for a third of that, so that the retries had something to hide.
        let wanted = (self.requests as u64 / 20).max(1);
        if self.flaky.failed() < wanted {
            failures.push(format!(
                "{FLAKY} failed only {} requests (of {} it got), fewer than {wanted}: it was not in rotation",
                self.flaky.failed(),
                self.flaky.received
            ));
        }
        // Each failed try is retried once, on the other instance, which answers.
        let failed = self.flaky.failed();
        for (stat, value) in [
            ("upstream_rq_retry", self.retry),
            ("upstream_rq_retry_success", self.retry_success),
        ] {
            match value {
                Some(v) if v == failed => {}
                Some(v) => failures.push(format!(
                    "{stat} of {RETRY_CLUSTER} went up by {v}, but {FLAKY} failed {failed} tries (one retry each)"
                )),
                None => failures.push(format!("/stats/prometheus has no {stat} for {RETRY_CLUSTER}")),
            }
        }
        failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retried(errors: usize, failed: u64, retry: Option<u64>) -> Retried {
        Retried {
            requests: 400,
            errors,
            flaky: Counts {
                received: 200,
                answered_503: failed * 2 / 3,
                reset: failed - failed * 2 / 3,
            },
            retry,
            retry_success: retry,
        }
    }

    #[test]
    fn retries_judged_by_client_errors_and_retry_counters() {
        assert!(retried(0, 60, Some(60)).judge().is_empty());
        assert_eq!(
            retried(3, 60, Some(60)).judge(),
            ["clients saw 3 errors of 400 requests"]
        );
        assert_eq!(retried(0, 60, Some(57)).judge().len(), 2);
        assert_eq!(retried(0, 60, None).judge().len(), 2);
        let idle = retried(0, 4, Some(4)).judge();
        assert!(idle[0].contains("it was not in rotation"), "{idle:?}");
    }
}
