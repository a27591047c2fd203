//! The demo's sample upstreams: two versions of a "reviews" service on loopback
//! that say which version answered and which path they saw. Nothing else.

use std::{convert::Infallible, net::Ipv4Addr, net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1 as server, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{
    net::TcpListener,
    task::{JoinHandle, JoinSet},
};

/// A sample upstream service: answers every request 200 `reviews <version>`
/// with `x-version`, and echoes the path it saw in `x-seen-path`. Stops when dropped.
pub(super) struct Service {
    pub(super) addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Service {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection.
        self.task.abort();
    }
}

impl Service {
    pub(super) async fn start(version: &'static str) -> Result<Service, String> {
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
