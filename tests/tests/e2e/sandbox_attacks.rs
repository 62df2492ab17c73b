//! A session is a sandbox, tried from the inside: real Claude Code, scripted by the
//! model stand-in, runs a hostile Bash command that attempts every escape issue 11
//! found (the coordinator's database, socket and token, other sessions' files and
//! tmux servers, every process's environment, the session's own checkpoint store and
//! journal, writes outside). Under bubblewrap each attempt must fail; the control case
//! (isolation off) runs the very same command and shows it succeeding, so the
//! assertions can fail. Where bubblewrap cannot run, the tests assert the plain
//! warning instead.
//!
//! The threat model these tests prove lines of: `docs/security.md`.

use std::path::{Path, PathBuf};
use std::process::Command;

use parhelia_testkit::harness::Harness;
use parhelia_testkit::{Script, ToolCall, Turn};

/// Claude's Bash runs in `<state>/sessions/<id>/workspace`, so `../../..` is the state
/// directory. Everything the attack learns goes to `report.txt` and `seen.txt` in its
/// own workspace, which the test reads afterwards.
const ATTACK: &str = r#"S=$(cd ../../.. && pwd)
{
for f in parhelia.db parhelia.db-wal parhelia.db-shm coordinator.sock coordinator.token coordinator.log; do
  test -e "$S/$f" && echo "VISIBLE $f"
done
for d in "$S"/sessions/*/volume/checkpoints "$S"/sessions/*/volume/journal; do
  test -e "$d" && echo "VISIBLE store $d"
done
cat "$S/sessions/sess-other00/workspace/secret.txt" 2>/dev/null && echo "READ other workspace"
(echo pwned > "$S/sessions/sess-other00/workspace/secret.txt") 2>/dev/null && echo "WROTE other workspace"
tmux -S "$S/containers/ctr-other00/runtime/tmux/tmux.sock" new-window "touch $S/../tmux-escape" 2>/dev/null && echo "DROVE other tmux"
(echo pwned > "$S/../planted-outside") 2>/dev/null && echo "WROTE outside (maybe a private tmpfs)"
echo "PROCS $(ls /proc | grep -c '^[0-9]')"
} > report.txt 2>&1
{ cat /proc/[0-9]*/environ /proc/[0-9]*/cmdline; env; cat "$S"/containers/*/spec.json "$S"/containers/*/runtime/agent.json "$S/parhelia.db" "$S/parhelia.db-wal" "$S/coordinator.token"; } 2>/dev/null | tr '\0' '\n' > seen.txt
echo attacked"#;

fn attack() -> Script {
    Script::new([
        Turn::tool_use([ToolCall::bash(ATTACK)]),
        Turn::text("Done looking around."),
    ])
}

