//! Auth over HTTP: static tokens and JWTs, each role's rights, the exact
//! 401 and 403 bodies, and board views open or protected by config.

mod common;

use common::{Reply, TestServer};
use hyper::{Method, StatusCode};
use order_broker::auth::{Role, Secret, StaticToken};
use serde_json::{Value, json};

const JSON: (&str, &str) = ("content-type", "application/json");

async fn secured(protect_views: bool) -> TestServer {
    let mut config = common::config();
    let token = |token: &str, role, subject: Option<&str>| StaticToken {
        token: Secret(token.into()),
        role,
        subject: subject.map(str::to_string),
    };
    config.auth.tokens = vec![
        token("staff-t", Role::Staff, Some("sam")),
        token("admin-t", Role::Admin, None),
        token("svc-t", Role::Service, Some("cpee")),
        token("cust-1", Role::Customer, Some("1")),
        token("cust-2", Role::Customer, Some("2")),
    ];
    config.auth.jwt_secret = Secret("jwt-secret".into());
    config.auth.protect_views = protect_views;
    let server = TestServer::with_config(config).await;
    let staff = [JSON, ("authorization", "token staff-t")];
    server
        .send(
            Method::POST,
            "/products",
            &staff,
            &json!({"id": 1, "name": "tea", "price": 2, "stock": 50}).to_string(),
        )
        .await;
    for id in [1, 2] {
        let customer = json!({"id": id, "name": format!("c{id}"), "balance": 100}).to_string();
        server
            .send(Method::POST, "/customers", &staff, &customer)
            .await;
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
    let mut headers = vec![JSON];
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

fn assert_401(reply: &Reply) {
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.json(), json!({"detail": "Invalid token"}));
    assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
}

fn assert_403(reply: &Reply) {
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.json(), json!({"detail": "Not enough permissions"}));
}

fn item() -> Value {
    json!({"items": [{"product_id": 1, "quantity": 1}]})
}

