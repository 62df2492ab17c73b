//! The agent's private tmux server. Every tmux invocation in the agent goes through here.
//!
//! Promises:
//! - Every command carries `-S <socket>`: the agent never talks to (or starts) the user's
//!   default tmux server, whatever `TMUX`, `TMUX_TMPDIR` or `~/.tmux.conf` say. It also
//!   carries `-f /dev/null`, so a user's tmux configuration cannot change how the session
//!   runs (default shell, hooks, `exit-empty`).
//! - Every tmux process runs with exactly the environment given to [`TmuxServer::new`]
//!   (the agent's own environment is cleared first). The server takes its global
//!   environment from the client that starts it, so this is what Claude Code sees; it is
//!   how the session secret is kept out of tmux and Claude Code.
//!
//! Commands are built with `tmux_interface` (`Tmux::socket_path`, `NewSession`, …) and
//! converted to a `std::process::Command`, which is then run as a `tokio::process` child:
//! `tmux_interface` can express every tmux command used here, but it has no way to set the
//! child's environment and only runs commands synchronously, and the agent needs both.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tmux_interface::{
    AttachSession, CapturePane, DisplayMessage, HasSession, KillServer, LoadBuffer, NewSession,
    PasteBuffer, SendKeys, Tmux, TmuxCommand,
};

/// tmux failures. Each message reads after "failed to ".
#[derive(Debug, thiserror::Error)]
pub enum TmuxError {
    /// The tmux binary could not be run at all.
    #[error("run tmux {command}: {source}")]
    Spawn {
        command: &'static str,
        source: std::io::Error,
    },
    /// tmux ran and reported an error.
    #[error("run tmux {command}: exit status {status}: {stderr}")]
    Failed {
        command: &'static str,
        status: String,
        stderr: String,
    },
    /// tmux printed something we could not read.
    #[error("read the output of tmux {command}: {output:?}")]
    UnexpectedOutput {
        command: &'static str,
        output: String,
    },
}

/// A tmux server on its own socket.
#[derive(Clone, Debug)]
pub struct TmuxServer {
    socket: PathBuf,
    environment: Vec<(OsString, OsString)>,
    /// Set when the server runs inside the session sandbox (see [`crate::sandbox`]).
    sandbox: Option<Arc<SandboxedServer>>,
    /// Every tmux process (server and clients) runs as this uid and gid when set: the
    /// session user ([`crate::session_user`]) while the agent stays root.
    user: Option<(u32, u32)>,
}

/// A tmux server started by the agent as `bwrap … -- tmux -D`: the agent talks to it from
/// outside, always with `-N`, so a client command can never start a second, unconfined
/// server when the sandboxed one is gone.
#[derive(Debug)]
struct SandboxedServer {
    bwrap_args: Vec<OsString>,
    child: tokio::sync::Mutex<Option<tokio::process::Child>>,
    /// The host pid of the `bwrap` process (the root of the sandbox's process tree).
    root_pid: std::sync::atomic::AtomicU32,
}

/// How long a freshly started sandboxed server may take to listen on its socket.
/// The tmux session that runs Claude Code.
pub const TMUX_SESSION_NAME: &str = "claude";

const SANDBOX_START_TIMEOUT: Duration = Duration::from_secs(15);

impl TmuxServer {
    /// A handle for the server at `socket`; nothing is started until a session is created.
    pub fn new(socket: &Path, environment: Vec<(OsString, OsString)>) -> TmuxServer {
        TmuxServer {
            socket: socket.to_path_buf(),
            environment,
            sandbox: None,
            user: None,
        }
    }

    /// Runs the server and every client as `uid`/`gid` (supplementary groups dropped).
    pub fn with_user(mut self, uid: u32, gid: u32) -> TmuxServer {
        self.user = Some((uid, gid));
        self
    }

    /// A handle for a server that runs inside bubblewrap with `bwrap_args` (the arguments
    /// between `bwrap` and `--`); it is started by the first [`TmuxServer::new_session`].
    pub fn sandboxed(
        socket: &Path,
        environment: Vec<(OsString, OsString)>,
        bwrap_args: Vec<OsString>,
    ) -> TmuxServer {
        TmuxServer {
            socket: socket.to_path_buf(),
            environment,
            sandbox: Some(Arc::new(SandboxedServer {
                bwrap_args,
                child: tokio::sync::Mutex::new(None),
                root_pid: std::sync::atomic::AtomicU32::new(0),
            })),
            user: None,
        }
    }

