//! Block devices in sysfs: which `/proc/diskstats` rows are partitions
//! (`/sys/class/block/<dev>/partition` exists), which are loop and RAM devices, and the name of
//! a device by number (`/sys/dev/block/<major>:<minor>` links to it). Sample (Debian 12, 6.18):
//! ```text
//! /sys/class/block/vda1/partition        -> "1"
//! /sys/dev/block/254:0                    -> ../../devices/pci0000:00/0000:00:04.0/virtio2/block/vda
//! ```

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use regex::Regex;

use crate::proc::diskstats::DiskStat;
use crate::roots::Roots;

/// A block device as the diskstats read saw it, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub stat: DiskStat,
    /// A partition (sysfs `class/block/<dev>/partition` exists, or the name says so).
    pub partition: bool,
}

/// Which block devices to export. Partitions, loop and RAM devices are off by default: they
/// repeat their parent's I/O or are not storage, and each costs ~20 series.
#[derive(Debug, Clone, Default)]
pub struct DiskFilter {
    pub include_partitions: bool,
    pub include_loop: bool,
    pub include_ram: bool,
    /// Devices whose name matches are dropped (after the class switches above).
    pub exclude: Option<Regex>,
    /// When set, only devices whose name matches are kept.
    pub include: Option<Regex>,
}

impl DiskFilter {
    pub fn keep(&self, d: &Disk) -> bool {
        let name = d.stat.name.as_str();
        if d.partition && !self.include_partitions {
            return false;
        }
        if is_loop(name) && !self.include_loop {
            return false;
        }
        if is_ram(name) && !self.include_ram {
            return false;
        }
        if self.exclude.as_ref().is_some_and(|re| re.is_match(name)) {
            return false;
        }
        self.include.as_ref().is_none_or(|re| re.is_match(name))
    }
}

/// `loopN`.
pub fn is_loop(name: &str) -> bool {
    name.strip_prefix("loop")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// `ramN`, `zramN`.
pub fn is_ram(name: &str) -> bool {
    let rest = name
        .strip_prefix("zram")
        .or_else(|| name.strip_prefix("ram"));
    rest.is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Remembers which devices are partitions: sysfs is asked once per (name, major, minor).
#[derive(Default)]
pub struct PartitionCache {
    known: HashMap<(String, u32, u32), bool>,
}

impl PartitionCache {
    pub fn classify(&mut self, roots: &Roots, stats: Vec<DiskStat>) -> Vec<Disk> {
        if self.known.len() > 4096 {
            self.known.clear(); // device churn (loop devices): keep the cache bounded
        }
        stats
            .into_iter()
            .map(|stat| {
                let key = (stat.name.clone(), stat.major, stat.minor);
                let partition = *self
                    .known
                    .entry(key)
                    .or_insert_with(|| is_partition(&roots.sys("class/block"), &stat.name));
                Disk { stat, partition }
            })
            .collect()
    }
}

fn is_partition(class_block: &Path, name: &str) -> bool {
    let dev = class_block.join(name);
    if dev.exists() {
        return dev.join("partition").exists();
    }
    // No sysfs entry (fixture trees, exotic mounts): judge by the name's shape.
    static SHAPE: OnceLock<Option<Regex>> = OnceLock::new();
    SHAPE
        .get_or_init(|| {
            Regex::new(r"^((h|s|v|xv)d[a-z]+\d+|(nvme\d+n\d+|mmcblk\d+|loop\d+|md\d+)p\d+)$").ok()
        })
        .as_ref()
        .is_some_and(|re| re.is_match(name))
}

/// The kernel name of block device `major:minor` (`loop0`), from the `/sys/dev/block` link;
/// `None` when sysfs does not know it.
pub fn name_of(roots: &Roots, major: u32, minor: u32) -> Option<String> {
    let target = std::fs::read_link(roots.sys(&format!("dev/block/{major}:{minor}"))).ok()?;
    target
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(name: &str, partition: bool) -> Disk {
        Disk {
            stat: DiskStat {
                name: name.into(),
                ..DiskStat::default()
            },
            partition,
        }
    }

    #[test]
    fn disk_filter_defaults_drop_partitions_loop_and_ram() {
        let f = DiskFilter::default();
        assert!(f.keep(&disk("vda", false)));
        assert!(f.keep(&disk("nvme0n1", false)));
        assert!(!f.keep(&disk("vda1", true)));
        assert!(!f.keep(&disk("loop0", false)));
        assert!(!f.keep(&disk("ram3", false)));
        assert!(!f.keep(&disk("zram0", false)));
        assert!(f.keep(&disk("loopy", false)), "only loopN is a loop device");
    }

    #[test]
    fn disk_filter_switches_and_regexes() {
        let f = DiskFilter {
            include_loop: true,
            exclude: Regex::new("^sr").ok(),
            include: Regex::new("^(loop|sd|sr)").ok(),
            ..DiskFilter::default()
        };
        assert!(f.keep(&disk("loop7", false)));
        assert!(!f.keep(&disk("sr0", false)));
        assert!(!f.keep(&disk("vda", false)));
    }

    #[test]
    fn partition_by_name_shape_without_sysfs() {
        let none = Path::new("/nonexistent-sysfs/class/block");
        assert!(is_partition(none, "sda1"));
        assert!(is_partition(none, "nvme0n1p2"));
        assert!(!is_partition(none, "nvme0n1"));
        assert!(!is_partition(none, "dm-0"));
    }

    #[test]
    fn names_of_this_machines_devices() {
        // Every diskstats device of this machine has its /sys/dev/block link.
        let roots = Roots::default();
        let disks = crate::proc::diskstats::read(&roots).unwrap().unwrap();
        for d in disks.iter().take(8) {
            assert_eq!(
                name_of(&roots, d.major, d.minor).as_deref(),
                Some(d.name.as_str())
            );
        }
        assert_eq!(name_of(&roots, 4095, 1_000_000), None);
    }
}
