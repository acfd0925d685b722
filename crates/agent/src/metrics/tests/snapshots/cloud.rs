//! The cloud side's synthetic snapshot for the encoder goldens: every optional field present,
//! values chosen so that each sample is distinguishable.

use stallwatch_cloud::devices::BlockDevice;
use stallwatch_cloud::snapshot::{
    Api, BalancePoint, CheckPoint, EstimateBasis, Headroom, Initialization, Instance,
    InstanceBalance, InstanceCheck, InstanceEbs, Modification, NvmeCounters, Outcome, VolumeCheck,
    VolumeState, VolumeStatus,
};
use stallwatch_cloud::CloudSnapshot;

pub fn cloud_snapshot() -> CloudSnapshot {
    CloudSnapshot {
        enabled: true,
        instance: Some(Instance {
            instance_id: "i-0123".into(),
            region: "eu-west-1".into(),
            availability_zone: "eu-west-1a".into(),
            instance_type: "t3.large".into(),
        }),
        disks: vec![
            BlockDevice {
                name: "nvme1n1".into(),
                model: Some("Amazon Elastic Block Store".into()),
                serial: Some("vol0abc".into()),
                volume_id: Some("vol-0abc".into()),
                io_timeout_seconds: Some(4294967295.0),
                rotational: Some(false),
            },
            BlockDevice {
                name: "vda".into(),
                model: None,
                serial: None,
                volume_id: None,
                io_timeout_seconds: None,
                rotational: None,
            },
        ],
        volumes: vec![
            VolumeState {
                volume_id: "vol-0abc".into(),
                device: Some("nvme1n1".into()),
                volume_type: "gp2".into(),
                availability_zone: "eu-west-1a".into(),
                size_bytes: 100 << 30,
                provisioned_iops: Some(300),
                throughput_mibps: None,
                baseline_iops: Some(300.0),
                burst_balance: Some(BalancePoint {
                    percent: 42.0,
                    timestamp: 1_700_000_000.0,
                }),
                estimate_percent: Some(40.5),
                seconds_to_empty: Some(f64::INFINITY),
                nvme: Some(NvmeCounters {
                    exceeded_iops_seconds: 1.5,
                    exceeded_throughput_seconds: 0.25,
                    queue_length: 3.0,
                    read_ops: 10,
                    write_ops: 7,
                    read_time_seconds: 0.012,
                    write_time_seconds: 0.02,
                    read_latency: vec![(0.001, 6), (0.0005, 3), (0.001, 1)],
                    write_latency: vec![(0.004, 7)],
                }),
                created: Some(1_690_000_000.0),
                estimate_basis: Some(EstimateBasis::CloudWatch),
                estimate_low_percent: Some(40.0),
                estimate_high_percent: Some(41.0),
                headroom: Some(Headroom {
                    iops: 2_850.0,
                    iops_limit: 3_000.0,
                    bytes_per_second: 11_673_600.0,
                    bytes_limit: 134_217_728.0,
                    iops_peak: 2_900.0,
                    bytes_per_second_peak: 11_878_400.0,
                    iops_limit_in_seconds: Some(f64::INFINITY),
                    bytes_limit_in_seconds: None,
                }),
                status: Some(VolumeStatus {
                    status: "ok".into(),
                    io_enabled: Some("passed".into()),
                    io_performance: None,
                    initialization: Some(Initialization {
                        kind: "default".into(),
                        progress_percent: Some(75.0),
                        eta_seconds: Some(850.0),
                    }),
                }),
                modification: Some(Modification {
                    state: "optimizing".into(),
                    progress_percent: Some(40.0),
                    original_volume_type: Some("gp2".into()),
                    target_volume_type: Some("gp3".into()),
                    start_time: Some(1_699_999_000.0),
                    ..Modification::default()
                }),
                checks: vec![
                    (
                        VolumeCheck::StalledIo,
                        CheckPoint {
                            value: 0.0,
                            timestamp: 1_700_000_000.0,
                        },
                    ),
                    (
                        VolumeCheck::IopsExceeded,
                        CheckPoint {
                            value: 1.0,
                            timestamp: 1_700_000_060.0,
                        },
                    ),
                ],
            },
            // Mapped by config onto a device the host knows (`vda`): volume ids on disk and
            // container I/O rows come from here.
            VolumeState {
                volume_id: "vol-0def".into(),
                device: Some("vda".into()),
                volume_type: "gp3".into(),
                availability_zone: "eu-west-1a".into(),
                size_bytes: 50 << 30,
                provisioned_iops: Some(3000),
                throughput_mibps: Some(125),
                baseline_iops: Some(3000.0),
                ..VolumeState::default()
            },
        ],
        instance_balances: vec![
            (
                InstanceBalance::EbsIo,
                BalancePoint {
                    percent: 99.0,
                    timestamp: 1_700_000_060.0,
                },
            ),
            (
                InstanceBalance::CpuCredit,
                BalancePoint {
                    percent: 144.0,
                    timestamp: 1_700_000_120.0,
                },
            ),
        ],
        instance_ebs: Some(InstanceEbs {
            baseline_iops: 3_600.0,
            maximum_iops: 18_750.0,
            baseline_bytes_per_second: 81_250_000.0,
            maximum_bytes_per_second: 593_750_000.0,
            headroom: Some(Headroom {
                iops: 2_850.0,
                iops_limit: 18_750.0,
                bytes_per_second: 11_673_600.0,
                bytes_limit: 593_750_000.0,
                iops_peak: 2_900.0,
                bytes_per_second_peak: 11_878_400.0,
                iops_limit_in_seconds: Some(f64::INFINITY),
                bytes_limit_in_seconds: Some(f64::INFINITY),
            }),
        }),
        instance_checks: vec![(
            InstanceCheck::IopsExceeded,
            CheckPoint {
                value: 0.0,
                timestamp: 1_700_000_060.0,
            },
        )],
        instance_exceeded_iops_seconds: Some(2.0),
        instance_exceeded_throughput_seconds: Some(0.5),
        requests: vec![
            (Api::Imds, Outcome::Success, 1),
            (Api::GetMetricData, Outcome::Throttled, 2),
        ],
        metrics_requested: 3000,
        last_success: vec![(Api::Imds, 1_700_000_000.0)],
        sources: Vec::new(),
    }
}
