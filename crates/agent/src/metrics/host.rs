//! Host metrics from the [`HostSnapshot`]: `/proc/stat`, loadavg, PSI, meminfo, vmstat,
//! diskstats, `vm.dirty_*`, and the between-scrape peaks and integrals. Names and meanings are
//! listed in docs/metrics.md.

use std::borrow::Cow;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType::{Counter, Gauge};
use prometheus_client::registry::Unit;
use stallwatch_collector::node::NodeView;
use stallwatch_collector::proc::diskstats::{DiskStat, SECTOR_BYTES};
use stallwatch_collector::proc::pressure::Resource;
use stallwatch_collector::sample::HostSnapshot;

use crate::node::Node;

use super::{family, opt, ratio, single, Labels};

#[derive(Debug)]
pub struct HostCollector {
    pub node: Arc<ArcSwap<Node>>,
}

fn f(v: Option<u64>) -> Option<f64> {
    v.map(|v| v as f64)
}

impl Collector for HostCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let node = self.node.load();
        let s: &HostSnapshot = &node.view.host;
        let secs = Some(&Unit::Seconds);
        let bytes = Some(&Unit::Bytes);
        let ratio = ratio();

        // /proc/stat
        if let Some(st) = &s.stat {
            opt(
                &mut e,
                "procs_blocked",
                "Tasks blocked on I/O now (procs_blocked of /proc/stat).",
                None,
                Gauge,
                f(st.procs_blocked),
            )?;
            opt(
                &mut e,
                "procs_running",
                "Tasks runnable now (procs_running of /proc/stat).",
                None,
                Gauge,
                f(st.procs_running),
            )?;
            opt(
                &mut e,
                "context_switches",
                "Context switches since boot.",
                None,
                Counter,
                f(st.ctxt),
            )?;
            opt(
                &mut e,
                "forks",
                "Processes and threads created since boot.",
                None,
                Counter,
                f(st.forks),
            )?;
            opt(
                &mut e,
                "boot_time",
                "Boot time, seconds since the epoch.",
                secs,
                Gauge,
                f(st.btime),
            )?;
            if let Some(cpu) = st.cpu {
                let hz = s.clock_ticks.max(1) as f64;
                family(
                    &mut e,
                    "cpu",
                    "CPU time of all CPUs by mode (iowait and steal included).",
                    secs,
                    Counter,
                    cpu.modes().map(|(m, t)| (vec![("mode", m)], t as f64 / hz)),
                )?;
            }
        }
        opt(
            &mut e,
            "procs_blocked_peak",
            "Maximum procs_blocked seen over the peak window.",
            None,
            Gauge,
            s.peaks.procs_blocked,
        )?;
        if s.stat.as_ref().is_some_and(|st| st.procs_blocked.is_some()) {
            single(&mut e, "procs_blocked", "Integral of procs_blocked over time: blocked-task-seconds, sampled every interval.", secs, Counter, s.integrals.procs_blocked_seconds)?;
        }

        // /proc/loadavg
        if let Some(l) = &s.loadavg {
            single(
                &mut e,
                "load1",
                "1-minute load average (runnable plus D-state tasks).",
                None,
                Gauge,
                l.load1,
            )?;
            single(
                &mut e,
                "load5",
                "5-minute load average.",
                None,
                Gauge,
                l.load5,
            )?;
            single(
                &mut e,
                "load15",
                "15-minute load average.",
                None,
                Gauge,
                l.load15,
            )?;
            single(
                &mut e,
                "sched_runnable_entities",
                "Runnable scheduling entities now (loadavg).",
                None,
                Gauge,
                l.runnable as f64,
            )?;
            single(
                &mut e,
                "sched_entities",
                "Scheduling entities that exist now (loadavg).",
                None,
                Gauge,
                l.entities as f64,
            )?;
        }

        // /proc/pressure/*
        let psi_rows = |pick: &dyn Fn(&stallwatch_collector::proc::pressure::Record) -> f64| {
            let mut rows: Vec<(Labels<'static>, f64)> = Vec::new();
            for r in Resource::ALL {
                if let Some(p) = &s.pressure[r as usize] {
                    for (kind, rec) in [("some", p.some), ("full", p.full)] {
                        if let Some(rec) = rec {
                            rows.push((
                                vec![
                                    ("resource", Cow::Borrowed(r.as_str())),
                                    ("kind", Cow::Borrowed(kind)),
                                ],
                                pick(&rec),
                            ));
                        }
                    }
                }
            }
            rows
        };
        family(
            &mut e,
            "pressure_stall",
            "Total time tasks were stalled on the resource (PSI total).",
            secs,
            Counter,
            psi_rows(&|r| r.total_us as f64 / 1e6),
        )?;
        family(
            &mut e,
            "pressure_avg10",
            "Share of the last 10 s tasks were stalled (PSI avg10).",
            Some(&ratio),
            Gauge,
            psi_rows(&|r| r.avg10),
        )?;
        family(
            &mut e,
            "pressure_avg60",
            "Share of the last 60 s tasks were stalled (PSI avg60).",
            Some(&ratio),
            Gauge,
            psi_rows(&|r| r.avg60),
        )?;
        family(
            &mut e,
            "pressure_avg300",
            "Share of the last 300 s tasks were stalled (PSI avg300).",
            Some(&ratio),
            Gauge,
            psi_rows(&|r| r.avg300),
        )?;
        let mut peak_rows: Vec<(Labels<'static>, f64)> = Vec::new();
        for r in Resource::ALL {
            for (k, kind) in ["some", "full"].into_iter().enumerate() {
                if let Some(v) = s.peaks.psi_avg10[r as usize][k] {
                    peak_rows.push((
                        vec![
                            ("resource", Cow::Borrowed(r.as_str())),
                            ("kind", Cow::Borrowed(kind)),
                        ],
                        v,
                    ));
                }
            }
        }
        family(
            &mut e,
            "pressure_avg10_peak",
            "Maximum PSI avg10 seen over the peak window.",
            Some(&ratio),
            Gauge,
            peak_rows,
        )?;

        // /proc/meminfo
        if let Some(m) = &s.meminfo {
            for (stem, v) in m.fields() {
                let (name, help) = meminfo_metric(stem);
                single(&mut e, name, help, bytes, Gauge, v as f64)?;
            }
        }
        opt(
            &mut e,
            "memory_dirty_peak",
            "Maximum Dirty seen over the peak window.",
            bytes,
            Gauge,
            s.peaks.dirty_bytes,
        )?;
        opt(
            &mut e,
            "memory_writeback_peak",
            "Maximum Writeback seen over the peak window.",
            bytes,
            Gauge,
            s.peaks.writeback_bytes,
        )?;

        // /proc/vmstat
        if let Some(v) = &s.vmstat {
            let page = s.page_size as f64;
            opt(
                &mut e,
                "vm_dirtied_pages",
                "Pages dirtied since boot (nr_dirtied).",
                None,
                Counter,
                f(v.nr_dirtied),
            )?;
            opt(
                &mut e,
                "vm_written_pages",
                "Pages written back since boot (nr_written).",
                None,
                Counter,
                f(v.nr_written),
            )?;
            opt(
                &mut e,
                "dirty_threshold",
                "Dirty memory at which writers are throttled (nr_dirty_threshold).",
                bytes,
                Gauge,
                f(v.nr_dirty_threshold).map(|p| p * page),
            )?;
            opt(&mut e, "dirty_background_threshold", "Dirty memory at which background writeback starts (nr_dirty_background_threshold).", bytes, Gauge, f(v.nr_dirty_background_threshold).map(|p| p * page))?;
            opt(
                &mut e,
                "vm_page_faults",
                "Page faults since boot (pgfault).",
                None,
                Counter,
                f(v.pgfault),
            )?;
            opt(
                &mut e,
                "vm_major_faults",
                "Major page faults, which needed I/O, since boot (pgmajfault).",
                None,
                Counter,
                f(v.pgmajfault),
            )?;
            opt(
                &mut e,
                "vm_swapped_in_pages",
                "Pages swapped in since boot (pswpin).",
                None,
                Counter,
                f(v.pswpin),
            )?;
            opt(
                &mut e,
                "vm_swapped_out_pages",
                "Pages swapped out since boot (pswpout).",
                None,
                Counter,
                f(v.pswpout),
            )?;
            opt(
                &mut e,
                "vm_oom_kills",
                "OOM kills since boot (oom_kill).",
                None,
                Counter,
                f(v.oom_kill),
            )?;
        }

        // between-scrape integrals of writeback
        if s.meminfo.is_some() {
            if s.vmstat
                .is_some_and(|v| v.nr_dirty_background_threshold.is_some())
            {
                single(
                    &mut e,
                    "dirty_over_background",
                    "Time Dirty was above the kernel's background threshold (flushers busy).",
                    secs,
                    Counter,
                    s.integrals.dirty_over_background_seconds,
                )?;
            }
            if s.burst_threshold_bytes.is_some() {
                single(
                    &mut e,
                    "writeback_bursts",
                    "Episodes of Writeback above the burst threshold.",
                    None,
                    Counter,
                    s.integrals.writeback_bursts as f64,
                )?;
                single(
                    &mut e,
                    "writeback_burst",
                    "Time Writeback was above the burst threshold.",
                    secs,
                    Counter,
                    s.integrals.writeback_burst_seconds,
                )?;
            }
        }
        opt(
            &mut e,
            "writeback_burst_threshold",
            "Writeback level that counts as a burst (config writeback.burst_threshold).",
            bytes,
            Gauge,
            f(s.burst_threshold_bytes),
        )?;

        // /proc/sys/vm/dirty_*
        if let Some(t) = &s.tunables {
            opt(
                &mut e,
                "vm_dirty_ratio",
                "vm.dirty_ratio as a ratio (0 when dirty_bytes is used).",
                None,
                Gauge,
                f(t.dirty_ratio).map(|v| v / 100.0),
            )?;
            opt(
                &mut e,
                "vm_dirty_background_ratio",
                "vm.dirty_background_ratio as a ratio.",
                None,
                Gauge,
                f(t.dirty_background_ratio).map(|v| v / 100.0),
            )?;
            opt(
                &mut e,
                "vm_dirty",
                "vm.dirty_bytes (0 when dirty_ratio is used).",
                bytes,
                Gauge,
                f(t.dirty_bytes),
            )?;
            opt(
                &mut e,
                "vm_dirty_background",
                "vm.dirty_background_bytes.",
                bytes,
                Gauge,
                f(t.dirty_background_bytes),
            )?;
            opt(
                &mut e,
                "vm_dirty_expire",
                "vm.dirty_expire_centisecs: age at which dirty data is written back.",
                secs,
                Gauge,
                f(t.dirty_expire_centisecs).map(|v| v / 100.0),
            )?;
            opt(
                &mut e,
                "vm_dirty_writeback_interval",
                "vm.dirty_writeback_centisecs: flusher wake-up interval.",
                secs,
                Gauge,
                f(t.dirty_writeback_centisecs).map(|v| v / 100.0),
            )?;
            opt(
                &mut e,
                "vm_dirtytime_expire",
                "vm.dirtytime_expire_seconds.",
                secs,
                Gauge,
                f(t.dirtytime_expire_seconds),
            )?;
        }

        encode_disks(&mut e, &s.disks)?;
        encode_bdi(&mut e, s, &node.view)?;
        if let Some(o) = &s.overlays {
            family(
                &mut e,
                "overlay_mounts",
                "Overlay mounts now, by the device holding their upper directory (what an unmount's syncfs flushes).",
                None,
                Gauge,
                o.iter().map(|(d, n)| (vec![("upper_device", Cow::Borrowed(d.as_str()))], *n as f64)),
            )?;
        }
        Ok(())
    }
}

