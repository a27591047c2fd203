//! The resources a control plane serves: decoded from a directory of Envoy
//! canonical JSON/YAML files (one resource or a list per file) into
//! protobuf-encoded `Any`s, grouped by type URL, under one snapshot version.
//! Reading files and decoding live here; nothing here knows about streams.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::SystemTime,
};

use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use prost_reflect::ReflectMessage;
use serde_json::Value;

use crate::xds::decode::{parse_document, release_memory, ApiPool};

pub const TYPE_PREFIX: &str = "type.googleapis.com/";
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// Whether an empty subscription means "everything" for this type: as
/// Envoy, only for listeners and clusters (the other types are named by
/// what refers to them).
pub fn is_wildcard_type(type_url: &str) -> bool {
    type_url == LISTENER || type_url == CLUSTER
}

/// The order ADS sends updates in, so that nothing refers to what the
/// client has not seen yet: clusters, endpoints, listeners, routes, the rest.
pub fn ads_order(type_url: &str) -> u8 {
    match type_url {
        CLUSTER => 0,
        ENDPOINT => 1,
        LISTENER => 2,
        ROUTE => 3,
        _ => 4,
    }
}

/// One named xDS resource, encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resource {
    pub type_url: String,
    pub name: String,
    /// The protobuf-encoded message.
    pub value: Vec<u8>,
    /// A hash of the encoded message: the per-resource version of Delta
    /// xDS. Stable across restarts, so a reconnecting client's
    /// `initial_resource_versions` can be compared with it.
    pub version: String,
}

impl Resource {
    pub fn new(type_url: impl Into<String>, name: impl Into<String>, value: Vec<u8>) -> Resource {
        let version = format!("{:016x}", fnv1a(&value));
        Resource {
            type_url: type_url.into(),
            name: name.into(),
            value,
            version,
        }
    }

    /// From a typed message of `envoy-types` (e.g. a `Cluster` built in a test).
    pub fn from_message<M: Message + prost::Name>(name: impl Into<String>, msg: &M) -> Resource {
        Resource::new(M::type_url(), name, msg.encode_to_vec())
    }

    pub fn to_any(&self) -> Any {
        Any {
            type_url: self.type_url.clone(),
            value: self.value.clone(),
        }
    }
}

/// FNV-1a, 64 bit: a content hash that is the same in every process.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A version of everything served: type URL -> name -> resource.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub version: String,
    resources: BTreeMap<String, BTreeMap<String, Resource>>,
    /// Files (or resources) that could not be decoded and were left out.
    pub errors: Vec<String>,
}

impl Snapshot {
    /// Builds a snapshot; a later resource with the same type and name as an
    /// earlier one is left out and reported in `errors`.
    pub fn new(version: impl Into<String>, resources: Vec<Resource>, mut errors: Vec<String>) -> Snapshot {
        let mut by_type: BTreeMap<String, BTreeMap<String, Resource>> = BTreeMap::new();
        for r in resources {
            let names = by_type.entry(r.type_url.clone()).or_default();
            if names.contains_key(&r.name) {
                errors.push(format!(
                    "{} '{}' is defined twice; serving the first",
                    short_type(&r.type_url),
                    r.name
                ));
                continue;
            }
            names.insert(r.name.clone(), r);
        }
        Snapshot {
            version: version.into(),
            resources: by_type,
            errors,
        }
    }

    /// The resources of one type, by name.
    pub fn resources(&self, type_url: &str) -> impl Iterator<Item = &Resource> {
        self.resources.get(type_url).into_iter().flat_map(|m| m.values())
    }

    pub fn get(&self, type_url: &str, name: &str) -> Option<&Resource> {
        self.resources.get(type_url).and_then(|m| m.get(name))
    }

    pub fn type_urls(&self) -> impl Iterator<Item = &str> {
        self.resources.keys().map(String::as_str)
    }

