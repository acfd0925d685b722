//! The probe for real: real files, real forked writer processes. A hung write is stood in for
//! by the writer's test hold (it waits, after opening its file, until a gate file exists); the
//! hung *disk* (a write in D) is in the agent's end-to-end tests (`probe_hung`). The sampler's
//! bookkeeping alone is tested in `sampler/tests.rs`, the config check in `validate.rs`.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use super::attempt::{fill, reason, Outcome};
use super::writer::Hooks;
use super::*;

pub(super) fn cfg(path: &Path, interval_ms: u64) -> ProbeConfig {
    ProbeConfig {
        path: path.to_path_buf(),
        size: 64 * 1024,
        interval: Duration::from_millis(interval_ms),
        timeout: Duration::from_secs(5),
    }
}

pub(super) fn failures(s: &ProbeSnapshot, reason: &str) -> u64 {
    s.failures
        .iter()
        .find(|(r, _)| *r == reason)
        .map_or(0, |&(_, n)| n)
}

/// Polls `f` every 10 ms until it holds, failing the test after `secs`.
pub(super) fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// Probes whose writes wait for `gate` to exist after opening their file.
fn held(configs: Vec<ProbeConfig>, gate: &Path) -> Probes {
    let hooks = Hooks {
        hold: Some(gate.to_path_buf()),
    };
    Probes::spawn_with(configs, hooks).unwrap()
}

/// Our children that are probe writer processes: `(pid, state)`.
fn writer_processes() -> Vec<(u32, char)> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if head.ends_with("(sw-probe-write") && fields.get(1) == Some(&me.as_str()) {
            let pid = e.file_name().to_string_lossy().parse().unwrap();
            out.push((pid, fields[0].chars().next().unwrap()));
        }
    }
    out
}

#[test]
fn probes_can_be_shared_with_scrape_handlers() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Probes>();
}

#[test]
fn defaults() {
    let c = ProbeConfig::default();
    assert_eq!(c.size, 1 << 20);
    assert_eq!(c.interval, Duration::from_secs(30));
    assert_eq!(c.timeout, Duration::from_secs(5));
    assert!(c.path.as_os_str().is_empty());
}

#[test]
fn errno_and_outcome_to_reason() {
    assert_eq!(reason(libc::ENOSPC), "enospc");
    assert_eq!(reason(libc::EDQUOT), "enospc");
    assert_eq!(reason(libc::EIO), "eio");
    assert_eq!(reason(libc::EACCES), "permission");
    assert_eq!(reason(libc::EPERM), "permission");
    assert_eq!(reason(libc::EROFS), "readonly");
    assert_eq!(reason(libc::ENOENT), "notfound");
    assert_eq!(reason(libc::ELOOP), "other");
    assert_eq!(reason(libc::EINVAL), "other");
    assert_eq!(Outcome::Wrote.reason(), None);
    assert_eq!(Outcome::OpenFailed(libc::EROFS).reason(), Some("readonly"));
    assert_eq!(Outcome::WriteFailed(libc::ENOSPC).reason(), Some("enospc"));
    for o in [
        Outcome::NotOurs,
        Outcome::NoWriter(libc::EAGAIN),
        Outcome::WriterDied(9),
    ] {
        assert_eq!(o.reason(), Some("other"), "{o:?}");
        assert!(!o.wrote(), "{o:?} is not a write");
    }
    assert!(Outcome::Wrote.wrote() && Outcome::WriteFailed(libc::EIO).wrote());
    assert!(
        !Outcome::OpenFailed(libc::ENOENT).wrote(),
        "a failed open is not a write"
    );
    assert!(Outcome::WriterDied(9).describe().contains("signal 9"));
    for r in REASONS.iter().skip(1) {
        assert!(
            [
                libc::ENOSPC,
                libc::EIO,
                libc::EACCES,
                libc::EROFS,
                libc::ENOENT,
                libc::ELOOP
            ]
            .iter()
            .any(|&e| reason(e) == *r),
            "{r} is reachable"
        );
    }
}

