//! The model loop is driven by the host sampler's published snapshot: no file is read, a reading
//! is fed once, at its own time, however late the tick looks at it.

use std::collections::BTreeMap;

use stallwatch_collector::proc::diskstats::DiskStat;
use stallwatch_collector::sys::block::Disk;

use super::*;
use crate::config::VolumeOverride;
use crate::ec2::Volume;
use crate::model::GP2_BUCKET_CREDITS;
use crate::snapshot::BalancePoint;

const DEVICE: &str = "loop7";
const VOLUME: &str = "vol-0model";

/// A state that knows one 100 GiB gp2 volume (baseline 300 IOPS) on [`DEVICE`], anchored at 50 %.
fn anchored_state(c: &CloudConfig) -> State {
    let mut s = State::default();
    let vol = Volume {
        volume_id: VOLUME.into(),
        volume_type: "gp2".into(),
        size_gib: 100,
        ..Volume::default()
    };
    s.on_describe(None, Ok(vec![vol]), c, unix_now());
    let plan = s.poll_plan(c);
    let point = BalancePoint {
        percent: 50.0,
        timestamp: unix_now() - 60.0,
    };
    s.on_poll(&plan, Ok(BTreeMap::from([(0, point)])), unix_now())
        .expect("anchored");
    s
}

fn config() -> CloudConfig {
    CloudConfig {
        model_interval: Duration::from_millis(20),
        nvme_stats: false,
        volumes: vec![VolumeOverride {
            device: DEVICE.into(),
            volume_id: VOLUME.into(),
        }],
        ..CloudConfig::default()
    }
}

/// A host snapshot whose diskstats reading completed at `at`: [`DEVICE`] with `ops` reads, and
/// a device the `[disks]` filter would hide with a lot of I/O that is none of the volume's.
fn reading(at: Instant, ops: u64) -> HostSnapshot {
    let d = |name: &str, ops: u64| Disk {
        stat: DiskStat {
            name: name.into(),
            reads_completed: ops,
            ..DiskStat::default()
        },
        partition: false,
    };
    HostSnapshot {
        all_disks: Arc::new(vec![d(DEVICE, ops), d("sda", ops * 7)]),
        disks_at: Some(at),
        ..HostSnapshot::default()
    }
}

fn credits(snap: &CloudSnapshot) -> f64 {
    let v = snap
        .volumes
        .iter()
        .find(|v| v.volume_id == VOLUME)
        .expect("the volume");
    v.estimate_percent.expect("anchored") / 100.0 * GP2_BUCKET_CREDITS
}

