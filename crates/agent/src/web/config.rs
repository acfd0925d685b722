//! `--web.config.file`: TLS, basic auth and extra response headers, in the Prometheus
//! exporter-toolkit format (docs/web-configuration.md in prometheus/exporter-toolkit), so a
//! file written for node_exporter works here unchanged or fails with a clear message.
//!
//! Deviations from the toolkit, all failing loudly rather than silently weakening security:
//! - TLS 1.0/1.1 and Go-only cipher suites / curves are rejected (rustls does not have them).
//! - `client_allowed_sans` and `rate_limit` are rejected: both restrict access, and ignoring
//!   them would let in clients the operator meant to keep out.
//! - bcrypt costs above [`MAX_BCRYPT_COST`](super::auth::MAX_BCRYPT_COST) are rejected: one
//!   login would take minutes (cost 31: years), and start-up would hang on the dummy hash.
//! - HTTP/2 is not served; `http2: true` (the toolkit default) only logs a warning.
//! - The file is read once by [`WebConfig::load`]; reloading is up to the caller.
//!
//! This module reads the file and checks the schema; `tls.rs` builds the rustls config and
//! `auth.rs` the basic-auth verifier.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use axum::http::{HeaderName, HeaderValue};
use rustls::ServerConfig;
use serde::Deserialize;

use super::auth::BasicAuth;
use super::tls::{build_tls, RawTls};

/// Parsed and validated web configuration. `Default` is "no file": plain HTTP, no auth.
#[derive(Debug, Default)]
pub struct WebConfig {
    /// TLS server config with ALPN set to `http/1.1`. `None`: serve plain HTTP.
    pub tls: Option<Arc<ServerConfig>>,
    /// `None` when `basic_auth_users` is absent or empty.
    pub auth: Option<Arc<BasicAuth>>,
    /// Extra headers set on every response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl From<&WebConfig> for super::auth::Guard {
    fn from(w: &WebConfig) -> Self {
        super::auth::Guard {
            auth: w.auth.clone(),
            headers: w.headers.clone(),
        }
    }
}

impl WebConfig {
    /// Reads and validates the file, including certificates, keys and bcrypt hashes, so that
    /// a bad file is reported at startup rather than at the first request.
    pub fn load(path: &Path) -> Result<WebConfig> {
        Self::load_inner(path).with_context(|| format!("web config file {}", path.display()))
    }

    fn load_inner(path: &Path) -> Result<WebConfig> {
        let text = std::fs::read_to_string(path).context("cannot read file")?;
        // `Option` so that an empty or comments-only file means "all defaults", as in the toolkit.
        let raw: RawConfig = serde_yaml_ng::from_str::<Option<RawConfig>>(&text)
            .context("cannot parse")?
            .unwrap_or_default();
        if raw.rate_limit.is_some() {
            bail!("rate_limit is not supported");
        }
        let dir = path.parent().unwrap_or(Path::new(""));
        let tls = match raw.tls_server_config {
            Some(tls) => build_tls(tls, dir).context("tls_server_config")?,
            None => None,
        };
        let http = raw.http_server_config.unwrap_or_default();
        if http.http2 == Some(true) {
            tracing::warn!("web config: http2 is not supported, serving HTTP/1.1 only");
        }
        let headers = build_headers(http.headers).context("http_server_config.headers")?;
        let users = raw.basic_auth_users.unwrap_or_default();
        let auth = if users.is_empty() {
            None
        } else {
            Some(Arc::new(BasicAuth::new(users).context("basic_auth_users")?))
        };
        Ok(WebConfig { tls, auth, headers })
    }
}

// ---------------------------------------------------------------------------------------
// File schema. Empty strings count as unset, as they do for the toolkit's Go structs.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    tls_server_config: Option<RawTls>,
    http_server_config: Option<RawHttp>,
    basic_auth_users: Option<HashMap<String, String>>,
    /// Accepted by the parser only to be rejected with a "not supported" message.
    rate_limit: Option<serde_yaml_ng::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    http2: Option<bool>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

// ---------------------------------------------------------------------------------------
// Headers

/// The toolkit deliberately allows only these headers (and, for some, only these values), so
/// that Prometheus-ecosystem configs stay consistent; we follow it.
const ALLOWED_HEADERS: [(&str, &[&str]); 5] = [
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

pub(super) fn build_headers(
    raw: BTreeMap<String, String>,
) -> Result<Vec<(HeaderName, HeaderValue)>> {
    let mut out = Vec::new();
    for (name, value) in raw {
        let Some((_, allowed)) = ALLOWED_HEADERS
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(&name))
        else {
            let names: Vec<_> = ALLOWED_HEADERS.iter().map(|(n, _)| *n).collect();
            bail!(
                "header {name:?} can not be configured (allowed: {})",
                names.join(", ")
            );
        };
        // "Unset if blank", per the toolkit docs.
        if value.is_empty() {
            continue;
        }
        if !allowed.is_empty() && !allowed.contains(&value.as_str()) {
            bail!("invalid value {value:?} for {name}, expected one of {allowed:?}");
        }
        let value =
            HeaderValue::from_str(&value).with_context(|| format!("invalid value for {name}"))?;
        out.push((
            HeaderName::from_bytes(name.as_bytes()).context("invalid header name")?,
            value,
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
