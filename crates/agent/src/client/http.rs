//! A small blocking HTTP/1.1 client for the agent's own API: one `GET` per connection
//! (`Connection: close`), over a plain `TcpStream` or rustls (already in the binary for the
//! server), with one deadline for connect, send and receive together. That is all the CLI
//! needs, and it keeps an async runtime and an HTTP client crate out of `stallwatch why`.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// Where the agent is: `http[s]://host[:port][/prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub tls: bool,
    /// As written (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// Path prefix without the trailing `/` (empty for none), for an agent behind a proxy.
    pub prefix: String,
}

impl Url {
    pub fn parse(s: &str) -> Result<Url, String> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else {
            return Err(format!(
                "{s:?}: the agent URL must start with http:// or https://"
            ));
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.contains('@') {
            return Err(format!(
                "{s:?}: put credentials in --agent.user and STALLWATCH_AGENT_PASSWORD, not the URL"
            ));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{s:?}: unclosed '['"))?;
            (h, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(format!("{s:?}: no host"));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| format!("{s:?}: bad port {p:?}"))?,
            None if tls => 443,
            None => 80,
        };
        Ok(Url {
            tls,
            host: host.to_string(),
            port,
            prefix: path.trim_end_matches('/').to_string(),
        })
    }

    /// The `Host` header value.
    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub fn display(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{}{path}", self.authority(), self.prefix)
    }
}

/// How to reach the agent.
pub struct Client {
    pub url: Url,
    /// `Basic …` header value, when a user is configured.
    pub authorization: Option<String>,
    pub timeout: Duration,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The name the server certificate must carry (default: the URL's host).
    pub server_name: Option<String>,
}

pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Bodies larger than this are refused: the API's largest answer (an incident with its
/// timeline and stacks) is a few MiB at most.
const MAX_BODY: usize = 64 << 20;

/// Why a request failed, kept apart so the CLI can tell "not running" from "wrong password".
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("the agent does not answer at {url}: {error}")]
    Unreachable { url: String, error: String },
    #[error("the agent at {url} did not answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("the agent at {url} sent a bad answer: {error}")]
    Bad { url: String, error: String },
}

impl Client {
    pub fn get(&self, path: &str) -> Result<Response, HttpError> {
        let url = self.url.display(path);
        let deadline = Instant::now() + self.timeout;
        let timeout = || HttpError::Timeout {
            url: url.clone(),
            timeout: self.timeout,
        };
        let tcp = self.connect(&url, deadline)?;
        let mut conn: Box<dyn Conn> = match (&self.tls, self.url.tls) {
            (None, true) => {
                return Err(HttpError::Bad {
                    url,
                    error: "https:// without a TLS configuration".into(),
                })
            }
            (Some(cfg), true) => {
                let name = self.server_name.as_deref().unwrap_or(&self.url.host);
                let name = ServerName::try_from(name.to_string()).map_err(|e| HttpError::Bad {
                    url: url.clone(),
                    error: format!("server name {name:?}: {e}"),
                })?;
                let tls = rustls::ClientConnection::new(cfg.clone(), name).map_err(|e| {
                    HttpError::Bad {
                        url: url.clone(),
                        error: e.to_string(),
                    }
                })?;
                Box::new(rustls::StreamOwned::new(tls, tcp))
            }
            (_, false) => Box::new(tcp),
        };
        let mut req = format!(
            "GET {}{path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: stallwatch/{}\r\n\
             Accept: application/json\r\nConnection: close\r\n",
            self.url.prefix,
            self.url.authority(),
            env!("CARGO_PKG_VERSION")
        );
        if let Some(a) = &self.authorization {
            req.push_str(&format!("Authorization: {a}\r\n"));
        }
        req.push_str("\r\n");
        let io_err = |e: std::io::Error| {
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) {
                timeout()
            } else {
                HttpError::Unreachable {
                    url: url.clone(),
                    error: e.to_string(),
                }
            }
        };
        conn.set_deadline(deadline).map_err(|_| timeout())?;
        conn.write_all(req.as_bytes())
            .and_then(|()| conn.flush())
            .map_err(io_err)?;
        let mut buf = Vec::with_capacity(16 * 1024);
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some(resp) = parse(&buf, false).map_err(|error| HttpError::Bad {
                url: url.clone(),
                error,
            })? {
                return Ok(resp);
            }
            conn.set_deadline(deadline).map_err(|_| timeout())?;
            match conn.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                // A TLS peer that closes without close_notify: what arrived may be complete.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(io_err(e)),
            }
            if buf.len() > MAX_BODY {
                return Err(HttpError::Bad {
                    url,
                    error: format!("answer larger than {MAX_BODY} bytes"),
                });
            }
        }
        parse(&buf, true)
            .and_then(|r| r.ok_or_else(|| "connection closed mid-answer".to_string()))
            .map_err(|error| HttpError::Bad { url, error })
    }

    fn connect(&self, url: &str, deadline: Instant) -> Result<TcpStream, HttpError> {
        let unreachable = |error: String| HttpError::Unreachable {
            url: url.to_string(),
            error,
        };
        let addrs = (self.url.host.as_str(), self.url.port)
            .to_socket_addrs()
            .map_err(|e| unreachable(format!("cannot resolve {}: {e}", self.url.host)))?;
        let mut last = String::from("no address");
        for addr in addrs {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(HttpError::Timeout {
                    url: url.to_string(),
                    timeout: self.timeout,
                });
            }
            match TcpStream::connect_timeout(&addr, left) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    return Err(HttpError::Timeout {
                        url: url.to_string(),
                        timeout: self.timeout,
                    })
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(unreachable(last))
    }
}

