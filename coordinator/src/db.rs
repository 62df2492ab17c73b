//! The coordinator's SQLite database: what must survive a restart.
//!
//! One file, `parhelia.db`, in WAL mode so the CLI reads while the
//! coordinator writes. The schema is versioned with `PRAGMA user_version`;
//! [`MIGRATIONS`] is the ordered list of steps, and [`Db::open`] brings any
//! older file up to date (and refuses a file from a newer Parhelia). The
//! schema is documented in `docs/formats/database.md`.
//!
//! Architecture invariant: the session secret is read only through
//! [`Db::session_secret`]; no record type that is printed or serialized
//! carries it.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use anyhow::{Context, Result};
use parhelia_proto::{Event, Heartbeat, SessionOutcome, SessionStatus, event::Kind};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::error::{CodedError, coded};
use crate::error_codes;
use crate::ids::{SessionSecret, new_coordinator_id, now_ms};
use crate::task_state::{self, TaskStatus};

/// Schema steps; `MIGRATIONS[i]` takes the database from version `i` to
/// `i + 1`. Never edit a released step: append a new one.
pub const MIGRATIONS: &[&str] = &[
    // 1: the walking skeleton.
    r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

CREATE TABLE tasks (
    id             TEXT PRIMARY KEY,
    prompt         TEXT NOT NULL,
    task_type      TEXT NOT NULL,
    backend        TEXT NOT NULL,
    workspace      TEXT,
    model          TEXT,
    max_turns      INTEGER,
    status         TEXT NOT NULL CHECK (status IN
                     ('pending', 'running', 'completed', 'failed', 'cancelled', 'interrupted')),
    session_id     TEXT,
    container_id   TEXT,
    cost_usd       REAL NOT NULL DEFAULT 0,
    result         TEXT,
    error_code     TEXT,
    error_message  TEXT,
    created_at_ms  INTEGER NOT NULL,
    started_at_ms  INTEGER,
    finished_at_ms INTEGER,
    updated_at_ms  INTEGER NOT NULL
) STRICT;
CREATE INDEX tasks_by_status ON tasks (status, created_at_ms);

CREATE TABLE sessions (
    id                TEXT PRIMARY KEY,
    task_id           TEXT NOT NULL REFERENCES tasks (id),
    claude_session_id TEXT NOT NULL,
    mode              TEXT NOT NULL,
    secret            TEXT NOT NULL,
    status            TEXT NOT NULL,
    outcome           TEXT,
    workspace_dir     TEXT NOT NULL,
    volume_dir        TEXT NOT NULL,
    cost_usd          REAL NOT NULL DEFAULT 0,
    created_at_ms     INTEGER NOT NULL,
    finished_at_ms    INTEGER
) STRICT;

CREATE TABLE containers (
    id                TEXT PRIMARY KEY,
    session_id        TEXT NOT NULL REFERENCES sessions (id),
    task_id           TEXT NOT NULL REFERENCES tasks (id),
    backend           TEXT NOT NULL,
    state             TEXT NOT NULL CHECK (state IN
                        ('launching', 'running', 'terminated', 'failed', 'lost')),
    endpoint          TEXT,
    pid               INTEGER,
    created_at_ms     INTEGER NOT NULL,
    started_at_ms     INTEGER,
    terminated_at_ms  INTEGER,
    last_heartbeat_ms INTEGER
) STRICT;

CREATE TABLE events (
    id           INTEGER PRIMARY KEY,
    container_id TEXT NOT NULL REFERENCES containers (id),
    session_id   TEXT NOT NULL,
    task_id      TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    ts_ms        INTEGER NOT NULL,
    type         TEXT NOT NULL,
    level        TEXT NOT NULL,
    payload      TEXT NOT NULL,
    UNIQUE (container_id, seq)
) STRICT;
CREATE INDEX events_by_task ON events (task_id, id);

CREATE TABLE heartbeats (
    id                   INTEGER PRIMARY KEY,
    container_id         TEXT NOT NULL REFERENCES containers (id),
    ts_ms                INTEGER NOT NULL,
    cpu_percent          REAL NOT NULL,
    memory_bytes         INTEGER NOT NULL,
    workspace_disk_bytes INTEGER NOT NULL,
    status               TEXT NOT NULL
) STRICT;
CREATE INDEX heartbeats_by_container ON heartbeats (container_id, ts_ms);
"#,
    // 2: the control plane (issue 4): container states and health, the task
    // queue and retries, coordinator events, orphans, reconciler runs.
    r#"
CREATE TABLE containers_v2 (
    id                     TEXT PRIMARY KEY,
    session_id             TEXT NOT NULL REFERENCES sessions (id),
    task_id                TEXT NOT NULL REFERENCES tasks (id),
    backend                TEXT NOT NULL,
    state                  TEXT NOT NULL CHECK (state IN
                             ('created', 'starting', 'running', 'stopping',
                              'terminated', 'lost', 'orphaned', 'failed')),
    health                 TEXT CHECK (health IN ('healthy', 'degraded', 'unhealthy', 'dead')),
    endpoint               TEXT,
    pid                    INTEGER,
    heartbeat_interval_ms  INTEGER,
    created_at_ms          INTEGER NOT NULL,
    started_at_ms          INTEGER,
    terminated_at_ms       INTEGER,
    last_heartbeat_ms      INTEGER,
    state_changed_at_ms    INTEGER NOT NULL,
    stop_requested_at_ms   INTEGER,
    resume_requested_at_ms INTEGER
) STRICT;
INSERT INTO containers_v2 (id, session_id, task_id, backend, state, endpoint, pid, created_at_ms,
                           started_at_ms, terminated_at_ms, last_heartbeat_ms, state_changed_at_ms)
SELECT id, session_id, task_id, backend,
       CASE state WHEN 'launching' THEN 'starting' ELSE state END,
       endpoint, pid, created_at_ms, started_at_ms, terminated_at_ms, last_heartbeat_ms,
       coalesce(terminated_at_ms, started_at_ms, created_at_ms)
FROM containers;
DROP TABLE containers;
ALTER TABLE containers_v2 RENAME TO containers;
CREATE INDEX containers_by_state ON containers (state);
CREATE INDEX containers_by_task ON containers (task_id, created_at_ms);

ALTER TABLE tasks ADD COLUMN mode TEXT NOT NULL DEFAULT 'headless';
ALTER TABLE tasks ADD COLUMN dispatch_requested_at_ms INTEGER;
ALTER TABLE tasks ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN auto_resumes INTEGER NOT NULL DEFAULT 0;
UPDATE tasks SET attempt = (SELECT count(*) FROM sessions s WHERE s.task_id = tasks.id);
CREATE INDEX tasks_queue ON tasks (status, dispatch_requested_at_ms);

ALTER TABLE sessions ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1;
ALTER TABLE sessions ADD COLUMN resume_checkpoint_id TEXT;
CREATE INDEX sessions_by_task ON sessions (task_id, created_at_ms);

CREATE TABLE coordinator_events (
    id           INTEGER PRIMARY KEY,
    ts_ms        INTEGER NOT NULL,
    type         TEXT NOT NULL,
    level        TEXT NOT NULL CHECK (level IN ('info', 'warning', 'error')),
    container_id TEXT,
    session_id   TEXT,
    task_id      TEXT,
    message      TEXT NOT NULL,
    details      TEXT NOT NULL DEFAULT '{}'
) STRICT;
CREATE INDEX coordinator_events_by_ts ON coordinator_events (ts_ms);
CREATE INDEX coordinator_events_by_container ON coordinator_events (container_id, id);
CREATE INDEX coordinator_events_by_task ON coordinator_events (task_id, id);
CREATE INDEX events_by_ts ON events (ts_ms);

CREATE TABLE orphans (
    container_id              TEXT PRIMARY KEY,
    session_id                TEXT NOT NULL,
    pid                       INTEGER,
    endpoint                  TEXT,
    gone                      INTEGER NOT NULL DEFAULT 0,
    first_seen_ms             INTEGER NOT NULL,
    last_seen_ms              INTEGER NOT NULL,
    terminate_requested_at_ms INTEGER
) STRICT;

CREATE TABLE reconciler_runs (
    id             INTEGER PRIMARY KEY,
    started_at_ms  INTEGER NOT NULL,
    finished_at_ms INTEGER NOT NULL,
    trigger        TEXT NOT NULL,
    dry_run        INTEGER NOT NULL,
    action_count   INTEGER NOT NULL,
    report         TEXT NOT NULL
) STRICT;
"#,
    // 3: budgets: one ledger for compute and model cost, task limits.
    r#"
CREATE TABLE ledger (
    id                          INTEGER PRIMARY KEY,
    ts_ms                       INTEGER NOT NULL,
    kind                        TEXT NOT NULL CHECK (kind IN ('compute', 'model')),
    task_id                     TEXT NOT NULL,
    session_id                  TEXT,
    container_id                TEXT,
    amount_usd                  REAL NOT NULL,
    seconds                     REAL NOT NULL DEFAULT 0,
    input_tokens                INTEGER NOT NULL DEFAULT 0,
    output_tokens               INTEGER NOT NULL DEFAULT 0,
    cache_creation_input_tokens INTEGER NOT NULL DEFAULT 0,
    cache_read_input_tokens     INTEGER NOT NULL DEFAULT 0,
    details                     TEXT NOT NULL DEFAULT '{}'
) STRICT;
CREATE INDEX ledger_by_task ON ledger (task_id, id);
CREATE INDEX ledger_by_session ON ledger (session_id, kind);
CREATE INDEX ledger_by_ts ON ledger (ts_ms);
INSERT INTO ledger (ts_ms, kind, task_id, session_id, amount_usd, details)
    SELECT coalesce(finished_at_ms, created_at_ms), 'model', task_id, id, cost_usd, '{"backfilled":true}'
    FROM sessions WHERE cost_usd > 0;

CREATE TABLE budget_alerts (
    scope TEXT PRIMARY KEY,
    ts_ms INTEGER NOT NULL
) STRICT;

ALTER TABLE tasks ADD COLUMN max_cost_usd REAL;
ALTER TABLE tasks ADD COLUMN gpu TEXT;
ALTER TABLE tasks ADD COLUMN cpu REAL;
ALTER TABLE tasks ADD COLUMN memory_mb INTEGER;
ALTER TABLE tasks ADD COLUMN timeout_seconds INTEGER;
ALTER TABLE tasks ADD COLUMN budget_stop_requested_at_ms INTEGER;
ALTER TABLE tasks ADD COLUMN budget_stop_message TEXT;
"#,
    // 3 -> 4: checkpoints on a remote volume count as durable only once the
    // coordinator has read their manifest back and verified it; remote
    // containers remember their sandbox id, for usage reconciliation.
    r#"
CREATE TABLE durable_checkpoints (
    checkpoint_id  TEXT PRIMARY KEY,
    session_id     TEXT NOT NULL,
    verified_at_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX durable_by_session ON durable_checkpoints (session_id);

-- The sandbox id of a remote (Modal) container, and when its compute cost
-- was reconciled with the provider's own usage figures.
ALTER TABLE containers ADD COLUMN remote_id TEXT;
ALTER TABLE containers ADD COLUMN usage_reconciled_at_ms INTEGER;
"#,
    // 4 -> 5: the user's `--allow-large-workspace`, kept with the task so a
    // queued or held task is copied at dispatch under the limits it was
    // submitted with.
    r#"
ALTER TABLE tasks ADD COLUMN allow_large_workspace INTEGER NOT NULL DEFAULT 0;
"#,
    // 5 -> 6: faults named truthfully (issue 12). Events an agent journaled
    // but nobody can read back any more are recorded as gaps (and the stream
    // resumes after them); the database counts its generation, which the
    // record beside it (`<db>-generation`) is compared with at start.
    r#"
CREATE TABLE journal_gaps (
    container_id   TEXT NOT NULL,
    from_seq       INTEGER NOT NULL,
    to_seq         INTEGER NOT NULL CHECK (to_seq >= from_seq),
    source         TEXT NOT NULL CHECK (source IN ('agent', 'volume')),
    reason         TEXT NOT NULL,
    recorded_at_ms INTEGER NOT NULL,
    PRIMARY KEY (container_id, from_seq)
) STRICT;
INSERT OR IGNORE INTO meta (key, value) VALUES ('generation', '0');
-- The highest seq the container's agent announced (its heartbeats'
-- last_seq): what its journal must hold when read from the volume.
ALTER TABLE containers ADD COLUMN agent_last_seq INTEGER;
"#,
    // 6 -> 7: storage is charged (issue 13). The ledger gains the kind
    // `storage` (SQLite cannot alter a CHECK constraint: the table is
    // rebuilt, every row and id kept); `storage_meters` remembers, per
    // session with data on a remote volume, what was last measured and
    // when, so each pass charges the interval since at that size.
    r#"
CREATE TABLE ledger_v7 (
    id                          INTEGER PRIMARY KEY,
    ts_ms                       INTEGER NOT NULL,
    kind                        TEXT NOT NULL CHECK (kind IN ('compute', 'model', 'storage')),
    task_id                     TEXT NOT NULL,
    session_id                  TEXT,
    container_id                TEXT,
    amount_usd                  REAL NOT NULL,
    seconds                     REAL NOT NULL DEFAULT 0,
    input_tokens                INTEGER NOT NULL DEFAULT 0,
    output_tokens               INTEGER NOT NULL DEFAULT 0,
    cache_creation_input_tokens INTEGER NOT NULL DEFAULT 0,
    cache_read_input_tokens     INTEGER NOT NULL DEFAULT 0,
    details                     TEXT NOT NULL DEFAULT '{}'
) STRICT;
INSERT INTO ledger_v7 (id, ts_ms, kind, task_id, session_id, container_id, amount_usd, seconds,
                       input_tokens, output_tokens, cache_creation_input_tokens,
                       cache_read_input_tokens, details)
    SELECT id, ts_ms, kind, task_id, session_id, container_id, amount_usd, seconds,
           input_tokens, output_tokens, cache_creation_input_tokens,
           cache_read_input_tokens, details
    FROM ledger;
DROP TABLE ledger;
ALTER TABLE ledger_v7 RENAME TO ledger;
CREATE INDEX ledger_by_task ON ledger (task_id, id);
CREATE INDEX ledger_by_session ON ledger (session_id, kind);
CREATE INDEX ledger_by_ts ON ledger (ts_ms);

CREATE TABLE storage_meters (
    session_id     TEXT PRIMARY KEY,
    task_id        TEXT NOT NULL,
    backend        TEXT NOT NULL,
    started_at_ms  INTEGER NOT NULL,
    measured_at_ms INTEGER NOT NULL,
    bytes          INTEGER NOT NULL CHECK (bytes >= 0),
    stopped_at_ms  INTEGER
) STRICT;
"#,
    // 7 -> 8: the user's `--no-user-config`, kept with the task so every session
    // of it (a queued dispatch, a retry, a resume) starts clean the same way.
    r#"
ALTER TABLE tasks ADD COLUMN no_user_config INTEGER NOT NULL DEFAULT 0;
"#,
    // 8 -> 9: the task's own `--set` values (`task create --set`), a JSON
    // array of `section.key=value` strings applied to every launch of that
    // task only (a dispatch, a retry, a resume).
    r#"
ALTER TABLE tasks ADD COLUMN config_set TEXT NOT NULL DEFAULT '[]';
"#,
    // 9 -> 10: Modal sessions are first-class (issue 18). The names of the
    // task's secrets (`--secret`; a JSON array: environment variables on the
    // local backend, Modal secrets on Modal; never a value), its Modal
    // region (`--region`), and the GPU type a launch got (of `--gpu`'s list,
    // tried in order on capacity errors).
    r#"
ALTER TABLE tasks ADD COLUMN secrets TEXT NOT NULL DEFAULT '[]';
ALTER TABLE tasks ADD COLUMN region TEXT;
ALTER TABLE tasks ADD COLUMN gpu_chosen TEXT;
"#,
    // 10 -> 11: event ids are never reused. Followers (`events watch`, the MCP
    // subscriptions, the dashboard) resume after the largest id they have seen;
    // with a plain INTEGER PRIMARY KEY, `task delete` removing the newest events
    // let the next ones take those ids again, below every follower's cursor, and
    // they were never shown. AUTOINCREMENT keeps ids above every id ever used;
    // the rows keep theirs.
    r#"
CREATE TABLE events_v11 (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    container_id TEXT NOT NULL REFERENCES containers (id),
    session_id   TEXT NOT NULL,
    task_id      TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    ts_ms        INTEGER NOT NULL,
    type         TEXT NOT NULL,
    level        TEXT NOT NULL,
    payload      TEXT NOT NULL,
    UNIQUE (container_id, seq)
) STRICT;
INSERT INTO events_v11 (id, container_id, session_id, task_id, seq, ts_ms, type, level, payload)
    SELECT id, container_id, session_id, task_id, seq, ts_ms, type, level, payload FROM events;
DROP TABLE events;
ALTER TABLE events_v11 RENAME TO events;
CREATE INDEX events_by_task ON events (task_id, id);
CREATE INDEX events_by_ts ON events (ts_ms);

CREATE TABLE coordinator_events_v11 (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_ms        INTEGER NOT NULL,
    type         TEXT NOT NULL,
    level        TEXT NOT NULL CHECK (level IN ('info', 'warning', 'error')),
    container_id TEXT,
    session_id   TEXT,
    task_id      TEXT,
    message      TEXT NOT NULL,
    details      TEXT NOT NULL DEFAULT '{}'
) STRICT;
INSERT INTO coordinator_events_v11 (id, ts_ms, type, level, container_id, session_id, task_id,
                                    message, details)
    SELECT id, ts_ms, type, level, container_id, session_id, task_id, message, details
    FROM coordinator_events;
DROP TABLE coordinator_events;
ALTER TABLE coordinator_events_v11 RENAME TO coordinator_events;
CREATE INDEX coordinator_events_by_ts ON coordinator_events (ts_ms);
CREATE INDEX coordinator_events_by_container ON coordinator_events (container_id, id);
CREATE INDEX coordinator_events_by_task ON coordinator_events (task_id, id);
"#,
];

