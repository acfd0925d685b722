//! The credit model's state across agent restarts within one boot.
//!
//! The kernel's disk counters are cumulative since the device appeared, so the I/O a volume did
//! while the agent was down is known on restart: the counters now less those saved with the
//! model. The model's estimate, its bounds and its recent history are saved every
//! [`SAVE_EVERY`] to a small JSON file, by default `/run/stallwatch/cloud-model.json`:
//!
//! - `/run` is a tmpfs: it lives exactly as long as the counters do (both are gone after a
//!   reboot), and writing it never waits on a disk, least of all on the EBS volume whose
//!   credits may be gone. The boot id (`/proc/sys/kernel/random/boot_id`) is saved too and
//!   checked on load, for a state file put somewhere that outlives a boot.
//! - Reading and writing happen on a thread of their own, never the sampler's: the sampler
//!   offers a state and moves on (an offer while a write is still out is dropped), and takes the
//!   loaded state when it is there. A state file on a hung disk stops only that thread.
//! - Written to a temporary file beside it, then renamed: a crash mid-write leaves the old file.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::model::SavedBucket;

/// Where the state is kept unless configured otherwise.
pub const DEFAULT_STATE_FILE: &str = "/run/stallwatch/cloud-model.json";
/// How often the sampler offers its state.
pub const SAVE_EVERY: Duration = Duration::from_secs(5);
/// The file's format; another version is not read.
const VERSION: u32 = 1;

/// One followed volume's model, with its device's counters at the model's last advance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedVolume {
    pub volume_id: String,
    pub device: String,
    /// Completed reads + writes, and bytes read + written, of `device`.
    pub ops: u64,
    pub bytes: u64,
    pub bucket: SavedBucket,
}

/// The file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedState {
    pub version: u32,
    pub boot_id: String,
    /// Unix seconds.
    pub saved_at: f64,
    pub volumes: Vec<SavedVolume>,
}

impl SavedState {
    pub fn new(boot_id: String, saved_at: f64, volumes: Vec<SavedVolume>) -> Self {
        SavedState {
            version: VERSION,
            boot_id,
            saved_at,
            volumes,
        }
    }
}

/// Why a state file was not taken up.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LoadError {
    #[error("cannot read it: {0}")]
    Read(String),
    #[error("not a state file: {0}")]
    Parse(String),
    #[error("written by another format version ({0})")]
    Version(u32),
    #[error("saved in another boot (the disk counters it refers to are gone)")]
    OtherBoot,
}

/// Parses a state file and checks it is this boot's (`boot_id`).
pub fn parse(text: &str, boot_id: &str) -> Result<Vec<SavedVolume>, LoadError> {
    let s: SavedState = serde_json::from_str(text).map_err(|e| LoadError::Parse(e.to_string()))?;
    if s.version != VERSION {
        return Err(LoadError::Version(s.version));
    }
    if s.boot_id.trim() != boot_id.trim() || boot_id.trim().is_empty() {
        return Err(LoadError::OtherBoot);
    }
    Ok(s.volumes)
}

