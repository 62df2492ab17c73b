//! The hostile-store corpus (issue 11) through the product's readers: a session can write
//! its own checkpoint store (it is on the session's volume), so every command that reads
//! one must answer a hostile store with a coded error — never a panic, an abort, a hang or
//! a changed workspace — and the coordinator daemon must survive it.
//!
//! One finished session serves every case: its store is swapped for a store built by
//! `parhelia_checkpoint::hostile` (one honest checkpoint `good` plus the case's `bad`),
//! then `checkpoint list / show / diff / diff --file`, `session recover` (which verifies),
//! `checkpoint rollback`, `resume` and `session pull` run against it. Every case of the
//! corpus that runs under the default caps (the product does not lower them) goes through
//! every command: the whole corpus costs about a minute. The cases that need lowered caps
//! to trip are the engine's (`checkpoint/tests/it/hostile.rs`).
//!
//! The agent's own restore is `agent/tests/it/hostile_restore.rs`; the Modal durability pass
//! is the last test here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use parhelia_checkpoint::hostile::{Case, cases};
use parhelia_checkpoint::{
    ChangeHint, CheckpointId, CreateOutcome, CreateRequest, Limits, Store, TreeSpec,
};
use parhelia_testkit::harness::Harness;
use parhelia_testkit::{Script, Turn};

const CODES: &[&str] = &["E620", "E621", "E622", "E624"];

/// path -> content (files), target (links) or `<dir>`; never follows a link.
fn listing(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(root).unwrap().display().to_string();
            let ft = e.file_type().unwrap();
            let value = if ft.is_dir() {
                stack.push(e.path());
                b"<dir>".to_vec()
            } else if ft.is_symlink() {
                std::fs::read_link(e.path())
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                std::fs::read(e.path()).unwrap()
            };
            out.insert(rel, value);
        }
    }
    out
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "User")
        .env("GIT_AUTHOR_EMAIL", "user@example.com")
        .env("GIT_COMMITTER_NAME", "User")
        .env("GIT_COMMITTER_EMAIL", "user@example.com")
        .output()
        .expect("git");
    assert!(out.status.success(), "git {args:?}");
}

/// The daemon's pid, from `status --json` (which never starts one).
fn coordinator_pid(h: &Harness) -> Option<u64> {
    let status = h.json(&["status", "--json"]);
    (status["coordinator"]["running"] == true)
        .then(|| status["coordinator"]["pid"].as_u64())
        .flatten()
}

/// A store at `root` holding one honest checkpoint (workspace and conversation trees).
fn honest_store(root: &Path, src: &Path) -> (Store, CheckpointId) {
    let store = Store::open(root).unwrap();
    let tree = |name: &str, dir: &Path| {
        (
            TreeSpec {
                name: name.into(),
                root: dir.to_path_buf(),
                excludes: vec![],
            },
            ChangeHint::Unknown,
        )
    };
    let request = CreateRequest {
        trees: vec![
            tree("workspace", &src.join("ws")),
            tree("conversation", &src.join("conv")),
        ],
        parent: None,
        trigger: "manual".into(),
        message: Some("honest".into()),
        metadata: serde_json::json!({}),
        skip_if_unchanged: false,
    };
    let CreateOutcome::Created(m) = store.create(&request).unwrap() else {
        panic!("unchanged")
    };
    (store, m.id)
}

fn honest_source(root: &Path) -> PathBuf {
    let src = root.join("honest-src");
    std::fs::create_dir_all(src.join("ws/src")).unwrap();
    std::fs::create_dir_all(src.join("conv")).unwrap();
    std::fs::write(src.join("ws/a.txt"), "hello\n").unwrap();
    std::fs::write(src.join("ws/src/lib.rs"), "fn main() {}\n").unwrap();
    src
}

/// No panic, no abort, no signal: an exit status the CLI chose.
fn assert_no_crash(case: &str, what: &str, out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code().is_some_and(|c| c != 101 && c != 134),
        "{case}: {what} crashed ({}): {stderr}",
        out.status
    );
    assert!(
        !stderr.contains("panicked"),
        "{case}: {what} panicked: {stderr}"
    );
}

/// Succeeded, or failed with one of the checkpoint codes.
fn assert_ok_or_coded(case: &str, what: &str, out: &Output) {
    assert_no_crash(case, what, out);
    if !out.status.success() {
        assert_coded(case, what, out);
    }
}

