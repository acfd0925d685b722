//! Checks of a `[[probe]]` directory for the config: the agent refuses at start what the probe
//! could never write to.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Checks a probe path for the config: absolute, exists, is a directory, is not on a read-only
/// filesystem (statvfs `ST_RDONLY`) and is writable by our effective user. Errors name the path
/// and the reason.
///
/// Note: for root, `access(2)` ignores the directory's mode bits (CAP_DAC_OVERRIDE), so a
/// `0555` directory passes here, as it would for the probe's own writes.
pub fn validate(path: &Path) -> Result<(), String> {
    let shown = path.display();
    if !path.is_absolute() {
        return Err(format!("probe path {shown:?} must be absolute"));
    }
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(format!("probe path {shown} does not exist"));
        }
        Err(e) => return Err(format!("probe path {shown}: cannot stat: {e}")),
    };
    if !meta.is_dir() {
        return Err(format!("probe path {shown} is not a directory"));
    }
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("probe path {shown:?} contains a NUL byte"))?;
    // SAFETY: `c` is a valid NUL-terminated string; statvfs only writes into the zeroed struct
    // we pass.
    let mut vfs: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut vfs) } != 0 {
        let e = io::Error::last_os_error();
        return Err(format!("probe path {shown}: cannot statvfs: {e}"));
    }
    if vfs.f_flag & libc::ST_RDONLY != 0 {
        return Err(format!("probe path {shown} is on a read-only filesystem"));
    }
    // The effective user is the one that will open the file (AT_EACCESS); X is needed to
    // create a file in the directory as much as W.
    // SAFETY: `c` is a valid NUL-terminated string; faccessat has no other preconditions.
    let rc = unsafe {
        libc::faccessat(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::W_OK | libc::X_OK,
            libc::AT_EACCESS,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        return Err(format!(
            "probe path {shown} is not writable by uid {uid}: {e}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use super::super::tests::{cfg, failures, wait_until};
    use super::super::Probes;
    use super::validate;

    #[test]
    fn validate_missing_file_and_relative() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = validate(&missing).unwrap_err();
        assert!(e.contains("does not exist") && e.contains("nope"), "{e}");

        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let e = validate(&file).unwrap_err();
        assert!(
            e.contains("not a directory") && e.contains(&*file.to_string_lossy()),
            "{e}"
        );

        let e = validate(Path::new("relative/dir")).unwrap_err();
        assert!(e.contains("absolute"), "{e}");

        validate(dir.path()).unwrap();
    }

    #[test]
    fn validate_unwritable_dir() {
        let dir = tempfile::tempdir().unwrap();
        let ro = dir.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            // Root bypasses mode bits (CAP_DAC_OVERRIDE), for access(2) and for the probe's own
            // open alike: the directory really is writable for us, so validate must agree.
            eprintln!("validate_unwritable_dir: running as root, mode bits do not apply; checking that validate agrees with what root can do");
            validate(&ro).unwrap();
        } else {
            let e = validate(&ro).unwrap_err();
            assert!(e.contains("not writable") && e.contains("ro"), "{e}");
        }
    }

    /// A read-only tmpfs mounted over a temp dir; unmounted on drop.
    struct RoMount(std::ffi::CString);

    impl RoMount {
        fn new(at: &Path) -> Option<RoMount> {
            let c = std::ffi::CString::new(at.as_os_str().as_bytes()).ok()?;
            let src = c"tmpfs";
            // SAFETY: all pointers are valid NUL-terminated strings; data may be NULL.
            let rc = unsafe {
                libc::mount(
                    src.as_ptr(),
                    c.as_ptr(),
                    src.as_ptr(),
                    libc::MS_RDONLY,
                    std::ptr::null(),
                )
            };
            if rc == 0 {
                Some(RoMount(c))
            } else {
                eprintln!(
                    "cannot mount a read-only tmpfs: {}",
                    std::io::Error::last_os_error()
                );
                None
            }
        }
    }

    impl Drop for RoMount {
        fn drop(&mut self) {
            // SAFETY: a valid NUL-terminated path.
            unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
        }
    }

    #[test]
    fn validate_read_only_filesystem() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(
                std::env::var_os("CI").is_none(),
                "validate_read_only_filesystem needs root, and CI must run every test"
            );
            eprintln!(
                "SKIPPED validate_read_only_filesystem: needs root to mount a read-only tmpfs"
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let Some(_m) = RoMount::new(dir.path()) else {
            eprintln!("SKIPPED validate_read_only_filesystem: mount refused (no CAP_SYS_ADMIN in this container?)");
            return;
        };
        let e = validate(dir.path()).unwrap_err();
        assert!(
            e.contains("read-only") && e.contains(&*dir.path().to_string_lossy()),
            "{e}"
        );
        // And the probe classifies the same directory's failures as `readonly`, as errors of its
        // source.
        let p = Probes::spawn(vec![cfg(dir.path(), 20)]).unwrap();
        wait_until(10, "readonly failure", || {
            p.snapshot()
                .first()
                .is_some_and(|s| failures(s, "readonly") >= 1)
        });
        let s = &p.snapshot()[0];
        assert_eq!(s.count, 0, "a failed open is not a write");
        assert!(s.status.errors.total() >= 1);
        assert!(
            s.status.last_success.is_none(),
            "a failed write is no good reading"
        );
        p.stop();
    }
}
