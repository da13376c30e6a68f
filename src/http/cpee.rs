//! The CPEE endpoints: `POST /orders/intake`, `POST|GET /cpee/next-order`,
//! `POST /cpee/wait`, `GET /cpee/callbacks`, `DELETE /cpee/callbacks/{id}`.
//! Bodies are form-encoded, multipart or JSON, as CPEE sends them; the
//! protocol itself lives in `crate::cpee`.

use std::time::Duration;

use bytes::Bytes;
use hyper::header::HeaderValue;
use hyper::{Method, Response, StatusCode};
use serde_json::Value;

use super::access::Viewer;
use super::body::{Fields, parse_fields};
use super::error::ApiError;
use super::{App, Body, Req, empty, json_bytes, json_response};
use crate::cpee::{Answer, Audience, CpeeCall, CpeeError, Target, WaitAnswer};
use crate::model::{OrderId, Stage};

impl From<CpeeError> for ApiError {
    fn from(e: CpeeError) -> Self {
        let status = match e {
            CpeeError::CallbackNotAllowed(_) => StatusCode::FORBIDDEN,
            CpeeError::BadCallback(_) => StatusCode::BAD_REQUEST,
            CpeeError::TooManyCallbacks | CpeeError::TooManyWaits { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        ApiError::new(status, e.to_string())
    }
}

/// The body's fields, and the query string's after them.
async fn fields(req: &Req) -> Result<Vec<(String, Value)>, ApiError> {
    let mut out: Vec<(String, Value)> = Vec::new();
    if !req.body.is_empty() {
        match parse_fields(&req.headers, req.body.clone()).await? {
            Fields::Json(map) => out.extend(map),
            Fields::Text(pairs) => {
                out.extend(pairs.into_iter().map(|(k, v)| (k, Value::String(v))))
            }
        }
    }
    out.extend(req.query()?.into_iter().map(|(k, v)| (k, Value::String(v))));
    Ok(out)
}

fn text(fields: &[(String, Value)], name: &str) -> Option<String> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| match v {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        })
}

fn later() -> Response<Body> {
    let mut response = empty(StatusCode::OK);
    response
        .headers_mut()
        .insert("cpee-callback", HeaderValue::from_static("true"));
    response
}

fn replay(answer: Answer) -> Response<Body> {
    match answer {
        Answer::Now(body) => json_bytes(StatusCode::OK, body),
        Answer::Later => later(),
    }
}

/// `POST /orders/intake`'s answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(super) struct Intake {
    order_id: OrderId,
}

/// `POST /orders/intake`: any details; the order is queued for dispatch.
pub async fn intake(app: &App, req: &Req) -> Result<Response<Body>, ApiError> {
    let call = CpeeCall::from_headers(&req.headers);
    let key = call.resend_key("intake");
    if let Some(answer) = key.as_deref().and_then(|k| app.cpee.resent(k)) {
        return Ok(replay(answer));
    }
    let details = fields(req)
        .await?
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            (k, text)
        })
        .collect();
    let event = app.broker().intake(&app.cpee_intake_status, details)?;
    let (id, _) = event.order().expect("intake publishes the order");
    app.cpee.enqueue(id);
    let body = Bytes::from(serde_json::to_vec(&Intake { order_id: id }).unwrap_or_default());
    app.cpee.remember(key, Answer::Now(body.clone()));
    Ok(json_bytes(StatusCode::OK, body))
}

/// `POST|GET /cpee/next-order`: the oldest waiting order for this orderbot.
pub async fn next_order(
    app: &App,
    req: &Req,
    audience: Audience,
) -> Result<Response<Body>, ApiError> {
    let viewer = audience.viewer();
    let call = CpeeCall::from_headers(&req.headers);
    let key = call.resend_key("next-order");
    if let Some(answer) = key.as_deref().and_then(|k| app.cpee.resent(k)) {
        return Ok(replay(answer));
    }
    let fields = fields(req).await?;
    let orderbot = text(&fields, "orderbot_id")
        .or_else(|| call.instance.clone())
        .ok_or_else(|| {
            ApiError::bad_request("orderbot_id is required (or a CPEE-INSTANCE header)")
        })?;
    if orderbot.len() > 256 {
        return Err(ApiError::unprocessable(
            "orderbot_id is longer than 256 bytes",
        ));
    }
    // Read before any order is taken: a bad `wait` is refused, not
    // ignored because work happened to be waiting.
    let wait = match text(&fields, "wait") {
        None => 0,
        Some(w) => w
            .parse::<u64>()
            .map_err(|_| ApiError::bad_request("wait must be a whole number of seconds"))?,
    };
    if let Some(order) = app.cpee.take_now(&orderbot)? {
        let taken = app.cpee.taken(order, &orderbot);
        let body = app.cpee.order_json(order, viewer);
        durable(app).await?;
        app.cpee.remember(key, Answer::Now(body.clone()));
        taken.keep();
        return Ok(json_bytes(StatusCode::OK, body));
    }
    if let Some(url) = &call.callback {
        app.cpee.check_callback(url)?;
        let id = app.cpee.wait_for_work(&call, &orderbot, audience);
        registered(app, id).await?;
        app.cpee.remember(key, Answer::Later);
        return Ok(later());
    }
    if wait == 0 {
        return Ok(empty(StatusCode::NO_CONTENT));
    }
    let wait = Duration::from_secs(wait.min(app.cpee_max_wait_secs));
    let mut rx = app.cpee.poll_for_work(&orderbot);
    let order = match tokio::time::timeout(wait, &mut rx).await {
        Ok(Ok(order)) => Some(order),
        _ => {
            // Closing first means an order sent meanwhile is still ours to take.
            rx.close();
            rx.try_recv().ok()
        }
    };
    let Some(order) = order else {
        return Ok(empty(StatusCode::NO_CONTENT));
    };
    let taken = app.cpee.taken(order, &orderbot);
    let body = app.cpee.order_json(order, viewer);
    durable(app).await?;
    taken.keep();
    Ok(json_bytes(StatusCode::OK, body))
}