/// The schema version this build writes.
pub const LATEST_VERSION: u32 = MIGRATIONS.len() as u32;

pub use crate::container_state::ContainerState;

pub mod completion;
mod control;
mod event_log;
pub mod generation;
mod ledger;
mod rebuild;
pub mod writer;

pub use crate::records::{
    ContainerRecord, HeartbeatRecord, OrphanRecord, RunningSession, SessionRecord, Spend,
    TaskRecord,
};
pub use control::*;
pub use event_log::*;
pub use ledger::*;

/// Brings `conn` to `target` (at most [`LATEST_VERSION`]). Runs in one
/// immediate transaction, so two processes opening a fresh file at once
/// migrate it once.
pub fn migrate_to(conn: &mut Connection, target: u32) -> Result<u32> {
    // The common case, an up-to-date file, needs no write lock.
    let current: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current == target.min(LATEST_VERSION) {
        return Ok(current);
    }
    // Some steps rebuild a table other tables reference (SQLite cannot alter
    // a CHECK constraint). Foreign keys are off during the migration, as
    // SQLite's documented procedure requires, and checked before commit.
    let foreign_keys: bool = conn.query_row("PRAGMA foreign_keys", [], |r| r.get(0))?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    let result = migrate_in_transaction(conn, target);
    conn.pragma_update(
        None,
        "foreign_keys",
        if foreign_keys { "ON" } else { "OFF" },
    )?;
    result
}

fn migrate_in_transaction(conn: &mut Connection, target: u32) -> Result<u32> {
    // The version is read inside the immediate transaction, which `rusqlite_migration` does
    // not do (it reads first): the reason this is not that crate (docs/ARCHITECTURE.md).
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let current: u32 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > LATEST_VERSION {
        // The table's advice (permissions) is for the other cause: say what fits this one.
        return Err(CodedError::new(
            error_codes::STATE_UNAVAILABLE,
            format!(
                "database schema version {current} is newer than this parhelia understands ({LATEST_VERSION})"
            ),
        )
        .with_advice(Some(
            "A newer Parhelia wrote this state directory; nothing in it was changed. Run that newer `parhelia` here, or use another state directory with this one (`parhelia --state-dir DIR …`)."
                .to_string(),
        ))
        .into());
    }
    for version in current..target.min(LATEST_VERSION) {
        tx.execute_batch(MIGRATIONS[version as usize])
            .with_context(|| format!("migrating the database to version {}", version + 1))?;
        tx.pragma_update(None, "user_version", version + 1)?;
    }
    let violations: i64 =
        tx.query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
            r.get(0)
        })?;
    if violations > 0 {
        anyhow::bail!("the migrated database has {violations} foreign key violations");
    }
    let now: u32 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    tx.commit()?;
    Ok(now)
}

/// A resume that moves a session to another backend: where it lives now.
#[derive(Clone, Debug)]
pub struct SessionMove {
    pub backend: String,
    pub workspace_dir: std::path::PathBuf,
    pub volume_dir: std::path::PathBuf,
}

/// Everything recorded when a task is submitted, in one transaction.
#[derive(Clone, Debug)]
pub struct NewLaunch {
    pub task_id: String,
    pub session_id: String,
    pub container_id: String,
    pub claude_session_id: String,
    pub prompt: String,
    pub task_type: String,
    pub backend: String,
    pub workspace: Option<String>,
    pub model: Option<String>,
    pub max_turns: Option<u32>,
    pub mode: String,
    pub secret: SessionSecret,
    pub workspace_dir: PathBuf,
    pub volume_dir: PathBuf,
}

/// A task to record (without a session yet).
#[derive(Clone, Debug)]
pub struct NewTask {
    pub task_id: String,
    pub prompt: String,
    pub task_type: String,
    pub backend: String,
    pub workspace: Option<String>,
    pub model: Option<String>,
    pub max_turns: Option<u32>,
    pub mode: String,
    /// Queue it for dispatch (else it is held).
    pub dispatch: bool,
    /// Budget and resources (`--max-cost`, `--gpu`, …).
    pub limits: crate::budget::TaskLimits,
    /// Copy the workspace whatever its size (`--allow-large-workspace`).
    pub allow_large_workspace: bool,
    /// Start its sessions without the user's Claude Code setup (`--no-user-config`).
    pub no_user_config: bool,
    /// Its own `--set section.key=value` values, on top of the coordinator's
    /// configuration for its launches only (`config::task_config`).
    pub config_set: Vec<String>,
    /// The names of its secrets (`--secret`), never their values.
    pub secrets: Vec<String>,
    /// Its Modal region (`--region`).
    pub region: Option<String>,
}

/// A new session (attempt) for a task, and its container.
#[derive(Clone, Debug)]
pub struct NewAttempt {
    pub session_id: String,
    pub container_id: String,
    pub claude_session_id: String,
    pub secret: SessionSecret,
    pub workspace_dir: PathBuf,
    pub volume_dir: PathBuf,
    pub heartbeat_interval_ms: Option<i64>,
}

/// One stored event, as read back for `task watch`.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEvent {
    pub rowid: i64,
    pub container_id: String,
    pub seq: u64,
    pub event: Event,
}

/// What storing an event did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordedEvent {
    /// False when (container, seq) was already stored.
    pub inserted: bool,
    /// The task's new status when this event ended the session.
    pub task_finished: Option<TaskStatus>,
}

/// The identity of a container's stream, attached to every stored event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRef {
    pub container_id: String,
    pub session_id: String,
    pub task_id: String,
}

/// Fields set together with a status change.
#[derive(Clone, Debug, Default)]
pub struct TaskUpdate {
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub result: Option<String>,
    pub cost_usd: Option<f64>,
}

/// The files SQLite keeps for the database at `path`: the database, its
/// write-ahead log, its shared-memory index and its rollback journal.
pub fn db_files(path: &Path) -> [PathBuf; 4] {
    let with = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    [
        path.to_path_buf(),
        with("-wal"),
        with("-shm"),
        with("-journal"),
    ]
}

/// Creates an empty database file with mode 0600 if none exists (an empty
/// file is an empty SQLite database). Never follows a symlink or truncates.
fn create_private_db_file(path: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(CodedError::new(
            error_codes::STATE_UNAVAILABLE,
            format!("cannot create the database {}: {e}", path.display()),
        )
        .into()),
    }
}

/// Narrows every existing file of the database at `path` to mode 0600, and
/// refuses (E509) one that stays readable by others (owned by another user,
/// or on a file system that ignores the change).
pub fn make_db_files_private(path: &Path) -> Result<()> {
    for file in db_files(path) {
        let Ok(meta) = std::fs::metadata(&file) else {
            continue; // not there (yet): SQLite creates it with the db's mode
        };
        let mode = meta.permissions().mode();
        if mode & 0o077 == 0 {
            continue;
        }
        let narrowed = std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600));
        let now = std::fs::metadata(&file).map(|m| m.permissions().mode());
        if let Ok(now) = now
            && now & 0o077 != 0
        {
            let why = narrowed.err().map(|e| format!(": {e}")).unwrap_or_default();
            return Err(CodedError::new(
                error_codes::STATE_DIR_INSECURE,
                format!(
                    "{} holds session secrets and is readable by others (mode {:o}){why}",
                    file.display(),
                    now & 0o777
                ),
            )
            .into());
        }
    }
    Ok(())
}

