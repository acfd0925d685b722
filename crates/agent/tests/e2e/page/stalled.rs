//! A REAL stall on the page: the FUSE hung-disk rig (`hung.rs`) stops answering, a direct write
//! and a cold `stat` wait in D, and the page — already open in chromium — turns red by itself,
//! lists the stuck threads (one with a hostile name, which must stay text), records the incident
//! and shows its record; `why` and `incidents` say the same in a terminal.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::browser::screenshot_dir;
use super::{open_page, summary};
use crate::harness::{require_root, write, Agent, BIN};
use crate::hung::{run_bounded, state_of, HungDisk};

/// A process name that is markup: 10 bytes, fits the kernel's 15.
const HOSTILE: &str = "<b>pwn</b>";

const IO_CAUSES: &[&str] = &["disk_stalled", "ebs_credits", "writeback", "disk_saturated"];

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The cells of the D-state table under `scope` whose text is exactly the hostile name, and
/// whether any element was made of it.
fn hostile_in(scope: &str) -> String {
    format!(
        "[...document.querySelectorAll('{scope} td code')].some(e => e.textContent === {name}) \
         && document.querySelectorAll('b').length === 0",
        name = serde_json::to_string(HOSTILE).unwrap()
    )
}

/// A `disk_stalled` cause on the page names `dev` (its evidence or its devices).
fn disk_stalled_names(dev: &str) -> String {
    format!(
        "[...document.querySelectorAll('#causes .cause[data-cause=\"disk_stalled\"]')]
           .some(e => /\\b{dev}\\b/.test(e.textContent))"
    )
}

