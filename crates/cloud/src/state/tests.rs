//! Each decision of the cloud state, on values: device mapping, buckets, call counting, describe
//! backoff, the credit model fed by disk readings, NVMe pages, the snapshot. What to poll and
//! when (backoff, fast polling, the checks) is in `tests/poll.rs`; when each call is due on the
//! driver, in `tests/schedule.rs`; headroom, volume status, modifications and instance limits in
//! `tests/ebs.rs`; a start without CloudWatch (new volume, restore) in `tests/start.rs`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use stallwatch_collector::proc::diskstats::DiskStat;
use stallwatch_collector::sys::block::Disk;

use super::*;
use crate::cloudwatch::Points;
use crate::config::VolumeOverride;
use crate::model::GP2_BUCKET_CREDITS;
use crate::nvme::{Bin, Histogram, Source, Stats};

mod ebs;
mod poll;
mod schedule;
mod start;

const T0: f64 = 1_700_000_000.0;
const S: fn(u64) -> Duration = Duration::from_secs;

fn vol(id: &str, ty: &str, size_gib: u64) -> Volume {
    Volume {
        volume_id: id.into(),
        volume_type: ty.into(),
        size_gib,
        availability_zone: "eu-west-1a".into(),
        ..Volume::default()
    }
}

fn with_attachments(mut v: Volume, devices: &[&str]) -> Volume {
    v.attachment_devices = devices.iter().map(|d| d.to_string()).collect();
    v
}

/// A sysfs block device; `volume` is what an EBS NVMe serial says.
fn dev(name: &str, volume: Option<&str>) -> BlockDevice {
    BlockDevice {
        name: name.into(),
        volume_id: volume.map(Into::into),
        ..BlockDevice::default()
    }
}

/// A diskstats row: `ops` reads of `bytes` in all.
fn disk(name: &str, ops: u64, bytes: u64) -> Disk {
    Disk {
        stat: DiskStat {
            name: name.into(),
            reads_completed: ops,
            sectors_read: bytes / 512,
            ..DiskStat::default()
        },
        partition: false,
    }
}

/// The checks are off unless a test is about them: they add 3 series per volume to every plan.
fn cfg() -> CloudConfig {
    CloudConfig {
        checks: false,
        retry_min: S(10),
        describe_interval: S(300),
        poll_interval: S(300),
        fast_poll_interval: S(60),
        fast_poll_below_percent: 30.0,
        staleness: S(600),
        ..CloudConfig::default()
    }
}

fn cfg_mapping(device: &str, volume_id: &str) -> CloudConfig {
    CloudConfig {
        volumes: vec![VolumeOverride {
            device: device.into(),
            volume_id: volume_id.into(),
        }],
        ..cfg()
    }
}

fn failure(throttled: bool) -> Failure {
    Failure {
        throttled,
        kind: stallwatch_collector::ErrorKind::Io,
        message: "no".into(),
    }
}

fn point(percent: f64, timestamp: f64) -> BalancePoint {
    BalancePoint { percent, timestamp }
}

/// The instance `i-1`, of type `instance_type`.
fn on_instance(s: &mut State, instance_type: &str) {
    s.set_instance(Instance {
        instance_id: "i-1".into(),
        instance_type: instance_type.into(),
        ..Instance::default()
    });
}

/// A state on an instance of `instance_type` with `vols` described (no disks).
fn described(instance_type: &str, vols: Vec<Volume>, c: &CloudConfig) -> State {
    let mut s = State::default();
    on_instance(&mut s, instance_type);
    describe(&mut s, vec![], vols, c);
    s
}

fn describe(s: &mut State, disks: Vec<BlockDevice>, vols: Vec<Volume>, c: &CloudConfig) {
    let d = s.on_describe(Some(disks), Ok(vols), c, T0);
    assert!(!matches!(d, Described::Failed { .. }));
}

/// One point per series, by index.
fn pts(m: BTreeMap<usize, BalancePoint>) -> Points {
    m.into_iter().map(|(i, p)| (i, vec![p])).collect()
}

/// Polls the state's own plan and answers `points` by volume id.
fn poll(s: &mut State, c: &CloudConfig, points: &[(&str, BalancePoint)]) -> Vec<Anchored> {
    let plan = s.poll_plan(c);
    let answer: BTreeMap<usize, BalancePoint> = points
        .iter()
        .map(|(v, p)| {
            let i = plan
                .targets
                .iter()
                .position(|x| *x == Target::Burst(v.to_string()))
                .expect("asked");
            (i, *p)
        })
        .collect();
    s.on_poll(&plan, Ok(pts(answer)), T0)
        .expect("a successful poll")
}

