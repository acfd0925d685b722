//! The probes as a [`driver::Sampler`]: one source per configured directory, keyed by the
//! directory, so the periodic driver gives every probe what it gives every source (a reader
//! thread, cadence, `timeout` as the stuck threshold, `stallwatch_source_*{source}`), and this
//! sampler turns the attempts into the probe's own numbers.
//!
//! Keyed by directory, not by the whole config: a reload that changes a probe's size, interval
//! or timeout keeps its reader, its counters and its one write in flight (a new key would start
//! a second writer next to a possibly hung one). The cadence and timeout are read from the
//! config at every tick and the size at every write.
//!
//! The `timeout` failure is counted once per write, as soon as the write has run longer than
//! `timeout` while still in flight (seen here at each publish), or when a slow write returns
//! before any publish saw it past its timeout.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tracing::{info, warn};

use super::attempt::Outcome;
use super::writer::{Attempt, Hooks, Writer, Writers};
use super::{ProbeConfig, ProbeSnapshot, BUCKETS, REASONS};
use crate::error::ErrorKind;
use crate::sample::driver::{self, Limiter, Schedule, SourceSpec};
use crate::sample::status::SourceStatus;

/// The `source` label of the probe on `dir`: stable across reloads and reorders of `[[probe]]`
/// (so its `source_*` counters stay its own), readable in an alert, and bounded by the config
/// like the probe metrics' own `path` label.
pub fn source_name(dir: &Path) -> String {
    format!("probe:{}", dir.to_string_lossy())
}

/// One probe's numbers.
#[derive(Debug)]
struct Stats {
    /// Writes per bucket: the first [`BUCKETS`] bound a write fits under, else the last
    /// (`+Inf`) slot.
    buckets: [u64; BUCKETS.len() + 1],
    sum: f64,
    count: u64,
    failures: [u64; REASONS.len()],
    last_duration: Option<Duration>,
    last_success: Option<SystemTime>,
    /// Completion of the last successful write: the source's `last_success` (a failed write
    /// is an error of the source, not a good reading).
    last_ok: Option<Instant>,
    /// The write in flight as the last publish saw it, and whether its timeout was counted.
    in_flight: Option<Instant>,
    timed_out: bool,
    /// After a write that overran its interval: no new write before this.
    rest_until: Option<Instant>,
    /// The last attempt failed (to log the recovery once).
    failing: bool,
    fail_log: [Limiter; REASONS.len()],
}

impl Stats {
    fn new() -> Self {
        Stats {
            buckets: [0; BUCKETS.len() + 1],
            sum: 0.0,
            count: 0,
            failures: [0; REASONS.len()],
            last_duration: None,
            last_success: None,
            last_ok: None,
            in_flight: None,
            timed_out: false,
            rest_until: None,
            failing: false,
            fail_log: std::array::from_fn(|_| Limiter::per_minute()),
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

    /// Counts one failure; `Some(held back)` when it may be logged now.
    fn fail(&mut self, reason: &str, now: Instant) -> Option<u64> {
        let i = REASONS
            .iter()
            .position(|&x| x == reason)
            .unwrap_or(REASONS.len() - 1);
        self.failures[i] += 1;
        self.fail_log[i].allow(now)
    }
}

pub(super) struct ProbeSampler {
    /// The same config the driver reads: readers look up their probe's size in it.
    config: Arc<ArcSwap<Vec<ProbeConfig>>>,
    writers: Arc<Writers>,
    hooks: Hooks,
    stats: HashMap<PathBuf, Stats>,
    /// The probes of the config in force, in config order, with their source names.
    order: Vec<(ProbeConfig, Cow<'static, str>)>,
}

impl ProbeSampler {
    pub fn new(
        config: Arc<ArcSwap<Vec<ProbeConfig>>>,
        writers: Arc<Writers>,
        hooks: Hooks,
    ) -> Self {
        ProbeSampler {
            config,
            writers,
            hooks,
            stats: HashMap::new(),
            order: Vec::new(),
        }
    }

    fn config_of<'a>(cfg: &'a [ProbeConfig], dir: &Path) -> Option<&'a ProbeConfig> {
        cfg.iter().find(|c| c.path == dir)
    }

    /// The reader of one probe: a [`Writer`] that writes the size configured now.
    fn reader(&self, c: &ProbeConfig) -> driver::MakeRead<Attempt> {
        let (config, writers, hooks) = (
            Arc::clone(&self.config),
            Arc::clone(&self.writers),
            self.hooks.clone(),
        );
        let (dir, first_size) = (c.path.clone(), c.size);
        driver::reader(move || {
            let mut writer = Writer::new(&dir, Arc::clone(&writers), &hooks);
            let (config, dir) = (Arc::clone(&config), dir.clone());
            let mut size = first_size;
            move || {
                // A probe just removed by a reload keeps the size it had.
                if let Some(c) = Self::config_of(&config.load(), &dir) {
                    size = c.size;
                }
                // Checked in `Probes::reconcile`: a size that does not fit cannot get here.
                let size = usize::try_from(size).unwrap_or(0);
                Ok(Some(writer.write(size)))
            }
        })
    }
}

impl driver::Sampler for ProbeSampler {
    type Key = PathBuf;
    type Reading = Attempt;
    type Config = Vec<ProbeConfig>;
    type Snapshot = Vec<ProbeSnapshot>;

