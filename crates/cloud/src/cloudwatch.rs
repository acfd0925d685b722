//! CloudWatch `GetMetricData` (aws-sdk-cloudwatch) for what the poll plan asks: `BurstBalance`
//! of the attached volumes that have one (gp2 below 1 TiB, st1, sc1), the 1-minute EBS checks
//! of every attached volume under `{InstanceId, VolumeId}`, and the instance's own balances and
//! checks; ≤ 500 metrics per call, the newest points of each series with their own timestamps.
//! CloudWatch bills per metric requested, so the caller counts what each call asked for.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_cloudwatch::error::ProvideErrorMetadata;
use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat, ScanBy};

use crate::snapshot::{BalancePoint, InstanceCheck, VolumeCheck};

/// GetMetricData's limit on queries per call.
pub const MAX_QUERIES_PER_CALL: usize = 500;
/// EBS publishes per-minute data.
const PERIOD_SECS: i64 = 60;
/// Points kept per series, newest first: the newest anchors, the ones before give the trend.
pub const POINTS_KEPT: usize = 10;

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CwError {
    pub message: String,
    pub throttled: bool,
    /// The HTTP status of the failing answer, when there was one.
    pub status: Option<u16>,
}

/// The query window: whole minutes, `lookback` back from now. CloudWatch groups points into
/// periods counted from StartTime, so an unaligned start shifts every timestamp.
pub fn window(now: SystemTime, lookback: Duration) -> (i64, i64) {
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let end = (now / PERIOD_SECS + 1) * PERIOD_SECS;
    let back = (lookback.as_secs() as i64).max(PERIOD_SECS);
    let start = end - (back + PERIOD_SECS - 1) / PERIOD_SECS * PERIOD_SECS;
    (start, end)
}

/// One CloudWatch series: namespace, metric name, dimensions and the statistic asked.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub namespace: &'static str,
    pub metric: &'static str,
    pub dimensions: Vec<(&'static str, String)>,
    /// `Average` for balances; `Maximum` for the 0/1 checks (any failing second of the minute).
    pub stat: &'static str,
}

impl Series {
    /// `AWS/EBS` `BurstBalance` of a volume (gp2 < 1 TiB, st1, sc1 only).
    pub fn burst_balance(volume_id: &str) -> Series {
        Series {
            namespace: "AWS/EBS",
            metric: "BurstBalance",
            dimensions: vec![("VolumeId", volume_id.to_string())],
            stat: "Average",
        }
    }

    /// An `AWS/EC2` balance of the instance (`EBSIOBalance%`, `EBSByteBalance%`,
    /// `CPUCreditBalance`).
    pub fn instance(metric: &'static str, instance_id: &str) -> Series {
        Series {
            namespace: "AWS/EC2",
            metric,
            dimensions: vec![("InstanceId", instance_id.to_string())],
            stat: "Average",
        }
    }

    /// A volume's 1-minute check: `AWS/EBS`, published under `{InstanceId, VolumeId}` (asked
    /// under `VolumeId` alone it finds nothing).
    pub fn volume_check(check: VolumeCheck, instance_id: &str, volume_id: &str) -> Series {
        Series {
            namespace: "AWS/EBS",
            metric: check.cloudwatch_metric(),
            dimensions: vec![
                ("InstanceId", instance_id.to_string()),
                ("VolumeId", volume_id.to_string()),
            ],
            stat: "Maximum",
        }
    }

    /// An instance-level EBS check in `AWS/EC2`.
    pub fn instance_check(check: InstanceCheck, instance_id: &str) -> Series {
        Series {
            namespace: "AWS/EC2",
            metric: check.cloudwatch_metric(),
            dimensions: vec![("InstanceId", instance_id.to_string())],
            stat: "Maximum",
        }
    }
}

/// The newest points of each series answered, newest first (at most [`POINTS_KEPT`]).
pub type Points = BTreeMap<usize, Vec<BalancePoint>>;

