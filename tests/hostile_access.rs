//! Access control tried as an attacker would: a body that names two orders,
//! another customer's order number, a delivery partner ordering for a
//! customer, customer tokens whose subject is missing or sloppy, and a JWT
//! that is not valid yet.

mod common;

use common::{Reply, TestServer};
use hyper::{Method, StatusCode};
use order_broker::auth::{Role, Secret, StaticToken};
use serde_json::{Value, json};

const JSON: (&str, &str) = ("content-type", "application/json");

async fn secured() -> TestServer {
    let mut config = common::config();
    let token = |token: &str, role, subject: &str| StaticToken {
        token: Secret(token.into()),
        role,
        subject: Some(subject.into()),
    };
    config.auth.tokens = vec![
        token("staff-t", Role::Staff, "sam"),
        token("cust-1", Role::Customer, "1"),
        token("cust-2", Role::Customer, "2"),
        token("rider-t", Role::Delivery, "rider-7"),
    ];
    config.auth.jwt_secret = Secret("jwt-secret".into());
    let server = TestServer::with_config(config).await;
    let product = json!({"id": 1, "name": "tea", "price": 2, "stock": 50});
    call(&server, Method::POST, "/products", "token staff-t", product).await;
    for id in [1, 2] {
        let customer = json!({"id": id, "name": format!("c{id}"), "phone": format!("555-{id}"), "balance": 100});
        call(
            &server,
            Method::POST,
            "/customers",
            "token staff-t",
            customer,
        )
        .await;
    }
    server
}

async fn call(server: &TestServer, method: Method, path: &str, auth: &str, body: Value) -> Reply {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    server
        .send(method, path, &[JSON, ("authorization", auth)], &body)
        .await
}

/// A new order of customer `c` (by their own token): its number.
async fn order_of(server: &TestServer, c: u64) -> String {
    let body =
        json!({"items": [{"product_id": 1, "quantity": 1}], "notes": format!("secret of {c}")});
    let reply = call(
        server,
        Method::POST,
        "/orders",
        &format!("token cust-{c}"),
        body,
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    reply.json()["number"].as_str().unwrap().to_string()
}

async fn status_of(server: &TestServer, number: &str) -> Value {
    let reply = call(server, Method::GET, "/orders", "token staff-t", Value::Null).await;
    reply
        .json()
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["number"] == number)
        .map(|o| o["status"].clone())
        .unwrap()
}

