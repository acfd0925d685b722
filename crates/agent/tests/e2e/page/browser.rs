//! Debian's real `chromium`, headless, driven over the DevTools protocol on a pipe
//! (`--remote-debugging-pipe`: requests on fd 3, answers and events on fd 4, each message
//! ending in a NUL byte). No WebDriver, no websocket crate: the tests evaluate JavaScript in the
//! page *after* its own script has fetched the real agent's API, change the viewport to a phone's,
//! watch the page's network requests, and take screenshots.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// One call's answer may take this long (a navigation, a full-page screenshot).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Browser {
    child: Child,
    to: File,
    from: mpsc::Receiver<Value>,
    next_id: u64,
    /// Events seen so far (every message without an `id`), oldest first.
    pub events: Vec<Value>,
    _profile: tempfile::TempDir,
}

/// A pipe whose two ends are CLOEXEC and numbered ≥ 10, so that `dup2` onto 3 and 4 in the
/// child can never overwrite one of them.
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array we own.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let high = |fd: i32| {
        // SAFETY: fcntl on a descriptor we own; the original is closed once the copy exists.
        let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
        assert!(new >= 10, "fcntl F_DUPFD_CLOEXEC");
        unsafe { libc::close(fd) };
        // SAFETY: `new` is a fresh descriptor that nothing else owns.
        unsafe { OwnedFd::from_raw_fd(new) }
    };
    (high(fds[0]), high(fds[1]))
}

impl Browser {
    /// Starts chromium, or panics saying how to install it (`make test-deps`).
    pub fn start() -> Browser {
        let profile = tempfile::Builder::new()
            .prefix(&format!("stallwatch-chromium-{}-", std::process::id()))
            .tempdir()
            .unwrap();
        let (child_in, to) = pipe();
        let (from, child_out) = pipe();
        let (cin, cout) = (child_in.as_raw_fd(), child_out.as_raw_fd());
        let mut cmd = Command::new("chromium");
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-extensions",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
            "--mute-audio",
            "--remote-debugging-pipe",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // SAFETY: dup2 and prctl are async-signal-safe; dup2 clears CLOEXEC on the copies.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(cin, 3) != 3 || libc::dup2(cout, 4) != 4 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start chromium ({e}): `make test-deps` installs Debian's chromium")
        });
        drop((child_in, child_out));
        let (tx, rx) = mpsc::channel();
        let reader = File::from(from);
        std::thread::spawn(move || {
            let mut r = BufReader::new(reader);
            let mut buf = Vec::new();
            while r.read_until(0, &mut buf).is_ok_and(|n| n > 0) {
                if buf.last() == Some(&0) {
                    buf.pop();
                }
                if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
                buf.clear();
            }
        });
        Browser {
            child,
            to: File::from(to),
            from: rx,
            next_id: 0,
            events: Vec::new(),
            _profile: profile,
        }
    }

    /// Sends `method` (to the page of `session`, if any) and waits for its answer.
    pub fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to
            .write_all(&bytes)
            .unwrap_or_else(|e| panic!("chromium went away before {method}: {e}"));
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .from
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no answer from chromium to {method}: {e}"));
            if v["id"].as_u64() == Some(id) {
                if let Some(err) = v.get("error") {
                    panic!("chromium: {method} failed: {err}");
                }
                return v["result"].clone();
            }
            self.events.push(v);
        }
    }

    /// Collects the events that arrived since the last call.
    pub fn drain_events(&mut self) {
        while let Ok(v) = self.from.try_recv() {
            self.events.push(v);
        }
    }

    /// Opens `url` in a new tab of `width` × `height` CSS pixels (a phone: `mobile`), sending
    /// `headers` with every request of the page (basic auth).
    pub fn open(
        &mut self,
        url: &str,
        width: u32,
        height: u32,
        mobile: bool,
        headers: Value,
    ) -> Tab {
        let target = self.call(None, "Target.createTarget", json!({"url": "about:blank"}));
        let target = target["targetId"].as_str().unwrap().to_string();
        let s = self.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": target, "flatten": true}),
        );
        let session = s["sessionId"].as_str().unwrap().to_string();
        let tab = Tab { session };
        self.call(tab.id(), "Page.enable", json!({}));
        self.call(tab.id(), "Network.enable", json!({}));
        self.call(
            tab.id(),
            "Network.setExtraHTTPHeaders",
            json!({ "headers": headers }),
        );
        tab.viewport(self, width, height, mobile);
        self.call(tab.id(), "Page.navigate", json!({ "url": url }));
        tab
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Tab {
    session: String,
}

impl Tab {
    fn id(&self) -> Option<&str> {
        Some(&self.session)
    }

    pub fn viewport(&self, b: &mut Browser, width: u32, height: u32, mobile: bool) {
        b.call(
            self.id(),
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": if mobile { 2 } else { 1 },
                   "mobile": mobile}),
        );
    }

    /// The value of a JavaScript expression in the page (promises awaited).
    pub fn eval(&self, b: &mut Browser, expr: &str) -> Value {
        let r = b.call(
            self.id(),
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(ex) = r.get("exceptionDetails") {
            panic!("JavaScript {expr:?} threw: {ex}");
        }
        r["result"]["value"].clone()
    }

    /// Evaluates `expr` until it is `true`, or panics after `timeout` with `diag` evaluated.
    pub fn wait(&self, b: &mut Browser, timeout: Duration, what: &str, expr: &str) {
        let deadline = Instant::now() + timeout;
        loop {
            // Before the navigation commits, the page is about:blank (no body, no elements).
            if self.eval(
                b,
                &format!("(() => {{ try {{ return {expr}; }} catch (e) {{ return false; }} }})()"),
            ) == json!(true)
            {
                return;
            }
            if Instant::now() > deadline {
                let state = self.eval(
                    b,
                    "JSON.stringify({state: document.body && document.body.dataset.state, \
                     status: (document.getElementById('status')||{}).textContent, \
                     verdict: (document.getElementById('verdict')||{}).textContent})",
                );
                panic!("timed out after {timeout:?} waiting for {what}; page: {state}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A PNG of the whole page (not only the viewport) at `path`.
    pub fn screenshot(&self, b: &mut Browser, path: &Path) {
        let m = b.call(self.id(), "Page.getLayoutMetrics", json!({}));
        let size = &m["cssContentSize"];
        let shot = b.call(
            self.id(),
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true,
                   "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}}),
        );
        let png = decode_base64(shot["data"].as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }
}

/// Where screenshots go for people to look at: `target/page-screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::harness::repo().join("target"))
        .join("page-screenshots")
}

fn decode_base64(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => continue,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}
