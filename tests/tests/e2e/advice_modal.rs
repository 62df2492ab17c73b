//! The Modal codes' advice followed end to end (issue 14), against the SDK stand-in
//! (`tests/modal_standin/`): the real `parhelia`, the real bridge, sandboxes that are
//! local processes running the real agent and Claude Code on the scripted model. Each
//! test provokes the error as a user meets it, checks that the advice printed under
//! `error[Ennn]: ` names the action, takes it (Modal's own CLI — `modal token new`,
//! `modal secret create`, `pip install modal` — by doing what it would do to the
//! stand-in's state: `~/.modal.toml` in the test's HOME, a secret file, the package in a
//! Python's site-packages), and asserts that the task then completes.
//!
//! What the stand-in is made to do wrong is written to its `faults.json`
//! (`tests/modal_standin/modal/_local.py`, `fault`): no capacity for a GPU type, a GPU
//! that takes long to schedule, a crash at a call. `docs/dev/advice-coverage.md` lists
//! which test follows which code.

use std::path::{Path, PathBuf};
use std::process::Output;

use parhelia_testkit::harness::Harness;
use parhelia_testkit::model_stand_in::{RequestKind, WhenExhausted};
use parhelia_testkit::{Script, ToolCall, Turn};

/// What a person reads on stderr (progress lines left out).
fn stderr_of(out: &Output) -> String {
    parhelia_testkit::harness::without_progress(&String::from_utf8_lossy(&out.stderr))
}

/// `parhelia ARGS`, which must fail with `code`; returns its stderr.
fn refused(h: &Harness, args: &[&str], code: &str) -> String {
    let out = h.run(args);
    let stderr = stderr_of(&out);
    assert!(
        !out.status.success(),
        "parhelia {args:?} succeeded:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.starts_with(&format!("error[{code}]: ")),
        "parhelia {args:?}:\n{stderr}\ncoordinator log:\n{}",
        h.coordinator_log()
    );
    stderr
}

/// `parhelia task create ARGS --json`, which returns once the task is recorded and
/// placed (`launching`), whose launch then fails with `code`: `task watch` ends with
/// it (and its advice). The task's id and the watch's stderr.
fn launch_refused(h: &Harness, args: &[&str], code: &str) -> (String, String) {
    let mut all = vec!["task", "create"];
    all.extend_from_slice(args);
    all.push("--json");
    let created = h.json(&all);
    assert_eq!(created["launching"], true, "{created:#}");
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let stderr = refused(h, &["task", "watch", &task_id], code);
    (task_id, stderr)
}

/// The advice printed under the error (its `hint:` line).
fn hint(stderr: &str) -> &str {
    stderr
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("hint: "))
        .unwrap_or_else(|| panic!("no hint under the error:\n{stderr}"))
}

/// A task that completes: its id and final row.
fn completes(h: &Harness, args: &[&str]) -> (String, serde_json::Value) {
    let mut all = vec!["task", "create"];
    all.extend_from_slice(args);
    all.push("--json");
    let created = h.json(&all);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let task = finished(h, &task_id);
    assert_eq!(task["status"], "completed", "{task:#}");
    (task_id, task)
}

fn finished(h: &Harness, task_id: &str) -> serde_json::Value {
    h.wait_task(task_id, |t| {
        matches!(
            t["status"].as_str(),
            Some("completed" | "failed" | "cancelled" | "interrupted")
        )
    })
}

