//! `/proc/stat`: kernel/system statistics (man 5 proc). Sample (Debian 12, kernel 6.18, 2 CPUs):
//! ```text
//! cpu  13268 0 3179 83905 308 0 69 243 0 0
//! cpu0 6290 0 1343 42627 62 0 16 120 0 0
//! cpu1 6978 0 1835 41277 245 0 52 123 0 0
//! intr 1517301 0 9 0 0 ...
//! ctxt 2843914
//! btime 1763931788
//! processes 3870
//! procs_running 3
//! procs_blocked 0
//! softirq 1096372 0 147412 1 20711 0 0 3 389113 0 539132
//! ```
//! Only the aggregate `cpu` line is kept (per-CPU lines would make labels scale with cores and
//! are not a stall signal); `iowait` and `steal` are.

use crate::error::{parse_u64, ParseError};
use crate::proc::read_with;
use crate::{Error, Roots};

/// Aggregate CPU time by mode, in clock ticks (`USER_HZ`, see [`crate::sysconf::clock_ticks`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTicks {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
    /// How many of the modes above the kernel printed (4 to 8): a mode the kernel did not
    /// print is unknown, not zero (2.6-era kernels lack steal).
    pub present: u8,
}

impl CpuTicks {
    /// `(mode, ticks)` pairs the kernel printed, in a stable order, for exposition.
    pub fn modes(&self) -> impl Iterator<Item = (&'static str, u64)> {
        let all = [
            ("user", self.user),
            ("nice", self.nice),
            ("system", self.system),
            ("idle", self.idle),
            ("iowait", self.iowait),
            ("irq", self.irq),
            ("softirq", self.softirq),
            ("steal", self.steal),
        ];
        all.into_iter().take(self.present as usize)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stat {
    /// Aggregate CPU ticks (the `cpu ` line).
    pub cpu: Option<CpuTicks>,
    /// Context switches since boot.
    pub ctxt: Option<u64>,
    /// Boot time, seconds since the epoch.
    pub btime: Option<u64>,
    /// Processes and threads created since boot (`processes`).
    pub forks: Option<u64>,
    /// Tasks runnable now.
    pub procs_running: Option<u64>,
    /// Tasks blocked on I/O now (uninterruptible sleep waiting for I/O).
    pub procs_blocked: Option<u64>,
}

/// Pure: unknown lines ignored, a known key with a garbage value is an error.
pub fn parse(text: &str) -> Result<Stat, ParseError> {
    let mut st = Stat::default();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let mut fields = line.split_ascii_whitespace();
        let Some(key) = fields.next() else { continue };
        let single = |fields: &mut std::str::SplitAsciiWhitespace<'_>| -> Result<u64, ParseError> {
            let v = fields
                .next()
                .ok_or_else(|| ParseError::new(n, format!("{key}: missing value")))?;
            parse_u64(v, n, key)
        };
        match key {
            "cpu" => {
                let mut v = [0u64; 8];
                let mut got = 0u8;
                for (slot, f) in v.iter_mut().zip(&mut fields) {
                    *slot = parse_u64(f, n, "cpu")?;
                    got += 1;
                }
                // user nice system idle are present since 2.4; the rest appeared later.
                if got < 4 {
                    return Err(ParseError::new(n, "cpu: fewer than 4 fields"));
                }
                st.cpu = Some(CpuTicks {
                    user: v[0],
                    nice: v[1],
                    system: v[2],
                    idle: v[3],
                    iowait: v[4],
                    irq: v[5],
                    softirq: v[6],
                    steal: v[7],
                    present: got,
                });
            }
            "ctxt" => st.ctxt = Some(single(&mut fields)?),
            "btime" => st.btime = Some(single(&mut fields)?),
            "processes" => st.forks = Some(single(&mut fields)?),
            "procs_running" => st.procs_running = Some(single(&mut fields)?),
            "procs_blocked" => st.procs_blocked = Some(single(&mut fields)?),
            _ => {}
        }
    }
    if st == Stat::default() {
        return Err(ParseError::new(0, "no known fields"));
    }
    Ok(st)
}

/// Thin: `Ok(None)` when the file does not exist.
pub fn read(roots: &Roots) -> Result<Option<Stat>, Error> {
    read_with(&roots.proc("stat"), parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN12_KERNEL_6_18: &str = "cpu  13268 0 3179 83905 308 0 69 243 0 0
cpu0 6290 0 1343 42627 62 0 16 120 0 0
cpu1 6978 0 1835 41277 245 0 52 123 0 0
intr 1517301 0 9 0 0 0 0 0 0 0 0
ctxt 2843914
btime 1763931788
processes 3870
procs_running 3
procs_blocked 1
softirq 1096372 0 147412 1 20711 0 0 3 389113 0 539132
";

    #[test]
    fn stat_debian12_kernel_6_18() {
        let st = parse(DEBIAN12_KERNEL_6_18).unwrap();
        assert_eq!(st.procs_blocked, Some(1));
        assert_eq!(st.procs_running, Some(3));
        assert_eq!(st.ctxt, Some(2843914));
        assert_eq!(st.forks, Some(3870));
        assert_eq!(st.btime, Some(1763931788));
        let cpu = st.cpu.unwrap();
        assert_eq!((cpu.user, cpu.iowait, cpu.steal), (13268, 308, 243));
    }

    #[test]
    fn stat_linux_2_6_cpu_line_without_steal() {
        let st = parse("cpu  1 2 3 4 5\nprocs_blocked 0\n").unwrap();
        let cpu = st.cpu.unwrap();
        assert_eq!(cpu.iowait, 5);
        let modes: Vec<&str> = cpu.modes().map(|(m, _)| m).collect();
        assert_eq!(
            modes,
            ["user", "nice", "system", "idle", "iowait"],
            "missing modes are absent, not exported as 0"
        );
    }

    #[test]
    fn stat_unknown_keys_ignored() {
        let st = parse("future_key 1 2 3\nprocs_blocked 7\n").unwrap();
        assert_eq!(st.procs_blocked, Some(7));
    }

    #[test]
    fn stat_garbage_names_the_line() {
        let err = parse("ctxt 12\nprocs_blocked x\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.msg.contains("procs_blocked"), "{err}");
        assert!(parse("").is_err());
        assert!(parse("procs_blocked").is_err(), "truncated line");
    }
}
