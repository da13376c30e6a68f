//! Fulfilment endpoints: `PUT /orders/{id}/assign-delivery`,
//! `PUT /orders/{id}/status` (the delivery flow), `PUT|GET
//! /orders/{id}/delivery-location`, `POST /orders/{id}/cancel`, the bulk
//! forms `PUT /orders/bulk-status-update`, `POST /orders/bulk-assign-delivery`,
//! and what follows completion: `POST /orders/{id}/feedback`,
//! `POST /orders/{id}/request-return`, `PUT /orders/{id}/return`.

use hyper::{Response, StatusCode};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::body::json;
use super::error::ApiError;
use super::orders::OrderBody;
use super::orders::parse_items;
use super::orders::{event_response, order_id};
use super::{App, Body, Req, if_match, json_response};
use crate::auth::Caller;
use crate::broker::{BulkAction, BulkResult, Canceller, ErrorPolicy};
use crate::model::{Millis, OrderId};
use crate::shop::{Fulfilment, Location, ReturnStatus};

/// A partner id: text, or a number as the FastAPI seed sends it.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub(super) enum PartnerId {
    Text(String),
    Number(u64),
}

fn partner_text(id: &PartnerId) -> Result<String, ApiError> {
    match id {
        PartnerId::Text(t) if t.trim().is_empty() => {
            Err(ApiError::unprocessable("partner_id must not be empty"))
        }
        PartnerId::Text(t) => Ok(t.clone()),
        PartnerId::Number(n) => Ok(n.to_string()),
    }
}

#[derive(Deserialize, ToSchema)]
pub(super) struct AssignIn {
    partner_id: PartnerId,
}

/// `PUT /orders/{id}/assign-delivery` `{"partner_id"}`.
pub fn assign(app: &App, req: &Req) -> Result<Response<Body>, ApiError> {
    let id = order_id(req)?;
    let body: AssignIn = json(&req.headers, &req.body)?;
    let partner = partner_text(&body.partner_id)?;
    let event = app.broker().assign_delivery(id, &partner, if_match(req)?)?;
    Ok(event_response(app, StatusCode::OK, &event))
}

#[derive(Deserialize, ToSchema)]
#[schema(as = StepIn)]
pub(super) struct StatusIn {
    status: String,
}

/// `PUT /orders/{id}/status` `{"status": "preparing"}`: the next step of
/// the delivery flow only.
pub fn set_status(
    app: &App,
    req: &Req,
    caller: Option<&Caller>,
) -> Result<Response<Body>, ApiError> {
    let id = order_id(req)?;
    let body: StatusIn = json(&req.headers, &req.body)?;
    let to = flow_step(&body.status)?;
    let partner = caller.and_then(Caller::partner_id);
    let event = app.broker().advance(id, to, partner, if_match(req)?)?;
    Ok(event_response(app, StatusCode::OK, &event))
}

/// A step of the delivery flow a client may ask for.
fn flow_step(status: &str) -> Result<Fulfilment, ApiError> {
    Fulfilment::parse(status)
        .filter(|f| !matches!(f, Fulfilment::New | Fulfilment::Cancelled))
        .ok_or_else(|| {
            let hint = if status == "cancelled" {
                "; cancel with POST /orders/{id}/cancel and a reason"
            } else {
                ""
            };
            ApiError::unprocessable(format!(
                "status must be one of confirmed, preparing, out_for_delivery, delivered{hint}"
            ))
        })
}

#[derive(Deserialize, ToSchema)]
pub(super) struct LocationIn {
    #[schema(minimum = -90, maximum = 90)]
    lat: f64,
    #[schema(minimum = -180, maximum = 180)]
    lng: f64,
}

fn location_json(location: &Location) -> crate::shop::LocationJson {
    (*location).into()
}

/// `PUT /orders/{id}/delivery-location` `{"lat", "lng"}` (the assigned partner).
pub fn put_location(
    app: &App,
    req: &Req,
    caller: Option<&Caller>,
) -> Result<Response<Body>, ApiError> {
    let id = order_id(req)?;
    let body: LocationIn = json(&req.headers, &req.body)?;
    let location = Location::new(body.lat, body.lng, Millis::now()).ok_or_else(|| {
        ApiError::unprocessable("lat must be within -90..90 and lng within -180..180")
    })?;
    let partner = caller.and_then(Caller::partner_id);
    app.broker().set_location(id, location, partner)?;
    Ok(json_response(StatusCode::OK, &location_json(&location)))
}

