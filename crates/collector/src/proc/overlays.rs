//! Overlay mounts by the block device of their upper directory, from the host init's mount
//! table (`<procfs>/1/mountinfo`, which with a host `/proc` is the host's even from a
//! container; else our own `self/mountinfo`). That filesystem is what `syncfs` flushes when an
//! overlay unmounts (Garden's 10 s unmounts), unless the overlay is `volatile`, the mitigation:
//! its syncfs and unmount skip the upper filesystem. See [`crate::proc::mountinfo`] for the
//! format.
//!
//! Cost: the table is hundreds of lines on a node with a few hundred containers (each has an
//! overlay and a shm mount; 422 lines, 137 KB with 200 docker containers here), and the host
//! sampler wants it every second. [`OverlayWatch`] keeps the file open and asks the kernel
//! whether the table changed before reading it: `poll` on a mount table file reports
//! `POLLPRI | POLLERR` when its namespace's mount table changed since the previous poll
//! (`mounts_poll` in fs/proc_namespace.c; the event counter it compares is bumped by every
//! mount, unmount and move in the namespace). Unchanged, the last result stands: no read, no
//! parse, no sysfs lookups.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::proc::mountinfo::{self, Mount, MountIndex};
use crate::roots::Roots;
use crate::sys::block;

/// The overlay mounts whose upper directory is on one device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverlayDevice {
    /// The upper directory's block device (`loop0`), `major:minor` when sysfs does not know
    /// it, the filesystem type when it is not on a block device (`tmpfs`), or `none`.
    pub device: String,
    /// Overlay mounts now.
    pub mounts: u64,
    /// Of those, mounted `volatile`: their unmount does not sync this device.
    pub volatile: u64,
}

/// Overlay mounts per device of their upper directory, sorted by device name. `Ok(None)` when
/// no mount table can be read. One full read: [`OverlayWatch`] is the cheap way to ask again.
pub fn read(roots: &Roots) -> Result<Option<Vec<OverlayDevice>>, Error> {
    OverlayWatch::new().read(roots)
}

/// The mount tables we read, in order of preference: the host init's (with a host `/proc`,
/// the host's table even from a container), else our own.
const TABLES: [&str; 2] = ["1/mountinfo", "self/mountinfo"];

/// At most this long between two full reads, change notice or not: the open file shows the
/// mount namespace init had when it was opened, so a new init (a restarted container's, or a
/// table we could not open and fell back from) is picked up by reopening; and device names
/// (sysfs) are looked up again.
pub const REREAD_EVERY: Duration = Duration::from_secs(60);

/// [`read`] for a reader called every second: the table is read and parsed again only when
/// the kernel says it changed, or [`REREAD_EVERY`] after the last full read; otherwise the
/// last result is returned as it was. Readings and errors are those of [`read`]: a failed read
/// keeps nothing, so the next call reads from scratch.
#[derive(Debug, Default)]
pub struct OverlayWatch {
    open: Option<Table>,
    last: Option<Vec<OverlayDevice>>,
    buf: Vec<u8>,
    /// Times the table was read and parsed (tests count them).
    pub rereads: u64,
}

/// An open mount table file.
#[derive(Debug)]
struct Table {
    file: File,
    path: PathBuf,
    /// On procfs: `poll` tells changes. A plain file (a fixture tree) does not, and is read
    /// every time.
    pollable: bool,
    opened: Instant,
}

impl Table {
    /// Opens and reads (into `buf`) the first mount table that can be read, as [`read`] does.
    fn open(roots: &Roots, buf: &mut Vec<u8>) -> Result<Option<Table>, Error> {
        for rel in TABLES {
            let path = roots.proc(rel);
            let opened = File::open(&path).and_then(|mut file| {
                buf.clear();
                file.read_to_end(buf)?;
                Ok(file)
            });
            match opened {
                Ok(file) => {
                    let pollable = on_procfs(&file);
                    let t = Table {
                        file,
                        path,
                        pollable,
                        opened: Instant::now(),
                    };
                    // Changes from before this read are in it: the notice of them is dropped.
                    t.changed();
                    return Ok(Some(t));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) if rel == TABLES[0] => {
                    tracing::debug!(error = %source, "Cannot read init's mount table; using our own.");
                }
                Err(source) => return Err(Error::Io { path, source }),
            }
        }
        Ok(None)
    }

