//! The live Modal suite: the same product against real Modal. It costs real money
//! (cents: one CPU sandbox for a minute or two), so it is `#[ignore]`d: every ordinary
//! run reports it as skipped, with why. `scripts/test-modal-live` runs it; it needs
//! `MODAL_TOKEN_ID` and `MODAL_TOKEN_SECRET`, the pinned SDK for `modal.python` (or
//! `PARHELIA_MODAL_PYTHON`, e.g. `tools/modal-sdk/.venv/bin/python`) and a Modal secret
//! `anthropic-api-key` holding a real `ANTHROPIC_API_KEY`. Run without the token, it
//! fails saying so (it never passes without having run).
//!
//! ```text
//! MODAL_TOKEN_ID=… MODAL_TOKEN_SECRET=… scripts/test-modal-live
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Why this suite is skipped in ordinary runs (nextest lists it as skipped).
const NEEDS: &str = "live Modal (costs cents): needs MODAL_TOKEN_ID and MODAL_TOKEN_SECRET and a Modal secret `anthropic-api-key`; run scripts/test-modal-live. The Modal backend is covered against the stand-in by backend_contract.rs and tests/tests/e2e/modal.rs";

/// Run explicitly (`--run-ignored`) without credentials: fail, never pass unrun.
fn require_credentials() {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.is_empty());
    assert!(
        set("MODAL_TOKEN_ID") && set("MODAL_TOKEN_SECRET"),
        "not run: {NEEDS}"
    );
}

fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

struct Live {
    dir: tempfile::TempDir,
}

impl Live {
    fn new() -> Live {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".parhelia")).unwrap();
        // The shared harness's reaper: a killed run leaves no local process behind
        // (a sandbox is Modal's: it ends at its `timeout`, or `parhelia cleanup
        // --terminate` ends it). HOME stays the user's: the Modal token is there.
        parhelia_testkit::procs::reap_when_killed(dir.path());
        Live { dir }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(bin_dir().join("parhelia"))
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("PARHELIA_HOME")
            // The sandbox reads the key from the Modal secret, never from here.
            .env_remove("ANTHROPIC_BASE_URL")
            // The product's default agent: beside this target/debug/parhelia, the release
            // build scripts/test-modal-live makes (target/release/parhelia-agent).
            .env_remove("PARHELIA_MODAL_AGENT_BIN")
            .output()
            .expect("run parhelia")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "parhelia {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        // Never leave a billing sandbox behind.
        let _ = self.run(&["cleanup", "--terminate"]);
        let _ = self.run(&["coordinator", "stop"]);
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
#[ignore = "live Modal (costs cents): needs MODAL_TOKEN_ID/MODAL_TOKEN_SECRET; run scripts/test-modal-live"]
fn live_setup_health_task_checkpoint_and_pull() {
    require_credentials();
    let l = Live::new();
    l.ok(&["modal", "setup"]);
    l.ok(&["modal", "init-volume"]);
    let health = l.json(&["modal", "health-check", "--json"]);
    assert_eq!(health["status"], "ok", "{health:#}");

    let repo = l.dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("README.md"), "live test\n").unwrap();
    git(
        &repo,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-qam",
            "x",
            "--allow-empty",
        ],
    );
    let created = l.json(&[
        "task",
        "create",
        "Create a file hello.txt containing exactly the word hi. Do nothing else.",
        "--backend",
        "modal",
        "--workspace",
        repo.to_str().unwrap(),
        "--timeout",
        "20m",
        "--max-cost",
        "2",
        "--json",
    ]);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let session_id = created["session_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(900);
    let task = loop {
        let task = l.json(&["task", "show", &task_id, "--json"]);
        if matches!(
            task["status"].as_str(),
            Some("completed" | "failed" | "cancelled" | "interrupted")
        ) {
            break task;
        }
        assert!(
            Instant::now() < deadline,
            "the live task did not finish: {task:#}"
        );
        std::thread::sleep(Duration::from_secs(5));
    };
    assert_eq!(task["status"], "completed", "{task:#}");

    // Checkpoints came back from the volume and verified.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let list = l.json(&["checkpoint", "list", &session_id, "--json"]);
        let all = list.as_array().cloned().unwrap_or_default();
        if !all.is_empty() && all.iter().all(|c| c["durable"] == true) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "checkpoints never became durable: {list:#}"
        );
        std::thread::sleep(Duration::from_secs(5));
    }
    l.ok(&[
        "session",
        "pull",
        &session_id,
        "--branch",
        "from-modal",
        "--repo",
        repo.to_str().unwrap(),
    ]);
    assert_eq!(git(&repo, &["show", "from-modal:hello.txt"]).trim(), "hi");
}
