//! A request's rewrites and upstream form (Envoy's router `finalizeRequestHeaders`
//! and the codec): `prefix_rewrite`, `host_rewrite_literal` with their
//! `x-envoy-original-*` headers, header sanitizing, and origin-form with Host
//! for HTTP/1.1 or an absolute URI for HTTP/2.

use http::{
    header::{self, HeaderName, HeaderValue},
    uri::{Authority, PathAndQuery, Scheme},
    Method, Request, Uri, Version,
};
use http_body::Body as _;
use hyper::body::Incoming;

use super::{
    error::ProxyError,
    headers::{sanitize, Sanitize},
    request::request_host,
};
use crate::config::{ForwardAction, PathMatch, Route};

static X_ENVOY_ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");
static X_ENVOY_ORIGINAL_HOST: HeaderName = HeaderName::from_static("x-envoy-original-host");

/// How the request leaves: as an upgrade, over HTTP/2, with or without the
/// `x-envoy-original-*` headers.
#[derive(Debug, Clone, Copy)]
pub(super) struct UpstreamForm {
    pub upgrade: bool,
    pub http2: bool,
    pub suppress_envoy_headers: bool,
}

/// Path and host rewrites, and the request's upstream form: origin-form
/// with Host for HTTP/1.1, absolute URI for HTTP/2.
pub(super) fn to_upstream(
    req: &mut Request<Incoming>,
    route: &Route,
    action: &ForwardAction,
    form: UpstreamForm,
) -> Result<(), ProxyError> {
    let UpstreamForm {
        upgrade,
        http2: upstream_h2,
        suppress_envoy_headers,
    } = form;
    let original = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut path_and_query = original.clone();
    if let Some(new_prefix) = &action.prefix_rewrite {
        let matched_len = match &route.matcher.path {
            PathMatch::Prefix(p) | PathMatch::SeparatedPrefix(p) => Some(p.len()),
            PathMatch::Exact(_) => Some(original.path().len()),
            PathMatch::Regex(_) => None,
        };
        if let Some(n) = matched_len {
            let s = original.as_str();
            let rewritten = format!("{new_prefix}{}", s.get(n..).unwrap_or(""));
            if let Ok(p) = PathAndQuery::try_from(rewritten) {
                path_and_query = p;
                if !suppress_envoy_headers {
                    if let Ok(v) = HeaderValue::from_str(original.as_str()) {
                        req.headers_mut().insert(&X_ENVOY_ORIGINAL_PATH, v);
                    }
                }
            }
        }
    }
    // Hop-by-hop headers, `expect` (hyper answers 100-continue itself when
    // the body is read), x-forwarded-client-cert (SANITIZE, the only mode
    // without mTLS) and the router's x-envoy-* control headers never pass.
    sanitize(req.headers_mut(), Sanitize::Request { keep_upgrade: upgrade });
    if upstream_h2 {
        let authority = match &action.host_rewrite {
            Some(h) => Authority::try_from(h.as_str()).ok(),
            None => Authority::try_from(request_host(req)).ok(),
        };
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = authority.or_else(|| Some(Authority::from_static("localhost")));
        parts.path_and_query = Some(path_and_query);
        *req.uri_mut() = Uri::from_parts(parts).map_err(|_| ProxyError::DownstreamProtocol("invalid request URI"))?;
        req.headers_mut().remove(header::HOST);
        *req.version_mut() = Version::HTTP_2;
    } else {
        // HTTP/1.1 carries the authority in Host: keep the client's unless it
        // is rewritten or the client spoke HTTP/2 (which has no Host header).
        let new_host = match &action.host_rewrite {
            Some(h) => {
                if !suppress_envoy_headers {
                    if let Some(orig) = req.headers().get(header::HOST).cloned() {
                        req.headers_mut().insert(&X_ENVOY_ORIGINAL_HOST, orig);
                    }
                }
                HeaderValue::from_str(h).ok()
            }
            None if !req.headers().contains_key(header::HOST) => req
                .uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
            None => None,
        };
        if let Some(v) = new_host {
            req.headers_mut().insert(header::HOST, v);
        }
        *req.uri_mut() = Uri::from(path_and_query);
        *req.version_mut() = Version::HTTP_11;
        // A bodiless request whose method usually has a body gets an
        // explicit `content-length: 0` (Envoy's HTTP/1 codec does this).
        let bodyless = req.body().is_end_stream()
            && !req.headers().contains_key(header::CONTENT_LENGTH)
            && !req.headers().contains_key(header::TRANSFER_ENCODING);
        if bodyless
            && !matches!(
                *req.method(),
                Method::GET | Method::HEAD | Method::DELETE | Method::TRACE
            )
        {
            req.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        }
    }
    Ok(())
}
