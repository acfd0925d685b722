//! The shapes, the real cgroups made for them, and the processes run in them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use cgroups_rs::fs::hierarchies::V1;
use cgroups_rs::fs::Cgroup;
use cgroups_rs::CgroupPid;

use crate::harness::write;

pub(super) const CGROUPFS: &str = "/sys/fs/cgroup";
pub(super) const UNIFIED: &str = "/sys/fs/cgroup/unified";

/// CPU each container burns before it sleeps (user time, as perl's `times` counts it).
pub(super) const BURN_SECONDS: f64 = 0.3;
/// perl's `times` counts user time in clock ticks, the cgroup's usage in nanoseconds: perl can
/// stop burning with the kernel's usage a few ticks short (seen in CI: 0.2994 s).
pub(super) const BURN_SLACK: f64 = 0.05;
/// Anonymous memory each v1 container allocates and touches.
pub(super) const ANON_MIB: u64 = 24;
/// Page cache each v1 container writes (buffered, no fsync: dirty until writeback).
pub(super) const DIRTY_MIB: u64 = 8;
/// The CFS quota of the CRI-O container (a guaranteed pod has a CPU limit): 20 ms per 100 ms.
pub(super) const CRIO_QUOTA_US: i64 = 20_000;
/// The memory limit of the podman container (`--memory 256m`).
pub(super) const PODMAN_LIMIT: i64 = 256 << 20;

/// One container shape and the labels the agent must give it.
#[derive(Debug, Clone)]
pub(super) struct Shape {
    pub(super) tag: &'static str,
    /// Relative to a hierarchy root, without a leading `/`.
    pub(super) rel: String,
    pub(super) id: String,
    pub(super) runtime: &'static str,
    pub(super) pod_uid: Option<String>,
    pub(super) qos: Option<&'static str>,
    /// The `name` label, when the test wrote the runtime's state for it.
    pub(super) name: Option<String>,
}

impl Shape {
    /// The labels exactly as the agent prints them.
    pub(super) fn labels(&self) -> String {
        let mut l = format!("container_id=\"{}\",runtime=\"{}\"", self.id, self.runtime);
        if let Some(u) = &self.pod_uid {
            l.push_str(&format!(",pod_uid=\"{u}\""));
        }
        if let Some(q) = self.qos {
            l.push_str(&format!(",qos=\"{q}\""));
        }
        if let Some(n) = &self.name {
            l.push_str(&format!(",name=\"{n}\""));
        }
        l
    }

    pub(super) fn series(&self, family: &str) -> String {
        format!("stallwatch_container_{family}{{{}}}", self.labels())
    }
}

/// A 64-hex id unique to this run (pid, time, a per-call counter).
pub(super) fn unique_hex(salt: u64) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let seed = nanos ^ ((std::process::id() as u64) << 40) ^ salt.wrapping_mul(0x9e37_79b9);
    (0..4u32)
        .map(|i| {
            format!(
                "{:016x}",
                seed.wrapping_add(i as u64)
                    .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                    .rotate_left(i * 17)
            )
        })
        .collect()
}

pub(super) fn uuid(salt: u64) -> String {
    let h = unique_hex(salt);
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// The six container shapes, with fresh ids and pod UIDs; and the two monitor scopes (with
/// ids of their own, so that any series of theirs would show).
pub(super) fn shapes(salt: u64) -> (Vec<Shape>, Vec<String>) {
    let id = |n: u64| unique_hex(salt * 100 + n);
    let (u1, u2, u3) = (
        uuid(salt * 100 + 50),
        uuid(salt * 100 + 51),
        uuid(salt * 100 + 52),
    );
    let us = |u: &str| u.replace('-', "_");
    let mk = |tag, rel: String, id: String, runtime, pod_uid: Option<&String>, qos| Shape {
        tag,
        rel,
        id,
        runtime,
        pod_uid: pod_uid.cloned(),
        qos,
        name: None,
    };
    let ids: Vec<String> = (0..8).map(id).collect();
    let shapes = vec![
        mk(
            "docker-cgroupfs",
            format!("docker/{}", ids[0]),
            ids[0].clone(),
            "docker",
            None,
            None,
        ),
        mk(
            "docker-systemd",
            format!("system.slice/docker-{}.scope", ids[1]),
            ids[1].clone(),
            "docker",
            None,
            None,
        ),
        mk(
            "kubelet-cgroupfs",
            format!("kubepods/besteffort/pod{u1}/{}", ids[2]),
            ids[2].clone(),
            "unknown",
            Some(&u1),
            Some("besteffort"),
        ),
        mk(
            "containerd-systemd",
            format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{}.scope",
                us(&u2),
                ids[3]
            ),
            ids[3].clone(),
            "containerd",
            Some(&u2),
            Some("burstable"),
        ),
        mk(
            "crio",
            format!("kubepods.slice/kubepods-pod{}.slice/crio-{}.scope", us(&u3), ids[4]),
            ids[4].clone(),
            "crio",
            Some(&u3),
            Some("guaranteed"),
        ),
        mk(
            "podman",
            format!("machine.slice/libpod-{}.scope", ids[5]),
            ids[5].clone(),
            "podman",
            None,
            None,
        ),
    ];
    let monitors = vec![
        format!(
            "kubepods.slice/kubepods-pod{}.slice/crio-conmon-{}.scope",
            us(&u3),
            ids[6]
        ),
        format!("machine.slice/libpod-conmon-{}.scope", ids[7]),
    ];
    (shapes, monitors)
}

