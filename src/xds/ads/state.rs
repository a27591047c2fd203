//! What the ADS client holds between responses: the last good resources of
//! each type, and how they combine into the config the proxy runs. Pure
//! bookkeeping over translated resources; the stream lives in `mod.rs`.
//!
//! Warming follows Envoy: an EDS cluster serves no endpoints until its
//! ClusterLoadAssignment arrives; a listener whose RDS routes have not
//! arrived is not served (an older version of it, if any, keeps serving).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use envoy_types::pb::google::protobuf::Any;
use prost_reflect::DynamicMessage;

use super::AdsConfig;
use crate::{
    config::{self, NetworkFilter},
    proxy::Proxy,
    xds::{
        decode::ApiPool,
        translate::{self, Ctx, Msg},
    },
};

pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const ENDPOINT_TYPE: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// The type URL as a static string, if it is one the client subscribes to.
pub fn known_type(url: &str) -> Option<&'static str> {
    [CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE, ENDPOINT_TYPE]
        .into_iter()
        .find(|t| *t == url)
}

/// What one response did: resources accepted, resources rejected (with
/// their errors), and every error for the NACK's error_detail.
#[derive(Debug, Default)]
pub struct Report {
    pub accepted: Vec<String>,
    pub rejected: Vec<(String, String)>,
    pub errors: Vec<String>,
}

pub struct State {
    pub cfg: AdsConfig,
    clusters: BTreeMap<String, Arc<config::Cluster>>,
    assignments: BTreeMap<String, config::Assignment>,
    listeners: BTreeMap<String, Arc<config::Listener>>,
    /// Listeners as last applied (routes resolved).
    active: BTreeMap<String, Arc<config::Listener>>,
    routes: BTreeMap<String, Arc<config::RouteConfig>>,
    /// Last ACKed version and last received nonce, per type.
    pub versions: BTreeMap<&'static str, String>,
    pub nonces: BTreeMap<&'static str, String>,
    /// The RDS and EDS names last subscribed to.
    pub subscribed: BTreeMap<&'static str, BTreeSet<String>>,
    pub cds_done: bool,
    pub lds_done: bool,
    /// Delta only: the resources held per type, with their versions.
    pub raw: BTreeMap<&'static str, BTreeMap<String, (String, Any)>>,
}

impl State {
    pub fn new(cfg: AdsConfig) -> State {
        State {
            cds_done: !cfg.dynamic.cds,
            lds_done: !cfg.dynamic.lds,
            cfg,
            clusters: BTreeMap::new(),
            assignments: BTreeMap::new(),
            listeners: BTreeMap::new(),
            active: BTreeMap::new(),
            routes: BTreeMap::new(),
            versions: BTreeMap::new(),
            nonces: BTreeMap::new(),
            subscribed: BTreeMap::new(),
            raw: BTreeMap::new(),
        }
    }

