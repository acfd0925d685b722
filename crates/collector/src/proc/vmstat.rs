//! `/proc/vmstat`: virtual memory counters, one `name value` per line. Sample (Debian 12, 6.18):
//! ```text
//! nr_dirty 7
//! nr_writeback 0
//! nr_writeback_temp 0
//! nr_dirty_threshold 1201178
//! nr_dirty_background_threshold 599851
//! nr_dirtied 1176207
//! nr_written 1100863
//! pgmajfault 1201
//! oom_kill 0
//! allocstall_normal 125
//! allocstall_movable 2854
//! compact_stall 13352
//! pgscan_direct 285670
//! pgsteal_direct 285161
//! workingset_refault_anon 0
//! workingset_refault_file 18480573
//! pgpgin 90694417
//! pgpgout 274121386
//! ```
//! Page counts are in pages (multiply by the page size); thresholds are what the kernel
//! computed from `vm.dirty_*` and the memory it considers dirtyable. `pgpgin`/`pgpgout` are
//! the exception: KiB, not pages (mm/vmstat.c halves the sector counts: "sectors -> kbytes").
//! Direct reclaim stalls are one line per zone type since 4.8 (`allocstall_normal`,
//! `allocstall_movable`, …, the zones this kernel was built with) and one `allocstall` line
//! before: [`Vmstat::allocstall`] is the sum of whichever lines exist.

use crate::error::{parse_u64, ParseError};
use crate::proc::read_with;
use crate::{Error, Roots};

/// The keys this parser reads, in the order of [`Vmstat`]'s fields. The agent's metric table is
/// checked against this list: a key read here is either exported or listed there as not
/// exported, with the reason.
///
/// `allocstall` stands for every `allocstall` and `allocstall_<zone>` line (summed).
pub const KEYS: [&str; 20] = [
    "nr_dirty",
    "nr_writeback",
    "nr_writeback_temp",
    "nr_dirtied",
    "nr_written",
    "nr_dirty_threshold",
    "nr_dirty_background_threshold",
    "pgfault",
    "pgmajfault",
    "pswpin",
    "pswpout",
    "oom_kill",
    "allocstall",
    "compact_stall",
    "pgscan_direct",
    "pgsteal_direct",
    "workingset_refault_anon",
    "workingset_refault_file",
    "pgpgin",
    "pgpgout",
];

/// The counters of [`KEYS`]. Gauges in pages: `nr_*` without `-ed`; counters since boot
/// otherwise.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Vmstat {
    /// Pages dirty now.
    pub nr_dirty: Option<u64>,
    /// Pages under writeback now.
    pub nr_writeback: Option<u64>,
    /// Pages under writeback via FUSE temp buffers now.
    pub nr_writeback_temp: Option<u64>,
    /// Pages dirtied since boot.
    pub nr_dirtied: Option<u64>,
    /// Pages written back since boot.
    pub nr_written: Option<u64>,
    /// Dirty pages at which writers are throttled (pages).
    pub nr_dirty_threshold: Option<u64>,
    /// Dirty pages at which background flushers start (pages).
    pub nr_dirty_background_threshold: Option<u64>,
    /// Page faults since boot.
    pub pgfault: Option<u64>,
    /// Major page faults (needed I/O) since boot.
    pub pgmajfault: Option<u64>,
    /// Pages swapped in since boot.
    pub pswpin: Option<u64>,
    /// Pages swapped out since boot.
    pub pswpout: Option<u64>,
    /// OOM kills since boot (kernel ≥ 4.13).
    pub oom_kill: Option<u64>,
    /// Direct reclaim stalls since boot: an allocating task had to reclaim memory itself. The
    /// sum of every `allocstall_<zone>` line (kernel ≥ 4.8) or the one `allocstall` line.
    pub allocstall: Option<u64>,
    /// Direct compaction stalls since boot: an allocating task compacted memory itself to
    /// get a higher-order page.
    pub compact_stall: Option<u64>,
    /// Pages scanned by direct reclaim since boot.
    pub pgscan_direct: Option<u64>,
    /// Pages reclaimed by direct reclaim since boot.
    pub pgsteal_direct: Option<u64>,
    /// Refaults of anonymous pages since boot: evicted pages needed again soon (thrashing;
    /// kernel ≥ 5.9, one `workingset_refault` line before).
    pub workingset_refault_anon: Option<u64>,
    /// Refaults of file pages since boot (kernel ≥ 5.9).
    pub workingset_refault_file: Option<u64>,
    /// KiB read from block devices into memory since boot (page-ins, not pages).
    pub pgpgin: Option<u64>,
    /// KiB written from memory to block devices since boot (page-outs, not pages).
    pub pgpgout: Option<u64>,
}

