//! Model spend metered per API response (issue 13): the real `parhelia`, agent, tmux and
//! Claude Code against the scripted model, which serves known usage. Each case failed
//! before the agent metered the transcript:
//! - a task cancelled mid-turn kept $0.00 of the response it had already received;
//! - a resume after that cancel must not count the first response twice;
//! - a subagent's tokens were left out (only `result.usage`, the main thread's);
//! - an interactive session was invisible to its `--max-cost` until Claude Code exited.
//!
//! Figures are printed (`--nocapture`) and recorded in `docs/cost.md`.

use parhelia_testkit::harness::Harness;
use parhelia_testkit::model_stand_in::pricing::{observed_price, same_cost};
use parhelia_testkit::model_stand_in::{RequestKind, Usage};
use parhelia_testkit::{Script, ToolCall, Turn};

/// Ledger sums of a task's model entries: (USD, input, output, cache write, cache read).
fn model_ledger(h: &Harness, task_id: &str) -> (f64, u64, u64, u64, u64) {
    h.db()
        .query_row(
            "SELECT coalesce(sum(amount_usd), 0), coalesce(sum(input_tokens), 0),
                    coalesce(sum(output_tokens), 0), coalesce(sum(cache_creation_input_tokens), 0),
                    coalesce(sum(cache_read_input_tokens), 0)
             FROM ledger WHERE task_id = ?1 AND kind = 'model'",
            [task_id],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                    r.get::<_, i64>(3)? as u64,
                    r.get::<_, i64>(4)? as u64,
                ))
            },
        )
        .unwrap()
}

/// What the stand-in served and Claude Code prices: (USD of every answered request,
/// tokens of the scripted turns answered). `usages[i]` is script turn `i`'s usage; a
/// held turn that was never released is left out by the caller (`released`).
fn served(h: &Harness, usages: &[Usage], released: impl Fn(usize) -> bool) -> (f64, Usage) {
    let side = Usage::new(10, 5);
    let mut cost = 0.0;
    let mut tokens = Usage::new(0, 0);
    for request in h.stand_in.requests() {
        let model = request.model.clone().unwrap_or_default();
        let usage = match (request.kind, request.turn_index) {
            (RequestKind::Turn, Some(i)) if released(i) => usages[i],
            // Past the script: the tests' default answer.
            (RequestKind::Exhausted, _) => Usage::new(100, 20),
            (RequestKind::Side, _) => side,
            _ => continue,
        };
        let price =
            observed_price(&model).unwrap_or_else(|| panic!("the test knows no price for {model}"));
        cost += price.cost_usd(&usage);
        if request.kind != RequestKind::Side {
            tokens.input_tokens += usage.input_tokens;
            tokens.output_tokens += usage.output_tokens;
        }
    }
    (cost, tokens)
}

fn model_spend_events(h: &Harness, task_id: &str) -> Vec<serde_json::Value> {
    h.task_events(task_id, "model_spend")
        .into_iter()
        .map(|e| e["kind"]["model_spend"].clone())
        .collect()
}

