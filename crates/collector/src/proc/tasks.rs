//! The walk of every thread: `/proc/<pid>/stat` for single-threaded processes,
//! `/proc/<pid>/task/<tid>/stat` for the others, and — only for threads in D state —
//! `/proc/<pid>/task/<tid>/wchan` and `/proc/<pid>/cgroup` (cached per pid + start time, with
//! the container identity the path names, so that every consumer joins D threads to
//! containers by the same exact id).
//!
//! Cost (node_exporter's maintainers refused per-process data because walking `/proc` during
//! a stall makes it worse): one small read per thread, opened relative to the task directory
//! (`openat`), since resolving `<proc>/<pid>/task/<tid>/stat` from the root costs a procfs
//! lookup per component, which was most of the walk's CPU at 10k threads. Nothing of
//! `/proc/<pid>/` that can block on a process's mm lock (cmdline, environ, maps) is read.
//!
//! Kernel stacks: for at most [`Walker::set_stacks`] threads in D per walk (the first met, in
//! pid order), `<tid>/stack` too — where in the kernel the thread waits, beyond its wchan (the
//! lock behind a syncfs, the bio a writeback waits for). Capped at [`STACK_MAX_BYTES`]. The
//! file needs CAP_SYS_ADMIN (`proc_pid_stack` checks the opener's credentials on read): without
//! it the stack is `None`, the error is counted once per walk (not per thread) and
//! [`Walk::stack_error`] says why, so a record can say stacks are missing and why.
//!
//! Churn is not an error: a process or thread that exits mid-walk (`ENOENT`, `ESRCH`) is
//! skipped quietly. Anything else (a `stat` that does not parse, a `wchan` or `cgroup` that
//! cannot be read) is counted by kind in [`Walk::errors`], never dropped silently.
//!
//! Why not `procfs::process::all_processes()`: it allocates a `Process` and a `PathBuf` per
//! task, parses the comm as a lossy `String` before we know the thread is in D, and resolves
//! every path from the root; this walk reuses one buffer and one path and keeps raw comm bytes.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use crate::cgroup::{identify, Identity};
use crate::error::{Error, ErrorCounts, ErrorKind};
use crate::proc::{pid_cgroup, task_stat};
use crate::roots::Roots;

/// A thread in D at the time of a walk.
#[derive(Debug, Clone)]
pub struct RawD {
    pub pid: u32,
    pub tid: u32,
    /// Start time of the thread, clock ticks after boot (with `tid`, a unique thread id).
    pub starttime: u64,
    /// Sanitised comm (label- and terminal-safe, see [`task_stat::sanitize`]).
    pub comm: String,
    pub kernel_thread: bool,
    /// Kernel function the thread waits in; `None` when unreadable or `0`.
    pub wchan: Option<String>,
    /// The process's cgroup (primary path), cached per pid + start time.
    pub cgroup: Option<Arc<str>>,
    /// The container that cgroup path belongs to, by [`crate::cgroup::identify`].
    pub container: Option<Arc<Identity>>,
    /// Kernel stack (`/proc/<pid>/task/<tid>/stack`, one `[<0>] function+0x../0x..` line per
    /// frame, at most [`STACK_MAX_BYTES`]); `None` when stacks are off, over the per-walk
    /// budget, or unreadable.
    pub stack: Option<Arc<str>>,
}

/// Longest kernel stack text kept (a stack is ~30–60 bytes a frame, 5–20 frames).
pub const STACK_MAX_BYTES: usize = 4096;

/// One walk of `/proc`.
#[derive(Debug, Clone, Default)]
pub struct Walk {
    /// Threads per state letter.
    pub states: HashMap<u8, u64>,
    pub total: u64,
    pub d: Vec<RawD>,
    /// Files met on the way that could not be read or parsed (not counting churn).
    pub errors: ErrorCounts,
    /// Kernel stacks read (attempted) in this walk.
    pub stacks_tried: usize,
    /// Why a kernel stack could not be read in this walk (the first failure; later threads'
    /// stacks are not tried): `Permission` without CAP_SYS_ADMIN.
    pub stack_error: Option<ErrorKind>,
}

