//! `stallwatch doctor` on this machine and on a fixture host: what it finds must be what the
//! kernel files say, and a broken setup must fail with exit status 1.

use std::process::Command;

use crate::harness::{fixture, write, BIN};

fn doctor(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .arg("doctor")
        .output()
        .expect("run stallwatch doctor");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code().unwrap_or(-1), text)
}

fn line<'a>(text: &'a str, what: &str) -> &'a str {
    text.lines()
        .find(|l| l[6..].trim_start().starts_with(&format!("{what}:")))
        .unwrap_or_else(|| panic!("no {what} line in:\n{text}"))
}

#[test]
fn doctor_on_this_machine_reports_what_the_kernel_files_say() {
    let (code, text) = doctor(&[]);
    assert_eq!(code, 0, "{text}");
    // PSI: OK exactly when all three files exist.
    let psi_all = ["cpu", "io", "memory"]
        .iter()
        .all(|r| std::path::Path::new(&format!("/proc/pressure/{r}")).exists());
    assert_eq!(line(&text, "PSI").starts_with("[ OK ]"), psi_all, "{text}");
    // Delay accounting: OK exactly when the sysctl is 1.
    let delayacct = std::fs::read_to_string("/proc/sys/kernel/task_delayacct")
        .map(|v| v.trim() == "1")
        .unwrap_or(false);
    assert_eq!(
        line(&text, "delay accounting").starts_with("[ OK ]"),
        delayacct,
        "{text}"
    );
    // This host's layout: v1 controllers plus a unified tree.
    if std::path::Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists() {
        assert!(line(&text, "cgroups").contains("hybrid"), "{text}");
    }
    assert!(line(&text, "EBS devices").contains("none"), "{text}");
    assert!(text.trim_end().ends_with("0 failures"), "{text}");
}

#[test]
fn doctor_on_a_pure_v2_host_without_psi_warns_and_finds_its_containers() {
    let root = fixture("v2-nopsi-5.4");
    let (code, text) = doctor(&[
        &format!("--path.procfs={}", root.join("proc").display()),
        &format!("--path.sysfs={}", root.join("sys").display()),
        &format!("--path.rootfs={}", root.display()),
    ]);
    assert_eq!(code, 0, "warnings are not failures:\n{text}");
    assert!(line(&text, "PSI").starts_with("[WARN]"), "{text}");
    let cg = line(&text, "cgroups");
    assert!(cg.contains("cgroup v2"), "{cg}");
    // The fixture's tree has kubepods and docker containers in it.
    let n: usize = cg
        .split("; ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no container count in {cg}"));
    assert!(n > 0, "{cg}");
}

#[test]
fn doctor_fails_on_a_bad_config_or_a_wrong_procfs() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    write(&cfg, "[threads]\ntop_groups = \"many\"\n");
    let (code, text) = doctor(&[&format!("--config.file={}", cfg.display())]);
    assert_eq!(code, 1, "{text}");
    let l = line(&text, "config");
    assert!(
        l.starts_with("[FAIL]") && l.contains("bad.toml:2") && l.contains("threads.top_groups"),
        "{l}"
    );
    let (code, text) = doctor(&[&format!("--path.procfs={}", dir.path().display())]);
    assert_eq!(code, 1, "{text}");
    assert!(line(&text, "procfs").starts_with("[FAIL]"), "{text}");
}
