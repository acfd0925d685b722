//! The cloud side's tasks: discovery once, then four loops around one [`State`] —
//! DescribeVolumes (with a sysfs scan) every `describe_interval`; GetMetricData (BurstBalance)
//! every `poll_interval` (every `fast_poll_interval` while a balance is low); every
//! `model_interval`, the host sampler's newest disk counters into the local credit model; and
//! as often, the EBS NVMe log pages.
//!
//! Each loop makes one bounded call per period, hands its outcome to the state (which decides
//! when to call again) and publishes a fresh [`CloudSnapshot`]. Blocking reads run on the
//! blocking pool under a deadline and the state's lock is never held across I/O, so nothing here
//! can hold up a scrape. The credit model reads no file: the host sampler already reads
//! `/proc/diskstats` every second, and its unfiltered reading is the model's input.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use aws_config::provider_config::ProviderConfig;
use aws_config::BehaviorVersion;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_cloudwatch::config::Region;
use stallwatch_collector::sample::HostSnapshot;
use stallwatch_collector::Roots;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::config::{backoff, CloudConfig, Enabled};
use crate::devices::{self, BlockDevice};
use crate::ec2::Ec2Client;
use crate::snapshot::{Api, CloudSnapshot, Instance, Outcome};
use crate::state::{self, Described, Failure, State};
use crate::{cloudwatch, http, imds, nvme};

/// Starts the cloud side on the current tokio runtime. Returns at once; the tasks end when
/// `stop` turns true. `roots` is for the sysfs device scan; `host` is the host sampler's
/// published snapshot, whose unfiltered disk counters feed the credit model.
pub fn spawn(
    cfg: Arc<ArcSwap<CloudConfig>>,
    roots: Arc<Roots>,
    host: Arc<ArcSwap<HostSnapshot>>,
    out: Arc<ArcSwap<CloudSnapshot>>,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let ctx = Ctx {
        cfg,
        state: Arc::default(),
        out,
        stop,
    };
    tokio::spawn(run(ctx, roots, host))
}

/// What every loop shares.
#[derive(Clone)]
struct Ctx {
    cfg: Arc<ArcSwap<CloudConfig>>,
    state: Arc<Mutex<State>>,
    out: Arc<ArcSwap<CloudSnapshot>>,
    stop: watch::Receiver<bool>,
}

impl Ctx {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn publish(&self, c: &CloudConfig) {
        let snap = self.lock().snapshot(c, unix_now());
        self.out.store(Arc::new(snap));
    }

    fn count(&self, api: Api, outcome: Outcome) {
        self.lock().count(api, outcome, unix_now());
    }

    /// Sleeps `d`; true when asked to stop meanwhile.
    async fn sleep_or_stop(&self, d: Duration) -> bool {
        let mut stop = self.stop.clone();
        if *stop.borrow() {
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => false,
            r = stop.changed() => r.is_err() || *stop.borrow(),
        }
    }
}

fn lock(s: &Mutex<State>) -> MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

async fn run(ctx: Ctx, roots: Arc<Roots>, host: Arc<ArcSwap<HostSnapshot>>) {
    let c = ctx.cfg.load_full();
    if c.enabled == Enabled::Off {
        info!("Cloud features off ([cloud] enabled = false).");
        return disks_only(ctx, roots).await;
    }
    let http = http::sdk_client();
    let provider = ProviderConfig::default().with_http_client(http.clone());
    let imds_client = match imds::client(&provider, c.imds_endpoint.as_deref(), c.imds_timeout) {
        Ok(i) => i,
        Err(e) => {
            warn!(error = %e, "Cloud features off: bad [cloud] imds_endpoint.");
            return;
        }
    };
    let instance = match discover(&ctx, &c, &imds_client).await {
        Discovery::Found(i) => i,
        Discovery::NotOnEc2 => return disks_only(ctx, roots).await,
        Discovery::Stopped => return,
    };
    info!(
        instance_id = %instance.instance_id,
        region = %instance.region,
        availability_zone = %instance.availability_zone,
        instance_type = %instance.instance_type,
        "Cloud features on."
    );
    let region = Region::new(instance.region.clone());
    ctx.lock().set_instance(instance.clone());

    let creds_chain = aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
        .imds_client(imds_client)
        .configure(provider.with_region(Some(region.clone())))
        .build()
        .await;
    let creds = SharedCredentialsProvider::new(creds_chain);
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .region(region)
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
    let ec2c = match Ec2Client::new(
        &instance.region,
        c.ec2_endpoint.as_deref(),
        c.request_timeout,
    ) {
        Ok(e) => e,
        Err(e) => {
            warn!(error = %e, "Cloud features off: cannot build the EC2 client.");
            return;
        }
    };
    ctx.publish(&c);

    let (volumes_tx, volumes_rx) = watch::channel(0u64);
    let describe = Describe {
        ec2: ec2c,
        creds,
        instance_id: instance.instance_id,
        roots,
    };
    let t1 = tokio::spawn(describe_loop(ctx.clone(), describe, volumes_tx));
    let t2 = tokio::spawn(poll_loop(ctx.clone(), cw, volumes_rx));
    let t3 = tokio::spawn(model_loop(ctx.clone(), host));
    let t4 = tokio::spawn(nvme_loop(ctx));
    let _ = tokio::join!(t1, t2, t3, t4);
}

