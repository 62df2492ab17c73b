//! The `parhelia` command line: arguments (clap), one handler per command,
//! and [`report_error`], the one place that turns errors into a message on
//! stderr and an exit status (see [`crate::error_codes`] for the statuses).
//!
//! Reads go straight to SQLite; commands that change something talk to the
//! coordinator over its socket (starting it when it is not running), so the
//! coordinator's service layer ([`crate::service`]) is the one place that
//! changes state. Every read command accepts `--json`; tables fit the
//! terminal ([`crate::table`]); long operations show progress on stderr
//! ([`crate::progress`]); `watch` commands update until interrupted (Ctrl-C).

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};

use crate::config::LoadedConfig;
use crate::coordinator_client;
use crate::db::Db;
use crate::error::{CodedError, coded, find_coded};
use crate::error_codes::{self, ErrorCode};
use crate::plan::DryRunPlan;
use crate::state_dir::StateDir;

/// `println!` for command output: a closed pipe ends the process quietly
/// (see [`exit_on_broken_pipe`]) instead of panicking.
macro_rules! outln {
    () => {
        $crate::cli::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` for command output, as [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!($($arg)*))
    };
}

mod budget;
mod checkpoint;
mod completion;
mod container;
mod events;
mod guide;
pub mod integrate;
pub mod mcp;
mod modal;
mod ops;
mod session;
mod shortcuts;
mod store_health;
mod task;
mod ui;

pub use events::FilterArgs;

/// Run Claude Code sessions in containers, and keep track of them.
#[derive(Parser, Debug)]
#[command(
    name = "parhelia",
    version,
    disable_help_subcommand = true,
    after_help = "Guides: parhelia help task|session|checkpoint|budget|container|gpu|modal|mcp\nExamples: parhelia examples [TOPIC]    Error codes: parhelia help codes"
)]
pub struct Cli {
    /// Use this state directory instead of discovering one (default: the
    /// nearest `.parhelia/` above the current directory, else
    /// `$PARHELIA_HOME`, else `~/.parhelia`)
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Set a config value for this command, over files and environment:
    /// `--set reconciler.poll_interval_seconds=5`. What the coordinator does
    /// uses its own configuration (config.toml, which it reloads, and its
    /// environment): a value it does not share is refused (E118), and a
    /// coordinator a command starts never gets this command's values. On
    /// `task create`, a per-task key (checkpoint.*, workspace.*,
    /// agent.linger_after_finish_ms) applies to that task only; any other
    /// key is refused (E119)
    #[arg(long = "set", global = true, value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,

    /// Color tables and error prefixes: `auto` on a terminal unless
    /// `NO_COLOR` is set (`CLICOLOR_FORCE` forces it); `--json` never has color
    #[arg(long, global = true, value_enum, default_value_t = crate::table::ColorChoice::Auto, value_name = "WHEN", hide_possible_values = true)]
    pub color: crate::table::ColorChoice,

    /// Progress of long operations (workspace upload, image build, session
    /// pull, restore) on stderr: `auto` draws a bar when stderr is a
    /// terminal and prints JSON lines (`"type":"progress"`) otherwise, `json`
    /// prints JSON lines on a terminal too, `never` nothing. stdout, with or
    /// without `--json`, holds only the result
    #[arg(long, global = true, value_enum, env = "PARHELIA_PROGRESS", hide_env_values = true, default_value_t = crate::progress::ProgressMode::Auto, value_name = "WHEN", hide_possible_values = true)]
    pub progress: crate::progress::ProgressMode,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create, queue, dispatch, cancel, retry, list and watch tasks
    #[command(visible_alias = "t", subcommand)]
    Task(task::TaskCommand),
    /// Checkpoints: create, list, show, diff, rollback
    #[command(visible_alias = "c", subcommand)]
    Checkpoint(checkpoint::CheckpointCommand),
    /// Continue a session on a fresh container from a checkpoint
    Resume(checkpoint::ResumeArgs),
    /// List and show sessions (with their container's live health)
    #[command(visible_alias = "s", subcommand)]
    Session(container::SessionCommand),
    /// Containers: list, show, events, health, watch, terminate
    #[command(visible_alias = "ct", subcommand)]
    Container(container::ContainerCommand),
    /// The event log (agents' and the coordinator's): list, watch, export, replay
    #[command(visible_alias = "e", subcommand)]
    Events(events::EventsCommand),
    /// The reconciler: what it last did, or a pass now
    #[command(subcommand)]
    Reconciler(ops::ReconcilerCommand),
    /// Find orphaned containers (ours, labelled, with no live record);
    /// `--terminate` stops them
    Cleanup(ops::CleanupArgs),
    /// Check the installation and the state directory; `--fix` repairs what it can
    Doctor(ops::DoctorArgs),
    /// The effective configuration and where each value came from; `sync`
    /// uploads your Claude Code setup to the Modal volume
    #[command(subcommand)]
    Config(ops::ConfigCommand),
    /// Modal: setup, health-check, init-volume
    #[command(subcommand)]
    Modal(modal::ModalCommand),
    /// Budget: ceilings, spend (compute and model) per task and per day
    #[command(visible_alias = "b", subcommand)]
    Budget(budget::BudgetCommand),
    /// Is the coordinator up, tasks by status, running sessions, cost
    Status {
        /// Print one JSON object
        #[arg(long)]
        json: bool,
    },
    /// Run, stop or check the coordinator (the control plane)
    #[command(subcommand)]
    Coordinator(ops::CoordinatorCommand),
    /// Same as `task create`: run Claude Code on PROMPT in a new session
    Submit(Box<task::CreateArgs>),
    /// Same as `session attach`, by task id (its current session) or session id
    Attach(shortcuts::AttachArgs),
    /// Serve Parhelia's operations as MCP tools (stdio, or streamable HTTP
    /// with `--http ADDR`), for Claude Code or any MCP client; see docs/mcp.md
    #[command(name = "mcp-server")]
    McpServer(mcp::McpServerArgs),
    /// A local web dashboard: every session at a glance, its spend over
    /// time, its checkpoints, a live terminal; loopback only, behind the
    /// token in the URL it prints (see docs/ui.md)
    Ui(ui::UiArgs),
    /// Install Parhelia into another tool's setup: `integrate claude-code`
    /// (slash commands, skills and the MCP server)
    #[command(subcommand)]
    Integrate(integrate::IntegrateCommand),
    /// A guide, a command's help or an error code: `parhelia help checkpoint`,
    /// `parhelia help task create`, `parhelia help E201`, `parhelia help codes`
    Help {
        /// A guide (task, session, checkpoint, budget, container, gpu, modal,
        /// mcp), a command (`task create`…), an error code (`E201`) or `codes`
        topic: Vec<String>,
    },
    /// Runnable examples: gpu, checkpoint, budget, parallel, interactive,
    /// modal, mcp (without TOPIC: the list)
    Examples {
        /// The topic; without it, the list of topics
        topic: Option<String>,
    },
    /// Shell completions (bash, zsh, fish, powershell, elvish), ids included:
    /// `source <(parhelia completions bash)`
    Completions(completion::CompletionsArgs),
    /// The manual page (roff): `parhelia man | man -l -`
    Man(completion::ManArgs),
    /// Internal: leave the session (setsid) and exec a program.
    #[command(name = "internal-detach", hide = true)]
    InternalDetach {
        /// `cgroup.procs` files to join before anything else (the session's unit)
        #[arg(long = "join-cgroup")]
        join_cgroup: Vec<std::path::PathBuf>,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<OsString>,
    },
}

/// Runs the CLI; returns the process exit status.
pub fn main() -> i32 {
    // A shell's Tab: answer with candidates and exit (see `completion`).
    completion::complete_if_asked();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return err.exit_code();
        }
    };
    if let Command::InternalDetach {
        join_cgroup,
        command,
    } = &cli.command
    {
        return crate::backend::local::detach_and_exec(join_cgroup, command);
    }
    // Everything this process (and the coordinator it starts) creates is
    // owner-only: the state directory holds session secrets.
    crate::state_dir::set_private_umask();
    let is_coordinator = matches!(
        cli.command,
        Command::Coordinator(ops::CoordinatorCommand::Run { .. })
    );
    let multi_thread =
        is_coordinator || matches!(cli.command, Command::McpServer(_) | Command::Ui(_));
    if let Command::Coordinator(ops::CoordinatorCommand::Run { detached: true }) = cli.command {
        crate::daemon::detach_from_terminal();
    }
    init_tracing(is_coordinator);
    crate::output_look::init(cli.color);
    // The MCP server's stdout is its transport and its tools call the CLI's
    // functions directly: it reports progress as MCP notifications, never here.
    crate::progress::init(
        if matches!(cli.command, Command::McpServer(_) | Command::Ui(_)) {
            crate::progress::ProgressMode::Never
        } else {
            cli.progress
        },
    );

    let runtime = if multi_thread {
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

/// Writes command output to stdout; a reader that went away (`parhelia
/// task list | head -1`) ends the process quietly.
pub(crate) fn write_stdout(args: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if let Err(err) = stdout.write_fmt(args) {
        if err.kind() == std::io::ErrorKind::BrokenPipe {
            exit_on_broken_pipe();
        }
        let _ = writeln!(std::io::stderr(), "error: cannot write the output: {err}");
        std::process::exit(1);
    }
}

/// Output to a closed pipe ends the process quietly with the status a shell
/// shows for a conventional Unix tool killed by SIGPIPE: 141 (128 + 13).
/// (Rust ignores SIGPIPE, so the write fails with EPIPE instead; restoring
/// the signal would need `unsafe`, and would also kill the CLI on a closed
/// socket to the coordinator, where EPIPE must stay an error.)
pub(crate) const BROKEN_PIPE_STATUS: i32 = 141;

pub(crate) fn exit_on_broken_pipe() -> ! {
    std::process::exit(BROKEN_PIPE_STATUS)
}

/// Whether an error is output to a closed pipe.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The one place errors become text and exit statuses.
pub fn report_error(err: &anyhow::Error) -> i32 {
    if is_broken_pipe(err) {
        exit_on_broken_pipe();
    }
    match find_coded(err) {
        Some(coded) => report_coded(coded),
        None => {
            // Errors quote paths and messages a session wrote.
            eprintln!(
                "{}: {}",
                crate::table::paint(
                    "error",
                    crate::table::Tone::Bad,
                    crate::output_look::stderr_color()
                ),
                crate::term::escape_untrusted_text(&format!("{err:#}"))
            );
            1
        }
    }
}

fn report_coded(err: &CodedError) -> i32 {
    let mut text = error_text(err);
    if crate::output_look::stderr_color() {
        // Color the `error[Ennn]` prefix only (the message was escaped).
        let prefix = format!("error[{}]", err.code.code);
        text = text.replacen(
            &prefix,
            &crate::table::paint(&prefix, crate::table::Tone::Bad, true),
            1,
        );
    }
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
    err.code.exit_status()
}

/// How a coded error reads on stderr: the message, then the hint (the
/// advice for its cause when there is one).
pub fn error_text(err: &CodedError) -> String {
    let message = crate::term::escape_untrusted_text(&err.message);
    format!(
        "error[{}]: {message}\n  hint: {}\n",
        err.code.code,
        err.hint()
    )
}

/// What every handler gets: the global options.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub state_dir: Option<PathBuf>,
    pub set: Vec<String>,
}

/// An opened state directory: its config and database.
pub struct Opened {
    pub state: StateDir,
    pub config: LoadedConfig,
    pub db: Db,
}

impl Ctx {
    /// The state directory (not created).
    pub fn state(&self) -> Result<StateDir> {
        StateDir::discover(self.state_dir.as_deref()).map_err(state_error)
    }

    /// The configuration for `state`; unknown keys are reported once per
    /// process on stderr.
    pub fn config(&self, state: &StateDir) -> Result<LoadedConfig> {
        static WARNED: OnceLock<()> = OnceLock::new();
        let loaded = crate::config::load(state.root(), &self.set)?;
        if WARNED.set(()).is_ok() {
            loaded.warn_unknown_keys();
        }
        Ok(loaded)
    }

    /// The state directory (created if needed), its config and database.
    pub fn open(&self) -> Result<Opened> {
        let mut state = self.state()?;
        state.ensure_private()?;
        let config = self.config(&state)?;
        let db_path = config
            .config
            .orchestrator
            .db_path
            .clone()
            .unwrap_or_else(|| state.db_path());
        // The coordinator must be able to hide it from sessions (E507 else).
        crate::backend::isolation::db_private_dir(state.root(), &db_path)?;
        let db = Db::open(&db_path)?;
        Ok(Opened { state, config, db })
    }

    /// A client of the running coordinator, starting one when none answers.
    /// The coordinator is the one source of effective configuration: one it
    /// starts gets no `--set` value of this command (a one-off must not stick
    /// to later tasks), and a `--set` value the coordinator does not share is
    /// refused (E118) rather than silently not applied.
    pub async fn client(&self, state: &StateDir) -> Result<crate::coordinator_client::Client> {
        let mut client = coordinator_client::connect_or_start(state, &[]).await?;
        if !self.set.is_empty() {
            let reply = client
                .get_config(parhelia_proto::GetConfigRequest {})
                .await
                .map_err(coordinator_error)?
                .into_inner();
            refuse_unshared_flags(&reply.config_toml, &self.set, RUNNING)?;
        }
        Ok(client)
    }

    /// The configuration that applies to what this command does: the
    /// running coordinator's (with this command's `--set` values, which must
    /// match it: E118), else this process's own (files, environment, `--set`).
    /// `for_launch`: what a coordinator started now would use (files and
    /// environment; a `--set` value that differs is E118 there too).
    pub async fn effective_config(
        &self,
        state: &StateDir,
        for_launch: bool,
    ) -> Result<EffectiveConfig> {
        if let Some((mut client, pong)) = coordinator_client::ping_checked(state).await? {
            let reply = client
                .get_config(parhelia_proto::GetConfigRequest {})
                .await
                .map_err(coordinator_error)?
                .into_inner();
            let loaded = refuse_unshared_flags(&reply.config_toml, &self.set, RUNNING)?;
            return Ok(EffectiveConfig {
                loaded,
                coordinator: Some((pong.pid, reply)),
            });
        }
        // (Unknown keys are reported by the command's own `config`/`open`.)
        let loaded = crate::config::load(state.root(), &self.set)?;
        if for_launch && !self.set.is_empty() {
            let base = crate::config::load(state.root(), &[])?;
            refuse_unshared_flags(
                &crate::config::show_text(&base),
                &self.set,
                "the coordinator this command starts reads only config.toml and the environment",
            )?;
        }
        Ok(EffectiveConfig {
            loaded,
            coordinator: None,
        })
    }
}

impl Ctx {
    /// The configuration a task's own `--set` values go on top of
    /// (`config::task_config`): the running coordinator's, else what a
    /// coordinator started now would use (files and environment).
    pub async fn coordinator_config(&self, state: &StateDir) -> Result<LoadedConfig> {
        if let Some((mut client, _)) = coordinator_client::ping_checked(state).await? {
            let reply = client
                .get_config(parhelia_proto::GetConfigRequest {})
                .await
                .map_err(coordinator_error)?
                .into_inner();
            return refuse_unshared_flags(&reply.config_toml, &[], RUNNING);
        }
        Ok(crate::config::load(state.root(), &[])?)
    }

    /// This command's `--set` values that change something of `base` (one
    /// that repeats the coordinator's own value, whatever its key, is a
    /// no-op and dropped); what `task create` sends for its task only.
    pub fn task_set(&self, base: &LoadedConfig) -> Vec<String> {
        let text = crate::config::show_text(base);
        self.set
            .iter()
            .filter(|flag| refuse_unshared_flags(&text, std::slice::from_ref(*flag), "").is_err())
            .cloned()
            .collect()
    }

    /// A client of the running coordinator (one is started when none
    /// answers, with no `--set` of this command), for a command whose
    /// `--set` values travel with its request (`task create`).
    pub async fn task_client(&self, state: &StateDir) -> Result<crate::coordinator_client::Client> {
        coordinator_client::connect_or_start(state, &[]).await
    }
}

const RUNNING: &str = "the running coordinator runs with its own values";

/// The configuration in effect, and the coordinator it came from (its pid
/// and `GetConfig` answer) when one runs.
pub struct EffectiveConfig {
    pub loaded: LoadedConfig,
    pub coordinator: Option<(u32, parhelia_proto::GetConfigResponse)>,
}

/// The coordinator's configuration (its `config show` text, which pastes
/// into a config.toml) with `flags` on top; E118 when a flag sets a value
/// the coordinator does not have.
fn refuse_unshared_flags(
    coordinator_toml: &str,
    flags: &[String],
    who: &str,
) -> Result<LoadedConfig> {
    let layer = |text| crate::config::FileLayer {
        role: crate::config::FileRole::Project,
        path: Path::new("(the running coordinator)"),
        text: Some(text),
    };
    let empty = std::collections::BTreeMap::new();
    let base = crate::config::resolve(&[layer(coordinator_toml)], &empty, &[], Path::new("/"))?;
    let with = crate::config::resolve(&[layer(coordinator_toml)], &empty, flags, Path::new("/"))?;
    let value = |v: &crate::config::Value| v.toml_text().unwrap_or_else(|| "(unset)".into());
    let differing: Vec<String> = base
        .settings
        .iter()
        .zip(&with.settings)
        .filter(|(a, b)| a.value != b.value)
        .map(|(a, b)| {
            format!(
                "`--set {}={}` (it has {} = {})",
                a.key,
                value(&b.value),
                a.key,
                value(&a.value)
            )
        })
        .collect();
    if !differing.is_empty() {
        return Err(coded(
            error_codes::CONFIG_NOT_SHARED,
            format!(
                "{} would not apply: {who}, and its configuration is what its tasks use",
                differing.join(", ")
            ),
        ));
    }
    Ok(base)
}

async fn run(cli: Cli) -> Result<i32> {
    let ctx = Ctx {
        state_dir: cli.state_dir.clone(),
        set: cli.set.clone(),
    };
    match cli.command {
        Command::Task(command) => task::run(&ctx, command).await,
        Command::Checkpoint(command) => checkpoint::run(&ctx, command).await,
        Command::Resume(args) => checkpoint::run_resume(&ctx, args).await,
        Command::Session(command) => container::run_session(&ctx, command).await,
        Command::Container(command) => container::run(&ctx, command).await,
        Command::Events(command) => events::run(&ctx, command).await,
        Command::Reconciler(command) => ops::reconciler(&ctx, command).await,
        Command::Cleanup(args) => ops::cleanup(&ctx, args).await,
        Command::Doctor(args) => ops::doctor(&ctx, args).await,
        Command::Config(ops::ConfigCommand::Sync(args)) => modal::sync(&ctx, args).await,
        Command::Config(command) => ops::config(&ctx, command).await,
        Command::Modal(command) => modal::run(&ctx, command).await,
        Command::Budget(command) => budget::run(&ctx, command).await,
        Command::Status { json } => ops::status(&ctx, json).await,
        Command::Coordinator(command) => ops::coordinator(&ctx, command).await,
        Command::Submit(args) => task::run(&ctx, task::TaskCommand::Create(args)).await,
        Command::Attach(args) => shortcuts::attach(&ctx, args).await,
        Command::McpServer(args) => mcp::run(&ctx, args).await,
        Command::Ui(args) => ui::run(&ctx, args).await,
        Command::Integrate(command) => integrate::run(&ctx, command),
        Command::Help { topic } => help(&topic),
        Command::Examples { topic } => guide::examples(topic.as_deref()),
        Command::Completions(args) => completion::completions(&args),
        Command::Man(args) => completion::man(&args),
        Command::InternalDetach { .. } => unreachable!("handled before the runtime starts"),
    }
}

fn state_error(err: std::io::Error) -> anyhow::Error {
    coded(
        error_codes::STATE_UNAVAILABLE,
        format!("cannot find the state directory: {err}"),
    )
}

pub(crate) fn print_json(value: &impl serde::Serialize) -> Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// One JSON line of a watch or follow (`--json`), flushed at once so a
/// reader sees it as it happens.
pub(crate) fn json_line(value: &impl serde::Serialize) {
    match serde_json::to_string(value) {
        Ok(line) => outln!("{line}"),
        Err(err) => outln!(
            "{}",
            serde_json::json!({"type": "error", "error": err.to_string()})
        ),
    }
    if let Err(err) = std::io::stdout().flush()
        && err.kind() == std::io::ErrorKind::BrokenPipe
    {
        exit_on_broken_pipe();
    }
}

/// A status from the coordinator as an error: coded when it carries a code,
/// E504 when the coordinator could not be reached.
pub(crate) fn coordinator_error(status: tonic::Status) -> anyhow::Error {
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

/// How `watch` commands end: Ctrl-C (SIGINT) or SIGTERM. The handlers are
/// installed when this is created, so a signal is never missed between
/// two waits.
pub(crate) struct Interrupt {
    interrupt: Option<tokio::signal::unix::Signal>,
    terminate: Option<tokio::signal::unix::Signal>,
}

impl Interrupt {
    pub fn new() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        Self {
            interrupt: signal(SignalKind::interrupt()).ok(),
            terminate: signal(SignalKind::terminate()).ok(),
        }
    }

    /// Sleeps `interval`; true when interrupted first.
    pub async fn sleep(&mut self, interval: Duration) -> bool {
        async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) {
            match signal {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        let interrupted = tokio::select! {
            _ = tokio::time::sleep(interval) => false,
            _ = recv(&mut self.interrupt) => true,
            _ = recv(&mut self.terminate) => true,
        };
        // A watch that has nothing new to print still ends when its
        // reader has gone (`parhelia events watch --json | head -1`).
        if !interrupted && stdout_reader_gone() {
            exit_on_broken_pipe();
        }
        interrupted
    }
}

/// Whether stdout is a pipe whose reader has gone (poll says POLLERR).
fn stdout_reader_gone() -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let stdout = std::io::stdout();
    let mut fds = [PollFd::new(stdout.as_fd(), PollFlags::POLLOUT)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
        && fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLERR))
}