/// The database handle. Cheap operations run under a mutex; SQLite calls
/// are short, so async callers use it directly.
pub struct Db {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// Serializes writing the generation record beside the database.
    generation_lock: Mutex<()>,
    /// The ledger's running totals for the budget watchdog ([`Db::ledger_totals`]).
    ledger_totals: Mutex<crate::budget::LedgerTotals>,
    /// The ingest writer's thread, started on first use ([`Db::ingest`]).
    ingest: std::sync::OnceLock<writer::IngestWriter>,
}

/// Heartbeats kept whole per container (the newest); older ones are thinned to one
/// per [`HEARTBEAT_THINNED_MS`]. Nothing reads a heartbeat's history but its latest
/// row and time (health, compute charging): the rows are kept for diagnosis, and a
/// session of days at 1 Hz would otherwise add a row a second forever.
pub const HEARTBEAT_KEEP_WHOLE: i64 = 600;
/// The spacing older heartbeats are thinned to (one kept per window).
pub const HEARTBEAT_THINNED_MS: i64 = 5 * 60 * 1000;
/// The thinning runs with every this many heartbeats stored (any container's), for
/// the container whose heartbeat it was: bounded work, amortised.
const HEARTBEAT_PRUNE_EVERY: i64 = 64;

/// Thins a container's heartbeats: the newest [`HEARTBEAT_KEEP_WHOLE`] stay, and of
/// the older ones only the first of each [`HEARTBEAT_THINNED_MS`] window.
fn thin_heartbeats(tx: &rusqlite::Transaction<'_>, container_id: &str) -> Result<usize> {
    Ok(tx.execute(
        "DELETE FROM heartbeats
         WHERE container_id = ?1
           AND id NOT IN (SELECT id FROM heartbeats WHERE container_id = ?1
                          ORDER BY ts_ms DESC, id DESC LIMIT ?2)
           AND id NOT IN (SELECT min(id) FROM heartbeats WHERE container_id = ?1
                          GROUP BY ts_ms / ?3)",
        params![container_id, HEARTBEAT_KEEP_WHOLE, HEARTBEAT_THINNED_MS],
    )?)
}

impl Db {
    /// Opens (creating if needed) and migrates the database. The database
    /// and its `-wal`/`-shm`/`-journal` files hold session secrets: they are
    /// made owner-only (0600) before and after SQLite touches them, whatever
    /// the umask (see [`make_db_files_private`]).
    pub fn open(path: &Path) -> Result<Self> {
        // SQLite gives a new `-wal`/`-shm` the database file's mode, so the
        // database is created 0600 before SQLite first opens it, and
        // companions left open by an older build are narrowed first.
        create_private_db_file(path)?;
        make_db_files_private(path)?;
        let mut conn = Connection::open(path).map_err(|e| {
            CodedError::new(
                error_codes::STATE_UNAVAILABLE,
                format!("cannot open the database {}: {e}", path.display()),
            )
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(mode, "the database is not in WAL mode");
        }
        // FULL: every commit is on disk (the WAL fsynced) before it returns,
        // so a task the CLI was told about survives a power loss, not only a
        // crash of the process (docs/formats/database.md, "Durability").
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate_to(&mut conn, LATEST_VERSION)?;
        // The WAL and shared-memory files exist now: owner only, checked.
        make_db_files_private(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            generation_lock: Mutex::new(()),
            ledger_totals: Mutex::default(),
            ingest: std::sync::OnceLock::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `PRAGMA integrity_check`: `ok`, or what is wrong.
    pub fn integrity_check(&self) -> Result<String> {
        let conn = self.conn();
        let mut stmt = conn.prepare("PRAGMA integrity_check")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let lines = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(lines.join("; "))
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (statements
        // are atomic), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This state directory's coordinator id (the label on our containers),
    /// created on first use.
    pub fn coordinator_id(&self) -> Result<String> {
        let conn = self.conn();
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('coordinator_id', ?1)",
            [new_coordinator_id()],
        )?;
        Ok(conn.query_row(
            "SELECT value FROM meta WHERE key = 'coordinator_id'",
            [],
            |r| r.get(0),
        )?)
    }

    /// Records a new task (pending, held) with its session and container,
    /// in one transaction. (The walking skeleton's path; the coordinator now
    /// records tasks with [`Db::insert_task`] and sessions with
    /// [`Db::claim_dispatch`].)
    pub fn insert_launch(&self, launch: &NewLaunch) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = now_ms();
        insert_task_in(
            &tx,
            &NewTask {
                task_id: launch.task_id.clone(),
                prompt: launch.prompt.clone(),
                task_type: launch.task_type.clone(),
                backend: launch.backend.clone(),
                workspace: launch.workspace.clone(),
                model: launch.model.clone(),
                max_turns: launch.max_turns,
                mode: launch.mode.clone(),
                dispatch: false,
                limits: Default::default(),
                allow_large_workspace: false,
                no_user_config: false,
                config_set: Vec::new(),
                secrets: Vec::new(),
                region: None,
            },
            now,
        )?;
        insert_attempt_in(
            &tx,
            &launch.task_id,
            &NewAttempt {
                session_id: launch.session_id.clone(),
                container_id: launch.container_id.clone(),
                claude_session_id: launch.claude_session_id.clone(),
                secret: launch.secret.clone(),
                workspace_dir: launch.workspace_dir.clone(),
                volume_dir: launch.volume_dir.clone(),
                heartbeat_interval_ms: None,
            },
            now,
        )?;
        tx.commit()?;
        drop(conn);
        self.advance_generation();
        Ok(())
    }

    /// Records a new task, pending: queued for dispatch when `dispatch`,
    /// else held until a `task dispatch`.
    pub fn insert_task(&self, task: &NewTask) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        insert_task_in(&tx, task, now_ms())?;
        tx.commit()?;
        drop(conn);
        self.advance_generation();
        Ok(())
    }

    /// Claims a pending task for dispatch: moves it to running and records
    /// its new session and container (`created`), in one transaction, so a
    /// task is never dispatched twice. Returns the attempt number.
    pub fn claim_dispatch(&self, task_id: &str, attempt: &NewAttempt) -> Result<u32> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = now_ms();
        transition_task_in(&tx, task_id, TaskStatus::Running, &TaskUpdate::default())?;
        let number = insert_attempt_in(&tx, task_id, attempt, now)?;
        tx.execute(
            "UPDATE tasks SET dispatch_requested_at_ms = NULL WHERE id = ?1",
            [task_id],
        )?;
        tx.commit()?;
        drop(conn);
        self.advance_generation();
        Ok(number)
    }

    /// A resume or rollback: the session continues on a new container, which
    /// becomes the task's current one (so the old container's late
    /// `SessionFinished` no longer moves the task), and the task runs again.
    pub fn begin_resume(
        &self,
        task_id: &str,
        session_id: &str,
        container_id: &str,
        heartbeat_interval_ms: Option<i64>,
        move_to: Option<&SessionMove>,
    ) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = now_ms();
        if let Some(m) = move_to {
            tx.execute(
                "UPDATE tasks SET backend = ?2 WHERE id = ?1",
                params![task_id, m.backend],
            )?;
            tx.execute(
                "UPDATE sessions SET workspace_dir = ?2, volume_dir = ?3 WHERE id = ?1",
                params![
                    session_id,
                    m.workspace_dir.to_string_lossy(),
                    m.volume_dir.to_string_lossy()
                ],
            )?;
        }
        let (status, backend): (String, String) = tx.query_row(
            "SELECT status, backend FROM tasks WHERE id = ?1",
            [task_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if status != TaskStatus::Running.as_str() {
            transition_task_in(&tx, task_id, TaskStatus::Running, &TaskUpdate::default())?;
        }
        tx.execute(
            "INSERT INTO containers (id, session_id, task_id, backend, state, heartbeat_interval_ms,
                                     created_at_ms, state_changed_at_ms)
             VALUES (?1, ?2, ?3, ?4, 'created', ?5, ?6, ?6)",
            params![container_id, session_id, task_id, backend, heartbeat_interval_ms, now],
        )?;
        tx.execute(
            "UPDATE tasks SET container_id = ?2, error_code = NULL, error_message = NULL,
                              finished_at_ms = NULL, updated_at_ms = ?3
             WHERE id = ?1",
            params![task_id, container_id, now],
        )?;
        tx.execute(
            "UPDATE sessions SET status = 'starting', outcome = NULL, finished_at_ms = NULL,
                                 resume_checkpoint_id = NULL
             WHERE id = ?1",
            [session_id],
        )?;
        tx.commit()?;
        drop(conn);
        self.advance_generation();
        Ok(())
    }

    /// Moves a task to `to` through the state machine (E603 when illegal).
    pub fn transition_task(
        &self,
        task_id: &str,
        to: TaskStatus,
        update: &TaskUpdate,
    ) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        transition_task_in(&tx, task_id, to, update)?;
        tx.commit()?;
        drop(conn);
        self.advance_generation();
        Ok(())
    }

    pub fn get_task(&self, task_id: &str) -> Result<Option<TaskRecord>> {
        let conn = self.conn();
        let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1");
        let task = conn.query_row(&sql, [task_id], task_from_row).optional()?;
        Ok(task.map(|t| with_task_spend(&conn, t)).transpose()?)
    }

