//! Instance discovery through IMDSv2 (aws-config's IMDS client: token PUT, then GETs with the
//! token), with short timeouts and a single attempt: off EC2 nothing answers at
//! 169.254.169.254 and the agent must say so once and move on, not hang `make run`.

use std::time::Duration;

use aws_config::imds;
use aws_config::provider_config::ProviderConfig;

use crate::http::error_chain;
use crate::snapshot::Instance;

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("bad IMDS endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("no IMDS answer: {0}")]
    Unreachable(String),
    #[error("IMDS document {path}: {reason}")]
    Document { path: &'static str, reason: String },
}

/// Builds the IMDS client: `endpoint` overrides the default (also honoured: the SDK's own
/// `AWS_EC2_METADATA_SERVICE_ENDPOINT`), `timeout` bounds connect and read of each call.
pub fn client(
    provider: &ProviderConfig,
    endpoint: Option<&str>,
    timeout: Duration,
) -> Result<imds::Client, DiscoveryError> {
    let mut b = imds::Client::builder()
        .configure(provider)
        .connect_timeout(timeout)
        .read_timeout(timeout)
        .operation_timeout(timeout * 2)
        .max_attempts(1);
    if let Some(e) = endpoint {
        b = b.endpoint(e).map_err(|err| DiscoveryError::Endpoint {
            endpoint: e.to_string(),
            reason: err.to_string(),
        })?;
    }
    Ok(b.build())
}

/// One discovery as the agent does it, with its own HTTPS client (for `stallwatch doctor`).
pub async fn probe(endpoint: Option<&str>, timeout: Duration) -> Result<Instance, DiscoveryError> {
    let provider = ProviderConfig::default().with_http_client(crate::http::sdk_client());
    discover(&client(&provider, endpoint, timeout)?).await
}

const IDENTITY: &str = "/latest/dynamic/instance-identity/document";

/// Instance id, region, AZ and type from the instance identity document (one call).
pub async fn discover(client: &imds::Client) -> Result<Instance, DiscoveryError> {
    let doc = client
        .get(IDENTITY)
        .await
        .map_err(|e| DiscoveryError::Unreachable(error_chain(&e)))?;
    parse_identity(doc.as_ref())
}

/// The identity document is JSON: `instanceId`, `region`, `availabilityZone`, `instanceType`.
pub fn parse_identity(text: &str) -> Result<Instance, DiscoveryError> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| DiscoveryError::Document {
            path: IDENTITY,
            reason: e.to_string(),
        })?;
    let field = |k: &str| -> Result<String, DiscoveryError> {
        v.get(k)
            .and_then(|x| x.as_str())
            .map(str::to_string)
            .ok_or_else(|| DiscoveryError::Document {
                path: IDENTITY,
                reason: format!("no string field {k:?}"),
            })
    };
    Ok(Instance {
        instance_id: field("instanceId")?,
        region: field("region")?,
        availability_zone: field("availabilityZone")?,
        instance_type: field("instanceType").unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_document_parses() {
        let doc = r#"{"accountId":"123456789012","architecture":"x86_64","availabilityZone":"eu-west-1b",
            "imageId":"ami-1","instanceId":"i-0abc","instanceType":"m5.large","region":"eu-west-1"}"#;
        let i = parse_identity(doc).unwrap();
        assert_eq!(i.instance_id, "i-0abc");
        assert_eq!(i.region, "eu-west-1");
        assert_eq!(i.availability_zone, "eu-west-1b");
        assert_eq!(i.instance_type, "m5.large");
    }

    #[test]
    fn identity_document_without_region_is_an_error() {
        let e = parse_identity(r#"{"instanceId":"i-1"}"#).unwrap_err();
        assert!(
            e.to_string().contains("availabilityZone") || e.to_string().contains("region"),
            "{e}"
        );
        assert!(parse_identity("not json").is_err());
    }
}
