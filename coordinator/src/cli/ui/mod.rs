//! `parhelia ui`: a local web dashboard (docs/ui.md).
//!
//! One page, served from assets embedded in the binary (no build step, no
//! network: xterm.js is vendored, see `assets/vendor/`). Everything the page
//! shows or does goes through the MCP server's calls ([`super::mcp::tools`]):
//! `POST /api/call/TOOL` takes a tool's arguments and answers with the
//! result the tool gives (the CLI command's `--json`), or its coded error —
//! one source of truth for three fronts. The live parts are pushed, never
//! polled by the page: `GET /api/events` is a server-sent-event stream that
//! follows the event log (as `parhelia events watch`), and
//! `GET /api/attach/SESSION` is a WebSocket onto the session's attach stream
//! (the one `session attach` uses), read-only unless `?write=1`.
//!
//! Guarding it (threat: any web page the user visits, and any process on
//! the machine):
//! - loopback only: another address is refused (E411);
//! - a per-user token (`ui.token` in the state directory, mode 0600, made
//!   once) that the printed URL carries; `GET /?token=…` trades it for a
//!   `SameSite=Strict; HttpOnly` cookie and redirects to `/` so the token
//!   leaves the address bar; every other request needs the cookie (or
//!   `Authorization: Bearer TOKEN`), compared in constant time;
//! - the `Host` header must name the server as loopback (`127.0.0.1:PORT`,
//!   `localhost:PORT`, `[::1]:PORT`): a DNS-rebound name is refused;
//! - an `Origin` header, when sent, must be the server's own; requests that
//!   change something (`POST`) and WebSocket upgrades must carry it;
//! - a strict Content-Security-Policy: the page runs only its own scripts
//!   (styles may be inline: xterm.js sizes its rows with `<style>` elements
//!   it writes; no script can be).

mod assets;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cli::Ctx;
use crate::cli::mcp::{self, tools};
use crate::error::{CodedError, coded, find_coded};
use crate::error_codes;

/// The cookie the token is traded for.
const COOKIE: &str = "parhelia_ui";

/// `parhelia ui`'s options.
#[derive(clap::Args, Debug)]
pub struct UiArgs {
    /// Serve on ADDR: a loopback address (port 0 picks a free port)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8780")]
    pub addr: SocketAddr,
    /// Open the page in the default browser (xdg-open, or open on macOS)
    #[arg(long)]
    pub open: bool,
}

struct Ui {
    ctx: Ctx,
    token: String,
    port: u16,
}

/// `parhelia ui`.
pub async fn run(ctx: &Ctx, args: UiArgs) -> Result<i32> {
    if !args.addr.ip().is_loopback() {
        return Err(coded(
            error_codes::UI_ACCESS_DENIED,
            format!(
                "refusing to serve the dashboard on {} (not loopback): it would carry the session's \
                 terminal and its token over plain HTTP; serve on 127.0.0.1 and reach it through an \
                 SSH tunnel (ssh -L PORT:127.0.0.1:PORT host)",
                args.addr
            ),
        ));
    }
    // The state directory as every command opens it (made private if new).
    let opened = ctx.open()?;
    let token = load_or_make_token(&opened.state.root().join("ui.token"))?;
    drop(opened);
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("listening on {}", args.addr))?;
    let local = listener.local_addr()?;
    let ui = Arc::new(Ui {
        ctx: ctx.clone(),
        token: token.clone(),
        port: local.port(),
    });
    let app = axum::Router::new()
        .route("/", get(index))
        .route("/assets/{name}", get(asset))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/api/call/{tool}", post(call))
        .route("/api/events", get(events))
        .route("/api/attach/{session}", get(attach))
        .layer(axum::middleware::from_fn_with_state(ui.clone(), guard))
        .with_state(ui);
    let url = format!("http://{local}/?token={token}");
    // The URL on stdout (scripts read it), what it is on stderr.
    println!("{url}");
    eprintln!(
        "parhelia ui: serving the dashboard at http://{local}/ (open the URL above; Ctrl-c stops it)"
    );
    if args.open {
        open_browser(&url);
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving the dashboard")?;
    Ok(0)
}

