//! The sync-write probe: the seed incident's check, `dd if=/dev/zero of=/root/50MB bs=1M
//! count=10 oflag=sync` ("if this does not complete in < 5 seconds, something is terribly
//! hosed"), which hung, turned into metrics.
//!
//! Every `interval`, one thread per configured directory rewrites `size` bytes at offset 0 of
//! `<dir>/.stallwatch-probe`, opened once with `O_DSYNC`, and times it. PSI and disk queues say
//! the node *is* slow; this says what an application's `fsync` costs *right now* on the
//! filesystem that matters, end to end through the page cache, the filesystem journal and the
//! (cloud) block device.
//!
//! Design points, and why:
//! - A write stuck in the kernel cannot be interrupted (the thread sits in D state). So the
//!   probe thread takes its lock only around bookkeeping, never around the write; a snapshot
//!   never waits for the disk; and "this write has been running longer than `timeout`" is
//!   decided by whoever looks ([`Probes::snapshot`]), counted exactly once per write through a
//!   flag, so a hang shows up while it is happening, not only once the write returns. The
//!   writer checks the same flag when its write returns, so a slow write nobody looked at
//!   during its run is counted too.
//! - One thread per directory and a config keyed by directory: never two probe writes in
//!   flight on one path. A reload that changes a probe's size or cadence updates the running
//!   probe in place instead of starting a second writer next to a possibly hung one.
//! - Rewriting the same bytes of one pre-created file: the file never grows, and after the
//!   first write no block allocation or size update is part of the measurement.
//! - The file name is fixed and we run as root in directories we do not own: the open refuses
//!   symlinks (`O_NOFOLLOW`) and FIFOs (`O_NONBLOCK`, then a regular-file check), and a file
//!   with other hard links is never written to (no `O_TRUNC`, the check comes first).
//! - Stopping never waits for a hung write: the thread is signalled, and removes its file
//!   itself if its write ever returns.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, info, warn};

/// Name of the file the probe owns in each probed directory.
pub const FILE_NAME: &str = ".stallwatch-probe";

/// Histogram bucket upper bounds, seconds. A healthy sync write of 1 MiB takes 1–20 ms on
/// cloud block storage; the incident's "terribly hosed" was 5 s; beyond a minute nothing finer
/// matters (the timeout counter and `in_flight_since` say the rest).
pub const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The bounded failure reasons (`reason` label), in export order.
pub const REASONS: [&str; 7] = [
    "timeout",
    "enospc",
    "eio",
    "permission",
    "readonly",
    "notfound",
    "other",
];

/// How long [`Probes::stop`] waits, in total, for probe threads to finish and remove their
/// files before leaving the rest behind (a thread stuck in a write cannot be waited for).
const STOP_GRACE: Duration = Duration::from_millis(500);

/// Log each failure reason at most this often per probe: a dead disk must not flood the log.
const LOG_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq)]
pub struct ProbeConfig {
    /// A directory on the filesystem to probe; the probe owns the file `<path>/.stallwatch-probe`
    /// in it.
    pub path: PathBuf,
    /// Bytes per write. Default 1 MiB (the incident's `bs=1M`).
    pub size: u64,
    /// Time between the starts of two writes. Default 30 s.
    pub interval: Duration,
    /// A write still running after this long counts one `timeout` failure. Default 5 s.
    pub timeout: Duration,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            path: PathBuf::new(),
            size: 1 << 20,
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Checks a probe path for the config: absolute, exists, is a directory, is not on a read-only
/// filesystem (statvfs `ST_RDONLY`) and is writable by our effective user. Errors name the path
/// and the reason.
///
/// Note: for root, `access(2)` ignores the directory's mode bits (CAP_DAC_OVERRIDE), so a
/// `0555` directory passes here, as it would for the probe's own writes.
pub fn validate(path: &Path) -> Result<(), String> {
    let shown = path.display();
    if !path.is_absolute() {
        return Err(format!("probe path {shown:?} must be absolute"));
    }
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(format!("probe path {shown} does not exist"));
        }
        Err(e) => return Err(format!("probe path {shown}: cannot stat: {e}")),
    };
    if !meta.is_dir() {
        return Err(format!("probe path {shown} is not a directory"));
    }
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("probe path {shown:?} contains a NUL byte"))?;
    // SAFETY: `c` is a valid NUL-terminated string; statvfs only writes into the zeroed struct
    // we pass.
    let mut vfs: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut vfs) } != 0 {
        let e = io::Error::last_os_error();
        return Err(format!("probe path {shown}: cannot statvfs: {e}"));
    }
    if vfs.f_flag & libc::ST_RDONLY != 0 {
        return Err(format!("probe path {shown} is on a read-only filesystem"));
    }
    // The effective user is the one that will open the file (AT_EACCESS); X is needed to
    // create a file in the directory as much as W.
    // SAFETY: `c` is a valid NUL-terminated string; faccessat has no other preconditions.
    let rc = unsafe {
        libc::faccessat(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::W_OK | libc::X_OK,
            libc::AT_EACCESS,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        return Err(format!(
            "probe path {shown} is not writable by uid {uid}: {e}"
        ));
    }
    Ok(())
}

