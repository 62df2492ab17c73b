//! The session image on the Modal stand-in: `parhelia modal setup` builds the one
//! recipe (`images/Dockerfile`, through the real bridge and `app.py`'s
//! `Image.from_dockerfile`), tagged with the Claude Code and agent versions,
//! checks the agent it ships, shows each step as `image_build` progress, and
//! `--force-build` rebuilds it. What was built is read back from the stand-in's
//! records (`images/<image id>.json`, `images/builds.jsonl`).

use std::path::Path;
use std::process::Output;

use parhelia_testkit::harness::{Harness, bin_dir};
use parhelia_testkit::{Script, Turn};

/// `image_build`'s progress lines on stderr (`--progress json`).
fn progress_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with(r#"{"type":"progress""#))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The step texts of the progress lines, checking every line is `image_build`'s
/// and the last is the one `finish`, with `ok` as given.
fn steps_then_finish(lines: &[serde_json::Value], ok: bool) -> Vec<String> {
    assert!(lines.iter().all(|l| l["op"] == "image_build"), "{lines:#?}");
    let (last, before) = lines.split_last().expect("progress lines");
    assert_eq!(
        (last["event"].as_str(), last["ok"].as_bool()),
        (Some("finish"), Some(ok)),
        "{lines:#?}"
    );
    assert!(before.iter().all(|l| l["event"] == "step"), "{lines:#?}");
    before
        .iter()
        .map(|l| l["step"].as_str().unwrap().to_string())
        .collect()
}

fn builds(standin: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(standin.join("images/builds.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn setup_report(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn step_detail<'a>(report: &'a serde_json::Value, name: &str) -> &'a str {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == name)
        .and_then(|s| s["detail"].as_str())
        .unwrap_or_else(|| panic!("no {name} step: {report:#}"))
}

#[test]
fn modal_setup_builds_the_dockerfile_with_progress_and_force_build_rebuilds_it() {
    let mut h = Harness::new(Script::new([Turn::text("unused")]));
    let standin = h.use_modal_stand_in();
    let agent = bin_dir().join("parhelia-agent");
    let agent_version = String::from_utf8(
        std::process::Command::new(&agent)
            .arg("--version")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .rsplit(' ')
    .next()
    .unwrap()
    .to_string();
    let dockerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/Dockerfile"))
            .unwrap();
    let claude_pin = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("ARG CLAUDE_CODE_VERSION="))
        .unwrap()
        .to_string();
    let tag = format!("cc{claude_pin}-agent{agent_version}");

    // A secret missing: the setup fails at that step and its progress finishes not ok.
    let secret = standin.join("secrets/anthropic-api-key.json");
    let kept = std::fs::read(&secret).unwrap();
    std::fs::remove_file(&secret).unwrap();
    let out = h.run(&["--progress", "json", "modal", "setup"]);
    assert!(!out.status.success());
    let steps = steps_then_finish(&progress_lines(&out), false);
    assert!(
        steps
            .last()
            .unwrap()
            .starts_with("checking the Modal secret"),
        "{steps:?}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("E405"));
    assert!(builds(&standin).is_empty());
    std::fs::write(&secret, kept).unwrap();

    // Set up: every step shown as it begins, then `finish` ok.
    let out = h.run(&["--progress", "json", "modal", "setup", "--json"]);
    let report = setup_report(&out);
    let names: Vec<&str> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["sdk", "token", "app", "secret", "volume", "agent", "image"]
    );
    let steps = steps_then_finish(&progress_lines(&out), true);
    let starts: Vec<&str> = steps.iter().map(|s| s.split(' ').next().unwrap()).collect();
    assert_eq!(
        starts,
        [
            "asking", "starting", "checking", "checking", "creating", "checking", "building"
        ],
        "{steps:#?}"
    );
    assert!(
        steps.last().unwrap().contains("images/Dockerfile"),
        "{steps:?}"
    );

    // The agent: this workspace's debug build, shipped with the coded warning.
    let agent_step = step_detail(&report, "agent");
    assert!(
        agent_step.contains(&format!("parhelia-agent {agent_version}, debug build"))
            && agent_step.contains("warning E598")
            && agent_step.contains("the image has 2.36"),
        "{agent_step}"
    );

    // The image: the Dockerfile, as read at the build, tagged with both versions.
    let image_step = step_detail(&report, "image");
    assert!(
        image_step.starts_with(&format!("{tag} (im-")),
        "{image_step}"
    );
    let built = builds(&standin);
    assert_eq!(built.len(), 1, "{built:#?}");
    assert_eq!(
        (&built[0]["force_build"], &built[0]["cached"]),
        (&serde_json::json!(false), &serde_json::json!(false))
    );
    let image_id = built[0]["image_id"].as_str().unwrap();
    assert!(image_step.contains(image_id), "{image_step}");
    let record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(standin.join(format!("images/{image_id}.json"))).unwrap(),
    )
    .unwrap();
    let step = &record["steps"][0];
    assert_eq!(step[0], "from_dockerfile", "{record:#}");
    assert_eq!(
        step[3]["dockerfile"],
        serde_json::json!(dockerfile.split('\n').collect::<Vec<_>>())
    );
    assert_eq!(
        step[2]["build_args"],
        format!(
            "{{'CLAUDE_CODE_VERSION': '{claude_pin}', 'PARHELIA_AGENT_VERSION': '{agent_version}'}}"
        )
    );
    let context: Vec<&String> = step[3]["context"].as_object().unwrap().keys().collect();
    assert_eq!(context, ["parhelia-agent"]);
    // The build context is made in the bridge's own directory, one for this agent.
    let contexts: Vec<_> = std::fs::read_dir(h.state().join("modal/bridge/image-context"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(contexts.len(), 1, "{contexts:?}");
    assert_eq!(
        std::fs::read(contexts[0].join("parhelia-agent")).unwrap(),
        std::fs::read(&agent).unwrap()
    );

    // --force-build: built again, forced, whatever the cache holds.
    let out = h.run(&[
        "--progress",
        "json",
        "modal",
        "setup",
        "--force-build",
        "--json",
    ]);
    let report = setup_report(&out);
    let steps = steps_then_finish(&progress_lines(&out), true);
    assert!(
        steps
            .last()
            .unwrap()
            .starts_with("rebuilding the session image"),
        "{steps:?}"
    );
    assert!(step_detail(&report, "image").ends_with(", rebuilt)"));
    let built = builds(&standin);
    assert_eq!(built.len(), 2, "{built:#?}");
    assert_eq!(
        (&built[1]["force_build"], &built[1]["cached"]),
        (&serde_json::json!(true), &serde_json::json!(false))
    );

    // Without --force-build, Modal's cache has it.
    let report = h.json(&["modal", "setup", "--json"]);
    assert!(step_detail(&report, "image").starts_with(&tag));
    let built = builds(&standin);
    assert_eq!(
        (&built[2]["force_build"], &built[2]["cached"]),
        (&serde_json::json!(false), &serde_json::json!(true))
    );
}
