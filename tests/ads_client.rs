//! The ADS client against a scripted in-process xDS server over real gRPC:
//! initial config served and ACKed, updates applied live, an invalid update
//! NACKed with the resource and field while the last good config keeps
//! serving, and a broken stream reconnected and resubscribed with the
//! versions it held.

mod common;

use std::{pin::Pin, sync::Arc};

use common::*;
use envoy_types::pb::{
    envoy::service::discovery::v3::{
        aggregated_discovery_service_server::{AggregatedDiscoveryService, AggregatedDiscoveryServiceServer},
        DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    },
    google::protobuf::Any,
};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};
use tonic::{Status, Streaming};

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";

/// One ADS stream as the test sees it: requests in, responses out.
struct Conn {
    requests: mpsc::Receiver<DiscoveryRequest>,
    responses: mpsc::Sender<Result<DiscoveryResponse, Status>>,
}

impl Conn {
    async fn next_request(&mut self) -> DiscoveryRequest {
        within("an xDS request", self.requests.recv())
            .await
            .expect("stream open")
    }

    /// Sends a response and returns the client's answer to it.
    async fn push(&mut self, type_url: &str, version: &str, nonce: &str, resources: Vec<Any>) -> DiscoveryRequest {
        let resp = DiscoveryResponse {
            version_info: version.into(),
            resources,
            type_url: type_url.into(),
            nonce: nonce.into(),
            ..Default::default()
        };
        self.responses.send(Ok(resp)).await.expect("send response");
        let answer = self.next_request().await;
        assert_eq!(answer.type_url, type_url);
        assert_eq!(answer.response_nonce, nonce, "the answer echoes the nonce");
        answer
    }
}

struct Scripted {
    conns: mpsc::Sender<Conn>,
}

type RespStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Scripted {
    type StreamAggregatedResourcesStream = RespStream;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        req: tonic::Request<Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<RespStream>, Status> {
        let mut input = req.into_inner();
        let (req_tx, req_rx) = mpsc::channel(16);
        let (resp_tx, resp_rx) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Some(Ok(r)) = input.next().await {
                if req_tx.send(r).await.is_err() {
                    return;
                }
            }
        });
        let _ = self
            .conns
            .send(Conn {
                requests: req_rx,
                responses: resp_tx,
            })
            .await;
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(resp_rx),
        )))
    }

    async fn delta_aggregated_resources(
        &self,
        _req: tonic::Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<DeltaStream>, Status> {
        Err(Status::unimplemented("delta is not scripted"))
    }
}

async fn xds_server() -> (std::net::SocketAddr, mpsc::Receiver<Conn>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(Scripted { conns: tx }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    (addr, rx)
}

/// A resource from Envoy YAML, packed as xDS sends it.
fn resource(message: &str, yaml: &str) -> Any {
    let value: serde_json::Value = serde_yaml::from_str(yaml).unwrap();
    let pool = remora::xds::decode::ApiPool::load().unwrap();
    let msg = pool.decode_value(message, value).unwrap_or_else(|e| panic!("{e}"));
    Any {
        type_url: format!("type.googleapis.com/{message}"),
        value: msg.encode_to_vec(),
    }
}

fn cluster_res(name: &str, addr: std::net::SocketAddr) -> Any {
    resource(
        "envoy.config.cluster.v3.Cluster",
        &format!(
            "name: {name}\ntype: STATIC\nconnect_timeout: 1s\nload_assignment:\n  cluster_name: {name}\n  endpoints:\n  - lb_endpoints:\n    - endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}",
            addr.ip(),
            addr.port()
        ),
    )
}

fn listener_res(cluster_name: &str, regex: &str) -> Any {
    resource(
        "envoy.config.listener.v3.Listener",
        &format!(
            r#"name: http
address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
filter_chains:
- filters:
  - name: hcm
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: ingress
      route_config:
        virtual_hosts:
        - name: all
          domains: ["*"]
          routes:
          - match: {{ safe_regex: {{ regex: "{regex}" }} }}
            route: {{ cluster: {cluster_name} }}
      http_filters:
      - name: router
        typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}"#
        ),
    )
}

