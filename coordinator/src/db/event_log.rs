//! The unified event log (agent events + coordinator events) and the
//! reconciler's run history.

use anyhow::{Context, Result};
use parhelia_proto::Event;
use rusqlite::params;
use rusqlite::types::Value as SqlValue;

use super::Db;
use crate::event_filter::{EventFilter, EventRow, EventSource, sort_rows};
use crate::ids::now_ms;
use crate::reconcile::PassReport;
use crate::render::render_event;

/// Runs kept in `reconciler_runs` (older ones are pruned).
pub const RECONCILER_RUNS_KEPT: i64 = 500;

/// Something the coordinator did or saw.
#[derive(Clone, Debug)]
pub struct NewCoordinatorEvent {
    /// `task_dispatched`, `task_cancelled`, `container_lost`, …
    pub event_type: &'static str,
    /// `info`, `warning` or `error`.
    pub level: &'static str,
    pub container_id: Option<String>,
    pub session_id: Option<String>,
    pub task_id: Option<String>,
    pub message: String,
    pub details: serde_json::Value,
}

pub use crate::event_filter::COORDINATOR_EVENT_TYPES;

impl NewCoordinatorEvent {
    pub fn new(event_type: &'static str, level: &'static str, message: impl Into<String>) -> Self {
        debug_assert!(
            COORDINATOR_EVENT_TYPES.contains(&event_type),
            "add `{event_type}` to COORDINATOR_EVENT_TYPES"
        );
        Self {
            event_type,
            level,
            container_id: None,
            session_id: None,
            task_id: None,
            message: message.into(),
            details: serde_json::json!({}),
        }
    }

    pub fn container(mut self, id: impl Into<String>) -> Self {
        self.container_id = Some(id.into());
        self
    }

    pub fn session(mut self, id: impl Into<String>) -> Self {
        self.session_id = Some(id.into());
        self
    }

    pub fn task(mut self, id: impl Into<String>) -> Self {
        self.task_id = Some(id.into());
        self
    }

    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}

/// Where `events watch` has read up to, per source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventCursor {
    pub agent: i64,
    pub coordinator: i64,
}

impl EventCursor {
    pub fn advance(&mut self, row: &EventRow) {
        match row.source {
            EventSource::Agent => self.agent = self.agent.max(row.id),
            EventSource::Coordinator => self.coordinator = self.coordinator.max(row.id),
        }
    }
}

/// SQL for one source's side of a filter.
fn where_clause(filter: &EventFilter, after_id: Option<i64>, params: &mut Vec<SqlValue>) -> String {
    let mut clauses = vec!["1".to_string()];
    let mut add = |template: &str, value: SqlValue| {
        params.push(value);
        clauses.push(template.replace('?', &format!("?{}", params.len())));
    };
    let json_list =
        |list: &[String]| SqlValue::Text(serde_json::Value::from(list.to_vec()).to_string());
    if !filter.types.is_empty() {
        add(
            "type IN (SELECT value FROM json_each(?))",
            json_list(&filter.types),
        );
    }
    if !filter.levels.is_empty() {
        add(
            "level IN (SELECT value FROM json_each(?))",
            json_list(&filter.levels),
        );
    }
    if let Some(t) = filter.since_ms {
        add("ts_ms >= ?", SqlValue::Integer(t));
    }
    if let Some(t) = filter.until_ms {
        add("ts_ms <= ?", SqlValue::Integer(t));
    }
    if let Some(c) = &filter.container_id {
        add("container_id = ?", SqlValue::Text(c.clone()));
    }
    if let Some(t) = &filter.task_id {
        add("task_id = ?", SqlValue::Text(t.clone()));
    }
    if let Some(s) = &filter.session_id {
        add("session_id = ?", SqlValue::Text(s.clone()));
    }
    if let Some(id) = after_id {
        add("id > ?", SqlValue::Integer(id));
    }
    clauses.join(" AND ")
}

fn agent_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(EventRow, String)> {
    Ok((
        EventRow {
            source: EventSource::Agent,
            id: r.get(0)?,
            ts_ms: r.get(1)?,
            event_type: r.get(2)?,
            level: r.get(3)?,
            container_id: r.get(4)?,
            session_id: r.get(5)?,
            task_id: r.get(6)?,
            seq: Some(r.get::<_, i64>(7)? as u64),
            message: String::new(),
            payload: serde_json::Value::Null,
        },
        r.get(8)?,
    ))
}

/// One line for an agent event: what `task watch` prints, without its
/// label (the type column says it), or a summary for events `task watch`
/// skips.
fn agent_event_message(event: &Event, event_type: &str) -> String {
    use parhelia_proto::event::Kind;
    if let Some(text) = render_event(event) {
        let text = text.trim_start();
        return match text.split_once(char::is_whitespace) {
            Some((_, rest)) => rest.trim_start().to_string(),
            None => text.to_string(),
        };
    }
    match &event.kind {
        Some(Kind::StatusChanged(s)) => {
            let status = super::session_status_name(s.status);
            if s.hook_event.is_empty() {
                status.to_string()
            } else {
                format!("{status} ({})", s.hook_event)
            }
        }
        _ => event_type.to_string(),
    }
}

