//! The order board in a real browser: headless Chromium loads `/`, the test
//! changes orders over HTTP and reads the page's columns through the DevTools
//! protocol; the page must follow live, show "reconnecting" when the broker
//! goes away, and resync after it restarts. A second test fills the board
//! with long status words and 3–4 digit ids and measures the page at
//! 1920×1080 and on a phone (390×844): one card height per column, a time
//! with its unit, "waiting long" past the threshold. Screenshots land in
//! `target/board.png`, `target/board-1080p.png` and `target/board-phone.png`
//! (DevTools' `Page.captureScreenshot`: the page's event stream never
//! closes, so tools that wait for the network to go idle never finish).
//! Without Chromium the tests fail, unless `ORDER_BROKER_SKIP_BROWSER=1`.

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

impl DevTools {
    /// The value of `expression` (which returns a JSON text), parsed.
    async fn json(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await;
        let text = result["result"]["value"].as_str().unwrap_or("null");
        serde_json::from_str(text).unwrap_or(Value::Null)
    }

    /// Writes a screenshot of the page to `target/<name>`.
    async fn screenshot(&mut self, name: &str) {
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), png).unwrap();
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

/// Per column, what the cards look like: each card's height, whether its
/// status is cut (ellipsised) and its title, its time text, whether it is
/// marked "waiting long", and the computed sizes that make it legible.
const MEASURE: &str = r#"JSON.stringify(Object.fromEntries(
    ["new", "in_progress", "completed"].map(stage => [stage,
        [...document.querySelectorAll(`#col-${stage} .card`)].map(c => {
            const status = c.querySelector('.status'), time = c.querySelector('.time');
            const px = el => parseFloat(getComputedStyle(el).fontSize);
            return {
                id: +c.dataset.id,
                height: c.getBoundingClientRect().height,
                status: status.textContent, status_title: status.title,
                status_cut: status.scrollWidth > status.clientWidth,
                time: time.textContent,
                long: c.classList.contains('waiting-long'),
                id_px: px(c.querySelector('.id')), status_px: px(status),
                bot_px: px(c.querySelector('.bot')),
                bot_color: getComputedStyle(c.querySelector('.bot')).color,
                card_bg: getComputedStyle(c).backgroundColor,
            };
        })]
    )))"#;

/// WCAG contrast ratio of two `rgb(r, g, b)` colours.
fn contrast(a: &str, b: &str) -> f64 {
    let luminance = |css: &str| -> f64 {
        let digits: Vec<f64> = css
            .trim_start_matches(|c: char| !c.is_ascii_digit())
            .split(|c: char| !c.is_ascii_digit() && c != '.')
            .filter(|s| !s.is_empty())
            .take(3)
            .map(|s| s.parse().unwrap())
            .collect();
        let lin = |c: f64| {
            let c = c / 255.0;
            if c <= 0.03928 {
                c / 12.92
            } else {
                ((c + 0.055) / 1.055).powf(2.4)
            }
        };
        0.2126 * lin(digits[0]) + 0.7152 * lin(digits[1]) + 0.0722 * lin(digits[2])
    };
    let (x, y) = (luminance(a), luminance(b));
    (x.max(y) + 0.05) / (x.min(y) + 0.05)
}

/// The checks of a measured board: every card in a column one height (long
/// words cut, with the whole word in the title), every time with a unit,
/// "waiting long" exactly on the orders in `old` (none when `old` is empty).
fn check_cards(measured: &Value, old: &[u64], size: &str) {
    // "45 s", "11 min", "2 h 5 min", "3 d 4 h": numbers, each with its unit.
    let has_unit = |time: &str| {
        let words: Vec<&str> = time.split(' ').collect();
        !words.is_empty()
            && words.len().is_multiple_of(2)
            && words.chunks(2).all(|pair| {
                pair[0].parse::<u64>().is_ok() && ["s", "min", "h", "d"].contains(&pair[1])
            })
    };
    for stage in ["new", "in_progress", "completed"] {
        let cards = measured[stage].as_array().unwrap();
        assert!(cards.len() >= 4, "{size}: {stage}: {cards:?}");
        let heights: Vec<f64> = cards
            .iter()
            .map(|c| c["height"].as_f64().unwrap())
            .collect();
        let (low, high) = heights
            .iter()
            .fold((f64::MAX, 0f64), |(l, h), x| (l.min(*x), h.max(*x)));
        assert!(
            high - low < 1.0,
            "{size}: cards in {stage} differ in height: {heights:?}"
        );
        assert!(
            cards.iter().any(|c| c["status_cut"] == true),
            "{size}: {stage}: no long word was cut: {cards:?}"
        );
        for c in cards {
            assert_eq!(
                c["status"], c["status_title"],
                "{size}: full text in the title"
            );
            let time = c["time"].as_str().unwrap();
            assert!(has_unit(time), "{size}: time {time:?} has no unit");
            let id = c["id"].as_u64().unwrap();
            let long = stage != "completed" && old.contains(&id);
            assert_eq!(c["long"], long, "{size}: {stage} #{id} waiting long: {c}");
        }
    }
}

