//! Progress of the CLI's long operations (workspace upload, image build,
//! `session pull`, rollback/resume), on stderr. Where the code counts files
//! and bytes against known totals ([`Progress::transfer`]: the restore of a
//! pull; the coordinator's transfers of a `task create` (or `task dispatch`)
//! workspace streamed back to the CLI — the local copy, or on Modal the seed
//! checkpoint and its upload to the volume, one step each; the restore a resume's or rollback's
//! new agent runs, followed over its `WatchRestore`), the spinner becomes a
//! bar and JSON lines say `advance`.
//!
//! `--progress auto` (the default) draws an indicatif spinner, or a bar
//! where the operation knows its total, when stderr is a terminal, and
//! prints one JSON object per line on stderr otherwise (the schema is
//! [`Line`]; each says `"type":"progress"`, so a script tells them from an
//! error), whether or not the command's result is `--json`: stdout holds
//! only the result either way. `--progress json` prints the JSON lines on a
//! terminal too; `--progress never` (or `PARHELIA_PROGRESS=never`) prints
//! nothing. Inside `parhelia mcp-server` there is no display (the MCP
//! server reports progress as notifications of its own).
//!
//! Nothing here invents progress: a step is shown when the code reaches it,
//! and a bar only where the code counts what it has done against a known
//! total.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;

/// `--progress`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// A spinner or bar when stderr is a terminal; JSON lines otherwise
    #[default]
    Auto,
    /// One JSON object per line on stderr, terminal or not
    Json,
    /// No progress output
    Never,
}

static MODE: OnceLock<ProgressMode> = OnceLock::new();

/// Sets the mode for this process (`parhelia`'s `main`); until then there
/// is no progress output.
pub fn init(mode: ProgressMode) {
    let _ = MODE.set(mode);
}

/// What `--progress json` prints, one per line.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Line<'a> {
    /// Always `"progress"`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The operation: `task_create`, `task_dispatch`, `image_build`,
    /// `session_pull`, `rollback`, `resume`.
    pub op: &'a str,
    /// `step` (a new step began), `advance` (`done` of `total` units),
    /// or `finish` (the operation ended; `ok` says how).
    pub event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub done: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<&'static str>,
    /// With `advance` lines that count files too: files done of `files_total`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files_done: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files_total: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ok: Option<bool>,
    pub elapsed_ms: u64,
}

enum Display {
    Off,
    Bar(indicatif::ProgressBar),
    Json(JsonSink),
}

/// Where JSON lines go: stderr, or a buffer a test reads.
#[derive(Clone)]
enum JsonSink {
    Stderr,
    Buffer(Arc<Mutex<Vec<u8>>>),
}

/// Files and bytes of a transfer done, of known totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transfer {
    pub files_done: u64,
    pub files_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

impl Transfer {
    /// Whole percent done (of the bytes; of the files when there are no bytes).
    fn percent(&self) -> u64 {
        let (done, total) = if self.bytes_total > 0 {
            (self.bytes_done, self.bytes_total)
        } else {
            (self.files_done, self.files_total)
        };
        done.min(total)
            .saturating_mul(100)
            .checked_div(total)
            .unwrap_or(100)
    }
}

impl From<parhelia_checkpoint::RestoreProgress> for Transfer {
    fn from(p: parhelia_checkpoint::RestoreProgress) -> Self {
        Self {
            files_done: p.files_done,
            files_total: p.files_total,
            bytes_done: p.bytes_done,
            bytes_total: p.bytes_total,
        }
    }
}

/// One long operation's progress; dropped without [`Progress::finish`], it
/// ends as failed (an error is on its way to stderr).
pub struct Progress {
    op: &'static str,
    started: Instant,
    display: Display,
    finished: bool,
    /// The whole percent (and whether it was complete) of the current step's last
    /// `advance` JSON line: lines are written when it changes, so a large transfer
    /// writes at most about a hundred of them, whatever its callers report.
    last_percent: Mutex<Option<(u64, bool)>>,
}

