//! `/openapi.json` stays true: every documented operation is sent with its
//! own example to a broker holding product 1, customer 1 and order 1, and
//! must answer with the status its `x-example-status` names, in a
//! documented media type, with a body that validates against the
//! documented schema (the `jsonschema` crate, JSON Schema 2020-12 as
//! OpenAPI 3.1 uses it); without a token, only operations open to anyone
//! may answer, and the rest answer a documented 401.

mod common;

use common::{Sse, TestServer};
use hyper::{Method, StatusCode};
use order_broker::auth::{Role, Secret, StaticToken};
use serde_json::{Value, json};

const ADMIN: &str = "token admin-t";
const CUSTOMER: &str = "token cust-1";
const RIDER: &str = "token rider-t";

fn config() -> order_broker::Config {
    let mut config = common::config();
    let token = |token: &str, role, subject: &str| StaticToken {
        token: Secret(token.into()),
        role,
        subject: Some(subject.into()),
    };
    config.auth.tokens = vec![
        token("admin-t", Role::Admin, "ada"),
        token("cust-1", Role::Customer, "1"),
        token("rider-t", Role::Delivery, "rider-7"),
    ];
    config
}

/// A broker with product 1, customer 1, order 1 (customer 1's, with items,
/// assigned to delivery partner rider-7, with a location), orders 2 and 3
/// (customer 1's, delivered; 3 with a return requested), template 1 (customer 1's) and pending
/// callback 1; order 1's number.
async fn fixture() -> (TestServer, String) {
    let server = TestServer::with_config(config()).await;
    let json_ct = ("content-type", "application/json");
    let auth = ("authorization", ADMIN);
    let post = |path: &'static str, body: Value| {
        let server = &server;
        async move {
            let reply = server
                .send(Method::POST, path, &[json_ct, auth], &body.to_string())
                .await;
            assert!(reply.status.is_success(), "{path}: {:?}", reply.body);
            reply.json()
        }
    };
    post(
        "/products",
        json!({"id": 1, "name": "Mojito", "price": 7.5, "stock": 40}),
    )
    .await;
    post("/customers", json!({"id": 1, "name": "Ann", "balance": 50})).await;
    let order = post(
        "/orders",
        json!({"customer_id": 1, "items": [{"product_id": 1, "quantity": 2}]}),
    )
    .await;
    assert_eq!(order["id"], 1);
    let template = post(
        "/templates",
        json!({"customer_id": 1, "name": "usual", "items": [{"product_id": 1, "quantity": 1}]}),
    )
    .await;
    assert_eq!(template["id"], 1);
    // Orders 2 and 3, delivered (for feedback and returns); 3 has a return.
    for id in [2, 3] {
        let order = post(
            "/orders",
            json!({"customer_id": 1, "items": [{"product_id": 1, "quantity": 1}]}),
        )
        .await;
        assert_eq!(order["id"], id);
        // Processed, so its ledger has something a return can refund.
        let reply = server
            .send(
                Method::PUT,
                &format!("/api/orders/{id}"),
                &[json_ct, auth],
                r#"{"process": true}"#,
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        for status in ["confirmed", "preparing", "out_for_delivery", "delivered"] {
            let body = json!({"status": status}).to_string();
            let path = format!("/orders/{id}/status");
            let reply = server
                .send(Method::PUT, &path, &[json_ct, auth], &body)
                .await;
            assert_eq!(reply.status, StatusCode::OK);
        }
    }
    let customer = ("authorization", CUSTOMER);
    let ask = r#"{"items": [{"product_id": 1, "quantity": 1}], "reason": "cold"}"#;
    let reply = server
        .send(
            Method::POST,
            "/orders/3/request-return",
            &[json_ct, customer],
            ask,
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    let assign = r#"{"partner_id": "rider-7"}"#;
    let reply = server
        .send(
            Method::PUT,
            "/orders/1/assign-delivery",
            &[json_ct, auth],
            assign,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let at = r#"{"lat": 1.5, "lng": 2.5}"#;
    let rider = ("authorization", RIDER);
    let reply = server
        .send(
            Method::PUT,
            "/orders/1/delivery-location",
            &[json_ct, rider],
            at,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let callback = ("cpee-callback", "http://127.0.0.1:9/callback");
    let reply = server
        .send(
            Method::POST,
            "/cpee/wait",
            &[json_ct, auth, callback],
            r#"{"order_id": 1, "stage": "completed"}"#,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let pending = server
        .send(Method::GET, "/cpee/callbacks", &[auth], "")
        .await
        .json();
    assert_eq!(pending[0]["id"], 1);
    (server, order["number"].as_str().unwrap().to_string())
}

struct Operation {
    method: Method,
    path: String,
    body: Option<String>,
    status: u16,
    /// The documented answers, by status.
    responses: Value,
    open_to_anyone: bool,
    who: String,
}

fn operations(doc: &Value) -> Vec<Operation> {
    let mut out = Vec::new();
    for (template, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let mut path = template.clone();
            let mut query = Vec::new();
            let none = Vec::new();
            for param in op["parameters"].as_array().unwrap_or(&none) {
                let name = param["name"].as_str().unwrap();
                match (param["in"].as_str().unwrap(), param["example"].as_str()) {
                    ("path", Some(example)) => path = path.replace(&format!("{{{name}}}"), example),
                    ("path", None) if method == "options" => {
                        path = path.replace(&format!("{{{name}}}"), "1")
                    }
                    ("path", None) => panic!("{template}: path parameters have examples"),
                    ("query", Some(example)) => query.push(format!("{name}={example}")),
                    _ => {}
                }
            }
            if !query.is_empty() {
                path = format!("{path}?{}", query.join("&"));
            }
            let status = op["x-example-status"].as_u64().unwrap().to_string();
            assert!(
                op["responses"][&status].is_object(),
                "{method} {template}: {status} is documented"
            );
            out.push(Operation {
                method: method.to_uppercase().parse().unwrap(),
                path,
                body: op["requestBody"]["content"]["application/json"]["example"]
                    .as_object()
                    .map(|b| Value::Object(b.clone()).to_string()),
                status: status.parse().unwrap(),
                responses: op["responses"].clone(),
                open_to_anyone: op["x-who"] == "anyone",
                who: op["x-who"].as_str().unwrap().to_string(),
            });
        }
    }
    out
}

/// Checks a reply against the documented answer for its status: the
/// media type is one documented, and a JSON body validates against its
/// schema (whose `$ref`s resolve in the document's components).
fn check_reply(doc: &Value, op: &Operation, label: &str, reply: &common::Reply) {
    let status = reply.status.as_u16().to_string();
    let response = &op.responses[&status];
    assert!(response.is_object(), "{label}: {status} is not documented");
    let Some(content) = response["content"].as_object() else {
        return;
    };
    if op.method == Method::HEAD {
        return;
    }
    let got = reply.header("content-type").unwrap_or_default();
    let (media, spec) = content
        .iter()
        .find(|(media, _)| got.starts_with(media.as_str()))
        .unwrap_or_else(|| panic!("{label}: content-type {got} is not documented"));
    if media != "application/json" {
        return;
    }
    let body: Value =
        serde_json::from_slice(&reply.body).unwrap_or_else(|e| panic!("{label}: not JSON: {e}"));
    let mut schema = spec["schema"].clone();
    if let Some(object) = schema.as_object_mut() {
        object.insert("components".into(), doc["components"].clone());
    } else {
        panic!("{label}: no schema");
    }
    let validator = jsonschema::draft202012::new(&schema)
        .unwrap_or_else(|e| panic!("{label}: the schema does not compile: {e}"));
    let errors: Vec<String> = validator
        .iter_errors(&body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{label} {status}: the body does not match its schema: {errors:?}\nbody: {body}"
    );
}

#[tokio::test]
async fn every_documented_operation_answers_as_documented() {
    let server = TestServer::with_config(config()).await;
    let reply = server.get("/openapi.json").await;
    assert_eq!(reply.status, StatusCode::OK);
    let doc = reply.json();
    assert_eq!(doc["openapi"], "3.1.0");
    let ops = operations(&doc);
    assert!(ops.len() >= 100, "{} operations", ops.len());

    for op in ops {
        let (server, number) = fixture().await;
        let token = match op.who.as_str() {
            "customer" | "the order's customer" => CUSTOMER,
            "the assigned delivery partner" => RIDER,
            _ => ADMIN,
        };
        let label = format!("{} {}", op.method, op.path);
        let stream = op.responses["200"]["content"]["text/event-stream"].is_object();
        if stream && op.method == Method::GET {
            let stream = Sse::open(server.addr, &op.path, &[("authorization", token)]).await;
            assert!(
                stream.is_ok(),
                "{label}: {:?}",
                stream.err().map(|r| r.status)
            );
            continue;
        }
        let body = op
            .body
            .clone()
            .unwrap_or_default()
            .replace("FR9TL74P", &number);
        let mut headers = vec![("authorization", token)];
        if op.body.is_some() {
            headers.push(("content-type", "application/json"));
        }
        let reply = server
            .send(op.method.clone(), &op.path, &headers, &body)
            .await;
        assert_eq!(
            reply.status.as_u16(),
            op.status,
            "{label}: {:?}",
            reply.body
        );
        check_reply(&doc, &op, &label, &reply);

        // Without a token only the operations open to anyone get through.
        let (server, _) = fixture().await;
        let bare: Vec<(&str, &str)> = headers
            .iter()
            .filter(|(name, _)| *name != "authorization")
            .copied()
            .collect();
        let reply = server.send(op.method.clone(), &op.path, &bare, &body).await;
        if op.open_to_anyone {
            assert_eq!(reply.status.as_u16(), op.status, "{label} without a token");
        } else {
            assert_eq!(
                reply.status,
                StatusCode::UNAUTHORIZED,
                "{label} without a token"
            );
        }
        check_reply(&doc, &op, &format!("{label} without a token"), &reply);
    }
}
