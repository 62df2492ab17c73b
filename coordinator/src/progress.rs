//! Progress of the CLI's long operations (workspace upload, image build,
//! `session pull`, checkpoint restore/rollback/resume), on stderr.
//!
//! `--progress auto` (the default) draws an indicatif spinner, or a bar
//! where the operation knows its total, when stderr is a terminal, and
//! prints nothing otherwise, so a script's stderr holds only warnings and
//! errors. `--progress json` prints one JSON object per line on stderr
//! instead, terminal or not (the schema is [`Line`]); `--progress never`
//! prints nothing. Inside `parhelia mcp-server` there is no display (the MCP
//! server reports progress as notifications of its own).
//!
//! Nothing here invents progress: a step is shown when the code reaches it,
//! and a bar only where the code counts what it has done against a known
//! total.

use std::io::{IsTerminal, Write};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::Serialize;

/// `--progress`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// A spinner or bar when stderr is a terminal; nothing otherwise
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
    /// The operation: `task_create`, `image_build`, `session_pull`,
    /// `restore`, `rollback`, `resume`.
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ok: Option<bool>,
    pub elapsed_ms: u64,
}

enum Display {
    Off,
    Bar(indicatif::ProgressBar),
    Json,
}

/// One long operation's progress; dropped without [`Progress::finish`], it
/// ends as failed (an error is on its way to stderr).
pub struct Progress {
    op: &'static str,
    started: Instant,
    display: Display,
    finished: bool,
}

impl Progress {
    /// Starts `op` at its first `step`, shown as the process's mode says.
    pub fn start(op: &'static str, step: &str) -> Self {
        let mode = if crate::capture::is_captured() {
            ProgressMode::Never
        } else {
            MODE.get().copied().unwrap_or(ProgressMode::Never)
        };
        let display = match mode {
            ProgressMode::Never => Display::Off,
            ProgressMode::Json => Display::Json,
            ProgressMode::Auto if std::io::stderr().is_terminal() => {
                let bar = indicatif::ProgressBar::new_spinner();
                bar.set_style(spinner_style());
                bar.enable_steady_tick(Duration::from_millis(100));
                Display::Bar(bar)
            }
            ProgressMode::Auto => Display::Off,
        };
        let progress = Self {
            op,
            started: Instant::now(),
            display,
            finished: false,
        };
        progress.step(step);
        progress
    }

    /// A progress that shows nothing (tests, callers without a display).
    pub fn hidden(op: &'static str) -> Self {
        Self {
            op,
            started: Instant::now(),
            display: Display::Off,
            finished: false,
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
            ok: None,
            elapsed_ms: self.started.elapsed().as_millis() as u64,
        }
    }

    fn emit(line: &Line<'_>) {
        if let Ok(text) = serde_json::to_string(line) {
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr, "{text}");
            let _ = stderr.flush();
        }
    }

    /// A new step began (a spinner's message).
    pub fn step(&self, step: &str) {
        match &self.display {
            Display::Off => {}
            Display::Bar(bar) => {
                bar.set_style(spinner_style());
                bar.set_message(crate::term::escape_untrusted(step).into_owned());
            }
            Display::Json => Self::emit(&Line {
                step: Some(step),
                ..self.line("step")
            }),
        }
    }

    /// `done` of `total` bytes of the current step (a bar).
    pub fn bytes(&self, done: u64, total: u64) {
        match &self.display {
            Display::Off => {}
            Display::Bar(bar) => {
                if bar.length() != Some(total) {
                    bar.set_style(bytes_style());
                    bar.set_length(total);
                }
                bar.set_position(done);
            }
            Display::Json => Self::emit(&Line {
                done: Some(done),
                total: Some(total),
                unit: Some("bytes"),
                ..self.line("advance")
            }),
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
            Display::Json => Self::emit(&Line {
                ok: Some(ok),
                ..self.line("finish")
            }),
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

fn bytes_style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template(
        "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} ({eta})",
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

    #[test]
    fn no_display_before_init() {
        // Unit tests never call `init`: nothing is drawn or printed.
        let p = Progress::start("restore", "restoring");
        assert!(matches!(p.display, Display::Off));
        p.bytes(1, 2);
        p.finish(true);
    }
}
