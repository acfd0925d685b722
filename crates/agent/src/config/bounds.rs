//! Every numeric key's range, in one table. A value outside its range is a config error naming
//! the file, line and key — at start the agent exits 2, on reload the running config stays.
//!
//! Why bounds at all: every duration ends up in `Instant + Duration`, `Duration * n` or a
//! sleep, every share in a division, every count in an allocation. Values near `u64::MAX`
//! seconds or a CPU budget of `1e-30%` used to be accepted and then killed a sampler thread by
//! an arithmetic panic. The ranges below are wide enough for any real use and small enough
//! that no arithmetic on them can overflow (the largest product, `3 × 1 h + 1 h`, is hours).
//! `config/stallwatch.example.toml` documents each range beside its key; a test walks every
//! entry at and past both ends.

use std::time::Duration;

use super::error::{ConfigError, Locator};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Range {
    Duration {
        min: Duration,
        max: Duration,
    },
    /// A plain count (also the number of entries of an array of tables).
    Count {
        min: u64,
        max: u64,
    },
    /// A share (`"5%"` is 0.05). With `off`, exactly 0 is also allowed and turns the feature
    /// off (a CPU budget of "0%" disables the stretching).
    Share {
        min: f64,
        max: f64,
        off: bool,
    },
    /// Bytes.
    Size {
        min: u64,
        max: u64,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// The key, with `[[array]]` entries written without an index (`probe.size`).
    pub key: &'static str,
    pub range: Range,
}

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
const fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}
const MIN: u64 = 60;
const HOUR: u64 = 3600;
const DAY: u64 = 86_400;

const fn dur(key: &'static str, min: Duration, max: Duration) -> Bound {
    Bound {
        key,
        range: Range::Duration { min, max },
    }
}
const fn count(key: &'static str, min: u64, max: u64) -> Bound {
    Bound {
        key,
        range: Range::Count { min, max },
    }
}
const fn share(key: &'static str, min: f64, max: f64, off: bool) -> Bound {
    Bound {
        key,
        range: Range::Share { min, max, off },
    }
}
const fn size(key: &'static str, min: u64, max: u64) -> Bound {
    Bound {
        key,
        range: Range::Size { min, max },
    }
}

/// The table. Cross-field rules (checked after these, in `validate.rs`):
/// `sampler.interval ≤ sampler.peak_window ≤ 100000 × sampler.interval` (the peak windows keep
/// at most one entry per sample), `threads.fast_interval ≤ threads.interval`,
/// `cloud.fast_poll_interval ≤ cloud.poll_interval`, `bpf.ring_buffer` a power of two.
pub const BOUNDS: &[Bound] = &[
    dur("sampler.interval", ms(10), s(HOUR)),
    dur("sampler.peak_window", ms(10), s(DAY)),
    dur("sampler.source_timeout", ms(10), s(HOUR)),
    size("writeback.burst_threshold", 0, 1 << 40),
    dur("threads.interval", ms(100), s(HOUR)),
    dur("threads.fast_interval", ms(100), s(HOUR)),
    dur("threads.timeout", ms(10), s(HOUR)),
    share("threads.stall_psi_threshold", 0.0, 1.0, false),
    count("threads.top_groups", 1, 1000),
    count("threads.top_wchans", 1, 1000),
    count("threads.stacks_max", 1, 1000),
    share("threads.max_cpu", 0.001, 1.0, true),
    count("threads.group_rules", 0, 100),
    count("probe", 0, 16),
    size("probe.size", 1, 64 << 20),
    dur("probe.interval", ms(100), s(DAY)),
    dur("probe.timeout", ms(10), s(HOUR)),
    dur("containers.interval", ms(100), s(HOUR)),
    dur("containers.timeout", ms(10), s(HOUR)),
    count("containers.max_containers", 1, 100_000),
    share("containers.max_cpu", 0.001, 1.0, true),
    dur("cloud.imds_timeout", ms(10), s(MIN)),
    dur("cloud.request_timeout", ms(100), s(10 * MIN)),
    dur("cloud.describe_interval", s(1), s(DAY)),
    dur("cloud.poll_interval", s(1), s(DAY)),
    dur("cloud.fast_poll_interval", s(1), s(DAY)),
    share("cloud.fast_poll_below", 0.0, 1.0, false),
    dur("cloud.fast_poll_empty_within", s(MIN), s(DAY)),
    dur("cloud.lookback", s(MIN), s(3 * HOUR)),
    dur("cloud.staleness", s(MIN), s(DAY)),
    dur("cloud.retry_min", ms(100), s(HOUR)),
    dur("cloud.model_interval", ms(100), s(MIN)),
    count("cloud.volume", 0, 256),
    share("verdict.io_some", 0.001, 1.0, false),
    share("verdict.io_full", 0.001, 1.0, false),
    share("verdict.cpu_some", 0.001, 1.0, false),
    count("verdict.run_queue_per_cpu", 1, 1000),
    share("verdict.memory_some", 0.001, 1.0, false),
    share("verdict.memory_full", 0.001, 1.0, false),
    dur("verdict.stall_after", ms(100), s(HOUR)),
    share("verdict.utilisation", 0.01, 1.0, false),
    dur("verdict.await", ms(1), s(MIN)),
    count("verdict.queue", 1, 100_000),
    share("verdict.limit_share", 0.01, 1.0, false),
    size("verdict.writeback_bytes", 1 << 20, 1 << 40),
    count("verdict.lock_threads", 1, 100_000),
    dur("verdict.lock_after", ms(100), s(HOUR)),
    share("verdict.credits_empty", 0.0, 0.5, false),
    count("verdict.enter_ticks", 1, 60),
    dur("verdict.clear_after", s(1), s(HOUR)),
    share("verdict.hold_ratio", 0.1, 1.0, false),
    dur("incident.min_duration", s(1), s(HOUR)),
    count("incident.keep", 1, 1000),
    count("incident.max_files", 1, 100_000),
    size("incident.max_bytes", 1 << 20, 1 << 40),
    dur("bpf.interval", ms(100), s(MIN)),
    dur("bpf.timeout", ms(10), s(HOUR)),
    dur("bpf.long_episode", ms(1), s(HOUR)),
    count("bpf.max_in_flight", 64, 1_000_000),
    count("bpf.max_keys", 64, 1_000_000),
    size("bpf.ring_buffer", 4096, 64 << 20),
    dur("bpf.walk_interval", s(1), s(DAY)),
];