/// One probe's state, as of the snapshot.
#[derive(Debug, Clone)]
pub struct ProbeSnapshot {
    /// The configured directory, lossy UTF-8; the `path` label.
    pub path: String,
    /// `(upper bound, writes in the bucket)`: one per [`BUCKETS`] entry, then `+Inf` for the
    /// slower ones. Per-bucket counts, not cumulative (what the exposition encoder takes, so it
    /// is never made cumulative here and undone there); they sum to `count`.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of the observed write durations, seconds.
    pub sum: f64,
    /// Writes observed: every write call that returned, successful or not (a failed open is
    /// not a write and is only counted in `failures`).
    pub count: u64,
    /// Start of the running write, `None` when idle: a write that stays in flight is the signal.
    pub in_flight_since: Option<Instant>,
    /// Failures since start by reason, every reason of [`REASONS`] present, in that order.
    pub failures: Vec<(&'static str, u64)>,
    /// Wall time of the last write that returned.
    pub last_duration: Option<Duration>,
    /// Wall-clock time the last successful write returned.
    pub last_success: Option<SystemTime>,
}

/// Why one probe attempt failed. Carries the path for the log line.
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error("opening {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a regular file with a single link; not writing to it", path.display())]
    NotOurs { path: PathBuf },
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl ProbeError {
    fn reason(&self) -> &'static str {
        match self {
            ProbeError::Open { source, .. } | ProbeError::Write { source, .. } => reason(source),
            ProbeError::NotOurs { .. } => "other",
        }
    }
}

/// Maps an I/O error to its bounded `reason` label.
fn reason(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        // EDQUOT is "no space for this user": for the probe, the same thing as ENOSPC.
        Some(libc::ENOSPC | libc::EDQUOT) => "enospc",
        Some(libc::EIO) => "eio",
        Some(libc::EACCES | libc::EPERM) => "permission",
        Some(libc::EROFS) => "readonly",
        Some(libc::ENOENT) => "notfound",
        _ => "other",
    }
}

fn reason_index(r: &str) -> usize {
    REASONS
        .iter()
        .position(|&x| x == r)
        .unwrap_or(REASONS.len() - 1)
}

/// The write itself, injectable so the timeout logic can be tested without a hung disk.
type WriteFn = Box<dyn FnMut(&File, &[u8]) -> io::Result<()> + Send>;
type MakeWriter = Box<dyn Fn() -> WriteFn + Send + Sync>;

fn real_writer() -> WriteFn {
    // write_all_at loops over short writes and EINTR; offset 0 every time, so the file never
    // grows beyond `size`.
    Box::new(|f: &File, buf: &[u8]| f.write_all_at(buf, 0))
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    started: Instant,
    /// The `timeout` failure of this write has been counted.
    timed_out: bool,
}

#[derive(Debug)]
struct Stats {
    /// Writes per bucket: the first [`BUCKETS`] bound a write fits under, else the last
    /// (`+Inf`) slot.
    buckets: [u64; BUCKETS.len() + 1],
    sum: f64,
    count: u64,
    failures: [u64; REASONS.len()],
    in_flight: Option<InFlight>,
    last_duration: Option<Duration>,
    last_success: Option<SystemTime>,
    /// When each reason was last logged (rate limit).
    logged: [Option<Instant>; REASONS.len()],
    /// The last attempt failed (to log the recovery once).
    failing: bool,
}

impl Stats {
    fn new() -> Self {
        Stats {
            buckets: [0; BUCKETS.len() + 1],
            sum: 0.0,
            count: 0,
            failures: [0; REASONS.len()],
            in_flight: None,
            last_duration: None,
            last_success: None,
            logged: [None; REASONS.len()],
            failing: false,
        }
    }

    fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|&le| s <= le)
            .unwrap_or(BUCKETS.len());
        self.buckets[i] += 1;
        self.sum += s;
        self.count += 1;
        self.last_duration = Some(d);
    }

    /// Counts one failure; returns whether it should be logged now.
    fn fail(&mut self, reason: &str, now: Instant) -> bool {
        let i = reason_index(reason);
        self.failures[i] += 1;
        let last = &mut self.logged[i];
        if last.is_none_or(|t| now.saturating_duration_since(t) >= LOG_EVERY) {
            *last = Some(now);
            true
        } else {
            false
        }
    }

    /// Counts the `timeout` failure of the running write once it has crossed `timeout`.
    /// Returns whether it should be logged now.
    fn check_timeout(&mut self, timeout: Duration, now: Instant) -> bool {
        match &mut self.in_flight {
            Some(f) if !f.timed_out && now.saturating_duration_since(f.started) > timeout => {
                f.timed_out = true;
                self.fail("timeout", now)
            }
            _ => false,
        }
    }
}

struct State {
    config: ProbeConfig,
    stats: Stats,
    stop: bool,
    /// The thread has finished (and removed its file).
    exited: bool,
}