    /// Whether the table may have changed since the last call: the kernel's notice, or any
    /// doubt (a failed poll, a file that cannot tell).
    fn changed(&self) -> bool {
        if !self.pollable {
            return true;
        }
        let mut p = libc::pollfd {
            fd: self.file.as_raw_fd(),
            events: libc::POLLPRI,
            revents: 0,
        };
        // SAFETY: one valid pollfd, timeout 0: returns at once. Of the events procfs reports
        // (`POLLIN` always), only `POLLPRI`, `POLLERR` (the change notice), `POLLHUP` and
        // `POLLNVAL` are not masked out: any count but 0 (or -1, a failed poll) is a change.
        unsafe { libc::poll(&mut p, 1, 0) != 0 }
    }

    /// The whole table again, through the open file (a seq_file restarts at offset 0).
    fn reread(&mut self, buf: &mut Vec<u8>) -> std::io::Result<()> {
        buf.clear();
        self.file.seek(SeekFrom::Start(0))?;
        self.file.read_to_end(buf).map(drop)
    }
}

/// Whether `file` is on procfs, where `poll` reports mount table changes.
fn on_procfs(file: &File) -> bool {
    const PROC_SUPER_MAGIC: i64 = 0x9fa0;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `st` is a writable statfs; the fd is open for the call.
    let r = unsafe { libc::fstatfs(file.as_raw_fd(), st.as_mut_ptr()) };
    // `f_type` is i64 here, u32 or i32 on other targets.
    // SAFETY: zeroed is a valid statfs; fstatfs filled it when it returned 0.
    #[allow(clippy::unnecessary_cast)]
    let f_type = unsafe { st.assume_init() }.f_type as i64;
    r == 0 && f_type == PROC_SUPER_MAGIC
}

impl OverlayWatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// What [`read`] would return now.
    pub fn read(&mut self, roots: &Roots) -> Result<Option<Vec<OverlayDevice>>, Error> {
        let r = self.refresh(roots);
        if r.is_err() {
            self.open = None;
            self.last = None;
        }
        r
    }

    fn refresh(&mut self, roots: &Roots) -> Result<Option<Vec<OverlayDevice>>, Error> {
        let kept = self
            .open
            .take()
            .filter(|t| t.opened.elapsed() < REREAD_EVERY);
        self.open = match kept {
            Some(t) if self.last.is_some() && !t.changed() => {
                self.open = Some(t);
                return Ok(self.last.clone());
            }
            // Changed: read again through the open file; if that fails, as a first read.
            Some(mut t) => match t.reread(&mut self.buf) {
                Ok(()) => Some(t),
                Err(_) => Table::open(roots, &mut self.buf)?,
            },
            None => Table::open(roots, &mut self.buf)?,
        };
        let Some(t) = &self.open else {
            self.last = None;
            return Ok(None);
        };
        self.rereads += 1;
        let text = String::from_utf8_lossy(&self.buf);
        let mounts = mountinfo::parse(&text).map_err(|e| Error::Parse {
            path: t.path.clone(),
            source: e,
        })?;
        let got = by_device(roots, &mounts);
        self.last = Some(got.clone());
        Ok(Some(got))
    }
}

