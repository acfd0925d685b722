//! The driver's reader threads: one per source, or one per lane shared by its sources (see
//! the driver's doc). A thread reads the members a request names, in order, and sends their
//! outcomes back in one message.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender, SyncSender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::{MakeRead, Read};
use crate::error::Error;

/// Why a read failed.
pub(super) enum Fail {
    Error(Error),
    Panic(String),
}

/// What a reader thread sends back after one read.
pub(super) struct Outcome<R> {
    /// The reader's id (not its place: sources come and go with the config).
    pub(super) id: u64,
    pub(super) started: Instant,
    pub(super) finished: Instant,
    pub(super) cpu: Duration,
    pub(super) result: Result<Option<R>, Fail>,
}

/// A reader thread as the driver sees it, shared by the slots of its members.
pub(super) struct Worker {
    /// One request names the members to read, in order.
    pub(super) req: SyncSender<Vec<u64>>,
    /// The member being read now ([`IDLE`]: none), for telling a stuck read from members
    /// waiting behind it.
    pub(super) reading: Arc<AtomicU64>,
    /// Once the other members moved away: the one member this thread still reads.
    pub(super) solo: Arc<AtomicU64>,
    /// `sw-<lane>` or `sw-<name>`.
    pub(super) thread: String,
}

/// No member ([`Worker::reading`], [`Worker::solo`]).
pub(super) const IDLE: u64 = u64::MAX;

pub(super) fn panic_message(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// Starts a reader thread for `members` (id and factory each): each request names the
/// members to read, in order; their outcomes go back to `results` in one message when the
/// request is done (one wake-up of the sampler, not one per member). The thread ends when no
/// slot holds its request channel any more, or, when stuck in a read, when that read returns.
pub(super) fn spawn_worker<R: Send + 'static>(
    thread: &str,
    members: Vec<(u64, MakeRead<R>)>,
    results: Sender<Vec<Outcome<R>>>,
) -> std::io::Result<Arc<Worker>> {
    let (req, rx) = mpsc::sync_channel::<Vec<u64>>(1);
    let reading = Arc::new(AtomicU64::new(IDLE));
    let solo = Arc::new(AtomicU64::new(IDLE));
    let (now_reading, only) = (Arc::clone(&reading), Arc::clone(&solo));
    thread::Builder::new()
        .name(thread.to_string())
        // Readers parse small files: a small stack keeps RSS low with a dozen of them.
        .stack_size(256 * 1024)
        .spawn(move || {
            let mut readers: Vec<(u64, MakeRead<R>, Read<R>)> = members
                .into_iter()
                .map(|(id, make)| {
                    let read = make();
                    (id, make, read)
                })
                .collect();
            while let Ok(ids) = rx.recv() {
                let mut batch = Vec::with_capacity(ids.len());
                for id in ids {
                    let solo = only.load(Ordering::Relaxed);
                    if solo != IDLE && solo != id {
                        continue;
                    }
                    let Some((_, make, read)) = readers.iter_mut().find(|r| r.0 == id) else {
                        continue;
                    };
                    now_reading.store(id, Ordering::Release);
                    let started = Instant::now();
                    let cpu0 = thread_cpu();
                    let result = match catch_unwind(AssertUnwindSafe(&mut *read)) {
                        Ok(r) => r.map_err(Fail::Error),
                        Err(p) => {
                            *read = make();
                            Err(Fail::Panic(panic_message(&*p)))
                        }
                    };
                    let cpu = thread_cpu().saturating_sub(cpu0);
                    now_reading.store(IDLE, Ordering::Release);
                    batch.push(Outcome {
                        id,
                        started,
                        finished: Instant::now(),
                        cpu,
                        result,
                    });
                }
                if !batch.is_empty() && results.send(batch).is_err() {
                    break;
                }
            }
        })?;
    Ok(Arc::new(Worker {
        req,
        reading,
        solo,
        thread: thread.to_string(),
    }))
}

/// CPU time (user + system) of the calling thread so far.
pub fn thread_cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we pass; RUSAGE_THREAD is Linux-only,
    // which this crate is.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv =
        |t: libc::timeval| Duration::new(t.tv_sec.max(0) as u64, (t.tv_usec.max(0) as u32) * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}
