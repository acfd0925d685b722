//! The cloud side on the real kernel: a loop device stands in for an EBS volume, a real writer
//! (the D-state rig's, behind a blkio throttle) does its I/O, and the test plays EBS: it spends
//! a gp2 credit bucket by the I/O the kernel counts on the device, drops the throttle to the
//! baseline when the bucket is empty, and publishes per-minute averages to CloudWatch (moto)
//! minutes late, as CloudWatch does. Root only; these run one at a time (the `host-writeback`
//! group: they load a shared disk and time what the agent sees).
//!
//! - here: the estimate tracks a draining bucket and predicts when it empties;
//! - `drain`: a fast drain with no CloudWatch history at start warns ten minutes before a
//!   CloudWatch-based alert would, and survives an agent restart; a new volume starts full;
//! - `headroom`: a gp3 at 95 % of its IOPS and an io2 at its throughput limit.

use std::time::Duration;

use super::{minute, now, start_agent, Aws};
use crate::harness::Metrics;

mod drain;
mod headroom;

pub(super) const GP2_CREDITS: f64 = 5_400_000.0;

/// The agent's config for a scenario: every `[cloud]` cadence at its default, the harness's
/// endpoints and state file, and `dev` standing in for volume `vol`.
pub(super) fn config(aws: &Aws, dev: &str, vol: &str) -> std::path::PathBuf {
    let dir = aws.state.path().join("config");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("stallwatch.toml");
    crate::harness::write(
        &cfg,
        &aws.config(&format!(
            "\n[[cloud.volume]]\ndevice = \"{dev}\"\nvolume_id = \"{vol}\"\n"
        )),
    );
    cfg
}
const GP2_BURST: f64 = 3_000.0;

/// The test's own EBS: a gp2 volume's credit bucket, spent by the I/O the kernel counts on the
/// loop device. Written here from AWS's documented rules, independently of the agent's model.
pub(super) struct PlayedGp2 {
    pub credits: f64,
    pub baseline: f64,
    pub last: Option<(f64, u64, u64)>,
}

impl PlayedGp2 {
    /// A bucket at `percent` of a gp2 volume with `baseline` IOPS.
    pub fn at(percent: f64, baseline: f64) -> PlayedGp2 {
        PlayedGp2 {
            credits: GP2_CREDITS * percent / 100.0,
            baseline,
            last: None,
        }
    }

    pub fn percent(&self) -> f64 {
        self.credits / GP2_CREDITS * 100.0
    }

    /// The device's completed I/O from /proc/diskstats: (ops, bytes).
    pub fn counters(dev: &str) -> (u64, u64) {
        let text = std::fs::read_to_string("/proc/diskstats").unwrap();
        let f: Vec<&str> = text
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.get(2) == Some(&dev))
            .unwrap_or_else(|| panic!("{dev} not in /proc/diskstats"));
        let n = |i: usize| f[i].parse::<u64>().unwrap();
        (n(3) + n(7), (n(5) + n(9)) * 512)
    }

    /// EBS's credits for `ops` I/Os of `bytes` in all: each I/O of up to 256 KiB is one.
    pub fn units(ops: u64, bytes: u64) -> f64 {
        (ops as f64).max((bytes as f64 / 262_144.0).ceil())
    }

    /// Reads the device's counters and spends credits: the volume earns its baseline per
    /// second and spends one credit per unit, at most its burst rate.
    pub fn tick(&mut self, dev: &str) {
        let (ops, bytes) = PlayedGp2::counters(dev);
        let t = now();
        if let Some((t0, o0, b0)) = self.last {
            let dt = t - t0;
            let used = PlayedGp2::units(ops - o0, bytes - b0).min(GP2_BURST * dt);
            self.credits = (self.credits + self.baseline * dt - used).clamp(0.0, GP2_CREDITS);
        }
        self.last = Some((t, ops, bytes));
    }
}

/// CloudWatch as the tests play it: the bucket sampled every second, each minute's average
/// published `lag` seconds after the minute ends.
pub(super) struct PlayedCloudWatch {
    pub samples: Vec<(f64, f64)>,
    /// Minutes published, with when.
    pub published: Vec<(f64, f64)>,
    pub lag: f64,
    /// The first minute to publish.
    pub from: f64,
}

impl PlayedCloudWatch {
    pub fn new(from: f64, lag: f64) -> Self {
        PlayedCloudWatch {
            samples: Vec::new(),
            published: Vec::new(),
            lag,
            from,
        }
    }

    /// Publishes every minute that is due at `t`; returns how many.
    pub fn publish_due(&mut self, aws: &Aws, vol: &str, t: f64) -> usize {
        let mut n = 0;
        let mut m = self.published.last().map_or(self.from, |(m, _)| m + 60.0);
        while m + 60.0 + self.lag <= t {
            let in_minute: Vec<f64> = self
                .samples
                .iter()
                .filter(|(ts, _)| *ts >= m && *ts < m + 60.0)
                .map(|(_, p)| *p)
                .collect();
            if !in_minute.is_empty() {
                let avg = in_minute.iter().sum::<f64>() / in_minute.len() as f64;
                aws.call(
                    "put",
                    serde_json::json!({"volume_id": vol, "points": [[m, avg]]}),
                );
                n += 1;
            }
            self.published.push((m, t));
            m += 60.0;
        }
        n
    }
}

