//! The routes: `/metrics` (or `--web.telemetry-path`), `/healthz`, and `/`. Handlers only
//! encode snapshots already in memory; TLS and basic auth come from `--web.config.file`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tower_http::compression::CompressionLayer;

use super::auth;
use super::config::WebConfig;
pub use super::state::AppState;
use crate::metrics::exposition::{
    fix_infinities, openmetrics_to_text, wants_openmetrics, OPENMETRICS_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
};

pub fn app(state: Arc<AppState>, web: Option<Arc<WebConfig>>) -> Router {
    let path = if state.telemetry_path.starts_with('/') {
        state.telemetry_path.clone()
    } else {
        format!("/{}", state.telemetry_path)
    };
    let mut router = Router::new()
        .route(&path, get(metrics))
        .route("/healthz", get(healthz))
        .route("/", get(super::page::index))
        .merge(super::api::routes())
        .with_state(state)
        .layer(CompressionLayer::new());
    if let Some(web) = web {
        router = router.layer(axum::middleware::from_fn_with_state(
            Arc::new(auth::Guard::from(&*web)),
            auth::middleware,
        ));
    }
    router
}

async fn metrics(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let mut body = String::with_capacity(32 * 1024);
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &st.registry) {
        tracing::error!(error = %e, "Cannot encode metrics.");
        return (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response();
    }
    let body = fix_infinities(body);
    // The encoding's garbage is freed by now; the body goes when it is sent.
    crate::memory::trim_soon();
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    // The format depends on `Accept`, so caches must key on it; the compression layer adds
    // `Accept-Encoding` to `Vary` itself.
    let vary = (header::VARY, "Accept");
    if wants_openmetrics(accept) {
        (
            [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE), vary],
            body,
        )
            .into_response()
    } else {
        (
            [(header::CONTENT_TYPE, TEXT_CONTENT_TYPE), vary],
            openmetrics_to_text(&body),
        )
            .into_response()
    }
}

