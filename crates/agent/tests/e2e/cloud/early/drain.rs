//! The replay, as a test: a gp2 bucket at 50 % drained as fast as it goes (3,000 IOPS
//! on a 1 GiB volume: 2,900 net) with **no CloudWatch history** at start, every `[cloud]`
//! cadence at its default, and CloudWatch publishing each minute's average 150 s after the
//! minute ends (AWS: "about 2–3 minutes"). The bar:
//!
//! - the estimate is present within a minute of the first point's publication;
//! - the 30-minute warning (`seconds_to_empty < 1800`) comes at least 10 minutes before a
//!   CloudWatch-based `BurstBalance < 20 %` alert would fire: when the first minute whose
//!   average is below 20 % is published (with `for: 0`, the most generous such alert);
//! - an agent restart mid-drain (SIGKILL, as a crash) keeps the estimate within 2 points.
//!
//! The CloudWatch alert's time is computed from the played bucket's own drain (the throttle
//! holds it steady) rather than waited for: it comes some 12 minutes in, and the test would
//! otherwise take that long.

use std::time::{Duration, Instant};

use super::super::{minute, now, start_agent, Aws};
use super::{config, PlayedCloudWatch, PlayedGp2, GP2_CREDITS};
use crate::harness::Metrics;

const START_PCT: f64 = 50.0;
const LOAD_IOPS: u32 = 3_000;
const BASELINE: f64 = 100.0; // 1 GiB gp2
/// CloudWatch publishes a minute this long after it ends.
const LAG: f64 = 150.0;

