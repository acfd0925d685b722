//! One probe attempt, as the writer process makes it: open `<dir>/.stallwatch-probe` for
//! synchronous writes, refuse anything that is not a plain file of ours, rewrite `size` bytes
//! at offset 0, and time it; and the removal of our file at stop.
//!
//! Everything named `*_in_child` here runs in a child freshly forked from a multi-threaded
//! process ([`super::writer`]): another thread may have held the allocator's lock at the fork,
//! so this code is restricted to async-signal-safe system calls. No allocation, no locks, no
//! formatting, no panics (no indexing, no overflowing arithmetic); paths arrive pre-built as C
//! strings and the data buffer pre-filled.
//!
//! The file-safety rules (we run as root in directories we do not own, under a fixed name):
//! `O_NOFOLLOW` refuses a symlink; `O_NONBLOCK` makes a FIFO fail instead of blocking the open
//! (cleared before the write); a file that is not regular or has another hard link is never
//! written to (the check comes before any write, and there is no `O_TRUNC`); a leftover larger
//! file is trimmed to `size`, so the file never grows.

use std::ffi::CStr;
use std::time::Duration;

/// What the writer process sends back through its pipe: plain integers, so that the child can
/// send it with one `write(2)` and no encoding.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Report {
    /// One of the `STAGE_*` values.
    pub stage: u32,
    /// `errno` of the failed call, 0 on success.
    pub errno: i32,
    /// `st_dev` and `st_ino` of the file the attempt opened and found ours (0 when none).
    pub dev: u64,
    pub ino: u64,
    /// Wall time from the open to the end of the write, nanoseconds (`CLOCK_MONOTONIC`).
    pub nanos: u64,
}

const STAGE_OK: u32 = 0;
const STAGE_OPEN: u32 = 1;
const STAGE_NOT_OURS: u32 = 2;
const STAGE_WRITE: u32 = 3;

impl Report {
    pub const SIZE: usize = std::mem::size_of::<Report>();

    pub fn as_bytes(&self) -> &[u8; Report::SIZE] {
        // SAFETY: `Report` is `repr(C)`, made of integers only, with no padding (4 + 4 + 3×8
        // bytes, 8-aligned): every byte is initialised, and the array has its size.
        unsafe { &*(self as *const Report).cast::<[u8; Report::SIZE]>() }
    }

    pub fn from_bytes(b: &[u8; Report::SIZE]) -> Report {
        // SAFETY: any bit pattern is a valid `Report` (integers only); the read is unaligned-safe.
        unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<Report>()) }
    }

    /// The file this attempt wrote (or tried to write) and found ours.
    pub fn file(&self) -> Option<(u64, u64)> {
        (self.dev != 0 || self.ino != 0).then_some((self.dev, self.ino))
    }

    pub fn outcome(&self) -> Outcome {
        match self.stage {
            STAGE_OK => Outcome::Wrote,
            STAGE_OPEN => Outcome::OpenFailed(self.errno),
            STAGE_NOT_OURS => Outcome::NotOurs,
            STAGE_WRITE => Outcome::WriteFailed(self.errno),
            _ => Outcome::WriterDied(0),
        }
    }

    pub fn took(&self) -> Duration {
        Duration::from_nanos(self.nanos)
    }
}

/// How an attempt ended, as the sampler counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The write returned successfully.
    Wrote,
    /// Opening (or preparing) the file failed with this errno: not a write.
    OpenFailed(i32),
    /// Something that is not a plain, singly linked file of ours sits under our name: not
    /// written to, not a write.
    NotOurs,
    /// The write returned this errno: a write that returned, failed.
    WriteFailed(i32),
    /// The writer process could not be started (the errno of `pipe2` or `fork`).
    NoWriter(i32),
    /// The writer process ended without a report (killed by this signal; 0: unknown).
    WriterDied(i32),
}

