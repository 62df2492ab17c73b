//! `parhelia task …`.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use parhelia_proto::{
    CancelTaskRequest, DeleteTasksRequest, DispatchTasksRequest, RetryTaskRequest,
    SubmitBudgetedTaskRequest, SubmitTaskRequest, TaskLimits,
};
use serde::Serialize;

use super::{Ctx, coordinator_error, dry_run_text, json_line, print_json};
use crate::backend::isolation;
use crate::backend::workspace_copy;
use crate::binaries::resolve_claude_bin;
use crate::error::coded;
use crate::error_codes;
use crate::event_filter::parse_duration_ms;
use crate::ids::now_ms;
use crate::plan;
use crate::queue;
use crate::render::labelled;
use crate::service::dry_run::DryRunInputs;
use crate::task_state::{ShownStatus, TaskStatus};
use crate::term::escape_untrusted_text;
use crate::views;
use crate::watch::{watch_task, watch_task_events};

#[derive(Subcommand, Debug)]
pub enum TaskCommand {
    /// Create a task: run Claude Code on PROMPT in a new session (queued
    /// when `max_concurrent_workers` tasks are running)
    Create(Box<CreateArgs>),
    /// List tasks, newest first
    List {
        /// Only tasks in this status, as the list shows it: pending (held or
        /// queued), held, queued, running, completed, failed, cancelled,
        /// interrupted
        #[arg(long, value_name = "S")]
        status: Option<String>,
        /// Print a JSON array
        #[arg(long)]
        json: bool,
    },
    /// Show one task
    Show {
        task_id: String,
        /// Print one JSON object
        #[arg(long)]
        json: bool,
    },
    /// A task's spend over time: each ledger row with the running totals
    /// (compute, model, storage), and its ceiling; the last row's total is
    /// its cost as `task show` prints it
    Spend {
        task_id: String,
        /// Print one JSON object (`points`: at most 2,000, evenly thinned)
        #[arg(long)]
        json: bool,
    },
    /// Print a task's events as they happen, until it ends; the exit status
    /// is the task's outcome
    Watch {
        task_id: String,
        /// Print JSON lines: one per event, then the ended task
        /// (`{"type":"task_ended","task":{…}}`)
        #[arg(long)]
        json: bool,
    },
    /// Dispatch pending tasks (held with `--no-dispatch`, or queued): as
    /// many as `max_concurrent_workers` allows, oldest first; the rest wait
    /// in the queue and dispatch when a running task ends. Without task ids:
    /// every pending task (as `--all`)
    Dispatch {
        /// Tasks to dispatch (default: every pending task)
        task_ids: Vec<String>,
        /// Every pending task (the default when no task is named)
        #[arg(long, conflicts_with = "task_ids")]
        all: bool,
        /// Show what would be dispatched now and what would wait; change nothing
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Stop a task: a running one's agent stops Claude Code and its
    /// container goes; a pending or interrupted one is cancelled at once
    Cancel {
        task_id: String,
        /// Recorded with the cancellation
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Run a failed, cancelled or interrupted task again as a new attempt
    /// (a new session); earlier sessions and their events are kept
    Retry {
        task_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete ended tasks: their records, events and session directories
    Delete {
        #[arg(required = true)]
        task_ids: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Delete ended tasks in bulk (default: completed, failed, cancelled)
    Cleanup {
        /// Only these statuses (repeatable or comma-separated)
        #[arg(long, value_name = "S")]
        status: Vec<String>,
        /// Only tasks that ended longer ago than this (e.g. 2d, 12h)
        #[arg(long, value_name = "AGE")]
        older_than: Option<String>,
        /// List what would be deleted; delete nothing
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// The instruction for Claude Code
    pub prompt: String,
    /// Directory to copy into the session (with `.git`); default: an empty workspace
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// Copy the workspace even when it is larger than `workspace.max_copy_bytes`
    /// or `workspace.max_copy_files`
    #[arg(long, requires = "workspace")]
    pub allow_large_workspace: bool,
    /// Start clean: without your Claude Code setup (settings, CLAUDE.md, commands,
    /// agents, skills, plugins, MCP servers)
    #[arg(long)]
    pub no_user_config: bool,
    /// Stream progress and exit with the task's outcome
    #[arg(long, conflicts_with_all = ["dry_run", "no_dispatch"])]
    pub sync: bool,
    /// Validate and show what would be launched, without launching or recording anything
    #[arg(long)]
    pub dry_run: bool,
    /// Record the task as pending and leave it there until `parhelia task dispatch`
    #[arg(long)]
    pub no_dispatch: bool,
    /// Claude model (default: Claude Code's)
    #[arg(long, value_name = "M")]
    pub model: Option<String>,
    /// Stop after N agentic turns
    #[arg(long, value_name = "N")]
    pub max_turns: Option<u32>,
    /// Task type (generic, code_fix, test, build, lint, refactor…)
    #[arg(long = "type", value_name = "T", default_value = "generic")]
    pub task_type: String,
    /// Where to run: local or modal
    #[arg(long, value_name = "B", default_value = "local")]
    pub backend: String,
    /// Run the Claude Code terminal UI (attach with `parhelia session attach`)
    #[arg(long)]
    pub interactive: bool,
    /// A secret for the session, by name (repeatable). Local: the environment variable NAME
    /// of this shell, passed into the session; Modal: the Modal secret NAME. Never stored
    #[arg(long = "secret", value_name = "NAME")]
    pub secrets: Vec<String>,
    /// The Modal region to run in (e.g. us-east; default `modal.region`). Modal only
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    /// Print JSON (with --sync: the finished task)
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub budget: BudgetArgs,
}

/// `task create`'s budget and resource flags.
#[derive(clap::Args, Debug)]
pub struct BudgetArgs {
    /// Stop the task when it has cost this much, compute and model (USD, e.g. 2.00)
    #[arg(long, value_name = "USD")]
    pub max_cost: Option<String>,
    /// GPU type: T4, L4, A10, A10G, L40S, A100, A100-80GB, H100, H200, B200 (`:N` for N GPUs;
    /// `H100!` no upgrade; `B200+` a B300 allowed); a list (A100,A10G,L4) is tried in order
    /// when Modal has no capacity (the estimate prices the first)
    #[arg(long, value_name = "TYPE")]
    pub gpu: Option<String>,
    /// CPU cores to request (default: the backend's)
    #[arg(long, value_name = "CORES")]
    pub cpu: Option<f64>,
    /// Memory to request: GiB (`--memory 32`), or with a unit (512MiB, 16GiB)
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// The task's time limit, for the estimate (e.g. 30m, 2h; default: `modal.default_timeout_hours`)
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// Print the estimated cost (a range and its basis); launch and record nothing
    #[arg(long, conflicts_with_all = ["sync", "dry_run", "no_dispatch"])]
    pub estimate_only: bool,
}

impl BudgetArgs {
    fn limits(&self, config: &crate::config::Config) -> Result<crate::budget::TaskLimits> {
        let invalid = |m: String| coded(error_codes::INVALID_INPUT, m);
        let max_cost_usd = self
            .max_cost
            .as_deref()
            .map(|m| super::budget::parse_usd("--max-cost", m))
            .transpose()?;
        if max_cost_usd == Some(0.0) {
            return Err(invalid("--max-cost must be positive".into()));
        }
        if let Some(gpu) = &self.gpu {
            crate::budget::parse_gpu_list(gpu, &config.rates)
                .map_err(|e| invalid(format!("--gpu: {e}")))?;
        }
        if let Some(cpu) = self.cpu
            && !(cpu.is_finite() && cpu > 0.0)
        {
            return Err(invalid(format!(
                "--cpu must be a positive number of cores, got {cpu}"
            )));
        }
        let memory_mb = self.memory.as_deref().map(parse_memory_mb).transpose()?;
        let timeout_seconds = self
            .timeout
            .as_deref()
            .map(|t| parse_duration_ms(t).map(|ms| (ms / 1000).max(1) as u64))
            .transpose()?;
        Ok(crate::budget::TaskLimits {
            max_cost_usd,
            gpu: self.gpu.clone(),
            cpu: self.cpu,
            memory_mb,
            timeout_seconds,
        })
    }
}

/// `32` (GiB, as the seeds' `--memory 32`), `512MiB`, `16GiB`, `16G` → MiB.
fn parse_memory_mb(text: &str) -> Result<u64> {
    let t = text.trim().to_ascii_lowercase();
    let digits = t.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &t[digits.len()..];
    let factor = match unit {
        "m" | "mb" | "mib" => 1.0,
        "" | "g" | "gb" | "gib" => 1024.0,
        _ => 0.0,
    };
    digits
        .trim()
        .parse::<f64>()
        .ok()
        .map(|n| (n * factor).round())
        .filter(|mb| *mb >= 1.0)
        .map(|mb| mb as u64)
        .ok_or_else(|| {
            coded(
                error_codes::INVALID_INPUT,
                format!("--memory: expected GiB (e.g. 32) or a size like 512MiB, got {text:?}"),
            )
        })
}

pub async fn run(ctx: &Ctx, command: TaskCommand) -> Result<i32> {
    match command {
        TaskCommand::Create(args) => create(ctx, *args).await,
        TaskCommand::List { status, json } => list(ctx, status.as_deref(), json),
        TaskCommand::Show { task_id, json } => show(ctx, &task_id, json),
        TaskCommand::Spend { task_id, json } => spend(ctx, &task_id, json),
        TaskCommand::Watch { task_id, json } => watch(ctx, &task_id, json).await,
        TaskCommand::Dispatch {
            task_ids,
            all,
            dry_run,
            json,
        } => dispatch(ctx, task_ids, all, dry_run, json).await,
        TaskCommand::Cancel {
            task_id,
            reason,
            json,
        } => cancel(ctx, &task_id, reason, json).await,
        TaskCommand::Retry { task_id, json } => retry(ctx, &task_id, json).await,
        TaskCommand::Delete { task_ids, json } => delete(ctx, task_ids, json).await,
        TaskCommand::Cleanup {
            status,
            older_than,
            dry_run,
            json,
        } => cleanup(ctx, &status, older_than.as_deref(), dry_run, json).await,
    }
}

/// The environment a launch needs, from this shell: what Claude Code needs to
/// reach its model. What shapes the launch itself (Claude Code's and the agent's
/// binaries, PATH, isolation) is the coordinator's own; an explicit
/// `PARHELIA_CLAUDE_BIN` that does not exist is refused here (E501) before
/// anything starts.
pub(crate) fn launch_env() -> Result<HashMap<String, String>> {
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let env: HashMap<String, String> = plan::forwarded_env(
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
    )
    .into_iter()
    .collect();
    let explicit = std::env::var_os(plan::CLAUDE_BIN_ENV).filter(|v| !v.is_empty());
    if explicit.is_some() {
        resolve_claude_bin(
            explicit.as_deref(),
            std::env::var_os("PATH").as_deref(),
            &cwd,
        )?;
    }
    Ok(env)
}

/// The values, from this shell, of the secrets `tasks` name on the local backend
/// (`--secret`): a relaunch (dispatch, retry, resume) carries them as `task create`
/// did. A name this shell does not set is left out: the coordinator then takes it
/// from its own environment, or refuses the launch (E207).
pub(crate) fn secret_env_for<'a>(
    tasks: impl IntoIterator<Item = &'a crate::db::TaskRecord>,
) -> HashMap<String, String> {
    let mut env = HashMap::new();
    for task in tasks {
        if task.backend != plan::BackendKind::Local.as_str() {
            continue;
        }
        for name in &task.secrets {
            if let Ok(value) = std::env::var(name) {
                env.insert(name.clone(), value);
            }
        }
    }
    env
}

/// Says once per state directory (and `doctor` every time) that local sessions are
/// not confined: with isolation off, a session's commands can read the user's
/// files, other sessions and the coordinator's token.
fn warn_unconfined_once(state: &crate::state_dir::StateDir, setting: &str) {
    let marker = state.root().join("isolation-warned");
    if marker.exists() {
        return;
    }
    let why = if setting == "none" {
        "isolation is off ([local] isolation = \"none\")"
    } else {
        "bubblewrap is not installed or cannot create a sandbox here"
    };
    eprintln!(
        "warning: local sessions are NOT isolated: {why}. Commands a session runs can read and \
         change your files, other sessions and the coordinator. Install bubblewrap, or set \
         [local] isolation = \"required\" to launch nothing unconfined. (Said once; `parhelia \
         doctor` repeats it.)"
    );
    let _ = std::fs::write(marker, setting);
}

/// What `task create` did, before anything is printed.
pub(crate) enum Created {
    /// `--estimate-only`: the estimate and its text.
    Estimate {
        report: Box<crate::service::spend::EstimateReport>,
        text: String,
    },
    /// `--dry-run`: the plan and its text.
    DryRun {
        plan: serde_json::Value,
        text: String,
    },
    /// Submitted (the coordinator's `SubmitBudgetedTaskWithProgress`).
    Submitted {
        submitted: parhelia_proto::SubmitTaskResponse,
        backend: &'static str,
    },
}

/// `task create --json`'s value of a submit that is not waited for.
pub(crate) fn submitted_json(submitted: &parhelia_proto::SubmitTaskResponse) -> serde_json::Value {
    serde_json::json!({
        "task_id": submitted.task_id,
        "session_id": Some(&submitted.session_id).filter(|s| !s.is_empty()),
        "container_id": Some(&submitted.container_id).filter(|s| !s.is_empty()),
        "queued": submitted.queued,
        "queue_position": Some(submitted.queue_position).filter(|_| submitted.queued),
        "held": submitted.held,
        // Placed: its launch runs on in the coordinator; how it went is the task's
        // status and events (`task watch`), never this reply.
        "launching": !submitted.session_id.is_empty(),
    })
}

/// `task create --sync --json`: waits for the task to end; the finished task's value,
/// and the coded error (with advice) the command ends with when it did not complete.
pub(crate) async fn wait_json(
    ctx: &Ctx,
    task_id: &str,
) -> Result<(serde_json::Value, Option<anyhow::Error>)> {
    let opened = ctx.open()?;
    let watched = watch_task(&opened.db, task_id, |_| {}).await?;
    let value = serde_json::to_value(views::TaskView::from(&watched.task))?;
    Ok((value, outcome_with_advice(&opened.db, &watched).err()))
}

async fn create(ctx: &Ctx, args: CreateArgs) -> Result<i32> {
    let (sync, json) = (args.sync, args.json);
    let submitted = match create_call(ctx, args).await? {
        Created::Estimate { report, text } => {
            if json {
                print_json(&report)?;
            } else {
                out!("{text}");
            }
            return Ok(0);
        }
        Created::DryRun { plan, text } => {
            if json {
                print_json(&plan)?;
            } else {
                out!("{text}");
            }
            return Ok(0);
        }
        Created::Submitted { submitted, backend } => (submitted, backend),
    };
    let (submitted, backend) = submitted;
    if !sync {
        if json {
            print_json(&submitted_json(&submitted))?;
        } else {
            outln!("{}", submitted.task_id);
            if submitted.held {
                outln!(
                    "  pending    held until `parhelia task dispatch {}`",
                    submitted.task_id
                );
            } else if submitted.queued {
                outln!(
                    "  queued     position {} (max_concurrent_workers tasks are running)",
                    submitted.queue_position
                );
            } else {
                outln!("  session    {}", submitted.session_id);
                outln!("  container  {} (launching)", submitted.container_id);
            }
            outln!("  watch      parhelia task watch {}", submitted.task_id);
        }
        return Ok(0);
    }
    if json {
        let (value, failure) = wait_json(ctx, &submitted.task_id).await?;
        print_json(&value)?;
        return match failure {
            Some(err) => Err(err),
            None => Ok(0),
        };
    }
    let placement = if submitted.queued {
        format!("queued at position {}", submitted.queue_position)
    } else {
        format!("session {}", submitted.session_id)
    };
    outln!(
        "{}",
        labelled(
            "task",
            &format!("{} · {placement} · {backend}", submitted.task_id)
        )
    );
    let opened = ctx.open()?;
    let watched = watch_task(&opened.db, &submitted.task_id, |line| outln!("{line}")).await?;
    outln!("{}", escape_untrusted_text(&watched.summary()));
    outcome_with_advice(&opened.db, &watched)?;
    Ok(0)
}

/// `task create`'s call: the checks this machine makes (the workspace, Claude Code,
/// isolation), then the estimate, the dry run's plan or the coordinator's submit.
pub(crate) async fn create_call(ctx: &Ctx, args: CreateArgs) -> Result<Created> {
    plan::validate_prompt(&args.prompt)?;
    let limits = {
        let state = ctx.state()?;
        args.budget.limits(&ctx.config(&state)?.config)?
    };
    let backend = plan::parse_backend(&args.backend)?;
    // Checked before anything else is (E100): names, and no region for a local run.
    let secrets = plan::validate_secret_names(&args.secrets, backend)?;
    let region = plan::validate_region(args.region.as_deref().unwrap_or(""), backend)?;
    // An estimate prices Modal by its rate table even where it cannot launch.
    if args.budget.estimate_only && backend == plan::BackendKind::Modal {
        return estimate_only(ctx, &args, "modal", &limits, &secrets);
    }
    // Locally, each secret is a variable of this shell: one that is not set is
    // E207 here, before an estimate, a dry run or a launch.
    let secret_env = if backend == plan::BackendKind::Local {
        plan::secret_values(&secrets, |name| std::env::var(name).ok(), |_| None)?
    } else {
        Default::default()
    };
    // Before an estimate prices what a local run would not get.
    crate::backend::capabilities::refuse_unenforced(&limits, backend.as_str())?;
    if args.budget.estimate_only {
        return estimate_only(ctx, &args, backend.as_str(), &limits, &secrets);
    }
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let workspace = match &args.workspace {
        None => None,
        Some(path) => {
            let absolute = cwd.join(path);
            match std::fs::canonicalize(&absolute) {
                Ok(dir) if dir.is_dir() => Some(dir),
                _ => {
                    return Err(coded(
                        error_codes::WORKSPACE_NOT_FOUND,
                        format!("workspace not found: {}", path.display()),
                    ));
                }
            }
        }
    };
    let path_var = std::env::var_os("PATH");
    let state = ctx.state()?;
    // The running coordinator's configuration (what the launch uses), else
    // what one started now would use, with this command's `--set` values on
    // top for this task only (the coordinator applies the same ones the same
    // way: `config::task_config`; a coordinator-wide key is E119).
    let base = ctx.coordinator_config(&state).await?;
    let task_set = ctx.task_set(&base);
    let task_config = crate::config::task_config(&base.config, &task_set)?;
    let config = &task_config;
    if let Some(dir) = &workspace {
        // Before anything is recorded or copied: never `/`, the home
        // directory or a system directory (E111), no special files (E111),
        // and within the size limits unless the user said so (E112).
        // The coordinator preflights again at submit (its own limits) and
        // the copy itself stays within them; a dry run stops here.
        workspace_copy::refuse_unsafe_root(dir)?;
        if args.dry_run {
            let limits = workspace_copy::CopyLimits::from_config(
                &config.workspace,
                args.allow_large_workspace,
            );
            workspace_copy::preflight(dir, &[state.root().to_path_buf()], limits)?;
        }
    }
    let modal = backend == plan::BackendKind::Modal;
    // Local: Claude Code and isolation are this machine's, decided here so a
    // bad setting fails before anything is recorded. Modal: the image's.
    let (claude_bin, isolation) = if modal {
        (config.modal.claude_path.clone(), isolation::Isolation::None)
    } else {
        let claude_override = std::env::var_os(plan::CLAUDE_BIN_ENV);
        (
            resolve_claude_bin(claude_override.as_deref(), path_var.as_deref(), &cwd)?,
            isolation::decide(Some(&config.local.isolation), isolation::bwrap_works)?,
        )
    };
    // An explicit `none` is the user's choice (doctor still says what it means);
    // falling back to no isolation is what must never go unsaid.
    if !modal
        && isolation == isolation::Isolation::None
        && config.local.isolation != "none"
        && !args.dry_run
    {
        warn_unconfined_once(&state, &config.local.isolation);
    }
    if args.dry_run {
        let dry_run = crate::service::dry_run::plan_dry_run(DryRunInputs {
            backend,
            workspace,
            claude_bin,
            isolation,
            state_root: state.root(),
            config,
            config_set: task_set,
            prompt: args.prompt.clone(),
            model: args.model.clone(),
            max_turns: args.max_turns,
            interactive: args.interactive,
            task_type: args.task_type.clone(),
            cwd: &cwd,
            path_var: path_var.as_deref(),
            agent_override: std::env::var_os(plan::AGENT_BIN_ENV).map(PathBuf::from),
            current_exe: std::env::current_exe().ok(),
            env: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
            secrets,
            region,
        });
        return Ok(Created::DryRun {
            text: dry_run_text(&dry_run.plan, &dry_run.spec_path, dry_run.agent_error),
            plan: serde_json::to_value(&dry_run.plan)?,
        });
    }

    let opened = ctx.open()?;
    let mut env = launch_env()?;
    // The secrets' values travel with the rest of the launch environment: held
    // in the coordinator's memory until the launch, never stored (docs/config.md,
    // "Secrets").
    env.extend(secret_env);
    let mut client = ctx.task_client(&opened.state).await?;
    let request = SubmitTaskRequest {
        prompt: args.prompt.clone(),
        workspace: workspace
            .as_ref()
            .map(|w| w.to_string_lossy().into_owned())
            .unwrap_or_default(),
        backend: backend.as_str().into(),
        model: args.model.clone().unwrap_or_default(),
        task_type: args.task_type.clone(),
        max_turns: args.max_turns.unwrap_or(0),
        env,
        interactive: args.interactive,
        no_dispatch: args.no_dispatch,
        allow_large_workspace: args.allow_large_workspace,
        no_user_config: args.no_user_config,
        config_set: task_set,
        secrets,
        region: region.unwrap_or_default(),
    };
    let progress = crate::progress::Progress::start(
        "task_create",
        &match (&workspace, args.no_dispatch) {
            (Some(dir), false) => format!(
                "copying the workspace {} into the session and starting it ({})",
                dir.display(),
                backend.as_str()
            ),
            (Some(dir), true) => format!("recording the task (workspace {})", dir.display()),
            (None, false) => format!("starting the session ({})", backend.as_str()),
            (None, true) => "recording the task".to_string(),
        },
    );
    let request = SubmitBudgetedTaskRequest {
        task: Some(request),
        limits: Some(TaskLimits {
            max_cost_usd: limits.max_cost_usd.unwrap_or(0.0),
            gpu: limits.gpu.clone().unwrap_or_default(),
            cpu: limits.cpu.unwrap_or(0.0),
            memory_mb: limits.memory_mb.unwrap_or(0),
            timeout_seconds: limits.timeout_seconds.unwrap_or(0),
        }),
    };
    // Async, the command returns once the task is recorded and placed (its launch
    // goes on in the coordinator); `--sync` follows the copy until the launch ends.
    let submitted = submit_following_the_copy(&mut client, request, &progress, args.sync).await?;
    progress.finish(true);
    Ok(Created::Submitted {
        submitted,
        backend: backend.as_str(),
    })
}

/// `SubmitBudgetedTaskWithProgress`: the coordinator's reply once the task is
/// recorded and placed; with `until_launched`, then the copy of the workspace into
/// the session shown as `progress` while the coordinator does it, until the launch
/// has ended (the stream's end). A coordinator from before that RPC (still running
/// across an upgrade) gets `SubmitBudgetedTask`.
async fn submit_following_the_copy(
    client: &mut crate::coordinator_client::Client,
    request: SubmitBudgetedTaskRequest,
    progress: &crate::progress::Progress,
    until_launched: bool,
) -> Result<parhelia_proto::SubmitTaskResponse> {
    use parhelia_proto::submit_task_progress::Event;
    let mut stream = match client
        .submit_budgeted_task_with_progress(request.clone())
        .await
    {
        Ok(stream) => stream.into_inner(),
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            return Ok(client
                .submit_budgeted_task(request)
                .await
                .map_err(coordinator_error)?
                .into_inner());
        }
        Err(status) => return Err(coordinator_error(status)),
    };
    // The step each transfer shows, begun at its first figures.
    let mut current: Option<&'static str> = None;
    let mut submitted = None;
    while let Some(message) = stream.message().await.map_err(coordinator_error)? {
        use crate::backend::workspace_copy::WorkspaceStage;
        let (step, figures) = match message.event {
            Some(Event::WorkspaceCopy(f)) => (WorkspaceStage::Copy.step(), f),
            Some(Event::WorkspaceCheckpoint(f)) => (WorkspaceStage::Checkpoint.step(), f),
            Some(Event::WorkspaceUpload(f)) => (WorkspaceStage::Upload.step(), f),
            Some(Event::Submitted(response)) if !until_launched => return Ok(response),
            Some(Event::Submitted(response)) => {
                submitted = Some(response);
                continue;
            }
            None => continue,
        };
        if current != Some(step) {
            current = Some(step);
            progress.step(step);
        }
        progress.transfer(crate::progress::Transfer {
            files_done: figures.files_done,
            files_total: figures.files_total,
            bytes_done: figures.bytes_done,
            bytes_total: figures.bytes_total,
        });
    }
    submitted.ok_or_else(|| anyhow::anyhow!("the coordinator ended the submit without a reply"))
}

/// `Ok` when the watched task completed, else its coded error with advice
/// chosen by what its events show (HTTP status, retries, who stopped it).
pub(crate) fn outcome_with_advice(
    db: &crate::db::Db,
    watched: &crate::watch::WatchedTask,
) -> Result<()> {
    let Err(err) = watched.outcome() else {
        return Ok(());
    };
    let cause = failure_cause(db, &watched.task)?;
    let advice = error_codes::advice(&err.code, &cause);
    Err(err.with_advice(advice).into())
}

/// What the task's events say about why it failed (pages through them;
/// only counters are kept).
fn failure_cause(db: &crate::db::Db, task: &crate::db::TaskRecord) -> Result<error_codes::Cause> {
    let mut cause = error_codes::Cause::new(&task.id, task.session_id.as_deref());
    cause.container_id = task.container_id.clone();
    let mut after = 0;
    loop {
        let events = db.task_events_after(&task.id, after, 500)?;
        let Some(last) = events.last() else {
            return Ok(cause);
        };
        after = last.rowid;
        for stored in &events {
            cause.observe(&stored.event);
        }
    }
}

/// `task create --estimate-only`: the range and its basis, and whether the
/// budget would refuse the dispatch; nothing is launched or recorded.
fn estimate_only(
    ctx: &Ctx,
    args: &CreateArgs,
    backend: &str,
    limits: &crate::budget::TaskLimits,
    secrets: &[String],
) -> Result<Created> {
    let opened = ctx.open()?;
    let config = &opened.config.config;
    let report = crate::service::spend::estimate_task(
        &opened.db,
        config,
        &args.task_type,
        backend,
        limits,
        now_ms(),
    )?;
    let mut text =
        super::budget::estimate_text(&report.estimate, config, report.would_be_refused.as_deref());
    if let Some(list) = limits.gpu.as_deref() {
        let choices = crate::budget::gpu_choices(list);
        if choices.len() > 1 {
            if !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&format!(
                "gpu list   priced at the first choice, {}; when Modal has no capacity for it the next of {} runs instead, at its own rate\n",
                choices[0],
                choices.join(", ")
            ));
        }
    }
    if !secrets.is_empty() {
        // By name only: a secret costs nothing, but the estimate shows what the task carries.
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!(
            "secrets    {} (values not shown)\n",
            secrets.join(", ")
        ));
    }
    Ok(Created::Estimate {
        report: Box::new(report),
        text,
    })
}

fn task_not_found(task_id: &str) -> anyhow::Error {
    coded(
        error_codes::TASK_NOT_FOUND,
        format!("task not found: {task_id}"),
    )
}

/// `task list`'s rows (filtered by `--status`): the one read the CLI and the MCP
/// server's `parhelia_task_list` make.
pub(crate) fn list_tasks(ctx: &Ctx, status: Option<&str>) -> Result<Vec<crate::db::TaskRecord>> {
    let shown = status.map(str::parse::<ShownStatus>).transpose()?;
    let opened = ctx.open()?;
    let mut tasks = opened.db.list_tasks(shown.map(ShownStatus::stored))?;
    if let Some(shown) = shown {
        tasks.retain(|t| shown.matches(t.status, t.dispatch_requested_at_ms.is_some()));
    }
    Ok(tasks)
}

/// `task list --json`'s value.
pub(crate) fn list_json(tasks: &[crate::db::TaskRecord]) -> Result<serde_json::Value> {
    Ok(serde_json::to_value(
        tasks.iter().map(views::TaskView::from).collect::<Vec<_>>(),
    )?)
}

fn list(ctx: &Ctx, status: Option<&str>, json: bool) -> Result<i32> {
    let tasks = list_tasks(ctx, status)?;
    if json {
        print_json(&list_json(&tasks)?)?;
    } else {
        out!(
            "{}",
            views::task_table(&tasks, now_ms(), crate::output_look::stdout_look())
        );
    }
    Ok(0)
}

/// `task show`'s task and its limits (E201 for an unknown id).
pub(crate) fn show_task(ctx: &Ctx, task_id: &str) -> Result<ShownTask> {
    let opened = ctx.open()?;
    let task = opened
        .db
        .get_task(task_id)?
        .ok_or_else(|| task_not_found(task_id))?;
    let limits = opened
        .db
        .task_limits(task_id)?
        .map(|(l, _)| l)
        .unwrap_or_default();
    let over_quota = match &task.session_id {
        Some(session_id) => opened.db.store_over_quota(session_id)?,
        None => None,
    };
    Ok(ShownTask {
        task,
        limits,
        over_quota,
    })
}

/// `task spend`'s series (the MCP tool and the dashboard's chart read the same).
pub(crate) fn spend_series(ctx: &Ctx, task_id: &str) -> Result<crate::spend_series::SpendSeries> {
    let opened = ctx.open()?;
    let (limits, _) = opened
        .db
        .task_limits(task_id)?
        .ok_or_else(|| task_not_found(task_id))?;
    let entries = opened.db.task_ledger_entries(task_id)?;
    Ok(crate::spend_series::series(
        task_id,
        limits.max_cost_usd,
        &entries,
    ))
}

fn spend(ctx: &Ctx, task_id: &str, json: bool) -> Result<i32> {
    use crate::budget::usd;
    let series = spend_series(ctx, task_id)?;
    if json {
        print_json(&serde_json::to_value(&series)?)?;
        return Ok(0);
    }
    let ceiling = series
        .ceiling_usd
        .map_or_else(|| "none (no --max-cost)".to_string(), usd);
    outln!("{}", labelled("task", task_id));
    outln!("{}", labelled("ceiling", &ceiling));
    if series.points.is_empty() {
        outln!("no spend recorded yet");
        return Ok(0);
    }
    if series.thinned {
        outln!(
            "{} ledger rows; {} of them shown, evenly spaced, with the last",
            series.rows,
            series.points.len()
        );
    }
    let mut table = crate::table::Table::new(2)
        .whole("AT", 24)
        .whole("KIND", 7)
        .number("AMOUNT", 8)
        .number("COMPUTE", 8)
        .number("MODEL", 8)
        .number("STORAGE", 8)
        .number("TOTAL", 8);
    for p in &series.points {
        table.row(vec![
            p.at.as_str().into(),
            p.kind.as_str().into(),
            usd(p.amount_usd).into(),
            usd(p.compute_usd).into(),
            usd(p.model_usd).into(),
            usd(p.storage_usd).into(),
            usd(p.total_usd).into(),
        ]);
    }
    out!("{}", table.render_as(crate::output_look::stdout_look()));
    Ok(0)
}

/// What `task show` shows: the task, its limits, and whether its session's store is
/// over its quota (E623, from the journal's `store_over_quota`).
pub(crate) struct ShownTask {
    pub task: crate::db::TaskRecord,
    pub limits: crate::budget::TaskLimits,
    pub over_quota: Option<parhelia_proto::StoreOverQuota>,
}

/// `task show --json`'s value.
pub(crate) fn show_json(shown: &ShownTask) -> Result<serde_json::Value> {
    let ShownTask {
        task,
        limits,
        over_quota,
    } = shown;
    let mut value = serde_json::to_value(views::TaskView::from(task))?;
    // Present only while the session's store is over its quota (E623).
    if let Some(q) = over_quota {
        value["store_over_quota"] = serde_json::json!({
            "code": crate::error_codes::CHECKPOINT_QUOTA.code,
            "checkpoint_id": q.checkpoint_id,
            "store_bytes": q.store_bytes,
            "quota_bytes": q.quota_bytes,
        });
    }
    // The same figures as the top-level ones (kept for older readers).
    value["budget"] = serde_json::json!({
        "compute_usd": task.spend.compute_usd,
        "model_usd": task.spend.model_usd,
        "storage_usd": task.spend.storage_usd,
        "total_usd": task.spend.cost_usd,
        "limits": limits,
    });
    Ok(value)
}

fn show(ctx: &Ctx, task_id: &str, json: bool) -> Result<i32> {
    let shown = show_task(ctx, task_id)?;
    if json {
        print_json(&show_json(&shown)?)?;
    } else {
        let ShownTask {
            task,
            limits,
            over_quota,
        } = &shown;
        out!("{}", views::task_detail(task));
        if let Some(max) = limits.max_cost_usd {
            use crate::budget::usd;
            outln!(
                "{}",
                labelled(
                    "ceiling",
                    &format!(
                        "{} (--max-cost), {} spent",
                        usd(max),
                        usd(task.spend.cost_usd)
                    )
                )
            );
        }
        if let (Some(session_id), Some(q)) = (&task.session_id, &over_quota) {
            out!(
                "{}",
                crate::term::escape_untrusted_text(&crate::checkpoints::over_quota_text(
                    session_id, q
                ))
            );
        }
    }
    Ok(0)
}

async fn watch(ctx: &Ctx, task_id: &str, json: bool) -> Result<i32> {
    let opened = ctx.open()?;
    let task = opened
        .db
        .get_task(task_id)?
        .ok_or_else(|| task_not_found(task_id))?;
    if !task.status.has_ended() {
        // Events reach the database through the coordinator: make sure one
        // is running (a restarted one re-attaches and catches up).
        ctx.client(&opened.state).await?;
    }
    if json {
        let watched = watch_task_events(&opened.db, task_id, |stored| {
            json_line(&views::EventLine::new(&stored.event));
        })
        .await?;
        json_line(&views::TaskEndedLine::from(&watched.task));
        outcome_with_advice(&opened.db, &watched)?;
        return Ok(0);
    }
    let watched = watch_task(&opened.db, task_id, |line| outln!("{line}")).await?;
    outln!("{}", escape_untrusted_text(&watched.summary()));
    outcome_with_advice(&opened.db, &watched)?;
    Ok(0)
}

/// `task dispatch`'s call: the coordinator's `DispatchTasks` (every pending task when
/// no id is given, as `--all`).
pub(crate) async fn dispatch_call(
    ctx: &Ctx,
    task_ids: Vec<String>,
    all: bool,
    dry_run: bool,
) -> Result<parhelia_proto::DispatchTasksResponse> {
    // Bare `parhelia task dispatch` (the seeds' command) dispatches every
    // pending task, as `--all` does.
    let all = all || task_ids.is_empty();
    let opened = ctx.open()?;
    let env = if dry_run {
        HashMap::new()
    } else {
        let mut env = launch_env()?;
        let pending = opened.db.list_tasks(Some(TaskStatus::Pending))?;
        env.extend(secret_env_for(
            pending.iter().filter(|t| all || task_ids.contains(&t.id)),
        ));
        env
    };
    let mut client = ctx.client(&opened.state).await?;
    Ok(client
        .dispatch_tasks(DispatchTasksRequest {
            task_ids,
            all,
            dry_run,
            env,
        })
        .await
        .map_err(coordinator_error)?
        .into_inner())
}

/// `task dispatch --json`'s value.
pub(crate) fn dispatch_json(
    dry_run: bool,
    response: &parhelia_proto::DispatchTasksResponse,
) -> serde_json::Value {
    serde_json::json!({
        "dry_run": dry_run,
        "dispatched": response.dispatched.iter().map(|d| serde_json::json!({
            "task_id": d.task_id,
            "session_id": Some(&d.session_id).filter(|s| !s.is_empty()),
            "container_id": Some(&d.container_id).filter(|s| !s.is_empty()),
        })).collect::<Vec<_>>(),
        "queued": response.queued.iter().map(|q| serde_json::json!({
            "task_id": q.task_id, "position": q.position,
        })).collect::<Vec<_>>(),
        "failed": response.failed.iter().map(|f| serde_json::json!({
            "task_id": f.task_id, "error_code": f.error_code, "message": f.message,
        })).collect::<Vec<_>>(),
        "running": response.running,
        "max_concurrent_workers": response.max_concurrent_workers,
    })
}

/// The first task that failed to launch, as the coded error `task dispatch` ends with.
pub(crate) fn dispatch_failure(
    response: &parhelia_proto::DispatchTasksResponse,
) -> Option<anyhow::Error> {
    response.failed.first().map(|f| {
        let code = error_codes::lookup_or_family(&f.error_code);
        coded(
            code,
            format!("task {} failed to launch: {}", f.task_id, f.message),
        )
    })
}

/// [`dispatch_call`] over `DispatchTasksWithProgress`: the workspace transfers of the
/// tasks it launches shown as progress (op `task_dispatch`, begun at the first
/// transfer: a dispatch that moves no workspace shows none). A coordinator from
/// before that RPC gets `DispatchTasks`.
async fn dispatch_following_the_transfers(
    ctx: &Ctx,
    task_ids: Vec<String>,
    all: bool,
    dry_run: bool,
) -> Result<parhelia_proto::DispatchTasksResponse> {
    use parhelia_proto::dispatch_tasks_progress::Event;
    if dry_run {
        return dispatch_call(ctx, task_ids, all, dry_run).await;
    }
    let all = all || task_ids.is_empty();
    let opened = ctx.open()?;
    let mut env = launch_env()?;
    let pending = opened.db.list_tasks(Some(TaskStatus::Pending))?;
    env.extend(secret_env_for(
        pending.iter().filter(|t| all || task_ids.contains(&t.id)),
    ));
    let request = DispatchTasksRequest {
        task_ids,
        all,
        dry_run,
        env,
    };
    let mut client = ctx.client(&opened.state).await?;
    let mut stream = match client.dispatch_tasks_with_progress(request.clone()).await {
        Ok(stream) => stream.into_inner(),
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            return Ok(client
                .dispatch_tasks(request)
                .await
                .map_err(coordinator_error)?
                .into_inner());
        }
        Err(status) => return Err(coordinator_error(status)),
    };
    let mut progress: Option<crate::progress::Progress> = None;
    let mut current: Option<(String, String)> = None;
    let result = async {
        while let Some(message) = stream.message().await.map_err(coordinator_error)? {
            match message.event {
                Some(Event::Workspace(t)) => {
                    let stage = crate::backend::workspace_copy::WorkspaceStage::ALL
                        .into_iter()
                        .find(|s| s.as_str() == t.stage);
                    let (Some(stage), Some(figures)) = (stage, t.figures) else {
                        continue;
                    };
                    let step = format!("task {}: {}", t.task_id, stage.step());
                    let key = (t.task_id.clone(), t.stage.clone());
                    match &progress {
                        None => {
                            progress =
                                Some(crate::progress::Progress::start("task_dispatch", &step))
                        }
                        Some(p) if current.as_ref() != Some(&key) => p.step(&step),
                        Some(_) => {}
                    }
                    current = Some(key);
                    if let Some(p) = &progress {
                        p.transfer(crate::progress::Transfer {
                            files_done: figures.files_done,
                            files_total: figures.files_total,
                            bytes_done: figures.bytes_done,
                            bytes_total: figures.bytes_total,
                        });
                    }
                }
                Some(Event::Dispatched(response)) => return Ok(response),
                None => {}
            }
        }
        Err(anyhow::anyhow!(
            "the coordinator ended the dispatch without a reply"
        ))
    }
    .await;
    if let Some(p) = progress {
        p.finish(result.is_ok());
    }
    result
}

