//! The agent's side of an attach: a pseudo-terminal whose slave runs a tmux client
//! attached to the session, bridged to byte channels for the `Attach` RPC.
//!
//! Promises:
//! - The client is tmux's own `attach` ([`crate::tmux::TmuxServer::attach_command`]), so
//!   the user sees exactly what tmux draws, and tmux's detach key works.
//! - [`AttachedTerminal::write_input`] is the only way bytes reach the client; a
//!   read-only attach simply never calls it (and the client is `attach -r` as well).
//! - [`AttachedTerminal::resize`] sets the terminal's window size; the kernel then
//!   signals the client (SIGWINCH), which tells tmux.
//! - Output arrives on the channel returned by [`AttachedTerminal::spawn`] until the
//!   client exits (the channel then closes). Dropping the terminal kills the client.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Child, Stdio};

use tokio::sync::mpsc;

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
    master: std::fs::File,
    slave_path: PathBuf,
    child: Child,
}

impl AttachedTerminal {
    /// Starts a tmux client attached to `session_name` on a new pseudo-terminal of
    /// `cols`×`rows`; returns it with the receiver of its screen output.
    pub fn spawn(
        tmux: &TmuxServer,
        session_name: &str,
        read_only: bool,
        cols: u16,
        rows: u16,
        term: &str,
    ) -> Result<(AttachedTerminal, mpsc::Receiver<Vec<u8>>), TerminalError> {
        let pty = nix::pty::openpty(None, None).map_err(TerminalError::OpenPty)?;
        let slave_path = nix::unistd::ttyname(&pty.slave).map_err(TerminalError::OpenPty)?;
        set_window_size(&slave_path, cols, rows)?;
        let io = |action| move |source| TerminalError::Io { action, source };
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
        let master = std::fs::File::from(pty.master);
        let mut reader = master.try_clone().map_err(io("duplicate the terminal"))?;
        let (output, received) = mpsc::channel(64);
        std::thread::Builder::new()
            .name("attach-output".into())
            .spawn(move || {
                let mut buffer = vec![0u8; 16 * 1024];
                loop {
                    match reader.read(&mut buffer) {
                        Ok(0) => return,
                        Ok(n) => {
                            if output.blocking_send(buffer[..n].to_vec()).is_err() {
                                return;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        // EIO: the client exited and closed the slave.
                        Err(_) => return,
                    }
                }
            })
            .map_err(io("start the terminal reader"))?;
        Ok((
            AttachedTerminal {
                master,
                slave_path,
                child,
            },
            received,
        ))
    }

    /// Sends keystrokes to the client.
    pub fn write_input(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.master.write_all(bytes)
    }

    /// Changes the terminal's window size.
    pub fn resize(&self, cols: u16, rows: u16) -> Result<(), TerminalError> {
        set_window_size(&self.slave_path, cols, rows)
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

impl Drop for AttachedTerminal {
    fn drop(&mut self) {
        if !self.has_exited() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `stty rows R cols C` on the terminal: the safe way to set its window size (the
/// ioctl would need unsafe code, which the workspace does not allow).
fn set_window_size(slave: &std::path::Path, cols: u16, rows: u16) -> Result<(), TerminalError> {
    let status = std::process::Command::new("stty")
        .arg("-F")
        .arg(slave)
        .args([
            "rows",
            &rows.max(1).to_string(),
            "cols",
            &cols.max(1).to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|source| TerminalError::Io {
            action: "run stty",
            source,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(TerminalError::Io {
            action: "set the window size with stty",
            source: std::io::Error::other(status.to_string()),
        })
    }
}
