//! Shared harness for integration tests: in-process upstreams on 127.0.0.1:0,
//! the proxy started in-process from a YAML bootstrap, HTTP clients, and a
//! bounded `eventually`. Every wait here has a deadline.
#![allow(dead_code)]

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

pub const WAIT: Duration = Duration::from_secs(10);

/// Runs a future with the standard deadline, failing the test on timeout.
pub async fn within<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?}: {what}"),
    }
}

/// Polls `check` until it returns Some, for at most `WAIT`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("condition never held within {WAIT:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An upstream HTTP server (HTTP/1.1, or h2c when `h2`) that echoes the
/// request as JSON and misbehaves on command by path:
/// `/status/<code>`, `/slow/<ms>`, `/reset`, `/garbage`, `/stream/<n>`.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: &'static str,
    /// TCP connections accepted so far.
    pub accepts: Arc<AtomicUsize>,
}

pub async fn upstream(name: &'static str) -> Upstream {
    start_upstream(name, false).await
}

pub async fn upstream_h2(name: &'static str) -> Upstream {
    start_upstream(name, true).await
}

async fn start_upstream(name: &'static str, h2: bool) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
    let addr = listener.local_addr().expect("local addr");
    let accepts = Arc::new(AtomicUsize::new(0));
    let counter = accepts.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                // Peek at the request line for the raw misbehaviours.
                let mut peek = [0u8; 64];
                let n = stream.peek(&mut peek).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&peek[..n]).to_string();
                if head.contains(" /reset ") {
                    let _ = stream.read(&mut [0u8; 4096]).await;
                    return; // dropped without a response
                }
                if head.contains(" /garbage ") {
                    let _ = stream.read(&mut [0u8; 4096]).await;
                    let _ = stream.write_all(b"this is not HTTP at all\r\n\r\n").await;
                    return;
                }
                let svc = service_fn(move |req| echo(name, req));
                let io = TokioIo::new(stream);
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .with_upgrades()
                        .await;
                }
            });
        }
    });
    Upstream { addr, name, accepts }
}

