//! Shared support for the agent's integration tests: a fixture directory with a spec, the
//! real `parhelia-agent` binary, a fake `claude`, and a gRPC follower.

#![allow(dead_code)] // each test file uses a different part

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use parhelia_agent::agent::AgentRuntimeInfo;
use parhelia_proto::agent_client::AgentClient;
use parhelia_proto::{Event, SessionStatus, StreamEventsRequest, event, stream_events_response};
use tonic::transport::Channel;

pub const SECRET: &str = "test-secret-0123456789";

/// Generous bounds that only stop a broken test from hanging forever; nothing in these
/// tests depends on how fast anything is.
pub const HANG_GUARD: Duration = Duration::from_secs(60);

pub const FAKE_CLAUDE: &str = r#"#!/bin/sh
# A stand-in for Claude Code in headless stream-json mode (parhelia-agent tests).
settings=""; prev=""
for arg in "$@"; do
  [ "$prev" = "--settings" ] && settings="$arg"
  prev="$arg"
done
printf '%s\n' "$@" > .fake-claude-args
env > .fake-claude-env
hook_command=$(sed -n 's/^ *"command": "\(.*\)",\{0,1\}$/\1/p' "$settings" | head -n 1)
hook() { printf '{"hook_event_name":"%s","session_id":"fake"}' "$1" | eval "$hook_command"; }
trap 'kill "$sleeper" 2>/dev/null; exit 143' TERM
hook SessionStart
n=0
while IFS= read -r line; do
  n=$((n + 1))
  hook UserPromptSubmit
  printf '{"type":"system","subtype":"init","cwd":"%s","session_id":"fake","tools":["Bash"],"model":"fake-model","claude_code_version":"0.0.0-fake"}\n' "$PWD"
  case "$line" in
    *hang*) sleep 1000 & sleeper=$!; wait "$sleeper" ;;
    *gate*) while [ ! -e gate ]; do sleep 0.02; done ;;
  esac
  printf '{"type":"assistant","message":{"id":"msg_%s","content":[{"type":"text","text":"turn %s"}]}}\n' "$n" "$n"
  printf '{"type":"result","subtype":"success","is_error":false,"num_turns":1,"result":"done %s","total_cost_usd":0.%s,"usage":{"input_tokens":10,"output_tokens":5}}\n' "$n" "$n"
  hook Stop
done
hook SessionEnd
"#;

pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        // The e2e harness's reaper: a test killed before it ends its agent leaves no
        // agent, tmux server or fake Claude Code of its directory running.
        parhelia_testkit::procs::reap_when_killed(dir.path());
        for sub in [
            "workspace",
            "volume",
            "runtime",
            "home",
            "default-tmux-tmpdir",
        ] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let fake = dir.path().join("fake-claude");
        std::fs::write(&fake, FAKE_CLAUDE).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        Fixture { dir }
    }

    pub fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    pub fn write_spec(&self, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
        let p = |sub: &str| self.path(sub).to_string_lossy().into_owned();
        let mut spec = serde_json::json!({
            "version": 1,
            "session_id": "sess-1",
            "task_id": "task-1",
            "container_id": "ctr-1",
            "prompt": "hello",
            "mode": "headless",
            "claude_session_id": "6f1c2d3e-4a5b-4c6d-8e7f-901a2b3c4d5e",
            "resume": false,
            "model": null,
            "max_turns": null,
            "claude_bin": p("fake-claude"),
            "workspace_dir": p("workspace"),
            "claude_config_dir": p("claude-config"),
            "volume_dir": p("volume"),
            "runtime_dir": p("runtime"),
            "listen_addr": "127.0.0.1:0",
            "heartbeat_interval_ms": 100,
            "linger_after_finish_ms": 600000,
            "stop_grace_ms": 10000
        });
        edit(&mut spec);
        let path = self.path("spec.json");
        std::fs::write(&path, spec.to_string()).unwrap();
        path
    }

    pub fn agent_command(&self, spec: &Path) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_parhelia-agent"));
        command
            .args(["run", "--spec"])
            .arg(spec)
            .args(["--label", "parhelia.coordinator=test"])
            .env("PARHELIA_SESSION_SECRET", SECRET)
            // Where tmux would put the *default* server's socket: it must stay empty.
            .env("TMUX_TMPDIR", self.path("default-tmux-tmpdir"))
            .env_remove("TMUX")
            // Nothing of the developer's home: the agent passes HOME on to Claude Code.
            .env("HOME", self.path("home"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for key in parhelia_testkit::procs::NOT_INHERITED {
            command.env_remove(key);
        }
        command
    }

    /// The agent command without any inherited `ANTHROPIC_*` / `CLAUDE*` variable (a test
    /// run from inside Claude Code, or with a real key set, must never reach the real API).
    pub fn isolated_agent_command(&self, spec: &Path) -> Command {
        let mut command = self.agent_command(spec);
        for (key, _) in std::env::vars_os() {
            let name = key.to_string_lossy();
            if name.starts_with("ANTHROPIC_") || name.starts_with("CLAUDE") {
                command.env_remove(&key);
            }
        }
        command
    }

    pub fn spawn_agent(&self, spec: &Path) -> Child {
        self.agent_command(spec).spawn().unwrap()
    }

    pub fn journal(&self) -> Vec<Event> {
        self.journal_of("ctr-1")
    }

    pub fn journal_of(&self, container_id: &str) -> Vec<Event> {
        let path = self.path(&format!("volume/journal/{container_id}.jsonl"));
        let text = std::fs::read_to_string(path).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn tmux_socket(&self) -> PathBuf {
        self.path("runtime/tmux/tmux.sock")
    }

    pub fn tmux_has_claude_session(&self) -> bool {
        Command::new("tmux")
            .arg("-S")
            .arg(self.tmux_socket())
            .args(["has-session", "-t", "claude"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    pub fn assert_default_tmux_untouched(&self) {
        let entries: Vec<_> = std::fs::read_dir(self.path("default-tmux-tmpdir"))
            .unwrap()
            .collect();
        assert!(
            entries.is_empty(),
            "the default tmux server was used: {entries:?}"
        );
    }
}

/// Waits for `agent.json` (the agent is serving) or the agent's early exit.
pub async fn wait_for_agent_json(fixture: &Fixture, child: &mut Child) -> AgentRuntimeInfo {
    let path = fixture.path("runtime/agent.json");
    let wait = async {
        loop {
            if let Ok(bytes) = std::fs::read(&path) {
                return serde_json::from_slice::<AgentRuntimeInfo>(&bytes).unwrap();
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the agent exited early with {status}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(HANG_GUARD, wait)
        .await
        .expect("agent.json never appeared")
}

pub async fn wait_for_exit(child: &mut Child) -> ExitStatus {
    let wait = async {
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(HANG_GUARD, wait)
        .await
        .expect("the agent did not exit")
}

pub fn authed<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        parhelia_proto::AUTH_METADATA_KEY,
        parhelia_proto::bearer(SECRET).parse().unwrap(),
    );
    request
}

pub async fn connect(agent: &AgentRuntimeInfo) -> AgentClient<Channel> {
    AgentClient::connect(format!("http://{}", agent.grpc_addr))
        .await
        .unwrap()
}

/// A follow stream and what it has delivered so far.
pub struct Follower {
    pub stream: tonic::Streaming<parhelia_proto::StreamEventsResponse>,
    pub events: Vec<Event>,
    pub heartbeats: Vec<parhelia_proto::Heartbeat>,
}

impl Follower {
    pub async fn open(client: &mut AgentClient<Channel>, from_seq: u64) -> Follower {
        let request = authed(StreamEventsRequest {
            from_seq,
            follow: true,
        });
        let stream = client.stream_events(request).await.unwrap().into_inner();
        Follower {
            stream,
            events: Vec::new(),
            heartbeats: Vec::new(),
        }
    }

    /// Reads until `done` holds for what has been received.
    pub async fn until(&mut self, what: &str, done: impl Fn(&Follower) -> bool) {
        let read = async {
            while !done(self) {
                let item = self.stream.message().await.unwrap();
                match item.and_then(|i| i.item) {
                    Some(stream_events_response::Item::Event(e)) => self.events.push(e),
                    Some(stream_events_response::Item::Heartbeat(h)) => self.heartbeats.push(h),
                    Some(stream_events_response::Item::JournalGap(g)) => {
                        panic!("unexpected journal gap {g:?} while waiting for {what}")
                    }
                    None => panic!("the stream ended while waiting for {what}"),
                }
            }
        };
        tokio::time::timeout(HANG_GUARD, read)
            .await
            .unwrap_or_else(|_| panic!("never saw {what}; got {:#?}", self.events));
    }

    pub fn has(&self, pick: impl Fn(&event::Kind) -> bool) -> bool {
        self.events
            .iter()
            .any(|e| e.kind.as_ref().is_some_and(&pick))
    }
}

pub fn kind_names(events: &[Event]) -> Vec<&'static str> {
    events
        .iter()
        .map(|e| parhelia_proto::event_type_name(e.kind.as_ref().unwrap()))
        .collect()
}

pub fn session_finished(events: &[Event]) -> parhelia_proto::SessionFinished {
    match events.last().and_then(|e| e.kind.clone()) {
        Some(event::Kind::SessionFinished(finished)) => finished,
        other => panic!("the last event is {other:?}, not SessionFinished"),
    }
}

pub fn claude_exited(events: &[Event]) -> parhelia_proto::ClaudeExited {
    events
        .iter()
        .find_map(|e| match &e.kind {
            Some(event::Kind::ClaudeExited(exited)) => Some(*exited),
            _ => None,
        })
        .expect("no ClaudeExited")
}

pub fn statuses(events: &[Event]) -> Vec<SessionStatus> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(event::Kind::StatusChanged(s)) => SessionStatus::try_from(s.status).ok(),
            _ => None,
        })
        .collect()
}
