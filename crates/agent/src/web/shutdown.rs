//! SIGTERM and SIGINT: the stop signal for the server (and the cloud tasks), and the deadline
//! that keeps the README's promise of an exit within 5 s.
//!
//! Signals are taken on a thread with a runtime of its own: the server's two workers can be
//! busy for a second or more (a client pipelining hundreds of scrapes keeps them encoding), and
//! a signal handled by them was seen up to ~1 s late. If the orderly shutdown (server drain,
//! samplers, probes) has not ended the process [`EXIT_DEADLINE`] after the signal, this thread
//! ends it; so does a second signal. (A thread stuck in D state, such as a probe write on a
//! hung disk, still holds the exit until the kernel lets it go: no process can end before that.)

use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// From the signal to a forced exit.
pub const EXIT_DEADLINE: Duration = Duration::from_millis(4500);

/// Installs the handlers now (so a signal right after start-up is not fatal) and starts the
/// thread that waits for them; `stop` turns true at the first one.
pub fn on_signal(stop: watch::Sender<bool>) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut term, mut int) = rt.block_on(async {
        Ok::<_, std::io::Error>((
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        ))
    })?;
    std::thread::Builder::new()
        .name("sw-signals".into())
        .spawn(move || {
            let name = rt.block_on(async {
                tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                }
            });
            tracing::info!(signal = name, "Shutting down.");
            let _ = stop.send(true);
            let why = rt.block_on(async {
                tokio::select! {
                    _ = tokio::time::sleep(EXIT_DEADLINE) => "the shutdown deadline passed",
                    _ = term.recv() => "a second SIGTERM",
                    _ = int.recv() => "a second SIGINT",
                }
            });
            tracing::warn!(reason = why, "Exiting without finishing the shutdown.");
            std::process::exit(0);
        })?;
    Ok(())
}
