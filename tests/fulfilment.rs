//! Fulfilment with auth on: assigning partners, the delivery flow and who
//! may move it, partner locations, cancellation rules and what a
//! cancellation gives back.

mod common;

use std::time::Duration;

use common::{Reply, Sse, TestServer};
use hyper::{Method, StatusCode};
use order_broker::auth::{Role, Secret, StaticToken};
use serde_json::{Value, json};

const STAFF: &str = "staff-t";
const CUST1: &str = "cust-1";
const CUST2: &str = "cust-2";
const RIDER7: &str = "rider-7-t";
const RIDER8: &str = "rider-8-t";

async fn shop() -> TestServer {
    let mut config = common::config();
    let token = |token: &str, role, subject: &str| StaticToken {
        token: Secret(token.into()),
        role,
        subject: Some(subject.into()),
    };
    config.auth.tokens = vec![
        token(STAFF, Role::Staff, "sam"),
        token(CUST1, Role::Customer, "1"),
        token(CUST2, Role::Customer, "2"),
        token(RIDER7, Role::Delivery, "rider-7"),
        token(RIDER8, Role::Delivery, "rider-8"),
    ];
    let server = TestServer::with_config(config).await;
    let product = json!({"id": 1, "name": "tea", "price": "2.50", "stock": 1000});
    assert_eq!(
        call(&server, Method::POST, "/products", Some(STAFF), product)
            .await
            .status,
        StatusCode::CREATED
    );
    for id in [1, 2] {
        let customer = json!({"id": id, "name": format!("c{id}"), "balance": 1000});
        call(&server, Method::POST, "/customers", Some(STAFF), customer).await;
    }
    server
}