/// Where a process lives: its cgroup path and the container it names.
type Placement = (Arc<str>, Option<Arc<Identity>>);

/// Cache bound: processes whose placement is remembered (a process seen in D keeps its entry
/// until the cache is cleared).
const MAX_CACHED: usize = 4096;

/// The walk, with its reusable buffers and caches. Lives on the thread that walks.
pub struct Walker {
    buf: Vec<u8>,
    path: PathBuf,
    placements: HashMap<(u32, u64), Placement>,
    /// Kernel stacks read per walk at most (0: none).
    stacks_max: usize,
}

impl Default for Walker {
    fn default() -> Self {
        Self::new()
    }
}

/// How a read ended.
enum Got {
    Read,
    /// The process or thread exited (`ENOENT`, `ESRCH`): churn.
    Gone,
    Failed(ErrorKind),
}

impl Walker {
    pub fn new() -> Self {
        Walker {
            buf: Vec::with_capacity(1024),
            path: PathBuf::new(),
            placements: HashMap::new(),
            stacks_max: 0,
        }
    }

    /// Reads the kernel stacks of at most `max` threads in D per walk (0, the default: none).
    pub fn set_stacks(&mut self, max: usize) {
        self.stacks_max = max;
    }

    /// Reads `self.path` into `self.buf`.
    fn read_path(&mut self) -> Got {
        self.buf.clear();
        match std::fs::File::open(&self.path).and_then(|mut f| f.read_to_end(&mut self.buf)) {
            Ok(_) => Got::Read,
            Err(e) => classify(&e),
        }
    }

    /// Walks every thread under `roots.procfs`. Only a failure to list `/proc` itself is an
    /// error; everything below it is counted in [`Walk::errors`].
    pub fn walk(&mut self, roots: &Roots) -> Result<Walk, Error> {
        let mut walk = Walk::default();
        let dir = std::fs::read_dir(&roots.procfs).map_err(|source| Error::Io {
            path: roots.procfs.clone(),
            source,
        })?;
        let mut pids: Vec<u32> = dir
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
            .collect();
        pids.sort_unstable();
        self.path.clone_from(&roots.procfs);
        let mut tids: Vec<u32> = Vec::new();
        for pid in pids {
            self.path.push(pid.to_string());
            self.walk_process(pid, &mut tids, &mut walk);
            self.path.pop();
        }
        if self.placements.len() > MAX_CACHED {
            self.placements.clear();
        }
        Ok(walk)
    }

    /// `self.path` is `<proc>/<pid>` on entry and exit.
    fn walk_process(&mut self, pid: u32, tids: &mut Vec<u32>, walk: &mut Walk) {
        self.path.push("stat");
        let got = self.read_path();
        self.path.pop();
        match got {
            Got::Read => {}
            Got::Gone => return,
            Got::Failed(k) => {
                walk.errors.add(k);
                return;
            }
        }
        let Ok(st) = task_stat::parse(&self.buf) else {
            walk.errors.add(ErrorKind::Parse);
            return;
        };
        let proc_start = st.starttime;
        let single = (st.state, thread_of(&st));
        if st.num_threads > 1 {
            self.path.push("task");
            tids.clear();
            let listed = match std::fs::read_dir(&self.path) {
                Ok(rd) => {
                    tids.extend(rd.filter_map(|e| e.ok()).filter_map(|e| {
                        e.file_name().to_str().and_then(|s| s.parse::<u32>().ok())
                    }));
                    true
                }
                Err(e) => {
                    if let Got::Failed(k) = classify(&e) {
                        walk.errors.add(k);
                    }
                    false
                }
            };
            if listed {
                self.walk_tasks(pid, proc_start, tids, walk);
                self.path.pop();
                return;
            }
            // No task directory (a fixture tree, or a procfs that hides it): the process's
            // own stat is the best we know of it — one thread, as `ps` would show it.
            self.path.pop();
        }
        let (state, d) = single;
        count(walk, state);
        if let Some((comm, kthread, start)) = d {
            self.record_d(walk, pid, pid, start, comm, kthread, proc_start, true);
        }
    }

