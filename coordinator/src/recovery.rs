//! Which checkpoint a session would resume from. Checkpoints are taken by
//! the agent into the session's store (`<volume_dir>/checkpoints/`) and
//! announced as `checkpoint_created` journal events.
//!
//! The store is the authority: the engine's `latest()` skips manifests that
//! fail their checksum, and a checkpoint announced by an event may since have
//! been pruned. Events are only the fallback when no store is readable (for
//! example a remote volume the coordinator cannot see); a volume that is here
//! without a store has no checkpoint. Reading never creates a store.
//!
//! A session with no checkpoint is still resumable: it starts over from its
//! starting workspace (`resume_session`), so it is never offered as
//! "resumable (no checkpoint yet)" and then refused (E205).
//!
//! Resume itself: `CoordinatorService::resume_session` (`service.rs`); the
//! reconciler's automatic resume goes through `request_resume`, which calls it.

use std::path::Path;

use crate::checkpoints;
use crate::db::Db;

/// The checkpoint a session would resume from: the newest one that carries the
/// conversation when the session has one (a conversation-less safety checkpoint
/// of an older agent is never offered). Cheap: manifests only; the resume itself
/// verifies (`checkpoints::newest_restorable`).
pub fn latest_checkpoint_id(db: &Db, session_id: &str, volume_dir: &Path) -> Option<String> {
    // Listing only: the default caps are enough to read manifests.
    match checkpoints::open_store(
        volume_dir,
        &parhelia_checkpoint::Limits::default(),
        parhelia_checkpoint::DEFAULT_LOCK_WAIT,
    ) {
        Ok(Some(store)) => match store.list() {
            Ok(list) => {
                let needs_conversation = checkpoints::session_has_conversation(&store, &list);
                return list
                    .iter()
                    .rev()
                    .find(|s| {
                        !needs_conversation
                            || store
                                .load(&s.id)
                                .is_ok_and(|m| checkpoints::has_conversation(&m))
                    })
                    .map(|s| s.id.to_string());
            }
            Err(err) => {
                tracing::warn!(%session_id, "reading the checkpoint store failed: {err}")
            }
        },
        // The session's volume is here and holds no store: it has no checkpoint (its
        // agent died before its `start` one), whatever older events announced.
        Ok(None) if volume_dir.is_dir() => return None,
        Ok(None) => {}
        Err(err) => {
            tracing::warn!(%session_id, "opening the checkpoint store failed: {}", err.message)
        }
    }
    db.latest_checkpoint_event(session_id)
        .unwrap_or_else(|err| {
            tracing::warn!(%session_id, "reading checkpoint events failed: {err:#}");
            None
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use parhelia_checkpoint::{ChangeHint, CreateOutcome, CreateRequest, Store, TreeSpec};

    #[test]
    fn the_store_decides_and_is_never_created_by_reading() {
        let tmp = tempfile::tempdir().unwrap();
        let db = Db::open(&tmp.path().join("p.db")).unwrap();
        let volume = tmp.path().join("volume");
        assert_eq!(latest_checkpoint_id(&db, "sess-1", &volume), None);
        assert!(
            !volume.join("checkpoints").exists(),
            "reading created the store"
        );

        let tree = tmp.path().join("tree");
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::write(tree.join("a"), "a").unwrap();
        let store = Store::open(&volume.join("checkpoints")).unwrap();
        let mut ids = Vec::new();
        for content in ["a", "b"] {
            std::fs::write(tree.join("a"), content).unwrap();
            let outcome = store
                .create(&CreateRequest {
                    trees: vec![(
                        TreeSpec {
                            name: "workspace".into(),
                            root: tree.clone(),
                            excludes: Vec::new(),
                        },
                        ChangeHint::Unknown,
                    )],
                    parent: None,
                    trigger: "manual".into(),
                    message: None,
                    metadata: serde_json::Value::Null,
                    skip_if_unchanged: false,
                })
                .unwrap();
            let CreateOutcome::Created(manifest) = outcome else {
                panic!("not created");
            };
            ids.push(manifest.id.to_string());
        }
        assert_eq!(
            latest_checkpoint_id(&db, "sess-1", &volume).as_deref(),
            Some(ids[1].as_str())
        );
    }
}