#[test]
fn a_fast_drain_with_no_history_warns_ten_minutes_before_cloudwatch_and_survives_a_restart() {
    if !crate::harness::require_root("cloud::early::drain") {
        return;
    }
    // Start late in a minute: the first minute CloudWatch publishes is mostly before the agent,
    // and its point comes out soon (the partly seen minute is the harder anchor).
    while !(40.0..50.0).contains(&(now() % 60.0)) {
        std::thread::sleep(Duration::from_millis(500));
    }
    let aws = Aws::start();
    let setup = aws.call(
        "setup",
        serde_json::json!({"volumes": [{"type": "gp2", "size": 1, "created_ago": 2_592_000}]}),
    );
    let vol = Aws::volumes(&setup).remove(0);
    let rig = crate::dstate_rig::DStateRig::for_ebs(8, 5, 4096);
    let dev = rig.loop_device();
    let cfg = config(&aws, &dev, &vol);
    let mut ebs = PlayedGp2::at(START_PCT, BASELINE);
    ebs.tick(&dev);
    let t0 = now();
    // Until now the bucket sat at 50 % (no CloudWatch point has been published for it).
    let mut cw = PlayedCloudWatch::new(minute(t0), LAG);
    let mut t = minute(t0);
    while t < t0 {
        cw.samples.push((t, START_PCT));
        t += 1.0;
    }
    rig.set_write_iops(LOAD_IOPS);
    let mut agent = start_agent(&cfg);
    let series = |name: &str| format!("stallwatch_{name}{{volume_id=\"{vol}\"}}");
    let (est_s, tte_s) = (
        series("ebs_burst_balance_estimate_percent"),
        series("ebs_burst_seconds_to_empty"),
    );
    let (lo_s, hi_s) = (
        series("ebs_burst_balance_estimate_low_percent"),
        series("ebs_burst_balance_estimate_high_percent"),
    );
    let basis = |m: &Metrics, b: &str| {
        m.get(&format!(
            "stallwatch_ebs_burst_balance_estimate_basis{{volume_id=\"{vol}\",basis=\"{b}\"}}"
        ))
        .is_some()
    };

    let mut t_warn: Option<f64> = None;
    let mut t_anchor: Option<f64> = None;
    let mut first_pub: Option<f64> = None;
    let mut worst = 0.0f64;
    let mut restarted: Option<(f64, f64, f64)> = None; // (t, estimate, played)
    let mut after_restart_worst = 0.0f64;
    let bound = Instant::now() + Duration::from_secs(480);
    loop {
        assert!(
            Instant::now() < bound,
            "the drain never got that far:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_secs(1));
        ebs.tick(&dev);
        let t = now();
        cw.samples.push((t, ebs.percent()));
        if cw.publish_due(&aws, &vol, t) > 0 && first_pub.is_none() {
            first_pub = Some(t);
        }
        let m = Metrics::parse(&agent.scrape());
        let (est, tte) = (m.get(&est_s), m.get(&tte_s));
        // Until an anchor, the bounds say how little is known, and they hold the truth.
        if let (Some(lo), Some(hi)) = (m.get(&lo_s), m.get(&hi_s)) {
            let p = ebs.percent();
            assert!(
                lo - 0.5 <= p && p <= hi + 0.5,
                "+{:.0}s: played {p:.3} % outside [{lo:.3}, {hi:.3}]",
                t - t0
            );
        }
        if t_warn.is_none() && tte.is_some_and(|s| s < 1800.0) {
            t_warn = Some(t);
            eprintln!(
                "drain: +{:.0}s the 30-minute warning (to empty {:.0} s, estimate {est:?}, played {:.2} %)",
                t - t0,
                tte.unwrap(),
                ebs.percent()
            );
        }
        if t_anchor.is_none() && basis(&m, "cloudwatch") {
            t_anchor = Some(t);
            // Said once at INFO: when the model is anchored, and from which point.
            let log = agent.log();
            let line = log
                .lines()
                .find(|l| l.contains("Anchored the credit model on CloudWatch."))
                .unwrap_or_else(|| panic!("no INFO line for the anchor:\n{log}"));
            assert!(
                line.contains("level=info")
                    && line.contains(&vol)
                    && line.contains("point_minute="),
                "{line}"
            );
            eprintln!(
                "drain: +{:.0}s anchored on CloudWatch ({:.0} s after the first point was published)",
                t - t0,
                t - first_pub.unwrap_or(t)
            );
        }
        if let (Some(e), Some(_)) = (est, t_anchor) {
            worst = worst.max((e - ebs.percent()).abs());
        }
        if let Some((tr, _, _)) = restarted {
            if let Some(e) = est {
                after_restart_worst = after_restart_worst.max((e - ebs.percent()).abs());
            }
            if t - tr > 30.0 {
                break;
            }
            continue;
        }
        // Twenty seconds after the anchor: kill the agent (no goodbye, as in a crash), leave it
        // down a few seconds while the drain goes on, start it again.
        if t_anchor.is_some_and(|ta| t - ta >= 20.0) {
            let before = est.expect("an anchored estimate");
            drop(agent);
            for _ in 0..4 {
                std::thread::sleep(Duration::from_secs(1));
                ebs.tick(&dev);
                cw.samples.push((now(), ebs.percent()));
            }
            agent = start_agent(&cfg);
            let m = agent.wait_for(Duration::from_secs(10), "the restored estimate", |m| {
                m.get(&est_s).is_some()
            });
            ebs.tick(&dev);
            let (e, p) = (m.get(&est_s).unwrap(), ebs.percent());
            assert!(
                basis(&m, "restored") || basis(&m, "cloudwatch"),
                "the estimate after the restart rests on the saved state:\n{}",
                agent.log()
            );
            eprintln!(
                "drain: restart at +{:.0}s: estimate {before:.3} % before, {e:.3} % after, played {p:.3} %",
                now() - t0
            );
            assert!(
                (e - p).abs() <= 2.0,
                "after the restart the estimate is {e:.3} %, the bucket {p:.3} %"
            );
            restarted = Some((now(), e, p));
            assert!(agent
                .log()
                .contains("Took up the credit model from before the restart"));
        }
    }
    let t_warn = t_warn.expect("a warning");
    let t_anchor = t_anchor.expect("an anchor");
    let first_pub = first_pub.expect("a published point");
    assert!(
        t_anchor - first_pub <= 65.0,
        "anchored {:.0} s after the first point was published",
        t_anchor - first_pub
    );
    assert!(worst <= 2.0, "worst tracking error {worst:.3} points");
    assert!(
        after_restart_worst <= 2.0,
        "after the restart: {after_restart_worst:.3}"
    );
    // When a CloudWatch-based "BurstBalance < 20 %" alert fires: the first minute whose average
    // is below 20 % (the steady drain: the level at the middle of the minute), published LAG
    // after it ends.
    let (ta, pa) = (
        cw.samples[cw.samples.len() - 60],
        cw.samples[cw.samples.len() - 1],
    );
    let rate = (ta.1 - pa.1) / (pa.0 - ta.0); // points a second
    assert!(rate > 0.0, "draining");
    let t20 = pa.0 + (pa.1 - 20.0) / rate;
    let mut m = minute(t20 - 30.0);
    while m + 30.0 < t20 {
        m += 60.0;
    }
    let t_cw = m + 60.0 + LAG;
    let margin = t_cw - t_warn;
    eprintln!(
        "drain: net drain {:.0} credits/s; warning at +{:.0}s, anchored at +{:.0}s (first point published at +{:.0}s), CloudWatch's 20 % alert at +{:.0}s: {margin:.0} s ahead; tracking worst {worst:.3}, after restart {after_restart_worst:.3} points",
        rate / 100.0 * GP2_CREDITS,
        t_warn - t0,
        t_anchor - t0,
        first_pub - t0,
        t_cw - t0
    );
    assert!(
        margin >= 600.0,
        "the warning came only {margin:.0} s before CloudWatch's alert"
    );
    // The fast poll while unanchored, then while emptying within the hour: a poll a minute.
    let polls = aws.metric_calls().len();
    let run = now() - t0;
    assert!(
        polls as f64 >= run / 60.0 - 2.0,
        "{polls} polls in {run:.0} s: not polled every minute"
    );
    rig.lift();
}

/// A loop device made for one test at an index nobody uses: its counters start at zero, as a
/// freshly attached EBS device's do (a reused loop device keeps the counters of its earlier
/// lives). Detached and removed on drop.
struct FreshLoop {
    name: String,
    _image: tempfile::TempDir,
}

impl FreshLoop {
    fn new() -> FreshLoop {
        let image = tempfile::tempdir().expect("tempdir");
        let file = image.path().join("disk.img");
        std::fs::File::create(&file)
            .and_then(|f| f.set_len(64 << 20))
            .expect("image");
        let first = 400 + (std::process::id() % 400);
        for i in (first..1_000).chain(400..first) {
            if std::path::Path::new(&format!("/sys/block/loop{i}")).exists() {
                continue;
            }
            let ok = std::process::Command::new("losetup")
                .arg(format!("/dev/loop{i}"))
                .arg(&file)
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return FreshLoop {
                    name: format!("loop{i}"),
                    _image: image,
                };
            }
        }
        panic!("no free loop index between 400 and 999");
    }

    /// `count` direct writes of 4 KiB.
    fn write(&self, count: u32) {
        let ok = std::process::Command::new("dd")
            .args(["if=/dev/zero", "bs=4k", "oflag=direct", "status=none"])
            .arg(format!("of=/dev/{}", self.name))
            .arg(format!("count={count}"))
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "dd to /dev/{}", self.name);
    }
}

