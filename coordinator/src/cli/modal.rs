//! `parhelia modal setup | health-check | init-volume`, `parhelia config
//! sync`, and the store lookup the checkpoint commands use for sessions on a
//! remote volume. The work runs in the coordinator, which owns the one Modal
//! bridge (`crate::modal_ops`); these commands send it and print the report.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Args, Subcommand};
use parhelia_proto::modal_op_request::Op;
use parhelia_proto::modal_op_response::Report;
use parhelia_proto::{
    ConfigSyncRequest, FetchStoreRequest, ModalHealthCheckRequest, ModalInitVolumeRequest,
    ModalOpRequest, ModalSetupRequest,
};

use super::{Ctx, Opened, coordinator_error, print_json};
use crate::db::SessionRecord;
use crate::service::stores::{self, StoreSource};

#[derive(Subcommand, Debug)]
pub enum ModalCommand {
    /// Check credentials, SDK version, the secret and the volume, and build
    /// the session image
    Setup {
        /// Rebuild the image even when Modal has it cached
        #[arg(long)]
        force_build: bool,
        #[arg(long)]
        json: bool,
    },
    /// Run the health check in a sandbox: volume mounted, Claude Code
    /// installed, Anthropic key set, versions
    HealthCheck {
        #[arg(long)]
        json: bool,
    },
    /// Create the volume's directory structure (sessions/, config/, images/)
    InitVolume {
        #[arg(long)]
        json: bool,
    },
}

/// `parhelia config sync`.
#[derive(Args, Debug)]
pub struct SyncArgs {
    /// List every file that would be synced and everything withheld (with the
    /// reason); reads only local files: needs no coordinator, Modal or network
    #[arg(long)]
    pub dry_run: bool,
    /// Also upload history.jsonl (your prompt history)
    #[arg(long)]
    pub include_history: bool,
    /// Also upload the entries of MCP servers' env and headers maps that do not
    /// look like credentials (by default those maps stay here)
    #[arg(long)]
    pub include_mcp_secrets: bool,
    #[arg(long)]
    pub json: bool,
}

async fn modal_op(ctx: &Ctx, op: Op) -> Result<Report> {
    let opened = ctx.open()?;
    let mut client = ctx.client(&opened.state).await?;
    let reply = client
        .modal_op(ModalOpRequest { op: Some(op) })
        .await
        .map_err(coordinator_error)?
        .into_inner();
    reply
        .report
        .ok_or_else(|| not_the_report_asked_for().into())
}

/// A reply whose report is not the operation's: a coordinator that does not
/// speak this CLI's contract.
fn not_the_report_asked_for() -> crate::error::CodedError {
    crate::error::CodedError::new(
        crate::error_codes::INFRASTRUCTURE_ERROR,
        "the coordinator answered the Modal operation with another report",
    )
}

/// `ModalSetupWithProgress`: each step of the setup shown as the coordinator
/// begins it, then its report. A coordinator from before that RPC (still
/// running across an upgrade) gets `ModalOp`.
async fn setup_following_the_steps(
    ctx: &Ctx,
    force_build: bool,
    progress: &crate::progress::Progress,
) -> Result<parhelia_proto::ModalSetupReport> {
    use parhelia_proto::modal_setup_progress::Event;
    let opened = ctx.open()?;
    let mut client = ctx.client(&opened.state).await?;
    let request = ModalSetupRequest { force_build };
    let mut stream = match client.modal_setup_with_progress(request).await {
        Ok(stream) => stream.into_inner(),
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            let Report::Setup(report) = modal_op(ctx, Op::Setup(request)).await? else {
                return Err(not_the_report_asked_for().into());
            };
            return Ok(report);
        }
        Err(status) => return Err(coordinator_error(status)),
    };
    while let Some(message) = stream.message().await.map_err(coordinator_error)? {
        match message.event {
            Some(Event::StepStarted(step)) => progress.step(&step),
            Some(Event::Report(report)) => return Ok(report),
            None => {}
        }
    }
    Err(anyhow::anyhow!(
        "the coordinator ended the Modal setup without a report"
    ))
}

