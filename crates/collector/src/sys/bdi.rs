//! `/sys/class/bdi/<major>:<minor>/`: per-device writeback limits (kernel docs:
//! ABI/testing/sysfs-class-bdi). Sample (Debian 12, 6.18, `254:0` = vda):
//! ```text
//! min_ratio 0    max_ratio 100    max_bytes 2438737920    strict_limit 0    read_ahead_kb 128
//! ```
//! `max_ratio`/`max_bytes` cap the device's share of the dirty threshold; `strict_limit`
//! applies the cap even below the global background threshold (FUSE sets it).

use crate::error::{parse_u64, ParseError};
use crate::{Error, Roots};

/// One backing device's writeback settings; `None` where the kernel lacks the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bdi {
    pub major: u32,
    pub minor: u32,
    /// Percent of the dirty threshold reserved for the device.
    pub min_ratio: Option<u64>,
    /// Percent of the dirty threshold the device may use at most.
    pub max_ratio: Option<u64>,
    /// The same cap in bytes (kernel ≥ 6.2).
    pub max_bytes: Option<u64>,
    pub strict_limit: Option<u64>,
    pub read_ahead_kb: Option<u64>,
}

/// Pure: one integer per file.
pub fn parse_value(text: &str) -> Result<u64, ParseError> {
    parse_u64(text.trim(), 1, "value")
}

/// Thin: every `<major>:<minor>` directory under `class/bdi`; `Ok(None)` when the class is
/// absent. Other entries are skipped; unreadable values stay `None`.
pub fn read(roots: &Roots) -> Result<Option<Vec<Bdi>>, Error> {
    let dir = roots.sys("class/bdi");
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(Error::Io { path: dir, source }),
    };
    let mut out = Vec::new();
    for e in rd.filter_map(|e| e.ok()) {
        let name = e.file_name();
        let Some((ma, mi)) = name.to_str().and_then(|n| n.split_once(':')) else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (ma.parse(), mi.parse()) else {
            continue;
        };
        let p = e.path();
        let val = |f: &str| {
            std::fs::read_to_string(p.join(f))
                .ok()
                .and_then(|t| parse_value(&t).ok())
        };
        out.push(Bdi {
            major,
            minor,
            min_ratio: val("min_ratio"),
            max_ratio: val("max_ratio"),
            max_bytes: val("max_bytes"),
            strict_limit: val("strict_limit"),
            read_ahead_kb: val("read_ahead_kb"),
        });
    }
    out.sort_by_key(|b| (b.major, b.minor));
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdi_value_debian12() {
        assert_eq!(parse_value("100\n").unwrap(), 100);
        assert!(parse_value("").is_err());
        assert!(parse_value("x").is_err());
    }

    #[test]
    fn bdi_of_this_machine() {
        let b = read(&Roots::default()).unwrap().unwrap();
        assert!(b.iter().any(|b| b.max_ratio.is_some()), "{b:?}");
        assert!(read(&Roots {
            sysfs: "/nonexistent".into(),
            ..Roots::default()
        })
        .unwrap()
        .is_none());
    }
}
