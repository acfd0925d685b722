//! What the state asks CloudWatch and when: the plan, results mapped back, backoff, and fast
//! polling while the local estimate (else CloudWatch, or an instance EBS balance) is low.

use super::*;

#[test]
fn polls_back_off_after_failures_and_go_fast_while_a_balance_is_low() {
    let mut s = State::default();
    let c = cfg();
    describe(&mut s, vec![], vec![vol("vol-a", "gp2", 100)], &c);
    let plan = s.poll_plan(&c);
    assert_eq!(s.poll_delay(&plan, &c), S(300));
    for want in [10, 20, 40, 80, 160, 300, 300] {
        assert!(s.on_poll(&plan, Err(failure(false)), T0).is_err());
        assert_eq!(s.poll_delay(&plan, &c), S(want));
    }
    poll(&mut s, &c, &[("vol-a", point(80.0, T0 - 120.0))]);
    assert_eq!(s.poll_delay(&plan, &c), S(300));
    poll(&mut s, &c, &[("vol-a", point(20.0, T0 - 60.0))]);
    assert!(s.low_balance(&c));
    assert_eq!(s.poll_delay(&plan, &c), S(60), "low: fast polling");
    // A failure while low backs off: hammering a throttled API helps nobody.
    assert!(s.on_poll(&plan, Err(failure(true)), T0).is_err());
    assert_eq!(s.poll_delay(&plan, &c), S(10));
    // A fast interval above the normal one never slows polling down.
    let slow_fast = CloudConfig {
        fast_poll_interval: S(900),
        ..c.clone()
    };
    poll(&mut s, &c, &[]);
    assert_eq!(s.poll_delay(&plan, &slow_fast), S(300));
}

#[test]
fn nothing_to_ask_polls_at_the_normal_interval() {
    let mut s = State::default();
    let c = CloudConfig {
        instance_balances: false,
        ..cfg()
    };
    describe(&mut s, vec![], vec![vol("vol-b", "gp3", 100)], &c);
    let plan = s.poll_plan(&c);
    assert!(plan.is_empty() && plan.series().is_empty());
    assert_eq!(s.poll_delay(&plan, &c), S(300));
}

#[test]
fn the_plan_asks_bursting_volumes_and_the_instance_balances_that_apply() {
    let mut s = State::default();
    let c = cfg();
    on_instance(&mut s, "m5.large");
    describe(
        &mut s,
        vec![],
        vec![
            vol("vol-gp2", "gp2", 100),
            vol("vol-gp3", "gp3", 100),
            vol("vol-st1", "st1", 500),
            vol("vol-big", "gp2", 2000),
            vol("vol-io1", "io1", 100),
        ],
        &c,
    );
    let plan = s.poll_plan(&c);
    assert_eq!(plan.volumes, ["vol-gp2", "vol-st1"]);
    assert_eq!(
        plan.instance,
        [InstanceBalance::EbsIo, InstanceBalance::EbsByte],
        "CPU credits only on T instances"
    );
    let series = plan.series();
    assert_eq!(series.len(), 4);
    assert_eq!(series[1], Series::burst_balance("vol-st1"));
    assert_eq!(series[3], Series::instance("EBSByteBalance%", "i-1"));

    on_instance(&mut s, "t3.micro");
    assert_eq!(s.poll_plan(&c).instance, InstanceBalance::ALL);
    let off = CloudConfig {
        instance_balances: false,
        ..c
    };
    assert!(s.poll_plan(&off).instance.is_empty());
}

