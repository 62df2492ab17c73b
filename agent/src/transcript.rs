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
}
