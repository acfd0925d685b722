//! The cloud side's tasks: discovery once, then three loops sharing one state —
//! DescribeVolumes every few minutes, GetMetricData (BurstBalance) every `poll_interval` (every
//! `fast_poll_interval` while a balance is low), and a 1 s tick that feeds the local credit
//! model from `/proc/diskstats` and reads the EBS NVMe log pages. Every loop publishes a fresh
//! [`CloudSnapshot`]; blocking reads run on the blocking pool under a deadline, so nothing here
//! can hold up a scrape.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use aws_config::provider_config::ProviderConfig;
use aws_config::BehaviorVersion;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_cloudwatch::config::Region;
use stallwatch_collector::Roots;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::config::{backoff, CloudConfig, Enabled};
use crate::devices::{self, BlockDevice};
use crate::ec2::{self, Ec2Client, Volume};
use crate::model::{Bucket, VolumeType};
use crate::nvme;
use crate::snapshot::{
    Api, CloudSnapshot, Instance, InstanceBalance, NvmeCounters, Outcome, VolumeState,
};
use crate::{cloudwatch, imds};

/// Shared state of the loops; every lock is held only for bookkeeping, never across I/O.
#[derive(Default)]
struct State {
    instance: Option<Instance>,
    volumes: Vec<Volume>,
    disks: Vec<BlockDevice>,
    /// volume id → kernel device name.
    devices: BTreeMap<String, String>,
    buckets: HashMap<String, Bucket>,
    /// Newest CloudWatch point per volume.
    balances: BTreeMap<String, crate::snapshot::BalancePoint>,
    instance_balances: BTreeMap<InstanceBalance, crate::snapshot::BalancePoint>,
    /// Previous diskstats counters per device: (ops, bytes).
    prev_io: HashMap<String, (u64, u64)>,
    nvme: BTreeMap<String, nvme::Stats>,
    requests: BTreeMap<(Api, Outcome), u64>,
    metrics_requested: u64,
    last_success: BTreeMap<Api, f64>,
}

impl State {
    fn count(&mut self, api: Api, outcome: Outcome) {
        *self.requests.entry((api, outcome)).or_default() += 1;
        if outcome == Outcome::Success {
            self.last_success.insert(api, unix_now());
        }
    }

    fn snapshot(&self, cfg: &CloudConfig) -> CloudSnapshot {
        let now = unix_now();
        let staleness = cfg.staleness.as_secs_f64();
        let mut instance_iops = None::<f64>;
        let mut instance_tp = None::<f64>;
        for s in self.nvme.values() {
            instance_iops = Some(
                instance_iops
                    .unwrap_or(0.0)
                    .max(us(s.ec2_instance_exceeded_iops_us)),
            );
            instance_tp = Some(
                instance_tp
                    .unwrap_or(0.0)
                    .max(us(s.ec2_instance_exceeded_tp_us)),
            );
        }
        let volumes =
            self.volumes
                .iter()
                .map(|v| {
                    let device = self.devices.get(&v.volume_id).cloned();
                    let vt = VolumeType::parse(&v.volume_type);
                    // Before the first CloudWatch point the bucket's level is unknown: no estimate
                    // rather than a made-up 100 %.
                    let bucket = self
                        .buckets
                        .get(&v.volume_id)
                        .filter(|b| b.last_anchor().is_some());
                    VolumeState {
                        volume_id: v.volume_id.clone(),
                        device: device.clone(),
                        volume_type: v.volume_type.clone(),
                        availability_zone: v.availability_zone.clone(),
                        size_bytes: v.size_gib.saturating_mul(1 << 30),
                        provisioned_iops: v.iops,
                        throughput_mibps: v.throughput_mibps,
                        baseline_iops: vt.baseline_iops(v.size_gib, v.iops),
                        burst_balance: self
                            .balances
                            .get(&v.volume_id)
                            .copied()
                            .filter(|p| now - p.timestamp <= staleness),
                        estimate_percent: bucket.map(|b| b.percent()),
                        seconds_to_empty: bucket.map(|b| b.seconds_to_empty()),
                        nvme: device.as_ref().and_then(|d| self.nvme.get(d)).map(|s| {
                            NvmeCounters {
                                exceeded_iops_seconds: us(s.volume_exceeded_iops_us),
                                exceeded_throughput_seconds: us(s.volume_exceeded_tp_us),
                                queue_length: s.volume_queue_length as f64,
                                read_ops: s.total_read_ops,
                                write_ops: s.total_write_ops,
                                read_time_seconds: us(s.total_read_time_us),
                                write_time_seconds: us(s.total_write_time_us),
                                read_latency: bins(&s.read_io_latency_histogram),
                                write_latency: bins(&s.write_io_latency_histogram),
                            }
                        }),
                    }
                })
                .collect();
        CloudSnapshot {
            enabled: true,
            instance: self.instance.clone(),
            disks: self.disks.clone(),
            volumes,
            instance_balances: self
                .instance_balances
                .iter()
                .filter(|(_, p)| now - p.timestamp <= staleness)
                .map(|(k, p)| (*k, *p))
                .collect(),
            instance_exceeded_iops_seconds: instance_iops,
            instance_exceeded_throughput_seconds: instance_tp,
            requests: self
                .requests
                .iter()
                .map(|((a, o), n)| (*a, *o, *n))
                .collect(),
            metrics_requested: self.metrics_requested,
            last_success: self.last_success.iter().map(|(a, t)| (*a, *t)).collect(),
        }
    }

