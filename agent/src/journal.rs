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
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
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
        // A separate read handle: readers never move the writer's file position.
        let io = |action: &'static str| {
            let path = self.inner.path.clone();
            move |source| JournalError::Io {
                action,
                path,
                source,
            }
        };
        let mut file = File::open(&self.inner.path).map_err(io("open for reading"))?;
        file.seek(SeekFrom::Start(start)).map_err(io("seek"))?;
        let mut bytes = vec![0u8; (stop - start) as usize];
        file.read_exact(&mut bytes).map_err(io("read"))?;
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
                // Everything announced is already readable.
                assert!(events.last().map(|e| e.seq) >= Some(last));
                for event in events {
                    seen.push(event.seq);
                    next = event.seq + 1;
                }
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
