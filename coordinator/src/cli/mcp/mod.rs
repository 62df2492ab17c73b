//! `parhelia mcp-server`: Parhelia's operations as MCP tools, over stdio or
//! streamable HTTP, on the official Rust SDK (`rmcp`). See `docs/mcp.md`.
//!
//! Each tool call runs on a thread of its own with its own runtime, as one
//! CLI process would. A [`Direct`] tool calls the function the CLI's command
//! calls (the coordinator's typed RPC, or the read the command shares) and
//! builds its result from the typed reply with the function the command's
//! `--json` prints: a tool's result is the CLI's JSON view and its errors
//! are the CLI's coded errors with their advice. The events tools follow the database as `parhelia events
//! watch` does and send what they find as MCP logging notifications.

// MCP logging notifications carry the events (see docs/mcp.md); rmcp marks
// them deprecated (SEP-2577) but every client in use still reads them.
#![allow(deprecated)]

pub mod tools;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ContentBlock as Content, Implementation,
    ListToolsResult, LoggingLevel, LoggingMessageNotificationParam, PaginatedRequestParams,
    ProgressNotificationParam, ServerCapabilities, ServerInfo, Tool,
};
use rmcp::service::{Peer, RequestContext, RoleServer};
use rmcp::{ErrorData as McpError, ServerHandler, ServiceExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cli::Ctx;
use crate::error::{CodedError, coded, find_coded};
use crate::error_codes;

use tools::{Direct, EventFilterArgs, Plan, StreamArgs};

/// The environment variable holding the HTTP transport's bearer token.
pub const TOKEN_ENV: &str = "PARHELIA_MCP_TOKEN";

/// `parhelia mcp-server`'s options.
#[derive(clap::Args, Debug)]
pub struct McpServerArgs {
    /// Serve MCP's streamable HTTP at ADDR (e.g. 127.0.0.1:8765; path
    /// `/mcp`) instead of stdio. A non-loopback address needs a bearer
    /// token in PARHELIA_MCP_TOKEN (E410 otherwise); with the variable set,
    /// every request must carry `Authorization: Bearer TOKEN`
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
}

/// The logger name of event notifications.
pub const EVENTS_LOGGER: &str = "parhelia.events";

/// The server: the global options every command line gets, and the live
/// event subscriptions of this MCP session.
#[derive(Clone)]
pub struct ParheliaMcp {
    ctx: Ctx,
    subscriptions: Arc<Mutex<HashMap<String, CancellationToken>>>,
}

impl ParheliaMcp {
    pub fn new(ctx: Ctx) -> Self {
        Self {
            ctx,
            subscriptions: Arc::default(),
        }
    }

    /// Runs `call` on a thread of its own, with its own runtime, as one CLI
    /// process would (the CLI's calls hold the database, which is not `Sync`,
    /// across awaits); progress notifications every second while it runs (when
    /// the request has a progress token); the request's cancellation drops the
    /// call (as Ctrl-C would). `None`: cancelled; `Some(Err)`: no thread or
    /// runtime to run it on.
    async fn run_on_thread<T, F, Fut>(
        &self,
        what: String,
        context: &RequestContext<RoleServer>,
        call: F,
    ) -> Option<Result<T>>
    where
        T: Send + 'static,
        F: FnOnce(Ctx) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T>,
    {
        let ctx = self.ctx.clone();
        let ct = context.ct.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("mcp-tool".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(err) => {
                        let _ = tx.send(Some(Err(
                            anyhow::Error::new(err).context("starting a runtime")
                        )));
                        return;
                    }
                };
                let done = runtime.block_on(async move {
                    tokio::select! {
                        done = call(ctx) => Some(Ok(done)),
                        () = ct.cancelled() => None,
                    }
                });
                let _ = tx.send(done);
            });
        if let Err(err) = spawned {
            return Some(Err(anyhow::Error::new(err).context("starting a thread")));
        }
        let token = context.meta.get_progress_token();
        let started = Instant::now();
        let mut rx = rx;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tokio::select! {
                done = &mut rx => return done.ok().flatten(),
                _ = tick.tick() => {
                    if let Some(token) = &token {
                        let secs = started.elapsed().as_secs();
                        let _ = context
                            .peer
                            .notify_progress(
                                ProgressNotificationParam::new(token.clone(), secs as f64)
                                    .with_message(format!("{what}: running for {secs}s")),
                            )
                            .await;
                    }
                }
            }
        }
    }

    /// A [`Direct`] tool: the CLI command's own call, its result the value the
    /// command prints with `--json`, its errors the command's coded errors.
    async fn call_direct(
        &self,
        call: Direct,
        context: &RequestContext<RoleServer>,
    ) -> CallToolResult {
        let what = call.what().to_string();
        let Some(done) = self
            .run_on_thread(
                what,
                context,
                move |ctx| async move { direct(&ctx, call).await },
            )
            .await
        else {
            return cancelled_result();
        };
        match done.and_then(|r| r) {
            Ok(DirectResult {
                value,
                wrap,
                failure,
            }) => {
                let text = format!(
                    "{}\n",
                    serde_json::to_string_pretty(&value).unwrap_or_default()
                );
                let value = match wrap {
                    Some(key) => json!({ key: value }),
                    None => value,
                };
                match failure {
                    None => structured(value, text, false),
                    Some(err) => error_result(&err, Some(value)),
                }
            }
            Err(err) => error_result(&err, None),
        }
    }

    fn subscribe(&self, filters: EventFilterArgs, peer: Peer<RoleServer>) -> CallToolResult {
        let id = format!("sub-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let ct = CancellationToken::new();
        let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
        let history = filters.since.is_some();
        let follower = Follower {
            ctx: self.ctx.clone(),
            filters,
            history,
            until_task_ends: None,
            ct: ct.clone(),
        };
        if let Err(err) = follower.spawn(tx) {
            return error_result(&err, None);
        }
        let sub_id = id.clone();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                if notify_event(&peer, &sub_id, event).await.is_err() {
                    break;
                }
            }
        });
        if let Ok(mut subs) = self.subscriptions.lock() {
            subs.insert(id.clone(), ct);
        }
        let value = json!({
            "subscription_id": id,
            "notifications": "notifications/message",
            "logger": EVENTS_LOGGER,
        });
        let text = value.to_string();
        structured(value, text, false)
    }

    fn unsubscribe(&self, id: &str) -> CallToolResult {
        let found = self
            .subscriptions
            .lock()
            .ok()
            .and_then(|mut subs| subs.remove(id));
        match found {
            Some(ct) => {
                ct.cancel();
                let value = json!({"subscription_id": id, "unsubscribed": true});
                let text = value.to_string();
                structured(value, text, false)
            }
            None => error_result(
                &coded(
                    error_codes::NOT_FOUND,
                    format!("no such event subscription in this MCP session: {id}"),
                ),
                None,
            ),
        }
    }

    async fn stream(
        &self,
        args: StreamArgs,
        context: &RequestContext<RoleServer>,
    ) -> CallToolResult {
        let ct = context.ct.child_token();
        let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
        let history = args.history.unwrap_or(
            args.filters.task.is_some()
                || args.filters.session.is_some()
                || args.filters.since.is_some(),
        );
        let follower = Follower {
            ctx: self.ctx.clone(),
            filters: args.filters.clone(),
            history,
            until_task_ends: args.filters.task.clone(),
            ct: ct.clone(),
        };
        let handle = match follower.spawn(tx) {
            Ok(handle) => handle,
            Err(err) => return error_result(&err, None),
        };
        let max = Duration::from_secs(args.max_seconds.unwrap_or(300));
        let deadline = tokio::time::sleep(max);
        tokio::pin!(deadline);
        let token = context.meta.get_progress_token();
        let mut events = Vec::new();
        let reason;
        loop {
            tokio::select! {
                event = rx.recv() => match event {
                    Some(event) => {
                        let _ = notify_event(&context.peer, "stream", event.clone()).await;
                        if let Some(token) = &token {
                            let message = format!(
                                "{} {}",
                                event["type"].as_str().unwrap_or("event"),
                                event["message"].as_str().unwrap_or("")
                            );
                            let _ = context
                                .peer
                                .notify_progress(
                                    ProgressNotificationParam::new(
                                        token.clone(),
                                        (events.len() + 1) as f64,
                                    )
                                    .with_message(message),
                                )
                                .await;
                        }
                        events.push(event);
                        if args.max_events.is_some_and(|n| events.len() >= n) {
                            reason = "max_events";
                            break;
                        }
                    }
                    None => {
                        reason = if args.filters.task.is_some() { "task_ended" } else { "ended" };
                        break;
                    }
                },
                () = &mut deadline => { reason = "max_seconds"; break; }
                () = context.ct.cancelled() => { reason = "cancelled"; break; }
            }
        }
        ct.cancel();
        let failed = tokio::task::spawn_blocking(move || handle.join())
            .await
            .ok()
            .and_then(|joined| joined.ok())
            .and_then(|r| r.err());
        if let Some(err) = failed {
            return error_result(&err, None);
        }
        let value = json!({"events": events, "count": events.len(), "stopped": reason});
        let text = serde_json::to_string_pretty(&value).unwrap_or_default();
        structured(value, text, false)
    }
}

