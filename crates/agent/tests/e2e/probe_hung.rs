//! A probe write stuck in D must never keep the agent alive (issue 13 item 6): the agent with a
//! probe on a hung filesystem ([`HungDisk`]: ext4 on a loop device over a FUSE file whose
//! daemon is stopped) gets SIGTERM while the write hangs, and its PID is gone within 5 s;
//! meanwhile the probe's source is stuck and its in-flight age grows. Before the writes moved
//! into a writer process, the agent logged "Shut down." and then stayed a zombie until the
//! write returned (its probe thread in D). Needs root.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::{require_root, write, Agent, Metrics};
use crate::hung::{state_of, HungDisk};

/// The probe writer processes whose parent is `parent`.
fn writers_of(parent: u32) -> Vec<u32> {
    let parent = parent.to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let (head, rest) = stat.rsplit_once(')')?;
            let ppid = rest.split_whitespace().nth(1)?;
            (head.ends_with("(sw-probe-write") && ppid == parent)
                .then(|| e.file_name().to_string_lossy().parse().ok())?
        })
        .collect()
}

fn value(m: &Metrics, series: &str) -> f64 {
    m.get(series).unwrap_or(f64::NAN)
}

#[test]
fn sigterm_while_a_probe_write_is_stuck_in_d_ends_the_agent_within_5s() {
    if !require_root("sigterm_while_a_probe_write_is_stuck_in_d_ends_the_agent_within_5s") {
        return;
    }
    // The writer outlives the agent; adopt it (instead of PID 1) to see it exit and reap it.
    // SAFETY: prctl on this process only.
    assert_eq!(
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) },
        0,
        "PR_SET_CHILD_SUBREAPER"
    );
    let rig = HungDisk::start(&["probe"]);
    let dir = rig.path("probe");
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("stallwatch.toml");
    write(
        &cfg,
        &format!(
            "[[probe]]\npath = \"{}\"\nsize = \"64KiB\"\ninterval = \"1s\"\ntimeout = \"1s\"\n",
            dir.display()
        ),
    );
    let mut agent = Agent::start_with(&[&format!("--config.file={}", cfg.display())], |c| {
        rig.enter(c)
    });
    // Dropped before `agent`: the disk resumes, so the agent's drop (kill, wait) can finish.
    let _resume = rig.resume_on_drop();
    let pid = agent.child.id();
    let label = format!("path=\"{}\"", dir.display());
    let count = format!("stallwatch_probe_write_seconds_count{{{label}}}");
    let in_flight = format!("stallwatch_probe_in_flight_seconds{{{label}}}");
    let timeouts = format!("stallwatch_probe_failures_total{{{label},reason=\"timeout\"}}");
    let stuck = format!(
        "stallwatch_source_stuck{{source=\"probe:{}\"}}",
        dir.display()
    );
    agent.wait_for(Duration::from_secs(10), "a first, fast probe write", |m| {
        value(m, &count) >= 1.0 && m.get(&stuck) == Some(0.0)
    });

    rig.hang();
    let m1 = agent.wait_for(
        Duration::from_secs(15),
        "the probe stuck past its timeout",
        |m| m.get(&stuck) == Some(1.0) && value(m, &in_flight) >= 1.5,
    );
    // The write is stuck in D, in a process of its own.
    let deadline = Instant::now() + Duration::from_secs(5);
    let writer = loop {
        let w = writers_of(pid);
        if let [w] = w[..] {
            if state_of(w) == Some('D') {
                break w;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no probe writer of {pid} in D: {w:?} {:?}",
            w.iter().map(|&p| state_of(p)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_secs(1));
    let m2 = Metrics::parse(&agent.scrape());
    assert_eq!(m2.get(&stuck), Some(1.0), "still stuck");
    assert!(
        value(&m2, &in_flight) >= value(&m1, &in_flight) + 0.9,
        "the in-flight age grows: {} then {}",
        value(&m1, &in_flight),
        value(&m2, &in_flight)
    );
    assert_eq!(
        value(&m2, &timeouts),
        1.0,
        "one timeout for the one hung write"
    );

    let t = Instant::now();
    agent.signal(libc::SIGTERM);
    let mut gone = None;
    while gone.is_none() && t.elapsed() < Duration::from_secs(5) {
        gone = agent.child.try_wait().unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = t.elapsed();
    let status = gone.unwrap_or_else(|| {
        panic!(
            "the agent (pid {pid}, state {:?}) is still there 5 s after SIGTERM while its probe write hangs\n{}",
            state_of(pid),
            agent.log()
        )
    });
    eprintln!("agent gone {took:?} after SIGTERM, its probe write still hung");
    assert!(status.success(), "{status:?}\n{}", agent.log());
    assert!(agent.log().contains("Shut down."), "{}", agent.log());
    assert_eq!(state_of(writer), Some('D'), "the write is still hung");

    // The disk resumes: the orphaned writer's write returns, nobody reads its report, so it
    // removes its file itself and exits.
    rig.resume();
    let mut st = 0;
    let t = Instant::now();
    loop {
        // SAFETY: waitpid on a process this test adopted (subreaper), writing into `st`.
        let r = unsafe { libc::waitpid(writer as i32, &mut st, libc::WNOHANG) };
        if r == writer as i32 {
            break;
        }
        assert!(
            r == 0 && t.elapsed() < Duration::from_secs(20),
            "the orphaned writer did not exit after the disk resumed: waitpid {r}, state {:?}",
            state_of(writer)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
        "writer status {st:#x}"
    );
    // The file is visible only inside the rig's mount namespace.
    let file = dir.join(".stallwatch-probe");
    let listed = crate::hung::run(rig.command(Path::new("ls")).arg("-A").arg(&dir));
    assert!(
        listed.trim().is_empty(),
        "the writer removed its file {}; left: {listed:?}",
        file.display()
    );
}
