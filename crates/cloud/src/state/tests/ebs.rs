//! Headroom of every volume type from the disk counters, the instance's against its EBS limits,
//! volume status, modifications, and the describe cadence while something is in flux.

use super::*;
use crate::snapshot::{Initialization, Modification, VolumeStatus};

const MIB: f64 = 1_048_576.0;

fn with_iops(mut v: Volume, iops: u64, throughput: Option<u64>) -> Volume {
    v.iops = Some(iops);
    v.throughput_mibps = throughput;
    v
}

/// Feeds two readings one second apart: `ops` operations of `size` bytes each on `dev`.
fn second_of(s: &mut State, dev: &str, ops: u64, size: u64) {
    let at0 = Instant::now();
    s.on_disk_counters(&[disk(dev, 0, 0)], at0, T0);
    s.on_disk_counters(&[disk(dev, ops, ops * size)], at0 + S(1), T0 + 1.0);
}

#[test]
fn a_gp3_at_95_percent_of_its_iops_has_5_percent_headroom_after_one_second() {
    let mut s = State::default();
    let c = cfg_mapping("loop7", "vol-a");
    describe(
        &mut s,
        vec![],
        vec![with_iops(vol("vol-a", "gp3", 100), 3000, Some(125))],
        &c,
    );
    assert_eq!(
        volume(&s.snapshot(&c, T0), "vol-a").headroom,
        None,
        "no interval yet"
    );
    second_of(&mut s, "loop7", 2850, 4096);
    let h = volume(&s.snapshot(&c, T0), "vol-a")
        .headroom
        .expect("headroom");
    assert_eq!((h.iops, h.iops_limit), (2850.0, 3000.0));
    assert_eq!(h.bytes_limit, 125.0 * MIB);
    assert!((h.ratio() - 0.05).abs() < 1e-9, "{h:?}");
}

#[test]
fn an_io2_at_its_throughput_limit_has_no_headroom_and_large_io_counts_in_256_kib() {
    // io2 with 100 IOPS: 25 MiB/s. 25 writes of 1 MiB a second: 100 operations of EBS's size.
    let mut s = State::default();
    let c = cfg_mapping("loop7", "vol-a");
    describe(
        &mut s,
        vec![],
        vec![with_iops(vol("vol-a", "io2", 10), 100, None)],
        &c,
    );
    second_of(&mut s, "loop7", 25, 1 << 20);
    let h = volume(&s.snapshot(&c, T0), "vol-a")
        .headroom
        .expect("headroom");
    assert_eq!(
        (h.bytes_per_second, h.bytes_limit),
        (25.0 * MIB, 25.0 * MIB)
    );
    assert_eq!((h.iops, h.iops_limit), (100.0, 100.0));
    assert_eq!(h.ratio(), 0.0);
    assert_eq!(h.bytes_limit_in_seconds, Some(0.0), "at the limit now");
}

#[test]
fn a_gp2_is_held_to_its_baseline_once_its_estimate_says_empty() {
    let mut s = State::default();
    let c = cfg_mapping("loop7", "vol-a");
    describe(&mut s, vec![], vec![vol("vol-a", "gp2", 100)], &c);
    second_of(&mut s, "loop7", 250, 4096);
    let snap = s.snapshot(&c, T0);
    let h = volume(&snap, "vol-a").headroom.unwrap();
    assert_eq!(h.iops_limit, 3_000.0, "unknown credits: the burst ceiling");
    poll(&mut s, &c, &[("vol-a", point(0.0, T0 + 1.0))]);
    let h = volume(&s.snapshot(&c, T0), "vol-a").headroom.unwrap();
    assert_eq!(h.iops_limit, 300.0, "empty: the baseline");
    assert!((h.iops_ratio() - (1.0 - 250.0 / 300.0)).abs() < 1e-9);
}

#[test]
fn st1_counts_operations_in_mib_and_the_instance_sums_its_volumes() {
    let mut s = State::default();
    on_instance(&mut s, "m5.large");
    let mut c = cfg_mapping("loop7", "vol-a");
    c.volumes.push(crate::config::VolumeOverride {
        device: "loop8".into(),
        volume_id: "vol-b".into(),
    });
    describe(
        &mut s,
        vec![],
        vec![
            vol("vol-a", "st1", 1024),
            with_iops(vol("vol-b", "gp3", 100), 3000, Some(125)),
        ],
        &c,
    );
    assert_eq!(s.wants_instance_type().as_deref(), Some("m5.large"));
    s.on_instance_type(
        Ok(Some(crate::limits::InstanceLimits::from_api(
            3_600.0, 18_750.0, 81.25, 593.75,
        ))),
        T0,
    )
    .expect("ok");
    assert_eq!(s.wants_instance_type(), None, "asked once");
    let at0 = Instant::now();
    s.on_disk_counters(&[disk("loop7", 0, 0), disk("loop8", 0, 0)], at0, T0);
    // st1: 100 writes of 128 KiB are 100 operations of 1 MiB; gp3: 1,000 of 4 KiB.
    s.on_disk_counters(
        &[
            disk("loop7", 100, 100 << 17),
            disk("loop8", 1000, 1000 << 12),
        ],
        at0 + S(1),
        T0 + 1.0,
    );
    let snap = s.snapshot(&c, T0);
    let st1 = volume(&snap, "vol-a").headroom.unwrap();
    assert_eq!((st1.iops, st1.iops_limit), (100.0, 500.0));
    assert_eq!(st1.bytes_limit, 250.0 * MIB, "1 TiB st1 bursting");
    let i = snap.instance_ebs.expect("instance limits");
    assert_eq!(i.maximum_iops, 18_750.0);
    let ih = i.headroom.expect("summed rates");
    assert_eq!(ih.iops, 1_100.0);
    assert_eq!(
        ih.bytes_per_second,
        (100 << 17) as f64 + (1000 << 12) as f64
    );
    assert_eq!(ih.iops_limit, 18_750.0);
    // The instance's EBS IO balance spent: its baseline is the limit in force.
    on_instance(&mut s, "m5.large");
    let plan = s.poll_plan(&c);
    let io = plan
        .targets
        .iter()
        .position(|t| *t == Target::Balance(InstanceBalance::EbsIo))
        .unwrap();
    s.on_poll(&plan, Ok(pts(BTreeMap::from([(io, point(0.0, T0))]))), T0)
        .expect("ok");
    let ih = s.snapshot(&c, T0).instance_ebs.unwrap().headroom.unwrap();
    assert_eq!(ih.iops_limit, 3_600.0);
    assert_eq!(
        ih.bytes_limit, 593_750_000.0,
        "the byte balance is not spent"
    );
}

