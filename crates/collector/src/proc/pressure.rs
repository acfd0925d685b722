//! `/proc/pressure/{cpu,io,memory}`: pressure stall information (kernel docs:
//! Documentation/accounting/psi.rst). Sample (Debian 12, kernel 6.18):
//! ```text
//! some avg10=0.04 avg60=0.02 avg300=0.08 total=1038877
//! full avg10=0.00 avg60=0.00 avg300=0.06 total=931496
//! ```
//! `some`: share of time at least one task was stalled on the resource; `full`: all non-idle
//! tasks were stalled at once. `full` for cpu exists at system level since 5.13 and may be
//! absent on older kernels; a kernel built without PSI (or booted `psi=0`) has no files at all,
//! or files that fail to read with `EOPNOTSUPP`.

use crate::error::{parse_f64, parse_u64, ParseError};
use crate::proc::read_with;
use crate::{Error, Roots};

/// A PSI resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    Cpu,
    Io,
    Memory,
}

impl Resource {
    pub const ALL: [Resource; 3] = [Resource::Cpu, Resource::Io, Resource::Memory];

    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Cpu => "cpu",
            Resource::Io => "io",
            Resource::Memory => "memory",
        }
    }
}

/// One line: `some` or `full`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Record {
    /// Share of wall time stalled over the last 10 s, as a ratio 0..1 (the file says percent).
    pub avg10: f64,
    /// Same over 60 s, ratio.
    pub avg60: f64,
    /// Same over 300 s, ratio.
    pub avg300: f64,
    /// Total stall time, microseconds.
    pub total_us: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pressure {
    pub some: Option<Record>,
    pub full: Option<Record>,
}

/// `"12.34"` percent → 0.1234. Parsed as `12.34e-2` rather than divided by 100, so the ratio is
/// the float nearest the decimal the kernel printed and exposes as `0.1234`, not
/// `0.12340000000000001`.
fn percent_to_ratio(v: &str, n: usize, what: &str) -> Result<f64, ParseError> {
    parse_f64(v, n, what)?; // validate the text itself (no exponents of its own, finite)
    if v.contains(['e', 'E']) {
        return Err(ParseError::new(
            n,
            format!("{what}: unexpected exponent in {v:?}"),
        ));
    }
    parse_f64(&format!("{v}e-2"), n, what)
}

fn parse_record(rest: &str, n: usize) -> Result<Record, ParseError> {
    let mut r = Record::default();
    let mut seen = 0u8;
    for kv in rest.split_ascii_whitespace() {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| ParseError::new(n, format!("expected key=value, got {kv:?}")))?;
        match k {
            "avg10" => (r.avg10, seen) = (percent_to_ratio(v, n, k)?, seen | 1),
            "avg60" => (r.avg60, seen) = (percent_to_ratio(v, n, k)?, seen | 2),
            "avg300" => (r.avg300, seen) = (percent_to_ratio(v, n, k)?, seen | 4),
            "total" => (r.total_us, seen) = (parse_u64(v, n, k)?, seen | 8),
            _ => {}
        }
    }
    if seen != 15 {
        return Err(ParseError::new(
            n,
            "missing one of avg10, avg60, avg300, total",
        ));
    }
    Ok(r)
}

/// Pure: unknown line kinds and keys ignored, a record lacking a field is an error.
pub fn parse(text: &str) -> Result<Pressure, ParseError> {
    let mut p = Pressure::default();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
        match kind {
            "some" => p.some = Some(parse_record(rest, n)?),
            "full" => p.full = Some(parse_record(rest, n)?),
            _ => {}
        }
    }
    if p.some.is_none() {
        return Err(ParseError::new(0, "no `some` line"));
    }
    Ok(p)
}

/// Thin: `Ok(None)` when the kernel has no PSI (no file, or `EOPNOTSUPP` when booted `psi=0`).
pub fn read(roots: &Roots, resource: Resource) -> Result<Option<Pressure>, Error> {
    let path = roots.proc(&format!("pressure/{}", resource.as_str()));
    match read_with(&path, parse) {
        Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            Ok(None)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_io_debian12_kernel_6_18() {
        let p = parse(
            "some avg10=0.04 avg60=0.02 avg300=0.08 total=1038877\n\
             full avg10=0.00 avg60=0.00 avg300=0.06 total=931496\n",
        )
        .unwrap();
        let some = p.some.unwrap();
        assert!((some.avg10 - 0.0004).abs() < 1e-12);
        assert_eq!(some.total_us, 1038877);
        assert_eq!(p.full.unwrap().total_us, 931496);
    }

    #[test]
    fn pressure_cpu_kernel_5_4_has_no_full_line() {
        let p = parse("some avg10=12.50 avg60=1.00 avg300=0.00 total=99\n").unwrap();
        assert!(p.full.is_none());
        assert!((p.some.unwrap().avg10 - 0.125).abs() < 1e-12);
    }

    #[test]
    fn pressure_unknown_keys_ignored() {
        let p = parse("some avg10=1 avg60=2 avg300=3 total=4 avg1=9\nwhatever x\n").unwrap();
        assert_eq!(p.some.unwrap().total_us, 4);
    }

    #[test]
    fn pressure_truncated_or_garbage() {
        assert!(parse("").is_err());
        assert!(parse("some avg10=0.04 avg60=0.02").is_err());
        let e =
            parse("some avg10=1 avg60=2 avg300=3 total=4\nfull avg10=x avg60=2 avg300=3 total=4\n")
                .unwrap_err();
        assert_eq!(e.line, 2);
    }
}
