//! Checkpoint store health as the coordinator reports it: `checkpoint verify`,
//! `checkpoint repair`, doctor's store check, and the default `resume`'s choice of the
//! newest checkpoint that verifies (with why it skipped newer ones).
//!
//! Damage is reported as damage (E620, naming the file and the checkpoints it
//! affects), never as absence. The engine does the work (`Store::check`,
//! `Store::repair`); this module finds the stores and the repair sources of a session
//! (its workspace, the task's workspace, the local mirror of a Modal store, every
//! other session's store) and renders reports. The text functions are pure.

use std::path::{Path, PathBuf};

use parhelia_checkpoint::{
    CheckDepth, CheckpointError, CheckpointId, RepairReport, RepairSource, Store, StoreHealth,
};
use serde::Serialize;

use crate::checks::Check;
use crate::db::{Db, SessionRecord};
use crate::error::CodedError;
use crate::error_codes;
use crate::render::bytes;

/// Stores up to this many layer bytes in all are checked in full by `doctor` (every
/// byte read and hashed); larger ones get a quick check (manifests and layer indexes).
pub const DOCTOR_FULL_BYTES: u64 = 1 << 30;

/// One session's store and what the report says about it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SessionHealth {
    pub session_id: String,
    pub store: PathBuf,
    pub health: StoreHealth,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SessionRepair {
    pub session_id: String,
    pub store: PathBuf,
    pub report: RepairReport,
}

/// A checkpoint the default `resume` passed over, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub checkpoint_id: String,
    pub code: String,
    pub reason: String,
}

/// The newest checkpoint of `store` that verifies, and the newer ones it skipped (a
/// damaged manifest included: it is a checkpoint, not an absence).
pub fn newest_restorable(
    store: &Store,
) -> Result<(Option<CheckpointId>, Vec<Skipped>), CheckpointError> {
    let mut skipped = Vec::new();
    for listed in store.list_all()?.into_iter().rev() {
        let (code, reason) = match &listed.summary {
            Err(e) => (e.code(), format!("manifest is damaged: {e}")),
            Ok(_) => match store.verify(&listed.id) {
                Ok(()) => return Ok((Some(listed.id), skipped)),
                Err(e @ (CheckpointError::Locked { .. } | CheckpointError::Io { .. })) => {
                    return Err(e);
                }
                Err(e) => (e.code(), e.to_string()),
            },
        };
        skipped.push(Skipped {
            checkpoint_id: listed.id.to_string(),
            code: code.to_string(),
            reason,
        });
    }
    Ok((None, skipped))
}

/// An engine error about checkpoint `id` of `session_id`'s store as a coded error
/// that says where: damage names the store and points at `checkpoint verify`.
pub fn coded_at(e: &CheckpointError, session_id: &str, store: &Path, id: &str) -> CodedError {
    let mut err = crate::checkpoints::coded(e);
    if err.code == error_codes::CHECKPOINT_CORRUPT {
        err.message = format!(
            "checkpoint {id} of session {session_id} is damaged: {e} (store {}; `parhelia checkpoint verify {id}` names every damaged file)",
            store.display()
        );
    }
    err
}

/// The local checkpoint stores of a session: its volume's store, and any local
/// mirror of a Modal store under the state directory.
pub fn store_roots(state_root: &Path, s: &SessionRecord) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let own = Path::new(&s.volume_dir).join("checkpoints");
    if own.join("store.json").is_file() {
        out.push(own);
    }
    if let Ok(volumes) = std::fs::read_dir(state_root.join("modal").join("mirror")) {
        for v in volumes.flatten().take(1000) {
            let m = v.path().join("sessions").join(&s.id).join("checkpoints");
            if m.join("store.json").is_file() && !out.contains(&m) {
                out.push(m);
            }
        }
    }
    out
}

