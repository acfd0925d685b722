//! The host sampler: the cheap, fast sources (`/proc/stat`, `loadavg`, PSI, `meminfo`,
//! `vmstat`, `diskstats`, `vm.dirty_*`) read every `interval` (default 1 s), each by its own
//! worker thread, integrated into peaks and counters, and published as an immutable
//! [`HostSnapshot`] through an `ArcSwap` that any number of scrapes read without locking.

use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use regex::Regex;
use tracing::{info, warn};

use crate::error::Error;
use crate::proc::diskstats::DiskStat;
use crate::proc::loadavg::LoadAvg;
use crate::proc::meminfo::Meminfo;
use crate::proc::pressure::{Pressure, Resource};
use crate::proc::stat::Stat;
use crate::proc::sys_vm::VmTunables;
use crate::proc::vmstat::Vmstat;
use crate::proc::{diskstats, loadavg, meminfo, mountinfo, pressure, stat, sys_vm, vmstat};
use crate::roots::Roots;
use crate::sample::status::SourceStatus;
use crate::sample::window::{AboveThreshold, Integral, WindowMax};
use crate::sample::worker::{Background, Outcome, Worker};
use crate::sys::bdi::{self, Bdi};

/// Which block devices to export. Partitions, loop and RAM devices are off by default: they
/// repeat their parent's I/O or are not storage, and each costs ~20 series.
#[derive(Debug, Clone, Default)]
pub struct DiskFilter {
    pub include_partitions: bool,
    pub include_loop: bool,
    pub include_ram: bool,
    /// Devices whose name matches are dropped (after the class switches above).
    pub exclude: Option<Regex>,
    /// When set, only devices whose name matches are kept.
    pub include: Option<Regex>,
}

impl DiskFilter {
    pub fn keep(&self, d: &Disk) -> bool {
        let name = d.stat.name.as_str();
        if d.partition && !self.include_partitions {
            return false;
        }
        if is_loop(name) && !self.include_loop {
            return false;
        }
        if is_ram(name) && !self.include_ram {
            return false;
        }
        if self.exclude.as_ref().is_some_and(|re| re.is_match(name)) {
            return false;
        }
        self.include.as_ref().is_none_or(|re| re.is_match(name))
    }
}

