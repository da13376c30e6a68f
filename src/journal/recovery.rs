//! Recovery at start: `CURRENT`, the newest snapshot, every later record
//! in seq order, and the damage rules (a torn tail of the newest segment is
//! cut; anything else refuses to start).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::record::{
    FRAME_HEADER, FrameError, Frames, JOURNAL_MAGIC, MAX_PAYLOAD, Record, SNAPSHOT_MAGIC,
};
use super::*;
use crate::broker::Broker;
use crate::model::Seq;

/// What recovery found.
#[derive(Debug, Default)]
pub struct Recovery {
    pub snapshot: Option<Seq>,
    pub snapshot_records: u64,
    /// Journal records applied after the snapshot.
    pub replayed: u64,
    /// Journal bytes after the snapshot (they count towards the next one).
    pub replayed_bytes: u64,
    pub last: Seq,
    /// A torn tail that was cut: file, offset, bytes cut.
    pub torn: Option<(PathBuf, u64, u64)>,
}

/// The segment `CURRENT` names (None: no `CURRENT`, a data directory from
/// before it existed).
fn read_current(dir: &Path) -> Result<Option<(Seq, String)>, JournalError> {
    let path = dir.join(CURRENT);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("cannot read", &path, e)),
    };
    let name = text.trim();
    let seq = name
        .strip_prefix("journal-")
        .and_then(|n| n.strip_suffix(".log"))
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|_| text.ends_with('\n') && !name.contains('/'))
        .ok_or_else(|| {
            JournalError(format!(
                "{} is corrupt: it should name the newest journal segment, it holds {:?}. \
                 Refusing to start: restore the data directory from a backup",
                path.display(),
                text.chars().take(80).collect::<String>()
            ))
        })?;
    Ok(Some((Seq(seq), name.to_string())))
}

/// The snapshots and segments in a directory, each sorted by seq.
pub(super) struct Files {
    pub(super) snapshots: Vec<(Seq, PathBuf)>,
    pub(super) segments: Vec<(Seq, PathBuf)>,
}

impl Files {
    pub(super) fn scan(dir: &Path) -> io::Result<Files> {
        let mut files = Files {
            snapshots: Vec::new(),
            segments: Vec::new(),
        };
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let number = |prefix: &str, suffix: &str| {
                name.strip_prefix(prefix)?
                    .strip_suffix(suffix)?
                    .parse::<u64>()
                    .ok()
                    .map(Seq)
            };
            if let Some(seq) = number("snapshot-", ".snap") {
                files.snapshots.push((seq, path));
            } else if let Some(seq) = number("journal-", ".log") {
                files.segments.push((seq, path));
            }
        }
        files.snapshots.sort();
        files.segments.sort();
        Ok(files)
    }
}

/// Loads the newest snapshot and replays the journal after it into `broker`.
pub(super) fn recover(dir: &Path, broker: &Broker) -> Result<Recovery, JournalError> {
    let files = Files::scan(dir).map_err(|e| io_error("cannot read", dir, e))?;
    let mut recovery = Recovery::default();
    if let Some((seq, path)) = files.snapshots.last() {
        recovery.snapshot_records =
            load_snapshot(path, *seq, broker).map_err(|why| corrupt_snapshot(path, &why))?;
        recovery.snapshot = Some(*seq);
        recovery.last = *seq;
    }
    let current = read_current(dir)?;
    check_current(dir, &files, &current)?;
    if current.is_none() && !(files.segments.is_empty() && files.snapshots.is_empty()) {
        info!(
            "{} has no {CURRENT} file (written by an older version); it gets one now",
            dir.display()
        );
    }
    let newest = files.segments.len().saturating_sub(1);
    for (i, (first, path)) in files.segments.iter().enumerate() {
        let named = current.as_ref().is_some_and(|(seq, _)| seq == first);
        replay_segment(path, i == newest, named, broker, &mut recovery)?;
    }
    broker.finish_restore(recovery.last);
    if let Some((path, at, cut)) = &recovery.torn {
        warn!(
            file = %path.display(),
            offset = at,
            bytes = cut,
            last_seq = recovery.last.0,
            "the journal ended in a torn write (a crash mid-write); cut it at the last good record"
        );
    }
    Ok(recovery)
}

