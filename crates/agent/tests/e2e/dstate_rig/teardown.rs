//! Taking the rig down: every part it made, also when `start` abandoned it half-built.

use super::*;

impl Drop for DStateRig {
    fn drop(&mut self) {
        let t0 = Instant::now();
        let mut steps: Vec<(&str, Duration)> = Vec::new();
        let mut mark = |step: &'static str| steps.push((step, t0.elapsed()));
        // 1. Lift the throttle first: a thread in a throttled write only dies once its bio is
        //    through.
        if let Err(e) = self.try_lift() {
            eprintln!("dstate_rig cleanup: lift: {e}");
        }
        mark("lift");
        // 2. Kill the writer and reap it (bounded: it should take milliseconds once lifted).
        self.stdin = None;
        if let Some(mut child) = self.child.take() {
            if let Err(e) = child.kill() {
                eprintln!("dstate_rig cleanup: kill writer {}: {e}", child.id());
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Ok(None) => {
                        eprintln!(
                            "dstate_rig cleanup: writer {} did not exit within 30 s",
                            child.id()
                        );
                        break;
                    }
                    Err(e) => {
                        eprintln!("dstate_rig cleanup: wait writer {}: {e}", child.id());
                        break;
                    }
                }
            }
        }
        mark("kill");
        // 3. Unmount (retry on EBUSY, lazy as the last resort).
        if self.mounted {
            let target = cstr(&self.mnt);
            let mut done = false;
            for _ in 0..20 {
                // SAFETY: valid NUL-terminated path.
                if unsafe { libc::umount2(target.as_ptr(), 0) } == 0 {
                    done = true;
                    break;
                }
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EBUSY) {
                    eprintln!("dstate_rig cleanup: umount {}: {e}", self.mnt.display());
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if !done {
                // SAFETY: as above.
                if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } == 0 {
                    eprintln!(
                        "dstate_rig cleanup: {} lazily unmounted",
                        self.mnt.display()
                    );
                } else {
                    eprintln!(
                        "dstate_rig cleanup: lazy umount {}: {}",
                        self.mnt.display(),
                        std::io::Error::last_os_error()
                    );
                }
            }
            self.mounted = false;
        }
        mark("umount");
        // 4. Detach the loop device and wait until the kernel has let go of our image.
        if let Some(name) = self.loop_dev.take() {
            match Command::new("losetup")
                .arg("-d")
                .arg(format!("/dev/{name}"))
                .output()
            {
                Ok(o) if o.status.success() => {}
                Ok(o) => eprintln!(
                    "dstate_rig cleanup: losetup -d /dev/{name}: {} {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Err(e) => eprintln!("dstate_rig cleanup: losetup -d /dev/{name}: {e}"),
            }
            let backing = format!("/sys/block/{name}/loop/backing_file");
            let deadline = Instant::now() + Duration::from_secs(5);
            while std::fs::read(&backing)
                .is_ok_and(|b| b.trim_ascii() == self.image.as_os_str().as_bytes())
            {
                if Instant::now() > deadline {
                    eprintln!(
                        "dstate_rig cleanup: /dev/{name} still attached to {}",
                        self.image.display()
                    );
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        mark("losetup -d");
        // 5. Remove the cgroup (rmdir fails while the dead writer is still being released).
        if let Some(cg) = self.cgroup.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let res = cg.delete();
                if !self.cgroup_dir.exists() {
                    break;
                }
                if Instant::now() > deadline {
                    eprintln!(
                        "dstate_rig cleanup: cannot remove {}: {res:?}; cgroup.procs {:?}",
                        self.cgroup_dir.display(),
                        std::fs::read_to_string(self.cgroup_dir.join("cgroup.procs"))
                            .unwrap_or_default()
                    );
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        mark("rmdir cgroup");
        // 6. Temp files (image, mount point, stderr).
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_path_buf();
            if let Err(e) = dir.close() {
                eprintln!("dstate_rig cleanup: remove {}: {e}", path.display());
            }
        }
        mark("temp files");
        if t0.elapsed() > Duration::from_secs(1) {
            eprintln!("dstate_rig cleanup was slow; elapsed at the end of each step: {steps:?}");
        }
    }
}
