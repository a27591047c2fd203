//! Assembles a running proxy from a config: binds every listener and the
//! admin port, builds cluster runtimes, spawns accept loops, and drains on
//! SIGTERM or `/quitquitquit`.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, SystemTime},
};

use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    admin::{self, AdminState},
    balance::ClusterMap,
    config::{self, NetworkFilter},
    http::proxy::HttpProxy,
    listener::{self, Handler},
    tcp::TcpProxyRuntime,
    telemetry::{access_log::Sink, stats::Registry},
};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("listener '{name}' cannot bind {address}: {source}")]
    Bind {
        name: String,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("access log '{path}' cannot be opened: {source}")]
    AccessLog { path: String, source: std::io::Error },
}

pub struct Proxy {
    /// Bound addresses by listener name (port 0 in the config becomes the real port).
    pub listeners: HashMap<String, SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub state: Arc<AdminState>,
    drain: CancellationToken,
    tracker: TaskTracker,
    admin_stop: CancellationToken,
}

impl Proxy {
    /// Binds and starts everything; returns once every listener is accepting.
    pub async fn start(bootstrap: config::Bootstrap) -> Result<Proxy, StartError> {
        let bootstrap = Arc::new(bootstrap);
        let registry = Arc::new(Registry::default());
        let clusters = Arc::new(ClusterMap::new(&bootstrap.clusters, &registry));
        let drain = CancellationToken::new();
        let tracker = TaskTracker::new();
        let mut sinks: HashMap<String, Arc<Sink>> = HashMap::new();

        let mut bound = Vec::new();
        let mut listeners = HashMap::new();
        for l in &bootstrap.listeners {
            let socket = listener::bind(l.address).map_err(|source| StartError::Bind {
                name: l.name.clone(),
                address: l.address,
                source,
            })?;
            let local = socket.local_addr().unwrap_or(l.address);
            listeners.insert(l.name.clone(), local);
            let handler = match &l.filter {
                NetworkFilter::Http(hcm) => {
                    let mut logs = Vec::new();
                    for al in &hcm.access_logs {
                        let sink = match sinks.get(&al.path) {
                            Some(s) => s.clone(),
                            None => {
                                let s = Arc::new(Sink::open(&al.path).map_err(|source| StartError::AccessLog {
                                    path: al.path.clone(),
                                    source,
                                })?);
                                sinks.insert(al.path.clone(), s.clone());
                                s
                            }
                        };
                        logs.push((al.format.clone(), sink));
                    }
                    let stats = registry.http(&hcm.stat_prefix);
                    Handler::Http(Arc::new(HttpProxy::new(
                        hcm.clone(),
                        clusters.clone(),
                        stats,
                        local.port(),
                        logs,
                    )))
                }
                NetworkFilter::Tcp(tcp) => Handler::Tcp(Arc::new(TcpProxyRuntime {
                    config: tcp.clone(),
                    clusters: clusters.clone(),
                    stats: registry.tcp(&tcp.stat_prefix),
                })),
            };
            let stats = registry.listener(&stat_address(local));
            bound.push((socket, handler, stats));
        }

        let state = Arc::new(AdminState {
            registry: registry.clone(),
            bootstrap: bootstrap.clone(),
            clusters: clusters.clone(),
            ready: false.into(),
            draining: false.into(),
            loaded_at: SystemTime::now(),
            quit: CancellationToken::new(),
        });
        // The admin server outlives the drain (so /ready can say DRAINING) and stops after it.
        let admin_stop = CancellationToken::new();
        let admin = match &bootstrap.admin {
            Some(a) => {
                let socket = listener::bind(a.address).map_err(|source| StartError::Bind {
                    name: "admin".into(),
                    address: a.address,
                    source,
                })?;
                let local = socket.local_addr().unwrap_or(a.address);
                tokio::spawn(admin::serve(socket, state.clone(), admin_stop.clone()));
                Some(local)
            }
            None => None,
        };
        for (socket, handler, stats) in bound {
            tokio::spawn(listener::accept_loop(
                socket,
                handler,
                stats,
                drain.clone(),
                tracker.clone(),
            ));
        }
        // Every socket is bound and listening: connections queue from here on.
        state.ready.store(true, Relaxed);
        Ok(Proxy {
            listeners,
            admin,
            state,
            drain,
            tracker,
            admin_stop,
        })
    }

    pub fn listener(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.get(name).copied()
    }

    /// Resolves when the proxy was asked to stop (`/quitquitquit`).
    pub async fn quit_requested(&self) {
        self.state.quit.cancelled().await
    }

    /// Stops accepting, lets connections finish (HTTP/1.1 after the request
    /// in flight, HTTP/2 after GOAWAY) for up to `timeout`, and returns
    /// whether everything finished in time.
    pub async fn drain(self, timeout: Duration) -> bool {
        self.state.draining.store(true, Relaxed);
        self.drain.cancel();
        self.tracker.close();
        let finished = tokio::time::timeout(timeout, self.tracker.wait()).await.is_ok();
        if !finished {
            tracing::warn!(
                remaining = self.tracker.len(),
                "drain timeout: closing remaining connections"
            );
        }
        self.admin_stop.cancel();
        finished
    }
}

/// Envoy's listener stat name: "0.0.0.0_10000".
fn stat_address(a: SocketAddr) -> String {
    format!("{}_{}", a.ip(), a.port())
}
