//! `remora demo`: two sample "reviews" services, an xDS control plane serving
//! the `xds-fixtures/demo` listener and clusters, and remora taking its config
//! from it, all on loopback in this process. Sends traffic, changes the
//! weighted split over xDS mid-run, and reports what happened before, during
//! and after the update. This file tells that story and gives the verdict; the
//! pieces live beside it (services, resources, mesh, traffic, report).

mod mesh;
mod report;
mod resources;
mod services;
mod traffic;

use std::time::Instant;

use mesh::{Mesh, DRAIN_TIMEOUT};
use report::Tally;
use resources::{DemoConfig, Split, FIXTURE_NAME};
use services::Service;
use traffic::{Client, Kind, Sample, CONNECTIONS, KINDS};

use crate::controlplane::{snapshot::LISTENER, Resource};

/// The split the control plane changes to mid-run (the fixture says 80/20):
/// reversed, so that a proxy still on the old weights cannot pass for one on the new.
const UPDATED_SPLIT: Split = Split { v1: 20, v2: 80 };

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
    let v1 = Service::start("v1").await?;
    let v2 = Service::start("v2").await?;
    let config = DemoConfig::from_fixture(v1.addr, v2.addr)?;
    let splits = [config.split(), UPDATED_SPLIT];
    let (initial, updated) = (config.resources(splits[0])?, config.resources(splits[1])?);
    drop(config); // it holds Envoy's API descriptor pool (~15 MB), no longer needed

    let mesh = Mesh::start(initial).await?;
    println!(
        "remora demo: two sample services, an xDS control plane, and remora configured by it, all in this process."
    );
    println!(
        "  reviews v1 on {}, reviews v2 on {} (each answers \"reviews vN\", x-version: vN)",
        v1.addr, v2.addr
    );
    println!(
        "  control plane on {} serves the listener and clusters of xds-fixtures/{FIXTURE_NAME} (ports made ephemeral)",
        mesh.cp_addr
    );
    println!(
        "  remora, whose bootstrap names only the control plane, ACKed xDS version {} ({}) in {} ms",
        mesh.initial.version,
        mesh.initial.types.join(", "),
        mesh.initial.after.as_millis()
    );
    println!("  and serves listener \"ingress\" on {}", mesh.ingress);
    println!();

    let checked = match update_story(&mesh, requests, splits, updated).await {
        Ok(Story { all, mut failures }) => {
            let admin = mesh.admin;
            println!("Admin API: http://{admin}/ (/stats/prometheus, /clusters, /config_dump; up while the demo runs)");
            report::admin_stats(admin, &report::served(&all), &mut failures).await;
            println!();
            Ok(failures)
        }
        Err(e) => Err(e),
    };
    if !mesh.stop().await {
        println!("note: remora's drain took longer than {DRAIN_TIMEOUT:?}");
    }
    drop((v1, v2));
    let failures = checked?;

    if failures.is_empty() {
        println!("OK: every route behaved as configured before, during and after the xDS update, remora ACKed");
        println!("    every version, and its counters agree with the client.");
        println!("Next: `remora run -c xds-fixtures/{FIXTURE_NAME}` serves this config on :10000, admin :15000.");
        Ok(true)
    } else {
        println!("FAILED: {} thing(s) were not as configured:", failures.len());
        for f in &failures {
            println!("  - {f}");
        }
        Ok(false)
    }
}

/// Everything sent, and what was not as configured.
struct Story {
    all: Vec<Sample>,
    failures: Vec<String>,
}

/// Half the requests under the fixture's split, the split changed over xDS
/// while `/reviews` traffic keeps flowing, the other half under the new split.
/// Prints each phase; the checks go to `failures`.
async fn update_story(mesh: &Mesh, requests: u32, splits: [Split; 2], updated: Vec<Resource>) -> Result<Story, String> {
    let mut failures = Vec::new();
    let mut client = Client::new(mesh.ingress);
    let halves = [requests / 2, requests - requests / 2];

    let started = Instant::now();
    let before = client.send(traffic::plan(halves[0])).await?;
    println!(
        "xDS version {}: {} requests to http://{} over {CONNECTIONS} keep-alive connections in {} ms",
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
            "Update: pushed xDS version {version} (split {}); remora ACKed it ({}) {} ms later",
            splits[1].label(),
            a.types.join(", "),
            a.after.as_millis()
        ),
        Err(e) => {
            println!(
                "Update: pushed xDS version {version} (split {}); {e}",
                splits[1].label()
            );
            failures.push(e.clone());
        }
    }
    let tally = Tally::new(Kind::Split, &during);
    println!("  {:<30} {}", "GET /reviews until the ACK", tally.summary());
    tally.check("during the update: ", None, &mut failures);

    let started = Instant::now();
    let after = client.send(traffic::plan(halves[1])).await?;
    let reopened = match client.opened() - opened {
        0 => "the same connections".to_string(),
        n => format!("{n} new connection(s)"),
    };
    println!(
        "xDS version {version}: {} requests on {reopened} in {} ms",
        after.len(),
        started.elapsed().as_millis()
    );
    print_split(&after, splits[1], &format!("version {version}: "), &mut failures);

    println!("The other routes, under both versions:");
    let mut all = before;
    all.extend(after);
    for kind in KINDS.into_iter().filter(|&k| k != Kind::Split) {
        let tally = Tally::new(kind, &all);
        println!("  {:<30} {}", kind.request(), kind.config(""));
        println!("      {}", tally.summary());
        tally.check("", None, &mut failures);
    }
    println!();
    all.extend(during);
    Ok(Story { all, failures })
}

/// Prints and checks the split route's answers against the weights in force.
fn print_split(samples: &[Sample], split: Split, when: &str, failures: &mut Vec<String>) {
    let tally = Tally::new(Kind::Split, samples);
    println!("  {:<30} {}", Kind::Split.request(), Kind::Split.config(&split.label()));
    println!("      {}", tally.summary());
    tally.check(when, Some(split.v1_share()), failures);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn demo_runs_and_passes() {
        assert_eq!(run(100).await, 0);
    }
}
