//! What the collector's real-kernel tests share.

use std::path::{Path, PathBuf};

/// Whether the test `name` may run: root is needed to `why` (make cgroups, mount). Without it
/// the test says so loudly and is skipped, except under `CI=true`, where it fails: CI runs
/// every test.
pub(crate) fn require_root(name: &str, why: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{name} needs root under CI=true"
    );
    eprintln!("SKIPPED {name}: needs root to {why}");
    false
}

/// A directory made for a test (a cgroup: what a crashed earlier run left there is removed
/// first), removed when dropped.
pub(crate) struct MadeDir(PathBuf);

impl MadeDir {
    pub(crate) fn new(path: PathBuf) -> MadeDir {
        let _ = std::fs::remove_dir(&path);
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        MadeDir(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for MadeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}
