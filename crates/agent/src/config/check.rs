//! Looking at probe directories with a deadline, for `stallwatch check-config` and `stallwatch
//! doctor`: whether each exists, is a directory, is on a writable filesystem and is writable by
//! us — the checks that loading a config no longer makes, because on a hung filesystem the
//! `stat` alone never returns.
//!
//! Each directory is checked by a child process (this binary, hidden subcommand
//! `__check-probe-dir`), not a thread: a thread stuck in D state cannot be killed and would keep
//! this process from exiting (a process ends only when its last thread does), so the incident
//! tool would hang at exit instead. A child that does not answer by the deadline is sent
//! SIGKILL (it dies as soon as its `stat` returns) and left to init; we report "not answering
//! after N s" and exit normally.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The hidden subcommand that checks one directory and prints `ok` or the reason.
pub const SUBCOMMAND: &str = "__check-probe-dir";

/// What became of one directory's check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirState {
    Usable,
    /// Missing, not a directory, read-only, not writable: the reason.
    Unusable(String),
    /// No answer within the deadline: the filesystem is probably hung.
    NotAnswering(Duration),
    /// The check itself could not run (cannot start the child).
    Unknown(String),
}

impl DirState {
    /// One line for a person, naming the directory.
    pub fn describe(&self, path: &Path) -> String {
        match self {
            DirState::Usable => format!("{} is a writable directory", path.display()),
            DirState::Unusable(why) => why.clone(),
            DirState::NotAnswering(d) => format!(
                "{}: not answering after {} s (the filesystem may be hung; the agent reports this as probe timeouts)",
                path.display(),
                fmt_secs(*d)
            ),
            DirState::Unknown(why) => format!("{}: cannot check: {why}", path.display()),
        }
    }
}

fn fmt_secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}")
    } else {
        format!("{s:.1}")
    }
}

/// The child's side: check `path` and print the verdict. Exit status 0 when usable.
pub fn child_main(path: &Path) -> crate::cli::Exit {
    match stallwatch_collector::sample::probe::validate(path) {
        Ok(()) => {
            println!("ok");
            crate::cli::Exit::Ok
        }
        Err(e) => {
            println!("{e}");
            crate::cli::Exit::Failure
        }
    }
}

