//! Checkpoints as the coordinator sees them: read from each session's store
//! on its volume (`<volume_dir>/checkpoints/`, format in
//! `docs/formats/checkpoint.md`), never from the database (but for the commit time
//! in `stats`, which only the journal holds), so what the CLI
//! shows is what a restore would use.
//!
//! Pure helpers (views, text rendering, the conversation between two
//! checkpoints) sit beside the few functions that open stores.

use std::path::Path;

use parhelia_checkpoint::{CheckpointId, Diff, Store, Summary};
use parhelia_contract::checkpoint::{CheckpointMetadata, GitState};
use serde::{Deserialize, Serialize};

use crate::error::CodedError;
use crate::error_codes;
use crate::ids::rfc3339_ms;
use crate::render::{bytes, cost, one_line};

/// The tree names the agent writes (`agent/src/checkpointer.rs`).
pub use parhelia_contract::checkpoint::{CONVERSATION_TREE, WORKSPACE_TREE};

/// `checkpoint list --json` / `checkpoint show --json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CheckpointView {
    pub id: String,
    pub session_id: String,
    pub parent: Option<String>,
    pub created_at: String,
    pub trigger: String,
    pub message: Option<String>,
    pub file_count: u64,
    pub total_bytes: u64,
    pub new_bytes: u64,
    pub cost_usd: Option<f64>,
    pub claude_session_id: Option<String>,
    pub git: serde_json::Value,
    /// On a local volume: once written. On a remote one: once the
    /// coordinator has read its manifest back from the volume and verified it.
    pub durable: bool,
    /// Why it cannot be restored (E620), when that is known without reading its
    /// layers: its manifest is damaged, or `checkpoint repair` could not repair it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub damaged: Option<String>,
    /// What making it cost, from its manifest (`docs/formats/checkpoint.md`): files
    /// hashed (the rest came from the stat fast path or the parent), bytes written,
    /// new layers. Zero for a damaged one.
    pub stats: parhelia_checkpoint::CreateStats,
}

impl CheckpointView {
    /// Adds the commit's time (`stats.phase_ms.fsync`) from what the agent journaled
    /// (`fsync_ms` by checkpoint id): the manifest is written before its own commit and
    /// cannot hold it. Left absent when the journal has none or the manifest records no
    /// phases.
    pub fn add_fsync_ms(&mut self, fsync_ms: &std::collections::HashMap<String, u64>) {
        if let (Some(phases), Some(ms)) = (&mut self.stats.phase_ms, fsync_ms.get(&self.id)) {
            phases.fsync = Some(*ms);
        }
    }

    pub fn of(session_id: &str, s: &Summary) -> Self {
        let metadata = CheckpointMetadata::from_stored(&s.metadata);
        CheckpointView {
            id: s.id.to_string(),
            session_id: session_id.to_string(),
            parent: s.parent.as_ref().map(ToString::to_string),
            created_at: rfc3339_ms(s.created_at_ms),
            trigger: s.trigger.clone(),
            message: s.message.clone(),
            file_count: s.file_count,
            total_bytes: s.total_bytes,
            new_bytes: s.new_bytes,
            cost_usd: metadata.session_cost_usd,
            claude_session_id: metadata.claude_session_id,
            git: metadata.git.map_or(serde_json::Value::Null, |git| {
                serde_json::to_value(git).expect("git state always serializes")
            }),
            durable: true,
            damaged: None,
            stats: s.stats.clone(),
        }
    }

    /// A checkpoint whose manifest cannot be read: what its id says, and why.
    pub fn damaged(session_id: &str, id: &CheckpointId, why: String) -> Self {
        let ms = id
            .as_str()
            .get(3..16)
            .and_then(|d| d.parse::<i64>().ok())
            .unwrap_or(0);
        CheckpointView {
            id: id.to_string(),
            session_id: session_id.to_string(),
            parent: None,
            created_at: rfc3339_ms(ms),
            trigger: "?".into(),
            message: None,
            file_count: 0,
            total_bytes: 0,
            new_bytes: 0,
            cost_usd: None,
            claude_session_id: None,
            git: serde_json::Value::Null,
            durable: false,
            damaged: Some(why),
            stats: parhelia_checkpoint::CreateStats::default(),
        }
    }
}

