//! Starts the real binary, finds its address in the "Listening." log line, scrapes it, and
//! kills it on drop (even when the test panics).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_stallwatch");

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures").join(name)
}

pub struct Agent {
    pub child: Child,
    pub addr: String,
    pub log: Arc<Mutex<String>>,
}

impl Agent {
    /// Starts `stallwatch` on 127.0.0.1:0 with `args` and waits for it to listen.
    pub fn start(args: &[&str]) -> Agent {
        Agent::start_with(args, |_| {})
    }

    /// Like [`Agent::start`], with a hook to adjust the command (environment) first.
    pub fn start_with(args: &[&str], adjust: impl FnOnce(&mut Command)) -> Agent {
        let mut cmd = Command::new(BIN);
        adjust(&mut cmd);
        let mut child = cmd
            .arg("--web.listen-address=127.0.0.1:0")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn stallwatch");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("msg=Listening.") {
                    if let Some(addr) = line
                        .split_whitespace()
                        .find_map(|f| f.strip_prefix("address="))
                    {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(addr.to_string());
                        }
                    }
                }
                log2.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("stallwatch did not start; log:\n{}", log.lock().unwrap());
            }
        };
        Agent { child, addr, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn scrape(&self) -> String {
        get(&self.url("/metrics"))
    }

    /// Scrapes until `pred` holds, or panics after `timeout` with the last scrape.
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Metrics) -> bool,
    ) -> Metrics {
        let deadline = Instant::now() + timeout;
        loop {
            let m = Metrics::parse(&self.scrape());
            if pred(&m) {
                return m;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; last scrape:\n{}\nlog:\n{}",
                    m.text,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn get(url: &str) -> String {
    let resp = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
        .get(url)
        .send()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
    resp.text().unwrap()
}

/// A parsed classic-text scrape: `series → value`, where series is `name{labels}` as printed.
pub struct Metrics {
    pub text: String,
    pub series: Vec<(String, f64)>,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let series = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse::<f64>().ok()?))
            })
            .collect();
        Metrics {
            text: text.to_string(),
            series,
        }
    }

    /// The value of the series whose text is exactly `series` (e.g. `stallwatch_load1` or
    /// `stallwatch_source_stuck{source="meminfo"}`).
    pub fn get(&self, series: &str) -> Option<f64> {
        self.series
            .iter()
            .find(|(k, _)| k == series)
            .map(|(_, v)| *v)
    }

    pub fn has_family(&self, name: &str) -> bool {
        self.series
            .iter()
            .any(|(k, _)| k == name || k.starts_with(&format!("{name}{{")))
    }
}

/// Skips loudly unless root; under CI a skip is a failure, since CI must run every test.
#[allow(dead_code)] // the real-kernel D-state tests of the next issue use it
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let msg = format!("SKIPPED {test}: needs root (real kernel state)");
    if std::env::var_os("CI").is_some() {
        panic!("{msg}, and CI must run every test");
    }
    eprintln!("\n!!!!!!!!!! {msg} !!!!!!!!!!\n");
    false
}

pub fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
