//! `remora demo`: runs two sample "reviews" services and remora in front of them
//! (the `xds-fixtures/demo` config) on loopback, sends traffic, and reports what happened.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicUsize, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::{body::Incoming, client::conn::http1 as client, server::conn::http1 as server, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{
    net::{TcpListener, TcpStream},
    task::{JoinHandle, JoinSet},
    time::timeout,
};

use crate::{
    config::{self, ClusterTarget, NetworkFilter, RouteAction},
    proxy::Proxy,
    xds,
};

const FIXTURE_NAME: &str = "demo/bootstrap.yaml";
const FIXTURE: &str = include_str!("../../xds-fixtures/demo/bootstrap.yaml");
/// Client connections the burst is spread over (each keep-alive, reused).
const CONNECTIONS: usize = 4;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const START_TIMEOUT: Duration = Duration::from_secs(5);
const BURST_TIMEOUT: Duration = Duration::from_secs(60);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// The kinds of request the demo sends, one per route of the fixture (plus one with no route).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Split,
    Canary,
    Pinned,
    Health,
    NoRoute,
}

const KINDS: [Kind; 5] = [Kind::Split, Kind::Canary, Kind::Pinned, Kind::Health, Kind::NoRoute];

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Kind::Split | Kind::Canary => "/reviews",
            Kind::Pinned => "/v1/anything",
            Kind::Health => "/healthz",
            Kind::NoRoute => "/nope",
        }
    }

    fn extra_header(self) -> Option<(&'static str, &'static str)> {
        (self == Kind::Canary).then_some(("x-canary", "true"))
    }

    fn request(self) -> String {
        match self.extra_header() {
            Some((k, v)) => format!("GET {} ({k}: {v})", self.path()),
            None => format!("GET {}", self.path()),
        }
    }

    /// What the config says about this request.
    fn config(self, v1_weight: &str) -> String {
        match self {
            Kind::Split => format!("route split: weighted, {v1_weight}"),
            Kind::Canary => "route canary-header: header match -> reviews-v2".into(),
            Kind::Pinned => "route v1-pinned: prefix_rewrite /v1/ -> /, reviews-v1".into(),
            Kind::Health => "route health: direct_response 200 \"ok\"".into(),
            Kind::NoRoute => "no route matches: remora answers 404".into(),
        }
    }
}

/// One answered request, as the client saw it.
struct Answer {
    status: u16,
    version: Option<String>,
    seen_path: Option<String>,
    body: Bytes,
}

struct Sample {
    kind: Kind,
    outcome: Result<Answer, String>,
    latency: Duration,
}

