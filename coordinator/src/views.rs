//! What the CLI prints for stored objects: the JSON shapes (`--json`) and the
//! human-readable text. Pure: records (and the current time) in, text out.
//! No view ever includes a session secret (the records do not carry it).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::container_state::{
    ContainerState, Health, HealthThresholds, HeartbeatAge, shown_health,
};
use crate::ids::rfc3339_ms;
use crate::records::{
    ContainerRecord, HeartbeatRecord, OrphanRecord, RunningSession, SessionRecord, Spend,
    TaskRecord,
};
use crate::render::{cost, duration, one_line};
use crate::table::{self, Cell, Look, Table};
use crate::term::{escape_untrusted, escape_untrusted_text};

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
    /// The ledger's figures (`docs/cost.md`): `cost_usd` is the total
    /// (compute + model + storage), then its breakdown and token counts.
    #[serde(flatten)]
    pub spend: Spend,
    pub result: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Sessions started so far (a retry adds one).
    pub attempt: u32,
    /// Pending only: `queued` (waiting for a worker slot) or `held`
    /// (waiting for `task dispatch`).
    pub queue: Option<String>,
    pub auto_resumes: u32,
    /// Its secrets, by name (`--secret`; never a value).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Its Modal region (`--region`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The GPU type its latest launch got (of `--gpu`'s list).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_chosen: Option<String>,
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
            spend: t.spend.clone(),
            result: t.result.clone(),
            error_code: t.error_code.clone(),
            error_message: t.error_message.clone(),
            created_at: rfc3339_ms(t.created_at_ms),
            started_at: t.started_at_ms.map(rfc3339_ms),
            finished_at: t.finished_at_ms.map(rfc3339_ms),
            attempt: t.attempt,
            queue: queue_state(t).map(str::to_string),
            auto_resumes: t.auto_resumes,
            secrets: t.secrets.clone(),
            region: t.region.clone(),
            gpu_chosen: t.gpu_chosen.clone(),
        }
    }
}

/// One line of a `--json` watch or follow (`task watch`, `session logs`,
/// `task create --sync`): an agent event, with its type and level, the line
/// the text output shows for it (`null` for events it does not show) and
/// the event itself (journal form).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EventLine<'a> {
    #[serde(rename = "type")]
    pub event_type: &'static str,
    pub level: &'static str,
    pub seq: u64,
    pub time: String,
    pub text: Option<String>,
    pub event: &'a parhelia_proto::Event,
}

impl<'a> EventLine<'a> {
    pub fn new(event: &'a parhelia_proto::Event) -> Self {
        let (event_type, level) = match &event.kind {
            Some(kind) => (
                parhelia_proto::event_type_name(kind),
                parhelia_proto::event_level(kind),
            ),
            None => ("unknown", "info"),
        };
        EventLine {
            event_type,
            level,
            seq: event.seq,
            time: rfc3339_ms(event.ts_ms),
            text: crate::render::render_event(event),
            event,
        }
    }
}

/// The last line of `task watch --json`: the task as it ended.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskEndedLine {
    /// Always `task_ended`.
    #[serde(rename = "type")]
    pub line_type: &'static str,
    pub task: TaskView,
}

impl From<&TaskRecord> for TaskEndedLine {
    fn from(t: &TaskRecord) -> Self {
        TaskEndedLine {
            line_type: "task_ended",
            task: TaskView::from(t),
        }
    }
}

/// `queued`/`held` for pending tasks.
pub fn queue_state(t: &TaskRecord) -> Option<&'static str> {
    (t.status == crate::task_state::TaskStatus::Pending).then(|| shown_status(t).as_str())
}

/// The status `task list` shows (and `--status` accepts): held/queued for pending.
pub fn shown_status(t: &TaskRecord) -> crate::task_state::ShownStatus {
    crate::task_state::ShownStatus::of(t.status, t.dispatch_requested_at_ms.is_some())
}

