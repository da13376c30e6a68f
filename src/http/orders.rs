//! `/orders`: shop orders with items (create, list with filters and a
//! cursor, read, change status or items, delete) and processing against
//! stock and balance (`PUT /api/orders/{id}`). Every order answer carries
//! its version as an `ETag`; writes honour `If-Match` (412 when stale).

use hyper::header::{HeaderValue, LINK};
use hyper::{Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::access::forbidden;
use super::body::json;
use super::catalog::created;
use super::error::ApiError;
use super::{App, Body, Req, empty, if_match, json_response, with_etag};
use crate::auth::Caller;
use crate::broker::{BrokerError, NewDelivery, NewItem, NewOrder, OrderFilter};
use crate::catalog::{CustomerId, ProductId};
use crate::feed::Event;
use crate::model::{Arrival, Millis, Order, OrderId, Stage, Version};
use crate::shop::{ShopOrder, Strategy};
use crate::symbols::SymbolsReader;

const NO_ORDER: &str = "Order not found";
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// An order as the `/orders` API shows it: the core fields, and the shop
/// details when it has them.
#[derive(Serialize, ToSchema)]
#[schema(as = OrderCore)]
pub struct OrderBody<'a> {
    id: OrderId,
    status: &'a str,
    stage: Stage,
    orderbot_id: Option<&'a str>,
    version: Version,
    created: Millis,
    updated: Millis,
    /// When the order entered its stage (for "time in stage" on a board).
    stage_since: Millis,
    /// A shop order's details; only to whoever may read all of it.
    #[serde(flatten)]
    #[schema(ignore)]
    shop: Option<&'a ShopOrder>,
}

/// An order as the `/orders` API shows it ([`OrderBody`]): its core
/// fields, and a shop order's fields when it has them and the caller may
/// see them (a seed order has no `number`).
pub(super) struct OrderSchema;

impl utoipa::PartialSchema for OrderSchema {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AllOfBuilder, AnyOfBuilder, ObjectBuilder, Ref, Type};
        // Without the shop fields: no `number` (an object without one).
        let seed_only = ObjectBuilder::new()
            .schema_type(Type::Object)
            .property("number", ObjectBuilder::new().schema_type(Type::Null));
        AllOfBuilder::new()
            .item(Ref::from_schema_name(OrderBody::name()))
            .item(
                AnyOfBuilder::new()
                    .item(Ref::from_schema_name(ShopOrder::name()))
                    .item(seed_only),
            )
            .description(Some(
                "An order: its core fields, and a shop order's fields when it has them and \
                 the caller may see them (an order from the seed API has no number).",
            ))
            .into()
    }
}

impl ToSchema for OrderSchema {
    fn name() -> std::borrow::Cow<'static, str> {
        "Order".into()
    }
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        use utoipa::PartialSchema;
        schemas.push((OrderBody::name().into(), OrderBody::schema()));
        OrderBody::schemas(schemas);
        schemas.push((ShopOrder::name().into(), ShopOrder::schema()));
        ShopOrder::schemas(schemas);
    }
}

impl<'a> OrderBody<'a> {
    /// What `viewer` may see of the order: all of it, or only the board's
    /// fields (see [`super::access::Viewer`]).
    pub fn seen_by(
        viewer: super::access::Viewer,
        id: OrderId,
        order: &'a Order,
        symbols: &'a SymbolsReader<'_>,
    ) -> Self {
        let mut body = OrderBody::new(id, order, symbols);
        if !viewer.sees_all_of(order, symbols) {
            body.shop = None;
        }
        body
    }

    /// All of the order: for callers the route already let read it.
    pub fn new(id: OrderId, order: &'a Order, symbols: &'a SymbolsReader<'_>) -> Self {
        OrderBody {
            id,
            status: symbols.text(order.status),
            stage: order.stage,
            orderbot_id: order.orderbot_id.map(|b| symbols.text(b)),
            version: order.version,
            created: order.created.get(),
            updated: order.updated.get(),
            stage_since: order.stage_since.get(),
            shop: order.shop.as_deref(),
        }
    }
}

/// One order with its `ETag`.
fn order_response(app: &App, status: StatusCode, id: OrderId, order: &Order) -> Response<Body> {
    let symbols = app.broker().symbols();
    let mut response = json_response(status, &OrderBody::new(id, order, &symbols));
    drop(symbols);
    with_etag(&mut response, order.version);
    response
}

