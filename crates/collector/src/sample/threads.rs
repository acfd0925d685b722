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

//!
//! With the eBPF episode source on ([`crate::bpf`], `[bpf]`), this sampler has a second source,
//! `bpf`, drained every `bpf.interval`: "who is in D now" then comes from the episodes in
//! flight (exact start times, no walk), the walk runs only every `bpf.walk_interval` for the
//! thread states and to seed episodes that began before the programs attached, and a stall
//! costs no walking (the state walk waits for it to end, up to [`STALL_WALK_DEFER`] intervals). When the programs cannot load, the source says why once and the
//! walk does everything, as without it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tracing::{error, info};

use crate::bpf::kernel::Sizes;
use crate::bpf::source::{Mailbox, Reading, Seed, Settings, Source};
use crate::bpf::state::EpisodeState;
use crate::bpf::{self, BpfConfig, EpisodeSnapshot};
use crate::error::ErrorKind;
use crate::proc::tasks::{RawD, Walk, Walker};
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
    /// `[bpf]`: the episode source beside the walk.
    pub bpf: BpfConfig,
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
            bpf: BpfConfig::default(),
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
    /// Where `stuck`, the groups' D counts and the wait channels come from: the `bpf` episodes
    /// in flight while that source runs, else the walk.
    pub from_bpf: bool,
    /// The eBPF episode source.
    pub episodes: Arc<EpisodeSnapshot>,
}

/// The thread sampler's sources.
#[derive(Debug, Clone, PartialEq)]
enum Src {
    Walk,
    /// Keyed by what the programs are loaded with: a change reloads them.
    Bpf(Settings),
}

/// A reading of either.
enum Got {
    Walk(Walk),
    Bpf(Reading),
}

/// The thread sampler on the periodic driver: `threads` (the walk) and, where it can run,
/// `bpf` (the episode source).
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
    episodes: EpisodeState,
    mailbox: Mailbox,
    /// Why the episode source is off (not configured off), once known.
    bpf_off: Option<String>,
    /// The `bpf` source was asked for in the current config.
    bpf_wanted: bool,
    /// Walk as soon as possible (to seed the episodes of a newly attached source).
    walk_now: bool,
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

impl Threads {
    /// Whether the episode source is running (drained at least once, not off).
    fn bpf_active(&self) -> bool {
        self.episodes.active && self.bpf_off.is_none() && self.bpf_wanted
    }

    /// Feeds the D-state tracker a list of threads in D (from a walk or from the episodes in
    /// flight) and fills the snapshot's D rows.
    fn track(
        &mut self,
        walk: &Walk,
        exact: Option<&HashMap<u32, Instant>>,
        at: Instant,
        cfg: &ThreadsConfig,
    ) -> Vec<DThread> {
        let gap = cfg.interval * 2 + cfg.source_timeout;
        let (mut stuck, counts) = self.tracker.apply(walk, at, &cfg.rules, gap);
        if let Some(exact) = exact {
            // The kernel's start of the episode when it began before the first drain that saw
            // the thread in D; else the tracker's (a run of back-to-back episodes, as sampled).
            for d in &mut stuck {
                if let Some(t) = exact.get(&d.tid) {
                    d.since = d.since.min(*t);
                }
            }
        }
        let s = &mut self.snap;
        s.groups = self
            .tracker
            .rows(&counts, &stuck, cfg.top_groups, &mut self.prev_totals);
        s.wchans = wchan_rows(&stuck, cfg.top_wchans);
        stuck.sort_by_key(|d| d.since);
        stuck.truncate(MAX_STUCK);
        self.had_d = !stuck.is_empty();
        s.stuck = stuck.clone();
        stuck
    }

