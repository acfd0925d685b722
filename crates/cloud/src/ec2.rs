//! The EC2 calls the agent makes, each a Query-protocol POST signed with SigV4 by `aws-sigv4`,
//! its XML read with `roxmltree`: `DescribeVolumes` for the volumes attached to this instance
//! (`volumes`), `DescribeVolumeStatus` and `DescribeVolumesModifications` for those volumes
//! (`status`), and `DescribeInstanceTypes` for this instance's type (`types`).
//!
//! Why not `aws-sdk-ec2`: these four read-only calls are all the agent asks of EC2, and that
//! crate is 1.24 M lines of generated code; measured here, a clean debug build of the workspace
//! with it took 9 min and 8 GB of RSS against 2.5 min without (release 16 min against 6). The
//! requests, their signature and small XML readers are a few hundred lines we test end to end
//! against moto (and, where moto lacks the call, the harness's fake of it).

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;

mod status;
mod types;
mod volumes;

pub use status::{parse_modifications, parse_volume_status, StatusOf};
pub use types::parse_instance_types;
pub use volumes::{parse_describe_volumes, Volume};

/// The EC2 Query API version DescribeVolumes is called with.
const API_VERSION: &str = "2016-11-15";

#[derive(Debug, thiserror::Error)]
pub enum Ec2Error {
    #[error("signing the request: {0}")]
    Sign(String),
    #[error("sending the request: {0}")]
    Transport(String),
    /// The service answered with an error document (`code` e.g. `RequestLimitExceeded`).
    #[error("EC2 said {status} {code}: {message}")]
    Service {
        status: u16,
        code: String,
        message: String,
    },
    #[error("reading the response: {0}")]
    Parse(String),
}

impl Ec2Error {
    /// EC2 throttles with `RequestLimitExceeded` (and 503 `Unavailable` under load).
    pub fn is_throttling(&self) -> bool {
        matches!(self, Ec2Error::Service { status, code, .. }
            if *status == 429 || *status == 503 || code == "RequestLimitExceeded" || code == "Throttling")
    }
}

/// Where and as whom to call.
pub struct Ec2Client {
    pub http: reqwest_cloud::Client,
    /// `https://ec2.<region>.amazonaws.com` unless overridden.
    pub endpoint: String,
    pub region: String,
}

impl Ec2Client {
    pub fn new(region: &str, endpoint: Option<&str>, timeout: Duration) -> Result<Self, Ec2Error> {
        let http = crate::http::query_client(timeout).map_err(Ec2Error::Transport)?;
        Ok(Ec2Client {
            http,
            endpoint: endpoint
                .map(|e| e.trim_end_matches('/').to_string())
                .unwrap_or_else(|| default_endpoint(region)),
            region: region.to_string(),
        })
    }

    /// One Query action, every page: `parse` reads a page into items and its next token.
    /// `max_pages` bounds a service that pages on and on.
    pub async fn paged<T>(
        &self,
        creds: &Credentials,
        action: &str,
        params: &[(String, String)],
        parse: impl Fn(&str) -> Result<(Vec<T>, Option<String>), Ec2Error>,
    ) -> Result<Vec<T>, Ec2Error> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        // A bound on pages: an instance has at most a few dozen attachments.
        for _ in 0..100 {
            let body = form_body(action, params, token.as_deref());
            let text = self.post(creds, body).await?;
            let (page, next) = parse(&text)?;
            out.extend(page);
            match next {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn post(&self, creds: &Credentials, body: String) -> Result<String, Ec2Error> {
        let url = format!("{}/", self.endpoint);
        let mut req = http::Request::builder()
            .method("POST")
            .uri(&url)
            .header(
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8",
            )
            .body(body.clone())
            .map_err(|e| Ec2Error::Sign(e.to_string()))?;
        sign_request(&mut req, creds, &self.region, SystemTime::now())?;
        let mut rb = self.http.post(&url).body(body);
        for (k, v) in req.headers() {
            rb = rb.header(k.as_str(), v.as_bytes());
        }
        let resp = rb
            .send()
            .await
            .map_err(|e| Ec2Error::Transport(crate::http::error_chain(&e)))?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .map_err(|e| Ec2Error::Transport(e.to_string()))?;
        if status >= 300 {
            let (code, message) = parse_error(&text);
            return Err(Ec2Error::Service {
                status,
                code,
                message,
            });
        }
        Ok(text)
    }
}

pub fn default_endpoint(region: &str) -> String {
    if region.starts_with("cn-") {
        format!("https://ec2.{region}.amazonaws.com.cn")
    } else {
        format!("https://ec2.{region}.amazonaws.com")
    }
}

/// A Query form body: `Action`, `Version`, then `params` (encoded here) and the paging token.
pub fn form_body(action: &str, params: &[(String, String)], next_token: Option<&str>) -> String {
    let mut s = format!("Action={action}&Version={API_VERSION}");
    for (k, v) in params {
        s.push('&');
        s.push_str(&urlencode(k));
        s.push('=');
        s.push_str(&urlencode(v));
    }
    if let Some(t) = next_token {
        s.push_str("&NextToken=");
        s.push_str(&urlencode(t));
    }
    s
}

/// Form-urlencoding per SigV4's rules (unreserved characters kept, the rest %XX).
fn urlencode(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                o.push(b as char)
            }
            _ => o.push_str(&format!("%{b:02X}")),
        }
    }
    o
}

