//! `[verdict]` (the thresholds of "was it I/O?") and `[incident]` (the records), as written and
//! validated. The defaults and the reasoning behind each are in `verdict/config.rs` and the
//! example config.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::bounds::{check, Value};
use super::error::{ConfigError, Locator};
use super::values::{duration, PercentSpec, SizeSpec};
use crate::recorder::incident::IncidentConfig;
use crate::verdict::VerdictConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerdictSection {
    pub io_some: PercentSpec,
    pub io_full: PercentSpec,
    pub cpu_some: PercentSpec,
    pub run_queue_per_cpu: u64,
    pub memory_some: PercentSpec,
    pub memory_full: PercentSpec,
    #[serde(deserialize_with = "duration")]
    pub stall_after: Duration,
    pub utilisation: PercentSpec,
    #[serde(rename = "await", deserialize_with = "duration")]
    pub await_: Duration,
    pub queue: u64,
    pub limit_share: PercentSpec,
    pub writeback_bytes: SizeSpec,
    pub lock_threads: u64,
    #[serde(deserialize_with = "duration")]
    pub lock_after: Duration,
    pub credits_empty: PercentSpec,
    pub enter_ticks: u64,
    #[serde(deserialize_with = "duration")]
    pub clear_after: Duration,
    pub hold_ratio: PercentSpec,
}

impl Default for VerdictSection {
    fn default() -> Self {
        let d = VerdictConfig::default();
        VerdictSection {
            io_some: PercentSpec(d.io_some),
            io_full: PercentSpec(d.io_full),
            cpu_some: PercentSpec(d.cpu_some),
            run_queue_per_cpu: d.run_queue_per_cpu as u64,
            memory_some: PercentSpec(d.memory_some),
            memory_full: PercentSpec(d.memory_full),
            stall_after: d.stall_after,
            utilisation: PercentSpec(d.utilisation),
            await_: d.await_threshold,
            queue: d.queue as u64,
            limit_share: PercentSpec(d.limit_share),
            writeback_bytes: SizeSpec(d.writeback_bytes),
            lock_threads: d.lock_threads,
            lock_after: d.lock_after,
            credits_empty: PercentSpec(d.credits_empty),
            enter_ticks: u64::from(d.enter_ticks),
            clear_after: d.clear_after,
            hold_ratio: PercentSpec(d.hold_ratio),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IncidentSection {
    #[serde(deserialize_with = "duration")]
    pub min_duration: Duration,
    pub keep: u64,
    pub dir: Option<PathBuf>,
    pub max_files: u64,
    pub max_bytes: SizeSpec,
}

impl Default for IncidentSection {
    fn default() -> Self {
        let d = IncidentConfig::default();
        IncidentSection {
            min_duration: d.min_duration,
            keep: d.keep as u64,
            dir: d.dir,
            max_files: d.max_files as u64,
            max_bytes: SizeSpec(d.max_bytes),
        }
    }
}

impl VerdictSection {
    pub fn validate(&self, loc: &Locator<'_>) -> Result<VerdictConfig, ConfigError> {
        for (k, v) in [
            ("io_some", Value::Share(self.io_some.0)),
            ("io_full", Value::Share(self.io_full.0)),
            ("cpu_some", Value::Share(self.cpu_some.0)),
            ("run_queue_per_cpu", Value::Count(self.run_queue_per_cpu)),
            ("memory_some", Value::Share(self.memory_some.0)),
            ("memory_full", Value::Share(self.memory_full.0)),
            ("stall_after", Value::Duration(self.stall_after)),
            ("utilisation", Value::Share(self.utilisation.0)),
            ("await", Value::Duration(self.await_)),
            ("queue", Value::Count(self.queue)),
            ("limit_share", Value::Share(self.limit_share.0)),
            ("writeback_bytes", Value::Size(self.writeback_bytes.0)),
            ("lock_threads", Value::Count(self.lock_threads)),
            ("lock_after", Value::Duration(self.lock_after)),
            ("credits_empty", Value::Share(self.credits_empty.0)),
            ("enter_ticks", Value::Count(self.enter_ticks)),
            ("clear_after", Value::Duration(self.clear_after)),
            ("hold_ratio", Value::Share(self.hold_ratio.0)),
        ] {
            let key = format!("verdict.{k}");
            check(loc, &key, &key, v)?;
        }
        Ok(VerdictConfig {
            io_some: self.io_some.0,
            io_full: self.io_full.0,
            cpu_some: self.cpu_some.0,
            run_queue_per_cpu: self.run_queue_per_cpu as f64,
            memory_some: self.memory_some.0,
            memory_full: self.memory_full.0,
            stall_after: self.stall_after,
            utilisation: self.utilisation.0,
            await_threshold: self.await_,
            queue: self.queue as f64,
            limit_share: self.limit_share.0,
            writeback_bytes: self.writeback_bytes.0,
            lock_threads: self.lock_threads,
            lock_after: self.lock_after,
            credits_empty: self.credits_empty.0,
            enter_ticks: self.enter_ticks as u32,
            clear_after: self.clear_after,
            hold_ratio: self.hold_ratio.0,
        })
    }
}

impl IncidentSection {
    pub fn validate(&self, loc: &Locator<'_>) -> Result<IncidentConfig, ConfigError> {
        for (k, v) in [
            ("min_duration", Value::Duration(self.min_duration)),
            ("keep", Value::Count(self.keep)),
            ("max_files", Value::Count(self.max_files)),
            ("max_bytes", Value::Size(self.max_bytes.0)),
        ] {
            let key = format!("incident.{k}");
            check(loc, &key, &key, v)?;
        }
        if let Some(d) = &self.dir {
            // Checked as a string only: loading a config never touches a directory that may
            // sit on the hung disk (the writer, a child process, finds out).
            if !d.is_absolute() || d.components().any(|c| c == std::path::Component::ParentDir) {
                return Err(loc.err(
                    "incident.dir",
                    format!("{} must be an absolute path without `..`", d.display()),
                ));
            }
        }
        Ok(IncidentConfig {
            min_duration: self.min_duration,
            keep: self.keep as usize,
            dir: self.dir.clone(),
            max_files: self.max_files as usize,
            max_bytes: self.max_bytes.0,
        })
    }
}
