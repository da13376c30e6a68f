//! Templates: a customer's saved order (`/templates`), and ordering it
//! again. Customers see and use their own; staff, admin and service all.

use hyper::{Response, StatusCode};
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::access::forbidden;
use super::body::json;
use super::catalog::created;
use super::error::ApiError;
use super::orders::{created_order, parse_items};
use super::{App, Body, Req, empty, json_response};
use crate::auth::Caller;
use crate::broker::BrokerError;
use crate::catalog::{CustomerId, Template, TemplateId};

/// Whose templates the caller may touch: `Some(customer)` for a customer,
/// `None` for everyone's (staff, admin, service, or auth off).
fn scope(caller: Option<&Caller>) -> Result<Option<CustomerId>, ApiError> {
    match caller {
        None => Ok(None),
        Some(c) if c.is_privileged() => Ok(None),
        Some(c) => c
            .customer_id()
            .map(|id| Some(CustomerId(id)))
            .ok_or_else(forbidden),
    }
}

/// The template in the path, if the caller may touch it.
fn template(app: &App, req: &Req, caller: Option<&Caller>) -> Result<Template, ApiError> {
    let id = TemplateId(req.id("Template not found")?);
    let template = app
        .broker()
        .template(id)
        .ok_or_else(|| ApiError::not_found("Template not found"))?;
    match scope(caller)? {
        Some(own) if own != template.customer_id => Err(forbidden()),
        _ => Ok(template),
    }
}

#[derive(Deserialize, ToSchema)]
pub(super) struct TemplateIn {
    name: String,
    #[schema(value_type = Vec<super::orders::ItemIn>)]
    items: Vec<Value>,
    #[serde(default)]
    notes: String,
    customer_id: Option<u64>,
}

/// `POST /templates` `{"name", "items", "notes", "customer_id"}` (a
/// customer's own id is implied).
pub fn create(app: &App, req: &Req, caller: Option<&Caller>) -> Result<Response<Body>, ApiError> {
    let body: TemplateIn = json(&req.headers, &req.body)?;
    let customer = match (scope(caller)?, body.customer_id) {
        (Some(own), Some(named)) if named != own.0 => return Err(forbidden()),
        (Some(own), _) => own,
        (None, Some(named)) => CustomerId(named),
        (None, None) => return Err(ApiError::unprocessable("customer_id is required")),
    };
    let items = parse_items(&body.items)?;
    let template = app
        .broker()
        .create_template(customer, body.name, items, body.notes)
        .map_err(|e| match e {
            // A customer named in the body is bad data, not a missing page.
            BrokerError::CustomerNotFound(_) => ApiError::unprocessable(e.to_string()),
            other => other.into(),
        })?;
    Ok(created(&format!("/templates/{}", template.id.0), &template))
}

/// `GET /templates`: the caller's own, or everyone's (`?customer_id=` filters).
pub fn list(app: &App, req: &Req, caller: Option<&Caller>) -> Result<Response<Body>, ApiError> {
    let mut customer = scope(caller)?;
    if customer.is_none() {
        for (key, value) in req.query()? {
            if key == "customer_id" {
                let id = value.parse().map_err(|_| {
                    ApiError::bad_request("customer_id must be a non-negative integer")
                })?;
                customer = Some(CustomerId(id));
            }
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &app.broker().templates(customer),
    ))
}

pub fn get(app: &App, req: &Req, caller: Option<&Caller>) -> Result<Response<Body>, ApiError> {
    Ok(json_response(StatusCode::OK, &template(app, req, caller)?))
}

pub fn delete(app: &App, req: &Req, caller: Option<&Caller>) -> Result<Response<Body>, ApiError> {
    let template = template(app, req, caller)?;
    app.broker().delete_template(template.id)?;
    Ok(empty(StatusCode::NO_CONTENT))
}

/// `POST /templates/{id}/order`: a new order from the template, priced now,
/// stock checked.
pub fn order(app: &App, req: &Req, caller: Option<&Caller>) -> Result<Response<Body>, ApiError> {
    let template = template(app, req, caller)?;
    let event = app.broker().order_template(template.id)?;
    Ok(created_order(app, &event))
}
