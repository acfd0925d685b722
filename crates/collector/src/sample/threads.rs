//! Who is stuck: a walk of `/proc/*/task/*/stat` that finds threads in D state (uninterruptible
//! sleep, nearly always waiting for I/O), names them, groups them and tracks how long each has
//! been stuck.
//!
//! Cost control (node_exporter's maintainers refused per-process data because walking `/proc`
//! during a stall makes it worse): the walk runs on its own worker thread, every
//! `threads.interval` (10 s) normally and every `threads.fast_interval` (1 s) only while a stall
//! is suspected (procs_blocked > 0, io PSI `some` avg10 above a threshold, or D threads on the
//! last walk). It reads one small file per thread — per *process* for single-threaded ones,
//! whose `/proc/<pid>/stat` is their only task — and reads `wchan` and `/proc/<pid>/cgroup`
//! only for threads in D (the cgroup cached per pid + start time). Nothing of `/proc/<pid>/`
//! that can block on a process's mm lock (cmdline, environ, maps) is read.
//!
//! Bounded labels: `group` is the comm with per-CPU/instance decorations removed (or a
//! configured rule); only the top `top_groups` groups by D time are exported by name, the rest
//! are summed as `group="other"`; wait channels likewise.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use regex::Regex;
use tracing::warn;

use crate::error::Error;
use crate::proc::{pid_cgroup, task_stat};
use crate::roots::Roots;
use crate::sample::budget;
use crate::sample::host::HostSnapshot;
use crate::sample::status::SourceStatus;
use crate::sample::worker::{Background, Outcome, Worker};

/// A configured grouping rule: comms matching `regex` are grouped as `name`.
#[derive(Debug, Clone)]
pub struct GroupRule {
    pub regex: Regex,
    pub name: String,
}

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
        }
    }
}

/// The group a comm belongs to: the first matching rule, else the comm with decorations
/// removed. Everything after the first `/` is an instance (`kworker/u30:2`, `jbd2/sda1-8`,
/// `ksoftirqd/0`); kernel threads without a `/` lose a trailing number (`kswapd0`). User
/// comms are otherwise kept as they are: a name like `worker-3` may mean something, and the
/// top-N fold bounds the label set anyway.
pub fn group_of(comm: &str, kernel_thread: bool, rules: &[GroupRule]) -> String {
    if let Some(r) = rules.iter().find(|r| r.regex.is_match(comm)) {
        return r.name.clone();
    }
    let base = match comm.split_once('/') {
        Some((base, _instance)) => base,
        // `kswapd0`, `scsi_eh_0`: a kernel thread's trailing number is an instance.
        None if kernel_thread => comm
            .trim_end_matches(|c: char| c.is_ascii_digit())
            .trim_end_matches(['_', '-']),
        None => comm,
    };
    if base.is_empty() {
        comm.to_string()
    } else {
        base.to_string()
    }
}

/// A thread in D at the time of a walk, as the worker saw it.
#[derive(Debug, Clone)]
pub struct RawD {
    pub pid: u32,
    pub tid: u32,
    pub starttime: u64,
    /// Sanitised comm (label- and terminal-safe).
    pub comm: String,
    pub kernel_thread: bool,
    pub wchan: Option<String>,
    /// The process's cgroup (primary path), cached per pid + start time.
    pub cgroup: Option<Arc<str>>,
}

/// One walk of `/proc`.
#[derive(Debug, Clone, Default)]
pub struct Walk {
    /// Threads per state letter.
    pub states: HashMap<u8, u64>,
    pub total: u64,
    pub d: Vec<RawD>,
}

/// The walk itself, with its reusable buffers and caches. Lives on the worker thread.
pub struct Walker {
    buf: Vec<u8>,
    path: PathBuf,
    cgroups: HashMap<(u32, u64), Arc<str>>,
    cgroup_seen: u64,
}

impl Default for Walker {
    fn default() -> Self {
        Self::new()
    }
}

impl Walker {
    pub fn new() -> Self {
        Walker {
            buf: Vec::with_capacity(1024),
            path: PathBuf::new(),
            cgroups: HashMap::new(),
            cgroup_seen: 0,
        }
    }

