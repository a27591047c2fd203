//! The admin HTTP server: readiness, Prometheus stats, the active config,
//! per-endpoint cluster stats, and `/quitquitquit`, which drains the proxy.
//! It serves operators, never traffic.

use std::{
    convert::Infallible,
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc,
    },
    time::SystemTime,
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    balance::{ClusterMap, ClusterRuntime},
    config::{self, HealthStatus},
    telemetry::stats::Registry,
};

pub struct AdminState {
    pub registry: Arc<Registry>,
    /// The config in force (listeners and clusters as last applied).
    pub config: ArcSwap<config::Bootstrap>,
    pub clusters: Arc<ArcSwap<ClusterMap>>,
    pub ready: AtomicBool,
    pub draining: AtomicBool,
    pub loaded_at: SystemTime,
    /// Cancelled by `/quitquitquit`: the proxy then drains and exits.
    pub quit: CancellationToken,
    /// What the ADS client last heard and did (absent without xDS).
    pub xds: std::sync::Mutex<crate::xds::status::XdsStatus>,
}

pub async fn serve(listener: TcpListener, state: Arc<AdminState>, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req)) }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    r
}

fn handle(state: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
    match (req.method(), path) {
        (&Method::GET, "/ready") => {
            if state.draining.load(Relaxed) {
                text(StatusCode::SERVICE_UNAVAILABLE, "DRAINING\n")
            } else if state.ready.load(Relaxed) {
                text(StatusCode::OK, "LIVE\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "PRE_INITIALIZING\n")
            }
        }
        (&Method::GET, "/stats/prometheus") => {
            let mut body = state.registry.prometheus();
            body.push_str(&crate::telemetry::prometheus::cluster_policy(&state.clusters.load()));
            if let Ok(x) = state.xds.lock() {
                if x.server.is_some() {
                    body.push_str(&x.prometheus());
                }
            }
            let mut r = text(StatusCode::OK, body);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=UTF-8"),
            );
            r
        }
        (&Method::GET, "/config_dump") => {
            let xds = state
                .xds
                .lock()
                .map(|x| serde_json::to_value(&*x).unwrap_or_default())
                .unwrap_or_default();
            let dump = serde_json::json!({
                "configs": [{
                    "@type": "remora.admin.BootstrapConfigDump",
                    "last_updated": humantime(state.loaded_at),
                    "bootstrap": &**state.config.load(),
                }, {
                    "@type": "remora.admin.XdsConfigDump",
                    "xds": xds,
                }]
            });
            let body = serde_json::to_string_pretty(&dump).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
            let mut r = text(StatusCode::OK, body);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            r
        }
        (&Method::GET, "/clusters") => {
            if query.contains("format=json") {
                let mut r = text(StatusCode::OK, clusters_json(&state.clusters.load()).to_string());
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/json"),
                );
                r
            } else {
                text(StatusCode::OK, clusters_text(&state.clusters.load()))
            }
        }
        (&Method::POST, "/quitquitquit") => {
            state.quit.cancel();
            text(StatusCode::OK, "OK\n")
        }
        (_, "/quitquitquit") => text(StatusCode::METHOD_NOT_ALLOWED, "This endpoint requires POST\n"),
        (&Method::GET, "/") => text(
            StatusCode::OK,
            "remora admin\n  /ready\n  /stats/prometheus\n  /config_dump\n  /clusters\n  /quitquitquit (POST)\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Envoy's `/clusters` text: `cluster::host:port::stat::value`, in Envoy's
/// order (checked against Envoy 1.40's output for the same hosts).
fn clusters_text(clusters: &ClusterMap) -> String {
    let mut out = String::new();
    for c in clusters.iter() {
        let n = c.name();
        let _ = writeln!(out, "{n}::observability_name::{n}");
        let breakers = &c.config.circuit_breakers;
        for (priority, t) in [("default", &breakers.default), ("high", &breakers.high)] {
            let _ = writeln!(out, "{n}::{priority}_priority::max_connections::{}", t.max_connections);
            let _ = writeln!(
                out,
                "{n}::{priority}_priority::max_pending_requests::{}",
                t.max_pending_requests
            );
            let _ = writeln!(out, "{n}::{priority}_priority::max_requests::{}", t.max_requests);
            let _ = writeln!(out, "{n}::{priority}_priority::max_retries::{}", t.max_retries);
        }
        let _ = writeln!(out, "{n}::added_via_api::{}", c.config.added_via_api);
        for (e, cfg) in c.endpoints.iter().zip(&c.config.endpoints) {
            let a = e.address;
            let s = &e.stats;
            let _ = writeln!(out, "{n}::{a}::cx_active::{}", s.cx_active.get());
            let _ = writeln!(out, "{n}::{a}::cx_connect_fail::{}", s.cx_connect_fail.get());
            let _ = writeln!(out, "{n}::{a}::rq_active::{}", s.rq_active.get());
            let _ = writeln!(out, "{n}::{a}::rq_error::{}", s.rq_error.get());
            let _ = writeln!(out, "{n}::{a}::rq_success::{}", s.rq_success.get());
            let _ = writeln!(out, "{n}::{a}::rq_timeout::{}", s.rq_timeout.get());
            let _ = writeln!(out, "{n}::{a}::rq_total::{}", s.rq_total.get());
            let _ = writeln!(out, "{n}::{a}::hostname::");
            let _ = writeln!(out, "{n}::{a}::health_flags::{}", health_flags(c, a, cfg.health));
            let _ = writeln!(out, "{n}::{a}::weight::{}", cfg.weight);
            let _ = writeln!(out, "{n}::{a}::priority::{}", cfg.priority);
        }
    }
    out
}

/// Envoy's host health flags: `healthy`, or the failing ones joined by `|`.
fn health_flags(c: &ClusterRuntime, host: SocketAddr, eds: HealthStatus) -> String {
    let mut flags = Vec::new();
    if c.outlier.as_ref().is_some_and(|o| o.is_ejected(host)) {
        flags.push("/failed_outlier_check");
    }
    match eds {
        HealthStatus::Unhealthy | HealthStatus::Timeout => flags.push("/failed_eds_health"),
        HealthStatus::Degraded => flags.push("/degraded_eds_health"),
        HealthStatus::Draining => flags.push("/eds_status_draining"),
        HealthStatus::Healthy | HealthStatus::Unknown => {}
    }
    if flags.is_empty() {
        "healthy".to_string()
    } else {
        flags.join("|")
    }
}

/// Envoy's `HostHealthStatus.eds_health_status` (TIMEOUT reads as UNHEALTHY, as in Envoy 1.40).
fn eds_health_name(h: HealthStatus) -> &'static str {
    match h {
        HealthStatus::Unknown | HealthStatus::Healthy => "HEALTHY",
        HealthStatus::Unhealthy | HealthStatus::Timeout => "UNHEALTHY",
        HealthStatus::Draining => "DRAINING",
        HealthStatus::Degraded => "DEGRADED",
    }
}

fn clusters_json(clusters: &ClusterMap) -> serde_json::Value {
    let list: Vec<_> = clusters
        .iter()
        .map(|c| {
            let hosts: Vec<_> = c
                .endpoints
                .iter()
                .zip(&c.config.endpoints)
                .map(|(e, cfg)| {
                    let s = &e.stats;
                    let counter = |name: &str, v: u64| serde_json::json!({ "name": name, "value": v });
                    let gauge = |name: &str, v: i64| serde_json::json!({ "type": "GAUGE", "name": name, "value": v });
                    let mut health = serde_json::json!({ "eds_health_status": eds_health_name(cfg.health) });
                    if c.outlier.as_ref().is_some_and(|o| o.is_ejected(e.address)) {
                        health["failed_outlier_check"] = serde_json::Value::Bool(true);
                    }
                    let mut host = serde_json::json!({
                        "address": { "socket_address": {
                            "address": e.address.ip().to_string(),
                            "port_value": e.address.port(),
                        } },
                        "stats": [
                            counter("cx_connect_fail", s.cx_connect_fail.get()),
                            counter("rq_error", s.rq_error.get()),
                            counter("rq_success", s.rq_success.get()),
                            counter("rq_timeout", s.rq_timeout.get()),
                            counter("rq_total", s.rq_total.get()),
                            gauge("cx_active", s.cx_active.get()),
                            gauge("rq_active", s.rq_active.get()),
                        ],
                        "health_status": health,
                        "weight": cfg.weight,
                        "locality": {},
                    });
                    if cfg.priority != 0 {
                        host["priority"] = cfg.priority.into();
                    }
                    host
                })
                .collect();
            serde_json::json!({
                "name": c.name(),
                "observability_name": c.name(),
                "added_via_api": c.config.added_via_api,
                "host_statuses": hosts,
            })
        })
        .collect();
    serde_json::json!({ "cluster_statuses": list })
}

fn humantime(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}
