//! Reading the small files of cgroup directories cheaply, for a pass over hundreds of
//! containers (a profile of one pass at 200 containers here: three quarters of its CPU was
//! `open`, `read` and `close` of ~30 files per container, a fifth of it the kernfs lookups of
//! full paths like `/sys/fs/cgroup/memory/docker/<id>/memory.stat`).
//!
//! - A container's directory in a hierarchy is opened once per pass as an `O_PATH` handle
//!   ([`Dir`]: no file is opened, nothing is read; absent means the container has no cgroup
//!   there), and its files are opened relative to it (`openat`): a one-component lookup.
//! - One buffer serves every read of a pass ([`Files`]): no `statx` for a size hint and no
//!   allocation per file, and a read shorter than the room left is the end of the file (a
//!   seq_file read returns everything it formatted up to the size asked), so a small file is
//!   one `read`, not two.
//! - Kept across passes: the `O_PATH` directory handles ([`Files::dir`]), up to a share of the
//!   descriptor limit ([`keep_limit`]). An `O_PATH` handle holds a descriptor and a `struct
//!   file` (no kernel buffer): ~6 per container (five v1 hierarchies and the unified one),
//!   1,200 at 200 containers, which saves 6 of the ~21 opens per container per pass (a
//!   profile at 200 containers: opening and closing were half of the pass's CPU). A handle
//!   not used by a pass is closed at the next. A container restarted under the same path has
//!   a new cgroup there, and the kept handle is the removed one's: a file not found through a
//!   kept handle opens the path again once, and a different directory there replaces it
//!   (kernfs gives each directory its own inode number).
//! - Not kept: open files across passes. `pread` at offset 0 restarts a seq_file, but every
//!   open cgroup file holds a page of kernel buffer and a descriptor: ~15 per container, so
//!   3,000 descriptors and ~12 MB of kernel memory at 200 containers.

use std::collections::HashMap;
use std::ffi::CStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::cgroup::StatError;
use crate::error::{Error, ParseError};

/// A cgroup directory, open as a handle for `openat`.
#[derive(Debug)]
pub(crate) struct Dir {
    fd: OwnedFd,
    path: PathBuf,
    /// Its inode number (kernfs: the node's id, new for a directory made again at the same
    /// path), learnt when it is kept ([`Dir::learn_ino`]); 0 otherwise.
    ino: u64,
}

impl Dir {
    /// Opens `path`; `None` when it does not exist (the container has no cgroup in this
    /// hierarchy, or went away). Any other failure is pushed to `errors` (and is `None`).
    pub fn open(path: PathBuf, errors: &mut Vec<StatError>) -> Option<Dir> {
        Self::open_at(None, &path, path.as_os_str().as_bytes(), errors)
    }

    /// Opens `name` (relative) in the directory `at`, or `name` as it is without `at`;
    /// `path` names it in errors.
    fn open_at(
        at: Option<&OwnedFd>,
        path: &Path,
        name: &[u8],
        errors: &mut Vec<StatError>,
    ) -> Option<Dir> {
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
        match open_raw(at, name, flags) {
            Ok(fd) => Some(Dir {
                fd,
                path: path.to_path_buf(),
                ino: 0,
            }),
            Err(e) => {
                if !gone(&e) {
                    errors.push(
                        Error::Io {
                            path: path.to_path_buf(),
                            source: e,
                        }
                        .into(),
                    );
                }
                None
            }
        }
    }

    /// Fills in [`Dir::ino`] (`fstat` of the handle).
    fn learn_ino(&mut self) {
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: `fd` is open; `st` is written by the kernel on success only, and read then.
        if unsafe { libc::fstat(self.fd.as_raw_fd(), st.as_mut_ptr()) } == 0 {
            // SAFETY: fstat succeeded and filled `st`.
            self.ino = unsafe { st.assume_init() }.st_ino;
        }
    }

    fn open_file(&self, name: &CStr) -> io::Result<File> {
        openat(self.fd.as_raw_fd(), name, libc::O_RDONLY | libc::O_CLOEXEC).map(File::from)
    }

    fn path_of(&self, name: &CStr) -> PathBuf {
        self.path.join(std::ffi::OsStr::from_bytes(name.to_bytes()))
    }
}

/// `openat(at, name)`, or `open(name)` without `at`.
fn open_raw(at: Option<&OwnedFd>, name: &[u8], flags: libc::c_int) -> io::Result<OwnedFd> {
    let mut c = Vec::with_capacity(name.len() + 1);
    c.extend_from_slice(if name.is_empty() { b"." } else { name });
    c.push(0);
    // An interior NUL (not a name the kernel could have) is InvalidInput.
    let name = CStr::from_bytes_with_nul(&c).map_err(|_| io::ErrorKind::InvalidInput)?;
    openat(at.map_or(libc::AT_FDCWD, AsRawFd::as_raw_fd), name, flags)
}

