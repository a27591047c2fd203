//! Traffic policy with Envoy's semantics, each mechanism a small state
//! machine over plain data: outlier detection, local rate limiting, fault
//! injection, retries, circuit breaking and gRPC timeouts. Nothing here
//! touches sockets; `http::proxy` composes them on the request path.

pub mod circuit_breaker;
pub mod fault;
pub mod grpc_timeout;
pub mod local_ratelimit;
pub mod outlier;
pub mod outlier_config;
pub mod retry;
pub mod retry_on;
pub mod retry_state;
