//! Kernel stacks of threads in D (issue 14, item 6), for real: the D-state rig's writers wait
//! in `__iomap_dio_rw` for a throttled O_DIRECT write, and their `/proc/<pid>/task/<tid>/stack`
//! must say so, read by the walker within its budget and carried by the thread sampler; and
//! without CAP_SYS_ADMIN (dropped from one thread's effective set: capabilities are per
//! thread) the stacks are missing, the failure counted once per walk and its reason kept.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use stallwatch_collector::error::ErrorKind;
use stallwatch_collector::proc::tasks::{Walk, Walker};
use stallwatch_collector::sample::threads::{ThreadSampler, ThreadsConfig};
use stallwatch_collector::sample::{HostSnapshot, ThreadSnapshot};
use stallwatch_collector::Roots;

use crate::dstate_rig::DStateRig;
use crate::harness::require_root;

/// The frame every writer waits in (its wchan, and a line of its stack).
const FRAME: &str = "iomap_dio_rw";

/// Walks until `ok` holds for a walk (the writers move between D and R), at most 10 s.
fn walk_until(walker: &mut Walker, what: &str, ok: impl Fn(&Walk) -> bool) -> Walk {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let w = walker.walk(&Roots::default()).expect("walk /proc");
        if ok(&w) {
            return w;
        }
        assert!(Instant::now() < deadline, "no walk with {what}: {:?}", w.d);
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn writers_in_d(w: &Walk, pid: u32) -> usize {
    w.d.iter().filter(|d| d.pid == pid).count()
}

/// Drops CAP_SYS_ADMIN from the calling thread's effective set (capset(2), version 3).
fn drop_sys_admin_in_this_thread() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const V3: u32 = 0x2008_0522;
    const CAP_SYS_ADMIN: u32 = 21;
    let mut h = Header {
        version: V3,
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    // SAFETY: capget/capset with a v3 header and two data structs, as the ABI defines them.
    unsafe {
        assert_eq!(libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()), 0);
        d[0].effective &= !(1 << CAP_SYS_ADMIN);
        assert_eq!(libc::syscall(libc::SYS_capset, &mut h, d.as_ptr()), 0);
    }
}

#[test]
fn d_threads_have_their_kernel_stacks_or_a_reason_why_not() {
    if !require_root("d_threads_have_their_kernel_stacks_or_a_reason_why_not") {
        return;
    }
    let rig = DStateRig::start(3, 3);
    let pid = rig.pid();

    // The walker, with CAP_SYS_ADMIN: every writer in D has a stack naming its frame (a
    // budget above the D threads other tests may hold).
    let mut walker = Walker::new();
    walker.set_stacks(1000);
    let w = walk_until(&mut walker, "2 writers in D with stacks", |w| {
        writers_in_d(w, pid) >= 2
    });
    assert_eq!(w.stack_error, None, "{:?}", w.errors);
    for d in w.d.iter().filter(|d| d.pid == pid) {
        let s = d.stack.as_deref().expect("a stack for every writer in D");
        assert!(s.contains(FRAME), "tid {}: {s}", d.tid);
        assert!(s.lines().all(|l| l.starts_with("[<")), "{s}");
    }
    // A budget of one: one stack a walk.
    walker.set_stacks(1);
    let w = walk_until(&mut walker, "2 writers in D", |w| writers_in_d(w, pid) >= 2);
    assert_eq!(w.stacks_tried, 1);
    assert!(w.d.iter().filter(|d| d.stack.is_some()).count() <= 1);

    // Without CAP_SYS_ADMIN: no stacks, tried once a walk however many threads are in D, and
    // not a source error (the shipped units grant no CAP_SYS_ADMIN: stacks_missing says why).
    let w = std::thread::spawn(move || {
        drop_sys_admin_in_this_thread();
        let mut walker = Walker::new();
        walker.set_stacks(64);
        walk_until(&mut walker, "2 writers in D", |w| writers_in_d(w, pid) >= 2)
    })
    .join()
    .unwrap();
    assert!(w.d.iter().all(|d| d.stack.is_none()));
    assert_eq!(w.stack_error, Some(ErrorKind::Permission));
    assert_eq!(w.errors.get(ErrorKind::Permission), 0, "{:?}", w.errors);
    assert!(
        w.d.iter().any(|d| d.pid == pid && d.wchan.is_some()),
        "wchan needs no CAP_SYS_ADMIN"
    );

    // The thread sampler carries them (threads.stacks defaults to on) and says nothing is
    // missing; with threads.stacks = false it says why they are.
    for stacks in [true, false] {
        let host = Arc::new(ArcSwap::from_pointee(HostSnapshot {
            taken: Some(std::time::SystemTime::now()),
            ..HostSnapshot::default()
        }));
        // A budget above any number of D threads other tests on the machine may hold, so
        // that ours are never past it (the budget itself is tested on the walker above).
        let cfg = ThreadsConfig {
            stacks,
            stacks_max: 1000,
            ..ThreadsConfig::default()
        };
        assert!(ThreadsConfig::default().stacks && ThreadsConfig::default().stacks_max == 64);
        let out = Arc::new(ArcSwap::from_pointee(ThreadSnapshot::default()));
        let sampler = ThreadSampler::spawn(
            Arc::new(Roots::default()),
            Arc::new(ArcSwap::from_pointee(cfg)),
            host,
            Arc::clone(&out),
            None,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let snap = loop {
            let s = out.load_full();
            if s.stuck.iter().filter(|d| d.pid == pid).count() >= 2 {
                break s;
            }
            assert!(Instant::now() < deadline, "the sampler saw no writers in D");
            std::thread::sleep(Duration::from_millis(50));
        };
        sampler.stop();
        let mine: Vec<_> = snap.stuck.iter().filter(|d| d.pid == pid).collect();
        if stacks {
            assert!(mine
                .iter()
                .all(|d| d.stack.as_deref().is_some_and(|s| s.contains(FRAME))));
            assert_eq!(snap.stacks_missing, None);
        } else {
            assert!(mine.iter().all(|d| d.stack.is_none()));
            assert_eq!(
                snap.stacks_missing.as_deref(),
                Some("off (threads.stacks = false)")
            );
        }
    }
}
