//! What a rolled-back database lost of *ended* work, rebuilt from what the
//! local backend's files prove.
//!
//! The generation record beside the database ([`super::generation`]) holds
//! the rows of live containers only. A task that was recorded, ran and ended
//! within the commits a rollback lost (a truncated WAL, an older copy put
//! back) would be gone without a trace, although its container's
//! `containers/<cid>/spec.json` (written by the coordinator, in a directory
//! no sandbox can write) and its journal on the session's volume still say
//! what it was and what happened to it.
//!
//! [`Db::rebuild_from_specs`] re-creates the task, session and container rows
//! such a spec names and the database lacks, with the container *active*:
//! the reconciler's next pass then reads its journal like any container that
//! ended while the coordinator was away (every event stored once, spend
//! charged from `model_spend`, the task's outcome from its current
//! container's `session_finished`), and a journal that does not finish makes
//! the container lost the usual way (salvage, automatic resume). Nothing is
//! guessed: a rebuilt task's status comes from its journal alone.
//!
//! The local backend keeps specs under the state directory; a Modal
//! container's is on its volume, and the coordinator copies those off the
//! volume first (`ModalBackend::copy_specs`, when this state directory has
//! ever used Modal) and rebuilds from the copies the same way.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use rusqlite::{OptionalExtension, params};

use super::Db;
use crate::ids::{self, CONTAINER_PREFIX, SESSION_PREFIX, SessionSecret, TASK_PREFIX, now_ms};
use crate::spec::{LaunchSpec, SessionMode};

/// A spec is a few KiB; bigger files are not specs this coordinator wrote.
const MAX_SPEC_BYTES: u64 = 1024 * 1024;
/// Directory entries looked at, at most (a bound, not an expectation).
const MAX_CONTAINER_DIRS: usize = 100_000;

/// One container's spec, and when it was written (its launch).
#[derive(Debug)]
struct Found {
    spec: LaunchSpec,
    written_ms: i64,
}

/// Every well-formed `containers/<cid>/spec.json` under `containers_dir`.
/// Unreadable, oversized, linked or mismatched files are skipped (logged).
fn read_specs(containers_dir: &Path) -> Vec<Found> {
    let Ok(entries) = std::fs::read_dir(containers_dir) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten().take(MAX_CONTAINER_DIRS) {
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !ids::is_well_formed(CONTAINER_PREFIX, &name) {
            continue;
        }
        let path = containers_dir.join(&name).join("spec.json");
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_file() || meta.len() > MAX_SPEC_BYTES {
            tracing::warn!(path = %path.display(), "not rebuilding from a spec that is not a small regular file");
            continue;
        }
        let spec: LaunchSpec = match std::fs::read(&path)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| Ok(serde_json::from_slice(&bytes)?))
        {
            Ok(spec) => spec,
            Err(err) => {
                tracing::warn!(path = %path.display(), "not rebuilding from an unreadable spec: {err:#}");
                continue;
            }
        };
        if spec.container_id != name
            || !ids::is_well_formed(TASK_PREFIX, &spec.task_id)
            || !ids::is_well_formed(SESSION_PREFIX, &spec.session_id)
        {
            tracing::warn!(path = %path.display(), "not rebuilding from a spec whose ids do not match");
            continue;
        }
        let written_ms = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as i64);
        found.push(Found { spec, written_ms });
    }
    found
}

fn mode_name(mode: SessionMode) -> &'static str {
    match mode {
        SessionMode::Headless => "headless",
        SessionMode::Interactive => "interactive",
    }
}

impl Db {
    /// Re-creates the rows of every container a spec under `containers_dir`
    /// names and the database lacks (and its task and session when those are
    /// missing too), active, so the reconciler settles them from their
    /// journals. A task whose rebuilt container is newer than its current one
    /// runs again until that container's journal says how it ended. Returns
    /// the containers re-created, oldest first.
    pub fn rebuild_from_specs(&self, containers_dir: &Path) -> Result<Vec<String>> {
        self.rebuild_from_specs_on(containers_dir, "local")
    }

