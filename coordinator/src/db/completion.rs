//! Ids for shell completion (`parhelia completions`): read from the database
//! without creating, migrating or locking anything, and never failing: a
//! missing or unreadable database completes nothing.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

/// How many of each kind are offered, newest first.
const LIMIT: i64 = 200;

/// One completion candidate: the id and a short description of it.
#[derive(Clone, Debug, PartialEq)]
pub struct IdHint {
    pub id: String,
    pub help: String,
}

/// The kinds of id a command line can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdKind {
    Task,
    Session,
    Container,
    Checkpoint,
}

/// The ids of `kind` recorded in the database at `path`, newest first.
pub fn ids(path: &Path, kind: IdKind) -> Vec<IdHint> {
    let Ok(conn) = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY) else {
        return Vec::new();
    };
    let _ = conn.busy_timeout(std::time::Duration::from_millis(200));
    query(&conn, kind).unwrap_or_default()
}

fn query(conn: &Connection, kind: IdKind) -> rusqlite::Result<Vec<IdHint>> {
    let sql = match kind {
        IdKind::Task => {
            "SELECT id, status || ': ' || substr(replace(prompt, char(10), ' '), 1, 50)
             FROM tasks ORDER BY created_at_ms DESC LIMIT ?1"
        }
        IdKind::Session => {
            "SELECT id, status || ' (' || task_id || ')'
             FROM sessions ORDER BY created_at_ms DESC LIMIT ?1"
        }
        IdKind::Container => {
            "SELECT id, state || ' (' || session_id || ')'
             FROM containers ORDER BY created_at_ms DESC LIMIT ?1"
        }
        IdKind::Checkpoint => {
            "SELECT payload, session_id FROM events WHERE type = 'checkpoint_created'
             ORDER BY id DESC LIMIT ?1"
        }
    };
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map([LIMIT], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (first, second) = row?;
        if kind == IdKind::Checkpoint {
            // The event as stored: the checkpoint id is in its payload.
            let Ok(event) = serde_json::from_str::<parhelia_proto::Event>(&first) else {
                continue;
            };
            // A skipped one names the unchanged checkpoint again.
            if let Some(parhelia_proto::event::Kind::CheckpointCreated(c)) = event.kind
                && !c.skipped
                && !c.checkpoint_id.is_empty()
            {
                out.push(IdHint {
                    id: c.checkpoint_id,
                    help: format!("{} ({second})", c.trigger),
                });
            }
        } else {
            out.push(IdHint {
                id: first,
                help: second,
            });
        }
    }
    Ok(out)
}