/// Follows the event log as `parhelia events watch` does, on a thread of
/// its own, sending each new matching event (its `--json` form) to a
/// channel; ends on cancellation, when the channel closes, or (with
/// `until_task_ends`) once that task has ended and its last events are sent.
pub(crate) struct Follower {
    ctx: Ctx,
    filters: EventFilterArgs,
    history: bool,
    until_task_ends: Option<String>,
    ct: CancellationToken,
}

impl Follower {
    pub(crate) fn new(
        ctx: Ctx,
        filters: EventFilterArgs,
        history: bool,
        until_task_ends: Option<String>,
        ct: CancellationToken,
    ) -> Self {
        Self {
            ctx,
            filters,
            history,
            until_task_ends,
            ct,
        }
    }

    pub(crate) fn spawn(
        self,
        tx: mpsc::UnboundedSender<Value>,
    ) -> Result<std::thread::JoinHandle<Result<()>>> {
        // Open (and check the filters) before answering, so that a bad
        // filter is the call's error.
        let now = crate::ids::now_ms();
        self.filters.cli_filter().filter(now)?;
        if let Some(task) = &self.until_task_ends {
            let opened = self.ctx.open()?;
            if opened.db.get_task(task)?.is_none() {
                return Err(coded(
                    error_codes::TASK_NOT_FOUND,
                    format!("task not found: {task}"),
                ));
            }
        }
        // Where following starts is fixed now, before the caller answers: a
        // reader that takes a snapshot once it has the answer (the dashboard
        // reloads its board when its event stream opens) then misses nothing
        // recorded between the two.
        let cursor = if self.history {
            Default::default()
        } else {
            self.ctx.open()?.db.event_cursor()?
        };
        Ok(std::thread::Builder::new()
            .name("mcp-events".into())
            .spawn(move || self.run(cursor, tx))?)
    }

