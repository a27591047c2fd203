//! The one place that classifies why a request failed: which side, the HTTP
//! status, the Envoy response flag, and the local reply (`local_reply`), so
//! logs, stats and answers always agree. Bodies follow Envoy's local replies.

use bytes::Bytes;
use http::{
    header::{self, HeaderName, HeaderValue},
    Response, StatusCode,
};

use super::body::ProxyBody;

static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route matched")]
    NoRoute,
    #[error("cluster '{0}' not found")]
    NoCluster(String),
    #[error("no healthy upstream")]
    NoHealthyUpstream,
    #[error("upstream connect timeout")]
    ConnectTimeout,
    #[error("upstream connect failure: {0}")]
    ConnectFailure(std::io::Error),
    #[error("upstream request timeout")]
    UpstreamTimeout,
    #[error("upstream reset: {0}")]
    UpstreamReset(String),
    #[error("upstream protocol error: {0}")]
    UpstreamProtocol(String),
    #[error("upgrade '{0}' not allowed")]
    UpgradeNotAllowed(String),
    #[error("downstream protocol error: {0}")]
    DownstreamProtocol(&'static str),
    /// A request the codec refuses: 400 "Bad Request".
    #[error("malformed request: {0}")]
    Codec(&'static str),
    /// A request the connection manager refuses: 400 with no body.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("HTTP/1.0 is not accepted")]
    Http10NotAllowed,
    /// A circuit breaker is open (max_connections, max_pending_requests or
    /// max_requests reached): 503 with `x-envoy-overloaded`, flag UO.
    #[error("upstream overflow: {0}")]
    Overflow(&'static str),
    /// The fault filter's abort: its status, and for a gRPC abort the grpc-status (the HTTP
    /// status is then 200, as Envoy's sendLocalReply(200, ..., grpc_status)).
    #[error("fault filter abort ({status})")]
    FaultAbort { status: StatusCode, grpc: Option<u32> },
    /// Over the local rate limit and enforced: the configured status (429 by default), and the
    /// grpc-status RESOURCE_EXHAUSTED when `rate_limited_as_resource_exhausted`.
    #[error("local rate limited")]
    RateLimited { status: StatusCode, grpc: Option<u32> },
    /// The stream's max duration passed (the route's `max_stream_duration` or
    /// `grpc-timeout`, else the connection manager's): 504 once the request was
    /// complete, else 408; gRPC DEADLINE_EXCEEDED; Envoy sets no response flag.
    #[error("max stream duration reached")]
    MaxStreamDuration { request_complete: bool },
    /// No request or response frame for the stream idle timeout (the route's
    /// `idle_timeout`, else `stream_idle_timeout`): 504/408 as above, flag SI.
    #[error("stream idle timeout")]
    StreamIdleTimeout { request_complete: bool },
}

/// Which side of the proxy a failure belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Downstream,
    Upstream,
    Config,
}

impl ProxyError {
    pub fn side(&self) -> Side {
        match self {
            ProxyError::NoRoute
            | ProxyError::NoCluster(_)
            | ProxyError::UpgradeNotAllowed(_)
            | ProxyError::FaultAbort { .. }
            | ProxyError::RateLimited { .. } => Side::Config,
            ProxyError::DownstreamProtocol(_)
            | ProxyError::Codec(_)
            | ProxyError::BadRequest(_)
            | ProxyError::Http10NotAllowed => Side::Downstream,
            _ => Side::Upstream,
        }
    }

    /// Whether a retry could succeed (used by the retry layer to come).
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ProxyError::ConnectFailure(_) | ProxyError::ConnectTimeout | ProxyError::UpstreamReset(_)
        )
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoCluster(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::UpgradeNotAllowed(_) => StatusCode::FORBIDDEN,
            ProxyError::DownstreamProtocol(_) | ProxyError::Codec(_) | ProxyError::BadRequest(_) => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::Http10NotAllowed => StatusCode::UPGRADE_REQUIRED,
            // Envoy's maybeRequestTimeoutCode: 408 while the request is still arriving.
            ProxyError::MaxStreamDuration { request_complete } | ProxyError::StreamIdleTimeout { request_complete } => {
                if *request_complete {
                    StatusCode::GATEWAY_TIMEOUT
                } else {
                    StatusCode::REQUEST_TIMEOUT
                }
            }
            ProxyError::FaultAbort { status, .. } | ProxyError::RateLimited { status, .. } => *status,
            // Envoy answers 503 for every failure before upstream headers,
            // protocol errors included (flag UPE).
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Envoy's response flag (as `%RESPONSE_FLAGS%` prints it).
    pub fn flag(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "NR",
            ProxyError::NoCluster(_) => "NC",
            ProxyError::NoHealthyUpstream => "UH",
            ProxyError::ConnectTimeout | ProxyError::ConnectFailure(_) => "UF",
            ProxyError::UpstreamTimeout => "UT",
            ProxyError::UpstreamReset(_) => "UC",
            ProxyError::UpstreamProtocol(_) => "UPE",
            ProxyError::Overflow(_) => "UO",
            ProxyError::UpgradeNotAllowed(_) => "",
            ProxyError::DownstreamProtocol(_)
            | ProxyError::Codec(_)
            | ProxyError::BadRequest(_)
            | ProxyError::Http10NotAllowed => "DPE",
            ProxyError::FaultAbort { .. } => "FI",
            ProxyError::RateLimited { .. } => "RL",
            ProxyError::MaxStreamDuration { .. } => "",
            ProxyError::StreamIdleTimeout { .. } => "SI",
        }
    }

    /// Envoy's `%RESPONSE_CODE_DETAILS%`.
    pub fn details(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "route_not_found",
            ProxyError::NoCluster(_) => "cluster_not_found",
            ProxyError::NoHealthyUpstream => "no_healthy_upstream",
            ProxyError::ConnectTimeout | ProxyError::ConnectFailure(_) => {
                "upstream_reset_before_response_started{connection_failure}"
            }
            ProxyError::UpstreamTimeout => "upstream_response_timeout",
            ProxyError::UpstreamReset(_) => "upstream_reset_before_response_started{connection_termination}",
            ProxyError::UpstreamProtocol(_) => "upstream_reset_before_response_started{protocol_error}",
            ProxyError::Overflow(_) => "upstream_reset_before_response_started{overflow}",
            ProxyError::UpgradeNotAllowed(_) => "upgrade_failed",
            ProxyError::DownstreamProtocol(_) | ProxyError::Codec(_) => "codec_error",
            ProxyError::BadRequest(d) => d,
            ProxyError::Http10NotAllowed => "low_version",
            ProxyError::FaultAbort { .. } => "fault_filter_abort",
            ProxyError::RateLimited { .. } => "local_rate_limited",
            ProxyError::MaxStreamDuration { .. } => "max_duration_timeout",
            ProxyError::StreamIdleTimeout { .. } => "stream_idle_timeout",
        }
    }

    /// The local reply body, as Envoy words it.
    pub fn body(&self) -> String {
        match self {
            ProxyError::NoRoute | ProxyError::NoCluster(_) | ProxyError::UpgradeNotAllowed(_) => String::new(),
            ProxyError::NoHealthyUpstream => "no healthy upstream".into(),
            ProxyError::ConnectTimeout => {
                "upstream connect error or disconnect/reset before headers. reset reason: connection timeout".into()
            }
            // Envoy 1.40's words exactly; the OS error goes to the debug log.
            ProxyError::ConnectFailure(_) => {
                "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"
                    .into()
            }
            ProxyError::UpstreamTimeout => "upstream request timeout".into(),
            ProxyError::UpstreamReset(_) => {
                "upstream connect error or disconnect/reset before headers. reset reason: connection termination".into()
            }
            ProxyError::UpstreamProtocol(_) => {
                "upstream connect error or disconnect/reset before headers. reset reason: protocol error".into()
            }
            ProxyError::Overflow(_) => {
                "upstream connect error or disconnect/reset before headers. reset reason: overflow".into()
            }
            ProxyError::DownstreamProtocol(_) | ProxyError::Codec(_) => "Bad Request".into(),
            ProxyError::BadRequest(_) => String::new(),
            ProxyError::Http10NotAllowed => "Upgrade Required".into(),
            ProxyError::FaultAbort { .. } => crate::policy::fault::FAULT_ABORT_BODY.into(),
            ProxyError::RateLimited { .. } => crate::policy::local_ratelimit::LOCAL_RATE_LIMITED_BODY.into(),
            ProxyError::MaxStreamDuration { .. } => "downstream duration timeout".into(),
            ProxyError::StreamIdleTimeout { .. } => "stream timeout".into(),
        }
    }

    /// Whether the downstream HTTP/1 connection closes after this reply.
    pub fn closes_connection(&self) -> bool {
        match self {
            // A reply before the request is complete ends an HTTP/1 connection, as in Envoy.
            ProxyError::MaxStreamDuration { request_complete } | ProxyError::StreamIdleTimeout { request_complete } => {
                !request_complete
            }
            _ => matches!(
                self,
                ProxyError::DownstreamProtocol(_)
                    | ProxyError::Codec(_)
                    | ProxyError::BadRequest(_)
                    | ProxyError::Http10NotAllowed
                    | ProxyError::UpgradeNotAllowed(_)
            ),
        }
    }

    /// The gRPC status a gRPC client gets for this failure: the one the filter chose, else
    /// Envoy's mapping from HTTP status (404 -> UNIMPLEMENTED, 429/503/504 -> UNAVAILABLE...).
    pub fn grpc_status(&self) -> u32 {
        if let ProxyError::FaultAbort { grpc: Some(g), .. } | ProxyError::RateLimited { grpc: Some(g), .. } = self {
            return *g;
        }
        if let ProxyError::MaxStreamDuration { .. } = self {
            return 4; // DEADLINE_EXCEEDED
        }
        match self.status().as_u16() {
            400 => 13,
            401 => 16,
            403 => 7,
            404 => 12,
            429 | 502 | 503 | 504 => 14,
            _ => 2,
        }
    }
}

/// Classifies a hyper client error from an exchange with an upstream.
pub fn classify_upstream(e: &hyper::Error) -> ProxyError {
    if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
        ProxyError::UpstreamProtocol(e.to_string())
    } else {
        ProxyError::UpstreamReset(e.to_string())
    }
}

/// A local reply: plain text for HTTP, trailers-only gRPC status for gRPC
/// requests (as Envoy converts local replies for gRPC clients).
pub fn local_reply(e: &ProxyError, grpc: bool) -> Response<ProxyBody> {
    let body = e.body();
    if grpc {
        let mut resp = Response::new(ProxyBody::empty());
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert(&GRPC_STATUS, HeaderValue::from(e.grpc_status()));
        if let Ok(v) = HeaderValue::from_str(&body) {
            if !body.is_empty() {
                h.insert(&GRPC_MESSAGE, v);
            }
        }
        return resp;
    }
    let len = body.len();
    let mut resp = Response::new(ProxyBody::full(Bytes::from(body)));
    *resp.status_mut() = e.status();
    if len > 0 {
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    resp
}
