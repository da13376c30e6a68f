//! A CPEE engine's callback end as the broker meets it, on plain blocking
//! sockets (for tests that drive broker processes): every PUT to
//! `/<instance>/callbacks/<id>/` is recorded and answered 200; a final
//! answer closes the callback, so a second one gets 404, as CPEE answers a
//! callback it no longer waits on. While held, a PUT is never answered and
//! not recorded (the connection is dropped when the hold ends); while late,
//! it is recorded but its answer never comes (the broker cannot tell it
//! arrived). Every instance's `properties/state/` is `running`.

#![allow(dead_code)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

#[derive(Debug, Clone)]
pub struct Delivery {
    /// `/<instance>/callbacks/<id>/`.
    pub path: String,
    pub update: bool,
    pub salvage: bool,
    pub body: Value,
}

#[derive(Default)]
struct State {
    deliveries: Vec<Delivery>,
    /// Final answers to a callback already closed (answered 404).
    repeated: Vec<Delivery>,
    closed: HashSet<String>,
    hold: bool,
    held: usize,
    late: bool,
}

#[derive(Clone)]
pub struct Engine {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    state: Arc<Mutex<State>>,
}

impl Engine {
    pub fn start() -> Engine {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let state = shared.clone();
                std::thread::spawn(move || serve(stream, &state));
            }
        });
        Engine { addr, state }
    }

    /// The CPEE headers of a call by `instance` waiting on callback `id`.
    pub fn call(&self, instance: u32, id: &str) -> Vec<(String, String)> {
        let base = format!("http://{}/{instance}/", self.addr);
        vec![
            (
                "content-type".into(),
                "application/x-www-form-urlencoded".into(),
            ),
            ("cpee-instance".into(), instance.to_string()),
            ("cpee-instance-uuid".into(), format!("uuid-{instance}")),
            ("cpee-callback".into(), format!("{base}callbacks/{id}/")),
            ("cpee-callback-id".into(), id.into()),
            ("cpee-label".into(), "test".into()),
        ]
    }

    /// The path a delivery to `instance`'s callback `id` has.
    pub fn path(instance: u32, id: &str) -> String {
        format!("/{instance}/callbacks/{id}/")
    }

    pub fn hold(&self, on: bool) {
        self.state.lock().unwrap().hold = on;
    }

    pub fn late(&self, on: bool) {
        self.state.lock().unwrap().late = on;
    }

    /// PUTs that came while held.
    pub fn held(&self) -> usize {
        self.state.lock().unwrap().held
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.state.lock().unwrap().deliveries.clone()
    }

    pub fn repeated(&self) -> Vec<Delivery> {
        self.state.lock().unwrap().repeated.clone()
    }

    /// Waits until `done` holds of the deliveries, at most `within`.
    pub fn until(
        &self,
        what: &str,
        within: Duration,
        done: impl Fn(&[Delivery]) -> bool,
    ) -> Vec<Delivery> {
        let deadline = Instant::now() + within;
        loop {
            let all = self.deliveries();
            if done(&all) {
                return all;
            }
            assert!(Instant::now() < deadline, "{what}: got {all:#?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut stream = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let (mut length, mut update, mut salvage) = (0usize, false, false);
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap_or((header, ""));
            let (name, value) = (name.to_ascii_lowercase(), value.trim());
            match name.as_str() {
                "content-length" => length = value.parse().unwrap_or(0),
                "cpee-update" => update = value == "true",
                "cpee-salvage" => salvage = value == "true",
                _ => {}
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let status = {
            let mut s = state.lock().unwrap();
            if method == "PUT" && s.hold {
                s.held += 1;
                drop(s);
                while state.lock().unwrap().hold {
                    std::thread::sleep(Duration::from_millis(20));
                }
                return; // never answered
            }
            let delivery = Delivery {
                path: path.clone(),
                update,
                salvage,
                body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            };
            if method == "GET" && path.ends_with("/properties/state/") {
                drop(s);
                let answer = "HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nrunning";
                if stream.write_all(answer.as_bytes()).is_err() {
                    return;
                }
                continue;
            }
            if method != "PUT" || !path.contains("/callbacks/") {
                404
            } else if s.closed.contains(&path) {
                s.repeated.push(delivery);
                404
            } else {
                if !update {
                    s.closed.insert(path.clone());
                }
                s.deliveries.push(delivery);
                if s.late {
                    drop(s);
                    while state.lock().unwrap().late {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    return; // the answer never comes
                }
                200
            }
        };
        let reason = if status == 200 { "OK" } else { "Not Found" };
        let answer = format!("HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\n\r\n");
        if stream.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}
