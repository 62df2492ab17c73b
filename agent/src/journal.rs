//! The durable, append-only event journal.
//!
//! Format (version 1): one file per container, `<volume_dir>/journal/<container_id>.jsonl`,
//! UTF-8, one JSON object per `\n`-terminated line: the `serde_json` form of one
//! [`parhelia_proto::Event`], e.g.
//! `{"seq":3,"ts_ms":1700000000000,"kind":{"status_changed":{"status":2,"hook_event":"SessionStart","detail":""}}}`.
//! Enum fields (`status`, `mode`, `outcome`) are their proto numbers. Fields added to the
//! proto later default when old lines are read (the wire types carry `serde(default)`).
//!
//! Promises:
//! - Sequence numbers are gap-free and start at 1; line `n` of the file holds `seq == n`.
//! - [`Journal::append`] returns only after the line is written and `fdatasync`ed, and
//!   only then tells subscribers about it. Nothing is announced that is not durable.
//! - Opening an existing journal keeps every complete line, truncates a torn final line
//!   (a crash mid-write) and continues numbering after the last complete event. A
//!   complete line that does not parse, or a sequence gap, is corruption and is refused.
//! - [`Journal::read_from`] returns events in order from any seq; together with
//!   [`Journal::subscribe`] a reader can catch up and then follow without losing events
//!   (it re-reads from the file; the notification only carries the latest seq).
//!
//! The journal is a single writer (the supervisor); readers may be many. IO here is
//! blocking; async callers use [`Journal::append_async`] and [`Journal::read_from_async`].

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use parhelia_proto::{Event, event};
use tokio::sync::watch;

/// Journal failures. Each message reads after "failed to ".
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// An IO operation on the journal file failed.
    #[error("{action} journal {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A complete line in the journal is not an event, or its seq is out of order.
    #[error("read journal {path}: line {line} is corrupt: {reason}")]
    Corrupt {
        path: PathBuf,
        line: u64,
        reason: String,
    },
    /// Serializing an event failed (never expected for wire types).
    #[error("encode a journal event: {0}")]
    Encode(#[from] serde_json::Error),
    /// The blocking task running the IO was lost.
    #[error("run journal IO: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// A handle to the journal; cheap to clone and share between tasks.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<JournalInner>,
}

struct JournalInner {
    path: PathBuf,
    writer: Mutex<JournalWriter>,
    last_seq: watch::Sender<u64>,
    /// Ballast beside the journal, given back when an append finds no space.
    reserve: crate::disk::Reserve,
    /// Set once an append found the disk full (whether or not the retry succeeded).
    no_space: watch::Sender<bool>,
}

struct JournalWriter {
    file: File,
    /// `line_offsets[i]` is where the line of seq `i + 1` starts.
    line_offsets: Vec<u64>,
    /// Where the next line will be written (the file's length).
    end: u64,
}

impl JournalWriter {
    /// Writes `line` at the end and syncs it; on failure the file is cut back, so no
    /// torn line is left for the next append to land after.
    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        let start = self.end;
        let written = self
            .file
            .write_all(line)
            .and_then(|()| self.file.sync_data());
        if written.is_err() {
            let _ = self.file.set_len(start);
            let _ = self.file.seek(SeekFrom::Start(start));
        }
        written
    }
}

