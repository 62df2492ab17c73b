//! `parhelia doctor`: checks that the installation and the state directory
//! can run sessions, each with a verdict (ok, warn, fail) and what to do.
//! The checks are adapters (they run programs, read files, open the
//! database); [`report_text`] is pure.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::backend::Backend;
use crate::backend::isolation;
use crate::backend::local::LocalBackend;
use crate::binaries::{resolve_agent_bin, resolve_claude_bin};
use crate::config::LoadedConfig;
use crate::db::Db;
use crate::state_dir::StateDir;

pub use crate::checks::{Check, Repair, Verdict};

/// Runs `program args` with a deadline; its first output line.
fn version_of(program: &Path, args: &[&str]) -> Result<String, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("did not answer within 20s".into());
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&output.stdout);
    let first = text.lines().next().unwrap_or("").trim().to_string();
    if output.status.success() {
        Ok(first)
    } else {
        Err(format!(
            "exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Everything doctor looks at.
pub struct DoctorInputs<'a> {
    pub state: &'a StateDir,
    /// The configuration, or why it could not be loaded.
    pub config: Result<&'a LoadedConfig, String>,
    /// Whether a coordinator answers on the socket, and its pid.
    pub coordinator_pid: Option<u32>,
    /// A coordinator answered but refused this caller (E406), and why.
    pub coordinator_refused: Option<String>,
}

/// Runs every check (no repairs).
pub async fn run_checks(inputs: &DoctorInputs<'_>) -> Vec<Check> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let path_var = std::env::var_os("PATH");
    let mut checks = Vec::new();

    checks.push(
        match resolve_claude_bin(
            std::env::var_os(crate::plan::CLAUDE_BIN_ENV).as_deref(),
            path_var.as_deref(),
            &cwd,
        ) {
            Ok(bin) => match version_of(&bin, &["--version"]) {
                Ok(version) if version.is_empty() => {
                    Check::ok("claude", format!("{} (version unknown)", bin.display()))
                }
                Ok(version) => Check::ok("claude", format!("{version} at {}", bin.display())),
                Err(why) => Check::fail(
                    "claude",
                    format!("{} does not run: {why}", bin.display()),
                    "reinstall Claude Code (npm install -g @anthropic-ai/claude-code)",
                ),
            },
            Err(err) => Check::fail("claude", err.message, err.code.recover),
        },
    );

    checks.push(
        match resolve_agent_bin(
            std::env::var_os(crate::plan::AGENT_BIN_ENV)
                .map(PathBuf::from)
                .as_deref(),
            std::env::current_exe().ok().as_deref(),
            path_var.as_deref(),
            &cwd,
        ) {
            Ok(bin) => match version_of(&bin, &["--version"]) {
                Ok(version) => Check::ok("agent", format!("{version} at {}", bin.display())),
                Err(why) => Check::fail(
                    "agent",
                    format!("{} does not run: {why}", bin.display()),
                    "reinstall parhelia (the agent ships next to the parhelia binary)",
                ),
            },
            Err(err) => Check::fail("agent", err.message, err.code.recover),
        },
    );

    checks.push(match version_of(Path::new("tmux"), &["-V"]) {
        Ok(version) => Check::ok("tmux", version),
        Err(why) => Check::fail(
            "tmux",
            format!("tmux does not run: {why}"),
            "install tmux (apt-get install tmux, brew install tmux)",
        ),
    });

    let isolation_setting = inputs
        .config
        .as_ref()
        .map(|c| c.config.local.isolation.clone())
        .unwrap_or_else(|_| "auto".into());
    let works = isolation::bwrap_works();
    checks.push(match (isolation_setting.as_str(), works) {
        ("none", _) => Check::warn(
            "isolation",
            "off ([local] isolation = \"none\"): local sessions are NOT isolated; their commands can read your files, other sessions and the coordinator's token",
            "install bubblewrap and set [local] isolation = \"required\"",
        ),
        (_, true) => Check::ok(
            "isolation",
            "bubblewrap works: sessions see only their workspace, their own processes and the system read-only",
        ),
        ("bwrap" | "required", false) => Check::fail(
            "isolation",
            "bubblewrap is required ([local] isolation = \"required\") but cannot create a sandbox here: nothing will launch",
            "install bubblewrap (apt-get install bubblewrap), or allow unprivileged user namespaces",
        ),
        (_, false) => Check::warn(
            "isolation",
            "bubblewrap cannot create a sandbox here: local sessions are NOT isolated; their commands can read your files, other sessions and the coordinator's token",
            "install bubblewrap (apt-get install bubblewrap), or set [local] isolation = \"required\" to launch nothing unconfined",
        ),
    });

    let root = inputs.state.root();
    checks.push(match std::fs::metadata(root) {
        Err(e) => Check::warn(
            "state dir",
            format!("{} does not exist yet ({e})", root.display()),
            "it is created on first use",
        ),
        Ok(meta) if meta.uid() != nix::unistd::getuid().as_raw() => Check::fail(
            "state dir",
            format!("{} is owned by uid {}", root.display(), meta.uid()),
            "use a state directory you own (--state-dir, PARHELIA_HOME)",
        ),
        Ok(meta) if meta.permissions().mode() & 0o077 != 0 => Check::warn(
            "state dir",
            format!(
                "{} is mode {:o}: others can read session secrets' database",
                root.display(),
                meta.permissions().mode() & 0o777
            ),
            format!("chmod 700 {}", root.display()),
        )
        .with_repair(Repair::RestrictStateDir),
        Ok(_) => Check::ok("state dir", format!("{} (mode 700)", root.display())),
    });

    let db_path = inputs
        .config
        .as_ref()
        .ok()
        .and_then(|c| c.config.orchestrator.db_path.clone())
        .unwrap_or_else(|| inputs.state.db_path());
    let db = if db_path.exists() {
        match Db::open(&db_path) {
            Ok(db) => Some(db),
            Err(err) => {
                checks.push(Check::fail(
                    "database",
                    format!("{}: {err:#}", db_path.display()),
                    "move the file aside and let parhelia create a new one (its history is lost)",
                ));
                None
            }
        }
    } else {
        checks.push(Check::ok(
            "database",
            format!("{} not created yet", db_path.display()),
        ));
        None
    };
    if let Some(db) = &db {
        checks.push(match db.integrity_check() {
            Ok(result) if result == "ok" => Check::ok(
                "database",
                format!(
                    "{} (schema v{}, integrity ok)",
                    db_path.display(),
                    crate::db::LATEST_VERSION
                ),
            ),
            Ok(result) => Check::fail(
                "database",
                format!("integrity check: {result}"),
                "stop the coordinator and restore or move the database aside",
            ),
            Err(err) => Check::fail(
                "database",
                format!("integrity check failed: {err:#}"),
                "stop the coordinator and restore or move the database aside",
            ),
        });
        checks.push(generation_check(db));
    }

    let socket = inputs.state.socket_path();
    checks.push(match (inputs.coordinator_pid, socket.exists()) {
        (Some(pid), _) => Check::ok("coordinator", format!("running (pid {pid})")),
        (None, _) if inputs.coordinator_refused.is_some() => Check::fail(
            "coordinator",
            format!(
                "running, but it refused this caller [E406]: {}",
                inputs.coordinator_refused.as_deref().unwrap_or_default()
            ),
            "run parhelia as the coordinator's user from your own shell, not from inside a session",
        ),
        (None, false) => Check::ok("coordinator", "not running (commands start it on demand)"),
        (None, true) if lock_is_free(inputs.state) => Check::warn(
            "coordinator",
            format!(
                "stale socket {} (no coordinator holds it)",
                socket.display()
            ),
            format!("rm {}", socket.display()),
        )
        .with_repair(Repair::RemoveStaleSocket { path: socket }),
        (None, true) => Check::fail(
            "coordinator",
            "a coordinator holds the lock but does not answer on its socket",
            format!(
                "read {}; stop the process holding {}",
                inputs.state.log_path().display(),
                inputs.state.lock_path().display()
            ),
        ),
    });

    match &inputs.config {
        Ok(config) if config.unknown_keys.is_empty() => {
            checks.push(Check::ok("config", "every key is known"))
        }
        Ok(config) => {
            for unknown in &config.unknown_keys {
                checks.push(Check::warn(
                    "config",
                    unknown.to_string(),
                    "remove or correct the key (docs/formats/config.md lists them)",
                ));
            }
        }
        Err(why) => checks.push(Check::fail(
            "config",
            why.clone(),
            "fix the named key (docs/formats/config.md)",
        )),
    }

    if let Some(db) = &db {
        checks.push(containers_check(db, inputs.state).await);
        checks.push(session_processes_check(db, inputs.state).await);
        let limits = inputs
            .config
            .as_ref()
            .map(|c| c.config.agent.checkpoint.read_limits())
            .unwrap_or_default();
        let (db_path, root) = (db.path().to_path_buf(), root.to_path_buf());
        // Reading every store can take a while: off the async threads.
        let stores = tokio::task::spawn_blocking(move || {
            Db::open(&db_path).map(|db| crate::store_health::doctor_checks(&db, &root, &limits))
        })
        .await;
        match stores {
            Ok(Ok(found)) => checks.extend(found),
            Ok(Err(err)) => checks.push(Check::warn(
                "checkpoints",
                format!("cannot open the database: {err:#}"),
                "see `database`",
            )),
            Err(err) => checks.push(Check::warn(
                "checkpoints",
                format!("the store check failed: {err}"),
                "run `parhelia checkpoint verify --all`",
            )),
        }
    }
    checks
}

/// Containers on record as alive whose agent is gone, and labelled agents
/// with no record.
async fn containers_check(db: &Db, state: &StateDir) -> Check {
    let coordinator_id = match db.coordinator_id() {
        Ok(id) => id,
        Err(err) => return Check::fail("containers", format!("{err:#}"), "see `database`"),
    };
    let launcher = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("parhelia"));
    let backend =
        LocalBackend::new(state.root().to_path_buf(), coordinator_id, launcher).read_only();
    let listed: Vec<String> = match backend.list().await {
        Ok(list) => list.into_iter().map(|c| c.container_id).collect(),
        Err(err) => {
            return Check::warn(
                "containers",
                format!("cannot list agents: {err:#}"),
                "run `parhelia reconciler run --once` later",
            );
        }
    };
    let records = db.list_containers(None, None).unwrap_or_default();
    let gone: Vec<String> = records
        .iter()
        .filter(|c| matches!(c.state.as_str(), "starting" | "running" | "stopping"))
        .filter(|c| !listed.contains(&c.id))
        .map(|c| c.id.clone())
        .collect();
    let unknown: Vec<String> = listed
        .iter()
        .filter(|id| !records.iter().any(|c| &&c.id == id))
        .cloned()
        .collect();
    match (gone.is_empty(), unknown.is_empty()) {
        (true, true) => Check::ok(
            "containers",
            format!("{} agent(s) running, all on record", listed.len()),
        ),
        (false, _) => Check::warn(
            "containers",
            format!(
                "marked running but their agent is gone: {}{}",
                gone.join(", "),
                if unknown.is_empty() {
                    String::new()
                } else {
                    format!("; orphans: {}", unknown.join(", "))
                }
            ),
            "run the reconciler: parhelia reconciler run --once",
        )
        .with_repair(Repair::RunReconciler),
        (true, false) => Check::warn(
            "containers",
            format!("orphans (labelled ours, no record): {}", unknown.join(", ")),
            "parhelia cleanup --terminate",
        ),
    }
}

/// Processes of local sessions whose agent is gone (a killed agent's tmux
/// server, Claude Code, its tools): still writing workspaces and spending.
async fn session_processes_check(db: &Db, state: &StateDir) -> Check {
    let coordinator_id = match db.coordinator_id() {
        Ok(id) => id,
        Err(err) => return Check::fail("session processes", format!("{err:#}"), "see `database`"),
    };
    let launcher = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("parhelia"));
    let backend =
        LocalBackend::new(state.root().to_path_buf(), coordinator_id, launcher).read_only();
    match backend.leftover_units().await {
        Ok(found) if found.is_empty() => Check::ok(
            "session processes",
            "none outlived its agent",
        ),
        Ok(found) => Check::warn(
            "session processes",
            format!(
                "still running after their agent died: {}",
                found
                    .iter()
                    .map(|u| format!(
                        "{} ({} process(es): {}{})",
                        u.container_id,
                        u.pids.len(),
                        u.pids
                            .iter()
                            .take(8)
                            .map(u32::to_string)
                            .collect::<Vec<_>>()
                            .join(" "),
                        if u.recorded { "" } else { "; no record" }
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "run the reconciler (it checkpoints the workspace, then ends them): parhelia reconciler run --once, or parhelia cleanup",
        )
        .with_repair(Repair::RunReconciler),
        Err(err) => Check::warn(
            "session processes",
            format!("cannot look for them: {err:#}"),
            "run `parhelia doctor` again",
        ),
    }
}

/// True when no process holds `coordinator.lock`.
fn lock_is_free(state: &StateDir) -> bool {
    let Ok(file) = std::fs::OpenOptions::new()
        .write(true)
        .open(state.lock_path())
    else {
        return true;
    };
    match file.try_lock() {
        Ok(()) => {
            let _ = file.unlock();
            true
        }
        Err(_) => false,
    }
}

/// The repairs that need no coordinator (chmod, stale socket). Returns the
/// checks with `repaired` set where it worked.
pub fn repair_locally(state: &StateDir, checks: &mut [Check]) {
    for check in checks.iter_mut() {
        let done = match &check.repair {
            Some(Repair::RestrictStateDir) => {
                std::fs::set_permissions(state.root(), std::fs::Permissions::from_mode(0o700))
                    .is_ok()
            }
            Some(Repair::RemoveStaleSocket { path }) => {
                lock_is_free(state) && std::fs::remove_file(path).is_ok()
            }
            _ => false,
        };
        check.repaired |= done;
    }
}

/// The report (pure).
pub fn report_text(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        out.push_str(&format!(
            "{:<5} {:<12} {}\n",
            c.verdict.as_str(),
            c.name,
            c.detail
        ));
        if c.repaired {
            out.push_str(&format!("{:18} fixed\n", ""));
        } else if let Some(fix) = &c.fix {
            out.push_str(&format!("{:18} fix: {fix}\n", ""));
        }
    }
    let failed = checks
        .iter()
        .filter(|c| c.verdict == Verdict::Fail && !c.repaired)
        .count();
    let warned = checks
        .iter()
        .filter(|c| c.verdict == Verdict::Warn && !c.repaired)
        .count();
    out.push_str(&format!(
        "\n{} check(s): {failed} failed, {warned} warning(s)\n",
        checks.len()
    ));
    out
}

/// The database against the generation recorded beside it (E514): a
/// rollback the integrity check cannot see, or one the coordinator already
/// reported and rebuilt from.
fn generation_check(db: &crate::db::Db) -> Check {
    use crate::db::generation::GenerationCheck;
    let code = crate::error_codes::DATABASE_ROLLED_BACK.code;
    match db.check_generation() {
        GenerationCheck::Behind { database, record } => Check::fail(
            "database generation",
            format!(
                "{code}: the database is at generation {database} but had reached {} (its WAL was truncated or lost, or an older copy was restored)",
                record.generation
            ),
            "start the coordinator (`parhelia reconciler run --once` starts it, as any command that needs it does): it reports the rollback and re-creates the live containers' rows from the record; then `parhelia events list --type database_rolled_back` says what was rebuilt",
        ),
        GenerationCheck::Unreadable { reason } => Check::warn(
            "database generation",
            format!("the generation record beside the database is damaged: {reason}"),
            "start the coordinator: it writes a new record (a rollback before now cannot be detected)",
        ),
        GenerationCheck::NoRecord => Check::ok(
            "database generation",
            "no generation record yet (written by the coordinator)",
        ),
        GenerationCheck::InStep { generation } => match db.last_rollback_report() {
            Ok(Some((ts_ms, message))) => Check::warn(
                "database generation",
                format!(
                    "generation {generation}; the coordinator found the database rolled back (at {ts_ms} ms since the epoch): {message}"
                ),
                "see `parhelia events list --type database_rolled_back`; tasks that ended after the lost commits may show an older state",
            ),
            _ => Check::ok(
                "database generation",
                format!("generation {generation}, in step"),
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lists_verdicts_fixes_and_a_summary() {
        let mut stale = Check::warn("coordinator", "stale socket /s", "rm /s")
            .with_repair(Repair::RemoveStaleSocket { path: "/s".into() });
        stale.repaired = true;
        let checks = [
            Check::ok("tmux", "tmux 3.3a"),
            Check::fail("claude", "claude code not found", "install it"),
            stale,
        ];
        assert_eq!(
            report_text(&checks),
            "ok    tmux         tmux 3.3a
fail  claude       claude code not found
                   fix: install it
warn  coordinator  stale socket /s
                   fixed

3 check(s): 1 failed, 0 warning(s)
"
        );
    }
}