/// For `watch` output: a full redraw on a terminal, else a separator.
pub(crate) fn redraw(text: &str) {
    use std::io::IsTerminal;
    let mut stdout = std::io::stdout().lock();
    let written = if stdout.is_terminal() {
        write!(stdout, "\x1b[H\x1b[2J{text}")
    } else {
        writeln!(stdout, "{text}")
    }
    .and_then(|()| stdout.flush());
    if written.is_err_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) {
        exit_on_broken_pipe();
    }
}

pub(crate) fn dry_run_text(
    plan: &DryRunPlan,
    spec_path: &Path,
    agent_error: Option<CodedError>,
) -> String {
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
    if !plan.secrets.is_empty() {
        field(
            "secrets",
            format!(
                "{} ({}; values not shown)",
                plan.secrets.join(", "),
                match plan.backend {
                    crate::plan::BackendKind::Local =>
                        "environment variables from this shell, passed into the session",
                    crate::plan::BackendKind::Modal => "Modal secrets attached to the sandbox",
                }
            ),
        );
    }
    if let Some(region) = &plan.region {
        field("region", region.clone());
    }
    if !plan.config_set.is_empty() {
        field(
            "--set",
            format!("{} (this task only)", plan.config_set.join(", ")),
        );
    }
    field("spec", spec_path.display().to_string());
    out.push_str(&serde_json::to_string_pretty(&plan.spec).unwrap_or_default());
    out.push('\n');
    out
}

