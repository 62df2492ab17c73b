//! The CLI's side of the control channel: gRPC over the coordinator's Unix
//! socket, and starting the coordinator on demand (like a tmux server).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hyper_util::rt::TokioIo;
use parhelia_proto::coordinator_client::CoordinatorClient;
use parhelia_proto::{PingRequest, PingResponse};
use tokio::net::UnixStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::control_auth::Bearer;

/// A client of the coordinator: every request carries the control token.
pub type Client = CoordinatorClient<InterceptedService<Channel, Bearer>>;

use crate::error::coded;
use crate::error_codes;
use crate::state_dir::StateDir;

/// How long the CLI waits for a coordinator it started to answer.
/// `$PARHELIA_COORDINATOR_START_TIMEOUT_MS` overrides it.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(15);

/// A process holding the state directory's `coordinator.lock`: a coordinator, whether
/// or not it answers on the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockHolder {
    pub pid: u32,
    /// Stopped by a signal (Ctrl-Z in the shell running `coordinator run`, SIGSTOP).
    pub stopped: bool,
}

impl LockHolder {
    /// `pid 123`, or `pid 123, stopped (Ctrl-Z or SIGSTOP)`.
    pub fn describe(&self) -> String {
        if self.stopped {
            format!("pid {}, stopped (Ctrl-Z or SIGSTOP)", self.pid)
        } else {
            format!("pid {}", self.pid)
        }
    }
}

/// Who holds `coordinator.lock`, as `/proc/locks` says (looked up, never by taking the
/// lock, which would make a coordinator starting now fail). `None`: nobody, or not
/// knowable here.
pub fn lock_holder(state: &StateDir) -> Option<LockHolder> {
    let file = std::fs::File::open(state.lock_path()).ok()?;
    let pid = *parhelia_checkpoint::flock_holders(&file).first()?;
    Some(LockHolder {
        pid,
        stopped: process_stopped(pid),
    })
}

