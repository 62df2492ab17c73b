//! The reconcile step: intended state (the coordinator's records) against
//! observed state (the backend's list of *our* containers, plus heartbeats),
//! turned into [`Action`]s. Pure: no IO, no clock (`now` is an argument).
//! The adapter that gathers the inputs and executes the actions is
//! [`crate::reconciler`].
//!
//! The rules, per container the coordinator knows (by its recorded state):
//!
//! - `starting`/`running`: health follows the heartbeats
//!   ([`crate::container_state::health_for`]). The container is **lost** only
//!   when the backend listed containers successfully, this one is not among
//!   them, *and* nothing was heard from it for the stale threshold. Either
//!   signal alone is not enough: an empty list with fresh heartbeats is a
//!   backend glitch, and stale heartbeats from a listed container are a sick
//!   agent (its health says so). A lost container interrupts its task
//!   (resumable), and with `auto_resume` a bounded resume is requested.
//!   A listed container nobody follows is followed.
//! - `created`: a launch the coordinator is not attending any more (it
//!   crashed mid-launch) that never appeared is lost after the stale threshold.
//! - `stopping`: gone from the list → terminated; still listed after the stop
//!   timeout → terminated again.
//! - `terminated`/`lost`/`failed` but still listed after the stop timeout →
//!   an orphan: reported, and terminated when the policy says so.
//! - `orphaned`: gone from the list → terminated.
//!
//! And per listed container the coordinator has no record of: an orphan,
//! reported once and terminated when the policy says so.
//!
//! Architecture invariants (property-tested below):
//! - a container without our label is never acted on: the backend lists
//!   ours only, and this function filters on the label again;
//! - when the backend could not list (`Observation::containers` is `None`),
//!   nothing is ended, terminated or reported: only health moves; when one
//!   backend of several could not list (`Observation::unlisted`), the same holds
//!   for *its* containers, and the others' are reconciled as usual;
//! - idempotence: after applying its actions ([`apply`]), a second run on the
//!   same observation at the same time produces no action;
//! - nothing ever terminates "everything": every termination names one
//!   listed container of ours.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::container_state::{ContainerState, Health, HealthThresholds, health_for};
use crate::error::CodedError;
use crate::error_codes;
use crate::task_state::TaskStatus;

/// What the reconciler may do, from `[reconciler]` (and `[agent]`) config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// The `parhelia.coordinator` label value of our containers.
    pub coordinator_id: String,
    pub thresholds: HealthThresholds,
    /// Heartbeat interval for containers that did not record one.
    pub default_heartbeat_interval_ms: i64,
    pub auto_terminate_orphans: bool,
    pub auto_resume: bool,
    pub max_auto_resumes: u32,
    /// How long a stop may take before the container is terminated (again);
    /// also how long an ended container may linger before it is an orphan.
    pub stop_timeout_ms: i64,
}

/// A container the backend observes running: ours only, found by our label.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedContainer {
    pub container_id: String,
    /// Empty when the backend cannot tell.
    pub session_id: String,
    pub pid: Option<u32>,
    pub endpoint: Option<String>,
    /// The value of the `parhelia.coordinator` label it carries.
    pub coordinator_label: String,
}

/// What the backends reported.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observation {
    /// What the backends that could list listed; `None` when none could: nothing
    /// is known about what runs.
    pub containers: Option<Vec<ObservedContainer>>,
    /// Backends (`local`, `modal`) that could not list: their containers are
    /// unknown, exactly as if nothing had been listed for them, while the other
    /// backends' containers are reconciled from their lists (one backend that
    /// cannot answer blinds only its own containers).
    pub unlisted: BTreeSet<String>,
}

impl Observation {
    /// Every backend listed these.
    pub fn listed(containers: Vec<ObservedContainer>) -> Observation {
        Observation {
            containers: Some(containers),
            unlisted: BTreeSet::new(),
        }
    }

    /// No backend could list.
    pub fn unknown() -> Observation {
        Observation::default()
    }

    /// Whether the backend `backend` runs under listed its containers.
    pub fn knows_backend(&self, backend: &str) -> bool {
        self.containers.is_some() && !self.unlisted.contains(backend)
    }
}

/// A local session unit (cgroup or marked process tree) whose agent is gone but
/// whose processes still run: what a killed agent leaves behind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeftoverUnit {
    pub container_id: String,
    /// Empty when there is no record naming it.
    pub session_id: String,
    /// `cgroup_v1`, `cgroup_v2`, `process_tree`.
    pub kind: String,
    /// The processes found running in it (host pids).
    pub pids: Vec<u32>,
    /// The backend has a unit record for it (`containers/<cid>/unit.json`).
    pub recorded: bool,
}

/// One container as the coordinator records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntendedContainer {
    pub container_id: String,
    pub session_id: String,
    pub task_id: String,
    /// The backend that runs it (`local`, `modal`): its listing is the one that
    /// says whether it runs.
    pub backend: String,
    pub state: ContainerState,
    pub health: Option<Health>,
    pub heartbeat_interval_ms: Option<i64>,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub last_heartbeat_ms: Option<i64>,
    /// When `state` was last set.
    pub state_changed_at_ms: i64,
    /// When a stop or termination was last requested.
    pub stop_requested_at_ms: Option<i64>,
    /// The coordinator is launching or following it right now.
    pub attended: bool,
    /// The status of the container's task.
    pub task_status: TaskStatus,
    /// This is the task's latest container.
    pub is_latest_for_task: bool,
    /// Automatic resumes already requested for the task.
    pub task_auto_resumes: u32,
    /// A resume was already requested after this container was lost.
    pub resume_requested: bool,
    /// The latest checkpoint on the session's volume, if any.
    pub latest_checkpoint_id: Option<String>,
}

impl IntendedContainer {
    /// How long nothing was heard: since the last heartbeat, else since the
    /// start, else since it was recorded.
    pub fn silence_ms(&self, now_ms: i64) -> i64 {
        let heard = [
            self.last_heartbeat_ms,
            self.started_at_ms,
            Some(self.created_at_ms),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(self.created_at_ms);
        now_ms - heard
    }
}

/// A labelled container the coordinator has no record of, as remembered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownOrphan {
    pub container_id: String,
    /// No longer listed.
    pub gone: bool,
    pub terminate_requested_at_ms: Option<i64>,
}

/// The coordinator's side.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Intended {
    pub containers: Vec<IntendedContainer>,
    pub orphans: Vec<KnownOrphan>,
}

/// One thing to do. Serialized into reconciler reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Heartbeats moved the container's health.
    SetHealth {
        container_id: String,
        from: Option<Health>,
        to: Health,
        silence_ms: i64,
    },
    /// Start following a listed container nobody follows.
    Follow {
        container_id: String,
        session_id: String,
        task_id: String,
    },
    /// Gone from the backend and silent for the stale threshold: the
    /// container is lost; its session (and, if it is the task's latest
    /// container, the task) is interrupted and resumable.
    MarkLost {
        container_id: String,
        session_id: String,
        task_id: String,
        silence_ms: i64,
        interrupt_task: bool,
        checkpoint_id: Option<String>,
    },
    /// Resume the interrupted task's session automatically.
    RequestResume {
        task_id: String,
        session_id: String,
        lost_container_id: String,
        checkpoint_id: Option<String>,
        attempt: u32,
    },
    /// A stopping or orphaned container is no longer listed.
    MarkTerminated { container_id: String },
    /// A container asked to stop is still listed after the stop timeout.
    TerminateStuck { container_id: String },
    /// A labelled container runs although no live record wants it.
    ReportOrphan {
        container_id: String,
        /// The coordinator has a (finished) record of it.
        known: bool,
        pid: Option<u32>,
    },
    /// Terminate an orphan (policy `auto_terminate_orphans`, or `cleanup --terminate`).
    TerminateOrphan {
        container_id: String,
        known: bool,
        pid: Option<u32>,
    },
    /// An orphan without a record is no longer listed.
    ForgetOrphan { container_id: String },
    /// A session's processes outlived its agent: hold them, checkpoint the
    /// workspace into the session's store, end them.
    EndSessionProcesses {
        container_id: String,
        /// Empty when nothing names the session (then no checkpoint).
        session_id: String,
        kind: String,
        pids: Vec<u32>,
        /// Whether the coordinator has a record of the container.
        known: bool,
    },
}

