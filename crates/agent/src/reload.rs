//! Config reload on SIGHUP and on file change, on a thread of its own (a reload may read a file
//! on a hung disk; it must not hold up an HTTP worker). The watcher is on the file's *directory*:
//! editors replace files by rename and Kubernetes ConfigMaps swap a `..data` symlink, both of
//! which a watch on the file's inode misses. The watch asks only for changes (no `IN_OPEN` or
//! `IN_ACCESS`: a shared directory such as `/etc` is opened and read all day by everyone, and
//! none of that may wake us). Events are debounced (~1 s) and a reload happens only when the
//! bytes changed. A config that fails to parse or validate is logged with file,
//! line and key, `stallwatch_config_last_reload_successful` drops to 0, and the running config
//! stays in force.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use inotify::{Inotify, WatchMask};
use stallwatch_cloud::config::CloudConfig;
use stallwatch_collector::sample::containers::ContainersConfig;
use stallwatch_collector::sample::probe::Probes;
use stallwatch_collector::sample::{HostConfig, ThreadsConfig};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use crate::config;
use crate::metrics::selfmon::ReloadStatus;

const DEBOUNCE: Duration = Duration::from_secs(1);

/// The configs the samplers read at every tick; a reload swaps them all.
#[derive(Clone)]
pub struct Live {
    pub host: Arc<ArcSwap<HostConfig>>,
    pub threads: Arc<ArcSwap<ThreadsConfig>>,
    pub containers: Arc<ArcSwap<ContainersConfig>>,
    /// Intervals, thresholds and `[[cloud.volume]]` apply on reload; `enabled`, region,
    /// instance and endpoints are read once at start (a change is logged as needing a restart).
    pub cloud: Arc<ArcSwap<CloudConfig>>,
    /// Running probes; a reload reconciles them (unchanged probes keep their counters).
    pub probes: Arc<Mutex<Probes>>,
    /// The verdict engine and the flight recorder; a reload sets their thresholds.
    pub analysis: Arc<crate::recorder::Analysis>,
}

impl Live {
    pub fn new(c: &config::Config) -> std::io::Result<Live> {
        Ok(Live {
            host: Arc::new(ArcSwap::from_pointee(c.host.clone())),
            threads: Arc::new(ArcSwap::from_pointee(c.threads.clone())),
            containers: Arc::new(ArcSwap::from_pointee(c.containers.clone())),
            cloud: Arc::new(ArcSwap::from_pointee(c.cloud.clone())),
            probes: Arc::new(Mutex::new(Probes::spawn(c.probes.clone())?)),
            analysis: crate::recorder::Analysis::new(c.verdict.clone(), c.incident.clone()),
        })
    }

    /// Swaps the new config in. Probes are reconciled first: if that fails (e.g. a thread
    /// cannot be started) nothing is swapped and the error is returned.
    pub fn apply(&self, c: config::Config) -> std::io::Result<()> {
        match self.probes.lock() {
            Ok(mut p) => p.reconcile(c.probes)?,
            Err(poisoned) => poisoned.into_inner().reconcile(c.probes)?,
        }
        self.analysis.set_config(c.verdict, c.incident);
        self.host.store(Arc::new(c.host));
        self.threads.store(Arc::new(c.threads));
        self.containers.store(Arc::new(c.containers));
        let old = self.cloud.load();
        if (
            old.enabled,
            &old.region,
            &old.instance_id,
            &old.imds_endpoint,
            &old.ec2_endpoint,
            &old.cloudwatch_endpoint,
        ) != (
            c.cloud.enabled,
            &c.cloud.region,
            &c.cloud.instance_id,
            &c.cloud.imds_endpoint,
            &c.cloud.ec2_endpoint,
            &c.cloud.cloudwatch_endpoint,
        ) {
            warn!("[cloud] enabled, region, instance_id and endpoints take effect on restart; the rest of [cloud] was applied.");
        }
        self.cloud.store(Arc::new(c.cloud));
        Ok(())
    }

    /// Stops the probes and removes their files (never waits on a hung write for long).
    pub fn stop(&self) {
        let probes = match self.probes.lock() {
            Ok(mut p) => std::mem::replace(&mut *p, Probes::empty()),
            Err(poisoned) => std::mem::replace(&mut *poisoned.into_inner(), Probes::empty()),
        };
        probes.stop();
    }
}

/// What woke the reload thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Hangup,
    FileChanged,
}

