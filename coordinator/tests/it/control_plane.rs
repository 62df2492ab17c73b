//! The control plane end to end: the real `parhelia` CLI and coordinator,
//! real `parhelia-agent` processes with real tmux, real SQLite and gRPC,
//! and a fake `claude` (see `support`). Agents are killed, coordinators are
//! killed and restarted, orphans are started by hand; every wait polls a
//! condition with a deadline.

use std::collections::BTreeSet;

use crate::support::*;

fn ids(created: &serde_json::Value) -> (String, String, String) {
    let field = |k: &str| created[k].as_str().unwrap_or_default().to_string();
    (field("task_id"), field("session_id"), field("container_id"))
}

/// A container's events from the database with the seqs of the journal: the
/// same events, once each, in journal order.
fn assert_db_matches_journal(world: &World, session_id: &str, container_id: &str) {
    let journal = world.journal(session_id, container_id);
    let stored = world.stored_events(container_id);
    let seqs: Vec<u64> = stored.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        (1..=journal.len() as u64).collect::<Vec<_>>(),
        "every journaled event once, in order"
    );
    for ((_, payload), line) in stored.iter().zip(&journal) {
        assert_eq!(payload, line);
    }
}

/// SIGKILL an agent: the reconciler marks its container lost and the task
/// and session interrupted — once the backend no longer lists it *and* its
/// heartbeats went stale (2 s here), never before.
#[test]
fn a_killed_agent_is_lost_and_its_task_interrupted() {
    let mut world = World::new();
    world.set_env("PARHELIA_RECONCILER_STALE_THRESHOLD_SECONDS", "2");
    // Under bubblewrap both `bwrap` and the agent carry the label: the
    // backend must still see one container.
    world.set_env("PARHELIA_ISOLATION", "auto");
    let (task_id, session_id, container_id) = ids(&world.create("please hang"));
    world.wait_for("a heartbeat and a health", || {
        let c = world.json(&["container", "show", &container_id, "--json"]);
        (c["state"] == "running" && c["last_heartbeat_at"].is_string() && c["health"] == "healthy")
            .then_some(())
    });
    let listed = world.json(&["container", "list", "--json"]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed:#}");
    let report = world.json(&["reconciler", "run", "--once", "--json"]);
    assert_eq!(
        report["drift"]["observed"], 1,
        "one container, however many processes: {report:#}"
    );
    assert_eq!(report["drift"]["unexpected"], serde_json::json!([]));

    let pid = world.agent_pid(&container_id).unwrap();
    kill(pid, "KILL");
    let task = world.wait_task(&task_id, "interrupted");
    assert_eq!(task["error_code"], "E503", "{task:#}");
    let container = world.json(&["container", "show", &container_id, "--json"]);
    assert_eq!(container["state"], "lost");
    assert_eq!(container["health"], "dead");
    let session = world.json(&["session", "show", &session_id, "--json"]);
    assert_eq!(session["outcome"], "interrupted", "{session:#}");

    // The verdict waited for the stale threshold.
    let lost = world.json(&["events", "list", "--type", "container_lost", "--json"]);
    let lost = lost.as_array().unwrap();
    assert_eq!(lost.len(), 1, "{lost:#?}");
    assert_eq!(lost[0]["source"], "coordinator");
    assert_eq!(lost[0]["container_id"], container_id.as_str());
    assert_eq!(lost[0]["task_id"], task_id.as_str());
    assert!(lost[0]["payload"]["silence_ms"].as_i64().unwrap() > 2_000);
    // And it is reported once: later passes find nothing to do.
    let report = world.json(&["reconciler", "run", "--once", "--json"]);
    assert_eq!(report["actions"], serde_json::json!([]), "{report:#}");
    let status = world.json(&["reconciler", "status", "--json"]);
    assert!(
        status["recent_actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "mark_lost"),
        "{status:#}"
    );
}

/// An agent with our label that the coordinator has no record of is an
/// orphan: reported, and with `auto_terminate_orphans` terminated. A process
/// that looks like an agent but lacks our label is never touched, even with
/// an `agent.json` naming it in our containers directory.
#[test]
fn labelled_unknown_agents_are_orphans_and_lookalikes_are_never_touched() {
    let mut world = World::new();
    let coordinator_id = world.coordinator_id();
    world.ok(&["reconciler", "run", "--once"]);

    // Look-alikes: an agent-named script with `run --spec`, one without any
    // label and one with another coordinator's label.
    let fake_agent = world.root().join("bin/parhelia-agent");
    std::fs::write(
        &fake_agent,
        "#!/bin/sh\nsleep 300 & s=$!\ntrap 'kill $s; exit 0' TERM\nwait $s\n",
    )
    .unwrap();
    std::fs::set_permissions(
        &fake_agent,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut lookalikes = Vec::new();
    for (cid, label) in [
        ("ctr-100ca11e", None),
        ("ctr-200ca11e", Some("parhelia.coordinator=coord-elsewhere")),
    ] {
        let dir = world.container_dir(cid);
        std::fs::create_dir_all(dir.join("runtime")).unwrap();
        std::fs::write(
            dir.join("spec.json"),
            serde_json::json!({"container_id": cid, "session_id": "sess-x",
                "runtime_dir": dir.join("runtime"), "volume_dir": dir.join("volume")})
            .to_string(),
        )
        .unwrap();
        let mut cmd = std::process::Command::new(&fake_agent);
        cmd.args(["run", "--spec"]).arg(dir.join("spec.json"));
        if let Some(label) = label {
            cmd.args(["--label", label]);
        }
        let child = cmd.spawn().unwrap();
        std::fs::write(
            dir.join("runtime/agent.json"),
            serde_json::json!({"version": 1, "pid": child.id(), "grpc_addr": "127.0.0.1:9",
                "container_id": cid, "session_id": "sess-x"})
            .to_string(),
        )
        .unwrap();
        lookalikes.push((cid, child.id()));
        world.children.push(child);
    }

    // Policy off: the orphan is reported, and left running.
    let orphan_pid = world.start_unrecorded_agent(
        "ctr-0e9a0001",
        &format!("parhelia.coordinator={coordinator_id}"),
    );
    world.wait_for("the orphan reported", || {
        let found = world.json(&[
            "events",
            "list",
            "--type",
            "orphan_detected",
            "--container",
            "ctr-0e9a0001",
            "--json",
        ]);
        (found.as_array().unwrap().len() == 1).then_some(())
    });
    let report = world.json(&["reconciler", "run", "--once", "--json"]);
    assert_eq!(
        report["actions"],
        serde_json::json!([]),
        "reported once: {report:#}"
    );
    assert_eq!(
        report["drift"]["unexpected"],
        serde_json::json!(["ctr-0e9a0001"])
    );
    let terminated = world.json(&["events", "list", "--type", "orphan_terminated", "--json"]);
    assert_eq!(terminated, serde_json::json!([]));
    let listed = world.json(&["container", "list", "--state", "orphaned", "--json"]);
    assert_eq!(listed[0]["id"], "ctr-0e9a0001", "{listed:#}");
    assert_eq!(listed[0]["known"], false);
    assert!(pid_alive(orphan_pid as i32), "policy off: not terminated");

    // `cleanup` names it; `cleanup --terminate --dry-run` changes nothing.
    let cleanup = world.ok(&["cleanup"]);
    assert!(cleanup.contains("ctr-0e9a0001"), "{cleanup}");
    let dry = world.ok(&["cleanup", "--terminate", "--dry-run"]);
    assert!(dry.contains("would be terminated"), "{dry}");
    assert!(pid_alive(orphan_pid as i32));

    // Policy on (a coordinator started with it): terminated by the
    // coordinator's own passes.
    world.ok(&["coordinator", "stop"]);
    world.set_env("PARHELIA_RECONCILER_AUTO_TERMINATE_ORPHANS", "true");
    let second_pid = world.start_unrecorded_agent(
        "ctr-0e9a0002",
        &format!("parhelia.coordinator={coordinator_id}"),
    );
    world.ok(&["status"]);
    world.ok(&["reconciler", "run", "--once"]);
    world.wait_for("both orphans terminated", || {
        (!pid_alive(orphan_pid as i32) && !pid_alive(second_pid as i32)).then_some(())
    });
    let terminated = world.json(&["events", "list", "--type", "orphan_terminated", "--json"]);
    let terminated: BTreeSet<&str> = terminated
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["container_id"].as_str().unwrap())
        .collect();
    assert!(terminated.contains("ctr-0e9a0001") && terminated.contains("ctr-0e9a0002"));

    // The look-alikes were never touched, reported or listed.
    for (cid, pid) in &lookalikes {
        assert!(pid_alive(*pid as i32), "{cid} was touched");
        let events = world.json(&["events", "list", "--container", cid, "--json"]);
        assert_eq!(events, serde_json::json!([]), "{cid}: {events:#}");
    }
    let all = world.json(&["container", "list", "--json"]);
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .all(|c| !c["id"].as_str().unwrap().ends_with("0ca11e")),
        "{all:#}"
    );
}

/// Kill the coordinator (SIGKILL) while an agent streams; the agent keeps
/// journaling. A restarted coordinator re-attaches and replays what it
/// missed: the database holds every event exactly once, in order.
#[test]
fn a_coordinator_killed_mid_stream_loses_and_duplicates_nothing() {
    let world = World::new();
    let (task_id, session_id, container_id) = ids(&world.create("stream a lot"));
    world.wait_for("some events stored", || {
        (world.stored_events(&container_id).len() >= 10).then_some(())
    });
    let coordinator = world.coordinator_pid().unwrap();
    kill(coordinator, "KILL");
    world.wait_for("the coordinator gone", || {
        (!pid_alive(coordinator)).then_some(())
    });
    let stored_before = world.stored_events(&container_id).len();
    world.wait_for("the agent journaling while nobody listens", || {
        (world.journal(&session_id, &container_id).len() > stored_before + 20).then_some(())
    });
    // `task watch` starts a coordinator, which re-attaches and catches up.
    let watched = world.ok(&["task", "watch", &task_id]);
    assert!(watched.contains("chunk 120"), "{watched}");
    assert_eq!(world.task(&task_id)["status"], "completed");
    assert_db_matches_journal(&world, &session_id, &container_id);
}

/// An agent that finished while the coordinator was away and is gone too:
/// its journal on the volume is read, the session ends as it really did
/// (completed, not lost), and no event is missing.
#[test]
fn a_gone_agents_journal_tail_is_ingested_before_any_verdict() {
    let world = World::new();
    let (task_id, session_id, container_id) = ids(&world.create("stream then finish"));
    world.wait_for("some events stored", || {
        (!world.stored_events(&container_id).is_empty()).then_some(())
    });
    let coordinator = world.coordinator_pid().unwrap();
    kill(coordinator, "KILL");
    world.wait_for("the session finished in the journal", || {
        world
            .journal(&session_id, &container_id)
            .last()
            .filter(|e| e["kind"].get("session_finished").is_some())
            .map(|_| ())
    });
    let agent = world.agent_pid(&container_id).unwrap();
    kill(agent, "KILL");
    world.wait_for("the agent gone", || (!pid_alive(agent)).then_some(()));
    assert_eq!(
        world.task(&task_id)["status"],
        "running",
        "nobody knows yet"
    );

    world.ok(&["reconciler", "run", "--once"]);
    let task = world.wait_task(&task_id, "completed");
    assert!(
        task["result"].as_str().unwrap().starts_with("done"),
        "{task:#}"
    );
    assert_db_matches_journal(&world, &session_id, &container_id);
    let container = world.json(&["container", "show", &container_id, "--json"]);
    assert_eq!(container["state"], "terminated", "{container:#}");
}

/// Cancel a running task: the agent stops Claude Code, the session ends
/// cancelled, the container is stopped and the agent process has exited.
#[test]
fn cancel_stops_a_running_task_and_its_container() {
    let world = World::new();
    let (task_id, _, container_id) = ids(&world.create("hang until cancelled"));
    world.wait_for("the turn running", || {
        world
            .stored_events(&container_id)
            .iter()
            .any(|(_, e)| e["kind"].get("claude_init").is_some())
            .then_some(())
    });
    let agent = world.agent_pid(&container_id).unwrap();
    let cancelled = world.json(&[
        "task",
        "cancel",
        &task_id,
        "--reason",
        "changed my mind",
        "--json",
    ]);
    assert_eq!(cancelled["status"], "cancelled", "{cancelled:#}");
    assert_eq!(cancelled["container_id"], container_id.as_str());
    assert_eq!(cancelled["container_state"], "terminated", "{cancelled:#}");
    assert!(!pid_alive(agent), "the agent exited");
    let task = world.task(&task_id);
    assert_eq!(task["error_code"], "E601", "{task:#}");
    let events = world.stored_events(&container_id);
    let finished = events
        .iter()
        .find_map(|(_, e)| e["kind"].get("session_finished").cloned())
        .expect("session_finished stored");
    assert_eq!(finished["outcome"], 3, "CANCELLED: {finished}");
    assert!(
        events
            .iter()
            .any(|(_, e)| e["kind"]["stop_requested"]["reason"] == "changed my mind"),
        "{events:#?}"
    );
    let log = world.json(&[
        "events",
        "list",
        "--task",
        &task_id,
        "--source",
        "coordinator",
        "--json",
    ]);
    let types: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(
        types.contains(&"task_dispatched") && types.contains(&"task_cancelled"),
        "{types:?}"
    );
    // A cancelled task cannot be cancelled again.
    let again = world.run(&["task", "cancel", &task_id]);
    assert_eq!(again.status.code(), Some(7));
    assert!(String::from_utf8_lossy(&again.stderr).starts_with("error[E603]"));
}

/// With `max_concurrent_workers = 1`, a second task waits in the queue and
/// dispatches by itself when the first ends; `--no-dispatch` holds a task
/// until `task dispatch`.
#[test]
fn the_queue_respects_max_concurrent_workers() {
    let mut world = World::new();
    world.set_env("PARHELIA_ORCHESTRATOR_MAX_CONCURRENT_WORKERS", "1");
    let (first, _, first_container) = ids(&world.create("hang first"));
    let second = world.create("quick second");
    assert_eq!(second["queued"], true, "{second:#}");
    assert_eq!(second["queue_position"], 1);
    let second = second["task_id"].as_str().unwrap().to_string();
    let held = world.json(&["task", "create", "quick third", "--no-dispatch", "--json"]);
    assert_eq!(held["held"], true);
    let third = held["task_id"].as_str().unwrap().to_string();
    assert_eq!(world.task(&second)["queue"], "queued");
    assert_eq!(world.task(&third)["queue"], "held");

    let plan = world.json(&["task", "dispatch", &third, "--dry-run", "--json"]);
    assert_eq!(plan["dispatched"], serde_json::json!([]), "{plan:#}");
    assert_eq!(plan["queued"][1]["task_id"], third.as_str(), "{plan:#}");
    assert_eq!(
        world.task(&third)["queue"],
        "held",
        "a dry run changes nothing"
    );

    world.wait_for("the first turn running", || {
        world
            .stored_events(&first_container)
            .iter()
            .any(|(_, e)| e["kind"].get("claude_init").is_some())
            .then_some(())
    });
    assert_eq!(world.task(&second)["status"], "pending");
    world.ok(&["task", "cancel", &first]);
    let done = world.wait_task(&second, "completed");
    let first_task = world.task(&first);
    assert!(
        done["started_at"].as_str().unwrap() >= first_task["finished_at"].as_str().unwrap(),
        "the second started after the first ended: {done:#} {first_task:#}"
    );
    assert_eq!(
        world.task(&third)["status"],
        "pending",
        "held tasks stay held"
    );
    let dispatched = world.json(&["task", "dispatch", &third, "--json"]);
    assert_eq!(
        dispatched["dispatched"][0]["task_id"],
        third.as_str(),
        "{dispatched:#}"
    );
    world.wait_task(&third, "completed");
}

/// A failed task retried runs as a new attempt with a new session; the
/// first attempt's session and events stay. Deleting it removes its rows
/// and directories.
#[test]
fn retry_runs_a_new_attempt_and_delete_removes_everything() {
    let world = World::new();
    let (task_id, first_session, first_container) = ids(&world.create("fail-once please"));
    let failed = world.wait_task(&task_id, "failed");
    assert_eq!(failed["error_code"], "E600", "{failed:#}");
    let retried = world.json(&["task", "retry", &task_id, "--json"]);
    assert_eq!(retried["attempt"], 2, "{retried:#}");
    let second_session = retried["session_id"].as_str().unwrap().to_string();
    assert_ne!(second_session, first_session);
    let done = world.wait_task(&task_id, "completed");
    assert_eq!(done["attempt"], 2);
    assert_eq!(done["error_code"], serde_json::Value::Null, "{done:#}");
    let sessions = world.json(&["session", "list", "--json"]);
    let attempts: BTreeSet<(String, u64)> = sessions
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_string(),
                s["attempt"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        attempts.contains(&(first_session.clone(), 1))
            && attempts.contains(&(second_session.clone(), 2))
    );
    assert!(
        !world.stored_events(&first_container).is_empty(),
        "history kept"
    );

    // A completed task cannot be retried.
    let again = world.run(&["task", "retry", &task_id]);
    assert!(String::from_utf8_lossy(&again.stderr).starts_with("error[E603]"));

    // Delete: the agents are gone first (they linger after finishing).
    for container in world
        .json(&["container", "list", "--json"])
        .as_array()
        .unwrap()
    {
        let id = container["id"].as_str().unwrap();
        world.wait_for("the agent to exit", || {
            world
                .agent_pid(id)
                .filter(|p| pid_alive(*p))
                .is_none()
                .then_some(())
        });
    }
    let deleted = world.json(&["task", "delete", &task_id, "--json"]);
    assert_eq!(deleted["deleted"][0], task_id.as_str());
    assert!(!world.state().join("sessions").join(&first_session).exists());
    assert!(
        !world
            .state()
            .join("sessions")
            .join(&second_session)
            .exists()
    );
    assert!(!world.container_dir(&first_container).exists());
    let gone = world.run(&["task", "show", &task_id]);
    assert_eq!(gone.status.code(), Some(3));
    assert!(world.stored_events(&first_container).is_empty());
}

/// `reconciler run` (without `--once`) prints a pass now, then each pass
/// the coordinator makes, until interrupted.
#[test]
fn reconciler_run_follows_the_coordinators_passes_until_interrupted() {
    let world = World::new();
    let (run, lines) = spawn_lines(world.command(&["reconciler", "run", "--json"]));
    let first = read_until(&lines, "the manual pass", |l| {
        l.contains("\"trigger\":\"manual\"")
    });
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    read_until(&lines, "a later pass", |l| {
        serde_json::from_str::<serde_json::Value>(l)
            .is_ok_and(|r| r["started_at_ms"].as_i64() > first["started_at_ms"].as_i64())
    });
    assert!(interrupt_and_wait(run).success());
}

/// `container terminate` SIGTERMs the agent: the session ends interrupted
/// (resumable), and the container is terminated once it is gone.
#[test]
fn terminating_a_container_interrupts_its_session() {
    let world = World::new();
    let (task_id, session_id, container_id) = ids(&world.create("hang until terminated"));
    world.wait_for("the turn running", || {
        world
            .stored_events(&container_id)
            .iter()
            .any(|(_, e)| e["kind"].get("claude_init").is_some())
            .then_some(())
    });
    let out = world.json(&["container", "terminate", &container_id, "--json"]);
    assert_eq!(out["known"], true, "{out:#}");
    let task = world.wait_task(&task_id, "interrupted");
    assert_eq!(task["error_code"], "E602", "{task:#}");
    world.wait_for("the container terminated", || {
        let c = world.json(&["container", "show", &container_id, "--json"]);
        (c["state"] == "terminated").then_some(())
    });
    let session = world.json(&["session", "show", &session_id, "--json"]);
    assert_eq!(session["outcome"], "interrupted", "{session:#}");
    let unknown = world.run(&["container", "terminate", "ctr-deadbeef"]);
    assert!(String::from_utf8_lossy(&unknown.stderr).starts_with("error[E203]"));
}

/// `doctor` finds a container on record as running whose agent is gone and
/// a stale socket; `doctor --fix` removes the socket and runs the
/// reconciler, after which both checks pass.
#[test]
fn doctor_finds_and_fixes_a_gone_agent_and_a_stale_socket() {
    let mut world = World::new();
    world.set_env("PARHELIA_RECONCILER_STALE_THRESHOLD_SECONDS", "0.1");
    {
        let db = parhelia::db::Db::open(&world.root().join(".parhelia/parhelia.db")).unwrap();
        db.insert_launch(&parhelia::db::NewLaunch {
            task_id: "task-0000d0c0".into(),
            session_id: "sess-0000d0c0".into(),
            container_id: "ctr-0000d0c0".into(),
            claude_session_id: "uuid".into(),
            prompt: "p".into(),
            task_type: "generic".into(),
            backend: "local".into(),
            workspace: None,
            model: None,
            max_turns: None,
            mode: "headless".into(),
            secret: parhelia::ids::SessionSecret::from_stored("s".into()),
            workspace_dir: "/w".into(),
            volume_dir: "/v".into(),
        })
        .unwrap();
        db.transition_task(
            "task-0000d0c0",
            parhelia::task_state::TaskStatus::Running,
            &Default::default(),
        )
        .unwrap();
        db.set_container_starting("ctr-0000d0c0", Some(1)).unwrap();
        db.set_container_running("ctr-0000d0c0", "http://127.0.0.1:9", None)
            .unwrap();
    }
    std::fs::write(world.root().join(".parhelia/coordinator.sock"), "").unwrap();
    let report = world.run(&["doctor"]);
    let text = String::from_utf8_lossy(&report.stdout);
    assert!(
        text.contains("warn  containers   marked running but their agent is gone: ctr-0000d0c0"),
        "{text}"
    );
    assert!(text.contains("warn  coordinator  stale socket"), "{text}");

    let fixed = world.run(&["doctor", "--fix", "--json"]);
    let checks: serde_json::Value = serde_json::from_slice(&fixed.stdout).unwrap();
    let check = |name: &str| {
        checks
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(check("containers")["repaired"], true, "{checks:#}");
    assert_eq!(check("coordinator")["repaired"], true, "{checks:#}");
    let task = world.wait_task("task-0000d0c0", "interrupted");
    assert_eq!(task["error_code"], "E503");
    let again = world.run(&["doctor"]);
    let text = String::from_utf8_lossy(&again.stdout);
    assert!(text.contains("ok    containers"), "{text}");
    assert!(text.contains("ok    coordinator  running"), "{text}");
}
