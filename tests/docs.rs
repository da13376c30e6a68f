//! `GET /docs`: the API reference page. Its HTML names no script or style
//! from elsewhere (every file comes from the binary), and headless
//! Chromium renders the operations of `/openapi.json` from it. Without
//! Chromium the browser part is skipped, except in CI.

mod common;

use std::time::Duration;

use common::TestServer;
use common::browser::{self, Browser, chromium};
use hyper::StatusCode;

#[tokio::test]
async fn the_docs_page_and_its_files_come_from_the_broker() {
    let server = TestServer::start().await;
    let page = server.get("/docs").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    let html = String::from_utf8(page.body.to_vec()).unwrap();
    // Every src= and href= is relative to /docs/ (the page sets its base).
    assert!(html.contains("<base href=\"/docs/\">"), "{html}");
    let mut refs = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for part in html.split(attr).skip(1) {
            refs.push(part.split('"').next().unwrap().to_string());
        }
    }
    assert!(refs.len() >= 4, "{refs:?}");
    for r in &refs {
        assert!(
            !r.contains("//") && !r.starts_with("http"),
            "{r} is loaded from elsewhere"
        );
        if r == "/docs/" {
            continue;
        }
        let file = server
            .get(&format!("/docs/{}", r.trim_start_matches("./")))
            .await;
        assert_eq!(file.status, StatusCode::OK, "{r}");
    }
    // The page reads our document and not the public validator.
    let init = server.get("/docs/swagger-initializer.js").await;
    let init = String::from_utf8(init.body.to_vec()).unwrap();
    assert!(init.contains("\"/openapi.json\""), "{init}");
    assert!(init.contains("\"validatorUrl\": \"none\""), "{init}");
    assert_eq!(
        server.get("/docs/nothing-here.js").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn chromium_renders_the_operations_on_the_docs_page() {
    let Some(bin) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have chromium (.ci/run installs it)"
        );
        eprintln!("no chromium: skipped");
        return;
    };
    let server = TestServer::start().await;
    let url = format!("http://{}/docs", server.addr);
    let chrome = Browser::launch(bin, &url, &[]);
    let mut socket = chrome.devtools().await;
    let wait = Duration::from_secs(10);
    // Swagger UI renders one block per operation once it read the document.
    let mut seen = serde_json::Value::Null;
    for id in 1..=300 {
        let expression = r#"JSON.stringify({
            ops: document.querySelectorAll('.opblock').length,
            text: [...document.querySelectorAll('.opblock-summary-path')].map(e => e.innerText).slice(0, 400),
            foreign: performance.getEntriesByType('resource').map(e => e.name).filter(n => !n.startsWith(location.origin)),
        })"#;
        let value = browser::evaluate(&mut socket, id, expression, wait).await;
        seen = value
            .as_str()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default();
        if seen["ops"].as_u64().unwrap_or(0) >= 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen["ops"].as_u64().unwrap_or(0) >= 100, "rendered: {seen}");
    let paths = seen["text"].to_string();
    for path in ["/orders", "/update_order", "/docs"] {
        assert!(paths.contains(path), "{path} is not on the page: {paths}");
    }
    assert_eq!(
        seen["foreign"],
        serde_json::json!([]),
        "loaded from elsewhere"
    );
}
