//! State-of-the-world ADS, one stream: what the client subscribed to per
//! type, what was last sent with which nonce, and when to send again. The
//! state machine (`SotwStream`) is plain data, tested without sockets;
//! `run_stream` in `mod.rs` drives it from the gRPC stream and the snapshot watch.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

use super::{
    snapshot::{ads_order, is_wildcard_type, Snapshot},
    AckRecord, Protocol,
};

/// Which resources of a type the client wants.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Subscription {
    Wildcard,
    Names(BTreeSet<String>),
}

impl Subscription {
    /// As Envoy's SotW: `*` asks for everything; an empty list does too
    /// for listeners and clusters (the legacy wildcard), and nothing for
    /// the other types.
    fn from_request(type_url: &str, names: &[String]) -> Subscription {
        if names.iter().any(|n| n == "*") || (names.is_empty() && is_wildcard_type(type_url)) {
            Subscription::Wildcard
        } else {
            Subscription::Names(names.iter().cloned().collect())
        }
    }

    fn wants(&self, name: &str) -> bool {
        match self {
            Subscription::Wildcard => true,
            Subscription::Names(n) => n.contains(name),
        }
    }
}

struct TypeState {
    subscription: Subscription,
    /// Nonce and snapshot version of the last response of this type.
    last_nonce: String,
    last_version: String,
    /// name -> resource version of what the last response carried; None
    /// before the first response.
    sent: Option<BTreeMap<String, String>>,
}

/// One SotW stream's state.
#[derive(Default)]
pub(super) struct SotwStream {
    node: String,
    nonces: u64,
    types: HashMap<String, TypeState>,
}

impl SotwStream {
    pub(super) fn node(&self) -> &str {
        &self.node
    }

    /// Handles one request: returns the ACK or NACK it carries (if any) and
    /// the response to send (if any). A request answering a nonce other than
    /// the latest of its type is stale and ignored, as the protocol says.
    pub(super) fn on_request(
        &mut self,
        req: DiscoveryRequest,
        snapshot: &Snapshot,
    ) -> (Option<AckRecord>, Option<DiscoveryResponse>) {
        if let Some(node) = req.node.as_ref().filter(|n| !n.id.is_empty()) {
            if self.node.is_empty() {
                self.node = node.id.clone();
            }
        }
        let subscription = Subscription::from_request(&req.type_url, &req.resource_names);
        let mut record = None;
        let changed = match self.types.get_mut(&req.type_url) {
            Some(state) if !req.response_nonce.is_empty() => {
                if req.response_nonce != state.last_nonce {
                    tracing::debug!(node = %self.node, type_url = %req.type_url, nonce = %req.response_nonce,
                        latest = %state.last_nonce, "stale nonce; request ignored");
                    return (None, None);
                }
                record = Some(AckRecord {
                    node: self.node.clone(),
                    protocol: Protocol::Sotw,
                    type_url: req.type_url.clone(),
                    version: state.last_version.clone(),
                    nonce: req.response_nonce.clone(),
                    error: req.error_detail.map(|s| s.message),
                });
                let changed = state.subscription != subscription;
                state.subscription = subscription;
                changed
            }
            // A first request, or the client starting the type over (a nonce
            // we never sent cannot be answered): always answer it.
            Some(state) => {
                state.subscription = subscription;
                true
            }
            None if !req.response_nonce.is_empty() => {
                tracing::debug!(node = %self.node, type_url = %req.type_url, nonce = %req.response_nonce,
                    "answer to a nonce this stream never sent; request ignored");
                return (None, None);
            }
            None => {
                self.types.insert(
                    req.type_url.clone(),
                    TypeState {
                        subscription,
                        last_nonce: String::new(),
                        last_version: String::new(),
                        sent: None,
                    },
                );
                true
            }
        };
        let response = self.response(&req.type_url, snapshot, changed);
        (record, response)
    }

    /// A new snapshot: a response for every subscribed type whose resources
    /// (as this client subscribed to them) changed.
    pub(super) fn on_snapshot(&mut self, snapshot: &Snapshot) -> Vec<DiscoveryResponse> {
        let mut types: Vec<String> = self.types.keys().cloned().collect();
        // Clusters before listeners before the rest, as ADS orders updates
        // so that nothing refers to what the client has not seen yet.
        types.sort_by_key(|t| (ads_order(t), t.clone()));
        types.iter().filter_map(|t| self.response(t, snapshot, false)).collect()
    }

    fn response(&mut self, type_url: &str, snapshot: &Snapshot, force: bool) -> Option<DiscoveryResponse> {
        let state = self.types.get_mut(type_url)?;
        if let Subscription::Names(n) = &state.subscription {
            // Nothing asked for: the client has unsubscribed from the type.
            if n.is_empty() {
                state.sent = Some(BTreeMap::new());
                return None;
            }
        }
        let resources: Vec<_> = snapshot
            .resources(type_url)
            .filter(|r| state.subscription.wants(&r.name))
            .collect();
        let contents: BTreeMap<String, String> =
            resources.iter().map(|r| (r.name.clone(), r.version.clone())).collect();
        if !force && state.sent.as_ref() == Some(&contents) {
            return None;
        }
        self.nonces += 1;
        state.last_nonce = self.nonces.to_string();
        state.last_version = snapshot.version.clone();
        state.sent = Some(contents);
        Some(DiscoveryResponse {
            version_info: snapshot.version.clone(),
            resources: resources.iter().map(|r| r.to_any()).collect(),
            type_url: type_url.to_string(),
            nonce: state.last_nonce.clone(),
            ..Default::default()
        })
    }
}

