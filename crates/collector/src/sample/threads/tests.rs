use super::*;
use crate::proc::tasks::RawD;

#[test]
fn a_suspected_stall_holds_the_state_walk_back() {
    let five = Duration::from_secs(300);
    assert_eq!(state_walk_every(five, false), five);
    assert_eq!(state_walk_every(five, true), five * STALL_WALK_DEFER);
    assert_eq!(state_walk_every(Duration::MAX, true), Duration::MAX);
}

#[test]
fn why_stacks_are_missing() {
    let d = RawD {
        pid: 1,
        tid: 1,
        starttime: 0,
        comm: "dd".into(),
        kernel_thread: false,
        wchan: None,
        cgroup: None,
        container: None,
        stack: None,
    };
    let on = ThreadsConfig::default();
    let mut w = Walk::default();
    assert_eq!(
        stacks_missing(&w, &on),
        None,
        "no thread in D: nothing missing"
    );
    w.d = vec![d.clone(), d];
    w.stacks_tried = 2;
    assert_eq!(stacks_missing(&w, &on), None);
    let off = ThreadsConfig {
        stacks: false,
        ..ThreadsConfig::default()
    };
    assert_eq!(
        stacks_missing(&w, &off).as_deref(),
        Some("off (threads.stacks = false)")
    );
    w.stacks_tried = 1;
    assert_eq!(
        stacks_missing(&w, &on).as_deref(),
        Some("read for 1 of 2 threads in D (threads.stacks_max)")
    );
    w.stack_error = Some(ErrorKind::Permission);
    assert_eq!(
        stacks_missing(&w, &on).as_deref(),
        Some("/proc/<pid>/task/<tid>/stack not readable (needs CAP_SYS_ADMIN)")
    );
}