impl Db {
    /// Records a coordinator event; returns its id.
    pub fn record_coordinator_event(&self, event: &NewCoordinatorEvent) -> Result<i64> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO coordinator_events (ts_ms, type, level, container_id, session_id, task_id, message, details)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                now_ms(),
                event.event_type,
                event.level,
                event.container_id,
                event.session_id,
                event.task_id,
                event.message,
                event.details.to_string()
            ],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// Records a coordinator event, logging (not returning) a failure: the
    /// event log must never stop the control plane.
    pub fn note(&self, event: NewCoordinatorEvent) {
        if let Err(err) = self.record_coordinator_event(&event) {
            tracing::warn!(
                event_type = event.event_type,
                "cannot record a coordinator event: {err:#}"
            );
        }
    }

    /// Events of both sources matching `filter`, in order (time, source, id).
    /// With `last`, only the last that many.
    pub fn query_events(&self, filter: &EventFilter, last: Option<u32>) -> Result<Vec<EventRow>> {
        self.events_after(filter, EventCursor::default(), last)
    }

    /// Like [`Db::query_events`], only rows after `cursor` (for `watch`).
    pub fn events_after(
        &self,
        filter: &EventFilter,
        cursor: EventCursor,
        last: Option<u32>,
    ) -> Result<Vec<EventRow>> {
        let mut rows = Vec::new();
        let limit = last
            .map(|n| format!(" ORDER BY ts_ms DESC, id DESC LIMIT {n}"))
            .unwrap_or_default();
        if filter.source != Some(EventSource::Coordinator) {
            let mut params = Vec::new();
            let clause = where_clause(filter, Some(cursor.agent), &mut params);
            let sql = format!(
                "SELECT id, ts_ms, type, level, container_id, session_id, task_id, seq, payload
                 FROM events WHERE {clause}{limit}"
            );
            let conn = self.conn();
            let mut stmt = conn.prepare(&sql)?;
            let found = stmt
                .query_map(rusqlite::params_from_iter(params), agent_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            drop(stmt);
            drop(conn);
            for (mut row, payload) in found {
                let event: Event = serde_json::from_str(&payload).with_context(|| {
                    format!("reading stored event {} of {:?}", row.id, row.container_id)
                })?;
                row.message = agent_event_message(&event, &row.event_type);
                row.payload = serde_json::from_str(&payload)?;
                rows.push(row);
            }
        }
        if filter.source != Some(EventSource::Agent) {
            let mut params = Vec::new();
            let clause = where_clause(filter, Some(cursor.coordinator), &mut params);
            let sql = format!(
                "SELECT id, ts_ms, type, level, container_id, session_id, task_id, message, details
                 FROM coordinator_events WHERE {clause}{limit}"
            );
            let conn = self.conn();
            let mut stmt = conn.prepare(&sql)?;
            let found = stmt
                .query_map(rusqlite::params_from_iter(params), |r| {
                    let details: String = r.get(8)?;
                    Ok(EventRow {
                        source: EventSource::Coordinator,
                        id: r.get(0)?,
                        ts_ms: r.get(1)?,
                        event_type: r.get(2)?,
                        level: r.get(3)?,
                        container_id: r.get(4)?,
                        session_id: r.get(5)?,
                        task_id: r.get(6)?,
                        seq: None,
                        message: r.get(7)?,
                        payload: serde_json::from_str(&details).unwrap_or(serde_json::Value::Null),
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows.extend(found);
        }
        sort_rows(&mut rows);
        if let Some(n) = last {
            let n = n as usize;
            if rows.len() > n {
                rows.drain(..rows.len() - n);
            }
        }
        Ok(rows)
    }

    /// The latest row ids (where a `watch` without history starts).
    pub fn event_cursor(&self) -> Result<EventCursor> {
        let conn = self.conn();
        Ok(EventCursor {
            agent: conn.query_row("SELECT coalesce(max(id), 0) FROM events", [], |r| r.get(0))?,
            coordinator: conn.query_row(
                "SELECT coalesce(max(id), 0) FROM coordinator_events",
                [],
                |r| r.get(0),
            )?,
        })
    }

    /// Number of events of both sources matching `filter`.
    pub fn count_events(&self, filter: &EventFilter) -> Result<u64> {
        let conn = self.conn();
        let mut total = 0i64;
        for (table, source) in [
            ("events", EventSource::Agent),
            ("coordinator_events", EventSource::Coordinator),
        ] {
            if filter.source.is_some_and(|s| s != source) {
                continue;
            }
            let mut params = Vec::new();
            let clause = where_clause(filter, None, &mut params);
            let n: i64 = conn.query_row(
                &format!("SELECT count(*) FROM {table} WHERE {clause}"),
                rusqlite::params_from_iter(params),
                |r| r.get(0),
            )?;
            total += n;
        }
        Ok(total as u64)
    }

    /// Stores a reconciler pass (and prunes old ones).
    pub fn record_reconciler_run(&self, report: &PassReport) -> Result<()> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO reconciler_runs (started_at_ms, finished_at_ms, trigger, dry_run, action_count, report)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                report.started_at_ms,
                report.finished_at_ms,
                report.trigger,
                report.dry_run,
                report.actions.len() as i64,
                serde_json::to_string(report)?
            ],
        )?;
        conn.execute(
            "DELETE FROM reconciler_runs WHERE id <= (SELECT max(id) FROM reconciler_runs) - ?1",
            [RECONCILER_RUNS_KEPT],
        )?;
        Ok(())
    }

    /// The latest passes, newest first.
    pub fn reconciler_runs(&self, limit: u32) -> Result<Vec<PassReport>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT report FROM reconciler_runs ORDER BY id DESC LIMIT ?1")?;
        let rows = stmt.query_map([limit], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(serde_json::from_str(&row?)?);
        }
        Ok(out)
    }

    /// Passes and actions since `since_ms` (executed passes only).
    pub fn reconciler_totals(&self, since_ms: i64) -> Result<(u64, u64)> {
        let conn = self.conn();
        let (runs, actions): (i64, i64) = conn.query_row(
            "SELECT count(*), coalesce(sum(action_count), 0) FROM reconciler_runs
             WHERE started_at_ms >= ?1 AND dry_run = 0",
            [since_ms],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok((runs as u64, actions as u64))
    }
}