fn bwrap_works() -> bool {
    Command::new("bwrap")
        .args([
            "--ro-bind",
            "/",
            "/",
            "--dev",
            "/dev",
            "--unshare-pid",
            "--proc",
            "/proc",
            "--",
            "true",
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Another session's files and a live tmux server on its socket, planted in the state
/// directory before the attacker starts.
struct OtherSession {
    secret_file: PathBuf,
    tmux_socket: PathBuf,
}

impl OtherSession {
    fn plant(state: &Path) -> OtherSession {
        let ws = state.join("sessions/sess-other00/workspace");
        std::fs::create_dir_all(&ws).unwrap();
        let secret_file = ws.join("secret.txt");
        std::fs::write(&secret_file, "other-session-private-words\n").unwrap();
        let tmux_dir = state.join("containers/ctr-other00/runtime/tmux");
        std::fs::create_dir_all(&tmux_dir).unwrap();
        let tmux_socket = tmux_dir.join("tmux.sock");
        let status = Command::new("tmux")
            .arg("-S")
            .arg(&tmux_socket)
            .args(["-f", "/dev/null", "new-session", "-d", "sleep 600"])
            .status()
            .unwrap();
        assert!(status.success());
        OtherSession {
            secret_file,
            tmux_socket,
        }
    }
}

impl Drop for OtherSession {
    fn drop(&mut self) {
        parhelia_testkit::procs::tmux_kill_server(&self.tmux_socket);
    }
}

struct Outcome {
    h: Harness,
    other: OtherSession,
    report: String,
    seen: String,
    secret: String,
    create_stderr: String,
}

fn run_attack(isolation: &str) -> Outcome {
    let mut h = Harness::new(attack());
    h.set_env("PARHELIA_ISOLATION", isolation);
    let other = OtherSession::plant(&h.state());
    let out = h.run(&["task", "create", "Look around", "--sync"]);
    let create_stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{create_stderr}");
    let task = h.json(&["task", "list", "--json"])[0].clone();
    let session_id = task["session_id"].as_str().unwrap().to_string();
    let ws = h
        .state()
        .join("sessions")
        .join(&session_id)
        .join("workspace");
    // Lossy: what the attack saw may be binary (a database page).
    let read = |name: &str| {
        String::from_utf8_lossy(&std::fs::read(ws.join(name)).unwrap_or_default()).into_owned()
    };
    let (report, seen) = (read("report.txt"), read("seen.txt"));
    assert!(!report.is_empty(), "the attack ran and reported");
    let secret: String = h
        .db()
        .query_row(
            "SELECT secret FROM sessions WHERE id = ?1",
            [&session_id],
            |r| r.get(0),
        )
        .unwrap();
    Outcome {
        h,
        other,
        report,
        seen,
        secret,
        create_stderr,
    }
}

#[test]
fn a_sandboxed_session_reaches_nothing_outside_itself() {
    if !bwrap_works() {
        // Without bubblewrap the product must say so plainly, and refuse when asked to.
        let mut h = Harness::new(Script::new([Turn::text("hi")]));
        let out = h.run(&["task", "create", "hi", "--sync"]);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("NOT isolated"),
            "{out:?}"
        );
        h.set_env("PARHELIA_ISOLATION", "required");
        let out = h.run(&["task", "create", "hi"]);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("E508"),
            "{out:?}"
        );
        return;
    }
    let o = run_attack("auto");
    assert!(
        !o.create_stderr.contains("NOT isolated"),
        "{}",
        o.create_stderr
    );
    for reached in [
        "VISIBLE",
        "READ other",
        "WROTE other",
        "DROVE other",
        "other-session-private-words",
    ] {
        assert!(
            !o.report.contains(reached),
            "the sandbox let this through: {reached}\n{}",
            o.report
        );
    }
    let procs: u32 = o
        .report
        .lines()
        .find_map(|l| l.strip_prefix("PROCS "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        procs < 20,
        "the session sees {procs} processes: not its own PID namespace"
    );
    assert!(
        o.seen.len() > 100,
        "the attack read its own environment at least: {}",
        o.seen
    );
    assert!(
        !o.seen.contains(&o.secret),
        "the session could read its own secret"
    );
    // Nothing outside changed.
    assert_eq!(
        std::fs::read_to_string(&o.other.secret_file).unwrap(),
        "other-session-private-words\n"
    );
    assert!(!o.h.state().join("../tmux-escape").exists());
    assert!(!o.h.state().join("../planted-outside").exists());
    let doctor = o.h.ok(&["doctor"]);
    assert!(doctor.contains("bubblewrap works"), "{doctor}");
}

#[test]
fn without_isolation_the_same_attack_gets_through_and_the_user_is_told() {
    let o = run_attack("none");
    // The control case: the attack is real, so the sandboxed test can fail.
    for reached in [
        "VISIBLE parhelia.db",
        "VISIBLE coordinator.sock",
        "VISIBLE coordinator.token",
        "READ other workspace",
        "WROTE other workspace",
        "DROVE other tmux",
    ] {
        assert!(
            o.report.contains(reached),
            "{reached} missing in\n{}",
            o.report
        );
    }
    assert!(
        o.seen.contains(&o.secret),
        "unconfined, the database is readable ({} bytes seen):\n{}",
        o.seen.len(),
        o.report
    );
    assert!(o.h.state().join("../planted-outside").exists());
    let doctor = String::from_utf8_lossy(&o.h.run(&["doctor"]).stdout).into_owned();
    assert!(doctor.contains("NOT isolated"), "{doctor}");
}

/// Defence in depth: even a process that reaches the socket and reads the token is
/// refused when it runs inside a sandbox (another PID namespace), and so is a caller
/// with a wrong token; the user's own CLI still gets in.
#[test]
fn the_control_socket_refuses_sandboxed_callers_and_wrong_tokens() {
    let h = Harness::new(Script::new([]));
    h.ok(&["task", "create", "queued", "--no-dispatch"]);
    if bwrap_works() {
        // The user's own command line and environment, only inside a sandbox that
        // sees everything (even the token): the PID namespace alone must refuse it.
        let inner = h.command(&["task", "create", "from inside", "--no-dispatch"]);
        let mut cmd = Command::new("bwrap");
        cmd.args([
            "--bind",
            "/",
            "/",
            "--dev",
            "/dev",
            "--unshare-pid",
            "--proc",
            "/proc",
            "--",
        ])
        .arg(inner.get_program())
        .args(inner.get_args());
        if let Some(dir) = inner.get_current_dir() {
            cmd.current_dir(dir);
        }
        for (k, v) in inner.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("E406"), "{stderr}");
        assert!(stderr.contains("sandbox"), "{stderr}");
    }
    let token = h.state().join("coordinator.token");
    let real = std::fs::read_to_string(&token).unwrap();
    std::fs::write(&token, "0".repeat(64)).unwrap();
    let out = h.run(&["task", "create", "wrong token", "--no-dispatch"]);
    // A coordinator that refuses us is never reported as "not running".
    let status = h.run(&["coordinator", "status"]);
    let doctor = h.run(&["doctor"]);
    std::fs::write(&token, &real).unwrap();
    let status_err = String::from_utf8_lossy(&status.stderr);
    assert!(
        !status.status.success() && status_err.contains("E406"),
        "{status:?}"
    );
    let doctor_out = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        doctor_out.contains("refused this caller") && !doctor_out.contains("not running"),
        "{doctor_out}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("E406") && stderr.contains("token"),
        "{stderr}"
    );
    let tasks = h.json(&["task", "list", "--json"]);
    assert_eq!(
        tasks.as_array().unwrap().len(),
        1,
        "nothing refused was recorded: {tasks:#}"
    );
    h.ok(&["task", "create", "the user again", "--no-dispatch"]);
}