    /// Reads `self.path` into `self.buf`. `Ok(false)` when the file (or its process) vanished.
    fn read_path(&mut self) -> std::io::Result<bool> {
        self.buf.clear();
        match std::fs::File::open(&self.path).and_then(|mut f| f.read_to_end(&mut self.buf)) {
            Ok(_) => Ok(true),
            // ENOENT: exited; ESRCH: exiting as we read. Both are churn, not errors.
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ESRCH) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Walks every thread under `roots.procfs`. Vanished processes and threads are skipped
    /// quietly; only a failure to list `/proc` itself is an error.
    pub fn walk(&mut self, roots: &Roots) -> Result<Walk, Error> {
        let mut walk = Walk::default();
        let dir = std::fs::read_dir(&roots.procfs).map_err(|source| Error::Io {
            path: roots.procfs.clone(),
            source,
        })?;
        let mut pids: Vec<u32> = dir
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
            .collect();
        pids.sort_unstable();
        self.path.clone_from(&roots.procfs);
        let mut tids: Vec<u32> = Vec::new();
        for pid in pids {
            self.path.push(pid.to_string());
            self.walk_process(pid, &mut tids, &mut walk);
            self.path.pop();
        }
        // Forget cgroups of processes not seen in D for a while (bounded cache).
        if self.cgroups.len() > 4096 {
            self.cgroups.clear();
        }
        Ok(walk)
    }

    /// `self.path` is `<proc>/<pid>` on entry and exit.
    fn walk_process(&mut self, pid: u32, tids: &mut Vec<u32>, walk: &mut Walk) {
        self.path.push("stat");
        let ok = self.read_path().unwrap_or(false);
        self.path.pop();
        if !ok {
            return;
        }
        let Ok(st) = task_stat::parse(&self.buf) else {
            return;
        };
        let proc_start = st.starttime;
        if st.num_threads <= 1 {
            // Single-threaded: the process's stat is its only task's stat.
            let (state, d) = (st.state, st.state == b'D');
            let raw = d.then(|| {
                (
                    task_stat::sanitize(st.comm),
                    st.is_kernel_thread(),
                    st.starttime,
                )
            });
            self.count(walk, state);
            if let Some((comm, kthread, start)) = raw {
                self.record_d(walk, pid, pid, start, comm, kthread, proc_start, true);
            }
            return;
        }
        self.path.push("task");
        tids.clear();
        if let Ok(rd) = std::fs::read_dir(&self.path) {
            tids.extend(
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok())),
            );
        }
        // Each thread's stat is opened relative to the task directory: resolving
        // "<proc>/<pid>/task/<tid>/stat" from the root costs a procfs lookup per component,
        // which is most of the walk's CPU at 10k threads.
        let task_dir = std::fs::File::open(&self.path).ok();
        for &tid in tids.iter() {
            self.path.push(tid.to_string());
            let ok = match &task_dir {
                Some(dir) => self.read_at(dir, tid).unwrap_or(false),
                None => {
                    self.path.push("stat");
                    let ok = self.read_path().unwrap_or(false);
                    self.path.pop();
                    ok
                }
            };
            if ok {
                if let Ok(t) = task_stat::parse(&self.buf) {
                    let state = t.state;
                    let raw = (state == b'D').then(|| {
                        (
                            task_stat::sanitize(t.comm),
                            t.is_kernel_thread(),
                            t.starttime,
                        )
                    });
                    self.count(walk, state);
                    if let Some((comm, kthread, start)) = raw {
                        self.record_d(walk, pid, tid, start, comm, kthread, proc_start, false);
                    }
                }
            }
            self.path.pop();
        }
        self.path.pop();
    }

    /// Reads `<tid>/stat` relative to an open task directory into `self.buf`; `Ok(false)` when
    /// the thread is gone.
    fn read_at(&mut self, dir: &std::fs::File, tid: u32) -> std::io::Result<bool> {
        use std::io::Write as _;
        use std::os::fd::{AsRawFd, FromRawFd};
        let mut name = [0u8; 24];
        let mut cur = std::io::Cursor::new(&mut name[..]);
        write!(cur, "{tid}/stat\0")?;
        // SAFETY: `name` is NUL-terminated (written above, buffer large enough for any u32);
        // `dir` is an open directory descriptor for the duration of the call.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr().cast(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ESRCH) => Ok(false),
                _ => Err(e),
            };
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
        self.buf.clear();
        match f.read_to_end(&mut self.buf) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn count(&self, walk: &mut Walk, state: u8) {
        *walk.states.entry(state).or_insert(0) += 1;
        walk.total += 1;
    }

    /// `self.path` is `<proc>/<pid>/task/<tid>` for threads, `<proc>/<pid>` for single-threaded
    /// processes (`at_process`).
    #[allow(clippy::too_many_arguments)]
    fn record_d(
        &mut self,
        walk: &mut Walk,
        pid: u32,
        tid: u32,
        starttime: u64,
        comm: String,
        kernel_thread: bool,
        proc_start: u64,
        at_process: bool,
    ) {
        self.path.push("wchan");
        let wchan = match self.read_path() {
            Ok(true) => {
                let w = String::from_utf8_lossy(&self.buf).trim().to_string();
                (!w.is_empty() && w != "0").then_some(w)
            }
            _ => None,
        };
        self.path.pop();
        let cgroup = if kernel_thread {
            None
        } else if let Some(c) = self.cgroups.get(&(pid, proc_start)) {
            Some(c.clone())
        } else {
            // <proc>/<pid>/cgroup, from wherever we are.
            let depth = if at_process { 0 } else { 2 };
            for _ in 0..depth {
                self.path.pop();
            }
            self.path.push("cgroup");
            let c = match self.read_path() {
                Ok(true) => pid_cgroup::parse(&String::from_utf8_lossy(&self.buf))
                    .ok()
                    .map(|l| Arc::<str>::from(pid_cgroup::primary_path(&l))),
                _ => None,
            };
            self.path.pop();
            if !at_process {
                self.path.push("task");
                self.path.push(tid.to_string());
            }
            if let Some(c) = &c {
                self.cgroups.insert((pid, proc_start), c.clone());
                self.cgroup_seen += 1;
            }
            c
        };
        walk.d.push(RawD {
            pid,
            tid,
            starttime,
            comm,
            kernel_thread,
            wchan,
            cgroup,
        });
    }
}