/// Where `repair` may find intact copies for session `s`'s store at `store`: its
/// workspace and its task's, its other stores (a Modal mirror, the store it had
/// before it moved), and every other session's stores.
pub fn repair_sources(
    db: &Db,
    state_root: &Path,
    s: &SessionRecord,
    store: &Path,
) -> anyhow::Result<Vec<RepairSource>> {
    let mut out = Vec::new();
    let ws = PathBuf::from(&s.workspace_dir);
    if ws.is_dir() {
        out.push(RepairSource::Workspace(ws));
    }
    if let Some(task) = db.get_task(&s.task_id)?
        && let Some(w) = task.workspace
        && Path::new(&w).is_dir()
    {
        out.push(RepairSource::Workspace(PathBuf::from(w)));
    }
    let mine = store.canonicalize().unwrap_or_else(|_| store.to_path_buf());
    let mut stores: Vec<PathBuf> = store_roots(state_root, s);
    for other in db.list_sessions()? {
        if other.id != s.id {
            stores.extend(store_roots(state_root, &other));
        }
    }
    for root in stores {
        if root.canonicalize().is_ok_and(|c| c != mine) {
            out.push(RepairSource::Store(root));
        }
    }
    Ok(out)
}

/// Total bytes of the layer files of `roots`.
pub fn layer_bytes(roots: &[PathBuf]) -> u64 {
    let mut n = 0u64;
    for r in roots {
        if let Ok(rd) = std::fs::read_dir(r.join("layers")) {
            for e in rd.flatten() {
                n = n.saturating_add(e.metadata().map(|m| m.len()).unwrap_or(0));
            }
        }
    }
    n
}

/// `doctor`'s store checks: one line saying what was checked and how, then one per
/// damaged file (which checkpoints it affects, and the repair command).
pub fn doctor_checks(
    db: &Db,
    state_root: &Path,
    limits: &parhelia_checkpoint::Limits,
) -> Vec<Check> {
    let sessions = match db.list_sessions() {
        Ok(s) => s,
        Err(err) => {
            return vec![Check::warn(
                "checkpoints",
                format!("cannot list sessions: {err:#}"),
                "see `database`",
            )];
        }
    };
    let stores: Vec<(String, PathBuf)> = sessions
        .iter()
        .flat_map(|s| {
            store_roots(state_root, s)
                .into_iter()
                .map(|r| (s.id.clone(), r))
        })
        .collect();
    let roots: Vec<PathBuf> = stores.iter().map(|(_, r)| r.clone()).collect();
    let total = layer_bytes(&roots);
    let depth = if total <= DOCTOR_FULL_BYTES {
        CheckDepth::Full
    } else {
        CheckDepth::Quick
    };
    let mut reports = Vec::new();
    let mut problems = Vec::new();
    for (sid, root) in &stores {
        let checked = parhelia_checkpoint::Store::open(root)
            .map(|s| {
                s.with_limits(limits.clone())
                    .with_lock_wait(std::time::Duration::from_secs(5))
            })
            .and_then(|s| s.check(depth));
        match checked {
            Ok(health) => reports.push(SessionHealth {
                session_id: sid.clone(),
                store: root.clone(),
                health,
            }),
            Err(e) => problems.push(Check::warn(
                "checkpoints",
                format!("{sid}: cannot check {}: [{}] {e}", root.display(), e.code()),
                "run `parhelia doctor` again once the store is not busy",
            )),
        }
    }
    let mut checks = vec![doctor_summary(&reports, depth, total)];
    checks.extend(doctor_damage(&reports));
    checks.extend(problems);
    checks
}

/// The first store line of `doctor` (pure).
pub fn doctor_summary(reports: &[SessionHealth], depth: CheckDepth, total: u64) -> Check {
    let checkpoints: usize = reports.iter().map(|r| r.health.checkpoints.len()).sum();
    let damaged: usize = reports
        .iter()
        .map(|r| r.health.damaged_checkpoints().count())
        .sum();
    let how = match depth {
        CheckDepth::Full => format!("full check: all {} of layers read and hashed", bytes(total)),
        CheckDepth::Quick => format!(
            "quick check: manifests and layer indexes only, the {} of layers exceed {}; `parhelia checkpoint verify --all` reads every byte",
            bytes(total),
            bytes(DOCTOR_FULL_BYTES)
        ),
    };
    let detail = format!(
        "{} store(s), {checkpoints} checkpoint(s), {damaged} damaged ({how})",
        reports.len()
    );
    if damaged == 0 && reports.iter().all(|r| r.health.is_ok()) {
        Check::ok("checkpoints", detail)
    } else {
        Check::fail(
            "checkpoints",
            detail,
            "see the damaged files below; `parhelia checkpoint repair --all` rewrites them from intact copies",
        )
    }
}

