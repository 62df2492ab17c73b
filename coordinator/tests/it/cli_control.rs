//! The control plane's read commands through the real `parhelia` binary,
//! against a database prepared through the library: event filters, export
//! and replay return exactly the matching events; configuration layering
//! and unknown keys; container and task listings; cleanup.

use std::collections::BTreeSet;

use parhelia::db::{ContainerRef, Db, NewCoordinatorEvent, NewLaunch, TaskUpdate};
use parhelia::event_filter::{EventFilter, EventSource};
use parhelia::ids::{SessionSecret, rfc3339_ms};
use parhelia::task_state::TaskStatus;
use parhelia_proto::{
    ApiRetry, AssistantText, Event, SessionFinished, SessionOutcome, ToolCall, ToolResult,
    event::Kind,
};

use crate::support::*;

const T0: i64 = 1_700_000_000_000;

fn launch(db: &Db, n: u32) -> ContainerRef {
    let target = ContainerRef {
        task_id: format!("task-0000000{n}"),
        session_id: format!("sess-0000000{n}"),
        container_id: format!("ctr-0000000{n}"),
    };
    db.insert_launch(&NewLaunch {
        task_id: target.task_id.clone(),
        session_id: target.session_id.clone(),
        container_id: target.container_id.clone(),
        claude_session_id: "uuid".into(),
        prompt: format!("prompt {n}"),
        task_type: "generic".into(),
        backend: "local".into(),
        workspace: None,
        model: None,
        max_turns: None,
        mode: "headless".into(),
        secret: SessionSecret::from_stored("s3cret".into()),
        workspace_dir: "/w".into(),
        volume_dir: "/v".into(),
    })
    .unwrap();
    target
}

fn event(seq: u64, ts: i64, kind: Kind) -> Event {
    Event {
        seq,
        ts_ms: ts,
        kind: Some(kind),
    }
}

/// Two tasks with agent events of several types and levels, and
/// coordinator events with and without a container.
fn prepared(world: &World) -> (Db, Vec<ContainerRef>) {
    let db = Db::open(&world.root().join(".parhelia/parhelia.db")).unwrap();
    let a = launch(&db, 1);
    let b = launch(&db, 2);
    for t in [&a, &b] {
        db.transition_task(&t.task_id, TaskStatus::Running, &TaskUpdate::default())
            .unwrap();
    }
    let text = |t: &str| {
        Kind::AssistantText(AssistantText {
            message_id: "m".into(),
            text: t.into(),
            ..Default::default()
        })
    };
    let events_a = [
        event(1, T0, text("looking")),
        event(
            2,
            T0 + 1_000,
            Kind::ToolCall(ToolCall {
                tool_use_id: "t1".into(),
                name: "Bash".into(),
                input_json: r#"{"command":"ls"}"#.into(),
                ..Default::default()
            }),
        ),
        event(
            3,
            T0 + 2_000,
            Kind::ToolResult(ToolResult {
                tool_use_id: "t1".into(),
                is_error: true,
                content: "no such file".into(),
                truncated: false,
                ..Default::default()
            }),
        ),
        event(
            4,
            T0 + 3_000,
            Kind::ApiRetry(ApiRetry {
                attempt: 1,
                max_retries: 3,
                retry_delay_ms: 500,
                error_status: 529,
                error: "overloaded".into(),
            }),
        ),
        event(5, T0 + 4_000, text("done")),
    ];
    for e in &events_a {
        db.record_event(&a, e).unwrap();
    }
    let events_b = [
        event(1, T0 + 500, text("hello")),
        event(
            2,
            T0 + 2_500,
            Kind::SessionFinished(SessionFinished {
                outcome: SessionOutcome::Failed as i32,
                error_code: "E505".into(),
                error_message: "the model API failed".into(),
                result: String::new(),
                session_cost_usd: 0.1,
                ..Default::default()
            }),
        ),
    ];
    for e in &events_b {
        db.record_event(&b, e).unwrap();
    }
    db.record_coordinator_event(
        &NewCoordinatorEvent::new("task_dispatched", "info", "task-00000001 dispatched")
            .task(&a.task_id)
            .container(&a.container_id),
    )
    .unwrap();
    db.record_coordinator_event(
        &NewCoordinatorEvent::new("container_lost", "error", "ctr-00000002: lost")
            .task(&b.task_id)
            .container(&b.container_id),
    )
    .unwrap();
    db.record_coordinator_event(&NewCoordinatorEvent::new(
        "reconciler_run",
        "info",
        "reconciler (manual): 1 action(s)",
    ))
    .unwrap();
    (db, vec![a, b])
}