fn open_browser(url: &str) {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    match std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        Ok(_) => eprintln!("parhelia ui: asked {opener} to open it"),
        Err(err) => eprintln!("parhelia ui: could not run {opener} ({err}); open the URL yourself"),
    }
}

/// The per-user token: read, or made (32 random bytes, hex) and written with
/// mode 0600. A file that is not a regular file of ours, or holds no token
/// of the right shape, is refused rather than trusted.
fn load_or_make_token(path: &Path) -> Result<String> {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            if !meta.file_type().is_file() || meta.len() > 1024 {
                return Err(coded(
                    error_codes::UI_ACCESS_DENIED,
                    format!(
                        "{} is not a token file (a link or not a regular file): remove it and run `parhelia ui` again",
                        path.display()
                    ),
                ));
            }
            if meta.mode() & 0o077 != 0 {
                return Err(coded(
                    error_codes::UI_ACCESS_DENIED,
                    format!(
                        "{} can be read by other users (mode {:o}): remove it and run `parhelia ui` again for a new token",
                        path.display(),
                        meta.mode() & 0o777
                    ),
                ));
            }
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let token = text.trim();
            if token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(token.to_string());
            }
            Err(coded(
                error_codes::UI_ACCESS_DENIED,
                format!(
                    "{} does not hold a token: remove it and run `parhelia ui` again",
                    path.display()
                ),
            ))
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let bytes: [u8; 32] = rand::random();
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            // Written whole under a temporary name, then linked into place: a
            // `parhelia ui` starting at the same moment reads one token or the
            // other, never half of one, and both then agree on the one linked.
            let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            file.write_all(format!("{token}\n").as_bytes())?;
            file.sync_all()?;
            drop(file);
            let linked = std::fs::hard_link(&tmp, path);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => Ok(token),
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                    load_or_make_token(path)
                }
                Err(err) => {
                    Err(anyhow::Error::new(err).context(format!("creating {}", path.display())))
                }
            }
        }
        Err(err) => Err(anyhow::Error::new(err).context(format!("reading {}", path.display()))),
    }
}

/// Whether `host` (a Host header) names this server on loopback.
fn host_allowed(host: &str, port: u16) -> bool {
    let Some((name, p)) = host.rsplit_once(':') else {
        return false;
    };
    p.parse::<u16>().ok() == Some(port) && matches!(name, "127.0.0.1" | "localhost" | "[::1]")
}

fn bearer_or_cookie(headers: &HeaderMap) -> Option<String> {
    if let Some(b) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(b.to_string());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

fn same(a: &str, b: &str) -> bool {
    subtle::ConstantTimeEq::ct_eq(a.as_bytes(), b.as_bytes()).into()
}

fn refused(status: StatusCode, message: &str) -> Response {
    let body = json!({
        "error": {
            "code": error_codes::UI_ACCESS_DENIED.code,
            "name": error_codes::UI_ACCESS_DENIED.name,
            "message": message,
            "hint": error_codes::UI_ACCESS_DENIED.hint(),
        }
    });
    (status, axum::Json(body)).into_response()
}

/// Host, Origin and token checks before any route; security headers after.
async fn guard(State(ui): State<Arc<Ui>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !host_allowed(host, ui.port) {
        return refused(
            StatusCode::MISDIRECTED_REQUEST,
            "the Host header does not name this server on loopback",
        );
    }
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let upgrade = headers.contains_key(header::UPGRADE);
    let changes = request.method() != Method::GET && request.method() != Method::HEAD;
    match origin {
        Some(o) if o != format!("http://{host}") => {
            return refused(StatusCode::FORBIDDEN, "a request from another origin");
        }
        None if changes || upgrade => {
            return refused(
                StatusCode::FORBIDDEN,
                "a request that changes something (or opens a terminal) must come from the dashboard's page (no Origin header)",
            );
        }
        _ => {}
    }
    let path = request.uri().path().to_string();
    let query_token = request.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "token")
            .map(|(_, v)| v.to_string())
    });
    let authed = bearer_or_cookie(headers).is_some_and(|t| same(&t, &ui.token));
    if path == "/"
        && let Some(t) = query_token
    {
        if !same(&t, &ui.token) {
            return refused(StatusCode::UNAUTHORIZED, "a wrong token in the URL");
        }
        // Trade the token for a cookie, and take it out of the address bar.
        let cookie = format!("{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict", ui.token);
        let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            response.headers_mut().insert(header::SET_COOKIE, v);
        }
        return with_security_headers(response);
    }
    if !authed {
        if path == "/" {
            let page = (
                StatusCode::UNAUTHORIZED,
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                assets::UNAUTHORIZED_PAGE,
            )
                .into_response();
            return with_security_headers(page);
        }
        return refused(
            StatusCode::UNAUTHORIZED,
            "no token: open the URL `parhelia ui` printed",
        );
    }
    with_security_headers(next.run(request).await)
}