    /// Tasks, newest first, optionally only those in `status`.
    pub fn list_tasks(&self, status: Option<TaskStatus>) -> Result<Vec<TaskRecord>> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE (?1 IS NULL OR status = ?1)
             ORDER BY created_at_ms DESC, rowid DESC"
        );
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map([status.map(TaskStatus::as_str)], task_from_row)?;
        let tasks: Vec<TaskRecord> = rows.collect::<rusqlite::Result<_>>()?;
        Ok(tasks
            .into_iter()
            .map(|t| with_task_spend(&conn, t))
            .collect::<rusqlite::Result<_>>()?)
    }

    pub fn get_session(&self, session_id: &str) -> Result<Option<SessionRecord>> {
        let conn = self.conn();
        let sql = format!("SELECT {SESSION_COLUMNS} FROM {SESSION_FROM} WHERE s.id = ?1");
        let session = conn
            .query_row(&sql, [session_id], session_from_row)
            .optional()?;
        Ok(session.map(|s| with_session_spend(&conn, s)).transpose()?)
    }

    /// Sessions, newest first.
    pub fn list_sessions(&self) -> Result<Vec<SessionRecord>> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM {SESSION_FROM} ORDER BY s.created_at_ms DESC, s.rowid DESC"
        );
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map([], session_from_row)?;
        let sessions: Vec<SessionRecord> = rows.collect::<rusqlite::Result<_>>()?;
        Ok(sessions
            .into_iter()
            .map(|s| with_session_spend(&conn, s))
            .collect::<rusqlite::Result<_>>()?)
    }

    /// The secret of a session. The only way to read it.
    pub fn session_secret(&self, session_id: &str) -> Result<Option<SessionSecret>> {
        let conn = self.conn();
        let secret: Option<String> = conn
            .query_row(
                "SELECT secret FROM sessions WHERE id = ?1",
                [session_id],
                |r| r.get(0),
            )
            .optional()?;
        Ok(secret.map(SessionSecret::from_stored))
    }

    /// Whether any container ever ran on `backend`.
    pub fn backend_ever_used(&self, backend: &str) -> Result<bool> {
        let conn = self.conn();
        Ok(conn
            .query_row(
                "SELECT 1 FROM containers WHERE backend = ?1 LIMIT 1",
                [backend],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    pub fn get_container(&self, container_id: &str) -> Result<Option<ContainerRecord>> {
        let conn = self.conn();
        let sql = format!("SELECT {CONTAINER_COLUMNS} FROM containers c WHERE c.id = ?1");
        Ok(conn
            .query_row(&sql, [container_id], container_from_row)
            .optional()?)
    }

    /// Sets a container's state; `terminated_at_ms` is stamped for end states.
    pub fn set_container_state(&self, container_id: &str, state: ContainerState) -> Result<()> {
        set_container_state_in(&self.conn(), container_id, state)?;
        self.advance_generation();
        Ok(())
    }

    /// The container's agent answered: record where and mark it running.
    pub fn set_container_running(
        &self,
        container_id: &str,
        endpoint: &str,
        pid: Option<u32>,
    ) -> Result<()> {
        let changed = self.conn().execute(
            "UPDATE containers SET endpoint = ?2, pid = coalesce(?3, pid),
                    started_at_ms = coalesce(started_at_ms, ?4),
                    state_changed_at_ms = CASE WHEN state = 'running' THEN state_changed_at_ms ELSE ?4 END,
                    state = 'running'
             WHERE id = ?1 AND state IN ('created', 'starting', 'running')",
            params![container_id, endpoint, pid, now_ms()],
        )?;
        if changed > 0 {
            self.advance_generation();
        }
        Ok(())
    }

    pub fn set_container_pid(&self, container_id: &str, pid: u32) -> Result<()> {
        self.conn().execute(
            "UPDATE containers SET pid = ?2 WHERE id = ?1",
            params![container_id, pid],
        )?;
        Ok(())
    }

    /// Containers whose task is still running and whose stream should be
    /// followed (what a restarted coordinator re-attaches to).
    pub fn containers_to_follow(&self) -> Result<Vec<ContainerRecord>> {
        let conn = self.conn();
        let sql = format!(
            "SELECT {CONTAINER_COLUMNS} FROM containers c
             WHERE c.state IN ('created', 'starting', 'running', 'stopping')
               AND EXISTS (SELECT 1 FROM tasks t WHERE t.id = c.task_id AND t.status = 'running')
             ORDER BY c.created_at_ms"
        );
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map([], container_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The highest stored sequence number for a container (0 when none).
    pub fn max_seq(&self, container_id: &str) -> Result<u64> {
        let conn = self.conn();
        let max: i64 = conn.query_row(
            "SELECT coalesce(max(seq), 0) FROM events WHERE container_id = ?1",
            [container_id],
            |r| r.get(0),
        )?;
        Ok(max as u64)
    }

    /// Where a container's stream resumes from, minus one: the highest
    /// sequence number stored or recorded as lost ([`Db::record_journal_gap`]).
    pub fn resume_seq(&self, container_id: &str) -> Result<u64> {
        let conn = self.conn();
        let max: i64 = conn.query_row(
            "SELECT max((SELECT coalesce(max(seq), 0) FROM events WHERE container_id = ?1),
                        (SELECT coalesce(max(to_seq), 0) FROM journal_gaps WHERE container_id = ?1))",
            [container_id],
            |r| r.get(0),
        )?;
        Ok(max.max(0) as u64)
    }

    /// The highest seq the container's agent announced in a heartbeat.
    pub fn last_announced_seq(&self, container_id: &str) -> Result<Option<u64>> {
        let conn = self.conn();
        let seq: Option<i64> = conn
            .query_row(
                "SELECT agent_last_seq FROM containers WHERE id = ?1",
                [container_id],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        Ok(seq.filter(|s| *s > 0).map(|s| s as u64))
    }

    /// Records that `from_seq..=to_seq` of a container's journal cannot be
    /// read back by anyone (`source`: `agent` when the live agent said so,
    /// `volume` when the journal on the volume is missing, short or
    /// damaged), with an E515 coordinator event. Returns false when this
    /// gap was recorded before.
    pub fn record_journal_gap(
        &self,
        target: &ContainerRef,
        from_seq: u64,
        to_seq: u64,
        source: &'static str,
        reason: &str,
    ) -> Result<bool> {
        if to_seq < from_seq {
            return Ok(false);
        }
        let reason: String = reason.chars().take(1000).collect();
        let inserted = self.conn().execute(
            "INSERT OR IGNORE INTO journal_gaps (container_id, from_seq, to_seq, source, reason, recorded_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                target.container_id,
                from_seq as i64,
                to_seq as i64,
                source,
                reason,
                now_ms()
            ],
        )? == 1;
        if inserted {
            let events = if from_seq == to_seq {
                format!("event {from_seq}")
            } else {
                format!("events {from_seq}-{to_seq}")
            };
            self.note(
                NewCoordinatorEvent::new(
                    "journal_gap",
                    "error",
                    format!(
                        "{}: {events} of {} are lost ({source}: {reason})",
                        error_codes::JOURNAL_GAP.code,
                        target.container_id
                    ),
                )
                .task(&target.task_id)
                .session(&target.session_id)
                .container(&target.container_id)
                .details(serde_json::json!({
                    "code": error_codes::JOURNAL_GAP.code,
                    "from_seq": from_seq,
                    "to_seq": to_seq,
                    "source": source,
                    "reason": reason,
                })),
            );
        }
        Ok(inserted)
    }

    /// The gaps recorded for a container, in order: (from, to, source, reason).
    pub fn journal_gaps(&self, container_id: &str) -> Result<Vec<(u64, u64, String, String)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT from_seq, to_seq, source, reason FROM journal_gaps WHERE container_id = ?1 ORDER BY from_seq",
        )?;
        let rows = stmt.query_map([container_id], |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get::<_, i64>(1)? as u64,
                r.get(2)?,
                r.get(3)?,
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// What the coordinator has recorded a session spending on the model:
    /// the larger of the session's cost and its model ledger (a resumed
    /// agent starts counting from at least this).
    pub fn session_spend_usd(&self, session_id: &str) -> Result<f64> {
        let conn = self.conn();
        let spend: f64 = conn.query_row(
            "SELECT max(coalesce((SELECT cost_usd FROM sessions WHERE id = ?1), 0),
                        (SELECT coalesce(sum(amount_usd), 0) FROM ledger WHERE session_id = ?1 AND kind = 'model'))",
            [session_id],
            |r| r.get(0),
        )?;
        Ok(spend)
    }

    /// Stores one event (ignoring a (container, seq) already stored) and
    /// applies what it means to the session and task, in one transaction.
    /// (Event ingestion goes through [`Db::ingest`]'s writer instead.)
    pub fn record_event(&self, target: &ContainerRef, event: &Event) -> Result<RecordedEvent> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let recorded = record_event_in(&tx, target, event)?;
        tx.commit()?;
        drop(conn);
        if recorded.task_finished.is_some() {
            self.advance_generation();
        }
        Ok(recorded)
    }

    pub fn record_heartbeat(&self, container_id: &str, heartbeat: &Heartbeat) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        record_heartbeat_in(&tx, container_id, heartbeat)?;
        tx.commit()?;
        Ok(())
    }

    /// The ingest writer (started on first use): event ingestion's writes, batched
    /// into transactions on a thread of their own ([`writer`]).
    pub fn ingest(&self) -> Result<&writer::IngestWriter> {
        if let Some(writer) = self.ingest.get() {
            return Ok(writer);
        }
        let started = writer::IngestWriter::start(&self.path)?;
        // Another caller may have started one meanwhile: theirs is kept, ours ends
        // when dropped here.
        Ok(self.ingest.get_or_init(|| started))
    }

    /// A task's events stored after `after_rowid`, in storage order.
    pub fn task_events_after(
        &self,
        task_id: &str,
        after_rowid: i64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, container_id, seq, payload FROM events
             WHERE task_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![task_id, after_rowid, limit], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        let mut events = Vec::new();
        for row in rows {
            let (rowid, container_id, seq, payload) = row?;
            let event: Event = serde_json::from_str(&payload)
                .with_context(|| format!("reading stored event {container_id}/{seq}"))?;
            events.push(StoredEvent {
                rowid,
                container_id,
                seq: seq as u64,
                event,
            });
        }
        Ok(events)
    }

    /// The stored sequence numbers of a container, in order (for checks).
    pub fn container_seqs(&self, container_id: &str) -> Result<Vec<u64>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT seq FROM events WHERE container_id = ?1 ORDER BY seq")?;
        let rows = stmt.query_map([container_id], |r| r.get::<_, i64>(0))?;
        Ok(rows
            .map(|r| r.map(|s| s as u64))
            .collect::<rusqlite::Result<_>>()?)
    }

    pub fn heartbeat_count(&self, container_id: &str) -> Result<u64> {
        let conn = self.conn();
        let n: i64 = conn.query_row(
            "SELECT count(*) FROM heartbeats WHERE container_id = ?1",
            [container_id],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    /// Number of tasks per status (every status present, zero or not).
    pub fn task_counts(&self) -> Result<BTreeMap<&'static str, u64>> {
        let conn = self.conn();
        let mut counts: BTreeMap<&'static str, u64> =
            TaskStatus::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        let mut stmt = conn.prepare("SELECT status, count(*) FROM tasks GROUP BY status")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (status, n) = row?;
            if let Ok(status) = status.parse::<TaskStatus>() {
                counts.insert(status.as_str(), n as u64);
            }
        }
        Ok(counts)
    }

    /// What everything cost: the whole ledger (tasks deleted since included).
    pub fn total_spend(&self) -> Result<Spend> {
        self.spend(SpendScope::Since(i64::MIN))
    }

    pub fn running_sessions(&self) -> Result<Vec<RunningSession>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT s.id, s.task_id, c.id, s.status, c.started_at_ms, c.last_heartbeat_ms,
                    c.heartbeat_interval_ms, c.health
             FROM tasks t JOIN sessions s ON s.id = t.session_id JOIN containers c ON c.id = t.container_id
             WHERE t.status = 'running' ORDER BY s.created_at_ms",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(RunningSession {
                session_id: r.get(0)?,
                task_id: r.get(1)?,
                container_id: r.get(2)?,
                status: r.get(3)?,
                spend: Spend::default(),
                started_at_ms: r.get(4)?,
                last_heartbeat_ms: r.get(5)?,
                heartbeat_interval_ms: r.get(6)?,
                container_health: r
                    .get::<_, Option<String>>(7)?
                    .map(|s| parse_column(7, &s))
                    .transpose()?,
            })
        })?;
        let mut sessions: Vec<RunningSession> = rows.collect::<rusqlite::Result<_>>()?;
        for s in &mut sessions {
            s.spend = spend_in(&conn, SpendScope::Session(&s.session_id))?;
        }
        Ok(sessions)
    }
}

const TASK_COLUMNS: &str =
    "id, prompt, task_type, backend, workspace, model, max_turns, status, session_id,
     container_id, result, error_code, error_message, created_at_ms, started_at_ms, finished_at_ms,
     mode, dispatch_requested_at_ms, attempt, auto_resumes, allow_large_workspace,
     no_user_config, config_set, secrets, region, gpu_chosen";

/// [`Db::record_event`]'s work in a transaction.
pub(crate) fn record_event_in(
    tx: &rusqlite::Transaction<'_>,
    target: &ContainerRef,
    event: &Event,
) -> Result<RecordedEvent> {
    let (event_type, level) = match &event.kind {
        Some(kind) => (
            parhelia_proto::event_type_name(kind),
            parhelia_proto::event_level(kind),
        ),
        None => ("unknown", "info"),
    };
    let payload = serde_json::to_string(event)?;
    let inserted = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO events (container_id, session_id, task_id, seq, ts_ms, type, level, payload)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            target.container_id,
            target.session_id,
            target.task_id,
            event.seq as i64,
            event.ts_ms,
            event_type,
            level,
            payload
        ])?
        == 1;
    let mut recorded = RecordedEvent {
        inserted,
        task_finished: None,
    };
    if inserted {
        recorded.task_finished = apply_event_effects(tx, target, event)?;
    }
    Ok(recorded)
}

/// [`Db::record_heartbeat`]'s work in a transaction.
pub(crate) fn record_heartbeat_in(
    tx: &rusqlite::Transaction<'_>,
    container_id: &str,
    heartbeat: &Heartbeat,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO heartbeats (container_id, ts_ms, cpu_percent, memory_bytes, workspace_disk_bytes, status)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        container_id,
        heartbeat.ts_ms,
        heartbeat.cpu_percent,
        heartbeat.memory_bytes as i64,
        heartbeat.workspace_disk_bytes as i64,
        session_status_name(heartbeat.status)
    ])?;
    let inserted = tx.last_insert_rowid();
    tx.prepare_cached(
        "UPDATE containers SET last_heartbeat_ms = max(coalesce(last_heartbeat_ms, 0), ?2),
                               agent_last_seq = max(coalesce(agent_last_seq, 0), ?3)
         WHERE id = ?1",
    )?
    .execute(params![
        container_id,
        heartbeat.ts_ms,
        heartbeat.last_seq.min(i64::MAX as u64) as i64
    ])?;
    if inserted % HEARTBEAT_PRUNE_EVERY == 0 {
        thin_heartbeats(tx, container_id)?;
    }
    Ok(())
}

/// A task with its cost from the ledger ([`spend_in`]).
fn with_task_spend(conn: &Connection, mut t: TaskRecord) -> rusqlite::Result<TaskRecord> {
    t.spend = spend_in(conn, SpendScope::Task(&t.id))?;
    Ok(t)
}

