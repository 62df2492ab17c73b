//! `task create --dry-run`: what a launch of this task would be (the agent's
//! spec with placeholder ids, the binaries, the isolation, the names of the
//! environment it would send), planned here so every front shows the same
//! plan. Launches and records nothing; reads only this machine's environment.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::binaries::resolve_agent_bin;
use crate::config::Config;
use crate::error::CodedError;
use crate::plan::{
    self, AgentSettings, BackendKind, DryRunPlan, Isolation, LaunchIds, SessionRequest,
};

/// What the front decided before planning: the backend, the checked
/// workspace, Claude Code and the isolation a launch here would use (the
/// same decisions, and refusals, as a real `task create`).
pub struct DryRunInputs<'a> {
    pub backend: BackendKind,
    pub workspace: Option<PathBuf>,
    pub claude_bin: PathBuf,
    pub isolation: Isolation,
    pub state_root: &'a Path,
    /// The task's configuration (the coordinator's with `config_set` on top).
    pub config: &'a Config,
    pub config_set: Vec<String>,
    pub prompt: String,
    pub model: Option<String>,
    pub max_turns: Option<u32>,
    pub interactive: bool,
    pub task_type: String,
    /// For finding the agent binary as a launch would.
    pub cwd: &'a Path,
    pub path_var: Option<&'a OsStr>,
    pub agent_override: Option<PathBuf>,
    pub current_exe: Option<PathBuf>,
    /// The environment the launch would forward from (names only are shown).
    pub env: Vec<(String, String)>,
    /// The task's `--secret` names (checked), and its `--region`.
    pub secrets: Vec<String>,
    pub region: Option<String>,
}

/// The plan, where its spec would be written, and why the agent binary was
/// not found (the plan is still shown; the launch would fail E502).
pub struct DryRun {
    pub plan: DryRunPlan,
    pub spec_path: PathBuf,
    pub agent_error: Option<CodedError>,
}

pub fn plan_dry_run(inputs: DryRunInputs<'_>) -> DryRun {
    let config = inputs.config;
    let modal = inputs.backend == BackendKind::Modal;
    let ids = LaunchIds::placeholders();
    let layout = if modal {
        crate::backend::modal::container_layout(&config.modal, &ids.session_id, &ids.container_id)
    } else {
        plan::local_layout(inputs.state_root, &ids.session_id, &ids.container_id)
    };
    let session = SessionRequest {
        prompt: inputs.prompt,
        model: inputs.model,
        max_turns: inputs.max_turns,
        interactive: inputs.interactive,
        resume: false,
        restore_checkpoint: None,
        max_budget_usd: None,
        prior_cost_usd: None,
        charged_elsewhere: Vec::new(),
    };
    let agent_bin = resolve_agent_bin(
        inputs.agent_override.as_deref(),
        inputs.current_exe.as_deref(),
        inputs.path_var,
        inputs.cwd,
    );
    let env = plan::forwarded_env(inputs.env);
    let plan = DryRunPlan {
        dry_run: true,
        backend: inputs.backend,
        workspace_source: inputs.workspace,
        claude_bin: inputs.claude_bin.clone(),
        agent_bin: agent_bin.as_ref().ok().cloned(),
        model: session.model.clone().filter(|m| !m.is_empty()),
        task_type: inputs.task_type,
        state_dir: inputs.state_root.to_path_buf(),
        isolation: inputs.isolation,
        // What the launch really sends: a sandbox never gets this machine's
        // key, HOME or PATH (it has its own HOME); a local session gets the
        // coordinator's own HOME and PATH.
        env_names: if modal {
            crate::backend::modal::sent_env_names(env.keys())
        } else {
            plan::request_env(
                &env.clone().into_iter().collect(),
                [
                    ("HOME".to_string(), String::new()),
                    ("PATH".to_string(), String::new()),
                ],
            )
            .into_keys()
            .collect()
        },
        spec: plan::agent_spec(
            &session,
            &ids,
            &layout,
            &inputs.claude_bin,
            &AgentSettings::for_config(config),
        ),
        // By name only. On Modal: the Anthropic key's secret, `modal.secrets`,
        // then the task's (what `sandbox.create` attaches).
        secrets: if modal {
            let mut names = vec![config.modal.secret_name.clone()];
            for name in config.modal.secrets.iter().chain(&inputs.secrets) {
                if !names.contains(name) {
                    names.push(name.clone());
                }
            }
            names
        } else {
            inputs.secrets
        },
        region: if modal {
            inputs.region.or_else(|| config.modal.region.clone())
        } else {
            None
        },
        config_set: inputs.config_set,
    };
    DryRun {
        plan,
        spec_path: layout.spec_path,
        agent_error: agent_bin.err(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs<'a>(backend: BackendKind, root: &'a Path, config: &'a Config) -> DryRunInputs<'a> {
        DryRunInputs {
            backend,
            workspace: None,
            claude_bin: PathBuf::from("/usr/bin/claude"),
            isolation: Isolation::None,
            state_root: root,
            config,
            config_set: vec!["agent.heartbeat_interval_seconds=5".into()],
            prompt: "Fix the tests".into(),
            model: Some(String::new()),
            max_turns: Some(3),
            interactive: false,
            task_type: "generic".into(),
            cwd: root,
            path_var: None,
            agent_override: Some(root.join("no-such-agent")),
            current_exe: None,
            env: vec![
                ("ANTHROPIC_API_KEY".into(), "sk-not-shown".into()),
                ("UNRELATED".into(), "x".into()),
            ],
            secrets: vec!["GITHUB_TOKEN".into()],
            region: None,
        }
    }

    /// A local plan sends the key and the coordinator's HOME and PATH, by
    /// name only; a Modal one never this machine's key or PATH. A missing
    /// agent is said, not fatal.
    #[test]
    fn a_dry_run_names_what_each_backend_would_send_and_never_a_value() {
        let tmp = tempfile::tempdir().unwrap();
        let config = Config::defaults();
        let local = plan_dry_run(inputs(BackendKind::Local, tmp.path(), &config));
        assert!(local.plan.dry_run);
        assert_eq!(
            local.plan.model, None,
            "an empty model is Claude Code's default"
        );
        assert!(
            local
                .plan
                .env_names
                .contains(&"ANTHROPIC_API_KEY".to_string())
        );
        assert!(local.plan.env_names.contains(&"HOME".to_string()));
        assert!(!local.plan.env_names.contains(&"UNRELATED".to_string()));
        assert!(
            local.spec_path.starts_with(tmp.path()),
            "{}",
            local.spec_path.display()
        );
        assert_eq!(local.agent_error.map(|e| e.code.code), Some("E502"));
        let json = serde_json::to_string(&local.plan).unwrap();
        assert!(!json.contains("sk-not-shown"), "{json}");
        assert!(json.contains("<session-id>"), "placeholder ids: {json}");

        // A sandbox has its own HOME; it never gets this machine's key or PATH.
        let modal = plan_dry_run(inputs(BackendKind::Modal, tmp.path(), &config));
        assert!(modal.plan.env_names.contains(&"HOME".to_string()));
        for name in ["ANTHROPIC_API_KEY", "PATH"] {
            assert!(
                !modal.plan.env_names.contains(&name.to_string()),
                "{name}: {:?}",
                modal.plan.env_names
            );
        }
        assert!(!modal.spec_path.starts_with(tmp.path()));
        // Secrets by name: locally the task's; on Modal the Anthropic key's first.
        assert_eq!(local.plan.secrets, ["GITHUB_TOKEN"]);
        assert_eq!(modal.plan.secrets, ["anthropic-api-key", "GITHUB_TOKEN"]);
    }
}
