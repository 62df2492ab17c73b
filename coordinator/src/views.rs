//! What the CLI prints for stored objects: the JSON shapes (`--json`) and the
//! human-readable text. Pure: records (and the current time) in, text out.
//! No view ever includes a session secret (the records do not carry it).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::db::{RunningSession, SessionRecord, TaskRecord};
use crate::ids::rfc3339_ms;
use crate::render::{cost, duration, one_line};

/// `task show --json` / `task list --json` (one object per task).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskView {
    pub id: String,
    pub status: String,
    pub prompt: String,
    pub task_type: String,
    pub backend: String,
    pub workspace: Option<String>,
    pub model: Option<String>,
    pub max_turns: Option<u32>,
    pub session_id: Option<String>,
    pub container_id: Option<String>,
    pub cost_usd: f64,
    pub result: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

impl From<&TaskRecord> for TaskView {
    fn from(t: &TaskRecord) -> Self {
        Self {
            id: t.id.clone(),
            status: t.status.as_str().to_string(),
            prompt: t.prompt.clone(),
            task_type: t.task_type.clone(),
            backend: t.backend.clone(),
            workspace: t.workspace.clone(),
            model: t.model.clone(),
            max_turns: t.max_turns,
            session_id: t.session_id.clone(),
            container_id: t.container_id.clone(),
            cost_usd: t.cost_usd,
            result: t.result.clone(),
            error_code: t.error_code.clone(),
            error_message: t.error_message.clone(),
            created_at: rfc3339_ms(t.created_at_ms),
            started_at: t.started_at_ms.map(rfc3339_ms),
            finished_at: t.finished_at_ms.map(rfc3339_ms),
        }
    }
}

/// `session show --json` / `session list --json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SessionView {
    pub id: String,
    pub task_id: String,
    pub container_id: Option<String>,
    pub claude_session_id: String,
    pub mode: String,
    pub status: String,
    pub outcome: Option<String>,
    pub workspace_dir: String,
    pub volume_dir: String,
    pub cost_usd: f64,
    pub created_at: String,
    pub finished_at: Option<String>,
}

impl From<&SessionRecord> for SessionView {
    fn from(s: &SessionRecord) -> Self {
        Self {
            id: s.id.clone(),
            task_id: s.task_id.clone(),
            container_id: s.container_id.clone(),
            claude_session_id: s.claude_session_id.clone(),
            mode: s.mode.clone(),
            status: s.status.clone(),
            outcome: s.outcome.clone(),
            workspace_dir: s.workspace_dir.clone(),
            volume_dir: s.volume_dir.clone(),
            cost_usd: s.cost_usd,
            created_at: rfc3339_ms(s.created_at_ms),
            finished_at: s.finished_at_ms.map(rfc3339_ms),
        }
    }
}