#[test]
fn a_published_reading_is_fed_once_at_its_own_time() {
    let c = config();
    let state = Mutex::new(anchored_state(&c));
    let host = ArcSwap::from_pointee(HostSnapshot::default());
    assert!(!feed_model(&state, &host), "no reading published yet");

    // Readings from 10, 9 and 6 seconds ago, looked at only now: the first gives the counters,
    // the second starts the bucket's clock, the third is 3 s later with 1,500 I/Os (900 earned).
    let now = Instant::now();
    let half = GP2_BUCKET_CREDITS / 2.0;
    for (ago, ops) in [(10, 0), (9, 100)] {
        host.store(Arc::new(reading(now - Duration::from_secs(ago), ops)));
        assert!(feed_model(&state, &host));
    }
    let c_now = |s: &Mutex<State>| credits(&lock(s).snapshot(&c, unix_now()));
    assert!((c_now(&state) - half).abs() < 0.01);
    host.store(Arc::new(reading(now - Duration::from_secs(6), 1_600)));
    assert!(feed_model(&state, &host));
    let got = c_now(&state);
    assert!(
        (got - (half - 600.0)).abs() < 0.01,
        "3 s of the reading's time, not the 9 s since: {}",
        got - half
    );
    // The host sampler has not published again: the same reading is not fed twice.
    assert!(!feed_model(&state, &host));
    assert!(!feed_model(&state, &host));
    assert!((c_now(&state) - got).abs() < 1e-9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_loop_follows_the_host_snapshot_and_publishes() {
    let c = config();
    let (stop_tx, stop) = watch::channel(false);
    let ctx = Ctx {
        cfg: Arc::new(ArcSwap::from_pointee(c.clone())),
        state: Arc::new(Mutex::new(anchored_state(&c))),
        out: Arc::new(ArcSwap::from_pointee(CloudSnapshot::default())),
        stop,
    };
    let host = Arc::new(ArcSwap::from_pointee(HostSnapshot::default()));
    // Readings in the past (an instant after now would be taken as now): the counters and the
    // clock start from the first two, fed before the loop runs, so that every reading the loop
    // sees moves the estimate.
    let t0 = Instant::now() - Duration::from_secs(30);
    for (secs, ops) in [(0, 0), (1, 0)] {
        host.store(Arc::new(reading(t0 + Duration::from_secs(secs), ops)));
        assert!(feed_model(&ctx.state, &host));
    }
    let task = tokio::spawn(model_loop(ctx.clone(), host.clone()));

    let half = GP2_BUCKET_CREDITS / 2.0;
    // (seconds after t0, reads so far, credits the loop must publish): 1,300 reads in 1 s
    // against 300 earned; idle 2 s; 700 reads in 1 s.
    let steps = [
        (2, 1_300, half - 1_000.0),
        (4, 1_300, half - 400.0),
        (5, 2_000, half - 800.0),
    ];
    for (secs, ops, want) in steps {
        host.store(Arc::new(reading(t0 + Duration::from_secs(secs), ops)));
        // The loop ticks every 20 ms; 10 s is only a bound for a wedged loop.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let snap = ctx.out.load_full();
            if snap.enabled && (credits(&snap) - want).abs() < 0.01 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "after the reading at +{secs}s the loop published {:?} %, want {} %",
                snap.volumes.first().and_then(|v| v.estimate_percent),
                want / GP2_BUCKET_CREDITS * 100.0
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let _ = stop_tx.send(true);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the loop stops when asked")
        .expect("no panic");
}

/// Opens the FIFO for writing without blocking when dropped: releases a pass stuck in its
/// `open`, so that a failing test does not leave the runtime waiting on a blocked thread.
struct Release(std::path::PathBuf);

impl Drop for Release {
    fn drop(&mut self) {
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_nvme_pass_is_waited_for_across_periods_and_its_result_kept() {
    use crate::devices::BlockDevice;
    use std::os::unix::ffi::OsStrExt;

    // An EBS NVMe device whose node is a FIFO: opening it blocks until a writer comes, as a
    // hung admin command blocks the real read.
    let dir = tempfile::tempdir().expect("tempdir");
    let node = dir.path().join("nvme9n1");
    let cpath = std::ffi::CString::new(node.as_os_str().as_bytes()).expect("no NUL");
    // SAFETY: a valid NUL-terminated path; mkfifo reads it and keeps no reference.
    assert_eq!(unsafe { libc::mkfifo(cpath.as_ptr(), 0o600) }, 0, "mkfifo");
    let release = Release(node.clone());
    let c = CloudConfig {
        model_interval: Duration::from_millis(50),
        dev_dir: dir.path().to_path_buf(),
        ..CloudConfig::default()
    };
    let (_stop_tx, stop) = watch::channel(false);
    let ctx = Ctx {
        cfg: Arc::new(ArcSwap::from_pointee(c.clone())),
        state: Arc::new(Mutex::new(State::default())),
        out: Arc::new(ArcSwap::from_pointee(CloudSnapshot::default())),
        stop,
    };
    let nvme = BlockDevice {
        name: "nvme9n1".into(),
        volume_id: Some("vol-0nvme".into()),
        ..BlockDevice::default()
    };
    ctx.lock()
        .on_describe(Some(vec![nvme]), Ok(vec![]), &c, unix_now());

    let mut running = None;
    for period in 0..3 {
        assert!(nvme_once(&ctx, &c, &mut running).await.is_none());
        assert!(running.is_some(), "period {period}: the pass is still out");
    }
    drop(release); // the writer comes: the pass's open returns
    let deadline = Instant::now() + Duration::from_secs(10);
    let pages = loop {
        if let Some(p) = nvme_once(&ctx, &c, &mut running).await {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "the released pass never returned"
        );
    };
    assert!(running.is_none());
    assert_eq!(pages.len(), 1);
    assert_eq!(pages[0].0, "nvme9n1");
    let err = pages[0].1.as_ref().expect_err("a FIFO is no NVMe device");
    assert!(err.to_string().contains("nvme9n1"), "{err}");
    // Off: no pass is started.
    let off = CloudConfig {
        nvme_stats: false,
        ..c
    };
    assert!(nvme_once(&ctx, &off, &mut running).await.is_none());
    assert!(running.is_none());
}
