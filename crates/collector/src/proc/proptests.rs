//! Cross-parser tests (compiled only under `cfg(test)`, see `proc/mod.rs`):
//! - `fixtures`: every reader on the fixture trees in `tests/fixtures/` (see its README), and
//!   `sample::host::read_all` on them.
//! - `proptests`: no parser panics on any input. Inputs are arbitrary strings, arbitrary bytes
//!   decoded lossily as the readers do, and "structured garbage" (the fixture files with tokens
//!   replaced, deleted or inserted, lines dropped or doubled, and the text cut short). An error must also name a line
//!   that exists.

use std::path::{Path, PathBuf};

use crate::Roots;

/// Repository-relative fixture root.
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");

/// Contents of a file below `tests/fixtures/`, at compile time.
macro_rules! fixture {
    ($rel:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/",
            $rel
        ))
    };
}

/// `Roots` pointing every root into one fixture tree.
fn fixture_roots(name: &str) -> Roots {
    let base: PathBuf = Path::new(FIXTURES).join(name);
    Roots {
        procfs: base.join("proc"),
        sysfs: base.join("sys"),
        cgroupfs: base.join("sys/fs/cgroup"),
        rootfs: base,
    }
}

#[cfg(test)]
mod fixtures {
    use super::fixture_roots;
    use crate::proc::pressure::Resource;
    use crate::proc::{diskstats, loadavg, meminfo, pressure, stat, sys_vm, vmstat};
    use crate::sample::host::{read_all, HostSource, Reading};

    const DEBIAN: &str = "debian12-6.18";
    const V2_NOPSI: &str = "v2-nopsi-5.4";
    const MIB: u64 = 1 << 20;
    const PAGE: u64 = 4096;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn debian12_stat() {
        let st = stat::read(&fixture_roots(DEBIAN)).unwrap().unwrap();
        assert_eq!(st.procs_blocked, Some(2));
        assert_eq!(st.procs_running, Some(3));
        assert_eq!(st.ctxt, Some(251478));
        assert_eq!(st.btime, Some(1795467765));
        assert_eq!(st.forks, Some(7304));
        let cpu = st.cpu.unwrap();
        assert_eq!(
            (cpu.user, cpu.idle, cpu.iowait, cpu.steal),
            (25468, 139611, 457, 477)
        );
    }

    #[test]
    fn debian12_loadavg() {
        let l = loadavg::read(&fixture_roots(DEBIAN)).unwrap().unwrap();
        assert_eq!((l.load1, l.load5, l.load15), (2.48, 1.37, 0.61));
        assert_eq!((l.runnable, l.entities), (3, 112));
    }

    #[test]
    fn debian12_pressure() {
        let roots = fixture_roots(DEBIAN);
        let io = pressure::read(&roots, Resource::Io).unwrap().unwrap();
        let (some, full) = (io.some.unwrap(), io.full.unwrap());
        assert!(close(some.avg10, 0.125), "{some:?}");
        assert!(close(full.avg10, 0.0875), "{full:?}");
        assert_eq!((some.total_us, full.total_us), (9437702, 7701354));
        let cpu = pressure::read(&roots, Resource::Cpu).unwrap().unwrap();
        assert!(close(cpu.some.unwrap().avg10, 0.032));
        assert_eq!(cpu.full.unwrap().total_us, 0);
        let mem = pressure::read(&roots, Resource::Memory).unwrap().unwrap();
        assert_eq!(mem.some.unwrap().total_us, 1207);
    }

    #[test]
    fn debian12_meminfo() {
        let m = meminfo::read(&fixture_roots(DEBIAN)).unwrap().unwrap();
        assert_eq!(m.dirty, Some(300 * MIB));
        assert_eq!(m.writeback, Some(80 * MIB));
        assert_eq!(m.mem_total, Some(24683656 * 1024));
        assert_eq!(m.mem_available, Some(24366836 * 1024));
        assert_eq!(m.swap_total, Some(0));
        assert_eq!(m.writeback_tmp, Some(0));
    }

    #[test]
    fn debian12_vmstat() {
        let v = vmstat::read(&fixture_roots(DEBIAN)).unwrap().unwrap();
        assert_eq!(v.nr_dirty, Some(76800));
        assert_eq!(v.nr_writeback, Some(20480));
        assert_eq!(v.nr_writeback_temp, None, "removed from vmstat before 6.18");
        assert_eq!(v.nr_dirty_threshold, Some(1221047));
        assert_eq!(v.nr_dirty_background_threshold, Some(609778));
        assert_eq!((v.nr_dirtied, v.nr_written), (Some(526953), Some(357208)));
        assert_eq!(v.pgmajfault, Some(1009));
        assert_eq!(v.oom_kill, Some(0));
    }

