//! Checkpoints of the session, taken inside the container and written to the
//! session's volume: the workspace tree, the Claude Code conversation (staged
//! by [`crate::conversation`]) and metadata (git state, Claude session id,
//! model, cost so far), committed together as one checkpoint by the engine
//! (`parhelia-checkpoint`).
//!
//! The [`Checkpointer`] is a task of its own: the supervisor sends it
//! [`CheckpointJob`]s and gets a [`CheckpointDone`] back in its inbox for each,
//! so a checkpoint never blocks heartbeats or RPCs. Jobs run one at a time, in
//! order (the store allows one writer; pruning runs between jobs, never during
//! one). A job may carry a hook acknowledgement: Claude Code's Stop and
//! PreToolUse hooks wait for it, so the checkpoint sees a quiescent tree at a
//! turn's end and is taken *before* a risky command runs. A turn's end first waits
//! (bounded) until the transcript holds the whole turn: Claude Code writes it behind a
//! queue, and at the Stop hook the final reply may not be there yet.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use parhelia_contract::checkpoint::CheckpointMetadata;
use parhelia_contract::codes::{self, ErrorCode};

use parhelia_checkpoint::{
    ChangeHint, CheckpointError, CheckpointId, CreateOutcome, CreateRequest, Retention, Store,
    TreeSpec,
};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::change_tracker::ChangeTracker;
use crate::conversation;
use crate::git_state::{self, GitState};
use crate::spec::LaunchSpec;

/// The two trees every checkpoint holds.
pub use parhelia_contract::checkpoint::{CONVERSATION_TREE, WORKSPACE_TREE};

/// What the session knows that belongs in a checkpoint's metadata.
#[derive(Clone, Debug, Default)]
pub struct SessionFacts {
    pub claude_session_id: String,
    pub model: String,
    pub session_cost_usd: f64,
    pub task_id: String,
    pub container_id: String,
    /// `coordinator` for a checkpoint of a dead agent's container ([`salvage`]);
    /// absent for the agent's own.
    pub taken_by: Option<&'static str>,
    /// Why a checkpoint not taken by the agent was taken.
    pub reason: Option<String>,
}

/// The metadata stored with each checkpoint (`docs/formats/checkpoint.md`; the type is
/// the contract's, which the coordinator reads it back with): the session's facts, the
/// workspace's git state and this agent's version.
fn checkpoint_metadata(
    facts: &SessionFacts,
    git: GitState,
    conversation_carried_from: Option<String>,
) -> CheckpointMetadata {
    CheckpointMetadata {
        claude_session_id: Some(facts.claude_session_id.clone()),
        model: Some(facts.model.clone()),
        session_cost_usd: Some(facts.session_cost_usd),
        task_id: Some(facts.task_id.clone()),
        container_id: Some(facts.container_id.clone()),
        taken_by: facts.taken_by.map(str::to_string),
        reason: facts.reason.clone(),
        git: Some(git),
        agent_version: Some(env!("CARGO_PKG_VERSION").to_string()),
        conversation_carried_from,
        workspace_source: None,
    }
}