/// Maps an engine error to the CLI's coded error: its row of the shared table, except
/// that an IO error from a full disk is E516 (the engine cannot tell).
pub fn coded(e: &parhelia_checkpoint::CheckpointError) -> CodedError {
    let code = match e {
        parhelia_checkpoint::CheckpointError::Io { source, .. }
            if source.kind() == std::io::ErrorKind::StorageFull
                || source.raw_os_error() == Some(nix::errno::Errno::ENOSPC as i32) =>
        {
            error_codes::DISK_FULL
        }
        _ => e.error_code(),
    };
    CodedError::new(code, e.to_string())
}

/// A checkpoint `resume` or `session recover` passed over, and why.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Skipped {
    pub checkpoint_id: String,
    pub code: &'static str,
    pub reason: String,
}

impl Skipped {
    /// `skipped    cp-… [E606] it has no conversation …` (escape before printing).
    pub fn line(&self) -> String {
        format!(
            "skipped    {} [{}] {}",
            self.checkpoint_id, self.code, self.reason
        )
    }
}

/// Whether a checkpoint carries a conversation (its conversation tree has files).
pub fn has_conversation(manifest: &parhelia_checkpoint::Manifest) -> bool {
    manifest
        .tree(CONVERSATION_TREE)
        .is_some_and(|tree| tree.file_count > 0)
}

/// Why checkpoint `id` cannot be resumed from or rolled back to, if it cannot:
/// damaged (it does not verify) or, when the session has a conversation
/// (`needs_conversation`), without one.
pub fn unrestorable(store: &Store, id: &CheckpointId, needs_conversation: bool) -> Option<Skipped> {
    let skipped = |e: CodedError| Skipped {
        checkpoint_id: id.to_string(),
        code: e.code.code,
        reason: e.message,
    };
    let manifest = match store.load(id) {
        Ok(m) => m,
        Err(e) => return Some(skipped(coded(&e))),
    };
    if needs_conversation && !has_conversation(&manifest) {
        return Some(skipped(CodedError::new(
            error_codes::CHECKPOINT_INCOMPLETE,
            format!(
                "checkpoint {id} ({}) has no conversation; Claude Code could not continue from it",
                manifest.trigger
            ),
        )));
    }
    store.verify(id).err().map(|e| skipped(coded(&e)))
}

/// Whether any checkpoint of the store carries a conversation: then one is
/// needed to continue the session.
pub fn session_has_conversation(store: &Store, list: &[Summary]) -> bool {
    list.iter()
        .any(|s| store.load(&s.id).is_ok_and(|m| has_conversation(&m)))
}

/// The newest checkpoint that can be restored (it verifies, and has a
/// conversation when the session has one), and every newer one passed over
/// with its reason, newest first.
pub fn newest_restorable(store: &Store) -> Result<(Option<Summary>, Vec<Skipped>), CodedError> {
    let list = store.list().map_err(|e| coded(&e))?;
    let needs_conversation = session_has_conversation(store, &list);
    let mut skipped = Vec::new();
    // Every manifest, damaged ones included: a damaged newest checkpoint is
    // named as skipped (E620), never passed over in silence.
    for listed in store.list_all().map_err(|e| coded(&e))?.into_iter().rev() {
        let summary = match listed.summary {
            Ok(summary) => summary,
            Err(e) => {
                skipped.push(Skipped {
                    checkpoint_id: listed.id.to_string(),
                    code: coded(&e).code.code,
                    reason: format!("manifest is damaged: {e}"),
                });
                continue;
            }
        };
        match unrestorable(store, &summary.id, needs_conversation) {
            None => return Ok((Some(summary), skipped)),
            Some(why) => skipped.push(why),
        }
    }
    Ok((None, skipped))
}

/// Opens a session's store if it has one (a session that never checkpointed has none).
/// `limits` caps every read (`checkpoint.max_restore_*`, E624); another process's hold
/// on its lock is waited for up to `lock_wait` (`checkpoint.lock_wait_seconds`, E622).
pub fn open_store(
    volume_dir: &Path,
    limits: &parhelia_checkpoint::Limits,
    lock_wait: std::time::Duration,
) -> Result<Option<Store>, CodedError> {
    let root = volume_dir.join("checkpoints");
    if !root.is_dir() {
        return Ok(None);
    }
    open_store_at(&root, limits, lock_wait).map(Some)
}

/// Trigger of the checkpoint that carries a user's directory into a remote
/// session (`task create --workspace … --backend modal`).
pub const WORKSPACE_TRIGGER: &str = "workspace";

