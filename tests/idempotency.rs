//! `Idempotency-Key`: repeats replay the first answer and change nothing.

mod common;

use std::time::Duration;

use common::TestServer;
use hyper::{Method, StatusCode};
use serde_json::json;

const JSON: (&str, &str) = ("content-type", "application/json");

async fn server_with(ttl_secs: u64, max_keys: usize) -> TestServer {
    let mut config = common::config();
    config.http.idempotency_ttl_secs = ttl_secs;
    config.limits.max_idempotency_keys = max_keys;
    let server = TestServer::with_config(config).await;
    let product = json!({"id": 1, "name": "tea", "price": 2, "stock": 5}).to_string();
    server
        .send(Method::POST, "/products", &[JSON], &product)
        .await;
    server
}

fn order_body(quantity: u64) -> String {
    json!({"items": [{"product_id": 1, "quantity": quantity}]}).to_string()
}

#[tokio::test]
async fn a_repeat_replays_the_first_answer() {
    let server = server_with(600, 100).await;
    let key = ("idempotency-key", "order-abc");
    let first = server
        .send(Method::POST, "/orders", &[JSON, key], &order_body(1))
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    let again = server
        .send(Method::POST, "/orders", &[JSON, key], &order_body(1))
        .await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.body, first.body);
    assert_eq!(again.header("location"), first.header("location"));
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(server.broker.len(), 1, "the repeat created nothing");

    let other = server
        .send(Method::POST, "/orders", &[JSON, key], &order_body(2))
        .await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        other.error(),
        "this Idempotency-Key was used for a different request"
    );

    // Scoped by path and by credentials.
    let reply = server
        .send(
            Method::POST,
            "/customers/1/orders",
            &[JSON, key],
            &order_body(1),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::NOT_FOUND,
        "another path runs on its own"
    );
    let reply = server
        .send(
            Method::POST,
            "/orders",
            &[JSON, key, ("authorization", "token other")],
            &order_body(1),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_ne!(reply.body, first.body, "another caller's key is its own");
    assert_eq!(server.broker.len(), 2);

    // Refusals are kept too: the same request gets the same answer.
    let bad = json!({"items": [{"product_id": 9, "quantity": 1}]}).to_string();
    let k2 = ("idempotency-key", "bad-1");
    let r1 = server
        .send(Method::POST, "/orders", &[JSON, k2], &bad)
        .await;
    server
        .send(
            Method::POST,
            "/products",
            &[JSON],
            &json!({"id": 9, "name": "x", "price": 1}).to_string(),
        )
        .await;
    let r2 = server
        .send(Method::POST, "/orders", &[JSON, k2], &bad)
        .await;
    assert_eq!(
        (r1.status, r2.status),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            StatusCode::UNPROCESSABLE_ENTITY
        )
    );

    let long = "k".repeat(300);
    let reply = server
        .send(
            Method::POST,
            "/orders",
            &[JSON, ("idempotency-key", &long)],
            &order_body(1),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn seed_updates_are_idempotent_too() {
    let server = server_with(600, 100).await;
    let key = ("idempotency-key", "cpee-1");
    for _ in 0..3 {
        let reply = server
            .send(
                Method::PUT,
                "/update_order",
                &[JSON, key],
                r#"{"id": 1, "status": "Mixing"}"#,
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    assert_eq!(
        server
            .broker
            .view(order_broker::OrderId(1))
            .unwrap()
            .version
            .0,
        1
    );
}

#[tokio::test]
async fn keys_expire_after_the_ttl() {
    let server = server_with(1, 100).await;
    let key = ("idempotency-key", "short-lived");
    server
        .send(Method::POST, "/orders", &[JSON, key], &order_body(1))
        .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let reply = server
        .send(Method::POST, "/orders", &[JSON, key], &order_body(1))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(reply.header("idempotent-replayed"), None);
    assert_eq!(server.broker.len(), 2);
}

#[tokio::test]
async fn stored_keys_are_bounded() {
    let server = server_with(600, 2).await;
    for key in ["a", "b"] {
        let reply = server
            .send(
                Method::POST,
                "/orders",
                &[JSON, ("idempotency-key", key)],
                &order_body(1),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED);
    }
    let reply = server
        .send(
            Method::POST,
            "/orders",
            &[JSON, ("idempotency-key", "c")],
            &order_body(1),
        )
        .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    let reply = server
        .send(Method::POST, "/orders", &[JSON], &order_body(1))
        .await;
    assert_eq!(
        reply.status,
        StatusCode::CREATED,
        "requests without a key are unaffected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_repeats_run_once() {
    let server = server_with(600, 100).await;
    let mut tasks = Vec::new();
    for _ in 0..24 {
        let mut client = server.client().await;
        tasks.push(tokio::spawn(async move {
            client
                .send(
                    Method::POST,
                    "/orders",
                    &[JSON, ("idempotency-key", "race")],
                    &order_body(1),
                )
                .await
        }));
    }
    let mut created = Vec::new();
    for task in tasks {
        let reply = task.await.unwrap();
        match reply.status {
            StatusCode::CREATED => created.push(reply.json()["id"].clone()),
            StatusCode::CONFLICT => assert!(reply.error().contains("in progress")),
            other => panic!("unexpected {other}"),
        }
    }
    assert!(!created.is_empty());
    assert!(
        created.windows(2).all(|w| w[0] == w[1]),
        "every 201 is the same order"
    );
    assert_eq!(server.broker.len(), 1, "the order was created once");
}

/// One caller filling its share of keys locks out only itself: another
/// caller (another token, or another address) still gets new keys, and the
/// flooder's own keys come back once they expire.
#[tokio::test]
async fn one_caller_flooding_keys_does_not_lock_out_others() {
    use order_broker::auth::{Role, Secret, StaticToken};
    let mut config = common::config();
    config.http.idempotency_ttl_secs = 1;
    config.limits.max_idempotency_keys_per_caller = 5;
    config.auth.tokens = ["flood-t", "other-t"]
        .map(|t| StaticToken {
            token: Secret(t.into()),
            role: Role::Staff,
            subject: Some(t.into()),
        })
        .to_vec();
    let server = TestServer::with_config(config).await;
    let send = |token: &'static str, key: String| {
        let server = &server;
        async move {
            let auth = format!("token {token}");
            server
                .send(
                    Method::PUT,
                    "/update_order",
                    &[JSON, ("authorization", &auth), ("idempotency-key", &key)],
                    &json!({"order_id": 1, "status": format!("s{key}")}).to_string(),
                )
                .await
                .status
        }
    };
    for n in 0..5 {
        assert_eq!(send("flood-t", format!("k{n}")).await, StatusCode::OK);
    }
    for n in 5..50 {
        assert_eq!(
            send("flood-t", format!("k{n}")).await,
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    // A repeat of a key it holds still replays.
    assert_eq!(send("flood-t", "k0".into()).await, StatusCode::OK);
    for n in 0..5 {
        assert_eq!(
            send("other-t", format!("k{n}")).await,
            StatusCode::OK,
            "other {n}"
        );
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        send("flood-t", "fresh".into()).await,
        StatusCode::OK,
        "expired keys free the share"
    );
}

/// `token X` and `Bearer X` are the same caller: a retry that switches the
/// scheme replays the first answer instead of running again.
#[tokio::test]
async fn a_key_is_scoped_to_the_credential_not_its_scheme() {
    use order_broker::auth::{Role, Secret, StaticToken};
    let mut config = common::config();
    config.auth.tokens = vec![StaticToken {
        token: Secret("t1".into()),
        role: Role::Staff,
        subject: Some("sam".into()),
    }];
    let server = TestServer::with_config(config).await;
    let product = json!({"id": 1, "name": "tea", "price": 2, "stock": 5}).to_string();
    server
        .send(
            Method::POST,
            "/products",
            &[JSON, ("authorization", "token t1")],
            &product,
        )
        .await;
    let mut ids = Vec::new();
    for auth in ["token t1", "Bearer t1", "bearer  t1"] {
        let reply = server
            .send(
                Method::POST,
                "/orders",
                &[JSON, ("authorization", auth), ("idempotency-key", "same")],
                &order_body(1),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{auth}");
        ids.push(reply.json()["id"].clone());
    }
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
}
