//! What each cloud source's reader does when the periodic driver asks for a reading: one
//! bounded call, made from the reader's own thread. The async calls run on the agent's tokio
//! runtime through [`run`]: `Handle::block_on` of the call under one deadline for the *whole*
//! call (the IMDS token and document, every DescribeVolumes page, every GetMetricData batch and
//! page; the clients' own timeouts bound only single requests), dropped at once when the agent
//! stops. The sysfs scan and the NVMe log-page pass are plain blocking reads: a read stuck in the
//! kernel holds only its own reader, which the driver reports as stuck.
//!
//! Nothing here touches the state: each function returns an outcome the sampler hands to it.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_config::provider_config::ProviderConfig;
use aws_config::BehaviorVersion;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_cloudwatch::config::Region;
use stallwatch_collector::ErrorKind;
use tokio::runtime::Handle;
use tokio::sync::watch;

use crate::cloudwatch::Points;
use crate::config::CloudConfig;
use crate::devices::{self, BlockDevice, DevicesError};
use crate::ec2::{Ec2Client, Ec2Error, StatusOf, Volume};
use crate::limits::InstanceLimits;
use crate::snapshot::{Instance, Modification, VolumeStatus};
use crate::state::{Failure, PollPlan};
use crate::{cloudwatch, http, imds, nvme};

/// The AWS clients, made once by discovery and shared by the describe and poll sources.
pub struct Clients {
    pub instance: Instance,
    pub cloudwatch: aws_sdk_cloudwatch::Client,
    pub ec2: Ec2Client,
    pub creds: SharedCredentialsProvider,
}

/// How one discovery ended.
pub enum Discovery {
    /// The instance (from IMDS, or configured: then `asked_imds` is false) and its clients.
    Found {
        clients: Arc<Clients>,
        asked_imds: bool,
    },
    /// IMDS did not answer, not in time, or with a document we cannot read.
    NoAnswer { error: String, waited: Duration },
    /// A setting makes AWS unreachable for good (a malformed endpoint): the cloud side stays off.
    Broken(String),
}

/// How a call run from a reader thread ended.
pub enum Ran<T> {
    Done(T),
    /// The deadline passed first; the call was dropped.
    TimedOut,
    /// The agent is stopping; the call was dropped (nobody waits for its answer).
    Stopped,
}

/// Runs `call` on the runtime for at most `deadline`, waiting for it on this thread (a driver
/// reader's, never a runtime thread); drops it as soon as `stop` turns true. The call is a task
/// on the runtime's workers, not polled here: the SDK's futures need more stack than a reader
/// thread has. A call not waited for any more is aborted, so nothing of it lingers. A panic in
/// the call is a panic of the reader (the driver counts it and rebuilds the reader). A closed
/// `stop` channel never stops anything.
pub fn run<T: Send + 'static>(
    rt: &Handle,
    stop: &watch::Receiver<bool>,
    deadline: Duration,
    call: impl Future<Output = T> + Send + 'static,
) -> Ran<T> {
    let mut stop = stop.clone();
    if *stop.borrow_and_update() {
        return Ran::Stopped;
    }
    let mut task = AbortOnDrop(rt.spawn(call));
    rt.block_on(async {
        let stopped = async move {
            if stop.wait_for(|s| *s).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            biased;
            () = stopped => Ran::Stopped,
            r = tokio::time::timeout(deadline, &mut task.0) => match r {
                Ok(Ok(v)) => Ran::Done(v),
                Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // Cancelled: the runtime is shutting down.
                Ok(Err(_)) => Ran::Stopped,
                Err(_) => Ran::TimedOut,
            },
        }
    })
}

/// Aborts the task when dropped (a tokio `JoinHandle` dropped lets its task run on).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A call that outlived its deadline, as a failure of kind `io`.
pub fn late(call: &str, deadline: Duration) -> Failure {
    Failure {
        throttled: false,
        kind: ErrorKind::Io,
        message: format!("{call}: no answer within {deadline:?} (the whole call, every page)"),
    }
}

