//! The fixture roots of the cardinality budget (and of the fleet test): a host from
//! `tests/fixtures/debian12-6.18`, a procfs with the threads and a cgroup v2 tree with the
//! containers of a [`Shape`].

use std::path::Path;

use crate::harness::{fixture, write};

/// D-state threads of the fixture: distinct user comms and wait channels (more than the
/// agent's default top-20 of each) plus two kworkers.
pub const D_WORKERS: usize = 30;

/// Threads per worker process.
const THREADS_PER_PROCESS: usize = 100;

/// PID of container `i`'s member process.
fn member_pid(i: usize) -> u32 {
    200_000 + i as u32
}

/// A node's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub containers: usize,
    /// Threads in the whole procfs (init, container members and workers).
    pub threads: usize,
}

/// A generated fixture root (removed on drop).
pub struct FixtureNode {
    pub dir: tempfile::TempDir,
    /// Set to stop the thread of [`FixtureNode::keep_io_stalled`].
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for FixtureNode {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A 64-hex id, distinct per (salt, i).
fn hex_id(salt: u64, i: usize) -> String {
    let mut x = salt ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (0..4)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            format!("{x:016x}")
        })
        .collect()
}

/// A pod UID (with dashes) from an id.
fn uid_of(id: &str) -> String {
    format!(
        "{}-{}-{}-{}-{}",
        &id[0..8],
        &id[8..12],
        &id[12..16],
        &id[16..20],
        &id[20..32]
    )
}

/// Container `i`'s cgroup directory, relative to the v2 root, in one of four runtime shapes.
fn container_rel(i: usize, id: &str) -> String {
    let uid_ = uid_of(id).replace('-', "_");
    match i % 4 {
        0 => format!("system.slice/docker-{id}.scope"),
        1 => format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{id}.scope"
        ),
        2 => format!("kubepods.slice/kubepods-pod{uid_}.slice/crio-{id}.scope"),
        _ => format!("machine.slice/libpod-{id}.scope"),
    }
}

/// One `/proc/<pid>/stat` line (man 5 proc; 52 fields).
fn stat_line(
    pid: u32,
    comm: &str,
    state: char,
    kthread: bool,
    threads: usize,
    start: u64,
) -> String {
    let flags = if kthread { 0x0020_8040u32 } else { 0x0040_0100 };
    let mut s = format!(
        "{pid} ({comm}) {state} 1 {pid} {pid} 0 -1 {flags} 10 0 0 0 5 3 0 0 20 0 {threads} 0 {start} 1000000 100"
    );
    for _ in 0..30 {
        s.push_str(" 0");
    }
    s.push('\n');
    s
}

pub(super) fn mkdirs(p: &Path) {
    std::fs::create_dir_all(p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
}

/// Copies a fixture tree (files, directories and symlinks as symlinks).
fn copy_tree(from: &Path, to: &Path) {
    mkdirs(to);
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let ft = e.file_type().unwrap();
        if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src).unwrap(), &dst).unwrap();
        } else if ft.is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

fn pressure(some10: f64, full10: f64) -> String {
    format!(
        "some avg10={some10:.2} avg60=1.00 avg300=0.50 total=123456\nfull avg10={full10:.2} avg60=0.80 avg300=0.40 total=65432\n"
    )
}

impl FixtureNode {
    /// Keeps the fixture's `/proc/pressure/io` totals growing as a node stalled on I/O would
    /// (`some` and `full` stall microseconds per second), so the agent's verdict, which reads
    /// the totals' rate, sees a stall; until the node is dropped.
    pub fn keep_io_stalled(&self, some: f64, full: f64) {
        let path = self.dir.path().join("proc/pressure/io");
        let tmp = self.dir.path().join("proc/pressure/.io.tmp");
        let stop = self.stop.clone();
        std::thread::spawn(move || {
            let start = std::time::Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let us = start.elapsed().as_micros() as f64;
                let text = format!(
                    "some avg10={:.2} avg60=1.00 avg300=0.50 total={}\nfull avg10={:.2} avg60=0.80 avg300=0.40 total={}\n",
                    some * 100.0,
                    123_456 + (us * some) as u64,
                    full * 100.0,
                    65_432 + (us * full) as u64
                );
                // Whole files only: a reader never sees half a write.
                if std::fs::write(&tmp, text).is_ok() {
                    let _ = std::fs::rename(&tmp, &path);
                }
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
        });
    }

    /// Builds the root for `shape`. `io_full_avg10` (percent) goes into `/proc/pressure/io`, so
    /// the fleet test can make a node look stalled.
    pub fn build(shape: Shape, io_full_avg10: f64, salt: u64) -> FixtureNode {
        // tmpfs when there is one: 10k thread directories cost ~30 s on a busy disk, well
        // under a second in memory.
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm
        } else {
            Path::new(env!("CARGO_TARGET_TMPDIR"))
        };
        let dir = tempfile::Builder::new()
            .prefix(&format!("stallwatch-card-{}-", std::process::id()))
            .tempdir_in(base)
            .unwrap();
        let root = dir.path();
        let host = fixture("debian12-6.18");
        copy_tree(&host.join("proc"), &root.join("proc"));
        copy_tree(&host.join("sys"), &root.join("sys"));
        let proc_ = root.join("proc");
        mkdirs(&proc_.join("sys/kernel"));
        write(&proc_.join("sys/kernel/osrelease"), "6.18.44-fixture\n");
        write(
            &proc_.join("pressure/io"),
            &pressure(io_full_avg10 + 2.0, io_full_avg10),
        );
        let host_netns = "net:[4026531840]";

