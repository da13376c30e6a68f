//! `GET /openapi.json`: an OpenAPI 3.0 description of every endpoint, built
//! once at start from the table below and the configured seed URLs. Each
//! operation carries a request example and, in `x-example-status`, what
//! that example gets on a broker holding product 1, customer 1 and order 1
//! (`tests/openapi.rs` sends every example and checks the answer), and
//! `x-who` says who may call it when auth is on (from `access::need`).

use bytes::Bytes;
use hyper::Method;
use serde_json::{Map, Value, json};

use super::Route;
use super::access::need;

/// One operation: a route and a method.
struct Op {
    route: Route,
    method: Method,
    summary: &'static str,
    /// Path, query and header parameters: (name, where, example, description).
    params: &'static [Param],
    /// A JSON request body's example.
    body: Option<&'static str>,
    /// Whether the body may also be a form (url-encoded or multipart).
    form: bool,
    /// Status codes with what they mean; the first is the example's answer.
    responses: &'static [(u16, &'static str)],
    /// Media type of the first response.
    media: &'static str,
}

type Param = (&'static str, &'static str, &'static str, &'static str);

const JSON: &str = "application/json";
const ID: Param = ("id", "path", "1", "The record's id.");
const BAD_ID: (u16, &str) = (404, "No such record.");
const INVALID: (u16, &str) = (422, "A field is missing, of the wrong type, or unknown.");
const MALFORMED: (u16, &str) = (
    400,
    "The body is not valid JSON or a required field is missing.",
);

fn op(
    route: Route,
    method: Method,
    summary: &'static str,
    responses: &'static [(u16, &'static str)],
) -> Op {
    Op {
        route,
        method,
        summary,
        params: &[],
        body: None,
        form: false,
        responses,
        media: JSON,
    }
}

impl Op {
    fn params(mut self, params: &'static [Param]) -> Op {
        self.params = params;
        self
    }
    fn body(mut self, example: &'static str) -> Op {
        self.body = Some(example);
        self
    }
    fn form(mut self) -> Op {
        self.form = true;
        self
    }
    fn media(mut self, media: &'static str) -> Op {
        self.media = media;
        self
    }
}

