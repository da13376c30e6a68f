//! The table of operations: for each route and method, its summary, its
//! parameters, the type its body is read into and the types of its
//! answers. Only the texts are written by hand; the schemas come from the
//! types (`Registry::of`).

use hyper::Method;
use serde_json::{Value, json};

use super::Registry;
use crate::http::Route;
use crate::http::{analytics, catalog, cpee, error, fulfilment, lifecycle, live, ops as health};
use crate::http::{order_store, orders, templates};

/// One operation: a route and a method.
pub(super) struct Op {
    pub route: Route,
    pub method: Method,
    pub summary: &'static str,
    pub params: Vec<Param>,
    /// The JSON body's schema.
    pub body: Option<Value>,
    pub body_required: bool,
    /// A JSON request body's example.
    pub example: Option<&'static str>,
    /// Whether the body may also be a form (url-encoded or multipart).
    pub form: bool,
    /// The answers; the first is the example's.
    pub responses: Vec<Response>,
}

pub(super) struct Param {
    pub name: &'static str,
    /// path, query or header.
    pub place: &'static str,
    pub example: &'static str,
    pub description: &'static str,
    pub ty: ParamType,
}

#[derive(Clone, Copy)]
pub(super) enum ParamType {
    Text,
    /// A non-negative integer.
    Id,
    /// An integer from .0 to .1.
    Count(u64, u64),
    OneOf(&'static [&'static str]),
}

