//! Who is stuck: the thread walk ([`crate::proc::tasks`]) on the periodic driver, turned into
//! ages and per-group integrals by the D-state tracker ([`crate::sample::dstate`]).
//!
//! Cost control (node_exporter's maintainers refused per-process data because walking `/proc`
//! during a stall makes it worse): the walk runs every `threads.interval` (10 s) normally and
//! every `threads.fast_interval` (1 s) only while a stall is suspected (procs_blocked > 0, io
//! PSI `some` avg10 above a threshold, or D threads on the last walk), stretched so that its
//! CPU stays under `threads.max_cpu` of one core.
//!
//! Kernel stacks of threads in D (`threads.stacks`, on by default) are read by the walk for at
//! most `threads.stacks_max` (64) threads a walk, the first it meets in pid order, 4 KiB each;
//! [`ThreadSnapshot::stacks_missing`] says when and why some or all are missing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;

use crate::error::ErrorKind;
use crate::proc::tasks::{Walk, Walker};
use crate::roots::Roots;
use crate::sample::driver::{self, Driver, Hook, Schedule, SourceSpec};
use crate::sample::dstate::{wchan_rows, DThread, DTracker, GroupRow, GroupRule};
use crate::sample::host::HostSnapshot;
use crate::sample::status::SourceStatus;

#[derive(Debug, Clone)]
pub struct ThreadsConfig {
    pub enabled: bool,
    /// Walk cadence when nothing is suspicious.
    pub interval: Duration,
    /// Walk cadence while a stall is suspected.
    pub fast_interval: Duration,
    /// io PSI `some` avg10 (ratio) above which a stall is suspected.
    pub stall_psi_threshold: f64,
    pub top_groups: usize,
    pub top_wchans: usize,
    pub rules: Vec<GroupRule>,
    pub source_timeout: Duration,
    /// CPU budget of the walk, as a share of one core: the cadence is stretched so that
    /// walk CPU / cadence stays under it (10k threads cost ~0.2 s a walk here: at 5 % they are
    /// walked every 4 s during a stall instead of every second).
    pub max_cpu: f64,
    /// Read the kernel stacks of threads in D (`/proc/<pid>/task/<tid>/stack`, needs
    /// CAP_SYS_ADMIN).
    pub stacks: bool,
    /// At most this many stacks a walk.
    pub stacks_max: usize,
}