#[test]
fn probe_writes_a_fixed_size_file_in_a_child_process_and_removes_it_on_stop() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(FILE_NAME);
    // A leftover from a run with a bigger size is trimmed, not kept.
    std::fs::write(&file, vec![7u8; 200 * 1024]).unwrap();
    let c = cfg(dir.path(), 50);
    let p = Probes::spawn(vec![c.clone()]).unwrap();
    wait_until(10, "3 writes", || {
        p.snapshot().first().is_some_and(|s| s.count >= 3)
    });
    for _ in 0..5 {
        assert_eq!(std::fs::metadata(&file).unwrap().len(), c.size);
        thread::sleep(Duration::from_millis(30));
    }
    let s = &p.snapshot()[0];
    assert_eq!(s.path, dir.path().to_string_lossy());
    assert!(s.sum > 0.0);
    assert!(s.last_duration.is_some() && s.last_success.is_some());
    assert_eq!(s.buckets.len(), BUCKETS.len() + 1);
    assert_eq!(s.buckets.last().unwrap().0, f64::INFINITY);
    assert_eq!(
        s.buckets.iter().map(|(_, n)| n).sum::<u64>(),
        s.count,
        "per-bucket counts add up to the writes"
    );
    assert!(s.failures.iter().all(|&(_, n)| n == 0), "{:?}", s.failures);
    assert_eq!(
        s.failures.iter().map(|(r, _)| *r).collect::<Vec<_>>(),
        REASONS.to_vec()
    );
    // The probe is a source like every other.
    assert_eq!(s.status.name, source_name(dir.path()));
    assert_eq!(s.status.name, format!("probe:{}", dir.path().display()));
    assert!(s.status.reads >= 3 && s.status.errors.total() == 0);
    assert!(s.status.last_success.is_some());
    assert_eq!(
        s.status.timeout, c.timeout,
        "the probe's timeout is the stuck threshold"
    );
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Every writer process is reaped: at most the one of the write in flight exists.
    for _ in 0..10 {
        let procs = writer_processes();
        assert!(procs.len() <= 1, "{procs:?}");
        thread::sleep(Duration::from_millis(20));
    }
    let t = Instant::now();
    p.stop();
    assert!(t.elapsed() < Duration::from_secs(1), "stop is quick");
    assert!(!file.exists(), "probe file removed on stop");
}

#[test]
fn reconcile_keeps_unchanged_probes_and_drops_removed_ones() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let paths = |p: &Probes| -> Vec<String> { p.snapshot().into_iter().map(|s| s.path).collect() };
    let mut p = Probes::spawn(vec![cfg(a.path(), 30), cfg(b.path(), 30)]).unwrap();
    wait_until(10, "2 writes each", || {
        let s = p.snapshot();
        s.len() == 2 && s.iter().all(|s| s.count >= 2)
    });
    let before = p.snapshot()[0].count;

    // Same paths twice: rejected, nothing changes.
    let dup = vec![cfg(a.path(), 30), cfg(a.path(), 40)];
    assert!(p.reconcile(dup).is_err());
    thread::sleep(Duration::from_millis(100));
    assert_eq!(p.snapshot().len(), 2);

    let mut c_changed = cfg(c.path(), 30);
    c_changed.timeout = Duration::from_secs(9);
    p.reconcile(vec![cfg(c.path(), 30), cfg(a.path(), 30)])
        .unwrap();
    let want = vec![
        c.path().to_string_lossy().into_owned(),
        a.path().to_string_lossy().into_owned(),
    ];
    wait_until(10, "the new set, in config order", || paths(&p) == want);
    assert!(
        p.snapshot()[1].count >= before,
        "unchanged probe kept its counters"
    );
    wait_until(10, "removed probe's file gone", || {
        !b.path().join(FILE_NAME).exists()
    });
    assert_eq!(std::fs::read_dir(b.path()).unwrap().count(), 0);

    // A changed setting on an existing path updates it in place: counters kept, the new
    // timeout in force.
    let kept = p.snapshot()[1].count;
    p.reconcile(vec![c_changed, cfg(a.path(), 25)]).unwrap();
    wait_until(10, "new timeout in force", || {
        p.snapshot()[0].status.timeout == Duration::from_secs(9)
    });
    assert!(p.snapshot()[1].count >= kept);
    wait_until(10, "new probe writes", || p.snapshot()[0].count >= 1);
    p.stop();
    assert!(!a.path().join(FILE_NAME).exists());
    assert!(!c.path().join(FILE_NAME).exists());
}

