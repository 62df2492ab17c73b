//! Whether a command's output is being captured (`parhelia mcp-server` runs the CLI's
//! handlers in-process through `cli::run_captured`): then stdout is the MCP transport,
//! so what a command prints goes into [`CAPTURED`], and tables, color and progress
//! behave as for a pipe. A leaf: the CLI and the output modules (`table`, `progress`)
//! both read it without importing each other.

tokio::task_local! {
    /// Set while `cli::run_captured` runs a command: what it prints goes here.
    pub(crate) static CAPTURED: std::cell::RefCell<Vec<u8>>;
}

/// Whether this command's output is captured: no color, no terminal width, no
/// progress display.
pub(crate) fn is_captured() -> bool {
    CAPTURED.try_with(|_| ()).is_ok()
}
