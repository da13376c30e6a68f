//! The seed `order_store` API, body for body: CPEE pushes `update_order`, the
//! robot bar's website polls the views. Views are rendered once per change
//! of their stage and served from a cache in between, since boards poll far
//! more often than orders change.

use bytes::Bytes;
use hyper::{Response, StatusCode};
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::body::{Field, Kind, kind, parse_fields};
use super::error::ApiError;
use super::{App, Body, Req, if_match, json_bytes, json_response, with_etag};
use crate::model::{Millis, OrderId, Stage, Version};

/// `PUT|POST /update_order`: create or update one order.
pub async fn update(app: &App, req: &Req) -> Result<Response<Body>, ApiError> {
    // The hot path of process engines: JSON goes straight into the four
    // fields it has (no map of every field), other bodies through the
    // general parser.
    let json;
    let fields;
    let update = if kind(&req.headers, &req.body)? == Kind::Json {
        super::body::expect_object(&req.body)?;
        json = serde_json::from_slice::<UpdateJson>(&req.body).map_err(|e| {
            ApiError::bad_request(match e.classify() {
                serde_json::error::Category::Data => "invalid JSON: expected an object".to_string(),
                _ => format!("invalid JSON: {e}"),
            })
        })?;
        UpdateOrder::from(|name| json.get(name))?
    } else {
        fields = parse_fields(&req.headers, req.body.clone()).await?;
        UpdateOrder::from(|name| fields.get(name))?
    };
    // The answer is the seed's status message, not the order, so it carries
    // no ETag (measured: adding one costs ~0.7 µs a request); read the
    // version from `get_status`.
    app.broker().update_status_if(
        update.id,
        update.status,
        update.orderbot_id.as_deref(),
        if_match(req)?,
    )?;
    Ok(json_bytes(StatusCode::OK, UPDATED))
}

/// The seed's answer to an update, written once (see [`Updated`]).
const UPDATED: &str = r#"{"message":"Order updated"}"#;

/// What [`UPDATED`] is, for the API description.
#[derive(Serialize, ToSchema)]
pub(super) struct Updated {
    /// Always "Order updated".
    message: String,
}

/// The fields of a JSON update; others are skipped unread. `id` (JSON) and
/// `order_id` (forms) are both accepted in both; one of them and `status`
/// are required.
#[derive(serde::Deserialize, ToSchema)]
pub(super) struct UpdateJson {
    /// The order: a non-negative integer, as a number or decimal text.
    #[schema(schema_with = super::openapi::order_number)]
    id: Option<Value>,
    #[schema(schema_with = super::openapi::order_number)]
    order_id: Option<Value>,
    /// The status word, at most `limits.max_text_bytes` long.
    #[schema(value_type = String)]
    status: Option<Value>,
    /// The orderbot now working on the order (text or a number).
    #[schema(schema_with = super::openapi::text_or_number)]
    orderbot_id: Option<Value>,
}

impl UpdateJson {
    fn get(&self, name: &str) -> Option<Field<'_>> {
        let value = match name {
            "id" => &self.id,
            "order_id" => &self.order_id,
            "status" => &self.status,
            "orderbot_id" => &self.orderbot_id,
            _ => &None,
        };
        value.as_ref().map(Field::Json)
    }
}

/// The fields of an update, checked. JSON names the id `id`, forms `order_id`;
/// both names are accepted in both.
#[derive(Debug)]
struct UpdateOrder<'a> {
    id: OrderId,
    status: &'a str,
    orderbot_id: Option<String>,
}

