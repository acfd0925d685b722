//! Per-container metrics from the [`ContainerSnapshot`] (cgroup v1 and v2 counters, network of
//! the container's namespace) and the thread walk (threads in D per container). Labels come
//! from the cgroup path's shape only (`container_id` is validated hex, `runtime`, `pod_uid`,
//! `qos` from fixed sets), never from text a process inside the container can choose — except
//! interface names, which the container can rename: at most `MAX_INTERFACES` per container.
//! A container that vanished is not in the snapshot, so its series end with the next scrape.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType::{Counter, Gauge};
use prometheus_client::registry::Unit;
use stallwatch_collector::proc::pressure::Resource;
use stallwatch_collector::sample::containers::{ContainerRow, ContainerSnapshot};

use crate::node::Node;

use super::{family, ratio, single, Labels};

/// Interfaces exported per container (a container can create and name its own).
pub const MAX_INTERFACES: usize = 16;

#[derive(Debug)]
pub struct ContainersCollector {
    /// The joined node: containers, device names by major:minor, EBS volume ids by device
    /// name, D threads per container id.
    pub node: Arc<ArcSwap<Node>>,
}

fn base(r: &ContainerRow) -> Labels<'_> {
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

fn with<'a>(mut l: Labels<'a>, k: &'static str, v: Cow<'a, str>) -> Labels<'a> {
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
        let secs = Some(&Unit::Seconds);
        let bytes = Some(&Unit::Bytes);
        let rows = &s.containers;

        let mut by_runtime: HashMap<&'static str, u64> = HashMap::new();
        for r in rows {
            *by_runtime.entry(r.identity.runtime.as_str()).or_insert(0) += 1;
        }
        let mut rt: Vec<_> = by_runtime.into_iter().collect();
        rt.sort();
        family(
            &mut e,
            "containers",
            "Containers seen by the last pass, by runtime.",
            None,
            Gauge,
            rt.into_iter()
                .map(|(r, n)| (vec![("runtime", Cow::Borrowed(r))], n as f64)),
        )?;
        single(&mut e, "container_starts", "Container ids that appeared since the agent started (the first pass counts every container).", None, Counter, s.starts as f64)?;
        single(
            &mut e,
            "container_stops",
            "Container ids that vanished since the agent started.",
            None,
            Counter,
            s.stops as f64,
        )?;
        single(
            &mut e,
            "containers_dropped",
            "Containers found by the last pass but not read: over containers.max_containers.",
            None,
            Gauge,
            s.dropped as f64,
        )?;
        single(
            &mut e,
            "container_reads_dropped",
            "Containers not read because of containers.max_containers, summed over passes.",
            None,
            Counter,
            s.dropped_total as f64,
        )?;
        single(
            &mut e,
            "container_pass_interval",
            "The container pass cadence in force: containers.interval, stretched so that a pass's CPU stays under containers.max_cpu of one core.",
            secs,
            Gauge,
            s.current_interval.as_secs_f64(),
        )?;

        macro_rules! per {
            ($name:expr, $help:expr, $unit:expr, $ty:expr, $get:expr) => {
                family(
                    &mut e,
                    $name,
                    $help,
                    $unit,
                    $ty,
                    rows.iter()
                        .filter_map(|r| $get(r).map(|v: f64| (base(r), v))),
                )?
            };
        }
        per!(
            "container_cpu_user",
            "CPU time in user mode.",
            secs,
            Counter,
            |r: &ContainerRow| r.stats.cpu.user_seconds
        );
        per!(
            "container_cpu_system",
            "CPU time in kernel mode.",
            secs,
            Counter,
            |r: &ContainerRow| r.stats.cpu.system_seconds
        );
        per!(
            "container_cpu_usage",
            "Total CPU time.",
            secs,
            Counter,
            |r: &ContainerRow| r.stats.cpu.usage_seconds
        );
        per!(
            "container_cpu_periods",
            "CFS enforcement periods elapsed (0 without a CPU limit).",
            None,
            Counter,
            |r: &ContainerRow| r.stats.cpu.nr_periods.map(|v| v as f64)
        );
        per!(
            "container_cpu_throttled_periods",
            "CFS periods in which the container was throttled.",
            None,
            Counter,
            |r: &ContainerRow| r.stats.cpu.nr_throttled.map(|v| v as f64)
        );
        per!(
            "container_cpu_throttled",
            "Time the container was throttled by its CPU limit.",
            secs,
            Counter,
            |r: &ContainerRow| r.stats.cpu.throttled_seconds
        );
        per!(
            "container_memory_usage",
            "Memory charged to the container now (v1 usage_in_bytes, v2 memory.current).",
            bytes,
            Gauge,
            |r: &ContainerRow| r.stats.memory.usage_bytes.map(|v| v as f64)
        );
        per!(
            "container_memory_limit",
            "Memory limit; absent when unlimited.",
            bytes,
            Gauge,
            |r: &ContainerRow| r.stats.memory.limit_bytes.map(|v| v as f64)
        );
        per!(
            "container_memory_rss",
            "Anonymous memory (v1 rss, v2 anon).",
            bytes,
            Gauge,
            |r: &ContainerRow| r.stats.memory.rss_bytes.map(|v| v as f64)
        );
        per!(
            "container_memory_cache",
            "Page cache (v1 cache, v2 file).",
            bytes,
            Gauge,
            |r: &ContainerRow| r.stats.memory.cache_bytes.map(|v| v as f64)
        );
        per!(
            "container_memory_dirty",
            "Dirty page cache of the container.",
            bytes,
            Gauge,
            |r: &ContainerRow| r.stats.memory.dirty_bytes.map(|v| v as f64)
        );
        per!(
            "container_memory_writeback",
            "Page cache of the container under writeback.",
            bytes,
            Gauge,
            |r: &ContainerRow| r.stats.memory.writeback_bytes.map(|v| v as f64)
        );
        per!(
            "container_memory_major_faults",
            "Major page faults.",
            None,
            Counter,
            |r: &ContainerRow| r.stats.memory.major_faults.map(|v| v as f64)
        );
        per!(
            "container_oom_kills",
            "OOM kills in the container.",
            None,
            Counter,
            |r: &ContainerRow| r.stats.memory.oom_kills.map(|v| v as f64)
        );
        per!(
            "container_pids",
            "Tasks in the container.",
            None,
            Gauge,
            |r: &ContainerRow| r.stats.pids.map(|v| v as f64)
        );

        // Block I/O per device: names from diskstats (every device, joined by major:minor in
        // the node view), else "major:minor".
        let dev_name = |ma: u32, mi: u32| -> String {
            node.view
                .device_name(ma, mi)
                .map(str::to_string)
                .unwrap_or_else(|| format!("{ma}:{mi}"))
        };
        // The EBS volume behind a device, when the cloud side knows it: "which container is
        // spending this volume's burst credits" in one query.
        let io_rows: Vec<(
            &ContainerRow,
            String,
            Option<String>,
            &stallwatch_collector::cgroup::DeviceIo,
        )> = rows
            .iter()
            .flat_map(|r| r.stats.io.iter().flatten().map(move |d| (r, d)))
            .map(|(r, d)| {
                let dev = dev_name(d.major, d.minor);
                let vol = node.volume_of(&dev).map(str::to_string);
                (r, dev, vol, d)
            })
            .collect();
        macro_rules! io {
            ($name:expr, $help:expr, $unit:expr, $get:expr) => {
                family(
                    &mut e,
                    $name,
                    $help,
                    $unit,
                    Counter,
                    io_rows.iter().map(|(r, dev, vol, d)| {
                        let mut l = with(base(r), "device", Cow::Borrowed(dev.as_str()));
                        if let Some(v) = vol {
                            l.push(("volume_id", Cow::Borrowed(v.as_str())));
                        }
                        (l, $get(d) as f64)
                    }),
                )?
            };
        }
        io!(
            "container_io_read",
            "Bytes read by the container from the device (v1 blkio throttle stats, v2 io.stat).",
            bytes,
            |d: &stallwatch_collector::cgroup::DeviceIo| d.read_bytes
        );
        io!("container_io_written", "Bytes written by the container to the device (direct I/O only on cgroup v1: buffered writeback is charged to the flusher).", bytes, |d: &stallwatch_collector::cgroup::DeviceIo| d.write_bytes);
        io!(
            "container_io_reads",
            "Read operations of the container on the device.",
            None,
            |d: &stallwatch_collector::cgroup::DeviceIo| d.read_ops
        );
        io!(
            "container_io_writes",
            "Write operations of the container on the device.",
            None,
            |d: &stallwatch_collector::cgroup::DeviceIo| d.write_ops
        );

        // PSI per container (cgroup v2).
        let mut psi_total = Vec::new();
        let mut psi_avg10 = Vec::new();
        for r in rows {
            for res in Resource::CGROUP {
                if let Some(p) = &r.stats.pressure[res as usize] {
                    for (kind, rec) in [("some", p.some), ("full", p.full)] {
                        if let Some(rec) = rec {
                            let l = with(
                                with(base(r), "resource", Cow::Borrowed(res.as_str())),
                                "kind",
                                Cow::Borrowed(kind),
                            );
                            psi_total.push((l.clone(), rec.total_us as f64 / 1e6));
                            psi_avg10.push((l, rec.avg10));
                        }
                    }
                }
            }
        }
        family(
            &mut e,
            "container_pressure_stall",
            "Time the container's tasks were stalled on the resource (cgroup v2 PSI total).",
            secs,
            Counter,
            psi_total,
        )?;
        family(
            &mut e,
            "container_pressure_avg10",
            "Share of the last 10 s the container's tasks were stalled (cgroup v2 PSI avg10).",
            Some(&ratio()),
            Gauge,
            psi_avg10,
        )?;

        // Network, once per namespace (a pod's containers share one: it is reported on one).
        let net: Vec<(&ContainerRow, &stallwatch_collector::proc::net_dev::NetDev)> = rows
            .iter()
            .flat_map(|r| {
                r.network
                    .iter()
                    .flatten()
                    .filter(|d| d.name != "lo")
                    .take(MAX_INTERFACES)
                    .map(move |d| (r, d))
            })
            .collect();
        macro_rules! netm {
            ($name:expr, $help:expr, $unit:expr, $get:expr) => {
                family(
                    &mut e,
                    $name,
                    $help,
                    $unit,
                    Counter,
                    net.iter().map(|(r, d)| {
                        (
                            with(base(r), "interface", Cow::Borrowed(d.name.as_str())),
                            $get(d) as f64,
                        )
                    }),
                )?
            };
        }
        type N = stallwatch_collector::proc::net_dev::NetDev;
        netm!(
            "container_network_receive",
            "Bytes received on the interface of the container's network namespace.",
            bytes,
            |d: &N| d.rx_bytes
        );
        netm!(
            "container_network_transmit",
            "Bytes transmitted.",
            bytes,
            |d: &N| d.tx_bytes
        );
        netm!(
            "container_network_receive_packets",
            "Packets received.",
            None,
            |d: &N| d.rx_packets
        );
        netm!(
            "container_network_transmit_packets",
            "Packets transmitted.",
            None,
            |d: &N| d.tx_packets
        );
        netm!(
            "container_network_receive_errors",
            "Receive errors.",
            None,
            |d: &N| d.rx_errors
        );
        netm!(
            "container_network_transmit_errors",
            "Transmit errors.",
            None,
            |d: &N| d.tx_errors
        );
        netm!(
            "container_network_receive_drops",
            "Received packets dropped.",
            None,
            |d: &N| d.rx_drops
        );
        netm!(
            "container_network_transmit_drops",
            "Transmitted packets dropped.",
            None,
            |d: &N| d.tx_drops
        );

        // Threads in D per container: the walk identified each D thread's container, the
        // node view counted them per container id (exact, not a substring of the path).
        per!(
            "container_dstate_threads",
            "Threads of the container in D state at the last thread walk.",
            None,
            Gauge,
            |r: &ContainerRow| Some(node.view.dstate_threads_of(&r.identity.container_id) as f64)
        );
        Ok(())
    }
}
