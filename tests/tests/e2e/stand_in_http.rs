//! The stand-in over real HTTP: routing, turn consumption, side requests, errors, the log.
//!
//! Requests go out as HTTP/1.0 so the server ends the body by closing the connection, which
//! keeps this client a few lines of std instead of a chunked-encoding parser.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use parhelia_testkit::model_stand_in::{
    ErrorReply, RequestKind, Script, StandIn, StandInOptions, ToolCall, Turn, Usage, WhenExhausted,
};
use serde_json::{Value, json};

struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `data:` payloads of an SSE body, with their event names.
    fn sse_events(&self) -> Vec<(String, Value)> {
        self.body
            .split("\n\n")
            .filter(|chunk| !chunk.is_empty())
            .map(|chunk| {
                let mut lines = chunk.lines();
                let name = lines.next().and_then(|l| l.strip_prefix("event: "));
                let data = lines.next().and_then(|l| l.strip_prefix("data: "));
                let (Some(name), Some(data)) = (name, data) else {
                    panic!("malformed event: {chunk:?}");
                };
                (name.to_owned(), serde_json::from_str(data).expect("json"))
            })
            .collect()
    }
}

fn send(stand_in: &StandIn, method: &str, path: &str, body: Option<&Value>) -> HttpResponse {
    let mut stream = TcpStream::connect(stand_in.addr()).expect("connect");
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nhost: {}\r\nx-api-key: secret-key\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        stand_in.addr(),
        body.len()
    )
    .expect("write request");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("read response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("header end");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    }
}

fn messages_body(with_tools: bool, stream: bool, user_text: &str) -> Value {
    let tools = if with_tools {
        json!([{"name": "Bash", "input_schema": {"type": "object"}}])
    } else {
        json!([])
    };
    json!({
        "model": "claude-test-model",
        "max_tokens": 100,
        "stream": stream,
        "tools": tools,
        "messages": [{"role": "user", "content": user_text}],
    })
}

#[test]
fn tool_carrying_requests_consume_turns_and_side_requests_do_not() {
    let stand_in = StandIn::start(Script::new([
        Turn::tool_use([ToolCall::bash("echo hi")]).with_usage(11, 22),
        Turn::text("done"),
    ]))
    .expect("start");

    let side = send(
        &stand_in,
        "POST",
        "/v1/messages?beta=true",
        Some(&messages_body(false, true, "title please")),
    );
    assert_eq!(side.status, 200);
    assert_eq!(
        stand_in.turns_consumed(),
        0,
        "side requests consume nothing"
    );

    let first = send(
        &stand_in,
        "POST",
        "/v1/messages?beta=true",
        Some(&messages_body(true, true, "go")),
    );
    assert_eq!(first.status, 200);
    assert!(
        first
            .header("content-type")
            .is_some_and(|v| v.starts_with("text/event-stream"))
    );
    let events = first.sse_events();
    let start = &events[0].1["message"];
    assert_eq!(
        start["model"], "claude-test-model",
        "the requested model is echoed"
    );
    assert_eq!(start["usage"]["input_tokens"], 11);
    let tool_start = events
        .iter()
        .find(|(name, data)| {
            name == "content_block_start" && data["content_block"]["type"] == "tool_use"
        })
        .expect("a tool_use block");
    assert_eq!(tool_start.1["content_block"]["name"], "Bash");
    let delta = events
        .iter()
        .find(|(name, _)| name == "message_delta")
        .expect("message_delta");
    assert_eq!(delta.1["delta"]["stop_reason"], "tool_use");
    assert_eq!(delta.1["usage"]["output_tokens"], 22);
    assert_eq!(events.last().map(|e| e.0.as_str()), Some("message_stop"));

    let second = send(
        &stand_in,
        "POST",
        "/v1/messages",
        Some(&messages_body(true, false, "go on")),
    );
    let message: Value = serde_json::from_str(&second.body).expect("json message");
    assert_eq!(message["content"][0]["text"], "done");
    assert_eq!(message["stop_reason"], "end_turn");
    assert_eq!(stand_in.turns_consumed(), 2);
    assert_eq!(stand_in.turns_remaining(), 0);

    let exhausted = send(
        &stand_in,
        "POST",
        "/v1/messages",
        Some(&messages_body(true, false, "more")),
    );
    let message: Value = serde_json::from_str(&exhausted.body).expect("json message");
    assert_eq!(message["content"][0]["text"], "script exhausted");
    assert_eq!(
        stand_in.turns_consumed(),
        2,
        "exhausted answers are not turns"
    );

    let kinds: Vec<RequestKind> = stand_in.requests().iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        [
            RequestKind::Side,
            RequestKind::Turn,
            RequestKind::Turn,
            RequestKind::Exhausted
        ]
    );
    let log = stand_in.requests();
    assert_eq!(log[1].turn_index, Some(0));
    assert_eq!(log[1].path, "/v1/messages?beta=true");
    assert_eq!(log[1].last_user_text.as_deref(), Some("go"));
    assert_eq!(log[1].headers["x-api-key"], "<redacted>");
}

