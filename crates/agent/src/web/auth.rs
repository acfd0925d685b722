//! Basic auth (`basic_auth_users`: user → bcrypt hash) and the middleware that enforces it and
//! sets the configured response headers.
//!
//! bcrypt is slow on purpose, so a login is the one request a client can make expensive. The
//! costs are bounded three ways:
//! - credentials that verified before are answered from a cache (a keyed SHA-256), and so are
//!   credentials that *failed* before: a scraper, or a flood, repeating one password costs one
//!   bcrypt, not one per request;
//! - everything else goes through [`Gate`]: one verification at a time on one thread, a queue
//!   short enough to drain in about two seconds, at most two queued per client address, and an
//!   immediate `429 Too Many Requests` with `Retry-After` beyond that. A flood of wrong
//!   passwords from one address then costs at most one core and never stands between another
//!   scraper and its first login;
//! - hashes with a cost above [`MAX_BCRYPT_COST`] are refused at load.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rustls::crypto::ring;
use sha2::{Digest, Sha256};

use super::gate::Gate;

/// Realm sent in `WWW-Authenticate` challenges.
const REALM_CHALLENGE: &str = "Basic realm=\"stallwatch\"";
/// Verified credentials remembered per [`BasicAuth`]; scrapers reuse one or two credentials,
/// so a small cap is plenty and bounds what a client can make us store.
const CACHE_CAPACITY: usize = 64;
/// Credentials that failed, remembered so that repeating them costs a hash, not a bcrypt.
/// Failures never evict successes (separate lists).
const FAILED_CAPACITY: usize = 256;
/// The highest bcrypt cost accepted in `basic_auth_users`. Each step doubles the work: cost 10
/// (`htpasswd -B -C 10`, the toolkit's example) verifies in ~50-100 ms on a server core, 14 in
/// ~1-1.5 s, which is as long as a first login may take inside Prometheus' 10 s scrape timeout
/// with a queue in front of it. Cost 31 would take years (and hang start-up on the dummy hash).
pub const MAX_BCRYPT_COST: u32 = 14;
/// bcrypt's own lower bound; a hash below it can never verify.
const MIN_BCRYPT_COST: u32 = 4;

/// Users and their bcrypt hashes, the two credential caches, and the verification gate.
pub struct BasicAuth {
    users: HashMap<String, String>,
    /// Verified for unknown users so that response time does not reveal which users exist.
    /// Generated with the highest configured cost so it is never the fast path.
    dummy_hash: String,
    /// Per-instance random key mixed into cache digests: the caches then hold nothing an
    /// attacker could brute-force offline at SHA-256 speed, even from a memory dump.
    cache_key: [u8; 32],
    /// SHA-256(cache_key || "user:password") of verified credentials, oldest first.
    cache: Mutex<VecDeque<[u8; 32]>>,
    /// The same digests for credentials that failed verification, oldest first.
    failed: Mutex<VecDeque<[u8; 32]>>,
    gate: Gate,
    pub stats: AuthStats,
}

/// Counters for `stallwatch_http_auth_*` (see `docs/metrics.md`).
#[derive(Debug, Default)]
pub struct AuthStats {
    /// bcrypt verifications actually run.
    pub bcrypt_runs: AtomicU64,
    /// Requests refused: no or malformed `Authorization` header.
    pub rejected_missing: AtomicU64,
    /// Requests refused: wrong user or password (verified now or remembered).
    pub rejected_invalid: AtomicU64,
    /// Requests answered 429 because the verification queue was full for them.
    pub rejected_busy: AtomicU64,
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
    /// No usable `Basic` credentials in the header.
    Missing,
    /// Failed before; no need to ask bcrypt again.
    KnownBad,
    Allow,
    Verify(Credentials),
}

/// What the middleware answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// 401 with a challenge.
    Deny,
    /// 429 with `Retry-After`: the verification queue is full for this client.
    Busy,
}