/// Checkpoints `source` (everything, `.git` included, minus the state
/// directory if it lies inside) as a session's starting point in the store
/// at `store_root`, with an empty conversation. Returns its id. `on_file` is told
/// the size of each regular file read into it as soon as that file is done (from
/// the store's hashing threads).
pub fn seed_checkpoint(
    store_root: &Path,
    source: &Path,
    state_root: &Path,
    on_file: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<String> {
    use parhelia_checkpoint::{ChangeHint, CreateOutcome, CreateRequest, TreeSpec};
    let store = Store::open(store_root).map_err(|e| coded(&e))?;
    let mut excludes = Vec::new();
    if let (Ok(src), Ok(state)) = (source.canonicalize(), state_root.canonicalize())
        && let Ok(rel) = state.strip_prefix(&src)
        && !rel.as_os_str().is_empty()
    {
        excludes.push(format!("/{}/", rel.display()));
    }
    // The seed has no conversation yet: an empty tree (removed on drop).
    let empty = tempfile::Builder::new()
        .prefix("empty-")
        .tempdir_in(store_root.join("tmp"))?;
    let request = CreateRequest {
        trees: vec![
            (
                TreeSpec {
                    name: WORKSPACE_TREE.into(),
                    root: source.to_path_buf(),
                    excludes,
                },
                ChangeHint::Unknown,
            ),
            (
                TreeSpec {
                    name: CONVERSATION_TREE.into(),
                    root: empty.path().to_path_buf(),
                    excludes: Vec::new(),
                },
                ChangeHint::Unknown,
            ),
        ],
        parent: None,
        trigger: WORKSPACE_TRIGGER.into(),
        message: Some(format!("the workspace from {}", source.display())),
        metadata: CheckpointMetadata {
            workspace_source: Some(source.to_path_buf()),
            ..CheckpointMetadata::default()
        }
        .to_stored(),
        skip_if_unchanged: false,
    };
    match store
        .create_reporting(&request, on_file)
        .map_err(|e| coded(&e))?
    {
        CreateOutcome::Created(manifest) => Ok(manifest.id.to_string()),
        CreateOutcome::Unchanged(id) => Ok(id.to_string()),
    }
}

/// Trigger of the checkpoint the coordinator takes of a session whose agent is gone
/// (before it ends the processes the agent left running, or before it marks the
/// container lost): a whole checkpoint, taken by `parhelia-agent salvage`.
pub const AGENT_GONE_TRIGGER: &str = "agent_gone";

/// Opens the store at `root` (a directory [`crate::backend::Backend::store_dir`] gave).
/// `limits` caps every read (`checkpoint.max_restore_*`, E624); `lock_wait` bounds the
/// wait for the store's lock (`checkpoint.lock_wait_seconds`, E622).
pub fn open_store_at(
    root: &Path,
    limits: &parhelia_checkpoint::Limits,
    lock_wait: std::time::Duration,
) -> Result<Store, CodedError> {
    Store::open(root)
        .map(|s| s.with_limits(limits.clone()).with_lock_wait(lock_wait))
        .map_err(|e| coded(&e))
}

pub fn parse_id(id: &str) -> Result<CheckpointId, CodedError> {
    CheckpointId::parse(id).map_err(|_| {
        CodedError::new(
            error_codes::CHECKPOINT_NOT_FOUND,
            format!("checkpoint not found: {id} (not a checkpoint id)"),
        )
    })
}

/// One line per checkpoint, for `checkpoint list`: the message is cut to
/// fit a terminal, and whole anywhere else.
/// What `task show` and `checkpoint list` say while a session's store is over
/// its quota (its latest `store_over_quota` event, `Db::store_over_quota`).
pub fn over_quota_text(session_id: &str, q: &parhelia_proto::StoreOverQuota) -> String {
    format!(
        "warning[{code}]: {session_id}'s checkpoint store is {used}, over its quota of {quota} \
         after pruning; its newest checkpoint {id} was kept.\n  hint: raise \
         `checkpoint.max_store_mb` (or lower `checkpoint.keep_last`) in config.toml and run \
         `parhelia coordinator reload`; they apply from the session's next launch (once it has \
         ended: `parhelia resume {session_id} -m \"go on\"`), whose checkpoints prune to them. \
         (more: parhelia help {code})\n",
        code = error_codes::CHECKPOINT_QUOTA.code,
        used = bytes(q.store_bytes),
        quota = bytes(q.quota_bytes),
        id = one_line(&q.checkpoint_id, 80),
    )
}

pub fn list_text(views: &[CheckpointView]) -> String {
    list_text_as(views, crate::output_look::stdout_look())
}

pub fn list_text_as(views: &[CheckpointView], look: crate::table::Look) -> String {
    use crate::table::{Cell, Table};
    if views.is_empty() {
        return "no checkpoints\n".into();
    }
    let mut t = Table::new(1)
        .whole("ID", 28)
        .whole("SESSION", 13)
        .whole("TRIGGER", 11)
        .number("FILES", 6)
        .number("NEW", 9)
        .gap(2)
        .text("MESSAGE");
    for v in views {
        if let Some(why) = &v.damaged {
            t.row(vec![
                v.id.as_str().into(),
                v.session_id.as_str().into(),
                Cell::status("DAMAGED"),
                "-".into(),
                "-".into(),
                format!("[E620] {}", why.trim()).into(),
            ]);
            continue;
        }
        let message = v.message.as_deref().unwrap_or("").trim();
        t.row(vec![
            v.id.as_str().into(),
            v.session_id.as_str().into(),
            v.trigger.as_str().into(),
            v.file_count.to_string().into(),
            bytes(v.new_bytes).into(),
            if v.durable {
                message.into()
            } else {
                format!("(not yet durable) {message}").into()
            },
        ]);
    }
    let mut out = t.render_as(look);
    let damaged = views.iter().filter(|v| v.damaged.is_some()).count();
    if damaged > 0 {
        out.push_str(&format!(
            "{damaged} damaged (E620): `parhelia checkpoint verify --all` names the damaged files, `parhelia checkpoint repair` rewrites them\n"
        ));
    }
    out
}

/// `checkpoint show` as text.
pub fn show_text(v: &CheckpointView, workspace_paths: &[String]) -> String {
    let mut out = String::new();
    let mut field = |name: &str, value: String| out.push_str(&format!("{name:<11}{value}\n"));
    field("checkpoint", v.id.clone());
    field("session", v.session_id.clone());
    field("created", v.created_at.clone());
    field("trigger", v.trigger.clone());
    if let Some(message) = &v.message {
        field("message", message.clone());
    }
    field(
        "files",
        format!(
            "{} · {} · {} new",
            v.file_count,
            bytes(v.total_bytes),
            bytes(v.new_bytes)
        ),
    );
    if let Some(parent) = &v.parent {
        field("parent", parent.clone());
    }
    if let Some(c) = v.cost_usd {
        field("cost", cost(c));
    }
    field("git", git_line(&v.git));
    if !workspace_paths.is_empty() {
        out.push_str("workspace\n");
        for path in workspace_paths.iter().take(50) {
            out.push_str(&format!("  {path}\n"));
        }
        if workspace_paths.len() > 50 {
            out.push_str(&format!("  … and {} more\n", workspace_paths.len() - 50));
        }
    }
    out
}

/// `main @ 1a2b3c4 · 2 modified, 1 untracked · 1 stash`, or `not a repository`.
pub fn git_line(git: &serde_json::Value) -> String {
    let git = GitState::deserialize(git).unwrap_or_default();
    if !git.repository {
        return "not a repository".into();
    }
    let head = git
        .head
        .as_deref()
        .map(|h| h.get(..7).unwrap_or(h))
        .unwrap_or("(no commits)");
    let branch = git.branch.as_deref().unwrap_or("(detached)");
    let mut parts = vec![format!("{branch} @ {head}")];
    let d = &git.dirty;
    let dirty: Vec<String> = [
        (d.staged, "staged"),
        (d.modified, "modified"),
        (d.deleted, "deleted"),
        (d.untracked, "untracked"),
        (d.conflicted, "conflicted"),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, k)| format!("{n} {k}"))
    .collect();
    parts.push(if dirty.is_empty() {
        "clean".into()
    } else {
        dirty.join(", ")
    });
    let stashes = git.stashes.len();
    if stashes > 0 {
        parts.push(format!(
            "{stashes} stash{}",
            if stashes == 1 { "" } else { "es" }
        ));
    }
    parts.join(" · ")
}

