//! Describe: devices, volumes, and the buckets and mapping that follow from them; the volumes'
//! status and modifications; the instance type's EBS limits.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use super::{faster, Failure, State};
use crate::config::{backoff, CloudConfig, VolumeOverride};
use crate::devices::BlockDevice;
use crate::ec2::{self, StatusOf, Volume};
use crate::limits::InstanceLimits;
use crate::model::{Bucket, VolumeType};
use crate::snapshot::{Api, Modification, Outcome, VolumeStatus};

/// What a DescribeVolumes outcome changed.
#[derive(Debug, Clone, PartialEq)]
pub enum Described {
    /// Described; the volumes are those known before.
    Same,
    /// Described, and the volumes are new or changed, or this is the first success after
    /// failures (worth one INFO line).
    Changed { volumes: usize },
    /// The call failed; the volumes known before stay.
    Failed {
        failure: Failure,
        retry_in: Duration,
    },
}

/// Volumes compared as sets: DescribeVolumes promises no order, and a reordered answer is no
/// change.
fn sorted(v: &[Volume]) -> Vec<&Volume> {
    let mut s: Vec<&Volume> = v.iter().collect();
    s.sort_by(|a, b| a.volume_id.cmp(&b.volume_id));
    s
}

impl State {
    /// One describe period: the sysfs scan (`None`: it failed or timed out, the devices known
    /// before stay) and DescribeVolumes. Device mapping is redone either way (the disks may have
    /// changed, and so may the config's overrides); buckets follow the volumes.
    pub fn on_describe(
        &mut self,
        disks: Option<Vec<BlockDevice>>,
        volumes: Result<Vec<Volume>, Failure>,
        cfg: &CloudConfig,
        now_unix: f64,
    ) -> Described {
        if let Some(d) = disks {
            self.disks = d;
        }
        self.described += 1;
        let described = match volumes {
            Ok(vols) => {
                self.count(Api::DescribeVolumes, Outcome::Success, now_unix);
                let changed = !self.volumes_known || sorted(&self.volumes) != sorted(&vols);
                let news = self.describe_failures > 0 || changed;
                self.volumes_known = true;
                self.describe_failures = 0;
                let n = vols.len();
                self.volumes = vols;
                self.sync_buckets(now_unix);
                if news {
                    Described::Changed { volumes: n }
                } else {
                    Described::Same
                }
            }
            Err(failure) => {
                self.count(Api::DescribeVolumes, failure.outcome(), now_unix);
                self.describe_failures += 1;
                Described::Failed {
                    failure,
                    retry_in: self.describe_delay(cfg),
                }
            }
        };
        self.map_devices(&cfg.volumes);
        described
    }

    /// Cloud features off (or not on EC2): the sysfs scan alone describes the disks (model,
    /// serial, the EBS volume id in an NVMe serial); `None` keeps the devices known before.
    pub fn on_scan(&mut self, disks: Option<Vec<BlockDevice>>, cfg: &CloudConfig) {
        if let Some(d) = disks {
            self.disks = d;
        }
        self.described += 1;
        self.map_devices(&cfg.volumes);
    }

    /// How long after the last one the next describe (or scan) is due: at once before the
    /// first outcome (a sampler that starts, or starts again, knows no disks), else
    /// [`State::describe_delay`].
    pub fn describe_schedule(&self, cfg: &CloudConfig) -> Duration {
        if self.described == 0 {
            Duration::ZERO
        } else {
            self.describe_delay(cfg)
        }
    }

    /// When to describe again: the backoff after failures; `fast_poll_interval` while a
    /// modification is under way or a volume initializes or is in trouble (each step of those
    /// changes the limits in force or says why I/O is slow); else `describe_interval`.
    pub fn describe_delay(&self, cfg: &CloudConfig) -> Duration {
        if self.describe_failures > 0 {
            return backoff(cfg.retry_min, cfg.describe_interval, self.describe_failures);
        }
        let busy = self.modifications.values().any(Modification::in_progress)
            || self
                .statuses
                .values()
                .any(|s| s.initializing() || s.troubled());
        if busy {
            faster(cfg.describe_interval, cfg.fast_poll_interval)
        } else {
            cfg.describe_interval
        }
    }

    /// The attached volumes' ids, for the status and modification calls.
    pub fn volume_ids(&self) -> Vec<String> {
        self.volumes.iter().map(|v| v.volume_id.clone()).collect()
    }

    /// DescribeVolumeStatus's answer for the attached volumes. A volume it does not mention
    /// has no status (AWS lists every volume it knows; moto-like fakes may not).
    pub fn on_volume_status(
        &mut self,
        r: Result<Vec<StatusOf<VolumeStatus>>, Failure>,
        now_unix: f64,
    ) -> Result<Vec<(String, VolumeStatus)>, Failure> {
        let got = self.answered(Api::DescribeVolumeStatus, r, now_unix)?;
        let old = std::mem::take(&mut self.statuses);
        let mut changed = Vec::new();
        for (id, s) in got {
            if old.get(&id) != Some(&s)
                && (s.troubled() || old.get(&id).is_some_and(|o| o.troubled()))
            {
                changed.push((id.clone(), s.clone()));
            }
            self.statuses.insert(id, s);
        }
        self.statuses
            .retain(|id, _| self.volumes.iter().any(|v| &v.volume_id == id));
        Ok(changed)
    }