fn assert_coded(case: &str, what: &str, out: &Output) {
    assert_no_crash(case, what, out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{case}: {what} succeeded");
    assert!(
        CODES
            .iter()
            .any(|c| stderr.contains(&format!("error[{c}]"))),
        "{case}: {what} failed without a checkpoint code: {stderr}"
    );
}

fn corpus() -> Vec<Case> {
    cases("workspace")
        .into_iter()
        .filter(|c| c.limits == Limits::default())
        .collect()
}

#[test]
fn every_command_refuses_every_hostile_store_and_nothing_changes() {
    let mut h = Harness::new(Script::new([Turn::text("Done.")]));
    // Unconfined: the point is the readers outside the session, not the sandbox.
    h.set_env("PARHELIA_ISOLATION", "none");
    let created = h.json(&["task", "create", "Say done", "--json"]);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let sid = created["session_id"].as_str().unwrap().to_string();
    let task = h.wait_task(&task_id, |t| {
        matches!(t["status"].as_str(), Some("completed" | "failed"))
    });
    assert_eq!(task["status"], "completed", "{task:#}");
    let volume_dir: String = h
        .db()
        .query_row(
            "SELECT volume_dir FROM sessions WHERE id = ?1",
            [&sid],
            |r| r.get(0),
        )
        .unwrap();
    let store_dir = PathBuf::from(volume_dir).join("checkpoints");
    assert!(
        store_dir.join("store.json").is_file(),
        "no store at {store_dir:?}"
    );
    let ws = h.state().join("sessions").join(&sid).join("workspace");
    std::fs::write(ws.join("precious.txt"), "the user's work\n").unwrap();
    let repo = h.root().join("user-repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("notes.txt"), "mine\n").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "first"]);
    let repo_s = repo.to_string_lossy().into_owned();
    let src = honest_source(h.root());
    let pid = coordinator_pid(&h).expect("the coordinator runs");

    let all = corpus();
    assert!(all.len() >= 35, "{} cases", all.len());
    for (i, c) in all.iter().enumerate() {
        eprintln!("case: {}", c.name);
        let built = h.root().join(format!("store-{i}"));
        let (good, bad) = {
            let (store, good) = honest_store(&built, &src);
            let bad = (c.build)(&store, &good);
            (good.to_string(), bad.to_string())
        };
        std::fs::remove_dir_all(&store_dir).unwrap();
        std::fs::rename(&built, &store_dir).unwrap();
        let ws_before = listing(&ws);
        let repo_before = listing(&repo);

        let run = |args: &[&str]| -> Output { h.run(args) };
        let list = run(&["checkpoint", "list", &sid, "--json"]);
        assert_no_crash(c.name, "list", &list);
        assert!(
            list.status.success(),
            "{}: list failed: {}",
            c.name,
            String::from_utf8_lossy(&list.stderr)
        );
        let listed = String::from_utf8_lossy(&list.stdout).contains(&bad);
        assert_ok_or_coded(c.name, "show", &run(&["checkpoint", "show", &bad]));
        assert_ok_or_coded(
            c.name,
            "show --json",
            &run(&["checkpoint", "show", &bad, "--json"]),
        );
        assert_ok_or_coded(c.name, "diff", &run(&["checkpoint", "diff", &good, &bad]));
        for file in ["a.txt", "f", "big"] {
            let out = run(&["checkpoint", "diff", &good, &bad, "--file", file]);
            // A path in neither checkpoint is E205, as for an honest store.
            if !String::from_utf8_lossy(&out.stderr).contains("error[E205]") {
                assert_ok_or_coded(c.name, "diff --file", &out);
            }
        }
        assert_ok_or_coded(
            c.name,
            "diff --conversation",
            &run(&["checkpoint", "diff", &good, &bad, "--conversation"]),
        );
        // `session recover` verifies every listed checkpoint, newest first.
        let recover = run(&["session", "recover", &sid]);
        assert_no_crash(c.name, "recover", &recover);
        if listed && bad != good {
            let stdout = String::from_utf8_lossy(&recover.stdout);
            assert!(
                CODES.iter().any(|code| {
                    stdout.contains(&format!("damaged    {bad} [{code}]"))
                        || stdout.contains(&format!("skipped    {bad} [{code}]"))
                }),
                "{}: recover did not report {bad} damaged:\n{stdout}",
                c.name
            );
        }
        assert_coded(
            c.name,
            "rollback",
            &run(&["checkpoint", "rollback", &bad, "--yes"]),
        );
        assert_coded(
            c.name,
            "resume",
            &run(&["resume", &sid, "--checkpoint", &bad]),
        );
        assert_coded(
            c.name,
            "pull",
            &run(&[
                "session",
                "pull",
                &sid,
                "--checkpoint",
                &bad,
                "--repo",
                &repo_s,
            ]),
        );

        assert_eq!(listing(&ws), ws_before, "{}: the workspace changed", c.name);
        assert_eq!(
            listing(&repo),
            repo_before,
            "{}: the repository changed",
            c.name
        );
        assert_eq!(
            coordinator_pid(&h),
            Some(pid),
            "{}: the coordinator died\n{}",
            c.name,
            h.coordinator_log()
        );
        let task = h.json(&["task", "show", &task_id, "--json"]);
        assert_eq!(task["status"], "completed", "{}: the task moved", c.name);
    }
}

/// One case of each class that adds a checkpoint (the Modal test plants new files on the
/// volume; cases that damage existing files in place are covered above). Store files that
/// are FIFOs or symlinks are left out here: a Modal volume holds neither, and the
/// stand-in's volume is read by the Python bridge, not by the engine.
const MODAL_SUBSET: &[&str] = &[
    "entry_count 2^62",
    "chunk blob claims 2^40 bytes",
    "header offset at u32::MAX",
    "512 MiB bomb from 16 KiB (bad hash)",
    "16 GiB declared, 1 MiB inflated",
    "content does not match its hash",
    "symlink member",
    "5000-byte path",
    "content missing from every layer",
    "symlink out, then a file through it",
    "duplicate paths",
];

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else if e.file_type().unwrap().is_file() && !dest.exists() {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// The Modal durability pass verifies what it reads back from the volume (here through
/// `checkpoint list`, which reads the store back and runs the same verification as the
/// daemon's periodic pass). Hostile checkpoints planted on the volume are never marked
/// durable, and neither the list nor the coordinator crashes.
#[test]
fn the_modal_durability_pass_never_marks_a_hostile_checkpoint_durable() {
    let mut h = Harness::new(Script::new([Turn::text("Done.")]));
    let _standin = h.use_modal_stand_in();
    h.ok(&["modal", "setup"]);
    let created = h.json(&["task", "create", "Say done", "--backend", "modal", "--json"]);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let sid = created["session_id"].as_str().unwrap().to_string();
    let task = h.wait_task(&task_id, |t| {
        matches!(t["status"].as_str(), Some("completed" | "failed"))
    });
    assert_eq!(task["status"], "completed", "{task:#}");
    let listed = h.wait_for("durable checkpoints", || {
        let list = h.json(&["checkpoint", "list", &sid, "--json"]);
        let all = list.as_array().cloned().unwrap_or_default();
        (!all.is_empty() && all.iter().all(|c| c["durable"] == true)).then_some(all)
    });
    let good = listed.last().unwrap()["id"].as_str().unwrap().to_string();
    let good = CheckpointId::parse(&good).unwrap();
    let volume_store = h.modal_volume().join(format!("sessions/{sid}/checkpoints"));
    assert!(
        volume_store.join("store.json").is_file(),
        "{volume_store:?}"
    );
    let pid = coordinator_pid(&h).expect("the coordinator runs");

    let all = cases("workspace");
    let chosen: Vec<&Case> = all
        .iter()
        .filter(|c| MODAL_SUBSET.contains(&c.name))
        .collect();
    assert_eq!(
        chosen.len(),
        MODAL_SUBSET.len(),
        "a subset case was renamed"
    );
    let mut planted = Vec::new();
    for (i, c) in chosen.iter().enumerate() {
        // Built on a copy of the volume's store, then its new files copied onto the volume
        // (layers first, as an agent writes them).
        let work = h.root().join(format!("modal-store-{i}"));
        copy_dir(&volume_store, &work);
        let store = Store::open(&work).unwrap();
        let bad = (c.build)(&store, &good).to_string();
        drop(store);
        for dir in ["layers", "manifests"] {
            copy_dir(&work.join(dir), &volume_store.join(dir));
        }
        planted.push((c.name, bad));
    }
    for round in 0..2 {
        let out = h.run(&["checkpoint", "list", &sid, "--json"]);
        assert_no_crash("modal", "list", &out);
        assert!(
            out.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let shown = planted
            .iter()
            .filter(|(_, bad)| out.stdout.windows(bad.len()).any(|w| w == bad.as_bytes()))
            .count();
        // Those whose manifest reads are listed (as not durable), so verified and refused.
        assert!(shown >= planted.len() / 2, "{shown} of the planted listed");
        for (name, bad) in &planted {
            if let Some(view) = list
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["id"] == bad.as_str())
            {
                assert_eq!(view["durable"], false, "{name}: marked durable");
            }
            let n: i64 = h
                .db()
                .query_row(
                    "SELECT count(*) FROM durable_checkpoints WHERE checkpoint_id = ?1",
                    [bad],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(n, 0, "{name}: recorded durable");
        }
        assert_eq!(
            coordinator_pid(&h),
            Some(pid),
            "the coordinator died\n{}",
            h.coordinator_log()
        );
    }
    // Resuming from one of them is refused by the same verification, nothing launched.
    let (name, bad) = &planted[0];
    let out = h.run(&["resume", &sid, "--checkpoint", bad]);
    assert_coded(name, "resume on modal", &out);
    assert_eq!(coordinator_pid(&h), Some(pid));
}
