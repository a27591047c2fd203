//! Scene 4: details holds every request; a burst of `BURST_FACTOR` x
//! `max_requests` concurrent requests must see exactly `max_requests` reach
//! it and the rest answered 503 with `x-envoy-overloaded` at once.

use std::time::Duration;

use tokio::{sync::watch, time::timeout};

use crate::demo::{
    mesh::Mesh,
    report::{ms, percentile, print_wrapped, Stats, Tally},
    resources::{flow, Policies, BREAKER_CLUSTER},
    services::{Behaviour, Services},
    traffic::{Client, Kind},
};

/// The scene's name, as its verdict line gives it.
pub(in crate::demo) const BREAKER: &str = "circuit breaker";
/// The burst is this many times the breaker's `max_requests`, each on its own connection.
const BURST_FACTOR: u64 = 4;
const MAX_BURST: u64 = 400;
/// How long the burst may take until every request is held or answered.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
/// The instance that holds requests.
const HOLDING: &str = "details";
/// Where a `max_requests` refusal is counted: in the first before Envoy 1.38,
/// in the second since (and in remora). The scene adds them up, as an
/// operator watching both Envoy versions would.
const OVERFLOW_STATS: [&str; 2] = ["upstream_rq_pending_overflow", "upstream_rq_active_overflow"];

/// Scene 4: prints what was configured, runs the burst, returns what was not as configured.
pub(in crate::demo) async fn breaker(mesh: &Mesh, services: &Services, policies: &Policies) -> Vec<String> {
    let limit = policies.max_requests();
    let burst = (limit * BURST_FACTOR).min(MAX_BURST);
    println!("4. Circuit breaker: a burst of {burst} concurrent requests to {BREAKER_CLUSTER}");
    print_wrapped(
        "  configured: ",
        &format!(
            "cluster {BREAKER_CLUSTER} circuit_breakers.thresholds {}",
            flow(&policies.breaker)
        ),
    );
    match breaker_scene(mesh, services, limit, burst).await {
        Ok(failures) => failures,
        Err(e) => vec![e],
    }
}

async fn breaker_scene(mesh: &Mesh, services: &Services, limit: u64, burst: u64) -> Result<Vec<String>, String> {
    let holding = services.get(HOLDING)?;
    let start = Stats::fetch(mesh.admin).await?;
    let before = holding.counts();
    holding.set(Behaviour::Holding);
    println!(
        "  {HOLDING} now holds every request until released; {burst} x {} at once, one connection each",
        Kind::Details.request()
    );
    let mut client = Client::with_connections(mesh.ingress, burst as usize);
    let (mut held, mut finished) = (holding.held(), client.finished());
    let sent = client.send(vec![Kind::Details; burst as usize]);
    let watch = async {
        // Once every request is either held at details or answered, the
        // breaker has decided them all: look, then let the held ones go.
        let settled = timeout(SETTLE_TIMEOUT, settle(&mut held, &mut finished, burst as usize)).await;
        let (at_details, answered) = (*held.borrow(), *finished.borrow());
        let stats = Stats::fetch(mesh.admin).await;
        holding.release();
        (settled.is_ok(), at_details, answered, stats)
    };
    let (samples, (settled, at_details, answered, during)) = tokio::join!(sent, watch);
    let samples = samples?;
    let during = during?;
    let after = Stats::fetch(mesh.admin).await?;
    let counts = holding.counts().since(before);

    let tally = Tally::new(Kind::Details, &samples).by_instance();
    let mut refused: Vec<Duration> = samples
        .iter()
        .filter(|s| s.outcome.as_ref().is_ok_and(|a| a.overloaded))
        .map(|s| s.latency)
        .collect();
    refused.sort();
    println!(
        "  with each request held or answered: {at_details} at {HOLDING}, {answered} answered, {} of them 503 x-envoy-overloaded (p99 {})",
        refused.len(),
        ms(percentile(&refused, 0.99))
    );
    let gauges = [
        "circuit_breakers_default_rq_open",
        "circuit_breakers_default_remaining_rq",
        "upstream_rq_active",
    ];
    print_wrapped("  remora's stats then ", &during.show(BREAKER_CLUSTER, &gauges));
    println!("  released: {}", tally.summary());
    // A counter missing from both readings shows as "-".
    let deltas = OVERFLOW_STATS.map(|stat| {
        let delta = after
            .cluster(BREAKER_CLUSTER, stat)
            .map(|v| v.saturating_sub(start.cluster(BREAKER_CLUSTER, stat).unwrap_or(0)));
        (stat, delta)
    });
    let shown: Vec<String> = deltas
        .iter()
        .map(|(stat, d)| format!("{stat} {}", d.map_or("-".into(), |v| format!("+{v}"))))
        .collect();
    print_wrapped(
        "  remora's stats after ",
        &format!("{}, {}", after.show(BREAKER_CLUSTER, &gauges[..2]), shown.join(", ")),
    );
    let overflow = deltas.iter().filter_map(|(_, d)| *d).reduce(|a, b| a + b);

    let burst = Burst {
        limit,
        sent: burst,
        settled,
        at_details: at_details as u64,
        answered: answered as u64,
        refused: tally.overloaded() as u64,
        ok: tally.status(200) as u64,
        received: counts.received,
        overflow,
    };
    let mut failures = burst.judge();
    during.expect(BREAKER_CLUSTER, gauges[0], 1, &mut failures);
    during.expect(BREAKER_CLUSTER, gauges[1], 0, &mut failures);
    after.expect(BREAKER_CLUSTER, gauges[0], 0, &mut failures);
    after.expect(BREAKER_CLUSTER, gauges[1], limit, &mut failures);
    Ok(failures)
}