    /// DescribeVolumesModifications's answer: the newest modification of each volume. Returns
    /// the modifications whose state is new, for the log.
    pub fn on_modifications(
        &mut self,
        r: Result<Vec<StatusOf<Modification>>, Failure>,
        now_unix: f64,
    ) -> Result<Vec<(String, Modification)>, Failure> {
        let got = self.answered(Api::DescribeVolumesModifications, r, now_unix)?;
        let mut newest: BTreeMap<String, Modification> = BTreeMap::new();
        for (id, m) in got {
            let later = newest
                .get(&id)
                .is_none_or(|n| m.start_time.unwrap_or(0.0) >= n.start_time.unwrap_or(0.0));
            if later {
                newest.insert(id, m);
            }
        }
        let changed = newest
            .iter()
            .filter(|(id, m)| {
                self.modifications
                    .get(*id)
                    .is_none_or(|o| o.state != m.state || o.start_time != m.start_time)
            })
            .map(|(id, m)| (id.clone(), m.clone()))
            .collect();
        self.modifications = newest;
        Ok(changed)
    }

    /// The instance type whose EBS limits are still to be asked, if any: once after discovery,
    /// and again after a failure (at the describe's pace).
    pub fn wants_instance_type(&self) -> Option<String> {
        let ty = self.instance.as_ref()?.instance_type.clone();
        (self.instance_limits.is_none() && !ty.is_empty()).then_some(ty)
    }

    /// DescribeInstanceTypes's answer.
    pub fn on_instance_type(
        &mut self,
        r: Result<Option<InstanceLimits>, Failure>,
        now_unix: f64,
    ) -> Result<(), Failure> {
        match r {
            Ok(l) => {
                self.count(Api::DescribeInstanceTypes, Outcome::Success, now_unix);
                self.instance_limits = Some(l);
                self.instance_type_failures = 0;
                Ok(())
            }
            Err(f) => {
                self.count(Api::DescribeInstanceTypes, f.outcome(), now_unix);
                self.instance_type_failures += 1;
                Err(f)
            }
        }
    }

    fn answered<T>(
        &mut self,
        api: Api,
        r: Result<T, Failure>,
        now_unix: f64,
    ) -> Result<T, Failure> {
        match r {
            Ok(v) => {
                self.count(api, Outcome::Success, now_unix);
                Ok(v)
            }
            Err(f) => {
                self.count(api, f.outcome(), now_unix);
                Err(f)
            }
        }
    }

    /// Volume id → device: NVMe serials of attached volumes, then Xen attachment names
    /// (`/dev/sdf` → `xvdf`) that exist in sysfs, then the config's overrides over both.
    fn map_devices(&mut self, overrides: &[VolumeOverride]) {
        let mut m = BTreeMap::new();
        let attached: HashSet<&str> = self.volumes.iter().map(|v| v.volume_id.as_str()).collect();
        for d in &self.disks {
            if let Some(id) = &d.volume_id {
                if attached.contains(id.as_str()) {
                    m.insert(id.clone(), d.name.clone());
                }
            }
        }
        for v in &self.volumes {
            if m.contains_key(&v.volume_id) {
                continue;
            }
            let xen = v
                .attachment_devices
                .iter()
                .filter_map(|a| ec2::kernel_name_of_attachment(a))
                .find(|k| self.disks.iter().any(|d| &d.name == k));
            if let Some(k) = xen {
                m.insert(v.volume_id.clone(), k);
            }
        }
        for o in overrides {
            m.insert(o.volume_id.clone(), o.device.clone());
        }
        self.devices = m;
    }

    /// Buckets for the volumes that can burst. A gp2 volume resized in place keeps its credits
    /// (its bucket is 5.4 M whatever the size; only the baseline changes); any other change of
    /// type or size makes a new bucket, level unknown (what AWS gives a volume modified into a
    /// bursting type is not documented; CloudWatch will say). A detached volume loses its own.
    fn sync_buckets(&mut self, now_unix: f64) {
        let mut keep = HashMap::new();
        for v in &self.volumes {
            let vt = VolumeType::parse(&v.volume_type);
            if let Some(b) = self.buckets.remove(&v.volume_id) {
                if *b.volume_type() == vt && b.size_gib() == v.size_gib {
                    keep.insert(v.volume_id.clone(), b);
                    continue;
                }
                if let Some(r) = b.resized(&vt, v.size_gib) {
                    keep.insert(v.volume_id.clone(), r);
                    continue;
                }
            }
            if let Some(b) = Bucket::new(&vt, v.size_gib) {
                self.bucket_since.insert(v.volume_id.clone(), now_unix);
                self.started.remove(&v.volume_id);
                keep.insert(v.volume_id.clone(), b);
            }
        }
        self.buckets = keep;
        self.bucket_since
            .retain(|id, _| self.buckets.contains_key(id));
        self.rates
            .retain(|id, _| self.volumes.iter().any(|v| &v.volume_id == id));
        self.modifications
            .retain(|id, _| self.volumes.iter().any(|v| &v.volume_id == id));
    }
}
