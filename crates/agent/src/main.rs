//! `stallwatch`: the node agent. Wiring only: CLI → config → samplers → HTTP server.

mod cli;
mod config;
mod doctor;
mod dstate;
mod metrics;
mod node;
mod reload;
mod server;
mod telemetry;
mod webconfig;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use prometheus_client::registry::Registry;
use stallwatch_collector::sample::containers::ContainerSampler;
use stallwatch_collector::sample::{HostSampler, ThreadSampler};
use tracing::{error, info};

use crate::cli::{BadInput, Cli, Command, Common, Exit};
use crate::config::Config;
use crate::metrics::cloud::CloudCollector;
use crate::metrics::containers::ContainersCollector;
use crate::metrics::host::HostCollector;
use crate::metrics::probe::ProbeCollector;
use crate::metrics::selfmon::{ReloadStatus, SelfCollector};
use crate::metrics::threads::ThreadsCollector;

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.common.log_level, cli.common.log_format);
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(cli.common),
        Command::CheckConfig => config::check::main(&cli.common),
        Command::Dstate(args) => dstate::main(&cli.common, &args),
        Command::Doctor => doctor::main(&cli.common),
        Command::CheckProbeDir { path } => Ok(config::check::child_main(&path)),
    };
    match result {
        Ok(exit) => exit.into(),
        Err(e) => {
            // `{:#}`: the whole chain on one line, outermost first (ripgrep's habit).
            eprintln!("stallwatch: {e:#}");
            Exit::of(&e).into()
        }
    }
}

/// The config the agent starts with, and the text it came from (the reload thread compares
/// against it).
fn load_config(common: &Common) -> Result<(Config, Option<String>), config::ConfigError> {
    match &common.config_file {
        Some(p) => {
            let c = config::load(p)?;
            Ok((c, config::read_bounded(p).ok()))
        }
        None => Ok((Config::default(), None)),
    }
}

fn run(common: Common) -> anyhow::Result<Exit> {
    let (cfg, initial_text) = load_config(&common)?;
    let web = match &common.web_config_file {
        Some(p) => Some(Arc::new(
            webconfig::WebConfig::load(p)
                .with_context(|| format!("web config {}", p.display()))
                .context(BadInput)?,
        )),
        None => None,
    };
    let addr = cli::parse_listen_address(&common.listen_address)
        .map_err(anyhow::Error::msg)
        .context(BadInput)?;
    let listener = server::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr().unwrap_or(addr);

    let roots = Arc::new(common.roots());
    let live = reload::Live::new(&cfg).context("cannot start the probes")?;
    // Every sampler publishes its snapshot and then joins the node view (node.rs).
    let parts = node::Parts::new(live.probes.clone());
    let sampler = HostSampler::spawn(
        roots.clone(),
        live.host.clone(),
        parts.host.clone(),
        Some(parts.hook()),
    )
    .context("cannot start the sampler")?;
    let container_sampler = ContainerSampler::spawn(
        roots.clone(),
        live.containers.clone(),
        parts.containers.clone(),
        Some(parts.hook()),
    )
    .context("cannot start the container sampler")?;
    let thread_sampler = ThreadSampler::spawn(
        roots.clone(),
        live.threads.clone(),
        parts.host.clone(),
        parts.threads.clone(),
        Some(parts.hook()),
    )
    .context("cannot start the thread sampler")?;
    let reload_status = Arc::new(ReloadStatus::new());
    let start_time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let mut registry = Registry::with_prefix("stallwatch");
    let node = parts.node.clone();
    registry.register_collector(Box::new(HostCollector { node: node.clone() }));
    registry.register_collector(Box::new(ThreadsCollector { node: node.clone() }));
    registry.register_collector(Box::new(ContainersCollector { node: node.clone() }));
    registry.register_collector(Box::new(CloudCollector { node: node.clone() }));
    registry.register_collector(Box::new(metrics::node_info::NodeInfoCollector::new(
        &roots,
        node.clone(),
    )));
    registry.register_collector(Box::new(ProbeCollector { node: node.clone() }));
    registry.register_collector(Box::new(SelfCollector {
        node: node.clone(),
        reload: reload_status.clone(),
        start_time,
    }));
    let state = Arc::new(server::AppState {
        registry,
        telemetry_path: common.telemetry_path.clone(),
        node,
        host_config: live.host.clone(),
    });
    let tls = web.as_ref().and_then(|w| w.tls.clone());
    let stop_probes = live.clone();
    let app = server::app(state, web);

    // Reload runs on its own thread (it reads files); the runtime only forwards SIGHUP to it.
    let reload_triggers = match common.config_file.clone() {
        Some(path) => Some(
            reload::spawn(path, live.clone(), reload_status, initial_text)
                .context("cannot start the reload thread")?,
        ),
        None => None,
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sw-http")
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let result = rt.block_on(async move {
        let handle = axum_server::Handle::<std::net::SocketAddr>::new();
        if let Some(tx) = reload_triggers {
            tokio::spawn(reload::forward_sighup(tx));
        }
        tokio::spawn(shutdown_on_signal(handle.clone()));
        let (stop_cloud, cloud_stopped) = tokio::sync::watch::channel(false);
        let cloud = stallwatch_cloud::runner::spawn(
            live.cloud.clone(),
            roots.clone(),
            parts.cloud.clone(),
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
            Ok(Exit::Ok)
        }
        Err(e) => {
            error!(error = %e, "HTTP server failed.");
            Err(anyhow::Error::new(e).context("HTTP server failed"))
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
