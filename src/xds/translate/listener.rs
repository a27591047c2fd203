//! `envoy.config.listener.v3.Listener` with its network filters
//! (`http_connection_manager`, `tcp_proxy`) -> `config::Listener`.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use super::{access_log::access_logs, filters, route, tcp::tcp_proxy, Msg};
use crate::config::{self, Codec, Http2Settings, ServerHeader, StripPort};

const HCM: &str = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const TCP_PROXY: &str = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
const ROUTER: &str = "envoy.extensions.filters.http.router.v3.Router";
const TLS_INSPECTOR: &str = "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
const HTTP_INSPECTOR: &str = "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector";
const UUID_REQUEST_ID: &str = "envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig";

pub fn listener(mut m: Msg<'_, '_>) -> Option<config::Listener> {
    let address = match m.msg("address") {
        Some(a) => address(a),
        None => {
            m.field_error("address", "a listener needs an address");
            None
        }
    };
    let mut name = m.string("name");
    if let (true, Some(a)) = (name.is_empty(), address) {
        name = a.to_string();
    }

    let mut chains = m.list("filter_chains");
    if chains.len() > 1 {
        for extra in chains.drain(1..) {
            let path = extra.path.clone();
            extra.abandon();
            m.ctx().error(
                &path,
                "more than one filter chain (filter-chain matching) is not supported yet",
            );
        }
    }
    let filter = match chains.pop() {
        Some(chain) => filter_chain(chain),
        None => {
            m.field_error("filter_chains", "a listener needs a filter chain");
            None
        }
    };

    for mut lf in m.list("listener_filters") {
        lf.ignore("name");
        match lf.any("typed_config") {
            Some((t, inner)) if t == TLS_INSPECTOR || t == HTTP_INSPECTOR => {
                inner.abandon();
                m.ctx().warn(
                    &lf.path,
                    "accepted without effect: no filter chain uses what it inspects",
                );
            }
            Some((t, inner)) => {
                inner.abandon();
                lf.field_error("typed_config", format!("listener filter {t} is not supported yet"));
            }
            None => lf.error("listener filter needs a typed_config"),
        }
    }
    if m.wrapped_bool("bind_to_port") == Some(false) {
        m.field_error("bind_to_port", "listeners that do not bind are not supported yet");
    }
    m.ignore("stat_prefix");
    m.ignore("traffic_direction");
    m.ignore("metadata");
    m.ignore("per_connection_buffer_limit_bytes");
    m.ignore("listener_filters_timeout");
    m.ignore("continue_on_listener_filters_timeout");
    m.ignore("enable_reuse_port");
    m.ignore("reuse_port");
    m.ignore("connection_balance_config");
    m.ignore("drain_type");
    m.ignore("ignore_global_conn_limit");
    m.ignore("tcp_backlog_size");
    m.ignore("max_connections_to_accept_per_socket_event");
    m.advisory(
        "socket_options",
        "accepted without effect: listener socket options are not applied yet",
    );
    m.advisory(
        "access_log",
        "accepted without effect: listener-level access logs are not implemented yet",
    );
    let address = address?;
    let filter = filter?;
    Some(config::Listener { name, address, filter })
}

pub fn address(mut m: Msg<'_, '_>) -> Option<SocketAddr> {
    if let Some(sa) = m.msg("socket_address") {
        return socket_address_inner(sa);
    }
    if m.has("pipe") {
        m.field_error("pipe", "unix socket addresses are not supported yet");
    } else if m.has("envoy_internal_address") {
        m.field_error("envoy_internal_address", "internal listeners are not supported yet");
    } else {
        m.error("address needs a socket_address");
    }
    None
}

/// An `Address` message, for places that only accept a socket address.
pub fn socket_address(m: Msg<'_, '_>) -> Option<SocketAddr> {
    address(m)
}

fn socket_address_inner(mut m: Msg<'_, '_>) -> Option<SocketAddr> {
    let protocol = m.enum_name("protocol");
    if protocol != "TCP" {
        m.field_error("protocol", format!("{protocol} is not supported (only TCP)"));
    }
    m.ignore("ipv4_compat");
    let host = m.string("address");
    if m.has("named_port") {
        m.field_error("named_port", "named ports are not supported");
        return None;
    }
    if m.has("resolver_name") {
        m.field_error("resolver_name", "custom resolvers are not supported");
        return None;
    }
    let port = m.u32("port_value");
    if port > 65535 {
        m.field_error("port_value", format!("{port} is not a port"));
        return None;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => Some(SocketAddr::new(ip, port as u16)),
        Err(_) => {
            m.field_error(
                "address",
                format!("'{host}' is not an IP address (hostnames need a DNS cluster type, not supported yet)"),
            );
            None
        }
    }
}