impl<'a> UpdateOrder<'a> {
    /// Reads the update through `get`, which looks a field up by name.
    fn from(get: impl Fn(&str) -> Option<Field<'a>>) -> Result<Self, ApiError> {
        let named = |k: &str| get(k).filter(|f| !is_blank(*f));
        // A body that names two orders is refused, not read one way.
        if let (Some(a), Some(b)) = (named("id"), named("order_id"))
            && parse_order_id(a)? != parse_order_id(b)?
        {
            return Err(ApiError::bad_request(
                "id and order_id name different orders",
            ));
        }
        let id = get("id")
            .or_else(|| get("order_id"))
            .filter(|f| !is_blank(*f));
        let status = get("status").filter(|f| !is_blank(*f));
        let (Some(id), Some(status)) = (id, status) else {
            return Err(ApiError::missing_data());
        };
        let orderbot_id = match get("orderbot_id") {
            None | Some(Field::Json(Value::Null)) => None,
            Some(Field::Text(t)) => Some(t.to_string()),
            Some(Field::Json(Value::String(s))) => Some(s.clone()),
            Some(Field::Json(Value::Number(n))) => Some(n.to_string()),
            Some(Field::Json(_)) => {
                return Err(ApiError::bad_request(
                    "orderbot_id must be a string or a number",
                ));
            }
        };
        let status = status
            .text()
            .ok_or_else(|| ApiError::bad_request("status must be a string"))?;
        Ok(UpdateOrder {
            id: parse_order_id(id)?,
            status,
            orderbot_id,
        })
    }
}

/// Absent in the seed's sense: null or empty text.
fn is_blank(field: Field<'_>) -> bool {
    match field {
        Field::Json(v) if v.is_null() => true,
        _ => field.text().is_some_and(str::is_empty),
    }
}

/// A non-negative integer, as a JSON number or as decimal text.
/// Reads any u64; an id past [`crate::model::MAX_CHOSEN_ORDER_ID`] is
/// refused by the broker when it would create an order.
fn parse_order_id(field: Field<'_>) -> Result<OrderId, ApiError> {
    let invalid = || ApiError::bad_request("id must be a non-negative integer");
    let id = match field {
        Field::Json(Value::Number(n)) => n.as_u64(),
        _ => field
            .text()
            .map(str::trim)
            .filter(|t| t.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|t| t.parse().ok()),
    };
    id.map(OrderId).ok_or_else(invalid)
}

/// One order as `get_status` shows it.
#[derive(Serialize, ToSchema)]
pub(super) struct Status<'a> {
    id: OrderId,
    order_id: OrderId,
    status: &'a str,
    orderbot_id: Option<&'a str>,
    stage: Stage,
    version: Version,
    created: Millis,
    updated: Millis,
    stage_since: Millis,
}

/// `GET /get_status/{id}`: one order, or the seed's 404.
pub fn get_status(app: &App, id: Option<&str>) -> Result<Response<Body>, ApiError> {
    let not_found = || ApiError::not_found("Order not found");
    let id = id
        .and_then(|t| parse_order_id(Field::Text(t)).ok())
        .ok_or_else(not_found)?;
    let _pin = app.broker().pin();
    let order = app.broker().get(id).ok_or_else(not_found)?;
    let symbols = app.broker().symbols();
    let mut response = json_response(
        StatusCode::OK,
        &Status {
            id,
            order_id: id,
            status: symbols.text(order.status),
            orderbot_id: order.orderbot_id.map(|b| symbols.text(b)),
            stage: order.stage,
            version: order.version,
            created: order.created.get(),
            updated: order.updated.get(),
            stage_since: order.stage_since.get(),
        },
    );
    with_etag(&mut response, order.version);
    Ok(response)
}

/// A row of `get_all`.
#[derive(Serialize, ToSchema)]
pub(super) struct AllRow<'a> {
    order_id: OrderId,
    status: &'a str,
    orderbot_id: Option<&'a str>,
}

/// `GET /get_all`: `[{"order_id", "status", "orderbot_id"}]`, every stage.
pub fn get_all(app: &App) -> Response<Body> {
    app.views.serve(app, View::All, |broker| {
        let _pin = broker.pin();
        let orders = broker.all_orders();
        let symbols = broker.symbols();
        let rows: Vec<AllRow<'_>> = orders
            .iter()
            .map(|(id, o)| AllRow {
                order_id: *id,
                status: symbols.text(o.status),
                orderbot_id: o.orderbot_id.map(|b| symbols.text(b)),
            })
            .collect();
        serde_json::to_vec(&rows)
    })
}