impl Outcome {
    /// A write call returned (successfully or not): it goes into the latency histogram.
    pub fn wrote(self) -> bool {
        matches!(self, Outcome::Wrote | Outcome::WriteFailed(_))
    }

    /// The bounded `reason` label of a failure; `None` for a success.
    pub fn reason(self) -> Option<&'static str> {
        match self {
            Outcome::Wrote => None,
            Outcome::OpenFailed(e) | Outcome::WriteFailed(e) => Some(reason(e)),
            Outcome::NotOurs | Outcome::NoWriter(_) | Outcome::WriterDied(_) => Some("other"),
        }
    }

    /// For the log line.
    pub fn describe(self) -> String {
        let os = |e: i32| std::io::Error::from_raw_os_error(e).to_string();
        match self {
            Outcome::Wrote => "written".to_string(),
            Outcome::OpenFailed(e) => format!("opening: {}", os(e)),
            Outcome::NotOurs => {
                "not a regular file with a single link; not writing to it".to_string()
            }
            Outcome::WriteFailed(e) => format!("writing: {}", os(e)),
            Outcome::NoWriter(e) => format!("cannot start the writer process: {}", os(e)),
            Outcome::WriterDied(0) => "the writer process ended without a report".to_string(),
            Outcome::WriterDied(s) => {
                format!("the writer process was killed by signal {s} before it reported")
            }
        }
    }
}

/// Maps an errno to its bounded `reason` label.
pub(super) fn reason(errno: i32) -> &'static str {
    match errno {
        // EDQUOT is "no space for this user": for the probe, the same thing as ENOSPC.
        libc::ENOSPC | libc::EDQUOT => "enospc",
        libc::EIO => "eio",
        libc::EACCES | libc::EPERM => "permission",
        libc::EROFS => "readonly",
        libc::ENOENT => "notfound",
        _ => "other",
    }
}

/// What one attempt writes, prepared by the parent before the fork.
pub(super) struct Plan<'a> {
    /// `<dir>/.stallwatch-probe`.
    pub file: &'a CStr,
    /// Exactly `size` bytes.
    pub buf: &'a [u8],
    /// Tests only: after the open, wait until this path exists before writing (a hung write,
    /// held in userspace).
    #[cfg(test)]
    pub hold: Option<&'a CStr>,
}

