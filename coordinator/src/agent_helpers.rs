//! The coordinator's hidden `parhelia-agent` helpers: the agent's own code run
//! as a child process where no agent is left to do it (`salvage`: a whole
//! checkpoint of a container whose agent is gone). Used by the reconciler (a
//! lost container) and by the service (a resume after a session that ended
//! without a final checkpoint).

use anyhow::Result;

use crate::db::Db;

/// The `parhelia-agent` binary the coordinator runs its hidden helpers with
/// (`meter`, `salvage`): the one it launches sessions with.
pub(crate) fn agent_helper_bin() -> Result<std::path::PathBuf> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| std::path::PathBuf::from("/"));
    crate::binaries::resolve_agent_bin(
        std::env::var_os(crate::plan::AGENT_BIN_ENV)
            .filter(|v| !v.is_empty())
            .as_deref()
            .map(std::path::Path::new),
        std::env::current_exe().ok().as_deref(),
        std::env::var_os("PATH").as_deref(),
        &cwd,
    )
    .map_err(Into::into)
}

/// `parhelia-agent salvage`'s answer.
#[derive(Clone, Debug, serde::Deserialize)]
pub(crate) struct Salvaged {
    pub(crate) checkpoint_id: String,
    pub(crate) unchanged: bool,
    pub(crate) conversation: bool,
}

impl Salvaged {
    pub(crate) fn describe(&self) -> String {
        if self.unchanged {
            format!(
                "{} (nothing had changed since it; {})",
                self.checkpoint_id,
                self.what()
            )
        } else {
            format!("{} ({})", self.checkpoint_id, self.what())
        }
    }

    /// What the checkpoint holds, without its id.
    pub(crate) fn what(&self) -> String {
        let what = if self.conversation {
            "workspace and conversation"
        } else {
            "workspace only: the session had no conversation yet"
        };
        what.to_string()
    }
}

/// A whole checkpoint (`agent_gone`: workspace and conversation) of a container
/// whose agent is gone, taken from its spec by the agent's own checkpoint code
/// (`parhelia-agent salvage`), so it is the same kind of checkpoint the agent takes.
pub(crate) async fn salvage(
    db: &Db,
    spec: &std::path::Path,
    session_id: &str,
    reason: &str,
) -> Result<Salvaged> {
    let recorded = if session_id.is_empty() {
        0.0
    } else {
        db.session_model_usd(session_id).unwrap_or(0.0)
    };
    let run = tokio::process::Command::new(agent_helper_bin()?)
        .arg("salvage")
        .arg("--spec")
        .arg(spec)
        .arg("--trigger")
        .arg(crate::checkpoints::AGENT_GONE_TRIGGER)
        .arg("--session-cost-usd")
        .arg(recorded.to_string())
        .arg("--reason")
        .arg(reason)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(600), run)
        .await
        .map_err(|_| anyhow::anyhow!("parhelia-agent salvage did not finish in 600 s"))??;
    anyhow::ensure!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
            .trim()
            .trim_start_matches("parhelia-agent salvage: ")
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}