/// A thread in D now, as published.
#[derive(Debug, Clone)]
pub struct DThread {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub group: Arc<str>,
    pub wchan: Option<String>,
    pub cgroup: Option<Arc<str>>,
    pub kernel_thread: bool,
    /// First walk that saw this thread (tid + start time) in D, in this uninterrupted episode.
    /// The age is a lower bound: the thread may have entered D up to one walk interval earlier.
    pub since: Instant,
}

/// Per-group D-state accounting, exported as one row.
#[derive(Debug, Clone, Default)]
pub struct GroupRow {
    pub name: Arc<str>,
    /// Threads of the group in D at the last walk.
    pub d_now: u64,
    /// D thread-seconds, integrated across walks (trapezoid rule); never decreases.
    pub d_seconds: f64,
    /// Threads that entered D (new tid + start time in D), total.
    pub episodes: u64,
    /// Start of the longest current uninterrupted D among the group's threads.
    pub longest_since: Option<Instant>,
}

pub const OTHER: &str = "other";

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
}

#[derive(Debug, Default)]
struct GroupAcc {
    d_seconds: f64,
    episodes: u64,
    last_d: Option<Instant>,
}

/// Turns successive walks into per-thread ages and per-group integrals, with bounded labels.
#[derive(Default)]
pub struct DTracker {
    live: HashMap<(u32, u64), (Instant, Arc<str>)>,
    groups: HashMap<Arc<str>, GroupAcc>,
    other: GroupAcc,
    exported: Vec<Arc<str>>,
    last: Option<(Instant, HashMap<Arc<str>, u64>)>,
    interned: HashMap<String, Arc<str>>,
}

