//! Serves one downstream connection with hyper: HTTP/1.1 (with upgrades),
//! h2c prior knowledge, or either by the connection preface for
//! `codec_type: AUTO` (see `listener::detect`); shuts it down gracefully when the proxy drains.

use std::{convert::Infallible, sync::Arc};

use arc_swap::ArcSwap;
use hyper::{body::Incoming, server::conn::http1, server::conn::http2, service::service_fn, Request};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::proxy::{ConnInfo, HttpProxy};
use crate::{
    config::Codec,
    listener::{
        detect::{detect, Detected},
        Handler,
    },
    telemetry::stats::ActiveGuard,
};

/// Runs a hyper connection future until it ends, or until the proxy drains:
/// then HTTP/1.1 finishes the request in flight and closes, HTTP/2 sends GOAWAY.
macro_rules! serve_until_drained {
    ($conn:expr, $drain:expr) => {{
        let conn = $conn;
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => r.map_err(|e| e.to_string()),
            _ = $drain.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await.map_err(|e| e.to_string())
            }
        }
    }};
}

/// Serves a connection. `proxy` is the config the connection arrived under
/// (it fixes the codec); each request uses the listener's current config from
/// `current`, so updates apply to open connections at once.
pub async fn serve(
    stream: TcpStream,
    proxy: Arc<HttpProxy>,
    current: Arc<ArcSwap<Handler>>,
    conn: ConnInfo,
    drain: CancellationToken,
) {
    let stats = proxy.stats.clone();
    stats.downstream_cx_total.inc();
    let _active = ActiveGuard::new(&stats.downstream_cx_active);
    let hcm = proxy.hcm.clone();
    let protocol = match hcm.codec {
        Codec::Http1 => Detected::Http1,
        Codec::Http2 => Detected::Http2,
        // The h2 preface or not, peeked (hyper's codecs still read it).
        Codec::Auto => tokio::select! {
            d = detect(&stream) => d,
            _ = drain.cancelled() => return,
        },
    };
    let io = TokioIo::new(stream);
    let arrived = proxy.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let proxy = match &**current.load() {
            Handler::Http(p) => p.clone(),
            // The listener became a TCP proxy: this connection keeps its HTTP config.
            Handler::Tcp(_) => arrived.clone(),
        };
        async move { Ok::<_, Infallible>(proxy.handle(req, conn).await) }
    });
    let h2 = hcm.http2;
    let max_head = hcm.max_request_headers_kb as usize * 1024;

    let result = match protocol {
        Detected::Http1 => {
            stats.downstream_cx_http1_total.inc();
            let mut builder = http1::Builder::new();
            // hyper answers 431 and closes when the request head is larger.
            builder.max_header_size(max_head);
            serve_until_drained!(builder.serve_connection(io, service).with_upgrades(), drain)
        }
        Detected::Http2 => {
            stats.downstream_cx_http2_total.inc();
            let mut builder = http2::Builder::new(TokioExecutor::new());
            builder
                .max_header_list_size(max_head as u32)
                .max_concurrent_streams(h2.max_concurrent_streams)
                .initial_stream_window_size(h2.initial_stream_window_size)
                .initial_connection_window_size(h2.initial_connection_window_size);
            serve_until_drained!(builder.serve_connection(io, service), drain)
        }
    };
    if let Err(e) = result {
        // Malformed requests were already answered 400 by hyper; count and move on.
        stats.downstream_cx_protocol_error.inc();
        tracing::debug!(peer = %conn.remote, error = %e, "downstream connection ended with an error");
    }
}
