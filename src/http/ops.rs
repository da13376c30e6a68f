//! Operations endpoints.

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