    /// `self.path` is `<proc>/<pid>/task` on entry and exit.
    fn walk_tasks(&mut self, pid: u32, proc_start: u64, tids: &[u32], walk: &mut Walk) {
        let task_dir = std::fs::File::open(&self.path).ok();
        for &tid in tids {
            self.path.push(tid.to_string());
            let got = match &task_dir {
                Some(dir) => self.read_at(dir, tid),
                None => {
                    self.path.push("stat");
                    let got = self.read_path();
                    self.path.pop();
                    got
                }
            };
            match got {
                Got::Read => match task_stat::parse(&self.buf) {
                    Ok(t) => {
                        let (state, d) = (t.state, thread_of(&t));
                        count(walk, state);
                        if let Some((comm, kthread, start)) = d {
                            self.record_d(walk, pid, tid, start, comm, kthread, proc_start, false);
                        }
                    }
                    Err(_) => walk.errors.add(ErrorKind::Parse),
                },
                Got::Gone => {}
                Got::Failed(k) => walk.errors.add(k),
            }
            self.path.pop();
        }
    }

    /// Reads `<tid>/stat` relative to an open task directory into `self.buf`.
    fn read_at(&mut self, dir: &std::fs::File, tid: u32) -> Got {
        use std::io::Write as _;
        use std::os::fd::{AsRawFd, FromRawFd};
        let mut name = [0u8; 24];
        let mut cur = std::io::Cursor::new(&mut name[..]);
        if write!(cur, "{tid}/stat\0").is_err() {
            return Got::Failed(ErrorKind::Io);
        }
        // SAFETY: `name` is NUL-terminated (written above, buffer large enough for any u32);
        // `dir` is an open directory descriptor for the duration of the call.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr().cast(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return classify(&std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
        self.buf.clear();
        match f.read_to_end(&mut self.buf) {
            Ok(_) => Got::Read,
            Err(e) => classify(&e),
        }
    }

    /// `self.path` is `<proc>/<pid>/task/<tid>` for threads, `<proc>/<pid>` for single-threaded
    /// processes (`at_process`).
    #[allow(clippy::too_many_arguments)]
    fn record_d(
        &mut self,
        walk: &mut Walk,
        pid: u32,
        tid: u32,
        starttime: u64,
        comm: String,
        kernel_thread: bool,
        proc_start: u64,
        at_process: bool,
    ) {
        self.path.push("wchan");
        let wchan = match self.read_path() {
            Got::Read => {
                let w = String::from_utf8_lossy(&self.buf).trim().to_string();
                (!w.is_empty() && w != "0").then_some(w)
            }
            Got::Gone => None,
            Got::Failed(k) => {
                walk.errors.add(k);
                None
            }
        };
        self.path.pop();
        let stack = self.read_stack(walk);
        let placement = if kernel_thread {
            None
        } else if let Some(p) = self.placements.get(&(pid, proc_start)) {
            Some(p.clone())
        } else {
            // <proc>/<pid>/cgroup, from wherever we are.
            let depth = if at_process { 0 } else { 2 };
            for _ in 0..depth {
                self.path.pop();
            }
            self.path.push("cgroup");
            let p = match self.read_path() {
                Got::Read => match pid_cgroup::parse(&String::from_utf8_lossy(&self.buf)) {
                    Ok(lines) => {
                        let path = pid_cgroup::primary_path(&lines);
                        Some((Arc::<str>::from(path), identify(path).map(Arc::new)))
                    }
                    Err(_) => {
                        walk.errors.add(ErrorKind::Parse);
                        None
                    }
                },
                Got::Gone => None,
                Got::Failed(k) => {
                    walk.errors.add(k);
                    None
                }
            };
            self.path.pop();
            if !at_process {
                self.path.push("task");
                self.path.push(tid.to_string());
            }
            if let Some(p) = &p {
                self.placements.insert((pid, proc_start), p.clone());
            }
            p
        };
        let (cgroup, container) = match placement {
            Some((c, id)) => (Some(c), id),
            None => (None, None),
        };
        walk.d.push(RawD {
            pid,
            tid,
            starttime,
            comm,
            kernel_thread,
            wchan,
            cgroup,
            container,
            stack,
        });
    }

