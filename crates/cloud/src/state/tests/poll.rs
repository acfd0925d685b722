//! What the state asks CloudWatch and when: the plan, results mapped back, backoff, the
//! 1-minute checks, and fast polling while a followed bucket is unanchored, empties within the
//! hour, or is low.

use super::*;
use crate::cloudwatch::Series;

/// A state following `vol-a` (gp2 100 GiB, baseline 300) on `loop7`, its clock started at T0.
fn followed() -> (State, CloudConfig, Instant) {
    let mut s = State::default();
    let c = cfg_mapping("loop7", "vol-a");
    describe(&mut s, vec![], vec![vol("vol-a", "gp2", 100)], &c);
    let at0 = Instant::now();
    s.on_disk_counters(&[disk("loop7", 0, 0)], at0, T0 - 1.0);
    s.on_disk_counters(&[disk("loop7", 0, 0)], at0 + S(1), T0);
    (s, c, at0)
}

#[test]
fn polls_back_off_after_failures_and_go_fast_while_a_balance_is_low() {
    let mut s = State::default();
    let c = cfg();
    describe(&mut s, vec![], vec![vol("vol-a", "gp2", 100)], &c);
    let plan = s.poll_plan(&c);
    assert_eq!(s.poll_delay(&plan, &c, T0), S(300));
    for want in [10, 20, 40, 80, 160, 300, 300] {
        assert!(s.on_poll(&plan, Err(failure(false)), T0).is_err());
        assert_eq!(s.poll_delay(&plan, &c, T0), S(want));
    }
    poll(&mut s, &c, &[("vol-a", point(80.0, T0 - 120.0))]);
    assert_eq!(s.poll_delay(&plan, &c, T0), S(300));
    poll(&mut s, &c, &[("vol-a", point(20.0, T0 - 60.0))]);
    assert!(s.low_balance(&c));
    assert_eq!(s.poll_delay(&plan, &c, T0), S(60), "low: fast polling");
    // A failure while low backs off: hammering a throttled API helps nobody.
    assert!(s.on_poll(&plan, Err(failure(true)), T0).is_err());
    assert_eq!(s.poll_delay(&plan, &c, T0), S(10));
    // A fast interval above the normal one never slows polling down.
    let slow_fast = CloudConfig {
        fast_poll_interval: S(900),
        ..c.clone()
    };
    poll(&mut s, &c, &[]);
    assert_eq!(s.poll_delay(&plan, &slow_fast, T0), S(300));
}

#[test]
fn an_unanchored_followed_bucket_is_polled_every_minute_for_its_first_quarter_hour() {
    let (mut s, c, _) = followed();
    let plan = s.poll_plan(&c);
    assert_eq!(s.fast_poll_reason(&c, T0), Some("unanchored"));
    assert_eq!(s.poll_delay(&plan, &c, T0), S(60));
    // CloudWatch never published for it: after 15 minutes, the normal cadence.
    let later = T0 + UNANCHORED_FAST_SECONDS + 1.0;
    assert_eq!(s.fast_poll_reason(&c, later), None);
    assert_eq!(s.poll_delay(&plan, &c, later), S(300));
    // Anchored (and full, not draining): the normal cadence at once.
    poll(&mut s, &c, &[("vol-a", point(90.0, T0 - 60.0))]);
    assert_eq!(s.fast_poll_reason(&c, T0), None);
    // An unfollowed bucket (no device) is not worth a fast poll: there is no model to anchor.
    let mut t = State::default();
    describe(&mut t, vec![], vec![vol("vol-a", "gp2", 100)], &cfg());
    assert_eq!(t.fast_poll_reason(&cfg(), T0), None);
}

#[test]
fn a_bucket_that_empties_within_the_hour_is_polled_every_minute_at_once() {
    // The replay's bug: the fast poll was armed only below 30 % and only at the next 5-minute
    // poll. Now the schedule follows the drain the moment the model sees it.
    let (mut s, c, at0) = followed();
    poll(&mut s, &c, &[("vol-a", point(80.0, T0 - 60.0))]);
    let plan = s.poll_plan(&c);
    assert_eq!(s.poll_delay(&plan, &c, T0), S(300), "idle at 80 %: normal");
    // 2,900 IOPS against 300 earned: 4.32 M credits drain in 1,662 s, under the hour, while
    // the balance is still far above 30 %.
    let mut ops = 0;
    for i in 1..=10 {
        ops += 2_900;
        s.on_disk_counters(&[disk("loop7", ops, 0)], at0 + S(1 + i), T0 + i as f64);
    }
    let est = volume(&s.snapshot(&c, T0), "vol-a")
        .estimate_percent
        .unwrap();
    assert!(est > 75.0, "{est}");
    assert!(!s.low_balance(&c));
    assert_eq!(s.fast_poll_reason(&c, T0 + 10.0), Some("empties_soon"));
    assert_eq!(s.poll_delay(&plan, &c, T0 + 10.0), S(60));
    // The driver asks the schedule every tick: the next poll is due a minute after the last,
    // not at the next 5-minute poll.
    assert_eq!(s.poll_schedule(&plan, &c, T0 + 10.0), Some(S(60)));
    // A configured horizon below the time to empty: not fast.
    let short = CloudConfig {
        fast_poll_empty_within: S(600),
        ..c.clone()
    };
    assert_eq!(s.fast_poll_reason(&short, T0 + 10.0), None);
}

