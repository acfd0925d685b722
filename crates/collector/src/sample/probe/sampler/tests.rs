//! The sampler alone, tick by tick: the timeout, failure and rest bookkeeping driven with
//! what the driver would hand it, no threads and no clock.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::super::attempt::Outcome;
use super::super::tests::failures;
use super::super::writer::{Attempt, Hooks, Writers};
use super::super::{ProbeConfig, ProbeSnapshot};
use super::ProbeSampler;
use crate::error::ErrorKind;
use crate::sample::driver::Sampler;
use crate::sample::status::SourceStatus;

/// A sampler with one probe, and the status the driver would keep for it.
struct Ticks {
    s: ProbeSampler,
    cfg: Vec<ProbeConfig>,
    status: SourceStatus,
    dir: PathBuf,
}

impl Ticks {
    fn new(timeout_ms: u64, interval_ms: u64) -> Ticks {
        let dir = PathBuf::from("/nonexistent/probe-ticks");
        let cfg = vec![ProbeConfig {
            path: dir.clone(),
            size: 4096,
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_millis(timeout_ms),
        }];
        let config = Arc::new(ArcSwap::from_pointee(cfg.clone()));
        let mut s = ProbeSampler::new(config, Arc::new(Writers::default()), Hooks::default());
        let specs = s.sources(&cfg);
        let mut status = SourceStatus::new(specs[0].name.clone());
        status.timeout = Duration::from_millis(timeout_ms);
        Ticks {
            s,
            cfg,
            status,
            dir,
        }
    }

    fn publish(&mut self, now: Instant) -> ProbeSnapshot {
        self.s
            .publish(std::slice::from_ref(&self.status), now, &self.cfg)
            .remove(0)
    }

    fn apply(&mut self, at: Instant, outcome: Outcome, took_ms: u64) {
        self.status.in_flight_since = None;
        self.status.last_success = Some(at); // what the driver does for any completed read
        let a = Attempt {
            outcome,
            took: Duration::from_millis(took_ms),
        };
        self.s
            .apply(&self.dir, at, Some(a), &mut self.status, &self.cfg);
    }
}

#[test]
fn a_timeout_is_counted_once_whether_a_publish_saw_it_or_not() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let mut k = Ticks::new(100, 60_000);
    // Seen in flight past its timeout: counted then, not again when it returns.
    k.status.in_flight_since = Some(t0);
    assert_eq!(failures(&k.publish(t0 + ms(50)), "timeout"), 0);
    assert_eq!(failures(&k.publish(t0 + ms(150)), "timeout"), 1);
    assert_eq!(failures(&k.publish(t0 + ms(900)), "timeout"), 1);
    k.apply(t0 + ms(1000), Outcome::Wrote, 1000);
    let s = k.publish(t0 + ms(1000));
    assert_eq!((failures(&s, "timeout"), s.count), (1, 1));
    // A slow write no publish saw in flight: counted when it returns.
    k.apply(t0 + ms(2000), Outcome::Wrote, 300);
    assert_eq!(failures(&k.publish(t0 + ms(2000)), "timeout"), 2);
    // Seen in flight but not yet past its timeout, then slow: counted once on return.
    k.status.in_flight_since = Some(t0 + ms(3000));
    assert_eq!(failures(&k.publish(t0 + ms(3050)), "timeout"), 2);
    k.apply(t0 + ms(3200), Outcome::Wrote, 200);
    assert_eq!(failures(&k.publish(t0 + ms(3200)), "timeout"), 3);
    // A fast write counts nothing.
    k.apply(t0 + ms(4000), Outcome::Wrote, 5);
    let s = k.publish(t0 + ms(4000));
    assert_eq!((failures(&s, "timeout"), s.count), (3, 4));
}

#[test]
fn a_failed_write_is_an_error_of_the_source_and_does_not_refresh_its_age() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let mut k = Ticks::new(5000, 1000);
    k.apply(t0, Outcome::Wrote, 5);
    assert_eq!(k.status.last_success, Some(t0));
    k.apply(t0 + ms(1000), Outcome::WriteFailed(libc::EIO), 5);
    k.apply(t0 + ms(2000), Outcome::OpenFailed(libc::EACCES), 1);
    assert_eq!(k.status.last_success, Some(t0), "the age keeps growing");
    assert_eq!(k.status.errors.get(ErrorKind::Io), 1);
    assert_eq!(k.status.errors.get(ErrorKind::Permission), 1);
    let s = k.publish(t0 + ms(2000));
    assert_eq!((failures(&s, "eio"), failures(&s, "permission")), (1, 1));
    assert_eq!(
        s.count, 2,
        "the failed write was a write; the failed open was not"
    );
    k.apply(t0 + ms(3000), Outcome::Wrote, 5);
    assert_eq!(k.status.last_success, Some(t0 + ms(3000)));
}

#[test]
fn a_write_that_overran_its_interval_is_followed_by_a_full_interval_of_rest() {
    let t0 = Instant::now();
    let s = Duration::from_secs;
    let mut k = Ticks::new(5000, 30_000);
    assert!(
        k.s.schedule(&k.dir, &k.cfg, t0).is_some(),
        "first write at once"
    );
    let sch = k.s.schedule(&k.dir, &k.cfg, t0).unwrap();
    assert_eq!(
        (sch.every, sch.timeout),
        (s(30), Duration::from_millis(5000))
    );
    // Took 40 s of a 30 s interval: no write for the next 30 s.
    k.apply(t0 + s(40), Outcome::Wrote, 40_000);
    assert!(k.s.schedule(&k.dir, &k.cfg, t0 + s(41)).is_none());
    assert!(k.s.schedule(&k.dir, &k.cfg, t0 + s(69)).is_none());
    assert!(k.s.schedule(&k.dir, &k.cfg, t0 + s(70)).is_some());
    // A write within its slot: the driver's fixed rate applies.
    k.apply(t0 + s(71), Outcome::Wrote, 1000);
    assert!(k.s.schedule(&k.dir, &k.cfg, t0 + s(71)).is_some());
    // Not in the config: off.
    assert!(k
        .s
        .schedule(&PathBuf::from("/elsewhere"), &k.cfg, t0)
        .is_none());
}

#[test]
fn cadence_follows_the_fastest_probe_within_bounds() {
    let k = Ticks::new(5000, 30_000);
    assert_eq!(k.s.tick(&k.cfg), Duration::from_secs(1));
    assert_eq!(k.s.wait(&k.cfg), Duration::from_millis(100));
    let fast = Ticks::new(50, 20);
    assert_eq!(fast.s.tick(&fast.cfg), Duration::from_millis(20));
    assert_eq!(fast.s.wait(&fast.cfg), Duration::from_millis(20));
    let tiny = Ticks::new(1, 1);
    assert_eq!(tiny.s.tick(&tiny.cfg), Duration::from_millis(10));
    assert_eq!(k.s.tick(&Vec::new()), Duration::from_secs(1));
}
