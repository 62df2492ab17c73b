//! The command line of `parhelia-agent`.
//!
//! ```text
//! parhelia-agent run --spec /abs/spec.json [--label KEY=VALUE]...   (needs PARHELIA_SESSION_SECRET)
//! parhelia-agent hook --socket /abs/hooks.sock                     (run by Claude Code hooks)
//! ```
//!
//! Exit statuses of `run`: 0 after a clean shutdown (also after SIGTERM or `Stop`), 2 when
//! the session could not start (bad spec, no secret, unsupported mode), 1 when the journal
//! failed while running. `hook` always exits 0, even on bad arguments: an exit status of
//! 2 from a hook would block Claude Code's action.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::agent::{self, RunOptions, SECRET_ENV};

#[derive(Debug, Parser)]
#[command(
    name = "parhelia-agent",
    version,
    about = "Runs one Claude Code session in tmux and serves it over gRPC."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the session described by a spec file (the secret comes from stdin with
    /// --secret-stdin, else from PARHELIA_SESSION_SECRET).
    Run {
        /// Absolute path of spec.json.
        #[arg(long)]
        spec: PathBuf,
        /// A KEY=VALUE tag for this process (e.g. parhelia.coordinator=<id>); repeatable.
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Read the session secret from the first line of stdin (then stdin is done with):
        /// nothing of it is left in the agent's environment for anyone to read.
        #[arg(long)]
        secret_stdin: bool,
    },
    /// Print the git state of a workspace as JSON. Used by the agent to read a session
    /// user's repository as that user (`crate::git_state::capture_as`).
    #[command(hide = true)]
    GitState {
        #[arg(long)]
        workspace: PathBuf,
    },
    /// Print, as JSON, the model spend a session's transcripts hold that no journal
    /// charged (`crate::spend::unjournaled`). Used by the coordinator when it ends a dead
    /// agent's left-over processes.
    #[command(hide = true)]
    Meter {
        #[arg(long)]
        config_dir: PathBuf,
        #[arg(long)]
        workspace: PathBuf,
        #[arg(long)]
        claude_session_id: String,
        #[arg(long)]
        journal_dir: PathBuf,
        /// The price table as JSON (`{model: ModelPrice}`).
        #[arg(long)]
        prices: String,
        /// Read from stdin a JSON array of message ids the coordinator already charged
        /// from these transcripts (at most 8 MiB): they are not charged again.
        #[arg(long)]
        charged_ids_stdin: bool,
        /// A headless run's stream-json (`runs/<container>/stream.jsonl`): responses it
        /// shows that no transcript holds are charged at the usage it shows (a lower
        /// bound) and counted as unknown (`request_in_flight`).
        #[arg(long)]
        stream: Option<PathBuf>,
    },
    /// Take a whole checkpoint (workspace and conversation) of a container whose agent
    /// is gone, from its spec, and print what was taken as JSON
    /// (`crate::checkpointer::salvage`). Used by the coordinator's reconciler.
    #[command(hide = true)]
    Salvage {
        /// The dead container's spec.json.
        #[arg(long)]
        spec: PathBuf,
        #[arg(long, default_value = "agent_gone")]
        trigger: String,
        /// What the coordinator has recorded the session spending (for the metadata).
        #[arg(long, default_value_t = 0.0)]
        session_cost_usd: f64,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Print what this binary is, as one JSON object: `name`, `version`, `profile`
    /// (`debug` or `release`: whether it was built with debug assertions, as `cargo
    /// build` without `--release` does), `arch`, `os`. Read by the coordinator before it
    /// ships this binary to the Modal image (`coordinator/src/binaries.rs`).
    #[command(hide = true)]
    BuildInfo,
    /// Forward a Claude Code hook payload (stdin) to the agent. Used by Claude Code.
    Hook {
        /// The agent's hook socket.
        #[arg(long)]
        socket: PathBuf,
    },
}

/// `build-info`'s object.
fn build_info() -> serde_json::Value {
    serde_json::json!({
        "name": env!("CARGO_PKG_NAME"),
        "version": env!("CARGO_PKG_VERSION"),
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
        "arch": std::env::consts::ARCH,
        "os": std::env::consts::OS,
    })
}

/// The first line of `input`, at most 4 KiB, trimmed; empty when there is none.
fn read_secret_line(input: impl std::io::Read) -> String {
    use std::io::BufRead;
    let mut line = String::new();
    let _ = std::io::BufReader::new(input.take(4096)).read_line(&mut line);
    line.trim().to_string()
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if std::env::args().nth(1).as_deref() == Some("hook") => {
            eprintln!("parhelia-agent hook: {e}");
            return ExitCode::SUCCESS;
        }
        Err(e) => e.exit(),
    };
    match cli.command {
        Command::BuildInfo => {
            println!("{}", build_info());
            ExitCode::SUCCESS
        }
        Command::GitState { workspace } => {
            let state = crate::git_state::capture(&workspace);
            println!(
                "{}",
                serde_json::to_string(&state).expect("a git state always serializes")
            );
            ExitCode::SUCCESS
        }
        Command::Meter {
            config_dir,
            workspace,
            claude_session_id,
            journal_dir,
            prices,
            charged_ids_stdin,
            stream,
        } => {
            let prices = match serde_json::from_str::<
                std::collections::BTreeMap<String, crate::spend::ModelPrice>,
            >(&prices)
            {
                Ok(prices) if prices.values().all(crate::spend::ModelPrice::is_valid) => prices,
                _ => {
                    eprintln!("parhelia-agent meter: --prices is not a valid price table");
                    return ExitCode::from(2);
                }
            };
            let already_charged: Vec<String> = if charged_ids_stdin {
                use std::io::Read;
                let mut bytes = Vec::new();
                let _ = std::io::stdin().take(8 << 20).read_to_end(&mut bytes);
                match serde_json::from_slice(&bytes) {
                    Ok(ids) => ids,
                    Err(e) => {
                        eprintln!(
                            "parhelia-agent meter: the charged ids are not a JSON array of strings: {e}"
                        );
                        return ExitCode::from(2);
                    }
                }
            } else {
                Vec::new()
            };
            let found = crate::spend::unjournaled(
                &crate::conversation::project_dir(&config_dir, &workspace),
                &claude_session_id,
                crate::cost::prior_spend(&journal_dir).charges,
                prices,
                &already_charged,
                stream.as_deref(),
            );
            println!(
                "{}",
                serde_json::to_string(&found).expect("always serializes")
            );
            ExitCode::SUCCESS
        }
        Command::Salvage {
            spec,
            trigger,
            session_cost_usd,
            reason,
        } => {
            let spec = match crate::spec::load(&spec) {
                Ok(spec) => spec,
                Err(e) => {
                    eprintln!("parhelia-agent salvage: {e}");
                    return ExitCode::from(2);
                }
            };
            match crate::checkpointer::salvage(&spec, &trigger, session_cost_usd, &reason) {
                Ok(taken) => {
                    println!(
                        "{}",
                        serde_json::to_string(&taken).expect("always serializes")
                    );
                    ExitCode::SUCCESS
                }
                Err(failure) => {
                    eprintln!(
                        "parhelia-agent salvage: [{}] {}",
                        failure.code.code, failure.message
                    );
                    ExitCode::from(1)
                }
            }
        }
        Command::Hook { socket } => {
            crate::hooks::run_hook_client(&socket);
            ExitCode::SUCCESS
        }
        Command::Run {
            spec,
            labels,
            secret_stdin,
        } => {
            let secret = if secret_stdin {
                read_secret_line(std::io::stdin().lock())
            } else {
                std::env::var(SECRET_ENV).unwrap_or_default()
            };
            let options = RunOptions {
                spec_path: spec,
                labels,
                secret,
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    eprintln!("parhelia-agent: failed to start the async runtime: {e}");
                    return ExitCode::from(2);
                }
            };
            match runtime.block_on(agent::run(options)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("parhelia-agent: failed to {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the coordinator reads before shipping the binary: a test build has debug
    /// assertions, so it says `debug`.
    #[test]
    fn build_info_names_the_version_and_the_profile() {
        let info = build_info();
        assert_eq!(info["name"], "parhelia-agent");
        assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(info["profile"], "debug");
        assert_eq!(info["os"], std::env::consts::OS);
    }

    #[test]
    fn labels_are_key_value_pairs() {
        assert_eq!(
            parse_label("parhelia.coordinator=c-1"),
            Ok(("parhelia.coordinator".into(), "c-1".into()))
        );
        assert_eq!(parse_label("k="), Ok(("k".into(), String::new())));
        assert!(parse_label("novalue").is_err());
        assert!(parse_label("=v").is_err());
    }

    #[test]
    fn the_secret_is_the_first_line_of_stdin_and_bounded() {
        assert_eq!(read_secret_line(&b"s3cret\nmore"[..]), "s3cret");
        assert_eq!(read_secret_line(&b""[..]), "");
        let huge = vec![b'a'; 1 << 20];
        assert_eq!(read_secret_line(&huge[..]).len(), 4096);
    }

    #[test]
    fn the_command_line_parses() {
        let cli = Cli::try_parse_from([
            "parhelia-agent",
            "run",
            "--spec",
            "/s/spec.json",
            "--label",
            "parhelia.coordinator=c1",
        ])
        .unwrap();
        assert!(matches!(cli.command, Command::Run { labels, .. } if labels.len() == 1));
        Cli::command_for_tests().debug_assert();
    }

    impl Cli {
        fn command_for_tests() -> clap::Command {
            <Cli as clap::CommandFactory>::command()
        }
    }
}
