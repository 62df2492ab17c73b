//! The script a [`StandIn`](super::StandIn) plays: what the "model" answers, turn by turn.
//!
//! A [`Script`] is a list of [`Turn`]s. Each request that carries a non-empty `tools` array is a
//! real conversation turn and consumes one serving of the next turn; requests without tools
//! (session titles and other side requests) never consume a turn. A turn with `times: N` is
//! served N times in a row, which is how a test makes every one of Claude Code's retries hit the
//! same error. When the script runs out, the [`WhenExhausted`] policy decides the answer.
//!
//! On disk a script is JSON: either a bare array of turns or an object. This example is a
//! doctest, so it stays valid:
//!
//! ```
//! # use parhelia_testkit::model_stand_in::{Script, WhenExhausted};
//! let script = Script::from_json(r#"{
//!   "turns": [
//!     {"text": "Writing the file.",
//!      "tool_use": [{"name": "Write", "input": {"file_path": "hello.txt", "content": "hi\n"}}],
//!      "usage": {"input_tokens": 120, "output_tokens": 30}},
//!     {"tool_use": [{"name": "Bash", "input": {"command": "cat hello.txt"}}]},
//!     {"error": {"status": 529, "type": "overloaded_error", "message": "Overloaded",
//!                "headers": {"retry-after": "0"}},
//!      "times": 2},
//!     {"text": "done", "usage": {"input_tokens": 10, "output_tokens": 2,
//!                                "cache_read_input_tokens": 500}}
//!   ],
//!   "default": {"text": "nothing more to say"},
//!   "side_text": "A title",
//!   "side_usage": {"input_tokens": 5, "output_tokens": 1}
//! }"#)?;
//! assert_eq!(script.turns.len(), 4);
//! assert!(matches!(script.when_exhausted, WhenExhausted::Default(_)));
//! # Ok::<(), parhelia_testkit::model_stand_in::ScriptError>(())
//! ```
//!
//! A turn is exactly one of: `text` alone (stop reason `end_turn`), `tool_use` with an optional
//! leading `text` (stop reason `tool_use`), `error` (an HTTP error answer; `type` and
//! `message` default from the status, `body` replaces the whole JSON body), or `hold` (its text,
//! sent only once the test calls `StandIn::release_hold`). `times` defaults to
//! 1; `usage` to 100 input and 10 output tokens. Instead of `default`, `"repeat_last": true`
//! serves the last turn forever; with neither, an exhausted script answers `script exhausted`.
//! Side requests get `side_text` (default `Stand-in side answer`) with `side_usage` (10/5).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Token counts the stand-in reports for one answer; Claude Code prices these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_creation_input_tokens: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_read_input_tokens: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Usage {
    /// Input and output tokens only, no cache tokens.
    pub const fn new(input_tokens: u64, output_tokens: u64) -> Self {
        Self {
            input_tokens,
            output_tokens,
            cache_creation_input_tokens: 0,
            cache_read_input_tokens: 0,
        }
    }
}

impl Default for Usage {
    /// Small but non-zero, so a default turn still has a visible cost.
    fn default() -> Self {
        Self::new(100, 10)
    }
}

/// One tool call the "model" makes, e.g. `Write {file_path, content}` or `Bash {command}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolCall {
    pub name: String,
    pub input: Value,
}

impl ToolCall {
    pub fn new(name: impl Into<String>, input: Value) -> Self {
        Self {
            name: name.into(),
            input,
        }
    }

    /// Claude Code's `Write` tool. A relative path is resolved against Claude Code's cwd.
    pub fn write(file_path: impl Into<String>, content: impl Into<String>) -> Self {
        Self::new(
            "Write",
            serde_json::json!({"file_path": file_path.into(), "content": content.into()}),
        )
    }

    /// Claude Code's `Bash` tool.
    pub fn bash(command: impl Into<String>) -> Self {
        Self::new("Bash", serde_json::json!({"command": command.into()}))
    }
}

/// An HTTP error answer, shaped like the real API's:
/// `{"type":"error","error":{"type":…,"message":…},"request_id":…}` unless `body` overrides it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorReply {
    pub status: u16,
    /// The API's error type, e.g. `overloaded_error`, `api_error`, `authentication_error`,
    /// `rate_limit_error`. Defaults from the status when absent.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Extra response headers, e.g. `{"retry-after": "1"}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// A complete replacement for the JSON body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

impl ErrorReply {
    pub fn new(status: u16) -> Self {
        Self {
            status,
            error_type: None,
            message: None,
            headers: BTreeMap::new(),
            body: None,
        }
    }