    /// Volume id → device: the config's overrides first, then NVMe serials, then Xen
    /// attachment names (`/dev/sdf` → `xvdf`) that exist in sysfs.
    fn map_devices(&mut self, overrides: &[crate::config::VolumeOverride]) {
        let mut m = BTreeMap::new();
        let attached: std::collections::HashSet<&str> =
            self.volumes.iter().map(|v| v.volume_id.as_str()).collect();
        for d in &self.disks {
            if let Some(id) = &d.volume_id {
                if attached.contains(id.as_str()) {
                    m.insert(id.clone(), d.name.clone());
                }
            }
        }
        for v in &self.volumes {
            if m.contains_key(&v.volume_id) {
                continue;
            }
            for a in &v.attachment_devices {
                if let Some(k) = ec2::kernel_name_of_attachment(a) {
                    if self.disks.iter().any(|d| d.name == k) {
                        m.insert(v.volume_id.clone(), k);
                        break;
                    }
                }
            }
        }
        for o in overrides {
            m.insert(o.volume_id.clone(), o.device.clone());
        }
        self.devices = m;
    }

    /// Buckets for the volumes that can burst; a volume whose type or size changed gets a new one.
    fn sync_buckets(&mut self) {
        let mut keep = HashMap::new();
        for v in &self.volumes {
            let vt = VolumeType::parse(&v.volume_type);
            if let Some(b) = self.buckets.remove(&v.volume_id) {
                if *b.volume_type() == vt && b.size_gib() == v.size_gib {
                    keep.insert(v.volume_id.clone(), b);
                    continue;
                }
            }
            if let Some(b) = Bucket::new(&vt, v.size_gib) {
                keep.insert(v.volume_id.clone(), b);
            }
        }
        self.buckets = keep;
    }
}

fn bins(h: &nvme::Histogram) -> Vec<(f64, u64)> {
    h.bins
        .iter()
        .map(|b| (us(b.upper_us), u64::from(b.count)))
        .collect()
}

fn us(v: u64) -> f64 {
    v as f64 / 1e6
}

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Starts the cloud side on the current tokio runtime. Returns at once; the tasks end when
/// `stop` turns true.
pub fn spawn(
    cfg: Arc<ArcSwap<CloudConfig>>,
    roots: Arc<Roots>,
    out: Arc<ArcSwap<CloudSnapshot>>,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(cfg, roots, out, stop))
}

