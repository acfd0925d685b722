//! Config values at and past their bounds through the real binary (issue 13 item 3), and
//! config files that are not files (item 1): every key at its maximum and at its minimum runs
//! without a panic; past a bound, start exits 2 naming file, line and key, and a reload keeps
//! the old config with `stallwatch_config_last_reload_successful 0`; a FIFO or `/dev/zero`
//! swapped in as the config fails the reload at once instead of wedging it or growing RSS.
//! (`config/tests.rs` walks every key of the bounds table at and past both ends.)

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{get, write, Agent, BIN};

const RELOAD_OK: &str = "stallwatch_config_last_reload_successful";

/// Every bounded key at its maximum (cross-field rules kept: fast intervals equal to their
/// slow ones). Off EC2 the cloud side gives up on IMDS at once (connection refused).
fn at_max(probe_dir: &Path) -> String {
    format!(
        r#"[sampler]
interval = "1h"
peak_window = "1day"
source_timeout = "1h"
[writeback]
burst_threshold = "1TiB"
[threads]
interval = "1h"
fast_interval = "1h"
timeout = "1h"
stall_psi_threshold = "100%"
top_groups = 1000
top_wchans = 1000
max_cpu = "100%"
[[probe]]
path = "{}"
size = "1MiB"
interval = "1day"
timeout = "1h"
[containers]
interval = "1h"
timeout = "1h"
max_containers = 100000
max_cpu = "100%"
[cloud]
imds_endpoint = "http://127.0.0.1:1"
imds_timeout = "1m"
request_timeout = "10m"
describe_interval = "1day"
poll_interval = "1day"
fast_poll_interval = "1day"
fast_poll_below = "100%"
lookback = "3h"
staleness = "1day"
retry_min = "1h"
model_interval = "1m"
"#,
        probe_dir.display()
    )
}

/// Every bounded key at its minimum.
fn at_min(probe_dir: &Path) -> String {
    format!(
        r#"[sampler]
interval = "10ms"
peak_window = "10ms"
source_timeout = "10ms"
[writeback]
burst_threshold = "0"
[threads]
interval = "100ms"
fast_interval = "100ms"
timeout = "10ms"
stall_psi_threshold = "0%"
top_groups = 1
top_wchans = 1
max_cpu = "0.1%"
[[probe]]
path = "{}"
size = "1"
interval = "100ms"
timeout = "10ms"
[containers]
interval = "100ms"
timeout = "10ms"
max_containers = 1
max_cpu = "0.1%"
[cloud]
imds_endpoint = "http://127.0.0.1:1"
imds_timeout = "10ms"
request_timeout = "100ms"
describe_interval = "1s"
poll_interval = "1s"
fast_poll_interval = "1s"
fast_poll_below = "0%"
lookback = "1m"
staleness = "1m"
retry_min = "100ms"
model_interval = "100ms"
"#,
        probe_dir.display()
    )
}

