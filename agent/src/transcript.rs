//! Claude Code's transcript (`<config>/projects/<dir>/<session>.jsonl`), read as the
//! event source of an interactive session, where there is no stream-json.
//!
//! A pure parser, like [`crate::stream_json`]. Promises:
//! - `assistant` and `user` lines of the main thread give the same events as their
//!   stream-json twins (one per content block; tool results cut to a bounded size).
//!   A sidechain (subagent) line in the main transcript gives its events with
//!   `parent_tool_use_id` `unknown` (the line does not say which Task call), never the
//!   main agent's; Claude Code 2.1.330 writes them to `subagents/` instead.
//! - Subagents, as the transcript shows them (interactive mode has no
//!   `system/task_started` or `system/task_notification`): a main-thread `Task`/`Agent`
//!   tool call gives a [`SubagentStarted`] after its [`ToolCall`] (`backgrounded`: the
//!   2.1.330 TUI runs every subagent in the background, `run_in_background: false`
//!   included — measured); the tool result of a foreground one (its `toolUseResult` names the agent)
//!   gives a [`SubagentFinished`] with its status and report; a background one's launch
//!   result (`async_launched`) gives nothing, and its end is the `task-notification`
//!   Claude Code queues for the main thread: its `queue-operation` `enqueue` line
//!   (always written; when the subagent ends during the main thread's turn the
//!   notification is folded into that turn and no message of its own follows) and the
//!   user message (`origin.kind`) each give a [`SubagentFinished`] from its
//!   `<tool-use-id>`, `<status>` and `<result>`. The supervisor journals a finish only for
//!   a subagent it saw start, once, as in headless mode.
//! - A `system/turn_duration` line (one per finished turn) gives a [`TurnResult`] with
//!   subtype `success` and the turn's duration; its result text is left empty for the
//!   supervisor, which knows the turn's last assistant text. The transcript carries no
//!   per-turn cost, so `turn_cost_usd` is `Some(0.0)`.
//! - A `cost-state` line (written when Claude Code exits) gives
//!   [`StreamLine::reported_total_usd`]: the session's cumulative `totalCostUSD`, clamped
//!   like every cost (the session can write its transcript).
//! - Every other line type (attachments, api-request records, snapshots…) gives nothing.

use parhelia_proto::{SubagentFinished, SubagentStarted, TurnResult, event};
use serde_json::Value;

use crate::stream_json::{StreamLine, StreamLineError};

/// Parses one transcript line (without its newline).
pub fn parse_line(line: &str) -> Result<StreamLine, StreamLineError> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(StreamLine::default());
    }
    let value: Value = serde_json::from_str(line)?;
    let main_thread = value["isSidechain"].as_bool() != Some(true);
    let kind = value["type"].as_str().unwrap_or("");
    let subtype = value["subtype"].as_str().unwrap_or("");
    Ok(match (kind, subtype) {
        ("assistant", _) | ("user", _) => {
            let mut kinds = crate::stream_json::kinds_of(&value);
            if main_thread && kind == "assistant" {
                kinds.extend(subagent_starts(&value));
            } else if main_thread {
                kinds.extend(subagent_finishes(&value));
            }
            StreamLine {
                kinds,
                ..StreamLine::default()
            }
        }
        ("system", "turn_duration") => StreamLine {
            kinds: vec![event::Kind::TurnResult(TurnResult {
                subtype: "success".into(),
                duration_ms: value["durationMs"].as_u64().unwrap_or(0),
                ..TurnResult::default()
            })],
            turn_cost_usd: Some(0.0),
            reported_total_usd: None,
        },
        // A background subagent's end is queued for the main thread as a
        // task-notification; the queue line is written whether the notification then
        // starts a turn of its own or is folded into the running one (then no user
        // message of it follows).
        ("queue-operation", _)
            if value["operation"] == "enqueue"
                && value["content"]
                    .as_str()
                    .is_some_and(|c| c.trim_start().starts_with("<task-notification>")) =>
        {
            StreamLine {
                kinds: notification_finish(value["content"].as_str().unwrap_or("")),
                ..StreamLine::default()
            }
        }
        ("cost-state", _) => StreamLine {
            reported_total_usd: crate::stream_json::cost_usd(&value["totalCostUSD"]),
            ..StreamLine::default()
        },
        _ => StreamLine::default(),
    })
}