/// Waits until the order just taken is on disk: a work answer is sent only
/// then (if the journal fails, or the caller leaves meanwhile, the order
/// goes back to the queue; see `Cpee::taken`).
async fn durable(app: &App) -> Result<(), ApiError> {
    app.broker().durable().await.map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the journal cannot be written; the order stays in the queue",
        )
    })
}

/// Waits until a callback just registered is on disk (or in the cluster's
/// stream): `CPEE-CALLBACK: true` promises an answer that a restart or a
/// failover must not lose. If it cannot be written, the callback is
/// cancelled and the call fails.
async fn registered(app: &App, callback: u64) -> Result<(), ApiError> {
    if app.broker().durable().await.is_err() {
        app.cpee.cancel(callback);
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the journal cannot be written (or this node stopped leading the cluster); \
             the callback is not registered: call again",
        ));
    }
    Ok(())
}

/// `POST /cpee/wait`: `order_id` and a `status` or `stage`; `updates=true`
/// also PUTs each change before it (with `CPEE-UPDATE: true`).
pub async fn wait(app: &App, req: &Req, audience: Audience) -> Result<Response<Body>, ApiError> {
    let viewer = audience.viewer();
    let call = CpeeCall::from_headers(&req.headers);
    let key = call.resend_key("wait");
    if let Some(answer) = key.as_deref().and_then(|k| app.cpee.resent(k)) {
        return Ok(replay(answer));
    }
    let fields = fields(req).await?;
    let id = text(&fields, "order_id")
        .or_else(|| text(&fields, "id"))
        .ok_or_else(|| ApiError::bad_request("order_id is required"))?;
    let id = OrderId(
        id.trim()
            .parse()
            .map_err(|_| ApiError::bad_request("order_id must be a non-negative integer"))?,
    );
    let target = match (text(&fields, "status"), text(&fields, "stage")) {
        (Some(status), _) => Target::Status(status),
        (None, Some(stage)) => Target::Stage(
            Stage::ALL
                .into_iter()
                .find(|s| s.as_str() == stage)
                .ok_or_else(|| {
                    ApiError::bad_request("stage must be new, in_progress, completed or cancelled")
                })?,
        ),
        (None, None) => {
            return Err(ApiError::bad_request(
                "a status or a stage to wait for is required",
            ));
        }
    };
    let updates = text(&fields, "updates").is_some_and(|u| u == "true" || u == "1");
    let answer = {
        let _pin = app.broker().pin();
        let order = app
            .broker()
            .get(id)
            .ok_or_else(|| ApiError::not_found("Order not found"))?;
        if app.cpee.reached(&order, &target) {
            return Ok(json_bytes(
                StatusCode::OK,
                super::order_json(app.broker(), id, &order, viewer),
            ));
        }
        if !app.cpee.reachable(&order, &target) {
            return Err(never(app, id, Some(&order), viewer));
        }
        let Some(url) = &call.callback else {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "the order has not reached that state; send a CPEE-CALLBACK header to wait for it",
            ));
        };
        app.cpee.check_callback(url)?;
        match app
            .cpee
            .wait_for_state(&call, id, target, updates, audience)?
        {
            WaitAnswer::Reached(order) => {
                return Ok(json_bytes(
                    StatusCode::OK,
                    super::order_json(app.broker(), id, &order, viewer),
                ));
            }
            WaitAnswer::Never(order) => return Err(never(app, id, order.as_ref(), viewer)),
            WaitAnswer::Later(callback) => callback,
        }
    };
    // Not under the pin: waiting on the journal must not hold words back.
    registered(app, answer).await?;
    app.cpee.remember(key, Answer::Later);
    Ok(later())
}

/// 409 for a wait that can never be met (the order is cancelled, finished
/// or gone), with the order as it is: CPEE sends an activity whose call
/// fails to its rescue path (salvage), as it does for `CPEE-SALVAGE`.
fn never(app: &App, id: OrderId, order: Option<&crate::model::Order>, viewer: Viewer) -> ApiError {
    let state = order.map_or("gone".to_string(), |o| o.stage.to_string());
    let body = order.map(|o| super::order_json(app.broker(), id, o, viewer));
    let order: Value = body
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    let message = format!("order {id} can never reach that state: it is {state}");
    ApiError::new(StatusCode::CONFLICT, message.clone())
        .with_body(serde_json::json!({"error": message, "order": order}))
}

/// `GET /cpee/callbacks` and `DELETE /cpee/callbacks/{id}`.
pub fn callbacks(app: &App, req: &Req) -> Result<Response<Body>, ApiError> {
    if req.method == Method::DELETE {
        let id = req.id("Callback not found")?;
        return if app.cpee.cancel(id) {
            Ok(empty(StatusCode::NO_CONTENT))
        } else {
            Err(ApiError::not_found("Callback not found"))
        };
    }
    Ok(json_response(StatusCode::OK, &app.cpee.pending()))
}