/// The id in a monitor scope's name.
pub(super) fn monitor_id(rel: &str) -> &str {
    rel.rsplit('-').next().unwrap().trim_end_matches(".scope")
}

/// The mounted v1 hierarchies (every `/sys/fs/cgroup/<x>` with a `cgroup.procs`, but not the
/// unified tree): where cgroups-rs creates a v1 cgroup.
pub(super) fn v1_hierarchies() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(CGROUPFS)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("cgroup.procs").exists() && !p.ends_with("unified"))
        .collect();
    v.sort();
    v
}

/// A process in a container cgroup, and how its cgroup goes away.
pub(super) struct Member {
    pub(super) child: Option<Child>,
    pub(super) v1: Option<Cgroup>,
    pub(super) v2_leaf: Option<PathBuf>,
}

/// What a test made. Dropped (also on panic): every process is killed first, then each
/// container's cgroup is removed, then the parents this test created, deepest first.
#[derive(Default)]
pub(super) struct Rig {
    pub(super) members: Vec<Member>,
    pub(super) dprocs: Vec<DProc>,
    /// Directories this test created, parents before children.
    pub(super) dirs: Vec<PathBuf>,
}

/// `rmdir`, retried while the cgroup is busy (a task that was just killed can take a moment
/// to leave it). Gone already is fine.
pub(super) fn rmdir_retry(d: &Path, tries: u32) {
    for _ in 0..tries {
        match std::fs::remove_dir(d) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                std::thread::sleep(Duration::from_millis(20))
            }
            _ => return,
        }
    }
}

impl Rig {
    /// Records the directories of `rel` under `root` that do not exist yet.
    pub(super) fn note_missing(&mut self, root: &Path, rel: &str) {
        let mut d = root.to_path_buf();
        for c in rel.split('/') {
            d.push(c);
            if !d.exists() {
                self.dirs.push(d.clone());
            }
        }
    }

    /// A cgroup at `rel` in every v1 hierarchy, made with cgroups-rs.
    pub(super) fn v1_cgroup(&mut self, rel: &str) -> Cgroup {
        for h in v1_hierarchies() {
            self.note_missing(&h, rel);
        }
        Cgroup::new(Box::new(V1::new()), rel).unwrap_or_else(|e| panic!("create v1 {rel}: {e}"))
    }

    /// A directory at `rel` under a v2 root (plain mkdir; see the module doc).
    pub(super) fn v2_dir(&mut self, root: &Path, rel: &str) -> PathBuf {
        self.note_missing(root, rel);
        let d = root.join(rel);
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        d
    }

