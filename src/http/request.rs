//! What the request path needs to know about a downstream request, apart
//! from routing: the checks Envoy's codec and connection manager make, the
//! Host it names, the headers the proxy adds (x-forwarded-for, a request id),
//! and what the access log keeps of it.

use std::{net::SocketAddr, time::SystemTime};

use http::{
    header::{self, HeaderValue},
    HeaderMap, Method, Request, Version,
};
use hyper::body::Incoming;

use super::error::ProxyError;

static X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

/// The parts of a request the access log needs after the request is gone.
pub(super) struct LoggedRequest {
    pub(super) start: SystemTime,
    pub(super) protocol: &'static str,
    method: String,
    path: String,
    authority: String,
    headers: HeaderMap,
}

impl LoggedRequest {
    pub(super) fn capture(req: &Request<Incoming>) -> LoggedRequest {
        LoggedRequest {
            start: SystemTime::now(),
            protocol: match req.version() {
                Version::HTTP_2 => "HTTP/2",
                Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            method: req.method().to_string(),
            path: req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default(),
            authority: request_host(req).to_string(),
            headers: req.headers().clone(),
        }
    }

    pub(super) fn header(&self, name: &str) -> Option<String> {
        match name {
            ":method" => Some(self.method.clone()),
            ":path" => Some(self.path.clone()),
            ":authority" | "host" => Some(self.authority.clone()),
            n => self.headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string),
        }
    }
}

/// Downstream protocol checks Envoy's codec and connection manager make
/// before routing (the rest hyper's parser already enforces).
pub(super) fn validate(req: &Request<Incoming>) -> Result<(), ProxyError> {
    if req.version() == Version::HTTP_2 {
        if req.uri().authority().is_none() && !req.headers().contains_key(header::HOST) {
            return Err(ProxyError::BadRequest("missing_host_header"));
        }
        return Ok(());
    }
    // accept_http_10 is off by default: HTTP/1.0 is refused with 426.
    if req.version() < Version::HTTP_11 {
        return Err(ProxyError::Http10NotAllowed);
    }
    if !is_known_method(req.method()) {
        return Err(ProxyError::Codec("unknown method"));
    }
    let h = req.headers();
    // Both framings at once is a request-smuggling vector (RFC 9112 §6.3).
    if h.contains_key(header::CONTENT_LENGTH) && h.contains_key(header::TRANSFER_ENCODING) {
        return Err(ProxyError::Codec("content-length and transfer-encoding"));
    }
    if !h.contains_key(header::HOST) && req.uri().authority().is_none() {
        return Err(ProxyError::BadRequest("missing_host_header"));
    }
    Ok(())
}

/// The HTTP/1 methods Envoy's codec (http-parser's list) accepts.
fn is_known_method(m: &Method) -> bool {
    const EXTRA: &[&str] = &[
        "COPY",
        "LOCK",
        "MKCOL",
        "MOVE",
        "PROPFIND",
        "PROPPATCH",
        "SEARCH",
        "UNLOCK",
        "BIND",
        "REBIND",
        "UNBIND",
        "ACL",
        "REPORT",
        "MKACTIVITY",
        "CHECKOUT",
        "MERGE",
        "M-SEARCH",
        "NOTIFY",
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "PURGE",
        "MKCALENDAR",
        "LINK",
        "UNLINK",
        "SOURCE",
    ];
    matches!(
        *m,
        Method::GET
            | Method::HEAD
            | Method::POST
            | Method::PUT
            | Method::DELETE
            | Method::CONNECT
            | Method::OPTIONS
            | Method::TRACE
            | Method::PATCH
    ) || EXTRA.contains(&m.as_str())
}

/// The Host a request names: :authority for HTTP/2, the Host header for HTTP/1.1.
pub(super) fn request_host<B>(req: &Request<B>) -> &str {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(header::HOST).and_then(|v| v.to_str().ok()))
        .unwrap_or("")
}

pub(super) fn append_xff(headers: &mut HeaderMap, remote: SocketAddr) {
    let ip = remote.ip().to_string();
    let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.is_empty() => format!("{existing},{ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(&X_FORWARDED_FOR, v);
    }
}

/// A random (v4) UUID, as Envoy's default request id.
pub(super) fn new_request_id() -> HeaderValue {
    let mut b: [u8; 16] = fastrand::u128(..).to_le_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 36];
    let mut j = 0;
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[j] = b'-';
            j += 1;
        }
        out[j] = HEX[(byte >> 4) as usize];
        out[j + 1] = HEX[(byte & 0xf) as usize];
        j += 2;
    }
    // 36 ASCII hex digits and dashes are always a valid header value.
    HeaderValue::from_bytes(&out).unwrap_or(HeaderValue::from_static("00000000-0000-4000-8000-000000000000"))
}
