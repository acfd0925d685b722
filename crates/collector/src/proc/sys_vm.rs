//! `/proc/sys/vm/dirty_*`: the writeback tunables (kernel docs: admin-guide/sysctl/vm.rst).
//! Each file holds one integer. Sample (Debian 12 defaults):
//! ```text
//! dirty_background_bytes     0
//! dirty_background_ratio     10
//! dirty_bytes                0
//! dirty_expire_centisecs     3000
//! dirty_ratio                20
//! dirty_writeback_centisecs  500
//! dirtytime_expire_seconds   43200
//! ```
//! `*_bytes` and `*_ratio` are alternatives: writing one zeroes the other.

use crate::error::{parse_u64, ParseError};
use crate::proc::read_with;
use crate::{Error, Roots};

/// Values as the files hold them (percent, bytes, centiseconds, seconds); absent files `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmTunables {
    pub dirty_background_bytes: Option<u64>,
    pub dirty_background_ratio: Option<u64>,
    pub dirty_bytes: Option<u64>,
    pub dirty_ratio: Option<u64>,
    pub dirty_expire_centisecs: Option<u64>,
    pub dirty_writeback_centisecs: Option<u64>,
    pub dirtytime_expire_seconds: Option<u64>,
}

/// Pure: one integer, surrounding whitespace allowed.
pub fn parse(text: &str) -> Result<u64, ParseError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(ParseError::new(1, "empty file"));
    }
    parse_u64(t, 1, "value")
}

/// Thin: reads every tunable; `Ok(None)` only when none of the files exist.
pub fn read(roots: &Roots) -> Result<Option<VmTunables>, Error> {
    let one = |name: &str| read_with(&roots.proc(&format!("sys/vm/{name}")), parse);
    let t = VmTunables {
        dirty_background_bytes: one("dirty_background_bytes")?,
        dirty_background_ratio: one("dirty_background_ratio")?,
        dirty_bytes: one("dirty_bytes")?,
        dirty_ratio: one("dirty_ratio")?,
        dirty_expire_centisecs: one("dirty_expire_centisecs")?,
        dirty_writeback_centisecs: one("dirty_writeback_centisecs")?,
        dirtytime_expire_seconds: one("dirtytime_expire_seconds")?,
    };
    Ok(if t == VmTunables::default() {
        None
    } else {
        Some(t)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_debian12_defaults() {
        assert_eq!(parse("3000\n").unwrap(), 3000);
        assert_eq!(parse(" 10 \n").unwrap(), 10);
    }

    #[test]
    fn sysctl_garbage() {
        assert!(parse("").is_err());
        assert!(parse("-1").is_err());
        assert!(parse("10 20").is_err());
    }
}
