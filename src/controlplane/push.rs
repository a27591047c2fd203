//! The control plane's own push API (`proto/remora/controlplane/v1/snapshot.proto`):
//! replace what is served, over gRPC, without files; list the ACKs and NACKs
//! recorded. It feeds the same `publish` path as a changed fixture directory.

use tonic::{Request, Response, Status};

use super::{snapshot, ControlPlane, Protocol, Resource};
use crate::xds::decode::ApiPool;

/// The generated types and stubs of `remora.controlplane.v1`.
pub mod api {
    tonic::include_proto!("remora.controlplane.v1");
}

pub use api::snapshot_service_client::SnapshotServiceClient;
use api::snapshot_service_server::{SnapshotService, SnapshotServiceServer};

/// The push API of one control plane.
pub struct Push {
    cp: ControlPlane,
}

impl Push {
    pub fn server(cp: ControlPlane) -> SnapshotServiceServer<Push> {
        SnapshotServiceServer::new(Push { cp })
    }
}

#[tonic::async_trait]
impl SnapshotService for Push {
    async fn set_snapshot(
        &self,
        request: Request<api::SetSnapshotRequest>,
    ) -> Result<Response<api::SetSnapshotResponse>, Status> {
        let req = request.into_inner();
        // Decoding documents builds the reflection pool: blocking work.
        let resources = tokio::task::spawn_blocking(move || read_request(req))
            .await
            .map_err(|e| Status::internal(format!("decoding task failed: {e}")))?
            .map_err(|errors| Status::invalid_argument(errors.join("; ")))?;
        let count = u32::try_from(resources.len()).unwrap_or(u32::MAX);
        let version = self.cp.set_snapshot(resources);
        Ok(Response::new(api::SetSnapshotResponse {
            version,
            resources: count,
        }))
    }

    async fn list_acks(
        &self,
        _request: Request<api::ListAcksRequest>,
    ) -> Result<Response<api::ListAcksResponse>, Status> {
        let records = self
            .cp
            .acks()
            .into_iter()
            .map(|r| api::AckRecord {
                nack: r.is_nack(),
                node: r.node,
                protocol: match r.protocol {
                    Protocol::Sotw => "sotw",
                    Protocol::Delta => "delta",
                }
                .to_string(),
                type_url: r.type_url,
                version: r.version,
                nonce: r.nonce,
                error: r.error.unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(api::ListAcksResponse { records }))
    }
}

/// Every resource of a push, or every reason it cannot be served (all or
/// nothing, like one fixture file).
fn read_request(req: api::SetSnapshotRequest) -> Result<Vec<Resource>, Vec<String>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, r) in req.resources.into_iter().enumerate() {
        if !r.type_url.starts_with(snapshot::TYPE_PREFIX) {
            errors.push(format!(
                "resources[{i}]: type_url '{}' must start with {}",
                r.type_url,
                snapshot::TYPE_PREFIX
            ));
        } else if r.name.is_empty() {
            errors.push(format!("resources[{i}]: name is empty"));
        } else {
            out.push(Resource::new(r.type_url, r.name, r.value));
        }
    }
    if !req.documents.is_empty() {
        let decoded = ApiPool::load().map_err(|e| vec![e.to_string()]).and_then(|pool| {
            let mut resources = Vec::new();
            let mut errors = Vec::new();
            for (i, text) in req.documents.iter().enumerate() {
                match snapshot::decode_document(&format!("documents[{i}]"), text, &pool) {
                    Ok(r) => resources.extend(r),
                    Err(e) => errors.extend(e.into_iter().map(|e| format!("documents[{i}]: {e}"))),
                }
            }
            if errors.is_empty() {
                Ok(resources)
            } else {
                Err(errors)
            }
        });
        crate::xds::decode::release_memory();
        match decoded {
            Ok(r) => out.extend(r),
            Err(e) => errors.extend(e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}