    /// Every resource, all types.
    pub fn len(&self) -> usize {
        self.resources.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether both serve exactly the same resources (versions aside).
    pub fn same_resources(&self, other: &Snapshot) -> bool {
        let non_empty = |s: &Snapshot| s.resources.iter().filter(|(_, m)| !m.is_empty()).count();
        non_empty(self) == non_empty(other)
            && self
                .resources
                .iter()
                .filter(|(_, m)| !m.is_empty())
                .all(|(t, m)| other.resources.get(t) == Some(m))
    }
}

/// "envoy.config.cluster.v3.Cluster" -> "Cluster", for messages.
pub fn short_type(type_url: &str) -> &str {
    type_url.rsplit(['.', '/']).next().unwrap_or(type_url)
}

/// What a directory looked like: served files with their size and mtime.
/// Compared every poll; any difference means reload.
pub type DirStamp = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// The resource files of `dir` (`*.yaml`, `*.yml`, `*.json`, not hidden,
/// not recursive), sorted by name.
pub fn resource_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.starts_with('.'));
        let served = matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"));
        if served && !hidden && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

pub fn dir_stamp(dir: &Path) -> std::io::Result<DirStamp> {
    let mut stamp = Vec::new();
    for path in resource_files(dir)? {
        // A file deleted between listing and stat is simply absent.
        if let Ok(meta) = std::fs::metadata(&path) {
            stamp.push((path, meta.len(), meta.modified().ok()));
        }
    }
    Ok(stamp)
}

/// Reads and decodes every resource file of `dir`. A file that cannot be
/// read or decoded is left out whole, with its error in the second list;
/// the rest still serve. Fails only when the directory cannot be listed.
pub fn load_dir(dir: &Path) -> std::io::Result<(Vec<Resource>, Vec<String>)> {
    let files = resource_files(dir)?;
    let mut resources = Vec::new();
    let mut errors = Vec::new();
    let pool = match ApiPool::load() {
        Ok(p) => p,
        Err(e) => return Ok((resources, vec![e.to_string()])),
    };
    for path in files {
        let shown = path.display().to_string();
        let decoded = std::fs::read_to_string(&path)
            .map_err(|e| vec![format!("cannot read: {e}")])
            .and_then(|text| decode_document(&shown, &text, &pool));
        match decoded {
            Ok(mut rs) => resources.append(&mut rs),
            Err(errs) => errors.extend(errs.into_iter().map(|e| format!("{shown}: {e}"))),
        }
    }
    // The descriptor pool is ~15 MB while loaded; give its pages back.
    drop(pool);
    release_memory();
    Ok((resources, errors))
}

/// Decodes one document: a resource object with an `@type`, a list of
/// them, or a `DiscoveryResponse`-shaped object with `resources:` (Envoy's
/// file-based xDS form). All or nothing: any error fails the document.
pub fn decode_document(file: &str, text: &str, pool: &ApiPool) -> Result<Vec<Resource>, Vec<String>> {
    let value = parse_document(file, text).map_err(|e| vec![e.to_string()])?;
    let items = match value {
        Value::Array(items) => items,
        Value::Object(mut map) if !map.contains_key("@type") && map.contains_key("resources") => {
            match map.remove("resources") {
                Some(Value::Array(items)) => items,
                _ => return Err(vec!["resources: expected a list".to_string()]),
            }
        }
        Value::Object(map) if map.is_empty() => Vec::new(),
        other => vec![other],
    };
    let many = items.len() > 1;
    let mut resources = Vec::new();
    let mut errors = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        match decode_resource(item, pool) {
            Ok(r) => resources.push(r),
            Err(e) if many => errors.push(format!("[{i}]: {e}")),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(resources)
    } else {
        Err(errors)
    }
}