    fn run(
        self,
        mut cursor: crate::db::EventCursor,
        tx: mpsc::UnboundedSender<Value>,
    ) -> Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let opened = self.ctx.open()?;
            let filter = self.filters.cli_filter().filter(crate::ids::now_ms())?;
            let mut ended_passes = 0;
            loop {
                for row in opened.db.events_after(&filter, cursor, None)? {
                    cursor.advance(&row);
                    let value = serde_json::to_value(crate::event_filter::EventView::from(&row))?;
                    if tx.send(value).is_err() {
                        return Ok(());
                    }
                }
                if let Some(task) = &self.until_task_ends {
                    let ended = opened
                        .db
                        .get_task(task)?
                        .is_none_or(|t| t.status.has_ended());
                    if ended {
                        // Two more reads: events recorded as it ended.
                        ended_passes += 1;
                        if ended_passes > 2 {
                            return Ok(());
                        }
                    }
                }
                tokio::select! {
                    () = self.ct.cancelled() => return Ok(()),
                    () = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
        })
    }
}

async fn notify_event(
    peer: &Peer<RoleServer>,
    subscription: &str,
    event: Value,
) -> Result<(), rmcp::service::ServiceError> {
    let level = match event["level"].as_str() {
        Some("error") => LoggingLevel::Error,
        Some("warning") => LoggingLevel::Warning,
        _ => LoggingLevel::Info,
    };
    let data = json!({"subscription_id": subscription, "event": event});
    peer.notify_logging_message(
        LoggingMessageNotificationParam::new(level, data).with_logger(EVENTS_LOGGER),
    )
    .await
}

