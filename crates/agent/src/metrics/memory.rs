//! Memory and writeback: `/proc/meminfo`, `/proc/vmstat`, `/proc/sys/vm/dirty_*`, and what the
//! host sampler keeps of them between scrapes (window peaks, time above thresholds).
//!
//! `MEMINFO` and `VMSTAT` name the parsers' fields one by one; the tests below fail when a
//! field the parser reads has no row (or, for vmstat, is not listed in `VMSTAT_NOT_EXPORTED`
//! with the reason), so a new field cannot be read and then silently dropped or mislabelled.

use prometheus_client::encoding::DescriptorEncoder;
use stallwatch_collector::proc::meminfo::Meminfo;
use stallwatch_collector::proc::sys_vm::VmTunables;
use stallwatch_collector::proc::vmstat::Vmstat;
use stallwatch_collector::sample::host::Peaks;
use stallwatch_collector::sample::HostSnapshot;

use super::table::{counter, gauge, num, rows, Row, BYTES, NONE, SECONDS};

/// `/proc/meminfo` (`collector/src/proc/meminfo.rs`), bytes. Each help starts with the
/// kernel's key, which the completeness test checks against the parser's.
pub const MEMINFO: &[Row<Meminfo>] = &[
    gauge("memory_total", "MemTotal of /proc/meminfo.", BYTES, |m| {
        num(m.mem_total)
    }),
    gauge("memory_free", "MemFree of /proc/meminfo.", BYTES, |m| {
        num(m.mem_free)
    }),
    gauge(
        "memory_available",
        "MemAvailable of /proc/meminfo.",
        BYTES,
        |m| num(m.mem_available),
    ),
    gauge("memory_buffers", "Buffers of /proc/meminfo.", BYTES, |m| {
        num(m.buffers)
    }),
    gauge(
        "memory_cached",
        "Cached (page cache) of /proc/meminfo.",
        BYTES,
        |m| num(m.cached),
    ),
    gauge(
        "memory_swap_cached",
        "SwapCached of /proc/meminfo.",
        BYTES,
        |m| num(m.swap_cached),
    ),
    gauge(
        "memory_dirty",
        "Dirty of /proc/meminfo: data waiting to be written back.",
        BYTES,
        |m| num(m.dirty),
    ),
    gauge(
        "memory_writeback",
        "Writeback of /proc/meminfo: data being written back now.",
        BYTES,
        |m| num(m.writeback),
    ),
    gauge(
        "memory_writeback_tmp",
        "WritebackTmp of /proc/meminfo (FUSE).",
        BYTES,
        |m| num(m.writeback_tmp),
    ),
    gauge("memory_shmem", "Shmem of /proc/meminfo.", BYTES, |m| {
        num(m.shmem)
    }),
    gauge(
        "memory_swap_total",
        "SwapTotal of /proc/meminfo.",
        BYTES,
        |m| num(m.swap_total),
    ),
    gauge(
        "memory_swap_free",
        "SwapFree of /proc/meminfo.",
        BYTES,
        |m| num(m.swap_free),
    ),
];

/// Window maxima of Dirty and Writeback (`collector/src/sample/host.rs`).
pub const MEMORY_PEAKS: &[Row<Peaks>] = &[
    gauge(
        "memory_dirty_peak",
        "Maximum Dirty seen over the peak window.",
        BYTES,
        |p| p.dirty_bytes,
    ),
    gauge(
        "memory_writeback_peak",
        "Maximum Writeback seen over the peak window.",
        BYTES,
        |p| p.writeback_bytes,
    ),
];

/// `/proc/vmstat` with the page size its page counts convert with.
pub struct Paged {
    pub vm: Vmstat,
    pub page_bytes: f64,
}

