//! `BurstBalance` from CloudWatch `GetMetricData` (aws-sdk-cloudwatch): only for attached
//! volumes that have one (gp2 below 1 TiB, st1, sc1), ≤ 500 metrics per call, newest point per
//! volume with its own timestamp. CloudWatch bills per metric requested, so the caller counts
//! what each call asked for.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_cloudwatch::error::ProvideErrorMetadata;
use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat, ScanBy};

use crate::snapshot::BalancePoint;

/// GetMetricData's limit on queries per call.
pub const MAX_QUERIES_PER_CALL: usize = 500;
/// EBS publishes per-minute data.
const PERIOD_SECS: i64 = 60;

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CwError {
    pub message: String,
    pub throttled: bool,
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

/// One CloudWatch series: namespace, metric name and its single dimension.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub namespace: &'static str,
    pub metric: &'static str,
    pub dimension: &'static str,
    pub value: String,
}

impl Series {
    /// `AWS/EBS` `BurstBalance` of a volume (gp2 < 1 TiB, st1, sc1 only).
    pub fn burst_balance(volume_id: &str) -> Series {
        Series {
            namespace: "AWS/EBS",
            metric: "BurstBalance",
            dimension: "VolumeId",
            value: volume_id.to_string(),
        }
    }

    /// An `AWS/EC2` metric of the instance (`EBSIOBalance%`, `EBSByteBalance%`,
    /// `CPUCreditBalance`).
    pub fn instance(metric: &'static str, instance_id: &str) -> Series {
        Series {
            namespace: "AWS/EC2",
            metric,
            dimension: "InstanceId",
            value: instance_id.to_string(),
        }
    }
}

/// Fetches the newest per-minute average of each series, keyed by its index in `series`.
/// Calls are made in batches of at most [`MAX_QUERIES_PER_CALL`]; `on_call(n)` is told the
/// number of metrics each call requested (billing) before it is sent. The first failing call
/// ends the fetch with its error.
pub async fn fetch_newest(
    client: &aws_sdk_cloudwatch::Client,
    series: &[Series],
    now: SystemTime,
    lookback: Duration,
    mut on_call: impl FnMut(usize),
) -> Result<BTreeMap<usize, BalancePoint>, CwError> {
    let (start, end) = window(now, lookback);
    let mut out = BTreeMap::new();
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
                    let throttled = code.contains("Throttl")
                        || code == "RequestLimitExceeded"
                        || matches!(
                            e.raw_response().map(|r| r.status().as_u16()),
                            Some(429 | 503)
                        );
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
                let newest = r
                    .timestamps()
                    .iter()
                    .zip(r.values())
                    .map(|(t, v)| BalancePoint {
                        percent: *v,
                        timestamp: t.as_secs_f64(),
                    })
                    .max_by(|a, b| a.timestamp.total_cmp(&b.timestamp));
                if let Some(p) = newest {
                    let e = out.entry(base + idx).or_insert(p);
                    if p.timestamp > e.timestamp {
                        *e = p;
                    }
                }
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
                        .dimensions(
                            Dimension::builder()
                                .name(s.dimension)
                                .value(&s.value)
                                .build(),
                        )
                        .build(),
                )
                .period(PERIOD_SECS as i32)
                .stat("Average")
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
    }
}