/// Equal up to float rounding (percent → credits → percent).
fn approx(got: Option<f64>, want: f64) -> bool {
    got.is_some_and(|g| (g - want).abs() < 1e-9)
}

fn volume<'a>(snap: &'a CloudSnapshot, id: &str) -> &'a VolumeState {
    snap.volumes
        .iter()
        .find(|v| v.volume_id == id)
        .expect("volume in the snapshot")
}

#[test]
fn nvme_serials_map_only_attached_volumes() {
    let mut s = State::default();
    let c = cfg();
    describe(
        &mut s,
        vec![dev("nvme1n1", Some("vol-a")), dev("nvme2n1", Some("vol-x"))],
        vec![vol("vol-a", "gp2", 100)],
        &c,
    );
    let snap = s.snapshot(&c, T0);
    assert_eq!(volume(&snap, "vol-a").device.as_deref(), Some("nvme1n1"));
    assert_eq!(snap.volumes.len(), 1, "vol-x is attached elsewhere");
    // The snapshot still knows the serial of the device whose volume is not ours.
    assert_eq!(snap.volume_of_device("nvme2n1"), Some("vol-x"));
}

#[test]
fn xen_attachments_map_to_devices_that_exist() {
    let mut s = State::default();
    let c = cfg();
    describe(
        &mut s,
        vec![dev("xvdf", None), dev("xvdi", None)],
        vec![
            with_attachments(vol("vol-f", "gp2", 10), &["/dev/sdf"]),
            with_attachments(vol("vol-g", "gp2", 10), &["/dev/sdg"]),
            with_attachments(vol("vol-hi", "gp2", 10), &["/dev/sdh", "/dev/xvdi"]),
        ],
        &c,
    );
    let snap = s.snapshot(&c, T0);
    assert_eq!(volume(&snap, "vol-f").device.as_deref(), Some("xvdf"));
    assert_eq!(volume(&snap, "vol-g").device, None, "no xvdg in sysfs");
    assert_eq!(volume(&snap, "vol-hi").device.as_deref(), Some("xvdi"));
}

#[test]
fn overrides_win_and_are_applied_by_a_failed_describe_too() {
    let mut s = State::default();
    let c = cfg();
    describe(
        &mut s,
        vec![dev("nvme1n1", Some("vol-a"))],
        vec![vol("vol-a", "gp2", 100)],
        &c,
    );
    // A reload added an override; the next DescribeVolumes fails, the mapping follows anyway,
    // and so does the device scan.
    let c = cfg_mapping("loop3", "vol-a");
    let d = s.on_describe(Some(vec![]), Err(failure(false)), &c, T0);
    assert!(matches!(d, Described::Failed { .. }));
    let snap = s.snapshot(&c, T0);
    assert_eq!(volume(&snap, "vol-a").device.as_deref(), Some("loop3"));
    assert!(snap.disks.is_empty());
    // A scan that failed (None) keeps the devices known before.
    describe(&mut s, vec![dev("nvme1n1", Some("vol-a"))], vec![], &c);
    s.on_describe(None, Ok(vec![]), &c, T0);
    assert_eq!(s.snapshot(&c, T0).disks.len(), 1);
}

