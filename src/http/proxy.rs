//! One HTTP request through the proxy, top to bottom: sanitize headers,
//! match a route, arm the stream's timers (`stream_timers.rs`), answer
//! directly or pick a cluster and endpoint, start the route's mirrors
//! (`mirror.rs`), forward, and send the response back with the route's header
//! mutations. Failures become local replies classified in `error.rs`.

use std::{net::SocketAddr, sync::Arc, time::Instant as StdInstant};

use arc_swap::ArcSwap;
use http::{
    header::{self, HeaderName, HeaderValue},
    Request, Response, StatusCode, Version,
};
use http_body::Body as _;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::{
    body::ProxyBody,
    client::Release,
    error::{local_reply, ProxyError},
    filters::{with_delay_flag, Applied, HttpFilters},
    headers::{apply_request_ops, apply_response_ops, strip_hop_by_hop, upgrade_type},
    mirror::{self, Mirroring},
    request::{append_xff, new_request_id, request_host, validate, LoggedRequest},
    request_body::{Downstream, RequestBody},
    rewrite,
    route::{is_grpc, RouteHit, RouteTable},
    stream_timers::StreamTimers,
    timeouts,
    upstream::{self, Forwarded, Held},
};
use crate::{
    balance::{hash::request_hash, ClusterActive, ClusterMap, ClusterRuntime, HostActive},
    config::{
        ClusterTarget, HeaderOps, HttpConnectionManager, Route, RouteAction, ServerHeader, UpstreamProtocol,
        VirtualHost, WeightedCluster,
    },
    policy::{grpc_timeout::Deadlines, retry_state::DEFAULT_REPLAY_LIMIT},
    telemetry::{
        access_log::{Entry, Format, Sink},
        stats::{ActiveGuard, HttpStats},
    },
};

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_ENVOY_UPSTREAM_TIME: HeaderName = HeaderName::from_static("x-envoy-upstream-service-time");
static X_ENVOY_OVERLOADED: HeaderName = HeaderName::from_static("x-envoy-overloaded");

/// Everything one HTTP connection manager needs, built once per config.
pub struct HttpProxy {
    pub hcm: Arc<HttpConnectionManager>,
    pub routes: RouteTable,
    pub clusters: Arc<ArcSwap<ClusterMap>>,
    pub stats: Arc<HttpStats>,
    pub listener_port: u16,
    pub access_logs: Vec<(Arc<Format>, Arc<Sink>)>,
    /// The HTTP filters before the router (none unless `with_filters`).
    pub filters: HttpFilters,
    server_name: HeaderValue,
}

/// The downstream connection a request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    pub local: SocketAddr,
}

/// A failed request: the error, and the route it had matched (if any), whose
/// response header mutations a local reply still gets, as in Envoy.
struct Failure<'a> {
    error: ProxyError,
    route: Option<RouteRef<'a>>,
}

#[derive(Clone, Copy)]
struct RouteRef<'a> {
    vh: &'a VirtualHost,
    route: &'a Route,
    weighted: Option<&'a HeaderOps>,
}

/// A request's matched route and what was decided with it, for the part of the
/// request the stream's timers cover.
struct Matched<'a> {
    at: RouteRef<'a>,
    index: (usize, usize),
    picked: Option<(&'a str, Option<&'a WeightedCluster>)>,
    deadlines: Deadlines,
    timers: Option<StreamTimers>,
    conn: ConnInfo,
}

fn fail(error: ProxyError, at: RouteRef<'_>) -> Failure<'_> {
    Failure { error, route: Some(at) }
}

impl From<ProxyError> for Failure<'_> {
    fn from(error: ProxyError) -> Self {
        Failure { error, route: None }
    }
}

/// What the access log and stats need to know about how a request ended.
struct Outcome {
    flag: &'static str,
    details: &'static str,
    cluster: Option<Arc<ClusterRuntime>>,
    upstream: Option<SocketAddr>,
    route_name: String,
    /// Whether an access log will read this outcome (route name copied only then).
    logged: bool,
    /// What the HTTP filters did, for the response.
    filters: Applied,
}