fn keys(rows: &serde_json::Value) -> Vec<(String, i64)> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["source"].as_str().unwrap().to_string(),
                r["id"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// Every combination of filters returns exactly the rows the filter's
/// definition (`EventFilter::matches`) selects, in the same order.
#[test]
fn event_filters_return_exactly_the_matching_events() {
    let world = World::new();
    let (db, targets) = prepared(&world);
    let all = db.query_events(&EventFilter::default(), None).unwrap();
    assert_eq!(all.len(), 10);
    let window = (rfc3339_ms(T0 + 900), rfc3339_ms(T0 + 2_600));
    let type_options: [&[&str]; 3] = [&[], &["assistant_text"], &["tool_result,container_lost"]];
    let level_options: [&[&str]; 3] = [&[], &["error"], &["warning", "error"]];
    let container_options = [None, Some(targets[0].container_id.as_str())];
    let task_options = [None, Some(targets[1].task_id.as_str())];
    let source_options = [None, Some("agent"), Some("coordinator")];
    let time_options = [
        (None, None),
        (Some(window.0.as_str()), Some(window.1.as_str())),
    ];
    let mut checked = 0;
    for types in type_options {
        for levels in level_options {
            for container in container_options {
                for task in task_options {
                    for source in source_options {
                        for (since, until) in time_options {
                            let mut args = vec!["events", "list", "--json", "--limit", "0"];
                            for t in types {
                                args.extend(["--type", t]);
                            }
                            for l in levels {
                                args.extend(["--level", l]);
                            }
                            if let Some(c) = container {
                                args.extend(["--container", c]);
                            }
                            if let Some(t) = task {
                                args.extend(["--task", t]);
                            }
                            if let Some(s) = source {
                                args.extend(["--source", s]);
                            }
                            if let (Some(s), Some(u)) = (since, until) {
                                args.extend(["--since", s, "--until", u]);
                            }
                            let filter = EventFilter {
                                container_id: container.map(str::to_string),
                                task_id: task.map(str::to_string),
                                source: source.map(|s| EventSource::parse(s).unwrap()),
                                since_ms: since.map(|_| T0 + 900),
                                until_ms: until.map(|_| T0 + 2_600),
                                ..EventFilter::default()
                            }
                            .with_lists(
                                &types.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
                                &levels.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
                            )
                            .unwrap();
                            let expected: Vec<(String, i64)> = all
                                .iter()
                                .filter(|r| filter.matches(r))
                                .map(|r| (r.source.as_str().to_string(), r.id))
                                .collect();
                            let got = keys(&world.json(&args));
                            assert_eq!(got, expected, "{args:?}");
                            checked += 1;
                        }
                    }
                }
            }
        }
    }
    assert_eq!(checked, 216);

    // `--limit N` keeps the last N, still in order.
    let last = keys(&world.json(&["events", "list", "--json", "--limit", "3"]));
    let all_keys: Vec<(String, i64)> = all
        .iter()
        .map(|r| (r.source.as_str().to_string(), r.id))
        .collect();
    assert_eq!(last, all_keys[all_keys.len() - 3..]);
    // The table fits 80 columns.
    let table = world.ok(&["events", "list"]);
    assert!(table.lines().all(|l| l.chars().count() <= 80), "{table}");
    assert!(table.contains("container_lost"), "{table}");
    // Bad input is coded.
    let bad = world.run(&["events", "list", "--level", "fatal"]);
    assert_eq!(bad.status.code(), Some(2));
    let bad = world.run(&["events", "list", "--since", "yesterday-ish"]);
    assert!(String::from_utf8_lossy(&bad.stderr).starts_with("error[E100]"));
}

#[test]
fn export_writes_exactly_the_matching_events() {
    let world = World::new();
    let (_db, targets) = prepared(&world);
    let listed = world.json(&[
        "events",
        "list",
        "--json",
        "--limit",
        "0",
        "--task",
        &targets[0].task_id,
    ]);
    let jsonl = world.root().join("out.jsonl");
    world.ok(&[
        "events",
        "export",
        jsonl.to_str().unwrap(),
        "--task",
        &targets[0].task_id,
    ]);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(serde_json::Value::from(lines), listed);

    let json = world.root().join("out.json");
    world.ok(&[
        "events",
        "export",
        json.to_str().unwrap(),
        "--format",
        "json",
        "--level",
        "error",
    ]);
    let exported: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let types: Vec<&str> = exported
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["session_finished", "container_lost"]);
    // Agent events carry their journal form and seq.
    let first = &listed[0];
    assert_eq!(first["source"], "agent");
    assert_eq!(first["seq"], 1);
    assert_eq!(
        first["payload"]["kind"]["assistant_text"]["text"],
        "looking"
    );
    assert_eq!(first["time"], rfc3339_ms(T0).as_str());
}

