//! CPEE's protocol over real HTTP, with a local server playing CPEE: it
//! receives the callback PUTs and answers with scripted statuses.

mod common;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{Reply, TestServer};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use order_broker::Config;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

/// One PUT CPEE received.
#[derive(Debug)]
struct Put {
    path: String,
    update: bool,
    body: Value,
}

struct FakeCpee {
    addr: SocketAddr,
    puts: mpsc::UnboundedReceiver<Put>,
    /// Statuses to answer with, in order; 200 once they run out.
    script: Arc<Mutex<VecDeque<u16>>>,
}

impl FakeCpee {
    async fn start() -> FakeCpee {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, puts) = mpsc::unbounded_channel();
        let script = Arc::new(Mutex::new(VecDeque::new()));
        let answers = script.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (tx, answers) = (tx.clone(), answers.clone());
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (tx, answers) = (tx.clone(), answers.clone());
                    async move {
                        let path = req.uri().path().to_string();
                        let update = req
                            .headers()
                            .get("cpee-update")
                            .is_some_and(|v| v == "true");
                        assert_eq!(req.method(), Method::PUT);
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let _ = tx.send(Put {
                            path,
                            update,
                            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                        });
                        let status = answers.lock().unwrap().pop_front().unwrap_or(200);
                        let mut response = Response::new(Full::new(Bytes::new()));
                        *response.status_mut() = StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(response)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        FakeCpee { addr, puts, script }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn next_put(&mut self) -> Put {
        tokio::time::timeout(Duration::from_secs(5), self.puts.recv())
            .await
            .expect("CPEE got no PUT")
            .unwrap()
    }

    async fn no_put(&mut self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.puts.recv()).await.is_err()
    }
}

fn fast_config() -> Config {
    let mut config = common::config();
    config.cpee.callback_backoff_ms = 10;
    config.cpee.callback_timeout_ms = 1000;
    config
}

async fn post(server: &TestServer, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut all = vec![FORM];
    all.extend_from_slice(headers);
    server.send(Method::POST, path, &all, body).await
}

async fn intake(server: &TestServer, body: &str) -> u64 {
    let reply = post(server, "/orders/intake", &[], body).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    reply.json()["order_id"].as_u64().unwrap()
}

