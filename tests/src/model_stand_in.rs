//! A scripted stand-in for the Anthropic Messages API, for running the real Claude Code in tests.
//!
//! [`StandIn::start`] binds `127.0.0.1` on a free port and serves a [`Script`] from a thread
//! with its own tokio runtime, so it works the same from a plain `#[test]` and from async tests.
//! Point Claude Code at it with `ANTHROPIC_BASE_URL=`[`StandIn::base_url`].
//!
//! What it promises:
//! - `POST /v1/messages` (any query string, e.g. `?beta=true`) whose body has a non-empty
//!   `tools` array consumes one serving of the script (see [`script`] for `times` and
//!   exhaustion). A request without tools is a side request and gets
//!   [`Script::side_text`] without consuming anything.
//! - Answers stream as server-sent events exactly in the API's event order when the body says
//!   `"stream": true`, else come as one JSON message (see [`reply`]). Error turns answer with
//!   their HTTP status, headers and an API-shaped error body.
//! - `POST /v1/messages/count_tokens`, `GET /v1/models[/{id}]` and the `HEAD /api/hello`
//!   connectivity check get plausible answers; any other request gets `200 {}` rather than a
//!   404 that could derail Claude Code (and a line on stderr). All are logged.
//! - Every request is logged ([`StandIn::requests`], optionally a JSON-lines file), with
//!   credential header values redacted.
//! - Dropping the [`StandIn`] stops the server and joins its thread.

pub mod pricing;
pub mod reply;
pub mod request_log;
pub mod script;

use std::convert::Infallible;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub use reply::{AssistantMessage, ContentBlock, SseEvent, StopReason};
pub use request_log::{LoggedRequest, RequestKind};
pub use script::{ErrorReply, Reply, Script, ScriptError, ToolCall, Turn, Usage, WhenExhausted};

use request_log::{BodySummary, redacted_headers};
use script::{ScriptCursor, Served};

/// The model named in answers when a request names none.
const FALLBACK_MODEL: &str = "claude-stand-in";

/// Models listed by `GET /v1/models`.
const LISTED_MODELS: &[(&str, &str)] = &[
    ("claude-opus-5-5", "Claude Opus 5.5"),
    ("claude-sonnet-4-6", "Claude Sonnet 4.6"),
    ("claude-haiku-4-5-20251001", "Claude Haiku 4.5"),
];

/// How to run a [`StandIn`]; the default binds a free port and logs only in memory.
#[derive(Debug, Clone, Default)]
pub struct StandInOptions {
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// Append every logged request to this file as one JSON line.
    pub log_path: Option<PathBuf>,
    /// Keep each request's full JSON body in the log (large: Claude Code sends its whole
    /// system prompt and tool schemas every time).
    pub log_bodies: bool,
    /// When set, a `/v1/messages` request whose `x-api-key` (or bearer token) is not
    /// this key is refused with 401 `authentication_error`, consuming no turn, the way
    /// the API refuses a revoked key.
    pub accepted_api_key: Option<String>,
}

/// A running stand-in. Dropping it stops the server.
pub struct StandIn {
    addr: SocketAddr,
    base_url: String,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// A condition passed to [`StandIn::wait_for`] did not hold before the deadline.
#[derive(Debug, thiserror::Error)]
#[error("stand-in condition not met within {timeout:?}; {requests} requests logged")]
pub struct WaitTimedOut {
    pub timeout: Duration,
    pub requests: usize,
}

impl StandIn {
    /// Serves `script` on a free port of 127.0.0.1.
    pub fn start(script: Script) -> anyhow::Result<StandIn> {
        Self::start_with(script, StandInOptions::default())
    }

