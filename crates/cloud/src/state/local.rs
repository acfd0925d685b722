//! The local sources: disk counters for the credit model and the headroom, the model state
//! saved before a restart, EBS NVMe log pages.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use stallwatch_collector::sys::block::Disk;

use super::State;
use crate::model::{Bucket, CreditUnit, Gap, VolumeType};
use crate::nvme;
use crate::persist::SavedVolume;

/// A volume created less than this long before the agent first sees its device is taken to
/// have started full, with every I/O since in the device's counters (the kernel's counters
/// start when the device appears, at attach). Older volumes may have been attached elsewhere,
/// or detached and attached again, and their counters then miss I/O.
pub const NEW_VOLUME_SECONDS: f64 = 3_600.0;

/// How a bucket was started without CloudWatch, for the log.
#[derive(Debug, Clone, PartialEq)]
pub enum Started {
    /// A volume minutes old: full at creation, less the I/O counted since.
    NewVolume {
        volume_id: String,
        age_seconds: f64,
        percent: f64,
    },
    /// The estimate saved before the restart, carried over the gap.
    Restored {
        volume_id: String,
        gap_seconds: f64,
        counted: bool,
        percent: Option<f64>,
    },
}

impl State {
    /// One diskstats reading, every device unfiltered (the host sampler's), completed at `at`
    /// (`at_unix` on the wall clock): each mapped device's I/O since the previous reading
    /// advances its volume's bucket and rate window **at the reading's time**, so a late look
    /// does not smear the integration; the mapped volumes' rates summed are the instance's. A
    /// bucket without an estimate is first given one without CloudWatch where it can be (a
    /// saved estimate from before a restart, or a volume minutes old). A reading already fed
    /// (same or older `at`) is ignored: `None`.
    pub fn on_disk_counters(
        &mut self,
        disks: &[Disk],
        at: Instant,
        at_unix: f64,
    ) -> Option<Vec<Started>> {
        if self.disks_at.is_some_and(|(last, _)| at <= last) {
            return None;
        }
        let dt = self.disks_at.map(|(_, t)| at_unix - t);
        self.disks_at = Some((at, at_unix));
        let by_device: HashMap<&str, &Disk> =
            disks.iter().map(|d| (d.stat.name.as_str(), d)).collect();
        let mut started = Vec::new();
        let (mut sum_ops, mut sum_bytes, mut any) = (0.0, 0.0, false);
        let mapped: Vec<(String, String)> = self
            .devices
            .iter()
            .map(|(v, d)| (v.clone(), d.clone()))
            .collect();
        for (vol, dev) in mapped {
            let Some(d) = by_device.get(dev.as_str()) else {
                continue;
            };
            let s = &d.stat;
            let ops = s.reads_completed + s.writes_completed;
            let bytes = (s.sectors_read + s.sectors_written) * 512;
            if let Some(st) = self.start_without_cloudwatch(&vol, &dev, ops, bytes, at_unix) {
                started.push(st);
            }
            let prev = self.prev_io.insert(dev.clone(), (ops, bytes));
            let Some((pops, pbytes)) = prev else { continue };
            let (dops, dbytes) = (ops.saturating_sub(pops), bytes.saturating_sub(pbytes));
            if let Some(b) = self.buckets.get_mut(&vol) {
                b.advance(at_unix, dops, dbytes);
            }
            let Some(dt) = dt.filter(|dt| *dt > 0.0) else {
                continue;
            };
            let unit = self
                .volumes
                .iter()
                .find(|v| v.volume_id == vol)
                .and_then(|v| VolumeType::parse(&v.volume_type).credit_unit())
                .unwrap_or(CreditUnit::Io256KiB);
            let units = unit.units(dops, dbytes);
            self.rates
                .entry(vol)
                .or_default()
                .push(at_unix, dt, units, dbytes as f64);
            sum_ops += units;
            sum_bytes += dbytes as f64;
            any = true;
        }
        if let (true, Some(dt)) = (any, dt) {
            self.instance_rates.push(at_unix, dt, sum_ops, sum_bytes);
        }
        Some(started)
    }

