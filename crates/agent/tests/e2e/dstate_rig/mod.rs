//! `DStateRig`: REAL threads in uninterruptible sleep ("D state") with a hostile name, for the
//! end-to-end tests of D-state attribution. Needs root.
//!
//! How: a sparse file → loop device → ext4 mounted in a tempdir; a cgroup v1 blkio group with
//! `blkio.throttle.write_iops_device` limited on that loop device; a python3 writer process moved
//! into the group whose threads each name themselves `HOSTILE_COMM` (prctl PR_SET_NAME) and loop
//! on 4 KiB O_DIRECT writes into their own file. Every write waits in `__iomap_dio_rw` for a bio
//! that blk-throttle holds back, so at a few iops the threads spend nearly all their time in D.
//!
//! Why O_DIRECT: cgroup v1 blkio charges only I/O that the task itself submits; buffered writes
//! are written back later by kworkers in the root group and escape the throttle. Why no fsync: a
//! task in a throttled fsync ignores even SIGKILL until the fsync ends.
//!
//! cgroup version: v1 only. This host has the hybrid layout (v1 controllers under
//! /sys/fs/cgroup/<controller>, v2 at /sys/fs/cgroup/unified with no `io` controller enabled),
//! and the v2 equivalent (`io.max` `wiops=`) would need the io controller in the unified
//! hierarchy, which is not available here. `start` panics with a clear message when there is no
//! v1 blkio hierarchy.
//!
//! cgroups-rs (0.5): we pass its `V1` hierarchy explicitly instead of `hierarchies::auto()`.
//! `auto()` picks v2 only if /sys/fs/cgroup itself is cgroup2 (here it is a tmpfs, so it would
//! pick v1 too), but being explicit keeps the rig from silently landing in the unified tree on
//! a host where that guess differs. `new_with_specified_controllers(["blkio"])` creates the
//! directory in the blkio hierarchy only (plain `Cgroup::new` would create one in every mounted
//! v1 hierarchy: memory, pids, cpuset, name=systemd, …).
//!
//! Cleanup (`Drop`) runs even when the test panics, and also for a rig that `start` abandoned
//! half-built. What it cannot cover is a test process killed with SIGKILL: then the writer exits
//! by itself once its stdin closes (when its current throttled write completes), but the mount,
//! loop device and cgroup stay behind (`losetup -a`, `grep stallwatch /proc/mounts`,
//! `ls /sys/fs/cgroup/blkio`).

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cgroups_rs::fs::blkio::BlkIoController;
use cgroups_rs::fs::hierarchies::V1;
use cgroups_rs::fs::{Cgroup, Controllers};
use cgroups_rs::CgroupPid;

/// The writer threads' name: 15 bytes (TASK_COMM_LEN-1), with a ')' followed by a fake state
/// field (" S 0 ", so a parser that cuts /proc/<pid>/stat at the first ')' reads state S while
/// the thread is in D), spaces, a newline and an invalid UTF-8 byte.
pub const HOSTILE_COMM: &[u8] = b"sw) S 0 \n\xffwrite";
const _: () = assert!(HOSTILE_COMM.len() == 15);

/// The EBS tests' writers (they run beside the D-state tests; see `DStateRig::comm`).
pub const EBS_COMM: &[u8] = b"sw-ebs-writer";

/// How long `start` waits for the threads to be seen in D.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Size of the sparse backing file.
const IMAGE_BYTES: u64 = 64 << 20;

/// The writer. argv: mount dir, thread count, thread name in hex. It waits for "go\n" on stdin
/// (the Rust side moves it into the cgroup first, so every thread starts inside it), starts the
/// threads, then reads stdin: "rest\n" stops the writes (`lift`), and it exits when stdin closes
/// (the test process is gone).
const WRITER_PY: &str = include_str!("writer.py");

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// Real D-state threads; everything is torn down on drop. See the module docs.
pub struct DStateRig {
    /// The writer threads' name (`HOSTILE_COMM`, or the EBS tests' own, so that their writers,
    /// which run beside the D-state tests, never count in those tests' group).
    comm: &'static [u8],
    /// Holds the backing image, the mount point and the writer's stderr; removed last.
    dir: Option<tempfile::TempDir>,
    image: PathBuf,
    mnt: PathBuf,
    stderr_file: PathBuf,
    /// "loopN", once attached.
    loop_dev: Option<String>,
    /// The loop device's major:minor.
    devnum: Option<(u64, u64)>,
    mounted: bool,
    cgroup: Option<Cgroup>,
    /// /sys/fs/cgroup/blkio/<name>
    cgroup_dir: PathBuf,
    /// As /proc/<pid>/cgroup shows it for blkio.
    cgroup_path: String,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
}