pub fn parse(text: &str) -> Result<Vmstat, ParseError> {
    let mut v = Vmstat::default();
    let mut known = 0;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let mut f = line.split_ascii_whitespace();
        let Some(key) = f.next() else { continue };
        if key == "allocstall" || key.starts_with("allocstall_") {
            let val = f
                .next()
                .ok_or_else(|| ParseError::new(n, format!("{key}: missing value")))?;
            let val = parse_u64(val, n, key)?;
            v.allocstall = Some(v.allocstall.unwrap_or(0).saturating_add(val));
            known += 1;
            continue;
        }
        let slot = match key {
            "nr_dirty" => &mut v.nr_dirty,
            "nr_writeback" => &mut v.nr_writeback,
            "nr_writeback_temp" => &mut v.nr_writeback_temp,
            "nr_dirtied" => &mut v.nr_dirtied,
            "nr_written" => &mut v.nr_written,
            "nr_dirty_threshold" => &mut v.nr_dirty_threshold,
            "nr_dirty_background_threshold" => &mut v.nr_dirty_background_threshold,
            "pgfault" => &mut v.pgfault,
            "pgmajfault" => &mut v.pgmajfault,
            "pswpin" => &mut v.pswpin,
            "pswpout" => &mut v.pswpout,
            "oom_kill" => &mut v.oom_kill,
            "compact_stall" => &mut v.compact_stall,
            "pgscan_direct" => &mut v.pgscan_direct,
            "pgsteal_direct" => &mut v.pgsteal_direct,
            "workingset_refault_anon" => &mut v.workingset_refault_anon,
            "workingset_refault_file" => &mut v.workingset_refault_file,
            "pgpgin" => &mut v.pgpgin,
            "pgpgout" => &mut v.pgpgout,
            _ => continue,
        };
        let val = f
            .next()
            .ok_or_else(|| ParseError::new(n, format!("{key}: missing value")))?;
        *slot = Some(parse_u64(val, n, key)?);
        known += 1;
    }
    if known == 0 {
        return Err(ParseError::new(0, "no known fields"));
    }
    Ok(v)
}

