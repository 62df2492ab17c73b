//! The `parhelia` command line: arguments (clap), one handler per command,
//! and [`report_error`], the one place that turns errors into a message on
//! stderr and an exit status (see [`crate::error_codes`] for the statuses).
//!
//! Reads go straight to SQLite; commands that change something talk to the
//! coordinator over its socket, starting it when it is not running.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use parhelia_proto::{ShutdownRequest, SubmitTaskRequest};

use crate::backend::isolation::{self, ISOLATION_ENV};
use crate::binaries::{resolve_agent_bin, resolve_claude_bin};
use crate::coordinator_client;
use crate::db::Db;
use crate::error::{CodedError, coded, find_coded};
use crate::error_codes::{self, ErrorCode};
use crate::ids::now_ms;
use crate::plan::{self, DryRunPlan, LaunchIds, SessionRequest};
use crate::render::labelled;
use crate::state_dir::StateDir;
use crate::task_state::TaskStatus;
use crate::views;
use crate::watch::watch_task;

/// Run Claude Code sessions in containers, and keep track of them.
#[derive(Parser, Debug)]
#[command(name = "parhelia", version, disable_help_subcommand = true)]
pub struct Cli {
    /// Use this state directory instead of discovering one (default: the
    /// nearest `.parhelia/` above the current directory, else
    /// `$PARHELIA_HOME`, else `~/.parhelia`)
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create, list, show and watch tasks
    #[command(visible_alias = "t", subcommand)]
    Task(TaskCommand),
    /// List and show sessions
    #[command(visible_alias = "s", subcommand)]
    Session(SessionCommand),
    /// Is the coordinator up, tasks by status, running sessions, cost
    Status {
        /// Print one JSON object
        #[arg(long)]
        json: bool,
    },
    /// Run, stop or check the coordinator (the control plane)
    #[command(subcommand)]
    Coordinator(CoordinatorCommand),
    /// Help for a command or an error code: `parhelia help task create`,
    /// `parhelia help E201`, `parhelia help codes`
    Help {
        /// A command (`task`, `task create`…), an error code (`E201`) or `codes`
        topic: Vec<String>,
    },
    /// Internal: leave the session (setsid) and exec a program.
    #[command(name = "internal-detach", hide = true)]
    InternalDetach {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<OsString>,
    },
}

