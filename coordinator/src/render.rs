//! Turning events into the readable lines `task watch` and `--sync` print.
//! Pure: an event in, at most one (possibly multi-line) string out.
//!
//! Every line starts with a label padded to 9 columns, so a stream of them
//! reads as two columns; continuation lines are indented to the same column.

use parhelia_proto::{Event, SessionOutcome, SessionStatus, event::Kind};

const LABEL_WIDTH: usize = 9;
/// Longest summary of a tool input or result shown on one line.
const SUMMARY_CHARS: usize = 100;

/// The line for one event, or `None` for events that are not worth a line
/// (busy/idle status changes, events of unknown kind).
pub fn render_event(event: &Event) -> Option<String> {
    let kind = event.kind.as_ref()?;
    let (label, text) = match kind {
        Kind::SessionStarted(s) => {
            let mut text = format!(
                "{} · model {}",
                if s.resumed { "resumed" } else { "started" },
                non_empty_or(&s.model, "default")
            );
            if !s.workspace_path.is_empty() {
                text.push_str(&format!(" · {}", s.workspace_path));
            }
            ("session", text)
        }
        Kind::ClaudeInit(i) => (
            "claude",
            format!(
                "Claude Code {} · model {} · {} tools",
                non_empty_or(&i.claude_code_version, "(unknown version)"),
                non_empty_or(&i.model, "default"),
                i.tools.len()
            ),
        ),
        Kind::AssistantText(t) => {
            let text = t.text.trim();
            if text.is_empty() {
                return None;
            }
            if t.parent_tool_use_id.is_empty() {
                ("claude", text.to_string())
            } else {
                ("subagent", text.to_string())
            }
        }
        Kind::SubagentStarted(a) => (
            "subagent",
            format!(
                "started{}{}",
                if a.subagent_type.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", one_line(&a.subagent_type, 60))
                },
                if a.description.is_empty() {
                    String::new()
                } else {
                    format!(": {}", one_line(&a.description, SUMMARY_CHARS))
                }
            ),
        ),
        Kind::SubagentFinished(f) => (
            "subagent",
            format!(
                "{}{}{}",
                if f.is_error {
                    format!(
                        "ended {}",
                        non_empty_or(&one_line(&f.status, 40), "unknown")
                    )
                } else {
                    "finished".to_string()
                },
                if f.subagent_type.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", one_line(&f.subagent_type, 60))
                },
                if f.summary.trim().is_empty() {
                    String::new()
                } else {
                    format!(": {}", one_line(f.summary.trim(), SUMMARY_CHARS))
                }
            ),
        ),
        Kind::ToolCall(c) => {
            let summary = tool_input_summary(&c.name, &c.input_json);
            let text = if summary.is_empty() {
                c.name.clone()
            } else {
                format!("{} {summary}", c.name)
            };
            ("tool", text)
        }
        Kind::ToolResult(r) => {
            let brief = brief_content(&r.content, r.truncated);
            let text = match (r.is_error, brief.is_empty()) {
                (true, true) => "error".to_string(),
                (true, false) => format!("error: {brief}"),
                (false, true) => "ok".to_string(),
                (false, false) => brief,
            };
            ("result", text)
        }
        Kind::ApiRetry(r) => {
            let mut text = String::from("API error");
            if r.error_status != 0 {
                text.push_str(&format!(" {}", r.error_status));
            }
            if !r.error.is_empty() {
                text.push_str(&format!(" ({})", one_line(&r.error, 60)));
            }
            text.push_str(&format!(
                " · attempt {}/{} · retrying in {}",
                r.attempt,
                r.max_retries,
                duration(r.retry_delay_ms)
            ));
            ("retry", text)
        }
        Kind::TurnResult(t) => {
            let mut parts = Vec::new();
            if t.is_error {
                // Claude Code reports a failed API call as subtype `success`
                // with `is_error`: that subtype says nothing, the status does.
                let subtype =
                    (!t.subtype.is_empty() && t.subtype != "success").then_some(t.subtype.as_str());
                let head = match (subtype, t.api_error_status) {
                    (Some(subtype), 0) => format!("error ({subtype})"),
                    (Some(subtype), status) => format!("error ({subtype}, HTTP {status})"),
                    (None, 0) => "error".to_string(),
                    (None, status) => format!("error (HTTP {status})"),
                };
                parts.push(head);
            } else {
                parts.push(non_empty_or(&t.subtype, "done").to_string());
            }
            parts.push(format!(
                "{} turn{}",
                t.num_turns,
                if t.num_turns == 1 { "" } else { "s" }
            ));
            parts.push(duration(t.duration_ms));
            parts.push(cost(t.session_cost_usd));
            let mut text = parts.join(" · ");
            if t.is_error && !t.result.trim().is_empty() {
                text.push_str(&format!("\n{}", one_line(&t.result, SUMMARY_CHARS)));
            }
            ("turn", text)
        }
        Kind::StatusChanged(s) => {
            if s.status != SessionStatus::NeedsInput as i32 {
                return None;
            }
            let text = if s.detail.is_empty() {
                "needs input".to_string()
            } else {
                format!("needs input: {}", one_line(&s.detail, SUMMARY_CHARS))
            };
            ("status", text)
        }
        Kind::InputAccepted(i) => (
            "input",
            format!(
                "{}{}",
                one_line(&i.text, SUMMARY_CHARS),
                if i.queued {
                    " (queued for the next turn)"
                } else {
                    ""
                }
            ),
        ),
        Kind::ClaudeExited(e) => (
            "exit",
            format!(
                "Claude Code exited with status {}{}{}",
                e.exit_code,
                if e.had_result {
                    ""
                } else {
                    ", without a result"
                },
                if e.request_in_flight {
                    "; a model request was in flight: its spend is unknown"
                } else {
                    ""
                }
            ),
        ),
        Kind::SessionFinished(f) => {
            let mut parts = vec![outcome_name(f.outcome).to_string()];
            let message = one_line(&f.error_message, SUMMARY_CHARS);
            match (f.error_code.is_empty(), message.is_empty()) {
                (true, true) => {}
                (false, true) => parts[0].push_str(&format!(": [{}]", f.error_code)),
                (true, false) => parts[0].push_str(&format!(": {message}")),
                (false, false) => parts[0].push_str(&format!(": [{}] {message}", f.error_code)),
            }
            parts.push(cost(f.session_cost_usd));
            ("finished", parts.join(" · "))
        }
        Kind::AgentError(e) => (
            "error",
            if e.code.is_empty() {
                e.message.clone()
            } else {
                format!("[{}] {}", e.code, e.message)
            },
        ),
        Kind::StopRequested(s) => (
            "stop",
            format!("requested: {}", non_empty_or(&s.reason, "no reason given")),
        ),
        Kind::CheckpointCreated(c) => {
            if c.skipped {
                return None;
            }
            let mut text = format!(
                "{} ({}) · {} files · {} new",
                c.checkpoint_id,
                c.trigger,
                c.file_count,
                bytes(c.new_bytes)
            );
            if !c.message.is_empty() {
                text.push_str(&format!(" · {}", one_line(&c.message, 60)));
            }
            ("checkpt", text)
        }
        Kind::CheckpointFailed(c) => (
            "checkpt",
            format!(
                "failed ({}): [{}] {}",
                c.trigger,
                c.error_code,
                one_line(&c.error_message, SUMMARY_CHARS)
            ),
        ),
        Kind::ModelSpend(s) => {
            let usage = s.usage.unwrap_or_default();
            let mut text = format!(
                "{}{} · {} in / {} out",
                non_empty_or(&one_line(&s.model, 60), "(unknown model)"),
                if s.subagent { " (subagent)" } else { "" },
                usage.input_tokens,
                usage.output_tokens
            );
            if usage.cache_creation_input_tokens > 0 || usage.cache_read_input_tokens > 0 {
                text.push_str(&format!(
                    " · cache {} written / {} read",
                    usage.cache_creation_input_tokens, usage.cache_read_input_tokens
                ));
            }
            if s.priced {
                text.push_str(&format!(" · +{}", cost(s.cost_usd)));
            } else {
                text.push_str(" · unpriced");
            }
            text.push_str(&format!(" · total {}", cost(s.session_cost_usd)));
            ("spend", text)
        }
        Kind::StoreOverQuota(q) => (
            "checkpt",
            format!(
                "[{}] store over its quota after pruning: {} of {} · {} kept",
                non_empty_or(
                    &q.error_code,
                    parhelia_contract::codes::CHECKPOINT_QUOTA.code
                ),
                bytes(q.store_bytes),
                bytes(q.quota_bytes),
                q.checkpoint_id
            ),
        ),
        Kind::CheckpointRestored(r) => (
            "restored",
            format!(
                "{} · {} files · {} removed",
                r.checkpoint_id, r.files, r.removed
            ),
        ),
    };
    // Almost every text here came from the session: escape it before it
    // reaches a terminal (our own parts have no control characters).
    Some(labelled(label, &crate::term::escape_untrusted_text(&text)))
}

