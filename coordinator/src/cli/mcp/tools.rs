//! The MCP tools: their names, descriptions, annotations and input schemas,
//! and how each call is carried out: a [`Direct`] call of what the CLI's
//! command calls (no command line is built, no output captured).
//!
//! Every argument struct is deserialized strictly (unknown fields are an
//! E100, and every schema says `additionalProperties: false`), and its doc
//! comments are the schema's descriptions.

use rmcp::model::ToolAnnotations;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::cli::task::{BudgetArgs, CreateArgs};
use crate::error::CodedError;
use crate::error_codes;

/// A tool carried out by the same call the CLI's command makes (a coordinator
/// RPC, or a read shared with the CLI), its result built from the typed reply.
pub enum Direct {
    /// `task create` (and `--estimate-only`, `parhelia_budget_estimate`), its
    /// options as the CLI's parsed ones.
    TaskCreate(Box<CreateArgs>),
    TaskList {
        status: Option<String>,
    },
    TaskShow {
        task_id: String,
    },
    TaskSpend {
        task_id: String,
    },
    TaskDispatch {
        task_ids: Vec<String>,
        dry_run: bool,
    },
    TaskCancel {
        task_id: String,
        reason: Option<String>,
    },
    TaskRetry {
        task_id: String,
    },
    TaskDelete {
        task_ids: Vec<String>,
    },
    EventsList {
        filters: EventFilterArgs,
        limit: Option<u32>,
    },
    CheckpointCreate {
        session_id: String,
        message: Option<String>,
    },
    CheckpointList {
        session_id: Option<String>,
    },
    CheckpointRestore {
        checkpoint_id: String,
        message: Option<String>,
    },
    CheckpointDiff {
        a: String,
        b: String,
        file: Option<String>,
        conversation: bool,
    },
    SessionLogs {
        session_id: String,
        lines: u32,
    },
    Resume {
        session_id: String,
        checkpoint: Option<String>,
        message: Option<String>,
        backend: Option<String>,
    },
    BudgetStatus,
    Containers {
        state: Option<String>,
        health: Option<String>,
    },
    ContainerShow {
        container_id: String,
    },
    ContainerEvents {
        container_id: String,
    },
    ContainerTerminate {
        container_id: String,
    },
    SessionList,
    SessionShow {
        session_id: String,
    },
    SessionKill {
        session_id: String,
        reason: Option<String>,
    },
    BudgetSet {
        amount: Option<String>,
        daily: Option<String>,
        task: Option<String>,
        max_cost: Option<String>,
    },
    BudgetHistory {
        by: Option<String>,
        since: Option<String>,
    },
    ReconcilerStatus,
    ReconcilerRun {
        dry_run: bool,
    },
    SessionSend {
        session_id: String,
        text: String,
    },
    Cleanup {
        terminate: bool,
        dry_run: bool,
    },
    CheckpointShow {
        checkpoint_id: String,
    },
    SessionPull {
        session_id: String,
        branch: Option<String>,
        repo: Option<String>,
        checkpoint: Option<String>,
        force: bool,
    },
    /// `parhelia_health`: `status --json` and `container health --json`.
    Health,
}

/// How a tool is carried out.
pub enum Plan {
    /// The CLI command's own call, its typed reply as the result.
    Direct(Direct),
    /// `parhelia_events_subscribe`.
    Subscribe(EventFilterArgs),
    /// `parhelia_events_unsubscribe`.
    Unsubscribe(String),
    /// `parhelia_events_stream`.
    Stream(StreamArgs),
}

/// One tool of the table.
pub struct ToolDef {
    pub name: &'static str,
    pub title: &'static str,
    pub description: &'static str,
    /// Changes nothing.
    pub read_only: bool,
    /// May destroy or overwrite something (needs `confirm: true`).
    pub destructive: bool,
    /// Calling it twice with the same arguments does no more than once.
    pub idempotent: bool,
    pub schema: fn() -> Map<String, Value>,
}

impl ToolDef {
    pub fn annotations(&self) -> ToolAnnotations {
        ToolAnnotations::from_raw(
            Some(self.title.to_string()),
            Some(self.read_only),
            (!self.read_only).then_some(self.destructive),
            (!self.read_only).then_some(self.idempotent),
            Some(false),
        )
    }
}

fn schema<T: JsonSchema>() -> Map<String, Value> {
    let schema = schemars::generate::SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<T>();
    match serde_json::to_value(schema) {
        Ok(Value::Object(mut map)) => {
            // Clients read the properties; the title is the Rust type's name.
            map.remove("title");
            // What `parse` enforces (schemars says so only for structs that
            // deny unknown fields themselves, not for the flattened events ones).
            map.insert("additionalProperties".into(), Value::Bool(false));
            map
        }
        _ => Map::new(),
    }
}

macro_rules! tools {
    ($( $name:literal $args:ty { title: $title:literal, ro: $ro:expr, destructive: $d:expr, idempotent: $i:expr, $desc:literal } )*) => {
        /// Every tool, in the order `tools/list` gives them.
        pub const TOOLS: &[ToolDef] = &[$(ToolDef {
            name: $name,
            title: $title,
            description: $desc,
            read_only: $ro,
            destructive: $d,
            idempotent: $i,
            schema: schema::<$args>,
        }),*];
    };
}

