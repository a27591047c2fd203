//! HTTP/2 both sides and gRPC end to end: h2c downstream, h2 upstream
//! clusters with multiplexing, gRPC unary and bidirectional streaming with
//! trailers and grpc-status passed through intact.

mod common;

use std::{pin::Pin, sync::atomic::Ordering, time::Duration};

use bytes::Bytes;
use common::*;
use envoy_types::pb::envoy::service::{
    discovery::v3::{
        aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
        aggregated_discovery_service_server::{AggregatedDiscoveryService, AggregatedDiscoveryServiceServer},
        DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    },
    ratelimit::v3::{
        rate_limit_service_client::RateLimitServiceClient,
        rate_limit_service_server::{RateLimitService, RateLimitServiceServer},
        RateLimitRequest, RateLimitResponse,
    },
};
use http::Request;
use http_body_util::Full;
use tokio_stream::{Stream, StreamExt};
use tonic::{Status, Streaming};

/// Unary test service: answers OK for domain "ok", an error status otherwise.
struct Limits;

#[tonic::async_trait]
impl RateLimitService for Limits {
    async fn should_rate_limit(
        &self,
        req: tonic::Request<RateLimitRequest>,
    ) -> Result<tonic::Response<RateLimitResponse>, Status> {
        let domain = req.into_inner().domain;
        if domain == "ok" {
            let mut resp = tonic::Response::new(RateLimitResponse {
                overall_code: 1,
                ..Default::default()
            });
            resp.metadata_mut().insert("x-served-by", "limits".parse().unwrap());
            Ok(resp)
        } else {
            Err(Status::permission_denied(format!("domain {domain} is not allowed")))
        }
    }
}

/// Bidirectional streaming test service: echoes each request's version as a
/// response; a request with type_url "fail" ends the stream with an error.
struct Echo;

type RespStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Echo {
    type StreamAggregatedResourcesStream = RespStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = RespStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        req: tonic::Request<Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::StreamAggregatedResourcesStream>, Status> {
        let mut input = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            while let Some(Ok(msg)) = input.next().await {
                if msg.type_url == "fail" {
                    let _ = tx
                        .send(Err(Status::resource_exhausted("stream failed on purpose")))
                        .await;
                    return;
                }
                let resp = DiscoveryResponse {
                    version_info: msg.version_info,
                    ..Default::default()
                };
                if tx.send(Ok(resp)).await.is_err() {
                    return;
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn delta_aggregated_resources(
        &self,
        _req: tonic::Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

async fn grpc_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(RateLimitServiceServer::new(Limits))
            .add_service(AggregatedDiscoveryServiceServer::new(Echo))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    addr
}

fn routes_to(cluster: &str) -> String {
    format!(
        r#"route_config:
  virtual_hosts:
  - name: all
    domains: ["*"]
    routes:
    - match: {{ prefix: / }}
      route: {{ cluster: {cluster}, timeout: 0s }}"#
    )
}

async fn grpc_proxy() -> (remora::proxy::Proxy, std::net::SocketAddr) {
    let up = grpc_upstream().await;
    let p = proxy(&http_bootstrap(&routes_to("grpc"), &cluster("grpc", &[up], true, ""))).await;
    let addr = p.listener("http").unwrap();
    (p, addr)
}

async fn channel(addr: std::net::SocketAddr) -> tonic::transport::Channel {
    within(
        "grpc connect",
        tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect(),
    )
    .await
    .expect("channel")
}

#[tokio::test]
async fn grpc_unary_passes_status_and_metadata() {
    let (_p, addr) = grpc_proxy().await;
    let mut client = RateLimitServiceClient::new(channel(addr).await);
    let ok = within(
        "unary ok",
        client.should_rate_limit(RateLimitRequest {
            domain: "ok".into(),
            ..Default::default()
        }),
    )
    .await
    .expect("ok response");
    assert_eq!(ok.metadata().get("x-served-by").unwrap(), "limits");
    assert_eq!(ok.into_inner().overall_code, 1);

    let err = within(
        "unary err",
        client.should_rate_limit(RateLimitRequest {
            domain: "no".into(),
            ..Default::default()
        }),
    )
    .await
    .expect_err("error status");
    // grpc-status and grpc-message come through the trailers untouched.
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert_eq!(err.message(), "domain no is not allowed");
}

#[tokio::test]
async fn grpc_bidirectional_streaming_both_ways() {
    let (_p, addr) = grpc_proxy().await;
    let mut client = AggregatedDiscoveryServiceClient::new(channel(addr).await);
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut responses = within(
        "stream open",
        client.stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    .expect("stream")
    .into_inner();
    // Interleave: each request gets its response before the next is sent.
    for i in 0..5 {
        tx.send(DiscoveryRequest {
            version_info: format!("v{i}"),
            ..Default::default()
        })
        .await
        .unwrap();
        let resp = within("stream response", responses.next())
            .await
            .expect("a response")
            .expect("ok");
        assert_eq!(resp.version_info, format!("v{i}"));
    }
    tx.send(DiscoveryRequest {
        type_url: "fail".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let end = within("stream end", responses.next()).await.expect("status");
    let status = end.expect_err("error status at the end");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(status.message(), "stream failed on purpose");
}

#[tokio::test]
async fn h2c_downstream_to_http1_upstream() {
    let up = upstream("h1").await;
    let p = proxy(&http_bootstrap(&routes_to("h1"), &cluster("h1", &[up.addr], false, ""))).await;
    let mut h2 = h2_client(p.listener("http").unwrap()).await;
    let req = Request::get("http://svc.local/path?q=1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = within("h2 request", h2.send_request(req)).await.expect("response");
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let r = Reply::read(resp).await;
    assert_eq!(r.status, 200);
    let json = r.json();
    assert_eq!(json["version"], "HTTP/1.1");
    assert_eq!(json["uri"], "/path?q=1");
    // :authority becomes Host for the HTTP/1.1 upstream.
    assert_eq!(json["headers"]["host"], "svc.local");
}

#[tokio::test]
async fn http1_downstream_to_h2_upstream_multiplexes_on_one_connection() {
    let up = upstream_h2("h2").await;
    let p = proxy(&http_bootstrap(&routes_to("h2"), &cluster("h2", &[up.addr], true, ""))).await;
    let addr = p.listener("http").unwrap();
    let mut tasks = Vec::new();
    for i in 0..20 {
        tasks.push(tokio::spawn(async move {
            let mut c = H1::connect(addr).await;
            let r = c.get("svc.local", &format!("/slow/{}", 50 + i)).await;
            assert_eq!(r.status, 200);
        }));
    }
    for t in tasks {
        within("concurrent request", t).await.unwrap();
    }
    let mut c = H1::connect(addr).await;
    let r = c.get("svc.local", "/x").await;
    assert_eq!(r.json()["version"], "HTTP/2.0");
    assert_eq!(r.json()["headers"].get("host"), None, "h2 carries :authority, not Host");
    // Twenty concurrent requests shared one upstream HTTP/2 connection.
    assert_eq!(up.accepts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn codec_http1_rejects_h2_preface() {
    let up = upstream("h1").await;
    let hcm = format!("codec_type: HTTP1\n{}", routes_to("h1"));
    let p = proxy(&http_bootstrap(&hcm, &cluster("h1", &[up.addr], false, ""))).await;
    let started = std::time::Instant::now();
    let reply = raw_exchange(p.listener("http").unwrap(), b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    // An HTTP/1.1-only listener answers the h2 preface as a bad request and closes.
    assert!(reply.starts_with("HTTP/1.1 400") || reply.is_empty(), "{reply:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the connection was not closed"
    );
}

#[tokio::test]
async fn h2_pool_opens_another_connection_at_max_concurrent_streams() {
    let up = upstream_h2("h2").await;
    // A cluster limited to 2 streams per connection: 6 concurrent requests need 3.
    let c = cluster("h2", &[up.addr], true, "").replace(
        "http2_protocol_options: {}",
        "http2_protocol_options: { max_concurrent_streams: 2 }",
    );
    let p = proxy(&http_bootstrap(&routes_to("h2"), &c)).await;
    let addr = p.listener("http").unwrap();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        tasks.push(tokio::spawn(async move {
            let mut c = H1::connect(addr).await;
            assert_eq!(c.get("svc.local", "/slow/300").await.status, 200);
        }));
    }
    for t in tasks {
        within("concurrent request", t).await.unwrap();
    }
    let n = up.accepts.load(Ordering::SeqCst);
    assert!(
        (3..=6).contains(&n),
        "expected at least 3 upstream connections, got {n}"
    );
}
