//! The container view: every `containers.interval` (10 s) a reader thread makes one pass over
//! the containers ([`crate::cgroup::pass`]); the sampler publishes the result as a
//! [`ContainerSnapshot`] and counts containers that appeared and vanished between passes. It
//! runs on the periodic driver ([`crate::sample::driver`]) like every source.
//!
//! Why a slow cadence and its own thread: a pass costs a few `read_dir`s plus ~14 small reads
//! per container on this hybrid host (1000 containers ≈ 14k reads; what is read at every pass
//! and what less often: [`crate::cgroup::pass::PassState`]), cgroup files can block behind a
//! busy cgroup lock, and container counters are cumulative, so a 10 s pass loses nothing a
//! scrape would show. A pass that does not answer by `source_timeout` leaves the last snapshot in place and
//! marks the source stuck, like every other source.
//!
//! Bounded labels: at most `max_containers` containers are read per pass (in path order, so
//! the same ones each time); the others are counted in [`ContainerSnapshot::dropped`]. Starts
//! and stops are counted over every container discovered, capped or not.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tracing::warn;

use crate::cgroup::pass::{pass_named, Pass, PassState};
use crate::roots::Roots;
use crate::sample::driver::{self, Driver, Hook, Limiter, Schedule, SourceSpec};
use crate::sample::status::SourceStatus;

pub use crate::cgroup::pass::ContainerRow;

#[derive(Debug, Clone)]
pub struct ContainersConfig {
    pub enabled: bool,
    /// Pass cadence.
    pub interval: Duration,
    /// Containers read per pass; the rest are counted as dropped.
    pub max_containers: usize,
    /// A pass outstanding longer than this marks the source stuck.
    pub source_timeout: Duration,
    /// Docker's data root, for container names (`<root>/containers/<id>/config.v2.json`);
    /// `None`: `/var/lib/docker` under `--path.rootfs`.
    pub docker_root: Option<std::path::PathBuf>,
    /// containers/storage's root (CRI-O and podman, rootful), for their container names
    /// (`<root>/overlay-containers/{,volatile-}containers.json`); `None`:
    /// `/var/lib/containers/storage` under `--path.rootfs`.
    pub storage_root: Option<std::path::PathBuf>,
    /// CPU budget of the pass, as a share of one core: a pass that cost `c` seconds of CPU
    /// waits at least `c / max_cpu` before the next ([`crate::sample::budget`]); 0 disables.
    /// `make bench` measured a pass over 200 containers at ~96 ms here, bench_node.py ~44 ms
    /// (real docker containers); after the pass learned to skip what cannot have changed,
    /// ~17 ms (0.17 % of a core at the 10 s default), so the default budget only stretches
    /// much bigger hosts.
    pub max_cpu: f64,
}

