//! The real `order-broker` binary: command line, config files, environment
//! overrides, and a clean exit on SIGTERM.

mod common;

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

/// One keep-alive HTTP/1.1 connection over std's TcpStream, enough to PUT
/// JSON and read the status line; None once the server is gone.
struct RawClient {
    stream: TcpStream,
}

impl RawClient {
    fn connect(addr: &str) -> RawClient {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        RawClient { stream }
    }

    /// The status code, or None if the connection broke.
    fn put_json(&mut self, path: &str, body: &str) -> Option<u16> {
        // One write: pieces would wait on Nagle and delayed ACKs.
        let request = format!(
            "PUT {path} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        );
        (&self.stream).write_all(request.as_bytes()).ok()?;
        // One answer per request and nothing after it: a reader per call
        // never buffers bytes that belong to the next one.
        let mut reader = BufReader::new(&self.stream);
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let status = line.split(' ').nth(1)?.parse().ok()?;
        let mut length = 0;
        loop {
            line.clear();
            if reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().ok()?;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).ok()?;
        Some(status)
    }
}

/// SIGKILL mid-load, with snapshots and segment switches during the load:
/// after a restart every acknowledged write is there, in every fsync mode
/// (a process crash loses nothing acknowledged; DESIGN invariant 5).
fn every_acknowledged_write_survives_sigkill(fsync: &'static str) {
    const WRITERS: u64 = 8;
    let (mut cmd, data) = broker();
    let mut child = cmd
        .args(["--listen", "127.0.0.1:0"])
        .env("ORDER_BROKER_PERSISTENCE_FSYNC", fsync)
        // Snapshots and segment switches happen during the load too.
        .env("ORDER_BROKER_PERSISTENCE_SNAPSHOT_EVERY_EVENTS", "300")
        .spawn()
        .unwrap();
    let addr = listening_addr(&mut child);
    wait_ready(&addr);

    // Each writer moves its own order through s1, s2, … and remembers the
    // last step the broker acknowledged.
    let writers: Vec<_> = (1..=WRITERS)
        .map(|w| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut client = RawClient::connect(&addr);
                let mut acked = 0u64;
                for step in 1.. {
                    let body = format!(r#"{{"order_id": {w}, "status": "s{step}"}}"#);
                    match client.put_json("/update_order", &body) {
                        Some(200) => acked = step,
                        Some(other) => panic!("{fsync}: writer {w}: status {other}"),
                        None => break,
                    }
                }
                acked
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(700));
    let killed = Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let _ = child.wait();
    let acked: Vec<u64> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    assert!(
        acked.iter().all(|a| *a > 0),
        "every writer got through: {acked:?}"
    );

    let mut restarted = Command::new(env!("CARGO_BIN_EXE_order-broker"))
        .env_remove("RUST_LOG")
        .env("ORDER_BROKER_PERSISTENCE_DIR", data.path())
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = listening_addr(&mut restarted);
    wait_ready(&addr);
    for (w, acked) in (1..=WRITERS).zip(&acked) {
        let response = http_get(&addr, &format!("/get_status/{w}"));
        let body = response.split("\r\n\r\n").nth(1).unwrap();
        let order: serde_json::Value = serde_json::from_str(body).unwrap();
        let version = order["version"].as_u64().unwrap();
        // Writes the broker had taken but not yet acknowledged may be there
        // too; nothing acknowledged may be missing.
        assert!(
            version >= *acked,
            "{fsync}: writer {w}: acked step {acked}, recovered {order}"
        );
        assert_eq!(order["status"], format!("s{version}"), "writer {w}");
    }
    assert!(terminate(&mut restarted).success());
}

#[test]
fn every_write_acknowledged_with_fsync_always_survives_sigkill() {
    every_acknowledged_write_survives_sigkill("always");
}

#[test]
fn every_write_acknowledged_with_fsync_everysec_survives_sigkill() {
    every_acknowledged_write_survives_sigkill("everysec");
}

#[test]
fn every_write_acknowledged_with_fsync_no_survives_sigkill() {
    every_acknowledged_write_survives_sigkill("no");
}

/// The broker's resident memory, from /proc (Linux).
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

fn metric(addr: &str, name: &str) -> f64 {
    let response = http_get(addr, "/metrics");
    response
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

#[test]
fn ten_thousand_held_connections_while_updates_continue() {
    const HELD: usize = 10_000;
    // This process holds the client ends: it needs the descriptors too.
    let limit = rlimit::increase_nofile_limit(HELD as u64 + 1024).unwrap();
    assert!(
        limit >= HELD as u64 + 512,
        "this machine allows {limit} open files; the test needs {HELD} (raise ulimit -Hn)"
    );
    let (mut cmd, _data) = broker();
    let mut child = cmd
        .args(["--listen", "127.0.0.1:0"])
        // Held connections stay idle longer than the default 10 s would allow.
        .env("ORDER_BROKER_LIMITS_HEADER_READ_TIMEOUT_SECS", "120")
        .env("ORDER_BROKER_PERSISTENCE_FSYNC", "everysec")
        .spawn()
        .unwrap();
    let addr = listening_addr(&mut child);
    wait_ready(&addr);
    let before = rss_bytes(child.id());

    // Open and hold them from a few threads; each makes one request first,
    // so the broker has accepted and served it (not only the kernel).
    let threads = 8;
    let held: Vec<RawClient> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let addr = addr.clone();
                s.spawn(move || {
                    (0..HELD / threads)
                        .map(|i| {
                            let mut client = RawClient::connect(&addr);
                            let body =
                                format!(r#"{{"order_id": {}, "status": "Mixing"}}"#, t * HELD + i);
                            assert_eq!(client.put_json("/update_order", &body), Some(200));
                            client
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(held.len(), HELD);
    assert!(metric(&addr, "order_broker_connections") >= HELD as f64);

    // Updates go on, from new connections and from held ones.
    let mut writer = RawClient::connect(&addr);
    for n in 0..2000 {
        let body = format!(r#"{{"order_id": {}, "status": "Pouring"}}"#, n % 50);
        assert_eq!(writer.put_json("/update_order", &body), Some(200));
    }
    let mut held = held;
    for client in held.iter_mut().step_by(100) {
        assert_eq!(
            client.put_json("/update_order", r#"{"order_id": 1, "status": "Served"}"#),
            Some(200)
        );
    }
    let grown = rss_bytes(child.id()).saturating_sub(before);
    let per_connection = grown / HELD as u64;
    println!(
        "10,000 held connections: RSS grew {} MiB ({per_connection} bytes each)",
        grown >> 20
    );
    assert!(
        per_connection < 64 * 1024,
        "memory per held connection is {per_connection} bytes"
    );
    drop(held);
    assert!(terminate(&mut child).success());
}

#[test]
fn exporting_many_orders_keeps_memory_flat() {
    const ORDERS: usize = 150_000;
    const WRITERS: usize = 8;
    let (mut cmd, _data) = broker();
    let mut child = cmd
        .args(["--listen", "127.0.0.1:0"])
        .env("ORDER_BROKER_PERSISTENCE_MODE", "memory")
        .spawn()
        .unwrap();
    let addr = listening_addr(&mut child);
    wait_ready(&addr);
    std::thread::scope(|s| {
        for w in 0..WRITERS {
            let addr = addr.clone();
            s.spawn(move || {
                let mut client = RawClient::connect(&addr);
                for id in (w..ORDERS).step_by(WRITERS) {
                    let body = format!(
                        r#"{{"order_id": {id}, "status": "Mixing", "orderbot_id": "bot-{}"}}"#,
                        id % 7
                    );
                    assert_eq!(client.put_json("/update_order", &body), Some(200));
                }
            });
        }
    });
    let before = rss_bytes(child.id());

    // Read the export as it streams, watching the broker's memory.
    let mut stream = TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "GET /orders/export?format=ndjson HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let (mut total, mut lines, mut peak) = (0usize, 0usize, before);
    loop {
        let n = stream.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n;
        lines += buf[..n].iter().filter(|b| **b == b'\n').count();
        if total % (1 << 20) < n {
            peak = peak.max(rss_bytes(child.id()));
        }
    }
    let grown = peak.saturating_sub(before);
    println!(
        "export of {ORDERS} orders: {} MB streamed, broker RSS grew at most {} MB",
        total >> 20,
        grown >> 20
    );
    assert!(lines >= ORDERS, "every order exported ({lines} lines)");
    assert!(
        total > 20 << 20,
        "the export is larger than the bound below"
    );
    assert!(
        grown < 12 << 20,
        "memory grew {grown} bytes while exporting"
    );
    assert!(terminate(&mut child).success());
}

/// A second broker on a data directory in use stops before it says
/// "listening" (anyone waiting for that line is not fooled), with status 2
/// and a message naming the directory.
#[test]
fn a_second_broker_on_a_directory_in_use_stops_before_listening() {
    let (mut first, data) = broker();
    let mut running = first.args(["--listen", "127.0.0.1:0"]).spawn().unwrap();
    let addr = listening_addr(&mut running);
    wait_ready(&addr);
    let second = Command::new(env!("CARGO_BIN_EXE_order-broker"))
        .env_remove("RUST_LOG")
        .env("ORDER_BROKER_PERSISTENCE_DIR", data.path())
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&second.stdout);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{stderr}");
    assert!(!stdout.contains("listening"), "it said listening: {stdout}");
    assert!(stderr.contains("in use by another broker"), "{stderr}");
    assert!(terminate(&mut running).success());
}

/// Logs to a pipe carry no terminal colour codes, and the first lines say
/// which config is used and where the state lives.
#[test]
fn logs_on_a_pipe_are_plain_and_say_where_the_data_lives() {
    let (mut cmd, data) = broker();
    let mut child = cmd.args(["--listen", "127.0.0.1:0"]).spawn().unwrap();
    let addr = listening_addr(&mut child);
    wait_ready(&addr);
    assert!(terminate(&mut child).success());
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    assert!(!logs.contains('\u{1b}'), "colour codes on a pipe: {logs:?}");
    let first = logs.lines().next().unwrap_or_default();
    assert!(first.contains("config: "), "{first}");
    let dir = std::fs::canonicalize(data.path()).unwrap();
    assert!(
        first.contains(&*dir.display().to_string())
            || first.contains(&*data.path().display().to_string()),
        "the data directory is not named first: {first}"
    );
}

/// A data directory made by the binary: three runs of one order each, so
/// segments `journal-…1.log`, `…2.log` and `…3.log` (the newest, named by
/// `CURRENT`); their paths, oldest first.
fn three_segments() -> (tempfile::TempDir, Vec<std::path::PathBuf>) {
    let data = tempfile::tempdir().unwrap();
    for id in 1..=3 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_order-broker"))
            .env_remove("RUST_LOG")
            .env("ORDER_BROKER_PERSISTENCE_DIR", data.path())
            .env("ORDER_BROKER_PERSISTENCE_FSYNC", "no")
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = listening_addr(&mut child);
        wait_ready(&addr);
        let body = format!(r#"{{"order_id": {id}, "status": "Mixing"}}"#);
        assert_eq!(
            RawClient::connect(&addr).put_json("/update_order", &body),
            Some(200)
        );
        assert!(terminate(&mut child).success());
    }
    let segments = common::files(data.path(), "journal-");
    assert_eq!(segments.len(), 3, "{segments:?}");
    (data, segments)
}

/// Runs the binary on `dir` until it exits (killed after 20 s): its status,
/// stdout and stderr.
fn run_until_exit(dir: &Path) -> (Option<i32>, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_order-broker"))
        .env_remove("RUST_LOG")
        .env("ORDER_BROKER_PERSISTENCE_DIR", dir)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A data directory that recovery would refuse for what it can tell
/// without replaying stops the start before "listening", with status 2
/// and the reason naming the file; damage inside a record is found by the
/// replay after the broker listens, and ends it with status 1 and the
/// reason (README, Persistence).
#[test]
fn a_data_directory_recovery_would_refuse_stops_the_start_before_listening() {
    let (fixture, segments) = three_segments();
    let name = |i: usize| {
        segments[i]
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string()
    };
    type Damage = Box<dyn Fn(&Path)>;
    let write = |file: &'static str, text: &'static str| -> Damage {
        Box::new(move |dir: &Path| std::fs::write(dir.join(file), text).unwrap())
    };
    let remove = |file: String| -> Damage {
        Box::new(move |dir: &Path| std::fs::remove_file(dir.join(&file)).unwrap())
    };
    let rows: Vec<(&str, Damage, Vec<String>)> = vec![
        (
            "CURRENT names a missing segment",
            write("CURRENT", "journal-00000000000000000099.log\n"),
            vec!["journal-00000000000000000099.log".into(), "missing".into()],
        ),
        (
            "the newest segment deleted",
            remove(name(2)),
            vec![name(2), "missing".into(), "CURRENT".into()],
        ),
        (
            "CURRENT corrupt",
            write("CURRENT", "garbage"),
            vec!["CURRENT".into(), "corrupt".into()],
        ),
        (
            "the first segment deleted",
            remove(name(0)),
            vec![name(1), "expected the change with seq 1, found 2".into()],
        ),
        (
            "an older segment's magic overwritten",
            Box::new({
                let s = name(1);
                move |dir: &Path| {
                    let mut bytes = std::fs::read(dir.join(&s)).unwrap();
                    bytes[..8].copy_from_slice(b"NOTMAGIC");
                    std::fs::write(dir.join(&s), bytes).unwrap();
                }
            }),
            vec![name(1), "does not start like a journal segment".into()],
        ),
        (
            "a snapshot that is not one",
            write(
                "snapshot-00000000000000000002.snap",
                "not a snapshot at all",
            ),
            vec![
                "snapshot-00000000000000000002.snap".into(),
                "does not start like a snapshot".into(),
            ],
        ),
    ];
    let mut failures = Vec::new();
    for (damage, apply, words) in &rows {
        let copy = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(fixture.path()).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, copy.path().join(path.file_name().unwrap())).unwrap();
        }
        apply(copy.path());
        let (code, stdout, stderr) = run_until_exit(copy.path());
        let missing: Vec<_> = words.iter().filter(|w| !stderr.contains(*w)).collect();
        if code != Some(2) || stdout.contains("listening") || !missing.is_empty() {
            failures.push(format!(
                "- {damage}: status {code:?}, stdout {stdout:?}, not naming {missing:?}: {stderr}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // A deleted middle segment shows only in the replay (segment 3's first
    // record is not the change after segment 1's last): after listening.
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture.path()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, copy.path().join(path.file_name().unwrap())).unwrap();
    }
    std::fs::remove_file(copy.path().join(name(1))).unwrap();
    let (code, stdout, stderr) = run_until_exit(copy.path());
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stdout.contains("listening"), "{stdout}");
    assert!(
        stderr.contains(&name(2)) && stderr.contains("expected the change with seq 2, found 3"),
        "{stderr}"
    );
}
