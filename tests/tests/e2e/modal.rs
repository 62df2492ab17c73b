//! The Modal backend end to end against the SDK stand-in: the real
//! `parhelia`, the real bridge (`images/modal/parhelia_bridge.py`) driving a
//! stand-in `modal` package whose sandboxes are local processes running the
//! real agent, tmux and Claude Code against the scripted model. What the
//! sandboxes were created with is read back from the stand-in's records.

use std::path::{Path, PathBuf};
use std::process::Command;

use parhelia_testkit::harness::Harness;
use parhelia_testkit::model_stand_in::RequestKind;
use parhelia_testkit::{Script, ToolCall, Turn};

fn create(h: &Harness, prompt: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["task", "create", prompt, "--json"];
    args.extend_from_slice(extra);
    let out = h.ok(&args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The stand-in, set up as a user would: `parhelia modal setup`.
fn modal_ready(h: &mut Harness) -> PathBuf {
    let standin = h.use_modal_stand_in();
    h.ok(&["modal", "setup"]);
    standin
}

fn finished(h: &Harness, task_id: &str) -> serde_json::Value {
    h.wait_task(task_id, |t| {
        matches!(
            t["status"].as_str(),
            Some("completed" | "failed" | "cancelled" | "interrupted")
        )
    })
}

/// Every sandbox the stand-in created: its recorded `sandbox.json`.
fn sandboxes(standin: &Path) -> Vec<serde_json::Value> {
    let mut all = Vec::new();
    if let Ok(entries) = std::fs::read_dir(standin.join("sandboxes")) {
        for entry in entries.flatten() {
            if let Ok(text) = std::fs::read_to_string(entry.path().join("sandbox.json")) {
                all.push(serde_json::from_str(&text).unwrap());
            }
        }
    }
    all
}

fn sandbox_of(standin: &Path, container_id: &str) -> serde_json::Value {
    sandboxes(standin)
        .into_iter()
        .find(|s| s["tags"]["parhelia.container"] == container_id)
        .unwrap_or_else(|| panic!("no sandbox for {container_id}"))
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "User")
        .env("GIT_AUTHOR_EMAIL", "user@example.com")
        .env("GIT_COMMITTER_NAME", "User")
        .env("GIT_COMMITTER_EMAIL", "user@example.com")
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A repository with two commits (nothing pushed anywhere), an uncommitted
/// edit and an untracked file.
fn user_repo(root: &Path) -> PathBuf {
    let repo = root.join("user-repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("notes.txt"), "first\n").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "first"]);
    std::fs::write(repo.join("notes.txt"), "first\nsecond\n").unwrap();
    git(&repo, &["commit", "-q", "-am", "second, never pushed"]);
    std::fs::write(repo.join("notes.txt"), "first\nsecond\nuncommitted\n").unwrap();
    std::fs::write(repo.join("untracked.txt"), "untracked\n").unwrap();
    repo
}

#[test]
fn a_task_runs_in_a_tagged_sandbox_and_its_checkpoints_become_durable() {
    let mut h = Harness::new(Script::new([
        Turn::tool_use([ToolCall::write("hello.txt", "hi\n")]),
        Turn::text("Done."),
    ]));
    let standin = modal_ready(&mut h);
    let created = create(
        &h,
        "Add a hello.txt that says hi",
        &[
            "--backend",
            "modal",
            "--gpu",
            "a10g",
            "--memory",
            "2",
            "--timeout",
            "2h",
        ],
    );
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let session_id = created["session_id"].as_str().unwrap().to_string();
    let container_id = created["container_id"].as_str().unwrap().to_string();
    let task = finished(&h, &task_id);
    assert_eq!(task["status"], "completed", "{task:#}");

    // The sandbox: tagged, sized, the key from the named secret, the volume,
    // the agent's port as an h2 tunnel; never this machine's key.
    let sb = sandbox_of(&standin, &container_id);
    let tags = &sb["tags"];
    assert_eq!(tags["parhelia"], "1");
    assert_eq!(tags["parhelia.session"], session_id.as_str());
    assert_eq!(tags["parhelia.task"], task_id.as_str());
    assert!(
        tags["parhelia.coordinator"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
    );
    assert_eq!(sb["gpu"], "A10G", "{sb:#}");
    assert_eq!(sb["memory"], 2048, "{sb:#}");
    // `--timeout 2h` is the agent's to enforce; Modal's timeout is the backstop.
    assert_eq!(sb["timeout"], 7200 + 300, "{sb:#}");
    // What the coordinator passed as `env=` (the process also gets the
    // secrets' values, as on Modal).
    let env_keys: Vec<&str> = sb["env_arg_keys"]
        .as_array()
        .expect("env_arg_keys")
        .iter()
        .filter_map(|k| k.as_str())
        .collect();
    assert!(
        !env_keys.contains(&"ANTHROPIC_API_KEY"),
        "the local key was sent: {env_keys:?}"
    );
    assert!(env_keys.contains(&"ANTHROPIC_BASE_URL"), "{env_keys:?}");
    let secrets = sb["secret_names"].to_string();
    assert!(secrets.contains("anthropic-api-key"), "{sb:#}");
    assert!(
        !env_keys.contains(&"PARHELIA_SESSION_SECRET"),
        "the session secret travelled in plain env: {env_keys:?}"
    );

    // The work is on the volume, and every checkpoint is read back and
    // verified by the coordinator (durable).
    let volume = h.modal_volume();
    assert!(
        volume
            .join(format!(
                "sessions/{session_id}/journal/{container_id}.jsonl"
            ))
            .is_file()
    );
    let listed = h.wait_for("durable checkpoints", || {
        let list = h.json(&["checkpoint", "list", &session_id, "--json"]);
        let all = list.as_array().cloned().unwrap_or_default();
        (!all.is_empty() && all.iter().all(|c| c["durable"] == true)).then_some(all)
    });
    let last = listed.last().unwrap()["id"].as_str().unwrap().to_string();
    let shown = h.ok(&["checkpoint", "show", &last]);
    assert!(shown.contains("hello.txt"), "{shown}");
    let durable_events = h.json(&["events", "list", "--json"]);
    assert!(
        durable_events.to_string().contains("checkpoint_durable"),
        "no checkpoint_durable event"
    );
    // Uid separation (when the tests can make the session user): Claude Code
    // wrote as that user; the journal is root's and closed to it.
    if let Some((_, uid, _)) = parhelia_testkit::session_user::session_user() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let written = h.root().join(format!(
            "ctr/home/sessions/{session_id}/workspace/hello.txt"
        ));
        assert_eq!(std::fs::metadata(&written).unwrap().uid(), uid);
        let journal_dir = volume.join(format!("sessions/{session_id}/journal"));
        let meta = std::fs::metadata(&journal_dir).unwrap();
        assert_eq!((meta.uid(), meta.permissions().mode() & 0o777), (0, 0o700));
    }
    // Without `config sync` there is no seed, and no warning about one.
    assert!(
        !h.task_events(&task_id, "agent_error")
            .iter()
            .any(|e| e.to_string().contains("seed")),
        "{:#?}",
        h.task_events(&task_id, "agent_error")
    );
}

#[test]
fn the_workspace_ships_with_its_uncommitted_work_and_comes_back_as_a_branch() {
    for backend in ["modal", "local"] {
        let mut h = Harness::new(Script::new([
            Turn::tool_use([ToolCall::bash(
                "cp notes.txt seen-notes.txt && cat untracked.txt > seen-untracked.txt && git log --format=%s > seen-log.txt && echo made > made.txt",
            )]),
            Turn::text("Done."),
        ]));
        if backend == "modal" {
            modal_ready(&mut h);
        }
        let repo = user_repo(h.root());
        let head_before = git(&repo, &["rev-parse", "HEAD"]);
        let status_before = git(&repo, &["status", "--porcelain"]);
        let created = create(
            &h,
            "Look at the notes",
            &["--backend", backend, "--workspace", repo.to_str().unwrap()],
        );
        let task_id = created["task_id"].as_str().unwrap().to_string();
        let session_id = created["session_id"].as_str().unwrap().to_string();
        let task = finished(&h, &task_id);
        assert_eq!(task["status"], "completed", "{backend}: {task:#}");

        let pulled = h.json(&[
            "session",
            "pull",
            &session_id,
            "--branch",
            "from-session",
            "--repo",
            repo.to_str().unwrap(),
            "--json",
        ]);
        assert_eq!(pulled["branch"], "from-session", "{backend}: {pulled:#}");
        let show = |path: &str| git(&repo, &["show", &format!("from-session:{path}")]);
        // What the session saw: the uncommitted edit, the untracked file and
        // the unpushed commit all arrived.
        assert_eq!(
            show("seen-notes.txt"),
            "first\nsecond\nuncommitted\n",
            "{backend}"
        );
        assert_eq!(show("seen-untracked.txt"), "untracked\n", "{backend}");
        assert!(
            show("seen-log.txt").contains("second, never pushed"),
            "{backend}"
        );
        assert_eq!(show("made.txt"), "made\n", "{backend}");
        // The branch builds on the user's history.
        let log = git(&repo, &["log", "--format=%s", "from-session"]);
        assert!(log.contains("second, never pushed"), "{backend}: {log}");
        // The user's working tree, index and branch are untouched.
        assert_eq!(git(&repo, &["rev-parse", "HEAD"]), head_before, "{backend}");
        assert_eq!(
            git(&repo, &["status", "--porcelain"]),
            status_before,
            "{backend}"
        );
        assert_eq!(
            git(&repo, &["symbolic-ref", "--short", "HEAD"]).trim(),
            "main"
        );
        assert!(!repo.join("made.txt").exists(), "{backend}");
        // Again without --force: refused, coded.
        let again = h.run(&[
            "session",
            "pull",
            &session_id,
            "--branch",
            "from-session",
            "--repo",
            repo.to_str().unwrap(),
        ]);
        assert!(!again.status.success());
        assert!(
            String::from_utf8_lossy(&again.stderr).contains("E108"),
            "{}",
            String::from_utf8_lossy(&again.stderr)
        );
    }
}

/// A workspace with a few dozen files of different sizes: (its root, its regular
/// files, their bytes), counted here from the directory.
fn counted_workspace(h: &Harness) -> (PathBuf, u64, u64) {
    let repo = user_repo(h.root());
    std::fs::create_dir_all(repo.join("data")).unwrap();
    for i in 0..30 {
        std::fs::write(
            repo.join(format!("data/f{i}")),
            vec![b'x' + (i % 7) as u8; 997 * (i + 1)],
        )
        .unwrap();
    }
    fn count(dir: &Path, files: &mut u64, bytes: &mut u64) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                count(&entry.path(), files, bytes);
            } else if kind.is_file() {
                *files += 1;
                *bytes += entry.metadata().unwrap().len();
            }
        }
    }
    let (mut files, mut bytes) = (0u64, 0u64);
    count(&repo, &mut files, &mut bytes);
    (repo, files, bytes)
}

