//! Basic auth: header parsing, the two caches, bcrypt variants and the middleware's answers
//! (401, 429 with `Retry-After`, configured headers).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use anyhow::{anyhow, Result};
use axum::http::header::{AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};

use super::*;
use crate::web::config::{build_headers, WebConfig};

type TestResult = Result<()>;

fn basic(user: &str, pass: &str) -> HeaderValue {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
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

fn runs(a: &BasicAuth) -> u64 {
    a.stats.bcrypt_runs.load(Ordering::Relaxed)
}

fn len(list: &Mutex<VecDeque<[u8; 32]>>) -> usize {
    list.lock().map(|c| c.len()).unwrap_or(0)
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
    assert_eq!(len(&a.cache), 1);

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
    assert_eq!(len(&a.cache), CACHE_CAPACITY);
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
fn failures_are_remembered_apart_from_successes() -> TestResult {
    let a = auth(&[("alice", "secret")])?;
    assert!(a.check(Some(&basic("alice", "secret"))));
    // The same wrong password, again and again: one bcrypt.
    for _ in 0..5 {
        assert!(!a.check(Some(&basic("alice", "wrong"))));
    }
    assert!(!a.check(Some(&basic("mallory", "x"))));
    assert!(!a.check(Some(&basic("mallory", "x"))));
    assert_eq!(
        runs(&a),
        3,
        "one good, one wrong password, one unknown user"
    );
    // A flood of distinct wrong passwords fills its own list, bounded, and never evicts the
    // verified scraper.
    for i in 0..FAILED_CAPACITY + 10 {
        assert!(!a.check(Some(&basic("alice", &format!("guess{i}")))));
    }
    assert_eq!(len(&a.failed), FAILED_CAPACITY);
    let before = runs(&a);
    assert!(a.check(Some(&basic("alice", "secret"))));
    assert_eq!(runs(&a), before, "the scraper is still cached");
    Ok(())
}

#[test]
fn costs_outside_bcrypts_useful_range_are_refused() -> TestResult {
    let hash = bcrypt::hash("pw", 4)?;
    let with_cost = |c: &str| format!("{}{c}{}", &hash[..4], &hash[6..]);
    // 14, the highest allowed, would spend a second hashing the dummy: 15 shows the bound.
    for (c, ok) in [("04", true), ("15", false), ("31", false), ("03", false)] {
        let got = BasicAuth::new(HashMap::from([("u".to_string(), with_cost(c))]));
        assert_eq!(got.is_ok(), ok, "cost {c}: {got:?}");
    }
    Ok(())
}

fn app_with(cfg: &Arc<WebConfig>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(|| async { "ok" }))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(Guard::from(&**cfg)),
            middleware,
        ))
}

async fn call(app: &axum::Router, h: Option<HeaderValue>) -> Result<axum::response::Response> {
    use tower::ServiceExt as _;
    let mut req = axum::http::Request::get("/metrics").body(axum::body::Body::empty())?;
    if let Some(h) = h {
        req.headers_mut().insert(AUTHORIZATION, h);
    }
    Ok(app.clone().oneshot(req).await?)
}

#[tokio::test]
async fn full_queue_answers_429_but_cached_scrapers_pass() -> TestResult {
    let a = Arc::new(auth(&[("alice", "secret"), ("bob", "pw")])?);
    let cfg = Arc::new(WebConfig {
        auth: Some(Arc::clone(&a)),
        ..WebConfig::default()
    });
    let app = app_with(&cfg);
    // alice is verified once (cached); then the one verification slot of this client (no
    // address: handler tests) is taken by a job that waits for us.
    assert_eq!(
        call(&app, Some(basic("alice", "secret"))).await?.status(),
        200
    );
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let held = a
        .gate
        .submit(None, move || wait.recv().is_ok())
        .ok_or_else(|| anyhow!("gate full"))?;

    let busy = call(&app, Some(basic("bob", "pw"))).await?;
    assert_eq!(busy.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(busy.headers()[RETRY_AFTER], "2");
    assert!(busy.headers().get(WWW_AUTHENTICATE).is_none());
    assert_eq!(
        call(&app, Some(basic("alice", "secret"))).await?.status(),
        200,
        "cached credentials never queue"
    );
    assert_eq!(
        call(&app, None).await?.status(),
        401,
        "no credentials: no queue"
    );

    release.send(())?;
    assert!(held.await?);
    assert_eq!(call(&app, Some(basic("bob", "pw"))).await?.status(), 200);
    assert_eq!(a.stats.rejected_busy.load(Ordering::Relaxed), 1);
    assert_eq!(a.stats.rejected_missing.load(Ordering::Relaxed), 1);
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
            Arc::new(Guard::from(&*cfg)),
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
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(Guard::from(&*open)),
            middleware,
        ));
    let resp = app
        .oneshot(axum::http::Request::get("/").body(Body::empty())?)
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-frame-options"], "deny");
    Ok(())
}
