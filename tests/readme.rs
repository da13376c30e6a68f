//! The README's examples run, in order, on a fresh broker: every `curl`
//! command of every `sh` block is run with the real curl against the real
//! binary (started as `cargo run --release` starts it: the default config,
//! its own data directory), and each answer is checked against what the
//! README says it is (`# → 201`, and the JSON after it when it is JSON).
//! A block whose first line is `# Not part of the walk-through` is skipped
//! (it needs another config). So the README cannot drift from the broker.

mod common;

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// One example: the command as the README shows it, and what it answers.
#[derive(Debug)]
struct Example {
    line: usize,
    command: String,
    /// The status `# → NNN` names; None: any 2xx.
    status: Option<u16>,
    /// JSON after the status, when it parses: a subset of the answer.
    body: Option<Value>,
}

const SKIP: &str = "# Not part of the walk-through";

fn examples(readme: &str) -> Vec<Example> {
    let mut out: Vec<Example> = Vec::new();
    let mut in_block = false;
    let mut skip = false;
    let mut first = false;
    // A command's lines and comment lines so far.
    let mut pending: Option<(usize, String, String)> = None;
    let lines: Vec<&str> = readme.lines().collect();
    let mut i = 0;
    let flush = |pending: &mut Option<(usize, String, String)>, out: &mut Vec<Example>| {
        if let Some((line, command, comments)) = pending.take() {
            let (status, body) = expectation(&comments);
            out.push(Example {
                line,
                command,
                status,
                body,
            });
        }
    };
    while i < lines.len() {
        let line = lines[i];
        if line.starts_with("```") {
            if in_block {
                flush(&mut pending, &mut out);
                in_block = false;
            } else if line.trim() == "```sh" {
                in_block = true;
                first = true;
                skip = false;
            }
            i += 1;
            continue;
        }
        if !in_block {
            i += 1;
            continue;
        }
        if first {
            first = false;
            skip = line.starts_with(SKIP);
        }
        if skip {
            i += 1;
            continue;
        }
        let trimmed = line.trim_start();
        if trimmed.starts_with("curl ") {
            flush(&mut pending, &mut out);
            // Continuation lines end with a backslash, or are inside quotes.
            let start = i;
            let mut command = String::new();
            loop {
                let part = lines[i];
                if let Some(head) = part.strip_suffix('\\') {
                    command.push_str(head);
                    command.push(' ');
                } else {
                    command.push_str(part);
                    if !open_quote(&command) {
                        break;
                    }
                    command.push('\n');
                }
                i += 1;
            }
            // An inline comment after the command is its expectation.
            let (command, comment) = split_comment(&command);
            pending = Some((start + 1, command, comment));
        } else if let Some(comment) = trimmed.strip_prefix('#') {
            if let Some((_, _, comments)) = &mut pending {
                comments.push('\n');
                comments.push_str(comment);
            }
        } else {
            flush(&mut pending, &mut out);
        }
        i += 1;
    }
    out
}

/// Whether `command` ends inside a quoted text (a comment ends it).
fn open_quote(command: &str) -> bool {
    let mut quote = None;
    let mut escaped = false;
    let mut last = ' ';
    for c in command.chars() {
        if quote.is_none() && c == '#' && last.is_whitespace() {
            return false;
        }
        last = c;
        match (quote, c) {
            (Some('"'), '\\') if !escaped => {
                escaped = true;
                continue;
            }
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q && !escaped => quote = None,
            _ => {}
        }
        escaped = false;
    }
    quote.is_some()
}

/// The command and its trailing `# comment` (a `#` outside quotes).
fn split_comment(command: &str) -> (String, String) {
    let mut quote = None;
    for (at, c) in command.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if command[..at].ends_with(' ') => {
                return (
                    command[..at].trim().to_string(),
                    command[at + 1..].to_string(),
                );
            }
            _ => {}
        }
    }
    (command.trim().to_string(), String::new())
}