    /// 529 `overloaded_error`, which Claude Code retries.
    pub fn overloaded() -> Self {
        Self::new(529)
    }

    /// 500 `api_error`, which Claude Code retries.
    pub fn internal() -> Self {
        Self::new(500)
    }

    /// 401 `authentication_error`, which Claude Code does not retry.
    pub fn unauthorized() -> Self {
        Self::new(401)
    }

    /// 429 `rate_limit_error` with a `retry-after` header (seconds).
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        Self::new(429).with_header("retry-after", retry_after_secs.to_string())
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }

    /// The error type the body names: the explicit one, else the API's usual type for the status.
    pub fn effective_type(&self) -> String {
        if let Some(error_type) = &self.error_type {
            return error_type.clone();
        }
        match self.status {
            400 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            529 => "overloaded_error",
            _ => "api_error",
        }
        .to_owned()
    }

    /// The message the body carries: the explicit one, else the API's usual wording.
    pub fn effective_message(&self) -> String {
        if let Some(message) = &self.message {
            return message.clone();
        }
        match self.status {
            401 => "invalid x-api-key",
            429 => "Number of requests has exceeded your rate limit",
            529 => "Overloaded",
            _ => "Internal server error",
        }
        .to_owned()
    }

    /// The JSON body to send.
    pub fn body_json(&self, request_id: &str) -> Value {
        match &self.body {
            Some(body) => body.clone(),
            None => serde_json::json!({
                "type": "error",
                "error": {"type": self.effective_type(), "message": self.effective_message()},
                "request_id": request_id,
            }),
        }
    }
}

/// What one turn answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Assistant text; stop reason `end_turn`.
    Text(String),
    /// Tool calls, optionally after some text; stop reason `tool_use`.
    ToolUse {
        text: Option<String>,
        calls: Vec<ToolCall>,
    },
    /// An HTTP error instead of a message.
    Error(ErrorReply),
    /// This text (stop reason `end_turn`), but held: the response's headers go out at
    /// once and its body only after [`StandIn::release_hold`](super::StandIn::release_hold)
    /// (one release per held request, in arrival order). Lets a test act — kill Claude
    /// Code, send a message — while a turn is certainly in flight, without timing.
    Hold(String),
}

/// One scripted turn: a reply, how many requests it answers, and the usage it reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "TurnRepr", into = "TurnRepr")]
pub struct Turn {
    pub reply: Reply,
    /// How many consecutive tool-carrying requests this turn answers (at least 1).
    pub times: u32,
    pub usage: Usage,
}

impl Turn {
    pub fn new(reply: Reply) -> Self {
        Self {
            reply,
            times: 1,
            usage: Usage::default(),
        }
    }

    pub fn text(text: impl Into<String>) -> Self {
        Self::new(Reply::Text(text.into()))
    }

    pub fn tool_use(calls: impl IntoIterator<Item = ToolCall>) -> Self {
        Self::new(Reply::ToolUse {
            text: None,
            calls: calls.into_iter().collect(),
        })
    }

    /// Tool calls preceded by a text block, as the real model often answers.
    pub fn text_then_tool_use(
        text: impl Into<String>,
        calls: impl IntoIterator<Item = ToolCall>,
    ) -> Self {
        Self::new(Reply::ToolUse {
            text: Some(text.into()),
            calls: calls.into_iter().collect(),
        })
    }

    pub fn error(error: ErrorReply) -> Self {
        Self::new(Reply::Error(error))
    }

    /// Text held until the test releases it (see [`Reply::Hold`]).
    pub fn hold(text: impl Into<String>) -> Self {
        Self::new(Reply::Hold(text.into()))
    }

    /// Serve this turn to `times` consecutive tool-carrying requests (e.g. every retry).
    pub fn times(mut self, times: u32) -> Self {
        self.times = times;
        self
    }

    pub fn with_usage(mut self, input_tokens: u64, output_tokens: u64) -> Self {
        self.usage = Usage {
            input_tokens,
            output_tokens,
            ..self.usage
        };
        self
    }

    pub fn with_full_usage(mut self, usage: Usage) -> Self {
        self.usage = usage;
        self
    }

    /// A short description for logs, e.g. `tool_use Write,Bash` or `error 529`.
    pub fn summary(&self) -> String {
        match &self.reply {
            Reply::Text(_) => "text".to_owned(),
            Reply::ToolUse { calls, .. } => {
                let names: Vec<&str> = calls.iter().map(|call| call.name.as_str()).collect();
                format!("tool_use {}", names.join(","))
            }
            Reply::Error(error) => format!("error {}", error.status),
            Reply::Hold(_) => "hold".to_owned(),
        }
    }
}

