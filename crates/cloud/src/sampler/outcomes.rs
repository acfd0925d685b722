//! What the cloud sampler does with each source's outcome: discovery, the describe pass
//! (volumes, status, modifications, instance type), a poll, NVMe pages; the state file, and the
//! INFO lines that say where the credit model's estimate comes from.

use std::sync::Arc;
use std::time::{Duration, Instant};

use stallwatch_collector::sample::SourceStatus;
use stallwatch_collector::ErrorKind;
use tracing::{debug, info, warn};

use super::{unix_now, Cloud, CloudSource, Mode};
use crate::calls::{self, Describe, Discovery, Pages};
use crate::cloudwatch::Points;
use crate::config::{backoff, CloudConfig, Enabled};
use crate::devices::BlockDevice;
use crate::persist::{SavedState, SAVE_EVERY};
use crate::snapshot::{Api, Outcome};
use crate::state::{Anchored, Described, Failure, PollPlan, Started};

impl Cloud {
    /// Counts a failed call on its source (throttling is no error) and logs it, rate-limited.
    fn failed(
        &mut self,
        src: CloudSource,
        at: Instant,
        failure: &Failure,
        status: &mut SourceStatus,
        retry_in: Duration,
        what: &str,
    ) {
        if !failure.throttled {
            status.count_error(failure.kind);
        }
        if let Some(held) = self.logs[src as usize].allow(at) {
            warn!(source = src.name(), error = %failure.message, ?retry_in, held, "{what}");
        }
    }

    /// True when the discovery settled (found, or not looked for any more).
    pub(super) fn on_discovery(
        &mut self,
        d: Discovery,
        status: &mut SourceStatus,
        at: Instant,
    ) -> bool {
        let now = unix_now();
        match d {
            Discovery::Found {
                clients,
                asked_imds,
            } => {
                if asked_imds {
                    self.state.count(Api::Imds, Outcome::Success, now);
                }
                let i = &clients.instance;
                info!(
                    instance_id = %i.instance_id,
                    region = %i.region,
                    availability_zone = %i.availability_zone,
                    instance_type = %i.instance_type,
                    "Cloud features on."
                );
                self.state.set_instance(i.clone());
                self.shared.mode.store(Arc::new(Mode::Found(clients)));
                true
            }
            Discovery::NoAnswer { error, waited } => {
                self.state.count(Api::Imds, Outcome::Error, now);
                if self.shared.start.enabled == Enabled::Auto {
                    info!(
                        %error,
                        waited_ms = waited.as_millis() as u64,
                        "Not on EC2 (no IMDS answer): cloud features off. Set [cloud] enabled = true to keep trying."
                    );
                    self.shared.mode.store(Arc::new(Mode::DisksOnly));
                    return true;
                }
                self.imds_failures += 1;
                status.count_error(ErrorKind::Io);
                let cfg = self.shared.config.load();
                let retry_in = backoff(cfg.retry_min, cfg.describe_interval, self.imds_failures);
                if let Some(held) = self.logs[CloudSource::Imds as usize].allow(at) {
                    warn!(source = "cloud_imds", %error, ?retry_in, held,
                        "IMDS discovery failed; [cloud] enabled = true, retrying.");
                }
                false
            }
            Discovery::Broken(error) => {
                warn!(%error, "Cloud features off; describing the disks only.");
                self.shared.mode.store(Arc::new(Mode::DisksOnly));
                true
            }
        }
    }

    pub(super) fn on_described(
        &mut self,
        disks: Result<Vec<BlockDevice>, (ErrorKind, String)>,
        describe: Option<Describe>,
        status: &mut SourceStatus,
        at: Instant,
        cfg: &CloudConfig,
    ) -> bool {
        let disks = match disks {
            Ok(d) => Some(d),
            Err((kind, error)) => {
                status.count_error(kind);
                if let Some(held) = self.logs[CloudSource::Describe as usize].allow(at) {
                    warn!(source = "cloud_describe", %error, held,
                        "Cannot scan the block devices; keeping those known.");
                }
                None
            }
        };
        let scanned = disks.is_some();
        let Some(d) = describe else {
            self.state.on_scan(disks, cfg);
            return scanned;
        };
        let now = unix_now();
        let good = match self.state.on_describe(disks, d.volumes, cfg, now) {
            Described::Same => scanned,
            Described::Changed { volumes } => {
                info!(volumes, "Attached EBS volumes described.");
                scanned
            }
            Described::Failed { failure, retry_in } => {
                self.failed(
                    CloudSource::Describe,
                    at,
                    &failure,
                    status,
                    retry_in,
                    "DescribeVolumes failed.",
                );
                false
            }
        };
        if let Some(r) = d.status {
            match self.state.on_volume_status(r, now) {
                Ok(changed) => {
                    for (volume_id, s) in changed {
                        if s.troubled() {
                            warn!(%volume_id, status = %s.status, io_enabled = ?s.io_enabled,
                                io_performance = ?s.io_performance, "EBS volume status: in trouble.");
                        } else {
                            info!(%volume_id, status = %s.status, "EBS volume status: ok again.");
                        }
                    }
                }
                Err(f) => self.api_failed(Api::DescribeVolumeStatus, &f, status, at),
            }
        }
        if let Some(r) = d.modifications {
            match self.state.on_modifications(r, now) {
                Ok(changed) => {
                    for (volume_id, m) in changed {
                        info!(%volume_id, state = %m.state, progress = ?m.progress_percent,
                            from = ?m.original_volume_type, to = ?m.target_volume_type,
                            size_gib = ?m.target_size_gib, iops = ?m.target_iops,
                            throughput_mibps = ?m.target_throughput_mibps,
                            "EBS volume modification.");
                    }
                }
                Err(f) => self.api_failed(Api::DescribeVolumesModifications, &f, status, at),
            }
        }
        if let Some(r) = d.instance_type {
            if let Err(f) = self.state.on_instance_type(r, now) {
                self.api_failed(Api::DescribeInstanceTypes, &f, status, at);
            }
        }
        good
    }