fn bootstrap(xds: std::net::SocketAddr) -> String {
    ads_bootstrap(xds, "GRPC", "sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local", "reviews")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ads_sotw_serves_updates_nacks_bad_ones_and_resubscribes() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let (xds, mut conns) = xds_server().await;
    let boot = remora::xds::parse_bootstrap("t.yaml", &bootstrap(xds)).unwrap_or_else(|e| panic!("{e}"));
    let ads = remora::xds::ads::AdsConfig::from_bootstrap(&boot)
        .unwrap()
        .expect("dynamic");
    let proxy = Arc::new(remora::proxy::Proxy::start(boot).await.unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(remora::xds::ads::run(proxy.clone(), ads, stop.clone()));
    let mut admin = H1::connect(proxy.admin.unwrap()).await;
    // Not ready until the initial config arrives (Envoy: /ready is 503 while initializing).
    assert_eq!(admin.get("a", "/ready").await.status, 503);

    let mut conn = within("first stream", conns.recv()).await.unwrap();
    let cds = conn.next_request().await;
    assert_eq!(cds.type_url, CDS, "clusters are subscribed first");
    assert!(cds.resource_names.is_empty(), "CDS is a wildcard subscription");
    assert_eq!(
        cds.node.as_ref().map(|n| n.id.as_str()),
        Some("sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local")
    );
    let lds = conn.next_request().await;
    assert_eq!(lds.type_url, LDS);

    let ack = conn
        .push(
            CDS,
            "c1",
            "n1",
            vec![cluster_res("a", a.addr), cluster_res("b", b.addr)],
        )
        .await;
    assert_eq!(ack.version_info, "c1");
    assert!(ack.error_detail.is_none());
    let ack = conn.push(LDS, "l1", "n2", vec![listener_res("a", "/.*")]).await;
    assert_eq!(ack.version_info, "l1");
    assert!(ack.error_detail.is_none());
    eventually("ready after the initial config", || {
        let admin_addr = proxy.admin.unwrap();
        async move { (H1::connect(admin_addr).await.get("a", "/ready").await.status == 200).then_some(()) }
    })
    .await;
    let addr = proxy.listener("http").expect("listener from LDS");
    let mut c = H1::connect(addr).await;
    assert_eq!(c.get("x", "/").await.json()["upstream"], "a");

    // An update moves traffic to b on the same socket and connection.
    let ack = conn.push(LDS, "l2", "n3", vec![listener_res("b", "/.*")]).await;
    assert_eq!(ack.version_info, "l2");
    assert_eq!(c.get("x", "/").await.json()["upstream"], "b");
    assert_eq!(proxy.listener("http"), Some(addr));

    // An invalid update is NACKed with the resource and field; b keeps serving.
    let nack = conn.push(LDS, "l3", "n4", vec![listener_res("a", "(")]).await;
    assert_eq!(nack.version_info, "l2", "a NACK carries the last accepted version");
    let detail = nack.error_detail.expect("error_detail").message;
    assert!(detail.contains("Listener 'http'"), "{detail}");
    assert!(detail.contains("match.safe_regex.regex: invalid regex"), "{detail}");
    assert_eq!(c.get("x", "/").await.json()["upstream"], "b");

    // The admin endpoints say what is in force and what was rejected, and why.
    let dump = admin.get("a", "/config_dump").await.json();
    let lds_status = &dump["configs"][1]["xds"]["types"][LDS];
    assert_eq!(lds_status["version"], "l2");
    let http = &lds_status["resources"]["http"];
    assert_eq!(http["version"], "l2");
    assert_eq!(http["error_state"]["version"], "l3");
    assert!(
        http["error_state"]["details"]
            .as_str()
            .unwrap()
            .contains("invalid regex"),
        "{http}"
    );
    let stats = admin.get("a", "/stats/prometheus").await.text();
    assert!(stats.contains("envoy_control_plane_connected_state 1"), "{stats}");
    assert!(
        stats.contains("envoy_xds_update_rejected{envoy_xds_type=\"Listener\"} 1"),
        "{stats}"
    );
    assert!(
        stats.contains("envoy_xds_update_success{envoy_xds_type=\"Listener\"} 2"),
        "{stats}"
    );

    // A cluster removed from the state of the world is gone.
    let ack = conn.push(CDS, "c2", "n5", vec![cluster_res("b", b.addr)]).await;
    assert!(ack.error_detail.is_none());

    // The control plane drops the stream: the client reconnects and resumes
    // with the versions it holds, still serving meanwhile.
    conn.responses
        .send(Err(Status::unavailable("restarting")))
        .await
        .unwrap();
    drop(conn);
    assert_eq!(c.get("x", "/").await.json()["upstream"], "b");
    let mut conn = within("reconnect", conns.recv()).await.unwrap();
    let cds = conn.next_request().await;
    assert_eq!((cds.type_url.as_str(), cds.version_info.as_str()), (CDS, "c2"));
    let lds = conn.next_request().await;
    assert_eq!((lds.type_url.as_str(), lds.version_info.as_str()), (LDS, "l2"));
    stop.cancel();
}

fn eds_cluster_res(name: &str) -> Any {
    resource(
        "envoy.config.cluster.v3.Cluster",
        &format!(
            "name: {name}\ntype: EDS\nconnect_timeout: 1s\neds_cluster_config:\n  service_name: {name}-svc\n  eds_config: {{ ads: {{}}, resource_api_version: V3 }}"
        ),
    )
}

fn assignment_res(service: &str, addrs: &[std::net::SocketAddr]) -> Any {
    let eps: String = addrs
        .iter()
        .map(|a| {
            format!(
                "\n    - endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}",
                a.ip(),
                a.port()
            )
        })
        .collect();
    resource(
        "envoy.config.endpoint.v3.ClusterLoadAssignment",
        &format!("cluster_name: {service}\nendpoints:\n- lb_endpoints:{eps}"),
    )
}

fn rds_listener_res(route_name: &str) -> Any {
    resource(
        "envoy.config.listener.v3.Listener",
        &format!(
            r#"name: http
address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
filter_chains:
- filters:
  - name: hcm
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: ingress
      rds: {{ route_config_name: {route_name}, config_source: {{ ads: {{}}, resource_api_version: V3 }} }}
      http_filters:
      - name: router
        typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}"#
        ),
    )
}