#[test]
fn buckets_follow_the_volumes_type_and_size() {
    let mut s = State::default();
    let c = cfg();
    let vols = vec![vol("vol-a", "gp2", 100), vol("vol-b", "gp3", 100)];
    describe(&mut s, vec![], vols.clone(), &c);
    assert_eq!(s.poll_plan(&c).volumes(), ["vol-a"]);
    let anchored = poll(&mut s, &c, &[("vol-a", point(40.0, T0 - 120.0))]);
    assert!(
        matches!(
            anchored[..],
            [Anchored {
                result: Some(_),
                first: true,
                ..
            }]
        ),
        "{anchored:?}"
    );
    let snap = s.snapshot(&c, T0);
    assert!(approx(volume(&snap, "vol-a").estimate_percent, 40.0));
    assert_eq!(
        volume(&snap, "vol-b").estimate_percent,
        None,
        "gp3 has no bucket"
    );

    // The same volumes again: the anchored bucket is kept.
    describe(&mut s, vec![], vols, &c);
    assert!(approx(
        volume(&s.snapshot(&c, T0), "vol-a").estimate_percent,
        40.0
    ));
    // gp2 resized in place: the bucket (5.4 M at any size) and its credits stay.
    describe(&mut s, vec![], vec![vol("vol-a", "gp2", 200)], &c);
    assert!(approx(
        volume(&s.snapshot(&c, T0), "vol-a").estimate_percent,
        40.0
    ));
    // Modified into st1: another bucket, level unknown until CloudWatch says.
    describe(&mut s, vec![], vec![vol("vol-a", "st1", 500)], &c);
    assert_eq!(volume(&s.snapshot(&c, T0), "vol-a").estimate_percent, None);
    // Detached and attached again: no bucket survives the gap.
    describe(&mut s, vec![], vec![vol("vol-a", "gp2", 200)], &c);
    poll(&mut s, &c, &[("vol-a", point(50.0, T0 - 60.0))]);
    describe(&mut s, vec![], vec![], &c);
    describe(&mut s, vec![], vec![vol("vol-a", "gp2", 200)], &c);
    assert_eq!(volume(&s.snapshot(&c, T0), "vol-a").estimate_percent, None);
}

#[test]
fn calls_are_counted_by_api_and_outcome_and_successes_are_timed() {
    let mut s = State::default();
    let c = cfg();
    s.count(Api::Imds, Outcome::Error, T0 - 5.0);
    s.count(Api::Imds, Outcome::Success, T0 - 3.0);
    s.on_describe(None, Err(failure(true)), &c, T0 - 2.0);
    s.on_describe(None, Err(failure(false)), &c, T0 - 1.0);
    s.on_describe(None, Ok(vec![vol("vol-a", "gp2", 10)]), &c, T0);
    let plan = s.poll_plan(&c);
    s.add_metrics_requested(plan.series().len());
    assert!(s.on_poll(&plan, Err(failure(true)), T0).is_err());
    let snap = s.snapshot(&c, T0);
    assert_eq!(
        snap.requests,
        vec![
            (Api::Imds, Outcome::Success, 1),
            (Api::Imds, Outcome::Error, 1),
            (Api::DescribeVolumes, Outcome::Success, 1),
            (Api::DescribeVolumes, Outcome::Throttled, 1),
            (Api::DescribeVolumes, Outcome::Error, 1),
            (Api::GetMetricData, Outcome::Throttled, 1),
        ]
    );
    assert_eq!(
        snap.last_success,
        vec![(Api::Imds, T0 - 3.0), (Api::DescribeVolumes, T0)],
        "failures do not count as a success"
    );
    assert_eq!(snap.metrics_requested, 3, "the volume and two EBS balances");
}

#[test]
fn describe_backs_off_after_failures_and_recovers_with_one_report() {
    let mut s = State::default();
    let c = cfg();
    let vols = vec![vol("vol-a", "gp2", 10)];
    assert_eq!(
        s.on_describe(None, Ok(vols.clone()), &c, T0),
        Described::Changed { volumes: 1 }
    );
    assert_eq!(
        s.on_describe(None, Ok(vols.clone()), &c, T0),
        Described::Same
    );
    assert_eq!(s.describe_delay(&c), S(300));
    for want in [10, 20, 40] {
        match s.on_describe(None, Err(failure(false)), &c, T0) {
            Described::Failed { retry_in, failure } => {
                assert_eq!(retry_in, S(want));
                assert_eq!(failure.message, "no");
            }
            d => panic!("{d:?}"),
        }
        assert_eq!(s.describe_delay(&c), S(want));
    }
    // Recovery is news even with the same volumes; the interval is back to normal.
    assert_eq!(
        s.on_describe(None, Ok(vols), &c, T0),
        Described::Changed { volumes: 1 }
    );
    assert_eq!(s.describe_delay(&c), S(300));
    assert_eq!(
        volume(&s.snapshot(&c, T0), "vol-a").volume_type,
        "gp2",
        "volumes survive failed describes"
    );
}

