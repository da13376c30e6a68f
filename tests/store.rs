//! The Flask store tutorial's blueprints (`/api/products/`, `/api/customers/`,
//! `/api/orders/`, with and without the slash, and `/{id}` below them) answer
//! as the broker's `/products`, `/customers` and `/orders` do, to the same
//! callers; and its page, `GET /store`, in a real Chromium: processing with a
//! strategy moves stock and balance, and a processed order's delete is
//! refused by the server, in the page's words. Without Chromium the page
//! tests are skipped, except in CI.

mod common;

use std::time::Duration;

use common::TestServer;
use common::browser::{self, Browser, DevToolsSocket, chromium};
use hyper::{Method, StatusCode};
use order_broker::auth::{Role, Secret, StaticToken};
use serde_json::{Value, json};

const JSON: (&str, &str) = ("content-type", "application/json");

async fn send(server: &TestServer, method: Method, path: &str, body: Value) -> common::Reply {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    server.send(method, path, &[JSON], &body).await
}

async fn created(server: &TestServer, path: &str, body: Value) -> Value {
    let reply = send(server, Method::POST, path, body).await;
    assert_eq!(
        reply.status,
        StatusCode::CREATED,
        "{path}: {:?}",
        reply.body
    );
    reply.json()
}

/// Both spellings of a blueprint root.
fn roots(name: &str) -> [String; 2] {
    [format!("/api/{name}/"), format!("/api/{name}")]
}

#[tokio::test]
async fn product_blueprint_is_the_products_api() {
    let server = TestServer::start().await;
    for root in roots("products") {
        let product = created(
            &server,
            &root,
            json!({"name": format!("P {root}"), "price": "2.50", "stock": 7}),
        )
        .await;
        assert_eq!(product["stock"], 7);
        assert_eq!(product["price"], 2.5);
    }
    for root in roots("products") {
        let listed = server.get(&root).await;
        assert_eq!(listed.status, StatusCode::OK, "{root}");
        assert_eq!(
            listed.json(),
            server.get("/products").await.json(),
            "{root}"
        );
        assert_eq!(listed.json().as_array().unwrap().len(), 2);
    }
    let one = server.get("/api/products/1").await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.json(), server.get("/products/1").await.json());
    let changed = send(&server, Method::PUT, "/api/products/1", json!({"stock": 3})).await;
    assert_eq!(changed.status, StatusCode::OK);
    assert_eq!(server.get("/products/1").await.json()["stock"], 3);
    // The same refusals: a list for an object, unknown ids.
    let bad = server
        .send(Method::POST, "/api/products/", &[JSON], r#"["x", 1]"#)
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        server.get("/api/products/99").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        server.get("/api/products/x").await.status,
        StatusCode::NOT_FOUND
    );
    let gone = send(
        &server,
        Method::PUT,
        "/api/products/99",
        json!({"stock": 1}),
    )
    .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    let deleted = send(&server, Method::DELETE, "/api/products/2", Value::Null).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_eq!(
        server.get("/products/2").await.status,
        StatusCode::NOT_FOUND
    );
    let again = send(&server, Method::DELETE, "/api/products/2", Value::Null).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    // Methods the route does not take: 405 with the broker route's Allow.
    let patch = send(&server, Method::PATCH, "/api/products/", Value::Null).await;
    assert_eq!(patch.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(patch.header("allow"), Some("GET, HEAD, POST, OPTIONS"));
}

