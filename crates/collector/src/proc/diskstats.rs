//! `/proc/diskstats` (kernel docs: admin-guide/iostats.rst). Sample (Debian 12, kernel 6.18):
//! ```text
//!    7       0 loop0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
//!  254       0 vda 21633 6377 1542034 10428 16006 12547 1018168 25826 0 23952 38117 0 0 0 0 3561 1862
//! ```
//! After major, minor and name come 11 fields (kernel < 4.18), 15 (4.18+, discard) or 17
//! (5.5+, flush). Sectors are always 512 bytes here, whatever the device's sector size.

use crate::error::{parse_u64, ParseError};
use crate::proc::read_with;
use crate::{Error, Roots};

/// One device line. Times in milliseconds, sizes in 512-byte sectors, as the kernel counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskStat {
    pub major: u32,
    pub minor: u32,
    pub name: String,
    pub reads_completed: u64,
    pub reads_merged: u64,
    pub sectors_read: u64,
    pub read_time_ms: u64,
    pub writes_completed: u64,
    pub writes_merged: u64,
    pub sectors_written: u64,
    pub write_time_ms: u64,
    /// I/Os currently in flight (a gauge).
    pub in_progress: u64,
    /// Milliseconds the device had I/O in flight.
    pub io_time_ms: u64,
    /// Milliseconds × in-flight count (queue depth integral).
    pub weighted_io_time_ms: u64,
    /// Discard fields, kernel ≥ 4.18.
    pub discard: Option<DiscardStat>,
    /// Flush fields, kernel ≥ 5.5.
    pub flush: Option<FlushStat>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiscardStat {
    pub completed: u64,
    pub merged: u64,
    pub sectors: u64,
    pub time_ms: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushStat {
    pub completed: u64,
    pub time_ms: u64,
}

/// Fields after major, minor and name that the parser reads (kernel 5.5+ has 17; later ones are
/// ignored). Every one lands in a field of [`DiskStat`]; the agent's metric table is checked
/// against this count.
pub const FIELDS: usize = 17;

/// Bytes per diskstats sector (always 512, see block/genhd.c).
pub const SECTOR_BYTES: u64 = 512;

fn parse_line(line: &str, n: usize) -> Result<DiskStat, ParseError> {
    let mut f = line.split_ascii_whitespace();
    let major = f
        .next()
        .ok_or_else(|| ParseError::new(n, "missing major"))?;
    let minor = f
        .next()
        .ok_or_else(|| ParseError::new(n, "missing minor"))?;
    let name = f
        .next()
        .ok_or_else(|| ParseError::new(n, "missing device name"))?;
    let mut v = [0u64; FIELDS];
    let mut count = 0;
    for (slot, s) in v.iter_mut().zip(&mut f) {
        *slot = parse_u64(s, n, name)?;
        count += 1;
    }
    if count < 11 {
        return Err(ParseError::new(
            n,
            format!("{name}: {count} fields, expected at least 11"),
        ));
    }
    let to_u32 = |s: &str, what| {
        s.parse::<u32>()
            .map_err(|_| ParseError::new(n, format!("{what}: expected a number, got {s:?}")))
    };
    Ok(DiskStat {
        major: to_u32(major, "major")?,
        minor: to_u32(minor, "minor")?,
        name: name.to_string(),
        reads_completed: v[0],
        reads_merged: v[1],
        sectors_read: v[2],
        read_time_ms: v[3],
        writes_completed: v[4],
        writes_merged: v[5],
        sectors_written: v[6],
        write_time_ms: v[7],
        in_progress: v[8],
        io_time_ms: v[9],
        weighted_io_time_ms: v[10],
        discard: (count >= 15).then(|| DiscardStat {
            completed: v[11],
            merged: v[12],
            sectors: v[13],
            time_ms: v[14],
        }),
        flush: (count >= 17).then(|| FlushStat {
            completed: v[15],
            time_ms: v[16],
        }),
    })
}

/// Pure: every line is a device; a malformed line is an error naming it. An empty file is a
/// host without block devices, which is valid.
pub fn parse(text: &str) -> Result<Vec<DiskStat>, ParseError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        out.push(parse_line(line, i + 1)?);
    }
    Ok(out)
}

pub fn read(roots: &Roots) -> Result<Option<Vec<DiskStat>>, Error> {
    read_with(&roots.proc("diskstats"), parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diskstats_debian12_kernel_6_18() {
        let d = parse(
            "   7       0 loop0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n \
             254       0 vda 21633 6377 1542034 10428 16006 12547 1018168 25826 2 23952 38117 5 6 7 8 3561 1862\n",
        )
        .unwrap();
        assert_eq!(d.len(), 2);
        let vda = &d[1];
        assert_eq!((vda.major, vda.minor, vda.name.as_str()), (254, 0, "vda"));
        assert_eq!(vda.sectors_written, 1018168);
        assert_eq!(vda.in_progress, 2);
        assert_eq!(vda.weighted_io_time_ms, 38117);
        assert_eq!(
            vda.discard,
            Some(DiscardStat {
                completed: 5,
                merged: 6,
                sectors: 7,
                time_ms: 8
            })
        );
        assert_eq!(
            vda.flush,
            Some(FlushStat {
                completed: 3561,
                time_ms: 1862
            })
        );
    }

    #[test]
    fn diskstats_kernel_4_14_has_11_fields() {
        let d = parse("   8       0 sda 1 2 3 4 5 6 7 8 9 10 11\n").unwrap();
        assert_eq!(d[0].weighted_io_time_ms, 11);
        assert!(d[0].discard.is_none() && d[0].flush.is_none());
    }

    #[test]
    fn diskstats_kernel_4_19_has_discard_but_no_flush() {
        let d = parse("8 0 sda 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15\n").unwrap();
        assert!(d[0].discard.is_some() && d[0].flush.is_none());
    }

    #[test]
    fn diskstats_future_fields_ignored() {
        let d = parse("8 0 sda 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19\n").unwrap();
        assert_eq!(d[0].flush.unwrap().time_ms, 17);
    }

    #[test]
    fn diskstats_truncated_or_garbage() {
        assert!(parse("").unwrap().is_empty());
        assert_eq!(parse("8 0 sda 1 2 3\n").unwrap_err().line, 1);
        assert_eq!(
            parse("8 0 sda 1 2 3 4 5 6 7 8 9 10 11\n8 x sdb 1 2 3 4 5 6 7 8 9 10 11\n")
                .unwrap_err()
                .line,
            2
        );
        assert!(parse("8 0 sda 1 2 3 4 5 6 7 8 9 10 x\n").is_err());
    }
}