fn threads_of(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                .map(|c| c.trim().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_key_at_its_maximum_and_minimum_runs_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sw.toml");
    for (what, text) in [
        ("maximum", at_max(dir.path())),
        ("minimum", at_min(dir.path())),
    ] {
        write(&cfg, &text);
        let agent = Agent::start(&[&format!("--config.file={}", cfg.display())]);
        agent.wait_for(Duration::from_secs(10), "a scrape", |m| {
            m.has_family("stallwatch_build_info")
        });
        std::thread::sleep(Duration::from_secs(3));
        let m = crate::harness::Metrics::parse(&agent.scrape());
        assert_eq!(m.get(RELOAD_OK), Some(1.0), "{what}");
        assert_eq!(get(&agent.url("/healthz")), "ok\n", "{what}");
        let log = agent.log();
        assert!(
            !log.contains("panicked"),
            "{what}: a thread panicked:\n{log}"
        );
        let threads = threads_of(agent.child.id());
        for t in ["sw-sampler", "sw-probe", "sw-reload"] {
            assert!(
                threads.iter().any(|x| x == t),
                "{what}: no {t} thread in {threads:?}"
            );
        }
    }
}

#[test]
fn past_a_bound_start_exits_2_and_a_reload_keeps_the_old_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sw.toml");
    let cases = [
        (
            "[sampler]\nsource_timeout = \"18446744073709551615s\"\n",
            2,
            "sampler.source_timeout",
        ),
        ("[threads]\ninterval = \"2h\"\n", 2, "threads.interval"),
        (
            "\n[containers]\nmax_cpu = \"1e-30%\"\n",
            3,
            "containers.max_cpu",
        ),
        (
            "[cloud]\n\nimds_timeout = \"100000000s\"\n",
            3,
            "cloud.imds_timeout",
        ),
        (
            "[[probe]]\npath = \"/var/tmp\"\ninterval = \"999999999999s\"\n",
            3,
            "probe[0].interval",
        ),
    ];
    for (text, line, key) in cases {
        write(&cfg, text);
        for sub in [&[][..], &["check-config"][..]] {
            let out = Command::new(BIN)
                .args(sub)
                .arg(format!("--config.file={}", cfg.display()))
                .arg("--web.listen-address=127.0.0.1:0")
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{key} {sub:?}: {err}");
            assert!(
                err.contains(&format!("{}:{line}: key `{key}`", cfg.display())),
                "{key} {sub:?}: {err}"
            );
        }
    }

    write(&cfg, "[writeback]\nburst_threshold = \"64MiB\"\n");
    let agent = Agent::start(&[&format!("--config.file={}", cfg.display())]);
    let threshold = "stallwatch_writeback_burst_threshold_bytes";
    agent.wait_for(Duration::from_secs(10), "start", |m| {
        m.get(RELOAD_OK) == Some(1.0)
    });
    for (text, line, key) in cases {
        write(
            &cfg,
            &format!("{text}\n[writeback]\nburst_threshold = \"32MiB\"\n"),
        );
        agent.signal(libc::SIGHUP);
        let m = agent.wait_for(Duration::from_secs(10), "the reload refused", |m| {
            m.get(RELOAD_OK) == Some(0.0)
        });
        assert_eq!(
            m.get(threshold),
            Some(64.0 * 1048576.0),
            "old config in force"
        );
        let want = format!("{}:{line}: key `{key}`", cfg.display());
        let deadline = Instant::now() + Duration::from_secs(5);
        while !agent.log().contains(&want) {
            assert!(
                Instant::now() < deadline,
                "{want} not logged:\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        write(&cfg, "[writeback]\nburst_threshold = \"64MiB\"\n");
        agent.signal(libc::SIGHUP);
        agent.wait_for(Duration::from_secs(10), "good again", |m| {
            m.get(RELOAD_OK) == Some(1.0)
        });
    }
    assert!(!agent.log().contains("panicked"), "{}", agent.log());
}

/// Resident set size of a process, KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn a_fifo_or_dev_zero_as_the_config_fails_the_reload_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sw.toml");
    write(&cfg, "[sampler]\ninterval = \"1s\"\n");
    let agent = Agent::start(&[&format!("--config.file={}", cfg.display())]);
    agent.wait_for(Duration::from_secs(10), "start", |m| {
        m.get(RELOAD_OK) == Some(1.0)
    });
    let rss_before = rss_kib(agent.child.id());

    // A FIFO nobody writes: opening it for reading would wait forever.
    let fifo = dir.path().join("fifo");
    let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    std::fs::rename(&fifo, &cfg).unwrap();
    agent.signal(libc::SIGHUP);
    agent.wait_for(Duration::from_secs(10), "the FIFO refused", |m| {
        m.get(RELOAD_OK) == Some(0.0)
    });
    assert!(agent.log().contains("is a FIFO"), "{}", agent.log());

    // A good file again: the reload thread is not wedged.
    std::fs::remove_file(&cfg).unwrap();
    write(&cfg, "[sampler]\ninterval = \"1s\"\n");
    agent.signal(libc::SIGHUP);
    agent.wait_for(Duration::from_secs(10), "good again", |m| {
        m.get(RELOAD_OK) == Some(1.0)
    });

    // /dev/zero behind a symlink: endless; refused without reading it.
    std::fs::remove_file(&cfg).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &cfg).unwrap();
    agent.signal(libc::SIGHUP);
    agent.wait_for(Duration::from_secs(10), "/dev/zero refused", |m| {
        m.get(RELOAD_OK) == Some(0.0)
    });
    assert!(agent.log().contains("is a device"), "{}", agent.log());
    // A file bigger than the cap.
    std::fs::remove_file(&cfg).unwrap();
    std::fs::File::create(&cfg)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    agent.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.log().contains("a config file may have at most") {
        assert!(Instant::now() < deadline, "{}", agent.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let rss_after = rss_kib(agent.child.id());
    // Functional, not a benchmark: reading the 64 MiB file (or /dev/zero) would add at least
    // 64 MiB; the old reader grew to 3.4 GB on /dev/zero.
    assert!(
        rss_after < rss_before + 32 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    assert_eq!(get(&agent.url("/healthz")), "ok\n");
}
