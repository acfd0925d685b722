//! `/proc/loadavg` (man 5 proc). Sample (Debian 12, kernel 6.18):
//! ```text
//! 1.61 0.55 0.20 3/88 3867
//! ```
//! Load counts tasks in D state as well as runnable ones, which is why a node stalled on I/O
//! shows a high load with idle CPUs.

use crate::error::{parse_f64, parse_u64, ParseError};
use crate::proc::read_with;
use crate::{Error, Roots};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadAvg {
    /// 1-minute load average (tasks).
    pub load1: f64,
    /// 5-minute load average (tasks).
    pub load5: f64,
    /// 15-minute load average (tasks).
    pub load15: f64,
    /// Kernel scheduling entities runnable now.
    pub runnable: u64,
    /// Kernel scheduling entities that exist now.
    pub entities: u64,
}

pub fn parse(text: &str) -> Result<LoadAvg, ParseError> {
    let mut f = text.split_ascii_whitespace();
    let mut next = |what: &str| {
        f.next()
            .ok_or_else(|| ParseError::new(1, format!("missing {what}")))
    };
    let load1 = parse_f64(next("load1")?, 1, "load1")?;
    let load5 = parse_f64(next("load5")?, 1, "load5")?;
    let load15 = parse_f64(next("load15")?, 1, "load15")?;
    let sched = next("runnable/entities")?;
    let (r, e) = sched
        .split_once('/')
        .ok_or_else(|| ParseError::new(1, format!("expected runnable/entities, got {sched:?}")))?;
    Ok(LoadAvg {
        load1,
        load5,
        load15,
        runnable: parse_u64(r, 1, "runnable")?,
        entities: parse_u64(e, 1, "entities")?,
    })
}

pub fn read(roots: &Roots) -> Result<Option<LoadAvg>, Error> {
    read_with(&roots.proc("loadavg"), parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loadavg_debian12_kernel_6_18() {
        let l = parse("1.61 0.55 0.20 3/88 3867\n").unwrap();
        assert_eq!((l.load1, l.load5, l.load15), (1.61, 0.55, 0.20));
        assert_eq!((l.runnable, l.entities), (3, 88));
    }

    #[test]
    fn loadavg_extra_fields_ignored() {
        assert!(parse("0.1 0.2 0.3 1/2 3 future\n").is_ok());
    }

    #[test]
    fn loadavg_truncated_or_garbage() {
        assert!(parse("1.61 0.55").is_err());
        assert!(parse("1.61 0.55 0.20 388 1").is_err());
        assert!(parse("x 0.55 0.20 3/88 1").is_err());
        assert!(parse("NaN 0.55 0.20 3/88 1").is_err());
    }
}
