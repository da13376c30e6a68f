//! Money and quantities over real HTTP and real files: exact end to end,
//! bounded by `limits.max_amount` / `limits.max_quantity` (422 naming the
//! field), and assigned ids never wrap.

mod common;

use std::path::Path;

use common::{Reply, TestServer};
use hyper::{Method, StatusCode};
use order_broker::Config;
use order_broker::config::{Fsync, PersistenceMode};
use serde_json::{Value, json};

fn durable_config(dir: &Path) -> Config {
    let mut config = common::config();
    config.persistence.mode = PersistenceMode::Journal;
    config.persistence.dir = dir.to_path_buf();
    config.persistence.fsync = Fsync::Always;
    config
}

async fn send(server: &TestServer, method: Method, path: &str, body: &str) -> Reply {
    let ct = ("content-type", "application/json");
    server.send(method, path, &[ct], body).await
}

async fn post(server: &TestServer, path: &str, body: Value) -> Reply {
    send(server, Method::POST, path, &body.to_string()).await
}

fn text(reply: &Reply) -> String {
    String::from_utf8_lossy(&reply.body).into_owned()
}

/// 422 whose body names `field`, in `field` and in the message.
fn assert_refused(reply: &Reply, field: &str) {
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{field}: {}",
        text(reply)
    );
    assert_eq!(reply.json()["field"], field, "{}", text(reply));
    assert!(reply.error().contains(field), "{}", text(reply));
}

/// The reproduced defect: one order for 12297829382473034 units of a 7.50
/// product was accepted, its total (92233720368547755.00, just below
/// i64::MAX cents) went to the journal through f64 and could not be read
/// back, and every later start failed with "journal … is corrupt".
#[tokio::test]
async fn an_absurd_quantity_is_refused_and_the_broker_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::with_config(durable_config(dir.path())).await;
    let product = json!({"id": 1, "name": "Mojito", "price": 7.5, "stock": 10});
    assert_eq!(
        post(&server, "/products", product).await.status,
        StatusCode::CREATED
    );
    let customer = json!({"id": 1, "name": "Ann", "balance": 100});
    assert_eq!(
        post(&server, "/customers", customer).await.status,
        StatusCode::CREATED
    );
    // The order as it was reproduced: one item, 7.50 × 12297829382473034 =
    // 92233720368547755.00, which fit an i64 of cents.
    let absurd = json!({"customer_id": 1, "items": [
        {"product_id": 1, "quantity": 12297829382473034u64},
    ]});
    assert_refused(&post(&server, "/orders", absurd).await, "items[0].quantity");
    let body = json!({"customer_id": 1, "name": "t", "items": [
        {"product_id": 1, "quantity": 1},
        {"product_id": 1, "quantity": 12297829382473034u64},
    ]});
    assert_refused(
        &post(&server, "/templates", body).await,
        "items[1].quantity",
    );
    // Under the quantity bound, the total is what is too large.
    let dear = json!({"id": 2, "name": "Gold", "price": "999999999.99", "stock": 10});
    assert_eq!(
        post(&server, "/products", dear).await.status,
        StatusCode::CREATED
    );
    let two = json!({"items": [{"product_id": 2, "quantity": 2}]});
    assert_refused(&post(&server, "/orders", two).await, "total");
    let ok = post(
        &server,
        "/orders",
        json!({"customer_id": 1, "items": [{"product_id": 1, "quantity": 2}]}),
    )
    .await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", text(&ok));
    // Replacing the items is checked the same way.
    let id = ok.json()["id"].as_u64().unwrap();
    let items = json!({"items": [{"product_id": 1, "quantity": 12297829382473034u64}]});
    let reply = send(
        &server,
        Method::PUT,
        &format!("/orders/{id}/items"),
        &items.to_string(),
    )
    .await;
    assert_refused(&reply, "items[0].quantity");
    server.stop().await;

    let server = TestServer::try_start(durable_config(dir.path()))
        .await
        .expect("the broker starts again");
    let order = server.get(&format!("/orders/{id}")).await;
    assert_eq!(order.status, StatusCode::OK);
    assert!(
        text(&order).contains(r#""grand_total":15.0"#),
        "{}",
        text(&order)
    );
    assert_eq!(
        server.get("/products/2").await.json()["price"],
        json!(999999999.99)
    );
}

