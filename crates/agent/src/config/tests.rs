use std::path::Path;
use std::time::Duration;

use stallwatch_collector::proc::mountinfo;
use stallwatch_collector::sample::host::Threshold;

use super::bounds::{Range, BOUNDS};
use super::values::parse_size;
use super::*;

#[test]
fn empty_file_gives_defaults() {
    let c = parse("x.toml", "").unwrap();
    assert_eq!(c.host.interval, Duration::from_secs(1));
    assert_eq!(c.host.peak_window, Duration::from_secs(60));
    assert_eq!(c.host.writeback_burst_threshold, Threshold::Bytes(64 << 20));
}

const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../config/stallwatch.example.toml"
);

#[test]
fn example_config_loads() {
    let c = load(Path::new(EXAMPLE)).unwrap();
    assert_eq!(c.host.interval, Duration::from_secs(1));
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let e = parse(
        "/etc/sw.toml",
        "[sampler]\ninterval = \"1s\"\nintervall = \"2s\"\n",
    )
    .unwrap_err();
    assert_eq!(e.line, Some(3));
    assert_eq!(e.key.as_deref(), Some("sampler.intervall"));
    let s = e.to_string();
    assert!(
        s.starts_with("/etc/sw.toml:3: key `sampler.intervall`"),
        "{s}"
    );
    assert!(s.contains("unknown field"), "{s}");
}

#[test]
fn bad_values_name_the_key() {
    let e = parse("f", "[disks]\ninclude_loop = \"yes\"\n").unwrap_err();
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(2), Some("disks.include_loop"))
    );
    let e = parse("f", "[sampler]\n\ninterval = \"0s\"\n").unwrap_err();
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(3), Some("sampler.interval"))
    );
    let e = parse("f", "[disks]\ndevice_exclude = \"(\"\n").unwrap_err();
    assert!(e.msg.contains("invalid regex"), "{e}");
    let e = parse("f", "[writeback]\nburst_threshold = \"64 parsecs\"\n").unwrap_err();
    assert!(e.msg.contains("unknown unit"), "{e}");
    let e = parse("f", "[sampler]\ninterval = \"10s\"\npeak_window = \"5s\"\n").unwrap_err();
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(3), Some("sampler.peak_window"))
    );
    assert!(parse("f", "[sampler\n").is_err());
    // Dotted keys and inline tables get their lines too.
    let e = parse("f", "\nsampler.interval = \"0s\"\n").unwrap_err();
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(2), Some("sampler.interval"))
    );
    let e = parse("f", "threads = { top_groups = 0 }\n").unwrap_err();
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(1), Some("threads.top_groups"))
    );
}

#[test]
fn threads_section_and_group_rules() {
    let c = parse(
        "f",
        "[threads]\ninterval = \"5s\"\nstall_psi_threshold = \"2.5%\"\n\n[[threads.group_rules]]\nregex = \"^(dockerd|containerd)\"\ngroup = \"docker\"\n",
    )
    .unwrap();
    assert_eq!(c.threads.interval, Duration::from_secs(5));
    assert!((c.threads.stall_psi_threshold - 0.025).abs() < 1e-12);
    assert_eq!(c.threads.rules.len(), 1);
    assert_eq!(c.threads.rules[0].name, "docker");
    let e = parse(
        "f",
        "[threads]\ninterval = \"1s\"\nfast_interval = \"2s\"\n",
    )
    .unwrap_err();
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(3), Some("threads.fast_interval"))
    );
    let e = parse(
        "f",
        "[[threads.group_rules]]\nregex = \"(\"\ngroup = \"x\"\n",
    )
    .unwrap_err();
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(2), Some("threads.group_rules[0].regex"))
    );
    assert!(e.msg.contains("invalid regex"), "{e}");
    let e = parse("f", "[threads]\nstall_psi_threshold = \"120%\"\n").unwrap_err();
    assert_eq!(e.key.as_deref(), Some("threads.stall_psi_threshold"));
}