#[tokio::test]
async fn a_customer_cannot_cancel_another_customers_order() {
    let server = secured().await;
    let mine = order_of(&server, 1).await;
    let victim = order_of(&server, 2).await;
    let cancel = "/api/store/orders/cancel";
    // The access check once read `order` and the handler `number`.
    for body in [
        json!({"order": mine, "number": victim}),
        json!({"number": victim, "order": mine}),
    ] {
        let reply = call(&server, Method::POST, cancel, "token cust-1", body.clone()).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{body}: {:?}",
            reply.body
        );
        assert!(
            !String::from_utf8_lossy(&reply.body).contains("555-2"),
            "leaked the victim: {}",
            String::from_utf8_lossy(&reply.body)
        );
        assert!(
            !String::from_utf8_lossy(&reply.body).contains("secret of 2"),
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
    }
    for body in [json!({"number": victim}), json!({"order": victim})] {
        let reply = call(&server, Method::POST, cancel, "token cust-1", body.clone()).await;
        assert_eq!(
            reply.status,
            StatusCode::FORBIDDEN,
            "{body}: {:?}",
            reply.body
        );
        let text = String::from_utf8_lossy(&reply.body);
        assert!(!text.contains("555-2"), "{text}");
    }
    assert_eq!(status_of(&server, &victim).await, "New");
    // The owner still can, by either key.
    let reply = call(
        &server,
        Method::POST,
        cancel,
        "token cust-2",
        json!({"number": victim}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let reply = call(
        &server,
        Method::POST,
        cancel,
        "token cust-1",
        json!({"order": mine, "number": mine}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
}

#[tokio::test]
async fn only_staff_order_for_others() {
    let server = secured().await;
    let item = json!({"customer_id": 1, "items": [{"product_id": 1, "quantity": 1}]});
    let mut scheduled = item.clone();
    let in_an_hour = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 3_600_000;
    scheduled["scheduled_for"] = json!(in_an_hour);
    for (path, body) in [("/orders", &item), ("/orders/scheduled", &scheduled)] {
        let reply = call(&server, Method::POST, path, "token rider-t", body.clone()).await;
        assert_eq!(
            reply.status,
            StatusCode::FORBIDDEN,
            "a rider ordering on {path}: {:?}",
            reply.body
        );
        let reply = call(&server, Method::POST, path, "token cust-2", body.clone()).await;
        assert_eq!(
            reply.status,
            StatusCode::FORBIDDEN,
            "customer 2 for 1 on {path}"
        );
        let reply = call(&server, Method::POST, path, "token staff-t", body.clone()).await;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "{path}: {:?}",
            reply.body
        );
    }
    let all = call(
        &server,
        Method::GET,
        "/orders",
        "token staff-t",
        Value::Null,
    )
    .await;
    assert_eq!(
        all.json().as_array().unwrap().len(),
        2,
        "only staff's two orders exist"
    );
}

#[tokio::test]
async fn customer_tokens_need_a_strict_customer_subject_and_jwts_their_time() {
    let server = secured().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let jwt = |claims: Value| {
        let key = jsonwebtoken::EncodingKey::from_secret(b"jwt-secret");
        let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap();
        format!("Bearer {token}")
    };
    let order = json!({"customer_id": 2, "items": [{"product_id": 1, "quantity": 1}]});
    for claims in [
        json!({"role": "customer", "exp": now + 60}),
        json!({"sub": "+2", "role": "customer", "exp": now + 60}),
        json!({"sub": "02", "role": "customer", "exp": now + 60}),
        json!({"sub": "two", "role": "customer", "exp": now + 60}),
        json!({"sub": "2", "role": "customer", "exp": now + 600, "nbf": now + 300}),
        json!({"sub": "kim", "role": "staff", "exp": now + 600, "nbf": now + 300}),
    ] {
        let reply = call(
            &server,
            Method::POST,
            "/orders",
            &jwt(claims.clone()),
            order.clone(),
        )
        .await;
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{claims}: {:?}",
            reply.body
        );
    }
    let all = call(
        &server,
        Method::GET,
        "/orders",
        "token staff-t",
        Value::Null,
    )
    .await;
    assert_eq!(all.json(), json!([]), "no order was created");
    let good = jwt(json!({"sub": "2", "role": "customer", "exp": now + 60, "nbf": now - 5}));
    let reply = call(&server, Method::POST, "/orders", &good, order).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    assert_eq!(reply.json()["customer_id"], 2);
}

/// A robot bar that protects its shop but lets CPEE (which sends no token)
/// write, as `auth.open` says, and only from the networks it names.
async fn bar(open: &[&str], networks: &[&str]) -> TestServer {
    let mut config = common::config();
    config.auth.tokens = vec![StaticToken {
        token: Secret("staff-t".into()),
        role: Role::Staff,
        subject: Some("sam".into()),
    }];
    config.auth.open = open
        .iter()
        .map(|g| serde_json::from_value(json!(g)).unwrap())
        .collect();
    config.auth.cpee_networks = networks.iter().map(|n| n.to_string()).collect();
    config.validate().unwrap();
    TestServer::with_config(config).await
}

async fn anonymous(server: &TestServer, method: Method, path: &str, body: &str) -> StatusCode {
    let ct = if body.starts_with('{') {
        "application/json"
    } else {
        "application/x-www-form-urlencoded"
    };
    server
        .send(method, path, &[("content-type", ct)], body)
        .await
        .status
}

#[tokio::test]
async fn cpee_writes_unauthenticated_next_to_a_protected_shop() {
    let update = "order_id=1&status=Mixing&orderbot_id=bot-1";
    let order = r#"{"items": [{"product_id": 1, "quantity": 1}]}"#;
    // Auth on with the default policy: CPEE's update is refused, as before.
    let closed = bar(&["views", "ops"], &[]).await;
    assert_eq!(
        anonymous(&closed, Method::PUT, "/update_order", update).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        closed.get("/get_all").await.status,
        StatusCode::OK,
        "views stay open"
    );

    let open = bar(&["views", "ops", "seed_writes", "cpee"], &[]).await;
    assert_eq!(
        anonymous(&open, Method::PUT, "/update_order", update).await,
        StatusCode::OK
    );
    assert_eq!(
        anonymous(
            &open,
            Method::POST,
            "/orders/intake",
            "status=Order+Initiated&drink=Mojito"
        )
        .await,
        StatusCode::OK
    );
    for (method, path) in [
        (Method::POST, "/orders"),
        (Method::POST, "/products"),
        (Method::POST, "/api/store/orders/cancel"),
        (Method::PUT, "/orders/bulk-status-update"),
    ] {
        assert_eq!(
            anonymous(&open, method, path, order).await,
            StatusCode::UNAUTHORIZED,
            "{path} stays protected"
        );
    }
    // A bad token on an open group is still a bad token.
    let reply = open
        .send(
            Method::PUT,
            "/update_order",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("authorization", "token wrong"),
            ],
            update,
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);

    // The OpenAPI document says which need no token.
    let doc = open.get("/openapi.json").await.json();
    let put = &doc["paths"]["/update_order"]["put"];
    assert_eq!(put["x-who"], "anyone");
    assert_eq!(put["x-group"], "seed_writes");
    assert_eq!(put["security"], json!([{}, {"bearer": []}, {"token": []}]));
    let post = &doc["paths"]["/orders"]["post"];
    assert_eq!(post["security"], json!([{"bearer": []}, {"token": []}]));
    assert_eq!(post["x-group"], "shop");
    let closed_doc = closed.get("/openapi.json").await.json();
    assert_ne!(
        closed_doc["paths"]["/update_order"]["put"]["x-who"],
        "anyone"
    );
}

#[tokio::test]
async fn anonymous_engine_writes_only_from_the_named_networks() {
    let update = "order_id=1&status=Mixing";
    let elsewhere = bar(&["seed_writes", "cpee"], &["10.0.0.0/8", "::1/128"]).await;
    assert_eq!(
        anonymous(&elsewhere, Method::PUT, "/update_order", update).await,
        StatusCode::UNAUTHORIZED,
        "127.0.0.1 is not in 10.0.0.0/8"
    );
    let reply = elsewhere
        .send(
            Method::PUT,
            "/update_order",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("authorization", "token staff-t"),
            ],
            update,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "a token works from anywhere");
    let here = bar(&["seed_writes", "cpee"], &["127.0.0.0/8"]).await;
    assert_eq!(
        anonymous(&here, Method::PUT, "/update_order", update).await,
        StatusCode::OK
    );

    let mut config = common::config();
    config.auth.cpee_networks = vec!["10.0.0.0/33".into()];
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("auth.cpee_networks[0]"), "{err}");
}