#[test]
fn status_and_modifications_are_kept_per_volume_and_speed_up_the_describe() {
    let mut s = State::default();
    let c = cfg();
    describe(
        &mut s,
        vec![],
        vec![vol("vol-a", "gp3", 100), vol("vol-b", "gp2", 100)],
        &c,
    );
    assert_eq!(s.describe_delay(&c), S(300));
    let restoring = VolumeStatus {
        status: "ok".into(),
        initialization: Some(Initialization {
            kind: "default".into(),
            progress_percent: Some(40.0),
            eta_seconds: Some(600.0),
        }),
        ..VolumeStatus::default()
    };
    let stalled = VolumeStatus {
        status: "impaired".into(),
        io_performance: Some("stalled".into()),
        ..VolumeStatus::default()
    };
    let changed = s
        .on_volume_status(
            Ok(vec![
                ("vol-a".into(), restoring.clone()),
                ("vol-b".into(), stalled.clone()),
            ]),
            T0,
        )
        .expect("ok");
    assert_eq!(
        changed,
        [("vol-b".to_string(), stalled.clone())],
        "trouble is news"
    );
    assert_eq!(
        s.describe_delay(&c),
        S(60),
        "initializing and in trouble: every minute"
    );
    let snap = s.snapshot(&c, T0);
    assert_eq!(volume(&snap, "vol-a").status, Some(restoring));
    // A failure keeps what was known and is counted under its own api.
    assert!(s.on_volume_status(Err(failure(false)), T0).is_err());
    let snap = s.snapshot(&c, T0);
    assert_eq!(volume(&snap, "vol-b").status, Some(stalled));
    assert!(snap
        .requests
        .contains(&(Api::DescribeVolumeStatus, Outcome::Error, 1)));
    // All well again.
    s.on_volume_status(Ok(vec![]), T0).expect("ok");
    assert_eq!(s.describe_delay(&c), S(300));

    // gp2 → io1 in place: the newest modification per volume, its state changes are news.
    let m = |state: &str, start: f64, end: Option<f64>| Modification {
        state: state.into(),
        progress_percent: Some(if state == "completed" { 100.0 } else { 10.0 }),
        original_volume_type: Some("gp2".into()),
        target_volume_type: Some("io1".into()),
        start_time: Some(start),
        end_time: end,
        ..Modification::default()
    };
    let old = m("completed", T0 - 90_000.0, Some(T0 - 80_000.0));
    let news = s
        .on_modifications(
            Ok(vec![
                ("vol-b".into(), m("modifying", T0 - 60.0, None)),
                ("vol-b".into(), old),
            ]),
            T0,
        )
        .expect("ok");
    assert_eq!(news.len(), 1);
    assert_eq!(news[0].1.state, "modifying");
    assert_eq!(s.describe_delay(&c), S(60));
    let again = s
        .on_modifications(
            Ok(vec![("vol-b".into(), m("modifying", T0 - 60.0, None))]),
            T0,
        )
        .expect("ok");
    assert!(again.is_empty(), "the same state is no news");
    assert_eq!(
        volume(&s.snapshot(&c, T0), "vol-b")
            .modification
            .as_ref()
            .map(|m| m.state.as_str()),
        Some("modifying")
    );
    // Done: shown for an hour after its end, then no more.
    s.on_modifications(
        Ok(vec![("vol-b".into(), m("completed", T0 - 60.0, Some(T0)))]),
        T0,
    )
    .expect("ok");
    assert_eq!(s.describe_delay(&c), S(300));
    assert!(volume(&s.snapshot(&c, T0 + 3_000.0), "vol-b")
        .modification
        .is_some());
    assert!(volume(&s.snapshot(&c, T0 + 3_700.0), "vol-b")
        .modification
        .is_none());
}

#[test]
fn an_instance_type_without_ebs_limits_is_asked_once_and_a_failure_asks_again() {
    let mut s = State::default();
    on_instance(&mut s, "t1.micro");
    assert!(s.on_instance_type(Err(failure(false)), T0).is_err());
    assert_eq!(s.wants_instance_type().as_deref(), Some("t1.micro"));
    s.on_instance_type(Ok(None), T0).expect("ok");
    assert_eq!(s.wants_instance_type(), None);
    assert_eq!(s.snapshot(&cfg(), T0).instance_ebs, None);
}