/// Issue 13 item 7: a bad group name's error had no line (it named `threads.group`, which
/// no line of the file assigns).
#[test]
fn a_bad_group_rule_names_its_entry_and_line() {
    let text = "[threads]\ntop_groups = 5\n\n[[threads.group_rules]]\nregex = \"a\"\ngroup = \"ok\"\n\n[[threads.group_rules]]\nregex = \"b\"\ngroup = \"  \"\n";
    let e = parse("/etc/sw.toml", text).unwrap_err();
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(10), Some("threads.group_rules[1].group"))
    );
    assert!(
        e.to_string()
            .starts_with("/etc/sw.toml:10: key `threads.group_rules[1].group`"),
        "{e}"
    );
    let long = format!(
        "[[threads.group_rules]]\nregex = \"a\"\ngroup = \"{}\"\n",
        "g".repeat(129)
    );
    assert_eq!(parse("f", &long).unwrap_err().line, Some(3));
    let e = parse("f", "[[threads.group_rules]]\nregex = \"a\"\n").unwrap_err();
    assert_eq!(
        e.line,
        Some(1),
        "missing field: the entry's header line: {e}"
    );
}

#[test]
fn probe_paths_are_checked_without_touching_them() {
    // A directory that does not exist is accepted: whether it is usable is the probe's
    // business at run time (and check-config's, with a deadline). Loading never stats it.
    let ok = "[[probe]]\npath = \"/nonexistent/stallwatch\"\nsize = \"64KiB\"\ntimeout = \"2s\"\n";
    let c = parse("f", ok).unwrap();
    assert_eq!(c.probes.len(), 1);
    assert_eq!(
        (c.probes[0].size, c.probes[0].timeout),
        (64 << 10, Duration::from_secs(2))
    );
    assert_eq!(c.probes[0].interval, Duration::from_secs(30));
    let twice = format!("{ok}{ok}");
    let e = parse("f", &twice).unwrap_err();
    assert!(e.msg.contains("twice"), "{e}");
    assert_eq!((e.line, e.key.as_deref()), (Some(6), Some("probe[1].path")));
    let e = parse("f", "[[probe]]\npath = \"/var/tmp\"\nsize = \"0\"\n").unwrap_err();
    assert_eq!((e.line, e.key.as_deref()), (Some(3), Some("probe[0].size")));
    let e = parse("f", "[[probe]]\nsize = \"1MiB\"\n").unwrap_err();
    assert!(e.msg.contains("path"), "missing path: {e}");
    for (bad, why) in [
        ("relative/dir", "absolute"),
        ("/var/../proc", "\"..\""),
        ("/proc", "pseudo-filesystem"),
        ("/proc/sys", "pseudo-filesystem"),
        ("/sys/fs/cgroup/x", "pseudo-filesystem"),
        ("/dev/shm", "pseudo-filesystem"),
    ] {
        let e = parse("f", &format!("\n[[probe]]\npath = \"{bad}\"\n")).unwrap_err();
        assert_eq!(
            (e.line, e.key.as_deref()),
            (Some(3), Some("probe[0].path")),
            "{bad}"
        );
        assert!(e.msg.contains(why), "{bad}: {e}");
    }
}

#[test]
fn a_pseudo_filesystem_is_refused_wherever_it_is_mounted() {
    let mounts = mountinfo::parse(
        "1 0 254:0 / / rw - ext4 /dev/vda rw\n\
         2 1 0:21 / /srv/kernel rw - proc proc rw\n\
         3 1 0:30 / /srv/cg rw - cgroup2 cgroup2 rw\n\
         4 1 7:0 / /srv/data rw - ext4 /dev/loop0 rw\n",
    )
    .unwrap();
    let env = Env {
        mounts: Some(mounts),
    };
    for bad in ["/srv/kernel", "/srv/kernel/sys", "/srv/cg/x/", "/srv//cg"] {
        let e = parse_in("f", &format!("[[probe]]\npath = \"{bad}\"\n"), &env).unwrap_err();
        assert!(e.msg.contains("filesystem (mounted at"), "{bad}: {e}");
    }
    for good in [
        "/srv/data",
        "/srv/data/kernel",
        "/srv/kernelx",
        "/var/lib/docker",
    ] {
        parse_in("f", &format!("[[probe]]\npath = \"{good}\"\n"), &env)
            .unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    // This process's real table: /proc is procfs here too.
    assert!(Env::this_process()
        .mounts
        .is_some_and(|m| m.iter().any(|m| m.fs_type == "proc")));
}

#[test]
fn thresholds_and_sizes() {
    let c = parse("f", "[writeback]\nburst_threshold = \"25%\"\n").unwrap();
    assert_eq!(
        c.host.writeback_burst_threshold,
        Threshold::OfBackground(0.25)
    );
    assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
    assert_eq!(parse_size("1.5 GiB").unwrap(), 3 << 29);
    assert_eq!(parse_size("4096").unwrap(), 4096);
    assert!(parse_size("-1").is_err());
    assert!(parse_size("").is_err());
    assert!(parse_size("99999999999TiB").is_err());
}

#[test]
fn dstate_reads_threads_alone() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sw.toml");
    // A mistake in another section does not stop the incident tool.
    std::fs::write(
        &p,
        "[sampler]\nintervall = 1\n[threads]\ninterval = \"4s\"\n",
    )
    .unwrap();
    assert_eq!(load_threads(&p).unwrap().interval, Duration::from_secs(4));
    std::fs::write(&p, "[threads]\n\ninterval = \"0s\"\n").unwrap();
    let e = load_threads(&p).unwrap_err();
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(3), Some("threads.interval"))
    );
    std::fs::write(&p, "[threads]\nintervall = \"1s\"\n").unwrap();
    assert_eq!(
        load_threads(&p).unwrap_err().key.as_deref(),
        Some("threads.intervall")
    );
}

