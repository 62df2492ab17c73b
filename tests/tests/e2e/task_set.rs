//! `task create --set` applies to that task only (issue 14): with a coordinator
//! running, a per-task key reaches that task's launch (its spec, and again its
//! resume), not the next task's, and never the coordinator's own configuration;
//! a coordinator-wide key is refused with E119.

use parhelia_testkit::harness::Harness;
use parhelia_testkit::{Script, Turn};

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ended(t: &serde_json::Value) -> bool {
    matches!(t["status"].as_str(), Some("completed" | "failed"))
}

/// The spec the container of `container_id` was launched with.
fn spec_of(h: &Harness, container_id: &str) -> serde_json::Value {
    let path = h
        .state()
        .join("containers")
        .join(container_id)
        .join("spec.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn a_task_set_applies_to_that_task_only() {
    let h = Harness::new(Script::new([
        Turn::text("A done."),
        Turn::text("B done."),
        Turn::text("A resumed."),
    ]));
    // The coordinator runs (a held task starts it), with its own configuration.
    h.ok(&["task", "create", "held", "--no-dispatch"]);
    let shown_before = h.ok(&["config", "show"]);
    assert!(
        shown_before.starts_with("# in effect in the running coordinator"),
        "{shown_before}"
    );
    let set = [
        "--set",
        "checkpoint.interval_seconds=123",
        "--set",
        "checkpoint.excludes=scratch/,*.tmp",
    ];

    // The dry run shows exactly what the launch uses.
    let mut dry = set.to_vec();
    dry.extend(["task", "create", "A", "--dry-run", "--json"]);
    let plan = h.json(&dry);
    assert_eq!(
        plan["spec"]["checkpoint"]["interval_ms"], 123_000,
        "{plan:#}"
    );
    assert_eq!(
        plan["spec"]["checkpoint"]["excludes"],
        serde_json::json!(["scratch/", "*.tmp"]),
        "{plan:#}"
    );
    assert_eq!(
        plan["config_set"],
        serde_json::json!([
            "checkpoint.interval_seconds=123",
            "checkpoint.excludes=scratch/,*.tmp"
        ])
    );

    // Task A gets them.
    let mut create_a = set.to_vec();
    create_a.extend(["task", "create", "A", "--json"]);
    let a = h.json(&create_a);
    let a_id = a["task_id"].as_str().unwrap().to_string();
    let a_session = a["session_id"].as_str().unwrap().to_string();
    let a_container = a["container_id"].as_str().unwrap().to_string();
    let a_task = h.wait_task(&a_id, ended);
    assert_eq!(a_task["status"], "completed", "{a_task:#}");
    let spec = spec_of(&h, &a_container);
    assert_eq!(spec["checkpoint"]["interval_ms"], 123_000, "{spec:#}");
    assert_eq!(
        spec["checkpoint"]["excludes"],
        serde_json::json!(["scratch/", "*.tmp"])
    );
    // The dry run's spec is the launch's (ids and paths aside).
    assert_eq!(spec["checkpoint"], plan["spec"]["checkpoint"]);

    // Task B, created after it without `--set`, does not.
    let b = h.json(&["task", "create", "B", "--json"]);
    let b_id = b["task_id"].as_str().unwrap().to_string();
    let b_container = b["container_id"].as_str().unwrap().to_string();
    assert_eq!(h.wait_task(&b_id, ended)["status"], "completed");
    let spec = spec_of(&h, &b_container);
    assert_eq!(spec["checkpoint"]["interval_ms"], 600_000, "{spec:#}");
    assert_eq!(spec["checkpoint"]["excludes"], serde_json::json!([]));

    // The values are stored with A: its resume launches with them again.
    h.ok(&["resume", &a_session, "-m", "Once more."]);
    let resumed = h.wait_task(&a_id, |t| {
        ended(t) && t["container_id"] != a_container.as_str()
    });
    assert_eq!(resumed["status"], "completed", "{resumed:#}");
    let spec = spec_of(&h, resumed["container_id"].as_str().unwrap());
    assert_eq!(spec["checkpoint"]["interval_ms"], 123_000, "{spec:#}");

    // The coordinator's own configuration never changed.
    assert_eq!(h.ok(&["config", "show"]), shown_before);

    // A coordinator-wide key cannot be one task's: E119 names it and says
    // what to do; nothing is recorded.
    let tasks_before = h
        .json(&["task", "list", "--json"])
        .as_array()
        .unwrap()
        .len();
    let out = h.run(&[
        "--set",
        "reconciler.poll_interval_seconds=5",
        "task",
        "create",
        "C",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    assert!(
        err.contains("E119")
            && err.contains("reconciler.poll_interval_seconds")
            && err.contains("coordinator reload"),
        "{err}"
    );
    // An unknown key or a bad value is the parser's E100, as everywhere.
    for flag in ["checkpoint.nope=1", "checkpoint.keep_last=many"] {
        let out = h.run(&["--set", flag, "task", "create", "C"]);
        assert!(
            stderr_of(&out).contains("E100"),
            "{flag}: {}",
            stderr_of(&out)
        );
    }
    assert_eq!(
        h.json(&["task", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        tasks_before
    );
}