#[tokio::test]
async fn customer_blueprint_lists_by_name() {
    let server = TestServer::start().await;
    for (name, balance) in [("Zoe", 5), ("Ann", 10), ("Mia", 0), ("Ann", 1)] {
        created(
            &server,
            "/api/customers/",
            json!({"name": name, "balance": balance}),
        )
        .await;
    }
    created(
        &server,
        "/api/customers",
        json!({"name": "Bea", "phone": "555-1"}),
    )
    .await;
    for root in roots("customers") {
        let listed = server.get(&root).await;
        assert_eq!(listed.status, StatusCode::OK, "{root}");
        let listed = listed.json();
        let names: Vec<(&str, u64)> = listed
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["name"].as_str().unwrap(), c["id"].as_u64().unwrap()))
            .collect();
        assert_eq!(
            names,
            [("Ann", 2), ("Ann", 4), ("Bea", 5), ("Mia", 3), ("Zoe", 1)],
            "{root}"
        );
        // The same records as /customers, in another order.
        let mut broker: Vec<Value> = server
            .get("/customers")
            .await
            .json()
            .as_array()
            .unwrap()
            .clone();
        broker.sort_by_key(|c| (c["name"].as_str().unwrap().to_string(), c["id"].as_u64()));
        assert_eq!(&listed, &Value::Array(broker));
    }
    let one = server.get("/api/customers/2").await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.json(), server.get("/customers/2").await.json());
    assert_eq!(one.json()["balance"], 10.0);
    let changed = send(
        &server,
        Method::PUT,
        "/api/customers/2",
        json!({"balance": "12.25"}),
    )
    .await;
    assert_eq!(changed.status, StatusCode::OK);
    assert_eq!(server.get("/customers/2").await.json()["balance"], 12.25);
    assert_eq!(
        server.get("/api/customers/99").await.status,
        StatusCode::NOT_FOUND
    );
    let deleted = send(&server, Method::DELETE, "/api/customers/1", Value::Null).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_eq!(
        server.get("/api/customers/1").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        server.get("/customers/1").await.status,
        StatusCode::NOT_FOUND
    );
}

/// Product 1 "Mojito" (7.50, 10 in stock), product 2 "Lime" (0.50, 100),
/// customer 1 "Ann" with 50.00.
async fn shop() -> TestServer {
    let server = TestServer::start().await;
    shop_on(&server, &[]).await;
    server
}

async fn shop_on(server: &TestServer, headers: &[(&str, &str)]) {
    let mut all = vec![JSON];
    all.extend_from_slice(headers);
    for (path, body) in [
        (
            "/products",
            json!({"name": "Mojito", "price": "7.50", "stock": 10}),
        ),
        (
            "/products",
            json!({"name": "Lime", "price": "0.50", "stock": 100}),
        ),
        ("/customers", json!({"name": "Ann", "balance": 50})),
    ] {
        let reply = server
            .send(Method::POST, path, &all, &body.to_string())
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    }
}

