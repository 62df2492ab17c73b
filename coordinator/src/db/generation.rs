//! The database's generation record, kept *beside* the database: how a
//! rolled-back, restored or replaced database is noticed at start, and what
//! the coordinator rebuilds from.
//!
//! After every commit that matters (a task recorded, claimed, resumed or
//! ended; a container started or ended; a task retried or deleted) the
//! database's `meta.generation` is raised by one, and then
//! `<db>-generation` (JSON, owner-only, written atomically: temp file,
//! fsync, rename, directory fsync) records that generation, the
//! coordinator's id, and a copy of the task, session and container rows of
//! every live container. SQLite keeps a prefix of its commits whatever
//! happens to the WAL, so a database whose generation is *below* the
//! record's lost commits it had acknowledged: a truncated or deleted WAL, an
//! older copy of the file put back, or a fresh file in its place. A database
//! *ahead* of the record is normal (a crash between the commit and the
//! record's rename).
//!
//! At start ([`check_at_start`]) a database behind its record is reported
//! (E514: the coordinator's log, a `database_rolled_back` coordinator event,
//! `doctor`), the coordinator id is put back if it changed, and every live
//! container's rows the database lost are re-created from the record, so the
//! reconciler follows those agents again (their journals replay every event)
//! instead of offering them as orphans. The record holds session secrets:
//! it is part of the database and protected like it (0600, in the
//! database's directory, hidden from sandboxes).
//!
//! Format: `docs/formats/database.md`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Db;
use crate::error_codes;
use crate::ids::now_ms;

/// The record's format version.
pub const RECORD_VERSION: u32 = 1;

/// Bigger records are refused unread (a live container's rows are a few KiB).
const MAX_RECORD_BYTES: u64 = 16 * 1024 * 1024;

/// Container states whose rows the record keeps (the container may still
/// be running an agent).
const LIVE_STATES: &str = "'created', 'starting', 'running', 'stopping'";

/// `<db>-generation`, beside the database.
pub fn record_path(db_path: &Path) -> PathBuf {
    let mut name = db_path.as_os_str().to_owned();
    name.push("-generation");
    PathBuf::from(name)
}

/// One live container's rows, column name to value.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LiveRows {
    pub task: Map<String, Value>,
    pub session: Map<String, Value>,
    pub container: Map<String, Value>,
}

/// What `<db>-generation` holds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerationRecord {
    pub version: u32,
    pub coordinator_id: String,
    pub generation: u64,
    pub written_at_ms: i64,
    #[serde(default)]
    pub live: Vec<LiveRows>,
}

/// What comparing the database with its record found.
#[derive(Clone, Debug, PartialEq)]
pub enum GenerationCheck {
    /// No record yet (a new database, or one from before version 6).
    NoRecord,
    /// The database is at or ahead of its record.
    InStep { generation: u64 },
    /// The database lost commits it had made: it is behind its record.
    Behind {
        database: u64,
        record: GenerationRecord,
    },
    /// The record cannot be read (damaged): nothing to compare with.
    Unreadable { reason: String },
}

/// What [`check_at_start`] did about a database behind its record.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rebuilt {
    pub database_generation: u64,
    pub record_generation: u64,
    /// Containers whose rows were re-created from the record.
    pub containers: Vec<String>,
    /// The coordinator id was put back from the record.
    pub coordinator_id_restored: bool,
    /// Containers (ended, or not in the record) re-created from their specs.
    pub from_specs: Vec<String>,
}

pub(crate) fn db_generation(conn: &Connection) -> Result<u64> {
    let value: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'generation'", [], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(value.and_then(|v| v.parse().ok()).unwrap_or(0))
}

fn set_db_generation(conn: &Connection, generation: u64) -> Result<()> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('generation', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [generation.to_string()],
    )?;
    Ok(())
}

fn sql_to_json(value: SqlValue) -> Value {
    match value {
        SqlValue::Null | SqlValue::Blob(_) => Value::Null,
        SqlValue::Integer(i) => Value::from(i),
        SqlValue::Real(f) => serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        SqlValue::Text(t) => Value::String(t),
    }
}