fn route_res(name: &str, cluster_name: &str) -> Any {
    resource(
        "envoy.config.route.v3.RouteConfiguration",
        &format!(
            "name: {name}\nvirtual_hosts:\n- name: all\n  domains: [\"*\"]\n  routes:\n  - match: {{ prefix: / }}\n    route: {{ cluster: {cluster_name} }}"
        ),
    )
}

const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ads_follows_rds_and_eds_references_and_warms_before_serving() {
    let a1 = upstream("a1").await;
    let a2 = upstream("a2").await;
    let (xds, mut conns) = xds_server().await;
    let boot = remora::xds::parse_bootstrap("t.yaml", &bootstrap(xds)).unwrap_or_else(|e| panic!("{e}"));
    let ads = remora::xds::ads::AdsConfig::from_bootstrap(&boot)
        .unwrap()
        .expect("dynamic");
    let proxy = Arc::new(remora::proxy::Proxy::start(boot).await.unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(remora::xds::ads::run(proxy.clone(), ads, stop.clone()));
    let mut conn = within("stream", conns.recv()).await.unwrap();
    assert_eq!(conn.next_request().await.type_url, CDS);
    assert_eq!(conn.next_request().await.type_url, LDS);

    // CDS brings an EDS cluster: the client subscribes to its assignment.
    let ack = conn.push(CDS, "c1", "n1", vec![eds_cluster_res("a")]).await;
    assert!(ack.error_detail.is_none(), "{:?}", ack.error_detail);
    let eds = conn.next_request().await;
    assert_eq!(eds.type_url, EDS);
    assert_eq!(eds.resource_names, vec!["a-svc".to_string()]);

    // LDS brings a listener that uses RDS: subscribed by name, not served yet (warming).
    let ack = conn.push(LDS, "l1", "n2", vec![rds_listener_res("main")]).await;
    assert!(ack.error_detail.is_none(), "{:?}", ack.error_detail);
    let rds = conn.next_request().await;
    assert_eq!(rds.type_url, RDS);
    assert_eq!(rds.resource_names, vec!["main".to_string()]);
    assert_eq!(
        proxy.listener("http"),
        None,
        "a listener is not served before its routes arrive"
    );
    assert_eq!(
        H1::connect(proxy.admin.unwrap()).await.get("a", "/ready").await.status,
        503
    );

    let ack = conn.push(RDS, "r1", "n3", vec![route_res("main", "a")]).await;
    assert!(ack.error_detail.is_none(), "{:?}", ack.error_detail);
    let addr = proxy.listener("http").expect("served once its routes arrived");
    // Endpoints have not arrived: the EDS cluster has none (503 UH).
    let mut c = H1::connect(addr).await;
    assert_eq!(c.get("x", "/").await.status, 503);

    let ack = conn
        .push(EDS, "e1", "n4", vec![assignment_res("a-svc", &[a1.addr])])
        .await;
    assert!(ack.error_detail.is_none(), "{:?}", ack.error_detail);
    assert_eq!(c.get("x", "/").await.json()["upstream"], "a1");
    eventually("ready once warm", || {
        let admin_addr = proxy.admin.unwrap();
        async move { (H1::connect(admin_addr).await.get("a", "/ready").await.status == 200).then_some(()) }
    })
    .await;

    // An EDS-only update adds an endpoint; a1's pooled connection is kept.
    let ack = conn
        .push(EDS, "e2", "n5", vec![assignment_res("a-svc", &[a1.addr, a2.addr])])
        .await;
    assert!(ack.error_detail.is_none());
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10 {
        seen.insert(c.get("x", "/").await.json()["upstream"].as_str().unwrap().to_string());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        a1.accepts.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "a1's connection survived the EDS update"
    );

    // An invalid route update is NACKed; the old routes keep serving.
    let bad = resource(
        "envoy.config.route.v3.RouteConfiguration",
        "name: main\nvirtual_hosts:\n- name: all\n  domains: [\"*\"]\n  routes:\n  - match: { prefix: / }\n    route: { cluster: a, retry_policy: { retry_on: \"5xx,sometimes\" } }",
    );
    let nack = conn.push(RDS, "r2", "n6", vec![bad]).await;
    assert_eq!(nack.version_info, "r1");
    let detail = nack.error_detail.expect("NACK").message;
    assert!(detail.contains("RouteConfiguration 'main'"), "{detail}");
    assert!(detail.contains("retry_policy"), "{detail}");
    assert_eq!(c.get("x", "/").await.status, 200);

    // After a reconnect, the RDS and EDS names held are subscribed again,
    // with the versions held, and traffic never stopped.
    conn.responses
        .send(Err(Status::unavailable("restarting")))
        .await
        .unwrap();
    drop(conn);
    let mut conn = within("reconnect", conns.recv()).await.unwrap();
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..4 {
        let r = conn.next_request().await;
        seen.insert(r.type_url.clone(), (r.version_info.clone(), r.resource_names.clone()));
    }
    assert_eq!(seen[CDS].0, "c1");
    assert_eq!(seen[LDS].0, "l1");
    assert_eq!(seen[EDS], ("e2".to_string(), vec!["a-svc".to_string()]));
    assert_eq!(seen[RDS], ("r1".to_string(), vec!["main".to_string()]));
    assert_eq!(c.get("x", "/").await.status, 200);
    stop.cancel();
}