    /// Whether the server runs in the session sandbox.
    pub fn is_sandboxed(&self) -> bool {
        self.sandbox.is_some()
    }

    /// Starts the sandboxed server unless it is running. A no-op without a sandbox (tmux
    /// starts its own server on `new-session`).
    async fn ensure_server(&self) -> Result<(), TmuxError> {
        let Some(sandbox) = &self.sandbox else {
            return Ok(());
        };
        let mut child = sandbox.child.lock().await;
        if let Some(running) = child.as_mut()
            && matches!(running.try_wait(), Ok(None))
        {
            return Ok(());
        }
        if let Some(parent) = self.socket.parent() {
            std::fs::create_dir_all(parent).map_err(|source| TmuxError::Spawn {
                command: "server (socket directory)",
                source,
            })?;
        }
        let _ = std::fs::remove_file(&self.socket);
        let mut command = tokio::process::Command::new("bwrap");
        command
            .args(&sandbox.bwrap_args)
            .arg("--")
            .arg("tmux")
            .arg("-D")
            .arg("-S")
            .arg(&self.socket)
            .arg("-f")
            .arg("/dev/null")
            .env_clear()
            .envs(self.environment.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid);
        }
        let mut spawned = command.spawn().map_err(|source| TmuxError::Spawn {
            command: "server (bwrap)",
            source,
        })?;
        sandbox.root_pid.store(
            spawned.id().unwrap_or(0),
            std::sync::atomic::Ordering::SeqCst,
        );
        let deadline = Instant::now() + SANDBOX_START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = spawned.try_wait() {
                let mut stderr = String::new();
                if let Some(mut pipe) = spawned.stderr.take() {
                    use tokio::io::AsyncReadExt;
                    let _ = (&mut pipe).take(4096).read_to_string(&mut stderr).await;
                }
                return Err(TmuxError::Failed {
                    command: "server (bwrap)",
                    status: status.to_string(),
                    stderr: stderr.trim().to_string(),
                });
            }
            if self
                .run("start-server", tmux_interface::StartServer::new())
                .await
                .is_ok()
            {
                break;
            }
            if Instant::now() > deadline {
                let _ = spawned.start_kill();
                return Err(TmuxError::Failed {
                    command: "server (bwrap)",
                    status: "no socket".into(),
                    stderr: format!(
                        "the sandboxed tmux server did not listen on {} within {}s",
                        self.socket.display(),
                        SANDBOX_START_TIMEOUT.as_secs()
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        *child = Some(spawned);
        Ok(())
    }

    /// The host pid of a pid the server reported (`#{pane_pid}`, a pid file written
    /// inside): itself without a sandbox; inside one, translated through the sandbox's PID
    /// namespace and only ever a descendant of the sandbox, or `None`.
    pub fn host_pid(&self, pid: u32) -> Option<u32> {
        match &self.sandbox {
            None => Some(pid),
            Some(sandbox) => {
                let root = sandbox.root_pid.load(std::sync::atomic::Ordering::SeqCst);
                if root == 0 {
                    return None;
                }
                crate::sandbox::host_pid(root, pid)
            }
        }
    }

    /// A std command line for `tmux` with our socket and config, `-N` when sandboxed.
    fn std_command<'a>(&'a self, tmux: Tmux<'a>) -> std::process::Command {
        let built = tmux
            .socket_path(self.socket.to_string_lossy())
            .file("/dev/null")
            .into_command();
        let mut command = std::process::Command::new(built.get_program());
        if self.sandbox.is_some() {
            command.arg("-N");
        }
        command.args(built.get_args());
        if let Some((uid, gid)) = self.user {
            // Rust drops the supplementary groups when a root parent sets the uid.
            use std::os::unix::process::CommandExt;
            command.uid(uid).gid(gid);
        }
        command
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn command<'a>(&'a self, subcommand: impl Into<TmuxCommand<'a>>) -> tokio::process::Command {
        let std_command = self.std_command(Tmux::new().add_command(subcommand));
        let mut command = tokio::process::Command::from(std_command);
        command.stdin(Stdio::null());
        command
            .env_clear()
            .envs(self.environment.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    async fn run<'a>(
        &'a self,
        name: &'static str,
        subcommand: impl Into<TmuxCommand<'a>>,
    ) -> Result<String, TmuxError> {
        let output =
            self.command(subcommand)
                .output()
                .await
                .map_err(|source| TmuxError::Spawn {
                    command: name,
                    source,
                })?;
        if !output.status.success() {
            return Err(TmuxError::Failed {
                command: name,
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    /// Starts a detached session running `shell_command` in `cwd` (starting the server if
    /// needed) and returns the pid of the pane's process.
    pub async fn new_session(
        &self,
        session_name: &str,
        cwd: &Path,
        shell_command: &str,
    ) -> Result<u32, TmuxError> {
        self.ensure_server().await?;
        let cwd = cwd.to_string_lossy();
        let output = self
            .run(
                "new-session",
                NewSession::new()
                    .detached()
                    .print()
                    .format("#{pane_pid}")
                    .session_name(session_name)
                    .start_directory(cwd)
                    .width(200)
                    .height(50)
                    .shell_command(shell_command),
            )
            .await?;
        let inner: u32 = output.parse().map_err(|_| TmuxError::UnexpectedOutput {
            command: "new-session",
            output: output.clone(),
        })?;
        self.host_pid(inner).ok_or(TmuxError::UnexpectedOutput {
            command: "new-session (pane pid outside the sandbox)",
            output,
        })
    }

    /// The pid of the tmux server process (the root of the session's process tree).
    pub async fn server_pid(&self) -> Result<u32, TmuxError> {
        if let Some(sandbox) = &self.sandbox {
            // The sandbox process: its tree holds the server and all it runs.
            let root = sandbox.root_pid.load(std::sync::atomic::Ordering::SeqCst);
            if root != 0 {
                return Ok(root);
            }
        }
        let output = self
            .run(
                "display-message",
                DisplayMessage::new().print().message("#{pid}"),
            )
            .await?;
        output.parse().map_err(|_| TmuxError::UnexpectedOutput {
            command: "display-message",
            output,
        })
    }

    /// Whether the server is up and has `session_name`.
    pub async fn has_session(&self, session_name: &str) -> bool {
        self.run(
            "has-session",
            HasSession::new().target_session(session_name),
        )
        .await
        .is_ok()
    }

    /// Types `text` into `target` as one message: the text goes through a tmux buffer
    /// pasted with bracketed-paste codes (`paste-buffer -p`, so newlines do not submit),
    /// then Enter. `buffer_file` is a scratch file (private to the agent) for
    /// `load-buffer`; it is removed afterwards.
    pub async fn paste_message(
        &self,
        target: &str,
        text: &str,
        buffer_file: &Path,
    ) -> Result<(), TmuxError> {
        const BUFFER: &str = "parhelia-input";
        std::fs::write(buffer_file, text).map_err(|source| TmuxError::Spawn {
            command: "load-buffer",
            source,
        })?;
        if self.user.is_some() {
            // The client reads it as the session user: the message is the session's own.
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(buffer_file, std::fs::Permissions::from_mode(0o644));
        }
        let path = buffer_file.to_string_lossy();
        let loaded = self
            .run(
                "load-buffer",
                LoadBuffer::new().buffer_name(BUFFER).path(path.clone()),
            )
            .await;
        let _ = std::fs::remove_file(buffer_file);
        loaded?;
        self.run(
            "paste-buffer",
            PasteBuffer::new()
                .delete()
                .bracket_codes()
                .buffer_name(BUFFER)
                .target_pane(target),
        )
        .await?;
        self.run(
            "send-keys",
            SendKeys::new().target_pane(target).key("Enter"),
        )
        .await?;
        Ok(())
    }

    /// The visible screen of `target` plus up to `scrollback` lines above it, as text.
    pub async fn capture_pane(&self, target: &str, scrollback: u32) -> Result<String, TmuxError> {
        let start = format!("-{scrollback}");
        let output = self
            .command(
                CapturePane::new()
                    .stdout()
                    .join()
                    .start_line(start)
                    .target_pane(target),
            )
            .output()
            .await
            .map_err(|source| TmuxError::Spawn {
                command: "capture-pane",
                source,
            })?;
        if !output.status.success() {
            return Err(TmuxError::Failed {
                command: "capture-pane",
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `display-message -p FORMAT` against `target` (e.g. `#{window_width}`).
    pub async fn display(&self, target: &str, format: &str) -> Result<String, TmuxError> {
        self.run(
            "display-message",
            DisplayMessage::new()
                .print()
                .target_pane(target)
                .message(format),
        )
        .await
    }

    /// The command line of a tmux client attached to `session_name` (read-only with
    /// `attach -r`), with the server's environment plus `TERM=term`, run through
    /// `setsid -c`. The caller runs it with a terminal as its stdin, stdout and stderr.
    pub fn attach_command(
        &self,
        session_name: &str,
        read_only: bool,
        term: &str,
    ) -> std::process::Command {
        let mut attach = AttachSession::new().target_session(session_name);
        if read_only {
            attach = attach.read_only();
        }
        let tmux = self.std_command(Tmux::new().add_command(attach));
        // `setsid -c`: a session of its own whose controlling terminal is its stdin,
        // so the client gets SIGWINCH when the terminal is resized (and the agent needs
        // no unsafe pre-exec code to arrange it).
        let mut command = std::process::Command::new("setsid");
        command
            .arg("-c")
            .arg(tmux.get_program())
            .args(tmux.get_args())
            .env_clear()
            .envs(self.environment.iter().map(|(k, v)| (k, v)))
            .env("TERM", term);
        if let Some((uid, gid)) = self.user {
            use std::os::unix::process::CommandExt;
            command.uid(uid).gid(gid);
        }
        command
    }

    /// Stops the server and everything running in it (panes get SIGHUP). Succeeds when no
    /// server is running.
    pub async fn kill_server(&self) -> Result<(), TmuxError> {
        let killed = self.run("kill-server", KillServer::new()).await;
        if let Some(sandbox) = &self.sandbox
            && let Some(mut child) = sandbox.child.lock().await.take()
        {
            // The sandbox ends with its main process; make sure it is gone and reaped.
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        }
        match killed {
            Ok(_) => Ok(()),
            Err(TmuxError::Failed { stderr, .. })
                if stderr.contains("no server running")
                    || stderr.contains("error connecting")
                    || stderr.contains("No such file") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path_environment() -> Vec<(OsString, OsString)> {
        std::env::vars_os()
            .filter(|(k, _)| k == "PATH" || k == "HOME")
            .collect()
    }

    #[tokio::test]
    async fn a_private_server_runs_a_command_with_only_the_given_environment() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("tmux.sock");
        let mut environment = path_environment();
        environment.push(("PARHELIA_TEST_MARK".into(), "visible".into()));
        let tmux = TmuxServer::new(&socket, environment);
        assert!(!tmux.has_session("s").await);

        let out = dir.path().join("env.txt");
        let command = format!("env > '{}'; sleep 30", out.display());
        let pane_pid = tmux.new_session("s", dir.path(), &command).await.unwrap();
        assert!(pane_pid > 0);
        assert!(socket.exists(), "the server listens on our socket");
        assert!(tmux.has_session("s").await);
        assert!(tmux.server_pid().await.unwrap() > 0);

        // The environment the pane sees: ours, and nothing of the test process's.
        let env = loop {
            if let Ok(text) = std::fs::read_to_string(&out)
                && text.contains("PARHELIA_TEST_MARK")
            {
                break text;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        assert!(env.contains("PARHELIA_TEST_MARK=visible"));
        assert!(!env.contains("CARGO_PKG_NAME"), "{env}");

        tmux.kill_server().await.unwrap();
        assert!(!tmux.has_session("s").await);
        // Killing a server that is gone is not an error.
        tmux.kill_server().await.unwrap();
    }
}