/// `parhelia task retry TASK_ID`, then the task completes on a new container.
fn retried_completes(h: &Harness, task_id: &str) -> serde_json::Value {
    let before = h.json(&["task", "show", task_id, "--json"])["container_id"].clone();
    h.ok(&["task", "retry", task_id]);
    let task = h.wait_task(task_id, |t| {
        t["container_id"] != before
            && matches!(
                t["status"].as_str(),
                Some("completed" | "failed" | "cancelled" | "interrupted")
            )
    });
    assert_eq!(task["status"], "completed", "{task:#}");
    task
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

fn gpu_of(standin: &Path, task: &serde_json::Value) -> serde_json::Value {
    let container = task["container_id"].as_str().unwrap();
    sandboxes(standin)
        .into_iter()
        .find(|s| s["tags"]["parhelia.container"] == container)
        .unwrap_or_else(|| panic!("no sandbox for {container}"))["gpu"]
        .clone()
}

fn faults(standin: &Path, value: serde_json::Value) {
    std::fs::write(standin.join("faults.json"), value.to_string()).unwrap();
}

/// What `modal token new` leaves behind: `~/.modal.toml` with an active profile.
fn modal_token_new(h: &Harness, token_id: &str) {
    std::fs::write(
        h.home().join(".modal.toml"),
        format!("[default]\ntoken_id = \"{token_id}\"\ntoken_secret = \"as-{token_id}\"\nactive = true\n"),
    )
    .unwrap();
}

/// Modal credentials only where the test puts them (none in the environment).
fn without_exported_token(h: &mut Harness) {
    h.set_env("MODAL_TOKEN_ID", "");
    h.set_env("MODAL_TOKEN_SECRET", "");
}

/// Every session's turn answers "Done." (however many sessions ask).
fn done() -> Script {
    Script::new([]).when_exhausted(WhenExhausted::Default(Turn::text("Done.")))
}

#[test]
fn e106_too_many_gpus_then_a_count_modal_accepts() {
    let mut h = Harness::new(done());
    let standin = h.use_modal_stand_in();
    h.ok(&["modal", "setup"]);
    h.ok(&["budget", "set", "10000"]);
    let stderr = refused(
        &h,
        &[
            "task",
            "create",
            "Train",
            "--sync",
            "--backend",
            "modal",
            "--gpu",
            "H100:16",
        ],
        "E106",
    );
    // The message says which value and why; the advice names the option and the form.
    assert!(
        stderr.contains("H100") && stderr.contains("at most 8"),
        "{stderr}"
    );
    let advice = hint(&stderr);
    assert!(
        advice.contains("`--gpu`") && advice.contains("`:N`"),
        "{advice}"
    );

    let (_, task) = completes(&h, &["Train", "--backend", "modal", "--gpu", "H100:8"]);
    assert_eq!(gpu_of(&standin, &task), "H100:8");
}

#[test]
fn e513_no_capacity_for_a_gpu_then_another_type_or_later() {
    let mut h = Harness::new(done());
    let standin = h.use_modal_stand_in();
    h.ok(&["modal", "setup"]);
    h.ok(&["budget", "set", "10000"]);
    faults(&standin, serde_json::json!({"no_capacity": ["H100"]}));
    let (task_id, stderr) = launch_refused(
        &h,
        &["Train", "--backend", "modal", "--gpu", "H100"],
        "E513",
    );
    let advice = hint(&stderr);
    assert!(
        advice.contains("`--gpu`") && advice.contains("`L40S` instead of `H100`"),
        "{advice}"
    );

    // Another GPU type.
    let (_, task) = completes(&h, &["Train", "--backend", "modal", "--gpu", "L40S"]);
    assert_eq!(gpu_of(&standin, &task), "L40S");
    // Later, when Modal has H100s again, the refused task itself.
    assert!(advice.contains("Retry later"), "{advice}");
    faults(&standin, serde_json::json!({}));
    let task = retried_completes(&h, &task_id);
    assert_eq!(gpu_of(&standin, &task), "H100");
}

#[test]
fn e403_no_token_then_modal_token_new_and_setup() {
    let mut h = Harness::new(done());
    h.use_modal_stand_in();
    without_exported_token(&mut h);
    let stderr = refused(&h, &["task", "create", "x", "--backend", "modal"], "E403");
    let advice = hint(&stderr);
    assert!(
        advice.contains("`modal token new`") && advice.contains("`parhelia modal setup`"),
        "{advice}"
    );
    // The coordinator (and its bridge) keeps running meanwhile.
    modal_token_new(&h, "ak-new");
    let setup = h.json(&["modal", "setup", "--json"]);
    assert_eq!(setup["ok"], true, "{setup:#}");
    completes(&h, &["x", "--backend", "modal"]);
}

#[test]
fn e403_no_token_then_exported_as_advised() {
    let mut h = Harness::new(done());
    h.use_modal_stand_in();
    without_exported_token(&mut h);
    let stderr = refused(&h, &["modal", "setup"], "E403");
    let advice = hint(&stderr);
    assert!(
        advice.contains("export `MODAL_TOKEN_ID` and `MODAL_TOKEN_SECRET`")
            && advice.contains("`parhelia coordinator stop`"),
        "{advice}"
    );
    h.set_env("MODAL_TOKEN_ID", "ak-exported");
    h.set_env("MODAL_TOKEN_SECRET", "as-exported");
    h.ok(&["coordinator", "stop"]);
    let setup = h.json(&["modal", "setup", "--json"]);
    assert_eq!(setup["ok"], true, "{setup:#}");
    completes(&h, &["x", "--backend", "modal"]);
}

#[test]
fn e404_a_refused_token_then_a_new_one_and_setup() {
    let mut h = Harness::new(done());
    h.use_modal_stand_in();
    without_exported_token(&mut h);
    // A token Modal refuses (revoked): the stand-in refuses the id `rejected`.
    modal_token_new(&h, "rejected");
    let (task_id, stderr) = launch_refused(&h, &["x", "--backend", "modal"], "E404");
    let advice = hint(&stderr);
    assert!(advice.contains("`parhelia task retry TASK_ID`"), "{advice}");
    assert!(
        advice.contains("`modal token new`") && advice.contains("`parhelia modal setup`"),
        "{advice}"
    );
    modal_token_new(&h, "ak-new");
    let setup = h.json(&["modal", "setup", "--json"]);
    assert_eq!(setup["ok"], true, "{setup:#}");
    retried_completes(&h, &task_id);
}

#[test]
fn e404_a_refused_exported_token_then_a_new_one_exported_as_advised() {
    let mut h = Harness::new(done());
    h.use_modal_stand_in();
    // The refused token is exported: it wins over whatever `~/.modal.toml` holds.
    h.set_env("MODAL_TOKEN_ID", "rejected");
    let (task_id, stderr) = launch_refused(&h, &["x", "--backend", "modal"], "E404");
    let advice = hint(&stderr);
    assert!(
        advice.contains("export the new one instead, then `parhelia coordinator stop`"),
        "{advice}"
    );
    h.set_env("MODAL_TOKEN_ID", "ak-new");
    h.set_env("MODAL_TOKEN_SECRET", "as-new");
    h.ok(&["coordinator", "stop"]);
    let setup = h.json(&["modal", "setup", "--json"]);
    assert_eq!(setup["ok"], true, "{setup:#}");
    retried_completes(&h, &task_id);
}

#[test]
fn e405_the_secret_gone_then_created_and_setup() {
    let mut h = Harness::new(done());
    let standin = h.use_modal_stand_in();
    h.ok(&["modal", "setup"]);
    // The secret was deleted on Modal since.
    let secret = standin.join("secrets/anthropic-api-key.json");
    std::fs::remove_file(&secret).unwrap();
    let (task_id, stderr) = launch_refused(&h, &["x", "--backend", "modal"], "E405");
    let advice = hint(&stderr);
    assert!(advice.contains("`parhelia task retry TASK_ID`"), "{advice}");
    assert!(
        advice.contains("`modal secret create anthropic-api-key ANTHROPIC_API_KEY=sk-ant-...`")
            && advice.contains("`parhelia modal setup`"),
        "{advice}"
    );
    // What `modal secret create anthropic-api-key ANTHROPIC_API_KEY=…` makes.
    std::fs::write(&secret, r#"{"ANTHROPIC_API_KEY": "test-key-not-a-secret"}"#).unwrap();
    let setup = h.json(&["modal", "setup", "--json"]);
    assert_eq!(setup["ok"], true, "{setup:#}");
    retried_completes(&h, &task_id);
}

#[test]
fn e206_no_volume_yet_then_modal_setup() {
    let mut h = Harness::new(done());
    h.use_modal_stand_in();
    // `modal setup` never ran: no volume.
    let (task_id, stderr) = launch_refused(&h, &["x", "--backend", "modal"], "E206");
    assert!(stderr.contains("parhelia-data"), "{stderr}");
    let advice = hint(&stderr);
    assert!(advice.contains("`parhelia task retry TASK_ID`"), "{advice}");
    assert!(advice.contains("`parhelia modal setup`"), "{advice}");
    let setup = h.json(&["modal", "setup", "--json"]);
    assert_eq!(setup["ok"], true, "{setup:#}");
    assert!(h.modal_volume().is_dir());
    retried_completes(&h, &task_id);
}

/// `python3 -m venv`: a Python of its own, without the Modal SDK.
fn venv_without_modal(root: &Path) -> (PathBuf, PathBuf) {
    let venv = root.join("venv");
    let made = std::process::Command::new("python3")
        .args(["-m", "venv", "--without-pip"])
        .arg(&venv)
        .output()
        .expect("python3 -m venv");
    assert!(made.status.success(), "{}", stderr_of(&made));
    let lib = venv.join("lib");
    let site = std::fs::read_dir(&lib)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("site-packages"))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| panic!("no site-packages under {}", lib.display()));
    (venv.join("bin/python"), site)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            if entry.file_name() != "__pycache__" {
                copy_dir(&path, &to.join(entry.file_name()));
            }
        } else {
            std::fs::copy(&path, to.join(entry.file_name())).unwrap();
        }
    }
}