impl Default for ContainersConfig {
    fn default() -> Self {
        ContainersConfig {
            enabled: true,
            interval: Duration::from_secs(10),
            max_containers: 1000,
            source_timeout: Duration::from_secs(5),
            docker_root: None,
            storage_root: None,
            max_cpu: 0.01,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ContainerSnapshot {
    /// Wall time of the last pass applied (`None` before the first).
    pub taken: Option<SystemTime>,
    pub enabled: bool,
    /// Containers of the last pass, sorted by path. Shared: the sampler publishes every second
    /// (a stuck pass must show) and a pass lands every 10 s; cloning 200 rows for each publish
    /// was a tenth of the pass's CPU.
    pub containers: Arc<Vec<ContainerRow>>,
    /// Container ids that appeared, since start (the first pass counts every container).
    pub starts: u64,
    /// Container ids that vanished between passes, since start.
    pub stops: u64,
    /// Containers discovered by the last pass but not read (over `max_containers`).
    pub dropped: u64,
    /// Sum over all passes of the containers not read because of the cap (a counter).
    pub dropped_total: u64,
    /// The discovery walk hit its directory bound in the last pass.
    pub walk_truncated: bool,
    /// The pass interval in force: `interval`, stretched when the last pass's CPU would
    /// exceed `max_cpu` of one core at that cadence.
    pub current_interval: Duration,
    pub status: SourceStatus,
}

impl Default for ContainerSnapshot {
    fn default() -> Self {
        ContainerSnapshot {
            taken: None,
            enabled: false,
            containers: Arc::default(),
            starts: 0,
            stops: 0,
            dropped: 0,
            dropped_total: 0,
            walk_truncated: false,
            current_interval: Duration::ZERO,
            status: SourceStatus::new("containers"),
        }
    }
}

/// Counts ids that appear and vanish across passes.
#[derive(Debug, Default)]
pub struct Churn {
    known: HashSet<String>,
    pub starts: u64,
    pub stops: u64,
}

impl Churn {
    pub fn apply(&mut self, ids: &[String]) {
        let now: HashSet<String> = ids.iter().cloned().collect();
        self.starts += now.difference(&self.known).count() as u64;
        self.stops += self.known.difference(&now).count() as u64;
        self.known = now;
    }
}

/// The container sampler on the periodic driver: one source, `containers`.
struct Containers {
    roots: Arc<Roots>,
    config: Arc<ArcSwap<ContainersConfig>>,
    snap: ContainerSnapshot,
    churn: Churn,
    error_log: Limiter,
    missing_logged: bool,
}

impl driver::Sampler for Containers {
    type Key = ();
    type Reading = Pass;
    type Config = ContainersConfig;
    type Snapshot = ContainerSnapshot;

    fn sources(&mut self, _: &ContainersConfig) -> Vec<SourceSpec<(), Pass>> {
        let roots = Arc::clone(&self.roots);
        let config = Arc::clone(&self.config);
        vec![SourceSpec {
            key: (),
            name: "containers".into(),
            make: driver::reader(move || {
                let (roots, config) = (Arc::clone(&roots), Arc::clone(&config));
                let mut state = PassState::default();
                move || {
                    let cfg = config.load();
                    Ok(Some(pass_named(
                        &roots,
                        cfg.max_containers,
                        cfg.docker_root.as_deref(),
                        cfg.storage_root.as_deref(),
                        &mut state,
                    )))
                }
            }),
            lane: None,
        }]
    }

    /// Wake every second (or every interval, when shorter): a config change (enabled,
    /// interval) and a late pass are picked up promptly.
    fn tick(&self, cfg: &ContainersConfig) -> Duration {
        cfg.interval.min(Duration::from_secs(1))
    }

    fn wait(&self, cfg: &ContainersConfig) -> Duration {
        cfg.source_timeout.min(cfg.interval)
    }

    /// Hundreds of containers make a pass expensive: the cadence is stretched so the passes
    /// stay under the CPU budget, as the thread walk's is.
    fn schedule(&mut self, _: &(), cfg: &ContainersConfig, _: Instant) -> Option<Schedule> {
        cfg.enabled.then_some(Schedule {
            every: cfg.interval,
            max_cpu: cfg.max_cpu,
            timeout: cfg.source_timeout,
        })
    }

    fn apply(
        &mut self,
        _: &(),
        at: Instant,
        pass: Option<Pass>,
        status: &mut SourceStatus,
        _: &ContainersConfig,
    ) {
        let Some(p) = pass else { return };
        let errors = p.rows.iter().flat_map(|r| r.stats.errors.iter());
        let mut first = None;
        let mut n = 0;
        for e in errors {
            status.count_error(e.kind);
            first.get_or_insert(e);
            n += 1;
        }
        if let Some(e) = first {
            if let Some(held) = self.error_log.allow(at) {
                warn!(source = "containers", error = %e.message, count = n, held,
                    "Reading container cgroups failed.");
            }
        }
        if p.no_hierarchy && !self.missing_logged {
            warn!(
                source = "containers",
                "No cgroup hierarchy found; container metrics are absent."
            );
            self.missing_logged = true;
        }
        status.missing = p.no_hierarchy;
        self.churn.apply(&p.ids);
        let s = &mut self.snap;
        s.starts = self.churn.starts;
        s.stops = self.churn.stops;
        s.dropped = p.dropped as u64;
        s.dropped_total += p.dropped as u64;
        s.walk_truncated = p.truncated;
        s.containers = Arc::new(p.rows);
        s.taken = Some(SystemTime::now());
    }

    fn publish(
        &mut self,
        sources: &[SourceStatus],
        _: Instant,
        cfg: &ContainersConfig,
    ) -> ContainerSnapshot {
        self.snap.enabled = cfg.enabled;
        if !cfg.enabled {
            self.snap.containers = Arc::default();
        }
        if let Some(s) = sources.first() {
            self.snap.status = s.clone();
            // The interval the next pass waits for, from the cost of the one just done.
            self.snap.current_interval = s.interval.unwrap_or(cfg.interval);
        }
        self.snap.clone()
    }
}

/// Running container sampler.
pub struct ContainerSampler(Driver);

impl ContainerSampler {
    pub fn spawn(
        roots: Arc<Roots>,
        config: Arc<ArcSwap<ContainersConfig>>,
        out: Arc<ArcSwap<ContainerSnapshot>>,
        on_publish: Option<Hook>,
    ) -> std::io::Result<ContainerSampler> {
        let cfg = Arc::clone(&config);
        let driver = Driver::spawn(
            "containers",
            move || Containers {
                roots: Arc::clone(&roots),
                config: Arc::clone(&cfg),
                snap: ContainerSnapshot::default(),
                churn: Churn::default(),
                error_log: Limiter::per_minute(),
                missing_logged: false,
            },
            config,
            out,
            on_publish,
        )?;
        Ok(ContainerSampler(driver))
    }

    pub fn stop(self) {
        self.0.stop();
    }
}

#[cfg(test)]
mod tests;