#[test]
fn replay_renders_one_containers_history() {
    let world = World::new();
    let (_db, targets) = prepared(&world);
    let c = &targets[0].container_id;
    let replay = world.json(&["events", "replay", c, "--json"]);
    let seqs: Vec<Option<i64>> = replay
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64())
        .collect();
    assert_eq!(seqs, [Some(1), Some(2), Some(3), Some(4), Some(5), None]);
    assert!(
        replay
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["container_id"] == c.as_str())
    );
    let since = rfc3339_ms(T0 + 2_000);
    let later = world.json(&["events", "replay", c, "--since", &since, "--json"]);
    assert_eq!(later.as_array().unwrap().len(), 4);
    let text = world.ok(&["events", "replay", c]);
    assert!(text.contains("tool_call        Bash $ ls"), "{text}");
    assert!(text.contains("* task_dispatched"), "{text}");
    let missing = world.run(&["events", "replay", "ctr-deadbeef"]);
    assert!(String::from_utf8_lossy(&missing.stderr).starts_with("error[E203]"));
    // `container events` is the same history as a table.
    let table = world.ok(&["container", "events", c]);
    assert_eq!(table.lines().count(), 7, "{table}");
}

#[test]
fn config_layers_report_sources_and_unknown_keys() {
    let mut world = World::new();
    let project = world.root().join(".parhelia/config.toml");
    std::fs::write(
        &project,
        "[orchestrator]\nmax_concurrent_workers = 3\n[reconciler]\npoll_intervall = 5\nstale_threshold_seconds = 30\n",
    )
    .unwrap();
    std::fs::create_dir_all(world.root().join(".config/parhelia")).unwrap();
    std::fs::write(
        world.root().join(".config/parhelia/config.toml"),
        "[reconciler]\nstale_threshold_seconds = 99\nauto_resume = true\n[budget]\ndefault_ceiling_usd = 10\n",
    )
    .unwrap();
    world.set_env("PARHELIA_BUDGET_DEFAULT_CEILING_USD", "12.5");
    let out = world.run(&[
        "config",
        "show",
        "--json",
        "--set",
        "orchestrator.max_concurrent_workers=4",
    ]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("unknown config key").count(),
        0,
        "json: {stderr}"
    );
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let setting = |key: &str| {
        shown["settings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["key"] == key)
            .cloned()
            .unwrap()
    };
    let workers = setting("orchestrator.max_concurrent_workers");
    assert_eq!(
        (workers["value"].clone(), workers["source"]["layer"].clone()),
        (4.into(), "flag".into())
    );
    let stale = setting("reconciler.stale_threshold_seconds");
    assert_eq!(stale["value"], 30.0);
    assert_eq!(stale["source"]["layer"], "project");
    let resume = setting("reconciler.auto_resume");
    assert_eq!(
        (resume["value"].clone(), resume["source"]["layer"].clone()),
        (true.into(), "user".into())
    );
    let ceiling = setting("budget.default_ceiling_usd");
    assert_eq!(ceiling["value"], 12.5);
    assert_eq!(
        ceiling["source"]["var"],
        "PARHELIA_BUDGET_DEFAULT_CEILING_USD"
    );
    assert_eq!(setting("modal.cpu_count")["source"]["layer"], "default");
    assert_eq!(
        shown["unknown_keys"],
        serde_json::json!([{"file": project.canonicalize().unwrap(), "key": "reconciler.poll_intervall"}])
    );

    // Any command reports the unknown key on stderr, naming file and key.
    let out = world.run(&["task", "list"]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: unknown config key `reconciler.poll_intervall` in ")
            && stderr.contains(".parhelia/config.toml"),
        "{stderr}"
    );
    // Doctor lists it.
    let doctor = world.run(&["doctor"]);
    assert!(String::from_utf8_lossy(&doctor.stdout).contains("reconciler.poll_intervall"));

    // An invalid value is E100 with file and key, for every command.
    std::fs::write(
        &project,
        "[orchestrator]\nmax_concurrent_workers = \"many\"\n",
    )
    .unwrap();
    let out = world.run(&["task", "list"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(
            "error[E100]: invalid value for `orchestrator.max_concurrent_workers` in "
        ) && stderr.contains("config.toml"),
        "{stderr}"
    );
    world.set_env("PARHELIA_ISOLATION", "docker");
    std::fs::write(&project, "").unwrap();
    let out = world.run(&["config", "show"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("PARHELIA_ISOLATION"));
}

#[test]
fn container_and_task_listings_and_cleanup() {
    let world = World::new();
    let (db, targets) = prepared(&world);
    let listed = world.json(&["container", "list", "--json"]);
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let table = world.ok(&["container", "list"]);
    assert!(table.lines().all(|l| l.chars().count() <= 80), "{table}");
    assert!(
        table.starts_with("ID            STATE       HEALTH"),
        "{table}"
    );
    let none = world.json(&["container", "list", "--state", "lost", "--json"]);
    assert_eq!(none, serde_json::json!([]));
    let bad = world.run(&["container", "list", "--state", "zombie"]);
    assert!(String::from_utf8_lossy(&bad.stderr).starts_with("error[E104]"));
    let shown = world.json(&["container", "show", &targets[0].container_id, "--json"]);
    assert_eq!(shown["task_id"], targets[0].task_id.as_str());
    let missing = world.run(&["container", "show", "ctr-deadbeef"]);
    assert!(String::from_utf8_lossy(&missing.stderr).starts_with("error[E203]"));

    // task-00000002 failed (its SessionFinished); task-00000001 runs.
    assert_eq!(world.task(&targets[1].task_id)["status"], "failed");
    let dry = world.json(&["task", "cleanup", "--dry-run", "--json"]);
    let ids: BTreeSet<&str> = dry["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, BTreeSet::from([targets[1].task_id.as_str()]));
    let none = world.json(&[
        "task",
        "cleanup",
        "--dry-run",
        "--older-than",
        "2d",
        "--json",
    ]);
    assert_eq!(none["tasks"], serde_json::json!([]));
    let bad = world.run(&["task", "cleanup", "--status", "running"]);
    assert!(String::from_utf8_lossy(&bad.stderr).starts_with("error[E100]"));
    // A running task cannot be deleted.
    let refused = world.run(&["task", "delete", &targets[0].task_id]);
    assert!(String::from_utf8_lossy(&refused.stderr).starts_with("error[E605]"));
    drop(db);
    let sessions = world.json(&["session", "list", "--json"]);
    assert_eq!(sessions[0]["container_state"], "created");
}

/// `events watch` prints new matching events as they are recorded and
/// `container watch` redraws on change; both run until interrupted and
/// exit 0 then.
#[test]
fn watch_commands_update_live_until_interrupted() {
    let world = World::new();
    let (db, targets) = prepared(&world);

    let (events, lines) = spawn_lines(world.command(&[
        "events",
        "watch",
        "--json",
        "--source",
        "coordinator",
        "--type",
        "orphan_detected",
    ]));
    // Nothing old is printed (no --since); a new matching event is.
    db.record_coordinator_event(
        &NewCoordinatorEvent::new("task_retried", "info", "not matching").task("task-x"),
    )
    .unwrap();
    // The watcher starts from the events recorded when it starts: record
    // matching ones until it prints one (then it is live).
    let deadline = std::time::Instant::now() + DEADLINE;
    let line = loop {
        db.record_coordinator_event(
            &NewCoordinatorEvent::new("orphan_detected", "warning", "ctr-0e9a0003: orphan")
                .container("ctr-0e9a0003"),
        )
        .unwrap();
        if let Ok(line) = lines.recv_timeout(std::time::Duration::from_millis(300)) {
            break line;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "events watch printed nothing"
        );
    };
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        event["type"], "orphan_detected",
        "only matching events: {line}"
    );
    assert_eq!(event["container_id"], "ctr-0e9a0003");
    assert!(interrupt_and_wait(events).success());

    let (watch, lines) =
        spawn_lines(world.command(&["container", "watch", "--interval-ms", "100"]));
    read_until(&lines, "the first table", |l| {
        l.contains(&targets[0].container_id)
    });
    db.set_container_starting(&targets[0].container_id, Some(4242))
        .unwrap();
    read_until(&lines, "the redrawn table", |l| {
        l.contains(&targets[0].container_id) && l.contains("starting")
    });
    assert!(interrupt_and_wait(watch).success());
}
