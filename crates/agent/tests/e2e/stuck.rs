//! A source whose read blocks forever (a FIFO nobody writes stands in for a file on a hung
//! disk: `open(2)` blocks, as a read stuck in D state would) must not block the scrape.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::{fixture, get, write, Agent};

pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}

fn mkfifo(p: &Path) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "mkfifo {}",
        p.display()
    );
}

#[test]
fn a_stuck_source_is_reported_and_the_scrape_stays_fast() {
    let dir = tempfile::tempdir().unwrap();
    let proc = dir.path().join("proc");
    copy_tree(&fixture("debian12-6.18").join("proc"), &proc);
    let cfg = dir.path().join("cfg.toml");
    write(
        &cfg,
        "[sampler]\ninterval = \"1s\"\nsource_timeout = \"500ms\"\n",
    );
    let agent = Agent::start(&[
        &format!("--path.procfs={}", proc.display()),
        &format!(
            "--path.sysfs={}",
            fixture("debian12-6.18").join("sys").display()
        ),
        &format!("--config.file={}", cfg.display()),
    ]);
    let io = "stallwatch_pressure_avg10_ratio{resource=\"io\",kind=\"some\"}";
    agent.wait_for(Duration::from_secs(10), "a good pressure/io reading", |m| {
        m.get(io).is_some()
    });

    // Swap the file for a FIFO with no writer: the next read blocks in open(2).
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    std::fs::rename(&fifo, proc.join("pressure/io")).unwrap();

    let stuck = "stallwatch_source_stuck{source=\"pressure_io\"}";
    let age = "stallwatch_snapshot_age_seconds{source=\"pressure_io\"}";
    let m1 = agent.wait_for(Duration::from_secs(10), "pressure_io reported stuck", |m| {
        m.get(stuck) == Some(1.0)
    });
    assert_eq!(
        m1.get("stallwatch_source_stuck{source=\"meminfo\"}"),
        Some(0.0)
    );
    assert!(
        m1.get(io).is_some(),
        "the stuck source keeps its last value"
    );

    // Scrapes keep answering while the read hangs. The bound is functional, not a benchmark:
    // a scrape that waited on the stuck read would never return at all.
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let t = Instant::now();
        let body = agent.scrape();
        slowest = slowest.max(t.elapsed());
        assert!(body.contains(stuck));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        slowest < Duration::from_secs(1),
        "slowest scrape took {slowest:?}"
    );
    assert_eq!(
        get(&agent.url("/healthz")),
        "ok\n",
        "the agent as a whole is healthy"
    );

    let m2 = agent.wait_for(
        Duration::from_secs(10),
        "the stuck source's age to grow",
        |m| {
            m.get(age)
                .zip(m1.get(age))
                .is_some_and(|(a2, a1)| a2 >= a1 + 2.0)
        },
    );
    assert!(
        m2.get("stallwatch_snapshot_age_seconds{source=\"meminfo\"}")
            .unwrap()
            < 3.0,
        "other sources stay fresh"
    );
    assert_eq!(m2.get(stuck), Some(1.0));

    // Release the blocked reader (open for write succeeds now that a reader waits), so the
    // worker thread finishes; the source recovers on the next good file.
    let w = std::fs::OpenOptions::new()
        .write(true)
        .open(proc.join("pressure/io"))
        .unwrap();
    drop(w);
    std::fs::remove_file(proc.join("pressure/io")).unwrap();
    std::fs::copy(
        fixture("debian12-6.18").join("proc/pressure/io"),
        proc.join("pressure/io"),
    )
    .unwrap();
    agent.wait_for(Duration::from_secs(10), "recovery", |m| {
        m.get(stuck) == Some(0.0) && m.get(age).is_some_and(|a| a < 3.0)
    });
    let m3 = agent.wait_for(Duration::from_secs(5), "parse error counted", |m| {
        m.get("stallwatch_source_errors_total{source=\"pressure_io\",kind=\"parse\"}")
            .is_some_and(|n| n >= 1.0)
    });
    assert!(m3.get(io).is_some());
}
