//! Encoding an assistant message the way the Messages API sends it.
//!
//! Streaming answers are server-sent events in the API's order: `message_start` (id, model,
//! input usage), `ping`, then per content block `content_block_start`, one or more
//! `content_block_delta` (`text_delta` or `input_json_delta`) and `content_block_stop`, then
//! `message_delta` (stop reason, final `output_tokens`) and `message_stop`. Text and tool input
//! are split over several deltas, as the real API does, so a client that only reads the first
//! delta is caught. Non-streaming answers are the same message as one JSON body.

use serde_json::{Value, json};

use super::script::Usage;

/// One content block of an assistant message.
#[derive(Debug, Clone, PartialEq)]
pub enum ContentBlock {
    Text(String),
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
}

impl ContentBlock {
    fn to_json(&self) -> Value {
        match self {
            ContentBlock::Text(text) => json!({"type": "text", "text": text}),
            ContentBlock::ToolUse { id, name, input } => {
                json!({"type": "tool_use", "id": id, "name": name, "input": input})
            }
        }
    }

    /// The block as `content_block_start` announces it: empty text, empty tool input.
    fn start_json(&self) -> Value {
        match self {
            ContentBlock::Text(_) => json!({"type": "text", "text": ""}),
            ContentBlock::ToolUse { id, name, .. } => {
                json!({"type": "tool_use", "id": id, "name": name, "input": {}})
            }
        }
    }

    fn deltas(&self) -> Vec<Value> {
        match self {
            ContentBlock::Text(text) => chunks(text, TEXT_CHUNK_BYTES)
                .map(|chunk| json!({"type": "text_delta", "text": chunk}))
                .collect(),
            ContentBlock::ToolUse { input, .. } => {
                // The API opens every tool input with an empty partial_json.
                let input = input.to_string();
                std::iter::once("")
                    .chain(chunks(&input, JSON_CHUNK_BYTES))
                    .map(|chunk| json!({"type": "input_json_delta", "partial_json": chunk}))
                    .collect()
            }
        }
    }
}

const TEXT_CHUNK_BYTES: usize = 16;
const JSON_CHUNK_BYTES: usize = 24;

/// Splits `text` into pieces of at most `max_bytes` (more for a wide character), on character
/// boundaries. An empty text still yields one empty piece, so every block gets a delta.
fn chunks(text: &str, max_bytes: usize) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let current = rest?;
        let mut end = current.len().min(max_bytes);
        while !current.is_char_boundary(end) {
            end += 1;
        }
        let (piece, tail) = current.split_at(end);
        rest = (!tail.is_empty()).then_some(tail);
        Some(piece)
    })
}

/// Why the assistant stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    EndTurn,
    ToolUse,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::EndTurn => "end_turn",
            StopReason::ToolUse => "tool_use",
        }
    }
}

/// A complete assistant message, ready to be sent streamed or whole.
#[derive(Debug, Clone, PartialEq)]
pub struct AssistantMessage {
    pub id: String,
    pub model: String,
    pub content: Vec<ContentBlock>,
    pub stop_reason: StopReason,
    pub usage: Usage,
}

/// One server-sent event: `event: NAME` and a JSON `data:` line.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub event: &'static str,
    pub data: Value,
}

impl SseEvent {
    fn new(event: &'static str, data: Value) -> Self {
        Self { event, data }
    }

    /// The wire form, including the blank line that ends the event.
    pub fn encode(&self) -> String {
        format!("event: {}\ndata: {}\n\n", self.event, self.data)
    }
}

impl AssistantMessage {
    fn usage_json(&self, output_tokens: u64) -> Value {
        json!({
            "input_tokens": self.usage.input_tokens,
            "cache_creation_input_tokens": self.usage.cache_creation_input_tokens,
            "cache_read_input_tokens": self.usage.cache_read_input_tokens,
            "output_tokens": output_tokens,
        })
    }