/// The checks of [`recover`] that read no record, so the binary can run
/// them before it listens (`journal::preflight`): the directory is
/// readable, `CURRENT` is well-formed and names a segment that exists, the
/// newest snapshot and every segment start with their magic (but a torn
/// creation recovery removes), and the oldest segment does not start after
/// the change that follows the snapshot (a deleted first segment or
/// snapshot). Changes nothing. Damage inside records (checksums, seqs,
/// a deleted middle segment) is found only by the replay.
pub(super) fn preflight(dir: &Path) -> Result<(), JournalError> {
    let files = Files::scan(dir).map_err(|e| io_error("cannot read", dir, e))?;
    let snapshot = files.snapshots.last();
    if let Some((_, path)) = snapshot {
        let read = |e: io::Error| corrupt_snapshot(path, &e.to_string());
        let mut magic = [0u8; 8];
        let mut file = File::open(path).map_err(read)?;
        if file.read_exact(&mut magic).is_err() || &magic != SNAPSHOT_MAGIC {
            return Err(corrupt_snapshot(path, NOT_A_SNAPSHOT));
        }
    }
    let current = read_current(dir)?;
    check_current(dir, &files, &current)?;
    let newest = files.segments.len().saturating_sub(1);
    let mut oldest = None;
    for (i, (first, path)) in files.segments.iter().enumerate() {
        let named = current.as_ref().is_some_and(|(seq, _)| seq == first);
        let read = |e: io::Error| io_error("cannot read", path, e);
        match segment_header(path, i == newest, named).map_err(read)? {
            Header::Good => {
                oldest.get_or_insert((*first, path));
            }
            Header::TornCreation(_) => {}
            Header::Bad => return Err(bad_header(path)),
        }
    }
    let next = snapshot.map_or(1, |(seq, _)| seq.0 + 1);
    match oldest {
        Some((first, path)) if first.0 > next => Err(JournalError(format!(
            "journal {} starts at seq {} (its name), but no snapshot or segment holds the \
             changes before it: expected the change with seq {next}, found {} (a journal \
             file is missing). Refusing to start rather than silently drop those changes; \
             restore the data directory from a backup",
            path.display(),
            first.0,
            first.0
        ))),
        _ => Ok(()),
    }
}

/// `CURRENT`, if there is one, names a segment that exists.
fn check_current(
    dir: &Path,
    files: &Files,
    current: &Option<(Seq, String)>,
) -> Result<(), JournalError> {
    match current {
        Some((seq, name)) if !files.segments.iter().any(|(s, _)| s == seq) => {
            Err(JournalError(format!(
                "journal segment {} is missing: {} names it as the newest segment. A journal \
                 file was deleted or lost; refusing to start rather than silently drop the \
                 changes in it; restore the data directory from a backup",
                dir.join(name).display(),
                dir.join(CURRENT).display()
            )))
        }
        _ => Ok(()),
    }
}

const NOT_A_SNAPSHOT: &str = "it does not start like a snapshot";

fn corrupt_snapshot(path: &Path, why: &str) -> JournalError {
    JournalError(format!(
        "snapshot {} is corrupt: {why}. Refusing to start rather than lose \
         the orders in it; restore the data directory from a backup",
        path.display()
    ))
}

fn corrupt_segment(path: &Path, at: u64, why: &str) -> JournalError {
    JournalError(format!(
        "journal {} is corrupt at byte {at}: {why}. Refusing to start rather than \
         silently drop the changes after it; restore the data directory from a backup",
        path.display()
    ))
}

fn bad_header(path: &Path) -> JournalError {
    corrupt_segment(path, 0, "it does not start like a journal segment")
}

/// What a segment's first 8 bytes say.
enum Header {
    Good,
    /// A torn creation (recovery removes it): the file's length.
    TornCreation(u64),
    Bad,
}

/// `named`: `CURRENT` names this segment, so its magic was on disk before
/// any record could go in (a bad header there is damage, not a torn creation).
fn segment_header(path: &Path, newest: bool, named: bool) -> io::Result<Header> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut magic = [0u8; 8];
    if len >= 8 && file.read_exact(&mut magic).is_ok() && &magic == JOURNAL_MAGIC {
        return Ok(Header::Good);
    }
    // A segment is created with its magic fsynced before `CURRENT` names
    // it and before any record, so a bad header is only a torn creation
    // in a newest segment `CURRENT` does not name yet, holding nothing.
    if newest && !named && (len <= 8 || zero_from(path, 0)?) {
        return Ok(Header::TornCreation(len));
    }
    Ok(Header::Bad)
}