#[test]
fn poll_results_map_back_by_index_and_older_points_are_ignored() {
    let mut s = State::default();
    let c = cfg();
    on_instance(&mut s, "m5.large");
    describe(
        &mut s,
        vec![],
        vec![vol("vol-a", "gp2", 100), vol("vol-b", "st1", 500)],
        &c,
    );
    let plan = s.poll_plan(&c);
    // Index 0, 1: volumes; 2, 3: EBSIOBalance%, EBSByteBalance%.
    let answer = BTreeMap::from([(0, point(80.0, T0 - 120.0)), (3, point(55.0, T0 - 60.0))]);
    let anchored = s.on_poll(&plan, Ok(answer), T0).expect("ok");
    assert_eq!(anchored.len(), 1);
    assert_eq!(anchored[0].0, "vol-a");
    let snap = s.snapshot(&c, T0);
    assert_eq!(
        volume(&snap, "vol-a").burst_balance,
        Some(point(80.0, T0 - 120.0))
    );
    assert_eq!(volume(&snap, "vol-b").burst_balance, None);
    assert_eq!(
        snap.instance_balances,
        vec![(InstanceBalance::EbsByte, point(55.0, T0 - 60.0))]
    );
    // An older point (CloudWatch's lookback still holds it) changes nothing.
    assert!(poll(&mut s, &c, &[("vol-a", point(70.0, T0 - 180.0))]).is_empty());
    assert!(approx(
        volume(&s.snapshot(&c, T0), "vol-a").estimate_percent,
        80.0
    ));
    // A newer one replaces it and re-anchors.
    assert_eq!(
        poll(&mut s, &c, &[("vol-a", point(75.0, T0 - 60.0))]).len(),
        1
    );
    let snap = s.snapshot(&c, T0);
    assert_eq!(
        volume(&snap, "vol-a").burst_balance.map(|p| p.percent),
        Some(75.0)
    );
    assert!(approx(volume(&snap, "vol-a").estimate_percent, 75.0));
}

#[test]
fn the_local_estimate_decides_low_before_cloudwatch_does() {
    let mut s = State::default();
    let c = cfg_mapping("loop7", "vol-a");
    describe(&mut s, vec![], vec![vol("vol-a", "gp2", 100)], &c);
    let at0 = Instant::now();
    // A device's first reading gives its counters, the second starts the bucket's clock.
    s.on_disk_counters(&[disk("loop7", 0, 0)], at0, T0 - 101.0);
    s.on_disk_counters(&[disk("loop7", 0, 0)], at0 + S(1), T0 - 100.0);
    // CloudWatch says 20 % (low) for a minute that ends after our clock: taken as now.
    poll(&mut s, &c, &[("vol-a", point(20.0, T0 - 60.0))]);
    assert!(s.low_balance(&c));
    // Idle for 2,100 s at 300 IOPS baseline: +630,000 credits = +11.67 points, so the
    // estimate (31.7 %) is above the threshold while CloudWatch's last word is still 20 %.
    s.on_disk_counters(&[disk("loop7", 0, 0)], at0 + S(2101), T0 + 2000.0);
    let est = volume(&s.snapshot(&c, T0), "vol-a").estimate_percent;
    assert!(
        approx(est, 20.0 + 630_000.0 / GP2_BUCKET_CREDITS * 100.0),
        "{est:?}"
    );
    assert!(!s.low_balance(&c));
}

#[test]
fn without_an_estimate_cloudwatch_decides_low() {
    let mut s = State::default();
    let c = cfg();
    // gp2 of 2 TiB never bursts, so it has no bucket; a point for it (a plan from before a
    // resize) is the only level there is.
    describe(&mut s, vec![], vec![vol("vol-big", "gp2", 2048)], &c);
    let plan = PollPlan {
        volumes: vec!["vol-big".into()],
        ..PollPlan::default()
    };
    let anchored = s
        .on_poll(&plan, Ok(BTreeMap::from([(0, point(10.0, T0))])), T0)
        .expect("ok");
    assert_eq!(anchored[0].2, None, "no bucket to anchor");
    assert!(s.low_balance(&c));
}

#[test]
fn instance_ebs_balances_count_as_low_and_cpu_credits_do_not() {
    let mut s = State::default();
    let c = cfg();
    on_instance(&mut s, "t3.micro");
    describe(&mut s, vec![], vec![], &c);
    let plan = s.poll_plan(&c);
    assert_eq!(plan.instance[2], InstanceBalance::CpuCredit);
    s.on_poll(&plan, Ok(BTreeMap::from([(2, point(5.0, T0))])), T0)
        .expect("ok");
    assert!(!s.low_balance(&c), "CPU credits are not an I/O balance");
    s.on_poll(&plan, Ok(BTreeMap::from([(1, point(29.0, T0))])), T0)
        .expect("ok");
    assert!(s.low_balance(&c), "EBSByteBalance% below 30");
}
