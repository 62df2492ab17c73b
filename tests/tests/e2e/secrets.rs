//! `task create --secret NAME` (issue 18): a named environment variable of the
//! user's shell reaches a local session (Claude Code's Bash sees it), under
//! bubblewrap and without it, and its value is nowhere Parhelia writes: not in
//! the checkpoints (their restored trees, manifests, the store's files), the
//! events, the logs, the database or the agent's spec. On Modal the names are
//! Modal secrets attached to the sandbox (the stand-in records them), after
//! the Anthropic key's, which must hold `ANTHROPIC_API_KEY`; `--region` reaches the
//! sandbox, and a `--gpu` list falls back in order when Modal has no capacity.

use std::path::{Path, PathBuf};

use parhelia_testkit::harness::Harness;
use parhelia_testkit::{Script, ToolCall, Turn};

/// A value that appears nowhere by chance (and is not hex, so no hash of
/// anything can contain it).
const TOKEN: &str = "ghp_parheliaSecretValue_zQxWvK7rLmN2pS9tY4uB";

fn sha256_hex(text: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// The session's Bash writes the token's hash and length (never the token).
fn hashing_script() -> Script {
    Script::new([
        Turn::tool_use([ToolCall::bash(
            "printf %s \"$GITHUB_TOKEN\" | sha256sum | cut -c1-64 > token.sha; printf %s \"${#GITHUB_TOKEN}\" > token.len; echo written",
        )]),
        Turn::text("Recorded the token's hash."),
    ])
}

/// Every regular file under `dir` (not following links).
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            files_under(&entry.path(), out);
        } else if kind.is_file() {
            out.push(entry.path());
        }
    }
}

