//! The HTTP filters that run after route match and before the router (Envoy's `http_filters`):
//! fault injection and local rate limiting. `policy::{fault, local_ratelimit}` decide; this module
//! holds their state per config (token buckets, the active-faults gauge, stats), resolves each
//! route's configs (its own `typed_per_filter_config`, else its virtual host's, else the
//! connection manager's), runs them in the configured order, and applies what they decided: it
//! sleeps for a delay, fails the request with the local reply's error, and adds headers.

use std::{collections::HashMap, sync::Arc};

use http::HeaderMap;
use tokio::time::Instant;

use super::{
    error::ProxyError,
    headers::{apply_request_ops, apply_response_ops},
};
use crate::{
    config::{HeaderOps, HttpConnectionManager, HttpFilter},
    policy::{
        fault::{self, ActiveFaultGuard, FaultConfig},
        local_ratelimit::{self, LimitOutcome, LocalRateLimitConfig, TokenBucket},
    },
    telemetry::stats::{FaultFilterStats, LocalRateLimitFilterStats, Registry},
};

/// The filters of one connection manager, built once per config.
#[derive(Default)]
pub struct HttpFilters {
    /// The connection manager's configs, in order.
    chain: Vec<Filter>,
    /// The chain of each route (by virtual host and route index) whose route or virtual host
    /// replaces a filter's config.
    routes: HashMap<(usize, usize), Vec<Filter>>,
}

#[derive(Clone)]
enum Filter {
    Fault(Arc<FaultFilter>),
    LocalRateLimit(Arc<RateLimitFilter>),
}

struct FaultFilter {
    config: Arc<FaultConfig>,
    stats: Arc<FaultFilterStats>,
}

struct RateLimitFilter {
    name: String,
    config: Arc<LocalRateLimitConfig>,
    headers: Arc<HeaderOps>,
    bucket: Arc<TokenBucket>,
    stats: Arc<LocalRateLimitFilterStats>,
}

/// What the filters did to one request, kept until its response is sent.
#[derive(Default)]
pub struct Applied {
    /// Rate limits the request took a token from, or tried to: their x-ratelimit-* headers go on
    /// the response, whoever answers it (Envoy's encodeHeaders).
    rate_limits: Vec<(Arc<RateLimitFilter>, LimitOutcome)>,
    /// The rate limit that rejected the request: its response_headers_to_add go on the reply.
    rejected_by: Option<Arc<RateLimitFilter>>,
    /// The request counts as one active fault per fault filter until it ends.
    active_faults: Vec<ActiveFaultGuard>,
    /// A delay was injected (response flag DI).
    pub delayed: bool,
}

impl HttpFilters {
    /// Builds every config's state. A connection manager rate limit whose config is unchanged
    /// since `previous` keeps its token bucket, so a config update (an RDS push, say) does not
    /// refill it; per-route configs get new buckets, as Envoy builds new ones with the routes.
    pub fn new(hcm: &HttpConnectionManager, registry: &Registry, previous: Option<&HttpFilters>) -> HttpFilters {
        if hcm.filters.is_empty() {
            return HttpFilters::default();
        }
        let now = Instant::now();
        let build = |f: &HttpFilter, bucket: Option<Arc<TokenBucket>>| match f {
            HttpFilter::Fault { config, .. } => Filter::Fault(Arc::new(FaultFilter {
                config: config.clone(),
                stats: registry.fault(&hcm.stat_prefix),
            })),
            HttpFilter::LocalRateLimit { name, config, headers } => Filter::LocalRateLimit(Arc::new(RateLimitFilter {
                name: name.clone(),
                config: config.clone(),
                headers: headers.clone(),
                bucket: bucket.unwrap_or_else(|| Arc::new(TokenBucket::from_config(config, now))),
                stats: registry.local_ratelimit(&config.stat_prefix),
            })),
        };
        let chain: Vec<Filter> = hcm
            .filters
            .iter()
            .map(|f| build(f, previous.and_then(|p| p.bucket_for(f))))
            .collect();

        // A virtual host's config is one config for all its routes: one bucket, shared.
        let mut built: HashMap<usize, Filter> = HashMap::new();
        let mut routes = HashMap::new();
        for (vi, vh) in hcm.route_config.virtual_hosts.iter().enumerate() {
            for (ri, route) in vh.routes.iter().enumerate() {
                if route.filter_overrides.is_empty() && vh.filter_overrides.is_empty() {
                    continue;
                }
                let mut replaced = false;
                let mut effective = Vec::with_capacity(chain.len());
                for (f, running) in hcm.filters.iter().zip(&chain) {
                    // As resolveMostSpecificPerFilterConfig: the most specific config by name
                    // wins, and is used only if it is of the filter's type.
                    let most_specific = route
                        .filter_overrides
                        .iter()
                        .chain(&vh.filter_overrides)
                        .find(|o| o.name() == f.name());
                    match most_specific {
                        Some(o) if same_type(o, f) => {
                            replaced = true;
                            effective.push(built.entry(config_key(o)).or_insert_with(|| build(o, None)).clone());
                        }
                        _ => effective.push(running.clone()),
                    }
                }
                if replaced {
                    routes.insert((vi, ri), effective);
                }
            }
        }
        HttpFilters { chain, routes }
    }

