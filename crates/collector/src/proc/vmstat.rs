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
//! ```
//! Page counts are in pages (multiply by the page size); thresholds are what the kernel
//! computed from `vm.dirty_*` and the memory it considers dirtyable.

use crate::error::{parse_u64, ParseError};
use crate::proc::read_with;
use crate::{Error, Roots};

/// The keys this parser reads, in the order of [`Vmstat`]'s fields. The agent's metric table is
/// checked against this list: a key read here is either exported or listed there as not
/// exported, with the reason.
pub const KEYS: [&str; 12] = [
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
}

pub fn parse(text: &str) -> Result<Vmstat, ParseError> {
    let mut v = Vmstat::default();
    let mut known = 0;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let mut f = line.split_ascii_whitespace();
        let Some(key) = f.next() else { continue };
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
        ];
        let want: Vec<Option<u64>> = (1..=KEYS.len() as u64).map(Some).collect();
        assert_eq!(got.to_vec(), want);
    }
}
