//! Damage to a real session's checkpoint store is reported as damage and
//! repaired, end to end: the real `parhelia`, agent, tmux and Claude Code
//! against the scripted model.
//!
//! A flipped byte in the layer every checkpoint shares: `checkpoint verify`
//! names the layer and all the checkpoints it breaks (E620), `doctor` reports
//! it, `checkpoint repair` rewrites it from the live workspace. A damaged
//! manifest: `list` shows it as damaged, `show`/`diff` say E620 (not E205),
//! `repair` without a source marks it unrepairable (E625) and it stays
//! reported, and the default `resume` names it as skipped and restores the
//! newest checkpoint that verifies, byte for byte.

use std::path::{Path, PathBuf};

use parhelia_testkit::harness::Harness;
use parhelia_testkit::{Script, ToolCall, Turn};

fn noise(len: usize) -> Vec<u8> {
    // Incompressible, so the middle of its layer is inside this file's frames.
    let mut out = Vec::with_capacity(len);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn store(h: &Harness, session_id: &str) -> PathBuf {
    h.state()
        .join("sessions")
        .join(session_id)
        .join("volume/checkpoints")
}

/// The layers a manifest lists (its second line is the manifest's JSON).
fn manifest_layers(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let json: serde_json::Value = serde_json::from_str(text.lines().nth(1).unwrap()).unwrap();
    json["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect()
}

fn flip(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x20;
    std::fs::write(path, bytes).unwrap();
}

fn fails(h: &Harness, args: &[&str]) -> (String, String) {
    let out = h.run(args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        !out.status.success(),
        "parhelia {args:?} succeeded:\n{stdout}\n{stderr}"
    );
    (stdout, stderr)
}

#[test]
fn store_damage_is_reported_as_damage_repaired_from_the_workspace_and_skipped_by_resume() {
    let h = Harness::new(Script::new([
        Turn::tool_use([ToolCall::write("a.txt", "first\n")]),
        Turn::tool_use([ToolCall::write("b.txt", "second\n")]),
        Turn::text("Done."),
        // After the resume:
        Turn::text("Resumed."),
    ]));
    let source = h.root().join("project");
    std::fs::create_dir_all(&source).unwrap();
    let big = noise(3 << 20);
    std::fs::write(source.join("big.bin"), &big).unwrap();
    let created = h.json(&[
        "task",
        "create",
        "Write two files",
        "--workspace",
        source.to_str().unwrap(),
        "--json",
    ]);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let session_id = created["session_id"].as_str().unwrap().to_string();
    h.wait_task(&task_id, |t| t["status"] == "completed");

    let listed = h.json(&["checkpoint", "list", &session_id, "--json"]);
    let ids: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    assert!(ids.len() >= 2, "{listed:#}");
    let root = store(&h, &session_id);
    let manifest = |id: &str| root.join(format!("manifests/{id}.manifest"));

    // The layer every checkpoint lists (the one holding big.bin).
    let mut shared = manifest_layers(&manifest(&ids[0]));
    for id in &ids[1..] {
        let layers = manifest_layers(&manifest(id));
        shared.retain(|l| layers.contains(l));
    }
    let shared = shared
        .into_iter()
        .max_by_key(|l| {
            std::fs::metadata(root.join(format!("layers/{l}.tar.zst")))
                .unwrap()
                .len()
        })
        .expect("a layer every checkpoint shares");
    let layer = root.join(format!("layers/{shared}.tar.zst"));
    let len = std::fs::metadata(&layer).unwrap().len() as usize;
    flip(&layer, len / 2);

    // verify: E620, the layer named with every checkpoint it breaks.
    let (stdout, stderr) = fails(&h, &["checkpoint", "verify", "--session", &session_id]);
    assert!(stderr.contains("E620"), "{stderr}");
    assert!(
        stdout.contains(&format!("layers/{shared}.tar.zst")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("affects {} checkpoints", ids.len())),
        "{stdout}"
    );
    for id in &ids {
        assert!(stdout.contains(id.as_str()), "{id} not named:\n{stdout}");
    }
    let one = fails(&h, &["checkpoint", "verify", &ids[0]]);
    assert!(one.1.contains("E620"), "{}", one.1);

    // doctor looks at the stores.
    let doctor = String::from_utf8_lossy(&h.run(&["doctor"]).stdout).into_owned();
    assert!(doctor.contains("full check"), "{doctor}");
    assert!(
        doctor.contains(&format!("layers/{shared}.tar.zst")),
        "{doctor}"
    );
    assert!(
        doctor.contains(&format!("affects {} checkpoints", ids.len())),
        "{doctor}"
    );

    // repair from the live workspace (big.bin is still there).
    let repaired = h.ok(&["checkpoint", "repair", "--session", &session_id]);
    for id in &ids {
        assert!(repaired.contains(id.as_str()), "{repaired}");
    }
    assert!(repaired.contains("from the workspace"), "{repaired}");
    let verified = h.ok(&["checkpoint", "verify", "--session", &session_id]);
    assert!(verified.contains("every checkpoint verifies"), "{verified}");
    assert!(
        root.join(format!("damaged/layers/{shared}.tar.zst"))
            .is_file(),
        "the damaged layer is kept aside"
    );
    let again = h.ok(&["checkpoint", "repair", "--session", &session_id]);
    assert!(again.contains("nothing damaged"), "{again}");

    // A damaged manifest (the newest checkpoint's) is damage, not absence.
    let newest = ids.last().unwrap().clone();
    let previous = ids[ids.len() - 2].clone();
    flip(&manifest(&newest), 80);
    let listed = h.json(&["checkpoint", "list", &session_id, "--json"]);
    let row = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == newest.as_str())
        .unwrap_or_else(|| panic!("the damaged checkpoint vanished from the list: {listed:#}"));
    assert!(
        row["damaged"]
            .as_str()
            .is_some_and(|d| d.contains("manifest")),
        "{row:#}"
    );
    let text = h.ok(&["checkpoint", "list", &session_id]);
    assert!(
        text.contains("DAMAGED") && text.contains("[E620]"),
        "{text}"
    );
    let (_, shown) = fails(&h, &["checkpoint", "show", &newest]);
    assert!(shown.contains("E620") && !shown.contains("E205"), "{shown}");
    assert!(shown.contains(newest.as_str()), "{shown}");
    let (_, diffed) = fails(&h, &["checkpoint", "diff", &previous, &newest]);
    assert!(
        diffed.contains("E620") && !diffed.contains("E205"),
        "{diffed}"
    );
    let doctor = String::from_utf8_lossy(&h.run(&["doctor"]).stdout).into_owned();
    assert!(
        doctor.contains(&format!("manifests/{newest}.manifest")),
        "{doctor}"
    );

    // No source holds that manifest: marked unrepairable, and it stays reported.
    let (stdout, stderr) = fails(&h, &["checkpoint", "repair", "--session", &session_id]);
    assert!(stderr.contains("E625"), "{stderr}");
    assert!(stdout.contains(newest.as_str()), "{stdout}");
    // Its advice (issue 14), followed below: verify names what still verifies, and
    // `resume` skips the damaged one for it.
    assert!(
        stderr.contains("`resume` skips them; resume from an older checkpoint that verifies (`parhelia checkpoint verify --session SESSION_ID`)"),
        "{stderr}"
    );
    let (stdout, _) = fails(&h, &["checkpoint", "verify", "--session", &session_id]);
    assert!(stdout.contains("repair found no fix"), "{stdout}");
    let text = h.ok(&["checkpoint", "list", &session_id]);
    assert!(text.contains("DAMAGED"), "{text}");

    // The default resume says what it skipped and restores the newest checkpoint that
    // verifies, byte for byte.
    let ws = h
        .state()
        .join("sessions")
        .join(&session_id)
        .join("workspace");
    std::fs::write(ws.join("big.bin"), b"overwritten").unwrap();
    let resumed = h.ok(&["resume", &session_id, "-m", "Please continue."]);
    assert!(
        resumed.contains(&format!("skipped    {newest} [E620]")),
        "{resumed}"
    );
    assert!(
        resumed.contains(&format!("resumed from {previous}")),
        "{resumed}"
    );
    h.wait_task(&task_id, |t| {
        t["status"] == "completed" || t["status"] == "failed"
    });
    assert!(
        std::fs::read(ws.join("big.bin")).unwrap() == big,
        "the restored big.bin is not byte-identical"
    );
    assert_eq!(
        std::fs::read_to_string(ws.join("a.txt")).unwrap(),
        "first\n"
    );
}