/// A SIGKILLed agent does not leave Claude Code running unseen: the sandbox dies with it.
#[test]
fn a_killed_agent_takes_its_sandbox_with_it() {
    if !bwrap_works() {
        return;
    }
    let h = Harness::new(Script::new([
        Turn::tool_use([ToolCall::bash("sleep 86413")]),
        Turn::text("never reached"),
    ]));
    let out = h.ok(&["task", "create", "Hang", "--json"]);
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    let container_id = created["container_id"].as_str().unwrap().to_string();
    let agent_json = h
        .state()
        .join("containers")
        .join(&container_id)
        .join("runtime/agent.json");
    let tmux_alive = |socket: &Path| {
        Command::new("tmux")
            .arg("-N")
            .arg("-S")
            .arg(socket)
            .arg("has-session")
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    h.wait_for("the session's tmux server", || {
        agent_json.exists().then_some(())?;
        let (_, socket) = h.agent_pid_and_tmux(&container_id);
        tmux_alive(&socket).then_some(())
    });
    let (pid, tmux_socket) = h.agent_pid_and_tmux(&container_id);
    assert!(
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    h.wait_for("the sandbox to die with its agent", || {
        (!tmux_alive(&tmux_socket)).then_some(())
    });
}

/// A database moved out of the state directory (`orchestrator.db_path`) is hidden
/// like the state directory: from inside, the session finds neither the file nor
/// its WAL, so not its own or anyone's secret. The directory lives under the build
/// tree, not `/tmp` (which every sandbox hides anyway); the control run without
/// isolation reads it, so the check can fail.
#[test]
fn a_database_outside_the_state_directory_is_hidden_too() {
    let sandboxed = bwrap_works();
    for isolation in ["auto", "none"] {
        if isolation == "auto" && !sandboxed {
            continue;
        }
        let db_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let db = db_dir.path().join("parhelia.db");
        let script = format!(
            "{{ test -e '{db}' && echo VISIBLE db; test -e '{db}-wal' && echo VISIBLE wal; }} > report.txt; cat '{db}' '{db}-wal' > seen.txt 2>/dev/null; echo attacked",
            db = db.display()
        );
        let mut h = Harness::new(Script::new([
            Turn::tool_use([ToolCall::bash(&script)]),
            Turn::text("Done looking around."),
        ]));
        h.set_env("PARHELIA_ISOLATION", isolation);
        std::fs::write(
            h.state().join("config.toml"),
            format!("[orchestrator]\ndb_path = \"{}\"\n", db.display()),
        )
        .unwrap();
        h.ok(&["task", "create", "Look around", "--sync"]);
        let task = h.json(&["task", "list", "--json"])[0].clone();
        let session_id = task["session_id"].as_str().unwrap().to_string();
        let ws = h
            .state()
            .join("sessions")
            .join(&session_id)
            .join("workspace");
        let report = std::fs::read_to_string(ws.join("report.txt")).unwrap_or_default();
        let seen = String::from_utf8_lossy(&std::fs::read(ws.join("seen.txt")).unwrap_or_default())
            .into_owned();
        let secret: String =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .unwrap()
                .query_row(
                    "SELECT secret FROM sessions WHERE id = ?1",
                    [&session_id],
                    |r| r.get(0),
                )
                .unwrap();
        if isolation == "none" {
            assert!(report.contains("VISIBLE db"), "control: {report}");
            assert!(seen.contains(&secret), "control: the secret is readable");
        } else {
            assert!(!report.contains("VISIBLE"), "{report}");
            assert!(!seen.contains(&secret), "the session read its secret");
        }
        let _ = h.run(&["coordinator", "stop"]);
    }
}