    #[test]
    fn debian12_diskstats() {
        let d = diskstats::read(&fixture_roots(DEBIAN)).unwrap().unwrap();
        let names: Vec<&str> = d.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["ram0", "loop0", "loop1", "vda", "vda1", "zram0"]);
        let vda = &d[3];
        assert_eq!((vda.major, vda.minor), (254, 0));
        assert_eq!(vda.in_progress, 3);
        assert_eq!(vda.sectors_written, 2853936);
        assert_eq!(
            vda.flush,
            Some(diskstats::FlushStat {
                completed: 54,
                time_ms: 422
            })
        );
        assert!(
            d.iter().all(|d| d.discard.is_some() && d.flush.is_some()),
            "17 fields on 6.18"
        );
    }

    #[test]
    fn debian12_sys_vm() {
        let t = sys_vm::read(&fixture_roots(DEBIAN)).unwrap().unwrap();
        assert_eq!(t.dirty_ratio, Some(20));
        assert_eq!(t.dirty_background_ratio, Some(10));
        assert_eq!(
            (t.dirty_bytes, t.dirty_background_bytes),
            (Some(0), Some(0))
        );
        assert_eq!(t.dirty_expire_centisecs, Some(3000));
        assert_eq!(t.dirty_writeback_centisecs, Some(500));
        assert_eq!(t.dirtytime_expire_seconds, Some(43200));
    }

    #[test]
    fn v2_nopsi_readers() {
        let roots = fixture_roots(V2_NOPSI);
        for res in Resource::ALL {
            assert!(pressure::read(&roots, res).unwrap().is_none(), "{res:?}");
        }
        let st = stat::read(&roots).unwrap().unwrap();
        assert_eq!(st.procs_blocked, Some(5));
        assert_eq!(st.cpu.unwrap().iowait, 1467021);
        let l = loadavg::read(&roots).unwrap().unwrap();
        assert_eq!((l.load1, l.runnable, l.entities), (6.92, 2, 361));
        let m = meminfo::read(&roots).unwrap().unwrap();
        assert_eq!((m.dirty, m.writeback), (Some(768 * MIB), Some(140 * MIB)));
        let v = vmstat::read(&roots).unwrap().unwrap();
        assert_eq!(v.nr_writeback_temp, Some(0));
        assert_eq!(v.nr_dirty_background_threshold, Some(168634));
        assert!(
            m.dirty.unwrap() > 168634 * PAGE,
            "dirty is above the background threshold"
        );
        let d = diskstats::read(&roots).unwrap().unwrap();
        assert_eq!(d.len(), 4);
        let nvme = d.iter().find(|d| d.name == "nvme0n1").unwrap();
        assert_eq!((nvme.major, nvme.minor, nvme.in_progress), (259, 0, 17));
        assert_eq!(nvme.discard.unwrap().sectors, 92274688);
        assert!(
            d.iter().all(|d| d.discard.is_some() && d.flush.is_none()),
            "15 fields on 5.4"
        );
        let t = sys_vm::read(&roots).unwrap().unwrap();
        assert_eq!(
            (t.dirty_ratio, t.dirty_background_ratio),
            (Some(20), Some(10))
        );
        assert!(
            roots.cgroup("cgroup.controllers").exists(),
            "cgroup v2 marker"
        );
    }

    /// meminfo's Dirty/Writeback and vmstat's nr_dirty/nr_writeback agree in both trees.
    #[test]
    fn fixtures_are_self_consistent() {
        for name in [DEBIAN, V2_NOPSI] {
            let roots = fixture_roots(name);
            let m = meminfo::read(&roots).unwrap().unwrap();
            let v = vmstat::read(&roots).unwrap().unwrap();
            assert_eq!(m.dirty, v.nr_dirty.map(|p| p * PAGE), "{name}");
            assert_eq!(m.writeback, v.nr_writeback.map(|p| p * PAGE), "{name}");
        }
    }

    /// Partition flags as `read_all` computes them (from sysfs `partition` files).
    fn partitions(
        results: &[(HostSource, Result<Option<Reading>, crate::Error>)],
    ) -> Vec<(String, bool)> {
        let (_, disks) = results
            .iter()
            .find(|(n, _)| *n == HostSource::Diskstats)
            .unwrap();
        match disks {
            Ok(Some(Reading::Disks(d))) => d
                .iter()
                .map(|d| (d.stat.name.clone(), d.partition))
                .collect(),
            other => panic!("diskstats: {other:?}"),
        }
    }

    #[test]
    fn read_all_debian12() {
        let all = read_all(&fixture_roots(DEBIAN));
        assert_eq!(all.len(), 13);
        for (name, r) in &all {
            if *name == HostSource::Pressure(crate::proc::pressure::Resource::Irq) {
                // 6.18 here is built without CONFIG_IRQ_TIME_ACCOUNTING: no irq pressure.
                assert!(matches!(r, Ok(None)), "{name}: {r:?}");
            } else {
                assert!(matches!(r, Ok(Some(_))), "{name}: {r:?}");
            }
        }
        let parts = partitions(&all);
        assert!(parts.contains(&("vda1".into(), true)));
        assert!(parts.contains(&("vda".into(), false)));
        assert!(parts.contains(&("ram0".into(), false)));
    }

    #[test]
    fn read_all_v2_nopsi_has_no_pressure() {
        let all = read_all(&fixture_roots(V2_NOPSI));
        for (name, r) in &all {
            // No PSI on 5.4; this tree also has no mount table or bdi class.
            if matches!(
                name,
                HostSource::Pressure(_) | HostSource::Mountinfo | HostSource::Bdi
            ) {
                assert!(matches!(r, Ok(None)), "{name}: {r:?}");
            } else {
                assert!(matches!(r, Ok(Some(_))), "{name}: {r:?}");
            }
        }
        let psi: Vec<&str> = all
            .iter()
            .map(|(n, _)| n.name())
            .filter(|n| n.starts_with("pressure_"))
            .collect();
        assert_eq!(
            psi,
            [
                "pressure_cpu",
                "pressure_io",
                "pressure_memory",
                "pressure_irq"
            ]
        );
        let parts = partitions(&all);
        assert_eq!(
            parts,
            [
                ("loop0".into(), false),
                ("loop1".into(), false),
                ("nvme0n1".into(), false),
                ("nvme0n1p1".into(), true),
            ]
        );
    }

    #[test]
    fn read_all_empty_tree_is_all_absent() {
        let all = read_all(&fixture_roots("does-not-exist"));
        for (name, r) in &all {
            assert!(matches!(r, Ok(None)), "{name}: {r:?}");
        }
    }
}

