//! Turns Envoy's JSON/YAML (canonical proto3 JSON mapping, `typed_config`
//! with `@type`) into protobuf messages by reflection over the descriptor set
//! of Envoy's API that `envoy-types` ships (embedded by build.rs).
//!
//! The descriptor pool costs ~15 MB while decoded, so it exists only while a
//! document is being decoded: callers hold an [`ApiPool`] for the duration and
//! drop it, after which [`release_memory`] hands the pages back to the OS.

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, ReflectMessage};
use serde_json::Value;

use super::translate::{ConfigError, Errors};

static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptors.bin"));

/// The reflection pool of Envoy's v3 API.
pub struct ApiPool {
    pool: DescriptorPool,
}

impl ApiPool {
    pub fn load() -> Result<ApiPool, ConfigError> {
        let pool = DescriptorPool::decode(DESCRIPTORS)
            .map_err(|e| ConfigError::new("", format!("embedded Envoy API descriptors: {e}")))?;
        Ok(ApiPool { pool })
    }

    pub fn message(&self, full_name: &str) -> Result<MessageDescriptor, ConfigError> {
        self.pool
            .get_message_by_name(full_name)
            .ok_or_else(|| ConfigError::new("", format!("message {full_name} is not in Envoy's API")))
    }

    pub fn pool(&self) -> &DescriptorPool {
        &self.pool
    }

    /// Decodes a JSON value as the message `full_name`. Unknown fields and
    /// unknown `@type`s are errors, every one reported with its field path.
    pub fn decode_value(&self, full_name: &str, mut value: Value) -> Result<DynamicMessage, Errors> {
        let desc = self.message(full_name).map_err(Errors::one)?;
        self.wrap_foreign_telemetry(&mut value);
        // Report every unknown @type up front (the decoder stops at the first error).
        let mut errors = Errors::default();
        self.check_type_urls(&value, &mut String::new(), &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        self.normalize_enums(&mut value, &desc);
        let mut track = serde_path_to_error::Track::new();
        let de = serde_path_to_error::Deserializer::new(value, &mut track);
        DynamicMessage::deserialize(desc, de).map_err(|e| {
            let path = track.path().to_string();
            let path = if path == "?" || path == "." {
                String::new()
            } else {
                path
            };
            Errors::one(ConfigError::new(&path, strip_position(&e.to_string())))
        })
    }

    /// Envoy parses enum names case-insensitively (`lb_policy: round_robin`);
    /// proto3 JSON does not. Upper-cases enum strings that only match that way.
    fn normalize_enums(&self, value: &mut Value, desc: &MessageDescriptor) {
        let Value::Object(map) = value else { return };
        let desc = match map.get("@type").and_then(Value::as_str) {
            Some(url) => match self.pool.get_message_by_name(url.rsplit('/').next().unwrap_or(url)) {
                Some(d) => d,
                None => return,
            },
            None => desc.clone(),
        };
        // Well-known types have JSON forms of their own (durations as strings, Struct...).
        if desc.full_name().starts_with("google.protobuf.") {
            return;
        }
        for (key, v) in map.iter_mut() {
            let Some(field) = desc.get_field_by_name(key).or_else(|| desc.get_field_by_json_name(key)) else {
                continue;
            };
            let kind = if field.is_map() {
                match field.kind().as_message().map(|m| m.map_entry_value_field().kind()) {
                    Some(k) => k,
                    None => continue,
                }
            } else {
                field.kind()
            };
            let mut visit = |item: &mut Value| match &kind {
                prost_reflect::Kind::Enum(e) => {
                    if let Value::String(s) = item {
                        if e.get_value_by_name(s).is_none() {
                            let upper = s.to_ascii_uppercase();
                            if e.get_value_by_name(&upper).is_some() {
                                *s = upper;
                            }
                        }
                    }
                }
                prost_reflect::Kind::Message(m) => self.normalize_enums(item, m),
                _ => {}
            };
            match v {
                Value::Array(items) if field.is_list() => items.iter_mut().for_each(&mut visit),
                Value::Object(entries) if field.is_map() => entries.values_mut().for_each(&mut visit),
                other => visit(other),
            }
        }
    }

    /// Istio's telemetry-only extension types are not in Envoy's API. In JSON
    /// they are rewritten as a TypedStruct naming the original type, which is
    /// how they arrive over xDS too, so translation sees one shape.
    fn wrap_foreign_telemetry(&self, value: &mut Value) {
        match value {
            Value::Object(map) => {
                let foreign = match map.get("@type") {
                    Some(Value::String(url)) => {
                        let name = url.rsplit('/').next().unwrap_or(url);
                        (self.pool.get_message_by_name(name).is_none() && super::translate::is_telemetry_only(name))
                            .then(|| url.clone())
                    }
                    _ => None,
                };
                match foreign {
                    Some(url) => {
                        *value = serde_json::json!({
                            "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
                            "type_url": url,
                        });
                    }
                    None => map.values_mut().for_each(|v| self.wrap_foreign_telemetry(v)),
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.wrap_foreign_telemetry(v)),
            _ => {}
        }
    }

    fn check_type_urls(&self, value: &Value, path: &mut String, errors: &mut Errors) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(url)) = map.get("@type") {
                    let name = url.rsplit('/').next().unwrap_or(url);
                    if self.pool.get_message_by_name(name).is_none() {
                        errors.push(ConfigError::new(
                            path,
                            format!("unknown @type '{url}': not a type of Envoy's v3 API"),
                        ));
                    }
                }
                for (k, v) in map {
                    let len = path.len();
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(k);
                    self.check_type_urls(v, path, errors);
                    path.truncate(len);
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    self.check_type_urls(v, path, errors);
                    path.truncate(len);
                }
            }
            _ => {}
        }
    }
}