fn ops() -> Vec<Op> {
    use Method as M;
    use Route as R;
    let cpee_headers: &'static [Param] = &[
        (
            "CPEE-CALLBACK",
            "header",
            "",
            "CPEE's callback URL: answer later by PUT.",
        ),
        ("CPEE-CALLBACK-ID", "header", "", "The callback's id."),
        (
            "CPEE-INSTANCE",
            "header",
            "",
            "The process instance; names the orderbot if the body does not.",
        ),
        (
            "CPEE-INSTANCE-UUID",
            "header",
            "",
            "With CPEE-CALLBACK-ID, recognises a re-sent call.",
        ),
    ];
    vec![
        op(R::Update, M::PUT, "Create or update an order's status (the seed order_store).", &[(200, "Updated: {\"message\": \"Order updated\"}."), (400, "Missing data."), (412, "If-Match names another version."), (422, "A text is too long or too many distinct words.")])
            .body(r#"{"order_id": 1, "status": "Mixing", "orderbot_id": "robot-1"}"#).form(),
        op(R::Update, M::POST, "Same as PUT.", &[(200, "Updated."), (400, "Missing data.")])
            .body(r#"{"order_id": 1, "status": "Mixing"}"#).form(),
        op(R::GetAll, M::GET, "Every order: [{order_id, status, orderbot_id}].", &[(200, "The orders.")]),
        op(R::GetCurrentOrder, M::GET, "Orders in progress: {incomplete_orders: [{id, orderbot_id, status}]}.", &[(200, "The view.")]),
        op(R::GetCompletedOrders, M::GET, "Ids of completed orders: {completed_orders: [...]}.", &[(200, "The view.")]),
        op(R::GetNewOrders, M::GET, "Ids of new orders: {new_orders: [...]}.", &[(200, "The view.")]),
        op(R::GetStatus, M::GET, "One order with stage, version and times.", &[(200, "The order; ETag is its version."), (404, "Order not found.")])
            .params(&[ID]),
        op(R::Healthz, M::GET, "The process is up: order count, seq, open streams.", &[(200, "Up.")]),
        op(R::Readyz, M::GET, "Ready to serve: recovery done and the journal writable.", &[(200, "Ready."), (503, "Recovering, or the journal failed.")]),
        op(R::Metrics, M::GET, "Prometheus metrics.", &[(200, "Text exposition format.")]).media("text/plain"),
        op(R::OpenApi, M::GET, "This description.", &[(200, "OpenAPI 3.0 JSON.")]),
        op(R::Board, M::GET, "The live order board page.", &[(200, "HTML.")]).media("text/html"),
        op(R::Events, M::GET, "Server-sent events of every change (filters: stage, order_id; resume: Last-Event-ID or since).", &[(200, "An event stream."), (503, "Too many streams.")])
            .params(&[("stage", "query", "", "Comma-separated stages to follow."), ("order_id", "query", "", "One order to follow."), ("since", "query", "", "Resume after this event id."), ("Last-Event-ID", "header", "", "Resume after this event id.")])
            .media("text/event-stream"),
        op(R::Views, M::GET, "The three board views and the event id they reflect.", &[(200, "{new, in_progress, completed, last_event_id}.")]),
        op(R::TrackingStream, M::GET, "Server-sent events of one order.", &[(200, "An event stream."), (404, "Order not found.")])
            .params(&[ID]).media("text/event-stream"),
        op(R::Products, M::GET, "Every product.", &[(200, "The products.")]),
        op(R::Products, M::POST, "Create a product (id assigned, or chosen with \"id\").", &[(201, "Created; Location names it."), MALFORMED, (409, "The id is taken."), INVALID])
            .body(r#"{"name": "Mojito", "price": 7.5, "stock": 40}"#),
        op(R::Product, M::GET, "One product.", &[(200, "The product."), BAD_ID]).params(&[ID]),
        op(R::Product, M::PUT, "Change the fields named.", &[(200, "The product."), BAD_ID, INVALID]).params(&[ID]).body(r#"{"stock": 35}"#),
        op(R::Product, M::DELETE, "Delete a product.", &[(204, "Deleted."), BAD_ID]).params(&[ID]),
        op(R::Customers, M::GET, "Every customer.", &[(200, "The customers.")]),
        op(R::Customers, M::POST, "Create a customer.", &[(201, "Created."), MALFORMED, (409, "The id is taken."), INVALID])
            .body(r#"{"name": "Bob", "phone": "555-2", "balance": "20.00"}"#),
        op(R::Customer, M::GET, "One customer.", &[(200, "The customer."), BAD_ID]).params(&[ID]),
        op(R::Customer, M::PUT, "Change the fields named.", &[(200, "The customer."), BAD_ID, INVALID]).params(&[ID]).body(r#"{"balance": 80}"#),
        op(R::Customer, M::DELETE, "Delete a customer.", &[(204, "Deleted."), BAD_ID]).params(&[ID]),
        op(R::CustomerOrders, M::GET, "A customer's orders.", &[(200, "The orders."), (404, "The customer has no orders.")]).params(&[ID]),
        op(R::CustomerOrders, M::POST, "Create an order for this customer.", &[(201, "Created."), (400, "Out of stock (with check_stock)."), (404, "No such customer."), INVALID])
            .params(&[ID]).body(r#"{"items": [{"product_id": 1, "quantity": 1}]}"#),
        op(R::Orders, M::GET, "Orders ascending by id, filtered and paged (X-Next-Cursor, Link).", &[(200, "The orders."), (400, "A bad filter.")])
            .params(&[("customer_id", "query", "", "Only this customer's."), ("stage", "query", "", "new, in_progress, completed or cancelled."), ("status", "query", "", "Only this status."), ("limit", "query", "", "1 to 1000 (100)."), ("after", "query", "", "The cursor: list ids above it.")]),
        op(R::Orders, M::POST, "Create an order with items (prices captured now).", &[(201, "Created; Location and ETag."), (400, "Out of stock (with check_stock)."), INVALID])
            .body(r#"{"customer_id": 1, "items": [{"product_id": 1, "quantity": 2}], "notes": "no ice", "table_number": 7, "channel": "web", "check_stock": true}"#),
        op(R::MyOrders, M::GET, "The calling customer's orders.", &[(200, "The orders."), (400, "No customer token (auth off).")]),
        op(R::Order, M::GET, "One order.", &[(200, "The order; ETag is its version."), (404, "Order not found.")]).params(&[ID]),
        op(R::Order, M::PUT, "Set an order's status (If-Match optional).", &[(200, "The order."), (404, "Order not found."), (409, "The order is final."), (412, "Version mismatch.")])
            .params(&[ID]).body(r#"{"status": "Confirmed"}"#),
        op(R::Order, M::DELETE, "Delete an order that is not processed.", &[(204, "Deleted."), (404, "Order not found."), (409, "Processed orders stay.")]).params(&[ID]),
        op(R::OrderItems, M::PUT, "Replace the items before processing or confirmation.", &[(200, "The order."), (404, "Order not found."), (409, "Too late."), INVALID])
            .params(&[ID]).body(r#"{"items": [{"product_id": 1, "quantity": 3}]}"#),
        op(R::ProcessOrder, M::GET, "One order (the store tutorial's path).", &[(200, "The order."), (404, "Order not found.")]).params(&[ID]),
        op(R::ProcessOrder, M::PUT, "Process: take stock, charge the balance, atomically.", &[(200, "The processed order."), (400, "Refused: already processed, balance, stock, strategy."), (404, "Order not found.")])
            .params(&[ID]).body(r#"{"process": true, "strategy": "adjust"}"#),
        op(R::ProcessOrder, M::DELETE, "Delete an order that is not processed (as DELETE /orders/{id}).", &[(204, "Deleted."), (404, "Order not found."), (409, "Processed orders stay.")]).params(&[ID]),
        op(R::ApiProducts, M::GET, "Every product (the store tutorial's blueprint; as GET /products).", &[(200, "The products.")]),
        op(R::ApiProducts, M::POST, "Create a product (as POST /products).", &[(201, "Created; Location names it."), MALFORMED, (409, "The id is taken."), INVALID])
            .body(r#"{"name": "Lime", "price": 0.5, "stock": 100}"#),
        op(R::ApiProduct, M::GET, "One product (as GET /products/{id}).", &[(200, "The product."), BAD_ID]).params(&[ID]),
        op(R::ApiProduct, M::PUT, "Change the fields named (as PUT /products/{id}).", &[(200, "The product."), BAD_ID, INVALID]).params(&[ID]).body(r#"{"stock": 35}"#),
        op(R::ApiProduct, M::DELETE, "Delete a product (as DELETE /products/{id}).", &[(204, "Deleted."), BAD_ID]).params(&[ID]),
        op(R::ApiCustomers, M::GET, "Every customer, sorted by name (the store tutorial's order).", &[(200, "The customers.")]),
        op(R::ApiCustomers, M::POST, "Create a customer (as POST /customers).", &[(201, "Created."), MALFORMED, (409, "The id is taken."), INVALID])
            .body(r#"{"name": "Bob", "phone": "555-2", "balance": "20.00"}"#),
        op(R::ApiCustomer, M::GET, "One customer (as GET /customers/{id}).", &[(200, "The customer."), BAD_ID]).params(&[ID]),
        op(R::ApiCustomer, M::PUT, "Change the fields named (as PUT /customers/{id}).", &[(200, "The customer."), BAD_ID, INVALID]).params(&[ID]).body(r#"{"balance": 80}"#),
        op(R::ApiCustomer, M::DELETE, "Delete a customer (as DELETE /customers/{id}).", &[(204, "Deleted."), BAD_ID]).params(&[ID]),
        op(R::ApiOrders, M::GET, "Orders ascending by id (as GET /orders, same filters and paging).", &[(200, "The orders."), (400, "A bad filter.")]),
        op(R::ApiOrders, M::POST, "Create an order (as POST /orders); an item may name its product by name instead of product_id, as the store tutorial's clients do.", &[(201, "Created; Location and ETag."), (400, "Out of stock (with check_stock)."), INVALID])
            .body(r#"{"customer_id": 1, "items": [{"name": "Mojito", "quantity": 2}]}"#),
        op(R::StorePage, M::GET, "The store page: orders, processing and deleting them.", &[(200, "HTML.")]).media("text/html"),
        op(R::Lifecycle, M::POST, "Order Status API: confirm, paid, complete or cancel by order number.", &[(200, "The order in the Order Status API's shape."), (400, "Not allowed from the order's state, or no number."), (404, "Unknown action or order.")])
            .params(&[("action", "path", "confirm", "confirm, paid, complete or cancel.")]).body(r#"{"number": "FR9TL74P"}"#),
        op(R::AssignDelivery, M::PUT, "Assign a delivery partner (shown as the order's orderbot).", &[(200, "The order."), (404, "Order not found."), (409, "The order is finished."), INVALID])
            .params(&[ID]).body(r#"{"partner_id": "rider-7"}"#),
        op(R::OrderStatus, M::PUT, "Move an order to the next step: confirmed, preparing, out_for_delivery, delivered.", &[(200, "The order; the step is in its history with its time."), (403, "Not the assigned partner."), (404, "Order not found."), (409, "Not the next step."), INVALID])
            .params(&[ID]).body(r#"{"status": "confirmed"}"#),
        op(R::DeliveryLocation, M::PUT, "The assigned partner reports where they are (also on the tracking stream).", &[(200, "{lat, lng, at}."), (403, "Not the assigned partner."), (404, "Order not found."), (409, "No delivery under way."), (422, "Out of range.")])
            .params(&[ID]).body(r#"{"lat": 48.2082, "lng": 16.3738}"#),
        op(R::DeliveryLocation, M::GET, "Where the partner last was.", &[(200, "{lat, lng, at}."), (404, "Order not found, or no location yet.")]).params(&[ID]),
        op(R::CancelOrder, M::POST, "Cancel with a reason (a customer before preparation, staff before delivery); a processed order's stock and money go back.", &[(200, "The cancelled order."), (404, "Order not found."), (409, "Too late, or already cancelled."), INVALID])
            .params(&[ID]).body(r#"{"reason": "changed my mind"}"#),
        op(R::Export, M::GET, "Every order the filters select, streamed: CSV (RFC 4180, header row), NDJSON or a JSON array.", &[(200, "The export (chunked)."), (400, "A bad format or filter.")])
            .params(&[("format", "query", "csv", "csv, ndjson or json (the default)."), ("customer_id", "query", "", "Only this customer's."), ("stage", "query", "", "Only this stage."), ("status", "query", "", "Only this status."), ("created_from", "query", "", "Created at or after (ms since the epoch)."), ("created_to", "query", "", "Created before (ms since the epoch).")])
            .media("text/csv"),
        op(R::BulkStatus, M::PUT, "Move up to limits.max_bulk_orders orders one step; error_policy reject_all (default, atomic) or skip_failed.", &[(200, "Per-order results: applied, failed (with status and error), skipped."), (409, "reject_all: an order failed, none changed."), INVALID])
            .body(r#"{"order_ids": [1], "status": "confirmed", "error_policy": "reject_all"}"#),
        op(R::BulkAssign, M::POST, "Assign a partner to up to limits.max_bulk_orders orders; same error policies.", &[(200, "Per-order results."), (409, "reject_all: an order failed, none changed."), INVALID])
            .body(r#"{"order_ids": [1], "partner_id": "rider-9", "error_policy": "skip_failed"}"#),
        op(R::ScheduledOrders, M::POST, "Create an order that waits, out of the board's views, until scheduled_for (ms since the epoch, within a year); then it becomes new and enters the dispatch queue. Cancellable before.", &[(201, "Created, status Scheduled, stage scheduled."), (400, "Out of stock (with check_stock)."), INVALID])
            .body(r#"{"customer_id": 1, "items": [{"product_id": 1, "quantity": 1}], "scheduled_for": "{in an hour}"}"#),
        op(R::Feedback, M::POST, "The order's customer rates it (1 to 5, with a comment): once, after completion.", &[(201, "The feedback."), (404, "Order not found."), (409, "Not completed, or given already."), INVALID])
            .params(&[("id", "path", "2", "A completed order's id.")]).body(r#"{"rating": 5, "comment": "quick and warm"}"#),
        op(R::Templates, M::POST, "Save a customer's order to repeat (a customer's own; staff name customer_id).", &[(201, "The template; Location names it."), (403, "Another customer's."), INVALID])
            .body(r#"{"customer_id": 1, "name": "usual", "items": [{"product_id": 1, "quantity": 2}], "notes": "no ice"}"#),
        op(R::Templates, M::GET, "Templates: a customer's own, or everyone's (?customer_id= filters).", &[(200, "The templates.")])
            .params(&[("customer_id", "query", "", "Only this customer's (staff).")]),
        op(R::Template, M::GET, "One template.", &[(200, "The template."), (403, "Another customer's."), (404, "No such template.")]).params(&[ID]),
        op(R::Template, M::DELETE, "Delete a template.", &[(204, "Deleted."), (403, "Another customer's."), (404, "No such template.")]).params(&[ID]),
        op(R::TemplateOrder, M::POST, "Order a template again: current prices, stock checked like a new order.", &[(201, "The new order."), (400, "Out of stock."), (404, "No such template."), (422, "A product is gone.")]).params(&[ID]),
        op(R::RequestReturn, M::POST, "The order's customer asks to return items of a completed order within returns.window_secs.", &[(201, "The return: status requested, amount."), (404, "Order not found."), (409, "Not completed, window closed, or already requested."), INVALID])
            .params(&[("id", "path", "2", "A completed order's id.")]).body(r#"{"items": [{"product_id": 1, "quantity": 1}], "reason": "cold"}"#),
        op(R::OrderReturn, M::PUT, "Staff move a return on: approved or rejected, then received, then refunded (credits the balance, restocks if configured).", &[(200, "The order with its return."), (404, "Order not found."), (409, "Not allowed from the return's state."), INVALID])
            .params(&[("id", "path", "3", "An order with a requested return.")]).body(r#"{"status": "approved"}"#),
        op(R::Analytics, M::GET, "Reports from maintained aggregates: revenue (?from=&to= ms, bucket=day|hour), delivery-performance (confirmed to delivered per partner, p50/p90), top-customers (?limit=), cancellation-rate, stage-times (time in each stage per orderbot).", &[(200, "The report."), (400, "A bad parameter."), (404, "No such report.")])
            .params(&[("report", "path", "revenue", "revenue, delivery-performance, top-customers, cancellation-rate or stage-times."), ("bucket", "query", "hour", "day or hour (revenue)."), ("from", "query", "", "Start, ms since the epoch (revenue; default a week before to)."), ("to", "query", "", "End, exclusive (revenue; default now)."), ("limit", "query", "", "1 to 100 (top-customers; 10).")]),
        op(R::Intake, M::POST, "Take in an order from a process engine; its fields become details.", &[(200, "{\"order_id\": n}."), (400, "Bad body.")])
            .params(cpee_headers).body(r#"{"drink": "Mojito", "size": "L", "name": "Ann"}"#).form(),
        op(R::NextOrder, M::POST, "An orderbot asks for work: now, by callback, or by long poll (?wait=).", &[(204, "No order waiting (and no callback or wait asked)."), (200, "The oldest waiting order, or CPEE-CALLBACK: true."), (400, "No orderbot named.")])
            .params(cpee_headers).body(r#"{"orderbot_id": "robot-2"}"#).form(),
        op(R::NextOrder, M::GET, "Same as POST, with the orderbot in the query or headers.", &[(204, "No order waiting."), (200, "The oldest waiting order."), (400, "No orderbot named.")])
            .params(&[("orderbot_id", "query", "robot-2", "The orderbot asking.")]),
        op(R::CpeeWait, M::POST, "Wait until an order reaches a status or stage (at once, or by callback).", &[(200, "Reached: the order; or CPEE-CALLBACK: true."), (400, "Bad target or no callback."), (404, "Order not found."), (409, "The order can never reach it.")])
            .params(cpee_headers).body(r#"{"order_id": 1, "stage": "new"}"#).form(),
        op(R::CpeeCallbacks, M::GET, "Callbacks waiting to be delivered.", &[(200, "The pending callbacks.")]),
        op(R::CpeeCallback, M::DELETE, "Cancel a pending callback.", &[(204, "Cancelled."), (404, "No such callback.")]).params(&[ID]),
    ]
}

/// The OpenAPI document for the router's `paths` (route, path) pairs.
pub fn document(paths: &[(&str, Route)], open: &[crate::auth::ApiGroup]) -> Bytes {
    let mut out: Map<String, Value> = Map::new();
    for op in ops() {
        for (path, _) in paths.iter().filter(|(_, r)| *r == op.route) {
            let item = out.entry(path.to_string()).or_insert_with(|| json!({}));
            let param = op.params.iter().find(|p| p.1 == "path").map(|p| p.2);
            let group = super::access::group(op.route);
            let open = group.is_none_or(|g| open.contains(&g));
            let who = if open {
                "anyone"
            } else {
                need(op.route, &op.method, param).who()
            };
            let mut operation = operation(&op, who);
            operation["x-group"] = json!(group.map(|g| g.name()));
            // An open group takes no token; any other needs one when auth is on.
            operation["security"] = if open {
                json!([{}, {"token": []}])
            } else {
                json!([{"token": []}])
            };
            item[op.method.as_str().to_lowercase()] = operation;
        }
    }
    let doc = json!({
        "openapi": "3.0.3",
        "info": {
            "title": "order-broker",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "An in-memory, concurrent order-state broker: the seed order_store API, \
                shop orders, live views and CPEE's protocol. Errors are {\"error\": \"...\"} \
                unless an API's own shape is named. With auth on, send \
                Authorization: token <t> or Bearer <jwt>; x-who says who may call.",
        },
        "components": {"securitySchemes": {"token": {"type": "apiKey", "in": "header", "name": "Authorization"}}},
        "paths": out,
    });
    Bytes::from(serde_json::to_vec_pretty(&doc).expect("a JSON value serializes"))
}

fn operation(op: &Op, who: &str) -> Value {
    let parameters: Vec<Value> = op
        .params
        .iter()
        .map(|(name, place, example, description)| {
            let mut p = json!({
                "name": name,
                "in": place,
                "required": *place == "path",
                "description": description,
                "schema": {"type": "string"},
            });
            if !example.is_empty() {
                p["example"] = json!(example);
            }
            p
        })
        .collect();
    let mut responses = Map::new();
    for (i, (code, description)) in op.responses.iter().enumerate() {
        let mut response = json!({"description": description});
        if i == 0 && *code != 204 {
            response["content"] = json!({op.media: {}});
        }
        responses.insert(code.to_string(), response);
    }
    let mut operation = json!({
        "summary": op.summary,
        "operationId": format!("{}_{}", op.route.name(), op.method.as_str().to_lowercase()),
        "x-who": who,
        "x-example-status": op.responses[0].0,
        "security": [{}, {"token": []}],
        "parameters": parameters,
        "responses": responses,
    });
    if let Some(example) = op.body {
        // A time an example needs in the future: an hour after start.
        let soon = (crate::model::Millis::now().0 + 3_600_000).to_string();
        let example = example.replace("\"{in an hour}\"", &soon);
        let example: Value = serde_json::from_str(&example).expect("examples are JSON");
        let mut content = json!({JSON: {"schema": {"type": "object"}, "example": example}});
        if op.form {
            for media in ["application/x-www-form-urlencoded", "multipart/form-data"] {
                content[media] = json!({"schema": {"type": "object"}});
            }
        }
        operation["requestBody"] = json!({"required": true, "content": content});
    }
    operation
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_has_an_operation_with_a_method_it_takes() {
        let ops = ops();
        for route in Route::ALL {
            assert!(
                ops.iter().any(|o| o.route == route),
                "{} is not described",
                route.name()
            );
        }
        for op in &ops {
            assert!(
                op.route.allow().contains(op.method.as_str()),
                "{} does not take {}",
                op.route.name(),
                op.method
            );
            if let Some(body) = op.body {
                let body = body.replace("\"{in an hour}\"", "1");
                serde_json::from_str::<Value>(&body).expect("example bodies are JSON");
            }
        }
    }
}