fn json_to_sql(value: &Value) -> SqlValue {
    match value {
        Value::Null => SqlValue::Null,
        Value::Bool(b) => SqlValue::Integer(i64::from(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => SqlValue::Integer(i),
            None => SqlValue::Real(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => SqlValue::Text(s.clone()),
        other => SqlValue::Text(other.to_string()),
    }
}

fn row_as_map(conn: &Connection, table: &str, id: &str) -> Result<Option<Map<String, Value>>> {
    let mut stmt = conn.prepare(&format!("SELECT * FROM {table} WHERE id = ?1"))?;
    let names: Vec<String> = stmt.column_names().map(|s| s.to_string()).collect();
    Ok(stmt
        .query_row([id], |r| {
            let mut map = Map::new();
            for (i, name) in names.iter().enumerate() {
                map.insert(name.clone(), sql_to_json(r.get::<_, SqlValue>(i)?));
            }
            Ok(map)
        })
        .optional()?)
}

fn live_rows(conn: &Connection) -> Result<Vec<LiveRows>> {
    let ids: Vec<(String, String, String)> = {
        let mut stmt = conn.prepare(&format!(
            "SELECT id, session_id, task_id FROM containers WHERE state IN ({LIVE_STATES}) ORDER BY id"
        ))?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?
    };
    let mut live = Vec::new();
    for (container_id, session_id, task_id) in ids {
        let (Some(task), Some(session), Some(container)) = (
            row_as_map(conn, "tasks", &task_id)?,
            row_as_map(conn, "sessions", &session_id)?,
            row_as_map(conn, "containers", &container_id)?,
        ) else {
            continue;
        };
        live.push(LiveRows {
            task,
            session,
            container,
        });
    }
    Ok(live)
}

/// Reads the record (`None` when there is none). Bounded; never follows a
/// symlink.
pub fn read_record(db_path: &Path) -> Result<Option<GenerationRecord>> {
    let path = record_path(db_path);
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if !meta.is_file() {
        anyhow::bail!("{} is not a regular file", path.display());
    }
    if meta.len() > MAX_RECORD_BYTES {
        anyhow::bail!(
            "{} is {} bytes, more than the {MAX_RECORD_BYTES} a generation record may be",
            path.display(),
            meta.len()
        );
    }
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let record: GenerationRecord = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a generation record", path.display()))?;
    if record.version != RECORD_VERSION {
        anyhow::bail!(
            "{} has version {}, this parhelia writes {RECORD_VERSION}",
            path.display(),
            record.version
        );
    }
    Ok(Some(record))
}

/// Writes the record atomically, owner-only.
fn write_record(db_path: &Path, record: &GenerationRecord) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = record_path(db_path);
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    let bytes = serde_json::to_vec(record)?;
    let result = (|| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        if let Some(dir) = path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

impl Db {
    /// Raises the database's generation and records it (with the live
    /// containers' rows) beside the database. Called after every commit that
    /// matters; a failure is logged, never fails the operation it follows.
    pub fn advance_generation(&self) {
        if let Err(err) = self.try_advance_generation() {
            tracing::warn!(
                "cannot record the database's generation beside it (a later rollback may go unnoticed): {err:#}"
            );
        }
    }

    fn try_advance_generation(&self) -> Result<()> {
        // One writer of the record per process, in generation order.
        let _writing = self
            .generation_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let record = {
            let mut conn = self.conn();
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let generation = db_generation(&tx)? + 1;
            set_db_generation(&tx, generation)?;
            let coordinator_id: String = tx
                .query_row(
                    "SELECT value FROM meta WHERE key = 'coordinator_id'",
                    [],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or_default();
            let live = live_rows(&tx)?;
            tx.commit()?;
            GenerationRecord {
                version: RECORD_VERSION,
                coordinator_id,
                generation,
                written_at_ms: now_ms(),
                live,
            }
        };
        write_record(&self.path, &record)
    }

    /// The database's generation (`meta.generation`; 0 before any).
    pub fn generation(&self) -> Result<u64> {
        db_generation(&self.conn())
    }

    /// The newest `database_rolled_back` report: (when, message).
    pub fn last_rollback_report(&self) -> Result<Option<(i64, String)>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT ts_ms, message FROM coordinator_events WHERE type = 'database_rolled_back'
                 ORDER BY id DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// Compares the database with the record beside it.
    pub fn check_generation(&self) -> GenerationCheck {
        let record = match read_record(&self.path) {
            Ok(Some(record)) => record,
            Ok(None) => return GenerationCheck::NoRecord,
            Err(err) => {
                return GenerationCheck::Unreadable {
                    reason: format!("{err:#}"),
                };
            }
        };
        let database = match self.generation() {
            Ok(generation) => generation,
            Err(err) => {
                return GenerationCheck::Unreadable {
                    reason: format!("the database's generation: {err:#}"),
                };
            }
        };
        let coordinator_changed = {
            let conn = self.conn();
            let id: Option<String> = conn
                .query_row(
                    "SELECT value FROM meta WHERE key = 'coordinator_id'",
                    [],
                    |r| r.get(0),
                )
                .optional()
                .ok()
                .flatten();
            !record.coordinator_id.is_empty() && id.as_deref() != Some(&record.coordinator_id)
        };
        if database < record.generation || coordinator_changed {
            GenerationCheck::Behind { database, record }
        } else {
            GenerationCheck::InStep {
                generation: database,
            }
        }
    }

    /// Re-creates from `record` what the database lost: the coordinator id,
    /// and each live container's task, session and container rows that are
    /// missing (rows still present are left as they are). Then raises the
    /// database's generation past the record's, so the report is made once.
    pub fn rebuild_from_record(&self, record: &GenerationRecord) -> Result<Rebuilt> {
        let mut rebuilt = Rebuilt {
            record_generation: record.generation,
            ..Rebuilt::default()
        };
        {
            let mut conn = self.conn();
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            rebuilt.database_generation = db_generation(&tx)?;
            if !record.coordinator_id.is_empty() {
                let changed = tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('coordinator_id', ?1)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value
                     WHERE value != excluded.value",
                    [&record.coordinator_id],
                )?;
                rebuilt.coordinator_id_restored = changed > 0;
            }
            for live in &record.live {
                let task = insert_missing(&tx, "tasks", &live.task)?;
                let session = insert_missing(&tx, "sessions", &live.session)?;
                let container = insert_missing(&tx, "containers", &live.container)?;
                if (task || session || container)
                    && let Some(Value::String(id)) = live.container.get("id")
                {
                    rebuilt.containers.push(id.clone());
                }
            }
            set_db_generation(&tx, record.generation.max(rebuilt.database_generation) + 1)?;
            tx.commit()?;
        }
        self.advance_generation();
        Ok(rebuilt)
    }
}

/// Inserts `row` into `table` unless a row with its id exists. Only columns
/// the table has are written (the record is data, never SQL).
fn insert_missing(conn: &Connection, table: &str, row: &Map<String, Value>) -> Result<bool> {
    let Some(Value::String(id)) = row.get("id") else {
        return Ok(false);
    };
    let exists: bool = conn
        .query_row(
            &format!("SELECT 1 FROM {table} WHERE id = ?1"),
            [id],
            |_| Ok(true),
        )
        .optional()?
        .unwrap_or(false);
    if exists {
        return Ok(false);
    }
    let columns: Vec<String> = {
        let mut stmt = conn.prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?;
        stmt.query_map([], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<_>>()?
    };
    let present: Vec<&String> = columns.iter().filter(|c| row.contains_key(*c)).collect();
    let names = present
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let marks = (1..=present.len())
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let values: Vec<SqlValue> = present.iter().map(|c| json_to_sql(&row[*c])).collect();
    conn.execute(
        &format!("INSERT INTO {table} ({names}) VALUES ({marks})"),
        rusqlite::params_from_iter(values),
    )
    .with_context(|| format!("re-creating {table} row {id}"))?;
    Ok(true)
}

/// At the coordinator's start, before anything reads the coordinator id:
/// compares the database with its record; a database behind it is reported
/// (E514: log and a coordinator event) and what the record proves is
/// re-created, then what the local containers' specs under `containers_dir`
/// prove of ended work ([`Db::rebuild_from_specs`]). Returns what was
/// rebuilt, if anything.
pub fn check_at_start(db: &Db, containers_dir: Option<&Path>) -> Result<Option<Rebuilt>> {
    match db.check_generation() {
        GenerationCheck::NoRecord => {
            db.advance_generation();
            Ok(None)
        }
        GenerationCheck::InStep { .. } => Ok(None),
        GenerationCheck::Unreadable { reason } => {
            tracing::error!(
                code = error_codes::DATABASE_ROLLED_BACK.code,
                "the database's generation record is damaged; a rollback cannot be detected this time: {reason}"
            );
            db.note(
                super::NewCoordinatorEvent::new(
                    "database_generation_unreadable",
                    "warning",
                    format!("the database's generation record is damaged: {reason}"),
                )
                .details(serde_json::json!({ "reason": reason })),
            );
            db.advance_generation();
            Ok(None)
        }
        GenerationCheck::Behind { database, record } => {
            let mut rebuilt = db.rebuild_from_record(&record)?;
            if let Some(dir) = containers_dir {
                rebuilt.from_specs = db.rebuild_from_specs(dir)?;
            }
            let message = format!(
                "{}: the database is at generation {database} but had reached {} (its WAL was truncated or lost, or an older copy was restored); re-created {} live container(s) from the record beside it and {} other container(s) from their specs, whose journals now settle them",
                error_codes::DATABASE_ROLLED_BACK.code,
                record.generation,
                rebuilt.containers.len(),
                rebuilt.from_specs.len()
            );
            tracing::error!(code = error_codes::DATABASE_ROLLED_BACK.code, containers = ?rebuilt.containers, "{message}");
            db.note(
                super::NewCoordinatorEvent::new("database_rolled_back", "error", message).details(
                    serde_json::json!({
                        "code": error_codes::DATABASE_ROLLED_BACK.code,
                        "database_generation": database,
                        "record_generation": record.generation,
                        "recreated_containers": rebuilt.containers,
                        "rebuilt_from_specs": rebuilt.from_specs,
                        "coordinator_id_restored": rebuilt.coordinator_id_restored,
                        "record_written_at_ms": record.written_at_ms,
                    }),
                ),
            );
            Ok(Some(rebuilt))
        }
    }
}

/// Writes a record by hand (tests: an older record, a damaged one).
#[cfg(test)]
pub(crate) fn write_record_for_test(db_path: &Path, record: &GenerationRecord) {
    write_record(db_path, record).unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::tests::launch;
    use crate::db::{ContainerState, TaskUpdate};
    use crate::task_state::TaskStatus;

    fn copy_db(from: &Path, to: &Path) {
        // A consistent copy of the database as it is now (what an older
        // backup is): VACUUM INTO writes one self-contained file.
        let conn = Connection::open(from).unwrap();
        conn.execute("VACUUM INTO ?1", [to.to_string_lossy()])
            .unwrap();
    }

    #[test]
    fn every_commit_that_matters_raises_the_generation_and_the_record_follows() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("p.db");
        let db = Db::open(&path).unwrap();
        db.coordinator_id().unwrap();
        assert_eq!(db.check_generation(), GenerationCheck::NoRecord);
        let before = db.generation().unwrap();
        let target = launch(&db, 1);
        db.transition_task(&target.task_id, TaskStatus::Running, &TaskUpdate::default())
            .unwrap();
        let after = db.generation().unwrap();
        assert!(after >= before + 2, "{before} -> {after}");
        let record = read_record(&path).unwrap().unwrap();
        assert_eq!(record.generation, after);
        assert_eq!(record.coordinator_id, db.coordinator_id().unwrap());
        assert_eq!(record.live.len(), 1);
        assert_eq!(record.live[0].container["id"], target.container_id.as_str());
        assert_eq!(
            db.check_generation(),
            GenerationCheck::InStep { generation: after }
        );
        // An ended container leaves the record.
        db.set_container_state(&target.container_id, ContainerState::Terminated)
            .unwrap();
        assert!(read_record(&path).unwrap().unwrap().live.is_empty());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(record_path(&path))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "the record holds secrets: {mode:o}");
        }
    }

    /// The hostile case of issue 12 item 7: an older copy of the database
    /// (what a truncated WAL leaves) under a running session. The integrity
    /// check passes; the generation check does not, and the running task,
    /// its session (secret included) and container come back from the record.
    #[test]
    fn an_older_database_is_detected_and_the_live_rows_come_back() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("p.db");
        let older = tmp.path().join("older.db");
        let (coordinator_id, target) = {
            let db = Db::open(&path).unwrap();
            let id = db.coordinator_id().unwrap();
            db.advance_generation();
            copy_db(&path, &older);
            let target = launch(&db, 2);
            db.transition_task(&target.task_id, TaskStatus::Running, &TaskUpdate::default())
                .unwrap();
            (id, target)
        };
        // Put the older copy in place, WAL and all gone.
        for file in crate::db::db_files(&path) {
            let _ = std::fs::remove_file(file);
        }
        std::fs::rename(&older, &path).unwrap();
        let db = Db::open(&path).unwrap();
        assert_eq!(db.integrity_check().unwrap(), "ok");
        assert!(db.get_task(&target.task_id).unwrap().is_none());
        match db.check_generation() {
            GenerationCheck::Behind { database, record } => {
                assert!(database < record.generation);
            }
            other => panic!("not detected: {other:?}"),
        }
        let rebuilt = check_at_start(&db, None).unwrap().expect("rebuilt");
        assert_eq!(rebuilt.containers, vec![target.container_id.clone()]);
        let task = db.get_task(&target.task_id).unwrap().unwrap();
        assert_eq!(task.status, TaskStatus::Running);
        assert!(db.get_container(&target.container_id).unwrap().is_some());
        assert_eq!(
            db.session_secret(&target.session_id)
                .unwrap()
                .unwrap()
                .expose(),
            "s3cret"
        );
        assert_eq!(db.coordinator_id().unwrap(), coordinator_id);
        assert_eq!(db.containers_to_follow().unwrap().len(), 1);
        let (_, message) = db.last_rollback_report().unwrap().expect("reported");
        assert!(message.contains("E514"), "{message}");
        // Reported once: the database is in step again.
        assert!(matches!(
            db.check_generation(),
            GenerationCheck::InStep { .. }
        ));
        assert_eq!(check_at_start(&db, None).unwrap(), None);
    }

    /// A fresh file in the database's place (the database deleted): the
    /// coordinator keeps its id, so its agents are still its own.
    #[test]
    fn a_replaced_database_keeps_the_coordinator_id() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("p.db");
        let (id, target) = {
            let db = Db::open(&path).unwrap();
            let id = db.coordinator_id().unwrap();
            let target = launch(&db, 3);
            (id, target)
        };
        for file in crate::db::db_files(&path) {
            let _ = std::fs::remove_file(file);
        }
        let db = Db::open(&path).unwrap();
        let rebuilt = check_at_start(&db, None).unwrap().expect("rebuilt");
        assert!(rebuilt.coordinator_id_restored);
        assert_eq!(db.coordinator_id().unwrap(), id);
        assert!(db.get_container(&target.container_id).unwrap().is_some());
    }

    /// A damaged record is reported and replaced, never trusted.
    #[test]
    fn a_damaged_record_is_reported_not_trusted() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("p.db");
        let db = Db::open(&path).unwrap();
        db.advance_generation();
        std::fs::write(record_path(&path), b"{\"version\":1,\"generation\":").unwrap();
        assert!(matches!(
            db.check_generation(),
            GenerationCheck::Unreadable { .. }
        ));
        assert_eq!(check_at_start(&db, None).unwrap(), None);
        assert!(matches!(
            db.check_generation(),
            GenerationCheck::InStep { .. }
        ));
    }

    /// Column names in the record are data: an unknown column is ignored,
    /// never spliced into SQL.
    #[test]
    fn record_columns_the_table_lacks_are_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("p.db");
        let db = Db::open(&path).unwrap();
        db.coordinator_id().unwrap();
        let target = launch(&db, 4);
        let mut record = read_record(&path).unwrap().unwrap();
        for file in crate::db::db_files(&path) {
            let _ = std::fs::remove_file(file);
        }
        record.live[0].task.insert(
            "x\") VALUES (1); DROP TABLE tasks; --".into(),
            Value::from(1),
        );
        record.generation += 10;
        write_record_for_test(&path, &record);
        let db = Db::open(&path).unwrap();
        let rebuilt = check_at_start(&db, None).unwrap().expect("rebuilt");
        assert_eq!(rebuilt.containers, vec![target.container_id.clone()]);
        assert!(db.get_task(&target.task_id).unwrap().is_some());
    }
}