    /// The non-streaming (`stream: false`) response body.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": self.content.iter().map(ContentBlock::to_json).collect::<Vec<_>>(),
            "stop_reason": self.stop_reason.as_str(),
            "stop_sequence": null,
            "usage": self.usage_json(self.usage.output_tokens),
        })
    }

    /// The streaming response, event by event.
    pub fn to_sse_events(&self) -> Vec<SseEvent> {
        // Like the real API, message_start reports the input side and a provisional
        // output_tokens of 1; the final count comes in message_delta.
        let mut events = vec![
            SseEvent::new(
                "message_start",
                json!({
                    "type": "message_start",
                    "message": {
                        "id": self.id,
                        "type": "message",
                        "role": "assistant",
                        "model": self.model,
                        "content": [],
                        "stop_reason": null,
                        "stop_sequence": null,
                        "usage": self.usage_json(self.usage.output_tokens.min(1)),
                    },
                }),
            ),
            SseEvent::new("ping", json!({"type": "ping"})),
        ];
        for (index, block) in self.content.iter().enumerate() {
            events.push(SseEvent::new(
                "content_block_start",
                json!({"type": "content_block_start", "index": index, "content_block": block.start_json()}),
            ));
            for delta in block.deltas() {
                events.push(SseEvent::new(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index, "delta": delta}),
                ));
            }
            events.push(SseEvent::new(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
        }
        events.push(SseEvent::new(
            "message_delta",
            json!({
                "type": "message_delta",
                "delta": {"stop_reason": self.stop_reason.as_str(), "stop_sequence": null},
                "usage": {"output_tokens": self.usage.output_tokens},
            }),
        ));
        events.push(SseEvent::new(
            "message_stop",
            json!({"type": "message_stop"}),
        ));
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> AssistantMessage {
        AssistantMessage {
            id: "msg_1".to_owned(),
            model: "claude-test".to_owned(),
            content: vec![
                ContentBlock::Text("I'll write the file now, héllo wörld.".to_owned()),
                ContentBlock::ToolUse {
                    id: "toolu_1".to_owned(),
                    name: "Write".to_owned(),
                    input: json!({"file_path": "hello.txt", "content": "hi\n"}),
                },
            ],
            stop_reason: StopReason::ToolUse,
            usage: Usage::new(120, 30),
        }
    }

    /// Parses the wire text back, checking the framing of every event on the way.
    fn parse_sse(wire: &str) -> Vec<(String, Value)> {
        assert!(wire.ends_with("\n\n"));
        wire.trim_end_matches("\n\n")
            .split("\n\n")
            .map(|event| {
                let (name_line, data_line) = event.split_once('\n').expect("two lines");
                let name = name_line.strip_prefix("event: ").expect("event line");
                let data = data_line.strip_prefix("data: ").expect("data line");
                assert!(!data.contains('\n'));
                let data: Value = serde_json::from_str(data).expect("json data");
                assert_eq!(data["type"], name, "event name matches data type");
                (name.to_owned(), data)
            })
            .collect()
    }

    /// Rebuilds the message from the events the way a client would.
    fn reassemble(events: &[(String, Value)]) -> Value {
        let mut message = Value::Null;
        for (name, data) in events {
            match name.as_str() {
                "message_start" => message = data["message"].clone(),
                "content_block_start" => {
                    let mut block = data["content_block"].clone();
                    if block["type"] == "tool_use" {
                        block["partial"] = json!("");
                    }
                    message["content"]
                        .as_array_mut()
                        .expect("content")
                        .push(block);
                }
                "content_block_delta" => {
                    let index = data["index"].as_u64().expect("index") as usize;
                    let block = &mut message["content"][index];
                    let delta = &data["delta"];
                    match delta["type"].as_str() {
                        Some("text_delta") => {
                            let text = format!(
                                "{}{}",
                                block["text"].as_str().expect("text"),
                                delta["text"].as_str().expect("delta text")
                            );
                            block["text"] = json!(text);
                        }
                        Some("input_json_delta") => {
                            let partial = format!(
                                "{}{}",
                                block["partial"].as_str().expect("partial"),
                                delta["partial_json"].as_str().expect("partial_json")
                            );
                            block["partial"] = json!(partial);
                        }
                        other => panic!("unexpected delta {other:?}"),
                    }
                }
                "content_block_stop" => {
                    let index = data["index"].as_u64().expect("index") as usize;
                    let block = &mut message["content"][index];
                    if let Some(partial) = block.get("partial").and_then(Value::as_str) {
                        block["input"] = serde_json::from_str(partial).expect("input json");
                        block.as_object_mut().expect("object").remove("partial");
                    }
                }
                "message_delta" => {
                    message["stop_reason"] = data["delta"]["stop_reason"].clone();
                    message["usage"]["output_tokens"] = data["usage"]["output_tokens"].clone();
                }
                "ping" | "message_stop" => {}
                other => panic!("unexpected event {other}"),
            }
        }
        message
    }

    #[test]
    fn sse_events_come_in_api_order() {
        let wire: String = message()
            .to_sse_events()
            .iter()
            .map(SseEvent::encode)
            .collect();
        let names: Vec<String> = parse_sse(&wire).into_iter().map(|(n, _)| n).collect();
        let mut collapsed: Vec<&str> = Vec::new();
        for name in &names {
            // Collapse runs of deltas so the expected order reads like the API docs.
            if collapsed.last() != Some(&name.as_str()) || name != "content_block_delta" {
                collapsed.push(name);
            }
        }
        assert_eq!(
            collapsed,
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        assert!(
            names.len() > collapsed.len(),
            "text and input are split over several deltas"
        );
    }

    #[test]
    fn streamed_message_reassembles_to_the_json_body() {
        let message = message();
        let wire: String = message
            .to_sse_events()
            .iter()
            .map(SseEvent::encode)
            .collect();
        assert_eq!(reassemble(&parse_sse(&wire)), message.to_json());
    }

    #[test]
    fn usage_splits_between_start_and_delta() {
        let events = message().to_sse_events();
        let start = &events[0].data["message"]["usage"];
        assert_eq!(start["input_tokens"], 120);
        assert_eq!(start["output_tokens"], 1);
        let delta = events
            .iter()
            .find(|e| e.event == "message_delta")
            .expect("message_delta");
        assert_eq!(delta.data["usage"]["output_tokens"], 30);
        assert_eq!(delta.data["delta"]["stop_reason"], "tool_use");
    }

    #[test]
    fn chunks_respect_char_boundaries_and_cover_the_text() {
        let text = "ééééééééé-ü";
        let pieces: Vec<&str> = chunks(text, 3).collect();
        assert_eq!(pieces.concat(), text);
        assert!(pieces.iter().all(|p| !p.is_empty()));
        assert_eq!(chunks("", 3).collect::<Vec<_>>(), [""]);
    }
}