pub(super) fn event_response(app: &App, status: StatusCode, event: &Event) -> Response<Body> {
    let (id, order) = event.order().expect("order operations publish the order");
    order_response(app, status, id, order)
}

pub(super) fn order_id(req: &Req) -> Result<OrderId, ApiError> {
    req.id(NO_ORDER).map(OrderId)
}

#[derive(Deserialize, ToSchema)]
pub(super) struct OrderIn {
    customer_id: Option<u64>,
    #[schema(value_type = Vec<ItemIn>)]
    items: Vec<Value>,
    #[serde(default)]
    notes: String,
    #[schema(schema_with = super::openapi::text_or_number)]
    table_number: Option<Value>,
    /// A word, or the Order Status API's number (kept as text).
    #[schema(schema_with = super::openapi::text_or_number)]
    channel: Option<Value>,
    /// The order's number, chosen by the client (numbers brought over from
    /// another system); unique. None: the broker makes one.
    number: Option<String>,
    /// Refuse the order when an item asks for more than is in stock now.
    #[serde(default)]
    check_stock: bool,
    /// Only on `POST /orders/scheduled`: when the order becomes new, in ms
    /// since the epoch or as an RFC 3339 time.
    #[schema(schema_with = super::openapi::text_or_number)]
    scheduled_for: Option<Value>,
    /// Where it is delivered, for the delivery fee (an object; read with
    /// [`super::body::object_field`], since serde would read it from a list).
    #[schema(value_type = Option<DeliveryIn>)]
    delivery: Option<Value>,
}

#[derive(Deserialize, ToSchema)]
pub(super) struct DeliveryIn {
    distance_km: Option<f64>,
    zone: Option<String>,
}

/// How far ahead an order may be scheduled.
const MAX_SCHEDULE_AHEAD_MS: u64 = 366 * 24 * 3600 * 1000;

/// `scheduled_for` checked: required and in the coming year when
/// scheduling, refused otherwise. A number is ms since the epoch, a text an
/// RFC 3339 time (`2026-12-24T18:00:00+01:00`), as the FastAPI seed's
/// clients send it.
fn schedule(schedule: bool, at: Option<Value>) -> Result<Option<Millis>, ApiError> {
    let now = Millis::now().0;
    let at = match at {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(n.as_u64().ok_or_else(|| {
            ApiError::unprocessable("scheduled_for must be a non-negative integer of ms")
        })?),
        Some(Value::String(text)) => Some(rfc3339_ms(&text).ok_or_else(|| {
            ApiError::unprocessable(
                "scheduled_for must be ms since the epoch or an RFC 3339 time such as \
                 2026-12-24T18:00:00Z",
            )
        })?),
        Some(_) => {
            return Err(ApiError::unprocessable(
                "scheduled_for must be a number of ms or an RFC 3339 text",
            ));
        }
    };
    match (schedule, at) {
        (true, Some(at)) if at > now && at - now <= MAX_SCHEDULE_AHEAD_MS => Ok(Some(Millis(at))),
        (true, Some(_)) => Err(ApiError::unprocessable(
            "scheduled_for must be a time in the coming year",
        )),
        (true, None) => Err(ApiError::unprocessable("scheduled_for is required")),
        (false, Some(_)) => Err(ApiError::unprocessable(
            "scheduled_for: schedule orders with POST /orders/scheduled",
        )),
        (false, None) => Ok(None),
    }
}

/// An RFC 3339 time (with its offset) as ms since the epoch; None if it is
/// not one or lies before 1970.
fn rfc3339_ms(text: &str) -> Option<u64> {
    let at =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()
}

/// A text field a client may send as a word or a number (kept as text).
fn word_or_number(field: &str, value: Option<Value>) -> Result<String, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s),
        Some(Value::Number(n)) if n.is_u64() => Ok(n.to_string()),
        Some(_) => Err(ApiError::unprocessable(format!(
            "{field} must be a word or a non-negative integer"
        ))),
    }
}

/// An item as a request names it (`parse_items` reads it).
#[derive(ToSchema)]
#[allow(dead_code)] // the description of what `parse_items` reads
pub(super) struct ItemIn {
    product_id: u64,
    /// At least 1.
    #[schema(minimum = 1)]
    quantity: u64,
}

