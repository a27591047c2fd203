//! `remora demo`: sample instances of a few Bookinfo-like services, an xDS
//! control plane serving the `xds-fixtures/demo` listener and clusters, and
//! remora taking its config from it, all on loopback in this process. Four
//! scenes: the weighted split measured before, during and after an xDS
//! update of its weights; a failing instance ejected by outlier detection;
//! a flaky instance hidden by retries; a burst meeting a circuit breaker.
//! Then remora's own counters against what the instances counted. This file
//! tells that story and gives the verdict; the pieces live beside it
//! (services, resources, mesh, traffic, scenes, report).

mod mesh;
mod report;
mod resources;
mod scenes;
mod services;
mod traffic;

use std::time::Instant;

use mesh::{Mesh, DRAIN_TIMEOUT};
use report::Tally;
use resources::{DemoConfig, Split, FIXTURE_NAME};
use services::{Services, TOPOLOGY};
use traffic::{Client, Kind, Sample, CONNECTIONS, KINDS};

use crate::controlplane::{snapshot::LISTENER, Resource};

/// The split the control plane changes to mid-run (the fixture says 80/20):
/// reversed, so that a proxy still on the old weights cannot pass for one on the new.
const UPDATED_SPLIT: Split = Split { v1: 20, v2: 80 };

/// The verdict names of the scenes that are not in `scenes`.
const SPLIT_SCENE: &str = "weighted split";
const COUNTERS: &str = "counters";