/// `session show --json` / `session list --json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SessionView {
    pub id: String,
    pub task_id: String,
    pub attempt: u32,
    pub container_id: Option<String>,
    pub claude_session_id: String,
    pub mode: String,
    pub status: String,
    pub outcome: Option<String>,
    /// The latest container's state and health, and when it was last heard from.
    pub container_state: Option<String>,
    pub health: Option<String>,
    pub last_heartbeat_at: Option<String>,
    pub resume_checkpoint_id: Option<String>,
    pub workspace_dir: String,
    pub volume_dir: String,
    /// The ledger's figures (`docs/cost.md`): `cost_usd` is the total
    /// (compute + model + storage), then its breakdown and token counts.
    #[serde(flatten)]
    pub spend: Spend,
    pub created_at: String,
    pub finished_at: Option<String>,
}

impl From<&SessionRecord> for SessionView {
    fn from(s: &SessionRecord) -> Self {
        Self {
            id: s.id.clone(),
            task_id: s.task_id.clone(),
            attempt: s.attempt,
            container_id: s.container_id.clone(),
            claude_session_id: s.claude_session_id.clone(),
            mode: s.mode.clone(),
            status: s.status.clone(),
            outcome: s.outcome.clone(),
            container_state: s.container_state.map(|c| c.to_string()),
            health: s.container_health.map(|h| h.to_string()),
            last_heartbeat_at: s.last_heartbeat_ms.map(rfc3339_ms),
            resume_checkpoint_id: s.resume_checkpoint_id.clone(),
            workspace_dir: s.workspace_dir.clone(),
            volume_dir: s.volume_dir.clone(),
            spend: s.spend.clone(),
            created_at: rfc3339_ms(s.created_at_ms),
            finished_at: s.finished_at_ms.map(rfc3339_ms),
        }
    }
}

/// `container show --json` / `container list --json` (one per container;
/// orphans without a record have `known: false`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ContainerView {
    pub id: String,
    pub known: bool,
    pub state: String,
    pub health: Option<String>,
    pub task_id: Option<String>,
    pub session_id: Option<String>,
    pub backend: String,
    pub pid: Option<u32>,
    pub endpoint: Option<String>,
    pub heartbeat_interval_ms: Option<i64>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub terminated_at: Option<String>,
    pub last_heartbeat_at: Option<String>,
    /// Milliseconds since the last heartbeat (or the start), for live containers.
    pub silence_ms: Option<i64>,
    pub stop_requested_at: Option<String>,
}

impl ContainerView {
    /// `thresholds` and `default_interval_ms` (for a container that recorded no
    /// interval) make the shown health follow the heartbeat's age now, not only the
    /// reconciler's last pass.
    pub fn from_record(
        c: &ContainerRecord,
        now_ms: i64,
        thresholds: &HealthThresholds,
        default_interval_ms: i64,
    ) -> Self {
        let heard = [c.last_heartbeat_ms, c.started_at_ms, Some(c.created_at_ms)]
            .into_iter()
            .flatten()
            .max();
        let health = if c.state.expects_heartbeats() {
            shown_health(
                c.health,
                heard,
                now_ms,
                c.heartbeat_interval_ms.unwrap_or(default_interval_ms),
                thresholds,
            )
        } else {
            c.health
        };
        Self {
            id: c.id.clone(),
            known: true,
            state: c.state.to_string(),
            // Health describes containers that should be alive (and the
            // dead ones that were lost); an ended container has none.
            health: health
                .filter(|_| c.state.expects_heartbeats() || c.state == ContainerState::Lost)
                .map(|h| h.to_string()),
            task_id: Some(c.task_id.clone()),
            session_id: Some(c.session_id.clone()),
            backend: c.backend.clone(),
            pid: c.pid,
            endpoint: c.endpoint.clone(),
            heartbeat_interval_ms: c.heartbeat_interval_ms,
            created_at: rfc3339_ms(c.created_at_ms),
            started_at: c.started_at_ms.map(rfc3339_ms),
            terminated_at: c.terminated_at_ms.map(rfc3339_ms),
            last_heartbeat_at: c.last_heartbeat_ms.map(rfc3339_ms),
            silence_ms: heard
                .filter(|_| c.state.expects_heartbeats())
                .map(|h| now_ms - h),
            stop_requested_at: c.stop_requested_at_ms.map(rfc3339_ms),
        }
    }

