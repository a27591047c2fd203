//! The development control plane (`remora control-plane`) over real gRPC on
//! 127.0.0.1:0: SotW wildcard and named subscriptions get the fixtures, ACKs
//! and NACKs are recorded with their error detail, a changed file reaches an
//! open stream as a new version, Delta sends only what changed and removals
//! as `removed_resources`; and remora's own ADS client accepts the sidecar
//! fixture and NACKs every invalid fixture with the text the file expects.

mod common;

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use common::*;
use envoy_types::pb::{
    envoy::{
        config::{
            cluster::v3::Cluster, core::v3::Node, endpoint::v3::ClusterLoadAssignment, listener::v3::Listener,
            route::v3::RouteConfiguration,
        },
        service::discovery::v3::{
            aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest,
            DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
        },
    },
    google::rpc::Status as RpcStatus,
};
use prost::Message as _;
use remora::controlplane::{AckRecord, ControlPlane, Protocol, Resource};
use tokio::sync::{mpsc, oneshot};
use tonic::Streaming;

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const NODE: &str = "sidecar~10.0.0.7~productpage-v1.default~default.svc.cluster.local";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("xds-fixtures").join(name)
}

/// A scratch directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    /// A copy of a fixture directory's files.
    fn copy_of(fixture_name: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "remora-controlplane-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        for entry in std::fs::read_dir(fixture(fixture_name)).expect("fixture dir") {
            let path = entry.expect("entry").path();
            std::fs::copy(&path, dir.join(path.file_name().expect("name"))).expect("copy");
        }
        TempDir(dir)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }

    /// Replaces a file the way editors do (write aside, rename), so the
    /// control plane never reads half a file.
    fn write(&self, file: &str, text: &str) {
        let aside = self.0.join(format!(".{file}.tmp"));
        std::fs::write(&aside, text).expect("write");
        std::fs::rename(&aside, self.path(file)).expect("rename");
    }

    fn edit(&self, file: &str, edit: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(self.path(file)).expect("read");
        self.write(file, &edit(text));
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A control plane serving on 127.0.0.1:0 until `stop`.
struct Served {
    addr: SocketAddr,
    cp: ControlPlane,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), remora::controlplane::ControlPlaneError>>,
}

async fn serve(cp: ControlPlane) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(cp.clone().serve(listener, async move {
        let _ = stopped.await;
    }));
    Served { addr, cp, stop, task }
}

impl Served {
    /// Stops the server; it must return even with streams open.
    async fn shutdown(self) {
        let _ = self.stop.send(());
        within("the control plane to stop", self.task)
            .await
            .expect("serve task")
            .expect("serve returns Ok");
    }

    async fn client(&self) -> AggregatedDiscoveryServiceClient<tonic::transport::Channel> {
        within(
            "connect",
            AggregatedDiscoveryServiceClient::connect(format!("http://{}", self.addr)),
        )
        .await
        .expect("connect")
    }

    /// Waits for a record matching `pred`.
    async fn record(&self, what: &str, pred: impl Fn(&AckRecord) -> bool) -> AckRecord {
        eventually(what, || {
            let found = self.cp.acks().into_iter().find(|r| pred(r));
            async move { found }
        })
        .await
    }
}

fn node() -> Option<Node> {
    Some(Node {
        id: NODE.into(),
        cluster: "productpage".into(),
        ..Default::default()
    })
}

fn nack_status(message: &str) -> Option<RpcStatus> {
    Some(RpcStatus {
        code: 3,
        message: message.into(),
        details: vec![],
    })
}

/// One SotW ADS stream as a client sees it.
struct Sotw {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
}