/// Runs the demo; returns the process exit code (0: everything behaved as configured).
pub async fn run(requests: u32) -> i32 {
    // Each xDS version gets half, and each half at least one request per route.
    let min = 2 * KINDS.len() as u32;
    if requests < min {
        eprintln!("error: --requests must be at least {min} (one per route, before and after the update)");
        return crate::cli::EXIT_CONFIG;
    }
    match demo(requests).await {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// Ok(passed) once the report is printed; Err when the demo could not even run.
async fn demo(requests: u32) -> Result<bool, String> {
    let services = Services::start().await?;
    let endpoints: Vec<_> = TOPOLOGY.iter().map(|(c, _)| (*c, services.addrs(c))).collect();
    let config = DemoConfig::from_fixture(&endpoints)?;
    let policies = config.policies()?;
    let splits = [config.split(), UPDATED_SPLIT];
    let (initial, updated) = (config.resources(splits[0])?, config.resources(splits[1])?);
    drop(config); // it holds Envoy's API descriptor pool (~15 MB), no longer needed

    let mesh = Mesh::start(initial).await?;
    println!("remora demo: sample services, an xDS control plane, and remora configured by it, all in this process.");
    println!("  instances on 127.0.0.1 by cluster: {}", services.describe());
    println!(
        "  control plane on {} serves the listener and {} clusters of xds-fixtures/{FIXTURE_NAME} (ports made ephemeral)",
        mesh.cp_addr,
        TOPOLOGY.len()
    );
    println!(
        "  remora, whose bootstrap names only the control plane, ACKed xDS version {} ({}) in {} ms",
        mesh.initial.version,
        mesh.initial.types.join(", "),
        mesh.initial.after.as_millis()
    );
    println!(
        "  and serves listener \"ingress\" on {}; its admin API is on http://{}/",
        mesh.ingress, mesh.admin
    );
    println!();

    let mut verdicts = Vec::new();
    let split = match update_story(&mesh, requests, splits, updated).await {
        Ok(failures) => failures,
        Err(e) => vec![e],
    };
    verdicts.push((SPLIT_SCENE, report::verdict(SPLIT_SCENE, &split)));
    println!();
    let ejection = scenes::ejection(&mesh, &services, &policies).await;
    verdicts.push((scenes::EJECTION, report::verdict(scenes::EJECTION, &ejection)));
    println!();
    let retries = scenes::retries(&mesh, &services, &policies).await;
    verdicts.push((scenes::RETRIES, report::verdict(scenes::RETRIES, &retries)));
    println!();
    let breaker = scenes::breaker(&mesh, &services, &policies).await;
    verdicts.push((scenes::BREAKER, report::verdict(scenes::BREAKER, &breaker)));
    println!();
    let counters = report::admin_stats(mesh.admin, &services).await;
    verdicts.push((COUNTERS, report::verdict(COUNTERS, &counters)));
    println!();

    if !mesh.stop().await {
        println!("note: remora's drain took longer than {DRAIN_TIMEOUT:?}");
    }
    drop(services);

    let failed: Vec<&str> = verdicts.iter().filter(|(_, ok)| !ok).map(|(name, _)| *name).collect();
    if failed.is_empty() {
        println!("OK: the split, the ejection, the retries and the breaker behaved as configured, remora ACKed");
        println!("    every xDS version, and its counters agree with what the services counted.");
        println!("Next: `remora run -c xds-fixtures/{FIXTURE_NAME}` serves this config on :10000, admin :15000.");
        Ok(true)
    } else {
        println!(
            "FAILED: {} of {} verdicts: {} (what was wrong is under each)",
            failed.len(),
            verdicts.len(),
            failed.join(", ")
        );
        Ok(false)
    }
}

/// Scene 1: half the requests under the fixture's split, the split changed
/// over xDS while `/reviews` traffic keeps flowing, the other half under the
/// new split. Prints each phase; returns what was not as configured.
async fn update_story(
    mesh: &Mesh,
    requests: u32,
    splits: [Split; 2],
    updated: Vec<Resource>,
) -> Result<Vec<String>, String> {
    println!("1. Weighted split: measured, then changed over xDS while traffic flows");
    let mut failures = Vec::new();
    let mut client = Client::new(mesh.ingress);
    let halves = [requests / 2, requests - requests / 2];

    let started = Instant::now();
    let before = client.send(traffic::plan(halves[0])).await?;
    println!(
        "  xDS version {}: {} requests to http://{} over {CONNECTIONS} keep-alive connections in {} ms",
        mesh.initial.version,
        before.len(),
        mesh.ingress,
        started.elapsed().as_millis()
    );
    print_split(
        &before,
        splits[0],
        &format!("version {}: ", mesh.initial.version),
        &mut failures,
    );

    // The update, with /reviews requests on every connection until remora ACKs it.
    let (version, published) = mesh.push(updated);
    let opened = client.opened();
    let (acked, during) = client
        .send_until(Kind::Split, mesh.acked(&version, &[LISTENER], published))
        .await;
    let during = during?;
    match &acked {
        Ok(a) => println!(
            "  update: pushed xDS version {version} (split {}); remora ACKed it ({}) {} ms later",
            splits[1].label(),
            a.types.join(", "),
            a.after.as_millis()
        ),
        Err(e) => {
            println!(
                "  update: pushed xDS version {version} (split {}); {e}",
                splits[1].label()
            );
            failures.push(e.clone());
        }
    }
    let tally = Tally::new(Kind::Split, &during);
    println!("    {:<30} {}", "GET /reviews until the ACK", tally.summary());
    tally.check("during the update: ", None, &mut failures);

    let started = Instant::now();
    let after = client.send(traffic::plan(halves[1])).await?;
    let reopened = match client.opened() - opened {
        0 => "the same connections".to_string(),
        n => format!("{n} new connection(s)"),
    };
    println!(
        "  xDS version {version}: {} requests on {reopened} in {} ms",
        after.len(),
        started.elapsed().as_millis()
    );
    print_split(&after, splits[1], &format!("version {version}: "), &mut failures);

    println!("  the other routes, under both versions:");
    let mut all: Vec<Sample> = before;
    all.extend(after);
    for kind in KINDS.into_iter().filter(|&k| k != Kind::Split) {
        let tally = Tally::new(kind, &all);
        println!("    {:<30} {}", kind.request(), kind.config(""));
        println!("        {}", tally.summary());
        tally.check("", None, &mut failures);
    }
    Ok(failures)
}

/// Prints and checks the split route's answers against the weights in force.
fn print_split(samples: &[Sample], split: Split, when: &str, failures: &mut Vec<String>) {
    let tally = Tally::new(Kind::Split, samples);
    println!(
        "    {:<30} {}",
        Kind::Split.request(),
        Kind::Split.config(&split.label())
    );
    println!(
        "        {} | v1 expected within {:.0}% +/- {:.0}",
        tally.summary(),
        split.v1_share() * 100.0,
        report::split_tolerance(split.v1_share(), tally.answered()) * 100.0
    );
    tally.check(when, Some(split.v1_share()), failures);
}
