//! Envoy v3 protobuf (reflected) -> `config` model. Every error and every
//! unsupported field is reported with its field path; that text is what
//! `remora check` prints and what an xDS NACK carries.
//!
//! Translation *takes* each field it understands out of the message. Whatever
//! is still set when a [`Msg`] is dropped was not understood, and is reported
//! as unsupported: a field can never be silently ignored, and the list of
//! supported fields is exactly the code that reads them. Fields that only feed
//! telemetry remora does not produce are taken with [`Msg::advisory`], which
//! records a warning instead.

use std::{cell::RefCell, fmt, time::Duration};

use prost_reflect::{DynamicMessage, MapKey, ReflectMessage, Value};

use super::decode::ApiPool;

mod access_log;
mod bootstrap;
mod cluster;
mod filters;
mod lb;
#[cfg(test)]
mod lb_tests;
mod listener;
mod policy;
mod route;
mod tcp;
#[cfg(test)]
mod tests;

pub use bootstrap::bootstrap;

/// One xDS Cluster resource (the same translation as a static cluster).
pub fn cluster(m: Msg<'_, '_>) -> Option<crate::config::Cluster> {
    cluster::cluster(m)
}

/// Extension types that only feed telemetry remora does not produce yet. A
/// filter of one of these is skipped with a warning (shown by `check` and
/// `/config_dump`) rather than rejecting the whole listener, so a real istiod
/// config is not NACKed for its stats plumbing. Filters that change traffic
/// (Istio's ALPN override, authn, internal-address rewriting, Wasm) stay
/// rejected until implemented.
pub const TELEMETRY_ONLY: &[&str] = &[
    // Istio's stats filter (HTTP and TCP), bare or in a TypedStruct.
    "stats.PluginConfig",
    // Istio's peer metadata exchange (TCP filter and upstream cluster filter).
    "envoy.tcp.metadataexchange.config.MetadataExchange",
    "io.istio.http.peer_metadata.Config",
    // Istio's baggage propagation of workload metadata.
    "io.istio.http.connect_baggage.Config",
    // Envoy's gRPC stats filter.
    "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
];

const TYPED_STRUCTS: &[&str] = &["udpa.type.v1.TypedStruct", "xds.type.v3.TypedStruct"];

/// The extension a typed_config names: its type, or for a TypedStruct the
/// type it wraps.
pub fn extension_name(type_name: &str, m: &Msg<'_, '_>) -> String {
    if TYPED_STRUCTS.contains(&type_name) {
        if let Some(inner) = m.peek_string("type_url") {
            return inner.rsplit('/').next().unwrap_or(&inner).to_string();
        }
    }
    type_name.to_string()
}

/// Whether an extension only feeds telemetry (see [`TELEMETRY_ONLY`]).
pub fn is_telemetry_only(extension: &str) -> bool {
    TELEMETRY_ONLY.contains(&extension)
}

/// One xDS RouteConfiguration resource.
pub fn route_configuration(m: Msg<'_, '_>) -> Option<crate::config::RouteConfig> {
    route::route_config(m)
}

/// One xDS ClusterLoadAssignment resource: its name and endpoints.
pub fn cluster_load_assignment(m: Msg<'_, '_>) -> Option<(String, crate::config::Assignment)> {
    let name = m.peek_string("cluster_name").unwrap_or_default();
    Some((name, cluster::load_assignment(m)))
}

/// A `ConfigSource` that must be `ads: {}` (everything comes over the one ADS
/// stream); anything else is reported at its path.
pub(crate) fn ads_source(mut cs: Msg<'_, '_>) -> bool {
    if cs.msg("ads").is_none() {
        cs.error("only `ads: {}` config sources are supported (everything over the one ADS stream)");
        return false;
    }
    let v = cs.enum_name("resource_api_version");
    if v != "V3" && v != "AUTO" {
        cs.field_error("resource_api_version", format!("{v}: only the v3 API exists"));
    }
    cs.ignore("initial_fetch_timeout");
    true
}

/// One xDS Listener resource (the same translation as a static listener).
pub fn listener(m: Msg<'_, '_>) -> Option<crate::config::Listener> {
    listener::listener(m)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: path.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Default, Clone)]
pub struct Errors(pub Vec<ConfigError>);