    /// A failed status, modifications or instance-type call: counted on the describe source
    /// (throttling is no error), logged at most every ten minutes per api, naming the IAM
    /// action when it was refused. The volumes described stay good.
    fn api_failed(&mut self, api: Api, f: &Failure, status: &mut SourceStatus, at: Instant) {
        if !f.throttled {
            status.count_error(f.kind);
        }
        let i = match api {
            Api::DescribeVolumeStatus => 0,
            Api::DescribeVolumesModifications => 1,
            _ => 2,
        };
        if let Some(held) = self.api_logs[i].allow(at) {
            let action = api.ec2_action().unwrap_or("?");
            if f.kind == ErrorKind::Permission {
                warn!(api = api.as_str(), error = %f.message, held,
                    "EC2 {action} refused: add ec2:{action} to the node's IAM policy (deploy/aws/iam-policy.json).");
            } else {
                warn!(api = api.as_str(), error = %f.message, held, "EC2 {action} failed.");
            }
        }
    }

    pub(super) fn on_polled(
        &mut self,
        plan: &PollPlan,
        points: Result<Points, Failure>,
        requested: usize,
        status: &mut SourceStatus,
        at: Instant,
        cfg: &CloudConfig,
    ) -> bool {
        self.state.add_metrics_requested(requested);
        let now = unix_now();
        match self.state.on_poll(plan, points, now) {
            Ok(anchored) => {
                for a in anchored {
                    log_anchor(&a);
                }
                true
            }
            Err(failure) => {
                let retry_in = self.state.poll_delay(plan, cfg, now);
                self.failed(
                    CloudSource::Poll,
                    at,
                    &failure,
                    status,
                    retry_in,
                    "GetMetricData failed.",
                );
                false
            }
        }
    }

    pub(super) fn on_pages(
        &mut self,
        pages: Pages,
        status: &mut SourceStatus,
        at: Instant,
    ) -> bool {
        let mut ok = true;
        for (device, page) in pages {
            let error = match page {
                Ok(stats) => {
                    self.state.on_nvme(device, stats);
                    continue;
                }
                Err(e) => e,
            };
            match calls::nvme_error_kind(&error) {
                None if !self.nvme_unavailable_said => {
                    info!(%device, %error,
                        "The EBS NVMe log page cannot be read here (it needs CAP_SYS_ADMIN and the /dev/nvme* nodes); its metrics are absent.");
                    self.nvme_unavailable_said = true;
                }
                None => {}
                Some(kind) => {
                    status.count_error(kind);
                    ok = false;
                    if let Some(held) = self.logs[CloudSource::Nvme as usize].allow(at) {
                        warn!(source = "cloud_nvme", %device, %error, held,
                            "Cannot read the EBS NVMe log page.");
                    }
                }
            }
        }
        ok
    }
}

impl Cloud {
    /// Every [`SAVE_EVERY`], the followed buckets to the state file's thread (never waits).
    pub(super) fn save(&mut self, now: Instant) {
        let (Some(saver), Some(boot)) = (
            self.shared.saver.as_ref(),
            self.shared.saver.as_ref().and_then(|s| s.boot_id.clone()),
        ) else {
            return;
        };
        if self
            .last_save
            .is_some_and(|t| now.saturating_duration_since(t) < SAVE_EVERY)
        {
            return;
        }
        let volumes = self.state.saved();
        if volumes.is_empty() {
            return;
        }
        self.last_save = Some(now);
        saver.offer(SavedState::new(boot, unix_now(), volumes));
    }
}

/// The first CloudWatch anchor of a bucket at INFO (when the estimate becomes CloudWatch's and
/// from which point), later ones at DEBUG.
fn log_anchor(a: &Anchored) {
    let (low, high) = a.bounds.unzip();
    if a.first {
        info!(volume_id = %a.volume_id, point_percent = a.point.percent,
            point_minute = a.point.timestamp, estimate = ?a.estimate, low = ?low, high = ?high,
            trend_per_minute = a.trend_per_minute, result = ?a.result,
            "Anchored the credit model on CloudWatch.");
    } else {
        debug!(volume_id = %a.volume_id, point_percent = a.point.percent,
            point_minute = a.point.timestamp, estimate = ?a.estimate, result = ?a.result,
            "Anchored the credit model.");
    }
}

pub(super) fn log_start(s: &Started) {
    match s {
        Started::NewVolume {
            volume_id,
            age_seconds,
            percent,
        } => info!(%volume_id, age_seconds, estimate = percent,
            "A new volume: the credit model starts full less the I/O counted since it was created."),
        Started::Restored {
            volume_id,
            gap_seconds,
            counted,
            percent,
        } => info!(%volume_id, gap_seconds, counted, estimate = ?percent,
            "Took up the credit model from before the restart."),
    }
}