async fn run(
    cfg: Arc<ArcSwap<CloudConfig>>,
    roots: Arc<Roots>,
    out: Arc<ArcSwap<CloudSnapshot>>,
    stop: watch::Receiver<bool>,
) {
    let c = cfg.load_full();
    if c.enabled == Enabled::Off {
        info!("Cloud features off ([cloud] enabled = false).");
        return disks_only(cfg, roots, out, stop).await;
    }
    let http = crate::http::sdk_client();
    let provider = ProviderConfig::default().with_http_client(http.clone());
    let imds_client = match imds::client(&provider, c.imds_endpoint.as_deref(), c.imds_timeout) {
        Ok(i) => i,
        Err(e) => {
            warn!(error = %e, "Cloud features off: bad [cloud] imds_endpoint.");
            return;
        }
    };
    let state = Arc::new(Mutex::new(State::default()));

    // Discovery: the configured instance, or IMDS.
    let instance = match (&c.instance_id, &c.region) {
        (Some(id), Some(region)) => Instance {
            instance_id: id.clone(),
            region: region.clone(),
            availability_zone: c.availability_zone.clone().unwrap_or_default(),
            instance_type: String::new(),
        },
        _ => {
            let mut failures = 0u32;
            loop {
                let t = Instant::now();
                match imds::discover(&imds_client).await {
                    Ok(mut i) => {
                        lock(&state).count(Api::Imds, Outcome::Success);
                        if let Some(r) = &c.region {
                            i.region = r.clone();
                        }
                        break i;
                    }
                    Err(e) => {
                        lock(&state).count(Api::Imds, Outcome::Error);
                        if c.enabled == Enabled::Auto {
                            info!(
                                error = %e,
                                waited_ms = t.elapsed().as_millis() as u64,
                                "Not on EC2 (no IMDS answer): cloud features off. Set [cloud] enabled = true to keep trying."
                            );
                            return disks_only(cfg, roots, out, stop).await;
                        }
                        failures += 1;
                        let d = backoff(c.retry_min, c.describe_interval, failures);
                        warn!(error = %e, retry_in = ?d, "IMDS discovery failed; [cloud] enabled = true, retrying.");
                        if sleep_or_stop(d, &stop).await {
                            return;
                        }
                    }
                }
            }
        }
    };
    info!(
        instance_id = %instance.instance_id,
        region = %instance.region,
        availability_zone = %instance.availability_zone,
        instance_type = %instance.instance_type,
        "Cloud features on."
    );
    let region = instance.region.clone();
    lock(&state).instance = Some(instance.clone());

    let creds_chain = aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
        .imds_client(imds_client.clone())
        .configure(
            provider
                .clone()
                .with_region(Some(Region::new(region.clone()))),
        )
        .build()
        .await;
    let creds = SharedCredentialsProvider::new(creds_chain);
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .region(Region::new(region.clone()))
        .credentials_provider(creds.clone())
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_timeout(c.request_timeout * 3)
                .operation_attempt_timeout(c.request_timeout)
                .build(),
        )
        .load()
        .await;
    let mut cwb = aws_sdk_cloudwatch::config::Builder::from(&sdk);
    if let Some(e) = &c.cloudwatch_endpoint {
        cwb = cwb.endpoint_url(e);
    }
    let cw = aws_sdk_cloudwatch::Client::from_conf(cwb.build());
    let ec2c = match Ec2Client::new(&region, c.ec2_endpoint.as_deref(), c.request_timeout) {
        Ok(e) => e,
        Err(e) => {
            warn!(error = %e, "Cloud features off: cannot build the EC2 client.");
            return;
        }
    };
    out.store(Arc::new(lock(&state).snapshot(&c)));

    let (volumes_tx, volumes_rx) = watch::channel(0u64);
    let t1 = tokio::spawn(describe_loop(
        cfg.clone(),
        state.clone(),
        out.clone(),
        ec2c,
        creds,
        instance.instance_id.clone(),
        roots.clone(),
        volumes_tx,
        stop.clone(),
    ));
    let t2 = tokio::spawn(poll_loop(
        cfg.clone(),
        state.clone(),
        out.clone(),
        cw,
        volumes_rx,
        stop.clone(),
    ));
    let t3 = tokio::spawn(tick_loop(cfg, state, out, roots, stop));
    let _ = tokio::join!(t1, t2, t3);
}

