//! The metadata stored with each checkpoint (`docs/formats/checkpoint.md`, the manifest's
//! `metadata`): what the agent records about the session and its git state when it takes
//! one, and what the coordinator records on the checkpoint it seeds a Modal session's
//! workspace with. The checkpoint engine stores it opaquely; the agent writes it and the
//! coordinator reads it (`checkpoint list`/`show`/`diff`) through [`CheckpointMetadata`].
//!
//! Every field is optional: which ones a checkpoint carries depends on who took it. A
//! store is written by a session, so it is hostile input: [`CheckpointMetadata::from_stored`]
//! reads each field on its own, and a field of the wrong shape reads as absent without
//! costing the others.

use std::path::PathBuf;

use serde::de::{DeserializeOwned, Deserializer};
use serde::{Deserialize, Serialize};

/// The tree of a checkpoint that holds the session's workspace.
pub const WORKSPACE_TREE: &str = "workspace";
/// The tree that holds Claude Code's conversation (the staged transcripts).
pub const CONVERSATION_TREE: &str = "conversation";

/// A checkpoint's metadata, in the order the agent writes it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMetadata {
    /// Claude Code's session id (the agent's checkpoints).
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub claude_session_id: Option<String>,
    /// The model the session asked for (empty: Claude Code's default).
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub model: Option<String>,
    /// The session's spend when the checkpoint was taken.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub session_cost_usd: Option<f64>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub task_id: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub container_id: Option<String>,
    /// `coordinator` for a checkpoint of a dead agent's container (`parhelia-agent
    /// salvage`); absent for the agent's own.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub taken_by: Option<String>,
    /// Why a checkpoint not taken by the agent was taken.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub reason: Option<String>,
    /// The workspace's git state.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub git: Option<GitState>,
    /// The version of the agent that took it.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub agent_version: Option<String>,
    /// The checkpoint whose conversation this one carries, when the config dir had none
    /// (a new container before its restore: the safety checkpoint).
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub conversation_carried_from: Option<String>,
    /// The directory a coordinator-seeded `workspace` checkpoint was taken from.
    #[serde(
        default,
        deserialize_with = "lenient",
        skip_serializing_if = "Option::is_none"
    )]
    pub workspace_source: Option<PathBuf>,
}

impl CheckpointMetadata {
    /// Reads a manifest's metadata: anything that is not an object (a checkpoint taken
    /// with none) reads as empty, and each field of the wrong shape as absent.
    pub fn from_stored(value: &serde_json::Value) -> CheckpointMetadata {
        CheckpointMetadata::deserialize(value).unwrap_or_default()
    }

    /// The metadata as the JSON the manifest stores.
    pub fn to_stored(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("checkpoint metadata always serializes")
    }
}

/// A workspace's git state when a checkpoint was taken. Read leniently: what a field
/// leaves out is its default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitState {
    #[serde(default)]
    pub repository: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(default)]
    pub detached: bool,
    #[serde(default)]
    pub dirty: DirtySummary,
    #[serde(default)]
    pub stashes: Vec<Stash>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How many paths are in each state of `git status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DirtySummary {
    pub staged: u32,
    pub modified: u32,
    pub deleted: u32,
    pub untracked: u32,
    pub conflicted: u32,
}

/// One stash entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stash {
    pub index: usize,
    pub message: String,
    pub oid: String,
}

/// A field of the wrong shape reads as absent instead of failing the whole metadata.
fn lenient<'de, D: Deserializer<'de>, T: DeserializeOwned>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    let value = serde_json::Value::deserialize(deserializer)?;
    Ok(serde_json::from_value(value).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the agent writes, byte for byte as it always has.
    const AGENT_WRITES: &str = concat!(
        r#"{"claude_session_id":"6f1c2d3e-4a5b-4c6d-8e7f-901a2b3c4d5e","model":"","#,
        r#""session_cost_usd":0.25,"task_id":"task-1","container_id":"ctr-1","#,
        r#""taken_by":"coordinator","reason":"agent gone","#,
        r#""git":{"repository":true,"head":"0123456789abcdef","branch":"main","detached":false,"#,
        r#""dirty":{"staged":0,"modified":2,"deleted":0,"untracked":1,"conflicted":0},"#,
        r#""stashes":[{"index":0,"message":"wip","oid":"abc"}]},"#,
        r#""agent_version":"0.1.0","conversation_carried_from":"cp-1"}"#
    );

    #[test]
    fn metadata_reads_back_to_the_same_bytes() {
        let value: serde_json::Value = serde_json::from_str(AGENT_WRITES).unwrap();
        let metadata = CheckpointMetadata::from_stored(&value);
        assert_eq!(metadata.session_cost_usd, Some(0.25));
        assert_eq!(serde_json::to_string(&metadata).unwrap(), AGENT_WRITES);
        let seeded = CheckpointMetadata {
            workspace_source: Some("/src".into()),
            ..CheckpointMetadata::default()
        };
        assert_eq!(
            seeded.to_stored(),
            serde_json::json!({"workspace_source": "/src"})
        );
    }

    #[test]
    fn a_field_of_the_wrong_shape_costs_only_itself() {
        let metadata = CheckpointMetadata::from_stored(&serde_json::json!({
            "claude_session_id": 7, "session_cost_usd": 1, "git": "yes", "later": true
        }));
        assert_eq!(metadata.claude_session_id, None);
        assert_eq!(metadata.session_cost_usd, Some(1.0));
        assert_eq!(metadata.git, None);
        assert_eq!(
            CheckpointMetadata::from_stored(&serde_json::Value::Null),
            CheckpointMetadata::default()
        );
        let partial = CheckpointMetadata::from_stored(&serde_json::json!({
            "git": {"repository": true, "dirty": {"modified": 2}, "stashes": [{}]}
        }));
        let git = partial.git.unwrap();
        assert_eq!((git.dirty.modified, git.stashes.len()), (2, 1));
    }
}