/// Groups tracked internally (a process can invent comms; memory stays bounded).
const MAX_TRACKED_GROUPS: usize = 512;

impl DTracker {
    fn intern(&mut self, s: String) -> Arc<str> {
        if let Some(a) = self.interned.get(&s) {
            return a.clone();
        }
        if self.interned.len() > 4 * MAX_TRACKED_GROUPS {
            self.interned.retain(|_, v| Arc::strong_count(v) > 1);
        }
        let a: Arc<str> = Arc::from(s.as_str());
        self.interned.insert(s, a.clone());
        a
    }

    /// Applies one walk taken at `at`. `max_gap`: longer gaps between walks (a stuck walk) are
    /// not integrated.
    pub fn apply(
        &mut self,
        walk: &Walk,
        at: Instant,
        cfg: &ThreadsConfig,
        max_gap: Duration,
    ) -> (Vec<DThread>, HashMap<Arc<str>, u64>) {
        let mut counts: HashMap<Arc<str>, u64> = HashMap::new();
        let mut live = HashMap::with_capacity(walk.d.len());
        let mut stuck = Vec::with_capacity(walk.d.len());
        for d in &walk.d {
            let key = (d.tid, d.starttime);
            let (since, group) = match self.live.remove(&key) {
                Some(v) => v,
                None => {
                    let g = self.intern(group_of(&d.comm, d.kernel_thread, &cfg.rules));
                    self.groups.entry(g.clone()).or_default().episodes += 1;
                    if !self.exported.contains(&g) && self.groups.len() > cfg.top_groups {
                        // not (yet) exported: its episode also counts in `other`
                    }
                    (at, g)
                }
            };
            *counts.entry(group.clone()).or_insert(0) += 1;
            stuck.push(DThread {
                pid: d.pid,
                tid: d.tid,
                comm: d.comm.clone(),
                group: group.clone(),
                wchan: d.wchan.clone(),
                cgroup: d.cgroup.clone(),
                kernel_thread: d.kernel_thread,
                since,
            });
            live.insert(key, (since, group));
        }
        self.live = live;

        // Integrate D thread-seconds per group over the gap since the last walk (trapezoid:
        // a thread seen in D at both ends counts the whole gap, at one end half of it).
        if let Some((t0, prev)) = &self.last {
            let dt = at.saturating_duration_since(*t0);
            if dt <= max_gap {
                let dt = dt.as_secs_f64();
                let mut keys: Vec<&Arc<str>> = prev.keys().chain(counts.keys()).collect();
                keys.sort();
                keys.dedup();
                for g in keys {
                    let n = (prev.get(g).copied().unwrap_or(0)
                        + counts.get(g).copied().unwrap_or(0)) as f64
                        / 2.0;
                    self.groups.entry(g.clone()).or_default().d_seconds += n * dt;
                }
            }
        }
        for (g, _) in counts.iter() {
            self.groups.entry(g.clone()).or_default().last_d = Some(at);
        }
        self.last = Some((at, counts.clone()));
        (stuck, counts)
    }