/// Checks the progress lines of `op` on `stderr` for shipping a workspace of `files`
/// regular files and `bytes` bytes to session `session_id`: a checkpoint step whose
/// last `advance` is the workspace's files and bytes, then an upload step whose last
/// `advance` is the files and bytes the stand-in's volume committed under the
/// session's store (`volume-uploads.jsonl`), then `finish` with `ok`.
fn check_shipping_progress(
    standin: &Path,
    stderr: &str,
    op: &str,
    session_id: &str,
    files: u64,
    bytes: u64,
) {
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|l: &serde_json::Value| l["type"] == "progress")
        .collect();
    assert!(lines.iter().all(|l| l["op"] == op), "{stderr}");
    assert_eq!(lines.last().unwrap()["event"], "finish", "{stderr}");
    assert_eq!(lines.last().unwrap()["ok"], true, "{stderr}");
    // The advance lines of each step, by the step's text.
    let mut steps: Vec<(String, Vec<&serde_json::Value>)> = Vec::new();
    for l in &lines {
        match l["event"].as_str() {
            Some("step") => steps.push((l["step"].as_str().unwrap().to_string(), Vec::new())),
            Some("advance") => steps.last_mut().unwrap().1.push(l),
            _ => {}
        }
    }
    let advances = |needle: &str| -> Vec<&serde_json::Value> {
        let (_, advances) = steps
            .iter()
            .find(|(step, _)| step.contains(needle))
            .unwrap_or_else(|| panic!("no step {needle:?}: {stderr}"));
        assert!(!advances.is_empty(), "no advance in {needle:?}: {stderr}");
        for pair in advances.windows(2) {
            assert!(
                pair[1]["done"].as_u64() >= pair[0]["done"].as_u64(),
                "{stderr}"
            );
            assert_eq!(pair[1]["total"], pair[0]["total"], "{stderr}");
        }
        advances.clone()
    };
    let checkpoint = advances("checkpointing the workspace");
    let last = checkpoint.last().unwrap();
    assert_eq!(
        (
            &last["files_done"],
            &last["files_total"],
            &last["done"],
            &last["total"]
        ),
        (&files.into(), &files.into(), &bytes.into(), &bytes.into()),
        "{stderr}"
    );
    // What the stand-in's volume committed under the session's store: the upload.
    let store = format!("sessions/{session_id}/checkpoints/");
    let uploads = std::fs::read_to_string(standin.join("volume-uploads.jsonl")).unwrap();
    let (mut up_files, mut up_bytes, mut batches) = (0u64, 0u64, 0u64);
    for line in uploads.lines() {
        let batch: serde_json::Value = serde_json::from_str(line).unwrap();
        let mut ours = false;
        for file in batch["files"].as_array().unwrap() {
            if file[0].as_str().unwrap().starts_with(&store) {
                ours = true;
                up_files += 1;
                up_bytes += file[1].as_u64().unwrap();
            }
        }
        batches += u64::from(ours);
    }
    // store.json, at least one layer, the seed's manifest; layers before the manifest.
    assert!(up_files >= 3 && batches >= 2, "{uploads}");
    let upload = advances("uploading the workspace checkpoint");
    let last = upload.last().unwrap();
    assert_eq!(
        (
            &last["files_done"],
            &last["files_total"],
            &last["done"],
            &last["total"]
        ),
        (
            &up_files.into(),
            &up_files.into(),
            &up_bytes.into(),
            &up_bytes.into()
        ),
        "{stderr}\n{uploads}"
    );
    // The checkpoint came before its upload.
    let position = |needle: &str| steps.iter().position(|(s, _)| s.contains(needle)).unwrap();
    assert!(
        position("checkpointing") < position("uploading"),
        "{stderr}"
    );
}

