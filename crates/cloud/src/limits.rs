//! The IOPS and throughput an EBS volume or instance is held to *now*: pure rules from the
//! volume's type, size and provisioned figures (DescribeVolumes) and whether its burst bucket
//! has credits, and from the instance type's EBS figures (DescribeInstanceTypes).
//!
//! # Facts (EBS User Guide, "Amazon EBS volume types", "General Purpose SSD volumes",
//! "Provisioned IOPS SSD volumes", "Throughput Optimized HDD and Cold HDD volumes", and the
//! EC2 guide's "Amazon EBS-optimized instance types")
//!
//! - gp2: IOPS 3 per GiB (100 to 16,000), bursting to 3,000 below 1 TiB while it has credits.
//!   Throughput 128 MiB/s up to 170 GiB; 250 MiB/s from 334 GiB; in between 250 MiB/s while it
//!   has burst credits, else 128 MiB/s.
//! - gp3: the provisioned IOPS (3,000 when not given) and throughput (125 MiB/s when not given).
//! - io1: the provisioned IOPS; throughput 256 KiB per provisioned IOPS up to 500 MiB/s at
//!   32,000 IOPS, then 16 KiB per IOPS above 32,000, at most 1,000 MiB/s.
//! - io2 (all Block Express since April 2025): the provisioned IOPS; throughput 256 KiB per
//!   provisioned IOPS (the guide writes "0.256 MiB/s per provisioned IOPS"), at most
//!   4,000 MiB/s.
//! - st1: throughput its burst rate while it has credits, else its baseline (the model's
//!   [`Performance`]); at most 500 IOPS of 1 MiB. sc1 likewise, at most 250 IOPS.
//! - SSD I/O is counted in operations of up to 256 KiB, HDD I/O in operations of up to 1 MiB;
//!   larger ones count as several ([`CreditUnit::units`]).
//! - An instance: `BaselineIops`, `BaselineThroughputInMBps` (decimal MB) and their `Maximum`
//!   counterparts; the smaller sizes of most families reach their maximum only while the
//!   instance's EBS burst balance (`EBSIOBalance%`, `EBSByteBalance%`) lasts, about 30 minutes a
//!   day.
//! - Magnetic (`standard`) volumes have no published limit: no headroom.

use crate::model::{CreditUnit, Performance, VolumeType};

const MIB: f64 = 1_048_576.0;
const KIB: f64 = 1_024.0;

/// The limits in force: operations per second (in [`Limits::unit`]s) and bytes per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub iops: f64,
    pub bytes_per_second: f64,
    /// What one operation is for this volume's IOPS.
    pub unit: CreditUnit,
}

/// A volume's limits now. `credits`: whether its burst bucket has credits left (gp2, st1, sc1;
/// `None` when unknown, taken as yes: the burst ceiling is what it gives while it can). `None`
/// for types without a published limit, and io1/io2 without provisioned IOPS.
pub fn volume(
    vt: &VolumeType,
    size_gib: u64,
    provisioned_iops: Option<u64>,
    throughput_mibps: Option<u64>,
    credits: Option<bool>,
) -> Option<Limits> {
    let credits = credits.unwrap_or(true);
    let ssd = |iops: f64, bytes: f64| Limits {
        iops,
        bytes_per_second: bytes,
        unit: CreditUnit::Io256KiB,
    };
    match vt {
        VolumeType::Gp2 => {
            let p = vt.performance(size_gib)?;
            // From 1,000 GiB the baseline is the burst rate (`Performance` says so).
            let iops = if credits {
                p.burst_per_sec
            } else {
                p.baseline_per_sec
            };
            let mib = match size_gib {
                0..=170 => 128.0,
                171..=333 if !credits => 128.0,
                _ => 250.0,
            };
            Some(ssd(iops, mib * MIB))
        }
        VolumeType::Gp3 => {
            let iops = provisioned_iops.unwrap_or(3_000) as f64;
            let mib = throughput_mibps.unwrap_or(125) as f64;
            Some(ssd(iops, mib * MIB))
        }
        VolumeType::Io1 => {
            let iops = provisioned_iops? as f64;
            let bytes = if iops <= 32_000.0 {
                (iops * 256.0 * KIB).min(500.0 * MIB)
            } else {
                (500.0 * MIB + (iops - 32_000.0) * 16.0 * KIB).min(1_000.0 * MIB)
            };
            Some(ssd(iops, bytes))
        }
        VolumeType::Io2 => {
            let iops = provisioned_iops? as f64;
            Some(ssd(iops, (iops * 256.0 * KIB).min(4_000.0 * MIB)))
        }
        VolumeType::St1 | VolumeType::Sc1 => {
            let p: Performance = vt.performance(size_gib)?;
            let mibps = if credits {
                p.burst_per_sec
            } else {
                p.baseline_per_sec
            };
            let iops = if *vt == VolumeType::St1 { 500.0 } else { 250.0 };
            Some(Limits {
                iops,
                bytes_per_second: mibps * MIB,
                unit: CreditUnit::MiB,
            })
        }
        VolumeType::Standard | VolumeType::Other(_) => None,
    }
}

/// An instance type's EBS figures (DescribeInstanceTypes `EbsInfo.EbsOptimizedInfo`), in
/// operations and bytes per second.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct InstanceLimits {
    pub baseline_iops: f64,
    pub maximum_iops: f64,
    pub baseline_bytes_per_second: f64,
    pub maximum_bytes_per_second: f64,
}

