//! `stallwatch`: the node agent. Wiring only: CLI → config → samplers → HTTP server.

mod cli;
mod config;
mod doctor;
mod dstate;
mod metrics;
mod reload;
mod server;
mod telemetry;
mod webconfig;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use clap::Parser;
use prometheus_client::registry::Registry;
use stallwatch_collector::sample::containers::{ContainerSampler, ContainerSnapshot};
use stallwatch_collector::sample::{HostSampler, HostSnapshot, ThreadSampler, ThreadSnapshot};
use tracing::{error, info};

use crate::cli::{Cli, Command, Common};
use crate::config::Config;
use crate::metrics::cloud::CloudCollector;
use crate::metrics::containers::ContainersCollector;
use crate::metrics::host::HostCollector;
use crate::metrics::probe::ProbeCollector;
use crate::metrics::selfmon::{ReloadStatus, SelfCollector};
use crate::metrics::threads::ThreadsCollector;

/// Exit code for a bad config or bad flags at start-up.
const EXIT_BAD_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.common.log_level, cli.common.log_format);
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(cli.common),
        Command::CheckConfig => check_config(&cli.common),
        Command::Dstate(args) => dstate::main(&cli.common, &args),
        Command::Doctor => doctor::main(&cli.common),
    }
}

fn load_config(common: &Common) -> Result<Config, config::ConfigError> {
    match &common.config_file {
        Some(p) => config::load(p),
        None => Ok(Config::default()),
    }
}

fn check_config(common: &Common) -> ExitCode {
    let cfg = match load_config(common) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("stallwatch: bad config: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    if let Some(w) = &common.web_config_file {
        if let Err(e) = webconfig::WebConfig::load(w) {
            eprintln!("stallwatch: bad web config: {e:#}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    }
    let src = common
        .config_file
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "<defaults>".into());
    println!(
        "{src}: OK (interval {:?}, peak window {:?})",
        cfg.host.interval, cfg.host.peak_window
    );
    ExitCode::SUCCESS
}

fn run(common: Common) -> ExitCode {
    let cfg = match load_config(&common) {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "Bad configuration.");
            eprintln!("stallwatch: bad config: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let web = match &common.web_config_file {
        Some(p) => match webconfig::WebConfig::load(p) {
            Ok(w) => Some(Arc::new(w)),
            Err(e) => {
                eprintln!("stallwatch: bad web config: {e:#}");
                return ExitCode::from(EXIT_BAD_CONFIG);
            }
        },
        None => None,
    };
    let addr = match cli::parse_listen_address(&common.listen_address) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("stallwatch: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let listener = match server::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("stallwatch: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = listener.local_addr().unwrap_or(addr);

    let roots = Arc::new(common.roots());
    let live = match reload::Live::new(&cfg) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("stallwatch: cannot start the probes: {e}");
            return ExitCode::FAILURE;
        }
    };
    let host_snap = Arc::new(ArcSwap::from_pointee(HostSnapshot::default()));
    let thread_snap = Arc::new(ArcSwap::from_pointee(ThreadSnapshot::default()));
    let sampler = match HostSampler::spawn(roots.clone(), live.host.clone(), host_snap.clone()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("stallwatch: cannot start the sampler: {e}");
            return ExitCode::FAILURE;
        }
    };
    let container_snap = Arc::new(ArcSwap::from_pointee(ContainerSnapshot::default()));
    let container_sampler = match ContainerSampler::spawn(
        roots.clone(),
        live.containers.clone(),
        container_snap.clone(),
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("stallwatch: cannot start the container sampler: {e}");
            return ExitCode::FAILURE;
        }
    };
    let thread_sampler = match ThreadSampler::spawn(
        roots.clone(),
        live.threads.clone(),
        host_snap.clone(),
        thread_snap.clone(),
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("stallwatch: cannot start the thread sampler: {e}");
            return ExitCode::FAILURE;
        }
    };
    let reload_status = Arc::new(ReloadStatus::new());
    let start_time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let mut registry = Registry::with_prefix("stallwatch");
    registry.register_collector(Box::new(HostCollector {
        snap: host_snap.clone(),
    }));
    registry.register_collector(Box::new(ThreadsCollector {
        snap: thread_snap.clone(),
    }));
    let cloud_snap = Arc::new(ArcSwap::from_pointee(
        stallwatch_cloud::CloudSnapshot::default(),
    ));
    registry.register_collector(Box::new(ContainersCollector {
        snap: container_snap.clone(),
        threads: thread_snap.clone(),
        host: host_snap.clone(),
        cloud: cloud_snap.clone(),
    }));
    registry.register_collector(Box::new(CloudCollector {
        snap: cloud_snap.clone(),
    }));
    registry.register_collector(Box::new(metrics::node_info::NodeInfoCollector::new(
        &roots,
        cloud_snap.clone(),
    )));
    registry.register_collector(Box::new(ProbeCollector {
        probes: live.probes.clone(),
    }));
    registry.register_collector(Box::new(SelfCollector {
        host: host_snap.clone(),
        threads: thread_snap.clone(),
        containers: container_snap.clone(),
        reload: reload_status.clone(),
        start_time,
    }));
    let state = Arc::new(server::AppState {
        registry,
        telemetry_path: common.telemetry_path.clone(),
        host: host_snap,
        host_config: live.host.clone(),
    });
    let tls = web.as_ref().and_then(|w| w.tls.clone());
    let stop_probes = live.clone();
    let app = server::app(state, web);

    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sw-http")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stallwatch: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        let handle = axum_server::Handle::<std::net::SocketAddr>::new();
        if let Some(path) = common.config_file.clone() {
            let initial = std::fs::read(&path).ok();
            tokio::spawn(reload::run(path, live.clone(), reload_status, initial));
        }
        tokio::spawn(shutdown_on_signal(handle.clone()));
        let (stop_cloud, cloud_stopped) = tokio::sync::watch::channel(false);
        let cloud = stallwatch_cloud::runner::spawn(
            live.cloud.clone(),
            roots.clone(),
            cloud_snap,
            cloud_stopped,
        );
        info!(
            address = %local,
            tls = tls.is_some(),
            telemetry_path = %common.telemetry_path,
            procfs = %roots.procfs.display(),
            version = env!("CARGO_PKG_VERSION"),
            "Listening."
        );
        let r = server::serve(listener, app, tls, handle).await;
        let _ = stop_cloud.send(true);
        // The cloud tasks stop at their next wait; a call in flight is not waited for long.
        let _ = tokio::time::timeout(Duration::from_secs(2), cloud).await;
        r
    });
    sampler.stop();
    thread_sampler.stop();
    container_sampler.stop();
    stop_probes.stop();
    match result {
        Ok(()) => {
            info!("Shut down.");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!(error = %e, "HTTP server failed.");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM or SIGINT: stop accepting, let in-flight scrapes finish (at most 5 s).
async fn shutdown_on_signal(handle: axum_server::Handle<std::net::SocketAddr>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("Cannot install signal handlers.");
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    info!(signal = name, "Shutting down.");
    handle.graceful_shutdown(Some(Duration::from_secs(5)));
}
