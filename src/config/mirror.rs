//! `request_mirror_policies` (route, virtual host or route configuration): where
//! a copy of a request goes, as Envoy's `RouteAction.RequestMirrorPolicy` says.
//! Sending the copy is `http::mirror`.

use http::HeaderName;
use serde::Serialize;

use super::{ser_debug, ser_name};
use crate::policy::fault::FractionalPercent;

#[derive(Debug, Clone, Serialize)]
pub struct MirrorPolicy {
    pub target: MirrorTarget,
    /// `runtime_fraction.default_value` (the runtime key is not looked up, as
    /// elsewhere in remora); every request when unset.
    #[serde(serialize_with = "ser_debug")]
    pub fraction: FractionalPercent,
    pub host: MirrorHost,
}

#[derive(Debug, Clone, Serialize)]
pub enum MirrorTarget {
    /// `cluster`.
    Cluster(String),
    /// `cluster_header`: the cluster named by the first value of this request
    /// header; no mirror when it is absent or empty.
    Header(#[serde(serialize_with = "ser_name")] HeaderName),
}

/// The mirror's Host/:authority.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum MirrorHost {
    /// Envoy's default: `-shadow` appended to the host name (before the port).
    ShadowSuffix,
    /// `disable_shadow_host_suffix_append`.
    Unchanged,
    /// `host_rewrite_literal` (which implies no suffix).
    Rewrite(String),
}

impl MirrorPolicy {
    /// Whether this request is mirrored, for a random value drawn once per
    /// request (Envoy uses the stream id for every policy of a route).
    pub fn chosen(&self, random: u64) -> bool {
        self.fraction.hits(random)
    }
}
