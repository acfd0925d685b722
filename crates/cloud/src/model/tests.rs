//! The credit model's unit tests: each documented rule at its edges, replay and anchoring
//! cases (the property tests are in `proptests.rs`).

use super::*;

/// The true average over the first minute of a balance that starts at `start` and is
/// `truth[i]` at the end of second i+1 (linear within each second, as the model steps are).
fn minute_average(start: f64, truth: &[f64]) -> f64 {
    let mut prev = start;
    let mut integral = 0.0;
    for v in &truth[..60] {
        integral += (prev + v) / 2.0;
        prev = *v;
    }
    integral / 60.0
}

#[test]
fn a_period_average_from_before_the_history_counts_the_unrecorded_part_as_unchanged() {
    // The agent starts 20 s into the minute; the volume ran at its baseline (no net change)
    // until 40 s, then at 3,000 IOPS.
    let mut b = Bucket::new(&VolumeType::Gp2, 100).unwrap();
    let t0 = 1_000_000.0;
    let start: f64 = 2_000_000.0;
    let mut truth = vec![];
    let mut bal = start;
    for i in 1..=90 {
        let units: f64 = if i > 40 { 3000.0 } else { 300.0 };
        bal = (bal + 300.0 - units).clamp(0.0, GP2_BUCKET_CREDITS);
        truth.push(bal);
        if i == 20 {
            b.advance_units(t0 + 20.0, 0.0);
        } else if i > 20 {
            b.advance_units(t0 + i as f64, units);
        }
    }
    let avg = minute_average(start, &truth);
    let r = b.anchor_period_average(avg / GP2_BUCKET_CREDITS * 100.0, t0, 60.0);
    assert!(matches!(r, Anchor::Applied { .. }), "{r:?}");
    assert!(
        (b.balance() - truth[89]).abs() < 1.0,
        "{} vs {}",
        b.balance(),
        truth[89]
    );
}

#[test]
fn a_period_average_with_a_load_starting_mid_minute_anchors_exactly() {
    // 100 GiB gp2 (baseline 300): idle for 40 s of the minute, then 3,000 IOPS for 20 s.
    let mut b = Bucket::new(&VolumeType::Gp2, 100).unwrap();
    let t0 = 1_000_000.0;
    b.advance_units(t0, 0.0);
    // The true balance at the minute's start; the bucket itself starts full (unanchored).
    let start = 2_000_000.0;
    let mut truth = vec![];
    let mut bal = start;
    for i in 1..=90 {
        let t = t0 + i as f64;
        let units = if i > 40 { 3000.0 } else { 0.0 };
        b.advance_units(t, units);
        bal = (bal + 300.0 - units).clamp(0.0, GP2_BUCKET_CREDITS);
        truth.push(bal);
    }
    // The minute's true average (balance at each second's end, as a fine sampler sees it,
    // integrated piecewise linearly).
    let avg = minute_average(start, &truth);
    let r = b.anchor_period_average(avg / GP2_BUCKET_CREDITS * 100.0, t0, 60.0);
    assert!(matches!(r, Anchor::Applied { .. }), "{r:?}");
    let want = truth[89];
    assert!(
        (b.balance() - want).abs() < 1.0,
        "{} vs {want}",
        b.balance()
    );
    // The midpoint rule would have been off by thousands of credits here.
    let mut m = Bucket::new(&VolumeType::Gp2, 100).unwrap();
    m.advance_units(t0 + 89.0, 0.0);
    m.anchor(avg / GP2_BUCKET_CREDITS * 100.0, t0 + 30.0);
    let mid_value_err = (avg - truth[29]).abs();
    assert!(mid_value_err > 5_000.0, "{mid_value_err}");
}

pub(super) const T0: f64 = 1_700_000_000.0;

fn gp2(size: u64) -> Bucket {
    Bucket::new(&VolumeType::Gp2, size).expect("gp2 below 1 TiB bursts")
}