/// Where SIGHUP and file events are sent. Bounded and never blocking: when the reload thread is
/// busy (or stuck reading a config on a hung disk) further triggers are dropped, since the
/// reload that runs next reads the file as it is then anyway.
pub type Triggers = mpsc::SyncSender<Trigger>;

/// Starts the reload thread (named "sw-reload"). Reading, parsing and applying a config all
/// happen on it, never on an HTTP worker: a read that blocks (a config file on a hung disk, a
/// FIFO) stops only this thread, and `/metrics`, `/healthz` and SIGTERM keep working.
/// `initial` is the text the running config was loaded from. Returns the sender that the
/// SIGHUP forwarder ([`forward_sighup`]) uses.
pub fn spawn(
    path: PathBuf,
    live: Live,
    status: Arc<ReloadStatus>,
    initial: Option<String>,
) -> std::io::Result<Triggers> {
    let (tx, rx) = mpsc::sync_channel::<Trigger>(4);
    if let Err(e) = watch_dir(&path, tx.clone()) {
        warn!(path = %path.display(), error = %e, "Cannot watch the config directory; reload on SIGHUP only.");
    }
    std::thread::Builder::new()
        .name("sw-reload".into())
        .spawn(move || run(&path, &live, &status, initial, &rx))?;
    Ok(tx)
}

/// Sends a [`Trigger::Hangup`] for every SIGHUP. A task on the runtime that only forwards: it
/// never reads a file, so it cannot block a worker.
pub async fn forward_sighup(tx: Triggers) {
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "Cannot install the SIGHUP handler.");
            return;
        }
    };
    while hup.recv().await.is_some() {
        let _ = tx.try_send(Trigger::Hangup);
    }
}

fn run(
    path: &Path,
    live: &Live,
    status: &ReloadStatus,
    initial: Option<String>,
    rx: &mpsc::Receiver<Trigger>,
) {
    let mut last = initial;
    while let Ok(first) = rx.recv() {
        let mut forced = first == Trigger::Hangup;
        if !forced {
            // Debounce: editors write in several steps; read once things are quiet.
            std::thread::sleep(DEBOUNCE);
        }
        while let Ok(t) = rx.try_recv() {
            forced |= t == Trigger::Hangup;
        }
        let text = config::read_bounded(path);
        if !forced && text.is_ok() && text.as_ref().ok() == last.as_ref() {
            continue; // an event in the directory, but our file did not change
        }
        reload_text(path, &text, live, status, forced);
        last = text.ok();
    }
}

/// Parses `text` (what was read from `path`) and swaps it in, or keeps the old config and
/// records the failure.
fn reload_text(
    path: &Path,
    text: &Result<String, String>,
    live: &Live,
    status: &ReloadStatus,
    forced: bool,
) -> bool {
    let file = path.display().to_string();
    let parsed = match text {
        Ok(t) => config::parse_in(&file, t, &config::Env::this_process()),
        Err(msg) => Err(config::ConfigError {
            file,
            line: None,
            key: None,
            msg: msg.clone(),
        }),
    };
    match parsed {
        Ok(mut c) => {
            c.source = Some(path.to_path_buf());
            let running: Vec<String> = live
                .probes
                .lock()
                .map(|p| p.snapshot().into_iter().map(|s| s.path).collect())
                .unwrap_or_default();
            if let Err(e) = config::check::reject_unusable_probe_dirs(&c, &running) {
                status.mark(false);
                error!(path = %path.display(), error = %e, "Bad configuration on reload; keeping the running one.");
                return false;
            }
            if let Err(e) = live.apply(c) {
                status.mark(false);
                error!(path = %path.display(), error = %e, "Cannot apply the reloaded configuration; keeping the running one.");
                return false;
            }
            status.mark(true);
            info!(path = %path.display(), trigger = if forced { "SIGHUP" } else { "file change" }, "Configuration reloaded.");
            true
        }
        Err(e) => {
            status.mark(false);
            error!(error = %e, "Bad configuration on reload; keeping the running one.");
            false
        }
    }
}

/// What the config directory's watch asks the kernel for: entries made, removed, renamed in or
/// out (editors' and ConfigMaps' atomic swaps), written and closed, changed in place, their
/// metadata; and the directory itself removed or moved.
const CHANGES: WatchMask = WatchMask::CREATE
    .union(WatchMask::DELETE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::MODIFY)
    .union(WatchMask::ATTRIB)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF);

