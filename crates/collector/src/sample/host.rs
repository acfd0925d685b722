//! The host sampler: the cheap, fast sources (`/proc/stat`, `loadavg`, PSI, `meminfo`,
//! `vmstat`, `diskstats`, `vm.dirty_*`, the mount table, bdi settings, the hung-task
//! detector) read every `interval`
//! (default 1 s) on the periodic driver, each by its own reader thread, integrated into peaks
//! and counters, and published as an immutable [`HostSnapshot`] through an `ArcSwap` that any
//! number of scrapes read without locking.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;

use crate::error::Error;
use crate::proc::diskstats::DiskStat;
use crate::proc::loadavg::LoadAvg;
use crate::proc::meminfo::Meminfo;
use crate::proc::overlays::{OverlayDevice, OverlayWatch};
use crate::proc::pressure::{Pressure, Resource};
use crate::proc::stat::Stat;
use crate::proc::sys_kernel::{self, HungTasks};
use crate::proc::sys_vm::VmTunables;
use crate::proc::vmstat::Vmstat;
use crate::proc::{diskstats, loadavg, meminfo, pressure, stat, sys_vm, vmstat};
use crate::roots::Roots;
use crate::sample::bursts::Bursts;
pub use crate::sample::disk_stall::DiskStall;
use crate::sample::disk_stall::StallTracker;
use crate::sample::driver::{self, Driver, Hook, Schedule, SourceSpec};
use crate::sample::status::SourceStatus;
use crate::sample::window::{AboveThreshold, Integral, WindowMax};
use crate::sys::bdi::{self, Bdi};
use crate::sys::block::{Disk, DiskFilter, PartitionCache};

/// Where a writeback burst starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    Bytes(u64),
    /// A fraction (0..1) of the kernel's dirty background threshold.
    OfBackground(f64),
}

/// Sampler settings; swapped atomically on config reload.
#[derive(Debug, Clone)]
pub struct HostConfig {
    pub interval: Duration,
    pub peak_window: Duration,
    /// A read still running after this long marks its source stuck.
    pub source_timeout: Duration,
    pub disks: DiskFilter,
    pub writeback_burst_threshold: Threshold,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            interval: Duration::from_secs(1),
            peak_window: Duration::from_secs(60),
            source_timeout: Duration::from_secs(2),
            disks: DiskFilter::default(),
            writeback_burst_threshold: Threshold::Bytes(64 << 20),
        }
    }
}

/// The host sources, each one kernel file (or one sysfs family) with its own reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostSource {
    Stat,
    Loadavg,
    Pressure(Resource),
    Meminfo,
    Vmstat,
    Diskstats,
    SysVm,
    Mountinfo,
    Bdi,
    HungTasks,
}

impl std::fmt::Display for HostSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl HostSource {
    /// Every host source, in the order the snapshot lists their health.
    pub const ALL: [HostSource; 13] = [
        HostSource::Stat,
        HostSource::Loadavg,
        HostSource::Pressure(Resource::Cpu),
        HostSource::Pressure(Resource::Io),
        HostSource::Pressure(Resource::Memory),
        HostSource::Pressure(Resource::Irq),
        HostSource::Meminfo,
        HostSource::Vmstat,
        HostSource::Diskstats,
        HostSource::SysVm,
        HostSource::Mountinfo,
        HostSource::Bdi,
        HostSource::HungTasks,
    ];

