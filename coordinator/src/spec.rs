//! The files the coordinator and the agent exchange on disk, as fixed by
//! `docs/dev/contracts.md`: the agent's `spec.json` (written by the backend,
//! never containing the secret) and `agent.json` (written by the agent once
//! its gRPC server listens).

/// `spec.json`'s schema is the contract crate's, shared with the agent that reads it.
/// So is `agent.json`'s, the agent's announcement of where it listens.
pub use parhelia_contract::spec::{
    AgentRuntimeInfo, ChargedElsewhere, CheckpointSpec, LaunchSpec, ReadLimitsSpec, SPEC_VERSION,
    SandboxBind, SandboxSpec, SessionMode,
};

/// The spec's `checkpoint` object when the configuration says nothing: the default
/// policy, with the engine's default read limits written out.
pub fn default_checkpoint_spec() -> CheckpointSpec {
    CheckpointSpec {
        limits: parhelia_checkpoint::Limits::default().to_spec(),
        ..CheckpointSpec::default()
    }
}

/// The spec's `checkpoint` object from `[checkpoint]`.
pub fn checkpoint_spec(c: &crate::config::CheckpointConfig) -> CheckpointSpec {
    CheckpointSpec {
        interval_ms: (c.interval_seconds * 1000.0) as u64,
        excludes: c.excludes.clone(),
        keep_last: c.keep_last,
        keep_within_ms: c.keep_within_hours.map(|h| (h * 3_600_000.0) as i64),
        max_store_bytes: c.max_store_mb.map(|mb| mb.saturating_mul(1024 * 1024)),
        limits: c.read_limits().to_spec(),
        lock_wait_ms: Some(c.lock_wait().as_millis() as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_json_from_the_contract_parses() {
        let info: AgentRuntimeInfo = serde_json::from_str(
            r#"{"version": 1, "pid": 12345, "grpc_addr": "127.0.0.1:40123", "started_at_ms": 1700000000000,
                "container_id": "ctr-9c0d1e2f", "session_id": "sess-1a2b3c4d", "socket_dir": "/tmp/x"}"#,
        )
        .unwrap();
        assert_eq!(info.endpoint_uri(), "http://127.0.0.1:40123");
        assert_eq!(info.pid, 12345);
    }

    #[test]
    fn spec_rejects_unknown_fields_and_keeps_contract_names() {
        let spec = LaunchSpec {
            version: 1,
            session_id: "sess-1a2b3c4d".into(),
            task_id: "task-5e6f7a8b".into(),
            container_id: "ctr-9c0d1e2f".into(),
            prompt: "hi".into(),
            mode: SessionMode::Headless,
            claude_session_id: "6f1c".into(),
            resume: false,
            model: None,
            max_turns: None,
            claude_bin: "/bin/claude".into(),
            workspace_dir: "/w".into(),
            claude_config_dir: "/c".into(),
            volume_dir: "/v".into(),
            runtime_dir: "/r".into(),
            listen_addr: "127.0.0.1:0".parse().unwrap(),
            heartbeat_interval_ms: 5000,
            linger_after_finish_ms: 600_000,
            stop_grace_ms: 10_000,
            restore_checkpoint: None,
            max_budget_usd: None,
            prior_cost_usd: None,
            charged_elsewhere: Vec::new(),
            checkpoint: default_checkpoint_spec(),
            claude_config_seed: None,
            sandbox: None,
            timeout_ms: None,
            session_user: None,
            model_prices: Default::default(),
        };
        let json = serde_json::to_value(&spec).unwrap();
        assert!(json.get("max_budget_usd").is_none());
        // Optional fields the agent defaults are left out, not written as null.
        assert!(json.get("restore_checkpoint").is_none());
        assert_eq!(json["mode"], "headless");
        assert_eq!(json["model"], serde_json::Value::Null);
        let mut extra = json.clone();
        extra["surprise"] = 1.into();
        assert!(serde_json::from_value::<LaunchSpec>(extra).is_err());
        assert_eq!(serde_json::from_value::<LaunchSpec>(json).unwrap(), spec);
    }

    #[test]
    fn the_store_lock_wait_reaches_the_agents_spec() {
        let mut config = crate::config::Config::defaults().agent.checkpoint;
        assert_eq!(checkpoint_spec(&config).lock_wait_ms, Some(60_000));
        config.lock_wait_seconds = 2.5;
        assert_eq!(checkpoint_spec(&config).lock_wait_ms, Some(2_500));
    }
}
