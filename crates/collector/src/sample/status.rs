//! Health of one source (a kernel file, a walk, a probe write, a cloud call), kept by the
//! periodic driver ([`crate::sample::driver`]) for every source alike and exported as
//! `stallwatch_source_*` and `stallwatch_snapshot_age_seconds`.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use crate::error::{ErrorCounts, ErrorKind};

/// Health of one source, as of the snapshot.
#[derive(Debug, Clone)]
pub struct SourceStatus {
    /// Label value, e.g. `pressure_io`, `threads`, `probe_0`.
    pub name: Cow<'static, str>,
    /// Completion time of the last good read (a value or "file absent"; errors do not count).
    pub last_success: Option<Instant>,
    /// When the outstanding read started; `None` when idle.
    pub in_flight_since: Option<Instant>,
    /// Wall time of the last completed read.
    pub last_duration: Option<Duration>,
    /// Errors since start, by kind (a panic of the reader counts as `panic`).
    pub errors: ErrorCounts,
    /// The file does not exist on this host (feature off): its metrics are absent.
    pub missing: bool,
    /// Deadline after which an outstanding read counts as stuck.
    pub timeout: Duration,
    /// CPU time the source's worker thread spent in completed reads (RUSAGE_THREAD).
    pub cpu: Duration,
    /// Completed reads (successful or not).
    pub reads: u64,
    /// The cadence in force: the wanted interval, stretched by the CPU budget.
    pub interval: Option<Duration>,
    /// When the reader or its sampler last panicked (and was restarted).
    pub last_panic: Option<Instant>,
}

impl Default for SourceStatus {
    fn default() -> Self {
        SourceStatus::new("unnamed")
    }
}

impl SourceStatus {
    pub fn new(name: impl Into<Cow<'static, str>>) -> Self {
        SourceStatus {
            name: name.into(),
            last_success: None,
            in_flight_since: None,
            last_duration: None,
            errors: ErrorCounts::default(),
            missing: false,
            timeout: Duration::from_secs(2),
            cpu: Duration::ZERO,
            reads: 0,
            interval: None,
            last_panic: None,
        }
    }

    pub fn count_error(&mut self, kind: ErrorKind) {
        self.errors.add(kind);
    }

    /// A read has been outstanding for longer than the deadline.
    pub fn stuck(&self, now: Instant) -> bool {
        self.in_flight_since
            .is_some_and(|t| now.saturating_duration_since(t) > self.timeout)
    }

    /// Age of the last good reading (grows while the source is stuck or failing).
    pub fn age(&self, now: Instant) -> Option<Duration> {
        self.last_success.map(|t| now.saturating_duration_since(t))
    }
}