    /// The `source` label.
    pub fn name(self) -> &'static str {
        match self {
            HostSource::Stat => "stat",
            HostSource::Loadavg => "loadavg",
            HostSource::Pressure(Resource::Cpu) => "pressure_cpu",
            HostSource::Pressure(Resource::Io) => "pressure_io",
            HostSource::Pressure(Resource::Memory) => "pressure_memory",
            HostSource::Pressure(Resource::Irq) => "pressure_irq",
            HostSource::Meminfo => "meminfo",
            HostSource::Vmstat => "vmstat",
            HostSource::Diskstats => "diskstats",
            HostSource::SysVm => "sys_vm",
            HostSource::Mountinfo => "mountinfo",
            HostSource::Bdi => "bdi",
            HostSource::HungTasks => "hung_tasks",
        }
    }

    /// Sources that change only when an operator changes them are read less often than every
    /// tick: the bdi settings are ~5 files per block device (0.2 ms a pass on this machine's
    /// 12 devices, most of a 1 s pass), and a 30 s delay in seeing a changed max_ratio costs
    /// nothing.
    fn period(self) -> Option<Duration> {
        match self {
            HostSource::Bdi => Some(Duration::from_secs(30)),
            _ => None,
        }
    }

    /// The 1 s sources whose files the kernel makes from memory, under no lock a disk's I/O
    /// holds (counters, PSI averages, tunables, `diskstats` and the sysfs partition list)
    /// share one reader thread: one wake-up a second instead of eleven
    /// ([`driver`](crate::sample::driver)'s lanes). `mountinfo` keeps its own (it takes the
    /// mount namespace's lock, which a mount or unmount waiting on a hung disk can hold) and
    /// so does `bdi` (a directory walk every 30 s).
    pub fn lane(self) -> Option<&'static str> {
        match self {
            HostSource::Mountinfo | HostSource::Bdi => None,
            _ => Some("procfs"),
        }
    }

    /// One read of the source. `caches` is what its reader keeps between reads.
    pub fn read(self, roots: &Roots, caches: &mut ReaderCaches) -> ReadResult {
        fn wrap<T>(r: Result<Option<T>, Error>, f: impl FnOnce(T) -> Reading) -> ReadResult {
            r.map(|o| o.map(f))
        }
        match self {
            HostSource::Stat => wrap(stat::read(roots), Reading::Stat),
            HostSource::Loadavg => wrap(loadavg::read(roots), Reading::LoadAvg),
            HostSource::Pressure(res) => {
                wrap(pressure::read(roots, res), |p| Reading::Pressure(res, p))
            }
            HostSource::Meminfo => wrap(meminfo::read(roots), Reading::Meminfo),
            HostSource::Vmstat => wrap(vmstat::read(roots), Reading::Vmstat),
            HostSource::Diskstats => wrap(diskstats::read(roots), |d| {
                Reading::Disks(caches.partitions.classify(roots, d))
            }),
            HostSource::SysVm => wrap(sys_vm::read(roots), Reading::Tunables),
            HostSource::Mountinfo => wrap(caches.overlays.read(roots), Reading::Overlays),
            HostSource::Bdi => wrap(bdi::read(roots), Reading::Bdi),
            HostSource::HungTasks => wrap(sys_kernel::read_hung_tasks(roots), Reading::HungTasks),
        }
    }
}

/// Window maxima over `peak_window`, in base units.
#[derive(Debug, Clone, Default)]
pub struct Peaks {
    pub dirty_bytes: Option<f64>,
    pub writeback_bytes: Option<f64>,
    pub procs_blocked: Option<f64>,
    /// `[resource][0 = some, 1 = full]`, ratio.
    pub psi_avg10: [[Option<f64>; 2]; 4],
}

/// Counters integrated between scrapes; never reset.
#[derive(Debug, Clone, Default)]
pub struct Integrals {
    /// ∫ procs_blocked dt: blocked-task-seconds.
    pub procs_blocked_seconds: f64,
    /// Time `Dirty` was above the kernel's background threshold (flushers running).
    pub dirty_over_background_seconds: f64,
    /// Time in a writeback burst: `Writeback` above the burst threshold, or more than the
    /// threshold written back since the previous vmstat reading.
    pub writeback_burst_seconds: f64,
    /// Writeback bursts (rising edges of the condition above). A flush that starts and ends
    /// between two samples is one: the Writeback level never shows it, `nr_written` does.
    pub writeback_bursts: u64,
}