tools! {
    "parhelia_task_create" TaskCreateArgs { title: "Create a task", ro: false, destructive: false, idempotent: false,
        "Create a task: run Claude Code on `prompt` in a new session (local backend by default). Returns the new task's id (as `parhelia task create --json`); with `wait: true`, follows the task to its end (progress notifications while it runs) and returns the finished task (as `task create --sync --json`), or the task's error code and advice when it failed. `dry_run` launches and records nothing; for a cost estimate use `parhelia_budget_estimate`." }
    "parhelia_task_list" TaskListArgs { title: "List tasks", ro: true, destructive: false, idempotent: true,
        "List tasks, newest first (as `parhelia task list --json`, under `tasks`)." }
    "parhelia_task_show" TaskIdArgs { title: "Show a task", ro: true, destructive: false, idempotent: true,
        "One task: status, session, container, cost, outcome (as `parhelia task show --json`)." }
    "parhelia_task_spend" TaskIdArgs { title: "A task's spend over time", ro: true, destructive: false, idempotent: true,
        "A task's spend over time: each ledger row with the running compute, model and storage totals (at most 2,000 points, evenly thinned, always the last), and the task's ceiling; the last point's `total_usd` is its cost (as `parhelia task spend --json`)." }
    "parhelia_task_dispatch" TaskDispatchArgs { title: "Dispatch pending tasks", ro: false, destructive: false, idempotent: true,
        "Dispatch pending tasks (held or queued) as far as `max_concurrent_workers` allows; without ids, every pending task (as `parhelia task dispatch --json`)." }
    "parhelia_task_cancel" TaskCancelArgs { title: "Cancel a task", ro: false, destructive: true, idempotent: true,
        "Stop a task: a running one's Claude Code is stopped (a final checkpoint is taken, `parhelia_resume` continues it); a pending one is cancelled. Needs `confirm: true`." }
    "parhelia_task_retry" TaskIdArgs { title: "Retry a task", ro: false, destructive: false, idempotent: false,
        "Run a failed, cancelled or interrupted task again as a new attempt (as `parhelia task retry --json`)." }
    "parhelia_task_delete" TaskDeleteArgs { title: "Delete tasks", ro: false, destructive: true, idempotent: true,
        "Delete ended tasks: their records, events and session directories (checkpoints included). Needs `confirm: true`." }
    "parhelia_containers" ContainerListArgs { title: "List containers", ro: true, destructive: false, idempotent: true,
        "Containers, newest first: ours on record and orphans (as `parhelia container list --json`, under `containers`)." }
    "parhelia_container_show" ContainerIdArgs { title: "Show a container", ro: true, destructive: false, idempotent: true,
        "One container: state, health, heartbeat, resources, session (as `parhelia container show --json`)." }
    "parhelia_container_events" ContainerIdArgs { title: "A container's events", ro: true, destructive: false, idempotent: true,
        "A container's events, agent's and coordinator's, oldest first (as `parhelia container events --json`, under `events`)." }
    "parhelia_container_terminate" ContainerTerminateArgs { title: "Terminate a container", ro: false, destructive: true, idempotent: true,
        "SIGTERM one of our containers; a session it runs ends interrupted (resumable from its last checkpoint). Needs `confirm: true`." }
    "parhelia_events_list" EventsListArgs { title: "List events", ro: true, destructive: false, idempotent: true,
        "Events matching the filters, oldest first, the most recent `limit` (as `parhelia events list --json`, under `events`)." }
    "parhelia_events_subscribe" EventFilterArgs { title: "Subscribe to events", ro: true, destructive: false, idempotent: false,
        "Start sending new events matching the filters to this MCP session as logging notifications (`notifications/message`, logger `parhelia.events`, `data` = the event as `events watch --json` prints it) until `parhelia_events_unsubscribe` or the session ends. Returns the subscription id." }
    "parhelia_events_unsubscribe" UnsubscribeArgs { title: "Unsubscribe from events", ro: true, destructive: false, idempotent: true,
        "Stop a subscription made by `parhelia_events_subscribe`." }
    "parhelia_events_stream" StreamArgs { title: "Stream events", ro: true, destructive: false, idempotent: true,
        "Follow events matching the filters for a while: each one is sent as a logging notification (logger `parhelia.events`) and as a progress notification when the call has a progress token; returns them all when the stream ends: when `task` is given and that task has ended, after `max_seconds`, after `max_events`, or when the call is cancelled." }
    "parhelia_checkpoint_create" CheckpointCreateArgs { title: "Checkpoint a session", ro: false, destructive: false, idempotent: false,
        "Checkpoint a running session now (workspace, git state, conversation), as `parhelia checkpoint create --json`." }
    "parhelia_checkpoint_list" CheckpointListArgs { title: "List checkpoints", ro: true, destructive: false, idempotent: true,
        "Checkpoints, oldest first, of every session or one (as `parhelia checkpoint list --json`, under `checkpoints`)." }
    "parhelia_checkpoint_show" CheckpointIdArgs { title: "Show a checkpoint", ro: true, destructive: false, idempotent: true,
        "One checkpoint: when, why, what it holds, the git state (as `parhelia checkpoint show --json`)." }
    "parhelia_checkpoint_diff" CheckpointDiffArgs { title: "Compare checkpoints", ro: true, destructive: false, idempotent: true,
        "Compare two checkpoints of a session: files added, changed, removed; or one file's unified diff; or the conversation turns between them (as `parhelia checkpoint diff --json`)." }
    "parhelia_checkpoint_restore" CheckpointRestoreArgs { title: "Restore a checkpoint", ro: false, destructive: true, idempotent: false,
        "Roll a session's workspace and conversation back to a checkpoint (`parhelia checkpoint rollback`): the current state is checkpointed first, so it can be undone; git history is never rewritten. Needs `confirm: true`." }
    "parhelia_resume" ResumeArgs { title: "Resume a session", ro: false, destructive: false, idempotent: false,
        "Continue a session on a fresh container from a checkpoint (default: its latest), the conversation continuing (as `parhelia resume --json`)." }
    "parhelia_session_list" EmptyArgs { title: "List sessions", ro: true, destructive: false, idempotent: true,
        "Sessions, newest first, with their container's health (as `parhelia session list --json`, under `sessions`)." }
    "parhelia_session_show" SessionIdArgs { title: "Show a session", ro: true, destructive: false, idempotent: true,
        "One session (as `parhelia session show --json`)." }
    "parhelia_session_send" SessionSendArgs { title: "Send a message", ro: false, destructive: false, idempotent: false,
        "Send a message to a session: typed into an interactive one, or queued for a headless one's next turn (as `parhelia session send --json`)." }
    "parhelia_session_logs" SessionLogsArgs { title: "Session logs", ro: true, destructive: false, idempotent: true,
        "A session's recent events (and an interactive session's screen), as `parhelia session logs --json` (its lines under `lines`)." }
    "parhelia_session_pull" SessionPullArgs { title: "Pull a session's result", ro: false, destructive: false, idempotent: false,
        "Bring a session's result back as a local git branch (uncommitted work as a commit on it) without touching the working tree (as `parhelia session pull --json`). `force` (moving an existing branch) needs `confirm: true`." }
    "parhelia_session_kill" SessionKillArgs { title: "Kill a session", ro: false, destructive: true, idempotent: true,
        "Stop a session: its task is cancelled, a final checkpoint is taken. Needs `confirm: true`." }
    "parhelia_budget_status" EmptyArgs { title: "Budget status", ro: true, destructive: false, idempotent: true,
        "The ceilings, what is spent (compute and model) and what remains, per task and per day (as `parhelia budget show --json`)." }
    "parhelia_budget_estimate" BudgetEstimateArgs { title: "Estimate a task's cost", ro: true, destructive: false, idempotent: true,
        "The estimated cost of a task with these resources (a range and its basis), and whether the budget would refuse it; launches and records nothing (as `parhelia task create --estimate-only --json`)." }
    "parhelia_budget_set" BudgetSetArgs { title: "Set the budget", ro: false, destructive: true, idempotent: true,
        "Set the global spending ceiling (and optionally the daily one), or one task's ceiling (as `parhelia budget set --json`). Needs `confirm: true`." }
    "parhelia_budget_history" BudgetHistoryArgs { title: "Spend history", ro: true, destructive: false, idempotent: true,
        "Spend grouped by day or by task; the rows add up to the total (as `parhelia budget history --json`)." }
    "parhelia_health" EmptyArgs { title: "Health", ro: true, destructive: false, idempotent: true,
        "Is the coordinator up, tasks by status, running sessions, cost (`status`: as `parhelia status --json`), and the live containers' health from their heartbeats (`containers`: as `parhelia container health --json`)." }
    "parhelia_reconciler_status" EmptyArgs { title: "Reconciler status", ro: true, destructive: false, idempotent: true,
        "The reconciler's last pass, the drift it saw, its policy and recent actions (as `parhelia reconciler status --json`)." }
    "parhelia_reconciler_run" ReconcilerRunArgs { title: "Run the reconciler", ro: false, destructive: false, idempotent: true,
        "One reconciler pass now (as `parhelia reconciler run --once --json`): observed containers against the records; what it does follows the configured policy." }
    "parhelia_cleanup" CleanupArgs { title: "Clean up orphans", ro: false, destructive: true, idempotent: true,
        "Find orphaned containers (ours, labelled, with no live record); with `terminate: true` (and `confirm: true`) stop them (as `parhelia cleanup --json`)." }
}