/// A customer may cancel only before preparation, whichever API they use:
/// the Order Status API's cancel once let them cancel an order out for
/// delivery, with a full give-back.
#[tokio::test]
async fn a_customer_cannot_cancel_after_preparation_through_the_lifecycle_api() {
    let server = secured().await;
    let number = order_of(&server, 1).await;
    let all = call(
        &server,
        Method::GET,
        "/orders",
        "token staff-t",
        Value::Null,
    )
    .await;
    let id = all.json()[0]["id"].as_u64().unwrap();
    let process = call(
        &server,
        Method::PUT,
        &format!("/api/orders/{id}"),
        "token staff-t",
        json!({"process": true}),
    )
    .await;
    assert_eq!(process.status, StatusCode::OK, "{:?}", process.body);
    for step in ["confirmed", "preparing", "out_for_delivery"] {
        let reply = call(
            &server,
            Method::PUT,
            &format!("/orders/{id}/status"),
            "token staff-t",
            json!({"status": step}),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{step}");
    }
    let balance = || async {
        call(
            &server,
            Method::GET,
            "/customers/1",
            "token staff-t",
            Value::Null,
        )
        .await
        .json()["balance"]
            .clone()
    };
    let before = balance().await;
    let reply = call(
        &server,
        Method::POST,
        "/api/store/orders/cancel",
        "token cust-1",
        json!({"order": number}),
    )
    .await;
    // Refused in the Order Status API's shape.
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{:?}", reply.body);
    assert_eq!(reply.json()["error_code"], "invalid_status");
    assert_eq!(balance().await, before, "nothing given back");
    let reply = call(
        &server,
        Method::POST,
        "/api/store/orders/cancel",
        "token staff-t",
        json!({"order": number}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "staff still can");
}

#[tokio::test]
async fn a_customer_cannot_delete_an_order_once_it_is_being_prepared() {
    let server = secured().await;
    order_of(&server, 1).await;
    order_of(&server, 1).await;
    let all = call(
        &server,
        Method::GET,
        "/orders",
        "token staff-t",
        Value::Null,
    )
    .await;
    let ids: Vec<u64> = all
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_u64().unwrap())
        .collect();
    let (early, late) = (ids[0], ids[1]);
    // Not processed (nothing charged), but the bar started on it.
    for step in ["confirmed", "preparing"] {
        let reply = call(
            &server,
            Method::PUT,
            &format!("/orders/{late}/status"),
            "token staff-t",
            json!({"status": step}),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{step}: {:?}", reply.body);
    }
    let delete = |id: u64, token: &'static str| {
        let server = &server;
        async move {
            call(
                server,
                Method::DELETE,
                &format!("/orders/{id}"),
                token,
                Value::Null,
            )
            .await
            .status
        }
    };
    assert_eq!(
        delete(late, "token cust-1").await,
        StatusCode::CONFLICT,
        "as late as for a cancel"
    );
    assert_eq!(delete(early, "token cust-1").await, StatusCode::NO_CONTENT);
    assert_eq!(delete(late, "token staff-t").await, StatusCode::NO_CONTENT);
}
