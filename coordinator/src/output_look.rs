//! How this process's output looks: decided once at start (`parhelia`'s `main`) from
//! `--color`, the environment and whether stdout and stderr are terminals, and plain
//! inside `parhelia mcp-server` (its output is a tool result). The tables and colors
//! themselves are [`crate::table`]'s, which takes the [`Look`] decided here.

use std::io::IsTerminal;
use std::sync::OnceLock;

use crate::table::{ColorChoice, Fit, Look, color_enabled};

static STDOUT: OnceLock<Look> = OnceLock::new();
static STDERR_COLOR: OnceLock<bool> = OnceLock::new();

/// Decides, once per process, how stdout and stderr look (`parhelia`'s
/// `main`). Until then (library use, unit tests) every view is plain.
pub fn init(choice: ColorChoice) {
    let env = |name: &str| std::env::var(name).ok();
    let stdout_tty = std::io::stdout().is_terminal();
    let _ = STDOUT.set(Look {
        fit: if stdout_tty {
            Fit::Terminal
        } else {
            Fit::Whole
        },
        color: color_enabled(choice, env, stdout_tty),
    });
    let _ = STDERR_COLOR.set(color_enabled(choice, env, std::io::stderr().is_terminal()));
}

/// How command output looks here: plain before [`init`].
pub fn stdout_look() -> Look {
    STDOUT.get().copied().unwrap_or(Look::PLAIN)
}

/// Whether messages on stderr (errors) may carry color.
pub fn stderr_color() -> bool {
    STDERR_COLOR.get().copied().unwrap_or(false)
}