/// Why a script or turn was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    /// a turn must have exactly one of `text`, `tool_use` or `error` (`text` may lead `tool_use`)
    #[error(
        "a turn must have exactly one of `text`, `tool_use` or `error` (`text` may lead `tool_use`)"
    )]
    AmbiguousTurn,
    /// `times` must be at least 1
    #[error("`times` must be at least 1")]
    ZeroTimes,
    /// `repeat_last` and `default` exclude each other
    #[error("`repeat_last` and `default` exclude each other")]
    RepeatLastAndDefault,
    /// `repeat_last` needs at least one turn
    #[error("`repeat_last` needs at least one turn")]
    RepeatLastWithoutTurns,
    /// the script is not valid JSON of the expected shape
    #[error("invalid script JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// a part of the script has the wrong shape (reported inside [`ScriptError::Json`])
    #[error(transparent)]
    Shape(serde_json::Error),
    /// the script file could not be read
    #[error("cannot read script {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

/// The flat JSON shape of a turn; [`Turn`] converts through it so the Rust type stays an enum.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TurnRepr {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tool_use: Vec<ToolCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<ErrorReply>,
    /// Text answered only once released (`Reply::Hold`); excludes the other three.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hold: Option<String>,
    #[serde(default = "one", skip_serializing_if = "is_one")]
    times: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

impl TryFrom<TurnRepr> for Turn {
    type Error = ScriptError;

    fn try_from(repr: TurnRepr) -> Result<Self, ScriptError> {
        if repr.times == 0 {
            return Err(ScriptError::ZeroTimes);
        }
        let reply = match (repr.text, repr.tool_use.is_empty(), repr.error) {
            (None, true, None) if repr.hold.is_some() => Reply::Hold(repr.hold.unwrap_or_default()),
            _ if repr.hold.is_some() => return Err(ScriptError::AmbiguousTurn),
            (None, true, Some(error)) => Reply::Error(error),
            (text, false, None) => Reply::ToolUse {
                text,
                calls: repr.tool_use,
            },
            (Some(text), true, None) => Reply::Text(text),
            _ => return Err(ScriptError::AmbiguousTurn),
        };
        Ok(Turn {
            reply,
            times: repr.times,
            usage: repr.usage.unwrap_or_default(),
        })
    }
}

impl From<Turn> for TurnRepr {
    fn from(turn: Turn) -> Self {
        let (text, tool_use, error, hold) = match turn.reply {
            Reply::Text(text) => (Some(text), Vec::new(), None, None),
            Reply::ToolUse { text, calls } => (text, calls, None, None),
            Reply::Error(error) => (None, Vec::new(), Some(error), None),
            Reply::Hold(text) => (None, Vec::new(), None, Some(text)),
        };
        TurnRepr {
            text,
            tool_use,
            error,
            hold,
            times: turn.times,
            usage: Some(turn.usage),
        }
    }
}

/// What to answer once every turn has been served.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum WhenExhausted {
    /// Answer `script exhausted` with `end_turn`, so Claude Code finishes its turn cleanly; the
    /// request is logged as [`RequestKind::Exhausted`](super::RequestKind::Exhausted).
    #[default]
    SayExhausted,
    /// Serve the last turn again, forever.
    RepeatLast,
    /// Serve this turn, forever.
    Default(Turn),
}

/// The whole script. See the module docs for the JSON shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Value", into = "ScriptObject")]
pub struct Script {
    pub turns: Vec<Turn>,
    pub when_exhausted: WhenExhausted,
    /// The text answered to side requests (requests without tools, e.g. title generation).
    pub side_text: String,
    /// The usage reported for side requests.
    pub side_usage: Usage,
}

/// The text side requests get unless the script says otherwise.
pub const DEFAULT_SIDE_TEXT: &str = "Stand-in side answer";

/// The text served when the script has run out under [`WhenExhausted::SayExhausted`].
pub const EXHAUSTED_TEXT: &str = "script exhausted";

impl Script {
    pub fn new(turns: impl IntoIterator<Item = Turn>) -> Self {
        Self {
            turns: turns.into_iter().collect(),
            when_exhausted: WhenExhausted::default(),
            side_text: DEFAULT_SIDE_TEXT.to_owned(),
            side_usage: Usage::new(10, 5),
        }
    }

    pub fn when_exhausted(mut self, policy: WhenExhausted) -> Self {
        self.when_exhausted = policy;
        self
    }

    pub fn from_json(json: &str) -> Result<Self, ScriptError> {
        let script: Script = serde_json::from_str(json)?;
        script.validate()?;
        Ok(script)
    }