/// One resource object: `@type` names the message; the name is its `name`
/// field (`cluster_name` for a ClusterLoadAssignment).
fn decode_resource(item: Value, pool: &ApiPool) -> Result<Resource, String> {
    let Value::Object(mut map) = item else {
        return Err("a resource must be an object with an @type".to_string());
    };
    let type_url = match map.remove("@type") {
        Some(Value::String(t)) => t,
        Some(_) => return Err("@type must be a string".to_string()),
        None => return Err("missing @type (e.g. type.googleapis.com/envoy.config.cluster.v3.Cluster)".to_string()),
    };
    let full_name = type_url.rsplit('/').next().unwrap_or(&type_url).to_string();
    if pool.pool().get_message_by_name(&full_name).is_none() {
        return Err(format!("unknown @type '{type_url}': not a type of Envoy's v3 API"));
    }
    let msg = pool.decode_value(&full_name, Value::Object(map)).map_err(|e| {
        let lines: Vec<String> = e.0.iter().map(ToString::to_string).collect();
        lines.join("; ")
    })?;
    let name = ["name", "cluster_name"]
        .iter()
        .filter(|f| msg.descriptor().get_field_by_name(f).is_some())
        .find_map(|f| msg.get_field_by_name(f).and_then(|v| v.as_str().map(str::to_string)))
        .unwrap_or_default();
    if name.is_empty() {
        return Err(format!("{full_name} has no name (its `name` or `cluster_name` field)"));
    }
    Ok(Resource::new(
        format!("{TYPE_PREFIX}{full_name}"),
        name,
        msg.encode_to_vec(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(text: &str) -> Result<Vec<Resource>, Vec<String>> {
        let pool = ApiPool::load().map_err(|e| vec![e.to_string()])?;
        decode_document("t.yaml", text, &pool)
    }

    #[test]
    fn decodes_one_resource_or_a_list() {
        let one =
            decode("'@type': type.googleapis.com/envoy.config.cluster.v3.Cluster\nname: a\nlb_policy: round_robin")
                .expect("decodes");
        assert_eq!(
            (one.len(), one[0].name.as_str(), one[0].type_url.as_str()),
            (1, "a", CLUSTER)
        );
        let list = decode(
            "- '@type': type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment\n  cluster_name: a\n\
             - '@type': type.googleapis.com/envoy.config.route.v3.RouteConfiguration\n  name: r",
        )
        .expect("decodes");
        let names: Vec<_> = list.iter().map(|r| (r.type_url.as_str(), r.name.as_str())).collect();
        assert_eq!(names, [(ENDPOINT, "a"), (ROUTE, "r")]);
        let wrapped = decode(
            r#"{"version_info": "1", "resources": [{"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", "name": "l"}]}"#,
        )
        .expect("decodes");
        assert_eq!(wrapped[0].type_url, LISTENER);
    }

    #[test]
    fn reports_what_is_wrong() {
        let cases = [
            ("name: a", "missing @type"),
            (
                "'@type': type.googleapis.com/envoy.config.cluster.v3.Nope\nname: a",
                "unknown @type",
            ),
            (
                "'@type': type.googleapis.com/envoy.config.cluster.v3.Cluster\nnam: a",
                "nam",
            ),
            (
                "'@type': type.googleapis.com/envoy.config.cluster.v3.Cluster",
                "has no name",
            ),
            (
                "- '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster\n  name: a\n- 3",
                "[1]: a resource must be an object",
            ),
        ];
        for (text, want) in cases {
            let errors = decode(text).expect_err(text).join("\n");
            assert!(errors.contains(want), "{text}: {errors}");
        }
    }

    #[test]
    fn versions_follow_content() {
        let a = Resource::new(CLUSTER, "a", vec![1, 2]);
        assert_eq!(a.version, Resource::new(CLUSTER, "a", vec![1, 2]).version);
        assert_ne!(a.version, Resource::new(CLUSTER, "a", vec![1, 3]).version);
        let s1 = Snapshot::new("1", vec![a.clone()], vec![]);
        let s2 = Snapshot::new("2", vec![a.clone()], vec!["x".into()]);
        assert!(s1.same_resources(&s2));
        let dup = Snapshot::new("3", vec![a.clone(), Resource::new(CLUSTER, "a", vec![9])], vec![]);
        assert_eq!(dup.len(), 1);
        assert_eq!(dup.get(CLUSTER, "a"), Some(&a));
        assert!(
            dup.errors[0].contains("Cluster 'a' is defined twice"),
            "{:?}",
            dup.errors
        );
        assert!(s1.same_resources(&dup), "the duplicate is left out");
        assert!(!s1.same_resources(&Snapshot::new("4", vec![], vec![])));
    }
}
