//! Property tests of everything that reads untrusted bytes: the body parsers
//! (JSON, forms, multipart, no content type), money amounts, and whole
//! requests over HTTP, and the journal's record decoder. None may panic;
//! every refusal is a 4xx; a damaged journal record is always noticed.

mod common;

use bytes::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::{Method, StatusCode};
use order_broker::catalog::{Product, ProductId};
use order_broker::http::body::{json, parse_fields};
use order_broker::journal::record::{Frames, Record, StoredOrder};
use order_broker::model::{Millis, OrderId, Seq};
use order_broker::money::Money;
use proptest::prelude::*;

fn content_types() -> impl Strategy<Value = Option<&'static str>> {
    prop::sample::select(vec![
        None,
        Some("application/json"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=XyZ"),
        Some("multipart/form-data"),
        Some("multipart/form-data; boundary="),
        Some("application/vnd.api+json"),
        Some("text/plain"),
        Some("application/json; charset=utf-8"),
    ])
}

/// Bytes that look a little like bodies: raw noise, or fragments of JSON,
/// forms and multipart glued together.
fn bodies() -> impl Strategy<Value = Vec<u8>> {
    let fragment = prop::sample::select(vec![
        "{",
        "}",
        "[",
        "]",
        "\"id\"",
        ":",
        ",",
        "12",
        "-1",
        "1e999",
        "\"",
        "\\u0000",
        "null",
        "true",
        "order_id=",
        "&",
        "%",
        "%zz",
        "+",
        "status=Mixing",
        "--XyZ\r\n",
        "Content-Disposition: form-data; name=\"status\"\r\n\r\n",
        "--XyZ--\r\n",
        "\r\n",
        "\u{fffd}",
    ]);
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        prop::collection::vec(fragment, 0..24).prop_map(|parts| parts.concat().into_bytes()),
    ]
}

fn headers(content_type: Option<&str>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(ct) = content_type {
        headers.insert(CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
    }
    headers
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn body_parsers_never_panic(content_type in content_types(), body in bodies()) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let headers = headers(content_type);
        if let Err(e) = runtime.block_on(parse_fields(&headers, Bytes::from(body.clone()))) {
            prop_assert!(e.status.is_client_error(), "{e:?}");
        }
        if let Err(e) = json::<serde_json::Value>(&headers, &body) {
            prop_assert!(e.status.is_client_error(), "{e:?}");
        }
    }

    #[test]
    fn money_parsing_never_panics_and_round_trips(text in "[-+0-9.]{0,24}") {
        if let Ok(m) = Money::parse(&text) {
            prop_assert_eq!(Money::parse(&m.to_string()), Ok(m));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(150))]

    /// Whole requests over a real socket: never a 5xx, the server stays up.
    #[test]
    fn requests_never_get_a_server_error(
        content_type in content_types(),
        body in bodies(),
        path in prop::sample::select(vec![
            "/update_order", "/orders", "/products", "/customers", "/api/orders/1",
            "/api/store/orders/confirm", "/orders/intake", "/cpee/next-order", "/cpee/wait", "/orders/1/items",
        ]),
        method in prop::sample::select(vec![Method::POST, Method::PUT]),
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async {
            let server = common::TestServer::start().await;
            let headers: Vec<(&str, &str)> = content_type.map(|ct| ("content-type", ct)).into_iter().collect();
            let body = String::from_utf8_lossy(&body).to_string();
            let reply = server.send(method, path, &headers, &body).await;
            assert!(!reply.status.is_server_error(), "{path}: {} for {body:?}", reply.status);
            assert_eq!(server.get("/healthz").await.status, StatusCode::OK);
        });
    }
}

/// Reads every frame of `bytes` (a journal file without its magic) and
/// decodes each payload, as recovery does. Never panics.
fn read_all(bytes: &[u8]) -> Vec<Result<Record, String>> {
    let mut frames = Frames::new(bytes, 0, bytes.len() as u64);
    let mut out = Vec::new();
    loop {
        match frames.next_payload().expect("reading memory does not fail") {
            Ok(Some(payload)) => out.push(Record::decode(payload).map_err(|e| e.to_string())),
            Ok(None) => return out,
            Err(e) => {
                out.push(Err(e.to_string()));
                return out;
            }
        }
    }
}

fn records() -> impl Strategy<Value = Record> {
    let text = "[a-zA-Z0-9 \\\\\"é\u{1F37A}]{0,20}";
    prop_oneof![
        (
            any::<u64>(),
            any::<u64>(),
            text,
            proptest::option::of(text),
            any::<u32>(),
            0u64..1 << 48
        )
            .prop_map(|(seq, id, status, bot, version, at)| Record::Order {
                seq: Seq(seq),
                id: OrderId(id),
                order: StoredOrder {
                    status,
                    orderbot_id: bot,
                    version,
                    created: Millis(at),
                    updated: Millis(at),
                    stage_since: Millis(at),
                    shop: None,
                },
            }),
        (any::<u64>(), any::<u64>()).prop_map(|(seq, id)| Record::OrderRemoved {
            seq: Seq(seq),
            id: OrderId(id),
            evicted: None,
        }),
        (
            any::<u64>(),
            any::<u64>(),
            text,
            -1_000_000i64..1_000_000,
            any::<u64>()
        )
            .prop_map(|(seq, id, name, cents, stock)| Record::Product {
                seq: Seq(seq),
                product: std::sync::Arc::new(Product {
                    id: ProductId(id),
                    name,
                    price: Money(cents),
                    stock,
                    version: 1,
                }),
            }),
        any::<u64>().prop_map(|records| Record::End { records }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The journal decoder survives any bytes: noise, or real frames with
    /// damage (flipped bytes, cut short, glued to noise).
    #[test]
    fn journal_decoder_never_panics(
        records in prop::collection::vec(records(), 0..6),
        noise in prop::collection::vec(any::<u8>(), 0..64),
        flip in any::<prop::sample::Index>(),
        cut in any::<prop::sample::Index>(),
        raw in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        read_all(&raw);
        let mut bytes = Vec::new();
        for record in &records {
            record.write_frame(&mut bytes);
        }
        let intact = read_all(&bytes);
        prop_assert_eq!(intact.len(), records.len());
        for (read, written) in intact.iter().zip(&records) {
            prop_assert_eq!(read.as_ref().unwrap(), written, "a frame reads back as written");
        }
        let mut damaged = bytes.clone();
        if !damaged.is_empty() {
            let at = flip.index(damaged.len());
            damaged[at] ^= 0xA5;
            // Damage is always detected: never a different record read as good.
            let read = read_all(&damaged);
            for (r, written) in read.iter().zip(&records) {
                if let Ok(r) = r {
                    prop_assert_eq!(r, written);
                }
            }
            prop_assert!(read.iter().any(|r| r.is_err()), "a flipped byte is noticed");
            read_all(&bytes[..cut.index(bytes.len())]);
        }
        bytes.extend_from_slice(&noise);
        read_all(&bytes);
    }
}