/// A main-thread assistant line's `Task`/`Agent` calls, each a subagent's start.
fn subagent_starts(value: &Value) -> Vec<event::Kind> {
    use crate::stream_json::{bounded, one_id};
    let Some(blocks) = value["message"]["content"].as_array() else {
        return Vec::new();
    };
    blocks
        .iter()
        .filter(|b| b["type"] == "tool_use" && (b["name"] == "Task" || b["name"] == "Agent"))
        .map(|b| {
            let input = &b["input"];
            let kind = input["subagent_type"].as_str().unwrap_or("");
            event::Kind::SubagentStarted(SubagentStarted {
                tool_use_id: one_id(b["id"].as_str().unwrap_or("")),
                subagent_type: one_id(if kind.is_empty() {
                    "general-purpose"
                } else {
                    kind
                }),
                description: bounded(input["description"].as_str().unwrap_or(""), 200),
                // Claude Code 2.1.330's TUI launches every Agent call in the
                // background, `run_in_background: false` included (measured: its tool
                // result is `async_launched`); the transcript is read in that mode only.
                backgrounded: true,
            })
        })
        .collect()
}

/// A main-thread user line's subagent ends: a foreground subagent's tool result, or
/// a background one's `task-notification` message.
fn subagent_finishes(value: &Value) -> Vec<event::Kind> {
    use crate::stream_json::{SUBAGENT_SUMMARY_MAX_BYTES, bounded, content_text, one_id};
    let content = &value["message"]["content"];
    if value["origin"]["kind"] == "task-notification" {
        return notification_finish(&content_text(content));
    }
    let Some(blocks) = content.as_array() else {
        return Vec::new();
    };
    let results: Vec<&Value> = blocks
        .iter()
        .filter(|b| b["type"] == "tool_result")
        .collect();
    // The line's `toolUseResult` describes its one tool result.
    let described = &value["toolUseResult"];
    let described = (results.len() == 1 && described.is_object()).then_some(described);
    if described.is_some_and(|r| r["isAsync"] == true || r["status"] == "async_launched") {
        // A background subagent was launched, not finished.
        return Vec::new();
    }
    if described.is_some_and(|r| r.get("agentId").is_none() && r.get("agentType").is_none()) {
        // Another tool's result.
        return Vec::new();
    }
    results
        .into_iter()
        .map(|block| {
            let is_error = block["is_error"].as_bool().unwrap_or(false);
            let status = described
                .and_then(|r| r["status"].as_str())
                .filter(|s| !s.is_empty())
                .unwrap_or(if is_error { "failed" } else { "completed" });
            let report = match described.map(|r| &r["content"]) {
                Some(c) if !c.is_null() => content_text(c),
                _ => content_text(&block["content"]),
            };
            event::Kind::SubagentFinished(SubagentFinished {
                tool_use_id: one_id(block["tool_use_id"].as_str().unwrap_or("")),
                subagent_type: String::new(),
                is_error: is_error || status != "completed",
                status: one_id(status),
                summary: bounded(&report, SUBAGENT_SUMMARY_MAX_BYTES),
            })
        })
        .collect()
}

/// A `<task-notification>`'s subagent end: its `<tool-use-id>`, `<status>` and report
/// (`<result>`, else `<summary>`).
fn notification_finish(text: &str) -> Vec<event::Kind> {
    use crate::stream_json::{SUBAGENT_SUMMARY_MAX_BYTES, bounded, one_id};
    let Some(id) = tag(text, "tool-use-id").filter(|id| !id.is_empty()) else {
        return Vec::new();
    };
    let status = one_id(tag(text, "status").unwrap_or("completed"));
    let report = tag(text, "result")
        .or_else(|| tag(text, "summary"))
        .unwrap_or("");
    vec![event::Kind::SubagentFinished(SubagentFinished {
        tool_use_id: one_id(id),
        subagent_type: String::new(),
        is_error: status != "completed",
        status,
        summary: bounded(report, SUBAGENT_SUMMARY_MAX_BYTES),
    })]
}

/// The text between `<name>` and the next `</name>` in `text`, if any.
fn tag<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = text.find(&open)? + open.len();
    let len = text[start..].find(&close)?;
    Some(text[start..start + len].trim())
}

/// The last `totalCostUSD` already in a transcript (what earlier processes of this
/// Claude session reported), or 0.
pub fn last_reported_total_usd(transcript: &std::path::Path) -> f64 {
    let Ok(text) = std::fs::read_to_string(transcript) else {
        return 0.0;
    };
    last_reported_total_in(&text)
}

/// [`last_reported_total_usd`] of a transcript's text.
pub fn last_reported_total_in(text: &str) -> f64 {
    text.lines()
        .rev()
        .filter(|line| line.contains("\"cost-state\""))
        .find_map(|line| parse_line(line).ok()?.reported_total_usd)
        .unwrap_or(0.0)
}

