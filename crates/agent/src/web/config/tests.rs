//! `WebConfig::load` on real files: TLS (handshakes in memory against the built config),
//! headers, basic-auth hashes, and the error messages.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::crypto::ring;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{
    ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig, ServerConnection,
    SupportedCipherSuite, SupportedProtocolVersion,
};

use super::WebConfig;

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
#[test]
fn config_file_basic_auth() -> TestResult {
    let pki = pki()?;
    let hash = bcrypt::hash("pw", 4)?.replacen("$2b$", "$2y$", 1);
    let cfg = load(&pki, &format!("basic_auth_users:\n  alice: {hash}\n"))?;
    let a = cfg.auth.ok_or_else(|| anyhow!("no auth"))?;
    assert!(format!("{a:?}").contains("alice") && !format!("{a:?}").contains(&hash));
    let err = load_err(&pki, "basic_auth_users:\n  alice: nothash\n");
    assert!(
        err.contains("basic_auth_users") && err.contains("\"alice\""),
        "{err}"
    );
    Ok(())
}

#[test]
fn bcrypt_cost_is_bounded_and_the_error_names_user_and_file() -> TestResult {
    let pki = pki()?;
    let path = write_config(&pki, "")?;
    // A real cost-4 hash with its cost field rewritten: parsing is all that happens at load
    // for a rejected cost, so this cannot hang even though cost 31 would take years.
    let hash = bcrypt::hash("pw", 4)?;
    for (cost, want) in [
        ("31", "bcrypt cost 31 is above the maximum 14"),
        ("15", "bcrypt cost 15 is above the maximum 14"),
        ("03", "bcrypt cost 3 is below bcrypt's minimum 4"),
    ] {
        let bad = format!("{}{cost}{}", &hash[..4], &hash[6..]);
        let err = load_err(&pki, &format!("basic_auth_users:\n  alice: {bad}\n"));
        assert!(
            err.contains(want)
                && err.contains("\"alice\"")
                && err.contains(&path.display().to_string()),
            "{err}"
        );
        assert!(!err.contains(&bad), "no hash in the message: {err}");
    }
    Ok(())
}
