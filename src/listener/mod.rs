//! Listening sockets and accept loops. Each accepted connection is handed to
//! its listener's terminal filter (HTTP connection manager or TCP proxy) as
//! a task; the loop itself never dies on a peer's or the OS's error.

pub mod detect;

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    http::proxy::{ConnInfo, HttpProxy},
    tcp::TcpProxyRuntime,
    telemetry::stats::{ActiveGuard, ListenerStats},
};

/// What a listener does with a connection.
#[derive(Clone)]
pub enum Handler {
    Http(Arc<HttpProxy>),
    Tcp(Arc<TcpProxyRuntime>),
}

/// Binds a listening socket as Envoy does (SO_REUSEADDR, so a restart does
/// not wait out TIME_WAIT).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

pub async fn accept_loop(
    listener: TcpListener,
    handler: Arc<ArcSwap<Handler>>,
    stats: Arc<ListenerStats>,
    drain: CancellationToken,
    tracker: TaskTracker,
) {
    let local = listener.local_addr().ok();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = drain.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE/ENFILE and friends: wait a moment instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = ConnInfo {
            remote,
            local: stream.local_addr().ok().or(local).unwrap_or(remote),
        };
        let handler = handler.clone();
        let stats = stats.clone();
        let drain = drain.clone();
        tracker.spawn(async move {
            stats.downstream_cx_total.inc();
            let _active = ActiveGuard::new(&stats.downstream_cx_active);
            serve(stream, handler, conn, drain).await;
        });
    }
    // Dropping the listener closes the socket: new connections are refused.
}

/// A connection uses the listener's config as it is when it arrives; HTTP
/// connections pick up a new config on each request (see `http::server`).
async fn serve(stream: TcpStream, handler: Arc<ArcSwap<Handler>>, conn: ConnInfo, drain: CancellationToken) {
    let current = handler.load_full();
    match &*current {
        Handler::Http(proxy) => crate::http::server::serve(stream, proxy.clone(), handler, conn, drain).await,
        Handler::Tcp(tcp) => tcp.handle(stream, conn, drain).await,
    }
}
