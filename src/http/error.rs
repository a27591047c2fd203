//! The one place that classifies why a request failed: which side, the HTTP
//! status, the Envoy response flag, and the local-reply body, so logs, stats
//! and answers always agree. Bodies follow Envoy's local replies.

use http::StatusCode;

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
            ProxyError::NoRoute | ProxyError::NoCluster(_) | ProxyError::UpgradeNotAllowed(_) => Side::Config,
            ProxyError::DownstreamProtocol(_) => Side::Downstream,
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
            ProxyError::DownstreamProtocol(_) => StatusCode::BAD_REQUEST,
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
            ProxyError::UpgradeNotAllowed(_) => "",
            ProxyError::DownstreamProtocol(_) => "DPE",
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
            ProxyError::UpgradeNotAllowed(_) => "upgrade_failed",
            ProxyError::DownstreamProtocol(_) => "codec_error",
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
            ProxyError::ConnectFailure(e) => format!(
                "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure, transport failure reason: delayed connect error: {}",
                e.raw_os_error().map(|c| c.to_string()).unwrap_or_else(|| e.to_string())
            ),
            ProxyError::UpstreamTimeout => "upstream request timeout".into(),
            ProxyError::UpstreamReset(_) => {
                "upstream connect error or disconnect/reset before headers. reset reason: connection termination".into()
            }
            ProxyError::UpstreamProtocol(_) => {
                "upstream connect error or disconnect/reset before headers. reset reason: protocol error".into()
            }
            ProxyError::DownstreamProtocol(_) => "Bad Request".into(),
        }
    }

    /// The gRPC status a gRPC client gets for this failure (Envoy's mapping
    /// from HTTP status: 404 -> UNIMPLEMENTED, 503 -> UNAVAILABLE, 504 -> UNAVAILABLE...).
    pub fn grpc_status(&self) -> u8 {
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