/// Discovery: the configured instance, or IMDS's identity document (the `enabled` mode, the
/// region and the endpoints are those the agent started with), then the clients: the default
/// credentials chain (the instance role through IMDS on a node), CloudWatch and the signed EC2
/// Query call.
pub async fn discover(start: CloudConfig) -> Discovery {
    let http = http::sdk_client();
    let provider = ProviderConfig::default().with_http_client(http.clone());
    let imds_client = match imds::client(
        &provider,
        start.imds_endpoint.as_deref(),
        start.imds_timeout,
    ) {
        Ok(i) => i,
        Err(e) => return Discovery::Broken(format!("bad [cloud] imds_endpoint: {e}")),
    };
    let t = Instant::now();
    let (instance, asked_imds) = match (&start.instance_id, &start.region) {
        (Some(id), Some(region)) => (
            Instance {
                instance_id: id.clone(),
                region: region.clone(),
                availability_zone: start.availability_zone.clone().unwrap_or_default(),
                instance_type: String::new(),
            },
            false,
        ),
        _ => match imds::discover(&imds_client).await {
            Ok(mut i) => {
                if let Some(r) = &start.region {
                    i.region = r.clone();
                }
                (i, true)
            }
            Err(e) => {
                return Discovery::NoAnswer {
                    error: e.to_string(),
                    waited: t.elapsed(),
                }
            }
        },
    };
    let region = Region::new(instance.region.clone());
    // The chain's own region is set too: without it the builder runs the default region chain
    // (environment, profile, then IMDS through a default client at the default address), which
    // ignores both the region in `provider` and the configured `imds_endpoint`.
    let chain = aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
        .region(region.clone())
        .imds_client(imds_client)
        .configure(provider.with_region(Some(region.clone())))
        .build()
        .await;
    let creds = SharedCredentialsProvider::new(chain);
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .region(region)
        .credentials_provider(creds.clone())
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_timeout(start.request_timeout * 3)
                .operation_attempt_timeout(start.request_timeout)
                .build(),
        )
        .load()
        .await;
    let mut cwb = aws_sdk_cloudwatch::config::Builder::from(&sdk);
    if let Some(e) = &start.cloudwatch_endpoint {
        cwb = cwb.endpoint_url(e);
    }
    let ec2 = match Ec2Client::new(
        &instance.region,
        start.ec2_endpoint.as_deref(),
        start.request_timeout,
    ) {
        Ok(e) => e,
        Err(e) => return Discovery::Broken(format!("cannot build the EC2 client: {e}")),
    };
    Discovery::Found {
        clients: Arc::new(Clients {
            instance,
            cloudwatch: aws_sdk_cloudwatch::Client::from_conf(cwb.build()),
            ec2,
            creds,
        }),
        asked_imds,
    }
}

/// The block devices in `<sysfs>/block`. No such directory (a fixture root, a container
/// without /sys) is no devices, not an error.
pub fn scan_disks(sysfs: &Path) -> Result<Vec<BlockDevice>, (ErrorKind, String)> {
    devices::scan(sysfs).or_else(|e| {
        let DevicesError::ReadDir { source, .. } = &e;
        if source.kind() == io::ErrorKind::NotFound {
            Ok(Vec::new())
        } else {
            Err((ErrorKind::of_io(source), e.to_string()))
        }
    })
}

/// One describe pass's EC2 answers: the attached volumes, and for them (when there are any)
/// their status and modifications; the instance type's EBS limits when asked for.
pub struct Describe {
    pub volumes: Result<Vec<Volume>, Failure>,
    pub status: Option<Result<Vec<StatusOf<VolumeStatus>>, Failure>>,
    pub modifications: Option<Result<Vec<StatusOf<Modification>>, Failure>>,
    pub instance_type: Option<Result<Option<InstanceLimits>, Failure>>,
}