/// Adds SigV4 headers (`authorization`, `x-amz-date`, `x-amz-security-token`) for service `ec2`.
pub fn sign_request(
    req: &mut http::Request<String>,
    creds: &Credentials,
    region: &str,
    now: SystemTime,
) -> Result<(), Ec2Error> {
    let identity = creds.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("ec2")
        .time(now)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| Ec2Error::Sign(e.to_string()))?
        .into();
    let headers: Vec<(&str, &str)> = req
        .headers()
        .iter()
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v)))
        .collect();
    let uri = req.uri().to_string();
    let signable = SignableRequest::new(
        req.method().as_str(),
        &uri,
        headers.into_iter(),
        SignableBody::Bytes(req.body().as_bytes()),
    )
    .map_err(|e| Ec2Error::Sign(e.to_string()))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| Ec2Error::Sign(e.to_string()))?
        .into_parts();
    instructions.apply_to_request_http1x(req);
    Ok(())
}

pub(crate) fn child<'a>(n: roxmltree::Node<'a, 'a>, name: &str) -> Option<roxmltree::Node<'a, 'a>> {
    n.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

pub(crate) fn text_of(n: roxmltree::Node<'_, '_>, name: &str) -> Option<String> {
    child(n, name)
        .and_then(|c| c.text())
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// The root element of a response, checked to be `<{name}>`.
pub(crate) fn response<'a>(
    doc: &'a roxmltree::Document<'a>,
    name: &str,
) -> Result<roxmltree::Node<'a, 'a>, Ec2Error> {
    let root = doc.root_element();
    if root.tag_name().name() != name {
        return Err(Ec2Error::Parse(format!(
            "expected {name}, got <{}>",
            root.tag_name().name()
        )));
    }
    Ok(root)
}

/// The `<item>` children of `n`'s child `set`.
pub(crate) fn items<'a>(
    n: roxmltree::Node<'a, 'a>,
    set: &str,
) -> impl Iterator<Item = roxmltree::Node<'a, 'a>> {
    child(n, set).into_iter().flat_map(|s| {
        s.children()
            .filter(|c| c.is_element() && c.tag_name().name() == "item")
    })
}

/// A numeric field, `None` when absent; a value that is no number is an error naming `what`.
pub(crate) fn number<T: std::str::FromStr>(
    n: roxmltree::Node<'_, '_>,
    key: &str,
    what: &str,
) -> Result<Option<T>, Ec2Error> {
    match text_of(n, key) {
        None => Ok(None),
        Some(t) => t
            .parse()
            .map(Some)
            .map_err(|_| Ec2Error::Parse(format!("{what}: {key} is not a number: {t:?}"))),
    }
}