fn filter_chain(mut m: Msg<'_, '_>) -> Option<config::NetworkFilter> {
    m.ignore("name");
    m.ignore("metadata");
    m.ignore("transport_socket_connect_timeout");
    // Any criterion set inside filter_chain_match is reported as unsupported
    // when the message drops; an empty match is fine.
    drop(m.msg("filter_chain_match"));
    let mut filters = m.list("filters");
    let last = match filters.pop() {
        Some(f) => f,
        None => {
            m.field_error("filters", "a filter chain needs a terminal network filter");
            return None;
        }
    };
    for mut f in filters {
        let name = f.string("name");
        match f.any("typed_config") {
            Some((t, inner)) => {
                let ext = super::extension_name(&t, &inner);
                inner.abandon();
                if super::is_telemetry_only(&ext) {
                    m.ctx().warn(
                        &f.path,
                        format!(
                            "network filter '{name}' ({ext}) only feeds telemetry remora does not produce; skipped"
                        ),
                    );
                } else {
                    f.field_error(
                        "typed_config",
                        format!("network filter '{name}' ({ext}) is not supported yet"),
                    );
                }
            }
            None => f.error(format!("network filter '{name}' needs a typed_config")),
        }
    }
    network_filter(last)
}

fn network_filter(mut f: Msg<'_, '_>) -> Option<config::NetworkFilter> {
    let name = f.string("name");
    if f.has("config_discovery") {
        f.field_error(
            "config_discovery",
            "filter config discovery (ECDS) is not supported yet",
        );
        return None;
    }
    match f.any("typed_config") {
        Some((t, inner)) if t == HCM => {
            http_connection_manager(inner).map(|h| config::NetworkFilter::Http(Arc::new(h)))
        }
        Some((t, inner)) if t == TCP_PROXY => tcp_proxy(inner).map(|t| config::NetworkFilter::Tcp(Arc::new(t))),
        Some((t, inner)) => {
            inner.abandon();
            f.field_error(
                "typed_config",
                format!("network filter '{name}' ({t}) is not supported yet"),
            );
            None
        }
        None => {
            f.error(format!("network filter '{name}' needs a typed_config"));
            None
        }
    }
}

