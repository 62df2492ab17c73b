//! Interactive sessions and `parhelia session attach` end to end: the real `parhelia`,
//! agent, tmux and Claude Code TUI against the scripted model. The CLI runs on a
//! pseudo-terminal the test owns, so the test types into it like a user, resizes it,
//! and checks that the terminal's settings are restored however the attach ends.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::termios::{Termios, tcgetattr};
use parhelia_testkit::harness::{Harness, bin_dir};
use parhelia_testkit::{Script, ToolCall, Turn};

/// Generous bound that only stops a broken test from hanging.
const HANG_GUARD: Duration = Duration::from_secs(120);

pub(crate) fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + HANG_GUARD;
    while !condition() {
        assert!(Instant::now() < deadline, "never saw {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tmux(socket: &PathBuf, args: &[&str]) -> String {
    let out = Command::new("tmux")
        .arg("-S")
        .arg(socket)
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The flags that raw mode changes.
fn modes(t: &Termios) -> (u64, u64, u64) {
    (
        t.input_flags.bits() as u64,
        t.output_flags.bits() as u64,
        t.local_flags.bits() as u64,
    )
}

/// `parhelia session attach` on a pseudo-terminal the test drives.
pub(crate) struct Terminal {
    master: std::fs::File,
    slave: OwnedFd,
    slave_path: PathBuf,
    output: Arc<Mutex<Vec<u8>>>,
    child: Child,
}

impl Terminal {
    pub(crate) fn attach(h: &Harness, session_id: &str, extra: &[&str]) -> Terminal {
        let pty = nix::pty::openpty(None, None).unwrap();
        let slave_path = nix::unistd::ttyname(&pty.slave).unwrap();
        Command::new("stty")
            .arg("-F")
            .arg(&slave_path)
            .args(["rows", "40", "cols", "120"])
            .status()
            .unwrap();
        let parhelia = h.command(&[]);
        let mut command = Command::new("setsid");
        command.arg("-c").arg(bin_dir().join("parhelia"));
        command
            .args(["session", "attach", session_id])
            .args(extra)
            .current_dir(h.root());
        for (key, value) in parhelia.get_envs() {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        let stdio = |fd: &OwnedFd| Stdio::from(fd.try_clone().unwrap());
        command
            .env("TERM", "xterm-256color")
            .stdin(stdio(&pty.slave))
            .stdout(stdio(&pty.slave))
            .stderr(stdio(&pty.slave));
        let child = command.spawn().unwrap();
        let master = std::fs::File::from(pty.master);
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().unwrap();
        let sink = Arc::clone(&output);
        std::thread::spawn(move || {
            let mut buffer = [0u8; 8192];
            while let Ok(n) = reader.read(&mut buffer) {
                if n == 0 {
                    return;
                }
                sink.lock().unwrap().extend_from_slice(&buffer[..n]);
            }
        });
        Terminal {
            master,
            slave: pty.slave,
            slave_path,
            output,
            child,
        }
    }

    fn termios(&self) -> Termios {
        tcgetattr(self.slave.as_fd()).unwrap()
    }

    pub(crate) fn type_bytes(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).unwrap();
    }

    pub(crate) fn output_len(&self) -> usize {
        self.output.lock().unwrap().len()
    }

    pub(crate) fn output_text(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    fn resize(&self, cols: u16, rows: u16) {
        Command::new("stty")
            .arg("-F")
            .arg(&self.slave_path)
            .args(["rows", &rows.to_string(), "cols", &cols.to_string()])
            .status()
            .unwrap();
    }

    /// The `parhelia` process (`setsid` execs it in place).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn is_raw(&self, cooked: (u64, u64, u64)) -> bool {
        modes(&self.termios()) != cooked
    }

    pub(crate) fn cooked(&self) -> (u64, u64, u64) {
        modes(&self.termios())
    }

    /// Resets the attach's connection under it (`ss -K`), waits for the CLI to say the
    /// connection dropped (the `n`th time), then for it to be attached again: a new
    /// tmux client redrew the screen (entered the alternate screen anew) after the
    /// notice.
    pub(crate) fn wait_reattached(&self, n: usize, what: &str) {
        const NOTICE: &str = "[parhelia] the connection to session";
        let after_notice = || {
            let text = self.output_text();
            text.match_indices(NOTICE)
                .nth(n - 1)
                .map(|(at, _)| text[at..].to_string())
        };
        wait_until(&format!("the drop noticed ({what})"), || {
            after_notice().is_some()
        });
        wait_until(
            &format!("the screen redrawn after the drop ({what})"),
            || after_notice().is_some_and(|rest| rest.contains("\x1b[?1049h")),
        );
    }

    pub(crate) fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + HANG_GUARD;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the attach never ended; it printed {:?}",
                self.output_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn attach_types_detaches_reattaches_and_always_restores_the_terminal() {
    let h = Harness::new(Script::new([
        Turn::text("hello there"),
        Turn::text("got both lines"),
        Turn::text_then_tool_use("Writing it.", [ToolCall::write("typed.txt", "typed\n")]),
        Turn::text("wrote typed.txt"),
    ]));
    let created: serde_json::Value =
        serde_json::from_str(&h.ok(&["task", "create", "Say hello", "--interactive", "--json"]))
            .unwrap();
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let session_id = created["session_id"].as_str().unwrap().to_string();
    let container_id = created["container_id"].as_str().unwrap().to_string();
    h.wait_for("the first turn", || {
        (!h.task_events(&task_id, "turn_result").is_empty()).then_some(())
    });
    assert_eq!(
        h.stand_in.requests()[0].last_user_text.as_deref(),
        Some("Say hello")
    );

    // `session send`: a multi-line message is one user message at the model.
    h.ok(&["session", "send", &session_id, "line one\nline two"]);
    h.wait_for("the second turn", || {
        (h.task_events(&task_id, "turn_result").len() >= 2).then_some(())
    });
    assert_eq!(
        h.stand_in.requests()[1].last_user_text.as_deref(),
        Some("line one\nline two")
    );
    let (agent_pid, socket) = h.agent_pid_and_tmux(&container_id);

    // Attach, type a prompt, see the file, detach with tmux's key.
    let mut terminal = Terminal::attach(&h, &session_id, &[]);
    let cooked = modes(&terminal.termios());
    wait_until("the screen", || terminal.output_len() > 0);
    assert_ne!(modes(&terminal.termios()), cooked, "the terminal is raw");
    terminal.type_bytes(b"Create typed.txt");
    wait_until("the typed prompt in the pane", || {
        tmux(&socket, &["capture-pane", "-p", "-t", "claude"]).contains("Create typed.txt")
    });
    terminal.type_bytes(b"\r");
    let workspace = h
        .state()
        .join("sessions")
        .join(&session_id)
        .join("workspace");
    wait_until("typed.txt", || workspace.join("typed.txt").exists());
    wait_until("the turn's end", || {
        h.task_events(&task_id, "turn_result").len() >= 3
    });
    terminal.type_bytes(b"\x02d");
    let status = terminal.wait_exit();
    assert!(status.success(), "{status}: {}", terminal.output_text());
    assert_eq!(
        modes(&terminal.termios()),
        cooked,
        "the terminal is restored"
    );
    h.wait_for("the detach checkpoint", || {
        h.task_events(&task_id, "checkpoint_created")
            .iter()
            .any(|c| c["kind"]["checkpoint_created"]["trigger"] == "detach")
            .then_some(())
    });
    assert_eq!(
        tmux(&socket, &["display", "-p", "-t", "claude", "ok"]),
        "ok"
    );
    drop(terminal);

    // Read-only: keystrokes never arrive; Ctrl-b d leaves.
    let mut watcher = Terminal::attach(&h, &session_id, &["--read-only"]);
    wait_until("the read-only screen", || watcher.output_len() > 0);
    watcher.type_bytes(b"READONLY");
    watcher.type_bytes(b"\x02d");
    assert!(watcher.wait_exit().success(), "{}", watcher.output_text());
    assert!(!tmux(&socket, &["capture-pane", "-p", "-t", "claude"]).contains("READONLY"));
    assert_eq!(modes(&watcher.termios()), cooked);
    drop(watcher);

    // Re-attach; a resize reaches tmux; killing the agent mid-attach still restores
    // the terminal.
    let mut terminal = Terminal::attach(&h, &session_id, &[]);
    wait_until("the screen again", || terminal.output_len() > 0);
    terminal.resize(100, 30);
    wait_until("the window follows the resize", || {
        tmux(
            &socket,
            &["display", "-p", "-t", "claude", "#{window_width}"],
        ) == "100"
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    terminal.wait_exit();
    assert_eq!(
        modes(&terminal.termios()),
        cooked,
        "the terminal is restored after the agent died"
    );
    // tmux and Claude Code outlive a SIGKILLed agent; end them.
    parhelia_testkit::procs::tmux_kill_server(&socket);
}

#[test]
fn logs_show_screen_and_history_and_kill_ends_the_session_so_attach_is_refused() {
    let h = Harness::new(Script::new([Turn::text("hello from the TUI")]));
    let created: serde_json::Value =
        serde_json::from_str(&h.ok(&["task", "create", "Say hello", "--interactive", "--json"]))
            .unwrap();
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let session_id = created["session_id"].as_str().unwrap().to_string();
    h.wait_for("the first turn", || {
        (!h.task_events(&task_id, "turn_result").is_empty()).then_some(())
    });
    // Status comes from the hooks: idle after the turn's Stop hook.
    h.wait_for("idle", || {
        let session = h.json(&["session", "show", &session_id, "--json"]);
        (session["status"] == "idle").then_some(())
    });

    let logs = h.ok(&["session", "logs", &session_id, "-n", "50"]);
    assert!(logs.contains("hello from the TUI"), "{logs}");
    assert!(logs.contains("──── screen ────"), "{logs}");
    assert!(logs.contains("Say hello"), "{logs}");

    h.ok(&["session", "kill", &session_id]);
    h.wait_task(&task_id, |t| t["status"] == "cancelled");
    let refused = h.run(&["session", "attach", &session_id]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("error[E503]"), "{stderr}");
    assert!(stderr.contains("parhelia resume"), "{stderr}");
}

/// Issue 18: an attach survives its connection dropping. Reset under it (what a NAT or a
/// restarting tunnel does), the CLI says so, reconnects and the new tmux client redraws the
/// screen; the terminal stays raw throughout, and what is typed afterwards reaches the pane
/// (and starts a turn). A connection that goes silent instead (the agent frozen: nothing
/// answers, nothing is reset) is noticed by the keepalive pings, and the attach comes back
/// once the agent answers again. Detaching afterwards still restores the terminal.
#[test]
fn attach_reconnects_after_the_connection_is_reset_or_goes_silent() {
    let h = Harness::new(Script::new([
        Turn::text("ready when you are"),
        Turn::text_then_tool_use("Writing it.", [ToolCall::write("after.txt", "after\n")]),
        Turn::text("wrote after.txt"),
    ]));
    let created: serde_json::Value =
        serde_json::from_str(&h.ok(&["task", "create", "Get ready", "--interactive", "--json"]))
            .unwrap();
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let session_id = created["session_id"].as_str().unwrap().to_string();
    let container_id = created["container_id"].as_str().unwrap().to_string();
    h.wait_for("the first turn", || {
        (!h.task_events(&task_id, "turn_result").is_empty()).then_some(())
    });
    let (agent_pid, socket) = h.agent_pid_and_tmux(&container_id);
    let clients = || {
        tmux(&socket, &["list-clients", "-t", "claude"])
            .lines()
            .count()
    };

    let mut terminal = Terminal::attach(&h, &session_id, &[]);
    let cooked = terminal.cooked();
    wait_until("the screen", || {
        terminal.output_len() > 0 && terminal.is_raw(cooked) && clients() == 1
    });

    // Reset: both ends see the connection broken at once.
    let reset = parhelia_testkit::procs::reset_tcp_connections_of(terminal.pid());
    assert!(
        !reset.is_empty(),
        "the attach holds a TCP connection to the agent"
    );
    terminal.wait_reattached(1, "reset");
    assert!(terminal.is_raw(cooked), "the terminal stayed raw");
    wait_until("one tmux client again", || clients() == 1);
    terminal.type_bytes(b"Write after.txt");
    wait_until(
        "the prompt typed after the reconnection in the pane",
        || tmux(&socket, &["capture-pane", "-p", "-t", "claude"]).contains("Write after.txt"),
    );
    terminal.type_bytes(b"\r");
    let workspace = h
        .state()
        .join("sessions")
        .join(&session_id)
        .join("workspace");
    wait_until("after.txt", || workspace.join("after.txt").exists());
    wait_until("the turn's end", || {
        h.task_events(&task_id, "turn_result").len() >= 2
    });

    // Silent: the agent frozen, the connection open but unanswered. Only the keepalive
    // pings can tell (within 10 s); the attach then retries until the agent answers.
    let agent = nix::unistd::Pid::from_raw(agent_pid);
    nix::sys::signal::kill(agent, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let frozen = Instant::now();
    let noticed = || {
        terminal
            .output_text()
            .matches("[parhelia] the connection to session")
            .count()
            >= 2
    };
    let wait_noticed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until("the silent connection noticed", noticed)
    }));
    nix::sys::signal::kill(agent, nix::sys::signal::Signal::SIGCONT).unwrap();
    if let Err(panic) = wait_noticed {
        std::panic::resume_unwind(panic);
    }
    eprintln!("a frozen agent was noticed after {:?}", frozen.elapsed());
    terminal.wait_reattached(2, "silent");
    assert!(terminal.is_raw(cooked), "the terminal stayed raw");
    wait_until("one tmux client after the freeze", || clients() == 1);
    terminal.type_bytes(b"Typed after the freeze");
    wait_until(
        "keys typed after the second reconnection in the pane",
        || {
            tmux(&socket, &["capture-pane", "-p", "-t", "claude"])
                .contains("Typed after the freeze")
        },
    );

    terminal.type_bytes(b"\x02d");
    let status = terminal.wait_exit();
    assert!(status.success(), "{status}: {}", terminal.output_text());
    assert_eq!(terminal.cooked(), cooked, "the terminal is restored");
    let task = h.json(&["task", "show", &task_id, "--json"]);
    assert_eq!(
        task["status"], "running",
        "a dropped attach leaves the session running: {task:#}"
    );
    h.ok(&["session", "kill", &session_id]);
    h.wait_task(&task_id, |t| t["status"] == "cancelled");
}