    fn sources(&mut self, cfg: &Vec<ProbeConfig>) -> Vec<SourceSpec<PathBuf, Attempt>> {
        for (old, _) in &self.order {
            match Self::config_of(cfg, &old.path) {
                None => {
                    info!(path = %old.path.display(), "Probe removed from the config; stopping it.")
                }
                Some(new) if new != old => info!(path = %old.path.display(),
                    "Probe settings changed; applying them to the running probe."),
                Some(_) => {}
            }
        }
        self.stats
            .retain(|dir, _| Self::config_of(cfg, dir).is_some());
        self.order = cfg
            .iter()
            .map(|c| (c.clone(), Cow::Owned(source_name(&c.path))))
            .collect();
        let specs = self
            .order
            .iter()
            .map(|(c, name)| SourceSpec {
                key: c.path.clone(),
                name: name.clone(),
                make: self.reader(c),
                lane: None,
            })
            .collect();
        for (c, _) in &self.order {
            self.stats.entry(c.path.clone()).or_insert_with(Stats::new);
        }
        specs
    }

    /// Often enough to see a write cross its timeout promptly and to start writes on time; at
    /// most a second.
    fn tick(&self, cfg: &Vec<ProbeConfig>) -> Duration {
        cfg.iter()
            .map(|c| c.interval.min(c.timeout))
            .min()
            .unwrap_or(Duration::from_secs(1))
            .clamp(Duration::from_millis(10), Duration::from_secs(1))
    }

    /// A healthy write (1–20 ms) is applied in the tick that started it; a slow one on a
    /// later tick, while the tick goes on publishing its age.
    fn wait(&self, cfg: &Vec<ProbeConfig>) -> Duration {
        self.tick(cfg).min(Duration::from_millis(100))
    }

    /// Fixed rate from the last start; a write that overran its slot is followed by a full
    /// interval of rest rather than an immediate retry, so the probe does not add a
    /// back-to-back stream of sync writes to a disk that is already struggling.
    fn schedule(
        &mut self,
        dir: &PathBuf,
        cfg: &Vec<ProbeConfig>,
        now: Instant,
    ) -> Option<Schedule> {
        let c = Self::config_of(cfg, dir)?;
        let st = self.stats.get(dir)?;
        if st.rest_until.is_some_and(|t| now < t) {
            return None;
        }
        Some(Schedule {
            every: c.interval,
            // The write is I/O; its CPU (mostly the fork) is tiny and must not delay it.
            max_cpu: 0.0,
            timeout: c.timeout,
        })
    }

    fn apply(
        &mut self,
        dir: &PathBuf,
        at: Instant,
        attempt: Option<Attempt>,
        status: &mut SourceStatus,
        cfg: &Vec<ProbeConfig>,
    ) {
        let (Some(a), Some(c), Some(st)) =
            (attempt, Self::config_of(cfg, dir), self.stats.get_mut(dir))
        else {
            return;
        };
        let label = dir.display();
        // A slow write that no publish saw past its timeout still counts it, once.
        let counted = st.in_flight.is_some() && st.timed_out;
        if !counted && a.took > c.timeout {
            if let Some(held) = st.fail("timeout", at) {
                warn!(path = %label, took = ?a.took, timeout = ?c.timeout, held,
                    "Probe write took longer than its timeout.");
            }
        }
        st.in_flight = None;
        st.timed_out = false;
        st.rest_until = (a.took > c.interval).then(|| at + c.interval);
        if a.outcome.wrote() {
            st.observe(a.took);
        }
        match a.outcome.reason() {
            None => {
                st.last_success = Some(SystemTime::now());
                st.last_ok = Some(at);
                if std::mem::replace(&mut st.failing, false) {
                    info!(path = %label, took = ?a.took, "Probe writes succeed again.");
                }
            }
            Some(reason) => {
                st.failing = true;
                // The driver took the completed read for a good one; for a probe, a failed
                // write is an error of the source, and its age keeps growing.
                status.last_success = st.last_ok;
                status.count_error(match a.outcome {
                    Outcome::OpenFailed(e) | Outcome::WriteFailed(e)
                        if e == libc::EACCES || e == libc::EPERM =>
                    {
                        ErrorKind::Permission
                    }
                    _ => ErrorKind::Io,
                });
                if let Some(held) = st.fail(reason, at) {
                    warn!(path = %label, reason, error = %a.outcome.describe(), held,
                        "Probe write failed.");
                }
            }
        }
    }

    fn publish(
        &mut self,
        sources: &[SourceStatus],
        now: Instant,
        _: &Vec<ProbeConfig>,
    ) -> Vec<ProbeSnapshot> {
        let mut out = Vec::with_capacity(self.order.len());
        for (c, name) in &self.order {
            let (Some(status), Some(st)) = (
                sources.iter().find(|s| s.name == *name),
                self.stats.get_mut(&c.path),
            ) else {
                continue; // its reader could not be started (logged by the driver)
            };
            if status.in_flight_since != st.in_flight {
                st.in_flight = status.in_flight_since;
                st.timed_out = false;
            }
            // A hang shows while it is happening, not only once the write returns.
            if status.stuck(now) && !st.timed_out {
                st.timed_out = true;
                if let Some(held) = st.fail("timeout", now) {
                    warn!(path = %c.path.display(), timeout = ?c.timeout, held,
                        "Probe write still running after its timeout; the filesystem may be stalled.");
                }
            }
            out.push(ProbeSnapshot {
                path: c.path.to_string_lossy().into_owned(),
                buckets: BUCKETS
                    .iter()
                    .copied()
                    .chain([f64::INFINITY])
                    .zip(st.buckets)
                    .collect(),
                sum: st.sum,
                count: st.count,
                in_flight_since: status.in_flight_since,
                failures: REASONS.iter().copied().zip(st.failures).collect(),
                last_duration: st.last_duration,
                last_success: st.last_success,
                status: status.clone(),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests;