/// A connection whose every read and write ends by the deadline.
trait Conn: Read + Write {
    fn set_deadline(&mut self, deadline: Instant) -> std::io::Result<()>;
}

fn tcp_deadline(s: &TcpStream, deadline: Instant) -> std::io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(std::io::ErrorKind::TimedOut.into());
    }
    s.set_read_timeout(Some(left))?;
    s.set_write_timeout(Some(left))
}

impl Conn for TcpStream {
    fn set_deadline(&mut self, deadline: Instant) -> std::io::Result<()> {
        tcp_deadline(self, deadline)
    }
}

impl Conn for rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    fn set_deadline(&mut self, deadline: Instant) -> std::io::Result<()> {
        tcp_deadline(&self.sock, deadline)
    }
}

/// The response in `buf` once it is complete: `Ok(None)` while more is needed (or, with
/// `eof`, an error). Handles `Content-Length`, `chunked` and read-to-close bodies.
pub fn parse(buf: &[u8], eof: bool) -> Result<Option<Response>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if eof && !buf.is_empty() {
            Err("truncated headers".into())
        } else if eof {
            Err("empty answer".into())
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP/1.x status line: {status_line:?}"))?;
    let (mut length, mut chunked) = (None, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("bad Content-Length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let body = &buf[end + 4..];
    let done = |body: Vec<u8>| Ok(Some(Response { status, body }));
    if chunked {
        return match dechunk(body)? {
            Some(b) => done(b),
            None if eof => Err("connection closed inside a chunked body".into()),
            None => Ok(None),
        };
    }
    match length {
        Some(n) if body.len() >= n => done(body[..n].to_vec()),
        Some(n) if eof => Err(format!("body has {} of {n} bytes", body.len())),
        Some(_) => Ok(None),
        None if eof => done(body.to_vec()),
        None => Ok(None),
    }
}

/// A complete chunked body, decoded; `Ok(None)` when it has not all arrived yet.
fn dechunk(mut rest: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_text = std::str::from_utf8(&rest[..eol]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            // Trailers (none expected) end with an empty line.
            return Ok(rest.windows(2).any(|w| w == b"\r\n").then_some(out));
        }
        if rest.len() < size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// The rustls client config: the CA certificates of `ca_file` (PEM), or the system bundle.
pub fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>> {
    const SYSTEM: &str = "/etc/ssl/certs/ca-certificates.crt";
    let path: PathBuf = ca_file.map_or_else(|| PathBuf::from(SYSTEM), Path::to_path_buf);
    let mut roots = rustls::RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&path)
        .and_then(|it| it.collect::<Result<_, _>>())
        .with_context(|| {
            format!(
                "reading CA certificates from {}{}",
                path.display(),
                if ca_file.is_none() {
                    " (give the agent's CA with --agent.ca-file)"
                } else {
                    ""
                }
            )
        })?;
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        bail!("no usable CA certificate in {}", path.display());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("http://127.0.0.1:10139").unwrap();
        assert_eq!(
            u,
            Url {
                tls: false,
                host: "127.0.0.1".into(),
                port: 10139,
                prefix: String::new()
            }
        );
        assert_eq!(
            u.display("/api/v1/verdict"),
            "http://127.0.0.1:10139/api/v1/verdict"
        );
        let u = Url::parse("https://[::1]:8443/stallwatch/").unwrap();
        assert!(u.tls);
        assert_eq!(
            (u.host.as_str(), u.port, u.prefix.as_str()),
            ("::1", 8443, "/stallwatch")
        );
        assert_eq!(u.authority(), "[::1]:8443");
        assert_eq!(Url::parse("https://node").unwrap().port, 443);
        for bad in [
            "127.0.0.1:10139",
            "ftp://x",
            "http://",
            "http://h:99999",
            "http://u:p@h:1",
            "http://[::1",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn content_length_and_partial_answers() {
        let full =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        for cut in 0..full.len() {
            assert!(parse(&full[..cut], false).unwrap().is_none(), "cut {cut}");
            assert!(parse(&full[..cut], true).is_err(), "cut {cut} at eof");
        }
        let r = parse(full, false).unwrap().unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{}"[..]));
        let r = parse(b"HTTP/1.0 404 Not Found\r\n\r\nnope", true)
            .unwrap()
            .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &b"nope"[..]));
        assert!(parse(b"SSH-2.0-OpenSSH\r\n\r\n", true).is_err());
    }

    #[test]
    fn chunked_bodies() {
        let full = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n";
        for cut in 0..full.len() {
            assert!(parse(&full[..cut], false).unwrap().is_none(), "cut {cut}");
        }
        assert_eq!(parse(full, false).unwrap().unwrap().body, b"Wikipedia");
        assert!(parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            false
        )
        .is_err());
    }

    #[test]
    fn unreachable_is_fast_and_says_so() {
        // A port nobody listens on: bind one, learn its number, close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = Client {
            url: Url::parse(&format!("http://127.0.0.1:{port}")).unwrap(),
            authorization: None,
            timeout: Duration::from_secs(2),
            tls: None,
            server_name: None,
        };
        let e = c.get("/api/v1/verdict").err().unwrap();
        assert!(matches!(e, HttpError::Unreachable { .. }), "{e}");
        assert!(e.to_string().contains("does not answer"), "{e}");
    }
}
