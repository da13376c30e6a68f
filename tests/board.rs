//! The order board in a real browser: headless Chromium loads `/`, the test
//! changes orders over HTTP and reads the page's columns through the DevTools
//! protocol; the page must follow live, show "reconnecting" when the broker
//! goes away, and resync after it restarts. A screenshot lands in
//! `target/board.png`. Without Chromium the test is skipped, except in CI.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use common::TestServer;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|bin| {
            Command::new(bin)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
}

struct Browser {
    child: Child,
    profile: PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Browser {
    fn launch(bin: &str, url: &str) -> Browser {
        let profile =
            std::env::temp_dir().join(format!("order-broker-chromium-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        let child = Command::new(bin)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-quic",
                "--window-size=1280,800",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        Browser { child, profile }
    }

    /// The DevTools WebSocket of the page.
    async fn page_socket(&self) -> String {
        let port_file = self.profile.join("DevToolsActivePort");
        for _ in 0..200 {
            if let Ok(text) = std::fs::read_to_string(&port_file)
                && let Some(port) = text.lines().next().and_then(|p| p.parse::<u16>().ok())
                && let Some(url) = page_target(port).await
            {
                return url;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromium's DevTools did not come up");
    }
}

/// The page's DevTools WebSocket, from `/json/list` (DevTools wants a Host
/// of localhost or an IP).
async fn page_target(port: u16) -> Option<String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect(addr).await.ok()?;
    let host = format!("127.0.0.1:{port}");
    let reply = common::Client::connect(addr)
        .await
        .send(hyper::Method::GET, "/json/list", &[("host", &host)], "")
        .await;
    let targets: Value = serde_json::from_slice(&reply.body).ok()?;
    targets
        .as_array()?
        .iter()
        .find(|t| t["type"] == "page")
        .and_then(|t| t["webSocketDebuggerUrl"].as_str())
        .map(str::to_string)
}

struct DevTools {
    socket: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl DevTools {
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let message = json!({"id": id, "method": method, "params": params}).to_string();
        self.socket.send(Message::text(message)).await.unwrap();
        while let Some(message) = self.socket.next().await {
            if let Ok(Message::Text(text)) = message {
                let value: Value = serde_json::from_str(&text).unwrap();
                if value["id"] == id {
                    return value["result"].clone();
                }
            }
        }
        panic!("DevTools closed");
    }

    /// What the page shows: its connection state and the ids per column.
    async fn board(&mut self) -> Value {
        let expression = r#"JSON.stringify({
            state: document.getElementById('state').textContent,
            new: [...document.querySelectorAll('#col-new .card')].map(c => +c.dataset.id),
            in_progress: [...document.querySelectorAll('#col-in_progress .card')].map(c => +c.dataset.id),
            completed: [...document.querySelectorAll('#col-completed .card')].map(c => +c.dataset.id),
            cards: Object.fromEntries([...document.querySelectorAll('.card')].map(c => [c.dataset.id, c.innerText]))
        })"#;
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await;
        result["result"]["value"]
            .as_str()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or(Value::Null)
    }

    /// Waits until the page shows `want` (a subset of `board()`).
    async fn wait_for(&mut self, want: Value) -> Value {
        let mut last = Value::Null;
        for _ in 0..150 {
            last = self.board().await;
            let matches = want.as_object().unwrap().iter().all(|(k, v)| &last[k] == v);
            if matches {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the board never showed {want}; it shows {last}");
    }
}

async fn set(server: &TestServer, id: u64, status: &str, bot: &str) {
    let body = json!({"id": id, "status": status, "orderbot_id": bot}).to_string();
    server.put_json("/update_order", &body).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_board_follows_orders_live_in_chromium() {
    let Some(bin) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have chromium (.ci/run installs it)"
        );
        eprintln!("SKIPPED: chromium is not installed (apt-get install chromium)");
        return;
    };
    let mut config = common::config();
    config.board.completed_linger_secs = 5;
    let server = TestServer::with_config(config).await;
    set(&server, 1, "Order Initiated", "3").await;
    set(&server, 2, "Mixing", "1").await;
    set(&server, 3, "Order Served", "2").await;

    let browser = Browser::launch(bin, &format!("http://{}/", server.addr));
    let url = browser.page_socket().await;
    let (socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut page = DevTools { socket, next_id: 0 };
    page.wait_for(json!({"state": "live", "new": [1], "in_progress": [2], "completed": [3]}))
        .await;

    // Changes over HTTP show up without a reload.
    set(&server, 1, "Shaking", "3").await;
    set(&server, 4, "Order Initiated", "2").await;
    set(&server, 2, "Order Served", "1").await;
    set(&server, 5, "Order Initiated", "1").await;
    set(&server, 5, "Order Cancelled", "1").await;
    let shown = page
        .wait_for(json!({"new": [4], "in_progress": [1], "completed": [2, 3]}))
        .await;
    let card = shown["cards"]["1"].as_str().unwrap();
    assert!(
        card.contains("#1") && card.contains("Shaking") && card.contains("orderbot 3"),
        "{card}"
    );

    let shot = page
        .call("Page.captureScreenshot", json!({"format": "png"}))
        .await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("board.png"), png).unwrap();

    // Completed orders leave the board after board.completed_linger_secs.
    page.wait_for(json!({"new": [4], "in_progress": [1], "completed": []}))
        .await;

    // The broker goes away: the page says so. It comes back (a new epoch,
    // other orders): the page resyncs from the new snapshot by itself.
    let addr = server.addr;
    server.stop().await;
    page.wait_for(json!({"state": "reconnecting"})).await;
    let restarted = TestServer::at(addr, common::config()).await;
    set(&restarted, 42, "Order Initiated", "7").await;
    page.wait_for(json!({"state": "live", "new": [42], "in_progress": [], "completed": []}))
        .await;
    set(&restarted, 42, "Mixing", "7").await;
    page.wait_for(json!({"new": [], "in_progress": [42]})).await;
}