/// Reads items: each an object with `product_id` and a positive integer
/// `quantity`; other keys (a client's own price, a name) are ignored, since
/// prices are taken from the catalog.
pub(super) fn parse_items(items: &[Value]) -> Result<Vec<NewItem>, ApiError> {
    items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let bad = |reason: &str| {
                ApiError::from(BrokerError::InvalidItem {
                    index,
                    reason: reason.into(),
                })
            };
            let product_id = item
                .get("product_id")
                .and_then(Value::as_u64)
                .ok_or_else(|| bad("product_id must be a non-negative integer"))?;
            let quantity = item
                .get("quantity")
                .and_then(Value::as_u64)
                .filter(|q| *q > 0)
                .ok_or_else(|| bad("quantity must be a positive integer"))?;
            Ok(NewItem {
                product_id: ProductId(product_id),
                quantity,
            })
        })
        .collect()
}

/// `POST /orders` and `POST /customers/{id}/orders`. A customer caller's
/// order is always their own.
/// Which route places an order, and so its rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placing {
    /// `POST /orders`.
    Orders,
    /// `POST /orders/scheduled`: held until `scheduled_for`.
    Scheduled,
    /// `POST /customers/{id}/orders`.
    ForCustomer(u64),
    /// `POST /orders/{customer_id}`, the Order Management API's route: the
    /// items' stock is taken as the order is placed (400 when short).
    TakingStock(u64),
}

pub fn create(
    app: &App,
    req: &Req,
    caller: Option<&Caller>,
    placing: Placing,
) -> Result<Response<Body>, ApiError> {
    let (path_customer, scheduled, take_stock) = match placing {
        Placing::Orders => (None, false, false),
        Placing::Scheduled => (None, true, false),
        Placing::ForCustomer(c) => (Some(c), false, false),
        Placing::TakingStock(c) => (Some(c), false, true),
    };
    let mut body: OrderIn = json(&req.headers, &req.body)?;
    let scheduled_for = schedule(scheduled, body.scheduled_for)?;
    // Only staff, admin and service order for others; a customer orders for
    // themselves; nobody else (a delivery partner) orders at all.
    if caller.is_some_and(|c| !c.is_privileged() && c.customer_id().is_none()) {
        return Err(forbidden());
    }
    if let Some(own) = caller.and_then(Caller::customer_id) {
        if body.customer_id.is_some_and(|c| c != own) || path_customer.is_some_and(|c| c != own) {
            return Err(forbidden());
        }
        body.customer_id = Some(own);
    }
    if let Some(c) = path_customer {
        if app.broker().customer(CustomerId(c)).is_none() {
            return Err(ApiError::not_found("Customer not found"));
        }
        if body.customer_id.is_some_and(|b| b != c) {
            return Err(ApiError::unprocessable(
                "customer_id differs from the customer in the path",
            ));
        }
    }
    let table_number = match body.table_number {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => {
            return Err(ApiError::unprocessable(
                "table_number must be text or a number",
            ));
        }
    };
    let new = NewOrder {
        customer_id: path_customer.or(body.customer_id).map(CustomerId),
        items: parse_items(&body.items)?,
        notes: body.notes,
        table_number,
        channel: word_or_number("channel", body.channel)?,
        number: body.number,
        check_stock: body.check_stock,
        take_stock,
        scheduled_for,
        delivery: body
            .delivery
            .filter(|d| !d.is_null())
            .map(|d| super::body::object_field::<DeliveryIn>("delivery", d))
            .transpose()?
            .map(|d| NewDelivery {
                distance_km: d.distance_km,
                zone: d.zone,
            }),
    };
    let event = app.broker().create_order(new).map_err(|e| match e {
        // A customer named in the body is bad data, not a missing page.
        BrokerError::CustomerNotFound(_) => ApiError::unprocessable(e.to_string()),
        other => other.into(),
    })?;
    Ok(created_order(app, &event))
}

/// 201 with the new order, its `Location` and `ETag`.
pub(super) fn created_order(app: &App, event: &Event) -> Response<Body> {
    let (id, order) = event.order().expect("create publishes the order");
    let symbols = app.broker().symbols();
    let mut response = created(
        &format!("/orders/{id}"),
        &OrderBody::new(id, order, &symbols),
    );
    drop(symbols);
    with_etag(&mut response, order.version);
    response
}

