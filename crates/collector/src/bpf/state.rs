//! The sampler's side of the `bpf` source: adds up the drains ([`super::source::Batch`]) and
//! makes the [`EpisodeSnapshot`]. Pure (no I/O): the reader resolved everything.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

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
    symbols: bool,
    /// A drain has been applied.
    pub active: bool,
}

fn unknown() -> Arc<str> {
    Arc::from("unknown")
}

impl EpisodeState {
    /// Adds one drain. Returns the episodes running now as the walk would have listed them
    /// (for the D-state tracker), `starttime` standing for the episode's start so that each
    /// episode is one entry.
    pub fn apply(&mut self, b: Batch, rules: &[GroupRule], base: std::time::Instant) -> Vec<RawD> {
        self.active = true;
        self.counters = b.counters;
        self.symbols = b.symbols;
        for e in &b.ended {
            // The overflow entry's comm is `other`: it lands in group="other".
            let group: Arc<str> = Arc::from(group_of(&e.comm, e.place.kernel_thread, rules));
            self.groups.add(&group, &e.hist);
            self.wchans
                .add(&e.wchan.clone().unwrap_or_else(unknown), &e.hist);
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
            .map(|r| RawD {
                pid: r.pid,
                tid: r.tid,
                starttime: r.since.saturating_duration_since(base).as_nanos() as u64,
                comm: r.comm.clone(),
                kernel_thread: r.place.kernel_thread,
                wchan: r.wchan.as_ref().map(|w| w.to_string()),
                cgroup: r.place.cgroup.clone(),
                container: r.place.container.clone(),
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
