//! The cloud side of stallwatch (AWS): which EBS volumes back this node's disks, how much burst
//! credit they have left (CloudWatch `BurstBalance`, minutes late), a local estimate of the same
//! bucket from the host sampler's disk counters every second (so the warning comes before the
//! wall), and the EBS NVMe statistics log page (time spent over the volume's and the instance's
//! limits).
//!
//! Floors, bottom up (no module imports one above it, nothing imports `sampler`):
//! - pure values and readers: `config`, `model`, `limits`, `rates`, `nvme`, `devices`,
//!   `snapshot`, and `persist` (the model's state file, on a thread of its own);
//! - `http`: the HTTPS clients and the error chain every AWS call is reported with;
//! - the AWS calls, each on its own: `imds`, `ec2`, `cloudwatch`;
//! - `state`: what is known and every decision made from it, pure and unit-tested;
//! - `calls`: what each source's reader does, one bounded call (or blocking read) at a time;
//! - `sampler`: the cloud side on the collector's periodic driver, feeding the calls' outcomes
//!   and the host sampler's disk counters to the state and publishing a [`CloudSnapshot`] the
//!   agent encodes.

pub mod config;
pub mod devices;
pub mod limits;
pub mod model;
pub mod nvme;
pub mod persist;
pub mod rates;
pub mod snapshot;

pub mod http;

pub mod cloudwatch;
pub mod ec2;
pub mod imds;

pub mod state;

pub mod calls;

pub mod sampler;

pub use sampler::{CloudSampler, Wiring};
pub use snapshot::CloudSnapshot;