    /// `<self.path>/stack`, within the walk's budget; after a failure none is tried again in
    /// this walk (the next one would fail the same way), and a failure other than a denial is
    /// counted once.
    fn read_stack(&mut self, walk: &mut Walk) -> Option<Arc<str>> {
        if walk.stacks_tried >= self.stacks_max || walk.stack_error.is_some() {
            return None;
        }
        walk.stacks_tried += 1;
        self.path.push("stack");
        let got = self.read_path();
        self.path.pop();
        match got {
            Got::Read => Some(Arc::from(stack_text(&self.buf))),
            Got::Gone => None,
            Got::Failed(k) => {
                walk.stack_error = Some(k);
                // A denied stack is the shipped units' normal (they grant no CAP_SYS_ADMIN):
                // it is said in `stacks_missing` and by `stallwatch doctor`, not counted as a
                // source error that StallwatchSourceErrors would page on forever.
                if k != ErrorKind::Permission {
                    walk.errors.add(k);
                }
                None
            }
        }
    }
}

/// A stack file's text, at most [`STACK_MAX_BYTES`], cut after the last whole frame (line).
pub fn stack_text(raw: &[u8]) -> String {
    let mut b = raw;
    if b.len() > STACK_MAX_BYTES {
        b = &b[..STACK_MAX_BYTES];
        if let Some(i) = b.iter().rposition(|&c| c == b'\n') {
            b = &b[..=i];
        }
    }
    String::from_utf8_lossy(b).into_owned()
}

/// What a thread in D needs recorded: (comm, kernel thread, start time); `None` otherwise.
fn thread_of(t: &task_stat::TaskStat<'_>) -> Option<(String, bool, u64)> {
    (t.state == b'D').then(|| {
        (
            task_stat::sanitize(t.comm),
            t.is_kernel_thread(),
            t.starttime,
        )
    })
}

fn count(walk: &mut Walk, state: u8) {
    *walk.states.entry(state).or_insert(0) += 1;
    walk.total += 1;
}

