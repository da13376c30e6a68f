//! A hostile review of the seed-client promises (issue 13): each test
//! failed on the code the review was run against and names the defect it
//! found (the comment above it), fixed since.

mod common;

use common::TestServer;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

const JSON: (&str, &str) = ("content-type", "application/json");

use common::send_json as send;

/// Tea (2.50, 100 in stock) and Ann (customer 1).
async fn shop(config: order_broker::Config) -> TestServer {
    let server = TestServer::with_config(config).await;
    let r = send(
        &server,
        Method::POST,
        "/products",
        json!({"id": 1, "name": "tea", "price": "2.50", "stock": 100}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = send(
        &server,
        Method::POST,
        "/customers",
        json!({"id": 1, "name": "Ann", "balance": "100.00"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    server
}

fn journal_config(dir: &std::path::Path) -> order_broker::Config {
    let mut config = common::config();
    config.persistence.mode = order_broker::config::PersistenceMode::Journal;
    config.persistence.dir = dir.to_path_buf();
    config
}

/// DEFECT (promise 4: "a JSON list or any non-object where an object is
/// expected is refused with 400 and changes nothing"). Only the top level
/// of a body is checked (`body::expect_object`); a nested object field is
/// still read by serde from a JSON list, the very thing the README says the
/// broker refuses (`[true, "reject"]` is not `{"process": true, ...}`).
/// `POST /orders` with `"delivery": [3.2, null]` is taken as
/// `{"distance_km": 3.2, "zone": null}`: 201, an order is made and a
/// delivery fee rule applied, instead of 400 and nothing changed.
#[tokio::test]
async fn a_list_where_the_delivery_object_is_expected_is_accepted() {
    let server = shop(common::config()).await;
    let reply = send(
        &server,
        Method::POST,
        "/orders",
        json!({"customer_id": 1, "items": [{"product_id": 1, "quantity": 1}],
               "delivery": [3.2, null]}),
    )
    .await;
    let orders = send(&server, Method::GET, "/orders", Value::Null)
        .await
        .json();
    assert_eq!(
        reply.status,
        StatusCode::BAD_REQUEST,
        "a list read as the delivery object: {}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(orders, json!([]), "nothing may change");
}

/// DEFECT (promise 5: "a deployment with only JWT_SECRET_KEY runs with
/// auth on"). The alias is taken only when the variable is non-empty in
/// effect: `JWT_SECRET_KEY=` (set but empty, as a FastAPI `.env` template
/// leaves it) gives `auth.jwt_secret = ""`, which means "no JWTs", so the
/// broker starts with auth OFF and serves every order, customer and write
/// to anyone. The FastAPI seed with that setting still demands a signed
/// token. It fails open instead of refusing to start (as an unverifiable
/// JWT_ALGORITHM does).
/// Reproduce: `JWT_SECRET_KEY= target/debug/order-broker`, then
/// `curl localhost:8129/orders` → 200.
#[test]
fn an_empty_jwt_secret_key_runs_the_broker_open() {
    let dir = tempfile::tempdir().unwrap();
    let started = common::process::Start::new(dir.path())
        .env("JWT_SECRET_KEY", "")
        .start();
    // Refusing to start would be right too; running open is not.
    if let Ok(broker) = started {
        let (status, body) = broker.request("GET", "/orders", "");
        assert_eq!(
            status, 401,
            "JWT_SECRET_KEY is set (empty) and the broker answers anyone: {body}"
        );
        let (status, _) = broker.request(
            "POST",
            "/products",
            r#"{"name": "free", "price": "1.00", "stock": 1}"#,
        );
        assert_eq!(status, 401, "and lets anyone write");
    }
}

/// DEFECT (promise 2, "huge numbers"): one seed write
/// `PUT /update_order {"id": 18446744073709551615, "status": "Mixing"}`
/// pushes the id counter to u64::MAX (`update_status_if` keeps assigned ids
/// above client-chosen ones), after which every placement —
/// `POST /orders/{customer_id}`, `POST /orders`, templates, intake — answers
/// 409 "order ids are exhausted", for good: deleting that order does not
/// help and the counter is journaled, so a restart keeps the broker unable
/// to take a single shop order. With the README's recommended CPEE setup
/// (`seed_writes` open to anonymous engine calls) that is one anonymous
/// request. Seed ids need a bound (or assigned ids must not depend on them).
#[tokio::test]
async fn one_seed_order_with_the_highest_id_stops_every_placement_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let config = journal_config(dir.path());
    let server = shop(config.clone()).await;
    let r = server
        .send(
            Method::PUT,
            "/update_order",
            &[JSON],
            r#"{"id": 18446744073709551615, "status": "Mixing"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.body);
    // The highest id a client may choose is taken, and ids are still left.
    let r = server
        .send(
            Method::PUT,
            "/update_order",
            &[JSON],
            r#"{"id": 9007199254740991, "status": "Mixing"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    server.stop().await;
    let server = TestServer::with_config(config).await;
    let reply = send(
        &server,
        Method::POST,
        "/orders/1",
        json!({"items": [{"product_id": 1, "quantity": 1}]}),
    )
    .await;
    assert_eq!(
        reply.status,
        StatusCode::CREATED,
        "no shop order can be placed any more: {}",
        String::from_utf8_lossy(&reply.body)
    );
}

/// DEFECT (promise 3: the Order Status API "answers its seed's error
/// bodies"; README: "Refusals are 400 {error_message, error_code, errors}").
/// A scheduled order shows as `"status": 1, "statusText": "New"` on this
/// API, but `confirm` (and `complete`) on it are refused by the table of
/// moves (scheduled → in_progress), and that refusal comes out as
/// `409 {"error": "order is scheduled; it cannot become in_progress"}`: no
/// `error_message`, no `error_code`, not 400. A seed client that reads
/// `error_message` / `error_code` finds nothing. (Reproduce: `POST
/// /orders/scheduled` with `"number": "S-1"`, then `POST
/// /api/store/orders/confirm {"number": "S-1"}`.)
#[tokio::test]
async fn confirming_a_scheduled_order_answers_outside_the_seeds_error_shape() {
    let server = shop(common::config()).await;
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 3_600_000;
    let r = send(
        &server,
        Method::POST,
        "/orders/scheduled",
        json!({"customer_id": 1, "number": "S-1", "scheduled_for": at,
               "items": [{"product_id": 1, "quantity": 1}]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    for action in ["confirm", "complete"] {
        let r = send(
            &server,
            Method::POST,
            &format!("/api/store/orders/{action}"),
            json!({"number": "S-1", "order": "S-1"}),
        )
        .await;
        let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{action}: {body}");
        assert!(
            body["error_message"].is_string() && body["error_code"].is_string(),
            "{action}: not the seed's error body: {body}"
        );
    }
}

/// DEFECT (promise 4: "a JSON list or any non-object where an object is
/// expected is refused with 400 and changes nothing (any route)"). A body
/// without a `Content-Type` is sniffed: JSON only when it starts with `{`,
/// anything else is taken as a url-encoded form (`body::kind`). So a JSON
/// list (or `1`, `null`) sent to `POST /orders/intake` without a content
/// type is read as a form with one odd field name, and intake — which takes
/// "any details" — answers 200 and queues a new order for dispatch, with
/// the list's text as a detail key. With `Content-Type: application/json`
/// the same body is 400; without, it changes state. (CPEE and curl clients
/// often send no content type.)
#[tokio::test]
async fn a_json_list_without_a_content_type_makes_an_intake_order() {
    let server = shop(common::config()).await;
    let mut made = Vec::new();
    for body in [r#"[{"status": "Mixing"}]"#, r#"["Mixing"]"#, "null"] {
        let r = server.send(Method::POST, "/orders/intake", &[], body).await;
        if r.status != StatusCode::BAD_REQUEST {
            made.push(format!(
                "{body} -> {} {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            ));
        }
    }
    let orders = send(&server, Method::GET, "/orders", Value::Null)
        .await
        .json();
    assert!(made.is_empty(), "non-object bodies accepted: {made:#?}");
    assert_eq!(orders, json!([]), "nothing may change");
}