/// What the probe thread and the snapshot side share. The lock is held only for bookkeeping.
struct Shared {
    /// The configured directory: the probe's identity (it never changes for a probe).
    path: PathBuf,
    label: String,
    /// `<path>/.stallwatch-probe`.
    file: PathBuf,
    state: Mutex<State>,
    /// Wakes the thread (stop, config change) and `stop()` (thread exited).
    cv: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves counters, not invariants: keep using them.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct Probe {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Probe {
    fn signal_stop(&self) {
        self.shared.lock().stop = true;
        self.shared.cv.notify_all();
    }
}

/// The running probes. Dropping it signals every probe to stop (without waiting);
/// [`Probes::stop`] also waits briefly for their files to be removed.
pub struct Probes {
    probes: Vec<Probe>,
    make_writer: MakeWriter,
}

impl Probes {
    /// Starts one thread per probe (named "sw-probe").
    ///
    /// Fails (starting nothing) on a duplicate path, a zero `size` or `interval`, or when a
    /// thread cannot be spawned.
    pub fn spawn(configs: Vec<ProbeConfig>) -> io::Result<Probes> {
        Self::spawn_with(configs, Box::new(real_writer))
    }

    /// No probes (what a config without `[[probe]]` runs).
    pub fn empty() -> Probes {
        Probes {
            probes: Vec::new(),
            make_writer: Box::new(real_writer),
        }
    }

    fn spawn_with(configs: Vec<ProbeConfig>, make_writer: MakeWriter) -> io::Result<Probes> {
        let mut p = Probes {
            probes: Vec::new(),
            make_writer,
        };
        p.reconcile(configs)?;
        Ok(p)
    }

    /// Current state of every probe, in config order. Never blocks on I/O: the probe threads
    /// hold the lock only around bookkeeping, never around the write.
    pub fn snapshot(&self) -> Vec<ProbeSnapshot> {
        let now = Instant::now();
        let mut out = Vec::with_capacity(self.probes.len());
        for p in &self.probes {
            let (snap, log_timeout) = {
                let mut st = p.shared.lock();
                let timeout = st.config.timeout;
                let log = st.stats.check_timeout(timeout, now);
                let s = &st.stats;
                let snap = ProbeSnapshot {
                    path: p.shared.label.clone(),
                    buckets: BUCKETS
                        .iter()
                        .copied()
                        .chain([f64::INFINITY])
                        .zip(s.buckets)
                        .collect(),
                    sum: s.sum,
                    count: s.count,
                    in_flight_since: s.in_flight.map(|f| f.started),
                    failures: REASONS.iter().copied().zip(s.failures).collect(),
                    last_duration: s.last_duration,
                    last_success: s.last_success,
                };
                (snap, log.then_some(timeout))
            };
            // Logged outside the lock: a slow log sink must not hold up the probe thread.
            if let Some(timeout) = log_timeout {
                warn!(
                    path = %p.shared.label,
                    timeout = ?timeout,
                    "Probe write still running after its timeout; the filesystem may be stalled."
                );
            }
            out.push(snap);
        }
        out
    }

    /// Applies a new probe list (config reload). Probes are keyed by path: an unchanged one
    /// keeps running with its counters; one whose size, interval or timeout changed is updated
    /// in place (same thread and counters, so a reload during a hang neither hides the stuck
    /// write nor starts a second writer on the same path); removed ones are signalled to stop
    /// (each removes its file when it wakes or its write returns); new ones start.
    ///
    /// All or nothing: on error (duplicate path, zero size or interval, spawn failure) the
    /// running set is unchanged.
    pub fn reconcile(&mut self, configs: Vec<ProbeConfig>) -> io::Result<()> {
        for (i, c) in configs.iter().enumerate() {
            let invalid = |msg: &str| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("probe {}: {msg}", c.path.display()),
                )
            };
            if configs[..i].iter().any(|o| o.path == c.path) {
                return Err(invalid("path configured twice"));
            }
            if c.size == 0 {
                return Err(invalid("size must be greater than 0"));
            }
            if c.interval.is_zero() {
                return Err(invalid("interval must be greater than 0"));
            }
            if usize::try_from(c.size).is_err() {
                return Err(invalid("size does not fit in memory"));
            }
        }
        // Spawn the new ones first, so a failure leaves the old set untouched.
        let mut fresh: Vec<Option<Probe>> = Vec::with_capacity(configs.len());
        for c in &configs {
            if self.probes.iter().any(|p| p.shared.path == c.path) {
                fresh.push(None);
                continue;
            }
            match spawn_probe(c.clone(), (self.make_writer)()) {
                Ok(p) => fresh.push(Some(p)),
                Err(e) => {
                    fresh.iter().flatten().for_each(Probe::signal_stop);
                    return Err(e);
                }
            }
        }
        let mut old = std::mem::take(&mut self.probes);
        for (c, new) in configs.into_iter().zip(fresh) {
            if let Some(p) = new {
                self.probes.push(p);
                continue;
            }
            let Some(i) = old.iter().position(|p| p.shared.path == c.path) else {
                continue; // unreachable: checked above
            };
            let p = old.swap_remove(i);
            {
                let mut st = p.shared.lock();
                if st.config != c {
                    info!(path = %p.shared.label, "Probe settings changed; applying them to the running probe.");
                    st.config = c;
                }
            }
            // Wake it so a new interval takes effect now rather than after the old one.
            p.shared.cv.notify_all();
            self.probes.push(p);
        }
        for p in old {
            info!(path = %p.shared.label, "Probe removed from the config; stopping it.");
            p.signal_stop();
            // Detached: a thread stuck in a write cannot be joined; it ends on its own.
        }
        Ok(())
    }

