//! Real control-plane output: every Listener, Cluster, RouteConfiguration and
//! ClusterLoadAssignment in Istio's `/config_dump` test data
//! (`../shared/real-world-xds/istio-config-dumps/`, read in place) goes through
//! the same decode-and-translate path as xDS. Each is accepted or rejected
//! with a precise reason; nothing crashes. The summary prints per file.

use std::{collections::BTreeMap, path::Path};

use remora::xds::{
    decode::{parse_document, ApiPool},
    translate::{self, Ctx, Msg},
};
use serde_json::Value;

const RESOURCES: &[&str] = &[
    "envoy.config.listener.v3.Listener",
    "envoy.config.cluster.v3.Cluster",
    "envoy.config.route.v3.RouteConfiguration",
    "envoy.config.endpoint.v3.ClusterLoadAssignment",
];

/// Every resource object (one with a resource `@type`) in a dump.
fn resources(v: &Value, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(t)) = map.get("@type") {
                let name = t.rsplit('/').next().unwrap_or(t);
                if RESOURCES.contains(&name) {
                    let mut body = map.clone();
                    body.remove("@type");
                    out.push((name.to_string(), Value::Object(body)));
                    return;
                }
            }
            map.values().for_each(|v| resources(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| resources(v, out)),
        _ => {}
    }
}

#[test]
fn every_istio_resource_is_accepted_or_rejected_with_a_reason() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/real-world-xds/istio-config-dumps");
    assert!(dir.is_dir(), "the Istio config dumps are missing at {}", dir.display());
    let pool = ApiPool::load().expect("descriptor pool");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).collect();
    files.sort();
    let (mut total, mut accepted) = (0, 0);
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let doc = parse_document(&name, &text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut found = Vec::new();
        resources(&doc, &mut found);
        let mut ok = 0;
        for (kind, body) in &found {
            total += 1;
            let errors: Vec<String> = match pool.decode_value(kind, body.clone()) {
                Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
                Ok(msg) => {
                    let ctx = Ctx::new(&pool);
                    let m = Msg::new(msg, String::new(), &ctx);
                    let translated = match kind.as_str() {
                        "envoy.config.listener.v3.Listener" => translate::listener(m).is_some(),
                        "envoy.config.cluster.v3.Cluster" => translate::cluster(m).is_some(),
                        "envoy.config.route.v3.RouteConfiguration" => translate::route_configuration(m).is_some(),
                        _ => translate::cluster_load_assignment(m).is_some(),
                    };
                    let (errs, _) = ctx.into_result();
                    assert!(
                        translated || !errs.is_empty(),
                        "{name}: a {kind} failed without saying why"
                    );
                    errs.iter().map(|e| e.to_string()).collect()
                }
            };
            if errors.is_empty() {
                ok += 1;
            }
            for e in &errors {
                assert!(!e.trim().is_empty(), "{name}: empty error");
                // Istio's telemetry-only extensions are skipped with a warning, never a rejection.
                for t in remora::xds::translate::TELEMETRY_ONLY {
                    assert!(!e.contains(t), "{name}: rejected for telemetry-only {t}: {e}");
                }
                // The reason, without the resource-specific path, for the summary.
                let reason = e.rsplit(": ").next().unwrap_or(e).to_string();
                *reasons.entry(reason).or_default() += 1;
            }
        }
        accepted += ok;
        println!("{name}: {} resources, {ok} accepted", found.len());
    }
    println!("\n{total} resources, {accepted} accepted. Most common reasons for rejection:");
    let mut top: Vec<_> = reasons.into_iter().collect();
    top.sort_by_key(|r| std::cmp::Reverse(r.1));
    for (reason, n) in top.iter().take(15) {
        println!("  {n:4}  {reason}");
    }
    assert!(total > 50, "expected the dumps' resources, found {total}");
}