impl Action {
    pub fn container_id(&self) -> &str {
        match self {
            Action::SetHealth { container_id, .. }
            | Action::Follow { container_id, .. }
            | Action::MarkLost { container_id, .. }
            | Action::MarkTerminated { container_id }
            | Action::TerminateStuck { container_id }
            | Action::ReportOrphan { container_id, .. }
            | Action::TerminateOrphan { container_id, .. }
            | Action::ForgetOrphan { container_id }
            | Action::EndSessionProcesses { container_id, .. } => container_id,
            Action::RequestResume {
                lost_container_id, ..
            } => lost_container_id,
        }
    }

    /// The snake_case name (as in reports and events).
    pub fn name(&self) -> &'static str {
        match self {
            Action::SetHealth { .. } => "set_health",
            Action::Follow { .. } => "follow",
            Action::MarkLost { .. } => "mark_lost",
            Action::RequestResume { .. } => "request_resume",
            Action::MarkTerminated { .. } => "mark_terminated",
            Action::TerminateStuck { .. } => "terminate_stuck",
            Action::ReportOrphan { .. } => "report_orphan",
            Action::TerminateOrphan { .. } => "terminate_orphan",
            Action::ForgetOrphan { .. } => "forget_orphan",
            Action::EndSessionProcesses { .. } => "end_session_processes",
        }
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        match self {
            Action::SetHealth {
                container_id,
                from,
                to,
                silence_ms,
            } => format!(
                "{container_id}: health {} → {to} (last heard {}s ago)",
                from.map_or("unknown", Health::as_str),
                silence_ms / 1000
            ),
            Action::Follow { container_id, .. } => {
                format!("{container_id}: following its event stream")
            }
            Action::MarkLost {
                container_id,
                task_id,
                silence_ms,
                interrupt_task,
                checkpoint_id,
                ..
            } => {
                let mut text = format!(
                    "{container_id}: lost (not running, silent for {}s)",
                    silence_ms / 1000
                );
                if *interrupt_task {
                    text.push_str(&format!("; task {task_id} interrupted"));
                    match checkpoint_id {
                        Some(cp) => text.push_str(&format!(", resumable from {cp}")),
                        None => text.push_str(", resumable from its starting workspace"),
                    }
                }
                text
            }
            Action::RequestResume {
                task_id, attempt, ..
            } => format!("task {task_id}: automatic resume requested (attempt {attempt})"),
            Action::MarkTerminated { container_id } => format!("{container_id}: terminated"),
            Action::TerminateStuck { container_id } => {
                format!("{container_id}: still running after the stop timeout; terminating")
            }
            Action::ReportOrphan {
                container_id,
                known,
                pid,
            } => format!(
                "{container_id}: orphan{} ({})",
                pid.map(|p| format!(" pid {p}")).unwrap_or_default(),
                if *known {
                    "its record says it ended"
                } else {
                    "no record of it"
                }
            ),
            Action::TerminateOrphan { container_id, .. } => {
                format!("{container_id}: terminating the orphan")
            }
            Action::ForgetOrphan { container_id } => {
                format!("{container_id}: the orphan is gone")
            }
            Action::EndSessionProcesses {
                container_id,
                kind,
                pids,
                known,
                ..
            } => format!(
                "{container_id}: its agent is gone but {} session process(es) still run ({kind}{}); checkpointing the workspace and ending them",
                pids.len(),
                if *known { "" } else { ", no record" }
            ),
        }
    }
}

/// The difference between intended and observed, for `reconciler status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drift {
    /// Containers the records say should be alive.
    pub intended_active: usize,
    /// Our containers the backend listed (`None`: listing failed).
    pub observed: Option<usize>,
    /// Should be alive, not listed.
    pub missing: Vec<String>,
    /// Listed, but no live record wants them (orphans).
    pub unexpected: Vec<String>,
    /// Should be alive, silent for longer than the stale threshold.
    pub stale: Vec<String>,
}

/// Whether a stop/termination requested at `at` is still in progress.
fn recently(at: Option<i64>, now_ms: i64, policy: &Policy) -> bool {
    at.is_some_and(|t| now_ms - t <= policy.stop_timeout_ms)
}

fn listed_ours<'a>(
    observed: &'a Observation,
    policy: &Policy,
) -> Option<BTreeMap<&'a str, &'a ObservedContainer>> {
    observed.containers.as_ref().map(|list| {
        list.iter()
            .filter(|c| c.coordinator_label == policy.coordinator_id)
            .map(|c| (c.container_id.as_str(), c))
            .collect()
    })
}

