//! Per-container metrics from the [`ContainerSnapshot`] (cgroup v1 and v2 counters, network of
//! the container's namespace) and the thread walk (threads in D per container). Labels come
//! from the cgroup path's shape only (`container_id` is validated hex, `runtime`, `pod_uid`,
//! `qos` from fixed sets), never from text a process inside the container can choose — except
//! interface names, which the container can rename: at most `MAX_INTERFACES` per container.
//! A container that vanished is not in the snapshot, so its series end with the next scrape.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use stallwatch_collector::cgroup::DeviceIo;
use stallwatch_collector::proc::net_dev::NetDev;
use stallwatch_collector::sample::containers::{ContainerRow, ContainerSnapshot};

use crate::node::Node;

use super::pressure::{records, CONTAINER_PSI};
use super::table::{counter, family, gauge, labelled, num, rows, Labels, Row};
use super::table::{BYTES, NONE, SECONDS};

/// Interfaces exported per container (a container can create and name its own).
pub const MAX_INTERFACES: usize = 16;

#[derive(Debug)]
pub struct ContainersCollector {
    /// The joined node: containers, device names by major:minor, EBS volume ids by device
    /// name, D threads per container id.
    pub node: Arc<ArcSwap<Node>>,
}

/// The pass itself (`collector/src/sample/containers.rs`).
pub const PASS: &[Row<ContainerSnapshot>] = &[
    counter(
        "container_starts",
        "Container ids that appeared since the agent started (the first pass counts every container).",
        NONE,
        |s| Some(s.starts as f64),
    ),
    counter(
        "container_stops",
        "Container ids that vanished since the agent started.",
        NONE,
        |s| Some(s.stops as f64),
    ),
    gauge(
        "containers_dropped",
        "Containers found by the last pass but not read: over containers.max_containers.",
        NONE,
        |s| Some(s.dropped as f64),
    ),
    counter(
        "container_reads_dropped",
        "Containers not read because of containers.max_containers, summed over passes.",
        NONE,
        |s| Some(s.dropped_total as f64),
    ),
    gauge(
        "container_pass_interval",
        "The container pass cadence in force: containers.interval, stretched so that a pass's CPU stays under containers.max_cpu of one core.",
        SECONDS,
        |s| Some(s.current_interval.as_secs_f64()),
    ),
];

/// One container's cgroup counters (`collector/src/cgroup/v1.rs`, `v2.rs`).
pub const CONTAINER: &[Row<ContainerRow>] = &[
    counter(
        "container_cpu_user",
        "CPU time in user mode.",
        SECONDS,
        |r| r.stats.cpu.user_seconds,
    ),
    counter(
        "container_cpu_system",
        "CPU time in kernel mode.",
        SECONDS,
        |r| r.stats.cpu.system_seconds,
    ),
    counter("container_cpu_usage", "Total CPU time.", SECONDS, |r| {
        r.stats.cpu.usage_seconds
    }),
    counter(
        "container_cpu_periods",
        "CFS enforcement periods elapsed (0 without a CPU limit).",
        NONE,
        |r| num(r.stats.cpu.nr_periods),
    ),
    counter(
        "container_cpu_throttled_periods",
        "CFS periods in which the container was throttled.",
        NONE,
        |r| num(r.stats.cpu.nr_throttled),
    ),
    counter(
        "container_cpu_throttled",
        "Time the container was throttled by its CPU limit.",
        SECONDS,
        |r| r.stats.cpu.throttled_seconds,
    ),
    gauge(
        "container_memory_usage",
        "Memory charged to the container now (v1 usage_in_bytes, v2 memory.current).",
        BYTES,
        |r| num(r.stats.memory.usage_bytes),
    ),
    gauge(
        "container_memory_limit",
        "Memory limit; absent when unlimited.",
        BYTES,
        |r| num(r.stats.memory.limit_bytes),
    ),
    gauge(
        "container_memory_rss",
        "Anonymous memory (v1 rss, v2 anon).",
        BYTES,
        |r| num(r.stats.memory.rss_bytes),
    ),
    gauge(
        "container_memory_cache",
        "Page cache (v1 cache, v2 file).",
        BYTES,
        |r| num(r.stats.memory.cache_bytes),
    ),
    gauge(
        "container_memory_dirty",
        "Dirty page cache of the container.",
        BYTES,
        |r| num(r.stats.memory.dirty_bytes),
    ),
    gauge(
        "container_memory_writeback",
        "Page cache of the container under writeback.",
        BYTES,
        |r| num(r.stats.memory.writeback_bytes),
    ),
    counter(
        "container_memory_major_faults",
        "Major page faults.",
        NONE,
        |r| num(r.stats.memory.major_faults),
    ),
    counter(
        "container_oom_kills",
        "OOM kills in the container.",
        NONE,
        |r| num(r.stats.memory.oom_kills),
    ),
    gauge("container_pids", "Tasks in the container.", NONE, |r| {
        num(r.stats.pids)
    }),
];