async fn dispatch(
    ctx: &Ctx,
    task_ids: Vec<String>,
    all: bool,
    dry_run: bool,
    json: bool,
) -> Result<i32> {
    let response = dispatch_following_the_transfers(ctx, task_ids, all, dry_run).await?;

    if json {
        print_json(&dispatch_json(dry_run, &response))?;
    } else {
        if dry_run {
            outln!("dry run: nothing was dispatched");
        }
        let verb = if dry_run {
            "would dispatch"
        } else {
            "dispatched"
        };
        for d in &response.dispatched {
            if d.container_id.is_empty() {
                outln!("{verb:<15}{}", d.task_id);
            } else {
                outln!("{verb:<15}{} → {}", d.task_id, d.container_id);
            }
        }
        for q in &response.queued {
            outln!("{:<15}{} (position {})", "queued", q.task_id, q.position);
        }
        for f in &response.failed {
            outln!(
                "{:<15}{} [{}] {}",
                "failed",
                f.task_id,
                f.error_code,
                f.message
            );
        }
        outln!(
            "workers        {} running of {}",
            response.running,
            response.max_concurrent_workers
        );
    }
    match dispatch_failure(&response) {
        Some(err) => Err(err),
        None => Ok(0),
    }
}

/// `task cancel`'s call: the transition checked here (E2xx before anything is
/// asked), then the coordinator's `CancelTask`.
pub(crate) async fn cancel_call(
    ctx: &Ctx,
    task_id: &str,
    reason: Option<String>,
) -> Result<parhelia_proto::CancelTaskResponse> {
    let opened = ctx.open()?;
    opened.db.check_transition(task_id, TaskStatus::Cancelled)?;
    let mut client = ctx.client(&opened.state).await?;
    Ok(client
        .cancel_task(CancelTaskRequest {
            task_id: task_id.to_string(),
            reason: reason.unwrap_or_default(),
        })
        .await
        .map_err(coordinator_error)?
        .into_inner())
}

