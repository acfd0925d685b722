//! One tick's rates, from two consecutive nodes: what the detectors and the flight recorder
//! read. Pure; a counter that went backwards (a device re-created, a wrap) gives no rate
//! rather than a huge one.

use std::collections::HashMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use stallwatch_collector::proc::pressure::Resource;
use stallwatch_collector::sample::HostSnapshot;
use stallwatch_collector::sys::block::Disk;

use crate::node::Node;

/// One block device over the tick (whole disks only: a partition's I/O is its disk's).
#[derive(Debug, Clone, PartialEq)]
pub struct DiskTick {
    pub major: u32,
    pub minor: u32,
    pub name: String,
    pub volume_id: Option<String>,
    /// Share of the tick with I/O in flight (`io_ticks`).
    pub utilisation: f64,
    /// Average time per I/O completed in the tick, seconds; `None` when none completed.
    pub await_seconds: Option<f64>,
    /// Average number of I/Os in flight (`weighted_io_ticks` / dt, iostat's `aqu-sz`).
    pub queue: f64,
    pub iops: f64,
    pub bytes_per_second: f64,
    /// I/Os in flight at the end of the tick.
    pub in_flight: u64,
    /// How long the device has had I/O in flight and completed nothing, seconds (0 when it
    /// completed something this tick or has nothing in flight).
    pub stalled_seconds: f64,
}

/// A container's I/O on one device between its last two passes, with its limits there.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerIo {
    pub id: String,
    pub name: Option<String>,
    pub runtime: &'static str,
    pub major: u32,
    pub minor: u32,
    pub read_iops: f64,
    pub write_iops: f64,
    pub read_bps: f64,
    pub write_bps: f64,
    /// `(kind, limit, rate)` for each kind with a limit: `read_iops`, `write_iops`,
    /// `read_bps`, `write_bps`.
    pub limits: Vec<(&'static str, f64, f64)>,
}

/// The rates of one tick.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tick {
    /// Wall time of the host snapshot, seconds since the epoch.
    pub t_unix: f64,
    /// Seconds since the previous tick.
    pub dt: f64,
    pub cpus: f64,
    /// Share of the tick stalled, `[cpu, io, memory][some, full]`, from the `total` counters.
    pub psi: [[Option<f64>; 2]; 3],
    pub procs_running: Option<u64>,
    pub procs_blocked: Option<u64>,
    pub dirty_bytes: Option<f64>,
    pub writeback_bytes: Option<f64>,
    /// Bytes the kernel wrote back in the tick, per second (`nr_written`): catches flushes
    /// shorter than one tick that the `Writeback` level never shows.
    pub written_bytes_per_second: Option<f64>,
    pub major_faults_per_second: Option<f64>,
    /// Direct reclaim stalls (`allocstall_*`), compaction stalls, pages scanned by direct
    /// reclaim (as bytes) and working-set refaults, per second.
    pub allocstalls_per_second: Option<f64>,
    pub compact_stalls_per_second: Option<f64>,
    pub direct_scan_bytes_per_second: Option<f64>,
    pub refaults_per_second: Option<f64>,
    /// Hung-task detections in the tick (`hung_task_detect_count`, kernel ≥ 6.13): a task in
    /// D for longer than `hung_task_timeout_secs`.
    pub hung_task_detections: Option<u64>,
    pub disks: Vec<DiskTick>,
    pub containers: Vec<ContainerIo>,
    /// Threads in D at the last walk.
    pub d_threads: u64,
    /// The lowest EBS burst balance known (volume estimates, else CloudWatch points), 0..1.
    pub burst_balance_min: Option<f64>,
    /// EBS volumes over their provisioned IOPS or throughput during the tick (the NVMe log
    /// page's exceeded-time counters moved): `(volume id, device, IOPS seconds, throughput
    /// seconds)` over the limit.
    pub ebs_exceeded: Vec<(String, Option<String>, f64, f64)>,
    /// The slowest probe write now: the running one's age, else the last one's duration.
    pub probe_latency_seconds_max: Option<f64>,
}

