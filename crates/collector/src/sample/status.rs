//! Health of one source (a kernel file or a walk), shared by every sampler and exported as
//! `stallwatch_source_*` and `stallwatch_snapshot_age_seconds`.

use std::time::{Duration, Instant};

use crate::error::ErrorKind;
use crate::sample::worker::Outcome;

/// Health of one source, as of the snapshot.
#[derive(Debug, Clone)]
pub struct SourceStatus {
    /// Label value, e.g. `pressure_io`.
    pub name: &'static str,
    /// Completion time of the last good read (a value or "file absent"; errors do not count).
    pub last_success: Option<Instant>,
    /// When the outstanding read started; `None` when idle.
    pub in_flight_since: Option<Instant>,
    /// Wall time of the last completed read.
    pub last_duration: Option<Duration>,
    /// Errors since start, by kind.
    pub errors: [(ErrorKind, u64); 3],
    /// The file does not exist on this host (feature off): its metrics are absent.
    pub missing: bool,
    /// Deadline after which an outstanding read counts as stuck.
    pub timeout: Duration,
    /// CPU time the source's worker thread spent in completed reads (RUSAGE_THREAD).
    pub cpu: Duration,
    /// Completed reads (successful or not).
    pub reads: u64,
}

impl Default for SourceStatus {
    fn default() -> Self {
        SourceStatus::new("unnamed")
    }
}

impl SourceStatus {
    pub fn new(name: &'static str) -> Self {
        SourceStatus {
            name,
            last_success: None,
            in_flight_since: None,
            last_duration: None,
            errors: [
                (ErrorKind::Parse, 0),
                (ErrorKind::Permission, 0),
                (ErrorKind::Io, 0),
            ],
            missing: false,
            timeout: Duration::from_secs(2),
            cpu: Duration::ZERO,
            reads: 0,
        }
    }

    /// Accounts one completed read (its wall and CPU time), whatever its result.
    pub fn record<R>(&mut self, o: &Outcome<R>) {
        self.last_duration = Some(o.finished.saturating_duration_since(o.started));
        self.cpu += o.cpu;
        self.reads += 1;
    }

    pub fn count_error(&mut self, kind: ErrorKind) {
        for (k, n) in &mut self.errors {
            if *k == kind {
                *n += 1;
            }
        }
    }

    /// A read has been outstanding for longer than the deadline.
    pub fn stuck(&self, now: Instant) -> bool {
        self.in_flight_since
            .is_some_and(|t| now.saturating_duration_since(t) > self.timeout)
    }

    /// Logs a warning when a read is stuck, at most once a minute (`last` remembers when).
    pub fn warn_if_stuck(&self, now: Instant, last: &mut Option<Instant>) {
        if self.stuck(now)
            && last.is_none_or(|t| now.saturating_duration_since(t) > Duration::from_secs(60))
        {
            tracing::warn!(source = self.name, timeout = ?self.timeout, "Source read is stuck; keeping its last value.");
            *last = Some(now);
        }
    }

    /// Age of the last good reading (grows while the source is stuck or failing).
    pub fn age(&self, now: Instant) -> Option<Duration> {
        self.last_success.map(|t| now.saturating_duration_since(t))
    }
}