/// `GET /orders/{id}/delivery-location`: where the partner last was.
pub fn get_location(app: &App, req: &Req) -> Result<Response<Body>, ApiError> {
    let id = order_id(req)?;
    let order = app
        .broker()
        .get(id)
        .ok_or_else(|| ApiError::not_found("Order not found"))?;
    let location = order
        .shop
        .as_ref()
        .and_then(|s| s.delivery_location)
        .ok_or_else(|| ApiError::not_found("no delivery location yet"))?;
    Ok(json_response(StatusCode::OK, &location_json(&location)))
}

#[derive(Deserialize, ToSchema)]
pub(super) struct CancelIn {
    reason: String,
}

/// `POST /orders/{id}/cancel` `{"reason"}`: a customer before preparation,
/// staff any time before delivery; a processed order's stock and money go back.
pub fn cancel(app: &App, req: &Req, caller: Option<&Caller>) -> Result<Response<Body>, ApiError> {
    let id = order_id(req)?;
    let body: CancelIn = json(&req.headers, &req.body)?;
    let by = match caller {
        Some(c) if c.customer_id().is_some() => Canceller::Customer,
        _ => Canceller::Staff,
    };
    let event = app
        .broker()
        .cancel_order(id, &body.reason, by, if_match(req)?)?;
    Ok(event_response(app, StatusCode::OK, &event))
}

#[derive(Deserialize, ToSchema)]
pub(super) struct BulkIn {
    order_ids: Vec<u64>,
    status: Option<String>,
    partner_id: Option<PartnerId>,
    #[serde(default)]
    #[schema(value_type = Option<ErrorPolicyName>)]
    error_policy: Option<String>,
}

/// What `error_policy` may name (reject_all when absent).
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)] // the description of what `bulk` reads
pub(super) enum ErrorPolicyName {
    RejectAll,
    SkipFailed,
}

/// A bulk change's answer: how many were applied and failed, and each
/// order's result.
#[derive(Serialize, ToSchema)]
pub(super) struct BulkAnswer<'a> {
    error_policy: &'static str,
    applied: usize,
    failed: usize,
    results: Vec<BulkRow<'a>>,
}

/// One order's result in a bulk change.
#[derive(Serialize, ToSchema)]
pub(super) struct BulkRow<'a> {
    order_id: OrderId,
    /// applied, failed or skipped.
    result: &'static str,
    /// The order as changed (applied).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<super::orders::OrderSchema>)]
    order: Option<OrderBody<'a>>,
    /// The status the change alone would have been answered with (failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// `PUT /orders/bulk-status-update` `{"order_ids", "status", "error_policy"}`.
pub fn bulk_status(app: &App, req: &Req) -> Result<Response<Body>, ApiError> {
    let body: BulkIn = json(&req.headers, &req.body)?;
    let status = body
        .status
        .as_deref()
        .ok_or_else(|| ApiError::unprocessable("status is required"))?;
    let to = flow_step(status)?;
    bulk(app, &body, BulkAction::Status(to))
}

/// `POST /orders/bulk-assign-delivery` `{"order_ids", "partner_id", "error_policy"}`.
pub fn bulk_assign(app: &App, req: &Req) -> Result<Response<Body>, ApiError> {
    let body: BulkIn = json(&req.headers, &req.body)?;
    let partner = match &body.partner_id {
        Some(id) => partner_text(id)?,
        None => return Err(ApiError::unprocessable("partner_id is required")),
    };
    bulk(app, &body, BulkAction::Assign(&partner))
}

