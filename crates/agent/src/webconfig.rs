//! `--web.config.file`: TLS, basic auth and extra response headers, in the Prometheus
//! exporter-toolkit format (docs/web-configuration.md in prometheus/exporter-toolkit), so a
//! file written for node_exporter works here unchanged or fails with a clear message.
//!
//! Deviations from the toolkit, all failing loudly rather than silently weakening security:
//! - TLS 1.0/1.1 and Go-only cipher suites / curves are rejected (rustls does not have them).
//! - `client_allowed_sans` and `rate_limit` are rejected: both restrict access, and ignoring
//!   them would let in clients the operator meant to keep out.
//! - HTTP/2 is not served; `http2: true` (the toolkit default) only logs a warning.
//! - The file is read once by [`WebConfig::load`]; reloading is up to the caller.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{anyhow, bail, Context, Result};
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{ring, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
    SupportedCipherSuite, SupportedProtocolVersion,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Realm sent in `WWW-Authenticate` challenges.
const REALM_CHALLENGE: &str = "Basic realm=\"stallwatch\"";
/// Verified credentials remembered per [`BasicAuth`]; scrapers reuse one or two credentials,
/// so a small cap is plenty and bounds what a client can make us store.
const CACHE_CAPACITY: usize = 64;

/// Parsed and validated web configuration. `Default` is "no file": plain HTTP, no auth.
#[derive(Debug, Default)]
pub struct WebConfig {
    /// TLS server config with ALPN set to `http/1.1`, ready for
    /// `axum_server::tls_rustls::RustlsConfig::from_config`. `None`: serve plain HTTP.
    pub tls: Option<Arc<ServerConfig>>,
    /// `None` when `basic_auth_users` is absent or empty.
    pub auth: Option<Arc<BasicAuth>>,
    /// Extra headers set on every response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
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
struct RawTls {
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    client_ca_file: Option<String>,
    client_auth_type: Option<ClientAuthType>,
    min_version: Option<TlsVersion>,
    max_version: Option<TlsVersion>,
    #[serde(default)]
    cipher_suites: Vec<String>,
    #[serde(default)]
    curve_preferences: Vec<String>,
    /// Accepted and ignored: Go has ignored PreferServerCipherSuites since 1.17, so the
    /// toolkit does not act on it either.
    #[allow(dead_code)]
    prefer_server_cipher_suites: Option<bool>,
    client_allowed_sans: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    http2: Option<bool>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
enum ClientAuthType {
    #[default]
    NoClientCert,
    RequestClientCert,
    /// `RequireClientCert` is the toolkit's backwards-compatible alias.
    #[serde(alias = "RequireClientCert")]
    RequireAnyClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TlsVersion {
    #[serde(rename = "TLS10")]
    Tls10,
    #[serde(rename = "TLS11")]
    Tls11,
    #[serde(rename = "TLS12")]
    Tls12,
    #[serde(rename = "TLS13")]
    Tls13,
}

impl TlsVersion {
    /// The spelling used in the file.
    fn name(self) -> &'static str {
        match self {
            TlsVersion::Tls10 => "TLS10",
            TlsVersion::Tls11 => "TLS11",
            TlsVersion::Tls12 => "TLS12",
            TlsVersion::Tls13 => "TLS13",
        }
    }
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

// ---------------------------------------------------------------------------------------
// TLS

/// PEM given inline or as a file (relative paths resolve against the config file's directory).
enum Pem {
    Inline(&'static str, String),
    File(&'static str, PathBuf),
}

impl Pem {
    fn pick(
        inline: (&'static str, Option<String>),
        file: (&'static str, Option<String>),
        dir: &Path,
    ) -> Result<Option<Pem>> {
        match (non_empty(inline.1), non_empty(file.1)) {
            (Some(_), Some(_)) => bail!("cannot specify both {} and {}", inline.0, file.0),
            (Some(text), None) => Ok(Some(Pem::Inline(inline.0, text))),
            (None, Some(p)) => Ok(Some(Pem::File(file.0, dir.join(p)))),
            (None, None) => Ok(None),
        }
    }

    fn bytes(&self) -> Result<Vec<u8>> {
        match self {
            Pem::Inline(_, text) => Ok(text.clone().into_bytes()),
            Pem::File(_, path) => {
                std::fs::read(path).with_context(|| format!("cannot read {self}"))
            }
        }
    }

    fn certs(&self) -> Result<Vec<CertificateDer<'static>>> {
        let certs = CertificateDer::pem_slice_iter(&self.bytes()?)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("invalid PEM in {self}"))?;
        if certs.is_empty() {
            bail!("no certificate found in {self}");
        }
        Ok(certs)
    }

    fn key(&self) -> Result<PrivateKeyDer<'static>> {
        // pem::Error never includes key material, so it is safe to show.
        PrivateKeyDer::from_pem_slice(&self.bytes()?)
            .with_context(|| format!("no usable private key in {self}"))
    }
}

impl std::fmt::Display for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pem::Inline(key, _) => write!(f, "inline {key}"),
            Pem::File(key, path) => write!(f, "{key} {}", path.display()),
        }
    }
}

fn build_tls(raw: RawTls, dir: &Path) -> Result<Option<Arc<ServerConfig>>> {
    if raw.client_allowed_sans.is_some() {
        bail!("client_allowed_sans is not supported");
    }
    let cert = Pem::pick(("cert", raw.cert), ("cert_file", raw.cert_file), dir)?;
    let key = Pem::pick(("key", raw.key), ("key_file", raw.key_file), dir)?;
    let client_ca = Pem::pick(
        ("client_ca", raw.client_ca),
        ("client_ca_file", raw.client_ca_file),
        dir,
    )?;
    // Toolkit rule: a section that names no certificate, key, CA or client auth policy means
    // plain HTTP (other fields in it are then ignored).
    if cert.is_none() && key.is_none() && client_ca.is_none() && raw.client_auth_type.is_none() {
        return Ok(None);
    }
    let cert = cert.ok_or_else(|| anyhow!("missing one of cert or cert_file"))?;
    let key = key.ok_or_else(|| anyhow!("missing one of key or key_file"))?;

    let provider = Arc::new(crypto_provider(&raw.cipher_suites, &raw.curve_preferences)?);
    let versions = protocol_versions(raw.min_version, raw.max_version)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .context("no cipher suite usable with the allowed TLS versions")?;

    let auth_type = raw.client_auth_type.unwrap_or_default();
    let roots = client_ca.map(|ca| client_roots(&ca)).transpose()?;
    let builder = match (auth_type, roots) {
        (ClientAuthType::NoClientCert, None) => builder.with_no_client_auth(),
        (ClientAuthType::NoClientCert, Some(_)) => {
            bail!("client_ca/client_ca_file is set but client_auth_type is NoClientCert")
        }
        (ClientAuthType::RequestClientCert | ClientAuthType::RequireAnyClientCert, roots) => {
            tracing::warn!(
                "web config: client_auth_type {auth_type:?} does not verify client certificates; \
                 use RequireAndVerifyClientCert to authenticate clients"
            );
            builder.with_client_cert_verifier(Arc::new(AnyClientCert {
                mandatory: auth_type == ClientAuthType::RequireAnyClientCert,
                hints: roots.map(|r| r.subjects()).unwrap_or_default(),
                algorithms: provider.signature_verification_algorithms,
            }))
        }
        (
            ClientAuthType::VerifyClientCertIfGiven | ClientAuthType::RequireAndVerifyClientCert,
            None,
        ) => {
            // Go would fall back to the system roots; trusting every public CA to vouch for
            // scrapers is never what is wanted, so insist on an explicit CA.
            bail!("client_auth_type {auth_type:?} requires client_ca_file or client_ca")
        }
        (ClientAuthType::VerifyClientCertIfGiven, Some(roots)) => builder
            .with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                    .allow_unauthenticated()
                    .build()
                    .context("cannot build client certificate verifier")?,
            ),
        (ClientAuthType::RequireAndVerifyClientCert, Some(roots)) => builder
            .with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .context("cannot build client certificate verifier")?,
            ),
    };

    let mut config = builder
        .with_single_cert(cert.certs()?, key.key()?)
        .with_context(|| format!("cannot use {cert} with {key}"))?;
    // axum-server's `from_config` leaves ALPN to us; the server speaks HTTP/1.1 only, so
    // never let a client negotiate h2.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

fn client_roots(ca: &Pem) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for cert in ca.certs()? {
        roots
            .add(cert)
            .with_context(|| format!("invalid CA certificate in {ca}"))?;
    }
    Ok(Arc::new(roots))
}