/// `openat(2)`: `at` an open directory or `AT_FDCWD`.
fn openat(at: libc::c_int, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated; `at` is an open directory or AT_FDCWD.
    let fd = unsafe { libc::openat(at, name.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Not an error: the file does not exist (`ENOENT`), its cgroup was removed under us
/// (`ENODEV`), or it is disabled (`EOPNOTSUPP`, e.g. PSI with `cgroup.pressure` 0).
fn gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::EOPNOTSUPP)
    )
}

/// The reading context of a pass: one buffer, and which v1 hierarchies are one (a
/// `cpu,cpuacct` mount reached as both `cpu` and `cpuacct`).
#[derive(Debug, Default)]
pub(crate) struct Files {
    buf: Vec<u8>,
    canonical: HashMap<PathBuf, Option<PathBuf>>,
    /// Hierarchy roots opened in this pass: containers' directories are opened relative to
    /// them, a walk of `docker/<id>` instead of `/sys/fs/cgroup/memory/docker/<id>` (and its
    /// two mount crossings).
    roots: HashMap<PathBuf, Option<OwnedFd>>,
    /// Containers' directories kept open across passes, by full path, with the pass that last
    /// used each.
    kept: HashMap<PathBuf, Kept>,
    /// At most this many kept (`None`: not worked out yet; [`keep_limit`]).
    keep_max: Option<usize>,
    pass: u64,
    /// Files asked for so far, found or not (tests count them).
    pub reads: u64,
    /// Directories opened so far (kept ones count once; tests count them).
    pub dir_opens: u64,
}

/// A directory handle kept across passes.
#[derive(Debug)]
struct Kept {
    dir: Arc<Dir>,
    /// The pass that last used it.
    used: u64,
    /// The pass that last opened its path again to see whether it is still the directory there.
    checked: u64,
}

/// How many directory handles a pass may keep open: a quarter of the soft descriptor limit
/// (the agent raises it to the hard limit at start; the HTTP server, the sources and the
/// eBPF maps share the rest), at most 16,384 (2,700 containers' worth).
pub(crate) fn keep_limit() -> usize {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 0;
    }
    usize::try_from(r.rlim_cur / 4)
        .unwrap_or(usize::MAX)
        .min(16_384)
}

/// Room for the largest cgroup file read per pass (`memory.stat`, ~1.5 KiB) many times over.
const BUF: usize = 16 << 10;

impl Files {
    /// Forgets what it learned of the mounts, and closes the directories the last pass did
    /// not use (call at the start of each pass).
    pub fn begin_pass(&mut self) {
        self.canonical.clear();
        self.roots.clear();
        let last = self.pass;
        self.kept.retain(|_, k| k.used == last);
        self.pass += 1;
    }

    /// The directory `rel` (`/docker/<id>`) of the hierarchy mounted at `root`, kept open from
    /// an earlier pass or opened now (and kept while there is room).
    pub fn dir(&mut self, root: &Path, rel: &str, errors: &mut Vec<StatError>) -> Option<Arc<Dir>> {
        let path = crate::cgroup::join(root, rel);
        if let Some(k) = self.kept.get_mut(&path) {
            k.used = self.pass;
            return Some(Arc::clone(&k.dir));
        }
        let mut d = self.open_dir(root, rel, path, errors)?;
        let max = *self.keep_max.get_or_insert_with(keep_limit);
        if self.kept.len() >= max {
            return Some(Arc::new(d));
        }
        d.learn_ino();
        let d = Arc::new(d);
        let k = Kept {
            dir: Arc::clone(&d),
            used: self.pass,
            checked: 0,
        };
        self.kept.insert(d.path.clone(), k);
        Some(d)
    }

    /// A file was not found through `dir`: when `dir` is a kept handle, the directory at its
    /// path may be another one now (the container restarted: its cgroup was removed and made
    /// again), so the path is opened again, at most once per pass. The new directory to read
    /// from instead; `None` when it is the same one (the file is just absent) or none is
    /// there.
    fn replaced(&mut self, dir: &Dir) -> Option<Arc<Dir>> {
        let pass = self.pass;
        let k = self.kept.get_mut(&dir.path)?;
        if k.dir.ino != dir.ino {
            return Some(Arc::clone(&k.dir)); // replaced earlier in this pass
        }
        if k.checked == pass {
            return None;
        }
        k.checked = pass;
        self.dir_opens += 1;
        let Some(mut fresh) = Dir::open(dir.path.clone(), &mut Vec::new()) else {
            self.kept.remove(&dir.path); // gone: the container stopped
            return None;
        };
        fresh.learn_ino();
        if fresh.ino == dir.ino {
            return None;
        }
        k.dir = Arc::new(fresh);
        Some(Arc::clone(&k.dir))
    }

    /// Opens the directory `rel` of the hierarchy mounted at `root` (at `path`, their join),
    /// as [`Dir::open`] of `path` would, relative to the hierarchy's root.
    fn open_dir(
        &mut self,
        root: &Path,
        rel: &str,
        path: PathBuf,
        errors: &mut Vec<StatError>,
    ) -> Option<Dir> {
        self.dir_opens += 1;
        let at = self
            .roots
            .entry(root.to_path_buf())
            .or_insert_with(|| {
                let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
                open_raw(None, root.as_os_str().as_bytes(), flags).ok()
            })
            .as_ref();
        match at {
            Some(fd) => Dir::open_at(
                Some(fd),
                &path,
                rel.trim_start_matches('/').as_bytes(),
                errors,
            ),
            None => Dir::open(path, errors),
        }
    }

