//! How fast a large xDS update reaches traffic, and what it costs: remora and
//! (when available) Envoy, one after the other, each driven by remora's
//! in-process control plane over real ADS.
//!
//! For each proxy:
//! 1. The initial snapshot: one listener, a route config (`/eds` to the EDS
//!    cluster `svc`, everything else to the STATIC cluster `c-0`), and 1,000
//!    clusters of 10 endpoints each (`svc` among them). RSS is read once it
//!    serves.
//! 2. EDS: `svc`'s assignment is replaced by 10,000 endpoints, five times,
//!    alternating between two address ranges. The time from the push to the
//!    first request answered by an endpoint of the new range is recorded.
//! 3. CDS: all 1,000 clusters are pushed again with every endpoint moved,
//!    five times; timed until `c-0`'s traffic reaches the new range.
//! 4. Throughout, a paced request loop (one request per millisecond) on `/`
//!    records latencies: p99 in the 2 s before the first push against p99
//!    within the apply windows (push to switch, plus 200 ms).
//!
//! Every endpoint is a distinct loopback address (127.x.y.z) on one port; the
//! upstream listens on the wildcard address (refusing non-loopback peers)
//! and answers with the address it was reached on, so a response tells which
//! endpoint served it.
//!
//! Run: `cargo bench --bench xds_apply` (ENVOY_BIN, else `.venv-envoy/bin/envoy`
//! when present, adds Envoy). Prints a markdown table.

#![cfg_attr(test, allow(dead_code, unused_imports))]