enum Discovery {
    Found(Instance),
    /// No IMDS answer with `enabled = "auto"`: describe the disks only.
    NotOnEc2,
    /// Asked to stop while `enabled = true` kept retrying.
    Stopped,
}

/// The configured instance, or IMDS discovery (retried with backoff when `enabled = true`).
async fn discover(ctx: &Ctx, c: &CloudConfig, imds_client: &aws_config::imds::Client) -> Discovery {
    if let (Some(id), Some(region)) = (&c.instance_id, &c.region) {
        return Discovery::Found(Instance {
            instance_id: id.clone(),
            region: region.clone(),
            availability_zone: c.availability_zone.clone().unwrap_or_default(),
            instance_type: String::new(),
        });
    }
    let mut failures = 0u32;
    loop {
        let t = Instant::now();
        match imds::discover(imds_client).await {
            Ok(mut i) => {
                ctx.count(Api::Imds, Outcome::Success);
                if let Some(r) = &c.region {
                    i.region = r.clone();
                }
                return Discovery::Found(i);
            }
            Err(e) => {
                ctx.count(Api::Imds, Outcome::Error);
                if c.enabled == Enabled::Auto {
                    info!(
                        error = %e,
                        waited_ms = t.elapsed().as_millis() as u64,
                        "Not on EC2 (no IMDS answer): cloud features off. Set [cloud] enabled = true to keep trying."
                    );
                    return Discovery::NotOnEc2;
                }
                failures += 1;
                let d = backoff(c.retry_min, c.describe_interval, failures);
                warn!(error = %e, retry_in = ?d, "IMDS discovery failed; [cloud] enabled = true, retrying.");
                if ctx.sleep_or_stop(d).await {
                    return Discovery::Stopped;
                }
            }
        }
    }
}

