//! The cloud side on the periodic driver ([`stallwatch_collector::sample::driver`]), like every
//! other source of the agent: the driver owns cadence, the stuck deadline, panic supervision and
//! `stallwatch_source_*{source}`; the pure [`State`] decides when each call is due and what it
//! asks; [`crate::calls`] makes the calls. Four sources, each one bounded call per read:
//!
//! - `cloud_imds`: discovery (IMDS, or the configured instance) and the AWS clients. With
//!   `enabled = "auto"` one try: no answer means not on EC2, said in one INFO line. With
//!   `enabled = true` it retries with backoff. Off once settled.
//! - `cloud_describe`: the sysfs block-device scan, and once on EC2 DescribeVolumes, then
//!   DescribeVolumeStatus and DescribeVolumesModifications of the attached volumes, and once
//!   DescribeInstanceTypes (every `describe_interval`, `fast_poll_interval` while a
//!   modification is under way or a volume initializes or is impaired, backing off after
//!   failures). Off EC2 or with `enabled = false`, the scan alone (disk models, serials, EBS
//!   volume ids of NVMe devices).
//! - `cloud_poll`: GetMetricData (every `poll_interval`; `fast_poll_interval` while a followed
//!   bucket is not anchored yet, empties within `fast_poll_empty_within` or is low; at once when
//!   there is a new series to ask).
//! - `cloud_nvme`: the EBS NVMe log pages, every `model_interval` (`nvme_stats`).
//!
//! The credit model and the headroom are no source: they read no file. They are advanced in
//! [`Cloud::publish`] from the host sampler's newest disk counters, at the reading's own time;
//! the model's state is offered to the state file's own thread every [`SAVE_EVERY`]
//! ([`crate::persist`]) and taken up from it after a restart. So that it does not lag the
//! host sampler by up to a tick, the host sampler's publish hook wakes this driver
//! ([`CloudSampler::follower`]): the model advances right after each host publish, and the node
//! is joined again with it.
//!
//! A source's snapshot age grows while its calls fail (a failed call is no good read); a
//! throttled call is not counted as an error (backing off is the answer; the requests counter
//! shows it), other failures are, by kind.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use stallwatch_collector::sample::driver::{self, Driver, Hook, Limiter, Schedule, SourceSpec};
use stallwatch_collector::sample::{HostSnapshot, SourceStatus};
use stallwatch_collector::Roots;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::{backoff, CloudConfig, Enabled};
use crate::persist::Saver;
use crate::snapshot::CloudSnapshot;
use crate::state::{self, PollPlan, State};

mod sources;

pub use sources::{CloudSource, Reading};
use sources::{Mode, Shared};

/// How long a tick waits for the calls it asked for before it publishes without them (they
/// are applied on a later tick). Short: a tick woken by the host sampler publishes the model at
/// once even while a slow AWS call is out; the sysfs scan, the NVMe pass and a call to a nearby
/// endpoint answer within it.
const WAIT: Duration = Duration::from_millis(50);
/// How often the sampler ticks with nothing but the sysfs scan to do (see `tick`).
const IDLE_TICK: Duration = Duration::from_secs(10);

/// Beyond its own deadline, how long a call may be out before its source counts as stuck: the
/// deadline drops the call, so only a runtime that no longer runs it gets here.
const GRACE: Duration = Duration::from_secs(1);

/// A sysfs scan or an NVMe pass out for longer is stuck (a hung admin command is the signal).
const LOCAL_TIMEOUT: Duration = Duration::from_secs(2);

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn schedule(every: Duration, timeout: Duration) -> Schedule {
    Schedule {
        every,
        max_cpu: 0.0,
        timeout,
    }
}

/// The cloud sampler on the driver.
struct Cloud {
    shared: Arc<Shared>,
    host: Arc<ArcSwap<HostSnapshot>>,
    state: State,
    imds_failures: u32,
    /// Completion of each source's last good read (by [`CloudSource`] index): the driver counts
    /// any answer as one, but a failed call is none, and its source must age.
    last_ok: [Option<Instant>; 4],
    /// One limiter per source for the failures the calls report.
    logs: [Limiter; 4],
    /// One limiter per EC2 api beyond DescribeVolumes (their failures are theirs alone).
    api_logs: [Limiter; 3],
    nvme_unavailable_said: bool,
    last_save: Option<Instant>,
}

impl Cloud {
    fn new(shared: Arc<Shared>, host: Arc<ArcSwap<HostSnapshot>>, mut state: State) -> Cloud {
        if let Mode::Found(c) = &**shared.mode.load() {
            state.set_instance(c.instance.clone());
        }
        // A sampler rebuilt after a panic starts from nothing: the state file has the model.
        if let Some(s) = &shared.saver {
            s.reload();
        }
        Cloud {
            shared,
            host,
            state,
            imds_failures: 0,
            last_ok: [None; 4],
            logs: std::array::from_fn(|_| Limiter::per_minute()),
            api_logs: std::array::from_fn(|_| Limiter::new(Duration::from_secs(600))),
            nvme_unavailable_said: false,
            last_save: None,
        }
    }
}