/// A byte count for people: `512 B`, `1.5 KiB`, `3.2 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `label` padded, then `text`; later lines indented under the text.
pub fn labelled(label: &str, text: &str) -> String {
    let indent = " ".repeat(LABEL_WIDTH);
    let mut out = String::new();
    for (i, line) in text.lines().enumerate() {
        if i == 0 {
            out.push_str(&format!("{label:<LABEL_WIDTH$}{line}"));
        } else {
            out.push('\n');
            out.push_str(&indent);
            out.push_str(line);
        }
    }
    if out.is_empty() {
        out = label.to_string();
    }
    out.trim_end().to_string()
}

pub fn outcome_name(outcome: i32) -> &'static str {
    match SessionOutcome::try_from(outcome).unwrap_or(SessionOutcome::Unspecified) {
        SessionOutcome::Succeeded => "succeeded",
        SessionOutcome::Failed => "failed",
        SessionOutcome::Cancelled => "cancelled",
        SessionOutcome::Interrupted => "interrupted",
        SessionOutcome::Unspecified => "ended",
    }
}

/// `$0.0123`.
pub fn cost(usd: f64) -> String {
    format!("${usd:.4}")
}

/// `850ms`, `4.2s`, `3m05s`, `1h02m`.
pub fn duration(ms: u64) -> String {
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1_000.0)
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1_000)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, (ms % 3_600_000) / 60_000)
    }
}