#[test]
fn directory_removed_while_running_counts_notfound() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("vanishing");
    std::fs::create_dir(&sub).unwrap();
    let p = Probes::spawn(vec![cfg(&sub, 20)]).unwrap();
    wait_until(10, "first write", || {
        p.snapshot().first().is_some_and(|s| s.count >= 1)
    });
    std::fs::remove_dir_all(&sub).unwrap();
    wait_until(10, "notfound failures", || {
        failures(&p.snapshot()[0], "notfound") >= 2
    });
    // It recovers when the directory comes back.
    std::fs::create_dir(&sub).unwrap();
    let n = p.snapshot()[0].count;
    wait_until(10, "writes again", || p.snapshot()[0].count > n);
    p.stop();
    assert!(!sub.join(FILE_NAME).exists());
}

#[test]
fn symlink_fifo_or_hard_link_under_our_name_is_never_written_through() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    std::os::unix::fs::symlink(&victim, dir.path().join(FILE_NAME)).unwrap();
    let fifo_dir = tempfile::tempdir().unwrap();
    let fifo =
        std::ffi::CString::new(fifo_dir.path().join(FILE_NAME).as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let link_dir = tempfile::tempdir().unwrap();
    let linked = link_dir.path().join("linked");
    std::fs::write(&linked, b"also precious").unwrap();
    std::fs::hard_link(&linked, link_dir.path().join(FILE_NAME)).unwrap();

    let p = Probes::spawn(vec![
        cfg(dir.path(), 20),
        cfg(fifo_dir.path(), 20),
        cfg(link_dir.path(), 20),
    ])
    .unwrap();
    wait_until(10, "other failures on all three", || {
        let s = p.snapshot();
        s.len() == 3 && s.iter().all(|s| failures(s, "other") >= 1)
    });
    assert!(p.snapshot().iter().all(|s| s.count == 0), "nothing written");
    p.stop();
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert_eq!(std::fs::read(&linked).unwrap(), b"also precious");
    assert!(
        dir.path().join(FILE_NAME).symlink_metadata().is_ok(),
        "not ours: left alone"
    );
    assert!(
        fifo_dir.path().join(FILE_NAME).exists(),
        "not ours: left alone"
    );
    assert!(
        link_dir.path().join(FILE_NAME).exists(),
        "not ours: left alone"
    );
}

#[test]
fn hung_write_is_stuck_counts_one_timeout_while_in_flight_and_is_observed_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let gate_dir = tempfile::tempdir().unwrap();
    let gate = gate_dir.path().join("go");
    let c = ProbeConfig {
        path: dir.path().to_path_buf(),
        size: 4096,
        interval: Duration::from_secs(3600), // exactly one write
        timeout: Duration::from_millis(100),
    };
    let p = held(vec![c], &gate);
    wait_until(5, "write started", || {
        p.snapshot()
            .first()
            .is_some_and(|s| s.in_flight_since.is_some())
    });
    let started = p.snapshot()[0].in_flight_since.unwrap();
    wait_until(5, "timeout counted while in flight", || {
        failures(&p.snapshot()[0], "timeout") == 1
    });
    for _ in 0..3 {
        let s = &p.snapshot()[0];
        assert_eq!(s.in_flight_since, Some(started), "still hung");
        assert!(
            s.status.stuck(Instant::now()),
            "the probe's source is stuck"
        );
        assert_eq!(failures(s, "timeout"), 1, "counted once, while in flight");
        assert_eq!(s.count, 0);
        thread::sleep(Duration::from_millis(120));
    }
    // The write is in a process of its own: the test's process holds no thread in it.
    let procs = writer_processes();
    assert_eq!(procs.len(), 1, "{procs:?}");
    std::fs::write(&gate, b"").unwrap();
    wait_until(5, "write returned", || p.snapshot()[0].count == 1);
    let s = &p.snapshot()[0];
    assert!(s.in_flight_since.is_none() && !s.status.stuck(Instant::now()));
    assert_eq!(failures(s, "timeout"), 1, "not counted again on return");
    assert!(s.sum >= 0.3, "the held time is the write's: {}", s.sum);
    let le = |b: f64| s.buckets.iter().find(|(le, _)| *le == b).unwrap().1;
    assert_eq!(le(0.25), 0);
    assert_eq!(
        s.buckets.iter().map(|(_, n)| n).sum::<u64>(),
        1,
        "per-bucket counts, not cumulative"
    );
    assert!(s.last_success.is_some());
    p.stop();
}

