//! The two pipes of a headless Claude Code process: the input FIFO the agent writes user
//! messages into, and the stream file the agent follows.
//!
//! Promises:
//! - [`run_input_writer`] opens the FIFO without ever blocking a thread on `open(2)`
//!   (non-blocking open, retried while nobody reads yet), writes each line it is given
//!   in order, and closes the FIFO (so Claude Code sees EOF and exits) when its channel
//!   closes.
//! - [`follow_stream`] reports every line Claude Code writes to `stream.jsonl`, in order,
//!   parsed by [`crate::stream_json`], and then exactly one [`StreamNews::ClaudeExited`]
//!   once the launcher has recorded the exit status (or died without doing so). All
//!   lines written before the exit are reported before it. Polling at EOF (every
//!   [`POLL_INTERVAL`]) rather than a pipe keeps the stream a regular, durable file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::stream_json::StreamLine;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// How often the follower looks for new output at EOF, and the writer for a reader.
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// What the follower tells the supervisor.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamNews {
    /// What one stream line said (often nothing).
    Line(StreamLine),
    /// Claude Code exited. `exit_code` is its exit status (128+N for signal N), or -1
    /// when the launcher was killed before it could record one.
    ClaudeExited { exit_code: i32 },
}

/// Writes lines into the FIFO at `fifo` until `lines` closes, then closes the FIFO.
pub async fn run_input_writer(fifo: PathBuf, mut lines: mpsc::UnboundedReceiver<String>) {
    let mut sender = loop {
        match tokio::net::unix::pipe::OpenOptions::new().open_sender(&fifo) {
            Ok(sender) => break sender,
            // ENXIO: no reader has the FIFO open yet (Claude Code is still starting).
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENXIO as i32) => {
                if lines.is_closed() && lines.is_empty() {
                    return;
                }
                tokio::time::sleep(POLL_INTERVAL).await;
            }
            Err(e) => {
                tracing::error!(fifo = %fifo.display(), error = %e, "failed to open Claude Code's input FIFO");
                return;
            }
        }
    };
    while let Some(line) = lines.recv().await {
        if let Err(e) = sender.write_all(line.as_bytes()).await {
            // Claude Code is gone (EPIPE); the follower reports its exit.
            tracing::warn!(error = %e, "failed to write to Claude Code's input");
            return;
        }
    }
    tracing::debug!("closing Claude Code's input");
}

/// Follows `stream` from byte `start_offset` until Claude Code has exited.
///
/// Exit is known when `exit_status` appears (the launcher writes it atomically after
/// Claude Code exits) or when the launcher process `launcher_pid` is gone without it.
pub async fn follow_stream<M>(
    stream: PathBuf,
    start_offset: u64,
    exit_status: PathBuf,
    launcher_pid: u32,
    news: mpsc::Sender<M>,
) where
    M: From<StreamNews>,
{
    follow_lines(
        stream,
        start_offset,
        exit_status,
        launcher_pid,
        news,
        crate::stream_json::parse_line,
    )
    .await
}

/// How a followed file's lines are read: stream-json (headless) or the transcript
/// (interactive, [`crate::transcript::parse_line`]).
pub type LineParser = fn(&str) -> Result<StreamLine, crate::stream_json::StreamLineError>;

/// [`follow_stream`] with another line parser; the same promises.
pub async fn follow_lines<M>(
    stream: PathBuf,
    start_offset: u64,
    exit_status: PathBuf,
    launcher_pid: u32,
    news: mpsc::Sender<M>,
    parse: LineParser,
) where
    M: From<StreamNews>,
{
    let mut file: Option<tokio::fs::File> = None;
    let mut pending = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        if file.is_none() {
            file = open_at(&stream, start_offset).await;
        }
        let read = match file.as_mut() {
            Some(f) => f.read(&mut chunk).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "failed to read Claude Code's stream");
                0
            }),
            None => 0,
        };
        if read > 0 {
            pending.extend_from_slice(&chunk[..read]);
            if pending.len() > MAX_LINE_BYTES && !pending.contains(&b'\n') {
                tracing::warn!(bytes = pending.len(), "dropping an overlong stream line");
                pending.clear();
            }
            if !send_complete_lines(&mut pending, &news, parse).await {
                return;
            }
            continue;
        }
        // At EOF. Has Claude Code exited? Check the status file before liveness, and
        // again after, so a status written in between is not missed.
        let exit_code = match read_exit_status(&exit_status).await {
            Some(code) => Some(code),
            None if !process_is_alive(launcher_pid) => {
                Some(read_exit_status(&exit_status).await.unwrap_or(-1))
            }
            None => None,
        };
        let Some(exit_code) = exit_code else {
            tokio::time::sleep(POLL_INTERVAL).await;
            continue;
        };
        // Everything Claude Code wrote is in the file now; drain it, including a last
        // line without its newline.
        if file.is_none() {
            file = open_at(&stream, start_offset).await;
        }
        if let Some(f) = file.as_mut() {
            let mut rest = Vec::new();
            if let Err(e) = f.take(MAX_LINE_BYTES as u64).read_to_end(&mut rest).await {
                tracing::warn!(error = %e, "failed to read the end of Claude Code's stream");
            }
            pending.extend_from_slice(&rest);
        }
        if !pending.is_empty() && pending.last() != Some(&b'\n') {
            pending.push(b'\n');
        }
        if !send_complete_lines(&mut pending, &news, parse).await {
            return;
        }
        let _ = news
            .send(M::from(StreamNews::ClaudeExited { exit_code }))
            .await;
        return;
    }
}

/// The longest line kept while waiting for its newline; a longer one (the file is written
/// by the session) is dropped rather than held in memory.
const MAX_LINE_BYTES: usize = 32 * 1024 * 1024;

