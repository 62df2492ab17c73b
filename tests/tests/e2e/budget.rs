//! Budgets end to end: the real `parhelia`, agent, tmux and Claude Code
//! against the scripted model, which reports known usage. The ledger holds
//! exactly what Claude Code reported (across a resume too), survives a
//! coordinator restart, and `budget history` adds up; a task over its
//! `--max-cost` is stopped by the watchdog with a checkpoint and fails with
//! E300 within one heartbeat interval of spend; a dispatch the budget cannot
//! cover is refused with E300; warnings fire at the threshold.

use parhelia_testkit::harness::Harness;
use parhelia_testkit::{Script, ToolCall, Turn};

/// claude-opus-5-5 (Claude Code's default): $4/M input, $20/M output.
fn opus_cost(input: u64, output: u64) -> f64 {
    (input as f64 * 4.0 + output as f64 * 20.0) / 1_000_000.0
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn create(h: &Harness, prompt: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["task", "create", prompt, "--json"];
    args.extend_from_slice(extra);
    let out = h.ok(&args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Ledger sums of a task: (compute, model, input tokens, output tokens).
fn ledger_of(h: &Harness, task_id: &str) -> (f64, f64, i64, i64) {
    h.db()
        .query_row(
            "SELECT coalesce(sum(CASE WHEN kind = 'compute' THEN amount_usd END), 0),
                    coalesce(sum(CASE WHEN kind = 'model' THEN amount_usd END), 0),
                    coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0)
             FROM ledger WHERE task_id = ?1",
            [task_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap()
}

/// Coordinator events of a type: (level, message, details).
fn coordinator_events(h: &Harness, kind: &str) -> Vec<(String, String, serde_json::Value)> {
    let db = h.db();
    let mut stmt = db
        .prepare(
            "SELECT level, message, details FROM coordinator_events WHERE type = ?1 ORDER BY id",
        )
        .unwrap();
    stmt.query_map([kind], |r| {
        let details: String = r.get(2)?;
        Ok((
            r.get(0)?,
            r.get(1)?,
            serde_json::from_str(&details).unwrap(),
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// The latest `claude_total_cost_usd` Claude Code reported for a task.
fn claude_reported_total(h: &Harness, task_id: &str) -> f64 {
    let db = h.db();
    let payload: String = db
        .query_row(
            "SELECT payload FROM events WHERE task_id = ?1 AND type = 'turn_result' ORDER BY id DESC LIMIT 1",
            [task_id],
            |r| r.get(0),
        )
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&payload).unwrap();
    v["kind"]["turn_result"]["claude_total_cost_usd"]
        .as_f64()
        .unwrap_or(0.0)
}

fn write_config(h: &Harness, text: &str) {
    std::fs::write(h.state().join("config.toml"), text).unwrap();
}

#[test]
fn the_ledger_equals_what_claude_code_reported_across_a_resume_and_a_restart() {
    let h = Harness::new(Script::new([
        Turn::text("First part done.").with_usage(1000, 100),
        Turn::text("Second part done.").with_usage(2000, 300),
    ]));
    let created = create(&h, "Do the first part", &[]);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let session_id = created["session_id"].as_str().unwrap().to_string();
    h.wait_task(&task_id, |t| t["status"] == "completed");
    let first = opus_cost(1000, 100);
    let (_, model, _, _) = ledger_of(&h, &task_id);
    assert!(close(model, first), "ledger {model} vs {first}");

    h.ok(&["resume", &session_id, "-m", "Now the second part"]);
    let expected = first + opus_cost(2000, 300);
    let (compute, model, input, output) = h.wait_for("the resumed turn in the ledger", || {
        let t = h.json(&["task", "show", &task_id, "--json"]);
        let l = ledger_of(&h, &task_id);
        (t["status"] == "completed" && close(l.1, expected)).then_some(l)
    });
    // Claude Code's own total is session-wide (restored on --resume): the
    // ledger holds the same figure, never the sum of its totals.
    let reported = claude_reported_total(&h, &task_id);
    assert!(
        close(model, reported),
        "ledger {model} vs reported {reported}"
    );
    assert_eq!(compute, 0.0, "local compute is free by default");
    assert_eq!((input, output), (3000, 400));
    let shown = h.json(&["task", "show", &task_id, "--json"]);
    assert!(close(
        shown["budget"]["total_usd"].as_f64().unwrap(),
        expected
    ));

    // Persisted: a restarted coordinator (started by the next command) and
    // the CLI read the same ledger, and `budget set` survives too.
    h.ok(&["budget", "set", "12.50"]);
    h.ok(&["coordinator", "stop"]);
    let show = h.json(&["budget", "show", "--json"]);
    assert!(
        close(show["used_usd"].as_f64().unwrap(), expected),
        "{show:#}"
    );
    assert_eq!(show["ceiling_usd"], 12.5);
    assert_eq!(show["ceiling_source"], "budget set");
    assert!(close(
        show["remaining_usd"].as_f64().unwrap(),
        12.5 - expected
    ));
    assert_eq!(show["input_tokens"], 3000);
    assert_eq!(show["tasks"][0]["task_id"], task_id.as_str());
    let status = h.json(&["status", "--json"]);
    assert!(close(
        status["budget"]["used_usd"].as_f64().unwrap(),
        expected
    ));
    assert!(h.ok(&["status"]).contains("budget"));

    // History: the rows add up to the total, by task and by day.
    for by in ["task", "day"] {
        let history = h.json(&["budget", "history", "--by", by, "--since", "7d", "--json"]);
        let rows = history["rows"].as_array().unwrap();
        let sum: f64 = rows.iter().map(|r| r["total_usd"].as_f64().unwrap()).sum();
        let total = history["total"]["total_usd"].as_f64().unwrap();
        assert!(close(sum, total), "{history:#}");
        assert!(close(total, expected), "{history:#}");
    }

    // A similar task now has history for its estimate.
    let estimate = h.json(&["task", "create", "again", "--estimate-only", "--json"]);
    assert_eq!(estimate["history"]["tasks"], 1, "{estimate:#}");
    assert!(close(
        estimate["history"]["max_usd"].as_f64().unwrap(),
        expected
    ));
    assert_eq!(estimate["model_cost_unknown"], false);
}

#[test]
fn a_task_over_its_max_cost_is_stopped_with_a_checkpoint_and_fails_e300() {
    let h = Harness::new(Script::new([Turn::tool_use([ToolCall::bash(
        "echo working > progress.txt; sleep 600",
    )])]));
    // Local compute priced at 10⁵× the rate table: the session's own memory
    // (Claude Code's ~100 MiB and up) costs $0.06+ per second, so $0.10 is
    // spent within seconds. (`--cpu`/`--memory` cap the session's cgroup, not its price.)
    write_config(&h, "[rates]\nlocal_multiplier = 100000.0\n");
    let created = create(&h, "Work for a long time", &["--max-cost", "0.10"]);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    // The second fence: Claude Code's own --max-budget-usd, from the ceiling.
    let spec_path = h
        .state()
        .join("containers")
        .join(created["container_id"].as_str().unwrap())
        .join("spec.json");
    // Written by the launch, which an async create does not wait for.
    let spec: serde_json::Value = h.wait_for("the launch's spec.json", || {
        std::fs::read_to_string(&spec_path)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
    });
    assert!(
        close(spec["max_budget_usd"].as_f64().unwrap(), 0.10),
        "{spec:#}"
    );
    let task = h.wait_task(&task_id, |t| {
        t["status"] != "running" && t["status"] != "pending"
    });
    assert_eq!(task["status"], "failed", "{task:#}");
    assert_eq!(task["error_code"], "E300", "{task:#}");
    assert!(
        task["error_message"]
            .as_str()
            .unwrap()
            .contains("budget watchdog"),
        "{task:#}"
    );

    // Stopped through the Stop path: the agent took a final checkpoint.
    let db = h.db();
    let stop_checkpoints: i64 = db
        .query_row(
            "SELECT count(*) FROM events WHERE task_id = ?1 AND type = 'checkpoint_created'
             AND json_extract(payload, '$.kind.checkpoint_created.trigger') = 'stop'",
            [&task_id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stop_checkpoints, 1);

    // The watchdog warned at 80 % first, then stopped the session.
    let warnings = coordinator_events(&h, "budget_warning");
    assert!(
        warnings
            .iter()
            .any(|(level, _, d)| level == "warning" && d["scope"] == "task"),
        "{warnings:?}"
    );
    let exceeded = coordinator_events(&h, "budget_exceeded");
    assert_eq!(exceeded.len(), 1, "{exceeded:?}");
    let details = &exceeded[0].2;
    assert_eq!(details["scope"], "task");
    assert_eq!(details["ceiling_usd"], 0.1);
    // The overshoot bound: past the ceiling by at most the last charge,
    // one heartbeat interval of compute.
    let overshoot = details["overshoot_usd"].as_f64().unwrap();
    let last_charge = details["last_charge_usd"].as_f64().unwrap();
    // The figures docs/cost.md records ("Overshoot, measured").
    println!(
        "compute overshoot: ceiling $0.10, spend at stop ${:.6}, overshoot ${overshoot:.6}, last charge ${last_charge:.6}",
        details["spent_usd"].as_f64().unwrap()
    );
    assert!(overshoot >= 0.0, "{details}");
    assert!(overshoot <= last_charge, "{details}");
    let interval_charges: i64 = db
        .query_row(
            "SELECT count(*) FROM ledger WHERE task_id = ?1 AND kind = 'compute'",
            [&task_id],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        interval_charges > 1,
        "compute accrued heartbeat by heartbeat"
    );
    drop(db);

    // One outcome for a budget stop: the session says what the task says.
    let session_id = task["session_id"].as_str().unwrap().to_string();
    let finished = h.task_events(&task_id, "session_finished");
    let last = finished.last().expect("the session finished").to_string();
    assert!(last.contains("E300"), "{last}");
    let outcome: String = h
        .db()
        .query_row(
            "SELECT outcome FROM sessions WHERE id = ?1",
            [&session_id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(outcome, "failed", "not cancelled: one outcome");

    // A way forward: raise the task's own ceiling, then resume it.
    let out = h.run(&["resume", &session_id]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("E300"),
        "still over the ceiling: {out:?}"
    );
    h.ok(&["budget", "set", "--task", &task_id, "--max-cost", "1000"]);
    h.ok(&["resume", &session_id]);
    h.wait_task(&task_id, |t| t["status"] == "running");
    h.ok(&["task", "cancel", &task_id]);
}

#[test]
fn a_dispatch_the_budget_cannot_cover_is_refused_with_e300() {
    let h = Harness::new(Script::new([Turn::text("never")]));
    h.ok(&["budget", "set", "1.00"]);
    let out = h.run(&["task", "create", "Too big", "--max-cost", "5"]);
    assert_eq!(out.status.code(), Some(4), "E3xx exits 4");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("error[E300]"), "{stderr}");
    assert!(stderr.contains("$4.00 short"), "{stderr}");
    assert!(stderr.contains("parhelia budget set 5.00"), "{stderr}");
    assert!(stderr.contains("--max-cost 1.00"), "{stderr}");
    assert_eq!(h.json(&["task", "list", "--json"]), serde_json::json!([]));

    // Nothing left at all: every dispatch is refused.
    h.ok(&["budget", "set", "0"]);
    let out = h.run(&["task", "create", "Anything"]);
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(h.stand_in.turns_consumed(), 0, "nothing was launched");
}

#[test]
fn a_warning_event_fires_at_the_threshold_of_the_global_budget() {
    let h = Harness::new(Script::new([Turn::text("Done.").with_usage(1000, 100)]));
    // $0.006 of a $0.007 ceiling is 85 %, past the 80 % threshold.
    h.ok(&["budget", "set", "0.007"]);
    let created = create(&h, "Spend a little", &[]);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    h.wait_task(&task_id, |t| t["status"] == "completed");
    let warnings = h.wait_for("the budget warning", || {
        let w = coordinator_events(&h, "budget_warning");
        (!w.is_empty()).then_some(w)
    });
    assert_eq!(warnings.len(), 1, "warned once: {warnings:?}");
    let (level, message, details) = &warnings[0];
    assert_eq!(level, "warning");
    assert_eq!(details["scope"], "global");
    assert!(message.contains("85%"), "{message}");
    // `events list` shows it among the coordinator's events.
    assert!(h.ok(&["events", "list"]).contains("budget_warning"));
}

#[test]
fn estimate_only_prints_a_range_with_its_basis_and_launches_nothing() {
    let h = Harness::new(Script::new([Turn::text("never")]));
    let e = h.json(&[
        "task",
        "create",
        "Train",
        "--backend",
        "modal",
        "--gpu",
        "A100",
        "--timeout",
        "1h",
        "--estimate-only",
        "--json",
    ]);
    let rate = 4.0 * 0.00003942 + 16.0 * 0.00000672 + 0.000583;
    assert!(
        close(e["rate_usd_per_second"].as_f64().unwrap(), rate),
        "{e:#}"
    );
    assert_eq!(e["timeout_seconds"], 3600);
    assert!(close(e["compute_max_usd"].as_f64().unwrap(), rate * 3600.0));
    assert!(close(e["high_usd"].as_f64().unwrap(), rate * 3600.0));
    assert_eq!(e["low_usd"], 0.0);
    assert_eq!(e["history"], serde_json::Value::Null);

    // A local run gets no GPU this host lacks: refused, not priced as if it would (E114).
    let out = h.run(&[
        "task",
        "create",
        "Train",
        "--gpu",
        "A100",
        "--estimate-only",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("E114") && stderr.contains("--backend modal"),
        "{stderr}"
    );
    let text = h.ok(&["task", "create", "Train", "--estimate-only"]);
    assert!(
        text.contains("estimate only: nothing was launched"),
        "{text}"
    );
    assert!(!text.contains("A100"), "{text}");
    assert!(text.contains("rates.local_multiplier"), "{text}");
    assert!(text.contains("rate table's prices"), "{text}");
    assert_eq!(h.json(&["task", "list", "--json"]), serde_json::json!([]));
    assert_eq!(h.stand_in.turns_consumed(), 0);
}

/// Issue 13: "cost" was the model's share in `task list/show`, the `--sync`
/// summary and `status` (a GPU task showed $0.0006 of its $0.0279). With
/// local compute priced (`local_multiplier = 1.0`), one task's cost is its
/// ledger total — compute + model + storage — and every view shows the same
/// total and breakdown.
#[test]
fn every_view_shows_the_ledger_total_as_cost() {
    let h = Harness::new(Script::new([
        Turn::tool_use([ToolCall::bash("sleep 2; echo done > done.txt")]).with_usage(1000, 100),
        Turn::text("Done.").with_usage(1200, 50),
    ]));
    write_config(
        &h,
        "[rates]\nlocal_multiplier = 1.0\n[agent]\nlinger_after_finish_ms = 0\n",
    );
    let synced = h.ok(&["task", "create", "Work a little", "--sync"]);
    let task_id = h.json(&["task", "list", "--json"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Compute stops once the agent has gone.
    h.wait_for("the agent to be gone", || {
        let live: i64 = h
            .db()
            .query_row(
                "SELECT count(*) FROM containers WHERE task_id = ?1
                 AND state NOT IN ('terminated', 'lost', 'failed')",
                [&task_id],
                |r| r.get(0),
            )
            .unwrap();
        (live == 0).then_some(())
    });
    let keys = [
        "cost_usd",
        "compute_usd",
        "model_usd",
        "storage_usd",
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    ];
    let fields = |v: &serde_json::Value| -> Vec<serde_json::Value> {
        keys.iter()
            .map(|k| {
                v.get(*k)
                    .cloned()
                    .unwrap_or_else(|| panic!("{k} missing: {v:#}"))
            })
            .collect()
    };
    let shown = h.json(&["task", "show", &task_id, "--json"]);
    let expected = fields(&shown);
    let (compute, model, input, output) = ledger_of(&h, &task_id);
    assert!(compute > 0.0, "local compute is priced: {shown:#}");
    assert!(model > 0.0, "{shown:#}");
    assert!(
        close(shown["cost_usd"].as_f64().unwrap(), compute + model),
        "{shown:#}"
    );
    assert_eq!(
        (
            shown["input_tokens"].as_i64(),
            shown["output_tokens"].as_i64()
        ),
        (Some(input), Some(output))
    );

    assert_eq!(fields(&h.json(&["task", "list", "--json"])[0]), expected);
    assert_eq!(fields(&h.json(&["status", "--json"])), expected);
    let budget = h.json(&["budget", "show", "--json"]);
    assert_eq!(fields(&budget), expected);
    assert_eq!(fields(&budget["tasks"][0]), expected);
    assert_eq!(budget["rates"]["table_version"], "2026-12");
    let history = h.json(&["budget", "history", "--by", "task", "--json"]);
    assert_eq!(fields(&history["rows"][0]), expected);
    assert_eq!(fields(&history["total"]), expected);
    let session_id = shown["session_id"].as_str().unwrap();
    assert_eq!(
        fields(&h.json(&["session", "show", session_id, "--json"])),
        expected
    );

    // The text views: the same total and breakdown.
    let usd = |x: f64| format!("${x:.4}");
    let line = format!(
        "{} (compute {}, model {}, storage {})",
        usd(shown["cost_usd"].as_f64().unwrap()),
        usd(compute),
        usd(model),
        usd(0.0)
    );
    assert!(h.ok(&["task", "show", &task_id]).contains(&line), "{line}");
    assert!(h.ok(&["status"]).contains(&line), "{line}");
    assert!(
        h.ok(&["task", "list"])
            .contains(&usd(shown["cost_usd"].as_f64().unwrap())),
        "{line}"
    );
    // `--sync` printed its summary when the task finished, before the
    // agent's last heartbeat: the total then, with compute in it.
    assert!(synced.contains("· cost $"), "{synced}");
    assert!(synced.contains("(compute $"), "{synced}");
    let budget_text = h.ok(&["budget", "show"]);
    assert!(
        budget_text.contains("rates      table 2026-12"),
        "{budget_text}"
    );
    assert!(
        budget_text.contains("local 0 (the user's own disk)"),
        "{budget_text}"
    );
}