impl Errors {
    pub fn one(e: ConfigError) -> Errors {
        Errors(vec![e])
    }
    pub fn push(&mut self, e: ConfigError) {
        self.0.push(e)
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Errors {}

/// Shared state of one translation: the pool (to unpack `Any`), and what was
/// found wrong or skipped.
pub struct Ctx<'p> {
    pub pool: &'p ApiPool,
    errors: RefCell<Vec<ConfigError>>,
    warnings: RefCell<Vec<String>>,
    /// When set, cluster names that routes and TCP proxies use must be in it.
    known_clusters: RefCell<Option<std::collections::HashSet<String>>>,
    /// When set, the balancer (`lb_policy` name) of each cluster known now,
    /// so that a route's `hash_policy` can be checked against its clusters.
    balancers: RefCell<Option<std::collections::HashMap<String, &'static str>>>,
}

impl<'p> Ctx<'p> {
    pub fn new(pool: &'p ApiPool) -> Ctx<'p> {
        Ctx {
            pool,
            errors: RefCell::default(),
            warnings: RefCell::default(),
            known_clusters: RefCell::default(),
            balancers: RefCell::default(),
        }
    }
    pub fn set_balancers(&self, balancers: std::collections::HashMap<String, &'static str>) {
        *self.balancers.borrow_mut() = Some(balancers);
    }
    /// A route's `hash_policy` only takes effect on RING_HASH and MAGLEV
    /// clusters: when every target cluster is known and none of them hashes,
    /// the policy is a mistake (Envoy silently ignores it).
    pub fn check_hash_targets<'n>(&self, path: &str, targets: impl IntoIterator<Item = &'n str>) {
        let balancers = self.balancers.borrow();
        let Some(known) = &*balancers else { return };
        let mut named = Vec::new();
        for t in targets {
            match known.get(t) {
                Some(&"RING_HASH" | &"MAGLEV") | None => return,
                Some(lb) => named.push(format!("'{t}' uses {lb}")),
            }
        }
        if !named.is_empty() {
            self.error(
                path,
                format!(
                    "has no effect: only RING_HASH and MAGLEV clusters hash requests, and cluster {}",
                    named.join(", cluster ")
                ),
            );
        }
    }
    pub fn set_known_clusters(&self, names: std::collections::HashSet<String>) {
        *self.known_clusters.borrow_mut() = Some(names);
    }
    /// Checks a cluster reference; records an error at `path` when it dangles.
    pub fn check_cluster_ref(&self, path: &str, name: &str) {
        let missing = match &*self.known_clusters.borrow() {
            Some(known) => !known.contains(name),
            None => false,
        };
        if missing {
            self.error(path, format!("unknown cluster '{name}'"));
        }
    }
    pub fn error(&self, path: &str, msg: impl Into<String>) {
        self.errors.borrow_mut().push(ConfigError::new(path, msg));
    }
    pub fn warn(&self, path: &str, msg: impl Into<String>) {
        self.warnings.borrow_mut().push(format!("{path}: {}", msg.into()));
    }
    pub fn has_errors(&self) -> bool {
        !self.errors.borrow().is_empty()
    }
    pub fn into_result(self) -> (Vec<ConfigError>, Vec<String>) {
        (self.errors.into_inner(), self.warnings.into_inner())
    }
}

/// One message being translated, with its field path.
pub struct Msg<'c, 'p> {
    msg: DynamicMessage,
    pub path: String,
    ctx: &'c Ctx<'p>,
    failed: bool,
}

impl<'c, 'p> Msg<'c, 'p> {
    pub fn new(msg: DynamicMessage, path: String, ctx: &'c Ctx<'p>) -> Self {
        Msg {
            msg,
            path,
            ctx,
            failed: false,
        }
    }

    pub fn ctx(&self) -> &'c Ctx<'p> {
        self.ctx
    }

    pub fn type_name(&self) -> String {
        self.msg.descriptor().full_name().to_string()
    }