fn meminfo_metric(stem: &str) -> (&'static str, &'static str) {
    match stem {
        "total" => ("memory_total", "MemTotal of /proc/meminfo."),
        "free" => ("memory_free", "MemFree of /proc/meminfo."),
        "available" => ("memory_available", "MemAvailable of /proc/meminfo."),
        "buffers" => ("memory_buffers", "Buffers of /proc/meminfo."),
        "cached" => ("memory_cached", "Cached (page cache) of /proc/meminfo."),
        "swap_cached" => ("memory_swap_cached", "SwapCached of /proc/meminfo."),
        "dirty" => (
            "memory_dirty",
            "Dirty of /proc/meminfo: data waiting to be written back.",
        ),
        "writeback" => (
            "memory_writeback",
            "Writeback of /proc/meminfo: data being written back now.",
        ),
        "writeback_tmp" => (
            "memory_writeback_tmp",
            "WritebackTmp of /proc/meminfo (FUSE).",
        ),
        "shmem" => ("memory_shmem", "Shmem of /proc/meminfo."),
        "swap_total" => ("memory_swap_total", "SwapTotal of /proc/meminfo."),
        "swap_free" => ("memory_swap_free", "SwapFree of /proc/meminfo."),
        _ => ("memory_unknown", "Unknown meminfo field."),
    }
}

