//! The gateway's short commands: `parhelia submit` (= `task create`) and
//! `parhelia attach` (= `session attach`), and [`session_id_of`], which lets
//! every `session` command that names one session take a task id instead.
//!
//! A task id stands for the task's current session, as the coordinator
//! recorded it (`tasks.session_id`, the latest attempt's). The lookup reads
//! the coordinator's database, as every read command does; a wrong task id
//! is E201, a task with no session yet E202, a wrong session id E202 (from
//! the command itself, as before).

use anyhow::Result;
use clap::Args;

use super::Ctx;
use crate::error::coded;
use crate::error_codes;
use crate::ids::TASK_PREFIX;

/// `parhelia attach ID`.
#[derive(Args, Debug)]
pub struct AttachArgs {
    /// A task id (its current session) or a session id
    #[arg(value_name = "TASK_OR_SESSION_ID")]
    pub id: String,
    /// Watch only: no keystroke is ever sent (Ctrl-b d or Ctrl-c leaves)
    #[arg(long)]
    pub read_only: bool,
}

/// The session `id` names: itself, or a task's current session.
pub(crate) fn session_id_of(ctx: &Ctx, id: &str) -> Result<String> {
    if !id.starts_with(TASK_PREFIX) {
        return Ok(id.to_string());
    }
    let opened = ctx.open()?;
    let task = opened
        .db
        .get_task(id)?
        .ok_or_else(|| coded(error_codes::TASK_NOT_FOUND, format!("task not found: {id}")))?;
    task.session_id.ok_or_else(|| {
        coded(
            error_codes::SESSION_NOT_FOUND,
            match task.status {
                crate::task_state::TaskStatus::Pending => format!(
                    "task {id} has no session yet (it is pending); `parhelia task dispatch {id}` starts it"
                ),
                status => format!("task {id} has no session (it is {status})"),
            },
        )
    })
}

/// `parhelia attach ID`.
pub async fn attach(ctx: &Ctx, args: AttachArgs) -> Result<i32> {
    let session_id = session_id_of(ctx, &args.id)?;
    super::session::attach(ctx, &session_id, args.read_only).await
}
