//! Which checkpoint store a session's checkpoints are read from: a local
//! session's store is its volume directory, opened in place; one on a remote
//! volume is read back into the coordinator's mirror first (`FetchStore`),
//! and only its read-back checkpoints are durable. Every front asks here, so
//! none decides it on its own. [`DurabilityQueue`] is what the durability pass
//! (every 5 s, `daemon.rs`) knows of the checkpoints still to read back.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::checkpoints;
use crate::db::{Db, EventMark, SessionRecord};

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

/// How many `checkpoint_created` events one read of the durability pass takes.
const ANNOUNCED_PAGE: usize = 1000;

/// The checkpoints announced on a remote backend that are not known durable yet,
/// kept between durability passes so that a pass reads only the events stored
/// since the last one: a cursor (the last `checkpoint_created` event read) and the
/// checkpoints read but not yet verified durable, which every pass retries until
/// they are (a checkpoint whose read-back failed is never behind the cursor and
/// forgotten; it stays here).
///
/// In memory, not persisted: a new coordinator starts with no cursor and its first
/// pass reads every such event once (one query a page, one durable-set query per
/// session), which finds exactly the checkpoints still awaiting durability — the
/// `durable_checkpoints` table is the persisted truth. A persisted cursor would save
/// that one read per start at the cost of a migration and of persisting the retry
/// set with it (else a restart would drop the failed ones behind the cursor).
///
/// Event ids are never given again (AUTOINCREMENT, schema version 11), but the
/// event under the cursor can still go: `task delete`, or a database put back from
/// a copy that ends before it. Each refresh first checks that the event under the
/// cursor is still stored as it was read, and reads everything again when it is not.
#[derive(Debug, Default)]
pub struct DurabilityQueue {
    cursor: Option<EventMark>,
    pending: std::collections::BTreeMap<String, BTreeSet<String>>,
    /// Sessions whose earlier events are read again at the next refresh (a
    /// session that moved onto the backend: its events were another backend's).
    rescan: BTreeSet<String>,
    /// Event rows the reads returned, in all (what tests count).
    rows_read: u64,
}

impl DurabilityQueue {
    /// Reads the `checkpoint_created` events of `backend`'s sessions stored since
    /// the last refresh (all of them the first time, or when the cursor's event is
    /// gone) and adds their checkpoints not known durable to the pending ones.
    pub fn refresh(&mut self, db: &Db, backend: &str) -> Result<()> {
        if let Some(mark) = &self.cursor
            && !db.event_still_stored(mark)?
        {
            tracing::info!(
                event_id = mark.id,
                "the durability pass's last event is gone: reading every checkpoint event again"
            );
            self.cursor = None;
        }
        let mut found: Vec<(String, String)> = Vec::new();
        loop {
            let after = self.cursor.as_ref().map_or(0, |m| m.id);
            let page = db.announced_checkpoints(backend, after, None, ANNOUNCED_PAGE)?;
            self.rows_read += page.len() as u64;
            let full = page.len() == ANNOUNCED_PAGE;
            for announced in page {
                self.cursor = Some(announced.mark);
                if let Some(id) = announced.checkpoint_id {
                    found.push((announced.session_id, id));
                }
            }
            if !full {
                break;
            }
        }
        for session in std::mem::take(&mut self.rescan) {
            let mut after = 0;
            loop {
                let page =
                    db.announced_checkpoints(backend, after, Some(&session), ANNOUNCED_PAGE)?;
                self.rows_read += page.len() as u64;
                let full = page.len() == ANNOUNCED_PAGE;
                for announced in page {
                    after = announced.mark.id;
                    if let Some(id) = announced.checkpoint_id {
                        found.push((announced.session_id, id));
                    }
                }
                if !full {
                    break;
                }
            }
        }
        let mut by_session: std::collections::BTreeMap<String, BTreeSet<String>> =
            std::collections::BTreeMap::new();
        for (session, id) in found {
            by_session.entry(session).or_default().insert(id);
        }
        for (session, ids) in by_session {
            let durable = db.durable_checkpoints(&session)?;
            let waiting: BTreeSet<String> = ids.difference(&durable).cloned().collect();
            if !waiting.is_empty() {
                self.pending.entry(session).or_default().extend(waiting);
            }
        }
        Ok(())
    }

    /// The checkpoints still to read back, by session.
    pub fn pending(&self) -> &std::collections::BTreeMap<String, BTreeSet<String>> {
        &self.pending
    }

    /// Drops the session's checkpoints now in `durable` from the pending ones.
    pub fn settled(&mut self, session_id: &str, durable: &BTreeSet<String>) {
        if let Some(ids) = self.pending.get_mut(session_id) {
            ids.retain(|id| !durable.contains(id));
            if ids.is_empty() {
                self.pending.remove(session_id);
            }
        }
    }

    /// Forgets a session's pending checkpoints (the session is gone, or no
    /// longer on the backend).
    pub fn forget_session(&mut self, session_id: &str) {
        self.pending.remove(session_id);
    }

    /// The next refresh reads the session's earlier events again: it has just
    /// moved onto the backend, so events read before as another backend's (or
    /// not read at all) are now this one's.
    pub fn rescan_session(&mut self, session_id: &str) {
        self.rescan.insert(session_id.to_string());
    }

    /// Event rows the refreshes have read, in all.
    pub fn rows_read(&self) -> u64 {
        self.rows_read
    }
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

    fn announce(db: &Db, n: &str, seq: u64, checkpoint_id: &str) {
        use parhelia_proto::event::Kind;
        let target = crate::db::ContainerRef {
            container_id: format!("ctr-{n}"),
            session_id: format!("sess-{n}"),
            task_id: format!("task-{n}"),
        };
        let event = parhelia_proto::Event {
            seq,
            ts_ms: seq as i64,
            kind: Some(Kind::CheckpointCreated(parhelia_proto::CheckpointCreated {
                checkpoint_id: checkpoint_id.into(),
                trigger: "turn_end".into(),
                ..Default::default()
            })),
        };
        db.record_event(&target, &event).unwrap();
    }

