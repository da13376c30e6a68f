//! The seed order_store API over real HTTP: every endpoint, JSON, form and
//! multipart bodies, and every error case.

mod common;

use common::TestServer;
use hyper::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn json_update_creates_then_updates_an_order() {
    let server = TestServer::start().await;
    let reply = server
        .put_json(
            "/update_order",
            r#"{"id": 5, "orderbot_id": "bot-1", "status": "Order Initiated"}"#,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), json!({"message": "Order updated"}));
    assert_eq!(reply.header("content-type"), Some("application/json"));

    let order = server.get("/get_status/5").await.json();
    assert_eq!(order["id"], 5);
    assert_eq!(order["order_id"], 5);
    assert_eq!(order["status"], "Order Initiated");
    assert_eq!(order["orderbot_id"], "bot-1");
    assert_eq!(order["stage"], "new");
    assert_eq!(order["version"], 1);
    assert_eq!(order["created"], order["updated"]);

    let reply = server
        .put_json(
            "/update_order",
            r#"{"id": "5", "orderbot_id": 2, "status": "Mixing"}"#,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let order = server.get("/get_status/5").await.json();
    assert_eq!(order["status"], "Mixing");
    assert_eq!(
        order["orderbot_id"], "2",
        "a numeric orderbot_id is stored as text"
    );
    assert_eq!(order["stage"], "in_progress");
    assert_eq!(order["version"], 2);
}

#[tokio::test]
async fn form_update_by_post_put_and_the_alias() {
    let server = TestServer::start().await;
    let reply = server
        .post_form(
            "/update_order",
            "order_id=1&orderbot_id=7&status=Order+Initiated",
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), json!({"message": "Order updated"}));
    let ct = ("content-type", "application/x-www-form-urlencoded");
    let reply = server
        .send(
            Method::PUT,
            "/update-order",
            &[ct],
            "order_id=1&status=Order%20Served",
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let order = server.get("/get_status/1").await.json();
    assert_eq!(order["status"], "Order Served");
    assert_eq!(
        order["orderbot_id"], "7",
        "an update without orderbot_id keeps it"
    );
    assert_eq!(order["stage"], "completed");
    assert_eq!(order["version"], 2);
}

#[tokio::test]
async fn multipart_update_as_cpee_sends_typed_parameters() {
    let server = TestServer::start().await;
    let body = "--XyZ\r\nContent-Disposition: form-data; name=\"order_id\"\r\n\r\n9\r\n\
                --XyZ\r\nContent-Disposition: form-data; name=\"status\"\r\n\r\nShaking\r\n\
                --XyZ\r\nContent-Disposition: form-data; name=\"orderbot_id\"\r\n\r\nr2\r\n--XyZ--\r\n";
    let ct = ("content-type", "multipart/form-data; boundary=XyZ");
    let reply = server
        .send(Method::POST, "/update_order", &[ct], body)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let order = server.get("/get_status/9").await.json();
    assert_eq!(
        (order["status"].as_str(), order["orderbot_id"].as_str()),
        (Some("Shaking"), Some("r2"))
    );

    let reply = server
        .send(
            Method::POST,
            "/update_order",
            &[("content-type", "multipart/form-data")],
            body,
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.error().contains("multipart"), "{}", reply.error());
    let reply = server
        .send(
            Method::POST,
            "/update_order",
            &[ct],
            "--XyZ\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\nunterminated",
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn body_without_content_type_is_sniffed() {
    let server = TestServer::start().await;
    let reply = server
        .send(
            Method::PUT,
            "/update_order",
            &[],
            r#"{"id": 3, "status": "Mixing"}"#,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = server
        .send(
            Method::PUT,
            "/update_order",
            &[],
            "order_id=4&status=Mixing",
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(server.broker.len(), 2);
}

#[tokio::test]
async fn missing_or_blank_fields_are_missing_data() {
    let server = TestServer::start().await;
    for body in [
        r#"{"orderbot_id": 1, "status": "Mixing"}"#,
        r#"{"id": 1, "orderbot_id": 1}"#,
        r#"{"id": null, "status": "Mixing"}"#,
        r#"{"id": "", "status": "Mixing"}"#,
        r#"{"id": 1, "status": ""}"#,
        r#"{}"#,
    ] {
        let reply = server.put_json("/update_order", body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(reply.json(), json!({"error": "Missing data"}), "{body}");
    }
    for body in ["status=Mixing", "order_id=1", "order_id=&status=Mixing", ""] {
        let reply = server.post_form("/update_order", body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(reply.json(), json!({"error": "Missing data"}), "{body}");
    }
    assert!(server.broker.is_empty());
}

#[tokio::test]
async fn bad_ids_and_wrong_types_are_400_naming_the_field() {
    let server = TestServer::start().await;
    for body in [
        r#"{"id": -1, "status": "Mixing"}"#,
        r#"{"id": 1.5, "status": "Mixing"}"#,
        r#"{"id": "abc", "status": "Mixing"}"#,
        r#"{"id": "-3", "status": "Mixing"}"#,
        r#"{"id": true, "status": "Mixing"}"#,
        r#"{"id": [1], "status": "Mixing"}"#,
        r#"{"id": 18446744073709551616, "status": "Mixing"}"#,
    ] {
        let reply = server.put_json("/update_order", body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(reply.error(), "id must be a non-negative integer", "{body}");
    }
    let reply = server
        .post_form("/update_order", "order_id=1e3&status=Mixing")
        .await;
    assert_eq!(reply.error(), "id must be a non-negative integer");

    let reply = server
        .put_json("/update_order", r#"{"id": 1, "status": 3}"#)
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.error(), "status must be a string");
    let reply = server
        .put_json(
            "/update_order",
            r#"{"id": 1, "status": "Mixing", "orderbot_id": {"a": 1}}"#,
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.error(), "orderbot_id must be a string or a number");
    assert!(
        server.broker.is_empty(),
        "nothing is stored from a refused update"
    );
}

#[tokio::test]
async fn malformed_bodies_and_content_types() {
    let server = TestServer::start().await;
    for body in [
        r#"{"id": 1, "status": "#,
        "{not json}",
        r#"[{"id": 1, "status": "Mixing"}]"#,
        "\"text\"",
    ] {
        let reply = server.put_json("/update_order", body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            reply.error().starts_with("invalid JSON"),
            "{body}: {}",
            reply.error()
        );
    }
    let reply = server
        .send(
            Method::PUT,
            "/update_order",
            &[("content-type", "text/plain")],
            "id=1",
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // The answer names what to send, never echoes the request's header.
    assert!(!reply.error().contains("text/plain"), "{}", reply.error());
    assert!(reply.error().contains("application/json"));
    let reply = server
        .send(
            Method::PUT,
            "/update_order",
            &[("content-type", "application/json; charset=utf-8")],
            r#"{"id":1,"status":"Mixing"}"#,
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "parameters of the content type are fine"
    );
    let reply = server
        .send(
            Method::PUT,
            "/update_order",
            &[("content-type", "application/json")],
            "\u{fffd}\u{0}",
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn unknown_fields_are_ignored() {
    let server = TestServer::start().await;
    let reply = server
        .put_json(
            "/update_order",
            r#"{"id": 1, "status": "Mixing", "drink": "Mojito", "extra": {"x": [1]}}"#,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = server
        .post_form("/update_order", "order_id=2&status=Mixing&cpee_label=mix")
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(server.broker.len(), 2);
}

#[tokio::test]
async fn texts_past_the_limits_are_422() {
    let mut config = common::config();
    config.limits.max_text_bytes = 10;
    config.limits.max_symbols = 2; // words the broker needs itself do not count
    let server = TestServer::with_config(config).await;
    let reply = server
        .put_json(
            "/update_order",
            r#"{"id": 1, "status": "a status word longer than ten"}"#,
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.error(), "status is longer than 10 bytes");
    let reply = server
        .put_json(
            "/update_order",
            r#"{"id": 1, "status": "Mix", "orderbot_id": "robot-number-1"}"#,
        )
        .await;
    assert_eq!(reply.error(), "orderbot_id is longer than 10 bytes");

    assert_eq!(
        server
            .put_json("/update_order", r#"{"id": 1, "status": "one"}"#)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        server
            .put_json("/update_order", r#"{"id": 1, "status": "two"}"#)
            .await
            .status,
        StatusCode::OK
    );
    let reply = server
        .put_json("/update_order", r#"{"id": 1, "status": "three"}"#)
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(reply.error().contains("max_symbols"), "{}", reply.error());
    // Known words still work once the table is full.
    let reply = server
        .put_json("/update_order", r#"{"id": 1, "status": "one"}"#)
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        server
            .broker
            .view(order_broker::OrderId(1))
            .unwrap()
            .version
            .0,
        3
    );
}

#[tokio::test]
async fn oversized_bodies_are_413_declared_or_streamed() {
    let mut config = common::config();
    config.limits.max_body_bytes = 1024;
    let server = TestServer::with_config(config).await;
    let big = format!(r#"{{"id": 1, "status": "{}"}}"#, "x".repeat(2000));
    let reply = server.put_json("/update_order", &big).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(reply.error().contains("1024"), "{}", reply.error());

    // Chunked, so the size is only known while reading.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let chunk = "y".repeat(600);
    let request = format!(
        "PUT /update_order HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n\
         258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(server.broker.is_empty());
}

/// The seed service kept its orders in a dict, so every view lists them in
/// the order they first arrived (the robot bar's website shows them so),
/// not by id; ids break ties within one millisecond. The same after a
/// restart, which rebuilds the views from the journal.
#[tokio::test]
async fn views_list_orders_in_arrival_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config();
    config.persistence.mode = order_broker::config::PersistenceMode::Journal;
    config.persistence.dir = dir.path().to_path_buf();
    let server = TestServer::with_config(config.clone()).await;
    let updates = [
        (30, "Order Initiated", "b3"),
        (4, "Mixing", "b1"),
        (12, "Order Served", "b2"),
        (7, "Order Initiated", "b1"),
        (2, "Pouring", "b2"),
        (9, "Order Cancelled", "b3"),
        (15, "Order Served", "b1"),
    ];
    for (id, status, bot) in updates {
        let body = json!({"id": id, "status": status, "orderbot_id": bot}).to_string();
        assert_eq!(
            server.put_json("/update_order", &body).await.status,
            StatusCode::OK
        );
        // Arrival is the creation time: one order a millisecond or more.
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    async fn check(server: &TestServer) {
        {
            assert_eq!(
                server.get("/get_new_orders").await.json(),
                json!({"new_orders": [30, 7]})
            );
            assert_eq!(
                server.get("/get_completed_orders").await.json(),
                json!({"completed_orders": [12, 15]})
            );
            assert_eq!(
                server.get("/get_current_order").await.json(),
                json!({"incomplete_orders": [
                    {"id": 4, "orderbot_id": "b1", "status": "Mixing"},
                    {"id": 2, "orderbot_id": "b2", "status": "Pouring"},
                ]})
            );
            let all = server.get("/get_all").await.json();
            let ids: Vec<u64> = all
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["order_id"].as_u64().unwrap())
                .collect();
            assert_eq!(
                ids,
                [30, 4, 12, 7, 2, 9, 15],
                "cancelled orders are in get_all only"
            );
            assert_eq!(
                all[5],
                json!({"order_id": 9, "status": "Order Cancelled", "orderbot_id": "b3"})
            );
            let listed: Vec<u64> = server
                .get("/orders")
                .await
                .json()
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["id"].as_u64().unwrap())
                .collect();
            assert_eq!(listed, [30, 4, 12, 7, 2, 9, 15], "/orders too");
        }
    }
    check(&server).await;
    let addr = server.addr;
    server.stop().await;
    let server = TestServer::at(addr, config).await;
    check(&server).await;

    // Views follow changes (the cached renderings are refreshed); a change
    // never moves an order's place.
    server
        .put_json("/update_order", r#"{"id": 7, "status": "Mixing"}"#)
        .await;
    server
        .put_json("/update_order", r#"{"id": 4, "status": "Order Served"}"#)
        .await;
    assert_eq!(
        server.get("/get_new_orders").await.json(),
        json!({"new_orders": [30]})
    );
    assert_eq!(
        server.get("/get_completed_orders").await.json(),
        json!({"completed_orders": [4, 12, 15]})
    );
    assert_eq!(
        server.get("/get_current_order").await.json(),
        json!({"incomplete_orders": [
            {"id": 7, "orderbot_id": "b1", "status": "Mixing"},
            {"id": 2, "orderbot_id": "b2", "status": "Pouring"},
        ]})
    );
    server
        .put_json("/update_order", r#"{"id": 2, "status": "Shaking"}"#)
        .await;
    assert_eq!(
        server.get("/get_current_order").await.json()["incomplete_orders"][1]["status"],
        "Shaking"
    );
    assert_eq!(server.get("/get_all").await.json()[4]["status"], "Shaking");
}

/// Orders created within one millisecond are listed by id.
#[tokio::test]
async fn ties_in_arrival_are_broken_by_id() {
    let server = TestServer::start().await;
    // Many orders a millisecond: most land on a shared millisecond.
    let ids = [50u64, 40, 30, 20, 10, 45, 35, 25, 15, 5];
    for id in ids {
        let body = json!({"id": id, "status": "Order Initiated"}).to_string();
        server.put_json("/update_order", &body).await;
    }
    let listed: Vec<u64> = server.get("/get_new_orders").await.json()["new_orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let created = |id: u64| {
        let server = &server;
        async move {
            server.get(&format!("/get_status/{id}")).await.json()["created"]
                .as_u64()
                .unwrap()
        }
    };
    let mut expected = Vec::new();
    for id in ids {
        expected.push((created(id).await, id));
    }
    expected.sort();
    let expected: Vec<u64> = expected.into_iter().map(|(_, id)| id).collect();
    assert_eq!(listed, expected);
}

#[tokio::test]
async fn empty_views() {
    let server = TestServer::start().await;
    assert_eq!(server.get("/get_all").await.json(), json!([]));
    assert_eq!(
        server.get("/get_current_order").await.json(),
        json!({"incomplete_orders": []})
    );
    assert_eq!(
        server.get("/get_completed_orders").await.json(),
        json!({"completed_orders": []})
    );
    assert_eq!(
        server.get("/get_new_orders").await.json(),
        json!({"new_orders": []})
    );
}

#[tokio::test]
async fn get_status_of_unknown_orders_is_404() {
    let server = TestServer::start().await;
    for path in [
        "/get_status/1",
        "/get_status/abc",
        "/get_status/-1",
        "/get_status/99999999999999999999999",
    ] {
        let reply = server.get(path).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(reply.json(), json!({"error": "Order not found"}), "{path}");
    }
}

#[tokio::test]
async fn unknown_routes_methods_and_options() {
    let server = TestServer::start().await;
    let reply = server.get("/nope").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.json(), json!({"error": "Not found"}));
    assert_eq!(server.get("/get_all/").await.status, StatusCode::NOT_FOUND);

    let reply = server.send(Method::DELETE, "/get_all", &[], "").await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.header("allow"), Some("GET, HEAD, OPTIONS"));
    assert_eq!(reply.json(), json!({"error": "Method not allowed"}));
    let reply = server.get("/update_order").await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.header("allow"), Some("PUT, POST, OPTIONS"));

    let reply = server
        .send(
            Method::OPTIONS,
            "/update_order",
            &[("access-control-request-headers", "content-type")],
            "",
        )
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(reply.header("allow"), Some("PUT, POST, OPTIONS"));
    assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
    let allowed = reply.header("access-control-allow-headers").unwrap();
    assert!(allowed.contains("content-type") && allowed.contains("authorization"));

    let reply = server.send(Method::HEAD, "/get_all", &[], "").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.is_empty());
}

#[tokio::test]
async fn healthz_answers() {
    let server = TestServer::start().await;
    let reply = server.get("/healthz").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["status"], "ok");
}

#[tokio::test]
async fn urls_and_stage_words_come_from_config() {
    let mut config = common::config();
    config.order_store.url_get_all = "/orders/all".into();
    config.order_store.url_get_status = "/orders/{id}/state".into();
    config.order_store.url_update_aliases = vec!["/api/update".into()];
    config.stages.new = vec!["Queued".into()];
    config.stages.completed = vec!["Done".into(), "Served".into()];
    config.http.cors_allow_origin = order_broker::config::Origins::One(String::new());
    let server = TestServer::with_config(config).await;

    assert_eq!(
        server
            .put_json("/api/update", r#"{"id": 1, "status": "Queued"}"#)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        server
            .put_json("/update-order", r#"{"id": 2, "status": "Done"}"#)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    server
        .put_json("/update_order", r#"{"id": 2, "status": "Served"}"#)
        .await;
    server
        .put_json("/update_order", r#"{"id": 3, "status": "Order Initiated"}"#)
        .await;
    assert_eq!(server.get("/get_all").await.status, StatusCode::NOT_FOUND);
    let reply = server.get("/orders/all").await;
    assert_eq!(reply.json().as_array().unwrap().len(), 3);
    assert_eq!(reply.header("access-control-allow-origin"), None);
    assert_eq!(server.get("/orders/1/state").await.json()["stage"], "new");
    assert_eq!(
        server.get("/get_new_orders").await.json(),
        json!({"new_orders": [1]})
    );
    assert_eq!(
        server.get("/get_completed_orders").await.json(),
        json!({"completed_orders": [2]})
    );
    let current = server.get("/get_current_order").await.json();
    assert_eq!(
        current["incomplete_orders"][0]["id"], 3,
        "a default word is just another status here"
    );
}

#[tokio::test]
async fn clashing_urls_are_a_config_error() {
    let mut config = common::config();
    config.order_store.url_get_all = "/get_new_orders".into();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = order_broker::server::run(listener, config, async {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/get_new_orders"), "{err}");
}

#[tokio::test]
async fn garbage_on_the_wire_does_not_hurt_the_server() {
    let server = TestServer::start().await;
    for junk in [
        "\x00\x01\x02\r\n\r\n",
        "GET / HTTP/9.9\r\n\r\n",
        "PUT /update_order HTTP/1.1\r\ncontent-length: abc\r\n\r\n",
        "GET /get_all HTTP/1.1\r\nhost: x\r\nbad header line\r\n\r\n",
    ] {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(junk.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response).await;
        let text = String::from_utf8_lossy(&response);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 4"),
            "{junk:?}: {text}"
        );
    }
    assert_eq!(server.get("/healthz").await.status, StatusCode::OK);
}

/// CORS: a preflight allows the headers the API reads, never whatever was
/// asked; a list of origins echoes only a listed one.
#[tokio::test]
async fn cors_lists_origins_and_preflights_allow_only_known_headers() {
    let mut config = common::config();
    config.http.cors_allow_origin = order_broker::config::Origins::Many(vec![
        "https://bar.example".into(),
        "https://kitchen.example".into(),
    ]);
    let server = TestServer::with_config(config).await;
    let reply = server
        .send(
            Method::OPTIONS,
            "/update_order",
            &[
                ("origin", "https://bar.example"),
                ("access-control-request-headers", "x-evil, content-type"),
            ],
            "",
        )
        .await;
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("https://bar.example")
    );
    assert_eq!(reply.header("vary"), Some("origin"));
    let allowed = reply.header("access-control-allow-headers").unwrap();
    assert!(!allowed.contains("x-evil"), "{allowed}");
    assert!(allowed.contains("idempotency-key"), "{allowed}");
    let reply = server
        .send(
            Method::GET,
            "/get_all",
            &[("origin", "https://evil.example")],
            "",
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("access-control-allow-origin"), None);
    let reply = server
        .send(
            Method::GET,
            "/get_all",
            &[("origin", "https://kitchen.example")],
            "",
        )
        .await;
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("https://kitchen.example")
    );
}

/// A body that names two different orders is refused, JSON or form.
#[tokio::test]
async fn an_update_naming_two_orders_is_refused() {
    let server = TestServer::start().await;
    let reply = server
        .put_json(
            "/update_order",
            r#"{"id": 783, "order_id": 784, "status": "Mixing"}"#,
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let reply = server
        .post_form("/update_order", "order_id=1&id=2&status=Mixing")
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(server.get("/get_all").await.json(), serde_json::json!([]));
    // The same order under both names is fine.
    let reply = server
        .put_json(
            "/update_order",
            r#"{"id": 5, "order_id": "5", "status": "Mixing"}"#,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
}

/// CORS: a page on an allowed origin may read the headers it needs (an
/// order's ETag, a new record's Location, the next page's cursor and Link);
/// a refused origin is told nothing.
#[tokio::test]
async fn cors_exposes_etag_location_and_paging_headers_to_allowed_origins() {
    let mut config = common::config();
    config.http.cors_allow_origin =
        order_broker::config::Origins::Many(vec!["https://bar.example".into()]);
    let server = TestServer::with_config(config).await;
    let headers = [
        ("origin", "https://bar.example"),
        ("content-type", "application/json"),
    ];
    let reply = server
        .send(
            Method::POST,
            "/products",
            &headers,
            r#"{"name": "Mojito", "price": 7.5, "stock": 40}"#,
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let exposed = reply
        .header("access-control-expose-headers")
        .expect("exposed headers")
        .to_ascii_lowercase();
    let exposed: Vec<&str> = exposed.split(',').map(str::trim).collect();
    for name in ["etag", "location", "x-next-cursor", "link"] {
        assert!(exposed.contains(&name), "{name} in {exposed:?}");
    }
    let reply = server
        .send(
            Method::GET,
            "/get_all",
            &[("origin", "https://evil.example")],
            "",
        )
        .await;
    assert_eq!(reply.header("access-control-expose-headers"), None);
}
