//! EBS volume types as the credit model needs them: which burst, their baseline, burst and
//! bucket size, and the unit their credits are counted in (facts in the parent module's doc).

use std::fmt;
use std::str::FromStr;

use super::{
    GP2_BUCKET_CREDITS, GP2_BURST_IOPS, GP2_MAX_BASELINE_IOPS, GP2_MIN_BASELINE_IOPS,
    HDD_IO_UNIT_BYTES, SSD_IO_UNIT_BYTES,
};

/// An EBS volume type as the EC2 API spells it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum VolumeType {
    Gp2,
    Gp3,
    Io1,
    Io2,
    St1,
    Sc1,
    /// Magnetic (previous generation): no bucket model.
    Standard,
    /// Anything else, kept verbatim (for labels).
    Other(String),
}

impl VolumeType {
    /// Parses the EC2 `VolumeType` string ("gp2", "st1", …); case and surrounding white space
    /// are ignored; anything unknown is [`VolumeType::Other`].
    pub fn parse(s: &str) -> Self {
        let t = s.trim();
        match t.to_ascii_lowercase().as_str() {
            "gp2" => Self::Gp2,
            "gp3" => Self::Gp3,
            "io1" => Self::Io1,
            "io2" => Self::Io2,
            "st1" => Self::St1,
            "sc1" => Self::Sc1,
            "standard" => Self::Standard,
            _ => Self::Other(t.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Gp2 => "gp2",
            Self::Gp3 => "gp3",
            Self::Io1 => "io1",
            Self::Io2 => "io2",
            Self::St1 => "st1",
            Self::Sc1 => "sc1",
            Self::Standard => "standard",
            Self::Other(s) => s,
        }
    }

    /// Whether CloudWatch `BurstBalance` is worth fetching for a volume of this type and size,
    /// and whether [`Bucket::new`] models it: gp2 below 1 TiB (1024 GiB), st1 and sc1 of any
    /// non-zero size.
    pub fn has_burst_balance(&self, size_gib: u64) -> bool {
        match self {
            Self::Gp2 => size_gib > 0 && size_gib < 1024,
            Self::St1 | Self::Sc1 => size_gib > 0,
            _ => false,
        }
    }

    /// The unit credits are counted in, for the bursting types.
    pub fn credit_unit(&self) -> Option<CreditUnit> {
        match self {
            Self::Gp2 => Some(CreditUnit::Io256KiB),
            Self::St1 | Self::Sc1 => Some(CreditUnit::MiB),
            _ => None,
        }
    }

    /// Baseline, burst and bucket size of a gp2/st1/sc1 volume of `size_gib`, at any size (gp2
    /// from 1000 GiB has `burst == baseline`); `None` for the other types and for size 0.
    pub fn performance(&self, size_gib: u64) -> Option<Performance> {
        if size_gib == 0 {
            return None;
        }
        let gib = size_gib as f64;
        let tib = gib / 1024.0;
        match self {
            Self::Gp2 => {
                let baseline = gp2_baseline_iops(size_gib);
                Some(Performance {
                    unit: CreditUnit::Io256KiB,
                    baseline_per_sec: baseline,
                    burst_per_sec: GP2_BURST_IOPS.max(baseline),
                    capacity: GP2_BUCKET_CREDITS,
                })
            }
            Self::St1 => Some(Performance::hdd(tib, 40.0, 500.0, 250.0, 500.0)),
            Self::Sc1 => Some(Performance::hdd(tib, 12.0, 192.0, 80.0, 250.0)),
            _ => None,
        }
    }

    /// The IOPS a volume holds without burst credits, as `ebs_volume_baseline_iops` exports it:
    /// gp2's 3 per GiB (100..=16,000); gp3/io1/io2 what is provisioned (they do not burst, so
    /// that is the rate they hold); `None` for the throughput-based HDD types and the rest.
    pub fn baseline_iops(&self, size_gib: u64, provisioned: Option<u64>) -> Option<f64> {
        match self {
            Self::Gp2 => Some(gp2_baseline_iops(size_gib)),
            Self::Gp3 | Self::Io1 | Self::Io2 => provisioned.map(|p| p as f64),
            _ => None,
        }
    }
}

/// gp2: 3 IOPS per GiB, at least 100 and at most 16,000.
fn gp2_baseline_iops(size_gib: u64) -> f64 {
    (3.0 * size_gib as f64).clamp(GP2_MIN_BASELINE_IOPS, GP2_MAX_BASELINE_IOPS)
}

impl FromStr for VolumeType {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::parse(s))
    }
}

impl fmt::Display for VolumeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Baseline, burst and bucket size of a bursting volume, in [`CreditUnit`]s (per second).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Performance {
    pub unit: CreditUnit,
    pub baseline_per_sec: f64,
    pub burst_per_sec: f64,
    pub capacity: f64,
}

impl Performance {
    fn hdd(tib: f64, base_per_tib: f64, base_cap: f64, burst_per_tib: f64, burst_cap: f64) -> Self {
        Performance {
            unit: CreditUnit::MiB,
            baseline_per_sec: (base_per_tib * tib).min(base_cap),
            burst_per_sec: (burst_per_tib * tib).min(burst_cap),
            // 1 TiB of credits per TiB of size, counted in MiB.
            capacity: tib * 1024.0 * 1024.0,
        }
    }
}

/// What one credit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CreditUnit {
    /// SSD: one I/O of up to 256 KiB.
    Io256KiB,
    /// HDD: one MiB of throughput (an I/O below 1 MiB counts as 1 MiB).
    MiB,
}

impl CreditUnit {
    /// A short name for labels and logs: `"io"` or `"MiB"`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Io256KiB => "io",
            Self::MiB => "MiB",
        }
    }

    /// Credits consumed by `ops` completed I/Os totalling `bytes` (read + write deltas from
    /// `/proc/diskstats`; sectors × 512).
    ///
    /// EBS charges each I/O separately: `ceil(size / 256 KiB)` units on SSD, `max(size, 1 MiB)`
    /// on HDD. Summed over I/Os, both are bounded below by `max(ops, bytes / unit)` —
    /// `max(ops, ceil(bytes / 256 KiB))` on SSD, `max(ops × 1 MiB, bytes)` on HDD — and equal it
    /// when every I/O is at most one unit (the common case: small random I/O) or every I/O is a
    /// whole number of units (large streaming I/O). Mixed sizes make it undercount slightly.
    /// It overcounts when EBS merges sequential I/O the kernel already submitted separately
    /// (diskstats counts requests after the block layer's own merging); usage above the burst
    /// rate is clamped in [`Bucket`], which bounds that error where it matters most. Erring
    /// towards more usage makes the warning early rather than late.
    pub fn units(self, ops: u64, bytes: u64) -> f64 {
        match self {
            Self::Io256KiB => ops.max(bytes.div_ceil(SSD_IO_UNIT_BYTES)) as f64,
            Self::MiB => {
                // In f64: ops × 1 MiB can exceed u64 only for absurd inputs, but stay total.
                let by_ops = ops as f64;
                let by_bytes = bytes as f64 / HDD_IO_UNIT_BYTES as f64;
                by_ops.max(by_bytes)
            }
        }
    }
}