/// What a [`Direct`] call gave: the command's `--json` value, the key a list
/// goes under (MCP's structured content is an object), and the coded error
/// the command ends with after printing it (a dispatch whose launch failed).
pub(crate) struct DirectResult {
    pub(crate) value: Value,
    pub(crate) wrap: Option<&'static str>,
    pub(crate) failure: Option<anyhow::Error>,
}

impl DirectResult {
    fn ok(value: Value) -> Self {
        Self {
            value,
            wrap: None,
            failure: None,
        }
    }

    fn list(value: Value, key: &'static str) -> Self {
        Self {
            value,
            wrap: Some(key),
            failure: None,
        }
    }
}

impl Direct {
    /// The command the call is, for progress messages.
    fn what(&self) -> &'static str {
        match self {
            Direct::TaskCreate(args) if args.budget.estimate_only => {
                "parhelia task create --estimate-only"
            }
            Direct::TaskCreate(_) => "parhelia task create",
            Direct::TaskList { .. } => "parhelia task list",
            Direct::TaskShow { .. } => "parhelia task show",
            Direct::TaskSpend { .. } => "parhelia task spend",
            Direct::TaskDispatch { .. } => "parhelia task dispatch",
            Direct::TaskCancel { .. } => "parhelia task cancel",
            Direct::TaskRetry { .. } => "parhelia task retry",
            Direct::TaskDelete { .. } => "parhelia task delete",
            Direct::EventsList { .. } => "parhelia events list",
            Direct::CheckpointCreate { .. } => "parhelia checkpoint create",
            Direct::CheckpointList { .. } => "parhelia checkpoint list",
            Direct::CheckpointRestore { .. } => "parhelia checkpoint rollback",
            Direct::Resume { .. } => "parhelia resume",
            Direct::BudgetStatus => "parhelia budget show",
            Direct::Containers { .. } => "parhelia container list",
            Direct::ContainerShow { .. } => "parhelia container show",
            Direct::ContainerEvents { .. } => "parhelia container events",
            Direct::ContainerTerminate { .. } => "parhelia container terminate",
            Direct::SessionList => "parhelia session list",
            Direct::SessionShow { .. } => "parhelia session show",
            Direct::SessionKill { .. } => "parhelia session kill",
            Direct::BudgetSet { .. } => "parhelia budget set",
            Direct::BudgetHistory { .. } => "parhelia budget history",
            Direct::ReconcilerStatus => "parhelia reconciler status",
            Direct::ReconcilerRun { .. } => "parhelia reconciler run --once",
            Direct::SessionSend { .. } => "parhelia session send",
            Direct::Cleanup { .. } => "parhelia cleanup",
            Direct::SessionPull { .. } => "parhelia session pull",
            Direct::CheckpointShow { .. } => "parhelia checkpoint show",
            Direct::CheckpointDiff { .. } => "parhelia checkpoint diff",
            Direct::SessionLogs { .. } => "parhelia session logs",
            Direct::Health => "parhelia status; parhelia container health",
        }
    }
}