/// A session with its cost from the ledger ([`spend_in`]).
fn with_session_spend(conn: &Connection, mut s: SessionRecord) -> rusqlite::Result<SessionRecord> {
    s.spend = spend_in(conn, SpendScope::Session(&s.id))?;
    Ok(s)
}

fn task_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TaskRecord> {
    let status: String = r.get(7)?;
    let status = status.parse::<TaskStatus>().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(7, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(TaskRecord {
        id: r.get(0)?,
        prompt: r.get(1)?,
        task_type: r.get(2)?,
        backend: r.get(3)?,
        workspace: r.get(4)?,
        model: r.get(5)?,
        max_turns: r.get(6)?,
        status,
        session_id: r.get(8)?,
        container_id: r.get(9)?,
        spend: Spend::default(),
        result: r.get(10)?,
        error_code: r.get(11)?,
        error_message: r.get(12)?,
        created_at_ms: r.get(13)?,
        started_at_ms: r.get(14)?,
        finished_at_ms: r.get(15)?,
        mode: r.get(16)?,
        dispatch_requested_at_ms: r.get(17)?,
        attempt: r.get(18)?,
        auto_resumes: r.get(19)?,
        allow_large_workspace: r.get(20)?,
        no_user_config: r.get(21)?,
        config_set: {
            // Written by this coordinator as a JSON array of strings; anything
            // else (a damaged row) reads as no overrides, never a panic.
            let text: String = r.get(22)?;
            serde_json::from_str(&text).unwrap_or_default()
        },
        secrets: {
            let text: String = r.get(23)?;
            serde_json::from_str(&text).unwrap_or_default()
        },
        region: r.get(24)?,
        gpu_chosen: r.get(25)?,
    })
}

// Never add `secret` here: see the module's invariant.
const SESSION_COLUMNS: &str =
    "s.id, s.task_id, s.claude_session_id, s.mode, s.status, s.outcome, s.workspace_dir,
     s.volume_dir, s.created_at_ms, s.finished_at_ms, c.id, s.attempt, s.resume_checkpoint_id,
     c.state, c.health, c.last_heartbeat_ms";

/// The latest container of each session, joined as `c`.
const SESSION_FROM: &str = "sessions s LEFT JOIN containers c ON c.id =
     (SELECT c2.id FROM containers c2 WHERE c2.session_id = s.id ORDER BY c2.created_at_ms DESC, c2.rowid DESC LIMIT 1)";

fn session_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRecord> {
    Ok(SessionRecord {
        id: r.get(0)?,
        task_id: r.get(1)?,
        claude_session_id: r.get(2)?,
        mode: r.get(3)?,
        status: r.get(4)?,
        outcome: r.get(5)?,
        workspace_dir: r.get(6)?,
        volume_dir: r.get(7)?,
        spend: Spend::default(),
        created_at_ms: r.get(8)?,
        finished_at_ms: r.get(9)?,
        container_id: r.get(10)?,
        attempt: r.get(11)?,
        resume_checkpoint_id: r.get(12)?,
        container_state: r
            .get::<_, Option<String>>(13)?
            .map(|s| parse_column(13, &s))
            .transpose()?,
        container_health: r
            .get::<_, Option<String>>(14)?
            .map(|s| parse_column(14, &s))
            .transpose()?,
        last_heartbeat_ms: r.get(15)?,
    })
}

/// Parses a stored enum name (a CHECK constraint guarantees it is known).
fn parse_column<T: std::str::FromStr>(index: usize, text: &str) -> rusqlite::Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    text.parse::<T>().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, Box::new(e))
    })
}

pub(crate) const CONTAINER_COLUMNS: &str =
    "c.id, c.session_id, c.task_id, c.backend, c.state, c.health, c.endpoint, c.pid,
     c.heartbeat_interval_ms, c.created_at_ms, c.started_at_ms, c.terminated_at_ms,
     c.last_heartbeat_ms, c.state_changed_at_ms, c.stop_requested_at_ms, c.resume_requested_at_ms";

pub(crate) fn container_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ContainerRecord> {
    Ok(ContainerRecord {
        id: r.get(0)?,
        session_id: r.get(1)?,
        task_id: r.get(2)?,
        backend: r.get(3)?,
        state: parse_column(4, &r.get::<_, String>(4)?)?,
        health: r
            .get::<_, Option<String>>(5)?
            .map(|s| parse_column(5, &s))
            .transpose()?,
        endpoint: r.get(6)?,
        pid: r.get(7)?,
        heartbeat_interval_ms: r.get(8)?,
        created_at_ms: r.get(9)?,
        started_at_ms: r.get(10)?,
        terminated_at_ms: r.get(11)?,
        last_heartbeat_ms: r.get(12)?,
        state_changed_at_ms: r.get(13)?,
        stop_requested_at_ms: r.get(14)?,
        resume_requested_at_ms: r.get(15)?,
    })
}

fn insert_task_in(tx: &rusqlite::Transaction<'_>, task: &NewTask, now: i64) -> Result<()> {
    tx.execute(
        "INSERT INTO tasks (id, prompt, task_type, backend, workspace, model, max_turns, status,
                            mode, dispatch_requested_at_ms, created_at_ms, updated_at_ms,
                            max_cost_usd, gpu, cpu, memory_mb, timeout_seconds,
                            allow_large_workspace, no_user_config, config_set, secrets, region)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', ?8, ?9, ?10, ?10, ?11, ?12, ?13, ?14, ?15,
                 ?16, ?17, ?18, ?19, ?20)",
        params![
            task.task_id,
            task.prompt,
            task.task_type,
            task.backend,
            task.workspace,
            task.model,
            task.max_turns,
            task.mode,
            task.dispatch.then_some(now),
            now,
            task.limits.max_cost_usd,
            task.limits.gpu,
            task.limits.cpu,
            task.limits.memory_mb.map(|m| m as i64),
            task.limits.timeout_seconds.map(|t| t as i64),
            task.allow_large_workspace,
            task.no_user_config,
            serde_json::to_string(&task.config_set)?,
            serde_json::to_string(&task.secrets)?,
            task.region,
        ],
    )?;
    Ok(())
}

/// Inserts a task's next session and its container; returns the attempt.
fn insert_attempt_in(
    tx: &rusqlite::Transaction<'_>,
    task_id: &str,
    attempt: &NewAttempt,
    now: i64,
) -> Result<u32> {
    let (mode, backend, previous): (String, String, u32) = tx.query_row(
        "SELECT mode, backend, attempt FROM tasks WHERE id = ?1",
        [task_id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let number = previous + 1;
    tx.execute(
        "INSERT INTO sessions (id, task_id, claude_session_id, mode, secret, status,
                               workspace_dir, volume_dir, created_at_ms, attempt)
         VALUES (?1, ?2, ?3, ?4, ?5, 'starting', ?6, ?7, ?8, ?9)",
        params![
            attempt.session_id,
            task_id,
            attempt.claude_session_id,
            mode,
            attempt.secret.expose(),
            attempt.workspace_dir.to_string_lossy(),
            attempt.volume_dir.to_string_lossy(),
            now,
            number
        ],
    )?;
    tx.execute(
        "INSERT INTO containers (id, session_id, task_id, backend, state, heartbeat_interval_ms,
                                 created_at_ms, state_changed_at_ms)
         VALUES (?1, ?2, ?3, ?4, 'created', ?5, ?6, ?6)",
        params![
            attempt.container_id,
            attempt.session_id,
            task_id,
            backend,
            attempt.heartbeat_interval_ms,
            now
        ],
    )?;
    tx.execute(
        "UPDATE tasks SET session_id = ?2, container_id = ?3, attempt = ?4, updated_at_ms = ?5
         WHERE id = ?1",
        params![
            task_id,
            attempt.session_id,
            attempt.container_id,
            number,
            now
        ],
    )?;
    Ok(number)
}

pub(crate) fn set_container_state_in(
    conn: &Connection,
    container_id: &str,
    state: ContainerState,
) -> Result<()> {
    conn.execute(
        "UPDATE containers SET state = ?2,
                state_changed_at_ms = CASE WHEN state = ?2 THEN state_changed_at_ms ELSE ?4 END,
                terminated_at_ms = CASE WHEN ?3 THEN coalesce(terminated_at_ms, ?4) ELSE terminated_at_ms END
         WHERE id = ?1",
        params![container_id, state.as_str(), state.has_ended(), now_ms()],
    )?;
    Ok(())
}

fn transition_task_in(
    tx: &rusqlite::Transaction<'_>,
    task_id: &str,
    to: TaskStatus,
    update: &TaskUpdate,
) -> Result<()> {
    let from: Option<String> = tx
        .query_row("SELECT status FROM tasks WHERE id = ?1", [task_id], |r| {
            r.get(0)
        })
        .optional()?;
    let from = from
        .ok_or_else(|| {
            coded(
                error_codes::TASK_NOT_FOUND,
                format!("task not found: {task_id}"),
            )
        })?
        .parse::<TaskStatus>()?;
    task_state::transition(task_id, from, to)?;
    let now = now_ms();
    tx.execute(
        "UPDATE tasks SET status = ?2,
                error_code = coalesce(?3, error_code),
                error_message = coalesce(?4, error_message),
                result = coalesce(?5, result),
                cost_usd = coalesce(?6, cost_usd),
                started_at_ms = CASE WHEN ?2 = 'running' THEN coalesce(started_at_ms, ?7) ELSE started_at_ms END,
                finished_at_ms = CASE WHEN ?8 THEN ?7 ELSE NULL END,
                updated_at_ms = ?7
         WHERE id = ?1",
        params![
            task_id,
            to.as_str(),
            update.error_code,
            update.error_message,
            update.result,
            update.cost_usd,
            now,
            to.has_ended()
        ],
    )?;
    Ok(())
}