/// Runs the demo; returns the process exit code (0: everything behaved as configured).
pub async fn run(requests: u32) -> i32 {
    let min = KINDS.len() as u32;
    if requests < min {
        eprintln!("error: --requests must be at least {min} (one per route)");
        return crate::cli::EXIT_CONFIG;
    }
    match demo(requests).await {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// Ok(passed) once the report is printed; Err when the demo could not even run.
async fn demo(requests: u32) -> Result<bool, String> {
    let v1 = Service::start("v1").await?;
    let v2 = Service::start("v2").await?;

    let mut bootstrap =
        xds::parse_bootstrap(FIXTURE_NAME, FIXTURE).map_err(|e| format!("the demo config does not load:\n{e}"))?;
    patch(&mut bootstrap, v1.addr, v2.addr)?;
    let v1_share = split_share(&bootstrap).ok_or("the demo config has no route 'split' weighting reviews-v1")?;

    let proxy = match timeout(START_TIMEOUT, Proxy::start(bootstrap)).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return Err(format!("remora did not start: {e}")),
        Err(_) => return Err(format!("remora did not start within {START_TIMEOUT:?}")),
    };
    let ingress = proxy.listener("ingress").ok_or("remora has no listener 'ingress'")?;
    let admin = proxy.admin.ok_or("remora has no admin address")?;

    println!("remora demo: two sample services and remora in front of them, all in this process.");
    println!(
        "  reviews v1 on {}, reviews v2 on {} (each answers \"reviews vN\", x-version: vN)",
        v1.addr, v2.addr
    );
    println!("  remora listener \"ingress\" on {ingress}, config xds-fixtures/{FIXTURE_NAME} (ports made ephemeral)");
    println!();

    let started = Instant::now();
    let samples = match burst(ingress, plan(requests)).await {
        Ok(s) => s,
        Err(e) => {
            proxy.drain(DRAIN_TIMEOUT).await;
            return Err(e);
        }
    };
    let elapsed = started.elapsed();
    println!(
        "Sent {} requests to http://{ingress} over {CONNECTIONS} keep-alive connections in {} ms:",
        samples.len(),
        elapsed.as_millis()
    );

    let mut failures = Vec::new();
    let v1_label = format!(
        "reviews-v1 {:.0}% / reviews-v2 {:.0}%",
        v1_share * 100.0,
        (1.0 - v1_share) * 100.0
    );
    let mut served = BTreeMap::<String, u64>::new();
    for kind in KINDS {
        let tally = Tally::new(kind, &samples);
        println!("  {:<30} {}", kind.request(), kind.config(&v1_label));
        println!("      {}", tally.summary());
        tally.check(v1_share, &mut failures);
        for (v, n) in tally.versions.iter().filter_map(|(v, n)| Some((v.as_ref()?, n))) {
            *served.entry(format!("reviews-{v}")).or_default() += *n as u64;
        }
    }
    println!();

    println!("Admin API: http://{admin}/ (/stats/prometheus, /clusters, /config_dump; up while the demo runs)");
    admin_stats(admin, &served, &mut failures).await;
    println!();

    if !proxy.drain(DRAIN_TIMEOUT).await {
        println!("note: remora's drain took longer than {DRAIN_TIMEOUT:?}");
    }
    drop((v1, v2));

    if failures.is_empty() {
        println!("OK: every route behaved as configured, and remora's counters agree with the client.");
        println!("Next: `remora run -c xds-fixtures/{FIXTURE_NAME}` serves this config on :10000, admin :15000.");
        Ok(true)
    } else {
        println!("FAILED: {} thing(s) were not as configured:", failures.len());
        for f in &failures {
            println!("  - {f}");
        }
        Ok(false)
    }
}

/// Prints a few of the proxy's own counters and checks them against what the client saw.
async fn admin_stats(admin: SocketAddr, served: &BTreeMap<String, u64>, failures: &mut Vec<String>) {
    let compare = failures.is_empty();
    match admin_get(admin, "/stats/prometheus").await {
        Ok(text) => {
            println!("From its /stats/prometheus:");
            for metric in [
                "envoy_cluster_upstream_rq_total",
                "envoy_cluster_upstream_cx_total",
                "envoy_http_no_route",
                "envoy_http_rq_direct_response",
            ] {
                for line in lines_of(&text, metric) {
                    println!("  {line}");
                }
            }
            let (mut requests, mut connections) = (0, 0);
            for cluster in ["reviews-v1", "reviews-v2"] {
                requests += counter(&text, "envoy_cluster_upstream_rq_total", cluster).unwrap_or(0);
                connections += counter(&text, "envoy_cluster_upstream_cx_total", cluster).unwrap_or(0);
                // The proxy's own counters must agree with what the client saw (when
                // every request was answered as configured; a 503 counts upstream too).
                if !compare {
                    continue;
                }
                let seen = served.get(cluster).copied().unwrap_or(0);
                match counter(&text, "envoy_cluster_upstream_rq_total", cluster) {
                    Some(n) if n == seen => {}
                    Some(n) => failures.push(format!(
                        "envoy_cluster_upstream_rq_total for {cluster} is {n}, the client got {seen} answers from it"
                    )),
                    None => failures.push(format!(
                        "/stats/prometheus has no envoy_cluster_upstream_rq_total for {cluster}"
                    )),
                }
            }
            println!("  ({requests} requests to the services, {connections} upstream connections opened)");
        }
        Err(e) => failures.push(format!("admin /stats/prometheus: {e}")),
    }
}

/// Points the fixture at this process: ephemeral listener and admin ports,
/// and the two sample services as the clusters' only endpoints.
fn patch(b: &mut config::Bootstrap, v1: SocketAddr, v2: SocketAddr) -> Result<(), String> {
    let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    for l in &mut b.listeners {
        Arc::make_mut(l).address = any;
    }
    b.admin = Some(config::Admin { address: any });
    for (name, address) in [("reviews-v1", v1), ("reviews-v2", v2)] {
        let cluster = b
            .clusters
            .iter_mut()
            .find(|c| c.name == name)
            .ok_or_else(|| format!("the demo config has no cluster '{name}'"))?;
        Arc::make_mut(cluster).endpoints = vec![config::Endpoint { address }];
    }
    Ok(())
}

/// reviews-v1's share of the `split` route, as the config weights it.
fn split_share(b: &config::Bootstrap) -> Option<f64> {
    let listener = b.listeners.iter().find(|l| l.name == "ingress")?;
    let NetworkFilter::Http(hcm) = &listener.filter else {
        return None;
    };
    let route = hcm
        .route_config
        .virtual_hosts
        .iter()
        .flat_map(|vh| &vh.routes)
        .find(|r| r.name == "split")?;
    let RouteAction::Forward(action) = &route.action else {
        return None;
    };
    let ClusterTarget::Weighted(w) = &action.target else {
        return None;
    };
    let v1 = w.clusters.iter().find(|c| c.name == "reviews-v1")?;
    (w.total > 0).then(|| v1.weight as f64 / w.total as f64)
}

/// The requests to send, shuffled: a couple with no route, about a tenth to
/// each of canary, pinned and health, and the rest to the weighted split.
fn plan(requests: u32) -> Vec<Kind> {
    let n = requests as usize;
    let tenth = n.div_ceil(10);
    let mut plan = Vec::with_capacity(n);
    plan.extend(std::iter::repeat_n(Kind::NoRoute, if n >= 20 { 2 } else { 1 }));
    for kind in [Kind::Canary, Kind::Pinned, Kind::Health] {
        plan.extend(std::iter::repeat_n(kind, tenth.min(n.saturating_sub(plan.len() + 1))));
    }
    plan.extend(std::iter::repeat_n(Kind::Split, n.saturating_sub(plan.len())));
    fastrand::shuffle(&mut plan);
    plan
}

/// Sends the plan through the proxy over `CONNECTIONS` connections, each
/// taking the next request when its previous one is answered.
async fn burst(proxy: SocketAddr, plan: Vec<Kind>) -> Result<Vec<Sample>, String> {
    let plan = Arc::new(plan);
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..CONNECTIONS {
        workers.spawn(worker(proxy, plan.clone(), next.clone()));
    }
    let all = async {
        let mut samples = Vec::with_capacity(plan.len());
        while let Some(joined) = workers.join_next().await {
            samples.extend(joined.map_err(|e| format!("a client task failed: {e}"))?);
        }
        Ok(samples)
    };
    timeout(BURST_TIMEOUT, all)
        .await
        .map_err(|_| format!("the requests did not finish within {BURST_TIMEOUT:?}"))?
}

async fn worker(proxy: SocketAddr, plan: Arc<Vec<Kind>>, next: Arc<AtomicUsize>) -> Vec<Sample> {
    let host = proxy.to_string();
    let mut conn: Option<Conn> = None;
    let mut samples = Vec::new();
    while let Some(&kind) = plan.get(next.fetch_add(1, Relaxed)) {
        if conn.as_ref().is_none_or(|c| c.sender.is_closed()) {
            match Conn::open(proxy).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    samples.push(Sample {
                        kind,
                        outcome: Err(e),
                        latency: Duration::ZERO,
                    });
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let started = Instant::now();
        let outcome = c.get(&host, kind.path(), kind.extra_header()).await;
        let latency = started.elapsed();
        if outcome.is_err() {
            conn = None; // its state is unknown: the next request opens another
        }
        samples.push(Sample { kind, outcome, latency });
    }
    samples
}

/// One client HTTP/1.1 connection, reused for every request it sends.
struct Conn {
    sender: client::SendRequest<Empty<Bytes>>,
    driver: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Conn, String> {
        let stream = timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connecting to {addr} timed out"))?
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = timeout(CONNECT_TIMEOUT, client::handshake(TokioIo::new(stream)))
            .await
            .map_err(|_| format!("HTTP handshake with {addr} timed out"))?
            .map_err(|e| format!("HTTP handshake with {addr}: {e}"))?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Conn { sender, driver })
    }

    async fn get(&mut self, host: &str, path: &str, extra: Option<(&str, &str)>) -> Result<Answer, String> {
        let exchange = async {
            self.sender.ready().await.map_err(|e| format!("connection lost: {e}"))?;
            let mut req = Request::get(path).header(header::HOST, host);
            if let Some((name, value)) = extra {
                req = req.header(name, value);
            }
            let req = req.body(Empty::new()).map_err(|e| format!("bad request: {e}"))?;
            let resp = self
                .sender
                .send_request(req)
                .await
                .map_err(|e| format!("no response: {e}"))?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("response body: {e}"))?
                .to_bytes();
            let text = |name: &str| {
                parts
                    .headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            Ok(Answer {
                status: parts.status.as_u16(),
                version: text("x-version"),
                seen_path: text("x-seen-path"),
                body,
            })
        };
        timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))?
    }
}

