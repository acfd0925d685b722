//! Disks: `/proc/diskstats` per exported device, each device's writeback limits
//! (`/sys/class/bdi/<major>:<minor>`), and overlay mounts by the device of their upper
//! directory. Label `device` is the kernel's name.

use std::borrow::Cow;

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use stallwatch_collector::node::NodeView;
use stallwatch_collector::proc::diskstats::{DiskStat, SECTOR_BYTES};
use stallwatch_collector::sample::HostSnapshot;
use stallwatch_collector::sys::bdi::Bdi;

use super::table::{
    counter, family, gauge, labelled, num, Labels, Row, BYTES, NONE, RATIO, SECONDS,
};

/// Kernel milliseconds → seconds.
fn ms(v: u64) -> f64 {
    v as f64 / 1000.0
}

/// 512-byte sectors → bytes (a power-of-two scale: exact in f64, and no u64 overflow).
fn sectors(v: u64) -> f64 {
    v as f64 * SECTOR_BYTES as f64
}

/// `/proc/diskstats` (`collector/src/proc/diskstats.rs`), one field per row in the kernel's
/// order (admin-guide/iostats.rst fields 1–17).
pub const DISK: &[Row<DiskStat>] = &[
    counter("disk_reads_completed", "Reads completed.", NONE, |d| {
        Some(d.reads_completed as f64)
    }),
    counter("disk_reads_merged", "Adjacent reads merged.", NONE, |d| {
        Some(d.reads_merged as f64)
    }),
    counter("disk_read", "Bytes read.", BYTES, |d| {
        Some(sectors(d.sectors_read))
    }),
    counter(
        "disk_read_time",
        "Time spent on reads (sum over requests).",
        SECONDS,
        |d| Some(ms(d.read_time_ms)),
    ),
    counter("disk_writes_completed", "Writes completed.", NONE, |d| {
        Some(d.writes_completed as f64)
    }),
    counter("disk_writes_merged", "Adjacent writes merged.", NONE, |d| {
        Some(d.writes_merged as f64)
    }),
    counter("disk_written", "Bytes written.", BYTES, |d| {
        Some(sectors(d.sectors_written))
    }),
    counter(
        "disk_write_time",
        "Time spent on writes (sum over requests).",
        SECONDS,
        |d| Some(ms(d.write_time_ms)),
    ),
    gauge("disk_io_in_progress", "I/Os in flight now.", NONE, |d| {
        Some(d.in_progress as f64)
    }),
    counter(
        "disk_io_time",
        "Time the device had I/O in flight (utilisation when rated).",
        SECONDS,
        |d| Some(ms(d.io_time_ms)),
    ),
    counter(
        "disk_io_time_weighted",
        "In-flight count integrated over time (average queue depth when rated).",
        SECONDS,
        |d| Some(ms(d.weighted_io_time_ms)),
    ),
    counter(
        "disk_discards_completed",
        "Discards completed (kernel >= 4.18).",
        NONE,
        |d| d.discard.map(|x| x.completed as f64),
    ),
    counter(
        "disk_discards_merged",
        "Discards merged (kernel >= 4.18).",
        NONE,
        |d| d.discard.map(|x| x.merged as f64),
    ),
    counter(
        "disk_discarded",
        "Bytes discarded (kernel >= 4.18).",
        BYTES,
        |d| d.discard.map(|x| sectors(x.sectors)),
    ),
    counter(
        "disk_discard_time",
        "Time spent on discards (kernel >= 4.18).",
        SECONDS,
        |d| d.discard.map(|x| ms(x.time_ms)),
    ),
    counter(
        "disk_flush_requests",
        "Flush requests completed (kernel >= 5.5).",
        NONE,
        |d| d.flush.map(|x| x.completed as f64),
    ),
    counter(
        "disk_flush_requests_time",
        "Time spent on flush requests (kernel >= 5.5).",
        SECONDS,
        |d| d.flush.map(|x| ms(x.time_ms)),
    ),
];