/// Waits until `held + finished` reaches `total`, or a side stops reporting.
async fn settle(held: &mut watch::Receiver<usize>, finished: &mut watch::Receiver<usize>, total: usize) {
    loop {
        if *held.borrow_and_update() + *finished.borrow_and_update() >= total {
            return;
        }
        let changed = tokio::select! {
            r = held.changed() => r,
            r = finished.changed() => r,
        };
        if changed.is_err() {
            return;
        }
    }
}

/// What the breaker scene measured.
#[derive(Debug)]
struct Burst {
    /// `max_requests`.
    limit: u64,
    sent: u64,
    /// Whether every request was held or answered within `SETTLE_TIMEOUT`.
    settled: bool,
    /// Held at details, and answered, before the release.
    at_details: u64,
    answered: u64,
    /// Answers with `x-envoy-overloaded: true`, and 200s, in the end.
    refused: u64,
    ok: u64,
    /// Requests details counted.
    received: u64,
    /// How much remora's `OVERFLOW_STATS` went up during the scene, together
    /// (None: it has neither).
    overflow: Option<u64>,
}

impl Burst {
    fn judge(&self) -> Vec<String> {
        let mut failures = Vec::new();
        let over = self.sent.saturating_sub(self.limit);
        if !self.settled {
            failures.push(format!(
                "after {SETTLE_TIMEOUT:?}, {} of {} requests were neither at {HOLDING} nor answered",
                self.sent.saturating_sub(self.at_details + self.answered),
                self.sent
            ));
        }
        if self.at_details != self.limit || self.answered != over {
            failures.push(format!(
                "during the burst {} requests reached {HOLDING} and {} were answered; expected max_requests = {} and {over}",
                self.at_details, self.answered, self.limit
            ));
        }
        if self.refused != over || self.ok != self.limit || self.received != self.limit {
            failures.push(format!(
                "in the end {} were refused (x-envoy-overloaded), {} answered 200 and {HOLDING} got {}; expected {over}, {} and {}",
                self.refused, self.ok, self.received, self.limit, self.limit
            ));
        }
        match self.overflow {
            Some(v) if v == over => {}
            Some(v) => failures.push(format!(
                "{} of {BREAKER_CLUSTER} went up by {v} together, expected {over}",
                OVERFLOW_STATS.join(" and ")
            )),
            None => failures.push(format!(
                "/stats/prometheus has no {} for {BREAKER_CLUSTER}",
                OVERFLOW_STATS.join(" or ")
            )),
        }
        failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn burst() -> Burst {
        Burst {
            limit: 10,
            sent: 40,
            settled: true,
            at_details: 10,
            answered: 30,
            refused: 30,
            ok: 10,
            received: 10,
            overflow: Some(30),
        }
    }

    #[test]
    fn a_burst_judged_by_what_reached_details_and_was_refused() {
        assert!(burst().judge().is_empty());
        let through = Burst {
            at_details: 40,
            answered: 0,
            refused: 0,
            ok: 40,
            received: 40,
            overflow: Some(0),
            ..burst()
        };
        assert_eq!(through.judge().len(), 3, "{:?}", through.judge());
        let queued = Burst {
            settled: false,
            at_details: 10,
            answered: 20,
            ..burst()
        };
        let failures = queued.judge();
        assert!(failures[0].contains("10 of 40 requests were neither"), "{failures:?}");
    }
}
