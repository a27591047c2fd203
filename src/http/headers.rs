//! Header rules shared by the request path: hop-by-hop stripping, upgrade
//! detection, and the route-level add/remove mutations with Envoy's append
//! actions.

use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Version};

use crate::config::{AppendAction, HeaderAdd, HeaderOps};

/// Request headers Envoy's router reads and removes before forwarding.
const ROUTER_CONTROL: &[&str] = &[
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-max-retries",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-hedge-on-per-try-timeout",
    "x-envoy-retriable-status-codes",
    "x-envoy-retriable-header-names",
    "x-envoy-internal",
    "x-envoy-force-trace",
];

/// What to drop from a message before forwarding it.
#[derive(Clone, Copy)]
pub enum Sanitize {
    /// A request: hop-by-hop headers, `expect` (the proxy answers 100-continue
    /// itself), `x-forwarded-client-cert` (SANITIZE) and the router's
    /// `x-envoy-*` control headers.
    Request { keep_upgrade: bool },
    /// A response: hop-by-hop headers.
    Response,
}

/// Removes the connection-specific headers of RFC 9110 §7.6.1 (and those the
/// `Connection` header names), keeping `te: trailers` for gRPC, plus what
/// `mode` adds. One pass over the names; the map is only searched by key when
/// something is actually there to remove, which for most messages is nothing.
pub fn sanitize(headers: &mut HeaderMap, mode: Sanitize) {
    let keep_upgrade = matches!(mode, Sanitize::Request { keep_upgrade: true });
    let request = matches!(mode, Sanitize::Request { .. });
    let mut doomed: Vec<HeaderName> = Vec::new();
    let mut named_by_connection = false;
    for (name, value) in headers.iter() {
        let n = name.as_str();
        let drop = match n {
            "connection" => {
                named_by_connection = true;
                !keep_upgrade
            }
            "keep-alive" | "proxy-connection" | "transfer-encoding" => true,
            "upgrade" => !keep_upgrade,
            "te" => !value.as_bytes().eq_ignore_ascii_case(b"trailers"),
            "expect" | "x-forwarded-client-cert" => request,
            _ => request && n.starts_with("x-envoy-") && ROUTER_CONTROL.contains(&n),
        };
        if drop && !doomed.contains(name) {
            doomed.push(name.clone());
        }
    }
    if named_by_connection && !keep_upgrade {
        // Headers the Connection header lists are hop-by-hop too (but never te).
        for value in headers.get_all(header::CONNECTION) {
            for token in value.to_str().unwrap_or("").split(',') {
                let token = token.trim();
                if token.is_empty() || token.eq_ignore_ascii_case("te") {
                    continue;
                }
                if let Ok(n) = HeaderName::from_bytes(token.to_ascii_lowercase().as_bytes()) {
                    if !doomed.contains(&n) {
                        doomed.push(n);
                    }
                }
            }
        }
    }
    for name in doomed {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Removes hop-by-hop headers (a response's, or a request's without upgrade).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    sanitize(headers, Sanitize::Response)
}

/// The upgrade an HTTP/1.1 request asks for (`Connection: upgrade` plus
/// `Upgrade: <type>`), lower-cased.
pub fn upgrade_type<B>(req: &Request<B>) -> Option<String> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let h = req.headers();
    let conn = h.get(header::CONNECTION)?.to_str().ok()?;
    if !conn.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")) {
        return None;
    }
    let kind = h.get(header::UPGRADE)?.to_str().ok()?;
    Some(kind.trim().to_ascii_lowercase())
}

pub fn apply_request_ops(headers: &mut HeaderMap, ops: &HeaderOps) {
    if ops.is_empty() {
        return;
    }
    for name in &ops.request_remove {
        headers.remove(name);
    }
    for add in &ops.request_add {
        apply_add(headers, add);
    }
}

pub fn apply_response_ops(headers: &mut HeaderMap, ops: &HeaderOps) {
    if ops.is_empty() {
        return;
    }
    for name in &ops.response_remove {
        headers.remove(name);
    }
    for add in &ops.response_add {
        apply_add(headers, add);
    }
}

fn apply_add(headers: &mut HeaderMap, add: &HeaderAdd) {
    if add.value.is_empty() && !add.keep_empty {
        return;
    }
    let value: HeaderValue = add.value.clone();
    match add.action {
        AppendAction::AppendIfExistsOrAdd => {
            headers.append(&add.name, value);
        }
        AppendAction::AddIfAbsent => {
            if !headers.contains_key(&add.name) {
                headers.insert(&add.name, value);
            }
        }
        AppendAction::OverwriteIfExistsOrAdd => {
            headers.insert(&add.name, value);
        }
        AppendAction::OverwriteIfExists => {
            if headers.contains_key(&add.name) {
                headers.insert(&add.name, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_te_trailers_stays() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-private"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-app", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-private").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
        assert_eq!(h.get("x-app").unwrap(), "kept");
    }

    #[test]
    fn request_sanitizing_drops_control_headers_and_keeps_upgrades_when_asked() {
        let mut h = HeaderMap::new();
        h.insert("x-envoy-retry-on", HeaderValue::from_static("5xx"));
        h.insert("x-envoy-decorator-operation", HeaderValue::from_static("kept"));
        h.insert("x-forwarded-client-cert", HeaderValue::from_static("By=..."));
        h.insert(header::EXPECT, HeaderValue::from_static("100-continue"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        let mut up = h.clone();
        sanitize(&mut h, Sanitize::Request { keep_upgrade: false });
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-envoy-decorator-operation"));
        sanitize(&mut up, Sanitize::Request { keep_upgrade: true });
        assert_eq!(up.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(up.get(header::CONNECTION).unwrap(), "upgrade");
        assert!(!up.contains_key("x-envoy-retry-on"));
    }

    #[test]
    fn append_actions_follow_envoy() {
        let add = |action| HeaderAdd {
            name: http::HeaderName::from_static("x-a"),
            value: HeaderValue::from_static("new"),
            action,
            keep_empty: false,
        };
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("old"));
        apply_add(&mut h, &add(AppendAction::AppendIfExistsOrAdd));
        assert_eq!(h.get_all("x-a").iter().count(), 2);
        apply_add(&mut h, &add(AppendAction::OverwriteIfExistsOrAdd));
        assert_eq!(h.get_all("x-a").iter().collect::<Vec<_>>(), vec!["new"]);
        let mut h = HeaderMap::new();
        apply_add(&mut h, &add(AppendAction::OverwriteIfExists));
        assert!(h.get("x-a").is_none());
        apply_add(&mut h, &add(AppendAction::AddIfAbsent));
        assert_eq!(h.get("x-a").unwrap(), "new");
    }
}