#[tokio::test]
async fn intake_then_work_at_once() {
    let server = TestServer::with_config(fast_config()).await;
    let id = intake(&server, "drink=Mojito&size=L&name=Ann").await;
    assert_eq!(
        server.get("/get_new_orders").await.json(),
        json!({"new_orders": [id]})
    );
    let reply = post(&server, "/cpee/next-order", &[], "orderbot_id=bot-1").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("cpee-callback"), None);
    let order = reply.json();
    assert_eq!(
        (order["id"].as_u64(), order["orderbot_id"].as_str()),
        (Some(id), Some("bot-1"))
    );
    assert_eq!(order["status"], "Order Initiated");
    assert_eq!(
        order["details"],
        json!({"drink": "Mojito", "size": "L", "name": "Ann"})
    );
    // Nothing left: without a callback or a wait, 204.
    assert_eq!(
        post(&server, "/cpee/next-order", &[], "orderbot_id=bot-1")
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let reply = server
        .send(Method::GET, "/cpee/next-order?orderbot_id=bot-2", &[], "")
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(
        post(&server, "/cpee/next-order", &[], "").await.status,
        StatusCode::BAD_REQUEST
    );
    // JSON and multipart intakes work too.
    let reply = server
        .send(
            Method::POST,
            "/orders/intake",
            &[("content-type", "application/json")],
            r#"{"drink": "Tea", "sugar": 2}"#,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn waiting_orderbots_get_orders_by_callback_oldest_first() {
    let server = TestServer::with_config(fast_config()).await;
    let mut cpee = FakeCpee::start().await;
    for bot in ["a", "b", "c"] {
        let url = cpee.url(&format!("/callbacks/{bot}"));
        let headers = [("cpee-callback", url.as_str()), ("cpee-instance", bot)];
        let reply = post(&server, "/cpee/next-order", &headers, "").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.header("cpee-callback"), Some("true"));
        assert!(reply.body.is_empty());
    }
    assert_eq!(
        server
            .get("/cpee/callbacks")
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let ids = [
        intake(&server, "drink=A").await,
        intake(&server, "drink=B").await,
        intake(&server, "drink=C").await,
    ];
    let mut got = Vec::new();
    for _ in 0..3 {
        let put = cpee.next_put().await;
        assert!(!put.update);
        let bot = put.path.rsplit('/').next().unwrap().to_string();
        assert_eq!(
            put.body["orderbot_id"],
            bot.as_str(),
            "the orderbot comes from CPEE-INSTANCE"
        );
        got.push((bot, put.body["id"].as_u64().unwrap()));
    }
    got.sort();
    assert_eq!(
        got,
        [
            ("a".into(), ids[0]),
            ("b".into(), ids[1]),
            ("c".into(), ids[2])
        ]
    );
    assert!(
        cpee.no_put(Duration::from_millis(200)).await,
        "each order goes to one orderbot"
    );
    assert_eq!(server.get("/cpee/callbacks").await.json(), json!([]));
}

#[tokio::test]
async fn resent_calls_take_nothing_twice() {
    let server = TestServer::with_config(fast_config()).await;
    let mut cpee = FakeCpee::start().await;
    let url = cpee.url("/cb/1");
    let headers = [
        ("cpee-callback", url.as_str()),
        ("cpee-callback-id", "cb-17"),
        ("cpee-instance-uuid", "uuid-1"),
        ("cpee-instance", "bot-x"),
    ];
    for _ in 0..3 {
        let reply = post(&server, "/cpee/next-order", &headers, "").await;
        assert_eq!(reply.header("cpee-callback"), Some("true"));
    }
    assert_eq!(
        server
            .get("/cpee/callbacks")
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let intake_headers = [
        ("cpee-callback-id", "cb-18"),
        ("cpee-instance-uuid", "uuid-2"),
    ];
    let first = post(&server, "/orders/intake", &intake_headers, "drink=Tea")
        .await
        .json();
    let again = post(&server, "/orders/intake", &intake_headers, "drink=Tea")
        .await
        .json();
    assert_eq!(first, again);
    assert_eq!(
        server.broker.len(),
        1,
        "a re-sent intake takes no second order"
    );
    assert_eq!(cpee.next_put().await.body["id"], first["order_id"]);
    assert!(cpee.no_put(Duration::from_millis(200)).await);
}

#[tokio::test]
async fn long_polls_wait_for_work() {
    let server = TestServer::with_config(fast_config()).await;
    let started = std::time::Instant::now();
    let reply = post(&server, "/cpee/next-order?wait=1", &[], "orderbot_id=p").await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert!(started.elapsed() >= Duration::from_millis(900));

    let mut client = server.client().await;
    let poll = tokio::spawn(async move {
        client
            .send(
                Method::POST,
                "/cpee/next-order",
                &[FORM],
                "orderbot_id=p&wait=5",
            )
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let id = intake(&server, "drink=Late").await;
    let reply = poll.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["id"], id);
    assert_eq!(
        post(&server, "/cpee/next-order", &[], "orderbot_id=p&wait=x")
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn waiting_for_a_state_with_updates() {
    let server = TestServer::with_config(fast_config()).await;
    let mut cpee = FakeCpee::start().await;
    server
        .put_json("/update_order", r#"{"id": 7, "status": "Order Initiated"}"#)
        .await;

    // Already there: answered at once, no callback.
    let reply = post(&server, "/cpee/wait", &[], "order_id=7&stage=new").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["id"], 7);

    let url = cpee.url("/wait/7");
    let headers = [("cpee-callback", url.as_str())];
    let reply = post(
        &server,
        "/cpee/wait",
        &headers,
        "order_id=7&status=Order+Served&updates=true",
    )
    .await;
    assert_eq!(reply.header("cpee-callback"), Some("true"));
    let pending = server.get("/cpee/callbacks").await.json();
    assert_eq!(
        (pending[0]["kind"].as_str(), pending[0]["order_id"].as_u64()),
        (Some("wait"), Some(7))
    );

    server
        .put_json("/update_order", r#"{"id": 7, "status": "Mixing"}"#)
        .await;
    let put = cpee.next_put().await;
    assert!(put.update, "an intermediate change is marked CPEE-UPDATE");
    assert_eq!(put.body["status"], "Mixing");
    server
        .put_json("/update_order", r#"{"id": 7, "status": "Order Served"}"#)
        .await;
    let put = cpee.next_put().await;
    assert!(!put.update);
    assert_eq!(
        (put.path.as_str(), put.body["status"].as_str()),
        ("/wait/7", Some("Order Served"))
    );
    assert!(cpee.no_put(Duration::from_millis(200)).await);
    assert_eq!(server.get("/cpee/callbacks").await.json(), json!([]));

    assert_eq!(
        post(&server, "/cpee/wait", &headers, "order_id=99&stage=new")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        post(&server, "/cpee/wait", &headers, "order_id=7")
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        post(&server, "/cpee/wait", &headers, "order_id=7&stage=done")
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        post(&server, "/cpee/wait", &[], "order_id=7&stage=new")
            .await
            .status,
        StatusCode::CONFLICT
    );
}

/// With `cpee.min_update_interval_ms`, a callback's next update goes no
/// sooner than that after the last one, and changes meanwhile coalesce
/// into the newest; a final answer that comes while an update waits
/// replaces it and is not held back.
#[tokio::test]
async fn updates_are_coalesced_and_spaced_but_final_answers_are_not_held() {
    const INTERVAL: Duration = Duration::from_millis(1000);
    let mut config = fast_config();
    config.cpee.min_update_interval_ms = INTERVAL.as_millis() as u64;
    let server = TestServer::with_config(config).await;
    let mut cpee = FakeCpee::start().await;
    let set = |status: &str| format!(r#"{{"id": 7, "status": "{status}"}}"#);
    server
        .put_json("/update_order", &set("Order Initiated"))
        .await;
    let url = cpee.url("/wait/7");
    let reply = post(
        &server,
        "/cpee/wait",
        &[("cpee-callback", url.as_str())],
        "order_id=7&status=Order+Served&updates=true",
    )
    .await;
    assert_eq!(reply.header("cpee-callback"), Some("true"));

    // The first update goes at once.
    server.put_json("/update_order", &set("Mixing")).await;
    let put = cpee.next_put().await;
    let first = std::time::Instant::now();
    assert_eq!(
        (put.update, put.body["status"].as_str()),
        (true, Some("Mixing"))
    );
    // Two more changes at once: one PUT, the newer, after the interval.
    server.put_json("/update_order", &set("Pouring")).await;
    server.put_json("/update_order", &set("Shaking")).await;
    let put = cpee.next_put().await;
    let second = std::time::Instant::now();
    assert_eq!(
        (put.update, put.body["status"].as_str()),
        (true, Some("Shaking"))
    );
    assert!(
        second - first >= INTERVAL - Duration::from_millis(100),
        "the second update came {:?} after the first",
        second - first
    );
    // An update that must wait, then the target: the final answer comes
    // at once instead, and the update never.
    server.put_json("/update_order", &set("Stirring")).await;
    server.put_json("/update_order", &set("Order Served")).await;
    let put = cpee.next_put().await;
    assert!(
        second.elapsed() < INTERVAL,
        "the final answer waited for the update interval"
    );
    assert_eq!(
        (put.update, put.body["status"].as_str()),
        (false, Some("Order Served"))
    );
    assert!(cpee.no_put(INTERVAL + Duration::from_millis(200)).await);
    assert_eq!(server.get("/cpee/callbacks").await.json(), json!([]));
}

#[tokio::test]
async fn delivery_retries_server_errors_and_stops_on_a_closed_callback() {
    let server = TestServer::with_config(fast_config()).await;
    let mut cpee = FakeCpee::start().await;
    cpee.script.lock().unwrap().extend([500, 502]);
    let url = cpee.url("/retry");
    post(
        &server,
        "/cpee/next-order",
        &[("cpee-callback", url.as_str())],
        "orderbot_id=r",
    )
    .await;
    let id = intake(&server, "drink=Retry").await;
    for _ in 0..3 {
        assert_eq!(cpee.next_put().await.body["id"], id);
    }
    assert!(
        cpee.no_put(Duration::from_millis(200)).await,
        "delivered on the third try"
    );

    // CPEE closed the callback (404): the order goes back to the queue.
    cpee.script.lock().unwrap().push_back(404);
    let url = cpee.url("/closed");
    post(
        &server,
        "/cpee/next-order",
        &[("cpee-callback", url.as_str())],
        "orderbot_id=gone",
    )
    .await;
    let id = intake(&server, "drink=Again").await;
    assert_eq!(cpee.next_put().await.path, "/closed");
    assert!(
        cpee.no_put(Duration::from_millis(200)).await,
        "no retry after 404"
    );
    let reply = post(&server, "/cpee/next-order", &[], "orderbot_id=next").await;
    assert_eq!(
        reply.json()["id"],
        id,
        "the undelivered order is handed out again"
    );
    assert_eq!(reply.json()["orderbot_id"], "next");
}

#[tokio::test]
async fn callbacks_can_be_cancelled_and_restricted() {
    let mut config = fast_config();
    config.cpee.callback_allow = vec!["127.0.0.1".into()];
    let server = TestServer::with_config(config).await;
    let mut cpee = FakeCpee::start().await;
    let url = cpee.url("/cancel-me");
    post(
        &server,
        "/cpee/next-order",
        &[("cpee-callback", url.as_str())],
        "orderbot_id=c",
    )
    .await;
    let id = server.get("/cpee/callbacks").await.json()[0]["id"]
        .as_u64()
        .unwrap();
    assert_eq!(
        server
            .send(Method::DELETE, &format!("/cpee/callbacks/{id}"), &[], "")
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        server
            .send(Method::DELETE, &format!("/cpee/callbacks/{id}"), &[], "")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let order = intake(&server, "drink=Queued").await;
    assert!(
        cpee.no_put(Duration::from_millis(200)).await,
        "a cancelled callback gets nothing"
    );
    assert_eq!(
        post(&server, "/cpee/next-order", &[], "orderbot_id=d")
            .await
            .json()["id"],
        order
    );

    for bad in ["http://10.1.2.3:9/cb", "http://localhost:9/cb"] {
        let reply = post(
            &server,
            "/cpee/next-order",
            &[("cpee-callback", bad)],
            "orderbot_id=x",
        )
        .await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{bad}");
    }
    let reply = post(
        &server,
        "/cpee/next-order",
        &[("cpee-callback", "ftp://127.0.0.1/x")],
        "orderbot_id=x",
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

/// A wait whose callback points at the broker's own `/update_order`: each
/// update callback would change the order and trigger the next, for ever.
/// The broker refuses its own callbacks (508), so the loop never starts.
#[tokio::test]
async fn a_callback_pointed_at_the_broker_itself_does_not_loop() {
    let server = TestServer::with_config(fast_config()).await;
    server
        .put_json("/update_order", r#"{"id": 7, "status": "Order Initiated"}"#)
        .await;
    let url = format!("http://{}/update_order", server.addr);
    let headers = [("cpee-callback", url.as_str())];
    let reply = post(
        &server,
        "/cpee/wait",
        &headers,
        "order_id=7&status=Order+Served&updates=true",
    )
    .await;
    assert_eq!(reply.header("cpee-callback"), Some("true"));
    server
        .put_json("/update_order", r#"{"id": 7, "status": "Mixing"}"#)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let version = server.get("/get_status/7").await;
    let order = server.broker.get(order_broker::OrderId(7)).unwrap();
    assert_eq!(
        order.version.0, 2,
        "only the two updates this test made changed the order: {:?}",
        version.body
    );
    // The callback was given up at the first 508, not retried.
    assert_eq!(server.get("/cpee/callbacks").await.json(), json!([]));
    // A request that carries the broker's callback mark is refused outright.
    let reply = server
        .send(
            Method::PUT,
            "/update_order",
            &[
                ("content-type", "application/json"),
                ("order-broker-callback", "1"),
            ],
            r#"{"id": 7, "status": "Pouring"}"#,
        )
        .await;
    assert_eq!(reply.status, StatusCode::LOOP_DETECTED);
}

/// A bar whose shop is protected and whose CPEE group is open to the
/// engine's network (here, loopback), with a staff and two customer tokens.
fn protected_bar() -> Config {
    use order_broker::auth::Role;
    use order_broker::auth::{Secret, StaticToken};
    let mut config = fast_config();
    let token = |token: &str, role, subject: &str| StaticToken {
        token: Secret(token.into()),
        role,
        subject: Some(subject.into()),
    };
    config.auth.tokens = vec![
        token("staff-t", Role::Staff, "sam"),
        token("cust-5", Role::Customer, "5"),
        token("cust-6", Role::Customer, "6"),
    ];
    config.auth.open = ["views", "ops", "seed_writes", "cpee"]
        .iter()
        .map(|g| serde_json::from_value(json!(g)).unwrap())
        .collect();
    config.auth.cpee_networks = vec!["127.0.0.0/8".into()];
    config.validate().unwrap();
    config
}

#[tokio::test]
async fn cpee_answers_show_each_caller_only_what_it_may_see() {
    let server = TestServer::with_config(protected_bar()).await;
    let staff = ("authorization", "token staff-t");
    let json = ("content-type", "application/json");
    for (id, name) in [(5, "Five"), (6, "Six")] {
        let body = json!({"id": id, "name": name, "balance": 100});
        let reply = server
            .send(
                Method::POST,
                "/customers",
                &[staff, json],
                &body.to_string(),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    }
    let product = json!({"name": "Mojito", "price": 7.5, "stock": 10});
    let reply = server
        .send(
            Method::POST,
            "/products",
            &[staff, json],
            &product.to_string(),
        )
        .await;
    let product = reply.json()["id"].as_u64().unwrap();
    let order = json!({"customer_id": 5, "items": [{"product_id": product, "quantity": 1}],
                       "notes": "ring twice, code 4711"});
    let reply = server
        .send(Method::POST, "/orders", &[staff, json], &order.to_string())
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    let id = reply.json()["id"].as_u64().unwrap();
    let wait = format!("order_id={id}&stage=new");

    // The engine (no token, from its network) is trusted with whole orders.
    let reply = post(&server, "/cpee/wait", &[], &wait).await;
    assert_eq!(reply.json()["notes"], "ring twice, code 4711");
    // The order's customer sees it all; another customer the board's fields.
    let reply = post(
        &server,
        "/cpee/wait",
        &[("authorization", "token cust-5")],
        &wait,
    )
    .await;
    assert_eq!(reply.json()["notes"], "ring twice, code 4711");
    let reply = post(
        &server,
        "/cpee/wait",
        &[("authorization", "token cust-6")],
        &wait,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.json().get("notes").is_none(), "{:?}", reply.body);
    assert!(!String::from_utf8_lossy(&reply.body).contains("4711"));

    // The same for callbacks: each delivered as its caller may see it.
    let mut cpee = FakeCpee::start().await;
    let until = format!("order_id={id}&status=Order+Served&updates=true");
    for who in ["cust-6", "cust-5"] {
        let url = cpee.url(&format!("/{who}"));
        let auth = format!("token {who}");
        let headers = [
            ("cpee-callback", url.as_str()),
            ("authorization", auth.as_str()),
        ];
        let reply = post(&server, "/cpee/wait", &headers, &until).await;
        assert_eq!(reply.header("cpee-callback"), Some("true"));
    }
    server
        .put_json(
            "/update_order",
            &json!({"id": id, "status": "Mixing"}).to_string(),
        )
        .await;
    let mut seen = std::collections::HashMap::new();
    for _ in 0..2 {
        let put = cpee.next_put().await;
        assert_eq!(put.body["status"], "Mixing");
        seen.insert(put.path.clone(), put.body);
    }
    assert!(
        seen["/cust-6"].get("notes").is_none(),
        "{:?}",
        seen["/cust-6"]
    );
    assert_eq!(seen["/cust-5"]["notes"], "ring twice, code 4711");
}

#[tokio::test]
async fn outside_the_engine_networks_an_open_group_needs_the_usual_role() {
    let mut config = protected_bar();
    config.auth.cpee_networks = vec!["10.0.0.0/8".into()];
    let server = TestServer::with_config(config).await;
    let update = "order_id=1&status=Mixing&orderbot_id=bot-1";
    let put = |token: &'static str| {
        let server = &server;
        async move {
            let mut headers = vec![FORM];
            if !token.is_empty() {
                headers.push(("authorization", token));
            }
            server
                .send(Method::PUT, "/update_order", &headers, update)
                .await
                .status
        }
    };
    assert_eq!(put("").await, StatusCode::UNAUTHORIZED);
    // A customer's token is valid, but outside the engine's networks it
    // does not make the caller an engine.
    assert_eq!(put("token cust-6").await, StatusCode::FORBIDDEN);
    let reply = post(
        &server,
        "/cpee/next-order",
        &[("authorization", "token cust-6")],
        "orderbot_id=thief",
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(put("token staff-t").await, StatusCode::OK);
}

#[tokio::test]
async fn a_trusted_proxy_inside_the_engine_networks_does_not_make_everyone_an_engine() {
    let mut config = protected_bar();
    // The engine network and the proxy in front of the public share it.
    config.http.trusted_proxies = vec!["127.0.0.0/8".into()];
    let server = TestServer::with_config(config).await;
    let reply = server
        .send(
            Method::PUT,
            "/update_order",
            &[FORM],
            "order_id=1&status=Mixing",
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{:?}", reply.body);
    let reply = post(&server, "/cpee/next-order", &[], "orderbot_id=thief").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
}

/// A bad `wait` is refused even when work is waiting: it used to be read
/// only when there was none, so the order was handed out on a request
/// that should have been refused (found by schemathesis).
#[tokio::test]
async fn a_bad_wait_is_refused_even_when_work_is_waiting() {
    let server = TestServer::with_config(fast_config()).await;
    let id = intake(&server, "drink=Mojito").await;
    for wait in ["-1", "false", "1.5"] {
        let path = format!("/cpee/next-order?wait={wait}");
        let reply = post(&server, &path, &[], "orderbot_id=bot-1").await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "wait={wait}");
    }
    // The order is still waiting for a good request.
    let reply = post(&server, "/cpee/next-order", &[], "orderbot_id=bot-1").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["id"].as_u64(), Some(id));
}
