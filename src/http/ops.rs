//! Operations endpoints.

use std::sync::atomic::Ordering;

use hyper::{Response, StatusCode};
use serde::Serialize;
use utoipa::ToSchema;

use super::{App, Body, json_response};
use crate::model::Seq;

/// `/healthz`'s answer.
#[derive(Serialize, ToSchema)]
pub(super) struct Health {
    /// Always "ok".
    status: &'static str,
    /// Orders in memory.
    orders: usize,
    /// The newest event's sequence number.
    seq: Seq,
    /// Event streams open now.
    event_streams: usize,
}

/// `/readyz`'s answer: "ready", "starting", or why the journal failed.
#[derive(Serialize, ToSchema)]
pub(super) struct Readiness {
    status: &'static str,
}

/// `GET /healthz`: the process is up and answering.
pub fn healthz(app: &App) -> Response<Body> {
    json_response(
        StatusCode::OK,
        &Health {
            status: "ok",
            orders: app.broker().len(),
            seq: app.broker().last_seq(),
            event_streams: app.open_streams(),
        },
    )
}

/// `GET /readyz`: 200 once the broker has recovered and serves; 503 before,
/// and after the journal failed to write.
pub fn readyz(app: &App) -> Response<Body> {
    let (status, text) = if app.broker().journal().is_some_and(|j| j.failed()) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "journal failed: changes are not durable; see the log",
        )
    } else if app.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    };
    json_response(status, &Readiness { status: text })
}