#[test]
fn hung_disk_turns_the_open_page_red_and_records_the_incident() {
    if !require_root("hung_disk_turns_the_open_page_red_and_records_the_incident") {
        return;
    }
    let rig = HungDisk::start(&["cold"]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sw.toml");
    // Walk threads every second, so the page sees the stuck ones at once; record an incident
    // after 2 s of stall instead of 10.
    write(
        &cfg,
        "[threads]\ninterval = \"1s\"\n\n[incident]\nmin_duration = \"2s\"\n",
    );
    let agent = Agent::start_with(&[&format!("--config.file={}", cfg.display())], |c| {
        rig.enter(c)
    });
    let url = format!("--agent.url=http://{}", agent.addr);
    let (mut b, tab) = open_page(&agent);

    rig.hang();
    // A process whose name is markup, in D on a cold lookup (dash's builtin `[`: the shell
    // itself waits, under the name it gave itself).
    let mut sh = rig.command(Path::new("sh"));
    sh.arg("-c")
        .arg(format!(
            "printf %s '{HOSTILE}' > /proc/self/comm; [ -e {} ]",
            rig.path("cold").display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let hostile = KillOnDrop(sh.spawn().unwrap());
    // After the agent and the hostile process: dropped first, so they can exit.
    let _resume = rig.resume_on_drop();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        state_of(hostile.0.id()),
        Some('D'),
        "the hostile process waits in D"
    );

    tab.wait(
        &mut b,
        Duration::from_secs(30),
        "the open page to say 'Stalled' on I/O by itself",
        // Not only 'stalled': on a busy machine cpu (or lock, for threads waiting on a buffer
        // lock) may come up a second before the disk has been silent for stall_after.
        "document.getElementById('verdict').dataset.stalled === 'true' && \
         document.getElementById('verdict').dataset.io === 'true'",
    );
    tab.wait(
        &mut b,
        Duration::from_secs(30),
        "the hostile thread in the D table, as text",
        &hostile_in("#dstate"),
    );
    let dev = rig.loop_device();
    tab.wait(
        &mut b,
        Duration::from_secs(30),
        "a disk_stalled cause naming the hung loop device",
        &disk_stalled_names(&dev),
    );
    let s = summary(&tab, &mut b);
    eprintln!("stalled page: {s}");
    assert_eq!(s["io"], "true", "a hung disk is I/O: {s}");
    assert!(
        IO_CAUSES.contains(&s["cause"].as_str().unwrap()),
        "an I/O cause: {s}"
    );
    assert!(s["line"].as_str().unwrap().starts_with("Stalled: "), "{s}");
    let causes = tab.eval(
        &mut b,
        "[...document.querySelectorAll('#causes .cause')].map(e => e.dataset.cause + ': ' + e.textContent).join('\\n')",
    );
    assert!(
        !causes.as_str().unwrap().is_empty(),
        "the evidence of each cause is shown: {s}"
    );
    tab.screenshot(&mut b, &screenshot_dir().join("stalled.png"));

    // The same in a terminal.
    let why = run_bounded(
        std::process::Command::new(BIN).args(["why", &url]),
        Duration::from_secs(30),
    );
    eprintln!("why:\n{}{}", why.stdout, why.stderr);
    assert_eq!(why.code, Some(3), "stalled exits 3: {}", why.stderr);
    assert!(why.stdout.starts_with("STALLED (I/O) "), "{}", why.stdout);
    assert!(why.stdout.contains(HOSTILE), "{}", why.stdout);

    // The incident: listed on the page, and its record opens in place.
    tab.wait(
        &mut b,
        Duration::from_secs(60),
        "the incident in the page's list",
        "document.querySelector('#incidents a[href^=\"#incident/\"]') !== null",
    );
    tab.eval(
        &mut b,
        "location.hash = document.querySelector('#incidents a[href^=\"#incident/\"]').getAttribute('href')",
    );
    tab.wait(
        &mut b,
        Duration::from_secs(30),
        "the incident's record with the hostile thread",
        &hostile_in("#incident"),
    );
    let id = tab
        .eval(
            &mut b,
            "document.getElementById('incident').dataset.incident",
        )
        .as_str()
        .unwrap()
        .to_string();
    let record: Value = serde_json::from_str(
        tab.eval(
            &mut b,
            "JSON.stringify({text: document.getElementById('incident').textContent, \
             stacks: document.querySelectorAll('#incident details pre').length})",
        )
        .as_str()
        .unwrap(),
    )
    .unwrap();
    for want in ["Verdicts over time", "Peaks", "Threads in D", "Disks"] {
        assert!(
            record["text"].as_str().unwrap().contains(want),
            "{want:?} in the record: {record}"
        );
    }
    eprintln!("incident {id}: {} kernel stacks shown", record["stacks"]);
    tab.screenshot(&mut b, &screenshot_dir().join("incident.png"));

    let list = run_bounded(
        std::process::Command::new(BIN).args(["incidents", &url]),
        Duration::from_secs(30),
    );
    assert_eq!(list.code, Some(0), "{}", list.stderr);
    assert!(list.stdout.contains(&id), "{}", list.stdout);
    let one = run_bounded(
        std::process::Command::new(BIN).args(["incidents", &id, &url]),
        Duration::from_secs(30),
    );
    eprintln!("incidents {id}:\n{}", one.stdout);
    assert_eq!(one.code, Some(0), "{}", one.stderr);
    assert!(
        one.stdout.starts_with(&format!("incident {id}: ")) && one.stdout.contains(HOSTILE),
        "{}",
        one.stdout
    );

    // On a phone.
    tab.eval(&mut b, "location.hash = ''");
    tab.viewport(&mut b, 390, 844, true);
    std::thread::sleep(Duration::from_millis(500));
    let s = summary(&tab, &mut b);
    assert!(
        s["scrollWidth"].as_u64().unwrap() <= 390,
        "the stalled page scrolls sideways on a phone: {s}"
    );
    tab.screenshot(&mut b, &screenshot_dir().join("stalled-phone.png"));

    // The disk answers again; the page drops this disk's stall and the hostile thread by itself
    // (after the engine's clear_after). Not necessarily "Not stalled": on this shared machine
    // other work may keep another cause up.
    rig.resume();
    tab.wait(
        &mut b,
        Duration::from_secs(60),
        "the page to drop the hung disk's stall after it resumed",
        &format!(
            "!{} && ![...document.querySelectorAll('#dstate td code')]
               .some(e => e.textContent === {name})",
            disk_stalled_names(&dev),
            name = serde_json::to_string(HOSTILE).unwrap()
        ),
    );
    drop(hostile);
}