/// `/proc/vmstat` (`collector/src/proc/vmstat.rs`). Each help names the kernel's key in
/// parentheses, which the completeness test checks against the parser's.
pub const VMSTAT: &[Row<Paged>] = &[
    counter(
        "vm_dirtied_pages",
        "Pages dirtied since boot (nr_dirtied).",
        NONE,
        |p| num(p.vm.nr_dirtied),
    ),
    counter(
        "vm_written_pages",
        "Pages written back since boot (nr_written).",
        NONE,
        |p| num(p.vm.nr_written),
    ),
    gauge(
        "dirty_threshold",
        "Dirty memory at which writers are throttled (nr_dirty_threshold).",
        BYTES,
        |p| num(p.vm.nr_dirty_threshold).map(|n| n * p.page_bytes),
    ),
    gauge(
        "dirty_background_threshold",
        "Dirty memory at which background writeback starts (nr_dirty_background_threshold).",
        BYTES,
        |p| num(p.vm.nr_dirty_background_threshold).map(|n| n * p.page_bytes),
    ),
    counter(
        "vm_page_faults",
        "Page faults since boot (pgfault).",
        NONE,
        |p| num(p.vm.pgfault),
    ),
    counter(
        "vm_major_faults",
        "Major page faults, which needed I/O, since boot (pgmajfault).",
        NONE,
        |p| num(p.vm.pgmajfault),
    ),
    counter(
        "vm_swapped_in_pages",
        "Pages swapped in since boot (pswpin).",
        NONE,
        |p| num(p.vm.pswpin),
    ),
    counter(
        "vm_swapped_out_pages",
        "Pages swapped out since boot (pswpout).",
        NONE,
        |p| num(p.vm.pswpout),
    ),
    counter(
        "vm_oom_kills",
        "OOM kills since boot (oom_kill).",
        NONE,
        |p| num(p.vm.oom_kill),
    ),
    counter(
        "vm_direct_reclaim_stalls",
        "Allocations that stalled to reclaim memory themselves, every zone summed (allocstall).",
        NONE,
        |p| num(p.vm.allocstall),
    ),
    counter(
        "vm_compaction_stalls",
        "Allocations that stalled to compact memory themselves (compact_stall).",
        NONE,
        |p| num(p.vm.compact_stall),
    ),
    counter(
        "vm_direct_scanned_pages",
        "Pages scanned by direct reclaim (pgscan_direct).",
        NONE,
        |p| num(p.vm.pgscan_direct),
    ),
    counter(
        "vm_direct_reclaimed_pages",
        "Pages reclaimed by direct reclaim (pgsteal_direct).",
        NONE,
        |p| num(p.vm.pgsteal_direct),
    ),
    counter(
        "vm_refaulted_anon_pages",
        "Evicted anonymous pages faulted back in: thrashing (workingset_refault_anon).",
        NONE,
        |p| num(p.vm.workingset_refault_anon),
    ),
    counter(
        "vm_refaulted_file_pages",
        "Evicted file pages read back in: thrashing (workingset_refault_file).",
        NONE,
        |p| num(p.vm.workingset_refault_file),
    ),
    counter(
        "vm_paged_in",
        "Data read from block devices into memory; the kernel counts KiB (pgpgin).",
        BYTES,
        |p| num(p.vm.pgpgin).map(|k| k * 1024.0),
    ),
    counter(
        "vm_paged_out",
        "Data written from memory to block devices; the kernel counts KiB (pgpgout).",
        BYTES,
        |p| num(p.vm.pgpgout).map(|k| k * 1024.0),
    ),
];

/// vmstat keys the parser reads that have no row, and why: they are meminfo's Dirty,
/// Writeback and WritebackTmp in pages, exported once, in bytes, from meminfo. (Only the
/// completeness test reads the list; it lives here, beside the table, to be seen.)
#[cfg(test)]
pub const VMSTAT_NOT_EXPORTED: &[&str] = &["nr_dirty", "nr_writeback", "nr_writeback_temp"];

/// Between-scrape integrals of writeback (`collector/src/sample/host.rs`), present only when
/// the levels they integrate are read.
pub const WRITEBACK: &[Row<HostSnapshot>] = &[
    counter(
        "dirty_over_background",
        "Time Dirty was above the kernel's background threshold (flushers busy).",
        SECONDS,
        |s| {
            let bg = s
                .vmstat
                .is_some_and(|v| v.nr_dirty_background_threshold.is_some());
            (s.meminfo.is_some() && bg).then_some(s.integrals.dirty_over_background_seconds)
        },
    ),
    counter(
        "writeback_bursts",
        "Writeback bursts: Writeback above the burst threshold, or more than it written back between two samples (nr_written).",
        NONE,
        |s| bursts(s).then_some(s.integrals.writeback_bursts as f64),
    ),
    counter(
        "writeback_burst",
        "Time in a writeback burst: Writeback above the burst threshold, or more than it written back in the sample interval.",
        SECONDS,
        |s| bursts(s).then_some(s.integrals.writeback_burst_seconds),
    ),
    gauge(
        "writeback_burst_threshold",
        "Writeback level that counts as a burst (config writeback.burst_threshold).",
        BYTES,
        |s| num(s.burst_threshold_bytes),
    ),
];

fn bursts(s: &HostSnapshot) -> bool {
    (s.meminfo.is_some() || s.vmstat.is_some()) && s.burst_threshold_bytes.is_some()
}

