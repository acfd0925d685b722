//! Incident records: what an SRE wants at 9 a.m. about a stall at 3 a.m. A stall that lasts
//! `incident.min_duration` opens a record (back-dated to the stall's start); every tick while
//! it lasts updates it — the verdict's changes, the peaks, the largest D-thread table seen
//! (with kernel stacks where readable), the busiest containers and disks, the EBS state — and
//! the end of the stall closes it with its timeline from the ring (60 s before it began).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use stallwatch_collector::sample::dstate::DThread;

use super::ring::{self, Ring, Timeline};
use crate::node::Node;
use crate::verdict::{rfc3339, Cause, Evaluation};

/// `[incident]` of the config file.
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentConfig {
    /// A stall shorter than this leaves no record (it is still counted in
    /// `stallwatch_verdict_seconds_total`). 10 s: shorter stalls are seen in the timeline.
    pub min_duration: Duration,
    /// Records kept in memory (the oldest is dropped).
    pub keep: usize,
    /// Where to persist records as JSON (none: memory only). See [`super::store`].
    pub dir: Option<std::path::PathBuf>,
    /// Files kept in `dir` and their total size: the oldest go first.
    pub max_files: usize,
    pub max_bytes: u64,
}

impl Default for IncidentConfig {
    fn default() -> Self {
        IncidentConfig {
            min_duration: Duration::from_secs(10),
            keep: 20,
            dir: None,
            max_files: 100,
            max_bytes: 32 << 20,
        }
    }
}

/// A thread in D, as the verdict and the records show it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct DRow {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub group: String,
    pub wchan: Option<String>,
    /// In D for at least this long (the walk's lower bound).
    pub seconds: f64,
    pub container: Option<ContainerRef>,
    pub kernel_thread: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stack: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ContainerRef {
    pub id: String,
    pub name: Option<String>,
    pub runtime: String,
}

/// The D threads of the last walk, longest first, at most `max`.
pub fn d_rows(node: &Node, max: usize, stacks: bool) -> Vec<DRow> {
    let now = std::time::Instant::now();
    let name_of = |id: &str| node.view.container(id).and_then(|r| r.name.clone());
    node.view
        .threads
        .stuck
        .iter()
        .take(max)
        .map(|d: &DThread| DRow {
            pid: d.pid,
            tid: d.tid,
            comm: d.comm.clone(),
            group: d.group.to_string(),
            wchan: d.wchan.clone(),
            seconds: now.saturating_duration_since(d.since).as_secs_f64(),
            container: d.container.as_ref().map(|c| ContainerRef {
                id: c.container_id.clone(),
                name: name_of(&c.container_id),
                runtime: c.runtime.as_str().to_string(),
            }),
            kernel_thread: d.kernel_thread,
            stack: if stacks { stack_of(node, d) } else { None },
        })
        .collect()
}

/// The thread's kernel stack: the walk's, else the eBPF source's for this thread's newest
/// long episode (kept for episodes of at least `bpf.long_episode`).
fn stack_of(node: &Node, d: &DThread) -> Option<String> {
    d.stack
        .as_deref()
        .or_else(|| {
            node.view
                .episodes
                .long
                .iter()
                .find(|e| e.tid == d.tid && e.pid == d.pid)
                .and_then(|e| e.stack.as_deref())
        })
        .map(str::to_string)
}

