//! `parhelia checkpoint verify` and `parhelia checkpoint repair`: whole stores,
//! read directly (a Modal session's store as a new copy of every file its volume
//! holds, read back by the coordinator first; a repair is written back to the
//! volume). The work is the engine's; `crate::store_health` finds
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
    let targets = if let Some(id) = &args.checkpoint_id {
        let (s, _, id) = super::checkpoint::find(ctx, opened, id).await?;
        only = Some(id);
        vec![s]
    } else {
        sessions(opened, args.session.as_deref(), args.all)?
    };
    for s in targets {
        // A remote store is read again in full: the volume's bytes, not the mirror's.
        let Some(store) = super::modal::session_store_copy(ctx, opened, &s).await? else {
            continue;
        };
        let health = store
            .check(depth)
            .map_err(|e| crate::checkpoints::coded(&e));
        super::modal::remove_store_copy(opened, &s, store.root());
        reports.push(SessionHealth {
            session_id: s.id,
            store: store.root().to_path_buf(),
            health: health?,
        });
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
        // A remote store is repaired in a new copy of the volume's bytes (its
        // mirror is one of the sources), and what changed is written back.
        let Some(store) = super::modal::session_store_copy(ctx, opened, &s).await? else {
            continue;
        };
        let remote = super::modal::is_remote(opened, &s);
        let before = store_files(store.root());
        let result = async {
            let sources =
                store_health::repair_sources(&opened.db, opened.state.root(), &s, store.root())?;
            let report = store
                .repair(&RepairOptions {
                    sources,
                    dry_run: args.dry_run,
                })
                .map_err(|e| crate::checkpoints::coded(&e))?;
            if remote && !args.dry_run {
                let (put, remove) = changed_files(&before, &store_files(store.root()));
                if !put.is_empty() || !remove.is_empty() {
                    super::modal::push_store(ctx, opened, &s, store.root(), put, remove).await?;
                }
            }
            anyhow::Ok(report)
        }
        .await;
        super::modal::remove_store_copy(opened, &s, store.root());
        let report = result?;
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

/// A store's durable files, each with what changes when it is rewritten
/// (length, inode, modification time).
type FileStamps = std::collections::BTreeMap<String, (u64, u64, i64, i64)>;

fn store_files(root: &std::path::Path) -> FileStamps {
    use std::os::unix::fs::MetadataExt;
    let mut out = FileStamps::new();
    let mut note = |rel: String| {
        if parhelia_checkpoint::durable::is_durable_file(&rel)
            && let Ok(meta) = std::fs::symlink_metadata(root.join(&rel))
            && meta.is_file()
        {
            out.insert(
                rel,
                (meta.len(), meta.ino(), meta.mtime(), meta.mtime_nsec()),
            );
        }
    };
    note("store.json".into());
    for dir in ["layers", "manifests"] {
        for entry in std::fs::read_dir(root.join(dir))
            .into_iter()
            .flatten()
            .flatten()
        {
            note(format!("{dir}/{}", entry.file_name().to_string_lossy()));
        }
    }
    out
}

/// What a repair wrote (new or rewritten files) and what it moved aside.
fn changed_files(before: &FileStamps, after: &FileStamps) -> (Vec<String>, Vec<String>) {
    let put = after
        .iter()
        .filter(|(rel, stamp)| before.get(*rel) != Some(stamp))
        .map(|(rel, _)| rel.clone())
        .collect();
    let remove = before
        .keys()
        .filter(|rel| !after.contains_key(*rel))
        .cloned()
        .collect();
    (put, remove)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewritten_new_or_moved_file_is_named_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for dir in ["layers", "manifests", "tmp"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        for rel in [
            "store.json",
            "layers/a",
            "layers/b",
            "manifests/m1",
            "tmp/x",
        ] {
            std::fs::write(root.join(rel), rel).unwrap();
        }
        let before = store_files(root);
        assert!(!before.contains_key("tmp/x"));
        // Rewritten the way the engine does (a new file renamed over), one new,
        // one moved aside, one untouched.
        std::fs::write(root.join("layers/.a.tmp"), "layers/a").unwrap();
        std::fs::rename(root.join("layers/.a.tmp"), root.join("layers/a")).unwrap();
        std::fs::write(root.join("layers/c"), "c").unwrap();
        std::fs::rename(root.join("layers/b"), root.join("tmp/b")).unwrap();
        let (put, remove) = changed_files(&before, &store_files(root));
        assert_eq!(put, ["layers/a", "layers/c"]);
        assert_eq!(remove, ["layers/b"]);
    }
}
