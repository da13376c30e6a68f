//! The Flask store tutorial: its blueprints `/api/products/`,
//! `/api/customers/` and `/api/orders/` (each with and without the
//! trailing slash, and `/{id}` below them), served by the broker's
//! `/products`, `/customers` and `/orders` handlers (`Route::blueprint_of`
//! maps them, for the handlers and for who may call); and its web page,
//! `GET /store`, from `assets/store.html`. Two answers follow the tutorial
//! where the broker's own routes differ: customers are listed by name, and
//! an order's items may name their product by `name` (the tutorial's
//! shape) instead of `product_id`. Processing (`PUT /api/orders/{id}`) and
//! deleting (`DELETE /api/orders/{id}`) are the `/orders` handlers as they are.

use bytes::Bytes;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::Value;

use super::error::ApiError;
use super::{App, Body, Req, json_response, orders};
use crate::auth::Caller;
use crate::broker::BrokerError;

/// `GET /api/customers/`: every customer, by name (the tutorial's
/// `order_by(Customer.name)`, SQLite's binary collation: byte order), then id.
pub fn list_customers(app: &App) -> Result<Response<Body>, ApiError> {
    let mut customers = app.broker().customers();
    customers.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    Ok(json_response(StatusCode::OK, &customers))
}

/// `POST /api/orders/`: `POST /orders`, with items that name their product
/// (`{"name": "Mojito", "quantity": 2}`) resolved to its id first. A name
/// no product has, or several have, is the item's 422.
pub fn create_order(
    app: &App,
    req: &Req,
    caller: Option<&Caller>,
) -> Result<Response<Body>, ApiError> {
    let Some(body) = with_product_ids(app, req)? else {
        return orders::create(app, req, caller, orders::Placing::Orders);
    };
    let req = Req {
        method: req.method.clone(),
        uri: req.uri.clone(),
        headers: req.headers.clone(),
        body,
        param: req.param.clone(),
        peer: req.peer,
        https: req.https,
    };
    orders::create(app, &req, caller, orders::Placing::Orders)
}

/// The body with each item's `name` turned into its `product_id`; None when
/// no item names a product that way (or the body is not for us to judge:
/// `orders::create` answers it as `POST /orders` would).
fn with_product_ids(app: &App, req: &Req) -> Result<Option<Bytes>, ApiError> {
    let Ok(mut body) = serde_json::from_slice::<Value>(&req.body) else {
        return Ok(None);
    };
    let Some(items) = body.get_mut("items").and_then(Value::as_array_mut) else {
        return Ok(None);
    };
    let mut products = None;
    let mut changed = false;
    for (index, item) in items.iter_mut().enumerate() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        if item.contains_key("product_id") {
            continue;
        }
        let Some(name) = item.get("name").and_then(Value::as_str) else {
            continue;
        };
        let products = products.get_or_insert_with(|| app.broker().products());
        let mut named = products.iter().filter(|p| p.name == name);
        let id = match (named.next(), named.next()) {
            (Some(product), None) => product.id.0,
            (found, _) => {
                let reason = if found.is_none() {
                    format!("no product is named {name:?}")
                } else {
                    format!("several products are named {name:?}; send product_id")
                };
                return Err(BrokerError::InvalidItem { index, reason }.into());
            }
        };
        item.insert("product_id".into(), Value::from(id));
        changed = true;
    }
    Ok(changed.then(|| Bytes::from(serde_json::to_vec(&body).unwrap_or_default())))
}

/// The page, with its script inline (no build step, like the board).
const PAGE: &str = include_str!("../../assets/store.html");

/// What the page may do: run only its own script (by its hash), talk only
/// to this broker, be framed by no one (its buttons change orders). Data
/// is set as text anyway; this is in case that is ever got wrong.
fn policy() -> &'static HeaderValue {
    static POLICY: std::sync::OnceLock<HeaderValue> = std::sync::OnceLock::new();
    POLICY.get_or_init(|| {
        use base64::Engine;
        use sha2::{Digest, Sha256};
        let start = PAGE.find("<script>").expect("the page has its script") + "<script>".len();
        let end = start + PAGE[start..].find("</script>").expect("the script ends");
        let hash = Sha256::digest(&PAGE.as_bytes()[start..end]);
        let hash = base64::engine::general_purpose::STANDARD.encode(hash);
        let policy = format!(
            "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'"
        );
        HeaderValue::from_str(&policy).expect("the policy is ASCII")
    })
}

/// `GET /store`: the store's page (no data in it; it reads the API).
pub fn page() -> Response<Body> {
    let mut response = Response::new(super::full(Bytes::from_static(PAGE.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("content-security-policy", policy().clone());
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    response
}