#[derive(Subcommand, Debug)]
pub enum TaskCommand {
    /// Create a task: run Claude Code on PROMPT in a new session
    Create(CreateArgs),
    /// List tasks, newest first
    List {
        /// Only tasks in this status (pending, running, completed, failed,
        /// cancelled, interrupted)
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
    /// Print a task's events as they happen, until it ends; the exit status
    /// is the task's outcome
    Watch { task_id: String },
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// The instruction for Claude Code
    pub prompt: String,
    /// Directory to copy into the session (with `.git`); default: an empty workspace
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// Stream progress and exit with the task's outcome
    #[arg(long, conflicts_with = "dry_run")]
    pub sync: bool,
    /// Validate and show what would be launched, without launching or recording anything
    #[arg(long)]
    pub dry_run: bool,
    /// Claude model (default: Claude Code's)
    #[arg(long, value_name = "M")]
    pub model: Option<String>,
    /// Stop after N agentic turns
    #[arg(long, value_name = "N")]
    pub max_turns: Option<u32>,
    /// Task type (generic, code_fix, test, build, lint, refactor…)
    #[arg(long = "type", value_name = "T", default_value = "generic")]
    pub task_type: String,
    /// Where to run: local
    #[arg(long, value_name = "B", default_value = "local")]
    pub backend: String,
    /// Print JSON (with --sync: the finished task)
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum SessionCommand {
    /// List sessions, newest first
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one session
    Show {
        session_id: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum CoordinatorCommand {
    /// Run the coordinator in the foreground
    Run {
        /// Leave the terminal's session (used when the CLI starts it)
        #[arg(long, hide = true)]
        detached: bool,
    },
    /// Ask the running coordinator to stop (sessions keep running)
    Stop,
    /// Is the coordinator running?
    Status {
        #[arg(long)]
        json: bool,
    },
}

/// Runs the CLI; returns the process exit status.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return err.exit_code();
        }
    };
    if let Command::InternalDetach { command } = &cli.command {
        return crate::backend::local::detach_and_exec(command);
    }
    let is_coordinator = matches!(
        cli.command,
        Command::Coordinator(CoordinatorCommand::Run { .. })
    );
    if let Command::Coordinator(CoordinatorCommand::Run { detached: true }) = cli.command {
        crate::daemon::detach_from_terminal();
    }
    init_tracing(is_coordinator);

    let runtime = if is_coordinator {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(err) => {
            return report_error(&anyhow::Error::new(err).context("starting the async runtime"));
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(status) => status,
        Err(err) => report_error(&err),
    }
}

fn init_tracing(is_coordinator: bool) {
    use std::io::IsTerminal;
    let default = if is_coordinator { "info" } else { "warn" };
    let filter = std::env::var("PARHELIA_LOG")
        .ok()
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// The one place errors become text and exit statuses.
pub fn report_error(err: &anyhow::Error) -> i32 {
    match find_coded(err) {
        Some(coded) => report_coded(&coded.code, &coded.message),
        None => {
            eprintln!("error: {err:#}");
            1
        }
    }
}

fn report_coded(code: &ErrorCode, message: &str) -> i32 {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "error[{}]: {message}", code.code);
    let _ = writeln!(stderr, "  hint: {}", code.hint());
    code.exit_status()
}

async fn run(cli: Cli) -> Result<i32> {
    let state_dir = cli.state_dir.as_deref();
    match cli.command {
        Command::Task(TaskCommand::Create(args)) => task_create(state_dir, args).await,
        Command::Task(TaskCommand::List { status, json }) => {
            task_list(state_dir, status.as_deref(), json)
        }
        Command::Task(TaskCommand::Show { task_id, json }) => task_show(state_dir, &task_id, json),
        Command::Task(TaskCommand::Watch { task_id }) => task_watch(state_dir, &task_id).await,
        Command::Session(SessionCommand::List { json }) => session_list(state_dir, json),
        Command::Session(SessionCommand::Show { session_id, json }) => {
            session_show(state_dir, &session_id, json)
        }
        Command::Status { json } => status(state_dir, json).await,
        Command::Coordinator(CoordinatorCommand::Run { .. }) => {
            crate::daemon::run(StateDir::discover(state_dir).map_err(state_error)?).await?;
            Ok(0)
        }
        Command::Coordinator(CoordinatorCommand::Stop) => coordinator_stop(state_dir).await,
        Command::Coordinator(CoordinatorCommand::Status { json }) => {
            coordinator_status(state_dir, json).await
        }
        Command::Help { topic } => help(&topic),
        Command::InternalDetach { .. } => unreachable!("handled before the runtime starts"),
    }
}

fn state_error(err: std::io::Error) -> anyhow::Error {
    coded(
        error_codes::STATE_UNAVAILABLE,
        format!("cannot find the state directory: {err}"),
    )
}

/// The state directory, created if needed, and its database.
fn open_state(state_dir: Option<&Path>) -> Result<(StateDir, Db)> {
    let mut state = StateDir::discover(state_dir).map_err(state_error)?;
    state.ensure().map_err(|e| {
        coded(
            error_codes::STATE_UNAVAILABLE,
            format!(
                "cannot create the state directory {}: {e}",
                state.root().display()
            ),
        )
    })?;
    let db = Db::open(&state.db_path())?;
    Ok((state, db))
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A status from the coordinator as an error: coded when it carries a code,
/// E504 when the coordinator could not be reached.
fn coordinator_error(status: tonic::Status) -> anyhow::Error {
    if let Some(coded) = CodedError::from_status(&status) {
        return coded.into();
    }
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown => coded(
            error_codes::COORDINATOR_UNAVAILABLE,
            format!("the coordinator stopped answering: {}", status.message()),
        ),
        _ => anyhow::anyhow!("the coordinator failed: {}", status.message()),
    }
}

async fn task_create(state_dir: Option<&Path>, args: CreateArgs) -> Result<i32> {
    plan::validate_prompt(&args.prompt)?;
    let backend = plan::parse_backend(&args.backend)?;
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
    let claude_override = std::env::var_os(plan::CLAUDE_BIN_ENV);
    let path_var = std::env::var_os("PATH");
    let claude_bin = resolve_claude_bin(claude_override.as_deref(), path_var.as_deref(), &cwd)?;
    let agent_override = std::env::var_os(plan::AGENT_BIN_ENV).map(PathBuf::from);
    let mut env = plan::forwarded_env(
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
    );

    // Decided here too, so a bad setting fails before anything is recorded.
    let isolation_setting = std::env::var(ISOLATION_ENV).ok();
    let isolation = isolation::decide(isolation_setting.as_deref(), isolation::bwrap_works)?;
    if args.dry_run {
        let state = StateDir::discover(state_dir).map_err(state_error)?;
        let ids = LaunchIds::placeholders();
        let layout = plan::local_layout(state.root(), &ids.session_id, &ids.container_id);
        let session = SessionRequest {
            prompt: args.prompt.clone(),
            model: args.model.clone(),
            max_turns: args.max_turns,
            interactive: false,
        };
        let agent_bin = resolve_agent_bin(
            agent_override.as_deref(),
            std::env::current_exe().ok().as_deref(),
            path_var.as_deref(),
            &cwd,
        );
        let dry_run = DryRunPlan {
            dry_run: true,
            backend,
            workspace_source: workspace,
            claude_bin: claude_bin.clone(),
            agent_bin: agent_bin.as_ref().ok().cloned(),
            model: session.model.clone().filter(|m| !m.is_empty()),
            task_type: args.task_type.clone(),
            state_dir: state.root().to_path_buf(),
            isolation,
            env_names: env.keys().cloned().collect(),
            spec: plan::agent_spec(
                &session,
                &ids,
                &layout,
                &claude_bin,
                plan::heartbeat_interval_ms(
                    std::env::var(plan::HEARTBEAT_INTERVAL_ENV).ok().as_deref(),
                ),
            ),
        };
        if args.json {
            print_json(&dry_run)?;
        } else {
            print!(
                "{}",
                dry_run_text(&dry_run, &layout.spec_path, agent_bin.err())
            );
        }
        return Ok(0);
    }

    let (state, db) = open_state(state_dir)?;
    env.insert(
        plan::CLAUDE_BIN_ENV.into(),
        claude_bin.to_string_lossy().into_owned(),
    );
    if let Some(agent) = agent_override.filter(|p| !p.as_os_str().is_empty()) {
        let agent = cwd.join(agent);
        env.insert(
            plan::AGENT_BIN_ENV.into(),
            agent.to_string_lossy().into_owned(),
        );
    }
    if let Some(setting) = isolation_setting {
        env.insert(ISOLATION_ENV.into(), setting);
    }
    let mut client = coordinator_client::connect_or_start(&state).await?;
    let request = SubmitTaskRequest {
        prompt: args.prompt.clone(),
        workspace: workspace
            .map(|w| w.to_string_lossy().into_owned())
            .unwrap_or_default(),
        backend: backend.as_str().into(),
        model: args.model.clone().unwrap_or_default(),
        task_type: args.task_type.clone(),
        max_turns: args.max_turns.unwrap_or(0),
        env: env.into_iter().collect(),
        interactive: false,
    };
    let submitted = client
        .submit_task(request)
        .await
        .map_err(coordinator_error)?
        .into_inner();

    if !args.sync {
        if args.json {
            print_json(&serde_json::json!({
                "task_id": submitted.task_id,
                "session_id": submitted.session_id,
                "container_id": submitted.container_id,
            }))?;
        } else {
            println!("{}", submitted.task_id);
            println!("  session    {}", submitted.session_id);
            println!("  container  {}", submitted.container_id);
            println!("  watch      parhelia task watch {}", submitted.task_id);
        }
        return Ok(0);
    }

    let quiet = args.json;
    if !quiet {
        println!(
            "{}",
            labelled(
                "task",
                &format!(
                    "{} · session {} · {}",
                    submitted.task_id,
                    submitted.session_id,
                    backend.as_str()
                )
            )
        );
    }
    let watched = watch_task(&db, &submitted.task_id, |line| {
        if !quiet {
            println!("{line}");
        }
    })
    .await?;
    if quiet {
        print_json(&views::TaskView::from(&watched.task))?;
    } else {
        println!("{}", watched.summary());
    }
    watched.outcome()?;
    Ok(0)
}

fn dry_run_text(plan: &DryRunPlan, spec_path: &Path, agent_error: Option<CodedError>) -> String {
    let mut out = String::from("dry run: nothing was launched or recorded\n");
    let mut field = |name: &str, value: String| out.push_str(&format!("{name:<11}{value}\n"));
    field("backend", plan.backend.as_str().into());
    field(
        "workspace",
        match &plan.workspace_source {
            Some(dir) => format!("{} (copied into the session)", dir.display()),
            None => "none (the session starts with an empty workspace)".into(),
        },
    );
    field("claude", plan.claude_bin.display().to_string());
    field(
        "agent",
        match (&plan.agent_bin, agent_error) {
            (Some(agent), _) => agent.display().to_string(),
            (None, Some(err)) => {
                format!("{} [{}] (a launch would fail)", err.message, err.code.code)
            }
            (None, None) => "not found".into(),
        },
    );
    field(
        "model",
        plan.model.clone().unwrap_or_else(|| "default".into()),
    );
    field("type", plan.task_type.clone());
    field("isolation", plan.isolation.as_str().into());
    field("state", plan.state_dir.display().to_string());
    field(
        "env",
        if plan.env_names.is_empty() {
            "none".into()
        } else {
            format!("{} (values not shown)", plan.env_names.join(", "))
        },
    );
    field("spec", spec_path.display().to_string());
    out.push_str(&serde_json::to_string_pretty(&plan.spec).unwrap_or_default());
    out.push('\n');
    out
}

fn task_list(state_dir: Option<&Path>, status: Option<&str>, json: bool) -> Result<i32> {
    let status = status.map(str::parse::<TaskStatus>).transpose()?;
    let (_, db) = open_state(state_dir)?;
    let tasks = db.list_tasks(status)?;
    if json {
        print_json(&tasks.iter().map(views::TaskView::from).collect::<Vec<_>>())?;
    } else {
        print!("{}", views::task_table(&tasks, now_ms()));
    }
    Ok(0)
}

fn task_not_found(task_id: &str) -> anyhow::Error {
    coded(
        error_codes::TASK_NOT_FOUND,
        format!("task not found: {task_id}"),
    )
}

fn task_show(state_dir: Option<&Path>, task_id: &str, json: bool) -> Result<i32> {
    let (_, db) = open_state(state_dir)?;
    let task = db
        .get_task(task_id)?
        .ok_or_else(|| task_not_found(task_id))?;
    if json {
        print_json(&views::TaskView::from(&task))?;
    } else {
        print!("{}", views::task_detail(&task));
    }
    Ok(0)
}

async fn task_watch(state_dir: Option<&Path>, task_id: &str) -> Result<i32> {
    let (state, db) = open_state(state_dir)?;
    let task = db
        .get_task(task_id)?
        .ok_or_else(|| task_not_found(task_id))?;
    if !task.status.has_ended() {
        // Events reach the database through the coordinator: make sure one
        // is running (a restarted one re-attaches and catches up).
        coordinator_client::connect_or_start(&state).await?;
    }
    let watched = watch_task(&db, task_id, |line| println!("{line}")).await?;
    println!("{}", watched.summary());
    watched.outcome()?;
    Ok(0)
}

fn session_list(state_dir: Option<&Path>, json: bool) -> Result<i32> {
    let (_, db) = open_state(state_dir)?;
    let sessions = db.list_sessions()?;
    if json {
        print_json(
            &sessions
                .iter()
                .map(views::SessionView::from)
                .collect::<Vec<_>>(),
        )?;
    } else {
        print!("{}", views::session_table(&sessions, now_ms()));
    }
    Ok(0)
}

fn session_show(state_dir: Option<&Path>, session_id: &str, json: bool) -> Result<i32> {
    let (_, db) = open_state(state_dir)?;
    let session = db.get_session(session_id)?.ok_or_else(|| {
        coded(
            error_codes::SESSION_NOT_FOUND,
            format!("session not found: {session_id}"),
        )
    })?;
    if json {
        print_json(&views::SessionView::from(&session))?;
    } else {
        print!("{}", views::session_detail(&session));
    }
    Ok(0)
}

async fn coordinator_view(state: &StateDir) -> views::CoordinatorView {
    let pong = coordinator_client::ping(state).await.map(|(_, pong)| pong);
    views::CoordinatorView {
        running: pong.is_some(),
        pid: pong.as_ref().map(|p| p.pid),
        version: pong.map(|p| p.version),
        socket: state.socket_path().to_string_lossy().into_owned(),
    }
}

async fn status(state_dir: Option<&Path>, json: bool) -> Result<i32> {
    let (state, db) = open_state(state_dir)?;
    let view = views::StatusView {
        state_dir: state.root().to_string_lossy().into_owned(),
        coordinator: coordinator_view(&state).await,
        tasks: db.task_counts()?,
        running_sessions: db
            .running_sessions()?
            .iter()
            .map(views::RunningSessionView::from)
            .collect(),
        cost_usd: db.total_cost_usd()?,
    };
    if json {
        print_json(&view)?;
    } else {
        print!("{}", views::status_text(&view));
    }
    Ok(0)
}

async fn coordinator_status(state_dir: Option<&Path>, json: bool) -> Result<i32> {
    let state = StateDir::discover(state_dir).map_err(state_error)?;
    let view = coordinator_view(&state).await;
    if json {
        print_json(&serde_json::json!({
            "running": view.running,
            "pid": view.pid,
            "version": view.version,
            "socket": view.socket,
            "state_dir": state.root(),
        }))?;
    } else if view.running {
        println!(
            "coordinator running (pid {}, version {})",
            view.pid.unwrap_or_default(),
            view.version.as_deref().unwrap_or("?")
        );
        println!("  state   {}", state.root().display());
        println!("  socket  {}", view.socket);
        println!("  log     {}", state.log_path().display());
    } else {
        println!("coordinator not running (commands start it on demand)");
    }
    Ok(0)
}

async fn coordinator_stop(state_dir: Option<&Path>) -> Result<i32> {
    let state = StateDir::discover(state_dir).map_err(state_error)?;
    let Some((mut client, pong)) = coordinator_client::ping(&state).await else {
        println!("coordinator not running");
        return Ok(0);
    };
    client
        .shutdown(ShutdownRequest {})
        .await
        .map_err(coordinator_error)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while coordinator_client::ping(&state).await.is_some() {
        if std::time::Instant::now() > deadline {
            return Err(coded(
                error_codes::COORDINATOR_UNAVAILABLE,
                format!("the coordinator (pid {}) did not stop within 15s", pong.pid),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("coordinator stopped (pid {})", pong.pid);
    Ok(0)
}

/// `parhelia help [TOPIC…]`.
fn help(topic: &[String]) -> Result<i32> {
    let mut command = Cli::command();
    let Some(first) = topic.first() else {
        println!("{}", command.render_long_help());
        return Ok(0);
    };
    if first.eq_ignore_ascii_case("codes") {
        print!("{}", codes_text());
        return Ok(0);
    }
    if let Some(code) = error_codes::lookup(first) {
        print!("{}", code_help_text(code));
        return Ok(0);
    }
    let mut current = &mut command;
    for (depth, word) in topic.iter().enumerate() {
        let Some(sub) = current.find_subcommand_mut(word) else {
            let what = topic[..=depth].join(" ");
            return Err(coded(
                error_codes::HELP_TOPIC_NOT_FOUND,
                format!("no help for `{what}`"),
            ));
        };
        current = sub;
    }
    let name = format!("parhelia {}", topic.join(" "));
    let mut sub = current.clone().bin_name(name);
    println!("{}", sub.render_long_help());
    Ok(0)
}

/// `parhelia help codes`.
pub fn codes_text() -> String {
    let mut out = String::from("Error codes (parhelia help CODE for what to do):\n");
    for code in error_codes::ALL {
        out.push_str(&format!(
            "  {}  {:<28} {}\n",
            code.code, code.name, code.what
        ));
    }
    out.push_str(
        "\nExit status by family: E1xx 2, E2xx 3, E3xx 4, E4xx 5, E5xx 6, E6xx 7; 1 for an internal error.\n",
    );
    out
}

/// `parhelia help E201`.
pub fn code_help_text(code: &ErrorCode) -> String {
    format!(
        "{} {}\n\nWhat happened\n  {}\n\nWhy\n  {}\n\nHow to recover\n  {}\n\nExit status: {}\n",
        code.code,
        code.name,
        code.what,
        code.why,
        code.recover,
        code.exit_status()
    )
}
