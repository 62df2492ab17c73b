//! What the stand-in remembers about each request it received.
//!
//! Every request becomes one [`LoggedRequest`], kept in memory and optionally appended to a file
//! as one JSON line. Credentials never reach the log: the values of authentication headers are
//! replaced by `<redacted>` (the header names stay, so a test can tell which scheme was used).
//! Full bodies are kept only when asked for ([`StandInOptions::log_bodies`](super::StandInOptions)).

use std::collections::BTreeMap;

use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How the stand-in classified and answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// `POST /v1/messages` with tools: answered by a script turn.
    Turn,
    /// `POST /v1/messages` with tools after the script ran out.
    Exhausted,
    /// `POST /v1/messages` without tools (title generation and the like).
    Side,
    /// `POST /v1/messages` whose body was not a JSON object.
    BadRequest,
    /// `POST /v1/messages` with a key the stand-in does not accept
    /// (`StandInOptions::accepted_api_key`): 401, no turn consumed.
    Unauthorized,
    /// `POST /v1/messages/count_tokens`.
    CountTokens,
    /// `GET /v1/models` or `GET /v1/models/{id}`.
    Models,
    /// A connectivity check: `HEAD /api/hello` (sent unless
    /// `CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC` is set), or `HEAD`/`GET /`.
    Probe,
    /// Anything else; answered with an empty success so Claude Code carries on.
    Other,
}

/// One received request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedRequest {
    /// Position in the log, from 0.
    pub seq: usize,
    /// Receive time, milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub method: String,
    /// Path and query, e.g. `/v1/messages?beta=true`.
    pub path: String,
    pub kind: RequestKind,
    /// The id of the assistant message served, when one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// For [`RequestKind::Turn`]: the index of the script turn that answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_index: Option<usize>,
    /// What was answered, e.g. `tool_use Write`, `error 529`, `text`.
    pub reply: String,
    pub model: Option<String>,
    /// The body's `stream` flag, when it had one.
    pub stream: Option<bool>,
    pub has_tools: bool,
    pub tool_count: usize,
    pub message_count: usize,
    /// The role of every message, in order.
    pub roles: Vec<String>,
    /// The text blocks of the last `user` message, joined by newlines, leaving out the
    /// `<system-reminder>` blocks Claude Code adds (so the first turn shows just the prompt).
    pub last_user_text: Option<String>,
    /// The text of every `tool_result` block in the last `user` message.
    pub tool_results: Vec<String>,
    /// Request headers; authentication values are redacted.
    pub headers: BTreeMap<String, String>,
    /// The raw JSON body, only with `log_bodies`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

/// Headers whose values are credentials.
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "cookie",
];

pub(crate) fn redacted_headers(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let name = name.as_str().to_ascii_lowercase();
        let value = if SECRET_HEADERS.contains(&name.as_str()) {
            "<redacted>".to_owned()
        } else {
            String::from_utf8_lossy(value.as_bytes()).into_owned()
        };
        out.entry(name)
            .and_modify(|existing| {
                existing.push_str(", ");
                existing.push_str(&value);
            })
            .or_insert(value);
    }
    out
}

/// The parts of a Messages API body the log keeps.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct BodySummary {
    pub model: Option<String>,
    pub stream: Option<bool>,
    pub tool_count: usize,
    pub message_count: usize,
    pub roles: Vec<String>,
    pub last_user_text: Option<String>,
    pub tool_results: Vec<String>,
}

impl BodySummary {
    pub(crate) fn of(body: &Value) -> Self {
        let messages = body
            .get("messages")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let last_user = messages
            .iter()
            .rev()
            .find(|message| message.get("role").and_then(Value::as_str) == Some("user"));
        let (last_user_text, tool_results) = match last_user.and_then(|m| m.get("content")) {
            Some(content) => (user_text_of(content), tool_result_texts(content)),
            None => (None, Vec::new()),
        };
        Self {
            model: body.get("model").and_then(Value::as_str).map(str::to_owned),
            stream: body.get("stream").and_then(Value::as_bool),
            tool_count: body
                .get("tools")
                .and_then(Value::as_array)
                .map_or(0, Vec::len),
            message_count: messages.len(),
            roles: messages
                .iter()
                .map(|m| {
                    m.get("role")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_owned()
                })
                .collect(),
            last_user_text,
            tool_results,
        }
    }
}

/// The text of a message `content`: the string itself, or its blocks of type `block_type`
/// joined by newlines. `None` when there is no such text.
fn text_of(content: &Value, block_type: &str) -> Option<String> {
    if let Some(text) = content.as_str() {
        return Some(text.to_owned());
    }
    let texts: Vec<&str> = content
        .as_array()?
        .iter()
        .filter(|block| block.get("type").and_then(Value::as_str) == Some(block_type))
        .filter_map(|block| block.get("text").and_then(Value::as_str))
        .collect();
    (!texts.is_empty()).then(|| texts.join("\n"))
}

/// Like [`text_of`] for `text` blocks, minus Claude Code's `<system-reminder>` blocks.
fn user_text_of(content: &Value) -> Option<String> {
    if let Some(text) = content.as_str() {
        return Some(text.to_owned());
    }
    let texts: Vec<&str> = content
        .as_array()?
        .iter()
        .filter(|block| block.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|block| block.get("text").and_then(Value::as_str))
        .filter(|text| !text.starts_with("<system-reminder>"))
        .collect();
    (!texts.is_empty()).then(|| texts.join("\n"))
}

fn tool_result_texts(content: &Value) -> Vec<String> {
    content
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|block| block.get("type").and_then(Value::as_str) == Some("tool_result"))
        .filter_map(|block| block.get("content").and_then(|c| text_of(c, "text")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use serde_json::json;

    #[test]
    fn summary_picks_the_last_user_message_and_tool_results() {
        let body = json!({
            "model": "claude-test",
            "stream": true,
            "tools": [{"name": "Bash"}, {"name": "Write"}],
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "<system-reminder>\nnoise\n</system-reminder>\n"},
                    {"type": "text", "text": "first"}
                ]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "Bash", "input": {}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t", "content": "hello-from-bash"},
                    {"type": "tool_result", "tool_use_id": "u", "content": [{"type": "text", "text": "two"}]},
                    {"type": "text", "text": "and more"}
                ]},
                {"role": "system", "content": "note"}
            ]
        });
        let summary = BodySummary::of(&body);
        assert_eq!(summary.model.as_deref(), Some("claude-test"));
        assert_eq!(summary.stream, Some(true));
        assert_eq!(summary.tool_count, 2);
        assert_eq!(summary.message_count, 4);
        assert_eq!(summary.roles, ["user", "assistant", "user", "system"]);
        assert_eq!(summary.last_user_text.as_deref(), Some("and more"));
        let first_turn = json!({"messages": [body["messages"][0].clone()]});
        assert_eq!(
            BodySummary::of(&first_turn).last_user_text.as_deref(),
            Some("first")
        );
        assert_eq!(summary.tool_results, ["hello-from-bash", "two"]);
    }

    #[test]
    fn summary_of_a_non_message_body_is_empty() {
        assert_eq!(BodySummary::of(&json!(3)), BodySummary::default());
    }

    #[test]
    fn credentials_are_redacted() {
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", HeaderValue::from_static("test-key"));
        headers.insert("Authorization", HeaderValue::from_static("Bearer t"));
        headers.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        let redacted = redacted_headers(&headers);
        assert_eq!(redacted["x-api-key"], "<redacted>");
        assert_eq!(redacted["authorization"], "<redacted>");
        assert_eq!(redacted["anthropic-version"], "2023-06-01");
    }
}
