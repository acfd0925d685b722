//! `/proc/meminfo` (man 5 proc, kernel docs: filesystems/proc.rst). Sample (Debian 12, 6.18):
//! ```text
//! MemTotal:       24608532 kB
//! MemFree:        23820464 kB
//! MemAvailable:   24142108 kB
//! Buffers:            2520 kB
//! Cached:           438512 kB
//! Dirty:                28 kB
//! Writeback:             0 kB
//! WritebackTmp:          0 kB
//! Shmem:              8948 kB
//! HugePages_Total:       0
//! ```
//! `Dirty` is data waiting to be written back; `Writeback` is data being written now. A storm of
//! `Writeback` is what Garden's slow overlay unmounts looked like.

use crate::error::{parse_u64, ParseError};
use crate::proc::read_with;
use crate::{Error, Roots};

/// The fields of [`KEYS`], in bytes. Absent keys stay `None` (older kernels, fixtures).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Meminfo {
    pub mem_total: Option<u64>,
    pub mem_free: Option<u64>,
    pub mem_available: Option<u64>,
    pub buffers: Option<u64>,
    pub cached: Option<u64>,
    pub swap_cached: Option<u64>,
    pub dirty: Option<u64>,
    pub writeback: Option<u64>,
    pub writeback_tmp: Option<u64>,
    pub shmem: Option<u64>,
    pub swap_total: Option<u64>,
    pub swap_free: Option<u64>,
}

/// The keys this parser reads, in the order of the file and of [`Meminfo`]'s fields. The
/// agent's metric table is checked against this list: a key read here without a metric row
/// fails a test instead of vanishing.
pub const KEYS: [&str; 12] = [
    "MemTotal",
    "MemFree",
    "MemAvailable",
    "Buffers",
    "Cached",
    "SwapCached",
    "Dirty",
    "Writeback",
    "WritebackTmp",
    "Shmem",
    "SwapTotal",
    "SwapFree",
];

/// Pure: unknown keys ignored, a known key with a garbage value is an error.
pub fn parse(text: &str) -> Result<Meminfo, ParseError> {
    let mut m = Meminfo::default();
    let mut known = 0;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let Some((key, rest)) = line.split_once(':') else {
            if line.trim().is_empty() {
                continue;
            }
            return Err(ParseError::new(
                n,
                format!("expected `Key: value`, got {line:?}"),
            ));
        };
        let slot = match key {
            "MemTotal" => &mut m.mem_total,
            "MemFree" => &mut m.mem_free,
            "MemAvailable" => &mut m.mem_available,
            "Buffers" => &mut m.buffers,
            "Cached" => &mut m.cached,
            "SwapCached" => &mut m.swap_cached,
            "Dirty" => &mut m.dirty,
            "Writeback" => &mut m.writeback,
            "WritebackTmp" => &mut m.writeback_tmp,
            "Shmem" => &mut m.shmem,
            "SwapTotal" => &mut m.swap_total,
            "SwapFree" => &mut m.swap_free,
            _ => continue,
        };
        let mut f = rest.split_ascii_whitespace();
        let v = f
            .next()
            .ok_or_else(|| ParseError::new(n, format!("{key}: missing value")))?;
        let v = parse_u64(v, n, key)?;
        let bytes = match f.next() {
            Some("kB") => v.saturating_mul(1024),
            None => v,
            Some(u) => return Err(ParseError::new(n, format!("{key}: unknown unit {u:?}"))),
        };
        *slot = Some(bytes);
        known += 1;
    }
    if known == 0 {
        return Err(ParseError::new(0, "no known fields"));
    }
    Ok(m)
}

pub fn read(roots: &Roots) -> Result<Option<Meminfo>, Error> {
    read_with(&roots.proc("meminfo"), parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN12_KERNEL_6_18: &str = "MemTotal:       24608532 kB
MemFree:        23820464 kB
MemAvailable:   24142108 kB
Buffers:            2520 kB
Cached:           438512 kB
SwapCached:            0 kB
Dirty:                28 kB
Writeback:             0 kB
WritebackTmp:          0 kB
Shmem:              8948 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
";

    #[test]
    fn meminfo_debian12_kernel_6_18() {
        let m = parse(DEBIAN12_KERNEL_6_18).unwrap();
        assert_eq!(m.dirty, Some(28 * 1024));
        assert_eq!(m.writeback, Some(0));
        assert_eq!(m.mem_available, Some(24142108 * 1024));
        assert_eq!(m.cached, Some(438512 * 1024));
        assert_eq!(m.swap_total, None);
    }

    #[test]
    fn meminfo_unknown_keys_ignored() {
        let m = parse("Dirty: 4 kB\nNewThing2030:   77 kB\n").unwrap();
        assert_eq!(m.dirty, Some(4096));
    }

    #[test]
    fn meminfo_truncated_or_garbage() {
        assert!(parse("").is_err());
        let e = parse("MemTotal: 1 kB\nDirty: lots kB\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(parse("Dirty:").is_err());
        assert!(parse("Dirty: 1 MB").is_err());
        assert!(parse("Dirty 1 kB").is_err());
    }

    #[test]
    fn meminfo_every_key_fills_its_own_field() {
        let text: String = KEYS
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{k}: {} kB\n", i + 1))
            .collect();
        // No `..`: a field added to `Meminfo` stops this from compiling until it is listed
        // here, and then fails it until a key in `KEYS` fills it.
        let Meminfo {
            mem_total,
            mem_free,
            mem_available,
            buffers,
            cached,
            swap_cached,
            dirty,
            writeback,
            writeback_tmp,
            shmem,
            swap_total,
            swap_free,
        } = parse(&text).unwrap();
        let got = [
            mem_total,
            mem_free,
            mem_available,
            buffers,
            cached,
            swap_cached,
            dirty,
            writeback,
            writeback_tmp,
            shmem,
            swap_total,
            swap_free,
        ];
        let want: Vec<Option<u64>> = (1..=KEYS.len() as u64).map(|i| Some(i * 1024)).collect();
        assert_eq!(got.to_vec(), want);
    }
}
