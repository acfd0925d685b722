//! The comparisons: the agent's series against the kernel's files, per hierarchy.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::kernel::*;
use super::rig::*;
use crate::harness::{write, Agent, Metrics};

/// `got` must be within `tol` of `want`.
pub(super) fn near(what: &str, got: Option<f64>, want: f64, tol: f64) -> Result<(), String> {
    match got {
        Some(g) if (g - want).abs() <= tol => Ok(()),
        Some(g) => Err(format!(
            "{what}: agent {g}, kernel {want} (tolerance {tol})"
        )),
        None => Err(format!("{what}: no series (kernel {want})")),
    }
}

/// Scrapes until `check` passes, or panics after `timeout` with its last complaint.
pub(super) fn converge(
    agent: &Agent,
    timeout: Duration,
    what: &str,
    mut check: impl FnMut(&Metrics) -> Result<(), String>,
) -> Metrics {
    let t0 = Instant::now();
    loop {
        let m = Metrics::parse(&agent.scrape());
        let why = match check(&m) {
            Ok(()) => return m,
            Err(w) => w,
        };
        if t0.elapsed() > timeout {
            panic!(
                "timed out after {timeout:?} waiting for {what}: {why}\nlast scrape:\n{}\nlog:\n{}",
                m.text,
                agent.log()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether the agent (our child, in our namespace) takes our network namespace for the host's
/// and so leaves our containers' network out: it compares with PID 1's namespace, or with its
/// own when PID 1's cannot be read (as here: `EACCES` even to root).
pub(super) fn in_host_netns() -> bool {
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    match std::fs::read_link("/proc/1/ns/net") {
        Ok(init) => init == ours,
        Err(_) => true,
    }
}

pub(super) fn agent_with(cfg_dir: &Path, toml: &str, extra: &[&str]) -> Agent {
    let cfg = cfg_dir.join("cfg.toml");
    write(&cfg, toml);
    let mut args = vec![format!("--config.file={}", cfg.display())];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Agent::start(&args)
}

/// The families a v1-only container has on this host: cpuacct, cpu (CFS), memory and pids
/// counters, plus the D-thread gauge; a memory limit only when one is set. No PSI (the
/// container has no unified directory), no network in the host namespace; io rows only when
/// the kernel lists devices (see `check_v1`).
pub(super) fn v1_families(limit: bool) -> BTreeSet<String> {
    let mut f: BTreeSet<String> = [
        "cpu_user_seconds_total",
        "cpu_system_seconds_total",
        "cpu_usage_seconds_total",
        "cpu_periods_total",
        "cpu_throttled_periods_total",
        "cpu_throttled_seconds_total",
        "memory_usage_bytes",
        "memory_rss_bytes",
        "memory_cache_bytes",
        "memory_dirty_bytes",
        "memory_writeback_bytes",
        "memory_major_faults_total",
        "oom_kills_total",
        "pids",
        "dstate_threads",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if limit {
        f.insert("memory_limit_bytes".into());
    }
    f
}

/// One v1 container against its kernel files, once its process sleeps.
pub(super) fn check_v1(m: &Metrics, s: &Shape) -> Result<(), String> {
    let dir = |c: &str| PathBuf::from(CGROUPFS).join(c).join(&s.rel);
    let get = |f: &str| m.get(&s.series(f));
    let t = s.tag;
    // CPU: the same kernel counters, and nothing moves once the process sleeps: equal up to
    // printing (1 ns, 1 tick).
    let usage = read_u64(dir("cpuacct").join("cpuacct.usage")) as f64 / 1e9;
    if usage < BURN_SECONDS - BURN_SLACK {
        return Err(format!("{t}: kernel usage {usage} s, still burning"));
    }
    near(
        &format!("{t} cpu usage"),
        get("cpu_usage_seconds_total"),
        usage,
        1e-9,
    )?;
    let st = keyed(dir("cpuacct").join("cpuacct.stat"));
    let hz = user_hz();
    near(
        &format!("{t} cpu user"),
        get("cpu_user_seconds_total"),
        st["user"] as f64 / hz,
        1e-9,
    )?;
    near(
        &format!("{t} cpu system"),
        get("cpu_system_seconds_total"),
        st["system"] as f64 / hz,
        1e-9,
    )?;
    let cpu = keyed(dir("cpu").join("cpu.stat"));
    near(
        &format!("{t} periods"),
        get("cpu_periods_total"),
        cpu["nr_periods"] as f64,
        0.0,
    )?;
    near(
        &format!("{t} throttled periods"),
        get("cpu_throttled_periods_total"),
        cpu["nr_throttled"] as f64,
        0.0,
    )?;
    near(
        &format!("{t} throttled time"),
        get("cpu_throttled_seconds_total"),
        cpu["throttled_time"] as f64 / 1e9,
        1e-9,
    )?;
    if t == "crio" {
        // 0.3 s of CPU at 20 ms per 100 ms spans ≥ 15 periods; on this shared 2-core machine
        // the process does not get its whole quota in every one of them, so fewer are
        // throttled (8 seen) — but some must be, for real.
        if cpu["nr_throttled"] < 3 || cpu["throttled_time"] == 0 || cpu["nr_periods"] < 15 {
            return Err(format!("crio: not throttled enough: {cpu:?}"));
        }
    }
    // Memory: anon memory does not move once allocated (exact); usage and page cache may
    // move by a few pages of kernel bookkeeping (1 MiB); dirty pages only leave (writeback),
    // so the agent's earlier reading is ≥ the kernel's now, and ≤ what was written.
    let ms = keyed(dir("memory").join("memory.stat"));
    let mib = 1048576.0;
    let usage_b = read_u64(dir("memory").join("memory.usage_in_bytes")) as f64;
    near(
        &format!("{t} memory usage"),
        get("memory_usage_bytes"),
        usage_b,
        mib,
    )?;
    near(
        &format!("{t} rss"),
        get("memory_rss_bytes"),
        ms["total_rss"] as f64,
        0.0,
    )?;
    if (ms["total_rss"] as f64) < 0.9 * (ANON_MIB as f64) * mib {
        return Err(format!(
            "{t}: kernel rss {} < {ANON_MIB} MiB",
            ms["total_rss"]
        ));
    }
    near(
        &format!("{t} cache"),
        get("memory_cache_bytes"),
        ms["total_cache"] as f64,
        mib,
    )?;
    if (ms["total_cache"] as f64) < (DIRTY_MIB as f64) * mib {
        return Err(format!(
            "{t}: kernel cache {} < {DIRTY_MIB} MiB",
            ms["total_cache"]
        ));
    }
    let dirty = get("memory_dirty_bytes").ok_or(format!("{t}: no dirty series"))?;
    let k_dirty = ms["total_dirty"] as f64;
    if !(dirty >= k_dirty && dirty <= (DIRTY_MIB as f64) * mib) {
        return Err(format!(
            "{t} dirty: agent {dirty}, kernel now {k_dirty}, written {DIRTY_MIB} MiB"
        ));
    }
    let wb = get("memory_writeback_bytes").ok_or(format!("{t}: no writeback series"))?;
    if wb > (DIRTY_MIB as f64) * mib {
        return Err(format!("{t} writeback {wb} > written"));
    }
    near(
        &format!("{t} major faults"),
        get("memory_major_faults_total"),
        ms["total_pgmajfault"] as f64,
        0.0,
    )?;
    let oom = keyed(dir("memory").join("memory.oom_control"));
    near(
        &format!("{t} oom kills"),
        get("oom_kills_total"),
        oom["oom_kill"] as f64,
        0.0,
    )?;
    match (t, get("memory_limit_bytes")) {
        ("podman", Some(l)) if l == PODMAN_LIMIT as f64 => {}
        ("podman", l) => return Err(format!("podman limit: {l:?}, want {PODMAN_LIMIT}")),
        (_, None) => {}
        (_, Some(l)) => return Err(format!("{t}: a limit of {l} on an unlimited cgroup")),
    }
    let pids = read_u64(dir("pids").join("pids.current")) as f64;
    near(&format!("{t} pids"), get("pids"), pids, 0.0)?;
    near(&format!("{t} D threads"), get("dstate_threads"), 0.0, 0.0)?;
    // Block I/O: the blkio throttle statistics count a cgroup's bios only on a queue where
    // some throttle rule was ever set (another test's device limit, say); then reading perl
    // from disk shows up here. Whatever the kernel lists, the agent must sum to the same.
    let blk = |f: &str| -> (f64, f64, bool) {
        let (mut r, mut w, mut any) = (0.0, 0.0, false);
        for l in read(dir("blkio").join(f)).lines() {
            let v: Vec<&str> = l.split_whitespace().collect();
            if let [_dev, op, n] = v[..] {
                any = true;
                match op {
                    "Read" => r += n.parse::<f64>().unwrap(),
                    "Write" => w += n.parse::<f64>().unwrap(),
                    _ => {}
                }
            }
        }
        (r, w, any)
    };
    let (rb, wb, io_rows) = blk("blkio.throttle.io_service_bytes");
    let (rops, wops, _) = blk("blkio.throttle.io_serviced");
    let sum = |fam: &str| {
        let p = format!("stallwatch_container_{fam}{{");
        series_of(m, &s.id)
            .iter()
            .filter(|(k, _)| k.starts_with(&p))
            .map(|(_, v)| v)
            .sum::<f64>()
    };
    if io_rows {
        near(
            &format!("{t} io read bytes"),
            Some(sum("io_read_bytes_total")),
            rb,
            0.0,
        )?;
        near(
            &format!("{t} io written bytes"),
            Some(sum("io_written_bytes_total")),
            wb,
            0.0,
        )?;
        near(
            &format!("{t} io reads"),
            Some(sum("io_reads_total")),
            rops,
            0.0,
        )?;
        near(
            &format!("{t} io writes"),
            Some(sum("io_writes_total")),
            wops,
            0.0,
        )?;
    }
    let got = families_of(m, &s.id);
    let mut want = v1_families(t == "podman");
    if io_rows {
        for f in [
            "io_read_bytes_total",
            "io_written_bytes_total",
            "io_reads_total",
            "io_writes_total",
        ] {
            want.insert(f.to_string());
        }
    }
    if in_host_netns() && got != want {
        return Err(format!("{t}: families {got:?}, want exactly {want:?}"));
    }
    Ok(())
}

/// Removes container `which` (kill, rmdir) and asserts that it is gone from the next scrape,
/// counted as a stop, while every other shape still exports `family`.
pub(super) fn remove_and_check_gone(
    agent: &Agent,
    rig: &mut Rig,
    before: &Metrics,
    shapes: &[Shape],
    idx: &[usize],
    which: usize,
    family: &str,
) {
    let stops0 = before.get("stallwatch_container_stops_total").unwrap();
    let gone = &shapes[which];
    rig.remove(idx[which]);
    let m2 = converge(
        agent,
        Duration::from_secs(10),
        "the removed container gone",
        |m| {
            if m.text.contains(&gone.id) {
                return Err(format!("{} still exported", gone.tag));
            }
            Ok(())
        },
    );
    assert!(m2.get("stallwatch_container_stops_total").unwrap() >= stops0 + 1.0);
    for s in shapes.iter().filter(|s| s.id != gone.id) {
        assert!(m2.get(&s.series(family)).is_some(), "{} stays", s.tag);
    }
}

/// The families of a container on this host's v2 tree: only `cpu.stat`'s three times, one PSI
/// series pair per line of each `*.pressure` file, and the D-thread gauge.
pub(super) fn v2_families(leaf: &Path) -> BTreeSet<String> {
    let mut f: BTreeSet<String> = [
        "cpu_user_seconds_total",
        "cpu_system_seconds_total",
        "cpu_usage_seconds_total",
        "dstate_threads",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for r in ["cpu", "io", "memory"] {
        if !pressure(leaf.join(format!("{r}.pressure"))).is_empty() {
            f.insert("pressure_stall_seconds_total".into());
            f.insert("pressure_avg10_ratio".into());
        }
    }
    f
}

pub(super) fn check_v2(m: &Metrics, s: &Shape, leaf: &Path) -> Result<(), String> {
    let t = s.tag;
    let get = |f: &str| m.get(&s.series(f));
    let cpu = keyed(leaf.join("cpu.stat"));
    for absent in ["nr_periods", "nr_throttled", "throttled_usec"] {
        if cpu.contains_key(absent) {
            return Err(format!(
                "{t}: cpu.stat has {absent}: the cpu controller is enabled on the unified tree \
                 of this host, which this test does not expect"
            ));
        }
    }
    let usage = cpu["usage_usec"] as f64 / 1e6;
    if usage < BURN_SECONDS - BURN_SLACK {
        return Err(format!("{t}: kernel usage {usage} s, still burning"));
    }
    near(
        &format!("{t} usage"),
        get("cpu_usage_seconds_total"),
        usage,
        1e-9,
    )?;
    near(
        &format!("{t} user"),
        get("cpu_user_seconds_total"),
        cpu["user_usec"] as f64 / 1e6,
        1e-9,
    )?;
    near(
        &format!("{t} system"),
        get("cpu_system_seconds_total"),
        cpu["system_usec"] as f64 / 1e6,
        1e-9,
    )?;
    // PSI totals stop once the cgroup idles (the kernel folds per-CPU times in every 2 s):
    // equal to the µs. avg10 decays with time, so only its range is checked.
    let mut n_psi = 0;
    for r in ["cpu", "io", "memory"] {
        for (kind, (_, total)) in pressure(leaf.join(format!("{r}.pressure"))) {
            let l = format!("{},resource=\"{r}\",kind=\"{kind}\"", s.labels());
            near(
                &format!("{t} {r} {kind} PSI total"),
                m.get(&format!(
                    "stallwatch_container_pressure_stall_seconds_total{{{l}}}"
                )),
                total as f64 / 1e6,
                1e-9,
            )?;
            let avg = m
                .get(&format!("stallwatch_container_pressure_avg10_ratio{{{l}}}"))
                .ok_or(format!("{t} {r} {kind}: no avg10"))?;
            if !(0.0..=1.0).contains(&avg) {
                return Err(format!("{t} {r} {kind} avg10 {avg}"));
            }
            n_psi += 1;
        }
    }
    let psi_series = series_of(m, &s.id)
        .keys()
        .filter(|k| k.starts_with("stallwatch_container_pressure_"))
        .count();
    if psi_series != 2 * n_psi {
        return Err(format!(
            "{t}: {psi_series} PSI series for {n_psi} pressure lines"
        ));
    }
    near(&format!("{t} D threads"), get("dstate_threads"), 0.0, 0.0)?;
    let got = families_of(m, &s.id);
    let want = v2_families(leaf);
    if in_host_netns() && got != want {
        return Err(format!("{t}: families {got:?}, want exactly {want:?}"));
    }
    Ok(())
}