impl super::StreamState for SotwStream {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    const PROTOCOL: &'static str = "SotW";

    fn node(&self) -> &str {
        SotwStream::node(self)
    }
    fn on_request(
        &mut self,
        req: DiscoveryRequest,
        snapshot: &Snapshot,
    ) -> (Option<AckRecord>, Option<DiscoveryResponse>) {
        SotwStream::on_request(self, req, snapshot)
    }
    fn on_snapshot(&mut self, snapshot: &Snapshot) -> Vec<DiscoveryResponse> {
        SotwStream::on_snapshot(self, snapshot)
    }
    fn describe(resp: &DiscoveryResponse) -> String {
        format!(
            "type_url={} version={} nonce={} resources={}",
            resp.type_url,
            resp.version_info,
            resp.nonce,
            resp.resources.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::{envoy::config::core::v3::Node, google::rpc::Status as RpcStatus};

    use super::*;
    use crate::controlplane::snapshot::{Resource, CLUSTER, ENDPOINT, LISTENER};

    fn snapshot(version: &str, resources: &[(&str, &str, u8)]) -> Snapshot {
        let rs = resources
            .iter()
            .map(|(t, n, v)| Resource::new(*t, *n, vec![*v]))
            .collect();
        Snapshot::new(version, rs, vec![])
    }

    fn req(type_url: &str, names: &[&str], nonce: &str, error: Option<&str>) -> DiscoveryRequest {
        DiscoveryRequest {
            node: Some(Node {
                id: "sidecar~1".into(),
                ..Default::default()
            }),
            type_url: type_url.into(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            response_nonce: nonce.into(),
            error_detail: error.map(|m| RpcStatus {
                code: 3,
                message: m.into(),
                details: vec![],
            }),
            ..Default::default()
        }
    }

    fn names(resp: &DiscoveryResponse, snap: &Snapshot) -> Vec<String> {
        snap.resources(&resp.type_url)
            .filter(|r| resp.resources.iter().any(|a| a.value == r.value))
            .map(|r| r.name.clone())
            .collect()
    }

    #[test]
    fn wildcard_gets_everything_then_only_changes() {
        let s1 = snapshot("1", &[(CLUSTER, "a", 1), (CLUSTER, "b", 2), (LISTENER, "l", 3)]);
        let mut st = SotwStream::default();
        let (rec, resp) = st.on_request(req(CLUSTER, &[], "", None), &s1);
        assert!(rec.is_none());
        let resp = resp.expect("initial response");
        assert_eq!((resp.version_info.as_str(), resp.resources.len()), ("1", 2));
        let (rec, resp2) = st.on_request(req(CLUSTER, &[], &resp.nonce, None), &s1);
        let rec = rec.expect("ack");
        assert_eq!(
            (rec.node.as_str(), rec.version.as_str(), rec.error),
            ("sidecar~1", "1", None)
        );
        assert!(resp2.is_none(), "an ACK is not answered");
        // A snapshot that changes only listeners sends nothing to a CDS-only client.
        let s2 = snapshot("2", &[(CLUSTER, "a", 1), (CLUSTER, "b", 2), (LISTENER, "l", 4)]);
        assert!(st.on_snapshot(&s2).is_empty());
        let s3 = snapshot("3", &[(CLUSTER, "a", 1)]);
        let pushed = st.on_snapshot(&s3);
        assert_eq!(pushed.len(), 1);
        assert_eq!(names(&pushed[0], &s3), ["a"], "SotW sends the full set");
        assert_eq!(pushed[0].version_info, "3");
    }

    #[test]
    fn named_types_get_what_they_ask_for() {
        let s = snapshot("1", &[(ENDPOINT, "a", 1), (ENDPOINT, "b", 2)]);
        let mut st = SotwStream::default();
        assert!(
            st.on_request(req(ENDPOINT, &[], "", None), &s).1.is_none(),
            "empty EDS is no subscription"
        );
        let resp = st
            .on_request(req(ENDPOINT, &["b", "zz"], "", None), &s)
            .1
            .expect("response");
        assert_eq!(names(&resp, &s), ["b"]);
        let resp = st
            .on_request(req(ENDPOINT, &["a", "b"], &resp.nonce, None), &s)
            .1
            .expect("a changed subscription is answered");
        assert_eq!(names(&resp, &s), ["a", "b"]);
        let all = st.on_request(req(ENDPOINT, &["*"], &resp.nonce, None), &s).1;
        assert!(all.is_some(), "explicit wildcard");
    }

    #[test]
    fn nack_is_recorded_and_stale_nonces_ignored() {
        let s = snapshot("7", &[(LISTENER, "l", 1)]);
        let mut st = SotwStream::default();
        let first = st.on_request(req(LISTENER, &[], "", None), &s).1.expect("response");
        let (rec, resp) = st.on_request(req(LISTENER, &[], &first.nonce, Some("bad regex")), &s);
        let rec = rec.expect("nack");
        assert!(rec.is_nack());
        assert_eq!((rec.version.as_str(), rec.error.as_deref()), ("7", Some("bad regex")));
        assert!(resp.is_none(), "the rejected version is not sent again");
        let (rec, resp) = st.on_request(req(LISTENER, &[], "999", None), &s);
        assert!(rec.is_none() && resp.is_none(), "stale nonce");
        // A new snapshot goes out despite the NACK of the old one.
        let s2 = snapshot("8", &[(LISTENER, "l", 2)]);
        assert_eq!(st.on_snapshot(&s2).len(), 1);
    }
}