/// An ISO 8601 time field (`2026-12-03T14:00:12.000Z`) as Unix seconds; `None` when absent or
/// unreadable (times are informative, never worth failing a call over).
pub(crate) fn time_of(n: roxmltree::Node<'_, '_>, key: &str) -> Option<f64> {
    let t = text_of(n, key)?;
    aws_smithy_types::DateTime::from_str(&t, aws_smithy_types::date_time::Format::DateTime)
        .ok()
        .map(|d| d.as_secs_f64())
}

/// `<Response><Errors><Error><Code>…</Code><Message>…</Message>` → (code, message).
fn parse_error(xml: &str) -> (String, String) {
    let Ok(doc) = roxmltree::Document::parse(xml) else {
        return ("Unknown".into(), xml.chars().take(200).collect());
    };
    let err = doc
        .descendants()
        .find(|n| n.is_element() && n.tag_name().name() == "Error");
    match err {
        Some(e) => (
            text_of(e, "Code").unwrap_or_else(|| "Unknown".into()),
            text_of(e, "Message").unwrap_or_default(),
        ),
        None => ("Unknown".into(), xml.chars().take(200).collect()),
    }
}

/// The kernel name a Xen/EC2 attachment device gets: `/dev/sdf` and `/dev/xvdf` → `xvdf`
/// (NVMe devices are matched by serial instead, see `devices`).
pub fn kernel_name_of_attachment(device: &str) -> Option<String> {
    let d = device.strip_prefix("/dev/").unwrap_or(device);
    if let Some(rest) = d.strip_prefix("sd") {
        return Some(format!("xvd{rest}"));
    }
    if d.starts_with("xvd") {
        return Some(d.to_string());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_errors_are_read_and_throttling_is_recognised() {
        let xml = "<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>x</RequestID></Response>";
        let (code, msg) = parse_error(xml);
        assert_eq!(code, "RequestLimitExceeded");
        assert_eq!(msg, "Request limit exceeded.");
        let e = Ec2Error::Service {
            status: 503,
            code,
            message: msg,
        };
        assert!(e.is_throttling());
        let e = Ec2Error::Service {
            status: 403,
            code: "UnauthorizedOperation".into(),
            message: String::new(),
        };
        assert!(!e.is_throttling());
    }

    #[test]
    fn the_form_body_filters_on_the_instance_and_encodes_the_token() {
        let b = form_body(
            "DescribeVolumes",
            &volumes::params("i-0abc"),
            Some("a/b+c="),
        );
        assert!(b.starts_with("Action=DescribeVolumes&Version=2016-11-15&"));
        assert!(b.contains("Filter.1.Name=attachment.instance-id&Filter.1.Value.1=i-0abc"));
        assert!(b.ends_with("NextToken=a%2Fb%2Bc%3D"), "{b}");
    }

    #[test]
    fn signing_adds_a_sigv4_authorization_for_ec2() {
        let creds = Credentials::new("AKIDEXAMPLE", "secret", Some("tok".into()), None, "test");
        let mut req = http::Request::builder()
            .method("POST")
            .uri("https://ec2.eu-west-1.amazonaws.com/")
            .header(
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8",
            )
            .body(form_body("DescribeVolumes", &volumes::params("i-1"), None))
            .unwrap();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        sign_request(&mut req, &creds, "eu-west-1", t).unwrap();
        let auth = req.headers()["authorization"].to_str().unwrap();
        assert!(
            auth.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20231114/eu-west-1/ec2/aws4_request"
            ),
            "{auth}"
        );
        assert!(auth.contains("SignedHeaders=") && auth.contains("Signature="));
        assert_eq!(req.headers()["x-amz-date"], "20231114T221320Z");
        assert_eq!(req.headers()["x-amz-security-token"], "tok");
    }

    #[test]
    fn attachment_names_map_to_xen_kernel_names() {
        assert_eq!(
            kernel_name_of_attachment("/dev/sdf").as_deref(),
            Some("xvdf")
        );
        assert_eq!(
            kernel_name_of_attachment("/dev/xvda").as_deref(),
            Some("xvda")
        );
        assert_eq!(kernel_name_of_attachment("/dev/nvme1n1"), None);
    }
}
