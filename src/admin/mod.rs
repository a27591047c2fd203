//! The admin HTTP server: readiness, Prometheus stats, the active config,
//! per-endpoint cluster stats, and `/quitquitquit`, which drains the proxy.
//! It serves operators, never traffic.

use std::{
    convert::Infallible,
    fmt::Write as _,
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

use crate::{balance::ClusterMap, config, telemetry::stats::Registry};

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

/// Envoy's `/clusters` text: `cluster::host:port::stat::value`.
fn clusters_text(clusters: &ClusterMap) -> String {
    let mut out = String::new();
    for c in clusters.iter() {
        let n = c.name();
        let _ = writeln!(out, "{n}::default_priority::max_connections::1024");
        let _ = writeln!(out, "{n}::added_via_api::false");
        for e in &c.endpoints {
            let a = e.address;
            let s = &e.stats;
            let _ = writeln!(out, "{n}::{a}::cx_active::{}", s.cx_active.get());
            let _ = writeln!(out, "{n}::{a}::cx_connect_fail::{}", s.cx_connect_fail.get());
            let _ = writeln!(out, "{n}::{a}::rq_active::{}", s.rq_active.get());
            let _ = writeln!(out, "{n}::{a}::rq_error::{}", s.rq_error.get());
            let _ = writeln!(out, "{n}::{a}::rq_success::{}", s.rq_success.get());
            let _ = writeln!(out, "{n}::{a}::rq_timeout::{}", s.rq_timeout.get());
            let _ = writeln!(out, "{n}::{a}::rq_total::{}", s.rq_total.get());
            let _ = writeln!(out, "{n}::{a}::health_flags::healthy");
        }
    }
    out
}

fn clusters_json(clusters: &ClusterMap) -> serde_json::Value {
    let list: Vec<_> = clusters
        .iter()
        .map(|c| {
            let hosts: Vec<_> = c
                .endpoints
                .iter()
                .map(|e| {
                    let s = &e.stats;
                    serde_json::json!({
                        "address": e.address.to_string(),
                        "stats": {
                            "cx_active": s.cx_active.get(),
                            "cx_connect_fail": s.cx_connect_fail.get(),
                            "rq_active": s.rq_active.get(),
                            "rq_error": s.rq_error.get(),
                            "rq_success": s.rq_success.get(),
                            "rq_timeout": s.rq_timeout.get(),
                            "rq_total": s.rq_total.get(),
                        },
                        "health_status": "HEALTHY",
                    })
                })
                .collect();
            serde_json::json!({ "name": c.name(), "host_statuses": hosts })
        })
        .collect();
    serde_json::json!({ "cluster_statuses": list })
}

fn humantime(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}