fn http_connection_manager(mut m: Msg<'_, '_>) -> Option<config::HttpConnectionManager> {
    let stat_prefix = m.string("stat_prefix");
    if stat_prefix.is_empty() {
        m.field_error("stat_prefix", "must not be empty");
    }
    let codec = match m.enum_name("codec_type").as_str() {
        "AUTO" => Codec::Auto,
        "HTTP1" => Codec::Http1,
        "HTTP2" => Codec::Http2,
        other => {
            m.field_error("codec_type", format!("{other} is not supported"));
            Codec::Auto
        }
    };
    let mut rds = None;
    if let Some(mut r) = m.msg("rds") {
        if let Some(cs) = r.msg("config_source") {
            super::ads_source(cs);
        }
        let name = r.string("route_config_name");
        if name.is_empty() {
            r.field_error("route_config_name", "must not be empty");
        }
        rds = Some(name);
    }
    if m.has("scoped_routes") {
        m.field_error("scoped_routes", "scoped routes are not supported");
    }
    let route_config = match m.msg("route_config") {
        Some(rc) => route::route_config(rc),
        // Filled in when the RouteConfiguration arrives over xDS.
        None if rds.is_some() => Some(config::RouteConfig {
            name: rds.clone().unwrap_or_default(),
            virtual_hosts: Vec::new(),
            headers: Default::default(),
            ignore_port_in_host_matching: false,
        }),
        None => {
            if !m.ctx().has_errors() {
                m.field_error("route_config", "an HTTP connection manager needs a route_config");
            }
            None
        }
    };

    let mut suppress_envoy_headers = false;
    let mut http_filters = Vec::new();
    let filter_msgs = m.list("http_filters");
    let count = filter_msgs.len();
    // As Envoy: with no http_filters at all, the router is implied.
    let mut have_router = count == 0;
    for (i, mut f) in filter_msgs.into_iter().enumerate() {
        let name = f.string("name");
        let optional = f.bool("is_optional");
        if f.bool("disabled") {
            f.field_error("disabled", "disabled filters (enabled per route) are not supported yet");
            continue;
        }
        if f.has("config_discovery") {
            f.field_error(
                "config_discovery",
                "filter config discovery (ECDS) is not supported yet",
            );
            continue;
        }
        match f.any("typed_config") {
            Some((t, mut router)) if t == ROUTER => {
                if i + 1 != count {
                    f.error("the router must be the last HTTP filter");
                }
                have_router = true;
                suppress_envoy_headers = router.bool("suppress_envoy_headers");
                router.ignore("dynamic_stats");
                router.ignore("suppress_grpc_request_failure_code_stats");
                router.advisory("start_child_span", "accepted without effect: remora does not trace yet");
                router.advisory(
                    "upstream_log",
                    "accepted without effect: upstream access logs are not implemented yet",
                );
                router.advisory(
                    "upstream_log_options",
                    "accepted without effect: upstream access logs are not implemented yet",
                );
            }
            Some((t, inner)) if filters::is_implemented(&t) => {
                http_filters.extend(filters::http_filter(name, &t, inner, false));
            }
            Some((t, inner)) => {
                let t = super::extension_name(&t, &inner);
                inner.abandon();
                if super::is_telemetry_only(&t) {
                    m.ctx().warn(
                        &f.path,
                        format!("HTTP filter '{name}' ({t}) only feeds telemetry remora does not produce; skipped"),
                    );
                } else if optional {
                    // As Envoy: an optional filter whose type is unavailable is skipped.
                    m.ctx().warn(
                        &f.path,
                        format!("optional HTTP filter '{name}' ({t}) is not supported; skipped"),
                    );
                } else {
                    f.field_error(
                        "typed_config",
                        format!("HTTP filter '{name}' ({t}) is not supported yet"),
                    );
                }
            }
            None => f.error(format!(
                "HTTP filter '{name}' needs a typed_config (filters are no longer looked up by name)"
            )),
        }
    }
    if !have_router {
        m.field_error("http_filters", "the last HTTP filter must be the router");
    }

    let mut upgrades = Vec::new();
    for mut u in m.list("upgrade_configs") {
        let kind = u.string("upgrade_type").to_ascii_lowercase();
        let enabled = u.wrapped_bool("enabled").unwrap_or(true);
        if !u.list("filters").is_empty() {
            u.field_error("filters", "upgrade filter chains are not supported");
        }
        if kind != "websocket" {
            u.field_error(
                "upgrade_type",
                format!("upgrade type '{kind}' is not supported yet (only websocket)"),
            );
        } else if enabled {
            upgrades.push(kind);
        }
    }

    let strip_any = m.bool("strip_any_host_port");
    let strip_matching = m.bool("strip_matching_host_port");
    let strip_port = if strip_any {
        StripPort::Any
    } else if strip_matching {
        StripPort::Matching
    } else {
        StripPort::None
    };
    let use_remote_address = m.wrapped_bool("use_remote_address").unwrap_or(false);
    if m.u32("xff_num_trusted_hops") != 0 {
        m.field_error("xff_num_trusted_hops", "trusted XFF hops are not supported yet");
    }
    let skip_xff_append = m.bool("skip_xff_append");
    let generate_request_id = m.wrapped_bool("generate_request_id").unwrap_or(true);
    let preserve_external_request_id = m.bool("preserve_external_request_id");
    let always_set_request_id_in_response = m.bool("always_set_request_id_in_response");
    let server_name = m.string("server_name");
    let server_header = match m.enum_name("server_header_transformation").as_str() {
        "APPEND_IF_ABSENT" => ServerHeader::AppendIfAbsent,
        "PASS_THROUGH" => ServerHeader::PassThrough,
        _ => ServerHeader::Overwrite,
    };
    if let Some((t, mut rid)) = m.msg("request_id_extension").and_then(|mut e| e.any("typed_config")) {
        if t == UUID_REQUEST_ID {
            rid.advisory(
                "pack_trace_reason",
                "accepted without effect: remora does not trace yet",
            );
            rid.ignore("use_request_id_for_trace_sampling");
        } else {
            rid.error(format!("request ID extension {t} is not supported"));
        }
    }
    let fcc = m.enum_name("forward_client_cert_details");
    if fcc != "SANITIZE" {
        m.field_error(
            "forward_client_cert_details",
            format!("{fcc} is not supported yet (only SANITIZE)"),
        );
    }
    let http2 = m.msg("http2_protocol_options").map(http2_settings).unwrap_or_default();
    if let Some(h1) = m.msg("http_protocol_options") {
        http1_options(h1);
    }
    // Envoy's default stream idle timeout is 5 minutes; 0 disables it.
    let stream_idle_timeout = match m.duration_ms("stream_idle_timeout") {
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
        None => Some(Duration::from_secs(300)),
    };
    if m.duration("request_timeout").is_some_and(|d| !d.is_zero()) {
        m.field_error("request_timeout", "request timeouts are not supported yet");
    }
    if m.wrapped_bool("normalize_path") == Some(true) {
        m.field_error("normalize_path", "path normalization is not supported yet");
    }
    if m.bool("merge_slashes") {
        m.field_error("merge_slashes", "merging slashes is not supported yet");
    }
    let escaped = m.enum_name("path_with_escaped_slashes_action");
    if escaped != "IMPLEMENTATION_SPECIFIC_DEFAULT" && escaped != "KEEP_UNCHANGED" {
        m.field_error(
            "path_with_escaped_slashes_action",
            format!("{escaped} is not supported yet"),
        );
    }
    // Envoy's default is 60 KiB and its maximum 8192 KiB.
    let max_request_headers_kb = m.wrapped_u32("max_request_headers_kb").unwrap_or(60);
    if !(1..=8192).contains(&max_request_headers_kb) {
        m.field_error("max_request_headers_kb", "must be between 1 and 8192");
    }
    let access_logs = access_logs(&mut m);
    m.advisory("tracing", "accepted without effect: remora does not trace yet");
    m.advisory(
        "internal_address_config",
        "accepted: remora does not classify internal addresses yet",
    );
    m.advisory(
        "add_user_agent",
        "accepted without effect: user agent headers are not added",
    );
    m.ignore("drain_timeout");
    m.ignore("delayed_close_timeout");
    m.ignore("stream_error_on_invalid_http_message");
    let mut max_stream_duration = None;
    if let Some(mut common) = m.msg("common_http_protocol_options") {
        if common.duration("idle_timeout").is_some_and(|d| !d.is_zero()) {
            common.field_error(
                "idle_timeout",
                "downstream idle timeouts are not enforced yet; set 0s to disable",
            );
        }
        common.ignore("max_headers_count");
        max_stream_duration = common.duration_ms("max_stream_duration").filter(|d| !d.is_zero());
    }

    let route_config = route_config?;
    Some(config::HttpConnectionManager {
        stat_prefix,
        codec,
        route_config: Arc::new(route_config),
        rds,
        strip_port,
        upgrades,
        use_remote_address,
        skip_xff_append,
        generate_request_id,
        preserve_external_request_id,
        always_set_request_id_in_response,
        server_name: if server_name.is_empty() {
            "envoy".to_string()
        } else {
            server_name
        },
        server_header,
        suppress_envoy_headers,
        http2,
        max_request_headers_kb,
        stream_idle_timeout,
        max_stream_duration,
        access_logs,
        filters: http_filters,
    })
}

