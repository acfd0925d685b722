//! A reader thread per source. The sampler never touches the filesystem itself: it asks each
//! idle worker for a reading and waits for answers up to a deadline. A worker stuck in the
//! kernel (a read of a file on a hung disk sits in D state and cannot be interrupted) only
//! stops its own source; the sampler marks it stuck and keeps publishing everything else.
//! A stuck worker is never replaced by a new thread, so a long hang cannot pile up threads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// What a worker sends back after one read.
pub struct Outcome<R> {
    /// Index of the worker in the sampler's table.
    pub idx: usize,
    pub started: Instant,
    pub finished: Instant,
    /// CPU time the worker thread spent on this read.
    pub cpu: Duration,
    pub result: R,
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

/// The sampler's handle on one worker thread.
pub struct Worker {
    pub name: &'static str,
    req: SyncSender<()>,
    /// When the outstanding request was sent; `None` when idle.
    pub busy_since: Option<Instant>,
}

impl Worker {
    /// Spawns a thread that runs `read` once per request and sends the outcome to `results`.
    /// The thread ends when the `Worker` is dropped (its request channel closes), unless it is
    /// stuck in a read, in which case it ends when that read returns.
    pub fn spawn<R: Send + 'static>(
        name: &'static str,
        idx: usize,
        results: Sender<Outcome<R>>,
        mut read: impl FnMut() -> R + Send + 'static,
    ) -> std::io::Result<Worker> {
        let (req, rx): (SyncSender<()>, Receiver<()>) = mpsc::sync_channel(1);
        thread::Builder::new()
            .name(format!("sw-{name}"))
            // Readers parse small files: a small stack keeps RSS low with a dozen of them.
            .stack_size(256 * 1024)
            .spawn(move || {
                while rx.recv().is_ok() {
                    let started = Instant::now();
                    let cpu0 = thread_cpu();
                    let result = read();
                    let cpu = thread_cpu().saturating_sub(cpu0);
                    let finished = Instant::now();
                    if results
                        .send(Outcome {
                            idx,
                            started,
                            finished,
                            cpu,
                            result,
                        })
                        .is_err()
                    {
                        break;
                    }
                }
            })?;
        Ok(Worker {
            name,
            req,
            busy_since: None,
        })
    }

    /// Asks for a reading unless one is outstanding. Returns whether a request was sent.
    pub fn request(&mut self, now: Instant) -> bool {
        if self.busy_since.is_some() {
            return false;
        }
        match self.req.try_send(()) {
            Ok(()) => {
                self.busy_since = Some(now);
                true
            }
            Err(_) => false,
        }
    }
}

/// A sampler's own thread, which can be stopped at once even while it sleeps between ticks.
pub struct Background {
    stop: Arc<AtomicBool>,
    wake: mpsc::Sender<()>,
    thread: Option<thread::JoinHandle<()>>,
}

/// Handed to a sampler loop: sleeps until the next tick unless a stop is requested.
pub struct Sleeper {
    stop: Arc<AtomicBool>,
    wake: Receiver<()>,
}

impl Sleeper {
    /// Sleeps for up to `d`; `false` when the sampler must stop now.
    pub fn sleep(&self, d: Duration) -> bool {
        let _ = self.wake.recv_timeout(d);
        !self.stop.load(Ordering::Relaxed)
    }
}

impl Background {
    pub fn spawn(
        name: &str,
        f: impl FnOnce(Sleeper) + Send + 'static,
    ) -> std::io::Result<Background> {
        let stop = Arc::new(AtomicBool::new(false));
        let (wake, rx) = mpsc::channel();
        let sleeper = Sleeper {
            stop: Arc::clone(&stop),
            wake: rx,
        };
        let thread = thread::Builder::new()
            .name(name.to_string())
            .spawn(move || f(sleeper))?;
        Ok(Background {
            stop,
            wake,
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it (it finishes its current tick first; a tick never
    /// blocks on I/O, which the workers do).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.wake.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
