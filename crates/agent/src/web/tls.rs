//! `tls_server_config` of the web config file → a rustls [`ServerConfig`] (ring provider, ALPN
//! `http/1.1` only), with the exporter-toolkit's client-auth policies, TLS versions, cipher
//! suites and curves. Anything rustls cannot do is an error naming the key, never a silent
//! downgrade.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
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

/// The `tls_server_config` section. Empty strings count as unset, as they do for the
/// toolkit's Go structs.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
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

pub(super) fn build_tls(raw: RawTls, dir: &Path) -> Result<Option<Arc<ServerConfig>>> {
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
    // The server speaks HTTP/1.1 only (server.rs), so never let a client negotiate h2.
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
