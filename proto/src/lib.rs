//! The gRPC contract between `parhelia` (coordinator) and `parhelia-agent`,
//! plus the local control channel between the CLI and the coordinator.
//!
//! This crate does no IO. It owns the generated wire types and a few pure
//! helpers every side needs to agree on (the auth metadata key, event type
//! names and levels).

#![allow(clippy::derive_partial_eq_without_eq)]

pub mod v1 {
    tonic::include_proto!("parhelia.v1");
}

pub use v1::*;

/// The metadata key that carries `Bearer <session secret>` on every agent RPC.
pub const AUTH_METADATA_KEY: &str = "authorization";

/// Formats the metadata value for a session secret.
pub fn bearer(secret: &str) -> String {
    format!("Bearer {secret}")
}

/// HTTP/2 keepalive on agent connections, both ends: a PING after this long without
/// a frame from the peer (idle or not)…
pub const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// …and the connection is closed when the PING is not answered within this long. So a
/// dead path (a tunnel that stopped forwarding, a peer that froze, a vanished NAT
/// mapping) is noticed within [`KEEPALIVE_INTERVAL`] + [`KEEPALIVE_TIMEOUT`] = 10 s: an
/// attached CLI then reconnects, and the agent ends the tmux client the connection fed.
pub const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Stable snake_case names for event kinds, used as the `type` column in the
/// coordinator's database and in `--type` filters. A new kind's name goes
/// into [`EVENT_TYPE_NAMES`] too.
pub fn event_type_name(kind: &event::Kind) -> &'static str {
    use event::Kind;
    match kind {
        Kind::SessionStarted(_) => "session_started",
        Kind::ClaudeInit(_) => "claude_init",
        Kind::AssistantText(_) => "assistant_text",
        Kind::ToolCall(_) => "tool_call",
        Kind::ToolResult(_) => "tool_result",
        Kind::ApiRetry(_) => "api_retry",
        Kind::TurnResult(_) => "turn_result",
        Kind::StatusChanged(_) => "status_changed",
        Kind::InputAccepted(_) => "input_accepted",
        Kind::ClaudeExited(_) => "claude_exited",
        Kind::SessionFinished(_) => "session_finished",
        Kind::AgentError(_) => "agent_error",
        Kind::StopRequested(_) => "stop_requested",
        Kind::CheckpointCreated(_) => "checkpoint_created",
        Kind::CheckpointFailed(_) => "checkpoint_failed",
        Kind::CheckpointRestored(_) => "checkpoint_restored",
        Kind::ModelSpend(_) => "model_spend",
        Kind::StoreOverQuota(_) => "store_over_quota",
        Kind::SubagentStarted(_) => "subagent_started",
        Kind::SubagentFinished(_) => "subagent_finished",
    }
}

/// Every name [`event_type_name`] returns: what `--type` filters accept for
/// agent events (a test keeps it in step with the match above).
pub const EVENT_TYPE_NAMES: &[&str] = &[
    "session_started",
    "claude_init",
    "assistant_text",
    "tool_call",
    "tool_result",
    "api_retry",
    "turn_result",
    "status_changed",
    "input_accepted",
    "claude_exited",
    "session_finished",
    "agent_error",
    "stop_requested",
    "checkpoint_created",
    "checkpoint_failed",
    "checkpoint_restored",
    "model_spend",
    "store_over_quota",
    "subagent_started",
    "subagent_finished",
];

/// Severity of an event: `error`, `warning` or `info`.
pub fn event_level(kind: &event::Kind) -> &'static str {
    use event::Kind;
    match kind {
        Kind::AgentError(_) | Kind::CheckpointFailed(_) => "error",
        Kind::TurnResult(r) if r.is_error => "error",
        Kind::ToolResult(r) if r.is_error => "warning",
        Kind::SubagentFinished(f) if f.is_error => "warning",
        Kind::ApiRetry(_) | Kind::StoreOverQuota(_) => "warning",
        Kind::ClaudeExited(e) if !e.had_result => "warning",
        Kind::SessionFinished(f) if f.outcome != SessionOutcome::Succeeded as i32 => "error",
        _ => "info",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_round_trips_through_journal_json() {
        let event = Event {
            seq: 7,
            ts_ms: 1_700_000_000_000,
            kind: Some(event::Kind::ToolCall(ToolCall {
                tool_use_id: "toolu_1".into(),
                name: "Write".into(),
                input_json: r#"{"file_path":"a.txt"}"#.into(),
                ..Default::default()
            })),
        };
        let line = serde_json::to_string(&event).unwrap();
        assert!(line.contains("\"tool_call\""), "{line}");
        let back: Event = serde_json::from_str(&line).unwrap();
        assert_eq!(back, event);
        assert_eq!(event_type_name(back.kind.as_ref().unwrap()), "tool_call");
    }

    #[test]
    fn every_listed_type_name_is_a_kind_with_that_name() {
        for name in EVENT_TYPE_NAMES {
            let line = format!(r#"{{"seq":1,"kind":{{"{name}":{{}}}}}}"#);
            let event: Event =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(event_type_name(event.kind.as_ref().unwrap()), *name);
        }
    }

    #[test]
    fn missing_fields_default_so_old_lines_still_read() {
        let back: Event = serde_json::from_str(r#"{"seq":3}"#).unwrap();
        assert_eq!(back.seq, 3);
        assert!(back.kind.is_none());
    }

    #[test]
    fn failed_session_is_error_level() {
        let kind = event::Kind::SessionFinished(SessionFinished {
            outcome: SessionOutcome::Failed as i32,
            ..Default::default()
        });
        assert_eq!(event_level(&kind), "error");
    }
}