fn is_loop(name: &str) -> bool {
    name.strip_prefix("loop")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn is_ram(name: &str) -> bool {
    let rest = name
        .strip_prefix("zram")
        .or_else(|| name.strip_prefix("ram"));
    rest.is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

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

/// A block device as the diskstats worker saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub stat: DiskStat,
    /// A partition (sysfs `class/block/<dev>/partition` exists, or the name says so).
    pub partition: bool,
}

/// Window maxima over `peak_window`, in base units.
#[derive(Debug, Clone, Default)]
pub struct Peaks {
    pub dirty_bytes: Option<f64>,
    pub writeback_bytes: Option<f64>,
    pub procs_blocked: Option<f64>,
    /// `[resource][0 = some, 1 = full]`, ratio.
    pub psi_avg10: [[Option<f64>; 2]; 3],
}

/// Counters integrated between scrapes; never reset.
#[derive(Debug, Clone, Default)]
pub struct Integrals {
    /// ∫ procs_blocked dt: blocked-task-seconds.
    pub procs_blocked_seconds: f64,
    /// Time `Dirty` was above the kernel's background threshold (flushers running).
    pub dirty_over_background_seconds: f64,
    /// Time `Writeback` was above the burst threshold.
    pub writeback_burst_seconds: f64,
    /// Episodes of `Writeback` above the burst threshold.
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
    pub pressure: [Option<Pressure>; 3],
    pub meminfo: Option<Meminfo>,
    pub vmstat: Option<Vmstat>,
    /// Filtered by the config's [`DiskFilter`].
    pub disks: Vec<DiskStat>,
    /// Every device of the last diskstats read, unfiltered (partitions, loop and excluded
    /// devices included), shared rather than copied: the cloud side's credit model integrates
    /// I/O of devices the `[disks]` filter may hide, from this one read.
    pub all_disks: Arc<Vec<Disk>>,
    /// Completion time of the diskstats read behind `disks` and `all_disks`.
    pub disks_at: Option<Instant>,
    pub tunables: Option<VmTunables>,
    /// Overlay mounts by upper device; `None` when no mount table could be read.
    pub overlays: Option<Vec<(String, u64)>>,
    /// Writeback settings of the backing devices (all of them; the encoder joins them with
    /// the exported disks by major:minor).
    pub bdi: Vec<Bdi>,
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
    Overlays(Vec<(String, u64)>),
    Bdi(Vec<Bdi>),
}

type ReadResult = Result<Option<Reading>, Error>;
type Reader = Box<dyn FnMut(&Roots) -> ReadResult + Send>;

/// The host sources, in a fixed order: `(label, reader)`.
fn sources() -> Vec<(&'static str, Reader)> {
    fn wrap<T>(r: Result<Option<T>, Error>, f: impl FnOnce(T) -> Reading) -> ReadResult {
        r.map(|o| o.map(f))
    }
    let psi = |res: Resource| {
        Box::new(move |roots: &Roots| {
            wrap(pressure::read(roots, res), |p| Reading::Pressure(res, p))
        }) as Reader
    };
    vec![
        (
            "stat",
            Box::new(|r: &Roots| wrap(stat::read(r), Reading::Stat)),
        ),
        (
            "loadavg",
            Box::new(|r: &Roots| wrap(loadavg::read(r), Reading::LoadAvg)),
        ),
        ("pressure_cpu", psi(Resource::Cpu)),
        ("pressure_io", psi(Resource::Io)),
        ("pressure_memory", psi(Resource::Memory)),
        (
            "meminfo",
            Box::new(|r: &Roots| wrap(meminfo::read(r), Reading::Meminfo)),
        ),
        (
            "vmstat",
            Box::new(|r: &Roots| wrap(vmstat::read(r), Reading::Vmstat)),
        ),
        ("diskstats", {
            let mut cache = PartitionCache::default();
            Box::new(move |r: &Roots| {
                wrap(diskstats::read(r), |d| Reading::Disks(cache.classify(r, d)))
            })
        }),
        (
            "sys_vm",
            Box::new(|r: &Roots| wrap(sys_vm::read(r), Reading::Tunables)),
        ),
        (
            "mountinfo",
            Box::new(|r: &Roots| wrap(read_overlays(r), Reading::Overlays)),
        ),
        (
            "bdi",
            Box::new(|r: &Roots| wrap(bdi::read(r), Reading::Bdi)),
        ),
    ]
}

/// Reads every host source once, sequentially, on the calling thread. For tests and one-shot
/// commands; the agent uses [`HostSampler`].
pub fn read_all(roots: &Roots) -> Vec<(&'static str, ReadResult)> {
    HostReaders::new().read_all(roots)
}

/// The host readers with their caches (partition flags), for repeated sequential passes:
/// what one sampler tick costs, without the threads (benchmarks).
pub struct HostReaders(Vec<(&'static str, Reader)>);

impl HostReaders {
    pub fn new() -> Self {
        HostReaders(sources())
    }

    pub fn read_all(&mut self, roots: &Roots) -> Vec<(&'static str, ReadResult)> {
        self.0
            .iter_mut()
            .map(|(name, f)| (*name, f(roots)))
            .collect()
    }
}

impl Default for HostReaders {
    fn default() -> Self {
        Self::new()
    }
}

/// Counts overlay mounts by the block device of their upper directory: that filesystem is what
/// `syncfs` flushes when an overlay unmounts (Garden's 10 s unmounts). The mount table is the
/// host's init's (`<procfs>/1/mountinfo`, which with a host `/proc` is the host's even from a
/// container), else our own.
fn read_overlays(roots: &Roots) -> Result<Option<Vec<(String, u64)>>, Error> {
    let mut text = None;
    for who in ["1", "self"] {
        let p = roots.proc(&format!("{who}/mountinfo"));
        match crate::roots::read_optional(&p) {
            Ok(Some(t)) => {
                text = Some((p, t));
                break;
            }
            Ok(None) => {}
            Err(e) if who == "1" => {
                tracing::debug!(error = %e, "Cannot read init's mount table; using our own.");
            }
            Err(e) => return Err(e),
        }
    }
    let Some((path, text)) = text else {
        return Ok(None);
    };
    let mounts = mountinfo::parse(&text).map_err(|e| Error::Parse { path, source: e })?;
    let mut by_dev: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for m in mounts.iter().filter(|m| m.fs_type == "overlay") {
        let dev = m
            .upperdir
            .as_deref()
            .and_then(|u| mountinfo::mount_of(&mounts, u))
            .map(|up| device_name(roots, up))
            .unwrap_or_else(|| "none".to_string());
        *by_dev.entry(dev).or_insert(0) += 1;
    }
    Ok(Some(by_dev.into_iter().collect()))
}

/// A mount's block device name (`loop0`) from sysfs, or its filesystem type for mounts that
/// are not on a block device (`tmpfs`).
fn device_name(roots: &Roots, m: &mountinfo::Mount) -> String {
    if m.major != 0 {
        if let Ok(target) =
            std::fs::read_link(roots.sys(&format!("dev/block/{}:{}", m.major, m.minor)))
        {
            if let Some(name) = target.file_name().and_then(|n| n.to_str()) {
                return name.to_string();
            }
        }
        return format!("{}:{}", m.major, m.minor);
    }
    m.fs_type.clone()
}

/// Remembers which devices are partitions: sysfs is asked once per (name, major, minor).
#[derive(Default)]
struct PartitionCache {
    known: std::collections::HashMap<(String, u32, u32), bool>,
}

impl PartitionCache {
    fn classify(&mut self, roots: &Roots, stats: Vec<DiskStat>) -> Vec<Disk> {
        if self.known.len() > 4096 {
            self.known.clear(); // device churn (loop devices): keep the cache bounded
        }
        stats
            .into_iter()
            .map(|stat| {
                let key = (stat.name.clone(), stat.major, stat.minor);
                let partition = *self
                    .known
                    .entry(key)
                    .or_insert_with(|| is_partition(&roots.sys("class/block"), &stat.name));
                Disk { stat, partition }
            })
            .collect()
    }
}

fn is_partition(class_block: &Path, name: &str) -> bool {
    let dev = class_block.join(name);
    if dev.exists() {
        return dev.join("partition").exists();
    }
    // No sysfs entry (fixture trees, exotic mounts): judge by the name's shape.
    static SHAPE: std::sync::OnceLock<Option<Regex>> = std::sync::OnceLock::new();
    SHAPE
        .get_or_init(|| {
            Regex::new(r"^((h|s|v|xv)d[a-z]+\d+|(nvme\d+n\d+|mmcblk\d+|loop\d+|md\d+)p\d+)$").ok()
        })
        .as_ref()
        .is_some_and(|re| re.is_match(name))
}

/// Running host sampler; dropping it does not stop it, [`HostSampler::stop`] does.
pub struct HostSampler(Background);

impl HostSampler {
    /// Starts the sampler thread and one worker thread per source. The first snapshot is
    /// published after the first tick (at most `source_timeout` after start).
    pub fn spawn(
        roots: Arc<Roots>,
        config: Arc<ArcSwap<HostConfig>>,
        out: Arc<ArcSwap<HostSnapshot>>,
    ) -> std::io::Result<HostSampler> {
        let (res_tx, res_rx) = mpsc::channel::<Outcome<ReadResult>>();
        let mut workers = Vec::new();
        let mut status = Vec::new();
        for (idx, (name, mut f)) in sources().into_iter().enumerate() {
            let roots = Arc::clone(&roots);
            workers.push(Worker::spawn(name, idx, res_tx.clone(), move || f(&roots))?);
            status.push(SourceStatus::new(name));
        }
        drop(res_tx);
        let n = workers.len();
        let mut state = State {
            workers,
            snap: HostSnapshot {
                sources: status,
                page_size: super::page_size(),
                clock_ticks: super::clock_ticks(),
                ..HostSnapshot::default()
            },
            acc: Accumulators::default(),
            error_log: vec![None; n],
            stuck_log: vec![None; n],
            last_request: vec![None; n],
        };
        let bg = Background::spawn("sw-sampler", move |sleeper| loop {
            let cfg = config.load_full();
            let tick = Instant::now();
            state.tick(&cfg, &res_rx, tick);
            out.store(Arc::new(state.snap.clone()));
            let next = tick + cfg.interval;
            if !sleeper.sleep(next.saturating_duration_since(Instant::now())) {
                break;
            }
        })?;
        Ok(HostSampler(bg))
    }

    /// Stops the sampler thread and waits for it. Worker threads end when their current read
    /// returns (a worker stuck in the kernel is left behind; the process exit reaps it).
    pub fn stop(self) {
        self.0.stop();
    }
}

#[derive(Default)]
struct Accumulators {
    dirty: WindowMax,
    writeback: WindowMax,
    blocked: WindowMax,
    psi: [[WindowMax; 2]; 3],
    blocked_integral: Integral,
    dirty_over_bg: AboveThreshold,
    writeback_burst: AboveThreshold,
}

struct State {
    workers: Vec<Worker>,
    snap: HostSnapshot,
    acc: Accumulators,
    /// When each source last logged an error / a stuck read (rate limit: once a minute).
    error_log: Vec<Option<Instant>>,
    stuck_log: Vec<Option<Instant>>,
    /// When each source was last asked for a reading.
    last_request: Vec<Option<Instant>>,
}

/// Sources that change only when an operator changes them are read less often than every
/// tick: the bdi settings are ~5 files per block device (0.2 ms a pass on this machine's 12
/// devices, most of a 1 s pass), and a 30 s delay in seeing a changed max_ratio costs nothing.
fn slow_period(source: &str) -> Option<Duration> {
    match source {
        "bdi" => Some(Duration::from_secs(30)),
        _ => None,
    }
}

impl State {
    fn tick(
        &mut self,
        cfg: &HostConfig,
        res_rx: &mpsc::Receiver<Outcome<ReadResult>>,
        tick: Instant,
    ) {
        // Late answers from workers that were slow last time.
        while let Ok(o) = res_rx.try_recv() {
            self.apply(cfg, o);
        }
        let mut outstanding = 0;
        for (i, w) in self.workers.iter_mut().enumerate() {
            let due = slow_period(w.name).is_none_or(|p| {
                self.last_request[i].is_none_or(|t| tick.saturating_duration_since(t) >= p)
            });
            if due && w.request(tick) {
                self.last_request[i] = Some(tick);
            }
            if w.busy_since.is_some() {
                outstanding += 1;
            }
        }
        let deadline = tick + cfg.source_timeout.min(cfg.interval);
        while outstanding > 0 {
            let wait = deadline.saturating_duration_since(Instant::now());
            match res_rx.recv_timeout(wait) {
                Ok(o) => {
                    self.apply(cfg, o);
                    outstanding -= 1;
                }
                Err(_) => break,
            }
        }
        let now = Instant::now();
        for (i, (w, s)) in self.workers.iter().zip(&mut self.snap.sources).enumerate() {
            s.in_flight_since = w.busy_since;
            s.timeout = cfg.source_timeout;
            s.warn_if_stuck(now, &mut self.stuck_log[i]);
        }
        self.snap.taken = Some(SystemTime::now());
        self.update_derived(cfg, now);
    }

    fn apply(&mut self, cfg: &HostConfig, o: Outcome<ReadResult>) {
        let idx = o.idx;
        self.workers[idx].busy_since = None;
        let s = &mut self.snap.sources[idx];
        s.record(&o);
        let name = s.name;
        match o.result {
            Ok(Some(r)) => {
                s.last_success = Some(o.finished);
                if s.missing {
                    info!(source = name, "Source is available again.");
                }
                s.missing = false;
                self.store(cfg, r, o.finished);
            }
            Ok(None) => {
                s.last_success = Some(o.finished);
                if !s.missing {
                    info!(
                        source = name,
                        "Source file does not exist on this host; its metrics are absent."
                    );
                }
                s.missing = true;
                self.clear(idx);
            }
            Err(e) => {
                s.count_error(e.kind());
                // Rate-limited: a broken file must not flood the log at 1 Hz.
                let last = &mut self.error_log[idx];
                if last.is_none_or(|t| o.finished.duration_since(t) > Duration::from_secs(60)) {
                    warn!(source = name, error = %e, "Cannot read source; keeping its last value.");
                    *last = Some(o.finished);
                }
            }
        }
    }

    fn clear(&mut self, idx: usize) {
        match self.snap.sources[idx].name {
            "stat" => self.snap.stat = None,
            "loadavg" => self.snap.loadavg = None,
            "pressure_cpu" => self.snap.pressure[0] = None,
            "pressure_io" => self.snap.pressure[1] = None,
            "pressure_memory" => self.snap.pressure[2] = None,
            "meminfo" => self.snap.meminfo = None,
            "vmstat" => self.snap.vmstat = None,
            "diskstats" => {
                self.snap.disks.clear();
                self.snap.all_disks = Arc::default();
            }
            "sys_vm" => self.snap.tunables = None,
            "mountinfo" => self.snap.overlays = None,
            "bdi" => self.snap.bdi.clear(),
            _ => {}
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
                    if let Some(t) = burst_threshold {
                        acc.writeback_burst.observe(at, w > t, gap);
                    }
                }
                self.snap.meminfo = Some(m);
            }
            Reading::Vmstat(v) => self.snap.vmstat = Some(v),
            Reading::Disks(d) => {
                self.snap.disks = d
                    .iter()
                    .filter(|d| cfg.disks.keep(d))
                    .map(|d| d.stat.clone())
                    .collect();
                self.snap.all_disks = Arc::new(d);
                self.snap.disks_at = Some(at);
            }
            Reading::Tunables(t) => self.snap.tunables = Some(t),
            Reading::Overlays(o) => self.snap.overlays = Some(o),
            Reading::Bdi(b) => self.snap.bdi = b,
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
            writeback_burst_seconds: acc.writeback_burst.seconds,
            writeback_bursts: acc.writeback_burst.episodes,
        };
        self.snap.burst_threshold_bytes = self.burst_threshold(cfg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(name: &str, partition: bool) -> Disk {
        Disk {
            stat: DiskStat {
                name: name.into(),
                ..DiskStat::default()
            },
            partition,
        }
    }

    #[test]
    fn disk_filter_defaults_drop_partitions_loop_and_ram() {
        let f = DiskFilter::default();
        assert!(f.keep(&disk("vda", false)));
        assert!(f.keep(&disk("nvme0n1", false)));
        assert!(!f.keep(&disk("vda1", true)));
        assert!(!f.keep(&disk("loop0", false)));
        assert!(!f.keep(&disk("ram3", false)));
        assert!(!f.keep(&disk("zram0", false)));
        assert!(f.keep(&disk("loopy", false)), "only loopN is a loop device");
    }

    #[test]
    fn disk_filter_switches_and_regexes() {
        let f = DiskFilter {
            include_loop: true,
            exclude: Regex::new("^sr").ok(),
            include: Regex::new("^(loop|sd|sr)").ok(),
            ..DiskFilter::default()
        };
        assert!(f.keep(&disk("loop7", false)));
        assert!(!f.keep(&disk("sr0", false)));
        assert!(!f.keep(&disk("vda", false)));
    }

    #[test]
    fn partition_by_name_shape_without_sysfs() {
        let none = Path::new("/nonexistent-sysfs/class/block");
        assert!(is_partition(none, "sda1"));
        assert!(is_partition(none, "nvme0n1p2"));
        assert!(!is_partition(none, "nvme0n1"));
        assert!(!is_partition(none, "dm-0"));
    }
}
