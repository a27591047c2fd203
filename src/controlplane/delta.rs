//! Delta (incremental) ADS, one stream: per type, the names subscribed (or
//! the wildcard), the version of every resource the client holds, and the
//! responses awaiting an ACK. Only what changed is sent; a resource that
//! disappears is sent in `removed_resources`. The state machine
//! (`DeltaStream`) is plain data, tested without sockets.

use std::collections::{BTreeSet, HashMap, VecDeque};

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as Wire};

use super::{
    snapshot::{ads_order, is_wildcard_type, Snapshot},
    AckRecord, Protocol,
};

/// Responses of one type awaiting an answer; a client that never answers
/// cannot grow this past the bound.
const MAX_PENDING: usize = 64;

#[derive(Default)]
struct TypeState {
    wildcard: bool,
    names: BTreeSet<String>,
    /// name -> version of every resource the client holds.
    known: HashMap<String, String>,
    /// Subscribed names the client was told do not exist.
    absent: BTreeSet<String>,
    /// nonce -> system version of responses not answered yet.
    pending: VecDeque<(String, String)>,
}

impl TypeState {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// What the client must be told to match `snapshot`: resources new or
    /// changed, and names removed (or subscribed but not there).
    fn diff(&mut self, type_url: &str, snapshot: &Snapshot) -> (Vec<Wire>, Vec<String>) {
        let mut resources = Vec::new();
        for r in snapshot.resources(type_url) {
            if !self.wants(&r.name) {
                continue;
            }
            self.absent.remove(&r.name);
            if self.known.get(&r.name) != Some(&r.version) {
                self.known.insert(r.name.clone(), r.version.clone());
                resources.push(Wire {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    resource: Some(r.to_any()),
                    ..Default::default()
                });
            }
        }
        let mut removed: BTreeSet<String> = BTreeSet::new();
        let gone: Vec<String> = self
            .known
            .keys()
            .filter(|n| snapshot.get(type_url, n).is_none() || !self.wants(n))
            .cloned()
            .collect();
        for name in gone {
            self.known.remove(&name);
            // No longer subscribed: the client dropped it itself.
            if self.wants(&name) {
                removed.insert(name);
            }
        }
        // A name asked for that does not exist is answered as removed (once),
        // so the client need not wait for it.
        for name in &self.names {
            if snapshot.get(type_url, name).is_none() && self.absent.insert(name.clone()) {
                removed.insert(name.clone());
            }
        }
        (resources, removed.into_iter().collect())
    }
}

/// One Delta stream's state.
#[derive(Default)]
pub(super) struct DeltaStream {
    node: String,
    nonces: u64,
    types: HashMap<String, TypeState>,
}

impl DeltaStream {
    pub(super) fn node(&self) -> &str {
        &self.node
    }

    /// Handles one request: the ACK or NACK it carries (if any) and the
    /// response to send (if any). The first request of a type is always
    /// answered, so the client knows where it stands.
    pub(super) fn on_request(
        &mut self,
        req: DeltaDiscoveryRequest,
        snapshot: &Snapshot,
    ) -> (Option<AckRecord>, Option<DeltaDiscoveryResponse>) {
        if let Some(node) = req.node.as_ref().filter(|n| !n.id.is_empty()) {
            if self.node.is_empty() {
                self.node = node.id.clone();
            }
        }
        let type_url = req.type_url.clone();
        let first = !self.types.contains_key(&type_url);
        let state = self.types.entry(type_url.clone()).or_default();
        if first {
            // An empty first subscription is the legacy wildcard (listeners
            // and clusters only); a reconnecting client says what it holds.
            state.wildcard = req.resource_names_subscribe.is_empty() && is_wildcard_type(&type_url);
            state.known = req.initial_resource_versions.into_iter().collect();
        }
        for name in req.resource_names_subscribe {
            if name == "*" {
                state.wildcard = true;
            } else {
                state.names.insert(name);
            }
        }
        for name in req.resource_names_unsubscribe {
            if name == "*" {
                state.wildcard = false;
            } else {
                state.names.remove(&name);
                state.absent.remove(&name);
                // Forgotten by the client: sent again if it subscribes again.
                if !state.wildcard {
                    state.known.remove(&name);
                }
            }
        }
        let mut record = None;
        if !req.response_nonce.is_empty() {
            match state.pending.iter().position(|(n, _)| *n == req.response_nonce) {
                Some(i) => {
                    let version = state.pending.remove(i).map(|(_, v)| v).unwrap_or_default();
                    record = Some(AckRecord {
                        node: self.node.clone(),
                        protocol: Protocol::Delta,
                        type_url: type_url.clone(),
                        version,
                        nonce: req.response_nonce.clone(),
                        error: req.error_detail.map(|s| s.message),
                    });
                }
                None => tracing::debug!(node = %self.node, %type_url, nonce = %req.response_nonce,
                    "answer to a nonce not awaiting one; ignored"),
            }
        }
        let response = self.response(&type_url, snapshot, first);
        (record, response)
    }

    /// A new snapshot: a response for every type with a change for this client.
    pub(super) fn on_snapshot(&mut self, snapshot: &Snapshot) -> Vec<DeltaDiscoveryResponse> {
        let mut types: Vec<String> = self.types.keys().cloned().collect();
        types.sort_by_key(|t| (ads_order(t), t.clone()));
        types.iter().filter_map(|t| self.response(t, snapshot, false)).collect()
    }

