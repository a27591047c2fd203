//! The HTTP side of the proxy: serving downstream connections with hyper,
//! route matching, the per-request handler, upstream pools and bodies.

pub mod body;
pub mod client;
pub mod error;
pub mod filters;
pub mod headers;
pub mod mirror;
pub mod proxy;
mod request;
pub mod request_body;
mod rewrite;
pub mod route;
pub mod server;
pub mod stream_timers;
pub mod timeouts;
pub mod upgrade;
pub mod upstream;
