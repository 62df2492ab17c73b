//! What every end-to-end harness does with processes and the user's environment, in one
//! place: nothing of the developer's home inherited, the test's own tmux servers ended,
//! and a reaper so that a test killed before its `Drop` runs (a nextest timeout, a ^C)
//! leaks no coordinator, agent, tmux server or Claude Code.
//!
//! The coordinator and the agents it starts detach (`setsid`), so neither the test's
//! process group nor nextest's kill of it reaches them; what marks them as the test's is
//! its private directory: their working directory is under it (the coordinator runs in the
//! state dir, Claude Code and tmux in the session's workspace) or their command line names
//! it (`--state-dir`, `run --spec`, `tmux -S`).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

/// Variables of the developer's environment no test inherits: with them unset, the XDG
/// directories follow the test's own `HOME`, and Claude Code's config dir is the one the
/// session sets up (a test run from inside Claude Code has `CLAUDE_CONFIG_DIR`).
pub const NOT_INHERITED: &[&str] = &[
    "CLAUDE_CONFIG_DIR",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "XDG_STATE_HOME",
    "XDG_CACHE_HOME",
];

/// `tmux -S SOCKET kill-server`: ends a test's private tmux server (and the Claude Code
/// in it). A server already gone is not an error here; callers that need it to have been
/// running check the status.
pub fn tmux_kill_server(socket: &Path) -> ExitStatus {
    Command::new("tmux")
        .arg("-S")
        .arg(socket)
        .arg("kill-server")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run tmux")
}

/// The reaper's script: wait for the test process to end; if the test's directory is
/// still there (so its harness never dropped: the test was killed), end every tmux server
/// with a socket under it, then SIGKILL every process working under it or naming it, twice
/// (a process can fork between two passes).
const REAPER: &str = r#"
test_pid=$1; root=$2
while kill -0 "$test_pid" 2>/dev/null && [ -d "$root" ]; do sleep 1; done
[ -d "$root" ] || exit 0
find "$root" -name '*.sock' -type s 2>/dev/null | while IFS= read -r sock; do
  tmux -S "$sock" kill-server 2>/dev/null
done
for pass in 1 2; do
  for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    [ "$pid" = $$ ] && continue
    cwd=$(readlink "$p/cwd" 2>/dev/null)
    case "$cwd" in
      "$root"|"$root"/*) kill -KILL "$pid" 2>/dev/null; continue ;;
    esac
    if tr '\0' '\n' < "$p/cmdline" 2>/dev/null | grep -qF -- "$root"; then
      kill -KILL "$pid" 2>/dev/null
    fi
  done
done
"#;

/// Starts the reaper for `root` (a test's private directory, removed when the test ends
/// normally): a `sh` in its own session, so killing the test's process group spares it.
/// It costs one sleeping shell per test and does nothing when the test ends normally.
pub fn reap_when_killed(root: &Path) {
    use std::os::unix::process::CommandExt;
    let root: PathBuf = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let spawned = Command::new("sh")
        .arg("-c")
        .arg(REAPER)
        .arg("parhelia-test-reaper")
        .arg(std::process::id().to_string())
        .arg(&root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    // Not waited for: it outlives the test by design (and is reaped by init).
    drop(spawned);
}

/// Resets every established TCP connection process `pid` holds, as a network that drops
/// them would (a NAT forgetting its mapping, a tunnel restarting): `ss -K`, which
/// destroys the socket so both ends see the connection broken. Returns the
/// connections reset as (local port, peer port). Needs CAP_NET_ADMIN (the test says so
/// when it is missing, rather than passing without having dropped anything).
pub fn reset_tcp_connections_of(pid: u32) -> Vec<(u16, u16)> {
    let out = Command::new("ss")
        .args(["-tnpH", "state", "established"])
        .stdin(Stdio::null())
        .output()
        .expect("run ss (iproute2)");
    assert!(
        out.status.success(),
        "ss: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let owner = format!("pid={pid},");
    let port = |address: &str| -> u16 {
        address
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {address}"))
    };
    let mut reset = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if !line.contains(&owner) {
            continue;
        }
        // Recv-Q Send-Q Local:Port Peer:Port Process
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, peer) = (port(fields[2]), port(fields[3]));
        let killed = Command::new("ss")
            .args(["-K", "-tnH", "state", "established"])
            .arg(format!("( sport = :{local} and dport = :{peer} )"))
            .stdin(Stdio::null())
            .output()
            .expect("run ss -K");
        assert!(
            killed.status.success() && !killed.stdout.is_empty(),
            "ss -K could not reset {local}->{peer} (it needs CAP_NET_ADMIN and a kernel with \
             INET_DIAG_DESTROY): {}",
            String::from_utf8_lossy(&killed.stderr)
        );
        reset.push((local, peer));
    }
    reset
}
