//! The systemd unit: verified, and its capabilities proven needed and enough on real D threads.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::dstate_rig::DStateRig;
use crate::harness::{get, require_root, write, Metrics, BIN};
use crate::rules::{out_text, run};

use super::*;

/// The unit with ExecStart pointing at the real binary (systemd-analyze checks it exists).
fn unit_copy(dir: &Path, with_nvme: bool) -> PathBuf {
    let mut unit = std::fs::read_to_string(deploy().join("systemd/stallwatch.service"))
        .unwrap()
        .replace("/usr/local/bin/stallwatch", BIN);
    if with_nvme {
        // Drop-in keys appended to [Service] (verify does not read drop-in directories).
        let dropin = std::fs::read_to_string(deploy().join("systemd/stallwatch-nvme.conf"))
            .unwrap()
            .replace("[Service]\n", "");
        unit = unit.replace("\n[Install]\n", &format!("\n{dropin}\n[Install]\n"));
    }
    let p = dir.join(if with_nvme {
        "stallwatch-nvme.service"
    } else {
        "stallwatch.service"
    });
    write(&p, &unit);
    p
}

pub(super) fn unit_caps() -> Vec<String> {
    let unit = std::fs::read_to_string(deploy().join("systemd/stallwatch.service")).unwrap();
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet=");
    line.split_whitespace().map(str::to_string).collect()
}

#[test]
fn deploy_systemd_unit_verifies_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    for nvme in [false, true] {
        let p = unit_copy(dir.path(), nvme);
        let o = run(
            Command::new("systemd-analyze").arg("verify").arg(&p),
            "systemd-analyze (Debian systemd)",
        );
        // verify exits 0 on unknown keys and bad values, but says so on stderr.
        assert!(
            o.status.success() && o.stderr.is_empty(),
            "systemd-analyze verify {}:\n{}",
            p.display(),
            out_text(&o)
        );
    }
    // ...and it does say so: a misspelt key is reported.
    let p = dir.path().join("bad.service");
    let unit = std::fs::read_to_string(unit_copy(dir.path(), false))
        .unwrap()
        .replace("ProtectSystem=strict", "ProtectSystem=strictest");
    write(&p, &unit);
    let o = run(
        Command::new("systemd-analyze").arg("verify").arg(&p),
        "systemd-analyze",
    );
    assert!(
        !o.stderr.is_empty(),
        "verify noticed nothing:\n{}",
        out_text(&o)
    );

    let caps = unit_caps();
    let unit = std::fs::read_to_string(deploy().join("systemd/stallwatch.service")).unwrap();
    assert_eq!(
        caps.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        [
            "CAP_DAC_READ_SEARCH",
            "CAP_SYS_PTRACE",
            "CAP_BPF",
            "CAP_PERFMON",
            "CAP_SYSLOG"
        ]
        .into(),
        "the README and deploy/README.md explain exactly these"
    );
    assert!(
        unit.lines().any(|l| l == "SystemCallFilter=bpf"),
        "the eBPF source's bpf(2) is in @privileged, not @system-service"
    );
    for must in [
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateDevices=yes",
        "ProtectKernelTunables=yes",
        "ProtectControlGroups=yes",
    ] {
        assert!(unit.lines().any(|l| l == must), "{must} missing");
    }
    for never in [
        "ProtectProc=invisible",
        "ProcSubset=pid",
        "PrivateUsers=yes",
    ] {
        assert!(
            !unit.lines().any(|l| l == never),
            "{never} hides what the agent reads"
        );
    }
}

/// The agent under `setpriv` with exactly `caps` (bounding set; root gets no others).
struct CappedAgent {
    child: Child,
    addr: String,
}