/// `/sys/class/bdi/<major>:<minor>/` (`collector/src/sys/bdi.rs`).
pub const BDI: &[Row<Bdi>] = &[
    gauge(
        "bdi_min",
        "Share of the dirty threshold reserved for the device (bdi min_ratio).",
        RATIO,
        |b| num(b.min_ratio).map(|v| v / 100.0),
    ),
    gauge(
        "bdi_max",
        "Share of the dirty threshold the device may use at most (bdi max_ratio).",
        RATIO,
        |b| num(b.max_ratio).map(|v| v / 100.0),
    ),
    gauge(
        "bdi_max",
        "Dirty bytes the device may hold at most (bdi max_bytes, kernel >= 6.2).",
        BYTES,
        |b| num(b.max_bytes),
    ),
    gauge(
        "bdi_strict_limit",
        "1 when the device's limit applies even below the background threshold (bdi strict_limit).",
        NONE,
        |b| num(b.strict_limit),
    ),
    gauge(
        "bdi_read_ahead",
        "Read-ahead window of the device (bdi read_ahead_kb).",
        BYTES,
        |b| num(b.read_ahead_kb).map(|v| v * 1024.0),
    ),
];

fn device(name: &str) -> Labels<'_> {
    vec![("device", Cow::Borrowed(name))]
}

/// The exported disks of the host snapshot; the writeback settings of each come from the node
/// view's devices (joined by major:minor), so disks the `[disks]` filter hides get no `bdi_*`
/// rows.
pub fn encode(e: &mut DescriptorEncoder<'_>, view: &NodeView) -> std::fmt::Result {
    let s = &view.host;
    let disks: Vec<_> = s.disks.iter().map(|d| (device(&d.name), d)).collect();
    labelled(e, DISK, &disks)?;
    let bdi: Vec<(Labels<'_>, &Bdi)> = s
        .disks
        .iter()
        .filter_map(|d| {
            let b = view.devices.get(&(d.major, d.minor))?.bdi.as_ref()?;
            Some((device(&d.name), b))
        })
        .collect();
    labelled(e, BDI, &bdi)?;
    stalls(e, s)?;
    if let Some(o) = &s.overlays {
        family(
            e,
            "overlay_mounts",
            "Overlay mounts now, by the device holding their upper directory (what an unmount's syncfs flushes).",
            NONE,
            MetricType::Gauge,
            o.iter()
                .map(|d| ([("upper_device", d.device.as_str())], d.mounts as f64)),
        )?;
        family(
            e,
            "overlay_volatile_mounts",
            "Overlay mounts now mounted volatile, by the device holding their upper directory (their unmount syncs nothing).",
            NONE,
            MetricType::Gauge,
            o.iter()
                .map(|d| ([("upper_device", d.device.as_str())], d.volatile as f64)),
        )?;
    }
    Ok(())
}

/// "I/O in flight and nothing completing" per exported disk (`collector/src/sample/disk_stall.rs`,
/// integrated by the host sampler over every device; only exported disks get rows).
fn stalls(e: &mut DescriptorEncoder<'_>, s: &HostSnapshot) -> std::fmt::Result {
    let run = |d: &DiskStat| {
        s.disk_stalls
            .iter()
            .find(|x| (x.major, x.minor) == (d.major, d.minor))
            .map_or(0.0, |x| x.seconds)
    };
    family(
        e,
        "disk_stalled",
        "Time the device had I/O in flight and completed none (checked every sampler interval).",
        SECONDS,
        MetricType::Counter,
        s.disks.iter().map(|d| {
            let total = s.disk_stalled_seconds.get(&(d.major, d.minor));
            ([("device", d.name.as_str())], total.copied().unwrap_or(0.0))
        }),
    )?;
    family(
        e,
        "disk_stall",
        "How long the device has had I/O in flight and completed none, now; 0 when it is completing or idle.",
        SECONDS,
        MetricType::Gauge,
        s.disks
            .iter()
            .map(|d| ([("device", d.name.as_str())], run(d))),
    )
}

#[cfg(test)]
mod tests {
    use stallwatch_collector::proc::diskstats;

    use super::*;

    /// Every field the diskstats parser reads has exactly one row, in the kernel's order: a
    /// line with fields 1, 2, … 17 comes back as 1, 2, … 17 once each row's unit is undone.
    #[test]
    fn every_diskstats_field_has_one_row_in_kernel_order() {
        let fields: Vec<String> = (1..=diskstats::FIELDS).map(|i| i.to_string()).collect();
        let d = &diskstats::parse(&format!("8 0 sda {}\n", fields.join(" "))).unwrap()[0];
        let raw: Vec<u64> = DISK
            .iter()
            .map(|r| {
                let v = (r.get)(d).unwrap_or_else(|| panic!("{}: no value", r.name));
                let raw = match r.unit {
                    BYTES => v / SECTOR_BYTES as f64,
                    SECONDS => v * 1000.0,
                    _ => v,
                };
                raw.round() as u64
            })
            .collect();
        assert_eq!(raw, (1..=diskstats::FIELDS as u64).collect::<Vec<_>>());
    }
}