/// One checkpoint to take.
pub struct CheckpointJob {
    pub trigger: String,
    /// A turn's end: wait (bounded, [`conversation::TURN_FLUSH_WAIT`]) until the
    /// transcript holds the whole turn, ending in this reply (empty: any final reply).
    pub turn_end_reply: Option<String>,
    pub message: String,
    /// Skip (report `skipped`) when nothing changed since the latest checkpoint.
    pub skip_if_unchanged: bool,
    pub facts: SessionFacts,
    /// Answered once the result is journaled (a manual checkpoint's RPC), with
    /// the journal sequence of the event that recorded it.
    pub reply: Option<CheckpointReply>,
    /// A Claude Code hook waiting for this checkpoint.
    pub hook_ack: Option<oneshot::Sender<()>>,
    /// The session's final checkpoint (see [`CheckpointDone::is_final`]).
    pub is_final: bool,
    /// When it was queued.
    pub queued_at: Instant,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointSummary {
    pub checkpoint_id: String,
    pub skipped: bool,
    pub file_count: u64,
    pub total_bytes: u64,
    pub new_bytes: u64,
    pub duration_ms: u64,
    /// `duration_ms` in microseconds.
    pub duration_us: u64,
    pub full_scan: bool,
    /// Capturing the git state (`None`: not captured, a skipped checkpoint's is).
    pub git_ms: Option<u64>,
    /// The engine's commit (fdatasyncs, renames, directory fsyncs); the manifest cannot
    /// hold it (docs/formats/checkpoint.md), the journal's `checkpoint_created` does.
    pub fsync_ms: Option<u64>,
    /// After this checkpoint and the prune that followed it, the store was
    /// still over its quota: `(store_bytes, quota_bytes)` (E623).
    pub over_quota: Option<(u64, u64)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointFailure {
    pub code: ErrorCode,
    pub message: String,
}

impl From<&CheckpointError> for CheckpointFailure {
    fn from(e: &CheckpointError) -> Self {
        CheckpointFailure {
            // A full disk is named as such (E516): the session stops, resumable.
            code: if crate::disk::chain_is_no_space(e) {
                codes::DISK_FULL
            } else {
                e.error_code()
            },
            message: e.to_string(),
        }
    }
}

/// A finished job, for the supervisor to journal and then answer.
#[derive(Debug)]
pub struct CheckpointDone {
    pub trigger: String,
    pub message: String,
    pub result: Result<CheckpointSummary, CheckpointFailure>,
    pub reply: Option<CheckpointReply>,
    pub hook_ack: Option<oneshot::Sender<()>>,
    /// The session's final checkpoint: `SessionFinished` follows it.
    pub is_final: bool,
    /// When the job was queued (a hook's wait runs from then until its ack).
    pub queued_at: Instant,
}

/// Where a manual checkpoint's result goes.
pub type CheckpointReply = oneshot::Sender<Result<(CheckpointSummary, u64), CheckpointFailure>>;

/// What a checkpoint needs to know about the session's files.
pub struct CheckpointPaths {
    pub store_root: PathBuf,
    pub workspace: PathBuf,
    pub claude_config_dir: PathBuf,
    pub conversation_staging: PathBuf,
    pub excludes: Vec<String>,
    pub retention: Retention,
    /// Who reads the workspace's git state (the session user under uid separation).
    pub git_reader: git_state::Reader,
}

impl CheckpointPaths {
    pub fn new(spec: &LaunchSpec, store_root: PathBuf, conversation_staging: PathBuf) -> Self {
        CheckpointPaths {
            store_root,
            workspace: spec.workspace_dir.clone(),
            claude_config_dir: spec.claude_config_dir.clone(),
            conversation_staging,
            excludes: spec.checkpoint.excludes.clone(),
            retention: Retention {
                // `usize` is 64 bits wherever the agent runs; a larger count keeps all.
                keep_last: spec
                    .checkpoint
                    .keep_last
                    .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
                keep_within_ms: spec.checkpoint.keep_within_ms,
                max_store_bytes: spec.checkpoint.max_store_bytes,
            },
            git_reader: git_state::Reader::Agent,
        }
    }

    fn has_retention(&self) -> bool {
        self.retention.keep_last.is_some()
            || self.retention.keep_within_ms.is_some()
            || self.retention.max_store_bytes.is_some()
    }
}

/// Takes one checkpoint now (blocking). `hint` says what changed in the
/// workspace; it is given back to `tracker` if the checkpoint fails. With a tracker the
/// git state is captured incrementally from what it saw
/// (`git_state::capture_incremental`, with the tracker's cache of the previous capture).
pub fn take_checkpoint(
    store: &Store,
    paths: &CheckpointPaths,
    tracker: Option<&ChangeTracker>,
    job_trigger: &str,
    job_message: &str,
    skip_if_unchanged: bool,
    facts: &SessionFacts,
) -> Result<CheckpointSummary, CheckpointFailure> {
    let started = Instant::now();
    let (hint, events) =
        tracker.map_or((ChangeHint::Unknown, None), ChangeTracker::take_with_events);
    let full_scan = matches!(hint, ChangeHint::Unknown);
    let io_failure = |what: &str, e: std::io::Error| CheckpointFailure {
        code: if crate::disk::is_no_space(&e) {
            codes::DISK_FULL
        } else {
            codes::CHECKPOINT_IO_FAILED
        },
        message: format!("{what}: {e}"),
    };
    let result = (|| {
        conversation::stage(
            &paths.claude_config_dir,
            &paths.workspace,
            &facts.claude_session_id,
            &paths.conversation_staging,
        )
        .map_err(|e| io_failure("staging the conversation", e))?;
        // A checkpoint is one unit: without a transcript in the config dir (a new
        // container before its restore), the conversation is the newest one the store
        // holds, so a rollback to this checkpoint continues that conversation.
        let conversation_carried_from =
            if has_transcript(&paths.conversation_staging, &facts.claude_session_id) {
                None
            } else {
                carry_over_conversation(store, &paths.conversation_staging)
            };
        let git_started = Instant::now();
        let git = match (tracker, &paths.git_reader) {
            // Under uid separation the session user's reader runs as a process of its
            // own for each capture, so there is no previous result to build on.
            (Some(tracker), git_state::Reader::Agent) => {
                let mut cache = tracker.git_cache();
                git_state::capture_incremental(&paths.workspace, &mut cache, events.as_ref()).0
            }
            _ => git_state::capture_as(&paths.workspace, &paths.git_reader),
        };
        let git_ms = git_started.elapsed().as_millis() as u64;
        let metadata = checkpoint_metadata(facts, git, conversation_carried_from);
        let request = CreateRequest {
            trees: vec![
                (
                    TreeSpec {
                        name: WORKSPACE_TREE.into(),
                        root: paths.workspace.clone(),
                        excludes: paths.excludes.clone(),
                    },
                    hint.clone(),
                ),
                (
                    TreeSpec {
                        name: CONVERSATION_TREE.into(),
                        root: paths.conversation_staging.clone(),
                        excludes: Vec::new(),
                    },
                    ChangeHint::Unknown,
                ),
            ],
            parent: None,
            trigger: job_trigger.into(),
            message: (!job_message.is_empty()).then(|| job_message.to_string()),
            metadata: metadata.to_stored(),
            skip_if_unchanged,
        };
        let outcome = store
            .create_with_git_ms(&request, Some(git_ms))
            .map_err(|e| CheckpointFailure::from(&e))?;
        let summary = match outcome {
            CreateOutcome::Created(manifest) => CheckpointSummary {
                checkpoint_id: manifest.id.to_string(),
                skipped: false,
                file_count: manifest.file_count(),
                total_bytes: manifest.total_bytes(),
                new_bytes: manifest.stats.new_bytes,
                duration_ms: 0,
                duration_us: 0,
                full_scan,
                git_ms: Some(git_ms),
                fsync_ms: manifest.stats.phase_ms.and_then(|p| p.fsync),
                over_quota: None,
            },
            CreateOutcome::Unchanged(id) => CheckpointSummary {
                checkpoint_id: id.to_string(),
                skipped: true,
                file_count: 0,
                total_bytes: 0,
                new_bytes: 0,
                duration_ms: 0,
                duration_us: 0,
                full_scan,
                git_ms: Some(git_ms),
                fsync_ms: None,
                over_quota: None,
            },
        };
        let mut summary = summary;
        if !summary.skipped && paths.has_retention() {
            match store.prune(&paths.retention) {
                Ok(_) => {}
                // Pruned to the retention policy, and still over the quota: the new
                // checkpoint is kept (a session's latest state is never dropped for
                // space), and the store stays over it until older ones can go. The
                // supervisor journals it (`store_over_quota`) for the views.
                Err(e @ CheckpointError::QuotaExceeded { used, limit }) => {
                    tracing::warn!(
                        code = e.code(),
                        error = %e,
                        "the checkpoint store is over its quota after pruning; the new checkpoint is kept"
                    );
                    summary.over_quota = Some((used, limit));
                }
                // The new checkpoint is committed either way; what the failed prune
                // removed, if anything, `checkpoint list` shows.
                Err(e) => tracing::warn!(
                    code = e.code(),
                    error = %e,
                    "pruning the checkpoint store failed; the new checkpoint is kept"
                ),
            }
        }
        Ok(summary)
    })();
    match result {
        Ok(mut summary) => {
            let elapsed = started.elapsed();
            summary.duration_ms = elapsed.as_millis() as u64;
            summary.duration_us = elapsed.as_micros() as u64;
            Ok(summary)
        }
        Err(failure) => {
            if let Some(tracker) = tracker {
                tracker.give_back(hint);
            }
            Err(failure)
        }
    }
}

/// What [`salvage`] did, printed as JSON by `parhelia-agent salvage`.
#[derive(Clone, Debug, Serialize)]
pub struct Salvaged {
    pub checkpoint_id: String,
    /// The store already held exactly this (its newest checkpoint's id).
    pub unchanged: bool,
    /// Whether the checkpoint holds a conversation.
    pub conversation: bool,
}

/// How long the agent waits for another process's hold on its store's lock before
/// E622: the spec's `checkpoint.lock_wait_ms` (`checkpoint.lock_wait_seconds`), else the
/// engine's default.
pub fn lock_wait(spec: &parhelia_contract::spec::CheckpointSpec) -> std::time::Duration {
    spec.lock_wait_ms
        .map(std::time::Duration::from_millis)
        .unwrap_or(parhelia_checkpoint::DEFAULT_LOCK_WAIT)
}

/// A whole checkpoint (workspace and conversation, as the agent's own) of a
/// container whose agent is gone, taken from the container's spec by the
/// coordinator (`parhelia-agent salvage`): what the workspace and Claude Code's
/// config dir hold now. Without a transcript there, the conversation is carried
/// from the store's newest, as for the safety checkpoint. Unchanged: the newest id.
pub fn salvage(
    spec: &LaunchSpec,
    trigger: &str,
    session_cost_usd: f64,
    reason: &str,
) -> Result<Salvaged, CheckpointFailure> {
    let store_root = spec.volume_dir.join("checkpoints");
    let store = Store::open(&store_root)
        .map_err(|e| CheckpointFailure::from(&e))?
        .with_limits(parhelia_checkpoint::Limits::from_spec(
            &spec.checkpoint.limits,
        ))
        .with_lock_wait(lock_wait(&spec.checkpoint));
    let io = |e: std::io::Error| CheckpointFailure {
        code: if crate::disk::is_no_space(&e) {
            codes::DISK_FULL
        } else {
            codes::CHECKPOINT_IO_FAILED
        },
        message: format!("staging the conversation: {e}"),
    };
    std::fs::create_dir_all(store_root.join("tmp")).map_err(io)?;
    // A staging dir of its own in the store's tmp/, removed when done.
    struct Staging(PathBuf);
    impl Drop for Staging {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let staging = Staging(store_root.join("tmp").join(format!(
        "salvage-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    )));
    std::fs::create_dir(&staging.0).map_err(io)?;
    let paths = CheckpointPaths::new(spec, store_root.clone(), staging.0.join("conversation"));
    let facts = SessionFacts {
        claude_session_id: spec.claude_session_id.clone(),
        model: spec.model.clone().unwrap_or_default(),
        session_cost_usd: if session_cost_usd.is_finite() {
            session_cost_usd.max(0.0)
        } else {
            0.0
        },
        task_id: spec.task_id.clone(),
        container_id: spec.container_id.clone(),
        taken_by: Some("coordinator"),
        reason: Some(reason.to_string()),
    };
    let summary = take_checkpoint(&store, &paths, None, trigger, reason, true, &facts)?;
    let conversation = CheckpointId::parse(&summary.checkpoint_id)
        .ok()
        .and_then(|id| store.load(&id).ok())
        .is_some_and(|m| has_conversation(&m));
    Ok(Salvaged {
        checkpoint_id: summary.checkpoint_id,
        unchanged: summary.skipped,
        conversation,
    })
}

/// The staged conversation holds the session's transcript.
fn has_transcript(staging: &Path, claude_session_id: &str) -> bool {
    std::fs::symlink_metadata(staging.join(format!("{claude_session_id}.jsonl")))
        .is_ok_and(|m| m.is_file())
}

/// Whether checkpoint `manifest` carries a conversation (its conversation tree has files).
pub fn has_conversation(manifest: &parhelia_checkpoint::Manifest) -> bool {
    manifest
        .tree(CONVERSATION_TREE)
        .is_some_and(|tree| tree.file_count > 0)
}

/// Restores the conversation of the newest checkpoint that has one into `staging`;
/// returns its id. A damaged candidate is passed over for an older one; with none,
/// `staging` is left as it was (empty) and the checkpoint has no conversation, as
/// the session had none yet.
fn carry_over_conversation(store: &Store, staging: &Path) -> Option<String> {
    let list = match store.list() {
        Ok(list) => list,
        Err(e) => {
            tracing::warn!(error = %e, "listing checkpoints for the conversation failed");
            return None;
        }
    };
    for summary in list.iter().rev() {
        let Ok(manifest) = store.load(&summary.id) else {
            continue;
        };
        if !has_conversation(&manifest) {
            continue;
        }
        match store.restore_tree(&summary.id, CONVERSATION_TREE, staging) {
            Ok(_) => {
                tracing::info!(from = %summary.id, "the checkpoint carries an earlier checkpoint's conversation");
                return Some(summary.id.to_string());
            }
            Err(e) => {
                tracing::warn!(checkpoint = %summary.id, error = %e, "its conversation could not be read; trying an older one");
                // A half-restored staging dir must not be committed as a conversation.
                let _ = std::fs::remove_dir_all(staging);
                let _ = std::fs::create_dir_all(staging);
            }
        }
    }
    None
}

/// What a restore did.
#[derive(Clone, Debug, PartialEq)]
pub struct RestoreSummary {
    pub checkpoint_id: String,
    pub files: u64,
    pub removed: u64,
}

/// Restores checkpoint `id` (or the latest for `"latest"`): the workspace
/// exactly, and the conversation installed for the workspace's current path.
/// `on_progress` hears how far the workspace's restore has got, with the
/// checkpoint's id (see `Store::restore_tree_reporting`).
pub fn restore_checkpoint(
    store: &Store,
    paths: &CheckpointPaths,
    id: &str,
    claude_session_id: &str,
    on_progress: &(dyn Fn(&str, parhelia_checkpoint::RestoreProgress) + Sync),
) -> Result<RestoreSummary, CheckpointFailure> {
    let id = if id == "latest" {
        match store.latest().map_err(|e| CheckpointFailure::from(&e))? {
            Some(summary) => summary.id,
            None => {
                return Err(CheckpointFailure {
                    code: codes::CHECKPOINT_NOT_FOUND,
                    message: "the session has no checkpoint to restore".into(),
                });
            }
        }
    } else {
        CheckpointId::parse(id).map_err(|e| CheckpointFailure::from(&e))?
    };
    // Verified before anything is touched: a corrupt checkpoint changes nothing.
    store.verify(&id).map_err(|e| CheckpointFailure::from(&e))?;
    let id_text = id.to_string();
    let workspace = store
        .restore_tree_reporting(&id, WORKSPACE_TREE, &paths.workspace, &|p| {
            on_progress(&id_text, p)
        })
        .map_err(|e| CheckpointFailure::from(&e))?;
    store
        .restore_tree(&id, CONVERSATION_TREE, &paths.conversation_staging)
        .map_err(|e| CheckpointFailure::from(&e))?;
    conversation::install(
        &paths.conversation_staging,
        &paths.claude_config_dir,
        &paths.workspace,
        claude_session_id,
    )
    .map_err(|e| CheckpointFailure {
        code: codes::CHECKPOINT_IO_FAILED,
        message: format!("installing the conversation: {e}"),
    })?;
    Ok(RestoreSummary {
        checkpoint_id: id.to_string(),
        files: workspace.files_written + workspace.files_unchanged,
        removed: workspace.removed,
    })
}

/// Whether the workspace holds anything worth a safety checkpoint.
pub fn workspace_has_content(workspace: &Path) -> bool {
    std::fs::read_dir(workspace).is_ok_and(|mut entries| entries.next().is_some())
}

/// The checkpointer task: runs jobs one at a time and reports each to `done`.
pub struct Checkpointer {
    store: Arc<Store>,
    paths: Arc<CheckpointPaths>,
    tracker: Arc<ChangeTracker>,
}

impl Checkpointer {
    pub fn new(
        store: Arc<Store>,
        paths: Arc<CheckpointPaths>,
        tracker: Arc<ChangeTracker>,
    ) -> Self {
        Checkpointer {
            store,
            paths,
            tracker,
        }
    }

    pub async fn run<M: From<CheckpointDone> + Send + 'static>(
        self,
        mut jobs: mpsc::UnboundedReceiver<CheckpointJob>,
        done: mpsc::Sender<M>,
    ) {
        while let Some(job) = jobs.recv().await {
            let (store, paths, tracker) = (
                Arc::clone(&self.store),
                Arc::clone(&self.paths),
                Arc::clone(&self.tracker),
            );
            let (trigger, message, skip, facts) = (
                job.trigger.clone(),
                job.message.clone(),
                job.skip_if_unchanged,
                job.facts.clone(),
            );
            let turn_end_reply = job.turn_end_reply.clone();
            let result = tokio::task::spawn_blocking(move || {
                // Claude Code writes its transcript behind a queue: at the Stop hook the
                // turn's final reply (and in short turns its last tool result) may not
                // be there yet, and a checkpoint without them resumes into a turn that
                // looks interrupted.
                if let Some(reply) = &turn_end_reply
                    && !conversation::wait_for_turn(
                        &paths.claude_config_dir,
                        &paths.workspace,
                        &facts.claude_session_id,
                        reply,
                        conversation::TURN_FLUSH_WAIT,
                    )
                {
                    tracing::warn!(
                        "the transcript did not hold the whole turn within {:?}; checkpointing it as it is",
                        conversation::TURN_FLUSH_WAIT
                    );
                }
                take_checkpoint(
                    &store,
                    &paths,
                    Some(&tracker),
                    &trigger,
                    &message,
                    skip,
                    &facts,
                )
            })
            .await
            .unwrap_or_else(|e| {
                Err(CheckpointFailure {
                    code: codes::CHECKPOINT_IO_FAILED,
                    message: format!("the checkpoint task panicked: {e}"),
                })
            });
            let report = CheckpointDone {
                trigger: job.trigger,
                message: job.message,
                result,
                reply: job.reply,
                hook_ack: job.hook_ack,
                is_final: job.is_final,
                queued_at: job.queued_at,
            };
            if done.send(report.into()).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: &str = "6f1c2d3e-0000-4000-8000-000000000001";

    #[test]
    fn the_store_lock_wait_is_the_specs_or_the_engines_default() {
        let mut spec = parhelia_contract::spec::CheckpointSpec {
            lock_wait_ms: Some(1500),
            ..Default::default()
        };
        assert_eq!(lock_wait(&spec), std::time::Duration::from_millis(1500));
        spec.lock_wait_ms = None;
        assert_eq!(lock_wait(&spec), parhelia_checkpoint::DEFAULT_LOCK_WAIT);
    }

    fn paths(root: &Path, config: &str) -> CheckpointPaths {
        CheckpointPaths {
            store_root: root.join("store"),
            workspace: root.join("workspace"),
            claude_config_dir: root.join(config),
            conversation_staging: root.join(format!("staging-{config}")),
            excludes: Vec::new(),
            retention: Retention::default(),
            git_reader: git_state::Reader::Agent,
        }
    }

    fn facts() -> SessionFacts {
        SessionFacts {
            claude_session_id: SESSION.into(),
            ..Default::default()
        }
    }

    fn transcript(paths: &CheckpointPaths) -> PathBuf {
        conversation::project_dir(&paths.claude_config_dir, &paths.workspace)
            .join(format!("{SESSION}.jsonl"))
    }

    /// Issue 12: the safety checkpoint a new container takes before its restore had no
    /// conversation (its config dir is new), so rolling back to it, or resuming from it
    /// after a double fault, failed with "No conversation found".
    #[test]
    fn a_checkpoint_taken_without_a_transcript_carries_the_newest_conversation() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("workspace")).unwrap();
        std::fs::write(root.join("workspace/a.txt"), "one").unwrap();
        let store = Store::open(&root.join("store")).unwrap();

        // The first container: a transcript in its config dir.
        let first = paths(root, "config-1");
        let line = "{\"type\":\"user\",\"message\":\"hello\"}\n";
        std::fs::create_dir_all(transcript(&first).parent().unwrap()).unwrap();
        std::fs::write(transcript(&first), line).unwrap();
        let with_conversation =
            take_checkpoint(&store, &first, None, "turn_end", "", false, &facts()).unwrap();

        // The second container, before its restore: nothing in its config dir yet.
        std::fs::write(root.join("workspace/a.txt"), "two").unwrap();
        let second = paths(root, "config-2");
        let safety =
            take_checkpoint(&store, &second, None, "pre_restore", "", true, &facts()).unwrap();
        assert!(!safety.skipped);
        let id = CheckpointId::parse(&safety.checkpoint_id).unwrap();
        let manifest = store.load(&id).unwrap();
        assert!(
            has_conversation(&manifest),
            "the safety checkpoint has no conversation"
        );
        assert_eq!(
            manifest.metadata["conversation_carried_from"],
            with_conversation.checkpoint_id.as_str()
        );

        // Rolling back to it in a third container installs that conversation.
        let third = paths(root, "config-3");
        restore_checkpoint(&store, &third, &safety.checkpoint_id, SESSION, &|_, _| {}).unwrap();
        assert_eq!(std::fs::read_to_string(transcript(&third)).unwrap(), line);
        assert_eq!(
            std::fs::read_to_string(root.join("workspace/a.txt")).unwrap(),
            "two"
        );
    }

    #[test]
    fn a_session_that_never_had_a_conversation_checkpoints_none() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("workspace")).unwrap();
        std::fs::write(root.join("workspace/a.txt"), "one").unwrap();
        let store = Store::open(&root.join("store")).unwrap();
        let summary = take_checkpoint(
            &store,
            &paths(root, "config-1"),
            None,
            "workspace",
            "",
            false,
            &facts(),
        )
        .unwrap();
        let manifest = store
            .load(&CheckpointId::parse(&summary.checkpoint_id).unwrap())
            .unwrap();
        assert!(!has_conversation(&manifest));
        assert!(manifest.metadata.get("conversation_carried_from").is_none());
    }

    /// Issue 12: a container killed before its first checkpoint with a conversation
    /// (during that checkpoint's write) left its transcript in its config dir, and the
    /// resume started the conversation over. The coordinator's salvage of the dead
    /// container is a whole checkpoint: workspace and that transcript.
    #[test]
    fn a_salvage_of_a_dead_container_holds_its_workspace_and_its_transcript() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let mut value = crate::spec::tests::example_json();
        value["workspace_dir"] = root.join("workspace").to_str().unwrap().into();
        value["volume_dir"] = root.join("volume").to_str().unwrap().into();
        value["claude_config_dir"] = root.join("config").to_str().unwrap().into();
        value["claude_session_id"] = SESSION.into();
        let spec = crate::spec::from_json(&value.to_string()).unwrap();
        std::fs::create_dir_all(root.join("workspace")).unwrap();
        std::fs::write(root.join("workspace/a.txt"), "half done").unwrap();
        let transcript = conversation::project_dir(&spec.claude_config_dir, &spec.workspace_dir)
            .join(format!("{SESSION}.jsonl"));
        std::fs::create_dir_all(transcript.parent().unwrap()).unwrap();
        std::fs::write(&transcript, "{\"type\":\"user\",\"message\":\"hi\"}\n").unwrap();

        let taken = salvage(&spec, "agent_gone", 0.25, "the agent is gone").unwrap();
        assert!(taken.conversation && !taken.unchanged, "{taken:?}");
        let store = Store::open(&root.join("volume/checkpoints")).unwrap();
        let manifest = store
            .load(&CheckpointId::parse(&taken.checkpoint_id).unwrap())
            .unwrap();
        assert_eq!(manifest.trigger, "agent_gone");
        assert_eq!(manifest.metadata["taken_by"], "coordinator");
        assert_eq!(manifest.metadata["session_cost_usd"], 0.25);
        assert_eq!(manifest.metadata["claude_session_id"], SESSION);
        // Its staging dir is gone; a second salvage of the same state is the same one.
        assert_eq!(
            std::fs::read_dir(root.join("volume/checkpoints/tmp"))
                .unwrap()
                .filter(|e| e
                    .as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("salvage-"))
                .count(),
            0
        );
        let again = salvage(&spec, "agent_gone", 0.25, "again").unwrap();
        assert!(again.unchanged);
        assert_eq!(again.checkpoint_id, taken.checkpoint_id);
    }
}