fn holding(files: &[PathBuf], needle: &[u8]) -> Vec<PathBuf> {
    files
        .iter()
        .filter(|f| {
            std::fs::read(f)
                .map(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        })
        .cloned()
        .collect()
}

/// Every checkpoint store under the state directory, each checkpoint's trees
/// restored into `into`.
fn restore_every_checkpoint(state: &Path, into: &Path) -> usize {
    let mut files = Vec::new();
    files_under(state, &mut files);
    let mut stores: Vec<PathBuf> = files
        .iter()
        .filter(|f| f.file_name().is_some_and(|n| n == "store.json"))
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect();
    stores.sort();
    stores.dedup();
    let mut restored = 0;
    for (i, root) in stores.iter().enumerate() {
        let store = parhelia_checkpoint::Store::open(root).unwrap();
        for summary in store.list().unwrap() {
            let manifest = store.load(&summary.id).unwrap();
            for tree in ["workspace", "conversation"] {
                if manifest.tree(tree).is_some() {
                    let dest = into.join(format!("{i}-{}-{tree}", summary.id.0));
                    store.restore_tree(&summary.id, tree, &dest).unwrap();
                    restored += 1;
                }
            }
        }
    }
    restored
}

fn local_secret_reaches_the_session_and_nothing_keeps_it(isolation: &str) {
    let mut h = Harness::new(hashing_script());
    h.set_env("PARHELIA_ISOLATION", isolation);
    h.set_env("GITHUB_TOKEN", TOKEN);

    // The dry run names it, never its value.
    let dry = h.ok(&[
        "task",
        "create",
        "x",
        "--secret",
        "GITHUB_TOKEN",
        "--dry-run",
    ]);
    assert!(dry.contains(&format!("isolation  {isolation}")), "{dry}");
    assert!(dry.contains("secrets    GITHUB_TOKEN"), "{dry}");
    assert!(!dry.contains(TOKEN), "{dry}");
    let plan = h.json(&[
        "task",
        "create",
        "x",
        "--secret",
        "GITHUB_TOKEN",
        "--dry-run",
        "--json",
    ]);
    assert_eq!(plan["secrets"], serde_json::json!(["GITHUB_TOKEN"]));
    let estimate = h.ok(&[
        "task",
        "create",
        "x",
        "--secret",
        "GITHUB_TOKEN",
        "--estimate-only",
    ]);
    assert!(estimate.contains("GITHUB_TOKEN"), "{estimate}");
    assert!(!estimate.contains(TOKEN), "{estimate}");

    h.ok(&[
        "task",
        "create",
        "Record the token's hash",
        "--secret",
        "GITHUB_TOKEN",
        "--sync",
    ]);
    let task = h.json(&["task", "list", "--json"])[0].clone();
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(task["secrets"], serde_json::json!(["GITHUB_TOKEN"]));
    let session_id = task["session_id"].as_str().unwrap();
    let task_id = task["id"].as_str().unwrap();

    // It reached Claude Code's Bash: the hash and length of the value.
    let workspace = h
        .state()
        .join("sessions")
        .join(session_id)
        .join("workspace");
    assert_eq!(
        std::fs::read_to_string(workspace.join("token.sha"))
            .unwrap()
            .trim(),
        sha256_hex(TOKEN)
    );
    assert_eq!(
        std::fs::read_to_string(workspace.join("token.len")).unwrap(),
        TOKEN.len().to_string()
    );
    let shown = h.ok(&["task", "show", task_id]);
    assert!(shown.contains("GITHUB_TOKEN"), "{shown}");

    // Nowhere Parhelia keeps anything: outputs, every file of the state
    // directory (database and its WAL, journals, logs, spec.json, the
    // checkpoint stores), and every checkpoint's restored trees.
    for args in [
        &["events", "list", "--json"][..],
        &["task", "show", task_id, "--json"][..],
        &["checkpoint", "list", session_id, "--json"][..],
    ] {
        let out = h.ok(args);
        assert!(!out.contains(TOKEN), "{args:?} shows the secret: {out}");
    }
    h.ok(&["coordinator", "stop"]);
    let mut files = Vec::new();
    files_under(&h.state(), &mut files);
    let names: Vec<String> = files
        .iter()
        .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    for expected in ["parhelia.db", "agent.log", "coordinator.log", "spec.json"] {
        assert!(
            names.iter().any(|n| n == expected),
            "no {expected}: {names:?}"
        );
    }
    assert!(
        names.iter().any(|n| n.ends_with(".jsonl")),
        "no journal: {names:?}"
    );
    // Workspace files the session itself wrote aside (it holds only the hash).
    let kept: Vec<PathBuf> = holding(&files, TOKEN.as_bytes());
    assert!(kept.is_empty(), "the secret's value is in {kept:#?}");
    let scratch = tempfile::tempdir().unwrap();
    let restored = restore_every_checkpoint(&h.state(), scratch.path());
    assert!(restored >= 2, "only {restored} trees restored");
    let mut trees = Vec::new();
    files_under(scratch.path(), &mut trees);
    assert!(
        trees.iter().any(|f| f.ends_with("token.sha")),
        "the workspace was checkpointed"
    );
    let kept = holding(&trees, TOKEN.as_bytes());
    assert!(kept.is_empty(), "a checkpoint holds the secret: {kept:#?}");
}

#[test]
fn a_local_secret_reaches_the_session_under_bubblewrap_and_is_kept_nowhere() {
    local_secret_reaches_the_session_and_nothing_keeps_it("bwrap");
}

#[test]
fn a_local_secret_reaches_an_unconfined_session_and_is_kept_nowhere() {
    local_secret_reaches_the_session_and_nothing_keeps_it("none");
}

/// E207: a `--secret` this shell does not set is refused before anything is
/// recorded; following the advice (export it, run the command again) works.
#[test]
fn an_unset_secret_is_refused_before_launch_and_exporting_it_fixes_that() {
    let mut h = Harness::new(hashing_script());
    h.set_env("PARHELIA_ISOLATION", "none");
    let out = h.run(&["task", "create", "x", "--secret", "GITHUB_TOKEN"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("E207"), "{err}");
    assert!(
        err.contains("export"),
        "the advice says to export it: {err}"
    );
    assert!(
        h.json(&["task", "list", "--json"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    // Not a name a launch lets through.
    let bad = h.run(&["task", "create", "x", "--secret", "PATH"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("E100"));
    // And a region is Modal's only.
    let region = h.run(&["task", "create", "x", "--region", "us-east"]);
    let err = String::from_utf8_lossy(&region.stderr).to_string();
    assert!(err.contains("E100") && err.contains("Modal"), "{err}");

    h.set_env("GITHUB_TOKEN", TOKEN);
    h.ok(&["task", "create", "x", "--secret", "GITHUB_TOKEN", "--sync"]);
    let task = h.json(&["task", "list", "--json"])[0].clone();
    assert_eq!(task["status"], "completed", "{task:#}");
}

/// A relaunch carries the secret again from the shell that runs it: a held task
/// dispatched from a shell without it, by a coordinator started without it,
/// fails E207 (nothing started); `task retry` from a shell that exports it
/// completes, and the session sees the value.
#[test]
fn a_relaunch_takes_the_secret_from_the_shell_that_runs_it() {
    let mut h = Harness::new(hashing_script());
    h.set_env("PARHELIA_ISOLATION", "none");
    // The coordinator starts from a shell without the token.
    h.ok(&["task", "create", "unrelated", "--no-dispatch"]);
    h.set_env("GITHUB_TOKEN", TOKEN);
    let held = h.json(&[
        "task",
        "create",
        "Record the token's hash",
        "--secret",
        "GITHUB_TOKEN",
        "--no-dispatch",
        "--json",
    ]);
    let task_id = held["task_id"].as_str().unwrap();
    h.remove_env("GITHUB_TOKEN");
    let out = h.run(&["task", "dispatch", task_id]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("E207"), "{text}");
    let failed = h.json(&["task", "show", task_id, "--json"]);
    assert_eq!(failed["error_code"], "E207", "{failed:#}");
    assert!(!failed.to_string().contains(TOKEN));

    h.set_env("GITHUB_TOKEN", TOKEN);
    h.ok(&["task", "retry", task_id]);
    let task = h.wait_task(task_id, |t| {
        matches!(t["status"].as_str(), Some("completed" | "failed"))
    });
    assert_eq!(task["status"], "completed", "{task:#}");
    let workspace = h
        .state()
        .join("sessions")
        .join(task["session_id"].as_str().unwrap())
        .join("workspace");
    assert_eq!(
        std::fs::read_to_string(workspace.join("token.sha"))
            .unwrap()
            .trim(),
        sha256_hex(TOKEN)
    );
}

/// The stand-in's record of the sandbox a container ran in, if it has one yet.
fn find_sandbox(standin: &Path, container_id: &str) -> Option<serde_json::Value> {
    let mut files = Vec::new();
    files_under(&standin.join("sandboxes"), &mut files);
    files
        .iter()
        .filter(|f| f.file_name().is_some_and(|n| n == "sandbox.json"))
        .filter_map(|f| {
            serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(f).ok()?).ok()
        })
        .find(|s| s["tags"]["parhelia.container"] == container_id)
}

/// The stand-in's record of the sandbox a container ran in.
fn sandbox_of(standin: &Path, container_id: &str) -> serde_json::Value {
    find_sandbox(standin, container_id).unwrap_or_else(|| panic!("no sandbox for {container_id}"))
}

/// On Modal, `--secret github` attaches the Modal secret `github` after the
/// Anthropic key's (which must hold `ANTHROPIC_API_KEY`), the session's Bash
/// sees its key, and `--region` reaches `Sandbox.create`. A secret Modal does
/// not have is E405, naming it, and nothing is started.
#[test]
fn on_modal_a_secret_is_a_named_modal_secret_and_the_region_reaches_the_sandbox() {
    let mut h = Harness::new(hashing_script());
    let standin = h.use_modal_stand_in();
    h.ok(&["modal", "setup"]);
    std::fs::write(
        standin.join("secrets/github.json"),
        format!(r#"{{"GITHUB_TOKEN": "{TOKEN}"}}"#),
    )
    .unwrap();

    let dry = h.ok(&[
        "task",
        "create",
        "x",
        "--backend",
        "modal",
        "--secret",
        "github",
        "--region",
        "us-east",
        "--dry-run",
    ]);
    assert!(
        dry.contains("secrets    anthropic-api-key, github"),
        "{dry}"
    );
    assert!(dry.contains("region     us-east"), "{dry}");

    let created = h.json(&[
        "task",
        "create",
        "Record the token's hash",
        "--backend",
        "modal",
        "--secret",
        "github",
        "--region",
        "us-east",
        "--json",
    ]);
    let task_id = created["task_id"].as_str().unwrap();
    let session_id = created["session_id"].as_str().unwrap();
    let container_id = created["container_id"].as_str().unwrap();
    let task = h.wait_task(task_id, |t| {
        matches!(t["status"].as_str(), Some("completed" | "failed"))
    });
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(task["secrets"], serde_json::json!(["github"]));
    assert_eq!(task["region"], "us-east");

    let sb = sandbox_of(&standin, container_id);
    assert_eq!(sb["region"], "us-east", "{sb:#}");
    assert_eq!(
        sb["secret_names"],
        serde_json::json!(["anthropic-api-key", "github", "(inline)"]),
        "{sb:#}"
    );
    assert_eq!(
        sb["secret_required_keys"]["anthropic-api-key"],
        serde_json::json!(["ANTHROPIC_API_KEY"]),
        "{sb:#}"
    );
    assert_eq!(sb["secret_required_keys"]["github"], serde_json::json!([]));
    let workspace = h
        .root()
        .join(format!("ctr/home/sessions/{session_id}/workspace"));
    assert_eq!(
        std::fs::read_to_string(workspace.join("token.sha"))
            .unwrap()
            .trim(),
        sha256_hex(TOKEN)
    );
    // Nothing of the value passed through this machine's state.
    let mut files = Vec::new();
    files_under(&h.state(), &mut files);
    let kept = holding(&files, TOKEN.as_bytes());
    assert!(kept.is_empty(), "the secret's value is in {kept:#?}");

    // A secret Modal does not have: E405 naming it.
    let out = h.run(&[
        "task",
        "create",
        "x",
        // Refused at the launch: --sync follows it (an async create returns first).
        "--sync",
        "--backend",
        "modal",
        "--secret",
        "nosuch",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("E405") && err.contains("nosuch"), "{err}");

    // `modal.secrets` and `modal.region` from the configuration, for a task
    // that names neither.
    std::fs::write(standin.join("secrets/shared.json"), r#"{"SHARED": "x"}"#).unwrap();
    h.set_env("PARHELIA_MODAL_SECRETS", "shared");
    h.set_env("PARHELIA_MODAL_REGION", "eu-west");
    h.ok(&["coordinator", "stop"]);
    let created = h.json(&["task", "create", "x", "--backend", "modal", "--json"]);
    // An async create returns before its launch makes the sandbox.
    let container_id = created["container_id"].as_str().unwrap();
    let sb = h.wait_for("the task's sandbox", || {
        find_sandbox(&standin, container_id)
    });
    assert_eq!(sb["region"], "eu-west", "{sb:#}");
    assert_eq!(
        sb["secret_names"],
        serde_json::json!(["anthropic-api-key", "shared", "(inline)"]),
        "{sb:#}"
    );
    h.wait_task(created["task_id"].as_str().unwrap(), |t| {
        matches!(t["status"].as_str(), Some("completed" | "failed"))
    });
}

/// `--gpu A100,A10G,L4` on Modal: with no capacity for the first two types
/// (the stand-in's `faults.json`), the launch takes the third; each refusal is
/// a `gpu_unavailable` event, the choice is on the task (`task show`), and the
/// estimate prices the first choice and says so.
#[test]
fn a_gpu_list_falls_back_across_two_capacity_refusals() {
    let mut h = Harness::new(Script::new([Turn::text("Done.")]));
    let standin = h.use_modal_stand_in();
    h.ok(&["modal", "setup"]);
    h.ok(&["budget", "set", "10000"]);
    std::fs::write(
        standin.join("faults.json"),
        r#"{"no_capacity": ["A100", "A10G"]}"#,
    )
    .unwrap();

    let estimate = h.ok(&[
        "task",
        "create",
        "Train",
        "--backend",
        "modal",
        "--gpu",
        "A100,A10G,L4",
        "--estimate-only",
    ]);
    assert!(
        estimate.contains("priced at the first choice, A100"),
        "{estimate}"
    );

    let created = h.json(&[
        "task",
        "create",
        "Train",
        "--backend",
        "modal",
        "--gpu",
        "a100,A10G,L4",
        "--json",
    ]);
    let task_id = created["task_id"].as_str().unwrap();
    let container_id = created["container_id"].as_str().unwrap();
    let task = h.wait_task(task_id, |t| {
        matches!(t["status"].as_str(), Some("completed" | "failed"))
    });
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(task["gpu_chosen"], "L4", "{task:#}");
    assert_eq!(sandbox_of(&standin, container_id)["gpu"], "L4");
    let shown = h.ok(&["task", "show", task_id]);
    assert!(
        shown.contains("L4 (the type Modal had capacity for)"),
        "{shown}"
    );

    let refusals = h.json(&[
        "events",
        "list",
        "--type",
        "gpu_unavailable",
        "--task",
        task_id,
        "--json",
    ]);
    let text = refusals.to_string();
    let rows = refusals.as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(rows, 2, "{refusals:#}");
    assert!(text.contains("A100") && text.contains("A10G"), "{text}");
    assert!(!text.contains("for L4"), "{text}");

    // No capacity for any: E513 naming each refusal; nothing runs.
    std::fs::write(
        standin.join("faults.json"),
        r#"{"no_capacity": ["A100", "A10G", "L4"]}"#,
    )
    .unwrap();
    let out = h.run(&[
        "task",
        "create",
        "Train",
        "--sync",
        "--backend",
        "modal",
        "--gpu",
        "A100,A10G,L4",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("E513") && err.contains("L4"), "{err}");
}
