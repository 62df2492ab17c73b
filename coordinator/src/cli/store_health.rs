//! `parhelia checkpoint verify` and `parhelia checkpoint repair`: whole stores,
//! read directly (a Modal session's store through its local mirror, read back by
//! the coordinator first). The work is the engine's; `crate::store_health` finds
//! the stores and the repair sources and renders the reports.

use anyhow::Result;
use clap::Args;
use parhelia_checkpoint::{CheckDepth, RepairOptions};

use super::{Ctx, Opened, print_json};
use crate::db::SessionRecord;
use crate::error::coded;
use crate::error_codes;
use crate::store_health::{self, SessionHealth, SessionRepair};
use crate::term::escape_untrusted_text;

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// One checkpoint (its session's store is read to say what affects it)
    #[arg(conflicts_with_all = ["session", "all"])]
    pub checkpoint_id: Option<String>,
    /// Every checkpoint of one session
    #[arg(long, conflicts_with = "all")]
    pub session: Option<String>,
    /// Every session's store
    #[arg(long)]
    pub all: bool,
    /// Manifests and layer indexes only: fast, but a flipped byte inside a
    /// layer is not seen
    #[arg(long)]
    pub quick: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RepairArgs {
    /// One session's store
    #[arg(long, conflicts_with = "all")]
    pub session: Option<String>,
    /// Every session's store
    #[arg(long)]
    pub all: bool,
    /// Say what would be repaired; change nothing
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long)]
    pub json: bool,
}

/// The sessions `--session S | --all` name.
fn sessions(opened: &Opened, session: Option<&str>, all: bool) -> Result<Vec<SessionRecord>> {
    match (session, all) {
        (Some(id), _) => Ok(vec![super::checkpoint::session(opened, id)?]),
        (None, true) => Ok(opened.db.list_sessions()?),
        (None, false) => Err(coded(
            error_codes::INVALID_INPUT,
            "name what to check: a CHECKPOINT_ID, --session SESSION_ID or --all",
        )),
    }
}

pub async fn verify(ctx: &Ctx, opened: &Opened, args: VerifyArgs) -> Result<i32> {
    let depth = if args.quick {
        CheckDepth::Quick
    } else {
        CheckDepth::Full
    };
    let mut reports = Vec::new();
    let mut only = None;
    if let Some(id) = &args.checkpoint_id {
        let (s, store, id) = super::checkpoint::find(ctx, opened, id).await?;
        let health = store
            .check(depth)
            .map_err(|e| crate::checkpoints::coded(&e))?;
        reports.push(SessionHealth {
            session_id: s.id,
            store: store.root().to_path_buf(),
            health,
        });
        only = Some(id);
    } else {
        for s in sessions(opened, args.session.as_deref(), args.all)? {
            let Some(store) = super::modal::session_store(ctx, opened, &s).await? else {
                continue;
            };
            let health = store
                .check(depth)
                .map_err(|e| crate::checkpoints::coded(&e))?;
            reports.push(SessionHealth {
                session_id: s.id,
                store: store.root().to_path_buf(),
                health,
            });
        }
    }
    if args.json {
        print_json(&reports)?;
    } else {
        out!(
            "{}",
            escape_untrusted_text(&store_health::verify_text(&reports, only.as_ref()))
        );
    }
    let damaged: Vec<String> = reports
        .iter()
        .flat_map(|r| {
            r.health
                .damaged
                .iter()
                .filter(|d| only.as_ref().is_none_or(|o| d.affects.contains(o)))
                .map(move |d| format!("{}: {}", r.session_id, d.path))
        })
        .collect();
    let bad_checkpoints: usize = reports
        .iter()
        .map(|r| {
            r.health
                .damaged_checkpoints()
                .filter(|c| only.as_ref().is_none_or(|o| &c.id == o))
                .count()
        })
        .sum();
    if bad_checkpoints > 0 || !damaged.is_empty() {
        return Err(coded(
            error_codes::CHECKPOINT_CORRUPT,
            format!(
                "{bad_checkpoints} damaged checkpoint(s); damaged files: {}",
                if damaged.is_empty() {
                    "(see above)".to_string()
                } else {
                    damaged.join(", ")
                }
            ),
        ));
    }
    Ok(0)
}

pub async fn repair(ctx: &Ctx, opened: &Opened, args: RepairArgs) -> Result<i32> {
    let mut repairs = Vec::new();
    for s in sessions(opened, args.session.as_deref(), args.all)? {
        let Some(store) = super::modal::session_store(ctx, opened, &s).await? else {
            continue;
        };
        let sources =
            store_health::repair_sources(&opened.db, opened.state.root(), &s, store.root())?;
        let report = store
            .repair(&RepairOptions {
                sources,
                dry_run: args.dry_run,
            })
            .map_err(|e| crate::checkpoints::coded(&e))?;
        repairs.push(SessionRepair {
            session_id: s.id,
            store: store.root().to_path_buf(),
            report,
        });
    }
    if args.json {
        print_json(&repairs)?;
    } else {
        out!(
            "{}",
            escape_untrusted_text(&store_health::repair_text(&repairs))
        );
    }
    let left: Vec<String> = repairs
        .iter()
        .flat_map(|r| r.report.unrepairable.iter().map(|u| u.id.to_string()))
        .collect();
    if !left.is_empty() {
        return Err(coded(
            error_codes::CHECKPOINT_UNREPAIRABLE,
            format!(
                "{} checkpoint(s) {} damaged: {}",
                left.len(),
                if args.dry_run { "would stay" } else { "stay" },
                left.join(", ")
            ),
        ));
    }
    Ok(0)
}