mod outcomes;

impl driver::Sampler for Cloud {
    type Key = CloudSource;
    type Reading = Reading;
    type Config = CloudConfig;
    type Snapshot = CloudSnapshot;

    /// The four sources always; [`Cloud::schedule`] says which are on.
    fn sources(&mut self, _: &CloudConfig) -> Vec<SourceSpec<CloudSource, Reading>> {
        CloudSource::ALL
            .into_iter()
            .map(|src| {
                let shared = Arc::clone(&self.shared);
                SourceSpec {
                    key: src,
                    name: src.name().into(),
                    make: driver::reader(move || {
                        let shared = Arc::clone(&shared);
                        move || Ok(Some(shared.read(src)))
                    }),
                    lane: None,
                }
            })
            .collect()
    }

    /// The NVMe cadence; the model ticks on the host sampler's wake-ups besides. With the cloud
    /// features off (off EC2, or `enabled = false`) and no volume to follow, only the sysfs
    /// scan is left, on the describe schedule: ticking (publishing, and joining the node) every
    /// second for a snapshot that cannot change cost ~0.03 % of a core.
    fn tick(&self, cfg: &CloudConfig) -> Duration {
        let idle = matches!(**self.shared.mode.load(), Mode::DisksOnly)
            && !self.shared.follow.load(Ordering::Relaxed);
        if idle {
            IDLE_TICK.max(cfg.model_interval)
        } else {
            cfg.model_interval
        }
    }

    fn wait(&self, cfg: &CloudConfig) -> Duration {
        WAIT.min(cfg.model_interval)
    }

    fn schedule(&mut self, src: &CloudSource, cfg: &CloudConfig, _: Instant) -> Option<Schedule> {
        let mode = self.shared.mode.load();
        let describe_timeout = |found: bool| {
            if found {
                LOCAL_TIMEOUT + cfg.call_deadline() + GRACE
            } else {
                LOCAL_TIMEOUT
            }
        };
        match (src, &**mode) {
            (CloudSource::Imds, Mode::Pending) => Some(schedule(
                backoff(
                    cfg.retry_min,
                    cfg.describe_interval,
                    self.imds_failures.max(1),
                ),
                cfg.discovery_deadline() + GRACE,
            )),
            (CloudSource::Describe, Mode::Found(_)) => {
                self.shared
                    .instance_type
                    .store(Arc::new(self.state.wants_instance_type()));
                Some(schedule(
                    self.state.describe_schedule(cfg),
                    describe_timeout(true),
                ))
            }
            (CloudSource::Describe, Mode::DisksOnly) => Some(schedule(
                self.state.describe_schedule(cfg),
                describe_timeout(false),
            )),
            (CloudSource::Poll, Mode::Found(_)) => {
                let plan = self.state.poll_plan(cfg);
                let every = self.state.poll_schedule(&plan, cfg, unix_now())?;
                self.shared.plan.store(Arc::new(plan));
                Some(schedule(every, cfg.call_deadline() + GRACE))
            }
            (CloudSource::Nvme, Mode::Found(_)) if cfg.nvme_stats => {
                let targets = self.state.nvme_targets(&cfg.dev_dir);
                if targets.is_empty() {
                    return None;
                }
                self.shared.nvme_targets.store(Arc::new(targets));
                Some(schedule(
                    cfg.model_interval,
                    LOCAL_TIMEOUT.max(cfg.model_interval),
                ))
            }
            _ => None,
        }
    }

    fn apply(
        &mut self,
        src: &CloudSource,
        at: Instant,
        reading: Option<Reading>,
        status: &mut SourceStatus,
        cfg: &CloudConfig,
    ) {
        let good = match reading {
            None | Some(Reading::Nothing) => false,
            Some(Reading::Discovered(d)) => self.on_discovery(d, status, at),
            Some(Reading::Described { disks, describe }) => {
                self.on_described(disks, describe, status, at, cfg)
            }
            Some(Reading::Polled {
                plan,
                points,
                requested,
            }) => self.on_polled(&plan, points, requested, status, at, cfg),
            Some(Reading::Pages(pages)) => self.on_pages(pages, status, at),
        };
        let i = *src as usize;
        if good {
            self.last_ok[i] = Some(at);
        } else {
            status.last_success = self.last_ok[i];
        }
    }

