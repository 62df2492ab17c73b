//! Claude Code's transcript (`<config>/projects/<dir>/<session>.jsonl`), read as the
//! event source of an interactive session, where there is no stream-json.
//!
//! A pure parser, like [`crate::stream_json`]. Promises:
//! - `assistant` and `user` lines of the main thread give the same events as their
//!   stream-json twins (one per content block; tool results cut to a bounded size);
//!   sidechain (subagent) lines give nothing.
//! - A `system/turn_duration` line (one per finished turn) gives a [`TurnResult`] with
//!   subtype `success` and the turn's duration; its result text is left empty for the
//!   supervisor, which knows the turn's last assistant text. The transcript carries no
//!   per-turn cost, so `turn_cost_usd` is `Some(0.0)`.
//! - A `cost-state` line (written when Claude Code exits) gives
//!   [`StreamLine::reported_total_usd`]: the session's cumulative `totalCostUSD`, clamped
//!   like every cost (the session can write its transcript).
//! - Every other line type (attachments, api-request records, snapshots…) gives nothing.

use parhelia_proto::{TurnResult, event};
use serde_json::Value;

use crate::stream_json::{StreamLine, StreamLineError};

/// Parses one transcript line (without its newline).
pub fn parse_line(line: &str) -> Result<StreamLine, StreamLineError> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(StreamLine::default());
    }
    let value: Value = serde_json::from_str(line)?;
    if value["isSidechain"].as_bool() == Some(true) {
        return Ok(StreamLine::default());
    }
    let kind = value["type"].as_str().unwrap_or("");
    let subtype = value["subtype"].as_str().unwrap_or("");
    Ok(match (kind, subtype) {
        ("assistant", _) | ("user", _) => StreamLine {
            kinds: crate::stream_json::kinds_of(&value),
            ..StreamLine::default()
        },
        ("system", "turn_duration") => StreamLine {
            kinds: vec![event::Kind::TurnResult(TurnResult {
                subtype: "success".into(),
                duration_ms: value["durationMs"].as_u64().unwrap_or(0),
                ..TurnResult::default()
            })],
            turn_cost_usd: Some(0.0),
            reported_total_usd: None,
        },
        ("cost-state", _) => StreamLine {
            reported_total_usd: crate::stream_json::cost_usd(&value["totalCostUSD"]),
            ..StreamLine::default()
        },
        _ => StreamLine::default(),
    })
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
/// prompt or a tool result) with no model reply after it: the request it sent for that
/// message may have been in flight when it died, and what the API billed for it, if it
/// answered, is in no record (`ClaudeExited.request_in_flight`). Reads at most the last
/// [`IN_FLIGHT_TAIL_BYTES`], never through a link; false when it cannot tell.
pub fn request_in_flight(transcript: &std::path::Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Some(mut file) = crate::spend::open_regular(transcript) else {
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

/// [`request_in_flight`] of a transcript's text (a first partial line is skipped as
/// unparsable).
pub fn request_in_flight_in(text: &str) -> bool {
    for line in text.lines().rev() {
        let Ok(value) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if value["isSidechain"].as_bool() == Some(true) || value["isMeta"].as_bool() == Some(true) {
            continue;
        }
        match value["type"].as_str() {
            Some("assistant") => return false,
            Some("user") => return true,
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
            "",
        );
        check(
            r#"{"type":"user","message":{"role":"user","content":"Create hello.txt"}}"#,
            "",
        );
        check(
            r#"{"type":"user","message":{"role":"user","content":[{"tool_use_id":"t1","type":"tool_result","content":"ok"}]}}"#,
            "result:ok",
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
    }
}