    /// Chooses the exported groups (top-N by D time) and folds the rest into `other`. `other`
    /// only ever grows: what a non-exported group accrues since the previous call is added to
    /// it; a group that enters the top-N appears with its own total.
    pub fn rows(
        &mut self,
        counts: &HashMap<Arc<str>, u64>,
        stuck: &[DThread],
        top: usize,
        prev_totals: &mut HashMap<Arc<str>, (f64, u64)>,
    ) -> Vec<GroupRow> {
        // Bound the internal table: drop the smallest groups not in D now.
        if self.groups.len() > MAX_TRACKED_GROUPS {
            let mut v: Vec<(Arc<str>, f64)> = self
                .groups
                .iter()
                .filter(|(g, _)| !counts.contains_key(*g))
                .map(|(g, a)| (g.clone(), a.d_seconds))
                .collect();
            v.sort_by(|a, b| a.1.total_cmp(&b.1));
            for (g, _) in v.into_iter().take(self.groups.len() - MAX_TRACKED_GROUPS) {
                if let Some(a) = self.groups.remove(&g) {
                    // Its history is no longer tracked by name: keep it in `other` if it was
                    // never exported, so `other` stays monotonic and complete.
                    if !self.exported.contains(&g) {
                        let (s0, e0) = prev_totals.remove(&g).unwrap_or((0.0, 0));
                        self.other.d_seconds += a.d_seconds - s0;
                        self.other.episodes += a.episodes - e0;
                    }
                }
            }
        }
        let mut ranked: Vec<(&Arc<str>, &GroupAcc)> = self.groups.iter().collect();
        ranked.sort_by(|a, b| {
            b.1.d_seconds
                .total_cmp(&a.1.d_seconds)
                .then_with(|| {
                    counts
                        .get(b.0)
                        .unwrap_or(&0)
                        .cmp(counts.get(a.0).unwrap_or(&0))
                })
                .then_with(|| a.0.cmp(b.0))
        });
        let exported: Vec<Arc<str>> = ranked.iter().take(top).map(|(g, _)| (*g).clone()).collect();
        // Accrue non-exported groups' growth into `other`.
        for (g, a) in &self.groups {
            let (s0, e0) = prev_totals.get(g).copied().unwrap_or((0.0, 0));
            if !exported.contains(g) {
                self.other.d_seconds += (a.d_seconds - s0).max(0.0);
                self.other.episodes += a.episodes.saturating_sub(e0);
            }
        }
        prev_totals.clear();
        for (g, a) in &self.groups {
            prev_totals.insert(g.clone(), (a.d_seconds, a.episodes));
        }
        self.exported = exported;
        let longest = |g: &str| {
            stuck
                .iter()
                .filter(|d| &*d.group == g)
                .map(|d| d.since)
                .min()
        };
        let mut rows: Vec<GroupRow> = self
            .exported
            .iter()
            .filter_map(|g| {
                let a = self.groups.get(g)?;
                Some(GroupRow {
                    name: g.clone(),
                    d_now: counts.get(g).copied().unwrap_or(0),
                    d_seconds: a.d_seconds,
                    episodes: a.episodes,
                    longest_since: longest(g),
                })
            })
            .collect();
        let other_now: u64 = counts
            .iter()
            .filter(|(g, _)| !self.exported.contains(g))
            .map(|(_, n)| n)
            .sum();
        if other_now > 0 || self.other.episodes > 0 {
            rows.push(GroupRow {
                name: Arc::from(OTHER),
                d_now: other_now,
                d_seconds: self.other.d_seconds,
                episodes: self.other.episodes,
                longest_since: stuck
                    .iter()
                    .filter(|d| !self.exported.contains(&d.group))
                    .map(|d| d.since)
                    .min(),
            });
        }
        rows
    }
}

/// Top-N wait channels by current count, the rest summed as `other`.
pub fn wchan_rows(stuck: &[DThread], top: usize) -> Vec<(String, u64)> {
    let mut m: HashMap<&str, u64> = HashMap::new();
    for d in stuck {
        *m.entry(d.wchan.as_deref().unwrap_or("unknown"))
            .or_insert(0) += 1;
    }
    let mut v: Vec<(&str, u64)> = m.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let mut out: Vec<(String, u64)> = v
        .iter()
        .take(top)
        .map(|(w, n)| (w.to_string(), *n))
        .collect();
    let rest: u64 = v.iter().skip(top).map(|(_, n)| n).sum();
    if rest > 0 {
        out.push((OTHER.to_string(), rest));
    }
    out
}

/// Running thread sampler.
pub struct ThreadSampler(Background);