    /// Whether two hierarchy roots are the same mount (resolved once per pass).
    pub fn same_hierarchy(&mut self, a: &Path, b: &Path) -> bool {
        let mut canon = |p: &Path| {
            self.canonical
                .entry(p.to_path_buf())
                .or_insert_with(|| std::fs::canonicalize(p).ok())
                .clone()
        };
        a == b || canon(a).is_some_and(|ca| Some(ca) == canon(b))
    }

    /// Reads `name` in `dir` and parses it: `None` when absent (see [`gone`]); other failures
    /// are pushed to `errors` and give `None` too.
    pub fn read<T>(
        &mut self,
        dir: &Dir,
        name: &CStr,
        parse: impl FnOnce(&str) -> Result<T, ParseError>,
        errors: &mut Vec<StatError>,
    ) -> Option<T> {
        self.reads += 1;
        let r = self.open_in(dir, name).and_then(|f| self.fill(f));
        self.finish(r, || dir.path_of(name), parse, errors)
    }

    /// Opens `name` in `dir`, or in the directory that replaced a kept `dir` at its path.
    fn open_in(&mut self, dir: &Dir, name: &CStr) -> io::Result<File> {
        match dir.open_file(name) {
            Err(e) if gone(&e) => match self.replaced(dir) {
                Some(d) => d.open_file(name),
                None => Err(e),
            },
            r => r,
        }
    }

    /// [`Files::read`] of a file by its full path (`/proc/<pid>/net/dev`).
    pub fn read_path<T>(
        &mut self,
        path: &Path,
        parse: impl FnOnce(&str) -> Result<T, ParseError>,
        errors: &mut Vec<StatError>,
    ) -> Option<T> {
        self.reads += 1;
        let r = File::open(path).and_then(|f| self.fill(f));
        self.finish(r, || path.to_path_buf(), parse, errors)
    }

    fn finish<T>(
        &mut self,
        r: io::Result<()>,
        path: impl FnOnce() -> PathBuf,
        parse: impl FnOnce(&str) -> Result<T, ParseError>,
        errors: &mut Vec<StatError>,
    ) -> Option<T> {
        if let Err(e) = r {
            if !gone(&e) {
                errors.push(
                    Error::Io {
                        path: path(),
                        source: e,
                    }
                    .into(),
                );
            }
            return None;
        }
        let text = String::from_utf8_lossy(&self.buf);
        match parse(&text) {
            Ok(v) => Some(v),
            Err(e) => {
                errors.push(Error::parse(path(), e).into());
                None
            }
        }
    }

    /// The whole file into `self.buf`.
    fn fill(&mut self, mut f: File) -> io::Result<()> {
        self.buf.clear();
        if self.buf.capacity() < BUF {
            self.buf.reserve(BUF);
        }
        loop {
            let room = self.buf.capacity() - self.buf.len();
            let n = read_spare(&mut f, &mut self.buf)?;
            if n == 0 || n < room {
                return Ok(());
            }
            self.buf.reserve(BUF);
        }
    }

    /// The first pid in `<dir>/cgroup.procs`, reading only the first bytes (a big
    /// container's list can be long; we need one member).
    pub fn first_pid(&mut self, dir: &Dir, errors: &mut Vec<StatError>) -> Option<u32> {
        const PROCS: &CStr = c"cgroup.procs";
        self.reads += 1;
        let mut head = [0u8; 64];
        let n = match self.open_in(dir, PROCS).and_then(|mut f| f.read(&mut head)) {
            Ok(n) => n,
            Err(e) if gone(&e) => return None,
            Err(source) => {
                let path = dir.path_of(PROCS);
                errors.push(Error::Io { path, source }.into());
                return None;
            }
        };
        parse_first_pid(&head[..n]).unwrap_or_else(|e| {
            errors.push(Error::parse(dir.path_of(PROCS), e).into());
            None
        })
    }
}

/// The first line of a `cgroup.procs` head: a pid, or `None` for an empty cgroup.
pub(crate) fn parse_first_pid(head: &[u8]) -> Result<Option<u32>, ParseError> {
    let text = String::from_utf8_lossy(head);
    let first = text.lines().next().unwrap_or("").trim();
    if first.is_empty() {
        return Ok(None);
    }
    first
        .parse()
        .map(Some)
        .map_err(|_| ParseError::new(1, format!("pid: got {first:?}")))
}

/// One `read` into the spare capacity of `buf`; the bytes read become part of it.
fn read_spare(f: &mut File, buf: &mut Vec<u8>) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    // SAFETY: the kernel writes at most `spare.len()` bytes into the spare capacity, which
    // is allocated; only the `n` bytes it wrote are then counted as initialised.
    let n = unsafe { libc::read(f.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return read_spare(f, buf);
        }
        return Err(e);
    }
    let n = n as usize;
    // SAFETY: the read initialised `n` bytes right after the current length.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

#[cfg(test)]
mod tests;