/// The reconcile step. See the module documentation for the rules.
pub fn reconcile(
    intended: &Intended,
    observed: &Observation,
    now_ms: i64,
    policy: &Policy,
) -> Vec<Action> {
    let listed = listed_ours(observed, policy);
    // `None`: its backend did not list (nothing is known of it this pass).
    let seen = |c: &IntendedContainer| {
        listed
            .as_ref()
            .filter(|_| observed.knows_backend(&c.backend))
            .map(|m| m.get(c.container_id.as_str()).copied())
    };
    let stale = policy.thresholds.stale_threshold_ms;
    let mut actions = Vec::new();

    for c in &intended.containers {
        let listed_as = seen(c);
        match c.state {
            ContainerState::Created => {
                // A launch in progress is the launcher's business. One nobody
                // attends any more (the coordinator died mid-launch) is either
                // followed (its agent did start) or, once silent, lost.
                if c.attended {
                    continue;
                }
                match listed_as {
                    Some(None) if c.silence_ms(now_ms) > stale => {
                        actions.extend(lost(c, now_ms, policy));
                    }
                    Some(Some(_)) if c.task_status == TaskStatus::Running => {
                        actions.push(Action::Follow {
                            container_id: c.container_id.clone(),
                            session_id: c.session_id.clone(),
                            task_id: c.task_id.clone(),
                        });
                    }
                    _ => {}
                }
            }
            ContainerState::Starting | ContainerState::Running => {
                let silence = c.silence_ms(now_ms);
                if matches!(listed_as, Some(None)) && silence > stale {
                    actions.extend(lost(c, now_ms, policy));
                    continue;
                }
                if matches!(listed_as, Some(Some(_)))
                    && !c.attended
                    && c.task_status == TaskStatus::Running
                {
                    actions.push(Action::Follow {
                        container_id: c.container_id.clone(),
                        session_id: c.session_id.clone(),
                        task_id: c.task_id.clone(),
                    });
                }
                let interval = c
                    .heartbeat_interval_ms
                    .filter(|ms| *ms > 0)
                    .unwrap_or(policy.default_heartbeat_interval_ms);
                let health = health_for(silence, interval, &policy.thresholds);
                if c.health != Some(health) {
                    actions.push(Action::SetHealth {
                        container_id: c.container_id.clone(),
                        from: c.health,
                        to: health,
                        silence_ms: silence,
                    });
                }
            }
            ContainerState::Stopping => match listed_as {
                Some(None) => actions.push(Action::MarkTerminated {
                    container_id: c.container_id.clone(),
                }),
                Some(Some(_)) => {
                    let since = c.stop_requested_at_ms.unwrap_or(c.state_changed_at_ms);
                    if now_ms - since > policy.stop_timeout_ms {
                        actions.push(Action::TerminateStuck {
                            container_id: c.container_id.clone(),
                        });
                    }
                }
                None => {}
            },
            ContainerState::Terminated | ContainerState::Lost | ContainerState::Failed => {
                if let Some(Some(o)) = listed_as
                    && now_ms - c.state_changed_at_ms > policy.stop_timeout_ms
                {
                    actions.push(Action::ReportOrphan {
                        container_id: c.container_id.clone(),
                        known: true,
                        pid: o.pid,
                    });
                    if policy.auto_terminate_orphans
                        && !recently(c.stop_requested_at_ms, now_ms, policy)
                    {
                        actions.push(Action::TerminateOrphan {
                            container_id: c.container_id.clone(),
                            known: true,
                            pid: o.pid,
                        });
                    }
                }
            }
            ContainerState::Orphaned => match listed_as {
                Some(None) => actions.push(Action::MarkTerminated {
                    container_id: c.container_id.clone(),
                }),
                Some(Some(o))
                    if policy.auto_terminate_orphans
                        && !recently(c.stop_requested_at_ms, now_ms, policy) =>
                {
                    actions.push(Action::TerminateOrphan {
                        container_id: c.container_id.clone(),
                        known: true,
                        pid: o.pid,
                    });
                }
                _ => {}
            },
        }
    }

    if let Some(listed) = &listed {
        let known: BTreeSet<&str> = intended
            .containers
            .iter()
            .map(|c| c.container_id.as_str())
            .collect();
        let orphans: BTreeMap<&str, &KnownOrphan> = intended
            .orphans
            .iter()
            .map(|o| (o.container_id.as_str(), o))
            .collect();
        for (id, o) in listed {
            if known.contains(id) {
                continue;
            }
            let remembered = orphans.get(id);
            if remembered.is_none_or(|r| r.gone) {
                actions.push(Action::ReportOrphan {
                    container_id: id.to_string(),
                    known: false,
                    pid: o.pid,
                });
            }
            if policy.auto_terminate_orphans
                && !recently(
                    remembered.and_then(|r| r.terminate_requested_at_ms),
                    now_ms,
                    policy,
                )
            {
                actions.push(Action::TerminateOrphan {
                    container_id: id.to_string(),
                    known: false,
                    pid: o.pid,
                });
            }
        }
        // An orphan has no record of its backend: one that is not listed may be on
        // a backend that could not list, so none is forgotten until all listed.
        for o in intended
            .orphans
            .iter()
            .filter(|_| observed.unlisted.is_empty())
        {
            if !o.gone
                && !listed.contains_key(o.container_id.as_str())
                && !known.contains(o.container_id.as_str())
            {
                actions.push(Action::ForgetOrphan {
                    container_id: o.container_id.clone(),
                });
            }
        }
    }
    actions
}

/// `MarkLost`, plus `RequestResume` when the policy allows one.
fn lost(c: &IntendedContainer, now_ms: i64, policy: &Policy) -> Vec<Action> {
    let interrupt_task = c.task_status == TaskStatus::Running && c.is_latest_for_task;
    let mut actions = vec![Action::MarkLost {
        container_id: c.container_id.clone(),
        session_id: c.session_id.clone(),
        task_id: c.task_id.clone(),
        silence_ms: c.silence_ms(now_ms),
        interrupt_task,
        checkpoint_id: c.latest_checkpoint_id.clone(),
    }];
    if interrupt_task
        && policy.auto_resume
        && !c.resume_requested
        && c.task_auto_resumes < policy.max_auto_resumes
    {
        actions.push(Action::RequestResume {
            task_id: c.task_id.clone(),
            session_id: c.session_id.clone(),
            lost_container_id: c.container_id.clone(),
            checkpoint_id: c.latest_checkpoint_id.clone(),
            attempt: c.task_auto_resumes + 1,
        });
    }
    actions
}

/// What to do about left-over session units (pure). Every unit the backend
/// reports whose container is not listed as running is ended (after a
/// checkpoint when it names its session); one whose agent is listed is never
/// touched, and nothing is decided when listing failed. One action per
/// container, in container order.
pub fn leftover_actions(
    leftovers: &[LeftoverUnit],
    intended: &Intended,
    observed: &Observation,
    policy: &Policy,
) -> Vec<Action> {
    // Units are the local backend's: nothing is decided unless it listed.
    let Some(listed) = listed_ours(observed, policy).filter(|_| observed.knows_backend("local"))
    else {
        return Vec::new();
    };
    let mut by_container: BTreeMap<&str, &LeftoverUnit> = BTreeMap::new();
    for unit in leftovers {
        if unit.pids.is_empty() || listed.contains_key(unit.container_id.as_str()) {
            continue;
        }
        by_container
            .entry(unit.container_id.as_str())
            .or_insert(unit);
    }
    by_container
        .into_values()
        .map(|unit| {
            let record = intended
                .containers
                .iter()
                .find(|c| c.container_id == unit.container_id);
            let session_id = match (&unit.session_id, record) {
                (s, _) if !s.is_empty() => s.clone(),
                (_, Some(c)) => c.session_id.clone(),
                _ => String::new(),
            };
            let mut pids = unit.pids.clone();
            pids.sort_unstable();
            pids.dedup();
            Action::EndSessionProcesses {
                container_id: unit.container_id.clone(),
                session_id,
                kind: unit.kind.clone(),
                pids,
                known: record.is_some() || unit.recorded,
            }
        })
        .collect()
}