/// Loads a snapshot into `broker`; how many records it held.
fn load_snapshot(path: &Path, named: Seq, broker: &Broker) -> Result<u64, String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut input = BufReader::with_capacity(1 << 20, file);
    let mut magic = [0u8; 8];
    if len < 8 || input.read_exact(&mut magic).is_err() || &magic != SNAPSHOT_MAGIC {
        return Err(NOT_A_SNAPSHOT.into());
    }
    let mut frames = Frames::new(input, 8, len);
    let mut records = 0u64;
    let mut started = false;
    loop {
        let at = frames.offset();
        let payload = match frames.next_payload().map_err(|e| e.to_string())? {
            Ok(Some(payload)) => payload,
            Ok(None) => return Err("it ends before its end record".into()),
            Err(e) => return Err(format!("{e} at byte {at}")),
        };
        let record =
            Record::decode(payload).map_err(|e| format!("unreadable record at byte {at}: {e}"))?;
        match &record {
            Record::Snapshot { seq, .. } if !started && *seq == named => started = true,
            _ if !started => return Err("its first record is not its header".into()),
            Record::Snapshot { .. } => return Err(format!("a second header at byte {at}")),
            Record::End { records: n } if *n == records => break,
            Record::End { .. } => return Err(format!("its end record at byte {at} miscounts")),
            _ => records += 1,
        }
        broker.restore(record);
    }
    if frames.offset() != len {
        return Err(format!("bytes after its end record at {}", frames.offset()));
    }
    Ok(records)
}

/// `named`: `CURRENT` names this segment (see [`segment_header`]).
fn replay_segment(
    path: &Path,
    newest: bool,
    named: bool,
    broker: &Broker,
    recovery: &mut Recovery,
) -> Result<(), JournalError> {
    let corrupt = |at: u64, why: String| corrupt_segment(path, at, &why);
    let read = |e: io::Error| io_error("cannot read", path, e);
    match segment_header(path, newest, named).map_err(read)? {
        Header::Good => {}
        Header::TornCreation(len) => {
            fs::remove_file(path).map_err(|e| io_error("cannot remove", path, e))?;
            recovery.torn = Some((path.to_path_buf(), 0, len));
            return Ok(());
        }
        Header::Bad => return Err(bad_header(path)),
    }
    let mut file = File::open(path).map_err(read)?;
    let len = file.metadata().map_err(read)?.len();
    file.seek(SeekFrom::Start(8)).map_err(read)?;
    let input = BufReader::with_capacity(1 << 20, file);
    let mut frames = Frames::new(input, 8, len);
    let snapshot = recovery.snapshot.unwrap_or(Seq(0));
    loop {
        let at = frames.offset();
        let bad = match frames.next_payload().map_err(read)? {
            Ok(None) => return Ok(()),
            Ok(Some(payload)) => {
                let record =
                    Record::decode(payload).map_err(|e| corrupt(at, format!("unreadable: {e}")))?;
                let changes = record.changes();
                // Check every member's seq first: a group is applied whole.
                let mut next = recovery.last.0 + 1;
                for change in changes {
                    let seq = match change {
                        Record::Snapshot { .. } | Record::End { .. } => {
                            return Err(corrupt(at, "a snapshot record in the journal".into()));
                        }
                        Record::Group { .. } => {
                            return Err(corrupt(at, "a group inside a group".into()));
                        }
                        r => r.seq().expect("change records have a seq"),
                    };
                    if seq <= snapshot {
                        continue; // the snapshot holds it already
                    }
                    if seq.0 != next {
                        return Err(corrupt(
                            at,
                            format!(
                                "expected the change with seq {next}, found {} \
                                 (a journal file is missing)",
                                seq.0
                            ),
                        ));
                    }
                    next += 1;
                }
                if changes.is_empty() {
                    return Err(corrupt(at, "an empty group".into()));
                }
                let applied = next - (recovery.last.0 + 1);
                if applied > 0 {
                    for change in changes {
                        if change.seq().is_some_and(|s| s > snapshot) {
                            broker.restore(change.clone());
                        }
                    }
                    recovery.last = Seq(next - 1);
                    recovery.replayed += applied;
                    recovery.replayed_bytes += frames.offset() - at;
                }
                continue;
            }
            Err(bad) => bad,
        };
        // Only the newest segment is written to, so only its tail can be
        // torn, and only by its last write; anything else is damage.
        if !newest {
            return Err(corrupt(at, bad.to_string()));
        }
        if bad == FrameError::BadLength(0) && zero_from(path, at).map_err(read)? {
            // The writer preallocates space, and a broker that stopped
            // without sealing the segment (a crash) leaves its unused rest:
            // zeros to the end, no record in them.
            info!(
                file = %path.display(),
                offset = at,
                "the newest journal segment ends in unused preallocated space; cut"
            );
            cut(path, at).map_err(|e| io_error("cannot cut the unused space of", path, e))?;
            return Ok(());
        }
        if let Some(why) = not_torn(path, at, bad).map_err(read)? {
            return Err(corrupt(at, format!("{bad}, and {why}")));
        }
        cut(path, at).map_err(|e| io_error("cannot cut the torn tail of", path, e))?;
        recovery.torn = Some((path.to_path_buf(), at, len - at));
        return Ok(());
    }
}