/// `task create --sync --backend modal --workspace … --progress json`: the two
/// transfers that ship the workspace reach the CLI as steps with counted `advance`
/// lines: the seed checkpoint's files read, ending at the workspace's regular files
/// and their bytes (counted here from the directory), then its upload, ending at the
/// files and bytes the stand-in's volume committed under the session's store. (An
/// async create returns once the task is recorded and placed, before its launch ships
/// anything: only `--sync` follows the launch.)
#[test]
fn task_create_on_modal_reports_the_workspace_checkpoint_and_its_upload() {
    let mut h = Harness::new(Script::new([Turn::text("Nothing to do.")]));
    let standin = modal_ready(&mut h);
    let (repo, files, bytes) = counted_workspace(&h);
    let out = h.run(&[
        "task",
        "create",
        "Look around",
        "--sync",
        "--backend",
        "modal",
        "--workspace",
        repo.to_str().unwrap(),
        "--progress",
        "json",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    // `--sync --json` prints the ended task.
    let task: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let session_id = task["session_id"].as_str().unwrap();
    check_shipping_progress(&standin, &stderr, "task_create", session_id, files, bytes);
    assert_eq!(task["status"], "completed", "{task:#}");
}

/// `task dispatch` of a held Modal task with a workspace reports the same two
/// transfers (op `task_dispatch`, each step naming the task); a dispatch that
/// moves no workspace prints no progress at all.
#[test]
fn task_dispatch_on_modal_reports_the_workspace_checkpoint_and_its_upload() {
    let mut h = Harness::new(Script::new([Turn::text("Nothing to do.")]));
    let standin = modal_ready(&mut h);
    let (repo, files, bytes) = counted_workspace(&h);
    let held = create(
        &h,
        "Look around",
        &[
            "--backend",
            "modal",
            "--workspace",
            repo.to_str().unwrap(),
            "--no-dispatch",
        ],
    );
    let task_id = held["task_id"].as_str().unwrap();
    let out = h.run(&["task", "dispatch", task_id, "--progress", "json", "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let dispatched: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        dispatched["dispatched"][0]["task_id"], task_id,
        "{dispatched:#}"
    );
    let task = h.json(&["task", "show", task_id, "--json"]);
    let session_id = task["session_id"].as_str().unwrap();
    check_shipping_progress(&standin, &stderr, "task_dispatch", session_id, files, bytes);
    assert!(
        stderr.contains(&format!("task {task_id}: checkpointing")),
        "{stderr}"
    );
    let task = finished(&h, task_id);
    assert_eq!(task["status"], "completed", "{task:#}");
    // Nothing to dispatch: no progress lines.
    let out = h.run(&["task", "dispatch", "--progress", "json"]);
    assert!(out.status.success());
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("\"type\":\"progress\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_local_session_resumes_on_modal_with_its_conversation() {
    let mut h = Harness::new(Script::new([
        Turn::tool_use([ToolCall::write("local.txt", "written locally\n")]),
        Turn::text("First part done."),
        // After the move to Modal:
        Turn::tool_use([ToolCall::bash("cat local.txt > seen-on-modal.txt")]),
        Turn::text("Continued on Modal."),
        // And back:
        Turn::tool_use([ToolCall::bash("cat seen-on-modal.txt > back-home.txt")]),
        Turn::text("Home again."),
    ]));
    modal_ready(&mut h);
    let created = create(&h, "Write local.txt", &[]);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let session_id = created["session_id"].as_str().unwrap().to_string();
    assert_eq!(finished(&h, &task_id)["status"], "completed");

    let requests_before = h.stand_in.requests().len();
    let resumed = h.json(&[
        "resume",
        &session_id,
        "--backend",
        "modal",
        "-m",
        "Now continue on Modal.",
        "--json",
    ]);
    let container_id = resumed["container_id"].as_str().unwrap().to_string();
    let task = h.wait_task(&task_id, |t| {
        t["status"] == "completed" && t["container_id"] == container_id.as_str()
    });
    assert_eq!(task["status"], "completed", "{task:#}");

    // The model saw the local conversation in the first request on Modal.
    let on_modal: Vec<_> = h.stand_in.requests()[requests_before..]
        .iter()
        .filter(|r| r.kind == RequestKind::Turn)
        .cloned()
        .collect();
    let first = on_modal
        .first()
        .expect("the resumed session called the model");
    assert!(
        first.message_count > 3,
        "the resumed request carried only {} messages",
        first.message_count
    );
    assert_eq!(
        first.last_user_text.as_deref().map(str::trim),
        Some("Now continue on Modal.")
    );
    // The workspace came along: the Modal session read the local file.
    let shown = h.json(&["session", "show", &session_id, "--json"]);
    let workspace = PathBuf::from(shown["workspace_dir"].as_str().unwrap());
    assert_eq!(
        std::fs::read_to_string(workspace.join("seen-on-modal.txt")).unwrap(),
        "written locally\n"
    );
    assert!(
        workspace.starts_with(h.root().join("ctr")),
        "the session did not move: {workspace:?}"
    );
    let restored = h.task_events(&task_id, "checkpoint_restored");
    assert_eq!(restored.len(), 1, "{restored:#?}");

    // And back from Modal to the local backend, conversation and all.
    let requests_before = h.stand_in.requests().len();
    let back = h.json(&[
        "resume",
        &session_id,
        "--backend",
        "local",
        "-m",
        "Back home now.",
        "--json",
    ]);
    let container_id = back["container_id"].as_str().unwrap().to_string();
    let task = h.wait_task(&task_id, |t| {
        t["status"] == "completed" && t["container_id"] == container_id.as_str()
    });
    assert_eq!(task["backend"], "local", "{task:#}");
    let first = h.stand_in.requests()[requests_before..]
        .iter()
        .find(|r| r.kind == RequestKind::Turn)
        .cloned()
        .expect("the session called the model again");
    assert!(first.message_count > 7, "{} messages", first.message_count);
    let shown = h.json(&["session", "show", &session_id, "--json"]);
    let workspace = PathBuf::from(shown["workspace_dir"].as_str().unwrap());
    assert!(workspace.starts_with(h.state()), "{workspace:?}");
    assert_eq!(
        std::fs::read_to_string(workspace.join("back-home.txt")).unwrap(),
        "written locally\n"
    );
}

#[test]
fn config_sync_uploads_what_changed_and_never_credentials() {
    let mut h = Harness::new(Script::new([
        Turn::text("Hi."),
        Turn::text("Hi again."),
        Turn::text("Hi locally."),
    ]));
    // The user's home, for the CLI and for the coordinator (which `modal setup` starts,
    // and whose home local sessions take the user's setup from).
    let home = h.root().join("user-home");
    std::fs::create_dir_all(&home).unwrap();
    h.set_env("HOME", home.to_str().unwrap());
    modal_ready(&mut h);
    let claude = home.join(".claude");
    std::fs::create_dir_all(claude.join("commands")).unwrap();
    std::fs::write(
        claude.join(".credentials.json"),
        r#"{"claudeAiOauth": {"accessToken": "sk-ant-oat01-CREDENTIAL-SECRET"}}"#,
    )
    .unwrap();
    std::fs::write(
        claude.join("settings.json"),
        r#"{"model": "opus", "env": {"ANTHROPIC_API_KEY": "sk-ant-api03-SETTINGS-SECRET", "FOO": "bar"}}"#,
    )
    .unwrap();
    std::fs::write(claude.join("CLAUDE.md"), "Be brief.\n").unwrap();
    std::fs::write(claude.join("commands/review.md"), "Review it.\n").unwrap();
    std::fs::write(
        claude.join("history.jsonl"),
        "{\"display\": \"HISTORY-SECRET\"}\n",
    )
    .unwrap();
    std::fs::create_dir_all(claude.join("projects/x")).unwrap();
    std::fs::write(claude.join("projects/x/t.jsonl"), "PROJECT-SECRET\n").unwrap();
    std::fs::write(
        home.join(".claude.json"),
        r#"{"oauthAccount": {"emailAddress": "ACCOUNT-SECRET@example.com"}, "userID": "USERID-SECRET",
            "mcpServers": {"gh": {"command": "gh-mcp", "env": {"GITHUB_TOKEN": "ghp_MCP-SECRET"}}}}"#,
    )
    .unwrap();
    let volume = h.modal_volume();

    let dry = h.json(&["config", "sync", "--dry-run", "--json"]);
    assert!(dry["files"].to_string().contains("CLAUDE.md"), "{dry:#}");
    assert!(
        !volume.join("config").exists(),
        "a dry run wrote to the volume"
    );

    let first = h.json(&["config", "sync", "--json"]);
    for expected in [
        "settings.json",
        "CLAUDE.md",
        "commands/review.md",
        "mcp-servers.json",
    ] {
        assert!(
            volume.join("config/claude").join(expected).is_file(),
            "{expected} missing: {first:#}"
        );
    }
    assert!(volume.join("config/manifest.json").is_file());
    // Not one secret byte reached the volume.
    for entry in walk(&volume.join("config")) {
        let bytes = std::fs::read(&entry).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        for secret in [
            "CREDENTIAL-SECRET",
            "SETTINGS-SECRET",
            "HISTORY-SECRET",
            "PROJECT-SECRET",
            "ACCOUNT-SECRET",
            "USERID-SECRET",
            "MCP-SECRET",
        ] {
            assert!(
                !text.contains(secret),
                "{secret} leaked into {}",
                entry.display()
            );
        }
    }
    let withheld = first["withheld"].to_string();
    assert!(withheld.contains(".credentials.json"), "{first:#}");

    // Unchanged: nothing to upload. One change: just that file.
    let second = h.json(&["config", "sync", "--json"]);
    assert_eq!(second["upload"], serde_json::json!([]), "{second:#}");
    std::fs::write(claude.join("CLAUDE.md"), "Be very brief.\n").unwrap();
    let third = h.json(&["config", "sync", "--json"]);
    assert_eq!(
        third["upload"],
        serde_json::json!(["CLAUDE.md"]),
        "{third:#}"
    );
    assert_eq!(
        std::fs::read_to_string(volume.join("config/claude/CLAUDE.md")).unwrap(),
        "Be very brief.\n"
    );

    // A Modal session starts with it: Claude Code's config dir in the
    // sandbox holds the synced files and the MCP servers (without secrets).
    let created = create(&h, "Say hi", &["--backend", "modal"]);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let container_id = created["container_id"].as_str().unwrap().to_string();
    assert_eq!(finished(&h, &task_id)["status"], "completed");
    let config_dir = h
        .root()
        .join(format!("ctr/home/containers/{container_id}/claude-config"));
    assert_eq!(
        std::fs::read_to_string(config_dir.join("CLAUDE.md")).unwrap(),
        "Be very brief.\n"
    );
    assert!(config_dir.join("commands/review.md").is_file());
    let claude_json = std::fs::read_to_string(config_dir.join(".claude.json")).unwrap();
    assert!(claude_json.contains("gh-mcp"), "{claude_json}");
    assert!(!claude_json.contains("MCP-SECRET"), "{claude_json}");
    assert!(!config_dir.join(".credentials.json").exists());

    // `--no-user-config`: a Modal session without any of it.
    let created = create(&h, "Say hi", &["--backend", "modal", "--no-user-config"]);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    // It may wait for a worker slot: its container is known once it has run.
    let task = finished(&h, &task_id);
    assert_eq!(task["status"], "completed", "{task:#}");
    let container_id = task["container_id"].as_str().unwrap().to_string();
    let config_dir = h
        .root()
        .join(format!("ctr/home/containers/{container_id}/claude-config"));
    assert!(!config_dir.join("CLAUDE.md").exists());
    assert!(!config_dir.join("commands").exists());
    let claude_json = std::fs::read_to_string(config_dir.join(".claude.json")).unwrap();
    assert!(!claude_json.contains("gh-mcp"), "{claude_json}");

    // The same promise on the local backend, without a `config sync`: the planner's
    // output of the home's setup as it is now, and the same things withheld.
    let created = create(&h, "Say hi", &[]);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    // It may wait for a worker slot: its container is known once it has run.
    let task = finished(&h, &task_id);
    assert_eq!(task["status"], "completed", "{task:#}");
    let container_id = task["container_id"].as_str().unwrap().to_string();
    let config_dir = h
        .state()
        .join(format!("containers/{container_id}/claude-config"));
    assert_eq!(
        std::fs::read_to_string(config_dir.join("CLAUDE.md")).unwrap(),
        "Be very brief.\n"
    );
    assert!(config_dir.join("commands/review.md").is_file());
    let claude_json = std::fs::read_to_string(config_dir.join(".claude.json")).unwrap();
    assert!(claude_json.contains("gh-mcp"), "{claude_json}");
    for secret in ["MCP-SECRET", "ACCOUNT-SECRET", "USERID-SECRET"] {
        assert!(!claude_json.contains(secret), "{claude_json}");
    }
    let settings = std::fs::read_to_string(config_dir.join("settings.json")).unwrap();
    assert!(!settings.contains("SETTINGS-SECRET"), "{settings}");
    assert!(settings.contains("\"FOO\""), "{settings}");
    assert!(!config_dir.join(".credentials.json").exists());
    assert!(!config_dir.join("history.jsonl").exists());
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn modal_setup_health_check_and_init_volume_report_what_they_find() {
    let mut h = Harness::new(Script::new([Turn::text("unused")]));
    let standin = h.use_modal_stand_in();

    // No secret yet: setup stops at that step with its code.
    std::fs::remove_file(standin.join("secrets/anthropic-api-key.json")).unwrap();
    let out = h.run(&["modal", "setup"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("E405"), "{err}");
    std::fs::write(
        standin.join("secrets/anthropic-api-key.json"),
        r#"{"ANTHROPIC_API_KEY": "test-key-not-a-secret"}"#,
    )
    .unwrap();

    let setup = h.json(&["modal", "setup", "--json"]);
    assert_eq!(setup["ok"], true, "{setup:#}");
    let steps: Vec<&str> = setup["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        ["sdk", "token", "app", "secret", "volume", "agent", "image"]
    );

    let init = h.json(&["modal", "init-volume", "--json"]);
    assert_eq!(init["volume"], "parhelia-data", "{init:#}");
    for dir in ["sessions", "config", "images"] {
        assert!(h.modal_volume().join(dir).join("README").is_file(), "{dir}");
    }

    let health = h.json(&["modal", "health-check", "--json"]);
    assert_eq!(health["status"], "ok", "{health:#}");
    assert_eq!(health["volume_mounted"], true);
    assert_eq!(health["claude_installed"], true);
    assert_eq!(health["anthropic_key_set"], true);
    assert!(
        health["claude_version"]
            .as_str()
            .is_some_and(|v| v.contains("Claude Code")),
        "{health:#}"
    );
}

#[test]
fn without_modal_credentials_a_modal_task_is_refused_and_nothing_is_recorded() {
    let mut h = Harness::new(Script::new([Turn::text("unused")]));
    h.use_modal_stand_in();
    h.set_env("MODAL_TOKEN_ID", "");
    h.set_env("MODAL_TOKEN_SECRET", "");
    h.set_env(
        "MODAL_CONFIG_PATH",
        h.root().join("no-modal.toml").to_str().unwrap(),
    );
    let out = h.run(&["task", "create", "x", "--backend", "modal"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("E403"), "{err}");
    assert_eq!(h.json(&["task", "list", "--json"]), serde_json::json!([]));
}

#[test]
fn a_preempted_sandbox_is_interrupted_and_resumes_with_its_work() {
    let mut h = Harness::new(Script::new([
        Turn::tool_use([ToolCall::write("before.txt", "before\n")]),
        // Risky, so checkpointed first; it then writes more and hangs, as a
        // long GPU job would, until the sandbox is preempted.
        Turn::tool_use([ToolCall::bash(
            "rm -rf scratch; echo late > late.txt; tail -f /dev/null",
        )]),
        // After the resume:
        Turn::tool_use([ToolCall::bash("cat late.txt > seen-late.txt")]),
        Turn::text("Resumed after preemption."),
    ]));
    let standin = modal_ready(&mut h);
    let created = create(
        &h,
        "Train the model",
        &["--backend", "modal", "--gpu", "H100"],
    );
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let session_id = created["session_id"].as_str().unwrap().to_string();
    let container_id = created["container_id"].as_str().unwrap().to_string();
    h.wait_for("the command running", || {
        h.task_events(&task_id, "checkpoint_created")
            .into_iter()
            .find(|e| e["kind"]["checkpoint_created"]["trigger"] == "pre_tool")
    });
    h.wait_for("late.txt written", || {
        let ws = h
            .root()
            .join(format!("ctr/home/sessions/{session_id}/workspace/late.txt"));
        ws.exists().then_some(())
    });

    // Modal preempts the sandbox: SIGTERM to everything in it.
    let sb = sandbox_of(&standin, &container_id);
    let pgid = sb["pid"].as_i64().unwrap();
    let status = Command::new("kill")
        .args(["-TERM", "--", &format!("-{pgid}")])
        .status()
        .unwrap();
    assert!(status.success());

    // The agent checkpointed on SIGTERM; the session is interrupted, resumable.
    let task = h.wait_task(&task_id, |t| t["status"] == "interrupted");
    assert_eq!(task["status"], "interrupted", "{task:#}");
    let sigterm = h.wait_for("the sigterm checkpoint", || {
        h.task_events(&task_id, "checkpoint_created")
            .into_iter()
            .find(|e| e["kind"]["checkpoint_created"]["trigger"] == "sigterm")
    });
    let sigterm_id = sigterm["kind"]["checkpoint_created"]["checkpoint_id"]
        .as_str()
        .unwrap()
        .to_string();

    // `session recover` names that checkpoint and the resume to run (on Modal as
    // locally); the resume (on Modal again) restores the work done after the last turn.
    let recover = h.json(&["session", "recover", &session_id, "--json"]);
    assert_eq!(recover["resumable"], true, "{recover:#}");
    let shown = h.ok(&["session", "recover", &session_id]);
    assert!(
        shown.contains(&sigterm_id),
        "recover names {sigterm_id}:\n{shown}"
    );
    assert!(
        shown.contains(&format!("parhelia resume {session_id}")),
        "{shown}"
    );
    let resumed = h.json(&["resume", &session_id, "--json"]);
    assert_eq!(resumed["checkpoint_id"], sigterm_id.as_str());
    let new_container = resumed["container_id"].as_str().unwrap().to_string();
    let task = h.wait_task(&task_id, |t| {
        t["status"] == "completed" && t["container_id"] == new_container.as_str()
    });
    assert_eq!(task["status"], "completed", "{task:#}");
    let ws = h
        .root()
        .join(format!("ctr/home/sessions/{session_id}/workspace"));
    assert_eq!(
        std::fs::read_to_string(ws.join("seen-late.txt")).unwrap(),
        "late\n"
    );
}

#[test]
fn a_finished_sandboxs_compute_is_reconciled_with_modals_own_cost() {
    let mut h = Harness::new(Script::new([
        Turn::tool_use([ToolCall::write("hello.txt", "hi\n")]),
        Turn::text("Done."),
    ]));
    // Before the first command, so the coordinator starts with them: a pass
    // every second as soon as a sandbox ended; the stand-in bills $0.01 per
    // second and reports it a second after the sandbox ended (until then
    // `cost` is null: the coordinator retries).
    h.set_env("PARHELIA_MODAL_USAGE_POLL_SECONDS", "1");
    h.set_env("PARHELIA_MODAL_USAGE_SETTLE_SECONDS", "0");
    h.set_env("PARHELIA_MODAL_STANDIN_USD_PER_SECOND", "0.01");
    h.set_env("PARHELIA_MODAL_STANDIN_STATS_DELAY_SECONDS", "1");
    let standin = modal_ready(&mut h);
    let created = create(&h, "Add a hello.txt that says hi", &["--backend", "modal"]);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let container_id = created["container_id"].as_str().unwrap().to_string();
    let task = finished(&h, &task_id);
    assert_eq!(task["status"], "completed", "{task:#}");

    let event = h.wait_for("a usage_reconciled event", || {
        let events = h.json(&["events", "list", "--json"]);
        events.as_array().and_then(|all| {
            all.iter()
                .find(|e| {
                    e["type"] == "usage_reconciled" && e["container_id"] == container_id.as_str()
                })
                .cloned()
        })
    });

    // What the stand-in billed: the sandbox's wall clock at $0.01/s.
    let sb = sandbox_of(&standin, &container_id);
    let sandbox_id = sb["sandbox_id"].as_str().unwrap().to_string();
    let exit: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            standin
                .join("sandboxes")
                .join(&sandbox_id)
                .join("exit.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let modal_cost =
        (exit["ended_at"].as_f64().unwrap() - sb["created_at"].as_f64().unwrap()) * 0.01;
    assert!(modal_cost > 0.0);
    assert_eq!(
        event["payload"]["sandbox_id"],
        sandbox_id.as_str(),
        "{event:#}"
    );
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    // The stand-in may date the end from the process's disappearance a few
    // milliseconds before it writes exit.json: equal within 5%.
    let reported = event["payload"]["modal_cost_usd"].as_f64().unwrap();
    assert!(
        (reported - modal_cost).abs() <= 0.05 * modal_cost,
        "{event:#} vs {modal_cost}"
    );
    // From here on, the figure Modal reported is the one the ledger must hold.
    let modal_cost = reported;

    // The ledger: heartbeat charges plus exactly one reconciliation row sum
    // to Modal's figure.
    let db = h.db();
    let (remote_id, reconciled_at): (Option<String>, Option<i64>) = db
        .query_row(
            "SELECT remote_id, usage_reconciled_at_ms FROM containers WHERE id = ?1",
            [&container_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(remote_id.as_deref(), Some(sandbox_id.as_str()));
    assert!(reconciled_at.is_some());
    let mut stmt = db
        .prepare(
            "SELECT amount_usd, seconds, details FROM ledger
             WHERE container_id = ?1 AND kind = 'compute' ORDER BY id",
        )
        .unwrap();
    let rows: Vec<(f64, f64, serde_json::Value)> = stmt
        .query_map([&container_id], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                serde_json::from_str(&r.get::<_, String>(2)?).unwrap(),
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let reconciliations: Vec<_> = rows
        .iter()
        .filter(|(_, _, d)| d["reconciled_with"] == "modal")
        .collect();
    assert_eq!(reconciliations.len(), 1, "{rows:#?}");
    let (amount, seconds, details) = reconciliations[0];
    assert_eq!(*seconds, 0.0);
    assert_eq!(details["sandbox_id"], sandbox_id.as_str());
    let heartbeats: f64 = rows
        .iter()
        .filter(|(_, _, d)| d["reconciled_with"].is_null())
        .map(|(a, _, _)| a)
        .sum();
    assert!(heartbeats > 0.0, "no heartbeat was charged: {rows:#?}");
    assert!(
        close(details["charged_usd"].as_f64().unwrap(), heartbeats),
        "{details:#} vs {heartbeats}"
    );
    assert!(close(*amount, modal_cost - heartbeats), "{rows:#?}");
    let total: f64 = rows.iter().map(|(a, _, _)| a).sum();
    assert!(close(total, modal_cost), "{total} vs {modal_cost}");

    // `budget show` counts the task's compute at Modal's figure.
    let budget = h.json(&["budget", "show", "--json"]);
    let spend = budget["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task_id"] == task_id.as_str())
        .unwrap_or_else(|| panic!("{budget:#}"));
    assert!(
        close(spend["compute_usd"].as_f64().unwrap(), modal_cost),
        "{spend:#} vs {modal_cost}"
    );
}

/// Damage on the volume is seen although the local mirror holds an intact
/// copy, and `checkpoint repair` writes the repair back to the volume itself
/// (issue 12: repair from "the local mirror of a Modal store").
#[test]
fn damage_on_the_volume_is_verified_there_and_repaired_back_onto_it() {
    let mut h = Harness::new(Script::new([
        Turn::tool_use([ToolCall::write(
            "notes.txt",
            "a line of notes\n".repeat(200),
        )]),
        Turn::text("Done."),
    ]));
    modal_ready(&mut h);
    let created = create(&h, "Write notes", &["--backend", "modal"]);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let session_id = created["session_id"].as_str().unwrap().to_string();
    let task = finished(&h, &task_id);
    assert_eq!(task["status"], "completed", "{task:#}");
    h.wait_for("durable checkpoints", || {
        let list = h.json(&["checkpoint", "list", &session_id, "--json"]);
        let all = list.as_array().cloned().unwrap_or_default();
        (!all.is_empty() && all.iter().all(|c| c["durable"] == true)).then_some(())
    });
    let clean = h.ok(&["checkpoint", "verify", "--session", &session_id]);
    assert!(clean.contains("every checkpoint verifies"), "{clean}");

    // The volume's biggest layer, damaged where only the volume has it.
    let layers = h
        .modal_volume()
        .join(format!("sessions/{session_id}/checkpoints/layers"));
    let layer = std::fs::read_dir(&layers)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a layer on the volume");
    let intact = std::fs::read(&layer).unwrap();
    let mut damaged = intact.clone();
    let at = damaged.len() / 2;
    damaged[at] ^= 0x20;
    std::fs::write(&layer, &damaged).unwrap();

    let out = h.run(&["checkpoint", "verify", "--session", &session_id]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the volume's damage went unseen");
    assert!(stderr.contains("E620"), "{stderr}");

    let repaired = h.ok(&["checkpoint", "repair", "--session", &session_id]);
    assert_eq!(
        std::fs::read(&layer).unwrap(),
        intact,
        "the volume still holds the damaged layer:\n{repaired}"
    );
    let verified = h.ok(&["checkpoint", "verify", "--session", &session_id]);
    assert!(verified.contains("every checkpoint verifies"), "{verified}");
    // Verify and repair leave no copy of the store behind.
    let scratch = h.state().join("modal/tmp");
    let left: Vec<_> = std::fs::read_dir(&scratch)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("store-"))
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Issue 12: a rolled-back database (an older copy put back) lost a Modal task that
/// ended; its spec and journal on the volume prove it, and the coordinator rebuilds it
/// from them (`database_rebuilt`): outcome, result and spend come back.
#[test]
fn an_ended_modal_task_the_rollback_lost_is_rebuilt_from_the_volume() {
    let mut h = Harness::new(Script::new([
        Turn::text("Modal done.").with_usage(1000, 100)
    ]));
    modal_ready(&mut h);
    h.ok(&["reconciler", "run", "--once"]);
    let older = h.snapshot_db("older.db");

    let created = create(&h, "Say done", &["--backend", "modal"]);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let container_id = created["container_id"].as_str().unwrap().to_string();
    let task = finished(&h, &task_id);
    assert_eq!(task["status"], "completed", "{task:#}");
    let cost = task["model_usd"].as_f64().unwrap();
    assert!(cost > 0.0, "{task:#}");

    h.ok(&["coordinator", "stop"]);
    h.put_back_db(&older);
    assert!(!h.run(&["task", "show", &task_id]).status.success());

    h.ok(&["reconciler", "run", "--once"]);
    let details = h.wait_for("the rebuild from the volume", || {
        h.db()
            .query_row(
                "SELECT details FROM coordinator_events WHERE type = 'database_rebuilt'",
                [],
                |r| r.get::<_, String>(0),
            )
            .ok()
    });
    let details: serde_json::Value = serde_json::from_str(&details).unwrap();
    assert_eq!(
        details["rebuilt_from_specs"],
        serde_json::json!([container_id.clone()]),
        "{details:#}"
    );
    // The next passes settle it from its journal on the volume.
    let task = h.wait_for("the rebuilt task settled", || {
        let _ = h.run(&["reconciler", "run", "--once"]);
        let task = h.json(&["task", "show", &task_id, "--json"]);
        (task["status"] != "running").then_some(task)
    });
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(task["backend"], "modal", "{task:#}");
    assert_eq!(task["result"], "Modal done.", "{task:#}");
    assert!(
        (task["model_usd"].as_f64().unwrap() - cost).abs() < 1e-9,
        "{task:#}"
    );
}

/// Issue 18: every session command works on a Modal session as on a local one. The
/// CLI asks the coordinator where the agent answers (`AgentEndpoint`: for Modal, the
/// sandbox's tunnel; it used to look for a local `agent.json` no sandbox writes and say
/// the session was not running): `session logs -f` follows the session live from the
/// start, `session send` reaches Claude Code, `session logs` shows its screen, a
/// read-only `session attach` shows it and ignores keys, an attach whose tunnel
/// connection is reset under it reconnects and what is typed afterwards reaches the
/// pane, `session kill` ends it (and the follower with it), and attach is then refused
/// with the resume to run.
#[test]
fn send_logs_attach_and_kill_work_on_a_modal_session() {
    use crate::attach::{Terminal, wait_until};
    let mut h = Harness::new(Script::new([
        Turn::text("hello from the sandbox"),
        Turn::text("got the follow-up"),
    ]));
    modal_ready(&mut h);
    let created = create(&h, "Say hello", &["--backend", "modal", "--interactive"]);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let session_id = created["session_id"].as_str().unwrap().to_string();
    h.wait_for("the first turn", || {
        (!h.task_events(&task_id, "turn_result").is_empty()).then_some(())
    });

    // `session logs -f`, started before the message: it prints the turn as it happens.
    let followed = h.root().join("logs-f.out");
    let mut follower = h
        .command(&["session", "logs", &session_id, "-f"])
        .stdout(std::fs::File::create(&followed).unwrap())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let read_followed = || std::fs::read_to_string(&followed).unwrap_or_default();
    wait_until("the follower's history", || {
        read_followed().contains("hello from the sandbox")
    });

    h.ok(&["session", "send", &session_id, "And one more thing"]);
    h.wait_for("the second turn", || {
        (h.task_events(&task_id, "turn_result").len() >= 2).then_some(())
    });
    assert!(
        h.stand_in
            .requests()
            .iter()
            .any(|r| r.last_user_text.as_deref() == Some("And one more thing")),
        "the message reached the model"
    );
    wait_until("the follow-up followed live", || {
        read_followed().contains("got the follow-up")
    });
    assert!(
        follower.try_wait().unwrap().is_none(),
        "logs -f keeps following a running session: {}",
        read_followed()
    );

    let logs = h.ok(&["session", "logs", &session_id, "-n", "50"]);
    assert!(logs.contains("──── screen ────"), "{logs}");
    assert!(logs.contains("got the follow-up"), "{logs}");

    // The agent is reached through the sandbox's tunnel, which is TLS (the stand-in's
    // tunnels are, under a CA of their own the harness makes the coordinator trust).
    let endpoint: String = h
        .db()
        .query_row(
            "SELECT endpoint FROM containers WHERE task_id = ?1 AND endpoint IS NOT NULL",
            [&task_id],
            |r| r.get(0),
        )
        .unwrap();
    assert!(endpoint.starts_with("https://127.0.0.1:"), "{endpoint}");

    let mut watcher = Terminal::attach(&h, &session_id, &["--read-only"]);
    // The pane as tmux draws it (words are separated by cursor moves).
    wait_until("the read-only screen", || {
        watcher.output_text().contains("follow-up")
    });
    watcher.type_bytes(b"READONLY");
    watcher.type_bytes(b"\x02d");
    assert!(watcher.wait_exit().success(), "{}", watcher.output_text());
    drop(watcher);
    let logs = h.ok(&["session", "logs", &session_id, "-n", "50"]);
    assert!(!logs.contains("READONLY"), "{logs}");

    // Attach over the tunnel; the connection is reset under it (a tunnel restarting);
    // it comes back and keys typed then reach the pane.
    let mut terminal = Terminal::attach(&h, &session_id, &[]);
    let cooked = terminal.cooked();
    wait_until("the screen over the tunnel", || {
        terminal.output_text().contains("follow-up") && terminal.is_raw(cooked)
    });
    let reset = parhelia_testkit::procs::reset_tcp_connections_of(terminal.pid());
    assert!(
        !reset.is_empty(),
        "the attach holds a TCP connection to the tunnel"
    );
    terminal.wait_reattached(1, "reset tunnel connection");
    assert!(terminal.is_raw(cooked), "the terminal stayed raw");
    // The new client's first screen (the old one is gone, so keys go to the new one).
    std::thread::sleep(std::time::Duration::from_millis(200));
    terminal.type_bytes(b"TYPEDAFTERRESET");
    wait_until("keys typed after the reconnection in the pane", || {
        h.ok(&["session", "logs", &session_id, "-n", "50"])
            .contains("TYPEDAFTERRESET")
    });
    terminal.type_bytes(b"\x02d");
    let status = terminal.wait_exit();
    assert!(status.success(), "{status}: {}", terminal.output_text());
    assert_eq!(terminal.cooked(), cooked, "the terminal is restored");
    drop(terminal);

    h.ok(&["session", "kill", &session_id]);
    let task = finished(&h, &task_id);
    assert_eq!(task["status"], "cancelled", "{task:#}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let ended = loop {
        if let Some(status) = follower.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "logs -f did not end with the session: {}",
            read_followed()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(ended.success(), "{ended}: {}", read_followed());
    assert!(
        read_followed().contains("finished"),
        "the follower printed the end: {}",
        read_followed()
    );
    let refused = h.run(&["session", "attach", &session_id]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("error[E503]"), "{stderr}");
    assert!(stderr.contains("parhelia resume"), "{stderr}");
}