/// Cloud features off: still describe the block devices (model, serial, EBS volume id from the
/// NVMe serial, io_timeout) every `describe_interval`; they cost one sysfs scan.
async fn disks_only(
    cfg: Arc<ArcSwap<CloudConfig>>,
    roots: Arc<Roots>,
    out: Arc<ArcSwap<CloudSnapshot>>,
    stop: watch::Receiver<bool>,
) {
    loop {
        let c = cfg.load_full();
        if let Some(d) = scan_disks(roots.clone(), c.request_timeout).await {
            out.store(Arc::new(CloudSnapshot {
                disks: d,
                ..CloudSnapshot::default()
            }));
        }
        if sleep_or_stop(c.describe_interval, &stop).await {
            return;
        }
    }
}

fn lock(s: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sleeps `d`; true when asked to stop meanwhile.
async fn sleep_or_stop(d: Duration, stop: &watch::Receiver<bool>) -> bool {
    let mut stop = stop.clone();
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        r = stop.changed() => r.is_err() || *stop.borrow(),
    }
}

#[allow(clippy::too_many_arguments)]
async fn describe_loop(
    cfg: Arc<ArcSwap<CloudConfig>>,
    state: Arc<Mutex<State>>,
    out: Arc<ArcSwap<CloudSnapshot>>,
    ec2c: Ec2Client,
    creds: SharedCredentialsProvider,
    instance_id: String,
    roots: Arc<Roots>,
    volumes_tx: watch::Sender<u64>,
    stop: watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    let mut generation = 0u64;
    loop {
        let c = cfg.load_full();
        let disks = scan_disks(roots.clone(), c.request_timeout).await;
        let result = match creds.provide_credentials().await {
            Ok(k) => ec2c
                .describe_attached_volumes(&k, &instance_id)
                .await
                .map_err(|e| (e.is_throttling(), e.to_string())),
            Err(e) => Err((
                false,
                format!("no AWS credentials: {}", crate::http::error_chain(&e)),
            )),
        };
        let delay = {
            let mut s = lock(&state);
            if let Some(d) = disks {
                s.disks = d;
            }
            match result {
                Ok(vols) => {
                    s.count(Api::DescribeVolumes, Outcome::Success);
                    if failures > 0 || s.volumes != vols {
                        info!(volumes = vols.len(), "Attached EBS volumes described.");
                    }
                    failures = 0;
                    s.volumes = vols;
                    s.sync_buckets();
                    s.map_devices(&c.volumes);
                    generation += 1;
                    let _ = volumes_tx.send(generation);
                    c.describe_interval
                }
                Err((throttled, msg)) => {
                    s.count(
                        Api::DescribeVolumes,
                        if throttled {
                            Outcome::Throttled
                        } else {
                            Outcome::Error
                        },
                    );
                    failures += 1;
                    let d = backoff(c.retry_min, c.describe_interval, failures);
                    warn!(error = %msg, retry_in = ?d, "DescribeVolumes failed.");
                    s.map_devices(&c.volumes);
                    d
                }
            }
        };
        out.store(Arc::new(lock(&state).snapshot(&c)));
        if sleep_or_stop(delay, &stop).await {
            return;
        }
    }
}

async fn scan_disks(roots: Arc<Roots>, timeout: Duration) -> Option<Vec<BlockDevice>> {
    let sysfs = roots.sysfs.clone();
    match tokio::time::timeout(
        timeout,
        tokio::task::spawn_blocking(move || devices::scan(&sysfs)),
    )
    .await
    {
        Ok(Ok(Ok(d))) => Some(d),
        Ok(Ok(Err(e))) => {
            debug!(error = %e, "Cannot scan block devices.");
            None
        }
        _ => None,
    }
}