#[test]
fn a_cancelled_turns_response_is_charged_and_a_resume_does_not_charge_it_twice() {
    let usages = [
        Usage::new(1000, 100),
        Usage::new(7, 7),
        Usage::new(2000, 300),
    ];
    let h = Harness::new(Script::new([
        Turn::tool_use([ToolCall::bash("echo one > one.txt")]).with_full_usage(usages[0]),
        // The second request is held: the turn never ends; the test cancels it.
        Turn::hold("never sent").with_full_usage(usages[1]),
        Turn::text("Resumed and done.").with_full_usage(usages[2]),
    ]));
    let created = h.json(&["task", "create", "Write one.txt, then more", "--json"]);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let session_id = created["session_id"].as_str().unwrap().to_string();
    h.wait_for("the second request held at the model", || {
        (h.stand_in.holds_served() >= 1).then_some(())
    });
    // Charged as it happened: before the turn ends (it never does).
    let first = observed_price("claude-opus-5-5")
        .unwrap()
        .cost_usd(&usages[0]);
    h.wait_for("the first response in the ledger", || {
        (model_ledger(&h, &task_id).1 >= 1000).then_some(())
    });
    h.ok(&["task", "cancel", &task_id]);
    let task = h.wait_task(&task_id, |t| t["status"] != "running");
    assert_eq!(task["status"], "cancelled", "{task:#}");

    let (cost, tokens) = served(&h, &usages, |i| i != 1);
    let (usd, input, output, _, _) = model_ledger(&h, &task_id);
    println!(
        "cancel mid-turn: ledger ${usd:.6} ({input}/{output} tokens), stand-in priced ${cost:.6}, first response ${first:.6}"
    );
    assert!(same_cost(usd, cost), "ledger {usd} vs served {cost}");
    assert_eq!((input, output), (tokens.input_tokens, tokens.output_tokens));
    assert_eq!((input, output), (1000, 100));
    let shown = h.json(&["task", "show", &task_id, "--json"]);
    assert!(
        same_cost(shown["budget"]["total_usd"].as_f64().unwrap(), cost),
        "{shown:#}"
    );
    let spends = model_spend_events(&h, &task_id);
    assert!(!spends.is_empty(), "a model_spend event");
    assert!(spends.iter().all(|s| s["priced"] == true), "{spends:#?}");

    // Resume: the restored transcript holds the first response again; it is not
    // charged again, and the new turn is.
    h.ok(&["resume", &session_id, "-m", "Go on"]);
    let task = h.wait_task(&task_id, |t| {
        t["status"] != "running" && t["status"] != "pending" && t["status"] != "cancelled"
    });
    assert_eq!(task["status"], "completed", "{task:#}");
    let (cost, tokens) = served(&h, &usages, |i| i != 1);
    let (usd, input, output, _, _) = h.wait_for("the resumed turn charged", || {
        let l = model_ledger(&h, &task_id);
        (l.1 >= 3000).then_some(l)
    });
    println!(
        "resume after cancel: ledger ${usd:.6} ({input}/{output} tokens), stand-in priced ${cost:.6}"
    );
    assert!(same_cost(usd, cost), "ledger {usd} vs served {cost}");
    assert_eq!((input, output), (tokens.input_tokens, tokens.output_tokens));
    assert_eq!((input, output), (3000, 400), "no response counted twice");
    let budget = h.json(&["budget", "show", "--json"]);
    assert_eq!(budget["input_tokens"], 3000, "{budget:#}");
    assert_eq!(budget["output_tokens"], 400, "{budget:#}");
}

#[test]
fn a_subagents_tokens_are_counted() {
    // In the foreground (`run_in_background: false`) the requests are in order: the main
    // thread's Agent call, the subagent's answer, the main thread's answer. Claude Code
    // 2.1.330's `result.usage` is 400/80 here (the main thread's only): the issue's
    // "400/80 shown vs 500/100".
    let usages = [
        Usage::new(200, 40),
        Usage::new(100, 20),
        Usage::new(200, 40),
    ];
    let h = Harness::new(Script::new([
        Turn::tool_use([ToolCall::new(
            "Agent",
            serde_json::json!({
                "description": "Say hi",
                "prompt": "Say hi and stop.",
                "subagent_type": "general-purpose",
                "run_in_background": false,
            }),
        )])
        .with_full_usage(usages[0]),
        Turn::text("Hi from the subagent.").with_full_usage(usages[1]),
        Turn::text("The subagent said hi.").with_full_usage(usages[2]),
    ]));
    let created = h.json(&["task", "create", "Ask a subagent to say hi", "--json"]);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let task = h.wait_task(&task_id, |t| {
        t["status"] != "running" && t["status"] != "pending"
    });
    assert_eq!(task["status"], "completed", "{task:#}");
    let (cost, tokens) = served(&h, &usages, |_| true);
    let (usd, input, output, _, _) = model_ledger(&h, &task_id);
    let spends = model_spend_events(&h, &task_id);
    let result_usage = &h.task_events(&task_id, "turn_result")[0]["kind"]["turn_result"]["usage"];
    println!(
        "subagent: ledger ${usd:.6} ({input}/{output} tokens), stand-in served ${cost:.6} ({}/{}), result.usage {}/{}",
        tokens.input_tokens,
        tokens.output_tokens,
        result_usage["input_tokens"],
        result_usage["output_tokens"]
    );
    assert_eq!((tokens.input_tokens, tokens.output_tokens), (500, 100));
    assert_eq!((input, output), (500, 100), "{spends:#?}");
    assert!(
        spends.iter().any(|s| s["subagent"] == true),
        "the subagent's response is metered and marked: {spends:#?}"
    );
    assert!(same_cost(usd, cost), "ledger {usd} vs served {cost}");
    let budget = h.json(&["budget", "show", "--json"]);
    assert_eq!(budget["input_tokens"], 500, "{budget:#}");
    assert_eq!(budget["output_tokens"], 100, "{budget:#}");
}

