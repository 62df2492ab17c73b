//! Faults named truthfully (issue 12, items 6 and 7), end to end with the
//! real `parhelia`, agent, tmux and Claude Code against the scripted model:
//! - a live session's journal deleted while the coordinator is down: after
//!   the restart the stream recovers every event, the session ends
//!   `completed` with its full cost, and the rewrite is journaled;
//! - a live session's journal cut short while the coordinator is down: what
//!   nobody can read back is a recorded `journal_gap` (E515), and the
//!   session still ends right;
//! - a finished session's journal deleted, then resumed: its cost does not
//!   go down;
//! - an older copy of `parhelia.db` put back under a running session: the
//!   rollback is reported (E514) and the running task comes back (not E201,
//!   not an orphan).

use std::path::PathBuf;

use parhelia_testkit::harness::Harness;
use parhelia_testkit::{Script, ToolCall, Turn};

/// claude-opus-5-5 (Claude Code's default): $4/M input, $20/M output.
fn opus_cost(input: u64, output: u64) -> f64 {
    (input as f64 * 4.0 + output as f64 * 20.0) / 1_000_000.0
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// A bash call that waits until the test creates `name` in the workspace.
fn wait_for_file(name: &str) -> ToolCall {
    ToolCall::bash(format!(
        "while [ ! -f {name} ]; do sleep 0.1; done; echo released-{name}"
    ))
}

struct Task {
    task_id: String,
    session_id: String,
}

fn create(h: &Harness, prompt: &str) -> Task {
    let out = h.ok(&["task", "create", prompt, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    Task {
        task_id: v["task_id"].as_str().unwrap().to_string(),
        session_id: v["session_id"].as_str().unwrap().to_string(),
    }
}

fn current_container(h: &Harness, task_id: &str) -> String {
    h.wait_for("the task's container", || {
        h.db()
            .query_row(
                "SELECT container_id FROM tasks WHERE id = ?1",
                [task_id],
                |r| r.get::<_, Option<String>>(0),
            )
            .ok()
            .flatten()
    })
}

fn workspace(h: &Harness, session_id: &str) -> PathBuf {
    h.state()
        .join("sessions")
        .join(session_id)
        .join("workspace")
}

fn journal(h: &Harness, session_id: &str, container_id: &str) -> PathBuf {
    h.state()
        .join("sessions")
        .join(session_id)
        .join("volume/journal")
        .join(format!("{container_id}.jsonl"))
}

/// Waits until the coordinator has stored the bash call that waits for `name`.
fn wait_blocked_on(h: &Harness, task_id: &str, name: &str) {
    h.wait_for(&format!("the bash call waiting for {name}"), || {
        h.task_events(task_id, "tool_call")
            .iter()
            .any(|e| e.to_string().contains(&format!("released-{name}")))
            .then_some(())
    });
}

fn model_ledger(h: &Harness, task_id: &str) -> f64 {
    h.db()
        .query_row(
            "SELECT coalesce(sum(amount_usd), 0) FROM ledger WHERE task_id = ?1 AND kind = 'model'",
            [task_id],
            |r| r.get(0),
        )
        .unwrap()
}

fn coordinator_events(h: &Harness, kind: &str) -> Vec<(String, serde_json::Value)> {
    let db = h.db();
    let mut stmt = db
        .prepare("SELECT message, details FROM coordinator_events WHERE type = ?1 ORDER BY id")
        .unwrap();
    stmt.query_map([kind], |r| {
        let details: String = r.get(1)?;
        Ok((r.get(0)?, serde_json::from_str(&details).unwrap()))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// Events stored for a container are 1..=n without a hole.
fn assert_gap_free(h: &Harness, container_id: &str) -> u64 {
    let seqs: Vec<u64> = h.events(container_id).iter().map(|e| e.0).collect();
    let n = seqs.len() as u64;
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "stored seqs have holes");
    n
}

fn two_turns() -> Script {
    Script::new([
        Turn::tool_use([wait_for_file("release")]).with_usage(1000, 100),
        Turn::text("Done.").with_usage(2000, 200),
    ])
}

#[test]
fn a_live_sessions_deleted_journal_loses_nothing_across_a_coordinator_restart() {
    let h = Harness::new(two_turns());
    let t = create(&h, "Wait for the release file");
    let container = current_container(&h, &t.task_id);
    wait_blocked_on(&h, &t.task_id, "release");
    h.ok(&["coordinator", "stop"]);

    let path = journal(&h, &t.session_id, &container);
    std::fs::remove_file(&path).unwrap();
    // The next command starts a new coordinator, which resumes the stream.
    h.ok(&["reconciler", "run", "--once"]);
    std::fs::write(workspace(&h, &t.session_id).join("release"), "").unwrap();

    let task = h.wait_task(&t.task_id, |t| t["status"] != "running");
    assert_eq!(task["status"], "completed", "{task:#}");
    assert!(task["error_code"].is_null(), "{task:#}");
    let expected = opus_cost(1000, 100) + opus_cost(2000, 200);
    assert!(
        close(model_ledger(&h, &t.task_id), expected),
        "ledger {} vs {expected}",
        model_ledger(&h, &t.task_id)
    );
    assert!(
        close(task["cost_usd"].as_f64().unwrap(), expected),
        "{task:#}"
    );

    // Nothing lost: every event stored once, and the journal is back on the
    // volume with all of them, its rewrite said in it.
    let stored = assert_gap_free(&h, &container);
    let on_disk = std::fs::read_to_string(&path).expect("the journal was rewritten");
    assert_eq!(on_disk.lines().count() as u64, stored);
    let notes = h.task_events(&t.task_id, "agent_error");
    assert!(
        notes
            .iter()
            .any(|e| e.to_string().contains("rewrote its") && e.to_string().contains("none lost")),
        "{notes:#?}"
    );
    assert!(coordinator_events(&h, "journal_gap").is_empty());
}

#[test]
fn a_live_sessions_journal_cut_short_is_a_recorded_gap_and_the_session_ends_right() {
    let h = Harness::new(Script::new([
        Turn::tool_use([wait_for_file("one")]).with_usage(1000, 100),
        Turn::tool_use([wait_for_file("two")]).with_usage(1500, 150),
        Turn::text("Done.").with_usage(2000, 200),
    ]));
    let t = create(&h, "Wait twice");
    let container = current_container(&h, &t.task_id);
    wait_blocked_on(&h, &t.task_id, "one");
    h.ok(&["coordinator", "stop"]);
    let stored_before = assert_gap_free(&h, &container);

    // While nobody follows the agent, it journals the second call...
    std::fs::write(workspace(&h, &t.session_id).join("one"), "").unwrap();
    let path = journal(&h, &t.session_id, &container);
    h.wait_for("the second bash call in the journal", || {
        std::fs::read_to_string(&path)
            .ok()
            .filter(|j| j.contains("released-two"))
            .map(|_| ())
    });
    // ...and then its journal is cut short in place.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();

    h.ok(&["reconciler", "run", "--once"]);
    let gaps = h.wait_for("a journal gap", || {
        let gaps = coordinator_events(&h, "journal_gap");
        (!gaps.is_empty()).then_some(gaps)
    });
    std::fs::write(workspace(&h, &t.session_id).join("two"), "").unwrap();
    let task = h.wait_task(&t.task_id, |t| t["status"] != "running");
    assert_eq!(task["status"], "completed", "{task:#}");

    assert_eq!(gaps.len(), 1, "{gaps:#?}");
    let (message, details) = &gaps[0];
    assert!(message.starts_with("E515"), "{message}");
    assert_eq!(details["from_seq"], stored_before + 1);
    assert_eq!(details["source"], "agent");
    let to_seq = details["to_seq"].as_u64().unwrap();
    // Everything outside the gap is stored, the gap is not papered over.
    let seqs: Vec<u64> = h.events(&container).iter().map(|e| e.0).collect();
    assert!(seqs.iter().all(|s| *s <= stored_before || *s > to_seq));
    let last = *seqs.last().unwrap();
    assert_eq!(
        seqs.len() as u64,
        last - (to_seq - stored_before),
        "only the gap is missing: {seqs:?}"
    );
    // The last turn's figure is the session's whole cost.
    let expected = opus_cost(1000, 100) + opus_cost(1500, 150) + opus_cost(2000, 200);
    assert!(
        close(model_ledger(&h, &t.task_id), expected),
        "ledger {} vs {expected}",
        model_ledger(&h, &t.task_id)
    );
}

#[test]
fn resuming_a_finished_session_whose_journal_was_deleted_never_lowers_its_cost() {
    let h = Harness::new(Script::new([
        Turn::text("First part done.").with_usage(10_000, 1000),
        Turn::text("Second part done.").with_usage(1000, 10),
    ]));
    let t = create(&h, "Do the first part");
    h.wait_task(&t.task_id, |t| t["status"] == "completed");
    let container = current_container(&h, &t.task_id);
    let first = opus_cost(10_000, 1000);
    assert!(close(model_ledger(&h, &t.task_id), first));

    std::fs::remove_file(journal(&h, &t.session_id, &container)).unwrap();
    h.ok(&["resume", &t.session_id, "-m", "Now the second part"]);
    let expected = first + opus_cost(1000, 10);
    // The resume made a new container current; its session's end completes
    // the task, after the turn's cost is stored.
    let task = h.wait_for("the resumed session's end", || {
        let task = h.json(&["task", "show", &t.task_id, "--json"]);
        (task["status"] == "completed" && current_container(&h, &t.task_id) != container)
            .then_some(task)
    });
    let cost = task["cost_usd"].as_f64().unwrap();
    assert!(close(cost, expected), "task cost {cost} vs {expected}");
    assert!(
        close(model_ledger(&h, &t.task_id), expected),
        "ledger {} vs {expected}",
        model_ledger(&h, &t.task_id)
    );
}

#[test]
fn an_older_database_under_a_running_session_is_reported_and_the_task_comes_back() {
    let h = Harness::new(two_turns());
    // The database as it is before the task exists: the "older copy".
    h.ok(&["reconciler", "run", "--once"]);
    let older = h.root().join("older.db");
    h.db()
        .execute("VACUUM INTO ?1", [older.to_string_lossy()])
        .unwrap();

    let t = create(&h, "Wait for the release file");
    let container = current_container(&h, &t.task_id);
    wait_blocked_on(&h, &t.task_id, "release");
    h.ok(&["coordinator", "stop"]);
    let db = h.state().join("parhelia.db");
    for suffix in ["-wal", "-shm"] {
        let mut name = db.clone().into_os_string();
        name.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(name));
    }
    std::fs::rename(&older, &db).unwrap();
    // SQLite's own check cannot see it: the file is consistent, only older.
    let integrity: String = h
        .db()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    let doctor = String::from_utf8_lossy(&h.run(&["doctor"]).stdout).into_owned();
    assert!(doctor.contains("E514"), "{doctor}");
    // Its advice (issue 14), followed: start the coordinator with the command it names,
    // then read what was rebuilt with the one it names next.
    let start = doctor
        .split('`')
        .find(|s| s.starts_with("parhelia reconciler run"))
        .unwrap_or_else(|| panic!("doctor names no command to start the coordinator:\n{doctor}"));
    let args: Vec<&str> = start.split_whitespace().skip(1).collect();
    h.ok(&args);
    assert!(
        doctor.contains("`parhelia events list --type database_rolled_back`"),
        "{doctor}"
    );
    let listed = h.json(&["events", "list", "--type", "database_rolled_back", "--json"]);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert!(listed[0].to_string().contains(&container), "{listed:#?}");
    let reports = coordinator_events(&h, "database_rolled_back");
    assert_eq!(reports.len(), 1, "{reports:#?}");
    assert!(reports[0].0.starts_with("E514"), "{}", reports[0].0);
    assert_eq!(
        reports[0].1["recreated_containers"],
        serde_json::json!([container.clone()])
    );
    assert!(h.coordinator_log().contains("E514"));
    // The task is there and running, its agent ours (not an orphan).
    let task = h.json(&["task", "show", &t.task_id, "--json"]);
    assert_eq!(task["status"], "running", "{task:#}");
    let orphans: i64 = h
        .db()
        .query_row("SELECT count(*) FROM orphans", [], |r| r.get(0))
        .unwrap_or(0);
    assert_eq!(orphans, 0);

    std::fs::write(workspace(&h, &t.session_id).join("release"), "").unwrap();
    let task = h.wait_task(&t.task_id, |t| t["status"] != "running");
    assert_eq!(task["status"], "completed", "{task:#}");
    let expected = opus_cost(1000, 100) + opus_cost(2000, 200);
    assert!(
        close(model_ledger(&h, &t.task_id), expected),
        "ledger {} vs {expected}",
        model_ledger(&h, &t.task_id)
    );
    // Every event came back from the agent, once.
    assert_gap_free(&h, &container);
    let doctor = String::from_utf8_lossy(&h.run(&["doctor"]).stdout).into_owned();
    assert!(doctor.contains("rolled back"), "{doctor}");
}

fn task_count(h: &Harness, task_id: &str) -> i64 {
    h.db()
        .query_row("SELECT count(*) FROM tasks WHERE id = ?1", [task_id], |r| {
            r.get(0)
        })
        .unwrap()
}

#[test]
fn an_ended_task_the_rollback_lost_is_rebuilt_from_its_spec_and_journal() {
    let h = Harness::new(Script::new([
        Turn::tool_use([ToolCall::write("a.txt", "A\n")]).with_usage(1000, 100),
        Turn::text("First done.").with_usage(2000, 200),
    ]));
    h.ok(&["reconciler", "run", "--once"]);
    let older = h.snapshot_db("older.db");

    let t = create(&h, "Write a.txt");
    let done = h.wait_task(&t.task_id, |t| {
        t["status"] != "running" && t["status"] != "pending"
    });
    assert_eq!(done["status"], "completed", "{done:#}");
    let container = current_container(&h, &t.task_id);
    let events = assert_gap_free(&h, &container);
    let ledger = model_ledger(&h, &t.task_id);
    assert!(close(ledger, opus_cost(1000, 100) + opus_cost(2000, 200)));

    h.ok(&["coordinator", "stop"]);
    h.put_back_db(&older);
    assert_eq!(
        task_count(&h, &t.task_id),
        0,
        "the older database lacks the task"
    );

    h.ok(&["reconciler", "run", "--once"]);
    let reports = coordinator_events(&h, "database_rolled_back");
    assert_eq!(reports.len(), 1, "{reports:#?}");
    assert_eq!(
        reports[0].1["rebuilt_from_specs"],
        serde_json::json!([container.clone()]),
        "{reports:#?}"
    );
    // Its outcome, result, events and spend come back from its journal, once.
    let task = h.wait_task(&t.task_id, |t| t["status"] != "running");
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(task["result"], "First done.", "{task:#}");
    assert_eq!(task["prompt"], "Write a.txt", "{task:#}");
    // Every request was answered: no spend is unknown.
    assert_eq!(task["unknown_model_requests"], 0, "{task:#}");
    assert_eq!(assert_gap_free(&h, &container), events);
    assert!(
        close(model_ledger(&h, &t.task_id), ledger),
        "ledger {} vs {ledger}",
        model_ledger(&h, &t.task_id)
    );
    let orphans: i64 = h
        .db()
        .query_row("SELECT count(*) FROM orphans", [], |r| r.get(0))
        .unwrap_or(0);
    assert_eq!(orphans, 0);
    // A second start finds the database in step: reported once.
    h.ok(&["coordinator", "stop"]);
    h.ok(&["reconciler", "run", "--once"]);
    assert_eq!(coordinator_events(&h, "database_rolled_back").len(), 1);
}

#[test]
fn a_resume_the_rollback_lost_decides_the_task_again_from_its_journal() {
    let h = Harness::new(Script::new([
        Turn::text("First done.").with_usage(1000, 100),
        Turn::text("Second done.").with_usage(2000, 200),
    ]));
    let t = create(&h, "Say done");
    let done = h.wait_task(&t.task_id, |t| {
        t["status"] != "running" && t["status"] != "pending"
    });
    assert_eq!(done["status"], "completed", "{done:#}");
    let first = current_container(&h, &t.task_id);
    // The database as it was before the resume.
    let older = h.snapshot_db("older.db");

    h.ok(&["resume", &t.session_id, "-m", "Once more"]);
    let second = h.wait_for("the resume's container", || {
        let c = current_container(&h, &t.task_id);
        (c != first).then_some(c)
    });
    let done = h.wait_task(&t.task_id, |t| {
        t["status"] != "running" && t["status"] != "pending"
    });
    assert_eq!(done["status"], "completed", "{done:#}");
    assert_eq!(done["result"], "Second done.", "{done:#}");
    let both = opus_cost(1000, 100) + opus_cost(2000, 200);
    assert!(close(model_ledger(&h, &t.task_id), both));

    h.ok(&["coordinator", "stop"]);
    h.put_back_db(&older);
    h.ok(&["reconciler", "run", "--once"]);
    let reports = coordinator_events(&h, "database_rolled_back");
    assert_eq!(
        reports[0].1["rebuilt_from_specs"],
        serde_json::json!([second.clone()]),
        "{reports:#?}"
    );
    // The resume's container is the task's again, and its journal says how it ended.
    let task = h.wait_task(&t.task_id, |t| t["status"] != "running");
    assert_eq!(task["status"], "completed", "{task:#}");
    assert_eq!(task["result"], "Second done.", "{task:#}");
    assert_eq!(current_container(&h, &t.task_id), second);
    assert!(
        close(model_ledger(&h, &t.task_id), both),
        "ledger {} vs {both}",
        model_ledger(&h, &t.task_id)
    );
}