async fn poll_loop(
    cfg: Arc<ArcSwap<CloudConfig>>,
    state: Arc<Mutex<State>>,
    out: Arc<ArcSwap<CloudSnapshot>>,
    cw: aws_sdk_cloudwatch::Client,
    mut volumes_rx: watch::Receiver<u64>,
    stop: watch::Receiver<bool>,
) {
    // Nothing to ask before the first DescribeVolumes.
    if volumes_rx.changed().await.is_err() {
        return;
    }
    let mut failures = 0u32;
    loop {
        let c = cfg.load_full();
        // What to ask: BurstBalance of the volumes that burst, then the instance's balances.
        let (ids, instance, instance_id): (Vec<String>, Vec<InstanceBalance>, String) = {
            let s = lock(&state);
            let ids = s
                .volumes
                .iter()
                .filter(|v| VolumeType::parse(&v.volume_type).has_burst_balance(v.size_gib))
                .map(|v| v.volume_id.clone())
                .collect();
            let ty = s.instance.as_ref().map_or("", |i| i.instance_type.as_str());
            let inst = if c.instance_balances {
                InstanceBalance::ALL
                    .into_iter()
                    .filter(|b| b.applies_to(ty))
                    .collect()
            } else {
                Vec::new()
            };
            let id = s
                .instance
                .as_ref()
                .map(|i| i.instance_id.clone())
                .unwrap_or_default();
            (ids, inst, id)
        };
        let mut series: Vec<cloudwatch::Series> = ids
            .iter()
            .map(|v| cloudwatch::Series::burst_balance(v))
            .collect();
        series.extend(
            instance
                .iter()
                .map(|b| cloudwatch::Series::instance(b.cloudwatch_metric(), &instance_id)),
        );
        let mut delay = c.poll_interval;
        if !series.is_empty() {
            let st = state.clone();
            let r = cloudwatch::fetch_newest(&cw, &series, SystemTime::now(), c.lookback, |n| {
                lock(&st).metrics_requested += n as u64;
            })
            .await
            .map(|points| {
                let mut vols = BTreeMap::new();
                let mut inst = BTreeMap::new();
                for (i, p) in points {
                    match ids.get(i) {
                        Some(v) => {
                            vols.insert(v.clone(), p);
                        }
                        None => {
                            if let Some(b) = instance.get(i - ids.len()) {
                                inst.insert(*b, p);
                            }
                        }
                    }
                }
                (vols, inst)
            });
            let mut s = lock(&state);
            match r {
                Ok((points, inst)) => {
                    s.count(Api::GetMetricData, Outcome::Success);
                    failures = 0;
                    s.instance_balances.extend(inst);
                    for (vol, p) in points {
                        let newer = s
                            .balances
                            .get(&vol)
                            .is_none_or(|q| p.timestamp > q.timestamp);
                        if newer {
                            if let Some(b) = s.buckets.get_mut(&vol) {
                                // A BurstBalance point is the average over its minute.
                                let r = b.anchor_period_average(p.percent, p.timestamp, 60.0);
                                debug!(volume_id = %vol, percent = p.percent, timestamp = p.timestamp, result = ?r, "Anchored the credit model.");
                            }
                            s.balances.insert(vol, p);
                        }
                    }
                }
                Err(e) => {
                    s.count(
                        Api::GetMetricData,
                        if e.throttled {
                            Outcome::Throttled
                        } else {
                            Outcome::Error
                        },
                    );
                    failures += 1;
                    delay = backoff(c.retry_min, c.poll_interval, failures);
                    warn!(error = %e, retry_in = ?delay, "GetMetricData failed.");
                }
            }
            if failures == 0 && low_balance(&s, &c) {
                delay = delay.min(c.fast_poll_interval);
            }
        }
        out.store(Arc::new(lock(&state).snapshot(&c)));
        let mut stop2 = stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            // New or changed volumes: ask at once.
            r = volumes_rx.changed() => if r.is_err() { return },
            _ = stop2.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
    }
}