#[tokio::test]
async fn writes_need_a_valid_token_with_the_right() {
    let server = secured(false).await;
    let update = json!({"id": 1, "status": "Mixing"});
    assert_401(&call(&server, Method::PUT, "/update_order", None, update.clone()).await);
    assert_401(
        &call(
            &server,
            Method::PUT,
            "/update_order",
            Some("nope"),
            update.clone(),
        )
        .await,
    );
    let reply = server
        .send(
            Method::PUT,
            "/update_order",
            &[JSON, ("authorization", "Basic c3RhZmYtdA==")],
            &update.to_string(),
        )
        .await;
    assert_401(&reply);
    assert_403(
        &call(
            &server,
            Method::PUT,
            "/update_order",
            Some("cust-1"),
            update.clone(),
        )
        .await,
    );
    for token in ["svc-t", "staff-t", "admin-t"] {
        let reply = call(
            &server,
            Method::PUT,
            "/update_order",
            Some(token),
            update.clone(),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{token}");
    }
    let reply = server
        .send(
            Method::PUT,
            "/update_order",
            &[JSON, ("authorization", "Bearer svc-t")],
            &update.to_string(),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "Bearer works as well as token"
    );

    // Catalog: anyone reads, only the privileged write.
    assert_eq!(
        call(&server, Method::GET, "/products", None, Value::Null)
            .await
            .status,
        StatusCode::OK
    );
    let product = json!({"name": "cake", "price": 3});
    assert_401(&call(&server, Method::POST, "/products", None, product.clone()).await);
    assert_403(
        &call(
            &server,
            Method::POST,
            "/products",
            Some("cust-1"),
            product.clone(),
        )
        .await,
    );
    assert_eq!(
        call(&server, Method::POST, "/products", Some("admin-t"), product)
            .await
            .status,
        StatusCode::CREATED
    );
    assert_403(
        &call(
            &server,
            Method::PUT,
            "/customers/1",
            Some("cust-1"),
            json!({"balance": 1e6}),
        )
        .await,
    );
    // A bad token is refused even where none is needed.
    assert_401(&call(&server, Method::GET, "/products", Some("nope"), Value::Null).await);
    assert_eq!(
        call(&server, Method::GET, "/healthz", None, Value::Null)
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn listing_is_for_staff_and_admin() {
    let server = secured(false).await;
    for (token, status) in [
        ("staff-t", 200),
        ("admin-t", 200),
        ("svc-t", 403),
        ("cust-1", 403),
    ] {
        for path in ["/orders", "/customers"] {
            let reply = call(&server, Method::GET, path, Some(token), Value::Null).await;
            assert_eq!(reply.status.as_u16(), status, "{token} {path}");
        }
    }
    assert_401(&call(&server, Method::GET, "/orders", None, Value::Null).await);
}

#[tokio::test]
async fn customers_see_and_act_on_their_own_orders_only() {
    let server = secured(false).await;
    let mine = call(&server, Method::POST, "/orders", Some("cust-1"), item()).await;
    assert_eq!(mine.status, StatusCode::CREATED);
    assert_eq!(
        mine.json()["customer_id"],
        1,
        "a customer's order is theirs"
    );
    let mine_id = mine.json()["id"].as_u64().unwrap();
    let theirs = call(&server, Method::POST, "/orders", Some("cust-2"), item())
        .await
        .json();
    let theirs_id = theirs["id"].as_u64().unwrap();
    let mut for_other = item();
    for_other["customer_id"] = json!(2);
    assert_403(&call(&server, Method::POST, "/orders", Some("cust-1"), for_other).await);
    assert_403(
        &call(
            &server,
            Method::POST,
            "/customers/2/orders",
            Some("cust-1"),
            item(),
        )
        .await,
    );
    assert_eq!(
        call(
            &server,
            Method::POST,
            "/customers/1/orders",
            Some("cust-1"),
            item()
        )
        .await
        .status,
        StatusCode::CREATED
    );

    let my = call(
        &server,
        Method::GET,
        "/orders/my-orders",
        Some("cust-1"),
        Value::Null,
    )
    .await;
    assert_eq!(my.status, StatusCode::OK);
    let ids: Vec<u64> = my
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&mine_id) && !ids.contains(&theirs_id));
    assert_403(
        &call(
            &server,
            Method::GET,
            "/orders/my-orders",
            Some("staff-t"),
            Value::Null,
        )
        .await,
    );

    assert_eq!(
        call(
            &server,
            Method::GET,
            &format!("/orders/{mine_id}"),
            Some("cust-1"),
            Value::Null
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_403(
        &call(
            &server,
            Method::GET,
            &format!("/orders/{theirs_id}"),
            Some("cust-1"),
            Value::Null,
        )
        .await,
    );
    assert_eq!(
        call(
            &server,
            Method::GET,
            &format!("/orders/{theirs_id}"),
            Some("staff-t"),
            Value::Null
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_eq!(
        call(
            &server,
            Method::GET,
            "/customers/1",
            Some("cust-1"),
            Value::Null
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_403(
        &call(
            &server,
            Method::GET,
            "/customers/2",
            Some("cust-1"),
            Value::Null,
        )
        .await,
    );
    assert_403(
        &call(
            &server,
            Method::GET,
            "/customers/2/orders",
            Some("cust-1"),
            Value::Null,
        )
        .await,
    );

    // Customers change their own items and cancel; staff confirm, process, set statuses.
    let items = json!({"items": [{"product_id": 1, "quantity": 2}]});
    assert_eq!(
        call(
            &server,
            Method::PUT,
            &format!("/orders/{mine_id}/items"),
            Some("cust-1"),
            items.clone()
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_403(
        &call(
            &server,
            Method::PUT,
            &format!("/orders/{theirs_id}/items"),
            Some("cust-1"),
            items,
        )
        .await,
    );
    assert_403(
        &call(
            &server,
            Method::PUT,
            &format!("/orders/{mine_id}"),
            Some("cust-1"),
            json!({"status": "Complete"}),
        )
        .await,
    );
    assert_403(
        &call(
            &server,
            Method::PUT,
            &format!("/api/orders/{mine_id}"),
            Some("cust-1"),
            json!({"process": true}),
        )
        .await,
    );
    let number = |o: &Value| o["number"].as_str().unwrap().to_string();
    let my_number = number(
        &call(
            &server,
            Method::GET,
            &format!("/orders/{mine_id}"),
            Some("cust-1"),
            Value::Null,
        )
        .await
        .json(),
    );
    assert_403(
        &call(
            &server,
            Method::POST,
            "/api/store/orders/confirm",
            Some("cust-1"),
            json!({"number": my_number}),
        )
        .await,
    );
    assert_403(
        &call(
            &server,
            Method::POST,
            "/api/store/orders/cancel",
            Some("cust-1"),
            json!({"order": number(&theirs)}),
        )
        .await,
    );
    let reply = call(
        &server,
        Method::POST,
        "/api/store/orders/cancel",
        Some("cust-1"),
        json!({"order": my_number}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["statusText"], "Cancelled");
    assert_eq!(
        call(
            &server,
            Method::POST,
            "/api/store/orders/confirm",
            Some("svc-t"),
            json!({"number": number(&theirs)})
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_403(
        &call(
            &server,
            Method::DELETE,
            &format!("/orders/{theirs_id}"),
            Some("cust-1"),
            Value::Null,
        )
        .await,
    );
    assert_eq!(
        call(
            &server,
            Method::DELETE,
            &format!("/orders/{mine_id}"),
            Some("cust-1"),
            Value::Null
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn board_views_are_open_unless_protected() {
    let open = secured(false).await;
    for path in [
        "/get_all",
        "/get_current_order",
        "/get_new_orders",
        "/get_completed_orders",
    ] {
        assert_eq!(open.get(path).await.status, StatusCode::OK, "{path}");
    }
    let protected = secured(true).await;
    for path in [
        "/get_all",
        "/get_current_order",
        "/get_new_orders",
        "/get_completed_orders",
        "/get_status/1",
    ] {
        assert_401(&protected.get(path).await);
        let reply = call(&protected, Method::GET, path, Some("cust-2"), Value::Null).await;
        assert_ne!(reply.status, StatusCode::UNAUTHORIZED, "{path}");
    }
    assert_eq!(protected.get("/healthz").await.status, StatusCode::OK);
}

#[tokio::test]
async fn jwts_carry_the_role() {
    let server = secured(false).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let jwt = |claims: Value| {
        let key = jsonwebtoken::EncodingKey::from_secret(b"jwt-secret");
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
    };
    let bearer = |t: &str| format!("Bearer {t}");
    let staff = jwt(json!({"sub": "kim", "role": "staff", "exp": now + 60}));
    let reply = server
        .send(
            Method::GET,
            "/orders",
            &[("authorization", &bearer(&staff))],
            "",
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let customer = jwt(json!({"sub": "2", "role": "customer", "exp": now + 60}));
    let reply = server
        .send(
            Method::POST,
            "/orders",
            &[JSON, ("authorization", &bearer(&customer))],
            &item().to_string(),
        )
        .await;
    assert_eq!(reply.json()["customer_id"], 2);
    let expired = jwt(json!({"sub": "kim", "role": "staff", "exp": now - 5}));
    assert_401(
        &server
            .send(
                Method::GET,
                "/orders",
                &[("authorization", &bearer(&expired))],
                "",
            )
            .await,
    );
}