    pub fn from_file(path: &Path) -> Result<Self, ScriptError> {
        let json = std::fs::read_to_string(path).map_err(|source| ScriptError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&json)
    }

    /// Checks what the types cannot: a script built in Rust may still say `times: 0`.
    pub fn validate(&self) -> Result<(), ScriptError> {
        let exhausted_turn = match &self.when_exhausted {
            WhenExhausted::Default(turn) => Some(turn),
            _ => None,
        };
        if self
            .turns
            .iter()
            .chain(exhausted_turn)
            .any(|t| t.times == 0)
        {
            return Err(ScriptError::ZeroTimes);
        }
        if self.when_exhausted == WhenExhausted::RepeatLast && self.turns.is_empty() {
            return Err(ScriptError::RepeatLastWithoutTurns);
        }
        Ok(())
    }

    /// The built-in demo: Write `hello.txt` saying "hi", `cat hello.txt` with Bash, then "done".
    pub fn demo() -> Self {
        Self::new([
            Turn::text_then_tool_use(
                "I'll create hello.txt.",
                [ToolCall::write("hello.txt", "hi\n")],
            ),
            Turn::tool_use([ToolCall::bash("cat hello.txt")]),
            Turn::text("done"),
        ])
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptObject {
    turns: Vec<Turn>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    repeat_last: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    default: Option<Turn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    side_text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    side_usage: Option<Usage>,
}

/// Goes through `Value` rather than an untagged enum so a bad turn reports its own error
/// instead of serde's "did not match any variant".
impl TryFrom<Value> for Script {
    type Error = ScriptError;

    fn try_from(value: Value) -> Result<Self, ScriptError> {
        if value.is_array() {
            let turns: Vec<Turn> = serde_json::from_value(value).map_err(ScriptError::Shape)?;
            return Ok(Script::new(turns));
        }
        let object: ScriptObject = serde_json::from_value(value).map_err(ScriptError::Shape)?;
        let when_exhausted = match (object.repeat_last, object.default) {
            (true, Some(_)) => return Err(ScriptError::RepeatLastAndDefault),
            (true, None) => WhenExhausted::RepeatLast,
            (false, Some(turn)) => WhenExhausted::Default(turn),
            (false, None) => WhenExhausted::SayExhausted,
        };
        let mut script = Script::new(object.turns).when_exhausted(when_exhausted);
        if let Some(side_text) = object.side_text {
            script.side_text = side_text;
        }
        if let Some(side_usage) = object.side_usage {
            script.side_usage = side_usage;
        }
        Ok(script)
    }
}

impl From<Script> for ScriptObject {
    fn from(script: Script) -> Self {
        let (repeat_last, default) = match script.when_exhausted {
            WhenExhausted::SayExhausted => (false, None),
            WhenExhausted::RepeatLast => (true, None),
            WhenExhausted::Default(turn) => (false, Some(turn)),
        };
        ScriptObject {
            turns: script.turns,
            repeat_last,
            default,
            side_text: Some(script.side_text),
            side_usage: Some(script.side_usage),
        }
    }
}

/// Which turn answers a tool-carrying request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Served {
    /// Turn `index` of the script.
    Scripted { index: usize, turn: Turn },
    /// The script had run out; `turn` is what the exhaustion policy chose.
    Exhausted { turn: Turn },
}

/// Walks a script: serves each turn `times` times, then applies the exhaustion policy.
#[derive(Debug)]
pub(crate) struct ScriptCursor {
    script: Script,
    /// Index of the turn the next request gets.
    index: usize,
    /// How many times the turn at `index` has been served already.
    served_of_current: u32,
    /// Tool-carrying requests answered from the script's own turns.
    consumed: usize,
}

impl ScriptCursor {
    pub(crate) fn new(script: Script) -> Self {
        Self {
            script,
            index: 0,
            served_of_current: 0,
            consumed: 0,
        }
    }

    pub(crate) fn script(&self) -> &Script {
        &self.script
    }

    pub(crate) fn consumed(&self) -> usize {
        self.consumed
    }

    /// Servings still left before the script is exhausted.
    pub(crate) fn remaining(&self) -> usize {
        self.script
            .turns
            .iter()
            .skip(self.index)
            .map(|turn| turn.times as usize)
            .sum::<usize>()
            - self.served_of_current as usize
    }

