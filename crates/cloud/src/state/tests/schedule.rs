//! When each call is due on the periodic driver: a describe at once when a sampler (re)starts,
//! a poll at once only when there is a new series to ask, and whether the model has a volume
//! to follow (the host sampler's publishes wake the driver only then).

use super::*;

#[test]
fn the_first_describe_or_scan_is_due_at_once_then_every_interval() {
    let c = cfg();
    let mut s = State::default();
    assert_eq!(
        s.describe_schedule(&c),
        Duration::ZERO,
        "a new state knows no disks"
    );
    s.on_describe(None, Err(failure(false)), &c, T0);
    assert_eq!(
        s.describe_schedule(&c),
        S(10),
        "a failure is an outcome: backoff"
    );
    s.on_describe(None, Ok(vec![]), &c, T0);
    assert_eq!(s.describe_schedule(&c), S(300));

    // Cloud features off: the scan alone, mapping the overrides onto what it found.
    let c = cfg_mapping("nvme1n1", "vol-x");
    let mut s = State::default();
    assert_eq!(s.describe_schedule(&c), Duration::ZERO);
    s.on_scan(Some(vec![dev("nvme1n1", None)]), &c);
    assert_eq!(s.describe_schedule(&c), S(300));
    s.on_scan(None, &c);
    let snap = s.snapshot(&c, T0);
    assert_eq!(
        snap.disks,
        vec![dev("nvme1n1", None)],
        "a failed scan keeps the disks"
    );
    assert!(!snap.enabled, "no instance: cloud features off");
    assert!(snap.volumes.is_empty());
}

#[test]
fn a_poll_is_due_at_once_after_the_volumes_changed_and_not_after_an_unchanged_describe() {
    let c = cfg();
    let mut s = State::default();
    on_instance(&mut s, "m5.large");
    let none = s.poll_plan(&c);
    assert_eq!(
        s.poll_schedule(&none, &c, T0),
        None,
        "nothing described yet"
    );

    let vols = vec![vol("vol-a", "gp2", 100)];
    describe(&mut s, vec![], vols.clone(), &c);
    let first = s.poll_plan(&c);
    assert_eq!(
        s.poll_schedule(&first, &c, T0),
        Some(Duration::ZERO),
        "the first volumes"
    );
    s.on_poll(&first, Ok(Points::new()), T0).expect("polled");
    assert_eq!(s.poll_schedule(&s.poll_plan(&c), &c, T0), Some(S(300)));

    // The double poll of round one: every describe woke the poll. An unchanged one wakes nothing.
    describe(&mut s, vec![], vols.clone(), &c);
    assert_eq!(s.poll_schedule(&s.poll_plan(&c), &c, T0), Some(S(300)));

    // A new volume: asked at once, and once.
    let mut more = vols.clone();
    more.push(vol("vol-b", "st1", 500));
    describe(&mut s, vec![], more.clone(), &c);
    let second = s.poll_plan(&c);
    assert_eq!(second.volumes(), ["vol-a", "vol-b"]);
    assert_eq!(s.poll_schedule(&second, &c, T0), Some(Duration::ZERO));
    // A poll planned before the change that ends after it does not count as asking anew.
    s.on_poll(&first, Ok(Points::new()), T0).expect("polled");
    assert_eq!(s.poll_schedule(&second, &c, T0), Some(Duration::ZERO));
    s.on_poll(&second, Ok(Points::new()), T0).expect("polled");
    assert_eq!(s.poll_schedule(&second, &c, T0), Some(S(300)));
    // A change the poll does not ask about (a gp2 resized below 1 TiB) wakes nothing either.
    describe(
        &mut s,
        vec![],
        vec![vol("vol-a", "gp2", 200), vol("vol-b", "st1", 500)],
        &c,
    );
    assert_eq!(s.poll_schedule(&s.poll_plan(&c), &c, T0), Some(S(300)));

    // While polls fail, a change waits out the backoff: the service asked us to slow down.
    assert!(s.on_poll(&second, Err(failure(true)), T0).is_err());
    describe(&mut s, vec![], vols, &c);
    assert_eq!(s.poll_schedule(&s.poll_plan(&c), &c, T0), Some(S(10)));
}

/// The replay's duplicate GetMetricData: a DescribeVolumes that lands while a poll is out and
/// lists the same volumes in another order (AWS promises no order) counted as a change, and the
/// poll ran again as soon as it came back.
#[test]
fn a_describe_that_coincides_with_a_poll_causes_no_second_poll() {
    let c = cfg();
    let mut s = State::default();
    on_instance(&mut s, "m5.large");
    let vols = vec![vol("vol-a", "gp2", 100), vol("vol-b", "st1", 500)];
    describe(&mut s, vec![], vols.clone(), &c);
    // The poll is planned and goes out; the describe of the same tick answers first.
    let plan = s.poll_plan(&c);
    assert_eq!(s.poll_schedule(&plan, &c, T0), Some(Duration::ZERO));
    let reordered: Vec<Volume> = vols.iter().rev().cloned().collect();
    assert_eq!(
        s.on_describe(Some(vec![]), Ok(reordered), &c, T0),
        Described::Same,
        "the same volumes in another order"
    );
    s.on_poll(&plan, Ok(Points::new()), T0).expect("polled");
    // Both schedules the driver may ask next: neither wants a poll now.
    assert_eq!(s.poll_schedule(&plan, &c, T0), Some(S(300)));
    assert_eq!(s.poll_schedule(&s.poll_plan(&c), &c, T0), Some(S(300)));
}

#[test]
fn nothing_to_ask_is_no_poll() {
    let c = CloudConfig {
        instance_balances: false,
        ..cfg()
    };
    let mut s = State::default();
    describe(&mut s, vec![], vec![vol("vol-b", "gp3", 100)], &c);
    let plan = s.poll_plan(&c);
    assert!(plan.is_empty());
    assert_eq!(s.poll_schedule(&plan, &c, T0), None);
}

#[test]
fn the_model_follows_the_host_while_an_attached_volume_has_a_known_device() {
    let mut s = State::default();
    let unmapped = cfg();
    describe(&mut s, vec![], vec![vol("vol-a", "gp2", 100)], &unmapped);
    assert!(!s.follows_host(), "a bucket, but no device for it");
    let mapped = cfg_mapping("loop7", "vol-a");
    describe(&mut s, vec![], vec![vol("vol-a", "gp2", 100)], &mapped);
    assert!(s.follows_host());
    describe(&mut s, vec![], vec![vol("vol-a", "gp3", 100)], &mapped);
    assert!(s.follows_host(), "gp3 has no bucket but has headroom");
    describe(&mut s, vec![], vec![], &mapped);
    assert!(!s.follows_host(), "an override of a volume not attached");
}