/// What the tick keeps between evaluations.
#[derive(Debug, Default)]
pub struct Memory {
    host: Option<std::sync::Arc<HostSnapshot>>,
    containers_taken: Option<SystemTime>,
    container_prev: HashMap<String, (SystemTime, Vec<stallwatch_collector::cgroup::DeviceIo>)>,
    container_rates: Vec<ContainerIo>,
    /// Per volume, the NVMe exceeded-time counters at the last tick.
    nvme: HashMap<String, (f64, f64)>,
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn rate(now: u64, before: u64, dt: f64) -> Option<f64> {
    (now >= before && dt > 0.0).then(|| (now - before) as f64 / dt)
}

fn completions(d: &Disk) -> u64 {
    let s = &d.stat;
    s.reads_completed
        + s.writes_completed
        + s.discard.map_or(0, |x| x.completed)
        + s.flush.map_or(0, |x| x.completed)
}

impl Memory {
    /// The tick from the last node to `node`; `None` for the first host snapshot, or when the
    /// host has not published a new one since.
    pub fn tick(&mut self, node: &Node, cpus: f64) -> Option<Tick> {
        let host = &node.view.host;
        let taken = host.taken?;
        let prev = match &self.host {
            Some(p) if p.taken == Some(taken) => return None,
            Some(p) => std::sync::Arc::clone(p),
            None => {
                self.host = Some(std::sync::Arc::clone(host));
                return None;
            }
        };
        self.host = Some(std::sync::Arc::clone(host));
        let dt = match (host.disks_at, prev.disks_at) {
            (Some(a), Some(b)) if a > b => (a - b).as_secs_f64(),
            _ => prev
                .taken
                .and_then(|p| taken.duration_since(p).ok())
                .map_or(0.0, |d| d.as_secs_f64()),
        };
        if dt <= 0.0 {
            return None;
        }
        let mut t = Tick {
            t_unix: unix(taken),
            dt,
            cpus,
            ..Tick::default()
        };
        for (i, r) in [Resource::Cpu, Resource::Io, Resource::Memory]
            .into_iter()
            .enumerate()
        {
            let idx = Resource::ALL.iter().position(|x| *x == r).unwrap_or(0);
            let (Some(now), Some(before)) = (host.pressure[idx], prev.pressure[idx]) else {
                continue;
            };
            let share = |a: Option<_>, b: Option<_>| match (a, b) {
                (
                    Some(stallwatch_collector::proc::pressure::Record { total_us: x, .. }),
                    Some(stallwatch_collector::proc::pressure::Record { total_us: y, .. }),
                ) => rate(x, y, dt * 1e6).map(|s| s.min(1.0)),
                _ => None,
            };
            t.psi[i] = [share(now.some, before.some), share(now.full, before.full)];
        }
        if let Some(s) = &host.stat {
            t.procs_running = s.procs_running;
            t.procs_blocked = s.procs_blocked;
        }
        let page = host.page_size.max(1) as f64;
        if let Some(m) = &host.meminfo {
            t.dirty_bytes = m.dirty.map(|v| v as f64);
            t.writeback_bytes = m.writeback.map(|v| v as f64);
        }
        t.written_bytes_per_second = host.written_bytes_per_second;
        if let (Some(v), Some(p)) = (&host.vmstat, &prev.vmstat) {
            let r = |a: Option<u64>, b: Option<u64>| rate(a?, b?, dt);
            t.major_faults_per_second = r(v.pgmajfault, p.pgmajfault);
            t.allocstalls_per_second = r(v.allocstall, p.allocstall);
            t.compact_stalls_per_second = r(v.compact_stall, p.compact_stall);
            t.direct_scan_bytes_per_second = r(v.pgscan_direct, p.pgscan_direct).map(|x| x * page);
            let refaults = |v: &stallwatch_collector::proc::vmstat::Vmstat| {
                Some(v.workingset_refault_anon.unwrap_or(0) + v.workingset_refault_file?)
            };
            t.refaults_per_second = r(refaults(v), refaults(p));
        }
        if let (Some(a), Some(b)) = (
            host.hung_tasks.and_then(|h| h.detect_count),
            prev.hung_tasks.and_then(|h| h.detect_count),
        ) {
            t.hung_task_detections = a.checked_sub(b);
        }
        t.disks = self.disks(node, &prev, dt);
        t.containers = self.containers(node);
        t.d_threads = node.view.threads.stuck.len() as u64;
        t.burst_balance_min = node
            .cloud
            .volumes
            .iter()
            .filter_map(|v| {
                v.estimate_percent
                    .or(v.burst_balance.map(|b| b.percent))
                    .map(|p| p / 100.0)
            })
            .reduce(f64::min);
        let mut nvme = HashMap::new();
        for v in &node.cloud.volumes {
            let Some(n) = &v.nvme else { continue };
            let now = (n.exceeded_iops_seconds, n.exceeded_throughput_seconds);
            if let Some(before) = self.nvme.get(&v.volume_id) {
                let d = ((now.0 - before.0).max(0.0), (now.1 - before.1).max(0.0));
                if d.0 > 0.0 || d.1 > 0.0 {
                    t.ebs_exceeded
                        .push((v.volume_id.clone(), v.device.clone(), d.0, d.1));
                }
            }
            nvme.insert(v.volume_id.clone(), now);
        }
        self.nvme = nvme;
        let now = Instant::now();
        t.probe_latency_seconds_max = node
            .view
            .probes
            .iter()
            .filter_map(|p| {
                p.in_flight_since
                    .map(|s| now.saturating_duration_since(s))
                    .or(p.last_duration)
                    .map(|d| d.as_secs_f64())
            })
            .reduce(f64::max);
        Some(t)
    }