    fn pending(q: &DurabilityQueue) -> Vec<(String, String)> {
        q.pending()
            .iter()
            .flat_map(|(s, ids)| ids.iter().map(move |id| (s.clone(), id.clone())))
            .collect()
    }

    fn pair(s: &str, c: &str) -> (String, String) {
        (s.to_string(), c.to_string())
    }

    /// A second refresh reads only the events stored since the first; a checkpoint
    /// that did not become durable stays pending and is retried while the cursor
    /// moves on; a local session's checkpoints are never read; a new queue (a
    /// restarted coordinator) finds exactly the ones still awaiting durability.
    #[test]
    fn the_durability_queue_reads_new_events_only_and_keeps_the_failed_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let db = Db::open(&tmp.path().join("s.db")).unwrap();
        launch(&db, "0000000a", "modal", "/vol/a");
        launch(&db, "0000000b", "modal", "/vol/b");
        launch(&db, "0000000c", "local", "/vol/c");
        announce(&db, "0000000a", 1, "ckpt-a1");
        announce(&db, "0000000c", 1, "ckpt-c1");
        announce(&db, "0000000b", 1, "ckpt-b1");
        announce(&db, "0000000a", 2, "");
        let mut q = DurabilityQueue::default();
        q.refresh(&db, "modal").unwrap();
        assert_eq!(q.rows_read(), 3, "the local session's event is not read");
        assert_eq!(
            pending(&q),
            [
                pair("sess-0000000a", "ckpt-a1"),
                pair("sess-0000000b", "ckpt-b1")
            ]
        );
        // A pass: b1 reads back and verifies, a1 does not (yet).
        assert!(
            db.mark_checkpoint_durable("sess-0000000b", "ckpt-b1")
                .unwrap()
        );
        q.settled(
            "sess-0000000b",
            &db.durable_checkpoints("sess-0000000b").unwrap(),
        );
        q.settled(
            "sess-0000000a",
            &db.durable_checkpoints("sess-0000000a").unwrap(),
        );
        // Nothing new: the next refresh reads no event, and a1 is still pending.
        q.refresh(&db, "modal").unwrap();
        assert_eq!(q.rows_read(), 3);
        assert_eq!(pending(&q), [pair("sess-0000000a", "ckpt-a1")]);
        // One new event: only it is read; the failed one stays for its retry.
        announce(&db, "0000000b", 2, "ckpt-b2");
        q.refresh(&db, "modal").unwrap();
        assert_eq!(q.rows_read(), 4);
        assert_eq!(
            pending(&q),
            [
                pair("sess-0000000a", "ckpt-a1"),
                pair("sess-0000000b", "ckpt-b2")
            ]
        );
        // A restarted coordinator: everything read once, the durable b1 left out.
        let mut fresh = DurabilityQueue::default();
        fresh.refresh(&db, "modal").unwrap();
        assert_eq!(fresh.rows_read(), 4);
        assert_eq!(pending(&fresh), pending(&q));
        // The local session moves onto Modal: its earlier checkpoint is read again.
        let mut moved = DurabilityQueue::default();
        moved.refresh(&db, "local").unwrap();
        assert_eq!(pending(&moved), [pair("sess-0000000c", "ckpt-c1")]);
        q.rescan_session("sess-0000000c");
        q.refresh(&db, "local").unwrap();
        assert!(pending(&q).contains(&pair("sess-0000000c", "ckpt-c1")));
        q.forget_session("sess-0000000c");
        assert!(!pending(&q).iter().any(|(s, _)| s == "sess-0000000c"));
    }

    /// The event under the cursor deleted: the queue sees it is gone and reads
    /// everything again, so nothing stored since is skipped (ids are no longer
    /// reused since schema version 11; a database put back from a copy still can).
    #[test]
    fn the_durability_queue_reads_again_when_its_last_event_is_deleted() {
        let tmp = tempfile::tempdir().unwrap();
        let db = Db::open(&tmp.path().join("s.db")).unwrap();
        launch(&db, "0000000a", "modal", "/vol/a");
        launch(&db, "0000000b", "modal", "/vol/b");
        announce(&db, "0000000a", 1, "ckpt-a1");
        announce(&db, "0000000b", 1, "ckpt-b1");
        let mut q = DurabilityQueue::default();
        q.refresh(&db, "modal").unwrap();
        assert_eq!(q.rows_read(), 2);
        // Task b ends and is deleted with its events (the newest ids).
        db.set_container_state(
            "ctr-0000000b",
            crate::container_state::ContainerState::Terminated,
        )
        .unwrap();
        db.transition_task(
            "task-0000000b",
            crate::task_state::TaskStatus::Cancelled,
            &crate::db::TaskUpdate::default(),
        )
        .unwrap();
        db.delete_task("task-0000000b").unwrap();
        // a's next checkpoint is stored under b1's old id.
        announce(&db, "0000000a", 2, "ckpt-a2");
        assert!(
            db.mark_checkpoint_durable("sess-0000000a", "ckpt-a1")
                .unwrap()
        );
        q.settled(
            "sess-0000000a",
            &db.durable_checkpoints("sess-0000000a").unwrap(),
        );
        q.forget_session("sess-0000000b");
        q.refresh(&db, "modal").unwrap();
        assert_eq!(pending(&q), [pair("sess-0000000a", "ckpt-a2")]);
        // Read from the start again: a1 and a2.
        assert_eq!(q.rows_read(), 4);
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
