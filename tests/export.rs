//! `GET /orders/export`: CSV (RFC 4180), NDJSON and JSON, the list's
//! filters, streamed in chunks.

mod common;

use common::TestServer;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

async fn post(server: &TestServer, path: &str, body: Value) -> Value {
    let ct = ("content-type", "application/json");
    let reply = server
        .send(Method::POST, path, &[ct], &body.to_string())
        .await;
    assert!(reply.status.is_success(), "{path}: {:?}", reply.body);
    reply.json()
}

/// 1,500 robot-bar orders (ids 1..=1500) and three shop orders after them.
async fn filled() -> TestServer {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    for id in 1..=1500u64 {
        let status = if id % 3 == 0 {
            "Order Served"
        } else {
            "Mixing"
        };
        let body =
            json!({"order_id": id, "status": status, "orderbot_id": format!("bot-{}", id % 4)});
        assert_eq!(
            client
                .put_json("/update_order", &body.to_string())
                .await
                .status,
            StatusCode::OK
        );
    }
    post(
        &server,
        "/products",
        json!({"id": 1, "name": "tea", "price": "2.50", "stock": 100}),
    )
    .await;
    post(
        &server,
        "/customers",
        json!({"id": 1, "name": "Ann", "balance": 10}),
    )
    .await;
    for notes in ["plain", "comma, \"quotes\" and\nnewline", ""] {
        post(
            &server,
            "/orders",
            json!({"customer_id": 1, "items": [{"product_id": 1, "quantity": 2}], "notes": notes, "table_number": 4}),
        )
        .await;
    }
    server
}

#[tokio::test]
async fn csv_has_a_header_row_quotes_as_rfc_4180_says_and_every_order() {
    let server = filled().await;
    let reply = server.get("/orders/export?format=csv").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("text/csv")
    );
    assert!(
        reply
            .header("content-disposition")
            .unwrap()
            .contains("orders.csv")
    );
    assert_eq!(
        reply.header("content-length"),
        None,
        "streamed, not buffered"
    );
    assert_eq!(reply.header("transfer-encoding"), Some("chunked"));

    let mut reader = csv::Reader::from_reader(&reply.body[..]);
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_string)
        .collect();
    assert_eq!(header[..4], ["id", "number", "status", "stage"]);
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), 1503);
    let ids: Vec<u64> = rows.iter().map(|r| r[0].parse().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ascending ids");
    let column = |name: &str| header.iter().position(|h| h == name).unwrap();
    let shop: Vec<&csv::StringRecord> = rows
        .iter()
        .filter(|r| !r[column("number")].is_empty())
        .collect();
    assert_eq!(shop.len(), 3);
    assert_eq!(&shop[1][column("notes")], "comma, \"quotes\" and\nnewline");
    assert_eq!(&shop[0][column("items")], "1 x 2");
    assert_eq!(&shop[0][column("grand_total")], "5.00");
    assert_eq!(&shop[0][column("table_number")], "4");
    assert_eq!(&rows[2][column("stage")], "completed");
    assert_eq!(&rows[2][column("orderbot_id")], "bot-3");
    // RFC 4180: CRLF or LF line ends, fields with quotes doubled.
    let text = String::from_utf8(reply.body.to_vec()).unwrap();
    assert!(
        text.contains("\"comma, \"\"quotes\"\" and\nnewline\""),
        "quoted field"
    );
}

#[tokio::test]
async fn ndjson_and_json_carry_the_orders_as_the_api_shows_them() {
    let server = filled().await;
    let reply = server.get("/orders/export?format=ndjson").await;
    assert_eq!(reply.header("content-type"), Some("application/x-ndjson"));
    let lines: Vec<Value> = std::str::from_utf8(&reply.body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1503);
    let one = server.get("/orders/1502").await.json();
    assert_eq!(lines[1501], one, "the same body as GET /orders/{{id}}");

    let all = server.get("/orders/export").await;
    assert_eq!(all.header("content-type"), Some("application/json"));
    let array = all.json();
    assert_eq!(array.as_array().unwrap().len(), 1503);
    assert_eq!(array[1501], one);
}

#[tokio::test]
async fn the_list_filters_apply_and_bad_ones_are_refused() {
    let server = filled().await;
    let count = |path: String| {
        let server = &server;
        async move {
            let reply = server.get(&path).await;
            assert_eq!(reply.status, StatusCode::OK, "{path}");
            reply.json().as_array().unwrap().len()
        }
    };
    assert_eq!(count("/orders/export?stage=completed".into()).await, 500);
    assert_eq!(count("/orders/export?status=Mixing".into()).await, 1000);
    assert_eq!(count("/orders/export?customer_id=1".into()).await, 3);
    assert_eq!(count("/orders/export?status=Nope".into()).await, 0);
    let first = server.get("/orders/1501").await.json()["created"]
        .as_u64()
        .unwrap();
    assert_eq!(
        count(format!("/orders/export?created_from={first}&customer_id=1")).await,
        3
    );
    let until = format!("/orders/export?created_to={}&customer_id=1", first + 1);
    assert!(count(until).await >= 1);
    assert_eq!(count("/orders/export?created_to=1".into()).await, 0);
    for bad in [
        "format=xml",
        "stage=gone",
        "customer_id=x",
        "created_from=-1",
    ] {
        let reply = server.get(&format!("/orders/export?{bad}")).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    // An export with nothing in it is still well-formed.
    let empty = server.get("/orders/export?format=csv&status=Nope").await;
    assert_eq!(
        std::str::from_utf8(&empty.body).unwrap().lines().count(),
        1,
        "the header row"
    );
    assert_eq!(
        server.get("/orders/export?status=Nope").await.json(),
        json!([])
    );
}

#[tokio::test]
async fn csv_cells_never_start_a_spreadsheet_formula() {
    let server = TestServer::start().await;
    post(
        &server,
        "/products",
        json!({"id": 1, "name": "tea", "price": "2.50", "stock": 100}),
    )
    .await;
    let evil = [
        "=HYPERLINK(\"http://evil\")",
        "+1+1",
        "-2+3",
        "@SUM(A1)",
        "\tx",
    ];
    for notes in evil {
        post(
            &server,
            "/orders",
            json!({"items": [{"product_id": 1, "quantity": 1}], "notes": notes, "channel": notes}),
        )
        .await;
    }
    let mut client = server.client().await;
    let body = json!({"order_id": 99, "status": "=cmd|' /C calc'!A0", "orderbot_id": "@bot"});
    client.put_json("/update_order", &body.to_string()).await;
    let reply = server.get("/orders/export?format=csv").await;
    let mut reader = csv::Reader::from_reader(&reply.body[..]);
    let header = reader.headers().unwrap().clone();
    let column = |name: &str| header.iter().position(|h| h == name).unwrap();
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    for (row, notes) in rows.iter().zip(evil) {
        assert_eq!(&row[column("notes")], format!("'{notes}"));
        assert_eq!(&row[column("channel")], format!("'{notes}"));
    }
    let seed = rows.iter().find(|r| &r[0] == "99").unwrap();
    assert_eq!(&seed[column("status")], "'=cmd|' /C calc'!A0");
    assert_eq!(&seed[column("orderbot_id")], "'@bot");
    // The JSON forms keep the text as it is.
    let json = server.get("/orders/export?format=json").await.json();
    assert_eq!(json[0]["notes"], evil[0]);
}