fn ec2_failure(e: Ec2Error) -> Failure {
    Failure {
        throttled: e.is_throttling(),
        kind: match &e {
            Ec2Error::Service {
                status: 401 | 403, ..
            } => ErrorKind::Permission,
            Ec2Error::Parse(_) => ErrorKind::Parse,
            _ => ErrorKind::Io,
        },
        message: e.to_string(),
    }
}

/// DescribeVolumes for the volumes attached to the instance (every page), then
/// DescribeVolumeStatus and DescribeVolumesModifications for them, and DescribeInstanceTypes
/// for `instance_type` when given. A failure of the later calls is theirs alone.
pub async fn describe(c: Arc<Clients>, instance_type: Option<String>) -> Describe {
    let creds = match c.creds.provide_credentials().await {
        Ok(c) => c,
        Err(e) => {
            return Describe {
                volumes: Err(Failure {
                    throttled: false,
                    // No instance role (or no way to reach it): the operator's to give.
                    kind: ErrorKind::Permission,
                    message: format!("no AWS credentials: {}", http::error_chain(&e)),
                }),
                status: None,
                modifications: None,
                instance_type: None,
            };
        }
    };
    let iid = &c.instance.instance_id;
    let volumes = c
        .ec2
        .describe_attached_volumes(&creds, iid)
        .await
        .map_err(ec2_failure);
    let ids: Vec<String> = match &volumes {
        Ok(v) => v.iter().map(|v| v.volume_id.clone()).collect(),
        Err(_) => Vec::new(),
    };
    let (status, modifications) = if ids.is_empty() {
        (None, None)
    } else {
        (
            Some(
                c.ec2
                    .describe_volume_status(&creds, &ids, iid)
                    .await
                    .map_err(ec2_failure),
            ),
            Some(
                c.ec2
                    .describe_volumes_modifications(&creds, &ids)
                    .await
                    .map_err(ec2_failure),
            ),
        )
    };
    let instance_type = match instance_type {
        Some(t) => Some(
            c.ec2
                .describe_instance_type(&creds, &t)
                .await
                .map_err(ec2_failure),
        ),
        None => None,
    };
    Describe {
        volumes,
        status,
        modifications,
        instance_type,
    }
}

/// One GetMetricData poll of `plan`, every batch and page. `requested` counts the metrics of
/// every call sent (CloudWatch bills them whether or not the poll as a whole succeeds, or the
/// deadline drops it).
pub async fn poll(
    c: Arc<Clients>,
    plan: Arc<PollPlan>,
    lookback: Duration,
    requested: Arc<AtomicUsize>,
) -> Result<Points, Failure> {
    cloudwatch::fetch_newest(
        &c.cloudwatch,
        &plan.series(),
        SystemTime::now(),
        lookback,
        |n| {
            requested.fetch_add(n, Ordering::Relaxed);
        },
    )
    .await
    .map_err(|e| Failure {
        throttled: e.throttled,
        kind: if matches!(e.status, Some(401 | 403)) {
            ErrorKind::Permission
        } else {
            ErrorKind::Io
        },
        message: e.message,
    })
}

/// One read pass: each EBS NVMe device's log page, or why not.
pub type Pages = Vec<(String, Result<nvme::Stats, nvme::NvmeError>)>;

/// Reads the log page of each `(device, node)`, in order.
pub fn read_pages(targets: &[(String, PathBuf)]) -> Pages {
    targets
        .iter()
        .map(|(device, path)| (device.clone(), nvme::read_log_page(path)))
        .collect()
}

