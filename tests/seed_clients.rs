//! Clients written against the seed documents, as a new user would write
//! them: what each seed's client sends, and what it must get back. One
//! section per seed (the robot bar's order_store views are in
//! tests/order_store.rs).

mod common;

use common::{Reply, TestServer};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

const JSON: (&str, &str) = ("content-type", "application/json");

use common::send_json as send;

async fn post(server: &TestServer, path: &str, body: Value) -> Reply {
    send(server, Method::POST, path, body).await
}

async fn stock(server: &TestServer, product: u64) -> u64 {
    server.get(&format!("/products/{product}")).await.json()["stock"]
        .as_u64()
        .unwrap()
}

/// A shop with tea (2.50, `tea` in stock) and cake (4.00, 3), and Ann
/// (customer 1, 100.00).
async fn shop_with(config: order_broker::Config, tea: u64) -> TestServer {
    let server = TestServer::with_config(config).await;
    for body in [
        json!({"id": 1, "name": "tea", "price": "2.50", "stock": tea}),
        json!({"id": 2, "name": "cake", "price": "4.00", "stock": 3}),
    ] {
        assert_eq!(post(&server, "/products", body).await.status, 201);
    }
    let ann = json!({"id": 1, "name": "Ann", "balance": "100.00"});
    assert_eq!(post(&server, "/customers", ann).await.status, 201);
    server
}

// ---------------------------------------------------------------------------
// Order Management (001): `POST /orders/{customer_id}` places the customer's
// order and takes its stock; `GET /orders` is every order.

