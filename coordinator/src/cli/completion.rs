//! `parhelia completions SHELL` and `parhelia man`.
//!
//! Completions use clap_complete's environment-activated engine (`CompleteEnv`,
//! the `unstable-dynamic` feature): the script a shell sources only registers a
//! function that calls `parhelia` itself at Tab time (with `PARHELIA_COMPLETE=SHELL`
//! set), and [`command`] answers from the same clap definition as the parser. So
//! subcommands and flags are always the installed binary's, and task, session,
//! container and checkpoint ids complete from the state directory's database (read
//! only, newest first, with a short description). This is the engine clap's
//! maintainers recommend for dynamic values; the alternative (static scripts from
//! `clap_complete::generate` plus hand-written shell functions calling a hidden
//! `--json` command, once per shell) would be five scripts to keep in step by hand.
//! The price is that the feature is marked unstable upstream: Cargo.lock pins the
//! version, and the tests source the scripts in real bash and zsh and complete an id
//! through them.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, ValueEnum};
use clap_complete::engine::{ArgValueCandidates, CompletionCandidate};
use clap_complete::env::{CompleteEnv, Shells};

use super::Cli;
use crate::db::completion::{IdKind, ids};
use crate::state_dir::StateDir;

/// The variable that turns a run of `parhelia` into a completion request.
pub const COMPLETE_VAR: &str = "PARHELIA_COMPLETE";

/// Shells `parhelia completions` writes for.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
    Powershell,
    Elvish,
}

/// `parhelia completions SHELL`.
#[derive(Args, Debug)]
#[command(after_help = "Load them in your shell's startup file, e.g.\n  \
    bash (~/.bashrc):  source <(parhelia completions bash)\n  \
    zsh (~/.zshrc):    source <(parhelia completions zsh)\n  \
    fish:              parhelia completions fish | source\n  \
    powershell:        parhelia completions powershell | Out-String | Invoke-Expression\n  \
    elvish:            eval (parhelia completions elvish | slurp)\n\
    Source it at startup rather than saving it: the script calls `parhelia` at Tab time,\n\
    and a saved copy may not match a later version.")]
pub struct CompletionsArgs {
    /// The shell to write the script for
    pub shell: Shell,
}

/// `parhelia man`.
#[derive(Args, Debug)]
pub struct ManArgs {
    /// Write one page per command (parhelia.1, parhelia-task.1, parhelia-task-create.1…)
    /// into DIR instead of printing parhelia.1
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// Answers a completion request (and exits) when `PARHELIA_COMPLETE` is set; a
/// no-op otherwise. Runs before anything else writes to stdout.
pub fn complete_if_asked() {
    CompleteEnv::with_factory(command)
        .var(COMPLETE_VAR)
        .complete();
}

/// The CLI's clap command with id candidates on every argument that names a task,
/// session, container or checkpoint.
pub fn command() -> clap::Command {
    annotate(Cli::command())
}

fn annotate(mut cmd: clap::Command) -> clap::Command {
    let subs: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    for name in subs {
        cmd = cmd.mut_subcommand(name, annotate);
    }
    let is_diff = cmd.get_name() == "diff";
    let args: Vec<(String, Vec<IdKind>)> = cmd
        .get_arguments()
        .filter_map(|a| {
            let id = a.get_id().as_str();
            let kinds = match id {
                "task_id" | "task_ids" | "task" => vec![IdKind::Task],
                // Every session argument takes a task id too.
                "session_id" | "session" | "id" => vec![IdKind::Session, IdKind::Task],
                "container_id" | "container" => vec![IdKind::Container],
                "checkpoint_id" | "checkpoint" => vec![IdKind::Checkpoint],
                "a" | "b" if is_diff => vec![IdKind::Checkpoint],
                _ => return None,
            };
            Some((id.to_string(), kinds))
        })
        .collect();
    for (id, kinds) in args {
        cmd = cmd.mut_arg(id, |arg| {
            arg.add(ArgValueCandidates::new(move || candidates(&kinds)))
        });
    }
    cmd
}

fn candidates(kinds: &[IdKind]) -> Vec<CompletionCandidate> {
    let Ok(state) = StateDir::discover(None) else {
        return Vec::new();
    };
    let db = crate::config::load(state.root(), &[])
        .ok()
        .and_then(|c| c.config.orchestrator.db_path)
        .unwrap_or_else(|| state.db_path());
    kinds
        .iter()
        .flat_map(|kind| ids(&db, *kind))
        .map(|hint| CompletionCandidate::new(hint.id).help(Some(hint.help.into())))
        .collect()
}

/// `parhelia completions SHELL`: the registration script `source` loads.
pub fn completions(args: &CompletionsArgs) -> Result<i32> {
    let name = match args.shell {
        Shell::Bash => "bash",
        Shell::Zsh => "zsh",
        Shell::Fish => "fish",
        Shell::Powershell => "powershell",
        Shell::Elvish => "elvish",
    };
    let shells = Shells::builtins();
    let shell = shells
        .completer(name)
        .context("clap_complete has no such shell")?;
    // The script calls back the program as it was invoked (`parhelia`, found on
    // PATH, or the path it was run by).
    let completer = std::env::args_os()
        .next()
        .unwrap_or_else(|| OsString::from("parhelia"));
    let mut buf = Vec::new();
    shell.write_registration(
        COMPLETE_VAR,
        "parhelia",
        "parhelia",
        &completer.to_string_lossy(),
        &mut buf,
    )?;
    super::write_stdout(format_args!("{}", String::from_utf8_lossy(&buf)));
    Ok(0)
}

/// `parhelia man [--out DIR]`.
pub fn man(args: &ManArgs) -> Result<i32> {
    let cmd = Cli::command();
    match &args.out {
        None => {
            let mut buf = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut buf)?;
            super::write_stdout(format_args!("{}", String::from_utf8_lossy(&buf)));
        }
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(cmd, dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))?;
            outln!("wrote the man pages into {}", dir.display());
        }
    }
    Ok(0)
}