    pub fn is_empty(&self) -> bool {
        self.chain.is_empty()
    }

    /// The bucket of `previous`'s connection manager rate limit of the same name and config.
    fn bucket_for(&self, f: &HttpFilter) -> Option<Arc<TokenBucket>> {
        let HttpFilter::LocalRateLimit { name, config, .. } = f else {
            return None;
        };
        self.chain.iter().find_map(|running| match running {
            Filter::LocalRateLimit(r) if r.name == *name && *r.config == **config => Some(r.bucket.clone()),
            _ => None,
        })
    }

    /// Runs the filters in order for a request that matched the route at `route` (None: no route
    /// matched; the connection manager's configs still apply, as Envoy's filters run before the
    /// router finds nothing). `route_cluster` is the cluster the route picked. An error is the
    /// request's local reply; `applied` keeps what the response needs either way.
    pub async fn decode(
        &self,
        route: Option<(usize, usize)>,
        headers: &mut HeaderMap,
        route_cluster: Option<&str>,
        applied: &mut Applied,
    ) -> Result<(), ProxyError> {
        let chain = route.and_then(|r| self.routes.get(&r)).unwrap_or(&self.chain);
        for filter in chain {
            match filter {
                Filter::Fault(f) => f.decode(headers, route_cluster, applied).await?,
                Filter::LocalRateLimit(f) => RateLimitFilter::decode(f, headers, applied)?,
            }
        }
        Ok(())
    }
}

fn same_type(a: &HttpFilter, b: &HttpFilter) -> bool {
    matches!(
        (a, b),
        (HttpFilter::Fault { .. }, HttpFilter::Fault { .. })
            | (HttpFilter::LocalRateLimit { .. }, HttpFilter::LocalRateLimit { .. })
    )
}

/// Identifies one per-route config (the address of its shared, immutable config).
fn config_key(f: &HttpFilter) -> usize {
    match f {
        HttpFilter::Fault { config, .. } => Arc::as_ptr(config) as usize,
        HttpFilter::LocalRateLimit { config, .. } => Arc::as_ptr(config) as usize,
    }
}

impl FaultFilter {
    /// FaultFilter::decodeHeaders: the delay first (the request waits before anything goes
    /// upstream), then the abort.
    async fn decode(
        &self,
        headers: &HeaderMap,
        route_cluster: Option<&str>,
        applied: &mut Applied,
    ) -> Result<(), ProxyError> {
        let active = &self.stats.active;
        let decision = fault::decide(
            &self.config,
            headers,
            route_cluster,
            || fastrand::u64(..),
            active.current(),
        );
        self.stats.counters.record(&decision);
        if decision.is_fault() {
            applied.active_faults.push(active.enter());
        }
        if let Some(delay) = decision.delay {
            applied.delayed = true;
            tokio::time::sleep(delay).await;
        }
        match decision.abort {
            Some(abort) => Err(ProxyError::FaultAbort {
                status: abort.http_status(),
                grpc: abort.grpc_status(),
            }),
            None => Ok(()),
        }
    }
}