    fn disks(&mut self, node: &Node, prev: &HostSnapshot, dt: f64) -> Vec<DiskTick> {
        let host = &node.view.host;
        let stalls: HashMap<(u32, u32), f64> = host
            .disk_stalls
            .iter()
            .map(|d| ((d.major, d.minor), d.seconds))
            .collect();
        let before: HashMap<(u32, u32), &Disk> = prev
            .all_disks
            .iter()
            .map(|d| ((d.stat.major, d.stat.minor), d))
            .collect();
        let mut out = Vec::new();
        for d in host.all_disks.iter().filter(|d| !d.partition) {
            let key = (d.stat.major, d.stat.minor);
            let Some(p) = before.get(&key) else { continue };
            let (s, q) = (&d.stat, &p.stat);
            let Some(ios) = rate(completions(d), completions(p), 1.0) else {
                continue;
            };
            let busy_ms = rate(s.io_time_ms, q.io_time_ms, 1.0).unwrap_or(0.0);
            let weighted_ms =
                rate(s.weighted_io_time_ms, q.weighted_io_time_ms, 1.0).unwrap_or(0.0);
            let wait_ms = rate(
                s.read_time_ms + s.write_time_ms,
                q.read_time_ms + q.write_time_ms,
                1.0,
            )
            .unwrap_or(0.0);
            let sectors = rate(
                s.sectors_read + s.sectors_written,
                q.sectors_read + q.sectors_written,
                1.0,
            )
            .unwrap_or(0.0);
            // The host sampler follows every disk's in-flight-without-completion runs
            // (collector/src/sample/disk_stall.rs).
            let stalled_seconds = stalls.get(&key).copied().unwrap_or(0.0);
            // Idle devices are left out: nothing to say about them, and a node with hundreds
            // of loop devices keeps the tick small.
            if ios == 0.0 && s.in_progress == 0 && busy_ms == 0.0 {
                continue;
            }
            out.push(DiskTick {
                major: key.0,
                minor: key.1,
                name: s.name.clone(),
                volume_id: node.volume_of(&s.name).map(str::to_string),
                utilisation: (busy_ms / 1000.0 / dt).min(1.0),
                await_seconds: (ios > 0.0).then(|| wait_ms / 1000.0 / ios),
                queue: weighted_ms / 1000.0 / dt,
                iops: ios / dt,
                bytes_per_second: sectors * 512.0 / dt,
                in_flight: s.in_progress,
                stalled_seconds,
            });
        }
        out
    }

    /// Container I/O rates between the last two container passes (the pass runs every 10 s
    /// by default: the rates are that window's averages).
    fn containers(&mut self, node: &Node) -> Vec<ContainerIo> {
        let snap = &node.view.containers;
        let Some(taken) = snap.taken else {
            return Vec::new();
        };
        if self.containers_taken == Some(taken) {
            return self.container_rates.clone();
        }
        self.containers_taken = Some(taken);
        let mut rates = Vec::new();
        let mut next = HashMap::new();
        for row in snap.containers.iter() {
            let id = &row.identity.container_id;
            let Some(io) = &row.stats.io else { continue };
            if let Some((then, before)) = self.container_prev.get(id) {
                let dt = taken.duration_since(*then).map_or(0.0, |d| d.as_secs_f64());
                for d in io {
                    let Some(b) = before
                        .iter()
                        .find(|b| (b.major, b.minor) == (d.major, d.minor))
                    else {
                        continue;
                    };
                    let r = |a: u64, b: u64| rate(a, b, dt).unwrap_or(0.0);
                    let mut c = ContainerIo {
                        id: id.clone(),
                        name: row.name.clone(),
                        runtime: row.identity.runtime.as_str(),
                        major: d.major,
                        minor: d.minor,
                        read_iops: r(d.read_ops, b.read_ops),
                        write_iops: r(d.write_ops, b.write_ops),
                        read_bps: r(d.read_bytes, b.read_bytes),
                        write_bps: r(d.write_bytes, b.write_bytes),
                        limits: Vec::new(),
                    };
                    c.limits = limits_of(row, d.major, d.minor, &c);
                    if c.read_iops + c.write_iops > 0.0 || !c.limits.is_empty() {
                        rates.push(c);
                    }
                }
            }
            next.insert(id.clone(), (taken, io.clone()));
        }
        self.container_prev = next;
        self.container_rates = rates.clone();
        rates
    }
}

/// The container's blkio/io.max limits on one device, with its rate of each kind.
fn limits_of(
    row: &stallwatch_collector::cgroup::pass::ContainerRow,
    major: u32,
    minor: u32,
    c: &ContainerIo,
) -> Vec<(&'static str, f64, f64)> {
    let Some(l) = row
        .stats
        .io_limits
        .iter()
        .flatten()
        .find(|l| (l.major, l.minor) == (major, minor))
    else {
        return Vec::new();
    };
    [
        ("read_iops", l.read_iops, c.read_iops),
        ("write_iops", l.write_iops, c.write_iops),
        ("read_bps", l.read_bps, c.read_bps),
        ("write_bps", l.write_bps, c.write_bps),
    ]
    .into_iter()
    .filter_map(|(k, lim, r)| lim.map(|lim| (k, lim as f64, r)))
    .collect()
}