/// Per-device writeback limits (`/sys/class/bdi/<maj:min>`), for the exported disks only.
fn encode_bdi(
    e: &mut DescriptorEncoder<'_>,
    s: &HostSnapshot,
    view: &NodeView,
) -> std::fmt::Result {
    let rows: Vec<(&DiskStat, &stallwatch_collector::sys::bdi::Bdi)> = s
        .disks
        .iter()
        .filter_map(|d| {
            let dev = view.devices.get(&(d.major, d.minor))?;
            dev.bdi.as_ref().map(|b| (d, b))
        })
        .collect();
    let dev = |d: &DiskStat| -> Labels<'static> { vec![("device", Cow::Owned(d.name.clone()))] };
    let ratio = ratio();
    family(
        e,
        "bdi_min",
        "Share of the dirty threshold reserved for the device (bdi min_ratio).",
        Some(&ratio),
        Gauge,
        rows.iter()
            .filter_map(|(d, b)| b.min_ratio.map(|v| (dev(d), v as f64 / 100.0))),
    )?;
    family(
        e,
        "bdi_max",
        "Share of the dirty threshold the device may use at most (bdi max_ratio).",
        Some(&ratio),
        Gauge,
        rows.iter()
            .filter_map(|(d, b)| b.max_ratio.map(|v| (dev(d), v as f64 / 100.0))),
    )?;
    family(
        e,
        "bdi_max",
        "Dirty bytes the device may hold at most (bdi max_bytes, kernel >= 6.2).",
        Some(&Unit::Bytes),
        Gauge,
        rows.iter()
            .filter_map(|(d, b)| b.max_bytes.map(|v| (dev(d), v as f64))),
    )?;
    family(
        e,
        "bdi_strict_limit",
        "1 when the device's limit applies even below the background threshold (bdi strict_limit).",
        None,
        Gauge,
        rows.iter()
            .filter_map(|(d, b)| b.strict_limit.map(|v| (dev(d), v as f64))),
    )?;
    family(
        e,
        "bdi_read_ahead",
        "Read-ahead window of the device (bdi read_ahead_kb).",
        Some(&Unit::Bytes),
        Gauge,
        rows.iter()
            .filter_map(|(d, b)| b.read_ahead_kb.map(|v| (dev(d), v as f64 * 1024.0))),
    )?;
    Ok(())
}