#[tokio::test]
async fn order_blueprint_is_the_orders_api() {
    let server = shop().await;
    // The tutorial's clients name products; product_id works as on /orders.
    let by_name = created(
        &server,
        "/api/orders/",
        json!({"customer_id": 1, "items": [{"name": "Mojito", "quantity": 2}, {"name": "Lime", "quantity": 4}]}),
    )
    .await;
    assert_eq!(by_name["id"], 1);
    assert_eq!(by_name["items"][0]["product_id"], 1);
    assert_eq!(by_name["items"][1]["product_id"], 2);
    assert_eq!(by_name["grand_total"], 17.0);
    assert_eq!(by_name["processed"], Value::Null);
    assert!(by_name["created"].as_u64().unwrap() > 0);
    let by_id = created(
        &server,
        "/api/orders",
        json!({"customer_id": 1, "items": [{"product_id": 1, "quantity": 1}]}),
    )
    .await;
    assert_eq!(by_id["id"], 2);
    let unknown = send(
        &server,
        Method::POST,
        "/api/orders/",
        json!({"customer_id": 1, "items": [{"name": "Mojito", "quantity": 1}, {"name": "Gin", "quantity": 1}]}),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(unknown.error(), "items[1]: no product is named \"Gin\"");
    assert_eq!(unknown.json()["item"], 1);
    let bad_quantity = send(
        &server,
        Method::POST,
        "/api/orders/",
        json!({"customer_id": 1, "items": [{"name": "Mojito", "quantity": 0}]}),
    )
    .await;
    assert_eq!(bad_quantity.status, StatusCode::UNPROCESSABLE_ENTITY);
    let no_customer = send(
        &server,
        Method::POST,
        "/api/orders/",
        json!({"customer_id": 9, "items": [{"name": "Mojito", "quantity": 1}]}),
    )
    .await;
    assert_eq!(no_customer.status, StatusCode::UNPROCESSABLE_ENTITY);
    // Nothing was made by the refused ones.
    for root in roots("orders") {
        let listed = server.get(&root).await;
        assert_eq!(listed.status, StatusCode::OK, "{root}");
        assert_eq!(listed.json(), server.get("/orders").await.json(), "{root}");
        let ids: Vec<u64> = listed
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["id"].as_u64().unwrap())
            .collect();
        assert_eq!(ids, [1, 2]);
    }
    let filtered = server.get("/api/orders/?limit=1").await;
    assert_eq!(filtered.json().as_array().unwrap().len(), 1);
    let first = &filtered.json()[0];
    let cursor = format!("{}.{}", first["created"], first["id"]);
    assert_eq!(filtered.header("x-next-cursor"), Some(&*cursor));

    let one = server.get("/api/orders/1").await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.json(), server.get("/orders/1").await.json());
    assert_eq!(
        server.get("/api/orders/99").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        server.get("/api/orders/abc").await.status,
        StatusCode::NOT_FOUND
    );
    let missing = send(&server, Method::DELETE, "/api/orders/99", Value::Null).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let missing = send(
        &server,
        Method::PUT,
        "/api/orders/99",
        json!({"process": true}),
    )
    .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    // An order not processed yet may go.
    let deleted = send(&server, Method::DELETE, "/api/orders/2", Value::Null).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_eq!(
        server.get("/api/orders/2").await.status,
        StatusCode::NOT_FOUND
    );

    // Processed: the server refuses to delete it, on both paths.
    let processed = send(
        &server,
        Method::PUT,
        "/api/orders/1",
        json!({"process": true, "strategy": "reject"}),
    )
    .await;
    assert_eq!(processed.status, StatusCode::OK, "{:?}", processed.body);
    assert!(processed.json()["processed"].as_u64().is_some());
    for path in ["/api/orders/1", "/orders/1"] {
        let refused = send(&server, Method::DELETE, path, Value::Null).await;
        assert_eq!(refused.status, StatusCode::CONFLICT, "{path}");
        assert_eq!(
            refused.error(),
            "order is processed and cannot be deleted",
            "{path}"
        );
    }
    assert_eq!(server.get("/api/orders/1").await.status, StatusCode::OK);
    assert_eq!(server.get("/api/customers/1").await.json()["balance"], 33.0);
    assert_eq!(server.get("/api/products/1").await.json()["stock"], 8);
}