fn protocol_versions(
    min: Option<TlsVersion>,
    max: Option<TlsVersion>,
) -> Result<Vec<&'static SupportedProtocolVersion>> {
    let (min, max) = (
        min.unwrap_or(TlsVersion::Tls12),
        max.unwrap_or(TlsVersion::Tls13),
    );
    for (key, v) in [("min_version", min), ("max_version", max)] {
        if v < TlsVersion::Tls12 {
            bail!(
                "{key}: {} is not supported (only TLS12 and TLS13 are available)",
                v.name()
            );
        }
    }
    if min > max {
        bail!(
            "min_version {} is greater than max_version {}",
            min.name(),
            max.name()
        );
    }
    Ok([
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (min..=max).contains(v))
    .map(|(_, p)| p)
    .collect())
}

/// Go names of the TLS 1.3 suites. Go (and so the toolkit) cannot restrict TLS 1.3 suites, so
/// listing them has no effect there; accept them for compatibility and keep all TLS 1.3 suites.
const GO_TLS13_SUITES: [&str; 3] = [
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// The ring provider, restricted per `cipher_suites` (TLS 1.2 only, as in Go) and
/// `curve_preferences`. Names rustls lacks (CBC suites, P-521) are errors: silently using a
/// set other than the one written down would be surprising.
fn crypto_provider(suites: &[String], curves: &[String]) -> Result<CryptoProvider> {
    let mut provider = ring::default_provider();
    if !suites.is_empty() {
        let tls12 = |s: &SupportedCipherSuite| matches!(s, SupportedCipherSuite::Tls12(_));
        let mut chosen: Vec<SupportedCipherSuite> = provider
            .cipher_suites
            .iter()
            .copied()
            .filter(|s| !tls12(s))
            .collect();
        for name in suites {
            if GO_TLS13_SUITES.contains(&name.as_str()) {
                continue;
            }
            let suite = provider
                .cipher_suites
                .iter()
                .find(|s| tls12(s) && s.suite().as_str() == Some(name.as_str()))
                .ok_or_else(|| {
                    let available: Vec<_> = provider
                        .cipher_suites
                        .iter()
                        .filter(|s| tls12(s))
                        .filter_map(|s| s.suite().as_str())
                        .collect();
                    anyhow!(
                        "cipher_suites: {name} is not supported (available: {})",
                        available.join(", ")
                    )
                })?;
            chosen.push(*suite);
        }
        provider.cipher_suites = chosen;
    }
    if !curves.is_empty() {
        provider.kx_groups = curves
            .iter()
            .map(|name| match name.as_str() {
                "X25519" => Ok(ring::kx_group::X25519),
                "CurveP256" => Ok(ring::kx_group::SECP256R1),
                "CurveP384" => Ok(ring::kx_group::SECP384R1),
                _ => Err(anyhow!(
                    "curve_preferences: {name} is not supported (available: X25519, CurveP256, CurveP384)"
                )),
            })
            .collect::<Result<_>>()?;
    }
    Ok(provider)
}

/// Go's RequestClientCert / RequireAnyClientCert: ask for (or require) a certificate but do
/// not validate it. The handshake signature is still checked, so the client must hold the
/// private key of whatever certificate it sends.
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    hints: Vec<DistinguishedName>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
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

fn build_headers(raw: BTreeMap<String, String>) -> Result<Vec<(HeaderName, HeaderValue)>> {
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

// ---------------------------------------------------------------------------------------
// Basic auth

/// Users and their bcrypt hashes, plus a small cache so that a scraper presenting the same
/// credentials every few seconds does not pay for bcrypt (~50-100 ms at cost 10) each time.
pub struct BasicAuth {
    users: HashMap<String, String>,
    /// Verified for unknown users so that response time does not reveal which users exist.
    /// Generated with the highest configured cost so it is never the fast path.
    dummy_hash: String,
    /// Per-instance random key mixed into cache digests: the cache then holds nothing an
    /// attacker could brute-force offline at SHA-256 speed, even from a memory dump.
    cache_key: [u8; 32],
    /// SHA-256(cache_key || "user:password") of verified credentials, oldest first.
    cache: Mutex<VecDeque<[u8; 32]>>,
    /// bcrypt runs one at a time (as in the toolkit): a flood of wrong passwords then costs at
    /// most one core instead of all of them.
    bcrypt_lock: Mutex<()>,
    #[cfg(test)]
    bcrypt_runs: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut users: Vec<_> = self.users.keys().collect();
        users.sort();
        f.debug_struct("BasicAuth")
            .field("users", &users)
            .finish_non_exhaustive()
    }
}

/// Decoded `user:password` and its cache digest.
struct Credentials {
    decoded: Vec<u8>,
    colon: usize,
    digest: [u8; 32],
}

enum Precheck {
    Deny,
    Allow,
    Verify(Credentials),
}

impl BasicAuth {
    /// `users` maps user names to bcrypt hashes (`$2y$`, `$2a$`, `$2b$`). Hashes are checked
    /// here so that a typo fails at startup instead of locking the user out.
    pub fn new(users: HashMap<String, String>) -> Result<BasicAuth> {
        let mut max_cost = 0;
        for (user, hash) in &users {
            if user.contains(':') {
                bail!("user {user:?}: names cannot contain ':' (basic auth splits on it)");
            }
            let parts: bcrypt::HashParts = hash
                .parse()
                .map_err(|_| anyhow!("user {user:?}: password is not a valid bcrypt hash"))?;
            max_cost = max_cost.max(parts.get_cost());
        }
        let mut cache_key = [0u8; 32];
        let mut salt = [0u8; 16];
        let random = ring::default_provider().secure_random;
        random
            .fill(&mut cache_key)
            .map_err(|_| anyhow!("no system randomness"))?;
        random
            .fill(&mut salt)
            .map_err(|_| anyhow!("no system randomness"))?;
        // Toolkit's dummy cost (10) when there are no users to match.
        let cost = if users.is_empty() { 10 } else { max_cost };
        let dummy_hash = bcrypt::hash_with_salt(cache_key, cost, salt)
            .context("cannot create dummy bcrypt hash")?
            .to_string();
        Ok(BasicAuth {
            users,
            dummy_hash,
            cache_key,
            cache: Mutex::new(VecDeque::with_capacity(CACHE_CAPACITY)),
            bcrypt_lock: Mutex::new(()),
            #[cfg(test)]
            bcrypt_runs: Default::default(),
        })
    }

    /// Whether the `Authorization` header carries valid Basic credentials. May block for a
    /// bcrypt verification; async callers should prefer [`middleware`], which moves that to
    /// a blocking thread.
    pub fn check(&self, authorization_header: Option<&axum::http::HeaderValue>) -> bool {
        match self.precheck(authorization_header) {
            Precheck::Deny => false,
            Precheck::Allow => true,
            Precheck::Verify(creds) => self.verify(&creds),
        }
    }

    /// [`check`](Self::check) with bcrypt moved off the async runtime; cache hits stay inline.
    async fn check_async(self: &Arc<Self>, header: Option<&HeaderValue>) -> bool {
        match self.precheck(header) {
            Precheck::Deny => false,
            Precheck::Allow => true,
            Precheck::Verify(_) => {
                let (this, header) = (Arc::clone(self), header.cloned());
                // A panic in the blocking task denies access rather than propagating.
                tokio::task::spawn_blocking(move || this.check(header.as_ref()))
                    .await
                    .unwrap_or(false)
            }
        }
    }

    /// Cheap part: parse the header and consult the cache.
    fn precheck(&self, header: Option<&HeaderValue>) -> Precheck {
        let Some(decoded) = header.and_then(|h| decode_basic(h.as_bytes())) else {
            return Precheck::Deny;
        };
        let Some(colon) = decoded.iter().position(|&b| b == b':') else {
            return Precheck::Deny;
        };
        let digest: [u8; 32] = Sha256::new()
            .chain_update(self.cache_key)
            .chain_update(&decoded)
            .finalize()
            .into();
        // Scan every entry with a branch-free compare so timing says nothing about contents.
        let hit = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .fold(false, |hit, entry| hit | ct_eq(entry, &digest));
        if hit {
            Precheck::Allow
        } else {
            Precheck::Verify(Credentials {
                decoded,
                colon,
                digest,
            })
        }
    }

    /// Expensive part: bcrypt, then remember success. Failures are not cached, so garbage
    /// cannot evict the scraper's entry.
    fn verify(&self, creds: &Credentials) -> bool {
        let (user, password) = (
            &creds.decoded[..creds.colon],
            &creds.decoded[creds.colon + 1..],
        );
        let known = std::str::from_utf8(user)
            .ok()
            .and_then(|u| self.users.get(u));
        let hash = known.unwrap_or(&self.dummy_hash);
        let matched = {
            let _serialized = self
                .bcrypt_lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            #[cfg(test)]
            self.bcrypt_runs
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            bcrypt::verify(password, hash).unwrap_or(false)
        };
        // `known` is checked after bcrypt so both paths cost the same.
        let ok = matched && known.is_some();
        if ok {
            let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            if !cache.iter().any(|e| e == &creds.digest) {
                if cache.len() >= CACHE_CAPACITY {
                    cache.pop_front();
                }
                cache.push_back(creds.digest);
            }
        }
        ok
    }
}

fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `Basic <base64>` (scheme case-insensitive, RFC 7617) to the decoded bytes.
fn decode_basic(header: &[u8]) -> Option<Vec<u8>> {
    let (scheme, rest) = header.split_at(header.iter().position(|&b| b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"Basic") {
        return None;
    }
    decode_base64(rest.trim_ascii())
}

/// Standard-alphabet base64, padding optional. Small enough to not warrant a dependency.
fn decode_base64(input: &[u8]) -> Option<Vec<u8>> {
    let data = input
        .strip_suffix(b"==")
        .or_else(|| input.strip_suffix(b"="))
        .unwrap_or(input);
    let mut out = Vec::with_capacity(data.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in data {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // A lone trailing character (6 bits) or non-zero leftover bits is not canonical base64.
    (bits < 6 && acc == 0).then_some(out)
}

// ---------------------------------------------------------------------------------------
// Middleware

/// axum middleware (use with `axum::middleware::from_fn_with_state`): answers 401 with
/// `WWW-Authenticate: Basic realm="stallwatch"` when auth is configured and the request lacks
/// valid credentials, and sets the configured headers on every response, 401s included.
pub async fn middleware(State(cfg): State<Arc<WebConfig>>, req: Request, next: Next) -> Response {
    let authorized = match &cfg.auth {
        Some(auth) => auth.check_async(req.headers().get(AUTHORIZATION)).await,
        None => true,
    };
    let mut response = if authorized {
        next.run(req).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(WWW_AUTHENTICATE, HeaderValue::from_static(REALM_CHALLENGE))],
            "Unauthorized\n",
        )
            .into_response()
    };
    // The operator's security headers win over whatever a handler set.
    for (name, value) in &cfg.headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    use rustls::{ClientConfig, ClientConnection, Connection, ServerConnection};
    use std::fmt::Write as _;

    type TestResult = Result<()>;

    struct Pki {
        dir: tempfile::TempDir,
        /// Client cert chain + key signed by the CA.
        good_client: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
        /// Self-signed client cert nobody trusts.
        rogue_client: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
        /// The CA that signed the server cert, for the test client to trust.
        ca_der: CertificateDer<'static>,
    }

    fn ca() -> Result<(rcgen::Certificate, KeyPair)> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "stallwatch test CA");
        let key = KeyPair::generate()?;
        Ok((params.self_signed(&key)?, key))
    }

    fn leaf(
        name: &str,
        signer: Option<(&rcgen::Certificate, &KeyPair)>,
    ) -> Result<(rcgen::Certificate, KeyPair)> {
        let params = CertificateParams::new(vec![name.to_string()])?;
        let key = KeyPair::generate()?;
        let cert = match signer {
            Some((ca, ca_key)) => params.signed_by(&key, ca, ca_key)?,
            None => params.self_signed(&key)?,
        };
        Ok((cert, key))
    }

    fn der_pair(
        cert: &rcgen::Certificate,
        key: &KeyPair,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
    }

    /// Writes ca.crt, server.crt, server.key and other.key (a key not matching server.crt).
    fn pki() -> Result<Pki> {
        let dir = tempfile::tempdir()?;
        let (ca, ca_key) = ca()?;
        let (server, server_key) = leaf("localhost", Some((&ca, &ca_key)))?;
        let (client, client_key) = leaf("scraper", Some((&ca, &ca_key)))?;
        let (rogue, rogue_key) = leaf("rogue", None)?;
        std::fs::write(dir.path().join("ca.crt"), ca.pem())?;
        std::fs::write(dir.path().join("server.crt"), server.pem())?;
        std::fs::write(dir.path().join("server.key"), server_key.serialize_pem())?;
        std::fs::write(
            dir.path().join("other.key"),
            KeyPair::generate()?.serialize_pem(),
        )?;
        Ok(Pki {
            good_client: der_pair(&client, &client_key),
            rogue_client: der_pair(&rogue, &rogue_key),
            ca_der: ca.der().clone(),
            dir,
        })
    }

    fn write_config(pki: &Pki, yaml: &str) -> Result<PathBuf> {
        let path = pki.dir.path().join("web.yml");
        std::fs::write(&path, yaml)?;
        Ok(path)
    }

    fn load(pki: &Pki, yaml: &str) -> Result<WebConfig> {
        WebConfig::load(&write_config(pki, yaml)?)
    }

    fn load_err(pki: &Pki, yaml: &str) -> String {
        match load(pki, yaml) {
            Ok(_) => panic!("expected an error for:\n{yaml}"),
            Err(e) => format!("{e:#}"),
        }
    }

    fn tls_yaml(extra: &str) -> String {
        format!("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n{extra}")
    }

    fn client(
        pki: &Pki,
        versions: &[&'static SupportedProtocolVersion],
        cert: Option<&(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> Result<Arc<ClientConfig>> {
        let mut roots = RootCertStore::empty();
        roots.add(pki.ca_der.clone())?;
        let builder = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_protocol_versions(versions)?
            .with_root_certificates(roots);
        Ok(Arc::new(match cert {
            Some((chain, key)) => builder.with_client_auth_cert(chain.clone(), key.clone_key())?,
            None => builder.with_no_client_auth(),
        }))
    }

    /// Runs a handshake in memory; returns the negotiated version or the first error.
    fn handshake(
        server: &Arc<ServerConfig>,
        client: Arc<ClientConfig>,
    ) -> Result<rustls::ProtocolVersion> {
        let mut c = Connection::Client(ClientConnection::new(client, "localhost".try_into()?)?);
        let mut s = Connection::Server(ServerConnection::new(server.clone())?);
        fn pump(from: &mut Connection, to: &mut Connection) -> Result<()> {
            let mut buf = Vec::new();
            while from.wants_write() {
                from.write_tls(&mut buf)?;
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                to.read_tls(&mut rd)?;
                to.process_new_packets()?;
            }
            Ok(())
        }
        for _ in 0..10 {
            pump(&mut c, &mut s)?;
            pump(&mut s, &mut c)?;
            if !c.is_handshaking() && !s.is_handshaking() && !c.wants_write() && !s.wants_write() {
                return s.protocol_version().ok_or_else(|| anyhow!("no version"));
            }
        }
        bail!("handshake did not finish")
    }

    const BOTH: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

    #[test]
    fn client_auth_types_behave_like_go() -> TestResult {
        let pki = pki()?;
        let none = client(&pki, BOTH, None)?;
        let good = client(&pki, BOTH, Some(&pki.good_client))?;
        let rogue = client(&pki, BOTH, Some(&pki.rogue_client))?;
        // (client_auth_type, with CA, accepts [no cert, rogue cert, CA-signed cert])
        let cases = [
            ("NoClientCert", false, [true, true, true]),
            ("RequestClientCert", false, [true, true, true]),
            ("RequireAnyClientCert", true, [false, true, true]),
            ("RequireClientCert", false, [false, true, true]),
            ("VerifyClientCertIfGiven", true, [true, false, true]),
            ("RequireAndVerifyClientCert", true, [false, false, true]),
        ];
        for (auth_type, with_ca, expect) in cases {
            let mut extra = format!("  client_auth_type: {auth_type}\n");
            if with_ca {
                extra.push_str("  client_ca_file: ca.crt\n");
            }
            let cfg = load(&pki, &tls_yaml(&extra))?;
            let tls = cfg.tls.ok_or_else(|| anyhow!("{auth_type}: no TLS"))?;
            assert_eq!(tls.alpn_protocols, vec![b"http/1.1".to_vec()]);
            for (who, cc, want) in [
                ("no cert", &none, expect[0]),
                ("rogue", &rogue, expect[1]),
                ("good", &good, expect[2]),
            ] {
                let got = handshake(&tls, cc.clone());
                assert_eq!(got.is_ok(), want, "{auth_type} with {who}: {got:?}");
            }
        }
        Ok(())
    }

    #[test]
    fn client_auth_misconfigurations() -> TestResult {
        let pki = pki()?;
        let err = load_err(&pki, &tls_yaml("  client_ca_file: ca.crt\n"));
        assert!(err.contains("client_auth_type is NoClientCert"), "{err}");
        let err = load_err(
            &pki,
            &tls_yaml("  client_auth_type: RequireAndVerifyClientCert\n"),
        );
        assert!(err.contains("requires client_ca_file"), "{err}");
        let err = load_err(&pki, &tls_yaml("  client_auth_type: Sometimes\n"));
        assert!(err.contains("unknown variant `Sometimes`"), "{err}");
        Ok(())
    }

    #[test]
    fn tls_versions() -> TestResult {
        let pki = pki()?;
        let tls12_only = client(&pki, &[&rustls::version::TLS12], None)?;
        let cfg = load(&pki, &tls_yaml("  min_version: TLS13\n"))?
            .tls
            .ok_or_else(|| anyhow!("no tls"))?;
        assert!(handshake(&cfg, tls12_only.clone()).is_err());
        let cfg = load(&pki, &tls_yaml("  max_version: TLS12\n"))?
            .tls
            .ok_or_else(|| anyhow!("no tls"))?;
        assert_eq!(
            handshake(&cfg, client(&pki, BOTH, None)?)?,
            rustls::ProtocolVersion::TLSv1_2
        );
        let cfg = load(&pki, &tls_yaml(""))?
            .tls
            .ok_or_else(|| anyhow!("no tls"))?;
        assert_eq!(
            handshake(&cfg, client(&pki, BOTH, None)?)?,
            rustls::ProtocolVersion::TLSv1_3
        );
        assert_eq!(
            handshake(&cfg, tls12_only)?,
            rustls::ProtocolVersion::TLSv1_2
        );

        let err = load_err(&pki, &tls_yaml("  min_version: TLS10\n"));
        assert!(err.contains("min_version: TLS10 is not supported"), "{err}");
        let err = load_err(&pki, &tls_yaml("  max_version: TLS11\n"));
        assert!(err.contains("max_version: TLS11 is not supported"), "{err}");
        let err = load_err(
            &pki,
            &tls_yaml("  min_version: TLS13\n  max_version: TLS12\n"),
        );
        assert!(err.contains("greater than max_version"), "{err}");
        Ok(())
    }

    #[test]
    fn cipher_suites_and_curves() -> TestResult {
        let pki = pki()?;
        let cfg = load(
            &pki,
            &tls_yaml(
                "  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, TLS_AES_128_GCM_SHA256]\n  \
                 curve_preferences: [CurveP384]\n  prefer_server_cipher_suites: false\n",
            ),
        )?
        .tls
        .ok_or_else(|| anyhow!("no tls"))?;
        let p = &cfg.crypto_provider();
        let tls12: Vec<_> = p
            .cipher_suites
            .iter()
            .filter(|s| matches!(s, SupportedCipherSuite::Tls12(_)))
            .map(|s| s.suite())
            .collect();
        assert_eq!(
            tls12,
            [rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]
        );
        assert_eq!(
            p.cipher_suites.len(),
            4,
            "all three TLS 1.3 suites are kept"
        );
        assert_eq!(p.kx_groups.len(), 1);
        assert_eq!(p.kx_groups[0].name(), rustls::NamedGroup::secp384r1);
        let c12 = client(&pki, &[&rustls::version::TLS12], None)?;
        assert_eq!(handshake(&cfg, c12)?, rustls::ProtocolVersion::TLSv1_2);

        let err = load_err(
            &pki,
            &tls_yaml("  cipher_suites: [TLS_RSA_WITH_AES_128_CBC_SHA]\n"),
        );
        assert!(
            err.contains("TLS_RSA_WITH_AES_128_CBC_SHA is not supported"),
            "{err}"
        );
        let err = load_err(&pki, &tls_yaml("  curve_preferences: [CurveP521]\n"));
        assert!(err.contains("CurveP521 is not supported"), "{err}");
        Ok(())
    }

    #[test]
    fn paths_are_relative_to_the_config_file() -> TestResult {
        let pki = pki()?;
        let path = write_config(&pki, &tls_yaml(""))?;
        // Load through a path whose directory is not the current one.
        assert!(WebConfig::load(&path)?.tls.is_some());
        let abs = pki.dir.path().join("server.crt");
        let yaml = format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: server.key\n",
            abs.display()
        );
        assert!(load(&pki, &yaml)?.tls.is_some());
        Ok(())
    }

    #[test]
    fn inline_pem() -> TestResult {
        let pki = pki()?;
        let indent = |s: String| {
            s.lines().fold(String::new(), |mut o, l| {
                let _ = writeln!(o, "    {l}");
                o
            })
        };
        let cert = indent(std::fs::read_to_string(pki.dir.path().join("server.crt"))?);
        let key = indent(std::fs::read_to_string(pki.dir.path().join("server.key"))?);
        let yaml = format!("tls_server_config:\n  cert: |\n{cert}  key: |\n{key}");
        assert!(load(&pki, &yaml)?.tls.is_some());
        let err = load_err(&pki, &format!("{yaml}  cert_file: server.crt\n"));
        assert!(
            err.contains("cannot specify both cert and cert_file"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn file_errors_name_the_file() -> TestResult {
        let pki = pki()?;
        let path = write_config(&pki, "")?;
        let shown = path.display().to_string();

        let err = load_err(
            &pki,
            "tls_server_config:\n  cert_file: missing.crt\n  key_file: server.key\n",
        );
        assert!(err.contains(&shown), "{err}");
        assert!(
            err.contains(&pki.dir.path().join("missing.crt").display().to_string()),
            "{err}"
        );

        let err = load_err(
            &pki,
            "tls_server_config:\n  cert_file: server.key\n  key_file: server.key\n",
        );
        assert!(err.contains("no certificate found in cert_file"), "{err}");
        let err = load_err(
            &pki,
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.crt\n",
        );
        assert!(err.contains("no usable private key in key_file"), "{err}");
        let err = load_err(
            &pki,
            "tls_server_config:\n  cert_file: server.crt\n  key_file: other.key\n",
        );
        assert!(err.contains("cannot use cert_file"), "{err}");
        let err = load_err(&pki, "tls_server_config:\n  cert_file: server.crt\n");
        assert!(err.contains("missing one of key or key_file"), "{err}");

        let err = load_err(&pki, "tls_server_config: [unclosed\n");
        assert!(
            err.contains(&shown) && err.contains("cannot parse"),
            "{err}"
        );

        let err = format!(
            "{:#}",
            WebConfig::load(&pki.dir.path().join("nope.yml"))
                .err()
                .ok_or_else(|| anyhow!("loaded"))?
        );
        assert!(
            err.contains("nope.yml") && err.contains("cannot read file"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn unknown_and_unsupported_keys() -> TestResult {
        let pki = pki()?;
        let err = load_err(&pki, "tls_server_config:\n  cert_fil: server.crt\n");
        assert!(err.contains("unknown field `cert_fil`"), "{err}");
        let err = load_err(&pki, "basic_auth_user:\n  a: b\n");
        assert!(err.contains("unknown field `basic_auth_user`"), "{err}");
        let err = load_err(&pki, &tls_yaml("  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  client_allowed_sans: [scraper]\n"));
        assert!(
            err.contains("client_allowed_sans is not supported"),
            "{err}"
        );
        let err = load_err(&pki, "rate_limit:\n  interval: 1s\n  burst: 5\n");
        assert!(err.contains("rate_limit is not supported"), "{err}");
        // http2 is accepted (warned about when true).
        assert!(load(&pki, "http_server_config:\n  http2: true\n")?
            .tls
            .is_none());
        Ok(())
    }

    #[test]
    fn empty_means_defaults() -> TestResult {
        let pki = pki()?;
        for yaml in [
            "",
            "# nothing\n",
            "tls_server_config:\n",
            "tls_server_config:\n  min_version: TLS13\n",
        ] {
            let cfg = load(&pki, yaml)?;
            assert!(
                cfg.tls.is_none() && cfg.auth.is_none() && cfg.headers.is_empty(),
                "{yaml:?}"
            );
        }
        assert!(load(&pki, "basic_auth_users: {}\n")?.auth.is_none());
        Ok(())
    }

    #[test]
    fn headers() -> TestResult {
        let pki = pki()?;
        let cfg = load(
            &pki,
            "http_server_config:\n  headers:\n    X-Frame-Options: deny\n    Content-Security-Policy: default-src 'self'\n    X-XSS-Protection: ''\n",
        )?;
        let got: Vec<_> = cfg
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap_or("?")))
            .collect();
        assert_eq!(
            got,
            [
                ("content-security-policy", "default-src 'self'"),
                ("x-frame-options", "deny")
            ]
        );
        let err = load_err(
            &pki,
            "http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
        );
        assert!(
            err.contains("invalid value \"allow\" for X-Frame-Options"),
            "{err}"
        );
        let err = load_err(&pki, "http_server_config:\n  headers:\n    Server: me\n");
        assert!(
            err.contains("header \"Server\" can not be configured"),
            "{err}"
        );
        Ok(())
    }

    // ---- basic auth

    fn basic(user: &str, pass: &str) -> HeaderValue {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let raw = format!("{user}:{pass}");
        let mut enc = String::new();
        for chunk in raw.as_bytes().chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
            for i in 0..4 {
                let c = if i <= chunk.len() {
                    ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char
                } else {
                    '='
                };
                enc.push(c);
            }
        }
        HeaderValue::from_str(&format!("Basic {enc}")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn auth(users: &[(&str, &str)]) -> Result<BasicAuth> {
        let users = users
            .iter()
            .map(|(u, p)| Ok((u.to_string(), bcrypt::hash(p, 4)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        BasicAuth::new(users)
    }

    fn runs(a: &BasicAuth) -> usize {
        a.bcrypt_runs.load(std::sync::atomic::Ordering::Relaxed)
    }

    #[test]
    fn base64_decoder() {
        assert_eq!(decode_base64(b"YWxpY2U6cHc="), Some(b"alice:pw".to_vec()));
        assert_eq!(decode_base64(b"YWxpY2U6cHc"), Some(b"alice:pw".to_vec()));
        assert_eq!(decode_base64(b"YQ=="), Some(b"a".to_vec()));
        assert_eq!(decode_base64(b""), Some(vec![]));
        assert_eq!(decode_base64(b"Y"), None);
        assert_eq!(decode_base64(b"YR=="), None, "non-zero trailing bits");
        assert_eq!(decode_base64(b"Y*=="), None);
        for s in ["", "a", "ab", "abc", "abcd", "ü:ß"] {
            let h = basic(s, "");
            assert_eq!(
                decode_basic(h.as_bytes()),
                Some(format!("{s}:").into_bytes()),
                "{s}"
            );
        }
    }

    #[test]
    fn basic_auth_accepts_and_rejects() -> TestResult {
        let a = auth(&[("alice", "secret"), ("bob", "hunter2")])?;
        assert!(a.check(Some(&basic("alice", "secret"))));
        assert!(a.check(Some(&basic("bob", "hunter2"))));
        assert!(!a.check(Some(&basic("alice", "hunter2"))));
        assert!(!a.check(Some(&basic("alice", ""))));
        assert!(!a.check(Some(&basic("Alice", "secret"))));
        assert!(!a.check(None));
        // Scheme is case-insensitive.
        let lower = HeaderValue::from_str(
            &basic("alice", "secret")
                .to_str()?
                .replacen("Basic", "bAsIc", 1),
        )?;
        assert!(a.check(Some(&lower)));
        Ok(())
    }

    #[test]
    fn malformed_headers_are_rejected_without_bcrypt() -> TestResult {
        let a = auth(&[("alice", "secret")])?;
        for bad in [
            "",
            "Basic",
            "Basic ",
            "Bearer YWxpY2U6c2VjcmV0",
            "Basic !!!!",
            "Basic YWxpY2Vfc2VjcmV0",
            "YWxpY2U6c2VjcmV0",
        ] {
            assert!(!a.check(Some(&HeaderValue::from_static(bad))), "{bad:?}");
        }
        assert_eq!(runs(&a), 0);
        Ok(())
    }

    #[test]
    fn unknown_user_still_pays_for_bcrypt() -> TestResult {
        let a = auth(&[("alice", "secret")])?;
        assert!(!a.check(Some(&basic("mallory", "secret"))));
        assert_eq!(runs(&a), 1);
        // The dummy hash costs as much as the most expensive real one.
        let dummy: bcrypt::HashParts = a.dummy_hash.parse()?;
        assert_eq!(dummy.get_cost(), 4);
        Ok(())
    }

    #[test]
    fn bcrypt_variants_verify() -> TestResult {
        let hash = bcrypt::hash("pw", 4)?; // $2b$
        for prefix in ["$2y$", "$2a$", "$2b$"] {
            let h = format!("{prefix}{}", &hash[4..]);
            let a = BasicAuth::new(HashMap::from([("u".to_string(), h)]))?;
            assert!(a.check(Some(&basic("u", "pw"))), "{prefix}");
        }
        let err = BasicAuth::new(HashMap::from([("u".to_string(), "plaintext".to_string())]))
            .err()
            .ok_or_else(|| anyhow!("accepted"))?;
        assert!(
            err.to_string().contains("not a valid bcrypt hash")
                && !err.to_string().contains("plaintext")
        );
        assert!(BasicAuth::new(HashMap::from([("a:b".to_string(), hash)])).is_err());
        Ok(())
    }

    #[test]
    fn cache_hit_skips_bcrypt_and_is_bounded() -> TestResult {
        let a = auth(&[("alice", "secret")])?;
        assert!(a.check(Some(&basic("alice", "secret"))));
        assert!(a.check(Some(&basic("alice", "secret"))));
        assert!(a.check(Some(&basic("alice", "secret"))));
        assert_eq!(runs(&a), 1, "second and third checks hit the cache");
        // Failures are not cached.
        assert!(!a.check(Some(&basic("alice", "wrong"))));
        assert!(!a.check(Some(&basic("alice", "wrong"))));
        assert_eq!(runs(&a), 3);
        assert_eq!(a.cache.lock().map(|c| c.len()).unwrap_or(0), 1);

        let users: Vec<(String, String)> = (0..CACHE_CAPACITY + 6)
            .map(|i| (format!("u{i}"), format!("p{i}")))
            .collect();
        let refs: Vec<(&str, &str)> = users
            .iter()
            .map(|(u, p)| (u.as_str(), p.as_str()))
            .collect();
        let a = auth(&refs)?;
        for (u, p) in &refs {
            assert!(a.check(Some(&basic(u, p))));
        }
        assert_eq!(a.cache.lock().map(|c| c.len()).unwrap_or(0), CACHE_CAPACITY);
        let before = runs(&a);
        assert!(
            a.check(Some(&basic(refs[0].0, refs[0].1))),
            "evicted entry re-verifies"
        );
        assert_eq!(runs(&a), before + 1);
        let last = refs[refs.len() - 1];
        assert!(a.check(Some(&basic(last.0, last.1))));
        assert_eq!(runs(&a), before + 1, "recent entry still cached");
        Ok(())
    }

    #[test]
    fn config_file_basic_auth() -> TestResult {
        let pki = pki()?;
        let hash = bcrypt::hash("pw", 4)?.replacen("$2b$", "$2y$", 1);
        let cfg = load(&pki, &format!("basic_auth_users:\n  alice: {hash}\n"))?;
        let a = cfg.auth.ok_or_else(|| anyhow!("no auth"))?;
        assert!(a.check(Some(&basic("alice", "pw"))));
        assert!(format!("{a:?}").contains("alice") && !format!("{a:?}").contains(&hash));
        let err = load_err(&pki, "basic_auth_users:\n  alice: nothash\n");
        assert!(
            err.contains("basic_auth_users") && err.contains("\"alice\""),
            "{err}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn middleware_enforces_auth_and_sets_headers() -> TestResult {
        use axum::body::Body;
        use tower::ServiceExt as _;

        let cfg = Arc::new(WebConfig {
            tls: None,
            auth: Some(Arc::new(auth(&[("alice", "secret")])?)),
            headers: build_headers(BTreeMap::from([(
                "X-Frame-Options".to_string(),
                "deny".to_string(),
            )]))?,
        });
        let app = axum::Router::new()
            .route("/metrics", axum::routing::get(|| async { "ok" }))
            .layer(axum::middleware::from_fn_with_state(
                cfg.clone(),
                middleware,
            ));
        let call = |h: Option<HeaderValue>| {
            let app = app.clone();
            async move {
                let mut req = axum::http::Request::get("/metrics").body(Body::empty())?;
                if let Some(h) = h {
                    req.headers_mut().insert(AUTHORIZATION, h);
                }
                anyhow::Ok(app.oneshot(req).await?)
            }
        };

        let denied = call(None).await?;
        assert_eq!(denied.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            denied.headers()[WWW_AUTHENTICATE],
            "Basic realm=\"stallwatch\""
        );
        assert_eq!(denied.headers()["x-frame-options"], "deny");
        assert_eq!(
            call(Some(basic("alice", "nope"))).await?.status(),
            StatusCode::UNAUTHORIZED
        );

        let ok = call(Some(basic("alice", "secret"))).await?;
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(ok.headers()["x-frame-options"], "deny");
        assert!(ok.headers().get(WWW_AUTHENTICATE).is_none());
        assert_eq!(
            call(Some(basic("alice", "secret"))).await?.status(),
            StatusCode::OK
        );
        assert_eq!(
            runs(cfg.auth.as_deref().ok_or_else(|| anyhow!("no auth"))?),
            2,
            "second success was cached"
        );

        // No auth configured: everything passes, headers still applied.
        let open = Arc::new(WebConfig {
            headers: cfg.headers.clone(),
            ..WebConfig::default()
        });
        let app = axum::Router::new()
            .route("/", axum::routing::get(|| async { "ok" }))
            .layer(axum::middleware::from_fn_with_state(open, middleware));
        let resp = app
            .oneshot(axum::http::Request::get("/").body(Body::empty())?)
            .await?;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["x-frame-options"], "deny");
        Ok(())
    }
}
