//! When each call is due on the periodic driver: a describe at once when a sampler (re)starts,
//! a poll at once only when DescribeVolumes changed the volumes, and whether the model has a
//! volume to follow (the host sampler's publishes wake the driver only then).

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
    assert_eq!(s.poll_schedule(&none, &c), None, "nothing described yet");

    let vols = vec![vol("vol-a", "gp2", 100)];
    describe(&mut s, vec![], vols.clone(), &c);
    let first = s.poll_plan(&c);
    assert_eq!(
        s.poll_schedule(&first, &c),
        Some(Duration::ZERO),
        "the first volumes"
    );
    s.on_poll(&first, Ok(BTreeMap::new()), T0).expect("polled");
    assert_eq!(s.poll_schedule(&s.poll_plan(&c), &c), Some(S(300)));

    // The double poll of round one: every describe woke the poll. An unchanged one wakes nothing.
    describe(&mut s, vec![], vols.clone(), &c);
    assert_eq!(s.poll_schedule(&s.poll_plan(&c), &c), Some(S(300)));

    // A new volume: asked at once, and once.
    let mut more = vols.clone();
    more.push(vol("vol-b", "st1", 500));
    describe(&mut s, vec![], more.clone(), &c);
    let second = s.poll_plan(&c);
    assert_eq!(second.volumes, ["vol-a", "vol-b"]);
    assert_eq!(s.poll_schedule(&second, &c), Some(Duration::ZERO));
    // A poll planned before the change that ends after it does not count as asking anew.
    s.on_poll(&first, Ok(BTreeMap::new()), T0).expect("polled");
    assert_eq!(s.poll_schedule(&second, &c), Some(Duration::ZERO));
    s.on_poll(&second, Ok(BTreeMap::new()), T0).expect("polled");
    assert_eq!(s.poll_schedule(&second, &c), Some(S(300)));

    // While polls fail, a change waits out the backoff: the service asked us to slow down.
    assert!(s.on_poll(&second, Err(failure(true)), T0).is_err());
    describe(&mut s, vec![], vols, &c);
    assert_eq!(s.poll_schedule(&s.poll_plan(&c), &c), Some(S(10)));
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
    assert_eq!(s.poll_schedule(&plan, &c), None);
}

#[test]
fn the_model_follows_the_host_only_with_a_bucket_on_a_known_device() {
    let mut s = State::default();
    let unmapped = cfg();
    describe(&mut s, vec![], vec![vol("vol-a", "gp2", 100)], &unmapped);
    assert!(!s.follows_host(), "a bucket, but no device for it");
    let mapped = cfg_mapping("loop7", "vol-a");
    describe(&mut s, vec![], vec![vol("vol-a", "gp2", 100)], &mapped);
    assert!(s.follows_host());
    describe(&mut s, vec![], vec![vol("vol-a", "gp3", 100)], &mapped);
    assert!(!s.follows_host(), "gp3 does not burst: no bucket");
}