/// GETs a path from the admin server and returns the body as text.
async fn admin_get(admin: SocketAddr, path: &str) -> Result<String, String> {
    let mut conn = Conn::open(admin).await?;
    let answer = conn.get(&admin.to_string(), path, None).await?;
    if answer.status != 200 {
        return Err(format!("status {}", answer.status));
    }
    Ok(String::from_utf8_lossy(&answer.body).into_owned())
}

/// The sample lines of one Prometheus metric family.
fn lines_of<'a>(text: &'a str, metric: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    text.lines().filter(move |l| {
        l.strip_prefix(metric)
            .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
    })
}

/// A cluster's counter from Prometheus text.
fn counter(text: &str, metric: &str, cluster: &str) -> Option<u64> {
    let label = format!("envoy_cluster_name=\"{cluster}\"");
    lines_of(text, metric)
        .find(|l| l.contains(&label))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

/// What one kind of request got back.
struct Tally {
    kind: Kind,
    sent: usize,
    statuses: BTreeMap<u16, usize>,
    /// Answers by `x-version` header (None: answered by remora itself).
    versions: BTreeMap<Option<String>, usize>,
    seen_paths: BTreeMap<String, usize>,
    unexpected_bodies: usize,
    errors: Vec<String>,
    latencies: Vec<Duration>,
}

impl Tally {
    fn new(kind: Kind, samples: &[Sample]) -> Tally {
        let mut t = Tally {
            kind,
            sent: 0,
            statuses: BTreeMap::new(),
            versions: BTreeMap::new(),
            seen_paths: BTreeMap::new(),
            unexpected_bodies: 0,
            errors: Vec::new(),
            latencies: Vec::new(),
        };
        for s in samples.iter().filter(|s| s.kind == kind) {
            t.sent += 1;
            match &s.outcome {
                Ok(a) => {
                    *t.statuses.entry(a.status).or_default() += 1;
                    *t.versions.entry(a.version.clone()).or_default() += 1;
                    if let Some(p) = &a.seen_path {
                        *t.seen_paths.entry(p.clone()).or_default() += 1;
                    }
                    if kind == Kind::Health && a.body.as_ref() != b"ok\n" {
                        t.unexpected_bodies += 1;
                    }
                    t.latencies.push(s.latency);
                }
                Err(e) => t.errors.push(e.clone()),
            }
        }
        t.latencies.sort();
        t
    }

    fn answered(&self) -> usize {
        self.sent - self.errors.len()
    }

    fn count(&self, version: &str) -> usize {
        self.versions.get(&Some(version.to_string())).copied().unwrap_or(0)
    }

    /// "138 sent | 200 x138 | v1 79.7% (110), v2 20.3% (28) | p50 0.31ms p99 1.20ms"
    fn summary(&self) -> String {
        let mut parts = vec![format!("{} sent", self.sent)];
        let mut statuses: Vec<String> = self.statuses.iter().map(|(s, n)| format!("{s} x{n}")).collect();
        if !self.errors.is_empty() {
            statuses.push(format!("failed x{}", self.errors.len()));
        }
        parts.push(statuses.join(", "));
        let answered = self.answered().max(1) as f64;
        let mut by: Vec<String> = self
            .versions
            .iter()
            .filter_map(|(v, n)| Some(format!("{} {:.1}% ({n})", v.as_ref()?, *n as f64 * 100.0 / answered)))
            .collect();
        if self.kind == Kind::Pinned {
            by.extend(self.seen_paths.keys().map(|p| format!("upstream saw {p}")));
        }
        if by.is_empty() && self.answered() > 0 {
            by.push("answered by remora itself".into());
        }
        if !by.is_empty() {
            parts.push(by.join(", "));
        }
        if !self.latencies.is_empty() {
            let (p50, p99) = (percentile(&self.latencies, 0.50), percentile(&self.latencies, 0.99));
            parts.push(format!("p50 {} p99 {}", ms(p50), ms(p99)));
        }
        parts.join(" | ")
    }

    /// Appends what was not as configured to `failures`.
    fn check(&self, v1_share: f64, failures: &mut Vec<String>) {
        let what = self.kind.request();
        if let Some(first) = self.errors.first() {
            failures.push(format!(
                "{what}: {} of {} failed (first: {first})",
                self.errors.len(),
                self.sent
            ));
        }
        let answered = self.answered();
        if answered == 0 {
            return;
        }
        let want = if self.kind == Kind::NoRoute { 404 } else { 200 };
        let right = self.statuses.get(&want).copied().unwrap_or(0);
        if right != answered {
            failures.push(format!(
                "{what}: {} of {answered} answers were not {want}",
                answered - right
            ));
        }
        let (v1, v2) = (self.count("v1"), self.count("v2"));
        match self.kind {
            Kind::Split => {
                let others = answered - v1 - v2;
                if others > 0 {
                    failures.push(format!("{what}: {others} answers came from neither v1 nor v2"));
                }
                // Loose: four standard deviations of a binomial, and never under 10 points.
                let n = answered as f64;
                let tolerance = (4.0 * (v1_share * (1.0 - v1_share) / n).sqrt()).max(0.10);
                let got = v1 as f64 / n;
                if (got - v1_share).abs() > tolerance {
                    failures.push(format!(
                        "{what}: v1 answered {:.1}%, expected {:.0}% +/- {:.1}",
                        got * 100.0,
                        v1_share * 100.0,
                        tolerance * 100.0
                    ));
                }
            }
            Kind::Canary if v2 != answered => failures.push(format!(
                "{what}: {} of {answered} answers were not from v2",
                answered - v2
            )),
            Kind::Pinned => {
                if v1 != answered {
                    failures.push(format!(
                        "{what}: {} of {answered} answers were not from v1",
                        answered - v1
                    ));
                }
                let rewritten = self.seen_paths.get("/anything").copied().unwrap_or(0);
                if rewritten != v1 {
                    failures.push(format!(
                        "{what}: v1 saw {} paths other than /anything",
                        v1 - rewritten.min(v1)
                    ));
                }
            }
            Kind::Health | Kind::NoRoute if v1 + v2 > 0 => failures.push(format!(
                "{what}: {} answers came from a sample service, not remora",
                v1 + v2
            )),
            _ => {}
        }
        if self.unexpected_bodies > 0 {
            failures.push(format!(
                "{what}: {} answers did not have the body \"ok\"",
                self.unexpected_bodies
            ));
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let n = sorted.len();
    if n == 0 {
        return Duration::ZERO;
    }
    let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2}ms", d.as_secs_f64() * 1000.0)
}

/// A sample upstream service: answers every request 200 `reviews <version>`
/// with `x-version`, and echoes the path it saw in `x-seen-path`. Stops when dropped.
struct Service {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Service {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection.
        self.task.abort();
    }
}

impl Service {
    async fn start(version: &'static str) -> Result<Service, String> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(|e| format!("sample service reviews {version} cannot bind 127.0.0.1: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("sample service reviews {version}: {e}"))?;
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                while connections.try_join_next().is_some() {}
                let _ = stream.set_nodelay(true);
                connections.spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| async move {
                        Ok::<_, Infallible>(sample_answer(version, &req))
                    });
                    let _ = server::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Ok(Service { addr, task })
    }
}

fn sample_answer(version: &'static str, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(format!("reviews {version}\n"))));
    let headers = resp.headers_mut();
    headers.insert("x-version", HeaderValue::from_static(version));
    if let Ok(path) = HeaderValue::from_str(req.uri().path()) {
        headers.insert("x-seen-path", path);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn demo_runs_and_passes() {
        assert_eq!(run(100).await, 0);
    }

    #[test]
    fn plan_covers_every_route() {
        for n in [5, 6, 19, 20, 100, 200, 1000] {
            let p = plan(n);
            assert_eq!(p.len(), n as usize);
            for kind in KINDS {
                assert!(p.contains(&kind), "{n}: no {kind:?}");
            }
        }
        let p = plan(200);
        let count = |k| p.iter().filter(|&&x| x == k).count();
        assert_eq!(
            (count(Kind::NoRoute), count(Kind::Canary), count(Kind::Split)),
            (2, 20, 138)
        );
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let d: Vec<_> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&d, 0.5), Duration::from_millis(50));
        assert_eq!(percentile(&d, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&d[..1], 0.99), Duration::from_millis(1));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }
}