/// `parhelia help [TOPIC…]`.
fn help(topic: &[String]) -> Result<i32> {
    let mut command = Cli::command();
    let Some(first) = topic.first() else {
        outln!("{}", command.render_long_help());
        return Ok(0);
    };
    if first.eq_ignore_ascii_case("codes") {
        out!("{}", codes_text());
        return Ok(0);
    }
    if let Some(code) = error_codes::lookup(first) {
        out!("{}", code_help_text(code));
        return Ok(0);
    }
    if let [only] = topic
        && let Some(guide) = guide::guide(only)
    {
        out!("{}", guide::guide_text(guide));
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
    outln!("{}", sub.render_long_help());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error_codes::Cause;

    /// Every command's `--help`, depth first.
    fn all_help(command: &mut clap::Command, path: &str, out: &mut String) {
        let name = if path.is_empty() {
            "parhelia".to_string()
        } else {
            format!("parhelia {path}")
        };
        let mut sub = command.clone().bin_name(&name);
        out.push_str(&format!("════ {name} --help\n{}\n", sub.render_long_help()));
        for child in command.get_subcommands_mut() {
            if child.is_hide_set() {
                continue;
            }
            let child_path = if path.is_empty() {
                child.get_name().to_string()
            } else {
                format!("{path} {}", child.get_name())
            };
            all_help(child, &child_path, out);
        }
    }

    #[test]
    fn help_texts() {
        let mut command = Cli::command();
        command.build();
        let mut out = String::new();
        all_help(&mut command, "", &mut out);
        insta::assert_snapshot!("help_texts", out);
    }

    fn help_of(path: &[&str]) -> String {
        let mut command = Cli::command();
        command.build();
        let mut current = &mut command;
        for word in path {
            current = current.find_subcommand_mut(word).expect(word);
        }
        current.render_long_help().to_string()
    }

    #[test]
    fn help_lists_every_backend_and_every_status_the_list_shows() {
        let create = help_of(&["task", "create"]);
        for backend in crate::plan::BackendKind::ALL {
            assert!(create.contains(backend.as_str()), "{create}");
        }
        let list = help_of(&["task", "list"]);
        for shown in crate::task_state::ShownStatus::ALL {
            assert!(
                list.contains(shown.as_str()),
                "{shown} missing from\n{list}"
            );
        }
    }

    #[test]
    fn bare_task_dispatch_parses() {
        let cli = Cli::try_parse_from(["parhelia", "task", "dispatch"]).expect("parses");
        assert!(matches!(
            cli.command,
            Command::Task(task::TaskCommand::Dispatch { ref task_ids, all: false, .. }) if task_ids.is_empty()
        ));
    }

    #[test]
    fn every_data_command_takes_json() {
        for path in [
            &["task", "watch", "t"][..],
            &["session", "logs", "s"],
            &["session", "recover", "s"],
            &["session", "kill", "s"],
            &["session", "send", "s", "hi"],
            &["container", "watch"],
        ] {
            let mut args = vec!["parhelia"];
            args.extend_from_slice(path);
            args.push("--json");
            Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        }
    }

    /// Each code's rendering (message and hint), then the advice chosen for
    /// each cause the CLI tells apart.
    #[test]
    fn every_error_rendering() {
        let mut out = String::new();
        for code in error_codes::ALL {
            out.push_str(&error_text(&CodedError::new(*code, "what happened")));
        }
        out.push_str("\n════ advice by cause\n");
        let cause = |f: &dyn Fn(&mut Cause)| {
            let mut c = Cause::new("task-1a2b3c4d", Some("sess-5e6f7a8b"));
            f(&mut c);
            c
        };
        let cases: Vec<(&str, error_codes::ErrorCode, Cause)> = vec![
            (
                "E600 HTTP 400",
                error_codes::CLAUDE_CODE_ERROR_RESULT,
                cause(&|c| {
                    c.subtype = "success".into();
                    c.http_status = 400;
                }),
            ),
            (
                "E600 turn limit",
                error_codes::CLAUDE_CODE_ERROR_RESULT,
                cause(&|c| c.subtype = "error_max_turns".into()),
            ),
            (
                "E600 other",
                error_codes::CLAUDE_CODE_ERROR_RESULT,
                cause(&|c| c.subtype = "error_during_execution".into()),
            ),
            (
                "E505 no retry",
                error_codes::MODEL_API_FAILED,
                cause(&|c| c.http_status = 529),
            ),
            (
                "E505 retried",
                error_codes::MODEL_API_FAILED,
                cause(&|c| {
                    c.http_status = 429;
                    c.api_retries = 2;
                    c.max_retries = 2;
                    c.retry_delay_ms = 3_000;
                }),
            ),
            (
                "E601 cancelled",
                error_codes::SESSION_CANCELLED,
                cause(&|c| c.stop_reason = Some("task cancel".into())),
            ),
            (
                "E502 agent exited",
                error_codes::AGENT_FAILED_TO_START,
                cause(&|c| c.container_id = Some("ctr-9c0d1e2f".into())),
            ),
            (
                "E503 agent lost",
                error_codes::AGENT_UNREACHABLE,
                cause(&|c| c.container_id = Some("ctr-9c0d1e2f".into())),
            ),
            ("E301 timed out", error_codes::TASK_TIMEOUT, cause(&|_| {})),
            ("E516 disk full", error_codes::DISK_FULL, cause(&|_| {})),
            (
                "E602 interrupted",
                error_codes::SESSION_INTERRUPTED,
                cause(&|_| {}),
            ),
        ];
        for (name, code, cause) in cases {
            let err = CodedError::new(code, format!("task task-1a2b3c4d failed: {name}"))
                .with_advice(error_codes::advice(&code, &cause));
            out.push_str(&error_text(&err));
        }
        insta::assert_snapshot!("every_error_rendering", out);
    }

    #[test]
    fn advice_never_suggests_what_cannot_help() {
        let mut c = Cause::new("t", Some("s"));
        c.subtype = "success".into();
        c.http_status = 400;
        let e600 = error_codes::advice(&error_codes::CLAUDE_CODE_ERROR_RESULT, &c).unwrap();
        assert!(!e600.contains("--max-turns"), "{e600}");
        let mut c = Cause::new("t", Some("s"));
        c.http_status = 529;
        let e505 = error_codes::advice(&error_codes::MODEL_API_FAILED, &c).unwrap();
        assert!(e505.contains("would not help"), "{e505}");
        assert!(e505.contains("parhelia resume s"), "{e505}");
        let e601 =
            error_codes::advice(&error_codes::SESSION_CANCELLED, &Cause::new("t", Some("s")))
                .unwrap();
        assert!(!e601.contains("create the task again"), "{e601}");
        assert!(
            !error_codes::SESSION_CANCELLED
                .recover
                .contains("Create the task again")
        );
    }
}