/// `checkpoint diff` as text: files, then the git state change.
pub fn diff_text(a: &str, b: &str, diff: &Diff) -> String {
    let mut out = format!("{a} → {b}\n");
    let size = |s: Option<u64>| s.map(bytes).unwrap_or_else(|| "-".into());
    for (mark, entries) in [
        ("+", &diff.added),
        ("-", &diff.removed),
        ("~", &diff.modified),
    ] {
        for e in entries.iter() {
            let prefix = if e.tree == WORKSPACE_TREE {
                String::new()
            } else {
                format!("[{}] ", e.tree)
            };
            let sizes = match mark {
                "+" => size(e.new_size),
                "-" => size(e.old_size),
                _ => format!("{} → {}", size(e.old_size), size(e.new_size)),
            };
            out.push_str(&format!("{mark} {prefix}{}  ({sizes})\n", e.path.display()));
        }
    }
    if diff.added.is_empty() && diff.removed.is_empty() && diff.modified.is_empty() {
        out.push_str("no file changes\n");
    }
    let (ga, gb) = (
        git_line(&diff.metadata_a["git"]),
        git_line(&diff.metadata_b["git"]),
    );
    if ga != gb {
        out.push_str(&format!("git  {ga}\n  →  {gb}\n"));
    } else {
        out.push_str(&format!("git  {ga} (unchanged)\n"));
    }
    out
}

