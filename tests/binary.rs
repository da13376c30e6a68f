//! The real `order-broker` binary: command line, config files, environment
//! overrides, and a clean exit on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use order_broker::Config;

/// The binary, with a data directory of its own (removed when dropped).
fn broker() -> (Command, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_order-broker"));
    cmd.env_remove("RUST_LOG")
        .env("ORDER_BROKER_PERSISTENCE_DIR", data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    (cmd, data)
}

/// Waits for the "listening on" line and returns the address.
fn listening_addr(child: &mut Child) -> String {
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    line.trim()
        .strip_prefix("order-broker listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_string()
}

fn http_get(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// Waits until `/readyz` answers 200 (recovery done).
fn wait_ready(addr: &str) {
    for _ in 0..1000 {
        if http_get(addr, "/readyz").starts_with("HTTP/1.1 200") {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("the broker at {addr} did not become ready");
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    child.wait().unwrap()
}

#[test]
fn every_config_file_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::load(Some(&path), Vec::new())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(seen >= 1);
}

#[test]
fn serves_on_the_listen_flag_and_exits_cleanly_on_sigterm() {
    let (mut cmd, _data) = broker();
    let mut child = cmd.args(["--listen", "127.0.0.1:0"]).spawn().unwrap();
    let addr = listening_addr(&mut child);
    let response = http_get(&addr, "/healthz");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let status = terminate(&mut child);
    assert!(status.success(), "{status:?}");
}

#[test]
fn env_overrides_the_config_file() {
    let (mut cmd, _data) = broker();
    let mut child = cmd
        .env("ORDER_BROKER_LISTEN", "127.0.0.1:0")
        .env("ORDER_BROKER_ORDER_STORE_URL_GET_ALL", "/everything")
        .spawn()
        .unwrap();
    let addr = listening_addr(&mut child);
    wait_ready(&addr);
    assert!(http_get(&addr, "/everything").starts_with("HTTP/1.1 200"));
    assert!(http_get(&addr, "/get_all").starts_with("HTTP/1.1 404"));
    assert!(terminate(&mut child).success());
}

#[test]
fn a_config_with_an_unknown_key_is_refused_by_name() {
    let dir = std::env::temp_dir().join(format!("order-broker-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[limits]\nmax_body_bytes = 10\nmax_bodies = 3\n").unwrap();
    let output = broker().0.arg("--config").arg(&path).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("max_bodies"), "{stderr}");
    assert!(stderr.contains("bad.toml"), "{stderr}");

    let output = broker()
        .0
        .env("ORDER_BROKER_LIMIT_MAX_BODY_BYTES", "5")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("ORDER_BROKER_LIMIT_MAX_BODY_BYTES"));
    std::fs::remove_dir_all(&dir).unwrap();
}