    fn apply_bpf(&mut self, at: Instant, reading: Reading, cfg: &ThreadsConfig) {
        match reading {
            Reading::Off(why) => {
                if cfg.bpf.enabled == bpf::Enabled::On {
                    error!(reason = %why, "The eBPF episode source cannot run ([bpf] enabled = true); D states come from the thread walk alone.");
                } else {
                    info!(reason = %why, "The eBPF episode source is off; D states come from the thread walk alone.");
                }
                self.bpf_off = Some(why);
            }
            Reading::Drain(batch) => {
                // New programs (at start, or a [bpf] size changed on reload) see only the
                // episodes that begin after them: the threads in D now come from a walk at
                // once, not at the next walk_interval.
                if batch.attached || !self.episodes.active {
                    if self.episodes.active {
                        info!("The eBPF episode source was loaded again with the new [bpf] sizes; the threads in D now are seeded from a walk.");
                    } else {
                        info!(
                            long_episode = ?cfg.bpf.long_episode,
                            symbols = batch.symbols,
                            "The eBPF episode source is attached: every D episode is counted; the thread walk runs every walk_interval."
                        );
                    }
                    self.walk_now = true;
                }
                let running = self.episodes.apply(batch, &cfg.rules);
                let exact: HashMap<u32, Instant> =
                    running.iter().map(|(d, t)| (d.tid, *t)).collect();
                let mut raw: Vec<RawD> = running.into_iter().map(|(d, _)| d).collect();
                // Stacks come with the episodes (captured at sched_switch), for the longest;
                // threads.stacks = false keeps them out of the D list as it does the walk's.
                if !cfg.stacks {
                    raw.iter_mut().for_each(|d| d.stack = None);
                }
                let without = raw.iter().filter(|d| d.stack.is_none()).count();
                self.snap.stacks_missing = if !cfg.stacks && !raw.is_empty() {
                    Some("off (threads.stacks = false)".into())
                } else {
                    (without > 0).then(|| {
                    format!(
                        "from the eBPF source for the {} longest of {} threads in D (episodes seeded from a walk have none)",
                        raw.len() - without,
                        raw.len()
                    )
                    })
                };
                let walk = Walk {
                    d: raw,
                    ..Walk::default()
                };
                self.track(&walk, Some(&exact), at, cfg);
            }
        }
    }
}

impl driver::Sampler for Threads {
    type Key = Src;
    type Reading = Got;
    type Config = ThreadsConfig;
    type Snapshot = ThreadSnapshot;

    fn sources(&mut self, cfg: &ThreadsConfig) -> Vec<SourceSpec<Src, Got>> {
        let roots = Arc::clone(&self.roots);
        let stacks = Arc::clone(&self.stacks);
        let mut v = vec![SourceSpec {
            key: Src::Walk,
            name: "threads".into(),
            make: driver::reader(move || {
                let roots = Arc::clone(&roots);
                let stacks = Arc::clone(&stacks);
                let mut walker = Walker::new();
                move || {
                    walker.set_stacks(stacks.load(Ordering::Relaxed));
                    walker.walk(&roots).map(|w| Some(Got::Walk(w)))
                }
            }),
            lane: None,
        }];
        let b = &cfg.bpf;
        self.bpf_wanted = false;
        if b.enabled == bpf::Enabled::Off {
            self.bpf_off = None;
            return v;
        }
        if let Err(why) = bpf::availability(&self.roots, bpf::cap_eff()) {
            if self.bpf_off.as_deref() != Some(why.as_str()) {
                if b.enabled == bpf::Enabled::On {
                    error!(reason = %why, "The eBPF episode source cannot run ([bpf] enabled = true); D states come from the thread walk alone.");
                } else {
                    info!(reason = %why, "The eBPF episode source is off; D states come from the thread walk alone.");
                }
            }
            self.bpf_off = Some(why);
            return v;
        }
        self.bpf_off = None;
        self.bpf_wanted = true;
        let settings = Settings {
            sizes: Sizes {
                in_flight: b.max_in_flight,
                keys: b.max_keys,
                ring_bytes: b.ring_bytes,
            },
            long: b.long_episode,
        };
        let roots = Arc::clone(&self.roots);
        let mailbox = Arc::clone(&self.mailbox);
        v.push(SourceSpec {
            key: Src::Bpf(settings),
            name: "bpf".into(),
            make: driver::reader(move || {
                let mut src = Source::new(Arc::clone(&roots), settings, Arc::clone(&mailbox));
                move || src.read().map(|r| r.map(Got::Bpf))
            }),
            lane: None,
        });
        v
    }

    /// Suspicion is re-checked every fast interval, so a stall that starts during a 10 s pause
    /// is walked within about a second; the episode source is drained at its own interval.
    fn tick(&self, cfg: &ThreadsConfig) -> Duration {
        let t = if self.bpf_wanted && self.bpf_off.is_none() {
            cfg.fast_interval.min(cfg.bpf.interval)
        } else {
            cfg.fast_interval
        };
        if self.waiting_for_host {
            Duration::from_millis(20).min(t)
        } else {
            t
        }
    }