// ---- every key at and past its bounds ----

/// The TOML text that sets `key` (a table key, arrays without index) to `value` (as written
/// in TOML, quotes included), with the keys it must agree with (`partners`) set alike.
fn text_for(key: &str, value: &str, partners: bool) -> (String, String) {
    let (section, leaf) = key.rsplit_once('.').unwrap_or(("", key));
    // A partner gets the same value, clamped into its own range.
    let same = |other: &str| {
        if !partners {
            return String::new();
        }
        let ms: u64 = value
            .trim_matches('"')
            .trim_end_matches("ms")
            .parse()
            .unwrap();
        let Some(Range::Duration { min, max }) = bounds::range(&format!("{section}.{other}"))
        else {
            panic!("{section}.{other} is not a duration");
        };
        let v = Duration::from_millis(ms).clamp(min, max);
        format!("{other} = \"{}ms\"\n", v.as_millis())
    };
    match key {
        "probe" | "threads.group_rules" | "cloud.volume" => {
            let n: usize = value.parse().unwrap();
            let mut t = String::new();
            for i in 0..n {
                t += &match key {
                    "probe" => format!("[[probe]]\npath = \"/var/tmp/p{i}\"\n"),
                    "threads.group_rules" => {
                        format!("[[threads.group_rules]]\nregex = \"a\"\ngroup = \"g{i}\"\n")
                    }
                    _ => {
                        format!("[[cloud.volume]]\ndevice = \"xvd{i}\"\nvolume_id = \"vol-{i}\"\n")
                    }
                };
            }
            let at = if n == 0 {
                String::new()
            } else {
                format!("{key}[{}]", n - 1)
            };
            (t, at)
        }
        _ if section == "probe" => (
            format!("[[probe]]\npath = \"/var/tmp\"\n{leaf} = {value}\n"),
            format!("probe[0].{leaf}"),
        ),
        _ => {
            let extra = match key {
                "sampler.interval" => same("peak_window"),
                "sampler.peak_window" => same("interval"),
                "threads.interval" => same("fast_interval"),
                "threads.fast_interval" => same("interval"),
                "cloud.poll_interval" => same("fast_poll_interval"),
                "cloud.fast_poll_interval" => same("poll_interval"),
                _ => String::new(),
            };
            (
                format!("[{section}]\n{extra}{leaf} = {value}\n"),
                key.to_string(),
            )
        }
    }
}