/// Why some D threads of a record have no kernel stack, if they do not all have one.
fn stacks_missing(node: &Node, rows: &[DRow]) -> Option<String> {
    if rows.iter().all(|r| r.stack.is_some()) {
        return None;
    }
    if let Some(why) = &node.view.threads.stacks_missing {
        return Some(format!("kernel stacks: {why}"));
    }
    if node.view.threads.from_bpf {
        return Some(format!(
            "kernel stacks: with the eBPF episode source on, threads in D come from its episodes in flight, which carry a stack only once they end past bpf.long_episode ({:?}); the walk's stacks (threads.stacks) are read only when it runs (bpf.walk_interval)",
            node.view.episodes.long_threshold
        ));
    }
    Some("kernel stacks: not read for some threads (threads.stacks_max reached, or the thread left D before its stack was read)".into())
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Head {
    pub id: String,
    pub start: String,
    pub start_unix: f64,
    pub end: Option<String>,
    pub end_unix: Option<f64>,
    pub open: bool,
    pub duration_seconds: f64,
    /// The cause that began the stall.
    pub cause: Cause,
    /// Every cause seen during it.
    pub causes: Vec<Cause>,
    /// The last summary while the stall was at its height.
    pub summary: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Change {
    pub t_unix: f64,
    pub cause: Cause,
    pub causes: Vec<Cause>,
    pub summary: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ContainerLine {
    pub id: String,
    pub name: Option<String>,
    pub runtime: String,
    pub read_bytes_per_second: f64,
    pub write_bytes_per_second: f64,
    pub iops: f64,
    /// The container's io PSI `some` avg10 (cgroup v2 only).
    pub psi_io_some: Option<f64>,
    pub d_threads: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct DiskLine {
    pub name: String,
    pub volume_id: Option<String>,
    /// Peaks over the incident.
    pub utilisation: f64,
    pub await_seconds: f64,
    pub queue: f64,
    pub iops: f64,
    pub bytes_per_second: f64,
    pub stalled_seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct EbsLine {
    pub volume_id: String,
    pub device: Option<String>,
    #[serde(rename = "type")]
    pub volume_type: String,
    pub balance_percent: Option<f64>,
    pub seconds_to_empty: Option<f64>,
}

/// One incident.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Record {
    #[serde(flatten)]
    pub head: Head,
    pub verdicts: Vec<Change>,
    pub peaks: serde_json::Map<String, serde_json::Value>,
    pub dstate: Vec<DRow>,
    pub containers: Vec<ContainerLine>,
    pub disks: Vec<DiskLine>,
    pub ebs: Vec<EbsLine>,
    /// From 60 s before the start to the end; filled when it closes (an open record's is
    /// taken from the ring when asked).
    pub timeline: Option<Timeline>,
    /// What this record lacks and why.
    pub missing: Vec<String>,
}

/// At most this many verdict changes per record (a flapping cause cannot grow it forever).
const MAX_CHANGES: usize = 300;
const MAX_DSTATE: usize = 100;
const BEFORE_SECONDS: f64 = 60.0;

/// The open record, the closed ones, and the counters.
#[derive(Debug)]
pub struct Incidents {
    pub config: IncidentConfig,
    open: Option<Record>,
    /// Largest D table seen in the open incident.
    open_disks: BTreeMap<String, DiskLine>,
    /// Last tick at which some cause was at its entry/hold level (the real end of the stall).
    last_hot: f64,
    closed: VecDeque<Arc<Record>>,
    /// Records opened, by the cause that began them (indexed like [`Cause::ALL`]).
    pub opened: [u64; 8],
}

impl Incidents {
    pub fn new(config: IncidentConfig) -> Incidents {
        Incidents {
            config,
            open: None,
            open_disks: BTreeMap::new(),
            last_hot: 0.0,
            closed: VecDeque::new(),
            opened: [0; 8],
        }
    }

    /// Follows one evaluation. Returns a record to persist (opened, every 30 s while open,
    /// and closed).
    pub fn follow(&mut self, ev: &Evaluation, node: &Node, ring: &Ring) -> Option<Arc<Record>> {
        let v = &ev.verdict;
        let now = v.time_unix;
        if ev.hot {
            self.last_hot = now;
        }
        if !v.stalled {
            let mut rec = self.open.take()?;
            let end = self.last_hot.max(rec.head.start_unix);
            rec.head.end_unix = Some(end);
            rec.head.end = Some(rfc3339(end));
            rec.head.open = false;
            rec.head.duration_seconds = end - rec.head.start_unix;
            rec.timeline = Some(ring.timeline(
                rec.head.start_unix - BEFORE_SECONDS,
                now,
                ev.tick.dt.max(0.1),
            ));
            rec.peaks = ring::peaks(ring.between(rec.head.start_unix, end));
            rec.disks = std::mem::take(&mut self.open_disks).into_values().collect();
            let rec = Arc::new(rec);
            self.closed.push_front(Arc::clone(&rec));
            self.closed.truncate(self.config.keep);
            return Some(rec);
        }
        let since = v.since_unix.unwrap_or(now);
        if self.open.is_none() {
            if now - since < self.config.min_duration.as_secs_f64() {
                return None;
            }
            self.opened[v.cause.index()] += 1;
            let mut missing = Vec::new();
            if !node.view.threads.enabled {
                missing
                    .push("D threads: the thread walk is off ([threads] enabled = false)".into());
            }
            if !node.view.containers.enabled {
                missing.push("containers: the container pass is off".into());
            }
            if !node.cloud.enabled {
                missing.push(
                    "EBS: cloud discovery is off (not on EC2, or [cloud] enabled = false)".into(),
                );
            }
            self.open = Some(Record {
                head: Head {
                    id: humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + Duration::from_secs_f64(since.max(0.0)),
                    )
                    .to_string()
                    .replace(['-', ':'], ""),
                    start: rfc3339(since),
                    start_unix: since,
                    end: None,
                    end_unix: None,
                    open: true,
                    duration_seconds: 0.0,
                    cause: v.cause,
                    causes: Vec::new(),
                    summary: v.summary.clone(),
                },
                verdicts: Vec::new(),
                peaks: serde_json::Map::new(),
                dstate: Vec::new(),
                containers: Vec::new(),
                disks: Vec::new(),
                ebs: Vec::new(),
                timeline: None,
                missing,
            });
        }
        let rec = self.open.as_mut()?;
        rec.head.duration_seconds = now - rec.head.start_unix;
        let causes: Vec<Cause> = v.causes.iter().map(|c| c.cause).collect();
        let mut all: BTreeSet<Cause> = rec.head.causes.iter().copied().collect();
        all.extend(causes.iter().copied());
        rec.head.causes = all.into_iter().collect();
        if ev.hot {
            rec.head.summary = v.summary.clone();
        }
        let changed = rec
            .verdicts
            .last()
            .is_none_or(|c| c.cause != v.cause || c.causes != causes);
        if changed && rec.verdicts.len() < MAX_CHANGES {
            rec.verdicts.push(Change {
                t_unix: now,
                cause: v.cause,
                causes,
                summary: v.summary.clone(),
            });
        }
        rec.peaks = ring::peaks(ring.between(rec.head.start_unix, now));
        if node.view.threads.stuck.len() >= rec.dstate.len() && !node.view.threads.stuck.is_empty()
        {
            rec.dstate = d_rows(node, MAX_DSTATE, true);
            rec.missing.retain(|m| !m.starts_with("kernel stacks:"));
            rec.missing.extend(stacks_missing(node, &rec.dstate));
        }
        merge_containers(&mut rec.containers, ev, node);
        for d in &ev.tick.disks {
            let e = self.open_disks.entry(d.name.clone()).or_insert(DiskLine {
                name: d.name.clone(),
                volume_id: d.volume_id.clone(),
                utilisation: 0.0,
                await_seconds: 0.0,
                queue: 0.0,
                iops: 0.0,
                bytes_per_second: 0.0,
                stalled_seconds: 0.0,
            });
            e.utilisation = e.utilisation.max(d.utilisation);
            e.await_seconds = e.await_seconds.max(d.await_seconds.unwrap_or(0.0));
            e.queue = e.queue.max(d.queue);
            e.iops = e.iops.max(d.iops);
            e.bytes_per_second = e.bytes_per_second.max(d.bytes_per_second);
            e.stalled_seconds = e.stalled_seconds.max(d.stalled_seconds);
        }
        rec.disks = self.open_disks.values().cloned().collect();
        rec.ebs = node
            .cloud
            .volumes
            .iter()
            .map(|v| EbsLine {
                volume_id: v.volume_id.clone(),
                device: v.device.clone(),
                volume_type: v.volume_type.clone(),
                balance_percent: v.estimate_percent.or(v.burst_balance.map(|b| b.percent)),
                seconds_to_empty: v.seconds_to_empty,
            })
            .collect();
        let first = rec.verdicts.len() == 1 && changed;
        let periodic = (rec.head.duration_seconds as u64) % 30 == 0;
        (first || periodic).then(|| Arc::new(rec.clone()))
    }

    /// Newest first: the open one, then the closed ones.
    pub fn list(&self) -> Vec<Head> {
        self.open
            .iter()
            .map(|r| r.head.clone())
            .chain(self.closed.iter().map(|r| r.head.clone()))
            .collect()
    }

    pub fn get(&self, id: &str, ring: &Ring) -> Option<Record> {
        if let Some(r) = self.open.as_ref().filter(|r| r.head.id == id) {
            let mut r = r.clone();
            let now = ring.last().map_or(r.head.start_unix, |p| p.t_unix);
            r.timeline = Some(ring.timeline(r.head.start_unix - BEFORE_SECONDS, now, 1.0));
            return Some(r);
        }
        self.closed
            .iter()
            .find(|r| r.head.id == id)
            .map(|r| (**r).clone())
    }

    /// Records read back from the directory at start (oldest dropped past `keep`).
    pub fn restore(&mut self, mut records: Vec<Record>) {
        records.sort_by(|a, b| b.head.start_unix.total_cmp(&a.head.start_unix));
        for r in records {
            if self.closed.len() >= self.config.keep {
                break;
            }
            if !self.closed.iter().any(|c| c.head.id == r.head.id) {
                self.closed.push_back(Arc::new(r));
            }
        }
    }
}

/// The busiest containers now (by I/O rate over the last container pass, and those with
/// threads in D), at most 10: the verdict's `containers`.
pub fn top_containers(ev: &Evaluation, node: &Node) -> Vec<ContainerLine> {
    let mut lines = Vec::new();
    merge_containers(&mut lines, ev, node);
    lines
}

/// The busiest containers of the incident: by I/O rate (peak), with their D threads.
fn merge_containers(lines: &mut Vec<ContainerLine>, ev: &Evaluation, node: &Node) {
    let mut by_id: BTreeMap<&str, (f64, f64, f64)> = BTreeMap::new();
    for c in &ev.tick.containers {
        let e = by_id.entry(&c.id).or_default();
        e.0 += c.read_bps;
        e.1 += c.write_bps;
        e.2 += c.read_iops + c.write_iops;
    }
    for (id, (r, w, iops)) in by_id {
        let row = node.view.container(id);
        let psi = row
            .and_then(|x| x.stats.pressure[1])
            .and_then(|p| p.some)
            .map(|s| s.avg10);
        let d = node.view.dstate_threads_of(id);
        match lines.iter_mut().find(|l| l.id == id) {
            Some(l) => {
                l.read_bytes_per_second = l.read_bytes_per_second.max(r);
                l.write_bytes_per_second = l.write_bytes_per_second.max(w);
                l.iops = l.iops.max(iops);
                l.psi_io_some = match (l.psi_io_some, psi) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
                l.d_threads = l.d_threads.max(d);
            }
            None => lines.push(ContainerLine {
                id: id.to_string(),
                name: row.and_then(|x| x.name.clone()),
                runtime: row
                    .map_or("unknown", |x| x.identity.runtime.as_str())
                    .to_string(),
                read_bytes_per_second: r,
                write_bytes_per_second: w,
                iops,
                psi_io_some: psi,
                d_threads: d,
            }),
        }
    }
    // Containers with D threads now but no I/O in the window are "who" too.
    for (id, d) in &node.view.dstate_by_container {
        if !lines.iter().any(|l| &l.id == id) {
            let row = node.view.container(id);
            lines.push(ContainerLine {
                id: id.clone(),
                name: row.and_then(|x| x.name.clone()),
                runtime: row
                    .map_or("unknown", |x| x.identity.runtime.as_str())
                    .to_string(),
                read_bytes_per_second: 0.0,
                write_bytes_per_second: 0.0,
                iops: 0.0,
                psi_io_some: None,
                d_threads: *d,
            });
        }
    }
    lines.sort_by(|a, b| {
        (
            b.read_bytes_per_second + b.write_bytes_per_second,
            b.d_threads,
        )
            .partial_cmp(&(
                a.read_bytes_per_second + a.write_bytes_per_second,
                a.d_threads,
            ))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    lines.truncate(10);
}