/// The filters of `GET /orders` and `/orders/export` from the query:
/// `customer_id`, `status`, `stage`, `created_from` / `created_to` (ms since
/// the epoch; from inclusive, to exclusive), `limit`, `after` (a cursor, see
/// [`cursor`]).
pub(super) fn filter(app: &App, req: &Req, limit: usize) -> Result<OrderFilter, ApiError> {
    let mut filter = OrderFilter {
        limit,
        ..OrderFilter::default()
    };
    let number = |key: &str, value: &str| {
        value
            .parse::<u64>()
            .map_err(|_| ApiError::bad_request(format!("{key} must be a non-negative integer")))
    };
    for (key, value) in req.query()? {
        match key.as_str() {
            "customer_id" => filter.customer_id = Some(CustomerId(number(&key, &value)?)),
            "status" => filter.status = Some(value),
            "stage" => {
                filter.stage = Some(
                    Stage::ALL
                        .into_iter()
                        .find(|s| s.as_str() == value)
                        .ok_or_else(|| {
                            ApiError::bad_request(
                                "stage must be new, in_progress, completed or cancelled",
                            )
                        })?,
                )
            }
            "created_from" => filter.created_from = Some(Millis(number(&key, &value)?)),
            "created_to" => filter.created_to = Some(Millis(number(&key, &value)?)),
            "limit" => {
                let limit = number(&key, &value)? as usize;
                if !(1..=MAX_PAGE).contains(&limit) {
                    return Err(ApiError::bad_request(format!(
                        "limit must be 1 to {MAX_PAGE}"
                    )));
                }
                filter.limit = limit;
            }
            "after" => filter.after = Some(cursor(app, &value)?),
            _ => {}
        }
    }
    Ok(filter)
}

/// Where a page starts: after the place an `X-Next-Cursor` names
/// (`<created>.<id>`), or after an order given by its id.
fn cursor(app: &App, value: &str) -> Result<Arrival, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "after must be the X-Next-Cursor of the previous page or the id of an order",
        )
    };
    if let Some((created, id)) = value.split_once('.') {
        let created = created.parse().map_err(|_| bad())?;
        let id = id.parse().map_err(|_| bad())?;
        return Ok(Arrival {
            created: Millis(created),
            id: OrderId(id),
        });
    }
    let id = OrderId(value.parse().map_err(|_| bad())?);
    let order = app.broker().get(id).ok_or_else(|| {
        ApiError::bad_request(format!(
            "after: there is no order {id} (any more); the X-Next-Cursor of a page \
             stays valid when its last order is gone"
        ))
    })?;
    Ok(Arrival::of(id, &order))
}

/// `GET /orders?customer_id=&status=&stage=&limit=&after=`: a JSON array in
/// arrival order. Without `limit` or `after`, every order (the seed's "all
/// orders"), streamed a page at a time as `/orders/export` does; with
/// either, one page, and `Link: <...>; rel="next"` and `X-Next-Cursor` name
/// the next when there may be one.
pub fn list(app: &App, req: &Req) -> Result<Response<Body>, ApiError> {
    let query = req.query()?;
    let paged = query.iter().any(|(k, _)| k == "limit" || k == "after");
    let filter = filter(app, req, DEFAULT_PAGE)?;
    if !paged {
        return Ok(super::export::json_array(app, filter));
    }
    let (page, next) = app.broker().list_orders(&filter);
    let mut response = orders_response(app, &page);
    if let Some(next) = next {
        let next = format!("{}.{}", next.created.0, next.id);
        let mut query: Vec<(String, String)> =
            query.into_iter().filter(|(k, _)| k != "after").collect();
        query.push(("after".into(), next.clone()));
        let link = format!(
            "</orders?{}>; rel=\"next\"",
            serde_urlencoded::to_string(&query).unwrap_or_default()
        );
        let headers = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&link) {
            headers.insert(LINK, v);
        }
        if let Ok(v) = HeaderValue::from_str(&next) {
            headers.insert("x-next-cursor", v);
        }
    }
    Ok(response)
}

/// `GET /customers/{id}/orders`: 404 when the customer has none, as the seed does.
pub fn customer_orders(app: &App, req: &Req) -> Result<Response<Body>, ApiError> {
    let customer = CustomerId(req.id("Customer not found")?);
    let orders = app.broker().customer_orders(customer);
    if orders.is_empty() {
        return Err(ApiError::not_found("No orders found for this customer"));
    }
    Ok(orders_response(app, &orders))
}