/// The range of `key` (array entries without their index).
pub fn range(key: &str) -> Option<Range> {
    BOUNDS.iter().find(|b| b.key == key).map(|b| b.range)
}

/// A value to check against its key's range.
#[derive(Debug, Clone, Copy)]
pub enum Value {
    Duration(Duration),
    Count(u64),
    Share(f64),
    Size(u64),
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Range::Duration { min, max } => write!(
                f,
                "{} to {}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
            Range::Count { min, max } => write!(f, "{min} to {max}"),
            Range::Share { min, max, off } => write!(
                f,
                "{}{}% to {}%",
                if off { "0% (off) or " } else { "" },
                min * 100.0,
                max * 100.0
            ),
            Range::Size { min, max } => write!(f, "{} to {}", fmt_size(min), fmt_size(max)),
        }
    }
}

impl Range {
    fn contains(&self, v: Value) -> bool {
        match (*self, v) {
            (Range::Duration { min, max }, Value::Duration(d)) => (min..=max).contains(&d),
            (Range::Count { min, max }, Value::Count(n)) => (min..=max).contains(&n),
            (Range::Size { min, max }, Value::Size(n)) => (min..=max).contains(&n),
            (Range::Share { min, max, off }, Value::Share(x)) => {
                (off && x == 0.0) || (min..=max).contains(&x)
            }
            _ => false,
        }
    }
}

/// Bytes in the largest binary unit that divides them: `64MiB`, `1 byte`, `1000 bytes`.
fn fmt_size(n: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if n > 0 && n % (1u64 << shift) == 0 {
            return format!("{}{unit}", n >> shift);
        }
    }
    if n == 1 {
        "1 byte".into()
    } else {
        format!("{n} bytes")
    }
}

fn shown(v: Value) -> String {
    match v {
        Value::Duration(d) => format!("{:?}", d),
        Value::Count(n) => n.to_string(),
        Value::Share(x) => format!("{}%", x * 100.0),
        Value::Size(n) => fmt_size(n),
    }
}

/// Checks `v` against the range of `table_key`; the error names `at` (the key as written,
/// e.g. `probe[2].size`) and its line.
pub fn check(loc: &Locator<'_>, table_key: &str, at: &str, v: Value) -> Result<(), ConfigError> {
    let Some(r) = range(table_key) else {
        // A key without a range is a bug in the table; the unit tests keep it complete.
        return Ok(());
    };
    if r.contains(v) {
        return Ok(());
    }
    Err(loc.err(at, format!("{} is out of range: must be {r}", shown(v))))
}

/// Checks the number of entries of an array of tables (`[[probe]]`); the error names the
/// first entry past the maximum (`probe[16]`) and its line.
pub fn check_len(loc: &Locator<'_>, key: &str, len: usize) -> Result<(), ConfigError> {
    let at = match range(key) {
        Some(Range::Count { max, .. }) if len as u64 > max => format!("{key}[{max}]"),
        _ => key.to_string(),
    };
    check(loc, key, &at, Value::Count(len as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Prints the table as the example config states it (`cargo test ranges_as_documented
    /// -- --nocapture`), and checks the forms.
    #[test]
    fn ranges_as_documented() {
        for b in BOUNDS {
            println!("{}: Range: {}.", b.key, b.range);
        }
        assert_eq!(fmt_size(64 << 20), "64MiB");
        assert_eq!(fmt_size(1), "1 byte");
        assert_eq!(fmt_size(1000), "1000 bytes");
        assert_eq!(
            range("threads.max_cpu").unwrap().to_string(),
            "0% (off) or 0.1% to 100%"
        );
    }
}