    fn wait(&self, cfg: &ThreadsConfig) -> Duration {
        cfg.source_timeout.min(cfg.fast_interval)
    }

    fn schedule(&mut self, key: &Src, cfg: &ThreadsConfig, _: Instant) -> Option<Schedule> {
        if let Src::Bpf(_) = key {
            return self.bpf_off.is_none().then_some(Schedule {
                every: cfg.bpf.interval,
                // A drain costs what the episodes cost, not what the threads do.
                max_cpu: 0.0,
                timeout: cfg.bpf.timeout,
            });
        }
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
        let every = if self.bpf_active() {
            // The episodes in flight say who is in D; the walk only refreshes the states.
            if std::mem::take(&mut self.walk_now) {
                Duration::ZERO
            } else {
                state_walk_every(cfg.bpf.walk_interval, self.suspected)
            }
        } else if self.suspected {
            cfg.fast_interval
        } else {
            cfg.interval
        };
        Some(Schedule {
            every,
            // Never make the stall worse than the budget allows.
            max_cpu: cfg.max_cpu,
            timeout: cfg.source_timeout,
        })
    }

    fn apply(
        &mut self,
        _: &Src,
        at: Instant,
        got: Option<Got>,
        status: &mut SourceStatus,
        cfg: &ThreadsConfig,
    ) {
        let walk = match got {
            Some(Got::Walk(w)) => w,
            Some(Got::Bpf(r)) => return self.apply_bpf(at, r, cfg),
            None => return,
        };
        status.errors.merge(&walk.errors);
        if !self.bpf_active() {
            self.snap.stacks_missing = stacks_missing(&walk, cfg);
        }
        if self.bpf_wanted && self.bpf_off.is_none() {
            // Threads in D now whose episodes the programs may not have seen begin.
            let seeds: Vec<Seed> = walk
                .d
                .iter()
                .map(|d| Seed {
                    pid: d.pid,
                    tid: d.tid,
                    comm: d.comm.clone(),
                    wchan: d.wchan.clone(),
                    since: at,
                    stack: d.stack.clone(),
                })
                .collect();
            if let Ok(mut m) = self.mailbox.lock() {
                m.extend(seeds);
                m.truncate(MAX_STUCK);
            }
        }
        if !self.bpf_active() {
            self.track(&walk, None, at, cfg);
        }
        let s = &mut self.snap;
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
        let active = self.bpf_active();
        let s = &mut self.snap;
        s.enabled = cfg.enabled;
        if let Some(st) = sources.iter().find(|st| st.name == "threads") {
            s.status = st.clone();
            s.current_interval = st.interval.unwrap_or(cfg.interval);
        }
        s.suspected = self.suspected;
        s.from_bpf = active;
        let status = sources.iter().find(|st| st.name == "bpf").cloned();
        let off = (cfg.bpf.enabled != bpf::Enabled::Off)
            .then(|| self.bpf_off.clone())
            .flatten();
        let mut episodes = self.episodes.snapshot(
            cfg.top_groups,
            cfg.top_wchans,
            cfg.bpf.long_episode,
            status.filter(|_| self.bpf_wanted && self.bpf_off.is_none()),
            off,
        );
        // Turned off by a reload: the programs are detached with their reader.
        episodes.active = active;
        s.episodes = Arc::new(episodes);
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

/// While the eBPF source runs, a suspected stall holds the state walk back this many times
/// its `walk_interval` after the last one.
pub const STALL_WALK_DEFER: u32 = 3;

/// The state walk's cadence while the eBPF source runs. During a suspected stall, who is in
/// D comes from the episodes in flight; a walk would add its cost to the stall (at 10k threads
/// ~0.1 s of CPU, a sixth of the agent's share over a 2-minute stall window) to refresh the
/// per-state counts and the thread total, whose age the snapshot shows and whose running and
/// blocked counts `/proc/stat` gives meanwhile. It runs when the stall ends, if due, or at
/// [`STALL_WALK_DEFER`] times the interval, whichever comes first.
fn state_walk_every(walk_interval: Duration, suspected: bool) -> Duration {
    if suspected {
        walk_interval.saturating_mul(STALL_WALK_DEFER)
    } else {
        walk_interval
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
                episodes: EpisodeState::default(),
                mailbox: Arc::new(Mutex::new(Vec::new())),
                bpf_off: None,
                bpf_wanted: false,
                walk_now: false,
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
mod tests;