fn bulk(app: &App, body: &BulkIn, action: BulkAction<'_>) -> Result<Response<Body>, ApiError> {
    let policy = match body.error_policy.as_deref() {
        None | Some("reject_all") => ErrorPolicy::RejectAll,
        Some("skip_failed") => ErrorPolicy::SkipFailed,
        Some(_) => {
            return Err(ApiError::unprocessable(
                "error_policy must be reject_all or skip_failed",
            ));
        }
    };
    let max = app.max_bulk_orders;
    if body.order_ids.is_empty() || body.order_ids.len() > max {
        return Err(ApiError::unprocessable(format!(
            "order_ids must hold 1 to {max} ids"
        )));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = body.order_ids.iter().find(|id| !seen.insert(**id)) {
        return Err(ApiError::unprocessable(format!(
            "order_ids names {dup} twice"
        )));
    }
    let ids: Vec<OrderId> = body.order_ids.iter().map(|id| OrderId(*id)).collect();
    let _pin = app.broker().pin();
    let results = app.broker().bulk(&ids, action, policy);
    let symbols = app.broker().symbols();
    let mut applied = 0;
    let mut failed = 0;
    let row = |order_id: OrderId, result| BulkRow {
        order_id,
        result,
        order: None,
        status: None,
        error: None,
    };
    let rendered: Vec<BulkRow<'_>> = results
        .iter()
        .map(|(id, result)| match result {
            BulkResult::Applied(event) => {
                applied += 1;
                BulkRow {
                    order: event.order().map(|(_, o)| OrderBody::new(*id, o, &symbols)),
                    ..row(*id, "applied")
                }
            }
            BulkResult::Failed(e) => {
                failed += 1;
                BulkRow {
                    status: Some(ApiError::from(e.clone()).status.as_u16()),
                    error: Some(e.to_string()),
                    ..row(*id, "failed")
                }
            }
            BulkResult::Skipped => row(*id, "skipped"),
        })
        .collect();
    // All or nothing that came to nothing: the request as a whole conflicts.
    let status = if policy == ErrorPolicy::RejectAll && failed > 0 {
        StatusCode::CONFLICT
    } else {
        StatusCode::OK
    };
    let policy = match policy {
        ErrorPolicy::RejectAll => "reject_all",
        ErrorPolicy::SkipFailed => "skip_failed",
    };
    let response = json_response(
        status,
        &BulkAnswer {
            error_policy: policy,
            applied,
            failed,
            results: rendered,
        },
    );
    drop(symbols);
    Ok(response)
}

#[derive(Deserialize, ToSchema)]
pub(super) struct FeedbackIn {
    /// 1 to 5.
    #[schema(minimum = 1, maximum = 5)]
    rating: u8,
    #[serde(default)]
    comment: String,
}

/// `POST /orders/{id}/feedback` `{"rating": 1..5, "comment"}`: the order's
/// customer, once, after completion.
pub fn feedback(app: &App, req: &Req) -> Result<Response<Body>, ApiError> {
    let id = order_id(req)?;
    let body: FeedbackIn = json(&req.headers, &req.body)?;
    let event = app.broker().add_feedback(id, body.rating, &body.comment)?;
    let feedback = event
        .order()
        .and_then(|(_, o)| o.shop.as_ref()?.feedback.clone());
    Ok(json_response(StatusCode::CREATED, &feedback))
}

#[derive(Deserialize, ToSchema)]
pub(super) struct ReturnIn {
    #[schema(value_type = Vec<super::orders::ItemIn>)]
    items: Vec<serde_json::Value>,
    reason: String,
}

/// `POST /orders/{id}/request-return` `{"items", "reason"}`: the order's
/// customer, within the window after completion.
pub fn request_return(app: &App, req: &Req) -> Result<Response<Body>, ApiError> {
    let id = order_id(req)?;
    let body: ReturnIn = json(&req.headers, &req.body)?;
    let items = parse_items(&body.items)?;
    let event = app.broker().request_return(id, &items, &body.reason)?;
    let request = event
        .order()
        .and_then(|(_, o)| o.shop.as_ref()?.return_request.clone());
    Ok(json_response(StatusCode::CREATED, &request))
}

/// `PUT /orders/{id}/return` `{"status": "approved"|"rejected"|"received"|"refunded"}` (staff).
pub fn set_return(app: &App, req: &Req) -> Result<Response<Body>, ApiError> {
    let id = order_id(req)?;
    let body: StatusIn = json(&req.headers, &req.body)?;
    let to = ReturnStatus::parse(&body.status)
        .filter(|s| *s != ReturnStatus::Requested)
        .ok_or_else(|| {
            ApiError::unprocessable("status must be one of approved, rejected, received, refunded")
        })?;
    let event = app.broker().advance_return(id, to)?;
    Ok(event_response(app, StatusCode::OK, &event))
}
