//! What each caller sees of an order, on every read path: the board's
//! fields are public; notes, items, customer, money, location and the rest
//! only for whoever may read the order (staff, admin, service, its
//! customer). Tried as an anonymous caller, another customer and a rider.

mod common;

use common::{Sse, TestServer};
use hyper::{Method, StatusCode};
use order_broker::auth::{Role, Secret, StaticToken};
use serde_json::{Value, json};

const SECRET: &str = "door code 4711";

async fn shop(protect_views: bool) -> (TestServer, u64) {
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
    config.auth.protect_views = protect_views;
    let server = TestServer::with_config(config).await;
    let staff = [
        ("content-type", "application/json"),
        ("authorization", "token staff-t"),
    ];
    let send = |path: &'static str, body: Value| {
        let server = &server;
        async move {
            let reply = server
                .send(Method::POST, path, &staff, &body.to_string())
                .await;
            assert!(reply.status.is_success(), "{path}: {:?}", reply.body);
            reply.json()
        }
    };
    send(
        "/products",
        json!({"id": 1, "name": "tea", "price": 2, "stock": 9}),
    )
    .await;
    for id in [1, 2] {
        send(
            "/customers",
            json!({"id": id, "name": format!("c{id}"), "balance": 10}),
        )
        .await;
    }
    let order = send(
        "/orders",
        json!({"customer_id": 1, "items": [{"product_id": 1, "quantity": 1}], "notes": SECRET}),
    )
    .await;
    (server, order["id"].as_u64().unwrap())
}

fn private(text: &str) -> bool {
    text.contains(SECRET) || text.contains("\"items\"") || text.contains("\"customer_id\"")
}

async fn body_of(server: &TestServer, path: &str, auth: Option<&str>) -> (StatusCode, String) {
    let mut headers = vec![];
    if let Some(auth) = auth {
        headers.push(("authorization", auth));
    }
    let reply = server.send(Method::GET, path, &headers, "").await;
    (
        reply.status,
        String::from_utf8_lossy(&reply.body).into_owned(),
    )
}

/// Every order event a stream replays from the start of this epoch.
async fn replayed(server: &TestServer, path: &str, auth: Option<&str>) -> Vec<String> {
    let epoch = server.get("/views").await;
    let epoch = if epoch.status == StatusCode::OK {
        epoch.json()["epoch"].as_str().unwrap().to_string()
    } else {
        server.broker.epoch().to_string()
    };
    let resume = format!("{epoch}-0");
    let mut headers = vec![("last-event-id", resume.as_str())];
    if let Some(auth) = auth {
        headers.push(("authorization", auth));
    }
    let mut sse = Sse::open(server.addr, path, &headers)
        .await
        .unwrap_or_else(|reply| panic!("{path}: {:?}", reply.status));
    let mut events = Vec::new();
    while let Some(block) = sse.next_block(std::time::Duration::from_millis(300)).await {
        if block.event == "order" {
            events.push(block.data);
        }
    }
    events
}

#[tokio::test]
async fn anonymous_board_readers_see_board_fields_only() {
    let (server, id) = shop(false).await;
    let (status, views) = body_of(&server, "/views", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!private(&views), "/views leaks: {views}");
    let board: Value = serde_json::from_str(&views).unwrap();
    let order = &board["new"][0];
    assert_eq!(order["id"], id);
    assert_eq!(order["status"], "New");
    assert!(order["stage_since"].is_number());

    for path in ["/events".to_string(), format!("/events?order_id={id}")] {
        let events = replayed(&server, &path, None).await;
        assert!(!events.is_empty(), "{path} replays the order");
        for event in &events {
            assert!(!private(event), "{path} leaks: {event}");
        }
    }
    // The tracking stream and the order itself still need the right.
    let (status, _) = body_of(&server, &format!("/orders/{id}/tracking-stream"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Staff see it all on the same paths.
    let (_, views) = body_of(&server, "/views", Some("token staff-t")).await;
    assert!(views.contains(SECRET), "{views}");
    let events = replayed(&server, "/events", Some("token staff-t")).await;
    assert!(events.iter().any(|e| e.contains(SECRET)));
}

#[tokio::test]
async fn other_customers_and_riders_see_board_fields_only() {
    let (server, id) = shop(true).await;
    let (status, _) = body_of(&server, "/views", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "protected views");
    for who in ["token cust-2", "token rider-t"] {
        let (status, views) = body_of(&server, "/views", Some(who)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!private(&views), "{who} reads {views}");
        for event in replayed(&server, &format!("/events?order_id={id}"), Some(who)).await {
            assert!(!private(&event), "{who} streams {event}");
        }
        let (status, _) = body_of(&server, &format!("/orders/{id}"), Some(who)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{who}");
    }
    // The order's customer sees their own order whole.
    let (_, views) = body_of(&server, "/views", Some("token cust-1")).await;
    assert!(views.contains(SECRET), "{views}");
    let events = replayed(&server, "/events", Some("token cust-1")).await;
    assert!(events.iter().any(|e| e.contains(SECRET)));
}
