//! The sync-write probe: the seed incident's check, `dd if=/dev/zero of=/root/50MB bs=1M
//! count=10 oflag=sync` ("if this does not complete in < 5 seconds, something is terribly
//! hosed"), which hung, turned into metrics.
//!
//! Every `interval`, per configured directory, `size` bytes are rewritten at offset 0 of
//! `<dir>/.stallwatch-probe` with `O_DSYNC`, and timed. PSI and disk queues say the node *is*
//! slow; this says what an application's `fsync` costs *right now* on the filesystem that
//! matters, end to end through the page cache, the filesystem journal and the (cloud) block
//! device.
//!
//! The parts:
//! - [`sampler`]: each probe is a source of the periodic driver ([`crate::sample::driver`]),
//!   keyed by its directory, with its `timeout` as the stuck threshold; it reports
//!   `stallwatch_source_*{source="probe:<dir>"}` like every source, plus the probe's latency
//!   histogram, in-flight age, failures by reason and last success.
//! - [`writer`]: every write happens in a child process forked for it, so that a write stuck
//!   in D never keeps the agent alive (its reader thread waits on a pipe, interruptibly).
//! - [`attempt`]: what that process does (async-signal-safe), and the file-safety rules.
//! - [`validate`]: the config's check of a probe directory.
//!
//! Rewriting the same bytes of one file: the file never grows, and after the first write no
//! block allocation or size update is part of the measurement. Stopping never waits for a hung
//! write: its writer process removes the file itself if its write ever returns.

mod attempt;
mod sampler;
mod validate;
mod writer;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tracing::warn;

use crate::sample::driver::Driver;
use crate::sample::status::SourceStatus;

pub use sampler::source_name;
pub use validate::validate;

use sampler::ProbeSampler;
use writer::{Hooks, Writers};

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

/// How long [`Probes::stop`] waits, in total, for the probes' writers to finish and remove
/// their files before leaving the rest behind (a write stuck in the kernel cannot be waited
/// for; its writer process cleans up when the write returns).
const STOP_GRACE: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, PartialEq)]
pub struct ProbeConfig {
    /// A directory on the filesystem to probe; the probe owns the file `<path>/.stallwatch-probe`
    /// in it.
    pub path: PathBuf,
    /// Bytes per write. Default 1 MiB (the incident's `bs=1M`).
    pub size: u64,
    /// Time between the starts of two writes. Default 30 s.
    pub interval: Duration,
    /// A write still running after this long counts one `timeout` failure and marks the
    /// probe's source stuck. Default 5 s.
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
    /// The probe's health as a source (`source` label [`source_name`]): stuck while a write
    /// is in flight past `timeout`; its age is that of the last successful write.
    pub status: SourceStatus,
}

/// The running probes. Dropping it stops the probes without waiting for their files to go;
/// [`Probes::stop`] also waits briefly for that.
pub struct Probes {
    config: Arc<ArcSwap<Vec<ProbeConfig>>>,
    out: Arc<ArcSwap<Vec<ProbeSnapshot>>>,
    writers: Arc<Writers>,
    hooks: Hooks,
    /// Started with the first probe.
    driver: Option<Driver>,
}

impl Probes {
    /// Starts the probes (one sampler thread, named "sw-probe", and a reader thread per
    /// probe).
    ///
    /// Fails (starting nothing) on a duplicate path, a zero `size` or `interval`, or when the
    /// sampler thread cannot be spawned.
    pub fn spawn(configs: Vec<ProbeConfig>) -> io::Result<Probes> {
        Self::spawn_with(configs, Hooks::default())
    }

    /// No probes (what a config without `[[probe]]` runs).
    pub fn empty() -> Probes {
        Probes::with_hooks(Hooks::default())
    }

    fn with_hooks(hooks: Hooks) -> Probes {
        Probes {
            config: Arc::new(ArcSwap::from_pointee(Vec::new())),
            out: Arc::new(ArcSwap::from_pointee(Vec::new())),
            writers: Arc::new(Writers::default()),
            hooks,
            driver: None,
        }
    }

    fn spawn_with(configs: Vec<ProbeConfig>, hooks: Hooks) -> io::Result<Probes> {
        let mut p = Probes::with_hooks(hooks);
        p.reconcile(configs)?;
        Ok(p)
    }

    /// Current state of every probe, in config order, as of the sampler's last tick (at most a
    /// second old). Never blocks on I/O.
    pub fn snapshot(&self) -> Vec<ProbeSnapshot> {
        self.out.load().as_ref().clone()
    }

    /// Applies a new probe list (config reload); it takes effect at the sampler's next tick.
    /// Probes are keyed by path: an unchanged one keeps running with its counters; one whose
    /// size, interval or timeout changed is updated in place (same reader and counters, so a
    /// reload during a hang neither hides the stuck write nor starts a second writer on the
    /// same path); removed ones stop (each removes its file, at once or when its write
    /// returns); new ones start.
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
        if self.driver.is_none() && !configs.is_empty() {
            let (config, writers, hooks) = (
                Arc::clone(&self.config),
                Arc::clone(&self.writers),
                self.hooks.clone(),
            );
            config.store(Arc::new(configs));
            let started = Driver::spawn(
                "probe",
                move || ProbeSampler::new(Arc::clone(&config), Arc::clone(&writers), hooks.clone()),
                Arc::clone(&self.config),
                Arc::clone(&self.out),
                None,
            );
            match started {
                Ok(d) => self.driver = Some(d),
                Err(e) => {
                    self.config.store(Arc::new(Vec::new()));
                    return Err(e);
                }
            }
            return Ok(());
        }
        self.config.store(Arc::new(configs));
        Ok(())
    }

    /// Stops all probes and removes their files. Never hangs on a probe whose write is stuck
    /// in the kernel: it waits at most [`STOP_GRACE`] in total, then leaves such a writer
    /// behind (its process removes the file if the write ever returns; the agent's exit does
    /// not wait for it).
    pub fn stop(mut self) {
        let Some(d) = self.driver.take() else {
            return;
        };
        let deadline = Instant::now() + STOP_GRACE;
        d.stop();
        let left = self.writers.wait_idle(deadline);
        if left > 0 {
            warn!(
                probes = left,
                "Probe write still in flight at stop; its writer process finishes on its own and removes its file."
            );
        }
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        if let Some(d) = self.driver.take() {
            d.stop();
        }
    }
}

#[cfg(test)]
mod tests;