        let proc_dir = |pid: u32| {
            let d = proc_.join(pid.to_string());
            mkdirs(&d);
            d
        };
        // init
        let d = proc_dir(1);
        write(&d.join("stat"), &stat_line(1, "systemd", 'S', false, 1, 1));
        write(&d.join("cgroup"), "0::/init.scope\n");
        mkdirs(&d.join("ns"));
        std::os::unix::fs::symlink(host_netns, d.join("ns/net")).unwrap();

        // Containers: a pure v2 tree with every controller enabled.
        let cg = root.join("sys/fs/cgroup");
        mkdirs(&cg);
        write(
            &cg.join("cgroup.controllers"),
            "cpuset cpu io memory hugetlb pids rdma misc\n",
        );
        write(
            &cg.join("cgroup.subtree_control"),
            "cpuset cpu io memory pids\n",
        );
        write(&cg.join("cgroup.procs"), "1\n");
        for i in 0..shape.containers {
            let id = hex_id(salt, i);
            let leaf = cg.join(container_rel(i, &id));
            mkdirs(&leaf);
            let pid = member_pid(i);
            let files: [(&str, String); 11] = [
                ("cgroup.procs", format!("{pid}\n")),
                ("cpu.stat", format!("usage_usec {}\nuser_usec 600000\nsystem_usec 400000\nnr_periods 10\nnr_throttled 2\nthrottled_usec 5000\n", 1_000_000 + i)),
                ("memory.current", "10485760\n".into()),
                ("memory.max", "536870912\n".into()),
                ("memory.stat", "anon 4194304\nfile 6291456\nfile_dirty 4096\nfile_writeback 0\npgmajfault 3\n".into()),
                ("memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n".into()),
                ("io.stat", "254:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n".into()),
                ("pids.current", "1\n".into()),
                ("cpu.pressure", pressure(0.5, 0.0)),
                ("io.pressure", pressure(1.0, 0.5)),
                ("memory.pressure", pressure(0.0, 0.0)),
            ];
            for (f, text) in files {
                write(&leaf.join(f), &text);
            }
            // Its member process: in D for the first three containers (a container's threads
            // in D are attributed to it).
            let d = proc_dir(pid);
            let in_d = i < 3;
            write(
                &d.join("stat"),
                &stat_line(
                    pid,
                    "postgres",
                    if in_d { 'D' } else { 'S' },
                    false,
                    1,
                    100 + i as u64,
                ),
            );
            if in_d {
                write(&d.join("wchan"), "jbd2_log_wait_commit");
            }
            write(
                &d.join("cgroup"),
                &format!("0::/{}\n", container_rel(i, &id)),
            );
            mkdirs(&d.join("net"));
            write(
                &d.join("net/dev"),
                "Inter-|   Receive                                                |  Transmit\n \
                 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
                 lo: 100 1 0 0 0 0 0 0 100 1 0 0 0 0 0 0\n  \
                 eth0: 1520 12 1 2 0 0 0 0 980 9 3 4 0 0 0 0\n",
            );
            mkdirs(&d.join("ns"));
            std::os::unix::fs::symlink(
                format!("net:[{}]", 4_026_600_000u64 + i as u64),
                d.join("ns/net"),
            )
            .unwrap();
        }

        // Workers: processes of up to 100 threads until the node has `threads` threads.
        let mut left = shape.threads.saturating_sub(1 + shape.containers);
        let mut pid = 10_000u32;
        let mut d_left = D_WORKERS;
        let mut kworkers = 2usize;
        while left > 0 {
            let n = left.min(THREADS_PER_PROCESS);
            let d = proc_dir(pid);
            write(
                &d.join("stat"),
                &stat_line(pid, "worker", 'S', false, n, 500),
            );
            write(&d.join("cgroup"), "0::/system.slice/worker.service\n");
            for j in 0..n {
                let tid = pid + j as u32;
                let t = d.join("task").join(tid.to_string());
                mkdirs(&t);
                let (comm, state, kthread, wchan) = if d_left > 0 {
                    d_left -= 1;
                    let k = D_WORKERS - 1 - d_left;
                    (
                        format!("dworker-{k:02}"),
                        'D',
                        false,
                        Some(format!("fixture_wait_{k:02}")),
                    )
                } else if kworkers > 0 && pid == 10_000 && j >= n - 2 {
                    kworkers -= 1;
                    let name = if kworkers == 1 {
                        "kworker/0:1"
                    } else {
                        "kworker/u8:2"
                    };
                    (name.to_string(), 'D', true, Some("io_schedule".to_string()))
                } else if j == 1 {
                    ("worker".to_string(), 'R', false, None)
                } else {
                    ("worker".to_string(), 'S', false, None)
                };
                write(
                    &t.join("stat"),
                    &stat_line(tid, &comm, state, kthread, n, 500 + j as u64),
                );
                if let Some(w) = wchan {
                    write(&t.join("wchan"), &w);
                }
            }
            left -= n;
            pid += THREADS_PER_PROCESS as u32;
        }
        FixtureNode {
            dir,
            stop: Default::default(),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The agent's path flags for this root.
    pub fn path_args(&self) -> Vec<String> {
        let r = self.root();
        vec![
            format!("--path.procfs={}", r.join("proc").display()),
            format!("--path.sysfs={}", r.join("sys").display()),
            format!("--path.rootfs={}", r.display()),
        ]
    }
}
