//! Header rules shared by the request path: hop-by-hop stripping, upgrade
//! detection, and the route-level add/remove mutations with Envoy's append
//! actions.

use http::{header, HeaderMap, HeaderValue, Request, Version};

use crate::config::{AppendAction, HeaderAdd, HeaderOps};

/// Removes the connection-specific headers of RFC 9110 §7.6.1 (and those the
/// `Connection` header names). `te: trailers` survives, as gRPC needs it.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if let Some(conn) = headers.remove(header::CONNECTION) {
        if let Ok(list) = conn.to_str() {
            for name in list.split(',') {
                let name = name.trim();
                if !name.is_empty() && !name.eq_ignore_ascii_case("te") {
                    headers.remove(name);
                }
            }
        }
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::UPGRADE);
    if let Some(te) = headers.get(header::TE) {
        if !te.as_bytes().eq_ignore_ascii_case(b"trailers") {
            headers.remove(header::TE);
        }
    }
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
