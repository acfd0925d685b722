//! The incident tools on a hung disk (issue 13 item 4): `check-config`, `doctor` and `dstate`
//! with `--config.file` naming a probe directory on a filesystem that does not answer. Before,
//! loading the config `stat`ed the directory and each tool blocked in D until the disk came back
//! (unkillably). Now loading never touches it; `check-config` and `doctor` look at it in a
//! child process with the probe's timeout as deadline and say "not answering"; `dstate` reads
//! only `[threads]`.

use std::path::Path;
use std::time::Duration;

use crate::harness::{require_root, write, BIN};
use crate::hung::{run_bounded, HungDisk};

/// Far above what any of the tools needs with a 1 s probe timeout; a tool that hangs never
/// finishes at all.
const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn check_config_doctor_and_dstate_answer_while_the_probe_disk_hangs() {
    if !require_root("check_config_doctor_and_dstate_answer_while_the_probe_disk_hangs") {
        return;
    }
    let rig = HungDisk::start(&["warm", "probe"]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sw.toml");
    let config_for = |d: &str| {
        format!(
            "[threads]\ninterval = \"2s\"\n\n[[probe]]\npath = \"{}\"\ntimeout = \"1s\"\n",
            rig.path(d).display()
        )
    };
    let flag = format!("--config.file={}", cfg.display());
    let tool = |args: &[&str]| {
        let mut c = rig.command(Path::new(BIN));
        c.arg(&flag).args(args);
        c
    };

    // Healthy first: the directory is fine and check-config says so.
    write(&cfg, &config_for("warm"));
    let ok = run_bounded(&mut tool(&["check-config"]), LIMIT);
    assert_eq!(ok.code, Some(0), "{}{}", ok.stdout, ok.stderr);

    // A directory not looked up since the mount, on a disk that stops answering.
    write(&cfg, &config_for("probe"));
    rig.hang();

    let cc = run_bounded(&mut tool(&["check-config"]), LIMIT);
    assert_eq!(
        cc.code,
        Some(1),
        "the config is valid, the directory did not answer:\n{}{}",
        cc.stdout,
        cc.stderr
    );
    assert!(
        cc.stderr
            .contains(&format!("{}:5: key `probe[0].path`", cfg.display()))
            && cc.stderr.contains("not answering after 1 s"),
        "{}",
        cc.stderr
    );

    let doc = run_bounded(&mut tool(&["doctor"]), LIMIT);
    assert_eq!(doc.code, Some(1), "{}", doc.stdout);
    let line = doc
        .stdout
        .lines()
        .find(|l| l.contains("probe:"))
        .unwrap_or_else(|| panic!("no probe line:\n{}", doc.stdout));
    assert!(
        line.starts_with("[FAIL]") && line.contains("not answering after 1 s"),
        "{line}"
    );
    assert!(
        doc.stdout.contains("config:") && doc.stdout.contains("is valid"),
        "{}",
        doc.stdout
    );

    let ds = run_bounded(
        &mut tool(&["dstate", "--once", "--observe=300ms", "--json"]),
        LIMIT,
    );
    assert_eq!(ds.code, Some(0), "{}", ds.stderr);
    let report: serde_json::Value = serde_json::from_str(ds.stdout.trim()).unwrap();
    // The rig's canary write and the killed directory checks are waiting on the disk.
    assert!(
        report["threads_in_d"].as_u64().is_some_and(|n| n >= 1),
        "dstate sees the threads stuck on the hung disk: {report}"
    );
    eprintln!(
        "on the hung disk: check-config {:?}, doctor {:?}, dstate {:?}",
        cc.took, doc.took, ds.took
    );

    rig.resume();
    let after = run_bounded(&mut tool(&["check-config"]), LIMIT);
    assert_eq!(after.code, Some(0), "{}{}", after.stdout, after.stderr);
}