#[test]
fn the_local_estimate_crossing_the_threshold_re_arms_the_fast_poll_between_polls() {
    let (mut s, c, at0) = followed();
    let never = CloudConfig {
        fast_poll_empty_within: S(1),
        ..c
    };
    poll(&mut s, &never, &[("vol-a", point(31.0, T0 - 60.0))]);
    let plan = s.poll_plan(&never);
    assert_eq!(s.poll_delay(&plan, &never, T0), S(300));
    // 2,000 net credits a second for 30 s: 60,000 credits, 1.1 points: below 30 %.
    for i in 1..=30u64 {
        s.on_disk_counters(
            &[disk("loop7", i * 2_300, 0)],
            at0 + S(1 + i),
            T0 + i as f64,
        );
    }
    assert!(s.low_balance(&never));
    assert_eq!(s.poll_delay(&plan, &never, T0 + 30.0), S(60));
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
    assert_eq!(s.poll_delay(&plan, &c, T0), S(300));
}

#[test]
fn the_plan_asks_bursting_volumes_and_the_instance_balances_that_apply() {
    let c = cfg();
    let mut s = described(
        "m5.large",
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
    assert_eq!(plan.volumes(), ["vol-gp2", "vol-st1"]);
    assert_eq!(
        plan.targets[2..],
        [
            Target::Balance(InstanceBalance::EbsIo),
            Target::Balance(InstanceBalance::EbsByte)
        ],
        "CPU credits only on T instances"
    );
    let series = plan.series();
    assert_eq!(series.len(), 4);
    assert_eq!(series[1], Series::burst_balance("vol-st1"));
    assert_eq!(series[3], Series::instance("EBSByteBalance%", "i-1"));

    on_instance(&mut s, "t3.micro");
    assert_eq!(s.poll_plan(&c).targets.len(), 5, "and CPU credits");
    let off = CloudConfig {
        instance_balances: false,
        ..c
    };
    assert_eq!(s.poll_plan(&off).targets.len(), 2);
}

#[test]
fn the_checks_are_asked_for_every_volume_under_instance_and_volume_and_exported() {
    let c = CloudConfig {
        checks: true,
        instance_balances: false,
        ..cfg()
    };
    let mut s = described(
        "m5.large",
        vec![
            vol("vol-gp2", "gp2", 100),
            vol("vol-gp3", "gp3", 100),
            vol("vol-mag", "standard", 100),
        ],
        &c,
    );
    let plan = s.poll_plan(&c);
    // BurstBalance of the gp2, three checks of gp2 and gp3 (magnetic has none), two of the
    // instance: 9 metrics, in one call.
    assert_eq!(plan.targets.len(), 9);
    let series = plan.series();
    let stalled = &series[1];
    assert_eq!(stalled.metric, "VolumeStalledIOCheck");
    assert_eq!(
        stalled.dimensions,
        [
            ("InstanceId", "i-1".to_string()),
            ("VolumeId", "vol-gp2".to_string())
        ]
    );
    assert_eq!(stalled.stat, "Maximum");
    assert_eq!(series[8].metric, "InstanceEBSThroughputExceededCheck");
    let answer = pts(BTreeMap::from([
        (1, point(1.0, T0 - 60.0)),
        (6, point(0.0, T0 - 60.0)),
        (7, point(1.0, T0 - 120.0)),
        (8, point(0.0, T0 - 10_000.0)),
    ]));
    s.on_poll(&plan, Ok(answer), T0).expect("ok");
    let snap = s.snapshot(&c, T0);
    assert_eq!(
        volume(&snap, "vol-gp2").checks,
        [(
            VolumeCheck::StalledIo,
            CheckPoint {
                value: 1.0,
                timestamp: T0 - 60.0
            }
        )]
    );
    assert_eq!(
        volume(&snap, "vol-gp3").checks,
        [(
            VolumeCheck::ThroughputExceeded,
            CheckPoint {
                value: 0.0,
                timestamp: T0 - 60.0
            }
        )]
    );
    assert_eq!(
        snap.instance_checks,
        [(
            InstanceCheck::IopsExceeded,
            CheckPoint {
                value: 1.0,
                timestamp: T0 - 120.0
            }
        )],
        "the stale one is left out"
    );
}

#[test]
fn poll_results_map_back_by_index_and_older_points_are_ignored() {
    let c = cfg();
    let mut s = described(
        "m5.large",
        vec![vol("vol-a", "gp2", 100), vol("vol-b", "st1", 500)],
        &c,
    );
    let plan = s.poll_plan(&c);
    // Index 0, 1: volumes; 2, 3: EBSIOBalance%, EBSByteBalance%.
    let answer = pts(BTreeMap::from([
        (0, point(80.0, T0 - 120.0)),
        (3, point(55.0, T0 - 60.0)),
    ]));
    let anchored = s.on_poll(&plan, Ok(answer), T0).expect("ok");
    assert_eq!(anchored.len(), 1);
    assert_eq!(anchored[0].volume_id, "vol-a");
    assert!(
        anchored[0].first,
        "the first CloudWatch anchor is said at INFO"
    );
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
    // A newer one replaces it and re-anchors, no longer the first.
    let again = poll(&mut s, &c, &[("vol-a", point(75.0, T0 - 60.0))]);
    assert_eq!(again.len(), 1);
    assert!(!again[0].first);
    let snap = s.snapshot(&c, T0);
    assert_eq!(
        volume(&snap, "vol-a").burst_balance.map(|p| p.percent),
        Some(75.0)
    );
    assert!(approx(volume(&snap, "vol-a").estimate_percent, 75.0));
}

#[test]
fn at_start_the_newest_point_is_carried_to_now_at_the_trend_of_the_history() {
    // The agent starts 3.5 minutes after the newest point's minute began; CloudWatch's last
    // five minutes fell 2 points a minute. The gap is carried at that trend, and the bounds
    // say what the volume could have done in it.
    let (mut s, c, _) = followed(); // clock at T0
    let plan = s.poll_plan(&c);
    let newest = T0 - 210.0;
    let history: Vec<BalancePoint> = (0..5)
        .map(|k| point(60.0 + 2.0 * k as f64, newest - 60.0 * k as f64))
        .collect();
    let anchored = s
        .on_poll(&plan, Ok(BTreeMap::from([(0, history)])), T0)
        .expect("ok");
    assert!((anchored[0].trend_per_minute + 2.0).abs() < 1e-9);
    let v = volume(&s.snapshot(&c, T0), "vol-a").clone();
    // The point is the minute's average, taken at the minute's middle (the model's history
    // does not cover that minute); from there to now (3 minutes) at −2 points a minute.
    let want = 60.0 - 2.0 * 3.0;
    assert!(
        approx(v.estimate_percent, want),
        "{:?} vs {want}",
        v.estimate_percent
    );
    let (lo, hi) = (
        v.estimate_low_percent.unwrap(),
        v.estimate_high_percent.unwrap(),
    );
    assert!(lo < want && want < hi, "{lo} {hi}");
    // Over 3 minutes a 100 GiB gp2 can lose at most 2,700 × 180 credits (9 points) and gain
    // 300 × 180 (1 point).
    assert!(
        (lo - 51.0).abs() < 1e-9 && (hi - 61.0).abs() < 1e-9,
        "{lo} {hi}"
    );
}

#[test]
fn instance_ebs_balances_count_as_low_and_cpu_credits_do_not() {
    let c = cfg();
    let mut s = described("t3.micro", vec![], &c);
    let plan = s.poll_plan(&c);
    assert_eq!(plan.targets[2], Target::Balance(InstanceBalance::CpuCredit));
    s.on_poll(&plan, Ok(pts(BTreeMap::from([(2, point(5.0, T0))]))), T0)
        .expect("ok");
    assert!(!s.low_balance(&c), "CPU credits are not an I/O balance");
    s.on_poll(&plan, Ok(pts(BTreeMap::from([(1, point(29.0, T0))]))), T0)
        .expect("ok");
    assert!(s.low_balance(&c), "EBSByteBalance% below 30");
}

#[test]
fn without_an_estimate_cloudwatch_decides_low() {
    let mut s = State::default();
    let c = cfg();
    // gp2 of 2 TiB never bursts, so it has no bucket; a point for it (a plan from before a
    // resize) is the only level there is.
    describe(&mut s, vec![], vec![vol("vol-big", "gp2", 2048)], &c);
    let plan = PollPlan {
        targets: vec![Target::Burst("vol-big".into())],
        ..PollPlan::default()
    };
    let anchored = s
        .on_poll(&plan, Ok(pts(BTreeMap::from([(0, point(10.0, T0))]))), T0)
        .expect("ok");
    assert_eq!(anchored[0].result, None, "no bucket to anchor");
    assert!(s.low_balance(&c));
}