/// Everything the host sampler knows at one tick. Immutable once published.
#[derive(Debug, Clone, Default)]
pub struct HostSnapshot {
    /// Wall time of the tick that built this snapshot (`None` before the first tick).
    pub taken: Option<SystemTime>,
    pub stat: Option<Stat>,
    pub loadavg: Option<LoadAvg>,
    /// Indexed like [`Resource::ALL`].
    pub pressure: [Option<Pressure>; 4],
    pub meminfo: Option<Meminfo>,
    pub vmstat: Option<Vmstat>,
    /// Bytes written back per second between the last two vmstat readings (`nr_written` ×
    /// page size / interval); `None` before the second reading or after a gap.
    pub written_bytes_per_second: Option<f64>,
    /// Filtered by the config's [`DiskFilter`].
    pub disks: Vec<DiskStat>,
    /// Every device of the last diskstats read, unfiltered (partitions, loop and excluded
    /// devices included), shared rather than copied: the cloud side's credit model integrates
    /// I/O of devices the `[disks]` filter may hide, from this one read.
    pub all_disks: Arc<Vec<Disk>>,
    /// Completion time of the diskstats read behind `disks` and `all_disks`.
    pub disks_at: Option<Instant>,
    /// Devices of `all_disks` with I/O in flight and no completion since the previous
    /// diskstats read (partitions and loop devices included), longest first
    /// ([`crate::sample::disk_stall`]). Empty when nothing is stalled.
    pub disk_stalls: Vec<DiskStall>,
    /// Seconds each device of `all_disks` has spent stalled, by (major, minor); never
    /// decreases while the device exists.
    pub disk_stalled_seconds: BTreeMap<(u32, u32), f64>,
    pub tunables: Option<VmTunables>,
    /// Overlay mounts by upper device (with how many are `volatile`); `None` when no mount
    /// table could be read.
    pub overlays: Option<Vec<OverlayDevice>>,
    /// Writeback settings of the backing devices (all of them; the encoder joins them with
    /// the exported disks by major:minor).
    pub bdi: Vec<Bdi>,
    /// The kernel's hung-task detector; `None` without `CONFIG_DETECT_HUNG_TASK`.
    pub hung_tasks: Option<HungTasks>,
    pub peaks: Peaks,
    pub integrals: Integrals,
    /// The writeback burst threshold in effect, bytes.
    pub burst_threshold_bytes: Option<u64>,
    pub page_size: u64,
    pub clock_ticks: u64,
    pub sources: Vec<SourceStatus>,
}

/// One reading from one source.
#[derive(Debug, Clone)]
pub enum Reading {
    Stat(Stat),
    LoadAvg(LoadAvg),
    Pressure(Resource, Pressure),
    Meminfo(Meminfo),
    Vmstat(Vmstat),
    Disks(Vec<Disk>),
    Tunables(VmTunables),
    /// Overlay mounts per device of their upper directory.
    Overlays(Vec<OverlayDevice>),
    Bdi(Vec<Bdi>),
    HungTasks(HungTasks),
}

pub type ReadResult = Result<Option<Reading>, Error>;

/// Reads every host source once, sequentially, on the calling thread. For tests and one-shot
/// commands; the agent uses [`HostSampler`].
pub fn read_all(roots: &Roots) -> Vec<(HostSource, ReadResult)> {
    HostReaders::new().read_all(roots)
}

/// What a host reader keeps between reads: the diskstats reader's partition flags, the
/// mount table reader's open table and last result (re-read only when the kernel says the
/// table changed: [`OverlayWatch`]).
#[derive(Default)]
pub struct ReaderCaches {
    partitions: PartitionCache,
    overlays: OverlayWatch,
}

/// The host readers with their caches, for repeated sequential passes: what one sampler tick
/// costs, without the threads (benchmarks).
#[derive(Default)]
pub struct HostReaders(ReaderCaches);

impl HostReaders {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn read_all(&mut self, roots: &Roots) -> Vec<(HostSource, ReadResult)> {
        HostSource::ALL
            .into_iter()
            .map(|s| (s, s.read(roots, &mut self.0)))
            .collect()
    }
}

/// Running host sampler; dropping it does not stop it, [`HostSampler::stop`] does.
pub struct HostSampler(Driver);

impl HostSampler {
    /// Starts the sampler thread and one reader thread per source. The first snapshot is
    /// published after the first tick (at most `source_timeout` after start).
    pub fn spawn(
        roots: Arc<Roots>,
        config: Arc<ArcSwap<HostConfig>>,
        out: Arc<ArcSwap<HostSnapshot>>,
        on_publish: Option<Hook>,
    ) -> std::io::Result<HostSampler> {
        let driver = Driver::spawn(
            "sampler",
            move || Host {
                roots: Arc::clone(&roots),
                snap: HostSnapshot {
                    sources: HostSource::ALL
                        .iter()
                        .map(|s| SourceStatus::new(s.name()))
                        .collect(),
                    page_size: crate::sysconf::page_size(),
                    clock_ticks: crate::sysconf::clock_ticks(),
                    ..HostSnapshot::default()
                },
                acc: Accumulators::default(),
            },
            config,
            out,
            on_publish,
        )?;
        Ok(HostSampler(driver))
    }