/// The attempt. Runs in the forked writer process: async-signal-safe only (module docs).
pub(super) fn attempt_in_child(plan: &Plan<'_>) -> Report {
    let t0 = now_ns();
    let mut r = Report::default();
    let fail = |r: &mut Report, stage: u32, fd: Option<libc::c_int>| {
        r.stage = stage;
        r.errno = errno();
        r.nanos = now_ns().saturating_sub(t0);
        if let Some(fd) = fd {
            // SAFETY: our own descriptor, closed once.
            unsafe { libc::close(fd) };
        }
    };
    // SAFETY: `file` is a valid NUL-terminated string; open has no other preconditions.
    let fd = unsafe {
        libc::open(
            plan.file.as_ptr(),
            libc::O_WRONLY
                | libc::O_CREAT
                | libc::O_NOFOLLOW
                | libc::O_NONBLOCK
                | libc::O_DSYNC
                | libc::O_CLOEXEC,
            0o600 as libc::c_uint,
        )
    };
    if fd < 0 {
        fail(&mut r, STAGE_OPEN, None);
        return r;
    }
    // SAFETY: a zeroed `stat` is a valid out-parameter; `fd` is open.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        fail(&mut r, STAGE_OPEN, Some(fd));
        return r;
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_nlink != 1 {
        fail(&mut r, STAGE_NOT_OURS, Some(fd));
        r.errno = 0;
        return r;
    }
    r.dev = st.st_dev;
    r.ino = st.st_ino;
    // SAFETY: fcntl on our open descriptor.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        fail(&mut r, STAGE_OPEN, Some(fd));
        return r;
    }
    let size = plan.buf.len();
    let len = libc::off_t::try_from(size).unwrap_or(libc::off_t::MAX);
    // SAFETY (both): plain system calls on our open descriptor.
    if st.st_size > len && unsafe { libc::ftruncate(fd, len) } != 0 {
        fail(&mut r, STAGE_OPEN, Some(fd));
        return r;
    }
    if st.st_mode & 0o7777 != 0o600 {
        // An adopted leftover, or a file someone else made: our mode, best effort (the
        // content is random bytes; a failure here is not worth failing the probe for).
        unsafe { libc::fchmod(fd, 0o600) };
    }
    #[cfg(test)]
    if let Some(hold) = plan.hold {
        // SAFETY: a valid NUL-terminated path; access and nanosleep are async-signal-safe.
        while unsafe { libc::access(hold.as_ptr(), libc::F_OK) } != 0 {
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 2_000_000,
            };
            unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
        }
    }
    // Offset 0 every time: the file never grows beyond `size`, and after the first write no
    // block allocation or size update is part of the measurement.
    let mut done: usize = 0;
    while done < size {
        let left = size - done;
        // SAFETY: `done < size == buf.len()`, so the pointer and length stay inside `buf`.
        let n = unsafe {
            libc::pwrite(
                fd,
                plan.buf.as_ptr().add(done).cast(),
                left,
                done as libc::off_t,
            )
        };
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            fail(&mut r, STAGE_WRITE, Some(fd));
            return r;
        }
        if n == 0 {
            // Cannot happen for a regular file; never spin on it.
            fail(&mut r, STAGE_WRITE, Some(fd));
            r.errno = libc::EIO;
            return r;
        }
        done = done.saturating_add(n as usize);
    }
    r.nanos = now_ns().saturating_sub(t0);
    // SAFETY: our own descriptor, closed once.
    unsafe { libc::close(fd) };
    r
}

/// Removes `file` if it is still the one we wrote (`dev`, `ino`): a successor probe on the
/// same path, after a reload or a restart, may have created a new one. Returns the errno of a
/// failed removal (0: removed, or not ours to remove). Async-signal-safe: it runs in a writer
/// process too (module docs).
pub(super) fn remove_own_in_child(file: &CStr, dev: u64, ino: u64) -> i32 {
    // SAFETY: a valid NUL-terminated path and a zeroed out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::lstat(file.as_ptr(), &mut st) } != 0 {
        return 0; // gone already (or the directory is): nothing of ours to remove
    }
    if st.st_dev != dev || st.st_ino != ino {
        return 0;
    }
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::unlink(file.as_ptr()) } != 0 && errno() != libc::ENOENT {
        return errno();
    }
    0
}

/// Fills `buf` with `size` bytes of incompressible data, stamped with `seq`. Not zeroes (as dd
/// did): ZFS and btrfs with compression, and thin-provisioned or deduplicating storage, turn
/// zero blocks into holes and would skip the very I/O we time. The per-write stamp every
/// 4 KiB makes each block differ from its previous content, so a filesystem that skips
/// rewrites of identical blocks (ZFS nopwrite) cannot either. Runs in the parent.
pub(super) fn fill(buf: &mut Vec<u8>, size: usize, seq: u64) {
    if buf.len() != size {
        buf.clear();
        buf.reserve_exact(size);
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        while buf.len() < size {
            // xorshift64: cheap, and plenty for "not compressible".
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let take = (size - buf.len()).min(8);
            buf.extend_from_slice(&x.to_le_bytes()[..take]);
        }
    }
    let stamp = seq.to_le_bytes();
    for block in buf.chunks_mut(4096) {
        let n = block.len().min(8);
        block[..n].copy_from_slice(&stamp[..n]);
    }
}

/// `errno` of the last failed call (reads a thread-local; async-signal-safe).
pub(super) fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// `CLOCK_MONOTONIC` in nanoseconds (async-signal-safe).
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec.max(0) as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec.max(0) as u64)
}
