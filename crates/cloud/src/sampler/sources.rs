//! The cloud sources as the driver sees them: their names, what one read brings back, and
//! what each reader does with what the sampler shares with it (the discovered clients, the
//! plan of the next poll, the NVMe devices to read). The calls themselves are in
//! [`crate::calls`].

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use stallwatch_collector::ErrorKind;
use tokio::runtime::Handle;
use tokio::sync::watch;

use crate::calls::{self, Clients, Describe, Discovery, Pages, Ran};
use crate::cloudwatch::Points;
use crate::config::CloudConfig;
use crate::devices::BlockDevice;
use crate::persist::Saver;
use crate::state::{Failure, PollPlan};

/// The cloud sources (the `source` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloudSource {
    Imds,
    Describe,
    Poll,
    Nvme,
}

impl CloudSource {
    pub const ALL: [CloudSource; 4] = [
        CloudSource::Imds,
        CloudSource::Describe,
        CloudSource::Poll,
        CloudSource::Nvme,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CloudSource::Imds => "cloud_imds",
            CloudSource::Describe => "cloud_describe",
            CloudSource::Poll => "cloud_poll",
            CloudSource::Nvme => "cloud_nvme",
        }
    }
}

/// What one read of a cloud source brings back.
pub enum Reading {
    Discovered(Discovery),
    Described {
        disks: Result<Vec<BlockDevice>, (ErrorKind, String)>,
        /// `None`: no EC2 calls (cloud features off, or not on EC2).
        describe: Option<Describe>,
    },
    Polled {
        plan: PollPlan,
        points: Result<Points, Failure>,
        /// Metrics requested by the calls sent (what CloudWatch bills).
        requested: usize,
    },
    Pages(Pages),
    /// No call was made or its answer is not wanted: the agent is stopping.
    Nothing,
}

/// Where discovery stands; the readers read it for the clients.
pub(super) enum Mode {
    Pending,
    Found(Arc<Clients>),
    /// Cloud features off (`enabled = false`, not on EC2, or a broken setting): the sysfs scan
    /// alone.
    DisksOnly,
}

/// What the sampler and its readers share. It outlives a sampler restarted after a panic (the
/// driver keeps the readers, and with them this): the clients are not discovered again.
pub(super) struct Shared {
    /// The config the agent started with: `enabled`, region, instance and endpoints take
    /// effect on restart.
    pub(super) start: CloudConfig,
    pub(super) config: Arc<ArcSwap<CloudConfig>>,
    pub(super) sysfs: PathBuf,
    pub(super) runtime: Handle,
    pub(super) stop: watch::Receiver<bool>,
    pub(super) mode: ArcSwap<Mode>,
    /// What the next poll asks and which log pages the next pass reads: set by the sampler
    /// when it schedules, read by the reader when the driver asks it.
    pub(super) plan: ArcSwap<PollPlan>,
    pub(super) nvme_targets: ArcSwap<Vec<(String, PathBuf)>>,
    /// The instance type whose EBS limits the next describe asks, if any.
    pub(super) instance_type: ArcSwap<Option<String>>,
    /// The credit model's state file (`None`: not kept).
    pub(super) saver: Option<Saver>,
    /// The model has a volume to follow: host publishes should wake this driver.
    pub(super) follow: AtomicBool,
}

impl Shared {
    fn run<T: Send + 'static>(
        &self,
        deadline: Duration,
        call: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Ran<T> {
        calls::run(&self.runtime, &self.stop, deadline, call)
    }

    /// One read of `src`.
    pub(super) fn read(&self, src: CloudSource) -> Reading {
        let cfg = self.config.load_full();
        let mode = self.mode.load_full();
        match (src, &*mode) {
            (CloudSource::Imds, _) => {
                let deadline = cfg.discovery_deadline();
                let t = Instant::now();
                match self.run(deadline, calls::discover(self.start.clone())) {
                    Ran::Done(d) => Reading::Discovered(d),
                    Ran::TimedOut => Reading::Discovered(Discovery::NoAnswer {
                        error: format!("no answer within {deadline:?}"),
                        waited: t.elapsed(),
                    }),
                    Ran::Stopped => Reading::Nothing,
                }
            }
            (CloudSource::Describe, mode) => {
                let disks = calls::scan_disks(&self.sysfs);
                let describe = match mode {
                    Mode::Found(c) => {
                        let deadline = cfg.call_deadline();
                        let ty = Option::clone(&self.instance_type.load());
                        Some(
                            match self.run(deadline, calls::describe(Arc::clone(c), ty)) {
                                Ran::Done(d) => d,
                                Ran::TimedOut => Describe {
                                    volumes: Err(calls::late("DescribeVolumes", deadline)),
                                    status: None,
                                    modifications: None,
                                    instance_type: None,
                                },
                                Ran::Stopped => return Reading::Nothing,
                            },
                        )
                    }
                    _ => None,
                };
                Reading::Described { disks, describe }
            }
            (CloudSource::Poll, Mode::Found(c)) => {
                let plan = self.plan.load_full();
                let deadline = cfg.call_deadline();
                let requested = Arc::new(AtomicUsize::new(0));
                let ran = self.run(
                    deadline,
                    calls::poll(
                        Arc::clone(c),
                        Arc::clone(&plan),
                        cfg.lookback,
                        Arc::clone(&requested),
                    ),
                );
                let points = match ran {
                    Ran::Done(p) => p,
                    Ran::TimedOut => Err(calls::late("GetMetricData", deadline)),
                    Ran::Stopped => return Reading::Nothing,
                };
                Reading::Polled {
                    plan: PollPlan::clone(&plan),
                    points,
                    requested: requested.load(Ordering::Relaxed),
                }
            }
            (CloudSource::Nvme, Mode::Found(_)) => {
                Reading::Pages(calls::read_pages(&self.nvme_targets.load()))
            }
            (CloudSource::Poll | CloudSource::Nvme, _) => Reading::Nothing,
        }
    }
}