impl Default for ThreadsConfig {
    fn default() -> Self {
        ThreadsConfig {
            enabled: true,
            interval: Duration::from_secs(10),
            fast_interval: Duration::from_secs(1),
            stall_psi_threshold: 0.05,
            top_groups: 20,
            top_wchans: 20,
            rules: Vec::new(),
            source_timeout: Duration::from_secs(5),
            max_cpu: 0.05,
            stacks: true,
            stacks_max: 64,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ThreadSnapshot {
    pub taken: Option<SystemTime>,
    pub enabled: bool,
    /// Threads per state letter at the last walk, sorted by letter.
    pub states: Vec<(char, u64)>,
    pub total_threads: u64,
    /// Exported groups (top-N by D time), then `other` when it has any history.
    pub groups: Vec<GroupRow>,
    /// D threads per wait channel now: top-N, then `other`.
    pub wchans: Vec<(String, u64)>,
    /// Threads in D now, longest first (capped at 1000 for the API and `stallwatch dstate`).
    pub stuck: Vec<DThread>,
    pub status: SourceStatus,
    /// The cadence in force: `interval` or `fast_interval`.
    pub current_interval: Duration,
    /// Whether a stall is suspected (fast cadence).
    pub suspected: bool,
    /// Why kernel stacks are missing from `stuck`, when some or all are (off by config,
    /// unreadable without CAP_SYS_ADMIN, over `threads.stacks_max`); `None` when every thread
    /// in D at the last walk has its stack (or none is in D).
    pub stacks_missing: Option<String>,
}

/// The thread sampler on the periodic driver: one source, `threads`.
struct Threads {
    roots: Arc<Roots>,
    host: Arc<ArcSwap<HostSnapshot>>,
    started: Instant,
    tracker: DTracker,
    prev_totals: HashMap<Arc<str>, (f64, u64)>,
    had_d: bool,
    suspected: bool,
    /// No host snapshot yet: tick often until it comes (at most 5 s), so the first walk is
    /// not a whole interval late.
    waiting_for_host: bool,
    /// Stacks the reader may read per walk (0: off), from the config in force.
    stacks: Arc<AtomicUsize>,
    snap: ThreadSnapshot,
}

impl Threads {
    /// A stall is suspected: D threads on the last walk, tasks blocked now, or io pressure.
    fn suspect(&self, h: &HostSnapshot, cfg: &ThreadsConfig) -> bool {
        self.had_d
            || h.stat
                .as_ref()
                .and_then(|s| s.procs_blocked)
                .is_some_and(|b| b > 0)
            || h.pressure[crate::proc::pressure::Resource::Io as usize]
                .and_then(|p| p.some)
                .is_some_and(|r| r.avg10 > cfg.stall_psi_threshold)
    }
}

impl driver::Sampler for Threads {
    type Key = ();
    type Reading = Walk;
    type Config = ThreadsConfig;
    type Snapshot = ThreadSnapshot;

    fn sources(&mut self, _: &ThreadsConfig) -> Vec<SourceSpec<(), Walk>> {
        let roots = Arc::clone(&self.roots);
        let stacks = Arc::clone(&self.stacks);
        vec![SourceSpec {
            key: (),
            name: "threads".into(),
            make: driver::reader(move || {
                let roots = Arc::clone(&roots);
                let stacks = Arc::clone(&stacks);
                let mut walker = Walker::new();
                move || {
                    walker.set_stacks(stacks.load(Ordering::Relaxed));
                    walker.walk(&roots).map(Some)
                }
            }),
        }]
    }

    /// Suspicion is re-checked every fast interval, so a stall that starts during a 10 s pause
    /// is walked within about a second.
    fn tick(&self, cfg: &ThreadsConfig) -> Duration {
        if self.waiting_for_host {
            Duration::from_millis(20).min(cfg.fast_interval)
        } else {
            cfg.fast_interval
        }
    }

    fn wait(&self, cfg: &ThreadsConfig) -> Duration {
        cfg.source_timeout.min(cfg.fast_interval)
    }

    fn schedule(&mut self, _: &(), cfg: &ThreadsConfig, _: Instant) -> Option<Schedule> {
        let h = self.host.load();
        // Judge suspicion on real data: wait (briefly) for the host sampler's first snapshot
        // before the first walk.
        self.waiting_for_host =
            h.taken.is_none() && self.started.elapsed() < Duration::from_secs(5);
        let stacks = if cfg.stacks { cfg.stacks_max } else { 0 };
        self.stacks.store(stacks, Ordering::Relaxed);
        if !cfg.enabled || self.waiting_for_host {
            return None;
        }
        self.suspected = self.suspect(&h, cfg);
        Some(Schedule {
            every: if self.suspected {
                cfg.fast_interval
            } else {
                cfg.interval
            },
            // Never make the stall worse than the budget allows.
            max_cpu: cfg.max_cpu,
            timeout: cfg.source_timeout,
        })
    }

    fn apply(
        &mut self,
        _: &(),
        at: Instant,
        walk: Option<Walk>,
        status: &mut SourceStatus,
        cfg: &ThreadsConfig,
    ) {
        let Some(walk) = walk else { return };
        status.errors.merge(&walk.errors);
        self.snap.stacks_missing = stacks_missing(&walk, cfg);
        let gap = cfg.interval * 2 + cfg.source_timeout;
        let (mut stuck, counts) = self.tracker.apply(&walk, at, &cfg.rules, gap);
        let s = &mut self.snap;
        s.groups = self
            .tracker
            .rows(&counts, &stuck, cfg.top_groups, &mut self.prev_totals);
        s.wchans = wchan_rows(&stuck, cfg.top_wchans);
        stuck.sort_by_key(|d| d.since);
        stuck.truncate(MAX_STUCK);
        self.had_d = !stuck.is_empty();
        s.stuck = stuck;
        let mut states: Vec<(char, u64)> =
            walk.states.iter().map(|(s, n)| (*s as char, *n)).collect();
        states.sort();
        s.states = states;
        s.total_threads = walk.total;
    }

    fn publish(
        &mut self,
        sources: &[SourceStatus],
        _: Instant,
        cfg: &ThreadsConfig,
    ) -> ThreadSnapshot {
        let s = &mut self.snap;
        s.enabled = cfg.enabled;
        if let Some(st) = sources.first() {
            s.status = st.clone();
            s.current_interval = st.interval.unwrap_or(cfg.interval);
        }
        s.suspected = self.suspected;
        s.taken = Some(SystemTime::now());
        s.clone()
    }
}

/// Why some stacks of the walk's D threads are missing, for a record's "kernel stacks: …" line.
fn stacks_missing(walk: &Walk, cfg: &ThreadsConfig) -> Option<String> {
    const FILE: &str = "/proc/<pid>/task/<tid>/stack";
    if walk.d.is_empty() {
        return None;
    }
    if !cfg.stacks {
        return Some("off (threads.stacks = false)".into());
    }
    match walk.stack_error {
        Some(ErrorKind::Permission) => Some(format!("{FILE} not readable (needs CAP_SYS_ADMIN)")),
        Some(k) => Some(format!("{FILE} could not be read ({} error)", k.as_str())),
        None if walk.d.len() > walk.stacks_tried => Some(format!(
            "read for {} of {} threads in D (threads.stacks_max)",
            walk.stacks_tried,
            walk.d.len()
        )),
        None => None,
    }
}

/// Threads in D kept by name in the snapshot (for the API and `stallwatch dstate`).
const MAX_STUCK: usize = 1000;

/// Running thread sampler.
pub struct ThreadSampler(Driver);

impl ThreadSampler {
    pub fn spawn(
        roots: Arc<Roots>,
        config: Arc<ArcSwap<ThreadsConfig>>,
        host: Arc<ArcSwap<HostSnapshot>>,
        out: Arc<ArcSwap<ThreadSnapshot>>,
        on_publish: Option<Hook>,
    ) -> std::io::Result<ThreadSampler> {
        let driver = Driver::spawn(
            "threads",
            move || Threads {
                roots: Arc::clone(&roots),
                host: Arc::clone(&host),
                started: Instant::now(),
                tracker: DTracker::default(),
                prev_totals: HashMap::new(),
                had_d: false,
                suspected: false,
                waiting_for_host: true,
                stacks: Arc::new(AtomicUsize::new(0)),
                snap: ThreadSnapshot {
                    status: SourceStatus::new("threads"),
                    ..ThreadSnapshot::default()
                },
            },
            config,
            out,
            on_publish,
        )?;
        Ok(ThreadSampler(driver))
    }

    pub fn stop(self) {
        self.0.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proc::tasks::RawD;

    #[test]
    fn why_stacks_are_missing() {
        let d = RawD {
            pid: 1,
            tid: 1,
            starttime: 0,
            comm: "dd".into(),
            kernel_thread: false,
            wchan: None,
            cgroup: None,
            container: None,
            stack: None,
        };
        let on = ThreadsConfig::default();
        let mut w = Walk::default();
        assert_eq!(
            stacks_missing(&w, &on),
            None,
            "no thread in D: nothing missing"
        );
        w.d = vec![d.clone(), d];
        w.stacks_tried = 2;
        assert_eq!(stacks_missing(&w, &on), None);
        let off = ThreadsConfig {
            stacks: false,
            ..ThreadsConfig::default()
        };
        assert_eq!(
            stacks_missing(&w, &off).as_deref(),
            Some("off (threads.stacks = false)")
        );
        w.stacks_tried = 1;
        assert_eq!(
            stacks_missing(&w, &on).as_deref(),
            Some("read for 1 of 2 threads in D (threads.stacks_max)")
        );
        w.stack_error = Some(ErrorKind::Permission);
        assert_eq!(
            stacks_missing(&w, &on).as_deref(),
            Some("/proc/<pid>/task/<tid>/stack not readable (needs CAP_SYS_ADMIN)")
        );
    }
}
