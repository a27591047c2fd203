//! The xDS side of the demo: the in-process control plane, and remora started
//! from a bootstrap that only names that control plane, taking its listener
//! and clusters over ADS. Starting, pushing a version, waiting (bounded) for
//! remora's ACK of it, and stopping; no traffic and no printing here.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{net::TcpListener, task::JoinHandle, time::timeout};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{resources, traffic::admin_get};
use crate::{
    controlplane::{
        snapshot::{short_type, CLUSTER, LISTENER},
        AckRecord, ControlPlane, Resource,
    },
    proxy::Proxy,
    xds::{self, ads::AdsConfig},
};

const START_TIMEOUT: Duration = Duration::from_secs(5);
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(5);
/// For remora's drain at the end, and for its ADS client and the control plane to stop.
pub(super) const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// The control plane and the remora it configures, running in this process.
pub(super) struct Mesh {
    cp: ControlPlane,
    pub(super) cp_addr: SocketAddr,
    proxy: Arc<Proxy>,
    pub(super) ingress: SocketAddr,
    pub(super) admin: SocketAddr,
    /// The version served at start, and how long remora took to ACK it.
    pub(super) initial: Acked,
    cp_task: JoinHandle<()>,
    ads_task: JoinHandle<()>,
    /// Stops the control plane and the ADS client, also when dropped early.
    stop: DropGuard,
}

/// A version remora ACKed.
pub(super) struct Acked {
    pub(super) version: String,
    /// The resource types whose responses of this version it ACKed ("Cluster", "Listener").
    pub(super) types: Vec<&'static str>,
    /// From publishing the version to the last of those ACKs.
    pub(super) after: Duration,
}

impl Mesh {
    /// Serves `resources` from a new control plane, starts remora pointed at
    /// it, and returns once remora ACKed them, has the listener bound and
    /// its `/ready` says 200.
    pub(super) async fn start(resources: Vec<Resource>) -> Result<Mesh, String> {
        let cp = ControlPlane::new();
        let socket = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(|e| format!("the control plane cannot bind 127.0.0.1: {e}"))?;
        let cp_addr = socket
            .local_addr()
            .map_err(|e| format!("the control plane's address: {e}"))?;
        let published = Instant::now();
        let version = cp.set_snapshot(resources);
        let token = CancellationToken::new();
        let stop = token.clone().drop_guard();
        let cp_task = tokio::spawn({
            let (cp, token) = (cp.clone(), token.clone());
            async move {
                if let Err(e) = cp.serve(socket, token.cancelled_owned()).await {
                    tracing::error!(error = %e, "the demo's control plane stopped");
                }
            }
        });

        let bootstrap = xds::parse_bootstrap("demo ADS bootstrap", &resources::ads_bootstrap(cp_addr))
            .map_err(|e| format!("the demo's ADS bootstrap does not load:\n{e}"))?;
        let ads = AdsConfig::from_bootstrap(&bootstrap)?.ok_or("the demo's ADS bootstrap has no dynamic_resources")?;
        let proxy = match timeout(START_TIMEOUT, Proxy::start(bootstrap)).await {
            Ok(Ok(p)) => Arc::new(p),
            Ok(Err(e)) => return Err(format!("remora did not start: {e}")),
            Err(_) => return Err(format!("remora did not start within {START_TIMEOUT:?}")),
        };
        let admin = match proxy.admin {
            Some(a) => a,
            None => {
                proxy.drain(DRAIN_TIMEOUT).await;
                return Err("remora has no admin address".into());
            }
        };
        let ads_task = tokio::spawn(xds::ads::run(proxy.clone(), ads, token.child_token()));
        let (ingress, initial) = match configured(&cp, &proxy, admin, &version, published).await {
            Ok(c) => c,
            Err(e) => {
                proxy.drain(DRAIN_TIMEOUT).await;
                return Err(e);
            }
        };
        Ok(Mesh {
            cp,
            cp_addr,
            proxy,
            ingress,
            admin,
            initial,
            cp_task,
            ads_task,
            stop,
        })
    }

    /// Publishes new resources; returns the version they are served as.
    pub(super) fn push(&self, resources: Vec<Resource>) -> (String, Instant) {
        let published = Instant::now();
        (self.cp.set_snapshot(resources), published)
    }

    /// Waits (bounded) until remora ACKed `version` of every type in `types`.
    pub(super) async fn acked(
        &self,
        version: &str,
        types: &[&'static str],
        published: Instant,
    ) -> Result<Acked, String> {
        acked(&self.cp, version, types, published).await
    }

    /// Drains remora, then stops its ADS client and the control plane.
    /// Returns whether the drain finished in time.
    pub(super) async fn stop(self) -> bool {
        let drained = self.proxy.drain(DRAIN_TIMEOUT).await;
        drop(self.stop);
        let _ = timeout(DRAIN_TIMEOUT, self.ads_task).await;
        let _ = timeout(DRAIN_TIMEOUT, self.cp_task).await;
        drained
    }
}

/// Waits until remora ACKed the initial version, bound the listener and is ready.
async fn configured(
    cp: &ControlPlane,
    proxy: &Proxy,
    admin: SocketAddr,
    version: &str,
    published: Instant,
) -> Result<(SocketAddr, Acked), String> {
    let acked = acked(cp, version, &[CLUSTER, LISTENER], published).await?;
    let ready = async {
        loop {
            if let (Some(ingress), Ok(_)) = (
                proxy.listener(resources::LISTENER_NAME),
                admin_get(admin, "/ready").await,
            ) {
                return ingress;
            }
            tokio::time::sleep(POLL).await;
        }
    };
    let ingress = timeout(START_TIMEOUT, ready).await.map_err(|_| {
        format!(
            "remora ACKed xDS version {version} but had no ready listener '{}' within {START_TIMEOUT:?}",
            resources::LISTENER_NAME
        )
    })?;
    Ok((ingress, acked))
}

/// Waits (bounded) until remora answered `version` of every type in
/// `types`: Ok when all were ACKed, Err naming a NACK or the timeout.
async fn acked(cp: &ControlPlane, version: &str, types: &[&'static str], published: Instant) -> Result<Acked, String> {
    let answers = |records: &[AckRecord]| -> Option<Vec<AckRecord>> {
        types
            .iter()
            .map(|t| {
                records
                    .iter()
                    .find(|r| r.version == version && r.type_url == *t)
                    .cloned()
            })
            .collect()
    };
    let wait = async {
        loop {
            if let Some(found) = answers(&cp.acks()) {
                return found;
            }
            tokio::time::sleep(POLL).await;
        }
    };
    let found = timeout(ACK_TIMEOUT, wait)
        .await
        .map_err(|_| format!("remora did not ACK xDS version {version} within {ACK_TIMEOUT:?}"))?;
    let after = published.elapsed();
    if let Some(nack) = found.iter().find(|r| r.is_nack()) {
        return Err(format!(
            "remora NACKed xDS version {version} ({}): {}",
            short_type(&nack.type_url),
            nack.error.as_deref().unwrap_or_default()
        ));
    }
    Ok(Acked {
        version: version.to_string(),
        types: types.iter().copied().map(short_type).collect(),
        after,
    })
}
