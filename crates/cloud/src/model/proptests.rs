//! The credit model's property tests: the balance stays in the bucket, usage at or below the
//! baseline never drains, anchoring then replaying equals advancing from the anchor, and the
//! time to empty is finite exactly while draining.

use proptest::prelude::*;

use super::tests::T0;
use super::*;

fn any_bursting() -> impl Strategy<Value = (VolumeType, u64)> {
    prop_oneof![
        (1u64..1024).prop_map(|s| (VolumeType::Gp2, s)),
        (1u64..=16_384).prop_map(|s| (VolumeType::St1, s)),
        (1u64..=16_384).prop_map(|s| (VolumeType::Sc1, s)),
    ]
}

/// (dt, ops, bytes) steps; dt sometimes 0 or negative.
fn steps() -> impl Strategy<Value = Vec<(f64, u64, u64)>> {
    prop::collection::vec(
        (
            prop_oneof![8 => 0.01f64..30.0, 1 => Just(0.0), 1 => -5.0f64..0.0],
            0u64..200_000,
            0u64..(4 * 1024 * MIB),
        ),
        0..200,
    )
}

proptest! {
    #[test]
    fn balance_stays_within_the_bucket(
        (vt, size) in any_bursting(),
        s in steps(),
        anchors in prop::collection::vec((-50.0f64..150.0, 0usize..200), 0..4),
    ) {
        let mut b = Bucket::new(&vt, size).expect("bursting");
        let mut t = T0;
        b.advance(t, 0, 0);
        for (i, (dt, ops, bytes)) in s.iter().enumerate() {
            t += dt;
            b.advance(t, *ops, *bytes);
            for (p, at) in &anchors {
                if *at == i {
                    b.anchor(*p, t - 10.0);
                }
            }
            prop_assert!(b.balance() >= 0.0 && b.balance() <= b.capacity());
            prop_assert!((0.0..=100.0).contains(&b.percent()));
            prop_assert!(b.seconds_to_empty() >= 0.0);
        }
    }

    #[test]
    fn usage_at_or_below_baseline_never_drains(
        (vt, size) in any_bursting(),
        s in prop::collection::vec((0.1f64..20.0, 0.0f64..=1.0), 1..100),
        start in 0.0f64..=100.0,
    ) {
        let mut b = Bucket::new(&vt, size).expect("bursting");
        b.advance(T0, 0, 0);
        b.anchor(start, T0);
        let mut t = T0;
        for (dt, frac) in s {
            let before = b.balance();
            t += dt;
            b.advance_units(t, b.baseline_per_sec() * dt * frac);
            prop_assert!(b.balance() >= before);
            // Not draining: +Inf, except 0 for an empty bucket until it holds a minute of
            // baseline earnings again (the latch against flicker).
            let tte = b.seconds_to_empty();
            let refilled = b.balance() > b.baseline_per_sec() * DRAIN_WINDOW_SECONDS;
            prop_assert!(tte == f64::INFINITY || (tte == 0.0 && !refilled), "{tte}");
        }
    }

    #[test]
    fn anchoring_then_replaying_equals_advancing_from_the_anchor(
        (vt, size) in any_bursting(),
        s in prop::collection::vec((0.01f64..30.0, 0u64..200_000, 0u64..(4 * 1024 * MIB)), 1..150),
        k in 0usize..150,
        p in 0.0f64..=100.0,
    ) {
        let k = k % s.len();
        let times: Vec<f64> = s.iter().scan(T0, |t, (dt, _, _)| { *t += dt; Some(*t) }).collect();
        let mut a = Bucket::new(&vt, size).expect("bursting");
        a.advance(T0, 0, 0);
        for ((_, ops, bytes), t) in s.iter().zip(&times) {
            a.advance(*t, *ops, *bytes);
        }
        let out = a.anchor(p, times[k]);
        prop_assert_eq!(out, Anchor::Applied { steps: s.len() - k - 1, gap_seconds: 0.0 });

        let mut b = Bucket::new(&vt, size).expect("bursting");
        b.advance(times[k], 0, 0);
        b.anchor(p, times[k]);
        for ((_, ops, bytes), t) in s.iter().zip(&times).skip(k + 1) {
            b.advance(*t, *ops, *bytes);
        }
        prop_assert_eq!(a.balance(), b.balance());
    }

    #[test]
    fn seconds_to_empty_is_infinite_iff_not_draining(
        (vt, size) in any_bursting(),
        s in steps(),
    ) {
        let mut b = Bucket::new(&vt, size).expect("bursting");
        let mut t = T0;
        b.advance(t, 0, 0);
        for (dt, ops, bytes) in s {
            t += dt;
            b.advance(t, ops, bytes);
            let tte = b.seconds_to_empty();
            if b.balance() > b.baseline_per_sec() * DRAIN_WINDOW_SECONDS {
                prop_assert_eq!(tte.is_infinite(), b.drain_rate() <= 0.0);
            } else if b.balance() > 0.0 {
                // Maybe latched at empty: 0, else the same rule.
                prop_assert!(tte == 0.0 || tte.is_infinite() == (b.drain_rate() <= 0.0));
            } else {
                prop_assert_eq!(tte, 0.0);
            }
        }
    }

    #[test]
    fn constant_drain_predicts_the_time_to_empty(
        (vt, size) in any_bursting(),
        load in 0.05f64..=1.0,
        start in 5.0f64..=100.0,
    ) {
        let mut b = Bucket::new(&vt, size).expect("bursting");
        let (base, burst) = (b.baseline_per_sec(), b.burst_per_sec());
        prop_assume!(burst > base);
        let rate = base + (burst - base) * load;
        b.advance(T0, 0, 0);
        b.anchor(start, T0);
        // Fill the window, then predict, then run until empty.
        let mut t = T0;
        for _ in 0..(DRAIN_WINDOW_SECONDS as usize) {
            t += 1.0;
            b.advance_units(t, rate);
        }
        prop_assume!(b.balance() > 0.0);
        let predicted = b.seconds_to_empty();
        prop_assert!(predicted.is_finite());
        let from = t;
        // Steps of at most 1/2000 of the prediction (at least 1 s): the measured time is
        // known to within the last step.
        let dt = (predicted / 2000.0).max(1.0);
        let mut n = 0u64;
        while b.balance() > 0.0 {
            t += dt;
            n += 1;
            b.advance_units(t, rate * dt);
            prop_assert!(n < 10_000);
        }
        let actual = t - from;
        prop_assert!(predicted <= actual * 1.01 && predicted >= (actual - dt) * 0.99,
            "predicted {predicted} actual {actual}");
    }

    #[test]
    fn performance_is_monotone_and_capped(size in 1u64..=16_384, more in 0u64..=4096) {
        for vt in [VolumeType::Gp2, VolumeType::St1, VolumeType::Sc1] {
            let p = vt.performance(size).expect("bursting type");
            let q = vt.performance(size + more).expect("bursting type");
            prop_assert!(q.baseline_per_sec >= p.baseline_per_sec);
            prop_assert!(q.burst_per_sec >= p.burst_per_sec);
            prop_assert!(q.capacity >= p.capacity);
            prop_assert!(p.burst_per_sec >= p.baseline_per_sec);
            prop_assert!(p.baseline_per_sec > 0.0);
            let (base_cap, burst_cap) = match vt {
                VolumeType::Gp2 => (16_000.0, 16_000.0),
                VolumeType::St1 => (500.0, 500.0),
                _ => (192.0, 250.0),
            };
            prop_assert!(p.baseline_per_sec <= base_cap && p.burst_per_sec <= burst_cap);
            prop_assert_eq!(vt.has_burst_balance(size), Bucket::new(&vt, size).is_some());
        }
    }

    /// Whatever the true level at the start, the bounds of a bucket that does not know it
    /// contain the true level after any usage: the step never reorders two levels.
    #[test]
    fn the_bounds_contain_every_level_the_bucket_can_be_at(
        (vt, size) in any_bursting(),
        s in steps(),
        truth_start in 0.0f64..=100.0,
        anchor_at in prop::option::of(0usize..200),
    ) {
        let mut model = Bucket::new(&vt, size).expect("bursting");
        let mut truth = Bucket::new(&vt, size).expect("bursting");
        let mut t = T0;
        model.advance(t, 0, 0);
        truth.advance(t, 0, 0);
        truth.anchor(truth_start, t);
        for (i, (dt, ops, bytes)) in s.iter().enumerate() {
            if *dt <= 0.0 {
                continue; // a clock step back is the history's business, not the bounds'
            }
            t += dt;
            model.advance(t, *ops, *bytes);
            truth.advance(t, *ops, *bytes);
            if anchor_at == Some(i) {
                model.anchor(truth.percent(), t);
            }
            let (lo, hi) = model.bounds_percent();
            let p = truth.percent();
            prop_assert!(lo - 1e-9 <= p && p <= hi + 1e-9, "{lo} <= {p} <= {hi}");
            prop_assert!(lo <= hi + 1e-12);
            if model.basis().is_some() {
                let e = model.percent();
                prop_assert!((e - p).abs() < 1e-6, "anchored on the truth: {e} vs {p}");
            }
        }
    }

    /// A volume minutes old: full at creation, `units` spent in `age` seconds in any order; the
    /// bounds of [`Bucket::start_new`] contain where every order ends.
    #[test]
    fn a_new_volume_s_bounds_contain_every_order_of_its_io(
        (vt, size) in any_bursting(),
        age in 1.0f64..3_600.0,
        share in 0.0f64..=1.0,
        when in 0.0f64..=1.0,
    ) {
        let mut truth = Bucket::new(&vt, size).expect("bursting");
        let units = truth.burst_per_sec() * age * share;
        // All of it in one burst at `when` of the way through (a step of at most the burst
        // rate), idle otherwise.
        let burst = (units / truth.burst_per_sec()).max(1e-6);
        let start = (age - burst) * when;
        truth.advance(T0, 0, 0);
        truth.anchor(100.0, T0);
        truth.advance_units(T0 + start, 0.0);
        truth.advance_units(T0 + start + burst, units);
        truth.advance_units(T0 + age, 0.0);
        let mut model = Bucket::new(&vt, size).expect("bursting");
        model.start_new(T0 + age, age, units);
        let (lo, hi) = model.bounds_percent();
        let p = truth.percent();
        prop_assert!(lo - 1e-6 <= p && p <= hi + 1e-6, "{lo} <= {p} <= {hi}");
    }
}