/// The kind of a failed log-page read; `None` when the page cannot be read *here* at all: no
/// CAP_SYS_ADMIN, or no device node (a container without the host's /dev/nvme*). That is how
/// the default deployments run, so it is said once, not counted as an error every second.
pub fn nvme_error_kind(e: &nvme::NvmeError) -> Option<ErrorKind> {
    use nvme::NvmeError as E;
    match e {
        E::Open { source, .. } | E::Ioctl { source, .. } => match source.kind() {
            io::ErrorKind::PermissionDenied | io::ErrorKind::NotFound => None,
            _ => Some(ErrorKind::Io),
        },
        E::NotADevice { .. } => Some(ErrorKind::Io),
        E::Short { .. } | E::Magic { .. } | E::Bins { .. } | E::Status { .. } => {
            Some(ErrorKind::Parse)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small runtime for the calls of a test.
    pub(crate) fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn a_call_runs_to_its_end_or_its_deadline_from_a_plain_thread() {
        let rt = runtime();
        let (_tx, stop) = watch::channel(false);
        let h = rt.handle();
        assert!(matches!(
            run(h, &stop, Duration::from_secs(5), async { 7 }),
            Ran::Done(7)
        ));
        let t = Instant::now();
        let r = run(
            h,
            &stop,
            Duration::from_millis(50),
            std::future::pending::<()>(),
        );
        assert!(matches!(r, Ran::TimedOut));
        assert!(t.elapsed() >= Duration::from_millis(50));
        // A panic in the call is the reader's.
        let p = std::panic::catch_unwind(|| {
            run(h, &stop, Duration::from_secs(5), async {
                panic!("on purpose")
            })
        });
        assert!(p.is_err());
    }

    #[test]
    fn a_stop_drops_the_call_in_flight_and_refuses_new_ones() {
        let rt = runtime();
        let (tx, stop) = watch::channel(false);
        let h = rt.handle().clone();
        // The call holds `alive` until it is dropped.
        let alive = Arc::new(());
        let held = Arc::clone(&alive);
        let waiting = std::thread::spawn(move || {
            let call = async move {
                let _held = held;
                std::future::pending::<()>().await
            };
            matches!(
                run(&h, &stop, Duration::from_secs(3600), call),
                Ran::Stopped
            )
        });
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(Arc::strong_count(&alive), 2, "the call is out");
        tx.send(true).expect("a receiver");
        assert!(waiting.join().expect("no panic"), "the wait ended");
        let t0 = Instant::now();
        while Arc::strong_count(&alive) > 1 {
            assert!(t0.elapsed() < Duration::from_secs(10), "the call lingers");
            std::thread::sleep(Duration::from_millis(2));
        }
        let (_tx, stopped) = watch::channel(true);
        assert!(matches!(
            run(rt.handle(), &stopped, Duration::from_secs(5), async { 1 }),
            Ran::Stopped
        ));
        // A closed channel is no stop.
        let (tx, orphan) = watch::channel(false);
        drop(tx);
        assert!(matches!(
            run(rt.handle(), &orphan, Duration::from_secs(5), async { 2 }),
            Ran::Done(2)
        ));
    }

    #[test]
    fn a_missing_block_directory_is_no_devices_and_an_unreadable_one_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(scan_disks(dir.path()), Ok(Vec::new()));
        // A file where the directory should be: reading it fails with "not a directory".
        std::fs::write(dir.path().join("block"), "").expect("write");
        let (kind, msg) = scan_disks(dir.path()).expect_err("not a directory");
        assert_eq!(kind, ErrorKind::Io);
        assert!(msg.contains("block"), "{msg}");
    }

    #[test]
    fn a_log_page_that_cannot_be_read_here_is_not_an_error_and_a_broken_one_is() {
        let path = PathBuf::from("/dev/nvme9n1");
        let io = |k: io::ErrorKind| nvme::NvmeError::Open {
            path: path.clone(),
            source: io::Error::from(k),
        };
        assert_eq!(nvme_error_kind(&io(io::ErrorKind::PermissionDenied)), None);
        assert_eq!(nvme_error_kind(&io(io::ErrorKind::NotFound)), None);
        assert_eq!(
            nvme_error_kind(&nvme::NvmeError::Ioctl {
                path: path.clone(),
                source: io::Error::from_raw_os_error(libc::EIO),
            }),
            Some(ErrorKind::Io)
        );
        assert_eq!(
            nvme_error_kind(&nvme::NvmeError::Magic { found: 0 }),
            Some(ErrorKind::Parse)
        );
    }
}