/// Carries out a [`Direct`] call with the functions the CLI's commands call
/// (the coordinator's RPCs through its client, or the reads they share).
pub(crate) async fn direct(ctx: &Ctx, call: Direct) -> Result<DirectResult> {
    use crate::cli::{budget, checkpoint, container, events, ops, session, task};
    Ok(match call {
        Direct::TaskCreate(args) => {
            let wait = args.sync;
            match task::create_call(ctx, *args).await? {
                task::Created::Estimate { report, .. } => {
                    DirectResult::ok(serde_json::to_value(report)?)
                }
                task::Created::DryRun { plan, .. } => DirectResult::ok(plan),
                task::Created::Submitted { submitted, .. } if !wait => {
                    DirectResult::ok(task::submitted_json(&submitted))
                }
                task::Created::Submitted { submitted, .. } => {
                    let (value, failure) = task::wait_json(ctx, &submitted.task_id).await?;
                    DirectResult {
                        value,
                        wrap: None,
                        failure,
                    }
                }
            }
        }
        Direct::TaskList { status } => {
            let tasks = task::list_tasks(ctx, status.as_deref())?;
            DirectResult::list(task::list_json(&tasks)?, "tasks")
        }
        Direct::TaskShow { task_id } => {
            let shown = task::show_task(ctx, &task_id)?;
            DirectResult::ok(task::show_json(&shown)?)
        }
        Direct::TaskSpend { task_id } => {
            DirectResult::ok(serde_json::to_value(task::spend_series(ctx, &task_id)?)?)
        }
        Direct::TaskDispatch { task_ids, dry_run } => {
            let response = task::dispatch_call(ctx, task_ids, false, dry_run).await?;
            DirectResult {
                value: task::dispatch_json(dry_run, &response),
                wrap: None,
                failure: task::dispatch_failure(&response),
            }
        }
        Direct::TaskCancel { task_id, reason } => DirectResult::ok(task::cancel_json(
            &task::cancel_call(ctx, &task_id, reason).await?,
        )),
        Direct::TaskRetry { task_id } => {
            DirectResult::ok(task::retry_json(&task::retry_call(ctx, &task_id).await?))
        }
        Direct::TaskDelete { task_ids } => {
            DirectResult::ok(task::delete_json(&task::delete_call(ctx, task_ids).await?))
        }
        Direct::EventsList { filters, limit } => {
            let (rows, _) = events::list_events(
                ctx,
                &filters.cli_filter(),
                limit.unwrap_or(events::DEFAULT_LIST_LIMIT),
            )?;
            DirectResult::list(events::list_json(&rows)?, "events")
        }
        Direct::CheckpointCreate {
            session_id,
            message,
        } => DirectResult::ok(checkpoint::create_json(
            &checkpoint::create_call(ctx, &session_id, message.unwrap_or_default()).await?,
        )),
        Direct::CheckpointList { session_id } => DirectResult::list(
            serde_json::to_value(checkpoint::list_checkpoints(ctx, session_id.as_deref()).await?)?,
            "checkpoints",
        ),
        Direct::CheckpointRestore {
            checkpoint_id,
            message,
        } => DirectResult::ok(checkpoint::resume_json(
            &checkpoint::rollback_call(ctx, &checkpoint_id, message.as_deref().unwrap_or(""))
                .await?,
        )),
        Direct::Resume {
            session_id,
            checkpoint,
            message,
            backend,
        } => DirectResult::ok(checkpoint::resume_json(
            &checkpoint::resume_call(
                ctx,
                &session_id,
                checkpoint.as_deref().unwrap_or(""),
                message.as_deref().unwrap_or(""),
                backend.as_deref().unwrap_or(""),
            )
            .await?,
        )),
        Direct::BudgetStatus => DirectResult::ok(serde_json::to_value(budget::budget_view(ctx)?)?),
        Direct::Containers { state, health } => DirectResult::list(
            serde_json::to_value(container::list_containers(
                ctx,
                state.as_deref(),
                health.as_deref(),
                crate::ids::now_ms(),
            )?)?,
            "containers",
        ),
        Direct::ContainerShow { container_id } => DirectResult::ok(serde_json::to_value(
            container::show_container(ctx, &container_id)?,
        )?),
        Direct::ContainerEvents { container_id } => DirectResult::list(
            events::list_json(&container::container_events(ctx, &container_id)?)?,
            "events",
        ),
        Direct::ContainerTerminate { container_id } => DirectResult::ok(container::terminate_json(
            &container::terminate_call(ctx, &container_id).await?,
        )),
        Direct::SessionList => DirectResult::list(
            container::sessions_json(&container::list_sessions(ctx, crate::ids::now_ms())?)?,
            "sessions",
        ),
        Direct::SessionKill { session_id, reason } => {
            let session_id = crate::cli::shortcuts::session_id_of(ctx, &session_id)?;
            DirectResult::ok(session::kill_call(ctx, &session_id, reason).await?)
        }
        Direct::BudgetSet {
            amount,
            daily,
            task,
            max_cost,
        } => {
            let task = task.as_deref().zip(max_cost.as_deref());
            let reply = budget::set_call(ctx, amount.as_deref(), daily.as_deref(), task).await?;
            DirectResult::ok(budget::set_json(&reply, task.map(|(id, _)| id)))
        }
        Direct::BudgetHistory { by, since } => {
            let by = match by.as_deref() {
                None => budget::HistoryBy::Day,
                Some(by) => {
                    <budget::HistoryBy as clap::ValueEnum>::from_str(by, false).map_err(|_| {
                        crate::error::coded(
                            error_codes::INVALID_INPUT,
                            format!("by: `{by}` is not `day` or `task`"),
                        )
                    })?
                }
            };
            DirectResult::ok(serde_json::to_value(budget::history_view(
                ctx,
                by,
                since.as_deref(),
            )?)?)
        }
        Direct::SessionSend { session_id, text } => {
            let session_id = crate::cli::shortcuts::session_id_of(ctx, &session_id)?;
            DirectResult::ok(session::send_call(ctx, &session_id, text).await?)
        }
        Direct::Cleanup { terminate, dry_run } => DirectResult::ok(ops::cleanup_json(
            &ops::cleanup_call(ctx, dry_run, terminate).await?,
            dry_run,
            terminate,
        )?),
        Direct::SessionPull {
            session_id,
            branch,
            repo,
            checkpoint,
            force,
        } => {
            let session_id = crate::cli::shortcuts::session_id_of(ctx, &session_id)?;
            DirectResult::ok(checkpoint::pulled_json(
                &checkpoint::pull_call(
                    ctx,
                    &session_id,
                    branch.as_deref(),
                    repo.as_deref().map(std::path::Path::new),
                    checkpoint.as_deref(),
                    force,
                )
                .await?,
            ))
        }
        Direct::CheckpointShow { checkpoint_id } => DirectResult::ok(checkpoint::shown_json(
            &checkpoint::show_checkpoint(ctx, &checkpoint_id).await?,
        )),
        Direct::CheckpointDiff {
            a,
            b,
            file,
            conversation,
        } => DirectResult::ok(checkpoint::diffed_json(
            &checkpoint::diff_checkpoints(ctx, &a, &b, file.as_deref(), conversation).await?,
        )?),
        Direct::SessionLogs { session_id, lines } => {
            let session_id = crate::cli::shortcuts::session_id_of(ctx, &session_id)?;
            DirectResult::list(
                Value::Array(session::logs_json(
                    &session::logs_call(ctx, &session_id, lines, false).await?,
                    lines,
                )),
                "lines",
            )
        }
        Direct::Health => {
            let (view, budget_json, _) = ops::status_view(ctx).await?;
            DirectResult::ok(json!({
                "status": ops::status_json(&view, budget_json)?,
                "containers": container::container_health(ctx)?,
            }))
        }
        Direct::ReconcilerStatus => {
            DirectResult::ok(serde_json::to_value(ops::reconciler_status(ctx).await?)?)
        }
        Direct::ReconcilerRun { dry_run } => DirectResult::ok(serde_json::to_value(
            ops::reconciler_run_once(ctx, dry_run).await?,
        )?),
        Direct::SessionShow { session_id } => DirectResult::ok(serde_json::to_value(
            crate::views::SessionView::from(&container::show_session(ctx, &session_id)?),
        )?),
    })
}