/// Opens a file the session writes: never through a symbolic link, only a regular file.
async fn open_at(path: &Path, offset: u64) -> Option<tokio::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let std_file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits() | nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)
        .ok()?;
    if !std_file.metadata().ok()?.is_file() {
        return None;
    }
    let mut file = tokio::fs::File::from_std(std_file);
    file.seek(std::io::SeekFrom::Start(offset)).await.ok()?;
    Some(file)
}

/// Sends every complete line in `pending` and keeps the incomplete rest. False when the
/// supervisor is gone.
async fn send_complete_lines<M>(
    pending: &mut Vec<u8>,
    news: &mpsc::Sender<M>,
    parse: LineParser,
) -> bool
where
    M: From<StreamNews>,
{
    let Some(last_newline) = pending.iter().rposition(|b| *b == b'\n') else {
        return true;
    };
    let complete: Vec<u8> = pending.drain(..=last_newline).collect();
    for line in complete.split(|b| *b == b'\n') {
        if line.is_empty() {
            continue;
        }
        let Some(parsed) = news_of_line(line, parse) else {
            continue;
        };
        if news.send(M::from(StreamNews::Line(parsed))).await.is_err() {
            return false;
        }
    }
    true
}

/// What one complete line of a followed file (without its newline) tells the supervisor:
/// `None` for a line that is not JSON (logged and skipped) or that says nothing. Invalid
/// UTF-8 is replaced, not refused.
pub fn news_of_line(line: &[u8], parse: LineParser) -> Option<StreamLine> {
    let text = String::from_utf8_lossy(line);
    let parsed = match parse(&text) {
        Ok(parsed) => parsed,
        Err(e) => {
            tracing::warn!(error = %e, "skipping a stream line that is not JSON");
            return None;
        }
    };
    if parsed.kinds.is_empty() && parsed.reported_total_usd.is_none() {
        return None;
    }
    Some(parsed)
}

async fn read_exit_status(path: &Path) -> Option<i32> {
    let text = crate::claude::read_small_file(path, 64)?;
    Some(text.trim().parse().unwrap_or(-1))
}

/// Whether `pid` exists (signal 0 probes without signalling).
pub fn process_is_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use parhelia_proto::event;
    use std::io::Write;

    #[tokio::test]
    async fn follower_reports_lines_in_order_then_the_exit() {
        let dir = tempfile::tempdir().unwrap();
        let stream = dir.path().join("stream.jsonl");
        let exit_status = dir.path().join("exit_status");
        std::fs::write(&stream, "old line from an earlier process\n").unwrap();
        let start = std::fs::metadata(&stream).unwrap().len();
        // A live process standing in for the launcher.
        let mut launcher = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let (news_tx, mut news) = mpsc::channel::<StreamNews>(16);
        tokio::spawn(follow_stream(
            stream.clone(),
            start,
            exit_status.clone(),
            launcher.id(),
            news_tx,
        ));

        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&stream)
            .unwrap();
        // A line written in two pieces is reported once, whole.
        file.write_all(br#"{"type":"assistant","message":{"id":"m","content":[{"type":"te"#)
            .unwrap();
        file.flush().unwrap();
        file.write_all(b"xt\",\"text\":\"hi\"}]}}\n").unwrap();
        let first = news.recv().await.unwrap();
        assert!(
            matches!(&first, StreamNews::Line(l) if matches!(&l.kinds[0], event::Kind::AssistantText(t) if t.text == "hi")),
            "{first:?}"
        );
        // A final line without a newline still counts once the exit is known.
        file.write_all(br#"{"type":"result","subtype":"success","total_cost_usd":0.5}"#)
            .unwrap();
        std::fs::write(&exit_status, "0\n").unwrap();
        let second = news.recv().await.unwrap();
        assert!(
            matches!(&second, StreamNews::Line(l) if matches!(&l.kinds[0], event::Kind::TurnResult(r) if r.claude_total_cost_usd == 0.5)),
            "{second:?}"
        );
        assert_eq!(
            news.recv().await.unwrap(),
            StreamNews::ClaudeExited { exit_code: 0 }
        );
        assert_eq!(
            news.recv().await,
            None,
            "exactly one exit, then the follower ends"
        );
        launcher.kill().unwrap();
        launcher.wait().unwrap();
    }

    #[tokio::test]
    async fn a_dead_launcher_without_exit_status_is_an_exit() {
        let dir = tempfile::tempdir().unwrap();
        let mut launcher = std::process::Command::new("true").spawn().unwrap();
        let pid = launcher.id();
        launcher.wait().unwrap();
        let (news_tx, mut news) = mpsc::channel::<StreamNews>(4);
        tokio::spawn(follow_stream(
            dir.path().join("never-written.jsonl"),
            0,
            dir.path().join("exit_status"),
            pid,
            news_tx,
        ));
        assert_eq!(
            news.recv().await.unwrap(),
            StreamNews::ClaudeExited { exit_code: -1 }
        );
    }

    #[tokio::test]
    async fn the_input_writer_delivers_lines_and_closes_the_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("in.fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (lines, lines_rx) = mpsc::unbounded_channel();
        lines.send("one\n".to_string()).unwrap();
        let writer = tokio::spawn(run_input_writer(fifo.clone(), lines_rx));
        // The reader arrives later, as Claude Code does; it reads until EOF.
        let reader = tokio::task::spawn_blocking(move || std::fs::read_to_string(&fifo).unwrap());
        lines.send("two\n".to_string()).unwrap();
        drop(lines);
        assert_eq!(reader.await.unwrap(), "one\ntwo\n");
        writer.await.unwrap();
    }
}