pub fn http2_settings(mut m: Msg<'_, '_>) -> Http2Settings {
    let d = Http2Settings::default();
    let s = Http2Settings {
        max_concurrent_streams: m
            .wrapped_u32("max_concurrent_streams")
            .unwrap_or(d.max_concurrent_streams),
        initial_stream_window_size: m
            .wrapped_u32("initial_stream_window_size")
            .unwrap_or(d.initial_stream_window_size),
        initial_connection_window_size: m
            .wrapped_u32("initial_connection_window_size")
            .unwrap_or(d.initial_connection_window_size),
    };
    if s.initial_stream_window_size < 65_535 {
        m.field_error("initial_stream_window_size", "must be at least 65535");
    }
    if s.initial_connection_window_size < 65_535 {
        m.field_error("initial_connection_window_size", "must be at least 65535");
    }
    if m.bool("allow_connect") {
        m.field_error("allow_connect", "extended CONNECT is not supported yet");
    }
    m.advisory(
        "connection_keepalive",
        "accepted without effect: HTTP/2 PING keepalives are not sent yet",
    );
    m.ignore("hpack_table_size");
    m.ignore("max_outbound_frames");
    m.ignore("max_outbound_control_frames");
    m.ignore("max_consecutive_inbound_frames_with_empty_payload");
    m.ignore("max_inbound_priority_frames_per_stream");
    m.ignore("max_inbound_window_update_frames_per_data_frame_sent");
    m.ignore("stream_error_on_invalid_http_messaging");
    m.ignore("override_stream_error_on_invalid_http_message");
    m.ignore("allow_metadata");
    s
}

/// HTTP/1 options: only those that change nothing observable are accepted.
pub fn http1_options(mut m: Msg<'_, '_>) {
    m.ignore("override_stream_error_on_invalid_http_message");
    m.ignore("allow_chunked_length");
    m.ignore("header_key_format");
}