/// `parhelia status --json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StatusView {
    pub state_dir: String,
    pub coordinator: CoordinatorView,
    pub tasks: BTreeMap<&'static str, u64>,
    pub running_sessions: Vec<RunningSessionView>,
    pub cost_usd: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CoordinatorView {
    pub running: bool,
    pub pid: Option<u32>,
    pub version: Option<String>,
    pub socket: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunningSessionView {
    pub session_id: String,
    pub task_id: String,
    pub container_id: String,
    pub status: String,
    pub cost_usd: f64,
    pub started_at: Option<String>,
    pub last_heartbeat_at: Option<String>,
}

impl From<&RunningSession> for RunningSessionView {
    fn from(s: &RunningSession) -> Self {
        Self {
            session_id: s.session_id.clone(),
            task_id: s.task_id.clone(),
            container_id: s.container_id.clone(),
            status: s.status.clone(),
            cost_usd: s.cost_usd,
            started_at: s.started_at_ms.map(rfc3339_ms),
            last_heartbeat_at: s.last_heartbeat_ms.map(rfc3339_ms),
        }
    }
}

fn field(out: &mut String, name: &str, value: &str) {
    out.push_str(&format!("{name:<11}{value}\n"));
}

/// How long ago, for tables: `12s`, `3m04s`, `2h05m`, `3d`.
pub fn age(now_ms: i64, then_ms: i64) -> String {
    let ms = (now_ms - then_ms).max(0) as u64;
    if ms >= 86_400_000 {
        format!("{}d", ms / 86_400_000)
    } else if ms < 60_000 {
        format!("{}s", ms / 1_000)
    } else {
        duration(ms)
    }
}

/// `task show` without `--json`.
pub fn task_detail(t: &TaskRecord) -> String {
    let mut out = String::new();
    field(&mut out, "task", &t.id);
    field(&mut out, "status", t.status.as_str());
    field(&mut out, "prompt", &one_line(&t.prompt, 200));
    field(&mut out, "type", &t.task_type);
    field(&mut out, "backend", &t.backend);
    field(
        &mut out,
        "workspace",
        t.workspace.as_deref().unwrap_or("(empty)"),
    );
    field(&mut out, "model", t.model.as_deref().unwrap_or("default"));
    if let Some(n) = t.max_turns {
        field(&mut out, "max turns", &n.to_string());
    }
    field(&mut out, "session", t.session_id.as_deref().unwrap_or("-"));
    field(
        &mut out,
        "container",
        t.container_id.as_deref().unwrap_or("-"),
    );
    field(&mut out, "cost", &cost(t.cost_usd));
    field(&mut out, "created", &rfc3339_ms(t.created_at_ms));
    if let Some(started) = t.started_at_ms {
        field(&mut out, "started", &rfc3339_ms(started));
    }
    if let Some(finished) = t.finished_at_ms {
        let took = duration((finished - t.started_at_ms.unwrap_or(t.created_at_ms)).max(0) as u64);
        field(
            &mut out,
            "finished",
            &format!("{} (took {took})", rfc3339_ms(finished)),
        );
    }
    if t.error_code.is_some() || t.error_message.is_some() {
        let code = t
            .error_code
            .as_deref()
            .map(|c| format!("[{c}] "))
            .unwrap_or_default();
        field(
            &mut out,
            "error",
            &format!("{code}{}", t.error_message.as_deref().unwrap_or("")),
        );
    }
    if let Some(result) = t.result.as_deref().filter(|r| !r.trim().is_empty()) {
        out.push_str("result\n");
        for line in result.trim_end().lines() {
            out.push_str(&format!("  {line}\n"));
        }
    }
    out
}

/// `task list` without `--json`.
pub fn task_table(tasks: &[TaskRecord], now_ms: i64) -> String {
    if tasks.is_empty() {
        return "no tasks\n".to_string();
    }
    let mut out = format!(
        "{:<15}{:<13}{:<10}{:<8}{}\n",
        "ID", "STATUS", "COST", "AGE", "PROMPT"
    );
    for t in tasks {
        out.push_str(&format!(
            "{:<15}{:<13}{:<10}{:<8}{}\n",
            t.id,
            t.status.as_str(),
            cost(t.cost_usd),
            age(now_ms, t.created_at_ms),
            one_line(&t.prompt, 60)
        ));
    }
    out
}

/// `session show` without `--json`.
pub fn session_detail(s: &SessionRecord) -> String {
    let mut out = String::new();
    field(&mut out, "session", &s.id);
    field(&mut out, "task", &s.task_id);
    field(
        &mut out,
        "container",
        s.container_id.as_deref().unwrap_or("-"),
    );
    field(&mut out, "status", &s.status);
    if let Some(outcome) = &s.outcome {
        field(&mut out, "outcome", outcome);
    }
    field(&mut out, "mode", &s.mode);
    field(&mut out, "claude id", &s.claude_session_id);
    field(&mut out, "workspace", &s.workspace_dir);
    field(&mut out, "volume", &s.volume_dir);
    field(&mut out, "cost", &cost(s.cost_usd));
    field(&mut out, "created", &rfc3339_ms(s.created_at_ms));
    if let Some(finished) = s.finished_at_ms {
        field(&mut out, "finished", &rfc3339_ms(finished));
    }
    out
}

/// `session list` without `--json`.
pub fn session_table(sessions: &[SessionRecord], now_ms: i64) -> String {
    if sessions.is_empty() {
        return "no sessions\n".to_string();
    }
    let mut out = format!(
        "{:<15}{:<15}{:<13}{:<10}{}\n",
        "ID", "TASK", "STATUS", "COST", "AGE"
    );
    for s in sessions {
        out.push_str(&format!(
            "{:<15}{:<15}{:<13}{:<10}{}\n",
            s.id,
            s.task_id,
            s.status,
            cost(s.cost_usd),
            age(now_ms, s.created_at_ms)
        ));
    }
    out
}

/// `parhelia status` without `--json`.
pub fn status_text(status: &StatusView) -> String {
    let mut out = String::new();
    let coordinator = if status.coordinator.running {
        format!(
            "running (pid {}, version {})",
            status.coordinator.pid.unwrap_or_default(),
            status.coordinator.version.as_deref().unwrap_or("?")
        )
    } else {
        "not running (starts on demand)".to_string()
    };
    field(&mut out, "coordinator", &format!(" {coordinator}"));
    field(&mut out, "state", &status.state_dir);
    let counts: Vec<String> = status
        .tasks
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(s, n)| format!("{n} {s}"))
        .collect();
    field(
        &mut out,
        "tasks",
        &if counts.is_empty() {
            "none".to_string()
        } else {
            counts.join(", ")
        },
    );
    field(
        &mut out,
        "cost",
        &format!("{} total", cost(status.cost_usd)),
    );
    if status.running_sessions.is_empty() {
        field(&mut out, "sessions", "none running");
    } else {
        out.push_str("sessions\n");
        for s in &status.running_sessions {
            let heartbeat = s
                .last_heartbeat_at
                .as_ref()
                .map(|_| "heartbeat ok".to_string())
                .unwrap_or_else(|| "no heartbeat yet".to_string());
            out.push_str(&format!(
                "  {}  {}  {}  {}  {}\n",
                s.session_id,
                s.task_id,
                s.status,
                cost(s.cost_usd),
                heartbeat
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task_state::TaskStatus;

    fn task() -> TaskRecord {
        TaskRecord {
            id: "task-1a2b3c4d".into(),
            prompt: "Add a hello.txt that says hi".into(),
            task_type: "generic".into(),
            backend: "local".into(),
            workspace: Some("/home/u/repo".into()),
            model: None,
            max_turns: None,
            status: TaskStatus::Failed,
            session_id: Some("sess-00000001".into()),
            container_id: Some("ctr-00000002".into()),
            cost_usd: 0.0123,
            result: Some("Done.\nWrote hello.txt".into()),
            error_code: Some("E505".into()),
            error_message: Some("the model API failed".into()),
            created_at_ms: 1_700_000_000_000,
            started_at_ms: Some(1_700_000_001_000),
            finished_at_ms: Some(1_700_000_013_300),
        }
    }

    #[test]
    fn task_json_has_the_promised_fields() {
        let json = serde_json::to_value(TaskView::from(&task())).unwrap();
        for key in [
            "id",
            "status",
            "session_id",
            "backend",
            "workspace",
            "cost_usd",
            "created_at",
            "finished_at",
            "result",
            "error_code",
            "error_message",
        ] {
            assert!(json.get(key).is_some(), "missing {key}");
        }
        assert_eq!(json["status"], "failed");
        assert_eq!(json["created_at"], "2023-11-14T22:13:20.000Z");
        assert_eq!(json["finished_at"], "2023-11-14T22:13:33.300Z");
        let mut pending = task();
        pending.finished_at_ms = None;
        let json = serde_json::to_value(TaskView::from(&pending)).unwrap();
        assert_eq!(json["finished_at"], serde_json::Value::Null);
    }

    #[test]
    fn task_detail_text() {
        assert_eq!(
            task_detail(&task()),
            "task       task-1a2b3c4d
status     failed
prompt     Add a hello.txt that says hi
type       generic
backend    local
workspace  /home/u/repo
model      default
session    sess-00000001
container  ctr-00000002
cost       $0.0123
created    2023-11-14T22:13:20.000Z
started    2023-11-14T22:13:21.000Z
finished   2023-11-14T22:13:33.300Z (took 12.3s)
error      [E505] the model API failed
result
  Done.
  Wrote hello.txt
"
        );
    }

    #[test]
    fn task_table_text() {
        let now = 1_700_000_000_000 + 185_000;
        assert_eq!(
            task_table(&[task()], now),
            "ID             STATUS       COST      AGE     PROMPT
task-1a2b3c4d  failed       $0.0123   3m05s   Add a hello.txt that says hi
"
        );
        assert_eq!(task_table(&[], now), "no tasks\n");
    }

    #[test]
    fn status_text_lists_counts_and_sessions() {
        let mut tasks: BTreeMap<&'static str, u64> = BTreeMap::new();
        tasks.insert("completed", 2);
        tasks.insert("running", 1);
        tasks.insert("failed", 0);
        let status = StatusView {
            state_dir: "/s/.parhelia".into(),
            coordinator: CoordinatorView {
                running: true,
                pid: Some(42),
                version: Some("0.1.0".into()),
                socket: "/s/.parhelia/coordinator.sock".into(),
            },
            tasks,
            running_sessions: vec![RunningSessionView {
                session_id: "sess-00000001".into(),
                task_id: "task-00000002".into(),
                container_id: "ctr-00000003".into(),
                status: "busy".into(),
                cost_usd: 0.5,
                started_at: None,
                last_heartbeat_at: None,
            }],
            cost_usd: 1.25,
        };
        assert_eq!(
            status_text(&status),
            "coordinator running (pid 42, version 0.1.0)
state      /s/.parhelia
tasks      2 completed, 1 running
cost       $1.2500 total
sessions
  sess-00000001  task-00000002  busy  $0.5000  no heartbeat yet
"
        );
    }
}