/// Block I/O of a container on one device (v1 blkio throttle statistics, v2 `io.stat`).
pub const IO: &[Row<DeviceIo>] = &[
    counter(
        "container_io_read",
        "Bytes read by the container from the device (v1 blkio throttle stats, v2 io.stat).",
        BYTES,
        |d| Some(d.read_bytes as f64),
    ),
    counter(
        "container_io_written",
        "Bytes written by the container to the device (direct I/O only on cgroup v1: buffered writeback is charged to the flusher).",
        BYTES,
        |d| Some(d.write_bytes as f64),
    ),
    counter(
        "container_io_reads",
        "Read operations of the container on the device.",
        NONE,
        |d| Some(d.read_ops as f64),
    ),
    counter(
        "container_io_writes",
        "Write operations of the container on the device.",
        NONE,
        |d| Some(d.write_ops as f64),
    ),
];

/// One interface of the container's network namespace (`collector/src/proc/net_dev.rs`).
pub const NETWORK: &[Row<NetDev>] = &[
    counter(
        "container_network_receive",
        "Bytes received on the interface of the container's network namespace.",
        BYTES,
        |d| Some(d.rx_bytes as f64),
    ),
    counter(
        "container_network_transmit",
        "Bytes transmitted.",
        BYTES,
        |d| Some(d.tx_bytes as f64),
    ),
    counter(
        "container_network_receive_packets",
        "Packets received.",
        NONE,
        |d| Some(d.rx_packets as f64),
    ),
    counter(
        "container_network_transmit_packets",
        "Packets transmitted.",
        NONE,
        |d| Some(d.tx_packets as f64),
    ),
    counter(
        "container_network_receive_errors",
        "Receive errors.",
        NONE,
        |d| Some(d.rx_errors as f64),
    ),
    counter(
        "container_network_transmit_errors",
        "Transmit errors.",
        NONE,
        |d| Some(d.tx_errors as f64),
    ),
    counter(
        "container_network_receive_drops",
        "Received packets dropped.",
        NONE,
        |d| Some(d.rx_drops as f64),
    ),
    counter(
        "container_network_transmit_drops",
        "Transmitted packets dropped.",
        NONE,
        |d| Some(d.tx_drops as f64),
    ),
];

/// The labels of every row of a container.
pub(super) fn base(r: &ContainerRow) -> Labels<'_> {
    let id = &r.identity;
    let mut l: Labels<'_> = vec![
        ("container_id", Cow::Borrowed(id.container_id.as_str())),
        ("runtime", Cow::Borrowed(id.runtime.as_str())),
    ];
    if let Some(p) = &id.pod_uid {
        l.push(("pod_uid", Cow::Borrowed(p.as_str())));
    }
    if let Some(q) = id.qos {
        l.push(("qos", Cow::Borrowed(q.as_str())));
    }
    if let Some(n) = &r.name {
        l.push(("name", Cow::Borrowed(n.as_str())));
    }
    l
}

/// A device's label: its name from the node's devices (every device of the diskstats read),
/// else "major:minor".
fn device(node: &Node, major: u32, minor: u32) -> Cow<'_, str> {
    node.view
        .device_name(major, minor)
        .map_or_else(|| Cow::Owned(format!("{major}:{minor}")), Cow::Borrowed)
}