/// One turn of a conversation, for `checkpoint diff --conversation`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Turn {
    pub role: String,
    pub text: String,
}

/// The conversation turns in transcript `b` that transcript `a` does not
/// have (transcript lines carry a `uuid`; lines without one are skipped).
pub fn conversation_between(a: &str, b: &str) -> Vec<Turn> {
    let seen: std::collections::HashSet<String> = a
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["uuid"].as_str().map(str::to_string))
        .collect();
    let mut turns = Vec::new();
    for line in b.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(uuid) = v["uuid"].as_str() else {
            continue;
        };
        if seen.contains(uuid) {
            continue;
        }
        let role = v["type"].as_str().unwrap_or("");
        if role != "user" && role != "assistant" {
            continue;
        }
        let content = &v["message"]["content"];
        let mut texts = Vec::new();
        if let Some(text) = content.as_str() {
            texts.push(text.to_string());
        } else if let Some(blocks) = content.as_array() {
            for block in blocks {
                match block["type"].as_str() {
                    Some("text") => texts.push(block["text"].as_str().unwrap_or("").to_string()),
                    Some("tool_use") => texts.push(format!(
                        "[tool {}] {}",
                        block["name"].as_str().unwrap_or("?"),
                        one_line(&block["input"].to_string(), 100)
                    )),
                    Some("tool_result") => {
                        let result = match &block["content"] {
                            serde_json::Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        texts.push(format!("[result] {}", one_line(&result, 100)));
                    }
                    _ => {}
                }
            }
        }
        // Claude Code's injected reminders are not the user's words.
        let text: Vec<String> = texts
            .into_iter()
            .filter(|t| !t.trim().is_empty() && !t.trim_start().starts_with("<system-reminder>"))
            .collect();
        if !text.is_empty() {
            turns.push(Turn {
                role: role.to_string(),
                text: text.join("\n"),
            });
        }
    }
    turns
}

