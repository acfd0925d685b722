//! `/api/v1/*`: the verdict, the timeline and the incidents as JSON (docs/api.md). Every
//! answer is built from memory (the last published verdict, a copy of the ring or of a
//! record); nothing here reads a file, so it answers in milliseconds while a disk is hung.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;

use super::state::AppState;
use crate::recorder::RING_POINTS;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/verdict", get(verdict))
        .route("/api/v1/timeline", get(timeline))
        .route("/api/v1/incidents", get(incidents))
        .route("/api/v1/incidents/{id}", get(incident))
}

fn json<T: Serialize>(code: StatusCode, v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(body) => (
            code,
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode: {e}\n"),
        )
            .into_response(),
    }
}

fn error(code: StatusCode, msg: String) -> Response {
    json(code, &serde_json::json!({ "error": msg }))
}

async fn verdict(State(st): State<Arc<AppState>>) -> Response {
    json(StatusCode::OK, &*st.analysis.published())
}

async fn timeline(
    State(st): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let max = RING_POINTS as f64;
    let seconds = match q.get("seconds").map(|s| s.parse::<f64>()) {
        None => max,
        Some(Ok(s)) if s.is_finite() && s > 0.0 => s.min(max),
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("seconds must be a number of seconds from 1 to {max}"),
            )
        }
    };
    json(StatusCode::OK, &st.analysis.timeline(seconds))
}

async fn incidents(State(st): State<Arc<AppState>>) -> Response {
    json(
        StatusCode::OK,
        &serde_json::json!({ "incidents": st.analysis.incidents() }),
    )
}

async fn incident(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match st.analysis.incident(&id) {
        Some(r) => json(StatusCode::OK, &r),
        None => {
            let shown: String = id
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .take(40)
                .collect();
            error(StatusCode::NOT_FOUND, format!("no incident {shown}"))
        }
    }
}
