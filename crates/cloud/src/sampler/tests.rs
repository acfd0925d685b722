//! The cloud sampler on the real driver, with the real readers: the model follows each host
//! publish at once (woken, not on its own timer) and at the reading's own time; a hung NVMe
//! pass is reported stuck while the other sources go on, and its late answer is applied; a stop
//! drops a call in flight. No AWS here (the e2e tests talk to moto): calls that need it fail
//! against closed ports, which is itself checked.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use stallwatch_collector::proc::diskstats::DiskStat;
use stallwatch_collector::sys::block::Disk;

use super::*;
use crate::calls::tests::runtime;
use crate::config::VolumeOverride;
use crate::ec2::Volume;
use crate::model::GP2_BUCKET_CREDITS;
use crate::snapshot::BalancePoint;
use stallwatch_collector::ErrorKind;

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
    s.on_poll(&plan, Ok(BTreeMap::from([(0, vec![point])])), unix_now())
        .expect("anchored");
    s
}

/// Cloud features off (no AWS), [`DEVICE`] mapped to [`VOLUME`].
fn model_config(model_interval: Duration) -> CloudConfig {
    CloudConfig {
        enabled: Enabled::Off,
        model_interval,
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

/// A sampler of `c` publishing into `out`, with no host readings and no hook.
fn wiring<'a>(
    c: CloudConfig,
    roots: &'a Roots,
    rt: &tokio::runtime::Runtime,
    out: &Arc<ArcSwap<CloudSnapshot>>,
) -> Wiring<'a> {
    Wiring {
        config: Arc::new(ArcSwap::from_pointee(c)),
        roots,
        host: Arc::new(ArcSwap::from_pointee(HostSnapshot::default())),
        out: Arc::clone(out),
        on_publish: None,
        runtime: rt.handle().clone(),
    }
}

fn credits(snap: &CloudSnapshot) -> Option<f64> {
    let v = snap.volumes.iter().find(|v| v.volume_id == VOLUME)?;
    Some(v.estimate_percent? / 100.0 * GP2_BUCKET_CREDITS)
}

fn source<'a>(snap: &'a CloudSnapshot, name: &str) -> Option<&'a SourceStatus> {
    snap.sources.iter().find(|s| s.name == name)
}