    /// Applies one response's resources; reports what was accepted and what failed.
    pub fn apply(&mut self, proxy: &Proxy, type_url: &'static str, resources: &[Any]) -> Report {
        let mut report = Report::default();
        match type_url {
            CLUSTER_TYPE => {
                let results = translate_each(
                    resources,
                    "envoy.config.cluster.v3.Cluster",
                    None,
                    None,
                    translate::cluster,
                    &mut report,
                );
                let mut next = BTreeMap::new();
                for (name, result) in results {
                    if self.cfg.static_clusters.iter().any(|c| c.name == name) {
                        report
                            .errors
                            .push(format!("cluster '{name}': a static cluster has that name"));
                        continue;
                    }
                    // An invalid update keeps the cluster's last good version (Envoy).
                    let fresh = result.map(|c| {
                        Arc::new(config::Cluster {
                            added_via_api: true,
                            ..c
                        })
                    });
                    if let Some(c) = fresh.or_else(|| self.clusters.get(&name).cloned()) {
                        next.insert(name, c);
                    }
                }
                // State of the world: clusters absent from the response are removed.
                self.clusters = next;
                self.cds_done = true;
                proxy.apply_clusters(&self.effective_clusters());
                // Routes may name clusters that just arrived or left.
                self.apply_listeners(proxy, &mut report.errors);
            }
            ENDPOINT_TYPE => {
                let results = translate_each(
                    resources,
                    "envoy.config.endpoint.v3.ClusterLoadAssignment",
                    None,
                    None,
                    translate::cluster_load_assignment,
                    &mut report,
                );
                // Not a complete set: assignments not named keep theirs.
                for (name, result) in results {
                    if let Some((_, assignment)) = result {
                        self.assignments.insert(name, assignment);
                    }
                }
                let wanted = self.wanted(ENDPOINT_TYPE);
                self.assignments.retain(|k, _| wanted.contains(k));
                proxy.apply_clusters(&self.effective_clusters());
            }
            LISTENER_TYPE => {
                let known = self.cluster_names();
                let balancers = self.balancers();
                let results = translate_each(
                    resources,
                    "envoy.config.listener.v3.Listener",
                    Some(known),
                    Some(&balancers),
                    translate::listener,
                    &mut report,
                );
                let mut next = BTreeMap::new();
                for (name, result) in results {
                    if let Some(l) = result.map(Arc::new).or_else(|| self.listeners.get(&name).cloned()) {
                        next.insert(name, l);
                    }
                }
                self.listeners = next;
                self.lds_done = true;
                self.apply_listeners(proxy, &mut report.errors);
            }
            ROUTE_TYPE => {
                let balancers = self.balancers();
                let results = translate_each(
                    resources,
                    "envoy.config.route.v3.RouteConfiguration",
                    None,
                    Some(&balancers),
                    translate::route_configuration,
                    &mut report,
                );
                for (name, result) in results {
                    if let Some(rc) = result {
                        self.routes.insert(name, Arc::new(rc));
                    }
                }
                let wanted = self.wanted(ROUTE_TYPE);
                self.routes.retain(|k, _| wanted.contains(k));
                self.apply_listeners(proxy, &mut report.errors);
            }
            _ => report.errors.push(format!("unexpected type_url {type_url}")),
        }
        report
    }

    /// The names of the resources of a type now in force.
    pub fn names(&self, type_url: &str) -> BTreeSet<String> {
        match type_url {
            CLUSTER_TYPE => self.clusters.keys().cloned().collect(),
            LISTENER_TYPE => self.listeners.keys().cloned().collect(),
            ROUTE_TYPE => self.routes.keys().cloned().collect(),
            ENDPOINT_TYPE => self.assignments.keys().cloned().collect(),
            _ => BTreeSet::new(),
        }
    }

    fn cluster_names(&self) -> HashSet<String> {
        self.cfg
            .static_clusters
            .iter()
            .map(|c| c.name.clone())
            .chain(self.clusters.keys().cloned())
            .collect()
    }

