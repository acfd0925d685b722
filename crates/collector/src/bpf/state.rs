//! The sampler's side of the `bpf` source: adds up the drains ([`super::source::Batch`]) and
//! makes the [`EpisodeSnapshot`]. Pure (no I/O): the reader resolved everything.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::proc::tasks::RawD;
use crate::sample::dstate::{group_of, GroupRule};
use crate::sample::status::SourceStatus;

use super::episodes::{Containers, Fold, Hist};
use super::source::{Batch, Running};
use super::{Counters, EpisodeSnapshot, InFlight, LongEpisode, OTHER};

/// Long episodes kept.
pub const MAX_LONG: usize = 256;
/// Episodes in flight published (longest first); the rest are counted, not listed.
pub const MAX_IN_FLIGHT_SHOWN: usize = 1000;

#[derive(Default)]
pub struct EpisodeState {
    groups: Fold<Arc<str>>,
    wchans: Fold<Arc<str>>,
    containers: Containers,
    total: Hist,
    long: VecDeque<LongEpisode>,
    in_flight: Vec<InFlight>,
    counters: Counters,
    /// What programs loaded before the running ones counted.
    earlier: Counters,
    symbols: bool,
    /// A drain has been applied.
    pub active: bool,
}

fn unknown() -> Arc<str> {
    Arc::from("unknown")
}

impl EpisodeState {
    /// Adds one drain. Returns the episodes running now as the walk would have listed them
    /// (for the D-state tracker), each with its exact start. `starttime` is 0: the tracker
    /// keys a thread by tid alone, so that a thread going from one D wait straight into the
    /// next (a writer held by a throttle: back-to-back one-second episodes) stays stuck from
    /// the first drain that saw it, as a walk sees it; one long episode keeps its exact start.
    pub fn apply(&mut self, b: Batch, rules: &[GroupRule]) -> Vec<(RawD, Instant)> {
        self.active = true;
        // Counters only grow: programs loaded again (a `[bpf]` size changed) count from 0.
        if b.attached {
            self.earlier = self.counters;
        }
        self.counters = self.earlier.plus(b.counters);
        self.symbols = b.symbols;
        for e in &b.ended {
            // The overflow entry's comm is `other`: it lands in group="other".
            let group: Arc<str> = Arc::from(group_of(&e.comm, e.place.kernel_thread, rules));
            if &*group == OTHER {
                self.groups.add_other(&e.hist);
            } else {
                self.groups.add(&group, &e.hist);
            }
            match &e.wchan {
                Some(w) if &**w == OTHER => self.wchans.add_other(&e.hist),
                Some(w) => self.wchans.add(w, &e.hist),
                None => self.wchans.add(&unknown(), &e.hist),
            }
            if let Some(c) = &e.place.container {
                self.containers.add(c, &e.hist);
            }
            self.total.add(&e.hist);
        }
        for l in b.long {
            self.long.push_front(LongEpisode {
                pid: l.pid,
                tid: l.tid,
                group: Arc::from(group_of(&l.comm, l.place.kernel_thread, rules)),
                comm: l.comm,
                container_id: l.place.container.as_ref().map(|c| c.container_id.clone()),
                wchan: l.wchan.map(|w| w.to_string()),
                seconds: l.seconds,
                ended_unix: Some(l.ended_unix),
                stack: l.stack,
            });
        }
        self.long.truncate(MAX_LONG);
        let mut running: Vec<Running> = b.running;
        running.sort_by_key(|r| r.since);
        let raw = running
            .iter()
            .map(|r| {
                (
                    RawD {
                        pid: r.pid,
                        tid: r.tid,
                        starttime: 0,
                        comm: r.comm.clone(),
                        kernel_thread: r.place.kernel_thread,
                        wchan: r.wchan.as_ref().map(|w| w.to_string()),
                        cgroup: r.place.cgroup.clone(),
                        container: r.place.container.clone(),
                        // The stack it went to sleep in (the 64 longest; a seeded one the walk's).
                        stack: r.stack.clone(),
                    },
                    r.since,
                )
            })
            .collect();
        self.in_flight = running
            .into_iter()
            .take(MAX_IN_FLIGHT_SHOWN)
            .map(|r| InFlight {
                pid: r.pid,
                tid: r.tid,
                group: Arc::from(group_of(&r.comm, r.place.kernel_thread, rules)),
                comm: r.comm,
                kernel_thread: r.place.kernel_thread,
                cgroup: r.place.cgroup,
                container: r.place.container,
                wchan: r.wchan.map(|w| w.to_string()),
                since: r.since,
                seeded: r.seeded,
                stack: r.stack,
            })
            .collect();
        raw
    }