    /// Gives `vol`'s bucket an estimate without CloudWatch, once, where it can: the saved
    /// estimate of the same volume on the same device (the I/O the counters add since it was
    /// saved is known; counters that went back are an unknown gap), else, for a volume created
    /// less than [`NEW_VOLUME_SECONDS`] ago, full at creation less the I/O counted since.
    fn start_without_cloudwatch(
        &mut self,
        vol: &str,
        dev: &str,
        ops: u64,
        bytes: u64,
        at_unix: f64,
    ) -> Option<Started> {
        let bucket = self.buckets.get_mut(vol)?;
        if bucket.basis().is_some() {
            self.pending_restore.remove(vol);
            return None;
        }
        if let Some(saved) = self.pending_restore.remove(vol) {
            if saved.device == dev && bucket.restore_from(&saved, ops, bytes, at_unix) {
                self.started.insert(vol.to_string());
                return Some(Started::Restored {
                    volume_id: vol.to_string(),
                    gap_seconds: at_unix - saved.bucket.now,
                    counted: ops >= saved.ops && bytes >= saved.bytes,
                    percent: bucket.estimate(),
                });
            }
        }
        if !self.started.insert(vol.to_string()) {
            return None;
        }
        let created = self
            .volumes
            .iter()
            .find(|v| v.volume_id == vol)
            .and_then(|v| v.created)?;
        let age = at_unix - created;
        if !(0.0..NEW_VOLUME_SECONDS).contains(&age) {
            return None;
        }
        let units = bucket.unit().units(ops, bytes);
        bucket.start_new(at_unix, age, units);
        Some(Started::NewVolume {
            volume_id: vol.to_string(),
            age_seconds: age,
            percent: bucket.percent(),
        })
    }

    /// The model state saved before a restart (this boot's, checked by the loader): taken up
    /// by each volume's bucket at its device's next reading, if it has no estimate by then.
    pub fn set_restore(&mut self, saved: Vec<SavedVolume>) {
        self.pending_restore = saved
            .into_iter()
            .map(|s| (s.volume_id.clone(), s))
            .collect();
    }

    /// What to save for a restart: each followed bucket with its device's counters at the
    /// bucket's last advance. Empty when nothing is followed.
    pub fn saved(&self) -> Vec<SavedVolume> {
        let mut out: Vec<SavedVolume> = self
            .buckets
            .iter()
            .filter_map(|(vol, b)| {
                let device = self.devices.get(vol)?;
                let &(ops, bytes) = self.prev_io.get(device)?;
                Some(SavedVolume {
                    volume_id: vol.clone(),
                    device: device.clone(),
                    ops,
                    bytes,
                    bucket: b.save()?,
                })
            })
            .collect();
        out.sort_by(|a, b| a.volume_id.cmp(&b.volume_id));
        out
    }

    /// Whether the model has a volume to follow: a mapped device with a bucket or with limits
    /// (its headroom). While it has, the sampler ticks on every host publish
    /// (`CloudSampler::follower`).
    pub fn follows_host(&self) -> bool {
        !self.devices.is_empty()
            && self
                .volumes
                .iter()
                .any(|v| self.devices.contains_key(&v.volume_id))
    }

    /// The EBS NVMe devices whose log page to read: (device name, device node under `dev_dir`).
    pub fn nvme_targets(&self, dev_dir: &Path) -> Vec<(String, PathBuf)> {
        self.disks
            .iter()
            .filter(|d| d.volume_id.is_some() && d.name.starts_with("nvme"))
            .map(|d| (d.name.clone(), dev_dir.join(&d.name)))
            .collect()
    }

    /// A log page read from `device`.
    pub fn on_nvme(&mut self, device: String, stats: nvme::Stats) {
        self.nvme.insert(device, stats);
    }
}

impl Bucket {
    /// [`Bucket::restore`] from a saved volume, the gap's usage from the device's counters now
    /// (`ops`, `bytes`) against those saved.
    fn restore_from(&mut self, saved: &SavedVolume, ops: u64, bytes: u64, at_unix: f64) -> bool {
        let gap = if ops >= saved.ops && bytes >= saved.bytes {
            Gap::Known {
                units: self.unit().units(ops - saved.ops, bytes - saved.bytes),
            }
        } else {
            Gap::Unknown
        };
        self.restore(&saved.bucket, at_unix, gap)
    }
}