impl HttpProxy {
    pub fn new(
        hcm: Arc<HttpConnectionManager>,
        clusters: Arc<ArcSwap<ClusterMap>>,
        stats: Arc<HttpStats>,
        listener_port: u16,
        access_logs: Vec<(Arc<Format>, Arc<Sink>)>,
    ) -> HttpProxy {
        let routes = RouteTable::new(hcm.route_config.clone(), hcm.strip_port);
        let server_name = HeaderValue::from_str(&hcm.server_name).unwrap_or(HeaderValue::from_static("envoy"));
        HttpProxy {
            hcm,
            routes,
            clusters,
            stats,
            listener_port,
            access_logs,
            filters: HttpFilters::default(),
            server_name,
        }
    }

    /// Runs `filters` on every request, between route match and the router.
    pub fn with_filters(mut self, filters: HttpFilters) -> HttpProxy {
        self.filters = filters;
        self
    }

    pub async fn handle(&self, mut req: Request<Incoming>, conn: ConnInfo) -> Response<ProxyBody> {
        let started = StdInstant::now();
        let stream_start = Instant::now();
        let stats = &self.stats;
        stats.downstream_rq_total.inc();
        let _active = ActiveGuard::new(&stats.downstream_rq_active);
        if req.version() == Version::HTTP_2 {
            stats.downstream_rq_http2_total.inc();
        } else {
            stats.downstream_rq_http1_total.inc();
        }
        let grpc = is_grpc(req.headers());
        let version = req.version();
        let logged = (!self.access_logs.is_empty()).then(|| LoggedRequest::capture(&req));

        let mut outcome = Outcome {
            flag: "",
            details: "via_upstream",
            cluster: None,
            upstream: None,
            route_name: String::new(),
            logged: logged.is_some(),
            filters: Applied::default(),
        };
        let request_id = self.prepare_request(&mut req, conn);
        let result = match validate(&req) {
            Ok(()) => self.route_and_forward(req, &mut outcome, conn, stream_start).await,
            Err(e) => Err(e.into()),
        };
        let mut resp = match result {
            Ok(resp) => resp,
            Err(Failure { error: e, route }) => {
                outcome.flag = e.flag();
                outcome.details = e.details();
                tracing::debug!(error = %e, flag = e.flag(), "local reply");
                let mut resp = local_reply(&e, grpc);
                if matches!(e, ProxyError::Overflow(_)) && !self.hcm.suppress_envoy_headers {
                    resp.headers_mut()
                        .insert(&X_ENVOY_OVERLOADED, HeaderValue::from_static("true"));
                }
                if let Some(r) = route {
                    self.route_response_ops(&mut resp, r.vh, r.route, r.weighted);
                }
                if e.closes_connection() && version != Version::HTTP_2 {
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                resp
            }
        };
        outcome.filters.encode(resp.headers_mut());
        if outcome.filters.delayed {
            outcome.flag = with_delay_flag(outcome.flag);
        }
        // The downstream speaks its own protocol, whatever the upstream spoke;
        // HTTP/1.x is answered as HTTP/1.1, as Envoy does.
        *resp.version_mut() = if version == Version::HTTP_2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        self.finish_response(&mut resp, request_id);
        let status = resp.status().as_u16();
        stats.response(status);
        if let Some(logged) = logged {
            self.log(&logged, &resp, &outcome, conn, started);
        }
        resp
    }

    /// Downstream header sanitation, as Envoy's connection manager does it
    /// before routing. Returns the request id, when one is echoed back.
    fn prepare_request(&self, req: &mut Request<Incoming>, conn: ConnInfo) -> Option<HeaderValue> {
        let hcm = &*self.hcm;
        let headers = req.headers_mut();
        if hcm.use_remote_address && !hcm.skip_xff_append {
            append_xff(headers, conn.remote);
        }
        if hcm.use_remote_address || !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        }
        // Envoy regenerates the request id of an edge request unless told to keep it.
        let regenerate = hcm.use_remote_address && !hcm.preserve_external_request_id;
        if hcm.generate_request_id && (regenerate || !headers.contains_key(&X_REQUEST_ID)) {
            headers.insert(&X_REQUEST_ID, new_request_id());
        }
        if hcm.always_set_request_id_in_response {
            headers.get(&X_REQUEST_ID).cloned()
        } else {
            None
        }
    }

