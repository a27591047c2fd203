//! remora: a sidecar service-mesh data-plane proxy that speaks Envoy's xDS v3.
//! See DESIGN.md (shared) for the module map; README.md for what works now.

pub mod admin;
pub mod balance;
pub mod cli;
pub mod config;
pub mod controlplane;
pub mod demo;
pub mod http;
pub mod listener;
pub mod policy;
pub mod proxy;
pub mod tcp;
pub mod telemetry;
pub mod xds;
