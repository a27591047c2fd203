//! Logging setup, stats counters, access logs. Traces (OTLP) come later.

pub mod access_log;
pub mod prometheus;
pub mod stats;

use tracing_subscriber::EnvFilter;

/// Installs the process's log subscriber. `REMORA_LOG` (an env-filter
/// directive) overrides `level`.
pub fn init_logging(level: &str) {
    let filter = std::env::var("REMORA_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(format!("remora={level},warn")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, never into files or pipes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