/// The board as seen across a room and on a phone, in the real page: many
/// orders, long status words, 3–4 digit ids. An order in New or In progress
/// for longer than `board.waiting_long_secs` (5 s here) is marked, a fresh
/// or completed one is not; `?waiting_long=0` turns the marking off for one
/// screen. The browser is up before the orders come, so the fresh ones are
/// measured well within the threshold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn board_cards_are_one_height_legible_and_mark_orders_waiting_long() {
    let Some(bin) = chromium() else {
        return;
    };
    let long_new = "Waiting for the customer to choose one of today's specials";
    let long_done = "Served at the bar with an extra-long receipt and a smile";
    let mut config = common::config();
    config.board.waiting_long_secs = 5;
    config.stages.new.push(long_new.into());
    config.stages.completed.push(long_done.into());
    let server = TestServer::with_config(config).await;

    let url = format!("http://{}/", server.addr);
    let browser = Browser::launch(bin, &url, &["--window-size=1920,1080".to_string()]);
    let socket = browser.devtools().await;
    let mut page = DevTools { socket, next_id: 0 };
    page.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 1920, "height": 1080, "deviceScaleFactor": 1, "mobile": false}),
    )
    .await;
    page.wait_for(json!({"state": "live"})).await;
    let long_words = [
        "Pouring the extra-large strawberry-banana smoothie with oat milk",
        "Supercalifragilisticexpialidociously-shaking",
        "Mixing",
        "Garnishing with mint and a slice of lime",
    ];
    // The old ones, in New and In progress: past the threshold.
    let old: Vec<u64> = vec![7, 1042, 123, 4567];
    set(&server, 7, long_new, "3").await;
    let unassigned = json!({"id": 1042, "status": "Order Initiated"}).to_string();
    server.put_json("/update_order", &unassigned).await;
    set(&server, 123, long_words[0], "12").await;
    set(&server, 4567, long_words[1], "4").await;
    tokio::time::sleep(Duration::from_millis(6500)).await;
    for (i, id) in [88u64, 950, 2001, 3333, 5150, 6021, 7777, 8080]
        .into_iter()
        .enumerate()
    {
        set(&server, id, long_words[i % 4], &(i % 5 + 1).to_string()).await;
    }
    for (i, id) in [240u64, 1500, 9001].into_iter().enumerate() {
        let status = if i == 0 { long_new } else { "Order Initiated" };
        set(&server, id, status, &(i + 2).to_string()).await;
    }
    for id in [31u64, 1999, 2500, 4096, 6502] {
        set(&server, id, long_words[(id % 4) as usize], "1").await;
        let done = if id % 2 == 0 {
            long_done
        } else {
            "Order Served"
        };
        set(&server, id, done, "1").await;
    }
    let all_shown = json!({"state": "live",
        "new": [7, 240, 1042, 1500, 9001],
        "in_progress": [88, 123, 950, 2001, 3333, 4567, 5150, 6021, 7777, 8080],
        "completed": [31, 1999, 2500, 4096, 6502]});
    page.wait_for(all_shown.clone()).await;
    let measured = page.json(MEASURE).await;
    page.screenshot("board-1080p.png").await;
    check_cards(&measured, &old, "1920x1080");
    // Legible from across a room on a 1080p screen: a large id and status,
    // and an orderbot line nearly as large, in high contrast.
    let card = &measured["in_progress"][0];
    let (id_px, status_px, bot_px) = (
        card["id_px"].as_f64().unwrap(),
        card["status_px"].as_f64().unwrap(),
        card["bot_px"].as_f64().unwrap(),
    );
    assert!(
        id_px >= 56.0 && status_px >= 32.0 && bot_px >= 26.0,
        "{card}"
    );
    let ratio = contrast(
        card["bot_color"].as_str().unwrap(),
        card["card_bg"].as_str().unwrap(),
    );
    assert!(ratio >= 10.0, "orderbot line contrast {ratio:.1}: {card}");

    // On a phone: one column, the same rules.
    page.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let measured = page.json(MEASURE).await;
    page.screenshot("board-phone.png").await;
    check_cards(&measured, &old, "390x844");

    // The page's own override: ?waiting_long=0 marks nothing.
    let overridden = format!("{url}?waiting_long=0");
    page.call("Page.navigate", json!({"url": overridden})).await;
    for _ in 0..100 {
        if page.json("JSON.stringify(location.search)").await == "?waiting_long=0" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    page.wait_for(all_shown).await;
    check_cards(&page.json(MEASURE).await, &[], "?waiting_long=0");
    // Longer times in a stage read as durations too, never as a clock.
    let shown = page
        .json("JSON.stringify([45e3, 671e3, 7500e3, 3600e3, 277200e3].map(duration))")
        .await;
    assert_eq!(
        shown,
        json!(["45 s", "11 min", "2 h 5 min", "1 h", "3 d 5 h"])
    );
}
