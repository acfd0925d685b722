//! The node page at `/` rendered by Debian's real `chromium` from the real agent binary
//! (issue 14 item 5), and the `why` / `incidents` CLI against the real agent (item 7).
//!
//! Each browser scenario asserts on the DOM after the page's own script has fetched the API,
//! and keeps screenshots under `target/page-screenshots/` for people to look at:
//! `idle.png`, `idle-phone.png`, `frozen-agent.png`, `stalled.png`, `stalled-phone.png`,
//! `incident.png`.
//!
//! These tests run in nextest's `host-writeback` group (.config/nextest.toml): "idle" means
//! no other test holds a disk hung or throttled meanwhile.

mod browser;
mod cli;
mod stalled;

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::Agent;
use browser::{screenshot_dir, Browser, Tab};

/// An agent config for the idle scenarios: every verdict threshold at the top of its range.
/// This machine runs builds and other tests beside these (a parallel build on 2 CPUs is a real
/// `cpu` stall, its writes a real `writeback` one), and the idle scenarios are about how the
/// page and the CLI show "not stalled"; whether the engine stays quiet on a busy node is the
/// verdict tests' job.
fn idle_config(dir: &std::path::Path) -> String {
    let cfg = dir.join("idle.toml");
    crate::harness::write(
        &cfg,
        "[verdict]\nio_some = \"100%\"\nio_full = \"100%\"\ncpu_some = \"100%\"\n\
         run_queue_per_cpu = 1000\nmemory_some = \"100%\"\nmemory_full = \"100%\"\n\
         stall_after = \"1h\"\nutilisation = \"100%\"\nawait = \"1m\"\nqueue = 100000\n\
         writeback_bytes = \"1TiB\"\nlock_threads = 100000\nlock_after = \"1h\"\n\
         credits_empty = \"0%\"\n",
    );
    format!("--config.file={}", cfg.display())
}

/// The page has fetched the API at least once and shows a verdict.
const RENDERED: &str = "!!document.body && document.body.dataset.state === 'ok' && \
     document.getElementById('verdict').dataset.stalled !== undefined";

/// What the tests read off the page, in one evaluation.
const SUMMARY: &str = r#"JSON.stringify({
  state: document.body.dataset.state,
  stalled: document.getElementById('verdict').dataset.stalled,
  cause: document.getElementById('verdict').dataset.cause,
  io: document.getElementById('verdict').dataset.io,
  line: document.getElementById('verdict-line').textContent,
  summary: document.getElementById('verdict-summary').textContent,
  sparks: [...document.querySelectorAll('#sparks .spark')].map(e => e.dataset.series),
  lines: document.querySelectorAll('#sparks svg polyline').length,
  dstate: document.getElementById('dstate').textContent,
  incidents: document.getElementById('incidents').textContent,
  scrollWidth: document.documentElement.scrollWidth,
  innerWidth: window.innerWidth,
  sparkWidths: [...document.querySelectorAll('#sparks .spark')].map(e => Math.round(e.getBoundingClientRect().width)),
})"#;

/// Chromium with the agent's page open on a desktop-sized tab, once it shows a verdict.
fn open_page(agent: &Agent) -> (Browser, Tab) {
    let mut b = Browser::start();
    let tab = b.open(&agent.url("/"), 1280, 900, false, json!({}));
    tab.wait(
        &mut b,
        Duration::from_secs(30),
        "the first verdict",
        RENDERED,
    );
    (b, tab)
}

fn summary(tab: &Tab, b: &mut Browser) -> Value {
    let s = tab.eval(b, SUMMARY);
    serde_json::from_str(s.as_str().expect("summary is a string")).unwrap()
}

/// The series the page must draw (the API's timeline columns, docs/api.md).
const SERIES: &[&str] = &[
    "psi_io_some",
    "psi_cpu_some",
    "psi_memory_some",
    "d_threads",
    "procs_blocked",
    "writeback_bytes",
    "dirty_bytes",
    "disk_await_seconds_max",
    "disk_utilisation_max",
    "burst_balance_min",
    "probe_latency_seconds_max",
];

/// Requests the page made to `path` (a prefix of the URL's path), and the most that were
/// in flight at once, from the DevTools network events.
fn requests_to(b: &mut Browser, path: &str) -> (usize, usize) {
    b.drain_events();
    let mut inflight = std::collections::HashSet::new();
    let (mut total, mut max) = (0, 0);
    for e in &b.events {
        let p = &e["params"];
        match e["method"].as_str() {
            Some("Network.requestWillBeSent")
                if p["request"]["url"]
                    .as_str()
                    .is_some_and(|u| u.split_once("//").is_some_and(|(_, r)| r.contains(path))) =>
            {
                total += 1;
                inflight.insert(p["requestId"].as_str().unwrap_or("").to_string());
                max = max.max(inflight.len());
            }
            Some("Network.loadingFinished") | Some("Network.loadingFailed") => {
                inflight.remove(p["requestId"].as_str().unwrap_or(""));
            }
            _ => {}
        }
    }
    (total, max)
}