    /// Stops the sampler thread and waits for it. Reader threads end when their current read
    /// returns (a reader stuck in the kernel is left behind; the process exit reaps it).
    pub fn stop(self) {
        self.0.stop();
    }
}

#[derive(Default)]
struct Accumulators {
    dirty: WindowMax,
    writeback: WindowMax,
    blocked: WindowMax,
    psi: [[WindowMax; 2]; 4],
    blocked_integral: Integral,
    dirty_over_bg: AboveThreshold,
    bursts: Bursts,
    stalls: StallTracker,
}

/// The host sampler on the periodic driver.
struct Host {
    roots: Arc<Roots>,
    snap: HostSnapshot,
    acc: Accumulators,
}

impl driver::Sampler for Host {
    type Key = HostSource;
    type Reading = Reading;
    type Config = HostConfig;
    type Snapshot = HostSnapshot;

    fn sources(&mut self, _: &HostConfig) -> Vec<SourceSpec<HostSource, Reading>> {
        HostSource::ALL
            .into_iter()
            .map(|src| {
                let roots = Arc::clone(&self.roots);
                SourceSpec {
                    key: src,
                    name: src.name().into(),
                    make: driver::reader(move || {
                        let roots = Arc::clone(&roots);
                        let mut caches = ReaderCaches::default();
                        move || src.read(&roots, &mut caches)
                    }),
                    lane: src.lane(),
                }
            })
            .collect()
    }

    fn tick(&self, cfg: &HostConfig) -> Duration {
        cfg.interval
    }

    fn wait(&self, cfg: &HostConfig) -> Duration {
        cfg.source_timeout.min(cfg.interval)
    }

    fn schedule(&mut self, src: &HostSource, cfg: &HostConfig, _: Instant) -> Option<Schedule> {
        Some(Schedule {
            every: src.period().unwrap_or(cfg.interval),
            max_cpu: 0.0,
            timeout: cfg.source_timeout,
        })
    }

    fn apply(
        &mut self,
        src: &HostSource,
        at: Instant,
        reading: Option<Reading>,
        _: &mut SourceStatus,
        cfg: &HostConfig,
    ) {
        match reading {
            Some(r) => self.store(cfg, r, at),
            None => self.clear(*src),
        }
    }

    fn publish(
        &mut self,
        sources: &[SourceStatus],
        now: Instant,
        cfg: &HostConfig,
    ) -> HostSnapshot {
        self.snap.sources = sources.to_vec();
        self.snap.taken = Some(SystemTime::now());
        self.update_derived(cfg, now);
        self.snap.clone()
    }
}

impl Host {
    /// The source's file does not exist (any more): its metrics are absent.
    fn clear(&mut self, src: HostSource) {
        let s = &mut self.snap;
        match src {
            HostSource::Stat => s.stat = None,
            HostSource::Loadavg => s.loadavg = None,
            HostSource::Pressure(r) => s.pressure[r as usize] = None,
            HostSource::Meminfo => s.meminfo = None,
            HostSource::Vmstat => {
                s.vmstat = None;
                s.written_bytes_per_second = None;
                self.acc.bursts.forget_written();
            }
            HostSource::Diskstats => {
                s.disks.clear();
                s.all_disks = Arc::default();
                s.disk_stalls.clear();
                s.disk_stalled_seconds.clear();
                self.acc.stalls.clear();
            }
            HostSource::SysVm => s.tunables = None,
            HostSource::Mountinfo => s.overlays = None,
            HostSource::Bdi => s.bdi.clear(),
            HostSource::HungTasks => s.hung_tasks = None,
        }
    }

