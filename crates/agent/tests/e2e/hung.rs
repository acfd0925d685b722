//! `HungDisk`: a REAL hung filesystem, the NFS/EFS or stuck-EBS case. Needs root.
//!
//! How: ext4 on a loop device whose backing file lives on a tiny FUSE filesystem
//! (`tests/fuse/onefile.c`, one file passed through to a sparse image, opened with `direct_io`
//! so every loop-device I/O becomes a request to the daemon). `SIGSTOP` on the daemon makes
//! every I/O of that ext4 that is not served from cache wait in D state — a `stat` of a
//! directory not looked up since the mount, an `O_DSYNC` write, an `O_DIRECT` write — and
//! `SIGCONT` resumes them. Measured here: a cold `stat` waits in `__ext4_find_entry`.
//!
//! Everything happens in a private mount namespace held by a `sleep` process of our own (made
//! with `unshare(CLONE_NEWNS)` and `MS_PRIVATE` before it execs): nothing else on the machine
//! sees these mounts, so no other test's `df`, mount-table walk or `stat` of `/tmp` runs into the
//! hang. Commands that must see the hung filesystem (the agent under test, `check-config`, …)
//! are started inside it with [`HungDisk::enter`] (`setns` in the child before exec), so their
//! pid is the real one (signals, `/proc/<pid>`) and nothing else about them changes.
//!
//! Caches: `start` creates the requested directories, then unmounts and mounts again on a new
//! loop device (util-linux's `mount -o loop` detaches the old one on unmount), so nothing of
//! the filesystem is cached: the first lookup of each directory goes to the disk.
//!
//! What a namespace cannot isolate: a global `sync(2)` elsewhere walks every superblock, so
//! while the disk is hung with writes pending (a probe's `O_DSYNC` write) such a `sync` waits
//! too. Keep hangs short (seconds); [`HungDisk::hang`] leaves nothing dirty of its own.
//!
//! Cleanup (`Drop`, also after a panic): `SIGCONT` first (so every waiter finishes), kill and
//! reap the processes that were stuck, unmount ext4 (the loop device goes with it), unmount the
//! FUSE filesystem, stop the daemon and the namespace holder. If the test process itself is
//! killed, the daemon and holder die with it (`PR_SET_PDEATHSIG`): killing a FUSE daemon aborts
//! its connection, so the stuck I/O fails with EIO instead of hanging forever, and the
//! namespace with its mounts goes away with its last process.

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::repo;

/// Size of the sparse ext4 image.
const IMAGE_BYTES: u64 = 64 << 20;

pub struct HungDisk {
    dir: Option<tempfile::TempDir>,
    /// The ext4 mount point (visible only inside the namespace).
    pub mnt: PathBuf,
    fuse_mnt: PathBuf,
    holder: Option<Child>,
    /// `/proc/<holder>/ns/mnt`, open for `setns`.
    ns: Option<File>,
    daemon: Option<Child>,
    ext4_mounted: bool,
    fuse_mounted: bool,
    stopped: Cell<bool>,
    /// When `hang` sent SIGSTOP (the stall's start, for time-to-detect checks).
    stopped_at: Cell<Option<Instant>>,
    /// Processes that may be waiting on the hung disk: killed and reaped after `SIGCONT`.
    stragglers: RefCell<Vec<Child>>,
}