impl RateLimitFilter {
    /// Filter::decodeHeaders of the local rate limit filter.
    fn decode(this: &Arc<Self>, headers: &mut HeaderMap, applied: &mut Applied) -> Result<(), ProxyError> {
        let outcome = local_ratelimit::decide(&this.config, &this.bucket, Instant::now(), || fastrand::u64(..));
        this.stats.counters.record(outcome);
        if outcome == LimitOutcome::NotEnabled {
            return Ok(());
        }
        applied.rate_limits.push((this.clone(), outcome));
        match outcome {
            LimitOutcome::Limited { enforced: true } => {
                applied.rejected_by = Some(this.clone());
                Err(ProxyError::RateLimited {
                    status: this.config.response_status(),
                    grpc: this.config.grpc_status(),
                })
            }
            LimitOutcome::Limited { enforced: false } => {
                // request_headers_to_add_when_not_enforced (the only request headers held).
                apply_request_ops(headers, &this.headers);
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

impl Applied {
    /// The filters' encodeHeaders, for whatever response the request gets (local replies too):
    /// the rejecting rate limit's response_headers_to_add, then each rate limit's x-ratelimit-*
    /// headers, counted at response time, in Envoy's encode order (last filter first).
    pub fn encode(&self, headers: &mut HeaderMap) {
        if let Some(r) = &self.rejected_by {
            apply_response_ops(headers, &r.headers);
        }
        if self.rate_limits.is_empty() {
            return;
        }
        let now = Instant::now();
        for (f, outcome) in self.rate_limits.iter().rev() {
            for (name, value) in local_ratelimit::x_ratelimit_headers(&f.config, &f.bucket, *outcome, now) {
                headers.append(name, value);
            }
        }
    }
}

/// Envoy's response flags with DelayInjected added, in Envoy's flag order.
pub fn with_delay_flag(flag: &'static str) -> &'static str {
    match flag {
        "" => "DI",
        "UH" => "UH,DI",
        "UT" => "UT,DI",
        "UF" => "UF,DI",
        "UC" => "UC,DI",
        "NR" => "NR,DI",
        "FI" => "DI,FI",
        "RL" => "DI,RL",
        "DPE" => "DI,DPE",
        "UPE" => "DI,UPE",
        "NC" => "DI,NC",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NetworkFilter;

    const RL: &str = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";

    /// An HCM with a rate limit of `max_tokens` named "rl"; route 0 of the one virtual host has its
    /// own config under `route_key`, and the virtual host one under "rl".
    fn hcm(max_tokens: u32, route_key: &str) -> Arc<HttpConnectionManager> {
        let per = |prefix: &str| {
            format!(
                "{{ \"@type\": {RL}, stat_prefix: {prefix}, token_bucket: {{ max_tokens: 1, fill_interval: 1s }} }}"
            )
        };
        let yaml = format!(
            r#"static_resources:
  listeners:
  - address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: t
          route_config:
            virtual_hosts:
            - name: v
              domains: ["*"]
              typed_per_filter_config: {{ rl: {vh} }}
              routes:
              - match: {{ prefix: /own }}
                direct_response: {{ status: 200 }}
                typed_per_filter_config: {{ {route_key}: {route} }}
              - match: {{ prefix: / }}
                direct_response: {{ status: 200 }}
          http_filters:
          - name: rl
            typed_config: {{ "@type": {RL}, stat_prefix: l, token_bucket: {{ max_tokens: {max_tokens}, fill_interval: 1s }} }}
          - name: router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"#,
            vh = per("vh"),
            route = per("route"),
        );
        let b = crate::xds::parse_bootstrap("t.yaml", &yaml).unwrap_or_else(|e| panic!("{e}"));
        match &b.listeners[0].filter {
            NetworkFilter::Http(h) => h.clone(),
            NetworkFilter::Tcp(_) => panic!("not an HCM"),
        }
    }

    fn limiter(chain: &[Filter]) -> &RateLimitFilter {
        match chain {
            [Filter::LocalRateLimit(r)] => r,
            _ => panic!("expected one rate limit"),
        }
    }

    #[test]
    fn an_unchanged_rate_limit_keeps_its_bucket_across_updates() {
        let registry = Registry::default();
        let first = HttpFilters::new(&hcm(5, "rl"), &registry, None);
        let same = HttpFilters::new(&hcm(5, "rl"), &registry, Some(&first));
        let changed = HttpFilters::new(&hcm(6, "rl"), &registry, Some(&first));
        let bucket = |f: &HttpFilters| limiter(&f.chain).bucket.clone();
        assert!(Arc::ptr_eq(&bucket(&first), &bucket(&same)));
        assert!(!Arc::ptr_eq(&bucket(&first), &bucket(&changed)));
    }

    #[test]
    fn the_most_specific_config_wins_and_a_virtual_host_config_is_shared() {
        let registry = Registry::default();
        let f = HttpFilters::new(&hcm(5, "rl"), &registry, None);
        let own = limiter(&f.routes[&(0, 0)]);
        let inherited = limiter(&f.routes[&(0, 1)]);
        assert_eq!(
            (own.config.stat_prefix.as_str(), inherited.config.stat_prefix.as_str()),
            ("route", "vh")
        );
        // A route config under another filter's name leaves the virtual host's in force.
        let f = HttpFilters::new(&hcm(5, "other"), &registry, None);
        let (a, b) = (limiter(&f.routes[&(0, 0)]), limiter(&f.routes[&(0, 1)]));
        assert_eq!(a.config.stat_prefix, "vh");
        assert!(Arc::ptr_eq(&a.bucket, &b.bucket));
        assert_eq!(limiter(&f.chain).config.stat_prefix, "l");
    }

    #[test]
    fn delay_joins_the_response_flags_in_envoy_order() {
        assert_eq!(with_delay_flag(""), "DI");
        assert_eq!(with_delay_flag("UF"), "UF,DI");
        assert_eq!(with_delay_flag("FI"), "DI,FI");
        assert_eq!(with_delay_flag("RL"), "DI,RL");
    }
}