impl Progress {
    /// Starts `op` at its first `step`, shown as the process's mode says.
    pub fn start(op: &'static str, step: &str) -> Self {
        let mode = MODE.get().copied().unwrap_or(ProgressMode::Never);
        let display = match mode {
            ProgressMode::Never => Display::Off,
            ProgressMode::Json => Display::Json(JsonSink::Stderr),
            ProgressMode::Auto if std::io::stderr().is_terminal() => {
                let bar = indicatif::ProgressBar::new_spinner();
                bar.set_style(spinner_style());
                bar.enable_steady_tick(Duration::from_millis(100));
                Display::Bar(bar)
            }
            ProgressMode::Auto => Display::Json(JsonSink::Stderr),
        };
        Self::with_display(op, step, display)
    }

    fn with_display(op: &'static str, step: &str, display: Display) -> Self {
        let progress = Self {
            op,
            started: Instant::now(),
            display,
            finished: false,
            last_percent: Mutex::new(None),
        };
        progress.step(step);
        progress
    }

    /// A progress that writes its JSON lines into `buffer` (tests of what
    /// `--progress json` prints).
    pub fn json_into(op: &'static str, step: &str, buffer: Arc<Mutex<Vec<u8>>>) -> Self {
        Self::with_display(op, step, Display::Json(JsonSink::Buffer(buffer)))
    }

    /// A progress that shows nothing (tests, callers without a display).
    pub fn hidden(op: &'static str) -> Self {
        Self {
            op,
            started: Instant::now(),
            display: Display::Off,
            finished: false,
            last_percent: Mutex::new(None),
        }
    }

    fn line(&self, event: &'static str) -> Line<'_> {
        Line {
            kind: "progress",
            op: self.op,
            event,
            step: None,
            done: None,
            total: None,
            unit: None,
            files_done: None,
            files_total: None,
            ok: None,
            elapsed_ms: self.started.elapsed().as_millis() as u64,
        }
    }

    fn emit(sink: &JsonSink, line: &Line<'_>) {
        let Ok(text) = serde_json::to_string(line) else {
            return;
        };
        match sink {
            JsonSink::Stderr => {
                let mut stderr = std::io::stderr().lock();
                let _ = writeln!(stderr, "{text}");
                let _ = stderr.flush();
            }
            JsonSink::Buffer(buffer) => {
                if let Ok(mut buffer) = buffer.lock() {
                    let _ = writeln!(buffer, "{text}");
                }
            }
        }
    }

    /// A new step began (a spinner's message).
    pub fn step(&self, step: &str) {
        if let Ok(mut last) = self.last_percent.lock() {
            *last = None;
        }
        match &self.display {
            Display::Off => {}
            Display::Bar(bar) => {
                bar.set_style(spinner_style());
                bar.set_prefix("");
                bar.set_message(crate::term::escape_untrusted(step).into_owned());
            }
            Display::Json(sink) => Self::emit(
                sink,
                &Line {
                    step: Some(step),
                    ..self.line("step")
                },
            ),
        }
    }

    /// Files and bytes of the current step done, of known totals (a bar of
    /// bytes with the files beside it; an `advance` line with both). Callable
    /// from any thread.
    pub fn transfer(&self, t: Transfer) {
        match &self.display {
            Display::Off => {}
            Display::Bar(bar) => {
                if bar.length() != Some(t.bytes_total) {
                    bar.set_style(transfer_style());
                    bar.set_length(t.bytes_total);
                }
                bar.set_prefix(format!("{}/{} files", t.files_done, t.files_total));
                bar.set_position(t.bytes_done);
            }
            Display::Json(sink) => {
                // A transfer of empty files is at 100% of its bytes before it is
                // complete: completion is a change of its own.
                let complete = t.files_done >= t.files_total && t.bytes_done >= t.bytes_total;
                let key = (t.percent(), complete);
                {
                    let Ok(mut last) = self.last_percent.lock() else {
                        return;
                    };
                    if *last == Some(key) {
                        return;
                    }
                    *last = Some(key);
                }
                Self::emit(
                    sink,
                    &Line {
                        done: Some(t.bytes_done),
                        total: Some(t.bytes_total),
                        unit: Some("bytes"),
                        files_done: Some(t.files_done),
                        files_total: Some(t.files_total),
                        ..self.line("advance")
                    },
                );
            }
        }
    }

    /// The operation ended (successfully when `ok`); the spinner is cleared.
    pub fn finish(mut self, ok: bool) {
        self.end(ok);
    }

    fn end(&mut self, ok: bool) {
        if self.finished {
            return;
        }
        self.finished = true;
        match &self.display {
            Display::Off => {}
            Display::Bar(bar) => bar.finish_and_clear(),
            Display::Json(sink) => Self::emit(
                sink,
                &Line {
                    ok: Some(ok),
                    ..self.line("finish")
                },
            ),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.end(false);
    }
}

fn spinner_style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner())
}