    pub fn from_orphan(o: &OrphanRecord) -> Self {
        Self {
            id: o.container_id.clone(),
            known: false,
            state: if o.gone { "terminated" } else { "orphaned" }.into(),
            health: None,
            task_id: None,
            session_id: Some(o.session_id.clone()).filter(|s| !s.is_empty()),
            backend: "local".into(),
            pid: o.pid,
            endpoint: o.endpoint.clone(),
            heartbeat_interval_ms: None,
            created_at: rfc3339_ms(o.first_seen_ms),
            started_at: None,
            terminated_at: None,
            last_heartbeat_at: None,
            silence_ms: None,
            stop_requested_at: o.terminate_requested_at_ms.map(rfc3339_ms),
        }
    }
}

/// `container list` without `--json` (fits 80 columns with ordinary ids).
pub fn container_table(containers: &[ContainerView], now_ms: i64, look: Look) -> String {
    if containers.is_empty() {
        return "no containers\n".to_string();
    }
    let mut t = Table::new(2)
        .whole("ID", 12)
        .whole("STATE", 10)
        .whole("HEALTH", 9)
        .whole("TASK", 13)
        .whole("AGE", 6)
        .whole("HEARD", 0);
    for c in containers {
        let created = crate::ids::parse_rfc3339_ms(&c.created_at).unwrap_or(now_ms);
        t.row(vec![
            c.id.as_str().into(),
            Cell::status(&c.state),
            Cell::status(c.health.as_deref().unwrap_or("-")),
            c.task_id.as_deref().unwrap_or("(orphan)").into(),
            age(now_ms, created).into(),
            c.silence_ms
                .map(|ms| format!("{} ago", age(ms, 0)))
                .unwrap_or_else(|| "-".into())
                .into(),
        ]);
    }
    t.render_as(look)
}

/// `container show` without `--json`.
pub fn container_detail(
    c: &ContainerView,
    heartbeat: Option<&HeartbeatRecord>,
    events: u64,
) -> String {
    let mut out = String::new();
    field(&mut out, "container", &c.id);
    field(
        &mut out,
        "state",
        &if c.known {
            c.state.clone()
        } else {
            format!("{} (no record: an orphan)", c.state)
        },
    );
    field(&mut out, "health", c.health.as_deref().unwrap_or("-"));
    field(&mut out, "task", c.task_id.as_deref().unwrap_or("-"));
    field(&mut out, "session", c.session_id.as_deref().unwrap_or("-"));
    field(&mut out, "backend", &c.backend);
    field(
        &mut out,
        "pid",
        &c.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
    );
    field(&mut out, "endpoint", c.endpoint.as_deref().unwrap_or("-"));
    field(&mut out, "created", &c.created_at);
    if let Some(t) = &c.started_at {
        field(&mut out, "started", t);
    }
    if let Some(t) = &c.stop_requested_at {
        field(&mut out, "stop asked", t);
    }
    if let Some(t) = &c.terminated_at {
        field(&mut out, "ended", t);
    }
    match (heartbeat, &c.last_heartbeat_at) {
        (Some(h), Some(at)) => field(
            &mut out,
            "heartbeat",
            &format!(
                "{at} · cpu {:.0}% · mem {} · disk {} · {}",
                h.cpu_percent,
                bytes(h.memory_bytes),
                bytes(h.workspace_disk_bytes),
                h.status
            ),
        ),
        _ => field(&mut out, "heartbeat", "none yet"),
    }
    if c.known {
        field(&mut out, "events", &events.to_string());
    }
    out
}

/// `12.3 MB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `container health --json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HealthView {
    pub counts: BTreeMap<String, u64>,
    pub containers: Vec<HealthRow>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HealthRow {
    pub container_id: String,
    pub task_id: String,
    pub state: String,
    pub health: String,
    pub silence_ms: i64,
    pub missed_heartbeats: u32,
    pub cpu_percent: Option<f64>,
    pub memory_bytes: Option<u64>,
}

