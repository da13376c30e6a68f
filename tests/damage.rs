//! The damage table (TESTING.md §2): data directories made by the real
//! binary, damaged one way per row, and the outcome each must have: the
//! broker starts and lost only what no answer had acknowledged, or it
//! refuses to start, naming the file (and the byte offset).

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::OnceLock;

use common::files;
use common::process::Start;
use order_broker::journal::record::{Frames, Record};

/// Orders written per run of the broker while the fixtures are made.
const PER_RUN: u64 = 100;

/// Three runs of 100 orders each, no snapshot: segments starting at seq 1,
/// 101 and 201 (the newest), and `CURRENT` naming the newest.
fn journal_fixture() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        for run in 0..3 {
            let broker = Start::new(dir.path())
                .env("ORDER_BROKER_PERSISTENCE_FSYNC", "no")
                .start()
                .unwrap();
            broker.update_orders(run * PER_RUN + 1..=(run + 1) * PER_RUN);
            broker.stop();
        }
        dir
    })
    .path()
}

/// 200 orders with a snapshot after about 150: `snapshot-<seq>.snap` and
/// the segment after it.
fn snapshot_fixture() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let broker = Start::new(dir.path())
            .env("ORDER_BROKER_PERSISTENCE_FSYNC", "no")
            .env("ORDER_BROKER_PERSISTENCE_SNAPSHOT_EVERY_EVENTS", 150)
            .start()
            .unwrap();
        broker.update_orders(1..=2 * PER_RUN);
        broker.stop();
        assert_eq!(files(dir.path(), "snapshot-").len(), 1, "one snapshot");
        dir
    })
    .path()
}

/// Offset and payload length of every frame in a journal segment.
fn frames(path: &Path) -> Vec<(u64, u64)> {
    let len = fs::metadata(path).unwrap().len();
    let mut input = std::io::BufReader::new(File::open(path).unwrap());
    input.seek(SeekFrom::Start(8)).unwrap();
    let mut frames = Frames::new(input, 8, len);
    let mut out = Vec::new();
    loop {
        let at = frames.offset();
        match frames.next_payload().unwrap().unwrap() {
            Some(payload) => {
                Record::decode(payload).unwrap();
                out.push((at, payload.len() as u64));
            }
            None => return out,
        }
    }
}

fn name(path: &Path) -> String {
    path.file_name().unwrap().to_str().unwrap().to_string()
}

fn flip(path: &Path, at: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[at as usize] ^= 0x55;
    fs::write(path, bytes).unwrap();
}

