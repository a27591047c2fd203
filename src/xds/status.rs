//! What `/config_dump` and `/stats/prometheus` say about xDS: per resource
//! the version in force and when it arrived, and the last rejected update
//! with its error (Envoy's `error_state`); per type the update counters; and
//! whether the stream is connected. Written by the ADS client, read by admin.

use std::{collections::BTreeMap, fmt::Write as _, time::SystemTime};

use serde::Serialize;

#[derive(Debug, Default, Serialize)]
pub struct XdsStatus {
    pub server: Option<String>,
    pub connected: bool,
    /// Per type URL.
    pub types: BTreeMap<String, TypeStatus>,
}

#[derive(Debug, Default, Serialize)]
pub struct TypeStatus {
    /// The last accepted (ACKed) version.
    pub version: String,
    pub last_updated: Option<String>,
    pub update_attempt: u64,
    pub update_success: u64,
    pub update_rejected: u64,
    pub resources: BTreeMap<String, ResourceStatus>,
}

#[derive(Debug, Default, Serialize)]
pub struct ResourceStatus {
    /// Version of the response that last changed this resource ("" while it
    /// has never been accepted).
    pub version: String,
    pub last_updated: Option<String>,
    /// The last rejected update of this resource, cleared when one is accepted.
    pub error_state: Option<ErrorState>,
}

#[derive(Debug, Serialize)]
pub struct ErrorState {
    pub version: String,
    pub details: String,
    pub last_update_attempt: String,
}

impl XdsStatus {
    /// Records one response: which resources were accepted and which failed.
    pub fn record(&mut self, type_url: &str, version: &str, accepted: &[String], rejected: &[(String, String)]) {
        let now = timestamp(SystemTime::now());
        let t = self.types.entry(type_url.to_string()).or_default();
        t.update_attempt += 1;
        if rejected.is_empty() {
            t.update_success += 1;
            t.version = version.to_string();
            t.last_updated = Some(now.clone());
        } else {
            t.update_rejected += 1;
        }
        for name in accepted {
            let r = t.resources.entry(name.clone()).or_default();
            r.version = version.to_string();
            r.last_updated = Some(now.clone());
            r.error_state = None;
        }
        for (name, details) in rejected {
            let r = t.resources.entry(name.clone()).or_default();
            r.error_state = Some(ErrorState {
                version: version.to_string(),
                details: details.clone(),
                last_update_attempt: now.clone(),
            });
        }
    }

    /// Forgets resources that are no longer in force (removed or unsubscribed).
    pub fn retain(&mut self, type_url: &str, keep: impl Fn(&str) -> bool) {
        if let Some(t) = self.types.get_mut(type_url) {
            t.resources
                .retain(|name, r| keep(name) || r.error_state.is_some() && r.version.is_empty());
        }
    }

    /// Prometheus lines in Envoy's spirit: connection state and update counters per type.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# TYPE envoy_control_plane_connected_state gauge");
        let _ = writeln!(out, "envoy_control_plane_connected_state {}", u8::from(self.connected));
        for (metric, get) in [
            (
                "envoy_xds_update_attempt",
                (|t: &TypeStatus| t.update_attempt) as fn(&TypeStatus) -> u64,
            ),
            ("envoy_xds_update_success", |t| t.update_success),
            ("envoy_xds_update_rejected", |t| t.update_rejected),
        ] {
            if self.types.is_empty() {
                continue;
            }
            let _ = writeln!(out, "# TYPE {metric} counter");
            for (url, t) in &self.types {
                let short = url.rsplit('.').next().unwrap_or(url);
                let _ = writeln!(out, "{metric}{{envoy_xds_type=\"{short}\"}} {}", get(t));
            }
        }
        out
    }
}

/// Seconds since the epoch with milliseconds, as the admin endpoints print times.
pub fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}