/// Watches the directory `path` is in for [`CHANGES`] on a thread of its own ("sw-watch",
/// blocked in `read(2)` on the inotify descriptor for the life of the process); each batch
/// of events is one [`Trigger::FileChanged`]. An overflowed queue is an event too. The thread
/// ends if the descriptor fails (logged once).
fn watch_dir(path: &Path, tx: Triggers) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut inotify = Inotify::init()?;
    inotify.watches().add(&dir, CHANGES)?;
    std::thread::Builder::new()
        .name("sw-watch".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            // Room for a few dozen events with names; a longer batch is read by the next call.
            let mut buf = [0u8; 4096];
            loop {
                match inotify.read_events_blocking(&mut buf) {
                    Ok(events) => {
                        if events.count() > 0 {
                            let _ = tx.try_send(Trigger::FileChanged);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        warn!(dir = %dir.display(), error = %e, "The config directory's watch failed; reload on SIGHUP only.");
                        return;
                    }
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the watch sent no trigger within `within` (each batch of events is one).
    fn quiet_for(rx: &mpsc::Receiver<Trigger>, within: Duration) -> bool {
        rx.recv_timeout(within) == Err(mpsc::RecvTimeoutError::Timeout)
    }

    /// Runs `act` and checks the watch sent a trigger for it within 5 s (what came before is
    /// dropped first).
    fn wakes(rx: &mpsc::Receiver<Trigger>, what: &str, act: impl FnOnce()) {
        while rx.try_recv().is_ok() {}
        act();
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)),
            Ok(Trigger::FileChanged),
            "{what} woke nothing"
        );
    }

    /// Reading files in the config's directory (what every process does to a shared `/etc`)
    /// wakes the watch thread not once; writing the config, a swap by rename, a removal and
    /// the kubelet's `..data` swap each send a trigger.
    #[test]
    fn the_watch_wakes_for_changes_and_never_for_reads() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("stallwatch.toml");
        let other = dir.path().join("hosts");
        std::fs::write(&cfg, "").unwrap();
        std::fs::write(&other, "127.0.0.1 localhost\n").unwrap();
        let (tx, rx) = mpsc::sync_channel::<Trigger>(64);
        watch_dir(&cfg, tx).unwrap();

        for _ in 0..200 {
            std::fs::read(&other).unwrap();
            std::fs::read(&cfg).unwrap();
            let _ = std::fs::read_dir(dir.path()).unwrap().count();
        }
        assert!(
            quiet_for(&rx, Duration::from_millis(300)),
            "600 reads in the directory woke the watch"
        );
        wakes(&rx, "the write", || {
            std::fs::write(&cfg, "[host]\n").unwrap()
        });

        // An atomic swap, as editors and the kubelet do: write aside, rename over.
        let aside = dir.path().join("..data_tmp");
        std::fs::write(&aside, "[threads]\n").unwrap();
        wakes(&rx, "the rename", || std::fs::rename(&aside, &cfg).unwrap());
        wakes(&rx, "the removal", || std::fs::remove_file(&other).unwrap());
        // The kubelet's ConfigMap update: the file is a symlink through `..data`, which is
        // swapped for a link to a new timestamped directory by a rename.
        let kube = tempfile::tempdir().unwrap();
        let (old_dir, new_dir) = (
            kube.path().join("..2026_12_04_1"),
            kube.path().join("..2026_12_04_2"),
        );
        std::fs::create_dir(&old_dir).unwrap();
        std::fs::write(old_dir.join("stallwatch.toml"), "").unwrap();
        std::os::unix::fs::symlink("..2026_12_04_1", kube.path().join("..data")).unwrap();
        let linked = kube.path().join("stallwatch.toml");
        std::os::unix::fs::symlink("..data/stallwatch.toml", &linked).unwrap();
        let (ktx, krx) = mpsc::sync_channel::<Trigger>(64);
        watch_dir(&linked, ktx).unwrap();
        std::fs::create_dir(&new_dir).unwrap();
        std::fs::write(new_dir.join("stallwatch.toml"), "[host]\n").unwrap();
        std::os::unix::fs::symlink("..2026_12_04_2", kube.path().join("..data_tmp")).unwrap();
        wakes(&krx, "the ..data swap", || {
            std::fs::rename(kube.path().join("..data_tmp"), kube.path().join("..data")).unwrap()
        });
        assert_eq!(std::fs::read_to_string(&linked).unwrap(), "[host]\n");

        // Late events of the changes above, then reads alone.
        while !quiet_for(&rx, Duration::from_millis(100)) {}
        for _ in 0..100 {
            std::fs::read(&cfg).unwrap();
        }
        assert!(
            quiet_for(&rx, Duration::from_millis(300)),
            "reads after the changes woke the watch"
        );
    }
}