/// This boot's id, from `<procfs>/sys/kernel/random/boot_id`.
pub fn boot_id(procfs: &Path) -> Option<String> {
    fs::read_to_string(procfs.join("sys/kernel/random/boot_id"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Writes `state` to `path` through a temporary file and a rename, creating the directory
/// (mode 0700) if needed; the file is mode 0600.
pub fn write(path: &Path, state: &SavedState) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let json = serde_json::to_vec(state).map_err(io::Error::other)?;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&json)?;
    drop(f);
    fs::rename(&tmp, path)
}

enum Cmd {
    Load,
    Save(SavedState),
}

/// The thread that loads and saves the state file.
pub struct Saver {
    cmds: SyncSender<Cmd>,
    loaded: Mutex<Receiver<Result<Vec<SavedVolume>, LoadError>>>,
    /// This boot's id (read once, by the thread's spawner: procfs never waits on a disk).
    pub boot_id: Option<String>,
}

impl Saver {
    /// Starts the thread for `path`; [`Saver::reload`] has it read the file.
    pub fn spawn(path: PathBuf, procfs: &Path) -> io::Result<Saver> {
        let boot = boot_id(procfs);
        let (cmds, rx) = mpsc::sync_channel::<Cmd>(1);
        let (done, loaded) = mpsc::channel();
        let b = boot.clone();
        thread::Builder::new()
            .name("sw-cloud-state".into())
            .spawn(move || {
                let mut said_write_error = false;
                while let Ok(cmd) = rx.recv() {
                    match cmd {
                        Cmd::Load => {
                            let r = match (fs::read_to_string(&path), &b) {
                                (Ok(t), Some(boot)) => parse(&t, boot),
                                (Ok(_), None) => Err(LoadError::OtherBoot),
                                (Err(e), _) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
                                (Err(e), _) => Err(LoadError::Read(e.to_string())),
                            };
                            if done.send(r).is_err() {
                                break;
                            }
                        }
                        Cmd::Save(state) => {
                            if let Err(e) = write(&path, &state) {
                                if !said_write_error {
                                    warn!(path = %path.display(), error = %e,
                                        "Cannot save the credit model's state; a restart will wait for CloudWatch.");
                                    said_write_error = true;
                                }
                            } else if said_write_error {
                                info!(path = %path.display(), "Saving the credit model's state again.");
                                said_write_error = false;
                            }
                        }
                    }
                }
            })?;
        Ok(Saver {
            cmds,
            loaded: Mutex::new(loaded),
            boot_id: boot,
        })
    }

    /// Asks the thread to read the file again (a sampler rebuilt after a panic starts empty).
    /// Never blocks: dropped while the thread is busy with a write.
    pub fn reload(&self) {
        let _ = self.cmds.try_send(Cmd::Load);
    }

    /// Offers a state to write. Never blocks: dropped while the thread is busy.
    pub fn offer(&self, state: SavedState) {
        let _ = self.cmds.try_send(Cmd::Save(state));
    }

    /// The loaded state once the thread has read the file (each load answered once).
    pub fn loaded(&self) -> Option<Result<Vec<SavedVolume>, LoadError>> {
        self.loaded.lock().ok()?.try_recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn bucket() -> SavedBucket {
        SavedBucket {
            volume_type: "gp2".into(),
            size_gib: 100,
            balance: 1.0,
            low: 0.5,
            high: 2.0,
            basis: Some("cloudwatch".into()),
            now: 1_700_000_000.0,
            last_anchor: None,
            empty: false,
            history: vec![[1_700_000_000.0, 1.0, 3.0]],
        }
    }

    fn volume() -> SavedVolume {
        SavedVolume {
            volume_id: "vol-1".into(),
            device: "loop7".into(),
            ops: 10,
            bytes: 4096,
            bucket: bucket(),
        }
    }

    #[test]
    fn a_state_of_this_boot_loads_and_another_is_refused_with_its_reason() {
        let s = SavedState::new("b-1".into(), 1.0, vec![volume()]);
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(parse(&text, "b-1\n"), Ok(vec![volume()]));
        assert_eq!(parse(&text, "b-2"), Err(LoadError::OtherBoot));
        let old = text.replace("\"version\":1", "\"version\":0");
        assert_eq!(parse(&old, "b-1"), Err(LoadError::Version(0)));
        assert!(matches!(parse("{", "b-1"), Err(LoadError::Parse(_))));
    }

    #[test]
    fn the_thread_writes_atomically_and_loads_what_it_wrote() {
        let dir = tempfile::tempdir().unwrap();
        // A procfs with a boot id, and a state directory that does not exist yet.
        let procfs = dir.path().join("proc");
        fs::create_dir_all(procfs.join("sys/kernel/random")).unwrap();
        fs::write(procfs.join("sys/kernel/random/boot_id"), "abc-123\n").unwrap();
        let path = dir.path().join("run/stallwatch/cloud-model.json");
        let saver = Saver::spawn(path.clone(), &procfs).unwrap();
        saver.reload();
        let wait = |f: &dyn Fn() -> bool| {
            let t = Instant::now();
            while !f() {
                assert!(
                    t.elapsed() < Duration::from_secs(10),
                    "the thread never answered"
                );
                thread::sleep(Duration::from_millis(5));
            }
        };
        let loaded = || {
            let got = std::cell::RefCell::new(None);
            wait(&|| {
                let l = saver.loaded();
                let some = l.is_some();
                if some {
                    *got.borrow_mut() = l;
                }
                some
            });
            got.into_inner()
        };
        // No file yet: an empty load, not an error.
        let first = loaded();
        assert_eq!(first, Some(Ok(Vec::new())));
        assert_eq!(saver.boot_id.as_deref(), Some("abc-123"));
        saver.offer(SavedState::new("abc-123".into(), 2.0, vec![volume()]));
        wait(&|| path.exists());
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
        let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left: {leftovers:?}");
        saver.reload();
        let again = loaded();
        assert_eq!(again, Some(Ok(vec![volume()])));
    }

    #[test]
    fn an_unwritable_place_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        fs::write(&file, "").unwrap();
        // A file where the directory should be.
        let e = write(
            &file.join("x/state.json"),
            &SavedState::new("b".into(), 0.0, vec![]),
        );
        assert!(e.is_err());
    }
}
