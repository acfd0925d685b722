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
//! - Not kept: open files across passes. `pread` at offset 0 restarts a seq_file, but every
//!   open cgroup file holds a page of kernel buffer and a descriptor: ~15 per container, so
//!   3,000 descriptors and ~12 MB of kernel memory at 200 containers, and past the usual
//!   1,024-descriptor soft limit, which the HTTP server shares.

use std::collections::HashMap;
use std::ffi::CStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::cgroup::StatError;
use crate::error::{Error, ParseError};

/// A cgroup directory, open as a handle for `openat`.
#[derive(Debug)]
pub(crate) struct Dir {
    fd: OwnedFd,
    path: PathBuf,
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
    /// Files asked for so far, found or not (tests count them).
    pub reads: u64,
}

/// Room for the largest cgroup file read per pass (`memory.stat`, ~1.5 KiB) many times over.
const BUF: usize = 16 << 10;

impl Files {
    /// Forgets what it learned of the mounts (call at the start of each pass).
    pub fn begin_pass(&mut self) {
        self.canonical.clear();
        self.roots.clear();
    }

    /// The directory `rel` (`/docker/<id>`) of the hierarchy mounted at `root`, as
    /// [`Dir::open`] of the joined path would open it.
    pub fn dir(&mut self, root: &Path, rel: &str, errors: &mut Vec<StatError>) -> Option<Dir> {
        let path = crate::cgroup::join(root, rel);
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
        let r = dir.open_file(name).and_then(|f| self.fill(f));
        self.finish(r, || dir.path_of(name), parse, errors)
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
        let n = match dir.open_file(PROCS).and_then(|mut f| f.read(&mut head)) {
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
mod tests {
    use super::*;

    #[test]
    fn files_read_relative_to_a_dir_with_absent_garbage_and_big_files() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("a"), "42\n").unwrap();
        std::fs::write(t.path().join("bad"), "x\n").unwrap();
        // Bigger than the buffer: read whole over several reads.
        let big: String = (0..10_000).map(|i| format!("k{i} {i}\n")).collect();
        std::fs::write(t.path().join("big"), &big).unwrap();
        let mut errors = Vec::new();
        let mut f = Files::default();
        let d = Dir::open(t.path().to_path_buf(), &mut errors).unwrap();
        let num = |s: &str| crate::cgroup::parse_single_u64(s);
        assert_eq!(f.read(&d, c"a", num, &mut errors), Some(42));
        assert_eq!(f.read(&d, c"absent", num, &mut errors), None);
        assert!(errors.is_empty());
        assert_eq!(f.read(&d, c"bad", num, &mut errors), None);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].message.contains("bad"), "{:?}", errors[0]);
        let len = f.read(&d, c"big", |s| Ok(s.len()), &mut errors);
        assert_eq!(len, Some(big.len()));
        assert_eq!(f.read_path(&t.path().join("a"), num, &mut errors), Some(42));
        assert!(Dir::open(t.path().join("gone"), &mut errors).is_none());
        assert_eq!(errors.len(), 1, "an absent directory is not an error");
        // Relative to a hierarchy root, as a pass opens containers' directories.
        std::fs::create_dir_all(t.path().join("docker/c1")).unwrap();
        std::fs::write(t.path().join("docker/c1/pids.current"), "3\n").unwrap();
        let c1 = f.dir(t.path(), "/docker/c1", &mut errors).unwrap();
        assert_eq!(f.read(&c1, c"pids.current", num, &mut errors), Some(3));
        assert!(f.dir(t.path(), "/docker/c2", &mut errors).is_none());
        std::fs::write(t.path().join("docker/c1/bad"), "x\n").unwrap();
        assert_eq!(f.read(&c1, c"bad", num, &mut errors), None);
        let msg = &errors.last().unwrap().message;
        assert!(msg.contains("docker/c1/bad"), "the full path: {msg}");
        assert_eq!(errors.len(), 2);
    }

    #[test]
    fn first_pid_of_a_fixture_and_of_nothing() {
        let t = tempfile::tempdir().unwrap();
        let mut errors = Vec::new();
        let mut f = Files::default();
        let d = Dir::open(t.path().to_path_buf(), &mut errors).unwrap();
        assert_eq!(f.first_pid(&d, &mut errors), None);
        std::fs::write(t.path().join("cgroup.procs"), "").unwrap();
        assert_eq!(f.first_pid(&d, &mut errors), None);
        std::fs::write(t.path().join("cgroup.procs"), "4242\n4243\n").unwrap();
        assert_eq!(f.first_pid(&d, &mut errors), Some(4242));
        assert!(errors.is_empty());
        std::fs::write(t.path().join("cgroup.procs"), "x\n").unwrap();
        assert_eq!(f.first_pid(&d, &mut errors), None);
        assert_eq!(errors.len(), 1);
    }

    #[test]
    fn hierarchies_reached_by_two_names_are_one() {
        let t = tempfile::tempdir().unwrap();
        let both = t.path().join("cpu,cpuacct");
        std::fs::create_dir(&both).unwrap();
        std::os::unix::fs::symlink(&both, t.path().join("cpu")).unwrap();
        std::fs::create_dir(t.path().join("memory")).unwrap();
        let mut f = Files::default();
        assert!(f.same_hierarchy(&t.path().join("cpu"), &both));
        assert!(!f.same_hierarchy(&t.path().join("cpu"), &t.path().join("memory")));
        assert!(!f.same_hierarchy(&t.path().join("x"), &t.path().join("y")));
    }
}