#[test]
fn e510_a_python_without_the_sdk_then_pip_install_and_setup() {
    let mut h = Harness::new(done());
    h.use_modal_stand_in();
    // The stand-in only where it is installed, not on a path the bridge is given.
    h.set_env("PARHELIA_MODAL_BRIDGE_PYTHONPATH", "");
    let (python, site) = venv_without_modal(h.root());
    std::fs::write(
        h.state().join("config.toml"),
        format!("[modal]\npython = \"{}\"\n", python.display()),
    )
    .unwrap();
    let stderr = refused(&h, &["task", "create", "x", "--backend", "modal"], "E510");
    let advice = hint(&stderr);
    assert!(
        advice.contains("`pip install modal==1.6.4`")
            && advice.contains("`modal.python`")
            && advice.contains("`parhelia modal setup`"),
        "{advice}"
    );
    // `pip install modal==1.6.4` with that Python: the package in its site-packages.
    let package = Path::new(env!("CARGO_MANIFEST_DIR")).join("modal_standin/modal");
    copy_dir(&package, &site.join("modal"));
    let setup = h.json(&["modal", "setup", "--json"]);
    assert_eq!(setup["ok"], true, "{setup:#}");
    completes(&h, &["x", "--backend", "modal"]);
}

#[test]
fn e511_the_bridge_dies_then_setup_and_a_retry() {
    let mut h = Harness::new(done());
    let standin = h.use_modal_stand_in();
    h.ok(&["modal", "setup"]);
    // The bridge process dies in the middle of creating the sandbox (once).
    faults(
        &standin,
        serde_json::json!({"crash": {"Sandbox.create": 1}}),
    );
    let (task_id, stderr) = launch_refused(&h, &["x", "--backend", "modal"], "E511");
    let advice = hint(&stderr);
    assert!(advice.contains("`parhelia task retry TASK_ID`"), "{advice}");
    assert!(
        advice.contains("`parhelia modal setup`") && advice.contains("coordinator log"),
        "{advice}"
    );
    // The coordinator log has the bridge's stderr: why it died.
    h.wait_for("the bridge's last words in coordinator.log", || {
        h.coordinator_log()
            .contains("modal stand-in: crashing at Sandbox.create")
            .then_some(())
    });
    let setup = h.json(&["modal", "setup", "--json"]);
    assert_eq!(setup["ok"], true, "{setup:#}");
    retried_completes(&h, &task_id);
}

