//! The control plane's records: the task queue, retries and deletion,
//! container states and health, orphans, and what the reconciler reads.

use anyhow::Result;
use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::{
    CONTAINER_COLUMNS, ContainerRecord, ContainerState, Db, TASK_COLUMNS, TaskRecord, TaskUpdate,
    container_from_row, set_container_state_in, task_from_row, transition_task_in, with_task_spend,
};
use crate::container_state::Health;
use crate::error::coded;
use crate::error_codes;
use crate::ids::now_ms;
use crate::queue::{CleanupCandidate, QueuedTask};
use crate::reconcile::{KnownOrphan, ObservedContainer};
use crate::records::{HeartbeatRecord, OrphanRecord};
use crate::task_state::{self, TaskStatus};

/// A container with what the reconciler needs to know about its task.
#[derive(Clone, Debug, PartialEq)]
pub struct ReconcileRow {
    pub container: ContainerRecord,
    pub task_status: TaskStatus,
    pub task_auto_resumes: u32,
    /// This is the task's latest container.
    pub is_latest_for_task: bool,
    pub volume_dir: String,
}

/// What deleting a task removed from the database (its directories are the
/// caller's to remove).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeletedTask {
    pub task_id: String,
    pub session_ids: Vec<String>,
    pub container_ids: Vec<String>,
}

/// A container the reconciler declared lost.
#[derive(Clone, Debug)]
pub struct LostContainer<'a> {
    pub container_id: &'a str,
    pub session_id: &'a str,
    pub task_id: &'a str,
    pub interrupt_task: bool,
    pub checkpoint_id: Option<&'a str>,
    pub error_message: String,
}

/// Where one stored event is: its id, and what identifies it beside the id
/// (ids can be given again once the newest events are deleted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventMark {
    pub id: i64,
    pub container_id: String,
    pub seq: i64,
}

/// A `checkpoint_created` event the durability pass reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnouncedCheckpoint {
    pub mark: EventMark,
    pub session_id: String,
    /// `None`: the payload names no checkpoint (or does not parse).
    pub checkpoint_id: Option<String>,
}

impl Db {
    /// Queues held pending tasks for dispatch (those already queued keep
    /// their place). Returns the ids that were held.
    pub fn request_dispatch(&self, task_ids: &[String]) -> Result<Vec<String>> {
        let conn = self.conn();
        let now = now_ms();
        let mut changed = Vec::new();
        for id in task_ids {
            let n = conn.execute(
                "UPDATE tasks SET dispatch_requested_at_ms = ?2, updated_at_ms = ?2
                 WHERE id = ?1 AND status = 'pending' AND dispatch_requested_at_ms IS NULL",
                params![id, now],
            )?;
            if n == 1 {
                changed.push(id.clone());
            }
        }
        Ok(changed)
    }