/// `GET /orders/my-orders`: the calling customer's orders (an empty list
/// when they have none).
pub fn my_orders(app: &App, caller: Option<&Caller>) -> Result<Response<Body>, ApiError> {
    let customer = caller
        .and_then(Caller::customer_id)
        .ok_or_else(|| ApiError::bad_request("my-orders needs a customer's token (auth is off)"))?;
    let orders = app.broker().customer_orders(CustomerId(customer));
    Ok(orders_response(app, &orders))
}

/// A JSON array of orders.
fn orders_response(app: &App, orders: &[(OrderId, Order)]) -> Response<Body> {
    let symbols = app.broker().symbols();
    let bodies: Vec<OrderBody<'_>> = orders
        .iter()
        .map(|(id, o)| OrderBody::new(*id, o, &symbols))
        .collect();
    json_response(StatusCode::OK, &bodies)
}

/// `GET /orders/{id}` (and `GET /api/orders/{id}`).
pub fn get(app: &App, req: &Req) -> Result<Response<Body>, ApiError> {
    let id = order_id(req)?;
    let order = app
        .broker()
        .get(id)
        .ok_or_else(|| ApiError::not_found(NO_ORDER))?;
    Ok(order_response(app, StatusCode::OK, id, &order))
}

#[derive(Deserialize, ToSchema)]
pub(super) struct StatusIn {
    status: String,
}

/// `PUT /orders/{id}` `{"status": ...}`.
pub fn set_status(app: &App, req: &Req) -> Result<Response<Body>, ApiError> {
    let id = order_id(req)?;
    let body: StatusIn = json(&req.headers, &req.body)?;
    if body.status.is_empty() {
        return Err(ApiError::unprocessable("status must not be empty"));
    }
    let event = app.broker().set_status(id, &body.status, if_match(req)?)?;
    Ok(event_response(app, StatusCode::OK, &event))
}

#[derive(Deserialize, ToSchema)]
pub(super) struct ItemsIn {
    #[schema(value_type = Vec<ItemIn>)]
    items: Vec<Value>,
}

/// `PUT /orders/{id}/items`: only before the order is processed or confirmed.
pub fn replace_items(app: &App, req: &Req) -> Result<Response<Body>, ApiError> {
    let id = order_id(req)?;
    let body: ItemsIn = json(&req.headers, &req.body)?;
    let items = parse_items(&body.items)?;
    let event = app.broker().replace_items(id, &items, if_match(req)?)?;
    Ok(event_response(app, StatusCode::OK, &event))
}

/// `DELETE /orders/{id}`: 409 once processed.
pub fn delete(app: &App, req: &Req, caller: Option<&Caller>) -> Result<Response<Body>, ApiError> {
    let customer = caller.is_some_and(|c| c.role == crate::auth::Role::Customer);
    app.broker()
        .delete_order(order_id(req)?, if_match(req)?, customer)?;
    Ok(empty(StatusCode::NO_CONTENT))
}

#[derive(Deserialize, ToSchema)]
pub(super) struct ProcessIn {
    /// true processes; false or null only reads the order.
    #[serde(default)]
    #[schema(value_type = bool)]
    process: Value,
    #[serde(default)]
    #[schema(value_type = Option<StrategyName>)]
    strategy: Value,
}

/// What `strategy` may name (null is adjust).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)] // the description of what `process` reads
pub(super) enum StrategyName {
    Adjust,
    Reject,
    Ignore,
}

/// `PUT /api/orders/{id}` `{"process": true, "strategy": "adjust"|"reject"|"ignore"}`.
pub fn process(app: &App, req: &Req) -> Result<Response<Body>, ApiError> {
    let id = order_id(req)?;
    let body: ProcessIn = json(&req.headers, &req.body)?;
    let strategy = match &body.strategy {
        Value::Null => Strategy::default(),
        Value::String(s) if s == "adjust" => Strategy::Adjust,
        Value::String(s) if s == "reject" => Strategy::Reject,
        Value::String(s) if s == "ignore" => Strategy::Ignore,
        _ => {
            return Err(ApiError::bad_request(
                "strategy must be adjust, reject or ignore",
            ));
        }
    };
    match body.process {
        Value::Bool(true) => {}
        Value::Bool(false) | Value::Null => return get(app, req),
        // Not read as "no": the client meant something, and would take
        // the order it gets back for a processed one.
        _ => return Err(ApiError::unprocessable("process must be true or false")),
    }
    let event = app.broker().process(id, strategy, if_match(req)?)?;
    Ok(event_response(app, StatusCode::OK, &event))
}