    pub fn field_path(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.path, name)
        }
    }

    /// Records an error at this message; its leftover fields are then not
    /// reported again.
    pub fn error(&mut self, msg: impl Into<String>) {
        self.failed = true;
        self.ctx.error(&self.path, msg);
    }

    /// Records an error at one of this message's fields.
    pub fn field_error(&mut self, name: &str, msg: impl Into<String>) {
        self.failed = true;
        self.ctx.error(&self.field_path(name), msg);
    }

    /// Reads a string field without taking it.
    pub fn peek_string(&self, name: &str) -> Option<String> {
        self.msg
            .get_field_by_name(name)
            .and_then(|v| v.as_str().map(str::to_string))
    }

    /// Whether this message type has a field of that name at all.
    pub fn knows(&self, name: &str) -> bool {
        self.msg.descriptor().get_field_by_name(name).is_some()
    }

    pub fn has(&self, name: &str) -> bool {
        self.msg.has_field_by_name(name)
    }

    fn take(&mut self, name: &str) -> Option<Value> {
        if self.msg.has_field_by_name(name) {
            self.msg.take_field_by_name(name)
        } else {
            // Clear an unset field too, so a wrong name in the code shows up in tests.
            debug_assert!(
                self.msg.descriptor().get_field_by_name(name).is_some(),
                "{} has no field {name}",
                self.msg.descriptor().full_name()
            );
            None
        }
    }

    /// Takes a field that only affects what remora does not do (stats names,
    /// tracing, ...): accepted, and a warning says it has no effect.
    pub fn advisory(&mut self, name: &str, why: &str) {
        if self.take(name).is_some() {
            self.ctx.warn(&self.field_path(name), why);
        }
    }

    /// Takes a field that needs no action (names, descriptions, metadata).
    pub fn ignore(&mut self, name: &str) {
        self.take(name);
    }

    pub fn string(&mut self, name: &str) -> String {
        match self.take(name) {
            Some(Value::String(s)) => s,
            _ => String::new(),
        }
    }

    pub fn bytes(&mut self, name: &str) -> Option<bytes::Bytes> {
        match self.take(name) {
            Some(Value::Bytes(b)) => Some(b),
            _ => None,
        }
    }

    pub fn bool(&mut self, name: &str) -> bool {
        matches!(self.take(name), Some(Value::Bool(true)))
    }

    pub fn u32(&mut self, name: &str) -> u32 {
        match self.take(name) {
            Some(Value::U32(v)) => v,
            Some(Value::I32(v)) => v.max(0) as u32,
            _ => 0,
        }
    }

    pub fn u64(&mut self, name: &str) -> u64 {
        match self.take(name) {
            Some(Value::U64(v)) => v,
            Some(Value::U32(v)) => v as u64,
            Some(Value::I64(v)) => v.max(0) as u64,
            _ => 0,
        }
    }

    /// The symbolic name of an enum field (its default's name when unset).
    pub fn enum_name(&mut self, name: &str) -> String {
        let number = match self.take(name) {
            Some(Value::EnumNumber(n)) => n,
            _ => 0,
        };
        self.msg
            .descriptor()
            .get_field_by_name(name)
            .and_then(|f| f.kind().as_enum().cloned())
            .and_then(|e| e.get_value(number).map(|v| v.name().to_string()))
            .unwrap_or_else(|| number.to_string())
    }

    /// The number of an enum field (0 when unset), for enums whose numbers mean something
    /// (e.g. `type.v3.StatusCode`).
    pub fn enum_number(&mut self, name: &str) -> i32 {
        match self.take(name) {
            Some(Value::EnumNumber(n)) => n,
            _ => 0,
        }
    }

    /// A nested message field.
    pub fn msg(&mut self, name: &str) -> Option<Msg<'c, 'p>> {
        match self.take(name) {
            Some(Value::Message(m)) => Some(Msg::new(m, self.field_path(name), self.ctx)),
            _ => None,
        }
    }

    /// A repeated message field.
    pub fn list(&mut self, name: &str) -> Vec<Msg<'c, 'p>> {
        let path = self.field_path(name);
        match self.take(name) {
            Some(Value::List(items)) => items
                .into_iter()
                .enumerate()
                .filter_map(|(i, v)| match v {
                    Value::Message(m) => Some(Msg::new(m, format!("{path}[{i}]"), self.ctx)),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    pub fn f64(&mut self, name: &str) -> Option<f64> {
        match self.take(name) {
            Some(Value::F64(v)) => Some(v),
            Some(Value::F32(v)) => Some(f64::from(v)),
            _ => None,
        }
    }

    /// A repeated integer field.
    pub fn u32s(&mut self, name: &str) -> Vec<u32> {
        match self.take(name) {
            Some(Value::List(items)) => items.into_iter().filter_map(|v| v.as_u32()).collect(),
            _ => Vec::new(),
        }
    }

    pub fn strings(&mut self, name: &str) -> Vec<String> {
        match self.take(name) {
            Some(Value::List(items)) => items
                .into_iter()
                .filter_map(|v| match v {
                    Value::String(s) => Some(s),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// A `google.protobuf.*Value` wrapper field's inner value.
    pub fn wrapped(&mut self, name: &str) -> Option<Value> {
        match self.take(name) {
            Some(Value::Message(mut m)) => Some(m.take_field_by_name("value").unwrap_or_else(|| {
                // An explicitly set wrapper holding the default value.
                m.descriptor()
                    .get_field_by_name("value")
                    .map(|f| Value::default_value_for_field(&f))
                    .unwrap_or(Value::Bool(false))
            })),
            _ => None,
        }
    }

    pub fn wrapped_bool(&mut self, name: &str) -> Option<bool> {
        self.wrapped(name).and_then(|v| v.as_bool())
    }

    pub fn wrapped_u32(&mut self, name: &str) -> Option<u32> {
        self.wrapped(name).and_then(|v| v.as_u32())
    }

    /// A `google.protobuf.Duration` field; negative durations are an error.
    pub fn duration(&mut self, name: &str) -> Option<Duration> {
        let path = self.field_path(name);
        match self.take(name) {
            Some(Value::Message(m)) => {
                let secs = m.get_field_by_name("seconds").and_then(|v| v.as_i64()).unwrap_or(0);
                let nanos = m.get_field_by_name("nanos").and_then(|v| v.as_i32()).unwrap_or(0);
                if secs < 0 || nanos < 0 {
                    self.failed = true;
                    self.ctx.error(&path, "duration must not be negative");
                    return None;
                }
                Some(Duration::new(secs as u64, nanos as u32))
            }
            _ => None,
        }
    }

    /// A `google.protobuf.Duration` field as Envoy keeps most timeouts
    /// (`PROTOBUF_GET_MS_*`): whole milliseconds, the rest truncated.
    pub fn duration_ms(&mut self, name: &str) -> Option<Duration> {
        self.duration(name)
            .map(|d| Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
    }

    /// A `google.protobuf.Any` field, unpacked: the message name and the message.
    pub fn any(&mut self, name: &str) -> Option<(String, Msg<'c, 'p>)> {
        self.msg(name)?.unpack()
    }

    /// Unpacks this message, a `google.protobuf.Any`, into the message it holds.
    pub fn unpack(mut self) -> Option<(String, Msg<'c, 'p>)> {
        let url = self.string("type_url");
        let bytes = self.bytes("value").unwrap_or_default();
        let type_name = url.rsplit('/').next().unwrap_or(&url).to_string();
        let Some(desc) = self.ctx.pool.pool().get_message_by_name(&type_name) else {
            self.error(format!("unknown @type '{url}'"));
            return None;
        };
        match DynamicMessage::decode(desc, bytes) {
            Ok(m) => Some((type_name, Msg::new(m, self.path.clone(), self.ctx))),
            Err(e) => {
                self.error(format!("malformed {type_name}: {e}"));
                None
            }
        }
    }

    /// A map field with string keys and message values, as `name[key]` entries.
    pub fn map_entries(&mut self, name: &str) -> Vec<(String, Msg<'c, 'p>)> {
        let path = self.field_path(name);
        match self.take(name) {
            Some(Value::Map(map)) => {
                let mut entries: Vec<_> = map
                    .into_iter()
                    .filter_map(|(k, v)| match (k, v) {
                        (MapKey::String(k), Value::Message(m)) => {
                            let p = format!("{path}[{k}]");
                            Some((k, Msg::new(m, p, self.ctx)))
                        }
                        _ => None,
                    })
                    .collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                entries
            }
            _ => Vec::new(),
        }
    }

    /// Names of the map keys of a map field (for advisory maps).
    pub fn map_keys(&mut self, name: &str) -> Vec<String> {
        match self.take(name) {
            Some(Value::Map(m)) => m
                .into_keys()
                .map(|k| match k {
                    MapKey::String(s) => s,
                    other => format!("{other:?}"),
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Marks the message as handled even though fields remain (after an error
    /// that makes the rest meaningless).
    pub fn abandon(mut self) {
        self.failed = true;
    }
}

impl Drop for Msg<'_, '_> {
    fn drop(&mut self) {
        if self.failed {
            return;
        }
        let leftover: Vec<String> = self.msg.fields().map(|(f, _)| f.name().to_string()).collect();
        for name in leftover {
            let path = self.field_path(&name);
            self.ctx.error(
                &path,
                format!("not supported by remora yet ({}.{name})", self.msg.descriptor().name()),
            );
        }
    }
}
