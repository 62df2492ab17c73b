//! Hooks where the control plane meets checkpoints and resume. Checkpoints
//! are taken by the agent into the session's store
//! (`<volume_dir>/checkpoints/`) and announced as `checkpoint_created`
//! journal events; resume launches a new container for an interrupted
//! session. The reconciler and `task cancel` only need two answers from
//! here: which checkpoint a session would resume from, and whether resume
//! can run in this build.
//!
//! HOOK (checkpoints): [`latest_checkpoint_id`] takes the latest
//! `checkpoint_created` event the coordinator stored for the session and,
//! failing that, lists the store directory for checkpoint ids. It never
//! creates the store. Replace the listing with the engine
//! (`crate::checkpoints::open_store(volume)?.latest()`) once that module is
//! settled.
//!
//! Resume: `CoordinatorService::resume_session` (`service.rs`) launches the
//! fresh container; the reconciler's automatic resume goes through
//! `CoordinatorService::request_resume`, which calls it.

use std::path::Path;

use crate::db::Db;

/// The checkpoint store of a session volume.
pub fn store_dir(volume_dir: &Path) -> std::path::PathBuf {
    volume_dir.join("checkpoints")
}

/// The checkpoint a session would resume from: the newest id announced by
/// its agent (`checkpoint_created` events) or found in its store.
pub fn latest_checkpoint_id(db: &Db, session_id: &str, volume_dir: &Path) -> Option<String> {
    let announced = db
        .latest_checkpoint_event(session_id)
        .unwrap_or_else(|err| {
            tracing::warn!(%session_id, "reading checkpoint events failed: {err:#}");
            None
        });
    let stored = latest_in_store(volume_dir);
    // Ids sort by creation time (`cp-<unix-ms>-<8 hex>`).
    announced.into_iter().chain(stored).max()
}

/// The newest checkpoint id in a store directory, if the store exists: any
/// entry of the store (or of its `manifests/` directory) whose name starts
/// with a checkpoint id, e.g. `cp-….manifest` or `cp-…/`.
pub fn latest_in_store(volume_dir: &Path) -> Option<String> {
    let store = store_dir(volume_dir);
    let mut best: Option<String> = None;
    for dir in [store.clone(), store.join("manifests")] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(id) = checkpoint_id_prefix(&name)
                && best.as_deref().is_none_or(|b| id.as_str() > b)
            {
                best = Some(id);
            }
        }
    }
    best
}

/// `cp-<digits>-<8 hex>` at the start of `name`.
fn checkpoint_id_prefix(name: &str) -> Option<String> {
    let rest = name.strip_prefix("cp-")?;
    let (millis, rest) = rest.split_once('-')?;
    if millis.is_empty() || !millis.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hex: String = rest.chars().take(8).collect();
    if hex.len() != 8 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(format!("cp-{millis}-{hex}"))
}

/// Whether this build can resume a session on a fresh container.
pub fn resume_available() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_is_listed_only_when_present() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(latest_in_store(tmp.path()), None);
        assert!(!store_dir(tmp.path()).exists(), "never creates the store");
        let store = store_dir(tmp.path());
        std::fs::create_dir_all(store.join("manifests")).unwrap();
        assert_eq!(latest_in_store(tmp.path()), None);
        std::fs::write(store.join("cp-1700000000000-0a1b2c3d.manifest"), "").unwrap();
        std::fs::write(
            store.join("manifests/cp-1700000000500-ffffffff.manifest"),
            "",
        )
        .unwrap();
        std::fs::create_dir(store.join("cp-1700000000100-00000000")).unwrap();
        std::fs::write(store.join("index"), "").unwrap();
        std::fs::write(store.join("cp-x-0a1b2c3d"), "").unwrap();
        assert_eq!(
            latest_in_store(tmp.path()).as_deref(),
            Some("cp-1700000000500-ffffffff")
        );
    }
}