#[test]
fn disk_readings_advance_the_model_once_at_their_own_time() {
    let mut s = State::default();
    let c = cfg_mapping("loop7", "vol-a");
    describe(&mut s, vec![], vec![vol("vol-a", "gp2", 100)], &c); // baseline 300 IOPS
    poll(&mut s, &c, &[("vol-a", point(50.0, T0 - 60.0))]);
    let half = GP2_BUCKET_CREDITS / 2.0;
    let credits = |s: &State| {
        volume(&s.snapshot(&c, T0), "vol-a")
            .estimate_percent
            .expect("anchored")
            / 100.0
            * GP2_BUCKET_CREDITS
    };
    let near = |got: f64, want: f64| (got - want).abs() < 1e-6;
    let at0 = Instant::now();
    // A device's first reading gives its counters, the second starts the bucket's clock: no
    // interval, nothing spent or earned yet.
    assert!(s
        .on_disk_counters(&[disk("loop7", 0, 0)], at0, T0 - 1.0)
        .is_some());
    assert!(s
        .on_disk_counters(&[disk("loop7", 1000, 0), disk("sda", 9, 0)], at0 + S(1), T0)
        .is_some());
    assert!(near(credits(&s), half));
    // One second later: 1,300 I/Os against 300 earned. Other devices cost this volume nothing.
    let r1 = [disk("loop7", 2300, 0), disk("sda", 1_000_000, 0)];
    assert!(s.on_disk_counters(&r1, at0 + S(2), T0 + 1.0).is_some());
    assert!(near(credits(&s), half - 1000.0));
    // The same reading seen again (the host sampler has not published since), or an older
    // one: nothing moves.
    assert!(s.on_disk_counters(&r1, at0 + S(2), T0 + 1.0).is_none());
    assert!(s
        .on_disk_counters(&[disk("loop7", 9_999_999, 0)], at0 + S(1), T0)
        .is_none());
    assert!(near(credits(&s), half - 1000.0));
    // A reading's own time counts, not when it is looked at: idle for 10 s earns 3,000.
    assert!(s
        .on_disk_counters(&[disk("loop7", 2300, 0)], at0 + S(12), T0 + 11.0)
        .is_some());
    assert!(near(credits(&s), half + 2000.0));
    // Large I/O counts in 256 KiB units: 10 ops of 1 MiB are 40 credits.
    assert!(s
        .on_disk_counters(&[disk("loop7", 2310, 10 << 20)], at0 + S(13), T0 + 12.0)
        .is_some());
    assert!(near(credits(&s), half + 2000.0 + 300.0 - 40.0));
    // Counters that went back (the device was re-created) cost nothing.
    assert!(s
        .on_disk_counters(&[disk("loop7", 5, 0)], at0 + S(14), T0 + 13.0)
        .is_some());
    assert!(near(credits(&s), half + 2000.0 + 260.0 + 300.0));
}

#[test]
fn unmapped_devices_and_volumes_without_buckets_are_left_alone() {
    let mut s = State::default();
    let c = cfg_mapping("loop8", "vol-b");
    describe(&mut s, vec![], vec![vol("vol-b", "gp3", 100)], &c);
    let at0 = Instant::now();
    assert!(s
        .on_disk_counters(&[disk("loop8", 1, 0)], at0, T0)
        .is_some());
    assert!(s
        .on_disk_counters(&[disk("loop8", 100_000, 0)], at0 + S(2), T0 + 1.0)
        .is_some());
    assert_eq!(volume(&s.snapshot(&c, T0), "vol-b").estimate_percent, None);
}

#[test]
fn a_reading_time_is_put_on_the_wall_clock() {
    let now = Instant::now();
    let t = unix_time_of(now - Duration::from_millis(2500), now, T0);
    assert!((t - (T0 - 2.5)).abs() < 1e-9, "{t}");
    // An instant after `now` (cannot happen with one clock) is taken as now.
    assert_eq!(unix_time_of(now + S(1), now, T0), T0);
}

fn stats(volume_iops_us: u64, instance_iops_us: u64) -> Stats {
    Stats {
        source: Source::Ebs,
        version: 0,
        total_read_ops: 7,
        total_write_ops: 8,
        total_read_bytes: 0,
        total_write_bytes: 0,
        total_read_time_us: 1_500_000,
        total_write_time_us: 250_000,
        volume_exceeded_iops_us: volume_iops_us,
        volume_exceeded_tp_us: 2_000_000,
        ec2_instance_exceeded_iops_us: instance_iops_us,
        ec2_instance_exceeded_tp_us: 0,
        volume_queue_length: 3,
        read_io_latency_histogram: Histogram {
            bins: vec![Bin {
                lower_us: 0,
                upper_us: 500,
                count: 4,
            }],
        },
        write_io_latency_histogram: Histogram::default(),
    }
}

