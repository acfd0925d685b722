//! "I/O in flight and nothing completing", per block device, pure: successive `/proc/diskstats`
//! readings (every device, partitions and loop devices included) become the stalls in progress
//! and, per device, the seconds spent stalled.
//!
//! A device is **stalled** at a reading when it has I/O in flight (`in_progress > 0`) and its
//! completion count (reads + writes + discards + flushes completed) has not moved since the
//! previous reading. That is the signature of a hung EBS volume, a hung NFS/EFS or FUSE backing
//! file under a loop device, a dead path: a device that is merely slow still completes
//! something every second, and an idle one has nothing in flight.
//!
//! The run starts at the first reading of it: the previous reading when the device already had
//! I/O in flight then (nothing in flight then completed since, so the device made no progress
//! over the whole interval), else the current one (the I/O was submitted within the interval
//! and it is not known when). Its length is therefore a lower bound, exact to one interval, and
//! the counter adds the same intervals, so `rate(stalled_seconds_total)` and the gauge agree.
//!
//! What it cannot see: a device whose driver leaks its in-flight count (old md/dm bugs) looks
//! stalled while idle; a device that completes one request a second under a pile of queued
//! ones is not stalled here (its latency is, see `disk_*_time`).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::proc::diskstats::DiskStat;
use crate::sys::block::Disk;

/// A device stalled now: I/O in flight and no completion since `since`.
#[derive(Debug, Clone, PartialEq)]
pub struct DiskStall {
    pub major: u32,
    pub minor: u32,
    /// Kernel name (`nvme1n1`, `loop7`).
    pub name: String,
    /// A partition (its disk is stalled too, and listed as well).
    pub partition: bool,
    /// I/Os in flight at the last reading.
    pub in_flight: u64,
    /// First reading of the run (see the module doc).
    pub since: Instant,
    /// Length of the run at the last reading, seconds (`at − since`).
    pub seconds: f64,
}

/// Completions of every kind a device reports.
pub fn completions(d: &DiskStat) -> u64 {
    d.reads_completed
        .wrapping_add(d.writes_completed)
        .wrapping_add(d.discard.map_or(0, |x| x.completed))
        .wrapping_add(d.flush.map_or(0, |x| x.completed))
}

#[derive(Debug)]
struct Dev {
    name: String,
    completions: u64,
    in_flight: u64,
    at: Instant,
    /// Start of the current run.
    since: Option<Instant>,
    /// Seconds stalled, total; never decreases while the device exists.
    stalled_seconds: f64,
}

/// Turns successive diskstats readings into stalls; one per host sampler.
#[derive(Debug, Default)]
pub struct StallTracker {
    devs: HashMap<(u32, u32), Dev>,
    stalls: Vec<DiskStall>,
}

impl StallTracker {
    /// Applies one reading of every device, taken at `at`. An interval longer than `max_gap`
    /// (the diskstats read was stuck) is not added to the counters: nobody saw what happened in
    /// it. A device missing from the reading is forgotten (its series end); one whose counters
    /// went backwards (a loop device detached and attached again) starts over.
    pub fn observe(&mut self, disks: &[Disk], at: Instant, max_gap: Duration) {
        let mut devs = HashMap::with_capacity(disks.len());
        self.stalls.clear();
        for d in disks {
            let s = &d.stat;
            let key = (s.major, s.minor);
            let done = completions(s);
            let dev = match self.devs.remove(&key) {
                Some(prev) if prev.name == s.name && prev.completions <= done => {
                    let stalled = s.in_progress > 0 && done == prev.completions;
                    let dt = at.saturating_duration_since(prev.at);
                    let mut total = prev.stalled_seconds;
                    let since = if !stalled {
                        None
                    } else if let Some(t) = prev.since {
                        if dt <= max_gap {
                            total += dt.as_secs_f64();
                        }
                        Some(t)
                    } else if prev.in_flight > 0 {
                        if dt <= max_gap {
                            total += dt.as_secs_f64();
                        }
                        Some(prev.at)
                    } else {
                        Some(at)
                    };
                    Dev {
                        name: prev.name,
                        completions: done,
                        in_flight: s.in_progress,
                        at,
                        since,
                        stalled_seconds: total,
                    }
                }
                _ => Dev {
                    name: s.name.clone(),
                    completions: done,
                    in_flight: s.in_progress,
                    at,
                    since: None,
                    stalled_seconds: 0.0,
                },
            };
            if let Some(since) = dev.since {
                self.stalls.push(DiskStall {
                    major: s.major,
                    minor: s.minor,
                    name: s.name.clone(),
                    partition: d.partition,
                    in_flight: s.in_progress,
                    since,
                    seconds: at.saturating_duration_since(since).as_secs_f64(),
                });
            }
            devs.insert(key, dev);
        }
        self.devs = devs;
        // Longest first: what a reader of the list wants on top.
        self.stalls
            .sort_by(|a, b| b.seconds.total_cmp(&a.seconds).then(a.name.cmp(&b.name)));
    }

    /// Devices stalled at the last reading, longest first.
    pub fn stalls(&self) -> &[DiskStall] {
        &self.stalls
    }

    /// Seconds each device of the last reading has spent stalled, by (major, minor).
    pub fn stalled_seconds(&self) -> BTreeMap<(u32, u32), f64> {
        self.devs
            .iter()
            .map(|(k, d)| (*k, d.stalled_seconds))
            .collect()
    }

