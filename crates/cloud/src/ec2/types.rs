//! `DescribeInstanceTypes` for this instance's type: its EBS baseline and maximum IOPS and
//! throughput (`ebsInfo.ebsOptimizedInfo`), asked once after discovery (a running instance
//! cannot change type).

use aws_credential_types::Credentials;

use super::{child, items, number, response, text_of, Ec2Client, Ec2Error};
use crate::limits::InstanceLimits;

impl Ec2Client {
    /// The EBS limits of `instance_type`; `None` when the type has none (not EBS-optimized)
    /// or is unknown to the region.
    pub async fn describe_instance_type(
        &self,
        creds: &Credentials,
        instance_type: &str,
    ) -> Result<Option<InstanceLimits>, Ec2Error> {
        let params = vec![("InstanceType.1".to_string(), instance_type.to_string())];
        let found = self
            .paged(
                creds,
                "DescribeInstanceTypes",
                &params,
                parse_instance_types,
            )
            .await?;
        Ok(found
            .into_iter()
            .find(|(t, _)| t == instance_type)
            .and_then(|(_, l)| l))
    }
}

/// Parses a `DescribeInstanceTypesResponse`: each type with its EBS limits (`None` without
/// `ebsOptimizedInfo`).
#[allow(clippy::type_complexity)]
pub fn parse_instance_types(
    xml: &str,
) -> Result<(Vec<(String, Option<InstanceLimits>)>, Option<String>), Ec2Error> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| Ec2Error::Parse(e.to_string()))?;
    let root = response(&doc, "DescribeInstanceTypesResponse")?;
    let mut out = Vec::new();
    for item in items(root, "instanceTypeSet") {
        let Some(ty) = text_of(item, "instanceType") else {
            return Err(Ec2Error::Parse("an instance type without a name".into()));
        };
        let info = child(item, "ebsInfo").and_then(|e| child(e, "ebsOptimizedInfo"));
        let limits = match info {
            None => None,
            Some(i) => {
                let n = |k: &str| number::<f64>(i, k, &ty);
                match (
                    n("baselineIops")?,
                    n("maximumIops")?,
                    n("baselineThroughputInMBps")?,
                    n("maximumThroughputInMBps")?,
                ) {
                    (Some(bi), Some(mi), Some(bt), Some(mt)) => {
                        Some(InstanceLimits::from_api(bi, mi, bt, mt))
                    }
                    _ => None,
                }
            }
        };
        out.push((ty, limits));
    }
    Ok((out, text_of(root, "nextToken")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_type_ebs_limits_parse() {
        let xml = r#"<DescribeInstanceTypesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <instanceTypeSet>
    <item>
      <instanceType>m5.large</instanceType>
      <ebsInfo>
        <ebsOptimizedSupport>default</ebsOptimizedSupport>
        <ebsOptimizedInfo>
          <baselineBandwidthInMbps>650</baselineBandwidthInMbps><baselineThroughputInMBps>81.25</baselineThroughputInMBps>
          <baselineIops>3600</baselineIops><maximumBandwidthInMbps>4750</maximumBandwidthInMbps>
          <maximumThroughputInMBps>593.75</maximumThroughputInMBps><maximumIops>18750</maximumIops>
        </ebsOptimizedInfo>
      </ebsInfo>
    </item>
    <item><instanceType>t1.micro</instanceType><ebsInfo><ebsOptimizedSupport>unsupported</ebsOptimizedSupport></ebsInfo></item>
  </instanceTypeSet>
</DescribeInstanceTypesResponse>"#;
        let (v, next) = parse_instance_types(xml).unwrap();
        assert_eq!(next, None);
        assert_eq!(v[0].0, "m5.large");
        let l = v[0].1.unwrap();
        assert_eq!((l.baseline_iops, l.maximum_iops), (3600.0, 18750.0));
        assert_eq!(l.maximum_bytes_per_second, 593_750_000.0);
        assert_eq!(v[1], ("t1.micro".to_string(), None));
        assert!(parse_instance_types(&xml.replace("3600", "x")).is_err());
    }
}