/// serde_json appends " at line N column M" for positions in a Value, which
/// are meaningless here (the path says where).
fn strip_position(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Converts a reflected message into its `envoy-types` struct.
pub fn to_typed<T: Message + Default>(msg: &DynamicMessage) -> Result<T, ConfigError> {
    T::decode(msg.encode_to_vec().as_slice())
        .map_err(|e| ConfigError::new("", format!("re-decoding {}: {e}", msg.descriptor().full_name())))
}

/// Reads a config document: JSON if it parses as JSON (or the name ends in
/// .json), YAML otherwise. Both become the same JSON value.
pub fn parse_document(name: &str, text: &str) -> Result<Value, ConfigError> {
    let is_json = name.ends_with(".json") || text.trim_start().starts_with('{');
    if is_json {
        serde_json::from_str(text).map_err(|e| ConfigError::new("", format!("invalid JSON: {e}")))
    } else {
        let v: Value = serde_yaml::from_str(text).map_err(|e| ConfigError::new("", format!("invalid YAML: {e}")))?;
        Ok(if v.is_null() {
            Value::Object(Default::default())
        } else {
            v
        })
    }
}

/// Gives freed heap pages back to the OS. Decoding a config allocates many
/// small blocks that glibc keeps after they are freed; a sidecar's idle RSS
/// is a feature.
pub fn release_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and trims the allocator's own free lists;
    // it takes no pointers from us and is thread-safe in glibc.
    unsafe {
        libc::malloc_trim(0);
    }
    page_out_descriptors();
}

/// The embedded descriptor set (~640 KB) is read only while a config is
/// decoded; afterwards its pages would stay resident for nothing. They are
/// clean pages of the executable's read-only data, so the kernel can drop
/// them and fault them back in from the file if a later decode reads them.
fn page_out_descriptors() {
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let start = DESCRIPTORS.as_ptr() as usize;
        let end = start + DESCRIPTORS.len();
        // Only whole pages inside the array: its neighbours are not touched.
        let first = start.div_ceil(PAGE) * PAGE;
        let last = end / PAGE * PAGE;
        if last > first {
            // SAFETY: the range is page-aligned and lies wholly inside a
            // `static` byte array in the executable's read-only mapping, which
            // nothing ever writes. MADV_PAGEOUT only reclaims pages (clean file
            // pages are dropped and re-read from the file on access); it never
            // changes their contents. An error (old kernel) is harmless.
            unsafe {
                libc::madvise(first as *mut libc::c_void, last - first, libc::MADV_PAGEOUT);
            }
        }
    }
}
