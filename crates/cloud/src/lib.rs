//! The cloud side of stallwatch (AWS): which EBS volumes back this node's disks, how much burst
//! credit they have left (CloudWatch `BurstBalance`, minutes late), a local estimate of the same
//! bucket from `/proc/diskstats` every second (so the warning comes before the wall), and the
//! EBS NVMe statistics log page (time spent over the volume's and the instance's limits).
//!
//! Pure parts (`model`, `nvme`, `devices`) are sync and take their inputs as values or paths;
//! the AWS clients are async and publish a [`CloudSnapshot`] the agent encodes.

pub mod devices;
pub mod model;
pub mod nvme;

pub mod cloudwatch;
pub mod config;
pub mod ec2;
pub mod http;
pub mod imds;
pub mod runner;
pub mod snapshot;

pub use snapshot::CloudSnapshot;