    /// [`Self::rebuild_from_specs`] for containers of `backend` (`local`, or
    /// `modal` from specs copied off the volume).
    pub fn rebuild_from_specs_on(
        &self,
        containers_dir: &Path,
        backend: &str,
    ) -> Result<Vec<String>> {
        let mut by_task: BTreeMap<String, Vec<Found>> = BTreeMap::new();
        for found in read_specs(containers_dir) {
            by_task
                .entry(found.spec.task_id.clone())
                .or_default()
                .push(found);
        }
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let now = now_ms();
        let mut rebuilt = Vec::new();
        for (task_id, mut specs) in by_task {
            specs.sort_by(|a, b| {
                (a.written_ms, &a.spec.container_id).cmp(&(b.written_ms, &b.spec.container_id))
            });
            let exists = |table: &str, id: &str| -> rusqlite::Result<bool> {
                Ok(tx
                    .query_row(
                        &format!("SELECT 1 FROM {table} WHERE id = ?1"),
                        [id],
                        |_| Ok(()),
                    )
                    .optional()?
                    .is_some())
            };
            let missing: Vec<&Found> = specs
                .iter()
                .map(|f| Ok((exists("containers", &f.spec.container_id)?, f)))
                .collect::<rusqlite::Result<Vec<_>>>()?
                .into_iter()
                .filter_map(|(known, f)| (!known).then_some(f))
                .collect();
            let Some(newest) = missing.last() else {
                continue;
            };
            let (oldest, newest) = (&specs[0].spec, &newest.spec);
            let newest_ms = missing.last().map_or(now, |f| f.written_ms);
            let task: Option<(Option<i64>,)> = tx
                .query_row(
                    "SELECT (SELECT created_at_ms FROM containers c WHERE c.id = t.container_id)
                     FROM tasks t WHERE t.id = ?1",
                    [&task_id],
                    |r| Ok((r.get(0)?,)),
                )
                .optional()?;
            match task {
                None => {
                    tx.execute(
                        "INSERT INTO tasks (id, prompt, task_type, backend, model, max_turns, status,
                                            mode, session_id, container_id, created_at_ms,
                                            started_at_ms, updated_at_ms)
                         VALUES (?1, ?2, 'generic', ?10, ?3, ?4, 'running', ?5, ?6, ?7, ?8, ?8, ?9)",
                        params![
                            task_id,
                            oldest.prompt,
                            oldest.model,
                            oldest.max_turns,
                            mode_name(oldest.mode),
                            newest.session_id,
                            newest.container_id,
                            specs[0].written_ms,
                            now,
                            backend
                        ],
                    )?;
                }
                Some((current_created,)) => {
                    // The task's current container is older than one it ran
                    // later (a resume the rollback lost): that one decides.
                    if current_created.is_none_or(|c| c <= newest_ms) {
                        tx.execute(
                            "UPDATE tasks SET status = 'running', session_id = ?2, container_id = ?3,
                                              error_code = NULL, error_message = NULL,
                                              finished_at_ms = NULL, updated_at_ms = ?4
                             WHERE id = ?1",
                            params![task_id, newest.session_id, newest.container_id, now],
                        )?;
                    }
                }
            }
            for found in missing {
                let spec = &found.spec;
                if !exists("sessions", &spec.session_id)? {
                    let attempt: u32 = tx.query_row(
                        "SELECT count(*) + 1 FROM sessions WHERE task_id = ?1",
                        [&task_id],
                        |r| r.get(0),
                    )?;
                    // The agent's secret died with it; a fresh one authorizes nothing.
                    tx.execute(
                        "INSERT INTO sessions (id, task_id, claude_session_id, mode, secret, status,
                                               workspace_dir, volume_dir, created_at_ms, attempt)
                         VALUES (?1, ?2, ?3, ?4, ?5, 'starting', ?6, ?7, ?8, ?9)",
                        params![
                            spec.session_id,
                            task_id,
                            spec.claude_session_id,
                            mode_name(spec.mode),
                            SessionSecret::generate().expose(),
                            spec.workspace_dir.to_string_lossy(),
                            spec.volume_dir.to_string_lossy(),
                            found.written_ms,
                            attempt
                        ],
                    )?;
                    tx.execute(
                        "UPDATE tasks SET attempt = max(attempt, ?2) WHERE id = ?1",
                        params![task_id, attempt],
                    )?;
                }
                tx.execute(
                    "INSERT INTO containers (id, session_id, task_id, backend, state,
                                             heartbeat_interval_ms, created_at_ms, started_at_ms,
                                             state_changed_at_ms)
                     VALUES (?1, ?2, ?3, ?7, 'running', ?4, ?5, ?5, ?6)",
                    params![
                        spec.container_id,
                        spec.session_id,
                        task_id,
                        spec.heartbeat_interval_ms as i64,
                        found.written_ms,
                        now,
                        backend
                    ],
                )?;
                rebuilt.push((found.written_ms, spec.container_id.clone()));
            }
        }
        tx.commit()?;
        drop(conn);
        rebuilt.sort();
        Ok(rebuilt.into_iter().map(|(_, id)| id).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_json(container: &str, task: &str) -> String {
        serde_json::json!({
            "version": 1, "session_id": "sess-0000000a", "task_id": task,
            "container_id": container, "prompt": "p", "mode": "headless",
            "claude_session_id": "u", "resume": false, "model": null, "max_turns": null,
            "claude_bin": "/c", "workspace_dir": "/w", "claude_config_dir": "/cc",
            "volume_dir": "/v", "runtime_dir": "/r", "listen_addr": "127.0.0.1:0",
            "heartbeat_interval_ms": 1000, "linger_after_finish_ms": 0, "stop_grace_ms": 0
        })
        .to_string()
    }

    #[test]
    fn only_small_regular_specs_whose_ids_match_their_directory_are_read() {
        let tmp = tempfile::tempdir().unwrap();
        let put = |dir: &str, text: &str| {
            std::fs::create_dir_all(tmp.path().join(dir)).unwrap();
            std::fs::write(tmp.path().join(dir).join("spec.json"), text).unwrap();
        };
        put("ctr-00000001", &spec_json("ctr-00000001", "task-00000001"));
        // Named for another container, an ill-formed task id, not JSON, not a container dir.
        put("ctr-00000002", &spec_json("ctr-00000009", "task-00000001"));
        put("ctr-00000003", &spec_json("ctr-00000003", "task-../../x"));
        put("ctr-00000004", "{not json");
        put("notes", &spec_json("notes", "task-00000001"));
        // A link to a good spec, and an oversized file.
        std::fs::create_dir_all(tmp.path().join("ctr-00000005")).unwrap();
        std::os::unix::fs::symlink(
            tmp.path().join("ctr-00000001/spec.json"),
            tmp.path().join("ctr-00000005/spec.json"),
        )
        .unwrap();
        put("ctr-00000006", &" ".repeat(MAX_SPEC_BYTES as usize + 1));
        let found = read_specs(tmp.path());
        let ids: Vec<&str> = found.iter().map(|f| f.spec.container_id.as_str()).collect();
        assert_eq!(ids, ["ctr-00000001"]);
        assert!(read_specs(&tmp.path().join("absent")).is_empty());
    }

    #[test]
    fn a_spec_the_database_lacks_becomes_an_active_container_of_a_running_task() {
        let tmp = tempfile::tempdir().unwrap();
        let db = Db::open(&tmp.path().join("p.db")).unwrap();
        let dir = tmp.path().join("containers");
        std::fs::create_dir_all(dir.join("ctr-00000001")).unwrap();
        std::fs::write(
            dir.join("ctr-00000001/spec.json"),
            spec_json("ctr-00000001", "task-00000001"),
        )
        .unwrap();
        assert_eq!(db.rebuild_from_specs(&dir).unwrap(), ["ctr-00000001"]);
        let (status, container): (String, String) = db
            .conn()
            .query_row(
                "SELECT t.status, c.state FROM tasks t JOIN containers c ON c.id = t.container_id
                 WHERE t.id = 'task-00000001'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(
            (status.as_str(), container.as_str()),
            ("running", "running")
        );
        // Known rows are never re-created.
        assert!(db.rebuild_from_specs(&dir).unwrap().is_empty());
    }
}