/// Pure but for the device names (sysfs): the overlays of `mounts` grouped by upper device.
/// Each upper directory's mount is found through one index of the table, and each device is
/// named once.
fn by_device(roots: &Roots, mounts: &[Mount]) -> Vec<OverlayDevice> {
    let index = MountIndex::new(mounts);
    let mut names: HashMap<(u32, u32), String> = HashMap::new();
    let mut by_dev: BTreeMap<String, OverlayDevice> = BTreeMap::new();
    for m in mounts.iter().filter(|m| m.fs_type == "overlay") {
        let dev = m
            .upperdir
            .as_deref()
            .and_then(|u| index.mount_of(u))
            .map(|up| device_name(roots, up, &mut names))
            .unwrap_or_else(|| "none".to_string());
        let e = by_dev.entry(dev).or_insert_with_key(|d| OverlayDevice {
            device: d.clone(),
            ..OverlayDevice::default()
        });
        e.mounts += 1;
        e.volatile += u64::from(m.volatile);
    }
    by_dev.into_values().collect()
}

/// A mount's block device name (`loop0`), `major:minor` when sysfs does not know it, or its
/// filesystem type for mounts that are not on a block device (`tmpfs`). `names` caches the
/// sysfs lookups of one pass.
fn device_name(roots: &Roots, m: &Mount, names: &mut HashMap<(u32, u32), String>) -> String {
    if m.major != 0 {
        return names
            .entry((m.major, m.minor))
            .or_insert_with(|| {
                block::name_of(roots, m.major, m.minor)
                    .unwrap_or_else(|| format!("{}:{}", m.major, m.minor))
            })
            .clone();
    }
    m.fs_type.clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn overlays_by_upper_device_with_volatile_ones_counted() {
        let mounts = mountinfo::parse(
            "27 1 254:0 / / rw - ext4 /dev/vda rw
30 27 0:35 / /run rw - tmpfs tmpfs rw
845 27 7:0 / /var/lib/docker rw - ext4 /dev/loop0 rw
851 27 0:61 / /c1 rw - overlay overlay rw,lowerdir=/l,upperdir=/var/lib/docker/o/1/diff,workdir=/w
852 27 0:62 / /c2 rw - overlay overlay rw,lowerdir=/l,upperdir=/var/lib/docker/o/2/diff,workdir=/w,uuid=on,fsync=volatile
853 27 0:63 / /c3 rw - overlay overlay rw,lowerdir=/l,upperdir=/run/o/3,workdir=/w,volatile
854 27 0:64 / /c4 rw - overlay overlay rw,lowerdir=/l
",
        )
        .unwrap();
        // No sysfs here: block devices are named by number.
        let roots = Roots {
            sysfs: "/nonexistent-sysfs".into(),
            ..Roots::default()
        };
        let got = by_device(&roots, &mounts);
        let want = [("7:0", 2, 1), ("none", 1, 0), ("tmpfs", 1, 1)];
        let got: Vec<(&str, u64, u64)> = got
            .iter()
            .map(|o| (o.device.as_str(), o.mounts, o.volatile))
            .collect();
        assert_eq!(got, want);
    }

    /// A fixture tree's table is a plain file, which `poll` cannot speak for: it is read every
    /// time, so a changed fixture is seen at once.
    #[test]
    fn overlays_watch_rereads_a_plain_file_every_time() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("1")).unwrap();
        let table = t.path().join("1/mountinfo");
        let line = |id: u32| {
            format!("{id} 27 0:{id} / /c{id} rw - overlay overlay rw,lowerdir=/l,upperdir=/run/u{id},workdir=/w\n")
        };
        let root = "27 1 0:35 / / rw - tmpfs tmpfs rw\n";
        std::fs::write(&table, format!("{root}{}", line(40))).unwrap();
        let roots = Roots {
            procfs: t.path().to_path_buf(),
            ..Roots::default()
        };
        let mut w = OverlayWatch::new();
        let count = |r: Option<Vec<OverlayDevice>>| r.unwrap()[0].mounts;
        assert_eq!(count(w.read(&roots).unwrap()), 1);
        std::fs::write(&table, format!("{root}{}{}", line(40), line(41))).unwrap();
        assert_eq!(count(w.read(&roots).unwrap()), 2);
        assert_eq!(w.rereads, 2);
        // Garbage is the parse error `read` gives, and is not kept.
        std::fs::write(&table, "garbage\n").unwrap();
        assert!(matches!(w.read(&roots), Err(Error::Parse { .. })));
        assert!(matches!(read(&roots), Err(Error::Parse { .. })));
        std::fs::remove_file(&table).unwrap();
        // No table of init's nor ours under this root: none.
        let gone = Roots {
            procfs: t.path().join("nothing"),
            ..Roots::default()
        };
        assert_eq!(w.read(&gone).unwrap(), None);
    }

    /// Runs `argv` in the mount namespace of `pid`.
    fn in_ns(pid: u32, argv: &[&str]) {
        let st = Command::new("nsenter")
            .arg("-t")
            .arg(pid.to_string())
            .arg("-m")
            .arg("--")
            .args(argv)
            .status()
            .unwrap();
        assert!(st.success(), "{argv:?}: {st}");
    }

    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            // The namespace, and every mount made in it, goes with its last process.
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// The kernel's change notice, on this machine's kernel: a process in a private mount
    /// namespace (the host's table is left alone) plays init; a tmpfs mounted there, an
    /// overlay on it and the overlay's unmount are each seen at the next read, and reads with
    /// no change between them read nothing.
    #[test]
    fn overlays_watch_sees_each_mount_change_and_reads_nothing_otherwise() {
        let name = "overlays_watch_sees_each_mount_change_and_reads_nothing_otherwise";
        if !crate::testing::require_root(name, "mount") {
            return;
        }
        let child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sleep", "300"])
            .spawn()
            .expect("unshare (util-linux)");
        let pid = child.id();
        let _ns = Kill(child);
        let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/mnt")).ok();
        let t0 = Instant::now();
        while ns(&pid.to_string()) == ns("self") || ns(&pid.to_string()).is_none() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "unshare made no namespace"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // A procfs root whose `1` is that process.
        let proc_root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(format!("/proc/{pid}"), proc_root.path().join("1")).unwrap();
        let roots = Roots {
            procfs: proc_root.path().to_path_buf(),
            ..Roots::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let tmpfs = |r: &[OverlayDevice]| {
            r.iter()
                .find(|o| o.device == "tmpfs")
                .map_or((0, 0), |o| (o.mounts, o.volatile))
        };

        let mut w = OverlayWatch::new();
        let r0 = w.read(&roots).unwrap().unwrap();
        for _ in 0..5 {
            assert_eq!(w.read(&roots).unwrap().unwrap(), r0);
        }
        assert_eq!(w.rereads, 1, "no change: the table is not read again");

        in_ns(
            pid,
            &["mount", "-t", "tmpfs", "-o", "size=4m", "swtest-tmpfs", &d],
        );
        assert_eq!(w.read(&roots).unwrap().unwrap(), r0, "no overlay yet");
        assert_eq!(w.rereads, 2, "a mount is a change");

        let (l, u, wk, m) = (
            format!("{d}/l"),
            format!("{d}/u"),
            format!("{d}/w"),
            format!("{d}/m"),
        );
        in_ns(pid, &["mkdir", &l, &u, &wk, &m]);
        let opts = format!("lowerdir={l},upperdir={u},workdir={wk},volatile");
        in_ns(
            pid,
            &["mount", "-t", "overlay", "-o", &opts, "swtest-ovl", &m],
        );
        let r2 = w.read(&roots).unwrap().unwrap();
        let (n0, v0) = tmpfs(&r0);
        assert_eq!(tmpfs(&r2), (n0 + 1, v0 + 1), "{r2:?}");
        assert_eq!(w.rereads, 3);
        assert_eq!(w.read(&roots).unwrap().unwrap(), r2);
        assert_eq!(w.rereads, 3);
        // What a full read sees, the watch saw.
        assert_eq!(read(&roots).unwrap().unwrap(), r2);

        in_ns(pid, &["umount", &m]);
        assert_eq!(w.read(&roots).unwrap().unwrap(), r0, "the overlay gone");
        assert_eq!(w.rereads, 4);
    }
}
