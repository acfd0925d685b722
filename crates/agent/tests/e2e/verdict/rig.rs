//! The scenarios' real kernel objects: container-shaped cgroups whose processes join them at
//! exec, device limits on blk-throttle, and small helpers. Everything is undone on drop, also
//! after a panic; names carry the test's pid so that parallel tests never collide.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use cgroups_rs::fs::hierarchies::V1;
use cgroups_rs::fs::Cgroup;

pub use crate::hung::wait_exit;

const CGROUPFS: &str = "/sys/fs/cgroup";
const UNIFIED: &str = "/sys/fs/cgroup/unified";

static SEQ: AtomicU64 = AtomicU64::new(0);
/// `/docker` directories this test process made (in any hierarchy): every container's drop
/// tries to remove them, so the last one out succeeds whatever the drop order.
static CREATED_PARENTS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A 64-hex container id that starts with this test process's pid (so a leftover is easy to
/// trace back) and is unique within the process and across runs.
pub fn unique_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let mix = |i: u64| {
        (nanos ^ (seq << 32) ^ i)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(17)
    };
    format!(
        "{:08x}{:08x}{:016x}{:016x}{:016x}",
        std::process::id(),
        seq as u32,
        mix(1),
        mix(2),
        mix(3)
    )
}

/// A docker-shaped container: `/docker/<id>` in every v1 hierarchy (made with cgroups-rs, which
/// also fills in cpuset) and in the unified tree (where per-cgroup PSI lives on this hybrid
/// host). Processes started with [`Container::spawn`] join it at exec. On drop: limits lifted
/// first (a task in a throttled write dies only once its I/O is through), processes killed and
/// reaped, directories removed (also `/docker` where this test made it).
pub struct Container {
    rel: String,
    cg: Option<Cgroup>,
    unified: PathBuf,
    /// `cgroup.procs` of every hierarchy, as C strings for the child's pre-exec.
    procs: Vec<CString>,
    children: Mutex<Vec<Child>>,
    /// blkio files set here, with the device: reset to 0 on drop.
    limits: Mutex<Vec<(String, u64, u64)>>,
}

impl Container {
    pub fn new(id: &str) -> Container {
        Container::at(&format!("docker/{id}"))
    }

