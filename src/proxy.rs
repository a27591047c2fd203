//! Assembles a running proxy from a config and keeps it in step with new
//! ones: binds listeners and the admin port, builds cluster runtimes, spawns
//! accept loops, applies updates in place, and drains on SIGTERM or
//! `/quitquitquit`.
//!
//! Updates follow Envoy: a listener whose address is unchanged keeps its
//! socket and its connections, which pick up the new filter config on their
//! next request; a removed listener stops accepting and its connections
//! drain; a cluster whose config is unchanged keeps its runtime (pools, stats).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{atomic::Ordering::Relaxed, Arc, Mutex},
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    admin::{self, AdminState},
    balance::ClusterMap,
    config::{self, NetworkFilter},
    http::{filters::HttpFilters, proxy::HttpProxy},
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
    pub admin: Option<SocketAddr>,
    pub state: Arc<AdminState>,
    registry: Arc<Registry>,
    clusters: Arc<ArcSwap<ClusterMap>>,
    listeners: Mutex<HashMap<String, RunningListener>>,
    sinks: Mutex<HashMap<String, Arc<Sink>>>,
    drain: CancellationToken,
    tracker: TaskTracker,
    admin_stop: CancellationToken,
}

struct RunningListener {
    config: Arc<config::Listener>,
    bound: SocketAddr,
    handler: Arc<ArcSwap<Handler>>,
    stop: CancellationToken,
}