    /// The snapshot: folded rows, the long and running episodes.
    pub fn snapshot(
        &mut self,
        top_groups: usize,
        top_wchans: usize,
        long: Duration,
        status: Option<SourceStatus>,
        off_reason: Option<String>,
    ) -> EpisodeSnapshot {
        let named = |rows: Vec<super::episodes::Row<Option<Arc<str>>>>| {
            rows.into_iter()
                .map(|r| (r.key.unwrap_or_else(|| Arc::from(OTHER)), r.hist))
                .collect()
        };
        EpisodeSnapshot {
            active: self.active,
            off_reason,
            groups: named(self.groups.rows(top_groups)),
            wchans: named(self.wchans.rows(top_wchans)),
            containers: self.containers.rows(),
            total: self.total,
            long: self.long.iter().cloned().collect(),
            in_flight: self.in_flight.clone(),
            counters: self.counters,
            long_threshold: long,
            symbols: self.symbols,
            status,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::source::{Ended, Long, Place};
    use crate::cgroup::{Identity, Runtime};
    use std::time::Instant;

    fn place(container: Option<&str>, kernel_thread: bool) -> Place {
        Place {
            kernel_thread,
            cgroup: container.map(|c| Arc::from(format!("/docker/{c}").as_str())),
            container: container.map(|c| {
                Arc::new(Identity {
                    container_id: c.into(),
                    runtime: Runtime::Docker,
                    pod_uid: None,
                    qos: None,
                })
            }),
        }
    }

    fn ended(comm: &str, container: Option<&str>, kt: bool, n: u64, secs: f64) -> Ended {
        let mut hist = Hist {
            count: n,
            seconds: secs,
            ..Hist::default()
        };
        hist.buckets[12] = n;
        Ended {
            comm: comm.into(),
            place: place(container, kt),
            wchan: Some(Arc::from("io_schedule")),
            hist,
        }
    }

    #[test]
    fn drains_add_up_by_group_container_and_wait_channel() {
        let base = Instant::now();
        let mut s = EpisodeState::default();
        let id = "a".repeat(64);
        let long = |tid: u32, secs: f64| Long {
            pid: 1,
            tid,
            comm: "dd".into(),
            place: place(Some(&id), false),
            wchan: None,
            seconds: secs,
            ended_unix: 1e9,
            stack: Some(Arc::from("a\nb")),
        };
        let b = Batch {
            ended: vec![
                ended("kworker/u8:2", None, true, 3, 0.3),
                ended("kworker/0:1", None, true, 1, 0.1),
                ended("dd", Some(&id), false, 10, 2.0),
                ended("other", None, false, 2, 0.5), // the overflow entry
            ],
            running: vec![
                Running {
                    pid: 7,
                    tid: 8,
                    comm: "dd".into(),
                    place: place(Some(&id), false),
                    wchan: Some(Arc::from("io_schedule")),
                    since: base + Duration::from_secs(2),
                    seeded: false,
                    stack: None,
                },
                Running {
                    pid: 7,
                    tid: 9,
                    comm: "dd".into(),
                    place: place(Some(&id), false),
                    wchan: None,
                    since: base + Duration::from_secs(1),
                    seeded: true,
                    stack: None,
                },
            ],
            long: vec![long(1, 1.5), long(2, 2.5)],
            ..Batch::default()
        };
        let raw = s.apply(b, &[]);
        assert_eq!(raw.len(), 2);
        assert_eq!(raw[0].0.tid, 9, "longest first");
        assert_eq!(raw[0].1, base + Duration::from_secs(1), "its exact start");
        assert_eq!(raw[0].0.starttime, 0, "keyed by tid");
        let snap = s.snapshot(20, 20, Duration::from_secs(1), None, None);
        assert!(snap.active);
        let g: Vec<(&str, u64)> = snap.groups.iter().map(|(n, h)| (&**n, h.count)).collect();
        assert_eq!(g, [("dd", 10), ("kworker", 4), ("other", 2)]);
        assert_eq!(snap.total.count, 16);
        assert_eq!(snap.containers.len(), 1);
        assert_eq!(snap.containers[0].1.count, 10);
        assert_eq!(snap.wchans[0].0.as_ref(), "io_schedule");
        assert_eq!(snap.long[0].tid, 2, "newest first");
        assert_eq!(snap.long[0].container_id.as_deref(), Some(id.as_str()));
        assert_eq!(snap.in_flight[0].tid, 9);
        assert!(snap.in_flight[0].seeded);
    }

    /// Programs loaded again (a `[bpf]` size changed on reload) count from 0: the exported
    /// counters carry on from what the old ones counted instead of going back.
    #[test]
    fn counters_only_grow_when_the_programs_are_loaded_again() {
        let mut s = EpisodeState::default();
        let c = |started, long_lost| Counters {
            started,
            ended: started,
            long_lost,
            ..Counters::default()
        };
        let drain = |counters, attached| Batch {
            counters,
            attached,
            ..Batch::default()
        };
        let counted = |s: &mut EpisodeState| {
            let k = s
                .snapshot(20, 20, Duration::from_secs(1), None, None)
                .counters;
            (k.started, k.long_lost)
        };
        s.apply(drain(c(5, 1), true), &[]);
        s.apply(drain(c(9, 2), false), &[]);
        assert_eq!(counted(&mut s), (9, 2));
        s.apply(drain(c(1, 0), true), &[]);
        assert_eq!(
            counted(&mut s),
            (10, 2),
            "the new programs' 1 on top of the old 9"
        );
        s.apply(drain(c(4, 3), false), &[]);
        assert_eq!(counted(&mut s), (13, 5));
    }
}
