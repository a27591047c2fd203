//! The demo's config as xDS: the fixture's listener and clusters turned into
//! the resources the in-process control plane serves (ephemeral listener port,
//! the sample services as endpoints, the split's weights as asked), and the
//! bootstrap that gives remora nothing but the way to that control plane.

use std::net::SocketAddr;

use prost::Message;
use serde_json::{json, Value};

use crate::{
    controlplane::{
        snapshot::{CLUSTER, LISTENER},
        Resource,
    },
    xds::decode::{parse_document, ApiPool},
};

pub(super) const FIXTURE_NAME: &str = "demo/bootstrap.yaml";
const FIXTURE: &str = include_str!("../../xds-fixtures/demo/bootstrap.yaml");
/// The listener remora serves the demo on, and the route whose weights change.
pub(super) const LISTENER_NAME: &str = "ingress";
const SPLIT_ROUTE: &str = "split";
const CLUSTERS: [&str; 2] = ["reviews-v1", "reviews-v2"];

/// The weights of the `split` route: reviews-v1, reviews-v2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Split {
    pub(super) v1: u32,
    pub(super) v2: u32,
}

impl Split {
    /// reviews-v1's share of the traffic.
    pub(super) fn v1_share(self) -> f64 {
        f64::from(self.v1) / f64::from((self.v1 + self.v2).max(1))
    }

    /// "reviews-v1 80% / reviews-v2 20%"
    pub(super) fn label(self) -> String {
        let v1 = self.v1_share() * 100.0;
        format!("reviews-v1 {v1:.0}% / reviews-v2 {:.0}%", 100.0 - v1)
    }
}

/// The fixture's listener and clusters (as JSON), ready to be re-weighted and encoded.
pub(super) struct DemoConfig {
    listener: Value,
    clusters: Vec<Value>,
    /// The weights the fixture gives the split route.
    split: Split,
    pool: ApiPool,
}

impl DemoConfig {
    /// Reads the fixture and points it at this process: the listener on
    /// 127.0.0.1:0, each cluster's only endpoint the sample service given.
    pub(super) fn from_fixture(v1: SocketAddr, v2: SocketAddr) -> Result<DemoConfig, String> {
        let bad = |e: &dyn std::fmt::Display| format!("the demo config xds-fixtures/{FIXTURE_NAME} does not load: {e}");
        let mut doc = parse_document(FIXTURE_NAME, FIXTURE).map_err(|e| bad(&e))?;
        let statics = doc
            .get_mut("static_resources")
            .ok_or_else(|| bad(&"no static_resources"))?;
        let mut listener = take_named(statics, "listeners", LISTENER_NAME)
            .ok_or_else(|| bad(&format!("no listener '{LISTENER_NAME}'")))?;
        listener["address"] = socket_address(SocketAddr::from(([127, 0, 0, 1], 0)));
        // take_named only matches objects, so the fields below can be set by index.
        let mut clusters = Vec::new();
        for (name, addr) in CLUSTERS.into_iter().zip([v1, v2]) {
            let mut cluster =
                take_named(statics, "clusters", name).ok_or_else(|| bad(&format!("no cluster '{name}'")))?;
            cluster["load_assignment"] = json!({
                "cluster_name": name,
                "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": socket_address(addr) } }] }],
            });
            clusters.push(cluster);
        }
        let split = fixture_split(&mut listener).ok_or_else(|| {
            bad(&format!(
                "no route '{SPLIT_ROUTE}' weighting {} and {}",
                CLUSTERS[0], CLUSTERS[1]
            ))
        })?;
        let pool = ApiPool::load().map_err(|e| bad(&e))?;
        Ok(DemoConfig {
            listener,
            clusters,
            split,
            pool,
        })
    }

    /// The weights the fixture gives the split route.
    pub(super) fn split(&self) -> Split {
        self.split
    }

    /// The listener and both clusters, encoded, with the split weighted as given.
    pub(super) fn resources(&self, split: Split) -> Result<Vec<Resource>, String> {
        let mut listener = self.listener.clone();
        // from_fixture found both clusters in the route: only their weights change.
        for c in split_clusters(&mut listener).into_iter().flatten() {
            if c["name"] == CLUSTERS[0] {
                c["weight"] = split.v1.into();
            } else if c["name"] == CLUSTERS[1] {
                c["weight"] = split.v2.into();
            }
        }
        let mut resources = vec![self.encode(LISTENER, LISTENER_NAME, listener)?];
        for (name, cluster) in CLUSTERS.into_iter().zip(&self.clusters) {
            resources.push(self.encode(CLUSTER, name, cluster.clone())?);
        }
        Ok(resources)
    }

    fn encode(&self, type_url: &str, name: &str, value: Value) -> Result<Resource, String> {
        let message = type_url.rsplit('/').next().unwrap_or(type_url);
        let decoded = self
            .pool
            .decode_value(message, value)
            .map_err(|e| format!("the demo's {message} '{name}' does not decode:\n{e}"))?;
        Ok(Resource::new(type_url, name, decoded.encode_to_vec()))
    }
}