fn transfer_style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template(
        "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} · {prefix} ({eta})",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_parse_and_carry_the_schema() {
        let p = Progress::hidden("session_pull");
        let lines = [
            serde_json::to_string(&Line {
                step: Some("restoring the workspace"),
                ..p.line("step")
            })
            .unwrap(),
            serde_json::to_string(&Line {
                done: Some(512),
                total: Some(2048),
                unit: Some("bytes"),
                ..p.line("advance")
            })
            .unwrap(),
            serde_json::to_string(&Line {
                ok: Some(true),
                ..p.line("finish")
            })
            .unwrap(),
        ];
        let parsed: Vec<serde_json::Value> = lines
            .iter()
            .map(|l| {
                assert!(!l.contains('\n'), "{l}");
                serde_json::from_str(l).unwrap()
            })
            .collect();
        for v in &parsed {
            assert_eq!(v["type"], "progress");
            assert_eq!(v["op"], "session_pull");
            assert!(v["elapsed_ms"].is_u64(), "{v}");
        }
        assert_eq!(parsed[0]["event"], "step");
        assert_eq!(parsed[0]["step"], "restoring the workspace");
        assert!(parsed[0].get("done").is_none());
        assert_eq!(parsed[1]["done"], 512);
        assert_eq!(parsed[1]["total"], 2048);
        assert_eq!(parsed[1]["unit"], "bytes");
        assert_eq!(parsed[2]["event"], "finish");
        assert_eq!(parsed[2]["ok"], true);
        p.finish(true);
    }

    fn advance_lines(buffer: &Mutex<Vec<u8>>) -> Vec<serde_json::Value> {
        String::from_utf8(buffer.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|l| l["event"] == "advance")
            .collect()
    }

    /// A caller may report every byte: one line per whole percent, and the complete
    /// figures always (also when empty files finish after the last byte).
    #[test]
    fn advance_lines_are_one_per_percent_and_end_complete() {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let p = Progress::json_into("session_pull", "restoring", buffer.clone());
        for done in 0..=1000 {
            p.transfer(Transfer {
                files_done: done / 100,
                files_total: 12,
                bytes_done: done,
                bytes_total: 1000,
            });
        }
        p.transfer(Transfer {
            files_done: 12,
            files_total: 12,
            bytes_done: 1000,
            bytes_total: 1000,
        });
        p.finish(true);
        let lines = advance_lines(&buffer);
        assert_eq!(lines.len(), 102, "{lines:?}");
        let last = lines.last().unwrap();
        assert_eq!(
            (last["files_done"].as_u64(), last["done"].as_u64()),
            (Some(12), Some(1000))
        );
        assert_eq!(lines[100]["files_done"], 10);
        assert_eq!(lines[100]["done"], 1000);
    }

    #[test]
    fn no_display_before_init() {
        // Unit tests never call `init`: nothing is drawn or printed.
        let p = Progress::start("restore", "restoring");
        assert!(matches!(p.display, Display::Off));
        p.transfer(Transfer {
            files_done: 1,
            files_total: 2,
            bytes_done: 1,
            bytes_total: 2,
        });
        p.finish(true);
    }
}
