//! `/proc/pressure/{cpu,io,memory}`: pressure stall information (kernel docs:
//! Documentation/accounting/psi.rst). Sample (Debian 12, kernel 6.18):
//! ```text
//! some avg10=0.04 avg60=0.02 avg300=0.08 total=1038877
//! full avg10=0.00 avg60=0.00 avg300=0.06 total=931496
//! ```
//! `some`: share of time at least one task was stalled on the resource; `full`: all non-idle
//! tasks were stalled at once. `full` for cpu exists at system level since 5.13 and may be
//! absent on older kernels; `/proc/pressure/irq` (6.1+, with `CONFIG_IRQ_TIME_ACCOUNTING`) has
//! only a `full` line. A kernel built without PSI (or booted `psi=0`) has no files at all, or
//! files that fail to read with `EOPNOTSUPP`.

use crate::error::{parse_f64, parse_u64, ParseError};
use crate::proc::read_with;
use crate::{Error, Roots};

/// A PSI resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    Cpu,
    Io,
    Memory,
    /// Time spent in hard and soft interrupts stealing from tasks (only `full`).
    Irq,
}

impl Resource {
    /// Every resource the host may report, indexing [`crate::sample::HostSnapshot::pressure`].
    pub const ALL: [Resource; 4] = [Resource::Cpu, Resource::Io, Resource::Memory, Resource::Irq];

    /// The resources a cgroup reports (`<resource>.pressure`), indexing
    /// [`crate::cgroup::ContainerStats::pressure`]: a container's irq pressure is not its own
    /// doing, and one file fewer per container per pass is worth keeping.
    pub const CGROUP: [Resource; 3] = [Resource::Cpu, Resource::Io, Resource::Memory];

    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Cpu => "cpu",
            Resource::Io => "io",
            Resource::Memory => "memory",
            Resource::Irq => "irq",
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

/// A corrupt file must not export a stall ratio of 1.5.
fn percent_in_range(v: &str) -> bool {
    v.parse::<f64>().is_ok_and(|p| (0.0..=100.0).contains(&p))
}

fn parse_record(rest: &str, n: usize) -> Result<Record, ParseError> {
    let mut r = Record::default();
    let mut seen = 0u8;
    for kv in rest.split_ascii_whitespace() {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| ParseError::new(n, format!("expected key=value, got {kv:?}")))?;
        match k {
            "avg10" | "avg60" | "avg300" if !percent_in_range(v) => {
                return Err(ParseError::new(
                    n,
                    format!("{k}: {v:?} is not a share of time (0 to 100 percent)"),
                ))
            }
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

/// Pure: unknown line kinds and keys ignored, a record lacking a field is an error, a file
/// with neither line is an error (`irq` has only `full`).
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
    if p.some.is_none() && p.full.is_none() {
        return Err(ParseError::new(0, "no `some` or `full` line"));
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

    /// `/proc/pressure/irq` (kernel 6.1+, `CONFIG_IRQ_TIME_ACCOUNTING`; format from
    /// Documentation/accounting/psi.rst): only a `full` line. It used to be rejected whole.
    #[test]
    fn pressure_irq_kernel_6_1_has_only_a_full_line() {
        let p = parse("full avg10=0.31 avg60=0.12 avg300=0.02 total=1570427\n").unwrap();
        assert!(p.some.is_none());
        assert_eq!(p.full.unwrap().total_us, 1570427);
    }

    /// A corrupt avg10 of 150 % was exported as a ratio of 1.5.
    #[test]
    fn pressure_averages_beyond_100_percent_are_errors() {
        let e = parse("some avg10=150.00 avg60=0.00 avg300=0.00 total=1\n").unwrap_err();
        assert_eq!(e.line, 1);
        assert!(e.msg.contains("avg10"), "{e}");
        assert!(parse("some avg10=0.00 avg60=-1.00 avg300=0.00 total=1\n").is_err());
        assert!(parse("some avg10=100.00 avg60=100.00 avg300=100.00 total=1\n").is_ok());
    }

    #[test]
    fn pressure_irq_is_read_where_the_kernel_has_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("pressure")).unwrap();
        std::fs::write(
            dir.path().join("pressure/irq"),
            "full avg10=1.00 avg60=0.50 avg300=0.10 total=42\n",
        )
        .unwrap();
        let roots = Roots {
            procfs: dir.path().to_path_buf(),
            ..Roots::default()
        };
        let p = read(&roots, Resource::Irq).unwrap().unwrap();
        assert!((p.full.unwrap().avg10 - 0.01).abs() < 1e-12);
        assert_eq!(read(&roots, Resource::Cpu).unwrap(), None);
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