fn with_security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; \
             img-src 'self' data:; font-src 'self'; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn index() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        assets::INDEX,
    )
        .into_response()
}

async fn asset(UrlPath(name): UrlPath<String>) -> Response {
    match assets::find(&name) {
        Some((bytes, mime)) => ([(header::CONTENT_TYPE, mime)], bytes).into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

/// Runs `call` on a thread of its own with its own runtime, as one CLI
/// process would (the CLI's calls hold the database, which is not `Sync`,
/// across awaits).
async fn on_thread<T, F, Fut>(ctx: Ctx, call: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(Ctx) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T>>,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("ui-call".into())
        .spawn(move || {
            let done = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::new)
                .and_then(|rt| rt.block_on(call(ctx)));
            let _ = tx.send(done);
        })
        .context("starting a thread")?;
    rx.await
        .context("the call's thread ended without an answer")?
}

fn error_json(err: &anyhow::Error) -> Value {
    match find_coded(err) {
        Some(c) => mcp::coded_value(c),
        None => json!({"code": null, "message": format!("{err:#}")}),
    }
}

/// `POST /api/call/TOOL`: the MCP tool's call; 200 with `{"result": …}`, or
/// 422 with `{"error": {code, message, hint, …}}` (and `result`, when the
/// command printed one before failing, as a dispatch whose launch failed).
async fn call(
    State(ui): State<Arc<Ui>>,
    UrlPath(tool): UrlPath<String>,
    body: axum::body::Bytes,
) -> Response {
    let args: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(err) => {
                let e = CodedError::new(
                    error_codes::INVALID_INPUT,
                    format!("the body is not JSON: {err}"),
                );
                return (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    axum::Json(json!({"error": mcp::coded_value(&e)})),
                )
                    .into_response();
            }
        }
    };
    let direct = match tools::plan(&tool, args) {
        Ok(tools::Plan::Direct(d)) => d,
        Ok(_) => {
            let e = CodedError::new(
                error_codes::INVALID_INPUT,
                format!("{tool} follows events: the dashboard reads them from /api/events"),
            );
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                axum::Json(json!({"error": mcp::coded_value(&e)})),
            )
                .into_response();
        }
        Err(e) => {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                axum::Json(json!({"error": mcp::coded_value(&e)})),
            )
                .into_response();
        }
    };
    let done = on_thread(ui.ctx.clone(), move |ctx| async move {
        mcp::direct(&ctx, direct).await
    })
    .await;
    match done {
        Ok(r) => {
            let value = match r.wrap {
                Some(key) => json!({ key: r.value }),
                None => r.value,
            };
            match r.failure {
                None => axum::Json(json!({"result": value})).into_response(),
                Some(err) => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    axum::Json(json!({"error": error_json(&err), "result": value})),
                )
                    .into_response(),
            }
        }
        Err(err) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({"error": error_json(&err)})),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
struct EventsQuery {
    task: Option<String>,
    session: Option<String>,
    /// `1`: every stored event first, then new ones.
    #[serde(default)]
    history: Option<String>,
}

