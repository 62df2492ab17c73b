//! Faults named truthfully (issue 12), with the real coordinator, agent, tmux and Claude
//! Code on the scripted model.
//!
//! A full disk: the state directory sits on a small tmpfs that the test fills while a
//! turn runs. The session must stop as `interrupted` with E516 (not stay `running`,
//! not E502), nothing earlier is harmed, and the advice printed under the error (free
//! space, then `parhelia resume SESSION_ID`) followed as printed brings the session back.
//! Mounting needs root (CAP_SYS_ADMIN); where it is refused the test says so and ends.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use parhelia_testkit::harness::Harness;
use parhelia_testkit::{Script, ToolCall, Turn};

/// A tmpfs mounted over a directory for the test's lifetime.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Writes zeros to `path` until the filesystem refuses; returns the bytes written.
fn fill_up(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 256 << 10];
    let mut written = 0u64;
    loop {
        match file.write(&block) {
            Ok(0) | Err(_) => break,
            Ok(n) => written += n as u64,
        }
    }
    let _ = file.sync_all();
    // Fill the last crumbs too.
    let small = [0u8; 512];
    while let Ok(n) = file.write(&small) {
        if n == 0 {
            break;
        }
        written += n as u64;
    }
    written
}

#[test]
fn a_full_disk_stops_the_session_with_e516_and_resume_finishes_it() {
    // Declared first so the harness (coordinator, agents) goes before the mount.
    let _mount: Option<Tmpfs>;
    let h = Harness::new(Script::new([
        Turn::tool_use([ToolCall::write("f1.txt", "one\n")]),
        Turn::text("Wrote f1."),
        Turn::tool_use([ToolCall::bash("sleep 8 && echo two > f2.txt")]),
        Turn::text("Wrote f2."),
        Turn::text("Back."),
    ]));
    _mount = Tmpfs::mount(&h.state(), "96m");
    if _mount.is_none() {
        eprintln!("SKIPPED: mounting a tmpfs is not permitted here (needs CAP_SYS_ADMIN)");
        return;
    }
    // Interactive, so a second turn can be sent once the first is checkpointed.
    let out = h.ok(&["task", "create", "Write f1", "--interactive", "--json"]);
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let session_id = created["session_id"].as_str().unwrap().to_string();
    let ws = h
        .state()
        .join("sessions")
        .join(&session_id)
        .join("workspace");
    h.wait_for("the first turn's checkpoint", || {
        (!h.task_events(&task_id, "checkpoint_created").is_empty()).then_some(())
    });
    h.ok(&["session", "send", &session_id, "Now write f2"]);
    h.wait_for("the second turn's tool call", || {
        (h.stand_in.requests().len() >= 3).then_some(())
    });
    let checkpoints_before = h.json(&["checkpoint", "list", &session_id, "--json"]);

    let fill = h.state().join("fill.bin");
    let filled = fill_up(&fill);
    assert!(filled > 0);

    let task = h.wait_task(&task_id, |t| t["status"] != "running");
    assert_eq!(task["status"], "interrupted", "{task:#}");
    assert_eq!(task["error_code"], "E516", "{task:#}");
    assert!(
        task["error_message"].as_str().unwrap().contains("space"),
        "{task:#}"
    );
    // Nothing earlier was harmed: the file and every earlier checkpoint are there.
    assert_eq!(std::fs::read_to_string(ws.join("f1.txt")).unwrap(), "one\n");
    let checkpoints_after = h.json(&["checkpoint", "list", &session_id, "--json"]);
    for cp in checkpoints_before.as_array().unwrap() {
        assert!(
            checkpoints_after
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["id"] == cp["id"]),
            "{cp} was lost"
        );
    }
    let events = h.json(&["events", "list", "--json", "--limit", "0"]);
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "disk_full"),
        "the coordinator recorded the full disk"
    );

    // While the disk is still full, a resume says so instead of failing otherwise.
    let out = h.run(&["resume", &session_id]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("E516"), "{stderr}");

    // The advice under the error (issue 14): free space, then this session's resume.
    let watched = h.run(&["task", "watch", &task_id]);
    let advice = String::from_utf8_lossy(&watched.stderr).into_owned();
    assert!(advice.starts_with("error[E516]: "), "{advice}");
    assert!(advice.contains("Free space (`df -h`"), "{advice}");
    let resume = advice
        .split('`')
        .find(|s| s.starts_with("parhelia resume "))
        .unwrap_or_else(|| panic!("no `parhelia resume` in the advice: {advice}"));
    assert_eq!(resume, format!("parhelia resume {session_id}"), "{advice}");

    // Followed: space back, then the advised resume; the session resumes with its
    // conversation.
    std::fs::remove_file(&fill).unwrap();
    let args: Vec<&str> = resume.split_whitespace().skip(1).collect();
    h.ok(&args);
    let task = h.wait_task(&task_id, |t| t["status"] == "running");
    assert_eq!(task["error_code"], serde_json::Value::Null, "{task:#}");
    h.ok(&["session", "send", &session_id, "Are you back?"]);
    h.wait_for("a turn after the resume", || {
        h.stand_in
            .requests()
            .iter()
            .any(|r| r.last_user_text.as_deref() == Some("Are you back?"))
            .then_some(())
    });
    assert_eq!(std::fs::read_to_string(ws.join("f1.txt")).unwrap(), "one\n");
}

/// `--timeout` is real on the local backend (issue 13): a slow task is stopped at its
/// limit with a final checkpoint and fails E301 naming the limit; `--gpu`, which a
/// local run cannot give without that GPU, is refused (E114) before anything is
/// recorded.
#[test]
fn a_local_timeout_stops_the_task_and_unenforceable_limits_are_refused() {
    let h = Harness::new(Script::new([
        Turn::tool_use([ToolCall::bash("echo started > progress.txt; sleep 600")]),
        Turn::text("never"),
    ]));
    let started = std::time::Instant::now();
    let out = h.ok(&["task", "create", "Work slowly", "--timeout", "3s", "--json"]);
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let session_id = created["session_id"].as_str().unwrap().to_string();
    let task = h.wait_task(&task_id, |t| t["status"] != "running");
    assert_eq!(task["status"], "failed", "{task:#}");
    assert_eq!(task["error_code"], "E301", "{task:#}");
    assert!(
        task["error_message"]
            .as_str()
            .unwrap()
            .contains("--timeout 3s"),
        "{task:#}"
    );
    // Not a timing threshold: only that it did not run to `sleep 600`'s end.
    assert!(started.elapsed() < std::time::Duration::from_secs(300));
    let stops = h.task_events(&task_id, "checkpoint_created");
    assert!(
        stops.iter().any(|e| e.to_string().contains("timeout")),
        "a final checkpoint was taken: {stops:#?}"
    );
    let listed = h.json(&["checkpoint", "list", &session_id, "--json"]);
    assert!(!listed.as_array().unwrap().is_empty());

    // `--gpu` without that GPU here is E114; `--cpu`/`--memory` are enforced with
    // cgroups where the host allows it, else E113 (tests/tests/e2e/procs.rs).
    let out = h.run(&["task", "create", "Train model", "--gpu", "A10G"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("E114") && stderr.contains("--gpu"),
        "{stderr}"
    );
    assert_eq!(
        h.json(&["task", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        1,
        "nothing refused was recorded"
    );
}
