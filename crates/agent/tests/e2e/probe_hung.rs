//! A probe write stuck in D must never keep the agent alive (issue 13 item 6): the agent with a
//! probe on a hung disk gets SIGTERM while the write hangs, and its PID is gone within 5 s;
//! meanwhile the probe's source is stuck and its in-flight age grows. Needs root.
//!
//! The hung disk, [`HungFs`]: ext4 on a loop device ([`LoopFs`]) and a cgroup v1 blkio group
//! whose write limit on that device is 1 byte per second while hung. The agent starts inside
//! the group ([`HungFs::enter`]), so its probe writes are held by blk-throttle: the writer sits
//! in D (`folio_wait_writeback`) exactly as behind a stuck EBS volume, where even SIGKILL waits
//! until the write returns; lifting the limit lets it through. Nothing outside the group is
//! held, so no other test runs into the hang. The rig keeps to the shape of the FUSE-backed
//! `HungDisk` of the config work (`new`/`dir`/`enter`/`hang`/`resume`), so either can serve this
//! test.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cgroups_rs::fs::blkio::BlkIoController;
use cgroups_rs::fs::hierarchies::V1;
use cgroups_rs::fs::Cgroup;

use crate::harness::{require_root, write, Agent, Metrics};
use crate::writeback::LoopFs;

pub struct HungFs {
    cgroup: Cgroup,
    /// `/sys/fs/cgroup/blkio/<name>/cgroup.procs`, for `enter`.
    procs: CString,
    dir: PathBuf,
    // Last: unmounted after the cgroup's writers are through.
    fs: LoopFs,
}

impl HungFs {
    /// A fresh filesystem with an empty directory to probe, and the (not yet limiting) group.
    pub fn new() -> HungFs {
        let fs = LoopFs::new(64);
        let dir = fs.mount_point().join("probe");
        std::fs::create_dir(&dir).unwrap();
        let name = format!("stallwatch-probe-hung-{}", std::process::id());
        let cgroup = Cgroup::new_with_specified_controllers(
            Box::new(V1::new()),
            &name,
            Some(vec!["blkio".to_string()]),
        )
        .expect("a cgroup v1 blkio group (needs root and the blkio hierarchy)");
        let procs = Path::new("/sys/fs/cgroup/blkio")
            .join(&name)
            .join("cgroup.procs");
        assert!(procs.exists(), "{} missing", procs.display());
        HungFs {
            cgroup,
            procs: CString::new(procs.as_os_str().as_bytes()).unwrap(),
            dir,
            fs,
        }
    }

    /// The directory to probe.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes `cmd` start inside the group (its writes to the disk are held while hung).
    pub fn enter(&self, cmd: &mut Command) {
        let procs = self.procs.clone();
        // SAFETY: open, write and close are async-signal-safe; the path is pre-built. Writing
        // "0" to cgroup.procs moves the writing process itself.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
                Ok(())
            });
        }
    }

    fn limit(&self, bps: u64) {
        let (major, minor) = self.fs.major_minor;
        self.cgroup
            .controller_of::<BlkIoController>()
            .expect("blkio controller")
            .throttle_write_bps_for_device(major, minor, bps)
            .unwrap_or_else(|e| panic!("write_bps_device {major}:{minor} {bps}: {e}"));
    }

    /// Holds every write of the group to the disk (1 byte per second).
    pub fn hang(&self) {
        self.limit(1);
    }

    /// Lets the held writes through.
    pub fn resume(&self) {
        self.limit(0);
    }

    /// Resumes the disk when dropped. Declare it *after* anything whose drop waits for a
    /// process that may be stuck on the disk (the harness's `Agent` kills and then waits):
    /// locals drop in reverse order, so the disk resumes first, even when the test panics.
    pub fn resume_on_drop(&self) -> Resume<'_> {
        Resume(self)
    }
}

pub struct Resume<'a>(&'a HungFs);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        self.0.resume();
    }
}

impl Drop for HungFs {
    fn drop(&mut self) {
        self.resume();
        // The group empties once its last writer is through; rmdir fails until then.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cgroup.delete().is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The state letter of a process, `None` when it is gone.
fn state_of(pid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')?.1.trim_start().chars().next()
}

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
    let rig = HungFs::new();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("stallwatch.toml");
    write(
        &cfg,
        &format!(
            "[[probe]]\npath = \"{}\"\nsize = \"64KiB\"\ninterval = \"1s\"\ntimeout = \"1s\"\n",
            rig.dir().display()
        ),
    );
    let mut agent = Agent::start_with(&[&format!("--config.file={}", cfg.display())], |c| {
        rig.enter(c)
    });
    let _resume = rig.resume_on_drop();
    let pid = agent.child.id();
    let label = format!("path=\"{}\"", rig.dir().display());
    let count = format!("stallwatch_probe_write_seconds_count{{{label}}}");
    let in_flight = format!("stallwatch_probe_in_flight_seconds{{{label}}}");
    let timeouts = format!("stallwatch_probe_failures_total{{{label},reason=\"timeout\"}}");
    let stuck = format!(
        "stallwatch_source_stuck{{source=\"probe:{}\"}}",
        rig.dir().display()
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
    let file = rig.dir().join(".stallwatch-probe");
    assert!(file.exists());

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
    assert!(!file.exists(), "the writer removed its file");
}