impl DStateRig {
    /// Builds the loop device, the throttled blkio cgroup and the writer with `threads` threads,
    /// and returns once at least `threads` of them are in D at the same time (else panics after
    /// 15 s with diagnostics). `iops` is the write iops limit on the loop device; keep it small
    /// (2–5) so each thread waits about `threads / iops` seconds per write.
    pub fn start(threads: usize, iops: u32) -> DStateRig {
        DStateRig::start_sized(threads, iops, 4096)
    }

    /// [`DStateRig::start`] with writes of `io_size` bytes (a multiple of 4096).
    #[allow(dead_code)] // the cloud scenarios only
    pub fn start_sized(threads: usize, iops: u32, io_size: usize) -> DStateRig {
        DStateRig::start_as(HOSTILE_COMM, threads, iops, io_size)
    }

    /// The EBS tests' rig: writers named `EBS_COMM`, not `HOSTILE_COMM`.
    #[allow(dead_code)] // the cloud scenarios only
    pub fn for_ebs(threads: usize, iops: u32, io_size: usize) -> DStateRig {
        DStateRig::start_as(EBS_COMM, threads, iops, io_size)
    }

    fn start_as(comm: &'static [u8], threads: usize, iops: u32, io_size: usize) -> DStateRig {
        assert!(threads > 0 && iops > 0, "threads and iops must be > 0");
        assert!(
            io_size >= 4096 && io_size % 4096 == 0,
            "io_size: a multiple of 4096"
        );
        let t0 = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("stallwatch-dstate-")
            .tempdir()
            .expect("create tempdir");
        // From here on a panic drops `rig`, which undoes whatever was already set up.
        let mut rig = DStateRig {
            comm,
            image: dir.path().join("disk.img"),
            mnt: dir.path().join("mnt"),
            stderr_file: dir.path().join("writer.stderr"),
            dir: Some(dir),
            loop_dev: None,
            devnum: None,
            mounted: false,
            cgroup: None,
            cgroup_dir: PathBuf::new(),
            cgroup_path: String::new(),
            child: None,
            stdin: None,
        };

        // Sparse image with ext4 (inode tables and journal initialised now, so no ext4lazyinit
        // writes happen later).
        std::fs::File::create(&rig.image)
            .and_then(|f| f.set_len(IMAGE_BYTES))
            .expect("create sparse image");
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
            .arg(&rig.image));