/// Why the bad frame at `at`, in the newest segment, is not a torn tail (an
/// incomplete last write, which may be cut); None if it is one.
///
/// A write the crash cut short leaves a prefix of its frames, or (after a
/// power loss) a file whose last pages read as zeros. So the tail is torn
/// only if no well-formed frame starts anywhere after `at` (else the cut
/// would drop records that were written after the damage), the frame at
/// `at` is not complete (its checksum does not match the bytes to the end of
/// the file, which a damaged length field would hide), and, if the file
/// holds the whole frame, it ends in zeros from inside that frame on.
fn not_torn(path: &Path, at: u64, bad: FrameError) -> io::Result<Option<String>> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(at))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)?;
    let header = FRAME_HEADER;
    if tail.len() > header {
        let crc = u32::from_le_bytes(tail[4..8].try_into().expect("4 bytes"));
        if crc32fast::hash(&tail[header..]) == crc {
            return Ok(Some(
                "the record is complete (its checksum matches the bytes to the end of the \
                 file): its length field is damaged"
                    .into(),
            ));
        }
    }
    if let Some(p) = next_valid_frame(&tail, 1) {
        return Ok(Some(format!(
            "a valid record follows at byte {}, so this is damage, not a torn last write",
            at + p as u64
        )));
    }
    // Where the run of zeros that ends the file begins.
    let zeros = tail.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    let torn = match bad {
        FrameError::Truncated => true,
        FrameError::BadLength(_) => zeros == 0,
        FrameError::Checksum { end } => zeros < (end - at) as usize,
    };
    Ok((!torn)
        .then(|| "the file holds the whole record, so it is damaged, not a write cut short".into()))
}

/// The offset in `bytes` (at or after `from`) of the first well-formed frame:
/// a plausible length, a payload that looks like JSON, a matching checksum
/// and a record that decodes. Linear but for the rare plausible candidate.
pub(super) fn next_valid_frame(bytes: &[u8], from: usize) -> Option<usize> {
    let header = FRAME_HEADER;
    let mut p = from;
    while p + header < bytes.len() {
        let len = u32::from_le_bytes(bytes[p..p + 4].try_into().expect("4 bytes")) as usize;
        let end = p + header + len;
        if len > 0
            && len <= MAX_PAYLOAD
            && end <= bytes.len()
            && matches!(bytes[p + header], b'{' | b'[')
        {
            let crc = u32::from_le_bytes(bytes[p + 4..p + 8].try_into().expect("4 bytes"));
            let payload = &bytes[p + header..end];
            if crc32fast::hash(payload) == crc && Record::decode(payload).is_ok() {
                return Some(p);
            }
        }
        p += 1;
    }
    None
}

/// Cuts the newest segment at `at` (its torn tail or unused space).
fn cut(path: &Path, at: u64) -> io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(at)?;
    file.sync_all()
}

/// Whether every byte of the file from `from` on is zero.
fn zero_from(path: &Path, from: u64) -> io::Result<bool> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(from))?;
    let mut buf = [0u8; 8192];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(true);
        }
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
    }
}