/// `container health` without `--json`.
pub fn health_text(view: &HealthView, look: Look) -> String {
    let mut out = String::new();
    let counts: Vec<String> = Health::ALL
        .iter()
        .filter_map(|h| {
            let n = view.counts.get(h.as_str()).copied().unwrap_or(0);
            (n > 0).then(|| format!("{n} {h}"))
        })
        .collect();
    out.push_str(&format!(
        "health     {}\n",
        if view.containers.is_empty() {
            "no live containers".to_string()
        } else {
            counts.join(", ")
        }
    ));
    if view.containers.is_empty() {
        return out;
    }
    let mut t = Table::new(2)
        .whole("CONTAINER", 12)
        .whole("STATE", 9)
        .whole("HEALTH", 9)
        .whole("HEARD", 8)
        .whole("MISSED", 6)
        .whole("CPU", 5)
        .whole("MEMORY", 0);
    for r in &view.containers {
        t.row(vec![
            r.container_id.as_str().into(),
            Cell::status(&r.state),
            Cell::status(&r.health),
            format!("{} ago", age(r.silence_ms, 0)).into(),
            r.missed_heartbeats.to_string().into(),
            r.cpu_percent
                .map(|c| format!("{c:.0}%"))
                .unwrap_or_else(|| "-".into())
                .into(),
            r.memory_bytes
                .map(bytes)
                .unwrap_or_else(|| "-".into())
                .into(),
        ]);
    }
    out.push('\n');
    out.push_str(&t.render_as(look));
    out
}

/// `parhelia status --json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StatusView {
    pub state_dir: String,
    pub coordinator: CoordinatorView,
    /// The label value on this state directory's containers.
    pub coordinator_id: String,
    pub tasks: BTreeMap<&'static str, u64>,
    /// Pending tasks waiting for a worker slot, and held ones.
    pub queued: u64,
    pub held: u64,
    pub max_concurrent_workers: u64,
    pub running_sessions: Vec<RunningSessionView>,
    /// What everything cost (the whole ledger).
    /// The ledger's figures (`docs/cost.md`): `cost_usd` is the total
    /// (compute + model + storage), then its breakdown and token counts.
    #[serde(flatten)]
    pub spend: Spend,
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
    /// The ledger's figures (`docs/cost.md`): `cost_usd` is the total
    /// (compute + model + storage), then its breakdown and token counts.
    #[serde(flatten)]
    pub spend: Spend,
    pub started_at: Option<String>,
    pub last_heartbeat_at: Option<String>,
    /// `heartbeat 3s ago`, `heartbeat stale (95s ago)` or `no heartbeat yet`: the
    /// heartbeat's age against the session's interval.
    pub heartbeat: String,
    /// The container's health as that age makes it (never better than the
    /// reconciler's last verdict).
    pub health: Option<String>,
}

impl RunningSessionView {
    /// `default_interval_ms`: for a container that recorded none.
    pub fn of(
        s: &RunningSession,
        now_ms: i64,
        default_interval_ms: i64,
        thresholds: &HealthThresholds,
    ) -> Self {
        let interval = s.heartbeat_interval_ms.unwrap_or(default_interval_ms);
        let heard = s.last_heartbeat_ms.or(s.started_at_ms);
        Self {
            session_id: s.session_id.clone(),
            task_id: s.task_id.clone(),
            container_id: s.container_id.clone(),
            status: s.status.clone(),
            spend: s.spend.clone(),
            started_at: s.started_at_ms.map(rfc3339_ms),
            last_heartbeat_at: s.last_heartbeat_ms.map(rfc3339_ms),
            heartbeat: HeartbeatAge::of(s.last_heartbeat_ms, now_ms, interval, thresholds)
                .to_string(),
            health: shown_health(s.container_health, heard, now_ms, interval, thresholds)
                .map(|h| h.to_string()),
        }
    }
}

/// `$0.0279 (compute $0.0273, model $0.0006, storage $0.0000)`: the cost and
/// its breakdown, as every text view shows it; tokens when there are any.
pub fn cost_breakdown(spend: &Spend) -> String {
    let mut out = format!(
        "{} (compute {}, model {}, storage {})",
        cost(spend.cost_usd),
        cost(spend.compute_usd),
        cost(spend.model_usd),
        cost(spend.storage_usd)
    );
    let tokens = [
        spend.input_tokens,
        spend.output_tokens,
        spend.cache_creation_input_tokens,
        spend.cache_read_input_tokens,
    ];
    if tokens.iter().any(|t| *t > 0) {
        out.push_str(&format!(
            " · tokens {} in, {} out, {} cache write, {} cache read",
            tokens[0], tokens[1], tokens[2], tokens[3]
        ));
    }
    match spend.unknown_model_requests {
        0 => {}
        1 => out.push_str(
            " · plus unknown: Claude Code died with 1 model request in flight (billed by the API if it answered)",
        ),
        n => out.push_str(&format!(
            " · plus unknown: Claude Code died with a model request in flight {n} times (billed by the API if it answered)"
        )),
    }
    out
}