/// How much of a transcript's end [`request_in_flight`] reads.
const IN_FLIGHT_TAIL_BYTES: u64 = 4 << 20;

/// Whether Claude Code's last main-thread message in its transcript is the user's (a
/// prompt or a tool result) with no model reply after it, or a prompt it took from its
/// queue (`queue-operation` `dequeue`, written as it starts the turn: the prompt's own
/// line comes in a later batch, after the request is sent): the request it sent for
/// that message may have been in flight when it died, and what the API billed for it,
/// if it answered, is in no record (`ClaudeExited.request_in_flight`). Reads at most
/// the last [`IN_FLIGHT_TAIL_BYTES`], never through a link; false when it cannot tell.
pub fn request_in_flight(transcript: &std::path::Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Some(mut file) = crate::session_file::open_regular(transcript) else {
        return false;
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(IN_FLIGHT_TAIL_BYTES);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return false;
    }
    let mut bytes = Vec::new();
    if file
        .take(IN_FLIGHT_TAIL_BYTES)
        .read_to_end(&mut bytes)
        .is_err()
    {
        return false;
    }
    request_in_flight_in(&String::from_utf8_lossy(&bytes))
}

/// Whether the transcript was modified at or after `since` (false when it is absent,
/// a link, or its time unreadable: then it shows nothing written since).
pub fn written_since(transcript: &std::path::Path, since: std::time::SystemTime) -> bool {
    crate::session_file::open_regular(transcript)
        .and_then(|file| file.metadata().ok())
        .and_then(|meta| meta.modified().ok())
        .is_some_and(|modified| modified >= since)
}