/// One `doctor` line per damaged file (pure).
pub fn doctor_damage(reports: &[SessionHealth]) -> Vec<Check> {
    let mut out = Vec::new();
    for r in reports {
        for d in &r.health.damaged {
            out.push(Check::fail(
                "checkpoints",
                format!(
                    "[E620] {}: {} — {}; {}",
                    r.session_id,
                    d.path,
                    d.problem,
                    affects_text(&d.affects)
                ),
                format!("parhelia checkpoint repair --session {}", r.session_id),
            ));
        }
    }
    out
}

fn affects_text(ids: &[CheckpointId]) -> String {
    match ids.len() {
        0 => "no checkpoint needs it".into(),
        1 => format!("affects checkpoint {}", ids[0]),
        n => format!(
            "affects {n} checkpoints: {}",
            ids.iter()
                .map(|i| i.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// `checkpoint verify` as text (pure). `only`: the one checkpoint asked about.
pub fn verify_text(reports: &[SessionHealth], only: Option<&CheckpointId>) -> String {
    let mut out = String::new();
    if reports.is_empty() {
        return "no checkpoint stores\n".into();
    }
    for r in reports {
        let h = &r.health;
        let states: Vec<_> = h
            .checkpoints
            .iter()
            .filter(|c| only.is_none_or(|o| &c.id == o))
            .collect();
        let bad = states.iter().filter(|c| c.damage.is_some()).count();
        out.push_str(&format!(
            "{} · {} check · {} checkpoint(s), {} damaged · {} layer(s), {} read\n",
            r.session_id,
            h.depth.as_str(),
            states.len(),
            bad,
            h.layers_checked,
            bytes(h.bytes_read)
        ));
        out.push_str(&format!("  store    {}\n", r.store.display()));
        for d in h
            .damaged
            .iter()
            .filter(|d| only.is_none_or(|o| d.affects.contains(o)))
        {
            out.push_str(&format!("  damaged  {}\n", d.path));
            out.push_str(&format!("           {}\n", d.problem));
            out.push_str(&format!("           {}\n", affects_text(&d.affects)));
        }
        for c in states.iter().filter(|c| c.damage.is_some()) {
            out.push_str(&format!(
                "  E620     {}  {}\n",
                c.id,
                c.damage.as_deref().unwrap_or("")
            ));
            if let Some(note) = &c.repair_note {
                out.push_str(&format!("           repair found no fix: {note}\n"));
            }
        }
        if bad == 0 {
            out.push_str("  ok       every checkpoint verifies\n");
        } else {
            out.push_str(&format!(
                "  repair   parhelia checkpoint repair --session {}\n",
                r.session_id
            ));
        }
    }
    out
}

/// `checkpoint repair` as text (pure).
pub fn repair_text(repairs: &[SessionRepair]) -> String {
    let mut out = String::new();
    if repairs.is_empty() {
        return "no checkpoint stores\n".into();
    }
    for r in repairs {
        let rep = &r.report;
        out.push_str(&format!(
            "{}{} · {} damaged file(s)\n",
            if rep.dry_run { "(dry run) " } else { "" },
            r.session_id,
            rep.damaged.len()
        ));
        out.push_str(&format!("  store    {}\n", r.store.display()));
        for a in &rep.actions {
            out.push_str(&format!("  {:<8} {}\n", "file", a.path));
            out.push_str(&format!("           {}\n", a.action));
        }
        for id in &rep.repaired {
            out.push_str(&format!(
                "  {:<8} {id}\n",
                if rep.dry_run { "to fix" } else { "repaired" }
            ));
        }
        for u in &rep.unrepairable {
            out.push_str(&format!("  E625     {}  {}\n", u.id, u.reason));
        }
        if rep.damaged.is_empty() {
            out.push_str("  ok       nothing damaged\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use parhelia_checkpoint::{CheckpointState, DamagedFile};

    fn id(n: u32) -> CheckpointId {
        CheckpointId::parse(&format!("cp-17000000000{n:02}-0123abcd")).unwrap()
    }

    fn damaged_report() -> SessionHealth {
        let layer = "layers/".to_string() + &"ab".repeat(32) + ".tar.zst";
        let state = |n: u32, damage: Option<&str>| CheckpointState {
            id: id(n),
            summary: None,
            damage: damage.map(str::to_string),
            code: damage.map(|_| "E620"),
            repair_note: None,
        };
        SessionHealth {
            session_id: "sess-00000001".into(),
            store: PathBuf::from("/state/sessions/sess-00000001/checkpoints"),
            health: StoreHealth {
                depth: CheckDepth::Full,
                checkpoints: vec![
                    state(1, Some("layer damaged")),
                    state(2, Some("layer damaged")),
                    CheckpointState {
                        repair_note: Some("its manifest is damaged and no source holds an intact copy".into()),
                        ..state(3, Some("manifest is damaged: corrupt checkpoint store: manifest checksum mismatch"))
                    },
                ],
                damaged: vec![
                    DamagedFile {
                        path: format!("manifests/{}.manifest", id(3)),
                        problem: "manifest is damaged: corrupt checkpoint store: manifest checksum mismatch".into(),
                        missing: false,
                        bad_blobs: None,
                        affects: vec![id(3)],
                    },
                    DamagedFile {
                        path: layer,
                        problem: "layer checksum mismatch; 1 of 4 blobs fail their hash".into(),
                        missing: false,
                        bad_blobs: Some((1, 4)),
                        affects: vec![id(1), id(2)],
                    },
                ],
                layers_checked: 3,
                bytes_read: 3 << 20,
                quarantined: vec![],
            },
        }
    }

    #[test]
    fn verify_names_each_damaged_file_and_the_checkpoints_it_affects() {
        insta::assert_snapshot!(verify_text(&[damaged_report()], None));
    }

    #[test]
    fn verify_of_one_checkpoint_shows_only_what_affects_it() {
        let text = verify_text(&[damaged_report()], Some(&id(1)));
        assert!(!text.contains("manifests/"), "{text}");
        insta::assert_snapshot!(text);
    }

    #[test]
    fn doctor_reports_the_mode_and_each_damaged_file() {
        let reports = [damaged_report()];
        let mut checks = vec![doctor_summary(&reports, CheckDepth::Full, 3 << 20)];
        checks.extend(doctor_damage(&reports));
        insta::assert_snapshot!(crate::doctor::report_text(&checks));
        let quick = doctor_summary(&[], CheckDepth::Quick, 5 << 30);
        assert!(quick.detail.contains("quick check"), "{}", quick.detail);
    }

    #[test]
    fn list_shows_a_damaged_manifest_as_damaged() {
        let ok = crate::checkpoints::CheckpointView {
            trigger: "turn_end".into(),
            message: Some("fine".into()),
            file_count: 3,
            ..crate::checkpoints::CheckpointView::damaged("sess-00000001", &id(1), String::new())
        };
        let ok = crate::checkpoints::CheckpointView {
            damaged: None,
            durable: true,
            ..ok
        };
        let bad = crate::checkpoints::CheckpointView::damaged(
            "sess-00000001",
            &id(2),
            "manifest is damaged: corrupt checkpoint store: manifest checksum mismatch".into(),
        );
        assert_eq!(bad.created_at, "2023-11-14T22:13:20.002Z");
        insta::assert_snapshot!(crate::checkpoints::list_text(&[ok, bad]));
    }

    #[test]
    fn repair_text_lists_actions_repaired_and_unrepairable() {
        let report = RepairReport {
            dry_run: false,
            damaged: damaged_report().health.damaged,
            actions: vec![parhelia_checkpoint::RepairAction {
                path: format!("layers/{}.tar.zst", "cd".repeat(32)),
                action: "rewrote 1 blob(s) of damaged layers (1 from the workspace, 3 from this store's layers/ab….tar.zst)".into(),
            }],
            repaired: vec![id(1), id(2)],
            unrepairable: vec![parhelia_checkpoint::Unrepairable {
                id: id(3),
                reason: "its manifest is damaged and no source holds an intact copy".into(),
            }],
        };
        insta::assert_snapshot!(repair_text(&[SessionRepair {
            session_id: "sess-00000001".into(),
            store: PathBuf::from("/s"),
            report,
        }]));
    }
}
