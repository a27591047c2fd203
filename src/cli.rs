//! The command line: `run`, `check`, `demo`, `control-plane`. Exit codes: 0 success, 1 a
//! runtime failure (a port that cannot be bound...), 2 invalid config or usage.

use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};

use crate::{proxy::Proxy, telemetry, xds};

pub const EXIT_RUNTIME: i32 = 1;
pub const EXIT_CONFIG: i32 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "remora",
    version,
    about = "A sidecar service-mesh proxy that speaks Envoy's xDS v3"
)]
pub struct Cli {
    /// Log level: trace, debug, info, warn, error or off (REMORA_LOG overrides).
    /// Default: info (warn for `demo`, whose report is the output).
    #[arg(long, global = true, value_parser = ["trace", "debug", "info", "warn", "error", "off"])]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the proxy from an Envoy v3 bootstrap file (YAML or JSON).
    Run(RunArgs),
    /// Validate an Envoy v3 bootstrap file and print every error with its field path.
    Check {
        /// Bootstrap file (YAML or JSON).
        #[arg(long, short = 'c')]
        config: PathBuf,
    },
    /// Start two sample services, an xDS control plane and remora configured by it; send traffic,
    /// change the config mid-run, and show what happened.
    Demo {
        /// Requests to send before and after the update (more go out while it applies).
        #[arg(long, default_value_t = 200)]
        requests: u32,
    },
    /// Serve a directory of xDS resources (Envoy JSON/YAML) over ADS, SotW and Delta, to every node;
    /// push a new version when the files change; log every ACK and NACK.
    ControlPlane {
        /// Directory of resource files (*.yaml, *.yml, *.json; each one resource with an @type, or a list).
        #[arg(long)]
        fixtures: PathBuf,
        /// Address to serve gRPC on.
        #[arg(long, default_value = "127.0.0.1:18000")]
        listen: std::net::SocketAddr,
    },
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Bootstrap file (YAML or JSON).
    #[arg(long, short = 'c')]
    pub config: PathBuf,
    /// Worker threads (Istio runs its sidecars with 2).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// Seconds to let in-flight requests finish after SIGTERM or /quitquitquit.
    #[arg(long, default_value_t = 5)]
    pub drain_timeout: u64,
}

pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                _ => EXIT_CONFIG,
            };
        }
    };
    let default_level = if matches!(cli.command, Command::Demo { .. }) {
        "warn"
    } else {
        "info"
    };
    telemetry::init_logging(cli.log_level.as_deref().unwrap_or(default_level));
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run(args) => run(args),
        Command::Demo { requests } => runtime(2).map_or(EXIT_RUNTIME, |rt| rt.block_on(crate::demo::run(requests))),
        Command::ControlPlane { fixtures, listen } => runtime(1).map_or(EXIT_RUNTIME, |rt| {
            rt.block_on(crate::controlplane::run(fixtures, listen))
        }),
    }
}

fn check(path: &std::path::Path) -> i32 {
    match xds::load_bootstrap(path) {
        Ok(b) => {
            for w in &b.ignored {
                println!("warning: {w}");
            }
            println!(
                "{}: OK ({} listeners, {} clusters)",
                path.display(),
                b.listeners.len(),
                b.clusters.len()
            );
            0
        }
        Err(errors) => {
            for e in &errors.0 {
                println!("error: {e}");
            }
            println!("{}: INVALID ({} errors)", path.display(), errors.0.len());
            EXIT_CONFIG
        }
    }
}

fn runtime(workers: usize) -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            None
        }
    }
}

fn run(args: RunArgs) -> i32 {
    let bootstrap = match xds::load_bootstrap(&args.config) {
        Ok(b) => b,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("error: {e}");
            }
            eprintln!("{}: invalid config ({} errors)", args.config.display(), errors.0.len());
            return EXIT_CONFIG;
        }
    };
    for w in &bootstrap.ignored {
        tracing::warn!("{w}");
    }
    let ads = match xds::ads::AdsConfig::from_bootstrap(&bootstrap) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: dynamic_resources: {e}");
            return EXIT_CONFIG;
        }
    };
    let Some(rt) = runtime(args.concurrency as usize) else {
        return EXIT_RUNTIME;
    };
    rt.block_on(async move {
        let proxy = match Proxy::start(bootstrap).await {
            Ok(p) => std::sync::Arc::new(p),
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_RUNTIME;
            }
        };
        let xds_stop = tokio_util::sync::CancellationToken::new();
        if let Some(ads) = ads {
            tracing::info!(server = %ads.server, "taking config from xDS (ADS, state of the world)");
            tokio::spawn(xds::ads::run(proxy.clone(), ads, xds_stop.clone()));
        }
        for (name, addr) in &proxy.listener_addrs() {
            tracing::info!(listener = %name, address = %addr, "listening");
        }
        if let Some(a) = proxy.admin {
            tracing::info!(address = %a, "admin listening");
        }
        wait_for_stop(&proxy).await;
        xds_stop.cancel();
        tracing::info!(timeout_s = args.drain_timeout, "draining");
        proxy.drain(Duration::from_secs(args.drain_timeout)).await;
        tracing::info!("stopped");
        0
    })
}

async fn wait_for_stop(proxy: &Proxy) {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            tracing::warn!("cannot install signal handlers; only /quitquitquit stops the proxy");
            proxy.quit_requested().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
        _ = proxy.quit_requested() => tracing::info!("/quitquitquit"),
    }
}