/// `/proc/sys/vm/dirty_*` (`collector/src/proc/sys_vm.rs`), in base units.
pub const TUNABLES: &[Row<VmTunables>] = &[
    gauge(
        "vm_dirty_ratio",
        "vm.dirty_ratio as a ratio (0 when dirty_bytes is used).",
        NONE,
        |t| num(t.dirty_ratio).map(|v| v / 100.0),
    ),
    gauge(
        "vm_dirty_background_ratio",
        "vm.dirty_background_ratio as a ratio.",
        NONE,
        |t| num(t.dirty_background_ratio).map(|v| v / 100.0),
    ),
    gauge(
        "vm_dirty",
        "vm.dirty_bytes (0 when dirty_ratio is used).",
        BYTES,
        |t| num(t.dirty_bytes),
    ),
    gauge(
        "vm_dirty_background",
        "vm.dirty_background_bytes.",
        BYTES,
        |t| num(t.dirty_background_bytes),
    ),
    gauge(
        "vm_dirty_expire",
        "vm.dirty_expire_centisecs: age at which dirty data is written back.",
        SECONDS,
        |t| num(t.dirty_expire_centisecs).map(|v| v / 100.0),
    ),
    gauge(
        "vm_dirty_writeback_interval",
        "vm.dirty_writeback_centisecs: flusher wake-up interval.",
        SECONDS,
        |t| num(t.dirty_writeback_centisecs).map(|v| v / 100.0),
    ),
    gauge(
        "vm_dirtytime_expire",
        "vm.dirtytime_expire_seconds.",
        SECONDS,
        |t| num(t.dirtytime_expire_seconds),
    ),
];

pub fn encode(e: &mut DescriptorEncoder<'_>, s: &HostSnapshot) -> std::fmt::Result {
    if let Some(m) = &s.meminfo {
        rows(e, MEMINFO, m)?;
    }
    rows(e, MEMORY_PEAKS, &s.peaks)?;
    if let Some(vm) = s.vmstat {
        let page_bytes = s.page_size as f64;
        rows(e, VMSTAT, &Paged { vm, page_bytes })?;
    }
    rows(e, WRITEBACK, s)?;
    if let Some(t) = &s.tunables {
        rows(e, TUNABLES, t)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use stallwatch_collector::proc::{meminfo, vmstat};

    use super::*;

    /// Every key the meminfo parser reads has exactly one row, and that row's help names the
    /// key it reads: a field read without a row fails here rather than vanishing.
    #[test]
    fn every_meminfo_key_has_exactly_one_row_that_names_it() {
        let text: String = meminfo::KEYS
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{k}: {} kB\n", i + 1))
            .collect();
        let m = meminfo::parse(&text).unwrap();
        for (i, key) in meminfo::KEYS.iter().enumerate() {
            let want = ((i + 1) * 1024) as f64;
            let hits: Vec<&str> = MEMINFO
                .iter()
                .filter(|r| (r.get)(&m) == Some(want))
                .map(|r| r.help)
                .collect();
            assert_eq!(hits.len(), 1, "{key}: rows {hits:?}");
            assert!(hits[0].starts_with(&format!("{key} ")), "{key}: {hits:?}");
        }
        assert_eq!(MEMINFO.len(), meminfo::KEYS.len(), "a row reads no key");
    }

    /// Every key the vmstat parser reads has exactly one row naming it, or is listed in
    /// `VMSTAT_NOT_EXPORTED`. Rows in bytes undo their unit: pages (page size 1 here) or, for
    /// rows whose help says so, KiB.
    #[test]
    fn every_vmstat_key_has_exactly_one_row_or_a_reason() {
        let text: String = vmstat::KEYS
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{k} {}\n", i + 1))
            .collect();
        let vm = vmstat::parse(&text).unwrap();
        let p = Paged {
            vm,
            page_bytes: 1.0,
        };
        for (i, key) in vmstat::KEYS.iter().enumerate() {
            let raw = |r: &Row<Paged>| {
                let kib = r.unit == BYTES && r.help.contains("KiB");
                (r.get)(&p).map(|v| if kib { v / 1024.0 } else { v })
            };
            let hits: Vec<&str> = VMSTAT
                .iter()
                .filter(|r| raw(r) == Some((i + 1) as f64))
                .map(|r| r.help)
                .collect();
            if VMSTAT_NOT_EXPORTED.contains(key) {
                assert!(hits.is_empty(), "{key} is listed as not exported: {hits:?}");
                continue;
            }
            assert_eq!(hits.len(), 1, "{key}: rows {hits:?}");
            assert!(hits[0].contains(&format!("({key})")), "{key}: {hits:?}");
        }
        assert_eq!(
            VMSTAT.len() + VMSTAT_NOT_EXPORTED.len(),
            vmstat::KEYS.len(),
            "a row reads no key"
        );
    }

    #[test]
    fn thresholds_are_pages_times_the_page_size() {
        let vm = vmstat::parse("nr_dirty_threshold 3\n").unwrap();
        let p = Paged {
            vm,
            page_bytes: 4096.0,
        };
        let row = VMSTAT.iter().find(|r| r.name == "dirty_threshold").unwrap();
        assert_eq!((row.get)(&p), Some(3.0 * 4096.0));
    }
}