/// Polls `f` every 5 ms; `bound` only keeps a wedged sampler from hanging the test.
fn wait_for<T>(bound: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t0.elapsed() < bound, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_published_reading_is_fed_once_at_its_own_time() {
    let rt = runtime();
    let c = model_config(Duration::from_secs(1));
    let host = Arc::new(ArcSwap::from_pointee(HostSnapshot::default()));
    let (_abandon, stop) = watch::channel(false);
    let shared = Arc::new(Shared {
        start: c.clone(),
        config: Arc::new(ArcSwap::from_pointee(c.clone())),
        sysfs: PathBuf::from("/nonexistent"),
        runtime: rt.handle().clone(),
        stop,
        mode: ArcSwap::from_pointee(Mode::DisksOnly),
        plan: ArcSwap::from_pointee(PollPlan::default()),
        nvme_targets: ArcSwap::from_pointee(Vec::new()),
        instance_type: ArcSwap::from_pointee(None),
        follow: AtomicBool::new(false),
        saver: None,
    });
    let mut cloud = Cloud::new(Arc::clone(&shared), Arc::clone(&host), anchored_state(&c));
    let mut publish = || driver::Sampler::publish(&mut cloud, &[], Instant::now(), &c);
    let half = GP2_BUCKET_CREDITS / 2.0;
    assert_eq!(credits(&publish()), Some(half), "no reading published yet");
    assert!(
        shared.follow.load(Ordering::Relaxed),
        "a mapped bucket to follow"
    );

    // Readings from 10, 9 and 6 seconds ago, looked at only now: the first gives the counters,
    // the second starts the bucket's clock, the third is 3 s later with 1,500 I/Os (900 earned).
    let now = Instant::now();
    for (ago, ops) in [(10, 0), (9, 100)] {
        host.store(Arc::new(reading(now - Duration::from_secs(ago), ops)));
        publish();
    }
    host.store(Arc::new(reading(now - Duration::from_secs(6), 1_600)));
    let got = credits(&publish()).expect("estimate");
    assert!(
        (got - (half - 600.0)).abs() < 0.01,
        "3 s of the reading's time, not the 9 s since: {}",
        got - half
    );
    // The host sampler has not published again: the same reading is not fed twice.
    for _ in 0..3 {
        let again = credits(&publish()).expect("estimate");
        assert!((again - got).abs() < 1e-9);
    }
}

#[test]
fn the_model_follows_each_host_publish_at_once_not_on_its_own_timer() {
    let rt = runtime();
    // A minute between the sampler's own ticks: whatever it publishes within the test's bounds,
    // it published because the host sampler woke it.
    let c = model_config(Duration::from_secs(60));
    let host = Arc::new(ArcSwap::from_pointee(HostSnapshot::default()));
    let out = Arc::new(ArcSwap::from_pointee(CloudSnapshot::default()));
    let joins = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = Arc::clone(&joins);
    let hook: Hook = Arc::new(move || {
        counted.fetch_add(1, Ordering::SeqCst);
    });
    // Readings in the past (an instant after now would be taken as now). The counters and the
    // bucket's clock start from the first two, fed before the sampler runs, so that every
    // reading it sees moves the estimate.
    let t0 = Instant::now() - Duration::from_secs(30);
    host.store(Arc::new(reading(t0 + Duration::from_secs(1), 0)));
    let state_cfg = c.clone();
    let initial = move || {
        let mut s = anchored_state(&state_cfg);
        for (secs, ops) in [(0, 0), (1, 0)] {
            let at = t0 + Duration::from_secs(secs);
            let at_unix = state::unix_time_of(at, Instant::now(), unix_now());
            assert!(s
                .on_disk_counters(&reading(at, ops).all_disks, at, at_unix)
                .is_some());
        }
        s
    };
    let roots = Roots::default();
    let w = Wiring {
        host: Arc::clone(&host),
        on_publish: Some(hook),
        ..wiring(c, &roots, &rt, &out)
    };
    let sampler = CloudSampler::spawn_with(w, initial).expect("spawn");
    let follow = sampler.follower();
    let half = GP2_BUCKET_CREDITS / 2.0;
    wait_for(Duration::from_secs(10), "the first publish", || {
        (joins.load(Ordering::SeqCst) >= 1).then_some(())
    });
    let snap = out.load_full();
    assert!(!snap.enabled);
    let names: Vec<&str> = snap.sources.iter().map(|s| &*s.name).collect();
    assert_eq!(
        names,
        ["cloud_describe"],
        "off: the sysfs scan is the one source on"
    );

    assert_eq!(credits(&snap), Some(half));
    // Each reading is fed by the wake-up that follows the host sampler's publish: (seconds
    // after t0, reads so far, credits): 1,300 reads in 1 s against 300 earned; idle 2 s; 700
    // reads in 1 s.
    let steps = [
        (2, 1_300, half - 1_000.0),
        (4, 1_300, half - 400.0),
        (5, 2_000, half - 800.0),
    ];
    for (secs, ops, want) in steps {
        host.store(Arc::new(reading(t0 + Duration::from_secs(secs), ops)));
        follow();
        wait_for(Duration::from_secs(10), "the model to follow", || {
            credits(&out.load()).filter(|c| (c - want).abs() < 0.01)
        });
    }
    sampler.stop();
    // Stopped: a wake-up is harmless.
    follow();
}

/// Opens the FIFO for writing without blocking when dropped: releases a pass stuck in its
/// `open`, so that a failing test does not leave a thread blocked.
struct Release(PathBuf);

impl Drop for Release {
    fn drop(&mut self) {
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.0);
    }
}

/// A port nothing listens on.
fn closed_port() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("ephemeral port")
        .port();
    format!("http://127.0.0.1:{port}")
}