    /// Starts `sh -c 'read go; <script>'`, moves it into the v1 cgroup and/or the v2 leaf,
    /// then lets it go, so everything it does is charged to the container. Returns its index.
    pub(super) fn start(
        &mut self,
        v1: Option<Cgroup>,
        v2_leaf: Option<PathBuf>,
        script: &str,
    ) -> usize {
        let mut child = Command::new("sh")
            .args(["-c", &format!("read go; {script}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut stdin = child.stdin.take().unwrap();
        self.members.push(Member {
            child: Some(child),
            v1,
            v2_leaf,
        });
        let m = self.members.last().unwrap();
        if let Some(cg) = &m.v1 {
            cg.add_task_by_tgid(CgroupPid::from(pid as u64))
                .unwrap_or_else(|e| panic!("moving {pid} into v1: {e}"));
        }
        if let Some(leaf) = &m.v2_leaf {
            write(&leaf.join("cgroup.procs"), &pid.to_string());
        }
        stdin.write_all(b"go\n").unwrap();
        self.members.len() - 1
    }

    /// Kills member `i` and removes its cgroup (the `rmdir` a runtime does on exit).
    pub(super) fn remove(&mut self, i: usize) {
        let m = &mut self.members[i];
        if let Some(mut c) = m.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(cg) = m.v1.take() {
            for _ in 0..50 {
                if cg.delete().is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if let Some(leaf) = m.v2_leaf.take() {
            rmdir_retry(&leaf, 50);
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(c) = &mut m.child {
                let _ = c.kill();
            }
        }
        self.dprocs.clear();
        for i in 0..self.members.len() {
            self.remove(i);
        }
        // Deepest first. A parent another test still uses stays (EBUSY): it is theirs too.
        for d in self.dirs.iter().rev() {
            rmdir_retry(d, 5);
        }
    }
}

/// A real thread in D state: a process that makes a child with `CLONE_VFORK` and waits for it
/// (`wait_for_vfork_done`, `TASK_KILLABLE`: shown as `D`, wchan `kernel_clone`) while the
/// child blocks reading a pipe. No disk is involved, so it is cheap and certain. Dropping it
/// closes the pipe (the child exits, so the parent resumes and exits) and SIGKILLs the parent.
/// (`clone` with its own stack and without `CLONE_VM`, rather than `vfork()`, which Rust
/// cannot call soundly.)
pub(super) struct DProc {
    pub(super) pid: libc::pid_t,
    pub(super) release: libc::c_int,
}

impl DProc {
    /// Forks a process, lets `mv` move it into its cgroups, then makes it wait on its child.
    pub(super) fn spawn(mv: impl FnOnce(u32)) -> DProc {
        let mut go = [0 as libc::c_int; 2];
        let mut rel = [0 as libc::c_int; 2];
        // SAFETY: pipe2 writes two fds into the arrays.
        unsafe {
            assert_eq!(libc::pipe2(go.as_mut_ptr(), libc::O_CLOEXEC), 0);
            assert_eq!(libc::pipe2(rel.as_mut_ptr(), libc::O_CLOEXEC), 0);
        }
        extern "C" fn child(_: *mut libc::c_void) -> libc::c_int {
            let mut b = [0u8; 1];
            // SAFETY: reading one byte into a live buffer. Blocks until every write end of the
            // release pipe is closed: the DProc's drop.
            unsafe { libc::read(1, b.as_mut_ptr().cast(), 1) };
            0
        }
        let mut stack = vec![0u8; 64 * 1024];
        // SAFETY: one past the end of the buffer (the stack grows down), 16-byte aligned.
        let top = unsafe { stack.as_mut_ptr().add(stack.len() & !15) };
        // SAFETY: the child calls only async-signal-safe functions (dup2, syscall, read,
        // clone, _exit) on memory prepared before the fork.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: as above. Keep only the two read ends (as 0 and 1), so that no other
            // process holds a write end of the release pipe.
            unsafe {
                libc::dup2(go[0], 0);
                libc::dup2(rel[0], 1);
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                let mut b = [0u8; 1];
                if libc::read(0, b.as_mut_ptr().cast(), 1) != 1 {
                    libc::_exit(1);
                }
                let flags = libc::CLONE_VFORK | libc::SIGCHLD;
                if libc::clone(child, top.cast(), flags, std::ptr::null_mut()) < 0 {
                    libc::_exit(2);
                }
                libc::_exit(0);
            }
        }
        // SAFETY: closing our copies of the child's read ends.
        unsafe {
            libc::close(go[0]);
            libc::close(rel[0]);
        }
        let d = DProc {
            pid,
            release: rel[1],
        };
        mv(pid as u32);
        // SAFETY: one byte from a live buffer into our pipe.
        unsafe {
            assert_eq!(libc::write(go[1], b"g".as_ptr().cast(), 1), 1);
            libc::close(go[1]);
        }
        let t0 = Instant::now();
        while state(pid as u32) != Some('D') {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "pid {pid} never entered D: {:?}",
                state(pid as u32)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        d
    }
}

impl Drop for DProc {
    fn drop(&mut self) {
        // SAFETY: our own fd and our own child.
        unsafe {
            libc::close(self.release);
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

/// The state letter of `/proc/<pid>/stat` (after the last `)`).
pub(super) fn state(pid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')?.1.trim_start().chars().next()
}