        // Loop device.
        let dev = run(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&rig.image));
        let name = dev
            .trim()
            .strip_prefix("/dev/")
            .unwrap_or_else(|| panic!("losetup printed {dev:?}"))
            .to_string();
        rig.loop_dev = Some(name.clone());
        let mm = std::fs::read_to_string(format!("/sys/block/{name}/dev"))
            .unwrap_or_else(|e| panic!("read /sys/block/{name}/dev: {e}"));
        let (maj, min) = mm
            .trim()
            .split_once(':')
            .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
            .unwrap_or_else(|| panic!("bad /sys/block/{name}/dev: {mm:?}"));
        rig.devnum = Some((maj, min));

        // Mount.
        std::fs::create_dir(&rig.mnt).expect("mkdir mount point");
        let src = cstr(Path::new(&format!("/dev/{name}")));
        let target = cstr(&rig.mnt);
        let fstype = CString::new("ext4").unwrap();
        // SAFETY: valid NUL-terminated strings that outlive the call; no mount data.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            panic!(
                "mount /dev/{name} on {}: {}",
                rig.mnt.display(),
                std::io::Error::last_os_error()
            );
        }
        rig.mounted = true;

        // The blkio v1 cgroup with the throttle.
        let hier = V1::new();
        let (blkio_mount, _) = hier.get_mount_point(Controllers::BlkIo).unwrap_or_else(|| {
            panic!(
                "no cgroup v1 blkio hierarchy is mounted (see /proc/self/mountinfo); the rig \
                 needs blkio.throttle.write_iops_device (cgroup v2 io.max is not supported)"
            )
        });
        let cg_name = format!(
            "stallwatch-test-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        rig.cgroup_dir = blkio_mount.join(&cg_name);
        let cg = Cgroup::new_with_specified_controllers(
            Box::new(hier),
            &cg_name,
            Some(vec!["blkio".to_string()]),
        )
        .unwrap_or_else(|e| panic!("create blkio cgroup {cg_name}: {e}"));
        rig.cgroup = Some(cg);
        assert!(
            rig.cgroup_dir.is_dir(),
            "cgroups-rs did not create {}",
            rig.cgroup_dir.display()
        );
        rig.blkio()
            .throttle_write_iops_for_device(maj, min, u64::from(iops))
            .unwrap_or_else(|e| panic!("set write_iops {maj}:{min} {iops}: {e}"));

        // The writer, held at "go" until it is in the cgroup.
        let stderr = std::fs::File::create(&rig.stderr_file).expect("create writer stderr file");
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(WRITER_PY)
            .arg(&rig.mnt)
            .arg(threads.to_string())
            .arg(hex(rig.comm))
            .arg(io_size.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn python3 writer");
        rig.stdin = child.stdin.take();
        let pid = child.id();
        rig.child = Some(child);
        rig.cgroup
            .as_ref()
            .expect("cgroup")
            .add_task_by_tgid(CgroupPid::from(u64::from(pid)))
            .unwrap_or_else(|e| panic!("move writer {pid} into {cg_name}: {e}"));
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        rig.cgroup_path = cgroups
            .lines()
            .find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, ctrl, path) = (f.next()?, f.next()?, f.next()?);
                ctrl.split(',')
                    .any(|c| c == "blkio")
                    .then(|| path.to_string())
            })
            .unwrap_or_default();
        if !rig.cgroup_path.ends_with(&format!("/{cg_name}")) {
            let exited = rig.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            panic!(
                "dstate_rig: writer {pid} is not in the blkio cgroup {cg_name} (writer exit \
                 status {exited:?}); /proc/{pid}/cgroup:\n{cgroups}\n{}",
                rig.diagnostics()
            );
        }
        {
            let stdin = rig.stdin.as_mut().expect("writer stdin");
            stdin
                .write_all(b"go\n")
                .and_then(|()| stdin.flush())
                .expect("release the writer");
        }

        // Wait for the threads to be in D.
        let released = Instant::now();
        let deadline = released + START_TIMEOUT;
        loop {
            if rig.d_threads_now() >= threads {
                eprintln!(
                    "dstate_rig: {threads} threads of pid {pid} in D {} ms after release ({} ms \
                     after start; /dev/{name}, {iops} write iops, blkio {})",
                    released.elapsed().as_millis(),
                    t0.elapsed().as_millis(),
                    rig.cgroup_path
                );
                return rig;
            }
            let exited = rig.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                panic!(
                    "dstate_rig: wanted {threads} threads in D within {START_TIMEOUT:?}, writer \
                     exit status {exited:?}\n{}",
                    rig.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The writer process's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("writer running")
    }

    /// The writer's thread ids whose comm is `HOSTILE_COMM` (the main thread is not one).
    pub fn tids(&self) -> Vec<u32> {
        let mut want = self.comm.to_vec();
        want.push(b'\n'); // /proc/<pid>/task/<tid>/comm ends with a newline of its own
        let mut tids: Vec<u32> = self
            .threads()
            .into_iter()
            .filter(|tid| {
                std::fs::read(format!("/proc/{}/task/{tid}/comm", self.pid()))
                    .ok()
                    .as_deref()
                    == Some(&want[..])
            })
            .collect();
        tids.sort_unstable();
        tids
    }

    /// The loop device's name, e.g. "loop3".
    pub fn loop_device(&self) -> String {
        self.loop_dev.clone().expect("loop device attached")
    }

    /// The cgroup path as /proc/<pid>/cgroup shows it for blkio, e.g. "/stallwatch-test-1234-0".
    pub fn cgroup_path(&self) -> String {
        self.cgroup_path.clone()
    }

    /// The cgroup's directory, e.g. "/sys/fs/cgroup/blkio/stallwatch-test-1234-0".
    pub fn cgroup_dir(&self) -> PathBuf {
        self.cgroup_dir.clone()
    }

    /// Where the loop device's ext4 is mounted.
    pub fn mount_point(&self) -> PathBuf {
        self.mnt.clone()
    }

    /// The loop device's backing file (as `losetup -a` lists it).
    pub fn backing_file(&self) -> PathBuf {
        self.image.clone()
    }

    /// How many of the writer's threads are in state D right now, from /proc/<pid>/task/*/stat.
    pub fn d_threads_now(&self) -> usize {
        let Some(pid) = self.child.as_ref().map(Child::id) else {
            return 0;
        };
        self.threads()
            .into_iter()
            .filter(|tid| task_state(pid, *tid) == Some(b'D'))
            .count()
    }

    /// Removes the throttle and tells the writers to rest: each thread ends the write in flight
    /// (at once, now unthrottled) and waits in S. They must stop writing, not just write fast:
    /// a loop of unthrottled writes still spends most of its time in D when the disk under the
    /// loop device is busy (a CI run with other tests writing beside it kept 2–4 of them in D).
    pub fn lift(&self) {
        if let Err(e) = self.try_lift() {
            panic!("dstate_rig: lift: {e}");
        }
        if let Some(mut stdin) = self.stdin.as_ref() {
            stdin
                .write_all(b"rest\n")
                .and_then(|()| stdin.flush())
                .unwrap_or_else(|e| panic!("dstate_rig: tell the writer to rest: {e}"));
        }
    }

    /// Changes the throttle to `iops` writes per second (the cloud scenario plays an EBS volume
    /// that drops to its baseline when its credits run out).
    #[allow(dead_code)] // used by the cloud scenario only
    pub fn set_write_iops(&self, iops: u32) {
        let (Some(_), Some((maj, min))) = (&self.cgroup, self.devnum) else {
            panic!("dstate_rig: set_write_iops before the rig was built");
        };
        self.blkio()
            .throttle_write_iops_for_device(maj, min, u64::from(iops))
            .unwrap_or_else(|e| panic!("dstate_rig: write_iops {maj}:{min} {iops}: {e}"));
    }

    fn try_lift(&self) -> Result<(), String> {
        let (Some(_), Some((maj, min))) = (&self.cgroup, self.devnum) else {
            return Ok(());
        };
        // "MAJ:MIN 0" deletes the rule in v1.
        self.blkio()
            .throttle_write_iops_for_device(maj, min, 0)
            .map_err(|e| {
                format!(
                    "write_iops {maj}:{min} 0 in {}: {e}",
                    self.cgroup_dir.display()
                )
            })
    }

    fn blkio(&self) -> &BlkIoController {
        self.cgroup
            .as_ref()
            .and_then(|c| c.controller_of::<BlkIoController>())
            .expect("blkio controller in the rig's cgroup")
    }

    fn threads(&self) -> Vec<u32> {
        let Some(pid) = self.child.as_ref().map(Child::id) else {
            return Vec::new();
        };
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Per-thread state, wchan and comm, the throttle, its counters and the writer's stderr.
    fn diagnostics(&self) -> String {
        let mut s = String::new();
        if let Some(pid) = self.child.as_ref().map(Child::id) {
            for tid in self.threads() {
                let stat =
                    std::fs::read(format!("/proc/{pid}/task/{tid}/stat")).unwrap_or_default();
                let wchan = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/wchan"))
                    .unwrap_or_default();
                s += &format!(
                    "  tid {tid}: state {:?} wchan {wchan:?} stat {:?}\n",
                    task_state(pid, tid).map(char::from),
                    String::from_utf8_lossy(&stat)
                );
            }
        }
        for f in [
            "blkio.throttle.write_iops_device",
            "blkio.throttle.io_serviced",
            "cgroup.procs",
        ] {
            let text = std::fs::read_to_string(self.cgroup_dir.join(f)).unwrap_or_default();
            s += &format!("  {f}: {:?}\n", text.trim());
        }
        s += &format!(
            "  writer stderr: {:?}\n",
            std::fs::read_to_string(&self.stderr_file).unwrap_or_default()
        );
        s
    }
}

/// The state letter of /proc/<pid>/task/<tid>/stat: the field after the LAST ')' (the comm may
/// contain ')' and spaces).
fn task_state(pid: u32, tid: u32) -> Option<u8> {
    let stat = std::fs::read(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    let close = stat.iter().rposition(|&b| b == b')')?;
    stat.get(close + 2).copied()
}

/// Runs a command to success and returns its stdout, or panics with its stderr.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

mod teardown;
#[cfg(test)]
mod tests;