/// Fetches the newest per-minute points of each series, keyed by its index in `series`.
/// Calls are made in batches of at most [`MAX_QUERIES_PER_CALL`]; `on_call(n)` is told the
/// number of metrics each call requested (billing) before it is sent. The first failing call
/// ends the fetch with its error.
pub async fn fetch_newest(
    client: &aws_sdk_cloudwatch::Client,
    series: &[Series],
    now: SystemTime,
    lookback: Duration,
    mut on_call: impl FnMut(usize),
) -> Result<Points, CwError> {
    let (start, end) = window(now, lookback);
    let mut out: Points = BTreeMap::new();
    for (n, batch) in series.chunks(MAX_QUERIES_PER_CALL).enumerate() {
        let base = n * MAX_QUERIES_PER_CALL;
        let queries: Vec<MetricDataQuery> =
            batch.iter().enumerate().map(|(i, v)| query(i, v)).collect();
        on_call(queries.len());
        let mut token: Option<String> = None;
        for _ in 0..50 {
            let resp = client
                .get_metric_data()
                .set_metric_data_queries(Some(queries.clone()))
                .start_time(DateTime::from_secs(start))
                .end_time(DateTime::from_secs(end))
                .scan_by(ScanBy::TimestampDescending)
                .set_next_token(token.clone())
                .send()
                .await
                .map_err(|e| {
                    let code = e.code().unwrap_or_default().to_string();
                    let status = e.raw_response().map(|r| r.status().as_u16());
                    let throttled = code.contains("Throttl")
                        || code == "RequestLimitExceeded"
                        || matches!(status, Some(429 | 503));
                    CwError {
                        message: format!(
                            "GetMetricData: {}{}",
                            if code.is_empty() {
                                String::new()
                            } else {
                                format!("{code}: ")
                            },
                            crate::http::error_chain(&e)
                        ),
                        throttled,
                        status,
                    }
                })?;
            for r in resp.metric_data_results() {
                let Some(idx) = r
                    .id()
                    .and_then(|id| id.strip_prefix('m'))
                    .and_then(|n| n.parse::<usize>().ok())
                else {
                    continue;
                };
                if idx >= batch.len() {
                    continue;
                }
                let points = out.entry(base + idx).or_default();
                points.extend(
                    r.timestamps()
                        .iter()
                        .zip(r.values())
                        .map(|(t, v)| BalancePoint {
                            percent: *v,
                            timestamp: t.as_secs_f64(),
                        }),
                );
                // Pages may come in any order: newest first, each minute once.
                points.sort_by(|a, b| b.timestamp.total_cmp(&a.timestamp));
                points.dedup_by(|a, b| a.timestamp == b.timestamp);
                points.truncate(POINTS_KEPT);
            }
            token = resp.next_token().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
    }
    Ok(out)
}

fn query(i: usize, s: &Series) -> MetricDataQuery {
    MetricDataQuery::builder()
        .id(format!("m{i}"))
        .metric_stat(
            MetricStat::builder()
                .metric(
                    Metric::builder()
                        .namespace(s.namespace)
                        .metric_name(s.metric)
                        .set_dimensions(Some(
                            s.dimensions
                                .iter()
                                .map(|(k, v)| Dimension::builder().name(*k).value(v).build())
                                .collect(),
                        ))
                        .build(),
                )
                .period(PERIOD_SECS as i32)
                .stat(s.stat)
                .build(),
        )
        .return_data(true)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_whole_minutes_and_covers_now() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_123);
        let (s, e) = window(t, Duration::from_secs(600));
        assert_eq!(s % 60, 0);
        assert_eq!(e % 60, 0);
        assert!(e > 1_700_000_123 && e - 1_700_000_123 <= 60);
        assert_eq!(e - s, 600);
        let (s, e) = window(t, Duration::from_secs(1));
        assert_eq!(e - s, 60, "at least one period");
    }

    #[test]
    fn query_ids_are_valid_cloudwatch_ids() {
        // Ids must start with a lower-case letter; the index maps results back to volumes.
        let q = query(499, &Series::burst_balance("vol-1"));
        assert_eq!(q.id(), Some("m499"));
        let ms = q.metric_stat().unwrap();
        assert_eq!(ms.period(), Some(60));
        assert_eq!(ms.stat(), Some("Average"));
        assert_eq!(ms.metric().unwrap().dimensions()[0].value(), Some("vol-1"));
        let q = query(
            0,
            &Series::volume_check(VolumeCheck::StalledIo, "i-1", "vol-1"),
        );
        let ms = q.metric_stat().unwrap();
        assert_eq!(ms.stat(), Some("Maximum"));
        let dims: Vec<_> = ms
            .metric()
            .unwrap()
            .dimensions()
            .iter()
            .map(|d| (d.name(), d.value()))
            .collect();
        assert_eq!(
            dims,
            [
                (Some("InstanceId"), Some("i-1")),
                (Some("VolumeId"), Some("vol-1"))
            ]
        );
    }
}
