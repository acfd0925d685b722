use serde_json::json;

use super::*;

/// The example of `/api/v1/verdict` in the API contract (docs/api.md).
fn stalled_on_io() -> Value {
    json!({
        "time": "2026-12-03T14:00:05Z", "time_unix": 1796306405.0,
        "stalled": true, "io": true, "cause": "disk_saturated",
        "since": "2026-12-03T14:00:01Z", "since_unix": 1796306401.0, "since_seconds": 4.0,
        "summary": "loop7 at its limit: 100% busy, await 180 ms, queue 31",
        "incident": "20261203T140001Z",
        "causes": [{
            "cause": "disk_saturated", "io": true, "severity": "critical",
            "since": "2026-12-03T14:00:01Z", "since_unix": 1796306401.0, "since_seconds": 4.0,
            "summary": "loop7 at its limit",
            "evidence": [
                {"signal": "disk_utilisation", "subject": "loop7", "value": 0.99, "threshold": 0.9, "unit": "ratio"},
                {"signal": "container_write_iops", "subject": "web", "value": 299.0, "threshold": 270.0, "unit": "1/s"}
            ],
            "who": {
                "devices": [{"name": "loop7", "major": 7, "minor": 7, "volume_id": null}],
                "containers": [{"id": "3f2a00000000000000000000", "name": "web", "runtime": "docker", "d_threads": 4}],
                "groups": [{"group": "dd", "d_threads": 4, "wchans": [{"wchan": "blk_mq_get_tag", "threads": 4}]}]
            }
        }],
        "dstate": [
            {"pid": 10, "tid": 10, "comm": "dd", "group": "dd", "wchan": "io_schedule", "seconds": 3.0,
             "container": {"id": "3f2a00000000000000000000", "name": "web", "runtime": "docker"}, "kernel_thread": false},
            {"pid": 11, "tid": 12, "comm": "kworker/u8:2", "group": "kworker", "wchan": null, "seconds": 0.4,
             "container": null, "kernel_thread": true}
        ],
        "signals": {"psi_io_some": 0.42}
    })
}