async fn echo(
    name: &'static str,
    mut req: Request<Incoming>,
) -> Result<Response<http_body_util::combinators::BoxBody<Bytes, Infallible>>, Infallible> {
    let path = req.uri().path().to_string();
    let mut status = StatusCode::OK;
    if let Some(code) = path.strip_prefix("/status/") {
        status = code
            .parse()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::OK);
    }
    if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(1000))).await;
    }
    if path == "/ws" {
        // A WebSocket-style upgrade: 101, then echo bytes back upper-cased.
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on_upgrade.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 1024];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let out: Vec<u8> = buf[..n].to_ascii_uppercase();
                            if io.write_all(&out).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            }
        });
        let resp = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(Full::new(Bytes::new()).boxed())
            .expect("response");
        return Ok(resp);
    }
    if let Some(n) = path.strip_prefix("/stream/") {
        // A body sent in n chunks, 20 ms apart.
        let n: usize = n.parse().unwrap_or(3);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, Infallible>>(4);
        tokio::spawn(async move {
            for i in 0..n {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if tx
                    .send(Ok(hyper::body::Frame::data(Bytes::from(format!("chunk{i};")))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        return Ok(Response::new(BodyExt::boxed(body)));
    }
    // Repeated headers are joined with ',' so their order can be checked.
    let mut headers = serde_json::Map::new();
    for name in req.headers().keys() {
        let joined: Vec<&str> = req
            .headers()
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or(""))
            .collect();
        headers.insert(name.to_string(), serde_json::Value::String(joined.join(",")));
    }
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let version = format!("{:?}", req.version());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let json = serde_json::json!({
        "upstream": name,
        "method": method,
        "uri": uri,
        "version": version,
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    let resp = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-upstream", name)
        .header("connection", "keep-alive")
        .body(Full::new(Bytes::from(json.to_string())).boxed())
        .expect("response");
    Ok(resp)
}

/// A free port with nothing listening (connect is refused).
/// An upstream that answers every request with `status` after `delay`, its
/// body being `body`; counts the requests it saw.
pub async fn answering(body: &'static str, status: u16, delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    async move {
                        tokio::time::sleep(delay).await;
                        let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                        *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, hits)
}

/// An upstream that answers every request with `status` at once, counting them.
pub async fn failing(status: u16) -> (SocketAddr, Arc<AtomicUsize>) {
    answering("failing\n", status, Duration::ZERO).await
}

pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    addr
}

/// Starts the proxy in-process from a bootstrap YAML.
pub async fn proxy(yaml: &str) -> remora::proxy::Proxy {
    let bootstrap = match remora::xds::parse_bootstrap("test.yaml", yaml) {
        Ok(b) => b,
        Err(e) => panic!("test config rejected:\n{e}\n---\n{yaml}"),
    };
    remora::proxy::Proxy::start(bootstrap).await.expect("proxy starts")
}

/// `lb_endpoints` entries (indented for the cluster templates), one per address.
pub fn lb_endpoints(endpoints: &[SocketAddr]) -> String {
    endpoints
        .iter()
        .map(|a| {
            format!(
                "\n        - endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}",
                a.ip(),
                a.port()
            )
        })
        .collect()
}

/// A cluster block for the YAML templates.
pub fn cluster(name: &str, endpoints: &[SocketAddr], h2: bool, extra: &str) -> String {
    let eps = lb_endpoints(endpoints);
    let proto = if h2 {
        "\n    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config:\n          http2_protocol_options: {}"
    } else {
        ""
    };
    format!(
        "  - name: {name}\n    type: STATIC\n    connect_timeout: 0.5s{extra}{proto}\n    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:{eps}\n"
    )
}

/// A bootstrap with one HTTP listener (port 0) whose HCM body (route_config,
/// extra HCM fields) is given, plus clusters and an admin port.
pub fn http_bootstrap(hcm_body: &str, clusters: &str) -> String {
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
  - name: http
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
{hcm}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
{clusters}"#,
        hcm = indent(hcm_body, 10),
    )
}

pub fn indent(s: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    s.lines()
        .map(|l| {
            if l.trim().is_empty() {
                String::new()
            } else {
                format!("{pad}{l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A simple HTTP/1.1 client over one keep-alive connection.
pub struct H1 {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    pub addr: SocketAddr,
}

impl H1 {
    pub async fn connect(addr: SocketAddr) -> H1 {
        let stream = within("connect", TcpStream::connect(addr))
            .await
            .expect("connect to proxy");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("h1 handshake");
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        H1 { sender, addr }
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Reply {
        within("h1 ready", self.sender.ready())
            .await
            .expect("connection usable");
        let resp = within("h1 response", self.sender.send_request(req))
            .await
            .expect("response");
        Reply::read(resp).await
    }

    pub async fn get(&mut self, host: &str, path: &str) -> Reply {
        self.send(get(host, path)).await
    }
}

pub fn get(host: &str, path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .expect("request")
}

/// A response read to its end.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub trailers: Option<http::HeaderMap>,
}

impl Reply {
    pub async fn read(resp: Response<Incoming>) -> Reply {
        let (parts, body) = resp.into_parts();
        let collected = within("response body", body.collect()).await.expect("body");
        let trailers = collected.trailers().cloned();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: collected.to_bytes(),
            trailers,
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The request header the upstream saw (from the echo JSON).
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        self.json()["headers"][name].as_str().map(str::to_string)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
}

/// An h2c (prior knowledge) client.
pub async fn h2_client(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let stream = within("connect", TcpStream::connect(addr)).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// Sends raw bytes and reads until the peer closes or `WAIT` passes.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = within("connect", TcpStream::connect(addr)).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_string()
}

/// Sends raw bytes and reads until the end of a response head.
pub async fn raw_head(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = within("connect", TcpStream::connect(addr)).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while !out.windows(4).any(|w| w == b"\r\n\r\n") {
        match within("response head", s.read(&mut buf)).await {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).to_string()
}

/// A bootstrap that takes everything over ADS from `xds` (an HTTP/2 static
/// cluster), with `api_type` GRPC or DELTA_GRPC and the given node.
pub fn ads_bootstrap(xds: SocketAddr, api_type: &str, node_id: &str, node_cluster: &str) -> String {
    format!(
        r#"node: {{ id: "{node_id}", cluster: {node_cluster} }}
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    grpc_services:
    - envoy_grpc: {{ cluster_name: xds }}
  cds_config: {{ ads: {{}}, resource_api_version: V3 }}
  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
static_resources:
  clusters:
{}"#,
        cluster("xds", &[xds], true, "")
    )
}