/// What an event means for the session and task rows.
fn apply_event_effects(
    tx: &rusqlite::Transaction<'_>,
    target: &ContainerRef,
    event: &Event,
) -> Result<Option<TaskStatus>> {
    match &event.kind {
        Some(Kind::TurnResult(turn)) => {
            tx.execute(
                // Never down: a figure from a partial source (a process that
                // could not read an earlier journal) does not undo spend.
                "UPDATE sessions SET cost_usd = max(cost_usd, ?2) WHERE id = ?1",
                params![target.session_id, turn.session_cost_usd],
            )?;
            // Tokens come from `ModelSpend` (per response, subagents included);
            // the result's `usage` covers the main thread's last process only, so
            // taking it too would count twice.
            ledger::charge_model_in(tx, target, event.ts_ms, turn.session_cost_usd, None, None)?;
            // A task's cost covers every attempt (session) it ran.
            tx.execute(
                "UPDATE tasks SET cost_usd = (SELECT coalesce(sum(cost_usd), 0) FROM sessions WHERE task_id = ?1),
                                  result = ?2, updated_at_ms = ?3 WHERE id = ?1",
                params![target.task_id, turn.result, now_ms()],
            )?;
            Ok(None)
        }
        Some(Kind::ModelSpend(spend)) => {
            // One model response's spend, as it happened: the ledger takes the
            // growth of the session total and the response's token increment.
            // Costs are clamped like everywhere (0..=1e9; the figures come from
            // what the session wrote).
            let total = if spend.session_cost_usd.is_finite() {
                spend.session_cost_usd.clamp(0.0, 1e9)
            } else {
                0.0
            };
            tx.execute(
                "UPDATE sessions SET cost_usd = max(cost_usd, ?2) WHERE id = ?1",
                params![target.session_id, total],
            )?;
            // A response the coordinator already charged (with its tokens) when it
            // ended a dead agent's left-over processes: a later agent's event for it
            // adds no tokens again (the money is the total's growth either way).
            let charged_left_over: bool = !spend.message_id.is_empty()
                && tx.query_row(
                    // `instr` first: only the rare left-over rows have their details parsed.
                    "SELECT EXISTS (SELECT 1 FROM ledger, json_each(ledger.details, '$.left_over_message_ids') AS ids
                                    WHERE ledger.session_id = ?1 AND ledger.kind = 'model'
                                      AND instr(ledger.details, 'left_over_message_ids') > 0
                                      AND ids.value = ?2)",
                    params![target.session_id, spend.message_id],
                    |r| r.get(0),
                )?;
            ledger::charge_model_in(
                tx,
                target,
                event.ts_ms,
                total,
                if charged_left_over {
                    None
                } else {
                    spend.usage.as_ref()
                },
                Some(serde_json::json!({
                    "message_id": crate::render::one_line(&spend.message_id, 256),
                    "model": crate::render::one_line(&spend.model, 128),
                    "subagent": spend.subagent,
                    "priced": spend.priced,
                    "cost_usd": spend.cost_usd,
                })),
            )?;
            tx.execute(
                "UPDATE tasks SET cost_usd = (SELECT coalesce(sum(cost_usd), 0) FROM sessions WHERE task_id = ?1),
                                  updated_at_ms = ?2 WHERE id = ?1",
                params![target.task_id, now_ms()],
            )?;
            Ok(None)
        }
        Some(Kind::ClaudeExited(exited)) if exited.request_in_flight => {
            // Claude Code died with a model request unanswered in its transcript:
            // if the API answered it, that spend is in no record. A $0 row says
            // so, counted by every view as spend unknown (`Spend`).
            ledger::note_unknown_request_in(tx, target, event.ts_ms)?;
            Ok(None)
        }
        Some(Kind::StatusChanged(change)) => {
            tx.execute(
                "UPDATE sessions SET status = ?2 WHERE id = ?1 AND status != 'finished'",
                params![target.session_id, session_status_name(change.status)],
            )?;
            Ok(None)
        }
        Some(Kind::SessionFinished(finished)) => {
            // A late event from an earlier attempt (the task was retried)
            // finishes its own session, never the task's current one.
            // Likewise a container replaced by a resume or rollback of the
            // same session: only the task's current container drives it.
            let (current_session, current_container): (Option<String>, Option<String>) = tx
                .query_row(
                    "SELECT session_id, container_id FROM tasks WHERE id = ?1",
                    [&target.task_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
            let is_current = current_session.as_deref() == Some(target.session_id.as_str())
                && current_container
                    .as_deref()
                    .is_none_or(|c| c == target.container_id);
            let outcome =
                SessionOutcome::try_from(finished.outcome).unwrap_or(SessionOutcome::Unspecified);
            let mut status = task_state::status_for_outcome(outcome);
            ledger::charge_model_in(
                tx,
                target,
                event.ts_ms,
                finished.session_cost_usd,
                None,
                None,
            )?;
            // The budget watchdog stopped this session: its CANCELLED end
            // (from the watchdog's Stop) is a budget failure (E300), as the
            // watchdog recorded before it stopped the session.
            let budget_stop = if is_current {
                ledger::budget_stop_in(tx, &target.task_id)?
            } else {
                None
            };
            if budget_stop.is_some() && status != TaskStatus::Completed {
                status = TaskStatus::Failed;
            }
            let now = now_ms();
            tx.execute(
                "UPDATE sessions SET status = 'finished', outcome = ?2, cost_usd = max(cost_usd, ?3), finished_at_ms = ?4
                 WHERE id = ?1",
                params![
                    target.session_id,
                    crate::render::outcome_name(finished.outcome),
                    finished.session_cost_usd,
                    now
                ],
            )?;
            let error_code = match status {
                TaskStatus::Completed => None,
                _ if budget_stop.is_some() => Some(error_codes::BUDGET_EXCEEDED.code.to_string()),
                _ => Some(
                    non_empty(&finished.error_code)
                        .map(str::to_string)
                        .unwrap_or_else(|| {
                            task_state::default_error_code(status)
                                .unwrap_or_default()
                                .to_string()
                        }),
                ),
            };
            let error_message = error_code.as_ref().map(|code| {
                budget_stop
                    .clone()
                    .filter(|_| status == TaskStatus::Failed)
                    .or_else(|| non_empty(&finished.error_message).map(str::to_string))
                    .unwrap_or_else(|| {
                        crate::error_codes::lookup(code)
                            .map(|c| c.what.trim_end_matches('.').to_lowercase())
                            .unwrap_or_else(|| {
                                format!(
                                    "the session {}",
                                    crate::render::outcome_name(finished.outcome)
                                )
                            })
                    })
            });
            let total_cost: f64 = tx.query_row(
                "SELECT coalesce(sum(cost_usd), 0) FROM sessions WHERE task_id = ?1",
                [&target.task_id],
                |r| r.get(0),
            )?;
            let update = TaskUpdate {
                error_code,
                error_message,
                result: non_empty(&finished.result).map(str::to_string),
                cost_usd: Some(total_cost),
            };
            if !is_current {
                tracing::info!(task_id = %target.task_id, session_id = %target.session_id, "a session of an earlier attempt finished");
                return Ok(None);
            }
            match transition_task_in(tx, &target.task_id, status, &update) {
                Ok(()) => Ok(Some(status)),
                Err(err) => {
                    // The event is stored either way; a task already ended
                    // (e.g. cancelled) keeps the status it has.
                    tracing::warn!(task_id = %target.task_id, "not applying session end: {err:#}");
                    Ok(None)
                }
            }
        }
        _ => Ok(None),
    }
}

fn non_empty(s: &str) -> Option<&str> {
    if s.is_empty() { None } else { Some(s) }
}

/// snake_case name of a session status, as stored.
pub fn session_status_name(status: i32) -> &'static str {
    match SessionStatus::try_from(status).unwrap_or(SessionStatus::Unspecified) {
        SessionStatus::Unspecified => "unknown",
        SessionStatus::Starting => "starting",
        SessionStatus::Busy => "busy",
        SessionStatus::Idle => "idle",
        SessionStatus::NeedsInput => "needs_input",
        SessionStatus::Finished => "finished",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parhelia_proto::{AssistantText, SessionFinished, TurnResult};

    fn schema(conn: &Connection) -> Vec<(String, String, Option<String>)> {
        let mut stmt = conn
            .prepare("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    #[test]
    fn fresh_and_every_older_version_migrate_to_latest() {
        let tmp = tempfile::tempdir().unwrap();
        let fresh_path = tmp.path().join("fresh.db");
        let fresh = Db::open(&fresh_path).unwrap();
        let fresh_schema = schema(&fresh.conn());
        let version: u32 = fresh
            .conn()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, LATEST_VERSION);
        let mode: String = fresh
            .conn()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");

        for old in 0..=LATEST_VERSION {
            let path = tmp.path().join(format!("v{old}.db"));
            {
                let mut conn = Connection::open(&path).unwrap();
                assert_eq!(migrate_to(&mut conn, old).unwrap(), old);
            }
            let db = Db::open(&path).unwrap();
            let version: u32 = db
                .conn()
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .unwrap();
            assert_eq!(version, LATEST_VERSION, "from v{old}");
            assert_eq!(schema(&db.conn()), fresh_schema, "from v{old}");
            drop(db);
            // Opening again is a no-op.
            Db::open(&path).unwrap();
        }
    }

    /// Version 11 makes event ids AUTOINCREMENT: rows of version 10 keep their ids, and
    /// once the newest events are deleted (`task delete`) the next ones still get ids
    /// above every id a follower may have seen — before, they took the deleted ids and
    /// a follower resuming after its cursor never showed them.
    #[test]
    fn event_ids_are_never_reused_after_a_delete() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("v10.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            migrate_to(&mut conn, 10).unwrap();
            conn.execute_batch(
                "INSERT INTO tasks (id, prompt, task_type, backend, status, created_at_ms, updated_at_ms)
                     VALUES ('task-1', 'p', 'generic', 'local', 'running', 1, 1);
                 INSERT INTO sessions (id, task_id, claude_session_id, mode, secret, status, workspace_dir,
                                       volume_dir, created_at_ms)
                     VALUES ('sess-1', 'task-1', 'c', 'headless', 's', 'running', '/w', '/v', 1);
                 INSERT INTO containers (id, session_id, task_id, backend, state, created_at_ms, state_changed_at_ms)
                     VALUES ('ctr-1', 'sess-1', 'task-1', 'local', 'running', 1, 1);
                 INSERT INTO events (id, container_id, session_id, task_id, seq, ts_ms, type, level, payload)
                     VALUES (5, 'ctr-1', 'sess-1', 'task-1', 1, 10, 'session_started', 'info', '{}'),
                            (8, 'ctr-1', 'sess-1', 'task-1', 2, 11, 'assistant_text', 'info', '{}');
                 INSERT INTO coordinator_events (id, ts_ms, type, level, task_id, message)
                     VALUES (3, 10, 'task_created', 'info', 'task-1', 'created'),
                            (4, 11, 'task_dispatched', 'info', 'task-1', 'dispatched');",
            )
            .unwrap();
        }
        let db = Db::open(&path).unwrap();
        let cursor = db.event_cursor().unwrap();
        assert_eq!((cursor.agent, cursor.coordinator), (8, 4), "ids kept");
        let conn = db.conn();
        conn.execute_batch(
            "DELETE FROM events WHERE id = 8; DELETE FROM coordinator_events WHERE id = 4;
             INSERT INTO events (container_id, session_id, task_id, seq, ts_ms, type, level, payload)
                 VALUES ('ctr-1', 'sess-1', 'task-1', 3, 12, 'turn_result', 'info', '{}');
             INSERT INTO coordinator_events (ts_ms, type, level, task_id, message)
                 VALUES (12, 'task_cancelled', 'info', 'task-1', 'cancelled');",
        )
        .unwrap();
        let agent: i64 = conn
            .query_row("SELECT id FROM events WHERE seq = 3", [], |r| r.get(0))
            .unwrap();
        let coordinator: i64 = conn
            .query_row(
                "SELECT id FROM coordinator_events WHERE type = 'task_cancelled'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(agent > cursor.agent, "{agent}");
        assert!(coordinator > cursor.coordinator, "{coordinator}");
    }

    /// Version 7 rebuilds the ledger to admit `storage` rows: every row of
    /// version 6 is kept with its id, and the CHECK still refuses unknown kinds.
    #[test]
    fn version_6_ledger_survives_the_storage_migration() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("v6.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            migrate_to(&mut conn, 6).unwrap();
            conn.execute_batch(
                "INSERT INTO ledger (id, ts_ms, kind, task_id, session_id, amount_usd, seconds, input_tokens, details)
                 VALUES (7, 10, 'compute', 'task-1', 'sess-1', 0.25, 5, 0, '{}'),
                        (9, 20, 'model', 'task-1', 'sess-1', 0.5, 0, 470, '{\"x\":1}');",
            )
            .unwrap();
            assert!(
                conn.execute(
                    "INSERT INTO ledger (ts_ms, kind, task_id, amount_usd) VALUES (1, 'storage', 't', 1)",
                    [],
                )
                .is_err(),
                "version 6 has no storage kind"
            );
        }
        let db = Db::open(&path).unwrap();
        let rows = db.ledger_entries(i64::MIN).unwrap();
        assert_eq!(
            rows.iter()
                .map(|e| (e.id, e.kind.as_str(), e.amount_usd, e.input_tokens))
                .collect::<Vec<_>>(),
            vec![(7, "compute", 0.25, 0), (9, "model", 0.5, 470)]
        );
        let conn = db.conn();
        conn.execute(
            "INSERT INTO ledger (ts_ms, kind, task_id, amount_usd) VALUES (30, 'storage', 'task-1', 0.1)",
            [],
        )
        .unwrap();
        assert!(
            conn.execute(
                "INSERT INTO ledger (ts_ms, kind, task_id, amount_usd) VALUES (30, 'gift', 'task-1', 0.1)",
                [],
            )
            .is_err()
        );
        drop(conn);
        let spend = db.spend(SpendScope::Task("task-1")).unwrap();
        assert!((spend.cost_usd - 0.85).abs() < 1e-12);
        assert!((spend.storage_usd - 0.1).abs() < 1e-12);
    }

    /// Data written by version 1 reads in version 2: a launching container
    /// is starting, the task's attempt counts its session, and the task's
    /// events and status are untouched.
    #[test]
    fn version_1_data_survives_the_control_plane_migration() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("v1.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            migrate_to(&mut conn, 1).unwrap();
            conn.execute_batch(
                "INSERT INTO tasks (id, prompt, task_type, backend, status, session_id, container_id,
                                    created_at_ms, started_at_ms, updated_at_ms)
                 VALUES ('task-00000001', 'p', 'generic', 'local', 'running', 'sess-00000001',
                         'ctr-00000001', 1, 2, 2);
                 INSERT INTO sessions (id, task_id, claude_session_id, mode, secret, status,
                                       workspace_dir, volume_dir, created_at_ms)
                 VALUES ('sess-00000001', 'task-00000001', 'uuid', 'headless', 's3cret', 'busy',
                         '/w', '/v', 1);
                 INSERT INTO containers (id, session_id, task_id, backend, state, created_at_ms)
                 VALUES ('ctr-00000001', 'sess-00000001', 'task-00000001', 'local', 'launching', 1);
                 INSERT INTO events (container_id, session_id, task_id, seq, ts_ms, type, level, payload)
                 VALUES ('ctr-00000001', 'sess-00000001', 'task-00000001', 1, 5, 'assistant_text',
                         'info', '{\"seq\":1,\"ts_ms\":5,\"kind\":{\"assistant_text\":{\"message_id\":\"m\",\"text\":\"hi\"}}}');",
            )
            .unwrap();
        }
        let db = Db::open(&path).unwrap();
        let container = db.get_container("ctr-00000001").unwrap().unwrap();
        assert_eq!(container.state, ContainerState::Starting);
        assert_eq!(container.state_changed_at_ms, 1);
        let task = db.get_task("task-00000001").unwrap().unwrap();
        assert_eq!((task.status, task.attempt), (TaskStatus::Running, 1));
        assert_eq!(task.mode, "headless");
        assert_eq!(db.max_seq("ctr-00000001").unwrap(), 1);
        assert_eq!(db.containers_to_follow().unwrap().len(), 1);
        assert_eq!(
            db.session_secret("sess-00000001")
                .unwrap()
                .unwrap()
                .expose(),
            "s3cret"
        );
        assert_eq!(db.integrity_check().unwrap(), "ok");
    }

    #[test]
    fn newer_database_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("future.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", LATEST_VERSION + 1)
                .unwrap();
        }
        let err = Db::open(&path).err().unwrap();
        assert_eq!(crate::error::find_coded(&err).unwrap().code.code, "E507");
    }

    pub(crate) fn launch(db: &Db, n: u32) -> ContainerRef {
        let ids = ContainerRef {
            task_id: format!("task-0000000{n}"),
            session_id: format!("sess-0000000{n}"),
            container_id: format!("ctr-0000000{n}"),
        };
        db.insert_launch(&NewLaunch {
            task_id: ids.task_id.clone(),
            session_id: ids.session_id.clone(),
            container_id: ids.container_id.clone(),
            claude_session_id: "uuid".into(),
            prompt: "p".into(),
            task_type: "generic".into(),
            backend: "local".into(),
            workspace: None,
            model: None,
            max_turns: None,
            mode: "headless".into(),
            secret: SessionSecret::from_stored("s3cret".into()),
            workspace_dir: "/w".into(),
            volume_dir: "/v".into(),
        })
        .unwrap();
        ids
    }

    fn text_event(seq: u64) -> Event {
        Event {
            seq,
            ts_ms: seq as i64,
            kind: Some(Kind::AssistantText(AssistantText {
                message_id: "m".into(),
                text: format!("line {seq}"),
                ..Default::default()
            })),
        }
    }

    /// Heartbeats do not accumulate forever: a container's newest
    /// `HEARTBEAT_KEEP_WHOLE` stay whole, older ones thin to one per window, and
    /// the latest (which health and compute charging read) is always kept.
    #[test]
    fn heartbeats_are_thinned_and_the_latest_is_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let db = Db::open(&tmp.path().join("p.db")).unwrap();
        let target = launch(&db, 1);
        let other = launch(&db, 2);
        // Three hours at one heartbeat every 5 s.
        let (total, every_ms): (i64, i64) = (3 * 3600 / 5, 5000);
        let start = 1_000_000_000_i64;
        for i in 0..total {
            let heartbeat = Heartbeat {
                ts_ms: start + i * every_ms,
                ..Heartbeat::default()
            };
            db.record_heartbeat(&target.container_id, &heartbeat)
                .unwrap();
        }
        db.record_heartbeat(&other.container_id, &Heartbeat::default())
            .unwrap();
        let kept = db.heartbeat_count(&target.container_id).unwrap() as i64;
        let windows = total * every_ms / HEARTBEAT_THINNED_MS + 1;
        // Pruning runs every HEARTBEAT_PRUNE_EVERY stores, so at most that many
        // newer rows wait for the next pass.
        assert!(
            kept <= HEARTBEAT_KEEP_WHOLE + windows + HEARTBEAT_PRUNE_EVERY,
            "{kept} heartbeats kept of {total}"
        );
        assert!(kept >= HEARTBEAT_KEEP_WHOLE, "{kept}");
        assert_eq!(
            db.last_heartbeat_ts(&target.container_id).unwrap(),
            Some(start + (total - 1) * every_ms)
        );
        let older: Vec<i64> = db
            .conn()
            .prepare(
                "SELECT ts_ms FROM heartbeats WHERE container_id = ?1
                 ORDER BY ts_ms DESC LIMIT -1 OFFSET ?2",
            )
            .unwrap()
            .query_map(
                params![
                    target.container_id,
                    HEARTBEAT_KEEP_WHOLE + HEARTBEAT_PRUNE_EVERY
                ],
                |r| r.get(0),
            )
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(!older.is_empty());
        let mut seen = std::collections::BTreeSet::new();
        for ts in &older {
            assert!(
                seen.insert(ts / HEARTBEAT_THINNED_MS),
                "two old heartbeats in one window: {ts}"
            );
        }
        // Another container's heartbeats are its own.
        assert_eq!(db.heartbeat_count(&other.container_id).unwrap(), 1);
    }

    #[test]
    fn events_are_deduplicated_by_container_and_seq() {
        let tmp = tempfile::tempdir().unwrap();
        let db = Db::open(&tmp.path().join("p.db")).unwrap();
        let target = launch(&db, 1);
        for seq in [1, 2, 3, 2, 3, 4, 1, 5] {
            db.record_event(&target, &text_event(seq)).unwrap();
        }
        assert!(!db.record_event(&target, &text_event(5)).unwrap().inserted);
        assert_eq!(
            db.container_seqs(&target.container_id).unwrap(),
            vec![1, 2, 3, 4, 5]
        );
        assert_eq!(db.max_seq(&target.container_id).unwrap(), 5);
        let stored = db.task_events_after(&target.task_id, 0, 100).unwrap();
        assert_eq!(stored.len(), 5);
        assert_eq!(stored[3].event, text_event(4));
        let later = db
            .task_events_after(&target.task_id, stored[2].rowid, 100)
            .unwrap();
        assert_eq!(later.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![4, 5]);
        let (ty, level): (String, String) = db
            .conn()
            .query_row("SELECT type, level FROM events WHERE seq = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((ty.as_str(), level.as_str()), ("assistant_text", "info"));
    }

    /// The ledger records the growth of the session's reported cost (never
    /// the sum of totals), once per event; a session the watchdog stopped
    /// ends `failed` with E300 although the agent reports CANCELLED.
    #[test]
    fn model_charges_are_deltas_and_a_budget_stop_fails_the_task() {
        let tmp = tempfile::tempdir().unwrap();
        let db = Db::open(&tmp.path().join("p.db")).unwrap();
        let target = launch(&db, 3);
        db.transition_task(&target.task_id, TaskStatus::Running, &TaskUpdate::default())
            .unwrap();
        let turn = |seq: u64, cost: f64| Event {
            seq,
            ts_ms: seq as i64,
            kind: Some(Kind::TurnResult(TurnResult {
                session_cost_usd: cost,
                claude_total_cost_usd: cost,
                usage: Some(parhelia_proto::Usage {
                    input_tokens: 10,
                    output_tokens: 2,
                    ..Default::default()
                }),
                ..Default::default()
            })),
        };
        db.record_event(&target, &turn(1, 0.25)).unwrap();
        db.record_event(&target, &turn(2, 0.75)).unwrap();
        db.record_event(&target, &turn(2, 0.75)).unwrap(); // replayed
        assert_eq!(db.session_model_usd(&target.session_id).unwrap(), 0.75);
        assert!(
            db.request_budget_stop(&target.task_id, "over budget")
                .unwrap()
        );
        assert!(
            !db.request_budget_stop(&target.task_id, "again").unwrap(),
            "recorded once"
        );
        let finished = Event {
            seq: 3,
            ts_ms: 3,
            kind: Some(Kind::SessionFinished(SessionFinished {
                outcome: SessionOutcome::Cancelled as i32,
                error_code: "E601".into(),
                error_message: "stopped".into(),
                result: String::new(),
                session_cost_usd: 0.75,
                ..Default::default()
            })),
        };
        let recorded = db.record_event(&target, &finished).unwrap();
        assert_eq!(recorded.task_finished, Some(TaskStatus::Failed));
        let task = db.get_task(&target.task_id).unwrap().unwrap();
        assert_eq!(task.error_code.as_deref(), Some("E300"));
        assert_eq!(task.error_message.as_deref(), Some("over budget"));
        let entries = db.ledger_entries(i64::MIN).unwrap();
        assert_eq!(entries.len(), 2, "{entries:?}");
        assert_eq!(db.task_spent_usd(&target.task_id).unwrap(), 0.75);
        // Tokens come from `ModelSpend` only: a result's usage is not counted again.
        assert_eq!(entries.iter().map(|e| e.input_tokens).sum::<u64>(), 0);
    }

    /// A response the reconciler charged from a dead agent's transcript (with its
    /// tokens) adds no tokens again when a later agent journals it; money follows the
    /// session total either way.
    #[test]
    fn a_response_charged_as_left_over_spend_adds_no_tokens_when_journaled_later() {
        let tmp = tempfile::tempdir().unwrap();
        let db = Db::open(&tmp.path().join("p.db")).unwrap();
        let target = launch(&db, 3);
        db.transition_task(&target.task_id, TaskStatus::Running, &TaskUpdate::default())
            .unwrap();
        let usage = |input: u64| parhelia_proto::Usage {
            input_tokens: input,
            output_tokens: 10,
            ..Default::default()
        };
        db.charge_model_with(
            &target,
            1,
            0.25,
            Some(&usage(1000)),
            Some(serde_json::json!({"source": "left_over_processes", "left_over_message_ids": ["m1"]})),
        )
        .unwrap();
        let spend = |seq: u64, id: &str, total: f64| Event {
            seq,
            ts_ms: seq as i64,
            kind: Some(Kind::ModelSpend(parhelia_proto::ModelSpend {
                model: "claude-opus-5-5".into(),
                message_id: id.into(),
                usage: Some(usage(1000)),
                cost_usd: 0.25,
                session_cost_usd: total,
                priced: true,
                ..Default::default()
            })),
        };
        db.record_event(&target, &spend(1, "m1", 0.25)).unwrap();
        db.record_event(&target, &spend(2, "m2", 0.5)).unwrap();
        let (usd, input): (f64, i64) = db
            .conn()
            .query_row(
                "SELECT sum(amount_usd), sum(input_tokens) FROM ledger WHERE session_id = ?1 AND kind = 'model'",
                [&target.session_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert!((usd - 0.5).abs() < 1e-12, "{usd}");
        assert_eq!(input, 2000, "m1's tokens once, m2's once");
    }

    /// Issue 13: Claude Code dying with a request in flight is spend unknown,
    /// counted once per container however often the journal is replayed, and
    /// never a dollar figure.
    #[test]
    fn a_request_in_flight_at_claude_codes_death_is_spend_unknown_once() {
        let tmp = tempfile::tempdir().unwrap();
        let db = Db::open(&tmp.path().join("p.db")).unwrap();
        let target = launch(&db, 4);
        db.transition_task(&target.task_id, TaskStatus::Running, &TaskUpdate::default())
            .unwrap();
        let exited = |seq: u64, in_flight: bool| Event {
            seq,
            ts_ms: seq as i64,
            kind: Some(Kind::ClaudeExited(parhelia_proto::ClaudeExited {
                exit_code: 137,
                had_result: false,
                request_in_flight: in_flight,
            })),
        };
        db.record_event(&target, &exited(1, false)).unwrap();
        let spend = db.spend(SpendScope::Task(&target.task_id)).unwrap();
        assert_eq!(spend.unknown_model_requests, 0);
        db.record_event(&target, &exited(2, true)).unwrap();
        db.record_event(&target, &exited(2, true)).unwrap(); // replayed
        db.record_event(&target, &exited(3, true)).unwrap(); // a second report
        let spend = db.spend(SpendScope::Task(&target.task_id)).unwrap();
        assert_eq!(spend.unknown_model_requests, 1);
        assert_eq!(spend.cost_usd, 0.0);
        let view = crate::views::cost_breakdown(&spend);
        assert!(view.contains("plus unknown"), "{view}");
        // `budget history` folds the same rows the same way.
        let mut folded = Spend::default();
        for e in db.ledger_entries(i64::MIN).unwrap() {
            folded.add_entry(&e);
        }
        assert_eq!(folded, spend);
    }

    /// Issue 13: each `ModelSpend` charges the growth of the session total and its
    /// token increment at once (before any result); a result after it adds no money and
    /// no tokens; a replayed event charges nothing; hostile figures are bounded.
    #[test]
    fn model_spend_charges_as_it_happens_and_carries_the_tokens() {
        let tmp = tempfile::tempdir().unwrap();
        let db = Db::open(&tmp.path().join("p.db")).unwrap();
        let target = launch(&db, 3);
        db.transition_task(&target.task_id, TaskStatus::Running, &TaskUpdate::default())
            .unwrap();
        let spend = |seq: u64, id: &str, input: u64, cost: f64, total: f64| Event {
            seq,
            ts_ms: seq as i64,
            kind: Some(Kind::ModelSpend(parhelia_proto::ModelSpend {
                model: "claude-opus-5-5".into(),
                message_id: id.into(),
                usage: Some(parhelia_proto::Usage {
                    input_tokens: input,
                    output_tokens: 1,
                    ..Default::default()
                }),
                cost_usd: cost,
                session_cost_usd: total,
                priced: true,
                ..Default::default()
            })),
        };
        db.record_event(&target, &spend(1, "m1", 1000, 0.25, 0.25))
            .unwrap();
        assert_eq!(db.session_model_usd(&target.session_id).unwrap(), 0.25);
        let task = db.get_task(&target.task_id).unwrap().unwrap();
        assert_eq!(task.spend.cost_usd, 0.25, "the task's cost moves at once");
        db.record_event(&target, &spend(2, "m2", 500, 0.5, 0.75))
            .unwrap();
        db.record_event(&target, &spend(2, "m2", 500, 0.5, 0.75))
            .unwrap(); // replayed
        let turn = Event {
            seq: 3,
            ts_ms: 3,
            kind: Some(Kind::TurnResult(TurnResult {
                session_cost_usd: 0.75,
                usage: Some(parhelia_proto::Usage {
                    input_tokens: 1500,
                    ..Default::default()
                }),
                ..Default::default()
            })),
        };
        db.record_event(&target, &turn).unwrap();
        // A hostile event: huge tokens, a NaN-free but enormous total.
        db.record_event(&target, &spend(4, "m3", u64::MAX, 1e300, 1e300))
            .unwrap();
        let entries = db.ledger_entries(i64::MIN).unwrap();
        assert_eq!(entries.len(), 3, "{entries:?}");
        assert_eq!(entries[0].input_tokens + entries[1].input_tokens, 1500);
        assert_eq!(entries[2].input_tokens, ledger::MAX_TOKENS_PER_ENTRY);
        assert_eq!(db.session_model_usd(&target.session_id).unwrap(), 1e9);
    }

    #[test]
    fn turn_results_and_session_end_update_the_task() {
        let tmp = tempfile::tempdir().unwrap();
        let db = Db::open(&tmp.path().join("p.db")).unwrap();
        let target = launch(&db, 2);
        db.transition_task(&target.task_id, TaskStatus::Running, &TaskUpdate::default())
            .unwrap();
        let turn = Event {
            seq: 1,
            ts_ms: 1,
            kind: Some(Kind::TurnResult(TurnResult {
                result: "hi".into(),
                session_cost_usd: 0.25,
                ..Default::default()
            })),
        };
        db.record_event(&target, &turn).unwrap();
        let task = db.get_task(&target.task_id).unwrap().unwrap();
        assert_eq!(
            (task.spend.cost_usd, task.result.as_deref()),
            (0.25, Some("hi"))
        );
        let finished = Event {
            seq: 2,
            ts_ms: 2,
            kind: Some(Kind::SessionFinished(SessionFinished {
                outcome: SessionOutcome::Failed as i32,
                error_code: "E505".into(),
                error_message: "the model API failed".into(),
                result: String::new(),
                session_cost_usd: 0.5,
                ..Default::default()
            })),
        };
        let recorded = db.record_event(&target, &finished).unwrap();
        assert_eq!(recorded.task_finished, Some(TaskStatus::Failed));
        let task = db.get_task(&target.task_id).unwrap().unwrap();
        assert_eq!(task.status, TaskStatus::Failed);
        assert_eq!(task.error_code.as_deref(), Some("E505"));
        assert_eq!(task.spend.cost_usd, 0.5);
        assert_eq!(task.result.as_deref(), Some("hi"));
        assert!(task.finished_at_ms.is_some());
        assert!(db.containers_to_follow().unwrap().is_empty());
        // A failed task does not move by itself: a late event cannot finish
        // it again (only a retry or a resume moves it, through their own paths).
        let err = db
            .transition_task(
                &target.task_id,
                TaskStatus::Completed,
                &TaskUpdate::default(),
            )
            .unwrap_err();
        assert_eq!(crate::error::find_coded(&err).unwrap().code.code, "E603");
    }

    /// Issue 12 item 6: a resumed agent that could not read the earlier
    /// journal reports a smaller session total; the session's and the task's
    /// cost never go down, and the ledger keeps what it had.
    #[test]
    fn a_smaller_session_total_never_lowers_the_recorded_cost() {
        let tmp = tempfile::tempdir().unwrap();
        let db = Db::open(&tmp.path().join("p.db")).unwrap();
        let target = launch(&db, 5);
        db.transition_task(&target.task_id, TaskStatus::Running, &TaskUpdate::default())
            .unwrap();
        let turn = |seq: u64, cost: f64| Event {
            seq,
            ts_ms: seq as i64,
            kind: Some(Kind::TurnResult(TurnResult {
                session_cost_usd: cost,
                ..Default::default()
            })),
        };
        db.record_event(&target, &turn(1, 0.0132)).unwrap();
        assert_eq!(db.session_spend_usd(&target.session_id).unwrap(), 0.0132);
        db.record_event(&target, &turn(2, 0.0012)).unwrap();
        let finished = Event {
            seq: 3,
            ts_ms: 3,
            kind: Some(Kind::SessionFinished(SessionFinished {
                outcome: SessionOutcome::Succeeded as i32,
                session_cost_usd: 0.0012,
                ..Default::default()
            })),
        };
        db.record_event(&target, &finished).unwrap();
        let session = db.get_session(&target.session_id).unwrap().unwrap();
        assert_eq!(session.spend.cost_usd, 0.0132);
        let task = db.get_task(&target.task_id).unwrap().unwrap();
        assert_eq!(task.spend.cost_usd, 0.0132);
        assert_eq!(db.session_model_usd(&target.session_id).unwrap(), 0.0132);
        assert_eq!(db.session_spend_usd(&target.session_id).unwrap(), 0.0132);
    }

    /// A recorded gap moves where the stream resumes, is recorded once, and
    /// leaves an E515 coordinator event.
    #[test]
    fn a_journal_gap_is_recorded_once_and_the_stream_resumes_after_it() {
        let tmp = tempfile::tempdir().unwrap();
        let db = Db::open(&tmp.path().join("p.db")).unwrap();
        let target = launch(&db, 6);
        db.record_event(&target, &text_event(1)).unwrap();
        assert_eq!(db.resume_seq(&target.container_id).unwrap(), 1);
        assert!(
            db.record_journal_gap(&target, 2, 7, "agent", "truncated")
                .unwrap()
        );
        assert!(
            !db.record_journal_gap(&target, 2, 7, "agent", "truncated")
                .unwrap()
        );
        assert!(!db.record_journal_gap(&target, 9, 8, "agent", "x").unwrap());
        assert_eq!(db.resume_seq(&target.container_id).unwrap(), 7);
        assert_eq!(db.max_seq(&target.container_id).unwrap(), 1);
        let gaps = db.journal_gaps(&target.container_id).unwrap();
        assert_eq!(gaps, vec![(2, 7, "agent".into(), "truncated".into())]);
        let count: i64 = db
            .conn()
            .query_row(
                "SELECT count(*) FROM coordinator_events WHERE type = 'journal_gap' AND message LIKE 'E515%'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(count, 1);
    }

    #[test]
    fn secret_is_only_reachable_through_session_secret() {
        let tmp = tempfile::tempdir().unwrap();
        let db = Db::open(&tmp.path().join("p.db")).unwrap();
        let target = launch(&db, 3);
        let task = db.get_task(&target.task_id).unwrap().unwrap();
        assert!(!format!("{task:?}").contains("s3cret"));
        assert_eq!(
            db.session_secret(&target.session_id)
                .unwrap()
                .unwrap()
                .expose(),
            "s3cret"
        );
        assert_eq!(db.coordinator_id().unwrap(), db.coordinator_id().unwrap());
    }

    #[test]
    fn loose_database_companions_are_narrowed_on_open() {
        // Files an older build left with mode 0644 (the issue's finding).
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("p.db");
        Db::open(&path).unwrap().coordinator_id().unwrap();
        for file in db_files(&path) {
            if file.exists() {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
            }
        }
        let db = Db::open(&path).unwrap();
        db.coordinator_id().unwrap();
        let [main, wal, shm, _] = db_files(&path);
        for file in [main, wal, shm] {
            let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", file.display());
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(12))]
        /// The watchdog's standing (running totals) equals a full scan of the ledger
        /// after any sequence of charges, checked at any points between them, and again
        /// after the database is closed and opened (the totals are rebuilt from it).
        #[test]
        fn the_budget_standing_equals_a_ledger_scan_and_survives_a_restart(
            charges in proptest::collection::vec((0u32..3, 0u8..3, 0.0f64..2.0, proptest::bool::ANY), 1..40),
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let path = tmp.path().join("p.db");
            let config = crate::config::Config::defaults().budget;
            let now = now_ms();
            let check = |db: &Db| -> std::result::Result<(), proptest::test_runner::TestCaseError> {
                for n in 0..3 {
                    let task = format!("task-0000000{n}");
                    let standing = db.standing(Some(&task), &config, now).unwrap();
                    proptest::prop_assert_eq!(standing.task_spent_usd, db.task_spent_usd(&task).unwrap());
                    proptest::prop_assert_eq!(standing.global_spent_usd, db.spent_since_usd(i64::MIN).unwrap());
                    let day = db.spent_since_usd(crate::budget::day_start_ms(now)).unwrap();
                    proptest::prop_assert!((standing.day_spent_usd - day).abs() <= 1e-9 * (1.0 + day));
                }
                Ok(())
            };
            {
                let db = Db::open(&path).unwrap();
                let targets: Vec<ContainerRef> = (0..3).map(|n| launch(&db, n)).collect();
                let mut session_cost = [0.0f64; 3];
                for (i, &(task, day_back, amount, check_now)) in charges.iter().enumerate() {
                    let target = &targets[task as usize];
                    let ts = now - day_back as i64 * crate::budget::DAY_MS;
                    if i % 2 == 0 {
                        db.charge_compute(target, ts, amount, 1.0, serde_json::json!({})).unwrap();
                    } else {
                        session_cost[task as usize] += amount;
                        db.charge_model(target, ts, session_cost[task as usize], None).unwrap();
                    }
                    if check_now {
                        check(&db)?;
                    }
                }
                check(&db)?;
            }
            let reopened = Db::open(&path).unwrap();
            check(&reopened)?;
        }
    }

    #[tokio::test]
    async fn the_ingest_writer_stores_events_once_and_charges_heartbeats() {
        let tmp = tempfile::tempdir().unwrap();
        let db = Db::open(&tmp.path().join("p.db")).unwrap();
        let target = launch(&db, 1);
        let writer = db.ingest().unwrap();
        let stored = writer
            .events(&target, vec![text_event(1), text_event(2), text_event(2)])
            .await
            .unwrap();
        assert_eq!(
            stored.iter().map(|r| r.inserted).collect::<Vec<_>>(),
            [true, true, false]
        );
        // Many followers at once: each answered once its batch is committed.
        let writes = (3..40).map(|seq| writer.events(&target, vec![text_event(seq)]));
        for answer in futures::future::join_all(writes).await {
            assert!(answer.unwrap()[0].inserted);
        }
        assert_eq!(
            db.container_seqs(&target.container_id).unwrap(),
            (1..40).collect::<Vec<_>>()
        );
        // A heartbeat is stored and charged at the configured rate (none locally by default).
        let config = std::sync::Arc::new(crate::config::Config::defaults());
        let beat = |ts_ms: i64| Heartbeat {
            ts_ms,
            uptime_ms: 1000,
            ..Heartbeat::default()
        };
        let first = writer
            .heartbeat(&target, beat(5_000), config.clone())
            .await
            .unwrap();
        assert_eq!(first.charged_usd, 0.0);
        writer
            .heartbeat(&target, beat(6_000), config)
            .await
            .unwrap();
        assert_eq!(db.heartbeat_count(&target.container_id).unwrap(), 2);
        assert_eq!(
            db.last_heartbeat_ts(&target.container_id).unwrap(),
            Some(6_000)
        );
    }
}