async fn call(
    server: &TestServer,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> Reply {
    let auth = token.map(|t| format!("token {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("authorization", auth));
    }
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    server.send(method, path, &headers, &body).await
}

/// A new order of customer 1 (three teas); its id.
async fn new_order(server: &TestServer) -> u64 {
    let body = json!({"items": [{"product_id": 1, "quantity": 3}]});
    let reply = call(server, Method::POST, "/orders", Some(CUST1), body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    reply.json()["id"].as_u64().unwrap()
}

async fn step(server: &TestServer, id: u64, token: Option<&str>, status: &str) -> Reply {
    call(
        server,
        Method::PUT,
        &format!("/orders/{id}/status"),
        token,
        json!({"status": status}),
    )
    .await
}

async fn assign(server: &TestServer, id: u64, token: Option<&str>, partner: Value) -> Reply {
    let body = json!({"partner_id": partner});
    call(
        server,
        Method::PUT,
        &format!("/orders/{id}/assign-delivery"),
        token,
        body,
    )
    .await
}

#[tokio::test]
async fn the_delivery_flow_moves_one_step_at_a_time_by_staff_or_the_assigned_partner() {
    let server = shop().await;
    let id = new_order(&server).await;

    // Assigning: staff only, not a finished order, a partner id given.
    assert_eq!(
        assign(&server, id, None, json!("rider-7")).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        assign(&server, id, Some(CUST1), json!("rider-7"))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        assign(&server, id, Some(RIDER7), json!("rider-7"))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        assign(&server, id, Some(STAFF), json!("")).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        assign(&server, id, Some(STAFF), json!(["x"])).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let bad = call(
        &server,
        Method::PUT,
        &format!("/orders/{id}/assign-delivery"),
        Some(STAFF),
        json!({"partner": "x"}),
    )
    .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        assign(&server, 999, Some(STAFF), json!("rider-7"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let assigned = assign(&server, id, Some(STAFF), json!("rider-7")).await;
    assert_eq!(assigned.status, StatusCode::OK);
    assert_eq!(assigned.json()["orderbot_id"], "rider-7");
    // The board shows the assignee as the orderbot.
    assert_eq!(
        server.get(&format!("/get_status/{id}")).await.json()["orderbot_id"],
        "rider-7"
    );

    // Who may move it: not the customer, not another partner.
    assert_eq!(
        step(&server, id, Some(CUST1), "confirmed").await.status,
        StatusCode::FORBIDDEN
    );
    let other = step(&server, id, Some(RIDER8), "confirmed").await;
    assert_eq!(other.status, StatusCode::FORBIDDEN);
    assert_eq!(other.error(), "the order is not assigned to you");
    assert_eq!(
        step(&server, id, None, "confirmed").await.status,
        StatusCode::UNAUTHORIZED
    );

    // Only the next step; names outside the flow are refused.
    let skip = step(&server, id, Some(RIDER7), "delivered").await;
    assert_eq!(skip.status, StatusCode::CONFLICT);
    assert_eq!(skip.error(), "order is new; it can only go to confirmed");
    assert_eq!(
        step(&server, id, Some(STAFF), "teleported").await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let cancel = step(&server, id, Some(STAFF), "cancelled").await;
    assert_eq!(cancel.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(cancel.error().contains("/cancel"), "{}", cancel.error());
    assert_eq!(
        step(&server, id, Some(STAFF), "new").await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );

    assert_eq!(
        step(&server, id, Some(STAFF), "confirmed").await.status,
        StatusCode::OK
    );
    for status in ["preparing", "out_for_delivery"] {
        let reply = step(&server, id, Some(RIDER7), status).await;
        assert_eq!(reply.status, StatusCode::OK, "{status}: {:?}", reply.body);
        assert_eq!(reply.json()["stage"], "in_progress");
    }
    let again = step(&server, id, Some(RIDER7), "out_for_delivery").await;
    assert_eq!(
        again.error(),
        "order is out_for_delivery; it can only go to delivered"
    );
    let delivered = step(&server, id, Some(RIDER7), "delivered").await;
    assert_eq!(delivered.status, StatusCode::OK);
    let order = delivered.json();
    assert_eq!(
        (order["status"].clone(), order["stage"].clone()),
        (json!("Delivered"), json!("completed"))
    );
    let last = step(&server, id, Some(STAFF), "delivered").await;
    assert_eq!(
        (last.status, last.error()),
        (
            StatusCode::CONFLICT,
            "order is delivered; it cannot change".into()
        )
    );
    assert_eq!(
        assign(&server, id, Some(STAFF), json!(8)).await.status,
        StatusCode::CONFLICT
    );

    // Each step is in the history, with its time, in order.
    let history = order["history"].as_array().unwrap();
    let statuses: Vec<&str> = history
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "New",
            "Confirmed",
            "Preparing",
            "Out for delivery",
            "Delivered"
        ]
    );
    let times: Vec<u64> = history.iter().map(|h| h["at"].as_u64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    let completed = server.get("/get_completed_orders").await.json();
    assert_eq!(completed["completed_orders"], json!([id]));

    // A partner cannot act on an order nobody assigned to them; staff can.
    let unassigned = new_order(&server).await;
    assert_eq!(
        step(&server, unassigned, Some(RIDER7), "confirmed")
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        step(&server, unassigned, Some(STAFF), "confirmed")
            .await
            .status,
        StatusCode::OK
    );
    // A numeric partner id (as the FastAPI seed sends it) is its text.
    assert_eq!(
        assign(&server, unassigned, Some(STAFF), json!(8))
            .await
            .json()["orderbot_id"],
        "8"
    );
}

#[tokio::test]
async fn the_partner_location_reaches_the_customer_and_the_tracking_stream() {
    let server = shop().await;
    let id = new_order(&server).await;
    assign(&server, id, Some(STAFF), json!("rider-7")).await;
    let path = format!("/orders/{id}/delivery-location");
    let auth = format!("token {CUST1}");
    let mut stream = Sse::open(
        server.addr,
        &format!("/orders/{id}/tracking-stream"),
        &[("authorization", &auth)],
    )
    .await
    .unwrap_or_else(|r| panic!("{:?}", r.status));

    assert_eq!(
        call(&server, Method::GET, &path, Some(CUST1), Value::Null)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let at = json!({"lat": 48.2082, "lng": 16.3738});
    assert_eq!(
        call(&server, Method::PUT, &path, Some(STAFF), at.clone())
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&server, Method::PUT, &path, Some(RIDER8), at.clone())
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&server, Method::PUT, &path, Some(CUST1), at.clone())
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    for bad in [
        json!({"lat": 91, "lng": 0}),
        json!({"lat": 0, "lng": -180.5}),
        json!({"lat": 1}),
        json!({"lat": "1", "lng": 2}),
    ] {
        let reply = call(&server, Method::PUT, &path, Some(RIDER7), bad.clone()).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    let reply = call(&server, Method::PUT, &path, Some(RIDER7), at).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        (reply.json()["lat"].clone(), reply.json()["lng"].clone()),
        (json!(48.2082), json!(16.3738))
    );

    // The customer reads it, another customer may not; staff may.
    let seen = call(&server, Method::GET, &path, Some(CUST1), Value::Null).await;
    assert_eq!(seen.status, StatusCode::OK);
    assert_eq!(seen.json()["lat"], 48.2082);
    assert_eq!(
        call(&server, Method::GET, &path, Some(CUST2), Value::Null)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&server, Method::GET, &path, Some(STAFF), Value::Null)
            .await
            .status,
        StatusCode::OK
    );

    // It is on the order's tracking stream.
    let mut found = false;
    while let Some(event) = stream.next_block(Duration::from_secs(5)).await {
        if event.data.contains("\"delivery_location\"") {
            let order: Value = serde_json::from_str(&event.data).unwrap();
            assert_eq!(order["delivery_location"]["lng"], 16.3738);
            found = true;
            break;
        }
    }
    assert!(found, "the location reached the tracking stream");

    // Once delivered, there is nothing to report.
    for status in ["confirmed", "preparing", "out_for_delivery", "delivered"] {
        step(&server, id, Some(RIDER7), status).await;
    }
    let late = call(
        &server,
        Method::PUT,
        &path,
        Some(RIDER7),
        json!({"lat": 1, "lng": 1}),
    )
    .await;
    assert_eq!(late.status, StatusCode::CONFLICT);
}

async fn cancel(server: &TestServer, id: u64, token: Option<&str>, reason: &str) -> Reply {
    call(
        server,
        Method::POST,
        &format!("/orders/{id}/cancel"),
        token,
        json!({"reason": reason}),
    )
    .await
}

#[tokio::test]
async fn who_may_cancel_until_when() {
    let server = shop().await;

    // The customer, before preparation; the reason is in the history.
    let id = new_order(&server).await;
    assert_eq!(
        cancel(&server, id, Some(CUST2), "not mine").await.status,
        StatusCode::FORBIDDEN
    );
    assign(&server, id, Some(STAFF), json!("rider-7")).await;
    assert_eq!(
        cancel(&server, id, Some(RIDER7), "no").await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        cancel(&server, id, Some(CUST1), "  ").await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let empty = call(
        &server,
        Method::POST,
        &format!("/orders/{id}/cancel"),
        Some(CUST1),
        json!({}),
    )
    .await;
    assert_eq!(empty.status, StatusCode::UNPROCESSABLE_ENTITY);
    step(&server, id, Some(STAFF), "confirmed").await;
    let reply = cancel(&server, id, Some(CUST1), "changed my mind").await;
    assert_eq!(reply.status, StatusCode::OK);
    let order_json = reply.json();
    assert_eq!(order_json["stage"], "cancelled");
    let last = order_json["history"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        (last["status"].clone(), last["reason"].clone()),
        (json!("Cancelled"), json!("changed my mind"))
    );
    assert_eq!(
        cancel(&server, id, Some(STAFF), "again").await.error(),
        "order is already cancelled"
    );

    // Once preparing, only staff; once delivered, nobody.
    let id = new_order(&server).await;
    step(&server, id, Some(STAFF), "confirmed").await;
    step(&server, id, Some(STAFF), "preparing").await;
    let late = cancel(&server, id, Some(CUST1), "too slow").await;
    assert_eq!(late.status, StatusCode::CONFLICT);
    assert_eq!(
        late.error(),
        "order is preparing; a customer can cancel only before preparation"
    );
    assert_eq!(
        cancel(&server, id, Some(STAFF), "out of tea").await.status,
        StatusCode::OK
    );
    let id = new_order(&server).await;
    for status in ["confirmed", "preparing", "out_for_delivery", "delivered"] {
        step(&server, id, Some(STAFF), status).await;
    }
    assert_eq!(
        cancel(&server, id, Some(STAFF), "late").await.status,
        StatusCode::CONFLICT
    );
    assert_eq!(
        cancel(&server, 999, Some(STAFF), "x").await.status,
        StatusCode::NOT_FOUND
    );
}

async fn stock_and_balance(server: &TestServer) -> (u64, f64) {
    let product = call(server, Method::GET, "/products/1", Some(STAFF), Value::Null)
        .await
        .json();
    let customer = call(
        server,
        Method::GET,
        "/customers/1",
        Some(STAFF),
        Value::Null,
    )
    .await
    .json();
    (
        product["stock"].as_u64().unwrap(),
        customer["balance"].as_f64().unwrap(),
    )
}

#[tokio::test]
async fn cancelling_a_processed_order_gives_back_its_stock_and_money() {
    let server = shop().await;
    let id = new_order(&server).await;
    let processed = call(
        &server,
        Method::PUT,
        &format!("/api/orders/{id}"),
        Some(STAFF),
        json!({"process": true}),
    )
    .await;
    assert_eq!(processed.status, StatusCode::OK);
    assert_eq!(stock_and_balance(&server).await, (997, 992.5));
    let product_version = call(
        &server,
        Method::GET,
        "/products/1",
        Some(STAFF),
        Value::Null,
    )
    .await
    .json()["version"]
        .clone();
    assert_eq!(
        cancel(&server, id, Some(STAFF), "spilled").await.status,
        StatusCode::OK
    );
    assert_eq!(stock_and_balance(&server).await, (1000, 1000.0));
    let product = call(
        &server,
        Method::GET,
        "/products/1",
        Some(STAFF),
        Value::Null,
    )
    .await
    .json();
    assert_eq!(product["version"], product_version.as_u64().unwrap() + 1);
}

/// Processing and cancelling race on many orders: whichever comes first,
/// stock and balance end where they started.
#[tokio::test]
async fn racing_cancels_and_processing_keep_stock_and_money_exact() {
    let server = std::sync::Arc::new(shop().await);
    let mut ids = Vec::new();
    for _ in 0..24 {
        ids.push(new_order(&server).await);
    }
    let mut tasks = Vec::new();
    for (n, id) in ids.iter().copied().enumerate() {
        for action in 0..2 {
            let server = server.clone();
            tasks.push(tokio::spawn(async move {
                if (n + action) % 2 == 0 {
                    call(
                        &server,
                        Method::PUT,
                        &format!("/api/orders/{id}"),
                        Some(STAFF),
                        json!({"process": true}),
                    )
                    .await
                    .status
                } else {
                    cancel(&server, id, Some(STAFF), "race").await.status
                }
            }));
        }
    }
    for task in tasks {
        let status = task.await.unwrap();
        assert!(matches!(status.as_u16(), 200 | 400 | 409), "{status}");
    }
    for id in &ids {
        let order = call(
            &server,
            Method::GET,
            &format!("/orders/{id}"),
            Some(STAFF),
            Value::Null,
        )
        .await
        .json();
        assert_eq!(order["stage"], "cancelled", "every order got its cancel");
    }
    // Each cancel that came after processing gave everything back; each
    // processing that came after a cancel was refused.
    assert_eq!(stock_and_balance(&server).await, (1000, 1000.0));
}

async fn bulk(
    server: &TestServer,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> Reply {
    call(server, method, path, token, body).await
}

#[tokio::test]
async fn bulk_status_updates_are_all_or_nothing_or_skip_what_fails() {
    let server = shop().await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(new_order(&server).await);
    }
    let path = "/orders/bulk-status-update";
    // One order is a step ahead: confirming all four is refused as a whole.
    step(&server, ids[2], Some(STAFF), "confirmed").await;
    let refused = bulk(
        &server,
        Method::PUT,
        path,
        Some(STAFF),
        json!({"order_ids": ids, "status": "confirmed"}),
    )
    .await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    let body = refused.json();
    assert_eq!(
        (body["applied"].clone(), body["failed"].clone()),
        (json!(0), json!(1))
    );
    let results = body["results"].as_array().unwrap();
    assert_eq!(results[2]["result"], "failed");
    assert_eq!(results[2]["status"], 409);
    assert_eq!(
        results[2]["error"],
        "order is confirmed; it can only go to preparing"
    );
    assert_eq!(results[0]["result"], "skipped");
    for id in [ids[0], ids[1], ids[3]] {
        let order = call(
            &server,
            Method::GET,
            &format!("/orders/{id}"),
            Some(STAFF),
            Value::Null,
        )
        .await
        .json();
        assert_eq!(
            (order["status"].clone(), order["version"].clone()),
            (json!("New"), json!(1)),
            "nothing changed"
        );
    }

    // skip_failed applies what it can; an unknown id fails with 404.
    let mut with_unknown = ids.clone();
    with_unknown.push(999);
    let body =
        json!({"order_ids": with_unknown, "status": "confirmed", "error_policy": "skip_failed"});
    let partial = bulk(&server, Method::PUT, path, Some(STAFF), body).await;
    assert_eq!(partial.status, StatusCode::OK);
    let body = partial.json();
    assert_eq!(
        (body["applied"].clone(), body["failed"].clone()),
        (json!(3), json!(2))
    );
    let results = body["results"].as_array().unwrap();
    assert_eq!(results[0]["order"]["status"], "Confirmed");
    assert_eq!(results[4]["status"], 404);

    // Everything valid under reject_all: every order moves.
    let all = bulk(
        &server,
        Method::PUT,
        path,
        Some(STAFF),
        json!({"order_ids": ids, "status": "preparing"}),
    )
    .await;
    assert_eq!(all.status, StatusCode::OK);
    assert_eq!(all.json()["applied"], 4);
}

#[tokio::test]
async fn bulk_assignment_and_the_limits_of_a_bulk_call() {
    let server = shop().await;
    let a = new_order(&server).await;
    let b = new_order(&server).await;
    let path = "/orders/bulk-assign-delivery";
    let body = json!({"order_ids": [a, b], "partner_id": "rider-7"});
    assert_eq!(
        bulk(&server, Method::POST, path, Some(CUST1), body.clone())
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        bulk(&server, Method::POST, path, Some(RIDER7), body.clone())
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        bulk(&server, Method::POST, path, None, body.clone())
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let reply = bulk(&server, Method::POST, path, Some(STAFF), body).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    for id in [a, b] {
        assert_eq!(
            server.get(&format!("/get_status/{id}")).await.json()["orderbot_id"],
            "rider-7"
        );
    }
    // The partner can now move both.
    let moved = bulk(
        &server,
        Method::PUT,
        "/orders/bulk-status-update",
        Some(STAFF),
        json!({"order_ids": [a, b], "status": "confirmed"}),
    )
    .await;
    assert_eq!(moved.status, StatusCode::OK);

    let too_many: Vec<u64> = (1..=101).collect();
    for bad in [
        json!({"order_ids": [], "partner_id": "x"}),
        json!({"order_ids": too_many, "partner_id": "x"}),
        json!({"order_ids": [a, a], "partner_id": "x"}),
        json!({"order_ids": [a], "partner_id": ""}),
        json!({"order_ids": [a]}),
        json!({"order_ids": [a], "partner_id": "x", "error_policy": "maybe"}),
        json!({"order_ids": ["a"], "partner_id": "x"}),
    ] {
        let reply = bulk(&server, Method::POST, path, Some(STAFF), bad.clone()).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    let malformed = server
        .send(
            Method::POST,
            path,
            &[
                ("content-type", "application/json"),
                ("authorization", "token staff-t"),
            ],
            "{",
        )
        .await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    let missing_status = bulk(
        &server,
        Method::PUT,
        "/orders/bulk-status-update",
        Some(STAFF),
        json!({"order_ids": [a]}),
    )
    .await;
    assert_eq!(missing_status.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn scheduled_orders_wait_off_the_board_and_become_new_at_their_time() {
    let server = shop().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let body =
        |at: Value| json!({"items": [{"product_id": 1, "quantity": 1}], "scheduled_for": at});
    let path = "/orders/scheduled";
    for bad in [
        json!(now - 1000),
        json!(now + 400 * 24 * 3600 * 1000),
        json!("tomorrow"),
        Value::Null,
    ] {
        let reply = call(&server, Method::POST, path, Some(CUST1), body(bad.clone())).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    // scheduled_for belongs on /orders/scheduled only.
    let misplaced = call(
        &server,
        Method::POST,
        "/orders",
        Some(CUST1),
        body(json!(now + 60_000)),
    )
    .await;
    assert_eq!(misplaced.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        call(&server, Method::POST, path, None, body(json!(now + 60_000)))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );

    let soon = call(
        &server,
        Method::POST,
        path,
        Some(CUST1),
        body(json!(now + 1500)),
    )
    .await;
    assert_eq!(soon.status, StatusCode::CREATED, "{:?}", soon.body);
    let soon = soon.json();
    assert_eq!(
        (soon["status"].clone(), soon["stage"].clone()),
        (json!("Scheduled"), json!("scheduled"))
    );
    assert_eq!(soon["scheduled_for"], now + 1500);
    let later = call(
        &server,
        Method::POST,
        path,
        Some(CUST1),
        body(json!(now + 3_600_000)),
    )
    .await
    .json();
    let cancelled = call(
        &server,
        Method::POST,
        path,
        Some(CUST1),
        body(json!(now + 1500)),
    )
    .await
    .json();
    let id = |o: &Value| o["id"].as_u64().unwrap();

    // Off the board's views, and nothing moves it along the flow early.
    let views = server.get("/views").await.json();
    for view in ["new", "in_progress", "completed"] {
        assert_eq!(views[view], json!([]), "{view}");
    }
    assert_eq!(
        server.get("/get_new_orders").await.json()["new_orders"],
        json!([])
    );
    let early = step(&server, id(&soon), Some(STAFF), "confirmed").await;
    assert_eq!(early.status, StatusCode::CONFLICT);
    // The customer may cancel it before its time.
    assert_eq!(
        cancel(&server, id(&cancelled), Some(CUST1), "plans changed")
            .await
            .status,
        StatusCode::OK
    );

    // At its time it becomes new (within the once-a-second sweep).
    let mut released = Value::Null;
    for _ in 0..400 {
        let order = call(
            &server,
            Method::GET,
            &format!("/orders/{}", id(&soon)),
            Some(STAFF),
            Value::Null,
        )
        .await
        .json();
        if order["stage"] == "new" {
            released = order;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(released["status"], "New", "released at its time");
    let statuses: Vec<&str> = released["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["Scheduled", "New"]);
    assert_eq!(
        server.get("/get_new_orders").await.json()["new_orders"],
        json!([id(&soon)])
    );
    // It entered the dispatch queue: an orderbot asking for work gets it.
    let work = server
        .send(
            Method::POST,
            "/cpee/next-order",
            &[
                ("content-type", "application/json"),
                ("authorization", "token staff-t"),
            ],
            r#"{"orderbot_id": "robot-1"}"#,
        )
        .await;
    assert_eq!(work.status, StatusCode::OK, "{:?}", work.body);
    assert_eq!(work.json()["id"], id(&soon));
    // The cancelled one stays cancelled, the later one waits.
    let get = |o: &Value| format!("/orders/{}", id(o));
    assert_eq!(
        call(
            &server,
            Method::GET,
            &get(&cancelled),
            Some(STAFF),
            Value::Null
        )
        .await
        .json()["stage"],
        "cancelled"
    );
    assert_eq!(
        call(&server, Method::GET, &get(&later), Some(STAFF), Value::Null)
            .await
            .json()["stage"],
        "scheduled"
    );
}

#[tokio::test]
async fn feedback_comes_from_the_customer_once_after_completion() {
    let server = shop().await;
    let id = new_order(&server).await;
    let path = format!("/orders/{id}/feedback");
    let give = |token: Option<&'static str>, body: Value| {
        let (server, path) = (&server, path.clone());
        async move { call(server, Method::POST, &path, token, body).await }
    };
    let good = json!({"rating": 5, "comment": "warm and quick"});
    let early = give(Some(CUST1), good.clone()).await;
    assert_eq!(
        (early.status, early.error()),
        (
            StatusCode::CONFLICT,
            "feedback is given after completion".into()
        )
    );
    for status in ["confirmed", "preparing", "out_for_delivery", "delivered"] {
        step(&server, id, Some(STAFF), status).await;
    }
    // Only the order's customer: not another, not staff, not its partner.
    assert_eq!(
        give(Some(CUST2), good.clone()).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        give(Some(STAFF), good.clone()).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        give(None, good.clone()).await.status,
        StatusCode::UNAUTHORIZED
    );
    for bad in [
        json!({"rating": 0}),
        json!({"rating": 6}),
        json!({"rating": 4.5}),
        json!({"rating": "5"}),
        json!({"comment": "no rating"}),
        json!({"rating": 3, "comment": "x".repeat(1001)}),
    ] {
        assert_eq!(
            give(Some(CUST1), bad.clone()).await.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}"
        );
    }
    let given = give(Some(CUST1), good.clone()).await;
    assert_eq!(given.status, StatusCode::CREATED);
    assert_eq!(
        (
            given.json()["rating"].clone(),
            given.json()["comment"].clone()
        ),
        (json!(5), json!("warm and quick"))
    );
    let again = give(Some(CUST1), json!({"rating": 1})).await;
    assert_eq!(
        (again.status, again.error()),
        (StatusCode::CONFLICT, "feedback was already given".into())
    );
    let order = call(
        &server,
        Method::GET,
        &format!("/orders/{id}"),
        Some(CUST1),
        Value::Null,
    )
    .await
    .json();
    assert_eq!(order["feedback"]["rating"], 5);
}

#[tokio::test]
async fn templates_belong_to_their_customer_and_reorder_at_current_prices() {
    let server = shop().await;
    let usual =
        json!({"name": "usual", "items": [{"product_id": 1, "quantity": 2}], "notes": "no sugar"});
    let created = call(
        &server,
        Method::POST,
        "/templates",
        Some(CUST1),
        usual.clone(),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{:?}", created.body);
    let template = created.json();
    assert_eq!(template["customer_id"], 1, "a customer's own id is implied");
    let id = template["id"].as_u64().unwrap();
    assert_eq!(
        created.header("location"),
        Some(format!("/templates/{id}").as_str())
    );

    // Not for another customer; staff must say whose; bad input refused.
    let mut other = usual.clone();
    other["customer_id"] = json!(2);
    assert_eq!(
        call(&server, Method::POST, "/templates", Some(CUST1), other)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(
            &server,
            Method::POST,
            "/templates",
            Some(STAFF),
            usual.clone()
        )
        .await
        .status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        call(
            &server,
            Method::POST,
            "/templates",
            Some(RIDER7),
            usual.clone()
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&server, Method::POST, "/templates", None, usual.clone())
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    for bad in [
        json!({"name": "", "items": [{"product_id": 1, "quantity": 1}]}),
        json!({"name": "x", "items": []}),
        json!({"name": "x", "items": [{"product_id": 9, "quantity": 1}]}),
        json!({"name": "x", "items": [{"product_id": 1, "quantity": 0}]}),
        json!({"items": [{"product_id": 1, "quantity": 1}]}),
        json!({"name": "x", "items": [{"product_id": 1, "quantity": 1}], "customer_id": 77}),
    ] {
        let token = if bad.get("customer_id").is_some() {
            STAFF
        } else {
            CUST1
        };
        let reply = call(
            &server,
            Method::POST,
            "/templates",
            Some(token),
            bad.clone(),
        )
        .await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }

    // Reading: own only for customers, all for staff.
    let path = format!("/templates/{id}");
    assert_eq!(
        call(&server, Method::GET, &path, Some(CUST2), Value::Null)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&server, Method::GET, &path, Some(CUST1), Value::Null)
            .await
            .json()["name"],
        "usual"
    );
    assert_eq!(
        call(&server, Method::GET, "/templates", Some(CUST2), Value::Null)
            .await
            .json(),
        json!([])
    );
    assert_eq!(
        call(&server, Method::GET, "/templates", Some(STAFF), Value::Null)
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        call(
            &server,
            Method::GET,
            "/templates?customer_id=2",
            Some(STAFF),
            Value::Null
        )
        .await
        .json(),
        json!([])
    );
    assert_eq!(
        call(
            &server,
            Method::GET,
            "/templates/99",
            Some(STAFF),
            Value::Null
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );

    // Ordering it prices at today's price.
    let price = json!({"price": "3.00"});
    assert_eq!(
        call(&server, Method::PUT, "/products/1", Some(STAFF), price)
            .await
            .status,
        StatusCode::OK
    );
    let order_path = format!("/templates/{id}/order");
    assert_eq!(
        call(&server, Method::POST, &order_path, Some(CUST2), Value::Null)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let ordered = call(&server, Method::POST, &order_path, Some(CUST1), Value::Null).await;
    assert_eq!(ordered.status, StatusCode::CREATED, "{:?}", ordered.body);
    let order = ordered.json();
    assert_eq!(
        (order["grand_total"].clone(), order["notes"].clone()),
        (json!(6.0), json!("no sugar"))
    );
    assert_eq!(order["items"][0]["unit_price"], 3.0);
    assert_eq!(order["customer_id"], 1);

    // Stock is checked like a new order's; a product gone is named.
    let low = json!({"stock": 1});
    call(&server, Method::PUT, "/products/1", Some(STAFF), low).await;
    let short = call(&server, Method::POST, &order_path, Some(CUST1), Value::Null).await;
    assert_eq!(short.status, StatusCode::BAD_REQUEST);
    assert_eq!(short.json()["items"][0]["available"], 1);
    call(
        &server,
        Method::DELETE,
        "/products/1",
        Some(STAFF),
        Value::Null,
    )
    .await;
    let gone = call(&server, Method::POST, &order_path, Some(CUST1), Value::Null).await;
    assert_eq!(
        (gone.status, gone.error()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "items[0]: product 1 not found".into()
        )
    );

    // Deleting: the owner (or staff).
    assert_eq!(
        call(&server, Method::DELETE, &path, Some(CUST2), Value::Null)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&server, Method::DELETE, &path, Some(CUST1), Value::Null)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(&server, Method::GET, &path, Some(STAFF), Value::Null)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

/// A processed, delivered order of customer 1 (three teas at 2.50).
async fn delivered(server: &TestServer) -> u64 {
    let id = new_order(server).await;
    let path = format!("/api/orders/{id}");
    assert_eq!(
        call(
            server,
            Method::PUT,
            &path,
            Some(STAFF),
            json!({"process": true})
        )
        .await
        .status,
        StatusCode::OK
    );
    for status in ["confirmed", "preparing", "out_for_delivery", "delivered"] {
        step(server, id, Some(STAFF), status).await;
    }
    id
}

#[tokio::test]
async fn a_return_goes_requested_approved_received_refunded_and_pays_back() {
    let server = shop().await;
    let id = delivered(&server).await;
    assert_eq!(stock_and_balance(&server).await, (997, 992.5));
    let ask = format!("/orders/{id}/request-return");
    let set = format!("/orders/{id}/return");
    let two = json!({"items": [{"product_id": 1, "quantity": 2}], "reason": "spilled"});

    // Only the order's customer; items must be the order's, within its quantities.
    assert_eq!(
        call(&server, Method::POST, &ask, Some(CUST2), two.clone())
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&server, Method::POST, &ask, Some(STAFF), two.clone())
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    for bad in [
        json!({"items": [{"product_id": 1, "quantity": 4}], "reason": "x"}),
        json!({"items": [{"product_id": 1, "quantity": 2}, {"product_id": 1, "quantity": 2}], "reason": "x"}),
        json!({"items": [{"product_id": 2, "quantity": 1}], "reason": "x"}),
        json!({"items": [], "reason": "x"}),
        json!({"items": [{"product_id": 1, "quantity": 1}], "reason": ""}),
        json!({"items": [{"product_id": 1, "quantity": 1}]}),
    ] {
        let reply = call(&server, Method::POST, &ask, Some(CUST1), bad.clone()).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    let requested = call(&server, Method::POST, &ask, Some(CUST1), two.clone()).await;
    assert_eq!(
        requested.status,
        StatusCode::CREATED,
        "{:?}",
        requested.body
    );
    assert_eq!(
        (
            requested.json()["status"].clone(),
            requested.json()["amount"].clone()
        ),
        (json!("requested"), json!(5.0))
    );
    assert_eq!(
        call(&server, Method::POST, &ask, Some(CUST1), two)
            .await
            .error(),
        "a return was already requested"
    );

    // Staff only, and only in order.
    let to = |status: &str| json!({"status": status});
    assert_eq!(
        call(&server, Method::PUT, &set, Some(CUST1), to("approved"))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&server, Method::PUT, &set, Some(STAFF), to("refunded"))
            .await
            .error(),
        "the return is requested; it cannot become refunded"
    );
    assert_eq!(
        call(&server, Method::PUT, &set, Some(STAFF), to("lost"))
            .await
            .status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        call(&server, Method::PUT, &set, Some(STAFF), to("requested"))
            .await
            .status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    for status in ["approved", "received"] {
        let reply = call(&server, Method::PUT, &set, Some(STAFF), to(status)).await;
        assert_eq!(reply.status, StatusCode::OK, "{status}: {:?}", reply.body);
        assert_eq!(reply.json()["return"]["status"], status);
    }
    assert_eq!(
        stock_and_balance(&server).await,
        (997, 992.5),
        "nothing moves before the refund"
    );
    let refunded = call(&server, Method::PUT, &set, Some(STAFF), to("refunded")).await;
    assert_eq!(refunded.status, StatusCode::OK);
    assert_eq!(
        stock_and_balance(&server).await,
        (999, 997.5),
        "credited and restocked"
    );
    let order = refunded.json();
    assert_eq!(
        order["stage"], "completed",
        "the order itself stays completed"
    );
    let steps: Vec<&str> = order["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps[steps.len() - 4..],
        [
            "Return requested",
            "Return approved",
            "Return received",
            "Refunded"
        ]
    );
    assert_eq!(
        call(&server, Method::PUT, &set, Some(STAFF), to("refunded"))
            .await
            .status,
        StatusCode::CONFLICT
    );

    // A rejected return ends there.
    let other = delivered(&server).await;
    let one = json!({"items": [{"product_id": 1, "quantity": 1}], "reason": "meh"});
    call(
        &server,
        Method::POST,
        &format!("/orders/{other}/request-return"),
        Some(CUST1),
        one,
    )
    .await;
    let path = format!("/orders/{other}/return");
    assert_eq!(
        call(&server, Method::PUT, &path, Some(STAFF), to("rejected"))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        call(&server, Method::PUT, &path, Some(STAFF), to("received"))
            .await
            .status,
        StatusCode::CONFLICT
    );

    // Not before completion.
    let open = new_order(&server).await;
    let early = call(
        &server,
        Method::POST,
        &format!("/orders/{open}/request-return"),
        Some(CUST1),
        json!({"items": [{"product_id": 1, "quantity": 1}], "reason": "x"}),
    )
    .await;
    assert_eq!(
        (early.status, early.error()),
        (
            StatusCode::CONFLICT,
            "only a completed order can be returned".into()
        )
    );
}

#[tokio::test]
async fn the_return_window_closes_and_restocking_is_configurable() {
    let mut config = common::config();
    config.returns.window_secs = 1;
    config.returns.restock = false;
    let server = TestServer::with_config(config).await;
    call(
        &server,
        Method::POST,
        "/products",
        None,
        json!({"id": 1, "name": "tea", "price": 2, "stock": 10}),
    )
    .await;
    call(
        &server,
        Method::POST,
        "/customers",
        None,
        json!({"id": 1, "name": "Ann", "balance": 100}),
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let order = call(
            &server,
            Method::POST,
            "/orders",
            None,
            json!({"customer_id": 1, "items": [{"product_id": 1, "quantity": 1}]}),
        )
        .await
        .json();
        let id = order["id"].as_u64().unwrap();
        call(
            &server,
            Method::PUT,
            &format!("/api/orders/{id}"),
            None,
            json!({"process": true}),
        )
        .await;
        for status in ["confirmed", "preparing", "out_for_delivery", "delivered"] {
            step(&server, id, None, status).await;
        }
        ids.push(id);
    }
    let ask = json!({"items": [{"product_id": 1, "quantity": 1}], "reason": "x"});
    assert_eq!(
        call(
            &server,
            Method::POST,
            &format!("/orders/{}/request-return", ids[0]),
            None,
            ask.clone()
        )
        .await
        .status,
        StatusCode::CREATED
    );
    for status in ["approved", "received", "refunded"] {
        call(
            &server,
            Method::PUT,
            &format!("/orders/{}/return", ids[0]),
            None,
            json!({"status": status}),
        )
        .await;
    }
    let product = call(&server, Method::GET, "/products/1", None, Value::Null)
        .await
        .json();
    assert_eq!(product["stock"], 8, "refunded without restocking");
    let customer = call(&server, Method::GET, "/customers/1", None, Value::Null)
        .await
        .json();
    assert_eq!(customer["balance"], 98.0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let late = call(
        &server,
        Method::POST,
        &format!("/orders/{}/request-return", ids[1]),
        None,
        ask,
    )
    .await;
    assert_eq!(
        (late.status, late.error()),
        (StatusCode::CONFLICT, "the return window has closed".into())
    );
}

#[tokio::test]
async fn delivery_fees_follow_the_configured_rules_and_the_totals() {
    use order_broker::config::{Surcharge, Zone};
    let mut config = common::config();
    let minute = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 60)
        % 1440;
    let hhmm = |m: u64| format!("{:02}:{:02}", (m % 1440) / 60, m % 60);
    let d = &mut config.delivery;
    d.base_fee = "2.00".into();
    d.per_km = "0.50".into();
    d.zones = vec![Zone {
        name: "center".into(),
        fee: "1.50".into(),
    }];
    d.free_above = "20".into();
    // A window around now: every order here pays it.
    d.surcharges = vec![Surcharge {
        from: hhmm(minute + 1439),
        to: hhmm(minute + 3),
        amount: "1.00".into(),
    }];
    let server = TestServer::with_config(config).await;
    call(
        &server,
        Method::POST,
        "/products",
        None,
        json!({"id": 1, "name": "tea", "price": "2.50", "stock": 100}),
    )
    .await;
    let order = |delivery: Value, quantity: u64| {
        let server = &server;
        async move {
            let body =
                json!({"items": [{"product_id": 1, "quantity": quantity}], "delivery": delivery});
            call(server, Method::POST, "/orders", None, body).await
        }
    };
    let totals = |o: &Value| {
        (
            o["total"].as_f64().unwrap(),
            o["delivery_fee"].as_f64().unwrap(),
            o["grand_total"].as_f64().unwrap(),
        )
    };

    let far = order(json!({"distance_km": 3.2}), 2).await;
    assert_eq!(far.status, StatusCode::CREATED, "{:?}", far.body);
    assert_eq!(
        totals(&far.json()),
        (5.0, 4.6, 9.6),
        "2.00 + 3.2 km × 0.50 + 1.00 surcharge"
    );
    assert_eq!(far.json()["delivery"]["distance_m"], 3200);
    let zone = order(json!({"zone": "center"}), 2).await.json();
    assert_eq!(totals(&zone), (5.0, 2.5, 7.5));
    let big = order(json!({"distance_km": 10}), 8).await.json();
    assert_eq!(
        totals(&big),
        (20.0, 1.0, 21.0),
        "free from 20.00 but for the surcharge"
    );
    let none = call(
        &server,
        Method::POST,
        "/orders",
        None,
        json!({"items": [{"product_id": 1, "quantity": 1}]}),
    )
    .await
    .json();
    assert_eq!(totals(&none), (2.5, 0.0, 2.5));

    // Changing the items re-prices the fee under the same rules.
    let id = far.json()["id"].as_u64().unwrap();
    let more = call(
        &server,
        Method::PUT,
        &format!("/orders/{id}/items"),
        None,
        json!({"items": [{"product_id": 1, "quantity": 8}]}),
    )
    .await;
    assert_eq!(totals(&more.json()), (20.0, 1.0, 21.0));

    for bad in [
        json!({"distance_km": 1, "zone": "center"}),
        json!({}),
        json!({"zone": "moon"}),
        json!({"distance_km": 51}),
        json!({"distance_km": -1}),
        json!({"distance_km": "far"}),
    ] {
        assert_eq!(
            order(bad.clone(), 1).await.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}"
        );
    }
}