/// What [`Journal::open`] found in an existing file.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct OpenReport {
    /// Complete events kept.
    pub events: u64,
    /// Bytes of a torn final line that were cut off.
    pub truncated_bytes: u64,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Journal {
    /// Opens (creating if needed) the journal at `path`, recovering a torn tail.
    pub fn open(path: &Path) -> Result<(Journal, OpenReport), JournalError> {
        let io = |action: &'static str| {
            let path = path.to_path_buf();
            move |source| JournalError::Io {
                action,
                path,
                source,
            }
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io("create the directory of"))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io("open"))?;

        let JournalScan { line_offsets, end } =
            scan(BufReader::new(&mut file)).map_err(|e| match e {
                ScanError::Io(source) => JournalError::Io {
                    action: "read",
                    path: path.to_path_buf(),
                    source,
                },
                ScanError::Corrupt { line, reason } => JournalError::Corrupt {
                    path: path.to_path_buf(),
                    line,
                    reason,
                },
            })?;
        let length = file.metadata().map_err(io("stat"))?.len();
        let truncated_bytes = length - end;
        if truncated_bytes > 0 {
            file.set_len(end).map_err(io("truncate the torn tail of"))?;
            file.sync_all().map_err(io("sync"))?;
        }
        file.seek(SeekFrom::Start(end)).map_err(io("seek"))?;
        if let Some(parent) = path.parent() {
            // A new journal file must survive a crash too: sync its directory entry.
            File::open(parent)
                .and_then(|dir| dir.sync_all())
                .map_err(io("sync the directory of"))?;
        }

        let report = OpenReport {
            events: line_offsets.len() as u64,
            truncated_bytes,
        };
        let (last_seq, _) = watch::channel(report.events);
        let reserve = crate::disk::Reserve::new(
            crate::disk::Reserve::path_for(path),
            crate::disk::RESERVE_BYTES,
        );
        if !reserve.fill() {
            tracing::warn!(path = %reserve.path().display(), "no room for the journal's reserve: the disk is nearly full");
        }
        let journal = Journal {
            inner: Arc::new(JournalInner {
                path: path.to_path_buf(),
                writer: Mutex::new(JournalWriter {
                    file,
                    line_offsets,
                    end,
                }),
                last_seq,
                reserve,
                no_space: watch::channel(false).0,
            }),
        };
        Ok((journal, report))
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The seq of the last durable event (0 when empty).
    pub fn last_seq(&self) -> u64 {
        *self.inner.last_seq.borrow()
    }

    /// A receiver whose value is the last durable seq; it changes after every append.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.last_seq.subscribe()
    }

    /// Appends one event: assigns the next seq, writes the line, `fdatasync`s, then
    /// announces the new seq. Blocking.
    pub fn append(&self, kind: event::Kind) -> Result<Event, JournalError> {
        let mut writer = self.inner.writer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(what) = self.restore_if_unlinked(&mut writer) {
            // Said in the journal itself, so whoever reads it knows the file was
            // touched (and that no event was lost).
            self.append_locked(
                &mut writer,
                event::Kind::AgentError(parhelia_proto::AgentError {
                    code: String::new(),
                    message: what,
                }),
            )?;
        }
        self.append_locked(&mut writer, kind)
    }

    fn append_locked(
        &self,
        writer: &mut JournalWriter,
        kind: event::Kind,
    ) -> Result<Event, JournalError> {
        let event = Event {
            seq: writer.line_offsets.len() as u64 + 1,
            ts_ms: now_ms(),
            kind: Some(kind),
        };
        let mut line = serde_json::to_vec(&event)?;
        line.push(b'\n');
        let start = writer.end;
        let mut written = writer.write_line(&line);
        if let Err(source) = &written
            && crate::disk::is_no_space(source)
        {
            // The disk is full: say so, and spend the ballast on saying it.
            self.inner.no_space.send_replace(true);
            if self.inner.reserve.release() {
                tracing::warn!("the disk is full: released the journal's reserve");
                written = writer.write_line(&line);
            }
        }
        if let Err(source) = written {
            return Err(JournalError::Io {
                action: "append to",
                path: self.inner.path.clone(),
                source,
            });
        }
        writer.line_offsets.push(start);
        writer.end = start + line.len() as u64;
        // Announce only after the data is durable. `send_replace` never fails, even with
        // no subscribers.
        self.inner.last_seq.send_replace(event.seq);
        Ok(event)
    }

    /// Turns true once an append found no space left (see [`crate::disk`]).
    pub fn no_space(&self) -> watch::Receiver<bool> {
        self.inner.no_space.subscribe()
    }

    /// When the journal's path no longer names the file this agent writes (deleted, or
    /// replaced by another file), writes what the agent holds back to the path (temp
    /// file, fsync, rename, directory fsync) and continues appending there, so readers
    /// of the volume (the coordinator after the agent is gone, the next container's cost
    /// total) find every event again. Best effort: a failure is logged and appending
    /// continues into the file the agent holds, which still serves every stream.
    fn restore_if_unlinked(&self, writer: &mut JournalWriter) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let path = &self.inner.path;
        let ours = writer.file.metadata().ok()?;
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.dev() == ours.dev() && meta.ino() == ours.ino() => {
                if meta.len() < writer.end {
                    // Cut short in place: those bytes are gone for everyone. Readers
                    // get a gap for what no longer parses; nothing to restore from.
                    tracing::error!(path = %path.display(), length = meta.len(), expected = writer.end, "the journal was truncated under the agent");
                }
                return None;
            }
            Ok(_) | Err(_) => {}
        }
        let events = writer.line_offsets.len();
        match self.rewrite_to_path(writer) {
            Ok(()) => {
                tracing::warn!(
                    path = %path.display(),
                    events,
                    "the journal file was missing or replaced; rewrote it from the agent's copy"
                );
                Some(format!(
                    "the journal file was missing or replaced; the agent rewrote its {events} events from its own copy (none lost)"
                ))
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "the journal file is missing and could not be rewritten");
                None
            }
        }
    }

    fn rewrite_to_path(&self, writer: &mut JournalWriter) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let path = &self.inner.path;
        let parent = path.parent().unwrap_or_else(|| Path::new("."));
        std::fs::create_dir_all(parent)?;
        let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(".restore.tmp");
        let tmp = parent.join(tmp_name);
        let mut copy = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        let mut offset = 0u64;
        let mut buffer = vec![0u8; 64 * 1024];
        while offset < writer.end {
            let want = ((writer.end - offset) as usize).min(buffer.len());
            writer.file.read_exact_at(&mut buffer[..want], offset)?;
            copy.write_all(&buffer[..want])?;
            offset += want as u64;
        }
        copy.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(parent)?.sync_all()?;
        copy.seek(SeekFrom::Start(writer.end))?;
        writer.file = copy;
        Ok(())
    }

    /// [`Journal::append`] on a blocking thread.
    pub async fn append_async(&self, kind: event::Kind) -> Result<Event, JournalError> {
        let journal = self.clone();
        tokio::task::spawn_blocking(move || journal.append(kind)).await?
    }

    /// Up to `max` events starting at `from_seq` (0 is treated as 1), in order. Blocking.
    pub fn read_from(&self, from_seq: u64, max: usize) -> Result<Vec<Event>, JournalError> {
        let from_seq = from_seq.max(1);
        let (start, stop, count) = {
            let writer = self.inner.writer.lock().unwrap_or_else(|p| p.into_inner());
            let total = writer.line_offsets.len() as u64;
            if from_seq > total || max == 0 {
                return Ok(Vec::new());
            }
            let last = (from_seq - 1).saturating_add(max as u64).min(total);
            let start = writer.line_offsets[(from_seq - 1) as usize];
            let stop = if last == total {
                writer.end
            } else {
                writer.line_offsets[last as usize]
            };
            (start, stop, (last - from_seq + 1) as usize)
        };
        // Read through the writer's own open file (a duplicated descriptor, positional
        // reads): readers never move the writer's position, and a journal whose path was
        // deleted or replaced under the agent is still served in full from the file the
        // agent wrote.
        let file = {
            let writer = self.inner.writer.lock().unwrap_or_else(|p| p.into_inner());
            writer.file.try_clone()
        }
        .map_err(|source| JournalError::Io {
            action: "open for reading",
            path: self.inner.path.clone(),
            source,
        })?;
        let mut bytes = vec![0u8; (stop - start) as usize];
        {
            use std::os::unix::fs::FileExt;
            file.read_exact_at(&mut bytes, start)
                .map_err(|source| JournalError::Io {
                    action: "read",
                    path: self.inner.path.clone(),
                    source,
                })?;
        }
        parse_lines(&bytes, from_seq, count).map_err(|(line, reason)| JournalError::Corrupt {
            path: self.inner.path.clone(),
            line,
            reason,
        })
    }

    /// [`Journal::read_from`] on a blocking thread.
    pub async fn read_from_async(
        &self,
        from_seq: u64,
        max: usize,
    ) -> Result<Vec<Event>, JournalError> {
        let journal = self.clone();
        tokio::task::spawn_blocking(move || journal.read_from(from_seq, max)).await?
    }
}