impl ThreadSampler {
    pub fn spawn(
        roots: Arc<Roots>,
        config: Arc<ArcSwap<ThreadsConfig>>,
        host: Arc<ArcSwap<HostSnapshot>>,
        out: Arc<ArcSwap<ThreadSnapshot>>,
    ) -> std::io::Result<ThreadSampler> {
        let (res_tx, res_rx) = mpsc::channel::<Outcome<Result<Walk, Error>>>();
        let mut walker = Walker::new();
        let r = roots.clone();
        let mut worker = Worker::spawn("threads", 0, res_tx, move || walker.walk(&r))?;
        let bg = Background::spawn("sw-threads", move |sleeper| {
            let mut tracker = DTracker::default();
            let mut prev_totals = HashMap::new();
            let mut snap = ThreadSnapshot {
                status: SourceStatus::new("threads"),
                ..ThreadSnapshot::default()
            };
            let mut last_walk: Option<Instant> = None;
            let mut had_d = false;
            let mut last_walk_cpu = Duration::ZERO;
            let mut last_err_log: Option<Instant> = None;
            let mut last_stuck_log: Option<Instant> = None;
            let started = Instant::now();
            loop {
                let cfg = config.load_full();
                let now = Instant::now();
                snap.enabled = cfg.enabled;
                let h = host.load();
                // Judge suspicion on real data: wait (briefly) for the host sampler's first
                // snapshot before the first walk.
                if h.taken.is_none() && started.elapsed() < Duration::from_secs(5) {
                    if !sleeper.sleep(Duration::from_millis(20)) {
                        break;
                    }
                    continue;
                }
                let suspected = had_d
                    || h.stat
                        .as_ref()
                        .and_then(|s| s.procs_blocked)
                        .is_some_and(|b| b > 0)
                    || h.pressure[1]
                        .and_then(|p| p.some)
                        .is_some_and(|r| r.avg10 > cfg.stall_psi_threshold);
                let wanted = if suspected {
                    cfg.fast_interval
                } else {
                    cfg.interval
                };
                // Never make the stall worse than the budget allows: a walk that cost c seconds
                // of CPU waits at least c / max_cpu before the next one.
                let cadence = budget::stretch(wanted, last_walk_cpu, cfg.max_cpu);
                let due = last_walk.is_none_or(|t| {
                    now.saturating_duration_since(t) + Duration::from_millis(20) >= cadence
                });
                if cfg.enabled && due {
                    worker.request(now);
                    let wait = cfg.source_timeout.min(cfg.fast_interval);
                    if let Ok(o) = res_rx.recv_timeout(wait) {
                        worker.busy_since = None;
                        snap.status.record(&o);
                        last_walk_cpu = o.cpu;
                        match o.result {
                            Ok(walk) => {
                                let gap = cfg.interval * 2 + cfg.source_timeout;
                                let (mut stuck, counts) =
                                    tracker.apply(&walk, o.finished, &cfg, gap);
                                snap.groups =
                                    tracker.rows(&counts, &stuck, cfg.top_groups, &mut prev_totals);
                                snap.wchans = wchan_rows(&stuck, cfg.top_wchans);
                                stuck.sort_by_key(|d| d.since);
                                stuck.truncate(1000);
                                had_d = !stuck.is_empty();
                                snap.stuck = stuck;
                                let mut states: Vec<(char, u64)> =
                                    walk.states.iter().map(|(s, n)| (*s as char, *n)).collect();
                                states.sort();
                                snap.states = states;
                                snap.total_threads = walk.total;
                                snap.status.last_success = Some(o.finished);
                            }
                            Err(e) => {
                                snap.status.count_error(e.kind());
                                if last_err_log
                                    .is_none_or(|t| t.elapsed() > Duration::from_secs(60))
                                {
                                    warn!(source = "threads", error = %e, "Thread walk failed.");
                                    last_err_log = Some(Instant::now());
                                }
                            }
                        }
                    }
                    last_walk = Some(now);
                } else if let Ok(o) = res_rx.try_recv() {
                    // A late walk (it took longer than the wait): account it, drop its data.
                    worker.busy_since = None;
                    snap.status.record(&o);
                }
                snap.status.in_flight_since = worker.busy_since;
                snap.status.timeout = cfg.source_timeout;
                snap.status
                    .warn_if_stuck(Instant::now(), &mut last_stuck_log);
                snap.suspected = suspected;
                snap.current_interval = cadence;
                snap.taken = Some(SystemTime::now());
                out.store(Arc::new(snap.clone()));
                // Re-check suspicion every fast_interval, so a stall starting during a 10 s
                // pause is walked within about a second.
                let wait = cfg.fast_interval.saturating_sub(now.elapsed());
                if !sleeper.sleep(wait) {
                    break;
                }
            }
        })?;
        Ok(ThreadSampler(bg))
    }