/// Amounts past 2^53 cents changed across a restart (90071992547409.93
/// read back as .92); now everything past `limits.max_amount` is refused.
#[tokio::test]
async fn amounts_and_quantities_past_the_bounds_are_refused_naming_the_field() {
    let server = TestServer::start().await;
    let reply = post(
        &server,
        "/customers",
        json!({"name": "Ann", "balance": 90071992547409.93}),
    )
    .await;
    assert_refused(&reply, "balance");
    // The body's text, not an f64 of it, is what is read.
    let reply = send(
        &server,
        Method::POST,
        "/customers",
        r#"{"name": "Ann", "balance": 90071992547409.93}"#,
    )
    .await;
    assert_refused(&reply, "balance");
    // Past what an i64 of cents holds: refused while reading the body.
    let reply = send(
        &server,
        Method::POST,
        "/customers",
        r#"{"name": "Ann", "balance": 1e17}"#,
    )
    .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        text(&reply)
    );
    assert!(reply.error().starts_with("balance: "), "{}", text(&reply));
    for (balance, ok) in [
        ("1000000000", true),
        ("-1000000000", true),
        ("1000000000.01", false),
        ("-1000000000.01", false),
        ("\"1000000000.01\"", false),
    ] {
        let body = format!(r#"{{"name": "Bob", "balance": {balance}}}"#);
        let reply = send(&server, Method::POST, "/customers", &body).await;
        if ok {
            assert_eq!(
                reply.status,
                StatusCode::CREATED,
                "{balance}: {}",
                text(&reply)
            );
        } else {
            assert_refused(&reply, "balance");
        }
    }
    let reply = send(&server, Method::PUT, "/customers/1", r#"{"balance": 1e10}"#).await;
    assert_refused(&reply, "balance");
    for (body, field) in [
        (r#"{"name": "x", "price": 1000000000.01}"#, "price"),
        (r#"{"name": "x", "price": 1, "stock": 1000001}"#, "stock"),
    ] {
        assert_refused(&send(&server, Method::POST, "/products", body).await, field);
    }
    let created = post(
        &server,
        "/products",
        json!({"id": 1, "name": "x", "price": 1000000000, "stock": 1000000}),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", text(&created));
    for (body, field) in [
        (r#"{"price": 1000000000.01}"#, "price"),
        (r#"{"stock": 18446744073709551615}"#, "stock"),
    ] {
        assert_refused(
            &send(&server, Method::PUT, "/products/1", body).await,
            field,
        );
    }
    let order = json!({"items": [{"product_id": 1, "quantity": 1000001}]});
    assert_refused(&post(&server, "/orders", order).await, "items[0].quantity");
    let order = json!({"items": [{"product_id": 1, "quantity": 1}]});
    assert_eq!(
        post(&server, "/orders", order).await.status,
        StatusCode::CREATED
    );
    let order =
        json!({"items": [{"product_id": 1, "quantity": 1}, {"product_id": 1, "quantity": 1}]});
    assert_refused(&post(&server, "/orders", order).await, "total");
    // Nothing refused left a trace.
    assert_eq!(
        server
            .get("/customers")
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(server.get("/products/1").await.json()["stock"], 1000000);
}

/// An amount at the bound (here the 15-digit ceiling) is written, journaled,
/// recovered and exported exactly, as decimal text.
#[tokio::test]
async fn an_amount_at_the_bound_survives_a_restart_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let config = || {
        let mut config = durable_config(dir.path());
        config.limits.max_amount = "9999999999999.99".into();
        config
    };
    let server = TestServer::with_config(config()).await;
    for (path, body) in [
        (
            "/customers",
            r#"{"id": 1, "name": "Ann", "balance": 9999999999999.99}"#,
        ),
        (
            "/customers",
            r#"{"id": 2, "name": "Bob", "balance": -9999999999999.99}"#,
        ),
        (
            "/products",
            r#"{"id": 1, "name": "Gold", "price": 4999999999999.99, "stock": 2}"#,
        ),
        (
            "/products",
            r#"{"id": 2, "name": "Dust", "price": 0.01, "stock": 1}"#,
        ),
    ] {
        let reply = send(&server, Method::POST, path, body).await;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "{body}: {}",
            text(&reply)
        );
    }
    let reply = send(&server, Method::GET, "/customers/1", "").await;
    assert!(
        text(&reply).contains(r#""balance":9999999999999.99"#),
        "{}",
        text(&reply)
    );
    let order = post(
        &server,
        "/orders",
        json!({"customer_id": 1, "items": [{"product_id": 1, "quantity": 2}]}),
    )
    .await;
    assert_eq!(order.status, StatusCode::CREATED, "{}", text(&order));
    assert!(
        text(&order).contains(r#""grand_total":9999999999999.98"#),
        "{}",
        text(&order)
    );
    let id = order.json()["id"].as_u64().unwrap();
    let processed = send(
        &server,
        Method::PUT,
        &format!("/api/orders/{id}"),
        r#"{"process": true}"#,
    )
    .await;
    assert_eq!(processed.status, StatusCode::OK, "{}", text(&processed));
    let over = send(
        &server,
        Method::PUT,
        "/customers/2",
        r#"{"balance": -10000000000000}"#,
    )
    .await;
    assert_eq!(
        over.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        text(&over)
    );
    let before: Vec<String> = futures_texts(&server, id).await;
    assert!(before[0].contains(r#""balance":0.01"#), "{}", before[0]);
    assert!(
        before[1].contains(r#""balance":-9999999999999.99"#),
        "{}",
        before[1]
    );
    server.stop().await;

    // The journal holds the decimal text, not a float's rendering.
    let mut journal = Vec::new();
    for path in common::files(dir.path(), "journal-") {
        journal.extend(std::fs::read(path).unwrap());
    }
    let journal = String::from_utf8_lossy(&journal);
    for exact in [
        "9999999999999.99",
        "-9999999999999.99",
        "4999999999999.99",
        "9999999999999.98",
    ] {
        assert!(journal.contains(exact), "{exact} is in the journal");
    }

    let server = TestServer::try_start(config()).await.expect("restarts");
    assert_eq!(futures_texts(&server, id).await, before);
    let csv = server.get("/orders/export?format=csv").await;
    assert!(text(&csv).contains("9999999999999.98"), "{}", text(&csv));
}

/// The customers, the product and the order as their JSON text.
async fn futures_texts(server: &TestServer, order: u64) -> Vec<String> {
    let mut out = Vec::new();
    for path in [
        "/customers/1".to_string(),
        "/customers/2".to_string(),
        "/products/1".to_string(),
        format!("/orders/{order}"),
    ] {
        let reply = server.get(&path).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        out.push(text(&reply));
    }
    out
}

/// After an order or a product with id u64::MAX, a new id is refused with
/// 409 "ids are exhausted", never wrapped to 0, before and after a restart.
#[tokio::test]
async fn assigned_ids_never_wrap() {
    const MAX: u64 = u64::MAX;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::with_config(durable_config(dir.path())).await;
    // Order ids a client chooses end at 2^53 - 1 (tests/seed_hostile.rs),
    // so orders keep ids to assign; products and customers are chosen up
    // to the last id.
    let seed = json!({"order_id": MAX, "status": "Mixing"});
    let reply = send(&server, Method::PUT, "/update_order", &seed.to_string()).await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        text(&reply)
    );
    for (path, body) in [
        ("/products", json!({"id": MAX, "name": "last", "price": 1})),
        ("/customers", json!({"id": MAX, "name": "last"})),
    ] {
        let reply = post(&server, path, body).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", text(&reply));
    }
    no_new_ids(&server, 7).await;
    server.stop().await;
    let server = TestServer::with_config(durable_config(dir.path())).await;
    no_new_ids(&server, 8).await;
}

/// Every way of assigning a product or customer id is refused, twice over; nothing got id 0;
/// a free id can still be chosen (`free`).
async fn no_new_ids(server: &TestServer, free: u64) {
    let exhausted = |reply: &Reply| {
        assert_eq!(reply.status, StatusCode::CONFLICT, "{}", text(reply));
        assert_eq!(reply.json()["reason"], "ids_exhausted", "{}", text(reply));
        assert!(reply.error().contains("exhausted"), "{}", text(reply));
    };
    for _ in 0..2 {
        exhausted(&post(server, "/products", json!({"name": "p", "price": 1})).await);
        exhausted(&post(server, "/customers", json!({"name": "c"})).await);
    }
    for path in ["/get_status/0", "/products/0", "/customers/0", "/orders/0"] {
        assert_eq!(
            server.get(path).await.status,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    let chosen = post(
        server,
        "/products",
        json!({"id": free, "name": "p", "price": 1}),
    )
    .await;
    assert_eq!(chosen.status, StatusCode::CREATED, "{}", text(&chosen));
}

/// A return asks for at most `limits.max_quantity` of an item, like an order.
#[test]
fn a_return_past_the_quantity_bound_is_refused() {
    use order_broker::broker::{NewItem, NewOrder, Transition};
    use order_broker::catalog::{CustomerId, ProductId};
    use order_broker::money::Money;
    use order_broker::shop::Strategy;
    use order_broker::{Broker, BrokerError};

    let broker = Broker::new(&common::config());
    broker
        .create_product(Some(1), "tea".into(), Money(250), 10)
        .unwrap();
    broker
        .create_customer(Some(1), "Ann".into(), None, Money(10_000))
        .unwrap();
    let item = |quantity| NewItem {
        product_id: ProductId(1),
        quantity,
    };
    let event = broker
        .create_order(NewOrder {
            customer_id: Some(CustomerId(1)),
            items: vec![item(2)],
            ..NewOrder::default()
        })
        .unwrap();
    let (id, order) = event.order().unwrap();
    let number = order.shop.as_ref().unwrap().number.clone();
    broker.process(id, Strategy::Adjust, None).unwrap();
    broker
        .transition(&number, Transition::Complete, None, None)
        .unwrap();
    let refused = broker
        .request_return(id, &[item(1), item(12_297_829_382_473_034)], "cold")
        .unwrap_err();
    match refused {
        BrokerError::OutOfRange { field, .. } => assert_eq!(field, "items[1].quantity"),
        other => panic!("{other:?}"),
    }
    broker.request_return(id, &[item(1)], "cold").unwrap();
}
