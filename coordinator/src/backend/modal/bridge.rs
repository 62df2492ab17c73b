//! The coordinator's end of the Modal bridge (`docs/formats/modal-bridge.md`):
//! one long-lived `python3 parhelia_bridge.py` process, JSON lines both ways,
//! many calls in flight, a deadline on every call. The bridge's files are
//! compiled into this binary and written next to the state directory, so a
//! `parhelia` binary needs no checkout to reach Modal.
//!
//! A bridge that exits fails every call in flight with E511 and is started
//! again by the next call.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::oneshot;

use crate::error::CodedError;
use crate::error_codes::{self, ErrorCode};

/// The bridge's files, as shipped in `images/` (the Dockerfile beside app.py,
/// which builds the session image from it).
pub const BRIDGE_FILES: &[(&str, &str)] = &[
    (
        "parhelia_bridge.py",
        include_str!("../../../../images/modal/parhelia_bridge.py"),
    ),
    ("app.py", include_str!("../../../../images/modal/app.py")),
    ("Dockerfile", include_str!("../../../../images/Dockerfile")),
];

/// The protocol version this coordinator speaks.
pub const PROTOCOL: u64 = 1;

/// How to start the bridge.
#[derive(Clone, Debug)]
pub struct BridgeConfig {
    pub python: String,
    /// Where the bridge's files are written and the bridge runs.
    pub dir: PathBuf,
    /// Searched before the installed packages (the SDK stand-in in tests).
    pub pythonpath: Option<String>,
    /// How long the greeting may take.
    pub start_timeout: Duration,
    /// Extra environment for the bridge (tests: the stand-in's root).
    pub env: Vec<(String, String)>,
}

/// The bridge's greeting.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Greeting {
    #[serde(default)]
    pub protocol: u64,
    #[serde(default)]
    pub sdk_version: String,
    #[serde(default)]
    pub python: String,
    #[serde(default)]
    pub credentials: String,
}

/// One line the bridge writes: the greeting (id 0) or the answer to a call.
#[derive(Debug, Deserialize)]
pub struct Reply {
    pub id: u64,
    pub ok: bool,
    #[serde(default)]
    pub result: Value,
    #[serde(default)]
    pub error: Option<BridgeFailure>,
}

/// Reads one line the bridge wrote (without its newline).
pub fn parse_reply(line: &str) -> Result<Reply, serde_json::Error> {
    serde_json::from_str(line)
}

/// The greeting line: a reply whose result is a [`Greeting`] of [`PROTOCOL`], or the
/// coded error it reports (E511 when it is something else).
pub fn parse_greeting(line: &str) -> Result<Greeting, CodedError> {
    let failed = |m: String| CodedError::new(error_codes::MODAL_BRIDGE_FAILED, m);
    let reply = parse_reply(line).map_err(|e| {
        failed(format!(
            "the Modal bridge greeted with something else ({e}): {line}"
        ))
    })?;
    if !reply.ok {
        let failure = reply.error.unwrap_or(BridgeFailure {
            kind: "internal".into(),
            message: "the bridge failed to start".into(),
            hint: String::new(),
        });
        return Err(failure.coded("start"));
    }
    let greeting: Greeting = serde_json::from_value(reply.result)
        .map_err(|e| failed(format!("the Modal bridge's greeting: {e}")))?;
    if greeting.protocol != PROTOCOL {
        return Err(failed(format!(
            "the Modal bridge speaks protocol {}, this coordinator {PROTOCOL}",
            greeting.protocol
        )));
    }
    Ok(greeting)
}

/// What a call's reply means: its result, or the bridge's error as a coded error.
pub fn reply_outcome(reply: Reply, op: &str) -> Result<Value, CodedError> {
    if reply.ok {
        return Ok(reply.result);
    }
    Err(reply
        .error
        .unwrap_or(BridgeFailure {
            kind: "internal".into(),
            message: "failed without saying why".into(),
            hint: String::new(),
        })
        .coded(op))
}

