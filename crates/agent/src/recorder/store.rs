//! Incident records on disk, written so that a hung disk can never block the sampler, a
//! scrape or the agent's exit.
//!
//! Every write and the read at start happen in a **child process** (the agent's own binary,
//! hidden subcommands `__incident-write` and `__incident-read`): a thread of the agent stuck
//! in D on a hung filesystem could not be killed and would keep the process from exiting (the
//! probe's forked writes exist for the same reason). The agent's side only writes to and reads
//! from pipes, with deadlines. At most one writer child is outstanding: while one is stuck,
//! later records are dropped and counted (`stallwatch_incident_writes_total{outcome}`), and
//! every record stays in memory regardless.
//!
//! Where: a tmpfs such as `/run/stallwatch/incidents` survives agent restarts (not reboots)
//! and never waits on the disks whose stall is being recorded; a directory on the root disk
//! survives reboots but may be the stalled disk. Off by default (memory only).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::incident::Record;

/// A record file's size cap (a record holds at most 100 D threads with 4 KiB stacks and a
/// 16-minute timeline: well under 2 MiB).
const MAX_RECORD: u64 = 4 << 20;
const WRITE_DEADLINE: Duration = Duration::from_secs(10);
pub const READ_DEADLINE: Duration = Duration::from_secs(3);

/// Outcomes of writes, for the metric.
#[derive(Debug, Default)]
pub struct Writes {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    /// Not written because the previous writer was still stuck, or the queue was full.
    pub dropped: AtomicU64,
    /// The writer did not finish within its deadline (left running).
    pub timeout: AtomicU64,
}