/// Cloud features off: still describe the block devices (model, serial, EBS volume id from the
/// NVMe serial, io_timeout) every `describe_interval`; they cost one sysfs scan.
async fn disks_only(ctx: Ctx, roots: Arc<Roots>) {
    loop {
        let c = ctx.cfg.load_full();
        if let Some(d) = scan_disks(roots.clone(), c.request_timeout).await {
            ctx.out.store(Arc::new(CloudSnapshot {
                disks: d,
                ..CloudSnapshot::default()
            }));
        }
        if ctx.sleep_or_stop(c.describe_interval).await {
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

/// What the describe loop calls with.
struct Describe {
    ec2: Ec2Client,
    creds: SharedCredentialsProvider,
    instance_id: String,
    roots: Arc<Roots>,
}

/// Every success wakes the poll loop (`volumes_tx`), so that new volumes are asked at once.
async fn describe_loop(ctx: Ctx, d: Describe, volumes_tx: watch::Sender<u64>) {
    let mut generation = 0u64;
    loop {
        let c = ctx.cfg.load_full();
        if describe_once(&ctx, &c, &d).await {
            generation += 1;
            let _ = volumes_tx.send(generation);
        }
        ctx.publish(&c);
        let delay = ctx.lock().describe_delay(&c);
        if ctx.sleep_or_stop(delay).await {
            return;
        }
    }
}

/// One describe period: the sysfs scan and DescribeVolumes, into the state. True when the
/// volumes were described.
async fn describe_once(ctx: &Ctx, c: &CloudConfig, d: &Describe) -> bool {
    let disks = scan_disks(d.roots.clone(), c.request_timeout).await;
    let volumes = match d.creds.provide_credentials().await {
        Ok(k) => d
            .ec2
            .describe_attached_volumes(&k, &d.instance_id)
            .await
            .map_err(|e| Failure {
                throttled: e.is_throttling(),
                message: e.to_string(),
            }),
        Err(e) => Err(Failure {
            throttled: false,
            message: format!("no AWS credentials: {}", http::error_chain(&e)),
        }),
    };
    let described = ctx.lock().on_describe(disks, volumes, c, unix_now());
    match described {
        Described::Same => true,
        Described::Changed { volumes } => {
            info!(volumes, "Attached EBS volumes described.");
            true
        }
        Described::Failed { failure, retry_in } => {
            warn!(error = %failure.message, ?retry_in, "DescribeVolumes failed.");
            false
        }
    }
}

async fn poll_loop(ctx: Ctx, cw: aws_sdk_cloudwatch::Client, mut volumes_rx: watch::Receiver<u64>) {
    // Nothing to ask before the first DescribeVolumes.
    if volumes_rx.changed().await.is_err() {
        return;
    }
    loop {
        let c = ctx.cfg.load_full();
        let delay = poll_once(&ctx, &c, &cw).await;
        ctx.publish(&c);
        let mut stop = ctx.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            // New or changed volumes: ask at once.
            r = volumes_rx.changed() => if r.is_err() { return },
            _ = stop.changed() => return,
        }
        if *ctx.stop.borrow() {
            return;
        }
    }
}

/// One poll: GetMetricData for what the state says to ask, its outcome into the state.
/// Returns when to poll again.
async fn poll_once(ctx: &Ctx, c: &CloudConfig, cw: &aws_sdk_cloudwatch::Client) -> Duration {
    let plan = ctx.lock().poll_plan(c);
    if plan.is_empty() {
        return ctx.lock().poll_delay(&plan, c);
    }
    let points = cloudwatch::fetch_newest(cw, &plan.series(), SystemTime::now(), c.lookback, |n| {
        ctx.lock().add_metrics_requested(n)
    })
    .await
    .map_err(|e| Failure {
        throttled: e.throttled,
        message: e.message,
    });
    let (polled, delay) = {
        let mut s = ctx.lock();
        let polled = s.on_poll(&plan, points, unix_now());
        (polled, s.poll_delay(&plan, c))
    };
    match polled {
        Ok(anchored) => {
            for (volume_id, p, result) in anchored {
                debug!(%volume_id, percent = p.percent, timestamp = p.timestamp, ?result, "Anchored the credit model.");
            }
        }
        Err(failure) => warn!(error = %failure.message, retry_in = ?delay, "GetMetricData failed."),
    }
    delay
}

/// The credit model, every `model_interval`: the host sampler's newest reading, if not fed yet.
async fn model_loop(ctx: Ctx, host: Arc<ArcSwap<HostSnapshot>>) {
    loop {
        let c = ctx.cfg.load_full();
        let started = Instant::now();
        feed_model(&ctx.state, &host);
        ctx.publish(&c);
        if ctx
            .sleep_or_stop(c.model_interval.saturating_sub(started.elapsed()))
            .await
        {
            return;
        }
    }
}

/// The model's look at the host sampler: a diskstats reading not fed yet advances the buckets
/// at the reading's own time (its `Instant` put on the wall clock now). True when it was fed.
fn feed_model(state: &Mutex<State>, host: &ArcSwap<HostSnapshot>) -> bool {
    let h = host.load();
    let Some(at) = h.disks_at else {
        return false;
    };
    let at_unix = state::unix_time_of(at, Instant::now(), unix_now());
    lock(state).on_disk_counters(&h.all_disks, at, at_unix)
}

/// One read pass: each EBS NVMe device's log page, or why not.
type Pages = Vec<(String, Result<nvme::Stats, nvme::NvmeError>)>;

/// EBS NVMe log pages, every `model_interval` while `nvme_stats` is on.
async fn nvme_loop(ctx: Ctx) {
    let mut running: Option<JoinHandle<Pages>> = None;
    loop {
        let c = ctx.cfg.load_full();
        let started = Instant::now();
        if let Some(pages) = nvme_once(&ctx, &c, &mut running).await {
            let mut s = ctx.lock();
            for (device, page) in pages {
                match page {
                    Ok(stats) => s.on_nvme(device, stats),
                    Err(error) => {
                        debug!(%device, %error, "Cannot read the EBS NVMe log page.")
                    }
                }
            }
            drop(s);
            ctx.publish(&c);
        }
        if ctx
            .sleep_or_stop(c.model_interval.saturating_sub(started.elapsed()))
            .await
        {
            return;
        }
    }
}

/// One period: a blocking read pass over the EBS NVMe devices, waited for until the period
/// ends. A pass still running then (a hung admin command) is waited for again in the next
/// periods, never started twice, and the last values stay in place meanwhile. `None`: nothing
/// was read this period.
async fn nvme_once(
    ctx: &Ctx,
    c: &CloudConfig,
    running: &mut Option<JoinHandle<Pages>>,
) -> Option<Pages> {
    let mut pass = match running.take() {
        Some(p) => p,
        None if !c.nvme_stats => return None,
        None => {
            let targets = ctx.lock().nvme_targets(&c.dev_dir);
            if targets.is_empty() {
                return None;
            }
            tokio::task::spawn_blocking(move || {
                targets
                    .into_iter()
                    .map(|(device, path)| (device, nvme::read_log_page(&path)))
                    .collect()
            })
        }
    };
    match tokio::time::timeout(c.model_interval, &mut pass).await {
        Ok(pages) => pages.ok(),
        Err(_) => {
            *running = Some(pass);
            None
        }
    }
}

#[cfg(test)]
mod tests;