/// An error the bridge reported.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct BridgeFailure {
    pub kind: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub hint: String,
}

/// The coordinator's error code for a bridge error kind (the table in
/// `docs/formats/modal-bridge.md`).
pub fn code_for_kind(kind: &str) -> ErrorCode {
    match kind {
        "sdk_missing" | "sdk_version" => error_codes::MODAL_SDK_MISSING,
        "auth_missing" => error_codes::MODAL_CREDENTIALS_MISSING,
        "auth" => error_codes::MODAL_CREDENTIALS_REJECTED,
        "secret_missing" => error_codes::MODAL_SECRET_MISSING,
        "not_found" => error_codes::MODAL_OBJECT_NOT_FOUND,
        "capacity" => error_codes::MODAL_NO_CAPACITY,
        "timeout" => error_codes::MODAL_TIMEOUT,
        "invalid" => error_codes::MODAL_REQUEST_INVALID,
        _ => error_codes::MODAL_BRIDGE_FAILED,
    }
}

impl BridgeFailure {
    pub fn coded(&self, op: &str) -> CodedError {
        let mut message = format!("modal {op}: {}", self.message);
        if !self.hint.is_empty() {
            message.push_str(&format!(" ({})", self.hint));
        }
        CodedError::new(code_for_kind(&self.kind), message)
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>>;

struct Running {
    stdin: tokio::sync::Mutex<ChildStdin>,
    pending: Pending,
    alive: Arc<AtomicBool>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    greeting: Greeting,
    _child: Mutex<Child>,
}

impl Running {
    fn tail(&self) -> String {
        lock(&self.stderr_tail)
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The bridge process (started on first use).
pub struct Bridge {
    config: BridgeConfig,
    running: tokio::sync::Mutex<Option<Arc<Running>>>,
    next_id: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Bridge {
    pub fn new(config: BridgeConfig) -> Self {
        Bridge {
            config,
            running: tokio::sync::Mutex::new(None),
            next_id: AtomicU64::new(1),
        }
    }

    /// Writes the bridge's files into `dir` (only when they differ).
    pub fn install(dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (name, text) in BRIDGE_FILES {
            let path = dir.join(name);
            if std::fs::read_to_string(&path).ok().as_deref() != Some(*text) {
                let tmp = dir.join(format!(".{name}.tmp"));
                std::fs::write(&tmp, text)?;
                std::fs::rename(&tmp, &path)?;
            }
        }
        Ok(())
    }

    /// The greeting of the running bridge (starting it if needed).
    pub async fn greeting(&self) -> Result<Greeting, CodedError> {
        Ok(self.ensure().await?.greeting.clone())
    }

    /// Starts a new bridge process and sends every later call to it: it sees what
    /// changed since the running one started (the SDK reads `~/.modal.toml` once, when
    /// imported, so a token `modal token new` wrote never reaches a running bridge; nor
    /// does a `pip install`). Calls in flight finish on the old process, which ends
    /// when the last of them is answered. When the new one cannot start, the old one
    /// stays and its error is returned.
    pub async fn restart(&self) -> Result<Greeting, CodedError> {
        let fresh = Arc::new(self.start().await?);
        let greeting = fresh.greeting.clone();
        *self.running.lock().await = Some(fresh);
        Ok(greeting)
    }

    async fn ensure(&self) -> Result<Arc<Running>, CodedError> {
        let mut guard = self.running.lock().await;
        if let Some(running) = guard.as_ref()
            && running.alive.load(Ordering::SeqCst)
        {
            return Ok(Arc::clone(running));
        }
        let running = Arc::new(self.start().await?);
        *guard = Some(Arc::clone(&running));
        Ok(running)
    }

    async fn start(&self) -> Result<Running, CodedError> {
        let failed = |m: String| CodedError::new(error_codes::MODAL_BRIDGE_FAILED, m);
        Self::install(&self.config.dir).map_err(|e| {
            failed(format!(
                "cannot write the Modal bridge into {}: {e}",
                self.config.dir.display()
            ))
        })?;
        self.start_without_install().await
    }

    async fn start_without_install(&self) -> Result<Running, CodedError> {
        let failed = |m: String| CodedError::new(error_codes::MODAL_BRIDGE_FAILED, m);
        let mut command = tokio::process::Command::new(&self.config.python);
        command
            .arg("-u")
            .arg(self.config.dir.join("parhelia_bridge.py"))
            .current_dir(&self.config.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut path = self.config.dir.display().to_string();
        if let Some(extra) = &self.config.pythonpath {
            path = format!("{extra}:{path}");
        }
        command.env("PYTHONPATH", path);
        command.envs(self.config.env.iter().map(|(k, v)| (k, v)));
        let mut child = command.spawn().map_err(|e| {
            CodedError::new(
                error_codes::MODAL_SDK_MISSING,
                format!(
                    "cannot start the Modal bridge with `{}`: {e}; install Python 3 and `pip install modal==1.6.4`, or set modal.python",
                    self.config.python
                ),
            )
        })?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let stderr_tail: Arc<Mutex<VecDeque<String>>> = Arc::default();
        {
            let tail = Arc::clone(&stderr_tail);
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    // In the coordinator's log (E511's advice sends the user there).
                    tracing::info!(target: "parhelia::modal_bridge", "{line}");
                    let mut tail = lock(&tail);
                    if tail.len() == 20 {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
            });
        }
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(self.config.start_timeout, lines.next_line()).await;
        let tail_text = |tail: &Arc<Mutex<VecDeque<String>>>| {
            lock(tail).iter().cloned().collect::<Vec<_>>().join("\n")
        };
        let greeting_line = match first {
            Ok(Ok(Some(line))) => line,
            Ok(_) => {
                // Give stderr a moment to arrive for the message.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Err(failed(format!(
                    "the Modal bridge exited before greeting: {}",
                    tail_text(&stderr_tail)
                )));
            }
            Err(_) => {
                return Err(CodedError::new(
                    error_codes::MODAL_TIMEOUT,
                    format!(
                        "the Modal bridge did not start within {:?}",
                        self.config.start_timeout
                    ),
                ));
            }
        };
        let greeting = parse_greeting(&greeting_line)?;
        tracing::info!(
            sdk = %greeting.sdk_version,
            python = %greeting.python,
            credentials = %greeting.credentials,
            "Modal bridge started"
        );

        let pending: Pending = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        {
            let (pending, alive) = (Arc::clone(&pending), Arc::clone(&alive));
            tokio::spawn(async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    match parse_reply(&line) {
                        Ok(reply) => {
                            if let Some(tx) = lock(&pending).remove(&reply.id) {
                                let _ = tx.send(reply);
                            }
                        }
                        Err(e) => tracing::warn!(
                            "the Modal bridge wrote a line that is not a reply ({e}): {line}"
                        ),
                    }
                }
                alive.store(false, Ordering::SeqCst);
                // Dropping the senders fails every call in flight.
                lock(&pending).clear();
            });
        }
        Ok(Running {
            stdin: tokio::sync::Mutex::new(stdin),
            pending,
            alive,
            stderr_tail,
            greeting,
            _child: Mutex::new(child),
        })
    }