impl Writes {
    pub fn by_outcome(&self) -> [(&'static str, u64); 4] {
        [
            ("ok", self.ok.load(Ordering::Relaxed)),
            ("failed", self.failed.load(Ordering::Relaxed)),
            ("dropped", self.dropped.load(Ordering::Relaxed)),
            ("timeout", self.timeout.load(Ordering::Relaxed)),
        ]
    }
}

/// The writer: a thread that hands each record to a child process.
pub struct Store {
    tx: SyncSender<Arc<Record>>,
    pub writes: Arc<Writes>,
}

#[derive(Debug, Clone)]
pub struct Target {
    pub dir: PathBuf,
    pub max_files: usize,
    pub max_bytes: u64,
}

impl Store {
    pub fn start(target: Target, writes: Arc<Writes>) -> std::io::Result<Store> {
        let (tx, rx) = sync_channel::<Arc<Record>>(4);
        let w = Arc::clone(&writes);
        std::thread::Builder::new()
            .name("incident-store".into())
            .spawn(move || {
                let mut child: Option<Child> = None;
                for rec in rx {
                    if let Some(c) = child.as_mut() {
                        if matches!(c.try_wait(), Ok(None)) {
                            w.dropped.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                    child = write_in_child(&target, &rec, &w);
                }
            })?;
        Ok(Store { tx, writes })
    }

    /// Queues a record; never blocks (a full queue drops it, counted).
    pub fn save(&self, rec: Arc<Record>) {
        if self.tx.try_send(rec).is_err() {
            self.writes.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn child_command(sub: &str) -> std::io::Result<Command> {
    let exe = std::env::current_exe()?;
    let mut c = Command::new(exe);
    c.arg(sub);
    Ok(c)
}

/// Writes one record through a child; returns the child when it is still running at the
/// deadline (stuck on the disk).
fn write_in_child(t: &Target, rec: &Record, w: &Writes) -> Option<Child> {
    let json = match serde_json::to_vec(rec) {
        Ok(j) => j,
        Err(error) => {
            warn!(%error, "Cannot serialise incident {}.", rec.head.id);
            w.failed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
    };
    let spawned = child_command("__incident-write").and_then(|mut c| {
        c.arg(&t.dir)
            .arg(t.max_files.to_string())
            .arg(t.max_bytes.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
    });
    let mut child = match spawned {
        Ok(c) => c,
        Err(error) => {
            warn!(%error, "Cannot start the incident writer.");
            w.failed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
    };
    // The child reads all of stdin before it touches the disk: this write cannot wait on it.
    if let Some(mut stdin) = child.stdin.take() {
        if stdin.write_all(&json).is_err() {
            w.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
    let deadline = Instant::now() + WRITE_DEADLINE;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => {
                w.ok.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Ok(Some(_)) | Err(_) => {
                let mut msg = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut msg);
                }
                warn!(dir = %t.dir.display(), "Incident {} not written: {}", rec.head.id, msg.trim());
                w.failed.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Ok(None) if Instant::now() >= deadline => {
                warn!(dir = %t.dir.display(), "The incident writer is still waiting on the disk after {:?}; later records stay in memory until it returns.", WRITE_DEADLINE);
                w.timeout.fetch_add(1, Ordering::Relaxed);
                return Some(child);
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Reads the records of `dir` through a child, waiting at most `deadline`. Never blocks
/// longer: a child stuck on a hung disk is left behind.
pub fn load(dir: &Path, deadline: Duration) -> Vec<Record> {
    let spawned = child_command("__incident-read").and_then(|mut c| {
        c.arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
    });
    let mut child = match spawned {
        Ok(c) => c,
        Err(error) => {
            warn!(%error, "Cannot start the incident reader.");
            return Vec::new();
        }
    };
    let Some(mut out) = child.stdout.take() else {
        return Vec::new();
    };
    let (tx, rx) = std::sync::mpsc::channel();
    // A pipe read is interruptible: this thread never holds the process in D.
    let _ = std::thread::Builder::new()
        .name("incident-load".into())
        .spawn(move || {
            let mut buf = Vec::new();
            let r = (&mut out)
                .take(256 << 20)
                .read_to_end(&mut buf)
                .map(|_| buf);
            let _ = tx.send(r);
            let _ = child.wait();
        });
    match rx.recv_timeout(deadline) {
        Ok(Ok(buf)) => match serde_json::from_slice::<Vec<Record>>(&buf) {
            Ok(v) => {
                info!(dir = %dir.display(), records = v.len(), "Incident records read back.");
                v
            }
            Err(error) => {
                warn!(%error, dir = %dir.display(), "Cannot read the incident records back.");
                Vec::new()
            }
        },
        Ok(Err(error)) => {
            warn!(%error, "Cannot read the incident reader's answer.");
            Vec::new()
        }
        Err(_) => {
            warn!(dir = %dir.display(), "The incident directory did not answer within {:?}; starting without past records.", deadline);
            Vec::new()
        }
    }
}

/// `__incident-write DIR MAX_FILES MAX_BYTES`, in the child: the record from stdin to
/// `DIR/<id>.json` (through a temporary file and a rename), then the oldest files removed
/// past the caps.
pub fn child_write(dir: &Path, max_files: usize, max_bytes: u64) -> Result<(), String> {
    let mut json = Vec::new();
    std::io::stdin()
        .take(MAX_RECORD + 1)
        .read_to_end(&mut json)
        .map_err(|e| format!("stdin: {e}"))?;
    if json.len() as u64 > MAX_RECORD {
        return Err(format!("record over {MAX_RECORD} bytes"));
    }
    let head: super::incident::Head =
        serde_json::from_slice(&json).map_err(|e| format!("not a record: {e}"))?;
    let id: String = head
        .id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tmp = dir.join(format!(".{id}.json.tmp"));
    let dst = dir.join(format!("{id}.json"));
    let mut f = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(&json)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &dst).map_err(|e| format!("{}: {e}", dst.display()))?;
    prune(dir, max_files, max_bytes)
}

fn records_in(dir: &Path) -> Result<Vec<(PathBuf, u64)>, String> {
    let mut files: Vec<(PathBuf, u64)> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.ends_with(".json") && !n.starts_with('.')
        })
        .filter_map(|e| Some((e.path(), e.metadata().ok()?.len())))
        .collect();
    // Ids are UTC timestamps (`20261203T140001Z`): the name orders them, newest first.
    files.sort_by(|a, b| b.0.cmp(&a.0));
    Ok(files)
}

fn prune(dir: &Path, max_files: usize, max_bytes: u64) -> Result<(), String> {
    let mut total = 0;
    for (i, (path, len)) in records_in(dir)?.into_iter().enumerate() {
        total += len;
        if i >= max_files || total > max_bytes {
            std::fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    Ok(())
}

/// `__incident-read DIR`, in the child: every record of `DIR` as one JSON array on stdout.
pub fn child_read(dir: &Path) -> Result<(), String> {
    let mut out: Vec<serde_json::Value> = Vec::new();
    if dir.exists() {
        for (path, len) in records_in(dir)? {
            if len > MAX_RECORD {
                continue;
            }
            let Ok(text) = std::fs::read(&path) else {
                continue;
            };
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&text) {
                out.push(v);
            }
        }
    }
    let stdout = std::io::stdout();
    serde_json::to_writer(stdout.lock(), &out).map_err(|e| e.to_string())
}