fn non_empty_or<'a>(s: &'a str, default: &'a str) -> &'a str {
    if s.is_empty() { default } else { s }
}

/// The first non-empty line, cut to `max` characters, with `…` when
/// anything was left out.
pub fn one_line(text: &str, max: usize) -> String {
    let trimmed = text.trim();
    let first = trimmed
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let mut out: String = first.chars().take(max).collect();
    if first.chars().count() > max || first.len() < trimmed.len() {
        out.push('…');
    }
    out
}

fn brief_content(content: &str, truncated: bool) -> String {
    let mut brief = one_line(content, SUMMARY_CHARS);
    let extra_lines = content.trim().lines().count().saturating_sub(1);
    if extra_lines > 0 {
        brief = format!(
            "{} (+{extra_lines} line{})",
            brief.trim_end_matches('…'),
            if extra_lines == 1 { "" } else { "s" }
        );
    } else if truncated && !brief.ends_with('…') {
        brief.push('…');
    }
    brief
}

/// A short summary of a tool call's input: the one field that says what the
/// call does (the command, the file, the pattern…).
pub fn tool_input_summary(tool: &str, input_json: &str) -> String {
    let Ok(input) = serde_json::from_str::<serde_json::Value>(input_json) else {
        return one_line(input_json, SUMMARY_CHARS);
    };
    let field = |name: &str| input.get(name).and_then(|v| v.as_str()).map(str::to_string);
    let summary = match tool {
        "Bash" => field("command").map(|c| format!("$ {c}")),
        "Write" => {
            field("file_path").map(|p| match input.get("content").and_then(|c| c.as_str()) {
                Some(content) => format!("{p} ({} bytes)", content.len()),
                None => p,
            })
        }
        "Read" | "Edit" | "MultiEdit" => field("file_path"),
        "NotebookEdit" => field("notebook_path"),
        "Glob" | "Grep" => field("pattern").map(|p| match field("path") {
            Some(path) => format!("{p} in {path}"),
            None => p,
        }),
        "WebFetch" => field("url"),
        "WebSearch" => field("query"),
        "Task" => field("description"),
        "TodoWrite" => input
            .get("todos")
            .and_then(|t| t.as_array())
            .map(|t| format!("{} item{}", t.len(), if t.len() == 1 { "" } else { "s" })),
        _ => None,
    };
    match summary {
        Some(s) => one_line(&s, SUMMARY_CHARS),
        None if input.as_object().is_some_and(|o| o.is_empty()) => String::new(),
        None => one_line(&input.to_string(), SUMMARY_CHARS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parhelia_proto::*;

    fn check(kind: Kind, expected: Option<&str>) {
        let event = Event {
            seq: 1,
            ts_ms: 0,
            kind: Some(kind),
        };
        assert_eq!(render_event(&event).as_deref(), expected);
    }

    #[test]
    fn session_and_claude_lines() {
        check(
            Kind::SessionStarted(SessionStarted {
                workspace_path: "/w".into(),
                ..Default::default()
            }),
            Some("session  started · model default · /w"),
        );
        check(
            Kind::ClaudeInit(ClaudeInit {
                model: "claude-sonnet-4-5".into(),
                tools: vec!["Bash".into(), "Write".into()],
                claude_code_version: "2.1.3".into(),
                ..Default::default()
            }),
            Some("claude   Claude Code 2.1.3 · model claude-sonnet-4-5 · 2 tools"),
        );
        check(
            Kind::AssistantText(AssistantText {
                message_id: "m".into(),
                text: "I'll write it.\nThen check.\n".into(),
                ..Default::default()
            }),
            Some("claude   I'll write it.\n         Then check."),
        );
        check(Kind::AssistantText(AssistantText::default()), None);
    }

    #[test]
    fn tool_lines() {
        let call = |name: &str, input: &str| {
            Kind::ToolCall(ToolCall {
                tool_use_id: "t".into(),
                name: name.into(),
                input_json: input.into(),
                ..Default::default()
            })
        };
        check(
            call("Write", r#"{"file_path":"/w/hello.txt","content":"hi\n"}"#),
            Some("tool     Write /w/hello.txt (3 bytes)"),
        );
        check(
            call("Bash", r#"{"command":"ls -la\necho done"}"#),
            Some("tool     Bash $ ls -la…"),
        );
        check(
            call("Grep", r#"{"pattern":"fn main","path":"src"}"#),
            Some("tool     Grep fn main in src"),
        );
        check(
            call("Mystery", r#"{"a":1}"#),
            Some(r#"tool     Mystery {"a":1}"#),
        );
        check(call("Mystery", "{}"), Some("tool     Mystery"));
        check(
            Kind::ToolResult(ToolResult {
                content: "line one\nline two\nline three".into(),
                ..Default::default()
            }),
            Some("result   line one (+2 lines)"),
        );
        check(
            Kind::ToolResult(ToolResult {
                is_error: true,
                content: "No such file".into(),
                ..Default::default()
            }),
            Some("result   error: No such file"),
        );
        check(Kind::ToolResult(ToolResult::default()), Some("result   ok"));
    }

    #[test]
    fn retry_turn_and_finish_lines() {
        check(
            Kind::ApiRetry(ApiRetry {
                attempt: 2,
                max_retries: 10,
                retry_delay_ms: 1_200,
                error_status: 529,
                error: "overloaded_error".into(),
            }),
            Some("retry    API error 529 (overloaded_error) · attempt 2/10 · retrying in 1.2s"),
        );
        check(
            Kind::TurnResult(TurnResult {
                subtype: "success".into(),
                num_turns: 3,
                duration_ms: 4_200,
                session_cost_usd: 0.01234,
                ..Default::default()
            }),
            Some("turn     success · 3 turns · 4.2s · $0.0123"),
        );
        check(
            Kind::TurnResult(TurnResult {
                subtype: "success".into(),
                is_error: true,
                api_error_status: 500,
                result: "API Error: 500 boom".into(),
                num_turns: 1,
                duration_ms: 65_000,
                ..Default::default()
            }),
            Some(
                "turn     error (HTTP 500) · 1 turn · 1m05s · $0.0000\n         API Error: 500 boom",
            ),
        );
        check(
            Kind::SessionFinished(SessionFinished {
                outcome: SessionOutcome::Succeeded as i32,
                result: "done".into(),
                session_cost_usd: 0.5,
                ..Default::default()
            }),
            Some("finished succeeded · $0.5000"),
        );
        check(
            Kind::SessionFinished(SessionFinished {
                outcome: SessionOutcome::Failed as i32,
                error_code: "E505".into(),
                error_message: "the model API failed".into(),
                ..Default::default()
            }),
            Some("finished failed: [E505] the model API failed · $0.0000"),
        );
    }

    /// A subagent's text is labelled as the subagent's, never `claude` (the main
    /// agent); its start and finish have lines of their own.
    #[test]
    fn subagent_lines() {
        use parhelia_proto::{SubagentFinished, SubagentStarted};
        check(
            Kind::AssistantText(AssistantText {
                text: "Hello from the subagent.".into(),
                parent_tool_use_id: "toolu_1".into(),
                ..Default::default()
            }),
            Some("subagent Hello from the subagent."),
        );
        check(
            Kind::SubagentStarted(SubagentStarted {
                tool_use_id: "toolu_1".into(),
                subagent_type: "general-purpose".into(),
                description: "Say hello".into(),
                backgrounded: false,
            }),
            Some("subagent started (general-purpose): Say hello"),
        );
        check(
            Kind::SubagentFinished(SubagentFinished {
                tool_use_id: "toolu_1".into(),
                subagent_type: "general-purpose".into(),
                is_error: false,
                status: "completed".into(),
                summary: "Hello.\nMore.".into(),
            }),
            Some("subagent finished (general-purpose): Hello.…"),
        );
        check(
            Kind::SubagentFinished(SubagentFinished {
                status: "killed".into(),
                is_error: true,
                ..Default::default()
            }),
            Some("subagent ended killed"),
        );
    }

    #[test]
    fn model_spend_lines() {
        use parhelia_proto::{ModelSpend, Usage};
        check(
            Kind::ModelSpend(ModelSpend {
                model: "claude-opus-5-5".into(),
                message_id: "msg_1".into(),
                usage: Some(Usage {
                    input_tokens: 470,
                    output_tokens: 55,
                    ..Default::default()
                }),
                cost_usd: 0.00298,
                session_cost_usd: 0.00298,
                priced: true,
                ..Default::default()
            }),
            Some("spend    claude-opus-5-5 · 470 in / 55 out · +$0.0030 · total $0.0030"),
        );
        check(
            Kind::ModelSpend(ModelSpend {
                model: "new\u{1b}[2Jmodel".into(),
                subagent: true,
                usage: Some(Usage {
                    input_tokens: 1,
                    cache_read_input_tokens: 9,
                    ..Default::default()
                }),
                session_cost_usd: 0.5,
                ..Default::default()
            }),
            Some(
                "spend    new\\x1b[2Jmodel (subagent) · 1 in / 0 out · cache 0 written / 9 read · unpriced · total $0.5000",
            ),
        );
    }

    #[test]
    fn status_input_exit_error_stop_lines() {
        check(
            Kind::StatusChanged(StatusChanged {
                status: SessionStatus::Busy as i32,
                ..Default::default()
            }),
            None,
        );
        check(
            Kind::StatusChanged(StatusChanged {
                status: SessionStatus::NeedsInput as i32,
                hook_event: "Notification".into(),
                detail: "Claude needs your permission".into(),
            }),
            Some("status   needs input: Claude needs your permission"),
        );
        check(
            Kind::InputAccepted(InputAccepted {
                text: "also add a test".into(),
                queued: true,
            }),
            Some("input    also add a test (queued for the next turn)"),
        );
        check(
            Kind::ClaudeExited(ClaudeExited {
                exit_code: 143,
                had_result: false,
                request_in_flight: false,
            }),
            Some("exit     Claude Code exited with status 143, without a result"),
        );
        check(
            Kind::ClaudeExited(ClaudeExited {
                exit_code: 137,
                had_result: false,
                request_in_flight: true,
            }),
            Some(
                "exit     Claude Code exited with status 137, without a result; a model request was in flight: its spend is unknown",
            ),
        );
        check(
            Kind::AgentError(AgentError {
                code: "E501".into(),
                message: "claude not found".into(),
            }),
            Some("error    [E501] claude not found"),
        );
        check(
            Kind::StopRequested(StopRequested {
                reason: "SIGTERM".into(),
            }),
            Some("stop     requested: SIGTERM"),
        );
        assert_eq!(render_event(&Event::default()), None);
    }

    #[test]
    fn a_store_over_its_quota_names_its_size_and_the_kept_checkpoint() {
        check(
            Kind::StoreOverQuota(parhelia_proto::StoreOverQuota {
                checkpoint_id: "ckpt-1\u{1b}[2J".into(),
                store_bytes: 3 * 1024 * 1024,
                quota_bytes: 1024 * 1024,
                error_code: String::new(),
            }),
            Some(
                "checkpt  [E623] store over its quota after pruning: 3.0 MiB of 1.0 MiB · ckpt-1\\x1b[2J kept",
            ),
        );
    }

    #[test]
    fn durations() {
        for (ms, text) in [
            (5, "5ms"),
            (1_000, "1.0s"),
            (59_999, "60.0s"),
            (61_000, "1m01s"),
            (3_720_000, "1h02m"),
        ] {
            assert_eq!(duration(ms), text);
        }
    }

    #[test]
    fn session_text_cannot_drive_the_terminal() {
        check(
            Kind::AssistantText(AssistantText {
                text: "done\u{1b}[2J\u{1b}]0;owned\u{7}\nnext\tline\r\n\u{9b}1m".into(),
                ..Default::default()
            }),
            Some(
                "claude   done\\x1b[2J\\x1b]0;owned\\x07\n         next\tline\n         \\u{9b}1m",
            ),
        );
        check(
            Kind::CheckpointCreated(CheckpointCreated {
                checkpoint_id: "cp-1".into(),
                trigger: "man\u{1b}[8mual".into(),
                message: "msg\u{1b}[1A\u{1b}[K".into(),
                ..Default::default()
            }),
            Some("checkpt  cp-1 (man\\x1b[8mual) · 0 files · 0 B new · msg\\x1b[1A\\x1b[K"),
        );
        check(
            Kind::AgentError(AgentError {
                code: "E5\u{1b}01".into(),
                message: "x\u{7f}".into(),
            }),
            Some("error    [E5\\x1b01] x\\x7f"),
        );
    }
}