/// [`request_in_flight`] of a transcript's text (a first partial line is skipped as
/// unparsable).
pub fn request_in_flight_in(text: &str) -> bool {
    // A dequeue seen (scanning backwards) and waiting for the enqueue that says what
    // was taken: a slash command (`/cost`) asks the model nothing.
    let mut dequeued = false;
    for line in text.lines().rev() {
        let Ok(value) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if value["isSidechain"].as_bool() == Some(true) || value["isMeta"].as_bool() == Some(true) {
            continue;
        }
        match (value["type"].as_str(), value["operation"].as_str()) {
            (Some("assistant"), _) => return false,
            (Some("user"), _) => return true,
            (Some("queue-operation"), Some("dequeue")) => dequeued = true,
            (Some("queue-operation"), Some("enqueue")) if dequeued => {
                return !value["content"]
                    .as_str()
                    .is_some_and(|text| text.trim_start().starts_with('/'));
            }
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(line: &str, expect: &str) {
        let parsed = parse_line(line).unwrap();
        let names: Vec<String> = parsed
            .kinds
            .iter()
            .map(|kind| match kind {
                event::Kind::AssistantText(t) => format!("text:{}", t.text),
                event::Kind::ToolCall(c) => format!("tool:{}", c.name),
                event::Kind::ToolResult(r) => format!("result:{}", r.content),
                event::Kind::TurnResult(r) => format!("turn:{}ms", r.duration_ms),
                // (Every tool result without Claude Code's description may be a
                // subagent's end; the supervisor keeps only those it saw start.)
                event::Kind::SubagentFinished(f) => format!("finish:{}", f.tool_use_id),
                other => format!("{other:?}"),
            })
            .chain(parsed.reported_total_usd.map(|c| format!("cost:{c}")))
            .collect();
        assert_eq!(names.join(" "), expect);
    }

    #[test]
    fn transcript_lines_become_events() {
        check(
            r#"{"type":"assistant","isSidechain":false,"message":{"id":"m1","content":[{"type":"text","text":"hi"},{"type":"tool_use","id":"t1","name":"Write","input":{"file_path":"a"}}]}}"#,
            "text:hi tool:Write",
        );
        check(
            r#"{"type":"assistant","isSidechain":true,"message":{"id":"m1","content":[{"type":"text","text":"sub"}]}}"#,
            "text:sub",
        );
        check(
            r#"{"type":"user","message":{"role":"user","content":"Create hello.txt"}}"#,
            "",
        );
        check(
            r#"{"type":"user","message":{"role":"user","content":[{"tool_use_id":"t1","type":"tool_result","content":"ok"}]}}"#,
            "result:ok finish:t1",
        );
        check(
            r#"{"type":"system","subtype":"turn_duration","durationMs":586}"#,
            "turn:586ms",
        );
        check(
            r#"{"type":"cost-state","totalCostUSD":0.0018,"modelUsage":{}}"#,
            "cost:0.0018",
        );
        // The session can write its transcript: a total is clamped like any cost.
        check(r#"{"type":"cost-state","totalCostUSD":-1.7e308}"#, "cost:0");
        check(
            r#"{"type":"cost-state","totalCostUSD":1.7e308}"#,
            &format!("cost:{}", crate::stream_json::MAX_COST_USD),
        );
        check(r#"{"type":"api-request","params":{}}"#, "");
        // A sidechain line's text is a subagent's, never the main agent's.
        let side = parse_line(
            r#"{"type":"assistant","isSidechain":true,"message":{"id":"m1","content":[{"type":"text","text":"sub"}]}}"#,
        )
        .unwrap();
        let event::Kind::AssistantText(text) = &side.kinds[0] else {
            panic!("{:?}", side.kinds)
        };
        assert_eq!(text.parent_tool_use_id, "unknown");
        check(r#"{"type":"system","subtype":"stop_hook_summary"}"#, "");
        assert!(parse_line("not json").is_err());
    }

    #[test]
    fn a_request_is_in_flight_after_a_user_message_without_a_reply() {
        let user = r#"{"type":"user","message":{"role":"user","content":"Go"}}"#;
        let result = r#"{"type":"user","message":{"content":[{"tool_use_id":"t1","type":"tool_result","content":"ok"}]}}"#;
        let reply =
            r#"{"type":"assistant","message":{"id":"m1","content":[{"type":"text","text":"hi"}]}}"#;
        let side = r#"{"type":"assistant","isSidechain":true,"message":{"id":"m2","content":[]}}"#;
        let meta = r#"{"type":"user","isMeta":true,"message":{"content":"caveat"}}"#;
        let system = r#"{"type":"system","subtype":"turn_duration","durationMs":5}"#;
        let lines = |ls: &[&str]| ls.join("\n") + "\n";
        assert!(request_in_flight_in(&lines(&[user])));
        assert!(request_in_flight_in(&lines(&[user, reply, result])));
        assert!(request_in_flight_in(&lines(&[user, reply, result, side])));
        assert!(!request_in_flight_in(&lines(&[user, reply])));
        assert!(!request_in_flight_in(&lines(&[user, reply, system, meta])));
        // Claude Code took the prompt from its queue and was killed before its
        // (batched) transcript write of the prompt: seen in a real SIGKILL.
        let enqueue = |text: &str| {
            serde_json::json!({"type": "queue-operation", "operation": "enqueue", "content": text})
                .to_string()
        };
        let dequeue = r#"{"type":"queue-operation","operation":"dequeue"}"#;
        let (prompt, command) = (enqueue("Second"), enqueue("/cost"));
        assert!(request_in_flight_in(&lines(&[
            user, reply, &prompt, dequeue
        ])));
        assert!(request_in_flight_in(&lines(&[
            user, reply, &prompt, dequeue, system
        ])));
        // Queued behind a running turn, not yet taken; a command; a taken prompt answered.
        assert!(!request_in_flight_in(&lines(&[user, reply, &prompt])));
        assert!(!request_in_flight_in(&lines(&[
            user, reply, &command, dequeue
        ])));
        assert!(!request_in_flight_in(&lines(&[
            &prompt, dequeue, user, reply
        ])));
        assert!(!request_in_flight_in(&lines(&[dequeue])));
        assert!(!request_in_flight_in(""));
        assert!(!request_in_flight_in("{torn"));
    }

    #[test]
    fn an_unreadable_or_linked_transcript_says_nothing_is_in_flight() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real.jsonl");
        std::fs::write(
            &real,
            "{\"type\":\"user\",\"message\":{\"content\":\"Go\"}}\n",
        )
        .unwrap();
        assert!(request_in_flight(&real));
        let link = tmp.path().join("link.jsonl");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(!request_in_flight(&link));
        assert!(!request_in_flight(&tmp.path().join("absent.jsonl")));
        let before = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        let after = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
        assert!(written_since(&real, before));
        assert!(!written_since(&real, after));
        assert!(!written_since(&link, before));
        assert!(!written_since(&tmp.path().join("absent.jsonl"), before));
    }

    fn subagent_kinds(line: &str) -> Vec<String> {
        parse_line(line)
            .unwrap()
            .kinds
            .iter()
            .filter_map(|kind| match kind {
                event::Kind::SubagentStarted(s) => Some(format!(
                    "start:{}:{}:{}:{}",
                    s.tool_use_id, s.subagent_type, s.description, s.backgrounded
                )),
                event::Kind::SubagentFinished(f) => Some(format!(
                    "finish:{}:{}:{}:{}",
                    f.tool_use_id, f.status, f.is_error, f.summary
                )),
                _ => None,
            })
            .collect()
    }

    /// The lines Claude Code 2.1.330 wrote for a foreground and a background subagent
    /// (captured against the stand-in; uninteresting fields dropped).
    #[test]
    fn subagent_start_and_finish_from_the_transcript() {
        let call = |background: &str| {
            format!(
                r#"{{"type":"assistant","isSidechain":false,"message":{{"id":"m1","content":[{{"id":"toolu_standin_0002","input":{{"description":"Say hello","prompt":"Say hello and stop.",{background}"subagent_type":"general-purpose"}},"name":"Task","type":"tool_use"}}]}}}}"#
            )
        };
        // The TUI runs it in the background even when asked not to (measured).
        assert_eq!(
            subagent_kinds(&call(r#""run_in_background":false,"#)),
            ["start:toolu_standin_0002:general-purpose:Say hello:true"]
        );
        assert_eq!(
            subagent_kinds(&call(r#""run_in_background":true,"#)),
            ["start:toolu_standin_0002:general-purpose:Say hello:true"]
        );
        assert_eq!(
            subagent_kinds(&call("")),
            ["start:toolu_standin_0002:general-purpose:Say hello:true"]
        );
        // A foreground subagent's result: its report, not the hand-back wrapper.
        assert_eq!(
            subagent_kinds(
                r#"{"type":"user","isSidechain":false,"message":{"role":"user","content":[{"tool_use_id":"toolu_standin_0002","type":"tool_result","content":[{"type":"text","text":"[Subagent hand-back] ..."}]}]},"toolUseResult":{"status":"completed","agentId":"a4ff","agentType":"general-purpose","content":[{"type":"text","text":"Hello from the subagent."}]}}"#
            ),
            ["finish:toolu_standin_0002:completed:false:Hello from the subagent."]
        );
        // A background subagent's launch is not its end.
        assert!(
            subagent_kinds(
                r#"{"type":"user","isSidechain":false,"message":{"role":"user","content":[{"tool_use_id":"toolu_standin_0002","type":"tool_result","content":[{"type":"text","text":"Async agent launched successfully."}]}]},"toolUseResult":{"isAsync":true,"status":"async_launched","agentId":"ab9a"}}"#
            )
            .is_empty()
        );
        // Its end: the task-notification message.
        assert_eq!(
            subagent_kinds(
                r#"{"type":"user","isSidechain":false,"message":{"role":"user","content":"<task-notification>\n<task-id>ab9a</task-id>\n<tool-use-id>toolu_standin_0002</tool-use-id>\n<status>completed</status>\n<summary>Agent \"Say hello\" finished</summary>\n<result>Hello from the subagent.</result>\n</task-notification>"},"origin":{"kind":"task-notification"}}"#
            ),
            ["finish:toolu_standin_0002:completed:false:Hello from the subagent."]
        );
        // Its queue line (folded into a running turn, no message follows).
        assert_eq!(
            subagent_kinds(
                r#"{"type":"queue-operation","operation":"enqueue","content":"<task-notification>\n<tool-use-id>toolu_standin_0002</tool-use-id>\n<status>completed</status>\n<result>Hello from the subagent.</result>\n</task-notification>"}"#
            ),
            ["finish:toolu_standin_0002:completed:false:Hello from the subagent."]
        );
        assert!(
            subagent_kinds(
                r#"{"type":"queue-operation","operation":"remove","content":"<task-notification><tool-use-id>x</tool-use-id></task-notification>"}"#
            )
            .is_empty()
        );
        // The same text typed by the user is a prompt, not a notification.
        assert!(
            subagent_kinds(
                r#"{"type":"user","message":{"role":"user","content":"<task-notification><tool-use-id>x</tool-use-id></task-notification>"}}"#
            )
            .is_empty()
        );
        // Another tool's result is not a subagent's end.
        assert!(
            subagent_kinds(
                r#"{"type":"user","message":{"role":"user","content":[{"tool_use_id":"t1","type":"tool_result","content":"ok"}]},"toolUseResult":{"stdout":"ok","stderr":""}}"#
            )
            .is_empty()
        );
        // A subagent's own Task call (a sidechain line) starts nothing of the main
        // thread's; a failed one finishes failed.
        assert!(
            subagent_kinds(&call("").replace(r#""isSidechain":false"#, r#""isSidechain":true"#))
                .is_empty()
        );
        assert_eq!(
            subagent_kinds(
                r#"{"type":"user","message":{"role":"user","content":[{"tool_use_id":"t9","type":"tool_result","is_error":true,"content":"boom"}]}}"#
            ),
            ["finish:t9:failed:true:boom"]
        );
    }
}