    /// Stops all probes and removes their files. Never hangs on a probe whose write is stuck
    /// in the kernel: it waits at most [`STOP_GRACE`] in total, then leaves such a thread
    /// behind (it removes its file if its write ever returns; process exit reaps it).
    pub fn stop(mut self) {
        let probes = std::mem::take(&mut self.probes);
        probes.iter().for_each(Probe::signal_stop);
        let deadline = Instant::now() + STOP_GRACE;
        for mut p in probes {
            let exited = {
                let mut st = p.shared.lock();
                while !st.exited {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    st = p
                        .shared
                        .cv
                        .wait_timeout(st, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                st.exited
            };
            if exited {
                if let Some(t) = p.thread.take() {
                    let _ = t.join();
                }
            } else {
                warn!(path = %p.shared.label, "Probe write still in flight at stop; leaving its thread behind.");
            }
        }
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        self.probes.iter().for_each(Probe::signal_stop);
    }
}

fn spawn_probe(config: ProbeConfig, write: WriteFn) -> io::Result<Probe> {
    let shared = Arc::new(Shared {
        path: config.path.clone(),
        label: config.path.to_string_lossy().into_owned(),
        file: config.path.join(FILE_NAME),
        state: Mutex::new(State {
            config,
            stats: Stats::new(),
            stop: false,
            exited: false,
        }),
        cv: Condvar::new(),
    });
    let s2 = Arc::clone(&shared);
    let thread = thread::Builder::new()
        .name("sw-probe".into())
        // The write buffer is on the heap; the thread itself needs little stack.
        .stack_size(256 * 1024)
        .spawn(move || run(&s2, write))?;
    Ok(Probe {
        shared,
        thread: Some(thread),
    })
}

/// The probe thread: wait for the next slot, write, account, until stopped.
fn run(shared: &Shared, mut write: WriteFn) {
    let mut file: Option<File> = None;
    // (dev, ino) of the file we created or adopted, so we only ever remove our own.
    let mut ours: Option<(u64, u64)> = None;
    let mut buf: Vec<u8> = Vec::new();
    let mut last: Option<(Instant, Instant)> = None; // (started, finished) of the last write
    let mut seq: u64 = 0;
    'run: loop {
        let size = {
            let mut st = shared.lock();
            loop {
                if st.stop {
                    break 'run;
                }
                // Recomputed on every wake: a reload may have changed the interval.
                let now = Instant::now();
                let due = next_due(last, st.config.interval, now);
                if now >= due {
                    break;
                }
                st = shared
                    .cv
                    .wait_timeout(st, due - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            st.config.size
        };
        // Checked in reconcile; a size that does not fit cannot get here.
        let size = usize::try_from(size).unwrap_or(0);
        seq = seq.wrapping_add(1);
        fill(&mut buf, size, seq);

        let started = Instant::now();
        shared.lock().stats.in_flight = Some(InFlight {
            started,
            timed_out: false,
        });
        let result = attempt(
            &shared.file,
            &mut file,
            &mut ours,
            size as u64,
            &buf,
            &mut write,
        );
        let finished = Instant::now();
        let took = finished.saturating_duration_since(started);
        last = Some((started, finished));

        // Bookkeeping under the lock; logging after it.
        let (log_timeout, log_error, recovered) = {
            let mut st = shared.lock();
            let timeout = st.config.timeout;
            // A slow write nobody looked at while it ran still counts its timeout, once.
            let log_timeout = st.stats.check_timeout(timeout, finished).then_some(timeout);
            st.stats.in_flight = None;
            let wrote = !matches!(
                result,
                Err(ProbeError::Open { .. } | ProbeError::NotOurs { .. })
            );
            if wrote {
                st.stats.observe(took);
            }
            let mut log_error = false;
            let mut recovered = false;
            match &result {
                Ok(()) => {
                    st.stats.last_success = Some(SystemTime::now());
                    recovered = std::mem::replace(&mut st.stats.failing, false);
                }
                Err(e) => {
                    st.stats.failing = true;
                    log_error = st.stats.fail(e.reason(), finished);
                }
            }
            (log_timeout, log_error, recovered)
        };
        if let Some(timeout) = log_timeout {
            warn!(path = %shared.label, took = ?took, timeout = ?timeout, "Probe write took longer than its timeout.");
        }
        if let Err(e) = &result {
            // Reopen next time: the descriptor may belong to a filesystem that went away.
            file = None;
            if log_error {
                warn!(path = %shared.label, reason = e.reason(), error = %e, "Probe write failed.");
            }
        } else if recovered {
            info!(path = %shared.label, took = ?took, "Probe writes succeed again.");
        }
    }
    drop(file);
    remove_own(&shared.file, ours, &shared.label);
    shared.lock().exited = true;
    shared.cv.notify_all();
}

/// When the next write is due. Fixed rate from the last start; a write that overran its slot
/// is followed by a full interval of rest rather than an immediate retry, so the probe does not
/// add a back-to-back stream of sync writes to a disk that is already struggling.
/// The first write is due at once (`now`).
fn next_due(last: Option<(Instant, Instant)>, interval: Duration, now: Instant) -> Instant {
    match last {
        None => now,
        Some((started, finished)) => {
            let slot = started + interval;
            if slot >= finished {
                slot
            } else {
                finished + interval
            }
        }
    }
}

/// Fills `buf` with `size` bytes of incompressible data, stamped with `seq`. Not zeroes (as dd
/// did): ZFS and btrfs with compression, and thin-provisioned or deduplicating storage, turn
/// zero blocks into holes and would skip the very I/O we time. The per-write stamp every
/// 4 KiB makes each block differ from its previous content, so a filesystem that skips
/// rewrites of identical blocks (ZFS nopwrite) cannot either.
fn fill(buf: &mut Vec<u8>, size: usize, seq: u64) {
    if buf.len() != size {
        buf.clear();
        buf.reserve_exact(size);
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        while buf.len() < size {
            // xorshift64: cheap, and plenty for "not compressible".
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let take = (size - buf.len()).min(8);
            buf.extend_from_slice(&x.to_le_bytes()[..take]);
        }
    }
    let stamp = seq.to_le_bytes();
    for block in buf.chunks_mut(4096) {
        let n = block.len().min(8);
        block[..n].copy_from_slice(&stamp[..n]);
    }
}

/// One probe attempt: make sure the descriptor still names `<path>/.stallwatch-probe`, open it
/// if needed, and write. Everything that touches the probed filesystem happens here, inside
/// the in-flight window, so a hang in the lookup or the open counts as much as one in the write.
fn attempt(
    path: &Path,
    file: &mut Option<File>,
    ours: &mut Option<(u64, u64)>,
    size: u64,
    buf: &[u8],
    write: &mut WriteFn,
) -> Result<(), ProbeError> {
    // The descriptor outlives what it was opened on: a removed directory or a filesystem
    // mounted over the path later would leave us writing happily to an orphan. One lstat per
    // interval catches both; on a mismatch we reopen, which reports the real state.
    if let Some(f) = file.as_ref() {
        let same = match (std::fs::symlink_metadata(path), f.metadata()) {
            (Ok(p), Ok(m)) => p.dev() == m.dev() && p.ino() == m.ino(),
            _ => false,
        };
        if !same {
            debug!(path = %path.display(), "Probe file changed under us; reopening.");
            *file = None;
        }
    }
    if file.is_none() {
        let f = open(path, size)?;
        if let Ok(m) = f.metadata() {
            *ours = Some((m.dev(), m.ino()));
        }
        *file = Some(f);
    }
    match file.as_ref() {
        Some(f) => write(f, buf).map_err(|source| ProbeError::Write {
            path: path.to_path_buf(),
            source,
        }),
        None => Ok(()), // unreachable: opened above
    }
}

/// Opens (creating, mode 0600) the probe file for synchronous writes, refusing anything that
/// is not a plain file of ours, and trims a leftover larger file (an earlier, bigger `size`).
fn open(path: &Path, size: u64) -> Result<File, ProbeError> {
    let err = |source| ProbeError::Open {
        path: path.to_path_buf(),
        source,
    };
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .mode(0o600)
        // O_NONBLOCK only so that a FIFO planted under our name fails instead of blocking the
        // open forever; it is cleared below before any write.
        .custom_flags(libc::O_DSYNC | libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(err)?;
    let m = f.metadata().map_err(err)?;
    if !m.is_file() || m.nlink() != 1 {
        return Err(ProbeError::NotOurs {
            path: path.to_path_buf(),
        });
    }
    let fd = f.as_raw_fd();
    // SAFETY: `fd` is a valid open descriptor owned by `f` for the duration of both calls.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    if m.len() > size {
        f.set_len(size).map_err(err)?;
    }
    if m.mode() & 0o7777 != 0o600 {
        // An adopted leftover (or a file someone else made): our mode, best effort; the
        // content is random bytes, so a failure here is not worth failing the probe for.
        use std::os::unix::fs::PermissionsExt;
        if let Err(e) = f.set_permissions(std::fs::Permissions::from_mode(0o600)) {
            debug!(file = %path.display(), error = %e, "Cannot chmod the probe file to 0600.");
        }
    }
    Ok(f)
}

/// Removes the probe file if it is still the one we opened (a successor probe on the same
/// path, after a reload, may have created a new one).
fn remove_own(path: &Path, ours: Option<(u64, u64)>, label: &str) {
    let Some((dev, ino)) = ours else {
        return;
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.dev() == dev && m.ino() == ino => {
            if let Err(e) = std::fs::remove_file(path) {
                if e.kind() != io::ErrorKind::NotFound {
                    warn!(path = %label, file = %path.display(), error = %e, "Cannot remove the probe file.");
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    fn cfg(path: &Path, interval_ms: u64) -> ProbeConfig {
        ProbeConfig {
            path: path.to_path_buf(),
            size: 64 * 1024,
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_secs(5),
        }
    }

    fn failures(s: &ProbeSnapshot, reason: &str) -> u64 {
        s.failures
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |&(_, n)| n)
    }

    /// Polls `f` every 10 ms until it holds, failing the test after `secs`.
    fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn probes_can_be_shared_with_scrape_handlers() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Probes>();
    }

    #[test]
    fn defaults() {
        let c = ProbeConfig::default();
        assert_eq!(c.size, 1 << 20);
        assert_eq!(c.interval, Duration::from_secs(30));
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert!(c.path.as_os_str().is_empty());
    }

    #[test]
    fn errno_to_reason() {
        let r = |n| reason(&io::Error::from_raw_os_error(n));
        assert_eq!(r(libc::ENOSPC), "enospc");
        assert_eq!(r(libc::EDQUOT), "enospc");
        assert_eq!(r(libc::EIO), "eio");
        assert_eq!(r(libc::EACCES), "permission");
        assert_eq!(r(libc::EPERM), "permission");
        assert_eq!(r(libc::EROFS), "readonly");
        assert_eq!(r(libc::ENOENT), "notfound");
        assert_eq!(r(libc::ELOOP), "other");
        assert_eq!(r(libc::EINVAL), "other");
        assert_eq!(reason(&io::Error::other("no errno")), "other");
        let not_ours = ProbeError::NotOurs {
            path: PathBuf::from("/x"),
        };
        assert_eq!(not_ours.reason(), "other");
        for r in REASONS {
            assert_eq!(REASONS[reason_index(r)], r);
        }
    }

    #[test]
    fn validate_missing_file_and_relative() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = validate(&missing).unwrap_err();
        assert!(e.contains("does not exist") && e.contains("nope"), "{e}");

        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let e = validate(&file).unwrap_err();
        assert!(
            e.contains("not a directory") && e.contains(&*file.to_string_lossy()),
            "{e}"
        );

        let e = validate(Path::new("relative/dir")).unwrap_err();
        assert!(e.contains("absolute"), "{e}");

        validate(dir.path()).unwrap();
    }

    #[test]
    fn validate_unwritable_dir() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ro = dir.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            // Root bypasses mode bits (CAP_DAC_OVERRIDE), for access(2) and for the probe's own
            // open alike: the directory really is writable for us, so validate must agree.
            eprintln!("validate_unwritable_dir: running as root, mode bits do not apply; checking that validate agrees with what root can do");
            validate(&ro).unwrap();
        } else {
            let e = validate(&ro).unwrap_err();
            assert!(e.contains("not writable") && e.contains("ro"), "{e}");
        }
    }

    /// A read-only tmpfs mounted over a temp dir; unmounted on drop.
    struct RoMount(std::ffi::CString);

    impl RoMount {
        fn new(at: &Path) -> Option<RoMount> {
            let c = std::ffi::CString::new(at.as_os_str().as_bytes()).ok()?;
            let src = c"tmpfs";
            // SAFETY: all pointers are valid NUL-terminated strings; data may be NULL.
            let rc = unsafe {
                libc::mount(
                    src.as_ptr(),
                    c.as_ptr(),
                    src.as_ptr(),
                    libc::MS_RDONLY,
                    std::ptr::null(),
                )
            };
            if rc == 0 {
                Some(RoMount(c))
            } else {
                eprintln!(
                    "cannot mount a read-only tmpfs: {}",
                    io::Error::last_os_error()
                );
                None
            }
        }
    }

    impl Drop for RoMount {
        fn drop(&mut self) {
            // SAFETY: a valid NUL-terminated path.
            unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
        }
    }

    #[test]
    fn validate_read_only_filesystem() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!(
                "SKIPPED validate_read_only_filesystem: needs root to mount a read-only tmpfs"
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let Some(_m) = RoMount::new(dir.path()) else {
            eprintln!("SKIPPED validate_read_only_filesystem: mount refused (no CAP_SYS_ADMIN in this container?)");
            return;
        };
        let e = validate(dir.path()).unwrap_err();
        assert!(
            e.contains("read-only") && e.contains(&*dir.path().to_string_lossy()),
            "{e}"
        );
        // And the probe classifies the same directory's failures as `readonly`.
        let p = Probes::spawn(vec![cfg(dir.path(), 20)]).unwrap();
        wait_until(10, "readonly failure", || {
            failures(&p.snapshot()[0], "readonly") >= 1
        });
        assert_eq!(p.snapshot()[0].count, 0, "a failed open is not a write");
        p.stop();
    }

    #[test]
    fn probe_writes_a_fixed_size_file_and_removes_it_on_stop() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(FILE_NAME);
        // A leftover from a run with a bigger size is trimmed, not kept.
        std::fs::write(&file, vec![7u8; 200 * 1024]).unwrap();
        let c = cfg(dir.path(), 50);
        let p = Probes::spawn(vec![c.clone()]).unwrap();
        wait_until(10, "3 writes", || p.snapshot()[0].count >= 3);
        for _ in 0..5 {
            assert_eq!(std::fs::metadata(&file).unwrap().len(), c.size);
            thread::sleep(Duration::from_millis(30));
        }
        let s = &p.snapshot()[0];
        assert_eq!(s.path, dir.path().to_string_lossy());
        assert!(s.sum > 0.0);
        assert!(s.last_duration.is_some() && s.last_success.is_some());
        assert_eq!(s.buckets.len(), BUCKETS.len() + 1);
        assert_eq!(s.buckets.last().unwrap().0, f64::INFINITY);
        assert_eq!(
            s.buckets.iter().map(|(_, n)| n).sum::<u64>(),
            s.count,
            "per-bucket counts add up to the writes"
        );
        assert!(s.failures.iter().all(|&(_, n)| n == 0), "{:?}", s.failures);
        assert_eq!(
            s.failures.iter().map(|(r, _)| *r).collect::<Vec<_>>(),
            REASONS.to_vec()
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let t = Instant::now();
        p.stop();
        assert!(t.elapsed() < Duration::from_secs(1), "stop is quick");
        assert!(!file.exists(), "probe file removed on stop");
    }

    #[test]
    fn reconcile_keeps_unchanged_probes_and_drops_removed_ones() {
        let (a, b, c) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let mut p = Probes::spawn(vec![cfg(a.path(), 30), cfg(b.path(), 30)]).unwrap();
        wait_until(10, "2 writes each", || {
            p.snapshot().iter().all(|s| s.count >= 2)
        });
        let before = p.snapshot()[0].count;

        // Same paths twice: rejected, nothing changes.
        let dup = vec![cfg(a.path(), 30), cfg(a.path(), 40)];
        assert!(p.reconcile(dup).is_err());
        assert_eq!(p.snapshot().len(), 2);

        let mut c_changed = cfg(c.path(), 30);
        c_changed.timeout = Duration::from_secs(9);
        p.reconcile(vec![cfg(c.path(), 30), cfg(a.path(), 30)])
            .unwrap();
        let s = p.snapshot();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].path, c.path().to_string_lossy(), "config order");
        assert_eq!(s[1].path, a.path().to_string_lossy());
        assert!(s[1].count >= before, "unchanged probe kept its counters");
        wait_until(10, "removed probe's file gone", || {
            !b.path().join(FILE_NAME).exists()
        });
        let b_writes = std::fs::read_dir(b.path()).unwrap().count();
        assert_eq!(b_writes, 0);

        // A changed setting on an existing path updates it in place: counters kept.
        let kept = p.snapshot()[1].count;
        p.reconcile(vec![c_changed, cfg(a.path(), 25)]).unwrap();
        assert!(p.snapshot()[1].count >= kept);
        wait_until(10, "new probe writes", || p.snapshot()[0].count >= 1);
        p.stop();
        assert!(!a.path().join(FILE_NAME).exists());
        assert!(!c.path().join(FILE_NAME).exists());
    }

