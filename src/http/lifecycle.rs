//! The Order Status API: `POST /api/store/orders/{confirm,paid,complete,cancel}`
//! by order number, with the seed's response shape, numeric codes and error
//! bodies (`{"error_message", "error_code", "errors": {field: message}}`).

use hyper::{Response, StatusCode};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::error::ApiError;
use super::{App, Body, Req, if_match, json_response, with_etag};
use crate::broker::{BrokerError, LifecycleError, Transition};
use crate::catalog::CustomerId;
use crate::model::{Order, OrderId, Version};
use crate::money::Money;
use crate::shop::{CHANNEL_CODES, Lifecycle, PAYMENT_METHOD_CODES, PaymentStatus, code_of};

/// What a call reads of its body (JSON); other fields are ignored.
#[derive(ToSchema)]
#[allow(dead_code)] // the description of what `transition` reads
pub(super) struct LifecycleIn {
    /// The order's number (confirm names it so).
    #[schema(schema_with = super::openapi::text_or_number)]
    number: Option<String>,
    /// The order's number (paid, complete and cancel name it so).
    #[schema(schema_with = super::openapi::text_or_number)]
    order: Option<String>,
    /// How it was paid (paid): the seed's number, or a word.
    #[schema(schema_with = super::openapi::text_or_number)]
    payment_method: Option<String>,
    #[schema(rename = "paymentMethod", schema_with = super::openapi::text_or_number)]
    payment_method_camel: Option<String>,
}

/// The seed's error body: `{"error_message", "error_code", "errors": {field: message}}`.
#[derive(Serialize, ToSchema)]
pub(super) struct Refusal<'a> {
    error_message: &'a str,
    error_code: &'a str,
    errors: std::collections::BTreeMap<&'a str, &'a str>,
}

/// The seed's order: numeric status codes, camelCase names.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct StoreOrder<'a> {
    id: OrderId,
    number: &'a str,
    total: Money,
    tax: Money,
    service_charge: Money,
    grand_total: Money,
    table_number: Option<&'a str>,
    /// The number the client sent, or its word's (see the README's table);
    /// null for another word.
    channel: Option<u64>,
    notes: &'a str,
    /// 1 New, 10 Confirmed, 20 Complete, 30 Cancelled.
    status: u8,
    /// Where the order is in the delivery flow: 1 pending, 2 preparing, 3
    /// out for delivery, 4 delivered, 5 cancelled.
    delivery_status: u8,
    status_text: &'a str,
    store_name: &'a str,
    #[serde(rename = "userID")]
    user_id: Option<CustomerId>,
    /// Seconds since the epoch.
    created: u64,
    /// The number the client sent, or its word's; null for another word.
    payment_method: Option<u64>,
    payment_status: PaymentStatus,
    user: Option<StoreUser>,
    /// Always null (the seed's field).
    #[serde(rename = "delivery_info")]
    #[schema(value_type = Option<String>)]
    delivery_info: Option<()>,
    version: Version,
}

/// The order's customer, in the seed's answer.
#[derive(Serialize, ToSchema)]
pub(super) struct StoreUser {
    id: CustomerId,
    name: String,
    phone: Option<String>,
}