fn pdeathsig(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; it only sets a flag of the child.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

impl HungDisk {
    /// Builds the rig with `dirs` (relative paths) created on the ext4 filesystem and nothing
    /// cached. Panics with a clear message when something is missing (root, /dev/fuse,
    /// libfuse3-dev: `make test-deps` installs it).
    pub fn start(dirs: &[&str]) -> HungDisk {
        let dir = tempfile::Builder::new()
            .prefix(&format!("stallwatch-hung-{}-", std::process::id()))
            .tempdir()
            .expect("tempdir");
        let mut rig = HungDisk {
            mnt: dir.path().join("mnt"),
            fuse_mnt: dir.path().join("fuse"),
            dir: Some(dir),
            holder: None,
            ns: None,
            daemon: None,
            ext4_mounted: false,
            fuse_mounted: false,
            stopped: Cell::new(false),
            stopped_at: Cell::new(None),
            stragglers: RefCell::new(Vec::new()),
        };
        let base = rig.base().to_path_buf();
        std::fs::create_dir(&rig.mnt).unwrap();
        std::fs::create_dir(&rig.fuse_mnt).unwrap();
        let image = base.join("disk.img");
        File::create(&image)
            .and_then(|f| f.set_len(IMAGE_BYTES))
            .expect("sparse image");
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
            .arg(&image));
        let daemon_bin = base.join("onefile");
        let flags = run(Command::new("pkg-config").args(["--cflags", "--libs", "fuse3"]));
        run(Command::new("gcc")
            .args(["-Wall", "-O2"])
            .arg(repo().join("tests/fuse/onefile.c"))
            .args(flags.split_whitespace())
            .arg("-o")
            .arg(&daemon_bin));

        // The namespace holder: unshare and make every mount private before exec, so the
        // namespace exists once spawn returns.
        let mut holder = Command::new("sleep");
        holder.arg("100000").stdin(Stdio::null());
        pdeathsig(&mut holder);
        // SAFETY: unshare and mount are async-signal-safe system calls; the strings are
        // static NUL-terminated literals.
        unsafe {
            holder.pre_exec(|| {
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let root = b"/\0";
                if libc::mount(
                    std::ptr::null(),
                    root.as_ptr().cast(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let holder = holder
            .spawn()
            .expect("private mount namespace (needs root)");
        let ns = File::open(format!("/proc/{}/ns/mnt", holder.id())).expect("open ns/mnt");
        rig.holder = Some(holder);
        rig.ns = Some(ns);

        // The FUSE daemon, in the namespace.
        let mut daemon = rig.command(&daemon_bin);
        daemon
            .arg(&image)
            .arg(&rig.fuse_mnt)
            .args(["-f", "-s", "-o", "fsname=stallwatch-hung"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        pdeathsig(&mut daemon);
        rig.daemon = Some(daemon.spawn().expect("start the FUSE daemon"));
        let fuse_mnt = rig.fuse_mnt.clone();
        rig.wait_mounted(&fuse_mnt, "the FUSE filesystem");
        rig.fuse_mounted = true;

        // ext4 on a loop device over the FUSE file; make the directories; then a cold mount.
        let disk = rig.fuse_mnt.join("disk.img");
        rig.mount_ext4(&disk);
        let mut mkdir = rig.command(Path::new("mkdir"));
        mkdir.arg("-p");
        for d in dirs {
            mkdir.arg(rig.mnt.join(d));
        }
        mkdir.arg(rig.mnt.join("canary"));
        run(&mut mkdir);
        run(rig
            .command(Path::new("dd"))
            .args(["if=/dev/zero", "bs=4096", "count=1", "status=none"])
            .arg(format!("of={}", rig.mnt.join("canary/file").display())));
        run(rig.command(Path::new("umount")).arg(&rig.mnt));
        rig.ext4_mounted = false;
        rig.mount_ext4(&disk);
        rig
    }

    fn base(&self) -> &Path {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .unwrap_or(Path::new("/"))
    }

    fn mount_ext4(&mut self, disk: &Path) {
        run(self
            .command(Path::new("mount"))
            .args(["-t", "ext4", "-o", "loop"])
            .arg(disk)
            .arg(&self.mnt));
        self.ext4_mounted = true;
    }

    /// The mount table of the namespace, as `(mount point, fs type, source)`.
    fn mounts(&self) -> Vec<(String, String, String)> {
        let pid = self.holder.as_ref().map_or(0, |h| h.id());
        let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let (pre, post) = l.split_once(" - ")?;
                let mp = pre.split(' ').nth(4)?.to_string();
                let mut p = post.split(' ');
                Some((mp, p.next()?.to_string(), p.next()?.to_string()))
            })
            .collect()
    }

    fn wait_mounted(&self, at: &Path, what: &str) {
        let at = at.to_string_lossy().into_owned();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.mounts().iter().any(|(mp, _, _)| *mp == at) {
            assert!(Instant::now() < deadline, "{what} did not appear at {at}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The loop device under the ext4 mount ("loop3").
    pub fn loop_device(&self) -> String {
        let mnt = self.mnt.to_string_lossy().into_owned();
        self.mounts()
            .into_iter()
            .find(|(mp, fs, _)| *mp == mnt && fs == "ext4")
            .and_then(|(_, _, src)| src.strip_prefix("/dev/").map(str::to_string))
            .expect("ext4 mount of the rig")
    }

    /// `rel` on the hung filesystem (a path only processes inside the namespace can use).
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Makes `cmd` start inside the rig's mount namespace.
    pub fn enter(&self, cmd: &mut Command) {
        let fd = self.ns.as_ref().expect("namespace").as_raw_fd();
        // SAFETY: setns is an async-signal-safe system call on a descriptor we keep open
        // until after spawn returns (the child has its copy; CLOEXEC only closes it at exec).
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// A command for `program` that runs inside the namespace.
    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        self.enter(&mut c);
        c
    }

    /// Stops the FUSE daemon and proves the hang: an `O_DIRECT` write of the canary file (it
    /// always reaches the device) must still be waiting in D a second later.
    pub fn hang(&self) {
        assert!(!self.stopped.get(), "already hung");
        // Nothing of ours left to write back: a global sync elsewhere need not wait on us.
        run(self.command(Path::new("sync")).arg("-f").arg(&self.mnt));
        self.signal_daemon(libc::SIGSTOP);
        self.stopped_at.set(Some(Instant::now()));
        self.stopped.set(true);
        let mut canary = self.command(Path::new("dd"));
        canary
            .args([
                "if=/dev/zero",
                "bs=4096",
                "count=1",
                "oflag=direct",
                "conv=notrunc",
            ])
            .arg(format!("of={}", self.path("canary/file").display()))
            .args(["status=none"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = canary.spawn().expect("canary write");
        std::thread::sleep(Duration::from_secs(1));
        let waiting = child.try_wait().ok().flatten().is_none();
        let state = state_of(child.id());
        self.stragglers.borrow_mut().push(child);
        assert!(
            waiting && state == Some('D'),
            "the rig is not hung: a direct write returned or is not in D (state {state:?})"
        );
    }

    /// When the last [`HungDisk::hang`] stopped the daemon.
    pub fn stopped_at(&self) -> Option<Instant> {
        self.stopped_at.get()
    }

    /// Lets the daemon answer again; everything waiting finishes.
    pub fn resume(&self) {
        if self.stopped.get() {
            self.signal_daemon(libc::SIGCONT);
            self.stopped.set(false);
        }
    }

    /// A guard that sends `SIGCONT` to the daemon when dropped. Declare it *after* anything
    /// whose drop waits for a process that may be stuck on the disk (the harness's `Agent`
    /// kills and then waits for its child): locals drop in reverse order, so the disk resumes
    /// first and that wait ends, even when the test panics.
    pub fn resume_on_drop(&self) -> ResumeOnDrop {
        ResumeOnDrop(self.daemon.as_ref().map(|d| d.id()))
    }

    fn signal_daemon(&self, sig: i32) {
        if let Some(d) = &self.daemon {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(d.id() as i32, sig) };
        }
    }
}

impl Drop for HungDisk {
    fn drop(&mut self) {
        self.resume();
        for mut c in self.stragglers.borrow_mut().drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.ext4_mounted {
            let ok = self
                .command(Path::new("umount"))
                .arg(&self.mnt)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = self
                    .command(Path::new("umount"))
                    .arg("-l")
                    .arg(&self.mnt)
                    .status();
            }
        }
        if self.fuse_mounted {
            let _ = self
                .command(Path::new("umount"))
                .arg(&self.fuse_mnt)
                .status();
        }
        for c in [self.daemon.take(), self.holder.take()]
            .into_iter()
            .flatten()
        {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
        self.ns = None;
        // The tempdir goes last: its subdirectories were mount points only in the namespace.
        self.dir.take();
    }
}

pub struct ResumeOnDrop(Option<u32>);

impl Drop for ResumeOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // SAFETY: kill(2) on the rig's daemon (our child, not yet reaped: the rig outlives
            // this guard).
            unsafe { libc::kill(pid as i32, libc::SIGCONT) };
        }
    }
}

/// What a command run with [`run_bounded`] did.
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

/// Runs `cmd` with its output captured, for at most `limit`. A command still running then
/// (stuck on the hung disk) is sent SIGKILL — it dies once the disk resumes — and the test
/// fails naming it.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Ran {
    let t = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(out)) => Ran {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            took: t.elapsed(),
        },
        Ok(Err(e)) => panic!("{cmd:?}: {e}"),
        Err(_) => {
            // SAFETY: kill(2) on our own child's pid (not reaped: its waiter is still waiting).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!(
                "{cmd:?} did not finish within {limit:?} (state {:?}): it hangs on the hung disk",
                state_of(pid)
            );
        }
    }
}

/// The state letter of a process (`/proc/<pid>/stat`, after the comm).
pub fn state_of(pid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Runs `cmd` to completion, returning its stdout; panics with its stderr on failure.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: cannot start: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits up to `limit` for `child` to exit; `None` (child still running) after that.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_rig_hangs_a_cold_stat_in_d_and_resumes_it() {
    if !crate::harness::require_root("the_rig_hangs_a_cold_stat_in_d_and_resumes_it") {
        return;
    }
    let rig = HungDisk::start(&["a/cold"]);
    assert!(rig.loop_device().starts_with("loop"));
    // Invisible outside the namespace.
    let here = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!here.contains(&rig.mnt.to_string_lossy().into_owned()));
    rig.hang();
    let mut stat = rig.command(Path::new("stat"));
    stat.arg(rig.path("a/cold")).stdout(Stdio::null());
    let mut child = stat.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(state_of(child.id()), Some('D'), "a cold stat waits in D");
    rig.resume();
    let status =
        wait_exit(&mut child, Duration::from_secs(20)).expect("stat returns after SIGCONT");
    assert!(status.success());
}