/// `task cancel --json`'s value.
pub(crate) fn cancel_json(response: &parhelia_proto::CancelTaskResponse) -> serde_json::Value {
    serde_json::json!({
        "task_id": response.task_id,
        "status": response.status,
        "container_id": Some(&response.container_id).filter(|s| !s.is_empty()),
        "container_state": Some(&response.container_state).filter(|s| !s.is_empty()),
        "checkpoint_id": Some(&response.checkpoint_id).filter(|s| !s.is_empty()),
    })
}

async fn cancel(ctx: &Ctx, task_id: &str, reason: Option<String>, json: bool) -> Result<i32> {
    let response = cancel_call(ctx, task_id, reason).await?;
    if json {
        print_json(&cancel_json(&response))?;
    } else {
        outln!("{} {}", response.task_id, response.status);
        if !response.container_id.is_empty() {
            outln!(
                "  container  {} {}",
                response.container_id,
                response.container_state
            );
        }
        outln!(
            "  checkpoint {}",
            if response.checkpoint_id.is_empty() {
                "none on the session's volume"
            } else {
                &response.checkpoint_id
            }
        );
    }
    Ok(0)
}

/// `task retry`'s call: the transition checked here, then the coordinator's
/// `RetryTask`.
pub(crate) async fn retry_call(
    ctx: &Ctx,
    task_id: &str,
) -> Result<parhelia_proto::RetryTaskResponse> {
    let opened = ctx.open()?;
    opened.db.check_transition(task_id, TaskStatus::Pending)?;
    let mut env = launch_env()?;
    env.extend(secret_env_for(opened.db.get_task(task_id)?.as_ref()));
    let mut client = ctx.client(&opened.state).await?;
    Ok(client
        .retry_task(RetryTaskRequest {
            task_id: task_id.to_string(),
            env,
        })
        .await
        .map_err(coordinator_error)?
        .into_inner())
}