    /// A cgroup at `rel` (relative to each hierarchy's root), e.g. a plain service group.
    pub fn at(rel: &str) -> Container {
        let rel = rel.to_string();
        let hierarchies: Vec<PathBuf> = std::fs::read_dir(CGROUPFS)
            .expect("read /sys/fs/cgroup")
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| p.join("cgroup.procs").exists())
            .collect();
        {
            let mut made = CREATED_PARENTS.lock().unwrap_or_else(|e| e.into_inner());
            let parent = Path::new(&rel)
                .parent()
                .filter(|p| !p.as_os_str().is_empty());
            for d in parent
                .iter()
                .flat_map(|p| hierarchies.iter().map(move |h| h.join(p)))
            {
                if !d.exists() && !made.contains(&d) {
                    made.push(d);
                }
            }
        }
        let unified = Path::new(UNIFIED).join(&rel);
        let mut c = Container {
            rel: rel.clone(),
            cg: None,
            unified: unified.clone(),
            procs: Vec::new(),
            children: Mutex::new(Vec::new()),
            limits: Mutex::new(Vec::new()),
        };
        c.cg = Some(
            Cgroup::new(Box::new(V1::new()), rel.as_str())
                .unwrap_or_else(|e| panic!("create cgroup {rel}: {e}")),
        );
        if Path::new(UNIFIED).join("cgroup.procs").exists() {
            std::fs::create_dir_all(&unified)
                .unwrap_or_else(|e| panic!("mkdir {}: {e}", unified.display()));
        }
        c.procs = hierarchies
            .iter()
            .map(|h| h.join(&rel).join("cgroup.procs"))
            .filter(|p| p.exists())
            .map(|p| CString::new(p.as_os_str().as_bytes()).unwrap())
            .collect();
        assert!(
            c.procs.len() >= 2,
            "no cgroup directories for {rel}: {:?}",
            c.procs
        );
        c
    }

    /// The unified (v2) directory: per-cgroup PSI.
    pub fn unified(&self) -> &Path {
        &self.unified
    }

    /// A v1 controller's directory of this container.
    pub fn dir(&self, controller: &str) -> PathBuf {
        Path::new(CGROUPFS).join(controller).join(&self.rel)
    }

    /// Starts `cmd` inside the container: the child writes `0` (itself) to every hierarchy's
    /// `cgroup.procs` between fork and exec, so everything it runs is charged here from the
    /// first instruction. The child is killed and reaped on drop; its pipes are returned.
    pub fn spawn(&self, cmd: &mut Command) -> Proc {
        let procs = self.procs.clone();
        // SAFETY: only async-signal-safe calls (open, write, close) on C strings made before
        // the fork; no allocation in the child.
        unsafe {
            cmd.pre_exec(move || {
                for p in &procs {
                    let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                    let err = std::io::Error::last_os_error();
                    libc::close(fd);
                    if n != 1 {
                        return Err(err);
                    }
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {cmd:?} in {}: {e}", self.rel));
        let p = Proc {
            stdin: child.stdin.take(),
        };
        lock(&self.children).push(child);
        p
    }

    /// Sets a blkio throttle (`blkio.throttle.<file>`) for one device; lifted on drop.
    pub fn throttle(&self, file: &str, (major, minor): (u64, u64), value: u64) {
        let path = self.dir("blkio").join(format!("blkio.throttle.{file}"));
        std::fs::write(&path, format!("{major}:{minor} {value}"))
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        lock(&self.limits).push((file.to_string(), major, minor));
    }

    /// `memory.limit_in_bytes` (v1).
    pub fn memory_limit(&self, bytes: u64) {
        let path = self.dir("memory").join("memory.limit_in_bytes");
        std::fs::write(&path, bytes.to_string())
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    pub fn stop(&self) {
        for (file, major, minor) in lock(&self.limits).drain(..) {
            let path = self.dir("blkio").join(format!("blkio.throttle.{file}"));
            if let Err(e) = std::fs::write(&path, format!("{major}:{minor} 0")) {
                eprintln!("cleanup: lift {}: {e}", path.display());
            }
        }
        for c in lock(&self.children).iter_mut() {
            let _ = c.kill();
        }
        for mut c in lock(&self.children).drain(..) {
            if wait_exit(&mut c, Duration::from_secs(30)).is_none() {
                eprintln!("cleanup: {} did not exit within 30 s", c.id());
            }
        }
        // And whatever they started (a `timeout` killed leaves its command running).
        let procs = self.dir("memory").join("cgroup.procs");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pids: Vec<i32> = std::fs::read_to_string(&procs)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            for p in pids {
                // SAFETY: kill(2); these pids are in our own container's cgroup.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.stop();
        if let Some(cg) = self.cg.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while cg.delete().is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = std::fs::remove_dir(&self.unified);
        // `/docker` where this container made it (another container of the same test may
        // still use it: then the rmdir fails, and the last one's drop removes it).
        for p in CREATED_PARENTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = std::fs::remove_dir(p);
        }
    }
}

/// A process started in a container, with its stdin (closing it ends the python helpers).
pub struct Proc {
    pub stdin: Option<ChildStdin>,
}

/// A blk-throttle limit in the ROOT blkio cgroup for one device: it holds every task's I/O
/// to that device, including the flusher kworkers' writeback (which runs in the root group
/// and escapes a container's limit), so it plays a volume with a hard throughput limit.
/// Only the test's own loop device is ever limited. On drop: lifted, then the processes it
/// [owns](DeviceLimit::own) are killed and reaped (in that order: a task in a throttled
/// fsync ignores even SIGKILL until its I/O is through).
pub struct DeviceLimit {
    path: PathBuf,
    dev: (u64, u64),
    children: Vec<Child>,
}

impl DeviceLimit {
    pub fn set(file: &str, dev: (u64, u64), value: u64) -> DeviceLimit {
        let path = Path::new(CGROUPFS)
            .join("blkio")
            .join(format!("blkio.throttle.{file}"));
        std::fs::write(&path, format!("{}:{} {value}", dev.0, dev.1))
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        DeviceLimit {
            path,
            dev,
            children: Vec::new(),
        }
    }

    /// Kills and reaps `child` after the limit is lifted.
    pub fn own(&mut self, child: Child) -> &mut Child {
        self.children.push(child);
        self.children.last_mut().unwrap()
    }

    pub fn lift(&self) {
        if let Err(e) = std::fs::write(&self.path, format!("{}:{} 0", self.dev.0, self.dev.1)) {
            eprintln!("cleanup: lift {}: {e}", self.path.display());
        }
    }
}

impl Drop for DeviceLimit {
    fn drop(&mut self) {
        self.lift();
        for c in &mut self.children {
            let _ = c.kill();
        }
        for c in &mut self.children {
            if wait_exit(c, Duration::from_secs(30)).is_none() {
                eprintln!("cleanup: {} did not exit within 30 s", c.id());
            }
        }
    }
}

/// A python3 program given as text, with its arguments, its stdout piped and stderr kept.
pub fn python(program: &str, args: &[&str]) -> Command {
    let mut c = Command::new("python3");
    c.arg("-c")
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    c
}

/// Writes docker's per-container state so the agent names the container (`"Name": "/<n>"` in
/// `<docker_root>/containers/<id>/config.v2.json`).
pub fn docker_name(docker_root: &Path, id: &str, name: &str) {
    let dir = docker_root.join("containers").join(id);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.v2.json"),
        format!("{{\"ID\":\"{id}\",\"Name\":\"/{name}\"}}"),
    )
    .unwrap();
}

/// Creates `path` with `mib` MiB written with O_DIRECT: on disk, not in the page cache (so a
/// reader that comes later really reads the device, and is charged for the pages it caches).
pub fn direct_file(path: &Path, mib: u64) {
    let out = Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "oflag=direct", "status=none"])
        .arg(format!("count={mib}"))
        .arg(format!("of={}", path.display()))
        .output()
        .expect("dd");
    assert!(
        out.status.success(),
        "dd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