    /// Forgets everything (the diskstats file vanished).
    pub fn clear(&mut self) {
        self.devs.clear();
        self.stalls.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proc::diskstats::FlushStat;

    fn disk(name: &str, minor: u32, reads: u64, writes: u64, in_flight: u64) -> Disk {
        Disk {
            stat: DiskStat {
                major: 7,
                minor,
                name: name.into(),
                reads_completed: reads,
                writes_completed: writes,
                in_progress: in_flight,
                ..DiskStat::default()
            },
            partition: false,
        }
    }

    const GAP: Duration = Duration::from_secs(5);

    fn at(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    #[test]
    fn in_flight_without_completions_is_a_stall_that_starts_where_progress_stopped() {
        let t0 = Instant::now();
        let mut t = StallTracker::default();
        // 0 s: busy and completing. 1 s: still completing. 2 s, 3 s: 4 in flight, nothing done.
        t.observe(&[disk("loop7", 7, 10, 10, 2)], at(t0, 0), GAP);
        t.observe(&[disk("loop7", 7, 10, 20, 4)], at(t0, 1), GAP);
        assert!(t.stalls().is_empty(), "completions moved");
        t.observe(&[disk("loop7", 7, 10, 20, 4)], at(t0, 2), GAP);
        let s = &t.stalls()[0];
        assert_eq!((s.name.as_str(), s.in_flight), ("loop7", 4));
        assert_eq!(
            s.since,
            at(t0, 1),
            "in flight at 1 s and nothing completed since"
        );
        assert_eq!(s.seconds, 1.0);
        t.observe(&[disk("loop7", 7, 10, 20, 4)], at(t0, 3), GAP);
        assert_eq!(t.stalls()[0].seconds, 2.0);
        assert_eq!(t.stalled_seconds()[&(7, 7)], 2.0);
        // One completion ends the run; the counter keeps what it had.
        t.observe(&[disk("loop7", 7, 10, 21, 3)], at(t0, 4), GAP);
        assert!(t.stalls().is_empty());
        assert_eq!(t.stalled_seconds()[&(7, 7)], 2.0);
    }

    #[test]
    fn idle_devices_and_io_submitted_within_the_interval() {
        let t0 = Instant::now();
        let mut t = StallTracker::default();
        t.observe(&[disk("vda", 0, 5, 5, 0)], at(t0, 0), GAP);
        t.observe(&[disk("vda", 0, 5, 5, 0)], at(t0, 1), GAP);
        assert!(t.stalls().is_empty(), "idle: nothing in flight");
        // I/O submitted between 1 s and 2 s, not done: a run that starts now, 0 s long.
        t.observe(&[disk("vda", 0, 5, 5, 1)], at(t0, 2), GAP);
        assert_eq!(t.stalls()[0].since, at(t0, 2));
        assert_eq!(t.stalls()[0].seconds, 0.0);
        assert_eq!(t.stalled_seconds()[&(7, 0)], 0.0);
        t.observe(&[disk("vda", 0, 5, 5, 1)], at(t0, 3), GAP);
        assert_eq!(t.stalls()[0].seconds, 1.0);
        assert_eq!(t.stalled_seconds()[&(7, 0)], 1.0);
    }

    #[test]
    fn flushes_and_discards_are_completions_too() {
        let t0 = Instant::now();
        let mut t = StallTracker::default();
        let mut d = disk("nvme1n1", 1, 0, 0, 1);
        d.stat.flush = Some(FlushStat {
            completed: 1,
            time_ms: 0,
        });
        t.observe(std::slice::from_ref(&d), at(t0, 0), GAP);
        d.stat.flush = Some(FlushStat {
            completed: 2,
            time_ms: 0,
        });
        t.observe(std::slice::from_ref(&d), at(t0, 1), GAP);
        assert!(t.stalls().is_empty(), "a flush completed");
    }

    #[test]
    fn a_stuck_read_is_not_counted_and_a_recreated_device_starts_over() {
        let t0 = Instant::now();
        let mut t = StallTracker::default();
        t.observe(&[disk("loop3", 3, 1, 1, 2)], at(t0, 0), GAP);
        t.observe(&[disk("loop3", 3, 1, 1, 2)], at(t0, 1), GAP);
        // 30 s without a reading: the run goes on (still no completion), the counter does not.
        t.observe(&[disk("loop3", 3, 1, 1, 2)], at(t0, 31), GAP);
        assert_eq!(t.stalls()[0].seconds, 31.0);
        assert_eq!(t.stalled_seconds()[&(7, 3)], 1.0);
        // Detached and attached again: counters reset, nothing carried over.
        t.observe(&[disk("loop3", 3, 0, 0, 2)], at(t0, 32), GAP);
        assert!(t.stalls().is_empty());
        assert_eq!(t.stalled_seconds()[&(7, 3)], 0.0);
        // Gone: forgotten.
        t.observe(&[], at(t0, 33), GAP);
        assert!(t.stalled_seconds().is_empty());
    }

    #[test]
    fn several_devices_longest_first() {
        let t0 = Instant::now();
        let mut t = StallTracker::default();
        let both = |a: u64, b: u64| [disk("loop1", 1, a, 0, 1), disk("loop2", 2, b, 0, 1)];
        t.observe(&both(1, 1), at(t0, 0), GAP);
        t.observe(&both(1, 2), at(t0, 1), GAP);
        t.observe(&both(1, 2), at(t0, 2), GAP);
        let names: Vec<&str> = t.stalls().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["loop1", "loop2"],
            "loop1 stalled since 0 s, loop2 since 1 s"
        );
    }
}