    /// The model first: the host sampler's newest disk reading, if not fed yet, advances the
    /// buckets at the reading's own time. Then the snapshot, with the health of the sources
    /// that are on.
    fn publish(
        &mut self,
        sources: &[SourceStatus],
        now: Instant,
        cfg: &CloudConfig,
    ) -> CloudSnapshot {
        if let Some(loaded) = self.shared.saver.as_ref().and_then(Saver::loaded) {
            match loaded {
                Ok(v) if v.is_empty() => {}
                Ok(v) => {
                    info!(
                        volumes = v.len(),
                        "Found the credit model's state from before the restart."
                    );
                    self.state.set_restore(v);
                }
                Err(error) => {
                    info!(%error, "Not taking up the credit model's saved state.");
                }
            }
        }
        let h = self.host.load();
        if let Some(at) = h.disks_at {
            let at_unix = state::unix_time_of(at, Instant::now(), unix_now());
            if let Some(started) = self.state.on_disk_counters(&h.all_disks, at, at_unix) {
                for s in started {
                    outcomes::log_start(&s);
                }
            }
        }
        self.shared
            .follow
            .store(self.state.follows_host(), Ordering::Relaxed);
        self.save(now);
        let mut snap = self.state.snapshot(cfg, unix_now());
        snap.sources = sources
            .iter()
            .filter(|s| s.interval.is_some() || s.in_flight_since.is_some())
            .cloned()
            .collect();
        snap
    }
}

/// What the cloud sampler is started with.
pub struct Wiring<'a> {
    pub config: Arc<ArcSwap<CloudConfig>>,
    /// For the sysfs scan.
    pub roots: &'a Roots,
    /// The host sampler's snapshot, whose unfiltered disk counters feed the credit model.
    pub host: Arc<ArcSwap<HostSnapshot>>,
    pub out: Arc<ArcSwap<CloudSnapshot>>,
    /// Runs after each publish (the agent joins the node there).
    pub on_publish: Option<Hook>,
    /// Where the calls run, from the readers' threads (stop the sampler before the runtime).
    pub runtime: Handle,
}

/// The running cloud side; [`CloudSampler::stop`] stops it (dropping it does not).
pub struct CloudSampler {
    driver: Driver,
    shared: Arc<Shared>,
    /// Turned true by [`CloudSampler::stop`]: every call in flight is dropped at once.
    abandon: watch::Sender<bool>,
}

impl CloudSampler {
    /// Starts the cloud side on its driver thread (see [`Wiring`]).
    pub fn spawn(w: Wiring) -> std::io::Result<CloudSampler> {
        CloudSampler::spawn_with(w, State::default)
    }

    /// [`CloudSampler::spawn`] with the state each (re)started sampler begins from.
    pub(crate) fn spawn_with(
        w: Wiring,
        initial: impl Fn() -> State + Send + 'static,
    ) -> std::io::Result<CloudSampler> {
        let Wiring {
            config,
            roots,
            host,
            out,
            on_publish,
            runtime,
        } = w;
        let (abandon, stop) = watch::channel(false);
        let start = CloudConfig::clone(&config.load());
        let saver = match (&start.state_file, start.enabled) {
            (_, Enabled::Off) | (None, _) => None,
            (Some(path), _) => match Saver::spawn(path.clone(), &roots.procfs) {
                Ok(s) => Some(s),
                Err(error) => {
                    warn!(%error, "Cannot start the credit model's state thread; a restart will wait for CloudWatch.");
                    None
                }
            },
        };
        let mode = if start.enabled == Enabled::Off {
            info!("Cloud features off ([cloud] enabled = false).");
            Mode::DisksOnly
        } else {
            Mode::Pending
        };
        let shared = Arc::new(Shared {
            start,
            config: Arc::clone(&config),
            sysfs: roots.sysfs.clone(),
            runtime,
            stop,
            mode: ArcSwap::from_pointee(mode),
            plan: ArcSwap::from_pointee(PollPlan::default()),
            nvme_targets: ArcSwap::from_pointee(Vec::new()),
            instance_type: ArcSwap::from_pointee(None),
            follow: AtomicBool::new(false),
            saver,
        });
        let sh = Arc::clone(&shared);
        let driver = Driver::spawn(
            "cloud",
            move || Cloud::new(Arc::clone(&sh), Arc::clone(&host), initial()),
            config,
            out,
            on_publish,
        )?;
        Ok(CloudSampler {
            driver,
            shared,
            abandon,
        })
    }

    /// The hook to run after each host sampler publish: while the model has a volume to
    /// follow, it wakes this driver, whose next tick advances the model from that reading and
    /// publishes. Never blocks.
    pub fn follower(&self) -> Hook {
        let wake = self.driver.waker();
        let shared = Arc::clone(&self.shared);
        Arc::new(move || {
            if shared.follow.load(Ordering::Relaxed) {
                wake();
            }
        })
    }

    /// Drops every call in flight and stops the driver thread: returns at once (a tick waits
    /// at most [`WAIT`] for its readers, and the dropped calls answer at once). A sysfs or NVMe
    /// read stuck in the kernel is left behind for the process exit to reap.
    pub fn stop(self) {
        let _ = self.abandon.send(true);
        self.driver.stop();
    }
}

#[cfg(test)]
mod tests;