/// Checks every `(directory, deadline)` at once, each in its own child process, and returns
/// when each has answered or passed its deadline (so at most the largest deadline).
pub fn check_dirs(dirs: &[(PathBuf, Duration)]) -> Vec<DirState> {
    let exe = std::env::current_exe();
    let started = Instant::now();
    let mut children: Vec<Result<Child, String>> = dirs
        .iter()
        .map(|(p, _)| {
            let exe = exe
                .as_ref()
                .map_err(|e| format!("cannot find this program: {e}"))?;
            Command::new(exe)
                .arg(SUBCOMMAND)
                .arg(p)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", exe.display()))
        })
        .collect();
    let mut out: Vec<Option<DirState>> = vec![None; dirs.len()];
    loop {
        let mut pending = false;
        for (i, c) in children.iter_mut().enumerate() {
            if out[i].is_some() {
                continue;
            }
            let child = match c {
                Ok(child) => child,
                Err(e) => {
                    out[i] = Some(DirState::Unknown(e.clone()));
                    continue;
                }
            };
            match child.try_wait() {
                Ok(Some(status)) => {
                    let mut text = String::new();
                    if let Some(mut so) = child.stdout.take() {
                        let _ = so.read_to_string(&mut text);
                    }
                    let text = text.trim().to_string();
                    out[i] = Some(if status.success() && text == "ok" {
                        DirState::Usable
                    } else if text.is_empty() {
                        DirState::Unknown(format!("the check exited with {status}"))
                    } else {
                        DirState::Unusable(text)
                    });
                }
                Ok(None) if started.elapsed() >= dirs[i].1 => {
                    // Dies as soon as its stat returns; until then it waits in D state.
                    let _ = child.kill();
                    out[i] = Some(DirState::NotAnswering(dirs[i].1));
                }
                Ok(None) => pending = true,
                Err(e) => out[i] = Some(DirState::Unknown(e.to_string())),
            }
        }
        if !pending {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    out.into_iter()
        .map(|s| s.unwrap_or_else(|| DirState::Unknown("no result".into())))
        .collect()
}

/// The longest the agent waits for a probe directory's check at start or on a reload.
const AGENT_CHECK_DEADLINE: Duration = Duration::from_secs(3);

/// The agent's own check of new probe directories, at start and on a reload (on the reload
/// thread, never an HTTP worker): a directory that is definitely unusable (missing, read-only,
/// not writable) rejects the config, as an operator who mistyped a path expects; one that does
/// not answer within its probe's timeout (at most 3 s) is accepted with a warning, since a
/// hung disk is exactly what the probe is there to report. `skip` are directories already
/// being probed (their state is the probe's own business now).
pub fn reject_unusable_probe_dirs(cfg: &super::Config, skip: &[String]) -> Result<(), String> {
    let dirs: Vec<(PathBuf, Duration)> = cfg
        .probes
        .iter()
        .filter(|p| !skip.iter().any(|s| Path::new(s) == p.path))
        .map(|p| (p.path.clone(), p.timeout.min(AGENT_CHECK_DEADLINE)))
        .collect();
    let mut bad = Vec::new();
    for ((path, _), state) in dirs.iter().zip(check_dirs(&dirs)) {
        match state {
            DirState::Usable => {}
            DirState::Unusable(_) => bad.push(state.describe(path)),
            DirState::NotAnswering(_) | DirState::Unknown(_) => {
                tracing::warn!(path = %path.display(), state = %state.describe(path),
                    "Probe directory not checked; starting its probe anyway.");
            }
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!("probe directory unusable: {}", bad.join("; ")))
    }
}

/// `stallwatch check-config`: the config file (and web config file) as the agent would load
/// them, then each probe directory as the probe will find it, each within its probe's
/// `timeout`. Exit 0 when everything is fine, 2 when the config or a probe directory is wrong,
/// 1 when a probe directory did not answer in time (the config itself is valid).
pub fn main(common: &crate::cli::Common) -> anyhow::Result<crate::cli::Exit> {
    use anyhow::Context;

    use crate::cli::{BadInput, Exit};

    let (cfg, text, file) = match &common.config_file {
        Some(p) => {
            let file = p.display().to_string();
            let text = super::read_bounded(p).map_err(|msg| super::ConfigError {
                file: file.clone(),
                line: None,
                key: None,
                msg,
            })?;
            let cfg = super::parse_in(&file, &text, &super::Env::this_process())?;
            (cfg, text, file)
        }
        None => (
            super::Config::default(),
            String::new(),
            "<defaults>".to_string(),
        ),
    };
    if let Some(w) = &common.web_config_file {
        crate::web::WebConfig::load(w)
            .with_context(|| format!("web config {}", w.display()))
            .context(BadInput)?;
    }
    let loc = super::error::Locator::new(&file, &text);
    let dirs: Vec<(PathBuf, Duration)> = cfg
        .probes
        .iter()
        .map(|p| (p.path.clone(), p.timeout))
        .collect();
    let mut exit = Exit::Ok;
    for (i, ((path, _), state)) in dirs.iter().zip(check_dirs(&dirs)).enumerate() {
        let key = format!("probe[{i}].path");
        match state {
            DirState::Usable => {}
            DirState::Unusable(why) => {
                eprintln!("stallwatch: bad config: {}", loc.err(&key, why));
                exit = Exit::BadConfig;
            }
            other => {
                eprintln!("stallwatch: {}", loc.err(&key, other.describe(path)));
                if exit == Exit::Ok {
                    exit = Exit::Failure;
                }
            }
        }
    }
    if exit == Exit::Ok {
        println!(
            "{file}: OK (interval {:?}, peak window {:?}, {} probe(s))",
            cfg.host.interval,
            cfg.host.peak_window,
            cfg.probes.len()
        );
    }
    Ok(exit)
}
