//! One transition table and one ledger: every API that cancels gives back
//! exactly what the order was charged, once; a cancelled or refunded order
//! is final for every API; a return can only give back what was charged.
//! Each test is a hostile sequence that created money or stock before.

mod common;

use common::{Reply, TestServer};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

/// A shop with tea (10.00, 10 in stock) and a customer with 100.00.
async fn shop() -> TestServer {
    let mut config = common::config();
    config.shop.tax_rate = "0.10".into();
    let server = TestServer::with_config(config).await;
    let product = json!({"id": 1, "name": "tea", "price": "10.00", "stock": 10});
    assert_eq!(
        call(&server, Method::POST, "/products", product)
            .await
            .status,
        StatusCode::CREATED
    );
    let customer = json!({"id": 1, "name": "Ann", "balance": "100.00"});
    assert_eq!(
        call(&server, Method::POST, "/customers", customer)
            .await
            .status,
        StatusCode::CREATED
    );
    server
}

async fn call(server: &TestServer, method: Method, path: &str, body: Value) -> Reply {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    server
        .send(method, path, &[("content-type", "application/json")], &body)
        .await
}

/// A new order of `quantity` teas for customer 1: (id, number).
async fn order(server: &TestServer, quantity: u64) -> (u64, String) {
    let body = json!({"customer_id": 1, "items": [{"product_id": 1, "quantity": quantity}]});
    let reply = call(server, Method::POST, "/orders", body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    let order = reply.json();
    (
        order["id"].as_u64().unwrap(),
        order["number"].as_str().unwrap().to_string(),
    )
}

async fn process(server: &TestServer, id: u64) {
    let reply = call(
        server,
        Method::PUT,
        &format!("/api/orders/{id}"),
        json!({"process": true}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
}

async fn lifecycle(server: &TestServer, action: &str, number: &str) -> Reply {
    call(
        server,
        Method::POST,
        &format!("/api/store/orders/{action}"),
        json!({"order": number, "number": number}),
    )
    .await
}

/// (balance of customer 1, stock of product 1) as text, exactly.
async fn money_and_stock(server: &TestServer) -> (String, u64) {
    let customer = server.get("/customers/1").await.json();
    let product = server.get("/products/1").await.json();
    (
        customer["balance"].to_string(),
        product["stock"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn both_cancel_apis_give_back_the_same_way() {
    let server = shop().await;
    let (a, number_a) = order(&server, 2).await;
    let (b, _) = order(&server, 2).await;
    process(&server, a).await;
    process(&server, b).await;
    // 2 × 10.00 + 10 % tax = 22.00 each.
    assert_eq!(money_and_stock(&server).await, ("56.0".into(), 6));

    let reply = lifecycle(&server, "cancel", &number_a).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.json()["status"], 30);
    assert_eq!(
        money_and_stock(&server).await,
        ("78.0".into(), 8),
        "the Order Status API's cancel gives back the balance and the stock"
    );
    let reply = call(
        &server,
        Method::POST,
        &format!("/orders/{b}/cancel"),
        json!({"reason": "changed my mind"}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(money_and_stock(&server).await, ("100.0".into(), 10));

    // The ledger says what moved, the same for both.
    for id in [a, b] {
        let ledger = server.get(&format!("/orders/{id}")).await.json()["ledger"].clone();
        assert_eq!(ledger["charged"], 22.0, "{ledger}");
        assert_eq!(ledger["given_back"], 22.0, "{ledger}");
        assert_eq!(ledger["refunded"], 0.0, "{ledger}");
        assert_eq!(
            ledger["items_taken"],
            json!([{"product_id": 1, "quantity": 2}])
        );
        assert_eq!(ledger["items_returned"], ledger["items_taken"]);
    }
}

#[tokio::test]
async fn a_cancelled_order_is_final_for_every_api() {
    let server = shop().await;
    let (id, number) = order(&server, 2).await;
    process(&server, id).await;
    assert_eq!(
        lifecycle(&server, "cancel", &number).await.status,
        StatusCode::OK
    );
    let settled = money_and_stock(&server).await;
    assert_eq!(settled, ("100.0".into(), 10));
    let version = server.get(&format!("/orders/{id}")).await.json()["version"].clone();

    // Each of these once moved the order again, and a second cancel then
    // credited its total once more (80 → 100 → 120 → 140).
    for round in 0..3 {
        for (method, path, body) in [
            (
                Method::PUT,
                "/update_order".to_string(),
                json!({"order_id": id, "status": "Mixing"}),
            ),
            (
                Method::PUT,
                "/update_order".to_string(),
                json!({"order_id": id, "status": "Order Initiated"}),
            ),
            (
                Method::PUT,
                format!("/orders/{id}"),
                json!({"status": "Preparing"}),
            ),
            (
                Method::PUT,
                format!("/orders/{id}/status"),
                json!({"status": "confirmed"}),
            ),
            (
                Method::POST,
                format!("/orders/{id}/cancel"),
                json!({"reason": "again"}),
            ),
        ] {
            let reply = call(&server, method, &path, body.clone()).await;
            assert_eq!(
                reply.status,
                StatusCode::CONFLICT,
                "round {round}: {path} {body} must be refused: {:?}",
                reply.body
            );
        }
        for action in ["cancel", "confirm", "paid", "complete"] {
            let reply = lifecycle(&server, action, &number).await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{action}");
        }
        let reply = call(
            &server,
            Method::PUT,
            &format!("/api/orders/{id}"),
            json!({"process": true}),
        )
        .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            money_and_stock(&server).await,
            settled,
            "round {round}: nothing credited"
        );
    }
    let after = server.get(&format!("/orders/{id}")).await.json();
    assert_eq!(after["version"], version, "nothing changed the order");
    assert_eq!(after["status"], "Cancelled");
}

#[tokio::test]
async fn a_cancel_word_from_the_seed_api_gives_back_once() {
    let server = shop().await;
    let (id, _) = order(&server, 3).await;
    process(&server, id).await;
    assert_eq!(money_and_stock(&server).await, ("67.0".into(), 7));
    let cancel = json!({"order_id": id, "status": "Order Cancelled"});
    let reply = call(&server, Method::PUT, "/update_order", cancel.clone()).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(money_and_stock(&server).await, ("100.0".into(), 10));
    let history = server.get(&format!("/orders/{id}")).await.json()["history"].clone();
    let words: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        words,
        ["New", "Order Cancelled"],
        "the seed API's words are history too"
    );
    let reply = call(&server, Method::PUT, "/update_order", cancel).await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert_eq!(money_and_stock(&server).await, ("100.0".into(), 10));

    // Free words still move a shop order that is under way.
    let (other, _) = order(&server, 1).await;
    for word in ["Mixing", "Pouring", "Order Served"] {
        let reply = call(
            &server,
            Method::PUT,
            "/update_order",
            json!({"order_id": other, "status": word}),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{word}");
    }
    // A completed order only moves on to cancelled.
    let reply = call(
        &server,
        Method::PUT,
        "/update_order",
        json!({"order_id": other, "status": "Mixing"}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert!(reply.error().contains("completed"), "{}", reply.error());
    // Seed-only orders keep the seed's freedom.
    for word in ["Order Served", "Mixing", "Order Cancelled", "Mixing"] {
        let reply = call(
            &server,
            Method::PUT,
            "/update_order",
            json!({"order_id": 9000, "status": word}),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{word}");
    }
}

#[tokio::test]
async fn the_order_status_api_cancels_a_complete_order_and_gives_back() {
    let server = shop().await;
    let (id, number) = order(&server, 1).await;
    process(&server, id).await;
    for action in ["confirm", "complete"] {
        assert_eq!(
            lifecycle(&server, action, &number).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(money_and_stock(&server).await, ("89.0".into(), 9));
    assert_eq!(
        lifecycle(&server, "cancel", &number).await.status,
        StatusCode::OK
    );
    assert_eq!(money_and_stock(&server).await, ("100.0".into(), 10));
    // An order never processed gives nothing back.
    let (unpaid, number) = order(&server, 4).await;
    assert_eq!(
        lifecycle(&server, "cancel", &number).await.status,
        StatusCode::OK
    );
    assert_eq!(money_and_stock(&server).await, ("100.0".into(), 10));
    let ledger = &server.get(&format!("/orders/{unpaid}")).await.json()["ledger"];
    assert!(ledger.is_null(), "nothing moved: {ledger}");
}

#[tokio::test]
async fn a_return_refunds_only_what_was_charged() {
    let server = shop().await;
    // Never processed: once approved, received and refunded from nothing
    // (balance 100 → 122, stock 10 → 12).
    let (free, number) = order(&server, 2).await;
    for action in ["confirm", "complete"] {
        assert_eq!(
            lifecycle(&server, action, &number).await.status,
            StatusCode::OK
        );
    }
    let ask = json!({"items": [{"product_id": 1, "quantity": 2}], "reason": "cold"});
    let reply = call(
        &server,
        Method::POST,
        &format!("/orders/{free}/request-return"),
        ask.clone(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{:?}", reply.body);
    assert!(reply.error().contains("processed"), "{}", reply.error());
    assert_eq!(money_and_stock(&server).await, ("100.0".into(), 10));

    // Processed and delivered: the refund credits what it was charged, once.
    let (paid, number) = order(&server, 2).await;
    process(&server, paid).await;
    for action in ["confirm", "complete"] {
        assert_eq!(
            lifecycle(&server, action, &number).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(money_and_stock(&server).await, ("78.0".into(), 8));
    let reply = call(
        &server,
        Method::POST,
        &format!("/orders/{paid}/request-return"),
        ask,
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    for status in ["approved", "received", "refunded"] {
        let reply = call(
            &server,
            Method::PUT,
            &format!("/orders/{paid}/return"),
            json!({"status": status}),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{status}: {:?}", reply.body);
    }
    // Refunded 22.00; stock back (restock is on by default).
    assert_eq!(money_and_stock(&server).await, ("100.0".into(), 10));

    // A refunded order is final: no cancel gives it back a second time (the
    // Order Status API refuses in its own shape).
    let refused = lifecycle(&server, "cancel", &number).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(refused.json()["error_code"], "invalid_status");
    let reply = call(
        &server,
        Method::POST,
        &format!("/orders/{paid}/cancel"),
        json!({"reason": "again"}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    let reply = call(
        &server,
        Method::PUT,
        "/update_order",
        json!({"order_id": paid, "status": "Order Cancelled"}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert_eq!(money_and_stock(&server).await, ("100.0".into(), 10));
    let ledger = &server.get(&format!("/orders/{paid}")).await.json()["ledger"];
    assert_eq!(ledger["charged"], 22.0);
    assert_eq!(ledger["refunded"], 22.0);
    assert_eq!(ledger["given_back"], 0.0);
}

#[tokio::test]
async fn revenue_is_what_the_ledgers_moved() {
    let server = shop().await;
    let (kept, _) = order(&server, 1).await;
    let (cancelled, number) = order(&server, 2).await;
    process(&server, kept).await;
    process(&server, cancelled).await;
    assert_eq!(
        lifecycle(&server, "cancel", &number).await.status,
        StatusCode::OK
    );
    // 11.00 kept; the cancelled order's 22.00 left the report.
    let mut last = Value::Null;
    for _ in 0..200 {
        last = server.get("/analytics/revenue?bucket=day").await.json();
        if last["total"] == 11.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(last["total"], 11.0, "{last}");
    let top = server.get("/analytics/top-customers").await.json();
    assert_eq!(top["customers"][0]["spent"], 11.0, "{top}");
}

/// A deleted product's or customer's id is never given to a new record:
/// a cancel of an order processed against the old ones once restocked and
/// credited whoever took their ids next. Also after a restart, from the
/// journal and from a snapshot.
#[tokio::test]
async fn what_an_order_gives_back_never_reaches_a_record_that_reused_an_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config();
    config.persistence.mode = order_broker::config::PersistenceMode::Journal;
    config.persistence.dir = dir.path().to_path_buf();
    let server = TestServer::with_config(config.clone()).await;
    for (path, body) in [
        (
            "/products",
            json!({"id": 1, "name": "tea", "price": "10.00", "stock": 10}),
        ),
        (
            "/customers",
            json!({"id": 1, "name": "Ann", "balance": "100.00"}),
        ),
    ] {
        assert_eq!(
            call(&server, Method::POST, path, body).await.status,
            StatusCode::CREATED
        );
    }
    let (id, _) = order(&server, 2).await;
    process(&server, id).await;
    for path in ["/products/1", "/customers/1"] {
        let reply = call(&server, Method::DELETE, path, Value::Null).await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT, "{path}");
    }
    let again = [
        (
            "/products",
            json!({"id": 1, "name": "new tea", "price": "1.00", "stock": 0}),
        ),
        (
            "/customers",
            json!({"id": 1, "name": "Bob", "balance": "0"}),
        ),
    ];
    for (path, body) in &again {
        let reply = call(&server, Method::POST, path, body.clone()).await;
        assert_eq!(
            reply.status,
            StatusCode::CONFLICT,
            "{path}: {:?}",
            reply.body
        );
        assert!(reply.error().contains("never reused"), "{}", reply.error());
    }
    // A fresh id is given instead.
    let fresh = call(
        &server,
        Method::POST,
        "/customers",
        json!({"name": "Bob", "balance": 0}),
    )
    .await;
    assert_eq!(fresh.status, StatusCode::CREATED);
    assert_ne!(fresh.json()["id"], 1);
    // The cancel gives back to nobody (the records are gone).
    let reply = call(
        &server,
        Method::POST,
        &format!("/orders/{id}/cancel"),
        json!({"reason": "x"}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    server.stop().await;

    // After a restart from the journal, and from a snapshot, still retired.
    // (The second run snapshots; the third recovers from that snapshot.)
    for snapshot_first in [false, true, false] {
        let server = TestServer::with_config(config.clone()).await;
        if snapshot_first {
            let dir = config.persistence.dir.clone();
            let broker = server.broker.clone();
            tokio::task::spawn_blocking(move || {
                order_broker::journal::write_snapshot(&broker, &dir).unwrap()
            })
            .await
            .unwrap();
        }
        for (path, body) in &again {
            let reply = call(&server, Method::POST, path, body.clone()).await;
            assert_eq!(reply.status, StatusCode::CONFLICT, "{path} after restart");
        }
        server.stop().await;
    }
}