#[test]
fn e512_a_gpu_slower_than_the_deadline_then_another_type_and_the_late_sandbox_ended() {
    // The sandbox Modal creates late runs a session of its own: its one turn runs a
    // command that does not end, so only a termination ends it. Every later turn is "Done.".
    let mut h = Harness::new(
        Script::new([Turn::tool_use([ToolCall::bash("sleep 600")])])
            .when_exhausted(WhenExhausted::Default(Turn::text("Done."))),
    );
    let standin = h.use_modal_stand_in();
    // The shortest creation deadline the configuration allows.
    h.set_env("PARHELIA_MODAL_CREATE_TIMEOUT_SECONDS", "10");
    h.ok(&["modal", "setup"]);
    h.ok(&["budget", "set", "10000"]);
    faults(
        &standin,
        serde_json::json!({"schedule_seconds": {"H100": 15}}),
    );
    let (_, stderr) = launch_refused(
        &h,
        &["Train", "--backend", "modal", "--gpu", "H100"],
        "E512",
    );
    let advice = hint(&stderr);
    assert!(
        advice.contains("`--gpu`") && advice.contains("`parhelia cleanup --terminate`"),
        "{advice}"
    );

    // Modal creates the H100 sandbox after the deadline, and its session runs.
    let late = h.wait_for("the late H100 sandbox", || {
        sandboxes(&standin).into_iter().find(|s| s["gpu"] == "H100")
    });
    h.wait_for("the late session's turn", || {
        h.stand_in
            .requests()
            .iter()
            .any(|r| r.kind == RequestKind::Turn)
            .then_some(())
    });
    // Another GPU type.
    let (_, task) = completes(&h, &["Train", "--backend", "modal", "--gpu", "L40S"]);
    assert_eq!(gpu_of(&standin, &task), "L40S");

    // `parhelia cleanup` lists the late sandbox as an orphan; `--terminate` ends it (once
    // its container has been failed for longer than a stop may take).
    let container = late["tags"]["parhelia.container"]
        .as_str()
        .unwrap()
        .to_string();
    let listed = h.ok(&["cleanup"]);
    assert!(listed.contains(&container), "{listed}");
    let exit = standin
        .join("sandboxes")
        .join(late["sandbox_id"].as_str().unwrap())
        .join("exit.json");
    assert!(!exit.exists(), "the late sandbox ended by itself");
    h.wait_for("cleanup --terminate ending the late sandbox", || {
        let out = h.ok(&["cleanup", "--terminate"]);
        // Before it is terminated, nothing has asked it to stop yet.
        assert!(!out.contains("termination already requested"), "{out}");
        out.lines()
            .any(|l| l.contains(&container) && l.trim_end().ends_with(" terminated"))
            .then_some(())
    });
    let exit = h.wait_for("the late sandbox ended", || {
        std::fs::read_to_string(&exit).ok()
    });
    assert!(exit.contains("\"terminated\""), "{exit}");
}