fn structured(value: Value, text: String, is_error: bool) -> CallToolResult {
    // MCP's structuredContent is an object.
    let value = match value {
        Value::Object(_) => value,
        other => json!({ "result": other }),
    };
    let mut result = if is_error {
        CallToolResult::structured_error(value)
    } else {
        CallToolResult::structured(value)
    };
    if !text.trim().is_empty() {
        result.content = vec![Content::text(text)];
    }
    result
}

fn cancelled_result() -> CallToolResult {
    CallToolResult::error(vec![Content::text("cancelled")])
}

/// A failed command as a tool error: the CLI's error text (code, message,
/// hint) as the content, and the code, its name, the message and the advice
/// as structured content.
fn error_result(err: &anyhow::Error, output: Option<Value>) -> CallToolResult {
    let mut value = match find_coded(err) {
        Some(coded) => coded_value(coded),
        None => json!({
            "code": null,
            "message": format!("{err:#}"),
        }),
    };
    if let Some(output) = output {
        value["output"] = output;
    }
    let text = match find_coded(err) {
        Some(coded) => crate::cli::error_text(coded),
        None => format!("error: {err:#}\n"),
    };
    let mut result = CallToolResult::structured_error(value);
    result.content = vec![Content::text(text)];
    result
}

pub(crate) fn coded_value(err: &CodedError) -> Value {
    json!({
        "code": err.code.code,
        "name": err.code.name,
        "message": err.message,
        "hint": err.hint(),
        "help": format!("parhelia help {}", err.code.code),
    })
}

