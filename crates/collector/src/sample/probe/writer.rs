//! The writer process: every probe write happens in a child process forked for that one
//! write, never in the agent's own threads.
//!
//! Why a process: a write to a hung disk sits in D state and cannot be interrupted, not even by
//! SIGKILL. A *thread* in D keeps the whole agent process alive after it has shut down (82 s
//! measured, issue 13), so a restart cannot finish during the very stall the agent exists to
//! report. A child in D is a different process: the agent's reader thread only waits on a
//! pipe (interruptible), so the agent exits at once; the child finishes (or stays in D) on
//! its own, and when its write returns it finds the pipe closed, removes its file and exits.
//!
//! Why a fork per write and not a resident child: nothing lives between writes (no process
//! per probe sitting in `ps`, no RSS of its own); the child is in the agent's cgroup *as of
//! the write*, so a blkio or io limit on the agent holds the probe write too, as it held the
//! probe thread before; and no second binary or hidden subcommand is needed. The cost is one
//! `fork` of the agent per write (page tables are copied, pages are shared copy-on-write):
//! measured in the probe's `stallwatch_source_cpu_seconds_total`, since the fork runs on the
//! source's reader thread.
//!
//! The child inherits a copy of every descriptor and signal handler of a multi-threaded
//! process, so before touching the probed filesystem it closes every descriptor but its report
//! pipe (a stuck child holding the agent's listening socket would keep a restarted agent from
//! binding its port), resets every signal handler, and ignores SIGTERM, SIGINT, SIGHUP and
//! SIGPIPE (a service manager signalling the whole group must not leave our file behind; the
//! child's life is one write anyway; SIGKILL still ends it). It then runs only
//! async-signal-safe code ([`super::attempt`]).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::warn;

use super::attempt::{self, errno, fill, Outcome, Plan, Report};
use super::FILE_NAME;

/// Counts the live writers, so that [`super::Probes::stop`] can wait (briefly) for them to
/// remove their files.
#[derive(Debug, Default)]
pub(super) struct Writers {
    live: Mutex<usize>,
    cv: Condvar,
}

impl Writers {
    fn add(&self) {
        *self.live.lock().unwrap_or_else(PoisonError::into_inner) += 1;
    }

    fn done(&self) {
        let mut n = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        *n = n.saturating_sub(1);
        self.cv.notify_all();
    }

    /// Waits until every writer is gone or `deadline` passes; returns how many are left (each
    /// has a write in flight, or its removal is).
    pub fn wait_idle(&self, deadline: Instant) -> usize {
        let mut n = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        while *n > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            n = self
                .cv
                .wait_timeout(n, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *n
    }
}

/// Test-only knobs for the writer process, carried through the sampler.
#[derive(Debug, Clone, Default)]
pub(super) struct Hooks {
    /// A write waits, after opening its file, until this path exists: a hung write in
    /// userspace, for tests that need one without a hung disk.
    #[cfg(test)]
    pub hold: Option<PathBuf>,
}

/// One attempt as the sampler sees it.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    pub outcome: Outcome,
    /// The write's own wall time (open to end of write), as the writer process timed it; the
    /// time the whole attempt took when the writer could not say.
    pub took: Duration,
}

/// One probe's writer, owned by the probe's reader thread: it forks the writer process for
/// each write, and on drop removes the probe's file (through a writer process as well: the
/// disk may be hung by then).
pub(super) struct Writer {
    /// The configured directory, for log lines.
    dir: PathBuf,
    /// `<dir>/.stallwatch-probe`.
    file: Option<CString>,
    buf: Vec<u8>,
    seq: u64,
    /// `(dev, ino)` of the file our writes found ours: only that file is ever removed.
    ours: Option<(u64, u64)>,
    writers: Arc<Writers>,
    #[cfg(test)]
    hold: Option<CString>,
}