pub(super) struct Response {
    pub status: u16,
    pub description: &'static str,
    /// (media type, schema) pairs; none for an empty body.
    pub content: Vec<(&'static str, Value)>,
    pub headers: Vec<(&'static str, &'static str)>,
}

const fn param(
    name: &'static str,
    place: &'static str,
    example: &'static str,
    description: &'static str,
    ty: ParamType,
) -> Param {
    Param {
        name,
        place,
        example,
        description,
        ty,
    }
}

fn op(route: Route, method: Method, summary: &'static str) -> Op {
    Op {
        route,
        method,
        summary,
        params: Vec::new(),
        body: None,
        body_required: true,
        example: None,
        form: false,
        responses: Vec::new(),
    }
}

impl Op {
    fn param(mut self, p: Param) -> Op {
        self.params.push(p);
        self
    }
    fn id(self) -> Op {
        self.param(param("id", "path", "1", "The record's id.", ParamType::Id))
    }
    fn body(mut self, schema: Value, example: &'static str) -> Op {
        self.body = Some(schema);
        self.example = Some(example);
        self
    }
    /// A body that may be left out.
    fn optional_body(mut self) -> Op {
        self.body_required = false;
        self
    }
    fn form(mut self) -> Op {
        self.form = true;
        self
    }
    /// A JSON answer.
    fn answer(mut self, status: u16, description: &'static str, schema: Value) -> Op {
        self.responses.push(Response {
            status,
            description,
            content: vec![("application/json", schema)],
            headers: Vec::new(),
        });
        self
    }
    /// An answer of another media type.
    fn media(mut self, status: u16, description: &'static str, media: &'static str) -> Op {
        let schema = if media == "text/event-stream" {
            // Each event, as SSE clients read it.
            json!({"type": "object", "properties": {
                "event": {"type": "string", "description": "The kind: order, product, customer, resync, busy, ..."},
                "data": {"type": "string", "description": "JSON."},
                "id": {"type": "string", "description": "<epoch>-<seq>."},
                "retry": {"type": "integer"},
            }})
        } else {
            json!({"type": "string"})
        };
        self.responses.push(Response {
            status,
            description,
            content: vec![(media, schema)],
            headers: Vec::new(),
        });
        self
    }
    /// An answer without a body.
    fn empty(mut self, status: u16, description: &'static str) -> Op {
        self.responses.push(Response {
            status,
            description,
            content: Vec::new(),
            headers: Vec::new(),
        });
        self
    }
    /// A header on the last answer.
    fn header(mut self, name: &'static str, description: &'static str) -> Op {
        if let Some(last) = self.responses.last_mut() {
            last.headers.push((name, description));
        }
        self
    }
}

const ETAG: &str = "The order's version, for If-Match.";
const IF_MATCH: Param = param(
    "If-Match",
    "header",
    "",
    "Change only if the record is at this version (an ETag).",
    ParamType::Text,
);
const STAGES: &[&str] = &["new", "in_progress", "completed", "cancelled", "scheduled"];

pub(super) fn ops(r: &mut Registry) -> Vec<Op> {
    use Method as M;
    use Route as R;
    let err = r.of::<error::ErrorBody>();
    let e = || err.clone();
    let order = r.of::<orders::OrderSchema>();
    let o = || order.clone();
    let orders_list = r.list::<orders::OrderSchema>();
    let refusal = r.of::<lifecycle::Refusal>();
    let cpee_headers = || {
        [
            param(
                "CPEE-CALLBACK",
                "header",
                "",
                "CPEE's callback URL: answer later by PUT.",
                ParamType::Text,
            ),
            param(
                "CPEE-CALLBACK-ID",
                "header",
                "",
                "The callback's id.",
                ParamType::Text,
            ),
            param(
                "CPEE-INSTANCE",
                "header",
                "",
                "The process instance; names the orderbot if the body does not.",
                ParamType::Text,
            ),
            param(
                "CPEE-INSTANCE-UUID",
                "header",
                "",
                "With CPEE-CALLBACK-ID, recognises a re-sent call.",
                ParamType::Text,
            ),
        ]
    };
    let with_cpee = |mut op: Op| {
        op.params.extend(cpee_headers());
        op
    };
    let update = r.of::<order_store::UpdateJson>();
    let updated = r.of::<order_store::Updated>();
    vec![
        op(R::Update, M::PUT, "Create or update an order's status (the seed order_store).")
            .body(update.clone(), r#"{"order_id": 1, "status": "Mixing", "orderbot_id": "robot-1"}"#)
            .form()
            .param(IF_MATCH)
            .answer(200, "Updated: {\"message\": \"Order updated\"}.", updated.clone())
            .answer(400, "Missing data: no id or status, or one of the wrong type.", e())
            .answer(412, "If-Match names another version.", e())
            .answer(422, "A text is too long, or too many distinct words.", e()),
        op(R::Update, M::POST, "Same as PUT.")
            .body(update, r#"{"order_id": 1, "status": "Mixing"}"#)
            .form()
            .param(IF_MATCH)
            .answer(200, "Updated.", updated)
            .answer(400, "Missing data.", e())
            .answer(412, "If-Match names another version.", e())
            .answer(422, "A text is too long, or too many distinct words.", e()),
        op(R::GetAll, M::GET, "Every order: [{order_id, status, orderbot_id}].")
            .answer(200, "The orders.", r.list::<order_store::AllRow>()),
        op(R::GetCurrentOrder, M::GET, "Orders in progress: {incomplete_orders: [{id, orderbot_id, status}]}.")
            .answer(200, "The view.", r.of::<order_store::CurrentOrders>()),
        op(R::GetCompletedOrders, M::GET, "Ids of completed orders: {completed_orders: [...]}.")
            .answer(200, "The view.", r.of::<order_store::CompletedOrders>()),
        op(R::GetNewOrders, M::GET, "Ids of new orders: {new_orders: [...]}.")
            .answer(200, "The view.", r.of::<order_store::NewOrders>()),
        op(R::GetStatus, M::GET, "One order with stage, version and times.")
            .id()
            .answer(200, "The order.", r.of::<order_store::Status>())
            .header("ETag", ETAG)
            .answer(404, "Order not found.", e()),
        op(R::Healthz, M::GET, "The process is up: order count, seq, open streams.")
            .answer(200, "Up.", r.of::<health::Health>()),
        op(R::Readyz, M::GET, "Ready to serve: recovery done and the journal writable.")
            .answer(200, "Ready.", r.of::<health::Readiness>())
            .answer(503, "Recovering, or the journal failed.", r.of::<health::Readiness>()),
        op(R::Cluster, M::GET, "This node's view of the cluster: role, leader, applied and stream seqs.")
            .answer(200, "The node's view (role `single` when not in a cluster).", r.of::<crate::cluster::ClusterStatus>()),
        op(R::Metrics, M::GET, "Prometheus metrics.")
            .media(200, "Text exposition format 0.0.4.", "text/plain"),
        op(R::OpenApi, M::GET, "This description.")
            .answer(200, "OpenAPI 3.1 JSON.", json!({"type": "object"})),
        op(R::Docs, M::GET, "This description, readable: an API reference page (Swagger UI, served from the binary).")
            .param(param("file", "path", "index.html", "A file of the page; index.html when empty.", ParamType::Text))
            .media(200, "The page or one of its files.", "text/html")
            .answer(404, "No such file.", e()),
        op(R::Board, M::GET, "The live order board page.")
            .media(200, "HTML.", "text/html"),
        op(R::StorePage, M::GET, "The store tutorial's web page: orders, processing, deletion.")
            .media(200, "HTML.", "text/html"),
        op(R::Events, M::GET, "Server-sent events of every change (filters: stage, order_id; resume: Last-Event-ID or since).")
            .param(param("stage", "query", "", "Comma-separated stages to follow.", ParamType::Text))
            .param(param("order_id", "query", "", "One order to follow.", ParamType::Id))
            .param(param("since", "query", "", "Resume after this event id (<epoch>-<seq>).", ParamType::Text))
            .param(param("Last-Event-ID", "header", "", "Resume after this event id.", ParamType::Text))
            .media(200, "An event stream.", "text/event-stream")
            .answer(503, "Too many streams.", e()),
        op(R::Views, M::GET, "The three board views and the event id they reflect.")
            .answer(200, "{new, in_progress, completed, last_event_id}.", r.of::<live::Views>()),
        op(R::TrackingStream, M::GET, "Server-sent events of one order.")
            .id()
            .media(200, "An event stream.", "text/event-stream")
            .answer(404, "Order not found.", e())
            .answer(503, "Too many streams.", e()),
        op(R::Products, M::GET, "Every product.")
            .answer(200, "The products.", r.list::<crate::catalog::Product>()),
        op(R::Products, M::POST, "Create a product (id assigned, or chosen with \"id\").")
            .body(r.of::<catalog::NewProduct>(), r#"{"name": "Mojito", "price": 7.5, "stock": 40}"#)
            .answer(201, "Created.", r.of::<crate::catalog::Product>())
            .header("Location", "Where the product lives.")
            .answer(409, "The id is taken, or no id is left.", e()),
        op(R::Product, M::GET, "One product.")
            .id()
            .answer(200, "The product.", r.of::<crate::catalog::Product>())
            .answer(404, "No such product.", e()),
        op(R::Product, M::PUT, "Change the fields named.")
            .id()
            .body(r.of::<catalog::ProductUpdate>(), r#"{"stock": 35}"#)
            .answer(200, "The product.", r.of::<crate::catalog::Product>())
            .answer(404, "No such product.", e())
            .answer(409, "The product changed meanwhile.", e()),
        op(R::Product, M::DELETE, "Delete a product.")
            .id()
            .empty(204, "Deleted.")
            .answer(404, "No such product.", e()),
        op(R::Customers, M::GET, "Every customer.")
            .answer(200, "The customers.", r.list::<crate::catalog::Customer>()),
        op(R::Customers, M::POST, "Create a customer.")
            .body(r.of::<catalog::NewCustomer>(), r#"{"name": "Bob", "phone": "555-2", "balance": 20.0}"#)
            .answer(201, "Created.", r.of::<crate::catalog::Customer>())
            .header("Location", "Where the customer lives.")
            .answer(409, "The id is taken, or no id is left.", e()),
        op(R::Customer, M::GET, "One customer.")
            .id()
            .answer(200, "The customer.", r.of::<crate::catalog::Customer>())
            .answer(404, "No such customer.", e()),
        op(R::Customer, M::PUT, "Change the fields named (an empty phone clears it).")
            .id()
            .body(r.of::<catalog::CustomerUpdate>(), r#"{"balance": 80}"#)
            .answer(200, "The customer.", r.of::<crate::catalog::Customer>())
            .answer(404, "No such customer.", e())
            .answer(409, "The customer changed meanwhile.", e()),
        op(R::Customer, M::DELETE, "Delete a customer.")
            .id()
            .empty(204, "Deleted.")
            .answer(404, "No such customer.", e()),
        op(R::CustomerOrders, M::GET, "A customer's orders.")
            .id()
            .answer(200, "The orders.", orders_list.clone())
            .answer(404, "The customer has no orders.", e()),
        op(R::CustomerOrders, M::POST, "Create an order for this customer.")
            .id()
            .body(r.of::<orders::OrderIn>(), r#"{"items": [{"product_id": 1, "quantity": 1}]}"#)
            .answer(201, "Created.", o())
            .header("Location", "Where the order lives.")
            .header("ETag", ETAG)
            .answer(400, "Out of stock (with check_stock).", e())
            .answer(404, "No such customer.", e()),
        op(R::Orders, M::GET, "Orders in arrival order, filtered: every one (streamed), or with limit or after one page (X-Next-Cursor, Link).")
            .param(param("customer_id", "query", "", "Only this customer's.", ParamType::Id))
            .param(param("stage", "query", "", "Only this stage.", ParamType::OneOf(STAGES)))
            .param(param("status", "query", "", "Only this status.", ParamType::Text))
            .param(param("created_from", "query", "", "Created at or after (ms since the epoch).", ParamType::Id))
            .param(param("created_to", "query", "", "Created before (ms since the epoch).", ParamType::Id))
            .param(param("limit", "query", "", "1 to 1000 (100).", ParamType::Count(1, 1000)))
            .param(param("after", "query", "", "The cursor (a page's X-Next-Cursor), or an order's id: list the orders after it.", ParamType::Text))
            .answer(200, "The orders.", orders_list.clone())
            .header("X-Next-Cursor", "The next page's after=, when there may be one.")
            .header("Link", "<...>; rel=\"next\": the next page."),
        op(R::Orders, M::POST, "Create an order with items (prices captured now).")
            .body(r.of::<orders::OrderIn>(), r#"{"customer_id": 1, "items": [{"product_id": 1, "quantity": 2}], "notes": "no ice", "table_number": 7, "channel": "web", "check_stock": true}"#)
            .answer(201, "Created.", o())
            .header("Location", "Where the order lives.")
            .header("ETag", ETAG)
            .answer(400, "Out of stock (with check_stock).", e()),
        op(R::MyOrders, M::GET, "The calling customer's orders.")
            .answer(200, "The orders.", orders_list.clone())
            .answer(400, "No customer token (auth off).", e()),
        op(R::Order, M::GET, "One order.")
            .id()
            .answer(200, "The order.", o())
            .header("ETag", ETAG)
            .answer(404, "Order not found.", e()),
        op(R::Order, M::POST, "Place the customer's order (the Order Management API): its items' stock is taken at once.")
            .param(param("id", "path", "1", "The customer's id.", ParamType::Id))
            .body(r.of::<orders::OrderIn>(), r#"{"items": [{"product_id": 1, "quantity": 1}]}"#)
            .answer(201, "Placed, its stock taken.", o())
            .header("Location", "Where the order lives.")
            .header("ETag", ETAG)
            .answer(400, "Not enough in stock: nothing taken.", e())
            .answer(404, "No such customer.", e())
            .answer(409, "The chosen number is taken.", e()),
        op(R::Order, M::PUT, "Set an order's status (If-Match optional).")
            .id()
            .param(IF_MATCH)
            .body(r.of::<orders::StatusIn>(), r#"{"status": "Confirmed"}"#)
            .answer(200, "The order.", o())
            .header("ETag", ETAG)
            .answer(404, "Order not found.", e())
            .answer(409, "The order is final, or the move is not allowed.", e())
            .answer(412, "Version mismatch.", e()),
        op(R::Order, M::DELETE, "Delete an order that is not processed.")
            .id()
            .param(IF_MATCH)
            .empty(204, "Deleted.")
            .answer(404, "Order not found.", e())
            .answer(409, "Processed orders stay.", e())
            .answer(412, "Version mismatch.", e()),
        op(R::OrderItems, M::PUT, "Replace the items before processing or confirmation.")
            .id()
            .param(IF_MATCH)
            .body(r.of::<orders::ItemsIn>(), r#"{"items": [{"product_id": 1, "quantity": 3}]}"#)
            .answer(200, "The order.", o())
            .header("ETag", ETAG)
            .answer(404, "Order not found.", e())
            .answer(409, "Too late.", e())
            .answer(412, "Version mismatch.", e()),
        op(R::ProcessOrder, M::GET, "One order (the store tutorial's path).")
            .id()
            .answer(200, "The order.", o())
            .header("ETag", ETAG)
            .answer(404, "Order not found.", e()),
        op(R::ProcessOrder, M::PUT, "Process: take stock, charge the balance, atomically.")
            .id()
            .param(IF_MATCH)
            .body(r.of::<orders::ProcessIn>(), r#"{"process": true, "strategy": "adjust"}"#)
            .answer(200, "The processed order.", o())
            .header("ETag", ETAG)
            .answer(400, "Refused: already processed, balance, stock, strategy.", e())
            .answer(404, "Order not found.", e())
            .answer(409, "The order cannot be processed from its state.", e())
            .answer(412, "Version mismatch.", e()),
        op(R::ProcessOrder, M::DELETE, "Delete an order that is not processed (the store tutorial's path).")
            .id()
            .param(IF_MATCH)
            .empty(204, "Deleted.")
            .answer(404, "Order not found.", e())
            .answer(409, "Processed orders stay.", e())
            .answer(412, "Version mismatch.", e()),
        op(R::Lifecycle, M::POST, "Order Status API: confirm, paid, complete or cancel by order number.")
            .param(param("action", "path", "confirm", "confirm, paid, complete or cancel.", ParamType::OneOf(&["confirm", "paid", "complete", "cancel"])))
            .param(IF_MATCH)
            .body(r.of::<lifecycle::LifecycleIn>(), r#"{"number": "FR9TL74P"}"#)
            .answer(200, "The order in the Order Status API's shape.", r.of::<lifecycle::StoreOrder>())
            .header("ETag", ETAG)
            .answer(
                400,
                "Not allowed from the order's state, or no number (the seed's error shape); \
                 a bad If-Match or Idempotency-Key (the broker's).",
                json!({"anyOf": [refusal, e()]}),
            )
            .answer(404, "Unknown action.", e())
            .answer(412, "Version mismatch.", e()),
        op(R::AssignDelivery, M::PUT, "Assign a delivery partner (shown as the order's orderbot).")
            .id()
            .param(IF_MATCH)
            .body(r.of::<fulfilment::AssignIn>(), r#"{"partner_id": "rider-7"}"#)
            .answer(200, "The order.", o())
            .answer(404, "Order not found.", e())
            .answer(409, "The order is finished.", e())
            .answer(412, "Version mismatch.", e()),
        op(R::OrderStatus, M::PUT, "Move an order to the next step: confirmed, preparing, out_for_delivery, delivered.")
            .id()
            .param(IF_MATCH)
            .body(r.of::<fulfilment::StatusIn>(), r#"{"status": "confirmed"}"#)
            .answer(200, "The order; the step is in its history with its time.", o())
            .answer(403, "Not the assigned partner.", e())
            .answer(404, "Order not found.", e())
            .answer(409, "Not the next step.", e())
            .answer(412, "Version mismatch.", e()),
        op(R::DeliveryLocation, M::PUT, "The assigned partner reports where they are (also on the tracking stream).")
            .id()
            .body(r.of::<fulfilment::LocationIn>(), r#"{"lat": 48.2082, "lng": 16.3738}"#)
            .answer(200, "{lat, lng, at}.", r.of::<crate::shop::Location>())
            .answer(403, "Not the assigned partner.", e())
            .answer(404, "Order not found.", e())
            .answer(409, "No delivery under way.", e()),
        op(R::DeliveryLocation, M::GET, "Where the partner last was.")
            .id()
            .answer(200, "{lat, lng, at}.", r.of::<crate::shop::Location>())
            .answer(404, "Order not found, or no location yet.", e()),
        op(R::CancelOrder, M::POST, "Cancel with a reason (a customer before preparation, staff before delivery); a processed order's stock and money go back.")
            .id()
            .param(IF_MATCH)
            .body(r.of::<fulfilment::CancelIn>(), r#"{"reason": "changed my mind"}"#)
            .answer(200, "The cancelled order.", o())
            .answer(404, "Order not found.", e())
            .answer(409, "Too late, or already cancelled.", e())
            .answer(412, "Version mismatch.", e()),
        Op {
            responses: vec![Response {
                status: 200,
                description: "The export (chunked): CSV with a header row, NDJSON, or a JSON array.",
                content: vec![
                    ("text/csv", json!({"type": "string"})),
                    ("application/x-ndjson", json!({"type": "string"})),
                    ("application/json", orders_list.clone()),
                ],
                headers: vec![("Content-Disposition", "attachment; filename=orders.<format>")],
            }],
            ..op(R::Export, M::GET, "Every order the filters select, streamed: CSV (RFC 4180, header row), NDJSON or a JSON array.")
                .param(param("format", "query", "csv", "csv, ndjson or json (the default).", ParamType::OneOf(&["csv", "ndjson", "json"])))
                .param(param("customer_id", "query", "", "Only this customer's.", ParamType::Id))
                .param(param("stage", "query", "", "Only this stage.", ParamType::OneOf(STAGES)))
                .param(param("status", "query", "", "Only this status.", ParamType::Text))
                .param(param("created_from", "query", "", "Created at or after (ms since the epoch).", ParamType::Id))
                .param(param("created_to", "query", "", "Created before (ms since the epoch).", ParamType::Id))
        },
        op(R::BulkStatus, M::PUT, "Move up to limits.max_bulk_orders orders one step; error_policy reject_all (default, atomic) or skip_failed.")
            .body(r.of::<fulfilment::BulkIn>(), r#"{"order_ids": [1], "status": "confirmed", "error_policy": "reject_all"}"#)
            .answer(200, "Per-order results: applied, failed (with status and error), skipped.", r.of::<fulfilment::BulkAnswer>())
            .answer(409, "reject_all: an order failed, none changed.", r.of::<fulfilment::BulkAnswer>()),
        op(R::BulkAssign, M::POST, "Assign a partner to up to limits.max_bulk_orders orders; same error policies.")
            .body(r.of::<fulfilment::BulkIn>(), r#"{"order_ids": [1], "partner_id": "rider-9", "error_policy": "skip_failed"}"#)
            .answer(200, "Per-order results.", r.of::<fulfilment::BulkAnswer>())
            .answer(409, "reject_all: an order failed, none changed.", r.of::<fulfilment::BulkAnswer>()),
        op(R::ScheduledOrders, M::POST, "Create an order that waits, out of the board's views, until scheduled_for (ms since the epoch, within a year); then it becomes new and enters the dispatch queue. Cancellable before.")
            .body(r.of::<orders::OrderIn>(), r#"{"customer_id": 1, "items": [{"product_id": 1, "quantity": 1}], "scheduled_for": "{in an hour}"}"#)
            .answer(201, "Created, status Scheduled, stage scheduled.", o())
            .header("Location", "Where the order lives.")
            .answer(400, "Out of stock (with check_stock).", e()),
        op(R::Feedback, M::POST, "The order's customer rates it (1 to 5, with a comment): once, after completion.")
            .param(param("id", "path", "2", "A completed order's id.", ParamType::Id))
            .body(r.of::<fulfilment::FeedbackIn>(), r#"{"rating": 5, "comment": "quick and warm"}"#)
            .answer(201, "The feedback.", r.of::<crate::shop::Feedback>())
            .answer(404, "Order not found.", e())
            .answer(409, "Not completed, or given already.", e()),
        op(R::Templates, M::POST, "Save a customer's order to repeat (a customer's own; staff name customer_id).")
            .body(r.of::<templates::TemplateIn>(), r#"{"customer_id": 1, "name": "usual", "items": [{"product_id": 1, "quantity": 2}], "notes": "no ice"}"#)
            .answer(201, "The template.", r.of::<crate::catalog::Template>())
            .header("Location", "Where the template lives."),
        op(R::Templates, M::GET, "Templates: a customer's own, or everyone's (?customer_id= filters).")
            .param(param("customer_id", "query", "", "Only this customer's (staff).", ParamType::Id))
            .answer(200, "The templates.", r.list::<crate::catalog::Template>()),
        op(R::Template, M::GET, "One template.")
            .id()
            .answer(200, "The template.", r.of::<crate::catalog::Template>())
            .answer(404, "No such template.", e()),
        op(R::Template, M::DELETE, "Delete a template.")
            .id()
            .empty(204, "Deleted.")
            .answer(404, "No such template.", e()),
        op(R::TemplateOrder, M::POST, "Order a template again: current prices, stock checked like a new order.")
            .id()
            .answer(201, "The new order.", o())
            .header("Location", "Where the order lives.")
            .answer(400, "Out of stock.", e())
            .answer(404, "No such template.", e())
            .answer(422, "A product is gone.", e()),
        op(R::RequestReturn, M::POST, "The order's customer asks to return items of a completed order within returns.window_secs.")
            .param(param("id", "path", "2", "A completed order's id.", ParamType::Id))
            .body(r.of::<fulfilment::ReturnIn>(), r#"{"items": [{"product_id": 1, "quantity": 1}], "reason": "cold"}"#)
            .answer(201, "The return: status requested, amount.", r.of::<crate::shop::Return>())
            .answer(404, "Order not found.", e())
            .answer(409, "Not completed, window closed, or already requested.", e()),
        op(R::OrderReturn, M::PUT, "Staff move a return on: approved or rejected, then received, then refunded (credits the balance, restocks if configured).")
            .param(param("id", "path", "3", "An order with a requested return.", ParamType::Id))
            .body(r.of::<fulfilment::StatusIn>(), r#"{"status": "approved"}"#)
            .answer(200, "The order with its return.", o())
            .answer(404, "Order not found.", e())
            .answer(409, "Not allowed from the return's state.", e()),
        op(R::Analytics, M::GET, "Reports from maintained aggregates: revenue (?from=&to= ms, bucket=day|hour), delivery-performance (confirmed to delivered per partner, p50/p90), top-customers (?limit=), cancellation-rate, stage-times (time in each stage per orderbot).")
            .param(param("report", "path", "revenue", "The report.", ParamType::OneOf(&["revenue", "delivery-performance", "top-customers", "cancellation-rate", "stage-times"])))
            .param(param("bucket", "query", "hour", "day or hour (revenue).", ParamType::OneOf(&["day", "hour"])))
            .param(param("from", "query", "", "Start, ms since the epoch (revenue; default a week before to).", ParamType::Id))
            .param(param("to", "query", "", "End, exclusive (revenue; default now).", ParamType::Id))
            .param(param("limit", "query", "", "1 to 100 (top-customers; 10).", ParamType::Count(1, 100)))
            .answer(200, "The report.", r.of::<analytics::Report>())
            .answer(404, "No such report.", e()),
        with_cpee(op(R::Intake, M::POST, "Take in an order from a process engine; its fields become details.")
            .body(json!({"type": "object"}), r#"{"drink": "Mojito", "size": "L", "name": "Ann"}"#)
            .optional_body()
            .form()
            .answer(200, "{\"order_id\": n}.", r.of::<cpee::Intake>())
            .answer(422, "A detail is too long, or too many.", e())),
        with_cpee(op(R::NextOrder, M::POST, "An orderbot asks for work: now, by callback, or by long poll (?wait=).")
            .param(param("wait", "query", "", "Seconds to wait for work (up to cpee.max_wait_secs).", ParamType::Id))
            .body(json!({"type": "object", "properties": {"orderbot_id": {"type": "string"}, "wait": {"type": "string"}}}), r#"{"orderbot_id": "robot-2"}"#)
            .optional_body()
            .form()
            .empty(204, "No order waiting (and no callback or wait asked).")
            .answer(200, "The oldest waiting order; with a callback, empty and CPEE-CALLBACK: true.", o())
            .header("CPEE-CALLBACK", "true: the answer comes later, by PUT to the callback.")
            .answer(400, "No orderbot named, or a bad callback URL.", e())
            .answer(403, "The callback URL is not allowed (cpee.callback_hosts).", e())
            .answer(422, "The orderbot id is too long.", e())
            .answer(503, "Too many callbacks or waits.", e())),
        op(R::NextOrder, M::GET, "Same as POST, with the orderbot in the query or headers.")
            .param(param("orderbot_id", "query", "robot-2", "The orderbot asking.", ParamType::Text))
            .param(param("wait", "query", "", "Seconds to wait for work (up to cpee.max_wait_secs).", ParamType::Id))
            .empty(204, "No order waiting.")
            .answer(200, "The oldest waiting order.", o())
            .answer(400, "No orderbot named.", e())
            .answer(422, "The orderbot id is too long.", e())
            .answer(503, "The journal cannot be written, or too many waits.", e()),
        with_cpee(op(R::CpeeWait, M::POST, "Wait until an order reaches a status or stage (at once, or by callback).")
            .body(json!({"type": "object", "properties": {"order_id": {"type": "string"}, "status": {"type": "string"}, "stage": {"type": "string", "enum": STAGES}, "updates": {"type": "string"}}}), r#"{"order_id": 1, "stage": "new"}"#)
            .form()
            .answer(200, "Reached: the order; or, with a callback, empty and CPEE-CALLBACK: true.", o())
            .answer(400, "Bad target, or no order id.", e())
            .answer(403, "The callback URL is not allowed.", e())
            .answer(404, "Order not found.", e())
            .answer(409, "The order can never reach it, or has not and no callback was sent.", e())
            .answer(503, "Too many callbacks or waits.", e())),
        op(R::CpeeCallbacks, M::GET, "Callbacks waiting to be delivered.")
            .answer(200, "The pending callbacks.", r.list::<crate::cpee::Pending>()),
        op(R::CpeeCallback, M::DELETE, "Cancel a pending callback.")
            .id()
            .empty(204, "Cancelled.")
            .answer(404, "No such callback.", e()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_and_method_has_an_operation() {
        let ops = ops(&mut Registry::default());
        for route in Route::ALL {
            // The store tutorial's paths are described by the routes they
            // serve as.
            let route = route.blueprint_of().unwrap_or(route);
            for method in route.allow().split(", ") {
                if method == "HEAD" || method == "OPTIONS" {
                    continue; // made from GET, and for every path
                }
                assert!(
                    ops.iter().any(|o| o.route == route && o.method == method),
                    "{} {method} is not described",
                    route.name()
                );
            }
        }
        for op in &ops {
            assert!(
                op.route.allow().contains(op.method.as_str()),
                "{} does not take {}",
                op.route.name(),
                op.method
            );
        }
    }
}