#[tokio::test]
async fn order_management_places_a_customers_order_taking_its_stock() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config();
    config.persistence.mode = order_broker::config::PersistenceMode::Journal;
    config.persistence.dir = dir.path().to_path_buf();
    let server = shop_with(config.clone(), 10).await;

    let reply = post(
        &server,
        "/orders/1",
        json!({"items": [{"product_id": 1, "quantity": 3}, {"product_id": 2, "quantity": 1}]}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    let order = reply.json();
    assert_eq!(order["customer_id"], 1);
    assert_eq!(order["status"], "New");
    let id = order["id"].as_u64().unwrap();
    assert_eq!(reply.header("location"), Some(&*format!("/orders/{id}")));
    // Taken as it was placed.
    assert_eq!(stock(&server, 1).await, 7);
    assert_eq!(stock(&server, 2).await, 2);

    // Short: 400, nothing taken, no order.
    let before = server.get("/orders").await.json().as_array().unwrap().len();
    let reply = post(
        &server,
        "/orders/1",
        json!({"items": [{"product_id": 1, "quantity": 2}, {"product_id": 2, "quantity": 5}]}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{:?}", reply.body);
    assert_eq!(
        reply.json()["items"],
        json!([{"product_id": 2, "requested": 5, "available": 2}])
    );
    assert_eq!(stock(&server, 1).await, 7);
    assert_eq!(stock(&server, 2).await, 2);
    let after = server.get("/orders").await.json().as_array().unwrap().len();
    assert_eq!(before, after);
    // An unknown customer in the path: 404, as for /customers/{id}/orders.
    let reply = post(
        &server,
        "/orders/99",
        json!({"items": [{"product_id": 1, "quantity": 1}]}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(stock(&server, 1).await, 7);

    // The items stay: the stock taken matches them.
    let reply = send(
        &server,
        Method::PUT,
        &format!("/orders/{id}/items"),
        json!({"items": [{"product_id": 1, "quantity": 9}]}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{:?}", reply.body);

    // A restart keeps the order and the stock it took, together.
    let addr = server.addr;
    server.stop().await;
    let server = TestServer::at(addr, config).await;
    assert_eq!(stock(&server, 1).await, 7);
    assert_eq!(stock(&server, 2).await, 2);

    // Processing it later charges the balance and takes no stock again.
    let reply = send(
        &server,
        Method::PUT,
        &format!("/api/orders/{id}"),
        json!({"process": true, "strategy": "reject"}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(stock(&server, 1).await, 7);
    assert_eq!(stock(&server, 2).await, 2);
    let ann = server.get("/customers/1").await.json();
    assert_eq!(ann["balance"], json!(88.5), "100 - 3 × 2.50 - 4.00");
    // Processing even past what is in stock now: the order holds its own.
    let reply = post(
        &server,
        "/orders/1",
        json!({"items": [{"product_id": 2, "quantity": 2}]}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let second = reply.json()["id"].as_u64().unwrap();
    assert_eq!(stock(&server, 2).await, 0);
    let reply = send(
        &server,
        Method::PUT,
        &format!("/api/orders/{second}"),
        json!({"process": true, "strategy": "reject"}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(stock(&server, 2).await, 0);
    assert_eq!(reply.json()["items"][0]["quantity"], 2);
}

/// What an unprocessed order took at placement goes back when it is
/// cancelled, through either cancel, or deleted; never twice.
#[tokio::test]
async fn stock_taken_at_placement_goes_back_once() {
    let server = shop_with(common::config(), 10).await;
    let place = |quantity: u64| {
        let server = &server;
        async move {
            let reply = post(
                server,
                "/orders/1",
                json!({"items": [{"product_id": 1, "quantity": quantity}]}),
            )
            .await;
            assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
            reply.json()
        }
    };
    let a = place(2).await;
    let b = place(3).await;
    let c = place(4).await;
    assert_eq!(stock(&server, 1).await, 1);

    let reply = post(
        &server,
        &format!("/orders/{}/cancel", a["id"]),
        json!({"reason": "changed my mind"}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(stock(&server, 1).await, 3);
    let reply = post(
        &server,
        "/api/store/orders/cancel",
        json!({"number": b["number"]}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(stock(&server, 1).await, 6);
    // A cancelled order deleted gives nothing back a second time.
    let reply = send(
        &server,
        Method::DELETE,
        &format!("/orders/{}", a["id"]),
        Value::Null,
    )
    .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(stock(&server, 1).await, 6);
    // Deleting an unprocessed order that holds stock puts it back.
    let reply = send(
        &server,
        Method::DELETE,
        &format!("/orders/{}", c["id"]),
        Value::Null,
    )
    .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(stock(&server, 1).await, 10);
    // Orders placed on `/orders` take nothing until processed, as before.
    let reply = post(
        &server,
        "/orders",
        json!({"customer_id": 1, "items": [{"product_id": 1, "quantity": 4}]}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(stock(&server, 1).await, 10);
}

/// Many clients placing at once never take more than is in stock.
#[tokio::test]
async fn concurrent_placements_never_oversell() {
    let server = shop_with(common::config(), 25).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut client = server.client().await;
        tasks.push(tokio::spawn(async move {
            let mut placed = 0u64;
            for _ in 0..10 {
                let body = json!({"items": [{"product_id": 1, "quantity": 2}]}).to_string();
                let reply = client.send(Method::POST, "/orders/1", &[JSON], &body).await;
                match reply.status.as_u16() {
                    201 => placed += 2,
                    400 => {}
                    other => panic!("unexpected {other}: {:?}", reply.body),
                }
            }
            placed
        }));
    }
    let mut placed = 0;
    for task in tasks {
        placed += task.await.unwrap();
    }
    assert_eq!(placed, 24, "12 orders of 2 fit in 25");
    assert_eq!(stock(&server, 1).await, 1);
}

/// `GET /orders` is "all orders": every one, not a first page; paging is
/// there when asked for, and its cursor survives the page's last order
/// being deleted.
#[tokio::test]
async fn get_orders_is_every_order_and_pages_when_asked() {
    let server = TestServer::start().await;
    for id in 1..=250u64 {
        let body = json!({"id": id, "status": "Order Initiated"}).to_string();
        assert_eq!(server.put_json("/update_order", &body).await.status, 200);
    }
    let all = server.get("/orders").await;
    assert_eq!(all.status, StatusCode::OK);
    assert_eq!(all.header("content-type"), Some("application/json"));
    assert!(all.header("x-next-cursor").is_none());
    let ids: Vec<u64> = all
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_u64().unwrap())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (1..=250).collect::<Vec<_>>());
    // Filters still apply to the whole list.
    let none = server.get("/orders?stage=completed").await;
    assert_eq!(none.json(), json!([]));

    // Paging when asked: limit, then the cursor.
    let page = server.get("/orders?limit=100").await;
    assert_eq!(page.json().as_array().unwrap().len(), 100);
    let cursor = page.header("x-next-cursor").unwrap().to_string();
    let last = page.json()[99]["id"].as_u64().unwrap();
    assert_eq!(
        server
            .send(Method::DELETE, &format!("/orders/{last}"), &[], "")
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let mut seen: Vec<u64> = page.json().as_array().unwrap()[..99]
        .iter()
        .map(|o| o["id"].as_u64().unwrap())
        .collect();
    let mut next = Some(cursor);
    while let Some(cursor) = next {
        let page = server
            .get(&format!("/orders?limit=100&after={cursor}"))
            .await;
        assert_eq!(page.status, StatusCode::OK, "{:?}", page.body);
        seen.extend(
            page.json()
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["id"].as_u64().unwrap()),
        );
        next = page.header("x-next-cursor").map(str::to_string);
    }
    seen.sort_unstable();
    let expected: Vec<u64> = (1..=250).filter(|id| *id != last).collect();
    assert_eq!(seen, expected, "every order once, across the pages");
    // A plain id of an order that is gone is refused, not guessed.
    let reply = server.get(&format!("/orders?limit=5&after={last}")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

// ---------------------------------------------------------------------------
// Order Status API (003): its "Specific Responses", numeric fields, and
// order numbers brought over from another system.

async fn lifecycle(server: &TestServer, action: &str, body: Value) -> Reply {
    post(server, &format!("/api/store/orders/{action}"), body).await
}

fn seed_error(message: &str, code: &str, field: &str) -> Value {
    json!({"error_message": message, "error_code": code, "errors": {field: message}})
}

#[tokio::test]
async fn order_status_api_answers_its_specific_responses() {
    let server = shop_with(common::config(), 10).await;
    let place = |number: &'static str| {
        let server = &server;
        async move {
            let body = json!({"customer_id": 1, "number": number, "channel": 2,
                              "items": [{"product_id": 1, "quantity": 1}]});
            let reply = post(server, "/orders", body).await;
            assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
            assert_eq!(reply.json()["number"], number, "the number chosen is kept");
        }
    };
    place("A-1001").await;
    place("A-1002").await;
    place("A-1003").await;

    let reply = lifecycle(&server, "confirm", json!({"number": "A-1001"})).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["channel"], 2, "the int the client sent");
    assert_eq!(reply.json()["deliveryStatus"], 1);
    let reply = lifecycle(&server, "confirm", json!({"number": "A-1001"})).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.json(),
        seed_error("Order has been confirmed", "invalid_status", "number")
    );

    lifecycle(&server, "complete", json!({"order": "A-1002"})).await;
    let reply = lifecycle(&server, "confirm", json!({"number": "A-1002"})).await;
    assert_eq!(
        reply.json(),
        seed_error("Order has been completed", "invalid_status", "number")
    );
    lifecycle(&server, "cancel", json!({"order": "A-1003"})).await;
    let reply = lifecycle(&server, "confirm", json!({"number": "A-1003"})).await;
    assert_eq!(
        reply.json(),
        seed_error("Order has been cancelled", "invalid_status", "number")
    );

    let reply = lifecycle(&server, "confirm", json!({"number": "NOPE"})).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["error_message"], "Order not found");

    // paymentMethod as the seed's int, or a word from the table.
    let reply = lifecycle(
        &server,
        "paid",
        json!({"order": "A-1001", "paymentMethod": 3}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.json()["paymentMethod"], 3);
    assert_eq!(reply.json()["paymentStatus"], 2);
    let reply = lifecycle(
        &server,
        "paid",
        json!({"order": "A-1002", "paymentMethod": [1]}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn chosen_order_numbers_are_unique_and_checked() {
    let server = shop_with(common::config(), 10).await;
    let order = |number: Value| {
        let server = &server;
        async move {
            let body = json!({"customer_id": 1, "number": number, "channel": "web",
                              "items": [{"product_id": 1, "quantity": 1}]});
            post(server, "/orders", body).await
        }
    };
    assert_eq!(order(json!("ORD-7")).await.status, StatusCode::CREATED);
    let taken = order(json!("ORD-7")).await;
    assert_eq!(taken.status, StatusCode::CONFLICT, "{:?}", taken.body);
    for bad in [
        json!(""),
        json!("has space"),
        json!("x".repeat(65)),
        json!(7),
    ] {
        let reply = order(bad.clone()).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    // Only the first took stock? None did: /orders takes stock when processed.
    assert_eq!(stock(&server, 1).await, 10);
    let reply = lifecycle(&server, "confirm", json!({"number": "ORD-7"})).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["channel"], 1, "web is 1");
}

// ---------------------------------------------------------------------------
// FastAPI microservice (004): pydantic ignores fields it does not know, but
// a list is never an object.

#[tokio::test]
async fn unknown_fields_are_ignored_and_lists_are_not_objects() {
    let server = shop_with(common::config(), 10).await;
    let reply = post(
        &server,
        "/products",
        json!({"name": "cola", "price": 2, "colour": "red"}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    let reply = post(
        &server,
        "/orders",
        json!({"customer_id": 1, "items": [{"product_id": 1, "quantity": 1}],
               "delivery_address": "Main St 1", "delivery": {"distance_km": 1, "floor": 3}}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    let id = reply.json()["id"].as_u64().unwrap();

    // Lists where an object is expected: refused, and nothing happens.
    for (method, path, body) in [
        (
            Method::PUT,
            format!("/api/orders/{id}"),
            r#"[true,"reject"]"#,
        ),
        (
            Method::POST,
            format!("/orders/{id}/cancel"),
            r#"["changed my mind"]"#,
        ),
        (Method::PUT, format!("/orders/{id}"), r#"["Confirmed"]"#),
        (
            Method::POST,
            "/orders".to_string(),
            r#"[1, [{"product_id": 1, "quantity": 1}]]"#,
        ),
        (
            Method::PUT,
            "/update_order".to_string(),
            r#"[7, null, "Mixing", null]"#,
        ),
        (Method::POST, "/products".to_string(), r#""tea""#),
    ] {
        let reply = server.send(method.clone(), &path, &[JSON], body).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{method} {path} {body}"
        );
    }
    let order = server.get(&format!("/orders/{id}")).await.json();
    assert_eq!(order["status"], "New");
    assert_eq!(order["processed"], Value::Null);
    assert_eq!(
        server.get("/get_status/7").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn scheduled_for_takes_rfc_3339_times_too() {
    let server = shop_with(common::config(), 10).await;
    let soon = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    // An RFC 3339 text with an offset, an hour from now.
    let text = time::OffsetDateTime::from_unix_timestamp(soon as i64)
        .unwrap()
        .to_offset(time::UtcOffset::from_hms(2, 0, 0).unwrap())
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    assert!(text.ends_with("+02:00"), "{text}");
    let reply = post(
        &server,
        "/orders/scheduled",
        json!({"customer_id": 1, "items": [{"product_id": 1, "quantity": 1}], "scheduled_for": text}),
    )
    .await;
    assert_eq!(
        reply.status,
        StatusCode::CREATED,
        "{text}: {:?}",
        reply.body
    );
    assert_eq!(reply.json()["scheduled_for"], soon * 1000, "{text}");
    for bad in ["tomorrow", "2020-01-01T00:00:00Z", "2026-13-01T00:00:00Z"] {
        let reply = post(
            &server,
            "/orders/scheduled",
            json!({"customer_id": 1, "items": [{"product_id": 1, "quantity": 1}], "scheduled_for": bad}),
        )
        .await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
}

fn jwt(secret: &str, claims: Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

fn in_an_hour() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The FastAPI seed's settings names work where the broker's own keys are
/// unset; an algorithm the broker cannot verify is refused at start.
#[test]
fn fastapi_settings_are_aliases_of_the_brokers_keys() {
    use order_broker::Config;
    let path = std::path::Path::new("config/broker.toml");
    let load = |pairs: &[(&str, &str)]| Config::load(Some(path), env(pairs));
    let config = load(&[("JWT_SECRET_KEY", "from-fastapi")]).unwrap();
    assert_eq!(config.auth.jwt_secret.0, "from-fastapi");
    let config = load(&[
        ("JWT_SECRET_KEY", "from-fastapi"),
        ("ORDER_BROKER_AUTH_JWT_SECRET", "own"),
    ])
    .unwrap();
    assert_eq!(config.auth.jwt_secret.0, "own", "the broker's own key wins");
    assert!(load(&[("JWT_ALGORITHM", "HS256")]).is_ok());
    let err = load(&[("JWT_ALGORITHM", "RS256"), ("JWT_SECRET_KEY", "k")]).unwrap_err();
    assert!(err.to_string().contains("HS256"), "{err}");

    let origins = |config: &Config| -> Vec<String> {
        config
            .http
            .cors_allow_origin
            .list()
            .into_iter()
            .map(str::to_string)
            .collect()
    };
    let config = load(&[(
        "CORS_ORIGINS",
        r#"["http://a.example", "http://b.example"]"#,
    )])
    .unwrap();
    assert_eq!(origins(&config), ["http://a.example", "http://b.example"]);
    let config = load(&[("CORS_ORIGINS", "http://a.example, http://b.example")]).unwrap();
    assert_eq!(origins(&config), ["http://a.example", "http://b.example"]);
    assert!(load(&[("CORS_ORIGINS", "[nope")]).is_err());
}

/// The real binary, started as a FastAPI deployment would start it (only
/// `JWT_SECRET_KEY` set), runs with auth on.
#[test]
fn a_deployment_with_only_jwt_secret_key_runs_with_auth_on() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::process::Start::new(dir.path())
        .env("JWT_SECRET_KEY", "fastapi-secret")
        .start()
        .unwrap();
    let (status, _) = broker.request("GET", "/orders", "");
    assert_eq!(status, 401, "no token: auth is on");
    let token = jwt(
        "fastapi-secret",
        json!({"sub": "ada", "role": "admin", "exp": in_an_hour()}),
    );
    let mut stream = std::net::TcpStream::connect(&broker.addr).unwrap();
    use std::io::{Read, Write};
    write!(
        stream,
        "GET /orders HTTP/1.1\r\nhost: t\r\nconnection: close\r\nauthorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// JWT role claims are mapped (`auth.jwt_roles`), and a delivery partner
/// reads the orders assigned to them, in full, and no others.
#[tokio::test]
async fn mapped_roles_and_partners_reading_their_orders() {
    let mut config = common::config();
    config.auth.jwt_secret = order_broker::auth::Secret("s".into());
    config.auth.jwt_roles = [
        ("user".to_string(), order_broker::auth::Role::Customer),
        ("courier".to_string(), order_broker::auth::Role::Delivery),
        ("manager".to_string(), order_broker::auth::Role::Staff),
    ]
    .into();
    let server = TestServer::with_config(config).await;
    let bearer = |sub: &str, role: &str| {
        format!(
            "Bearer {}",
            jwt("s", json!({"sub": sub, "role": role, "exp": in_an_hour()}))
        )
    };
    let staff = bearer("m", "manager");
    let call = |method: Method, path: String, who: String, body: Value| {
        let server = &server;
        async move {
            let body = if body.is_null() {
                String::new()
            } else {
                body.to_string()
            };
            server
                .send(method, &path, &[JSON, ("authorization", &who)], &body)
                .await
        }
    };
    for body in [json!({"id": 1, "name": "tea", "price": 2, "stock": 10})] {
        assert_eq!(
            call(Method::POST, "/products".into(), staff.clone(), body)
                .await
                .status,
            201
        );
    }
    assert_eq!(
        call(
            Method::POST,
            "/customers".into(),
            staff.clone(),
            json!({"id": 1, "name": "Ann", "balance": 50})
        )
        .await
        .status,
        201
    );
    // "user" is a customer: it orders for itself.
    let reply = call(
        Method::POST,
        "/orders".into(),
        bearer("1", "user"),
        json!({"items": [{"product_id": 1, "quantity": 1}], "notes": "ring twice"}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    assert_eq!(reply.json()["customer_id"], 1);
    let mine = reply.json()["id"].as_u64().unwrap();
    let reply = call(
        Method::POST,
        "/orders".into(),
        bearer("1", "user"),
        json!({"items": [{"product_id": 1, "quantity": 1}]}),
    )
    .await;
    let other = reply.json()["id"].as_u64().unwrap();
    // An unknown role claim is an invalid token.
    let reply = call(
        Method::GET,
        format!("/orders/{mine}"),
        bearer("1", "wizard"),
        Value::Null,
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);

    let assign = call(
        Method::PUT,
        format!("/orders/{mine}/assign-delivery"),
        staff.clone(),
        json!({"partner_id": "rider-7"}),
    )
    .await;
    assert_eq!(assign.status, StatusCode::OK, "{:?}", assign.body);
    let rider = bearer("rider-7", "courier");
    let reply = call(
        Method::GET,
        format!("/orders/{mine}"),
        rider.clone(),
        Value::Null,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.json()["notes"], "ring twice", "in full");
    let reply = call(
        Method::GET,
        format!("/orders/{other}"),
        rider.clone(),
        Value::Null,
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "not assigned to them");
    let reply = call(
        Method::GET,
        format!("/orders/{mine}"),
        bearer("rider-8", "courier"),
        Value::Null,
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "another partner");

    // The tracking stream: the assigned partner sees the order's details.
    let mut stream = common::Sse::open(
        server.addr,
        &format!("/orders/{mine}/tracking-stream"),
        &[("authorization", &rider)],
    )
    .await
    .unwrap_or_else(|r| panic!("the stream: {} {:?}", r.status, r.body));
    let moved = call(
        Method::PUT,
        format!("/orders/{mine}/status"),
        rider.clone(),
        json!({"status": "preparing"}),
    )
    .await;
    assert!(
        moved.status.is_success() || moved.status == StatusCode::CONFLICT,
        "{:?}",
        moved.body
    );
    let located = call(
        Method::PUT,
        format!("/orders/{mine}/delivery-location"),
        rider.clone(),
        json!({"lat": 48.2, "lng": 16.4}),
    )
    .await;
    assert_eq!(located.status, StatusCode::OK, "{:?}", located.body);
    let mut seen = Vec::new();
    while let Some(block) = stream.next_block(std::time::Duration::from_secs(5)).await {
        if block.event == "order" {
            seen.push(block.json());
            if block.json()["delivery_location"].is_object() {
                break;
            }
        }
    }
    let last = seen.last().expect("the order's events");
    assert_eq!(last["notes"], "ring twice", "in full: {last}");
    let other_stream = common::Sse::open(
        server.addr,
        &format!("/orders/{other}/tracking-stream"),
        &[("authorization", &rider)],
    )
    .await;
    assert_eq!(other_stream.err().expect("refused").status, 403);
}