use std::{
    convert::Infallible,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{body::Incoming, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use remora::{
    controlplane::{snapshot::decode_document, ControlPlane, Resource},
    xds::decode::ApiPool,
};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};

const CLUSTERS: usize = 1000;
const ENDPOINTS_PER_CLUSTER: usize = 10;
const EDS_ENDPOINTS: usize = 10_000;
const ROUNDS: usize = 5;
const WAIT: Duration = Duration::from_secs(60);

fn main() {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("xds_apply: tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run()) {
        eprintln!("xds_apply: {e}");
        std::process::exit(1);
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Figures {
    proxy: &'static str,
    rss_loaded_kib: u64,
    rss_after_kib: u64,
    peak_kib: u64,
    eds_ms: Vec<f64>,
    cds_ms: Vec<f64>,
    p99_before_ms: f64,
    p99_during_ms: f64,
    max_during_ms: f64,
    failed: usize,
}

async fn run() -> Result<(), BoxError> {
    let upstream = start_upstream().await?;
    let remora = PathBuf::from(env!("CARGO_BIN_EXE_remora"));
    let mut rows = vec![measure("remora", &remora, upstream).await?];
    match envoy_bin() {
        Some(envoy) => rows.push(measure("envoy", &envoy, upstream).await?),
        None => eprintln!("(Envoy not found: set ENVOY_BIN or create .venv-envoy; remora only)"),
    }
    println!();
    println!(
        "1,000 clusters x {ENDPOINTS_PER_CLUSTER} endpoints loaded; EDS update = {EDS_ENDPOINTS} endpoints; CDS update = all {CLUSTERS} clusters; {ROUNDS} pushes each, median (min-max)"
    );
    println!();
    println!("| | {} |", rows.iter().map(|r| r.proxy).collect::<Vec<_>>().join(" | "));
    println!("|---|{}", "---:|".repeat(rows.len()));
    let line = |what: &str, f: &dyn Fn(&Figures) -> String| {
        println!("| {what} | {} |", rows.iter().map(f).collect::<Vec<_>>().join(" | "));
    };
    line("EDS push to traffic, 10k endpoints", &|r| spread(&r.eds_ms));
    line("CDS push to traffic, 1k clusters", &|r| spread(&r.cds_ms));
    line("RSS, 1k clusters x 10 endpoints", &|r| mib(r.rss_loaded_kib));
    line("RSS after the updates", &|r| mib(r.rss_after_kib));
    line("peak RSS", &|r| mib(r.peak_kib));
    line("p99 before updates", &|r| format!("{:.2} ms", r.p99_before_ms));
    line("p99 while applying", &|r| format!("{:.2} ms", r.p99_during_ms));
    line("max while applying", &|r| format!("{:.2} ms", r.max_during_ms));
    line("failed requests", &|r| r.failed.to_string());
    Ok(())
}

fn spread(v: &[f64]) -> String {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match (s.first(), s.get(s.len() / 2), s.last()) {
        (Some(lo), Some(mid), Some(hi)) => format!("{mid:.0} ms ({lo:.0}-{hi:.0})"),
        _ => "-".into(),
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn envoy_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("ENVOY_BIN") {
        return Some(PathBuf::from(p));
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-envoy/bin/envoy");
    local.exists().then_some(local)
}

/// Endpoint `i` of address range `range`: 127.<range>.<hi>.<lo>, skipping .0.
fn endpoint_ip(range: u8, i: usize) -> Ipv4Addr {
    let n = i + 1;
    Ipv4Addr::new(127, range, (n / 250) as u8, (n % 250) as u8 + 1)
}

fn lb_endpoints(range: u8, count: usize, port: u16) -> Value {
    let eps: Vec<Value> = (0..count)
        .map(|i| json!({"endpoint": {"address": {"socket_address": {"address": endpoint_ip(range, i).to_string(), "port_value": port}}}}))
        .collect();
    json!([{ "lb_endpoints": eps }])
}

/// The 1,000 clusters: `svc` (EDS) and `c-1`..`c-999` (STATIC), each STATIC
/// cluster's endpoints in address range `range` (a distinct third octet per cluster).
fn clusters_doc(range: u8, port: u16) -> Value {
    let mut items = vec![json!({
        "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        "name": "svc", "type": "EDS", "connect_timeout": "1s",
        "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}},
    })];
    for c in 0..CLUSTERS - 1 {
        let eps: Vec<Value> = (0..ENDPOINTS_PER_CLUSTER)
            .map(|i| {
                let ip = endpoint_ip(range, c * ENDPOINTS_PER_CLUSTER + i);
                json!({"endpoint": {"address": {"socket_address": {"address": ip.to_string(), "port_value": port}}}})
            })
            .collect();
        items.push(json!({
            "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            "name": format!("c-{c}"), "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": format!("c-{c}"), "endpoints": [{"lb_endpoints": eps}]},
        }));
    }
    Value::Array(items)
}

fn assignment_doc(range: u8, count: usize, port: u16) -> Value {
    json!({
        "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
        "cluster_name": "svc",
        "endpoints": lb_endpoints(range, count, port),
    })
}

fn listener_docs(listen_port: u16) -> Value {
    json!([{
        "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
        "name": "bench",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "bench",
                "rds": {"route_config_name": "bench", "config_source": {"ads": {}, "resource_api_version": "V3"}},
                "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
            },
        }]}],
    }, {
        "@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        "name": "bench",
        "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/eds"}, "route": {"cluster": "svc"}},
            {"match": {"prefix": "/"}, "route": {"cluster": "c-0"}},
        ]}],
    }])
}

/// The resources of one snapshot, decoded as fixture files are.
struct Docs {
    pool: ApiPool,
}

impl Docs {
    fn resources(&self, docs: &[Value]) -> Result<Vec<Resource>, BoxError> {
        let mut out = Vec::new();
        for d in docs {
            let r = decode_document("bench.json", &d.to_string(), &self.pool).map_err(|e| e.join("; "))?;
            out.extend(r);
        }
        Ok(out)
    }
}

