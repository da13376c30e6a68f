//! Fulfilment endpoints: `PUT /orders/{id}/assign-delivery`,
//! `PUT /orders/{id}/status` (the delivery flow), `PUT|GET
//! /orders/{id}/delivery-location`, `POST /orders/{id}/cancel`.

use hyper::{Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::body::json;
use super::error::ApiError;
use super::orders::{event_response, order_id};
use super::{App, Body, Req, if_match, json_response};
use crate::auth::Caller;
use crate::broker::Canceller;
use crate::model::Millis;
use crate::shop::{Fulfilment, Location};

/// A partner id: text, or a number as the FastAPI seed sends it.
#[derive(Deserialize)]
#[serde(untagged)]
enum PartnerId {
    Text(String),
    Number(u64),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignIn {
    partner_id: PartnerId,
}

/// `PUT /orders/{id}/assign-delivery` `{"partner_id"}`.
pub fn assign(app: &App, req: &Req) -> Result<Response<Body>, ApiError> {
    let id = order_id(req)?;
    let body: AssignIn = json(&req.headers, &req.body)?;
    let partner = match body.partner_id {
        PartnerId::Text(t) if t.trim().is_empty() => {
            return Err(ApiError::unprocessable("partner_id must not be empty"));
        }
        PartnerId::Text(t) => t,
        PartnerId::Number(n) => n.to_string(),
    };
    let event = app.broker().assign_delivery(id, &partner, if_match(req)?)?;
    Ok(event_response(app, StatusCode::OK, &event))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusIn {
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
    let to = Fulfilment::parse(&body.status)
        .filter(|f| !matches!(f, Fulfilment::New | Fulfilment::Cancelled))
        .ok_or_else(|| {
            let hint = if body.status == "cancelled" {
                "; cancel with POST /orders/{id}/cancel and a reason"
            } else {
                ""
            };
            ApiError::unprocessable(format!(
                "status must be one of confirmed, preparing, out_for_delivery, delivered{hint}"
            ))
        })?;
    let partner = caller.and_then(Caller::partner_id);
    let event = app.broker().advance(id, to, partner, if_match(req)?)?;
    Ok(event_response(app, StatusCode::OK, &event))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LocationIn {
    lat: f64,
    lng: f64,
}

fn location_json(location: &Location) -> serde_json::Value {
    json!({"lat": location.lat(), "lng": location.lng(), "at": location.at})
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelIn {
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