    pub(crate) fn next_turn(&mut self) -> Served {
        if let Some(turn) = self.script.turns.get(self.index) {
            let served = Served::Scripted {
                index: self.index,
                turn: turn.clone(),
            };
            self.served_of_current += 1;
            if self.served_of_current >= turn.times {
                self.index += 1;
                self.served_of_current = 0;
            }
            self.consumed += 1;
            return served;
        }
        let turn = match &self.script.when_exhausted {
            WhenExhausted::SayExhausted => Turn::text(EXHAUSTED_TEXT),
            WhenExhausted::Default(turn) => turn.clone(),
            // `validate` guarantees a last turn; a script built past it still gets an answer.
            WhenExhausted::RepeatLast => match self.script.turns.last() {
                Some(turn) => turn.clone(),
                None => Turn::text(EXHAUSTED_TEXT),
            },
        };
        Served::Exhausted { turn }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served_summaries(cursor: &mut ScriptCursor, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| match cursor.next_turn() {
                Served::Scripted { index, turn } => format!("{index}:{}", turn.summary()),
                Served::Exhausted { turn } => format!("exhausted:{}", turn.summary()),
            })
            .collect()
    }

    #[test]
    fn turns_are_served_in_order_and_times_repeats_a_turn() {
        let script = Script::from_json(
            r#"[
                {"error": {"status": 529}, "times": 3},
                {"tool_use": [{"name": "Bash", "input": {"command": "true"}}]},
                {"text": "done"}
            ]"#,
        )
        .expect("valid script");
        let mut cursor = ScriptCursor::new(script);
        assert_eq!(cursor.remaining(), 5);
        assert_eq!(
            served_summaries(&mut cursor, 7),
            [
                "0:error 529",
                "0:error 529",
                "0:error 529",
                "1:tool_use Bash",
                "2:text",
                "exhausted:text",
                "exhausted:text",
            ]
        );
        assert_eq!(cursor.consumed(), 5);
        assert_eq!(cursor.remaining(), 0);
    }

    #[test]
    fn exhaustion_policies() {
        let json = r#"{"turns": [{"text": "a"}, {"text": "b"}], "repeat_last": true}"#;
        let mut cursor = ScriptCursor::new(Script::from_json(json).expect("valid"));
        cursor.next_turn();
        cursor.next_turn();
        assert_eq!(
            cursor.next_turn(),
            Served::Exhausted {
                turn: Turn::text("b")
            }
        );

        let json = r#"{"turns": [], "default": {"error": {"status": 500}}}"#;
        let mut cursor = ScriptCursor::new(Script::from_json(json).expect("valid"));
        assert_eq!(
            cursor.next_turn(),
            Served::Exhausted {
                turn: Turn::error(ErrorReply::internal())
            }
        );

        let mut cursor = ScriptCursor::new(Script::new([]));
        assert_eq!(
            cursor.next_turn(),
            Served::Exhausted {
                turn: Turn::text(EXHAUSTED_TEXT)
            }
        );
    }

    #[test]
    fn invalid_scripts_are_rejected() {
        let cases = [
            r#"[{"text": "a", "error": {"status": 500}}]"#,
            r#"[{"tool_use": [{"name": "Bash", "input": {}}], "error": {"status": 500}}]"#,
            r#"[{}]"#,
            r#"[{"text": "a", "times": 0}]"#,
            r#"[{"text": "a", "bogus": 1}]"#,
            r#"{"turns": [{"text": "a"}], "repeat_last": true, "default": {"text": "b"}}"#,
            r#"{"turns": [], "repeat_last": true}"#,
        ];
        for json in cases {
            assert!(Script::from_json(json).is_err(), "accepted: {json}");
        }
    }

    #[test]
    fn json_round_trip_keeps_the_script() {
        let script = Script::new([
            Turn::text_then_tool_use("Writing.", [ToolCall::write("a.txt", "x")]).with_usage(7, 3),
            Turn::error(ErrorReply::rate_limited(2)).times(4),
            Turn::text("done"),
        ])
        .when_exhausted(WhenExhausted::Default(Turn::text("again")));
        let json = serde_json::to_string(&script).expect("serializes");
        assert_eq!(Script::from_json(&json).expect("parses back"), script);
        assert_eq!(
            Script::from_json(&serde_json::to_string(&Script::demo()).expect("serializes"))
                .expect("parses back"),
            Script::demo()
        );
    }

    #[test]
    fn error_defaults_follow_the_status() {
        let body = ErrorReply::overloaded().body_json("req_1");
        assert_eq!(body["error"]["type"], "overloaded_error");
        assert_eq!(body["type"], "error");
        assert_eq!(
            ErrorReply::unauthorized().effective_type(),
            "authentication_error"
        );
        assert_eq!(
            ErrorReply::rate_limited(3).headers.get("retry-after"),
            Some(&"3".to_owned())
        );
    }
}