/// The tool named `name`.
pub fn find(name: &str) -> Option<&'static ToolDef> {
    TOOLS.iter().find(|t| t.name == name)
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmptyArgs {}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskCreateArgs {
    /// The instruction for Claude Code.
    pub prompt: String,
    /// A directory (absolute path) to copy into the session, with its `.git`; default: an empty workspace.
    pub workspace: Option<String>,
    /// Claude model (default: Claude Code's).
    pub model: Option<String>,
    /// Stop after this many agentic turns.
    pub max_turns: Option<u32>,
    /// Task type: generic, code_fix, test, build, lint, refactor… (default generic).
    pub task_type: Option<String>,
    /// Where to run: `local` (default) or `modal`.
    pub backend: Option<String>,
    /// GPU type: T4, L4, A10G, L40S, A100, A100-80GB, H100, H200, B200 (`:N` for N GPUs).
    pub gpu: Option<String>,
    /// CPU cores to request.
    pub cpu: Option<f64>,
    /// Memory: GiB (`"32"`) or with a unit (`"512MiB"`, `"16GiB"`).
    pub memory: Option<String>,
    /// The task's time limit (e.g. `"30m"`, `"2h"`).
    pub timeout: Option<String>,
    /// Stop the task when it has cost this much, in USD (e.g. `"2.00"`).
    pub max_cost: Option<String>,
    /// Record the task as pending; dispatch it later with `parhelia_task_dispatch`.
    #[serde(default)]
    pub no_dispatch: bool,
    /// Validate and show what would be launched; launch and record nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Start without the user's Claude Code setup (settings, CLAUDE.md, commands, skills, MCP servers).
    #[serde(default)]
    pub no_user_config: bool,
    /// Run the Claude Code terminal UI (attach with `parhelia session attach`).
    #[serde(default)]
    pub interactive: bool,
    /// Follow the task until it ends and return the finished task (progress notifications meanwhile).
    #[serde(default)]
    pub wait: bool,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskListArgs {
    /// Only tasks in this status: pending, held, queued, running, completed, failed, cancelled, interrupted.
    pub status: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskIdArgs {
    /// The task's id (`task-…`).
    pub task_id: String,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskDispatchArgs {
    /// Tasks to dispatch (default: every pending task).
    #[serde(default)]
    pub task_ids: Vec<String>,
    /// Show what would be dispatched now and what would wait; change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskCancelArgs {
    /// The task's id (`task-…`).
    pub task_id: String,
    /// Recorded with the cancellation.
    pub reason: Option<String>,
    /// Must be `true`: this stops the task's session.
    #[serde(default)]
    pub confirm: bool,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskDeleteArgs {
    /// The ended tasks to delete.
    pub task_ids: Vec<String>,
    /// Must be `true`: this deletes the tasks' records, events and checkpoints.
    #[serde(default)]
    pub confirm: bool,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContainerListArgs {
    /// Only this state: created, starting, running, stopping, terminated, lost, orphaned, failed.
    pub state: Option<String>,
    /// Only this health: healthy, degraded, unhealthy, dead.
    pub health: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContainerIdArgs {
    /// The container's id (`ctr-…`).
    pub container_id: String,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContainerTerminateArgs {
    /// The container's id (`ctr-…`).
    pub container_id: String,
    /// Must be `true`: this stops the container.
    #[serde(default)]
    pub confirm: bool,
}

/// The filters of the `events` tools (as `parhelia events list`'s options).
/// (Flattened into the events tools' arguments: serde cannot deny unknown
/// fields through `flatten`, so [`parse_strict`] checks their names against
/// the schema first.)
#[derive(Deserialize, JsonSchema, Clone, Default)]
pub struct EventFilterArgs {
    /// Only these event types, e.g. `["tool_call", "session_finished"]`.
    #[serde(default)]
    pub types: Vec<String>,
    /// Only these levels: info, warning, error.
    #[serde(default)]
    pub levels: Vec<String>,
    /// Only events at or after: a duration ago (`"30m"`, `"2h"`) or an RFC 3339 time.
    pub since: Option<String>,
    /// Only this container's events.
    pub container: Option<String>,
    /// Only this task's events.
    pub task: Option<String>,
    /// Only this session's events.
    pub session: Option<String>,
    /// Only events recorded by `agent` or `coordinator`.
    pub source: Option<String>,
}

impl EventFilterArgs {
    /// As the CLI's filter options (`events list`, and the followers).
    pub fn cli_filter(&self) -> crate::cli::FilterArgs {
        crate::cli::FilterArgs {
            types: self.types.clone(),
            levels: self.levels.clone(),
            since: self.since.clone(),
            until: None,
            container: self.container.clone(),
            task: self.task.clone(),
            session: self.session.clone(),
            source: self.source.clone(),
        }
    }
}

#[derive(Deserialize, JsonSchema)]
pub struct EventsListArgs {
    #[serde(flatten)]
    pub filters: EventFilterArgs,
    /// At most the last N events (default 500; 0: all).
    pub limit: Option<u32>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UnsubscribeArgs {
    /// The id `parhelia_events_subscribe` returned.
    pub subscription_id: String,
}

#[derive(Deserialize, JsonSchema, Clone)]
pub struct StreamArgs {
    #[serde(flatten)]
    pub filters: EventFilterArgs,
    /// Give up after this many seconds (default 300).
    pub max_seconds: Option<u64>,
    /// Stop after this many events (default: no limit).
    pub max_events: Option<usize>,
    /// Include matching events recorded before the call (default true when `task`, `session` or `since` is given, else false).
    pub history: Option<bool>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckpointCreateArgs {
    /// The running session's id (`sess-…`).
    pub session_id: String,
    /// What this checkpoint is for.
    pub message: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckpointListArgs {
    /// Only this session's checkpoints.
    pub session_id: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckpointIdArgs {
    /// The checkpoint's id.
    pub checkpoint_id: String,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckpointDiffArgs {
    /// The older checkpoint.
    pub a: String,
    /// The newer checkpoint.
    pub b: String,
    /// One workspace file's unified diff instead of the file lists.
    pub file: Option<String>,
    /// The conversation turns between the two instead.
    #[serde(default)]
    pub conversation: bool,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckpointRestoreArgs {
    /// The checkpoint to roll its session back to.
    pub checkpoint_id: String,
    /// A message for Claude once restored (otherwise it waits for input).
    pub message: Option<String>,
    /// Must be `true`: this replaces the session's workspace and conversation (a safety checkpoint is taken first).
    #[serde(default)]
    pub confirm: bool,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResumeArgs {
    /// The session to continue (`sess-…`).
    pub session_id: String,
    /// The checkpoint to resume from (default: the session's latest).
    pub checkpoint: Option<String>,
    /// What to tell Claude next (default for an interrupted session: continue).
    pub message: Option<String>,
    /// Continue on this backend: local or modal (default: where it ran last).
    pub backend: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionIdArgs {
    /// The session's id (`sess-…`).
    pub session_id: String,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionSendArgs {
    /// The session's id (`sess-…`).
    pub session_id: String,
    /// The message.
    pub text: String,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionLogsArgs {
    /// The session's id (`sess-…`).
    pub session_id: String,
    /// How many lines of history (default 200).
    pub lines: Option<u32>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionPullArgs {
    /// The session's id (`sess-…`).
    pub session_id: String,
    /// The branch to create (default `parhelia/SESSION_ID`).
    pub branch: Option<String>,
    /// The repository (absolute path) to fetch into (default: the task's workspace, else the server's directory).
    pub repo: Option<String>,
    /// Pull this checkpoint instead of the latest.
    pub checkpoint: Option<String>,
    /// Replace the branch if it exists (needs `confirm: true`).
    #[serde(default)]
    pub force: bool,
    /// Must be `true` with `force`.
    #[serde(default)]
    pub confirm: bool,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionKillArgs {
    /// The session's id (`sess-…`).
    pub session_id: String,
    /// Recorded with the stop.
    pub reason: Option<String>,
    /// Must be `true`: this stops the session.
    #[serde(default)]
    pub confirm: bool,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetEstimateArgs {
    /// The prompt (only recorded in the estimate's basis).
    pub prompt: Option<String>,
    /// Where it would run: local (default) or modal.
    pub backend: Option<String>,
    /// GPU type (e.g. `"A10G"`, `"H100:2"`).
    pub gpu: Option<String>,
    /// CPU cores.
    pub cpu: Option<f64>,
    /// Memory: GiB or with a unit.
    pub memory: Option<String>,
    /// The time limit (e.g. `"2h"`).
    pub timeout: Option<String>,
    /// The task's own ceiling in USD.
    pub max_cost: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetSetArgs {
    /// The global ceiling in USD (e.g. `"50.00"`).
    pub amount: Option<String>,
    /// The ceiling per UTC day in USD, or `"none"` to remove it.
    pub daily: Option<String>,
    /// Set this task's own ceiling instead (with `max_cost`).
    pub task: Option<String>,
    /// The task's ceiling in USD, or `"none"` (with `task`).
    pub max_cost: Option<String>,
    /// Must be `true`: this changes what the budget allows.
    #[serde(default)]
    pub confirm: bool,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetHistoryArgs {
    /// Group by `day` (default) or `task`.
    pub by: Option<String>,
    /// Only spend recorded within this long (e.g. `"7d"`).
    pub since: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReconcilerRunArgs {
    /// Compute the actions; execute none.
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CleanupArgs {
    /// Terminate the orphans found (needs `confirm: true`).
    #[serde(default)]
    pub terminate: bool,
    /// Report what would be done; change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Must be `true` with `terminate`.
    #[serde(default)]
    pub confirm: bool,
}

fn parse<T: serde::de::DeserializeOwned>(tool: &str, args: Value) -> Result<T, CodedError> {
    serde_json::from_value(args).map_err(|e| {
        CodedError::new(
            error_codes::INVALID_INPUT,
            format!("{tool}: invalid arguments: {e}"),
        )
    })
}

/// [`parse`] for argument structs that flatten others (which serde cannot
/// hold to `deny_unknown_fields`): an argument the schema does not name is
/// E100, as for every other tool.
fn parse_strict<T: serde::de::DeserializeOwned + JsonSchema>(
    tool: &str,
    args: Value,
) -> Result<T, CodedError> {
    if let Value::Object(given) = &args {
        let schema = schema::<T>();
        let known = schema.get("properties").and_then(Value::as_object);
        let unknown: Vec<&str> = given
            .keys()
            .filter(|k| !known.is_some_and(|p| p.contains_key(k.as_str())))
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            let mut expected: Vec<&str> = known
                .into_iter()
                .flat_map(|p| p.keys().map(String::as_str))
                .collect();
            expected.sort_unstable();
            return Err(CodedError::new(
                error_codes::INVALID_INPUT,
                format!(
                    "{tool}: invalid arguments: unknown field(s) {}; expected {}",
                    unknown
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    expected
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    parse(tool, args)
}

fn confirmed(tool: &str, confirm: bool, what: &str) -> Result<(), CodedError> {
    if confirm {
        return Ok(());
    }
    Err(CodedError::new(
        error_codes::CONFIRMATION_REQUIRED,
        format!("{tool} {what}; nothing was done: call it again with `confirm: true`"),
    ))
}

/// How to carry out a call of `tool` with `args` (its JSON arguments):
/// an E100 for arguments that do not fit its schema, E130 for a destructive
/// call without `confirm: true`.
pub fn plan(tool: &str, args: Value) -> Result<Plan, CodedError> {
    Ok(match tool {
        "parhelia_task_create" => {
            let a: TaskCreateArgs = parse(tool, args)?;
            if a.wait && (a.dry_run || a.no_dispatch) {
                // As the CLI's `--sync` conflicts with `--dry-run` and `--no-dispatch`.
                return Err(CodedError::new(
                    error_codes::INVALID_INPUT,
                    format!("{tool}: `wait` cannot be used with `dry_run` or `no_dispatch`"),
                ));
            }
            Plan::Direct(Direct::TaskCreate(Box::new(CreateArgs {
                prompt: a.prompt,
                workspace: a.workspace.map(std::path::PathBuf::from),
                allow_large_workspace: false,
                no_user_config: a.no_user_config,
                sync: a.wait,
                dry_run: a.dry_run,
                no_dispatch: a.no_dispatch,
                model: a.model,
                max_turns: a.max_turns,
                task_type: a.task_type.unwrap_or_else(|| "generic".into()),
                backend: a.backend.unwrap_or_else(|| "local".into()),
                interactive: a.interactive,
                // Not offered to MCP clients yet (`--secret`, `--region`: the CLI's).
                secrets: Vec::new(),
                region: None,
                json: true,
                budget: BudgetArgs {
                    max_cost: a.max_cost,
                    gpu: a.gpu,
                    cpu: a.cpu,
                    memory: a.memory,
                    timeout: a.timeout,
                    estimate_only: false,
                },
            })))
        }
        "parhelia_task_list" => {
            let a: TaskListArgs = parse(tool, args)?;
            Plan::Direct(Direct::TaskList { status: a.status })
        }
        "parhelia_task_show" => {
            let a: TaskIdArgs = parse(tool, args)?;
            Plan::Direct(Direct::TaskShow { task_id: a.task_id })
        }
        "parhelia_task_spend" => {
            let a: TaskIdArgs = parse(tool, args)?;
            Plan::Direct(Direct::TaskSpend { task_id: a.task_id })
        }
        "parhelia_task_dispatch" => {
            let a: TaskDispatchArgs = parse(tool, args)?;
            Plan::Direct(Direct::TaskDispatch {
                task_ids: a.task_ids,
                dry_run: a.dry_run,
            })
        }
        "parhelia_task_cancel" => {
            let a: TaskCancelArgs = parse(tool, args)?;
            confirmed(tool, a.confirm, "stops the task's session")?;
            Plan::Direct(Direct::TaskCancel {
                task_id: a.task_id,
                reason: a.reason,
            })
        }
        "parhelia_task_retry" => {
            let a: TaskIdArgs = parse(tool, args)?;
            Plan::Direct(Direct::TaskRetry { task_id: a.task_id })
        }
        "parhelia_task_delete" => {
            let a: TaskDeleteArgs = parse(tool, args)?;
            confirmed(tool, a.confirm, "deletes tasks and their checkpoints")?;
            Plan::Direct(Direct::TaskDelete {
                task_ids: a.task_ids,
            })
        }
        "parhelia_containers" => {
            let a: ContainerListArgs = parse(tool, args)?;
            Plan::Direct(Direct::Containers {
                state: a.state,
                health: a.health,
            })
        }
        "parhelia_container_show" => {
            let a: ContainerIdArgs = parse(tool, args)?;
            Plan::Direct(Direct::ContainerShow {
                container_id: a.container_id,
            })
        }
        "parhelia_container_events" => {
            let a: ContainerIdArgs = parse(tool, args)?;
            Plan::Direct(Direct::ContainerEvents {
                container_id: a.container_id,
            })
        }
        "parhelia_container_terminate" => {
            let a: ContainerTerminateArgs = parse(tool, args)?;
            confirmed(tool, a.confirm, "stops a container")?;
            Plan::Direct(Direct::ContainerTerminate {
                container_id: a.container_id,
            })
        }
        "parhelia_events_list" => {
            let a: EventsListArgs = parse_strict(tool, args)?;
            Plan::Direct(Direct::EventsList {
                filters: a.filters,
                limit: a.limit,
            })
        }
        "parhelia_events_subscribe" => Plan::Subscribe(parse_strict(tool, args)?),
        "parhelia_events_unsubscribe" => {
            let a: UnsubscribeArgs = parse(tool, args)?;
            Plan::Unsubscribe(a.subscription_id)
        }
        "parhelia_events_stream" => Plan::Stream(parse_strict(tool, args)?),
        "parhelia_checkpoint_create" => {
            let a: CheckpointCreateArgs = parse(tool, args)?;
            Plan::Direct(Direct::CheckpointCreate {
                session_id: a.session_id,
                message: a.message,
            })
        }
        "parhelia_checkpoint_list" => {
            let a: CheckpointListArgs = parse(tool, args)?;
            Plan::Direct(Direct::CheckpointList {
                session_id: a.session_id,
            })
        }
        "parhelia_checkpoint_show" => {
            let a: CheckpointIdArgs = parse(tool, args)?;
            Plan::Direct(Direct::CheckpointShow {
                checkpoint_id: a.checkpoint_id,
            })
        }
        "parhelia_checkpoint_diff" => {
            let a: CheckpointDiffArgs = parse(tool, args)?;
            Plan::Direct(Direct::CheckpointDiff {
                a: a.a,
                b: a.b,
                file: a.file,
                conversation: a.conversation,
            })
        }
        "parhelia_checkpoint_restore" => {
            let a: CheckpointRestoreArgs = parse(tool, args)?;
            confirmed(
                tool,
                a.confirm,
                "replaces the session's workspace and conversation",
            )?;
            Plan::Direct(Direct::CheckpointRestore {
                checkpoint_id: a.checkpoint_id,
                message: a.message,
            })
        }
        "parhelia_resume" => {
            let a: ResumeArgs = parse(tool, args)?;
            Plan::Direct(Direct::Resume {
                session_id: a.session_id,
                checkpoint: a.checkpoint,
                message: a.message,
                backend: a.backend,
            })
        }
        "parhelia_session_list" => {
            let _: EmptyArgs = parse(tool, args)?;
            Plan::Direct(Direct::SessionList)
        }
        "parhelia_session_show" => {
            let a: SessionIdArgs = parse(tool, args)?;
            Plan::Direct(Direct::SessionShow {
                session_id: a.session_id,
            })
        }
        "parhelia_session_send" => {
            let a: SessionSendArgs = parse(tool, args)?;
            Plan::Direct(Direct::SessionSend {
                session_id: a.session_id,
                text: a.text,
            })
        }
        "parhelia_session_logs" => {
            let a: SessionLogsArgs = parse(tool, args)?;
            Plan::Direct(Direct::SessionLogs {
                session_id: a.session_id,
                lines: a.lines.unwrap_or(crate::cli::session::DEFAULT_LOG_LINES),
            })
        }
        "parhelia_session_pull" => {
            let a: SessionPullArgs = parse(tool, args)?;
            if a.force {
                confirmed(tool, a.confirm, "with `force` moves an existing branch")?;
            }
            Plan::Direct(Direct::SessionPull {
                session_id: a.session_id,
                branch: a.branch,
                repo: a.repo,
                checkpoint: a.checkpoint,
                force: a.force,
            })
        }
        "parhelia_session_kill" => {
            let a: SessionKillArgs = parse(tool, args)?;
            confirmed(tool, a.confirm, "stops the session")?;
            Plan::Direct(Direct::SessionKill {
                session_id: a.session_id,
                reason: a.reason,
            })
        }
        "parhelia_budget_status" => {
            let _: EmptyArgs = parse(tool, args)?;
            Plan::Direct(Direct::BudgetStatus)
        }
        "parhelia_budget_estimate" => {
            let a: BudgetEstimateArgs = parse(tool, args)?;
            Plan::Direct(Direct::TaskCreate(Box::new(CreateArgs {
                prompt: a.prompt.unwrap_or_else(|| "(estimate)".into()),
                workspace: None,
                allow_large_workspace: false,
                no_user_config: false,
                sync: false,
                dry_run: false,
                no_dispatch: false,
                model: None,
                max_turns: None,
                task_type: "generic".into(),
                backend: a.backend.unwrap_or_else(|| "local".into()),
                interactive: false,
                secrets: Vec::new(),
                region: None,
                json: true,
                budget: BudgetArgs {
                    max_cost: a.max_cost,
                    gpu: a.gpu,
                    cpu: a.cpu,
                    memory: a.memory,
                    timeout: a.timeout,
                    estimate_only: true,
                },
            })))
        }
        "parhelia_budget_set" => {
            let a: BudgetSetArgs = parse(tool, args)?;
            confirmed(tool, a.confirm, "changes what the budget allows")?;
            if a.task.is_some() != a.max_cost.is_some() {
                // The CLI's `--task` and `--max-cost` require each other.
                return Err(CodedError::new(
                    error_codes::INVALID_INPUT,
                    format!("{tool}: `task` and `max_cost` go together"),
                ));
            }
            Plan::Direct(Direct::BudgetSet {
                amount: a.amount,
                daily: a.daily,
                task: a.task,
                max_cost: a.max_cost,
            })
        }
        "parhelia_budget_history" => {
            let a: BudgetHistoryArgs = parse(tool, args)?;
            Plan::Direct(Direct::BudgetHistory {
                by: a.by,
                since: a.since,
            })
        }
        "parhelia_health" => {
            let _: EmptyArgs = parse(tool, args)?;
            Plan::Direct(Direct::Health)
        }
        "parhelia_reconciler_status" => {
            let _: EmptyArgs = parse(tool, args)?;
            Plan::Direct(Direct::ReconcilerStatus)
        }
        "parhelia_reconciler_run" => {
            let a: ReconcilerRunArgs = parse(tool, args)?;
            Plan::Direct(Direct::ReconcilerRun { dry_run: a.dry_run })
        }
        "parhelia_cleanup" => {
            let a: CleanupArgs = parse(tool, args)?;
            if a.terminate && !a.dry_run {
                confirmed(
                    tool,
                    a.confirm,
                    "with `terminate` stops orphaned containers",
                )?;
            }
            Plan::Direct(Direct::Cleanup {
                terminate: a.terminate,
                dry_run: a.dry_run,
            })
        }
        other => {
            return Err(CodedError::new(
                error_codes::INVALID_INPUT,
                format!("no such tool: {other}"),
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_least_the_seeds_tools_and_24_in_all() {
        for seed in [
            "parhelia_task_create",
            "parhelia_task_list",
            "parhelia_task_show",
            "parhelia_task_dispatch",
            "parhelia_containers",
            "parhelia_container_show",
            "parhelia_container_events",
            "parhelia_events_list",
            "parhelia_events_subscribe",
            "parhelia_events_stream",
            "parhelia_checkpoint_create",
            "parhelia_checkpoint_list",
            "parhelia_checkpoint_restore",
            "parhelia_budget_status",
            "parhelia_budget_estimate",
            "parhelia_health",
            "parhelia_reconciler_status",
        ] {
            assert!(find(seed).is_some(), "{seed} missing");
        }
        assert!(TOOLS.len() >= 24, "{} tools", TOOLS.len());
    }

    /// Every tool but the events ones makes the CLI command's own call (no
    /// command line, no captured output).
    #[test]
    fn the_tools_call_the_service_directly() {
        for (tool, args) in [
            (
                "parhelia_checkpoint_diff",
                serde_json::json!({"a": "k1", "b": "k2", "conversation": true}),
            ),
            (
                "parhelia_session_logs",
                serde_json::json!({"session_id": "s", "lines": 5}),
            ),
            ("parhelia_task_create", serde_json::json!({"prompt": "p"})),
            (
                "parhelia_budget_estimate",
                serde_json::json!({"gpu": "A10G"}),
            ),
            ("parhelia_task_list", serde_json::json!({})),
            ("parhelia_task_show", serde_json::json!({"task_id": "t"})),
            ("parhelia_task_spend", serde_json::json!({"task_id": "t"})),
            ("parhelia_task_dispatch", serde_json::json!({})),
            (
                "parhelia_task_cancel",
                serde_json::json!({"task_id": "t", "confirm": true}),
            ),
            ("parhelia_task_retry", serde_json::json!({"task_id": "t"})),
            (
                "parhelia_task_delete",
                serde_json::json!({"task_ids": ["t"], "confirm": true}),
            ),
            ("parhelia_events_list", serde_json::json!({})),
            (
                "parhelia_checkpoint_create",
                serde_json::json!({"session_id": "s"}),
            ),
            ("parhelia_checkpoint_list", serde_json::json!({})),
            (
                "parhelia_checkpoint_restore",
                serde_json::json!({"checkpoint_id": "k", "confirm": true}),
            ),
            ("parhelia_resume", serde_json::json!({"session_id": "s"})),
            ("parhelia_budget_status", serde_json::json!({})),
            (
                "parhelia_containers",
                serde_json::json!({"state": "running"}),
            ),
            (
                "parhelia_container_show",
                serde_json::json!({"container_id": "c"}),
            ),
            (
                "parhelia_container_events",
                serde_json::json!({"container_id": "c"}),
            ),
            (
                "parhelia_container_terminate",
                serde_json::json!({"container_id": "c", "confirm": true}),
            ),
            ("parhelia_session_list", serde_json::json!({})),
            (
                "parhelia_session_show",
                serde_json::json!({"session_id": "s"}),
            ),
            (
                "parhelia_session_kill",
                serde_json::json!({"session_id": "s", "confirm": true}),
            ),
            (
                "parhelia_budget_set",
                serde_json::json!({"amount": "5", "confirm": true}),
            ),
            ("parhelia_budget_history", serde_json::json!({"by": "task"})),
            ("parhelia_reconciler_status", serde_json::json!({})),
            (
                "parhelia_reconciler_run",
                serde_json::json!({"dry_run": true}),
            ),
            (
                "parhelia_session_send",
                serde_json::json!({"session_id": "s", "text": "hi"}),
            ),
            ("parhelia_health", serde_json::json!({})),
            ("parhelia_cleanup", serde_json::json!({"dry_run": true})),
            (
                "parhelia_session_pull",
                serde_json::json!({"session_id": "s"}),
            ),
        ] {
            assert!(
                matches!(plan(tool, args), Ok(Plan::Direct(_))),
                "{tool} is not a direct call"
            );
        }
    }

    #[test]
    fn destructive_tools_refuse_without_confirm() {
        for tool in TOOLS.iter().filter(|t| t.destructive) {
            let args = match tool.name {
                "parhelia_task_cancel" => serde_json::json!({"task_id": "t"}),
                "parhelia_task_delete" => serde_json::json!({"task_ids": ["t"]}),
                "parhelia_container_terminate" => serde_json::json!({"container_id": "c"}),
                "parhelia_checkpoint_restore" => serde_json::json!({"checkpoint_id": "k"}),
                "parhelia_session_kill" => serde_json::json!({"session_id": "s"}),
                "parhelia_budget_set" => serde_json::json!({"amount": "1"}),
                "parhelia_cleanup" => serde_json::json!({"terminate": true}),
                other => panic!("{other}: add a case"),
            };
            match plan(tool.name, args) {
                Err(e) => assert_eq!(e.code.code, "E130", "{}", tool.name),
                Ok(_) => panic!("{} ran without confirm", tool.name),
            }
        }
    }

    #[test]
    fn unknown_arguments_are_e100() {
        match plan("parhelia_task_show", serde_json::json!({"task": "t"})) {
            Err(e) => assert_eq!(e.code.code, "E100"),
            Ok(_) => panic!("accepted"),
        }
    }

    /// The events tools flatten their filters, which serde cannot hold to
    /// `deny_unknown_fields`: they are checked against the schema instead,
    /// so a misspelt filter is refused rather than silently widening the
    /// result to every event.
    #[test]
    fn the_events_tools_refuse_unknown_arguments_with_e100() {
        for tool in [
            "parhelia_events_list",
            "parhelia_events_subscribe",
            "parhelia_events_stream",
        ] {
            match plan(tool, serde_json::json!({"task": "t", "type": "tool_call"})) {
                Err(e) => {
                    assert_eq!(e.code.code, "E100", "{tool}");
                    assert!(e.message.contains("`type`"), "{tool}: {}", e.message);
                    assert!(e.message.contains("`types`"), "{tool}: {}", e.message);
                }
                Ok(_) => panic!("{tool} accepted an unknown argument"),
            }
            assert!(
                plan(
                    tool,
                    serde_json::json!({"task": "t", "types": ["tool_call"]})
                )
                .is_ok(),
                "{tool} refused its own arguments"
            );
        }
    }

    #[test]
    fn every_schema_refuses_additional_properties() {
        for tool in TOOLS {
            assert_eq!(
                (tool.schema)().get("additionalProperties"),
                Some(&Value::Bool(false)),
                "{}",
                tool.name
            );
        }
    }
}