/// `task retry --json`'s value.
pub(crate) fn retry_json(response: &parhelia_proto::RetryTaskResponse) -> serde_json::Value {
    serde_json::json!({
        "task_id": response.task_id,
        "attempt": response.attempt,
        "session_id": Some(&response.session_id).filter(|s| !s.is_empty()),
        "container_id": Some(&response.container_id).filter(|s| !s.is_empty()),
        "queued": response.queued,
        "queue_position": Some(response.queue_position).filter(|_| response.queued),
    })
}

async fn retry(ctx: &Ctx, task_id: &str, json: bool) -> Result<i32> {
    let response = retry_call(ctx, task_id).await?;
    if json {
        print_json(&retry_json(&response))?;
    } else {
        outln!("{} attempt {}", response.task_id, response.attempt);
        if response.queued {
            outln!("  queued     position {}", response.queue_position);
        } else {
            outln!("  session    {}", response.session_id);
            outln!("  container  {}", response.container_id);
        }
        outln!("  watch      parhelia task watch {}", response.task_id);
    }
    Ok(0)
}

/// `task delete`'s call: only ended tasks (E605 otherwise, before anything is asked),
/// then the coordinator's `DeleteTasks`.
pub(crate) async fn delete_call(
    ctx: &Ctx,
    task_ids: Vec<String>,
) -> Result<parhelia_proto::DeleteTasksResponse> {
    let opened = ctx.open()?;
    for id in &task_ids {
        let task = opened.db.get_task(id)?.ok_or_else(|| task_not_found(id))?;
        if !task.status.has_ended() {
            return Err(coded(
                error_codes::TASK_STILL_ACTIVE,
                format!(
                    "task {id} is {}; only ended tasks can be deleted",
                    task.status
                ),
            ));
        }
    }
    let mut client = ctx.client(&opened.state).await?;
    Ok(client
        .delete_tasks(DeleteTasksRequest { task_ids })
        .await
        .map_err(coordinator_error)?
        .into_inner())
}