/// A row of `get_current_order`.
#[derive(Serialize, ToSchema)]
pub(super) struct CurrentRow<'a> {
    id: OrderId,
    orderbot_id: Option<&'a str>,
    status: &'a str,
}

/// `get_current_order`'s answer.
#[derive(Serialize, ToSchema)]
pub(super) struct CurrentOrders<'a> {
    incomplete_orders: Vec<CurrentRow<'a>>,
}

/// `get_completed_orders`' answer.
#[derive(Serialize, ToSchema)]
pub(super) struct CompletedOrders {
    completed_orders: Vec<OrderId>,
}

/// `get_new_orders`' answer.
#[derive(Serialize, ToSchema)]
pub(super) struct NewOrders {
    new_orders: Vec<OrderId>,
}

/// `GET /get_current_order`: `{"incomplete_orders": [{"id", "orderbot_id", "status"}]}`.
pub fn get_current_order(app: &App) -> Response<Body> {
    app.views.serve(app, View::Current, |broker| {
        let _pin = broker.pin();
        let orders = broker.stage_orders(Stage::InProgress);
        let symbols = broker.symbols();
        let rows: Vec<CurrentRow<'_>> = orders
            .iter()
            .map(|(id, o)| CurrentRow {
                id: *id,
                orderbot_id: o.orderbot_id.map(|b| symbols.text(b)),
                status: symbols.text(o.status),
            })
            .collect();
        serde_json::to_vec(&CurrentOrders {
            incomplete_orders: rows,
        })
    })
}

/// `GET /get_completed_orders`: `{"completed_orders": [ids]}`.
pub fn get_completed_orders(app: &App) -> Response<Body> {
    app.views.serve(app, View::Completed, |broker| {
        let ids = broker.stage_ids(Stage::Completed);
        serde_json::to_vec(&CompletedOrders {
            completed_orders: ids,
        })
    })
}

/// `GET /get_new_orders`: `{"new_orders": [ids]}`.
pub fn get_new_orders(app: &App) -> Response<Body> {
    app.views.serve(app, View::New, |broker| {
        let ids = broker.stage_ids(Stage::New);
        serde_json::to_vec(&NewOrders { new_orders: ids })
    })
}

#[derive(Debug, Clone, Copy)]
enum View {
    All,
    Current,
    Completed,
    New,
}

impl View {
    fn stage(self) -> Option<Stage> {
        match self {
            View::All => None,
            View::Current => Some(Stage::InProgress),
            View::Completed => Some(Stage::Completed),
            View::New => Some(Stage::New),
        }
    }
}

/// The last rendering of each view with the generation it was made at.
#[derive(Default)]
pub struct ViewCache {
    slots: [Mutex<Option<(u64, Bytes)>>; 4],
}

impl ViewCache {
    fn serve(
        &self,
        app: &App,
        view: View,
        render: impl FnOnce(&crate::Broker) -> serde_json::Result<Vec<u8>>,
    ) -> Response<Body> {
        let broker = app.broker();
        // Read the generation first: what is rendered after it is at least that new.
        let generation = broker.generation(view.stage());
        let slot = &self.slots[view as usize];
        if let Some((g, bytes)) = &*slot.lock()
            && *g == generation
        {
            return json_bytes(StatusCode::OK, bytes.clone());
        }
        let bytes = match render(broker) {
            Ok(bytes) => Bytes::from(bytes),
            Err(e) => {
                return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                    .into_response();
            }
        };
        let mut cached = slot.lock();
        // Keep the newest rendering if another request raced this one.
        if cached.as_ref().is_none_or(|(g, _)| *g < generation) {
            *cached = Some((generation, bytes.clone()));
        }
        json_bytes(StatusCode::OK, bytes)
    }
}
