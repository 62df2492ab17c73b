//! Uid separation (Modal's shape: no bubblewrap, the agent and Claude Code in one
//! container): the agent runs as root with `session_user` in its spec, and the real Claude
//! Code, driven by the scripted model, attacks it from the inside with a Bash command —
//! the agent's secret from `/proc/*/environ`, a forged journal line, a look into the
//! checkpoint store — and the session is then resumed in a second container (a restore
//! written as root, handed back to the user).
//!
//! Needs root and `useradd` (it creates the user `parhelia-sess`); skipped with a printed
//! reason elsewhere. CI runs as root.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use parhelia_proto::{SessionOutcome, event};
use parhelia_testkit::claude_code::claude_bin;
use parhelia_testkit::{Script, StandIn, ToolCall, Turn};

use crate::support::*;

use parhelia_testkit::session_user::{SESSION_USER as USER, session_user};

fn owner(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().uid()
}

#[tokio::test]
async fn the_session_runs_as_its_own_user_and_cannot_reach_the_agent() {
    let Some((_, uid, gid)) = session_user() else {
        eprintln!("skipped: uid separation needs root and useradd");
        return;
    };
    let claude = claude_bin().unwrap();
    let fixture = Fixture::new();
    // The fixture's root must be passable for the user (a tempdir is 0700).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(fixture.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let home = fixture.path("home");
    std::fs::create_dir_all(&home).unwrap();
    nix::unistd::chown(
        &home,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .unwrap();
    // A repository the user will own: the agent (root) still reads its git state.
    let workspace = fixture.path("workspace");
    std::fs::write(workspace.join("README.md"), "hello\n").unwrap();
    for args in [
        &["init", "-q"][..],
        &["-c", "user.name=t", "-c", "user.email=t@e", "add", "."],
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@e",
            "commit",
            "-qm",
            "init",
        ],
    ] {
        assert!(
            std::process::Command::new("git")
                .args(args)
                .current_dir(&workspace)
                .status()
                .unwrap()
                .success()
        );
    }

    let journal_path = fixture.path("volume/journal/ctr-1.jsonl");
    let store = fixture.path("volume/checkpoints");
    let attack = format!(
        "{{ echo uid=$(id -u); \
           echo secrets=$(for f in /proc/[0-9]*/environ; do tr '\\0' '\\n' < \"$f\" 2>/dev/null; done | grep -c '^PARHELIA_SESSION_SECRET='); \
           echo forged >> {journal} && echo WROTE-JOURNAL; \
           ls {store} >/dev/null && echo LISTED-STORE; \
           cat {spec} >/dev/null && echo READ-SPEC; \
           cat {log} >/dev/null && echo READ-AGENT-LOG; \
           echo probe-done; }} > probe.txt 2>/dev/null",
        journal = journal_path.display(),
        store = store.display(),
        spec = fixture.path("spec.json").display(),
        log = fixture.path("runtime/agent.log").display(),
    );
    let stand_in = StandIn::start(Script::new([
        Turn::tool_use([ToolCall::bash(attack)]),
        Turn::text("probed").with_usage(100, 10),
        Turn::text("resumed").with_usage(50, 5),
    ]))
    .unwrap();
    let run = |container_id: &str, resume: bool, prompt: &str| {
        let spec = fixture.write_spec(|s| {
            s["container_id"] = container_id.into();
            s["resume"] = resume.into();
            s["prompt"] = prompt.into();
            s["claude_bin"] = claude.to_string_lossy().into_owned().into();
            s["linger_after_finish_ms"] = 0.into();
            s["session_user"] = USER.into();
            if resume {
                s["restore_checkpoint"] = "latest".into();
            }
        });
        // The spec stays the agent's (it names paths, not secrets, but it is not the
        // session's to read).
        std::fs::set_permissions(&spec, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut command = fixture.isolated_agent_command(&spec);
        command
            .env("ANTHROPIC_BASE_URL", stand_in.base_url())
            .env("ANTHROPIC_API_KEY", "test-key")
            .env("CLAUDE_CODE_MAX_RETRIES", "1")
            .env("HOME", &home);
        command.spawn().unwrap()
    };

    let mut child = run("ctr-1", false, "Probe the container");
    let status = wait_for_exit(&mut child).await;
    let output = child.wait_with_output().unwrap();
    assert!(
        status.success(),
        "{status}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let first = fixture.journal_of("ctr-1");
    let finished = session_finished(&first);
    assert_eq!(
        finished.outcome,
        SessionOutcome::Succeeded as i32,
        "{finished:?}\n{first:#?}"
    );

    // What the session could do from the inside.
    let probe = std::fs::read_to_string(workspace.join("probe.txt")).unwrap();
    assert!(probe.contains("probe-done"), "{probe}");
    assert!(probe.contains(&format!("uid={uid}")), "{probe}");
    assert!(
        probe.contains("secrets=0"),
        "the agent's secret was readable: {probe}"
    );
    for escaped in [
        "WROTE-JOURNAL",
        "LISTED-STORE",
        "READ-SPEC",
        "READ-AGENT-LOG",
    ] {
        assert!(!probe.contains(escaped), "{escaped}: {probe}");
    }
    let journal_text = std::fs::read_to_string(&journal_path).unwrap();
    // (The Bash command itself is journaled as a tool call; the forged line is not.)
    assert!(!journal_text.lines().any(|l| l == "forged"));
    assert_eq!(owner(&journal_path), 0);
    // What it writes is its own; the agent still checkpointed it, git state included.
    assert_eq!(owner(&workspace.join("probe.txt")), uid);
    assert_eq!(owner(&workspace.join(".git/HEAD")), uid);
    assert!(
        first.iter().any(|e| matches!(
            &e.kind,
            Some(event::Kind::CheckpointCreated(c)) if !c.skipped && !c.checkpoint_id.is_empty()
        )),
        "{first:#?}"
    );
    let opened = parhelia_checkpoint::Store::open(&store).unwrap();
    let newest = opened.list().unwrap().into_iter().last().unwrap();
    let git = &newest.metadata["git"];
    assert_eq!(git["repository"], true, "{git}");
    assert!(git.get("error").is_none(), "{git}");

    // A resume in a new container: the restore writes as root; the session gets its
    // files back and its conversation continues.
    // (A fresh container: an empty workspace, everything comes from the checkpoint.)
    std::fs::remove_dir_all(&workspace).unwrap();
    std::fs::create_dir(&workspace).unwrap();
    let mut child = run("ctr-2", true, "Anything else?");
    let status = wait_for_exit(&mut child).await;
    let output = child.wait_with_output().unwrap();
    assert!(
        status.success(),
        "{status}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let second = fixture.journal_of("ctr-2");
    let finished = session_finished(&second);
    assert_eq!(
        finished.outcome,
        SessionOutcome::Succeeded as i32,
        "{second:#?}"
    );
    assert_eq!(finished.result, "resumed");
    assert!(
        second
            .iter()
            .any(|e| matches!(&e.kind, Some(event::Kind::CheckpointRestored(_)))),
        "{second:#?}"
    );
    assert_eq!(owner(&workspace.join("probe.txt")), uid);
    assert_eq!(owner(&workspace.join("README.md")), uid);
}
