//! Serves one downstream connection with hyper (HTTP/1.1, h2c prior
//! knowledge, or either by the connection preface for `codec_type: AUTO`),
//! and shuts it down gracefully when the proxy drains.

use std::{convert::Infallible, sync::Arc};

use hyper::{body::Incoming, service::service_fn, Request};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::proxy::{ConnInfo, HttpProxy};
use crate::{config::Codec, telemetry::stats::ActiveGuard};

pub async fn serve(stream: TcpStream, proxy: Arc<HttpProxy>, conn: ConnInfo, drain: CancellationToken) {
    let stats = proxy.stats.clone();
    stats.downstream_cx_total.inc();
    let _active = ActiveGuard::new(&stats.downstream_cx_active);
    let hcm = proxy.hcm.clone();
    let io = TokioIo::new(stream);
    let svc_proxy = proxy.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let proxy = svc_proxy.clone();
        async move { Ok::<_, Infallible>(proxy.handle(req, conn).await) }
    });

    let mut builder = auto::Builder::new(TokioExecutor::new());
    match hcm.codec {
        Codec::Http1 => {
            builder = builder.http1_only();
            stats.downstream_cx_http1_total.inc();
        }
        Codec::Http2 => {
            builder = builder.http2_only();
            stats.downstream_cx_http2_total.inc();
        }
        Codec::Auto => {}
    }
    builder.http1().keep_alive(true).half_close(false);
    builder
        .http2()
        .max_concurrent_streams(hcm.http2.max_concurrent_streams)
        .initial_stream_window_size(hcm.http2.initial_stream_window_size)
        .initial_connection_window_size(hcm.http2.initial_connection_window_size);

    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    let result = tokio::select! {
        r = connection.as_mut() => r,
        _ = drain.cancelled() => {
            // HTTP/1.1: finish the request in flight, then close; HTTP/2: GOAWAY.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        // Malformed requests were already answered 400 by hyper; count and move on.
        stats.downstream_cx_protocol_error.inc();
        tracing::debug!(peer = %conn.remote, error = %e, "downstream connection ended with an error");
    }
}
