//! `DescribeVolumeStatus` (status checks, io-performance, initialization of snapshot-restored
//! volumes) and `DescribeVolumesModifications` (in-place changes of type, size, IOPS or
//! throughput), both for the attached volumes by id.

use aws_credential_types::Credentials;

use super::{child, items, number, response, text_of, time_of, Ec2Client, Ec2Error};
use crate::snapshot::{Initialization, Modification, VolumeStatus};

/// A call's answer for one volume.
pub type StatusOf<T> = (String, T);

/// `VolumeId.N` parameters for `ids` (1-based).
fn by_id(ids: &[String]) -> Vec<(String, String)> {
    ids.iter()
        .enumerate()
        .map(|(i, v)| (format!("VolumeId.{}", i + 1), v.clone()))
        .collect()
}

impl Ec2Client {
    /// The status of each volume in `ids` (every page).
    pub async fn describe_volume_status(
        &self,
        creds: &Credentials,
        ids: &[String],
        instance_id: &str,
    ) -> Result<Vec<StatusOf<VolumeStatus>>, Ec2Error> {
        self.paged(creds, "DescribeVolumeStatus", &by_id(ids), |t| {
            parse_volume_status(t, instance_id)
        })
        .await
    }

    /// Every modification on record of each volume in `ids` (every page).
    pub async fn describe_volumes_modifications(
        &self,
        creds: &Credentials,
        ids: &[String],
    ) -> Result<Vec<StatusOf<Modification>>, Ec2Error> {
        self.paged(
            creds,
            "DescribeVolumesModifications",
            &by_id(ids),
            parse_modifications,
        )
        .await
    }
}

/// Parses a `DescribeVolumeStatusResponse`. `io-performance` is taken from this instance's own
/// attachment status when AWS gives one (Multi-Attach volumes have one per instance), else
/// from the volume's details; `not-applicable` is no value.
pub fn parse_volume_status(
    xml: &str,
    instance_id: &str,
) -> Result<(Vec<StatusOf<VolumeStatus>>, Option<String>), Ec2Error> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| Ec2Error::Parse(e.to_string()))?;
    let root = response(&doc, "DescribeVolumeStatusResponse")?;
    let mut out = Vec::new();
    for item in items(root, "volumeStatusSet") {
        let Some(id) = text_of(item, "volumeId") else {
            return Err(Ec2Error::Parse("a volume status without volumeId".into()));
        };
        let vs = child(item, "volumeStatus");
        let detail = |name: &str| {
            vs.into_iter()
                .flat_map(|v| items(v, "details"))
                .find(|d| text_of(*d, "name").as_deref() == Some(name))
                .and_then(|d| text_of(d, "status"))
        };
        let own = items(item, "attachmentStatuses")
            .find(|a| text_of(*a, "instanceId").as_deref() == Some(instance_id))
            .and_then(|a| text_of(a, "ioPerformance"));
        let initialization = match child(item, "initializationStatusDetails") {
            Some(n) => Some(Initialization {
                kind: text_of(n, "initializationType").unwrap_or_default(),
                progress_percent: number::<f64>(n, "progress", &id)?,
                eta_seconds: number::<f64>(n, "estimatedTimeToCompleteInSeconds", &id)?,
            }),
            None => None,
        };
        out.push((
            id,
            VolumeStatus {
                status: vs.and_then(|v| text_of(v, "status")).unwrap_or_default(),
                io_enabled: detail("io-enabled"),
                io_performance: own
                    .or_else(|| detail("io-performance"))
                    .filter(|p| p != "not-applicable"),
                initialization,
            },
        ));
    }
    Ok((out, text_of(root, "nextToken")))
}