pub async fn run(ctx: &Ctx, command: ModalCommand) -> Result<i32> {
    match command {
        ModalCommand::Setup { force_build, json } => {
            let progress = crate::progress::Progress::start(
                "image_build",
                "asking the coordinator to set Modal up",
            );
            let report = setup_following_the_steps(ctx, force_build, &progress).await?;
            progress.finish(true);
            if json {
                print_json(&report)?;
            } else {
                out!("{}", crate::modal_ops::render_steps(&report.steps));
                outln!("Modal is ready: tasks can use --backend modal");
            }
            Ok(0)
        }
        ModalCommand::HealthCheck { json } => {
            let Report::HealthCheck(report) =
                modal_op(ctx, Op::HealthCheck(ModalHealthCheckRequest {})).await?
            else {
                return Err(not_the_report_asked_for().into());
            };
            let healthy = report.status == "ok";
            if json {
                print_json(&report)?;
            } else {
                outln!("{}", serde_json::to_string_pretty(&report)?);
            }
            Ok(if healthy { 0 } else { 1 })
        }
        ModalCommand::InitVolume { json } => {
            let Report::InitVolume(report) =
                modal_op(ctx, Op::InitVolume(ModalInitVolumeRequest {})).await?
            else {
                return Err(not_the_report_asked_for().into());
            };
            if json {
                print_json(&report)?;
            } else {
                outln!(
                    "volume {}: {}",
                    report.volume,
                    report
                        .directories
                        .iter()
                        .map(|d| format!("{d}/"))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            }
            Ok(0)
        }
    }
}

pub async fn sync(ctx: &Ctx, args: SyncArgs) -> Result<i32> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let config_dir = std::env::var_os("CLAUDE_CONFIG_DIR").map(PathBuf::from);
    if args.dry_run {
        // Planned here, from local files only: no coordinator, bridge or network.
        let home = home.ok_or_else(|| {
            crate::error::CodedError::new(crate::error_codes::INVALID_INPUT, "HOME is not set")
        })?;
        let source = crate::config_sync::ConfigSource::from_env(&home, config_dir.as_deref());
        let options = crate::config_sync::CollectOptions {
            include_history: args.include_history,
            include_mcp_secrets: args.include_mcp_secrets,
        };
        let plan = crate::config_sync::plan_source(&source, &options)?;
        if args.json {
            print_json(&crate::config_sync::dry_run_json(&plan))?;
        } else {
            out!("{}", crate::config_sync::render_dry_run(&plan));
        }
        return Ok(0);
    }
    let path_text = |p: Option<PathBuf>| {
        p.map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let Report::ConfigSync(report) = modal_op(
        ctx,
        Op::ConfigSync(ConfigSyncRequest {
            dry_run: args.dry_run,
            include_history: args.include_history,
            include_mcp_secrets: args.include_mcp_secrets,
            home: path_text(home),
            claude_config_dir: path_text(config_dir),
        }),
    )
    .await?
    else {
        return Err(not_the_report_asked_for().into());
    };
    if args.json {
        print_json(&report)?;
    } else {
        out!("{}", report.text);
    }
    Ok(0)
}

/// Whether a session lives on a remote volume (its task's backend).
pub fn is_remote(opened: &Opened, session: &SessionRecord) -> bool {
    stores::is_remote(&opened.db, session)
}

/// The session's checkpoint store: opened in place for a local session; for
/// one on a remote volume the coordinator reads it back into its mirror
/// first. `None`: the session has no store.
pub async fn session_store(
    ctx: &Ctx,
    opened: &Opened,
    session: &SessionRecord,
) -> Result<Option<parhelia_checkpoint::Store>> {
    store_of(ctx, opened, session, false).await
}

/// The session's store for `checkpoint verify` and `repair`: for one on a
/// remote volume, a new copy of every durable file as the volume holds it now
/// (the mirror may hold intact copies of what the volume has damaged). The
/// caller removes the copy ([`remove_store_copy`]) and writes a repair back
/// ([`push_store`]).
pub async fn session_store_copy(
    ctx: &Ctx,
    opened: &Opened,
    session: &SessionRecord,
) -> Result<Option<parhelia_checkpoint::Store>> {
    store_of(ctx, opened, session, true).await
}

/// Removes a copy [`session_store_copy`] made of a remote store.
pub fn remove_store_copy(opened: &Opened, session: &SessionRecord, store: &Path) {
    if is_remote(opened, session)
        && store.file_name().is_some_and(|n| n == "checkpoints")
        && let Some(copy) = store.parent()
        && copy
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("store-"))
    {
        let _ = std::fs::remove_dir_all(copy);
    }
}

/// Writes what a repair changed in a remote store's copy back to its volume.
pub async fn push_store(
    ctx: &Ctx,
    opened: &Opened,
    session: &SessionRecord,
    copy: &Path,
    put: Vec<String>,
    remove: Vec<String>,
) -> Result<()> {
    let mut client = ctx.client(&opened.state).await?;
    client
        .push_store(parhelia_proto::PushStoreRequest {
            session_id: session.id.clone(),
            store_dir: copy.to_string_lossy().into_owned(),
            put,
            remove,
        })
        .await
        .map_err(coordinator_error)?;
    Ok(())
}

async fn store_of(
    ctx: &Ctx,
    opened: &Opened,
    session: &SessionRecord,
    fresh: bool,
) -> Result<Option<parhelia_checkpoint::Store>> {
    let checkpoint = &opened.config.config.agent.checkpoint;
    let (limits, lock_wait) = (checkpoint.read_limits(), checkpoint.lock_wait());
    if let StoreSource::Local(volume_dir) = stores::store_source(&opened.db, session) {
        return stores::open_local(&volume_dir, &limits, lock_wait);
    }
    let mut client = ctx.client(&opened.state).await?;
    let reply = client
        .fetch_store(FetchStoreRequest {
            session_id: session.id.clone(),
            fresh,
        })
        .await
        .map_err(coordinator_error)?
        .into_inner();
    stores::open_fetched(&reply.store_dir, &limits, lock_wait)
}

/// For a session on a remote volume, the checkpoints known durable (`None`:
/// a local session, whose checkpoints are durable once written).
pub fn durable_set(
    opened: &Opened,
    session: &SessionRecord,
) -> Result<Option<std::collections::BTreeSet<String>>> {
    stores::durable_set(&opened.db, session)
}