    /// Pending tasks held for an explicit dispatch, oldest first.
    pub fn held_tasks(&self) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id FROM tasks WHERE status = 'pending' AND dispatch_requested_at_ms IS NULL
             ORDER BY created_at_ms, rowid",
        )?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Pending tasks waiting for a worker slot.
    pub fn queued_tasks(&self) -> Result<Vec<QueuedTask>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, dispatch_requested_at_ms, created_at_ms FROM tasks
             WHERE status = 'pending' AND dispatch_requested_at_ms IS NOT NULL",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(QueuedTask {
                task_id: r.get(0)?,
                dispatch_requested_at_ms: r.get(1)?,
                created_at_ms: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn count_tasks_in(&self, status: TaskStatus) -> Result<u64> {
        let n: i64 = self.conn().query_row(
            "SELECT count(*) FROM tasks WHERE status = ?1",
            [status.as_str()],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    /// `task retry`: a failed, cancelled or interrupted task goes back to
    /// pending (queued), its outcome cleared. Its sessions stay.
    pub fn retry_task(&self, task_id: &str) -> Result<TaskRecord> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        transition_task_in(&tx, task_id, TaskStatus::Pending, &TaskUpdate::default())?;
        let now = now_ms();
        tx.execute(
            "UPDATE tasks SET error_code = NULL, error_message = NULL, result = NULL,
                    started_at_ms = NULL, finished_at_ms = NULL,
                    dispatch_requested_at_ms = ?2, updated_at_ms = ?2
             WHERE id = ?1",
            params![task_id, now],
        )?;
        let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1");
        let task = tx.query_row(&sql, [task_id], task_from_row)?;
        let task = with_task_spend(&tx, task)?;
        tx.commit()?;
        drop(conn);
        self.advance_generation();
        Ok(task)
    }

    /// Every ended task, for `task cleanup`.
    pub fn cleanup_candidates(&self) -> Result<Vec<CleanupCandidate>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, status, finished_at_ms, created_at_ms FROM tasks
             WHERE status IN ('completed', 'failed', 'cancelled', 'interrupted')
             ORDER BY created_at_ms, rowid",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get(2)?,
                r.get(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (task_id, status, finished_at_ms, created_at_ms) = row?;
            out.push(CleanupCandidate {
                task_id,
                status: status.parse()?,
                finished_at_ms,
                created_at_ms,
            });
        }
        Ok(out)
    }

    /// Deletes an ended task and everything recorded about it (sessions,
    /// containers, events, heartbeats, coordinator events), in one
    /// transaction. E201 when unknown, E605 when it has not ended or one of
    /// its containers is still alive by its record.
    pub fn delete_task(&self, task_id: &str) -> Result<DeletedTask> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let status: Option<String> = tx
            .query_row("SELECT status FROM tasks WHERE id = ?1", [task_id], |r| {
                r.get(0)
            })
            .optional()?;
        let status: TaskStatus = status
            .ok_or_else(|| {
                coded(
                    error_codes::TASK_NOT_FOUND,
                    format!("task not found: {task_id}"),
                )
            })?
            .parse()?;
        if !status.has_ended() {
            return Err(coded(
                error_codes::TASK_STILL_ACTIVE,
                format!("task {task_id} is {status}; only ended tasks can be deleted"),
            ));
        }
        let alive: Option<(String, String)> = tx
            .query_row(
                "SELECT id, state FROM containers WHERE task_id = ?1
                 AND state IN ('created', 'starting', 'running', 'stopping', 'orphaned') LIMIT 1",
                [task_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((container_id, state)) = alive {
            return Err(coded(
                error_codes::TASK_STILL_ACTIVE,
                format!(
                    "task {task_id} still has container {container_id} ({state}); terminate it first (parhelia container terminate {container_id})"
                ),
            ));
        }
        let ids = |sql: &str| -> rusqlite::Result<Vec<String>> {
            let mut stmt = tx.prepare(sql)?;
            let rows = stmt.query_map([task_id], |r| r.get(0))?;
            rows.collect()
        };
        let deleted = DeletedTask {
            task_id: task_id.to_string(),
            session_ids: ids("SELECT id FROM sessions WHERE task_id = ?1 ORDER BY created_at_ms")?,
            container_ids: ids(
                "SELECT id FROM containers WHERE task_id = ?1 ORDER BY created_at_ms",
            )?,
        };
        tx.execute(
            "DELETE FROM heartbeats WHERE container_id IN (SELECT id FROM containers WHERE task_id = ?1)",
            [task_id],
        )?;
        tx.execute("DELETE FROM events WHERE task_id = ?1", [task_id])?;
        tx.execute(
            "DELETE FROM coordinator_events WHERE task_id = ?1",
            [task_id],
        )?;
        tx.execute("DELETE FROM containers WHERE task_id = ?1", [task_id])?;
        tx.execute("DELETE FROM sessions WHERE task_id = ?1", [task_id])?;
        tx.execute("DELETE FROM tasks WHERE id = ?1", [task_id])?;
        tx.commit()?;
        drop(conn);
        self.advance_generation();
        Ok(deleted)
    }

    /// The backend started the container's agent.
    pub fn set_container_starting(&self, container_id: &str, pid: Option<u32>) -> Result<()> {
        let now = now_ms();
        self.conn().execute(
            "UPDATE containers SET state = 'starting', pid = coalesce(?2, pid),
                    started_at_ms = coalesce(started_at_ms, ?3), state_changed_at_ms = ?3
             WHERE id = ?1 AND state = 'created'",
            params![container_id, pid, now],
        )?;
        Ok(())
    }

    /// A stop (Stop RPC or SIGTERM) was requested: an active container
    /// becomes `stopping`; any container remembers when.
    pub fn request_container_stop(&self, container_id: &str) -> Result<()> {
        let now = now_ms();
        self.conn().execute(
            "UPDATE containers SET stop_requested_at_ms = ?2,
                    state_changed_at_ms = CASE WHEN state IN ('created', 'starting', 'running')
                                               THEN ?2 ELSE state_changed_at_ms END,
                    state = CASE WHEN state IN ('created', 'starting', 'running')
                                 THEN 'stopping' ELSE state END
             WHERE id = ?1",
            params![container_id, now],
        )?;
        Ok(())
    }

    pub fn set_container_health(&self, container_id: &str, health: Health) -> Result<()> {
        self.conn().execute(
            "UPDATE containers SET health = ?2 WHERE id = ?1",
            params![container_id, health.as_str()],
        )?;
        Ok(())
    }

    /// Containers, newest first, optionally filtered.
    pub fn list_containers(
        &self,
        state: Option<ContainerState>,
        health: Option<Health>,
    ) -> Result<Vec<ContainerRecord>> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {CONTAINER_COLUMNS} FROM containers c
             WHERE (?1 IS NULL OR c.state = ?1) AND (?2 IS NULL OR c.health = ?2)
             ORDER BY c.created_at_ms DESC, c.rowid DESC"
        );
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(
            params![
                state.map(ContainerState::as_str),
                health.map(Health::as_str)
            ],
            container_from_row,
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// What the reconciler compares: every container that is active or
    /// orphaned by its record, plus those with the given ids (listed by the
    /// backend), with their task's status.
    pub fn reconcile_rows(&self, listed_ids: &[String]) -> Result<Vec<ReconcileRow>> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {CONTAINER_COLUMNS}, t.status, t.auto_resumes, t.container_id = c.id, s.volume_dir
             FROM containers c JOIN tasks t ON t.id = c.task_id JOIN sessions s ON s.id = c.session_id
             WHERE c.state IN ('created', 'starting', 'running', 'stopping', 'orphaned')
                OR c.id IN (SELECT value FROM json_each(?1))
             ORDER BY c.created_at_ms, c.rowid"
        );
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map([serde_json::to_string(listed_ids)?], |r| {
            let status: String = r.get(16)?;
            Ok(ReconcileRow {
                container: container_from_row(r)?,
                task_status: super::parse_column(16, &status)?,
                task_auto_resumes: r.get(17)?,
                is_latest_for_task: r.get::<_, Option<bool>>(18)?.unwrap_or(false),
                volume_dir: r.get(19)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The reconciler's `MarkLost`: the container is lost (health dead), its
    /// session interrupted (remembering the checkpoint to resume from) and,
    /// when `interrupt_task`, its running task interrupted with E503. One
    /// transaction. Returns whether the task was interrupted.
    pub fn mark_container_lost(&self, lost: &LostContainer<'_>) -> Result<bool> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        set_container_state_in(&tx, lost.container_id, ContainerState::Lost)?;
        tx.execute(
            "UPDATE containers SET health = 'dead' WHERE id = ?1",
            [lost.container_id],
        )?;
        let now = now_ms();
        tx.execute(
            "UPDATE sessions SET status = 'finished', outcome = 'interrupted',
                    finished_at_ms = coalesce(finished_at_ms, ?2),
                    resume_checkpoint_id = coalesce(?3, resume_checkpoint_id)
             WHERE id = ?1 AND status != 'finished'",
            params![lost.session_id, now, lost.checkpoint_id],
        )?;
        let mut interrupted = false;
        if lost.interrupt_task {
            let update = TaskUpdate {
                error_code: Some(error_codes::AGENT_UNREACHABLE.code.to_string()),
                error_message: Some(lost.error_message.clone()),
                ..TaskUpdate::default()
            };
            match transition_task_in(&tx, lost.task_id, TaskStatus::Interrupted, &update) {
                Ok(()) => interrupted = true,
                Err(err) => {
                    tracing::info!(task_id = lost.task_id, "task not interrupted: {err:#}");
                }
            }
        }
        tx.commit()?;
        drop(conn);
        self.advance_generation();
        Ok(interrupted)
    }

    /// The reconciler requested an automatic resume after `container_id` was lost.
    pub fn record_resume_request(&self, container_id: &str, task_id: &str) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "UPDATE containers SET resume_requested_at_ms = ?2 WHERE id = ?1",
            params![container_id, now_ms()],
        )?;
        tx.execute(
            "UPDATE tasks SET auto_resumes = auto_resumes + 1 WHERE id = ?1",
            [task_id],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The checkpoint id of the session's latest `checkpoint_created` event.
    pub fn latest_checkpoint_event(&self, session_id: &str) -> Result<Option<String>> {
        let conn = self.conn();
        let payload: Option<String> = conn
            .query_row(
                "SELECT payload FROM events WHERE session_id = ?1 AND type = 'checkpoint_created'
                 ORDER BY id DESC LIMIT 1",
                [session_id],
                |r| r.get(0),
            )
            .optional()?;
        let Some(payload) = payload else {
            return Ok(None);
        };
        let event: parhelia_proto::Event = serde_json::from_str(&payload)?;
        Ok(match event.kind {
            Some(parhelia_proto::event::Kind::CheckpointCreated(c))
                if !c.checkpoint_id.is_empty() =>
            {
                Some(c.checkpoint_id)
            }
            _ => None,
        })
    }

    /// The commit times (`fsync_ms`) the session's agent journaled with its
    /// `checkpoint_created` events, by checkpoint id: the one phase a manifest cannot hold
    /// (docs/formats/checkpoint.md). Checkpoints of agents that predate it have none.
    pub fn checkpoint_fsync_ms(
        &self,
        session_id: &str,
    ) -> Result<std::collections::HashMap<String, u64>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT payload FROM events WHERE session_id = ?1 AND type = 'checkpoint_created'",
        )?;
        let mut rows = stmt.query([session_id])?;
        let mut out = std::collections::HashMap::new();
        while let Some(row) = rows.next()? {
            let payload: String = row.get(0)?;
            let Ok(event) = serde_json::from_str::<parhelia_proto::Event>(&payload) else {
                continue;
            };
            if let Some(parhelia_proto::event::Kind::CheckpointCreated(c)) = event.kind
                && !c.skipped
                && let Some(ms) = c.fsync_ms
            {
                out.insert(c.checkpoint_id, ms);
            }
        }
        Ok(out)
    }

    /// The session's store is over its quota (E623) when its latest
    /// `store_over_quota` event is newer than every checkpoint committed after
    /// it (a skipped checkpoint prunes nothing, so it changes nothing).
    pub fn store_over_quota(
        &self,
        session_id: &str,
    ) -> Result<Option<parhelia_proto::StoreOverQuota>> {
        use parhelia_proto::event::Kind;
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT payload FROM events
             WHERE session_id = ?1 AND type IN ('checkpoint_created', 'store_over_quota')
             ORDER BY id DESC",
        )?;
        let mut rows = stmt.query([session_id])?;
        while let Some(row) = rows.next()? {
            let payload: String = row.get(0)?;
            let Ok(event) = serde_json::from_str::<parhelia_proto::Event>(&payload) else {
                continue;
            };
            match event.kind {
                Some(Kind::StoreOverQuota(q)) => return Ok(Some(q)),
                Some(Kind::CheckpointCreated(c)) if !c.skipped => return Ok(None),
                _ => {}
            }
        }
        Ok(None)
    }

    /// `checkpoint_created` events of sessions whose task runs on `backend`, with
    /// an id above `after` (and of `session` only, when given), oldest first, at
    /// most `limit`: what the durability pass reads ([`crate::service::stores::DurabilityQueue`]).
    /// An event whose payload names no checkpoint comes with `checkpoint_id: None`
    /// (it still moves the reader past it).
    pub fn announced_checkpoints(
        &self,
        backend: &str,
        after: i64,
        session: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AnnouncedCheckpoint>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT e.id, e.container_id, e.seq, e.session_id, e.payload FROM events e
               JOIN sessions s ON s.id = e.session_id
               JOIN tasks t ON t.id = s.task_id
              WHERE e.type = 'checkpoint_created' AND t.backend = ?1 AND e.id > ?2
                AND (?3 IS NULL OR e.session_id = ?3)
              ORDER BY e.id LIMIT ?4",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![backend, after, session, limit], |r| {
            Ok((
                EventMark {
                    id: r.get(0)?,
                    container_id: r.get(1)?,
                    seq: r.get(2)?,
                },
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (mark, session_id, payload) = row?;
            let checkpoint_id = serde_json::from_str::<parhelia_proto::Event>(&payload)
                .ok()
                .and_then(|event| match event.kind {
                    Some(parhelia_proto::event::Kind::CheckpointCreated(c))
                        if !c.checkpoint_id.is_empty() =>
                    {
                        Some(c.checkpoint_id)
                    }
                    _ => None,
                });
            out.push(AnnouncedCheckpoint {
                mark,
                session_id,
                checkpoint_id,
            });
        }
        Ok(out)
    }

    /// Whether the event `mark` names is still stored as it was read (same id,
    /// container and sequence number). While it is, every event stored later has
    /// a higher id; once it is gone (its task deleted, the database rebuilt), a
    /// later event may have been given a lower one.
    pub fn event_still_stored(&self, mark: &EventMark) -> Result<bool> {
        let conn = self.conn();
        Ok(conn
            .query_row(
                "SELECT 1 FROM events WHERE id = ?1 AND container_id = ?2 AND seq = ?3",
                params![mark.id, mark.container_id, mark.seq],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .is_some())
    }

    /// Records that a checkpoint was read back from its volume and verified.
    /// `true` when it was not recorded before.
    pub fn mark_checkpoint_durable(&self, session_id: &str, checkpoint_id: &str) -> Result<bool> {
        let conn = self.conn();
        let n = conn.execute(
            "INSERT OR IGNORE INTO durable_checkpoints (checkpoint_id, session_id, verified_at_ms)
             VALUES (?1, ?2, ?3)",
            params![checkpoint_id, session_id, crate::ids::now_ms()],
        )?;
        Ok(n > 0)
    }

    /// The checkpoints of a session known durable.
    pub fn durable_checkpoints(
        &self,
        session_id: &str,
    ) -> Result<std::collections::BTreeSet<String>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT checkpoint_id FROM durable_checkpoints WHERE session_id = ?1")?;
        let rows = stmt.query_map([session_id], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records the checkpoint a session can resume from.
    pub fn set_session_checkpoint(&self, session_id: &str, checkpoint_id: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE sessions SET resume_checkpoint_id = ?2 WHERE id = ?1",
            params![session_id, checkpoint_id],
        )?;
        Ok(())
    }

    pub fn latest_heartbeat(&self, container_id: &str) -> Result<Option<HeartbeatRecord>> {
        let conn = self.conn();
        Ok(conn
            .query_row(
                "SELECT ts_ms, cpu_percent, memory_bytes, workspace_disk_bytes, status FROM heartbeats
                 WHERE container_id = ?1 ORDER BY ts_ms DESC, id DESC LIMIT 1",
                [container_id],
                |r| {
                    Ok(HeartbeatRecord {
                        ts_ms: r.get(0)?,
                        cpu_percent: r.get(1)?,
                        memory_bytes: r.get::<_, i64>(2)? as u64,
                        workspace_disk_bytes: r.get::<_, i64>(3)? as u64,
                        status: r.get(4)?,
                    })
                },
            )
            .optional()?)
    }

    /// Number of stored events of a container.
    pub fn container_event_count(&self, container_id: &str) -> Result<u64> {
        let n: i64 = self.conn().query_row(
            "SELECT count(*) FROM events WHERE container_id = ?1",
            [container_id],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    /// Records a labelled container without a record (or its return).
    pub fn upsert_orphan(&self, observed: &ObservedContainer) -> Result<()> {
        let now = now_ms();
        self.conn().execute(
            "INSERT INTO orphans (container_id, session_id, pid, endpoint, gone, first_seen_ms, last_seen_ms)
             VALUES (?1, ?2, ?3, ?4, 0, ?5, ?5)
             ON CONFLICT (container_id) DO UPDATE SET
                 gone = 0, last_seen_ms = ?5, pid = coalesce(?3, pid), endpoint = coalesce(?4, endpoint)",
            params![
                observed.container_id,
                observed.session_id,
                observed.pid,
                observed.endpoint,
                now
            ],
        )?;
        Ok(())
    }

    /// A termination of `container_id` (an orphan) was requested.
    pub fn orphan_terminate_requested(&self, container_id: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE orphans SET terminate_requested_at_ms = ?2 WHERE container_id = ?1",
            params![container_id, now_ms()],
        )?;
        Ok(())
    }

    pub fn orphan_gone(&self, container_id: &str) -> Result<()> {
        self.conn().execute(
            "UPDATE orphans SET gone = 1, last_seen_ms = ?2 WHERE container_id = ?1",
            params![container_id, now_ms()],
        )?;
        Ok(())
    }

    /// Orphans without a record, most recently seen first.
    pub fn list_orphans(&self, include_gone: bool) -> Result<Vec<OrphanRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT container_id, session_id, pid, endpoint, gone, first_seen_ms, last_seen_ms,
                    terminate_requested_at_ms
             FROM orphans WHERE (?1 OR gone = 0) ORDER BY last_seen_ms DESC, container_id",
        )?;
        let rows = stmt.query_map([include_gone], |r| {
            Ok(OrphanRecord {
                container_id: r.get(0)?,
                session_id: r.get(1)?,
                pid: r.get(2)?,
                endpoint: r.get(3)?,
                gone: r.get(4)?,
                first_seen_ms: r.get(5)?,
                last_seen_ms: r.get(6)?,
                terminate_requested_at_ms: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn get_orphan(&self, container_id: &str) -> Result<Option<OrphanRecord>> {
        Ok(self
            .list_orphans(true)?
            .into_iter()
            .find(|o| o.container_id == container_id))
    }

    /// Orphans as the reconcile step sees them.
    pub fn known_orphans(&self) -> Result<Vec<KnownOrphan>> {
        Ok(self
            .list_orphans(true)?
            .into_iter()
            .map(|o| KnownOrphan {
                container_id: o.container_id,
                gone: o.gone,
                terminate_requested_at_ms: o.terminate_requested_at_ms,
            })
            .collect())
    }

    /// Whether a task may go from its status to `to` (E201/E603 otherwise).
    pub fn check_transition(&self, task_id: &str, to: TaskStatus) -> Result<TaskRecord> {
        let task = self.get_task(task_id)?.ok_or_else(|| {
            coded(
                error_codes::TASK_NOT_FOUND,
                format!("task not found: {task_id}"),
            )
        })?;
        task_state::transition(task_id, task.status, to)?;
        Ok(task)
    }
}