/// Parses a `DescribeVolumesModificationsResponse`.
pub fn parse_modifications(
    xml: &str,
) -> Result<(Vec<StatusOf<Modification>>, Option<String>), Ec2Error> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| Ec2Error::Parse(e.to_string()))?;
    let root = response(&doc, "DescribeVolumesModificationsResponse")?;
    let mut out = Vec::new();
    for item in items(root, "volumeModificationSet") {
        let Some(id) = text_of(item, "volumeId") else {
            return Err(Ec2Error::Parse("a modification without volumeId".into()));
        };
        let m = Modification {
            state: text_of(item, "modificationState").unwrap_or_default(),
            progress_percent: number(item, "progress", &id)?,
            original_volume_type: text_of(item, "originalVolumeType"),
            target_volume_type: text_of(item, "targetVolumeType"),
            target_size_gib: number(item, "targetSize", &id)?,
            target_iops: number(item, "targetIops", &id)?,
            target_throughput_mibps: number(item, "targetThroughput", &id)?,
            start_time: time_of(item, "startTime"),
            end_time: time_of(item, "endTime"),
        };
        out.push((id, m));
    }
    Ok((out, text_of(root, "nextToken")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of the EC2 API reference's example, with the 2025 fields
    /// (`attachmentStatuses`, `initializationStatusDetails`).
    const STATUS: &str = r#"<DescribeVolumeStatusResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>5jkdf074-37ed-4004-8671-a78ee82bf1cbEXAMPLE</requestId>
  <volumeStatusSet>
    <item>
      <volumeId>vol-1</volumeId><availabilityZone>us-east-1a</availabilityZone>
      <volumeStatus><status>ok</status>
        <details>
          <item><name>io-enabled</name><status>passed</status></item>
          <item><name>io-performance</name><status>not-applicable</status></item>
        </details>
      </volumeStatus>
      <eventsSet/><actionsSet/>
      <initializationStatusDetails>
        <initializationType>default</initializationType><progress>75</progress>
        <estimatedTimeToCompleteInSeconds>850</estimatedTimeToCompleteInSeconds>
      </initializationStatusDetails>
    </item>
    <item>
      <volumeId>vol-2</volumeId>
      <volumeStatus><status>impaired</status>
        <details>
          <item><name>io-enabled</name><status>failed</status></item>
          <item><name>io-performance</name><status>degraded</status></item>
        </details>
      </volumeStatus>
      <attachmentStatuses>
        <item><instanceId>i-other</instanceId><ioPerformance>normal</ioPerformance></item>
        <item><instanceId>i-1</instanceId><ioPerformance>stalled</ioPerformance></item>
      </attachmentStatuses>
    </item>
  </volumeStatusSet>
</DescribeVolumeStatusResponse>"#;

    #[test]
    fn volume_status_parses_checks_attachment_performance_and_initialization() {
        let (v, next) = parse_volume_status(STATUS, "i-1").unwrap();
        assert_eq!(next, None);
        assert_eq!(v[0].0, "vol-1");
        let a = &v[0].1;
        assert_eq!(a.status, "ok");
        assert_eq!(a.io_enabled.as_deref(), Some("passed"));
        assert_eq!(a.io_performance, None, "not-applicable is no value");
        let i = a.initialization.as_ref().unwrap();
        assert_eq!(
            (i.progress_percent, i.eta_seconds),
            (Some(75.0), Some(850.0))
        );
        assert!(a.initializing() && !a.troubled());
        let b = &v[1].1;
        assert_eq!(
            b.io_performance.as_deref(),
            Some("stalled"),
            "this instance's own"
        );
        assert!(b.troubled() && !b.initializing());
        assert!(parse_volume_status("<Other/>", "i-1").is_err());
        let bad = STATUS.replace("<progress>75</progress>", "<progress>most</progress>");
        assert!(parse_volume_status(&bad, "i-1").is_err());
    }

    #[test]
    fn modifications_parse() {
        let xml = r#"<DescribeVolumesModificationsResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <volumeModificationSet>
    <item>
      <volumeId>vol-1</volumeId><modificationState>optimizing</modificationState>
      <originalVolumeType>gp2</originalVolumeType><targetVolumeType>io1</targetVolumeType>
      <targetIops>4000</targetIops><originalIops>300</originalIops><targetSize>100</targetSize>
      <progress>40</progress><startTime>2023-11-14T22:13:20.000Z</startTime>
    </item>
  </volumeModificationSet>
  <nextToken>n</nextToken>
</DescribeVolumesModificationsResponse>"#;
        let (v, next) = parse_modifications(xml).unwrap();
        assert_eq!(next.as_deref(), Some("n"));
        let (id, m) = &v[0];
        assert_eq!(id, "vol-1");
        assert_eq!(m.state, "optimizing");
        assert!(m.in_progress());
        assert_eq!(m.target_volume_type.as_deref(), Some("io1"));
        assert_eq!((m.target_iops, m.target_size_gib), (Some(4000), Some(100)));
        assert_eq!(m.progress_percent, Some(40.0));
        assert_eq!(m.start_time, Some(1_700_000_000.0));
        assert_eq!(m.end_time, None);
    }

    #[test]
    fn volumes_are_asked_by_id() {
        let p = by_id(&["vol-a".into(), "vol-b".into()]);
        assert_eq!(p[1], ("VolumeId.2".to_string(), "vol-b".to_string()));
    }
}