/// Any bursting volume whose level (local estimate, else CloudWatch) is below the threshold.
fn low_balance(s: &State, c: &CloudConfig) -> bool {
    s.volumes.iter().any(|v| {
        let est = s
            .buckets
            .get(&v.volume_id)
            .filter(|b| b.last_anchor().is_some())
            .map(|b| b.percent());
        let level = est.or_else(|| s.balances.get(&v.volume_id).map(|p| p.percent));
        level.is_some_and(|l| l < c.fast_poll_below_percent)
    }) || [InstanceBalance::EbsIo, InstanceBalance::EbsByte]
        .iter()
        .any(|b| {
            s.instance_balances
                .get(b)
                .is_some_and(|p| p.percent < c.fast_poll_below_percent)
        })
}

async fn tick_loop(
    cfg: Arc<ArcSwap<CloudConfig>>,
    state: Arc<Mutex<State>>,
    out: Arc<ArcSwap<CloudSnapshot>>,
    roots: Arc<Roots>,
    stop: watch::Receiver<bool>,
) {
    let nvme_busy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut pending_read: Option<
        tokio::task::JoinHandle<
            Result<
                Option<Vec<stallwatch_collector::proc::diskstats::DiskStat>>,
                stallwatch_collector::Error,
            >,
        >,
    > = None;
    loop {
        let c = cfg.load_full();
        let started = Instant::now();
        // Disk counters (never blocks on a disk, but keep the deadline discipline anyway): a
        // read that misses its deadline is waited for on the next ticks, never started twice,
        // so a wedged procfs costs one blocking thread, not one a second.
        let mut read = match pending_read.take() {
            Some(h) => h,
            None => {
                let r = roots.clone();
                tokio::task::spawn_blocking(move || stallwatch_collector::proc::diskstats::read(&r))
            }
        };
        let disks =
            match tokio::time::timeout(c.model_interval.max(Duration::from_secs(1)), &mut read)
                .await
            {
                Ok(r) => r.ok(),
                Err(_) => {
                    pending_read = Some(read);
                    None
                }
            };
        let now = unix_now();
        if let Some(Ok(Some(disks))) = disks {
            let mut s = lock(&state);
            let devs: HashMap<String, String> = s
                .devices
                .iter()
                .map(|(v, d)| (d.clone(), v.clone()))
                .collect();
            for d in &disks {
                let Some(vol) = devs.get(&d.name) else {
                    continue;
                };
                let ops = d.reads_completed + d.writes_completed;
                let bytes = (d.sectors_read + d.sectors_written) * 512;
                let prev = s.prev_io.insert(d.name.clone(), (ops, bytes));
                let Some((pops, pbytes)) = prev else { continue };
                if let Some(b) = s.buckets.get_mut(vol) {
                    b.advance(now, ops.saturating_sub(pops), bytes.saturating_sub(pbytes));
                }
            }
        }
        // EBS NVMe log pages: one blocking read pass at a time; a hung admin command leaves
        // the last values in place and the next ticks skip until it returns.
        if c.nvme_stats && !nvme_busy.load(std::sync::atomic::Ordering::Acquire) {
            let targets: Vec<(String, std::path::PathBuf)> = {
                let s = lock(&state);
                s.disks
                    .iter()
                    .filter(|d| d.volume_id.is_some() && d.name.starts_with("nvme"))
                    .map(|d| (d.name.clone(), c.dev_dir.join(&d.name)))
                    .collect()
            };
            if !targets.is_empty() {
                nvme_busy.store(true, std::sync::atomic::Ordering::Release);
                let busy = nvme_busy.clone();
                let st = state.clone();
                tokio::task::spawn_blocking(move || {
                    for (name, path) in targets {
                        match nvme::read_log_page(&path) {
                            Ok(stats) => {
                                lock(&st).nvme.insert(name, stats);
                            }
                            Err(e) => {
                                debug!(device = %name, error = %e, "Cannot read the EBS NVMe log page.")
                            }
                        }
                    }
                    busy.store(false, std::sync::atomic::Ordering::Release);
                });
            }
        }
        out.store(Arc::new(lock(&state).snapshot(&c)));
        let d = c.model_interval.saturating_sub(started.elapsed());
        if sleep_or_stop(d, &stop).await {
            return;
        }
    }
}