pub fn read(roots: &Roots) -> Result<Option<Vmstat>, Error> {
    read_with(&roots.proc("vmstat"), parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmstat_debian12_kernel_6_18() {
        let v = parse(
            "nr_free_pages 5955116\nnr_dirty 7\nnr_writeback 0\nnr_writeback_temp 0\n\
             nr_dirty_threshold 1201178\nnr_dirty_background_threshold 599851\n\
             nr_dirtied 1176207\nnr_written 1100863\npgfault 3\npgmajfault 1201\noom_kill 0\n",
        )
        .unwrap();
        assert_eq!(v.nr_dirty, Some(7));
        assert_eq!(v.nr_dirty_threshold, Some(1201178));
        assert_eq!(v.nr_dirty_background_threshold, Some(599851));
        assert_eq!(v.nr_written, Some(1100863));
        assert_eq!(v.pgmajfault, Some(1201));
        assert_eq!(v.pswpin, None);
    }

    #[test]
    fn vmstat_reclaim_and_refaults_debian12_kernel_6_18() {
        let v = parse(
            "allocstall_dma 0\nallocstall_dma32 0\nallocstall_normal 125\n\
             allocstall_movable 2854\nallocstall_device 0\nworkingset_refault_anon 0\n\
             workingset_refault_file 18480573\npgpgin 90694417\npgpgout 274121386\n\
             pgsteal_direct 285161\npgscan_direct 285670\npgscan_direct_throttle 7\n\
             compact_stall 13352\n",
        )
        .unwrap();
        assert_eq!(v.allocstall, Some(125 + 2854), "every zone's line summed");
        assert_eq!(v.compact_stall, Some(13352));
        assert_eq!(v.pgscan_direct, Some(285670), "not pgscan_direct_throttle");
        assert_eq!(v.pgsteal_direct, Some(285161));
        assert_eq!(v.workingset_refault_anon, Some(0));
        assert_eq!(v.workingset_refault_file, Some(18480573));
        assert_eq!((v.pgpgin, v.pgpgout), (Some(90694417), Some(274121386)));
    }

    #[test]
    fn vmstat_allocstall_of_kernels_before_4_8_and_absent() {
        // One `allocstall` line before 4.8 (mm: vmstat: account per-zone stalls).
        assert_eq!(
            parse("allocstall 42\nnr_dirty 1\n").unwrap().allocstall,
            Some(42)
        );
        assert_eq!(parse("nr_dirty 1\n").unwrap().allocstall, None);
        assert!(parse("allocstall_normal x\n").is_err());
        // A sum cannot overflow into a panic on garbage.
        let huge = format!("allocstall_a {m}\nallocstall_b {m}\n", m = u64::MAX);
        assert_eq!(parse(&huge).unwrap().allocstall, Some(u64::MAX));
    }

    #[test]
    fn vmstat_of_this_kernel_has_the_reclaim_counters() {
        let v = read(&Roots::default()).unwrap().unwrap();
        // Every kernel the agent supports (≥ 4.19) has these lines.
        for (k, x) in [
            ("allocstall", v.allocstall),
            ("compact_stall", v.compact_stall),
            ("pgscan_direct", v.pgscan_direct),
            ("pgsteal_direct", v.pgsteal_direct),
            ("pgpgin", v.pgpgin),
            ("pgpgout", v.pgpgout),
        ] {
            assert!(x.is_some(), "{k} missing from this kernel's /proc/vmstat");
        }
        assert!(v.pgpgin.unwrap() > 0, "this machine has read from a disk");
    }

    #[test]
    fn vmstat_unknown_keys_ignored() {
        assert_eq!(
            parse("zz_future 1\nnr_dirtied 5\n").unwrap().nr_dirtied,
            Some(5)
        );
    }

    #[test]
    fn vmstat_truncated_or_garbage() {
        assert!(parse("").is_err());
        assert!(parse("nr_dirty").is_err());
        assert_eq!(parse("nr_dirty 1\nnr_written -3\n").unwrap_err().line, 2);
    }

    #[test]
    fn vmstat_every_key_fills_its_own_field() {
        let text: String = KEYS
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{k} {}\n", i + 1))
            .collect();
        // No `..`: a field added to `Vmstat` stops this from compiling until it is listed here,
        // and then fails it until a key in `KEYS` fills it.
        let Vmstat {
            nr_dirty,
            nr_writeback,
            nr_writeback_temp,
            nr_dirtied,
            nr_written,
            nr_dirty_threshold,
            nr_dirty_background_threshold,
            pgfault,
            pgmajfault,
            pswpin,
            pswpout,
            oom_kill,
            allocstall,
            compact_stall,
            pgscan_direct,
            pgsteal_direct,
            workingset_refault_anon,
            workingset_refault_file,
            pgpgin,
            pgpgout,
        } = parse(&text).unwrap();
        let got = [
            nr_dirty,
            nr_writeback,
            nr_writeback_temp,
            nr_dirtied,
            nr_written,
            nr_dirty_threshold,
            nr_dirty_background_threshold,
            pgfault,
            pgmajfault,
            pswpin,
            pswpout,
            oom_kill,
            allocstall,
            compact_stall,
            pgscan_direct,
            pgsteal_direct,
            workingset_refault_anon,
            workingset_refault_file,
            pgpgin,
            pgpgout,
        ];
        let want: Vec<Option<u64>> = (1..=KEYS.len() as u64).map(Some).collect();
        assert_eq!(got.to_vec(), want);
    }
}