#[cfg(test)]
#[allow(clippy::module_inception)]
mod proptests {
    use std::fmt::Debug;

    use proptest::prelude::*;
    use proptest::sample::Index;
    use proptest::test_runner::{Config, TestCaseError};

    use crate::error::ParseError;

    /// Real files the structured-garbage strategy mutates, all fixture files together: each
    /// parser also gets the others' files, which are valid-looking input in the wrong shape.
    const SAMPLES: &[&str] = &[
        fixture!("debian12-6.18/proc/stat"),
        fixture!("debian12-6.18/proc/loadavg"),
        fixture!("debian12-6.18/proc/pressure/cpu"),
        fixture!("debian12-6.18/proc/pressure/io"),
        fixture!("debian12-6.18/proc/meminfo"),
        fixture!("debian12-6.18/proc/vmstat"),
        fixture!("debian12-6.18/proc/diskstats"),
        fixture!("debian12-6.18/proc/sys/vm/dirty_expire_centisecs"),
        fixture!("v2-nopsi-5.4/proc/stat"),
        fixture!("v2-nopsi-5.4/proc/loadavg"),
        fixture!("v2-nopsi-5.4/proc/meminfo"),
        fixture!("v2-nopsi-5.4/proc/diskstats"),
    ];

    /// Keeps the suite fast; failures are shrunk and printed, not persisted into the tree.
    fn config() -> Config {
        Config {
            cases: 256,
            failure_persistence: None,
            ..Config::default()
        }
    }

    /// Parses `text`; the test fails on a panic (proptest catches it) or on an error that names
    /// a line past the end.
    fn check<T: Debug>(
        parse: fn(&str) -> Result<T, ParseError>,
        text: &str,
    ) -> Result<(), TestCaseError> {
        if let Err(e) = parse(text) {
            let lines = text.lines().count().max(1);
            prop_assert!(
                e.line <= lines,
                "error {e} names line {} of {lines}",
                e.line
            );
            let _ = e.to_string();
        }
        Ok(())
    }

