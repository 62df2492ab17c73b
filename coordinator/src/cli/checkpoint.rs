//! `parhelia checkpoint …`, `parhelia resume` and `parhelia session recover`.
//!
//! Reads (list, show, diff) open the sessions' checkpoint stores directly;
//! commands that act on a session (create, rollback, resume) go through the
//! coordinator, which owns the sessions' containers.

use std::io::{IsTerminal, Write};
use std::path::Path;

use anyhow::Result;
use clap::{Args, Subcommand};
use parhelia_proto::{CheckpointSessionRequest, ResumeSessionRequest};

use super::shortcuts::session_id_of;
use super::task::launch_env;
use super::{Ctx, Opened, coordinator_error, print_json};
use crate::checkpoints::{self, CONVERSATION_TREE, CheckpointView, WORKSPACE_TREE};
use crate::db::SessionRecord;
use crate::error::coded;
use crate::error_codes;
use crate::term::{escape_json_strings, escape_untrusted, escape_untrusted_text};

#[derive(Subcommand, Debug)]
pub enum CheckpointCommand {
    /// Checkpoint a running session now
    Create {
        /// A session id, or a task id (its current session)
        #[arg(value_name = "SESSION_OR_TASK_ID")]
        session_id: String,
        /// What this checkpoint is for
        #[arg(short, long, default_value = "")]
        message: String,
        #[arg(long)]
        json: bool,
    },
    /// List checkpoints, oldest first (all sessions, or one)
    List {
        /// Only this session's (a session id, or a task id: its current session)
        #[arg(value_name = "SESSION_OR_TASK_ID")]
        session_id: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show one checkpoint: when, why, what it holds, the git state
    Show {
        checkpoint_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Compare two checkpoints of a session
    Diff {
        a: String,
        b: String,
        /// A unified diff of one workspace file
        #[arg(long)]
        file: Option<String>,
        /// The conversation turns between the two
        #[arg(long)]
        conversation: bool,
        #[arg(long)]
        json: bool,
    },
    /// Check checkpoints end to end (manifests, layers, every blob's hash) and
    /// name each damaged file with the checkpoints it affects (E620 if any)
    Verify(super::store_health::VerifyArgs),
    /// Rewrite damaged manifests and layers from intact copies (the workspace,
    /// a Modal store's local mirror, other sessions' stores); what cannot be
    /// repaired stays reported (E625) and nothing is deleted
    Repair(super::store_health::RepairArgs),
    /// Restore a session's workspace and conversation to a checkpoint
    /// (after saving the current state, so it can be undone)
    Rollback {
        checkpoint_id: String,
        /// Do not ask for confirmation
        #[arg(short, long)]
        yes: bool,
        /// A message for Claude once restored (otherwise it waits for input)
        #[arg(short, long, default_value = "")]
        message: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct ResumeArgs {
    /// A session id, or a task id (its current session)
    #[arg(value_name = "SESSION_OR_TASK_ID")]
    pub session_id: String,
    /// The checkpoint to resume from (default: the session's latest)
    #[arg(long)]
    pub checkpoint: Option<String>,
    /// What to tell Claude next (default for an interrupted session: continue)
    #[arg(short, long, default_value = "")]
    pub message: String,
    /// Continue on this backend (local | modal; default: where it ran last).
    /// The checkpoints are copied to the other backend's volume first
    #[arg(long)]
    pub backend: Option<String>,
    #[arg(long)]
    pub json: bool,
}

pub async fn run(ctx: &Ctx, command: CheckpointCommand) -> Result<i32> {
    let opened = ctx.open()?;
    // A task id stands for the task's current session.
    let command = match command {
        CheckpointCommand::Create {
            session_id,
            message,
            json,
        } => CheckpointCommand::Create {
            session_id: session_id_of(ctx, &session_id)?,
            message,
            json,
        },
        CheckpointCommand::List { session_id, json } => CheckpointCommand::List {
            session_id: session_id.map(|id| session_id_of(ctx, &id)).transpose()?,
            json,
        },
        other => other,
    };
    match command {
        CheckpointCommand::Create {
            session_id,
            message,
            json,
        } => {
            let mut client = ctx.client(&opened.state).await?;
            let reply = client
                .checkpoint_session(CheckpointSessionRequest {
                    session_id,
                    message,
                })
                .await
                .map_err(coordinator_error)?
                .into_inner();
            if json {
                print_json(&create_json(&reply))?;
            } else {
                outln!("{}", escape_untrusted(&reply.checkpoint_id));
            }
            Ok(0)
        }
        CheckpointCommand::Verify(args) => super::store_health::verify(ctx, &opened, args).await,
        CheckpointCommand::Repair(args) => super::store_health::repair(ctx, &opened, args).await,
        CheckpointCommand::List { session_id, json } => {
            let views = list_views(ctx, &opened, session_id.as_deref()).await?;
            if json {
                print_json(&views)?;
            } else {
                out!("{}", list_text(&views));
                let listed: std::collections::BTreeSet<&str> =
                    views.iter().map(|v| v.session_id.as_str()).collect();
                for sid in listed {
                    if let Some(q) = opened.db.store_over_quota(sid)? {
                        out!(
                            "{}",
                            crate::term::escape_untrusted_text(&checkpoints::over_quota_text(
                                sid, &q
                            ))
                        );
                    }
                }
            }
            Ok(0)
        }
        CheckpointCommand::Show {
            checkpoint_id,
            json,
        } => {
            let shown = show_views(ctx, &opened, &checkpoint_id).await?;
            if json {
                print_json(&shown_json(&shown))?;
            } else {
                out!("{}", show_text(&shown.view, &shown.paths));
            }
            Ok(0)
        }
        CheckpointCommand::Diff {
            a,
            b,
            file,
            conversation,
            json,
        } => {
            let diffed = diff_views(ctx, &opened, &a, &b, file.as_deref(), conversation).await?;
            if json {
                print_json(&diffed_json(&diffed)?)?;
            } else {
                match diffed {
                    Diffed::File { unified_diff, .. } => {
                        out!("{}", escape_untrusted_text(&unified_diff));
                    }
                    Diffed::Conversation(turns) => out!("{}", conversation_text(&turns)),
                    Diffed::Workspace(diff) => out!("{}", diff_text(&a, &b, diff)),
                }
            }
            Ok(0)
        }
        CheckpointCommand::Rollback {
            checkpoint_id,
            yes,
            message,
            json,
        } => {
            let (s, _, id) = find(ctx, &opened, &checkpoint_id).await?;
            if !yes {
                if !std::io::stdin().is_terminal() {
                    return Err(coded(
                        error_codes::INVALID_INPUT,
                        "a rollback replaces the session's workspace and conversation; pass --yes to confirm",
                    ));
                }
                eprint!(
                    "Roll session {} back to {id}? Its current state is checkpointed first. [y/N] ",
                    s.id
                );
                let _ = std::io::stderr().flush();
                let mut answer = String::new();
                std::io::stdin().read_line(&mut answer)?;
                if !matches!(answer.trim(), "y" | "Y" | "yes") {
                    eprintln!("not rolled back");
                    return Ok(1);
                }
            }
            let id = id.to_string();
            let call = ResumeCall {
                session_id: &s.id,
                checkpoint_id: &id,
                message: &message,
                rollback: true,
                backend: "",
            };
            resume(ctx, &opened, call, json).await
        }
    }
}

/// `checkpoint list`'s rows: every checkpoint of the session (all sessions' when
/// `session_id` is none), damaged ones listed as damaged, oldest first.
async fn list_views(
    ctx: &Ctx,
    opened: &Opened,
    session_id: Option<&str>,
) -> Result<Vec<CheckpointView>> {
    let sessions = match session_id {
        Some(id) => vec![session(opened, id)?],
        None => opened.db.list_sessions()?,
    };
    let mut views = Vec::new();
    for s in &sessions {
        if let Some(store) = super::modal::session_store(ctx, opened, s).await? {
            let durable = super::modal::durable_set(opened, s)?;
            let fsync_ms = opened.db.checkpoint_fsync_ms(&s.id)?;
            // Damaged manifests are listed as damaged, never left out.
            let unrepairable = store.unrepairable();
            for listed in store.list_all().map_err(|e| checkpoints::coded(&e))? {
                let summary = match listed.summary {
                    Ok(summary) => summary,
                    Err(e) => {
                        views.push(CheckpointView::damaged(
                            &s.id,
                            &listed.id,
                            format!("manifest is damaged: {e}"),
                        ));
                        continue;
                    }
                };
                let mut view = CheckpointView::of(&s.id, &summary);
                view.add_fsync_ms(&fsync_ms);
                if let Some(set) = &durable {
                    view.durable = set.contains(&view.id);
                }
                view.damaged = unrepairable
                    .get(&listed.id)
                    .map(|why| format!("not repairable: {why}"));
                views.push(view);
            }
        }
    }
    views.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(views)
}

/// What `checkpoint show` shows: the checkpoint's row, its manifest and its
/// workspace's paths.
pub(crate) struct Shown {
    view: CheckpointView,
    manifest: parhelia_checkpoint::Manifest,
    paths: Vec<String>,
}

async fn show_views(ctx: &Ctx, opened: &Opened, checkpoint_id: &str) -> Result<Shown> {
    let (s, store, id) = find(ctx, opened, checkpoint_id).await?;
    let damage = |e: parhelia_checkpoint::CheckpointError| {
        crate::store_health::coded_at(&e, &s.id, store.root(), id.as_str())
    };
    let manifest = store.load(&id).map_err(damage)?;
    let summary = store
        .list()
        .map_err(|e| checkpoints::coded(&e))?
        .into_iter()
        .find(|x| x.id == id)
        .ok_or_else(|| not_found(checkpoint_id))?;
    let mut view = CheckpointView::of(&s.id, &summary);
    view.add_fsync_ms(&opened.db.checkpoint_fsync_ms(&s.id)?);
    let paths: Vec<String> = store
        .entries(&id, WORKSPACE_TREE)
        .map_err(damage)?
        .iter()
        .map(|e| e.path.display().to_string())
        .collect();
    Ok(Shown {
        view,
        manifest,
        paths,
    })
}

/// What `checkpoint diff` compares: one workspace file, the conversation
/// between the two, or (by default) the workspace's file lists.
pub(crate) enum Diffed {
    File { path: String, unified_diff: String },
    Conversation(Vec<checkpoints::Turn>),
    Workspace(parhelia_checkpoint::Diff),
}

/// `checkpoint diff`'s read: the one the CLI and the MCP server's
/// `parhelia_checkpoint_diff` make.
pub(crate) async fn diff_checkpoints(
    ctx: &Ctx,
    a: &str,
    b: &str,
    file: Option<&str>,
    conversation: bool,
) -> Result<Diffed> {
    let opened = ctx.open()?;
    diff_views(ctx, &opened, a, b, file, conversation).await
}

/// `checkpoint diff --json`'s value.
pub(crate) fn diffed_json(diffed: &Diffed) -> Result<serde_json::Value> {
    Ok(match diffed {
        Diffed::File { path, unified_diff } => {
            serde_json::json!({ "path": path, "unified_diff": unified_diff })
        }
        Diffed::Conversation(turns) => serde_json::to_value(turns)?,
        Diffed::Workspace(diff) => serde_json::to_value(diff)?,
    })
}

async fn diff_views(
    ctx: &Ctx,
    opened: &Opened,
    a: &str,
    b: &str,
    file: Option<&str>,
    conversation: bool,
) -> Result<Diffed> {
    let (sa, store, ida) = find(ctx, opened, a).await?;
    let (sb, _, idb) = find(ctx, opened, b).await?;
    if sa.id != sb.id {
        return Err(coded(
            error_codes::INVALID_INPUT,
            format!(
                "{a} and {b} belong to different sessions ({} and {})",
                sa.id, sb.id
            ),
        ));
    }
    if let Some(path) = file {
        let unified_diff = store
            .file_diff(&ida, &idb, WORKSPACE_TREE, Path::new(path))
            .map_err(|e| checkpoints::coded(&e))?;
        return Ok(Diffed::File {
            path: path.to_string(),
            unified_diff,
        });
    }
    if conversation {
        let transcript = format!("{}.jsonl", sa.claude_session_id);
        let read = |id| {
            store
                .read_file(id, CONVERSATION_TREE, Path::new(&transcript))
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .or_else(|e| {
                    if e.code() == error_codes::CHECKPOINT_NOT_FOUND.code {
                        Ok(String::new())
                    } else {
                        Err(e)
                    }
                })
                .map_err(|e| checkpoints::coded(&e))
        };
        return Ok(Diffed::Conversation(checkpoints::conversation_between(
            &read(&ida)?,
            &read(&idb)?,
        )));
    }
    let diff = store.diff(&ida, &idb).map_err(|e| {
        // Name the damaged one of the two.
        let which = if store.load(&ida).is_err() {
            &ida
        } else {
            &idb
        };
        crate::store_health::coded_at(&e, &sa.id, store.root(), which.as_str())
    })?;
    Ok(Diffed::Workspace(diff))
}

/// `checkpoint show`'s read: the one the CLI and the MCP server's
/// `parhelia_checkpoint_show` make.
pub(crate) async fn show_checkpoint(ctx: &Ctx, checkpoint_id: &str) -> Result<Shown> {
    let opened = ctx.open()?;
    show_views(ctx, &opened, checkpoint_id).await
}

/// `checkpoint show --json`'s value.
pub(crate) fn shown_json(shown: &Shown) -> serde_json::Value {
    let manifest = &shown.manifest;
    serde_json::json!({
        "checkpoint": shown.view,
        "trees": manifest.trees.iter().map(|t| serde_json::json!({
            "name": t.name, "files": t.file_count, "bytes": t.total_bytes,
            "entries": t.entry_count, "excludes": t.excludes,
        })).collect::<Vec<_>>(),
        "format_version": manifest.format_version,
        "workspace_paths": shown.paths,
    })
}

/// [`list_views`] for a session or task id (its current session): the one read the
/// CLI and the MCP server's `parhelia_checkpoint_list` make.
pub(crate) async fn list_checkpoints(
    ctx: &Ctx,
    session_or_task: Option<&str>,
) -> Result<Vec<CheckpointView>> {
    let session_id = session_or_task
        .map(|id| session_id_of(ctx, id))
        .transpose()?;
    let opened = ctx.open()?;
    list_views(ctx, &opened, session_id.as_deref()).await
}

/// `checkpoint create`'s call for a session or task id: the coordinator's
/// `CheckpointSession`.
pub(crate) async fn create_call(
    ctx: &Ctx,
    session_or_task: &str,
    message: String,
) -> Result<parhelia_proto::CheckpointSessionResponse> {
    let session_id = session_id_of(ctx, session_or_task)?;
    let opened = ctx.open()?;
    let mut client = ctx.client(&opened.state).await?;
    Ok(client
        .checkpoint_session(CheckpointSessionRequest {
            session_id,
            message,
        })
        .await
        .map_err(coordinator_error)?
        .into_inner())
}

/// `checkpoint create --json`'s value.
pub(crate) fn create_json(reply: &parhelia_proto::CheckpointSessionResponse) -> serde_json::Value {
    serde_json::json!({
        "checkpoint_id": reply.checkpoint_id,
        "container_id": reply.container_id,
    })
}

/// `checkpoint rollback --yes`'s call: the checkpoint's session resumed from it, as a
/// rollback (the coordinator's `ResumeSession`).
pub(crate) async fn rollback_call(
    ctx: &Ctx,
    checkpoint_id: &str,
    message: &str,
) -> Result<parhelia_proto::ResumeSessionResponse> {
    let opened = ctx.open()?;
    let (s, _, id) = find(ctx, &opened, checkpoint_id).await?;
    let id = id.to_string();
    resume_request(
        ctx,
        &opened,
        ResumeCall {
            session_id: &s.id,
            checkpoint_id: &id,
            message,
            rollback: true,
            backend: "",
        },
    )
    .await
}

/// `resume`'s call for a session or task id (the coordinator's `ResumeSession`).
pub(crate) async fn resume_call(
    ctx: &Ctx,
    session_or_task: &str,
    checkpoint_id: &str,
    message: &str,
    backend: &str,
) -> Result<parhelia_proto::ResumeSessionResponse> {
    let session_id = session_id_of(ctx, session_or_task)?;
    let opened = ctx.open()?;
    resume_request(
        ctx,
        &opened,
        ResumeCall {
            session_id: &session_id,
            checkpoint_id,
            message,
            rollback: false,
            backend,
        },
    )
    .await
}

/// `parhelia resume SESSION_ID`.
pub async fn run_resume(ctx: &Ctx, mut args: ResumeArgs) -> Result<i32> {
    args.session_id = session_id_of(ctx, &args.session_id)?;
    let opened = ctx.open()?;
    let checkpoint = args.checkpoint.unwrap_or_default();
    let call = ResumeCall {
        session_id: &args.session_id,
        checkpoint_id: &checkpoint,
        message: &args.message,
        rollback: false,
        backend: args.backend.as_deref().unwrap_or(""),
    };
    resume(ctx, &opened, call, args.json).await
}

/// What `resume` and `rollback` ask the coordinator for.
struct ResumeCall<'a> {
    session_id: &'a str,
    checkpoint_id: &'a str,
    message: &'a str,
    rollback: bool,
    /// Empty: where the session ran last.
    backend: &'a str,
}

async fn resume(ctx: &Ctx, opened: &Opened, call: ResumeCall<'_>, json: bool) -> Result<i32> {
    let rollback = call.rollback;
    let reply = resume_request(ctx, opened, call).await?;
    if json {
        print_json(&resume_json(&reply))?;
    } else {
        print_resume_text(&reply, rollback);
    }
    Ok(0)
}

/// The `--json` object of a resume.
pub(crate) fn resume_json(reply: &parhelia_proto::ResumeSessionResponse) -> serde_json::Value {
    let skipped: Vec<serde_json::Value> = reply
        .skipped
        .iter()
        .map(|s| {
            serde_json::json!({
                "checkpoint_id": s.checkpoint_id,
                "code": s.code,
                "reason": s.reason,
            })
        })
        .collect();
    serde_json::json!({
        "task_id": reply.task_id,
        "session_id": reply.session_id,
        "container_id": reply.container_id,
        "checkpoint_id": reply.checkpoint_id,
        "stopped_container_id": Some(&reply.stopped_container_id).filter(|c| !c.is_empty()),
        "skipped": skipped,
    })
}

async fn resume_request(
    ctx: &Ctx,
    opened: &Opened,
    call: ResumeCall<'_>,
) -> Result<parhelia_proto::ResumeSessionResponse> {
    let ResumeCall {
        session_id,
        checkpoint_id,
        message,
        rollback,
        backend,
    } = call;
    let mut env = launch_env()?;
    // The task's local secrets, from this shell, as `task create` carried them.
    if let Some(session) = opened.db.get_session(session_id)? {
        env.extend(super::task::secret_env_for(
            opened.db.get_task(&session.task_id)?.as_ref(),
        ));
    }
    let progress = crate::progress::Progress::start(
        if rollback { "rollback" } else { "resume" },
        &format!(
            "restoring {} on a new container",
            if checkpoint_id.is_empty() {
                "the latest checkpoint"
            } else {
                checkpoint_id
            }
        ),
    );
    let mut client = ctx.client(&opened.state).await?;
    let reply = client
        .resume_session(ResumeSessionRequest {
            session_id: session_id.to_string(),
            checkpoint_id: checkpoint_id.to_string(),
            message: message.to_string(),
            rollback,
            env: env.into_iter().collect(),
            backend: backend.to_string(),
        })
        .await
        .map_err(coordinator_error)?
        .into_inner();
    if !reply.checkpoint_id.is_empty() {
        progress.step(&format!(
            "restoring {}'s workspace in the new container",
            reply.checkpoint_id
        ));
        match super::session::watch_restore(ctx, &reply.session_id, &progress).await {
            super::session::RestoreWatched::Ended {
                ok: false,
                error_code,
            } => {
                // The command's result stands (the session was launched); the
                // session's finish says why the restore failed.
                tracing::debug!(%error_code, "the restore in the new container failed");
                progress.finish(false);
                return Ok(reply);
            }
            super::session::RestoreWatched::Ended { ok: true, .. }
            | super::session::RestoreWatched::Nothing
            | super::session::RestoreWatched::Unknown => {}
        }
    }
    progress.finish(true);
    Ok(reply)
}

fn print_resume_text(reply: &parhelia_proto::ResumeSessionResponse, rollback: bool) {
    // Checkpoints newer than the one chosen, and why they were passed over.
    for s in &reply.skipped {
        outln!(
            "{}",
            escape_untrusted(&format!(
                "skipped    {} [{}] {}",
                s.checkpoint_id, s.code, s.reason
            ))
        );
    }
    let verb = if rollback {
        "rolled back to"
    } else {
        "resumed from"
    };
    if reply.checkpoint_id.is_empty() {
        outln!(
            "{} {verb} its starting workspace (no checkpoint was taken)",
            reply.session_id
        );
    } else {
        outln!("{} {verb} {}", reply.session_id, reply.checkpoint_id);
    }
    for k in &reply.skipped {
        outln!(
            "  skipped    {} [{}] {}",
            escape_untrusted(&k.checkpoint_id),
            escape_untrusted(&k.code),
            escape_untrusted(&k.reason)
        );
    }
    if !reply.stopped_container_id.is_empty() {
        outln!("  stopped    {}", reply.stopped_container_id);
    }
    outln!("  container  {}", reply.container_id);
    outln!("  watch      parhelia task watch {}", reply.task_id);
}

/// What `session pull` did.
pub(crate) struct Pulled {
    session_id: String,
    checkpoint_id: String,
    repo: std::path::PathBuf,
    outcome: crate::pull::PullOutcome,
}

/// `session pull --json`'s value.
pub(crate) fn pulled_json(p: &Pulled) -> serde_json::Value {
    serde_json::json!({
        "session_id": p.session_id,
        "checkpoint_id": p.checkpoint_id,
        "repo": p.repo,
        "branch": p.outcome.branch,
        "commit": p.outcome.commit,
        "head_in_session": p.outcome.head_in_session,
        "committed_uncommitted": p.outcome.committed_uncommitted,
        "changed_files": p.outcome.changed_files,
    })
}

/// `parhelia session pull SESSION_ID`: the session's latest checkpoint (a
/// live session is checkpointed first) as a branch in the user's repository.
pub async fn pull(
    ctx: &Ctx,
    session_id: &str,
    branch: Option<&str>,
    repo: Option<&Path>,
    checkpoint_id: Option<&str>,
    force: bool,
    json: bool,
) -> Result<i32> {
    let pulled = pull_call(ctx, session_id, branch, repo, checkpoint_id, force).await?;
    if json {
        print_json(&pulled_json(&pulled))?;
    } else {
        let Pulled {
            session_id,
            checkpoint_id: id,
            repo,
            outcome,
        } = &pulled;
        outln!(
            "{} -> branch {} at {} in {}",
            session_id,
            outcome.branch,
            &outcome.commit[..outcome.commit.len().min(12)],
            repo.display()
        );
        if outcome.committed_uncommitted {
            outln!("  the session's uncommitted work is the branch's last commit");
        }
        outln!("  from       {id}");
        outln!("  look       git log {}", outcome.branch);
    }
    Ok(0)
}

/// `session pull`'s call: the checkpoint (a live session's taken first through the
/// coordinator's `CheckpointSession`) restored and fetched as a branch
/// (`crate::pull`), with its progress.
pub(crate) async fn pull_call(
    ctx: &Ctx,
    session_id: &str,
    branch: Option<&str>,
    repo: Option<&Path>,
    checkpoint_id: Option<&str>,
    force: bool,
) -> Result<Pulled> {
    let opened = ctx.open()?;
    let s = session(&opened, session_id)?;
    let task = opened.db.get_task(&s.task_id)?;
    let repo = match repo {
        Some(r) => r.to_path_buf(),
        None => match task.as_ref().and_then(|t| t.workspace.clone()) {
            Some(w) if Path::new(&w).is_dir() => std::path::PathBuf::from(w),
            _ => std::env::current_dir()?,
        },
    };
    let progress = crate::progress::Progress::start("session_pull", "opening the session");
    if checkpoint_id.is_none() && s.container_state.is_some_and(|c| c.is_active()) {
        // The work as it is now, not as of the last turn.
        progress.step("checkpointing the live session");
        let mut client = ctx.client(&opened.state).await?;
        if let Err(status) = client
            .checkpoint_session(CheckpointSessionRequest {
                session_id: s.id.clone(),
                message: "session pull".into(),
            })
            .await
        {
            eprintln!(
                "note: the live session could not be checkpointed ({}); pulling its latest checkpoint",
                status.message()
            );
        }
    }
    progress.step("reading the session's checkpoint store");
    let store = super::modal::session_store(ctx, &opened, &s)
        .await?
        .ok_or_else(|| {
            coded(
                error_codes::CHECKPOINT_NOT_FOUND,
                format!("session {} has no checkpoint to pull", s.id),
            )
        })?;
    let id = match checkpoint_id {
        Some(id) => checkpoints::parse_id(id)?,
        None => {
            store
                .latest()
                .map_err(|e| checkpoints::coded(&e))?
                .ok_or_else(|| {
                    coded(
                        error_codes::CHECKPOINT_NOT_FOUND,
                        format!("session {} has no checkpoint to pull", s.id),
                    )
                })?
                .id
        }
    };
    let branch = branch
        .map(str::to_string)
        .unwrap_or_else(|| crate::pull::default_branch(&s.id));
    progress.step(&format!(
        "restoring {id} and committing it as branch {branch}"
    ));
    let outcome = crate::pull::pull_reporting(
        &crate::pull::PullRequest {
            store: &store,
            checkpoint: &id,
            repo: &repo,
            branch: &branch,
            session_id: &s.id,
            force,
        },
        &|restored| progress.transfer(restored.into()),
    )?;
    progress.finish(true);
    Ok(Pulled {
        session_id: s.id,
        checkpoint_id: id.to_string(),
        repo,
        outcome,
    })
}

/// `parhelia session recover SESSION_ID`: what happened, what can be
/// restored, and (confirmed, or with --yes) the resume. `--json` prints one
/// object with the same facts (and `resumed`, the resume's own object, when
/// it resumed); it never asks.
pub async fn recover(ctx: &Ctx, session_id: &str, yes: bool, json: bool) -> Result<i32> {
    let opened = ctx.open()?;
    let s = session(&opened, session_id)?;
    let task = opened.db.get_task(&s.task_id)?;
    let mut report = serde_json::json!({
        "session_id": s.id,
        "task_id": s.task_id,
        "task_status": task.as_ref().map(|t| t.status.as_str()),
        "error_code": task.as_ref().and_then(|t| t.error_code.clone()),
        "error_message": task.as_ref().and_then(|t| t.error_message.clone()),
        "container_id": s.container_id,
        "container_state": s.container_state.map(|c| c.to_string()),
    });
    let say = |line: String| {
        if !json {
            outln!("{line}");
        }
    };
    say(format!("session    {}", s.id));
    if let Some(task) = &task {
        say(format!("task       {} · {}", task.id, task.status));
        if let (Some(code), Some(message)) = (&task.error_code, &task.error_message) {
            say(format!(
                "ended      [{}] {}",
                escape_untrusted(code),
                escape_untrusted(message)
            ));
        }
    }
    if let Some(state) = s.container_state {
        say(format!(
            "container  {} · {state}",
            s.container_id.as_deref().unwrap_or("-")
        ));
    }
    let (latest, none_taken) = match super::modal::session_store(ctx, &opened, &s).await? {
        Some(store) => {
            // The newest restorable checkpoint is the one to offer; each newer one
            // passed over is named with its reason.
            let (chosen, skipped) = checkpoints::newest_restorable(&store)?;
            report["skipped"] = skipped.iter().map(|why| why.line()).collect();
            for why in &skipped {
                say(escape_untrusted(&why.line()).into_owned());
            }
            let none_taken = skipped.is_empty();
            (chosen, none_taken)
        }
        None => (None, true),
    };
    let live = s.container_state.is_some_and(|c| c.is_active());
    if latest.is_none() && none_taken && !live {
        // Lost before its agent took even its `start` checkpoint: Claude Code never ran,
        // and the resume starts it over from its starting workspace.
        let command = format!("parhelia resume {}", s.id);
        report["checkpoint"] = serde_json::Value::Null;
        report["resumable"] = true.into();
        report["resume_command"] = command.clone().into();
        say(
            "no checkpoint yet: the session resumes from its starting workspace with the task's prompt"
                .into(),
        );
        let call = ResumeCall {
            session_id: &s.id,
            checkpoint_id: "",
            message: "",
            rollback: false,
            backend: "",
        };
        if !yes {
            report["resumed"] = serde_json::Value::Null;
            if json {
                print_json(&report)?;
            }
            say(format!("to resume: {command}"));
            return Ok(0);
        }
        if json {
            let reply = resume_request(ctx, &opened, call).await?;
            report["resumed"] = resume_json(&reply);
            print_json(&report)?;
            return Ok(0);
        }
        return resume(ctx, &opened, call, false).await;
    }
    let Some(latest) = latest else {
        report["checkpoint"] = serde_json::Value::Null;
        report["resumable"] = false.into();
        if json {
            print_json(&report)?;
        }
        say(
            "no usable checkpoint: the session cannot be resumed; `parhelia task retry` starts it over"
                .into(),
        );
        return Ok(1);
    };
    let plain = CheckpointView::of(&s.id, &latest);
    let view = escaped_view(&plain);
    report["checkpoint"] = serde_json::to_value(&plain)?;
    say(format!(
        "checkpoint {} · {} · {} · {} files",
        view.id, view.created_at, view.trigger, view.file_count
    ));
    say(format!("git        {}", checkpoints::git_line(&view.git)));
    report["running"] = live.into();
    if live {
        report["resumable"] = false.into();
        if json {
            print_json(&report)?;
        }
        say(format!(
            "the session is still running: `parhelia session show {}`",
            s.id
        ));
        return Ok(0);
    }
    let command = format!("parhelia resume {} --checkpoint {}", s.id, view.id);
    report["resumable"] = true.into();
    report["resume_command"] = command.clone().into();
    let go = yes || {
        if !json && std::io::stdin().is_terminal() {
            eprint!("Resume from {}? [y/N] ", view.id);
            let _ = std::io::stderr().flush();
            let mut answer = String::new();
            std::io::stdin().read_line(&mut answer)?;
            matches!(answer.trim(), "y" | "Y" | "yes")
        } else {
            false
        }
    };
    if !go {
        report["resumed"] = serde_json::Value::Null;
        if json {
            print_json(&report)?;
        }
        say(format!("to resume: {command}"));
        return Ok(0);
    }
    let call = ResumeCall {
        session_id: &s.id,
        checkpoint_id: &view.id,
        message: "",
        rollback: false,
        backend: "",
    };
    if json {
        let reply = resume_request(ctx, &opened, call).await?;
        report["resumed"] = resume_json(&reply);
        print_json(&report)?;
        return Ok(0);
    }
    resume(ctx, &opened, call, false).await
}

pub(super) fn session(opened: &Opened, session_id: &str) -> Result<SessionRecord> {
    opened.db.get_session(session_id)?.ok_or_else(|| {
        coded(
            error_codes::SESSION_NOT_FOUND,
            format!("session not found: {session_id}"),
        )
    })
}

fn not_found(checkpoint_id: &str) -> anyhow::Error {
    coded(
        error_codes::CHECKPOINT_NOT_FOUND,
        format!("checkpoint not found: {checkpoint_id}"),
    )
}

/// The session, store and id of a checkpoint id (ids are unique across
/// sessions). Local stores are searched first: a remote one is read back
/// through the coordinator.
pub(super) async fn find(
    ctx: &Ctx,
    opened: &Opened,
    checkpoint_id: &str,
) -> Result<(
    SessionRecord,
    parhelia_checkpoint::Store,
    parhelia_checkpoint::CheckpointId,
)> {
    let id = checkpoints::parse_id(checkpoint_id)?;
    let mut sessions = opened.db.list_sessions()?;
    let root = opened.state.root().to_string_lossy().into_owned();
    sessions.sort_by_key(|s| !s.volume_dir.starts_with(&root));
    for s in sessions {
        if let Some(store) = super::modal::session_store(ctx, opened, &s).await? {
            // A damaged manifest is still this store's checkpoint (E620 later, not E205).
            if store.has_manifest(&id) {
                return Ok((s, store, id));
            }
        }
    }
    Err(not_found(checkpoint_id))
}

// Text views of checkpoints. Nearly every field of a checkpoint (trigger,
// message, metadata, file paths, the conversation, file contents) was written
// by the session, so each is escaped field by field (a newline in a path
// cannot fake a line) before `checkpoints`' formatting, and the result once
// more as a whole before it reaches the terminal.

/// A copy of `v` with every session-controlled string escaped.
fn escaped_view(v: &CheckpointView) -> CheckpointView {
    let one = |s: &str| escape_untrusted(s).into_owned();
    CheckpointView {
        id: one(&v.id),
        session_id: one(&v.session_id),
        parent: v.parent.as_deref().map(one),
        created_at: one(&v.created_at),
        trigger: one(&v.trigger),
        message: v.message.as_deref().map(one),
        claude_session_id: v.claude_session_id.as_deref().map(one),
        git: escape_json_strings(&v.git),
        ..v.clone()
    }
}

/// `checkpoint list` as text, escaped (the table escapes each cell; its
/// only escape sequences are its own colors).
fn list_text(views: &[CheckpointView]) -> String {
    let views: Vec<CheckpointView> = views.iter().map(escaped_view).collect();
    checkpoints::list_text(&views)
}

/// `checkpoint show` as text, escaped.
fn show_text(view: &CheckpointView, paths: &[String]) -> String {
    let paths: Vec<String> = paths
        .iter()
        .map(|p| escape_untrusted(p).into_owned())
        .collect();
    escape_untrusted_text(&checkpoints::show_text(&escaped_view(view), &paths)).into_owned()
}

/// `checkpoint diff` as text, escaped.
fn diff_text(a: &str, b: &str, mut diff: parhelia_checkpoint::Diff) -> String {
    for entry in diff
        .added
        .iter_mut()
        .chain(diff.removed.iter_mut())
        .chain(diff.modified.iter_mut())
    {
        entry.tree = escape_untrusted(&entry.tree).into_owned();
        entry.path = escape_untrusted(&entry.path.to_string_lossy())
            .into_owned()
            .into();
    }
    diff.metadata_a = escape_json_strings(&diff.metadata_a);
    diff.metadata_b = escape_json_strings(&diff.metadata_b);
    let (a, b) = (escape_untrusted(a), escape_untrusted(b));
    escape_untrusted_text(&checkpoints::diff_text(&a, &b, &diff)).into_owned()
}

/// `checkpoint diff --conversation` as text, escaped (turns stay multi-line).
fn conversation_text(turns: &[checkpoints::Turn]) -> String {
    escape_untrusted_text(&checkpoints::conversation_text(turns)).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn hostile_view() -> CheckpointView {
        CheckpointView {
            id: "cp-000001-0123456789abcdef".into(),
            session_id: "sess-00000001".into(),
            parent: None,
            created_at: "2026-01-01T00:00:00.000Z".into(),
            trigger: "manual\u{1b}[8m".into(),
            message: Some("all good\u{1b}[2J\u{1b}[H\u{1b}]0;pwned\u{7}\nfake line".into()),
            file_count: 2,
            total_bytes: 2048,
            new_bytes: 1024,
            cost_usd: None,
            claude_session_id: Some("c\u{1b}[1m".into()),
            git: serde_json::json!({
                "repository": true,
                "branch": "main\u{1b}[31m",
                "head": "1a2b3c4d5e",
                "modified": ["x"],
            }),
            durable: true,
            damaged: None,
            stats: parhelia_checkpoint::CreateStats::default(),
        }
    }

    fn no_controls(text: &str) {
        assert!(
            !text.chars().any(|c| c != '\n' && c.is_control()),
            "{text:?}"
        );
    }

    #[test]
    fn checkpoint_show_escapes_session_text() {
        let text = show_text(
            &hostile_view(),
            &[
                "src/ok.rs".into(),
                "evil\u{1b}]52;c;cm0gLXJmIH4=\u{7}.txt".into(),
                "two\nlines.txt".into(),
            ],
        );
        no_controls(&text);
        insta::assert_snapshot!(text);
    }

    #[test]
    fn checkpoint_list_escapes_session_text() {
        let text = list_text(&[hostile_view()]);
        no_controls(&text);
        insta::assert_snapshot!(text);
    }

    #[test]
    fn checkpoint_diff_escapes_paths_and_metadata() {
        let entry = |path: &str| parhelia_checkpoint::DiffEntry {
            tree: WORKSPACE_TREE.into(),
            path: PathBuf::from(path),
            kind: parhelia_checkpoint::EntryKind::File,
            old_size: None,
            new_size: Some(3),
        };
        let diff = parhelia_checkpoint::Diff {
            added: vec![entry("a\u{1b}[2Jb"), entry("c\rd")],
            removed: vec![],
            modified: vec![],
            metadata_a: serde_json::json!({}),
            metadata_b: serde_json::json!({"git": {"repository": true, "branch": "x\u{9b}1m"}}),
        };
        let text = diff_text("cp-a", "cp-b", diff);
        no_controls(&text);
        insta::assert_snapshot!(text);
    }

    #[test]
    fn file_diff_and_conversation_keep_lines_but_not_escapes() {
        let text = escape_untrusted_text("-old\n+new\u{1b}[2K\n");
        assert_eq!(text, "-old\n+new\\x1b[2K\n");
        let turns = vec![checkpoints::Turn {
            role: "assistant".into(),
            text: "hi\u{1b}[1A\nthere".into(),
        }];
        assert_eq!(
            conversation_text(&turns),
            "claude  hi\\x1b[1A\n        there\n"
        );
    }
}