    pub fn stop(self) {
        self.0.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::thread;

    fn g(comm: &str, k: bool) -> String {
        group_of(comm, k, &[])
    }

    #[test]
    fn groups_of_kernel_threads_from_this_machine_and_the_seed_incident() {
        assert_eq!(g("kworker/7:0", true), "kworker");
        assert_eq!(g("kworker/u30:2", true), "kworker");
        assert_eq!(g("kworker/0:1H-kblockd", true), "kworker");
        assert_eq!(g("kworker/u8:3-flush-254:0", true), "kworker");
        assert_eq!(g("jbd2/sda1-8", true), "jbd2");
        assert_eq!(g("ksoftirqd/1", true), "ksoftirqd");
        assert_eq!(g("migration/0", true), "migration");
        assert_eq!(g("scsi_eh_0", true), "scsi_eh");
        assert_eq!(g("kswapd0", true), "kswapd");
        assert_eq!(g("xfsaild/dm-0", true), "xfsaild");
        assert_eq!(g("rcu_preempt", true), "rcu_preempt");
        assert_eq!(g("systemd-udevd", false), "systemd-udevd");
        assert_eq!(g("(udev-worker)", false), "(udev-worker)");
        assert_eq!(
            g("worker-3", false),
            "worker-3",
            "user comms keep their digits"
        );
        assert_eq!(g("/", false), "/", "never an empty group");
    }

    #[test]
    fn configured_rules_win_in_order() {
        let rules = vec![
            GroupRule {
                regex: Regex::new("^(dockerd|containerd)").unwrap(),
                name: "docker".into(),
            },
            GroupRule {
                regex: Regex::new("^kworker").unwrap(),
                name: "kernel-workers".into(),
            },
        ];
        assert_eq!(group_of("containerd-shim", false, &rules), "docker");
        assert_eq!(group_of("kworker/u30:2", true, &rules), "kernel-workers");
        assert_eq!(group_of("postgres", false, &rules), "postgres");
    }

    fn raw(tid: u32, comm: &str, wchan: &str) -> RawD {
        RawD {
            pid: tid,
            tid,
            starttime: 100 + tid as u64,
            comm: comm.into(),
            kernel_thread: false,
            wchan: Some(wchan.into()),
            cgroup: None,
        }
    }

    #[test]
    fn ages_integrals_and_episodes_across_walks() {
        let cfg = ThreadsConfig::default();
        let mut t = DTracker::default();
        let mut prev = HashMap::new();
        let t0 = Instant::now();
        let gap = Duration::from_secs(30);
        let w1 = Walk {
            d: vec![raw(1, "dd", "io_schedule"), raw(2, "dd", "io_schedule")],
            ..Walk::default()
        };
        let (s, c) = t.apply(&w1, t0, &cfg, gap);
        let rows = t.rows(&c, &s, 20, &mut prev);
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].d_now, rows[0].episodes, rows[0].d_seconds),
            (2, 2, 0.0)
        );
        // 2 s later thread 1 is still in D, thread 2 left, thread 3 entered.
        let w2 = Walk {
            d: vec![raw(1, "dd", "io_schedule"), raw(3, "dd", "rq_qos_wait")],
            ..Walk::default()
        };
        let (s, c) = t.apply(&w2, t0 + Duration::from_secs(2), &cfg, gap);
        let rows = t.rows(&c, &s, 20, &mut prev);
        assert_eq!((rows[0].d_now, rows[0].episodes), (2, 3));
        assert!(
            (rows[0].d_seconds - 4.0).abs() < 1e-9,
            "(2+2)/2 × 2 s = {}",
            rows[0].d_seconds
        );
        assert_eq!(
            rows[0].longest_since,
            Some(t0),
            "thread 1 has been in D since the first walk"
        );
        let w = wchan_rows(&s, 20);
        assert_eq!(
            w,
            vec![
                ("io_schedule".to_string(), 1),
                ("rq_qos_wait".to_string(), 1)
            ]
        );
        // Nobody in D: the integral finishes the gap, the group stays with d_now 0.
        let (s, c) = t.apply(&Walk::default(), t0 + Duration::from_secs(4), &cfg, gap);
        let rows = t.rows(&c, &s, 20, &mut prev);
        assert!((rows[0].d_seconds - 6.0).abs() < 1e-9);
        assert_eq!(rows[0].d_now, 0);
        assert_eq!(rows[0].longest_since, None);
    }

    #[test]
    fn top_n_folds_the_rest_into_other_which_never_decreases() {
        let cfg = ThreadsConfig::default();
        let mut t = DTracker::default();
        let mut prev = HashMap::new();
        let t0 = Instant::now();
        let gap = Duration::from_secs(30);
        let mut other_seen = 0.0;
        for step in 0..10u32 {
            // group "g{k}" has k threads in D; new groups keep appearing.
            let d: Vec<RawD> = (0..=step)
                .flat_map(|k| (0..k).map(move |i| raw(1000 * k + i, &format!("g{k}"), "w")))
                .collect();
            let (s, c) = t.apply(
                &Walk {
                    d,
                    ..Walk::default()
                },
                t0 + Duration::from_secs(step as u64),
                &cfg,
                gap,
            );
            let rows = t.rows(&c, &s, 3, &mut prev);
            assert!(rows.len() <= 4, "3 named groups + other");
            let names: Vec<&str> = rows.iter().map(|r| &*r.name).collect();
            if step >= 4 {
                assert_eq!(names.last(), Some(&OTHER), "{names:?}");
                let other = rows.last().unwrap().d_seconds;
                assert!(
                    other >= other_seen,
                    "other went down: {other} < {other_seen}"
                );
                other_seen = other;
            }
            // total D now is conserved across the named rows and other.
            let total_now: u64 = rows.iter().map(|r| r.d_now).sum();
            assert_eq!(total_now, s.len() as u64);
        }
        assert!(other_seen > 0.0);
        let w = wchan_rows(&[], 2);
        assert!(w.is_empty());
    }

    #[test]
    fn wchan_top_n_and_other() {
        let t0 = Instant::now();
        let mk = |w: &str| DThread {
            pid: 1,
            tid: 1,
            comm: "x".into(),
            group: Arc::from("x"),
            wchan: Some(w.into()),
            cgroup: None,
            kernel_thread: false,
            since: t0,
        };
        let s = vec![mk("a"), mk("a"), mk("b"), mk("c"), mk("d")];
        assert_eq!(
            wchan_rows(&s, 2),
            vec![("a".into(), 2), ("b".into(), 1), (OTHER.into(), 2)]
        );
    }

    #[test]
    fn walk_of_this_machine_counts_our_own_threads_and_survives_churn() {
        // Threads that exit mid-walk are skipped quietly: churn threads while walking.
        let stop = Arc::new(AtomicBool::new(false));
        let churn: Vec<_> = (0..2)
            .map(|_| {
                let stop = stop.clone();
                thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let h: Vec<_> = (0..8)
                            .map(|_| thread::spawn(|| thread::sleep(Duration::from_micros(200))))
                            .collect();
                        h.into_iter().for_each(|h| h.join().unwrap());
                    }
                })
            })
            .collect();
        let mut w = Walker::new();
        for _ in 0..20 {
            let walk = w.walk(&Roots::default()).unwrap();
            assert!(walk.total >= 3, "at least this test's threads");
            assert!(
                walk.states.get(&b'R').copied().unwrap_or(0) >= 1,
                "the walker itself runs"
            );
        }
        stop.store(true, Ordering::Relaxed);
        churn.into_iter().for_each(|h| h.join().unwrap());
    }
}
