//! Where the host's pseudo-filesystems are. Nothing else in this crate spells an absolute path:
//! the agent builds a `Roots` from `--path.procfs`, `--path.sysfs`, `--path.rootfs` (and the
//! cgroup mount), so tests and containerised deployments (host `/proc` at `/host/proc`) work.

use std::io;
use std::path::{Path, PathBuf};

use crate::error::Error;

/// The roots of the host filesystems the collector reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    /// procfs mount, normally `/proc`.
    pub procfs: PathBuf,
    /// sysfs mount, normally `/sys`.
    pub sysfs: PathBuf,
    /// cgroup filesystem root, normally `/sys/fs/cgroup`.
    pub cgroupfs: PathBuf,
    /// The host's root filesystem, normally `/` (`/host/root` in a container).
    pub rootfs: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Roots {
            procfs: PathBuf::from("/proc"),
            sysfs: PathBuf::from("/sys"),
            cgroupfs: PathBuf::from("/sys/fs/cgroup"),
            rootfs: PathBuf::from("/"),
        }
    }
}

impl Roots {
    /// A path below the procfs root, e.g. `roots.proc("pressure/io")`.
    pub fn proc(&self, rel: &str) -> PathBuf {
        self.procfs.join(rel)
    }

    /// A path below the sysfs root, e.g. `roots.sys("block")`.
    pub fn sys(&self, rel: &str) -> PathBuf {
        self.sysfs.join(rel)
    }

    /// A path below the cgroup root.
    pub fn cgroup(&self, rel: &str) -> PathBuf {
        self.cgroupfs.join(rel)
    }

    /// A path below the host root filesystem.
    pub fn root(&self, rel: &str) -> PathBuf {
        self.rootfs.join(rel.trim_start_matches('/'))
    }
}

/// Reads a small kernel text file. `Ok(None)` when it does not exist (kernel without the
/// feature, process or cgroup gone); any other I/O failure is an error naming the path.
/// Bytes that are not UTF-8 are replaced rather than failing the read: kernel files are ASCII
/// except where userspace names leak in, and those must never break a scrape.
pub fn read_optional(path: &Path) -> Result<Option<String>, Error> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}