#[test]
fn an_interactive_session_is_stopped_at_its_ceiling_within_one_response() {
    // $0.002 per response on the default model (250 × $4/M + 50 × $20/M); the third
    // response crosses a $0.005 ceiling; the fourth request is held, so Claude Code
    // spends nothing more whatever the watchdog's timing.
    let response = Usage::new(250, 50);
    let h = Harness::new(Script::new([
        Turn::tool_use([ToolCall::bash("echo 1 > a.txt")]).with_full_usage(response),
        Turn::tool_use([ToolCall::bash("echo 2 > b.txt")]).with_full_usage(response),
        Turn::tool_use([ToolCall::bash("echo 3 > c.txt")]).with_full_usage(response),
        Turn::hold("never sent").with_full_usage(response),
    ]));
    let ceiling = 0.005;
    let created = h.json(&[
        "task",
        "create",
        "Write three files",
        "--interactive",
        "--max-cost",
        "0.005",
        "--json",
    ]);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let task = h.wait_task(&task_id, |t| {
        t["status"] != "running" && t["status"] != "pending"
    });
    assert_eq!(task["status"], "failed", "{task:#}");
    assert_eq!(task["error_code"], "E300", "{task:#}");

    let one_response = observed_price("claude-opus-5-5")
        .unwrap()
        .cost_usd(&response);
    let db = h.db();
    let details: String = db
        .query_row(
            "SELECT details FROM coordinator_events WHERE type = 'budget_exceeded' ORDER BY id LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    drop(db);
    let details: serde_json::Value = serde_json::from_str(&details).unwrap();
    let spent_at_stop = details["spent_usd"].as_f64().unwrap();
    let overshoot = spent_at_stop - ceiling;
    let (final_usd, input, output, _, _) = model_ledger(&h, &task_id);
    println!(
        "interactive --max-cost: ceiling ${ceiling:.6}, spend at stop ${spent_at_stop:.6}, overshoot ${overshoot:.6}, one response ${one_response:.6}, final ledger ${final_usd:.6} ({input}/{output} tokens)"
    );
    assert!(spent_at_stop >= ceiling, "{details:#}");
    assert!(
        overshoot <= one_response + 1e-9,
        "overshoot {overshoot} is more than one response ({one_response}): {details:#}"
    );
    // Stopped with a checkpoint first.
    let stop_checkpoints = h
        .task_events(&task_id, "checkpoint_created")
        .into_iter()
        .filter(|c| c["kind"]["checkpoint_created"]["trigger"] == "stop")
        .count();
    assert_eq!(stop_checkpoints, 1);
}

/// Issue 13: the same bound for a headless task's model spend. Two fences can stop it:
/// the coordinator's watchdog (per metered response) and Claude Code's own
/// `--max-budget-usd` (checked after each response). Whichever stops it first, the
/// overshoot is at most one response; the fourth request is held, so a run neither
/// fence stopped would never end. The figures printed say which fence it was.
#[test]
fn a_headless_task_is_stopped_at_its_ceiling_within_one_response() {
    let response = Usage::new(250, 50);
    let h = Harness::new(Script::new([
        Turn::tool_use([ToolCall::bash("echo 1 > a.txt")]).with_full_usage(response),
        Turn::tool_use([ToolCall::bash("echo 2 > b.txt")]).with_full_usage(response),
        Turn::tool_use([ToolCall::bash("echo 3 > c.txt")]).with_full_usage(response),
        Turn::hold("never sent").with_full_usage(response),
    ]));
    let ceiling = 0.005;
    let created = h.json(&[
        "task",
        "create",
        "Write three files",
        "--max-cost",
        "0.005",
        "--json",
    ]);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let task = h.wait_task(&task_id, |t| {
        t["status"] != "running" && t["status"] != "pending"
    });
    // One recorded outcome for a budget stop, whichever fence stopped it.
    assert_eq!(task["status"], "failed", "{task:#}");
    assert_eq!(task["error_code"], "E300", "{task:#}");

    let one_response = observed_price("claude-opus-5-5")
        .unwrap()
        .cost_usd(&response);
    let (final_usd, input, output, _, _) = model_ledger(&h, &task_id);
    let watchdog: Option<f64> = {
        let db = h.db();
        db.query_row(
            "SELECT details FROM coordinator_events WHERE type = 'budget_exceeded' ORDER BY id LIMIT 1",
            [],
            |r| r.get::<_, String>(0),
        )
        .ok()
        .and_then(|d| serde_json::from_str::<serde_json::Value>(&d).ok())
        .and_then(|d| d["spent_usd"].as_f64())
    };
    let served = h.stand_in.turns_consumed();
    let overshoot = final_usd - ceiling;
    println!(
        "headless --max-cost: ceiling ${ceiling:.6}, spend at stop ${final_usd:.6} ({input}/{output} tokens, {served} responses served), overshoot ${overshoot:.6}, one response ${one_response:.6}, stopped by {}",
        match watchdog {
            Some(at) => format!("the watchdog (it saw ${at:.6})"),
            None => "Claude Code's own --max-budget-usd".to_string(),
        }
    );
    assert!(final_usd >= ceiling, "stopped below the ceiling: {task:#}");
    assert!(
        overshoot <= one_response + 1e-9,
        "overshoot {overshoot} is more than one response ({one_response})"
    );
}

/// Files under `dir` (depth-first, no links followed) whose text contains `needle`.
fn any_file_contains(dir: &std::path::Path, needle: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let path = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => any_file_contains(&path, needle),
            Ok(t) if t.is_file() => {
                std::fs::read_to_string(&path).is_ok_and(|text| text.contains(needle))
            }
            _ => false,
        }
    })
}