#[test]
fn stop_does_not_wait_for_a_stuck_writer_which_cleans_up_when_its_write_returns() {
    let dir = tempfile::tempdir().unwrap();
    let gate_dir = tempfile::tempdir().unwrap();
    let gate = gate_dir.path().join("go");
    // A listening socket of "the agent": a stuck writer must not hold it (a restarted agent
    // could not bind its port).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let p = held(vec![cfg(dir.path(), 20)], &gate);
    wait_until(5, "write stuck", || {
        p.snapshot()
            .first()
            .is_some_and(|s| s.in_flight_since.is_some())
    });
    let file = dir.path().join(FILE_NAME);
    wait_until(5, "file opened before the write", || file.exists());
    let procs = writer_processes();
    assert_eq!(procs.len(), 1, "{procs:?}");
    let pid = procs[0].0;
    let fds: Vec<PathBuf> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .collect();
    assert_eq!(
        fds.len(),
        2,
        "the report pipe and the probe file only: {fds:?}"
    );
    assert!(fds.iter().any(|f| f == &file), "{fds:?}");
    assert!(
        fds.iter()
            .all(|f| !f.to_string_lossy().starts_with("socket:")),
        "{fds:?}"
    );
    let t = Instant::now();
    p.stop();
    assert!(
        t.elapsed() < STOP_GRACE + Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    // The write returns later; the left-behind writer cleans up after itself.
    std::fs::write(&gate, b"").unwrap();
    wait_until(5, "file removed by the left-behind writer", || {
        !file.exists()
    });
    wait_until(5, "writer process gone", || writer_processes().is_empty());
    drop(listener);
}

#[test]
fn a_writer_killed_mid_write_is_a_failure_and_the_next_write_works() {
    let dir = tempfile::tempdir().unwrap();
    let gate_dir = tempfile::tempdir().unwrap();
    let gate = gate_dir.path().join("go");
    let p = held(vec![cfg(dir.path(), 20)], &gate);
    // The held writer: the same single writer process in two scans 50 ms apart (a short-lived
    // child, such as the start-up cleanup's, can be seen once and be gone by the next scan).
    let mut pid = 0;
    wait_until(5, "write stuck", || {
        let first = writer_processes();
        std::thread::sleep(Duration::from_millis(50));
        let second = writer_processes();
        match (first.as_slice(), second.as_slice()) {
            ([(a, _)], [(b, _)]) if a == b => {
                pid = *a;
                true
            }
            _ => false,
        }
    });
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    wait_until(5, "counted as other", || {
        failures(&p.snapshot()[0], "other") == 1
    });
    std::fs::write(&gate, b"").unwrap();
    wait_until(5, "the next write", || p.snapshot()[0].count >= 1);
    p.stop();
    assert!(!dir.path().join(FILE_NAME).exists());
}

#[test]
fn invalid_configs_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path(), 20);
    c.size = 0;
    assert!(Probes::spawn(vec![c]).is_err());
    let mut c = cfg(dir.path(), 20);
    c.interval = Duration::ZERO;
    assert!(Probes::spawn(vec![c]).is_err());
    let none = Probes::spawn(Vec::new()).unwrap();
    assert!(none.snapshot().is_empty());
    assert!(none.driver.is_none(), "no thread without probes");
}

#[test]
fn fill_is_not_zero_and_changes_every_block_per_write() {
    let mut b = Vec::new();
    fill(&mut b, 10_000, 1);
    assert_eq!(b.len(), 10_000);
    assert!(b.iter().filter(|&&x| x == 0).count() < 200);
    let first = b.clone();
    fill(&mut b, 10_000, 2);
    for (x, y) in first.chunks(4096).zip(b.chunks(4096)) {
        assert_ne!(x, y);
    }
    fill(&mut b, 3, 3);
    assert_eq!(b.len(), 3);
}
