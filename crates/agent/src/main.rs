//! `stallwatch`: the node agent. Wiring only: CLI → config → samplers → HTTP server.

mod cli;
mod client;
mod config;
mod doctor;
mod dstate;
mod memory;
mod metrics;
mod node;
mod recorder;
mod reload;
mod telemetry;
mod verdict;
mod web;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use prometheus_client::registry::Registry;
use stallwatch_cloud::CloudSampler;
use stallwatch_collector::sample::containers::ContainerSampler;
use stallwatch_collector::sample::{HostSampler, ThreadSampler};
use tracing::{error, info, warn};

use crate::cli::{BadInput, Cli, Command, Common, Exit};
use crate::config::Config;
use crate::metrics::cloud::CloudCollector;
use crate::metrics::containers::ContainersCollector;
use crate::metrics::host::HostCollector;
use crate::metrics::probe::ProbeCollector;
use crate::metrics::selfmon::{ReloadStatus, SelfCollector};
use crate::metrics::threads::ThreadsCollector;

fn main() -> ExitCode {
    memory::limit_arenas();
    let cli = Cli::parse();
    telemetry::init(cli.common.log_level, cli.common.log_format);
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(cli.common),
        Command::CheckConfig => config::check::main(&cli.common),
        Command::Dstate(args) => dstate::main(&cli.common, &args),
        Command::Doctor => doctor::main(&cli.common),
        Command::Why(args) => client::why_main(&args),
        Command::Incidents(args) => client::incidents_main(&args),
        Command::CheckProbeDir { path } => Ok(config::check::child_main(&path)),
        Command::IncidentWrite {
            dir,
            max_files,
            max_bytes,
        } => recorder::store::child_write(&dir, max_files, max_bytes)
            .map(|()| Exit::Ok)
            .map_err(anyhow::Error::msg),
        Command::IncidentRead { dir } => recorder::store::child_read(&dir)
            .map(|()| Exit::Ok)
            .map_err(anyhow::Error::msg),
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
    config::check::reject_unusable_probe_dirs(&cfg, &[])
        .map_err(anyhow::Error::msg)
        .context(BadInput)?;
    let web = match &common.web_config_file {
        Some(p) => Some(Arc::new(
            web::WebConfig::load(p)
                .with_context(|| format!("web config {}", p.display()))
                .context(BadInput)?,
        )),
        None => None,
    };
    let addr = cli::parse_listen_address(&common.listen_address)
        .map_err(anyhow::Error::msg)
        .context(BadInput)?;
    let nofile = web::raise_nofile_limit();
    let listener = web::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr().unwrap_or(addr);

    memory::spawn_trimmer();
    let roots = Arc::new(common.roots());
    let live = reload::Live::new(&cfg).context("cannot start the probes")?;
    // The HTTP server's runtime; the cloud sampler's readers make their AWS calls on it too.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("sw-http")
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    // Every sampler publishes its snapshot and then joins the node view (node.rs).
    let parts = node::Parts::new(live.probes.clone());
    live.analysis.start_store();
    let cloud = CloudSampler::spawn(stallwatch_cloud::Wiring {
        config: live.cloud.clone(),
        roots: &roots,
        host: parts.host.clone(),
        out: parts.cloud.clone(),
        on_publish: Some(parts.hook()),
        runtime: rt.handle().clone(),
    })
    .context("cannot start the cloud sampler")?;
    // The credit model follows the host sampler's disk counters: each host publish wakes it.
    let sampler = HostSampler::spawn(
        roots.clone(),
        live.host.clone(),
        parts.host.clone(),
        Some(parts.host_hook(
            {
                let analysis = live.analysis.clone();
                move |node: &node::Node| analysis.on_node(node)
            },
            cloud.follower(),
        )),
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
    registry.register_collector(Box::new(metrics::episodes::EpisodesCollector {
        node: node.clone(),
    }));
    registry.register_collector(Box::new(ContainersCollector { node: node.clone() }));
    registry.register_collector(Box::new(CloudCollector { node: node.clone() }));
    registry.register_collector(Box::new(metrics::node_info::NodeInfoCollector::new(
        &roots,
        node.clone(),
    )));
    registry.register_collector(Box::new(ProbeCollector { node: node.clone() }));
    registry.register_collector(Box::new(metrics::verdict::VerdictCollector {
        analysis: live.analysis.clone(),
    }));
    registry.register_collector(Box::new(SelfCollector {
        node: node.clone(),
        reload: reload_status.clone(),
        start_time,
    }));
    let (limits, lowered) =
        web::Limits::new(&common.web, nofile.as_ref().map(|n| n.soft).unwrap_or(1024));
    let conns = web::Conns::new(limits);
    registry.register_collector(Box::new(web::WebCollector {
        conns: conns.clone(),
        auth: web.as_ref().and_then(|w| w.auth.clone()),
        nofile: nofile.as_ref().map(|n| n.soft).unwrap_or(0),
    }));
    let state = Arc::new(web::AppState {
        registry,
        telemetry_path: common.telemetry_path.clone(),
        node,
        host_config: live.host.clone(),
        analysis: live.analysis.clone(),
    });
    let tls = web.as_ref().and_then(|w| w.tls.clone());
    let stop_probes = live.clone();
    let app = web::app(state, web);

    // Reload runs on its own thread (it reads files); the runtime only forwards SIGHUP to it.
    let reload_triggers = match common.config_file.clone() {
        Some(path) => Some(
            reload::spawn(path, live.clone(), reload_status, initial_text)
                .context("cannot start the reload thread")?,
        ),
        None => None,
    };

    // Serve once the first host snapshot is in (at most one source timeout, 5 s at most): a
    // scrape or /healthz right after "Listening." then sees data, not "starting". The socket is
    // bound already, so a client that comes earlier only waits in the backlog for those ms.
    let first = std::time::Instant::now();
    let limit = live.host.load().source_timeout.min(Duration::from_secs(5));
    while parts.host.load().taken.is_none() && first.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(5));
    }
    let (stop, stopping) = tokio::sync::watch::channel(false);
    web::on_signal(stop).context("cannot install signal handlers")?;
    let result = rt.block_on(async move {
        if let Some(tx) = reload_triggers {
            tokio::spawn(reload::forward_sighup(tx));
        }
        info!(
            address = %local,
            tls = tls.is_some(),
            telemetry_path = %common.telemetry_path,
            procfs = %roots.procfs.display(),
            max_connections = limits.max_connections,
            max_fds = nofile.as_ref().map(|n| n.soft).unwrap_or(0),
            version = env!("CARGO_PKG_VERSION"),
            "Listening."
        );
        if lowered {
            warn!(
                max_connections = limits.max_connections,
                "--web.max-connections lowered to leave file descriptors for the readers."
            );
        }
        if let Err(error) = &nofile {
            warn!(%error, "Cannot read the open-file limit.");
        }
        web::serve(listener, app, tls, conns, stopping).await
    });
    // Before the runtime goes: its calls in flight are dropped, not waited for.
    cloud.stop();
    // Nothing left on the runtime (a blocking task, a connection mid-write) holds the exit.
    rt.shutdown_timeout(Duration::from_millis(200));
    stop_within(
        Duration::from_secs(1),
        vec![
            Box::new(move || sampler.stop()),
            Box::new(move || thread_sampler.stop()),
            Box::new(move || container_sampler.stop()),
            Box::new(move || stop_probes.stop()),
        ],
    );
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

/// Runs the samplers' stops side by side and waits for them at most `budget`: a sampler
/// waiting out a reader stuck in the kernel (a file on a hung disk) ends with the process
/// instead of holding the exit past the README's 5 s.
fn stop_within(budget: Duration, stops: Vec<Box<dyn FnOnce() + Send>>) {
    let (done, finished) = std::sync::mpsc::channel();
    let n = stops.len();
    for stop in stops {
        let done = done.clone();
        let spawned = std::thread::Builder::new()
            .name("sw-stop".into())
            .spawn(move || {
                stop();
                let _ = done.send(());
            });
        if let Err(error) = spawned {
            warn!(%error, "Cannot start a thread to stop a sampler.");
        }
    }
    drop(done);
    let deadline = std::time::Instant::now() + budget;
    for _ in 0..n {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if finished.recv_timeout(left).is_err() {
            warn!("A sampler did not stop in time (a read stuck in the kernel?); exiting anyway.");
            return;
        }
    }
}