/// One `name  value` line; the value may come from a session, so it is
/// escaped (on one line) before it reaches a terminal.
fn field(out: &mut String, name: &str, value: &str) {
    let value = escape_untrusted(value);
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
    field(
        &mut out,
        "status",
        &match queue_state(t) {
            Some("held") => "pending (held: dispatch with `parhelia task dispatch`)".to_string(),
            Some(q) => format!("pending ({q})"),
            None => t.status.as_str().to_string(),
        },
    );
    if t.attempt > 1 {
        field(&mut out, "attempt", &t.attempt.to_string());
    }
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
    if !t.secrets.is_empty() {
        field(
            &mut out,
            "secrets",
            &format!("{} (by name; values never stored)", t.secrets.join(", ")),
        );
    }
    if let Some(region) = &t.region {
        field(&mut out, "region", region);
    }
    if let Some(gpu) = &t.gpu_chosen {
        field(
            &mut out,
            "gpu",
            &format!("{gpu} (the type Modal had capacity for)"),
        );
    }
    field(&mut out, "session", t.session_id.as_deref().unwrap_or("-"));
    field(
        &mut out,
        "container",
        t.container_id.as_deref().unwrap_or("-"),
    );
    field(&mut out, "cost", &cost_breakdown(&t.spend));
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
            out.push_str(&format!("  {}\n", escape_untrusted_text(line)));
        }
    }
    out
}

/// `task list` without `--json`: the prompt is cut to fit a terminal, and
/// whole anywhere else.
pub fn task_table(tasks: &[TaskRecord], now_ms: i64, look: Look) -> String {
    if tasks.is_empty() {
        return "no tasks\n".to_string();
    }
    let mut t = Table::new(2)
        .whole("ID", 13)
        .whole("STATUS", 11)
        .whole("COST", 8)
        .whole("AGE", 6)
        .text("PROMPT");
    for task in tasks {
        t.row(vec![
            task.id.as_str().into(),
            Cell::status(shown_status(task).as_str()),
            cost(task.spend.cost_usd).into(),
            age(now_ms, task.created_at_ms).into(),
            task.prompt.trim().into(),
        ]);
    }
    t.render_as(look)
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
    if s.attempt > 1 {
        field(&mut out, "attempt", &s.attempt.to_string());
    }
    if let Some(state) = s.container_state {
        let health = s
            .container_health
            .map(|h| format!(" · {h}"))
            .unwrap_or_default();
        field(&mut out, "container", &format!("{state}{health}"));
    }
    if let Some(hb) = s.last_heartbeat_ms {
        field(&mut out, "heartbeat", &rfc3339_ms(hb));
    }
    if let Some(cp) = &s.resume_checkpoint_id {
        field(&mut out, "resume at", cp);
    }
    field(&mut out, "mode", &s.mode);
    field(&mut out, "claude id", &s.claude_session_id);
    field(&mut out, "workspace", &s.workspace_dir);
    field(&mut out, "volume", &s.volume_dir);
    field(&mut out, "cost", &cost_breakdown(&s.spend));
    field(&mut out, "created", &rfc3339_ms(s.created_at_ms));
    if let Some(finished) = s.finished_at_ms {
        field(&mut out, "finished", &rfc3339_ms(finished));
    }
    out
}

/// Puts the health a live session's container has *now* into its record:
/// the reconciler's last verdict or what the silence since its last
/// heartbeat (else since the session started) says, whichever is worse. So
/// a healthy running container shows `healthy` before the first reconciler
/// pass, and a silent one turns unhealthy without waiting for it.
pub fn refresh_health(
    s: &mut SessionRecord,
    now_ms: i64,
    thresholds: &HealthThresholds,
    interval_ms: i64,
) {
    if !s.container_state.is_some_and(|c| c.expects_heartbeats()) {
        return;
    }
    let heard = s.last_heartbeat_ms.or(Some(s.created_at_ms));
    s.container_health = shown_health(s.container_health, heard, now_ms, interval_ms, thresholds);
}