    #[test]
    fn directory_removed_while_running_counts_notfound() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("vanishing");
        std::fs::create_dir(&sub).unwrap();
        let p = Probes::spawn(vec![cfg(&sub, 20)]).unwrap();
        wait_until(10, "first write", || p.snapshot()[0].count >= 1);
        std::fs::remove_dir_all(&sub).unwrap();
        wait_until(10, "notfound failures", || {
            failures(&p.snapshot()[0], "notfound") >= 2
        });
        // It recovers when the directory comes back.
        std::fs::create_dir(&sub).unwrap();
        let n = p.snapshot()[0].count;
        wait_until(10, "writes again", || p.snapshot()[0].count > n);
        p.stop();
        assert!(!sub.join(FILE_NAME).exists());
    }

    #[test]
    fn symlink_or_fifo_under_our_name_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join(FILE_NAME)).unwrap();
        let fifo_dir = tempfile::tempdir().unwrap();
        let fifo =
            std::ffi::CString::new(fifo_dir.path().join(FILE_NAME).as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);

        let p = Probes::spawn(vec![cfg(dir.path(), 20), cfg(fifo_dir.path(), 20)]).unwrap();
        wait_until(10, "other failures on both", || {
            p.snapshot().iter().all(|s| failures(s, "other") >= 1)
        });
        p.stop();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(
            dir.path().join(FILE_NAME).symlink_metadata().is_ok(),
            "not ours: left alone"
        );
        assert!(
            fifo_dir.path().join(FILE_NAME).exists(),
            "not ours: left alone"
        );
    }

    /// A writer that sleeps `ms` on every write, counting calls.
    fn slow_writer(ms: u64, calls: Arc<AtomicUsize>) -> MakeWriter {
        Box::new(move || {
            let calls = Arc::clone(&calls);
            Box::new(move |_f: &File, _b: &[u8]| {
                calls.fetch_add(1, Ordering::SeqCst);
                thread::sleep(Duration::from_millis(ms));
                Ok(())
            }) as WriteFn
        })
    }

    #[test]
    fn hung_write_counts_one_timeout_while_in_flight_and_is_observed_when_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        // The write sleeps 300 ms and then also waits for the test's go, so the "still in
        // flight" checks below cannot race the write's return on a loaded CI machine.
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let go_rx = Arc::new(Mutex::new(go_rx));
        let calls2 = Arc::clone(&calls);
        let make: MakeWriter = Box::new(move || {
            let (calls, go) = (Arc::clone(&calls2), Arc::clone(&go_rx));
            Box::new(move |_f: &File, _b: &[u8]| {
                calls.fetch_add(1, Ordering::SeqCst);
                thread::sleep(Duration::from_millis(300));
                let _ = go.lock().unwrap().recv();
                Ok(())
            }) as WriteFn
        });
        let c = ProbeConfig {
            path: dir.path().to_path_buf(),
            size: 4096,
            interval: Duration::from_secs(3600), // exactly one write
            timeout: Duration::from_millis(100),
        };
        let p = Probes::spawn_with(vec![c], make).unwrap();
        wait_until(5, "write started", || {
            p.snapshot()[0].in_flight_since.is_some()
        });
        let started = p.snapshot()[0].in_flight_since.unwrap();
        let early = p.snapshot();
        if started.elapsed() < Duration::from_millis(100) {
            assert_eq!(failures(&early[0], "timeout"), 0, "not yet");
        }
        thread::sleep(Duration::from_millis(180).saturating_sub(started.elapsed()));
        for _ in 0..3 {
            let s = &p.snapshot()[0];
            assert_eq!(s.in_flight_since, Some(started), "still hung");
            assert_eq!(failures(s, "timeout"), 1, "counted once, while in flight");
            assert_eq!(s.count, 0);
            thread::sleep(Duration::from_millis(20));
        }
        go_tx.send(()).unwrap();
        wait_until(5, "write returned", || p.snapshot()[0].count == 1);
        let s = &p.snapshot()[0];
        assert!(s.in_flight_since.is_none());
        assert_eq!(failures(s, "timeout"), 1, "not counted again on return");
        assert!(s.sum >= 0.3 && s.sum < 1.0, "sum {}", s.sum);
        let le = |b: f64| s.buckets.iter().find(|(le, _)| *le == b).unwrap().1;
        assert_eq!(le(0.25), 0);
        assert_eq!(le(0.5), 1);
        assert_eq!(le(1.0), 0, "per-bucket counts, not cumulative");
        assert!(s.last_success.is_some());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        p.stop();
    }

    #[test]
    fn slow_write_nobody_watched_still_counts_its_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let c = ProbeConfig {
            path: dir.path().to_path_buf(),
            size: 4096,
            interval: Duration::from_secs(3600),
            timeout: Duration::from_millis(50),
        };
        let p = Probes::spawn_with(vec![c], slow_writer(150, Arc::clone(&calls))).unwrap();
        // No snapshot during the write: watch the raw state, then look once.
        wait_until(5, "write returned", || {
            p.probes[0].shared.lock().stats.count == 1
        });
        let s = &p.snapshot()[0];
        assert_eq!(s.count, 1);
        assert_eq!(failures(s, "timeout"), 1);
        p.stop();
    }

    #[test]
    fn stop_does_not_wait_for_a_stuck_write() {
        let dir = tempfile::tempdir().unwrap();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        let make: MakeWriter = Box::new(move || {
            let rx = Arc::clone(&release_rx);
            Box::new(move |f: &File, b: &[u8]| {
                // Stuck "in the kernel" until the test lets go.
                let _ = rx.lock().unwrap().recv();
                f.write_all_at(b, 0)
            }) as WriteFn
        });
        let p = Probes::spawn_with(vec![cfg(dir.path(), 20)], make).unwrap();
        wait_until(5, "write stuck", || {
            p.snapshot()[0].in_flight_since.is_some()
        });
        let file = dir.path().join(FILE_NAME);
        assert!(file.exists(), "opened before the write");
        let t = Instant::now();
        p.stop();
        assert!(
            t.elapsed() < STOP_GRACE + Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
        // The write returns later; the abandoned thread cleans up after itself.
        release_tx.send(()).unwrap();
        wait_until(5, "file removed by the left-behind thread", || {
            !file.exists()
        });
    }

    #[test]
    fn invalid_configs_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path(), 20);
        c.size = 0;
        assert!(Probes::spawn(vec![c]).is_err());
        let mut c = cfg(dir.path(), 20);
        c.interval = Duration::ZERO;
        assert!(Probes::spawn(vec![c]).is_err());
        assert!(Probes::spawn(Vec::new()).unwrap().snapshot().is_empty());
    }

    #[test]
    fn fill_is_not_zero_and_changes_every_block_per_write() {
        let mut b = Vec::new();
        fill(&mut b, 10_000, 1);
        assert_eq!(b.len(), 10_000);
        assert!(b.iter().filter(|&&x| x == 0).count() < 200);
        let first = b.clone();
        fill(&mut b, 10_000, 2);
        for (x, y) in first.chunks(4096).zip(b.chunks(4096)) {
            assert_ne!(x, y);
        }
        fill(&mut b, 3, 3);
        assert_eq!(b.len(), 3);
    }

    #[test]
    fn next_due_skips_overrun_slots() {
        let t = Instant::now();
        let i = Duration::from_secs(30);
        let s = Duration::from_secs(1);
        assert_eq!(next_due(None, i, t), t);
        assert_eq!(next_due(Some((t, t + s)), i, t), t + i);
        assert_eq!(next_due(Some((t, t + 40 * s)), i, t), t + 40 * s + i);
    }
}