impl Writer {
    pub fn new(dir: &Path, writers: Arc<Writers>, hooks: &Hooks) -> Writer {
        let _ = hooks; // only read in tests
        writers.add();
        Writer {
            dir: dir.to_path_buf(),
            // A path with a NUL byte cannot be opened; validation refuses it, and a writer
            // without a file reports every attempt as `other`.
            file: CString::new(dir.join(FILE_NAME).as_os_str().as_bytes()).ok(),
            buf: Vec::new(),
            seq: 0,
            ours: None,
            writers,
            #[cfg(test)]
            hold: hooks
                .hold
                .as_ref()
                .and_then(|p| CString::new(p.as_os_str().as_bytes()).ok()),
        }
    }

    /// One synchronous write of `size` bytes, in a writer process. Blocks this thread until the
    /// process reports, in an interruptible pipe read (never in D).
    pub fn write(&mut self, size: usize) -> Attempt {
        let started = Instant::now();
        let Some(file) = self.file.as_deref() else {
            return Attempt {
                outcome: Outcome::OpenFailed(libc::EINVAL),
                took: Duration::ZERO,
            };
        };
        self.seq = self.seq.wrapping_add(1);
        fill(&mut self.buf, size, self.seq);
        let plan = Plan {
            file,
            buf: &self.buf,
            #[cfg(test)]
            hold: self.hold.as_deref(),
        };
        let ran = in_child(
            || attempt::attempt_in_child(&plan),
            // Nobody reads the report: the probe was stopped or the agent has exited while
            // this write hung. Remove our file ourselves; nobody else will.
            |r: &Report| {
                if let Some((dev, ino)) = r.file() {
                    attempt::remove_own_in_child(file, dev, ino);
                }
            },
        );
        match ran {
            Ok(r) => {
                if r.file().is_some() {
                    self.ours = r.file();
                }
                Attempt {
                    outcome: r.outcome(),
                    took: r.took(),
                }
            }
            Err(outcome) => Attempt {
                outcome,
                took: started.elapsed(),
            },
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let (Some(file), Some((dev, ino))) = (self.file.as_deref(), self.ours) {
            let ran = in_child(
                || Report {
                    errno: attempt::remove_own_in_child(file, dev, ino),
                    ..Report::default()
                },
                |_| {},
            );
            let failed = match ran {
                Ok(r) if r.errno != 0 => {
                    Some(std::io::Error::from_raw_os_error(r.errno).to_string())
                }
                Ok(_) => None,
                Err(o) => Some(o.describe()),
            };
            if let Some(error) = failed {
                warn!(path = %self.dir.display(), error, "Cannot remove the probe file.");
            }
        }
        self.writers.done();
    }
}

/// Runs `body` in a forked child and returns its report. When the report cannot be delivered
/// (this side is gone), the child runs `orphaned` with it before it exits.
///
/// `body` and `orphaned` run in the child of a multi-threaded process: async-signal-safe code
/// only (see [`super::attempt`]).
fn in_child(
    body: impl FnOnce() -> Report,
    orphaned: impl FnOnce(&Report),
) -> Result<Report, Outcome> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`. CLOEXEC: a program another thread
    // starts (std's Command) must not inherit our pipe.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(Outcome::NoWriter(errno()));
    }
    let [rd, wr] = fds;
    // SAFETY: fork has no preconditions; what the child may do afterwards is restricted (see
    // above) and it never returns from this block.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let e = errno();
        // SAFETY: our own descriptors, closed once.
        unsafe {
            libc::close(rd);
            libc::close(wr);
        }
        return Err(Outcome::NoWriter(e));
    }
    if pid == 0 {
        // The child. Should anything in it unwind, it must not unwind into the caller's code
        // (the reader thread's loop, in a copy of the agent): the guard ends the process.
        let _exit_on_unwind = ExitOnDrop;
        // SAFETY: async-signal-safe calls only, on descriptors and settings of this process.
        unsafe {
            child_setup(wr);
            let r = body();
            if !send(wr, r.as_bytes()) {
                orphaned(&r);
            }
            libc::_exit(0);
        }
    }
    // SAFETY: the parent's copy of the write end; closed once, so that EOF means "the child
    // is gone" (other children forked meanwhile close their copies before anything else).
    unsafe { libc::close(wr) };
    let got = receive(rd);
    // SAFETY: our own descriptor, closed once.
    unsafe { libc::close(rd) };
    let status = reap(pid);
    got.ok_or_else(|| {
        let sig = if libc::WIFSIGNALED(status) {
            libc::WTERMSIG(status)
        } else {
            0
        };
        Outcome::WriterDied(sig)
    })
}

/// Ends the (child) process when dropped: only ever dropped by an unwind.
struct ExitOnDrop;

impl Drop for ExitOnDrop {
    fn drop(&mut self) {
        // SAFETY: _exit is async-signal-safe and ends this process without running anything
        // of the parent's.
        unsafe { libc::_exit(127) };
    }
}

/// Reads one report; `None` on EOF before a whole one (the child died first).
fn receive(rd: libc::c_int) -> Option<Report> {
    let mut buf = [0u8; Report::SIZE];
    let mut got = 0;
    while got < buf.len() {
        let rest = &mut buf[got..];
        // SAFETY: `rest` is valid for writes of its length.
        let n = unsafe { libc::read(rd, rest.as_mut_ptr().cast(), rest.len()) };
        if n < 0 && errno() == libc::EINTR {
            continue;
        }
        if n <= 0 {
            return None;
        }
        got += n as usize;
    }
    Some(Report::from_bytes(&buf))
}

/// Waits for the child (it exits right after its report). Returns its wait status (0 when it
/// cannot be had: someone else reaped it).
fn reap(pid: libc::pid_t) -> libc::c_int {
    let mut status = 0;
    loop {
        // SAFETY: waitpid on our own child, writing into `status`.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r < 0 && errno() == libc::EINTR {
            continue;
        }
        return if r == pid { status } else { 0 };
    }
}

/// Writes all of `bytes`; false when the reader is gone (EPIPE) or the pipe fails.
/// Async-signal-safe.
fn send(fd: libc::c_int, bytes: &[u8]) -> bool {
    let mut done = 0usize;
    while done < bytes.len() {
        // SAFETY: `done < len`, so the pointer and length stay inside `bytes`.
        let n = unsafe {
            libc::write(
                fd,
                bytes.as_ptr().add(done).cast(),
                bytes.len().saturating_sub(done),
            )
        };
        if n < 0 && errno() == libc::EINTR {
            continue;
        }
        if n <= 0 {
            return false;
        }
        done = done.saturating_add(n as usize);
    }
    true
}

/// The child's first steps (module docs): signals, descriptors, name.
///
/// # Safety
/// Only in a freshly forked child; `keep` is the report pipe's write end.
unsafe fn child_setup(keep: libc::c_int) {
    // SAFETY (whole function): async-signal-safe system calls on this process's own state.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = libc::SIG_DFL;
        // 1..65: every signal number of Linux (NSIG is 65); the two glibc keeps for itself
        // and the uncatchable ones just fail with EINVAL.
        for sig in 1..65 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
        }
        sa.sa_sigaction = libc::SIG_IGN;
        for sig in [libc::SIGPIPE, libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        close_all_but(keep);
        // `ps` and `stallwatch dstate` name it for what it is (15 bytes at most).
        libc::prctl(libc::PR_SET_NAME, c"sw-probe-write".as_ptr());
    }
}

/// Closes every descriptor but `keep`. Async-signal-safe.
fn close_all_but(keep: libc::c_int) {
    let keep = keep.max(0) as libc::c_uint;
    let range = |first: libc::c_uint, last: libc::c_uint| -> bool {
        // SAFETY: close_range only closes descriptors of this process.
        unsafe { libc::syscall(libc::SYS_close_range, first, last, 0 as libc::c_uint) == 0 }
    };
    let below = keep == 0 || range(0, keep - 1);
    if below && range(keep + 1, libc::c_uint::MAX) {
        return;
    }
    // Kernels before 5.9 have no close_range: one close per possible descriptor.
    // SAFETY: getrlimit writes into `lim`; close on any number is harmless.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    let max = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur.min(1 << 20) as libc::c_uint
    } else {
        1024
    };
    for fd in (0..max).filter(|&fd| fd != keep) {
        unsafe { libc::close(fd as libc::c_int) };
    }
}