#[tokio::test]
async fn a_name_two_products_share_is_refused() {
    let server = shop().await;
    created(
        &server,
        "/api/products/",
        json!({"name": "Lime", "price": 1}),
    )
    .await;
    let reply = send(
        &server,
        Method::POST,
        "/api/orders/",
        json!({"customer_id": 1, "items": [{"name": "Lime", "quantity": 1}]}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        reply
            .error()
            .contains("several products are named \"Lime\""),
        "{}",
        reply.error()
    );
}

const STAFF: &str = "token staff-t";
const ANN: &str = "token ann-t";
const BOB: &str = "token bob-t";

fn auth_config() -> order_broker::Config {
    let mut config = common::config();
    let token = |token: &str, role, subject: Option<&str>| StaticToken {
        token: Secret(token.into()),
        role,
        subject: subject.map(str::to_string),
    };
    config.auth.tokens = vec![
        token("staff-t", Role::Staff, Some("sam")),
        token("ann-t", Role::Customer, Some("1")),
        token("bob-t", Role::Customer, Some("2")),
    ];
    config
}

/// With auth on: products 1 and 2, customers 1 (Ann) and 2 (Bob), order 1 of
/// Ann's (processed) and order 2 of Ann's (not).
async fn auth_shop() -> TestServer {
    let server = TestServer::with_config(auth_config()).await;
    let staff = ("authorization", STAFF);
    shop_on(&server, &[staff]).await;
    let post = |path: &'static str, body: Value| {
        let server = &server;
        async move {
            let reply = server
                .send(Method::POST, path, &[JSON, staff], &body.to_string())
                .await;
            assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        }
    };
    post("/customers", json!({"name": "Bob", "balance": 5})).await;
    for _ in 0..2 {
        post(
            "/orders",
            json!({"customer_id": 1, "items": [{"product_id": 1, "quantity": 1}]}),
        )
        .await;
    }
    let reply = server
        .send(
            Method::PUT,
            "/api/orders/1",
            &[JSON, staff],
            r#"{"process": true}"#,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    server
}

#[tokio::test]
async fn blueprints_let_in_whom_the_broker_routes_let_in() {
    // (method, blueprint path, broker path, body): each is sent by each caller
    // to a fresh broker on both paths, and must get the same status.
    let cases: &[(Method, &str, &str, Value)] = &[
        (Method::GET, "/api/products/", "/products", Value::Null),
        (Method::GET, "/api/products", "/products", Value::Null),
        (
            Method::POST,
            "/api/products/",
            "/products",
            json!({"name": "Gin", "price": 9}),
        ),
        (Method::GET, "/api/products/1", "/products/1", Value::Null),
        (
            Method::PUT,
            "/api/products/1",
            "/products/1",
            json!({"stock": 1}),
        ),
        (
            Method::DELETE,
            "/api/products/2",
            "/products/2",
            Value::Null,
        ),
        (Method::GET, "/api/customers/", "/customers", Value::Null),
        (Method::GET, "/api/customers", "/customers", Value::Null),
        (
            Method::POST,
            "/api/customers/",
            "/customers",
            json!({"name": "Cy"}),
        ),
        (Method::GET, "/api/customers/1", "/customers/1", Value::Null),
        (
            Method::PUT,
            "/api/customers/1",
            "/customers/1",
            json!({"balance": 1}),
        ),
        (
            Method::DELETE,
            "/api/customers/2",
            "/customers/2",
            Value::Null,
        ),
        (Method::GET, "/api/orders/", "/orders", Value::Null),
        (Method::GET, "/api/orders", "/orders", Value::Null),
        (
            Method::POST,
            "/api/orders/",
            "/orders",
            json!({"customer_id": 1, "items": [{"product_id": 1, "quantity": 1}]}),
        ),
        (Method::GET, "/api/orders/2", "/orders/2", Value::Null),
        (Method::DELETE, "/api/orders/2", "/orders/2", Value::Null),
        (Method::DELETE, "/api/orders/1", "/orders/1", Value::Null),
    ];
    let mut seen = Vec::new();
    for (method, api, broker, body) in cases {
        for token in [None, Some(STAFF), Some(ANN), Some(BOB)] {
            let mut statuses = Vec::new();
            for path in [api, broker] {
                let server = auth_shop().await;
                let mut headers = vec![JSON];
                if let Some(token) = token {
                    headers.push(("authorization", token));
                }
                let body = if body.is_null() {
                    String::new()
                } else {
                    body.to_string()
                };
                statuses.push(
                    server
                        .send(method.clone(), path, &headers, &body)
                        .await
                        .status,
                );
            }
            assert_eq!(
                statuses[0], statuses[1],
                "{method} {api} vs {broker} with {token:?}"
            );
            seen.push(statuses[0]);
        }
    }
    // The matrix holds every kind of answer, so it compares something.
    for status in [200, 201, 204, 401, 403, 409] {
        assert!(
            seen.iter().any(|s| s.as_u16() == status),
            "no {status} in {seen:?}"
        );
    }
    // The page itself holds no data: anyone may load it.
    let server = auth_shop().await;
    let page = server.get("/store").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    // Only its own script runs (the Chromium tests show it does), and no
    // other site may frame its buttons.
    let policy = page.header("content-security-policy").unwrap();
    assert!(policy.contains("script-src 'sha256-"), "{policy}");
    assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    assert!(policy.contains("connect-src 'self'"), "{policy}");
    assert_eq!(
        server.get("/api/customers/").await.status,
        StatusCode::UNAUTHORIZED
    );
}

struct Page {
    socket: DevToolsSocket,
    next_id: u64,
}

impl Page {
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        browser::call(
            &mut self.socket,
            self.next_id,
            method,
            params,
            Duration::from_secs(10),
        )
        .await
    }

    async fn eval(&mut self, expression: &str) -> Value {
        self.next_id += 1;
        browser::evaluate(
            &mut self.socket,
            self.next_id,
            expression,
            Duration::from_secs(10),
        )
        .await
    }

    /// What the page shows, as the user reads it.
    async fn shown(&mut self) -> Value {
        let expression = r#"JSON.stringify({
            notice: document.getElementById('notice').hidden ? '' : document.getElementById('notice').innerText,
            rows: [...document.querySelectorAll('tr.order')].map(r => [+r.dataset.id, r.dataset.state]),
            detail: document.getElementById('detail-body').hidden ? null : +document.getElementById('detail-body').dataset.id,
            empty: document.getElementById('detail-empty').hidden ? '' : document.getElementById('detail-empty').innerText,
            state: document.getElementById('detail-state').innerText,
            balance: document.getElementById('customer-balance').innerText,
            customer: document.getElementById('customer-name').innerText,
            processed: document.getElementById('processed').innerText,
            items: [...document.querySelectorAll('#items tr')].map(r => r.innerText),
            stock: [...document.querySelectorAll('#items td.stock')].map(td => td.innerText),
            tags: document.querySelectorAll('#detail-body b, #order-rows b').length,
            outcome: document.getElementById('outcome').innerText,
            outcome_kind: document.getElementById('outcome').className
        })"#;
        self.eval(expression)
            .await
            .as_str()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or(Value::Null)
    }

    /// Waits until `check` holds for what the page shows.
    async fn wait_until(&mut self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        for _ in 0..150 {
            last = self.shown().await;
            if check(&last) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the page never showed {what}; it shows {last:#}");
    }

    async fn click(&mut self, selector: &str) {
        let expression = format!("document.querySelector({selector:?}).click(), true");
        assert_eq!(self.eval(&expression).await, json!(true), "{selector}");
    }

    /// Types `text` into the field as a user does (focus, then keystrokes).
    async fn type_into(&mut self, selector: &str, text: &str) {
        let expression = format!("document.querySelector({selector:?}).focus(), true");
        assert_eq!(self.eval(&expression).await, json!(true));
        self.call("Input.insertText", json!({"text": text})).await;
    }

    async fn choose(&mut self, selector: &str, value: &str) {
        let expression = format!(
            "(() => {{ const s = document.querySelector({selector:?}); s.value = {value:?}; \
             s.dispatchEvent(new Event('change')); return s.value; }})()"
        );
        assert_eq!(self.eval(&expression).await, json!(value));
    }
}

async fn open(server: &TestServer, bin: &str) -> (Browser, Page) {
    let browser = Browser::launch(bin, &format!("http://{}/store", server.addr), &[]);
    let socket = browser.devtools().await;
    (browser, Page { socket, next_id: 0 })
}

fn chromium_or_skip() -> Option<&'static str> {
    let bin = chromium();
    if bin.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have chromium (.ci/run installs it)"
        );
        eprintln!("SKIPPED: chromium is not installed (apt-get install chromium)");
    }
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_page_processes_and_shows_refusals_in_chromium() {
    let Some(bin) = chromium_or_skip() else {
        return;
    };
    let server = shop().await;
    // Markup in data is shown as text, never run or rendered.
    created(
        &server,
        "/api/products/",
        json!({"name": "<b>Tonic</b>", "price": 1, "stock": 1}),
    )
    .await;
    created(
        &server,
        "/api/customers/",
        json!({"name": "<b>Bob</b>", "balance": 0}),
    )
    .await;
    // 1: Ann's, 4 Mojitos (30.00) and 2 Tonics of the 1 there is; 2: Bob's
    // (no balance); 3: Ann's, to delete unprocessed.
    let one = json!({"customer_id": 1, "items": [{"name": "Mojito", "quantity": 4}, {"name": "<b>Tonic</b>", "quantity": 2}]});
    created(&server, "/api/orders/", one).await;
    created(
        &server,
        "/api/orders/",
        json!({"customer_id": 2, "items": [{"name": "Lime", "quantity": 1}]}),
    )
    .await;
    created(
        &server,
        "/api/orders/",
        json!({"customer_id": 1, "items": [{"name": "Lime", "quantity": 1}]}),
    )
    .await;

    let (_browser, mut page) = open(&server, bin).await;
    page.wait_until("three pending orders", |s| {
        s["rows"] == json!([[1, "pending"], [2, "pending"], [3, "pending"]])
    })
    .await;
    page.click("tr.order[data-id='1']").await;
    let shown = page
        .wait_until("order 1", |s| {
            s["detail"] == 1 && s["balance"] == "50.00" && s["stock"] == json!(["10", "1"])
        })
        .await;
    assert_eq!(shown["state"], "pending");
    assert_eq!(shown["processed"], "not yet");
    assert!(
        shown["customer"].as_str().unwrap().starts_with("Ann"),
        "{shown}"
    );
    assert!(
        shown["items"][1].as_str().unwrap().contains("<b>Tonic</b>"),
        "{shown}"
    );
    assert_eq!(shown["tags"], 0);

    // reject: one item is short, so nothing changes; the server's reason shows.
    page.choose("#strategy", "reject").await;
    page.click("#process").await;
    let shown = page
        .wait_until("the rejection", |s| s["outcome_kind"] == "refused")
        .await;
    let outcome = shown["outcome"].as_str().unwrap();
    assert!(
        outcome.starts_with("Refused (400): ") && outcome.contains("(rejected)"),
        "{outcome}"
    );
    assert_eq!(server.get("/api/customers/1").await.json()["balance"], 50.0);
    assert_eq!(server.get("/api/products/1").await.json()["stock"], 10);

    // adjust: the Tonics are lowered to the one in stock; 4 × 7.50 + 1 × 1.
    page.choose("#strategy", "adjust").await;
    page.click("#process").await;
    let shown = page
        .wait_until("order 1 processed", |s| {
            s["outcome_kind"] == "ok"
                && s["state"] == "processed"
                && s["balance"] == "19.00"
                && s["rows"][0] == json!([1, "processed"])
        })
        .await;
    assert!(
        shown["outcome"].as_str().unwrap().contains("charged 31.00"),
        "{shown}"
    );
    assert_eq!(shown["stock"], json!(["6", "0"]));
    assert_ne!(shown["processed"], "not yet");
    assert_eq!(shown["rows"][0], json!([1, "processed"]));
    assert_eq!(server.get("/api/customers/1").await.json()["balance"], 19.0);
    assert_eq!(server.get("/api/products/1").await.json()["stock"], 6);
    assert_eq!(server.get("/api/products/3").await.json()["stock"], 0);

    // Processed orders stay: the refusal is the server's text.
    page.click("#delete").await;
    let shown = page
        .wait_until("the delete refused", |s| s["outcome_kind"] == "refused")
        .await;
    assert_eq!(
        shown["outcome"],
        "Refused (409): order is processed and cannot be deleted"
    );
    assert_eq!(server.get("/api/orders/1").await.status, StatusCode::OK);
    // Never twice: the server says so, the page shows it.
    page.click("#process").await;
    let shown = page
        .wait_until("the second processing refused", |s| {
            s["outcome"]
                .as_str()
                .is_some_and(|o| o.contains("already_processed"))
        })
        .await;
    assert_eq!(shown["outcome_kind"], "refused");
    assert_eq!(server.get("/api/customers/1").await.json()["balance"], 19.0);

    // Bob has nothing to spend.
    page.click("tr.order[data-id='2']").await;
    page.wait_until("order 2", |s| s["detail"] == 2 && s["outcome"] == "")
        .await;
    page.click("#process").await;
    let shown = page
        .wait_until("the balance refusal", |s| s["outcome_kind"] == "refused")
        .await;
    assert!(
        shown["outcome"]
            .as_str()
            .unwrap()
            .contains("(insufficient_balance)"),
        "{shown}"
    );
    assert!(
        shown["customer"]
            .as_str()
            .unwrap()
            .starts_with("<b>Bob</b>"),
        "{shown}"
    );
    assert_eq!(shown["tags"], 0);
    assert_eq!(
        server.get("/api/orders/2").await.json()["processed"],
        Value::Null
    );

    // An order not processed yet is deleted.
    page.click("tr.order[data-id='3']").await;
    page.wait_until("order 3", |s| s["detail"] == 3).await;
    page.click("#delete").await;
    let shown = page
        .wait_until("order 3 gone", |s| {
            s["rows"] == json!([[1, "processed"], [2, "pending"]])
        })
        .await;
    assert_eq!(shown["empty"], "Order 3 was deleted.");
    assert_eq!(
        server.get("/api/orders/3").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_page_works_with_a_staff_token_typed_in_chromium() {
    let Some(bin) = chromium_or_skip() else {
        return;
    };
    let server = auth_shop().await;
    let (_browser, mut page) = open(&server, bin).await;
    // Anonymous: a prompt, not a blank page.
    let shown = page
        .wait_until("the token prompt", |s| {
            s["notice"]
                .as_str()
                .is_some_and(|n| n.contains("staff token"))
        })
        .await;
    assert_eq!(shown["rows"], json!([]));
    // A customer's token may not list every order: the page says so.
    page.type_into("#token", ANN).await;
    page.click("#token-save").await;
    page.wait_until("the customer refused", |s| {
        s["notice"]
            .as_str()
            .is_some_and(|n| n.contains("Not enough permissions"))
    })
    .await;
    // Staff, typed without its scheme.
    page.type_into("#token", "staff-t").await;
    page.click("#token-save").await;
    page.wait_until("the orders", |s| {
        s["notice"] == "" && s["rows"] == json!([[1, "processed"], [2, "pending"]])
    })
    .await;
    page.click("tr.order[data-id='2']").await;
    page.wait_until("order 2", |s| s["detail"] == 2 && s["balance"] == "42.50")
        .await;
    page.click("#process").await;
    let shown = page
        .wait_until("order 2 processed", |s| {
            s["state"] == "processed" && s["balance"] == "35.00"
        })
        .await;
    assert_eq!(shown["stock"], json!(["8"]));
    let staff = [("authorization", STAFF)];
    let ann = server
        .send(Method::GET, "/api/customers/1", &staff, "")
        .await
        .json();
    assert_eq!(ann["balance"], 35.0);
    page.click("#delete").await;
    let shown = page
        .wait_until("the delete refused", |s| s["outcome_kind"] == "refused")
        .await;
    assert_eq!(
        shown["outcome"],
        "Refused (409): order is processed and cannot be deleted"
    );
    // The token is kept for the tab: a reload still works.
    page.call("Page.reload", json!({})).await;
    page.wait_until("the orders again", |s| {
        s["rows"] == json!([[1, "processed"], [2, "processed"]])
    })
    .await;
}