impl ServerHandler for ParheliaMcp {
    fn get_info(&self) -> ServerInfo {
        ServerInfo::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_logging()
                .build(),
        )
        .with_server_info(Implementation::new("parhelia", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "Parhelia runs Claude Code sessions in containers (local processes or Modal \
             sandboxes), checkpoints them and budgets them. Create a task with \
             parhelia_task_create, follow it with parhelia_events_stream (task filter) or \
             parhelia_task_show, inspect checkpoints and the budget. Destructive tools need \
             `confirm: true`. Errors carry a Parhelia error code (E1xx input … E6xx \
             operations) and a hint.",
        )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(tool_list()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        tools::find(name).map(to_tool)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        if tools::find(&request.name).is_none() {
            return Err(McpError::invalid_params(
                format!("no such tool: {}", request.name),
                None,
            ));
        }
        let args = Value::Object(request.arguments.unwrap_or_default());
        let plan = match tools::plan(&request.name, args) {
            Ok(plan) => plan,
            Err(err) => return Ok(error_result(&anyhow::Error::new(err), None)),
        };
        Ok(match plan {
            Plan::Direct(call) => self.call_direct(call, &context).await,
            Plan::Subscribe(filters) => self.subscribe(filters, context.peer.clone()),
            Plan::Unsubscribe(id) => self.unsubscribe(&id),
            Plan::Stream(args) => self.stream(args, &context).await,
        })
    }
}

impl Drop for ParheliaMcp {
    fn drop(&mut self) {
        // The last clone of a session's server ends its subscriptions.
        if Arc::strong_count(&self.subscriptions) == 1
            && let Ok(subs) = self.subscriptions.lock()
        {
            for ct in subs.values() {
                ct.cancel();
            }
        }
    }
}

fn to_tool(def: &tools::ToolDef) -> Tool {
    Tool::new(def.name, def.description, Arc::new((def.schema)()))
        .with_title(def.title)
        .with_annotations(def.annotations())
}

/// Every tool as `tools/list` gives it.
pub fn tool_list() -> Vec<Tool> {
    tools::TOOLS.iter().map(to_tool).collect()
}

/// `parhelia mcp-server`.
pub async fn run(ctx: &Ctx, args: McpServerArgs) -> Result<i32> {
    let server = ParheliaMcp::new(ctx.clone());
    match args.http {
        None => {
            let running = server
                .serve(rmcp::transport::stdio())
                .await
                .context("starting the MCP server on stdio")?;
            running.waiting().await.context("serving MCP on stdio")?;
            Ok(0)
        }
        Some(addr) => serve_http(server, addr).await,
    }
}

/// The bearer token for `--http ADDR`: required for a non-loopback ADDR.
pub fn http_token(addr: &SocketAddr, env: Option<String>) -> Result<Option<String>> {
    let token = env.filter(|t| !t.trim().is_empty());
    if token.is_none() && !addr.ip().is_loopback() {
        return Err(coded(
            error_codes::MCP_TOKEN_REQUIRED,
            format!(
                "refusing to serve MCP on {addr} (not loopback) without a bearer token: set {TOKEN_ENV}"
            ),
        ));
    }
    if let Some(t) = &token
        && t.len() < 16
    {
        return Err(coded(
            error_codes::INVALID_INPUT,
            format!(
                "{TOKEN_ENV} is too short ({} characters; use 16 or more)",
                t.len()
            ),
        ));
    }
    Ok(token)
}

async fn serve_http(server: ParheliaMcp, addr: SocketAddr) -> Result<i32> {
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
    };
    let token = http_token(&addr, std::env::var(TOKEN_ENV).ok())?;
    let shutdown = CancellationToken::new();
    let mut config = StreamableHttpServerConfig::default();
    config.cancellation_token = shutdown.child_token();
    if !addr.ip().is_loopback() {
        // The token guards the endpoint; the Host check (against DNS
        // rebinding of a loopback server) would refuse every remote name.
        config = config.disable_allowed_hosts();
    }
    let service = StreamableHttpService::new(
        move || Ok(server.clone()),
        LocalSessionManager::default().into(),
        config,
    );
    let token = Arc::new(token);
    let app = axum::Router::new()
        .nest_service("/mcp", service)
        .layer(axum::middleware::from_fn(move |request, next| {
            let token = token.clone();
            check_bearer(token, request, next)
        }));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let local = listener.local_addr()?;
    // Where it listens (the port, when ADDR asked for 0), for scripts.
    eprintln!("parhelia mcp-server: serving MCP at http://{local}/mcp");
    let stop = shutdown.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
            stop.cancel();
        })
        .await
        .context("serving MCP over HTTP")?;
    Ok(0)
}