fn encode_disks(e: &mut DescriptorEncoder<'_>, disks: &[DiskStat]) -> std::fmt::Result {
    let secs = Some(&Unit::Seconds);
    let bytes = Some(&Unit::Bytes);
    fn dev(d: &DiskStat) -> Labels<'_> {
        vec![("device", Cow::Borrowed(d.name.as_str()))]
    }
    let ms = |v: u64| v as f64 / 1000.0;
    let sec = |v: u64| (v * SECTOR_BYTES) as f64;
    macro_rules! disk {
        ($name:expr, $help:expr, $unit:expr, $ty:expr, $val:expr) => {
            family(
                e,
                $name,
                $help,
                $unit,
                $ty,
                disks.iter().filter_map(|d| $val(d).map(|v| (dev(d), v))),
            )?
        };
    }
    disk!(
        "disk_reads_completed",
        "Reads completed.",
        None,
        Counter,
        |d: &DiskStat| Some(d.reads_completed as f64)
    );
    disk!(
        "disk_reads_merged",
        "Adjacent reads merged.",
        None,
        Counter,
        |d: &DiskStat| Some(d.reads_merged as f64)
    );
    disk!(
        "disk_read",
        "Bytes read.",
        bytes,
        Counter,
        |d: &DiskStat| Some(sec(d.sectors_read))
    );
    disk!(
        "disk_read_time",
        "Time spent on reads (sum over requests).",
        secs,
        Counter,
        |d: &DiskStat| Some(ms(d.read_time_ms))
    );
    disk!(
        "disk_writes_completed",
        "Writes completed.",
        None,
        Counter,
        |d: &DiskStat| Some(d.writes_completed as f64)
    );
    disk!(
        "disk_writes_merged",
        "Adjacent writes merged.",
        None,
        Counter,
        |d: &DiskStat| Some(d.writes_merged as f64)
    );
    disk!(
        "disk_written",
        "Bytes written.",
        bytes,
        Counter,
        |d: &DiskStat| Some(sec(d.sectors_written))
    );
    disk!(
        "disk_write_time",
        "Time spent on writes (sum over requests).",
        secs,
        Counter,
        |d: &DiskStat| Some(ms(d.write_time_ms))
    );
    disk!(
        "disk_io_in_progress",
        "I/Os in flight now.",
        None,
        Gauge,
        |d: &DiskStat| Some(d.in_progress as f64)
    );
    disk!(
        "disk_io_time",
        "Time the device had I/O in flight (utilisation when rated).",
        secs,
        Counter,
        |d: &DiskStat| Some(ms(d.io_time_ms))
    );
    disk!(
        "disk_io_time_weighted",
        "In-flight count integrated over time (average queue depth when rated).",
        secs,
        Counter,
        |d: &DiskStat| Some(ms(d.weighted_io_time_ms))
    );
    disk!(
        "disk_discards_completed",
        "Discards completed (kernel >= 4.18).",
        None,
        Counter,
        |d: &DiskStat| d.discard.map(|x| x.completed as f64)
    );
    disk!(
        "disk_discards_merged",
        "Discards merged (kernel >= 4.18).",
        None,
        Counter,
        |d: &DiskStat| d.discard.map(|x| x.merged as f64)
    );
    disk!(
        "disk_discarded",
        "Bytes discarded (kernel >= 4.18).",
        bytes,
        Counter,
        |d: &DiskStat| d.discard.map(|x| sec(x.sectors))
    );
    disk!(
        "disk_discard_time",
        "Time spent on discards (kernel >= 4.18).",
        secs,
        Counter,
        |d: &DiskStat| d.discard.map(|x| ms(x.time_ms))
    );
    disk!(
        "disk_flush_requests",
        "Flush requests completed (kernel >= 5.5).",
        None,
        Counter,
        |d: &DiskStat| d.flush.map(|x| x.completed as f64)
    );
    disk!(
        "disk_flush_requests_time",
        "Time spent on flush requests (kernel >= 5.5).",
        secs,
        Counter,
        |d: &DiskStat| d.flush.map(|x| ms(x.time_ms))
    );
    Ok(())
}