impl Sotw {
    async fn open(served: &Served) -> Sotw {
        let (tx, rx) = mpsc::channel(16);
        let stream = within(
            "open a SotW stream",
            served
                .client()
                .await
                .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
        .await
        .expect("stream")
        .into_inner();
        Sotw { tx, rx: stream }
    }

    async fn send(&self, type_url: &str, names: &[&str], answering: Option<&DiscoveryResponse>, error: Option<&str>) {
        let req = DiscoveryRequest {
            node: node(),
            type_url: type_url.into(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            version_info: answering.map(|r| r.version_info.clone()).unwrap_or_default(),
            response_nonce: answering.map(|r| r.nonce.clone()).unwrap_or_default(),
            error_detail: error.and_then(nack_status),
            ..Default::default()
        };
        self.tx.send(req).await.expect("request queue");
    }

    async fn next(&mut self) -> DiscoveryResponse {
        within("a SotW response", self.rx.message())
            .await
            .expect("stream ok")
            .expect("stream open")
    }

    /// Reads responses (ACKing each) until one satisfies `pred`.
    async fn until(&mut self, what: &str, pred: impl Fn(&DiscoveryResponse) -> bool) -> DiscoveryResponse {
        within(what, async {
            loop {
                let resp = self.rx.message().await.expect("stream ok").expect("stream open");
                if pred(&resp) {
                    return resp;
                }
                self.send(&resp.type_url.clone(), &[], Some(&resp), None).await;
            }
        })
        .await
    }
}

fn names_of<M: prost::Message + Default>(resp: &DiscoveryResponse, name: impl Fn(&M) -> String) -> BTreeSet<String> {
    resp.resources
        .iter()
        .map(|a| name(&M::decode(a.value.as_slice()).expect("decodes")))
        .collect()
}

fn cluster_names(resp: &DiscoveryResponse) -> BTreeSet<String> {
    names_of::<Cluster>(resp, |c| c.name.clone())
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

const SIDECAR_CLUSTERS: [&str; 3] = [
    "inbound|9080||",
    "outbound|9080||details.default.svc.cluster.local",
    "outbound|9080||reviews.default.svc.cluster.local",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_wildcard_serves_the_fixtures_and_records_ack_and_nack() {
    let served = serve(ControlPlane::from_dir(fixture("sidecar")).expect("loads")).await;
    let mut s = Sotw::open(&served).await;

    s.send(CDS, &[], None, None).await;
    let cds = s.next().await;
    assert_eq!(cds.type_url, CDS);
    assert_eq!(cds.version_info, "1");
    assert!(!cds.nonce.is_empty());
    assert_eq!(cluster_names(&cds), set(&SIDECAR_CLUSTERS));
    s.send(CDS, &[], Some(&cds), None).await;
    let ack = served.record("the CDS ACK", |r| r.type_url == CDS).await;
    assert_eq!(
        ack,
        AckRecord {
            node: NODE.into(),
            protocol: Protocol::Sotw,
            type_url: CDS.into(),
            version: "1".into(),
            nonce: cds.nonce.clone(),
            error: None,
        }
    );

    s.send(LDS, &["*"], None, None).await;
    let lds = s.next().await;
    assert_eq!(
        names_of::<Listener>(&lds, |l| l.name.clone()),
        set(&["virtualInbound", "virtualOutbound"])
    );
    s.send(
        LDS,
        &[],
        Some(&lds),
        Some("listener 'virtualInbound': something is wrong"),
    )
    .await;
    let nack = served.record("the LDS NACK", |r| r.type_url == LDS).await;
    assert!(nack.is_nack());
    assert_eq!(
        nack.error.as_deref(),
        Some("listener 'virtualInbound': something is wrong")
    );
    assert_eq!((nack.nonce.as_str(), nack.version.as_str()), (lds.nonce.as_str(), "1"));

    // A stale nonce is ignored: nothing recorded, nothing sent.
    s.send(CDS, &[], Some(&lds), None).await;
    // A request that is answered proves the stale one was handled first.
    s.send(EDS, &["nope"], None, None).await;
    let eds = s.next().await;
    assert_eq!((eds.type_url.as_str(), eds.resources.len()), (EDS, 0));
    assert_eq!(served.cp.acks().len(), 2, "{:?}", served.cp.acks());
    served.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_named_rds_and_eds_get_only_what_they_name() {
    let cp = ControlPlane::from_dir(fixture("canary")).expect("loads");
    let snap = cp.snapshot();
    assert!(snap.errors.is_empty(), "{:?}", snap.errors);
    assert_eq!(snap.len(), 6, "2 clusters, 2 endpoints, 1 route, 1 listener");
    let served = serve(cp).await;
    let mut s = Sotw::open(&served).await;
    let v2 = "outbound|9080|v2|reviews.default.svc.cluster.local";
    s.send(EDS, &[v2], None, None).await;
    let eds = s.next().await;
    assert_eq!(
        names_of::<ClusterLoadAssignment>(&eds, |c| c.cluster_name.clone()),
        set(&[v2])
    );
    s.send(RDS, &["9080"], None, None).await;
    let rds = s.next().await;
    let routes: Vec<RouteConfiguration> = rds
        .resources
        .iter()
        .map(|a| RouteConfiguration::decode(a.value.as_slice()).expect("decodes"))
        .collect();
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].name, "9080");
    assert_eq!(
        routes[0].virtual_hosts[0].routes.len(),
        2,
        "header route and the 80/20 split"
    );
    served.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_reaches_an_open_stream_as_a_new_version() {
    let dir = TempDir::copy_of("sidecar");
    let served = serve(ControlPlane::from_dir(&dir.0).expect("loads")).await;
    let mut s = Sotw::open(&served).await;
    s.send(CDS, &[], None, None).await;
    let first = s.next().await;
    s.send(CDS, &[], Some(&first), None).await;

    // details moves to another port: a new version with the new endpoint.
    dir.edit("clusters.yaml", |t| t.replace("port_value: 19083", "port_value: 29083"));
    let updated = s
        .until("the edited cluster", |r| r.version_info != first.version_info)
        .await;
    let details = updated
        .resources
        .iter()
        .map(|a| Cluster::decode(a.value.as_slice()).expect("decodes"))
        .find(|c| c.name.contains("details"))
        .expect("details is still served");
    let port = format!("{:?}", details.load_assignment);
    assert!(port.contains("29083"), "{port}");
    s.send(CDS, &[], Some(&updated), None).await;

    // A file that no longer decodes is left out; the others still serve.
    dir.write(
        "broken.yaml",
        "\"@type\": type.googleapis.com/envoy.config.cluster.v3.Cluster\nnme: x\n",
    );
    dir.write(
        "extra.json",
        r#"{"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "extra", "connect_timeout": "1s"}"#,
    );
    let with_extra = s
        .until("the added cluster", |r| cluster_names(r).contains("extra"))
        .await;
    assert_eq!(cluster_names(&with_extra).len(), 4);
    let errors = served.cp.snapshot().errors.join("\n");
    assert!(errors.contains("broken.yaml") && errors.contains("nme"), "{errors}");

    // The stream still works after all that, and a removed file is gone.
    s.send(CDS, &[], Some(&with_extra), None).await;
    std::fs::remove_file(dir.path("extra.json")).expect("remove");
    let without = s
        .until("the removed cluster", |r| !cluster_names(r).contains("extra"))
        .await;
    assert_eq!(cluster_names(&without), set(&SIDECAR_CLUSTERS));
    served.shutdown().await;
}

/// One Delta ADS stream as a client sees it.
struct Delta {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
}

impl Delta {
    async fn open(served: &Served, first: DeltaDiscoveryRequest) -> Delta {
        let (tx, rx) = mpsc::channel(16);
        tx.send(first).await.expect("queue");
        let stream = within(
            "open a Delta stream",
            served
                .client()
                .await
                .delta_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
        .await
        .expect("stream")
        .into_inner();
        Delta { tx, rx: stream }
    }

    async fn next(&mut self) -> DeltaDiscoveryResponse {
        within("a Delta response", self.rx.message())
            .await
            .expect("stream ok")
            .expect("stream open")
    }

    async fn answer(&self, resp: &DeltaDiscoveryResponse, error: Option<&str>) {
        let req = DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            error_detail: error.and_then(nack_status),
            ..Default::default()
        };
        self.tx.send(req).await.expect("queue");
    }
}

fn delta_request(type_url: &str, subscribe: &[&str]) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: node(),
        type_url: type_url.into(),
        resource_names_subscribe: subscribe.iter().map(|n| n.to_string()).collect(),
        ..Default::default()
    }
}

fn delta_names(resp: &DeltaDiscoveryResponse) -> BTreeSet<String> {
    resp.resources.iter().map(|r| r.name.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_sends_what_changed_and_removals() {
    let dir = TempDir::copy_of("sidecar");
    let served = serve(ControlPlane::from_dir(&dir.0).expect("loads")).await;
    let mut d = Delta::open(&served, delta_request(LDS, &[])).await;
    let lds = d.next().await;
    assert_eq!(delta_names(&lds), set(&["virtualInbound", "virtualOutbound"]));
    assert!(lds
        .resources
        .iter()
        .all(|r| !r.version.is_empty() && r.resource.is_some()));
    d.answer(&lds, None).await;
    let ack = served
        .record("the Delta LDS ACK", |r| r.protocol == Protocol::Delta)
        .await;
    assert_eq!((ack.node.as_str(), ack.type_url.as_str(), ack.error), (NODE, LDS, None));

    // Named CDS: only the one asked for.
    d.tx.send(delta_request(CDS, &["inbound|9080||"])).await.expect("queue");
    let cds = d.next().await;
    assert_eq!(delta_names(&cds), set(&["inbound|9080||"]));
    d.answer(&cds, Some("cluster 'inbound|9080||': rejected")).await;
    let nack = served.record("the Delta CDS NACK", |r| r.is_nack()).await;
    assert_eq!(nack.error.as_deref(), Some("cluster 'inbound|9080||': rejected"));

    // Removing the listeners' file removes both listeners, and only them.
    std::fs::remove_file(dir.path("listeners.yaml")).expect("remove");
    let removal = d.next().await;
    assert_eq!(removal.type_url, LDS);
    assert!(removal.resources.is_empty());
    assert_eq!(
        removal.removed_resources.iter().cloned().collect::<BTreeSet<_>>(),
        set(&["virtualInbound", "virtualOutbound"])
    );

    // A reconnecting client that holds the current versions gets nothing
    // again; one holding a stale version gets that resource.
    let snap = served.cp.snapshot();
    let held: Vec<Resource> = snap.resources(CDS).cloned().collect();
    let mut again = delta_request(CDS, &[]);
    again.initial_resource_versions = held
        .iter()
        .map(|r| {
            let version = if r.name.contains("details") {
                "stale".into()
            } else {
                r.version.clone()
            };
            (r.name.clone(), version)
        })
        .collect();
    let mut d2 = Delta::open(&served, again).await;
    let resumed = d2.next().await;
    assert_eq!(
        delta_names(&resumed),
        set(&["outbound|9080||details.default.svc.cluster.local"])
    );
    assert!(resumed.removed_resources.is_empty());
    served.shutdown().await;
}

/// remora itself, taking its config from `served` (state of the world).
async fn remora_client(served: &Served) -> (Arc<remora::proxy::Proxy>, tokio_util::sync::CancellationToken) {
    remora_client_with(served, "GRPC").await
}

async fn remora_client_with(
    served: &Served,
    api_type: &str,
) -> (Arc<remora::proxy::Proxy>, tokio_util::sync::CancellationToken) {
    let boot = remora::xds::parse_bootstrap("t.yaml", &ads_bootstrap(served.addr, api_type, NODE, "productpage"))
        .unwrap_or_else(|e| panic!("{e}"));
    let ads = remora::xds::ads::AdsConfig::from_bootstrap(&boot)
        .expect("ads config")
        .expect("dynamic resources");
    let proxy = Arc::new(remora::proxy::Proxy::start(boot).await.expect("proxy starts"));
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(remora::xds::ads::run(proxy.clone(), ads, stop.clone()));
    (proxy, stop)
}

/// The sidecar fixture with this test's ports: listeners on free ports,
/// endpoints on the given upstreams.
fn sidecar_dir(app: SocketAddr, reviews: SocketAddr) -> TempDir {
    let dir = TempDir::copy_of("sidecar");
    dir.edit("listeners.yaml", |t| {
        t.replace("port_value: 15006", "port_value: 0")
            .replace("port_value: 15001", "port_value: 0")
            .replace("address: 0.0.0.0", "address: 127.0.0.1")
    });
    dir.edit("clusters.yaml", |t| {
        t.replace("port_value: 9080", &format!("port_value: {}", app.port()))
            .replace("port_value: 19081", &format!("port_value: {}", reviews.port()))
            .replace("port_value: 19082", &format!("port_value: {}", reviews.port()))
    });
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remora_over_delta_takes_the_sidecar_and_follows_file_changes() {
    let reviews = upstream("reviews").await;
    let reviews2 = upstream("reviews2").await;
    let app = upstream("productpage").await;
    let dir = sidecar_dir(app.addr, reviews.addr);
    let served = serve(ControlPlane::from_dir(&dir.0).expect("loads")).await;
    let (proxy, stop) = remora_client_with(&served, "DELTA_GRPC").await;
    let cds = served.record("remora's delta CDS answer", |r| r.type_url == CDS).await;
    assert_eq!((cds.protocol, cds.error.as_deref()), (Protocol::Delta, None));
    let lds = served.record("remora's delta LDS answer", |r| r.type_url == LDS).await;
    assert_eq!(lds.error, None);
    let outbound = eventually("the outbound listener", || {
        let addr = proxy.listener("virtualOutbound");
        async move { addr }
    })
    .await;
    let mut c = H1::connect(outbound).await;
    assert_eq!(c.get("reviews:9080", "/").await.json()["upstream"], "reviews");
    // The reviews endpoints move: the control plane pushes only what changed.
    dir.edit("clusters.yaml", |t| {
        t.replace(
            &format!("port_value: {}", reviews.addr.port()),
            &format!("port_value: {}", reviews2.addr.port()),
        )
    });
    eventually("traffic follows the delta update", || {
        let addr = outbound;
        async move {
            let up = H1::connect(addr).await.get("reviews:9080", "/").await.json()["upstream"].clone();
            (up == "reviews2").then_some(())
        }
    })
    .await;
    let acks = served.cp.acks();
    assert!(
        acks.iter().all(|r| r.protocol == Protocol::Delta && !r.is_nack()),
        "{acks:?}"
    );
    stop.cancel();
    served.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remora_accepts_the_sidecar_fixture_and_serves_with_it() {
    let reviews = upstream("reviews").await;
    let app = upstream("productpage").await;
    let dir = TempDir::copy_of("sidecar");
    // Ports of this test: listeners on any free port, endpoints on the upstreams.
    dir.edit("listeners.yaml", |t| {
        t.replace("port_value: 15006", "port_value: 0")
            .replace("port_value: 15001", "port_value: 0")
            .replace("address: 0.0.0.0", "address: 127.0.0.1")
    });
    dir.edit("clusters.yaml", |t| {
        t.replace("port_value: 9080", &format!("port_value: {}", app.addr.port()))
            .replace("port_value: 19081", &format!("port_value: {}", reviews.addr.port()))
            .replace("port_value: 19082", &format!("port_value: {}", reviews.addr.port()))
    });
    let served = serve(ControlPlane::from_dir(&dir.0).expect("loads")).await;
    let (proxy, stop) = remora_client(&served).await;

    let cds = served.record("remora's CDS answer", |r| r.type_url == CDS).await;
    assert_eq!((cds.node.as_str(), cds.error.as_deref()), (NODE, None));
    let lds = served.record("remora's LDS answer", |r| r.type_url == LDS).await;
    assert_eq!(lds.error, None, "the sidecar fixture is in remora's supported subset");

    let outbound = eventually("the outbound listener", || {
        let addr = proxy.listener("virtualOutbound");
        async move { addr }
    })
    .await;
    let mut c = H1::connect(outbound).await;
    assert_eq!(c.get("reviews:9080", "/").await.json()["upstream"], "reviews");
    assert_eq!(
        c.get("unknown.example", "/").await.status,
        502,
        "REGISTRY_ONLY's block_all"
    );
    let inbound = proxy.listener("virtualInbound").expect("inbound listener");
    assert_eq!(
        H1::connect(inbound).await.get("productpage", "/").await.json()["upstream"],
        "productpage"
    );
    stop.cancel();
    served.shutdown().await;
}

/// `# expect-nack: TEXT` / `# expect-left-out: TEXT` lines of the invalid fixtures.
fn expectations(kind: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(fixture("invalid")).expect("invalid fixtures") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read");
        let prefix = format!("# {kind}: ");
        for line in text.lines().filter_map(|l| l.strip_prefix(prefix.as_str())) {
            out.push((path.display().to_string(), line.to_string()));
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remora_nacks_every_invalid_fixture_with_the_expected_text() {
    let nacks = expectations("expect-nack");
    let left_out = expectations("expect-left-out");
    assert!(nacks.len() >= 5 && !left_out.is_empty(), "{nacks:?} {left_out:?}");

    let cp = ControlPlane::from_dir(fixture("invalid")).expect("loads");
    let errors = cp.snapshot().errors.join("\n");
    for (file, text) in &left_out {
        assert!(
            errors.contains(text.as_str()),
            "{file}: expected '{text}' among:\n{errors}"
        );
    }
    assert_eq!(cp.snapshot().errors.len(), left_out.len(), "{errors}");

    let served = serve(cp).await;
    let (_proxy, stop) = remora_client(&served).await;
    served
        .record("remora's CDS NACK", |r| r.type_url == CDS && r.is_nack())
        .await;
    served
        .record("remora's LDS NACK", |r| r.type_url == LDS && r.is_nack())
        .await;
    let details: Vec<String> = served.cp.acks().into_iter().filter_map(|r| r.error).collect();
    let details = details.join("\n");
    for (file, text) in &nacks {
        assert!(
            details.contains(text.as_str()),
            "{file}: expected '{text}' in the NACKs:\n{details}"
        );
    }
    stop.cancel();
    served.shutdown().await;
}

/// The control plane dies and comes back on the same address with a changed
/// config: remora keeps serving the last good config while it is gone
/// (Envoy keeps its config indefinitely), reconnects with backoff,
/// resubscribes, and converges on the new version.
async fn survives_a_control_plane_restart(api_type: &str, protocol: Protocol) {
    let reviews = upstream("reviews").await;
    let reviews2 = upstream("reviews2").await;
    let app = upstream("productpage").await;
    let dir = sidecar_dir(app.addr, reviews.addr);
    let served = serve(ControlPlane::from_dir(&dir.0).expect("loads")).await;
    let addr = served.addr;
    let (proxy, stop) = remora_client_with(&served, api_type).await;
    let outbound = eventually("the outbound listener", || {
        let addr = proxy.listener("virtualOutbound");
        async move { addr }
    })
    .await;
    served
        .record("remora's LDS ACK", |r| r.type_url == LDS && !r.is_nack())
        .await;

    // Killed: every stream breaks.
    served.shutdown().await;
    eventually("remora to see the stream gone", || {
        let connected = proxy.state.xds.lock().map(|x| x.connected).unwrap_or(true);
        async move { (!connected).then_some(()) }
    })
    .await;
    // While it is down, traffic keeps flowing on the last good config.
    let mut c = H1::connect(outbound).await;
    for _ in 0..20 {
        assert_eq!(c.get("reviews:9080", "/").await.json()["upstream"], "reviews");
    }

    // It comes back on the same address, with the reviews endpoint moved.
    dir.edit("clusters.yaml", |t| {
        t.replace(
            &format!("port_value: {}", reviews.addr.port()),
            &format!("port_value: {}", reviews2.addr.port()),
        )
    });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("rebind the old address");
    let cp = ControlPlane::from_dir(&dir.0).expect("loads");
    let (stop_cp, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(cp.clone().serve(listener, async move {
        let _ = stopped.await;
    }));
    let restarted = Served {
        addr,
        cp,
        stop: stop_cp,
        task,
    };
    let cds = restarted
        .record("remora's CDS answer after reconnecting", |r| r.type_url == CDS)
        .await;
    assert_eq!((cds.protocol, cds.error.as_deref()), (protocol, None));
    eventually("traffic on the restarted control plane's config", || {
        let addr = outbound;
        async move {
            let up = H1::connect(addr).await.get("reviews:9080", "/").await.json()["upstream"].clone();
            (up == "reviews2").then_some(())
        }
    })
    .await;
    assert!(proxy.state.xds.lock().map(|x| x.connected).unwrap_or(false));
    stop.cancel();
    restarted.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_client_survives_a_control_plane_restart() {
    survives_a_control_plane_restart("GRPC", Protocol::Sotw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_client_survives_a_control_plane_restart() {
    survives_a_control_plane_restart("DELTA_GRPC", Protocol::Delta).await;
}

/// The push API (proto/remora/controlplane/v1): a snapshot pushed over gRPC
/// reaches an open ADS stream as a new version; a document that cannot be
/// read fails the call with INVALID_ARGUMENT naming it and changes nothing;
/// ACKs are listed with their node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_push_api_replaces_the_snapshot_and_lists_acks() {
    use remora::controlplane::push::{api, SnapshotServiceClient};
    let served = serve(ControlPlane::new()).await;
    let mut push = within(
        "connect the push client",
        SnapshotServiceClient::connect(format!("http://{}", served.addr)),
    )
    .await
    .expect("connect");
    let mut ads = served.client().await;
    let (tx, rx) = mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: node(),
        type_url: CDS.into(),
        ..Default::default()
    })
    .await
    .expect("send");
    let mut responses: Streaming<DiscoveryResponse> = ads
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();

    let doc = "'@type': type.googleapis.com/envoy.config.cluster.v3.Cluster\nname: pushed\nconnect_timeout: 1s\n";
    let encoded = Cluster {
        name: "encoded".into(),
        ..Default::default()
    };
    let reply = push
        .set_snapshot(api::SetSnapshotRequest {
            documents: vec![doc.into()],
            resources: vec![api::Resource {
                type_url: CDS.into(),
                name: "encoded".into(),
                value: encoded.encode_to_vec(),
            }],
        })
        .await
        .expect("push accepted")
        .into_inner();
    assert_eq!(reply.resources, 2);
    let resp = within("the pushed version on the stream", async {
        loop {
            let r = responses.message().await.expect("stream ok").expect("stream open");
            if r.version_info == reply.version {
                break r;
            }
        }
    })
    .await;
    assert_eq!(cluster_names(&resp), set(&["encoded", "pushed"]));
    tx.send(DiscoveryRequest {
        node: node(),
        type_url: CDS.into(),
        version_info: resp.version_info.clone(),
        response_nonce: resp.nonce.clone(),
        ..Default::default()
    })
    .await
    .expect("ack");

    let bad = push
        .set_snapshot(api::SetSnapshotRequest {
            documents: vec![
                "'@type': type.googleapis.com/envoy.config.cluster.v3.Cluster\nname: x\nconnect_timeout: soon\n".into(),
            ],
            resources: vec![],
        })
        .await
        .expect_err("an unreadable document is refused");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("documents[0]"), "{}", bad.message());
    assert!(bad.message().contains("connect_timeout"), "{}", bad.message());
    assert_eq!(served.cp.snapshot().version, reply.version, "nothing changed");

    let acks = eventually("the ACK listed", || {
        let mut push = push.clone();
        let version = reply.version.clone();
        async move {
            let records = push.list_acks(api::ListAcksRequest {}).await.ok()?.into_inner().records;
            records.into_iter().find(|r| r.version == version && !r.nack)
        }
    })
    .await;
    assert_eq!((acks.node.as_str(), acks.protocol.as_str()), (NODE, "sotw"));
    drop(tx);
    served.shutdown().await;
}

/// The canary fixture as Istio generates it for a DestinationRule with
/// subsets (LEAST_REQUEST, outlier detection, circuit breakers on both EDS
/// clusters): remora ACKs every resource, as Envoy 1.40 does, pins
/// `x-canary: true` to v2 and splits the rest 80/20 by `weighted_clusters`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remora_takes_the_canary_subsets_and_splits_80_20() {
    let v1 = upstream("v1").await;
    let v2 = upstream("v2").await;
    let dir = TempDir::copy_of("canary");
    dir.edit("listener.yaml", |t| {
        t.replace("port_value: 9080", "port_value: 0")
            .replace("address: 0.0.0.0", "address: 127.0.0.1")
    });
    dir.edit("endpoints.yaml", |t| {
        t.replace("port_value: 19081", &format!("port_value: {}", v1.addr.port()))
            .replace("port_value: 19082", &format!("port_value: {}", v2.addr.port()))
    });
    let served = serve(ControlPlane::from_dir(&dir.0).expect("loads")).await;
    let (proxy, stop) = remora_client_with(&served, "GRPC").await;
    for (what, type_url) in [("CDS", CDS), ("EDS", EDS), ("LDS", LDS), ("RDS", RDS)] {
        let answer = served
            .record(&format!("remora's {what} answer"), |r| r.type_url == type_url)
            .await;
        assert_eq!(answer.error, None, "{what} NACKed");
    }
    let listener = eventually("the 9080 listener", || {
        let addr = proxy.listener("0.0.0.0_9080");
        async move { addr }
    })
    .await;
    let mut c = eventually("a routed request", || async move {
        let mut c = H1::connect(listener).await;
        (c.get("reviews:9080", "/").await.status == 200).then_some(c)
    })
    .await;
    let mut canary = get("reviews:9080", "/");
    canary.headers_mut().insert("x-canary", "true".parse().expect("value"));
    assert_eq!(c.send(canary).await.json()["upstream"], "v2");
    let mut to_v2 = 0;
    for _ in 0..500 {
        if c.get("reviews:9080", "/").await.json()["upstream"] == "v2" {
            to_v2 += 1;
        }
    }
    // 20% of 500 is 100, standard deviation about 9: 60..=140 is over 4 sigma.
    assert!(
        (60..=140).contains(&to_v2),
        "{to_v2} of 500 went to v2, expected about 100"
    );
    // /clusters tells CDS clusters from the bootstrap's, as Envoy's added_via_api.
    let admin = proxy.admin.expect("admin");
    let clusters = H1::connect(admin).await.get("admin", "/clusters").await.text();
    for line in [
        "outbound|9080|v1|reviews.default.svc.cluster.local::added_via_api::true",
        "xds::added_via_api::false",
    ] {
        assert!(clusters.contains(line), "missing {line}:\n{clusters}");
    }
    stop.cancel();
    served.shutdown().await;
}