fn with<'a>(l: &Labels<'a>, k: &'static str, v: Cow<'a, str>) -> Labels<'a> {
    let mut l = l.clone();
    l.push((k, v));
    l
}

impl Collector for ContainersCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let node = self.node.load();
        let s: &ContainerSnapshot = &node.view.containers;
        if !s.enabled || s.taken.is_none() {
            return Ok(());
        }
        let e = &mut e;
        let cs: &[ContainerRow] = &s.containers;
        let bases: Vec<Labels<'_>> = cs.iter().map(base).collect();

        let mut by_runtime: BTreeMap<&'static str, u64> = BTreeMap::new();
        for r in cs {
            *by_runtime.entry(r.identity.runtime.as_str()).or_insert(0) += 1;
        }
        family(
            e,
            "containers",
            "Containers seen by the last pass, by runtime.",
            NONE,
            MetricType::Gauge,
            by_runtime
                .into_iter()
                .map(|(r, n)| ([("runtime", r)], n as f64)),
        )?;
        rows(e, PASS, s)?;

        let each: Vec<_> = bases.iter().cloned().zip(cs).collect();
        labelled(e, CONTAINER, &each)?;

        // Block I/O per device, named from the node's devices (every device of the diskstats
        // read, joined by major:minor), else "major:minor", with the EBS volume behind the
        // name when the cloud side knows it: "which container spends this volume's burst
        // credits" in one query.
        let mut io = Vec::new();
        for (b, r) in bases.iter().zip(cs) {
            for d in r.stats.io.iter().flatten() {
                let dev = device(&node, d.major, d.minor);
                let vol = node.volume_of(&dev).map(Cow::Borrowed);
                let mut l = with(b, "device", dev);
                if let Some(v) = vol {
                    l.push(("volume_id", v));
                }
                io.push((l, d));
            }
        }
        labelled(e, IO, &io)?;

        // I/O limits (blk-throttle: v1 blkio.throttle.*_device, v2 io.max), only for the
        // devices a container is limited on: "is this container at its limit" is
        // rate(container_*_ops_total) against these.
        let mut limits = Vec::new();
        for (b, r) in bases.iter().zip(cs) {
            for l in r.stats.io_limits.iter().flatten() {
                let l_dev = with(b, "device", device(&node, l.major, l.minor));
                for (kind, v) in [
                    ("read_bps", l.read_bps),
                    ("write_bps", l.write_bps),
                    ("read_iops", l.read_iops),
                    ("write_iops", l.write_iops),
                ] {
                    if let Some(v) = v {
                        limits.push((with(&l_dev, "kind", Cow::Borrowed(kind)), v as f64));
                    }
                }
            }
        }
        family(
            e,
            "container_io_limit",
            "I/O limit of the container on the device: bytes per second (kind read_bps, write_bps) or operations per second (read_iops, write_iops); only limits that are set.",
            NONE,
            MetricType::Gauge,
            limits.iter().map(|(l, v)| (l.as_slice(), *v)),
        )?;

        let psi: Vec<_> = bases
            .iter()
            .zip(cs)
            .flat_map(|(b, r)| records(&r.stats.pressure, b))
            .collect();
        labelled(e, CONTAINER_PSI, &psi)?;

        // Network, once per namespace (a pod's containers share one: it is reported on one).
        let mut net = Vec::new();
        for (b, r) in bases.iter().zip(cs) {
            let ifaces = r.network.iter().flatten().filter(|d| d.name != "lo");
            for d in ifaces.take(MAX_INTERFACES) {
                net.push((with(b, "interface", Cow::Borrowed(d.name.as_str())), d));
            }
        }
        labelled(e, NETWORK, &net)?;

        // The walk identified each D thread's container; the node view counted them per
        // container id (exact, not a substring of the path).
        family(
            e,
            "container_dstate_threads",
            "Threads of the container in D state at the last thread walk.",
            NONE,
            MetricType::Gauge,
            bases.iter().zip(cs).map(|(b, r)| {
                let n = node.view.dstate_threads_of(&r.identity.container_id);
                (b.as_slice(), n as f64)
            }),
        )
    }
}
