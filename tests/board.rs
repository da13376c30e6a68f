//! The order board in a real browser: headless Chromium loads `/`, the test
//! changes orders over HTTP and reads the page's columns through the DevTools
//! protocol; the page must follow live, show "reconnecting" when the broker
//! goes away, and resync after it restarts. A screenshot lands in
//! `target/board.png`. Without Chromium the test is skipped, except in CI.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use common::TestServer;
use common::browser::{self, Browser, DevToolsSocket, chromium};
use serde_json::{Value, json};

struct DevTools {
    socket: DevToolsSocket,
    next_id: u64,
}

impl DevTools {
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let wait = Duration::from_secs(10);
        browser::call(&mut self.socket, self.next_id, method, params, wait).await
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

    let browser = Browser::launch(bin, &format!("http://{}/", server.addr), &[]);
    let socket = browser.devtools().await;
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