async fn check_bearer(
    token: Arc<Option<String>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if let Some(expected) = token.as_deref() {
        let given = request
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let ok: bool = subtle::ConstantTimeEq::ct_eq(given.as_bytes(), expected.as_bytes()).into();
        if !ok {
            let body = json!({
                "error": {
                    "code": error_codes::MCP_TOKEN_REQUIRED.code,
                    "message": "missing or wrong bearer token",
                    "hint": error_codes::MCP_TOKEN_REQUIRED.hint(),
                }
            });
            return (
                axum::http::StatusCode::UNAUTHORIZED,
                [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
                axum::Json(body),
            )
                .into_response();
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_list_snapshot() {
        let listed: Vec<Value> = tool_list()
            .iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "title": t.title,
                    "description": t.description,
                    "annotations": t.annotations,
                    "required": t.input_schema.get("required"),
                    "properties": t.input_schema.get("properties")
                        .and_then(Value::as_object)
                        .map(|p| p.keys().cloned().collect::<Vec<_>>()),
                })
            })
            .collect();
        insta::assert_snapshot!(
            "mcp_tool_list",
            serde_json::to_string_pretty(&listed).unwrap()
        );
    }

    #[test]
    fn non_loopback_needs_a_token() {
        let public: SocketAddr = "0.0.0.0:8765".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:8765".parse().unwrap();
        let err = http_token(&public, None).unwrap_err();
        assert_eq!(find_coded(&err).unwrap().code.code, "E410");
        assert!(http_token(&local, None).unwrap().is_none());
        assert!(http_token(&public, Some("x".repeat(32))).unwrap().is_some());
        let short = http_token(&public, Some("short".into())).unwrap_err();
        assert_eq!(find_coded(&short).unwrap().code.code, "E100");
    }

    #[test]
    fn every_schema_is_an_object_with_described_properties() {
        for tool in tools::TOOLS {
            let schema = (tool.schema)();
            assert_eq!(schema["type"], "object", "{}", tool.name);
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (name, prop) in props {
                    assert!(
                        prop.get("description").is_some(),
                        "{}.{name} has no description: {prop}",
                        tool.name
                    );
                }
            }
        }
    }
}