/// `task delete --json`'s value.
pub(crate) fn delete_json(response: &parhelia_proto::DeleteTasksResponse) -> serde_json::Value {
    serde_json::json!({
        "deleted": response.deleted,
        "removed_dirs": response.removed_dirs,
    })
}

async fn delete(ctx: &Ctx, task_ids: Vec<String>, json: bool) -> Result<i32> {
    let response = delete_call(ctx, task_ids).await?;
    if json {
        print_json(&delete_json(&response))?;
    } else {
        for id in &response.deleted {
            outln!("deleted {id}");
        }
        outln!("removed {} director(ies)", response.removed_dirs);
    }
    Ok(0)
}

#[derive(Serialize)]
struct CleanupView {
    dry_run: bool,
    tasks: Vec<views::TaskView>,
}

async fn cleanup(
    ctx: &Ctx,
    statuses: &[String],
    older_than: Option<&str>,
    dry_run: bool,
    json: bool,
) -> Result<i32> {
    let statuses: Vec<TaskStatus> = statuses
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let older_than_ms = older_than.map(parse_duration_ms).transpose()?;
    let opened = ctx.open()?;
    let selected = queue::select_for_cleanup(
        &opened.db.cleanup_candidates()?,
        &statuses,
        older_than_ms,
        now_ms(),
    )?;
    let tasks: Vec<_> = selected
        .iter()
        .filter_map(|id| opened.db.get_task(id).transpose())
        .collect::<Result<_>>()?;
    if dry_run || tasks.is_empty() {
        if json {
            print_json(&CleanupView {
                dry_run,
                tasks: tasks.iter().map(views::TaskView::from).collect(),
            })?;
        } else {
            if dry_run {
                outln!("dry run: nothing was deleted");
            }
            if tasks.is_empty() {
                outln!("no tasks to clean up");
            } else {
                out!(
                    "{}",
                    views::task_table(&tasks, now_ms(), crate::output_look::stdout_look())
                );
            }
        }
        return Ok(0);
    }
    let mut client = ctx.client(&opened.state).await?;
    let response = client
        .delete_tasks(DeleteTasksRequest {
            task_ids: selected.clone(),
        })
        .await
        .map_err(coordinator_error)?
        .into_inner();
    if json {
        print_json(&CleanupView {
            dry_run,
            tasks: tasks.iter().map(views::TaskView::from).collect(),
        })?;
    } else {
        out!(
            "{}",
            views::task_table(&tasks, now_ms(), crate::output_look::stdout_look())
        );
        outln!(
            "deleted {} task(s), removed {} director(ies)",
            response.deleted.len(),
            response.removed_dirs
        );
    }
    Ok(0)
}

#[cfg(test)]
mod memory_tests {
    use super::parse_memory_mb;

    #[test]
    fn memory_is_gib_unless_a_unit_says_otherwise() {
        assert_eq!(parse_memory_mb("32").unwrap(), 32 * 1024);
        assert_eq!(parse_memory_mb("16GiB").unwrap(), 16 * 1024);
        assert_eq!(parse_memory_mb("1.5g").unwrap(), 1536);
        assert_eq!(parse_memory_mb("512MiB").unwrap(), 512);
        assert_eq!(parse_memory_mb("512m").unwrap(), 512);
        for bad in ["", "lots", "12TB", "0"] {
            assert!(parse_memory_mb(bad).is_err(), "{bad}");
        }
    }
}
