//! The rig's own tests: it makes real D-state threads, and it cleans up, even after a panic.

use super::*;

/// What must be gone once a rig is dropped.
fn assert_cleaned_up(pid: u32, backing: &Path, mnt: &Path, cgroup_dir: &Path) {
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "writer {pid} still exists"
    );
    let losetup = run(Command::new("losetup").arg("-a"));
    let backing_s = backing.to_string_lossy();
    assert!(
        !losetup.contains(&*backing_s),
        "loop device still attached to {backing_s}:\n{losetup}"
    );
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mnt_s = mnt.to_string_lossy();
    assert!(
        !mountinfo
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(&*mnt_s)),
        "{mnt_s} still mounted:\n{mountinfo}"
    );
    assert!(
        !cgroup_dir.exists(),
        "{} still exists",
        cgroup_dir.display()
    );
    assert!(!backing.exists(), "{} still exists", backing.display());
}

#[test]
fn rig_makes_real_dstate_threads_and_cleans_up() {
    if !crate::harness::require_root("rig_makes_real_dstate_threads_and_cleans_up") {
        return;
    }
    let rig = DStateRig::start(4, 3);
    let pid = rig.pid();
    let (backing, mnt, cgroup_dir) = (rig.backing_file(), rig.mount_point(), rig.cgroup_dir());
    assert!(
        rig.loop_device().starts_with("loop"),
        "{}",
        rig.loop_device()
    );
    assert!(
        rig.cgroup_path().starts_with('/') && rig.cgroup_path().contains("stallwatch-test-"),
        "{}",
        rig.cgroup_path()
    );
    let tids = rig.tids();
    assert_eq!(tids.len(), 4, "hostile-named threads: {tids:?}");
    assert!(!tids.contains(&pid), "the main thread keeps its name");

    // The threads stay in D, not just for an instant.
    for i in 0..20 {
        let d = rig.d_threads_now();
        assert!(
            d >= 3,
            "sample {i}: only {d} threads in D\n{}",
            rig.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The hostile comm survives verbatim in stat, between the first '(' and the LAST ')'.
    let tid = tids[0];
    let stat = std::fs::read(format!("/proc/{pid}/task/{tid}/stat")).unwrap();
    let open = stat.iter().position(|&b| b == b'(').unwrap();
    let close = stat.iter().rposition(|&b| b == b')').unwrap();
    assert_eq!(
        &stat[open + 1..close],
        HOSTILE_COMM,
        "stat: {:?}",
        String::from_utf8_lossy(&stat)
    );
    // ...and a parser cutting at the first ')' would be fooled into state S.
    let first_close = stat.iter().position(|&b| b == b')').unwrap();
    assert_eq!(stat[first_close + 2], b'S');

    // wchan of a thread in D names the kernel function it sleeps in.
    let mut wchan = String::new();
    for _ in 0..100 {
        if let Some(&t) = tids.iter().find(|&&t| task_state(pid, t) == Some(b'D')) {
            wchan = std::fs::read_to_string(format!("/proc/{pid}/task/{t}/wchan")).unwrap();
            if task_state(pid, t) == Some(b'D') && !wchan.is_empty() && wchan != "0" {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!wchan.is_empty() && wchan != "0", "wchan {wchan:?}");
    eprintln!("dstate_rig: wchan of a D thread: {wchan}");

    // lift() frees them: each ends its write in flight and rests (S), so none is left in D.
    rig.lift();
    let lifted = Instant::now();
    let mut in_d = rig.d_threads_now();
    while in_d > 0 && lifted.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(5));
        in_d = rig.d_threads_now();
    }
    assert_eq!(
        in_d,
        0,
        "threads stayed in D after lift\n{}",
        rig.diagnostics()
    );
    eprintln!(
        "dstate_rig: all threads out of D {} ms after lift",
        lifted.elapsed().as_millis()
    );

    let dropped = Instant::now();
    drop(rig);
    eprintln!(
        "dstate_rig: cleanup took {} ms",
        dropped.elapsed().as_millis()
    );
    assert_cleaned_up(pid, &backing, &mnt, &cgroup_dir);
}

#[test]
fn rig_cleans_up_after_a_panic() {
    if !crate::harness::require_root("rig_cleans_up_after_a_panic") {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let joined = std::thread::spawn(move || {
        let rig = DStateRig::start(2, 2);
        tx.send((
            rig.pid(),
            rig.backing_file(),
            rig.mount_point(),
            rig.cgroup_dir(),
        ))
        .unwrap();
        // Still throttled: Drop has to lift before it can kill.
        assert!(rig.d_threads_now() >= 1);
        panic!("deliberate panic while the rig's threads are in D");
    })
    .join();
    assert!(joined.is_err(), "the thread was meant to panic");
    let (pid, backing, mnt, cgroup_dir) = rx.recv().expect("the rig had started");
    assert_cleaned_up(pid, &backing, &mnt, &cgroup_dir);
}