    /// One call with a deadline. The bridge's error kinds become coded
    /// errors; a bridge that dies or misses the deadline is E511 / E512.
    pub async fn call(
        &self,
        op: &str,
        args: Value,
        deadline: Duration,
    ) -> Result<Value, CodedError> {
        let running = self.ensure().await?;
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = oneshot::channel();
        lock(&running.pending).insert(id, tx);
        let mut line = serde_json::to_vec(&json!({
            "id": id,
            "op": op,
            "args": args,
            "deadline_ms": deadline.as_millis() as u64,
        }))
        .expect("JSON");
        line.push(b'\n');
        {
            let mut stdin = running.stdin.lock().await;
            let written = async {
                stdin.write_all(&line).await?;
                stdin.flush().await
            }
            .await;
            if let Err(e) = written {
                lock(&running.pending).remove(&id);
                running.alive.store(false, Ordering::SeqCst);
                return Err(CodedError::new(
                    error_codes::MODAL_BRIDGE_FAILED,
                    format!("modal {op}: the bridge is gone ({e}): {}", running.tail()),
                ));
            }
        }
        match tokio::time::timeout(deadline + Duration::from_secs(1), rx).await {
            Ok(Ok(reply)) => reply_outcome(reply, op),
            Ok(Err(_)) => Err(CodedError::new(
                error_codes::MODAL_BRIDGE_FAILED,
                format!("modal {op}: the bridge exited: {}", running.tail()),
            )),
            Err(_) => {
                lock(&running.pending).remove(&id);
                Err(CodedError::new(
                    error_codes::MODAL_TIMEOUT,
                    format!("modal {op}: no answer within {deadline:?}"),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_kind_has_its_code() {
        for (kind, code) in [
            ("sdk_missing", "E510"),
            ("sdk_version", "E510"),
            ("auth_missing", "E403"),
            ("auth", "E404"),
            ("secret_missing", "E405"),
            ("not_found", "E206"),
            ("capacity", "E513"),
            ("timeout", "E512"),
            ("invalid", "E106"),
            ("conflict", "E511"),
            ("internal", "E511"),
            ("something new", "E511"),
        ] {
            assert_eq!(code_for_kind(kind).code, code, "{kind}");
        }
    }

    /// A bridge written in a few lines of shell-free Python: answers `echo`,
    /// fails `boom`, never answers `hang`, exits on `die`.
    const FAKE: &str = r#"
import json, sys, os
print(json.dumps({"id": 0, "ok": True, "result": {"protocol": 1, "sdk_version": "x", "python": "y", "credentials": "none"}}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    if req["op"] == "echo":
        print(json.dumps({"id": req["id"], "ok": True, "result": req["args"]}), flush=True)
    elif req["op"] == "boom":
        print(json.dumps({"id": req["id"], "ok": False, "error": {"kind": "capacity", "message": "no H100", "hint": "try L40S"}}), flush=True)
    elif req["op"] == "die":
        sys.stderr.write("dying on purpose\n"); sys.stderr.flush(); os._exit(1)
"#;

    fn fake_bridge(dir: &Path) -> Bridge {
        // The real files are installed, then the bridge script is replaced.
        Bridge::install(dir).unwrap();
        Bridge::new(BridgeConfig {
            python: "python3".into(),
            dir: dir.to_path_buf(),
            pythonpath: None,
            start_timeout: Duration::from_secs(20),
            env: Vec::new(),
        })
    }

    #[tokio::test]
    async fn calls_errors_deadlines_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let bridge = fake_bridge(dir.path());
        // `install` would put the real bridge back: start the fake directly.
        std::fs::write(dir.path().join("parhelia_bridge.py"), FAKE).unwrap();
        let running = Arc::new(bridge.start_without_install().await.unwrap());
        *bridge.running.lock().await = Some(running);

        let got = bridge
            .call("echo", json!({"a": 1}), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(got, json!({"a": 1}));

        let err = bridge
            .call("boom", json!({}), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.code.code, "E513");
        assert!(err.message.contains("no H100") && err.message.contains("try L40S"));

        let err = bridge
            .call("hang", json!({}), Duration::from_millis(200))
            .await
            .unwrap_err();
        assert_eq!(err.code.code, "E512");

        let err = bridge
            .call("die", json!({}), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.code.code, "E511");
    }

    #[tokio::test]
    async fn a_missing_python_is_e510() {
        let dir = tempfile::tempdir().unwrap();
        let bridge = Bridge::new(BridgeConfig {
            python: "/nonexistent/python3".into(),
            dir: dir.path().to_path_buf(),
            pythonpath: None,
            start_timeout: Duration::from_secs(5),
            env: Vec::new(),
        });
        let err = bridge.greeting().await.unwrap_err();
        assert_eq!(err.code.code, "E510");
    }
}
