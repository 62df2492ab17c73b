//! The advice printed under an error, chosen by its cause. The table of codes
//! itself is a contract shared with the agent and the checkpoint crate
//! (`parhelia_contract::codes`, re-exported here).

pub use parhelia_contract::codes::*;

/// What is known about why a task ended with an error: it picks the
/// advice printed under the error (the table's `recover` text is the
/// fallback). Gathered from the session's events by [`Cause::observe`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cause {
    pub task_id: String,
    pub session_id: Option<String>,
    /// The task's (last) container, whose runtime directory holds the agent's log.
    pub container_id: Option<String>,
    /// The failed turn's `api_error_status` (0: none).
    pub http_status: u32,
    /// The failed turn's result subtype (`success` with an error, `error_max_turns`…).
    pub subtype: String,
    /// `retry` events Claude Code reported since the last turn started.
    pub api_retries: u32,
    /// The largest retry budget those events name.
    pub max_retries: u32,
    /// The last retry's pause, in ms (the API's `retry-after` when it sent one).
    pub retry_delay_ms: u64,
    /// Why a stop was asked for (`task cancel`, `session kill`, budget…).
    pub stop_reason: Option<String>,
}

impl Cause {
    pub fn new(task_id: &str, session_id: Option<&str>) -> Self {
        Cause {
            task_id: task_id.to_string(),
            session_id: session_id.map(str::to_string),
            ..Cause::default()
        }
    }

    /// Folds in one of the session's events, in journal order.
    pub fn observe(&mut self, event: &parhelia_proto::Event) {
        use parhelia_proto::event::Kind;
        match &event.kind {
            Some(Kind::SessionStarted(_)) => {
                // A new container (a retry or resume): only its events count.
                *self = Cause {
                    task_id: std::mem::take(&mut self.task_id),
                    session_id: self.session_id.take(),
                    container_id: self.container_id.take(),
                    ..Cause::default()
                };
            }
            Some(Kind::InputAccepted(_)) | Some(Kind::ClaudeInit(_)) => {
                // A new turn: the retries counted belong to it.
                self.api_retries = 0;
                self.max_retries = 0;
                self.retry_delay_ms = 0;
            }
            Some(Kind::ApiRetry(r)) => {
                self.api_retries = self.api_retries.saturating_add(1);
                self.max_retries = self.max_retries.max(r.max_retries);
                self.retry_delay_ms = r.retry_delay_ms;
                if self.http_status == 0 {
                    self.http_status = r.error_status;
                }
            }
            Some(Kind::TurnResult(t)) => {
                self.subtype = t.subtype.clone();
                self.http_status = t.api_error_status;
            }
            Some(Kind::StopRequested(s)) => self.stop_reason = Some(s.reason.clone()),
            _ => {}
        }
    }

    fn resume_command(&self) -> String {
        match &self.session_id {
            Some(id) => format!("`parhelia resume {id} -m \"go on\"`"),
            None => "`parhelia resume SESSION_ID -m \"go on\"`".to_string(),
        }
    }

    fn retry_command(&self) -> String {
        format!("`parhelia task retry {}`", self.task_id)
    }

    /// The agent's log, relative to the state directory.
    fn agent_log(&self) -> String {
        format!(
            "`containers/{}/runtime/agent.log`",
            self.container_id.as_deref().unwrap_or("<container-id>")
        )
    }
}

/// The advice for `code` given what caused it; `None` when the table's
/// `recover` text is the right one.
pub fn advice(code: &ErrorCode, cause: &Cause) -> Option<String> {
    let resume = cause.resume_command();
    let retry = cause.retry_command();
    let status = cause.http_status;
    match code.code {
        "E600" if cause.subtype == "error_max_turns" => Some(format!(
            "It stopped at its turn limit (`--max-turns`); {resume} continues from its last checkpoint with the work kept."
        )),
        "E600" if (400..500).contains(&status) => Some(format!(
            "The model API refused the request as invalid (HTTP {status}), so more turns or retries would not help: read the message above (often a model name Claude Code does not know, or a request too large), fix that, then {retry}."
        )),
        "E600" => Some(format!(
            "Read what failed with `parhelia task watch {}`; {resume} continues with the work kept.",
            cause.task_id
        )),
        "E505" if cause.api_retries == 0 => Some(format!(
            "The API answered{} and said not to retry, so Claude Code made one request and stopped; raising `CLAUDE_CODE_MAX_RETRIES` would not help. Wait, then {resume} (the work is kept) or {retry}.",
            if status != 0 {
                format!(" HTTP {status}")
            } else {
                String::new()
            }
        )),
        "E505" => Some(format!(
            "The API kept failing{} through {} of Claude Code's retries{}: try again later with {resume} (the work is kept), or raise `CLAUDE_CODE_MAX_RETRIES` (it allowed {}).",
            if status != 0 {
                format!(" (HTTP {status})")
            } else {
                String::new()
            },
            cause.api_retries,
            if cause.retry_delay_ms > 0 {
                format!(
                    ", the last after a pause of {} s the API asked for",
                    cause.retry_delay_ms.div_ceil(1000)
                )
            } else {
                String::new()
            },
            cause.max_retries.max(cause.api_retries)
        )),
        "E601" => Some(format!(
            "It was stopped on request{}; the work up to its final checkpoint is kept: {resume} continues it ({retry} starts over).",
            cause
                .stop_reason
                .as_deref()
                .filter(|r| !r.is_empty())
                .map(|r| format!(
                    " ({})",
                    crate::term::escape_untrusted_text(&crate::render::one_line(r, 80))
                ))
                .unwrap_or_default()
        )),
        "E502" => Some(format!(
            "Read {} in the state directory: it says why the agent stopped. If the agent lives elsewhere, set `PARHELIA_AGENT_BIN` and restart the coordinator (`parhelia coordinator stop`; the next command starts it with your environment), then {retry}.",
            cause.agent_log()
        )),
        "E503" => Some(format!(
            "Its agent is gone (its log, {} in the state directory, shows what it did last); the work up to its latest checkpoint is kept: {resume} continues it (`parhelia session recover {}` shows which checkpoint).",
            cause.agent_log(),
            cause.session_id.as_deref().unwrap_or("SESSION_ID")
        )),
        "E301" => Some(format!(
            "It ran for its `--timeout` and was stopped after a final checkpoint; {resume} continues from there with a fresh time limit of the same length ({retry} starts over; pass a larger `--timeout` to a new task)."
        )),
        "E516" => Some(format!(
            "Everything written before the disk filled is intact. Free space (`df -h` on the state directory; `parhelia checkpoint list {sid}` shows store sizes, retention settings prune), then `parhelia resume {sid}` continues from its latest checkpoint.",
            sid = cause.session_id.as_deref().unwrap_or("SESSION_ID")
        )),
        "E602" => Some(format!(
            "Nothing ran to the end; {resume} continues from its latest checkpoint (`parhelia session recover {}` shows which).",
            cause.session_id.as_deref().unwrap_or("SESSION_ID")
        )),
        _ => None,
    }
}