/// Whether `/proc/<pid>/stat` says the process is stopped (`T`, or `t` when traced).
fn process_stopped(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) S …`: the state follows the last `)` (comm may hold anything).
    stat_says_stopped(&stat)
}

fn stat_says_stopped(stat: &str) -> bool {
    stat.rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with(['T', 't']))
}

/// The last `error…` line a coordinator started on demand wrote to its log after byte
/// `since` (what the log held before it started; bounded: the last 64 KiB), so E504 can
/// say why it exited.
fn last_logged_error(log: &Path, since: u64) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(log).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(64 << 10).max(since)))
        .ok()?;
    let mut tail = Vec::new();
    file.take(64 << 10).read_to_end(&mut tail).ok()?;
    String::from_utf8_lossy(&tail)
        .lines()
        .rev()
        .find(|l| l.starts_with("error[") || l.starts_with("error:"))
        .map(|l| l.chars().take(1000).collect())
}

/// Connects to the coordinator's socket (no retries, no auto-start).
pub async fn connect(socket: &Path) -> Result<Client> {
    let bearer = Bearer::for_socket(socket);
    let socket: PathBuf = socket.to_path_buf();
    // The URI is required by the API but unused: the connector ignores it.
    let channel = Endpoint::from_static("http://parhelia.coordinator")
        .connect_timeout(Duration::from_secs(2))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await?;
    Ok(CoordinatorClient::with_interceptor(channel, bearer))
}

/// Pings the coordinator of `state`; `None` when nothing answers.
pub async fn ping(state: &StateDir) -> Option<(Client, PingResponse)> {
    ping_checked(state).await.ok().flatten()
}

/// [`ping`], except that a coordinator that answers but refuses us (E406: another
/// user, a caller inside a session sandbox, a missing or stale token) is an error,
/// not "nothing running": starting a second coordinator would not help.
pub async fn ping_checked(state: &StateDir) -> Result<Option<(Client, PingResponse)>> {
    // Only a socket in a directory we own is trusted with what the CLI sends.
    let Ok(socket) = state.prepare_socket_dir() else {
        return Ok(None);
    };
    if !socket.exists() {
        return Ok(None);
    }
    let Ok(mut client) = connect(&socket).await else {
        return Ok(None);
    };
    let mut request = tonic::Request::new(PingRequest {});
    request.set_timeout(Duration::from_secs(5));
    match client.ping(request).await {
        Ok(pong) => Ok(Some((client, pong.into_inner()))),
        Err(status)
            if crate::error::CodedError::from_status(&status)
                .is_some_and(|e| e.code == error_codes::CONTROL_ACCESS_DENIED) =>
        {
            Err(crate::error::CodedError::from_status(&status)
                .expect("checked above")
                .into())
        }
        Err(_) => Ok(None),
    }
}

/// Ends a coordinator that holds the state directory but does not answer: SIGTERM,
/// then SIGCONT (a stopped one handles the TERM once it runs again), and waits up to
/// `wait` for it to let go of `coordinator.lock`. `Ok(false)`: it still holds it.
pub async fn stop_unanswering(
    state: &StateDir,
    holder: LockHolder,
    wait: Duration,
) -> Result<bool> {
    use nix::sys::signal::{Signal, kill};
    let pid = nix::unistd::Pid::from_raw(
        i32::try_from(holder.pid).context("a pid out of range in /proc/locks")?,
    );
    let _ = kill(pid, Signal::SIGTERM);
    let _ = kill(pid, Signal::SIGCONT);
    let deadline = Instant::now() + wait;
    while lock_holder(state).is_some_and(|h| h.pid == holder.pid) {
        if Instant::now() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(true)
}

/// Returns a client for the running coordinator, starting one (detached,
/// logging to `coordinator.log`, with `config_flags` as its `--set` values)
/// when none answers. E504 if it never does.
pub async fn connect_or_start(state: &StateDir, config_flags: &[String]) -> Result<Client> {
    state.prepare_socket_dir()?;
    if let Some((client, _)) = ping_checked(state).await? {
        return Ok(client);
    }
    let exe = std::env::current_exe().context("finding the parhelia executable")?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(state.log_path())
        .with_context(|| format!("opening {}", state.log_path().display()))?;
    // The coordinator runs in the state directory: launch overrides given as paths
    // relative to this shell's directory are made absolute for it.
    let cwd = std::env::current_dir().unwrap_or_else(|_| std::path::PathBuf::from("/"));
    let mut command = std::process::Command::new(exe);
    for key in [crate::plan::CLAUDE_BIN_ENV, crate::plan::AGENT_BIN_ENV] {
        if let Some(value) = std::env::var_os(key)
            && value.as_encoded_bytes().contains(&b'/')
            && !std::path::Path::new(&value).is_absolute()
        {
            command.env(key, cwd.join(value));
        }
    }
    // What the log holds before this coordinator writes to it: an older error is not its.
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let mut child = command
        .arg("--state-dir")
        .arg(state.root())
        .args(config_flags.iter().flat_map(|f| ["--set", f.as_str()]))
        .args(["coordinator", "run", "--detached"])
        .current_dir(state.root())
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|e| {
            coded(
                error_codes::COORDINATOR_UNAVAILABLE,
                format!("cannot start the coordinator: {e}"),
            )
        })?;
    tracing::debug!(pid = child.id(), "started the coordinator");

    let timeout = std::env::var("PARHELIA_COORDINATOR_START_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_START_TIMEOUT);
    let started = Instant::now();
    let mut exited = None;
    loop {
        if let Some((client, _)) = ping(state).await {
            return Ok(client);
        }
        if exited.is_none()
            && let Ok(Some(status)) = child.try_wait()
        {
            exited = Some(status);
        }
        // A coordinator that exited may have lost a start race to another
        // one; keep pinging briefly before giving up.
        let deadline = if exited.is_some() {
            timeout.min(Duration::from_secs(3))
        } else {
            timeout
        };
        if started.elapsed() > deadline {
            // A coordinator that holds the state directory and does not answer (stopped,
            // hung): the one started now could not take its place.
            if let Some(holder) = lock_holder(state) {
                return Err(coded(
                    error_codes::COORDINATOR_UNAVAILABLE,
                    format!(
                        "a coordinator ({}) holds {} but does not answer on {}; \
                         `parhelia coordinator stop` ends it; log: {}",
                        holder.describe(),
                        state.root().display(),
                        state.socket_path().display(),
                        state.log_path().display()
                    ),
                ));
            }
            let why = match exited {
                Some(status) => match last_logged_error(&state.log_path(), log_start) {
                    Some(line) => format!("it exited ({status}), logging `{line}`"),
                    None => format!("it exited ({status})"),
                },
                None => format!("it did not answer within {}s", timeout.as_secs()),
            };
            return Err(coded(
                error_codes::COORDINATOR_UNAVAILABLE,
                format!(
                    "the coordinator is unavailable: {why} on {}; log: {}",
                    state.socket_path().display(),
                    state.log_path().display()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_process_is_read_from_its_stat_line() {
        assert!(stat_says_stopped("123 (parhelia) T 1 123 123 0"));
        assert!(stat_says_stopped("123 (a) b) t 1"));
        assert!(!stat_says_stopped("123 (parhelia) S 1 123 123 0"));
        assert!(!stat_says_stopped("123 (T) R 1"));
        assert!(!stat_says_stopped("garbage"));
    }

    #[test]
    fn the_last_error_line_of_the_log_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("coordinator.log");
        std::fs::write(
            &log,
            "2026 INFO listening\nerror[E604]: old\n  hint: x\nerror: removing the stale socket /s: Is a directory\n  hint: y\n",
        )
        .unwrap();
        assert_eq!(
            last_logged_error(&log, 0).as_deref(),
            Some("error: removing the stale socket /s: Is a directory")
        );
        let len = std::fs::metadata(&log).unwrap().len();
        assert_eq!(last_logged_error(&log, len), None, "only what came after");
        assert_eq!(last_logged_error(&dir.path().join("none"), 0), None);
    }
}
