//! Input for an interactive session: messages typed into the Claude Code TUI.
//!
//! Promises:
//! - [`run_prompt_typist`] types nothing before the TUI is ready: it waits for the
//!   `ready` signal (the supervisor raises it on Claude Code's SessionStart hook) and
//!   then for the input prompt to be drawn (bounded by [`PROMPT_DRAWN_TIMEOUT`], after
//!   which it types anyway).
//! - Each message is typed as one message, in order: pasted with bracketed-paste codes
//!   (multi-line text does not submit early), then Enter
//!   ([`crate::tmux::TmuxServer::paste_message`]).

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::tmux::{TMUX_SESSION_NAME, TmuxServer};

/// How long to wait for the TUI's input prompt once Claude Code has started.
pub const PROMPT_DRAWN_TIMEOUT: Duration = Duration::from_secs(10);

/// The TUI's input prompt marker (Claude Code 2.1.330 draws `❯ ` in its input box).
const PROMPT_MARKER: char = '❯';

/// Types each text from `texts` into the session's pane once Claude Code is ready.
pub async fn run_prompt_typist(
    tmux: TmuxServer,
    buffer_file: PathBuf,
    mut ready: watch::Receiver<bool>,
    mut texts: mpsc::UnboundedReceiver<String>,
) {
    if ready.wait_for(|ready| *ready).await.is_err() {
        return;
    }
    let deadline = tokio::time::Instant::now() + PROMPT_DRAWN_TIMEOUT;
    loop {
        match tmux.capture_pane(TMUX_SESSION_NAME, 0).await {
            Ok(screen) if screen.contains(PROMPT_MARKER) => break,
            _ if tokio::time::Instant::now() >= deadline => {
                tracing::warn!("claude code's input prompt was not seen; typing anyway");
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    while let Some(text) = texts.recv().await {
        if let Err(e) = tmux
            .paste_message(TMUX_SESSION_NAME, &text, &buffer_file)
            .await
        {
            tracing::warn!(error = %e, "failed to type a message into claude code");
        }
    }
}
