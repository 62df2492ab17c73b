//! `parhelia session …` and `parhelia container …`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use clap::Subcommand;
use parhelia_proto::TerminateContainerRequest;

use super::shortcuts::session_id_of;
use super::{Ctx, Interrupt, coordinator_error, print_json, redraw};
use crate::container_state::{ContainerState, Health, health_for, missed_heartbeats};
use crate::db::Db;
use crate::error::coded;
use crate::error_codes;
use crate::event_filter::{self, EventFilter, EventRow};
use crate::ids::now_ms;
use crate::reconcile::Policy;
use crate::views::{self, ContainerView, HealthRow, HealthView};

#[derive(Subcommand, Debug)]
pub enum SessionCommand {
    /// List sessions, newest first, with their container's health
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one session
    Show {
        /// A session id, or a task id (its current session)
        #[arg(value_name = "SESSION_OR_TASK_ID")]
        session_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Guided recovery: what happened, the latest checkpoint that verifies,
    /// and the resume (asked for, or at once with --yes)
    Recover {
        /// A session id, or a task id (its current session)
        #[arg(value_name = "SESSION_OR_TASK_ID")]
        session_id: String,
        #[arg(short, long)]
        yes: bool,
        /// Print one JSON object (never asks: resumes only with --yes)
        #[arg(long)]
        json: bool,
    },
    /// A live terminal into an interactive session (tmux's Ctrl-b d detaches
    /// and leaves it running); a headless session's events, rendered
    Attach {
        /// A session id, or a task id (its current session)
        #[arg(value_name = "SESSION_OR_TASK_ID")]
        session_id: String,
        /// Watch only: no keystroke is ever sent (Ctrl-b d or Ctrl-c leaves)
        #[arg(long)]
        read_only: bool,
    },
    /// Send a message: typed into an interactive session as one message, or
    /// queued for a headless session's next turn
    Send {
        /// A session id, or a task id (its current session)
        #[arg(value_name = "SESSION_OR_TASK_ID")]
        session_id: String,
        text: String,
        /// Print one JSON object
        #[arg(long)]
        json: bool,
    },
    /// The recent screen and event history; -f follows
    Logs {
        /// A session id, or a task id (its current session)
        #[arg(value_name = "SESSION_OR_TASK_ID")]
        session_id: String,
        /// Keep printing new events until the session ends (or Ctrl-c)
        #[arg(short, long)]
        follow: bool,
        /// How many lines of history and screen
        #[arg(short = 'n', long, value_name = "N", default_value_t = super::session::DEFAULT_LOG_LINES)]
        lines: u32,
        /// Print JSON lines: one per event (the screen of an interactive
        /// session as one `{"type":"screen"}` line)
        #[arg(long)]
        json: bool,
    },
    /// Bring the session's result back as a local git branch (uncommitted
    /// work as a commit on it) without touching your working tree or
    /// current branch. A live session is checkpointed first
    Pull {
        /// A session id, or a task id (its current session)
        #[arg(value_name = "SESSION_OR_TASK_ID")]
        session_id: String,
        /// The branch to create (default: parhelia/SESSION_ID)
        #[arg(long)]
        branch: Option<String>,
        /// The repository to fetch into (default: the task's --workspace, else
        /// the current directory)
        #[arg(long, value_name = "PATH")]
        repo: Option<std::path::PathBuf>,
        /// Pull this checkpoint instead of the latest
        #[arg(long)]
        checkpoint: Option<String>,
        /// Replace the branch if it exists
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Stop the session (its task is cancelled; a final checkpoint is taken)
    Kill {
        /// A session id, or a task id (its current session)
        #[arg(value_name = "SESSION_OR_TASK_ID")]
        session_id: String,
        #[arg(long)]
        reason: Option<String>,
        /// Print one JSON object
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ContainerCommand {
    /// List containers, newest first: ours on record, and orphans (ours by
    /// label, with no record). States: created, starting, running,
    /// stopping, terminated, lost, orphaned, failed
    List {
        /// Only this state
        #[arg(long, value_name = "S")]
        state: Option<String>,
        /// Only this health (healthy, degraded, unhealthy, dead)
        #[arg(long, value_name = "H")]
        health: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show one container
    Show {
        container_id: String,
        #[arg(long)]
        json: bool,
    },
    /// A container's events (agent and coordinator), oldest first
    Events {
        container_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Health of the live containers, from their heartbeats
    Health {
        #[arg(long)]
        json: bool,
    },
    /// The container table, redrawn until interrupted (Ctrl-C)
    Watch {
        /// Redraw interval
        #[arg(long, value_name = "MS", default_value_t = 1000)]
        interval_ms: u64,
        /// Print JSON lines: the containers (as `container list --json`)
        /// whenever anything but their ages changed
        #[arg(long)]
        json: bool,
    },
    /// SIGTERM one of our containers; a session it runs ends interrupted
    /// (resumable)
    Terminate {
        container_id: String,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run_session(ctx: &Ctx, command: SessionCommand) -> Result<i32> {
    match command {
        SessionCommand::List { json } => {
            let now = now_ms();
            let sessions = list_sessions(ctx, now)?;
            if json {
                print_json(&sessions_json(&sessions)?)?;
            } else {
                out!(
                    "{}",
                    views::session_table(&sessions, now, crate::output_look::stdout_look())
                );
            }
            Ok(0)
        }
        SessionCommand::Show { session_id, json } => {
            let session = show_session(ctx, &session_id)?;
            if json {
                print_json(&views::SessionView::from(&session))?;
            } else {
                out!("{}", views::session_detail(&session));
            }
            Ok(0)
        }
        SessionCommand::Recover {
            session_id,
            yes,
            json,
        } => super::checkpoint::recover(ctx, &session_id_of(ctx, &session_id)?, yes, json).await,
        SessionCommand::Attach {
            session_id,
            read_only,
        } => super::session::attach(ctx, &session_id_of(ctx, &session_id)?, read_only).await,
        SessionCommand::Send {
            session_id,
            text,
            json,
        } => super::session::send(ctx, &session_id_of(ctx, &session_id)?, text, json).await,
        SessionCommand::Logs {
            session_id,
            follow,
            lines,
            json,
        } => {
            let session_id = session_id_of(ctx, &session_id)?;
            super::session::logs(ctx, &session_id, follow, lines, json).await
        }
        SessionCommand::Pull {
            session_id,
            branch,
            repo,
            checkpoint,
            force,
            json,
        } => {
            super::checkpoint::pull(
                ctx,
                &session_id_of(ctx, &session_id)?,
                branch.as_deref(),
                repo.as_deref(),
                checkpoint.as_deref(),
                force,
                json,
            )
            .await
        }
        SessionCommand::Kill {
            session_id,
            reason,
            json,
        } => super::session::kill(ctx, &session_id_of(ctx, &session_id)?, reason, json).await,
    }
}

/// `session list`'s rows, each session's health as of `now`: the one read the CLI
/// and the MCP server's `parhelia_session_list` make.
pub(crate) fn list_sessions(ctx: &Ctx, now: i64) -> Result<Vec<crate::db::SessionRecord>> {
    let opened = ctx.open()?;
    let policy = opened.config.config.policy("");
    let mut sessions = opened.db.list_sessions()?;
    for s in &mut sessions {
        views::refresh_health(
            s,
            now,
            &policy.thresholds,
            policy.default_heartbeat_interval_ms,
        );
    }
    Ok(sessions)
}

/// `session list --json`'s value.
pub(crate) fn sessions_json(sessions: &[crate::db::SessionRecord]) -> Result<serde_json::Value> {
    Ok(serde_json::to_value(
        sessions
            .iter()
            .map(views::SessionView::from)
            .collect::<Vec<_>>(),
    )?)
}

/// `session show`'s session (a task id stands for its current session; E202 for
/// an unknown one), its health as of now.
pub(crate) fn show_session(ctx: &Ctx, session_or_task: &str) -> Result<crate::db::SessionRecord> {
    let session_id = session_id_of(ctx, session_or_task)?;
    let opened = ctx.open()?;
    let mut session = opened.db.get_session(&session_id)?.ok_or_else(|| {
        coded(
            error_codes::SESSION_NOT_FOUND,
            format!("session not found: {session_id}"),
        )
    })?;
    let policy = opened.config.config.policy("");
    views::refresh_health(
        &mut session,
        now_ms(),
        &policy.thresholds,
        policy.default_heartbeat_interval_ms,
    );
    Ok(session)
}

/// `container list`'s rows (filtered by `--state`/`--health`): the one read the CLI
/// and the MCP server's `parhelia_containers` make.
pub(crate) fn list_containers(
    ctx: &Ctx,
    state: Option<&str>,
    health: Option<&str>,
    now: i64,
) -> Result<Vec<ContainerView>> {
    let state = state.map(|s| s.parse::<ContainerState>()).transpose()?;
    let health = health.map(|h| h.parse::<Health>()).transpose()?;
    let opened = ctx.open()?;
    let policy = opened.config.config.policy("");
    container_views(&opened.db, &policy, state, health, now)
}

/// `container show --json`'s view (E203 for an unknown container).
pub(crate) fn show_container(ctx: &Ctx, container_id: &str) -> Result<ContainerView> {
    let opened = ctx.open()?;
    let policy = opened.config.config.policy("");
    find_container(&opened.db, &policy, container_id, now_ms())
}

/// `container events`' rows: every event of the container, oldest first.
pub(crate) fn container_events(ctx: &Ctx, container_id: &str) -> Result<Vec<EventRow>> {
    let opened = ctx.open()?;
    let policy = opened.config.config.policy("");
    find_container(&opened.db, &policy, container_id, now_ms())?;
    opened.db.query_events(
        &EventFilter {
            container_id: Some(container_id.to_string()),
            ..EventFilter::default()
        },
        None,
    )
}

/// `container health`'s view: the one read the CLI and the MCP server's
/// `parhelia_health` make.
pub(crate) fn container_health(ctx: &Ctx) -> Result<HealthView> {
    let opened = ctx.open()?;
    let policy = opened.config.config.policy("");
    health_view(&opened.db, &policy, now_ms())
}

/// `container terminate`'s call: the coordinator's `TerminateContainer`.
pub(crate) async fn terminate_call(
    ctx: &Ctx,
    container_id: &str,
) -> Result<parhelia_proto::TerminateContainerResponse> {
    let opened = ctx.open()?;
    let mut client = ctx.client(&opened.state).await?;
    Ok(client
        .terminate_container(TerminateContainerRequest {
            container_id: container_id.to_string(),
        })
        .await
        .map_err(coordinator_error)?
        .into_inner())
}

/// `container terminate --json`'s value.
pub(crate) fn terminate_json(
    response: &parhelia_proto::TerminateContainerResponse,
) -> serde_json::Value {
    serde_json::json!({
        "container_id": response.container_id,
        "known": response.known,
        "state": response.state,
    })
}

pub async fn run(ctx: &Ctx, command: ContainerCommand) -> Result<i32> {
    match command {
        ContainerCommand::List {
            state,
            health,
            json,
        } => {
            let now = now_ms();
            let containers = list_containers(ctx, state.as_deref(), health.as_deref(), now)?;
            if json {
                print_json(&containers)?;
            } else {
                out!(
                    "{}",
                    views::container_table(&containers, now, crate::output_look::stdout_look())
                );
            }
            Ok(0)
        }
        ContainerCommand::Show { container_id, json } => {
            let opened = ctx.open()?;
            let now = now_ms();
            let policy = opened.config.config.policy("");
            let view = find_container(&opened.db, &policy, &container_id, now)?;
            if json {
                print_json(&view)?;
            } else {
                let heartbeat = opened.db.latest_heartbeat(&container_id)?;
                let events = opened.db.container_event_count(&container_id)?;
                out!(
                    "{}",
                    views::container_detail(&view, heartbeat.as_ref(), events)
                );
            }
            Ok(0)
        }
        ContainerCommand::Events { container_id, json } => {
            let rows = container_events(ctx, &container_id)?;
            if json {
                print_json(&super::events::list_json(&rows)?)?;
            } else if rows.is_empty() {
                outln!("no events");
            } else {
                outln!("{}", event_filter::TABLE_HEADER);
                for row in &rows {
                    outln!("{}", event_filter::table_line(row));
                }
            }
            Ok(0)
        }
        ContainerCommand::Health { json } => {
            let view = container_health(ctx)?;
            if json {
                print_json(&view)?;
            } else {
                out!(
                    "{}",
                    views::health_text(&view, crate::output_look::stdout_look())
                );
            }
            Ok(0)
        }
        ContainerCommand::Watch { interval_ms, json } => {
            let opened = ctx.open()?;
            let mut interrupt = Interrupt::new();
            let mut last = String::new();
            loop {
                let now = now_ms();
                let policy = opened.config.config.policy("");
                let containers = container_views(&opened.db, &policy, None, None, now)?;
                // The live ones and the ten most recent others.
                let shown: Vec<ContainerView> = containers
                    .iter()
                    .filter(|c| {
                        c.silence_ms.is_some() || c.state == "orphaned" || c.state == "stopping"
                    })
                    .chain(
                        containers
                            .iter()
                            .filter(|c| {
                                !(c.silence_ms.is_some()
                                    || c.state == "orphaned"
                                    || c.state == "stopping")
                            })
                            .take(10),
                    )
                    .cloned()
                    .collect();
                let text = views::container_table(&shown, now, crate::output_look::stdout_look());
                // Ages tick every second; redraw when anything but them changed
                // (always on a terminal).
                let key: String = shown
                    .iter()
                    .map(|c| format!("{}:{}:{:?};", c.id, c.state, c.health))
                    .collect();
                if json {
                    if key != last {
                        super::json_line(&serde_json::json!({
                            "time": crate::ids::rfc3339_ms(now),
                            "containers": shown,
                        }));
                        last = key;
                    }
                } else if key != last || std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                    redraw(&text);
                    last = key;
                }
                if interrupt
                    .sleep(Duration::from_millis(interval_ms.max(50)))
                    .await
                {
                    return Ok(0);
                }
            }
        }
        ContainerCommand::Terminate { container_id, json } => {
            let response = terminate_call(ctx, &container_id).await?;
            if json {
                print_json(&terminate_json(&response))?;
            } else {
                outln!(
                    "{} {}{}",
                    response.container_id,
                    response.state,
                    if response.known { "" } else { " (an orphan)" }
                );
            }
            Ok(0)
        }
    }
}

/// Every container on record plus every orphan still around, newest first.
fn container_views(
    db: &Db,
    policy: &crate::reconcile::Policy,
    state: Option<ContainerState>,
    health: Option<Health>,
    now: i64,
) -> Result<Vec<ContainerView>> {
    let mut views: Vec<ContainerView> = db
        .list_containers(state, health)?
        .iter()
        .map(|c| {
            ContainerView::from_record(
                c,
                now,
                &policy.thresholds,
                policy.default_heartbeat_interval_ms,
            )
        })
        .collect();
    if health.is_none() && state.is_none_or(|s| s == ContainerState::Orphaned) {
        views.extend(
            db.list_orphans(false)?
                .iter()
                .map(ContainerView::from_orphan),
        );
    }
    views.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
    Ok(views)
}

fn find_container(
    db: &Db,
    policy: &crate::reconcile::Policy,
    container_id: &str,
    now: i64,
) -> Result<ContainerView> {
    if let Some(c) = db.get_container(container_id)? {
        return Ok(ContainerView::from_record(
            &c,
            now,
            &policy.thresholds,
            policy.default_heartbeat_interval_ms,
        ));
    }
    if let Some(o) = db.get_orphan(container_id)? {
        return Ok(ContainerView::from_orphan(&o));
    }
    Err(coded(
        error_codes::CONTAINER_NOT_FOUND,
        format!("container not found: {container_id}"),
    ))
}

/// Live health of containers that should be heartbeating, computed now
/// with the reconciler's thresholds.
fn health_view(db: &Db, policy: &Policy, now: i64) -> Result<HealthView> {
    let mut counts: BTreeMap<String, u64> =
        Health::ALL.iter().map(|h| (h.to_string(), 0)).collect();
    let mut rows = Vec::new();
    for c in db.list_containers(None, None)? {
        if !c.state.expects_heartbeats() {
            continue;
        }
        let heard = [c.last_heartbeat_ms, c.started_at_ms, Some(c.created_at_ms)]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(c.created_at_ms);
        let silence = now - heard;
        let interval = c
            .heartbeat_interval_ms
            .filter(|i| *i > 0)
            .unwrap_or(policy.default_heartbeat_interval_ms);
        let health = health_for(silence, interval, &policy.thresholds);
        *counts.entry(health.to_string()).or_default() += 1;
        let heartbeat = db.latest_heartbeat(&c.id)?;
        rows.push(HealthRow {
            container_id: c.id.clone(),
            task_id: c.task_id.clone(),
            state: c.state.to_string(),
            health: health.to_string(),
            silence_ms: silence,
            missed_heartbeats: missed_heartbeats(silence, interval),
            cpu_percent: heartbeat.as_ref().map(|h| h.cpu_percent),
            memory_bytes: heartbeat.as_ref().map(|h| h.memory_bytes),
        });
    }
    Ok(HealthView {
        counts,
        containers: rows,
    })
}
