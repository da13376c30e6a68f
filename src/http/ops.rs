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

/// `GET /cluster`: this node's view of the cluster; outside a cluster,
/// role `single`.
pub fn cluster(app: &App) -> Response<Body> {
    match app.broker().cluster() {
        Some(cluster) => json_response(StatusCode::OK, &cluster.status()),
        None => json_response(
            StatusCode::OK,
            &serde_json::json!({
                "node_id": "",
                "role": "single",
                "leader": null,
                "applied_seq": app.broker().last_seq().0,
                "stream_seq": app.broker().last_seq().0,
            }),
        ),
    }
}

/// `GET /readyz`: 200 once the broker has recovered and serves; 503 before,
/// and after the journal failed to write.
pub fn readyz(app: &App) -> Response<Body> {
    let starting = app
        .broker()
        .cluster()
        .is_some_and(|c| c.role() == crate::cluster::Role::Starting);
    let (status, text) = if app.broker().journal().is_some_and(|j| j.failed()) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "journal failed: changes are not durable; see the log",
        )
    } else if app.ready.load(Ordering::Acquire) && !starting {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    };
    json_response(status, &Readiness { status: text })
}
