//! Incremental (Delta) xDS on the ADS stream. The client keeps the resources
//! it holds per type with their versions; each response adds, replaces or
//! removes some of them, and the whole held set then goes through the same
//! `State::apply` as state of the world, so translation, warming, last-good
//! retention and NACK details are one code path. Subscriptions are diffs:
//! `*` for CDS and LDS, the RDS/EDS names in use for the others. A reconnect
//! sends `initial_resource_versions`, so unchanged resources are not resent.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use envoy_types::pb::{
    envoy::{
        config::core::v3::Node,
        service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse},
    },
    google::rpc::Status,
};

use super::{
    answer_responses, lock,
    state::{known_type, State, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE},
    tokio_stream_from, Client, Shared, StreamError,
};
use crate::{proxy::Proxy, xds::decode::release_memory};

pub(super) async fn stream_once(
    proxy: &Arc<Proxy>,
    state: &Shared,
    mut client: Client,
    node: Node,
) -> Result<(), StreamError> {
    let (tx, rx) = tokio::sync::mpsc::channel::<DeltaDiscoveryRequest>(16);
    let (initial, server) = {
        let mut st = lock(state);
        st.subscribed.clear();
        let mut reqs = Vec::new();
        for (enabled, type_url) in [(st.cfg.dynamic.cds, CLUSTER_TYPE), (st.cfg.dynamic.lds, LISTENER_TYPE)] {
            if enabled {
                reqs.push(DeltaDiscoveryRequest {
                    node: Some(node.clone()),
                    type_url: type_url.to_string(),
                    resource_names_subscribe: vec!["*".to_string()],
                    initial_resource_versions: held_versions(&st, type_url),
                    ..Default::default()
                });
            }
        }
        reqs.extend(subscription_changes(&mut st, &node));
        (reqs, st.cfg.server)
    };
    for req in initial {
        tx.send(req).await.map_err(|_| StreamError::Closed)?;
    }
    let responses = client
        .delta_aggregated_resources(tokio_stream_from(rx))
        .await?
        .into_inner();
    tracing::info!(server = %server, "xDS stream open (delta)");
    answer_responses(
        proxy,
        state,
        &tx,
        responses,
        node,
        handle_response,
        subscription_changes,
    )
    .await
}

fn held_versions(state: &State, type_url: &str) -> HashMap<String, String> {
    state
        .raw
        .get(type_url)
        .map(|m| {
            m.iter()
                .map(|(name, (version, _))| (name.clone(), version.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// Subscribes to new RDS/EDS names and unsubscribes from those no longer used.
fn subscription_changes(state: &mut State, node: &Node) -> Vec<DeltaDiscoveryRequest> {
    let mut out = Vec::new();
    for type_url in [ENDPOINT_TYPE, ROUTE_TYPE] {
        let wanted = state.wanted(type_url);
        let current = state.subscribed.get(type_url).cloned().unwrap_or_default();
        let subscribe: Vec<String> = wanted.difference(&current).cloned().collect();
        let unsubscribe: Vec<String> = current.difference(&wanted).cloned().collect();
        if subscribe.is_empty() && unsubscribe.is_empty() {
            continue;
        }
        let first = !state.subscribed.contains_key(type_url);
        if let Some(held) = state.raw.get_mut(type_url) {
            held.retain(|name, _| wanted.contains(name));
        }
        out.push(DeltaDiscoveryRequest {
            node: first.then(|| node.clone()),
            type_url: type_url.to_string(),
            resource_names_subscribe: subscribe,
            resource_names_unsubscribe: unsubscribe,
            initial_resource_versions: if first {
                held_versions(state, type_url)
            } else {
                HashMap::new()
            },
            ..Default::default()
        });
        state.subscribed.insert(type_url, wanted);
    }
    out
}

fn handle_response(
    proxy: &Proxy,
    state: &mut State,
    resp: DeltaDiscoveryResponse,
    node: &Node,
) -> DeltaDiscoveryRequest {
    let Some(type_url) = known_type(&resp.type_url) else {
        tracing::warn!(type_url = %resp.type_url, "xDS response of an unexpected type");
        let detail = format!("unexpected type_url {}", resp.type_url);
        return reply(resp.type_url.clone(), resp.nonce, node, Some(detail));
    };
    let held = state.raw.entry(type_url).or_default();
    let mut changed = BTreeSet::new();
    let mut previous = Vec::new();
    for r in &resp.resources {
        if let Some(any) = &r.resource {
            previous.push((
                r.name.clone(),
                held.insert(r.name.clone(), (r.version.clone(), any.clone())),
            ));
            changed.insert(r.name.clone());
        }
    }
    for name in &resp.removed_resources {
        held.remove(name);
    }
    let all: Vec<_> = held.values().map(|(_, any)| any.clone()).collect();
    let report = state.apply(proxy, type_url, &all);
    release_memory();
    // A rejected resource is not held at its new version: a reconnect must
    // not tell the server we have it (Envoy keeps only what it accepted).
    if let Some(held) = state.raw.get_mut(type_url) {
        for (name, before) in previous {
            if report.rejected.iter().any(|(n, _)| *n == name) {
                match before {
                    Some(b) => {
                        held.insert(name, b);
                    }
                    None => {
                        held.remove(&name);
                    }
                }
            }
        }
    }
    let version = if resp.system_version_info.is_empty() {
        resp.nonce.clone()
    } else {
        resp.system_version_info.clone()
    };
    if let Ok(mut status) = proxy.state.xds.lock() {
        // Only what this response carried counts as updated or rejected.
        let accepted: Vec<String> = report
            .accepted
            .iter()
            .filter(|n| changed.contains(*n))
            .cloned()
            .collect();
        let rejected: Vec<_> = report
            .rejected
            .iter()
            .filter(|(n, _)| changed.contains(n))
            .cloned()
            .collect();
        status.record(type_url, &version, &accepted, &rejected);
        let names = state.names(type_url);
        status.retain(type_url, |n| names.contains(n));
    }
    if report.errors.is_empty() {
        tracing::info!(type_url, version = %version, resources = resp.resources.len(), removed = resp.removed_resources.len(), "xDS delta applied (ACK)");
        reply(type_url.to_string(), resp.nonce, node, None)
    } else {
        let detail = report.errors.join("; ");
        tracing::warn!(type_url, version = %version, error = %detail, "xDS delta rejected (NACK)");
        reply(type_url.to_string(), resp.nonce, node, Some(detail))
    }
}

fn reply(type_url: String, nonce: String, _node: &Node, error: Option<String>) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url,
        response_nonce: nonce,
        // INVALID_ARGUMENT, as Envoy reports rejected config.
        error_detail: error.map(|message| Status {
            code: 3,
            message,
            details: Vec::new(),
        }),
        ..Default::default()
    }
}
