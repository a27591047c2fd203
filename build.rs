//! Embeds the descriptor set of Envoy's v3 API that the `envoy-types` crate
//! ships (`src/generated/types.bin`, made by protoc from the same .proto files
//! as its Rust types, so reflection and the typed structs always agree). Source
//! info (comments) is stripped: it would only cost memory when the pool is
//! decoded. Envoy's .proto files are never copied into this repository.

use std::{env, fs, path::PathBuf, process::Command};

use prost::Message;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=Cargo.lock");
    let src = envoy_types_dir().join("src/generated/types.bin");
    let bytes = fs::read(&src).unwrap_or_else(|e| panic!("read {}: {e}", src.display()));
    let mut set = prost_types::FileDescriptorSet::decode(bytes.as_slice())
        .unwrap_or_else(|e| panic!("decode {}: {e}", src.display()));
    for file in &mut set.file {
        file.source_code_info = None;
    }
    set.file.push(udpa_typed_struct());
    let dst = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR")).join("envoy_descriptors.bin");
    fs::write(&dst, set.encode_to_vec()).expect("write descriptor set");
    compile_own_protos();
}

/// The project's own .proto files (proto/), compiled by protox (pure Rust,
/// no protoc) and turned into prost types and tonic stubs.
fn compile_own_protos() {
    const PROTOS: &[&str] = &["proto/remora/controlplane/v1/snapshot.proto"];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"]).unwrap_or_else(|e| panic!("compile proto/: {e}"));
    tonic_prost_build::configure()
        .compile_fds(fds)
        .unwrap_or_else(|e| panic!("generate code for proto/: {e}"));
}

/// Where cargo unpacked the `envoy-types` package, asked of `cargo metadata`.
fn envoy_types_dir() -> PathBuf {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest_dir = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline"])
        .current_dir(&manifest_dir)
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    let manifest = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "envoy-types")
        .and_then(|p| p["manifest_path"].as_str())
        .expect("envoy-types is a dependency");
    PathBuf::from(manifest)
        .parent()
        .expect("manifest has a parent")
        .to_path_buf()
}

/// `udpa.type.v1.TypedStruct` (type_url + Struct): the wrapper Istio puts
/// around its own extension configs. envoy-types ships its successor
/// `xds.type.v3.TypedStruct` but not this one; it is declared here so such
/// configs decode and can be named precisely when rejected.
fn udpa_typed_struct() -> prost_types::FileDescriptorProto {
    use prost_types::{
        field_descriptor_proto::{Label, Type},
        DescriptorProto, FieldDescriptorProto,
    };
    let field = |name: &str, number: i32, ty: Type, type_name: Option<&str>| FieldDescriptorProto {
        name: Some(name.into()),
        number: Some(number),
        label: Some(Label::Optional as i32),
        r#type: Some(ty as i32),
        type_name: type_name.map(Into::into),
        json_name: Some(if name == "type_url" {
            "typeUrl".into()
        } else {
            name.into()
        }),
        ..Default::default()
    };
    prost_types::FileDescriptorProto {
        name: Some("remora/udpa/type/v1/typed_struct.proto".into()),
        package: Some("udpa.type.v1".into()),
        dependency: vec!["google/protobuf/struct.proto".into()],
        message_type: vec![DescriptorProto {
            name: Some("TypedStruct".into()),
            field: vec![
                field("type_url", 1, Type::String, None),
                field("value", 2, Type::Message, Some(".google.protobuf.Struct")),
            ],
            ..Default::default()
        }],
        syntax: Some("proto3".into()),
        ..Default::default()
    }
}