pub fn conversation_text(turns: &[Turn]) -> String {
    if turns.is_empty() {
        return "no new conversation turns\n".into();
    }
    let mut out = String::new();
    for t in turns {
        let label = if t.role == "user" { "user" } else { "claude" };
        for (i, line) in t.text.lines().enumerate() {
            out.push_str(&format!("{:<8}{line}\n", if i == 0 { label } else { "" }));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use parhelia_checkpoint::{ChangeHint, CreateOutcome, CreateRequest, TreeSpec};

    /// A checkpoint of `workspace` and `conversation` (either may be an empty dir).
    fn take(
        store: &Store,
        workspace: &Path,
        conversation: &Path,
        trigger: &str,
    ) -> parhelia_checkpoint::CheckpointId {
        let tree = |name: &str, root: &Path| {
            (
                TreeSpec {
                    name: name.into(),
                    root: root.to_path_buf(),
                    excludes: Vec::new(),
                },
                ChangeHint::Unknown,
            )
        };
        let outcome = store
            .create(&CreateRequest {
                trees: vec![
                    tree("workspace", workspace),
                    tree(CONVERSATION_TREE, conversation),
                ],
                parent: None,
                trigger: trigger.into(),
                message: None,
                metadata: serde_json::Value::Null,
                skip_if_unchanged: false,
            })
            .unwrap();
        let CreateOutcome::Created(m) = outcome else {
            panic!("not created")
        };
        m.id
    }

    /// Issue 12: the default resume picked the newest checkpoint, a safety checkpoint
    /// without the conversation, and Claude Code failed ("No conversation found"); a
    /// damaged newest one failed too. Now both are passed over, each with its reason.
    #[test]
    fn the_newest_restorable_checkpoint_is_chosen_and_the_skipped_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let (ws, conv, empty) = (
            tmp.path().join("ws"),
            tmp.path().join("conv"),
            tmp.path().join("empty"),
        );
        for d in [&ws, &conv, &empty] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(conv.join("s.jsonl"), "{}\n").unwrap();
        let store = Store::open(&tmp.path().join("store")).unwrap();
        let ids: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|content| {
                std::fs::write(ws.join("f"), content).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(2));
                take(&store, &ws, &conv, "turn_end")
            })
            .collect();
        std::fs::write(ws.join("f"), "d").unwrap();
        let safety = take(&store, &ws, &empty, "pre_restore");
        let (chosen, skipped) = newest_restorable(&store).unwrap();
        assert_eq!(chosen.unwrap().id, ids[2]);
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert_eq!(skipped[0].checkpoint_id, safety.to_string());
        assert_eq!(skipped[0].code, "E606");
        assert!(
            skipped[0].line().contains("has no conversation"),
            "{skipped:?}"
        );

        // Damage checkpoint c's only new layer: it no longer verifies and is skipped too.
        let c = store.load(&ids[2]).unwrap();
        let b = store.load(&ids[1]).unwrap();
        let only_c = c.layers.iter().find(|l| !b.layers.contains(l)).unwrap();
        let layer = tmp
            .path()
            .join("store/layers")
            .join(format!("{}.tar.zst", only_c.to_hex()));
        let mut bytes = std::fs::read(&layer).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&layer, bytes).unwrap();
        let (chosen, skipped) = newest_restorable(&store).unwrap();
        assert_eq!(chosen.unwrap().id, ids[1]);
        let codes: Vec<_> = skipped.iter().map(|s| s.code).collect();
        assert_eq!(codes, ["E606", "E620"], "{skipped:?}");

        // A session that never had a conversation needs none.
        let tmp2 = tempfile::tempdir().unwrap();
        let store2 = Store::open(&tmp2.path().join("store")).unwrap();
        let only = take(&store2, &ws, &empty, "workspace");
        let (chosen, skipped) = newest_restorable(&store2).unwrap();
        assert_eq!(chosen.unwrap().id, only);
        assert!(skipped.is_empty());
        assert!(unrestorable(&store2, &only, false).is_none());
    }

    #[test]
    fn conversation_between_shows_only_new_user_and_assistant_turns() {
        let a = r#"{"type":"user","uuid":"1","message":{"role":"user","content":"first"}}"#;
        let b = format!(
            "{a}\n{}\n{}\n{}\n{}\n",
            r#"{"type":"assistant","uuid":"2","message":{"content":[{"type":"text","text":"ok"},{"type":"tool_use","name":"Write","input":{"file_path":"x"}}]}}"#,
            r#"{"type":"user","uuid":"3","message":{"content":[{"type":"tool_result","content":"done"}]}}"#,
            r#"{"type":"system","uuid":"4","subtype":"turn_duration"}"#,
            r#"{"type":"user","uuid":"5","message":{"content":[{"type":"text","text":"<system-reminder>x</system-reminder>"},{"type":"text","text":"second"}]}}"#,
        );
        let turns = conversation_between(a, &b);
        assert_eq!(
            turns,
            vec![
                Turn {
                    role: "assistant".into(),
                    text: "ok\n[tool Write] {\"file_path\":\"x\"}".into()
                },
                Turn {
                    role: "user".into(),
                    text: "[result] done".into()
                },
                Turn {
                    role: "user".into(),
                    text: "second".into()
                },
            ]
        );
        assert!(conversation_text(&turns).starts_with("claude  ok\n"));
    }

    #[test]
    fn git_line_summarises_state() {
        let git = serde_json::json!({"repository": true, "head": "0123456789abcdef", "branch": "main",
            "dirty": {"modified": 2, "untracked": 1}, "stashes": [{}]});
        assert_eq!(
            git_line(&git),
            "main @ 0123456 · 2 modified, 1 untracked · 1 stash"
        );
        assert_eq!(
            git_line(&serde_json::json!({"repository": false})),
            "not a repository"
        );
    }
}