#[test]
fn why_stalled_on_io_names_cause_evidence_and_who() {
    let out = verdict(&stalled_on_io());
    let first = out.lines().next().unwrap();
    assert_eq!(
        first,
        "STALLED (I/O) since 2026-12-03T14:00:01Z (4 s): disk_saturated"
    );
    for want in [
        "cause disk_saturated (I/O, critical, since 2026-12-03T14:00:01Z (4 s)): loop7 at its limit",
        "disk_utilisation      loop7  99%      (threshold 90%)",
        "container_write_iops  web    299 1/s  (threshold 270 1/s)",
        "devices: loop7",
        "container web (docker 3f2a00000000), 4 in D",
        "group dd, 4 in D, waiting in blk_mq_get_tag ×4",
        "threads in D (2, longest first):",
        "incident 20261203T140001Z is being recorded: stallwatch incidents 20261203T140001Z",
        "(kernel thread)",
        "11/12",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    assert!(!out.contains("Not I/O"), "{out}");
}

#[test]
fn why_says_plainly_when_it_is_not_io() {
    let v = json!({
        "stalled": true, "io": false, "cause": "cpu", "since_seconds": 12.0,
        "summary": "45 runnable per CPU; 45 containers started in 10 s",
        "causes": [{"cause": "cpu", "io": false, "severity": "warning", "summary": "run queue",
                    "evidence": [], "who": {}}],
        "dstate": []
    });
    let out = verdict(&v);
    assert!(
        out.starts_with("STALLED (not I/O) for 12 s: cpu\n"),
        "{out}"
    );
    assert!(
        out.contains("Not I/O: the disks are not what is slow; it is cpu."),
        "{out}"
    );
    assert!(!out.contains("threads in D"), "{out}");
}

#[test]
fn why_not_stalled_is_one_line() {
    let v = json!({"stalled": false, "io": false, "cause": "none", "causes": [], "dstate": [],
                   "since": null, "summary": "Not stalled: I/O pressure 0.3%, CPU 4%, memory 0%, 0 threads in D"});
    assert_eq!(
        verdict(&v),
        "NOT STALLED. Not stalled: I/O pressure 0.3%, CPU 4%, memory 0%, 0 threads in D\n"
    );
}

#[test]
fn hostile_names_cannot_drive_the_terminal() {
    let mut v = stalled_on_io();
    v["dstate"][0]["comm"] = json!("\u{1b}]0;pwned\u{7}\u{1b}[2J");
    v["causes"][0]["who"]["containers"][0]["name"] = json!("web\r\nSTALLED: no");
    let out = verdict(&v);
    assert!(!out.contains('\u{1b}') && !out.contains('\u{7}') && !out.contains('\r'));
    assert!(out.contains("\\u{1b}]0;pwned\\u{7}\\u{1b}[2J"), "{out}");
    assert!(out.contains("container web\\r\\nSTALLED: no"), "{out}");
}

#[test]
fn fields_missing_or_of_another_type_do_not_break_the_view() {
    for v in [
        json!({}),
        json!(null),
        json!({"stalled": "yes", "causes": 3, "dstate": {}}),
    ] {
        let out = verdict(&v);
        assert!(out.starts_with("NOT STALLED."), "{out}");
    }
    assert_eq!(
        incident_list(&json!({})),
        "No incident recorded since the agent started.\n"
    );
    assert!(incident(&json!({})).starts_with("incident –:"));
}

#[test]
fn incidents_list_and_one_record() {
    let list = json!({"incidents": [
        {"id": "20261203T140001Z", "start": "2026-12-03T14:00:01Z", "start_unix": 1796306401.0,
         "end": null, "end_unix": null, "open": true, "duration_seconds": 4.0,
         "cause": "disk_saturated", "causes": ["disk_saturated", "writeback"], "summary": "loop7 at its limit"},
        {"id": "20261203T130000Z", "start": "2026-12-03T13:00:00Z", "open": false,
         "duration_seconds": 300.0, "cause": "cpu", "causes": ["cpu"], "summary": "run queue"}
    ]});
    let out = incident_list(&list);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("ID                START"), "{out}");
    assert!(
        lines[1].contains("4 s, ongoing")
            && lines[1].contains("disk_saturated,writeback")
            && lines[1].ends_with("loop7 at its limit"),
        "{out}"
    );
    assert!(
        lines[2].contains("5.0 min") && lines[2].contains("cpu"),
        "{out}"
    );

    let rec = json!({
        "id": "20261203T140001Z", "start": "2026-12-03T14:00:01Z", "end": "2026-12-03T14:00:31Z",
        "open": false, "duration_seconds": 30.0, "cause": "disk_stalled", "causes": ["disk_stalled"],
        "summary": "loop3: 1 I/O in flight, none completed for 30 s",
        "verdicts": [
            {"t_unix": 1796306401.0, "cause": "disk_stalled", "causes": ["disk_stalled"], "summary": "a"},
            {"t_unix": 1796306402.0, "cause": "disk_stalled", "causes": ["disk_stalled"], "summary": "b"},
            {"t_unix": 1796306403.0, "cause": "disk_stalled", "causes": ["disk_stalled", "lock"], "summary": "c"}
        ],
        "peaks": {"psi_io_some": 0.9, "d_threads": 31, "writeback_bytes": 1048576.0,
                  "disk_await_seconds_max": 0.25},
        "dstate": [{"pid": 5, "tid": 5, "comm": "dd", "group": "dd", "wchan": "io_schedule",
                    "seconds": 29.0, "container": null, "kernel_thread": false,
                    "stack": "[<0>] io_schedule+0x42/0x70\n[<0>] folio_wait_bit+0x1/0x2"}],
        "containers": [{"id": "abc", "name": "web", "runtime": "docker", "read_bytes_per_second": 0,
                        "write_bytes_per_second": 2097152.0, "psi_io_some": null, "d_threads": 1}],
        "disks": [{"name": "loop3", "volume_id": null, "utilisation": 1.0, "await_seconds": 30.0,
                   "queue": 1, "iops": 0, "bytes_per_second": 0}],
        "ebs": [],
        "missing": ["kernel stacks: /proc/<pid>/task/<tid>/stack not readable (needs CAP_SYS_ADMIN)"]
    });
    let out = incident(&rec);
    for want in [
        "incident 20261203T140001Z: disk_stalled from 2026-12-03T14:00:01Z to 2026-12-03T14:00:31Z (30 s)",
        "  - kernel stacks: /proc/<pid>/task/<tid>/stack not readable",
        "2026-12-03T14:00:01Z  disk_stalled       a",
        "2026-12-03T14:00:03Z  disk_stalled,lock  c",
        "psi_io_some             90%",
        "d_threads               31",
        "writeback_bytes         1 MiB",
        "disk_await_seconds_max  250 ms",
        "kernel stack of dd (5/5):",
        "    [<0>] io_schedule+0x42/0x70",
        "web   docker   0 B/s  2 MiB/s",
        "loop3  –       100%  30 s",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    // Verdict rows are changes, not seconds.
    assert!(!out.contains("  b\n"), "{out}");
    assert!(!out.contains("EBS"), "no EBS table without volumes:\n{out}");
}

#[test]
fn units() {
    assert_eq!(value(&json!(0.004), "ratio"), "0.4%");
    assert_eq!(value(&json!(12.5), "percent"), "12.5%");
    assert_eq!(
        value(&json!(3.0 * 1024.0 * 1024.0 * 1024.0), "bytes"),
        "3 GiB"
    );
    assert_eq!(value(&json!(0.0123), "seconds"), "12.3 ms");
    assert_eq!(value(&json!(600), "seconds"), "10.0 min");
    assert_eq!(value(&json!(null), "ratio"), "–");
    assert_eq!(value(&json!("n/a"), "ratio"), "n/a");
    assert_eq!(rfc3339(1796306405.7), "2026-12-03T14:00:05Z");
}