impl CappedAgent {
    fn start(caps: &[String], cfg: &Path) -> CappedAgent {
        let bounding = std::iter::once("-all".to_string())
            .chain(
                caps.iter()
                    .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase())),
            )
            .collect::<Vec<_>>()
            .join(",");
        let mut child = Command::new("setpriv")
            .args(["--bounding-set", &bounding, "--inh-caps", "-all", "--"])
            .arg(BIN)
            .arg("--web.listen-address=127.0.0.1:0")
            .arg(format!("--config.file={}", cfg.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn setpriv (util-linux)");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(a) = line
                    .split_whitespace()
                    .find_map(|f| f.strip_prefix("address="))
                {
                    if line.contains("msg=Listening.") {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(a.to_string());
                        }
                    }
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("stallwatch under setpriv {bounding} did not start");
            }
        };
        CappedAgent { child, addr }
    }

    fn scrape(&self) -> Metrics {
        Metrics::parse(&get(&format!("http://{}/metrics", self.addr)))
    }

    /// Wait channels of the threads in D, until at least `n` threads are seen.
    fn wchans(&self, n: f64) -> Vec<(String, f64)> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let m = self.scrape();
            let w: Vec<(String, f64)> = m
                .series
                .iter()
                .filter_map(|(k, v)| {
                    let l = k.strip_prefix("stallwatch_dstate_threads_by_wchan{wchan=\"")?;
                    Some((l.trim_end_matches("\"}").to_string(), *v))
                })
                .collect();
            if w.iter().map(|(_, v)| v).sum::<f64>() >= n {
                return w;
            }
            assert!(
                Instant::now() < deadline,
                "no {n} D threads by wchan:\n{}",
                m.text
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for CappedAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The unit's capability set is enough, and CAP_SYS_PTRACE in it is needed: real D-state
/// threads (the loop-device rig) are named by wait channel with the unit's set, and only as
/// "unknown" without CAP_SYS_PTRACE. No permission errors with the unit's set. (In the serial
/// host-I/O test group: `dstate` prefix in .config/nextest.toml.)
#[test]
fn dstate_systemd_unit_capabilities_name_wait_channels() {
    if !require_root("dstate_systemd_unit_capabilities_name_wait_channels") {
        return;
    }
    let rig = DStateRig::start(3, 3);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cfg.toml");
    write(
        &cfg,
        "[threads]\ninterval = \"1s\"\nfast_interval = \"1s\"\n[containers]\ninterval = \"1s\"\n\
         [bpf]\nenabled = false\n",
    );
    let caps = unit_caps();
    let agent = CappedAgent::start(&caps, &cfg);
    let w = agent.wchans(2.0);
    eprintln!("with {caps:?}: D threads by wchan {w:?}");
    assert!(
        w.iter().any(|(k, v)| k != "unknown" && *v >= 1.0),
        "with {caps:?} the wait channels should be readable: {w:?}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let m = agent.scrape();
    for (k, v) in &m.series {
        if k.starts_with("stallwatch_source_errors_total{") && k.contains("kind=\"permission\"") {
            assert_eq!(*v, 0.0, "{k} with the unit's capabilities");
        }
    }
    drop(agent);

    let without: Vec<String> = caps
        .iter()
        .filter(|c| *c != "CAP_SYS_PTRACE")
        .cloned()
        .collect();
    let agent = CappedAgent::start(&without, &cfg);
    let w = agent.wchans(2.0);
    eprintln!("with {without:?}: D threads by wchan {w:?}");
    assert!(
        w.iter().all(|(k, _)| k == "unknown"),
        "without CAP_SYS_PTRACE the rig's wait channels should be hidden (else the unit \
         asks for a capability it does not need): {w:?}"
    );
    assert!(
        rig.d_threads_now() >= 1,
        "the rig stayed stalled throughout"
    );
    drop(agent);
    drop(rig);
}

/// The eBPF episode source's capabilities in the unit are enough and each is needed: with the
/// unit's set it attaches and names the rig's wait channel; without CAP_BPF or CAP_PERFMON it
/// does not attach (the walk alone); without CAP_SYSLOG it attaches but its wait channels are
/// "unknown". (The walk's own capabilities: the test above, with the source off.)
#[test]
fn dstate_systemd_unit_capabilities_run_the_ebpf_source() {
    if !require_root("dstate_systemd_unit_capabilities_run_the_ebpf_source") {
        return;
    }
    let rig = DStateRig::start(3, 3);
    let tid = rig.tids()[0];
    let rig_wchan = std::fs::read_to_string(format!("/proc/{}/task/{tid}/wchan", rig.pid()))
        .unwrap()
        .trim()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cfg.toml");
    write(&cfg, "[bpf]\nenabled = \"auto\"\n");
    let caps = unit_caps();
    let without = |c: &str| -> Vec<String> { caps.iter().filter(|x| *x != c).cloned().collect() };
    let active = |a: &CappedAgent| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let m = a.scrape();
            if let Some(v) = m.get("stallwatch_bpf_active") {
                if v == 1.0 || Instant::now() > deadline {
                    return (v, m);
                }
            }
            assert!(
                Instant::now() < deadline,
                "no stallwatch_bpf_active:\n{}",
                m.text
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    let agent = CappedAgent::start(&caps, &cfg);
    assert_eq!(active(&agent).0, 1.0, "with the unit's {caps:?}");
    // Seeded from the walk at first, then from the tracepoint: named either way.
    std::thread::sleep(Duration::from_secs(4));
    let w = agent.wchans(2.0);
    assert!(
        w.iter().any(|(k, v)| *k == rig_wchan && *v >= 2.0),
        "with {caps:?} the rig's episodes are under its wait channel {rig_wchan}: {w:?}"
    );
    drop(agent);
    for cap in ["CAP_BPF", "CAP_PERFMON"] {
        let agent = CappedAgent::start(&without(cap), &cfg);
        let (v, m) = active(&agent);
        assert_eq!(
            v, 0.0,
            "without {cap} the source cannot attach:\n{}",
            m.text
        );
        drop(agent);
    }
    let agent = CappedAgent::start(&without("CAP_SYSLOG"), &cfg);
    assert_eq!(active(&agent).0, 1.0, "CAP_SYSLOG is not needed to attach");
    // Episodes seeded from the walk at attach carry the walk's names (CAP_SYS_PTRACE; other
    // threads stuck on this machine keep theirs); the rig's episodes last about a second, so a
    // few seconds later the rig's episodes in flight were all started by the tracepoint.
    std::thread::sleep(Duration::from_secs(4));
    let w = agent.wchans(2.0);
    assert!(
        !w.iter().any(|(k, _)| *k == rig_wchan)
            && w.iter().any(|(k, v)| k == "unknown" && *v >= 2.0),
        "without CAP_SYSLOG kernel addresses are hidden: the rig's {rig_wchan} reads unknown: {w:?}"
    );
    assert!(
        rig.d_threads_now() >= 1,
        "the rig stayed stalled throughout"
    );
    drop(agent);
    drop(rig);
}