/// `GET /api/events`: every new event (or a task's or session's), as
/// `events watch --json` prints it, one SSE `event` message each.
async fn events(State(ui): State<Arc<Ui>>, Query(q): Query<EventsQuery>) -> Response {
    let (tx, rx) = mpsc::unbounded_channel::<Value>();
    let ct = CancellationToken::new();
    let filters = tools::EventFilterArgs {
        task: q.task,
        session: q.session,
        ..Default::default()
    };
    let follower = mcp::Follower::new(
        ui.ctx.clone(),
        filters,
        q.history.as_deref() == Some("1"),
        None,
        ct.clone(),
    );
    if let Err(err) = follower.spawn(tx) {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({"error": error_json(&err)})),
        )
            .into_response();
    }
    // The follower stops when the page goes (the stream, and with it the
    // receiver and this guard, are dropped).
    let guard = ct.drop_guard();
    let stream = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        move |value| {
            let _follows_while_streaming = &guard;
            Ok::<_, std::convert::Infallible>(
                Event::default().event("event").data(value.to_string()),
            )
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

#[derive(Deserialize)]
struct AttachQuery {
    /// `1`: keystrokes reach the session (read-only otherwise).
    #[serde(default)]
    write: Option<String>,
    cols: Option<u32>,
    rows: Option<u32>,
}

/// `GET /api/attach/SESSION` (WebSocket): the session's terminal. Binary
/// messages carry bytes (the screen to the page; keystrokes from it, dropped
/// unless `?write=1`); text messages carry JSON: `{"type":"resize","cols",
/// "rows"}` from the page, `{"type":"ended","reason"}` or
/// `{"type":"error",…}` to it.
async fn attach(
    State(ui): State<Arc<Ui>>,
    UrlPath(session): UrlPath<String>,
    Query(q): Query<AttachQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let write = q.write.as_deref() == Some("1");
    let size = q.cols.zip(q.rows);
    let ctx = ui.ctx.clone();
    ws.on_upgrade(move |socket| bridge(ctx, session, write, size, socket))
}

async fn bridge(
    ctx: Ctx,
    session: String,
    write: bool,
    size: Option<(u32, u32)>,
    mut socket: WebSocket,
) {
    // The attach runs on a thread of its own (its calls hold the database);
    // bytes cross in channels.
    let (to_agent, from_page) = mpsc::channel::<parhelia_proto::AttachRequest>(64);
    let (to_page, mut from_agent) = mpsc::channel::<PageMessage>(64);
    let spawned = std::thread::Builder::new()
        .name("ui-attach".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(err) => {
                    let _ = to_page.blocking_send(PageMessage::Error(json!({
                        "code": null, "message": format!("starting a runtime: {err}")
                    })));
                    return;
                }
            };
            runtime.block_on(async move {
                let ended =
                    crate::cli::session::attach_stream(&ctx, &session, !write, size, from_page)
                        .await;
                match ended {
                    Ok(mut responses) => loop {
                        use parhelia_proto::attach_response::Item;
                        match responses.message().await {
                            Ok(Some(r)) => match r.item {
                                Some(Item::Output(bytes)) => {
                                    let sent = to_page.send(PageMessage::Output(bytes)).await;
                                    if sent.is_err() {
                                        return;
                                    }
                                }
                                Some(Item::Ended(e)) => {
                                    let reason = parhelia_proto::AttachEndReason::try_from(e.reason)
                                        .map(|r| r.as_str_name().to_ascii_lowercase())
                                        .unwrap_or_else(|_| "unspecified".into());
                                    let _ = to_page.send(PageMessage::Ended(reason)).await;
                                    return;
                                }
                                None => {}
                            },
                            Ok(None) => {
                                let _ = to_page
                                    .send(PageMessage::Ended("stream_closed".into()))
                                    .await;
                                return;
                            }
                            Err(status) => {
                                let _ = to_page
                                    .send(PageMessage::Error(json!({
                                        "code": null,
                                        "message": format!("the attach stream broke: {}", status.message()),
                                    })))
                                    .await;
                                return;
                            }
                        }
                    },
                    Err(err) => {
                        let _ = to_page.send(PageMessage::Error(error_json(&err))).await;
                    }
                }
            });
        });
    if spawned.is_err() {
        let _ = socket
            .send(Message::Text(
                json!({"type":"error","error":{"message":"could not start a thread"}})
                    .to_string()
                    .into(),
            ))
            .await;
        return;
    }
    loop {
        tokio::select! {
            out = from_agent.recv() => {
                let Some(out) = out else { break };
                let message = match out {
                    PageMessage::Output(bytes) => Message::Binary(bytes.into()),
                    PageMessage::Ended(reason) => {
                        let _ = socket.send(Message::Text(json!({"type":"ended","reason":reason}).to_string().into())).await;
                        break;
                    }
                    PageMessage::Error(error) => {
                        let _ = socket.send(Message::Text(json!({"type":"error","error":error}).to_string().into())).await;
                        break;
                    }
                };
                if socket.send(message).await.is_err() {
                    break;
                }
            }
            incoming = socket.recv() => {
                use parhelia_proto::{AttachRequest, WindowSize, attach_request::Item};
                let Some(Ok(incoming)) = incoming else { break };
                let request = match incoming {
                    Message::Binary(bytes) if write => Some(AttachRequest { item: Some(Item::Input(bytes.to_vec())) }),
                    Message::Text(text) => page_resize(&text).map(|(cols, rows)| AttachRequest {
                        item: Some(Item::Resize(WindowSize { cols, rows })),
                    }),
                    Message::Close(_) => break,
                    _ => None,
                };
                if let Some(request) = request
                    && to_agent.send(request).await.is_err()
                {
                    break;
                }
            }
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}

enum PageMessage {
    Output(Vec<u8>),
    Ended(String),
    Error(Value),
}

/// A page's `{"type":"resize","cols":C,"rows":R}`, bounded to what a
/// terminal can be.
fn page_resize(text: &str) -> Option<(u32, u32)> {
    let v: Value = serde_json::from_str(text).ok()?;
    if v["type"] != "resize" {
        return None;
    }
    let cols = v["cols"].as_u64()?;
    let rows = v["rows"].as_u64()?;
    ((1..=1000).contains(&cols) && (1..=1000).contains(&rows)).then_some((cols as u32, rows as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_names_of_this_port_are_hosts() {
        assert!(host_allowed("127.0.0.1:8780", 8780));
        assert!(host_allowed("localhost:8780", 8780));
        assert!(host_allowed("[::1]:8780", 8780));
        assert!(!host_allowed("127.0.0.1:8781", 8780));
        assert!(!host_allowed("evil.example:8780", 8780));
        assert!(!host_allowed("127.0.0.1.evil.example:8780", 8780));
        assert!(!host_allowed("localhost", 8780));
        assert!(!host_allowed("", 8780));
    }

    #[test]
    fn the_token_comes_from_a_bearer_header_or_the_cookie() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_or_cookie(&h), None);
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; parhelia_ui=abc; b=2"),
        );
        assert_eq!(bearer_or_cookie(&h).as_deref(), Some("abc"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer xyz"),
        );
        assert_eq!(bearer_or_cookie(&h).as_deref(), Some("xyz"));
    }

    #[test]
    fn resizes_are_bounded() {
        assert_eq!(
            page_resize(r#"{"type":"resize","cols":80,"rows":24}"#),
            Some((80, 24))
        );
        assert_eq!(page_resize(r#"{"type":"resize","cols":0,"rows":24}"#), None);
        assert_eq!(
            page_resize(r#"{"type":"resize","cols":80,"rows":100000}"#),
            None
        );
        assert_eq!(page_resize(r#"{"type":"other"}"#), None);
        assert_eq!(page_resize("not json"), None);
    }

    #[test]
    fn the_token_file_is_made_once_private_and_refused_when_shared_or_linked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ui.token");
        let made = load_or_make_token(&path).unwrap();
        assert_eq!(made.len(), 64);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(load_or_make_token(&path).unwrap(), made);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_make_token(&path).unwrap_err();
        assert_eq!(find_coded(&err).unwrap().code.code, "E411");
        let link = dir.path().join("link.token");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let err = load_or_make_token(&link).unwrap_err();
        assert_eq!(find_coded(&err).unwrap().code.code, "E411");
    }
}