fn classify(e: &std::io::Error) -> Got {
    // ENOENT: exited; ESRCH: exiting as we read. Both are churn, not errors.
    if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) {
        Got::Gone
    } else {
        Got::Failed(ErrorKind::of_io(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::thread;
    use std::time::Duration;

    #[test]
    fn walk_of_this_machine_counts_our_own_threads_and_survives_churn() {
        // Threads that exit mid-walk are skipped quietly: churn threads while walking.
        let stop = Arc::new(AtomicBool::new(false));
        let churn: Vec<_> = (0..2)
            .map(|_| {
                let stop = stop.clone();
                thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let h: Vec<_> = (0..8)
                            .map(|_| thread::spawn(|| thread::sleep(Duration::from_micros(200))))
                            .collect();
                        h.into_iter().for_each(|h| h.join().unwrap());
                    }
                })
            })
            .collect();
        let mut w = Walker::new();
        for _ in 0..20 {
            let walk = w.walk(&Roots::default()).unwrap();
            assert!(walk.total >= 3, "at least this test's threads");
            assert!(
                walk.states.get(&b'R').copied().unwrap_or(0) >= 1,
                "the walker itself runs"
            );
            assert_eq!(
                walk.errors.total(),
                0,
                "churn is not an error: {:?}",
                walk.errors
            );
        }
        stop.store(true, Ordering::Relaxed);
        churn.into_iter().for_each(|h| h.join().unwrap());
    }

    fn write(root: &std::path::Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn stat_line(pid: u32, comm: &str, state: char, threads: u32, start: u64) -> String {
        format!("{pid} ({comm}) {state} 1 {pid} {pid} 0 -1 4194304 0 0 0 0 0 0 0 0 20 0 {threads} 0 {start} 0 0")
    }

    #[test]
    fn a_fixture_walk_counts_garbage_and_names_the_container_of_each_d_thread() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let id = "ab".repeat(32);
        // pid 10: single-threaded, in D, in a docker container.
        write(root, "10/stat", &stat_line(10, "dd", 'D', 1, 500));
        write(root, "10/wchan", "io_schedule");
        write(root, "10/cgroup", &format!("0::/docker/{id}\n"));
        // pid 11: two threads listed, one in D (host cgroup), one whose stat is garbage.
        write(root, "11/stat", &stat_line(11, "app", 'S', 2, 600));
        write(root, "11/task/11/stat", &stat_line(11, "app", 'S', 2, 600));
        write(root, "11/task/12/stat", "garbage");
        write(root, "11/task/13/stat", &stat_line(13, "app", 'D', 2, 601));
        write(root, "11/task/13/wchan", "rq_qos_wait");
        write(root, "11/cgroup", "0::/system.slice/app.service\n");
        // pid 20: says it has 3 threads but has no task/ dir: counted once, as `ps` would.
        write(root, "20/stat", &stat_line(20, "lonely", 'R', 3, 700));
        // pid 30: a stat that does not parse.
        write(root, "30/stat", "30 (x");
        let roots = Roots {
            procfs: root.to_path_buf(),
            ..Roots::default()
        };
        let walk = Walker::new().walk(&roots).unwrap();
        assert_eq!(walk.total, 4, "10, 11's two readable threads, 20");
        assert_eq!(walk.errors.get(ErrorKind::Parse), 2, "task 12 and pid 30");
        assert_eq!(walk.states.get(&b'D'), Some(&2));
        let d10 = walk.d.iter().find(|d| d.tid == 10).unwrap();
        assert_eq!(d10.wchan.as_deref(), Some("io_schedule"));
        assert_eq!(
            d10.container.as_ref().map(|c| c.container_id.as_str()),
            Some(id.as_str())
        );
        let d13 = walk.d.iter().find(|d| d.tid == 13).unwrap();
        assert_eq!(d13.pid, 11);
        assert_eq!(d13.cgroup.as_deref(), Some("/system.slice/app.service"));
        assert!(d13.container.is_none(), "a host service is no container");
        assert!(
            d13.stack.is_none() && walk.stacks_tried == 0,
            "stacks are off by default"
        );
    }

    #[test]
    fn stacks_within_the_budget_and_a_failure_counted_once_per_walk() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for pid in [10, 11, 12] {
            write(
                root,
                &format!("{pid}/stat"),
                &stat_line(pid, "dd", 'D', 1, 500),
            );
            write(root, &format!("{pid}/cgroup"), "0::/\n");
        }
        // 6.18's format; pid 11's is longer than the cap.
        write(
            root,
            "10/stack",
            "[<0>] __iomap_dio_rw+0x4b0/0x8d0\n[<0>] iomap_dio_rw+0xe/0x40\n",
        );
        let frame = "[<0>] a_function_name_for_padding+0x11/0x22\n";
        write(root, "11/stack", &frame.repeat(200));
        write(root, "12/stack", "[<0>] x+0x1/0x2\n");
        let roots = Roots {
            procfs: root.to_path_buf(),
            ..Roots::default()
        };
        let mut w = Walker::new();
        w.set_stacks(2);
        let walk = w.walk(&roots).unwrap();
        let stack = |tid| walk.d.iter().find(|d| d.tid == tid).unwrap().stack.clone();
        assert!(stack(10).unwrap().contains("__iomap_dio_rw"));
        let long = stack(11).unwrap();
        assert!(
            long.len() <= STACK_MAX_BYTES && long.ends_with('\n'),
            "{}",
            long.len()
        );
        assert_eq!(long.len() % frame.len(), 0, "cut after a whole frame");
        assert_eq!(stack(12), None, "over the budget of 2");
        assert_eq!((walk.stacks_tried, walk.stack_error), (2, None));

        // Unreadable stacks (a directory here; EACCES without CAP_SYS_ADMIN on a real
        // procfs, see the e2e test): None, one error per walk, the reason kept.
        for pid in [10, 11, 12] {
            let p = root.join(format!("{pid}/stack"));
            std::fs::remove_file(&p).unwrap();
            std::fs::create_dir(&p).unwrap();
        }
        w.set_stacks(64);
        let walk = w.walk(&roots).unwrap();
        assert!(walk.d.iter().all(|d| d.stack.is_none()));
        assert_eq!(walk.errors.get(ErrorKind::Io), 1, "{:?}", walk.errors);
        assert_eq!(walk.stack_error, Some(ErrorKind::Io));
        assert_eq!(walk.stacks_tried, 1, "no retry after the first failure");
    }
}