/// The bootstrap remora starts from: an admin port, and ADS (SotW, over
/// HTTP/2) to the control plane at `xds` for its listeners and clusters.
pub(super) fn ads_bootstrap(xds: SocketAddr) -> String {
    format!(
        r#"node: {{ id: remora-demo, cluster: demo }}
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services:
    - envoy_grpc: {{ cluster_name: xds }}
  cds_config: {{ ads: {{}}, resource_api_version: V3 }}
  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {{}}
    load_assignment:
      cluster_name: xds
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}
"#,
        xds.ip(),
        xds.port()
    )
}

fn socket_address(a: SocketAddr) -> Value {
    json!({ "socket_address": { "address": a.ip().to_string(), "port_value": a.port() } })
}

fn fixture_split(listener: &mut Value) -> Option<Split> {
    let weighted = split_clusters(listener)?;
    let weight = |name: &str| {
        let w = weighted.iter().find(|c| c["name"] == name)?["weight"].as_u64()?;
        u32::try_from(w).ok()
    };
    let (v1, v2) = (weight(CLUSTERS[0])?, weight(CLUSTERS[1])?);
    (v1.checked_add(v2)? > 0).then_some(Split { v1, v2 })
}

/// Removes and returns the element named `name` of the list `statics[list]`.
fn take_named(statics: &mut Value, list: &str, name: &str) -> Option<Value> {
    let items = statics.get_mut(list)?.as_array_mut()?;
    let i = items.iter().position(|v| v["name"] == name)?;
    Some(items.remove(i))
}

/// The `weighted_clusters.clusters` list of the split route, wherever the
/// listener's HTTP connection manager has it.
fn split_clusters(listener: &mut Value) -> Option<&mut Vec<Value>> {
    listener
        .get_mut("filter_chains")?
        .as_array_mut()?
        .iter_mut()
        .filter_map(|fc| fc.get_mut("filters")?.as_array_mut())
        .flatten()
        .filter_map(|f| {
            f.pointer_mut("/typed_config/route_config/virtual_hosts")?
                .as_array_mut()
        })
        .flatten()
        .filter_map(|vh| vh.get_mut("routes")?.as_array_mut())
        .flatten()
        .find(|r| r["name"] == SPLIT_ROUTE)?
        .pointer_mut("/route/weighted_clusters/clusters")?
        .as_array_mut()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_becomes_a_listener_and_two_clusters_with_the_weights_asked() {
        let (v1, v2) = ("127.0.0.1:9001".parse().unwrap(), "127.0.0.1:9002".parse().unwrap());
        let config = DemoConfig::from_fixture(v1, v2).unwrap();
        assert_eq!(config.split(), Split { v1: 80, v2: 20 });
        let resources = config.resources(Split { v1: 50, v2: 50 }).unwrap();
        let names: Vec<_> = resources
            .iter()
            .map(|r| (r.type_url.as_str(), r.name.as_str()))
            .collect();
        assert_eq!(
            names,
            [(LISTENER, "ingress"), (CLUSTER, "reviews-v1"), (CLUSTER, "reviews-v2")]
        );
        // Different weights, a different listener; the clusters stay the same.
        let before = config.resources(config.split()).unwrap();
        assert_ne!(before[0], resources[0]);
        assert_eq!(before[1..], resources[1..]);
        assert_eq!(Split { v1: 80, v2: 20 }.label(), "reviews-v1 80% / reviews-v2 20%");
    }
}
