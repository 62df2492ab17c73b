//! Finding and running the real Claude Code CLI in tests, against a [`StandIn`].
//!
//! [`claude_bin`] looks in `$PARHELIA_CLAUDE_BIN`, then the repository's pinned install
//! (`tools/claude-code/node_modules/.bin/claude`), then `PATH`, and fails with install
//! instructions: a test that needs Claude Code must fail, not skip, when it is missing.
//!
//! [`HeadlessClaude`] builds the command line the project relies on (see
//! `docs/dev/claude-code-notes.md`) with an isolated config directory. It strips every
//! `ANTHROPIC_*`/`CLAUDE*` variable inherited from the caller, so a test run from inside a
//! Claude Code session (which exports `CLAUDECODE=1` and friends) or with a real key set
//! behaves the same as one from a clean shell and never reaches the real API.
//!
//! [`StandIn`]: crate::model_stand_in::StandIn

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::Value;

/// The environment variable that overrides where Claude Code is found.
pub const CLAUDE_BIN_ENV: &str = "PARHELIA_CLAUDE_BIN";

/// Claude Code was not found anywhere [`claude_bin`] looks.
#[derive(Debug, thiserror::Error)]
#[error(
    "Claude Code not found: set {CLAUDE_BIN_ENV}, or install the pinned version with \
     `npm ci --prefix tools/claude-code` (from the repository root), or put `claude` on PATH; \
     looked at {looked_at}"
)]
pub struct ClaudeNotFound {
    pub looked_at: String,
}

/// The repository's pinned install, relative to this crate.
fn pinned_install() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/claude-code/node_modules/.bin/claude")
}

/// Where Claude Code is: `$PARHELIA_CLAUDE_BIN` (which must exist if set), else the pinned
/// install, else `claude` on PATH.
pub fn claude_bin() -> Result<PathBuf, ClaudeNotFound> {
    if let Some(bin) = std::env::var_os(CLAUDE_BIN_ENV) {
        // An explicit choice that points nowhere is a mistake, not a reason to look elsewhere.
        let bin = PathBuf::from(bin);
        if bin.is_file() {
            return Ok(bin);
        }
        return Err(ClaudeNotFound {
            looked_at: format!("{CLAUDE_BIN_ENV}={}", bin.display()),
        });
    }
    let mut looked_at = Vec::new();
    let pinned = pinned_install();
    if pinned.is_file() {
        return Ok(pinned);
    }
    looked_at.push(pinned.display().to_string());
    if let Ok(found) = which::which("claude") {
        return Ok(found);
    }
    looked_at.push("PATH".to_owned());
    Err(ClaudeNotFound {
        looked_at: looked_at.join(", "),
    })
}

/// One headless Claude Code setup: binary, stand-in URL, config dir and working directory.
#[derive(Debug, Clone)]
pub struct HeadlessClaude {
    pub bin: PathBuf,
    pub base_url: String,
    /// `CLAUDE_CONFIG_DIR`: transcripts land in `projects/<sanitized cwd>/<session id>.jsonl`.
    pub config_dir: PathBuf,
    /// Claude Code's working directory; relative tool paths resolve against it.
    pub cwd: PathBuf,
    /// `CLAUDE_CODE_MAX_RETRIES`; low so error turns finish quickly.
    pub max_retries: u32,
    /// `CLAUDE_CODE_TMPDIR`. Claude Code leaves `claude-<uid>/<cwd>/<session>/` behind in it
    /// (and its messaging socket `cc-socks/<pid>.sock`, so keep the path short); `None` means
    /// its default, `/tmp`.
    pub tmp_dir: Option<PathBuf>,
}

impl HeadlessClaude {
    /// Finds the binary ([`claude_bin`]) and uses retries = 1.
    pub fn new(
        base_url: impl Into<String>,
        config_dir: impl Into<PathBuf>,
        cwd: impl Into<PathBuf>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            bin: claude_bin()?,
            base_url: base_url.into(),
            config_dir: config_dir.into(),
            cwd: cwd.into(),
            max_retries: 1,
            tmp_dir: None,
        })
    }

    /// `claude --output-format stream-json --verbose --dangerously-skip-permissions ARGS…`
    /// with the isolated environment; add `-p PROMPT` (or `-p --input-format stream-json`).
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = Command::new(&self.bin);
        for (name, _) in std::env::vars_os() {
            let name_str = name.to_string_lossy();
            if name_str.starts_with("ANTHROPIC_") || name_str.starts_with("CLAUDE") {
                command.env_remove(&name);
            }
        }
        if let Some(tmp_dir) = &self.tmp_dir {
            command.env("CLAUDE_CODE_TMPDIR", tmp_dir);
        }
        command
            .current_dir(&self.cwd)
            .env("ANTHROPIC_BASE_URL", &self.base_url)
            .env("ANTHROPIC_API_KEY", "test-key")
            .env("CLAUDE_CONFIG_DIR", &self.config_dir)
            .env("DISABLE_TELEMETRY", "1")
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
            .env("CLAUDE_CODE_MAX_RETRIES", self.max_retries.to_string())
            // Required for --dangerously-skip-permissions when the tests run as root.
            .env("IS_SANDBOX", "1")
            .args([
                "--output-format",
                "stream-json",
                "--verbose",
                "--dangerously-skip-permissions",
            ])
            .args(args);
        command
    }

    /// Runs `command(args)` to completion with `stdin` written and closed.
    ///
    /// `deadline` is a hang guard, not a performance check: past it the process is killed and
    /// an error returned, so a wedged Claude Code fails the test instead of hanging CI.
    pub fn run<I, S>(&self, args: I, stdin: &str, deadline: Duration) -> anyhow::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = self.command(args);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("failed to build a runtime for Claude Code")?;
        let bin = self.bin.display().to_string();
        runtime.block_on(async move {
            use tokio::io::AsyncWriteExt as _;
            let mut command = tokio::process::Command::from(command);
            command.kill_on_drop(true);
            let mut child = command
                .spawn()
                .with_context(|| format!("failed to start {bin}"))?;
            if let Some(mut child_stdin) = child.stdin.take() {
                child_stdin
                    .write_all(stdin.as_bytes())
                    .await
                    .context("failed to write Claude Code's stdin")?;
                // Dropping it closes stdin, which is Claude Code's signal to finish.
            }
            match tokio::time::timeout(deadline, child.wait_with_output()).await {
                Ok(output) => output.context("failed to wait for Claude Code"),
                Err(_) => bail!("Claude Code still running after {deadline:?}; killed it"),
            }
        })
    }
}

/// Parses stream-json output: one JSON object per non-empty line.
pub fn parse_stream_json(stdout: &[u8]) -> anyhow::Result<Vec<Value>> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter(|line| !line.trim().is_empty())
        .enumerate()
        .map(|(index, line)| {
            serde_json::from_str(line)
                .with_context(|| format!("stream-json line {} is not JSON: {line}", index + 1))
        })
        .collect()
}

/// A user message line for `--input-format stream-json`.
pub fn stream_json_user_line(text: &str) -> String {
    serde_json::json!({"type": "user", "message": {"role": "user", "content": text}}).to_string()
}