impl Drop for FreshLoop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &format!("/dev/{}", self.name)])
            .status();
        if let Ok(n) = self
            .name
            .trim_start_matches("loop")
            .parse::<libc::c_ulong>()
        {
            if let Ok(ctl) = std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/loop-control")
            {
                use std::os::fd::AsRawFd;
                const LOOP_CTL_REMOVE: libc::c_ulong = 0x4C81;
                // SAFETY: an ioctl with an integer argument on a file we hold open.
                unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_REMOVE, n) };
            }
        }
    }
}

/// A volume created minutes ago starts full (AWS: a new gp2 volume receives 5.4 M credits):
/// the agent has an estimate from its first readings, with no CloudWatch point at all.
#[test]
fn a_new_volume_is_estimated_from_its_first_second_without_cloudwatch() {
    if !crate::harness::require_root("cloud::early::new_volume") {
        return;
    }
    let aws = Aws::start();
    let setup = aws.call(
        "setup",
        serde_json::json!({"volumes": [{"type": "gp2", "size": 1}]}),
    );
    let vol = Aws::volumes(&setup).remove(0);
    let created = now();
    // The device appears after the volume was created (attach), and spends from its first I/O.
    let dev = FreshLoop::new();
    dev.write(10_000);
    let cfg = config(&aws, &dev.name, &vol);
    let agent = start_agent(&cfg);
    let est_s = format!("stallwatch_ebs_burst_balance_estimate_percent{{volume_id=\"{vol}\"}}");
    let m = agent.wait_for(Duration::from_secs(15), "an estimate", |m| {
        m.get(&est_s).is_some()
    });
    assert!(
        m.get(&format!(
            "stallwatch_ebs_burst_balance_estimate_basis{{volume_id=\"{vol}\",basis=\"new_volume\"}}"
        ))
        .is_some(),
        "{}",
        m.text
    );
    assert!(
        m.get(&format!(
            "stallwatch_ebs_burst_balance_percent{{volume_id=\"{vol}\"}}"
        ))
        .is_none(),
        "no CloudWatch point exists"
    );
    // The test's own bucket: full at creation, spent by every I/O the device ever counted, and
    // earning at most its baseline since.
    let (ops, bytes) = PlayedGp2::counters(&dev.name);
    let spent = PlayedGp2::units(ops, bytes);
    let age = now() - created;
    let est = m.get(&est_s).unwrap();
    let truth_low = (GP2_CREDITS - spent) / GP2_CREDITS * 100.0;
    let truth_high =
        ((GP2_CREDITS - spent) + BASELINE * age).min(GP2_CREDITS) / GP2_CREDITS * 100.0;
    eprintln!(
        "new volume: estimate {est:.3} %, the bucket between {truth_low:.3} and {truth_high:.3} % ({spent} credits spent in {age:.0} s)"
    );
    assert!(spent >= 10_000.0, "the writes were counted");
    assert!(
        est >= truth_low - 0.1 && est <= truth_high + 0.1,
        "estimate {est:.3} outside [{truth_low:.3}, {truth_high:.3}]"
    );
    assert!(agent
        .log()
        .contains("A new volume: the credit model starts full"));
}