impl Proxy {
    /// Binds and starts everything the bootstrap names statically; returns
    /// once every listener is accepting. With dynamic resources, `/ready`
    /// stays 503 until `mark_ready` (the first xDS config applied).
    pub async fn start(bootstrap: config::Bootstrap) -> Result<Proxy, StartError> {
        let registry = Arc::new(Registry::default());
        let clusters = Arc::new(ArcSwap::from_pointee(ClusterMap::default()));
        let state = Arc::new(AdminState {
            registry: registry.clone(),
            config: ArcSwap::from_pointee(bootstrap.clone()),
            clusters: clusters.clone(),
            ready: false.into(),
            draining: false.into(),
            loaded_at: SystemTime::now(),
            quit: CancellationToken::new(),
            xds: Default::default(),
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
        let proxy = Proxy {
            admin,
            state,
            registry,
            clusters,
            listeners: Mutex::new(HashMap::new()),
            sinks: Mutex::new(HashMap::new()),
            drain: CancellationToken::new(),
            tracker: TaskTracker::new(),
            admin_stop,
        };
        proxy.apply_clusters(&bootstrap.clusters);
        proxy.apply_listeners(&bootstrap.listeners)?;
        if bootstrap.dynamic.is_none() {
            // Every socket is bound and listening: connections queue from here on.
            proxy.mark_ready();
        }
        Ok(proxy)
    }

    /// `/ready` answers 200 from now on (until a drain).
    pub fn mark_ready(&self) {
        self.state.ready.store(true, Relaxed);
    }

    pub fn listener(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.lock().ok()?.get(name).map(|l| l.bound)
    }

    /// Bound addresses by listener name (port 0 in the config becomes the real port).
    pub fn listener_addrs(&self) -> HashMap<String, SocketAddr> {
        match self.listeners.lock() {
            Ok(l) => l.iter().map(|(n, r)| (n.clone(), r.bound)).collect(),
            Err(_) => HashMap::new(),
        }
    }

    /// Replaces the cluster set. A cluster whose config is unchanged keeps its
    /// runtime; one whose endpoints changed keeps the pools of the endpoints
    /// that remain. Requests in flight finish on the map they loaded.
    pub fn apply_clusters(&self, clusters: &[Arc<config::Cluster>]) {
        let old = self.clusters.load_full();
        let next = ClusterMap::rebuild(&old, clusters, &self.registry);
        self.clusters.store(Arc::new(next));
        self.update_dump(|b| b.clusters = clusters.to_vec());
    }

    /// Replaces the listener set: new listeners are bound, changed ones take
    /// the new config in place (a new address means a new socket), removed
    /// ones stop accepting and their connections drain.
    pub fn apply_listeners(&self, listeners: &[Arc<config::Listener>]) -> Result<(), StartError> {
        let Ok(mut running) = self.listeners.lock() else {
            return Ok(());
        };
        let wanted: HashMap<&str, &Arc<config::Listener>> = listeners.iter().map(|l| (l.name.as_str(), l)).collect();
        // Removed, or moved to another address: stop accepting first, so a
        // moved listener can take its new address.
        let gone: Vec<String> = running
            .iter()
            .filter(|(name, r)| wanted.get(name.as_str()).is_none_or(|l| l.address != r.config.address))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            if let Some(r) = running.remove(&name) {
                tracing::info!(listener = %name, "listener removed: draining its connections");
                r.stop.cancel();
            }
        }
        for l in listeners {
            match running.get_mut(&l.name) {
                Some(r) => {
                    // Rebuilt every time: cheap, and route tables hold compiled
                    // regexes that cannot be compared.
                    let previous = r.handler.load_full();
                    r.handler
                        .store(Arc::new(self.handler(l, r.bound.port(), Some(&previous))?));
                    r.config = l.clone();
                }
                None => {
                    let socket = listener::bind(l.address).map_err(|source| StartError::Bind {
                        name: l.name.clone(),
                        address: l.address,
                        source,
                    })?;
                    let bound = socket.local_addr().unwrap_or(l.address);
                    let handler = Arc::new(ArcSwap::from_pointee(self.handler(l, bound.port(), None)?));
                    let stop = self.drain.child_token();
                    let stats = self.registry.listener(&stat_address(bound));
                    tokio::spawn(listener::accept_loop(
                        socket,
                        handler.clone(),
                        stats,
                        stop.clone(),
                        self.tracker.clone(),
                    ));
                    running.insert(
                        l.name.clone(),
                        RunningListener {
                            config: l.clone(),
                            bound,
                            handler,
                            stop,
                        },
                    );
                }
            }
        }
        drop(running);
        self.update_dump(|b| b.listeners = listeners.to_vec());
        Ok(())
    }

    /// The listener's handler; `previous` (the one it replaces) lends state that outlives a
    /// config update, such as unchanged rate limits' token buckets.
    fn handler(&self, l: &config::Listener, port: u16, previous: Option<&Handler>) -> Result<Handler, StartError> {
        Ok(match &l.filter {
            NetworkFilter::Http(hcm) => {
                let mut logs = Vec::new();
                for al in &hcm.access_logs {
                    logs.push((al.format.clone(), self.sink(&al.path)?));
                }
                let stats = self.registry.http(&hcm.stat_prefix);
                let previous = match previous {
                    Some(Handler::Http(p)) => Some(&p.filters),
                    _ => None,
                };
                let filters = HttpFilters::new(hcm, &self.registry, previous);
                Handler::Http(Arc::new(
                    HttpProxy::new(hcm.clone(), self.clusters.clone(), stats, port, logs).with_filters(filters),
                ))
            }
            NetworkFilter::Tcp(tcp) => Handler::Tcp(Arc::new(TcpProxyRuntime {
                config: tcp.clone(),
                clusters: self.clusters.clone(),
                stats: self.registry.tcp(&tcp.stat_prefix),
            })),
        })
    }

    fn sink(&self, path: &str) -> Result<Arc<Sink>, StartError> {
        let Ok(mut sinks) = self.sinks.lock() else {
            return Sink::open(path).map(Arc::new).map_err(|source| StartError::AccessLog {
                path: path.into(),
                source,
            });
        };
        if let Some(s) = sinks.get(path) {
            return Ok(s.clone());
        }
        let s = Arc::new(Sink::open(path).map_err(|source| StartError::AccessLog {
            path: path.into(),
            source,
        })?);
        sinks.insert(path.to_string(), s.clone());
        Ok(s)
    }

    /// Keeps `/config_dump` showing what is in force.
    fn update_dump(&self, f: impl FnOnce(&mut config::Bootstrap)) {
        let mut b = (**self.state.config.load()).clone();
        f(&mut b);
        self.state.config.store(Arc::new(b));
    }

    /// Resolves when the proxy was asked to stop (`/quitquitquit`).
    pub async fn quit_requested(&self) {
        self.state.quit.cancelled().await
    }

    /// Stops accepting, lets connections finish (HTTP/1.1 after the request
    /// in flight, HTTP/2 after GOAWAY) for up to `timeout`, and returns
    /// whether everything finished in time.
    pub async fn drain(&self, timeout: Duration) -> bool {
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