async fn measure(proxy: &'static str, bin: &Path, upstream: SocketAddr) -> Result<Figures, BoxError> {
    eprintln!("== {proxy}");
    let docs = Docs { pool: ApiPool::load()? };
    let port = upstream.port();
    let listen_port = free_port()?;
    let cp = ControlPlane::new();
    let listeners = listener_docs(listen_port);
    let base = |cluster_range: u8, eds: Value| -> Result<Vec<Resource>, BoxError> {
        docs.resources(&[listeners.clone(), clusters_doc(cluster_range, port), eds])
    };
    cp.set_snapshot(base(10, assignment_doc(20, ENDPOINTS_PER_CLUSTER, port))?);
    let xds_listener = TcpListener::bind("127.0.0.1:0").await?;
    let xds = xds_listener.local_addr()?;
    let (stop_cp, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(cp.clone().serve(xds_listener, async move {
        let _ = stopped.await;
    }));

    let admin_port = free_port()?;
    let dir = std::env::temp_dir().join(format!("remora-xds-apply-{}-{proxy}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let boot = dir.join("bootstrap.yaml");
    std::fs::write(&boot, bootstrap(xds, admin_port))?;
    let mut child = ProxyProcess(spawn(proxy, bin, &boot, &dir)?);
    let pid = child.0.id();
    let front = SocketAddr::from(([127, 0, 0, 1], listen_port));
    wait_serving(front, admin_port).await?;
    // Settle, then read the resident size with the whole config loaded.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_loaded_kib = rss_kib(pid, "VmRSS")?;
    eprintln!("   serving; RSS {}", mib(rss_loaded_kib));

    // The paced load on `/` (cluster c-0), for the whole run.
    let samples = Arc::new(Mutex::new(Vec::<(Instant, f64, bool)>::new()));
    let (stop_load, load_stopped) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(paced_load(front, samples.clone(), load_stopped));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let first_push = Instant::now();
    let mut windows = Vec::new();

    let mut eds_ms = Vec::new();
    for round in 0..ROUNDS {
        let range = 30 + (round % 2) as u8;
        let resources = base(10, assignment_doc(range, EDS_ENDPOINTS, port))?;
        let pushed = Instant::now();
        cp.set_snapshot(resources);
        let switched = wait_for_range(front, "/eds", range).await?;
        eds_ms.push((switched - pushed).as_secs_f64() * 1000.0);
        windows.push((pushed, switched + Duration::from_millis(200)));
        eprintln!("   EDS push {round}: {:.0} ms", eds_ms[round]);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut cds_ms = Vec::new();
    for round in 0..ROUNDS {
        let range = 11 + (round % 2) as u8;
        let resources = base(range, assignment_doc(30, EDS_ENDPOINTS, port))?;
        let pushed = Instant::now();
        cp.set_snapshot(resources);
        let switched = wait_for_range(front, "/", range).await?;
        cds_ms.push((switched - pushed).as_secs_f64() * 1000.0);
        windows.push((pushed, switched + Duration::from_millis(200)));
        eprintln!("   CDS push {round}: {:.0} ms", cds_ms[round]);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = stop_load.send(true);
    let _ = load.await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after_kib = rss_kib(pid, "VmRSS")?;
    let peak_kib = rss_kib(pid, "VmHWM")?;

    let samples = samples.lock().map(|s| s.clone()).unwrap_or_default();
    let failed = samples.iter().filter(|s| !s.2).count();
    let before: Vec<f64> = samples
        .iter()
        .filter(|s| s.0 < first_push && s.2)
        .map(|s| s.1)
        .collect();
    let during: Vec<f64> = samples
        .iter()
        .filter(|s| s.2 && windows.iter().any(|(a, b)| s.0 >= *a && s.0 <= *b))
        .map(|s| s.1)
        .collect();
    child.stop();
    let _ = stop_cp.send(());
    let _ = server.await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Figures {
        proxy,
        rss_loaded_kib,
        rss_after_kib,
        peak_kib,
        eds_ms,
        cds_ms,
        p99_before_ms: percentile(&before, 0.99),
        p99_during_ms: percentile(&during, 0.99),
        max_during_ms: percentile(&during, 1.0),
        failed,
    })
}

fn percentile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let i = ((s.len() as f64 - 1.0) * q).round() as usize;
    s[i.min(s.len() - 1)]
}

fn bootstrap(xds: SocketAddr, admin_port: u16) -> String {
    format!(
        r#"node: {{ id: bench, cluster: bench }}
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }} }}
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services:
    - envoy_grpc: {{ cluster_name: xds }}
  cds_config: {{ ads: {{}}, resource_api_version: V3 }}
  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {{}}
    load_assignment:
      cluster_name: xds
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}
"#,
        xds.ip(),
        xds.port()
    )
}