    async fn route_and_forward(
        &self,
        mut req: Request<Incoming>,
        outcome: &mut Outcome,
        conn: ConnInfo,
        stream_start: Instant,
    ) -> Result<Response<ProxyBody>, Failure<'_>> {
        // Route on borrowed host and path: the matched route borrows the
        // config, not the request, so nothing is copied per request.
        let found = {
            let host = request_host(&req);
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            self.routes.find_hit(host, self.listener_port, path, req.headers())
        };
        let Some(RouteHit { vh, route, index }) = found else {
            if !self.filters.is_empty() {
                // The filters run before the router finds no route.
                self.filters
                    .decode(None, req.headers_mut(), None, &mut outcome.filters)
                    .await?;
            }
            self.stats.no_route.inc();
            return Err(ProxyError::NoRoute.into());
        };
        let mut at = RouteRef {
            vh,
            route,
            weighted: None,
        };
        if outcome.logged {
            outcome.route_name.clone_from(&route.name);
        }
        // Envoy picks the weighted cluster when it resolves the route, before the filters run
        // (the fault filter's upstream_cluster sees the pick).
        let picked = match &route.action {
            RouteAction::Forward(f) => Some(pick_cluster(&f.target)),
            RouteAction::Direct(_) => None,
        };
        at.weighted = picked.and_then(|(_, w)| w).map(|w| &w.headers);
        // Envoy arms the stream's max-duration and idle timers once the route is
        // resolved, before the filters run; they cover everything from here on.
        let (deadlines, idle) = timeouts::route_limits(&self.hcm, route, req.headers());
        let timers = StreamTimers::new(stream_start, deadlines.stream, idle, self.stats.clone());
        if let (Some(t), true) = (&timers, req.body().is_end_stream()) {
            t.complete_request();
        }
        let matched = Matched {
            at,
            index,
            picked,
            deadlines,
            timers: timers.clone(),
            conn,
        };
        let Some(timers) = timers else {
            return self.forward_matched(req, outcome, matched).await;
        };
        match timers.guard(self.forward_matched(req, outcome, matched)).await {
            Ok(result) => result,
            Err(expired) => Err(fail(expired.error(timers.request_complete()), at)),
        }
    }

    /// The request on its matched route, under the stream's timers: the
    /// filters, then a direct response or the upstream.
    async fn forward_matched<'a>(
        &'a self,
        mut req: Request<Incoming>,
        outcome: &mut Outcome,
        matched: Matched<'a>,
    ) -> Result<Response<ProxyBody>, Failure<'a>> {
        let Matched {
            at,
            index,
            picked,
            deadlines,
            timers,
            conn,
        } = matched;
        let RouteRef { vh, route, .. } = at;
        // Route match -> fault injection -> rate limit, in the configured order.
        if !self.filters.is_empty() {
            let cluster = picked.map(|(name, _)| name);
            self.filters
                .decode(Some(index), req.headers_mut(), cluster, &mut outcome.filters)
                .await
                .map_err(|e| fail(e, at))?;
        }
        let action = match &route.action {
            RouteAction::Direct(d) => {
                self.stats.rq_direct_response.inc();
                outcome.details = "direct_response";
                let mut resp = Response::new(d.body.clone().map(ProxyBody::full).unwrap_or_else(ProxyBody::empty));
                *resp.status_mut() = d.status;
                if d.body.is_some() {
                    resp.headers_mut()
                        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                }
                self.route_response_ops(&mut resp, vh, route, None);
                // As Envoy: answering before the request body was read closes the connection.
                if !req.body().is_end_stream() && req.version() != Version::HTTP_2 {
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                return Ok(resp);
            }
            RouteAction::Forward(f) => f,
        };

        let upgrade = upgrade_type(&req);
        if let Some(kind) = &upgrade {
            if !self.hcm.upgrades.iter().any(|u| u.eq_ignore_ascii_case(kind)) {
                return Err(fail(ProxyError::UpgradeNotAllowed(kind.clone()), at));
            }
        }

        // `picked` is always set for a forwarding route; the fallback only keeps this total.
        let (cluster_name, weighted) = picked.unwrap_or_else(|| pick_cluster(&action.target));
        // The cluster set as it is now (an update swaps it whole).
        let Some(cluster) = self.clusters.load().get(cluster_name).cloned() else {
            self.stats.no_cluster.inc();
            let e = ProxyError::NoCluster(cluster_name.to_string());
            let mut resp = local_reply(&e, is_grpc(req.headers()));
            *resp.status_mut() = action.cluster_not_found_status;
            outcome.flag = e.flag();
            outcome.details = e.details();
            return Ok(resp);
        };
        outcome.cluster = Some(cluster.clone());

        // The request hash, of the request as it arrived: Envoy's router hashes
        // (chooseHost) before it finalizes the headers and rewrites. Only the
        // consistent-hash balancers read it.
        let hash = if cluster.config.lb.needs_hash() && !action.hash_policy.is_empty() {
            let source = conn.remote.ip();
            request_hash(&action.hash_policy, req.headers(), req.uri().query(), Some(source))
        } else {
            None
        };

        // Request header mutations, most specific first (Envoy's default order).
        let rc = &self.routes.config;
        {
            let headers = req.headers_mut();
            if let Some(w) = weighted {
                apply_request_ops(headers, &w.headers);
            }
            apply_request_ops(headers, &route.headers);
            apply_request_ops(headers, &vh.headers);
            apply_request_ops(headers, &rc.headers);
        }
        let upstream_h2 = upgrade.is_none() && cluster.config.protocol == UpstreamProtocol::Http2;
        let form = rewrite::UpstreamForm {
            upgrade: upgrade.is_some(),
            http2: upstream_h2,
            suppress_envoy_headers: self.hcm.suppress_envoy_headers,
        };
        rewrite::to_upstream(&mut req, route, action, form).map_err(|e| fail(e, at))?;
        timeouts::set_headers(req.headers_mut(), action, &deadlines, self.hcm.suppress_envoy_headers);

        let route_timeout = deadlines.route;
        let deadline = route_timeout.and_then(|t| Instant::now().checked_add(t));
        let upstream_started = StdInstant::now();
        let cstats = &cluster.stats;
        let result = if upgrade.is_some() {
            // An upgrade is one attempt on a connection of its own.
            let downstream_upgrade = hyper::upgrade::on(&mut req);
            if action.attempt_count.request {
                req.headers_mut()
                    .insert(upstream::X_ENVOY_ATTEMPT_COUNT, HeaderValue::from(1u32));
            }
            let Some(endpoint) = cluster.pick_where(hash, |_| true) else {
                cstats.upstream_cx_none_healthy.inc();
                return Err(fail(ProxyError::NoHealthyUpstream, at));
            };
            outcome.upstream = Some(endpoint.address);
            cstats.upstream_rq_total.inc();
            endpoint.stats.rq_total.inc();
            let Some(slot) = cluster.breaker.try_request() else {
                cstats.upstream_rq_active_overflow.inc();
                return Err(fail(ProxyError::Overflow("max_requests"), at));
            };
            let held = Held {
                request_slot: slot,
                host_active: HostActive::new(&endpoint.stats),
                cluster_active: ClusterActive::new(&cluster.stats),
            };
            let sent = endpoint.send_upgrade(req.map(|body| RequestBody::Stream(Downstream::plain(body))));
            upstream::with_deadline(deadline, sent).await.map(|resp| {
                (
                    Forwarded {
                        resp,
                        release: Release::None,
                        endpoint: endpoint.clone(),
                        held,
                        attempts: 1,
                    },
                    Some(downstream_upgrade),
                )
            })
        } else {
            // Mirrors get the request as it goes upstream, and its body as it is
            // read; Envoy starts none when the primary has no host to go to.
            let policies = if cluster.endpoints.is_empty() {
                &[][..]
            } else {
                &action.mirrors[..]
            };
            let mirrors = mirror::start(
                policies,
                &req,
                &Mirroring {
                    clusters: &self.clusters.load(),
                    timeout: route_timeout,
                    local: conn.local,
                    primary: &cluster.stats,
                    limit: DEFAULT_REPLAY_LIMIT,
                },
            );
            let req = req.map(|body| RequestBody::Stream(Downstream::new(body, timers.clone(), mirrors)));
            let opts = upstream::SendOptions {
                retry: action.retry.as_deref(),
                route_timeout,
                deadline,
                hash,
                attempt_count_header: action.attempt_count.request,
            };
            let sent = upstream::forward(&cluster, req, opts, &mut outcome.upstream);
            upstream::with_deadline(deadline, sent).await.map(|f| (f, None))
        };
        let (forwarded, downstream_upgrade) = match result {
            Ok(r) => r,
            Err(e) => {
                if matches!(e, ProxyError::UpstreamTimeout) {
                    cstats.upstream_rq_timeout.inc();
                    self.stats.downstream_rq_timeout.inc();
                }
                return Err(fail(e, at));
            }
        };
        let Forwarded {
            mut resp,
            release,
            endpoint: _,
            held,
            attempts,
        } = forwarded;
        let status = resp.status();
        cstats.response(status.as_u16());

        let upgraded = status == StatusCode::SWITCHING_PROTOCOLS && upgrade.is_some();
        if let (true, Some(down)) = (upgraded, downstream_upgrade) {
            self.stats.downstream_cx_upgrades_total.inc();
            super::upgrade::splice(&mut resp, down);
        } else {
            strip_hop_by_hop(resp.headers_mut());
        }
        if !self.hcm.suppress_envoy_headers {
            let ms = upstream_started.elapsed().as_millis() as u64;
            resp.headers_mut().insert(&X_ENVOY_UPSTREAM_TIME, HeaderValue::from(ms));
        }
        if action.attempt_count.response {
            resp.headers_mut()
                .insert(upstream::X_ENVOY_ATTEMPT_COUNT, HeaderValue::from(attempts));
        }
        let (parts, body) = resp.into_parts();
        let body = if upgraded {
            ProxyBody::empty()
        } else {
            ProxyBody::upstream(body, release, deadline, cluster.stats.clone(), held, timers)
        };
        let mut resp = Response::from_parts(parts, body);
        self.route_response_ops(&mut resp, vh, route, weighted.map(|w| &w.headers));
        Ok(resp)
    }

    fn route_response_ops(
        &self,
        resp: &mut Response<ProxyBody>,
        vh: &VirtualHost,
        route: &Route,
        weighted: Option<&crate::config::HeaderOps>,
    ) {
        let headers = resp.headers_mut();
        if let Some(w) = weighted {
            apply_response_ops(headers, w);
        }
        apply_response_ops(headers, &route.headers);
        apply_response_ops(headers, &vh.headers);
        apply_response_ops(headers, &self.routes.config.headers);
    }

    fn finish_response(&self, resp: &mut Response<ProxyBody>, request_id: Option<HeaderValue>) {
        let headers = resp.headers_mut();
        match self.hcm.server_header {
            ServerHeader::Overwrite => {
                headers.insert(header::SERVER, self.server_name.clone());
            }
            ServerHeader::AppendIfAbsent => {
                if !headers.contains_key(header::SERVER) {
                    headers.insert(header::SERVER, self.server_name.clone());
                }
            }
            ServerHeader::PassThrough => {}
        }
        if let Some(id) = request_id {
            headers.insert(&X_REQUEST_ID, id);
        }
    }

    fn log(
        &self,
        req: &LoggedRequest,
        resp: &Response<ProxyBody>,
        outcome: &Outcome,
        conn: ConnInfo,
        started: StdInstant,
    ) {
        let req_header = |name: &str| req.header(name);
        let resp_header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let entry = Entry {
            start: Some(req.start),
            protocol: req.protocol,
            status: resp.status().as_u16(),
            flags: outcome.flag,
            details: outcome.details,
            bytes_received: 0,
            bytes_sent: 0,
            duration_ms: started.elapsed().as_millis() as u64,
            upstream_host: outcome.upstream,
            upstream_cluster: outcome.cluster.as_ref().map(|c| c.name()).unwrap_or(""),
            route_name: &outcome.route_name,
            downstream_remote: Some(conn.remote),
            downstream_local: Some(conn.local),
            request_header: Some(&req_header),
            response_header: Some(&resp_header),
        };
        for (format, sink) in &self.access_logs {
            sink.write(&format.render(&entry));
        }
    }
}

/// The cluster a route sends to: its one cluster, or a weighted pick.
fn pick_cluster(target: &ClusterTarget) -> (&str, Option<&WeightedCluster>) {
    match target {
        ClusterTarget::Single(name) => (name.as_str(), None),
        ClusterTarget::Weighted(w) => {
            let c = w.pick(fastrand::u64(..w.total));
            (c.name.as_str(), Some(c))
        }
    }
}