/// Issue 13: a response Claude Code received after its agent stopped metering (the
/// agent frozen, then killed) was never charged. The reconciler's next pass ends the
/// left-over processes and charges what the transcript holds that no journal did
/// (`parhelia-agent meter`), once.
#[test]
fn a_response_the_dead_agent_never_metered_is_charged_when_its_processes_are_ended() {
    charged_after_the_agent_died(false);
}

/// The same when nothing of the session outlived its agent (its tmux server and
/// Claude Code died too, as in a container, or after a full disk): charged when the
/// container is marked lost (event `container_lost`).
#[test]
fn a_response_the_dead_agent_never_metered_is_charged_when_its_container_is_marked_lost() {
    charged_after_the_agent_died(true);
}

fn charged_after_the_agent_died(session_dies_too: bool) {
    let usages = [Usage::new(1500, 200)];
    let mut h = Harness::new(Script::new([Turn::hold(
        "Done while the agent was frozen.",
    )
    .with_full_usage(usages[0])]));
    h.set_env("PARHELIA_ISOLATION", "none");
    std::fs::write(
        h.state().join("config.toml"),
        "[reconciler]\npoll_interval_seconds = 0.2\nstale_threshold_seconds = 1.0\n",
    )
    .unwrap();
    let created = h.json(&["task", "create", "Answer once", "--json"]);
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let container_id = created["container_id"].as_str().unwrap().to_string();
    h.wait_for("the request held at the model", || {
        (h.stand_in.holds_served() >= 1).then_some(())
    });
    let (agent_pid, tmux) = h.agent_pid_and_tmux(&container_id);
    let signal = |sig: &str| {
        assert!(
            std::process::Command::new("kill")
                .args([sig, &agent_pid.to_string()])
                .status()
                .unwrap()
                .success()
        );
    };
    // The agent can no longer read the transcript; Claude Code gets its answer.
    signal("-STOP");
    h.stand_in.release_hold();
    let config_dir = h
        .state()
        .join("containers")
        .join(&container_id)
        .join("claude-config");
    h.wait_for("the answer in Claude Code's transcript", || {
        any_file_contains(&config_dir, "Done while the agent was frozen.").then_some(())
    });
    assert_eq!(
        model_ledger(&h, &task_id).1,
        0,
        "the frozen agent charged it"
    );
    if session_dies_too {
        // Everything the session started (marked with its unit), as a container's end,
        // before the (frozen) agent itself: when its stream breaks, nothing of it is left
        // for the pass that ends left-over processes.
        parhelia_testkit::procs::tmux_kill_server(&tmux);
        let marked = || -> Vec<i32> {
            let marker = format!(":{container_id}");
            std::fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .filter_map(|entry| {
                    let pid = entry.file_name().to_string_lossy().parse::<i32>().ok()?;
                    let environ = std::fs::read(entry.path().join("environ")).ok()?;
                    let state = std::fs::read_to_string(entry.path().join("stat")).ok()?;
                    let zombie = state
                        .rsplit(')')
                        .next()
                        .is_some_and(|r| r.trim_start().starts_with('Z'));
                    (pid != agent_pid
                        && !zombie
                        && environ.split(|b| *b == 0).any(|v| {
                            v.starts_with(b"PARHELIA_UNIT=") && v.ends_with(marker.as_bytes())
                        }))
                    .then_some(pid)
                })
                .collect()
        };
        for pid in marked() {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
        h.wait_for("the session's processes to end", || {
            marked().is_empty().then_some(())
        });
        signal("-KILL");
    } else {
        signal("-KILL");
        h.ok(&["reconciler", "run", "--once"]);
    }
    let (cost, tokens) = served(&h, &usages, |_| true);
    let (usd, input, output, _, _) = h.wait_for("the response charged", || {
        let l = model_ledger(&h, &task_id);
        (l.1 >= 1500).then_some(l)
    });
    println!(
        "agent killed after an unmetered response (session died too: {session_dies_too}): ledger ${usd:.6} ({input}/{output} tokens), stand-in priced ${cost:.6}"
    );
    assert!(same_cost(usd, cost), "ledger {usd} vs served {cost}");
    assert_eq!((input, output), (tokens.input_tokens, tokens.output_tokens));
    // Charged once, by whichever pass found the session's end: the one that ended its
    // left-over processes (`session_processes_ended`) or, with nothing of it left
    // running (Claude Code may also exit by itself once its hook fails), the one that
    // marked its container lost (`container_lost`). The event is written once the pass
    // is done with the container (a moment after the charge).
    let charged_by = |h: &Harness| -> Vec<(String, u64)> {
        h.json(&["events", "list", "--task", &task_id, "--json"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "session_processes_ended" || e["type"] == "container_lost")
            .filter_map(|e| {
                let n = e["payload"]["charged_responses"].as_u64()?;
                assert!(e["message"].as_str().unwrap().contains("charged"), "{e:#}");
                Some((e["type"].as_str().unwrap().to_string(), n))
            })
            .collect()
    };
    let said = h.wait_for("the event that says what was charged", || {
        let said = charged_by(&h);
        (!said.is_empty()).then_some(said)
    });
    assert_eq!(said.iter().map(|(_, n)| n).sum::<u64>(), 1, "{said:?}");
    if session_dies_too {
        // Nothing was left to end: the lost container's pass charged it.
        assert_eq!(said[0].0, "container_lost", "{said:?}");
    }
    // A later pass charges nothing again.
    h.ok(&["reconciler", "run", "--once"]);
    assert_eq!(model_ledger(&h, &task_id).1, input);
    assert_eq!(charged_by(&h).iter().map(|(_, n)| n).sum::<u64>(), 1);
    // Claude Code wrote the answer before it ended: no spend is unknown.
    let task = h.json(&["task", "show", &task_id, "--json"]);
    assert_eq!(task["unknown_model_requests"], 0, "{task:#}");
}
