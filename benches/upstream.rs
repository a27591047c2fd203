//! The upstream for `benches/e2e.sh`: a tiny, fast HTTP server that answers
//! every request with `200 OK` and a 3-byte body (`ok\n`).
//!
//! It serves HTTP/1.1 keep-alive and h2c (prior knowledge) on the same port,
//! telling them apart by the HTTP/2 connection preface, so it can be the
//! target of the "direct" h2load run as well as the upstream of both proxies
//! (which talk HTTP/1.1 to it). It runs on one thread (a current-thread
//! Tokio runtime): the benchmark pins it, with the load generator, to the core
//! the proxy does not use.
//!
//! Usage: `upstream [ADDR]` (default `127.0.0.1:18080`). It prints
//! `listening on ADDR` once bound and runs until killed. Only loopback
//! addresses are accepted, so it can never serve anything but this machine.
//!
//! Built by `benches/e2e.sh`, either as the `upstream` bench target
//! (`[[bench]] name = "upstream" harness = false` in Cargo.toml) or, when
//! that section is absent, from a throw-away manifest under `target/`.

// If Cargo auto-discovers this file as a libtest bench (no `[[bench]]`
// section with `harness = false`), `main` is never called: keep that quiet.
#![cfg_attr(test, allow(dead_code, unused_imports))]

use std::{convert::Infallible, net::SocketAddr};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, header, service::service_fn, Request, Response};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpListener;

const BODY: &[u8] = b"ok\n";

async fn handle(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut resp = Response::new(Full::new(Bytes::from_static(BODY)));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain"));
    Ok(resp)
}

fn main() {
    let addr: SocketAddr = match std::env::args().nth(1).as_deref().unwrap_or("127.0.0.1:18080").parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("upstream: bad address: {e}");
            std::process::exit(2);
        }
    };
    if !addr.ip().is_loopback() {
        eprintln!("upstream: refusing to listen on {addr}: loopback addresses only");
        std::process::exit(2);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let listener = match TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("upstream: cannot bind {addr}: {e}");
                std::process::exit(1);
            }
        };
        println!("listening on {}", listener.local_addr().unwrap_or(addr));
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().keep_alive(true);
        builder.http2().max_concurrent_streams(1024);
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and the like: back off a little instead of spinning.
                    eprintln!("upstream: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let builder = builder.clone();
            tokio::spawn(async move {
                let _ = builder.serve_connection(TokioIo::new(stream), service_fn(handle)).await;
            });
        }
    });
}
