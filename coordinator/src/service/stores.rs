//! Which checkpoint store a session's checkpoints are read from: a local
//! session's store is its volume directory, opened in place; one on a remote
//! volume is read back into the coordinator's mirror first (`FetchStore`),
//! and only its read-back checkpoints are durable. Every front asks here, so
//! none decides it on its own.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::checkpoints;
use crate::db::{Db, SessionRecord};

/// Where to read a session's store from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreSource {
    /// Its volume directory on this machine: open it in place.
    Local(PathBuf),
    /// A remote volume: ask the coordinator for its mirror (`FetchStore`).
    Remote,
}

/// By the session's task's backend; a session whose task is gone (or whose
/// record cannot be read) is taken for local, as its volume dir is all there is.
pub fn store_source(db: &Db, session: &SessionRecord) -> StoreSource {
    let remote = db
        .get_task(&session.task_id)
        .ok()
        .flatten()
        .is_some_and(|t| t.backend != "local");
    if remote {
        StoreSource::Remote
    } else {
        StoreSource::Local(PathBuf::from(&session.volume_dir))
    }
}

pub fn is_remote(db: &Db, session: &SessionRecord) -> bool {
    store_source(db, session) == StoreSource::Remote
}

/// For a session on a remote volume, the checkpoints known durable (`None`:
/// a local session, whose checkpoints are durable once written).
pub fn durable_set(db: &Db, session: &SessionRecord) -> Result<Option<BTreeSet<String>>> {
    if !is_remote(db, session) {
        return Ok(None);
    }
    Ok(Some(db.durable_checkpoints(&session.id)?))
}

/// Opens a local session's store in place (`None`: it has none yet).
pub fn open_local(
    volume_dir: &Path,
    limits: &parhelia_checkpoint::Limits,
    lock_wait: std::time::Duration,
) -> Result<Option<parhelia_checkpoint::Store>> {
    Ok(checkpoints::open_store(volume_dir, limits, lock_wait)?)
}

/// Opens the directory `FetchStore` returned (empty: the session has no store).
pub fn open_fetched(
    store_dir: &str,
    limits: &parhelia_checkpoint::Limits,
    lock_wait: std::time::Duration,
) -> Result<Option<parhelia_checkpoint::Store>> {
    if store_dir.is_empty() {
        return Ok(None);
    }
    Ok(Some(checkpoints::open_store_at(
        Path::new(store_dir),
        limits,
        lock_wait,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::NewLaunch;

    fn launch(db: &Db, n: &str, backend: &str, volume_dir: &str) -> SessionRecord {
        db.insert_launch(&NewLaunch {
            task_id: format!("task-{n}"),
            session_id: format!("sess-{n}"),
            container_id: format!("ctr-{n}"),
            claude_session_id: "uuid".into(),
            prompt: "p".into(),
            task_type: "generic".into(),
            backend: backend.into(),
            workspace: None,
            model: None,
            max_turns: None,
            mode: "headless".into(),
            secret: crate::ids::SessionSecret::from_stored("s3cret".into()),
            workspace_dir: "/w".into(),
            volume_dir: volume_dir.into(),
        })
        .unwrap();
        db.get_session(&format!("sess-{n}")).unwrap().unwrap()
    }

    #[test]
    fn a_local_session_opens_its_volume_in_place_and_a_modal_one_asks_for_its_mirror() {
        let tmp = tempfile::tempdir().unwrap();
        let db = Db::open(&tmp.path().join("s.db")).unwrap();
        let local = launch(&db, "0000000a", "local", "/vol/a");
        let modal = launch(&db, "0000000b", "modal", "/vol/b");
        assert_eq!(
            store_source(&db, &local),
            StoreSource::Local(PathBuf::from("/vol/a"))
        );
        assert_eq!(store_source(&db, &modal), StoreSource::Remote);
        assert_eq!(durable_set(&db, &local).unwrap(), None);
        assert_eq!(durable_set(&db, &modal).unwrap(), Some(BTreeSet::new()));
        // A session whose task record is gone: its volume dir is all there is.
        let orphan = SessionRecord {
            task_id: "task-gone".into(),
            ..modal
        };
        assert_eq!(
            store_source(&db, &orphan),
            StoreSource::Local(PathBuf::from("/vol/b"))
        );
    }

    #[test]
    fn no_store_yet_is_none_not_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let limits = parhelia_checkpoint::Limits::default();
        let wait = parhelia_checkpoint::DEFAULT_LOCK_WAIT;
        assert!(open_local(tmp.path(), &limits, wait).unwrap().is_none());
        assert!(open_fetched("", &limits, wait).unwrap().is_none());
    }
}