#[test]
fn idle_node_desktop_and_phone() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&[&idle_config(dir.path())]);
    let (mut b, tab) = open_page(&agent);
    // A few seconds of history, so the sparklines have lines to draw.
    std::thread::sleep(Duration::from_secs(4));
    let s = summary(&tab, &mut b);
    eprintln!("idle page: {s}");
    assert_eq!(s["line"], "Not stalled", "{s}");
    assert_eq!(s["cause"], "none", "{s}");
    assert!(
        s["summary"].as_str().unwrap().starts_with("Not stalled"),
        "the verdict's own summary is shown: {s}"
    );
    let sparks: Vec<&str> = s["sparks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for want in SERIES {
        assert!(sparks.contains(want), "no sparkline for {want}: {s}");
    }
    assert!(
        s["lines"].as_u64().unwrap() >= 5,
        "sparklines draw lines: {s}"
    );
    assert!(
        s["dstate"]
            .as_str()
            .unwrap()
            .contains("no thread in D state")
            || s["dstate"].as_str().unwrap().contains("waiting in"),
        "{s}"
    );
    assert!(s["incidents"].as_str().is_some(), "{s}");
    assert!(
        s["scrollWidth"].as_u64() <= s["innerWidth"].as_u64(),
        "no sideways scrolling on a desktop: {s}"
    );
    tab.screenshot(&mut b, &screenshot_dir().join("idle.png"));

    // It refreshes by itself: new verdict requests keep coming, one at a time, about every 2 s.
    let (before, _) = requests_to(&mut b, "/api/v1/verdict");
    std::thread::sleep(Duration::from_secs(7));
    let (after, max_inflight) = requests_to(&mut b, "/api/v1/verdict");
    assert!(
        after >= before + 2,
        "the page refreshes itself: {before} → {after} verdict requests in 7 s"
    );
    assert_eq!(
        max_inflight, 1,
        "never more than one verdict request in flight"
    );

    // A phone, 390 CSS pixels wide: one column, nothing wider than the screen.
    tab.viewport(&mut b, 390, 844, true);
    std::thread::sleep(Duration::from_millis(500));
    let s = summary(&tab, &mut b);
    eprintln!(
        "phone: scrollWidth {} innerWidth {}",
        s["scrollWidth"], s["innerWidth"]
    );
    assert_eq!(s["innerWidth"], 390, "{s}");
    assert!(
        s["scrollWidth"].as_u64().unwrap() <= 390,
        "the page scrolls sideways on a phone: {s}"
    );
    for w in s["sparkWidths"].as_array().unwrap() {
        let w = w.as_u64().unwrap();
        assert!(
            (300..=390).contains(&w),
            "sparklines stack in one column on a phone ({w} px): {s}"
        );
    }
    tab.screenshot(&mut b, &screenshot_dir().join("idle-phone.png"));
}

/// An agent that stops answering (SIGSTOP: every request hangs) does not get a pile of requests
/// from the page, and the page says so plainly; when it answers again the page recovers.
#[test]
fn frozen_agent_gets_no_pile_of_requests() {
    let agent = Agent::start(&[]);
    let (mut b, tab) = open_page(&agent);
    let (before, _) = requests_to(&mut b, "/api/v1/verdict");
    agent.signal(libc::SIGSTOP);
    let cont = ContOnDrop(agent.child.id());
    // The page's own timeout is 8 s; wait past two of them.
    tab.wait(
        &mut b,
        Duration::from_secs(20),
        "the page to say the agent does not answer",
        "document.body.dataset.state === 'stale' && \
         document.getElementById('status').textContent.includes('agent not answering')",
    );
    std::thread::sleep(Duration::from_secs(6));
    let (during, max_inflight) = requests_to(&mut b, "/api/v1/verdict");
    let status = tab.eval(&mut b, "document.getElementById('status').textContent");
    eprintln!(
        "frozen agent: {} verdict requests in ~16 s, status {status}",
        during - before
    );
    assert_eq!(
        max_inflight, 1,
        "one request at a time, even when they hang"
    );
    assert!(
        during - before <= 4,
        "a hung agent gets few requests: {} in ~16 s",
        during - before
    );
    assert!(
        status.as_str().unwrap().contains("old"),
        "the page says how old its data is: {status}"
    );
    // The last verdict is still shown.
    assert_ne!(
        tab.eval(
            &mut b,
            "document.getElementById('verdict-line').textContent"
        ),
        json!("Asking the agent…")
    );
    tab.screenshot(&mut b, &screenshot_dir().join("frozen-agent.png"));
    drop(cont);
    tab.wait(
        &mut b,
        Duration::from_secs(20),
        "the page to recover",
        "document.body.dataset.state === 'ok'",
    );
}

struct ContOnDrop(u32);

impl Drop for ContOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the agent, our child.
        unsafe { libc::kill(self.0 as i32, libc::SIGCONT) };
    }
}