    /// Stores a reading and feeds the between-scrape accumulators at the reading's own time.
    fn store(&mut self, cfg: &HostConfig, r: Reading, at: Instant) {
        let win = cfg.peak_window;
        let gap = cfg.interval * 3 + cfg.source_timeout;
        let burst_threshold = self.burst_threshold(cfg);
        let acc = &mut self.acc;
        match r {
            Reading::Stat(st) => {
                if let Some(b) = st.procs_blocked {
                    acc.blocked.push(at, b as f64, win);
                    acc.blocked_integral.observe(at, b as f64, gap);
                }
                self.snap.stat = Some(st);
            }
            Reading::LoadAvg(l) => self.snap.loadavg = Some(l),
            Reading::Pressure(res, p) => {
                let i = res as usize;
                if let Some(r) = p.some {
                    acc.psi[i][0].push(at, r.avg10, win);
                }
                if let Some(r) = p.full {
                    acc.psi[i][1].push(at, r.avg10, win);
                }
                self.snap.pressure[i] = Some(p);
            }
            Reading::Meminfo(m) => {
                if let Some(d) = m.dirty {
                    acc.dirty.push(at, d as f64, win);
                    let bg = self
                        .snap
                        .vmstat
                        .and_then(|v| v.nr_dirty_background_threshold);
                    if let Some(bg) = bg {
                        acc.dirty_over_bg.observe(
                            at,
                            d > bg.saturating_mul(self.snap.page_size),
                            gap,
                        );
                    }
                }
                if let Some(w) = m.writeback {
                    acc.writeback.push(at, w as f64, win);
                    acc.bursts.level(at, w, burst_threshold, gap);
                }
                self.snap.meminfo = Some(m);
            }
            Reading::Vmstat(v) => {
                let page = self.snap.page_size;
                self.snap.written_bytes_per_second =
                    acc.bursts
                        .written(at, v.nr_written, page, burst_threshold, gap);
                self.snap.vmstat = Some(v);
            }
            Reading::Disks(d) => {
                self.snap.disks = d
                    .iter()
                    .filter(|d| cfg.disks.keep(d))
                    .map(|d| d.stat.clone())
                    .collect();
                acc.stalls.observe(&d, at, gap);
                self.snap.disk_stalls = acc.stalls.stalls().to_vec();
                self.snap.disk_stalled_seconds = acc.stalls.stalled_seconds();
                self.snap.all_disks = Arc::new(d);
                self.snap.disks_at = Some(at);
            }
            Reading::Tunables(t) => self.snap.tunables = Some(t),
            Reading::Overlays(o) => self.snap.overlays = Some(o),
            Reading::Bdi(b) => self.snap.bdi = b,
            Reading::HungTasks(h) => self.snap.hung_tasks = Some(h),
        }
    }

    fn burst_threshold(&self, cfg: &HostConfig) -> Option<u64> {
        match cfg.writeback_burst_threshold {
            Threshold::Bytes(b) => Some(b),
            Threshold::OfBackground(f) => self
                .snap
                .vmstat
                .and_then(|v| v.nr_dirty_background_threshold)
                .map(|p| (p.saturating_mul(self.snap.page_size) as f64 * f) as u64),
        }
    }

    fn update_derived(&mut self, cfg: &HostConfig, now: Instant) {
        let win = cfg.peak_window;
        let acc = &mut self.acc;
        for w in [&mut acc.dirty, &mut acc.writeback, &mut acc.blocked] {
            w.expire(now, win);
        }
        let peaks = Peaks {
            dirty_bytes: self.snap.meminfo.and_then(|m| m.dirty).and(acc.dirty.max()),
            writeback_bytes: self
                .snap
                .meminfo
                .and_then(|m| m.writeback)
                .and(acc.writeback.max()),
            procs_blocked: self
                .snap
                .stat
                .as_ref()
                .and_then(|s| s.procs_blocked)
                .and(acc.blocked.max()),
            psi_avg10: std::array::from_fn(|i| {
                std::array::from_fn(|k| {
                    let w = &mut acc.psi[i][k];
                    w.expire(now, win);
                    let present = self.snap.pressure[i].is_some_and(|p| {
                        if k == 0 {
                            p.some.is_some()
                        } else {
                            p.full.is_some()
                        }
                    });
                    if present {
                        w.max()
                    } else {
                        None
                    }
                })
            }),
        };
        self.snap.peaks = peaks;
        self.snap.integrals = Integrals {
            procs_blocked_seconds: acc.blocked_integral.total,
            dirty_over_background_seconds: acc.dirty_over_bg.seconds,
            writeback_burst_seconds: acc.bursts.burst.seconds,
            writeback_bursts: acc.bursts.burst.episodes,
        };
        self.snap.burst_threshold_bytes = self.burst_threshold(cfg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_has_a_distinct_name_and_reads_on_this_machine() {
        let names: std::collections::HashSet<&str> =
            HostSource::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(names.len(), HostSource::ALL.len());
        for (src, r) in read_all(&Roots::default()) {
            assert!(r.is_ok(), "{}: {:?}", src.name(), r.err());
        }
    }
}
