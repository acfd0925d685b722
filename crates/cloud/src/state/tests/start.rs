//! A bucket's estimate without CloudWatch: a volume minutes old starts full less the I/O its
//! device counted; the state saved before a restart is taken up with the I/O counted meanwhile.

use super::*;
use crate::snapshot::EstimateBasis;

fn created(mut v: Volume, at: f64) -> Volume {
    v.created = Some(at);
    v
}

#[test]
fn a_volume_created_minutes_ago_starts_full_less_the_io_its_device_counted() {
    let mut s = State::default();
    let c = cfg_mapping("loop7", "vol-a");
    // Created 120 s before the first reading; 54,000 I/Os since (1 % of the bucket).
    describe(
        &mut s,
        vec![],
        vec![created(vol("vol-a", "gp2", 100), T0 - 120.0)],
        &c,
    );
    let at0 = Instant::now();
    let started = s
        .on_disk_counters(&[disk("loop7", 54_000, 0)], at0, T0)
        .expect("fed");
    assert!(
        matches!(&started[..], [Started::NewVolume { age_seconds, .. }] if *age_seconds == 120.0)
    );
    let v = volume(&s.snapshot(&c, T0), "vol-a").clone();
    assert_eq!(v.estimate_basis, Some(EstimateBasis::NewVolume));
    // Between 99 % (spent last) and 99 % + 120 s of 300 earned (spent first).
    let lo = v.estimate_low_percent.unwrap();
    let hi = v.estimate_high_percent.unwrap();
    assert!((lo - 99.0).abs() < 1e-9);
    assert!((hi - (99.0 + 36_000.0 / GP2_BUCKET_CREDITS * 100.0)).abs() < 1e-9);
    assert!(approx(v.estimate_percent, (lo + hi) / 2.0));
    // Said once: the next reading starts nothing.
    let again = s.on_disk_counters(&[disk("loop7", 54_000, 0)], at0 + S(1), T0 + 1.0);
    assert_eq!(again, Some(vec![]));
    // Not anchored on CloudWatch yet: still polled fast for it.
    assert_eq!(s.fast_poll_reason(&c, T0 + 1.0), Some("unanchored"));
}

#[test]
fn an_old_volume_or_one_without_a_creation_time_waits_for_cloudwatch() {
    for v in [
        created(vol("vol-a", "gp2", 100), T0 - NEW_VOLUME_SECONDS - 1.0),
        vol("vol-a", "gp2", 100),
        created(vol("vol-a", "gp2", 100), T0 + 60.0),
    ] {
        let mut s = State::default();
        let c = cfg_mapping("loop7", "vol-a");
        describe(&mut s, vec![], vec![v], &c);
        s.on_disk_counters(&[disk("loop7", 10, 0)], Instant::now(), T0);
        let v = volume(&s.snapshot(&c, T0), "vol-a").clone();
        assert_eq!((v.estimate_percent, v.estimate_basis), (None, None));
    }
}

#[test]
fn a_restart_takes_up_the_saved_estimate_with_the_io_counted_meanwhile() {
    let c = cfg_mapping("loop7", "vol-a");
    let vols = vec![vol("vol-a", "gp2", 100)];
    // Before the restart: anchored at 50 %, then 30 s of 2,300 I/Os a second (2,000 net).
    let mut a = State::default();
    describe(&mut a, vec![], vols.clone(), &c);
    poll(&mut a, &c, &[("vol-a", point(50.0, T0 + 60.0))]); // ahead of the clock: now
    let at0 = Instant::now();
    a.on_disk_counters(&[disk("loop7", 1_000, 0)], at0, T0 - 1.0);
    for i in 0..=30u64 {
        a.on_disk_counters(
            &[disk("loop7", 1_000 + i * 2_300, 0)],
            at0 + S(i + 1),
            T0 + i as f64,
        );
    }
    let before = volume(&a.snapshot(&c, T0), "vol-a")
        .estimate_percent
        .unwrap();
    assert!(
        approx(Some(before), 50.0 - 60_000.0 / GP2_BUCKET_CREDITS * 100.0),
        "{before}"
    );
    let saved = a.saved();
    assert_eq!(saved.len(), 1);
    assert_eq!(
        (saved[0].device.as_str(), saved[0].ops),
        ("loop7", 1_000 + 30 * 2_300)
    );

    // The agent was down for 10 s (the same load went on); the new one knows nothing yet.
    let mut b = State::default();
    describe(&mut b, vec![], vols, &c);
    b.set_restore(saved);
    let later = Instant::now();
    let started = b
        .on_disk_counters(&[disk("loop7", 1_000 + 40 * 2_300, 0)], later, T0 + 40.0)
        .expect("fed");
    assert!(
        matches!(&started[..], [Started::Restored { counted: true, .. }]),
        "{started:?}"
    );
    let v = volume(&b.snapshot(&c, T0), "vol-a").clone();
    assert_eq!(v.estimate_basis, Some(EstimateBasis::Restored));
    assert!(approx(
        v.estimate_percent,
        50.0 - 80_000.0 / GP2_BUCKET_CREDITS * 100.0
    ));
    // The drain rate is known at once: the history came along.
    assert!(v.seconds_to_empty.is_some_and(f64::is_finite));
    // A restored estimate is anchored on the next point like any other.
    let a2 = poll(&mut b, &c, &[("vol-a", point(49.0, T0 + 100.0))]);
    assert!(a2[0].first, "CloudWatch's first word after the restart");
}

#[test]
fn a_saved_estimate_of_another_device_or_an_anchored_bucket_is_not_taken_up() {
    let c = cfg_mapping("loop7", "vol-a");
    let mut a = State::default();
    describe(&mut a, vec![], vec![vol("vol-a", "gp2", 100)], &c);
    poll(&mut a, &c, &[("vol-a", point(50.0, T0 + 60.0))]);
    let at0 = Instant::now();
    a.on_disk_counters(&[disk("loop7", 0, 0)], at0, T0 - 1.0);
    a.on_disk_counters(&[disk("loop7", 0, 0)], at0 + S(1), T0);
    let mut saved = a.saved();
    saved[0].device = "loop9".into();
    let mut b = State::default();
    describe(&mut b, vec![], vec![vol("vol-a", "gp2", 100)], &c);
    b.set_restore(saved);
    let started = b.on_disk_counters(&[disk("loop7", 5, 0)], Instant::now(), T0 + 5.0);
    assert_eq!(started, Some(vec![]));
    assert_eq!(volume(&b.snapshot(&c, T0), "vol-a").estimate_percent, None);
    // Counters that went back: the gap is unknown, and the bounds say so.
    let mut saved = a.saved();
    saved[0].ops = 1_000_000;
    let mut d = State::default();
    describe(&mut d, vec![], vec![vol("vol-a", "gp2", 100)], &c);
    d.set_restore(saved);
    let started = d
        .on_disk_counters(&[disk("loop7", 5, 0)], Instant::now(), T0 + 10.0)
        .unwrap();
    assert!(matches!(
        &started[..],
        [Started::Restored { counted: false, .. }]
    ));
    let v = volume(&d.snapshot(&c, T0), "vol-a").clone();
    assert!(approx(v.estimate_percent, 50.0));
    assert!(v.estimate_low_percent.unwrap() < 50.0 - 0.4);
}