/// What executing `actions` does to the intended state: the executor's
/// contract ([`crate::reconciler`] writes exactly these changes), and the
/// model the idempotence property is checked against.
pub fn apply(intended: &Intended, actions: &[Action], now_ms: i64) -> Intended {
    let mut next = intended.clone();
    let find = |next: &mut Intended, id: &str| -> Option<usize> {
        next.containers.iter().position(|c| c.container_id == id)
    };
    for action in actions {
        match action {
            Action::SetHealth {
                container_id, to, ..
            } => {
                if let Some(i) = find(&mut next, container_id) {
                    next.containers[i].health = Some(*to);
                }
            }
            Action::Follow { container_id, .. } => {
                if let Some(i) = find(&mut next, container_id) {
                    next.containers[i].attended = true;
                }
            }
            Action::MarkLost {
                container_id,
                task_id,
                interrupt_task,
                ..
            } => {
                if let Some(i) = find(&mut next, container_id) {
                    let c = &mut next.containers[i];
                    c.state = ContainerState::Lost;
                    c.state_changed_at_ms = now_ms;
                    c.health = Some(Health::Dead);
                }
                if *interrupt_task {
                    for c in next.containers.iter_mut().filter(|c| &c.task_id == task_id) {
                        c.task_status = TaskStatus::Interrupted;
                    }
                }
            }
            Action::RequestResume {
                task_id,
                lost_container_id,
                ..
            } => {
                for c in next.containers.iter_mut().filter(|c| &c.task_id == task_id) {
                    c.task_auto_resumes += 1;
                    if &c.container_id == lost_container_id {
                        c.resume_requested = true;
                    }
                }
            }
            Action::MarkTerminated { container_id } => {
                if let Some(i) = find(&mut next, container_id) {
                    next.containers[i].state = ContainerState::Terminated;
                    next.containers[i].state_changed_at_ms = now_ms;
                }
            }
            Action::TerminateStuck { container_id } => {
                if let Some(i) = find(&mut next, container_id) {
                    next.containers[i].stop_requested_at_ms = Some(now_ms);
                }
            }
            Action::ReportOrphan {
                container_id,
                known: true,
                ..
            } => {
                if let Some(i) = find(&mut next, container_id) {
                    next.containers[i].state = ContainerState::Orphaned;
                    next.containers[i].state_changed_at_ms = now_ms;
                }
            }
            Action::ReportOrphan {
                container_id,
                known: false,
                ..
            } => match next
                .orphans
                .iter_mut()
                .find(|o| &o.container_id == container_id)
            {
                Some(o) => o.gone = false,
                None => next.orphans.push(KnownOrphan {
                    container_id: container_id.clone(),
                    gone: false,
                    terminate_requested_at_ms: None,
                }),
            },
            Action::TerminateOrphan {
                container_id,
                known,
                ..
            } => {
                if *known {
                    if let Some(i) = find(&mut next, container_id) {
                        next.containers[i].stop_requested_at_ms = Some(now_ms);
                    }
                } else if let Some(o) = next
                    .orphans
                    .iter_mut()
                    .find(|o| &o.container_id == container_id)
                {
                    o.terminate_requested_at_ms = Some(now_ms);
                }
            }
            // Ends processes only; the container's record moves by its own rules.
            Action::EndSessionProcesses { .. } => {}
            Action::ForgetOrphan { container_id } => {
                if let Some(o) = next
                    .orphans
                    .iter_mut()
                    .find(|o| &o.container_id == container_id)
                {
                    o.gone = true;
                }
            }
        }
    }
    next
}

/// The difference, for reports.
pub fn drift(intended: &Intended, observed: &Observation, now_ms: i64, policy: &Policy) -> Drift {
    let listed = listed_ours(observed, policy);
    let mut drift = Drift {
        observed: listed.as_ref().map(BTreeMap::len),
        ..Drift::default()
    };
    let mut wanted = BTreeSet::new();
    for c in &intended.containers {
        let alive = matches!(
            c.state,
            ContainerState::Starting | ContainerState::Running | ContainerState::Stopping
        );
        if !alive {
            continue;
        }
        wanted.insert(c.container_id.as_str());
        drift.intended_active += 1;
        if let Some(listed) = &listed
            && observed.knows_backend(&c.backend)
            && !listed.contains_key(c.container_id.as_str())
        {
            drift.missing.push(c.container_id.clone());
        }
        if c.state.expects_heartbeats()
            && c.silence_ms(now_ms) > policy.thresholds.stale_threshold_ms
        {
            drift.stale.push(c.container_id.clone());
        }
    }
    if let Some(listed) = &listed {
        let created: BTreeSet<&str> = intended
            .containers
            .iter()
            .filter(|c| c.state == ContainerState::Created)
            .map(|c| c.container_id.as_str())
            .collect();
        drift.unexpected = listed
            .keys()
            .filter(|id| !wanted.contains(*id) && !created.contains(*id))
            .map(|id| id.to_string())
            .collect();
    }
    drift
}

/// How one action went when executed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionOutcome {
    #[serde(flatten)]
    pub action: Action,
    /// `done`, `planned` (dry run), `unavailable` (e.g. resume without a
    /// resume implementation) or `failed`.
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One reconciler pass, as stored and reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassReport {
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    /// `interval`, `startup`, `manual`, `cleanup`, `agent_gone`.
    pub trigger: String,
    pub dry_run: bool,
    pub drift: Drift,
    pub actions: Vec<ActionOutcome>,
    /// Events ingested from journals of containers that were gone.
    #[serde(default)]
    pub journal_events_ingested: u64,
    /// Why listing failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_error: Option<String>,
}

/// A report on the wire (`RunReconciler`'s typed reply).
impl From<&PassReport> for parhelia_proto::ReconcilerPass {
    fn from(report: &PassReport) -> Self {
        use parhelia_proto::reconciler_action_outcome::Action as W;
        use parhelia_proto::{
            ContainerAction, EndSessionProcessesAction, FollowAction, MarkLostAction, OrphanAction,
            ReconcilerActionOutcome, ReconcilerDrift, RequestResumeAction, SetHealthAction,
        };
        let container = |id: &String| ContainerAction {
            container_id: id.clone(),
        };
        let orphan = |container_id: &String, known: &bool, pid: &Option<u32>| OrphanAction {
            container_id: container_id.clone(),
            known: *known,
            pid: *pid,
        };
        let actions = report
            .actions
            .iter()
            .map(|outcome| ReconcilerActionOutcome {
                action: Some(match &outcome.action {
                    Action::SetHealth {
                        container_id,
                        from,
                        to,
                        silence_ms,
                    } => W::SetHealth(SetHealthAction {
                        container_id: container_id.clone(),
                        from: from.map(|h| h.as_str().to_string()),
                        to: to.as_str().to_string(),
                        silence_ms: *silence_ms,
                    }),
                    Action::Follow {
                        container_id,
                        session_id,
                        task_id,
                    } => W::Follow(FollowAction {
                        container_id: container_id.clone(),
                        session_id: session_id.clone(),
                        task_id: task_id.clone(),
                    }),
                    Action::MarkLost {
                        container_id,
                        session_id,
                        task_id,
                        silence_ms,
                        interrupt_task,
                        checkpoint_id,
                    } => W::MarkLost(MarkLostAction {
                        container_id: container_id.clone(),
                        session_id: session_id.clone(),
                        task_id: task_id.clone(),
                        silence_ms: *silence_ms,
                        interrupt_task: *interrupt_task,
                        checkpoint_id: checkpoint_id.clone(),
                    }),
                    Action::RequestResume {
                        task_id,
                        session_id,
                        lost_container_id,
                        checkpoint_id,
                        attempt,
                    } => W::RequestResume(RequestResumeAction {
                        task_id: task_id.clone(),
                        session_id: session_id.clone(),
                        lost_container_id: lost_container_id.clone(),
                        checkpoint_id: checkpoint_id.clone(),
                        attempt: *attempt,
                    }),
                    Action::MarkTerminated { container_id } => {
                        W::MarkTerminated(container(container_id))
                    }
                    Action::TerminateStuck { container_id } => {
                        W::TerminateStuck(container(container_id))
                    }
                    Action::ReportOrphan {
                        container_id,
                        known,
                        pid,
                    } => W::ReportOrphan(orphan(container_id, known, pid)),
                    Action::TerminateOrphan {
                        container_id,
                        known,
                        pid,
                    } => W::TerminateOrphan(orphan(container_id, known, pid)),
                    Action::ForgetOrphan { container_id } => {
                        W::ForgetOrphan(container(container_id))
                    }
                    Action::EndSessionProcesses {
                        container_id,
                        session_id,
                        kind,
                        pids,
                        known,
                    } => W::EndSessionProcesses(EndSessionProcessesAction {
                        container_id: container_id.clone(),
                        session_id: session_id.clone(),
                        kind: kind.clone(),
                        pids: pids.clone(),
                        known: *known,
                    }),
                }),
                result: outcome.result.clone(),
                detail: outcome.detail.clone(),
            })
            .collect();
        parhelia_proto::ReconcilerPass {
            started_at_ms: report.started_at_ms,
            finished_at_ms: report.finished_at_ms,
            trigger: report.trigger.clone(),
            dry_run: report.dry_run,
            drift: Some(ReconcilerDrift {
                intended_active: report.drift.intended_active as u64,
                observed: report.drift.observed.map(|n| n as u64),
                missing: report.drift.missing.clone(),
                unexpected: report.drift.unexpected.clone(),
                stale: report.drift.stale.clone(),
            }),
            actions,
            journal_events_ingested: report.journal_events_ingested,
            list_error: report.list_error.clone(),
        }
    }
}

