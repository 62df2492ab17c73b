//! Where the agent keeps things, derived from the spec in one place.
//!
//! Durable (on the volume, survives the container): the journal and the run directory
//! with Claude Code's raw stream, stderr and exit status. Ephemeral (runtime dir): the
//! agent's own files and the FIFO. Sockets live in the runtime dir unless its path is too
//! long for a Unix socket, in which case they move to `$TMPDIR/parhelia-<container_id>/`
//! and `agent.json` says so (`socket_dir`).

use std::path::{Path, PathBuf};

use crate::spec::LaunchSpec;

/// Socket paths longer than this (bytes) go to the fallback directory; the kernel limit
/// is 108 including the terminating NUL.
pub const MAX_SOCKET_PATH_BYTES: usize = 100;

#[derive(Clone, Debug, PartialEq)]
pub struct Layout {
    pub journal: PathBuf,
    pub journal_dir: PathBuf,
    pub run_dir: PathBuf,
    pub stream: PathBuf,
    pub stderr: PathBuf,
    pub exit_status: PathBuf,
    pub runtime_dir: PathBuf,
    pub agent_json: PathBuf,
    pub agent_log: PathBuf,
    pub hooks_settings: PathBuf,
    pub launcher_script: PathBuf,
    pub claude_pid: PathBuf,
    pub input_fifo: PathBuf,
    pub socket_dir: PathBuf,
    /// True when `socket_dir` is the `$TMPDIR` fallback rather than the runtime dir.
    pub socket_dir_is_fallback: bool,
    /// The tmux server's socket, alone in its own directory: under a sandbox that
    /// directory is the only part of the socket dir the sandbox may write.
    pub tmux_socket: PathBuf,
    pub hook_socket: PathBuf,
    /// What the sandbox may write in the runtime dir (`claude.pid`); the agent reads it
    /// as hostile input.
    pub sandbox_runtime_dir: PathBuf,
    /// The session's checkpoint store, on the volume.
    pub checkpoints: PathBuf,
    /// Where the conversation is staged for a checkpoint or a restore.
    pub conversation_staging: PathBuf,
}

impl Layout {
    pub fn new(spec: &LaunchSpec, temp_dir: &Path) -> Layout {
        let journal_dir = spec.volume_dir.join("journal");
        let run_dir = spec.volume_dir.join("runs").join(&spec.container_id);
        let runtime = spec.runtime_dir.clone();
        let in_runtime = runtime.join("tmux").join("tmux.sock");
        let socket_dir_is_fallback = in_runtime.as_os_str().len() > MAX_SOCKET_PATH_BYTES;
        let socket_dir = if socket_dir_is_fallback {
            temp_dir.join(format!("parhelia-{}", spec.container_id))
        } else {
            runtime.clone()
        };
        Layout {
            journal: journal_dir.join(format!("{}.jsonl", spec.container_id)),
            journal_dir,
            stream: run_dir.join("stream.jsonl"),
            stderr: run_dir.join("stderr.log"),
            exit_status: run_dir.join("exit_status"),
            run_dir,
            agent_json: runtime.join("agent.json"),
            agent_log: runtime.join("agent.log"),
            hooks_settings: runtime.join("hooks-settings.json"),
            launcher_script: runtime.join("launch-claude.sh"),
            claude_pid: runtime.join("sandbox").join("claude.pid"),
            sandbox_runtime_dir: runtime.join("sandbox"),
            input_fifo: runtime.join("claude-input.fifo"),
            tmux_socket: socket_dir.join("tmux").join("tmux.sock"),
            hook_socket: socket_dir.join("hooks.sock"),
            checkpoints: spec.volume_dir.join("checkpoints"),
            conversation_staging: runtime.join("conversation"),
            socket_dir,
            socket_dir_is_fallback,
            runtime_dir: runtime,
        }
    }

    /// Creates every directory the agent writes into (the socket dir private to us).
    pub fn create_directories(&self) -> std::io::Result<()> {
        for dir in [
            &self.journal_dir,
            &self.run_dir,
            &self.runtime_dir,
            &self.sandbox_runtime_dir,
        ] {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::create_dir_all(&self.socket_dir)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.socket_dir, std::fs::Permissions::from_mode(0o700))?;
        let tmux_dir = self.tmux_socket.parent().unwrap_or(&self.socket_dir);
        std::fs::create_dir_all(tmux_dir)?;
        std::fs::set_permissions(tmux_dir, std::fs::Permissions::from_mode(0o700))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::tests::example_json;

    #[test]
    fn paths_follow_the_contract_and_long_socket_paths_fall_back() {
        let spec = crate::spec::from_json(&example_json().to_string()).unwrap();
        let layout = Layout::new(&spec, Path::new("/tmp"));
        assert_eq!(
            layout.journal,
            Path::new("/srv/s/volume/journal/ctr-9c0d1e2f.jsonl")
        );
        assert_eq!(
            layout.stream,
            Path::new("/srv/s/volume/runs/ctr-9c0d1e2f/stream.jsonl")
        );
        assert_eq!(
            layout.tmux_socket,
            Path::new("/srv/c/runtime/tmux/tmux.sock")
        );
        assert!(!layout.socket_dir_is_fallback);

        let mut long = example_json();
        long["runtime_dir"] = format!("/{}", "r".repeat(100)).into();
        let spec = crate::spec::from_json(&long.to_string()).unwrap();
        let layout = Layout::new(&spec, Path::new("/tmp"));
        assert!(layout.socket_dir_is_fallback);
        assert_eq!(
            layout.tmux_socket,
            Path::new("/tmp/parhelia-ctr-9c0d1e2f/tmux/tmux.sock")
        );
        assert_eq!(
            layout.hook_socket,
            Path::new("/tmp/parhelia-ctr-9c0d1e2f/hooks.sock")
        );
        assert!(layout.agent_json.starts_with(&spec.runtime_dir));
    }
}