fn spawn(proxy: &str, bin: &Path, boot: &Path, dir: &Path) -> Result<Child, BoxError> {
    let log = std::fs::File::create(dir.join("proxy.log"))?;
    let mut cmd = Command::new(bin);
    if proxy == "envoy" {
        cmd.args([
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "--log-level",
            "warn",
            "-c",
        ])
        .arg(boot)
        .arg("--base-id")
        .arg((std::process::id() % 60000).to_string());
    } else {
        cmd.args(["run", "--concurrency", "1", "--log-level", "warn", "--config"])
            .arg(boot);
    }
    Ok(cmd.stdout(Stdio::null()).stderr(log).spawn()?)
}

/// Kills the proxy when dropped, so an early error leaves nothing behind.
struct ProxyProcess(Child);

impl ProxyProcess {
    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> Result<u16, BoxError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn rss_kib(pid: u32, field: &str) -> Result<u64, BoxError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.trim_start_matches(':').trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no {field} in /proc/{pid}/status").into())
}

/// Waits for admin `/ready` and a first answered request.
async fn wait_serving(front: SocketAddr, admin_port: u16) -> Result<(), BoxError> {
    let deadline = Instant::now() + WAIT;
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    loop {
        if let (Ok((200, _)), Ok((200, _))) = (get(admin, "/ready").await, get(front, "/").await) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("the proxy never became ready".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends requests to `path` until one is answered by an endpoint in 127.<range>.x.x.
async fn wait_for_range(front: SocketAddr, path: &str, range: u8) -> Result<Instant, BoxError> {
    let deadline = Instant::now() + WAIT;
    let mut conn = Conn::open(front).await?;
    loop {
        match conn.get(path).await {
            Ok((200, Some(ip))) if ip.octets()[1] == range => return Ok(Instant::now()),
            Ok(_) => {}
            Err(_) => conn = Conn::open(front).await?,
        }
        if Instant::now() > deadline {
            return Err(format!("traffic on {path} never reached 127.{range}.0.0/16").into());
        }
    }
}

async fn paced_load(
    front: SocketAddr,
    samples: Arc<Mutex<Vec<(Instant, f64, bool)>>>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conn = Conn::open(front).await.ok();
    while !*stop.borrow() {
        tick.tick().await;
        let started = Instant::now();
        let ok = match conn.as_mut() {
            Some(c) => matches!(c.get("/").await, Ok((200, _))),
            None => false,
        };
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        if let Ok(mut s) = samples.lock() {
            s.push((started, ms, ok));
        }
        if !ok {
            conn = Conn::open(front).await.ok();
        }
    }
}

/// One HTTP/1.1 keep-alive connection.
struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Conn, BoxError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Conn { sender })
    }

    /// Status and the upstream address that answered (its `x-local` header).
    async fn get(&mut self, path: &str) -> Result<(u16, Option<Ipv4Addr>), BoxError> {
        self.sender.ready().await?;
        let req = Request::get(path).header("host", "bench").body(Empty::new())?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let ip = resp
            .headers()
            .get("x-local")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        resp.into_body().collect().await?;
        Ok((status, ip))
    }
}

async fn get(addr: SocketAddr, path: &str) -> Result<(u16, Option<Ipv4Addr>), BoxError> {
    Conn::open(addr).await?.get(path).await
}

/// The upstream: every endpoint address is 127.x.y.z on this port; it
/// answers with the local address the connection reached.
async fn start_upstream() -> Result<SocketAddr, BoxError> {
    let listener = TcpListener::bind("0.0.0.0:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let Ok(local) = stream.local_addr() else { continue };
            // Listening on the wildcard address only to reach all of 127/8: serve loopback only.
            if !peer.ip().is_loopback() || !local.ip().is_loopback() {
                continue;
            }
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| async move {
                    let mut resp = Response::new(Full::new(Bytes::from_static(b"ok\n")));
                    if let Ok(v) = local.ip().to_string().parse() {
                        resp.headers_mut().insert("x-local", v);
                    }
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
}