/// `session list` without `--json`.
pub fn session_table(sessions: &[SessionRecord], now_ms: i64, look: Look) -> String {
    if sessions.is_empty() {
        return "no sessions\n".to_string();
    }
    let mut t = Table::new(2)
        .whole("ID", 13)
        .whole("TASK", 13)
        .whole("STATUS", 10)
        .whole("HEALTH", 9)
        .whole("COST", 8)
        .whole("AGE", 0);
    for s in sessions {
        let status = match (&s.outcome, s.status.as_str()) {
            (Some(outcome), "finished") => outcome.clone(),
            _ => s.status.clone(),
        };
        let live = s.container_state.is_some_and(|c| c.expects_heartbeats());
        t.row(vec![
            s.id.as_str().into(),
            s.task_id.as_str().into(),
            Cell::status(&status),
            Cell::status(
                &s.container_health
                    .filter(|_| live)
                    .map(|h| h.to_string())
                    .unwrap_or_else(|| "-".into()),
            ),
            cost(s.spend.cost_usd).into(),
            age(now_ms, s.created_at_ms).into(),
        ]);
    }
    t.render_as(look)
}

/// `parhelia status` without `--json`.
/// `parhelia status` as text, laid out for `look`: task counts colored by
/// status, running sessions as a table (status and health colored).
pub fn status_text(status: &StatusView, look: Look) -> String {
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
    // The status words are ours (never session text), painted after escaping.
    let counts: Vec<String> = status
        .tasks
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(s, n)| match table::status_tone(s) {
            Some(tone) => format!("{n} {}", table::paint(s, tone, look.color)),
            None => format!("{n} {s}"),
        })
        .collect();
    out.push_str(&format!(
        "{:<11}{}\n",
        "tasks",
        if counts.is_empty() {
            "none".to_string()
        } else {
            counts.join(", ")
        }
    ));
    if status.queued + status.held > 0 {
        field(
            &mut out,
            "queue",
            &format!(
                "{} queued, {} held · max {} running",
                status.queued, status.held, status.max_concurrent_workers
            ),
        );
    }
    field(&mut out, "cost", &cost_breakdown(&status.spend));
    if status.running_sessions.is_empty() {
        field(&mut out, "sessions", "none running");
    } else {
        out.push_str("sessions\n");
        let mut t = Table::new(2)
            .whole("SESSION", 13)
            .whole("TASK", 13)
            .whole("STATUS", 6)
            .number("COST", 7)
            .whole("HEARTBEAT", 9)
            .whole("HEALTH", 6);
        for s in &status.running_sessions {
            t.row(vec![
                s.session_id.as_str().into(),
                s.task_id.as_str().into(),
                Cell::status(&s.status),
                cost(s.spend.cost_usd).into(),
                s.heartbeat.as_str().into(),
                Cell::status(s.health.as_deref().unwrap_or("-")),
            ]);
        }
        for line in t.render_as(look).lines() {
            out.push_str(&format!("  {line}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task_state::TaskStatus;

    /// A GPU task's spend as issue 13 found it: `cost` showed only the model's $0.0006.
    fn spend(compute_usd: f64, model_usd: f64, storage_usd: f64) -> Spend {
        let mut spend = Spend::default();
        spend.add("compute", compute_usd, [0; 4]);
        spend.add("model", model_usd, [470, 55, 0, 0]);
        spend.add("storage", storage_usd, [0; 4]);
        spend
    }

    fn session_record() -> SessionRecord {
        SessionRecord {
            id: "sess-1a2b3c4d".into(),
            task_id: "task-1a2b3c4d".into(),
            claude_session_id: "c".into(),
            mode: "headless".into(),
            status: "busy".into(),
            outcome: None,
            workspace_dir: "/w".into(),
            volume_dir: "/v".into(),
            spend: Spend::default(),
            created_at_ms: 1_700_000_000_000,
            finished_at_ms: None,
            container_id: Some("ctr-1a2b3c4d".into()),
            attempt: 1,
            resume_checkpoint_id: None,
            container_state: None,
            container_health: None,
            last_heartbeat_ms: None,
        }
    }

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
            spend: spend(0.0273, 0.0006, 0.0),
            result: Some("Done.\nWrote hello.txt".into()),
            error_code: Some("E505".into()),
            error_message: Some("the model API failed".into()),
            created_at_ms: 1_700_000_000_000,
            started_at_ms: Some(1_700_000_001_000),
            finished_at_ms: Some(1_700_000_013_300),
            mode: "headless".into(),
            dispatch_requested_at_ms: None,
            attempt: 1,
            auto_resumes: 0,
            allow_large_workspace: false,
            no_user_config: false,
            config_set: Vec::new(),
            secrets: Vec::new(),
            region: None,
            gpu_chosen: None,
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
            "compute_usd",
            "model_usd",
            "storage_usd",
            "input_tokens",
            "output_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
            "unknown_model_requests",
            "created_at",
            "finished_at",
            "result",
            "error_code",
            "error_message",
        ] {
            assert!(json.get(key).is_some(), "missing {key}");
        }
        assert_eq!(json["status"], "failed");
        // Issue 13: cost is the total, not the model's share.
        assert!((json["cost_usd"].as_f64().unwrap() - 0.0279).abs() < 1e-12);
        assert_eq!(json["compute_usd"], 0.0273);
        assert_eq!(json["model_usd"], 0.0006);
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
cost       $0.0279 (compute $0.0273, model $0.0006, storage $0.0000) · tokens 470 in, 55 out, 0 cache write, 0 cache read
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

    /// Issue 14: HEALTH showed `-` for a healthy running container until the
    /// reconciler's first pass stored a verdict.
    #[test]
    fn a_running_sessions_health_shows_before_the_first_reconciler_pass() {
        let thresholds = HealthThresholds {
            degraded_after_missed: 3,
            unhealthy_after_missed: 6,
            stale_threshold_ms: 300_000,
        };
        let now = 1_700_000_010_000;
        let mut s = session_record();
        s.container_state = Some(ContainerState::Running);
        s.container_health = None;
        s.last_heartbeat_ms = Some(now - 1_000);
        refresh_health(&mut s, now, &thresholds, 5_000);
        assert_eq!(s.container_health, Some(Health::Healthy));
        let table = session_table(std::slice::from_ref(&s), now, Look::PLAIN);
        assert!(table.contains("healthy"), "{table}");
        // Silent for 40s (8 intervals): unhealthy now, whatever was stored.
        s.container_health = Some(Health::Healthy);
        s.last_heartbeat_ms = Some(now - 40_000);
        refresh_health(&mut s, now, &thresholds, 5_000);
        assert_eq!(s.container_health, Some(Health::Unhealthy));
        // An ended container keeps no health.
        s.container_state = Some(ContainerState::Terminated);
        s.container_health = None;
        refresh_health(&mut s, now, &thresholds, 5_000);
        assert_eq!(s.container_health, None);
    }

    #[test]
    fn task_table_text() {
        let now = 1_700_000_000_000 + 185_000;
        assert_eq!(
            task_table(&[task()], now, Look::PLAIN),
            "ID             STATUS       COST      AGE     PROMPT
task-1a2b3c4d  failed       $0.0279   3m05s   Add a hello.txt that says hi
"
        );
        assert_eq!(task_table(&[], now, Look::PLAIN), "no tasks\n");
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
            coordinator_id: "coord-00000001".into(),
            tasks,
            queued: 0,
            held: 0,
            max_concurrent_workers: 10,
            running_sessions: vec![RunningSessionView {
                session_id: "sess-00000001".into(),
                task_id: "task-00000002".into(),
                container_id: "ctr-00000003".into(),
                status: "busy".into(),
                spend: spend(0.2, 0.3, 0.0),
                started_at: None,
                last_heartbeat_at: None,
                heartbeat: "no heartbeat yet".into(),
                health: None,
            }],
            spend: spend(0.25, 0.75, 0.25),
        };
        assert_eq!(
            status_text(&status, Look::PLAIN),
            "coordinator running (pid 42, version 0.1.0)
state      /s/.parhelia
tasks      2 completed, 1 running
cost       $1.2500 (compute $0.2500, model $0.7500, storage $0.2500) · tokens 470 in, 55 out, 0 cache write, 0 cache read
sessions
  SESSION        TASK           STATUS     COST  HEARTBEAT         HEALTH
  sess-00000001  task-00000002  busy    $0.5000  no heartbeat yet  -
"
        );
        // With color: the status words, never the ids or the session's text.
        let colored = status_text(
            &status,
            Look {
                color: true,
                ..Look::PLAIN
            },
        );
        assert!(
            colored.contains("2 \u{1b}[32mcompleted\u{1b}[0m"),
            "{colored:?}"
        );
        assert!(
            colored.contains("1 \u{1b}[33mrunning\u{1b}[0m"),
            "{colored:?}"
        );
        assert!(colored.contains("\u{1b}[38;5;11mbusy"), "{colored:?}");
        assert!(!colored.contains("m sess"), "{colored:?}");
        assert!(!colored.contains("msess"), "{colored:?}");
    }

    /// A session-controlled prompt, result and error carrying terminal
    /// escapes: the text views show them as visible escapes.
    fn hostile_task() -> TaskRecord {
        let mut t = task();
        t.prompt = "Fix\u{1b}[2J\u{1b}[H the tests\u{9b}31m".into();
        t.result = Some("Done.\u{1b}]0;owned\u{7}\n\tindented\r\n\u{1b}[1A\u{1b}[Kerased".into());
        t.error_message = Some("boom\u{1b}[8m hidden\nsecond line".into());
        t
    }

    #[test]
    fn task_table_escapes_session_text() {
        let now = 1_700_000_000_000 + 185_000;
        let text = task_table(&[hostile_task()], now, Look::PLAIN);
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{9b}'),
            "{text:?}"
        );
        insta::assert_snapshot!(text);
    }

    /// Issue 12, item 8: every running session said "heartbeat ok", whatever the
    /// heartbeat's age; a session silent for 95s now says so, and so does its health.
    #[test]
    fn status_lines_follow_the_heartbeat_age() {
        let now = 1_700_000_100_000;
        let thresholds = HealthThresholds {
            degraded_after_missed: 3,
            unhealthy_after_missed: 6,
            stale_threshold_ms: 300_000,
        };
        let session = |n: u32, last: Option<i64>, health: Option<Health>| RunningSession {
            session_id: format!("sess-0000000{n}"),
            task_id: format!("task-0000000{n}"),
            container_id: format!("ctr-0000000{n}"),
            status: "busy".into(),
            spend: spend(0.0006, 0.0006, 0.0),
            started_at_ms: Some(now - 200_000),
            last_heartbeat_ms: last,
            heartbeat_interval_ms: Some(5_000),
            container_health: health,
        };
        let sessions = [
            session(1, Some(now - 3_000), Some(Health::Healthy)),
            session(2, Some(now - 95_000), Some(Health::Healthy)),
            session(3, None, None),
            session(4, Some(now - 400_000), Some(Health::Unhealthy)),
        ];
        let status = StatusView {
            state_dir: "/s/.parhelia".into(),
            coordinator: CoordinatorView {
                running: true,
                pid: Some(42),
                version: Some("0.1.0".into()),
                socket: "/s/.parhelia/coordinator.sock".into(),
            },
            coordinator_id: "coord-00000001".into(),
            tasks: BTreeMap::new(),
            queued: 0,
            held: 0,
            max_concurrent_workers: 10,
            running_sessions: sessions
                .iter()
                .map(|s| RunningSessionView::of(s, now, 5_000, &thresholds))
                .collect(),
            spend: spend(0.0024, 0.0024, 0.0),
        };
        let text = status_text(&status, Look::PLAIN);
        assert!(!text.contains("heartbeat ok"), "{text}");
        insta::assert_snapshot!(text);
    }

    #[test]
    fn task_detail_escapes_session_text() {
        let text = task_detail(&hostile_task());
        assert!(
            !text
                .chars()
                .any(|c| c != '\n' && c != '\t' && c.is_control()),
            "{text:?}"
        );
        insta::assert_snapshot!(text);
    }
}