impl InstanceLimits {
    /// From the API's figures: throughput in MB/s (decimal, as the API names it).
    pub fn from_api(
        baseline_iops: f64,
        maximum_iops: f64,
        baseline_mbps: f64,
        maximum_mbps: f64,
    ) -> Self {
        InstanceLimits {
            baseline_iops,
            maximum_iops,
            baseline_bytes_per_second: baseline_mbps * 1e6,
            maximum_bytes_per_second: maximum_mbps * 1e6,
        }
    }

    /// The limits in force: the maximum, or the baseline of whichever of the instance's EBS
    /// burst balances is spent (`io_spent`: `EBSIOBalance%` at 0, `bytes_spent`:
    /// `EBSByteBalance%` at 0).
    pub fn in_force(&self, io_spent: bool, bytes_spent: bool) -> Limits {
        Limits {
            iops: if io_spent {
                self.baseline_iops
            } else {
                self.maximum_iops
            },
            bytes_per_second: if bytes_spent {
                self.baseline_bytes_per_second
            } else {
                self.maximum_bytes_per_second
            },
            unit: CreditUnit::Io256KiB,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim(
        vt: &str,
        size: u64,
        iops: Option<u64>,
        tp: Option<u64>,
        credits: Option<bool>,
    ) -> (f64, f64) {
        let l = volume(&VolumeType::parse(vt), size, iops, tp, credits).expect("limits");
        (l.iops, l.bytes_per_second / MIB)
    }

    #[test]
    fn gp2_bursts_while_it_has_credits_and_its_throughput_depends_on_size() {
        assert_eq!(lim("gp2", 100, None, None, Some(true)), (3_000.0, 128.0));
        assert_eq!(
            lim("gp2", 100, None, None, None),
            (3_000.0, 128.0),
            "unknown: bursting"
        );
        assert_eq!(lim("gp2", 100, None, None, Some(false)), (300.0, 128.0));
        assert_eq!(lim("gp2", 1, None, None, Some(false)), (100.0, 128.0));
        assert_eq!(lim("gp2", 200, None, None, Some(true)), (3_000.0, 250.0));
        assert_eq!(lim("gp2", 200, None, None, Some(false)), (600.0, 128.0));
        assert_eq!(lim("gp2", 334, None, None, Some(false)), (1_002.0, 250.0));
        // From 1,000 GiB the baseline is the ceiling, credits or not.
        assert_eq!(lim("gp2", 2_000, None, None, Some(true)), (6_000.0, 250.0));
        assert_eq!(lim("gp2", 2_000, None, None, Some(false)), (6_000.0, 250.0));
    }

    #[test]
    fn provisioned_types_hold_what_is_provisioned() {
        assert_eq!(
            lim("gp3", 100, Some(3_000), Some(125), None),
            (3_000.0, 125.0)
        );
        assert_eq!(
            lim("gp3", 100, None, None, None),
            (3_000.0, 125.0),
            "gp3 defaults"
        );
        assert_eq!(
            lim("gp3", 100, Some(6_000), Some(500), None),
            (6_000.0, 500.0)
        );
        assert_eq!(lim("io1", 100, Some(1_000), None, None), (1_000.0, 250.0));
        assert_eq!(
            lim("io1", 1000, Some(32_000), None, None),
            (32_000.0, 500.0)
        );
        assert_eq!(
            lim("io1", 1300, Some(64_000), None, None),
            (64_000.0, 1_000.0)
        );
        assert_eq!(lim("io2", 100, Some(100), None, None), (100.0, 25.0));
        assert_eq!(
            lim("io2", 1000, Some(256_000), None, None),
            (256_000.0, 4_000.0)
        );
        assert!(volume(&VolumeType::Io1, 100, None, None, None).is_none());
        assert!(volume(&VolumeType::Standard, 100, None, None, None).is_none());
    }

    #[test]
    fn hdd_throughput_bursts_while_it_has_credits() {
        // st1 1 TiB: baseline 40 MiB/s, burst 250 MiB/s; sc1 1 TiB: 12 and 80.
        assert_eq!(lim("st1", 1024, None, None, Some(true)), (500.0, 250.0));
        assert_eq!(lim("st1", 1024, None, None, Some(false)), (500.0, 40.0));
        assert_eq!(lim("sc1", 1024, None, None, Some(false)), (250.0, 12.0));
        let l = volume(&VolumeType::St1, 1024, None, None, None).unwrap();
        assert_eq!(l.unit, CreditUnit::MiB);
    }

    #[test]
    fn an_instance_is_held_to_its_baseline_once_its_burst_balance_is_spent() {
        // m5.large: baseline 3,600 IOPS and 81.25 MB/s, maximum 18,750 IOPS and 593.75 MB/s.
        let i = InstanceLimits::from_api(3_600.0, 18_750.0, 81.25, 593.75);
        let f = i.in_force(false, false);
        assert_eq!((f.iops, f.bytes_per_second), (18_750.0, 593_750_000.0));
        let f = i.in_force(true, false);
        assert_eq!((f.iops, f.bytes_per_second), (3_600.0, 593_750_000.0));
        let f = i.in_force(false, true);
        assert_eq!((f.iops, f.bytes_per_second), (18_750.0, 81_250_000.0));
    }
}