impl BasicAuth {
    /// `users` maps user names to bcrypt hashes (`$2y$`, `$2a$`, `$2b$`). Hashes are checked
    /// here so that a typo fails at startup instead of locking the user out.
    pub fn new(users: HashMap<String, String>) -> Result<BasicAuth> {
        let mut max_cost = 0;
        let mut names: Vec<&String> = users.keys().collect();
        names.sort();
        for user in names {
            let hash = &users[user];
            if user.contains(':') {
                bail!("user {user:?}: names cannot contain ':' (basic auth splits on it)");
            }
            let parts: bcrypt::HashParts = hash
                .parse()
                .map_err(|_| anyhow!("user {user:?}: password is not a valid bcrypt hash"))?;
            let cost = parts.get_cost();
            if cost > MAX_BCRYPT_COST {
                bail!(
                    "user {user:?}: bcrypt cost {cost} is above the maximum {MAX_BCRYPT_COST} \
                     (every step doubles the time of a login; rehash with \
                     `htpasswd -nBC 10 \"\" | tr -d ':\\n'`)"
                );
            }
            if cost < MIN_BCRYPT_COST {
                bail!(
                    "user {user:?}: bcrypt cost {cost} is below bcrypt's minimum {MIN_BCRYPT_COST}"
                );
            }
            max_cost = max_cost.max(cost);
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
        let started = Instant::now();
        let dummy_hash = bcrypt::hash_with_salt(cache_key, cost, salt)
            .context("cannot create dummy bcrypt hash")?
            .to_string();
        // Hashing costs what a verification costs: it sizes the queue.
        let gate = Gate::new(started.elapsed()).context("cannot start the bcrypt thread")?;
        Ok(BasicAuth {
            users,
            dummy_hash,
            cache_key,
            cache: Mutex::new(VecDeque::with_capacity(CACHE_CAPACITY)),
            failed: Mutex::new(VecDeque::with_capacity(FAILED_CAPACITY)),
            gate,
            stats: AuthStats::default(),
        })
    }

    /// How many verifications may be admitted at once (running and queued).
    pub fn queue_capacity(&self) -> usize {
        self.gate.capacity()
    }

    /// Whether the `Authorization` header carries valid Basic credentials, verified inline
    /// (may take a bcrypt). Requests go through [`BasicAuth::check_async`] instead.
    #[cfg(test)]
    pub fn check(&self, authorization_header: Option<&HeaderValue>) -> bool {
        match self.precheck(authorization_header) {
            Precheck::Missing | Precheck::KnownBad => false,
            Precheck::Allow => true,
            Precheck::Verify(creds) => self.verify(&creds),
        }
    }

    /// The request path: cache hits and malformed headers are answered inline; a bcrypt
    /// verification goes through the gate (or is refused as [`Verdict::Busy`]).
    pub async fn check_async(
        self: &Arc<Self>,
        header: Option<&HeaderValue>,
        client: Option<SocketAddr>,
    ) -> Verdict {
        let count = |c: &AtomicU64| c.fetch_add(1, Ordering::Relaxed);
        let creds = match self.precheck(header) {
            Precheck::Allow => return Verdict::Allow,
            Precheck::Missing => {
                count(&self.stats.rejected_missing);
                return Verdict::Deny;
            }
            Precheck::KnownBad => {
                count(&self.stats.rejected_invalid);
                return Verdict::Deny;
            }
            Precheck::Verify(creds) => creds,
        };
        let this = Arc::clone(self);
        let Some(answer) = self.gate.submit(client, move || this.verify(&creds)) else {
            count(&self.stats.rejected_busy);
            return Verdict::Busy;
        };
        // A dropped job (worker gone) denies rather than allows.
        if answer.await.unwrap_or(false) {
            Verdict::Allow
        } else {
            count(&self.stats.rejected_invalid);
            Verdict::Deny
        }
    }

    /// Cheap part: parse the header and consult the caches.
    fn precheck(&self, header: Option<&HeaderValue>) -> Precheck {
        let Some(decoded) = header.and_then(|h| decode_basic(h.as_bytes())) else {
            return Precheck::Missing;
        };
        let Some(colon) = decoded.iter().position(|&b| b == b':') else {
            return Precheck::Missing;
        };
        let digest: [u8; 32] = Sha256::new()
            .chain_update(self.cache_key)
            .chain_update(&decoded)
            .finalize()
            .into();
        if contains(&self.cache, &digest) {
            Precheck::Allow
        } else if contains(&self.failed, &digest) {
            Precheck::KnownBad
        } else {
            Precheck::Verify(Credentials {
                decoded,
                colon,
                digest,
            })
        }
    }

    /// Expensive part: bcrypt, then remember the outcome. Failures go to their own list, so
    /// garbage cannot evict the scraper's entry.
    fn verify(&self, creds: &Credentials) -> bool {
        let (user, password) = (
            &creds.decoded[..creds.colon],
            &creds.decoded[creds.colon + 1..],
        );
        let known = std::str::from_utf8(user)
            .ok()
            .and_then(|u| self.users.get(u));
        let hash = known.unwrap_or(&self.dummy_hash);
        self.stats.bcrypt_runs.fetch_add(1, Ordering::Relaxed);
        let matched = bcrypt::verify(password, hash).unwrap_or(false);
        // `known` is checked after bcrypt so both paths cost the same.
        let ok = matched && known.is_some();
        if ok {
            remember(&self.cache, creds.digest, CACHE_CAPACITY);
        } else {
            remember(&self.failed, creds.digest, FAILED_CAPACITY);
        }
        ok
    }
}

/// Scans every entry with a branch-free compare so timing says nothing about contents.
fn contains(list: &Mutex<VecDeque<[u8; 32]>>, digest: &[u8; 32]) -> bool {
    list.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .fold(false, |hit, entry| hit | ct_eq(entry, digest))
}

fn remember(list: &Mutex<VecDeque<[u8; 32]>>, digest: [u8; 32], cap: usize) {
    let mut list = list.lock().unwrap_or_else(PoisonError::into_inner);
    if !list.iter().any(|e| e == &digest) {
        if list.len() >= cap {
            list.pop_front();
        }
        list.push_back(digest);
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

/// How long a client refused with 429 should wait: about the time the queue takes to drain.
const RETRY_AFTER_SECS: Duration = Duration::from_secs(2);

/// What the middleware enforces: the basic-auth users (if any) and the operator's headers, as
/// the web config file gives them (`Guard::from(&WebConfig)`).
#[derive(Debug, Default)]
pub struct Guard {
    pub auth: Option<Arc<BasicAuth>>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// axum middleware (use with `axum::middleware::from_fn_with_state`): answers 401 with
/// `WWW-Authenticate: Basic realm="stallwatch"` when auth is configured and the request lacks
/// valid credentials, 429 with `Retry-After` when its verification cannot be queued, and sets
/// the configured headers on every response, 401s and 429s included.
pub async fn middleware(State(cfg): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let verdict = match &cfg.auth {
        Some(auth) => {
            let client = req
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0);
            auth.check_async(req.headers().get(AUTHORIZATION), client)
                .await
        }
        None => Verdict::Allow,
    };
    let mut response = match verdict {
        Verdict::Allow => next.run(req).await,
        Verdict::Deny => (
            StatusCode::UNAUTHORIZED,
            [(WWW_AUTHENTICATE, HeaderValue::from_static(REALM_CHALLENGE))],
            "Unauthorized\n",
        )
            .into_response(),
        Verdict::Busy => (
            StatusCode::TOO_MANY_REQUESTS,
            [(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS.as_secs()))],
            "Too many logins being verified; retry later\n",
        )
            .into_response(),
    };
    // The operator's security headers win over whatever a handler set.
    for (name, value) in &cfg.headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

#[cfg(test)]
mod tests;