fn approx(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

#[test]
fn parses_ec2_volume_types() {
    for (s, t) in [
        ("gp2", VolumeType::Gp2),
        ("gp3", VolumeType::Gp3),
        ("io1", VolumeType::Io1),
        ("io2", VolumeType::Io2),
        ("st1", VolumeType::St1),
        (" SC1 ", VolumeType::Sc1),
        ("standard", VolumeType::Standard),
    ] {
        assert_eq!(VolumeType::parse(s), t);
        assert_eq!(s.trim().to_ascii_lowercase(), t.to_string());
    }
    let other: VolumeType = "io3".parse().expect("infallible");
    assert_eq!(other, VolumeType::Other("io3".into()));
    assert_eq!(other.as_str(), "io3");
}

#[test]
fn which_volumes_burst() {
    for t in [
        VolumeType::Gp3,
        VolumeType::Io1,
        VolumeType::Io2,
        VolumeType::Standard,
        VolumeType::Other("x".into()),
    ] {
        assert!(!t.has_burst_balance(100), "{t}");
        assert!(Bucket::new(&t, 100).is_none(), "{t}");
        assert!(t.performance(100).is_none());
    }
    assert!(VolumeType::Gp2.has_burst_balance(1));
    assert!(VolumeType::Gp2.has_burst_balance(999));
    assert!(VolumeType::Gp2.has_burst_balance(1023));
    assert!(!VolumeType::Gp2.has_burst_balance(1024));
    assert!(!VolumeType::Gp2.has_burst_balance(0));
    assert!(Bucket::new(&VolumeType::Gp2, 1024).is_none());
    assert!(VolumeType::St1.has_burst_balance(16 * 1024));
    assert!(VolumeType::Sc1.has_burst_balance(125));
    assert!(Bucket::new(&VolumeType::St1, 0).is_none());
}

#[test]
fn gp2_baseline_edges() {
    let p = |size| VolumeType::Gp2.performance(size).expect("gp2");
    assert_eq!(p(1).baseline_per_sec, 100.0);
    assert_eq!(p(33).baseline_per_sec, 100.0); // 99 → floor 100
    assert_eq!(p(34).baseline_per_sec, 102.0);
    assert_eq!(p(100).baseline_per_sec, 300.0);
    assert_eq!(p(999).baseline_per_sec, 2_997.0);
    assert_eq!(p(999).burst_per_sec, 3_000.0);
    assert_eq!(p(1000).baseline_per_sec, 3_000.0);
    assert_eq!(p(1000).burst_per_sec, 3_000.0);
    assert_eq!(p(5333).baseline_per_sec, 15_999.0);
    assert_eq!(p(5334).baseline_per_sec, 16_000.0); // 16,002 → ceiling
    assert_eq!(p(16 * 1024).baseline_per_sec, 16_000.0);
    assert_eq!(p(16 * 1024).burst_per_sec, 16_000.0);
    assert_eq!(p(1).capacity, 5_400_000.0);
    assert_eq!(p(1).unit, CreditUnit::Io256KiB);
}

#[test]
fn baseline_iops_is_gp2_s_formula_or_what_is_provisioned() {
    for size in [1, 33, 34, 100, 999, 1000, 5334, 16 * 1024] {
        let p = VolumeType::Gp2.performance(size).expect("gp2");
        // gp2's baseline does not depend on what DescribeVolumes reports as provisioned.
        assert_eq!(
            VolumeType::Gp2.baseline_iops(size, Some(1)),
            Some(p.baseline_per_sec)
        );
    }
    assert_eq!(VolumeType::Gp2.baseline_iops(0, None), Some(100.0));
    for t in [VolumeType::Gp3, VolumeType::Io1, VolumeType::Io2] {
        assert_eq!(t.baseline_iops(500, Some(4000)), Some(4000.0));
        assert_eq!(t.baseline_iops(500, None), None);
    }
    for t in [
        VolumeType::St1,
        VolumeType::Sc1,
        VolumeType::Standard,
        VolumeType::parse("gp9"),
    ] {
        assert_eq!(t.baseline_iops(500, Some(4000)), None, "{t}");
    }
}

#[test]
fn hdd_baseline_burst_and_bucket_edges() {
    let st1 = |size| VolumeType::St1.performance(size).expect("st1");
    let sc1 = |size| VolumeType::Sc1.performance(size).expect("sc1");
    // st1, 1 TiB: 40 / 250 MiB/s, 1 TiB of credits = 1,048,576 MiB.
    assert_eq!(st1(1024).baseline_per_sec, 40.0);
    assert_eq!(st1(1024).burst_per_sec, 250.0);
    assert_eq!(st1(1024).capacity, 1_048_576.0);
    assert_eq!(st1(1024).unit, CreditUnit::MiB);
    // st1 minimum size 125 GiB: 125/1024 TiB.
    assert_eq!(st1(125).baseline_per_sec, 40.0 * 125.0 / 1024.0);
    assert_eq!(st1(125).burst_per_sec, 250.0 * 125.0 / 1024.0);
    assert_eq!(st1(125).capacity, 125.0 * 1024.0);
    // burst cap 500 reached at 2 TiB; baseline cap 500 at 12.5 TiB.
    assert_eq!(st1(2048).burst_per_sec, 500.0);
    assert_eq!(st1(4096).burst_per_sec, 500.0);
    assert_eq!(st1(12_800).baseline_per_sec, 500.0);
    assert_eq!(st1(16_384).baseline_per_sec, 500.0);
    // sc1: 12 / 80 per TiB; burst cap 250 at 3.125 TiB; baseline 192 at 16 TiB.
    assert_eq!(sc1(1024).baseline_per_sec, 12.0);
    assert_eq!(sc1(1024).burst_per_sec, 80.0);
    assert_eq!(sc1(3200).burst_per_sec, 250.0);
    assert_eq!(sc1(3100).burst_per_sec, 80.0 * 3100.0 / 1024.0);
    assert_eq!(sc1(16_384).baseline_per_sec, 192.0);
    assert_eq!(sc1(16_384).burst_per_sec, 250.0);
    assert_eq!(sc1(16_384).capacity, 16.0 * 1_048_576.0);
}

#[test]
fn credit_units() {
    let ssd = CreditUnit::Io256KiB;
    assert_eq!(ssd.units(0, 0), 0.0);
    assert_eq!(ssd.units(10, 10 * 4096), 10.0); // small I/O: one each
    assert_eq!(ssd.units(1, 512 * KIB), 2.0); // 512 KiB counts as 2
    assert_eq!(ssd.units(1, 500 * KIB), 2.0); // 500 KiB: 256 + 244
    assert_eq!(ssd.units(4, 4 * 256 * KIB), 4.0);
    assert_eq!(ssd.units(1, 256 * KIB + 1), 2.0);
    let hdd = CreditUnit::MiB;
    assert_eq!(hdd.units(10, 10 * 4096), 10.0); // each small I/O counts as 1 MiB
    assert_eq!(hdd.units(1, 3 * MIB), 3.0);
    assert_eq!(hdd.units(2, 3 * MIB), 3.0);
    assert_eq!(hdd.units(0, MIB / 2), 0.5);
    assert_eq!(hdd.name(), "MiB");
    assert_eq!(ssd.name(), "io");
}

#[test]
fn gp2_100_gib_at_3000_iops_empties_in_2000_s() {
    // baseline 300, usage 3,000 → 2,700 credits/s; 5.4 M / 2,700 = 2,000 s.
    let mut b = gp2(100);
    b.advance(T0, 0, 0);
    assert_eq!(b.seconds_to_empty(), f64::INFINITY);
    for i in 1..=1000 {
        b.advance(T0 + i as f64, 3_000, 3_000 * 16 * KIB);
    }
    assert_eq!(b.balance(), 2_700_000.0);
    assert_eq!(b.percent(), 50.0);
    assert_eq!(b.drain_rate(), 2_700.0);
    assert_eq!(b.seconds_to_empty(), 1_000.0);
    for i in 1001..=1999 {
        b.advance(T0 + i as f64, 3_000, 3_000 * 16 * KIB);
    }
    assert_eq!(b.balance(), 2_700.0);
    assert_eq!(b.seconds_to_empty(), 1.0);
    b.advance(T0 + 2000.0, 3_000, 3_000 * 16 * KIB);
    assert_eq!(b.balance(), 0.0);
    assert_eq!(b.seconds_to_empty(), 0.0);
    // Empty, then an hour idle refills 300/s × 3600 = 1.08 M = 20 %.
    b.advance(T0 + 2000.0 + 3600.0, 0, 0);
    assert_eq!(b.balance(), 1_080_000.0);
    assert!(approx(b.percent(), 20.0, 1e-9));
    assert_eq!(b.seconds_to_empty(), f64::INFINITY);
    assert_eq!(b.drain_rate(), -300.0);
}

#[test]
fn st1_drains_in_mib() {
    // st1 1 TiB: baseline 40 MiB/s, burst 250; streaming 1 MiB I/O at 250 MiB/s drains
    // 210 MiB/s: a full 1 TiB bucket lasts 1,048,576 / 210 ≈ 4,993 s.
    let mut b = Bucket::new(&VolumeType::St1, 1024).expect("st1");
    b.advance(T0, 0, 0);
    for i in 1..=100 {
        b.advance(T0 + i as f64, 250, 250 * MIB);
    }
    assert_eq!(b.balance(), 1_048_576.0 - 21_000.0);
    assert!(approx(
        b.seconds_to_empty(),
        (1_048_576.0 - 21_000.0) / 210.0,
        1e-6
    ));
    // 4 KiB random reads on HDD count 1 MiB each: 100 of them a second is 100 MiB/s.
    let mut c = Bucket::new(&VolumeType::St1, 1024).expect("st1");
    c.advance(T0, 0, 0);
    c.advance(T0 + 1.0, 100, 100 * 4 * KIB);
    assert_eq!(c.capacity() - c.balance(), 60.0);
}

#[test]
fn usage_above_burst_is_clamped() {
    let mut b = gp2(100);
    b.advance(T0, 0, 0);
    b.advance(T0 + 1.0, 1_000_000, 0);
    assert_eq!(b.balance(), 5_400_000.0 - 2_700.0);
    assert_eq!(b.drain_rate(), 2_700.0);
}

#[test]
fn first_advance_starts_the_clock() {
    let mut b = gp2(100);
    b.advance(T0, 1_000_000, 0);
    assert_eq!(b.balance(), b.capacity());
    assert_eq!(b.now(), Some(T0));
    assert_eq!(b.history_seconds(), 0.0);
}

#[test]
fn same_time_usage_carries_over_and_clock_step_back_resets_history() {
    let mut b = gp2(100);
    b.advance(T0, 0, 0);
    b.advance(T0 + 1.0, 1_000, 0);
    b.advance(T0 + 1.0, 1_000, 0); // no time passed: carried
    assert_eq!(b.balance(), 5_400_000.0 - 700.0);
    b.advance(T0 + 2.0, 1_000, 0); // 2,000 used over 1 s
    assert_eq!(b.balance(), 5_400_000.0 - 700.0 - 1_700.0);
    assert_eq!(b.history_seconds(), 2.0);
    b.advance(T0 - 100.0, 0, 0); // the wall clock stepped back
    assert_eq!(b.history_seconds(), 0.0);
    assert_eq!(b.now(), Some(T0 - 100.0));
    b.advance(T0 - 99.0, 3_000, 0);
    assert_eq!(b.balance(), 5_400_000.0 - 700.0 - 1_700.0 - 2_700.0);
    // Non-finite times are ignored.
    b.advance(f64::NAN, 3_000, 0);
    assert_eq!(b.now(), Some(T0 - 99.0));
}

#[test]
fn anchor_replays_usage_since_the_point() {
    // 600 s at 3,000 IOPS on 100 GiB drains 1.62 M (to 70 %). CloudWatch says 50 % at
    // +300 s: 2.7 M then, minus 300 × 2,700 = 810 k since → 1.89 M = 35 %.
    let mut b = gp2(100);
    b.advance(T0, 0, 0);
    for i in 1..=600 {
        b.advance(T0 + i as f64, 3_000, 0);
    }
    assert!(approx(b.percent(), 70.0, 1e-9));
    assert_eq!(
        b.anchor(50.0, T0 + 300.0),
        Anchor::Applied {
            steps: 300,
            gap_seconds: 0.0
        }
    );
    assert_eq!(b.balance(), 1_890_000.0);
    assert_eq!(b.last_anchor(), Some(T0 + 300.0));
    // Inside a step: 50 % at +599.5 → half a second of 2,700 drained since.
    assert!(matches!(
        b.anchor(50.0, T0 + 599.5),
        Anchor::Applied { steps: 1, .. }
    ));
    assert!(approx(b.balance(), 2_700_000.0 - 1_350.0, 1e-6));
    // An older point than the last one applied is ignored.
    assert_eq!(b.anchor(90.0, T0 + 400.0), Anchor::Superseded);
    assert!(approx(b.balance(), 2_700_000.0 - 1_350.0, 1e-6));
    // Percent outside [0, 100] is clamped; NaN ignored.
    assert_eq!(b.anchor(f64::NAN, T0 + 600.0), Anchor::Invalid);
    b.anchor(150.0, T0 + 600.0);
    assert_eq!(b.balance(), b.capacity());
}

#[test]
fn anchor_before_history_and_in_the_future() {
    let mut b = gp2(100);
    // No clock yet: taken as now.
    assert_eq!(b.anchor(10.0, T0), Anchor::Future { ahead_seconds: 0.0 });
    assert!(approx(b.percent(), 10.0, 1e-9));
    b.advance(T0 + 100.0, 0, 0); // starts the clock
    for i in 1..=10 {
        b.advance(T0 + 100.0 + i as f64, 0, 0); // idle: +300/s
    }
    // A point 60 s before the recorded history: applied at its start, 10 s replayed.
    assert_eq!(
        b.anchor(20.0, T0 + 40.0),
        Anchor::Applied {
            steps: 10,
            gap_seconds: 60.0
        }
    );
    assert_eq!(b.balance(), 1_080_000.0 + 3_000.0);
    // A point ahead of our clock: the balance now; later points stay comparable.
    assert_eq!(
        b.anchor(30.0, T0 + 200.0),
        Anchor::Future {
            ahead_seconds: 90.0
        }
    );
    assert!(approx(b.percent(), 30.0, 1e-9));
    assert_eq!(b.last_anchor(), Some(T0 + 110.0));
    assert!(matches!(b.anchor(40.0, T0 + 110.0), Anchor::Applied { .. }));
}

#[test]
fn period_average_anchors_at_the_midpoint() {
    let mut a = gp2(100);
    let mut b = gp2(100);
    for bucket in [&mut a, &mut b] {
        bucket.advance(T0, 0, 0);
        for i in 1..=120 {
            bucket.advance(T0 + i as f64, 3_000, 0);
        }
    }
    a.anchor_period_average(50.0, T0 + 60.0, 60.0);
    b.anchor(50.0, T0 + 90.0);
    assert_eq!(a.balance(), b.balance());
    assert_eq!(a.balance(), 2_700_000.0 - 30.0 * 2_700.0);
}

#[test]
fn history_is_bounded() {
    let mut b = gp2(100);
    b.advance(T0, 0, 0);
    for i in 1..=(HISTORY_SECONDS as usize + 500) {
        b.advance(T0 + i as f64, 100, 0);
    }
    assert!(b.history.len() <= HISTORY_MAX_STEPS);
    assert!(b.history_seconds() <= HISTORY_SECONDS + 1.0);
    assert!(b.history_seconds() >= HISTORY_SECONDS);
    // Ten per second: the step cap binds.
    let mut c = gp2(100);
    c.advance(T0, 0, 0);
    for i in 1..=(HISTORY_MAX_STEPS + 1000) {
        c.advance(T0 + i as f64 / 10.0, 10, 0);
    }
    assert_eq!(c.history.len(), HISTORY_MAX_STEPS);
}

#[test]
fn drain_window_covers_the_last_minute_only() {
    let mut b = gp2(100);
    b.advance(T0, 0, 0);
    for i in 1..=100 {
        b.advance(T0 + i as f64, 3_000, 0);
    }
    for i in 101..=160 {
        b.advance(T0 + i as f64, 300, 0); // at baseline
    }
    assert_eq!(b.drain_rate(), 0.0);
    assert_eq!(b.seconds_to_empty(), f64::INFINITY);
    // One long interval (the agent was paused) is prorated, not ignored.
    b.advance(T0 + 760.0, 600 * 1_300, 0);
    assert!(approx(b.drain_rate(), 1_000.0, 1e-9));
}

// ---- properties ----

/// The replay's flicker: once the bucket is empty the volume is held to its baseline, its
/// usage and earnings cancel to within a second's jitter, and `seconds_to_empty` went back and
/// forth between 0 and a second or so (once 18–33 s) for about 80 s. It must stay 0 until the
/// bucket holds a minute of baseline earnings, then say +Inf while it refills.
#[test]
fn an_empty_bucket_says_empty_until_it_has_really_refilled() {
    let mut b = gp2(1); // baseline 100
    b.advance(T0, 0, 0);
    b.anchor(0.5, T0); // 27,000 credits
    let mut t = T0;
    while b.balance() > 0.0 {
        t += 1.0;
        b.advance_units(t, 2_900.0);
        assert!(t < T0 + 60.0);
    }
    assert_eq!(b.seconds_to_empty(), 0.0);
    // Held to the baseline: 85 and 115 I/Os in turns, and an odd 60 (the throttle's jitter).
    for i in 0..90 {
        t += 1.0;
        let used = match i % 7 {
            0 => 60.0,
            k if k % 2 == 0 => 85.0,
            _ => 115.0,
        };
        b.advance_units(t, used);
        assert_eq!(
            b.seconds_to_empty(),
            0.0,
            "at +{i} s: {} credits",
            b.balance()
        );
    }
    // The load stops: a minute of baseline earnings later it is refilling, and says so.
    let mut refilled_at = None;
    for i in 0..120 {
        t += 1.0;
        b.advance_units(t, 0.0);
        let tte = b.seconds_to_empty();
        if tte.is_infinite() && refilled_at.is_none() {
            refilled_at = Some(i);
        }
        if refilled_at.is_some() {
            assert!(tte.is_infinite(), "no flicker back at +{i} s");
        }
    }
    let at = refilled_at.expect("refilling");
    assert!((50..=65).contains(&at), "{at}");
}

#[test]
fn without_a_basis_the_upper_bound_says_when_the_bucket_is_empty_at_the_latest() {
    // 1 GiB gp2 at 2,900 IOPS: 2,800 net. From full (the most it can hold) it is empty within
    // 1,929 s; after 128 s of the drain, within 1,800.
    let mut b = gp2(1);
    b.advance(T0, 0, 0);
    assert_eq!(b.estimate(), None);
    assert_eq!(b.bounds_percent(), (0.0, 100.0));
    let mut t = T0;
    for _ in 0..129 {
        t += 1.0;
        b.advance_units(t, 2_900.0);
    }
    let (lo, hi) = b.bounds_percent();
    assert_eq!(lo, 0.0);
    assert!(approx(
        hi,
        100.0 - 129.0 * 2_800.0 / GP2_BUCKET_CREDITS * 100.0,
        1e-9
    ));
    let tte = b.seconds_to_empty();
    assert!(
        approx(tte, (GP2_BUCKET_CREDITS - 129.0 * 2_800.0) / 2_800.0, 1e-6),
        "{tte}"
    );
    assert!(tte < 1_800.0);
    // An anchor closes the bounds onto the estimate.
    b.anchor(50.0, t);
    assert_eq!(b.bounds_percent(), (50.0, 50.0));
    assert_eq!(b.basis(), Some(EstimateBasis::CloudWatch));
}