/// In-range and out-of-range spellings of a bound: (ok values, bad values), as TOML values.
fn cases(r: Range) -> (Vec<String>, Vec<String>) {
    let ms = |d: Duration| format!("\"{}ms\"", d.as_millis());
    match r {
        Range::Duration { min, max } => (
            vec![ms(min), ms(max)],
            vec![
                ms(min - Duration::from_millis(1)),
                ms(max + Duration::from_millis(1)),
                "\"18446744073709551615s\"".into(),
                "\"584942417355y\"".into(),
            ],
        ),
        Range::Count { min, max } => {
            let mut bad = vec![(max + 1).to_string()];
            if min > 0 {
                bad.push((min - 1).to_string());
            }
            (vec![min.to_string(), max.to_string()], bad)
        }
        Range::Share { min, max, off } => {
            let pct = |x: f64| format!("\"{}%\"", x * 100.0);
            let mut ok = vec![pct(min), pct(max)];
            let mut bad = vec![pct(max * 1.001), "\"1e30%\"".into(), "\"-1%\"".into()];
            if off {
                ok.push("\"0%\"".into());
                bad.push("\"1e-30%\"".into());
            }
            if min > 0.0 {
                bad.push(pct(min * 0.999));
            }
            (ok, bad)
        }
        Range::Size { min, max } => {
            let mut bad = vec![format!("\"{}\"", max + 1), "\"16TiB\"".into()];
            if min > 0 {
                bad.push(format!("\"{}\"", min - 1));
            }
            (vec![format!("\"{min}\""), format!("\"{max}\"")], bad)
        }
    }
}

#[test]
fn every_key_at_and_past_its_bounds() {
    let mut checked = 0;
    for b in BOUNDS {
        let (ok, bad) = cases(b.range);
        for v in ok {
            let (text, _) = text_for(b.key, &v, true);
            if let Err(e) = parse("f", &text) {
                panic!(
                    "{} = {v} is within {} but was refused: {e}\n{text}",
                    b.key, b.range
                );
            }
            checked += 1;
        }
        for v in bad {
            let (text, at) = text_for(b.key, &v, false);
            let e = match parse("f", &text) {
                Ok(_) => panic!(
                    "{} = {v} is outside {} but was accepted\n{text}",
                    b.key, b.range
                ),
                Err(e) => e,
            };
            assert_eq!(e.key.as_deref(), Some(at.as_str()), "{} = {v}: {e}", b.key);
            assert!(e.line.is_some(), "{} = {v}: no line: {e}", b.key);
            checked += 1;
        }
    }
    assert!(checked > 4 * BOUNDS.len(), "{checked}");
}

/// Every numeric key of the example config has a bound, and the example states it beside the
/// key ("Range: …"), so the documentation cannot drift from the table.
#[test]
fn the_example_documents_every_range() {
    let text = std::fs::read_to_string(EXAMPLE).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for b in BOUNDS {
        let (section, leaf) = b.key.rsplit_once('.').unwrap_or(("", b.key));
        let (header, assign) = match b.key {
            "probe" => ("".to_string(), "[[probe]]".to_string()),
            "threads.group_rules" | "cloud.volume" => ("".into(), format!("[[{}]]", b.key)),
            _ if section == "probe" => ("[[probe]]".into(), format!("{leaf} =")),
            _ => (format!("[{section}]"), format!("{leaf} =")),
        };
        let start = if header.is_empty() {
            0
        } else {
            lines
                .iter()
                .position(|l| l.trim_start_matches("# ").trim() == header)
                .unwrap_or_else(|| panic!("{header} not in the example"))
        };
        let at = lines[start..]
            .iter()
            .position(|l| {
                let l = l.trim_start_matches('#').trim();
                l.starts_with(&assign)
            })
            .map(|i| i + start)
            .unwrap_or_else(|| panic!("{} not in the example", b.key));
        let want = format!("Range: {}.", b.range);
        assert!(
            lines[at.saturating_sub(8)..at]
                .iter()
                .any(|l| l.contains(&want)),
            "the example does not say \"{want}\" above {} (line {})",
            b.key,
            at + 1
        );
    }
}

/// Every numeric-looking value in the example belongs to a key with a bound.
#[test]
fn every_numeric_key_has_a_bound() {
    let text = std::fs::read_to_string(EXAMPLE).unwrap();
    let mut section = String::new();
    for l in text.lines() {
        let t = l.trim_start_matches('#').trim();
        if t.starts_with('[') && t.ends_with(']') {
            section = t.trim_matches(|c| c == '[' || c == ']').to_string();
            continue;
        }
        let Some((k, v)) = t.split_once(" = ") else {
            continue;
        };
        let v = v.trim().trim_matches('"');
        let numeric = v.starts_with(|c: char| c.is_ascii_digit()) && !k.contains(' ');
        if numeric && !k.ends_with("_id") && !v.starts_with("vol-") {
            let key = format!("{section}.{k}");
            assert!(
                bounds::range(&key).is_some(),
                "{key} = {v} has no bound in bounds.rs"
            );
        }
    }
}