/// Reads every complete event of a journal file without opening it for writing; a torn
/// or corrupt line ends the read. Used to total the cost of earlier containers.
pub fn read_all_lenient(path: &Path) -> std::io::Result<Vec<Event>> {
    parse_lenient(BufReader::new(File::open(path)?))
}

/// The events of a journal read leniently ([`read_all_lenient`]): every line that parses,
/// up to the first that does not (a torn or corrupt line ends the read).
pub fn parse_lenient(reader: impl BufRead) -> std::io::Result<Vec<Event>> {
    let mut events = Vec::new();
    for line in reader.split(b'\n') {
        match serde_json::from_slice::<Event>(&line?) {
            Ok(event) => events.push(event),
            Err(_) => break,
        }
    }
    Ok(events)
}

/// Where the complete events of a journal are ([`scan`]).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct JournalScan {
    /// `line_offsets[i]` is where the line of seq `i + 1` starts.
    pub line_offsets: Vec<u64>,
    /// The end of the last complete line: what follows is a torn tail.
    pub end: u64,
}

/// Why [`scan`] refused a journal.
#[derive(Debug)]
pub enum ScanError {
    Io(std::io::Error),
    /// A complete line that is not an event, or whose seq is not its line number.
    Corrupt {
        line: u64,
        reason: String,
    },
}