    fn response(&mut self, type_url: &str, snapshot: &Snapshot, force: bool) -> Option<DeltaDiscoveryResponse> {
        let state = self.types.get_mut(type_url)?;
        let (resources, removed) = state.diff(type_url, snapshot);
        if resources.is_empty() && removed.is_empty() && !force {
            return None;
        }
        self.nonces += 1;
        let nonce = self.nonces.to_string();
        if state.pending.len() == MAX_PENDING {
            state.pending.pop_front();
        }
        state.pending.push_back((nonce.clone(), snapshot.version.clone()));
        Some(DeltaDiscoveryResponse {
            system_version_info: snapshot.version.clone(),
            resources,
            type_url: type_url.to_string(),
            removed_resources: removed,
            nonce,
            ..Default::default()
        })
    }
}

impl super::StreamState for DeltaStream {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    const PROTOCOL: &'static str = "Delta";

    fn node(&self) -> &str {
        DeltaStream::node(self)
    }
    fn on_request(
        &mut self,
        req: DeltaDiscoveryRequest,
        snapshot: &Snapshot,
    ) -> (Option<AckRecord>, Option<DeltaDiscoveryResponse>) {
        DeltaStream::on_request(self, req, snapshot)
    }
    fn on_snapshot(&mut self, snapshot: &Snapshot) -> Vec<DeltaDiscoveryResponse> {
        DeltaStream::on_snapshot(self, snapshot)
    }
    fn describe(resp: &DeltaDiscoveryResponse) -> String {
        format!(
            "type_url={} version={} nonce={} resources={} removed={}",
            resp.type_url,
            resp.system_version_info,
            resp.nonce,
            resp.resources.len(),
            resp.removed_resources.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::google::rpc::Status as RpcStatus;

    use super::*;
    use crate::controlplane::snapshot::{Resource, CLUSTER, ENDPOINT};

    fn snapshot(version: &str, resources: &[(&str, &str, u8)]) -> Snapshot {
        let rs = resources
            .iter()
            .map(|(t, n, v)| Resource::new(*t, *n, vec![*v]))
            .collect();
        Snapshot::new(version, rs, vec![])
    }

    fn req(type_url: &str, subscribe: &[&str], unsubscribe: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: type_url.into(),
            resource_names_subscribe: subscribe.iter().map(|n| n.to_string()).collect(),
            resource_names_unsubscribe: unsubscribe.iter().map(|n| n.to_string()).collect(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    fn names(resp: &DeltaDiscoveryResponse) -> Vec<&str> {
        resp.resources.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn wildcard_sends_changes_and_removals() {
        let s1 = snapshot("1", &[(CLUSTER, "a", 1), (CLUSTER, "b", 2)]);
        let mut st = DeltaStream::default();
        let first = st.on_request(req(CLUSTER, &[], &[], ""), &s1).1.expect("response");
        assert_eq!(names(&first), ["a", "b"]);
        let (ack, none) = st.on_request(req(CLUSTER, &[], &[], &first.nonce), &s1);
        assert_eq!(ack.expect("ack").version, "1");
        assert!(none.is_none());
        let s2 = snapshot("2", &[(CLUSTER, "a", 9), (CLUSTER, "b", 2)]);
        let pushed = st.on_snapshot(&s2);
        assert_eq!(names(&pushed[0]), ["a"], "only the changed resource");
        let s3 = snapshot("3", &[(CLUSTER, "a", 9)]);
        let pushed = st.on_snapshot(&s3);
        assert!(pushed[0].resources.is_empty());
        assert_eq!(pushed[0].removed_resources, ["b"]);
        assert!(st.on_snapshot(&s3).is_empty(), "nothing changed");
    }

    #[test]
    fn reconnect_with_initial_versions_gets_only_what_changed() {
        let s = snapshot("5", &[(CLUSTER, "a", 1), (CLUSTER, "b", 2)]);
        let a = s.get(CLUSTER, "a").expect("a").version.clone();
        let mut r = req(CLUSTER, &[], &[], "");
        r.initial_resource_versions = [("a".to_string(), a), ("gone".to_string(), "x".to_string())].into();
        let resp = DeltaStream::default().on_request(r, &s).1.expect("response");
        assert_eq!(names(&resp), ["b"]);
        assert_eq!(resp.removed_resources, ["gone"]);
    }

    #[test]
    fn named_subscriptions_and_nacks() {
        let s = snapshot("1", &[(ENDPOINT, "a", 1), (ENDPOINT, "b", 2)]);
        let mut st = DeltaStream::default();
        let first = st
            .on_request(req(ENDPOINT, &[], &[], ""), &s)
            .1
            .expect("first is answered");
        assert!(first.resources.is_empty(), "EDS has no wildcard by default");
        let resp = st
            .on_request(req(ENDPOINT, &["a", "nope"], &[], ""), &s)
            .1
            .expect("response");
        assert_eq!(names(&resp), ["a"]);
        assert_eq!(resp.removed_resources, ["nope"], "absent names are answered");
        let mut nack = req(ENDPOINT, &[], &[], &resp.nonce);
        nack.error_detail = Some(RpcStatus {
            code: 3,
            message: "bad endpoint".into(),
            details: vec![],
        });
        let (rec, none) = st.on_request(nack, &s);
        assert_eq!(rec.expect("nack").error.as_deref(), Some("bad endpoint"));
        assert!(none.is_none());
        assert!(
            st.on_request(req(ENDPOINT, &[], &["a"], ""), &s).1.is_none(),
            "unsubscribe is silent"
        );
        let again = st
            .on_request(req(ENDPOINT, &["a"], &[], ""), &s)
            .1
            .expect("resubscribe");
        assert_eq!(names(&again), ["a"], "sent again after a resubscribe");
    }
}
