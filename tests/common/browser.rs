//! Debian's Chromium, headless, driven over its DevTools protocol: for the
//! tests that load the broker's pages as a user's browser does.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

pub type DevToolsSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// The Chromium binary. Without one a browser test fails, saying how to
/// install it, unless `ORDER_BROKER_SKIP_BROWSER=1` skips the browser tests
/// on purpose (then None, and the test returns early): a skip never looks
/// like a pass by accident. CI installs Chromium and never skips.
pub fn chromium() -> Option<&'static str> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|bin| {
            Command::new(bin)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
    if found.is_none() {
        let skip = std::env::var("ORDER_BROKER_SKIP_BROWSER").is_ok_and(|v| v == "1");
        assert!(
            skip && std::env::var_os("CI").is_none(),
            "this test drives a headless Chromium, and none is installed: install it \
             (Debian/Ubuntu: apt-get install chromium), or run with \
             ORDER_BROKER_SKIP_BROWSER=1 to skip the browser tests on purpose \
             (never in CI)"
        );
        eprintln!("SKIPPED on purpose (ORDER_BROKER_SKIP_BROWSER=1): no Chromium");
    }
    found
}

/// A headless Chromium on `url` with a fresh profile; killed on drop.
pub struct Browser {
    child: Child,
    profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    /// Starts `bin` on `url`, with `extra` flags after the usual ones.
    pub fn launch(bin: &str, url: &str, extra: &[String]) -> Browser {
        let profile = tempfile::tempdir().unwrap();
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
            .args(extra)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        Browser { child, profile }
    }

    /// The page's DevTools WebSocket URL (within 30 s).
    pub async fn page_socket(&self) -> String {
        let port_file = self.profile.path().join("DevToolsActivePort");
        let found = async {
            loop {
                if let Ok(text) = std::fs::read_to_string(&port_file)
                    && let Some(port) = text.lines().next().and_then(|p| p.parse::<u16>().ok())
                    && let Some(url) = page_target(port).await
                {
                    return url;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), found)
            .await
            .expect("chromium's DevTools did not come up")
    }

    /// The page's DevTools socket, connected.
    pub async fn devtools(&self) -> DevToolsSocket {
        let url = self.page_socket().await;
        tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("DevTools connects")
            .0
    }
}

/// The page's DevTools WebSocket, from `/json/list` (DevTools wants a Host
/// of localhost or an IP).
async fn page_target(port: u16) -> Option<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect(addr).await.ok()?;
    let host = format!("127.0.0.1:{port}");
    let reply = super::Client::connect(addr)
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

/// Sends DevTools command `id` and returns its result (within `wait`).
pub async fn call(
    socket: &mut DevToolsSocket,
    id: u64,
    method: &str,
    params: Value,
    wait: Duration,
) -> Value {
    let call = json!({"id": id, "method": method, "params": params});
    socket.send(Message::text(call.to_string())).await.unwrap();
    let answer = async {
        while let Some(message) = socket.next().await {
            if let Ok(Message::Text(text)) = message {
                let value: Value = serde_json::from_str(&text).unwrap();
                if value["id"] == id {
                    return value["result"].clone();
                }
            }
        }
        panic!("DevTools closed");
    };
    tokio::time::timeout(wait, answer)
        .await
        .expect("DevTools answered in time")
}

/// Evaluates `expression` in the page; its value.
pub async fn evaluate(
    socket: &mut DevToolsSocket,
    id: u64,
    expression: &str,
    wait: Duration,
) -> Value {
    let params = json!({"expression": expression, "returnByValue": true});
    call(socket, id, "Runtime.evaluate", params, wait).await["result"]["value"].clone()
}
