//! The agent's side of an attach: a pseudo-terminal whose slave runs a tmux client
//! attached to the session, driven asynchronously for the `Attach` RPC.
//!
//! Promises:
//! - The client is tmux's own `attach` ([`crate::tmux::TmuxServer::attach_command`]), so
//!   the user sees exactly what tmux draws, and tmux's detach key works.
//! - [`TerminalInput::write`] is the only way bytes reach the client; a
//!   read-only attach simply never calls it (and the client is `attach -r` as well).
//! - Nothing blocks a tokio worker: the master is non-blocking and registered with the
//!   runtime's reactor, and reads and writes wait for readiness. (Through tokio's
//!   `unix::pipe` halves, whose constructors are safe and assume nothing of the fd but
//!   that it is non-blocking and pollable, which a PTY master is; `AsyncFd`'s are
//!   `unsafe` since tokio 1.54, and the workspace has no unsafe code.) There is no
//!   reader thread, so screen bytes go from the terminal to the RPC's stream in the one
//!   task that calls [`TerminalOutput::read`].
//! - [`AttachedTerminal::resize`] sets the terminal's window size with the `TIOCSWINSZ`
//!   ioctl on the master (through rustix's safe wrapper: no process per resize); the
//!   kernel then signals the client (SIGWINCH), which tells tmux.
//! - [`TerminalOutput::read`] returns `Ok(0)` once the client has exited (the
//!   slave is closed). Dropping the terminal kills the client.

use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Stdio};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

use crate::tmux::TmuxServer;

/// Failures setting up an attach. Each message reads after "failed to ".
#[derive(Debug, thiserror::Error)]
pub enum TerminalError {
    #[error("open a pseudo-terminal: {0}")]
    OpenPty(nix::errno::Errno),
    #[error("{action}: {source}")]
    Io {
        action: &'static str,
        source: std::io::Error,
    },
}

/// A tmux client on a pseudo-terminal of its own.
pub struct AttachedTerminal {
    /// Screen bytes from the client (a duplicate of the master).
    pub output: TerminalOutput,
    /// Keystrokes to the client (another duplicate of the master).
    pub input: TerminalInput,
    /// The master itself, for the window size.
    master: OwnedFd,
    child: Child,
}

/// The reading half of an [`AttachedTerminal`].
pub struct TerminalOutput(pipe::Receiver);

/// The writing half of an [`AttachedTerminal`].
pub struct TerminalInput(pipe::Sender);

impl AttachedTerminal {
    /// Starts a tmux client attached to `session_name` on a new pseudo-terminal of
    /// `cols`×`rows`. Must be called within a tokio runtime (the master is registered
    /// with its reactor).
    pub fn spawn(
        tmux: &TmuxServer,
        session_name: &str,
        read_only: bool,
        cols: u16,
        rows: u16,
        term: &str,
    ) -> Result<AttachedTerminal, TerminalError> {
        let io = |action| move |source| TerminalError::Io { action, source };
        let size = nix::pty::Winsize {
            ws_row: rows.max(1),
            ws_col: cols.max(1),
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&size), None).map_err(TerminalError::OpenPty)?;
        let (output, input) = register(&pty.master).map_err(io("watch the terminal"))?;
        let stdio = |fd: &OwnedFd| -> Result<Stdio, TerminalError> {
            Ok(Stdio::from(
                fd.try_clone().map_err(io("duplicate the terminal"))?,
            ))
        };
        let child = tmux
            .attach_command(session_name, read_only, term)
            .stdin(stdio(&pty.slave)?)
            .stdout(stdio(&pty.slave)?)
            .stderr(stdio(&pty.slave)?)
            .spawn()
            .map_err(io("start tmux attach"))?;
        // Only the client holds the slave now, so its exit ends our reads (EIO).
        drop(pty.slave);
        Ok(AttachedTerminal {
            output: TerminalOutput(output),
            input: TerminalInput(input),
            master: pty.master,
            child,
        })
    }

    /// Changes the terminal's window size (`TIOCSWINSZ` on the master).
    pub fn resize(&self, cols: u16, rows: u16) -> Result<(), TerminalError> {
        rustix::termios::tcsetwinsize(
            &self.master,
            rustix::termios::Winsize {
                ws_row: rows.max(1),
                ws_col: cols.max(1),
                ws_xpixel: 0,
                ws_ypixel: 0,
            },
        )
        .map_err(|errno| TerminalError::Io {
            action: "set the window size",
            source: errno.into(),
        })
    }

    /// The client's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the client has exited (and reaps it if so).
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl TerminalOutput {
    /// Waits for screen bytes from the client and reads them into `buffer`; `Ok(0)`
    /// when the client has exited. Cancel-safe (nothing is read unless it returns).
    pub async fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.0.read(buffer).await {
                // EIO: the client exited and closed the slave.
                Err(e) if e.raw_os_error() == Some(nix::libc::EIO) => return Ok(0),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }
}

impl TerminalInput {
    /// Writes as many of `bytes` (keystrokes) as the terminal takes now, waiting until
    /// it takes at least one; returns how many. Cancel-safe (nothing is written unless
    /// it returns).
    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        loop {
            match self.0.write(bytes).await {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }
}

/// Duplicates of the master for reading and writing, non-blocking (the flag is the
/// file description's, so the master's too) and registered with the runtime's reactor.
fn register(master: &OwnedFd) -> std::io::Result<(pipe::Receiver, pipe::Sender)> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(master.as_fd(), FcntlArg::F_GETFL)?);
    fcntl(master.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok((
        pipe::Receiver::from_owned_fd_unchecked(master.try_clone()?)?,
        pipe::Sender::from_owned_fd_unchecked(master.try_clone()?)?,
    ))
}

impl Drop for AttachedTerminal {
    fn drop(&mut self) {
        if !self.has_exited() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