fn append(path: &Path, bytes: &[u8]) {
    OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

fn truncate(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

/// A look at the directory after the broker started on it and stopped.
type Check = Box<dyn Fn(&Path) -> Result<(), String>>;

/// What a damaged directory must do.
enum Expect {
    /// Starts, holding exactly these orders (ids 1..=n); `check` then looks
    /// at the directory (after a clean stop).
    Starts { orders: u64, check: Option<Check> },
    /// Refuses to start; its message holds every one of these.
    Refuses(Vec<String>),
}

struct Row {
    damage: String,
    /// Damages the copy of the fixture (given the copy's directory).
    apply: Box<dyn Fn(&Path)>,
    expect: Expect,
}

fn starts(orders: u64) -> Expect {
    Expect::Starts {
        orders,
        check: None,
    }
}

fn refuses(words: &[&str]) -> Expect {
    Expect::Refuses(words.iter().map(|w| w.to_string()).collect())
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if name(&path) != "LOCK" {
            fs::copy(&path, to.join(name(&path))).unwrap();
        }
    }
}

/// Runs every row on its own copy of `fixture`; fails listing every row
/// whose outcome was not the expected one.
fn run_table(fixture: &Path, rows: Vec<Row>) {
    let mut failures = Vec::new();
    let count = rows.len();
    for row in rows {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(fixture, copy.path());
        (row.apply)(copy.path());
        let outcome = Start::new(copy.path()).start();
        let verdict = match (&row.expect, outcome) {
            (Expect::Starts { orders, check }, Ok(broker)) => {
                let ids = broker.order_ids();
                broker.stop();
                let want: Vec<u64> = (1..=*orders).collect();
                if ids != want {
                    Err(format!(
                        "started with {} orders ({:?}…), expected {orders}",
                        ids.len(),
                        &ids[..ids.len().min(5)]
                    ))
                } else {
                    check.as_ref().map_or(Ok(()), |c| c(copy.path()))
                }
            }
            (Expect::Starts { .. }, Err(stderr)) => Err(format!("refused: {stderr}")),
            (Expect::Refuses(words), Ok(broker)) => {
                let n = broker.order_ids().len();
                Err(format!(
                    "started with {n} orders; expected to refuse ({words:?})"
                ))
            }
            (Expect::Refuses(words), Err(stderr)) => {
                match words.iter().find(|w| !stderr.contains(w.as_str())) {
                    Some(missing) => Err(format!("refused without naming {missing:?}: {stderr}")),
                    None => Ok(()),
                }
            }
        };
        if let Err(why) = verdict {
            failures.push(format!("- {}: {why}", row.damage));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {count} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn bit_flips_in_any_record_of_any_segment_are_refused_naming_file_and_offset() {
    let fixture = journal_fixture();
    let segments = files(fixture, "journal-");
    assert_eq!(segments.len(), 3, "{segments:?}");
    let mut rows = Vec::new();
    for (s, segment) in segments.iter().enumerate() {
        let frames = frames(segment);
        assert_eq!(frames.len() as u64, PER_RUN);
        let file = name(segment);
        let which = [
            ("first", frames[0]),
            ("middle", frames[frames.len() / 2]),
            ("last", frames[frames.len() - 1]),
        ];
        for (record, (at, len)) in which {
            let fields = [
                // A low bit: the frame looks shorter or longer.
                ("length (low byte)", at),
                // A high bit: it claims more than the file holds, which
                // looks like a torn write.
                ("length (third byte)", at + 2),
                ("checksum", at + 4),
                ("payload", at + 8 + len / 2),
            ];
            for (field, byte) in fields {
                let file_name = file.clone();
                rows.push(Row {
                    damage: format!(
                        "bit flip in the {field} of the {record} record of segment {} ({file})",
                        s + 1
                    ),
                    apply: Box::new(move |dir| flip(&dir.join(&file_name), byte)),
                    expect: refuses(&[&file, &format!("corrupt at byte {at}")]),
                });
            }
        }
    }
    run_table(fixture, rows);
}

#[test]
fn lost_segments_and_torn_or_padded_tails() {
    let fixture = journal_fixture();
    let segments: Vec<String> = files(fixture, "journal-").iter().map(|p| name(p)).collect();
    let newest = segments[2].clone();
    let newest_len = fs::metadata(fixture.join(&newest)).unwrap().len();
    let (last_at, last_len) = *frames(&fixture.join(&newest)).last().unwrap();
    let last_frame: Vec<u8> = fs::read(fixture.join(&newest)).unwrap()[last_at as usize..].to_vec();
    let length_is = move |len: u64| -> Check {
        let newest = newest.clone();
        Box::new(move |dir: &Path| {
            let now = fs::metadata(dir.join(&newest)).unwrap().len();
            if now == len {
                Ok(())
            } else {
                Err(format!("{newest} is {now} bytes, expected {len}"))
            }
        })
    };
    let seg = |i: usize| segments[i].clone();
    let rows = vec![
        Row {
            damage: "deleted first segment".into(),
            apply: Box::new({
                let s = seg(0);
                move |dir| fs::remove_file(dir.join(&s)).unwrap()
            }),
            expect: refuses(&[&seg(1), "expected the change with seq 1, found 101"]),
        },
        Row {
            damage: "deleted middle segment".into(),
            apply: Box::new({
                let s = seg(1);
                move |dir| fs::remove_file(dir.join(&s)).unwrap()
            }),
            expect: refuses(&[&seg(2), "expected the change with seq 101, found 201"]),
        },
        Row {
            damage: "deleted newest segment".into(),
            apply: Box::new({
                let s = seg(2);
                move |dir| fs::remove_file(dir.join(&s)).unwrap()
            }),
            expect: refuses(&[&seg(2), "missing", "CURRENT"]),
        },
        Row {
            damage: "torn tail: half a frame after the last record".into(),
            apply: Box::new({
                let (s, frame) = (seg(2), last_frame.clone());
                move |dir| append(&dir.join(&s), &frame[..frame.len() / 2])
            }),
            expect: Expect::Starts {
                orders: 300,
                check: Some(length_is(newest_len)),
            },
        },
        Row {
            damage: "torn tail: the last record's write cut short".into(),
            apply: Box::new({
                let s = seg(2);
                move |dir| truncate(&dir.join(&s), last_at + 8 + last_len / 2)
            }),
            // The cut record is the one whose write did not finish (never
            // acknowledged in a real crash).
            expect: Expect::Starts {
                orders: 299,
                check: Some(length_is(last_at)),
            },
        },
        Row {
            damage: "torn tail: the last record's last page reads as zeros".into(),
            apply: Box::new({
                let s = seg(2);
                move |dir| {
                    let path = dir.join(&s);
                    let mut bytes = fs::read(&path).unwrap();
                    let len = bytes.len();
                    bytes[len - 20..].fill(0);
                    fs::write(path, bytes).unwrap();
                }
            }),
            expect: Expect::Starts {
                orders: 299,
                check: Some(length_is(last_at)),
            },
        },
        Row {
            damage: "zeros appended to the newest segment".into(),
            apply: Box::new({
                let s = seg(2);
                move |dir| append(&dir.join(&s), &[0; 4096])
            }),
            expect: Expect::Starts {
                orders: 300,
                check: Some(length_is(newest_len)),
            },
        },
        // CURRENT names the newest segment only once its magic is on disk:
        // an empty or zeroed segment there lost acknowledged records.
        Row {
            damage: "the newest segment emptied (0 bytes)".into(),
            apply: Box::new({
                let s = seg(2);
                move |dir| truncate(&dir.join(&s), 0)
            }),
            expect: refuses(&[&seg(2), "does not start like a journal segment"]),
        },
        Row {
            damage: "the newest segment overwritten with zeros".into(),
            apply: Box::new({
                let s = seg(2);
                move |dir| {
                    let path = dir.join(&s);
                    let len = fs::metadata(&path).unwrap().len() as usize;
                    fs::write(path, vec![0u8; len]).unwrap();
                }
            }),
            expect: refuses(&[&seg(2), "does not start like a journal segment"]),
        },
        Row {
            damage: "zeros appended to a sealed (older) segment".into(),
            apply: Box::new({
                let s = seg(0);
                move |dir| append(&dir.join(&s), &[0; 4096])
            }),
            expect: refuses(&[&seg(0), "corrupt at byte"]),
        },
        Row {
            damage: "a valid record after garbage at the tail".into(),
            apply: Box::new({
                let (s, frame) = (seg(2), last_frame.clone());
                move |dir| {
                    append(&dir.join(&s), b"garbage!");
                    append(&dir.join(&s), &frame);
                }
            }),
            expect: refuses(&[
                &seg(2),
                &format!("corrupt at byte {newest_len}"),
                "a valid record follows",
            ]),
        },
        Row {
            damage: "leftover snapshot.tmp".into(),
            apply: Box::new(|dir| fs::write(dir.join("snapshot.tmp"), b"half a snapshot").unwrap()),
            expect: Expect::Starts {
                orders: 300,
                check: Some(Box::new(|dir: &Path| {
                    if dir.join("snapshot.tmp").exists() {
                        Err("snapshot.tmp is still there".into())
                    } else {
                        Ok(())
                    }
                })),
            },
        },
        Row {
            damage: "CURRENT corrupt".into(),
            apply: Box::new(|dir| fs::write(dir.join("CURRENT"), b"\x00\x13garbage").unwrap()),
            expect: refuses(&["CURRENT", "corrupt"]),
        },
        Row {
            // What CURRENT cannot catch: the same as a data directory
            // written before it existed. It is written again at start.
            damage: "CURRENT deleted".into(),
            apply: Box::new(|dir| drop(fs::remove_file(dir.join("CURRENT")))),
            expect: Expect::Starts {
                orders: 300,
                check: Some(Box::new(|dir: &Path| {
                    dir.join("CURRENT")
                        .exists()
                        .then_some(())
                        .ok_or_else(|| "no CURRENT written".to_string())
                })),
            },
        },
    ];
    run_table(fixture, rows);
}

#[test]
fn damaged_or_missing_snapshots_are_refused() {
    let fixture = snapshot_fixture();
    let snapshot = name(&files(fixture, "snapshot-")[0]);
    let segment = name(files(fixture, "journal-").last().unwrap());
    let len = fs::metadata(fixture.join(&snapshot)).unwrap().len();
    let rows = vec![
        Row {
            damage: "undamaged".into(),
            apply: Box::new(|_| {}),
            expect: starts(200),
        },
        Row {
            damage: "truncated snapshot".into(),
            apply: Box::new({
                let s = snapshot.clone();
                move |dir| truncate(&dir.join(&s), len - 10)
            }),
            expect: refuses(&[&snapshot, "corrupt", "at byte"]),
        },
        Row {
            damage: "bit flip in the middle of the snapshot".into(),
            apply: Box::new({
                let s = snapshot.clone();
                move |dir| flip(&dir.join(&s), len / 2)
            }),
            expect: refuses(&[&snapshot, "corrupt", "at byte"]),
        },
        Row {
            damage: "zeros appended to the snapshot".into(),
            apply: Box::new({
                let s = snapshot.clone();
                move |dir| append(&dir.join(&s), &[0; 64])
            }),
            expect: refuses(&[
                &snapshot,
                "corrupt",
                &format!("after its end record at {len}"),
            ]),
        },
        Row {
            damage: "deleted snapshot".into(),
            apply: Box::new({
                let s = snapshot.clone();
                move |dir| fs::remove_file(dir.join(&s)).unwrap()
            }),
            expect: refuses(&[&segment, "expected the change with seq 1"]),
        },
        Row {
            damage: "deleted segment after the snapshot".into(),
            apply: Box::new({
                let s = segment.clone();
                move |dir| fs::remove_file(dir.join(&s)).unwrap()
            }),
            expect: refuses(&[&segment, "missing"]),
        },
    ];
    run_table(fixture, rows);
}

/// Guards against a fixture that is not what the table assumes.
#[test]
fn the_fixtures_start_whole() {
    for (fixture, orders) in [(journal_fixture(), 300), (snapshot_fixture(), 200)] {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(fixture, copy.path());
        let broker = Start::new(copy.path()).start().unwrap();
        assert_eq!(broker.order_ids(), (1..=orders).collect::<Vec<_>>());
        broker.stop();
        let mut current = String::new();
        File::open(copy.path().join("CURRENT"))
            .unwrap()
            .read_to_string(&mut current)
            .unwrap();
        assert!(current.starts_with("journal-"), "{current}");
    }
}