#[test]
fn a_hung_nvme_pass_is_stuck_alone_and_its_late_answer_is_applied() {
    // A sysfs with one EBS NVMe disk, and its device node a FIFO: opening it blocks until a
    // writer comes, as a hung admin command blocks the real read.
    let sys = tempfile::tempdir().expect("tempdir");
    let d = sys.path().join("block/nvme9n1/device");
    std::fs::create_dir_all(&d).expect("mkdir");
    std::fs::write(d.join("model"), "Amazon Elastic Block Store\n").expect("model");
    std::fs::write(d.join("serial"), "vol0123456789abcdef0\n").expect("serial");
    let dev = tempfile::tempdir().expect("tempdir");
    let node = dev.path().join("nvme9n1");
    let cpath = std::ffi::CString::new(node.as_os_str().as_bytes()).expect("no NUL");
    // SAFETY: a valid NUL-terminated path; mkfifo reads it and keeps no reference.
    assert_eq!(unsafe { libc::mkfifo(cpath.as_ptr(), 0o600) }, 0, "mkfifo");
    let release = Release(node.clone());

    // On, with the instance configured (no IMDS call): every AWS endpoint is a closed port, so
    // each DescribeVolumes fails and is retried after `retry_min`.
    let nowhere = closed_port();
    let c = CloudConfig {
        enabled: Enabled::On,
        instance_id: Some("i-0test".into()),
        region: Some("us-east-1".into()),
        imds_endpoint: Some(nowhere.clone()),
        ec2_endpoint: Some(nowhere.clone()),
        cloudwatch_endpoint: Some(nowhere),
        request_timeout: Duration::from_secs(2),
        retry_min: Duration::from_millis(100),
        describe_interval: Duration::from_millis(200),
        model_interval: Duration::from_millis(50),
        dev_dir: dev.path().to_path_buf(),
        state_file: None,
        ..CloudConfig::default()
    };
    let rt = runtime();
    let out = Arc::new(ArcSwap::from_pointee(CloudSnapshot::default()));
    let roots = Roots {
        sysfs: sys.path().to_path_buf(),
        ..Roots::default()
    };
    let sampler = CloudSampler::spawn(wiring(c, &roots, &rt, &out)).expect("spawn");
    let stuck = wait_for(Duration::from_secs(20), "the NVMe pass stuck", || {
        let snap = out.load_full();
        let s = source(&snap, "cloud_nvme")?;
        s.stuck(Instant::now()).then(|| snap.clone())
    });
    assert!(stuck.enabled, "the configured instance");
    assert_eq!(stuck.disks.len(), 1);
    assert_eq!(
        stuck.disks[0].volume_id.as_deref(),
        Some("vol-0123456789abcdef0")
    );
    let describe = source(&stuck, "cloud_describe")
        .expect("describe is on")
        .clone();
    assert!(describe.reads >= 1);
    assert!(
        describe.errors.total() >= 1,
        "the failed DescribeVolumes calls are counted: {describe:?}"
    );
    assert_eq!(
        describe.last_success, None,
        "a failed call is no good read: the source ages"
    );
    // The other sources go on while the pass hangs.
    wait_for(Duration::from_secs(20), "more describes", || {
        let snap = out.load();
        let s = source(&snap, "cloud_describe")?;
        (s.reads >= describe.reads + 2).then_some(())
    });
    assert!(
        !stuck.requests.is_empty(),
        "the describes are counted by outcome too"
    );
    assert_eq!(source(&out.load(), "cloud_nvme").map(|s| s.reads), Some(0));

    drop(release); // the writer comes: the pass's open returns
    let nvme = wait_for(Duration::from_secs(20), "the late answer", || {
        let snap = out.load();
        let s = source(&snap, "cloud_nvme")?;
        (s.reads >= 1).then(|| s.clone())
    });
    assert!(!nvme.stuck(Instant::now()));
    assert!(
        nvme.errors.get(ErrorKind::Io) >= 1,
        "a FIFO is no NVMe device: an error of the pass, counted: {nvme:?}"
    );
    sampler.stop();
}

#[test]
fn a_stop_drops_the_call_in_flight() {
    // An IMDS that accepts and never answers: discovery waits on its read timeout (30 s, and
    // a minute and a half for the whole discovery) unless the stop drops it.
    let imds = TcpListener::bind("127.0.0.1:0").expect("bind");
    let c = CloudConfig {
        enabled: Enabled::On,
        imds_endpoint: Some(format!("http://{}", imds.local_addr().expect("addr"))),
        imds_timeout: Duration::from_secs(30),
        state_file: None,
        ..CloudConfig::default()
    };
    let rt = runtime();
    let out = Arc::new(ArcSwap::from_pointee(CloudSnapshot::default()));
    let roots = Roots::default();
    let sampler = CloudSampler::spawn(wiring(c, &roots, &rt, &out)).expect("spawn");
    let (mut conn, _) = imds.accept().expect("the discovery connects");
    wait_for(Duration::from_secs(10), "discovery in flight", || {
        let snap = out.load();
        source(&snap, "cloud_imds")?.in_flight_since.map(|_| ())
    });
    sampler.stop();
    // The dropped call closes its connection: the server reads the request, then EOF, long
    // before any of the call's own timeouts.
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) => panic!("the connection stayed open after the stop: {e}"),
        }
    }
}