/// A report read off the wire: every action named, every health known, else
/// E500 (a coordinator that does not speak this CLI's contract).
impl TryFrom<parhelia_proto::ReconcilerPass> for PassReport {
    type Error = CodedError;

    fn try_from(wire: parhelia_proto::ReconcilerPass) -> Result<Self, CodedError> {
        use parhelia_proto::reconciler_action_outcome::Action as W;
        let malformed = |what: &str| {
            CodedError::new(
                error_codes::INFRASTRUCTURE_ERROR,
                format!("the coordinator sent a reconciler report {what}"),
            )
        };
        let health = |s: &str| {
            s.parse::<Health>()
                .map_err(|_| malformed(&format!("with an unknown health `{s}`")))
        };
        let mut actions = Vec::with_capacity(wire.actions.len());
        for outcome in wire.actions {
            let action = match outcome
                .action
                .ok_or_else(|| malformed("with an action it did not name"))?
            {
                W::SetHealth(a) => Action::SetHealth {
                    container_id: a.container_id,
                    from: a.from.as_deref().map(health).transpose()?,
                    to: health(&a.to)?,
                    silence_ms: a.silence_ms,
                },
                W::Follow(a) => Action::Follow {
                    container_id: a.container_id,
                    session_id: a.session_id,
                    task_id: a.task_id,
                },
                W::MarkLost(a) => Action::MarkLost {
                    container_id: a.container_id,
                    session_id: a.session_id,
                    task_id: a.task_id,
                    silence_ms: a.silence_ms,
                    interrupt_task: a.interrupt_task,
                    checkpoint_id: a.checkpoint_id,
                },
                W::RequestResume(a) => Action::RequestResume {
                    task_id: a.task_id,
                    session_id: a.session_id,
                    lost_container_id: a.lost_container_id,
                    checkpoint_id: a.checkpoint_id,
                    attempt: a.attempt,
                },
                W::MarkTerminated(a) => Action::MarkTerminated {
                    container_id: a.container_id,
                },
                W::TerminateStuck(a) => Action::TerminateStuck {
                    container_id: a.container_id,
                },
                W::ReportOrphan(a) => Action::ReportOrphan {
                    container_id: a.container_id,
                    known: a.known,
                    pid: a.pid,
                },
                W::TerminateOrphan(a) => Action::TerminateOrphan {
                    container_id: a.container_id,
                    known: a.known,
                    pid: a.pid,
                },
                W::ForgetOrphan(a) => Action::ForgetOrphan {
                    container_id: a.container_id,
                },
                W::EndSessionProcesses(a) => Action::EndSessionProcesses {
                    container_id: a.container_id,
                    session_id: a.session_id,
                    kind: a.kind,
                    pids: a.pids,
                    known: a.known,
                },
            };
            actions.push(ActionOutcome {
                action,
                result: outcome.result,
                detail: outcome.detail,
            });
        }
        let drift = wire.drift.ok_or_else(|| malformed("without its drift"))?;
        Ok(PassReport {
            started_at_ms: wire.started_at_ms,
            finished_at_ms: wire.finished_at_ms,
            trigger: wire.trigger,
            dry_run: wire.dry_run,
            drift: Drift {
                intended_active: usize::try_from(drift.intended_active).unwrap_or(usize::MAX),
                observed: drift
                    .observed
                    .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
                missing: drift.missing,
                unexpected: drift.unexpected,
                stale: drift.stale,
            },
            actions,
            journal_events_ingested: wire.journal_events_ingested,
            list_error: wire.list_error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000;

    fn policy() -> Policy {
        Policy {
            coordinator_id: "coord-ours".into(),
            thresholds: HealthThresholds {
                degraded_after_missed: 3,
                unhealthy_after_missed: 6,
                stale_threshold_ms: 10_000,
            },
            default_heartbeat_interval_ms: 1_000,
            auto_terminate_orphans: false,
            auto_resume: false,
            max_auto_resumes: 2,
            stop_timeout_ms: 5_000,
        }
    }

    fn running(id: &str, silence_ms: i64) -> IntendedContainer {
        IntendedContainer {
            container_id: id.into(),
            session_id: format!("sess-{id}"),
            task_id: format!("task-{id}"),
            backend: "local".into(),
            state: ContainerState::Running,
            health: Some(Health::Healthy),
            heartbeat_interval_ms: Some(1_000),
            created_at_ms: NOW - 100_000,
            started_at_ms: Some(NOW - 90_000),
            last_heartbeat_ms: Some(NOW - silence_ms),
            state_changed_at_ms: NOW - 90_000,
            stop_requested_at_ms: None,
            attended: true,
            task_status: TaskStatus::Running,
            is_latest_for_task: true,
            task_auto_resumes: 0,
            resume_requested: false,
            latest_checkpoint_id: None,
        }
    }

    fn ours(id: &str) -> ObservedContainer {
        ObservedContainer {
            container_id: id.into(),
            session_id: String::new(),
            pid: Some(42),
            endpoint: None,
            coordinator_label: "coord-ours".into(),
        }
    }

    fn listed(list: Vec<ObservedContainer>) -> Observation {
        Observation::listed(list)
    }

    fn names(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| format!("{} {}", a.name(), a.container_id()))
            .collect()
    }

    /// One scenario: intended, observation, policy tweak → expected actions.
    fn check(
        intended: Intended,
        observed: Observation,
        tweak: impl FnOnce(&mut Policy),
        expected: &[&str],
    ) {
        let mut policy = policy();
        tweak(&mut policy);
        let actions = reconcile(&intended, &observed, NOW, &policy);
        assert_eq!(names(&actions), expected, "{actions:#?}");
        let again = reconcile(&apply(&intended, &actions, NOW), &observed, NOW, &policy);
        assert!(again.is_empty(), "not idempotent: {again:#?}");
    }

    fn just(containers: Vec<IntendedContainer>) -> Intended {
        Intended {
            containers,
            orphans: Vec::new(),
        }
    }

    fn leftover(id: &str, pids: &[u32], session: &str) -> LeftoverUnit {
        LeftoverUnit {
            container_id: id.into(),
            session_id: session.into(),
            kind: "cgroup_v1".into(),
            pids: pids.to_vec(),
            recorded: false,
        }
    }

    /// A dead agent's left-over processes are ended (once per container, with the
    /// session the record names); a unit whose agent is listed, an empty unit, and
    /// any unit when listing failed are left alone.
    #[test]
    fn left_over_processes_of_a_dead_agent_are_ended() {
        let policy = policy();
        let intended = just(vec![running("c1", 500)]);
        let found = [
            leftover("c1", &[30, 20, 30], ""),
            leftover("c1", &[99], ""),
            leftover("c2", &[40], "s-x"),
            leftover("c3", &[], "s-y"),
            leftover("c4", &[50], ""),
        ];
        let actions = leftover_actions(&found, &intended, &listed(vec![ours("c4")]), &policy);
        assert_eq!(
            actions,
            vec![
                Action::EndSessionProcesses {
                    container_id: "c1".into(),
                    session_id: intended.containers[0].session_id.clone(),
                    kind: "cgroup_v1".into(),
                    pids: vec![20, 30],
                    known: true,
                },
                Action::EndSessionProcesses {
                    container_id: "c2".into(),
                    session_id: "s-x".into(),
                    kind: "cgroup_v1".into(),
                    pids: vec![40],
                    known: false,
                },
            ]
        );
        assert!(leftover_actions(&found, &intended, &Observation::default(), &policy).is_empty());
        // It changes no record: the container's own rules still apply.
        assert_eq!(apply(&intended, &actions, NOW), intended);
    }

    proptest::proptest! {
        /// Whatever the backend reports, no unit whose agent is listed is ever
        /// ended, every action names a reported unit with processes, and no
        /// container gets two actions.
        #[test]
        fn a_unit_with_a_live_agent_is_never_ended(
            units in proptest::collection::vec(("c[0-4]", proptest::collection::vec(1u32..50, 0..4)), 0..8),
            live in proptest::collection::btree_set("c[0-4]", 0..5),
        ) {
            let found: Vec<LeftoverUnit> = units.iter().map(|(id, pids)| leftover(id, pids, "")).collect();
            let observed = listed(live.iter().map(|id| ours(id)).collect());
            let actions = leftover_actions(&found, &just(vec![]), &observed, &policy());
            let mut seen = BTreeSet::new();
            for action in &actions {
                let id = action.container_id().to_string();
                proptest::prop_assert!(!live.contains(&id));
                proptest::prop_assert!(seen.insert(id.clone()));
                proptest::prop_assert!(found.iter().any(|u| u.container_id == id && !u.pids.is_empty()));
            }
        }
    }

    #[test]
    fn a_listed_container_with_fresh_heartbeats_needs_nothing() {
        check(
            just(vec![running("c1", 500)]),
            listed(vec![ours("c1")]),
            |_| {},
            &[],
        );
    }

    #[test]
    fn lost_needs_both_absence_and_silence() {
        // Absent but heard from recently: a listing glitch, wait.
        check(just(vec![running("c1", 500)]), listed(vec![]), |_| {}, &[]);
        // Silent but listed: sick, not lost.
        check(
            just(vec![running("c1", 20_000)]),
            listed(vec![ours("c1")]),
            |_| {},
            &["set_health c1"],
        );
        // Both: lost.
        check(
            just(vec![running("c1", 20_000)]),
            listed(vec![]),
            |_| {},
            &["mark_lost c1"],
        );
        // Listing failed: nothing ends, health still moves.
        check(
            just(vec![running("c1", 20_000)]),
            Observation::default(),
            |_| {},
            &["set_health c1"],
        );
    }

    #[test]
    fn lost_records_the_checkpoint_and_requests_a_bounded_resume() {
        let mut c = running("c1", 20_000);
        c.latest_checkpoint_id = Some("cp-1-aaaaaaaa".into());
        let actions = reconcile(&just(vec![c.clone()]), &listed(vec![]), NOW, &policy());
        assert!(matches!(
            &actions[..],
            [Action::MarkLost { interrupt_task: true, checkpoint_id: Some(cp), .. }] if cp == "cp-1-aaaaaaaa"
        ));
        check(
            just(vec![c.clone()]),
            listed(vec![]),
            |p| p.auto_resume = true,
            &["mark_lost c1", "request_resume c1"],
        );
        c.task_auto_resumes = 2;
        check(
            just(vec![c]),
            listed(vec![]),
            |p| p.auto_resume = true,
            &["mark_lost c1"],
        );
    }

    #[test]
    fn health_degrades_with_missed_heartbeats() {
        let degraded = running("c1", 3_500);
        let actions = reconcile(
            &just(vec![degraded]),
            &listed(vec![ours("c1")]),
            NOW,
            &policy(),
        );
        assert!(matches!(
            &actions[..],
            [Action::SetHealth {
                to: Health::Degraded,
                from: Some(Health::Healthy),
                ..
            }]
        ));
    }

    /// Modal cannot list: its silent container is not lost (nothing is known of
    /// it), while a silent local container the local backend did not list is.
    #[test]
    fn a_backend_that_cannot_list_does_not_stop_the_others_being_reconciled() {
        let policy = policy();
        let stale = policy.thresholds.stale_threshold_ms + 1;
        let local = running("c1", stale);
        let modal = IntendedContainer {
            backend: "modal".into(),
            ..running("c2", stale)
        };
        let observed = Observation {
            containers: Some(vec![]),
            unlisted: ["modal".to_string()].into(),
        };
        let actions = reconcile(&just(vec![local, modal]), &observed, NOW, &policy);
        let lost: Vec<&str> = actions
            .iter()
            .filter(|a| matches!(a, Action::MarkLost { .. }))
            .map(Action::container_id)
            .collect();
        assert_eq!(lost, ["c1"], "{actions:?}");
    }

    #[test]
    fn unknown_labelled_containers_are_orphans_and_foreign_ones_are_ignored() {
        let mut foreign = ours("x9");
        foreign.coordinator_label = "coord-someone-else".into();
        check(
            Intended::default(),
            listed(vec![ours("x1"), foreign.clone()]),
            |_| {},
            &["report_orphan x1"],
        );
        check(
            Intended::default(),
            listed(vec![ours("x1"), foreign]),
            |p| p.auto_terminate_orphans = true,
            &["report_orphan x1", "terminate_orphan x1"],
        );
        // Once reported and gone, it is forgotten.
        check(
            Intended {
                containers: vec![],
                orphans: vec![KnownOrphan {
                    container_id: "x1".into(),
                    gone: false,
                    terminate_requested_at_ms: None,
                }],
            },
            listed(vec![]),
            |_| {},
            &["forget_orphan x1"],
        );
    }

    #[test]
    fn ended_containers_still_listed_become_orphans_after_the_stop_timeout() {
        let mut ended = running("c1", 0);
        ended.state = ContainerState::Terminated;
        ended.state_changed_at_ms = NOW - 1_000;
        // Just ended: the agent is on its way out.
        check(
            just(vec![ended.clone()]),
            listed(vec![ours("c1")]),
            |_| {},
            &[],
        );
        ended.state_changed_at_ms = NOW - 60_000;
        check(
            just(vec![ended]),
            listed(vec![ours("c1")]),
            |p| p.auto_terminate_orphans = true,
            &["report_orphan c1", "terminate_orphan c1"],
        );
    }

    #[test]
    fn stopping_containers_end_when_gone_or_are_terminated_when_stuck() {
        let mut stopping = running("c1", 0);
        stopping.state = ContainerState::Stopping;
        stopping.stop_requested_at_ms = Some(NOW - 1_000);
        check(
            just(vec![stopping.clone()]),
            listed(vec![ours("c1")]),
            |_| {},
            &[],
        );
        check(
            just(vec![stopping.clone()]),
            listed(vec![]),
            |_| {},
            &["mark_terminated c1"],
        );
        stopping.stop_requested_at_ms = Some(NOW - 30_000);
        check(
            just(vec![stopping]),
            listed(vec![ours("c1")]),
            |_| {},
            &["terminate_stuck c1"],
        );
    }

    #[test]
    fn unattended_listed_containers_are_followed() {
        let mut c = running("c1", 0);
        c.attended = false;
        check(
            just(vec![c]),
            listed(vec![ours("c1")]),
            |_| {},
            &["follow c1"],
        );
    }

    #[test]
    fn drift_counts_the_difference() {
        let mut foreign = ours("x9");
        foreign.coordinator_label = "other".into();
        let d = drift(
            &just(vec![running("c1", 20_000), running("c2", 0)]),
            &listed(vec![ours("c2"), ours("x1"), foreign]),
            NOW,
            &policy(),
        );
        assert_eq!(d.intended_active, 2);
        assert_eq!(d.observed, Some(2));
        assert_eq!(d.missing, vec!["c1"]);
        assert_eq!(d.unexpected, vec!["x1"]);
        assert_eq!(d.stale, vec!["c1"]);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        const IDS: [&str; 6] = ["c0", "c1", "c2", "c3", "c4", "c5"];
        const LABELS: [&str; 3] = ["coord-ours", "coord-other", ""];
        const BACKENDS: [&str; 2] = ["local", "modal"];

        fn container_state() -> impl Strategy<Value = ContainerState> {
            proptest::sample::select(ContainerState::ALL.to_vec())
        }

        fn task_status() -> impl Strategy<Value = TaskStatus> {
            proptest::sample::select(TaskStatus::ALL.to_vec())
        }

        fn health() -> impl Strategy<Value = Option<Health>> {
            proptest::option::of(proptest::sample::select(Health::ALL.to_vec()))
        }

        /// Times around the thresholds, so every rule fires sometimes.
        fn ago() -> impl Strategy<Value = i64> {
            prop_oneof![0i64..2_000, 2_000i64..12_000, 12_000i64..200_000]
        }

        prop_compose! {
            fn intended_container()(
                id in proptest::sample::select(IDS.to_vec()),
                task in 0u8..3,
                state in container_state(),
                health in health(),
                interval in proptest::option::of(prop_oneof![Just(0i64), 100i64..3_000]),
                created in ago(),
                started in proptest::option::of(ago()),
                heartbeat in proptest::option::of(ago()),
                changed in ago(),
                stop in proptest::option::of(ago()),
                attended in any::<bool>(),
                task_status in task_status(),
                auto_resumes in 0u32..4,
                resume_requested in any::<bool>(),
                checkpoint in proptest::option::of(Just("cp-1-00000000".to_string())),
                backend in proptest::sample::select(BACKENDS.to_vec()),
            ) -> IntendedContainer {
                IntendedContainer {
                    container_id: id.to_string(),
                    session_id: format!("sess-{id}"),
                    task_id: format!("task-{task}"),
                    backend: backend.to_string(),
                    state,
                    health,
                    heartbeat_interval_ms: interval,
                    created_at_ms: NOW - created,
                    started_at_ms: started.map(|s| NOW - s),
                    last_heartbeat_ms: heartbeat.map(|h| NOW - h),
                    state_changed_at_ms: NOW - changed,
                    stop_requested_at_ms: stop.map(|s| NOW - s),
                    attended,
                    task_status,
                    is_latest_for_task: false,
                    task_auto_resumes: auto_resumes,
                    resume_requested,
                    latest_checkpoint_id: checkpoint,
                }
            }
        }

        prop_compose! {
            fn observed_container()(
                id in proptest::sample::select(IDS.to_vec()),
                label in proptest::sample::select(LABELS.to_vec()),
                pid in proptest::option::of(1u32..100_000),
            ) -> ObservedContainer {
                ObservedContainer {
                    container_id: id.to_string(),
                    session_id: String::new(),
                    pid,
                    endpoint: None,
                    coordinator_label: label.to_string(),
                }
            }
        }

        prop_compose! {
            fn known_orphan()(
                id in proptest::sample::select(IDS.to_vec()),
                gone in any::<bool>(),
                requested in proptest::option::of(ago()),
            ) -> KnownOrphan {
                KnownOrphan {
                    container_id: id.to_string(),
                    gone,
                    terminate_requested_at_ms: requested.map(|r| NOW - r),
                }
            }
        }

        /// A consistent intended state: unique container ids, one task row
        /// per task (status and resume count shared by its containers), and
        /// exactly one latest container per task.
        fn intended() -> impl Strategy<Value = Intended> {
            (
                proptest::collection::vec(intended_container(), 0..6),
                proptest::collection::vec(known_orphan(), 0..3),
            )
                .prop_map(|(containers, orphans)| {
                    let mut seen = BTreeSet::new();
                    let mut containers: Vec<IntendedContainer> = containers
                        .into_iter()
                        .filter(|c| seen.insert(c.container_id.clone()))
                        .collect();
                    let mut tasks: BTreeMap<String, (TaskStatus, u32)> = BTreeMap::new();
                    for c in &containers {
                        tasks
                            .entry(c.task_id.clone())
                            .or_insert((c.task_status, c.task_auto_resumes));
                    }
                    let mut latest_seen = BTreeSet::new();
                    for c in containers.iter_mut().rev() {
                        let (status, resumes) = tasks[&c.task_id];
                        c.task_status = status;
                        c.task_auto_resumes = resumes;
                        c.is_latest_for_task = latest_seen.insert(c.task_id.clone());
                    }
                    let mut orphan_ids = BTreeSet::new();
                    let orphans = orphans
                        .into_iter()
                        .filter(|o| orphan_ids.insert(o.container_id.clone()))
                        .collect();
                    Intended {
                        containers,
                        orphans,
                    }
                })
        }

        fn observation() -> impl Strategy<Value = Observation> {
            prop_oneof![
                1 => Just(Observation::unknown()),
                4 => (
                    proptest::collection::vec(observed_container(), 0..6),
                    proptest::collection::btree_set(proptest::sample::select(BACKENDS.to_vec()), 0..2),
                )
                    .prop_map(|(list, unlisted)| Observation {
                        containers: Some(list),
                        unlisted: unlisted.into_iter().map(str::to_string).collect(),
                    }),
            ]
        }

        fn any_policy() -> impl Strategy<Value = Policy> {
            (any::<bool>(), any::<bool>(), 0u32..3).prop_map(|(terminate, resume, max)| Policy {
                auto_terminate_orphans: terminate,
                auto_resume: resume,
                max_auto_resumes: max,
                ..policy()
            })
        }

        fn ours_listed(observed: &Observation) -> BTreeSet<String> {
            observed
                .containers
                .iter()
                .flatten()
                .filter(|c| c.coordinator_label == "coord-ours")
                .map(|c| c.container_id.clone())
                .collect()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2_000))]

            /// Running the step on the state its own actions produce (same
            /// observation, same time) produces no new action.
            #[test]
            fn reconcile_is_idempotent(
                intended in intended(),
                observed in observation(),
                policy in any_policy(),
            ) {
                let first = reconcile(&intended, &observed, NOW, &policy);
                let after = apply(&intended, &first, NOW);
                let second = reconcile(&after, &observed, NOW, &policy);
                prop_assert!(second.is_empty(), "first: {first:#?}\nsecond: {second:#?}");
            }

            /// Containers without our label are never acted on; every
            /// termination and follow names one listed container of ours.
            #[test]
            fn never_acts_on_containers_without_our_label(
                intended in intended(),
                observed in observation(),
                policy in any_policy(),
            ) {
                let ours = ours_listed(&observed);
                let recorded: BTreeSet<String> = intended
                    .containers
                    .iter()
                    .map(|c| c.container_id.clone())
                    .chain(intended.orphans.iter().map(|o| o.container_id.clone()))
                    .collect();
                for action in reconcile(&intended, &observed, NOW, &policy) {
                    let id = action.container_id().to_string();
                    prop_assert!(ours.contains(&id) || recorded.contains(&id), "{action:?}");
                    if matches!(
                        action,
                        Action::TerminateOrphan { .. }
                            | Action::TerminateStuck { .. }
                            | Action::Follow { .. }
                            | Action::ReportOrphan { .. }
                    ) {
                        prop_assert!(ours.contains(&id), "{action:?} on a container not listed as ours");
                    }
                }
            }

            /// When the backend could not list, nothing ends and nothing is
            /// terminated: only health moves.
            #[test]
            fn a_failed_listing_only_moves_health(
                intended in intended(),
                policy in any_policy(),
            ) {
                let actions = reconcile(&intended, &Observation::unknown(), NOW, &policy);
                for action in actions {
                    prop_assert!(matches!(action, Action::SetHealth { .. }), "{action:?}");
                }
            }

            /// A backend that could not list blinds only its own containers:
            /// none of them is ended, terminated, lost or reported, whatever the
            /// other backends listed (which is all the pass knows of).
            #[test]
            fn a_backend_that_cannot_list_blinds_only_its_own_containers(
                intended in intended(),
                observed in observation(),
                policy in any_policy(),
            ) {
                let blind: BTreeSet<&str> = intended
                    .containers
                    .iter()
                    .filter(|c| !observed.knows_backend(&c.backend))
                    .map(|c| c.container_id.as_str())
                    .collect();
                for action in reconcile(&intended, &observed, NOW, &policy) {
                    if matches!(action, Action::SetHealth { .. }) {
                        continue;
                    }
                    prop_assert!(
                        !blind.contains(action.container_id()),
                        "{action:?} on a container whose backend did not list ({:?})",
                        observed.unlisted
                    );
                }
                let drift = drift(&intended, &observed, NOW, &policy);
                for id in &drift.missing {
                    prop_assert!(!blind.contains(id.as_str()), "{id} reported missing");
                }
            }

            /// An empty list with fresh heartbeats marks nothing lost: loss
            /// needs the backend's absence *and* heartbeat staleness.
            #[test]
            fn loss_needs_absence_and_staleness(
                intended in intended(),
                observed in observation(),
                policy in any_policy(),
            ) {
                let ours = ours_listed(&observed);
                for action in reconcile(&intended, &observed, NOW, &policy) {
                    if let Action::MarkLost { container_id, silence_ms, .. } = &action {
                        prop_assert!(observed.containers.is_some());
                        prop_assert!(!ours.contains(container_id));
                        prop_assert!(*silence_ms > policy.thresholds.stale_threshold_ms);
                    }
                    if let Action::RequestResume { attempt, .. } = &action {
                        prop_assert!(policy.auto_resume);
                        prop_assert!(*attempt <= policy.max_auto_resumes);
                    }
                }
            }
        }
    }

    /// Every action and optional field survives the typed wire form, so
    /// `RunReconciler` says exactly what the stored report says.
    #[test]
    fn a_report_round_trips_through_its_wire_form() {
        let outcome = |action| ActionOutcome {
            action,
            result: "done".into(),
            detail: None,
        };
        let report = PassReport {
            started_at_ms: 10,
            finished_at_ms: 25,
            trigger: "cleanup".into(),
            dry_run: true,
            drift: Drift {
                intended_active: 2,
                observed: Some(3),
                missing: vec!["c-1".into()],
                unexpected: vec!["c-9".into()],
                stale: vec!["c-2".into()],
            },
            actions: vec![
                outcome(Action::SetHealth {
                    container_id: "c-2".into(),
                    from: None,
                    to: Health::Degraded,
                    silence_ms: 4_000,
                }),
                outcome(Action::SetHealth {
                    container_id: "c-2".into(),
                    from: Some(Health::Healthy),
                    to: Health::Dead,
                    silence_ms: 9_000,
                }),
                outcome(Action::Follow {
                    container_id: "c-3".into(),
                    session_id: "s-3".into(),
                    task_id: "t-3".into(),
                }),
                ActionOutcome {
                    action: Action::MarkLost {
                        container_id: "c-1".into(),
                        session_id: "s-1".into(),
                        task_id: "t-1".into(),
                        silence_ms: 12_000,
                        interrupt_task: true,
                        checkpoint_id: Some("cp-1".into()),
                    },
                    result: "failed".into(),
                    detail: Some("why".into()),
                },
                outcome(Action::RequestResume {
                    task_id: "t-1".into(),
                    session_id: "s-1".into(),
                    lost_container_id: "c-1".into(),
                    checkpoint_id: None,
                    attempt: 2,
                }),
                outcome(Action::MarkTerminated {
                    container_id: "c-4".into(),
                }),
                outcome(Action::TerminateStuck {
                    container_id: "c-5".into(),
                }),
                outcome(Action::ReportOrphan {
                    container_id: "c-9".into(),
                    known: false,
                    pid: Some(42),
                }),
                outcome(Action::TerminateOrphan {
                    container_id: "c-9".into(),
                    known: true,
                    pid: None,
                }),
                outcome(Action::ForgetOrphan {
                    container_id: "c-8".into(),
                }),
                outcome(Action::EndSessionProcesses {
                    container_id: "c-7".into(),
                    session_id: String::new(),
                    kind: "cgroup".into(),
                    pids: vec![7, 8],
                    known: false,
                }),
            ],
            journal_events_ingested: 5,
            list_error: Some("listing failed".into()),
        };
        let wire = parhelia_proto::ReconcilerPass::from(&report);
        assert_eq!(PassReport::try_from(wire).unwrap(), report);
        let failed_listing = PassReport {
            drift: Drift {
                observed: None,
                ..report.drift.clone()
            },
            list_error: None,
            ..report
        };
        let wire = parhelia_proto::ReconcilerPass::from(&failed_listing);
        assert_eq!(PassReport::try_from(wire).unwrap(), failed_listing);
    }

    #[test]
    fn a_wire_report_with_an_unnamed_action_or_unknown_health_is_e500() {
        let mut wire = parhelia_proto::ReconcilerPass {
            drift: Some(Default::default()),
            actions: vec![parhelia_proto::ReconcilerActionOutcome::default()],
            ..Default::default()
        };
        let err = PassReport::try_from(wire.clone()).unwrap_err();
        assert_eq!(err.code, error_codes::INFRASTRUCTURE_ERROR);
        wire.actions[0].action = Some(
            parhelia_proto::reconciler_action_outcome::Action::SetHealth(
                parhelia_proto::SetHealthAction {
                    to: "sickly".into(),
                    ..Default::default()
                },
            ),
        );
        let err = PassReport::try_from(wire).unwrap_err();
        assert_eq!(err.code, error_codes::INFRASTRUCTURE_ERROR);
        assert!(err.message.contains("sickly"), "{}", err.message);
    }
}
