//! A client that sends ever new orderbot ids to a few orders, against the
//! real binary: the words no order uses any more are reclaimed, so the
//! table of words (`limits.max_symbols`) never stays full, and what is
//! kept survives a SIGKILL.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::process::{Broker, Start};

const ORDERS: u64 = 100;
const LIMIT: usize = 500;

fn start(dir: &std::path::Path) -> Broker {
    Start::new(dir)
        .env("ORDER_BROKER_LIMITS_MAX_SYMBOLS", LIMIT)
        .env("ORDER_BROKER_EVENTS_HISTORY_SIZE", 256)
        .start()
        .unwrap()
}

/// One keep-alive connection that PUTs `/update_order`.
struct Writer {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
}

impl Writer {
    fn new(broker: &Broker) -> Writer {
        let stream = TcpStream::connect(&broker.addr).unwrap();
        stream.set_nodelay(true).unwrap();
        Writer {
            reader: BufReader::new(stream.try_clone().unwrap()),
            stream,
        }
    }

    fn put(&mut self, body: &str) -> (u16, String) {
        write!(
            self.stream,
            "PUT /update_order HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        let status = line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut length = 0;
        loop {
            line.clear();
            self.reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).unwrap();
        (status, String::from_utf8(body).unwrap())
    }

    /// Gives order `id` the orderbot `bot`; a refusal because the table is
    /// full may last until the next sweep, never longer than a few seconds.
    fn assign(&mut self, id: u64, bot: &str) {
        let body = format!(r#"{{"order_id": {id}, "status": "Mixing", "orderbot_id": "{bot}"}}"#);
        let started = Instant::now();
        loop {
            match self.put(&body) {
                (200, _) => return,
                (422, error) if started.elapsed() < Duration::from_secs(5) => {
                    assert!(error.contains("max_symbols"), "{error}");
                    std::thread::sleep(Duration::from_millis(20));
                }
                (status, error) => panic!("order {id}, {bot}: {status} {error}"),
            }
        }
    }
}

fn metric(broker: &Broker, name: &str) -> f64 {
    let (_, text) = broker.request("GET", "/metrics", "");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Each order's orderbot, from `/get_all`.
fn bots(broker: &Broker) -> Vec<(u64, String)> {
    let mut all: Vec<(u64, String)> = broker
        .json("/get_all")
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["order_id"].as_u64().unwrap(),
                o["orderbot_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    all.sort();
    all
}

#[test]
fn ever_new_orderbot_ids_never_fill_the_table_for_good() {
    const WRITES: u64 = 20 * LIMIT as u64;
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path());
    let mut writer = Writer::new(&broker);
    let mut last = vec![String::new(); ORDERS as usize];
    for n in 0..WRITES {
        let id = n % ORDERS;
        let bot = format!("o{id}-bot-{n}");
        writer.assign(id, &bot);
        last[id as usize] = bot;
    }
    let expected: Vec<(u64, String)> = (0..ORDERS).zip(last.iter().cloned()).collect();
    assert_eq!(
        bots(&broker),
        expected,
        "every order shows its last orderbot"
    );
    assert!(metric(&broker, "order_broker_symbols") <= LIMIT as f64);
    let reclaimed = metric(&broker, "order_broker_symbols_reclaimed_total");
    assert!(
        reclaimed >= (WRITES as usize - 2 * LIMIT) as f64,
        "only {reclaimed} words reclaimed"
    );

    // What was kept is on disk; after a SIGKILL the orders read the same,
    // and new words are taken again once the replayed ones are swept.
    broker.kill();
    let broker = start(dir.path());
    assert_eq!(bots(&broker), expected, "the same after a restart");
    let mut writer = Writer::new(&broker);
    for n in 0..2 * LIMIT as u64 {
        let id = n % ORDERS;
        writer.assign(id, &format!("o{id}-after-{n}"));
    }
    assert!(metric(&broker, "order_broker_symbols") <= LIMIT as f64);
    broker.stop();
}
