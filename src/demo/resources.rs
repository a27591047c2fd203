//! The demo's config as xDS: the fixture's listener and clusters turned into
//! the resources the in-process control plane serves (ephemeral listener port,
//! the sample instances as endpoints, the split's weights as asked), the
//! policy fields the scenes print and judge by, and the bootstrap that gives
//! remora nothing but the way to that control plane.

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
const SPLIT_CLUSTERS: [&str; 2] = ["reviews-v1", "reviews-v2"];
/// Where the scenes' policies are: the cluster with outlier detection, the
/// route with retries (and its cluster), the cluster with a small breaker.
pub(super) const OUTLIER_CLUSTER: &str = "reviews-v2";
pub(super) const RETRY_ROUTE: &str = "ratings";
pub(super) const RETRY_CLUSTER: &str = "ratings";
pub(super) const BREAKER_CLUSTER: &str = "details";

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
    /// (name, Cluster), in the order given to `from_fixture`.
    clusters: Vec<(&'static str, Value)>,
    /// The weights the fixture gives the split route.
    split: Split,
    pool: ApiPool,
}

impl DemoConfig {
    /// Reads the fixture and points it at this process: the listener on
    /// 127.0.0.1:0, each cluster's endpoints the sample instances given (as
    /// many as the fixture lists, in its order).
    pub(super) fn from_fixture(endpoints: &[(&'static str, Vec<SocketAddr>)]) -> Result<DemoConfig, String> {
        let bad = |e: &dyn std::fmt::Display| format!("the demo config xds-fixtures/{FIXTURE_NAME} does not load: {e}");
        let mut doc = parse_document(FIXTURE_NAME, FIXTURE).map_err(|e| bad(&e))?;
        let statics = doc
            .get_mut("static_resources")
            .ok_or_else(|| bad(&"no static_resources"))?;
        let mut listener = take_named(statics, "listeners", LISTENER_NAME)
            .ok_or_else(|| bad(&format!("no listener '{LISTENER_NAME}'")))?;
        listener["address"] = socket_address(SocketAddr::from(([127, 0, 0, 1], 0)));
        let mut clusters = Vec::new();
        for (name, addrs) in endpoints {
            let mut cluster =
                take_named(statics, "clusters", name).ok_or_else(|| bad(&format!("no cluster '{name}'")))?;
            let mut listed = lb_endpoints(&mut cluster);
            if listed.len() != addrs.len() {
                return Err(bad(&format!(
                    "cluster '{name}' has {} endpoints, the demo runs {} instances of it",
                    listed.len(),
                    addrs.len()
                )));
            }
            for (endpoint, addr) in listed.iter_mut().zip(addrs) {
                endpoint["address"] = socket_address(*addr);
            }
            clusters.push((*name, cluster));
        }
        let split = fixture_split(&mut listener).ok_or_else(|| {
            bad(&format!(
                "no route '{SPLIT_ROUTE}' weighting {} and {}",
                SPLIT_CLUSTERS[0], SPLIT_CLUSTERS[1]
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

    /// The policy fields the scenes show and judge by, as the fixture has them.
    pub(super) fn policies(&self) -> Result<Policies, String> {
        let missing = |what: &str| format!("the demo config xds-fixtures/{FIXTURE_NAME} has no {what}");
        let cluster = |name: &str| {
            self.clusters
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, c)| c)
                .ok_or_else(|| missing(&format!("cluster '{name}'")))
        };
        let thresholds = |name: &str| -> Result<Value, String> {
            cluster(name)?
                .pointer("/circuit_breakers/thresholds/0")
                .cloned()
                .ok_or_else(|| missing(&format!("circuit_breakers.thresholds in cluster '{name}'")))
        };
        let mut listener = self.listener.clone();
        Ok(Policies {
            outlier: cluster(OUTLIER_CLUSTER)?
                .get("outlier_detection")
                .cloned()
                .ok_or_else(|| missing(&format!("outlier_detection in cluster '{OUTLIER_CLUSTER}'")))?,
            retry: route_named(&mut listener, RETRY_ROUTE)
                .and_then(|r| r.pointer("/route/retry_policy"))
                .cloned()
                .ok_or_else(|| missing(&format!("retry_policy in route '{RETRY_ROUTE}'")))?,
            retry_breaker: thresholds(RETRY_CLUSTER)?,
            breaker: thresholds(BREAKER_CLUSTER)?,
        })
    }

    /// The listener and every cluster, encoded, with the split weighted as given.
    pub(super) fn resources(&self, split: Split) -> Result<Vec<Resource>, String> {
        let mut listener = self.listener.clone();
        // from_fixture found both clusters in the route: only their weights change.
        for c in split_clusters(&mut listener).into_iter().flatten() {
            if c["name"] == SPLIT_CLUSTERS[0] {
                c["weight"] = split.v1.into();
            } else if c["name"] == SPLIT_CLUSTERS[1] {
                c["weight"] = split.v2.into();
            }
        }
        let mut resources = vec![self.encode(LISTENER, LISTENER_NAME, listener)?];
        for (name, cluster) in &self.clusters {
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

/// The policy fields of the fixture that the scenes exercise, as written there.
pub(super) struct Policies {
    /// `outlier_detection` of `OUTLIER_CLUSTER`.
    pub(super) outlier: Value,
    /// `retry_policy` of `RETRY_ROUTE`.
    pub(super) retry: Value,
    /// The first `circuit_breakers.thresholds` of `RETRY_CLUSTER`.
    pub(super) retry_breaker: Value,
    /// The first `circuit_breakers.thresholds` of `BREAKER_CLUSTER`.
    pub(super) breaker: Value,
}

impl Policies {
    /// `outlier_detection.consecutive_5xx`, Envoy's default 5 when unset.
    pub(super) fn consecutive_5xx(&self) -> u64 {
        number(&self.outlier["consecutive_5xx"]).unwrap_or(5)
    }

    /// The breaker scene's `max_requests`, Envoy's default 1024 when unset.
    pub(super) fn max_requests(&self) -> u64 {
        number(&self.breaker["max_requests"]).unwrap_or(1024)
    }
}

/// A proto3 JSON integer, which may be written as a number or a string.
fn number(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str()?.parse().ok())
}

/// A config value in YAML's flow style, as short as it reads in the fixture:
/// `{consecutive_5xx: 5, interval: 10s}`; a typed extension is shown by its name.
pub(super) fn flow(v: &Value) -> String {
    match v {
        Value::Object(o) if o.contains_key("typed_config") && o.contains_key("name") => flow(&o["name"]),
        Value::Object(o) => {
            let fields: Vec<String> = o.iter().map(|(k, v)| format!("{k}: {}", flow(v))).collect();
            format!("{{{}}}", fields.join(", "))
        }
        Value::Array(a) => format!("[{}]", a.iter().map(flow).collect::<Vec<_>>().join(", ")),
        Value::String(s) => s.clone(),
        other => other.to_string(),
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
    let (v1, v2) = (weight(SPLIT_CLUSTERS[0])?, weight(SPLIT_CLUSTERS[1])?);
    (v1.checked_add(v2)? > 0).then_some(Split { v1, v2 })
}

/// Removes and returns the element named `name` of the list `statics[list]`.
fn take_named(statics: &mut Value, list: &str, name: &str) -> Option<Value> {
    let items = statics.get_mut(list)?.as_array_mut()?;
    let i = items.iter().position(|v| v["name"] == name)?;
    Some(items.remove(i))
}

/// Every `endpoint` of a cluster's `load_assignment`, in order.
fn lb_endpoints(cluster: &mut Value) -> Vec<&mut Value> {
    let Some(localities) = cluster
        .pointer_mut("/load_assignment/endpoints")
        .and_then(Value::as_array_mut)
    else {
        return Vec::new();
    };
    localities
        .iter_mut()
        .filter_map(|l| l.get_mut("lb_endpoints")?.as_array_mut())
        .flatten()
        .filter_map(|e| e.get_mut("endpoint"))
        .collect()
}

/// The `weighted_clusters.clusters` list of the split route.
fn split_clusters(listener: &mut Value) -> Option<&mut Vec<Value>> {
    route_named(listener, SPLIT_ROUTE)?
        .pointer_mut("/route/weighted_clusters/clusters")?
        .as_array_mut()
}

/// The route named `name`, wherever the listener's HTTP connection manager has it.
fn route_named<'a>(listener: &'a mut Value, name: &str) -> Option<&'a mut Value> {
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
        .find(|r| r["name"] == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::services::TOPOLOGY;

    fn config() -> DemoConfig {
        let mut port = 9000;
        let endpoints: Vec<_> = TOPOLOGY
            .iter()
            .map(|(cluster, names)| {
                let addrs = names
                    .iter()
                    .map(|_| {
                        port += 1;
                        SocketAddr::from(([127, 0, 0, 1], port))
                    })
                    .collect();
                (*cluster, addrs)
            })
            .collect();
        DemoConfig::from_fixture(&endpoints).unwrap()
    }

    #[test]
    fn fixture_becomes_a_listener_and_its_clusters_with_the_weights_asked() {
        let config = config();
        assert_eq!(config.split(), Split { v1: 80, v2: 20 });
        let resources = config.resources(Split { v1: 50, v2: 50 }).unwrap();
        let names: Vec<_> = resources
            .iter()
            .map(|r| (r.type_url.as_str(), r.name.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                (LISTENER, "ingress"),
                (CLUSTER, "reviews-v1"),
                (CLUSTER, "reviews-v2"),
                (CLUSTER, "ratings"),
                (CLUSTER, "details")
            ]
        );
        // Different weights, a different listener; the clusters stay the same.
        let before = config.resources(config.split()).unwrap();
        assert_ne!(before[0], resources[0]);
        assert_eq!(before[1..], resources[1..]);
        assert_eq!(Split { v1: 80, v2: 20 }.label(), "reviews-v1 80% / reviews-v2 20%");
    }

    #[test]
    fn each_instance_becomes_an_endpoint_in_order() {
        let config = config();
        let (_, v2) = &config.clusters[1];
        let ports: Vec<_> = v2["load_assignment"]["endpoints"][0]["lb_endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["endpoint"]["address"]["socket_address"]["port_value"].clone())
            .collect();
        assert_eq!(ports, [json!(9002), json!(9003)]);
        let err = DemoConfig::from_fixture(&[("reviews-v2", vec![SocketAddr::from(([127, 0, 0, 1], 1))])])
            .err()
            .unwrap();
        assert!(
            err.contains("cluster 'reviews-v2' has 2 endpoints, the demo runs 1"),
            "{err}"
        );
    }

    #[test]
    fn policies_as_the_fixture_writes_them() {
        let p = config().policies().unwrap();
        assert_eq!(p.consecutive_5xx(), 5);
        assert_eq!(p.max_requests(), 10);
        assert_eq!(
            flow(&p.outlier),
            "{base_ejection_time: 30s, consecutive_5xx: 5, interval: 10s, max_ejection_percent: 50}"
        );
        assert_eq!(
            flow(&p.retry),
            "{host_selection_retry_max_attempts: 5, num_retries: 2, \
             retry_host_predicate: [envoy.retry_host_predicates.previous_hosts], retry_on: 5xx,reset,connect-failure}"
        );
        assert_eq!(flow(&p.breaker), "{max_requests: 10, track_remaining: true}");
        assert_eq!(number(&json!("7")), Some(7));
    }
}