pub fn transition(
    app: &App,
    req: &Req,
    caller: Option<&crate::auth::Caller>,
) -> Result<Response<Body>, ApiError> {
    let action = match req.param.as_deref() {
        Some("confirm") => Transition::Confirm,
        Some("paid") => Transition::Paid,
        Some("complete") => Transition::Complete,
        Some("cancel") => Transition::Cancel,
        _ => return Err(ApiError::not_found("Not found")),
    };
    // confirm names the order `number`, the others `order`; take either.
    let field = if action == Transition::Confirm {
        "number"
    } else {
        "order"
    };
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let named: Vec<Option<String>> = ["number", "order"]
        .iter()
        .filter_map(|k| body.get(k))
        .map(text)
        .collect();
    // A body that names two orders is refused, not read one way here and
    // another way elsewhere.
    if named.len() == 2 && named[0] != named[1] {
        return Err(refusal(
            "invalid_order_number",
            "Invalid order number",
            field,
            "number and order name different orders",
        ));
    }
    let number = named.into_iter().next().flatten().ok_or_else(|| {
        refusal(
            "invalid_order_number",
            "Invalid order number",
            field,
            "Order number is required",
        )
    })?;
    // Who may act is checked on the very order this call resolved and acts
    // on (the number is read once, here).
    if let Some((_, order)) = app.broker().order_by_number(&number)
        && !super::access::may_act_on(caller, &order)
    {
        return Err(super::access::forbidden());
    }
    // A number (the seed's) or a word; kept as text.
    let method = match ["payment_method", "paymentMethod"]
        .iter()
        .find_map(|k| body.get(k))
    {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) if n.is_u64() => Some(n.to_string()),
        Some(_) => {
            return Err(refusal(
                "invalid_payment_method",
                "Invalid payment method",
                "paymentMethod",
                "paymentMethod must be a number or a word",
            ));
        }
    };
    let event = app
        .broker()
        .transition_by(
            &number,
            action,
            method,
            if_match(req)?,
            // A customer cancels under the customer's rule, whichever API.
            match caller.and_then(crate::auth::Caller::customer_id) {
                Some(_) => crate::broker::Canceller::Customer,
                None => crate::broker::Canceller::Staff,
            },
        )
        .map_err(|e| match e {
            BrokerError::OrderNotFound => refusal(
                "invalid_order_number",
                "Order not found",
                field,
                "Order not found",
            ),
            BrokerError::Lifecycle(e) => lifecycle_refusal(e, field),
            // The table of moves refuses (a scheduled order, a customer
            // too late to cancel): the seed's shape, its status code.
            BrokerError::Conflict(why) => refusal("invalid_status", &why, field, &why),
            // A stale If-Match keeps its 412.
            other => other.into(),
        })?;
    let (id, order) = event.order().expect("transitions publish the order");
    let mut response = json_response(StatusCode::OK, &answer(app, id, order));
    with_etag(&mut response, order.version);
    Ok(response)
}

fn lifecycle_refusal(e: LifecycleError, field: &str) -> ApiError {
    match e {
        // The seed's texts: "Order has been confirmed" (completed, cancelled).
        LifecycleError::InvalidStatus(state) => {
            let text = match state {
                Lifecycle::New | Lifecycle::Confirmed => "Order has been confirmed",
                Lifecycle::Complete => "Order has been completed",
                Lifecycle::Cancelled => "Order has been cancelled",
            };
            refusal("invalid_status", text, field, text)
        }
        LifecycleError::AlreadyPaid => refusal(
            "already_paid",
            "Order already paid",
            field,
            "Order already paid",
        ),
        LifecycleError::AlreadyCompleted => refusal(
            "order_already_completed",
            "Order already completed",
            field,
            "Order already completed",
        ),
        LifecycleError::AlreadyCanceled => refusal(
            "order_already_canceled",
            "Order already canceled",
            field,
            "Order already canceled",
        ),
    }
}

/// 400 in the seed's error shape.
fn refusal(code: &str, message: &str, field: &str, detail: &str) -> ApiError {
    let body = Refusal {
        error_message: message,
        error_code: code,
        errors: [(field, detail)].into(),
    };
    ApiError::bad_request(message.to_string()).with_body(json!(body))
}

/// The seed's order answer.
fn answer<'a>(app: &'a App, id: OrderId, order: &'a Order) -> StoreOrder<'a> {
    let shop = order
        .shop
        .as_deref()
        .expect("orders with numbers have shop details");
    let state = Lifecycle::of(order.stage);
    let customer = shop.customer_id.and_then(|c| app.broker().customer(c));
    StoreOrder {
        id,
        number: &shop.number,
        total: shop.totals.total,
        tax: shop.totals.tax,
        service_charge: shop.totals.service_charge,
        grand_total: shop.totals.grand_total,
        table_number: shop.table_number.as_deref(),
        channel: code_of(&shop.channel, &CHANNEL_CODES),
        notes: &shop.notes,
        status: state.code(),
        delivery_status: app.broker().fulfilment_of(order).delivery_code(),
        status_text: state.text(),
        store_name: &app.store_name,
        user_id: shop.customer_id,
        created: order.created.get().0 / 1000,
        payment_method: shop
            .payment_method
            .as_deref()
            .and_then(|m| code_of(m, &PAYMENT_METHOD_CODES)),
        payment_status: shop.payment_status,
        user: customer.map(|c| StoreUser {
            id: c.id,
            name: c.name,
            phone: c.phone,
        }),
        delivery_info: None,
        version: order.version,
    }
}