    /// The balancer of every cluster known now, by name.
    fn balancers(&self) -> HashMap<String, &'static str> {
        self.cfg
            .static_clusters
            .iter()
            .chain(self.clusters.values())
            .map(|c| (c.name.clone(), c.lb.name()))
            .collect()
    }

    /// Static and dynamic clusters, EDS ones with their delivered endpoints.
    fn effective_clusters(&self) -> Vec<Arc<config::Cluster>> {
        self.cfg
            .static_clusters
            .iter()
            .chain(self.clusters.values())
            .map(|c| match &c.eds {
                Some(service) => {
                    let mut c = (**c).clone();
                    match self.assignments.get(service) {
                        Some(a) => {
                            c.endpoints = a.endpoints.clone();
                            c.overprovisioning_factor = a.overprovisioning_factor;
                        }
                        None => c.endpoints.clear(),
                    }
                    Arc::new(c)
                }
                None => c.clone(),
            })
            .collect()
    }

    /// Resolves RDS names and applies every listener whose routes are known.
    fn apply_listeners(&mut self, proxy: &Proxy, errors: &mut Vec<String>) {
        let mut next = BTreeMap::new();
        for l in self.cfg.static_listeners.iter().chain(self.listeners.values()) {
            match self.resolve(l) {
                Some(l) => {
                    next.insert(l.name.clone(), l);
                }
                // Warming: the previous version, if any, keeps serving.
                None => {
                    if let Some(old) = self.active.get(&l.name) {
                        next.insert(l.name.clone(), old.clone());
                    }
                }
            }
        }
        let all: Vec<_> = next.values().cloned().collect();
        if let Err(e) = proxy.apply_listeners(&all) {
            errors.push(e.to_string());
        }
        self.active = next;
    }

    fn resolve(&self, l: &Arc<config::Listener>) -> Option<Arc<config::Listener>> {
        let NetworkFilter::Http(hcm) = &l.filter else {
            return Some(l.clone());
        };
        let Some(name) = &hcm.rds else { return Some(l.clone()) };
        let routes = self.routes.get(name)?;
        let mut hcm = (**hcm).clone();
        hcm.route_config = routes.clone();
        let mut l = (**l).clone();
        l.filter = NetworkFilter::Http(Arc::new(hcm));
        Some(Arc::new(l))
    }

    /// The RDS or EDS names the current listeners and clusters refer to.
    pub fn wanted(&self, type_url: &str) -> BTreeSet<String> {
        match type_url {
            ROUTE_TYPE => self
                .cfg
                .static_listeners
                .iter()
                .chain(self.listeners.values())
                .filter_map(|l| match &l.filter {
                    NetworkFilter::Http(h) => h.rds.clone(),
                    NetworkFilter::Tcp(_) => None,
                })
                .collect(),
            ENDPOINT_TYPE => self
                .cfg
                .static_clusters
                .iter()
                .chain(self.clusters.values())
                .filter_map(|c| c.eds.clone())
                .collect(),
            _ => BTreeSet::new(),
        }
    }

    /// Initial config complete: CDS and LDS answered, and every RDS and EDS
    /// name they refer to delivered.
    pub fn warm(&self) -> bool {
        self.cds_done
            && self.lds_done
            && self.wanted(ROUTE_TYPE).iter().all(|n| self.routes.contains_key(n))
            && self
                .wanted(ENDPOINT_TYPE)
                .iter()
                .all(|n| self.assignments.contains_key(n))
    }
}

/// Decodes and translates each resource on its own: (name, result). Errors
/// name the resource and the field path.
fn translate_each<T>(
    resources: &[Any],
    message: &str,
    known_clusters: Option<HashSet<String>>,
    balancers: Option<&HashMap<String, &'static str>>,
    translate: impl Fn(Msg<'_, '_>) -> Option<T>,
    report: &mut Report,
) -> Vec<(String, Option<T>)> {
    let pool = match ApiPool::load() {
        Ok(p) => p,
        Err(e) => {
            report.errors.push(e.to_string());
            return Vec::new();
        }
    };
    let desc = match pool.message(message) {
        Ok(d) => d,
        Err(e) => {
            report.errors.push(e.to_string());
            return Vec::new();
        }
    };
    let kind = message.rsplit('.').next().unwrap_or(message);
    let expected = format!("type.googleapis.com/{message}");
    let mut out = Vec::new();
    for (i, any) in resources.iter().enumerate() {
        if any.type_url != expected {
            report
                .errors
                .push(format!("resources[{i}]: type {} in a {kind} response", any.type_url));
            continue;
        }
        let msg = match DynamicMessage::decode(desc.clone(), any.value.as_slice()) {
            Ok(m) => m,
            Err(e) => {
                report.errors.push(format!("resources[{i}]: malformed {kind}: {e}"));
                continue;
            }
        };
        let name_field = if message.ends_with("ClusterLoadAssignment") {
            "cluster_name"
        } else {
            "name"
        };
        let name = msg
            .get_field_by_name(name_field)
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let ctx = Ctx::new(&pool);
        if let Some(k) = &known_clusters {
            ctx.set_known_clusters(k.clone());
        }
        if let Some(b) = balancers {
            ctx.set_balancers(b.clone());
        }
        let result = translate(Msg::new(msg, String::new(), &ctx));
        let (errs, _warnings) = ctx.into_result();
        if errs.is_empty() && result.is_some() {
            report.accepted.push(name.clone());
            out.push((name, result));
        } else {
            let detail = errs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ");
            for e in &errs {
                report.errors.push(format!("{kind} '{name}': {e}"));
            }
            report.rejected.push((name.clone(), detail));
            out.push((name, None));
        }
    }
    out
}
