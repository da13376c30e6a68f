//! Operations endpoints.

use std::sync::atomic::Ordering;

use hyper::{Response, StatusCode};

use super::{App, Body, json_response};

/// `GET /healthz`: the process is up and answering.
pub fn healthz(app: &App) -> Response<Body> {
    json_response(
        StatusCode::OK,
        &serde_json::json!({
            "status": "ok",
            "orders": app.broker().len(),
            "seq": app.broker().last_seq(),
            "event_streams": app.open_streams(),
        }),
    )
}

/// `GET /readyz`: 200 once the broker has recovered and serves; 503 before,
/// and after the journal failed to write.
pub fn readyz(app: &App) -> Response<Body> {
    if app.broker().journal().is_some_and(|j| j.failed()) {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"status": "journal failed: changes are not durable; see the log"}),
        );
    }
    if app.ready.load(Ordering::Acquire) {
        json_response(StatusCode::OK, &serde_json::json!({"status": "ready"}))
    } else {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"status": "starting"}),
        )
    }
}