#[test]
fn nvme_pages_are_read_from_ebs_nvme_devices_and_exported_in_seconds() {
    let mut s = State::default();
    let c = cfg();
    describe(
        &mut s,
        vec![
            dev("nvme1n1", Some("vol-a")),
            dev("nvme2n1", None),
            dev("nvme3n1", Some("vol-c")),
            dev("xvdf", None),
        ],
        vec![vol("vol-a", "gp2", 100)],
        &c,
    );
    assert_eq!(
        s.nvme_targets(Path::new("/host/dev")),
        vec![
            ("nvme1n1".to_string(), "/host/dev/nvme1n1".into()),
            ("nvme3n1".to_string(), "/host/dev/nvme3n1".into()),
        ],
        "every EBS NVMe device, described or not (its page has the instance's counters too)"
    );
    let snap = s.snapshot(&c, T0);
    assert_eq!(volume(&snap, "vol-a").nvme, None);
    assert_eq!(snap.instance_exceeded_iops_seconds, None, "no page yet");

    s.on_nvme("nvme1n1".into(), stats(3_000_000, 1_000_000));
    s.on_nvme("nvme3n1".into(), stats(0, 4_000_000));
    let snap = s.snapshot(&c, T0);
    let n = volume(&snap, "vol-a")
        .nvme
        .clone()
        .expect("page of nvme1n1");
    assert_eq!(n.exceeded_iops_seconds, 3.0);
    assert_eq!(n.exceeded_throughput_seconds, 2.0);
    assert_eq!((n.read_ops, n.write_ops, n.queue_length), (7, 8, 3.0));
    assert_eq!((n.read_time_seconds, n.write_time_seconds), (1.5, 0.25));
    assert_eq!(n.read_latency, vec![(0.0005, 4)]);
    assert!(n.write_latency.is_empty());
    assert_eq!(
        snap.instance_exceeded_iops_seconds,
        Some(4.0),
        "the largest"
    );
    assert_eq!(snap.instance_exceeded_throughput_seconds, Some(0.0));
}

#[test]
fn the_snapshot_leaves_stale_points_out_and_computes_sizes_and_baselines() {
    let mut s = State::default();
    let c = cfg(); // staleness 600 s
    on_instance(&mut s, "m5.large");
    let mut gp3 = vol("vol-b", "gp3", 200);
    gp3.iops = Some(4000);
    gp3.throughput_mibps = Some(250);
    describe(
        &mut s,
        vec![dev("nvme1n1", Some("vol-a"))],
        vec![vol("vol-a", "gp2", 100), gp3, vol("vol-c", "st1", 500)],
        &c,
    );
    let plan = s.poll_plan(&c); // vol-a, vol-c, EBSIOBalance%, EBSByteBalance%
    let answer = pts(BTreeMap::from([
        (0, point(80.0, T0 - 599.0)),
        (1, point(60.0, T0 - 601.0)),
        (2, point(90.0, T0 - 601.0)),
        (3, point(70.0, T0 - 30.0)),
    ]));
    s.on_poll(&plan, Ok(answer), T0).expect("ok");
    let snap = s.snapshot(&c, T0);
    assert!(snap.enabled);
    assert_eq!(
        snap.instance.as_ref().map(|i| i.instance_id.as_str()),
        Some("i-1")
    );
    assert_eq!(snap.disks.len(), 1);
    let a = volume(&snap, "vol-a");
    assert_eq!(a.burst_balance.map(|p| p.percent), Some(80.0));
    assert_eq!(a.size_bytes, 100 << 30);
    assert_eq!(a.baseline_iops, Some(300.0));
    assert_eq!(a.availability_zone, "eu-west-1a");
    let b = volume(&snap, "vol-b");
    assert_eq!(
        (b.provisioned_iops, b.throughput_mibps),
        (Some(4000), Some(250))
    );
    assert_eq!(
        b.baseline_iops,
        Some(4000.0),
        "gp3 holds what is provisioned"
    );
    assert_eq!((b.estimate_percent, b.seconds_to_empty), (None, None));
    let st1 = volume(&snap, "vol-c");
    assert_eq!(st1.burst_balance, None, "stale");
    assert_eq!(st1.baseline_iops, None, "HDD: throughput-based");
    // The stale point still anchored the bucket: it is the newest word there is.
    assert!(approx(st1.estimate_percent, 60.0));
    assert_eq!(
        snap.instance_balances,
        vec![(InstanceBalance::EbsByte, point(70.0, T0 - 30.0))]
    );
}