/// The first seed incident, shortened: a loop device stands in for a 1 GiB gp2 volume whose
/// bucket is at 4 % (CloudWatch says so, minutes late, as it does). A real writer spends it at
/// 2,000 IOPS through a blkio throttle; the test plays EBS, spending credits by the I/O the
/// kernel counts and dropping the throttle to the 100 IOPS baseline when the bucket is empty,
/// and publishes per-minute averages to CloudWatch 30 s after each minute ends. The agent's
/// estimate must track the played bucket every second (±2 points as the issue asks; we hold it
/// to ±0.25, since the whole run moves only 4 points) and its seconds-to-empty, read once the
/// drain window is full, must predict the drop within 10 % (of the bucket's own forecast at that
/// moment, and of the actual drop when the writers held their rate).
#[test]
fn the_estimate_tracks_a_draining_gp2_bucket_and_predicts_when_it_empties() {
    if !crate::harness::require_root("cloud::early::the_estimate_tracks") {
        return;
    }
    const START_PCT: f64 = 4.0;
    const LOAD_IOPS: u32 = 2_000;
    const BASELINE: f64 = 100.0; // 1 GiB gp2: 3 IOPS/GiB, at least 100
                                 // Start early in a minute: the agent then starts inside the first minute CloudWatch will
                                 // report and the load begins some 15 s into it, so that minute's average must be anchored
                                 // from a history that starts mid-minute (the hard case, which once failed in CI).
    while !(2.0..12.0).contains(&(now() % 60.0)) {
        std::thread::sleep(Duration::from_millis(500));
    }
    let aws = Aws::start();
    // A volume of some age: a new one would start full without CloudWatch (see `drain`).
    let setup = aws.call(
        "setup",
        serde_json::json!({"volumes": [{"type": "gp2", "size": 1, "created_ago": 86_400}]}),
    );
    let vol = setup["volumes"][0].as_str().unwrap().to_string();
    // Threads start (and are seen) in D at 5 IOPS; the load starts later.
    let rig = crate::dstate_rig::DStateRig::for_ebs(4, 5, 4096);
    let dev = rig.loop_device();
    let mut ebs = PlayedGp2::at(START_PCT, BASELINE);
    ebs.tick(&dev);
    // CloudWatch's history: the bucket sat at 4 % for the last minutes.
    let m0 = minute(now());
    aws.call(
        "put",
        serde_json::json!({"volume_id": vol, "points": [[m0 - 180.0, START_PCT], [m0 - 120.0, START_PCT], [m0 - 60.0, START_PCT]]}),
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("stallwatch.toml");
    crate::harness::write(
        &cfg,
        &aws.config(&format!(
            "poll_interval = \"60s\"\nfast_poll_interval = \"5s\"\nfast_poll_below = \"30%\"\ndescribe_interval = \"60s\"\nretry_min = \"1s\"\n\n[[cloud.volume]]\ndevice = \"{dev}\"\nvolume_id = \"{vol}\"\n"
        )),
    );
    let agent = start_agent(&cfg);
    let est_series =
        format!("stallwatch_ebs_burst_balance_estimate_percent{{volume_id=\"{vol}\"}}");
    let tte_series = format!("stallwatch_ebs_burst_seconds_to_empty{{volume_id=\"{vol}\"}}");
    // CloudWatch's per-minute averages, 30 s after each minute: the bucket sat at START_PCT
    // from the start of this minute until the played bucket's first tick, then it is sampled
    // every second.
    let mut cw = PlayedCloudWatch::new(m0, 30.0);
    let first_tick = ebs.last.unwrap().0;
    let mut t = m0;
    while t < first_tick {
        cw.samples.push((t, START_PCT));
        t += 1.0;
    }
    let anchored = std::time::Instant::now();
    loop {
        std::thread::sleep(Duration::from_secs(1));
        ebs.tick(&dev);
        cw.samples.push((now(), ebs.percent()));
        if Metrics::parse(&agent.scrape()).get(&est_series).is_some() {
            break;
        }
        assert!(
            anchored.elapsed() < Duration::from_secs(30),
            "no anchored estimate:\n{}",
            agent.log()
        );
    }
    let calls_before = aws.metric_calls().len();
    // Refilling (5 IOPS < the 100 IOPS baseline): not draining, so +Inf, spelled as both
    // exposition formats want it.
    let idle = agent.scrape();
    assert!(
        idle.lines()
            .any(|l| l.starts_with(&tte_series) && l.ends_with(" +Inf")),
        "{}",
        idle.lines()
            .filter(|l| l.contains("to_empty"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The model reads the host sampler's unfiltered diskstats: the `[disks]` filter hides loop
    // devices from the disk series (by default), not from the credit model.
    let shown = format!("device=\"{dev}\"");
    assert!(
        !idle
            .lines()
            .any(|l| l.starts_with("stallwatch_disk_") && l.contains(&shown)),
        "{dev} should be filtered out of the disk series"
    );

    rig.set_write_iops(LOAD_IOPS);
    let load_start = now();
    let mut worst = 0.0f64;
    let mut prediction: Option<(f64, f64)> = None; // (t, seconds to empty)
    let mut t_empty: Option<f64> = None;
    let deadline = load_start + 200.0;
    let mut after_empty = 0;
    while now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
        ebs.tick(&dev);
        let t = now();
        cw.samples.push((t, ebs.percent()));
        if t_empty.is_none() && ebs.credits <= 0.0 {
            // Empty: EBS holds the volume to its baseline.
            rig.set_write_iops(BASELINE as u32);
            t_empty = Some(t);
        }
        cw.publish_due(&aws, &vol, t);
        let m = Metrics::parse(&agent.scrape());
        let est = m.get(&est_series).expect("the estimate stays exported");
        if cw.samples.len() % 10 == 0 {
            eprintln!(
                "+{:.0}s played {:.3} % estimate {est:.3} % to-empty {:?}",
                t - load_start,
                ebs.percent(),
                m.get(&tte_series)
            );
        }
        let diff = (est - ebs.percent()).abs();
        worst = worst.max(diff);
        assert!(
            diff <= 2.0,
            "at +{:.0}s the agent estimates {est:.3} % but the bucket is at {:.3} %",
            t - load_start,
            ebs.percent()
        );
        // Once the 60 s drain window holds only the load, take the agent's prediction.
        if prediction.is_none() && t - load_start >= 65.0 && t_empty.is_none() {
            let tte = m.get(&tte_series).unwrap_or_else(|| {
                let ebs: Vec<&str> = m
                    .text
                    .lines()
                    .filter(|l| l.contains(vol.as_str()))
                    .collect();
                panic!("no {tte_series}:\n{}", ebs.join("\n"))
            });
            assert!(
                tte.is_finite() && tte > 0.0,
                "draining: finite time to empty, got {tte}"
            );
            prediction = Some((t, tte));
        }
        if let Some(te) = t_empty {
            if t - te >= 5.0 {
                assert!(est < 0.5, "empty bucket, estimate {est}");
                after_empty += 1;
                if after_empty >= 3 {
                    break;
                }
            }
        }
    }
    let t_empty = t_empty.unwrap_or_else(|| {
        panic!(
            "the played bucket never emptied (at {:.2} %)",
            ebs.percent()
        )
    });
    let (t_pred, tte) = prediction.expect("a prediction was taken");
    let actual = t_empty - t_pred;
    let err = (tte - actual).abs() / actual;
    // The played bucket's own forecast at the same moment (its level over its net drain of the
    // same minute): what any prediction can know. The actual emptying equals it only if the
    // writers kept their rate; on a busy machine they may not (the drain then speeds up or
    // slows down after the prediction).
    let level_at = |t: f64| {
        cw.samples
            .iter()
            .min_by(|a, b| (a.0 - t).abs().total_cmp(&(b.0 - t).abs()))
            .map(|s| s.1)
            .unwrap()
    };
    let (p0, p1) = (level_at(t_pred - 60.0), level_at(t_pred));
    let rate_before = (p0 - p1) / 60.0;
    let rate_after = p1 / actual;
    let forecast = p1 / rate_before;
    let ferr = (tte - forecast).abs() / forecast;
    let steady = ((rate_after - rate_before) / rate_before).abs() <= 0.10;
    eprintln!(
        "early warning: predicted empty in {tte:.1}s at +{:.0}s, the bucket's own forecast {forecast:.1}s (error {:.1} %), emptied {actual:.1}s later (error {:.1} %; load {}); worst estimate error {worst:.3} points; {} CloudWatch minutes published",
        t_pred - load_start,
        ferr * 100.0,
        err * 100.0,
        if steady { "steady" } else { "not steady: the machine was busy" },
        cw.published.len()
    );
    assert!(
        ferr <= 0.10,
        "predicted {tte:.1}s, the bucket's forecast {forecast:.1}s"
    );
    if steady {
        assert!(err <= 0.10, "predicted {tte:.1}s, actual {actual:.1}s");
    }
    assert!(worst <= 0.25, "worst tracking error {worst:.3} points");
    // Below fast_poll_below the agent polls every 5 s, not every 60 s.
    let polls = aws.metric_calls().len() - calls_before;
    let run = now() - load_start;
    assert!(
        polls as f64 >= run / 5.0 * 0.6,
        "{polls} polls in {run:.0}s"
    );
    rig.lift();
}