/// Reads a journal from its start as [`Journal::open`] does: every complete line must be
/// the event whose seq is its line number; a final line without its newline is a torn
/// tail (not counted, not an error). Pure apart from `reader`.
pub fn scan(mut reader: impl BufRead) -> Result<JournalScan, ScanError> {
    let mut line_offsets = Vec::new();
    let mut end = 0u64;
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line).map_err(ScanError::Io)?;
        if read == 0 || line.last() != Some(&b'\n') {
            // EOF, possibly after a torn line without its newline.
            break;
        }
        let expected_seq = line_offsets.len() as u64 + 1;
        let event: Event =
            serde_json::from_slice(&line[..line.len() - 1]).map_err(|e| ScanError::Corrupt {
                line: expected_seq,
                reason: e.to_string(),
            })?;
        if event.seq != expected_seq {
            return Err(ScanError::Corrupt {
                line: expected_seq,
                reason: format!("seq {} where {expected_seq} was expected", event.seq),
            });
        }
        line_offsets.push(end);
        end += read as u64;
    }
    Ok(JournalScan { line_offsets, end })
}

/// The events of `count` consecutive journal lines in `bytes` (as [`Journal::read_from`]
/// reads them), the first being seq `from_seq`. A line that is not an event is refused
/// with its seq and the reason.
pub fn parse_lines(bytes: &[u8], from_seq: u64, count: usize) -> Result<Vec<Event>, (u64, String)> {
    let mut events = Vec::with_capacity(count.min(bytes.len() / 2 + 1));
    for (index, line) in bytes.split(|b| *b == b'\n').take(count).enumerate() {
        let event: Event = serde_json::from_slice(line)
            .map_err(|e| (from_seq.saturating_add(index as u64), e.to_string()))?;
        events.push(event);
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use parhelia_proto::{AssistantText, StopRequested};

    fn text(s: &str) -> event::Kind {
        event::Kind::AssistantText(AssistantText {
            message_id: "m".into(),
            text: s.into(),
            ..Default::default()
        })
    }

    fn texts(events: &[Event]) -> Vec<(u64, String)> {
        events
            .iter()
            .map(|e| match &e.kind {
                Some(event::Kind::AssistantText(t)) => (e.seq, t.text.clone()),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn seq_is_gap_free_from_one_and_every_line_is_an_event() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal/ctr-1.jsonl");
        let (journal, report) = Journal::open(&path).unwrap();
        assert_eq!(report, OpenReport::default());
        for i in 1..=5 {
            let event = journal.append(text(&format!("e{i}"))).unwrap();
            assert_eq!(event.seq, i);
            assert_eq!(journal.last_seq(), i);
        }
        let content = std::fs::read_to_string(&path).unwrap();
        let seqs: Vec<u64> = content
            .lines()
            .map(|l| serde_json::from_str::<Event>(l).unwrap().seq)
            .collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
        assert!(content.ends_with('\n'));
    }

    #[test]
    fn read_from_returns_exactly_the_requested_range_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(&dir.path().join("j.jsonl")).unwrap();
        for i in 1..=10 {
            journal.append(text(&format!("e{i}"))).unwrap();
        }
        let got = texts(&journal.read_from(4, 3).unwrap());
        assert_eq!(
            got,
            vec![(4, "e4".into()), (5, "e5".into()), (6, "e6".into())]
        );
        let tail = journal.read_from(8, 100).unwrap();
        assert_eq!(
            tail.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![8, 9, 10]
        );
        assert_eq!(journal.read_from(0, 1).unwrap()[0].seq, 1);
        assert!(journal.read_from(11, 10).unwrap().is_empty());
        assert!(journal.read_from(1, 0).unwrap().is_empty());
    }

    #[test]
    fn reopen_continues_numbering() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        {
            let (journal, _) = Journal::open(&path).unwrap();
            journal.append(text("a")).unwrap();
            journal.append(text("b")).unwrap();
        }
        let (journal, report) = Journal::open(&path).unwrap();
        assert_eq!(report.events, 2);
        assert_eq!(journal.last_seq(), 2);
        assert_eq!(journal.append(text("c")).unwrap().seq, 3);
        assert_eq!(
            texts(&journal.read_from(1, 10).unwrap()),
            vec![(1, "a".into()), (2, "b".into()), (3, "c".into())]
        );
    }

    #[test]
    fn a_torn_final_line_is_truncated_and_numbering_continues() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        {
            let (journal, _) = Journal::open(&path).unwrap();
            journal.append(text("a")).unwrap();
            journal.append(text("b")).unwrap();
        }
        let intact = std::fs::metadata(&path).unwrap().len();
        // A crash in the middle of writing event 3.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        let torn = br#"{"seq":3,"ts_ms":1,"kind":{"assis"#;
        file.write_all(torn).unwrap();
        drop(file);

        let (journal, report) = Journal::open(&path).unwrap();
        assert_eq!(report.events, 2);
        assert_eq!(report.truncated_bytes, torn.len() as u64);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), intact);
        assert_eq!(journal.append(text("c")).unwrap().seq, 3);
        let all = read_all_lenient(&path).unwrap();
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    }

    /// Issue 12 item 6: the journal's file is deleted under a live agent. Every
    /// event still reads back (from the agent's open file), and the next append
    /// puts the whole journal back at its path for readers of the volume.
    #[test]
    fn a_deleted_journal_is_still_served_and_is_rewritten_on_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal/ctr-1.jsonl");
        let (journal, _) = Journal::open(&path).unwrap();
        for i in 1..=3 {
            journal.append(text(&format!("e{i}"))).unwrap();
        }
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            texts(&journal.read_from(1, 10).unwrap()),
            vec![(1, "e1".into()), (2, "e2".into()), (3, "e3".into())]
        );
        // The rewrite is journaled first (seq 4), then the event (seq 5).
        assert_eq!(journal.append(text("e5")).unwrap().seq, 5);
        let on_disk = read_all_lenient(&path).unwrap();
        assert_eq!(
            on_disk.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5]
        );
        assert!(
            matches!(&on_disk[3].kind, Some(event::Kind::AgentError(e)) if e.message.contains("rewrote its 3 events")),
            "{:?}",
            on_disk[3]
        );
        // And appends keep landing in the file at the path, without another note.
        journal.append(text("e6")).unwrap();
        assert_eq!(read_all_lenient(&path).unwrap().len(), 6);
        let (_, report) = Journal::open(&path).unwrap();
        assert_eq!(report.events, 6);
    }

    /// A file put in the journal's place (another file renamed over it) is
    /// replaced by what the agent holds.
    #[test]
    fn a_replaced_journal_is_rewritten_from_the_agents_copy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let (journal, _) = Journal::open(&path).unwrap();
        journal.append(text("a")).unwrap();
        let other = dir.path().join("other");
        std::fs::write(&other, "{\"seq\":1}\n").unwrap();
        std::fs::rename(&other, &path).unwrap();
        journal.append(text("b")).unwrap();
        let on_disk = read_all_lenient(&path).unwrap();
        assert_eq!(on_disk.len(), 3);
        assert_eq!(
            texts(&[on_disk[0].clone(), on_disk[2].clone()]),
            vec![(1, "a".into()), (3, "b".into())]
        );
    }

    /// Cut short in place: what is gone cannot be read (an error, which the
    /// server turns into a gap), what is written later still reads.
    #[test]
    fn a_journal_truncated_in_place_fails_reads_of_what_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let (journal, _) = Journal::open(&path).unwrap();
        journal.append(text("a")).unwrap();
        journal.append(text("b")).unwrap();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        assert!(journal.read_from(1, 2).is_err());
        journal.append(text("c")).unwrap();
        assert!(journal.read_from(1, 1).is_err());
        assert_eq!(
            texts(&journal.read_from(3, 1).unwrap()),
            vec![(3, "c".into())]
        );
    }

    #[test]
    fn a_corrupt_complete_line_or_a_gap_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let corrupt = dir.path().join("corrupt.jsonl");
        std::fs::write(&corrupt, "{\"seq\":1}\nnot json\n{\"seq\":3}\n").unwrap();
        let err = Journal::open(&corrupt).err().unwrap().to_string();
        assert!(err.contains("line 2 is corrupt"), "{err}");

        let gap = dir.path().join("gap.jsonl");
        std::fs::write(&gap, "{\"seq\":1}\n{\"seq\":3}\n").unwrap();
        let err = Journal::open(&gap).err().unwrap().to_string();
        assert!(err.contains("seq 3 where 2 was expected"), "{err}");
    }

    #[tokio::test]
    async fn subscribers_are_told_only_after_the_event_is_readable() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(&dir.path().join("j.jsonl")).unwrap();
        let mut last_seq = journal.subscribe();
        let reader = journal.clone();
        let follower = tokio::spawn(async move {
            let mut next = 1;
            let mut seen = Vec::new();
            while next <= 3 {
                last_seq.changed().await.unwrap();
                let last = *last_seq.borrow_and_update();
                let events = reader.read_from_async(next, usize::MAX).await.unwrap();
                for event in events {
                    seen.push(event.seq);
                    next = event.seq + 1;
                }
                // Everything announced is already readable (an earlier read may have
                // taken it before it was announced: what was read so far counts).
                assert!(next > last, "announced {last}, read up to {}", next - 1);
            }
            seen
        });
        journal
            .append_async(event::Kind::StopRequested(StopRequested {
                reason: "x".into(),
            }))
            .await
            .unwrap();
        journal.append_async(text("b")).await.unwrap();
        journal.append_async(text("c")).await.unwrap();
        assert_eq!(follower.await.unwrap(), vec![1, 2, 3]);
    }
}