/// 200 while the samplers publish; 503 when the host sampler's last snapshot is older than
/// ten intervals (at least 30 s) — its thread is wedged or panics at every tick, which no
/// source timeout explains. Either way the body lists every source whose reader or sampler
/// panicked and was restarted, with when (the supervisor's record; the counts are in
/// `stallwatch_source_errors_total{kind="panic"}`).
async fn healthz(State(st): State<Arc<AppState>>) -> Response {
    let node = st.node.load();
    let snap = &node.view.host;
    let limit = (st.host_config.load().interval * 10).max(Duration::from_secs(30));
    let now = std::time::Instant::now();
    let mut restarts = String::new();
    for s in node.sources() {
        let n = s.errors.get(stallwatch_collector::ErrorKind::Panic);
        if let (true, Some(t)) = (n > 0, s.last_panic) {
            restarts.push_str(&format!(
                "source {} restarted after {n} panic(s), the last {:.0}s ago\n",
                s.name,
                now.saturating_duration_since(t).as_secs_f64()
            ));
        }
    }
    let (code, head) = match snap
        .taken
        .map(|t| SystemTime::now().duration_since(t).unwrap_or_default())
    {
        Some(age) if age <= limit => (StatusCode::OK, "ok\n".to_string()),
        Some(age) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "sampler stalled: last snapshot {:.1}s ago\n",
                age.as_secs_f64()
            ),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: no snapshot yet\n".to_string(),
        ),
    };
    (code, head + &restarts).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arc_swap::ArcSwap;
    use prometheus_client::registry::Registry;
    use stallwatch_collector::sample::HostConfig;

    use crate::node::Node;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use crate::metrics::host::HostCollector;
    use crate::metrics::selfmon::{ReloadStatus, SelfCollector};
    use stallwatch_collector::sample::HostSnapshot;

    fn node_of(snap: HostSnapshot) -> Arc<Node> {
        Arc::new(Node::of_host(snap))
    }

    fn state(snap: HostSnapshot) -> Arc<AppState> {
        let node = Arc::new(ArcSwap::new(node_of(snap)));
        let mut registry = Registry::with_prefix("stallwatch");
        registry.register_collector(Box::new(HostCollector { node: node.clone() }));
        registry.register_collector(Box::new(SelfCollector {
            node: node.clone(),
            reload: Arc::new(ReloadStatus::new()),
            start_time: 1.0,
        }));
        Arc::new(AppState {
            registry,
            telemetry_path: "/metrics".into(),
            node,
            host_config: Arc::new(ArcSwap::from_pointee(HostConfig::default())),
            analysis: crate::recorder::Analysis::new(Default::default(), Default::default()),
        })
    }

    fn sample_snapshot() -> HostSnapshot {
        let roots = stallwatch_collector::Roots::default();
        let mut s = HostSnapshot {
            taken: Some(SystemTime::now()),
            page_size: 4096,
            clock_ticks: 100,
            ..HostSnapshot::default()
        };
        s.stat = stallwatch_collector::proc::stat::read(&roots)
            .ok()
            .flatten();
        s.meminfo = stallwatch_collector::proc::meminfo::read(&roots)
            .ok()
            .flatten();
        s
    }

    async fn get(
        app: Router,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, Vec<u8>) {
        let mut req = Request::builder().uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), 16 << 20)
            .await
            .unwrap()
            .to_vec();
        (status, headers, body)
    }

    #[tokio::test]
    async fn metrics_classic_text_by_default() {
        let (st, h, body) = get(app(state(sample_snapshot()), None), "/metrics", &[]).await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(h[header::CONTENT_TYPE], TEXT_CONTENT_TYPE);
        let body = String::from_utf8(body).unwrap();
        assert!(
            body.contains("# TYPE stallwatch_procs_blocked gauge\n"),
            "{body}"
        );
        assert!(body.contains("# TYPE stallwatch_context_switches_total counter\n"));
        assert!(body.contains("stallwatch_build_info{"));
        assert!(!body.contains("# EOF"));
    }

    #[tokio::test]
    async fn metrics_openmetrics_when_accepted() {
        let accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
        let (st, h, body) = get(
            app(state(sample_snapshot()), None),
            "/metrics",
            &[("accept", accept)],
        )
        .await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(h[header::CONTENT_TYPE], OPENMETRICS_CONTENT_TYPE);
        let body = String::from_utf8(body).unwrap();
        assert!(body.ends_with("# EOF\n"));
        assert!(body.contains("# TYPE stallwatch_context_switches counter\n"));
    }

    #[tokio::test]
    async fn metrics_gzip_when_asked() {
        let (st, h, body) = get(
            app(state(sample_snapshot()), None),
            "/metrics",
            &[("accept-encoding", "gzip")],
        )
        .await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(h[header::CONTENT_ENCODING], "gzip");
        let vary: Vec<_> = h.get_all(header::VARY).iter().collect();
        assert_eq!(vary, ["Accept", "accept-encoding"]);
        let mut d = flate2::read::GzDecoder::new(&body[..]);
        let mut s = String::new();
        std::io::Read::read_to_string(&mut d, &mut s).unwrap();
        assert!(s.contains("stallwatch_procs_blocked "));
    }

    /// The supervisor's record: a source whose reader or sampler panicked (and was restarted by
    /// the driver) is listed with its count, and the node stays healthy while it publishes.
    #[tokio::test]
    async fn healthz_lists_sources_restarted_after_a_panic() {
        use stallwatch_collector::sample::SourceStatus;
        use stallwatch_collector::ErrorKind;
        let mut s = sample_snapshot();
        let mut vmstat = SourceStatus::new("vmstat");
        vmstat.count_error(ErrorKind::Panic);
        vmstat.count_error(ErrorKind::Panic);
        vmstat.last_panic = Some(std::time::Instant::now());
        s.sources = vec![SourceStatus::new("stat"), vmstat];
        let (st, _, body) = get(app(state(s), None), "/healthz", &[]).await;
        let body = String::from_utf8(body).unwrap();
        assert_eq!(st, StatusCode::OK, "{body}");
        assert!(body.starts_with("ok\n"), "{body}");
        assert!(
            body.contains("source vmstat restarted after 2 panic(s), the last 0s ago"),
            "{body}"
        );
        assert!(!body.contains("source stat"), "{body}");
    }

    #[tokio::test]
    async fn healthz_and_index() {
        let (st, _, _) = get(app(state(sample_snapshot()), None), "/healthz", &[]).await;
        assert_eq!(st, StatusCode::OK);
        let (st, _, body) = get(app(state(HostSnapshot::default()), None), "/healthz", &[]).await;
        assert_eq!(
            st,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            String::from_utf8_lossy(&body)
        );
        let old = HostSnapshot {
            taken: Some(SystemTime::now() - Duration::from_secs(600)),
            ..HostSnapshot::default()
        };
        let (st, _, _) = get(app(state(old), None), "/healthz", &[]).await;
        assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
        // `/`: the node page for browsers, a plain-text index for curl.
        let (st, h, body) = get(
            app(state(sample_snapshot()), None),
            "/",
            &[("accept", "text/html,application/xhtml+xml,*/*;q=0.8")],
        )
        .await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert!(h[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .starts_with("default-src 'none'; script-src 'sha256-"));
        assert_eq!(String::from_utf8(body).unwrap(), super::super::page::page());
        let (st, h, body) = get(
            app(state(sample_snapshot()), None),
            "/",
            &[("accept", "*/*")],
        )
        .await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(h[header::CONTENT_TYPE], "text/plain; charset=utf-8");
        assert_eq!(h[header::VARY], "Accept");
        let body = String::from_utf8(body).unwrap();
        assert!(
            body.contains("/metrics ") && body.contains("/api/v1/verdict"),
            "{body}"
        );
        let (st, _, _) = get(app(state(sample_snapshot()), None), "/nope", &[]).await;
        assert_eq!(st, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn vanished_disk_leaves_no_series() {
        use stallwatch_collector::proc::diskstats::DiskStat;
        let mut s = sample_snapshot();
        s.disks = vec![DiskStat {
            name: "vdz".into(),
            ..DiskStat::default()
        }];
        let st = state(s.clone());
        let (_, _, body) = get(app(st.clone(), None), "/metrics", &[]).await;
        assert!(String::from_utf8(body).unwrap().contains("device=\"vdz\""));
        s.disks.clear();
        st.node.store(node_of(s));
        let (_, _, body) = get(app(st, None), "/metrics", &[]).await;
        let body = String::from_utf8(body).unwrap();
        assert!(!body.contains("vdz"));
        assert!(
            !body.contains("stallwatch_disk_reads_completed"),
            "no empty family either"
        );
    }
}