#[test]
fn an_error_turn_repeats_times_then_the_script_moves_on() {
    let stand_in = StandIn::start(Script::new([
        Turn::error(ErrorReply::rate_limited(7)).times(2),
        Turn::text("recovered"),
    ]))
    .expect("start");
    let body = messages_body(true, true, "go");
    for _ in 0..2 {
        let response = send(&stand_in, "POST", "/v1/messages", Some(&body));
        assert_eq!(response.status, 429);
        assert_eq!(response.header("retry-after"), Some("7"));
        let error: Value = serde_json::from_str(&response.body).expect("json error");
        assert_eq!(error["type"], "error");
        assert_eq!(error["error"]["type"], "rate_limit_error");
    }
    let response = send(&stand_in, "POST", "/v1/messages", Some(&body));
    assert_eq!(response.status, 200);
    assert_eq!(stand_in.turns_consumed(), 3);
}

#[test]
fn other_endpoints_get_answers_not_404s() {
    let stand_in = StandIn::start(Script::new([])).expect("start");
    let count = send(
        &stand_in,
        "POST",
        "/v1/messages/count_tokens",
        Some(&messages_body(true, false, "count me")),
    );
    assert_eq!(count.status, 200);
    let count: Value = serde_json::from_str(&count.body).expect("json");
    assert!(count["input_tokens"].as_u64().is_some_and(|n| n > 0));

    let models = send(&stand_in, "GET", "/v1/models", None);
    let models: Value = serde_json::from_str(&models.body).expect("json");
    assert!(models["data"].as_array().is_some_and(|d| !d.is_empty()));

    assert_eq!(send(&stand_in, "HEAD", "/api/hello", None).status, 200);
    assert_eq!(send(&stand_in, "GET", "/somewhere/else", None).status, 200);
    let bad = send(&stand_in, "POST", "/v1/messages", None);
    assert_eq!(bad.status, 400);

    let kinds: Vec<RequestKind> = stand_in.requests().iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        [
            RequestKind::CountTokens,
            RequestKind::Models,
            RequestKind::Probe,
            RequestKind::Other,
            RequestKind::BadRequest
        ]
    );
    assert_eq!(stand_in.turns_consumed(), 0);
}

#[test]
fn side_requests_use_the_scripts_side_text_and_the_log_file_gets_json_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log_path = dir.path().join("requests.jsonl");
    let mut script = Script::new([]).when_exhausted(WhenExhausted::Default(Turn::text("again")));
    script.side_text = "A Title".to_owned();
    script.side_usage = Usage::new(1, 2);
    let stand_in = StandIn::start_with(
        script,
        StandInOptions {
            log_path: Some(log_path.clone()),
            log_bodies: true,
            ..StandInOptions::default()
        },
    )
    .expect("start");
    let side = send(
        &stand_in,
        "POST",
        "/v1/messages",
        Some(&messages_body(false, false, "t")),
    );
    let side: Value = serde_json::from_str(&side.body).expect("json");
    assert_eq!(side["content"][0]["text"], "A Title");
    assert_eq!(side["usage"]["output_tokens"], 2);
    let turn = send(
        &stand_in,
        "POST",
        "/v1/messages",
        Some(&messages_body(true, false, "t")),
    );
    let turn: Value = serde_json::from_str(&turn.body).expect("json");
    assert_eq!(turn["content"][0]["text"], "again");

    // The file is written before the response is sent, so it is complete here.
    let lines: Vec<Value> = std::fs::read_to_string(&log_path)
        .expect("log file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["kind"], "side");
    assert_eq!(lines[1]["kind"], "exhausted");
    assert_eq!(lines[1]["body"]["model"], "claude-test-model");
}

#[test]
fn wait_for_sees_requests_made_from_another_thread() {
    let stand_in = StandIn::start(Script::demo()).expect("start");
    std::thread::scope(|scope| {
        scope.spawn(|| {
            send(
                &stand_in,
                "POST",
                "/v1/messages",
                Some(&messages_body(true, true, "go")),
            )
        });
        // The deadline only guards against a hang; the condition is what the test waits on.
        let log = stand_in
            .wait_for(Duration::from_secs(60), |log| !log.is_empty())
            .expect("a request arrives");
        assert_eq!(log[0].reply, "tool_use Write");
    });
}

#[tokio::test]
async fn works_from_an_async_test_and_stops_on_drop() {
    let stand_in = StandIn::start(Script::demo()).expect("start");
    let addr = stand_in.addr();
    drop(stand_in);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "nothing listens after drop"
    );
}
