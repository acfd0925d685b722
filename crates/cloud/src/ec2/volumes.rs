//! `DescribeVolumes` filtered to this instance's attachments: type, size, provisioned IOPS and
//! throughput, creation time, and this instance's attachment device names.

use aws_credential_types::Credentials;

use super::{child, items, number, response, text_of, time_of, Ec2Client, Ec2Error};

/// One volume as DescribeVolumes reports it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Volume {
    pub volume_id: String,
    pub volume_type: String,
    pub size_gib: u64,
    pub availability_zone: String,
    pub iops: Option<u64>,
    pub throughput_mibps: Option<u64>,
    /// Device names of this instance's attachment (`/dev/sdf`, `/dev/xvda`).
    pub attachment_devices: Vec<String>,
    /// `createTime`, Unix seconds.
    pub created: Option<f64>,
}

/// The filter: volumes attached to `instance_id`.
pub fn params(instance_id: &str) -> Vec<(String, String)> {
    vec![
        ("Filter.1.Name".into(), "attachment.instance-id".into()),
        ("Filter.1.Value.1".into(), instance_id.into()),
    ]
}

impl Ec2Client {
    /// All volumes attached to `instance_id` (every page).
    pub async fn describe_attached_volumes(
        &self,
        creds: &Credentials,
        instance_id: &str,
    ) -> Result<Vec<Volume>, Ec2Error> {
        self.paged(creds, "DescribeVolumes", &params(instance_id), |t| {
            parse_describe_volumes(t, instance_id)
        })
        .await
    }
}

/// Parses a `DescribeVolumesResponse`: the volumes and the `nextToken`. Only attachments to
/// `instance_id` are kept as device names. Unknown elements are ignored.
pub fn parse_describe_volumes(
    xml: &str,
    instance_id: &str,
) -> Result<(Vec<Volume>, Option<String>), Ec2Error> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| Ec2Error::Parse(e.to_string()))?;
    let root = response(&doc, "DescribeVolumesResponse")?;
    let mut out = Vec::new();
    for item in items(root, "volumeSet") {
        let Some(volume_id) = text_of(item, "volumeId") else {
            return Err(Ec2Error::Parse("a volume without volumeId".into()));
        };
        let mut attachment_devices = Vec::new();
        if let Some(atts) = child(item, "attachmentSet") {
            for a in atts.children().filter(|c| c.is_element()) {
                if text_of(a, "instanceId").as_deref() == Some(instance_id) {
                    if let Some(d) = text_of(a, "device") {
                        attachment_devices.push(d);
                    }
                }
            }
        }
        out.push(Volume {
            size_gib: number(item, "size", &volume_id)?.unwrap_or(0),
            iops: number(item, "iops", &volume_id)?,
            throughput_mibps: number(item, "throughput", &volume_id)?,
            volume_type: text_of(item, "volumeType").unwrap_or_default(),
            availability_zone: text_of(item, "availabilityZone").unwrap_or_default(),
            created: time_of(item, "createTime"),
            attachment_devices,
            volume_id,
        });
    }
    Ok((out, text_of(root, "nextToken")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESPONSE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeVolumesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>f6a1c1c0-0000-4c9d-9d0d-000000000000</requestId>
  <volumeSet>
    <item>
      <volumeId>vol-0aaa</volumeId><size>100</size><snapshotId/>
      <availabilityZone>eu-west-1a</availabilityZone><status>in-use</status>
      <createTime>2023-11-14T22:13:20.000Z</createTime>
      <attachmentSet>
        <item><volumeId>vol-0aaa</volumeId><instanceId>i-1</instanceId><device>/dev/xvda</device><status>attached</status></item>
      </attachmentSet>
      <volumeType>gp2</volumeType><iops>300</iops><encrypted>false</encrypted>
    </item>
    <item>
      <volumeId>vol-0bbb</volumeId><size>500</size>
      <availabilityZone>eu-west-1a</availabilityZone>
      <createTime>yesterday</createTime>
      <attachmentSet>
        <item><instanceId>i-other</instanceId><device>/dev/sdg</device></item>
        <item><instanceId>i-1</instanceId><device>/dev/sdf</device></item>
      </attachmentSet>
      <volumeType>gp3</volumeType><iops>3000</iops><throughput>125</throughput>
    </item>
  </volumeSet>
  <nextToken>tok 2</nextToken>
</DescribeVolumesResponse>"#;

    #[test]
    fn describe_volumes_response_parses() {
        let (v, next) = parse_describe_volumes(RESPONSE, "i-1").unwrap();
        assert_eq!(next.as_deref(), Some("tok 2"));
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].volume_id, "vol-0aaa");
        assert_eq!(v[0].size_gib, 100);
        assert_eq!(v[0].iops, Some(300));
        assert_eq!(v[0].throughput_mibps, None);
        assert_eq!(v[0].attachment_devices, vec!["/dev/xvda"]);
        assert_eq!(v[0].created, Some(1_700_000_000.0));
        assert_eq!(v[1].volume_type, "gp3");
        assert_eq!(v[1].throughput_mibps, Some(125));
        assert_eq!(
            v[1].created, None,
            "an unreadable time is no time, not an error"
        );
        assert_eq!(
            v[1].attachment_devices,
            vec!["/dev/sdf"],
            "other instances' attachments are not ours"
        );
    }

    #[test]
    fn bad_documents_are_errors_not_panics() {
        assert!(parse_describe_volumes("<nope", "i").is_err());
        assert!(parse_describe_volumes("<Other/>", "i").is_err());
        let bad = RESPONSE.replace("<size>100</size>", "<size>lots</size>");
        let e = parse_describe_volumes(&bad, "i-1").unwrap_err().to_string();
        assert!(e.contains("vol-0aaa") && e.contains("size"), "{e}");
        let (v, next) = parse_describe_volumes(
            "<DescribeVolumesResponse><volumeSet/></DescribeVolumesResponse>",
            "i",
        )
        .unwrap();
        assert!(v.is_empty() && next.is_none());
    }
}