/// `→ NNN` and the JSON after it (joined over comment lines), if any.
fn expectation(comments: &str) -> (Option<u16>, Option<Value>) {
    let Some((_, after)) = comments.split_once('→') else {
        return (None, None);
    };
    let after = after.trim_start();
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    let status = digits.parse().ok().filter(|_| digits.len() == 3);
    let rest: String = after[digits.len()..]
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    let rest = rest.trim_start_matches([',', ':', ' ']);
    let body = rest
        .find(['{', '['])
        .filter(|at| rest[..*at].trim().is_empty())
        .and_then(|at| {
            let mut de = serde_json::Deserializer::from_str(&rest[at..]).into_iter::<Value>();
            de.next()?.ok()
        });
    (status, body)
}

/// Fields whose values differ from run to run: the README shows an
/// example value, the answer must have one of the same kind.
const VOLATILE: [&str; 10] = [
    "created",
    "updated",
    "stage_since",
    "at",
    "processed",
    "requested_at",
    "scheduled_for",
    "epoch",
    "seq",
    "last_event_id",
];

/// Whether `want` is within `got`: objects by their keys, the rest equal.
fn within(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => w.iter().all(|(k, v)| {
            g.get(k).is_some_and(|gv| {
                if VOLATILE.contains(&k.as_str()) {
                    std::mem::discriminant(v) == std::mem::discriminant(gv)
                } else {
                    within(v, gv)
                }
            })
        }),
        (Value::Array(w), Value::Array(g)) => {
            w.len() == g.len() && w.iter().zip(g).all(|(a, b)| within(a, b))
        }
        (Value::Number(w), Value::Number(g)) => w.as_f64() == g.as_f64(),
        _ => want == got,
    }
}

#[test]
fn the_readmes_examples_run_in_order_on_a_fresh_broker() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let examples = examples(&readme);
    if std::env::var_os("README_EXAMPLES").is_some() {
        for e in &examples {
            eprintln!(
                "{}: {:?} {:?} {}",
                e.line,
                e.status,
                e.body.is_some(),
                e.command
            );
        }
    }
    assert!(
        examples.len() > 50,
        "only {} examples found",
        examples.len()
    );
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let broker = common::process::Start::new(dir.path()).start().unwrap();
    let mut failures = Vec::new();
    for example in &examples {
        let command = example
            .command
            .replace("localhost:8129", &broker.addr)
            .replace("127.0.0.1:8129", &broker.addr);
        let body = work.path().join("body");
        let _ = std::fs::remove_file(&body);
        let output = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "{command} -sS -o '{}' -w '%{{http_code}}' --max-time 3",
                body.display()
            ))
            .current_dir(work.path())
            .output()
            .expect("bash and curl run");
        let code: u16 = String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        let answer = std::fs::read_to_string(&body).unwrap_or_default();
        // An event stream never ends: curl stops it (exit 28) after 3 s.
        let streamed = output.status.code() == Some(28) && code == 200;
        let ok_status = match example.status {
            Some(want) => code == want,
            None => (200..300).contains(&code),
        };
        let ok_run = output.status.success() || streamed;
        // With -i the answer starts with the head.
        let json_part = answer
            .split_once("\r\n\r\n")
            .filter(|_| answer.starts_with("HTTP/"))
            .map_or(answer.as_str(), |(_, b)| b);
        let ok_body = example.body.as_ref().is_none_or(|want| {
            serde_json::from_str::<Value>(json_part.trim()).is_ok_and(|got| within(want, &got))
        });
        if !(ok_status && ok_run && ok_body) {
            failures.push(format!(
                "README.md:{}: {}\n  expected {} {}\n  got {code} {}{}",
                example.line,
                example.command,
                example.status.map_or("2xx".to_string(), |s| s.to_string()),
                example
                    .body
                    .as_ref()
                    .map_or(String::new(), |b| b.to_string()),
                answer.chars().take(300).collect::<String>(),
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} README examples fail:\n\n{}",
        failures.len(),
        examples.len(),
        failures.join("\n\n")
    );
}