    /// Tokens that are likely to break a parser: edge numbers, separators, keys out of place.
    fn garbage_token() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => prop::sample::select(vec![
                "", " ", "\t", "\n", "\r", "\r\n", "\0", "\u{feff}", "é", "ß", "-", "+", "-1", "+5",
                "0", "00", "0x1f", "1.5", ".5", "5.", "1e3", "1e999", "-0", "NaN", "nan", "inf",
                "-inf", "infinity", "4294967295", "4294967296", "18446744073709551615",
                "18446744073709551616", "99999999999999999999999999", "=", "==", "=1", "avg10=",
                "avg10=1", "total=-1", "/", "3/", "/3", "3//4", ":", "::", "kB", "MB", "cpu",
                "cpu0", "some", "full", "procs_blocked", "Dirty:", "Dirty", "nr_dirty", "loop0",
            ])
            .prop_map(String::from),
            2 => any::<u64>().prop_map(|v| v.to_string()),
            1 => any::<f64>().prop_map(|v| v.to_string()),
            2 => "[ -~]{0,12}",
            1 => "\\PC{0,6}",
        ]
    }

    #[derive(Debug, Clone)]
    enum Mutation {
        Replace(Index, Index, String),
        Insert(Index, Index, String),
        Delete(Index, Index),
        DropLine(Index),
        DupLine(Index),
        SwapLines(Index, Index),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            4 => (any::<Index>(), any::<Index>(), garbage_token()).prop_map(|(l, t, s)| Mutation::Replace(l, t, s)),
            2 => (any::<Index>(), any::<Index>(), garbage_token()).prop_map(|(l, t, s)| Mutation::Insert(l, t, s)),
            2 => (any::<Index>(), any::<Index>()).prop_map(|(l, t)| Mutation::Delete(l, t)),
            1 => any::<Index>().prop_map(Mutation::DropLine),
            1 => any::<Index>().prop_map(Mutation::DupLine),
            1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        ]
    }

    /// Applies mutations to `base`'s lines, split on single spaces so column padding survives,
    /// then optionally cuts the text short at a character boundary (a truncated read).
    fn apply(base: &str, muts: &[Mutation], cut: Option<Index>) -> String {
        let mut lines: Vec<Vec<String>> = base
            .lines()
            .map(|l| l.split(' ').map(String::from).collect())
            .collect();
        for m in muts {
            if lines.is_empty() {
                lines.push(Vec::new());
            }
            let n = lines.len();
            match m {
                Mutation::Replace(l, t, s) => {
                    let line = &mut lines[l.index(n)];
                    if line.is_empty() {
                        line.push(s.clone());
                    } else {
                        let i = t.index(line.len());
                        line[i] = s.clone();
                    }
                }
                Mutation::Insert(l, t, s) => {
                    let line = &mut lines[l.index(n)];
                    let i = t.index(line.len() + 1);
                    line.insert(i, s.clone());
                }
                Mutation::Delete(l, t) => {
                    let line = &mut lines[l.index(n)];
                    if !line.is_empty() {
                        let i = t.index(line.len());
                        line.remove(i);
                    }
                }
                Mutation::DropLine(l) => {
                    lines.remove(l.index(n));
                }
                Mutation::DupLine(l) => {
                    let i = l.index(n);
                    let dup = lines[i].clone();
                    lines.insert(i, dup);
                }
                Mutation::SwapLines(a, b) => lines.swap(a.index(n), b.index(n)),
            }
        }
        let mut text: String = lines.iter().map(|l| l.join(" ") + "\n").collect();
        if let Some(cut) = cut {
            let mut at = cut.index(text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            text.truncate(at);
        }
        text
    }

    /// A mutated copy of one of `own` (the parser's own files, preferred) or of any sample.
    fn structured(own: &'static [&'static str]) -> impl Strategy<Value = String> {
        let base = prop_oneof![3 => prop::sample::select(own), 1 => prop::sample::select(SAMPLES)];
        (
            base,
            prop::collection::vec(mutation(), 1..8),
            prop::option::of(any::<Index>()),
        )
            .prop_map(|(base, muts, cut)| apply(base, &muts, cut))
    }

    /// Up to 8 arbitrary lines (`.` does not match a newline, so `".*"` alone is one line).
    fn arbitrary_lines() -> impl Strategy<Value = String> {
        prop::collection::vec(".*", 0..8).prop_map(|v| v.join("\n"))
    }

    macro_rules! never_panics {
        ($($module:ident => [$($own:expr),+ $(,)?];)*) => {$(
            mod $module {
                use super::*;
                use crate::proc::$module::parse;

                const OWN: &[&str] = &[$($own),+];

                #[test]
                fn own_samples_parse() {
                    for s in OWN {
                        assert!(parse(s).is_ok(), "{s:?}: {:?}", parse(s));
                    }
                }

                proptest! {
                    #![proptest_config(config())]

                    #[test]
                    fn arbitrary_str(s in ".*") {
                        check(parse, &s)?;
                    }

                    #[test]
                    fn arbitrary_multiline(s in arbitrary_lines()) {
                        check(parse, &s)?;
                    }

                    #[test]
                    fn arbitrary_bytes(b in any::<Vec<u8>>()) {
                        check(parse, &String::from_utf8_lossy(&b))?;
                    }

                    #[test]
                    fn structured_garbage(s in structured(OWN)) {
                        check(parse, &s)?;
                    }
                }
            }
        )*};
    }

    never_panics! {
        stat => [
            fixture!("debian12-6.18/proc/stat"),
            fixture!("v2-nopsi-5.4/proc/stat"),
            "cpu  1 2 3 4 5\nprocs_blocked 0\n",
        ];
        loadavg => [
            fixture!("debian12-6.18/proc/loadavg"),
            fixture!("v2-nopsi-5.4/proc/loadavg"),
        ];
        pressure => [
            fixture!("debian12-6.18/proc/pressure/cpu"),
            fixture!("debian12-6.18/proc/pressure/io"),
            fixture!("debian12-6.18/proc/pressure/memory"),
            "some avg10=12.50 avg60=1.00 avg300=0.00 total=99\n",
        ];
        meminfo => [
            fixture!("debian12-6.18/proc/meminfo"),
            fixture!("v2-nopsi-5.4/proc/meminfo"),
        ];
        vmstat => [
            fixture!("debian12-6.18/proc/vmstat"),
            fixture!("v2-nopsi-5.4/proc/vmstat"),
        ];
        diskstats => [
            fixture!("debian12-6.18/proc/diskstats"),
            fixture!("v2-nopsi-5.4/proc/diskstats"),
            "   8       0 sda 1 2 3 4 5 6 7 8 9 10 11\n",
        ];
        sys_vm => [
            fixture!("debian12-6.18/proc/sys/vm/dirty_expire_centisecs"),
            fixture!("debian12-6.18/proc/sys/vm/dirtytime_expire_seconds"),
            fixture!("v2-nopsi-5.4/proc/sys/vm/dirty_ratio"),
        ];
    }

    /// Every host file holding arbitrary bytes: `read_all` reports parse errors (or a reading),
    /// never panics, and never turns non-UTF-8 into an I/O error.
    mod read_all_arbitrary_files {
        use super::*;
        use crate::roots::Roots;
        use crate::sample::host::read_all;
        use crate::Error;

        const FILES: &[&str] = &[
            "stat",
            "loadavg",
            "pressure/cpu",
            "pressure/io",
            "pressure/memory",
            "meminfo",
            "vmstat",
            "diskstats",
            "sys/vm/dirty_ratio",
        ];

        proptest! {
            #![proptest_config(Config { cases: 64, ..config() })]

            #[test]
            fn read_all_never_panics(contents in prop::collection::vec(any::<Vec<u8>>(), FILES.len())) {
                let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
                let proc = dir.path().join("proc");
                for (rel, bytes) in FILES.iter().zip(&contents) {
                    let path = proc.join(rel);
                    std::fs::create_dir_all(path.parent().unwrap_or(&proc))
                        .and_then(|()| std::fs::write(&path, bytes))
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                }
                let roots = Roots {
                    procfs: proc,
                    sysfs: dir.path().join("sys"),
                    cgroupfs: dir.path().join("sys/fs/cgroup"),
                    rootfs: dir.path().to_path_buf(),
                };
                for (name, r) in read_all(&roots) {
                    prop_assert!(!matches!(r, Err(Error::Io { .. })), "{name}: {r:?}");
                }
            }
        }
    }
}
