//! The real Debian `prometheus` and `prometheus-alertmanager`, started by hand on loopback
//! with free ports and temp storage, and a webhook receiver the test runs itself. Each is
//! stopped by its PID and its files removed on drop, also when the test panics.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::write;

pub const PROMETHEUS: &str = "prometheus";
pub const ALERTMANAGER: &str = "prometheus-alertmanager";

/// A port that was free a moment ago (bind :0, read it, close). The servers below retry with
/// a new one if another process took it in between.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

pub(crate) fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A child server process with its own temp dir and a captured log; SIGTERM, then SIGKILL after
/// 5 s, on drop.
pub(crate) struct Server {
    name: &'static str,
    child: Child,
    dir: tempfile::TempDir,
    pub(crate) url: String,
}

impl Server {
    /// Starts `bin` with `args(dir, port)` on a free port and waits (≤ 20 s) for `/-/ready`.
    pub(crate) fn start(
        name: &'static str,
        bin: &str,
        dir: tempfile::TempDir,
        args: impl Fn(&Path, u16) -> Vec<String>,
    ) -> Server {
        let log_path = dir.path().join("server.log");
        let mut last_log = String::new();
        for _attempt in 0..3 {
            let port = free_port();
            let log = std::fs::File::create(&log_path).unwrap();
            let mut child = Command::new(bin)
                .args(args(dir.path(), port))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {bin} (is the Debian package installed?): {e}"));
            let url = format!("http://127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    // Most likely the port was taken in between: try another.
                    last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    eprintln!("{name} exited early ({status}):\n{last_log}");
                    break;
                }
                if http()
                    .get(format!("{url}/-/ready"))
                    .send()
                    .is_ok_and(|r| r.status().is_success())
                {
                    return Server {
                        name,
                        child,
                        dir,
                        url,
                    };
                }
                if Instant::now() > deadline {
                    // Dropped while unwinding: stopped and cleaned up.
                    let s = Server {
                        name,
                        child,
                        dir,
                        url,
                    };
                    panic!("{name} not ready after 20 s; log:\n{}", s.log());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!("{name} did not start in 3 attempts; last log:\n{last_log}");
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid (not yet reaped: we wait below).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Ok(None) = self.child.try_wait() {
            if Instant::now() > deadline {
                eprintln!("{} ignored SIGTERM for 5 s; killing", self.name);
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A real Prometheus with `config` (YAML) and extra files (e.g. rules) in its temp dir.
pub struct Prometheus {
    server: Server,
}

impl Prometheus {
    /// Any server that speaks Prometheus's query API (VictoriaMetrics, in the fleet test).
    pub(crate) fn from_server(server: Server) -> Prometheus {
        Prometheus { server }
    }

    pub(crate) fn url(&self) -> &str {
        &self.server.url
    }

    /// `config` may refer to `{dir}`, replaced by the temp dir (for rule files written by
    /// `files`: name → content).
    pub fn start(config: &str, files: &[(&str, &str)]) -> Prometheus {
        let dir = tempfile::Builder::new()
            .prefix("stallwatch-prometheus-")
            .tempdir()
            .unwrap();
        for (name, text) in files {
            write(&dir.path().join(name), text);
        }
        let cfg = config.replace("{dir}", &dir.path().display().to_string());
        write(&dir.path().join("prometheus.yml"), &cfg);
        let out = Command::new("promtool")
            .args(["check", "config"])
            .arg(dir.path().join("prometheus.yml"))
            .output()
            .expect("run promtool");
        assert!(
            out.status.success(),
            "promtool check config:\n{}{}\n{cfg}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let server = Server::start("prometheus", PROMETHEUS, dir, |d, port| {
            vec![
                format!("--config.file={}", d.join("prometheus.yml").display()),
                format!("--storage.tsdb.path={}", d.join("data").display()),
                format!("--web.listen-address=127.0.0.1:{port}"),
                "--log.level=warn".into(),
            ]
        });
        Prometheus { server }
    }

    pub fn log(&self) -> String {
        self.server.log()
    }

    /// GET `path` with query `params`; the decoded JSON whatever the status (Prometheus
    /// answers errors as JSON too).
    pub fn api(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let resp = http()
            .get(format!("{}{path}", self.server.url))
            .query(params)
            .send()
            .unwrap_or_else(|e| panic!("GET {path} {params:?}: {e}"));
        let text = resp.text().unwrap();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}"))
    }

    /// An instant query at "now": the whole response (`status`, `data` or `error`).
    pub fn query(&self, expr: &str) -> Value {
        self.api("/api/v1/query", &[("query", expr)])
    }

    /// The scalar value of an instant query that must return exactly one sample.
    pub fn value(&self, expr: &str) -> Option<f64> {
        let r = self.query(expr);
        let res = r["data"]["result"].as_array()?;
        if res.len() != 1 {
            return None;
        }
        res[0]["value"][1].as_str()?.parse().ok()
    }

    /// Polls `pred` on a query's result until it holds, or panics after `timeout`.
    pub fn wait_for(&self, timeout: Duration, what: &str, expr: &str, pred: impl Fn(f64) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.value(expr).is_some_and(&pred) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what} ({expr} = {}); targets: {}\nlog:\n{}",
                    self.query(expr),
                    self.api("/api/v1/targets", &[]),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// A real Alertmanager (no clustering) with `config` (YAML).
pub struct Alertmanager {
    server: Server,
}

impl Alertmanager {
    pub fn start(config: &str) -> Alertmanager {
        let dir = tempfile::Builder::new()
            .prefix("stallwatch-alertmanager-")
            .tempdir()
            .unwrap();
        write(&dir.path().join("alertmanager.yml"), config);
        let server = Server::start("alertmanager", ALERTMANAGER, dir, |d, port| {
            vec![
                format!("--config.file={}", d.join("alertmanager.yml").display()),
                format!("--storage.path={}", d.join("data").display()),
                format!("--web.listen-address=127.0.0.1:{port}"),
                // Empty: no gossip listener on 0.0.0.0:9094.
                "--cluster.listen-address=".into(),
                "--log.level=warn".into(),
            ]
        });
        Alertmanager { server }
    }

    pub fn url(&self) -> &str {
        &self.server.url
    }

    /// host:port, as Prometheus's `alertmanagers.static_configs.targets` wants it.
    pub fn host_port(&self) -> &str {
        self.server.url.trim_start_matches("http://")
    }

    pub fn log(&self) -> String {
        self.server.log()
    }
}

/// A tiny HTTP server on a thread that records every POST body (as JSON) and answers 200.
pub struct Webhook {
    pub url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl Webhook {
    pub fn start() -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, s) = (bodies.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                if let Err(e) = serve_one(conn, &b) {
                    eprintln!("webhook: {e}");
                }
            }
        });
        Webhook {
            url: format!("http://{addr}/alerts"),
            bodies,
            stop,
            addr,
            thread: Some(thread),
        }
    }

    pub fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().unwrap().clone()
    }

    /// Waits until a received notification satisfies `pred`, and returns it.
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
        diag: impl Fn() -> String,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.bodies().into_iter().find(|v| pred(v)) {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; received: {:#?}\n{}",
                    self.bodies(),
                    diag()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn serve_one(conn: TcpStream, bodies: &Mutex<Vec<Value>>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut r = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    r.read_line(&mut request_line)?;
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    if request_line.starts_with("POST ") {
        match serde_json::from_slice(&body) {
            Ok(v) => bodies.lock().unwrap().push(v),
            Err(e) => eprintln!(
                "webhook: body is not JSON ({e}): {}",
                String::from_utf8_lossy(&body)
            ),
        }
    }
    let mut w = conn;
    w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    w.flush()
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