    pub fn start_with(script: Script, options: StandInOptions) -> anyhow::Result<StandIn> {
        script.validate().context("invalid script")?;
        // Binding here rather than on the server thread means the port is known, and bind
        // errors are reported, before `start` returns.
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", options.port))
            .with_context(|| format!("failed to bind 127.0.0.1:{}", options.port))?;
        std_listener
            .set_nonblocking(true)
            .context("failed to make the listener non-blocking")?;
        let addr = std_listener
            .local_addr()
            .context("failed to read the bound address")?;
        let log_file = match &options.log_path {
            Some(path) => Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("failed to open log file {}", path.display()))?,
            ),
            None => None,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("failed to build the stand-in's runtime")?;
        let listener = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(std_listener)
                .context("failed to register the listener with tokio")?
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(StandInState {
                cursor: ScriptCursor::new(script),
                requests: Vec::new(),
                log_file,
                log_bodies: options.log_bodies,
                accepted_api_key: options.accepted_api_key.clone(),
                next_id: 0,
            }),
            changed: Condvar::new(),
            holds: Arc::new(tokio::sync::Semaphore::new(0)),
        });
        let app = Router::new()
            .fallback(handle_request)
            .with_state(Arc::clone(&shared));
        let (shutdown, shutdown_requested) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("model-stand-in-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::select! {
                        result = axum::serve(listener, app) => {
                            if let Err(error) = result {
                                eprintln!("model stand-in: server failed: {error}");
                            }
                        }
                        _ = shutdown_requested => {}
                    }
                });
                // Dropping the runtime here cancels any connection still open.
            })
            .context("failed to spawn the stand-in thread")?;
        Ok(StandIn {
            addr,
            base_url: format!("http://{addr}"),
            shared,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT`, for `ANTHROPIC_BASE_URL`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.shared.lock().requests.clone()
    }

    /// Tool-carrying requests answered from the script's turns (each repetition of a `times`
    /// turn counts; answers given after exhaustion do not).
    pub fn turns_consumed(&self) -> usize {
        self.shared.lock().cursor.consumed()
    }

    /// Lets the oldest held answer ([`Reply::Hold`]) go out; a release before any
    /// request is held is kept for the next one.
    pub fn release_hold(&self) {
        self.shared.holds.add_permits(1);
    }

    /// Requests answered (or being answered) by a held turn so far.
    pub fn holds_served(&self) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.reply == "hold")
            .count()
    }

    /// Servings left before the script is exhausted.
    pub fn turns_remaining(&self) -> usize {
        self.shared.lock().cursor.remaining()
    }

    /// Blocks until `condition` holds for the request log, or `timeout` passes. Returns the log
    /// at the moment it held. Blocking: from async code, call it via `spawn_blocking`.
    pub fn wait_for(
        &self,
        timeout: Duration,
        mut condition: impl FnMut(&[LoggedRequest]) -> bool,
    ) -> Result<Vec<LoggedRequest>, WaitTimedOut> {
        let guard = self.shared.lock();
        let (guard, result) = self
            .shared
            .changed
            .wait_timeout_while(guard, timeout, |state| !condition(&state.requests))
            .unwrap_or_else(PoisonError::into_inner);
        if result.timed_out() && !condition(&guard.requests) {
            return Err(WaitTimedOut {
                timeout,
                requests: guard.requests.len(),
            });
        }
        Ok(guard.requests.clone())
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            // The receiver is gone only if the server already stopped; nothing to do then.
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            // A panic on the server thread was already printed; don't panic again in drop.
            let _ = thread.join();
        }
    }
}

struct Shared {
    state: Mutex<StandInState>,
    /// Notified after every logged request, for [`StandIn::wait_for`].
    changed: Condvar,
    /// One permit per released held answer ([`StandIn::release_hold`]).
    holds: Arc<tokio::sync::Semaphore>,
}

impl Shared {
    /// The state lock. A panic while holding it cannot leave the state torn (each update is a
    /// push or a counter step), so a poisoned lock is simply taken over.
    fn lock(&self) -> MutexGuard<'_, StandInState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct StandInState {
    cursor: ScriptCursor,
    requests: Vec<LoggedRequest>,
    log_file: Option<File>,
    log_bodies: bool,
    accepted_api_key: Option<String>,
    /// Counter behind message, tool-use and request ids.
    next_id: u64,
}

impl StandInState {
    fn fresh_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}_standin_{:04}", self.next_id)
    }

    fn record(&mut self, request: LoggedRequest) {
        if let Some(file) = &mut self.log_file {
            let written = serde_json::to_string(&request)
                .map_err(std::io::Error::from)
                .and_then(|line| writeln!(file, "{line}"))
                .and_then(|()| file.flush());
            if let Err(error) = written {
                // The in-memory log is still complete; stop writing a file that fails.
                eprintln!("model stand-in: cannot write the request log, disabling it: {error}");
                self.log_file = None;
            }
        }
        self.requests.push(request);
    }
}

/// What the router hands every request to; classification happens in [`answer`].
async fn handle_request(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer(&shared, &method, &uri, &headers, &body)
}

/// A response plus the bookkeeping the log needs.
struct Answer {
    kind: RequestKind,
    /// The id of the assistant message served (a turn or side answer).
    message_id: Option<String>,
    turn_index: Option<usize>,
    reply: String,
    response: Response,
}

fn answer(
    shared: &Shared,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let json_body: Option<Value> = serde_json::from_slice(body).ok();
    let summary = json_body.as_ref().map(BodySummary::of).unwrap_or_default();
    let mut state = shared.lock();
    let request_id = state.fresh_id("req");
    let path = uri.path();
    let presented = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        });
    let refused_key = state
        .accepted_api_key
        .as_deref()
        .is_some_and(|accepted| presented != Some(accepted));
    let answer = if method == Method::POST && path == "/v1/messages" && refused_key {
        Answer {
            message_id: None,
            kind: RequestKind::Unauthorized,
            turn_index: None,
            reply: "error 401".to_owned(),
            response: error_response(&ErrorReply::unauthorized(), &request_id),
        }
    } else if method == Method::POST && path == "/v1/messages" {
        match &json_body {
            Some(body) if body.is_object() => {
                answer_messages(&mut state, &summary, &request_id, &shared.holds)
            }
            _ => Answer {
                message_id: None,
                kind: RequestKind::BadRequest,
                turn_index: None,
                reply: "error 400".to_owned(),
                response: error_response(
                    &ErrorReply::new(400).with_message("body is not a JSON object"),
                    &request_id,
                ),
            },
        }
    } else if method == Method::POST && path == "/v1/messages/count_tokens" {
        // Roughly four bytes per token, which is what the API's own estimates come to.
        let input_tokens = body.len() / 4;
        Answer {
            message_id: None,
            kind: RequestKind::CountTokens,
            turn_index: None,
            reply: format!("input_tokens {input_tokens}"),
            response: json_response(json!({"input_tokens": input_tokens})),
        }
    } else if method == Method::GET && (path == "/v1/models" || path.starts_with("/v1/models/")) {
        Answer {
            message_id: None,
            kind: RequestKind::Models,
            turn_index: None,
            reply: "models".to_owned(),
            response: json_response(models_body(path.strip_prefix("/v1/models/"))),
        }
    } else if (method == Method::HEAD || method == Method::GET)
        && (path == "/" || path == "/api/hello")
    {
        Answer {
            message_id: None,
            kind: RequestKind::Probe,
            turn_index: None,
            reply: "ok".to_owned(),
            response: StatusCode::OK.into_response(),
        }
    } else {
        eprintln!("model stand-in: unexpected {method} {uri}; answering 200 {{}}");
        Answer {
            message_id: None,
            kind: RequestKind::Other,
            turn_index: None,
            reply: "empty".to_owned(),
            response: json_response(json!({})),
        }
    };
    let log_body = if state.log_bodies { json_body } else { None };
    let seq = state.requests.len();
    state.record(LoggedRequest {
        seq,
        at_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        method: method.to_string(),
        path: uri
            .path_and_query()
            .map_or_else(|| path.to_owned(), |pq| pq.as_str().to_owned()),
        kind: answer.kind,
        message_id: answer.message_id,
        turn_index: answer.turn_index,
        reply: answer.reply,
        model: summary.model,
        stream: summary.stream,
        has_tools: summary.tool_count > 0,
        tool_count: summary.tool_count,
        message_count: summary.message_count,
        roles: summary.roles,
        last_user_text: summary.last_user_text,
        tool_results: summary.tool_results,
        headers: redacted_headers(headers),
        body: log_body,
    });
    drop(state);
    shared.changed.notify_all();
    let mut response = answer.response;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("request-id", value);
    }
    response
}

/// Answers `POST /v1/messages`: a turn if the body carries tools, else a side answer.
fn answer_messages(
    state: &mut StandInState,
    summary: &BodySummary,
    request_id: &str,
    holds: &Arc<tokio::sync::Semaphore>,
) -> Answer {
    let (kind, turn_index, turn) = if summary.tool_count > 0 {
        match state.cursor.next_turn() {
            Served::Scripted { index, turn } => (RequestKind::Turn, Some(index), turn),
            Served::Exhausted { turn } => {
                eprintln!(
                    "model stand-in: script exhausted; answering {}",
                    turn.summary()
                );
                (RequestKind::Exhausted, None, turn)
            }
        }
    } else {
        let script = state.cursor.script();
        let turn = Turn::text(script.side_text.clone()).with_full_usage(script.side_usage);
        (RequestKind::Side, None, turn)
    };
    let reply = turn.summary();
    let model = summary.model.as_deref().unwrap_or(FALLBACK_MODEL);
    let mut held = false;
    let content = match turn.reply {
        Reply::Hold(text) => {
            held = true;
            vec![ContentBlock::Text(text)]
        }
        Reply::Error(error) => {
            return Answer {
                message_id: None,
                kind,
                turn_index,
                reply,
                response: error_response(&error, request_id),
            };
        }
        Reply::Text(text) => vec![ContentBlock::Text(text)],
        Reply::ToolUse { text, calls } => {
            let mut blocks: Vec<ContentBlock> = text.into_iter().map(ContentBlock::Text).collect();
            for call in calls {
                blocks.push(ContentBlock::ToolUse {
                    id: state.fresh_id("toolu"),
                    name: call.name,
                    input: call.input,
                });
            }
            blocks
        }
    };
    let stop_reason = if content
        .iter()
        .any(|block| matches!(block, ContentBlock::ToolUse { .. }))
    {
        StopReason::ToolUse
    } else {
        StopReason::EndTurn
    };
    let message = AssistantMessage {
        id: state.fresh_id("msg"),
        model: model.to_owned(),
        content,
        stop_reason,
        usage: turn.usage,
    };
    let gate = held.then(|| Arc::clone(holds));
    let response = if summary.stream == Some(true) {
        sse_response(&message, gate)
    } else if let Some(gate) = gate {
        (
            [(header::CONTENT_TYPE, "application/json")],
            held_body(gate, vec![Bytes::from(message.to_json().to_string())]),
        )
            .into_response()
    } else {
        json_response(message.to_json())
    };
    Answer {
        kind,
        message_id: Some(message.id.clone()),
        turn_index,
        reply,
        response,
    }
}

fn sse_response(message: &AssistantMessage, gate: Option<Arc<tokio::sync::Semaphore>>) -> Response {
    // One body frame per event, as a real server flushes them.
    let frames: Vec<Bytes> = message
        .to_sse_events()
        .into_iter()
        .map(|event| Bytes::from(event.encode()))
        .collect();
    let body = match gate {
        Some(gate) => held_body(gate, frames),
        None => Body::from_stream(futures::stream::iter(
            frames.into_iter().map(Ok::<_, Infallible>),
        )),
    };
    (
        [
            (header::CONTENT_TYPE, "text/event-stream; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// A body whose frames go out only once `gate` gives a permit (which it keeps).
fn held_body(gate: Arc<tokio::sync::Semaphore>, frames: Vec<Bytes>) -> Body {
    use futures::StreamExt as _;
    let stream = futures::stream::once(async move {
        if let Ok(permit) = gate.acquire().await {
            permit.forget();
        }
        futures::stream::iter(frames.into_iter().map(Ok::<_, Infallible>))
    })
    .flatten();
    Body::from_stream(stream)
}

fn json_response(body: Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn error_response(error: &ErrorReply, request_id: &str) -> Response {
    let status = StatusCode::from_u16(error.status).unwrap_or_else(|_| {
        eprintln!(
            "model stand-in: scripted status {} is not an HTTP status; sending 500",
            error.status
        );
        StatusCode::INTERNAL_SERVER_ERROR
    });
    let mut response = json_response(error.body_json(request_id));
    *response.status_mut() = status;
    for (name, value) in &error.headers {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(name), Ok(value)) => {
                response.headers_mut().insert(name, value);
            }
            _ => eprintln!("model stand-in: skipping invalid scripted header {name}: {value}"),
        }
    }
    response
}

fn models_body(model_id: Option<&str>) -> Value {
    let model = |id: &str, display_name: &str| {
        json!({"type": "model", "id": id, "display_name": display_name,
               "created_at": "2025-01-01T00:00:00Z"})
    };
    match model_id {
        Some(id) => model(id, id),
        None => {
            let data: Vec<Value> = LISTED_MODELS
                .iter()
                .map(|(id, name)| model(id, name))
                .collect();
            json!({"data": data, "has_more": false,
                   "first_id": LISTED_MODELS.first().map(|m| m.0),
                   "last_id": LISTED_MODELS.last().map(|m| m.0)})
        }
    }
}
